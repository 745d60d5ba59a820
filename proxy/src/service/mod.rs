//! The `ProxyHttp` implementation: the phases every storefront request goes through.
//!
//! Phase contract (see Pingora's `proxy_trait.rs` for the engine's side):
//! - `request_filter`: header limits (431), Host extraction and normalisation (400), route
//!   lookup (404), SNI/Host consistency (421), suspended tenant (503), HTTP→HTTPS redirect
//!   (308). Everything the proxy
//!   answers itself is answered here or in `fail_to_proxy`, never by a tenant.
//! - `upstream_peer`: round robin over the route's healthy upstreams, pooled per route.
//! - `fail_to_connect`: passive health — the upstream sits out a cooldown and the request is
//!   retried on another upstream (safe for any method: nothing was sent yet).
//! - `upstream_request_filter`: forwarding headers are set by us, client copies replaced.
//!   Hop-by-hop and Connection-named headers are stripped by Pingora's standard upstream
//!   request policy, which keeps WebSocket upgrades intact.
//! - `logging`: metrics and the access log, written once per request.

pub mod context;
pub mod drain;
pub mod http1;
pub mod pages;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::ErrorSource;
use pingora::ErrorType;
use tenantgate_certs::ChallengeStore;
use tenantgate_config::host::{normalize_into, HostBuf};

use crate::metrics::{RouteMetrics, UpstreamErrorKind};
use crate::router::Router;
pub use context::RequestContext;
use tls::Sni;

/// Knobs of the hot path, taken from `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Upstream TCP connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read timeout.
    pub read_timeout: Duration,
    /// Upstream write timeout.
    pub write_timeout: Duration,
    /// Idle time of a pooled upstream connection.
    pub idle_timeout: Duration,
    /// How long an upstream sits out after a connect failure.
    pub unhealthy_cooldown: Duration,
    /// Largest total size of request header names and values.
    pub max_header_bytes: usize,
    /// Largest number of request headers.
    pub max_headers: usize,
    /// Port of the TLS listener, for redirects (`None`: TLS disabled).
    pub https_port: Option<u16>,
    /// Write an access-log line per request.
    pub access_log: bool,
    /// Keep upstream connection pools separate per route (else shared per address).
    pub pool_per_route: bool,
    /// Serve pipelined HTTP/1.1 requests (sequentially, responses in order).
    pub http1_pipelining: bool,
}

/// The edge proxy service. Clones share the router, the request-id counter and the
/// metrics: the HTTP/1 fast path ([`http1`]) and the Pingora path decide alike.
#[derive(Clone)]
pub struct EdgeProxy {
    router: Arc<Router>,
    challenges: Arc<ChallengeStore>,
    settings: ProxySettings,
    unknown: Arc<RouteMetrics>,
    id_prefix: u32,
    id_counter: Arc<AtomicU64>,
}

impl EdgeProxy {
    /// A proxy reading `router`, counting unknown hosts in `unknown`.
    pub fn new(
        router: Arc<Router>,
        challenges: Arc<ChallengeStore>,
        settings: ProxySettings,
        unknown: Arc<RouteMetrics>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().rotate_left(16);
        EdgeProxy {
            router,
            challenges,
            settings,
            unknown,
            id_prefix: seed,
            id_counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A new request id: 24 hex digits, this process's prefix and a counter.
    fn request_id_bytes(&self) -> [u8; 24] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 24];
        let v = (u128::from(self.id_prefix) << 64) | u128::from(n);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((v >> (4 * (23 - i))) & 0xf) as usize];
        }
        buf
    }

    fn next_request_id(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.request_id_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// One access-log line (both request paths write through here).
    fn access_log(&self, r: &AccessRecord<'_>) {
        tracing::info!(
            target: "tenantgate::access",
            client = %r.client.map(ToString::to_string).unwrap_or_default(),
            method = r.method,
            host = r.host,
            path = r.path,
            version = r.version,
            tls = r.tls,
            status = r.status,
            duration_us = r.elapsed.as_micros() as u64,
            bytes_sent = r.bytes_sent,
            route = r.route,
            upstream = %r.upstream.map(|a| a.to_string()).unwrap_or_default(),
            request_id = r.request_id,
            error = r.error,
            engine = r.engine,
        );
    }

    /// Answer the request ourselves with one of our pages (or a redirect) and keep the
    /// connection alive unless the request was malformed.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        status: u16,
        location: Option<String>,
    ) -> Result<bool> {
        let req = session.req_header();
        let html = pages::wants_html(req.headers.get(header::ACCEPT).map(HeaderValue::as_bytes));
        let (content_type, body) = match location {
            Some(_) => ("text/plain; charset=utf-8", Bytes::new()),
            None => pages::body(status, html),
        };
        if matches!(status, 400 | 431) {
            // A malformed request may leave the stream in an unknown state: do not reuse it.
            session.set_keepalive(None);
        }
        self.respond(session, ctx, status, content_type, body, location)
            .await
    }

    /// Answer a live challenge: its exact body as plain text.
    async fn challenge(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        body: &str,
    ) -> Result<bool> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        self.respond(session, ctx, 200, "text/plain", body, None)
            .await
    }

    /// Write a complete response of our own (no body for HEAD).
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        status: u16,
        content_type: &'static str,
        body: Bytes,
        location: Option<String>,
    ) -> Result<bool> {
        let head = session.req_header().method == http::Method::HEAD;
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if let Some(l) = location {
            resp.insert_header(header::LOCATION, l)?;
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        let end = head || body.is_empty();
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

/// What `request_filter` decided before it needs the session mutably.
enum Verdict {
    Proxy,
    Challenge(Arc<str>),
    Answer(u16),
    Redirect(String),
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::default()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestContext,
    ) -> Result<()> {
        if self.settings.http1_pipelining {
            // Pingora serves pipelined requests one after another, each routed on its own.
            session.set_pipelining_enabled(true);
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
        ctx.tls = ssl.is_some();
        // Borrowed, not cloned: no allocation per TLS request.
        let sni = ssl
            .and_then(|s| s.extension.get::<Sni>())
            .and_then(|s| s.0.as_deref());
        let req = session.req_header();
        if let Some(id) = req
            .headers
            .get("x-request-id")
            .filter(|v| valid_request_id(v.as_bytes()))
        {
            ctx.request_id = Some(id.clone());
        }

        let verdict = 'v: {
            let (mut count, mut bytes) = (0usize, 0usize);
            for (k, v) in &req.headers {
                count += 1;
                bytes += k.as_str().len() + v.len();
            }
            if count > self.settings.max_headers || bytes > self.settings.max_header_bytes {
                break 'v Verdict::Answer(431);
            }
            let mut hosts = req.headers.get_all(header::HOST).iter();
            let host_header = hosts.next();
            if hosts.next().is_some() {
                break 'v Verdict::Answer(400);
            }
            // HTTP/2 `:authority` and HTTP/1 absolute-form targets carry the host in the URI.
            let raw = match (req.uri.authority(), host_header) {
                (Some(a), _) => a.as_str().as_bytes(),
                (None, Some(h)) => h.as_bytes(),
                (None, None) => break 'v Verdict::Answer(400),
            };
            let Ok(host) = normalize_into(raw, &mut ctx.host) else {
                break 'v Verdict::Answer(400);
            };
            // ACME and ownership challenges are answered for the control plane before any
            // tenant routing, for exact live (hostname, path) pairs only; nothing else under
            // their prefixes reaches a tenant.
            let path = req.uri.path();
            if ChallengeStore::is_reserved(path) {
                match self.challenges.answer(host, path) {
                    Some(body) => break 'v Verdict::Challenge(body),
                    None => break 'v Verdict::Answer(404),
                }
            }
            let index = self.router.load();
            let Some(route) = index.lookup(host) else {
                break 'v Verdict::Answer(404);
            };
            if let Some(sni) = sni {
                // The certificate was chosen for the SNI name; serving another route's Host on
                // this connection would answer one tenant's request under another's identity.
                let mut buf = HostBuf::default();
                let same = normalize_into(sni.as_bytes(), &mut buf)
                    .ok()
                    .and_then(|s| index.lookup(s))
                    .is_some_and(|r| Arc::ptr_eq(r, route));
                if !same {
                    break 'v Verdict::Answer(421);
                }
            }
            ctx.route = Some(route.clone());
            if route.suspended {
                break 'v Verdict::Answer(503);
            }
            if route.refused.is_some() {
                break 'v Verdict::Answer(502);
            }
            if route.https_redirect && !ctx.tls {
                if let Some(port) = self.settings.https_port {
                    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
                    let loc = if port == 443 {
                        format!("https://{host}{pq}")
                    } else {
                        format!("https://{host}:{port}{pq}")
                    };
                    break 'v Verdict::Redirect(loc);
                }
            }
            Verdict::Proxy
        };
        match verdict {
            Verdict::Proxy => Ok(false),
            Verdict::Challenge(body) => self.challenge(session, ctx, &body).await,
            Verdict::Answer(status) => self.answer(session, ctx, status, None).await,
            Verdict::Redirect(loc) => self.answer(session, ctx, 308, Some(loc)).await,
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        ctx.upstreams = route.upstreams_for(session.req_header().uri.path());
        let Some(i) = route.pick(self.router.now_ms(), ctx.tried, ctx.upstreams.clone()) else {
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                "every upstream of the route failed",
            );
            e.esource = ErrorSource::Upstream;
            return Err(e);
        };
        ctx.upstream = Some(i);
        if i < 64 {
            ctx.tried |= 1 << i;
        }
        let addr = route.upstream(i).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream index out of range")
        })?;
        if let Some(r) = self.router.reaches_own_listener(addr) {
            tracing::warn!(
                route = route.id(),
                rule = r.rule.as_str(),
                "upstream refused at connect: {}",
                r.reason
            );
            let mut e = Error::explain(ErrorType::ConnectProxyFailure, "forbidden upstream");
            e.esource = ErrorSource::Upstream;
            return Err(e);
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        if self.settings.pool_per_route {
            peer.group_key = route.group_key;
        }
        let o = &mut peer.options;
        o.connection_timeout = Some(self.settings.connect_timeout);
        o.total_connection_timeout = Some(self.settings.connect_timeout);
        o.read_timeout = Some(self.settings.read_timeout);
        o.write_timeout = Some(self.settings.write_timeout);
        o.idle_timeout = Some(self.settings.idle_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(i)) = (&ctx.route, ctx.upstream) {
            route.mark_down(i, self.router.until_ms(self.settings.unhealthy_cooldown));
            route.metrics.upstream_error(UpstreamErrorKind::Connect);
            if route.has_untried(ctx.tried, ctx.upstreams.clone()) {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // `insert_header` replaces every value a client may have sent under the same name, so
        // client copies never survive. The three values share one buffer: one allocation.
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let values = ForwardedValues::new(client, ctx.host.as_str(), ctx.tls);
        match values.client() {
            Some(ip) => upstream_request.insert_header("x-forwarded-for", ip)?,
            None => {
                upstream_request.remove_header("x-forwarded-for");
            }
        }
        upstream_request.insert_header("forwarded", values.forwarded())?;
        upstream_request.insert_header("x-forwarded-host", values.host())?;
        upstream_request.insert_header("x-forwarded-proto", values.proto())?;
        let id = match &ctx.request_id {
            Some(id) => id.clone(),
            None => {
                let id = self.next_request_id();
                ctx.request_id = Some(id.clone());
                id
            }
        };
        upstream_request.insert_header("x-request-id", id)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            if upstream_response.headers.get("x-request-id").is_none() {
                upstream_response.insert_header("x-request-id", id.clone())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            etype => match e.esource() {
                ErrorSource::Upstream => match etype {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match etype {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(err) = self.answer(session, ctx, code, None).await {
                tracing::debug!("cannot send error page: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let metrics = ctx.route.as_ref().map_or(&self.unknown, |r| &r.metrics);
        if status > 0 {
            metrics.observe(status, elapsed.as_secs_f64());
        }
        if let Some(e) = e.filter(|e| *e.esource() == ErrorSource::Upstream) {
            let kind = match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute => None,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Some(UpstreamErrorKind::Timeout)
                }
                _ => Some(UpstreamErrorKind::Other),
            };
            // Connect failures were counted in `fail_to_connect`, once per attempt.
            if let Some(kind) = kind {
                metrics.upstream_error(kind);
            }
        }
        if self.settings.access_log {
            let req = session.req_header();
            let upstream = ctx
                .route
                .as_ref()
                .zip(ctx.upstream)
                .and_then(|(r, i)| r.upstream(i));
            // The names `http::Version`'s Debug gave the log before it had two writers.
            let version = match req.version {
                http::Version::HTTP_09 => "HTTP/0.9",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_11 => "HTTP/1.1",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP",
            };
            self.access_log(&AccessRecord {
                client: session.client_addr(),
                method: req.method.as_str(),
                host: ctx.host.as_str(),
                path: req.uri.path(),
                version,
                tls: ctx.tls,
                status,
                elapsed,
                bytes_sent: session.body_bytes_sent(),
                route: ctx.route.as_ref().map_or("", |r| r.id()),
                upstream,
                request_id: ctx
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                error: e.map(|e| e.etype().as_str()).unwrap_or(""),
                engine: "pingora",
            });
        }
    }
}

/// The fields of one access-log line.
struct AccessRecord<'a> {
    client: Option<&'a pingora::protocols::l4::socket::SocketAddr>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    version: &'static str,
    tls: bool,
    status: u16,
    elapsed: Duration,
    bytes_sent: usize,
    route: &'a str,
    upstream: Option<std::net::SocketAddr>,
    request_id: &'a str,
    error: &'a str,
    /// Which engine served it: `http1` (the fast path) or `pingora`.
    engine: &'static str,
}

/// The forwarding header values of one request, built in one buffer:
/// `for=<ip>;host=<host>;proto=<proto>`, with `X-Forwarded-For` and `X-Forwarded-Host` as
/// slices of it. IPv6 clients appear as `for="[v6]"` in `Forwarded` (RFC 7239).
struct ForwardedValues {
    buf: Bytes,
    client: Option<std::ops::Range<usize>>,
    host: std::ops::Range<usize>,
    tls: bool,
}

impl ForwardedValues {
    fn new(client: Option<IpAddr>, host: &str, tls: bool) -> Self {
        let mut buf = Vec::with_capacity(64 + host.len());
        let (client_range, host_range) = write_forwarded(&mut buf, client, host, tls);
        ForwardedValues {
            buf: Bytes::from(buf),
            client: client_range,
            host: host_range,
            tls,
        }
    }

    fn value(b: Bytes) -> HeaderValue {
        // Only digits, hex, dots, colons, brackets, quotes and normalised hostname bytes are
        // ever written, all valid in a header value.
        HeaderValue::from_maybe_shared(b).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn client(&self) -> Option<HeaderValue> {
        self.client.clone().map(|r| Self::value(self.buf.slice(r)))
    }

    fn forwarded(&self) -> HeaderValue {
        Self::value(self.buf.clone())
    }

    fn host(&self) -> HeaderValue {
        Self::value(self.buf.slice(self.host.clone()))
    }

    fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

/// Write `for=<ip>;host=<host>;proto=<proto>` (RFC 7239) into `buf`; returns where the bare
/// client address and the host are in it.
fn write_forwarded(
    buf: &mut Vec<u8>,
    client: Option<IpAddr>,
    host: &str,
    tls: bool,
) -> (Option<std::ops::Range<usize>>, std::ops::Range<usize>) {
    use std::io::Write as _;
    let mut client_range = None;
    if let Some(ip) = client {
        buf.extend_from_slice(b"for=");
        match ip {
            IpAddr::V4(v4) => {
                let start = buf.len();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf.push(b'.');
                    }
                    push_decimal(buf, octet);
                }
                client_range = Some(start..buf.len());
            }
            IpAddr::V6(v6) => {
                buf.extend_from_slice(b"\"[");
                let start = buf.len();
                let _ = write!(buf, "{v6}");
                client_range = Some(start..buf.len());
                buf.extend_from_slice(b"]\"");
            }
        }
        buf.push(b';');
    }
    buf.extend_from_slice(b"host=");
    let start = buf.len();
    buf.extend_from_slice(host.as_bytes());
    let host_range = start..buf.len();
    buf.extend_from_slice(if tls { b";proto=https" } else { b";proto=http" });
    (client_range, host_range)
}

/// Append the forwarding headers the upstream gets (`X-Forwarded-For`, `Forwarded`,
/// `X-Forwarded-Host`, `X-Forwarded-Proto`) to a raw HTTP/1 head, the same values as
/// [`EdgeProxy::upstream_request_filter`] sets.
fn push_forwarding_headers(head: &mut Vec<u8>, client: Option<IpAddr>, host: &str, tls: bool) {
    head.extend_from_slice(b"forwarded: ");
    let (client_range, host_range) = write_forwarded(head, client, host, tls);
    head.extend_from_slice(b"\r\n");
    if let Some(r) = client_range {
        head.extend_from_slice(b"x-forwarded-for: ");
        head.extend_from_within(r);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"x-forwarded-host: ");
    head.extend_from_within(host_range);
    head.extend_from_slice(if tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
}

fn push_decimal(buf: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        buf.push(b'0' + n / 100);
    }
    if n >= 10 {
        buf.push(b'0' + (n / 10) % 10);
    }
    buf.push(b'0' + n % 10);
}

/// A client-supplied request id is kept when it is short, visible ASCII.
fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_values_share_one_buffer_and_quote_ipv6() {
        let v = ForwardedValues::new(Some("10.0.255.7".parse().unwrap()), "a.test", false);
        assert_eq!(v.client().unwrap(), "10.0.255.7");
        assert_eq!(v.forwarded(), "for=10.0.255.7;host=a.test;proto=http");
        assert_eq!(v.host(), "a.test");
        assert_eq!(v.proto(), "http");
        let v = ForwardedValues::new(Some("::1".parse().unwrap()), "b.test", true);
        assert_eq!(v.client().unwrap(), "::1");
        assert_eq!(v.forwarded(), "for=\"[::1]\";host=b.test;proto=https");
        let v = ForwardedValues::new(None, "c.test", true);
        assert!(v.client().is_none());
        assert_eq!(v.forwarded(), "host=c.test;proto=https");
        for n in [0u8, 9, 10, 99, 100, 255] {
            let mut b = Vec::new();
            push_decimal(&mut b, n);
            assert_eq!(b, n.to_string().into_bytes());
        }
    }
}
