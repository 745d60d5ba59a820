//! The one admission step: what happens to a request, decided once, for both engines.
//!
//! An engine turns bytes into facts ([`RequestFacts`], [`ConnectionFacts`]) and a
//! [`Verdict`] into bytes; every rule lives here. The HTTP/1.1 fast path serves
//! [`Verdict::Proxy`] and the 429 of a limit (a refusal must cost less than a request) and
//! hands every other verdict, with the request, to the Pingora engine, so the other answers
//! of our own have one writer; both engines write our pages from `pages.rs`. [`Answer`] is the one table from an
//! outcome to its status, its name in the access log and metrics, and whether the connection
//! may be reused after it.
//!
//! Order of the rules (the first that applies wins): header limits (431), request target
//! form, `Host`, framing (400), our own `Via` mark (508), challenge paths (the challenge or
//! 404), the route (404), SNI against `Host` (421), suspended (503), asleep (hold: the
//! engine waits for the store to wake and decides again), upstream policy (502),
//! HTTPS redirect (308), the tenant's limits (413, then 429: the client's rate, the
//! tenant's rate, requests in flight), proxy.
//!
//! Invariants: nothing here awaits or allocates on the proxy verdict; the same facts (and
//! the same limiter state) give the same verdict (no engine-specific branch). A request the
//! limits admit holds its place among the tenant's requests in flight through the verdict's
//! [`Permit`] until the engine drops it at the end of the response.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tenantgate_certs::ChallengeStore;
use tenantgate_config::IpNet;

use super::forward::Length;
use crate::limits::requests::{Limit, Permit};
use crate::router::{RouteEntry, RouteIndex};
use crate::traffic::InFlight;
use tenantgate_config::SleepLevel;

/// The SNI name of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniFact<'a> {
    /// Plain TCP, or TLS without SNI.
    Absent,
    /// The normalised name.
    Name(&'a str),
    /// Sent, but not a hostname.
    Invalid,
}

/// What is known of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    /// Over TLS.
    pub tls: bool,
    /// The SNI name, on TLS.
    pub sni: SniFact<'a>,
    /// The socket's peer address (`None`: not an IP socket).
    pub peer: Option<IpAddr>,
}

/// The request's host, as `Host` (HTTP/1), the absolute-form target or `:authority` (HTTP/2)
/// gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFact<'a> {
    /// Normalised.
    Name(&'a str),
    /// None given.
    Missing,
    /// More than one `Host`.
    Duplicate,
    /// Not a hostname.
    Invalid,
}

/// The request target's form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`.
    Origin,
    /// `http://host/path?query` (its authority is the host).
    Absolute,
    /// `*`, for `OPTIONS`.
    Asterisk,
    /// Anything else: `x.test/`, `CONNECT`'s authority form (we are not a forward proxy), a
    /// target with bytes no form allows.
    Invalid,
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coding {
    /// No `Transfer-Encoding`.
    #[default]
    None,
    /// `Transfer-Encoding: chunked`, alone.
    Chunked,
    /// Any other transfer coding, or chunked not alone: refused rather than guessed at.
    Invalid,
}

/// What an engine read of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a str,
    /// The host.
    pub host: HostFact<'a>,
    /// The target's form.
    pub target: Target,
    /// The path, without the query.
    pub path: &'a str,
    /// The path and query, as sent (for redirects).
    pub path_and_query: &'a str,
    /// Number of header fields.
    pub header_count: usize,
    /// Total bytes of header names and values.
    pub header_bytes: usize,
    /// A `Via` header carries this platform's mark.
    pub looped: bool,
    /// The `Content-Length` headers, folded.
    pub length: Length,
    /// The `Transfer-Encoding` headers.
    pub coding: Coding,
    /// The last `X-Forwarded-For` header's value, as sent (read only when the peer is one of
    /// `trusted_proxies`).
    pub forwarded_for: Option<&'a [u8]>,
    /// When the head was read (the clock of the rate limits; `None`: read the clock when a
    /// limit needs it).
    pub at: Option<Instant>,
}

/// Why a request is malformed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The head does not parse (HTTP/1 only: answered by the connection itself).
    Head,
    /// The request target is in no valid form.
    Target,
    /// `Host` missing, repeated or not a hostname.
    Host,
    /// `Content-Length` invalid or contradictory, or given with `Transfer-Encoding`, or a
    /// transfer coding other than chunked.
    Framing,
}

/// Every answer the proxy gives itself, and the outcomes of proxying: the one table from an
/// outcome to status, log name and connection fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 400.
    BadRequest(Malformed),
    /// 404: no route for the host.
    NotFound,
    /// 404: a reserved challenge path without a live challenge.
    NoChallenge,
    /// 421: the host belongs to another route than the connection's SNI.
    Misdirected,
    /// 431.
    HeadersTooLarge,
    /// 503: the tenant is suspended.
    Suspended,
    /// 503 with `Retry-After`: a crawler or uptime checker asked for a stopped store, which
    /// it does not wake.
    Asleep,
    /// 503: the "waking up" page, for a browser navigation held past `wake_hold_ms`.
    Waking,
    /// 503 with `Retry-After`: the store did not wake within `wake_timeout_seconds`.
    WakeTimeout,
    /// 502: an upstream of the route breaks this node's upstream policy.
    ForbiddenUpstream,
    /// 508: the request already went through one of our proxies.
    Loop,
    /// Beyond one of the tenant's limits: 413 for the body size (`max_body_bytes`), 429 for
    /// the rates and requests in flight.
    Limited(Limit),
    /// 502: no upstream could be reached or it answered garbage.
    BadGateway,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 500.
    Internal,
}

impl Answer {
    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            Answer::BadRequest(_) => 400,
            Answer::NotFound | Answer::NoChallenge => 404,
            Answer::Misdirected => 421,
            Answer::HeadersTooLarge => 431,
            Answer::Suspended | Answer::Asleep | Answer::Waking | Answer::WakeTimeout => 503,
            Answer::ForbiddenUpstream | Answer::BadGateway => 502,
            Answer::Loop => 508,
            Answer::Limited(Limit::BodySize) => 413,
            Answer::Limited(_) => 429,
            Answer::GatewayTimeout => 504,
            Answer::Internal => 500,
        }
    }

    /// Its name in the access log (`outcome`) and in metrics (`reason`): a fixed set.
    pub fn name(self) -> &'static str {
        match self {
            Answer::BadRequest(Malformed::Head) => "bad_head",
            Answer::BadRequest(Malformed::Target) => "bad_target",
            Answer::BadRequest(Malformed::Host) => "bad_host",
            Answer::BadRequest(Malformed::Framing) => "bad_framing",
            Answer::NotFound => "unknown_host",
            Answer::NoChallenge => "no_challenge",
            Answer::Misdirected => "misdirected",
            Answer::HeadersTooLarge => "headers_too_large",
            Answer::Suspended => "suspended",
            Answer::Asleep => "asleep",
            Answer::Waking => "waking",
            Answer::WakeTimeout => "wake_timeout",
            Answer::ForbiddenUpstream => "forbidden_upstream",
            Answer::Loop => "loop",
            Answer::Limited(Limit::Rate) => "limited_rate",
            Answer::Limited(Limit::ClientRate) => "limited_client_rate",
            Answer::Limited(Limit::Concurrency) => "limited_concurrency",
            Answer::Limited(Limit::BodySize) => "body_too_large",
            Answer::BadGateway => "bad_gateway",
            Answer::GatewayTimeout => "gateway_timeout",
            Answer::Internal => "internal",
        }
    }

    /// Whether the connection must close after this answer: a malformed request may leave
    /// the stream in an unknown state; a loop should not be kept open either; a body too
    /// large is not read.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Answer::BadRequest(_)
                | Answer::HeadersTooLarge
                | Answer::Loop
                | Answer::Limited(Limit::BodySize)
        )
    }

    /// The limit behind the answer, if a tenant's limit gave it.
    pub fn limit(self) -> Option<Limit> {
        match self {
            Answer::Limited(l) => Some(l),
            _ => None,
        }
    }

    /// Every answer, for tests and metrics registration.
    pub const ALL: [Answer; 21] = [
        Answer::BadRequest(Malformed::Head),
        Answer::BadRequest(Malformed::Target),
        Answer::BadRequest(Malformed::Host),
        Answer::BadRequest(Malformed::Framing),
        Answer::NotFound,
        Answer::NoChallenge,
        Answer::Misdirected,
        Answer::HeadersTooLarge,
        Answer::Suspended,
        Answer::Asleep,
        Answer::Waking,
        Answer::WakeTimeout,
        Answer::ForbiddenUpstream,
        Answer::Loop,
        Answer::Limited(Limit::BodySize),
        Answer::Limited(Limit::Rate),
        Answer::Limited(Limit::ClientRate),
        Answer::Limited(Limit::Concurrency),
        Answer::BadGateway,
        Answer::GatewayTimeout,
        Answer::Internal,
    ];
}

/// What happens to a request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it to one of `upstreams` (a range of the route's one list).
    Proxy {
        /// The route.
        route: Arc<RouteEntry>,
        /// The upstreams serving its path.
        upstreams: Range<usize>,
        /// The client's address: the peer, or the hop `trusted_proxies` vouch for.
        client: Option<IpAddr>,
        /// Its place among the tenant's requests in flight, held until the response ends.
        permit: Option<Permit>,
        /// Counts it among the route's requests in flight (a store with one never sleeps).
        active: InFlight,
    },
    /// The tenant's containers sleep: hold the request while the store wakes, then decide
    /// again.
    Hold {
        /// The route.
        route: Arc<RouteEntry>,
        /// How deeply it sleeps.
        level: SleepLevel,
    },
    /// Answer a live challenge with this body.
    Challenge(Arc<str>),
    /// Answer it ourselves; `route` is whose metrics count it (`None`: the unknown host).
    Answer {
        /// The answer.
        answer: Answer,
        /// The route the host belongs to, when it is one of ours.
        route: Option<Arc<RouteEntry>>,
        /// Seconds for `Retry-After` (0: none).
        retry_after: u32,
    },
    /// `308` to this location.
    Redirect {
        /// The route.
        route: Arc<RouteEntry>,
        /// Where to.
        location: String,
    },
}

impl Verdict {
    fn answer(answer: Answer) -> Verdict {
        Verdict::Answer {
            answer,
            route: None,
            retry_after: 0,
        }
    }

    /// The route the verdict concerns, if any.
    pub fn route(&self) -> Option<&Arc<RouteEntry>> {
        match self {
            Verdict::Proxy { route, .. }
            | Verdict::Redirect { route, .. }
            | Verdict::Hold { route, .. } => Some(route),
            Verdict::Answer { route, .. } => route.as_ref(),
            Verdict::Challenge(_) => None,
        }
    }
}

/// The settings the rules read.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Most header fields (431 beyond).
    pub max_headers: usize,
    /// Most bytes of header names and values (431 beyond).
    pub max_header_bytes: usize,
    /// The TLS listener's port, for redirects (`None`: no TLS, no redirects).
    pub https_port: Option<u16>,
    /// Networks of load balancers whose `X-Forwarded-For` hop names the client.
    pub trusted: Arc<[IpNet]>,
}

impl Rules {
    /// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` entry that is not one (the hop the trusted chain vouches
    /// for). An entry that is not an address ends the walk at the last address trusted so
    /// far; a spoofed header from an untrusted peer is never read.
    #[inline]
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: Option<&[u8]>) -> Option<IpAddr> {
        let peer = peer?;
        if self.trusted.is_empty() || !self.trusted(peer) {
            return Some(peer);
        }
        let Some(xff) = forwarded_for else {
            return Some(peer);
        };
        let mut last = peer;
        for hop in xff.rsplit(|&b| b == b',') {
            let Some(ip) = std::str::from_utf8(hop)
                .ok()
                .and_then(|h| parse_hop(h.trim_matches(|c| c == ' ' || c == '\t')))
            else {
                return Some(last);
            };
            if !self.trusted(ip) {
                return Some(ip);
            }
            last = ip;
        }
        Some(last)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = tenantgate_config::net::canonical(ip);
        self.trusted.iter().any(|n| n.contains(ip))
    }
}

/// One `X-Forwarded-For` entry: an address, with a port or IPv6 brackets tolerated.
fn parse_hop(h: &str) -> Option<IpAddr> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(tenantgate_config::net::canonical(ip));
    }
    h.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| tenantgate_config::net::canonical(a.ip()))
}

/// Decide what happens to one request.
#[inline]
pub fn decide(
    rules: &Rules,
    table: &RouteIndex,
    challenges: &ChallengeStore,
    req: &RequestFacts<'_>,
    conn: &ConnectionFacts<'_>,
) -> Verdict {
    if req.header_count > rules.max_headers || req.header_bytes > rules.max_header_bytes {
        return Verdict::answer(Answer::HeadersTooLarge);
    }
    if req.target == Target::Invalid {
        return Verdict::answer(Answer::BadRequest(Malformed::Target));
    }
    let host = match req.host {
        HostFact::Name(h) => h,
        HostFact::Missing | HostFact::Duplicate | HostFact::Invalid => {
            return Verdict::answer(Answer::BadRequest(Malformed::Host))
        }
    };
    let ambiguous = req.coding == Coding::Chunked && req.length != Length::Absent;
    if req.length == Length::Invalid || req.coding == Coding::Invalid || ambiguous {
        return Verdict::answer(Answer::BadRequest(Malformed::Framing));
    }
    if req.looped {
        return Verdict::answer(Answer::Loop);
    }
    // ACME and ownership challenges are answered for the control plane before any tenant
    // routing, for exact live (hostname, path) pairs only; nothing else under their prefixes
    // reaches a tenant.
    if ChallengeStore::is_reserved(req.path) {
        return match challenges.answer(host, req.path) {
            Some(body) => Verdict::Challenge(body),
            None => Verdict::answer(Answer::NoChallenge),
        };
    }
    let Some(route) = table.lookup(host) else {
        return Verdict::answer(Answer::NotFound);
    };
    match conn.sni {
        SniFact::Absent => {}
        // The certificate was chosen for the SNI name; serving another route's Host on this
        // connection would answer one tenant's request under another's identity.
        SniFact::Name(sni) if table.lookup(sni).is_some_and(|r| Arc::ptr_eq(r, route)) => {}
        SniFact::Name(_) | SniFact::Invalid => return Verdict::answer(Answer::Misdirected),
    }
    let with_route = |answer| Verdict::Answer {
        answer,
        route: Some(route.clone()),
        retry_after: 0,
    };
    if route.suspended {
        return with_route(Answer::Suspended);
    }
    if let Some(level) = route.asleep {
        return Verdict::Hold {
            route: route.clone(),
            level,
        };
    }
    if route.refused.is_some() {
        return with_route(Answer::ForbiddenUpstream);
    }
    if route.https_redirect && !conn.tls {
        if let Some(port) = rules.https_port {
            let pq = if req.path_and_query.is_empty() {
                "/"
            } else {
                req.path_and_query
            };
            let location = if port == 443 {
                format!("https://{host}{pq}")
            } else {
                format!("https://{host}:{port}{pq}")
            };
            return Verdict::Redirect {
                route: route.clone(),
                location,
            };
        }
    }
    let client = rules.client(conn.peer, req.forwarded_for);
    let permit = match &route.limits {
        None => None,
        Some(limits) => {
            let length = match req.length {
                Length::Exact(n) => Some(n),
                _ => None,
            };
            match limits.admit(client, length, req.at.unwrap_or_else(Instant::now)) {
                Ok(permit) => permit,
                Err(refusal) => {
                    return Verdict::Answer {
                        answer: Answer::Limited(refusal.limit),
                        route: Some(route.clone()),
                        retry_after: refusal.retry_after,
                    };
                }
            }
        }
    };
    Verdict::Proxy {
        upstreams: route.upstreams_for(req.path),
        active: route.in_flight(),
        route: route.clone(),
        client,
        permit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::router::Router;
    use std::net::SocketAddr;
    use tenantgate_config::{Challenge, ChallengeSet, HostPattern, Route, RouteTable, Upstream};

    fn route(id: &str, host: HostPattern, port: u16) -> Route {
        Route {
            id: id.into(),
            hostnames: vec![host],
            upstreams: vec![Upstream {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }],
            https_redirect: false,
            suspended: false,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        }
    }

    fn limited(id: &str, host: &str, f: impl FnOnce(&mut tenantgate_config::Limits)) -> Route {
        let mut l = tenantgate_config::Limits::default();
        f(&mut l);
        Route {
            limits: Some(l),
            ..route(id, HostPattern::Exact(host.into()), 6)
        }
    }

    #[test]
    fn limits_come_last_and_hold_their_place() {
        let r = Router::new(
            &RouteTable {
                version: 1,
                routes: vec![
                    limited("l", "l.test", |l| {
                        l.requests_per_second = Some(1);
                        l.burst = Some(2);
                        l.max_body_bytes = Some(100);
                    }),
                    limited("c", "c.test", |l| l.max_concurrent_requests = Some(1)),
                    limited("k", "k.test", |l| {
                        l.client_requests_per_second = Some(1);
                        l.client_burst = Some(1);
                    }),
                ],
            },
            Arc::new(Metrics::new(10)),
        );
        let idx = r.load();
        let challenges = ChallengeStore::new();
        let rules = Rules {
            max_headers: 10,
            max_header_bytes: 1000,
            https_port: None,
            trusted: Arc::from(["10.0.0.0/8".parse::<IpNet>().expect("net")]),
        };
        let peer = |ip: &str| ConnectionFacts {
            tls: false,
            sni: SniFact::Absent,
            peer: Some(ip.parse().expect("ip")),
        };
        let at = Instant::now();
        let req = |host: &'static str| RequestFacts {
            at: Some(at),
            ..facts(HostFact::Name(host), "/")
        };
        let run = |req: &RequestFacts<'_>, conn: &ConnectionFacts<'_>| {
            decide(&rules, &idx, &challenges, req, conn)
        };
        let c = peer("192.0.2.1");
        // A body too large is refused before it costs a token.
        let big = RequestFacts {
            length: Length::Exact(101),
            ..req("l.test")
        };
        assert_eq!(outcome(&run(&big, &c)), "413 body_too_large (l)");
        assert_eq!(outcome(&run(&req("l.test"), &c)), "proxy l");
        assert_eq!(outcome(&run(&req("l.test"), &c)), "proxy l");
        let v = run(&req("l.test"), &c);
        assert_eq!(outcome(&v), "429 limited_rate (l)");
        assert!(matches!(v, Verdict::Answer { retry_after: 1, .. }));
        // The earlier rules still win over a limit.
        let looped = RequestFacts {
            looped: true,
            ..req("l.test")
        };
        assert_eq!(outcome(&run(&looped, &c)), "508 loop");
        // One in flight: the second waits for the first's permit.
        let first = run(&req("c.test"), &c);
        assert_eq!(
            outcome(&run(&req("c.test"), &c)),
            "429 limited_concurrency (c)"
        );
        drop(first);
        assert_eq!(outcome(&run(&req("c.test"), &c)), "proxy c");
        // Per client: behind a trusted balancer, the forwarded hop is the client.
        let via_lb = |xff: &'static [u8]| RequestFacts {
            forwarded_for: Some(xff),
            ..req("k.test")
        };
        let lb = peer("10.1.1.1");
        assert_eq!(outcome(&run(&via_lb(b"198.51.100.7"), &lb)), "proxy k");
        assert_eq!(
            outcome(&run(&via_lb(b"198.51.100.7"), &lb)),
            "429 limited_client_rate (k)"
        );
        assert_eq!(
            outcome(&run(&via_lb(b"198.51.100.8, 10.2.2.2"), &lb)),
            "proxy k"
        );
        // From an untrusted peer the header is ignored: the peer is the client.
        let spoof = peer("203.0.113.5");
        assert_eq!(outcome(&run(&via_lb(b"198.51.100.9"), &spoof)), "proxy k");
        assert_eq!(
            outcome(&run(&via_lb(b"198.51.100.10"), &spoof)),
            "429 limited_client_rate (k)"
        );
    }

    #[test]
    fn the_client_is_the_hop_the_trusted_chain_vouches_for() {
        let rules = Rules {
            max_headers: 1,
            max_header_bytes: 1,
            https_port: None,
            trusted: Arc::from([
                "10.0.0.0/8".parse::<IpNet>().expect("net"),
                "2001:db8::/32".parse::<IpNet>().expect("net"),
            ]),
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let cases: &[(&str, Option<&[u8]>, &str)] = &[
            ("192.0.2.1", Some(b"1.1.1.1"), "192.0.2.1"),
            ("10.0.0.1", None, "10.0.0.1"),
            ("10.0.0.1", Some(b"1.1.1.1"), "1.1.1.1"),
            ("10.0.0.1", Some(b"6.6.6.6, 1.1.1.1"), "1.1.1.1"),
            ("10.0.0.1", Some(b"6.6.6.6, 1.1.1.1, 10.9.9.9"), "1.1.1.1"),
            ("10.0.0.1", Some(b"10.3.3.3,10.4.4.4"), "10.3.3.3"),
            ("10.0.0.1", Some(b"6.6.6.6, garbage"), "10.0.0.1"),
            ("10.0.0.1", Some(b"[2001:db9::1]:443"), "2001:db9::1"),
            ("::ffff:10.0.0.1", Some(b"1.1.1.1:5000"), "1.1.1.1"),
            ("2001:db8::1", Some(b"::ffff:8.8.8.8"), "8.8.8.8"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(rules.client(ip(peer), *xff), ip(want), "{peer} {xff:?}");
        }
        let none = Rules {
            trusted: Arc::from([]),
            ..rules
        };
        assert_eq!(
            none.client(ip("10.0.0.1"), Some(b"1.1.1.1")),
            ip("10.0.0.1")
        );
        assert_eq!(none.client(None, Some(b"1.1.1.1")), None);
    }

    fn router() -> Router {
        let mut redirect = route("r", HostPattern::Exact("r.test".into()), 3);
        redirect.https_redirect = true;
        let mut suspended = route("s", HostPattern::Exact("s.test".into()), 4);
        suspended.suspended = true;
        // Suspended wins over asleep: a suspended store is never woken.
        suspended.asleep = Some(SleepLevel::Stopped);
        let mut paused = route("p", HostPattern::Exact("p.test".into()), 6);
        paused.asleep = Some(SleepLevel::Paused);
        // Asleep comes before the upstream policy: a stopped store's old addresses are
        // never looked at.
        let stopped = Route {
            asleep: Some(SleepLevel::Stopped),
            upstreams: vec![Upstream {
                addr: "169.254.169.254:80".parse().expect("addr"),
            }],
            ..route("z", HostPattern::Exact("z.test".into()), 7)
        };
        let metadata = Route {
            upstreams: vec![Upstream {
                addr: "169.254.169.254:80".parse().expect("addr"),
            }],
            ..route("m", HostPattern::Exact("m.test".into()), 5)
        };
        Router::new(
            &RouteTable {
                version: 1,
                routes: vec![
                    route("a", HostPattern::Exact("a.test".into()), 1),
                    route("w", HostPattern::Wildcard("w.test".into()), 2),
                    redirect,
                    suspended,
                    metadata,
                    paused,
                    stopped,
                ],
            },
            Arc::new(Metrics::new(10)),
        )
    }

    fn facts(host: HostFact<'static>, path: &'static str) -> RequestFacts<'static> {
        RequestFacts {
            method: "GET",
            host,
            target: Target::Origin,
            path,
            path_and_query: path,
            header_count: 3,
            header_bytes: 100,
            looped: false,
            length: Length::Absent,
            coding: Coding::None,
            forwarded_for: None,
            at: Some(Instant::now()),
        }
    }

    /// What a verdict is, in one word, for the table below.
    fn outcome(v: &Verdict) -> String {
        match v {
            Verdict::Proxy { route, .. } => format!("proxy {}", route.id()),
            Verdict::Challenge(b) => format!("challenge {b}"),
            Verdict::Answer { answer, route, .. } => format!(
                "{} {}{}",
                answer.status(),
                answer.name(),
                route
                    .as_ref()
                    .map(|r| format!(" ({})", r.id()))
                    .unwrap_or_default()
            ),
            Verdict::Redirect { location, .. } => format!("308 {location}"),
            Verdict::Hold { route, level } => format!("hold {} {}", route.id(), level.as_str()),
        }
    }

    #[test]
    fn every_rule_in_its_order() {
        let r = router();
        let idx = r.load();
        let challenges = ChallengeStore::new();
        challenges.replace_all(vec![ChallengeSet {
            domain_id: "d".into(),
            challenges: vec![Challenge {
                hostname: "a.test".into(),
                path: "/.well-known/acme-challenge/tok".into(),
                body: "key-auth".into(),
            }],
        }]);
        let rules = Rules {
            max_headers: 10,
            max_header_bytes: 1000,
            https_port: Some(8443),
            trusted: Arc::from([]),
        };
        let plain = ConnectionFacts {
            tls: false,
            sni: SniFact::Absent,
            peer: None,
        };
        let tls = |sni| ConnectionFacts {
            tls: true,
            sni,
            peer: None,
        };
        let name = HostFact::Name;
        let cases: Vec<(RequestFacts<'static>, ConnectionFacts<'static>, &str)> = vec![
            (facts(name("a.test"), "/"), plain, "proxy a"),
            (facts(name("x.w.test"), "/p"), plain, "proxy w"),
            (facts(name("w.test"), "/"), plain, "404 unknown_host"),
            (facts(name("nobody.test"), "/"), plain, "404 unknown_host"),
            (facts(HostFact::Missing, "/"), plain, "400 bad_host"),
            (facts(HostFact::Duplicate, "/"), plain, "400 bad_host"),
            (facts(HostFact::Invalid, "/"), plain, "400 bad_host"),
            (
                RequestFacts {
                    header_count: 11,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "431 headers_too_large",
            ),
            (
                RequestFacts {
                    header_bytes: 1001,
                    ..facts(HostFact::Missing, "/")
                },
                plain,
                "431 headers_too_large",
            ),
            (
                RequestFacts {
                    target: Target::Invalid,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "400 bad_target",
            ),
            (
                RequestFacts {
                    length: Length::Invalid,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "400 bad_framing",
            ),
            (
                RequestFacts {
                    length: Length::Exact(4),
                    coding: Coding::Chunked,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "400 bad_framing",
            ),
            (
                RequestFacts {
                    coding: Coding::Invalid,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "400 bad_framing",
            ),
            (
                RequestFacts {
                    length: Length::Exact(4),
                    ..facts(name("a.test"), "/")
                },
                plain,
                "proxy a",
            ),
            (
                RequestFacts {
                    looped: true,
                    ..facts(name("a.test"), "/")
                },
                plain,
                "508 loop",
            ),
            (
                facts(name("a.test"), "/.well-known/acme-challenge/tok"),
                plain,
                "challenge key-auth",
            ),
            (
                facts(name("a.test"), "/.well-known/acme-challenge/other"),
                plain,
                "404 no_challenge",
            ),
            (
                facts(name("nobody.test"), "/.well-known/tenantgate/x"),
                plain,
                "404 no_challenge",
            ),
            (
                facts(name("a.test"), "/"),
                tls(SniFact::Name("a.test")),
                "proxy a",
            ),
            (facts(name("a.test"), "/"), tls(SniFact::Absent), "proxy a"),
            (
                facts(name("a.test"), "/"),
                tls(SniFact::Name("x.w.test")),
                "421 misdirected",
            ),
            (
                facts(name("y.w.test"), "/"),
                tls(SniFact::Name("x.w.test")),
                "proxy w",
            ),
            (
                facts(name("a.test"), "/"),
                tls(SniFact::Invalid),
                "421 misdirected",
            ),
            (facts(name("s.test"), "/"), plain, "503 suspended (s)"),
            (facts(name("p.test"), "/"), plain, "hold p paused"),
            (facts(name("z.test"), "/"), plain, "hold z stopped"),
            (
                facts(name("m.test"), "/"),
                plain,
                "502 forbidden_upstream (m)",
            ),
            (
                RequestFacts {
                    path_and_query: "/cart?x=1",
                    ..facts(name("r.test"), "/cart")
                },
                plain,
                "308 https://r.test:8443/cart?x=1",
            ),
            (
                facts(name("r.test"), "/"),
                tls(SniFact::Name("r.test")),
                "proxy r",
            ),
        ];
        for (req, conn, want) in cases {
            let v = decide(&rules, &idx, &challenges, &req, &conn);
            assert_eq!(outcome(&v), want, "{req:?} {conn:?}");
        }
        let no_tls = Rules {
            https_port: None,
            ..rules
        };
        let v = decide(
            &no_tls,
            &idx,
            &challenges,
            &facts(name("r.test"), "/"),
            &plain,
        );
        assert_eq!(outcome(&v), "proxy r", "no redirect without a TLS listener");
    }

    #[test]
    fn the_answer_table_is_consistent() {
        for a in Answer::ALL {
            assert!((400..=599).contains(&a.status()), "{a:?}");
            assert!(!a.name().is_empty());
            if a.status() == 400 || a.status() == 431 {
                assert!(a.closes(), "{a:?}");
            }
        }
        let mut names: Vec<&str> = Answer::ALL.iter().map(|a| a.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Answer::ALL.len(), "one name per answer");
    }
}
