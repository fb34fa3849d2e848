//! Publishing packages to and installing them from OCI registries, through the ORAS
//! project's `oci-client` (the distribution API: blobs, manifests, tags).
//!
//! A reference is `oci://host[:port]/namespace/name` with `:tag` or `@sha256:<hex>`.
//! What is pushed is exactly the package's image ([`Package::image`]): its config and
//! component blobs and its manifest's bytes, so the digest a registry answers is the
//! one `tenon plugin pack` computed. A pull checks every blob against its digest and,
//! for a digest pin, the manifest against the pin. Tags: `1` or `1.2` stands for the
//! highest `1.x.y` or `1.2.y` release among all the repository's tags (every page of
//! the list; semver, no pre-releases), even where a tag `1.2` exists; any other tag is
//! taken as is; no tag at all is the tag `latest`, as it is (whatever was pushed there
//! last).
//!
//! A pull is bounded: the image manifest is read up to [`MAX_MANIFEST_BYTES`], a blob
//! is fetched only when the sizes its manifest declares fit a package
//! ([`MAX_PACKAGE_BYTES`]) and is cut off past its declared size, and the whole pull
//! has [`PULL_DEADLINE`]. oci-client authenticates (the distribution spec's token
//! service); the reads are made here, where they can be bounded.
//!
//! Transport: https, except to a loopback registry (`127.0.0.0/8`, `[::1]`,
//! `localhost`), which is plain http. Credentials, when the registry wants them, come
//! from `TENON_REGISTRY_USERNAME` and `TENON_REGISTRY_PASSWORD`; without them access is
//! anonymous.

use crate::package::{
    Descriptor, IMAGE_MANIFEST_MEDIA_TYPE, MAX_PACKAGE_BYTES, Package, PackageError,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
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

/// Largest image manifest a pull reads: 4 MiB (a plugin's is a few KiB: its
/// `plugin.toml` and signature ride in it as annotations).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest page of a tag list a pull reads: 4 MiB.
pub const MAX_TAG_PAGE_BYTES: u64 = 4 << 20;
/// Most pages of a tag list followed.
pub const MAX_TAG_PAGES: usize = 1000;
/// Longest a whole pull may take, from the first request to the last byte: 10 minutes.
pub const PULL_DEADLINE: Duration = Duration::from_secs(600);

/// What a pull reads at most, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The image manifest, in bytes ([`MAX_MANIFEST_BYTES`]).
    pub manifest_bytes: u64,
    /// The package's blobs together (its config and its component), in bytes
    /// ([`MAX_PACKAGE_BYTES`]): a descriptor that declares more is not fetched, and a
    /// blob that streams past the size its descriptor declares is cut off.
    pub package_bytes: u64,
    /// The whole pull ([`PULL_DEADLINE`]).
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            manifest_bytes: MAX_MANIFEST_BYTES,
            package_bytes: MAX_PACKAGE_BYTES,
            deadline: PULL_DEADLINE,
        }
    }
}

/// Reading from one repository of a registry: oci-client does the authentication (the
/// token dance of the distribution spec); the reads themselves are bounded here, which
/// oci-client's are not (they read a whole body into memory, however long).
struct Reader<'a> {
    source: &'a OciRef,
    http: reqwest::Client,
    /// `http[s]://host[:port]`.
    origin: String,
    /// The repository's path in URLs.
    repository: String,
    /// A bearer token from the registry's token service, if it wants one.
    token: Option<String>,
    auth: RegistryAuth,
}

impl<'a> Reader<'a> {
    async fn new(source: &'a OciRef) -> Result<Reader<'a>, OciError> {
        let (client, auth) = client(source)?;
        let reference = source.reference(Some("latest"));
        let token = client
            .auth(&reference, &auth, RegistryOperation::Pull)
            .await
            .map_err(failed(source))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("tenon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Registry {
                reference: source.to_string(),
                message: format!("cannot set up the client: {e}"),
            })?;
        let scheme = match source.is_loopback() {
            true => "http",
            false => "https",
        };
        Ok(Reader {
            source,
            http,
            origin: format!("{scheme}://{}", reference.resolve_registry()),
            repository: reference.repository().to_owned(),
            token,
            auth,
        })
    }

    fn error(&self, message: String) -> OciError {
        OciError::Registry {
            reference: self.source.to_string(),
            message,
        }
    }

    /// `GET` `path` (from the origin), at most `cap` bytes of body: its body and
    /// headers. A body longer than `cap`, by its `Content-Length` or as it streams, is
    /// refused there.
    async fn get(
        &self,
        path: &str,
        accept: &str,
        cap: u64,
        what: &str,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), OciError> {
        let url = format!("{}{path}", self.origin);
        let mut request = self.http.get(&url).header(reqwest::header::ACCEPT, accept);
        request = match (&self.token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| self.error(format!("{what}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            // What the registry says, within reason.
            let body = read_capped(&mut response, 4096)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            return Err(self.error(format!("{what}: {status} {}", body.trim())));
        }
        if let Some(length) = response.content_length()
            && length > cap
        {
            return Err(self.error(format!(
                "{what} is {length} bytes, more than the {cap} read: not fetched"
            )));
        }
        let headers = response.headers().clone();
        let body = read_capped(&mut response, cap)
            .await
            .map_err(|e| self.error(format!("{what}: {e}")))?
            .ok_or_else(|| self.error(format!("{what}: longer than the {cap} bytes read")))?;
        Ok((body, headers))
    }

    /// The image manifest at `tag_or_digest`.
    async fn manifest(&self, tag_or_digest: &str, cap: u64) -> Result<Vec<u8>, OciError> {
        let path = format!("/v2/{}/manifests/{tag_or_digest}", self.repository);
        let (body, headers) = self
            .get(&path, IMAGE_MANIFEST_MEDIA_TYPE, cap, "the image manifest")
            .await?;
        // A registry says which manifest it serves: it must be what it served.
        if let Some(said) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
            && *said != crate::sha256(&body)
        {
            return Err(self.error(format!(
                "the registry served manifest {} as {said}",
                crate::sha256(&body)
            )));
        }
        Ok(body)
    }

    /// The blob `descriptor` names, at most its declared size.
    async fn blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, OciError> {
        let path = format!("/v2/{}/blobs/{}", self.repository, descriptor.digest);
        let what = format!("blob {}", descriptor.digest);
        let (bytes, _) = self
            .get(&path, "application/octet-stream", descriptor.size, &what)
            .await?;
        Ok(bytes)
    }

    /// Every tag of the repository, page after page (the `Link` header's `rel="next"`).
    async fn tags(&self) -> Result<Vec<String>, OciError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut all = Vec::new();
        let mut next = Some(format!("/v2/{}/tags/list", self.repository));
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(self.error(format!(
                    "the tag list runs past {MAX_TAG_PAGES} pages: pin a version or a digest"
                )));
            }
            let (body, headers) = self
                .get(
                    &path,
                    "application/json",
                    MAX_TAG_PAGE_BYTES,
                    "the tag list",
                )
                .await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.error(format!("the tag list: {e}")))?;
            all.extend(page.tags.unwrap_or_default());
            next = match headers.get(reqwest::header::LINK).map(|v| v.to_str()) {
                None => None,
                Some(Ok(link)) => next_page(link, &self.origin)
                    .map_err(|why| self.error(format!("the tag list: {why}")))?
                    .filter(|n| *n != path),
                Some(Err(_)) => {
                    return Err(self.error("the tag list: a Link header that is not text".into()));
                }
            };
        }
        Ok(all)
    }
}

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a registry may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The body of `response`, if it is at most `cap` bytes (`None` when it is longer).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The path of the next page a `Link` header names (`<...>; rel="next"`), if any: a
/// path on the registry itself (a page elsewhere is refused: the credentials are for
/// this registry).
fn next_page(link: &str, origin: &str) -> Result<Option<String>, String> {
    for part in link.split(',') {
        let mut pieces = part.split(';');
        let target = pieces.next().unwrap_or_default().trim();
        let is_next = pieces.any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            continue;
        }
        let target = target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .ok_or_else(|| format!("`{link}` is not a Link header"))?;
        if target.starts_with('/') && !target.starts_with("//") {
            return Ok(Some(target.to_owned()));
        }
        return match target.strip_prefix(origin) {
            Some(path) if path.starts_with('/') => Ok(Some(path.to_owned())),
            _ => Err(format!("its next page `{target}` is on another server")),
        };
    }
    Ok(None)
}

/// The tags of `source`'s repository, all of them (every page).
pub async fn tags(source: &OciRef) -> Result<Vec<String>, OciError> {
    Reader::new(source).await?.tags().await
}

/// `1` or `1.2` (a leading `v` allowed) as its numbers; `None` for anything else.
fn partial_version(wanted: &str) -> Option<Vec<u64>> {
    let parts: Vec<u64> = wanted
        .strip_prefix('v')
        .unwrap_or(wanted)
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (!parts.is_empty() && parts.len() <= 2).then_some(parts)
}

/// The tag `wanted` stands for among `tags`. A partial version, `1` or `1.2`, stands
/// for the highest `1.x.y` or `1.2.y` release among them (semver, no pre-releases),
/// even where a tag `1.2` exists (a tag that moves is not a version); only when no
/// release fits is a tag by that very name taken. Anything else (`1.2.3`, `latest`,
/// `stable`) is taken as is, if it exists.
pub fn resolve_tag(wanted: &str, tags: &[String]) -> Option<String> {
    let exact = tags.iter().any(|t| t == wanted).then(|| wanted.to_owned());
    let Some(parts) = partial_version(wanted) else {
        return exact;
    };
    tags.iter()
        .filter_map(|t| {
            let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok()?;
            let fits = v.pre.is_empty()
                && v.major == parts[0]
                && parts.get(1).is_none_or(|minor| v.minor == *minor);
            fits.then_some((v, t))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t.clone())
        .or(exact)
}

/// Pull the package at `source` (by tag, resolved as [`resolve_tag`] says, or by
/// digest pin), checking every blob and the pin, within the [`Limits`]' defaults.
/// Without a tag or a pin, the tag `latest` is pulled, as it is.
pub async fn pull(source: &OciRef) -> Result<Pulled, OciError> {
    pull_within(source, &Limits::default()).await
}

/// [`pull`], within `limits`.
pub async fn pull_within(source: &OciRef, limits: &Limits) -> Result<Pulled, OciError> {
    tokio::time::timeout(limits.deadline, pull_unbounded(source, limits))
        .await
        .unwrap_or_else(|_| {
            Err(OciError::Registry {
                reference: source.to_string(),
                message: format!(
                    "the pull did not finish within {} s: nothing installed",
                    limits.deadline.as_secs_f64()
                ),
            })
        })
}

async fn pull_unbounded(source: &OciRef, limits: &Limits) -> Result<Pulled, OciError> {
    let reader = Reader::new(source).await?;
    let (at, tag) = match (&source.digest, &source.tag) {
        (Some(digest), _) => (digest.clone(), None),
        (None, tag) => {
            let wanted = tag.clone().unwrap_or_else(|| "latest".into());
            match partial_version(&wanted) {
                // Only a partial version needs the list: any other tag is asked for.
                None => (wanted.clone(), Some(wanted)),
                Some(_) => {
                    let available = reader.tags().await?;
                    let tag = resolve_tag(&wanted, &available).ok_or_else(|| {
                        reader.error(format!(
                            "no release `{wanted}` stands for (nor a tag `{wanted}`) among {} tags",
                            available.len()
                        ))
                    })?;
                    (tag.clone(), Some(tag))
                }
            }
        }
    };
    let manifest = reader.manifest(&at, limits.manifest_bytes).await?;
    let manifest_digest = crate::sha256(&manifest);
    if let Some(pin) = &source.digest
        && *pin != manifest_digest
    {
        return Err(reader.error(format!(
            "the registry served manifest {manifest_digest}, not the pinned one"
        )));
    }
    let package_error = |source_error| OciError::Package {
        reference: source.to_string(),
        source: source_error,
    };
    let parsed: crate::package::ImageManifest = serde_json::from_slice(&manifest).map_err(|e| {
        package_error(PackageError::Format(format!(
            "not an OCI image manifest: {e}"
        )))
    })?;
    // What the manifest declares is checked before anything is fetched.
    let wanted: Vec<&Descriptor> = std::iter::once(&parsed.config)
        .chain(parsed.layers.iter().take(1))
        .collect();
    let declared = wanted
        .iter()
        .try_fold(0u64, |sum, d| sum.checked_add(d.size))
        .unwrap_or(u64::MAX);
    if declared > limits.package_bytes {
        return Err(package_error(PackageError::Format(format!(
            "its blobs declare {declared} bytes, more than a package's {} MiB: not fetched",
            limits.package_bytes >> 20
        ))));
    }
    let mut blobs: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    for descriptor in wanted {
        let bytes = reader.blob(descriptor).await?;
        blobs.push((descriptor.clone(), bytes));
    }
    let package = Package::from_image(&manifest, |wanted| {
        blobs
            .iter()
            .find(|(d, _)| d.digest == wanted.digest)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| PackageError::Format(format!("blob {} was not fetched", wanted.digest)))
    })
    .map_err(package_error)?;
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
        let tags: Vec<String> = [
            "1",
            "1.2",
            "1.0.0",
            "1.2.0",
            "1.2.3",
            "1.10.0",
            "2.0.0-rc.1",
            "latest",
            "3.1",
        ]
        .map(String::from)
        .into();
        // Floating tags `1` and `1.2` exist, and lose to the releases they stand for.
        assert_eq!(resolve_tag("1.2", &tags).as_deref(), Some("1.2.3"));
        assert_eq!(resolve_tag("1", &tags).as_deref(), Some("1.10.0"));
        assert_eq!(resolve_tag("v1.2", &tags).as_deref(), Some("1.2.3"));
        assert_eq!(resolve_tag("1.0.0", &tags).as_deref(), Some("1.0.0"));
        assert_eq!(resolve_tag("latest", &tags).as_deref(), Some("latest"));
        assert_eq!(resolve_tag("2", &tags), None);
        assert_eq!(resolve_tag("1.3", &tags), None);
        assert_eq!(resolve_tag("1.2.4", &tags), None);
        // No release fits: the tag by that name.
        assert_eq!(resolve_tag("3.1", &tags).as_deref(), Some("3.1"));
    }

    #[test]
    fn link_headers_name_the_next_page_on_the_same_registry() {
        let origin = "http://127.0.0.1:5000";
        assert_eq!(
            next_page("</v2/a/b/tags/list?last=x&n=2>; rel=\"next\"", origin),
            Ok(Some("/v2/a/b/tags/list?last=x&n=2".into()))
        );
        assert_eq!(
            next_page(
                "<http://127.0.0.1:5000/v2/a/b/tags/list?last=x>; rel=next",
                origin
            ),
            Ok(Some("/v2/a/b/tags/list?last=x".into()))
        );
        assert_eq!(next_page("</v2/a/b/x>; rel=\"prev\"", origin), Ok(None));
        assert!(next_page("<https://evil.example/v2/x>; rel=\"next\"", origin).is_err());
        assert!(next_page("<//evil.example/v2/x>; rel=\"next\"", origin).is_err());
    }

    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// How the stand-in registry answers a request.
    enum Answer {
        /// 200 with these headers and this body, its length given.
        Ok(Vec<(&'static str, String)>, Vec<u8>),
        /// 200 with this body and no length: it ends when the connection does.
        Unsized(Vec<u8>),
        /// 404.
        Missing,
        /// Nothing, ever.
        Stall,
    }

    /// A stand-in registry on 127.0.0.1 answering `route(path)`; its `host:port` and
    /// the paths asked for.
    async fn registry(
        route: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let route = Arc::new(route);
        let seen = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (route, seen) = (route.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let (head, body) = match route(&path) {
                        Answer::Ok(headers, body) => {
                            let mut head =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len());
                            for (name, value) in headers {
                                head.push_str(&format!("{name}: {value}\r\n"));
                            }
                            (head, body)
                        }
                        Answer::Unsized(body) => ("HTTP/1.1 200 OK\r\n".to_owned(), body),
                        Answer::Missing => (
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".to_owned(),
                            Vec::new(),
                        ),
                        Answer::Stall => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let head = format!("{head}Connection: close\r\n\r\n");
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (host, asked)
    }

    #[tokio::test]
    async fn tags_are_read_over_every_page_and_resolved_by_semver() {
        let (host, asked) = registry(|path| match path {
            "/v2/" => Answer::Ok(vec![], Vec::new()),
            "/v2/acme/stamp/tags/list" => Answer::Ok(
                vec![(
                    "Link",
                    "</v2/acme/stamp/tags/list?last=1.2&n=2>; rel=\"next\"".into(),
                )],
                br#"{"name":"acme/stamp","tags":["1.0.0","1.2"]}"#.to_vec(),
            ),
            "/v2/acme/stamp/tags/list?last=1.2&n=2" => Answer::Ok(
                vec![],
                br#"{"name":"acme/stamp","tags":["1.2.7","2.0.0"]}"#.to_vec(),
            ),
            _ => Answer::Missing,
        })
        .await;
        let source: OciRef = format!("oci://{host}/acme/stamp:1.2").parse().unwrap();
        assert_eq!(
            tags(&source).await.unwrap(),
            ["1.0.0", "1.2", "1.2.7", "2.0.0"]
        );
        // `:1.2` is 1.2.7, on the second page, not the floating tag `1.2`.
        let err = pull(&source).await.unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");
        let asked = asked.lock().unwrap().clone();
        assert!(
            asked.contains(&"/v2/acme/stamp/manifests/1.2.7".to_owned()),
            "{asked:?}"
        );
    }

    /// A package's image as a registry serves it: (manifest, config, component).
    fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let manifest = "name = \"stamp\"\nversion = \"1.0.0\"\nkind = \"transform\"\nworld = \"tenon:plugin/transform@0.1.0\"\ncomponent = \"stamp.wasm\"\n";
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let package = Package::new(manifest.into(), component.clone(), None).unwrap();
        let image = package.image();
        (image.manifest, image.config, component)
    }

    /// The stand-in registry serving `image()`, with `blob` answering blobs.
    async fn serving(
        stall_manifest: bool,
        blob: impl Fn(&[u8]) -> Answer + Send + Sync + 'static,
    ) -> (OciRef, Arc<Mutex<Vec<String>>>) {
        let (manifest, config, component) = image();
        let (config_digest, component_digest) = (crate::sha256(&config), crate::sha256(&component));
        let (host, asked) = registry(move |path| {
            if path == "/v2/" {
                return Answer::Ok(vec![], Vec::new());
            }
            if path == "/v2/acme/stamp/manifests/1.0.0" {
                return match stall_manifest {
                    true => Answer::Stall,
                    false => Answer::Ok(vec![], manifest.clone()),
                };
            }
            if path.ends_with(&config_digest) {
                return Answer::Ok(vec![], config.clone());
            }
            if path.ends_with(&component_digest) {
                return blob(&component);
            }
            Answer::Missing
        })
        .await;
        let source = format!("oci://{host}/acme/stamp:1.0.0").parse().unwrap();
        (source, asked)
    }

    #[tokio::test]
    async fn pulls_are_bounded_in_size_and_time() {
        // Within the limits: the package.
        let (source, _) = serving(false, |c| Answer::Ok(vec![], c.to_vec())).await;
        let pulled = pull(&source).await.unwrap();
        assert_eq!(pulled.package.manifest().name, "stamp");
        assert_eq!(pulled.tag.as_deref(), Some("1.0.0"));

        // A manifest over its cap.
        let small = Limits {
            manifest_bytes: 64,
            ..Limits::default()
        };
        let err = pull_within(&source, &small).await.unwrap_err().to_string();
        assert!(err.contains("more than the 64 read"), "{err}");

        // Blobs that declare more than a package may hold are not fetched.
        let (source, asked) = serving(false, |c| Answer::Ok(vec![], c.to_vec())).await;
        let tiny = Limits {
            package_bytes: 8,
            ..Limits::default()
        };
        let err = pull_within(&source, &tiny).await.unwrap_err().to_string();
        assert!(
            err.contains("declare") && err.contains("not fetched"),
            "{err}"
        );
        assert!(
            !asked.lock().unwrap().iter().any(|p| p.contains("/blobs/")),
            "{:?}",
            asked.lock().unwrap()
        );

        // A blob longer than its descriptor says: by its length, or as it streams.
        let (source, _) = serving(false, |c| Answer::Ok(vec![], [c, &[0u8; 100]].concat())).await;
        let err = pull(&source).await.unwrap_err().to_string();
        assert!(err.contains("more than the 8 read: not fetched"), "{err}");
        let (source, _) = serving(false, |c| Answer::Unsized([c, &[0u8; 100]].concat())).await;
        let err = pull(&source).await.unwrap_err().to_string();
        assert!(err.contains("longer than the 8 bytes read"), "{err}");
        let (source, _) = serving(false, |c| Answer::Unsized(c.to_vec())).await;
        pull(&source).await.unwrap();

        // A registry that stops answering: the whole pull has a deadline.
        let (source, _) = serving(true, |c| Answer::Ok(vec![], c.to_vec())).await;
        let quick = Limits {
            deadline: Duration::from_millis(500),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let err = pull_within(&source, &quick).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within 0.5 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
