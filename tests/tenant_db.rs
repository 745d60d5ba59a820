//! Per-tenant databases on a real PostgreSQL server: a schema and a role per tenant, and
//! tenant A's role cannot read, change or create anything in tenant B's schema.

mod common;

use common::postgres::PgCluster;
use tenantgate_control::tenantdb::TenantDb;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    c
}

fn denied(r: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) {
    let e = r.expect_err(what);
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("permission denied"), "{what}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_role_reaches_its_own_schema_only() {
    let pg = PgCluster::start().await;
    let admin_url = pg.database("tenants").await;
    let tdb = TenantDb::new(&admin_url).expect("tenant db");
    let a = tdb.provision("alpha").await.expect("provision alpha");
    let b = tdb.provision("beta-shop").await.expect("provision beta");
    assert_eq!(
        (a.schema.as_str(), b.role.as_str()),
        ("tg_alpha", "tg_beta_shop")
    );
    assert_eq!(a.password.len(), 32);
    assert_ne!(a.password, b.password);

    // Each writes its own products through its default search_path.
    let ca = connect(&a.url("127.0.0.1", pg.port, "tenants")).await;
    let cb = connect(&b.url("127.0.0.1", pg.port, "tenants")).await;
    for (c, item) in [(&ca, "alpha shirt"), (&cb, "beta phone")] {
        c.batch_execute(&format!(
            "CREATE TABLE products (name text); INSERT INTO products VALUES ('{item}');"
        ))
        .await
        .expect("own schema");
        let n: String = c
            .query_one("SELECT name FROM products", &[])
            .await
            .expect("read own")
            .get(0);
        assert_eq!(n, item);
    }

    // Alpha cannot read, write or create in beta's schema, nor in public.
    denied(
        ca.query("SELECT * FROM tg_beta_shop.products", &[]).await,
        "read another tenant's table",
    );
    denied(
        ca.execute("INSERT INTO tg_beta_shop.products VALUES ('x')", &[])
            .await,
        "write another tenant's table",
    );
    denied(
        ca.batch_execute("CREATE TABLE tg_beta_shop.mine (x int)")
            .await,
        "create in another tenant's schema",
    );
    denied(
        ca.batch_execute("CREATE TABLE public.mine (x int)").await,
        "create in public",
    );
    denied(ca.batch_execute("CREATE ROLE sneaky").await, "create roles");
    // Beta still sees its own row only.
    let rows = cb
        .query("SELECT name FROM products", &[])
        .await
        .expect("read own");
    assert_eq!(rows.len(), 1);

    // Provisioning again re-keys the role and keeps the data (idempotent).
    let a2 = tdb.provision("alpha").await.expect("again");
    assert_ne!(a2.password, a.password);
    let again = connect(&a2.url("127.0.0.1", pg.port, "tenants")).await;
    assert_eq!(
        again
            .query("SELECT * FROM products", &[])
            .await
            .expect("kept")
            .len(),
        1
    );
    drop((ca, again));

    // Dropping removes schema and role; dropping twice is fine.
    drop(cb);
    tdb.drop_tenant("beta-shop").await.expect("drop");
    tdb.drop_tenant("beta-shop").await.expect("drop again");
    let admin = connect(&admin_url).await;
    let left = admin
        .query(
            "SELECT 1 FROM pg_roles WHERE rolname = 'tg_beta_shop' UNION ALL \
             SELECT 1 FROM pg_namespace WHERE nspname = 'tg_beta_shop'",
            &[],
        )
        .await
        .expect("query");
    assert!(left.is_empty(), "role or schema left behind");
    assert!(tdb.provision("Bad;Slug").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_its_own_database_reaches_that_database_only() {
    let pg = PgCluster::start().await;
    let admin_url = pg.database("tenants").await;
    let tdb = TenantDb::new(&admin_url).expect("tenant db");
    let g = tdb.provision_database("gamma").await.expect("gamma");
    let d = tdb.provision_database("delta").await.expect("delta");
    assert_eq!(
        (g.database.as_deref(), g.schema.as_str()),
        (Some("tg_gamma"), "public")
    );
    // Gamma owns its database's public schema and works there.
    let cg = connect(&g.url("127.0.0.1", pg.port, "tenants")).await;
    cg.batch_execute("CREATE TABLE products (name text); INSERT INTO products VALUES ('g')")
        .await
        .expect("own database");
    // It cannot connect to delta's database, nor to the shared one.
    for db in ["tg_delta", "tenants"] {
        let url = format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            g.role, g.password, pg.port
        );
        let e = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("gamma connected to {db}"));
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("permission denied"), "{db}: {e:?}");
    }
    // Provisioning again keeps the data; dropping removes database and role.
    drop(cg);
    let g2 = tdb.provision_database("gamma").await.expect("again");
    let again = connect(&g2.url("127.0.0.1", pg.port, "tenants")).await;
    assert_eq!(
        again
            .query("SELECT * FROM products", &[])
            .await
            .expect("kept")
            .len(),
        1
    );
    drop(again);
    tdb.drop_tenant("gamma").await.expect("drop");
    tdb.drop_tenant("gamma").await.expect("drop again");
    let admin = connect(&admin_url).await;
    let left = admin
        .query(
            "SELECT 1 FROM pg_roles WHERE rolname = 'tg_gamma' UNION ALL \
             SELECT 1 FROM pg_database WHERE datname = 'tg_gamma'",
            &[],
        )
        .await
        .expect("query");
    assert!(left.is_empty(), "role or database left behind");
    drop(d);
}
