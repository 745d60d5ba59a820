//! Change → served: the time from the admin API's answer to a change until the proxy serves
//! the new upstream, over 100 trials, on a single node (`serve`, embedded SQLite) and on a
//! fleet (`control` + `proxy` on PostgreSQL), with the table preloaded to several sizes.
//!
//! `cargo bench --bench propagation [-- --sizes 0,10000]`. Results go to benches/RESULTS.md
//! by hand, with the date and commit. Not a test: nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::PgCluster;
use common::*;
use serde_json::json;
use tenantgate_control::store::{NewTenant, Store};

const TRIALS: usize = 100;

async fn preload(store: &Store, n: usize) {
    let t0 = Instant::now();
    for i in 0..n {
        store
            .create_tenant(
                "bench",
                &NewTenant {
                    slug: format!("pre{i}"),
                    name: format!("Preloaded {i}"),
                    platform_hostname: format!("pre{i}.platform.test"),
                    upstreams: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9))],
                    blueprint: None,
                    plan: None,
                },
            )
            .await
            .expect("preload");
    }
    eprintln!(
        "  preloaded {n} tenants in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Flip the tenant's upstream between two backends and time until the proxy serves the new one.
async fn trials(control: &Running, proxy: &Running, a: &Backend, b: &Backend) -> Vec<f64> {
    let (s, t) = control
        .api(
            "POST",
            "/v1/tenants",
            Some(json!({"slug": "bench", "name": "Bench", "upstreams": [a.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().expect("id").to_string();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{}/", proxy.http);
    let served_by = |name: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            loop {
                if let Ok(r) = client
                    .get(&url)
                    .header("host", "bench.platform.test")
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if v["backend"] == name {
                            return;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), served_by("a"))
        .await
        .expect("first route");
    let mut out = Vec::with_capacity(TRIALS);
    for i in 0..TRIALS {
        let (target, name) = if i % 2 == 0 { (b, "b") } else { (a, "a") };
        let (s, _) = control
            .api(
                "PUT",
                &format!("/v1/tenants/{id}/upstreams"),
                Some(json!({"upstreams": [target.addr.to_string()]})),
            )
            .await;
        assert_eq!(s, 200);
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), served_by(name))
            .await
            .expect("change served");
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

fn report(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} |",
        ms.len(),
        q(0.5),
        q(0.99),
        ms[ms.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[0, 10_000]);
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    println!("| scenario | trials | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    for &n in &sizes {
        // Single node: serve with the embedded store, preloaded before start.
        let node = Tenantgate::new().section(PLATFORM_TEST);
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::new(Arc::new(
                tenantgate_control::store::sqlite::Sqlite::open(&dir.path().join("pre.db"))
                    .expect("sqlite"),
            ));
            preload(&store, n).await;
        }
        let tg = node.start().await;
        // Move the preloaded file in place of the node's (fresh) store and restart it.
        let mut tg = tg;
        tg.stop();
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(tg.dir.path().join(format!("data/tenantgate.db{ext}")));
            let _ = std::fs::copy(
                dir.path().join(format!("pre.db{ext}")),
                tg.dir.path().join(format!("data/tenantgate.db{ext}")),
            );
        }
        let child = tg.spawn(false);
        tg.replace_child(child);
        tg.wait_ready().await;
        let ms = trials(&tg, &tg, &a, &b).await;
        report(&format!("single node, {n} routes"), ms);
        drop(tg);

        // Fleet: control + one proxy on PostgreSQL.
        let pg = PgCluster::start().await;
        let url = pg.database("bench").await;
        tenantgate_control::store::postgres::Postgres::migrate(&url)
            .await
            .expect("migrate");
        {
            let store = Store::new(Arc::new(
                tenantgate_control::store::postgres::Postgres::new(&url, 4).expect("pool"),
            ));
            preload(&store, n).await;
        }
        let fleet = |cmd| Tenantgate::fleet_node(cmd, &url);
        let control = fleet("control").start().await;
        let proxy = fleet("proxy").start().await;
        let ms = trials(&control, &proxy, &a, &b).await;
        report(&format!("fleet (PostgreSQL), {n} routes"), ms);
    }
}
