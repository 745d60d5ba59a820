//! Stores that sleep, end to end on the real Docker Engine (and PostgreSQL for the fleet):
//! an idle store is frozen, then stopped; the first request in each state is served the
//! store's page; 50 concurrent requests during a wake share one start; a crawler does not
//! wake it; a browser navigation gets the waking page, then the store; a POST's body reaches
//! the store intact; an open upgraded connection keeps it awake; on a fleet a `proxy` node
//! wakes a store a `control` node runs, with control restarted during the wake; and the
//! engine failing during a wake gives our 503 and a reason in the store's events.
//! Fails (never skips) when Docker or PostgreSQL cannot start.

mod common;

use std::time::Duration;

use common::docker::{demo_image, docker, sleepy_blueprint};
use common::postgres::PgCluster;
use common::*;

/// The image the test blueprint runs (the demo storefront, without a database).
const IMAGE: &str = "tenantgate/demo-storefront:latest";

/// A node (`serve`, or `control` on a fleet) that provisions from `dir`, reconciles every
/// second, learns the proxies' traffic every second and holds requests up to `timeout`.
fn node(
    dir: &tempfile::TempDir,
    command: &'static str,
    fleet: Option<&str>,
    timeout: u64,
) -> Tenantgate {
    node_reporting(dir, command, fleet, timeout, 1)
}

/// Like [`node`], with the proxies reporting their traffic every `report` seconds.
fn node_reporting(
    dir: &tempfile::TempDir,
    command: &'static str,
    fleet: Option<&str>,
    timeout: u64,
    report: u64,
) -> Tenantgate {
    let base = match fleet {
        Some(url) => Tenantgate::fleet_node(command, url),
        None => Tenantgate::new().section(PLATFORM_TEST),
    };
    base.admin(&format!("traffic_report_seconds = {report}"))
        .section(&format!(
            "[provisioning]\nblueprints_dir = {:?}\nreconcile_seconds = 1\ndrain_seconds = 1\n",
            dir.path().display().to_string()
        ))
        .section(&format!(
            "[sleep]\nwake_hold_ms = 1\nwake_timeout_seconds = {timeout}\n"
        ))
}

/// Delete the store (asleep or not): its containers go.
async fn delete(tg: &Running, id: &str) {
    let (s, e) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert!(s == 200 || s == 204, "{s} {e}");
    wait_for(
        "the store's containers to go",
        Duration::from_secs(30),
        || async { states(id).is_empty().then_some(()) },
    )
    .await;
}

/// A client patient enough for a wake on a busy machine.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client")
}

async fn get(
    tg: &Running,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client()
        .get(format!("http://{}{path}", tg.http))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap_or_default())
}

/// Provision `slug` from `sleepy` on `tg` (the node with the API); its id once active.
async fn provision(tg: &Running, slug: &str) -> String {
    let (s, t) = tg
        .api(
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({"slug": slug, "name": format!("Store {slug}"), "blueprint": "sleepy"})),
        )
        .await;
    assert_eq!(s, 202, "{t}");
    let id = t["id"].as_str().expect("id").to_owned();
    wait_status(tg, &id, "active", 90).await;
    id
}

/// The tenant once its status is `status`.
async fn wait_status(tg: &Running, id: &str, status: &str, secs: u64) -> serde_json::Value {
    wait_for(
        &format!("tenant {id} to be {status}"),
        Duration::from_secs(secs),
        || async {
            let (s, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
            (s == 200 && t["status"] == status).then_some(t)
        },
    )
    .await
}

/// Set the store's idle periods (seconds; `None`: never).
async fn policy(tg: &Running, id: &str, pause: Option<u64>, stop: Option<u64>) {
    let (s, t) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(serde_json::json!({"idle_pause_seconds": pause, "idle_stop_seconds": stop})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["idle_pause_seconds"].as_u64(), pause, "{t}");
    assert_eq!(t["idle_stop_seconds"].as_u64(), stop, "{t}");
}

/// The states (`running`, `paused`, `exited`) of the store's containers.
fn states(id: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=tenantgate.tenant={id}"),
        "--format",
        "{{.State}}",
    ])
    .lines()
    .map(str::to_owned)
    .filter(|l| !l.is_empty())
    .collect()
}

/// Once the store's one container is in `state` (the route says it sleeps first, then the
/// containers are frozen or stopped).
async fn wait_states(id: &str, state: &str) {
    wait_for(
        &format!("{id}'s container to be {state}"),
        Duration::from_secs(30),
        || async { (states(id) == [state]).then_some(()) },
    )
    .await;
}

/// The store's events, newline-joined.
async fn events(tg: &Running, id: &str) -> String {
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    t["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_store_freezes_then_stops_and_every_first_request_is_served() {
    demo_image(IMAGE);
    let dir = sleepy_blueprint(IMAGE);
    let tg = node(&dir, "serve", None, 60).start().await;
    let id = provision(&tg, "nap").await;
    let host = "nap.platform.test";
    let (s, _, body) = get(&tg, host, "/", &[]).await;
    assert!(s == 200 && body.contains("Store nap"), "{s} {body}");

    // The blueprint's periods are shown; PATCH sets the store's own, checked.
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(
        (
            t["idle_pause_seconds"].as_u64(),
            t["idle_stop_seconds"].as_u64()
        ),
        (Some(300), Some(3600)),
        "{t}"
    );
    for (body, why) in [
        (
            serde_json::json!({"idle_pause_seconds": 10, "idle_stop_seconds": 10}),
            "idle_stop_seconds: must be longer",
        ),
        (
            serde_json::json!({"idle_pause_seconds": 0}),
            "idle_pause_seconds: must be 1-",
        ),
        (
            serde_json::json!({"idle_stop_seconds": 99_999_999}),
            "idle_stop_seconds: must be 1-",
        ),
    ] {
        let (s, e) = tg
            .api("PATCH", &format!("/v1/tenants/{id}"), Some(body))
            .await;
        assert_eq!(s, 422, "{e}");
        assert_eq!(e["error"]["code"], "invalid_sleep_policy", "{e}");
        assert!(e["error"]["message"].to_string().contains(why), "{e}");
    }
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(
        t["idle_pause_seconds"], 300,
        "a refused PATCH changes nothing: {t}"
    );
    policy(&tg, &id, None, None).await;
    policy(&tg, &id, Some(2), Some(8)).await;

    // Idle: frozen, and the first request is served from the frozen containers.
    wait_status(&tg, &id, "paused", 60).await;
    wait_states(&id, "paused").await;
    let (s, _, body) = get(&tg, host, "/", &[]).await;
    assert!(s == 200 && body.contains("Store nap"), "{s} {body}");
    assert_eq!(states(&id), ["running"]);
    wait_status(&tg, &id, "active", 10).await;
    assert!(events(&tg, &id).await.contains("woken from paused"));

    // Idle longer: frozen, then stopped. A crawler is turned away without waking it.
    wait_status(&tg, &id, "sleeping", 60).await;
    wait_states(&id, "exited").await;
    let (s, h, _) = get(
        &tg,
        host,
        "/",
        &[(
            "user-agent",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        )],
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "60");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(states(&id), ["exited"], "a crawler must not wake the store");

    // 50 requests at once during the wake: every one is served, by one start.
    let before = events(&tg, &id).await;
    let (woken, started) = (
        count(&before, "woken from stopped"),
        count(&before, "was stopped: started again"),
    );
    let all = futures_util::future::join_all(
        (0..50).map(|_| async { get(&tg, host, "/api/store", &[]).await }),
    )
    .await;
    for (s, _, body) in &all {
        assert_eq!(*s, 200, "{body}\n{}", tg.logs());
        assert!(body.contains("\"name\":\"Store nap\""), "{body}");
    }
    wait_status(&tg, &id, "active", 10).await;
    let ev = events(&tg, &id).await;
    assert_eq!(count(&ev, "woken from stopped"), woken + 1, "{ev}");
    assert_eq!(
        count(&ev, "was stopped: started again"),
        started + 1,
        "{ev}"
    );
    let m = tg.metrics().await;
    assert!(
        m.contains("tenantgate_wakes_total{from=\"stopped\",result=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("tenantgate_proxy_held_requests_total{result=\"crawler\"} 1"));

    // Asleep again: a POST's body waits with the request and reaches the store intact.
    wait_status(&tg, &id, "sleeping", 60).await;
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let r = client()
        .post(format!("http://{}/api/echo", tg.http))
        .header("host", host)
        .body(payload.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.expect("body").as_ref() == payload.as_slice());

    // Asleep again: a browser navigation gets the waking page (never cached), which reloads
    // itself; the store answers the reload.
    wait_status(&tg, &id, "sleeping", 60).await;
    let html = [("accept", "text/html,application/xhtml+xml")];
    let (s, h, body) = get(&tg, host, "/", &html).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("waking up") && body.contains("http-equiv=\"refresh\""));
    assert_eq!(h["cache-control"], "no-store");
    let page = wait_for(
        "the store after its waking page",
        Duration::from_secs(60),
        || async {
            let (s, _, body) = get(&tg, host, "/", &html).await;
            (s == 200).then_some(body)
        },
    )
    .await;
    assert!(page.contains("Store nap"), "{page}");
    delete(&tg, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_upgraded_connection_keeps_a_store_awake() {
    demo_image(IMAGE);
    let dir = sleepy_blueprint(IMAGE);
    let tg = node(&dir, "serve", None, 60).start().await;
    let id = provision(&tg, "chat").await;
    policy(&tg, &id, Some(2), Some(4)).await;
    let mut ws = RawClient::connect(tg.http).await;
    ws.send(
        b"GET /ws HTTP/1.1\r\nHost: chat.platform.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let head = ws.response_head_only().await;
    assert_eq!(head.status, 101);
    // Well past both periods, the connection open: still awake, still echoing.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let msg = format!("ping {round}\n");
        ws.send(msg.as_bytes()).await;
        assert_eq!(ws.bytes(msg.len()).await, msg.as_bytes());
    }
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(states(&id), ["running"]);
    // Closed: the store falls asleep.
    drop(ws);
    wait_status(&tg, &id, "paused", 60).await;
    wait_states(&id, "paused").await;
    // A frozen store is deleted like any other.
    delete(&tg, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_in_flight_is_never_frozen_under() {
    demo_image(IMAGE);
    let dir = sleepy_blueprint(IMAGE);
    // Traffic is reported once a minute here, so the store looks idle to the reconciler
    // while the request below is in flight: only the proxy's own count of requests in
    // flight keeps it from being frozen under it.
    let tg = node_reporting(&dir, "serve", None, 60, 60).start().await;
    let id = provision(&tg, "slow").await;
    policy(&tg, &id, Some(2), None).await;
    let (s, _, body) = get(&tg, "slow.platform.test", "/api/slow?ms=6000", &[]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("slow done after 6000 ms"), "{body}");
    // Once it is answered, the store falls asleep.
    wait_status(&tg, &id, "paused", 60).await;
    wait_states(&id, "paused").await;
    delete(&tg, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_proxy_wakes_a_store_that_control_runs_even_across_a_control_restart() {
    demo_image(IMAGE);
    let pg = PgCluster::start().await;
    pg.execute("postgres", "CREATE DATABASE fleet").await;
    let url = pg.url("fleet");
    let dir = sleepy_blueprint(IMAGE);
    let mut control = node(&dir, "control", Some(&url), 60).start().await;
    let proxy = node(&dir, "proxy", Some(&url), 60).start().await;
    let id = provision(&control, "far").await;
    let host = "far.platform.test";
    wait_for(
        "the proxy to serve the store",
        Duration::from_secs(30),
        || async {
            let (s, _, _) = get(&proxy, host, "/api/store", &[]).await;
            (s == 200).then_some(())
        },
    )
    .await;
    policy(&control, &id, None, Some(2)).await;
    wait_status(&control, &id, "sleeping", 60).await;

    // Through the proxy: the wake goes through the store (a row and a NOTIFY).
    let (s, _, body) = get(&proxy, host, "/api/store", &[]).await;
    assert_eq!(s, 200, "{body}\n{}\n{}", proxy.logs(), control.logs());
    assert!(events(&control, &id).await.contains("woken from stopped"));

    // Asleep again, and control down when the request comes: the request waits, the wake
    // is kept in the store, and control takes it when it is back.
    wait_status(&control, &id, "sleeping", 60).await;
    control.stop();
    let asked = tokio::spawn({
        let (http, host) = (proxy.http, host.to_owned());
        async move {
            let r = client()
                .get(format!("http://{http}/api/store"))
                .header("host", host)
                .send()
                .await
                .expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !asked.is_finished(),
        "the request is held while control is down"
    );
    let rows = pg
        .execute(
            "fleet",
            &format!("SELECT 1 FROM tenants WHERE id = '{id}' AND wake_requested_at IS NOT NULL"),
        )
        .await;
    assert_eq!(rows.len(), 1, "the wake is kept in the store");
    let child = control.spawn(false);
    control.replace_child(child);
    control.wait_ready().await;
    let (s, body) = asked.await.expect("held request");
    assert_eq!(s, 200, "{body}");
    wait_status(&control, &id, "active", 30).await;
    delete(&control, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_failing_during_a_wake_gives_our_503_and_a_reason() {
    // An image of this test's own, so removing it leaves the other tests' alone.
    const DOOMED: &str = "tenantgate/demo-storefront:doomed";
    demo_image(IMAGE);
    docker(&["tag", IMAGE, DOOMED]);
    let dir = sleepy_blueprint(DOOMED);
    let tg = node(&dir, "serve", None, 5).start().await;
    let id = provision(&tg, "gone").await;
    policy(&tg, &id, None, Some(2)).await;
    wait_status(&tg, &id, "sleeping", 60).await;
    wait_states(&id, "exited").await;
    // The engine loses the store's containers and the image they were made from: the wake
    // cannot start or create them.
    let names = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=tenantgate.tenant={id}"),
    ]);
    for c in names.lines() {
        docker(&["rm", "-f", c]);
    }
    docker(&["rmi", DOOMED]);
    let (s, h, body) = get(&tg, "gone.platform.test", "/", &[]).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("did not wake in time"), "{body}");
    assert!(h.contains_key("retry-after"));
    let ev = wait_for(
        "the failed wake's reason",
        Duration::from_secs(30),
        || async {
            let ev = events(&tg, &id).await;
            ev.contains("wake failed").then_some(ev)
        },
    )
    .await;
    assert!(ev.contains("wake failed"), "{ev}");
    let m = tg.metrics().await;
    assert!(
        m.contains("tenantgate_wakes_total{from=\"stopped\",result=\"failed\"}"),
        "{m}"
    );
    delete(&tg, &id).await;
}
