//! Micro-benchmarks of the hot path's pure parts: Host normalisation and route lookup at
//! 1 and 100k routes (exact and wildcard hits, misses).

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tenantgate_config::host::{normalize_into, HostBuf};
use tenantgate_config::{HostPattern, Route, RouteTable, Upstream};
use tenantgate_proxy::metrics::Metrics;
use tenantgate_proxy::router::Router;

fn table(n: usize) -> RouteTable {
    let up = Upstream {
        addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
    };
    RouteTable {
        version: 1,
        routes: (0..n)
            .map(|i| Route {
                id: format!("shop{i}"),
                hostnames: vec![
                    HostPattern::Exact(format!("shop{i}.platform.test")),
                    HostPattern::Wildcard(format!("shop{i}.example.com")),
                ],
                upstreams: vec![up.clone()],
                https_redirect: false,
                suspended: false,
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    c.bench_function("normalize_host/mixed_case_with_port", |b| {
        let mut buf = HostBuf::default();
        b.iter(|| {
            normalize_into(black_box(b"Shop12345.Platform.TEST:8443"), &mut buf)
                .map(str::len)
                .unwrap_or(0)
        })
    });
    for n in [1usize, 100_000] {
        let router = Router::new(&table(n), Arc::new(Metrics::new(16)));
        let last = format!("shop{}.platform.test", n - 1);
        let wild = format!("www.shop{}.example.com", n / 2);
        c.bench_function(&format!("lookup/{n}_routes/exact"), |b| {
            b.iter(|| router.load().lookup(black_box(&last)).is_some())
        });
        c.bench_function(&format!("lookup/{n}_routes/wildcard"), |b| {
            b.iter(|| router.load().lookup(black_box(&wild)).is_some())
        });
        c.bench_function(&format!("lookup/{n}_routes/miss"), |b| {
            b.iter(|| {
                router
                    .load()
                    .lookup(black_box("nobody.platform.test"))
                    .is_some()
            })
        });
    }
}

/// The benchmark group (a module keeps the macro's undocumented items out of the lint).
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
criterion_main!(group::benches);
