//! Where tenants' containers run. Provisioning talks to a [`Runtime`]; the Docker Engine is
//! the one implementation ([`docker::Docker`]), and the interface is small enough that a
//! Swarm or Kubernetes runtime can be added without touching provisioning.
//!
//! Invariants: every container carries the labels `tenantgate.instance` (the store it
//! belongs to, so two installations sharing an engine never touch each other's containers),
//! `tenantgate.tenant`, `tenantgate.component` and `tenantgate.generation`, so the actual
//! state can always be listed and compared with the desired one; containers publish their
//! port on loopback only, never on a public address; each tenant has a network of its own.

pub mod docker;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;

/// Label naming the installation (store) a container belongs to.
pub const LABEL_INSTANCE: &str = "tenantgate.instance";
/// Label naming the tenant a container belongs to.
pub const LABEL_TENANT: &str = "tenantgate.tenant";
/// Label naming the blueprint component.
pub const LABEL_COMPONENT: &str = "tenantgate.component";
/// Label holding the deployment generation (blue/green).
pub const LABEL_GENERATION: &str = "tenantgate.generation";

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot be reached (the API answers 503).
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
    /// No such container, network or image.
    #[error("{0} not found")]
    NotFound(String),
    /// The runtime refused or failed the operation.
    #[error("container runtime: {0}")]
    Failed(String),
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name (unique on the host).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command (empty: the image's).
    pub command: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Installation id (label).
    pub instance: String,
    /// Tenant id (label).
    pub tenant: String,
    /// Component name (label).
    pub component: String,
    /// Generation (label).
    pub generation: u64,
    /// The tenant's network.
    pub network: String,
    /// Port the container listens on; published on 127.0.0.1 at a port the runtime picks.
    pub port: u16,
    /// CPUs (fractions allowed).
    pub cpus: f64,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Runtime id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels (tenant, component, generation among them).
    pub labels: BTreeMap<String, String>,
    /// Running now (a frozen container is running too).
    pub running: bool,
    /// Frozen (`docker pause`).
    pub paused: bool,
    /// Where the proxy reaches it (loopback address and published port), when running.
    pub address: Option<SocketAddr>,
    /// The runtime's own words on its state (Docker: "Up 5 minutes (healthy)",
    /// "Exited (137) 2 seconds ago"), shown to operators.
    pub status: String,
}

impl Container {
    /// The `tenantgate.tenant` label.
    pub fn tenant(&self) -> Option<&str> {
        self.labels.get(LABEL_TENANT).map(String::as_str)
    }

    /// The `tenantgate.component` label.
    pub fn component(&self) -> Option<&str> {
        self.labels.get(LABEL_COMPONENT).map(String::as_str)
    }

    /// The `tenantgate.generation` label.
    pub fn generation(&self) -> Option<u64> {
        self.labels
            .get(LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
    }
}

/// A place to run containers.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Whether the runtime answers.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// The address containers reach the host by (Docker: the default bridge's gateway, what
    /// `host-gateway` names).
    async fn host_address(&self) -> Result<std::net::IpAddr, RuntimeError>;
    /// Make sure `image` is on the host (pulling it when it is not); an error naming the
    /// image when it cannot be had.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Create the tenant's network unless it exists.
    async fn ensure_network(&self, name: &str, tenant: &str) -> Result<(), RuntimeError>;
    /// Remove a network (absent: fine).
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError>;
    /// Create and start a container; returns it with its address.
    async fn run(&self, spec: &ContainerSpec) -> Result<Container, RuntimeError>;
    /// Start a stopped container.
    async fn start(&self, id: &str) -> Result<Container, RuntimeError>;
    /// Stop a container (absent: fine; a frozen one is thawed first).
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;
    /// Freeze a running container's processes (memory kept; already frozen: fine).
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaw a frozen container (not frozen: fine).
    async fn unpause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Remove a container, stopping it first (absent: fine).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Containers of installation `instance` (all, or one tenant's), running or not.
    async fn list(
        &self,
        instance: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<Container>, RuntimeError>;
}
