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
    pool: Option<NetworkPool>,
}

/// Where tenant networks get their subnets: the engine's default pools hold only about 30
/// bridge networks (a /16 each), far fewer than a host's tenants, so tenant networks are
/// carved as small subnets out of a range of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPool {
    base: u32,
    pool_prefix: u8,
    prefix: u8,
}

impl NetworkPool {
    /// `cidr` (IPv4, e.g. `10.213.0.0/16`) cut into `/prefix` subnets.
    pub fn parse(cidr: &str, prefix: u8) -> Result<Self, String> {
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not an IPv4 CIDR range"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR range"))?;
        let pool_prefix: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=28).contains(l))
            .ok_or_else(|| format!("{cidr:?}: the prefix length must be 8-28"))?;
        if !(pool_prefix < prefix && prefix <= 29) {
            return Err(format!(
                "subnets of /{prefix} do not fit {cidr:?} (longer than /{pool_prefix}, at most /29)"
            ));
        }
        let base = u32::from(addr) & mask(pool_prefix);
        Ok(NetworkPool {
            base,
            pool_prefix,
            prefix,
        })
    }

    /// The subnets, in order.
    fn subnets(&self) -> impl Iterator<Item = (u32, u8)> + '_ {
        let size = 1u64 << (32 - self.prefix);
        let count = 1u64 << (self.prefix - self.pool_prefix);
        (0..count).map(move |i| (self.base + (i * size) as u32, self.prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    a.0 & m == b.0 & m
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
    /// Create a network; one that exists already (409) is fine.
    async fn create_network(&self, req: NetworkCreateRequest) -> Result<(), RuntimeError> {
        match self.api.create_network(req).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(err("create network", e)),
        }
    }

    /// Connect with the environment's defaults (`DOCKER_HOST` or the local socket).
    pub fn connect() -> Result<Self, RuntimeError> {
        let api = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        Ok(Docker { api, pool: None })
    }

    /// Give tenant networks subnets from `pool` (else the engine's default pools).
    pub fn with_network_pool(mut self, pool: NetworkPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// IPv4 subnets of every network on the engine.
    async fn used_subnets(&self) -> Result<Vec<(u32, u8)>, RuntimeError> {
        let nets = self
            .api
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(|e| err("list networks", e))?;
        Ok(nets
            .iter()
            .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
            .flatten()
            .filter_map(|c| {
                let (a, l) = c.subnet.as_deref()?.split_once('/')?;
                Some((u32::from(a.parse::<Ipv4Addr>().ok()?), l.parse().ok()?))
            })
            .collect())
    }

    /// Connect to the engine at the unix socket `path` (tests: an engine that is not there).
    pub fn connect_unix(path: &str) -> Result<Self, RuntimeError> {
        let api = bollard::Docker::connect_with_unix(path, 10, bollard::API_DEFAULT_VERSION)
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        Ok(Docker { api, pool: None })
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
        let paused = c.state.as_ref().and_then(|s| s.paused).unwrap_or(false);
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
            status: c
                .state
                .as_ref()
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            labels,
            running,
            paused,
            address,
        })
    }

    /// Whether an engine error says the container is frozen (it refuses some changes then).
    fn is_paused_error(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 409, message }
            if message.contains("paused"))
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
            Ok(Err(e)) => Err(RuntimeError::Failed(format!(
                "image {image:?} is not on this host and cannot be pulled ({})",
                err("pull", e)
            ))),
            Err(_) => Err(RuntimeError::Failed(format!(
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
        let request = |subnet: Option<(u32, u8)>| NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                LABEL_TENANT.to_owned(),
                tenant.to_owned(),
            )])),
            ipam: subnet.map(|(a, l)| bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(format!("{}/{l}", Ipv4Addr::from(a))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Some(pool) = self.pool else {
            return self.create_network(request(None)).await.map(|_| ());
        };
        // The first subnet of the pool no network uses; another node or tenant may take it
        // first, and then the next one is tried.
        let mut used = self.used_subnets().await?;
        let mut collisions = 0;
        for subnet in pool.subnets() {
            if used.iter().any(|u| overlaps(*u, subnet)) {
                continue;
            }
            match self.create_network(request(Some(subnet))).await {
                Ok(_) => return Ok(()),
                Err(RuntimeError::Failed(m)) if m.contains("overlap") && collisions < 16 => {
                    collisions += 1;
                    used = self.used_subnets().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::Failed(format!(
            "create network: every /{} subnet of the tenant network pool is in use \
             (provisioning.network_pool is too small for this host's tenants)",
            pool.prefix
        )))
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

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.api.pause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) if Self::is_paused_error(&e) => Ok(()),
            Err(e) => Err(err("pause container", e)),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.api.unpause_container(id).await {
            Ok(()) => Ok(()),
            // Not frozen (the engine answers 409 or 500 "... is not paused").
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("is not paused") =>
            {
                Ok(())
            }
            Err(e) => tolerate_missing(Err(err("unpause container", e))),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        // A frozen container cannot take the stop signal: thaw it first.
        self.unpause(id).await?;
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
        let force = || {
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            })
        };
        let removed = match self.api.remove_container(id, force()).await {
            // An engine that will not kill a frozen container: thaw it first.
            Err(e) if Self::is_paused_error(&e) => {
                self.unpause(id).await?;
                self.api.remove_container(id, force()).await
            }
            other => other,
        };
        match removed {
            // Someone else (another node, the reconciler) is removing it: done once it is
            // gone, so "removed" always means gone.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("in progress") => {
                for _ in 0..200 {
                    match self
                        .api
                        .inspect_container(id, None::<InspectContainerOptions>)
                        .await
                    {
                        Err(BollardError::DockerResponseServerError {
                            status_code: 404, ..
                        }) => return Ok(()),
                        _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
                Err(RuntimeError::Failed(format!(
                    "remove container {id}: still being removed after 10 s"
                )))
            }
            other => tolerate_missing(other.map_err(|e| err("remove container", e))),
        }
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
            let paused = s.state == Some(ContainerSummaryStateEnum::PAUSED);
            let running = paused || s.state == Some(ContainerSummaryStateEnum::RUNNING);
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
                paused,
                address,
                status: s.status.unwrap_or_default(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_cut_into_subnets_in_order() {
        let p = NetworkPool::parse("10.213.0.0/16", 27).expect("pool");
        let first: Vec<String> = p
            .subnets()
            .take(3)
            .map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a)))
            .collect();
        assert_eq!(first, ["10.213.0.0/27", "10.213.0.32/27", "10.213.0.64/27"]);
        assert_eq!(p.subnets().count(), 2048);
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().expect("ip"));
        assert!(overlaps((ip("10.213.0.32"), 27), (ip("10.0.0.0"), 8)));
        assert!(!overlaps((ip("10.213.0.32"), 27), (ip("10.213.0.64"), 27)));
        for (cidr, prefix) in [
            ("10.0.0.0", 27),
            ("10.0.0.0/16", 16),
            ("10.0.0.0/16", 30),
            ("x/8", 20),
        ] {
            assert!(
                NetworkPool::parse(cidr, prefix).is_err(),
                "{cidr} /{prefix}"
            );
        }
    }
}
