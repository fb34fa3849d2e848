//! Publisher keys and plugin signatures: ed25519 (RFC 8032) over a plugin version's
//! digest.
//!
//! A signature is over the **version digest** ([`crate::version_digest`]: the
//! manifest and the component together), in a domain-separated message
//! (`tenon-plugin-signature/v1\0` then the digest as `sha256:<hex>`), so a signature
//! over a version can never be taken for a signature over anything else. It travels as
//! a small JSON document, [`SignatureFile`] (`plugin.sig` beside `plugin.toml`; an
//! annotation of the package's OCI manifest), naming the publisher, the key and the
//! digest it signs.
//!
//! Keys: the secret key is a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`, RFC 8410),
//! the form OpenSSL, wasmsign2 and most tools read; the public key is written
//! `ed25519:<base64 of its 32 bytes>`, and a PEM `PUBLIC KEY` (SPKI) is read too. A
//! key's id is the first 16 hex digits of the sha256 of its 32 bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The file beside `plugin.toml` that holds a version's signature.
pub const SIGNATURE_FILE: &str = "plugin.sig";
/// The `format` of a [`SignatureFile`].
pub const SIGNATURE_FORMAT: &str = "tenon-plugin-signature/v1";
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// What every signed message starts with.
const DOMAIN: &[u8] = b"tenon-plugin-signature/v1\0";
/// How a public key is written: `ed25519:<base64>`.
const KEY_PREFIX: &str = "ed25519:";

/// DER of an RFC 8410 Ed25519 private key (PKCS#8 v1, no public key), up to the
/// 32-byte seed that follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an RFC 8410 Ed25519 public key (SubjectPublicKeyInfo), up to its 32 bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a key of a form we read.
    #[error("{0}")]
    Format(String),
    /// The OS gave no randomness.
    #[error("cannot get randomness from the OS: {0}")]
    Random(String),
}

/// A publisher's public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Its id: the first 16 hex digits of the sha256 of its 32 bytes.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `signature` (64 bytes) is this key's signature of `digest`.
    pub fn verifies(&self, digest: &str, signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(&message(digest), &signature).is_ok()
    }

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        pem("PUBLIC KEY", &der)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// `ed25519:<base64>`, or a PEM `PUBLIC KEY`.
    fn from_str(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        let bytes = if let Some(b64) = text.strip_prefix(KEY_PREFIX) {
            B64.decode(b64.trim()).map_err(|e| {
                KeyError::Format(format!(
                    "`{text}`: the key after `ed25519:` is not base64: {e}"
                ))
            })?
        } else if text.starts_with("-----BEGIN PUBLIC KEY-----") {
            let der = unpem(text, "PUBLIC KEY")?;
            der.strip_prefix(SPKI_PREFIX.as_slice())
                .ok_or_else(|| KeyError::Format("the PEM public key is not an Ed25519 key".into()))?
                .to_vec()
        } else {
            return Err(KeyError::Format(format!(
                "`{}` is not a public key: write it `ed25519:<base64>` (as `tenon plugin keygen` prints it) or give a PEM public key",
                shorten(text)
            )));
        };
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError::Format(format!(
                "an ed25519 public key is 32 bytes, this one {}",
                bytes.len()
            ))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::Format("not a valid ed25519 public key".into()))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A publisher's secret key. Its `Debug` shows the key id only.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    /// A new key from the OS's randomness.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SecretKey(SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(key)
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        let text = pem("PRIVATE KEY", &der);
        der.fill(0);
        text
    }

    /// Read a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(text: &str) -> Result<SecretKey, KeyError> {
        let mut der = unpem(text, "PRIVATE KEY")?;
        let seed: Option<[u8; 32]> = der
            .strip_prefix(PKCS8_PREFIX.as_slice())
            .and_then(|seed| seed.try_into().ok());
        der.fill(0);
        let mut seed = seed.ok_or_else(|| {
            KeyError::Format(
                "the PEM private key is not an Ed25519 key in PKCS#8 form (as `tenon plugin keygen` or `openssl genpkey -algorithm ed25519` write it)".into(),
            )
        })?;
        let key = SecretKey(SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(key)
    }

    /// Sign the version `digest` as `publisher`.
    pub fn sign(&self, publisher: &str, digest: &str) -> SignatureFile {
        let signature = self.0.sign(&message(digest));
        let public = self.public();
        SignatureFile {
            format: SIGNATURE_FORMAT.into(),
            publisher: publisher.to_owned(),
            algorithm: ALGORITHM.into(),
            key_id: public.id(),
            key: public.to_string(),
            digest: digest.to_owned(),
            signature: B64.encode(signature.to_bytes()),
        }
    }
}

/// The message a signature is over.
fn message(digest: &str) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(digest.as_bytes());
    message
}

/// A plugin version's signature, as written in `plugin.sig` (JSON):
///
/// ```json
/// {
///   "format": "tenon-plugin-signature/v1",
///   "publisher": "acme",
///   "algorithm": "ed25519",
///   "key_id": "5b1e0c7d9a3f2e41",
///   "key": "ed25519:8R0m...=",
///   "digest": "sha256:3f5a...",
///   "signature": "base64 of 64 bytes"
/// }
/// ```
///
/// The `publisher` is what the signer calls itself; a trust policy names the
/// publisher of a key itself, and trusts nothing a signature says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// [`SIGNATURE_FORMAT`].
    pub format: String,
    /// Who signed, by their own account.
    pub publisher: String,
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// The signing key's id.
    pub key_id: String,
    /// The signing key, `ed25519:<base64>`.
    pub key: String,
    /// The version digest signed, `sha256:<hex>`.
    pub digest: String,
    /// The signature, base64.
    pub signature: String,
}

impl SignatureFile {
    /// Parse a signature document.
    pub fn parse(text: &str) -> Result<SignatureFile, String> {
        let file: SignatureFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.format != SIGNATURE_FORMAT {
            return Err(format!(
                "format `{}` is not `{SIGNATURE_FORMAT}`",
                file.format
            ));
        }
        if file.algorithm != ALGORITHM {
            return Err(format!(
                "algorithm `{}` is not `{ALGORITHM}`",
                file.algorithm
            ));
        }
        Ok(file)
    }

    /// The document, as written to `plugin.sig`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Its key, checked against its key id.
    pub fn public_key(&self) -> Result<PublicKey, String> {
        let key: PublicKey = self.key.parse().map_err(|e: KeyError| e.to_string())?;
        if key.id() != self.key_id {
            return Err(format!(
                "its key id {} is not the id of its key ({})",
                self.key_id,
                key.id()
            ));
        }
        Ok(key)
    }

    /// Whether it is its key's valid signature of its digest.
    pub fn is_valid(&self, key: &PublicKey) -> bool {
        B64.decode(&self.signature)
            .is_ok_and(|bytes| key.verifies(&self.digest, &bytes))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .trim()
        .strip_prefix(&begin)
        .and_then(|rest| rest.trim_end().strip_suffix(&end))
        .ok_or_else(|| KeyError::Format(format!("not a PEM `{label}`")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(b64)
        .map_err(|e| KeyError::Format(format!("the PEM `{label}` is not base64: {e}")))
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn a_signature_verifies_with_its_key_only_and_for_its_digest_only() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let sig = key.sign("acme", DIGEST);
        let public = sig.public_key().unwrap();
        assert_eq!(public, key.public());
        assert!(sig.is_valid(&public));
        assert!(!sig.is_valid(&other.public()));
        let moved = SignatureFile {
            digest: DIGEST.replace('1', "2"),
            ..sig.clone()
        };
        assert!(!moved.is_valid(&public));
        assert_eq!(SignatureFile::parse(&sig.to_json()).unwrap(), sig);
    }

    #[test]
    fn keys_round_trip_through_their_texts() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.public(), key.public());
        let public = key.public();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert_eq!(public.to_pem().parse::<PublicKey>().unwrap(), public);
        assert_eq!(public.id().len(), 16);
        assert!(format!("{key:?}").contains(&public.id()));
        assert!(!format!("{key:?}").contains(&key.to_pem()[30..50]));
        assert!("ed25519:AAAA".parse::<PublicKey>().is_err());
        assert!("rsa:AAAA".parse::<PublicKey>().is_err());
    }

    #[test]
    fn a_key_of_openssl_reads() {
        // `openssl genpkey -algorithm ed25519` (RFC 8410 test vector's seed).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = SecretKey::from_pem(pem).unwrap();
        assert_eq!(
            key.public().to_pem(),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
        );
    }
}
