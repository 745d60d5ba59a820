//! Custom domains end to end against a real ACME CA (Pebble) and DNS server
//! (pebble-challtestsrv): attach, ownership checks and their failures, issuance, serving
//! over TLS, renewal, "moved" detection, detach, and a fleet of two control nodes.

mod common;

use std::time::Duration;

use common::pebble::Pebble;
use common::*;
use serde_json::{json, Value};

async fn start_edge(http_port: u16, pebble: &Pebble, extra: &str) -> Running {
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    Tenantgate::new()
        .http_port(http_port)
        .cert(c, k, true)
        .section(PLATFORM_TEST)
        .section(&pebble.config(http_port, extra))
        .start()
        .await
}

async fn domain(tg: &Running, id: &str) -> Value {
    let (s, d) = tg.api("GET", &format!("/v1/domains/{id}"), None).await;
    assert_eq!(s, 200, "{d}");
    d
}

/// Poll the domain until `ok` holds; panics with the last state (and the node's log).
async fn wait_domain(tg: &Running, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = domain(tg, id).await;
        if ok(&d) {
            return d;
        }
        if std::time::Instant::now() > end {
            panic!(
                "timed out waiting for {what}; domain: {d:#}\nlogs:\n{}",
                tg.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn errors(d: &Value) -> String {
    d["errors"].to_string()
}

/// An HTTPS client trusting `root_pem` that reaches `host` at `tg`.
fn tls_client(tg: &Running, root_pem: &str, host: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).expect("root"))
        .resolve(host, tg.https.expect("https"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Ask `tg` to attach `host` to tenant `tid`: the status and JSON answer.
async fn try_attach(tg: &Running, tid: &str, host: &str) -> (u16, Value) {
    tg.api(
        "POST",
        &format!("/v1/tenants/{tid}/domains"),
        Some(json!({"hostname": host})),
    )
    .await
}

/// Attach `host` to tenant `tid` through `tg` (asserting 201); the domain's JSON.
async fn attach(tg: &Running, tid: &str, host: &str) -> Value {
    let (s, d) = try_attach(tg, tid, host).await;
    assert_eq!(s, 201, "attaching {host}: {d}");
    d
}

/// Attach `host` and publish its TXT record, as a merchant does; the domain's id.
async fn attach_with_txt(tg: &Running, pebble: &Pebble, tid: &str, host: &str) -> String {
    let d = attach(tg, tid, host).await;
    let token = d["verification"]["txt_value"].as_str().expect("token");
    pebble.set_txt(&format!("_tenantgate.{host}"), token).await;
    d["id"].as_str().expect("id").to_owned()
}

/// Wait until `tg` answers `https://<host>/` with 200 to a client trusting only `root`.
async fn wait_tls_ok(tg: &Running, root: &str, host: &str) {
    let client = tls_client(tg, root, host);
    let url = format!("https://{host}:{}/", tg.https.expect("https").port());
    wait_for(
        &format!("{host}'s certificate to be served"),
        Duration::from_secs(10),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_is_verified_issued_served_and_detached() {
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    let tg = start_edge(port, &pebble, "").await;
    let shop = Backend::start("shop").await;
    let other = Backend::start("other").await;
    let t = tg.create_tenant("shop", &[shop.addr]).await;
    let tid = t["id"].as_str().expect("id").to_owned();
    let t2 = tg.create_tenant("other", &[other.addr]).await;
    let host = "www.shop.test";
    // The merchant's DNS does not point at us yet: the HTTP token cannot be reached.
    pebble.set_a(host, &["127.0.0.2"]).await;

    let d = attach(&tg, &tid, "WWW.Shop.test.").await;
    let id = d["id"].as_str().expect("id").to_owned();
    assert_eq!(d["hostname"], host);
    assert_eq!(d["tenant_id"], tid.as_str());
    assert_eq!(d["status"], "pending_verification");
    assert_eq!(d["ssl"]["status"], "pending_validation");
    assert_eq!(d["verification"]["txt_name"], "_tenantgate.www.shop.test");
    let token = d["verification"]["txt_value"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(token.len(), 32);
    assert_eq!(d["verification"]["http_body"], token.as_str());
    let http_url = d["verification"]["http_url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert!(
        http_url.starts_with("http://www.shop.test/.well-known/tenantgate/"),
        "{http_url}"
    );

    // Every proxy answers the HTTP token within milliseconds of the API's answer (it is how
    // a merchant whose DNS points here proves ownership), but routes nothing to the tenant.
    let path = http_url.trim_start_matches("http://www.shop.test");
    let body = wait_for("the token to be served", Duration::from_secs(5), || async {
        let r = tg.get(host, path).await;
        if r.status() == 200 {
            r.text().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(body, token);
    assert_eq!(tg.get(host, "/").await.status(), 404);

    // No TXT record: stays pending, saying why.
    let d = wait_domain(&tg, &id, "the missing TXT record to be reported", |d| {
        errors(d).contains("no TXT record at _tenantgate.www.shop.test")
    })
    .await;
    assert_eq!(d["status"], "pending_verification");
    assert!(errors(&d).contains("127.0.0.2"), "{d}");

    // A wrong TXT value.
    pebble
        .set_txt("_tenantgate.www.shop.test", "not-the-token")
        .await;
    let d = wait_domain(&tg, &id, "the wrong TXT record to be reported", |d| {
        errors(d).contains("not this domain's token")
    })
    .await;
    assert_eq!(d["status"], "pending_verification");
    assert!(errors(&d).contains("not-the-token"), "{d}");

    // The DNS server fails.
    pebble.set_servfail("_tenantgate.www.shop.test", true).await;
    let d = wait_domain(&tg, &id, "the DNS failure to be reported", |d| {
        errors(d).contains("DNS lookup of TXT _tenantgate.www.shop.test failed")
    })
    .await;
    assert_eq!(d["status"], "pending_verification");
    pebble
        .set_servfail("_tenantgate.www.shop.test", false)
        .await;

    // The right token: verified (by TXT) and routed at once, and the CA is asked. Its
    // HTTP-01 check cannot reach us yet (DNS still points elsewhere): the order fails with
    // the CA's reason and is retried.
    pebble.clear_txt("_tenantgate.www.shop.test").await;
    pebble.set_txt("_tenantgate.www.shop.test", &token).await;
    let d = wait_domain(&tg, &id, "verification", |d| d["status"] == "active").await;
    assert_eq!(d["errors"], json!([]));
    let d = wait_domain(&tg, &id, "the first order to fail", |d| {
        d["ssl"]["status"] == "failed"
    })
    .await;
    assert!(d["ssl"]["errors"].to_string().contains("127.0.0.2"), "{d}");
    // Routed over plain HTTP meanwhile; the verification token went in the same change.
    tg.wait_backend(host, "shop").await;
    assert_eq!(tg.get(host, path).await.status(), 404);

    // DNS now points here: the retry succeeds.
    pebble.set_a(host, &["127.0.0.1"]).await;
    let d = wait_domain(&tg, &id, "the certificate", |d| {
        d["ssl"]["status"] == "active"
    })
    .await;
    assert_eq!(d["ssl"]["errors"], json!([]));
    assert!(
        d["ssl"]["issuer"]
            .as_str()
            .expect("issuer")
            .contains("Pebble"),
        "{d}"
    );
    assert!(d["ssl"]["not_after"].as_str().is_some(), "{d}");

    // A client trusting only Pebble's root completes a handshake for the name and gets the
    // tenant's page.
    let root = pebble.issuing_root().await;
    let client = tls_client(&tg, &root, host);
    let url = format!(
        "https://{host}:{}/over-tls",
        tg.https.expect("https").port()
    );
    // Proxies apply the committed change within milliseconds of the API showing it.
    let r = wait_for(
        "the ACME certificate to be served",
        Duration::from_secs(5),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.ok() }
        },
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(backend_json(r).await["backend"], "shop");
    let (_, certs) = tg.api("GET", "/v1/certificates", None).await;
    assert!(certs.to_string().contains("www.shop.test"), "{certs}");
    let (_, audit) = tg.api("GET", "/v1/audit", None).await;
    assert!(audit.to_string().contains("certificate.issue"), "{audit}");

    // Challenge paths: nothing but live exact tokens, never the tenant.
    for p in [
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/x",
        "/.well-known/acme-challenge/../../etc/passwd",
        "/.well-known/acme-challenge/%2e%2e/x",
        "/.well-known/tenantgate/../acme-challenge/x",
    ] {
        // Sent raw: an HTTP client library would resolve the dots before sending.
        let answer = raw(
            tg.http,
            format!("GET {p} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 404, "{p}: {answer}");
        assert!(!answer.contains("\"backend\""), "{p} reached the tenant");
    }

    // Another tenant cannot attach it; the answer does not say who holds it.
    let t2id = t2["id"].as_str().expect("id");
    let (s, e) = try_attach(&tg, t2id, host).await;
    assert_eq!(s, 409, "{e}");
    assert!(
        !e.to_string().contains(&tid) && !e.to_string().contains("shop\""),
        "{e}"
    );
    // Nor can the same tenant twice, nor a platform name, nor a wildcard.
    let (s, _) = try_attach(&tg, &tid, host).await;
    assert_eq!(s, 409);
    for bad in [
        "other.platform.test",
        "*.shop.test",
        "10.0.0.1",
        "bad_name.test",
    ] {
        let (s, e) = try_attach(&tg, &tid, bad).await;
        assert_eq!(s, 422, "{bad}: {e}");
    }

    // Listings.
    let (s, l) = tg
        .api("GET", &format!("/v1/tenants/{tid}/domains"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(l["items"].as_array().expect("items").len(), 1);
    let (_, l) = tg.api("GET", "/v1/domains?status=active", None).await;
    assert_eq!(l["items"][0]["id"], id.as_str());
    let (_, l) = tg
        .api("GET", "/v1/domains?status=pending_verification", None)
        .await;
    assert_eq!(l["items"], json!([]));
    let (s, _) = tg.api("GET", "/v1/domains?status=bogus", None).await;
    assert_eq!(s, 400);

    // Detach: route and certificate leave the proxy at once.
    let (s, _) = tg.api("DELETE", &format!("/v1/domains/{id}"), None).await;
    assert_eq!(s, 204);
    tg.wait_status(host, 404).await;
    assert!(
        tls_client(&tg, &root, host).get(&url).send().await.is_err(),
        "the detached domain's certificate is still served"
    );
    let (_, certs) = tg.api("GET", "/v1/certificates", None).await;
    assert!(!certs.to_string().contains("www.shop.test"), "{certs}");
    let (s, _) = tg.api("GET", &format!("/v1/domains/{id}"), None).await;
    assert_eq!(s, 200, "a detached domain stays readable as deleted");
    let (s, _) = tg.api("DELETE", &format!("/v1/domains/{id}"), None).await;
    assert_eq!(s, 404);

    // Re-attaching starts over with a new token.
    let d = attach(&tg, &tid, host).await;
    assert_ne!(d["verification"]["txt_value"], token.as_str());
    assert_eq!(d["status"], "pending_verification");
    drop(pebble);
}

/// A webhook receiver: every accepted POST's signature header and body. The first
/// `refuse` requests are answered 503 (and not recorded).
struct Hooks {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Hooks {
    async fn start(refuse: usize) -> Hooks {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let sink = sink.clone();
                let refused = refused.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some(i) = text.find("\r\n\r\n") {
                            let head = text[..i].to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= i + 4 + len {
                                break (head, text[i + 4..i + 4 + len].to_string());
                            }
                        }
                    };
                    let sig = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-tenantgate-signature:"))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    if refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refuse {
                        let _ = s
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    sink.lock().expect("lock").push((sig, body));
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Hooks { addr, got }
    }

    /// (previous status, status, ssl status) of every event so far, after checking each
    /// signature.
    fn transitions(&self, secret: &str) -> Vec<(String, String, String)> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .map(|(sig, body)| {
                let (t, v1) = sig
                    .split_once(",v1=")
                    .map(|(t, v)| (t.trim_start_matches("t="), v))
                    .expect("signature header");
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                let tag = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
                let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(hex, v1, "bad signature on {body}");
                let e: Value = serde_json::from_str(body).expect("event json");
                (
                    e["previous"]["status"].as_str().unwrap_or("").to_string(),
                    e["domain"]["status"].as_str().expect("status").to_string(),
                    e["domain"]["ssl"]["status"]
                        .as_str()
                        .expect("ssl")
                        .to_string(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_verifies_moves_are_noticed_blocking_works_and_webhooks_are_signed() {
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    // The receiver refuses the first two deliveries: they are retried from the outbox.
    let hooks = Hooks::start(2).await;
    let secret = "webhook-secret-0123456789";
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    let tg = Tenantgate::new()
        .http_port(port)
        .cert(c, k, true)
        .section(PLATFORM_TEST)
        .section(&pebble.config(port, "").replace(
            "[acme]",
            "edge_addresses = [\"127.0.0.1\"]\nmoved_check_seconds = 1\nverify_timeout_seconds = 3\n[acme]",
        ))
        .section(&format!(
            "[webhooks]\nurl = \"http://{}/hooks\"\nsecret = \"{secret}\"\n",
            hooks.addr
        ))
        .start()
        .await;
    let shop = Backend::start("shop").await;
    let t = tg.create_tenant("shop", &[shop.addr]).await;
    let tid = t["id"].as_str().expect("id");
    let t2 = tg.create_tenant("other", &[shop.addr]).await;
    let host = "www.by-http.test";

    // No TXT record at all: the DNS already points here (challtestsrv answers 127.0.0.1), so
    // the HTTP token every proxy serves proves ownership.
    let d = attach(&tg, tid, host).await;
    let id = d["id"].as_str().expect("id").to_owned();
    wait_domain(&tg, &id, "verification over HTTP", |d| {
        d["status"] == "active"
    })
    .await;
    wait_domain(&tg, &id, "the certificate", |d| {
        d["ssl"]["status"] == "active"
    })
    .await;
    let (_, audit) = tg.api("GET", "/v1/audit", None).await;
    assert!(audit.to_string().contains(r#"\"by\":\"http\""#), "{audit}");
    tg.wait_backend(host, "shop").await;

    // The merchant points the name elsewhere: moved, no longer routed or renewed.
    pebble.set_a(host, &["192.0.2.9"]).await;
    let d = wait_domain(&tg, &id, "the move to be noticed", |d| {
        d["status"] == "moved"
    })
    .await;
    assert!(errors(&d).contains("192.0.2.9"), "{d}");
    tg.wait_status(host, 404).await;
    // ...and back.
    pebble.set_a(host, &["127.0.0.1"]).await;
    wait_domain(&tg, &id, "the return to be noticed", |d| {
        d["status"] == "active"
    })
    .await;
    tg.wait_backend(host, "shop").await;

    // An operator blocks it: not routed, and nobody else can take it meanwhile.
    let (s, d) = tg
        .api("POST", &format!("/v1/domains/{id}/block"), None)
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["status"], "blocked");
    tg.wait_status(host, 404).await;
    let t2id = t2["id"].as_str().expect("id");
    let (s, _) = try_attach(&tg, t2id, host).await;
    assert_eq!(s, 409);
    let (s, _) = tg
        .api("POST", &format!("/v1/domains/{id}/refresh"), None)
        .await;
    assert_eq!(s, 409, "a blocked domain is not re-checked");
    let (s, d) = tg
        .api("POST", &format!("/v1/domains/{id}/unblock"), None)
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["status"], "active");
    tg.wait_backend(host, "shop").await;
    let (s, d) = tg
        .api("POST", &format!("/v1/domains/{id}/refresh"), None)
        .await;
    assert_eq!(s, 202, "{d}");

    // A domain that never proves ownership: checks stop after verify_timeout_seconds, with a
    // reason; a refresh starts a new period.
    pebble.set_a("never.test", &["127.0.0.2"]).await;
    let d = attach(&tg, tid, "never.test").await;
    let never = d["id"].as_str().expect("id").to_owned();
    let d = wait_domain(&tg, &never, "verification to give up", |d| {
        errors(d).contains("ownership was not proven within 3 s")
    })
    .await;
    assert_eq!(d["status"], "pending_verification");
    let (s, d) = tg
        .api("POST", &format!("/v1/domains/{never}/refresh"), None)
        .await;
    assert_eq!(s, 202, "{d}");
    wait_domain(&tg, &never, "checks to run again", |d| {
        !errors(d).contains("was not proven")
    })
    .await;

    // Every status change was announced, signed.
    let seen = wait_for("the webhook events", Duration::from_secs(10), || {
        let t = hooks.transitions(secret);
        let has = |from: &str, to: &str| t.iter().any(|(f, s, _)| f == from && s == to);
        let done = has("pending_verification", "active")
            && has("active", "moved")
            && has("moved", "active")
            && has("active", "blocked")
            && has("blocked", "active")
            && t.iter().any(|(_, _, ssl)| ssl == "active");
        async move { done.then_some(t) }
    })
    .await;
    assert!(
        seen.iter()
            .any(|(f, s, _)| f.is_empty() && s == "pending_verification"),
        "{seen:?}"
    );
}

/// A custom domain never takes a name this platform already serves (a static route, exactly
/// or under its wildcard), and a name several tenants claim is proved only by its TXT record:
/// the HTTP token shows no more than that DNS points here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_names_cannot_be_attached_and_contested_names_need_their_txt_record() {
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let evil_backend = Backend::start("evil").await;
    let victim_backend = Backend::start("victim").await;
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    let tg = Tenantgate::new()
        .http_port(port)
        .cert(c, k, true)
        .section(PLATFORM_TEST)
        .section(&pebble.config(port, ""))
        .route(&["shop-a.test"], &[a.addr])
        .route(&["*.shop-b.test"], &[b.addr])
        .start()
        .await;
    let evil = tg.create_tenant("evil", &[evil_backend.addr]).await;
    let evil = evil["id"].as_str().expect("id").to_owned();
    let victim = tg.create_tenant("victim", &[victim_backend.addr]).await;
    let victim = victim["id"].as_str().expect("id").to_owned();
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    let version = routes["version"].as_u64();

    for served in ["shop-a.test", "SHOP-A.test.", "www.shop-b.test"] {
        let (s, e) = try_attach(&tg, &evil, served).await;
        assert_eq!(
            (s, e["error"]["code"].as_str().unwrap_or("")),
            (409, "hostname_served"),
            "{served}: {e}"
        );
    }
    // A platform name of another tenant is the platform's to assign, and taken.
    let (s, _) = try_attach(&tg, &evil, "victim.platform.test").await;
    assert_eq!(s, 422);
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    assert_eq!(routes["version"].as_u64(), version, "nothing changed");
    assert_eq!(
        backend_json(tg.get("shop-a.test", "/").await).await["backend"],
        "a"
    );
    assert_eq!(
        backend_json(tg.get("x.shop-b.test", "/").await).await["backend"],
        "b"
    );

    // Two tenants claim one name whose DNS already points here: the HTTP token would pass
    // for both, so neither gets it by HTTP.
    let host = "contested.test";
    let by_evil = attach(&tg, &evil, host).await;
    let by_victim = attach(&tg, &victim, host).await;
    let evil_id = by_evil["id"].as_str().expect("id").to_owned();
    let victim_id = by_victim["id"].as_str().expect("id").to_owned();
    for id in [&evil_id, &victim_id] {
        let d = wait_domain(&tg, id, "the HTTP token to be refused", |d| {
            errors(d).contains(
                "the HTTP token is not accepted for contested.test: 2 tenants claim the name",
            )
        })
        .await;
        assert_eq!(d["status"], "pending_verification", "{d}");
    }
    tg.wait_status(host, 404).await;
    // The owner publishes the TXT record: theirs, and nobody else's.
    let token = by_victim["verification"]["txt_value"]
        .as_str()
        .expect("token");
    pebble.set_txt(&format!("_tenantgate.{host}"), token).await;
    wait_domain(&tg, &victim_id, "the TXT record to prove it", |d| {
        d["status"] == "active"
    })
    .await;
    tg.wait_backend(host, "victim").await;
    let d = wait_domain(&tg, &evil_id, "the other claim to fail", |d| {
        errors(d).contains("verified by another tenant first")
            || errors(d).contains("not this domain's token")
    })
    .await;
    assert_eq!(d["status"], "pending_verification", "{d}");
    assert_eq!(
        evil_backend.hits(),
        0,
        "the attacker's backend never got a request"
    );
    let (s, e) = try_attach(&tg, &evil, host).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("hostname_taken")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_a_ca_that_stops_rejects_nonces_and_forgets_our_account() {
    let port = free_port();
    // Pebble rejects 30% of nonces: the client retries those.
    let mut pebble = Pebble::start(port, &[("PEBBLE_WFE_NONCEREJECT", "30")]).await;
    let tg = start_edge(port, &pebble, "order_timeout_seconds = 3").await;
    let shop = Backend::start("shop").await;
    let t = tg.create_tenant("shop", &[shop.addr]).await;
    let tid = t["id"].as_str().expect("id");
    let host = "www.patient.test";

    // The CA stops answering before the first order.
    pebble.freeze(true);
    let id = attach_with_txt(&tg, &pebble, tid, host).await;
    let d = wait_domain(&tg, &id, "the stalled order to fail", |d| {
        d["ssl"]["status"] == "failed"
    })
    .await;
    assert_eq!(d["status"], "active", "ownership does not depend on the CA");
    let why = d["ssl"]["errors"].to_string();
    assert!(
        why.contains("did not complete within 3 s") || why.contains("cannot reach the CA"),
        "{d}"
    );
    assert!(why.contains("next attempt at"), "{d}");

    // Back: the next attempt completes.
    pebble.freeze(false);
    let d = wait_domain(&tg, &id, "the certificate after the CA came back", |d| {
        d["ssl"]["status"] == "active"
    })
    .await;
    assert!(
        d["ssl"]["issuer"]
            .as_str()
            .expect("issuer")
            .contains("Pebble"),
        "{d}"
    );
    wait_tls_ok(&tg, &pebble.issuing_root().await, host).await;

    // The CA loses its data, our account with it: the next order is refused for an unknown
    // account, a new account is created, and the retry issues.
    pebble.restart().await;
    let host = "www.after-reset.test";
    let id = attach_with_txt(&tg, &pebble, tid, host).await;
    wait_domain(&tg, &id, "a certificate from the reset CA", |d| {
        d["ssl"]["status"] == "active"
    })
    .await;
    assert!(
        tg.logs().contains("does not know our ACME account"),
        "the account was not re-created"
    );
    wait_tls_ok(&tg, &pebble.issuing_root().await, host).await;
}

/// A TLS connection to `tg` for `host`, trusting `root`; returns it and the leaf's DER.
async fn tls_connect(
    tg: &Running,
    root: &str,
    host: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.expect("root pem")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tg.https.expect("https"))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    (tls, leaf)
}

/// One keep-alive request on `tls`; returns the status line.
async fn request_on(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(format!("GET /again HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                return text.lines().next().unwrap_or("").to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_forced_by_configuration_swaps_the_certificate_without_dropping_connections() {
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    // Renew as soon as issued; the hourly budget stops it after one renewal.
    let tg = start_edge(
        port,
        &pebble,
        "renew_remaining_fraction = 1.0\norders_per_hour = 2",
    )
    .await;
    let shop = Backend::start("shop").await;
    let t = tg.create_tenant("shop", &[shop.addr]).await;
    let tid = t["id"].as_str().expect("id");
    let host = "www.renew.test";
    let d = attach(&tg, tid, host).await;
    let id = d["id"].as_str().expect("id").to_owned();
    wait_domain(&tg, &id, "the first certificate", |d| {
        d["ssl"]["status"] == "active"
    })
    .await;
    let root = pebble.issuing_root().await;
    let (mut old_conn, first) = tls_connect(&tg, &root, host).await;
    assert!(request_on(&mut old_conn, host).await.contains(" 200 "));

    // The renewal replaces the certificate on the proxy...
    let renewed = wait_for(
        "a renewed certificate to be served",
        Duration::from_secs(60),
        || {
            let (tg, root, first) = (&tg, &root, &first);
            async move {
                let (_, leaf) = tls_connect(tg, root, host).await;
                (leaf != *first).then_some(leaf)
            }
        },
    )
    .await;
    assert_ne!(renewed, first);
    let (_, audit) = tg.api("GET", "/v1/audit", None).await;
    assert!(audit.to_string().contains("certificate.renew"), "{audit}");
    // ...while the connection made with the old one keeps working.
    assert!(request_on(&mut old_conn, host).await.contains(" 200 "));
    // The budget (2 orders per hour) is spent: the next renewal waits, saying why.
    let d = wait_domain(&tg, &id, "the budget to hold renewals", |d| {
        d["ssl"]["errors"].to_string().contains("budget")
    })
    .await;
    assert_eq!(d["status"], "active");
    // Only the current certificate is kept.
    let (_, certs) = tg.api("GET", "/v1/certificates", None).await;
    let acme: Vec<&Value> = certs
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["source"] == "acme")
        .collect();
    assert_eq!(acme.len(), 1, "{certs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_nodes_on_one_postgres_place_exactly_one_order() {
    let pg = common::postgres::PgCluster::start().await;
    let url = pg.database("domains").await;
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    let node = |cmd| Tenantgate::fleet_node(cmd, &url).section(&pebble.config(port, ""));
    let a = node("control").start().await;
    let b = node("control").start().await;
    let proxy = node("proxy").http_port(port).cert(c, k, true).start().await;
    let shop = Backend::start("shop").await;
    let t = a.create_tenant("shop", &[shop.addr]).await;
    let tid = t["id"].as_str().expect("id");
    let mut ids = Vec::new();
    for i in 0..4 {
        let host = format!("www.fleet{i}.test");
        let (s, d) = try_attach(&a, tid, &host).await;
        assert_eq!(s, 201, "{d}");
        ids.push(d["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        // Either node may do the work; both see the result.
        wait_domain(&b, id, "the certificate", |d| {
            d["ssl"]["status"] == "active"
        })
        .await;
    }
    let (_, audit) = a.api("GET", "/v1/audit", None).await;
    let events = audit.as_array().expect("audit");
    for id in &ids {
        let count = |action: &str| {
            events
                .iter()
                .filter(|e| e["action"] == action && e["target"] == id.as_str())
                .count()
        };
        assert_eq!(count("certificate.issue"), 1, "{id}: {audit}");
        assert_eq!(count("domain.verify"), 1, "{id}: {audit}");
    }
    let (_, certs) = b.api("GET", "/v1/certificates", None).await;
    assert_eq!(certs.as_array().expect("list").len(), ids.len(), "{certs}");
    // The proxy serves them all; one detached through the other node leaves it at once.
    let root = pebble.issuing_root().await;
    for i in 0..4 {
        wait_tls_ok(&proxy, &root, &format!("www.fleet{i}.test")).await;
    }
    let (s, _) = b
        .api("DELETE", &format!("/v1/domains/{}", ids[0]), None)
        .await;
    assert_eq!(s, 204);
    proxy.wait_status("www.fleet0.test", 404).await;
    let client = tls_client(&proxy, &root, "www.fleet0.test");
    let url = format!(
        "https://www.fleet0.test:{}/",
        proxy.https.expect("https").port()
    );
    wait_for(
        "the detached certificate to leave the proxy",
        Duration::from_secs(10),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_err().then_some(()) }
        },
    )
    .await;
    proxy.wait_backend("www.fleet1.test", "shop").await;
}
