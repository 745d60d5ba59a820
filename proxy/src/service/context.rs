//! The Pingora engine's typed per-request context, filled in `request_filter` and read by
//! every later phase and by `logging()`, where metrics and the access log are written once.

use std::sync::Arc;
use std::time::Instant;

use tenantgate_config::host::HostBuf;

use super::decide::{Answer, Verdict};
use super::forward::Length;
use crate::limits::requests::Permit;
use crate::router::RouteEntry;

/// What the proxy knows about one request.
pub struct RequestContext {
    /// When the request's headers were read.
    pub start: Instant,
    /// The request arrived over TLS.
    pub tls: bool,
    /// Normalised Host (empty until `request_filter` has read it).
    pub host: HostBuf,
    /// The route serving the host, once known.
    pub route: Option<Arc<RouteEntry>>,
    /// Index of the upstream of the current attempt.
    pub upstream: Option<usize>,
    /// The route's upstreams serving this request's path (a range of its one list).
    pub upstreams: std::ops::Range<usize>,
    /// Bitmask of upstream indexes already tried for this request.
    pub tried: u64,
    /// `X-Request-Id`, as received or generated.
    pub request_id: Option<http::HeaderValue>,
    /// The request's `Content-Length`, folded: what the upstream gets as its one value.
    pub length: Length,
    /// The client asked for a protocol change (`Upgrade`).
    pub upgrade: bool,
    /// What happened, for the access log.
    pub outcome: &'static str,
    /// Our own answer, when we gave one.
    pub answer: Option<Answer>,
    /// The verdict the HTTP/1 loop already reached for this request, if it handed it over.
    pub handed: Option<Verdict>,
    /// The client's address (the peer, or the hop trusted proxies vouch for).
    pub client: Option<std::net::IpAddr>,
    /// Its place among the tenant's requests in flight, released when the context drops.
    pub permit: Option<Permit>,
    /// Counts it among the route's requests in flight (an upgraded connection's whole
    /// life included), released when the context drops.
    pub active: Option<crate::traffic::InFlight>,
    /// Request body bytes seen so far (against the tenant's `max_body_bytes`).
    pub body_bytes: u64,
    /// The body grew beyond the tenant's `max_body_bytes` as it streamed.
    pub body_too_large: bool,
}

impl Default for RequestContext {
    fn default() -> Self {
        RequestContext {
            start: Instant::now(),
            tls: false,
            host: HostBuf::default(),
            route: None,
            upstream: None,
            upstreams: 0..0,
            tried: 0,
            request_id: None,
            length: Length::Absent,
            upgrade: false,
            outcome: "proxied",
            answer: None,
            handed: None,
            client: None,
            permit: None,
            active: None,
            body_bytes: 0,
            body_too_large: false,
        }
    }
}
