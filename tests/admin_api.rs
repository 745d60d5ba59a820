//! The admin API of a single node (`tenantgate serve`, embedded store): authentication,
//! every error status, the OpenAPI document, and changes reaching the proxy without a reload.

mod common;

use common::*;
use serde_json::json;

fn platform() -> Tenantgate {
    Tenantgate::new().section(PLATFORM_TEST)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_the_token_and_errors_are_json() {
    let tg = platform().start().await;
    let admin = tg.admin;
    // No token, a wrong token, a malformed header: 401 with a JSON error and a challenge.
    for token in [None, Some("wrong-token-but-long-enough")] {
        let (s, body) = api_call(admin, token, "GET", "/v1/tenants", None).await;
        assert_eq!(s, 401);
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let raw = raw(
        admin,
        b"GET /v1/routes HTTP/1.1\r\nHost: a\r\nAuthorization: Basic Zm9vOmJhcg==\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 401);
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );

    // The OpenAPI document is public; every operation it lists is served (401 without a
    // token, never 404/405), and every route the server has is in it.
    let (s, doc) = api_call(admin, None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            let concrete = path.replace("{id}", "t_0000000000000000");
            let (s, _) = api_call(admin, None, &method.to_uppercase(), &concrete, None).await;
            assert_eq!(s, 401, "{method} {path} is documented but answered {s}");
            operations += 1;
        }
    }
    for (method, path) in [
        ("post", "/v1/tenants"),
        ("get", "/v1/tenants"),
        ("get", "/v1/tenants/{id}"),
        ("patch", "/v1/tenants/{id}"),
        ("delete", "/v1/tenants/{id}"),
        ("put", "/v1/tenants/{id}/upstreams"),
        ("get", "/v1/tenants/{id}/limits"),
        ("put", "/v1/tenants/{id}/limits"),
        ("get", "/v1/nodes"),
        ("post", "/v1/tenants/{id}/suspend"),
        ("post", "/v1/tenants/{id}/resume"),
        ("post", "/v1/tenants/{id}/redeploy"),
        ("post", "/v1/tenants/{id}/scale"),
        ("post", "/v1/certificates"),
        ("get", "/v1/certificates"),
        ("delete", "/v1/certificates/{id}"),
        ("get", "/v1/routes"),
        ("post", "/v1/tenants/{id}/domains"),
        ("get", "/v1/tenants/{id}/domains"),
        ("get", "/v1/domains"),
        ("get", "/v1/domains/{id}"),
        ("delete", "/v1/domains/{id}"),
        ("post", "/v1/domains/{id}/refresh"),
        ("post", "/v1/domains/{id}/block"),
        ("post", "/v1/domains/{id}/unblock"),
    ] {
        assert!(
            paths[path].get(method).is_some(),
            "{method} {path} missing from the document"
        );
    }
    assert_eq!(
        operations, 26,
        "the document lists operations the test does not know"
    );
    // The listing's filters are query parameters, as the server reads them.
    for p in doc["paths"]["/v1/tenants"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
    {
        assert_eq!(p["in"], "query", "{p}");
    }
    // Every schema reference resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().expect("name");
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
    // Documented request bodies are the ones enforced: unknown fields are refused.
    assert!(doc["components"]["schemas"]["CreateTenant"]["required"]
        .as_array()
        .expect("required")
        .contains(&json!("slug")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_error_and_changes_nothing() {
    let shop = Backend::start("shop").await;
    let tg = platform().start().await;
    let up = shop.addr.to_string();
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "shop", "name": "Shop", "upstreams": [up]})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let (_, routes) = tg.api("GET", "/v1/routes", None).await;
    let version = routes["version"].as_u64().expect("version");

    let cases: Vec<(&str, &str, serde_json::Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "shop", "name": "Again", "upstreams": [up]}),
            409,
            "conflict",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "Bad_Slug", "name": "x", "upstreams": [up]}),
            422,
            "invalid_slug",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "www", "name": "x", "upstreams": [up]}),
            422,
            "reserved_slug",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "meta", "name": "x", "upstreams": ["169.254.169.254:80"]}),
            422,
            "forbidden_upstream",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "named", "name": "x", "upstreams": ["backend.internal:80"]}),
            422,
            "invalid_upstream",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "none", "name": "x", "upstreams": []}),
            422,
            "invalid_upstreams",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "extra", "name": "x", "upstreams": [up], "owner": "me"}),
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "noname", "upstreams": [up]}),
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/tenants",
            json!({"slug": "ctl", "name": "a\u{7}b", "upstreams": [up]}),
            422,
            "invalid_name",
        ),
        (
            "PUT",
            "/v1/tenants/t_missing/upstreams",
            json!({"upstreams": [up]}),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/tenants/t_missing/suspend",
            json!(null),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/certificates",
            json!({"chain_pem": "nope", "key_pem": "nope"}),
            422,
            "invalid_certificate",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (s, b) = tg.api(method, path, Some(body.clone())).await;
        assert_eq!(
            (s, b["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{method} {path} {body}: {b}"
        );
        assert!(!b["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    // The 409 does not say who owns the slug.
    let (_, b) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "shop", "name": "Again", "upstreams": [up]})),
        )
        .await;
    assert!(!b.to_string().contains(t["id"].as_str().expect("id")));

    // Malformed JSON, wrong content type, bad query, oversized body, unknown tenant.
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", tg.admin);
    let r = http
        .post(url("/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"slug\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["error"]["code"],
        "malformed_json"
    );
    let r = http
        .post(url("/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);
    let (s, b) = tg.api("GET", "/v1/tenants?status=dozing", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    for q in ["limit=0", "limit=501", "limit=x", "owner=me"] {
        let (s, b) = tg.api("GET", &format!("/v1/tenants?{q}"), None).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{q}"
        );
    }
    let big = "x".repeat(2 * 1024 * 1024);
    let r = http
        .post(url("/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    let (s, _) = tg.api("GET", "/v1/tenants/t_missing", None).await;
    assert_eq!(s, 404);

    // Nothing above changed the table.
    let (_, after) = tg.api("GET", "/v1/routes", None).await;
    assert_eq!(after["version"].as_u64(), Some(version));
    assert_eq!(after["routes"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_proxy_without_a_reload() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let tg = platform().start().await;
    tg.wait_status("shop.platform.test", 404).await;

    // Create: routed at once.
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "shop", "name": "Shop", "upstreams": [a.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["hostnames"], json!(["shop.platform.test"]));
    let id = t["id"].as_str().expect("id").to_string();
    let body = tg.wait_status("shop.platform.test", 200).await;
    assert!(body.contains("\"backend\":\"a\""), "{body}");

    // New upstreams: the next requests go to b only.
    tg.set_upstreams(&id, &[b.addr]).await;
    tg.wait_backend("shop.platform.test", "b").await;
    let hits_a = a.hits();
    for _ in 0..5 {
        assert_eq!(
            backend_json(tg.get("shop.platform.test", "/").await).await["backend"],
            "b"
        );
    }
    assert_eq!(a.hits(), hits_a, "the old upstream still got requests");

    // Suspend: our 503 page, the backend is not contacted. Resume: served again.
    let (s, t) = tg
        .api("POST", &format!("/v1/tenants/{id}/suspend"), None)
        .await;
    assert_eq!((s, t["status"].as_str()), (200, Some("suspended")));
    let page = tg.wait_status("shop.platform.test", 503).await;
    assert!(page.contains("503"), "{page}");
    let hits_b = b.hits();
    tg.get("shop.platform.test", "/").await;
    assert_eq!(b.hits(), hits_b);
    let (s, _) = tg
        .api("POST", &format!("/v1/tenants/{id}/resume"), None)
        .await;
    assert_eq!(s, 200);
    tg.wait_status("shop.platform.test", 200).await;

    // Rename is visible in the API; listing filters by hostname.
    let (s, t) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(json!({"name": "Shop Renamed"})),
        )
        .await;
    assert_eq!((s, t["name"].as_str()), (200, Some("Shop Renamed")));
    let (_, page) = tg
        .api("GET", "/v1/tenants?hostname=SHOP.platform.test", None)
        .await;
    assert_eq!(page["items"][0]["id"].as_str(), Some(id.as_str()));

    // Delete: 404 from the proxy at once, and the audit trail has every step.
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(s, 204);
    tg.wait_status("shop.platform.test", 404).await;
    let (_, events) = tg.api("GET", "/v1/audit", None).await;
    let actions: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.delete",
            "tenant.rename",
            "tenant.resume",
            "tenant.suspend",
            "tenant.upstreams",
            "tenant.create"
        ]
    );
    let ready = admin_get(tg.admin, "/readyz").await.expect("readyz");
    assert!(ready.contains("\"source\":\"store\""), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_certificates_are_served_by_sni_and_removed_live() {
    let shop = Backend::start("shop").await;
    let ca = TestCa::new();
    // A static default certificate keeps the TLS listener on; the tenant's comes from the API.
    let (dc, dk) = ca.issue(&["platform.test"]);
    let tg = platform().cert(dc, dk, false).start().await;
    let (s, _) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "shop", "name": "Shop", "upstreams": [shop.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201);
    let client = tg.https_client(&ca, &["shop.platform.test"]);
    let url = format!(
        "https://shop.platform.test:{}/",
        tg.https.expect("https").port()
    );
    assert!(
        client.get(&url).send().await.is_err(),
        "no certificate for the tenant yet"
    );

    let (chain, key) = ca.issue(&["*.platform.test"]);
    let (s, c) = tg
        .api(
            "POST",
            "/v1/certificates",
            Some(json!({"chain_pem": chain, "key_pem": key})),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["names"], json!(["*.platform.test"]));
    assert!(!c.to_string().contains("PRIVATE KEY"));
    let body = wait_for(
        "the uploaded certificate to be served",
        std::time::Duration::from_secs(10),
        || async { client.get(&url).send().await.ok()?.text().await.ok() },
    )
    .await;
    assert!(body.contains("\"backend\":\"shop\""), "{body}");
    let (_, list) = tg.api("GET", "/v1/certificates", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(list[0]["issuer"]
        .as_str()
        .expect("issuer")
        .contains("tenantgate test CA"));

    // The key is stored sealed: the database file never holds it in clear.
    let db = std::fs::read(tg.dir.path().join("data/tenantgate.db")).unwrap_or_default();
    let wal = std::fs::read(tg.dir.path().join("data/tenantgate.db-wal")).unwrap_or_default();
    let needle = key.lines().nth(1).expect("key line").as_bytes();
    for file in [&db, &wal] {
        assert!(
            !file.windows(needle.len()).any(|w| w == needle),
            "private key stored in clear"
        );
    }

    let id = c["id"].as_str().expect("id");
    let (s, _) = tg
        .api("DELETE", &format!("/v1/certificates/{id}"), None)
        .await;
    assert_eq!(s, 204);
    wait_for(
        "the certificate to be withdrawn",
        std::time::Duration::from_secs(10),
        || async {
            // A fresh client: no resumed session.
            let c = tg.https_client(&ca, &["shop.platform.test"]);
            c.get(&url).send().await.is_err().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_routes_win_over_static_ones_and_survive_a_restart() {
    let static_backend = Backend::start("static").await;
    let stored_backend = Backend::start("stored").await;
    let mut tg = platform()
        .route(
            &["shop.platform.test", "other.platform.test"],
            &[static_backend.addr],
        )
        .start()
        .await;
    assert_eq!(
        backend_json(tg.get("shop.platform.test", "/").await).await["backend"],
        "static"
    );
    let (s, _) = tg
        .api("POST", "/v1/tenants", Some(json!({"slug": "shop", "name": "Shop", "upstreams": [stored_backend.addr.to_string()]})))
        .await;
    assert_eq!(s, 201);
    tg.wait_backend("shop.platform.test", "stored").await;
    // The static route's other hostname is untouched.
    assert_eq!(
        backend_json(tg.get("other.platform.test", "/").await).await["backend"],
        "static"
    );

    // check-config names the overlap.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["check-config", "--config"])
        .arg(&tg.config)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "routes[0].hostnames[0]: \"shop.platform.test\" is also stored for tenant t_"
        ) && text.contains("the stored route wins"),
        "{text}"
    );

    // Stop and start again: the stored tenant is still routed (acknowledged writes are kept).
    tg.stop();
    let child = tg.spawn(false);
    tg.replace_child(child);
    tg.wait_ready().await;
    tg.wait_status("shop.platform.test", 200).await;
    assert_eq!(
        backend_json(tg.get("shop.platform.test", "/").await).await["backend"],
        "stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_cli_drives_the_api() {
    let shop = Backend::start("shop").await;
    let tg = platform().start().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .arg("tenants")
            .args(args)
            .arg("--config")
            .arg(&tg.config)
            .output()
            .expect("tenants cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let up = shop.addr.to_string();
    let (ok, out, err) = cli(&[
        "create",
        "cli-shop",
        "--name",
        "CLI Shop",
        "--upstream",
        &up,
    ]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    tg.wait_status("cli-shop.platform.test", 200).await;
    let (ok, out, _) = cli(&["list"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("cli-shop"));
    let (ok, _, err) = cli(&["create", "cli-shop", "--name", "Again", "--upstream", &up]);
    assert!(!ok);
    assert!(err.contains("already taken"), "{err}");
    let id = created["id"].as_str().expect("id");
    let (ok, _, err) = cli(&["suspend", id]);
    assert!(ok, "{err}");
    tg.wait_status("cli-shop.platform.test", 503).await;
    let (ok, out, err) = cli(&["resume", id]);
    assert!(ok && out.contains("\"active\""), "{out}{err}");
    let (ok, out, _) = cli(&["show", id]);
    assert!(ok && out.contains("cli-shop"), "{out}");
    // Redeploy and scale are for provisioned tenants.
    let (ok, _, err) = cli(&["redeploy", id]);
    assert!(
        !ok && err.contains("not provisioned from a blueprint"),
        "{err}"
    );
    let (ok, _, err) = cli(&["scale", id, "--component", "web", "--replicas", "2"]);
    assert!(
        !ok && err.contains("not provisioned from a blueprint"),
        "{err}"
    );
    // An id that is not one path segment never reaches the API (it would address another
    // resource): the tenant is still there afterwards.
    let (ok, _, err) = cli(&["delete", &format!("{id}/../{id}")]);
    assert!(!ok && err.contains("is not a tenant id"), "{err}");
    let (ok, out, _) = cli(&["show", id]);
    assert!(ok && out.contains("cli-shop"), "{out}");
    let (ok, _, err) = cli(&["delete", id]);
    assert!(ok, "{err}");
    tg.wait_status("cli-shop.platform.test", 404).await;
}
