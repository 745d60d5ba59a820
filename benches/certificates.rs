//! Many certificates on one proxy, measured on the real binary: a fleet proxy booting from a
//! last-known-good snapshot of N certificates (sealed keys, as the store keeps them) while
//! its store is unreachable. Reports time to ready, PSS and bytes per certificate, TLS 1.3
//! full handshakes per second to random names among the N, and resumed handshakes per
//! second, so N = 100,000 can be compared with N = 1 in the same run. Each handshake is
//! followed by one request on the connection (answered with the proxy's 404), read to the
//! end.
//!
//! `cargo bench --bench certificates [-- --sizes 1,100000]`. Figures go to
//! benches/RESULTS.md by hand. Nothing here asserts a timing.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::ServerName;
use tenantgate_certs::SealingKey;
use tenantgate_config::{Snapshot, StoredCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECONDS: u64 = 5;
const CONCURRENCY: usize = 8;

fn name(i: usize) -> String {
    format!("shop{i}.custom.test")
}

/// `f(i)` for i in 0..n on every core, in order.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || (start..(start + chunk).min(n)).map(f).collect::<Vec<_>>())
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// N leaf certificates signed by `ca`: (chain PEM, key PEM).
fn issue(ca: &TestCa, n: usize) -> Vec<(String, String)> {
    parallel(n, |i| ca.issue(&[&name(i)]))
}

/// The certificates as a store snapshot, keys sealed with the fleet test key.
fn snapshot(pems: &[(String, String)]) -> Vec<u8> {
    let key = SealingKey::from_hex(&"5a".repeat(32)).expect("key");
    let certs = parallel(pems.len(), |i| StoredCertificate {
        id: format!("c_{i:016x}"),
        chain_pem: pems[i].0.clone(),
        sealed_key: key.seal(pems[i].1.as_bytes()).expect("seal"),
    });
    serde_json::to_vec(&Snapshot {
        version: 1,
        routes: vec![],
        certificates: certs,
        challenges: vec![],
    })
    .expect("json")
}

fn client_config(ca: &TestCa, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(cfg)
}

/// Handshakes per second for `SECONDS` with `CONCURRENCY` clients; `names` picks the SNI of
/// the k-th handshake. Returns (per second, resumed fraction).
async fn handshakes(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    names: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (cfg, names, done, resumed) =
            (cfg.clone(), names.clone(), done.clone(), resumed.clone());
        tasks.push(tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let mut k = c as u64 * 7_919;
            while Instant::now() < end {
                k += 1;
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).ok();
                let sni = ServerName::try_from(names(k)).expect("name");
                let mut tls = connector.connect(sni, tcp).await.expect("handshake");
                // One request, read to the end: it also delivers the session ticket that a
                // later handshake resumes with.
                tls.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
                    .await
                    .expect("write");
                let mut sink = Vec::new();
                let _ = tls.read_to_end(&mut sink).await;
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let n = done.load(Ordering::Relaxed) as f64;
    (
        n / SECONDS as f64,
        resumed.load(Ordering::Relaxed) as f64 / n.max(1.0),
    )
}

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes_arg(&[1, 100_000]);
    let ca = TestCa::new();
    // Start a node per size first; then measure handshakes in alternating rounds, so noise
    // on the shared machine falls on every size alike.
    let mut nodes = Vec::new();
    let mut base: Option<(u64, usize)> = None;
    let mut index_costs = Vec::new();
    for &n in &sizes {
        let t = Instant::now();
        let pems = issue(&ca, n);
        let bytes = snapshot(&pems);
        index_costs.push((n, index_cost(&pems)));
        drop(pems);
        eprintln!(
            "generated {n} certificates in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mb = bytes.len() as f64 / (1024.0 * 1024.0);
        let (dc, dk) = ca.issue(&["default.platform.test"]);
        let node = Tenantgate::offline_proxy().cert(dc, dk, true);
        let t0 = Instant::now();
        let tg = node.start_with_snapshot(&bytes).await;
        let ready = t0.elapsed().as_secs_f64();
        drop(bytes);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pss = pss_kib(tg.pid()) * 1024;
        let per_cert = match base {
            Some((b, bn)) if n > bn => {
                format!("{:.0}", pss.saturating_sub(b) as f64 / (n - bn) as f64)
            }
            _ => "-".into(),
        };
        if base.is_none() {
            base = Some((pss, n));
        }
        nodes.push((n, tg, mb, ready, pss, per_cert, Vec::new(), Vec::new(), 0.0));
    }
    for _ in 0..ROUNDS {
        for (n, tg, _, _, _, _, full, resumed, share) in nodes.iter_mut() {
            let addr = tg.https.expect("https");
            let count = *n as u64;
            let (f, _) = handshakes(
                addr,
                client_config(&ca, false),
                Arc::new(move |k| name((k.wrapping_mul(2_654_435_761) % count) as usize)),
            )
            .await;
            let (r, s) = handshakes(addr, client_config(&ca, true), Arc::new(|_| name(0))).await;
            full.push(f);
            resumed.push(r);
            *share = s;
        }
    }
    println!("| certificates | snapshot MiB | time to ready s | PSS MiB | bytes/cert over {} | full handshakes/s | resumed handshakes/s |", sizes[0]);
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let first = nodes
        .first()
        .map(|n| (median(n.6.clone()), median(n.7.clone())));
    for (n, _, mb, ready, pss, per_cert, full, resumed, share) in &nodes {
        let (f, r) = (median(full.clone()), median(resumed.clone()));
        let ratio = |x: f64, b: f64| format!("{:.2}×", x / b);
        let (fr, rr) = first.map_or(("-".into(), "-".into()), |(bf, br)| {
            (ratio(f, bf), ratio(r, br))
        });
        println!(
            "| {n} | {mb:.1} | {ready:.2} | {:.1} | {per_cert} | {f:.0} ({fr}) | {r:.0} ({rr}, {:.0}% resumed) |",
            *pss as f64 / (1024.0 * 1024.0),
            share * 100.0
        );
    }
    println!("(handshake figures: median of {ROUNDS} alternating rounds of {SECONDS} s)");
    println!();
    println!("| certificates | rebuild whole SNI index ms | apply one change µs |");
    println!("|---:|---:|---:|");
    for (n, (full, one)) in index_costs {
        println!("| {n} | {full:.1} | {one:.1} |");
    }
}

/// In this process: the cost of building the SNI index over all of `pems` at once, and of
/// adding then removing one certificate with the rest loaded (mean of 200 of each).
fn index_cost(pems: &[(String, String)]) -> (f64, f64) {
    use tenantgate_certs::{parse_pem, CertificateStore};
    let parsed = parallel(pems.len(), |i| {
        parse_pem(pems[i].0.as_bytes(), pems[i].1.as_bytes()).expect("parse")
    });
    let all: Vec<(String, tenantgate_certs::ParsedCertificate)> = parsed
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("c{i}"), p))
        .collect();
    let store = CertificateStore::new();
    let t = Instant::now();
    store.replace_all(all, None);
    let full = t.elapsed().as_secs_f64() * 1000.0;
    let extra = TestCa::new().issue(&["extra.custom.test"]);
    let extra = parse_pem(extra.0.as_bytes(), extra.1.as_bytes()).expect("parse");
    let t = Instant::now();
    for _ in 0..100 {
        store.apply(vec![("extra".into(), Some(extra.clone()))]);
        store.apply(vec![("extra".into(), None)]);
    }
    let one = t.elapsed().as_secs_f64() * 1e6 / 200.0;
    (full, one)
}
