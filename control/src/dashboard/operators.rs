//! Operator accounts as the `tenantgate operators` command manages them: checked names and
//! passwords, argon2id hashes, audited under `cli`.

use super::session::{check_name, check_password, hash_password};
use crate::store::operators::OperatorInfo;
use crate::{Result, Store};

/// Who the audit trail names for accounts changed from the command line.
pub const CLI_ACTOR: &str = "cli";

/// Add operator `name` with `password` (checked, then hashed; never stored as given).
pub async fn add(store: &Store, name: &str, password: &str) -> Result<()> {
    check_name(name)?;
    check_password(password)?;
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| crate::Error::Internal(format!("hashing the password: {e}")))??;
    store.add_operator(CLI_ACTOR, name, &hash).await
}

/// Every operator.
pub async fn list(store: &Store) -> Result<Vec<OperatorInfo>> {
    store.operators().await
}

/// Remove operator `name`; their sessions end at once.
pub async fn remove(store: &Store, name: &str) -> Result<()> {
    store.remove_operator(CLI_ACTOR, name).await
}
