//! Micro-benchmarks of the hot path's pure parts: Host normalisation and route lookup at
//! 1, 100k and 1M routes (exact and wildcard hits, misses), and the cost of applying one
//! route change to a table of that size.

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tenantgate_config::host::{normalize_into, HostBuf};
use tenantgate_config::{HostPattern, Route, RouteTable, Upstream};
use tenantgate_proxy::metrics::Metrics;
use tenantgate_proxy::router::{Change, PackedRoute, Router};

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
                paths: Default::default(),
                hsts: None,
                limits: None,
                asleep: None,
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
    for n in [1usize, 100_000, 1_000_000] {
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
        // One tenant's upstreams change: what a delta costs at this table size.
        let mut route = table(1).routes.remove(0);
        let mut version = 1;
        c.bench_function(&format!("apply_one_change/{n}_routes"), |b| {
            b.iter(|| {
                version += 1;
                route.upstreams[0]
                    .addr
                    .set_port(9000 + (version % 2) as u16);
                router.apply([Change::Upsert(PackedRoute::new(&route))], version);
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
