//! Memory per route and time to load a large table, measured on the real binary: a fleet
//! proxy (`tenantgate proxy`) booting from a last-known-good snapshot of N routes while its
//! store is unreachable. Reports PSS (from /proc/PID/smaps_rollup) and time to ready for each
//! N, and the slope in bytes per route.
//!
//! `cargo bench --bench route_memory [-- --sizes 0,10000,100000,1000000]`. Figures go to
//! benches/RESULTS.md by hand. Nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use tenantgate_config::{HostPattern, Route, Snapshot, Upstream};

fn snapshot(n: usize) -> Vec<u8> {
    let snap = Snapshot {
        version: n as u64,
        routes: (0..n)
            .map(|i| Route {
                id: format!("t_{i:016x}"),
                hostnames: vec![HostPattern::Exact(format!("shop{i}.platform.test"))],
                upstreams: vec![Upstream {
                    // Loopback only: a request to the last route must not leave the machine.
                    addr: SocketAddr::from((
                        [127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
                        9,
                    )),
                }],
                https_redirect: false,
                suspended: false,
                paths: Default::default(),
                hsts: None,
                limits: None,
                asleep: None,
            })
            .collect(),
        certificates: vec![],
        challenges: vec![],
    };
    serde_json::to_vec(&snap).expect("json")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[0, 10_000, 100_000, 1_000_000]);
    println!("| routes | snapshot MiB | time to ready s | PSS MiB | bytes/route over 0 |");
    println!("|---:|---:|---:|---:|---:|");
    let mut base = None;
    for n in sizes {
        let bytes = snapshot(n);
        let mb = bytes.len() as f64 / (1024.0 * 1024.0);
        let node = Tenantgate::offline_proxy();
        let t0 = Instant::now();
        let tg = node.start_with_snapshot(&bytes).await;
        let ready = t0.elapsed().as_secs_f64();
        if n > 0 {
            let host = format!("shop{}.platform.test", n - 1);
            assert_eq!(
                tg.get(&host, "/").await.status(),
                502,
                "the last route is served"
            );
        }
        // Let allocator caches settle before reading PSS.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let pss = pss_kib(tg.pid()) * 1024;
        let base_pss = *base.get_or_insert(pss);
        let per_route = if n > 0 {
            format!("{:.0}", (pss.saturating_sub(base_pss)) as f64 / n as f64)
        } else {
            "-".into()
        };
        println!(
            "| {n} | {mb:.1} | {ready:.2} | {:.1} | {per_route} |",
            pss as f64 / (1024.0 * 1024.0)
        );
    }
}
