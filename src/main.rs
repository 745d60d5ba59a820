//! The `tenantgate` binary: command-line parsing and wiring of the crates, nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use tenantgate_certs::{generate_self_signed, parse_pem, CertificateStore, ParsedCertificate};
use tenantgate_config::{Config, LogFormat, RouteTable};
use tenantgate_proxy::metrics::Metrics;
use tenantgate_proxy::router::Router;
use tenantgate_proxy::Edge;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multi-tenant edge proxy for storefront platforms.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (HTTP, HTTPS, admin listener) in the foreground.
    Serve {
        /// Configuration file (TOML). Without one, built-in defaults and TENANTGATE_* variables.
        #[arg(short, long, env = "TENANTGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Take the listening sockets over from a running tenantgate (graceful binary upgrade:
        /// start the new binary with --upgrade, then send SIGQUIT to the old one).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a configuration file: print every problem with its key, exit 1 if any.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TENANTGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok(Loaded {
                cfg, table, certs, ..
            }) => {
                println!(
                    "configuration OK: {} routes, {} hostnames, {} certificates, http {}, https {}, admin {}",
                    table.routes.len(),
                    table.routes.iter().map(|r| r.hostnames.len()).sum::<usize>(),
                    certs.len(),
                    cfg.proxy.http_listen,
                    cfg.proxy.https_listen.as_deref().unwrap_or("off"),
                    cfg.admin.listen,
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, upgrade } => match serve(config.as_deref(), upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tenantgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A configuration that validated, with its route table and certificates.
struct Loaded {
    cfg: Config,
    table: RouteTable,
    certs: Vec<ParsedCertificate>,
    /// Index in `certs` of the one marked `default = true`.
    default: Option<usize>,
}

/// Load, validate and load certificates; every problem is reported before failing.
fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let cfg = match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env_only()?,
    };
    let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
    let table = cfg.validate();
    let mut problems = match &table {
        Err(tenantgate_config::Error::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
        Ok(_) => Vec::new(),
    };
    let mut certs = Vec::new();
    let mut default = None;
    for (i, c) in cfg.certificates.iter().enumerate() {
        let cert_file = base.join(&c.cert_file);
        let key_file = base.join(&c.key_file);
        if !c.self_signed_names.is_empty() && !cert_file.exists() && !key_file.exists() {
            if let Err(e) = generate_self_signed(&c.self_signed_names, &cert_file, &key_file) {
                problems.push(format!("certificates[{i}]: {e}"));
                continue;
            }
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| format!("certificates[{i}]: {}: {e}", p.display()))
        };
        match (read(&cert_file), read(&key_file)) {
            (Ok(chain), Ok(key)) => match parse_pem(&chain, &key) {
                Ok(parsed) => {
                    if c.default {
                        default = Some(certs.len());
                    }
                    certs.push(parsed);
                }
                Err(e) => problems.push(format!("certificates[{i}]: {}: {e}", cert_file.display())),
            },
            (a, b) => problems.extend(a.err().into_iter().chain(b.err())),
        }
    }
    if cfg.proxy.https_listen.is_some() && cfg.certificates.is_empty() {
        problems.push("proxy.https_listen: is set but no [[certificates]] are configured".into());
    }
    match table {
        Ok(table) if problems.is_empty() => Ok(Loaded {
            cfg,
            table,
            certs,
            default,
        }),
        _ => anyhow::bail!(
            "{} problem{} in the configuration:\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        ),
    }
}

/// Pingora binds inside its service threads, where a failure panics that thread while the
/// process keeps running without the port. Bind each address once here first so a taken or
/// forbidden port is a clear error and exit 1. (With `--upgrade` the old process holds them.)
fn check_listeners(cfg: &Config) -> anyhow::Result<()> {
    let addrs = [
        ("proxy.http_listen", Some(&cfg.proxy.http_listen)),
        ("proxy.https_listen", cfg.proxy.https_listen.as_ref()),
        ("admin.listen", Some(&cfg.admin.listen)),
    ];
    for (key, addr) in addrs {
        if let Some(addr) = addr {
            std::net::TcpListener::bind(addr.as_str())
                .with_context(|| format!("{key}: cannot listen on {addr}"))?;
        }
    }
    Ok(())
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(path: Option<&Path>, upgrade: bool) -> anyhow::Result<()> {
    let Loaded {
        mut cfg,
        table,
        certs,
        default,
    } = load(path)?;
    if !upgrade {
        check_listeners(&cfg)?;
    }
    init_logging(&cfg);
    pingora::tls::install_default_crypto_provider();

    let metrics = Arc::new(Metrics::new(cfg.proxy.max_route_metric_labels));
    let router = Arc::new(Router::new(&table, metrics.clone()));
    let store = Arc::new(CertificateStore::new());
    store.replace_all(&certs, default.and_then(|i| certs.get(i)));
    metrics.certificates.set(store.len() as i64);
    // `run_forever` never returns, so locals live as long as the process: keep only the
    // lookup indexes, not the parsed configuration they were built from.
    let (route_count, cert_count) = (table.routes.len(), certs.len());
    drop((table, certs));
    cfg.routes = Vec::new();

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, tenantgate_proxy::server_conf(&cfg));
    server.bootstrap();
    let edge = Edge {
        router,
        certs: store,
        metrics,
    };
    tenantgate_proxy::add_services(&mut server, &cfg, &edge).context("setting up services")?;
    tracing::info!(
        routes = route_count,
        certificates = cert_count,
        http = %cfg.proxy.http_listen,
        https = %cfg.proxy.https_listen.as_deref().unwrap_or("off"),
        admin = %cfg.admin.listen,
        upgrade,
        "tenantgate serving"
    );
    server.run_forever()
}
