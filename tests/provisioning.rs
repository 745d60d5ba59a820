//! Tenant provisioning end to end, on the real Docker Engine and a real PostgreSQL: one API
//! call gives a tenant its schema and role, its network and container, a health-checked
//! route, and `https://<slug>.platform.test` through tenantgate shows that tenant's page and
//! the products in its own schema. Then: isolation between two tenants, a removed container
//! brought back by the reconciler, suspend and resume, scaling out and in, a blue/green
//! redeploy under load with zero failed requests, delete removing everything, a failure mid-provisioning rolled
//! back completely, provisioning cut off by a crash of control finished after its restart,
//! and 503 with nothing created when the engine cannot be reached.
//! Fails (never skips) when Docker or PostgreSQL cannot start.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::docker::{demo_image, docker};
use common::postgres::PgCluster;
use common::*;

/// The image the shipped `demo-storefront` blueprint names.
const IMAGE: &str = "tenantgate/demo-storefront:latest";

async fn start(pg: &PgCluster, blueprints: &str, ca: &TestCa) -> Running {
    Tenantgate::provisioning(
        ca,
        &pg.url("tenants"),
        blueprints,
        "reconcile_seconds = 1\ndrain_seconds = 1\n",
    )
    .start()
    .await
}

/// Wait until tenant `id` leaves `provisioning`; returns it.
async fn settled(tg: &Running, id: &str) -> serde_json::Value {
    wait_for(
        &format!("tenant {id} to finish provisioning"),
        Duration::from_secs(90),
        || async {
            let (s, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
            // The "live" event is written right after the route is published.
            let done = match t["status"].as_str() {
                Some("provisioning") => false,
                Some("active") => t["events"].to_string().contains("live: "),
                _ => true,
            };
            (s == 200 && done).then_some(t)
        },
    )
    .await
}

async fn create(
    tg: &Running,
    slug: &str,
    name: &str,
    blueprint: &str,
    theme: Option<&str>,
) -> String {
    let mut body = serde_json::json!({"slug": slug, "name": name, "blueprint": blueprint});
    if let Some(t) = theme {
        body["theme"] = t.into();
    }
    let (s, t) = tg.api("POST", "/v1/tenants", Some(body)).await;
    assert_eq!(s, 202, "{t}");
    assert_eq!(t["status"], "provisioning", "{t}");
    assert!(t["upstreams"].as_array().is_some_and(Vec::is_empty), "{t}");
    t["id"].as_str().expect("id").to_owned()
}

/// Containers of tenant `id` as `name running` lines.
fn containers(id: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=tenantgate.tenant={id}"),
        "--format",
        "{{.Names}} {{.State}}",
    ]);
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn networks(id: &str) -> Vec<String> {
    docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label=tenantgate.tenant={id}"),
        "--format",
        "{{.Name}}",
    ])
    .lines()
    .map(str::to_owned)
    .filter(|l| !l.is_empty())
    .collect()
}

async fn exists(pg: &PgCluster, sql: &str) -> bool {
    !pg.execute("tenants", sql).await.is_empty()
}

async fn page(client: &reqwest::Client, host: &str) -> Option<(u16, String)> {
    let r = client.get(format!("https://{host}/")).send().await.ok()?;
    let s = r.status().as_u16();
    Some((s, r.text().await.ok()?))
}

async fn wait_page(client: &reqwest::Client, host: &str, needle: &str) -> String {
    wait_for(
        &format!("{host} to show {needle:?}"),
        Duration::from_secs(60),
        || async {
            let (s, body) = page(client, host).await?;
            (s == 200 && body.contains(needle)).then_some(body)
        },
    )
    .await
}

/// The page once `host` answers `status`: a committed change reaches the proxy within
/// milliseconds, not before the API answers, so a check right after a call waits briefly.
async fn wait_status(client: &reqwest::Client, host: &str, status: u16) -> String {
    wait_for(
        &format!("{host} to answer {status}"),
        Duration::from_secs(5),
        || async {
            let (s, body) = page(client, host).await?;
            (s == status).then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_goes_live_from_one_api_call_and_lives_its_whole_life() {
    demo_image(IMAGE);
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let tg = start(&pg, SHIPPED_BLUEPRINTS, &ca).await;
    let client = tg.https_client(&ca, &["alpha.platform.test", "beta.platform.test"]);

    // The magic flow: one call each, 202 at once, active within seconds.
    let alpha = create(
        &tg,
        "alpha",
        "Alpha Outfitters",
        "demo-storefront",
        Some("sunset"),
    )
    .await;
    let beta = create(&tg, "beta", "Beta Electronics", "demo-storefront", None).await;
    for id in [&alpha, &beta] {
        let t = settled(&tg, id).await;
        assert_eq!(t["status"], "active", "{t}\n{}", tg.logs());
        assert_eq!(t["generation"], 1, "{t}");
        assert_eq!(t["upstreams"].as_array().map(Vec::len), Some(1), "{t}");
        let events: Vec<String> = t["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect();
        for step in [
            "database: schema and role",
            "network created",
            "started",
            "healthy",
            "live",
        ] {
            assert!(
                events.iter().any(|e| e.contains(step)),
                "no {step:?} in {events:?}"
            );
        }
        let joined = events.join("\n");
        assert!(
            !joined.contains("postgres://"),
            "events must not show credentials: {joined}"
        );
    }
    assert_eq!(settled(&tg, &beta).await["theme"], "ocean");

    // Each hostname shows its own tenant: name, theme and products from its own schema.
    let a = wait_page(&client, "alpha.platform.test", "Alpha Outfitters").await;
    assert!(
        a.contains("Theme: sunset") && a.contains("Linen Shirt"),
        "{a}"
    );
    let b = wait_page(&client, "beta.platform.test", "Beta Electronics").await;
    assert!(
        b.contains("Theme: ocean") && b.contains("Headphones"),
        "{b}"
    );
    assert!(!b.contains("Alpha") && !a.contains("Beta"));
    // A product written to alpha's schema shows on alpha's page only.
    pg.execute(
        "tenants",
        "INSERT INTO tg_alpha.products (position, name, price) VALUES (99, 'Limited Poncho', '77.00')",
    )
    .await;
    wait_page(&client, "alpha.platform.test", "Limited Poncho").await;
    let (_, b) = page(&client, "beta.platform.test").await.expect("beta");
    assert!(!b.contains("Limited Poncho"), "{b}");
    // Each tenant's network has a small subnet of the tenant network pool.
    let subnet = docker(&[
        "network",
        "inspect",
        &networks(&alpha)[0],
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
    ]);
    assert!(
        subnet.starts_with("10.213.") && subnet.ends_with("/27"),
        "{subnet}"
    );
    // Containers: labelled, one per tenant, published on loopback only.
    let ports = docker(&[
        "ps",
        "--filter",
        &format!("label=tenantgate.tenant={alpha}"),
        "--format",
        "{{.Ports}}",
    ]);
    assert!(ports.starts_with("127.0.0.1:"), "{ports}");
    assert!(!ports.contains("0.0.0.0"), "{ports}");

    // A container removed behind control's back is created again by the reconciler, and
    // the route follows it to its new port.
    let before = containers(&alpha);
    assert_eq!(before.len(), 1, "{before:?}");
    let name = before[0].split(' ').next().expect("name").to_owned();
    docker(&["rm", "-f", &name]);
    wait_for(
        "the reconciler to recreate alpha's container",
        Duration::from_secs(60),
        || async {
            let c = containers(&alpha);
            (c.len() == 1 && c[0].ends_with("running")).then_some(())
        },
    )
    .await;
    wait_page(&client, "alpha.platform.test", "Limited Poncho").await;
    // A container stopped behind control's back is started again.
    docker(&["stop", "-t", "1", &name]);
    wait_page(&client, "alpha.platform.test", "Limited Poncho").await;
    // What an engine restart does to it (restarted by its policy, maybe on another port):
    // the route follows.
    docker(&["restart", "-t", "1", &name]);
    wait_page(&client, "alpha.platform.test", "Limited Poncho").await;

    // Suspend: our 503 page as soon as the change reaches the proxy (the API answers once
    // it is committed; the proxy applies it milliseconds later), containers stopped; resume:
    // served again.
    let (s, t) = tg
        .api("POST", &format!("/v1/tenants/{alpha}/suspend"), None)
        .await;
    assert_eq!(s, 200, "{t}");
    let body = wait_status(&client, "alpha.platform.test", 503).await;
    assert!(!body.contains("Alpha Outfitters"), "{body}");
    wait_for(
        "alpha's containers to stop",
        Duration::from_secs(30),
        || async {
            containers(&alpha)
                .iter()
                .all(|c| !c.ends_with("running"))
                .then_some(())
        },
    )
    .await;
    let (s, t) = tg
        .api("POST", &format!("/v1/tenants/{alpha}/resume"), None)
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["status"], "active");
    let body = wait_status(&client, "alpha.platform.test", 200).await;
    assert!(body.contains("Limited Poncho"), "{body}");

    // Scale out: three healthy containers behind the route.
    let (s, t) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{alpha}/scale"),
            Some(serde_json::json!({"component": "web", "replicas": 3})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["upstreams"].as_array().map(Vec::len), Some(3), "{t}");
    assert_eq!(
        containers(&alpha)
            .iter()
            .filter(|c| c.ends_with("running"))
            .count(),
        3
    );
    let (s, t) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{alpha}/scale"),
            Some(serde_json::json!({"component": "db", "replicas": 2})),
        )
        .await;
    assert_eq!(
        (s, t["error"]["code"].as_str()),
        (422, Some("unknown_component")),
        "{t}"
    );

    // Blue/green redeploy to another theme, then scaling in, under load: not one failed
    // request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failures) =
            (client.clone(), stop.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match page(&client, "alpha.platform.test").await {
                    Some((200, body)) if body.contains("Alpha Outfitters") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.lock().expect("lock").push(format!("{other:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, t) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{alpha}/redeploy"),
            Some(serde_json::json!({"theme": "mono"})),
        )
        .await;
    assert_eq!(s, 202, "{t}");
    wait_for("generation 2 to serve", Duration::from_secs(60), || async {
        let (_, t) = tg.api("GET", &format!("/v1/tenants/{alpha}"), None).await;
        (t["generation"] == 2 && t["theme"] == "mono").then_some(())
    })
    .await;
    wait_for(
        "generation 1 to be removed",
        Duration::from_secs(30),
        || async {
            let c = containers(&alpha);
            (c.len() == 3 && c.iter().all(|c| c.contains("-g2-"))).then_some(())
        },
    )
    .await;
    let (s, t) = tg
        .api(
            "POST",
            &format!("/v1/tenants/{alpha}/scale"),
            Some(serde_json::json!({"component": "web", "replicas": 1})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["upstreams"].as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(containers(&alpha).len(), 1, "{:?}", containers(&alpha));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    let a = wait_page(&client, "alpha.platform.test", "Theme: mono").await;
    assert!(
        a.contains("Limited Poncho"),
        "the data stays with the tenant: {a}"
    );

    // What happened is counted.
    let m = tg.metrics().await;
    for line in [
        "tenantgate_lifecycle_operations_total{operation=\"provision\",result=\"ok\"} 2",
        "tenantgate_lifecycle_operations_total{operation=\"redeploy\",result=\"ok\"} 1",
        "tenantgate_lifecycle_operations_total{operation=\"scale\",result=\"ok\"} 2",
        "tenantgate_provisioned_tenants{status=\"active\"} 2",
        "tenantgate_provisioning_seconds_count 2",
    ] {
        assert!(m.contains(line), "no {line:?} in\n{m}");
    }
    assert!(
        m.contains("tenantgate_lifecycle_operations_total{operation=\"repair\",result=\"ok\"}"),
        "{m}"
    );

    // Delete: route, containers, network, schema and role all gone; beta untouched.
    let (s, t) = tg
        .api("DELETE", &format!("/v1/tenants/{alpha}"), None)
        .await;
    assert_eq!(s, 204, "{t}");
    let (s, _) = page(&client, "alpha.platform.test")
        .await
        .unwrap_or((0, String::new()));
    assert_ne!(s, 200);
    assert!(containers(&alpha).is_empty(), "{:?}", containers(&alpha));
    assert!(networks(&alpha).is_empty(), "{:?}", networks(&alpha));
    assert!(!exists(&pg, "SELECT 1 FROM pg_namespace WHERE nspname = 'tg_alpha'").await);
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_alpha'").await);
    wait_page(&client, "beta.platform.test", "Beta Electronics").await;
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{beta}"), None).await;
    assert_eq!(s, 204);
    assert!(containers(&beta).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_provisioning_is_rolled_back_completely() {
    demo_image(IMAGE);
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    // A blueprint whose container starts but never becomes healthy: the schema, role,
    // network and container all exist by the time it fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::fs::read_to_string(format!("{SHIPPED_BLUEPRINTS}/demo-storefront.toml"))
        .expect("shipped blueprint");
    write_file(
        &dir.path().join("never-healthy.toml"),
        &shipped
            .replace("name = \"demo-storefront\"", "name = \"never-healthy\"")
            .replace(
                "path = \"/healthz\", timeout_seconds = 30",
                "path = \"/no-such-page\", timeout_seconds = 3",
            ),
    );
    write_file(
        &dir.path().join("no-image.toml"),
        &shipped
            .replace("name = \"demo-storefront\"", "name = \"no-image\"")
            .replace(IMAGE, "tenantgate/not-built-anywhere:1"),
    );
    std::fs::copy(
        format!("{SHIPPED_BLUEPRINTS}/medusa-nextjs.toml"),
        dir.path().join("medusa-nextjs.toml"),
    )
    .expect("copy medusa-nextjs");
    let ca = TestCa::new();
    let tg = start(&pg, &dir.path().display().to_string(), &ca).await;

    let id = create(&tg, "gamma", "Gamma", "never-healthy", None).await;
    let t = settled(&tg, &id).await;
    assert_eq!(t["status"], "failed", "{t}");
    let reason = t["status_reason"].as_str().unwrap_or("");
    assert!(reason.contains("not healthy within 3s"), "{t}");
    let events = t["events"].to_string();
    assert!(
        events.contains("database: schema and role") && events.contains("rolled back"),
        "{events}"
    );
    assert!(containers(&id).is_empty(), "{:?}", containers(&id));
    assert!(networks(&id).is_empty(), "{:?}", networks(&id));
    assert!(!exists(&pg, "SELECT 1 FROM pg_namespace WHERE nspname = 'tg_gamma'").await);
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_gamma'").await);
    let s = tg.get("gamma.platform.test", "/").await.status().as_u16();
    assert_eq!(s, 404, "a failed tenant is not routed");

    // An image that is nowhere: failed with a reason naming it, nothing left behind.
    let id2 = create(&tg, "delta", "Delta", "no-image", None).await;
    let t = settled(&tg, &id2).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["status_reason"]
            .as_str()
            .unwrap_or("")
            .contains("tenantgate/not-built-anywhere:1"),
        "{t}"
    );
    assert!(containers(&id2).is_empty() && networks(&id2).is_empty());
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_delta'").await);

    // medusa-nextjs is accepted (its paths go to two components); here, where no registry
    // is reachable, it fails on its images and leaves nothing behind.
    let id3 = create(&tg, "mu", "Mu Fashion", "medusa-nextjs", Some("fashion")).await;
    let t = settled(&tg, &id3).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["status_reason"]
            .as_str()
            .unwrap_or("")
            .contains("medusajs/medusa:2.8"),
        "{t}"
    );
    assert!(containers(&id3).is_empty() && networks(&id3).is_empty());
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_mu'").await);

    // A failed tenant keeps its slug until deleted; then the slug is free again.
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({"slug": "gamma", "name": "G", "blueprint": "never-healthy"})),
        )
        .await;
    assert_eq!(s, 409, "{t}");
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(s, 204);

    // Bad requests change nothing.
    for (body, code) in [
        (
            serde_json::json!({"slug": "e1", "name": "E", "blueprint": "nope"}),
            "unknown_blueprint",
        ),
        (
            serde_json::json!({"slug": "e2", "name": "E", "blueprint": "never-healthy", "theme": "neon"}),
            "unknown_theme",
        ),
        (
            serde_json::json!({"slug": "e3", "name": "E", "blueprint": "never-healthy", "upstreams": ["127.0.0.1:1"]}),
            "invalid_body",
        ),
        (
            serde_json::json!({"slug": "e4", "name": "E"}),
            "invalid_body",
        ),
    ] {
        let (s, t) = tg.api("POST", "/v1/tenants", Some(body.clone())).await;
        assert_eq!(
            (s, t["error"]["code"].as_str()),
            (422, Some(code)),
            "{body}: {t}"
        );
    }
    let (_, list) = tg.api("GET", "/v1/tenants", None).await;
    let mut slugs: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["slug"].as_str())
        .collect();
    slugs.sort_unstable();
    assert_eq!(slugs, ["delta", "mu"], "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_engine_provisioning_answers_503_and_creates_nothing() {
    let pg = PgCluster::start().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let tg = Tenantgate::provisioning(&ca, &pg.url("tenants"), SHIPPED_BLUEPRINTS, "")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .start()
        .await;
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(
                serde_json::json!({"slug": "zeta", "name": "Zeta", "blueprint": "demo-storefront"}),
            ),
        )
        .await;
    assert_eq!(s, 503, "{t}");
    assert_eq!(t["error"]["code"], "runtime_unavailable", "{t}");
    let (_, list) = tg.api("GET", "/v1/tenants", None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_zeta'").await);
    // Tenants with upstreams of their own need no engine.
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({"slug": "eta", "name": "Eta", "upstreams": ["127.0.0.1:9"]})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_cut_off_by_a_control_crash_is_finished_after_restart() {
    demo_image(IMAGE);
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let mut tg = start(&pg, SHIPPED_BLUEPRINTS, &ca).await;
    let id = create(&tg, "kappa", "Kappa Kites", "demo-storefront", None).await;
    // Killed once its container exists, before the route is published.
    wait_for(
        "kappa's container to start",
        Duration::from_secs(60),
        || async {
            let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
            t["events"].to_string().contains("started").then_some(())
        },
    )
    .await;
    tg.child_mut().kill().expect("kill");
    let _ = tg.child_mut().wait();
    let child = tg.spawn(false);
    tg.replace_child(child);
    tg.wait_ready().await;
    // The crashed node's lease runs out, the reconciler provisions the tenant again.
    let t = settled(&tg, &id).await;
    assert_eq!(t["status"], "active", "{t}\n{}", tg.logs());
    let client = tg.https_client(&ca, &["kappa.platform.test"]);
    wait_page(&client, "kappa.platform.test", "Kappa Kites").await;
    let c = containers(&id);
    assert_eq!(c.len(), 1, "leftovers of the cut-off attempt: {c:?}");
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(s, 204);
    let (c, n) = (containers(&id), networks(&id));
    assert!(
        c.is_empty() && n.is_empty(),
        "left: {c:?} {n:?}\n{}",
        tg.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_go_to_different_components_and_a_store_may_own_a_database() {
    demo_image(IMAGE);
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    // Two components of one store, the way medusa-nextjs splits `/store` and `/`.
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(
        &dir.path().join("two-part.toml"),
        &format!(
            r#"
name = "two-part"
database = "schema"
default_theme = "ocean"

[[components]]
name = "web"
image = "{IMAGE}"
port = 8080
health = {{ path = "/healthz", timeout_seconds = 30 }}
resources = {{ cpus = 0.25, memory_mb = 64 }}
env = {{ STORE_LISTEN = "0.0.0.0:8080", STORE_NAME = "{{{{tenant.name}}}}", DATABASE_URL = "{{{{database.url}}}}" }}

[[components]]
name = "api"
image = "{IMAGE}"
port = 8080
replicas = 2
health = {{ path = "/healthz", timeout_seconds = 30 }}
resources = {{ cpus = 0.25, memory_mb = 64 }}
env = {{ STORE_LISTEN = "0.0.0.0:8080", STORE_NAME = "API of {{{{tenant.name}}}}" }}

[[routes]]
path = "/"
component = "web"

[[routes]]
path = "/api"
component = "api"

[themes.ocean]
env = {{}}
"#
        ),
    );
    // And a store with a whole database of its own.
    let shipped = std::fs::read_to_string(format!("{SHIPPED_BLUEPRINTS}/demo-storefront.toml"))
        .expect("shipped blueprint");
    write_file(
        &dir.path().join("own-db.toml"),
        &shipped
            .replace("name = \"demo-storefront\"", "name = \"own-db\"")
            .replace("database = \"schema\"", "database = \"database\""),
    );
    let ca = TestCa::new();
    let tg = start(&pg, &dir.path().display().to_string(), &ca).await;
    let own = create(&tg, "nu", "Nu Knits", "own-db", Some("forest")).await;
    let id = create(&tg, "lambda", "Lambda Lamps", "two-part", None).await;
    let t = settled(&tg, &own).await;
    assert_eq!(t["status"], "active", "{t}\n{}", tg.logs());
    assert!(
        t["events"]
            .to_string()
            .contains("database and role tg_nu created"),
        "{t}"
    );
    let nu = tg.https_client(&ca, &["nu.platform.test"]);
    wait_page(&nu, "nu.platform.test", "Trail Boots").await;
    let tables = pg
        .execute(
            "tg_nu",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'products'",
        )
        .await;
    assert_eq!(
        tables,
        [["tg_nu"]],
        "the products live in the tenant's own database"
    );
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{own}"), None).await;
    assert_eq!(s, 204);
    assert!(!exists(&pg, "SELECT 1 FROM pg_database WHERE datname = 'tg_nu'").await);
    assert!(!exists(&pg, "SELECT 1 FROM pg_roles WHERE rolname = 'tg_nu'").await);

    let t = settled(&tg, &id).await;
    assert_eq!(t["status"], "active", "{t}\n{}", tg.logs());
    assert_eq!(t["upstreams"].as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(t["paths"]["/api"].as_array().map(Vec::len), Some(2), "{t}");
    let client = tg.https_client(&ca, &["lambda.platform.test"]);
    let page = wait_page(&client, "lambda.platform.test", "Lambda Lamps").await;
    assert!(!page.contains("API of"), "{page}");
    for _ in 0..4 {
        let api: serde_json::Value = client
            .get("https://lambda.platform.test/api/store")
            .send()
            .await
            .expect("api")
            .json()
            .await
            .expect("json");
        assert_eq!(api["name"], "API of Lambda Lamps", "{api}");
    }
    // `/apiary` is not under `/api`: the web component answers it (its own 404).
    let r = client
        .get("https://lambda.platform.test/apiary")
        .send()
        .await
        .expect("apiary");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.expect("body"), "not found (Lambda Lamps)\n");
    let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(s, 204);
    assert!(containers(&id).is_empty());
}
