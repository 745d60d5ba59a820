//! The shared store of a fleet: PostgreSQL through tokio-postgres with a deadpool pool.
//!
//! - Migrations run at start under a session advisory lock, so several nodes starting at once
//!   migrate exactly once.
//! - Write transactions are READ COMMITTED and serialised by the `meta` row they update
//!   first; read transactions feeding proxies are REPEATABLE READ, READ ONLY.
//! - Each write transaction `NOTIFY`s its version on [`CHANNEL`]; PostgreSQL delivers it on
//!   commit only. A listener ([`Listener`]) is a dedicated connection outside the pool.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool, PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use postgres_types::{IsNull, ToSql, Type};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Backend, Row, Tx, Value};
use crate::{Error, Result};

mod embedded {
    refinery::embed_migrations!("src/store/migrations/postgres");
}

/// The notification channel carrying committed versions.
pub const CHANNEL: &str = "tenantgate_changes";

/// Advisory-lock key under which migrations run ("tgmigrat").
const MIGRATION_LOCK: i64 = 0x7467_6d69_6772_6174;

/// How long a request waits for a connection or for PostgreSQL to answer a connect.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL backend.
pub struct Postgres {
    pool: Pool,
}

fn db_err(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return Error::Conflict(format!("already exists ({})", db.message()));
        }
        return Error::Internal(format!("postgres: {}", db.message()));
    }
    Error::Unavailable(format!("postgres: {e}"))
}

fn pg_config(url: &str, app: &str) -> Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::invalid("invalid_store_url", format!("store.url: {e}")))?;
    pg.connect_timeout(TIMEOUT);
    pg.application_name(app);
    Ok(pg)
}

impl Postgres {
    /// A pool for `url`; connects lazily, so a proxy node can start while PostgreSQL is down.
    pub fn new(url: &str, pool_size: usize) -> Result<Postgres> {
        let mgr = deadpool_postgres::Manager::from_config(
            pg_config(url, "tenantgate")?,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .config(PoolConfig {
                max_size: pool_size,
                timeouts: Timeouts {
                    wait: Some(TIMEOUT),
                    create: Some(TIMEOUT),
                    recycle: Some(TIMEOUT),
                },
                ..PoolConfig::default()
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Internal(format!("postgres pool: {e}")))?;
        Ok(Postgres { pool })
    }

    /// Apply pending migrations, once across a fleet: under a session advisory lock, so
    /// nodes starting together wait for each other and find the work done.
    pub async fn migrate(url: &str) -> Result<()> {
        let (mut client, conn) = pg_config(url, "tenantgate-migrate")?
            .connect(NoTls)
            .await
            .map_err(db_err)?;
        let task = tokio::spawn(conn);
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err)?;
        let migrated = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| Error::Unavailable(format!("migrating the store: {e}")));
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        drop(client);
        let _ = task.await;
        migrated.map(|_| ())
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

struct PgTx {
    conn: Option<Object>,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        // Not committed (a refused write, e.g. a 409): roll back and return the connection to
        // the pool, so bad input does not cost a reconnect. Without a runtime to do that, or
        // if the rollback fails, the connection is closed instead and the server rolls back.
        let Some(c) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if c.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(c));
                    }
                });
            }
            Err(_) => drop(Object::take(c)),
        }
    }
}

impl PgTx {
    fn client(&self) -> Result<&Object> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::Internal("transaction already finished".into()))
    }
}

fn from_row(r: &tokio_postgres::Row) -> Result<Row> {
    let mut row = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let ty = c.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|n| Value::Int(i64::from(n))))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|b| Value::Int(i64::from(b))))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Bytes))
        } else if *ty == Type::VOID {
            Ok(None)
        } else {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        };
        let v = v.map_err(|e| Error::Internal(format!("column {} ({ty}): {e}", c.name())))?;
        row.push(v.unwrap_or(Value::Null));
    }
    Ok(row)
}

#[async_trait]
impl Tx for PgTx {
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let client = self.client()?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = client.query(&stmt, &refs).await.map_err(db_err)?;
        rows.iter().map(from_row).collect()
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let client = self.client()?;
        client.batch_execute("COMMIT").await.map_err(db_err)?;
        // Committed: the connection goes back to the pool.
        drop(self.conn.take());
        Ok(())
    }
}

#[async_trait]
impl Backend for Postgres {
    async fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(format!("postgres: {e}")))?;
        let begin = if write {
            "BEGIN"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        };
        conn.batch_execute(begin).await.map_err(db_err)?;
        Ok(Box::new(PgTx { conn: Some(conn) }))
    }

    async fn announce(&self, tx: &mut dyn Tx, version: u64) -> Result<()> {
        tx.query(
            "SELECT pg_notify($1, $2)",
            &[
                Value::Text(CHANNEL.into()),
                Value::Text(version.to_string()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn signal(&self, tx: &mut dyn Tx, channel: &str, payload: &str) -> Result<()> {
        tx.query(
            "SELECT pg_notify($1, $2)",
            &[Value::Text(channel.into()), Value::Text(payload.into())],
        )
        .await?;
        Ok(())
    }
}

/// A dedicated connection `LISTEN`ing on a channel of signals ([`Backend::signal`]), with
/// their payloads.
pub struct Signals {
    /// Payloads as they arrive. Closed when the connection is lost (signals sent meanwhile
    /// are lost: the caller polls too).
    pub payloads: tokio::sync::mpsc::Receiver<String>,
    _client: tokio_postgres::Client,
}

impl Signals {
    /// Connect and listen on `channel` (a fixed identifier of ours, never user input).
    pub async fn connect(url: &str, channel: &str) -> Result<Signals> {
        let (client, mut conn) = pg_config(url, "tenantgate-signals")?
            .connect(NoTls)
            .await
            .map_err(db_err)?;
        let (tx, payloads) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = messages.next().await {
                if let AsyncMessage::Notification(n) = msg {
                    let _ = tx.try_send(n.payload().to_owned());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(db_err)?;
        Ok(Signals {
            payloads,
            _client: client,
        })
    }
}

/// A dedicated connection `LISTEN`ing on [`CHANNEL`].
pub struct Listener {
    /// Versions as they are announced. Closed when the connection is lost: the caller must
    /// reconnect and resynchronise (notifications sent meanwhile are lost).
    pub versions: tokio::sync::mpsc::Receiver<u64>,
    _client: tokio_postgres::Client,
}

impl Listener {
    /// Connect and start listening.
    pub async fn connect(url: &str) -> Result<Listener> {
        let (client, mut conn) = pg_config(url, "tenantgate-listener")?
            .connect(NoTls)
            .await
            .map_err(db_err)?;
        let (tx, versions) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = messages.next().await {
                if let AsyncMessage::Notification(n) = msg {
                    let v = n.payload().parse::<u64>().unwrap_or(0);
                    // A full channel only means the follower is behind; it catches up from
                    // the change log whatever version it is told.
                    let _ = tx.try_send(v);
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db_err)?;
        Ok(Listener {
            versions,
            _client: client,
        })
    }
}
