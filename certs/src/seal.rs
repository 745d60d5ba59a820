//! Encryption of private keys at rest (AES-256-GCM, ring). The store and the proxies'
//! snapshot files only ever hold sealed keys; a node opens them with the key from its config.
//!
//! Sealed format: `[1] || nonce (12 bytes) || ciphertext || tag (16 bytes)`. The leading
//! version byte lets the format change without ambiguity.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

const VERSION: u8 = 1;

/// A 256-bit key that seals and opens private keys.
pub struct SealingKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A key from 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<SealingKey> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(Error::BadKey(format!(
                "must be 64 hex digits, got {} characters",
                hex.len()
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::BadKey("must be 64 hex digits".into()))?;
        }
        Self::from_bytes(&bytes)
    }

    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SealingKey> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::BadKey("rejected by AES-256-GCM".into()))?;
        Ok(SealingKey {
            key: LessSafeKey::new(key),
        })
    }

    /// 64 fresh random hex digits, for a generated key file.
    pub fn generate_hex() -> Result<String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::BadKey("no system randomness".into()))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Encrypt `plain` under a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::BadKey("no system randomness".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .map_err(|_| Error::Unseal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypt what [`SealingKey::seal`] produced.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let [VERSION, rest @ ..] = sealed else {
            return Err(Error::Unseal);
        };
        if rest.len() < NONCE_LEN + 16 {
            return Err(Error::Unseal);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Unseal)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .map_err(|_| Error::Unseal)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_the_wrong_key_or_tampering() {
        let k = SealingKey::from_hex(&SealingKey::generate_hex().expect("hex")).expect("key");
        let sealed = k.seal(b"-----BEGIN PRIVATE KEY-----").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(
            k.open(&sealed).expect("open"),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let other = SealingKey::from_hex(&"ab".repeat(32)).expect("key");
        assert!(matches!(other.open(&sealed), Err(Error::Unseal)));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open(&bad).is_err());
        assert!(k.open(&[]).is_err());
        assert!(SealingKey::from_hex("abc").is_err());
        assert!(SealingKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
