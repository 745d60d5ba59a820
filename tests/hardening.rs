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
    let logs = wait_for(
        "the refusals in the log",
        Duration::from_secs(5),
        || async {
            let logs = tg.logs();
            (logs.contains("\"rule\":\"own_listener\"") && logs.contains("\"rule\":\"metadata\""))
                .then_some(logs)
        },
    )
    .await;
    assert!(logs.contains("t_loop"), "{logs}");
    // One request each: nothing was forwarded back into the proxy.
    let access = logs
        .lines()
        .filter(|l| l.contains("tenantgate::access"))
        .count();
    assert_eq!(access, 4, "{logs}");
}
