//! Publishing packages to and installing them from OCI registries, through the ORAS
//! project's `oci-client` (the distribution API: blobs, manifests, tags).
//!
//! A reference is `oci://host[:port]/namespace/name` with `:tag` or `@sha256:<hex>`.
//! What is pushed is exactly the package's image ([`Package::image`]): its config and
//! component blobs and its manifest's bytes, so the digest a registry answers is the
//! one `tenon plugin pack` computed. A pull checks every blob against its digest and,
//! for a digest pin, the manifest against the pin. Tags: a tag that exists is taken as
//! is; `1` or `1.2` that does not stands for the highest `1.x.y` or `1.2.y` tag
//! (semver, no pre-releases).
//!
//! Transport: https, except to a loopback registry (`127.0.0.0/8`, `[::1]`,
//! `localhost`), which is plain http. Credentials, when the registry wants them, come
//! from `TENON_REGISTRY_USERNAME` and `TENON_REGISTRY_PASSWORD`; without them access is
//! anonymous.

use crate::package::{Descriptor, IMAGE_MANIFEST_MEDIA_TYPE, Package, PackageError};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::fmt;
use std::str::FromStr;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is not one we take.
    #[error("{0}")]
    Reference(String),
    /// The registry refused, or could not be reached.
    #[error("{reference}: {message}")]
    Registry {
        /// What was asked for.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// What the registry served is not a plugin package, or does not hold together.
    #[error("{reference}: {source}")]
    Package {
        /// What was asked for.
        reference: String,
        /// Why.
        source: PackageError,
    },
}

/// `oci://host[:port]/namespace/name(:tag|@sha256:<hex>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// `host[:port]`.
    pub registry: String,
    /// `namespace/name`.
    pub repository: String,
    /// The tag, if one is given.
    pub tag: Option<String>,
    /// The manifest digest pinned, if one is given.
    pub digest: Option<String>,
}

impl FromStr for OciRef {
    type Err = OciError;

    fn from_str(text: &str) -> Result<OciRef, OciError> {
        let bad = |why: &str| {
            OciError::Reference(format!(
                "`{text}`: {why}; write oci://host[:port]/namespace/name:tag or oci://host[:port]/namespace/name@sha256:<hex>"
            ))
        };
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| bad("a registry reference starts with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no repository"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("the registry is not host[:port]"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("a pin is @sha256: and 64 hex digits"));
                }
                (path, Some(digest.to_ascii_lowercase()))
            }
            None => (path, None),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        let repository_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repository_ok {
            return Err(bad(
                "the repository is lower-case letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad("the tag is letters, digits, `.`, `_` and `-`"));
            }
        }
        Ok(OciRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl OciRef {
    /// The same repository, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> OciRef {
        OciRef {
            tag: None,
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    fn reference(&self, tag_or_digest: Option<&str>) -> Reference {
        match (tag_or_digest, &self.digest, &self.tag) {
            (Some(d), _, _) if d.starts_with("sha256:") => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.into())
            }
            (Some(tag), _, _) => {
                Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.into())
            }
            (None, Some(d), _) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (None, None, tag) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    /// Whether the registry is on this machine's loopback (spoken to in plain http).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => self.registry.split(':').next().unwrap_or_default(),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A package pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Where: the tag pushed to.
    pub reference: OciRef,
    /// The image manifest's digest (what `@sha256:` pins).
    pub manifest_digest: String,
}

/// A package pulled.
#[derive(Debug)]
pub struct Pulled {
    /// The package.
    pub package: Package,
    /// The tag it was found at (after semver resolution), if pulled by tag.
    pub tag: Option<String>,
    /// The image manifest's digest.
    pub manifest_digest: String,
}

/// A client for `reference`'s registry, and the credentials for it.
fn client(reference: &OciRef) -> Result<(Client, RegistryAuth), OciError> {
    // ring, as the rest of our TLS; only the first call in a process installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = match reference.is_loopback() {
        true => ClientProtocol::HttpsExcept(vec![reference.registry.clone()]),
        false => ClientProtocol::Https,
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let client = Client::try_from(config).map_err(|e| OciError::Registry {
        reference: reference.to_string(),
        message: format!("cannot set up the client: {e}"),
    })?;
    let auth = match (
        std::env::var("TENON_REGISTRY_USERNAME"),
        std::env::var("TENON_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) if !user.is_empty() => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    };
    Ok((client, auth))
}

fn failed(
    reference: &OciRef,
) -> impl Fn(oci_client::errors::OciDistributionError) -> OciError + '_ {
    move |e| OciError::Registry {
        reference: reference.to_string(),
        message: e.to_string(),
    }
}

/// Push `package` to `target` (a tag; without one, the package's version). Does not
/// check its signature: that is the caller's to decide.
pub async fn push(package: &Package, target: &OciRef) -> Result<Pushed, OciError> {
    if target.digest.is_some() {
        return Err(OciError::Reference(format!(
            "{target}: publish to a tag, not a digest"
        )));
    }
    let tag = target
        .tag
        .clone()
        .unwrap_or_else(|| package.manifest().version.clone());
    let target = OciRef {
        tag: Some(tag.clone()),
        ..target.clone()
    };
    let (client, auth) = client(&target)?;
    let reference = target.reference(Some(&tag));
    let shown = target.clone();
    let fail = failed(&shown);
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(&fail)?;
    let image = package.image();
    for (bytes, digest) in [
        (image.config.clone(), crate::sha256(&image.config)),
        (package.component().to_vec(), package.component_digest()),
    ] {
        if !client
            .blob_exists(&reference, &digest)
            .await
            .map_err(&fail)?
        {
            client
                .push_blob(&reference, bytes, &digest)
                .await
                .map_err(&fail)?;
        }
    }
    let content_type = http::HeaderValue::from_static(IMAGE_MANIFEST_MEDIA_TYPE);
    client
        .push_manifest_raw(&reference, image.manifest.clone(), content_type)
        .await
        .map_err(&fail)?;
    Ok(Pushed {
        reference: target,
        manifest_digest: image.manifest_digest,
    })
}

/// The tags of `source`'s repository.
pub async fn tags(source: &OciRef) -> Result<Vec<String>, OciError> {
    let (client, auth) = client(source)?;
    let response = client
        .list_tags(&source.reference(Some("latest")), &auth, None, None)
        .await
        .map_err(failed(source))?;
    Ok(response.tags)
}

/// The tag `wanted` stands for among `tags`: itself if it exists; else, for `1` or
/// `1.2`, the highest `1.x.y` or `1.2.y` release (semver, no pre-releases).
pub fn resolve_tag(wanted: &str, tags: &[String]) -> Option<String> {
    if tags.iter().any(|t| t == wanted) {
        return Some(wanted.to_owned());
    }
    let parts: Vec<u64> = wanted
        .trim_start_matches('v')
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if parts.is_empty() || parts.len() > 2 {
        return None;
    }
    tags.iter()
        .filter_map(|t| {
            let v = semver::Version::parse(t.trim_start_matches('v')).ok()?;
            let fits = v.pre.is_empty()
                && v.major == parts[0]
                && parts.get(1).is_none_or(|minor| v.minor == *minor);
            fits.then_some((v, t))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t.clone())
}

/// Pull the package at `source` (by tag, resolved as [`resolve_tag`] says, or by
/// digest pin), checking every blob and the pin.
pub async fn pull(source: &OciRef) -> Result<Pulled, OciError> {
    let (client, auth) = client(source)?;
    let fail = failed(source);
    let (reference, tag) = match (&source.digest, &source.tag) {
        (Some(digest), _) => (source.reference(Some(digest)), None),
        (None, tag) => {
            let wanted = tag.clone().unwrap_or_else(|| "latest".into());
            let available = tags(source).await?;
            let tag = resolve_tag(&wanted, &available).ok_or_else(|| OciError::Registry {
                reference: source.to_string(),
                message: format!(
                    "no tag `{wanted}` (nor a release it stands for) among {}",
                    if available.is_empty() {
                        "none".to_owned()
                    } else {
                        available.join(", ")
                    }
                ),
            })?;
            (source.reference(Some(&tag)), Some(tag))
        }
    };
    client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(&fail)?;
    let (manifest, _) = client
        .pull_manifest_raw(&reference, &auth, &[IMAGE_MANIFEST_MEDIA_TYPE])
        .await
        .map_err(&fail)?;
    let manifest_digest = crate::sha256(&manifest);
    if let Some(pin) = &source.digest
        && *pin != manifest_digest
    {
        return Err(OciError::Registry {
            reference: source.to_string(),
            message: format!("the registry served manifest {manifest_digest}, not the pinned one"),
        });
    }
    // Blobs are fetched first (async), then handed to the package's checks.
    let parsed: crate::package::ImageManifest =
        serde_json::from_slice(&manifest).map_err(|e| OciError::Package {
            reference: source.to_string(),
            source: PackageError::Format(format!("not an OCI image manifest: {e}")),
        })?;
    let mut blobs: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    for descriptor in std::iter::once(&parsed.config).chain(parsed.layers.iter().take(1)) {
        let mut bytes = Vec::new();
        client
            .pull_blob(&reference, descriptor.digest.as_str(), &mut bytes)
            .await
            .map_err(&fail)?;
        blobs.push((descriptor.clone(), bytes));
    }
    let package = Package::from_image(&manifest, |wanted| {
        blobs
            .iter()
            .find(|(d, _)| d.digest == wanted.digest)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| PackageError::Format(format!("blob {} was not fetched", wanted.digest)))
    })
    .map_err(|source_error| OciError::Package {
        reference: source.to_string(),
        source: source_error,
    })?;
    Ok(Pulled {
        package,
        tag,
        manifest_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r: OciRef = "oci://127.0.0.1:5000/acme/stamp:1.2".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "acme/stamp");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/acme/stamp:1.2");
        let pin = format!(
            "oci://registry.example.com/acme/stamp@sha256:{}",
            "a".repeat(64)
        );
        let r: OciRef = pin.parse().unwrap();
        assert_eq!(r.tag, None);
        assert!(r.digest.is_some());
        assert!(!r.is_loopback());
        assert!(
            "oci://[::1]:5000/a/b:1"
                .parse::<OciRef>()
                .unwrap()
                .is_loopback()
        );
        for bad in [
            "127.0.0.1:5000/a/b:1",
            "oci://127.0.0.1:5000",
            "oci://127.0.0.1:5000/A/b",
            "oci://127.0.0.1:5000/a/b@sha256:12",
            "oci://127.0.0.1:5000/a/b:-x",
        ] {
            assert!(bad.parse::<OciRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_partial_version_takes_the_highest_release() {
        let tags: Vec<String> = ["1.0.0", "1.2.0", "1.2.3", "1.10.0", "2.0.0-rc.1", "latest"]
            .map(String::from)
            .into();
        assert_eq!(resolve_tag("1.2", &tags).as_deref(), Some("1.2.3"));
        assert_eq!(resolve_tag("1", &tags).as_deref(), Some("1.10.0"));
        assert_eq!(resolve_tag("1.0.0", &tags).as_deref(), Some("1.0.0"));
        assert_eq!(resolve_tag("latest", &tags).as_deref(), Some("latest"));
        assert_eq!(resolve_tag("2", &tags), None);
        assert_eq!(resolve_tag("1.3", &tags), None);
        assert_eq!(resolve_tag("1.2.4", &tags), None);
    }
}
