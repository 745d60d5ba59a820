//! Certificates of tenantgate: PEM parsing and checks, an in-memory store keyed by hostname,
//! the rustls `ResolvesServerCert` the TLS listener asks during every handshake, the HTTP-01
//! challenge answers, and ACME issuance.
//!
//! Invariants: the resolver never blocks and never allocates on the lookup path; it answers an
//! exact SAN first, then a one-label wildcard SAN, then the configured default, and otherwise
//! refuses the handshake. It never falls back to a certificate that names another hostname.
//! Each change (a whole set, or a few certificates changed in place) is published as one new
//! index (`ArcSwap`), so a handshake sees either the old or the new set, never a mix.

#![deny(clippy::unwrap_used)]

pub mod acme;
pub mod challenge;
mod pem;
pub mod seal;
mod store;

pub use challenge::ChallengeStore;
pub use pem::{generate_self_signed, parse_pem, ParsedCertificate};
pub use seal::SealingKey;
pub use store::{CertificateStore, SniResolver};

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chain has no certificate.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The key file has no private key.
    #[error("no PEM private key found (PKCS#8, PKCS#1 or SEC1 expected)")]
    NoPrivateKey,
    /// PEM or DER could not be decoded.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// The key type is not supported by the TLS stack.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The leaf certificate has expired.
    #[error("the certificate expired at {0} (unix time)")]
    Expired(i64),
    /// The leaf has no DNS names to serve.
    #[error("the certificate has no DNS subjectAltName to serve")]
    NoNames,
    /// Certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// A sealed private key could not be opened (wrong encryption key, or corrupted).
    #[error("cannot decrypt a stored private key: wrong encryption key or corrupted data")]
    Unseal,
    /// The encryption key is malformed.
    #[error("encryption key: {0}")]
    BadKey(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
