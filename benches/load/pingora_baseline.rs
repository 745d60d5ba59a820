//! The load harness's reference point: the smallest Pingora proxy that routes by Host (one
//! hash lookup, default settings, same allocator and release profile as tenantgate). Its
//! CPU per request against tenantgate's separates the cost of Pingora itself from the cost
//! of tenantgate's own phases.
//!
//! `pingora_baseline LISTEN BACKEND HOSTS_FILE`

use std::collections::HashSet;
use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Baseline {
    hosts: HashSet<String>,
    backend: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        let host = session
            .req_header()
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if self.hosts.contains(host) {
            return Ok(false);
        }
        session.respond_error(404).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.backend, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend), Some(hosts)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: pingora_baseline LISTEN BACKEND HOSTS_FILE");
        std::process::exit(2);
    };
    let backend: SocketAddr = backend.parse().expect("BACKEND must be ip:port");
    let hosts = std::fs::read_to_string(hosts)
        .expect("HOSTS_FILE readable")
        .lines()
        .map(str::to_owned)
        .collect();
    pingora::tls::install_default_crypto_provider();
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Baseline { hosts, backend });
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever()
}
