//! Operators' passwords, sign-in sessions, CSRF tokens and the slowing of failed sign-ins.
//!
//! Invariants: a password is stored only as an argon2id PHC string; a session cookie is 32
//! random bytes (hex), HttpOnly, SameSite=Strict, Secure when the page came over TLS, and
//! the store keeps only its SHA-256; each session has its own CSRF token, compared in
//! constant time. After [`FREE_FAILURES`] failed sign-ins for one name or from one client
//! address, each further attempt must wait twice as long as the one before (up to
//! [`MAX_WAIT`]) and is refused without checking the password until then.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use http::HeaderMap;
use ring::rand::SecureRandom;

use crate::store::operators::{Session, SessionLimits};
use crate::{Error, Result, Store};

/// Name of the session cookie.
pub const COOKIE: &str = "tenantgate_session";

/// Failed sign-ins allowed before attempts are slowed.
pub const FREE_FAILURES: u32 = 5;

/// The first wait once slowed (then doubling): longer than a run of argon2 verifications on
/// a busy machine, so the wait cannot lapse while the failures are still being checked.
pub const FIRST_WAIT: Duration = Duration::from_secs(5);

/// The longest wait between attempts once slowed.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// Names the system writes audit events under; no operator may take one.
const RESERVED_NAMES: [&str; 6] = [
    "admin-api",
    "provisioner",
    "domains",
    "reconciler",
    "cli",
    "system",
];

/// A valid operator name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(Error::invalid(
            "invalid_operator",
            format!("operator name {name:?}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(Error::invalid(
            "invalid_operator",
            format!("operator name {name:?} is reserved for the system's own audit entries"),
        ));
    }
    Ok(())
}

/// A password an operator may have: 12-1024 characters.
pub fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if !(12..=1024).contains(&n) {
        return Err(Error::invalid(
            "invalid_password",
            format!("the password has {n} characters: use 12 to 1024"),
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| Error::Internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing the password: {e}")))
}

/// Whether `password` matches the PHC string `stored`.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A PHC string no password matches, checked when the name is unknown so that an unknown
/// name costs as much time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password of no operator").unwrap_or_default())
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 (hex) of a cookie value: how the store keys sessions.
pub fn cookie_hash(value: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref())
}

/// A new session of `operator`: the cookie value to set and the session.
pub async fn start(store: &Store, operator: &str) -> Result<(String, Session)> {
    let cookie = hex(&random_bytes::<32>()?);
    let csrf = hex(&random_bytes::<32>()?);
    store
        .create_session(operator, &cookie_hash(&cookie), &csrf)
        .await?;
    Ok((
        cookie,
        Session {
            operator: operator.to_owned(),
            csrf,
        },
    ))
}

/// The session cookie's value in `headers`, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The live session whose cookie `headers` carry.
pub async fn of_request(
    store: &Store,
    headers: &HeaderMap,
    limits: SessionLimits,
) -> Result<Option<Session>> {
    match cookie_value(headers) {
        Some(v) => store.session(&cookie_hash(v), limits).await,
        None => Ok(None),
    }
}

/// The `Set-Cookie` value that sets `value` (`None`: clears the cookie).
pub fn set_cookie(value: Option<&str>, secure: bool, limits: SessionLimits) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            limits.absolute_ms / 1000
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Equal tokens, compared in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Counts of failed sign-ins per name and per client address.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<Key, Failures>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Client(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Entries kept at most; beyond, the oldest half is forgotten (a flood of names cannot
/// grow memory without bound).
const MAX_ENTRIES: usize = 10_000;

impl Failures {
    fn wait(&self, now: Instant) -> Duration {
        if self.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let exp = (self.count - FREE_FAILURES).min(10);
        let need = (FIRST_WAIT * (1u32 << exp)).min(MAX_WAIT);
        need.saturating_sub(now.saturating_duration_since(self.last))
    }
}

fn keys(name: &str, client: Option<IpAddr>) -> Vec<Key> {
    let mut k = vec![Key::Name(name.to_owned())];
    k.extend(client.map(Key::Client));
    k
}

impl Throttle {
    /// How long an attempt for `name` from `client` must still wait (zero: go ahead).
    pub fn wait(&self, name: &str, client: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys(name, client)
            .iter()
            .filter_map(|k| map.get(k))
            .map(|f| f.wait(now))
            .max()
            .unwrap_or_default()
    }

    /// Count a failed attempt.
    pub fn failed(&self, name: &str, client: Option<IpAddr>) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = map.values().map(|f| f.last).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, f| f.last > cut);
        }
        for k in keys(name, client) {
            let f = map.entry(k).or_insert(Failures {
                count: 0,
                last: now,
            });
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// Forget the failures of `name` and `client` after a successful sign-in.
    pub fn succeeded(&self, name: &str, client: Option<IpAddr>) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys(name, client) {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse battery!", &h));
        assert!(!verify_password("anything", decoy_hash()));
        assert!(!verify_password("anything", "not a phc string"));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("ops.team-1").is_ok());
        for bad in ["", "Alice", "-x", "a b", "admin-api", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let v = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("a=1; {COOKIE}={v}; b=2").parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), Some(v.as_str()));
        h.insert(
            http::header::COOKIE,
            format!("{COOKIE}=short").parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn failures_slow_down_by_name_and_by_client() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("alice", Some(ip));
        }
        assert_eq!(t.wait("alice", Some(ip)), Duration::ZERO);
        t.failed("alice", Some(ip));
        assert!(t.wait("alice", None) > Duration::ZERO, "by name");
        assert!(
            t.wait("bob", Some(ip)) > Duration::ZERO,
            "by client address"
        );
        assert_eq!(
            t.wait("bob", Some("192.0.2.2".parse().unwrap())),
            Duration::ZERO
        );
        t.succeeded("alice", Some(ip));
        assert_eq!(t.wait("alice", Some(ip)), Duration::ZERO);
    }
}
