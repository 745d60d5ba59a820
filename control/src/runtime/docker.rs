//! The Docker Engine runtime, through bollard (the local socket, or `DOCKER_HOST`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};

use super::{
    Container, ContainerSpec, Runtime, RuntimeError, LABEL_COMPONENT, LABEL_GENERATION,
    LABEL_INSTANCE, LABEL_TENANT,
};

/// How long pulling a missing image may take.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The Docker Engine.
pub struct Docker {
    api: bollard::Docker,
}

fn err(what: &str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(format!("{what}: {message}")),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Failed(format!("{what}: {message} ({status_code})")),
        other => RuntimeError::Unavailable(format!("{what}: {other}")),
    }
}

/// Absent is fine for removals.
fn tolerate_missing(r: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match r {
        Err(RuntimeError::NotFound(_)) => Ok(()),
        other => other,
    }
}

impl Docker {
    /// Connect with the environment's defaults (`DOCKER_HOST` or the local socket).
    pub fn connect() -> Result<Self, RuntimeError> {
        let api = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        Ok(Docker { api })
    }

    /// Connect to the engine at the unix socket `path` (tests: an engine that is not there).
    pub fn connect_unix(path: &str) -> Result<Self, RuntimeError> {
        let api = bollard::Docker::connect_with_unix(path, 10, bollard::API_DEFAULT_VERSION)
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        Ok(Docker { api })
    }

    async fn inspect(&self, id: &str) -> Result<Container, RuntimeError> {
        let c = self
            .api
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| err("inspect container", e))?;
        let labels: BTreeMap<String, String> = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let address = c
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .and_then(|ports| {
                ports
                    .values()
                    .flatten()
                    .flatten()
                    .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
            })
            .filter(|_| running)
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        Ok(Container {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            labels,
            running,
            address,
        })
    }
}

#[async_trait]
impl Runtime for Docker {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.api
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| err("ping", e))
    }

    async fn host_address(&self) -> Result<IpAddr, RuntimeError> {
        let net = self
            .api
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| err("inspect network bridge", e))?;
        let configs = net.ipam.and_then(|i| i.config).unwrap_or_default();
        // The engine does not always report the gateway; it is then the subnet's first
        // address.
        configs
            .iter()
            .find_map(|c| c.gateway.as_deref()?.parse::<Ipv4Addr>().ok())
            .or_else(|| {
                configs.iter().find_map(|c| {
                    let net: Ipv4Addr = c.subnet.as_deref()?.split('/').next()?.parse().ok()?;
                    Some(Ipv4Addr::from(u32::from(net) + 1))
                })
            })
            .map(IpAddr::V4)
            .ok_or_else(|| RuntimeError::Failed("the bridge network has no IPv4 subnet".into()))
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        use futures_util::StreamExt as _;
        match self.api.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(err("inspect image", e)),
        }
        let pull = async {
            let mut progress = self.api.create_image(
                Some(bollard::query_parameters::CreateImageOptions {
                    from_image: Some(image.to_owned()),
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), BollardError>(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::NotFound(format!(
                "image {image:?} is not on this host and cannot be pulled ({})",
                err("pull", e)
            ))),
            Err(_) => Err(RuntimeError::NotFound(format!(
                "image {image:?} is not on this host and pulling it took more than {}s",
                PULL_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn ensure_network(&self, name: &str, tenant: &str) -> Result<(), RuntimeError> {
        // The engine accepts a second network with the same name (and then refuses to attach
        // to either), so look first.
        match self
            .api
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(err("inspect network", e)),
        }
        let created = self
            .api
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    LABEL_TENANT.to_owned(),
                    tenant.to_owned(),
                )])),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Already there (409): fine, the call is idempotent.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(err("create network", e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        tolerate_missing(
            self.api
                .remove_network(name)
                .await
                .map_err(|e| err("remove network", e)),
        )
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<Container, RuntimeError> {
        let port = format!("{}/tcp", spec.port);
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_owned(), spec.instance.clone()),
            (LABEL_TENANT.to_owned(), spec.tenant.clone()),
            (LABEL_COMPONENT.to_owned(), spec.component.clone()),
            (LABEL_GENERATION.to_owned(), spec.generation.to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(HashMap::from([(port.clone(), HashMap::new())])),
            host_config: Some(HostConfig {
                // Loopback only, at a port the engine picks: never on a public address.
                port_bindings: Some(HashMap::from([(
                    port,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                network_mode: Some(spec.network.clone()),
                // The Docker host by name (the tenant database, for one).
                extra_hosts: Some(vec!["host.docker.internal:host-gateway".into()]),
                nano_cpus: Some((spec.cpus * 1e9) as i64),
                memory: Some(i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX)),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                cap_drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .api
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| err("create container", e))?;
        if let Err(e) = self
            .api
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
        {
            // Nothing half-created: a container that cannot start is removed.
            let _ = self.remove(&created.id).await;
            return Err(err("start container", e));
        }
        self.inspect(&created.id).await
    }

    async fn start(&self, id: &str) -> Result<Container, RuntimeError> {
        self.api
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| err("start container", e))?;
        self.inspect(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let stopped = self
            .api
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(10),
                    ..Default::default()
                }),
            )
            .await;
        match stopped {
            Ok(()) => Ok(()),
            // Already stopped (304).
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => tolerate_missing(Err(err("stop container", e))),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        tolerate_missing(
            self.api
                .remove_container(
                    id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| err("remove container", e)),
        )
    }

    async fn list(
        &self,
        instance: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<Container>, RuntimeError> {
        let mut labels = vec![format!("{LABEL_INSTANCE}={instance}")];
        if let Some(t) = tenant {
            labels.push(format!("{LABEL_TENANT}={t}"));
        }
        let summaries = self
            .api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_owned(), labels)])),
                ..Default::default()
            }))
            .await
            .map_err(|e| err("list containers", e))?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let running = s.state == Some(ContainerSummaryStateEnum::RUNNING);
            let address = s
                .ports
                .as_ref()
                .and_then(|ps| ps.iter().find_map(|p| p.public_port))
                .filter(|_| running)
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            out.push(Container {
                id: s.id.unwrap_or_default(),
                name: s
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                labels: s.labels.unwrap_or_default().into_iter().collect(),
                running,
                address,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
