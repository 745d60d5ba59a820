//! The durable store: tenants, hostnames, upstreams, certificates, the change log and the
//! audit trail. The logic is written once in [`Store`] over a small [`Backend`] interface with
//! two implementations: embedded SQLite ([`sqlite`], the zero-configuration default) and
//! PostgreSQL ([`postgres`], shared by a fleet). Both run the same conformance suite
//! (`tests/store_conformance.rs`).
//!
//! Invariants:
//! - every write opens its transaction by incrementing the single `meta.version` row, which
//!   serialises writers: versions are gapless and commit in version order, so "changes after
//!   N" read at any moment is complete;
//! - the change-log row and the audit row commit with the change they describe;
//! - reads that feed proxies (snapshot, delta) see one consistent state (one transaction,
//!   REPEATABLE READ on PostgreSQL).

pub mod domains;
pub mod operators;
pub mod postgres;
pub mod provisioning;
pub mod sleep;
pub mod sqlite;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
pub use domains::{DomainFilter, DomainNote, DomainRecord};
pub use provisioning::Deployment;
use tenantgate_config::{
    CertificateChange, Delta, HostPattern, Limits, Route, RouteChange, Snapshot, StoredCertificate,
    Upstream,
};

use crate::model::{rfc3339, AuditEvent, CertificateInfo, NodeInfo, Page, Tenant, TenantStatus};
use crate::{now_ms, random_id, Error, Result};

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// One result row.
pub type Row = Vec<Value>;

/// An open transaction. Dropping it without [`Tx::commit`] rolls it back.
#[async_trait]
pub trait Tx: Send {
    /// Run a statement and return its rows. Statements are written with `$1, $2, ...`.
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Commit.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A database the store can run on.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Begin a transaction; `write` ones are serialised, read ones see a consistent state.
    async fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>>;
    /// Called inside a write transaction after the version was taken: lets other nodes know
    /// once it commits (PostgreSQL: `NOTIFY`).
    async fn announce(&self, tx: &mut dyn Tx, version: u64) -> Result<()>;
    /// Called inside a write transaction: tell other nodes `payload` on `channel` once it
    /// commits (PostgreSQL: `NOTIFY`; a single node has nobody to tell).
    async fn signal(&self, _tx: &mut dyn Tx, _channel: &str, _payload: &str) -> Result<()> {
        Ok(())
    }
}

/// Beyond this many changed objects a follower takes a full snapshot instead of a delta.
pub const MAX_DELTA_OBJECTS: usize = 1000;

/// A change committed by this process; the in-process publisher waits on these.
pub type Committed = tokio::sync::watch::Receiver<u64>;

/// The store.
pub struct Store {
    backend: Arc<dyn Backend>,
    committed: tokio::sync::watch::Sender<u64>,
    /// The config's `[plans]`, which routes resolve tenants' `plan` against.
    plans: Arc<Plans>,
}

/// Nodes silent this long are removed from the registry (an hour).
pub const FORGET_NODES_MS: i64 = 3_600_000;

/// Named limits from the config (`[plans.NAME]`).
pub type Plans = BTreeMap<String, Limits>;

/// What a new tenant is made of, already validated.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Its platform hostname (`<slug>.<platform domain>`).
    pub platform_hostname: String,
    /// Backends.
    pub upstreams: Vec<SocketAddr>,
    /// `(blueprint, theme)` of a tenant to provision: it starts as `provisioning`, without
    /// upstreams, and is not routed until its containers are healthy.
    pub blueprint: Option<(String, String)>,
    /// The plan whose limits it has (a key of `[plans]`).
    pub plan: Option<String>,
}

/// A certificate to store, already parsed and checked, its key sealed.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// PEM chain.
    pub chain_pem: String,
    /// Sealed PEM private key.
    pub sealed_key: Vec<u8>,
    /// SAN names (display form).
    pub names: Vec<String>,
    /// Issuer DN.
    pub issuer: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
    /// `uploaded` or `acme`.
    pub source: &'static str,
}

impl NewCertificate {
    /// What to store for a checked certificate: its chain, its key already sealed, and the
    /// names, issuer and expiry read from `parsed`.
    pub fn new(
        chain_pem: String,
        parsed: &tenantgate_certs::ParsedCertificate,
        sealed_key: Vec<u8>,
        source: &'static str,
    ) -> Self {
        NewCertificate {
            chain_pem,
            sealed_key,
            names: parsed.names.iter().map(|n| n.to_display()).collect(),
            issuer: parsed.issuer.clone(),
            not_after: parsed.not_after,
            source,
        }
    }
}

/// Filter of a tenant listing.
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    /// Only tenants with this status (default: all but deleted).
    pub status: Option<TenantStatus>,
    /// Only the tenant owning this hostname.
    pub hostname: Option<String>,
    /// Only tenants whose slug, name or one of whose hostnames contains this text
    /// (case-insensitive).
    pub search: Option<String>,
    /// Ids greater than this (the previous page's `next`).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

fn text(row: &Row, i: usize) -> Result<String> {
    match row.get(i) {
        Some(Value::Text(s)) => Ok(s.clone()),
        other => Err(Error::Internal(format!(
            "column {i}: expected text, got {other:?}"
        ))),
    }
}

fn opt_text(row: &Row, i: usize) -> Result<Option<String>> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => text(row, i).map(Some),
    }
}

fn int(row: &Row, i: usize) -> Result<i64> {
    match row.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        other => Err(Error::Internal(format!(
            "column {i}: expected integer, got {other:?}"
        ))),
    }
}

fn bytes(row: &Row, i: usize) -> Result<Vec<u8>> {
    match row.get(i) {
        Some(Value::Bytes(b)) => Ok(b.clone()),
        other => Err(Error::Internal(format!(
            "column {i}: expected bytes, got {other:?}"
        ))),
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn version_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Record that `entity` `id` changed in `version` (once, however often a write says so).
async fn log_change(tx: &mut dyn Tx, version: u64, entity: &str, id: &str) -> Result<()> {
    tx.query(
        "INSERT INTO changes (version, entity, entity_id, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
        &[
            Value::Int(version as i64),
            t(entity),
            t(id),
            Value::Int(now_ms()),
        ],
    )
    .await?;
    Ok(())
}

/// Serialise this transaction with every writer (and every other caller) without taking a
/// version: holds the meta row until the transaction ends.
async fn lock_writers(tx: &mut dyn Tx) -> Result<()> {
    tx.query("UPDATE meta SET version = version WHERE id = 1", &[])
        .await?;
    Ok(())
}

/// `<column> IN ($1, ...)` and its parameters for `ids`; an empty filter for `None` (all
/// rows); `None` when `ids` is empty (no rows can match).
fn id_filter(column: &str, ids: Option<&[String]>) -> Option<(String, Vec<Value>)> {
    match ids {
        Some([]) => None,
        Some(ids) => Some((
            format!("{column} IN ({})", placeholders(1, ids.len())),
            ids.iter().map(|i| t(i)).collect(),
        )),
        None => Some((String::new(), Vec::new())),
    }
}

/// Write one audit row inside `tx`.
async fn insert_audit(
    tx: &mut dyn Tx,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    tx.query(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        &[
            Value::Int(now_ms()),
            t(actor),
            t(action),
            t(target),
            t(&detail.to_string()),
        ],
    )
    .await?;
    Ok(())
}

/// `$first, $first+1, ...` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// A store over `backend` (already migrated).
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let (committed, _) = tokio::sync::watch::channel(0);
        Store {
            backend,
            committed,
            plans: Arc::default(),
        }
    }

    /// The same store resolving tenants' plans against `plans` (the config's `[plans]`;
    /// every node of a fleet should have the same ones).
    pub fn with_plans(mut self, plans: Plans) -> Self {
        self.plans = Arc::new(plans);
        self
    }

    /// The plans tenants may reference.
    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    /// Versions committed through this `Store` value, as they commit.
    pub fn committed(&self) -> Committed {
        self.committed.subscribe()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<u64> {
        let mut tx = self.backend.begin(false).await?;
        let v = current_version(&mut *tx).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Open a write transaction, take the next version and log the change.
    async fn begin_write(&self, entity: &str, entity_id: &str) -> Result<(Box<dyn Tx + '_>, u64)> {
        let mut tx = self.backend.begin(true).await?;
        let rows = tx
            .query(
                "UPDATE meta SET version = version + 1 WHERE id = 1 RETURNING version",
                &[],
            )
            .await?;
        let version = version_of(int(
            rows.first()
                .ok_or_else(|| Error::Internal("meta row missing".into()))?,
            0,
        )?);
        log_change(&mut *tx, version, entity, entity_id).await?;
        self.backend.announce(&mut *tx, version).await?;
        Ok((tx, version))
    }

    /// Record who did what (the audit row carries the version) and commit.
    async fn finish(
        &self,
        mut tx: Box<dyn Tx + '_>,
        version: u64,
        actor: &str,
        action: &str,
        target: &str,
        mut detail: serde_json::Value,
    ) -> Result<()> {
        detail["version"] = version.into();
        insert_audit(&mut *tx, actor, action, target, &detail).await?;
        tx.commit().await?;
        self.committed.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
        Ok(())
    }

    /// Create a tenant with its platform hostname and upstreams.
    pub async fn create_tenant(&self, actor: &str, new: &NewTenant) -> Result<Tenant> {
        let id = random_id("t_")?;
        let (mut tx, version) = self.begin_write("tenant", &id).await?;
        let now = Value::Int(now_ms());
        let taken = tx
            .query(
                "SELECT 1 FROM tenants WHERE slug = $1 AND status <> 'deleted'",
                &[t(&new.slug)],
            )
            .await?;
        if !taken.is_empty() {
            return Err(Error::Conflict(format!(
                "the slug {:?} is already taken",
                new.slug
            )));
        }
        let host_taken = tx
            .query(
                "SELECT 1 FROM hostnames WHERE hostname = $1",
                &[t(&new.platform_hostname)],
            )
            .await?;
        if !host_taken.is_empty() {
            return Err(Error::Conflict(format!(
                "the hostname {:?} is already in use",
                new.platform_hostname
            )));
        }
        let (status, blueprint, theme) = match &new.blueprint {
            Some((b, th)) => ("provisioning", t(b), t(th)),
            None => ("active", Value::Null, Value::Null),
        };
        tx.query(
            "INSERT INTO tenants (id, slug, name, status, created_at, updated_at, blueprint, theme, plan) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)",
            &[
                t(&id),
                t(&new.slug),
                t(&new.name),
                t(status),
                now.clone(),
                blueprint,
                theme,
                new.plan.as_deref().map_or(Value::Null, t),
            ],
        )
        .await?;
        tx.query(
            "INSERT INTO hostnames (hostname, tenant_id, kind, status, created_at) VALUES ($1, $2, 'platform', 'active', $3)",
            &[t(&new.platform_hostname), t(&id), now],
        )
        .await?;
        write_upstreams(&mut *tx, &id, &new.upstreams).await?;
        let tenant = load_tenant(&mut *tx, &id).await?;
        self.finish(
            tx,
            version,
            actor,
            "tenant.create",
            &id,
            serde_json::json!({"slug": new.slug, "name": new.name, "blueprint": new.blueprint, "plan": new.plan}),
        )
        .await?;
        Ok(tenant)
    }

    /// One tenant, with its provisioning events.
    pub async fn get_tenant(&self, id: &str) -> Result<Tenant> {
        let mut tx = self.backend.begin(false).await?;
        let mut tenant = load_tenant(&mut *tx, id).await?;
        if tenant.blueprint.is_some() {
            tenant.events = Some(provisioning::load_events(&mut *tx, id).await?);
        }
        tx.commit().await?;
        Ok(tenant)
    }

    /// A page of tenants ordered by id.
    pub async fn list_tenants(&self, f: &TenantFilter) -> Result<Page<Tenant>> {
        let limit = f.limit.clamp(1, 500);
        let mut sql = String::from("SELECT id FROM tenants WHERE ");
        let mut params = Vec::new();
        sql += match f.status {
            Some(TenantStatus::Active) => "status = 'active' AND sleep IS NULL",
            Some(TenantStatus::Paused) => {
                "status = 'active' AND sleep = 'paused' AND wake_requested_at IS NULL"
            }
            Some(TenantStatus::Sleeping) => {
                "status = 'active' AND sleep = 'stopped' AND wake_requested_at IS NULL"
            }
            Some(TenantStatus::Waking) => {
                "status = 'active' AND sleep IS NOT NULL AND wake_requested_at IS NOT NULL"
            }
            Some(TenantStatus::Provisioning) => "status = 'provisioning'",
            Some(TenantStatus::Suspended) => "status = 'suspended'",
            Some(TenantStatus::Failed) => "status = 'failed'",
            Some(TenantStatus::Deleted) => "status = 'deleted'",
            None => "status <> 'deleted'",
        };
        if let Some(h) = &f.hostname {
            params.push(t(h));
            sql += &format!(
                " AND id IN (SELECT tenant_id FROM hostnames WHERE hostname = ${})",
                params.len()
            );
        }
        if let Some(q) = f.search.as_deref().filter(|q| !q.is_empty()) {
            let escaped: String = q
                .to_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            params.push(t(&format!("%{escaped}%")));
            let n = params.len();
            sql += &format!(
                " AND (slug LIKE ${n} ESCAPE '\\' OR LOWER(name) LIKE ${n} ESCAPE '\\' OR id IN \
                 (SELECT tenant_id FROM hostnames WHERE hostname LIKE ${n} ESCAPE '\\'))"
            );
        }
        if let Some(a) = &f.after {
            params.push(t(a));
            sql += &format!(" AND id > ${}", params.len());
        }
        sql += &format!(" ORDER BY id LIMIT {}", limit + 1);
        let mut tx = self.backend.begin(false).await?;
        let rows = tx.query(&sql, &params).await?;
        let mut ids = rows
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>>>()?;
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        let items = load_tenants(&mut *tx, &ids).await?;
        tx.commit().await?;
        Ok(Page { items, next })
    }

    /// How many tenants have each status (deleted ones left out).
    pub async fn count_tenants(&self) -> Result<Vec<(TenantStatus, i64)>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT status, sleep, CASE WHEN wake_requested_at IS NULL THEN 0 ELSE 1 END, COUNT(*) \
                 FROM tenants WHERE status <> 'deleted' GROUP BY 1, 2, 3",
                &[],
            )
            .await?;
        tx.commit().await?;
        let mut out: Vec<(TenantStatus, i64)> = Vec::new();
        for r in &rows {
            let sleep = opt_text(r, 1)?;
            let shown = TenantStatus::shown(&text(r, 0)?, sleep.as_deref(), int(r, 2)? != 0);
            if let Some(s) = shown {
                match out.iter_mut().find(|(o, _)| *o == s) {
                    Some((_, n)) => *n += int(r, 3)?,
                    None => out.push((s, int(r, 3)?)),
                }
            }
        }
        Ok(out)
    }

    /// Change a tenant's display name.
    pub async fn rename_tenant(&self, actor: &str, id: &str, name: &str) -> Result<Tenant> {
        self.patch_tenant(actor, id, Some(name), None, None).await
    }

    /// Change a tenant's display name and/or set or clear (`Some(None)`) its plan, in one
    /// write. The caller checks the plan's name against [`Store::plans`].
    pub async fn patch_tenant(
        &self,
        actor: &str,
        id: &str,
        name: Option<&str>,
        plan: Option<Option<&str>>,
        sleep: Option<sleep::SleepPolicy>,
    ) -> Result<Tenant> {
        let mut sets = Vec::new();
        if let Some(n) = name {
            sets.push(("name", t(n)));
        }
        if let Some(p) = plan {
            sets.push(("plan", p.map_or(Value::Null, t)));
        }
        if let Some(p) = &sleep {
            let json = serde_json::to_string(p).map_err(|e| Error::Internal(e.to_string()))?;
            sets.push(("sleep_policy", t(&json)));
        }
        let action = match (name, plan, sleep) {
            (Some(_), None, None) => "tenant.rename",
            (None, Some(_), None) => "tenant.plan",
            (None, None, Some(_)) => "tenant.sleep_policy",
            _ => "tenant.update",
        };
        let mut detail = serde_json::json!({});
        if let Some(n) = name {
            detail["name"] = n.into();
        }
        if let Some(p) = plan {
            detail["plan"] = p.into();
        }
        if let Some(p) = sleep {
            detail["idle_pause_seconds"] = p.idle_pause_seconds.into();
            detail["idle_stop_seconds"] = p.idle_stop_seconds.into();
        }
        self.update_tenant(actor, id, sets, action, detail).await
    }

    /// Set columns of a live tenant's row (and `updated_at`), audited as `action`.
    async fn update_tenant(
        &self,
        actor: &str,
        id: &str,
        sets: Vec<(&'static str, Value)>,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<Tenant> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        live_tenant(&mut *tx, id).await?;
        let mut sql = String::from("UPDATE tenants SET ");
        let mut params = Vec::with_capacity(sets.len() + 2);
        for (column, value) in sets {
            params.push(value);
            sql += &format!("{column} = ${}, ", params.len());
        }
        params.push(Value::Int(now_ms()));
        params.push(t(id));
        sql += &format!(
            "updated_at = ${} WHERE id = ${}",
            params.len() - 1,
            params.len()
        );
        tx.query(&sql, &params).await?;
        let tenant = load_tenant(&mut *tx, id).await?;
        self.finish(tx, version, actor, action, id, detail).await?;
        Ok(tenant)
    }

    /// Replace a tenant's upstreams.
    pub async fn set_upstreams(
        &self,
        actor: &str,
        id: &str,
        upstreams: &[SocketAddr],
    ) -> Result<Tenant> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        live_tenant(&mut *tx, id).await?;
        let provisioned = tx
            .query(
                "SELECT 1 FROM tenants WHERE id = $1 AND blueprint IS NOT NULL",
                &[t(id)],
            )
            .await?;
        if !provisioned.is_empty() {
            return Err(Error::Conflict(format!(
                "tenant {id:?} runs from a blueprint: its upstreams follow its containers"
            )));
        }
        tx.query("DELETE FROM upstreams WHERE tenant_id = $1", &[t(id)])
            .await?;
        write_upstreams(&mut *tx, id, upstreams).await?;
        tx.query(
            "UPDATE tenants SET updated_at = $1 WHERE id = $2",
            &[Value::Int(now_ms()), t(id)],
        )
        .await?;
        let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
        let tenant = load_tenant(&mut *tx, id).await?;
        self.finish(
            tx,
            version,
            actor,
            "tenant.upstreams",
            id,
            serde_json::json!({"upstreams": list}),
        )
        .await?;
        Ok(tenant)
    }

    /// Replace a tenant's own limits (they win over its plan's, field by field); applied by
    /// every proxy as the change reaches it.
    pub async fn set_limits(&self, actor: &str, id: &str, limits: &Limits) -> Result<Tenant> {
        let stored = if limits.is_empty() {
            Value::Null
        } else {
            t(&serde_json::to_string(limits).map_err(|e| Error::Internal(e.to_string()))?)
        };
        let detail = serde_json::json!({ "limits": limits });
        self.update_tenant(actor, id, vec![("limits", stored)], "tenant.limits", detail)
            .await
    }

    /// Suspend (`Suspended`) or resume (`Active`) a tenant.
    pub async fn set_status(&self, actor: &str, id: &str, status: TenantStatus) -> Result<Tenant> {
        if status == TenantStatus::Deleted {
            return Err(Error::Internal("use delete_tenant".into()));
        }
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        let current = live_tenant(&mut *tx, id).await?;
        if !matches!(current.as_str(), "active" | "suspended") {
            return Err(Error::Conflict(format!(
                "tenant {id:?} is {current}: only active and suspended tenants can be suspended or resumed"
            )));
        }
        // Suspended and resumed stores are awake (a suspended one's containers are
        // stopped by suspend itself); the idle clock starts again.
        tx.query(
            "UPDATE tenants SET status = $1, updated_at = $2, sleep = NULL, \
             wake_requested_at = NULL, awake_at = $2 WHERE id = $3",
            &[t(status.as_str()), Value::Int(now_ms()), t(id)],
        )
        .await?;
        let action = if status == TenantStatus::Suspended {
            "tenant.suspend"
        } else {
            "tenant.resume"
        };
        let tenant = load_tenant(&mut *tx, id).await?;
        self.finish(tx, version, actor, action, id, serde_json::json!({}))
            .await?;
        Ok(tenant)
    }

    /// Delete a tenant: its hostnames are released at once and it stops routing everywhere.
    pub async fn delete_tenant(&self, actor: &str, id: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        live_tenant(&mut *tx, id).await?;
        tx.query("DELETE FROM hostnames WHERE tenant_id = $1", &[t(id)])
            .await?;
        // Its custom domains go with it: challenges, certificates, tokens.
        let doomed = tx
            .query(
                "SELECT id FROM domains WHERE tenant_id = $1 AND status <> 'deleted'",
                &[t(id)],
            )
            .await?;
        for r in &doomed {
            let d = domains::load_domain(&mut *tx, &text(r, 0)?).await?;
            self.retire_domain(&mut *tx, version, &d).await?;
        }
        tx.query(
            "UPDATE tenants SET status = 'deleted', updated_at = $1 WHERE id = $2",
            &[Value::Int(now_ms()), t(id)],
        )
        .await?;
        self.finish(
            tx,
            version,
            actor,
            "tenant.delete",
            id,
            serde_json::json!({}),
        )
        .await
    }

    /// Store a certificate.
    pub async fn add_certificate(
        &self,
        actor: &str,
        c: &NewCertificate,
    ) -> Result<CertificateInfo> {
        let id = random_id("c_")?;
        let (mut tx, version) = self.begin_write("certificate", &id).await?;
        insert_certificate(&mut *tx, &id, c).await?;
        let info = load_certificates(&mut *tx, Some(&id))
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("certificate vanished".into()))?;
        self.finish(
            tx,
            version,
            actor,
            "certificate.add",
            &id,
            serde_json::json!({"names": c.names}),
        )
        .await?;
        Ok(info)
    }

    /// Every stored certificate (without keys).
    pub async fn list_certificates(&self) -> Result<Vec<CertificateInfo>> {
        let mut tx = self.backend.begin(false).await?;
        let list = load_certificates(&mut *tx, None).await?;
        tx.commit().await?;
        Ok(list)
    }

    /// Certificates that expire before `before_s` (unix seconds), soonest first, at most
    /// `limit`.
    pub async fn expiring_certificates(
        &self,
        before_s: i64,
        limit: usize,
    ) -> Result<Vec<CertificateInfo>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT id FROM certificates WHERE not_after < $1 ORDER BY not_after, id LIMIT {}",
                    limit.clamp(1, 1000)
                ),
                &[Value::Int(before_s)],
            )
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            out.extend(load_certificates(&mut *tx, Some(&text(r, 0)?)).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Remove a certificate from the store and from every proxy.
    pub async fn delete_certificate(&self, actor: &str, id: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("certificate", id).await?;
        let managed = tx
            .query(
                "SELECT 1 FROM domains WHERE certificate_id = $1 AND status <> 'deleted'",
                &[t(id)],
            )
            .await?;
        if !managed.is_empty() {
            return Err(Error::Conflict(
                "the certificate is managed by a custom domain: detach the domain instead".into(),
            ));
        }
        let gone = tx
            .query(
                "DELETE FROM certificates WHERE id = $1 RETURNING id",
                &[t(id)],
            )
            .await?;
        if gone.is_empty() {
            return Err(Error::NotFound(format!("certificate {id:?}")));
        }
        self.finish(
            tx,
            version,
            actor,
            "certificate.delete",
            id,
            serde_json::json!({}),
        )
        .await
    }

    /// Drop change-log entries older than the newest `keep` versions; returns how many went.
    /// Followers further behind than what is kept are sent to a full snapshot.
    pub async fn prune_changes(&self, keep: u64) -> Result<u64> {
        let mut tx = self.backend.begin(true).await?;
        let current = current_version(&mut *tx).await?;
        let below = current.saturating_sub(keep);
        let gone = tx
            .query(
                "DELETE FROM changes WHERE version <= $1 RETURNING version",
                &[Value::Int(below as i64)],
            )
            .await?;
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    /// The newest audit events, newest first.
    pub async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>> {
        self.audit_by(None, None, limit).await
    }

    /// The newest audit events, only those of `actor` and/or about `target` when given.
    pub async fn audit_by(
        &self,
        actor: Option<&str>,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>> {
        let mut sql =
            String::from("SELECT at, actor, action, target, detail FROM audit WHERE 1 = 1");
        let mut params = Vec::new();
        if let Some(a) = actor {
            params.push(t(a));
            sql += &format!(" AND actor = ${}", params.len());
        }
        if let Some(o) = target {
            params.push(t(o));
            sql += &format!(" AND target = ${}", params.len());
        }
        sql += &format!(" ORDER BY id DESC LIMIT {}", limit.clamp(1, 1000));
        let mut tx = self.backend.begin(false).await?;
        let rows = tx.query(&sql, &params).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: rfc3339(int(r, 0)?),
                    actor: text(r, 1)?,
                    action: text(r, 2)?,
                    target: text(r, 3)?,
                    detail: text(r, 4)?,
                })
            })
            .collect()
    }

    /// Record this node's heartbeat (insert or refresh its row), and forget nodes silent for
    /// longer than [`FORGET_NODES_MS`].
    pub async fn heartbeat(
        &self,
        node: &NodeInfo,
        started_at_ms: i64,
        route_version: u64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "INSERT INTO nodes (id, role, name, version, route_version, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
             route_version = excluded.route_version, heartbeat_at = excluded.heartbeat_at",
            &[
                t(&node.id),
                t(&node.role),
                t(&node.name),
                t(&node.version),
                Value::Int(i64::try_from(route_version).unwrap_or(i64::MAX)),
                Value::Int(started_at_ms),
                Value::Int(now),
            ],
        )
        .await?;
        tx.query(
            "DELETE FROM nodes WHERE heartbeat_at < $1",
            &[Value::Int(now - FORGET_NODES_MS)],
        )
        .await?;
        tx.commit().await
    }

    /// Every node known, newest first; `live` when its heartbeat is younger than
    /// `live_within_ms`.
    pub async fn nodes(&self, live_within_ms: i64) -> Result<Vec<NodeInfo>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT id, role, name, version, route_version, started_at, heartbeat_at FROM nodes \
                 ORDER BY role, started_at DESC, id",
                &[],
            )
            .await?;
        tx.commit().await?;
        let now = now_ms();
        rows.iter()
            .map(|r| {
                let beat = int(r, 6)?;
                Ok(NodeInfo {
                    id: text(r, 0)?,
                    role: text(r, 1)?,
                    name: text(r, 2)?,
                    version: text(r, 3)?,
                    route_version: version_of(int(r, 4)?),
                    started_at: rfc3339(int(r, 5)?),
                    heartbeat_at: rfc3339(beat),
                    live: now - beat <= live_within_ms,
                })
            })
            .collect()
    }

    /// Everything proxies serve from the store, at one version.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self.backend.begin(false).await?;
        let version = current_version(&mut *tx).await?;
        let routes = load_routes(&mut *tx, &self.plans, None).await?;
        let certificates = load_stored_certificates(&mut *tx, None).await?;
        let challenges = domains::load_challenges(&mut *tx, None).await?;
        tx.commit().await?;
        Ok(Snapshot {
            version,
            routes,
            certificates,
            challenges,
        })
    }

    /// The changes after `version`, as current state of every object that changed, at the
    /// store's current version. `None` when the caller must take a full snapshot instead:
    /// it is ahead of the store (e.g. after a restore from backup), or so far behind that
    /// more than [`MAX_DELTA_OBJECTS`] objects changed (a snapshot is cheaper then, and the
    /// queries stay within the databases' limits on bound parameters).
    pub async fn delta_since(&self, version: u64) -> Result<Option<Delta>> {
        let mut tx = self.backend.begin(false).await?;
        let current = current_version(&mut *tx).await?;
        // The log may have been pruned: a follower whose next version is gone from it
        // cannot be brought up to date by a delta.
        let oldest = tx
            .query("SELECT min(version) FROM changes", &[])
            .await?
            .first()
            .and_then(|r| match r.first() {
                Some(Value::Int(v)) => Some(version_of(*v)),
                _ => None,
            })
            .unwrap_or(current + 1);
        if version > current || version + 1 < oldest {
            tx.commit().await?;
            return Ok(None);
        }
        let rows = tx
            .query(
                "SELECT entity, entity_id, version FROM changes WHERE version > $1 ORDER BY version",
                &[Value::Int(version as i64)],
            )
            .await?;
        let mut tenants = BTreeSet::new();
        let mut certs = BTreeSet::new();
        let mut domains = BTreeSet::new();
        for r in &rows {
            match text(r, 0)?.as_str() {
                "tenant" => tenants.insert(text(r, 1)?),
                "domain" => domains.insert(text(r, 1)?),
                _ => certs.insert(text(r, 1)?),
            };
            if tenants.len() + certs.len() + domains.len() > MAX_DELTA_OBJECTS {
                tx.commit().await?;
                return Ok(None);
            }
        }
        let ids: Vec<String> = tenants.into_iter().collect();
        let routes = load_routes(&mut *tx, &self.plans, Some(&ids)).await?;
        let mut by_id: HashMap<&str, &Route> = routes.iter().map(|r| (r.id.as_str(), r)).collect();
        let route_changes = ids
            .iter()
            .map(|id| match by_id.remove(id.as_str()) {
                Some(r) => RouteChange::Upsert(r.clone()),
                None => RouteChange::Remove { id: id.clone() },
            })
            .collect();
        let cert_ids: Vec<String> = certs.into_iter().collect();
        let stored = load_stored_certificates(&mut *tx, Some(&cert_ids)).await?;
        let mut by_id: HashMap<&str, &StoredCertificate> =
            stored.iter().map(|c| (c.id.as_str(), c)).collect();
        let cert_changes = cert_ids
            .iter()
            .map(|id| match by_id.remove(id.as_str()) {
                Some(c) => CertificateChange::Upsert(c.clone()),
                None => CertificateChange::Remove { id: id.clone() },
            })
            .collect();
        let domain_ids: Vec<String> = domains.into_iter().collect();
        let challenges = domains::load_challenges(&mut *tx, Some(&domain_ids)).await?;
        tx.commit().await?;
        Ok(Some(Delta {
            version: current,
            routes: route_changes,
            certificates: cert_changes,
            challenges,
        }))
    }
}

async fn current_version(tx: &mut dyn Tx) -> Result<u64> {
    let rows = tx
        .query("SELECT version FROM meta WHERE id = 1", &[])
        .await?;
    Ok(version_of(int(
        rows.first()
            .ok_or_else(|| Error::Internal("meta row missing".into()))?,
        0,
    )?))
}

/// Store a certificate row under `id`.
async fn insert_certificate(tx: &mut dyn Tx, id: &str, c: &NewCertificate) -> Result<()> {
    tx.query(
        "INSERT INTO certificates (id, names, issuer, chain_pem, sealed_key, not_after, source, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            t(id),
            t(&c.names.join(" ")),
            t(&c.issuer),
            t(&c.chain_pem),
            Value::Bytes(c.sealed_key.clone()),
            Value::Int(c.not_after),
            t(c.source),
            Value::Int(now_ms()),
        ],
    )
    .await?;
    Ok(())
}

async fn write_upstreams(tx: &mut dyn Tx, id: &str, upstreams: &[SocketAddr]) -> Result<()> {
    write_upstream_groups(tx, id, &[("/".to_owned(), upstreams.to_vec())]).await
}

/// Write a tenant's upstreams by path prefix (`/`: the route's own).
async fn write_upstream_groups(
    tx: &mut dyn Tx,
    id: &str,
    groups: &[(String, Vec<SocketAddr>)],
) -> Result<()> {
    let mut all: Vec<(&str, SocketAddr)> = Vec::new();
    for (path, ups) in groups {
        all.extend(ups.iter().map(|u| (path.as_str(), *u)));
    }
    for (i, (path, u)) in all.into_iter().enumerate() {
        tx.query(
            "INSERT INTO upstreams (tenant_id, position, address, weight, path) VALUES ($1, $2, $3, 1, $4)",
            &[t(id), Value::Int(i as i64), t(&u.to_string()), t(path)],
        )
        .await?;
    }
    Ok(())
}

/// The tenant must exist and not be deleted; returns its status.
async fn live_tenant(tx: &mut dyn Tx, id: &str) -> Result<String> {
    let rows = tx
        .query("SELECT status FROM tenants WHERE id = $1", &[t(id)])
        .await?;
    match rows.first().map(|r| text(r, 0)).transpose()? {
        None => Err(Error::NotFound(format!("tenant {id:?}"))),
        Some(s) if s == "deleted" => Err(Error::NotFound(format!("tenant {id:?}"))),
        Some(s) => Ok(s),
    }
}

async fn load_tenant(tx: &mut dyn Tx, id: &str) -> Result<Tenant> {
    load_tenants(tx, &[id.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("tenant {id:?}")))
}

async fn load_tenants(tx: &mut dyn Tx, ids: &[String]) -> Result<Vec<Tenant>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<Value> = ids.iter().map(|i| t(i)).collect();
    let inlist = placeholders(1, ids.len());
    let rows = tx
        .query(
            &format!("SELECT id, slug, name, status, created_at, updated_at, blueprint, theme, generation, status_reason, plan, limits, \
                      sleep, wake_requested_at, sleep_policy \
                      FROM tenants WHERE id IN ({inlist}) ORDER BY id"),
            &params,
        )
        .await?;
    let hosts = tx
        .query(
            &format!("SELECT tenant_id, hostname FROM hostnames WHERE tenant_id IN ({inlist}) ORDER BY kind DESC, hostname"),
            &params,
        )
        .await?;
    let ups = tx
        .query(
            &format!("SELECT tenant_id, address, path FROM upstreams WHERE tenant_id IN ({inlist}) ORDER BY tenant_id, position"),
            &params,
        )
        .await?;
    let mut hostnames: HashMap<String, Vec<String>> = HashMap::new();
    for r in &hosts {
        hostnames.entry(text(r, 0)?).or_default().push(text(r, 1)?);
    }
    let mut upstreams: HashMap<String, Vec<String>> = HashMap::new();
    let mut paths: HashMap<String, BTreeMap<String, Vec<String>>> = HashMap::new();
    for r in &ups {
        let path = text(r, 2)?;
        if path == "/" {
            upstreams.entry(text(r, 0)?).or_default().push(text(r, 1)?);
        } else {
            paths
                .entry(text(r, 0)?)
                .or_default()
                .entry(path)
                .or_default()
                .push(text(r, 1)?);
        }
    }
    rows.iter()
        .map(|r| {
            let id = text(r, 0)?;
            let status = text(r, 3)?;
            let sleep = opt_text(r, 12)?;
            let wake_requested = !matches!(r.get(13), Some(Value::Null) | None);
            let policy = sleep::parse_policy(opt_text(r, 14)?)?;
            Ok(Tenant {
                slug: text(r, 1)?,
                name: text(r, 2)?,
                status: TenantStatus::shown(&status, sleep.as_deref(), wake_requested)
                    .ok_or_else(|| Error::Internal(format!("unknown tenant status {status:?}")))?,
                idle_pause_seconds: policy.and_then(|p| p.idle_pause_seconds),
                idle_stop_seconds: policy.and_then(|p| p.idle_stop_seconds),
                sleep_override: policy.is_some(),
                hostnames: hostnames.remove(&id).unwrap_or_default(),
                upstreams: upstreams.remove(&id).unwrap_or_default(),
                paths: paths.remove(&id),
                blueprint: opt_text(r, 6)?,
                theme: opt_text(r, 7)?,
                generation: match opt_text(r, 6)? {
                    Some(_) => Some(version_of(int(r, 8)?)),
                    None => None,
                },
                status_reason: opt_text(r, 9)?,
                plan: opt_text(r, 10)?,
                limits: match opt_text(r, 11)? {
                    Some(j) => serde_json::from_str(&j)
                        .map_err(|e| Error::Internal(format!("stored limits: {e}")))?,
                    None => Limits::default(),
                },
                events: None,
                created_at: rfc3339(int(r, 4)?),
                updated_at: rfc3339(int(r, 5)?),
                id,
            })
        })
        .collect()
}

/// Routes of routed tenants, active or suspended (all, or those among `ids`). A tenant id
/// in `ids` without a route in the result is not routed: provisioning, failed, deleted.
async fn load_routes(tx: &mut dyn Tx, plans: &Plans, ids: Option<&[String]>) -> Result<Vec<Route>> {
    let Some((filter, params)) = id_filter(" AND t.id", ids) else {
        return Ok(Vec::new());
    };
    let tenants = tx
        .query(
            &format!("SELECT t.id, t.status, t.plan, t.limits, t.sleep FROM tenants t WHERE t.status IN ('active', 'suspended'){filter} ORDER BY t.id"),
            &params,
        )
        .await?;
    let hosts = tx
        .query(
            &format!(
                "SELECT h.tenant_id, h.hostname FROM hostnames h JOIN tenants t ON t.id = h.tenant_id \
                 WHERE h.status = 'active' AND t.status IN ('active', 'suspended'){filter} ORDER BY h.hostname"
            ),
            &params,
        )
        .await?;
    let ups = tx
        .query(
            &format!(
                "SELECT u.tenant_id, u.address, u.path FROM upstreams u JOIN tenants t ON t.id = u.tenant_id \
                 WHERE t.status IN ('active', 'suspended'){filter} ORDER BY u.tenant_id, u.position"
            ),
            &params,
        )
        .await?;
    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    for r in &tenants {
        let id = text(r, 0)?;
        let limits = effective_limits(plans, &id, opt_text(r, 2)?, opt_text(r, 3)?);
        routes.insert(
            id.clone(),
            Route {
                id,
                hostnames: Vec::new(),
                upstreams: Vec::new(),
                https_redirect: false,
                suspended: text(r, 1)? == "suspended",
                paths: Box::default(),
                hsts: None,
                limits,
                asleep: sleep::parse_level(opt_text(r, 4)?),
            },
        );
    }
    for r in &hosts {
        if let Some(route) = routes.get_mut(&text(r, 0)?) {
            let h = text(r, 1)?;
            match HostPattern::parse(&h) {
                Ok(p) => route.hostnames.push(p),
                Err(e) => tracing::error!(hostname = %h, "stored hostname not routed: {e}"),
            }
        }
    }
    let mut paths: BTreeMap<String, Vec<tenantgate_config::PathRoute>> = BTreeMap::new();
    for r in &ups {
        let tid = text(r, 0)?;
        if let Some(route) = routes.get_mut(&tid) {
            let a = text(r, 1)?;
            let addr = match a.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(e) => {
                    tracing::error!(upstream = %a, "stored upstream not used: {e}");
                    continue;
                }
            };
            let path = text(r, 2)?;
            if path == "/" {
                route.upstreams.push(Upstream { addr });
                continue;
            }
            let groups = paths.entry(tid).or_default();
            match groups.iter_mut().find(|g| g.prefix == path) {
                Some(g) => g.upstreams.push(Upstream { addr }),
                None => groups.push(tenantgate_config::PathRoute {
                    prefix: path,
                    upstreams: vec![Upstream { addr }],
                }),
            }
        }
    }
    for (tid, groups) in paths {
        if let Some(route) = routes.get_mut(&tid) {
            route.paths = groups.into();
        }
    }
    Ok(routes.into_values().collect())
}

/// A tenant's limits as its route carries them: its own over its plan's (`None`: none). A
/// plan missing from the config (removed since) counts as no plan, and says so.
fn effective_limits(
    plans: &Plans,
    tenant: &str,
    plan: Option<String>,
    own: Option<String>,
) -> Option<Limits> {
    let base = match plan {
        None => Limits::default(),
        Some(p) => plans.get(&p).copied().unwrap_or_else(|| {
            tracing::error!(tenant, plan = %p, "tenant's plan is not in the config: its limits are its own only");
            Limits::default()
        }),
    };
    let own = match own.as_deref().map(serde_json::from_str::<Limits>) {
        None => Limits::default(),
        Some(Ok(l)) => l,
        Some(Err(e)) => {
            tracing::error!(tenant, "stored limits not used: {e}");
            Limits::default()
        }
    };
    Some(own.over(base)).filter(|l| !l.is_empty())
}

async fn load_certificates(tx: &mut dyn Tx, id: Option<&str>) -> Result<Vec<CertificateInfo>> {
    let (filter, params) = match id {
        Some(id) => (" WHERE id = $1", vec![t(id)]),
        None => ("", vec![]),
    };
    let rows = tx
        .query(
            &format!("SELECT id, names, issuer, not_after, source, created_at FROM certificates{filter} ORDER BY id"),
            &params,
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(CertificateInfo {
                id: text(r, 0)?,
                names: text(r, 1)?
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                issuer: text(r, 2)?,
                not_after: rfc3339(int(r, 3)?.saturating_mul(1000)),
                source: text(r, 4)?,
                created_at: rfc3339(int(r, 5)?),
            })
        })
        .collect()
}

async fn load_stored_certificates(
    tx: &mut dyn Tx,
    ids: Option<&[String]>,
) -> Result<Vec<StoredCertificate>> {
    let Some((filter, params)) = id_filter(" WHERE id", ids) else {
        return Ok(Vec::new());
    };
    let rows = tx
        .query(
            &format!("SELECT id, chain_pem, sealed_key FROM certificates{filter} ORDER BY id"),
            &params,
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredCertificate {
                id: text(r, 0)?,
                chain_pem: text(r, 1)?,
                sealed_key: bytes(r, 2)?,
            })
        })
        .collect()
}
