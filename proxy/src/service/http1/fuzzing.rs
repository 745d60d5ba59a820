//! Entry points for the fuzz targets (`fuzz/`, built with the `fuzzing` feature): the HTTP/1
//! request-head parser with the admission step, and the chunked tracker, each checked
//! against the invariants the proxy relies on, not only for panics.

use std::sync::Arc;
use std::time::Duration;

use tenantgate_certs::ChallengeStore;
use tenantgate_config::{HostPattern, Route, RouteTable, Upstream};

use super::chunked::ChunkedTracker;
use super::request::{Prep, Scratch};
use super::Http1Service;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::service::decide::{ConnectionFacts, SniFact};
use crate::service::{EdgeProxy, ProxySettings};

/// A node serving `a.test` and `*.w.test`, with the fast path on, for the head fuzzer.
pub struct HeadFuzzer {
    service: Http1Service<()>,
}

impl Default for HeadFuzzer {
    fn default() -> Self {
        let route = |id: &str, host: HostPattern| Route {
            id: id.into(),
            hostnames: vec![host],
            upstreams: vec![Upstream {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            }],
            https_redirect: false,
            suspended: false,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        };
        let table = RouteTable {
            version: 1,
            routes: vec![
                route("a", HostPattern::Exact("a.test".into())),
                route("w", HostPattern::Wildcard("w.test".into())),
            ],
        };
        let metrics = Arc::new(Metrics::new(10));
        let router = Arc::new(Router::new(&table, metrics.clone()));
        let settings = ProxySettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            unhealthy_cooldown: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_headers: 100,
            https_port: None,
            access_log: None,
            pool_per_route: true,
            http1_pipelining: true,
            allow_underscores_in_headers: false,
            trusted_proxies: std::sync::Arc::from([]),
        };
        let edge = EdgeProxy::new(
            router,
            Arc::new(ChallengeStore::new()),
            settings,
            metrics,
            "platform.test",
        );
        HeadFuzzer {
            service: Http1Service::new(edge, (), true, 1, 1, Duration::ZERO),
        }
    }
}

impl HeadFuzzer {
    /// Parse and decide `buf` as the start of a connection's bytes; panics if a head that
    /// goes to an upstream (from the fast path, or through Pingora) breaks an invariant: it must parse
    /// completely, in origin form or `*`, with at most one `Host` and one `Content-Length`,
    /// no header name with `_`, and, for the upstream, none of the client's forwarding
    /// headers and exactly one of ours.
    pub fn run(&self, buf: &[u8]) {
        let conn = ConnectionFacts {
            tls: false,
            sni: SniFact::Absent,
            peer: None,
        };
        let mut scratch = Scratch {
            host: Default::default(),
            request_id: Vec::new(),
        };
        let mut out = Vec::new();
        let prep = self.service.prepare(buf, &conn, &mut scratch, &mut out);
        let upstream = match prep {
            Prep::Partial | Prep::Refuse { .. } => return,
            // The fuzzed routes have no limits; a 429 goes nowhere upstream either.
            Prep::Limited(l) => {
                assert!(l.head_len <= buf.len());
                return;
            }
            Prep::Proxy(p) => {
                assert!(p.head_len <= buf.len());
                Some(p.body)
            }
            Prep::Handoff(h) => {
                assert!(h.head_len <= buf.len());
                // Only a request going upstream must be canonical: an answer of ours is
                // written by Pingora from the verdict, whatever the head held.
                if !matches!(h.verdict, crate::service::decide::Verdict::Proxy { .. }) {
                    return;
                }
                None
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 300];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "a rebuilt head does not parse: {other:?} {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(n, out.len(), "bytes after the rebuilt head");
        let target = req.path.unwrap_or("");
        assert!(
            target.starts_with('/') || target == "*",
            "target {target:?}"
        );
        let count = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        assert!(count("host") <= 1);
        assert!(count("content-length") <= 1);
        assert!(req.headers.iter().all(|h| !h.name.contains('_')));
        if let Some(body) = upstream {
            for ours in [
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "forwarded",
                "x-request-id",
            ] {
                assert!(count(ours) <= 1, "{ours} twice");
            }
            assert_eq!(count("x-forwarded-host"), 1);
            // The fast path frames a body by its one canonical length, never a coding.
            assert_eq!(count("content-length"), usize::from(body.is_some()));
            assert_eq!(count("transfer-encoding"), 0);
        }
    }
}

/// Feed `data` to a chunked tracker whole and split at every `split`-th byte; panics unless
/// both see the same body end, and never more bytes than were fed.
pub fn chunked(data: &[u8], split: usize) {
    let mut whole = ChunkedTracker::default();
    let a = whole.feed(data);
    let mut pieces = ChunkedTracker::default();
    let step = split.clamp(1, data.len().max(1));
    let mut consumed = 0;
    let mut b = Ok(0);
    for chunk in data.chunks(step) {
        match pieces.feed(chunk) {
            Ok(n) => {
                assert!(n <= chunk.len());
                consumed += n;
                b = Ok(consumed);
                if pieces.is_done() {
                    break;
                }
            }
            Err(e) => {
                b = Err(e);
                break;
            }
        }
    }
    match (a, b) {
        (Ok(x), Ok(y)) => {
            assert!(x <= data.len());
            if whole.is_done() || pieces.is_done() {
                assert_eq!((x, whole.is_done()), (y, pieces.is_done()), "split {step}");
            }
        }
        (Err(_), Err(_)) => {}
        (x, y) => panic!("split {step} changed the verdict: {x:?} vs {y:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::apps::ServerApp;

    /// What an idle keep-alive connection holds is mostly its task's future: the states a
    /// request needs (the proxy relay, the TLS handshake, the handoff) are boxed while they
    /// run, so the idle future stays small (benches/RESULTS.md: ~15 KiB per connection in
    /// all, most of it Pingora's accept task).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let f = HeadFuzzer::default();
        let edge = f.service.edge.clone();
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let mut app = pingora::proxy::HttpProxy::new(edge.clone(), conf);
        app.handle_init_modules();
        let app = crate::service::drain::Draining::new(app, Duration::ZERO);
        let svc = Arc::new(Http1Service::new(edge, app, true, 1, 1, Duration::ZERO));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let s: pingora::protocols::Stream =
            Box::new(pingora::protocols::l4::stream::Stream::from(c));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let fut = svc.process_new(s, &rx);
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 3 * 1024, "a connection's future is {size} bytes");
    }
}
