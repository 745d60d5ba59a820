//! The Docker runtime against the real Docker Engine: the demo storefront packaged as a local
//! image (`FROM scratch`, a static binary: no registry is reachable), run on a tenant network
//! with labels and limits, reached on a loopback port, stopped, started, listed, removed.
//! Fails (never skips) when the engine is not there.

mod common;

use std::process::Command;
use std::time::Duration;

use common::docker::demo_image;
use common::*;
use tenantgate_control::runtime::docker::Docker;
use tenantgate_control::runtime::{ContainerSpec, Runtime, RuntimeError};

/// The installation these containers belong to.
const INSTANCE: &str = "runtime-test";

fn spec(tenant: &str, network: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        name: format!("tg-{tenant}-web-1"),
        image: image.into(),
        command: vec![],
        env: vec![
            ("STORE_LISTEN".into(), "0.0.0.0:8080".into()),
            ("STORE_NAME".into(), format!("Store {tenant}")),
            ("STORE_THEME".into(), "forest".into()),
        ],
        instance: INSTANCE.into(),
        tenant: tenant.into(),
        component: "web".into(),
        generation: 1,
        network: network.into(),
        port: 8080,
        cpus: 0.25,
        memory_bytes: 64 << 20,
    }
}

async fn page(addr: std::net::SocketAddr) -> Option<String> {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?
        .get(format!("http://{addr}/"))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_container_runs_on_its_network_with_labels_and_a_loopback_port() {
    let docker = Docker::connect().expect("docker client");
    docker
        .ping()
        .await
        .expect("the Docker Engine must be running for this test");
    let image = "tenantgate/demo-storefront:test";
    demo_image(image);
    let tenant = format!("rt{}", std::process::id());
    let network = format!("tg-{tenant}");
    // Leftovers of an interrupted earlier run with the same pid.
    for c in docker.list(INSTANCE, Some(&tenant)).await.expect("list") {
        docker.remove(&c.id).await.expect("clean");
    }

    docker
        .ensure_network(&network, &tenant)
        .await
        .expect("network");
    docker
        .ensure_network(&network, &tenant)
        .await
        .expect("network again");
    let c = docker
        .run(&spec(&tenant, &network, image))
        .await
        .expect("run");
    assert!(c.running);
    assert_eq!(c.tenant(), Some(tenant.as_str()));
    assert_eq!(c.component(), Some("web"));
    assert_eq!(c.generation(), Some(1));
    let addr = c.address.expect("published port");
    assert!(addr.ip().is_loopback(), "{addr}");
    let html = wait_for("the container to answer", Duration::from_secs(30), || {
        page(addr)
    })
    .await;
    assert!(html.contains(&format!("Store {tenant}")), "{html}");

    // Limits and restart policy as asked.
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.NetworkMode}}",
            &c.id,
        ])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("250000000 67108864 unless-stopped {network}")
    );

    let listed = docker.list(INSTANCE, Some(&tenant)).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, c.id);
    assert_eq!(listed[0].address, c.address);

    docker.stop(&c.id).await.expect("stop");
    docker.stop(&c.id).await.expect("stop again");
    let listed = docker.list(INSTANCE, Some(&tenant)).await.expect("list");
    assert!(!listed[0].running && listed[0].address.is_none());
    let c = docker.start(&c.id).await.expect("start");
    let addr = c.address.expect("published again");
    wait_for("the restarted container", Duration::from_secs(30), || {
        page(addr)
    })
    .await;

    // An image that is not there: refused, and nothing is left behind.
    let mut missing = spec(&tenant, &network, "tenantgate/not-there:1");
    missing.name = format!("tg-{tenant}-web-2");
    match docker.run(&missing).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => panic!("expected a missing image to be NotFound, got {other:?}"),
    }
    assert_eq!(
        docker
            .list(INSTANCE, Some(&tenant))
            .await
            .expect("list")
            .len(),
        1
    );

    docker.remove(&c.id).await.expect("remove");
    docker.remove(&c.id).await.expect("remove again");
    assert!(docker
        .list(INSTANCE, Some(&tenant))
        .await
        .expect("list")
        .is_empty());
    docker
        .remove_network(&network)
        .await
        .expect("remove network");
    docker
        .remove_network(&network)
        .await
        .expect("remove network again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_unavailable_not_a_panic() {
    let docker = match Docker::connect_unix("/nonexistent/docker.sock") {
        Err(RuntimeError::Unavailable(_)) => return,
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(d) => d,
    };
    match docker.ping().await {
        Err(RuntimeError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match docker.list(INSTANCE, None).await {
        Err(RuntimeError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
