//! A fleet on one PostgreSQL: `tenantgate control` (admin API) and two `tenantgate proxy`
//! nodes following the store through LISTEN/NOTIFY, each with a last-known-good snapshot.

mod common;

use std::time::Duration;

use common::postgres::PgCluster;
use common::*;
use serde_json::json;

struct Fleet {
    pg: PgCluster,
    db: String,
    control: Running,
    proxies: Vec<Running>,
}

async fn fleet(db: &str) -> Fleet {
    let pg = PgCluster::start().await;
    let url = pg.database(db).await;
    let node = |cmd| Tenantgate::fleet_node(cmd, &url);
    let control = node("control").start().await;
    let a = node("proxy").start().await;
    let b = node("proxy").start().await;
    Fleet {
        pg,
        db: db.to_string(),
        control,
        proxies: vec![a, b],
    }
}

impl Fleet {
    async fn create(&self, slug: &str, backend: &Backend) -> String {
        let t = self.control.create_tenant(slug, &[backend.addr]).await;
        t["id"].as_str().expect("id").to_string()
    }

    /// Every proxy answers `host` from `backend` (by name), or with `status` when `None`.
    async fn everywhere(&self, host: &str, backend: Option<&str>, status: u16) {
        for p in &self.proxies {
            match backend {
                Some(name) => p.wait_backend(host, name).await,
                None => {
                    p.wait_status(host, status).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_delete_reach_every_proxy() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let f = fleet("propagation").await;
    let id = f.create("shop", &a).await;
    f.everywhere("shop.platform.test", Some("a"), 200).await;
    f.control.set_upstreams(&id, &[b.addr]).await;
    f.everywhere("shop.platform.test", Some("b"), 200).await;
    let (s, _) = f
        .control
        .api("POST", &format!("/v1/tenants/{id}/suspend"), None)
        .await;
    assert_eq!(s, 200);
    f.everywhere("shop.platform.test", None, 503).await;
    let (s, _) = f
        .control
        .api("DELETE", &format!("/v1/tenants/{id}"), None)
        .await;
    assert_eq!(s, 204);
    f.everywhere("shop.platform.test", None, 404).await;
    for p in &f.proxies {
        let ready = admin_get(p.admin, "/readyz").await.expect("readyz");
        assert!(ready.contains("\"source\":\"store\""), "{ready}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_through_a_database_outage_and_catch_up() {
    let shop = Backend::start("shop").await;
    let mut f = fleet("outage").await;
    let keep = f.create("keep", &shop).await;
    let gone = f.create("gone", &shop).await;
    f.everywhere("keep.platform.test", Some("shop"), 200).await;
    f.everywhere("gone.platform.test", Some("shop"), 200).await;

    f.pg.kill();
    // The control plane refuses writes clearly and changes nothing.
    let (s, e) = f
        .control
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "late", "name": "late", "upstreams": [shop.addr.to_string()]})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{e}"
    );
    // Proxies keep serving the table they have, and say where it comes from.
    for p in &f.proxies {
        wait_for(
            "the proxy to notice the outage",
            Duration::from_secs(15),
            || async {
                let r = admin_get(p.admin, "/readyz").await?;
                r.contains("\"source\":\"snapshot\"").then_some(())
            },
        )
        .await;
        assert_eq!(
            backend_json(p.get("keep.platform.test", "/").await).await["backend"],
            "shop"
        );
    }
    // A proxy restarted while the database is down boots from its snapshot. The file is
    // written behind the served state: crash the proxy only once it holds what is served.
    let restarted = &mut f.proxies[0];
    wait_for(
        "the snapshot file to hold the served version",
        Duration::from_secs(10),
        || async {
            let r: serde_json::Value =
                serde_json::from_str(&admin_get(restarted.admin, "/readyz").await?).ok()?;
            (r["snapshot_version"] == r["version"]).then_some(())
        },
    )
    .await;
    restarted.stop();
    let child = restarted.spawn(false);
    restarted.replace_child(child);
    restarted.wait_ready().await;
    assert_eq!(
        backend_json(restarted.get("keep.platform.test", "/").await).await["backend"],
        "shop"
    );
    assert_eq!(
        backend_json(restarted.get("gone.platform.test", "/").await).await["backend"],
        "shop"
    );

    // The database returns: both proxies catch up, deletions included.
    f.pg.resume().await;
    wait_for(
        "the control plane to reach the database",
        Duration::from_secs(20),
        || async {
            let (s, _) = f
                .control
                .api("DELETE", &format!("/v1/tenants/{gone}"), None)
                .await;
            (s == 204).then_some(())
        },
    )
    .await;
    let late = f.create("late", &shop).await;
    wait_for(
        "control to be ready again",
        Duration::from_secs(10),
        || async { admin_get(f.control.admin, "/readyz").await },
    )
    .await;
    f.everywhere("gone.platform.test", None, 404).await;
    f.everywhere("late.platform.test", Some("shop"), 200).await;
    f.everywhere("keep.platform.test", Some("shop"), 200).await;
    for p in &f.proxies {
        wait_for(
            "the proxy to follow the store again",
            Duration::from_secs(15),
            || async {
                let r = admin_get(p.admin, "/readyz").await?;
                r.contains("\"source\":\"store\"").then_some(())
            },
        )
        .await;
    }
    assert!(!keep.is_empty() && !late.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listen_connection_resynchronises() {
    let shop = Backend::start("shop").await;
    let f = fleet("terminate").await;
    f.create("first", &shop).await;
    f.everywhere("first.platform.test", Some("shop"), 200).await;
    let killed = f
        .pg
        .execute(
            &f.db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tenantgate-listener'",
        )
        .await;
    assert_eq!(killed.len(), 2, "one listener per proxy");
    // A change committed right after: NOTIFY has nobody to reach on the killed connections.
    f.create("second", &shop).await;
    f.everywhere("second.platform.test", Some("shop"), 200)
        .await;
    for p in &f.proxies {
        wait_for("the listener to come back", Duration::from_secs(15), || async {
            let rows = f
                .pg
                .execute(
                    &f.db,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantgate-listener'",
                )
                .await;
            (rows[0][0] == "2").then_some(())
        })
        .await;
        assert!(p.logs().contains("resynchronising"), "no resync logged");
    }
    // And notifications flow again.
    f.create("third", &shop).await;
    f.everywhere("third.platform.test", Some("shop"), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_on_postgresql_follows_writes_from_other_nodes() {
    let shop = Backend::start("shop").await;
    let pg = PgCluster::start().await;
    let url = pg.database("shared").await;
    let node = |cmd| Tenantgate::fleet_node(cmd, &url);
    let serve = node("serve").start().await;
    let control = node("control").start().await;
    // Its own write, and one made through another node of the same store.
    serve.create_tenant("own", &[shop.addr]).await;
    control.create_tenant("other", &[shop.addr]).await;
    serve.wait_backend("own.platform.test", "shop").await;
    serve.wait_backend("other.platform.test", "shop").await;
    let ready = admin_get(serve.admin, "/readyz").await.expect("readyz");
    assert!(ready.contains("\"stored_routes\":2"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_does_not_keep_a_proxy_down() {
    let shop = Backend::start("shop").await;
    let pg = PgCluster::start().await;
    let url = pg.database("damaged").await;
    let node = |cmd| Tenantgate::fleet_node(cmd, &url);
    let control = node("control").start().await;
    control.create_tenant("shop", &[shop.addr]).await;
    // A torn snapshot file.
    let proxy = node("proxy")
        .start_with_snapshot(b"{\"version\": 3, \"rou")
        .await;
    proxy.wait_backend("shop.platform.test", "shop").await;
    assert!(
        proxy
            .logs()
            .contains("ignoring the last-known-good snapshot"),
        "the damaged file is reported"
    );
}

/// Every node registers itself (`GET /v1/nodes`), and with `fleet_share = true` each proxy
/// enforces its share of a tenant's limits: the burst of 10 becomes 5 on each of two proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_register_and_share_a_tenants_limits() {
    let shop = Backend::start("shop").await;
    let pg = PgCluster::start().await;
    let url = pg.database("share").await;
    let control = Tenantgate::fleet_node("control", &url).start().await;
    let proxy = || {
        Tenantgate::fleet_node("proxy", &url)
            .proxy("fleet_share = true")
            .start()
    };
    let (a, _b) = (proxy().await, proxy().await);
    let t = control.create_tenant("shop", &[shop.addr]).await;
    let id = t["id"].as_str().expect("id");
    let (s, _) = control
        .api(
            "PUT",
            &format!("/v1/tenants/{id}/limits"),
            Some(json!({"requests_per_second": 10, "burst": 10})),
        )
        .await;
    assert_eq!(s, 200);
    wait_for("three live nodes", Duration::from_secs(20), || async {
        let (_, nodes) = control.api("GET", "/v1/nodes", None).await;
        let nodes = nodes.as_array()?.clone();
        let live = |role: &str| {
            nodes
                .iter()
                .filter(|n| n["role"] == role && n["live"] == true)
                .count()
        };
        (live("proxy") == 2 && live("control") == 1).then_some(())
    })
    .await;
    let host = "shop.platform.test";
    a.wait_backend(host, "shop").await;
    wait_for(
        "proxy a to enforce its half",
        Duration::from_secs(20),
        || async {
            // Let the bucket refill, then empty it at once.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let mut passed = 0;
            for _ in 0..8 {
                passed += usize::from(a.get(host, "/").await.status() == 200);
            }
            (passed == 5).then_some(())
        },
    )
    .await;
}
