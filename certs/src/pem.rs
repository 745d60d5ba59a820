//! PEM chain and key parsing with the checks an operator expects before a certificate is
//! served: the chain parses, the key matches the leaf, the leaf is not expired, and the names
//! it may serve come from its DNS subjectAltNames (lowercased; `*.x` kept as a wildcard).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tenantgate_config::HostPattern;

use crate::{Error, Result};

/// A certificate ready to serve, with what the store needs to index and report it.
#[derive(Clone)]
pub struct ParsedCertificate {
    /// Chain and signing key for rustls.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName extension.
    pub names: Vec<HostPattern>,
    /// Leaf expiry, unix seconds.
    pub not_after: i64,
    /// The leaf's issuer distinguished name, for reports.
    pub issuer: String,
}

impl std::fmt::Debug for ParsedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedCertificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Parse a PEM chain (leaf first) and a PEM private key, and check them.
pub fn parse_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCertificate> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Decode(e.to_string()))?;
    let leaf = chain.first().ok_or(Error::NoCertificate)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Error::Decode(e.to_string()))?
        .ok_or(Error::NoPrivateKey)?;

    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Decode(format!("leaf certificate: {e}")))?;
    let not_after = x509.validity().not_after.timestamp();
    let issuer = x509.issuer().to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after < now {
        return Err(Error::Expired(not_after));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                if let Ok(p) = HostPattern::parse(n) {
                    if !names.contains(&p) {
                        names.push(p);
                    }
                }
            }
        }
    }
    if names.is_empty() {
        return Err(Error::NoNames);
    }

    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| Error::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| Error::KeyMismatch)?;
    Ok(ParsedCertificate {
        key: Arc::new(certified),
        names,
        not_after,
        issuer,
    })
}

/// Write a self-signed certificate and key for `names` to the two paths (mode 0600 for the
/// key). Used by the quickstart so `tenantgate serve` has TLS on first start.
pub fn generate_self_signed(names: &[String], cert_file: &Path, key_file: &Path) -> Result<()> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tenantgate quickstart");
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Generate(e.to_string()))?;
    for p in [cert_file, key_file] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    write_private(key_file, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_file, cert.pem()).map_err(|source| Error::Io {
        path: cert_file.to_owned(),
        source,
    })
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_names_from_sans() {
        let (c, k) = pair(&["Shop.test", "*.shop.test"]);
        let p = parse_pem(c.as_bytes(), k.as_bytes()).expect("parses");
        assert_eq!(
            p.names,
            vec![
                HostPattern::Exact("shop.test".into()),
                HostPattern::Wildcard("shop.test".into())
            ]
        );
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (c, _) = pair(&["a.test"]);
        let (_, k) = pair(&["a.test"]);
        assert!(matches!(
            parse_pem(c.as_bytes(), k.as_bytes()),
            Err(Error::KeyMismatch)
        ));
    }

    #[test]
    fn refuses_garbage_and_missing_parts() {
        let (c, k) = pair(&["a.test"]);
        assert!(matches!(
            parse_pem(b"", k.as_bytes()),
            Err(Error::NoCertificate)
        ));
        assert!(matches!(
            parse_pem(c.as_bytes(), b""),
            Err(Error::NoPrivateKey)
        ));
    }

    #[test]
    fn refuses_expired() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["old.test".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        assert!(matches!(
            parse_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()),
            Err(Error::Expired(_))
        ));
    }
}
