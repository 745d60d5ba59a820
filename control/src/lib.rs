//! The control plane of tenantgate: the durable store of tenants, hostnames, upstreams and
//! certificates; the authenticated admin API that changes it; and the publisher that hands
//! every committed change to proxies (in process, or through PostgreSQL to a fleet).
//!
//! Invariants: every write is one transaction in which the row change, its change-log entry
//! (one new version) and its audit event commit together; versions are gapless and commit in
//! order, so a proxy that has applied version N knows exactly what it is missing. Bad input
//! gets a specific error and changes nothing.

#![deny(clippy::unwrap_used)]

pub mod api;
pub mod blueprint;
pub mod client;
pub mod dashboard;
pub mod domains;
pub mod lifecycle;
pub mod model;
pub mod publish;
pub mod runtime;
pub mod setup;
pub mod store;
pub mod tenantdb;
pub mod upkeep;

pub use store::Store;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or a value is invalid (400/422).
    #[error("{message}")]
    Invalid {
        /// Machine-readable code, e.g. `invalid_hostname`.
        code: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// No such tenant, certificate or other object.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name is already taken (409); the message never names the owner.
    #[error("{0}")]
    Conflict(String),
    /// A name is taken or served, with a specific code (409), e.g. `hostname_served`; the
    /// message never names the owner.
    #[error("{message}")]
    Taken {
        /// Machine-readable code.
        code: &'static str,
        /// What is taken, and what to do.
        message: String,
    },
    /// The store cannot be reached or failed (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A service the operation needs, other than the store, cannot be reached (503): the
    /// container runtime, the tenant-database server. Nothing was changed.
    #[error("{message}")]
    Dependency {
        /// Machine-readable code, e.g. `runtime_unavailable`.
        code: &'static str,
        /// What cannot be reached, and why.
        message: String,
    },
    /// A bug or an unexpected state (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `prefix` followed by 16 random hex digits.
pub(crate) fn random_id(prefix: &str) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(format!(
        "{prefix}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}
