//! Custom domains end to end against a real ACME CA (Pebble) and DNS server
//! (pebble-challtestsrv): attach, ownership checks and their failures, issuance, serving
//! over TLS, renewal, "moved" detection, detach, and a fleet of two control nodes.

mod common;

use std::time::Duration;

use common::pebble::Pebble;
use common::*;
use serde_json::{json, Value};

const PLATFORM: &str = "[platform]\ndomain = \"platform.test\"\n";

async fn start_edge(http_port: u16, pebble: &Pebble, extra: &str) -> Running {
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    Tenantgate::new()
        .http_port(http_port)
        .cert(c, k, true)
        .section(PLATFORM)
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

    let (s, d) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{tid}/domains"),
            Some(json!({"hostname": "WWW.Shop.test."})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
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

    // Every proxy answers the HTTP token already (it is how a merchant whose DNS points
    // here proves ownership), but routes nothing to the tenant yet.
    let path = http_url.trim_start_matches("http://www.shop.test");
    let r = tg.get(host, path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), token);
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
    // Routed over plain HTTP meanwhile; the verification token is gone.
    let b = backend_json(tg.get(host, "/hello").await).await;
    assert_eq!(b["backend"], "shop");
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
    let (s, e) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{t2id}/domains"),
            Some(json!({"hostname": host})),
        )
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(
        !e.to_string().contains(&tid) && !e.to_string().contains("shop\""),
        "{e}"
    );
    // Nor can the same tenant twice, nor a platform name, nor a wildcard.
    let (s, _) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{tid}/domains"),
            Some(json!({"hostname": host})),
        )
        .await;
    assert_eq!(s, 409);
    for bad in [
        "other.platform.test",
        "*.shop.test",
        "10.0.0.1",
        "bad_name.test",
    ] {
        let (s, e) = tg
            .api(
                "POST",
                &format!("/v1/tenants/{tid}/domains"),
                Some(json!({"hostname": bad})),
            )
            .await;
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
    let (s, d) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{tid}/domains"),
            Some(json!({"hostname": host})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_ne!(d["verification"]["txt_value"], token.as_str());
    assert_eq!(d["status"], "pending_verification");
    drop(pebble);
}
