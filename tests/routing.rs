//! Hostname routing, the proxy's own answers, forwarding headers and request safety, tested
//! against the real binary with real backends and clients.

mod common;

use common::*;

engine_tests! {
async fn routes_by_normalised_host_exact_before_wildcard(engine) {
    let a = Backend::start("a").await;
    let w = Backend::start("w").await;
    let x = Backend::start("x").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["shop1.platform.test", "www.shop1.com"], &[a.addr])
        .route(&["*.shop2.platform.test"], &[w.addr])
        .route(&["x.shop2.platform.test"], &[x.addr])
        .start()
        .await;

    for host in [
        "shop1.platform.test",
        "SHOP1.Platform.Test",
        "shop1.platform.test:8080",
        "shop1.platform.test.",
        "shop1.platform.test.:443",
        "www.shop1.com",
    ] {
        let v = backend_json(tg.get(host, "/p?q=1").await).await;
        assert_eq!(v["backend"], "a", "host {host:?}");
        assert_eq!(v["path"], "/p", "host {host:?}");
    }
    let v = backend_json(tg.get("any.shop2.platform.test", "/").await).await;
    assert_eq!(v["backend"], "w");
    // Exact beats wildcard.
    let v = backend_json(tg.get("x.shop2.platform.test", "/").await).await;
    assert_eq!(v["backend"], "x");
    // A wildcard covers exactly one label.
    for host in ["shop2.platform.test", "a.b.shop2.platform.test"] {
        assert_eq!(tg.get(host, "/").await.status(), 404, "host {host:?}");
    }
    // The unknown-host hits never reached a tenant.
    assert_eq!(a.hits() + w.hits() + x.hits(), 8);
}
}

engine_tests! {
async fn unknown_host_gets_our_branded_404_never_a_tenant(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;

    let r = tg.get("nobody.test", "/").await;
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.text().await.unwrap().contains("no store is served"));

    let r = tg
        .get_with(
            "nobody.test",
            "/",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<html") && body.contains("Store not found"),
        "{body}"
    );
    assert_eq!(a.hits(), 0);
}
}

engine_tests! {
async fn malformed_missing_or_duplicate_host_is_400(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;

    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a..test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a_b.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test:notaport\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: -a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xc3\xa4.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    ];
    for req in cases {
        let resp = raw(tg.http, req).await;
        assert_eq!(
            status_of(&resp),
            400,
            "request {:?} got {resp:?}",
            String::from_utf8_lossy(req)
        );
    }
    // Punycode A-labels are ordinary names.
    let resp = raw(
        tg.http,
        b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 404);
    assert_eq!(a.hits(), 0);
}
}

engine_tests! {
async fn forwarding_headers_are_ours_and_hop_by_hop_headers_are_dropped(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;

    let resp = tg
        .http_client()
        .get(format!("http://{}/", tg.http))
        .header("host", "A.test:1234")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6;host=evil.test;proto=https")
        .header("connection", "x-secret")
        .header("x-secret", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let v = backend_json(resp).await;
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen(&v, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen(&v, "x-forwarded-host"), vec!["a.test"]);
    assert_eq!(
        seen(&v, "forwarded"),
        vec!["for=127.0.0.1;host=a.test;proto=http"]
    );
    assert!(
        seen(&v, "x-secret").is_empty(),
        "Connection-named header forwarded: {v}"
    );
    assert!(
        seen(&v, "keep-alive").is_empty(),
        "hop-by-hop header forwarded: {v}"
    );
    // A request id is generated, sent upstream and returned to the client.
    let ids = seen(&v, "x-request-id");
    assert_eq!(ids.len(), 1);
    assert!(ids[0].len() >= 16);
    assert_eq!(request_id.as_deref(), Some(ids[0].as_str()));

    // Repeated client copies are all replaced, not appended to.
    let resp = raw(
        tg.http,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\
          Forwarded: for=6.6.6.6\r\nForwarded: for=7.7.7.7\r\nX-Forwarded-Host: evil.test\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        seen(&v, "forwarded"),
        vec!["for=127.0.0.1;host=a.test;proto=http"]
    );
    assert_eq!(seen(&v, "x-forwarded-host"), vec!["a.test"]);

    // A client-supplied request id is kept.
    let resp = tg
        .http_client()
        .get(format!("http://{}/", tg.http))
        .header("host", "a.test")
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        seen(&backend_json(resp).await, "x-request-id"),
        vec!["trace-123"]
    );
}
}

engine_tests! {
async fn https_redirect_routes_answer_plain_http_with_308(engine) {
    let ca = TestCa::new();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (c, k) = ca.issue(&["secure.test", "plain.test"]);
    let tg = Tenantgate::new().engine(engine)
        .cert(c, k, true)
        .route_with(&["secure.test"], &[a.addr], "https_redirect = true")
        .route(&["plain.test"], &[b.addr])
        .start()
        .await;
    let port = tg.https.unwrap().port();

    let r = tg.get("secure.test", "/cart?item=7").await;
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://secure.test:{port}/cart?item=7")
    );
    assert_eq!(a.hits(), 0);
    // Over TLS the same route is proxied.
    let client = tg.https_client(&ca, &["secure.test"]);
    let r = client
        .get(format!("https://secure.test:{port}/"))
        .send()
        .await
        .unwrap();
    let v = backend_json(r).await;
    assert_eq!(v["backend"], "a");
    assert_eq!(seen(&v, "x-forwarded-proto"), vec!["https"]);
    // Routes without the flag serve plain HTTP.
    assert_eq!(tg.get("plain.test", "/").await.status(), 200);
}
}

engine_tests! {
async fn oversized_or_too_many_headers_are_refused(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .proxy("max_request_header_bytes = 8192")
        .proxy("max_request_headers = 50")
        .route(&["a.test"], &[a.addr])
        .start()
        .await;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(10_000)
    );
    assert_eq!(status_of(&raw(tg.http, big.as_bytes()).await), 431);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..60 {
        many += &format!("X-H{i}: v\r\n");
    }
    many += "\r\n";
    assert_eq!(status_of(&raw(tg.http, many.as_bytes()).await), 431);

    // Beyond the HTTP/1 parser's own limits the request is refused too, never forwarded.
    let mut huge = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..300 {
        huge += &format!("X-H{i}: v\r\n");
    }
    huge += "\r\n";
    let resp = raw(tg.http, huge.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert_eq!(a.hits(), 0);

    // Within the limits all is well.
    assert_eq!(tg.get("a.test", "/").await.status(), 200);
}
}

engine_tests! {
/// Request smuggling: a request whose body framing could be read two ways (both
/// `Content-Length` and `Transfer-Encoding`, an obfuscated or second `Transfer-Encoding`,
/// contradictory or signed lengths) is answered 400 and the connection closed; nothing of it
/// reaches the backend, nor does what was pipelined behind it.
async fn conflicting_or_obfuscated_framing_is_refused(engine) {
    let backend = RawBackend::start().await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[backend.addr])
        .start()
        .await;

    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let cases: &[&str] = &[
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: identity, chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\tchunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4, 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x4\r\n\r\nabcd",
        "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
    ];
    for req in cases {
        let mut c = RawClient::connect(tg.http).await;
        c.send(format!("{req}{smuggled}").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 400, "{req:?}");
        assert_eq!(r.header("connection"), Some("close"), "{req:?}");
        assert!(c.closed().await, "the connection closes after {req:?}");
    }
    // The proxy closed each connection after its answer, so anything it had forwarded would
    // have been connected by then.
    assert_eq!(backend.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The same framing, written once, is served.
    let mut c = RawClient::connect(tg.http).await;
    c.send(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 200);
}
}

engine_tests! {
async fn websocket_upgrade_passes_through(engine) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["ws.test"], &[a.addr])
        .start()
        .await;

    let mut req = format!("ws://{}/ws", tg.http)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", "ws.test".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.expect("echo").expect("frame");
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
}
}

engine_tests! {
async fn request_bodies_stream_through(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let body = vec![b'x'; 5 * 1024 * 1024];
    let r = tg
        .http_client()
        .post(format!("http://{}/upload", tg.http))
        .header("host", "a.test")
        .body(body)
        .send()
        .await
        .unwrap();
    let v = backend_json(r).await;
    assert_eq!(v["body_len"], 5 * 1024 * 1024);
    assert_eq!(v["method"], "POST");
}
}

engine_tests! {
async fn metrics_count_by_route_and_status_class(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(tg.get("a.test", "/").await.status(), 200);
    }
    assert_eq!(tg.get("nobody.test", "/").await.status(), 404);
    // Metrics are written once each response is sent: wait for them.
    let m = wait_for("metrics", std::time::Duration::from_secs(5), || async {
        let m = tg.metrics().await;
        (m.contains(r#"tenantgate_proxy_requests_total{class="2xx",route="a.test"} 3"#)
            && m.contains(r#"tenantgate_proxy_requests_total{class="4xx",route="_unknown"} 1"#))
        .then_some(m)
    })
    .await;
    assert!(m.contains("tenantgate_proxy_routes 1"), "{m}");
    assert!(
        m.contains(r#"tenantgate_proxy_request_duration_seconds_count{route="a.test"} 3"#),
        "{m}"
    );
    // The access log has one JSON line per request (written after each response).
    let lines = wait_for("four access-log lines", std::time::Duration::from_secs(5), || async {
        let lines: Vec<serde_json::Value> = tg
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tenantgate::access")
            .collect();
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l["status"] == 404 && l["host"] == "nobody.test"));
    assert!(lines
        .iter()
        .any(|l| l["status"] == 200 && l["route"] == "a.test"));
}
}

engine_tests! {
/// Pipelined HTTP/1.1 requests are answered in order, each routed on its own, including ones
/// behind an answer of the proxy's own.
async fn pipelined_requests_are_answered_in_order(engine) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .route(&["b.test"], &[b.addr])
        .start()
        .await;
    let resp = raw(
        tg.http,
        b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /2 HTTP/1.1\r\nHost: nobody.test\r\n\r\n\
          GET /3 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, vec!["200", "404", "200"], "{resp}");
    let first = resp.find("\"path\":\"/1\"").expect("first answer");
    let third = resp.find("\"path\":\"/3\"").expect("third answer");
    assert!(first < third);
    assert_eq!((a.hits(), b.hits()), (1, 1));
}
}

engine_tests! {
/// The proxy's own answers keep the connection usable (keep-alive survives a 404), and HEAD
/// gets the headers without a body.
async fn own_answers_keep_the_connection_alive_and_respect_head(engine) {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new().engine(engine)
        .route(&["a.test"], &[a.addr])
        .start()
        .await;

    // One TCP connection for all three requests: if the proxy closed it after its own 404,
    // the second request would fail. (A pooling client could open a second connection on
    // its own and hide that.)
    let mut conn = tokio::net::TcpStream::connect(tg.http)
        .await
        .expect("connect");
    let (status, body) = exchange(&mut conn, "GET", "nobody.test").await;
    assert_eq!(status, 404);
    assert!(!body.is_empty());
    let (status, body) = exchange(&mut conn, "GET", "a.test").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"backend\":\"a\""), "{body}");
    let (status, body) = exchange(&mut conn, "HEAD", "nobody.test").await;
    assert_eq!(status, 404);
    assert!(body.is_empty(), "HEAD got a body: {body:?}");

    // HEAD: Content-Length of the page, no body after the head.
    let resp = raw(
        tg.http,
        b"HEAD / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 404);
    assert!(
        resp.to_ascii_lowercase().contains("content-length: 51"),
        "{resp}"
    );
    assert!(
        resp.ends_with("\r\n\r\n"),
        "HEAD response has a body: {resp:?}"
    );
    assert_eq!(a.hits(), 1);
}
}

/// Send one request on `conn` and read exactly its response (HEAD: headers only).
async fn exchange(conn: &mut tokio::net::TcpStream, method: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("{method} / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write on the kept-alive connection");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let want = if method == "HEAD" { 0 } else { length };
    while buf.len() < head_end + want {
        let n = conn.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "the proxy closed the connection mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + want]).into_owned();
    (status_of(&head), body)
}
