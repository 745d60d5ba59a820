//! The `tenantgate` binary: command-line parsing and wiring of the crates, nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use tenantgate_certs::{generate_self_signed, parse_pem, CertificateStore, ParsedCertificate};
use tenantgate_config::{Config, LogFormat, RouteTable};
use tenantgate_control::domains::Domains;
use tenantgate_control::lifecycle::Lifecycle;
use tenantgate_control::publish::{follow, Event, FollowSettings, Wake};
use tenantgate_control::store::Store;
use tenantgate_control::{api, setup, upkeep};
use tenantgate_proxy::metrics::Metrics;
use tenantgate_proxy::router::Router;
use tenantgate_proxy::sync::EdgeState;
use tenantgate_proxy::{BackgroundTask, Edge};

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
    /// Edge node of a fleet: proxy only, routes and certificates from PostgreSQL (LISTEN for
    /// changes), booting from its last-known-good snapshot when PostgreSQL is down.
    Proxy {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TENANTGATE_CONFIG")]
        config: Option<PathBuf>,
        /// PostgreSQL URL of the shared store (overrides `store.url`).
        #[arg(long)]
        store_url: Option<String>,
        /// Take the listening sockets over from a running tenantgate.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Control plane of a fleet: the admin API on PostgreSQL, no proxy listeners.
    Control {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TENANTGATE_CONFIG")]
        config: Option<PathBuf>,
        /// PostgreSQL URL of the shared store (overrides `store.url`).
        #[arg(long)]
        store_url: Option<String>,
    },
    /// Validate a configuration file: print every problem with its key, exit 1 if any.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TENANTGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the blueprint files in a directory: print every problem with its file and
    /// key (exit 1), or each blueprint's components, routes and themes.
    CheckBlueprints {
        /// Directory of `*.toml` blueprints.
        #[arg(default_value = "deploy/blueprints")]
        dir: PathBuf,
    },
    /// Manage the operators who sign in to the dashboard (directly in the store named by the
    /// config: the embedded file or PostgreSQL).
    Operators {
        /// Configuration file (TOML): the store comes from it.
        #[arg(short, long, env = "TENANTGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: OperatorsAction,
    },
    /// Manage tenants through the admin API of a running node.
    Tenants {
        /// Configuration file (TOML): the admin address and token come from it.
        #[arg(short, long, env = "TENANTGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: TenantsAction,
    },
}

#[derive(Subcommand)]
enum OperatorsAction {
    /// Add an operator; the password (12-1024 characters) is read from the first line of
    /// standard input.
    Add {
        /// Sign-in name: 1-64 of a-z, 0-9, '.', '_', '-'.
        name: String,
    },
    /// List operators as JSON lines (name, created_at, last_sign_in).
    List,
    /// Remove an operator; their dashboard sessions end at once.
    Remove {
        /// Sign-in name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TenantsAction {
    /// List tenants as JSON lines.
    List {
        /// Only tenants with this status (provisioning, active, suspended, failed, deleted).
        #[arg(long)]
        status: Option<String>,
    },
    /// Create a tenant with upstreams of its own, or provisioned from a blueprint (answered
    /// at once with status "provisioning"; `tenants list` shows when it is active); prints
    /// it as JSON.
    Create {
        /// URL-safe short name; the tenant gets <slug>.<platform domain>.
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Backend address (ip:port); repeat for several.
        #[arg(
            long = "upstream",
            required_unless_present = "blueprint",
            conflicts_with = "blueprint"
        )]
        upstreams: Vec<String>,
        /// Provision from this blueprint (database, containers, route).
        #[arg(long)]
        blueprint: Option<String>,
        /// Theme of the blueprint (default: its default theme).
        #[arg(long, requires = "blueprint")]
        theme: Option<String>,
    },
    /// Delete a tenant by id.
    Delete {
        /// Tenant id.
        id: String,
    },
    /// Show one tenant (with its provisioning events) as JSON.
    Show {
        /// Tenant id.
        id: String,
    },
    /// Suspend a tenant: our 503 page, its containers stopped.
    Suspend {
        /// Tenant id.
        id: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// Tenant id.
        id: String,
    },
    /// Redeploy a provisioned tenant blue/green (blueprint as on disk now).
    Redeploy {
        /// Tenant id.
        id: String,
        /// Switch to this theme.
        #[arg(long)]
        theme: Option<String>,
    },
    /// Run this many containers of one component of a provisioned tenant.
    Scale {
        /// Tenant id.
        id: String,
        /// Component of its blueprint.
        #[arg(long)]
        component: String,
        /// Containers, 1-20.
        #[arg(long)]
        replicas: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckBlueprints { dir } => {
            match tenantgate_control::blueprint::Blueprint::load_dir(&dir) {
                Ok(all) => {
                    for b in all.values() {
                        println!(
                            "{}: components {}; routes {}; themes {} (default {})",
                            b.name,
                            b.components
                                .iter()
                                .map(|c| format!("{}×{} ({})", c.replicas, c.name, c.image))
                                .collect::<Vec<_>>()
                                .join(", "),
                            b.routes
                                .iter()
                                .map(|r| format!("{} → {}", r.path, r.component))
                                .collect::<Vec<_>>()
                                .join(", "),
                            b.themes.keys().cloned().collect::<Vec<_>>().join(", "),
                            b.default_theme
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
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
                let notes = block_on(setup::static_overlaps(&cfg, &table)).unwrap_or_else(|e| {
                    vec![format!(
                        "store not checked for conflicts with static routes: {e:#}"
                    )]
                });
                for note in notes {
                    println!("note: {note}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, upgrade } => exit(serve(config.as_deref(), upgrade, Role::Single)),
        Command::Proxy {
            config,
            store_url,
            upgrade,
        } => exit(serve(config.as_deref(), upgrade, Role::Proxy(store_url))),
        Command::Control { config, store_url } => {
            exit(serve(config.as_deref(), false, Role::Control(store_url)))
        }
        Command::Tenants { config, action } => exit(tenants(config.as_deref(), action)),
        Command::Operators { config, action } => exit(operators(config.as_deref(), action)),
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a process runs.
enum Role {
    /// `serve`: proxy + control in one process.
    Single,
    /// `proxy`: fleet edge node (store URL override).
    Proxy(Option<String>),
    /// `control`: fleet control plane (store URL override).
    Control(Option<String>),
}

/// `tenantgate tenants ...`: the admin API over loopback.
fn operators(path: Option<&Path>, action: OperatorsAction) -> anyhow::Result<()> {
    use tenantgate_control::dashboard::operators;
    let cfg = match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env_only()?,
    };
    block_on(async {
        let store = setup::open_store(&cfg, true).await?;
        match action {
            OperatorsAction::Add { name } => {
                let mut password = String::new();
                std::io::stdin()
                    .read_line(&mut password)
                    .context("reading the password from standard input")?;
                let password = password.trim_end_matches(['\r', '\n']);
                operators::add(&store, &name, password).await?;
                eprintln!("operator {name:?} added");
            }
            OperatorsAction::List => {
                for o in operators::list(&store).await? {
                    println!("{}", serde_json::to_string(&o)?);
                }
            }
            OperatorsAction::Remove { name } => {
                operators::remove(&store, &name).await?;
                eprintln!("operator {name:?} removed");
            }
        }
        anyhow::Ok(())
    })?
}

fn tenants(path: Option<&Path>, action: TenantsAction) -> anyhow::Result<()> {
    let cfg = match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env_only()?,
    };
    let (token, _) = setup::admin_token(&cfg)?;
    let client = tenantgate_control::client::AdminClient::new(&cfg.admin.listen, &token);
    match action {
        TenantsAction::List { status } => {
            let mut after: Option<String> = None;
            loop {
                let mut q = String::from("/v1/tenants?limit=500");
                if let Some(s) = &status {
                    q += &format!("&status={s}");
                }
                if let Some(a) = &after {
                    q += &format!("&after={a}");
                }
                let page = client.call("GET", &q, None)?;
                for t in page["items"].as_array().into_iter().flatten() {
                    println!("{t}");
                }
                match page["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => break,
                }
            }
        }
        TenantsAction::Create {
            slug,
            name,
            upstreams,
            blueprint,
            theme,
        } => {
            let body = match blueprint {
                Some(b) => {
                    let mut body = serde_json::json!({"slug": slug, "name": name, "blueprint": b});
                    if let Some(t) = theme {
                        body["theme"] = t.into();
                    }
                    body
                }
                None => serde_json::json!({"slug": slug, "name": name, "upstreams": upstreams}),
            };
            println!("{}", client.call("POST", "/v1/tenants", Some(&body))?);
        }
        TenantsAction::Delete { id } => {
            client.call("DELETE", &tenant_path(&id, "")?, None)?;
            println!("deleted {id}");
        }
        TenantsAction::Show { id } => {
            println!("{}", client.call("GET", &tenant_path(&id, "")?, None)?);
        }
        TenantsAction::Suspend { id } => {
            let path = tenant_path(&id, "/suspend")?;
            println!("{}", client.call("POST", &path, None)?);
        }
        TenantsAction::Resume { id } => {
            let path = tenant_path(&id, "/resume")?;
            println!("{}", client.call("POST", &path, None)?);
        }
        TenantsAction::Redeploy { id, theme } => {
            let body = match theme {
                Some(t) => serde_json::json!({ "theme": t }),
                None => serde_json::json!({}),
            };
            let path = tenant_path(&id, "/redeploy")?;
            println!("{}", client.call("POST", &path, Some(&body))?);
        }
        TenantsAction::Scale {
            id,
            component,
            replicas,
        } => {
            let body = serde_json::json!({"component": component, "replicas": replicas});
            let path = tenant_path(&id, "/scale")?;
            println!("{}", client.call("POST", &path, Some(&body))?);
        }
    }
    Ok(())
}

/// `/v1/tenants/<id><rest>`. An id that is not one plain path segment is refused: `x/../..`
/// would otherwise address another resource of the API.
fn tenant_path(id: &str, rest: &str) -> anyhow::Result<String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if id.is_empty() || !id.bytes().all(plain) {
        anyhow::bail!("{id:?} is not a tenant id (letters, digits, '_' and '-' only)");
    }
    Ok(format!("/v1/tenants/{id}{rest}"))
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

/// The node's connection limit: `configured`, or (0) what the open-files limit allows,
/// after raising the soft limit to the hard one as servers do. Each proxied connection may
/// hold an upstream connection too, and the store, the log and the listeners need some.
fn connection_budget(configured: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    };
    let derived = usize::try_from(limit.saturating_sub(256) / 2)
        .unwrap_or(usize::MAX)
        .max(64);
    let budget = if configured == 0 { derived } else { configured };
    tracing::info!(
        open_files = limit,
        max_connections = budget,
        "client connection limit"
    );
    budget
}

/// Pingora binds inside its service threads, where a failure panics that thread while the
/// process keeps running without the port. Bind each address once here first so a taken or
/// forbidden port is a clear error and exit 1. (With `--upgrade` the old process holds them.)
fn check_listeners(cfg: &Config, proxy: bool) -> anyhow::Result<()> {
    let addrs = [
        (
            "proxy.http_listen",
            Some(&cfg.proxy.http_listen).filter(|_| proxy),
        ),
        (
            "proxy.https_listen",
            cfg.proxy.https_listen.as_ref().filter(|_| proxy),
        ),
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

fn serve(path: Option<&Path>, upgrade: bool, role: Role) -> anyhow::Result<()> {
    let Loaded {
        mut cfg,
        table,
        certs,
        default,
    } = load(path)?;
    match &role {
        Role::Proxy(Some(url)) | Role::Control(Some(url)) => cfg.store.url = Some(url.clone()),
        _ => {}
    }
    if matches!(role, Role::Proxy(_) | Role::Control(_)) && cfg.store.url.is_none() {
        anyhow::bail!("store.url: a fleet node needs the shared PostgreSQL store (--store-url or [store] url)");
    }
    let is_proxy = !matches!(role, Role::Control(_));
    if !upgrade {
        check_listeners(&cfg, is_proxy)?;
    }
    init_logging(&cfg);
    pingora::tls::install_default_crypto_provider();
    if is_proxy {
        cfg.proxy.max_connections = connection_budget(cfg.proxy.max_connections);
    }

    let sealing = setup::sealing_key(&cfg)?;
    let metrics = Arc::new(Metrics::new(cfg.proxy.max_route_metric_labels));
    let router = Arc::new(Router::with_policy(
        &table,
        metrics.clone(),
        cfg.upstream_policy(),
    ));
    let store_certs = Arc::new(CertificateStore::new());
    let default_cert = default.and_then(|i| certs.get(i)).cloned();
    let (route_count, cert_count) = (table.routes.len(), certs.len());
    let static_names: Vec<_> = table
        .routes
        .iter()
        .flat_map(|r| r.hostnames.iter().cloned())
        .collect();
    // Fleet proxies keep a last-known-good copy; a single node's store is local.
    let snapshot_path = matches!(role, Role::Proxy(_)).then(|| cfg.store.snapshot_path.clone());
    let state = Arc::new(EdgeState::new(
        router.clone(),
        store_certs.clone(),
        Some(sealing.clone()),
        table,
        certs,
        default_cert,
        snapshot_path,
    ));
    metrics.certificates.set(store_certs.len() as i64);
    cfg.routes = Vec::new();

    // Stores are opened inside the runtime that will use them (Pingora's, once it runs);
    // migrations run here first so a broken store stops the start with a clear error.
    let store = match role {
        Role::Proxy(_) => {
            // A damaged last-known-good file must not keep the proxy down: the store, once
            // reached, replaces it.
            match state.load_snapshot_file() {
                Ok(true) => tracing::info!(
                    version = state.version(),
                    "booted from the last-known-good snapshot"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!("ignoring the last-known-good snapshot: {e}"),
            }
            Arc::new(block_on(setup::open_store(&cfg, false))??)
        }
        Role::Single | Role::Control(_) => Arc::new(block_on(setup::open_store(&cfg, true))??),
    };
    let domains = match role {
        Role::Proxy(_) => None,
        Role::Single | Role::Control(_) => Some(
            Domains::new(&cfg, store.clone(), sealing.clone(), static_names.clone())
                .map_err(|e| anyhow::anyhow!("custom domains: {e}"))?,
        ),
    };
    let lifecycle = match role {
        Role::Proxy(_) => None,
        Role::Single | Role::Control(_) => Some(
            Lifecycle::new(&cfg, store.clone(), sealing.clone())
                .map_err(|e| anyhow::anyhow!("tenant provisioning: {e}"))?,
        ),
    };
    let dashboard_settings = tenantgate_control::dashboard::Settings::from_config(&cfg);
    let api_router = match (&domains, &lifecycle) {
        (Some(domains), Some(lifecycle)) => {
            let (token, from) = setup::admin_token(&cfg)?;
            tracing::info!(token_from = %from, "admin API enabled on {}", cfg.admin.listen);
            Some(api::router(
                api::ApiState::new(
                    store.clone(),
                    setup::input_rules(&cfg),
                    sealing,
                    domains.clone(),
                    lifecycle.clone(),
                    &token,
                )
                .with_dashboard(dashboard_settings.clone()),
            ))
        }
        _ => None,
    };

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, tenantgate_proxy::server_conf(&cfg));
    server.bootstrap();
    // The control plane's workers share one background service (one thread and runtime):
    // each service is a thread of its own, and every thread a heap of the allocator's, with
    // a page per object size it has used (about 1.5 MiB each at rest).
    let mut control: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        Vec::new();
    // Control-plane nodes keep the change log bounded (idempotent if several do it).
    if !matches!(role, Role::Proxy(_)) {
        control.push(Box::pin(upkeep::prune_forever(
            store.clone(),
            cfg.store.change_log_keep,
            dashboard_settings.sessions,
        )));
    }
    if let Some(domains) = domains {
        control.push(Box::pin(domains.run()));
    }
    // Sleeping stores are woken by control: asked in process on `serve`, through the store
    // (a row and a NOTIFY) by a fleet's proxies.
    let mut waker: Option<Arc<dyn tenantgate_proxy::service::hold::Waker>> = None;
    if let Some(lifecycle) = lifecycle {
        let asks = match role {
            Role::Single => {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                waker = Some(Arc::new(InProcessWaker(tx)));
                let counted = router.clone();
                lifecycle.with_local_in_flight(Arc::new(move |id| counted.in_flight(id)));
                Some(rx)
            }
            _ => None,
        };
        control.push(Box::pin(
            lifecycle.clone().serve_wakes(asks, cfg.store.url.clone()),
        ));
        control.push(Box::pin(lifecycle.run()));
    } else if is_proxy {
        waker = Some(Arc::new(StoreWaker(store.clone())));
    }
    if !control.is_empty() {
        server.add_service(background_service(
            "control plane",
            BackgroundTask::new(async move {
                let mut all = tokio::task::JoinSet::new();
                for task in control {
                    all.spawn(task);
                }
                while all.join_next().await.is_some() {}
            }),
        ));
    }
    // A `control` node serves no routes: it is ready while its store answers.
    let probe: Option<tenantgate_proxy::admin::ReadyProbe> = if is_proxy {
        None
    } else {
        let health = upkeep::StoreHealth::default();
        server.add_service(background_service(
            "store health",
            BackgroundTask::new(health.clone().watch(store.clone())),
        ));
        Some(Arc::new(move || health.problem()))
    };
    // Every node reports itself to the store's registry; a proxy learns from it how many
    // proxies share the fleet's limits.
    let node = upkeep::this_node(match role {
        Role::Single => "serve",
        Role::Proxy(_) => "proxy",
        Role::Control(_) => "control",
    })?;
    // Every proxy node reports its per-tenant traffic for the dashboard.
    if is_proxy {
        let counted = router.clone();
        server.add_service(background_service(
            "traffic reports",
            BackgroundTask::new(upkeep::report_traffic_forever(
                store.clone(),
                node.id.clone(),
                std::time::Duration::from_secs(cfg.admin.traffic_report_seconds),
                move || counted.take_traffic(),
            )),
        ));
    }
    let share = (is_proxy && cfg.proxy.fleet_share).then(|| router.clone());
    let served = is_proxy.then(|| state.clone());
    server.add_service(background_service(
        "node heartbeat",
        BackgroundTask::new(upkeep::heartbeat_forever(
            store.clone(),
            node,
            move || served.as_ref().map_or(0, |s| s.version()),
            move |n| {
                if let Some(r) = &share {
                    r.set_fleet_nodes(n);
                }
            },
        )),
    ));
    let edge = Edge {
        router,
        certs: store_certs,
        challenges: state.challenges().clone(),
        metrics,
        state: Some(state.clone()),
        probe,
        waker,
    };
    if is_proxy {
        // On PostgreSQL other nodes may write too (a `control` beside this `serve`), so
        // follow NOTIFY; the embedded store has one writer, this process.
        let wake = match &cfg.store.url {
            Some(url) => Wake::Postgres(url.clone()),
            None => Wake::InProcess,
        };
        server.add_service(background_service(
            "store follower",
            BackgroundTask::new(follow_store(store, wake, state)),
        ));
        tenantgate_proxy::add_services(&mut server, &cfg, &edge, api_router)
            .context("setting up services")?;
    } else {
        tenantgate_proxy::add_admin_only(&mut server, &cfg, &edge, api_router);
    }
    tracing::info!(
        static_routes = route_count,
        static_certificates = cert_count,
        http = %cfg.proxy.http_listen,
        https = %cfg.proxy.https_listen.as_deref().unwrap_or("off"),
        admin = %cfg.admin.listen,
        store = cfg.store.url.as_deref().map_or("sqlite", |_| "postgres"),
        upgrade,
        "tenantgate serving"
    );
    server.run_forever()
}

/// Wakes asked for by this process's proxy, taken by its own lifecycle (`serve`).
struct InProcessWaker(tokio::sync::mpsc::Sender<String>);

impl tenantgate_proxy::service::hold::Waker for InProcessWaker {
    fn wake(&self, id: &str) {
        // A full channel means wakes are being taken already; the hold asks again.
        let _ = self.0.try_send(id.to_owned());
    }
}

/// Wakes asked for by a fleet proxy: written into the shared store, which tells control
/// nodes (NOTIFY; they also poll it).
struct StoreWaker(Arc<Store>);

impl tenantgate_proxy::service::hold::Waker for StoreWaker {
    fn wake(&self, id: &str) {
        let (store, id) = (self.0.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = store.request_wake(&id).await {
                tracing::warn!(tenant = %id, "cannot ask for a wake: {e}");
            }
        });
    }
}

/// Follow the store and apply what it publishes to this node's routes and certificates.
async fn follow_store(store: Arc<Store>, wake: Wake, state: Arc<EdgeState>) {
    follow(
        store,
        wake,
        FollowSettings::default(),
        move |event| match event {
            Event::Snapshot(s) => state.apply_snapshot(s),
            Event::Delta(d) => state.apply_delta(&d),
            Event::SourceDown(reason) => state.source_down(reason),
        },
    )
    .await;
}

/// Run setup work that needs async I/O before the server's runtimes exist.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the setup runtime")?
        .block_on(f))
}
