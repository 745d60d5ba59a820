//! The objects the control plane keeps, as the admin API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lifecycle of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Being created from a blueprint (database, containers, health checks); not routed yet.
    Provisioning,
    /// Served.
    Active,
    /// Served, its containers frozen while idle (`docker pause`): the first request thaws
    /// them in milliseconds.
    Paused,
    /// Served, its containers stopped while idle: the first request starts them (the
    /// visitor waits, or a browser sees the "waking up" page).
    Sleeping,
    /// Paused or sleeping, and a request asked for it: being woken.
    Waking,
    /// Answered with the proxy's 503 page; the backends are not contacted.
    Suspended,
    /// Provisioning failed (see `status_reason`); everything partial was removed. Not
    /// routed; delete it to free the slug.
    Failed,
    /// Gone: hostnames released, not routed. Kept for the audit trail.
    Deleted,
}

impl TenantStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Paused => "paused",
            TenantStatus::Sleeping => "sleeping",
            TenantStatus::Waking => "waking",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Failed => "failed",
            TenantStatus::Deleted => "deleted",
        }
    }

    /// Every status, in the order the dashboard lists them.
    pub const ALL: [TenantStatus; 8] = [
        TenantStatus::Active,
        TenantStatus::Paused,
        TenantStatus::Sleeping,
        TenantStatus::Waking,
        TenantStatus::Provisioning,
        TenantStatus::Suspended,
        TenantStatus::Failed,
        TenantStatus::Deleted,
    ];

    /// Parse the spelling (stored or shown).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The status shown for a stored one: an active tenant whose containers sleep is
    /// `paused` or `sleeping`, and `waking` once a request asked for it. (The store keeps
    /// `active`: the sleep state is a column of its own.)
    pub fn shown(stored: &str, sleep: Option<&str>, wake_requested: bool) -> Option<Self> {
        let s = Self::parse(stored)?;
        Some(match (s, sleep) {
            (TenantStatus::Active, Some(_)) if wake_requested => TenantStatus::Waking,
            (TenantStatus::Active, Some("paused")) => TenantStatus::Paused,
            (TenantStatus::Active, Some("stopped")) => TenantStatus::Sleeping,
            (s, _) => s,
        })
    }

    /// Whether the tenant is served (awake or asleep): what "active" meant before stores
    /// slept.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TenantStatus::Active
                | TenantStatus::Paused
                | TenantStatus::Sleeping
                | TenantStatus::Waking
        )
    }
}

/// Whether a hostname is the platform subdomain or a merchant's own domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostnameKind {
    /// `<slug>.<platform domain>`, created with the tenant.
    Platform,
    /// A merchant's domain.
    Custom,
}

/// A tenant with its hostnames and upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// Stable id (`t_` + 16 hex digits).
    pub id: String,
    /// URL-safe short name; the platform hostname is `<slug>.<platform domain>`.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Lifecycle status.
    pub status: TenantStatus,
    /// Hostnames routed to this tenant (A-labels).
    pub hostnames: Vec<String>,
    /// Backends as `ip:port`, tried round robin (a provisioned tenant: its containers).
    pub upstreams: Vec<String>,
    /// Backends of path prefixes served by other components than `upstreams` (provisioned
    /// tenants whose blueprint routes paths, e.g. `/store` to an API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// The blueprint it was provisioned from (absent: upstreams given by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    /// Its theme (provisioned tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<String>,
    /// Deployed generation of its containers (provisioned tenants; each redeploy adds one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Why it failed, or why the last redeploy failed, human-readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The plan whose limits it has (a key of the config's `[plans]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Seconds without traffic after which its containers are frozen (`docker pause`);
    /// absent: never. The blueprint's unless set for this tenant (`PATCH`); hand-made
    /// tenants never sleep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_seconds: Option<u64>,
    /// Seconds without traffic after which its containers are stopped; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_seconds: Option<u64>,
    /// The idle periods are the tenant's own (else its blueprint's, filled in by the API).
    #[serde(skip)]
    pub sleep_override: bool,
    /// Its own traffic limits (`PUT /v1/tenants/{id}/limits`), which win over the plan's
    /// field by field.
    #[serde(default, skip_serializing_if = "tenantgate_config::Limits::is_empty")]
    pub limits: tenantgate_config::Limits,
    /// What provisioning did, oldest first (only when one tenant is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<TenantEvent>>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

/// One step of a tenant's provisioning, redeploy or teardown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantEvent {
    /// When, RFC 3339.
    pub at: String,
    /// What happened.
    pub message: String,
}

/// A stored certificate, without its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateInfo {
    /// Stable id (`c_` + 16 hex digits).
    pub id: String,
    /// DNS names from the certificate's subjectAltName (`*.x` for wildcards).
    pub names: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// `uploaded` or `acme`.
    pub source: String,
    /// When it was stored, RFC 3339.
    pub created_at: String,
}

/// Lifecycle of a custom domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Attached; waiting for the TXT record or the HTTP token to prove ownership. Not routed.
    PendingVerification,
    /// Verified and routed to the tenant on every proxy.
    Active,
    /// No longer resolves to the platform's edge: not routed, not renewed (checked again
    /// periodically; pointing back makes it active again).
    Moved,
    /// Detached: route, challenges and certificate removed, token invalid.
    Deleted,
    /// Stopped by an operator: not routed, not verified, not issued.
    Blocked,
}

impl DomainStatus {
    /// Every status.
    pub const ALL: [DomainStatus; 5] = [
        DomainStatus::PendingVerification,
        DomainStatus::Active,
        DomainStatus::Moved,
        DomainStatus::Deleted,
        DomainStatus::Blocked,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::PendingVerification => "pending_verification",
            DomainStatus::Active => "active",
            DomainStatus::Moved => "moved",
            DomainStatus::Deleted => "deleted",
            DomainStatus::Blocked => "blocked",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Lifecycle of a custom domain's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SslStatus {
    /// Waiting for the domain's ownership to be verified, or the CA to validate it.
    PendingValidation,
    /// Verified; an order is queued or in progress.
    PendingIssuance,
    /// A valid certificate is served.
    Active,
    /// Renewal in progress or being retried; the current certificate is still served.
    Renewing,
    /// Issuance failed (see `errors`); retried with backoff.
    Failed,
    /// The certificate expired before it could be renewed.
    Expired,
}

impl SslStatus {
    /// Every status.
    pub const ALL: [SslStatus; 6] = [
        SslStatus::PendingValidation,
        SslStatus::PendingIssuance,
        SslStatus::Active,
        SslStatus::Renewing,
        SslStatus::Failed,
        SslStatus::Expired,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslStatus::PendingValidation => "pending_validation",
            SslStatus::PendingIssuance => "pending_issuance",
            SslStatus::Active => "active",
            SslStatus::Renewing => "renewing",
            SslStatus::Failed => "failed",
            SslStatus::Expired => "expired",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// How a merchant proves they own a domain (either way is enough).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// DNS name of the TXT record to publish (`_tenantgate.<hostname>`).
    pub txt_name: String,
    /// Value the TXT record must hold.
    pub txt_value: String,
    /// Once the domain points at the platform, this URL answers `http_body`.
    pub http_url: String,
    /// The body `http_url` answers.
    pub http_body: String,
}

/// Certificate state of a custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ssl {
    /// Lifecycle status.
    pub status: SslStatus,
    /// Issuer of the served certificate.
    pub issuer: Option<String>,
    /// Expiry of the served certificate, RFC 3339.
    pub not_after: Option<String>,
    /// Why the last issuance or renewal attempt failed, human-readable.
    pub errors: Vec<String>,
}

/// A merchant's own hostname attached to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Domain {
    /// Stable id (`d_` + 16 hex digits).
    pub id: String,
    /// The hostname (A-labels).
    pub hostname: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Lifecycle status.
    pub status: DomainStatus,
    /// How to prove ownership.
    pub verification: Verification,
    /// Certificate state.
    pub ssl: Ssl,
    /// Why the domain is not (or no longer) active, human-readable.
    pub errors: Vec<String>,
    /// Attach time, RFC 3339.
    pub created_at: String,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

/// One audit event: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// When, RFC 3339.
    pub at: String,
    /// Who (e.g. `admin-api`).
    pub actor: String,
    /// What was done, e.g. `tenant.create`.
    pub action: String,
    /// The object's id.
    pub target: String,
    /// Details (JSON text).
    pub detail: String,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items, ordered by id.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// RFC 3339 text of a unix-milliseconds time.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A node of the fleet, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Random per process start.
    pub id: String,
    /// `serve` (proxy and control in one), `proxy` or `control`.
    pub role: String,
    /// The host's name.
    pub name: String,
    /// tenantgate's version.
    pub version: String,
    /// The route-table version it serves (0 for `control`).
    pub route_version: u64,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Its last heartbeat, RFC 3339.
    pub heartbeat_at: String,
    /// Whether that heartbeat is recent enough to count it live.
    pub live: bool,
}
