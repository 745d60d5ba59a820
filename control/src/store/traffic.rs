//! Traffic as the proxies report it: each period (`[admin] traffic_report_seconds`), the
//! platform's total and each tenant's with traffic, one row per node, for the dashboard's
//! charts (the last hour).
//!
//! Invariants: rows are written only for periods with traffic (nothing per idle tenant);
//! a node writes each (scope, node, period) once, so readers sum over nodes; rows older
//! than [`KEEP_MS`] are pruned. None of this reaches a proxy, so no write takes a version.

use std::collections::HashMap;

use tenantgate_config::traffic::TrafficCounts;

use super::{int, placeholders, t, text, Store, Value};
use crate::Result;

/// The platform's scope (tenants are keyed by their id).
pub const PLATFORM: &str = "";

/// How long points are kept.
pub const KEEP_MS: i64 = 2 * 3_600_000;

impl Store {
    /// Record what node `node` counted in the period starting at `at_ms`: the platform's
    /// total (`scope` [`PLATFORM`]) or tenants' (by id). Empty counts are not written.
    pub async fn record_traffic(
        &self,
        node: &str,
        at_ms: i64,
        rows: &[(String, TrafficCounts)],
    ) -> Result<()> {
        let rows: Vec<_> = rows.iter().filter(|(_, c)| !c.is_empty()).collect();
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.backend.begin(true).await?;
        for chunk in rows.chunks(200) {
            let mut params = Vec::with_capacity(chunk.len() * 5);
            let mut values = Vec::with_capacity(chunk.len());
            for (scope, counts) in chunk {
                values.push(format!("({})", placeholders(params.len() + 1, 5)));
                params.extend([
                    t(scope),
                    t(node),
                    Value::Int(at_ms),
                    Value::Int(i64::try_from(counts.requests()).unwrap_or(i64::MAX)),
                    t(&counts.encode()),
                ]);
            }
            tx.query(
                &format!(
                    "INSERT INTO traffic (scope, node_id, at, requests, counts) VALUES {} \
                     ON CONFLICT (scope, at, node_id) DO NOTHING",
                    values.join(", ")
                ),
                &params,
            )
            .await?;
        }
        tx.commit().await
    }

    /// The points of `scope` since `since_ms`, summed over nodes, oldest first.
    pub async fn traffic_series(
        &self,
        scope: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, TrafficCounts)>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT at, counts FROM traffic WHERE scope = $1 AND at >= $2 ORDER BY at",
                &[t(scope), Value::Int(since_ms)],
            )
            .await?;
        tx.commit().await?;
        let mut out: Vec<(i64, TrafficCounts)> = Vec::new();
        for r in &rows {
            let at = int(r, 0)?;
            let Some(c) = TrafficCounts::decode(&text(r, 1)?) else {
                continue;
            };
            match out.last_mut() {
                Some((last, sum)) if *last == at => sum.add(&c),
                _ => out.push((at, c)),
            }
        }
        Ok(out)
    }

    /// Each of `ids`' traffic since `since_ms`, summed over nodes and periods.
    pub async fn traffic_of(
        &self,
        ids: &[String],
        since_ms: i64,
    ) -> Result<HashMap<String, TrafficCounts>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut params = vec![Value::Int(since_ms)];
        params.extend(ids.iter().map(|i| t(i)));
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT scope, counts FROM traffic WHERE at >= $1 AND scope IN ({})",
                    placeholders(2, ids.len())
                ),
                &params,
            )
            .await?;
        tx.commit().await?;
        let mut out: HashMap<String, TrafficCounts> = HashMap::new();
        for r in &rows {
            if let Some(c) = TrafficCounts::decode(&text(r, 1)?) {
                out.entry(text(r, 0)?).or_default().add(&c);
            }
        }
        Ok(out)
    }

    /// Remove points older than `before_ms`; how many went.
    pub async fn prune_traffic(&self, before_ms: i64) -> Result<u64> {
        let mut tx = self.backend.begin(true).await?;
        let gone = tx
            .query(
                "DELETE FROM traffic WHERE at < $1 RETURNING 1",
                &[Value::Int(before_ms)],
            )
            .await?;
        tx.commit().await?;
        Ok(gone.len() as u64)
    }
}
