//! Upstream choice: round robin, failover with passive health, our 502 and 504 pages.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

fn dead_addr() -> SocketAddr {
    // A port that was free a moment ago: nothing listens there.
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

engine_tests! {
async fn round_robin_spreads_requests(engine) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["rr.test"], &[a.addr, b.addr])
        .start()
        .await;
    for _ in 0..10 {
        assert_eq!(tg.get("rr.test", "/").await.status(), 200);
    }
    assert_eq!(a.hits() + b.hits(), 10);
    assert!(
        a.hits() >= 3 && b.hits() >= 3,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
}
}

engine_tests! {
async fn a_dead_upstream_is_skipped_and_requests_fail_over(engine) {
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let tg = Tenantgate::new().engine(engine)
        .proxy("unhealthy_cooldown_seconds = 60")
        .route(&["f.test"], &[dead, live.addr])
        .start()
        .await;
    for i in 0..10 {
        let client = tg.http_client();
        let req = if i % 2 == 0 {
            client.get(format!("http://{}/", tg.http))
        } else {
            // A connect failure is retried for any method: nothing was sent yet.
            client.post(format!("http://{}/", tg.http)).body("order")
        };
        let r = req.header("host", "f.test").send().await.unwrap();
        assert_eq!(backend_json(r).await["backend"], "live", "request {i}");
    }
    assert_eq!(live.hits(), 10);
    // The dead upstream was tried once, then sat out its cooldown.
    let m = tg.metrics().await;
    assert!(
        m.contains(r#"tenantgate_proxy_upstream_errors_total{kind="connect",route="f.test"} 1"#),
        "{m}"
    );
}
}

engine_tests! {
async fn all_upstreams_down_gives_our_502_page(engine) {
    let tg = Tenantgate::new().engine(engine)
        .route(&["down.test"], &[dead_addr(), dead_addr()])
        .start()
        .await;
    let r = tg.get("down.test", "/").await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().starts_with("502 Bad Gateway"));
    let r = tg
        .get_with("down.test", "/", &[("accept", "text/html")])
        .await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("Store unavailable"));
    // The proxy keeps serving afterwards.
    assert_eq!(tg.get("down.test", "/").await.status(), 502);
}
}

engine_tests! {
async fn a_slow_upstream_gives_our_504_page(engine) {
    let slow = Backend::start("slow").await;
    let tg = Tenantgate::new().engine(engine)
        .proxy("read_timeout_ms = 300")
        .route(&["slow.test"], &[slow.addr])
        .start()
        .await;
    let r = tg.get("slow.test", "/slow/3000").await;
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().starts_with("504 Gateway Timeout"));
    // Fast requests on the same route still work.
    assert_eq!(tg.get("slow.test", "/slow/0").await.status(), 200);
    let m = wait_for("timeout metric", Duration::from_secs(5), || async {
        let m = tg.metrics().await;
        m.contains(r#"tenantgate_proxy_upstream_errors_total{kind="timeout",route="slow.test"} 1"#)
            .then_some(m)
    })
    .await;
    assert!(
        m.contains(r#"tenantgate_proxy_requests_total{class="5xx",route="slow.test"} 1"#),
        "{m}"
    );
}
}

engine_tests! {
/// Two tenants whose routes point at the same backend: with the default per-route pools a
/// connection opened for one route is never reused for the other; with `upstream_pool =
/// "address"` they share.
async fn upstream_connections_are_pooled_per_route_unless_shared_by_address(engine) {
    use std::collections::HashSet;
    let shared = Backend::start("shared").await;
    for (pool, expect_shared) in [("route", false), ("address", true)] {
        let tg = Tenantgate::new().engine(engine)
            .proxy(&format!("upstream_pool = {pool:?}"))
            .route(&["a.test"], &[shared.addr])
            .route(&["b.test"], &[shared.addr])
            .start()
            .await;
        let (mut a, mut b) = (HashSet::new(), HashSet::new());
        for _ in 0..4 {
            a.insert(
                backend_json(tg.get("a.test", "/").await).await["peer"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            b.insert(
                backend_json(tg.get("b.test", "/").await).await["peer"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        // Sequential requests reuse pooled connections in both modes.
        assert!(
            a.len() < 4 && b.len() < 4,
            "no reuse with {pool}: {a:?} {b:?}"
        );
        assert_eq!(
            !a.is_disjoint(&b),
            expect_shared,
            "pool {pool}: a={a:?} b={b:?}"
        );
    }
}
}
