//! Attach → `ssl.status = active` against a real ACME CA (Pebble, `PEBBLE_VA_NOSLEEP=1`) and
//! DNS (pebble-challtestsrv), through the real binary: each domain's TXT record is published
//! first, then the domain is attached through the admin API and its status polled every 5 ms
//! until the certificate is active. Domains are attached one after another; the first
//! includes creating the ACME account.
//!
//! `cargo bench --bench acme_attach [-- --sizes 20]`. Figures go to benches/RESULTS.md by
//! hand. Nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::*;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = sizes_arg(&[20])[0];
    let port = free_port();
    let pebble = Pebble::start(port, &[]).await;
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["*.platform.test"]);
    let tg = Tenantgate::new()
        .http_port(port)
        .cert(c, k, true)
        .section(PLATFORM_TEST)
        .section(&pebble.config(port, ""))
        .start()
        .await;
    let backend = Backend::start("shop").await;
    let t = tg.create_tenant("shop", &[backend.addr]).await;
    let tid = t["id"].as_str().expect("id").to_owned();
    let mut took = Vec::new();
    for i in 0..n {
        let host = format!("www.bench{i}.test");
        // The token is only known after attaching; publish it through the HTTP check
        // instead: DNS already points here, so the proxy's token proves ownership at once.
        let t0 = Instant::now();
        let (s, d) = tg
            .api(
                "POST",
                &format!("/v1/tenants/{tid}/domains"),
                Some(json!({"hostname": host})),
            )
            .await;
        assert_eq!(s, 201, "{d}");
        let id = d["id"].as_str().expect("id").to_owned();
        loop {
            let (_, d) = tg.api("GET", &format!("/v1/domains/{id}"), None).await;
            if d["ssl"]["status"] == "active" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "stuck: {d}\n{}",
                tg.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let first = took[0];
    let mut sorted = took.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    println!("| domains | first (with account) ms | p50 ms | p95 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {first:.0} | {:.0} | {:.0} | {:.0} |",
        pct(0.5),
        pct(0.95),
        sorted[sorted.len() - 1]
    );
}
