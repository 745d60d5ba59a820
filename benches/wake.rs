//! Stores that sleep, measured on the real Docker Engine: wake to first byte through
//! tenantgate (the clock starts before the request is sent to a sleeping store and stops at
//! its response head), from frozen and from stopped, over N wakes each; then M stores awake
//! against the same M stopped: the host's used memory (`MemTotal - MemAvailable`) and their
//! containers' (`docker stats`).
//!
//! `cargo bench --bench wake [-- --sizes 20,50]` (wakes per level, stores for memory).
//! Figures go to benches/RESULTS.md by hand. Nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::docker::{demo_image, docker, sleepy_blueprint};
use common::*;
use serde_json::json;

const IMAGE: &str = "tenantgate/demo-storefront:latest";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Used memory of the host, MiB.
fn host_used_mib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> f64 {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (kib("MemTotal:") - kib("MemAvailable:")) / 1024.0
}

/// Memory of the running containers of this installation's stores, MiB (`docker stats`).
fn containers_mib(ids: &[String]) -> f64 {
    let mut names = Vec::new();
    for id in ids {
        let out = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=tenantgate.tenant={id}"),
        ]);
        names.extend(out.lines().map(str::to_owned));
    }
    if names.is_empty() {
        return 0.0;
    }
    let mut args = vec!["stats", "--no-stream", "--format", "{{.MemUsage}}"];
    args.extend(names.iter().map(String::as_str));
    docker(&args)
        .lines()
        .filter_map(|l| l.split('/').next())
        .map(|v| {
            let v = v.trim();
            let (num, unit) =
                v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(0.0);
            match unit {
                "GiB" => n * 1024.0,
                "KiB" | "kB" => n / 1024.0,
                "B" => n / 1024.0 / 1024.0,
                _ => n,
            }
        })
        .sum()
}

async fn status(tg: &Running, id: &str) -> String {
    let (_, t) = tg.api("GET", &format!("/v1/tenants/{id}"), None).await;
    t["status"].as_str().unwrap_or("").to_owned()
}

async fn wait_status(tg: &Running, id: &str, want: &str) {
    wait_for(
        &format!("{id} to be {want}"),
        Duration::from_secs(120),
        || async { (status(tg, id).await == want).then_some(()) },
    )
    .await;
}

/// Containers of `id` in `state` (`paused`, `exited`).
async fn wait_containers(id: &str, state: &str) {
    wait_for(
        &format!("{id}'s containers to be {state}"),
        Duration::from_secs(60),
        || async {
            let s = docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label=tenantgate.tenant={id}"),
                "--format",
                "{{.State}}",
            ]);
            (!s.is_empty() && s.lines().all(|l| l == state)).then_some(())
        },
    )
    .await;
}

async fn policy(tg: &Running, id: &str, pause: Option<u64>, stop: Option<u64>) {
    let (s, t) = tg
        .api(
            "PATCH",
            &format!("/v1/tenants/{id}"),
            Some(json!({"idle_pause_seconds": pause, "idle_stop_seconds": stop})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
}

/// Time from sending a GET for the sleeping store on `host` to its response head.
async fn first_byte(tg: &Running, host: &str) -> Duration {
    let mut c = RawClient::connect(tg.http).await;
    let req = format!("GET /api/store HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let t = Instant::now();
    c.send(req.as_bytes()).await;
    let head = c.response_head_only().await;
    let took = t.elapsed();
    assert_eq!(head.status, 200, "{head:?}");
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[20, 50]);
    let (wakes, stores) = (sizes[0], sizes.get(1).copied().unwrap_or(sizes[0]));
    demo_image(IMAGE);
    let dir = sleepy_blueprint(IMAGE);
    let tg = Tenantgate::new()
        .section(PLATFORM_TEST)
        .admin("traffic_report_seconds = 1")
        .section(&format!(
            "[provisioning]\nblueprints_dir = {:?}\nreconcile_seconds = 1\ndrain_seconds = 1\n",
            dir.path().display().to_string()
        ))
        .section("[sleep]\nwake_hold_ms = 30000\nwake_timeout_seconds = 60\n")
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..stores.max(1) {
        let (s, t) = tg
            .api(
                "POST",
                "/v1/tenants",
                Some(json!({"slug": format!("w{i}"), "name": format!("W{i}"), "blueprint": "sleepy"})),
            )
            .await;
        assert_eq!(s, 202, "{t}");
        let id = t["id"].as_str().expect("id").to_owned();
        wait_status(&tg, &id, "active").await;
        ids.push(id);
    }
    let (id, host) = (ids[0].clone(), "w0.platform.test");
    // Only the timed store sleeps during the wake series.
    for other in &ids[1..] {
        policy(&tg, other, None, None).await;
    }
    for (level, pause, stop, state, shown) in [
        ("frozen", Some(1), None, "paused", "paused"),
        ("stopped", None, Some(1), "exited", "sleeping"),
    ] {
        policy(&tg, &id, pause, stop).await;
        let mut times = Vec::new();
        for _ in 0..wakes {
            wait_status(&tg, &id, shown).await;
            wait_containers(&id, state).await;
            times.push(first_byte(&tg, host).await);
            wait_status(&tg, &id, "active").await;
        }
        times.sort();
        println!(
            "wake from {level}: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} wakes",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.95).as_secs_f64() * 1e3,
            times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
            times.len()
        );
    }
    // Memory: every store awake, then every store stopped.
    for id in &ids {
        policy(&tg, id, None, None).await;
    }
    for (i, id) in ids.iter().enumerate() {
        if status(&tg, id).await != "active" {
            first_byte(&tg, &format!("w{i}.platform.test")).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (awake_host, awake_ctr) = (host_used_mib(), containers_mib(&ids));
    for id in &ids {
        policy(&tg, id, None, Some(1)).await;
    }
    for id in &ids {
        wait_status(&tg, id, "sleeping").await;
        wait_containers(id, "exited").await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (asleep_host, asleep_ctr) = (host_used_mib(), containers_mib(&ids));
    println!(
        "{} stores awake: host used {awake_host:.0} MiB, containers {awake_ctr:.1} MiB; \
         stopped: host used {asleep_host:.0} MiB, containers {asleep_ctr:.1} MiB ({:+.0} MiB)",
        ids.len(),
        asleep_host - awake_host
    );
    for id in &ids {
        let _ = tg.api("DELETE", &format!("/v1/tenants/{id}"), None).await;
    }
}
