//! The HTTP/1.1 fast path against upstreams scripted byte by byte: response framings relayed
//! exactly, upstream connections reused only when that is safe, a reused connection the
//! upstream closed retried on a new one (never a body that started to go upstream),
//! `Content-Length` bodies streamed, and requests the fast path does not serve handed to the
//! Pingora path in the middle of a connection.

mod common;

use common::*;

/// tenantgate routing `a.test` to `up`, and a client connection to it.
async fn proxy_to(up: &ScriptedBackend) -> (Running, RawClient) {
    let tg = Tenantgate::new()
        .route(&["a.test"], &[up.addr])
        .start()
        .await;
    let c = RawClient::connect(tg.http).await;
    (tg, c)
}

const CHUNKED: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n5\r\nhel",
    b"lo\r\n7;ext=1\r\n, world\r\n",
    b"0\r\nx-checksum: 1\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_length_and_close_delimited_bodies_are_relayed_once_framed() {
    let up = ScriptedBackend::start(|_, _, head| {
        Some(if head.starts_with("GET /chunked ") {
            Reply::keep(CHUNKED)
        } else if head.starts_with("GET /length ") {
            Reply::keep(&[
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234",
                b"56789",
            ])
        } else if head.starts_with("HEAD ") {
            Reply::keep(&[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"])
        } else if head.starts_with("GET /gzip ") {
            Reply::close(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\ncompressed?"])
        } else {
            Reply::close(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"])
        })
    })
    .await;
    let (_tg, mut c) = proxy_to(&up).await;

    c.send(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world"[..]));
    assert!(r.header("x-request-id").is_some());

    c.send(b"GET /length HTTP/1.1\r\nHost: a.test\r\n\r\nHEAD /length HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]));
    // HEAD: the length is the GET's, and no body follows (the next response starts at once).
    let mut head = c.response_head_only().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    // All three went over one upstream connection: each ended exactly where it was framed.
    assert_eq!(up.connections(), 1);

    // A body only the upstream's close delimits reaches the client re-framed as chunks, and
    // the client connection stays usable.
    c.send(b"GET /close HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    head = c.response().await;
    assert_eq!(head.body, b"until the end");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert!(head.header("connection").is_none());
    // A coding other than chunked cannot be re-framed: that body ends the client connection.
    c.send(b"GET /gzip HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    head = c.response().await;
    assert_eq!(head.body, b"compressed?");
    assert_eq!(head.header("transfer-encoding"), Some("gzip"));
    assert_eq!(head.header("connection"), Some("close"));
    assert!(
        c.closed().await,
        "a close-delimited body ends the client connection too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_dropped_is_retried_on_a_new_one() {
    // Every upstream connection answers its first request, then closes on the second one
    // without a word, as a backend whose keep-alive timer fired at that instant would.
    let up = ScriptedBackend::start(|_, req, _| {
        (req == 0).then(|| Reply::keep(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]))
    })
    .await;
    let (_tg, mut c) = proxy_to(&up).await;
    for i in 0..3 {
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
        let r = c.response().await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ok"[..]),
            "request {i}"
        );
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_sends_more_than_it_framed_is_never_reused() {
    let up = ScriptedBackend::start(|conn, _, _| {
        Some(Reply::keep(&[if conn == 0 {
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"[..]
        } else {
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal"[..]
        }]))
    })
    .await;
    let (_tg, mut c) = proxy_to(&up).await;
    c.send(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"ok");
    c.send(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(
        c.response().await.body,
        b"real",
        "the stray response never reaches a client"
    );
    assert_eq!(up.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_pass_and_hop_by_hop_response_headers_do_not() {
    let up = ScriptedBackend::start(|_, _, _| {
        Some(Reply::keep(&[
            b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\nkeep-alive: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: x-internal\r\nx-internal: secret\r\nkeep-alive: timeout=5\r\n\
              upgrade: h2c\r\ncontent-length: 2\r\nx-request-id: from-upstream\r\n\r\nok",
        ]))
    })
    .await;
    let (_tg, mut c) = proxy_to(&up).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await;
    let hints = c.response().await;
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</app.css>; rel=preload"));
    // Hints are rewritten like any head, and carry nothing of ours.
    assert!(hints.header("keep-alive").is_none(), "{hints:?}");
    assert!(hints.header("x-request-id").is_none(), "{hints:?}");
    let r = c.response().await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    for gone in ["x-internal", "keep-alive", "upgrade"] {
        assert!(r.header(gone).is_none(), "{gone} was forwarded: {r:?}");
    }
    assert_eq!(r.header("x-request-id"), Some("from-upstream"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the client asked to close"
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_request_is_rebuilt_not_forwarded() {
    let up =
        ScriptedBackend::start(|_, _, _| Some(Reply::keep(&[b"HTTP/1.1 204 No Content\r\n\r\n"])))
            .await;
    let (_tg, mut c) = proxy_to(&up).await;
    c.send(
        b"GET /p?q=1 HTTP/1.1\r\nHost: A.Test.:80\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
          X-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\nKeep-Alive: 300\r\nTE: trailers\r\n\
          Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nX-Request-Id: abc-123\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.status, 204);
    let head = up.heads.lock().expect("lock")[0].to_ascii_lowercase();
    assert!(head.starts_with("get /p?q=1 http/1.1\r\n"), "{head}");
    for gone in [
        "6.6.6.6",
        "evil.test",
        "keep-alive",
        "te:",
        "proxy-connection",
        "proto: https",
    ] {
        assert!(!head.contains(gone), "{gone} reached the upstream: {head}");
    }
    for kept in [
        "host: a.test.:80\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "forwarded: for=127.0.0.1;host=a.test;proto=http\r\n",
        "x-forwarded-host: a.test\r\n",
        "x-forwarded-proto: http\r\n",
        "x-request-id: abc-123\r\n",
        "accept: */*\r\n",
    ] {
        assert!(head.contains(kept), "{kept:?} missing: {head}");
    }
}

/// A request the fast path does not serve (here a body, then an unknown host) is handed to
/// the Pingora path with the bytes already read, and the connection goes on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_fast_path_continue_the_connection_on_pingora() {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new()
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let mut c = RawClient::connect(tg.http).await;
    c.send(
        b"GET /fast HTTP/1.1\r\nHost: a.test\r\n\r\n\
          POST /form HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /x HTTP/1.1\r\nHost: nobody.test\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    let json = |r: &RawResponse| -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("backend json")
    };
    let r = c.response().await;
    assert_eq!(json(&r)["path"], "/fast");
    let r = c.response().await;
    let v = json(&r);
    assert_eq!(
        (v["path"].as_str(), v["body_len"].as_u64()),
        (Some("/form"), Some(5))
    );
    let r = c.response().await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("no store"));
    let r = c.response().await;
    assert_eq!(json(&r)["path"], "/after");
    assert_eq!(a.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_bodies_stream_on_the_fast_path() {
    let a = Backend::start("a").await;
    let tg = Tenantgate::new()
        .route(&["a.test"], &[a.addr])
        .start()
        .await;
    let mut c = RawClient::connect(tg.http).await;
    let json = |r: &RawResponse| -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("backend json")
    };
    // 4 KiB with its head, then a pipelined GET behind it.
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut req = b"POST /cart HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4096\r\n\r\n".to_vec();
    req.extend_from_slice(&small);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n");
    c.send(&req).await;
    let v = json(&c.response().await);
    assert_eq!(
        (
            v["method"].as_str(),
            v["body_len"].as_u64(),
            v["body_fnv"].as_u64()
        ),
        (Some("POST"), Some(4096), Some(fnv(&small)))
    );
    assert_eq!(seen(&v, "content-length"), ["4096"]);
    assert_eq!(json(&c.response().await)["path"], "/next");
    // 256 KiB arriving in pieces after the head, PUT this time.
    let big: Vec<u8> = (0..262_144u32).map(|i| (i * 7 % 253) as u8).collect();
    c.send(b"PUT /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 262144\r\n\r\n")
        .await;
    for piece in big.chunks(65_536) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        c.send(piece).await;
    }
    let v = json(&c.response().await);
    assert_eq!(
        (v["body_len"].as_u64(), v["body_fnv"].as_u64()),
        (Some(262_144), Some(fnv(&big)))
    );
    // An empty body, framed by its length, takes the fast path too.
    c.send(b"POST /empty HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n")
        .await;
    let v = json(&c.response().await);
    assert_eq!(
        (v["path"].as_str(), v["body_len"].as_u64()),
        (Some("/empty"), Some(0))
    );
    assert_eq!(engines(&tg, 4).await, vec!["http1"; 4]);
    // A client that stops halfway: nothing is answered and the connection closes.
    let mut gone = RawClient::connect(tg.http).await;
    gone.send(b"POST /cart HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nonly part")
        .await;
    drop(gone);
    let mut c = RawClient::connect(tg.http).await;
    c.send(b"GET /still HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(json(&c.response().await)["path"], "/still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_went_upstream_is_never_sent_twice() {
    // Like a backend whose keep-alive timer fired: the second request on a connection is
    // read and dropped without an answer.
    let up = ScriptedBackend::start(|_, req, _| {
        (req == 0).then(|| Reply::keep(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]))
    })
    .await;
    let (_tg, mut c) = proxy_to(&up).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    c.send(b"POST /pay HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\n100")
        .await;
    let r = c.response().await;
    assert_eq!(
        r.status, 502,
        "a POST that reached the upstream is not replayed"
    );
    let posts = up
        .heads
        .lock()
        .expect("lock")
        .iter()
        .filter(|h| h.starts_with("POST /pay"))
        .count();
    assert_eq!(posts, 1);
    assert_eq!(up.connections(), 1);
}

/// Which engine served each request, from the access log.
async fn engines(tg: &Running, n: usize) -> Vec<String> {
    wait_for(
        "access log lines",
        std::time::Duration::from_secs(5),
        || async {
            let lines: Vec<String> = tg
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["target"] == "tenantgate::access")
                .map(|v| v["engine"].as_str().unwrap_or("").to_string())
                .collect();
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fast_path_off_pingora_serves_everything() {
    let up = ScriptedBackend::start(|_, _, _| {
        Some(Reply::close(&[
            b"HTTP/1.1 200 OK\r\n\r\nuntil ",
            b"the end",
        ]))
    })
    .await;
    for (fast, engine) in [(true, "http1"), (false, "pingora")] {
        let tg = Tenantgate::new()
            .proxy(&format!("http1_fast_path = {fast}"))
            .route(&["a.test"], &[up.addr])
            .start()
            .await;
        let mut c = RawClient::connect(tg.http).await;
        for _ in 0..2 {
            c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
            let r = c.response().await;
            assert_eq!((r.status, r.body.as_slice()), (200, &b"until the end"[..]));
            // Both engines re-frame a close-delimited body as chunked and keep the client.
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
        }
        assert_eq!(engines(&tg, 2).await, vec![engine; 2]);
    }
    assert_eq!(up.connections(), 4);
}
