//! One conformance suite, run on both store backends: the embedded SQLite file and a real
//! PostgreSQL cluster started by the harness.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::postgres::PgCluster;
use tenantgate_config::{CertificateChange, RouteChange};
use tenantgate_control::model::TenantStatus;
use tenantgate_control::store::postgres::Postgres;
use tenantgate_control::store::sqlite::Sqlite;
use tenantgate_control::store::{NewCertificate, NewTenant, Store, TenantFilter};
use tenantgate_control::Error;

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn new_tenant(slug: &str, port: u16) -> NewTenant {
    NewTenant {
        slug: slug.into(),
        name: format!("Shop {slug}"),
        platform_hostname: format!("{slug}.platform.test"),
        upstreams: vec![addr(port)],
        blueprint: None,
        plan: None,
    }
}

fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::new(Arc::new(
        Sqlite::open(&dir.path().join("data/tenantgate.db")).expect("open sqlite"),
    ))
}

async fn postgres_store(pg: &PgCluster, db: &str) -> Store {
    let url = pg.database(db).await;
    Postgres::migrate(&url).await.expect("migrate");
    Store::new(Arc::new(Postgres::new(&url, 8).expect("pool")))
}

/// Everything a backend must do the same way.
async fn conformance(store: &Store) {
    assert_eq!(store.ping().await.expect("ping"), 0);
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!((snap.version, snap.routes.len()), (0, 0));

    // Create: platform hostname, upstreams, version 1, audit event.
    let a = store
        .create_tenant("test", &new_tenant("alpha", 9001))
        .await
        .expect("create alpha");
    assert!(a.id.starts_with("t_"));
    assert_eq!(a.status, TenantStatus::Active);
    assert_eq!(a.hostnames, vec!["alpha.platform.test"]);
    assert_eq!(a.upstreams, vec!["127.0.0.1:9001"]);
    assert_eq!(store.get_tenant(&a.id).await.expect("get"), a);
    let b = store
        .create_tenant("test", &new_tenant("beta", 9002))
        .await
        .expect("create beta");

    // Duplicates change nothing and never name the owner.
    let before = store.ping().await.expect("version");
    match store
        .create_tenant("test", &new_tenant("alpha", 9009))
        .await
    {
        Err(Error::Conflict(m)) => assert!(!m.contains(&a.id), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut same_host = new_tenant("gamma", 9003);
    same_host.platform_hostname = "beta.platform.test".into();
    assert!(matches!(
        store.create_tenant("test", &same_host).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store.ping().await.expect("version"),
        before,
        "a refused write took a version"
    );

    // Updates.
    let a2 = store
        .set_upstreams("test", &a.id, &[addr(9011), addr(9012)])
        .await
        .expect("upstreams");
    assert_eq!(a2.upstreams, vec!["127.0.0.1:9011", "127.0.0.1:9012"]);
    let a3 = store
        .rename_tenant("test", &a.id, "Alpha Two")
        .await
        .expect("rename");
    assert_eq!(a3.name, "Alpha Two");
    let s = store
        .set_status("test", &b.id, TenantStatus::Suspended)
        .await
        .expect("suspend");
    assert_eq!(s.status, TenantStatus::Suspended);
    assert!(matches!(
        store.rename_tenant("test", "t_missing", "x").await,
        Err(Error::NotFound(_))
    ));

    // Listing, filters and pagination.
    for i in 0..5 {
        store
            .create_tenant("test", &new_tenant(&format!("page{i}"), 9100 + i))
            .await
            .expect("create page tenant");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_tenants(&TenantFilter {
                search: None,
                after: after.clone(),
                limit: 3,
                ..TenantFilter::default()
            })
            .await
            .expect("list");
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|t| t.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in id order");
    let suspended = store
        .list_tenants(&TenantFilter {
            search: None,
            status: Some(TenantStatus::Suspended),
            limit: 50,
            ..TenantFilter::default()
        })
        .await
        .expect("list suspended");
    assert_eq!(suspended.items.len(), 1);
    assert_eq!(suspended.items[0].id, b.id);
    let by_host = store
        .list_tenants(&TenantFilter {
            search: None,
            hostname: Some("alpha.platform.test".into()),
            limit: 50,
            ..TenantFilter::default()
        })
        .await
        .expect("list by hostname");
    assert_eq!(by_host.items.len(), 1);
    assert_eq!(by_host.items[0].id, a.id);

    // Routes as proxies see them.
    let v_before_delete = store.ping().await.expect("version");
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!(snap.version, v_before_delete);
    assert_eq!(snap.routes.len(), 7);
    let beta = snap
        .routes
        .iter()
        .find(|r| r.id == b.id)
        .expect("beta route");
    assert!(beta.suspended);

    // Delete: gone from routes, slug and hostname free again, deletion in the delta.
    store.delete_tenant("test", &a.id).await.expect("delete");
    assert!(matches!(
        store.delete_tenant("test", &a.id).await,
        Err(Error::NotFound(_))
    ));
    let d = store
        .delta_since(v_before_delete)
        .await
        .expect("delta")
        .expect("some delta");
    assert_eq!(d.version, v_before_delete + 1);
    assert_eq!(d.routes, vec![RouteChange::Remove { id: a.id.clone() }]);
    let again = store
        .create_tenant("test", &new_tenant("alpha", 9001))
        .await
        .expect("slug reusable after delete");
    assert_ne!(again.id, a.id);
    assert_eq!(
        store.get_tenant(&a.id).await.expect("deleted kept").status,
        TenantStatus::Deleted
    );

    // A delta covers every object changed after the version, as its current state.
    let d = store.delta_since(1).await.expect("delta").expect("some");
    assert!(d
        .routes
        .iter()
        .any(|c| matches!(c, RouteChange::Upsert(r) if r.id == again.id)));
    assert!(d.routes.contains(&RouteChange::Remove { id: a.id.clone() }));
    let now = store.ping().await.expect("version");
    assert!(store
        .delta_since(now)
        .await
        .expect("delta")
        .expect("empty")
        .routes
        .is_empty());
    assert!(store.delta_since(now + 10).await.expect("ahead").is_none());

    // Certificates: stored sealed, listed without keys, removable.
    let c = store
        .add_certificate(
            "test",
            &NewCertificate {
                chain_pem: "-----BEGIN CERTIFICATE-----".into(),
                sealed_key: vec![1, 2, 3],
                names: vec!["*.platform.test".into(), "platform.test".into()],
                issuer: "CN=test".into(),
                not_after: 4_000_000_000,
                source: "uploaded",
            },
        )
        .await
        .expect("add certificate");
    assert_eq!(c.names, vec!["*.platform.test", "platform.test"]);
    assert_eq!(store.list_certificates().await.expect("list").len(), 1);
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!(snap.certificates[0].sealed_key, vec![1, 2, 3]);
    let v = store.ping().await.expect("version");
    store
        .delete_certificate("test", &c.id)
        .await
        .expect("delete cert");
    let d = store.delta_since(v).await.expect("delta").expect("some");
    assert_eq!(
        d.certificates,
        vec![CertificateChange::Remove { id: c.id.clone() }]
    );
    assert!(matches!(
        store.delete_certificate("test", &c.id).await,
        Err(Error::NotFound(_))
    ));

    // The audit trail names every change, newest first.
    let events = store.audit_events(100).await.expect("audit");
    assert_eq!(events[0].action, "certificate.delete");
    for action in [
        "tenant.create",
        "tenant.upstreams",
        "tenant.rename",
        "tenant.suspend",
        "tenant.delete",
        "certificate.add",
    ] {
        assert!(
            events.iter().any(|e| e.action == action),
            "no {action} event"
        );
    }
}

/// Writers racing on one store: every acknowledged change is there, versions are gapless.
async fn concurrent_writers(store: Arc<Store>) {
    let mut tasks = Vec::new();
    for w in 0..4u16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10u16 {
                let t = store
                    .create_tenant(
                        "test",
                        &new_tenant(&format!("w{w}-{i}"), 9000 + w * 100 + i),
                    )
                    .await
                    .expect("create");
                ids.push(t.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("writer"));
    }
    assert_eq!(store.ping().await.expect("version"), 40);
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!(snap.routes.len(), 40);
    for id in &ids {
        assert!(snap.routes.iter().any(|r| &r.id == id), "lost {id}");
    }
    // Every version from 1 to 40 is in the change log exactly once.
    let d = store.delta_since(0).await.expect("delta").expect("some");
    assert_eq!(d.version, 40);
    assert_eq!(d.routes.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&sqlite_store(&dir)).await;
    // Reopening the file (migrations already applied) keeps everything.
    let reopened = sqlite_store(&dir);
    assert_eq!(reopened.snapshot().await.expect("snapshot").routes.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let pg = PgCluster::start().await;
    conformance(&postgres_store(&pg, "conformance").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writers_never_lose_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    concurrent_writers(Arc::new(sqlite_store(&dir))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_never_lose_a_change() {
    let pg = PgCluster::start().await;
    let url = pg.database("writers").await;
    // Several nodes migrating at the same moment migrate once.
    let migrations: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Postgres::migrate(&url).await })
        })
        .collect();
    for m in migrations {
        m.await.expect("task").expect("migrate");
    }
    // Two "nodes" (separate pools) writing at once.
    let a = Arc::new(Store::new(Arc::new(Postgres::new(&url, 4).expect("pool"))));
    let b = Arc::new(Store::new(Arc::new(Postgres::new(&url, 4).expect("pool"))));
    let (ra, rb) = tokio::join!(
        async {
            let mut n = 0;
            for i in 0..20u16 {
                a.create_tenant("a", &new_tenant(&format!("a{i}"), 9000 + i))
                    .await
                    .expect("a");
                n += 1;
            }
            n
        },
        async {
            let mut n = 0;
            for i in 0..20u16 {
                b.create_tenant("b", &new_tenant(&format!("b{i}"), 9500 + i))
                    .await
                    .expect("b");
                n += 1;
            }
            n
        }
    );
    assert_eq!(ra + rb, 40);
    let rows = pg
        .execute(
            "writers",
            "SELECT count(*), min(version), max(version) FROM changes",
        )
        .await;
    assert_eq!(rows[0], vec!["40", "1", "40"], "versions are gapless");
    concurrent_writers_after(&a, 40).await;
}

async fn concurrent_writers_after(store: &Store, expected: usize) {
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!(snap.routes.len(), expected);
    assert_eq!(snap.version, expected as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_unavailable_not_a_panic() {
    let mut pg = PgCluster::start().await;
    let store = postgres_store(&pg, "down").await;
    store
        .create_tenant("t", &new_tenant("one", 9001))
        .await
        .expect("create");
    pg.kill();
    match store.create_tenant("t", &new_tenant("two", 9002)).await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    pg.resume().await;
    // The pool recovers once the database is back; the refused write left nothing behind.
    let snap = common::wait_for(
        "the pool to reconnect",
        std::time::Duration::from_secs(20),
        || async { store.snapshot().await.ok() },
    )
    .await;
    assert_eq!(snap.routes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_is_sent_to_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite_store(&dir);
    let n = tenantgate_control::store::MAX_DELTA_OBJECTS + 1;
    for i in 0..n {
        store
            .create_tenant("test", &new_tenant(&format!("s{i}"), 9000))
            .await
            .expect("create");
    }
    assert!(store.delta_since(0).await.expect("delta").is_none());
    let d = store
        .delta_since(1)
        .await
        .expect("delta")
        .expect("within the limit");
    assert_eq!(d.routes.len(), n - 1);
}

/// Pruning the change log keeps deltas for recent followers and sends older ones to a snapshot.
async fn pruning(store: &Store) {
    for i in 0..6u16 {
        store
            .create_tenant("test", &new_tenant(&format!("p{i}"), 9000 + i))
            .await
            .expect("create");
    }
    assert_eq!(store.prune_changes(3).await.expect("prune"), 3);
    assert_eq!(store.prune_changes(3).await.expect("prune again"), 0);
    assert!(
        store.delta_since(2).await.expect("delta").is_none(),
        "version 3 is gone"
    );
    let d = store
        .delta_since(3)
        .await
        .expect("delta")
        .expect("4..6 kept");
    assert_eq!((d.version, d.routes.len()), (6, 3));
    assert_eq!(store.snapshot().await.expect("snapshot").routes.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_pruning_on_both_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    pruning(&sqlite_store(&dir)).await;
    let pg = PgCluster::start().await;
    pruning(&postgres_store(&pg, "pruning").await).await;
}

/// Custom domains in the store: attach rules, the challenge set proxies get, routing on
/// verification, leases, the order budget, write-once settings, and detaching.
async fn domains(store: &Store) {
    use tenantgate_control::model::DomainStatus;
    let a = store
        .create_tenant("test", &new_tenant("dom-a", 9101))
        .await
        .expect("a");
    let b = store
        .create_tenant("test", &new_tenant("dom-b", 9102))
        .await
        .expect("b");
    let d = store
        .attach_domain("test", &a.id, "www.shop.test")
        .await
        .expect("attach");
    assert_eq!(d.status, DomainStatus::PendingVerification);
    // Pending: another tenant may attach it too (first to verify wins); the same one not.
    let rival = store
        .attach_domain("test", &b.id, "www.shop.test")
        .await
        .expect("a rival pending attach");
    assert!(matches!(
        store.attach_domain("test", &a.id, "www.shop.test").await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store
            .attach_domain("test", &a.id, "dom-b.platform.test")
            .await,
        Err(Error::Taken {
            code: "hostname_taken",
            ..
        })
    ));
    // Both are due for their first check at once; a held one is not handed out.
    let due = store.due_domains(i64::MAX / 4, 10).await.expect("due");
    assert!(due.contains(&d.id) && due.contains(&rival.id), "{due:?}");
    assert!(store
        .claim_domain(&rival.id, "n0", i64::MAX / 2)
        .await
        .expect("claim"));
    let due = store.due_domains(i64::MAX / 4, 10).await.expect("due");
    assert!(due.contains(&d.id) && !due.contains(&rival.id), "{due:?}");
    store
        .release_domain(&rival.id, "n0")
        .await
        .expect("release");
    // Proxies get the ownership token of both, and only that.
    let snap = store.snapshot().await.expect("snapshot");
    let tokens: Vec<_> = snap.challenges.iter().flat_map(|s| &s.challenges).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens
        .iter()
        .any(|c| c.body == d.token && c.path == d.verify_path()));
    let v = snap.version;

    // Verified: routed to its tenant, token withdrawn, in one delta.
    let d = store
        .verify_domain("test", &d.id, "dns_txt", Some(0), None)
        .await
        .expect("verify");
    assert_eq!(d.status, DomainStatus::Active);
    let delta = store.delta_since(v).await.expect("delta").expect("some");
    assert!(delta
        .routes
        .iter()
        .any(|r| matches!(r, RouteChange::Upsert(r) if r.id == a.id
        && r.hostnames.iter().any(|h| h.to_display() == "www.shop.test"))));
    assert!(delta
        .challenges
        .iter()
        .any(|s| s.domain_id == d.id && s.challenges.is_empty()));
    // Now the rival cannot verify, nor can anyone attach it.
    assert!(matches!(
        store
            .verify_domain("test", &rival.id, "dns_txt", None, None)
            .await,
        Err(Error::Conflict(_))
    ));
    let c = store
        .create_tenant("test", &new_tenant("dom-c", 9103))
        .await
        .expect("c");
    assert!(matches!(
        store.attach_domain("test", &c.id, "www.shop.test").await,
        Err(Error::Taken {
            code: "hostname_taken",
            ..
        })
    ));

    // One worker at a time, whichever node (even the same one twice).
    assert!(store
        .claim_domain(&d.id, "n1", i64::MAX / 2)
        .await
        .expect("claim"));
    assert!(!store
        .claim_domain(&d.id, "n2", i64::MAX / 2)
        .await
        .expect("claim"));
    assert!(!store
        .claim_domain(&d.id, "n1", i64::MAX / 2)
        .await
        .expect("claim"));
    store.release_domain(&d.id, "n1").await.expect("release");
    assert!(store.claim_domain(&d.id, "n2", 1).await.expect("claim"));
    // An expired lease (until = 1 ms after the epoch) is free again.
    assert!(store
        .claim_domain(&d.id, "n3", i64::MAX / 2)
        .await
        .expect("claim"));

    // The hourly order budget.
    assert!(store.take_order_slot(&d.id, 2).await.expect("slot"));
    assert!(store.take_order_slot(&d.id, 2).await.expect("slot"));
    assert!(!store.take_order_slot(&d.id, 2).await.expect("slot"));

    // Write-once settings: the first value stays.
    assert_eq!(store.setting("acct").await.expect("get"), None);
    assert_eq!(
        store.setting_once("acct", b"one").await.expect("set"),
        b"one"
    );
    assert_eq!(
        store.setting_once("acct", b"two").await.expect("set"),
        b"one"
    );

    // A certificate that runs out before it is renewed is reported as expired, once.
    let d = store
        .install_domain_certificate(
            &d.id,
            &NewCertificate {
                chain_pem: "PEM".into(),
                sealed_key: vec![1, 2, 3],
                names: vec!["www.shop.test".into()],
                issuer: "CN=Test CA".into(),
                not_after: 1_000,
                source: "acme",
            },
            None,
        )
        .await
        .expect("install");
    assert_eq!(d.cert_issuer.as_deref(), Some("CN=Test CA"));
    let expired = store.mark_expired(i64::MAX / 4).await.expect("sweep");
    assert_eq!(expired.len(), 1);
    assert_eq!(
        store.get_domain(&d.id).await.expect("get").ssl_status,
        tenantgate_control::model::SslStatus::Expired
    );
    assert!(store
        .mark_expired(i64::MAX / 4)
        .await
        .expect("sweep")
        .is_empty());

    // The webhook outbox: oldest first, leased to one taker, retried later, dropped.
    store.queue_event("e1", "{\"n\":1}").await.expect("queue");
    store.queue_event("e2", "{\"n\":2}").await.expect("queue");
    let far = i64::MAX / 4;
    let got = store.take_events(10, far).await.expect("take");
    assert_eq!(
        got.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    assert!(
        store.take_events(10, far).await.expect("take").is_empty(),
        "leased twice"
    );
    store.retry_event("e1", 0).await.expect("retry");
    store.drop_event("e2").await.expect("drop");
    let got = store.take_events(10, far).await.expect("take");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].2), ("e1", 1));
    store.drop_event("e1").await.expect("drop");

    // Detach: route and certificate gone; a second detach is a 404.
    let v = store.ping().await.expect("version");
    store.delete_domain("test", &d.id).await.expect("detach");
    let delta = store.delta_since(v).await.expect("delta").expect("some");
    assert!(delta
        .routes
        .iter()
        .any(|r| matches!(r, RouteChange::Upsert(r) if r.id == a.id
        && r.hostnames.iter().all(|h| h.to_display() != "www.shop.test"))));
    assert!(matches!(
        store.delete_domain("test", &d.id).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store.get_domain(&d.id).await.expect("kept").status,
        DomainStatus::Deleted
    );
    // The name is free again.
    let again = store
        .attach_domain("test", &c.id, "www.shop.test")
        .await
        .expect("attach after detach");
    // Deleting the tenant retires its domains and withdraws their challenges in one change.
    let v = store.ping().await.expect("version");
    store
        .delete_tenant("test", &c.id)
        .await
        .expect("delete tenant");
    assert_eq!(
        store.get_domain(&again.id).await.expect("kept").status,
        DomainStatus::Deleted
    );
    let delta = store.delta_since(v).await.expect("delta").expect("some");
    assert!(
        delta
            .challenges
            .iter()
            .any(|s| s.domain_id == again.id && s.challenges.is_empty()),
        "{delta:?}"
    );
    assert!(store
        .snapshot()
        .await
        .expect("snapshot")
        .challenges
        .iter()
        .all(|s| s.domain_id != again.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_on_both_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    domains(&sqlite_store(&dir)).await;
    let pg = PgCluster::start().await;
    domains(&postgres_store(&pg, "domains").await).await;
}

/// Tenants provisioned from blueprints: not routed while provisioning, routed to their
/// containers once deployed, a failed one unrouted, the lease held by one node at a time,
/// events in order.
async fn provisioning(store: &Store) {
    let mut new = new_tenant("prov", 1);
    new.upstreams.clear();
    new.blueprint = Some(("demo-storefront".into(), "ocean".into()));
    let t = store.create_tenant("test", &new).await.expect("create");
    assert_eq!(t.status, TenantStatus::Provisioning);
    assert_eq!(
        (t.blueprint.as_deref(), t.theme.as_deref(), t.generation),
        (Some("demo-storefront"), Some("ocean"), Some(0))
    );
    let routed = |snap: &tenantgate_config::Snapshot, id: &str| {
        snap.routes.iter().find(|r| r.id == id).cloned()
    };
    assert!(routed(&store.snapshot().await.expect("snap"), &t.id).is_none());
    // Upstreams of a provisioned tenant follow its containers, not the API.
    let e = store
        .set_upstreams("test", &t.id, &[addr(2)])
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    // Suspending a tenant that is not live yet is refused.
    let e = store
        .set_status("test", &t.id, TenantStatus::Suspended)
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");

    // One holder at a time; the holder gives it back.
    let until = i64::MAX / 2;
    assert!(store.claim_tenant(&t.id, "n1", until).await.expect("claim"));
    assert!(!store.claim_tenant(&t.id, "n2", until).await.expect("claim"));
    assert!(store.deployment(&t.id).await.expect("d").leased);
    store
        .release_tenant(&t.id, "n2")
        .await
        .expect("not the holder");
    assert!(!store.claim_tenant(&t.id, "n2", until).await.expect("claim"));
    store.release_tenant(&t.id, "n1").await.expect("release");
    assert!(!store.deployment(&t.id).await.expect("d").leased);

    store.tenant_event(&t.id, "first").await.expect("event");
    store.tenant_event(&t.id, "second").await.expect("event");
    store
        .set_db_secret(&t.id, Some(b"sealed"))
        .await
        .expect("secret");
    assert_eq!(
        store
            .deployment(&t.id)
            .await
            .expect("d")
            .db_secret
            .as_deref(),
        Some(&b"sealed"[..])
    );

    // Deployed: active and routed to the containers, generation and theme recorded.
    let before = store.ping().await.expect("version");
    store
        .deploy(
            "test",
            &t.id,
            1,
            "sunset",
            &[
                ("/".into(), vec![addr(7001)]),
                ("/store".into(), vec![addr(7011), addr(7012)]),
            ],
            None,
        )
        .await
        .expect("deploy");
    assert_eq!(store.ping().await.expect("version"), before + 1);
    let got = store.get_tenant(&t.id).await.expect("get");
    assert_eq!(got.status, TenantStatus::Active);
    assert_eq!(
        (got.generation, got.theme.as_deref()),
        (Some(1), Some("sunset"))
    );
    assert_eq!(got.upstreams, ["127.0.0.1:7001"]);
    assert_eq!(
        got.paths.as_ref().map(|p| p["/store"].clone()),
        Some(vec![
            "127.0.0.1:7011".to_owned(),
            "127.0.0.1:7012".to_owned()
        ])
    );
    let routed_now = routed(&store.snapshot().await.expect("snap"), &t.id).expect("routed");
    assert_eq!(routed_now.upstreams.len(), 1);
    assert_eq!(routed_now.paths.len(), 1);
    assert_eq!(routed_now.paths[0].prefix, "/store");
    assert_eq!(routed_now.paths[0].upstreams.len(), 2);
    let events: Vec<String> = got
        .events
        .expect("events")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(events, ["first", "second"]);
    let delta = store
        .delta_since(before)
        .await
        .expect("delta")
        .expect("some");
    assert!(
        matches!(&delta.routes[..], [RouteChange::Upsert(r)] if r.id == t.id && r.upstreams.len() == 1)
    );
    // Replicas set through the API are kept per component.
    store
        .set_replicas("test", &t.id, "web", 3)
        .await
        .expect("scale");
    store
        .set_replicas("test", &t.id, "worker", 2)
        .await
        .expect("scale");
    store
        .set_replicas("test", &t.id, "web", 4)
        .await
        .expect("scale");
    let r = store.deployment(&t.id).await.expect("d").replicas;
    assert_eq!(
        r.into_iter().collect::<Vec<_>>(),
        [("web".to_owned(), 4), ("worker".to_owned(), 2)]
    );
    // A redeploy of a suspended tenant keeps it suspended.
    store
        .set_status("test", &t.id, TenantStatus::Suspended)
        .await
        .expect("suspend");
    store
        .deploy(
            "test",
            &t.id,
            2,
            "sunset",
            &[("/".into(), vec![addr(7002)])],
            None,
        )
        .await
        .expect("redeploy");
    assert_eq!(
        store.get_tenant(&t.id).await.expect("get").status,
        TenantStatus::Suspended
    );
    // Only a provisioning tenant can fail.
    let e = store
        .fail_tenant("test", &t.id, "late")
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");

    // A failed tenant: not routed, its reason kept, deletable.
    let mut other = new_tenant("prov2", 1);
    other.upstreams.clear();
    other.blueprint = Some(("demo-storefront".into(), "ocean".into()));
    let f = store.create_tenant("test", &other).await.expect("create");
    store
        .fail_tenant("test", &f.id, "image missing")
        .await
        .expect("fail");
    let got = store.get_tenant(&f.id).await.expect("get");
    assert_eq!(got.status, TenantStatus::Failed);
    assert_eq!(got.status_reason.as_deref(), Some("image missing"));
    assert!(routed(&store.snapshot().await.expect("snap"), &f.id).is_none());
    let e = store
        .deploy(
            "test",
            &f.id,
            1,
            "ocean",
            &[("/".into(), vec![addr(7003)])],
            None,
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert_eq!(store.deployments().await.expect("all").len(), 2);
    store.delete_tenant("test", &f.id).await.expect("delete");
    assert_eq!(store.deployments().await.expect("all").len(), 1);
    assert_eq!(
        store.deployment(&f.id).await.expect("kept").status,
        "deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_tenants_on_both_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    provisioning(&sqlite_store(&dir)).await;
    let pg = PgCluster::start().await;
    provisioning(&postgres_store(&pg, "provisioning").await).await;
}

/// Dashboard operators and their sessions: hashed passwords only, sessions that end when
/// idle, when too old, on sign-out and with their operator, and no version taken.
async fn operators(store: &Store) {
    use tenantgate_control::store::operators::SessionLimits;
    let long = SessionLimits {
        idle_ms: 60_000,
        absolute_ms: 3_600_000,
    };
    let version = store.ping().await.expect("ping");
    store
        .add_operator("cli", "alice", "$argon2id$hash-a")
        .await
        .expect("add alice");
    assert!(matches!(
        store.add_operator("cli", "alice", "$argon2id$other").await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store
            .operator_password("alice")
            .await
            .expect("read")
            .as_deref(),
        Some("$argon2id$hash-a")
    );
    assert_eq!(store.operator_password("bob").await.expect("read"), None);

    store
        .create_session("alice", "hash-one", "csrf-one")
        .await
        .expect("session");
    let s = store.session("hash-one", long).await.expect("read");
    assert_eq!(
        s.map(|s| (s.operator, s.csrf)),
        Some(("alice".to_owned(), "csrf-one".to_owned()))
    );
    assert_eq!(
        store.session("hash-unknown", long).await.expect("read"),
        None
    );
    let listed = store.operators().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_sign_in.is_some(), "{listed:?}");

    // Idle and absolute limits end a session (and remove it).
    store
        .create_session("alice", "hash-two", "csrf-two")
        .await
        .expect("session");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let short_idle = SessionLimits {
        idle_ms: 100,
        absolute_ms: 3_600_000,
    };
    assert_eq!(
        store.session("hash-two", short_idle).await.expect("read"),
        None
    );
    assert_eq!(
        store.session("hash-two", long).await.expect("read"),
        None,
        "removed"
    );
    let short_life = SessionLimits {
        idle_ms: 60_000,
        absolute_ms: 100,
    };
    assert_eq!(
        store.session("hash-one", short_life).await.expect("read"),
        None
    );

    // Sign-out, and removing the operator, end sessions.
    store
        .create_session("alice", "hash-three", "csrf-three")
        .await
        .expect("session");
    store.end_session("hash-three").await.expect("end");
    assert_eq!(store.session("hash-three", long).await.expect("read"), None);
    store
        .create_session("alice", "hash-four", "csrf-four")
        .await
        .expect("session");
    store.remove_operator("cli", "alice").await.expect("remove");
    assert_eq!(store.session("hash-four", long).await.expect("read"), None);
    assert!(matches!(
        store.remove_operator("cli", "alice").await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store.ping().await.expect("ping"),
        version,
        "proxies see nothing of this"
    );
    let audit = store
        .audit_by(Some("cli"), Some("alice"), 10)
        .await
        .expect("audit");
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["operator.remove", "operator.add"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_sessions_on_both_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    operators(&sqlite_store(&dir)).await;
    let pg = PgCluster::start().await;
    operators(&postgres_store(&pg, "operators").await).await;
}
