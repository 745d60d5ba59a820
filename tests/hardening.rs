//! The tenant boundary, tried as an attacker with a tenant's worth of API access would: an
//! upstream never reaches this node's own listeners or a metadata service, in any spelling,
//! through the API, the config file or a route that reaches a proxy.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn platform() -> Tenantgate {
    Tenantgate::new().section(PLATFORM_TEST)
}

/// Every way of naming this node's own listeners, or a metadata service, as an upstream is
/// refused with `forbidden_upstream`, on create and on replace, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_never_name_our_own_listeners_or_metadata_services() {
    let shop = Backend::start("shop").await;
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    let tg = platform().cert(c, k, true).start().await;
    let created = tg.create_tenant("shop", &[shop.addr]).await;
    let id = created["id"].as_str().expect("id");
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    let version = routes["version"].as_u64().expect("version");

    let admin = tg.admin.port();
    let http = tg.http.port();
    let https = tg.https.expect("tls").port();
    let forbidden = [
        format!("127.0.0.1:{admin}"),
        format!("[::ffff:127.0.0.1]:{admin}"),
        format!("127.0.0.2:{admin}"),
        format!("[::1]:{admin}"),
        format!("[::127.0.0.1]:{admin}"),
        format!("[64:ff9b::7f00:1]:{admin}"),
        format!("127.0.0.1:{http}"),
        format!("127.0.0.3:{http}"),
        format!("127.0.0.1:{https}"),
        "169.254.169.254:80".into(),
        "[::ffff:169.254.169.254]:80".into(),
        "[::169.254.169.254]:80".into(),
        "[64:ff9b::a9fe:a9fe]:80".into(),
        "[2002:a9fe:a9fe::]:80".into(),
        "[fd00:ec2::254]:80".into(),
        "100.100.100.200:80".into(),
        "0.0.0.0:80".into(),
    ];
    for (i, up) in forbidden.iter().enumerate() {
        let (s, b) = tg
            .api(
                "POST",
                "/v1/tenants",
                Some(json!({"slug": format!("evil{i}"), "name": "x", "upstreams": [up]})),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str().unwrap_or("")),
            (422, "forbidden_upstream"),
            "create with {up}: {b}"
        );
        let (s, b) = tg
            .api(
                "PUT",
                &format!("/v1/tenants/{id}/upstreams"),
                Some(json!({ "upstreams": [shop.addr.to_string(), up] })),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str().unwrap_or("")),
            (422, "forbidden_upstream"),
            "replace with {up}: {b}"
        );
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(up.as_str())),
            "the message names the address: {b}"
        );
    }
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    assert_eq!(routes["version"].as_u64(), Some(version), "nothing changed");
    // The tenant is still served by its own backend, and the admin API is not reachable
    // through the public listener under any tenant's name.
    let v = backend_json(tg.get("shop.platform.test", "/v1/tenants").await).await;
    assert_eq!(v["backend"], "shop");
    assert_eq!(v["path"], "/v1/tenants");
}

/// A route that breaks the policy at a proxy (a fleet proxy's listeners are invisible to
/// control) is not served: our 502 page and a log line naming the rule, and nothing is
/// forwarded: one request does not loop through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refuses_a_stored_route_to_its_own_listener() {
    let port = free_port();
    let shop = Backend::start("shop").await;
    let snapshot = json!({
        "version": 7,
        "routes": [
            {"id": "t_loop", "hostnames": ["loop.platform.test"],
             "upstreams": [{"addr": format!("127.0.0.1:{port}")}]},
            {"id": "t_mapped", "hostnames": ["mapped.platform.test"],
             "upstreams": [{"addr": format!("[::ffff:127.0.0.1]:{port}")}]},
            {"id": "t_meta", "hostnames": ["meta.platform.test"],
             "upstreams": [{"addr": "[64:ff9b::a9fe:a9fe]:80"}]},
            {"id": "t_shop", "hostnames": ["shop.platform.test"],
             "upstreams": [{"addr": shop.addr.to_string()}]},
        ],
        "certificates": [],
    });
    let tg = Tenantgate::offline_proxy()
        .http_port(port)
        .start_with_snapshot(snapshot.to_string().as_bytes())
        .await;
    for host in [
        "loop.platform.test",
        "mapped.platform.test",
        "meta.platform.test",
    ] {
        let r = tg.get_with(host, "/", &[("accept", "text/html")]).await;
        assert_eq!(r.status(), 502, "{host}");
        let body = r.text().await.expect("body");
        assert!(body.contains("Store unavailable"), "our page: {body}");
    }
    assert_eq!(tg.get("shop.platform.test", "/").await.status(), 200);
    let access = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("tenantgate::access"))
            .count()
    };
    let logs = wait_for(
        "the refusals in the log",
        Duration::from_secs(5),
        || async {
            let logs = tg.logs();
            (logs.contains("\"rule\":\"own_listener\"")
                && logs.contains("\"rule\":\"metadata\"")
                && access(&logs) >= 4)
                .then_some(logs)
        },
    )
    .await;
    assert!(logs.contains("t_loop"), "{logs}");
    // One line per request: nothing was forwarded back into the proxy.
    assert_eq!(access(&logs), 4, "{logs}");
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("\"outcome\":\"forbidden_upstream\""))
            .count(),
        3,
        "{logs}"
    );
}

engine_tests! {
/// A head that never ends is read no further than `max_request_header_bytes`: 431 and the
/// connection closes; many such connections cost what their bounded buffers cost.
async fn an_unterminated_head_is_bounded_and_refused(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new()
        .engine(engine)
        .proxy("max_request_header_bytes = 8192")
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let mut c = RawClient::connect(tg.http).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: ").await;
    // Sent in pieces, as a slow attacker would: the answer comes once the limit is passed
    // (and the node may close before the last piece is written).
    for _ in 0..5 {
        if !c.try_send(&[b'a'; 2048]).await {
            break;
        }
    }
    let r = c.response().await;
    assert_eq!(r.status, 431);
    assert!(c.closed().await, "the connection closes after the 431");

    // 200 connections that each try to send a 1 MB head: each is read only up to the limit,
    // answered and closed (before, each would have been buffered whole: 200 MB).
    let before = pss_kib(tg.pid());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = tg.http;
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: ").await;
            let _ = s.write_all(&vec![b'a'; 1 << 20]).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
            answer
        }));
    }
    let mut answered = 0;
    for t in tasks {
        let answer = t.await.expect("client task");
        if answer.starts_with(b"HTTP/1.1 431 ") {
            answered += 1;
        }
    }
    // A reset may swallow the answer of a client still writing; most see it.
    assert!(answered > 0, "no connection saw its 431");
    assert_eq!(tg.get("a.test", "/").await.status(), 200);
    let after = pss_kib(tg.pid());
    assert!(
        after.saturating_sub(before) < 40 * 1024,
        "200 connections sending 1 MB heads took {} KiB",
        after.saturating_sub(before)
    );
    assert_eq!(a.hits(), 1, "only the complete request reached the backend");
}

/// Header names with `_` are dropped: CGI, WSGI and PHP read `X_Forwarded_For` as the client
/// address. `allow_underscores_in_headers` keeps them.
async fn header_names_with_underscores_are_dropped(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new()
        .engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    for method in ["GET", "POST"] {
        let v = backend_json(
            tg.http_client()
                .request(method.parse().unwrap(), format!("http://{}/", tg.http))
                .header("host", "a.test")
                .header("X_Forwarded_For", "6.6.6.6")
                .header("x_custom", "1")
                .header("x-kept", "2")
                .body(if method == "POST" { "body" } else { "" })
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(seen(&v, "x_forwarded_for").is_empty(), "{method}: {v}");
        assert!(seen(&v, "x_custom").is_empty(), "{method}: {v}");
        assert_eq!(seen(&v, "x-kept"), vec!["2"], "{method}: {v}");
        assert_eq!(seen(&v, "x-forwarded-for"), vec!["127.0.0.1"], "{method}: {v}");
    }
    let allowed = Tenantgate::new()
        .engine(engine)
        .proxy("allow_underscores_in_headers = true")
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let r = allowed
        .get_with("a.test", "/", &[("x_custom", "1")])
        .await;
    assert_eq!(seen(&backend_json(r).await, "x_custom"), vec!["1"]);
}

/// `Content-Length` reaches the upstream as one canonical value, however the client spelled
/// the same length; different lengths are refused.
async fn content_length_reaches_the_upstream_canonical(engine) {
    let backend = RawBackend::start().await;
    let tg = Tenantgate::new()
        .engine(engine)
        .route(&["a.test"], &[backend.addr])
        .start()
        .await;
    for spelled in [
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 05\r\n",
    ] {
        let before = backend.received.lock().unwrap().len();
        let resp = raw(
            tg.http,
            format!("POST / HTTP/1.1\r\nHost: a.test\r\n{spelled}Connection: close\r\n\r\nhello")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 200, "{spelled:?}: {resp}");
        let got = wait_for("the request at the backend", Duration::from_secs(5), || {
            let got = backend.received.lock().unwrap().get(before).cloned();
            async move { got }
        })
        .await;
        let lengths: Vec<&str> = got
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length"))
            .collect();
        assert_eq!(lengths.len(), 1, "{spelled:?}: {got:?}");
        assert_eq!(lengths[0].to_ascii_lowercase(), "content-length: 5", "{got:?}");
        assert!(got.ends_with("\r\n\r\nhello"), "{got:?}");
    }
    let accepted = backend.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let resp = raw(
        tg.http,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        accepted
    );
}

/// Request targets must be in one of RFC 9112's forms: origin (`/path`), absolute
/// (`http://host/path`, routed by its authority and sent on in origin form) or `*` for
/// `OPTIONS`. Anything else, raw control bytes included, is 400 and forwarded nowhere.
async fn request_targets_follow_rfc_9112(engine) {
    let backend = RawBackend::start().await;
    let b = Backend::start("b").await;
    let tg = Tenantgate::new()
        .engine(engine)
        .route(&["a.test"], &[backend.addr])
        .route(&["b.test"], &[b.addr])
        .start()
        .await;
    for req in [
        &b"GET /a\0b HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"GET /a\rb HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET x.other.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET /a#frag HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET /a\"b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let resp = raw(tg.http, req).await;
        assert_eq!(status_of(&resp), 400, "{:?}: {resp}", String::from_utf8_lossy(req));
    }
    // We are not a forward proxy: CONNECT is refused before any routing.
    let resp = raw(tg.http, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(status_of(&resp), 405, "{resp}");
    assert_eq!(backend.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Absolute form: the authority is the host (RFC 9112 §3.2.2), the path goes on as origin
    // form.
    let resp = raw(
        tg.http,
        b"GET http://B.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["backend"], "b");
    assert_eq!(v["path"], "/x");
    assert_eq!(seen(&v, "host"), vec!["b.test"]);
    // `OPTIONS *` goes on as it is.
    let resp = raw(
        tg.http,
        b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let got = wait_for("OPTIONS * at the backend", Duration::from_secs(5), || {
        let got = backend.received.lock().unwrap().first().cloned();
        async move { got }
    })
    .await;
    assert!(got.starts_with("OPTIONS * HTTP/1.1\r\n"), "{got:?}");
}

/// A request that carries this platform's `Via` mark already went through one of our
/// proxies: 508, not forwarded. Two nodes routing a name to each other answer one request
/// with one 508 instead of looping; the admin listener refuses marked requests.
async fn a_request_that_comes_back_gets_508(engine) {
    let backend = RawBackend::start().await;
    let port_a = free_port();
    let port_b = free_port();
    let a = Tenantgate::new()
        .engine(engine)
        .section(PLATFORM_TEST)
        .http_port(port_a)
        .route(&["loop.test"], &[format!("127.0.0.1:{port_b}").parse().unwrap()])
        .route(&["shop.test"], &[backend.addr])
        .start()
        .await;
    let b = Tenantgate::new()
        .engine(engine)
        .section(PLATFORM_TEST)
        .http_port(port_b)
        .route(&["loop.test"], &[format!("127.0.0.1:{port_a}").parse().unwrap()])
        .start()
        .await;
    let r = a.get_with("loop.test", "/", &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 508);
    assert!(r.text().await.unwrap().contains("Loop Detected"));
    for via in [
        "1.1 tenantgate.platform.test",
        "1.0 cdn.example, 1.1 TENANTGATE.platform.test",
    ] {
        let r = a.get_with("shop.test", "/", &[("via", via)]).await;
        assert_eq!(r.status(), 508, "{via}");
    }
    assert_eq!(backend.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Another platform's mark, or another proxy's, is an ordinary Via.
    let resp = raw(
        a.http,
        b"GET / HTTP/1.1\r\nHost: shop.test\r\nVia: 1.1 tenantgate.other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let got = wait_for("the request at the backend", Duration::from_secs(5), || {
        let got = backend.received.lock().unwrap().first().cloned();
        async move { got }
    })
    .await;
    // Several Via headers are one list in order (RFC 9110 §5.3): ours comes last.
    let via: Vec<String> = got
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("via"))
        .map(|(_, v)| v.trim().to_string())
        .collect();
    assert_eq!(
        via.join(", "),
        "1.1 tenantgate.other.test, 1.1 tenantgate.platform.test",
        "{got:?}"
    );
    // Each node logged one line for the looping request: B's 508, A's relay of it.
    let count = |tg: &Running| {
        tg.logs()
            .lines()
            .filter(|l| l.contains("tenantgate::access") && l.contains("loop.test"))
            .count()
    };
    wait_for("both access lines", Duration::from_secs(5), || {
        let n = (count(&a), count(&b));
        async move { (n == (1, 1)).then_some(()) }
    })
    .await;
    // The admin listener is never served through a proxy.
    let resp = raw(
        a.admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nVia: 1.1 tenantgate.platform.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.contains("forwarded_request"), "{resp}");
}

/// `hsts` on a route adds `Strict-Transport-Security` to every response over TLS (the
/// upstream's and ours), never over plain HTTP.
async fn hsts_is_sent_over_tls_only(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let (c, k) = ca.issue(&["a.test", "down.test"]);
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tg = Tenantgate::new()
        .engine(engine)
        .cert(c, k, true)
        .route_with(&["a.test"], &[a.addr], "hsts = \"max-age=31536000; includeSubDomains\"")
        .route_with(&["down.test"], &[dead], "hsts = \"max-age=60\"")
        .start()
        .await;
    let port = tg.https.unwrap().port();
    let client = tg.https_client(&ca, &["a.test", "down.test"]);
    let r = client
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let r = client
        .get(format!("https://down.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=60");
    let r = tg.get("a.test", "/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());
}
}

/// A connection from `source` (a loopback address of its own) to `to`.
async fn connect_from(source: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    s.connect(to).await.expect("connect")
}

/// Whether the proxy closes `s` without a word (a refused connection) within a few seconds.
async fn refused(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// `max_connections` per node and `max_connections_per_client` per address are enforced
/// before any TLS or HTTP work: beyond them a connection is closed at once, counted in
/// `tenantgate_proxy_connections_refused_total` and logged; a load balancer in
/// `trusted_proxies` is exempt from the per-client limit; a TLS handshake that never
/// happens holds its connection for `tls_handshake_timeout_ms` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_node_and_per_client() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["a.test"]);
    let tg = Tenantgate::new()
        .cert(c, k, true)
        .proxy("max_connections = 12")
        .proxy("max_connections_per_client = 3")
        .proxy("trusted_proxies = [\"127.0.0.9/32\"]")
        .proxy("tls_handshake_timeout_ms = 500")
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    // Connections are admitted by the proxy's task a moment after the kernel accepts them:
    // each step waits until the node counts what is open.
    let open = |n: usize| {
        let tg = &tg;
        async move {
            let want = format!("tenantgate_proxy_connections {n}\n");
            wait_for(
                &format!("{n} open connections"),
                Duration::from_secs(5),
                || {
                    let want = want.clone();
                    async move { tg.metrics().await.contains(&want).then_some(()) }
                },
            )
            .await
        }
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", tg.http).await);
    }
    open(3).await;
    let mut fourth = connect_from("127.0.0.2", tg.http).await;
    assert!(
        refused(&mut fourth).await,
        "a 4th connection from one client"
    );
    // The three held ones still work.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut c = RawClient::from_stream(held.remove(0));
    assert_eq!(c.response().await.status, 200);
    // Another client address has its own allowance; a trusted balancer none at all.
    for _ in 0..3 {
        held.push(connect_from("127.0.0.3", tg.http).await);
    }
    for _ in 0..5 {
        held.push(connect_from("127.0.0.9", tg.http).await);
    }
    // 2 + 3 + 5 + c = 11 open: one more fits the node, the next does not.
    open(11).await;
    held.push(connect_from("127.0.0.4", tg.http).await);
    open(12).await;
    let mut over = connect_from("127.0.0.5", tg.http).await;
    assert!(refused(&mut over).await, "beyond max_connections");
    let m = wait_for(
        "the refusals in the metrics",
        Duration::from_secs(5),
        || async {
            let m = tg.metrics().await;
            (m.contains(r#"tenantgate_proxy_connections_refused_total{reason="client"} 1"#)
                && m.contains(r#"tenantgate_proxy_connections_refused_total{reason="node"} 1"#))
            .then_some(m)
        },
    )
    .await;
    assert!(m.contains("tenantgate_proxy_connections 12"), "{m}");
    wait_for("the refusal in the log", Duration::from_secs(5), || async {
        tg.logs()
            .contains("connections refused: limit reached")
            .then_some(())
    })
    .await;
    // Closing connections makes room again.
    drop(held);
    drop(c);
    open(0).await;
    let r = tg.get("a.test", "/").await;
    assert_eq!(r.status(), 200);
    // A client that opens the TLS port and never says hello is counted, and let go.
    let mut silent = connect_from("127.0.0.6", tg.https.unwrap()).await;
    assert!(
        refused(&mut silent).await,
        "closed after the handshake deadline"
    );
    let m = tg.metrics().await;
    assert!(
        m.contains(r#"tenantgate_proxy_tls_handshake_failures_total{reason="timeout"} 1"#),
        "{m}"
    );
}
