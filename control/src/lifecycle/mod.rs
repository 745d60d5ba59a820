//! Tenant lifecycle: provisioning a tenant from a blueprint (database schema and role,
//! network, containers, health checks, route), suspending and resuming it, redeploying it
//! blue/green, deleting it, and the reconcile loop that keeps the containers the runtime
//! reports equal to what the store wants ([`reconcile`]).
//!
//! Invariants:
//! - a tenant is routed only to containers that answered their health check;
//! - provisioning either ends `active` or `failed` with a reason, and a failed attempt leaves
//!   no container, network, schema or role behind;
//! - a redeploy switches the route to the new generation in one version, after it is
//!   healthy, and removes the old generation only after `drain_seconds`;
//! - one node at a time works on a tenant (the store's tenant lease), and the reconciler
//!   leaves a leased tenant alone;
//! - database passwords are sealed in the store and reach containers only through env;
//!   they are never logged or shown in events.

pub mod reconcile;
pub mod sleep;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tenantgate_certs::SealingKey;
use tenantgate_config::{Config, Retention};

use crate::blueprint::{Blueprint, Component, Context, DatabaseKind};
use crate::model::{Tenant, TenantStatus};
use crate::runtime::docker::{Docker, NetworkPool};
use crate::runtime::{Container, ContainerSpec, Runtime, RuntimeError};
use crate::store::{Deployment, Store};
use crate::tenantdb::TenantDb;
use crate::{now_ms, random_id, Error, Result};

/// Who the audit trail names for lifecycle changes.
pub const ACTOR: &str = "provisioner";

/// How long a node's hold on a tenant lasts unless renewed; it is renewed every third of
/// this while the work goes on, so a crashed node's tenant is taken over this soon.
const LEASE: Duration = Duration::from_secs(30);

/// The setting naming this installation's containers.
const INSTANCE_SETTING: &str = "runtime.instance";

/// Prometheus metrics of the tenant lifecycle (default registry, served on `/metrics`).
pub(crate) struct LifecycleMetrics {
    /// Provisioned tenants by status (from the store, each reconcile pass).
    pub(crate) tenants: prometheus::IntGaugeVec,
    /// Provision, redeploy, scale and repair runs of this node, by result.
    pub(crate) operations: prometheus::IntCounterVec,
    /// Seconds from taking a tenant to its route being published (this node).
    pub(crate) provisioning: prometheus::Histogram,
}

pub(crate) fn metrics() -> &'static LifecycleMetrics {
    static M: std::sync::OnceLock<LifecycleMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let tenants = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "tenantgate_provisioned_tenants",
                "Tenants provisioned from blueprints, by status",
            ),
            &["status"],
        )
        .expect("valid metric");
        let operations = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tenantgate_lifecycle_operations_total",
                "Provision, redeploy, scale and repair runs of this node, by result",
            ),
            &["operation", "result"],
        )
        .expect("valid metric");
        let provisioning = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "tenantgate_provisioning_seconds",
                "Time from taking a new tenant to its route being published",
            )
            .buckets(vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0]),
        )
        .expect("valid metric");
        let _ = prometheus::register(Box::new(tenants.clone()));
        let _ = prometheus::register(Box::new(operations.clone()));
        let _ = prometheus::register(Box::new(provisioning.clone()));
        LifecycleMetrics {
            tenants,
            operations,
            provisioning,
        }
    })
}

fn count(operation: &str, ok: bool) {
    metrics()
        .operations
        .with_label_values(&[operation, if ok { "ok" } else { "failed" }])
        .inc();
}

/// Tenant lifecycle service.
pub struct Lifecycle {
    store: Arc<Store>,
    runtime: Option<Arc<dyn Runtime>>,
    tenant_db: Option<TenantDb>,
    db_host: Option<String>,
    host_address: tokio::sync::OnceCell<String>,
    db_port: Option<u16>,
    sealing: Arc<SealingKey>,
    blueprints_dir: PathBuf,
    blueprints: RwLock<Arc<BTreeMap<String, Blueprint>>>,
    blueprint_problems: RwLock<Vec<String>>,
    platform_domain: String,
    drain: Duration,
    reconcile_every: Duration,
    retention: Retention,
    node: String,
    instance: tokio::sync::OnceCell<String>,
    http: reqwest::Client,
    /// Where upstreams may point; containers' published addresses are checked too.
    policy: tenantgate_config::UpstreamPolicy,
    /// Stores this node is waking now (concurrent asks share one wake).
    waking: std::sync::Mutex<std::collections::HashSet<String>>,
    /// This process's own proxy, when it has one (`serve`): a store's requests in flight
    /// there, checked before its containers are frozen or stopped.
    local_in_flight: std::sync::OnceLock<InFlightProbe>,
}

/// Requests in flight for a tenant on this process's proxy.
pub type InFlightProbe = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

/// A container started for a tenant, and the component of the blueprint it runs.
struct Started<'b> {
    component: &'b Component,
    container: Container,
}

impl Lifecycle {
    /// The service for `cfg`: blueprints loaded from `[provisioning] blueprints_dir`, the
    /// Docker Engine from the environment (contacted only when needed), the tenant-database
    /// server from `[tenant_db]`.
    pub fn new(cfg: &Config, store: Arc<Store>, sealing: Arc<SealingKey>) -> Result<Arc<Self>> {
        let p = &cfg.provisioning;
        let pool = (!p.network_pool.is_empty())
            .then(|| NetworkPool::parse(&p.network_pool, p.network_prefix))
            .transpose()
            .map_err(|e| Error::invalid("config", format!("provisioning.network_pool: {e}")))?;
        let runtime: Option<Arc<dyn Runtime>> = match Docker::connect() {
            Ok(d) => Some(Arc::new(match pool {
                Some(pool) => d.with_network_pool(pool),
                None => d,
            })),
            Err(e) => {
                tracing::warn!("tenant provisioning has no container runtime: {e}");
                None
            }
        };
        Self::with_runtime(cfg, store, sealing, runtime)
    }

    /// The service over a given runtime (`None`: provisioning answers 503).
    pub fn with_runtime(
        cfg: &Config,
        store: Arc<Store>,
        sealing: Arc<SealingKey>,
        runtime: Option<Arc<dyn Runtime>>,
    ) -> Result<Arc<Self>> {
        let tenant_db = cfg
            .tenant_db
            .url
            .as_deref()
            .map(TenantDb::new)
            .transpose()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        let lc = Lifecycle {
            store,
            runtime,
            tenant_db,
            db_host: cfg.tenant_db.container_host.clone(),
            host_address: tokio::sync::OnceCell::new(),
            db_port: cfg.tenant_db.container_port,
            sealing,
            blueprints_dir: cfg.provisioning.blueprints_dir.clone(),
            blueprints: RwLock::new(Arc::new(BTreeMap::new())),
            blueprint_problems: RwLock::new(Vec::new()),
            platform_domain: cfg.platform.domain.to_ascii_lowercase(),
            drain: Duration::from_secs(cfg.provisioning.drain_seconds),
            reconcile_every: Duration::from_secs(cfg.provisioning.reconcile_seconds.max(1)),
            retention: cfg.provisioning.retention,
            node: random_id("n_")?,
            instance: tokio::sync::OnceCell::new(),
            http,
            policy: cfg.upstream_policy(),
            waking: Default::default(),
            local_in_flight: std::sync::OnceLock::new(),
        };
        lc.reload_blueprints();
        Ok(Arc::new(lc))
    }

    /// Let the lifecycle see this process's proxy's requests in flight (`serve`): a store is
    /// not frozen or stopped under a request that started after the last activity report.
    pub fn with_local_in_flight(&self, probe: InFlightProbe) {
        let _ = self.local_in_flight.set(probe);
    }

    /// Read the blueprint directory again. A directory with a broken file keeps the
    /// blueprints loaded before, and the problems are reported (and logged).
    pub fn reload_blueprints(&self) {
        if !self.blueprints_dir.is_dir() {
            *write(&self.blueprint_problems) = vec![format!(
                "{}: no such directory (provisioning.blueprints_dir)",
                self.blueprints_dir.display()
            )];
            return;
        }
        match Blueprint::load_dir(&self.blueprints_dir) {
            Ok(map) => {
                *write(&self.blueprints) = Arc::new(map);
                write(&self.blueprint_problems).clear();
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!("blueprint not loaded: {p}");
                }
                *write(&self.blueprint_problems) = problems;
            }
        }
    }

    /// The loaded blueprints.
    pub fn blueprints(&self) -> Arc<BTreeMap<String, Blueprint>> {
        read(&self.blueprints).clone()
    }

    /// The blueprint tenant `d` runs from, as loaded now.
    fn blueprint_of(&self, d: &Deployment) -> Result<Blueprint, String> {
        read(&self.blueprints)
            .get(&d.blueprint)
            .cloned()
            .ok_or_else(|| format!("blueprint {:?} is no longer loaded", d.blueprint))
    }

    fn runtime(&self) -> Result<&Arc<dyn Runtime>> {
        self.runtime.as_ref().ok_or_else(|| Error::Dependency {
            code: "runtime_unavailable",
            message: "container runtime: no Docker Engine is configured here".into(),
        })
    }

    /// Check that a tenant with `blueprint` and `theme` can be provisioned now: the
    /// blueprint and theme exist, what it needs is configured, and the runtime answers.
    /// Returns the theme to use. Nothing is created.
    pub async fn admit(&self, blueprint: &str, theme: Option<&str>) -> Result<String> {
        let all = self.blueprints();
        let Some(b) = all.get(blueprint) else {
            let problems = read(&self.blueprint_problems).clone();
            let known: Vec<&str> = all.keys().map(String::as_str).collect();
            return Err(Error::invalid(
                "unknown_blueprint",
                if known.is_empty() && !problems.is_empty() {
                    format!(
                        "blueprint {blueprint:?}: no blueprints are loaded ({})",
                        problems.join("; ")
                    )
                } else {
                    format!(
                        "blueprint {blueprint:?} does not exist (known: {})",
                        known.join(", ")
                    )
                },
            ));
        };
        let theme = theme.unwrap_or(&b.default_theme);
        if !b.themes.contains_key(theme) {
            return Err(Error::invalid(
                "unknown_theme",
                format!(
                    "theme {theme:?} is not one of blueprint {blueprint:?}'s ({})",
                    b.themes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if b.database != DatabaseKind::None {
            let Some(db) = &self.tenant_db else {
                return Err(Error::invalid(
                    "no_tenant_database",
                    format!("blueprint {blueprint:?} needs a tenant database: set [tenant_db] url"),
                ));
            };
            db.ping().await?;
        }
        self.runtime()?.ping().await.map_err(unavailable)?;
        Ok(theme.to_owned())
    }

    /// Whether the runtime answers (deleting or changing a provisioned tenant needs it).
    pub async fn ready(&self) -> Result<()> {
        self.runtime()?.ping().await.map_err(unavailable)
    }

    /// Learn how containers reach the host (once), for the tenant database's address: an
    /// address, so images without a resolver (`FROM scratch`) reach it too.
    async fn learn_host_address(&self) -> Result<(), String> {
        if self.db_host.is_some() {
            return Ok(());
        }
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        self.host_address
            .get_or_try_init(|| async {
                runtime
                    .host_address()
                    .await
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .await
            .map(|_| ())
    }

    /// This installation's id, shared by every node of the store (created once).
    async fn instance(&self) -> Result<&str> {
        self.instance
            .get_or_try_init(|| async {
                let fresh = random_id("")?;
                let kept = self
                    .store
                    .setting_once(INSTANCE_SETTING, fresh.as_bytes())
                    .await?;
                Ok::<_, Error>(String::from_utf8_lossy(&kept).into_owned())
            })
            .await
            .map(String::as_str)
    }

    async fn event(&self, id: &str, message: &str) {
        tracing::info!(tenant = id, "{message}");
        if let Err(e) = self.store.tenant_event(id, message).await {
            tracing::warn!(tenant = id, "cannot record event {message:?}: {e}");
        }
    }

    /// Run `work` holding tenant `id`'s lease (renewed while it runs); `None` when another
    /// node holds the tenant, or the lease cannot be taken.
    pub(crate) async fn with_lease<T>(
        &self,
        id: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let until = || now_ms() + LEASE.as_millis() as i64;
        match self.store.claim_tenant(id, &self.node, until()).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(tenant = id, "cannot take the tenant: {e}");
                return None;
            }
        }
        tokio::pin!(work);
        let out = loop {
            tokio::select! {
                out = &mut work => break out,
                () = tokio::time::sleep(LEASE / 3) => {
                    if let Err(e) = self.store.renew_tenant(id, &self.node, until()).await {
                        tracing::warn!(tenant = id, "cannot renew the tenant's lease: {e}");
                    }
                }
            }
        };
        if let Err(e) = self.store.release_tenant(id, &self.node).await {
            tracing::warn!(tenant = id, "cannot release the tenant: {e}");
        }
        Some(out)
    }

    /// Provision tenant `id` (stored as `provisioning`) unless another node is at it.
    pub async fn provision(self: Arc<Self>, id: String) {
        let lc = self.clone();
        self.with_lease(&id, lc.provision_held(&id)).await;
    }

    async fn provision_held(&self, id: &str) {
        let id = id.to_owned();
        let started = std::time::Instant::now();
        let outcome = self.try_provision(&id).await;
        if !matches!(outcome, Ok(false)) {
            count("provision", outcome.is_ok());
        }
        match outcome {
            Ok(true) => {
                metrics()
                    .provisioning
                    .observe(started.elapsed().as_secs_f64());
                self.event(
                    &id,
                    &format!(
                        "live: routed to healthy containers ({} ms)",
                        started.elapsed().as_millis()
                    ),
                )
                .await;
            }
            Ok(false) => {}
            Err(reason) => {
                self.event(&id, &format!("failed: {reason}")).await;
                match self.store.deployment(&id).await {
                    Ok(d) => {
                        self.teardown(&d, true).await;
                        self.event(
                            &id,
                            "rolled back: containers, network, schema and role removed",
                        )
                        .await;
                    }
                    Err(e) => tracing::error!(tenant = %id, "cannot roll back: {e}"),
                }
                if let Err(e) = self.store.fail_tenant(ACTOR, &id, &reason).await {
                    tracing::warn!(tenant = %id, "cannot mark the tenant failed: {e}");
                }
            }
        }
    }

    /// `Ok(true)`: provisioned; `Ok(false)`: nothing to do; `Err`: why it failed.
    async fn try_provision(&self, id: &str) -> Result<bool, String> {
        let d = self.store.deployment(id).await.map_err(|e| e.to_string())?;
        if d.status != "provisioning" {
            return Ok(false);
        }
        let b = &self.blueprint_of(&d)?;
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        // Leftovers of an attempt a crashed node did not finish.
        self.remove_containers(&d, |_| true)
            .await
            .map_err(|e| e.to_string())?;
        for c in &b.components {
            runtime
                .ensure_image(&c.image)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.event(id, "images present").await;
        let password = match (b.database, &self.tenant_db) {
            (DatabaseKind::None, _) => None,
            (kind, Some(db)) => {
                let created = if kind == DatabaseKind::Database {
                    db.provision_database(&d.slug).await
                } else {
                    db.provision(&d.slug).await
                }
                .map_err(|e| e.to_string())?;
                let sealed = self
                    .sealing
                    .seal(created.password.as_bytes())
                    .map_err(|e| e.to_string())?;
                self.store
                    .set_db_secret(id, Some(&sealed))
                    .await
                    .map_err(|e| e.to_string())?;
                let what = match &created.database {
                    Some(name) => format!("database: database and role {name} created"),
                    None => format!("database: schema and role {} created", created.schema),
                };
                self.event(id, &what).await;
                Some(created.password)
            }
            (_, None) => return Err("no tenant database is configured".into()),
        };
        let instance = self.instance().await.map_err(|e| e.to_string())?;
        runtime
            .ensure_network(&network_name(instance, id), id)
            .await
            .map_err(|e| e.to_string())?;
        self.event(id, "network created").await;
        let generation = d.generation + 1;
        let started = self
            .start_generation(&d, b, generation, &d.theme, password.as_deref())
            .await?;
        let upstreams = served_addresses(b, &started);
        self.permitted(&upstreams)?;
        self.store
            .deploy(ACTOR, id, generation, &d.theme, &upstreams, None)
            .await
            .map_err(|e| format!("publishing the route: {e}"))?;
        Ok(true)
    }

    /// Start every container of `generation` and wait until all are healthy; on failure the
    /// containers started here are removed again.
    async fn start_generation<'b>(
        &self,
        d: &Deployment,
        b: &'b Blueprint,
        generation: u64,
        theme: &str,
        password: Option<&str>,
    ) -> Result<Vec<Started<'b>>, String> {
        self.learn_host_address().await?;
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        let instance = self.instance().await.map_err(|e| e.to_string())?.to_owned();
        let mut started: Vec<Started> = Vec::new();
        let outcome = async {
            for c in &b.components {
                for replica in 1..=replicas(d, c) {
                    let spec =
                        self.spec(&instance, d, b, c, generation, replica, theme, password)?;
                    // A container of that name left by an interrupted attempt goes first.
                    runtime
                        .remove(&spec.name)
                        .await
                        .map_err(|e| e.to_string())?;
                    let container = runtime.run(&spec).await.map_err(|e| e.to_string())?;
                    self.event(&d.id, &format!("container {} started", spec.name))
                        .await;
                    started.push(Started {
                        component: c,
                        container,
                    });
                }
            }
            self.wait_all_healthy(&started).await?;
            self.event(&d.id, &format!("generation {generation} healthy"))
                .await;
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => Ok(started),
            Err(e) => {
                for s in &started {
                    let _ = runtime.remove(&s.container.id).await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spec(
        &self,
        instance: &str,
        d: &Deployment,
        b: &Blueprint,
        c: &Component,
        generation: u64,
        replica: u32,
        theme: &str,
        password: Option<&str>,
    ) -> Result<ContainerSpec, String> {
        let component = c.name.as_str();
        let (database_url, database_schema) = match (password, &self.tenant_db) {
            (Some(pw), Some(db)) => {
                let creds = crate::tenantdb::TenantDatabase::for_tenant(
                    &d.slug,
                    pw.to_owned(),
                    b.database == DatabaseKind::Database,
                )
                .map_err(|e| e.to_string())?;
                let schema = creds.schema.clone();
                (
                    creds.url(
                        self.db_host
                            .as_deref()
                            .or(self.host_address.get().map(String::as_str))
                            .unwrap_or("host.docker.internal"),
                        self.db_port.unwrap_or(db.port()),
                        db.dbname(),
                    ),
                    schema,
                )
            }
            _ => (String::new(), String::new()),
        };
        let ctx = Context {
            slug: d.slug.clone(),
            name: d.name.clone(),
            id: d.id.clone(),
            hostname: format!("{}.{}", d.slug, self.platform_domain),
            database_url,
            database_schema,
        };
        let env = b.env(component, Some(theme), &ctx)?;
        Ok(ContainerSpec {
            name: format!(
                "tg-{}-{}-{component}-g{generation}-{replica}",
                short(instance),
                d.id
            ),
            image: c.image.clone(),
            command: c.command.clone(),
            env,
            instance: instance.to_owned(),
            tenant: d.id.clone(),
            component: component.to_owned(),
            generation,
            network: network_name(instance, &d.id),
            port: c.port,
            cpus: c.resources.cpus,
            memory_bytes: c.resources.memory_mb << 20,
        })
    }

    /// Wait, all at once, until every container answers its component's health check.
    async fn wait_all_healthy(&self, containers: &[Started<'_>]) -> Result<(), String> {
        let checks = containers.iter().map(|s| {
            let h = &s.component.health;
            self.wait_healthy(
                &s.container,
                &h.path,
                Duration::from_secs(h.timeout_seconds),
            )
        });
        for r in futures_util::future::join_all(checks).await {
            r?;
        }
        Ok(())
    }

    /// Poll `path` on the container until it answers 2xx, up to `timeout`.
    async fn wait_healthy(
        &self,
        c: &Container,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let addr = c
            .address
            .ok_or_else(|| format!("container {} has no published port", c.name))?;
        let url = format!("http://{addr}{path}");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => format!("{e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "container {} was not healthy within {}s ({path}: {last})",
                    c.name,
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tenant's database password, opened from the store.
    fn password(&self, d: &Deployment) -> Result<Option<String>, String> {
        d.db_secret
            .as_deref()
            .map(|s| {
                self.sealing
                    .open(s)
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .map_err(|e| format!("tenant database password: {e}"))
            })
            .transpose()
    }

    /// Remove the tenant's containers matching `which`.
    async fn remove_containers(
        &self,
        d: &Deployment,
        which: impl Fn(&Container) -> bool,
    ) -> Result<usize, RuntimeError> {
        let runtime = self
            .runtime()
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        let instance = self
            .instance()
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        let mut n = 0;
        for c in runtime.list(instance, Some(&d.id)).await? {
            if which(&c) {
                runtime.remove(&c.id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Remove everything the tenant has on the runtime, and with `drop_data` its schema and
    /// role (or, with retention `keep`, lock the role). Best effort: failures are logged and
    /// left to the reconciler.
    async fn teardown(&self, d: &Deployment, drop_data: bool) {
        if let Err(e) = self.remove_containers(d, |_| true).await {
            tracing::warn!(tenant = %d.id, "cannot remove containers: {e}");
        }
        if let (Ok(runtime), Ok(instance)) = (self.runtime(), self.instance().await) {
            if let Err(e) = runtime.remove_network(&network_name(instance, &d.id)).await {
                tracing::warn!(tenant = %d.id, "cannot remove the network: {e}");
            }
        }
        if drop_data {
            if let Some(db) = &self.tenant_db {
                let done = match self.retention {
                    Retention::Drop => db.drop_tenant(&d.slug).await,
                    Retention::Keep => db.lock_tenant(&d.slug).await,
                };
                match done {
                    Ok(()) => {
                        let _ = self.store.set_db_secret(&d.id, None).await;
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %d.id, "cannot remove the tenant database: {e}")
                    }
                }
            }
        }
    }

    /// Like [`Lifecycle::with_lease`], waiting up to `wait` for another holder (a repair,
    /// a redeploy) to finish; `None` when it did not in time.
    async fn with_lease_waiting<T, Fut: std::future::Future<Output = T>>(
        &self,
        id: &str,
        wait: Duration,
        work: impl Fn() -> Fut,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(out) = self.with_lease(id, work()).await {
                return Some(out);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn busy(id: &str) -> Error {
        Error::Conflict(format!(
            "tenant {id:?} is busy (provisioning, redeploy or a repair); retry"
        ))
    }

    /// Delete provisioned tenant `id`: the store first (it stops routing everywhere), then
    /// its containers, network and (per retention) data, holding the tenant so no repair
    /// recreates what is being removed. A tenant still provisioning is not waited for: its
    /// worker finds it deleted and removes what it made.
    pub async fn delete(&self, actor: &str, id: &str) -> Result<()> {
        let work = || async {
            self.store.delete_tenant(actor, id).await?;
            self.deleted(id).await;
            Ok::<(), Error>(())
        };
        match self.with_lease_waiting(id, LEASE / 2, work).await {
            Some(r) => r,
            None => {
                self.store.delete_tenant(actor, id).await?;
                self.deleted(id).await;
                Ok(())
            }
        }
    }

    async fn deleted(&self, id: &str) {
        match self.store.deployment(id).await {
            Ok(d) => {
                self.teardown(&d, true).await;
                self.event(id, "deleted: containers and network removed")
                    .await;
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(tenant = id, "cannot clean up: {e}"),
        }
    }

    /// Suspend provisioned tenant `id`: the store first (our 503 page on every proxy at
    /// once), then its containers are stopped (left running ones are stopped by the
    /// reconciler).
    pub async fn suspend(&self, actor: &str, id: &str) -> Result<Tenant> {
        let work = || async {
            let tenant = self
                .store
                .set_status(actor, id, TenantStatus::Suspended)
                .await?;
            if let Err(e) = self.stop_containers(id).await {
                tracing::warn!(tenant = id, "containers not stopped yet: {e}");
            }
            Ok(tenant)
        };
        self.with_lease_waiting(id, LEASE / 2, work)
            .await
            .unwrap_or_else(|| Err(Self::busy(id)))
    }

    async fn stop_containers(&self, id: &str) -> Result<()> {
        let runtime = self.runtime()?;
        let instance = self.instance().await?;
        for c in runtime
            .list(instance, Some(id))
            .await
            .map_err(unavailable)?
        {
            runtime.stop(&c.id).await.map_err(unavailable)?;
        }
        self.event(id, "suspended: containers stopped").await;
        Ok(())
    }

    /// Resume provisioned tenant `id`: its containers are started and healthy, and routed
    /// to where they listen now, before the store makes it active again.
    pub async fn resume(&self, actor: &str, id: &str) -> Result<Tenant> {
        let work = || async {
            let d = self.store.deployment(id).await?;
            if d.status == "suspended" {
                self.ensure_running(&d)
                    .await
                    .map_err(|e| Error::Dependency {
                        code: "runtime_unavailable",
                        message: format!("resuming: {e}"),
                    })?;
                self.event(id, "resumed: containers started").await;
            }
            self.store.set_status(actor, id, TenantStatus::Active).await
        };
        self.with_lease_waiting(id, LEASE / 2, work)
            .await
            .unwrap_or_else(|| Err(Self::busy(id)))
    }

    /// Make the containers of the tenant's current generation run (creating missing ones,
    /// starting stopped ones), wait until they are healthy, remove other generations, and
    /// route to them when their addresses changed. Returns whether anything was done.
    async fn ensure_running(&self, d: &Deployment) -> Result<bool, String> {
        let b = &self.blueprint_of(d)?;
        self.learn_host_address().await?;
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        let instance = self.instance().await.map_err(|e| e.to_string())?.to_owned();
        let existing = runtime
            .list(&instance, Some(&d.id))
            .await
            .map_err(|e| e.to_string())?;
        let mut changed = false;
        let mut current = Vec::new();
        let password = self.password(d)?;
        runtime
            .ensure_network(&network_name(&instance, &d.id), &d.id)
            .await
            .map_err(|e| e.to_string())?;
        for c in &b.components {
            for replica in 1..=replicas(d, c) {
                let spec = self.spec(
                    &instance,
                    d,
                    b,
                    c,
                    d.generation,
                    replica,
                    &d.theme,
                    password.as_deref(),
                )?;
                let container = match existing.iter().find(|e| e.name == spec.name) {
                    Some(e) if e.paused => {
                        changed = true;
                        runtime.unpause(&e.id).await.map_err(|e| e.to_string())?;
                        let mut thawed = e.clone();
                        thawed.paused = false;
                        thawed
                    }
                    Some(e) if e.running => e.clone(),
                    Some(e) => {
                        changed = true;
                        self.event(
                            &d.id,
                            &format!("container {} was stopped: started again", e.name),
                        )
                        .await;
                        runtime.start(&e.id).await.map_err(|e| e.to_string())?
                    }
                    None => {
                        changed = true;
                        self.event(
                            &d.id,
                            &format!("container {} was missing: created again", spec.name),
                        )
                        .await;
                        runtime.run(&spec).await.map_err(|e| e.to_string())?
                    }
                };
                current.push(Started {
                    component: c,
                    container,
                });
            }
        }
        if changed {
            self.wait_all_healthy(&current).await?;
        }
        // Route first, then remove: a container leaving the route keeps answering what
        // is in flight for the drain time.
        let upstreams = served_addresses(b, &current);
        self.permitted(&upstreams)?;
        if !same_set(&upstreams, &d.upstreams) {
            changed = true;
            self.store
                .deploy(ACTOR, &d.id, d.generation, &d.theme, &upstreams, None)
                .await
                .map_err(|e| e.to_string())?;
            self.event(&d.id, "route republished to the running containers")
                .await;
        }
        let keep: Vec<&str> = current.iter().map(|s| s.container.id.as_str()).collect();
        let unwanted: Vec<&Container> = existing
            .iter()
            .filter(|e| !keep.contains(&e.id.as_str()))
            .collect();
        if unwanted.iter().any(|e| {
            e.address
                .is_some_and(|a| d.upstreams.iter().any(|(_, ups)| ups.contains(&a)))
        }) {
            tokio::time::sleep(self.drain).await;
        }
        for e in unwanted {
            changed = true;
            runtime.remove(&e.id).await.map_err(|e| e.to_string())?;
            self.event(
                &d.id,
                &format!("container {} is not wanted: removed", e.name),
            )
            .await;
        }
        Ok(changed)
    }

    /// The containers of tenant `id` as the runtime reports them, by component, generation
    /// and name (the dashboard's view).
    pub async fn containers(&self, id: &str) -> Result<Vec<Container>> {
        let instance = self.instance().await?;
        let mut list = self
            .runtime()?
            .list(instance, Some(id))
            .await
            .map_err(unavailable)?;
        list.sort_by(|a, b| {
            (a.component(), a.generation(), &a.name).cmp(&(b.component(), b.generation(), &b.name))
        });
        Ok(list)
    }

    /// Run `replicas` containers of `component` of provisioned tenant `id`: stored first,
    /// then applied at once (started and healthy before they take traffic; removed ones
    /// leave the route before they stop).
    pub async fn scale(&self, actor: &str, id: &str, component: &str, replicas: u32) -> Result<()> {
        let d = self.store.deployment(id).await?;
        let b = &self
            .blueprint_of(&d)
            .map_err(|e| Error::invalid("unknown_blueprint", e))?;
        if !b.components.iter().any(|c| c.name == component) {
            return Err(Error::invalid(
                "unknown_component",
                format!(
                    "component {component:?} is not one of blueprint {:?}'s ({})",
                    b.name,
                    b.components
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !(1..=20).contains(&replicas) {
            return Err(Error::invalid("invalid_replicas", "replicas must be 1-20"));
        }
        if d.status != "active" {
            return Err(Error::Conflict(format!(
                "tenant {id:?} is {}: only active tenants are scaled",
                d.status
            )));
        }
        self.ready().await?;
        let work = || async {
            self.store
                .set_replicas(actor, id, component, replicas)
                .await?;
            self.event(id, &format!("scale: {component} to {replicas} replicas"))
                .await;
            let d = self.store.deployment(id).await?;
            if d.sleep.is_some() {
                // Nothing is started for a sleeping store: the wake starts what is wanted.
                self.event(id, "scale: applied when the store wakes").await;
                return Ok(false);
            }
            self.ensure_running(&d)
                .await
                .map_err(|e| Error::Dependency {
                    code: "runtime_unavailable",
                    message: format!("scaling: {e}"),
                })
        };
        match self.with_lease_waiting(id, LEASE / 2, work).await {
            Some(r) => {
                count("scale", r.is_ok());
                r.map(|_| ())
            }
            None => Err(Self::busy(id)),
        }
    }

    /// Redeploy tenant `id` blue/green, with `theme` (`None`: keep it): the next generation
    /// is started beside the current one; once healthy, the route switches to it in one
    /// version; the old generation is removed after `drain_seconds`. A failed redeploy
    /// leaves the current generation serving and records why.
    pub async fn redeploy(self: Arc<Self>, id: String, theme: Option<String>) {
        // A repair may hold the tenant for a moment: wait for it rather than skip the
        // operator's redeploy.
        let Some(outcome) = self
            .with_lease_waiting(&id, LEASE / 2, || self.try_redeploy(&id, theme.clone()))
            .await
        else {
            self.event(&id, "redeploy skipped: another operation holds the tenant")
                .await;
            return;
        };
        count("redeploy", outcome.is_ok());
        if let Err(reason) = outcome {
            self.event(&id, &format!("redeploy failed: {reason}")).await;
            let _ = self
                .store
                .note_tenant(&id, Some(&format!("redeploy failed: {reason}")))
                .await;
        }
    }

    async fn try_redeploy(&self, id: &str, theme: Option<String>) -> Result<(), String> {
        self.reload_blueprints();
        let d = self.store.deployment(id).await.map_err(|e| e.to_string())?;
        if d.status != "active" {
            return Err(format!("the tenant is {}", d.status));
        }
        let b = &self.blueprint_of(&d)?;
        let theme = theme.unwrap_or_else(|| d.theme.clone());
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        for c in &b.components {
            runtime
                .ensure_image(&c.image)
                .await
                .map_err(|e| e.to_string())?;
        }
        let password = self.password(&d)?;
        let generation = d.generation + 1;
        self.event(
            id,
            &format!("redeploy: starting generation {generation} (theme {theme})"),
        )
        .await;
        let started = self
            .start_generation(&d, b, generation, &theme, password.as_deref())
            .await?;
        let upstreams = served_addresses(b, &started);
        if let Err(e) = match self.permitted(&upstreams) {
            Ok(()) => self
                .store
                .deploy(ACTOR, id, generation, &theme, &upstreams, d.sleep)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        } {
            for s in &started {
                let _ = runtime.remove(&s.container.id).await;
            }
            return Err(format!("switching the route: {e}"));
        }
        self.event(id, &format!("route switched to generation {generation}"))
            .await;
        tokio::time::sleep(self.drain).await;
        let removed = self
            .remove_containers(&d, |c| c.generation() != Some(generation))
            .await
            .map_err(|e| e.to_string())?;
        self.event(
            id,
            &format!(
                "generation {} drained and removed ({removed} containers)",
                d.generation
            ),
        )
        .await;
        // A sleeping store stays asleep on its new generation (its route already says so).
        if let Some(level) = d.sleep {
            self.sleep_containers(id, level).await?;
            self.event(
                id,
                &format!("generation {generation} put to sleep ({})", level.as_str()),
            )
            .await;
        }
        Ok(())
    }
}

impl Lifecycle {
    /// The upstream policy holds for containers too: a published address that is one of
    /// this node's listeners (or a metadata address) is never routed.
    fn permitted(&self, upstreams: &[(String, Vec<SocketAddr>)]) -> Result<(), String> {
        for addr in upstreams.iter().flat_map(|(_, a)| a) {
            self.policy
                .check(*addr, tenantgate_config::net::is_local_address)
                .map_err(|r| format!("a container's address is refused: {addr}: {r}"))?;
        }
        Ok(())
    }
}

/// How many containers of `c` the tenant runs: what the API set, else the blueprint's.
fn replicas(d: &Deployment, c: &Component) -> u32 {
    d.replicas.get(&c.name).copied().unwrap_or(c.replicas)
}

/// The route's upstreams by path prefix: for each of the blueprint's routing rules, the
/// addresses of the started containers of its component (`/` first: the route's own).
fn served_addresses(b: &Blueprint, started: &[Started<'_>]) -> Vec<(String, Vec<SocketAddr>)> {
    let mut rules: Vec<&crate::blueprint::RouteRule> = b.routes.iter().collect();
    rules.sort_by_key(|r| r.path != "/");
    rules
        .into_iter()
        .map(|r| {
            let addrs = started
                .iter()
                .filter(|s| s.component.name == r.component)
                .filter_map(|s| s.container.address)
                .collect();
            (r.path.clone(), addrs)
        })
        .collect()
}

/// The same upstreams, whatever their order.
fn same_set(a: &[(String, Vec<SocketAddr>)], b: &[(String, Vec<SocketAddr>)]) -> bool {
    let norm = |x: &[(String, Vec<SocketAddr>)]| {
        let mut v: Vec<(String, Vec<SocketAddr>)> = x
            .iter()
            .filter(|(_, ups)| !ups.is_empty())
            .map(|(p, ups)| {
                let mut ups = ups.clone();
                ups.sort_unstable();
                (p.clone(), ups)
            })
            .collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

fn short(instance: &str) -> &str {
    instance.get(..8).unwrap_or(instance)
}

fn network_name(instance: &str, tenant: &str) -> String {
    format!("tg-{}-{tenant}", short(instance))
}

fn unavailable(e: RuntimeError) -> Error {
    Error::Dependency {
        code: "runtime_unavailable",
        message: e.to_string(),
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
