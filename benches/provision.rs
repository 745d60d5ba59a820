//! Create → first 200 through the proxy, for tenants provisioned from the `demo-storefront`
//! blueprint on the real Docker Engine and a real PostgreSQL: the clock starts before
//! `POST /v1/tenants` and stops at the first `200` carrying the store's name from
//! `https://<slug>.platform.test/` through tenantgate (polled every 10 ms). Tenants are
//! created one after another. Then the same node with many idle tenants: memory and CPU of
//! their containers (`docker stats`) and of tenantgate itself (control, reconciler, proxy).
//!
//! `cargo bench --bench provision [-- --sizes 20,200]` (timed tenants, idle tenants in
//! all). Figures go to benches/RESULTS.md by hand. Nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::docker::{demo_image, docker};
use common::postgres::PgCluster;
use common::*;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `12.5MiB` / `800KiB` / `1.2GiB` → MiB.
fn mib(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "GiB" | "GB" => n * 1024.0,
        "KiB" | "kB" | "KB" => n / 1024.0,
        "B" => n / 1024.0 / 1024.0,
        _ => n,
    }
}

/// CPU seconds (utime + stime) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[20, 200]);
    let (timed, idle) = (
        sizes[0],
        sizes.get(1).copied().unwrap_or(sizes[0]).max(sizes[0]),
    );
    demo_image("tenantgate/demo-storefront:latest");
    let pg = PgCluster::start_for_containers().await;
    pg.execute("postgres", "CREATE DATABASE tenants").await;
    let ca = TestCa::new();
    let tg = Tenantgate::provisioning(&ca, &pg.url("tenants"), SHIPPED_BLUEPRINTS, "")
        .start()
        .await;
    let names: Vec<String> = (0..idle)
        .map(|i| format!("bench{i}.platform.test"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let client = tg.https_client(&ca, &refs);
    let mut ids = Vec::new();
    let mut took = Vec::new();
    for i in 0..idle {
        let slug = format!("bench{i}");
        let name = format!("Bench Store {i}");
        let t0 = Instant::now();
        let (s, t) = tg
            .api(
                "POST",
                "/v1/tenants",
                Some(json!({"slug": slug, "name": name, "blueprint": "demo-storefront"})),
            )
            .await;
        assert_eq!(s, 202, "{t}");
        ids.push(t["id"].as_str().expect("id").to_owned());
        let url = format!("https://{slug}.platform.test/");
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 && r.text().await.is_ok_and(|b| b.contains(&name)) {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{slug} never answered 200:\n{}",
                tg.api("GET", &format!("/v1/tenants/{}", ids[i]), None)
                    .await
                    .1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if i < timed {
            took.push(t0.elapsed());
            eprintln!("  {slug}: {:?}", t0.elapsed());
        } else if i % 20 == 0 {
            eprintln!("  {} tenants live", i + 1);
        }
    }
    took.sort();
    println!(
        "create -> first 200 over {timed} tenants: p50 {} ms, p95 {} ms, max {} ms",
        percentile(&took, 0.5).as_millis(),
        percentile(&took, 0.95).as_millis(),
        took.last().map_or(0, Duration::as_millis)
    );

    // Idle: let the reconciler run a few passes, then measure.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pid = tg.pid();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let tg_cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let stats = docker(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.CPUPerc}}",
    ]);
    let mut mem = 0.0;
    let mut cpu = 0.0;
    let mut n = 0;
    for line in stats.lines().filter(|l| l.starts_with("tg-")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        mem += f.get(1).map_or(0.0, |m| mib(m));
        cpu += f
            .last()
            .and_then(|c| c.trim_end_matches('%').parse::<f64>().ok())
            .unwrap_or(0.0);
        n += 1;
    }
    println!(
        "{n} idle demo tenants: containers {mem:.0} MiB in all ({:.2} MiB each), {cpu:.2}% CPU in all; \
         tenantgate {} MiB PSS, {tg_cpu:.2}% of a core (reconcile every 10 s)",
        mem / f64::from(n.max(1)),
        pss_kib(pid) / 1024
    );
    for id in &ids {
        let (s, _) = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
        assert_eq!(s, 204);
    }
}
