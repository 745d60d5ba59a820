//! Per-tenant databases on the platform's tenant-database PostgreSQL server
//! (`[tenant_db] url`): a schema and a login role per tenant, the role owning its schema and
//! nothing else, so tenant A's role cannot read or change tenant B's data.
//!
//! Invariants: identifiers come from validated slugs (`[a-z0-9-]`, hyphens become
//! underscores) and are quoted anyway; passwords are generated (32 hex digits) and never
//! logged; provisioning and dropping are idempotent, so a retried or rolled-back
//! provisioning leaves no orphan role or schema.

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::{random_id, Error, Result};

/// A tenant's schema and role, and the password its containers log in with.
#[derive(Clone)]
pub struct TenantDatabase {
    /// Schema (also the role's `search_path`).
    pub schema: String,
    /// Login role owning the schema.
    pub role: String,
    /// Generated password.
    pub password: String,
    /// The tenant's own database (database-per-tenant blueprints); `None`: a schema in the
    /// shared database.
    pub database: Option<String>,
}

impl std::fmt::Debug for TenantDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDatabase")
            .field("schema", &self.schema)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl TenantDatabase {
    /// The URL a tenant's containers connect with, to `host:port` and the tenant's own
    /// database, else `shared_db`.
    pub fn url(&self, host: &str, port: u16, shared_db: &str) -> String {
        format!(
            "postgres://{}:{}@{host}:{port}/{}?options=-csearch_path%3D{}",
            self.role,
            self.password,
            self.database.as_deref().unwrap_or(shared_db),
            self.schema
        )
    }

    /// What a tenant's containers connect as: schema `tg_<slug>` in the shared database, or
    /// (`own_database`) the `public` schema of database `tg_<slug>`.
    pub fn for_tenant(slug: &str, password: String, own_database: bool) -> Result<Self> {
        let name = ident(slug)?;
        Ok(if own_database {
            TenantDatabase {
                schema: "public".into(),
                role: name.clone(),
                password,
                database: Some(name),
            }
        } else {
            TenantDatabase {
                schema: name.clone(),
                role: name,
                password,
                database: None,
            }
        })
    }
}

/// The tenant-database server, reached with an administrative role.
pub struct TenantDb {
    config: tokio_postgres::Config,
    dbname: String,
}

/// `tg_<slug>` with hyphens as underscores: a safe identifier for a validated slug.
pub fn ident(slug: &str) -> Result<String> {
    let ok = !slug.is_empty()
        && slug.len() <= 60
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(Error::invalid(
            "invalid_slug",
            format!("slug {slug:?} cannot name a tenant database"),
        ));
    }
    Ok(format!("tg_{}", slug.replace('-', "_")))
}

fn db_err(e: tokio_postgres::Error) -> Error {
    Error::Dependency {
        code: "tenant_db_unavailable",
        message: match e.as_db_error() {
            Some(d) => format!("tenant database: {}", d.message()),
            None => format!("tenant database: {e}"),
        },
    }
}

/// Whether `sql` (taking the name as `$1`) finds a row.
async fn found(c: &impl tokio_postgres::GenericClient, sql: &str, name: &str) -> Result<bool> {
    Ok(!c.query(sql, &[&name]).await.map_err(db_err)?.is_empty())
}

async fn role_exists(c: &impl tokio_postgres::GenericClient, name: &str) -> Result<bool> {
    found(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", name).await
}

/// The statement that creates the tenant's login role, or re-keys it when it `exists`. The
/// password is 32 hex digits and the name a checked identifier: safe to spell out (CREATE
/// ROLE takes no bound parameters).
fn role_sql(name: &str, password: &str, exists: bool) -> String {
    if exists {
        format!("ALTER ROLE \"{name}\" LOGIN PASSWORD '{password}'")
    } else {
        format!(
            "CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB \
             NOCREATEROLE NOINHERIT NOREPLICATION CONNECTION LIMIT 50"
        )
    }
}

impl TenantDb {
    /// The server at `url` (`postgres://admin@host/db`), not contacted yet.
    pub fn new(url: &str) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::invalid("config", format!("tenant_db.url: {e}")))?;
        config.connect_timeout(Duration::from_secs(5));
        let dbname = config
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| config.get_user().map(str::to_owned))
            .unwrap_or_else(|| "postgres".into());
        Ok(TenantDb { config, dbname })
    }

    /// The database tenants' schemas live in.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The server's port in `url` (5432 when it names none).
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// Whether the server answers.
    pub async fn ping(&self) -> Result<()> {
        self.connect()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Keep the tenant's schema and data but let its role log in no more (retention `keep`).
    pub async fn lock_tenant(&self, slug: &str) -> Result<()> {
        let name = ident(slug)?;
        let client = self.connect().await?;
        if role_exists(&client, &name).await? {
            client
                .batch_execute(&format!("ALTER ROLE \"{name}\" NOLOGIN"))
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Serialise tenant-database DDL across every control node: GRANT and REVOKE on the
    /// shared database rewrite one catalog row, and two at once fail with "tuple concurrently
    /// updated". Held until the transaction ends (`xact`) or the session closes.
    async fn serialise(c: &impl tokio_postgres::GenericClient, xact: bool) -> Result<()> {
        let f = if xact {
            "pg_advisory_xact_lock"
        } else {
            "pg_advisory_lock"
        };
        c.batch_execute(&format!("SELECT {f}({DDL_LOCK})"))
            .await
            .map_err(db_err)
    }

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self.config.connect(NoTls).await.map_err(db_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("tenant database connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Create (or re-key, when it exists) the tenant's role and schema, in one transaction.
    pub async fn provision(&self, slug: &str) -> Result<TenantDatabase> {
        let name = ident(slug)?;
        let password = format!("{}{}", random_id("")?, random_id("")?);
        let mut client = self.connect().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        Self::serialise(&tx, true).await?;
        let role_sql = role_sql(&name, &password, role_exists(&tx, &name).await?);
        let db = self.dbname.replace('"', "\"\"");
        tx.batch_execute(&format!(
            "{role_sql};\
             CREATE SCHEMA IF NOT EXISTS \"{name}\" AUTHORIZATION \"{name}\";\
             REVOKE ALL ON SCHEMA \"{name}\" FROM PUBLIC;\
             ALTER ROLE \"{name}\" SET search_path = \"{name}\";\
             REVOKE ALL ON DATABASE \"{db}\" FROM PUBLIC;\
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{name}\";\
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
        ))
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        TenantDatabase::for_tenant(slug, password, false)
    }

    /// Create (or re-key) the tenant's role and a whole database it owns (`tg_<slug>`);
    /// nobody else may connect to it. CREATE DATABASE cannot run in a transaction: an
    /// interrupted call is finished by calling again.
    pub async fn provision_database(&self, slug: &str) -> Result<TenantDatabase> {
        let name = ident(slug)?;
        let password = format!("{}{}", random_id("")?, random_id("")?);
        let client = self.connect().await?;
        // The session's lock ends with this connection, when the function returns.
        Self::serialise(&client, false).await?;
        client
            .batch_execute(&role_sql(
                &name,
                &password,
                role_exists(&client, &name).await?,
            ))
            .await
            .map_err(db_err)?;
        let db_exists = found(
            &client,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &name,
        )
        .await?;
        if !db_exists {
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
                .await
                .map_err(db_err)?;
        }
        let shared = self.dbname.replace('"', "\"\"");
        client
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC;\
                 GRANT CONNECT ON DATABASE \"{name}\" TO \"{name}\";\
                 REVOKE ALL ON DATABASE \"{shared}\" FROM PUBLIC;"
            ))
            .await
            .map_err(db_err)?;
        // `public` belongs to pg_database_owner, whose rights a NOINHERIT role does not use:
        // the tenant's role owns it outright.
        let mut own = self.config.clone();
        own.dbname(&name);
        let (inside, conn) = own.connect(NoTls).await.map_err(db_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("tenant database connection ended: {e}");
            }
        });
        inside
            .batch_execute(&format!(
                "ALTER SCHEMA public OWNER TO \"{name}\"; REVOKE ALL ON SCHEMA public FROM PUBLIC;"
            ))
            .await
            .map_err(db_err)?;
        TenantDatabase::for_tenant(slug, password, true)
    }

    /// Drop the tenant's schema or database (with its data) and role; nothing to drop is
    /// not an error.
    pub async fn drop_tenant(&self, slug: &str) -> Result<()> {
        let name = ident(slug)?;
        let mut client = self.connect().await?;
        // Its own database, if it has one (outside a transaction, as PostgreSQL wants).
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .map_err(db_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        Self::serialise(&tx, true).await?;
        let db = self.dbname.replace('"', "\"\"");
        tx.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE;"))
            .await
            .map_err(db_err)?;
        if role_exists(&tx, &name).await? {
            tx.batch_execute(&format!(
                "REVOKE ALL ON DATABASE \"{db}\" FROM \"{name}\";DROP OWNED BY \"{name}\";DROP ROLE \"{name}\";"
            ))
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

/// The advisory-lock key of tenant-database DDL ("tgddl").
const DDL_LOCK: i64 = 0x74_6764_646c;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_come_only_from_plain_slugs() {
        assert_eq!(ident("shop-1").expect("ok"), "tg_shop_1");
        for bad in ["", "Shop", "a\"b", "a;b", "ä", &"x".repeat(61)] {
            assert!(ident(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_carry_the_search_path_and_debug_hides_the_password() {
        let d = TenantDatabase::for_tenant("a", "secret".into(), false).expect("ok");
        assert_eq!(
            d.url("db", 5432, "tenants"),
            "postgres://tg_a:secret@db:5432/tenants?options=-csearch_path%3Dtg_a"
        );
        assert!(!format!("{d:?}").contains("secret"));
        let own = TenantDatabase::for_tenant("a", "secret".into(), true).expect("ok");
        assert_eq!(
            own.url("db", 5432, "tenants"),
            "postgres://tg_a:secret@db:5432/tg_a?options=-csearch_path%3Dpublic"
        );
    }
}
