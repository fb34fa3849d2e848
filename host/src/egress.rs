//! Outbound HTTP for sink plugins: the host side of `wasi:http/outgoing-handler`.
//!
//! A plugin's request goes out only if three checks pass, all made by the host:
//!
//! 1. its origin (`scheme://host:port`) matches one of the plugin's `http` grants
//!    (checked in [`crate::caps`] before anything is sent);
//! 2. every address the host resolves the name to is allowed: loopback, private,
//!    link-local, shared and cloud-metadata addresses (169.254.169.254, fd00:ec2::254)
//!    are refused unless a grant names that address literally (or `localhost` for
//!    loopback). The connection goes to the address that was checked, so a name that
//!    re-resolves elsewhere (DNS rebinding) cannot slip through;
//! 3. the response body stays under the plugin's `max_response_bytes`.
//!
//! Redirects are not followed by the host: a plugin that follows one makes a new
//! request, which passes the same checks. The plugin's call deadline bounds the
//! whole exchange.
//!
//! Each plugin version has its own [`Egress`]: a pooled client whose connections are
//! made under that plugin's policy and are never shared with another plugin.

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Longest a TCP connect (with TLS) may take, within the call's own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which addresses a plugin may reach besides public ones.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Hosts its grants name literally (lower-case): IP addresses, `localhost`.
    named: Vec<String>,
}

impl AddressPolicy {
    /// The policy of a plugin with these grants.
    pub fn new(grants: &tenon_registry::Grants) -> AddressPolicy {
        AddressPolicy {
            named: grants.named_hosts(),
        }
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let class = special_class(ip)?;
        let named = self.named.iter().any(|h| {
            h.parse::<IpAddr>().is_ok_and(|n| n == ip) || (h == "localhost" && ip.is_loopback())
        });
        (!named).then_some(class)
    }
}

/// What makes an address special, or `None` for an ordinary public address.
pub fn special_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_class(v4);
            }
            let seg = v6.segments();
            if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 || ip.is_broadcast() {
        Some("a non-routable address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// An address the policy refused; found in a client error's source chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{host}` resolves to {ip}, {why}, which no grant names")]
pub struct Prohibited {
    /// The host name asked for.
    pub host: String,
    /// The first refused address.
    pub ip: IpAddr,
    /// What kind of address it is.
    pub why: &'static str,
}

/// One plugin version's outbound HTTP client.
#[derive(Debug)]
pub struct Egress {
    client: Client<Connector, WasiBody>,
    policy: Arc<AddressPolicy>,
    max_response: u64,
}

/// How an outbound request failed, as the guest will see it and as the audit log
/// records it.
#[derive(Debug)]
pub enum SendError {
    /// The address is not allowed: a sandbox denial.
    Prohibited(Prohibited),
    /// The response body is over the cap: a limit.
    TooLarge(u64),
    /// A network or protocol failure.
    Network(HttpError),
}

impl Egress {
    /// A client for a plugin with these grants.
    pub fn new(grants: &tenon_registry::Grants) -> Result<Egress, rustls::Error> {
        let policy = Arc::new(AddressPolicy::new(grants));
        let connector = Connector {
            policy: policy.clone(),
            tls: tls_connector()?,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        Ok(Egress {
            client,
            policy,
            max_response: grants.max_response_bytes,
        })
    }

    /// The address policy (for checking an IP literal before sending).
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Send `request` (absolute URI) and hand back the response with its body capped.
    /// `on_too_large` runs if the body turns out larger than the cap.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        on_too_large: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<http::Response<WasiBody>, SendError> {
        let response = self.client.request(request).await.map_err(classify)?;
        let cap = self.max_response;
        let (parts, body) = response.into_parts();
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > cap)
        {
            return Err(SendError::TooLarge(cap));
        }
        let capped = http_body_util::Limited::new(body, cap as usize).map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                on_too_large(cap);
                HttpError::HttpResponseBodySize(Some(cap))
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(e) => HttpError::from(*e),
                    Err(_) => HttpError::HttpProtocolError,
                }
            }
        });
        Ok(http::Response::from_parts(parts, capped.boxed_unsync()))
    }
}

/// Map a client error to what the guest sees; a refused address keeps its reason.
fn classify(error: hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(p) = e.downcast_ref::<Prohibited>() {
            return SendError::Prohibited(p.clone());
        }
        if let Some(c) = e.downcast_ref::<ConnectFailure>() {
            return SendError::Network(c.to_wasi());
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && !error.is_connect()
        {
            return SendError::Network(if h.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::HttpProtocolError
            });
        }
        source = e.source();
    }
    SendError::Network(if error.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::HttpProtocolError
    })
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A connect that failed for a network reason.
#[derive(Debug, thiserror::Error)]
enum ConnectFailure {
    #[error("cannot resolve `{0}`: {1}")]
    Dns(String, std::io::Error),
    #[error("`{0}` has no address")]
    NoAddress(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("bad URI: {0}")]
    Uri(String),
}

impl ConnectFailure {
    fn to_wasi(&self) -> HttpError {
        match self {
            ConnectFailure::Dns(..) | ConnectFailure::NoAddress(_) => {
                HttpError::DestinationNotFound
            }
            ConnectFailure::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                HttpError::ConnectionRefused
            }
            ConnectFailure::Connect(_) => HttpError::DestinationUnavailable,
            ConnectFailure::Timeout => HttpError::ConnectionTimeout,
            ConnectFailure::Tls(_) => HttpError::TlsProtocolError,
            ConnectFailure::Uri(_) => HttpError::HttpRequestUriInvalid,
        }
    }
}

/// Makes connections under one plugin's address policy.
#[derive(Clone)]
struct Connector {
    policy: Arc<AddressPolicy>,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl Connector {
    async fn connect(&self, uri: http::Uri) -> Result<TokioIo<Stream>, BoxError> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri
            .host()
            .ok_or_else(|| ConnectFailure::Uri(uri.to_string()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| ConnectFailure::Dns(host.clone(), e))?
                .collect(),
        };
        // Every address must pass: a name with one public and one private address
        // could otherwise be steered to the private one.
        if let Some((ip, why)) = addrs
            .iter()
            .find_map(|a| self.policy.refusal(a.ip()).map(|why| (a.ip(), why)))
        {
            return Err(Box::new(Prohibited { host, ip, why }));
        }
        let mut last = ConnectFailure::NoAddress(host.clone());
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    if !https {
                        return Ok(TokioIo::new(Stream::Plain(tcp)));
                    }
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| ConnectFailure::Uri(e.to_string()))?;
                    let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
                        .await
                        .map_err(|_| ConnectFailure::Timeout)?
                        .map_err(ConnectFailure::Tls)?;
                    return Ok(TokioIo::new(Stream::Tls(Box::new(tls))));
                }
                Ok(Err(e)) => last = ConnectFailure::Connect(e),
                Err(_) => last = ConnectFailure::Timeout,
            }
        }
        Err(Box::new(last))
    }
}

/// A connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_classified() {
        let class = |s: &str| special_class(s.parse().unwrap());
        assert_eq!(class("169.254.169.254"), Some("a cloud metadata address"));
        assert_eq!(class("fd00:ec2::254"), Some("a cloud metadata address"));
        assert_eq!(class("127.0.0.1"), Some("a loopback address"));
        assert_eq!(class("::1"), Some("a loopback address"));
        assert_eq!(class("::ffff:10.0.0.1"), Some("a private address"));
        assert_eq!(class("10.1.2.3"), Some("a private address"));
        assert_eq!(class("172.16.0.1"), Some("a private address"));
        assert_eq!(class("192.168.1.1"), Some("a private address"));
        assert_eq!(class("169.254.1.1"), Some("a link-local address"));
        assert_eq!(class("fe80::1"), Some("a link-local address"));
        assert_eq!(
            class("100.64.0.1"),
            Some("a shared (carrier-grade NAT) address")
        );
        assert_eq!(class("0.0.0.0"), Some("a non-routable address"));
        assert_eq!(class("93.184.216.34"), None);
        assert_eq!(class("2606:2800:220:1:248:1893:25c8:1946"), None);
    }

    #[test]
    fn only_literally_named_special_addresses_pass() {
        let grants = |http: &[&str]| tenon_registry::Grants {
            http: http.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let wild = AddressPolicy::new(&grants(&["http://*", "https://*"]));
        assert!(wild.refusal(ip("127.0.0.1")).is_some());
        assert!(wild.refusal(ip("169.254.169.254")).is_some());
        assert!(wild.refusal(ip("93.184.216.34")).is_none());
        let local = AddressPolicy::new(&grants(&["http://127.0.0.1:*", "http://localhost:8080"]));
        assert!(local.refusal(ip("127.0.0.1")).is_none());
        assert!(
            local.refusal(ip("::1")).is_none(),
            "localhost names loopback"
        );
        assert!(local.refusal(ip("10.0.0.1")).is_some());
        let named = AddressPolicy::new(&grants(&["http://erp.internal:8000"]));
        assert!(
            named.refusal(ip("10.0.0.1")).is_some(),
            "a name is not an address"
        );
    }
}
