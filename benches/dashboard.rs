//! The dashboard's two figures (issue 15):
//! 1. Browser submit → the new store's page served through the proxy: a real Chromium fills
//!    the new-store form and submits it; the clock starts at the click and stops at the first
//!    `200` carrying the store's name from `http://<slug>.platform.test/` through tenantgate
//!    (polled every 10 ms), for stores provisioned from the `demo-storefront` blueprint on
//!    the real Docker Engine and PostgreSQL, one after another.
//! 2. Server time of the stores page (first page, a search, a status filter, a later page) and
//!    of the overview with 10,000 stores in the store, over a signed-in session (loopback, so
//!    the wall time of a request is the server's time plus a few tens of microseconds).
//!
//! `cargo bench --bench dashboard [-- --sizes 10,10000]` (stores created from the browser,
//! stores in the store). Figures go to benches/RESULTS.md by hand. Nothing here asserts a
//! timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::docker::demo_image;
use common::postgres::PgCluster;
use common::*;

const PASSWORD: &str = "benchmark passphrase";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut took: Vec<Duration>) {
    took.sort();
    println!(
        "{what}: n={} p50={:.1} ms p95={:.1} ms max={:.1} ms",
        took.len(),
        percentile(&took, 0.5).as_secs_f64() * 1000.0,
        percentile(&took, 0.95).as_secs_f64() * 1000.0,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
}

/// A signed-in session cookie for `tg`'s dashboard.
async fn sign_in(tg: &Running) -> String {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .post(format!("{}/login", tg.dashboard()))
        .form(&[("username", "bench"), ("password", PASSWORD)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().expect("cookie");
    set.split(';').next().expect("cookie").to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[10, 10_000]);
    let (created, stored) = (sizes[0], sizes.get(1).copied().unwrap_or(10_000));

    // 1. Browser submit → served through the proxy.
    demo_image("tenantgate/demo-storefront:latest");
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let tg = Tenantgate::provisioning(&ca, &pg.url("tenants"), SHIPPED_BLUEPRINTS, "")
        .start()
        .await;
    tg.add_operator("bench", PASSWORD);
    let b = Browser::start().await;
    b.goto(&format!("{}/login", tg.dashboard())).await;
    b.fill("#username", "bench").await;
    b.fill("#password", PASSWORD).await;
    b.click("button[type=submit]").await;
    b.wait_text("Sign out", Duration::from_secs(10)).await;
    let proxy = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut took = Vec::new();
    for i in 0..created {
        let (slug, name) = (format!("live{i}"), format!("Live Store {i}"));
        b.goto(&format!("{}/stores/new", tg.dashboard())).await;
        b.fill("#slug", &slug).await;
        b.fill("#name", &name).await;
        let t0 = Instant::now();
        b.click("#new-store button[type=submit]").await;
        let host = format!("{slug}.platform.test");
        wait_for(
            &format!("{host} served"),
            Duration::from_secs(60),
            || async {
                let r = proxy
                    .get(format!("http://{}/", tg.http))
                    .header("host", &host)
                    .send()
                    .await
                    .ok()?;
                if r.status() != 200 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return None;
                }
                r.text().await.ok()?.contains(&name).then_some(())
            },
        )
        .await;
        took.push(t0.elapsed());
    }
    report("browser submit -> served through the proxy", took);
    b.close().await;
    drop(tg);

    // 2. Pages with many stores.
    let tg = Tenantgate::new().section(PLATFORM_TEST).start().await;
    tg.add_operator("bench", PASSWORD);
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let t0 = Instant::now();
    for chunk in (0..stored).collect::<Vec<_>>().chunks(64) {
        let calls = chunk.iter().map(|i| {
            tg.api(
                "POST",
                "/v1/tenants",
                Some(serde_json::json!({
                    "slug": format!("store{i}"),
                    "name": format!("Store number {i}"),
                    "upstreams": [upstream.to_string()],
                })),
            )
        });
        for (s, t) in futures_util::future::join_all(calls).await {
            assert_eq!(s, 201, "{t}");
        }
    }
    println!(
        "{stored} stores created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let cookie = sign_in(&tg).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let after = format!("t_{}", "8".repeat(16));
    for (what, path) in [
        ("stores, first page", "/stores".to_owned()),
        ("stores, search", "/stores?q=number+4242".to_owned()),
        ("stores, status filter", "/stores?status=active".to_owned()),
        ("stores, a later page", format!("/stores?after={after}")),
        ("overview", "/".to_owned()),
    ] {
        let mut took = Vec::new();
        for i in 0..60 {
            let t0 = Instant::now();
            let r = client
                .get(format!("{}{path}", tg.dashboard()))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(r.status(), 200, "{path}");
            let body = r.text().await.expect("body");
            // The first few warm the store's caches.
            if i >= 10 {
                took.push(t0.elapsed());
            }
            assert!(body.contains("Sign out"));
        }
        report(&format!("{what} with {stored} stores"), took);
    }
}
