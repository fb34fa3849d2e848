//! Outbound HTTP for sinks and API plugins, over the standard
//! `wasi:http/outgoing-handler`.
//!
//! The host lets a request through only to the hosts that the plugin's manifest
//! grants; anything else fails with an error naming the refused host. Built natively
//! (in a plugin's own tests), requests go to the recorded exchanges of
//! [`crate::testing::Host`].

use crate::Failure;

/// A response: status, headers and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl Response {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of a header (names are case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body parsed as JSON; a body that is not JSON is `invalid`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Invalid(format!("the response is not the JSON expected: {e}")))
    }

    /// The failure class a non-2xx status stands for, as [`Failure::from_status`]
    /// classifies it: 408, 429 and 5xx are transient (`retryable`), any other status is
    /// the target refusing the content (`rejected`). The reason is the status and body.
    pub fn failure(&self) -> Failure {
        let body = String::from_utf8_lossy(&self.body);
        Failure::from_status(
            self.status,
            format!("HTTP {}: {}", self.status, body.trim()),
        )
    }
}

/// `POST` a JSON body to `url` with extra headers.
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, Failure> {
    let mut all = vec![
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    all.extend_from_slice(headers);
    send("POST", url, &all, body)
}

/// `GET` `url`, asking for JSON, with extra headers.
pub fn get_json(url: &str, headers: &[(&str, &str)]) -> Result<Response, Failure> {
    let mut all = vec![("accept", "application/json")];
    all.extend_from_slice(headers);
    send("GET", url, &all, &[])
}

/// Send a request and read the whole response. Network errors are `retryable`; a URL
/// that cannot be parsed, or a host the manifest does not grant, is `invalid`.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Failure> {
    #[cfg(target_arch = "wasm32")]
    return wasi::send(method, url, headers, body);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::send(method, url, headers, body);
}

/// The transport in a component: `wasi:http/outgoing-handler`.
#[cfg(target_arch = "wasm32")]
mod wasi {
    use super::Response;
    use crate::Failure;
    use std::io::{Read, Write};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };

    pub(super) fn send(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, Failure> {
        let (scheme, authority, path) = split_url(url)?;
        let fields: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        let fields = Fields::from_list(&fields)
            .map_err(|e| Failure::Invalid(format!("bad request header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_owned()),
        };
        let bad =
            |what: &str| Failure::Invalid(format!("cannot set the request {what} from `{url}`"));
        request.set_method(&method).map_err(|()| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| bad("path"))?;

        let outgoing = request.body().map_err(|()| bad("body"))?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| http_failure(url, e))?;
        // Nothing to write for an empty body (a GET): the host may already have sent the
        // request and closed the stream. A server may also answer before it has read a
        // body (a 403, a 413): its answer then counts, not the write that failed.
        let mut unsent = None;
        if !body.is_empty() {
            let mut stream = outgoing.write().map_err(|()| bad("body stream"))?;
            if let Err(e) = stream
                .write_all(body)
                .and_then(|()| Write::flush(&mut stream))
            {
                unsent = Some(format!("sending the body to {url} failed: {e}"));
            }
        }
        let finished = OutgoingBody::finish(outgoing, None);

        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => {
                return Err(unsent.map_or_else(|| http_failure(url, e), Failure::Retryable));
            }
            Some(Err(())) | None => {
                return Err(Failure::Retryable(
                    unsent.unwrap_or_else(|| format!("no response from {url}")),
                ));
            }
        };
        if let (Err(e), None) = (&finished, &unsent)
            && response.status() < 400
        {
            return Err(http_failure(url, e.clone()));
        }
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response.consume().map_err(|()| bad("response body"))?;
        let mut body = Vec::new();
        {
            let mut stream = incoming.stream().map_err(|()| bad("response stream"))?;
            stream.read_to_end(&mut body).map_err(|e| {
                Failure::Retryable(format!("reading the response of {url} failed: {e}"))
            })?;
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn http_failure(url: &str, e: ErrorCode) -> Failure {
        match e {
            ErrorCode::HttpRequestDenied => Failure::Invalid(format!(
                "the host refused the request to {url}: host not granted"
            )),
            ErrorCode::DestinationIpProhibited => Failure::Invalid(format!(
                "the host refused the request to {url}: its address is loopback, private, link-local or metadata, and no grant names it"
            )),
            ErrorCode::HttpResponseBodySize(cap) => Failure::Invalid(format!(
                "the response of {url} is larger than the plugin's cap ({} bytes)",
                cap.unwrap_or_default()
            )),
            ErrorCode::HttpRequestUriInvalid => Failure::Invalid(format!("invalid URL {url}")),
            other => Failure::Retryable(format!("request to {url} failed: {other:?}")),
        }
    }

    fn split_url(url: &str) -> Result<(Scheme, &str, &str), Failure> {
        let invalid = || Failure::Invalid(format!("`{url}` is not an absolute http(s) URL"));
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(invalid());
        }
        Ok((scheme, authority, path))
    }
}
