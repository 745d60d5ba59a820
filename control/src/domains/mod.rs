//! Custom domains: the state machine that takes a merchant's hostname from attached to
//! verified, routed, certified and renewed, and notices when it leaves.
//!
//! ```text
//! pending_verification --TXT or HTTP token--> active --DNS points elsewhere--> moved
//!         |                                     |  ^------- points back ---------'
//!         '------------- detach / tenant deleted -----------------------> deleted
//! any but deleted --operator--> blocked --operator--> active or pending_verification
//!
//! ssl: pending_validation --verified--> pending_issuance --order--> active --1/3 life left-->
//!      renewing --> active; a failed first order is `failed` (retried with backoff); a
//!      certificate that runs out before renewal succeeds is `expired`.
//! ```
//!
//! Every control node runs the worker. Work on one domain is leased in the store, so a fleet
//! places one order per hostname at a time; after taking the lease the worker reloads the
//! domain and skips work another node already finished (the certmagic rule). Orders are
//! counted against a fleet-wide hourly budget. Each status change is one store write, pushed
//! to proxies like any other, and announced to the webhook.

pub mod check;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tenantgate_certs::acme::{AcmeError, AcmeErrorKind, Directory, Responder};
use tenantgate_certs::SealingKey;
use tenantgate_config::{Config, HostPattern};
use tokio::sync::{Mutex, Notify, Semaphore};

use crate::model::{rfc3339, DomainStatus, SslStatus};
use crate::store::{DomainFilter, DomainNote, DomainRecord, NewCertificate, Store};
use crate::{now_ms, random_id, Error, Result};
use check::{Checker, Pointing};
use webhooks::{Event, Previous, Webhooks};

/// Who the audit trail names for the worker's changes.
pub const ACTOR: &str = "domains";

/// Prometheus metrics of the custom domains (in the default registry, which the admin
/// listener's `/metrics` includes).
struct DomainMetrics {
    /// Domains by status, and active domains by certificate status (from the store).
    domains: prometheus::IntGaugeVec,
    certificates: prometheus::IntGaugeVec,
    /// This node's ownership checks and orders by outcome.
    checks: prometheus::IntCounterVec,
    orders: prometheus::IntCounterVec,
}

fn metrics() -> &'static DomainMetrics {
    static M: std::sync::OnceLock<DomainMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let gauge = |name: &str, help: &str, label: &str| {
            let g = prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), &[label])
                .expect("valid metric");
            let _ = prometheus::register(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &["result"])
                .expect("valid metric");
            let _ = prometheus::register(Box::new(c.clone()));
            c
        };
        DomainMetrics {
            domains: gauge("tenantgate_domains", "Custom domains by status", "status"),
            certificates: gauge(
                "tenantgate_domain_certificates",
                "Active custom domains by certificate status",
                "ssl_status",
            ),
            checks: counter(
                "tenantgate_domain_checks_total",
                "Ownership checks run by this node, by result",
            ),
            orders: counter(
                "tenantgate_acme_orders_total",
                "ACME orders placed by this node, by result",
            ),
        }
    })
}

/// Domains worked on at once by one node.
const PARALLEL: usize = 16;

/// ACME settings in force.
struct Acme {
    directory: Directory,
    renew_fraction: f64,
    orders_per_hour: u32,
    retry_min: i64,
    retry_max: i64,
    order_timeout: Duration,
}

impl Acme {
    /// When a certificate issued at `issued_ms` and valid until `not_after_s` (unix seconds)
    /// becomes due for renewal (ms): once `renew_fraction` of its lifetime remains.
    fn renewal_due(&self, issued_ms: i64, not_after_s: i64) -> i64 {
        let end = not_after_s.saturating_mul(1000);
        end - ((end - issued_ms).max(0) as f64 * self.renew_fraction) as i64
    }
}

/// The custom-domain service: API operations and the background worker.
pub struct Domains {
    store: Arc<Store>,
    sealing: Arc<SealingKey>,
    checker: Checker,
    hooks: Option<Webhooks>,
    acme: Option<Acme>,
    check_min: i64,
    check_max: i64,
    verify_timeout: i64,
    moved_every: i64,
    wake: Notify,
    node: String,
    /// Hostnames the config file's static routes serve: never attachable.
    static_names: Vec<HostPattern>,
    /// The ACME account's credentials and their sealed form as stored.
    account: Mutex<Option<(String, Vec<u8>)>>,
}

/// `ms` as "3 s", "12 min", "7 h" or "7 d", whichever unit divides it.
fn human(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Exponential backoff: `min * 2^(failures-1)`, capped at `max` (ms).
fn backoff(min: i64, max: i64, failures: i64) -> i64 {
    let shift = (failures - 1).clamp(0, 30) as u32;
    min.saturating_mul(1i64 << shift).min(max)
}

/// Up to `span` ms of jitter from the system's randomness.
fn jitter(span: i64) -> i64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if span <= 0 || ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % span as u64) as i64
}

impl Domains {
    /// The service for `cfg`, whose static routes serve `static_names`; [`Domains::run`]
    /// does its background work.
    pub fn new(
        cfg: &Config,
        store: Arc<Store>,
        sealing: Arc<SealingKey>,
        static_names: Vec<HostPattern>,
    ) -> Result<Arc<Self>> {
        let d = &cfg.domains;
        let checker = Checker::new(d).map_err(|e| Error::invalid("config", e))?;
        let hooks = match (&cfg.webhooks.url, &cfg.webhooks.secret) {
            (Some(url), Some(secret)) => Some(
                Webhooks::new(url.clone(), secret.clone())
                    .map_err(|e| Error::invalid("config", e))?,
            ),
            _ => None,
        };
        let acme = match &cfg.acme.directory_url {
            Some(url) => Some(Acme {
                directory: Directory::new(url, cfg.acme.ca_file.as_deref(), &cfg.acme.contact)
                    .map_err(|e| Error::invalid("config", e.message))?,
                renew_fraction: cfg.acme.renew_remaining_fraction,
                orders_per_hour: cfg.acme.orders_per_hour,
                retry_min: cfg.acme.retry_min_seconds.saturating_mul(1000) as i64,
                retry_max: cfg.acme.retry_max_seconds.saturating_mul(1000) as i64,
                order_timeout: Duration::from_secs(cfg.acme.order_timeout_seconds),
            }),
            None => None,
        };
        Ok(Arc::new(Domains {
            store,
            sealing,
            checker,
            hooks,
            acme,
            check_min: d.check_min_seconds.saturating_mul(1000) as i64,
            check_max: d.check_max_seconds.saturating_mul(1000) as i64,
            verify_timeout: d.verify_timeout_seconds.saturating_mul(1000) as i64,
            moved_every: d.moved_check_seconds.saturating_mul(1000) as i64,
            wake: Notify::new(),
            node: random_id("n_")?,
            static_names,
            account: Mutex::new(None),
        }))
    }

    /// Queue a webhook event if the statuses changed (the outbox survives restarts).
    async fn announce(
        &self,
        kind: &'static str,
        before: Option<&DomainRecord>,
        after: &DomainRecord,
    ) {
        let Some(hooks) = &self.hooks else { return };
        if let Some(b) = before {
            if b.status == after.status && b.ssl_status == after.ssl_status {
                return;
            }
        }
        let Ok(id) = random_id("evt_") else { return };
        hooks
            .send(
                &self.store,
                &Event {
                    id,
                    kind,
                    at: rfc3339(now_ms()),
                    domain: after.to_api(),
                    previous: before.map(|b| Previous {
                        status: b.status,
                        ssl_status: b.ssl_status,
                    }),
                },
            )
            .await;
    }

    /// Attach a hostname to a tenant; the first ownership check runs at once.
    pub async fn attach(
        &self,
        actor: &str,
        tenant_id: &str,
        hostname: &str,
    ) -> Result<DomainRecord> {
        if let Some(p) = self.served_statically(hostname) {
            return Err(Error::Taken {
                code: "hostname_served",
                message: format!(
                    "{hostname:?} is served by this platform's own configuration ({}); it cannot be attached as a custom domain",
                    p.to_display()
                ),
            });
        }
        let d = self.store.attach_domain(actor, tenant_id, hostname).await?;
        self.announce("domain.attached", None, &d).await;
        self.wake.notify_one();
        Ok(d)
    }

    /// The static route pattern that serves `hostname` (exactly, or as a one-label
    /// wildcard), if one does.
    fn served_statically(&self, hostname: &str) -> Option<&HostPattern> {
        let parent = hostname.split_once('.').map(|(_, p)| p);
        self.static_names.iter().find(|p| match p {
            HostPattern::Exact(h) => h == hostname,
            HostPattern::Wildcard(suffix) => parent == Some(suffix.as_str()),
        })
    }

    /// Why the HTTP token cannot prove ownership of `d`, if it cannot: it only shows that
    /// DNS points at the platform, which is true of every name already served here, and
    /// says nothing about which of several claimants owns the name.
    async fn http_refused(&self, d: &DomainRecord) -> Result<Option<String>> {
        let (claims, served) = self.store.hostname_claims(&d.hostname).await?;
        Ok(if served {
            Some("the name is already served by this platform".into())
        } else if claims > 1 {
            Some(format!("{claims} tenants claim the name"))
        } else {
            None
        })
    }

    /// One domain.
    pub async fn get(&self, id: &str) -> Result<DomainRecord> {
        self.store.get_domain(id).await
    }

    /// A page of domains.
    pub async fn list(&self, f: &DomainFilter) -> Result<(Vec<DomainRecord>, Option<String>)> {
        self.store.list_domains(f).await
    }

    /// Detach: route, challenges and certificate leave every proxy in one change.
    pub async fn delete(&self, actor: &str, id: &str) -> Result<()> {
        let before = self.store.get_domain(id).await?;
        self.store.delete_domain(actor, id).await?;
        if let Ok(after) = self.store.get_domain(id).await {
            self.announce("domain.deleted", Some(&before), &after).await;
        }
        Ok(())
    }

    /// Re-check now: ownership (pending), where it points (active, moved), and a failed or
    /// waiting certificate order.
    pub async fn refresh(&self, id: &str) -> Result<DomainRecord> {
        let d = self.store.get_domain(id).await?;
        let now = now_ms();
        let mut note = DomainNote::default();
        match d.status {
            DomainStatus::PendingVerification => {
                note.check_at = Some(Some(now));
                note.check_failures = Some(0);
                note.verify_since = Some(now);
            }
            DomainStatus::Active | DomainStatus::Moved => {
                if self.checker.detects_moves() {
                    note.check_at = Some(Some(now));
                }
                if d.status == DomainStatus::Active
                    && self.acme.is_some()
                    && d.ssl_status != SslStatus::Active
                {
                    note.ssl_at = Some(Some(now));
                }
            }
            DomainStatus::Deleted => return Err(Error::NotFound(format!("domain {id:?}"))),
            DomainStatus::Blocked => {
                return Err(Error::Conflict(
                    "the domain is blocked by an operator".into(),
                ))
            }
        }
        let d = self.store.note_domain(id, &note).await?;
        self.wake.notify_one();
        Ok(d)
    }

    /// Block (`true`) or unblock a domain.
    pub async fn block(&self, actor: &str, id: &str, blocked: bool) -> Result<DomainRecord> {
        let before = self.store.get_domain(id).await?;
        let now = now_ms();
        let after = if blocked {
            if before.status == DomainStatus::Blocked {
                return Ok(before);
            }
            self.store
                .set_domain_status(
                    actor,
                    id,
                    DomainStatus::Blocked,
                    vec!["blocked by an operator".into()],
                    None,
                    None,
                )
                .await?
        } else {
            if before.status != DomainStatus::Blocked {
                return Ok(before);
            }
            let (status, check_at, ssl_at) = if before.verified_at.is_some() {
                (
                    DomainStatus::Active,
                    self.checker.detects_moves().then_some(now),
                    self.acme.as_ref().map(|_| now),
                )
            } else {
                (DomainStatus::PendingVerification, Some(now), None)
            };
            self.store
                .set_domain_status(actor, id, status, vec![], check_at, ssl_at)
                .await?
        };
        self.announce("domain.status_changed", Some(&before), &after)
            .await;
        self.wake.notify_one();
        Ok(after)
    }

    /// The worker: runs due checks and orders until the process ends.
    pub async fn run(self: Arc<Self>) {
        if self.hooks.is_some() {
            let me = self.clone();
            tokio::spawn(async move {
                if let Some(h) = &me.hooks {
                    h.deliver(&me.store).await;
                }
            });
        }
        let permits = Arc::new(Semaphore::new(PARALLEL));
        let mut counted = tokio::time::Instant::now();
        let _ = self.upkeep().await;
        loop {
            if counted.elapsed() >= Duration::from_secs(10) {
                counted = tokio::time::Instant::now();
                if let Err(e) = self.upkeep().await {
                    tracing::warn!("domain upkeep failed: {e}");
                }
            }
            match self.store.due_domains(now_ms(), 200).await {
                Ok(ids) => {
                    for id in ids {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.work(&id).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::warn!("domain worker cannot read the store: {e}"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Periodic upkeep: mark certificates that ran out, then refresh the status gauges.
    async fn upkeep(&self) -> Result<()> {
        for before in self.store.mark_expired(now_ms()).await? {
            tracing::warn!(domain = %before.id, hostname = %before.hostname, "certificate expired before it was renewed");
            if let Ok(after) = self.store.get_domain(&before.id).await {
                self.announce("domain.status_changed", Some(&before), &after)
                    .await;
            }
        }
        let (by_status, by_ssl) = self.store.count_domains().await?;
        let m = metrics();
        let count = |pairs: &[(String, i64)], s: &str| {
            pairs.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n)
        };
        for s in DomainStatus::ALL.map(DomainStatus::as_str) {
            if s != DomainStatus::Deleted.as_str() {
                m.domains.with_label_values(&[s]).set(count(&by_status, s));
            }
        }
        for s in SslStatus::ALL.map(SslStatus::as_str) {
            m.certificates
                .with_label_values(&[s])
                .set(count(&by_ssl, s));
        }
        Ok(())
    }

    fn lease_ms(&self) -> i64 {
        let order = self
            .acme
            .as_ref()
            .map_or(0, |a| a.order_timeout.as_millis() as i64);
        order + 60_000
    }

    async fn work(&self, id: &str) {
        match self
            .store
            .claim_domain(id, &self.node, now_ms() + self.lease_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(domain = id, "cannot lease: {e}");
                return;
            }
        }
        if let Err(e) = self.step(id).await {
            tracing::warn!(domain = id, "domain work failed: {e}");
        }
        if let Err(e) = self.store.release_domain(id, &self.node).await {
            tracing::warn!(domain = id, "cannot release: {e}");
        }
    }

    /// One round of work on a leased domain, from its current stored state.
    async fn step(&self, id: &str) -> Result<()> {
        let d = self.store.get_domain(id).await?;
        let now = now_ms();
        let check_due = d.check_at.is_some_and(|t| t <= now);
        let ssl_due = d.ssl_at.is_some_and(|t| t <= now);
        match d.status {
            DomainStatus::PendingVerification if check_due => {
                // Verified: order at once, under the same lease.
                match self.verify(d).await? {
                    Some(d) if d.ssl_at.is_some_and(|t| t <= now_ms()) => self.certificate(d).await,
                    _ => Ok(()),
                }
            }
            DomainStatus::Active | DomainStatus::Moved if check_due => {
                let d = self.moved_check(d).await?;
                if d.status == DomainStatus::Active && d.ssl_at.is_some_and(|t| t <= now_ms()) {
                    self.certificate(d).await?;
                }
                Ok(())
            }
            DomainStatus::Active if ssl_due => self.certificate(d).await,
            _ => Ok(()),
        }
    }

    /// Check ownership; the domain as verified, if it now is.
    async fn verify(&self, d: DomainRecord) -> Result<Option<DomainRecord>> {
        let now = now_ms();
        if now - d.verify_since > self.verify_timeout {
            let mut errors = d.errors.clone();
            errors.insert(
                0,
                format!(
                    "ownership was not proven within {}: checks stopped (POST /v1/domains/{}/refresh to try again)",
                    human(self.verify_timeout),
                    d.id
                ),
            );
            errors.truncate(3);
            self.store
                .note_domain(
                    &d.id,
                    &DomainNote {
                        errors: Some(errors),
                        check_at: Some(None),
                        ..DomainNote::default()
                    },
                )
                .await?;
            return Ok(None);
        }
        if let Some(p) = self.served_statically(&d.hostname) {
            let why = format!(
                "{} is served by this platform's own configuration ({}): it cannot become a custom domain",
                d.hostname,
                p.to_display()
            );
            self.store
                .note_domain(
                    &d.id,
                    &DomainNote {
                        errors: Some(vec![why]),
                        check_at: Some(None),
                        ..DomainNote::default()
                    },
                )
                .await?;
            return Ok(None);
        }
        let http_refused = self.http_refused(&d).await?;
        let outcome = self.checker.ownership(&d, http_refused.as_deref()).await;
        metrics()
            .checks
            .with_label_values(&[if outcome.is_ok() {
                "verified"
            } else {
                "failed"
            }])
            .inc();
        match outcome {
            Ok(how) => {
                let ssl_at = self.acme.as_ref().map(|_| now_ms());
                let check_at = self
                    .checker
                    .detects_moves()
                    .then(|| now_ms() + self.moved_every);
                match self
                    .store
                    .verify_domain(ACTOR, &d.id, how, ssl_at, check_at)
                    .await
                {
                    Ok(after) => {
                        tracing::info!(domain = %d.id, hostname = %d.hostname, by = how, "domain verified");
                        self.announce("domain.status_changed", Some(&d), &after)
                            .await;
                        Ok(Some(after))
                    }
                    Err(Error::Taken { message, .. }) => {
                        // A second claim arrived while the HTTP token was being checked: only
                        // the TXT record counts now; keep checking.
                        let failures = d.check_failures + 1;
                        let next = now_ms() + backoff(self.check_min, self.check_max, failures);
                        self.store
                            .note_domain(
                                &d.id,
                                &DomainNote {
                                    errors: Some(vec![message]),
                                    check_at: Some(Some(next)),
                                    check_failures: Some(failures),
                                    ..DomainNote::default()
                                },
                            )
                            .await?;
                        Ok(None)
                    }
                    Err(Error::Conflict(_)) => {
                        // Either another tenant's domain took the name first, or this one
                        // stopped being pending meanwhile (detached, blocked).
                        let now = self.store.get_domain(&d.id).await?;
                        if now.status != DomainStatus::PendingVerification {
                            return Ok(None);
                        }
                        self.store
                            .note_domain(
                                &d.id,
                                &DomainNote {
                                    errors: Some(vec![format!(
                                        "{} was verified by another tenant first",
                                        d.hostname
                                    )]),
                                    check_at: Some(None),
                                    ..DomainNote::default()
                                },
                            )
                            .await?;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(reasons) => {
                let failures = d.check_failures + 1;
                let next = now_ms() + backoff(self.check_min, self.check_max, failures);
                self.store
                    .note_domain(
                        &d.id,
                        &DomainNote {
                            errors: Some(reasons),
                            check_at: Some(Some(next)),
                            check_failures: Some(failures),
                            ..DomainNote::default()
                        },
                    )
                    .await?;
                Ok(None)
            }
        }
    }

    /// Re-resolve an active or moved domain.
    async fn moved_check(&self, d: DomainRecord) -> Result<DomainRecord> {
        if !self.checker.detects_moves() {
            return self
                .store
                .note_domain(
                    &d.id,
                    &DomainNote {
                        check_at: Some(None),
                        ..DomainNote::default()
                    },
                )
                .await;
        }
        let next = now_ms() + self.moved_every;
        let after = match (self.checker.pointing(&d.hostname).await, d.status) {
            (Pointing::Here, DomainStatus::Moved) => {
                tracing::info!(domain = %d.id, hostname = %d.hostname, "domain points here again");
                self.store
                    .set_domain_status(
                        ACTOR,
                        &d.id,
                        DomainStatus::Active,
                        vec![],
                        Some(next),
                        self.acme.as_ref().map(|_| now_ms()),
                    )
                    .await?
            }
            (Pointing::Elsewhere(why), DomainStatus::Active) => {
                tracing::warn!(domain = %d.id, hostname = %d.hostname, "domain moved away: {why}");
                self.store
                    .set_domain_status(
                        ACTOR,
                        &d.id,
                        DomainStatus::Moved,
                        vec![
                            why,
                            "not routed and not renewed until it points here again".into(),
                        ],
                        Some(next),
                        None,
                    )
                    .await?
            }
            (Pointing::Unknown(why), _) => {
                tracing::warn!(domain = %d.id, "moved check inconclusive: {why}");
                return self
                    .store
                    .note_domain(
                        &d.id,
                        &DomainNote {
                            check_at: Some(Some(now_ms() + self.check_min.max(60_000))),
                            ..DomainNote::default()
                        },
                    )
                    .await;
            }
            _ => {
                return self
                    .store
                    .note_domain(
                        &d.id,
                        &DomainNote {
                            check_at: Some(Some(next)),
                            ..DomainNote::default()
                        },
                    )
                    .await
            }
        };
        self.announce("domain.status_changed", Some(&d), &after)
            .await;
        Ok(after)
    }

    fn account_setting(acme: &Acme) -> String {
        format!("acme_account:{}", acme.directory.url)
    }

    /// The account's credentials: cached, else stored, else created (once across a fleet).
    async fn account(&self, acme: &Acme) -> std::result::Result<String, String> {
        let mut cached = self.account.lock().await;
        if let Some((creds, _)) = &*cached {
            return Ok(creds.clone());
        }
        let name = Self::account_setting(acme);
        let sealed = match self.store.setting(&name).await.map_err(|e| e.to_string())? {
            Some(s) => s,
            None => {
                let creds = acme
                    .directory
                    .create_account()
                    .await
                    .map_err(|e| format!("cannot create the ACME account: {e}"))?;
                let sealed = self
                    .sealing
                    .seal(creds.as_bytes())
                    .map_err(|e| e.to_string())?;
                tracing::info!(directory = %acme.directory.url, "ACME account created");
                self.store
                    .setting_once(&name, &sealed)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let plain = self.sealing.open(&sealed).map_err(|e| e.to_string())?;
        let creds = String::from_utf8(plain).map_err(|e| e.to_string())?;
        *cached = Some((creds.clone(), sealed));
        Ok(creds)
    }

    /// The CA no longer knows the stored account (e.g. its data was reset): drop it, so the
    /// next attempt creates a new one. Only the account this node used is dropped; one that
    /// another node already put in its place stays.
    async fn forget_account(&self, acme: &Acme) {
        let mut cached = self.account.lock().await;
        if let Some((_, sealed)) = cached.take() {
            match self
                .store
                .delete_setting_if(&Self::account_setting(acme), &sealed)
                .await
            {
                Ok(()) => {
                    tracing::warn!(directory = %acme.directory.url, "the CA does not know our ACME account: a new one will be created")
                }
                Err(e) => tracing::warn!("cannot drop the stale ACME account: {e}"),
            }
        }
    }

    /// Issue or renew the domain's certificate if it is due.
    async fn certificate(&self, d: DomainRecord) -> Result<()> {
        let Some(acme) = &self.acme else {
            self.store
                .note_domain(
                    &d.id,
                    &DomainNote {
                        ssl_at: Some(None),
                        ..DomainNote::default()
                    },
                )
                .await?;
            return Ok(());
        };
        let now = now_ms();
        // Another node may have finished while we waited for the lease.
        if let (Some(not_after), Some(issued)) = (d.cert_not_after, d.cert_created_at) {
            let due = acme.renewal_due(issued, not_after);
            if d.ssl_status == SslStatus::Active && due > now {
                self.store
                    .note_domain(
                        &d.id,
                        &DomainNote {
                            ssl_at: Some(Some(due)),
                            ..DomainNote::default()
                        },
                    )
                    .await?;
                return Ok(());
            }
        }
        if !self
            .store
            .take_order_slot(&d.id, acme.orders_per_hour)
            .await?
        {
            let mut n = DomainNote {
                ssl_at: Some(Some(now + 60_000)),
                ssl_errors: Some(vec![format!(
                    "queued: the fleet's budget of {} orders per hour is spent",
                    acme.orders_per_hour
                )]),
                ..DomainNote::default()
            };
            if d.certificate_id.is_none() {
                n.ssl_status = Some(SslStatus::PendingIssuance);
            }
            self.store.note_domain(&d.id, &n).await?;
            return Ok(());
        }
        let renewing = d.certificate_id.is_some();
        let working = if renewing {
            SslStatus::Renewing
        } else {
            SslStatus::PendingValidation
        };
        let before = d.clone();
        let d = self
            .store
            .note_domain(
                &d.id,
                &DomainNote {
                    ssl_status: Some(working),
                    ..DomainNote::default()
                },
            )
            .await?;
        self.announce("domain.status_changed", Some(&before), &d)
            .await;
        let outcome = match self.account(acme).await {
            Ok(creds) => {
                let responder = Publish {
                    domains: self,
                    domain_id: &d.id,
                };
                acme.directory
                    .issue(&creds, &d.hostname, &responder, acme.order_timeout)
                    .await
            }
            Err(e) => Err(AcmeError::new(AcmeErrorKind::Unavailable, e)),
        };
        let result = match outcome {
            Ok(issued) => self.install(acme, &d, &issued).await,
            Err(e) => Err(e),
        };
        metrics()
            .orders
            .with_label_values(&[if result.is_ok() { "issued" } else { "failed" }])
            .inc();
        match result {
            Ok(after) => {
                tracing::info!(domain = %d.id, hostname = %d.hostname, renewal = renewing, "certificate issued");
                self.announce("domain.status_changed", Some(&d), &after)
                    .await;
                Ok(())
            }
            Err(AcmeError {
                kind,
                message,
                retry_after,
            }) => {
                tracing::warn!(domain = %d.id, hostname = %d.hostname, "certificate order failed: {message}");
                if kind == AcmeErrorKind::AccountGone {
                    self.forget_account(acme).await;
                }
                if let Err(e) = self.store.withdraw_challenges(&d.id).await {
                    tracing::warn!(domain = %d.id, "cannot withdraw challenges: {e}");
                }
                let failures = d.ssl_failures + 1;
                let mut wait = backoff(acme.retry_min, acme.retry_max, failures);
                if kind == AcmeErrorKind::RateLimited {
                    wait = wait.max(3_600_000);
                }
                if let Some(ra) = retry_after {
                    wait = wait.max(ra.as_millis() as i64);
                }
                let status = match d.cert_not_after {
                    Some(na) if na * 1000 <= now_ms() => SslStatus::Expired,
                    Some(_) => SslStatus::Renewing,
                    None => SslStatus::Failed,
                };
                let mut errors = vec![message];
                if renewing && status == SslStatus::Renewing {
                    errors.push("the current certificate is served until it expires".into());
                }
                errors.push(format!("next attempt at {}", rfc3339(now_ms() + wait)));
                let after = self
                    .store
                    .note_domain(
                        &d.id,
                        &DomainNote {
                            ssl_status: Some(status),
                            ssl_errors: Some(errors),
                            ssl_at: Some(Some(now_ms() + wait)),
                            ssl_failures: Some(failures),
                            ..DomainNote::default()
                        },
                    )
                    .await?;
                self.announce("domain.status_changed", Some(&d), &after)
                    .await;
                Ok(())
            }
        }
    }

    async fn install(
        &self,
        acme: &Acme,
        d: &DomainRecord,
        issued: &tenantgate_certs::acme::Issued,
    ) -> std::result::Result<DomainRecord, AcmeError> {
        let local = |m: String| AcmeError::new(AcmeErrorKind::Local, m);
        let parsed =
            tenantgate_certs::parse_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
                .map_err(|e| local(format!("the CA's certificate is unusable: {e}")))?;
        if !parsed.names.iter().any(|n| n.to_display() == d.hostname) {
            return Err(local(format!(
                "the CA's certificate does not name {}",
                d.hostname
            )));
        }
        let sealed_key = self
            .sealing
            .seal(issued.key_pem.as_bytes())
            .map_err(|e| local(e.to_string()))?;
        let new = NewCertificate::new(issued.chain_pem.clone(), &parsed, sealed_key, "acme");
        // Jittered earlier by up to a tenth of the renewal window, so certificates issued
        // together are not all renewed at once.
        let due = acme.renewal_due(now_ms(), parsed.not_after);
        let renew = due - jitter((parsed.not_after.saturating_mul(1000) - due) / 10);
        self.store
            .install_domain_certificate(&d.id, &new, Some(renew))
            .await
            .map_err(|e| local(format!("cannot store the certificate: {e}")))
    }
}

/// Publishes HTTP-01 answers through the store, then waits until the proxy reached by the
/// public name serves it, so the CA never asks before the answer is there.
struct Publish<'a> {
    domains: &'a Domains,
    domain_id: &'a str,
}

#[async_trait::async_trait]
impl Responder for Publish<'_> {
    async fn present(
        &self,
        hostname: &str,
        path: &str,
        body: &str,
    ) -> std::result::Result<(), String> {
        self.domains
            .store
            .present_challenge(self.domain_id, path, body)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.domains.checker.fetch(hostname, path).await {
                Ok(b) if b == body => return Ok(()),
                other if tokio::time::Instant::now() >= deadline => {
                    // Not visible from here (e.g. control cannot reach the edge by the public
                    // name): let the CA try anyway.
                    tracing::warn!(
                        hostname,
                        "challenge not seen through the public name yet: {other:?}"
                    );
                    return Ok(());
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(604_800_000), "7 d");
        assert_eq!(human(7_200_000), "2 h");
        assert_eq!(human(180_000), "3 min");
        assert_eq!(human(3_000), "3 s");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(10, 1000, 1), 10);
        assert_eq!(backoff(10, 1000, 2), 20);
        assert_eq!(backoff(10, 1000, 4), 80);
        assert_eq!(backoff(10, 1000, 40), 1000);
        assert_eq!(backoff(10, 1000, 0), 10);
    }
}
