//! The trust policy: which publishers' keys are trusted for which plugin names, which
//! keys and versions are revoked, and whether a plugin must be signed at all.
//!
//! ```toml
//! [trust]
//! require_signatures = true
//! revoked_keys = ["5b1e0c7d9a3f2e41"]       # key ids, or keys `ed25519:...`
//! revoked_digests = ["sha256:3f5a..."]      # versions, as `tenon status` shows them
//!
//! [[trust.publishers]]
//! name = "acme"
//! key = "ed25519:8R0m..."                   # as `tenon plugin keygen` prints it
//! prefixes = ["acme-"]                      # the plugin names it may sign ("*": any)
//! ```
//!
//! [`TrustPolicy::check`] decides on one version (its manifest's name, its digest and
//! its signature, if any) before anything of it is compiled. A signature present is
//! always checked, required or not: one that does not verify, or is for other files,
//! or by a revoked key, is refused.
//!
//! Without `require_signatures`, an unsigned version is allowed: a version signed by a
//! revoked key is then taken once its `plugin.sig` is deleted, so `revoked_keys` holds
//! only with `require_signatures = true` ([`TrustPolicy::warnings`] says so). A revoked
//! digest is refused either way.

use crate::signing::{PublicKey, SignatureFile};
use serde::Deserialize;
use std::fmt;

/// `[trust]` of `tenon.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    /// Refuse every plugin version that is not signed by a key trusted for its name.
    #[serde(default)]
    pub require_signatures: bool,
    /// The trusted publishers (`[[trust.publishers]]`).
    #[serde(default)]
    pub publishers: Vec<Publisher>,
    /// Keys whose signatures are refused: key ids (16 hex digits) or keys
    /// (`ed25519:...`).
    #[serde(default)]
    pub revoked_keys: Vec<RevokedKey>,
    /// Versions refused whoever signed them, `sha256:...` (the version digest),
    /// read in lower case (as digests are computed), whatever case they are written in.
    #[serde(default, deserialize_with = "lower_case")]
    pub revoked_digests: Vec<String>,
}

/// A list of strings, each in lower case.
fn lower_case<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    Ok(list.into_iter().map(|s| s.to_ascii_lowercase()).collect())
}

/// `[[trust.publishers]]`: a publisher, its key, and the plugin names it may sign.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    /// Its name, shown as the signer, e.g. `"acme"`.
    pub name: String,
    /// Its public key, `ed25519:<base64>`.
    pub key: PublicKey,
    /// The beginnings of the plugin names (the manifest's `name`) it may sign, e.g.
    /// `["acme-"]`; `"*"` for any name.
    pub prefixes: Vec<String>,
}

impl Publisher {
    /// Whether it may sign a plugin named `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| p == "*" || name.starts_with(p.as_str()))
    }
}

/// A revoked key, by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RevokedKey(pub String);

impl TryFrom<String> for RevokedKey {
    type Error = String;

    fn try_from(text: String) -> Result<RevokedKey, String> {
        if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(RevokedKey(text.to_ascii_lowercase()));
        }
        text.parse::<PublicKey>()
            .map(|key| RevokedKey(key.id()))
            .map_err(|_| {
                format!("`{text}` is neither a key id (16 hex digits) nor a key `ed25519:...`")
            })
    }
}

/// Who signed a version, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The publisher: the policy's name for the key when it is trusted, else what the
    /// signature says.
    pub publisher: String,
    /// The key's id.
    pub key_id: String,
    /// Whether the key is trusted for this plugin's name.
    pub trusted: bool,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.trusted {
            write!(f, "{} (key {})", self.publisher, self.key_id)
        } else {
            write!(
                f,
                "\"{}\" (key {}, not trusted for this plugin)",
                self.publisher, self.key_id
            )
        }
    }
}

/// Why a version is refused by the trust policy. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Signatures are required and there is none.
    #[error(
        "`{name}` {digest} is not signed, and [trust] require_signatures = true: sign it with a key trusted for its name (`tenon plugin sign`)"
    )]
    Unsigned {
        /// The plugin's name.
        name: String,
        /// Its version digest.
        digest: String,
    },
    /// The signature document does not parse.
    #[error("{file} is not a signature: {why}")]
    Malformed {
        /// Where it was read.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// The signature is for other files: they changed after signing.
    #[error(
        "the signature is for version {signed}, but the files are {actual}: they were changed after signing (or a deploy is under way)"
    )]
    Tampered {
        /// What was signed.
        signed: String,
        /// What the files are.
        actual: String,
    },
    /// The signature does not verify with its key.
    #[error(
        "the signature by key {key_id} does not verify: it was not made with that key for {digest}"
    )]
    BadSignature {
        /// The key it names.
        key_id: String,
        /// The digest it names.
        digest: String,
    },
    /// Signed by a key no trusted publisher holds.
    #[error(
        "signed by key {key_id} (publisher \"{claimed}\", by its own account), which is not the key of any publisher in [[trust.publishers]]"
    )]
    UntrustedKey {
        /// The key's id.
        key_id: String,
        /// What the signature calls its publisher.
        claimed: String,
    },
    /// Signed by a trusted publisher that may not sign this name.
    #[error(
        "signed by {publisher} (key {key_id}), who is trusted only for plugin names starting with {prefixes}; this plugin is `{name}`"
    )]
    OutsidePrefix {
        /// The publisher (the policy's name for the key).
        publisher: String,
        /// The key's id.
        key_id: String,
        /// The plugin's name.
        name: String,
        /// Its prefixes, listed.
        prefixes: String,
    },
    /// Signed by a revoked key.
    #[error(
        "signed by key {key_id} (publisher \"{publisher}\"), which is revoked ([trust] revoked_keys)"
    )]
    RevokedKey {
        /// The key's id.
        key_id: String,
        /// Who signed, by the policy or by its own account.
        publisher: String,
    },
    /// The version itself is revoked.
    #[error("version {digest} is revoked ([trust] revoked_digests)")]
    RevokedDigest {
        /// The version digest.
        digest: String,
    },
}

impl TrustPolicy {
    /// A policy that requires a signature by `key`, for any name (`--key`); the
    /// signer is shown by the name its signature gives.
    pub fn trusting(key: PublicKey) -> TrustPolicy {
        TrustPolicy {
            require_signatures: true,
            publishers: vec![Publisher {
                name: String::new(),
                key,
                prefixes: vec!["*".into()],
            }],
            ..TrustPolicy::default()
        }
    }

    /// Why the policy itself does not hold together, as (field, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        for p in &self.publishers {
            if p.name.trim().is_empty() {
                return Some(("publishers", "a publisher needs a `name`".into()));
            }
            if p.prefixes.is_empty() || p.prefixes.iter().any(|x| x.is_empty()) {
                return Some((
                    "prefixes",
                    format!(
                        "publisher `{}`: `prefixes` lists the beginnings of the plugin names it may sign, e.g. [\"acme-\"] (\"*\" for any); none may be empty",
                        p.name
                    ),
                ));
            }
        }
        for digest in &self.revoked_digests {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some((
                    "revoked_digests",
                    format!("`{digest}` is not `sha256:` and 64 hex digits"),
                ));
            }
        }
        None
    }

    /// What in the policy does not do what it seems to: `revoked_keys` without
    /// `require_signatures` (deleting a version's `plugin.sig` gets it past them).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.revoked_keys.is_empty() && !self.require_signatures {
            warnings.push(
                "[trust] revoked_keys without require_signatures = true: a version signed by a revoked key is refused, but the same version with its plugin.sig deleted is taken unsigned; set require_signatures = true (revoked_digests hold either way)".to_owned(),
            );
        }
        warnings
    }

    /// Decide on the version `digest` of the plugin named `name` (its manifest's
    /// name), signed by `signature` (the text of its `plugin.sig`, read from `file`)
    /// or not. `Ok(None)`: unsigned, and allowed to be.
    pub fn check(
        &self,
        name: &str,
        digest: &str,
        signature: Option<(&str, &str)>,
    ) -> Result<Option<Signer>, TrustError> {
        if self.revoked_digests.iter().any(|d| d == digest) {
            return Err(TrustError::RevokedDigest {
                digest: digest.to_owned(),
            });
        }
        let Some((file, text)) = signature else {
            return match self.require_signatures {
                true => Err(TrustError::Unsigned {
                    name: name.to_owned(),
                    digest: digest.to_owned(),
                }),
                false => Ok(None),
            };
        };
        let malformed = |why: String| TrustError::Malformed {
            file: file.to_owned(),
            why,
        };
        let sig = SignatureFile::parse(text).map_err(malformed)?;
        let key = sig.public_key().map_err(malformed)?;
        if sig.digest != digest {
            return Err(TrustError::Tampered {
                signed: sig.digest,
                actual: digest.to_owned(),
            });
        }
        if !sig.is_valid(&key) {
            return Err(TrustError::BadSignature {
                key_id: sig.key_id,
                digest: sig.digest,
            });
        }
        let trusted: Vec<&Publisher> = self.publishers.iter().filter(|p| p.key == key).collect();
        if self.revoked_keys.iter().any(|r| r.0 == sig.key_id) {
            return Err(TrustError::RevokedKey {
                publisher: trusted
                    .first()
                    .map_or(sig.publisher.clone(), |p| p.name.clone()),
                key_id: sig.key_id,
            });
        }
        let untrusted = Signer {
            publisher: sig.publisher.clone(),
            key_id: sig.key_id.clone(),
            trusted: false,
        };
        if let Some(p) = trusted.iter().find(|p| p.covers(name)) {
            return Ok(Some(Signer {
                publisher: match p.name.is_empty() {
                    true => sig.publisher,
                    false => p.name.clone(),
                },
                key_id: sig.key_id,
                trusted: true,
            }));
        }
        if !self.require_signatures {
            return Ok(Some(untrusted));
        }
        match trusted.first() {
            None => Err(TrustError::UntrustedKey {
                key_id: sig.key_id,
                claimed: sig.publisher,
            }),
            Some(p) => Err(TrustError::OutsidePrefix {
                publisher: p.name.clone(),
                key_id: sig.key_id,
                name: name.to_owned(),
                prefixes: trusted
                    .iter()
                    .flat_map(|p| &p.prefixes)
                    .map(|x| format!("`{x}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SecretKey;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn policy(acme: &SecretKey) -> TrustPolicy {
        TrustPolicy {
            require_signatures: true,
            publishers: vec![Publisher {
                name: "acme".into(),
                key: acme.public(),
                prefixes: vec!["acme-".into()],
            }],
            ..TrustPolicy::default()
        }
    }

    fn check(
        p: &TrustPolicy,
        name: &str,
        digest: &str,
        sig: Option<&str>,
    ) -> Result<Option<Signer>, TrustError> {
        p.check(name, digest, sig.map(|s| ("plugin.sig", s)))
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let acme = SecretKey::generate().unwrap();
        let mallory = SecretKey::generate().unwrap();
        let p = policy(&acme);
        let good = acme.sign("acme", D1).to_json();
        assert_eq!(
            check(&p, "acme-crm", D1, Some(&good)).unwrap(),
            Some(Signer {
                publisher: "acme".into(),
                key_id: acme.public().id(),
                trusted: true
            })
        );
        assert!(matches!(
            check(&p, "acme-crm", D1, None),
            Err(TrustError::Unsigned { .. })
        ));
        assert!(matches!(
            check(&p, "acme-crm", D2, Some(&good)),
            Err(TrustError::Tampered { .. })
        ));
        assert!(matches!(
            check(&p, "other", D1, Some(&good)),
            Err(TrustError::OutsidePrefix { .. })
        ));
        let theirs = mallory.sign("acme", D1).to_json();
        assert!(matches!(
            check(&p, "acme-crm", D1, Some(&theirs)),
            Err(TrustError::UntrustedKey { .. })
        ));
        // A signature moved onto another key's name does not verify.
        let mut forged = SignatureFile::parse(&theirs).unwrap();
        forged.key = acme.public().to_string();
        forged.key_id = acme.public().id();
        assert!(matches!(
            check(&p, "acme-crm", D1, Some(&forged.to_json())),
            Err(TrustError::BadSignature { .. })
        ));
        assert!(matches!(
            check(&p, "acme-crm", D1, Some("{}")),
            Err(TrustError::Malformed { .. })
        ));
        let revoked = TrustPolicy {
            revoked_keys: vec![RevokedKey::try_from(acme.public().to_string()).unwrap()],
            ..p.clone()
        };
        let err = check(&revoked, "acme-crm", D1, Some(&good)).unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        let revoked = TrustPolicy {
            revoked_digests: vec![D1.into()],
            ..p.clone()
        };
        assert!(matches!(
            check(&revoked, "acme-crm", D1, Some(&good)),
            Err(TrustError::RevokedDigest { .. })
        ));
    }

    #[test]
    fn without_requirement_a_present_signature_is_still_checked() {
        let acme = SecretKey::generate().unwrap();
        let mallory = SecretKey::generate().unwrap();
        let p = TrustPolicy {
            require_signatures: false,
            ..policy(&acme)
        };
        assert_eq!(check(&p, "x", D1, None).unwrap(), None);
        let theirs = mallory.sign("mallory", D1).to_json();
        let signer = check(&p, "x", D1, Some(&theirs)).unwrap().unwrap();
        assert!(!signer.trusted);
        assert!(signer.to_string().contains("not trusted"), "{signer}");
        assert!(matches!(
            check(&p, "x", D2, Some(&theirs)),
            Err(TrustError::Tampered { .. })
        ));
        let any = TrustPolicy::trusting(mallory.public());
        assert!(
            check(&any, "anything", D1, Some(&theirs))
                .unwrap()
                .unwrap()
                .trusted
        );
    }

    #[test]
    fn revoked_digests_in_upper_case_still_match() {
        let acme = SecretKey::generate().unwrap();
        let upper = format!("SHA256:{}", D1["sha256:".len()..].to_ascii_uppercase());
        let mixed = D1.replace("1111", "AAAA");
        let text = format!("revoked_digests = [\"{upper}\", \"{mixed}\"]\n");
        let p: TrustPolicy = toml::from_str(&text).unwrap();
        assert_eq!(p.problem(), None);
        assert_eq!(
            p.revoked_digests,
            [D1.to_owned(), mixed.to_ascii_lowercase()]
        );
        let good = acme.sign("acme", D1).to_json();
        let p = TrustPolicy {
            publishers: policy(&acme).publishers,
            ..p
        };
        assert!(matches!(
            check(&p, "acme-crm", D1, Some(&good)),
            Err(TrustError::RevokedDigest { .. })
        ));
        assert!(matches!(
            check(&p, "acme-crm", D1, None),
            Err(TrustError::RevokedDigest { .. })
        ));
    }

    #[test]
    fn the_policy_reads_from_toml() {
        let key = SecretKey::generate().unwrap().public();
        let text = format!(
            "require_signatures = true\nrevoked_keys = [\"0123456789abcdef\"]\n[[publishers]]\nname = \"acme\"\nkey = \"{key}\"\nprefixes = [\"acme-\"]\n"
        );
        let p: TrustPolicy = toml::from_str(&text).unwrap();
        assert_eq!(p.publishers[0].key, key);
        assert_eq!(p.problem(), None);
        let bad = text.replace(&key.to_string(), "ed25519:nope");
        assert!(toml::from_str::<TrustPolicy>(&bad).is_err());
        assert!(p.warnings().is_empty());
        let lax = text.replace("require_signatures = true", "require_signatures = false");
        let lax: TrustPolicy = toml::from_str(&lax).unwrap();
        assert!(
            lax.warnings()[0].contains("revoked_keys without require_signatures"),
            "{:?}",
            lax.warnings()
        );
        let empty = text.replace("[\"acme-\"]", "[]");
        assert!(
            toml::from_str::<TrustPolicy>(&empty)
                .unwrap()
                .problem()
                .is_some()
        );
    }
}
