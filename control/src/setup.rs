//! Turning configuration into a running control plane: the store, the admin token and the
//! encryption key, each from config, environment or a file, and for the zero-configuration
//! single node generated once into the data directory (mode 0600) and reused after.

use std::path::Path;
use std::sync::Arc;

use tenantgate_certs::SealingKey;
use tenantgate_config::{Config, RouteTable};

use crate::api::InputRules;
use crate::store::postgres::Postgres;
use crate::store::sqlite::Sqlite;
use crate::store::Store;
use crate::{Error, Result};

/// Open the configured store (PostgreSQL when `store.url` is set, else the embedded file)
/// and, when `migrate`, bring its schema up to date.
pub async fn open_store(cfg: &Config, migrate: bool) -> Result<Store> {
    let store = match &cfg.store.url {
        Some(url) => {
            if migrate {
                Postgres::migrate(url).await?;
            }
            Store::new(Arc::new(Postgres::new(url, cfg.store.pool_size)?))
        }
        None => Store::new(Arc::new(Sqlite::open(&cfg.store.path)?)),
    };
    Ok(store.with_plans(cfg.plans.clone()))
}

/// The admin token: `admin.token` / `TENANTGATE_ADMIN_TOKEN`, else `admin.token_file`, else
/// `<data dir>/admin.token`, generated if missing. Returns the token and where it came from.
pub fn admin_token(cfg: &Config) -> Result<(String, String)> {
    if let Some(t) = &cfg.admin.token {
        return Ok((t.clone(), "admin.token".into()));
    }
    let path = match &cfg.admin.token_file {
        Some(p) => p.clone(),
        None => cfg.store.data_dir().join("admin.token"),
    };
    let generate = cfg.admin.token_file.is_none();
    let token = read_or_generate(&path, generate)?;
    if token.len() < 16 {
        return Err(Error::invalid(
            "weak_token",
            format!(
                "{}: the admin token must be at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok((token, path.display().to_string()))
}

/// The key sealing private keys: `store.encryption_key` / `TENANTGATE_ENCRYPTION_KEY`, else
/// `store.encryption_key_file`, else (embedded store only) `<data dir>/encryption.key`,
/// generated if missing.
pub fn sealing_key(cfg: &Config) -> Result<Arc<SealingKey>> {
    let hex = if let Some(k) = &cfg.store.encryption_key {
        k.clone()
    } else if let Some(p) = &cfg.store.encryption_key_file {
        read_or_generate(p, false)?
    } else if cfg.store.url.is_none() {
        read_or_generate(&cfg.store.data_dir().join("encryption.key"), true)?
    } else {
        return Err(Error::invalid(
            "missing_encryption_key",
            "store.encryption_key: required with store.url (every node must use the same key)",
        ));
    };
    SealingKey::from_hex(&hex).map(Arc::new).map_err(|e| {
        Error::invalid(
            "invalid_encryption_key",
            format!("store.encryption_key: {e}"),
        )
    })
}

/// The admin API's input rules from `[platform]` and `[admin]`.
pub fn input_rules(cfg: &Config) -> InputRules {
    InputRules {
        platform_domain: cfg.platform.domain.to_ascii_lowercase(),
        reserved: cfg.platform.reserved.clone(),
        upstreams: cfg.upstream_policy(),
    }
}

/// First line of `path`; when it does not exist and `generate`, 64 random hex digits are
/// written there first (owner-only permissions).
fn read_or_generate(path: &Path, generate: bool) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().next().unwrap_or("").trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let value = SealingKey::generate_hex().map_err(|e| Error::Internal(e.to_string()))?;
            write_private(path, &value)?;
            Ok(value)
        }
        Err(e) => Err(Error::Unavailable(format!("{}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, value: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |e: std::io::Error| Error::Unavailable(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    writeln!(f, "{value}").map_err(fail)?;
    f.sync_all().map_err(fail)
}

/// Notes on static routes whose hostnames the store also routes (the stored route wins), for
/// `check-config`. Only a store that already exists is opened: checking creates nothing.
pub async fn static_overlaps(cfg: &Config, table: &RouteTable) -> Vec<String> {
    if cfg.store.url.is_none() && !cfg.store.path.exists() {
        return Vec::new();
    }
    let snapshot = async {
        let store = open_store(cfg, false).await?;
        tokio::time::timeout(std::time::Duration::from_secs(5), store.snapshot())
            .await
            .map_err(|_| Error::Unavailable("timed out".into()))?
    };
    let snap = match snapshot.await {
        Ok(s) => s,
        Err(e) => {
            return vec![format!(
                "store not checked for conflicts with static routes: {e}"
            )]
        }
    };
    let mut notes = Vec::new();
    for (i, r) in table.routes.iter().enumerate() {
        for (j, h) in r.hostnames.iter().enumerate() {
            if let Some(owner) = snap.routes.iter().find(|s| s.hostnames.contains(h)) {
                notes.push(format!(
                    "routes[{i}].hostnames[{j}]: {:?} is also stored for tenant {}; the stored route wins",
                    h.to_display(),
                    owner.id
                ));
            }
        }
    }
    notes
}
