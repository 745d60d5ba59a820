//! The dashboard's operators and their sessions.
//!
//! Invariants: an operator's password is kept only as its argon2id PHC string; a session is
//! stored by the SHA-256 of its cookie value, so the store never holds a working cookie;
//! removing an operator ends their sessions in the same transaction. None of this reaches a
//! proxy, so no write here takes a version; adding and removing operators is audited.

use super::{insert_audit, int, t, text, Store, Tx, Value};
use crate::model::rfc3339;
use crate::{now_ms, Error, Result};

/// An operator as listed (never with the password hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorInfo {
    /// Sign-in name.
    pub name: String,
    /// When the account was made, RFC 3339.
    pub created_at: String,
    /// Newest sign-in, RFC 3339 (absent: never signed in, or no session kept).
    pub last_sign_in: Option<String>,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose it is.
    pub operator: String,
    /// The token its state-changing requests carry.
    pub csrf: String,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Without a request for this long, a session ends.
    pub idle_ms: i64,
    /// However active, a session ends this long after sign-in.
    pub absolute_ms: i64,
}

/// `seen_at` is written at most this often per session (a page view is not a write).
const TOUCH_EVERY_MS: i64 = 30_000;

/// Write one audit row inside `tx`, without details (for changes that take no version).
async fn audit(tx: &mut dyn Tx, actor: &str, action: &str, target: &str) -> Result<()> {
    insert_audit(tx, actor, action, target, &serde_json::json!({})).await
}

impl Store {
    /// Record in the audit trail an action that changes nothing proxies see by itself (e.g.
    /// an operator asking for a redeploy, which the provisioner then carries out).
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        insert_audit(&mut *tx, actor, action, target, &detail).await?;
        tx.commit().await
    }

    /// Add an operator with this argon2id PHC string; 409 when the name is taken.
    pub async fn add_operator(&self, actor: &str, name: &str, password_hash: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        let taken = tx
            .query("SELECT 1 FROM operators WHERE name = $1", &[t(name)])
            .await?;
        if !taken.is_empty() {
            return Err(Error::Conflict(format!(
                "an operator named {name:?} already exists"
            )));
        }
        tx.query(
            "INSERT INTO operators (name, password_hash, created_at) VALUES ($1, $2, $3)",
            &[t(name), t(password_hash), Value::Int(now_ms())],
        )
        .await?;
        audit(&mut *tx, actor, "operator.add", name).await?;
        tx.commit().await
    }

    /// Remove an operator and end their sessions.
    pub async fn remove_operator(&self, actor: &str, name: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "DELETE FROM operator_sessions WHERE operator = $1",
            &[t(name)],
        )
        .await?;
        let gone = tx
            .query(
                "DELETE FROM operators WHERE name = $1 RETURNING name",
                &[t(name)],
            )
            .await?;
        if gone.is_empty() {
            return Err(Error::NotFound(format!("operator {name:?}")));
        }
        audit(&mut *tx, actor, "operator.remove", name).await?;
        tx.commit().await
    }

    /// Every operator, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorInfo>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT o.name, o.created_at, \
                 (SELECT MAX(a.at) FROM audit a WHERE a.actor = o.name AND a.action = 'operator.sign_in') \
                 FROM operators o ORDER BY o.name",
                &[],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(OperatorInfo {
                    name: text(r, 0)?,
                    created_at: rfc3339(int(r, 1)?),
                    last_sign_in: match r.get(2) {
                        Some(Value::Int(ms)) => Some(rfc3339(*ms)),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// The password hash of operator `name`, if there is one.
    pub async fn operator_password(&self, name: &str) -> Result<Option<String>> {
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT password_hash FROM operators WHERE name = $1",
                &[t(name)],
            )
            .await?;
        tx.commit().await?;
        rows.first().map(|r| text(r, 0)).transpose()
    }

    /// Start a session of `operator`, stored under `id_hash`.
    pub async fn create_session(&self, operator: &str, id_hash: &str, csrf: &str) -> Result<()> {
        let now = Value::Int(now_ms());
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "INSERT INTO operator_sessions (id_hash, operator, csrf, created_at, seen_at) \
             VALUES ($1, $2, $3, $4, $4)",
            &[t(id_hash), t(operator), t(csrf), now],
        )
        .await?;
        audit(&mut *tx, operator, "operator.sign_in", operator).await?;
        tx.commit().await
    }

    /// The live session stored under `id_hash`; one past its idle or absolute limit is
    /// removed and `None` returned. Marks it seen (at most every 30 s).
    pub async fn session(&self, id_hash: &str, limits: SessionLimits) -> Result<Option<Session>> {
        let now = now_ms();
        let mut tx = self.backend.begin(false).await?;
        let rows = tx
            .query(
                "SELECT operator, csrf, created_at, seen_at FROM operator_sessions WHERE id_hash = $1",
                &[t(id_hash)],
            )
            .await?;
        tx.commit().await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let (created, seen) = (int(r, 2)?, int(r, 3)?);
        if now - seen > limits.idle_ms || now - created > limits.absolute_ms {
            self.end_session(id_hash).await?;
            return Ok(None);
        }
        if now - seen > TOUCH_EVERY_MS {
            let mut tx = self.backend.begin(true).await?;
            tx.query(
                "UPDATE operator_sessions SET seen_at = $1 WHERE id_hash = $2",
                &[Value::Int(now), t(id_hash)],
            )
            .await?;
            tx.commit().await?;
        }
        Ok(Some(Session {
            operator: text(r, 0)?,
            csrf: text(r, 1)?,
        }))
    }

    /// End the session stored under `id_hash` (nothing if there is none).
    pub async fn end_session(&self, id_hash: &str) -> Result<()> {
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "DELETE FROM operator_sessions WHERE id_hash = $1",
            &[t(id_hash)],
        )
        .await?;
        tx.commit().await
    }

    /// Remove sessions past their limits (upkeep).
    pub async fn prune_sessions(&self, limits: SessionLimits) -> Result<()> {
        let now = now_ms();
        let mut tx = self.backend.begin(true).await?;
        tx.query(
            "DELETE FROM operator_sessions WHERE seen_at < $1 OR created_at < $2",
            &[
                Value::Int(now - limits.idle_ms),
                Value::Int(now - limits.absolute_ms),
            ],
        )
        .await?;
        tx.commit().await
    }
}
