//! `tenantgate check-config`: every problem with its key and reason, exit 1; a one-line summary
//! and exit 0 when valid.

mod common;

use std::process::Command;

use common::*;

fn check(dir: &std::path::Path, toml: &str) -> (i32, String, String) {
    let path = dir.join("t.toml");
    write_file(&path, toml);
    let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write `a.pem` (chain) and `a.key` into `dir`.
fn write_cert_files(dir: &std::path::Path, chain: &str, key: &str) {
    write_file(&dir.join("a.pem"), chain);
    write_file(&dir.join("a.key"), key);
}

#[test]
fn a_valid_file_passes_with_a_summary() {
    init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (c, k) = ca.issue(&["a.test"]);
    write_cert_files(dir.path(), &c, &k);
    let (code, out, err) = check(
        dir.path(),
        r#"
        [proxy]
        http_listen = "127.0.0.1:18080"
        https_listen = "127.0.0.1:18443"
        [[certificates]]
        cert_file = "a.pem"
        key_file = "a.key"
        default = true
        [[routes]]
        hostnames = ["a.test", "*.b.test"]
        upstreams = ["127.0.0.1:9001"]
        "#,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("configuration OK: 1 routes, 2 hostnames, 1 certificates"),
        "{out}"
    );
}

#[test]
fn every_problem_is_printed_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("garbage.pem"), "not a certificate");
    let (code, _, err) = check(
        dir.path(),
        r#"
        [proxy]
        http_listen = "localhost"
        https_listen = "127.0.0.1:18443"
        threads = 0
        [admin]
        listen = "127.0.0.1:80"
        [[certificates]]
        cert_file = "garbage.pem"
        key_file = "missing.key"
        [[routes]]
        hostnames = ["a.test", "not a host"]
        upstreams = ["127.0.0.1:9001", "nowhere"]
        [[routes]]
        hostnames = ["A.test."]
        upstreams = []
        "#,
    );
    assert_eq!(code, 1);
    for needle in [
        "proxy.http_listen",
        "proxy.threads",
        "admin.listen",
        "routes[0].hostnames[1]",
        "routes[0].upstreams[1]",
        "routes[1].hostnames[0]: \"A.test.\" is already listed by routes[0]",
        "routes[1].upstreams: must list at least one upstream",
        "missing.key",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// A static route is an upstream entering too: it may not name this node's own listeners or
/// a metadata service, whatever the spelling.
#[test]
fn static_routes_obey_the_upstream_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check(
        dir.path(),
        r#"
        [proxy]
        http_listen = "0.0.0.0:18080"
        [admin]
        listen = "127.0.0.1:18081"
        [[routes]]
        hostnames = ["a.test"]
        upstreams = ["127.0.0.1:18081", "[::ffff:127.0.0.1]:18080", "127.0.0.1:9001"]
        [[routes]]
        hostnames = ["b.test"]
        upstreams = ["[2002:a9fe:a9fe::]:80"]
        "#,
    );
    assert_eq!(code, 1, "{err}");
    for needle in [
        "routes[0].upstreams[0]: \"127.0.0.1:18081\": 127.0.0.1:18081 is this node's own listener (admin.listen = 127.0.0.1:18081) (own_listener)",
        "routes[0].upstreams[1]",
        "(it spells 127.0.0.1)",
        "routes[1].upstreams[0]",
        "(metadata)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("routes[0].upstreams[2]"), "{err}");
}

#[test]
fn unknown_keys_and_syntax_errors_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check(
        dir.path(),
        "[proxy]\nhttp_listen = \"127.0.0.1:8080\"\nthreadz = 4\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("threadz") && err.contains("line 3"), "{err}");
    let (code, _, err) = check(
        dir.path(),
        "[[routes]]\nhostnames = \"a.test\"\nupstreams = []\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("hostnames") || err.contains("line 2"), "{err}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (c, _) = ca.issue(&["a.test"]);
    let (_, k) = ca.issue(&["a.test"]);
    write_cert_files(dir.path(), &c, &k);
    let (code, _, err) = check(
        dir.path(),
        "[proxy]\nhttps_listen = \"127.0.0.1:18443\"\n[[certificates]]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("certificates[0]") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn domain_acme_and_webhook_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check(
        dir.path(),
        r#"
        [domains]
        nameservers = ["8.8.8.8"]
        edge_addresses = ["edge.example"]
        check_min_seconds = 0
        [acme]
        directory_url = "ftp://ca.example/dir"
        renew_remaining_fraction = 1.5
        orders_per_hour = 0
        [webhooks]
        url = "https://hooks.example/x"
        secret = "short"
        "#,
    );
    assert_eq!(code, 1);
    for needle in [
        "domains.nameservers[0]: \"8.8.8.8\" is not an ip:port address",
        "domains.edge_addresses[0]",
        "domains.check_min_seconds: must be greater than 0",
        "acme.directory_url",
        "acme.renew_remaining_fraction",
        "acme.orders_per_hour",
        "webhooks.secret",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn provisioning_and_tenant_database_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check(
        dir.path(),
        r#"
        [provisioning]
        reconcile_seconds = 0
        network_pool = "10.213.0.0"
        retention = "drop"
        [tenant_db]
        url = "mysql://db/tenants"
        container_port = 0
        "#,
    );
    assert_eq!(code, 1);
    for needle in [
        "provisioning.reconcile_seconds: must be greater than 0",
        "provisioning.network_pool: \"10.213.0.0\" is not an IPv4 range",
        "tenant_db.url: must be a postgres:// URL",
        "tenant_db.container_port: must not be 0",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let (code, _, err) = check(
        dir.path(),
        "[provisioning]\nnetwork_pool = \"10.213.0.0/16\"\nnetwork_prefix = 16\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("provisioning.network_prefix: must be longer than the pool's /16"),
        "{err}"
    );
    let (code, _, err) = check(dir.path(), "[provisioning]\nretention = \"archive\"\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("retention") && err.contains("archive"),
        "{err}"
    );
}

#[test]
fn check_blueprints_lists_the_shipped_ones_and_names_every_problem() {
    let run = |dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .arg("check-blueprints")
            .arg(dir)
            .output()
            .expect("run check-blueprints");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/blueprints");
    let (code, out, err) = run(&shipped);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo-storefront: components 1×web"), "{out}");
    assert!(
        out.contains("/store → medusa") && out.contains("electronics, fashion"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("broken.toml"),
        "name = \"broken\"\ndatabase = \"schema\"\ndefault_theme = \"a\"\ncomponents = []\nroutes = []\n[themes.a]\n",
    );
    write_file(
        &dir.path().join("typo.toml"),
        "name = \"typo\"\nimage = \"x\"\n",
    );
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 1);
    for needle in [
        "broken.toml: components: at least one component is needed",
        "broken.toml: routes: at least one route is needed",
        "typo.toml: line 2: unknown field `image`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
