//! API keys and their scopes: who may call what on Tenon's listeners.
//!
//! A key is created with `tenon keys create --scope ... [--name ...]`; its token is
//! shown once and stored only as a sha256 hash (tokens are 256 random bits, so a
//! plain hash is as strong as a slow one). Requests carry it as
//! `Authorization: Bearer <token>`.
//!
//! | scope | allows |
//! |---|---|
//! | `ingest:<source>` | `POST /v1/sources/<source>` |
//! | `ingest:*` | every source |
//! | `admin:read` | reading the admin API: messages, dead letters, events, plugins, audit, keys |
//! | `admin:write` | redrive, discard, replay, reload; creating keys (with scopes it holds) and revoking them |
//! | `plugins:promote` | try, promote, roll back and approve plugin versions |
//!
//! A fresh data directory has no key: `tenon run` then creates an admin key with every
//! scope and writes its token to `<data-dir>/admin.key` (mode 0600), which the CLI
//! reads by default.
//!
//! **Architecture invariant:** a token is never stored, logged or audited; only its
//! key's id is.

use crate::store::{NodeDb, StoreError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// API keys: key id -> encoded [`ApiKey`].
pub(crate) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// The file a fresh `tenon run` writes the admin key's token to, in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Ingest into one source.
    Ingest(String),
    /// Ingest into every source.
    IngestAll,
    /// Call one synchronous API (`/v1/apis/<name>`).
    Api(String),
    /// Call every synchronous API.
    ApiAll,
    /// Read the admin API.
    AdminRead,
    /// Act through the admin API.
    AdminWrite,
    /// Change which plugin versions run.
    PluginsPromote,
}

impl Scope {
    /// Every scope an operator's root key holds.
    pub fn all() -> Vec<Scope> {
        vec![
            Scope::AdminRead,
            Scope::AdminWrite,
            Scope::PluginsPromote,
            Scope::IngestAll,
            Scope::ApiAll,
        ]
    }

    /// Whether holding `self` grants `wanted`.
    pub fn covers(&self, wanted: &Scope) -> bool {
        self == wanted
            || matches!(
                (self, wanted),
                (Scope::IngestAll, Scope::Ingest(_)) | (Scope::ApiAll, Scope::Api(_))
            )
    }
}

/// A scope that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope `{0}`: use ingest:<source>, ingest:*, api:<name>, api:*, admin:read, admin:write or plugins:promote"
)]
pub struct BadScope(pub String);

impl std::str::FromStr for Scope {
    type Err = BadScope;

    fn from_str(s: &str) -> Result<Scope, BadScope> {
        match s {
            "ingest:*" => Ok(Scope::IngestAll),
            "api:*" => Ok(Scope::ApiAll),
            "admin:read" => Ok(Scope::AdminRead),
            "admin:write" => Ok(Scope::AdminWrite),
            "plugins:promote" => Ok(Scope::PluginsPromote),
            _ => {
                let named = |name: &str| {
                    !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                match (s.strip_prefix("ingest:"), s.strip_prefix("api:")) {
                    (Some(source), _) if named(source) => Ok(Scope::Ingest(source.to_owned())),
                    (_, Some(api)) if named(api) => Ok(Scope::Api(api.to_owned())),
                    _ => Err(BadScope(s.to_owned())),
                }
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Ingest(source) => write!(f, "ingest:{source}"),
            Scope::IngestAll => f.write_str("ingest:*"),
            Scope::Api(name) => write!(f, "api:{name}"),
            Scope::ApiAll => f.write_str("api:*"),
            Scope::AdminRead => f.write_str("admin:read"),
            Scope::AdminWrite => f.write_str("admin:write"),
            Scope::PluginsPromote => f.write_str("plugins:promote"),
        }
    }
}

impl schemars::JsonSchema for Scope {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scope".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`admin:read`, `admin:write`, `plugins:promote`, `ingest:*`, `ingest:<source>`, `api:*` or `api:<name>`",
            "pattern": "^(admin:read|admin:write|plugins:promote|ingest:\\*|ingest:[A-Za-z0-9_-]+|api:\\*|api:[A-Za-z0-9_-]+)$"
        })
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A key as stored: never its token, only the token's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKey {
    /// Its id, e.g. `k_3f9a0c21d4e7`: what the audit log and `tenon keys list` show.
    pub id: String,
    /// What it is for, e.g. `partner-acme`.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// The key that created it (none for the first admin key).
    #[serde(default)]
    pub created_by: Option<String>,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    /// sha256 of the token, hex.
    #[serde(default, skip_serializing)]
    pub hash: String,
}

impl ApiKey {
    /// Whether the key holds a scope covering `wanted`.
    pub fn allows(&self, wanted: &Scope) -> bool {
        self.scopes.iter().any(|s| s.covers(wanted))
    }
}

/// Why a key could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key may only hand on scopes it holds itself.
    #[error("key `{key}` cannot create a key with scope `{scope}`, which it does not hold")]
    Escalation {
        /// The creating key.
        key: String,
        /// The scope it lacks.
        scope: Scope,
    },
    /// A key may only revoke keys whose scopes it holds.
    #[error(
        "key `{key}` cannot revoke key `{target}`, which holds scope `{scope}` that it does not"
    )]
    Outranked {
        /// The revoking key.
        key: String,
        /// The key it would revoke.
        target: String,
        /// A scope the target holds and the revoking key does not.
        scope: Scope,
    },
    /// No scopes asked for.
    #[error("a key needs at least one scope")]
    NoScope,
    /// No such key.
    #[error("no key with id `{0}`")]
    Unknown(String),
    /// The random source failed.
    #[error("cannot draw random bytes for the token: {0}")]
    Random(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys, as committed, with an in-memory copy for checking requests.
#[derive(Debug, Clone)]
pub struct Keys {
    storage: NodeDb,
    /// Key id -> key, including revoked ones.
    cache: Arc<RwLock<BTreeMap<String, ApiKey>>>,
}

impl Keys {
    /// Load the keys of a database (creating their table if new).
    pub fn open(storage: NodeDb) -> Result<Keys, StoreError> {
        let txn = storage.db().begin_write()?;
        txn.open_table(KEYS)?;
        txn.commit()?;
        let mut cache = BTreeMap::new();
        {
            let txn = storage.db().begin_read()?;
            let table = txn.open_table(KEYS)?;
            for entry in table.iter()? {
                let (_, value) = entry?;
                let key: StoredKey =
                    rmp_serde::from_slice(value.value()).map_err(StoreError::damaged)?;
                cache.insert(key.key.id.clone(), key.into_key());
            }
        }
        Ok(Keys {
            storage,
            cache: Arc::new(RwLock::new(cache)),
        })
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list(&self) -> Vec<ApiKey> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<ApiKey> = cache.values().cloned().collect();
        keys.sort_by_key(|k| k.created_ms);
        keys
    }

    /// Whether any key is live.
    pub fn any_live(&self) -> bool {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.values().any(|k| k.revoked_ms.is_none())
    }

    /// The live key a token belongs to.
    pub fn verify(&self, token: &str) -> Option<ApiKey> {
        let id = key_id_of(token)?;
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let key = cache.get(id)?;
        // Comparing hashes: timing tells nothing about the token itself.
        (key.revoked_ms.is_none() && key.hash == hash(token)).then(|| key.clone())
    }

    /// Create a key; returns it and its token (shown once, never stored). `by` is the
    /// key creating it: it can only hand on scopes it holds.
    pub fn create(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        by: Option<&ApiKey>,
    ) -> Result<(ApiKey, String), KeyError> {
        if scopes.is_empty() {
            return Err(KeyError::NoScope);
        }
        if let Some(by) = by
            && let Some(scope) = scopes.iter().find(|s| !by.allows(s))
        {
            return Err(KeyError::Escalation {
                key: by.id.clone(),
                scope: scope.clone(),
            });
        }
        let mut random = [0u8; 38];
        getrandom::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
        let id = format!("k_{}", hex::encode(&random[..6]));
        let token = format!("tenon_{id}_{}", hex::encode(&random[6..]));
        let key = ApiKey {
            id: id.clone(),
            name: name.to_owned(),
            scopes,
            created_ms: crate::model::now_ms(),
            created_by: by.map(|k| k.id.clone()),
            revoked_ms: None,
            hash: hash(&token),
        };
        self.store(&key)?;
        Ok((key, token))
    }

    /// Revoke a key: its token stops working at once. `by` may revoke only a key whose
    /// scopes it holds all of (so no key can lock out a more powerful one).
    pub fn revoke(&self, id: &str, by: Option<&ApiKey>) -> Result<ApiKey, KeyError> {
        let mut key = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| KeyError::Unknown(id.to_owned()))?;
        if let Some(by) = by
            && let Some(scope) = key.scopes.iter().find(|s| !by.allows(s))
        {
            return Err(KeyError::Outranked {
                key: by.id.clone(),
                target: key.id,
                scope: scope.clone(),
            });
        }
        if key.revoked_ms.is_none() {
            key.revoked_ms = Some(crate::model::now_ms());
            self.store(&key)?;
        }
        Ok(key)
    }

    fn store(&self, key: &ApiKey) -> Result<(), StoreError> {
        let stored = StoredKey {
            key: key.clone(),
            hash: key.hash.clone(),
        };
        let bytes = rmp_serde::to_vec_named(&stored).map_err(StoreError::damaged)?;
        let txn = self.storage.db().begin_write()?;
        txn.open_table(KEYS)?
            .insert(key.id.as_str(), bytes.as_slice())?;
        txn.commit()?;
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.id.clone(), key.clone());
        Ok(())
    }

    /// On a data directory without a live key: create an admin key with every scope
    /// and write its token to `<data_dir>/admin.key` (readable by its owner only).
    /// Returns the file's path when it did.
    pub fn bootstrap(&self, data_dir: &Path) -> Result<Option<PathBuf>, KeyError> {
        if self.any_live() {
            return Ok(None);
        }
        let (key, token) = self.create("admin", Scope::all(), None)?;
        let path = data_dir.join(ADMIN_KEY_FILE);
        write_private(&path, &format!("{token}\n")).map_err(|e| {
            KeyError::Store(StoreError::CommitFailed(format!(
                "cannot write {}: {e}",
                path.display()
            )))
        })?;
        tracing::info!(key = %key.id, file = %path.display(), "no API key was configured: created an admin key");
        Ok(Some(path))
    }
}

/// The stored form: the key with its hash (which the API never shows).
#[derive(Serialize, Deserialize)]
struct StoredKey {
    key: ApiKey,
    hash: String,
}

impl StoredKey {
    fn into_key(self) -> ApiKey {
        ApiKey {
            hash: self.hash,
            ..self.key
        }
    }
}

/// The key id inside a token `tenon_<id>_<secret>`.
fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("tenon_")?;
    let (id, secret) = rest.rsplit_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Write `text` to a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::open(NodeDb::open(dir.path()).unwrap()).unwrap();
        (dir, keys)
    }

    #[test]
    fn scopes_parse_print_and_cover() {
        for text in [
            "ingest:cpq-source",
            "ingest:*",
            "api:*",
            "api:validate-quote",
            "admin:read",
            "admin:write",
            "plugins:promote",
        ] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in ["admin", "ingest:", "ingest:a/b", "root", "admin:*"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
        let all: Scope = "ingest:*".parse().unwrap();
        assert!(all.covers(&"ingest:stripe".parse().unwrap()));
        let one: Scope = "ingest:cpq".parse().unwrap();
        assert!(!one.covers(&"ingest:stripe".parse().unwrap()));
        assert!(!one.covers(&Scope::IngestAll));
    }

    #[test]
    fn a_token_verifies_until_revoked_and_is_never_stored() {
        let (dir, keys) = keys();
        let (key, token) = keys
            .create("partner", vec![Scope::Ingest("cpq".into())], None)
            .unwrap();
        assert!(token.starts_with(&format!("tenon_{}_", key.id)));
        assert_eq!(keys.verify(&token).unwrap().id, key.id);
        assert!(keys.verify(&format!("{token}x")).is_none());
        assert!(keys.verify("tenon_k_000000000000_00").is_none());
        assert!(keys.verify("garbage").is_none());
        // Reopened from the database: the hash, never the token.
        let reopened = Keys::open(keys.storage.clone()).unwrap();
        assert_eq!(reopened.verify(&token).unwrap().id, key.id);
        let db = std::fs::read(dir.path().join("tenon.redb")).unwrap();
        let secret = token.rsplit('_').next().unwrap();
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the token is in the database"
        );
        keys.revoke(&key.id, None).unwrap();
        assert!(keys.verify(&token).is_none(), "revoked");
        assert!(reopened.verify(&token).is_some(), "another copy's cache");
        assert!(
            Keys::open(keys.storage.clone())
                .unwrap()
                .verify(&token)
                .is_none()
        );
    }

    #[test]
    fn a_key_hands_on_only_scopes_it_holds() {
        let (_dir, keys) = keys();
        let (admin, _) = keys
            .create("ops", vec![Scope::AdminRead, Scope::AdminWrite], None)
            .unwrap();
        let err = keys
            .create("x", vec![Scope::PluginsPromote], Some(&admin))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "key `{}` cannot create a key with scope `plugins:promote`, which it does not hold",
                admin.id
            )
        );
        let (reader, _) = keys
            .create("reader", vec![Scope::AdminRead], Some(&admin))
            .unwrap();
        assert_eq!(reader.created_by.as_deref(), Some(admin.id.as_str()));
        assert!(matches!(
            keys.create("none", vec![], Some(&admin)),
            Err(KeyError::NoScope)
        ));
        // Nor can it revoke a key that holds more than it does.
        let (root, _) = keys.create("root", Scope::all(), None).unwrap();
        assert!(matches!(
            keys.revoke(&root.id, Some(&admin)),
            Err(KeyError::Outranked { .. })
        ));
        keys.revoke(&reader.id, Some(&admin)).unwrap();
    }

    #[test]
    fn bootstrap_writes_a_private_admin_key_once() {
        let (dir, keys) = keys();
        let path = keys.bootstrap(dir.path()).unwrap().unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        let key = keys.verify(token.trim()).unwrap();
        assert_eq!(key.scopes, Scope::all());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keys.bootstrap(dir.path()).unwrap().is_none(), "once");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
