//! Serving storefront requests: the one admission step and the two engines that obey it.
//!
//! - [`decide`]: the admission step. Facts in, a [`decide::Verdict`] out; every request rule
//!   is written there once.
//! - [`http1`]: the HTTP/1 engine. Its connection loop reads every HTTP/1 request head
//!   (bounded), asks the admission step, and serves proxy verdicts on its fast path; every
//!   other request goes, with its verdict, to the Pingora engine.
//! - [`phases`]: the Pingora engine (`ProxyHttp`), for HTTP/2, request bodies, upgrades and
//!   every answer of our own.
//! - [`forward`]: the header policy both engines apply on the way to the upstream and back.
//! - [`pages`]: our branded pages; [`context`]: the Pingora engine's per-request context;
//!   [`tls`]: SNI capture; [`drain`]: the graceful-stop drain window.
//!
//! [`EdgeProxy`] is what both engines share: the routing table, the challenge answers, the
//! settings, the loop mark, the request-id generator, metrics and the access log, each
//! reached through a method (neither engine touches the other's state).

pub mod context;
pub mod decide;
pub mod drain;
pub mod forward;
pub mod hold;
pub mod http1;
pub mod pages;
pub mod phases;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tenantgate_certs::ChallengeStore;

use crate::metrics::{Metrics, RouteMetrics};
use crate::router::{RouteEntry, Router};
pub use context::RequestContext;
use decide::{Answer, ConnectionFacts, RequestFacts, Rules, Verdict};
use forward::LoopMark;

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
    /// Largest total size of request header names and values; also the most bytes read
    /// before a request head is complete.
    pub max_header_bytes: usize,
    /// Largest number of request headers.
    pub max_headers: usize,
    /// Port of the TLS listener, for redirects (`None`: TLS disabled).
    pub https_port: Option<u16>,
    /// Where the access log goes (`None`: no access log).
    pub access_log: Option<crate::access_log::Destination>,
    /// Keep upstream connection pools separate per route (else shared per address).
    pub pool_per_route: bool,
    /// Serve pipelined HTTP/1.1 requests in order (else close once one arrives early).
    pub http1_pipelining: bool,
    /// Forward request headers whose names contain `_`.
    pub allow_underscores_in_headers: bool,
    /// Load balancers in front (`trusted_proxies`): their `X-Forwarded-For` hop is the
    /// client, for per-client limits and our forwarding headers.
    pub trusted_proxies: Arc<[tenantgate_config::IpNet]>,
}

/// The verdict the HTTP/1 loop reached for a request it hands to the Pingora engine, carried
/// in the session's connection context: the request is decided once.
pub struct Decided {
    /// The verdict.
    pub verdict: Verdict,
}

/// What both engines share. Clones share the router, the request-id counter and the
/// metrics.
#[derive(Clone)]
pub struct EdgeProxy {
    router: Arc<Router>,
    challenges: Arc<ChallengeStore>,
    settings: ProxySettings,
    rules: Rules,
    loop_mark: LoopMark,
    metrics: Arc<Metrics>,
    /// The access log, when there is one (one writer, shared by clones).
    access: Option<Arc<crate::access_log::AccessLog>>,
    /// This process's request-id prefix, as its 8 hex digits.
    id_prefix_hex: [u8; 8],
    id_counter: Arc<AtomicU64>,
    /// What happens to requests for sleeping stores.
    holds: Arc<hold::Holds>,
}

impl EdgeProxy {
    /// A proxy reading `router`, marking what it forwards as `platform_domain`'s.
    pub fn new(
        router: Arc<Router>,
        challenges: Arc<ChallengeStore>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        platform_domain: &str,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().rotate_left(16);
        let rules = Rules {
            max_headers: settings.max_headers,
            max_header_bytes: settings.max_header_bytes,
            https_port: settings.https_port,
            trusted: settings.trusted_proxies.clone(),
        };
        let access = settings.access_log.clone().map(|d| {
            Arc::new(crate::access_log::AccessLog::new(
                d,
                metrics.access_log_dropped.clone(),
            ))
        });
        EdgeProxy {
            access,
            router,
            challenges,
            settings,
            rules,
            loop_mark: LoopMark::new(platform_domain),
            metrics,
            id_prefix_hex: {
                let mut hex = [0u8; 8];
                for (i, h) in hex.iter_mut().enumerate() {
                    *h = b"0123456789abcdef"[((seed >> (4 * (7 - i))) & 0xf) as usize];
                }
                hex
            },
            id_counter: Arc::new(AtomicU64::new(0)),
            holds: Arc::new(hold::Holds::new(
                &tenantgate_config::SleepConfig::default(),
                None,
            )),
        }
    }

    /// The same proxy holding requests for sleeping stores by `holds` (who wakes them, how
    /// long requests wait).
    pub fn with_holds(mut self, holds: hold::Holds) -> Self {
        self.holds = Arc::new(holds);
        self
    }

    /// The hold rules.
    pub fn holds(&self) -> &hold::Holds {
        &self.holds
    }

    /// The admission step over the current table.
    #[inline]
    pub fn decide(&self, req: &RequestFacts<'_>, conn: &ConnectionFacts<'_>) -> Verdict {
        decide::decide(
            &self.rules,
            &self.router.load(),
            &self.challenges,
            req,
            conn,
        )
    }

    /// The routing table (upstream health, the clock, the connect-time policy check).
    #[inline]
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The settings.
    #[inline]
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// The `Via` mark of this platform.
    #[inline]
    pub fn loop_mark(&self) -> &LoopMark {
        &self.loop_mark
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics of requests for hosts no route serves.
    pub fn unknown_metrics(&self) -> &RouteMetrics {
        &self.metrics.unknown
    }

    /// Count one answer of our own (for `route`, when a tenant's limit gave it).
    pub fn count_answer(&self, a: Answer, route: Option<&RouteEntry>) {
        self.metrics.answer(a);
        if let (Some(limit), Some(route)) = (a.limit(), route) {
            route.metrics.limited(limit);
        }
    }

    /// The rules of the admission step (the client address behind trusted proxies).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A new request id: 24 hex digits, this process's prefix and a counter.
    pub fn request_id_bytes(&self) -> [u8; 24] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 24];
        buf[..8].copy_from_slice(&self.id_prefix_hex);
        for (i, pair) in buf[8..].chunks_exact_mut(2).enumerate() {
            let byte = (n >> (8 * (7 - i))) as u8;
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        buf
    }

    fn next_request_id(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.request_id_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// One access-log line (both engines write through here).
    pub fn access_log(&self, r: &AccessRecord<'_>) {
        if let Some(log) = &self.access {
            log.write(r);
        }
    }

    /// Whether requests are logged (callers skip gathering a line's fields otherwise).
    pub fn logs_access(&self) -> bool {
        self.access.is_some()
    }
}

/// The fields of one access-log line.
pub struct AccessRecord<'a> {
    /// The client's address.
    pub client: Option<&'a pingora::protocols::l4::socket::SocketAddr>,
    /// The method.
    pub method: &'a str,
    /// The normalised host.
    pub host: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub version: &'static str,
    /// Over TLS.
    pub tls: bool,
    /// The status sent (0: none).
    pub status: u16,
    /// From the head to the end of the response.
    pub elapsed: Duration,
    /// Body bytes sent.
    pub bytes_sent: usize,
    /// The route's id (empty: none).
    pub route: &'a str,
    /// The upstream of the last attempt.
    pub upstream: Option<std::net::SocketAddr>,
    /// The request id.
    pub request_id: &'a str,
    /// The error type, when the request failed.
    pub error: &'a str,
    /// What happened: `proxied`, `challenge`, `redirect`, or an answer's name
    /// ([`decide::Answer::name`]).
    pub outcome: &'static str,
    /// Which engine served it: `http1` (the fast path) or `pingora`.
    pub engine: &'static str,
}
