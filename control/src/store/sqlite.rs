//! The embedded store: one SQLite file (bundled library) in WAL mode, the zero-configuration
//! default of `tenantgate serve`.
//!
//! One connection behind an async mutex: SQLite has one writer anyway, and the admin API's
//! load is small. Statements are cached; `$N` placeholders are rewritten to SQLite's `?N`.
//! Writes use `BEGIN IMMEDIATE` so a transaction that will write holds the lock from the start.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Backend, Row, Tx, Value};
use crate::{Error, Result};

mod embedded {
    refinery::embed_migrations!("src/store/migrations/sqlite");
}

/// The SQLite backend.
pub struct Sqlite {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

fn db_err(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::Conflict(format!("already exists ({e})"))
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Error::Unavailable(e.to_string())
        }
        _ => Error::Internal(format!("sqlite: {e}")),
    }
}

impl Sqlite {
    /// Open (creating it and its directory if needed) and migrate the store file.
    pub fn open(path: &Path) -> Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = rusqlite::Connection::open(path)
            .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db_err)?;
        // Migrations run with foreign keys off: rebuilding a referenced table (SQLite's only
        // way to change a constraint) needs it. They are checked before the store is used.
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|e| Error::Unavailable(format!("migrating {}: {e}", path.display())))?;
        let broken: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(db_err)?;
        if broken > 0 {
            return Err(Error::Internal(format!(
                "{}: {broken} rows break a foreign key after migrating",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(db_err)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

struct SqliteTx {
    conn: OwnedMutexGuard<rusqlite::Connection>,
    done: bool,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(n) => rusqlite::types::Value::Integer(*n),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

#[async_trait]
impl Tx for SqliteTx {
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let sql = sql.replace('$', "?");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(db_err)?;
        let n = stmt.column_count();
        let params: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(db_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db_err)? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i).map_err(db_err)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(x) => Value::Int(x),
                    ValueRef::Real(x) => Value::Int(x as i64),
                    ValueRef::Text(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
                    ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(db_err)?;
        self.done = true;
        Ok(())
    }
}

#[async_trait]
impl Backend for Sqlite {
    async fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>> {
        let conn = self.conn.clone().lock_owned().await;
        conn.execute_batch(if write { "BEGIN IMMEDIATE" } else { "BEGIN" })
            .map_err(db_err)?;
        Ok(Box::new(SqliteTx { conn, done: false }))
    }

    async fn announce(&self, _tx: &mut dyn Tx, _version: u64) -> Result<()> {
        // One process owns the file; it learns of commits through `Store::committed`.
        Ok(())
    }
}
