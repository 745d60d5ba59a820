//! Stores that sleep: each tenant's sleep state (published in its route, so every proxy
//! holds its requests), the wakes proxies ask for, the tenant's own idle periods, and when
//! each proxy node last saw a request for it.
//!
//! Invariants: a change of sleep state is one version (every proxy holds or forwards from
//! the same moment); waking publishes the new addresses and the awake state together; a
//! wake request is bookkeeping (no version) and survives a control node's restart (it is a
//! row, and `NOTIFY` only hurries it); activity is one row per tenant and node, only ever
//! moved forward.

use std::collections::HashMap;

use tenantgate_config::SleepLevel;

use super::{int, live_tenant, t, text, Store, Value};
use crate::{now_ms, Error, Result};

/// The notification channel a fleet proxy wakes control nodes on (payload: tenant id).
pub const WAKE_CHANNEL: &str = "tenantgate_wake";

/// A tenant's own idle periods (seconds; `None`: never), over its blueprint's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SleepPolicy {
    /// Freeze after this long without traffic.
    pub idle_pause_seconds: Option<u64>,
    /// Stop after this long without traffic.
    pub idle_stop_seconds: Option<u64>,
}

impl SleepPolicy {
    /// The level a store idle for `idle_ms` should sleep at (`None`: awake).
    pub fn level_after(&self, idle_ms: i64) -> Option<SleepLevel> {
        let passed = |s: Option<u64>| {
            s.is_some_and(|s| idle_ms >= i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
        };
        if passed(self.idle_stop_seconds) {
            Some(SleepLevel::Stopped)
        } else if passed(self.idle_pause_seconds) {
            Some(SleepLevel::Paused)
        } else {
            None
        }
    }

    /// Whether it ever sleeps.
    pub fn sleeps(&self) -> bool {
        self.idle_pause_seconds.is_some() || self.idle_stop_seconds.is_some()
    }
}

impl Store {
    /// Publish tenant `id` asleep at `level`, or awake (`None`: its requests are forwarded
    /// again, to the upstreams stored now), in one version. Waking clears the wake request
    /// and restarts the idle clock.
    pub async fn set_sleep(&self, actor: &str, id: &str, level: Option<SleepLevel>) -> Result<()> {
        let (mut tx, version) = self.begin_write("tenant", id).await?;
        let status = live_tenant(&mut *tx, id).await?;
        if status != "active" {
            return Err(Error::Conflict(format!(
                "tenant {id:?} is {status}: only active tenants sleep"
            )));
        }
        match level {
            Some(l) => {
                tx.query(
                    "UPDATE tenants SET sleep = $1 WHERE id = $2",
                    &[t(l.as_str()), t(id)],
                )
                .await?
            }
            None => {
                tx.query(
                    "UPDATE tenants SET sleep = NULL, wake_requested_at = NULL, awake_at = $1 \
                     WHERE id = $2",
                    &[Value::Int(now_ms()), t(id)],
                )
                .await?
            }
        };
        let (action, level) = match level {
            Some(l) => ("tenant.sleep", l.as_str()),
            None => ("tenant.wake", "awake"),
        };
        self.finish(
            tx,
            version,
            actor,
            action,
            id,
            serde_json::json!({ "sleep": level }),
        )
        .await
    }

    /// A proxy asks for sleeping tenant `id` to be woken: recorded (the first ask of a sleep
    /// keeps its time) and, on PostgreSQL, announced to control nodes. Nothing for a tenant
    /// that is awake.
    pub async fn request_wake(&self, id: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "UPDATE tenants SET wake_requested_at = COALESCE(wake_requested_at, $1) \
             WHERE id = $2 AND sleep IS NOT NULL AND status = 'active'",
            &[Value::Int(now_ms()), t(id)],
        )
        .await?;
        self.backend.signal(&mut *tx, WAKE_CHANNEL, id).await?;
        tx.commit().await
    }

    /// Tenants asleep with a wake asked for, oldest ask first.
    pub async fn wakes_requested(&self) -> Result<Vec<String>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT id FROM tenants WHERE wake_requested_at IS NOT NULL AND sleep IS NOT NULL \
                 AND status = 'active' ORDER BY wake_requested_at, id",
                &[],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }

    /// Node `node` saw requests for `tenants` (answered, or in flight) at `at_ms`.
    pub async fn record_activity(&self, node: &str, at_ms: i64, tenants: &[String]) -> Result<()> {
        if tenants.is_empty() {
            return Ok(());
        }
        let mut tx = self.backend.begin(true).await?;
        for chunk in tenants.chunks(300) {
            let mut params = Vec::with_capacity(chunk.len() * 3);
            let mut values = Vec::with_capacity(chunk.len());
            for id in chunk {
                values.push(format!(
                    "(${}, ${}, ${})",
                    params.len() + 1,
                    params.len() + 2,
                    params.len() + 3
                ));
                params.extend([t(id), t(node), Value::Int(at_ms)]);
            }
            tx.query(
                &format!(
                    "INSERT INTO activity (tenant_id, node_id, last_at) VALUES {} \
                     ON CONFLICT (tenant_id, node_id) DO UPDATE SET last_at = \
                     CASE WHEN excluded.last_at > activity.last_at THEN excluded.last_at \
                     ELSE activity.last_at END",
                    values.join(", ")
                ),
                &params,
            )
            .await?;
        }
        tx.commit().await
    }

    /// The last request any node saw for each tenant that has had one.
    pub async fn last_activity(&self) -> Result<HashMap<String, i64>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT tenant_id, MAX(last_at) FROM activity GROUP BY tenant_id",
                &[],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((text(r, 0)?, int(r, 1)?))).collect()
    }

    /// The last request any node saw for tenant `id`.
    pub async fn last_activity_of(&self, id: &str) -> Result<Option<i64>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT MAX(last_at) FROM activity WHERE tenant_id = $1",
                &[t(id)],
            )
            .await?;
        tx.commit().await?;
        match rows.first().and_then(|r| r.first()) {
            Some(Value::Null) | None => Ok(None),
            Some(_) => Ok(Some(int(&rows[0], 0)?)),
        }
    }

    /// Forget the activity of tenants that are gone.
    pub async fn prune_activity(&self) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "DELETE FROM activity WHERE tenant_id NOT IN \
             (SELECT id FROM tenants WHERE status <> 'deleted')",
            &[],
        )
        .await?;
        tx.commit().await
    }
}

/// The stored sleep policy column, parsed.
pub(crate) fn parse_policy(stored: Option<String>) -> Result<Option<SleepPolicy>> {
    stored
        .map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| Error::Internal(format!("stored sleep policy {j:?}: {e}")))
        })
        .transpose()
}

/// The stored sleep column, parsed.
pub(crate) fn parse_level(stored: Option<String>) -> Option<SleepLevel> {
    stored.as_deref().and_then(SleepLevel::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_period_passed_wins() {
        let p = SleepPolicy {
            idle_pause_seconds: Some(300),
            idle_stop_seconds: Some(3600),
        };
        assert_eq!(p.level_after(299_999), None);
        assert_eq!(p.level_after(300_000), Some(SleepLevel::Paused));
        assert_eq!(p.level_after(3_600_000), Some(SleepLevel::Stopped));
        let stop_only = SleepPolicy {
            idle_pause_seconds: None,
            idle_stop_seconds: Some(60),
        };
        assert_eq!(stop_only.level_after(59_000), None);
        assert_eq!(stop_only.level_after(60_000), Some(SleepLevel::Stopped));
        assert!(!SleepPolicy::default().sleeps());
        assert_eq!(SleepPolicy::default().level_after(i64::MAX), None);
    }
}
