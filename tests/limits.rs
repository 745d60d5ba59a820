//! Per-tenant traffic limits end to end, on both engines and over HTTP/2: the request rate
//! (burst, then refill), per client address within a tenant, requests in flight against a
//! slow upstream, body size with both framings, upstream timeouts, `Retry-After`, limits and
//! plans changed through the API and applied at once, and `trusted_proxies` with spoofed
//! `X-Forwarded-For` headers from trusted and untrusted peers.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A plain-HTTP client whose connections come from `local` (a loopback address).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local.parse::<IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_from(
    c: &reqwest::Client,
    tg: &Running,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = c
        .get(format!("http://{}{path}", tg.http))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request")
}

/// The value of `tenantgate_proxy_limited_total` for a route and limit (0 when absent).
async fn limited(tg: &Running, route: &str, limit: &str) -> u64 {
    let want = format!("tenantgate_proxy_limited_total{{limit=\"{limit}\",route=\"{route}\"}} ");
    tg.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

engine_tests! {
/// A burst of `burst` requests passes, the next is answered 429 by us with `Retry-After` and
/// our page (HTML for a browser, text otherwise) and never reaches the upstream; tokens come
/// back at the rate. Another tenant is not touched by the first one's limit.
async fn the_request_rate_allows_a_burst_then_refills(engine) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let tg = Tenantgate::new().engine(engine)
        .route_with(&["a.test"], &[a.addr], "[routes.limits]\nrequests_per_second = 2\nburst = 3")
        .route(&["b.test"], &[b.addr])
        .start()
        .await;
    for i in 0..3 {
        assert_eq!(tg.get("a.test", "/").await.status(), 200, "request {i} of the burst");
    }
    let r = tg.get("a.test", "/").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(r.text().await.unwrap().starts_with("429 Too Many Requests"));
    let r = tg.get_with("a.test", "/", &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Too many requests"));
    assert_eq!(a.hits(), 3, "refused requests never reach the upstream");
    for _ in 0..10 {
        assert_eq!(tg.get("b.test", "/").await.status(), 200, "b has no limits");
    }
    // Two tokens a second: after 600 ms one is back, not two.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(tg.get("a.test", "/").await.status(), 200);
    assert_eq!(tg.get("a.test", "/").await.status(), 429);
    assert_eq!(a.hits(), 4);
    wait_for("the limited metric", Duration::from_secs(5), || async {
        (limited(&tg, "a.test", "rate").await == 3).then_some(())
    })
    .await;
    // The access log is written behind the requests: wait for its lines.
    let logs = wait_for("the three refusals in the access log", Duration::from_secs(5), || async {
        let logs = tg.logs();
        let n = logs
            .lines()
            .filter(|l| l.contains("\"outcome\":\"limited_rate\""))
            .count();
        (n >= 3).then_some(logs)
    })
    .await;
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"outcome\":\"limited_rate\""))
        .collect();
    assert_eq!(refusals.len(), 3, "{logs}");
    // On the fast path its own loop writes the 429 (a refusal costs less than a request).
    let by = if engine == Engine::FastPath { "http1" } else { "pingora" };
    for l in refusals {
        assert!(l.contains(&format!("\"engine\":\"{by}\"")), "{l}");
        assert!(l.contains("\"route\":\"a.test\""), "{l}");
    }
}
}

engine_tests! {
/// Each client address has its own bucket within the tenant.
async fn clients_are_limited_per_address(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route_with(
            &["a.test"],
            &[a.addr],
            "[routes.limits]\nclient_requests_per_second = 1\nclient_burst = 2",
        )
        .start()
        .await;
    let one = client_from("127.0.0.1");
    let two = client_from("127.0.0.2");
    for _ in 0..2 {
        assert_eq!(get_from(&one, &tg, "a.test", "/", &[]).await.status(), 200);
    }
    let r = get_from(&one, &tg, "a.test", "/", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // Another address is not held back by the first one's requests.
    for _ in 0..2 {
        assert_eq!(get_from(&two, &tg, "a.test", "/", &[]).await.status(), 200);
    }
    assert_eq!(get_from(&two, &tg, "a.test", "/", &[]).await.status(), 429);
    assert_eq!(a.hits(), 4);
    wait_for("the limited metric", Duration::from_secs(5), || async {
        (limited(&tg, "a.test", "client_rate").await == 2).then_some(())
    })
    .await;
}
}

engine_tests! {
/// At most `max_concurrent_requests` are in flight to the tenant: one more while they wait on
/// a slow upstream is answered 429, and once they end a place is free again.
async fn requests_in_flight_are_bounded(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route_with(&["a.test"], &[a.addr], "[routes.limits]\nmax_concurrent_requests = 2")
        .start()
        .await;
    let slow = |tg: &Running| {
        let (c, url) = (tg.http_client(), format!("http://{}/slow/1500", tg.http));
        tokio::spawn(async move {
            c.get(url).header("host", "a.test").send().await.map(|r| r.status().as_u16())
        })
    };
    let first = slow(&tg);
    let second = slow(&tg);
    wait_for("two requests at the upstream", Duration::from_secs(5), || async {
        (a.hits() == 2).then_some(())
    })
    .await;
    let r = tg.get("a.test", "/").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().unwrap(), 200);
    assert_eq!(second.await.unwrap().unwrap(), 200);
    assert_eq!(tg.get("a.test", "/").await.status(), 200);
    assert_eq!(a.hits(), 3);
    assert_eq!(limited(&tg, "a.test", "concurrency").await, 1);
}
}

engine_tests! {
/// A body beyond `max_body_bytes` is answered 413 with our page: a `Content-Length` one before
/// the upstream is contacted, a chunked one as soon as it grows beyond the limit (the upstream
/// never gets its end). Bodies within the limit pass whole.
async fn bodies_beyond_the_limit_get_413_with_both_framings(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route_with(&["a.test"], &[a.addr], "[routes.limits]\nmax_body_bytes = 1000")
        .start()
        .await;
    let post = |len: usize| {
        format!(
            "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\n\r\n{}",
            "x".repeat(len)
        )
    };
    let mut c = RawClient::connect(tg.http).await;
    c.send(post(1001).as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    assert_eq!(a.hits(), 0, "a Content-Length beyond the limit never reaches the upstream");

    let mut c = RawClient::connect(tg.http).await;
    c.send(post(1000).as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"body_len\":1000"), "{body}");

    let chunked = |n: usize| {
        let mut s = String::from("POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..n {
            s += &format!("1f4\r\n{}\r\n", "y".repeat(500));
        }
        s + "0\r\n\r\n"
    };
    let mut c = RawClient::connect(tg.http).await;
    c.send(chunked(4).as_bytes()).await;
    let r = c.response().await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 413, "{body}");
    assert!(body.starts_with("413 Content Too Large"), "{body}");

    let mut c = RawClient::connect(tg.http).await;
    c.send(chunked(2).as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"body_len\":1000"), "{body}");
    wait_for("the limited metric", Duration::from_secs(5), || async {
        (limited(&tg, "a.test", "body_size").await == 2).then_some(())
    })
    .await;
}
}

engine_tests! {
/// A tenant's own upstream read timeout: its slow answers become our 504 while another
/// tenant's equally slow ones pass under the node's timeout.
async fn upstream_timeouts_are_per_tenant(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route_with(&["a.test"], &[a.addr], "[routes.limits]\nupstream_read_timeout_ms = 300")
        .route(&["b.test"], &[a.addr])
        .start()
        .await;
    let r = tg.get("a.test", "/slow/1000").await;
    assert_eq!(r.status(), 504);
    assert_eq!(tg.get("b.test", "/slow/1000").await.status(), 200);
    assert_eq!(tg.get("a.test", "/slow/10").await.status(), 200);
}
}

engine_tests! {
/// Behind a trusted load balancer the client is the hop it appended to `X-Forwarded-For`:
/// per-client limits and our own forwarding headers use it. From any other peer the header
/// is a spoof and changes nothing.
async fn trusted_proxies_vouch_for_the_forwarded_client(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .proxy("trusted_proxies = [\"127.0.0.2/32\"]")
        .route_with(
            &["a.test"],
            &[a.addr],
            "[routes.limits]\nclient_requests_per_second = 1\nclient_burst = 1",
        )
        .start()
        .await;
    let lb = client_from("127.0.0.2");
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    let r = get_from(&lb, &tg, "a.test", "/", &xff("198.51.100.1")).await;
    assert_eq!(r.status(), 200);
    let v = backend_json(r).await;
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["198.51.100.1"]);
    assert_eq!(
        get_from(&lb, &tg, "a.test", "/", &xff("198.51.100.1")).await.status(),
        429,
        "the same client through the balancer"
    );
    // A client's own spoofed entry left of the balancer's hop is not believed.
    let r = get_from(&lb, &tg, "a.test", "/", &xff("6.6.6.6, 198.51.100.2")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(seen(&backend_json(r).await, "x-forwarded-for"), vec!["198.51.100.2"]);

    // From an untrusted peer the header is ignored: the peer is the client.
    let direct = client_from("127.0.0.3");
    let r = get_from(&direct, &tg, "a.test", "/", &xff("198.51.100.3")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(seen(&backend_json(r).await, "x-forwarded-for"), vec!["127.0.0.3"]);
    assert_eq!(
        get_from(&direct, &tg, "a.test", "/", &xff("198.51.100.4")).await.status(),
        429,
        "a new spoofed address does not buy a new bucket"
    );
}
}

engine_tests! {
/// HTTP/2 requests meet the same limits: the rate (429 with Retry-After on the stream), and
/// the body size with and without `content-length`.
async fn limits_hold_over_http2(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (c, k) = ca.issue(&["a.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c, k, true)
        .route_with(
            &["a.test"],
            &[a.addr],
            "[routes.limits]\nrequests_per_second = 1\nburst = 4\nmax_body_bytes = 1000",
        )
        .start()
        .await;
    let port = tg.https.unwrap().port();
    let h2 = tg.https_client(&ca, &["a.test"]);
    let url = format!("https://a.test:{port}/h2");
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = h2.post(&url).body("z".repeat(1001)).send().await.unwrap();
    assert_eq!(r.status(), 413, "content-length beyond the limit");
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from("w".repeat(400)))),
    );
    let r = h2
        .post(&url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a streamed body beyond the limit");
    // The Content-Length one was refused before it took a token; the streamed one was
    // admitted (its size was unknown) and so took one: two are left of the burst.
    assert_eq!(h2.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(h2.get(&url).send().await.unwrap().status(), 200);
    let hits = a.hits();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(a.hits(), hits, "the refused request never reached the upstream");
}
}

/// Limits set through the API apply on the next request, on a running node, and read back as
/// set; a plan from the config applies through `plan`; bad input is refused with a specific
/// error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_plans_change_live_through_the_api() {
    let shop = Backend::start("shop").await;
    let tg = Tenantgate::new()
        .section(PLATFORM_TEST)
        .section("[plans.small]\nrequests_per_second = 1\nburst = 2\nmax_body_bytes = 10")
        .start()
        .await;
    let (s, e) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "shop", "name": "Shop", "upstreams": [shop.addr.to_string()], "plan": "large"})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("unknown_plan")),
        "{e}"
    );
    let t = tg.create_tenant("shop", &[shop.addr]).await;
    let id = t["id"].as_str().unwrap();
    let host = "shop.platform.test";
    tg.wait_backend(host, "shop").await;
    for _ in 0..5 {
        assert_eq!(tg.get(host, "/").await.status(), 200, "no limits yet");
    }
    let path = format!("/v1/tenants/{id}/limits");
    let (s, l) = tg.api("GET", &path, None).await;
    assert_eq!((s, l), (200, json!({})));

    for (bad, code) in [
        (json!({"requests_per_second": 0}), "invalid_limits"),
        (json!({"burst": 5}), "invalid_limits"),
        (
            json!({"upstream_read_timeout_ms": 4_000_000}),
            "invalid_limits",
        ),
    ] {
        let (s, e) = tg.api("PUT", &path, Some(bad.clone())).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (422, Some(code)),
            "{bad}: {e}"
        );
    }
    let (s, e) = tg.api("PUT", &path, Some(json!({"rps": 5}))).await;
    assert!((400..=422).contains(&s), "an unknown key: {s} {e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("rps"),
        "{e}"
    );
    assert_eq!(
        tg.api("GET", &path, None).await.1,
        json!({}),
        "refused input changed nothing"
    );

    let set = json!({"requests_per_second": 1, "burst": 1, "client_requests_per_second": 10,
                     "client_burst": 20, "max_concurrent_requests": 64, "max_body_bytes": 1048576});
    let (s, l) = tg.api("PUT", &path, Some(set.clone())).await;
    assert_eq!((s, &l), (200, &set));
    assert_eq!(tg.api("GET", &path, None).await.1, set);
    wait_for("the limit to apply", Duration::from_secs(5), || async {
        let first = tg.get(host, "/").await.status();
        let second = tg.get(host, "/").await.status();
        (first == 200 && second == 429).then_some(())
    })
    .await;
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(t["limits"], set);
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    assert!(
        routes.to_string().contains("\"requests_per_second\":1"),
        "{routes}"
    );

    // Removing them applies as fast.
    let (s, _) = tg.api("PUT", &path, Some(json!({}))).await;
    assert_eq!(s, 200);
    wait_for("the limit to go", Duration::from_secs(5), || async {
        let mut all = true;
        for _ in 0..5 {
            all &= tg.get(host, "/").await.status() == 200;
        }
        all.then_some(())
    })
    .await;

    // A plan from the config: its limits, with the tenant's own fields over them.
    let (s, t) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(json!({"plan": "small"})),
        )
        .await;
    assert_eq!((s, t["plan"].as_str()), (200, Some("small")), "{t}");
    wait_for("the plan to apply", Duration::from_secs(5), || async {
        let r = tg
            .http_client()
            .post(format!("http://{}/", tg.http))
            .header("host", host)
            .body("more than ten bytes")
            .send()
            .await
            .ok()?;
        (r.status() == 413).then_some(())
    })
    .await;
    let (s, _) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(json!({"plan": "nope"})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, t) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(json!({"plan": null})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(t.get("plan").is_none(), "{t}");
    let (_, audit) = tg.api("GET", "/v1/audit", None).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("tenant.limits") && audit.contains("tenant.plan"),
        "{audit}"
    );
}

/// A config whose plans or route limits cannot be enforced is refused with the key.
#[test]
fn bad_limits_in_the_config_name_their_key() {
    let text = "[plans.Big]\nrequests_per_second = 1\n[plans.ok]\nburst = 3\n\
                [[routes]]\nhostnames = [\"a.test\"]\nupstreams = [\"192.0.2.1:80\"]\n\
                [routes.limits]\nmax_concurrent_requests = 0\n";
    let cfg = tenantgate_config::Config::from_toml(text).expect("parses");
    let err = cfg.validate().expect_err("invalid").to_string();
    for key in [
        "plans.Big",
        "plans.ok.burst",
        "routes[0].limits.max_concurrent_requests",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
}
