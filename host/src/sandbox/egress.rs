//! Outbound HTTP for sink plugins: the host side of `wasi:http/outgoing-handler`.
//!
//! A plugin's request goes out only if three checks pass, all made by the host:
//!
//! 1. its origin (`scheme://host:port`) matches one of the plugin's `http` grants
//!    (checked in [`crate::sandbox::caps`] before anything is sent);
//! 2. every address the host resolves the name to is allowed: loopback, private,
//!    link-local, shared, benchmarking, reserved, cloud-metadata addresses
//!    (169.254.169.254, fd00:ec2::254, 168.63.129.16) and the IPv6 forms that embed an
//!    IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible) are refused unless a grant
//!    names that address literally (or `localhost` for loopback), and then only on
//!    the scheme and port it names. The connection goes to the address that was
//!    checked, so a name that re-resolves elsewhere (DNS rebinding) cannot slip
//!    through;
//! 3. the address is not one of this Tenon's own listeners, whatever the grants say:
//!    a plugin never reaches the admin API or ingress of the host that runs it;
//! 4. the request body stays under `max_request_bytes`, the response body under
//!    `max_response_bytes`.
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
    /// Origins its grants name literally (IP addresses, `localhost`): only there, on
    /// that scheme and port, may a special address be reached.
    named: Vec<tenon_registry::NamedOrigin>,
    /// This host's own listeners: never reachable.
    own: Listeners,
}

impl AddressPolicy {
    /// The policy of a plugin with these grants, on a host with these listeners.
    pub fn new(grants: &tenon_registry::Grants, own: Listeners) -> AddressPolicy {
        AddressPolicy {
            named: grants.named_origins(),
            own,
        }
    }

    /// Why `ip:port` may not be reached over `scheme`, or `None` when it may.
    pub fn refusal(&self, scheme: &str, ip: IpAddr, port: u16) -> Option<String> {
        if self.own.reaches(SocketAddr::new(ip, port)) {
            return Some(format!(
                "port {port} of this host, where Tenon itself listens: no plugin may reach it"
            ));
        }
        let class = special_class(ip)?;
        let named = self.named.iter().any(|o| {
            o.matches(scheme, port)
                && (o.host.parse::<IpAddr>().is_ok_and(|n| n == ip)
                    || (o.host == "localhost" && ip.is_loopback()))
        });
        (!named).then(|| format!("{class}, which no grant names on {scheme} port {port}"))
    }
}

/// The addresses this process listens on (ingress, admin API), shared with every
/// plugin's egress policy; filled in once the listeners are bound.
#[derive(Debug, Clone, Default)]
pub struct Listeners(Arc<std::sync::RwLock<Vec<SocketAddr>>>);

impl Listeners {
    /// Record a bound listener.
    pub fn add(&self, addr: SocketAddr) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(addr);
    }

    /// Whether a connection to `addr` could reach one of the listeners: same port,
    /// and the address is the listener's, a loopback or unspecified one, or any
    /// address of this machine (one a socket can be bound to).
    pub fn reaches(&self, addr: SocketAddr) -> bool {
        let listeners = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip()
                    || addr.ip().is_loopback()
                    || addr.ip().is_unspecified()
                    || std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok())
        })
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
            } else if seg[..6] == [0; 6] {
                Some("an IPv4-compatible address")
            } else if seg[..2] == [0x64, 0xff9b] {
                Some("a NAT64 address")
            } else if seg[0] == 0x2002 {
                Some("a 6to4 address")
            } else if seg[..2] == [0x2001, 0] {
                Some("a Teredo address")
            } else if seg[..2] == [0x2001, 0xdb8] {
                Some("a documentation address")
            } else if seg[..4] == [0x100, 0, 0, 0] {
                Some("a discard-only address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                Some("a site-local address")
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
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254)
        || ip == Ipv4Addr::new(100, 100, 100, 200)
        || ip == Ipv4Addr::new(168, 63, 129, 16)
    {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking address")
    } else if (a, b, c) == (192, 0, 0) || (a, b, c) == (192, 88, 99) {
        Some("a reserved protocol address")
    } else if matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113)) {
        Some("a documentation address")
    } else if a == 0 || ip.is_broadcast() || a >= 240 {
        Some("a non-routable address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// An address the policy refused; found in a client error's source chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{host}` resolves to {ip}, {why}")]
pub struct Prohibited {
    /// The host name asked for.
    pub host: String,
    /// The first refused address.
    pub ip: IpAddr,
    /// Why it may not be reached.
    pub why: String,
}

/// One plugin version's outbound HTTP client.
#[derive(Debug)]
pub struct Egress {
    client: Client<Connector, WasiBody>,
    policy: Arc<AddressPolicy>,
    max_response: u64,
    max_request: u64,
}

/// How an outbound request failed, as the guest will see it and as the audit log
/// records it.
#[derive(Debug)]
pub enum SendError {
    /// The address is not allowed: a sandbox denial.
    Prohibited(Prohibited),
    /// The response body is over the cap: a limit.
    TooLarge(u64),
    /// The request body is over the cap: a limit.
    RequestTooLarge(u64),
    /// A network or protocol failure.
    Network(HttpError),
}

impl Egress {
    /// A client for a plugin with these grants.
    pub fn new(grants: &tenon_registry::Grants, own: Listeners) -> Result<Egress, rustls::Error> {
        let policy = Arc::new(AddressPolicy::new(grants, own));
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
            max_request: grants.max_request_bytes,
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
        let limit = self.max_request;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(SendError::RequestTooLarge(limit));
        }
        // A body streamed past the cap fails the request; the flag tells why.
        let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let request = {
            let over = over.clone();
            let (parts, body) = request.into_parts();
            let body = http_body_util::Limited::new(body, limit as usize).map_err(move |e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    over.store(true, std::sync::atomic::Ordering::Relaxed);
                    HttpError::HttpRequestBodySize(Some(limit))
                } else {
                    match e.downcast::<HttpError>() {
                        Ok(e) => *e,
                        Err(_) => HttpError::HttpProtocolError,
                    }
                }
            });
            http::Request::from_parts(parts, body.boxed_unsync())
        };
        let sent = self.client.request(request).await;
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SendError::RequestTooLarge(limit));
        }
        let response = sent.map_err(classify)?;
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
        if let Some((ip, why)) = addrs.iter().find_map(|a| {
            let scheme = if https { "https" } else { "http" };
            let why = self.policy.refusal(scheme, a.ip(), a.port())?;
            Some((a.ip(), why))
        }) {
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
    fn the_forms_that_embed_or_reserve_addresses_are_special() {
        let class = |s: &str| special_class(s.parse().unwrap());
        for (ip, expected) in [
            ("64:ff9b::7f00:1", "a NAT64 address"),
            ("2002:7f00:1::", "a 6to4 address"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo address"),
            ("::127.0.0.1", "an IPv4-compatible address"),
            ("::a9fe:a9fe", "an IPv4-compatible address"),
            ("fec0::1", "a site-local address"),
            ("198.18.0.1", "a benchmarking address"),
            ("198.19.255.255", "a benchmarking address"),
            ("240.0.0.1", "a non-routable address"),
            ("168.63.129.16", "a cloud metadata address"),
            ("192.0.0.8", "a reserved protocol address"),
            ("192.88.99.1", "a reserved protocol address"),
            ("203.0.113.7", "a documentation address"),
            ("2001:db8::1", "a documentation address"),
            ("100::1", "a discard-only address"),
        ] {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        assert_eq!(class("198.20.0.1"), None);
        assert_eq!(class("2001:db9::1"), None, "not Teredo: 2001:0::/32 only");
    }

    fn grants(http: &[&str]) -> tenon_registry::Grants {
        tenon_registry::Grants {
            http: http.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_literally_named_special_origins_pass() {
        let none = Listeners::default;
        let wild = AddressPolicy::new(&grants(&["http://*", "https://*"]), none());
        assert!(wild.refusal("http", ip("127.0.0.1"), 80).is_some());
        assert!(wild.refusal("http", ip("169.254.169.254"), 80).is_some());
        assert!(wild.refusal("http", ip("93.184.216.34"), 80).is_none());
        let local = AddressPolicy::new(
            &grants(&["http://127.0.0.1:*", "http://localhost:8080"]),
            none(),
        );
        assert!(local.refusal("http", ip("127.0.0.1"), 9).is_none());
        assert!(
            local.refusal("http", ip("::1"), 8080).is_none(),
            "localhost names loopback"
        );
        assert!(
            local.refusal("http", ip("::1"), 8081).is_some(),
            "but only on the port it names"
        );
        assert!(
            local.refusal("https", ip("127.0.0.1"), 443).is_some(),
            "and the scheme"
        );
        assert!(local.refusal("http", ip("10.0.0.1"), 80).is_some());
        let named = AddressPolicy::new(&grants(&["http://erp.internal:8000"]), none());
        assert!(
            named.refusal("http", ip("10.0.0.1"), 8000).is_some(),
            "a name is not an address"
        );
        let port9 = AddressPolicy::new(&grants(&["http://localhost:9"]), none());
        assert!(port9.refusal("http", ip("127.0.0.1"), 9).is_none());
        assert!(port9.refusal("http", ip("127.0.0.1"), 8081).is_some());
    }

    #[test]
    fn the_hosts_own_listeners_are_never_reached() {
        let own = Listeners::default();
        own.add("127.0.0.1:8081".parse().unwrap());
        own.add("0.0.0.0:8080".parse().unwrap());
        let policy = AddressPolicy::new(&grants(&["http://127.0.0.1:*", "http://*"]), own);
        let why = |port: u16| {
            Some(format!(
                "port {port} of this host, where Tenon itself listens: no plugin may reach it"
            ))
        };
        assert_eq!(policy.refusal("http", ip("127.0.0.1"), 8081), why(8081));
        assert_eq!(policy.refusal("http", ip("127.0.0.2"), 8081), why(8081));
        assert_eq!(policy.refusal("http", ip("::1"), 8080), why(8080));
        assert_eq!(policy.refusal("http", ip("0.0.0.0"), 8080), why(8080));
        assert_eq!(policy.refusal("http", ip("127.0.0.1"), 9000), None);
    }
}
