//! Tenants provisioned from blueprints: their deployment (blueprint, theme, generation, sealed
//! database password), the step-by-step events shown by the API, and the lease one control
//! node holds while it provisions or redeploys a tenant.
//!
//! Invariants: a provisioned tenant is routed only once it is `active`, and then to the
//! addresses of its healthy containers; switching to a new generation (blue/green) changes
//! upstreams, generation and theme in one version, so every proxy moves at once. Events,
//! the database secret and leases are bookkeeping proxies never see: no version.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{
    bytes, int, live_tenant, opt_text, t, text, version_of, write_upstream_groups, Store, Tx, Value,
};
use crate::model::{rfc3339, TenantEvent};
use crate::{now_ms, Error, Result};

/// What control needs to run a provisioned tenant.
#[derive(Clone, PartialEq)]
pub struct Deployment {
    /// Tenant id.
    pub id: String,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Stored status (`provisioning`, `active`, `suspended`, `failed`, `deleted`).
    pub status: String,
    /// Blueprint.
    pub blueprint: String,
    /// Theme.
    pub theme: String,
    /// Generation its route points at (0: none yet).
    pub generation: u64,
    /// The sealed tenant-database password, once created.
    pub db_secret: Option<Vec<u8>>,
    /// Current upstreams by path prefix (`/`: the route's own), in stored order.
    pub upstreams: Vec<(String, Vec<SocketAddr>)>,
    /// Whether a node holds the tenant's lease now.
    pub leased: bool,
    /// Replicas per component set through the API (others: the blueprint's).
    pub replicas: std::collections::BTreeMap<String, u32>,
    /// How deeply its containers sleep (`None`: awake).
    pub sleep: Option<tenantgate_config::SleepLevel>,
    /// A proxy asked for it to be woken.
    pub wake_requested: bool,
    /// When it last woke, was deployed or resumed (ms; 0: never recorded).
    pub awake_at: i64,
    /// Its own idle periods (`None`: its blueprint's).
    pub sleep_policy: Option<super::sleep::SleepPolicy>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("slug", &self.slug)
            .field("status", &self.status)
            .field("blueprint", &self.blueprint)
            .field("theme", &self.theme)
            .field("generation", &self.generation)
            .field("upstreams", &self.upstreams)
            .field("sleep", &self.sleep)
            .finish_non_exhaustive()
    }
}

/// Events of tenant `id`, oldest first (the newest 200).
pub(crate) async fn load_events(tx: &mut dyn Tx, id: &str) -> Result<Vec<TenantEvent>> {
    let rows = tx
        .query(
            "SELECT at, message FROM (SELECT id, at, message FROM tenant_events WHERE tenant_id = $1 \
             ORDER BY id DESC LIMIT 200) e ORDER BY id",
            &[t(id)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TenantEvent {
                at: rfc3339(int(r, 0)?),
                message: text(r, 1)?,
            })
        })
        .collect()
}

/// Provisioned tenants: the one with `id`, or (`None`) every one not deleted. One query
/// for the tenants and one for all their upstreams, however many there are.
async fn load_deployments(tx: &mut dyn Tx, id: Option<&str>) -> Result<Vec<Deployment>> {
    let (filter, params) = match id {
        Some(id) => ("id = $1", vec![t(id)]),
        None => ("status <> 'deleted'", vec![]),
    };
    let which = format!("blueprint IS NOT NULL AND {filter}");
    let now = now_ms();
    let rows = tx
        .query(
            &format!(
                "SELECT id, slug, name, status, blueprint, theme, generation, db_secret, lease_until, replicas, \
                 sleep, wake_requested_at, awake_at, sleep_policy \
                 FROM tenants WHERE {which} ORDER BY id"
            ),
            &params,
        )
        .await?;
    let up_rows = tx
        .query(
            &format!(
                "SELECT tenant_id, address, path FROM upstreams \
                 WHERE tenant_id IN (SELECT id FROM tenants WHERE {which}) ORDER BY tenant_id, position"
            ),
            &params,
        )
        .await?;
    let mut upstreams: HashMap<String, Vec<(String, Vec<SocketAddr>)>> = HashMap::new();
    for u in &up_rows {
        let (Ok(addr), path) = (text(u, 1)?.parse::<SocketAddr>(), text(u, 2)?) else {
            continue;
        };
        let groups = upstreams.entry(text(u, 0)?).or_default();
        match groups.iter_mut().find(|(p, _)| *p == path) {
            Some((_, list)) => list.push(addr),
            None => groups.push((path, vec![addr])),
        }
    }
    rows.iter()
        .map(|r| {
            let id = text(r, 0)?;
            Ok(Deployment {
                slug: text(r, 1)?,
                name: text(r, 2)?,
                status: text(r, 3)?,
                blueprint: text(r, 4)?,
                theme: opt_text(r, 5)?.unwrap_or_default(),
                generation: version_of(int(r, 6)?),
                db_secret: match r.get(7) {
                    Some(Value::Null) | None => None,
                    _ => Some(bytes(r, 7)?),
                },
                upstreams: upstreams.remove(&id).unwrap_or_default(),
                leased: int(r, 8)? > now,
                replicas: match opt_text(r, 9)? {
                    Some(j) => serde_json::from_str(&j).map_err(|e| {
                        Error::Internal(format!("tenant {id}: replicas {j:?}: {e}"))
                    })?,
                    None => Default::default(),
                },
                sleep: super::sleep::parse_level(opt_text(r, 10)?),
                wake_requested: !matches!(r.get(11), Some(Value::Null) | None),
                awake_at: match r.get(12) {
                    Some(Value::Null) | None => 0,
                    _ => int(r, 12)?,
                },
                sleep_policy: super::sleep::parse_policy(opt_text(r, 13)?)?,
                id,
            })
        })
        .collect()
}

impl Store {
    /// The deployment of provisioned tenant `id` (deleted ones included).
    pub async fn deployment(&self, id: &str) -> Result<Deployment> {
        let mut tx = self.backend.begin(false).await?;
        let d = load_deployments(&mut *tx, Some(id)).await?.pop();
        tx.commit().await?;
        d.ok_or_else(|| Error::NotFound(format!("provisioned tenant {id:?}")))
    }

    /// Every provisioned tenant that is not deleted.
    pub async fn deployments(&self) -> Result<Vec<Deployment>> {
        let mut tx = self.backend.begin(false).await?;
        let all = load_deployments(&mut *tx, None).await?;
        tx.commit().await?;
        Ok(all)
    }

    /// Record one step of a tenant's provisioning, redeploy or teardown.
    pub async fn tenant_event(&self, id: &str, message: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "INSERT INTO tenant_events (tenant_id, at, message) VALUES ($1, $2, $3)",
            &[t(id), Value::Int(now_ms()), t(message)],
        )
        .await?;
        tx.commit().await
    }

    /// Keep the sealed tenant-database password (or forget it).
    pub async fn set_db_secret(&self, id: &str, sealed: Option<&[u8]>) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "UPDATE tenants SET db_secret = $1 WHERE id = $2",
            &[
                sealed.map_or(Value::Null, |s| Value::Bytes(s.to_vec())),
                t(id),
            ],
        )
        .await?;
        tx.commit().await
    }

    /// Record why the last redeploy (or other work on a live tenant) failed; `None` clears it.
    pub async fn note_tenant(&self, id: &str, reason: Option<&str>) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "UPDATE tenants SET status_reason = $1 WHERE id = $2",
            &[reason.map_or(Value::Null, t), t(id)],
        )
        .await?;
        tx.commit().await
    }

    /// Route tenant `id` to the containers of `generation` (with `theme`), in one version:
    /// a `provisioning` tenant becomes `active`; an active or suspended one keeps its status
    /// (a redeploy, or containers that moved). `asleep`: the containers sleep at that level
    /// (a redeploy of a sleeping store), else they are awake (a wake publishes the new
    /// addresses and the awake state together). Refused for failed and deleted tenants.
    pub async fn deploy(
        &self,
        actor: &str,
        id: &str,
        generation: u64,
        theme: &str,
        upstreams: &[(String, Vec<SocketAddr>)],
        asleep: Option<tenantgate_config::SleepLevel>,
    ) -> Result<()> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        let status = live_tenant(&mut *tx, id).await?;
        if status == "failed" {
            return Err(Error::Conflict(format!("tenant {id:?} has failed")));
        }
        let next = if status == "provisioning" {
            "active"
        } else {
            status.as_str()
        };
        tx.query("DELETE FROM upstreams WHERE tenant_id = $1", &[t(id)])
            .await?;
        write_upstream_groups(&mut *tx, id, upstreams).await?;
        // Awake: the wake (if one was asked for) is done and the idle clock starts again.
        let sleep = match asleep {
            Some(l) => format!("sleep = '{}'", l.as_str()),
            None => "sleep = NULL, wake_requested_at = NULL, awake_at = $4".to_owned(),
        };
        tx.query(
            &format!(
                "UPDATE tenants SET status = $1, generation = $2, theme = $3, status_reason = NULL, \
                 updated_at = $4, {sleep} WHERE id = $5"
            ),
            &[
                t(next),
                Value::Int(generation as i64),
                t(theme),
                Value::Int(now_ms()),
                t(id),
            ],
        )
        .await?;
        let list: std::collections::BTreeMap<&str, Vec<String>> = upstreams
            .iter()
            .map(|(p, ups)| (p.as_str(), ups.iter().map(ToString::to_string).collect()))
            .collect();
        self.finish(
            tx,
            version,
            actor,
            "tenant.deploy",
            id,
            serde_json::json!({"generation": generation, "theme": theme, "upstreams": list, "status": next,
                "sleep": asleep.map(|l| l.as_str())}),
        )
        .await
    }

    /// Run `replicas` containers of `component` for tenant `id` from now on (the
    /// reconciler and the next redeploy follow it).
    pub async fn set_replicas(
        &self,
        actor: &str,
        id: &str,
        component: &str,
        replicas: u32,
    ) -> Result<()> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        live_tenant(&mut *tx, id).await?;
        let rows = tx
            .query("SELECT replicas FROM tenants WHERE id = $1", &[t(id)])
            .await?;
        let mut all: std::collections::BTreeMap<String, u32> =
            match rows.first().map(|r| opt_text(r, 0)).transpose()?.flatten() {
                Some(j) => serde_json::from_str(&j).map_err(|e| Error::Internal(e.to_string()))?,
                None => Default::default(),
            };
        all.insert(component.to_owned(), replicas);
        let json = serde_json::to_string(&all).map_err(|e| Error::Internal(e.to_string()))?;
        tx.query(
            "UPDATE tenants SET replicas = $1, updated_at = $2 WHERE id = $3",
            &[t(&json), Value::Int(now_ms()), t(id)],
        )
        .await?;
        self.finish(
            tx,
            version,
            actor,
            "tenant.scale",
            id,
            serde_json::json!({"component": component, "replicas": replicas}),
        )
        .await
    }

    /// Provisioning of tenant `id` failed: it becomes `failed` with `reason` and is not
    /// routed. Only a `provisioning` tenant can fail (a deleted one stays deleted).
    pub async fn fail_tenant(&self, actor: &str, id: &str, reason: &str) -> Result<()> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        let status = live_tenant(&mut *tx, id).await?;
        if status != "provisioning" {
            return Err(Error::Conflict(format!("tenant {id:?} is {status}")));
        }
        tx.query("DELETE FROM upstreams WHERE tenant_id = $1", &[t(id)])
            .await?;
        tx.query(
            "UPDATE tenants SET status = 'failed', status_reason = $1, updated_at = $2 WHERE id = $3",
            &[t(reason), Value::Int(now_ms()), t(id)],
        )
        .await?;
        self.finish(
            tx,
            version,
            actor,
            "tenant.fail",
            id,
            serde_json::json!({"reason": reason}),
        )
        .await
    }

    /// Take tenant `id` for `owner` until `until` (ms) unless another holder has it: one
    /// node at a time provisions or redeploys a tenant, and the reconciler leaves it alone.
    pub async fn claim_tenant(&self, id: &str, owner: &str, until: i64) -> Result<bool> {
        self.claim_row("tenants", id, owner, until).await
    }

    /// Extend `owner`'s lease of tenant `id` to `until` (ms); nothing when it is not the
    /// holder.
    pub async fn renew_tenant(&self, id: &str, owner: &str, until: i64) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "UPDATE tenants SET lease_until = $1 WHERE id = $2 AND lease_owner = $3",
            &[Value::Int(until), t(id), t(owner)],
        )
        .await?;
        tx.commit().await
    }

    /// Give tenant `id` back.
    pub async fn release_tenant(&self, id: &str, owner: &str) -> Result<()> {
        self.release_row("tenants", id, owner).await
    }
}
