//! Plugin packages: one file holding one plugin version (its manifest, its component
//! and, once signed, its signature), named by the version digest.
//!
//! A package is the same OCI image that `tenon plugin publish` pushes to a registry,
//! in an [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
//! packed in a tar (`oci-layout`, `index.json`, `blobs/sha256/...`), so what is signed
//! and checked locally is byte for byte what a registry serves. The image follows the
//! CNCF TAG Runtime *Wasm OCI Artifact* layout, so generic Wasm tooling (`wkg oci pull`,
//! `oras`) sees an ordinary component:
//!
//! - config `application/vnd.wasm.config.v0+json`: `architecture` `wasm`, `os`
//!   `wasip2`, `layerDigests`, `component` (what it imports and exports, read from the
//!   component, and `target`: the plugin's world);
//! - exactly one layer, `application/wasm`: the component;
//! - annotations of the image manifest: `org.opencontainers.image.{title,version,
//!   description,created}`, and Tenon's own: `dev.tenon.plugin.manifest` (the
//!   `plugin.toml`, byte for byte), `dev.tenon.plugin.digest` (the version digest) and,
//!   once signed, `dev.tenon.plugin.signature` (the `plugin.sig` document).
//!
//! The manifest and the signature ride as annotations rather than further layers:
//! Wasm tooling built on the spec (oci-wasm, used by wkg and wash) takes an image with
//! exactly one layer. Signing changes only the image manifest's annotations: the
//! component's and config's blobs stay as they are.

use crate::signing::{SIGNATURE_FILE, SecretKey};
use crate::{MANIFEST_FILE, Manifest, ManifestError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Media type of the image manifest.
pub const IMAGE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an image index (`index.json`).
pub const IMAGE_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the config blob (Wasm OCI artifact).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the component layer (Wasm OCI artifact).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Annotation holding `plugin.toml`, byte for byte.
pub const MANIFEST_ANNOTATION: &str = "dev.tenon.plugin.manifest";
/// Annotation holding the version digest.
pub const DIGEST_ANNOTATION: &str = "dev.tenon.plugin.digest";
/// Annotation holding the signature document (`plugin.sig`).
pub const SIGNATURE_ANNOTATION: &str = "dev.tenon.plugin.signature";
/// The largest package read: 256 MiB.
pub const MAX_PACKAGE_BYTES: u64 = 256 << 20;

/// Why a package could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Its manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// It is not a package of this form, or it does not hold together.
    #[error("{0}")]
    Format(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One plugin version, packaged.
#[derive(Debug, Clone)]
pub struct Package {
    manifest_text: String,
    manifest: Manifest,
    component: Vec<u8>,
    signature: Option<String>,
    /// The config blob, made once (it holds the time it was made).
    config: Vec<u8>,
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` of its content.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: crate::sha256(bytes),
            size: bytes.len() as u64,
            annotations: None,
        }
    }

    /// Check that `bytes` are what it describes.
    pub fn check(&self, bytes: &[u8]) -> Result<(), PackageError> {
        let actual = crate::sha256(bytes);
        if actual != self.digest || bytes.len() as u64 != self.size {
            return Err(PackageError::Format(format!(
                "blob {} ({} bytes) holds {actual} ({} bytes): it is corrupt or was changed",
                self.digest,
                self.size,
                bytes.len()
            )));
        }
        Ok(())
    }
}

/// An OCI image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`IMAGE_MANIFEST_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The config blob of a Wasm OCI artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig {
    created: String,
    author: Option<String>,
    architecture: String,
    os: String,
    layer_digests: Vec<String>,
    component: Option<ComponentInterface>,
}

/// What a component imports and exports, for the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ComponentInterface {
    exports: Vec<String>,
    imports: Vec<String>,
    target: Option<String>,
}

/// A package as an OCI image: its blobs and its manifest, ready to push or lay out.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config blob.
    pub config: Vec<u8>,
    /// The image manifest's JSON, exactly as pushed.
    pub manifest: Vec<u8>,
    /// Its digest: what pins this image in a registry (`@sha256:...`).
    pub manifest_digest: String,
}

impl Package {
    /// A package of a version's files. Its config is made now.
    pub fn new(
        manifest_text: String,
        component: Vec<u8>,
        signature: Option<String>,
    ) -> Result<Package, PackageError> {
        let manifest = Manifest::parse(Path::new(MANIFEST_FILE), &manifest_text)?;
        let interface = interface(&component)?;
        let config = WasmConfig {
            created: created(),
            author: None,
            architecture: "wasm".into(),
            os: "wasip2".into(),
            layer_digests: vec![crate::sha256(&component)],
            component: Some(ComponentInterface {
                target: Some(manifest.world.clone()),
                ..interface
            }),
        };
        let config =
            serde_json::to_vec(&config).map_err(|e| PackageError::Format(e.to_string()))?;
        Ok(Package {
            manifest_text,
            manifest,
            component,
            signature,
            config,
        })
    }

    /// The version in a plugin directory: its `plugin.toml`, the component it names,
    /// and its `plugin.sig` if there is one.
    pub fn from_dir(dir: &Path) -> Result<Package, PackageError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let component_path = dir.join(&manifest.component);
        let component = std::fs::read(&component_path).map_err(io(&component_path))?;
        let sig_path = dir.join(SIGNATURE_FILE);
        let signature = match std::fs::read_to_string(&sig_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&sig_path)(e)),
        };
        Package::new(text, component, signature)
    }

    /// A package file (see [`Package::write`]) or a plugin directory.
    pub fn open(path: &Path) -> Result<Package, PackageError> {
        if path.is_dir() {
            return Package::from_dir(path);
        }
        let file = std::fs::File::open(path).map_err(io(path))?;
        Package::read(file).map_err(|e| match e {
            PackageError::Format(why) => PackageError::Format(format!("{}: {why}", path.display())),
            e => e,
        })
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its `plugin.toml`, byte for byte.
    pub fn manifest_text(&self) -> &str {
        &self.manifest_text
    }

    /// Its component.
    pub fn component(&self) -> &[u8] {
        &self.component
    }

    /// Its signature document, if it is signed.
    pub fn signature(&self) -> Option<&str> {
        self.signature.as_deref()
    }

    /// The version digest: manifest and component ([`crate::version_digest`]).
    pub fn digest(&self) -> String {
        crate::version_digest(self.manifest_text.as_bytes(), &self.component)
    }

    /// The component's own digest.
    pub fn component_digest(&self) -> String {
        crate::sha256(&self.component)
    }

    /// Make the manifest name its component (`component_digest`), as a hot deploy's
    /// must, adding the line when it is missing. Returns whether the manifest changed
    /// (a new version: a signature of the old one is dropped).
    pub fn bind_component(&mut self) -> Result<bool, PackageError> {
        let actual = self.component_digest();
        match &self.manifest.component_digest {
            Some(named) if *named == actual => return Ok(false),
            Some(named) => {
                return Err(PackageError::Format(format!(
                    "{MANIFEST_FILE} names component {named}, but {} is {actual}",
                    self.manifest.component.display()
                )));
            }
            None => {}
        }
        let line = format!("component_digest = \"{actual}\"\n");
        let mut text = String::with_capacity(self.manifest_text.len() + line.len());
        let mut inserted = false;
        for l in self.manifest_text.split_inclusive('\n') {
            if !inserted && l.trim_start().starts_with('[') {
                // After the last key, before the blank lines that set the table off.
                let keys = text.trim_end().len();
                let blank = text.split_off(keys);
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&line);
                text.push_str(blank.strip_prefix('\n').unwrap_or(&blank));
                inserted = true;
            }
            text.push_str(l);
        }
        if !inserted {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
        }
        let manifest = Manifest::parse(Path::new(MANIFEST_FILE), &text)?;
        if manifest.component_digest.as_deref() != Some(actual.as_str()) {
            return Err(PackageError::Format(format!(
                "cannot add `component_digest` to {MANIFEST_FILE}: add `{}` before its first table yourself",
                line.trim()
            )));
        }
        self.manifest_text = text;
        self.manifest = manifest;
        self.signature = None;
        Ok(true)
    }

    /// Sign it as `publisher`, replacing any signature it had.
    pub fn sign(&mut self, key: &SecretKey, publisher: &str) {
        self.signature = Some(key.sign(publisher, &self.digest()).to_json());
    }

    /// Replace its signature document.
    pub fn set_signature(&mut self, signature: Option<String>) {
        self.signature = signature;
    }

    /// The package as an OCI image.
    pub fn image(&self) -> Image {
        let mut annotations = BTreeMap::from([
            (
                "org.opencontainers.image.title".to_owned(),
                self.manifest.name.clone(),
            ),
            (
                "org.opencontainers.image.version".to_owned(),
                self.manifest.version.clone(),
            ),
            (MANIFEST_ANNOTATION.to_owned(), self.manifest_text.clone()),
            (DIGEST_ANNOTATION.to_owned(), self.digest()),
        ]);
        if let Some(description) = &self.manifest.description {
            annotations.insert(
                "org.opencontainers.image.description".into(),
                description.clone(),
            );
        }
        if let Ok(config) = serde_json::from_slice::<WasmConfig>(&self.config) {
            annotations.insert("org.opencontainers.image.created".into(), config.created);
        }
        if let Some(signature) = &self.signature {
            annotations.insert(SIGNATURE_ANNOTATION.into(), signature.clone());
        }
        let mut layer = Descriptor::of(WASM_LAYER_MEDIA_TYPE, &self.component);
        layer.annotations = Some(BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            self.manifest.component.display().to_string(),
        )]));
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(IMAGE_MANIFEST_MEDIA_TYPE.into()),
            config: Descriptor::of(WASM_CONFIG_MEDIA_TYPE, &self.config),
            layers: vec![layer],
            annotations,
        };
        let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        Image {
            config: self.config.clone(),
            manifest_digest: crate::sha256(&manifest),
            manifest,
        }
    }

    /// The package from an OCI image: its manifest's JSON, and `blob` to fetch each
    /// blob it names (each checked against its descriptor here).
    pub fn from_image(
        manifest: &[u8],
        mut blob: impl FnMut(&Descriptor) -> Result<Vec<u8>, PackageError>,
    ) -> Result<Package, PackageError> {
        let manifest: ImageManifest = serde_json::from_slice(manifest)
            .map_err(|e| PackageError::Format(format!("not an OCI image manifest: {e}")))?;
        if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(PackageError::Format(format!(
                "its config is `{}`, not a Wasm OCI artifact's `{WASM_CONFIG_MEDIA_TYPE}`",
                manifest.config.media_type
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(PackageError::Format(format!(
                "it has {} layers; a plugin package has one, the component",
                manifest.layers.len()
            )));
        };
        if layer.media_type != WASM_LAYER_MEDIA_TYPE {
            return Err(PackageError::Format(format!(
                "its layer is `{}`, not `{WASM_LAYER_MEDIA_TYPE}`",
                layer.media_type
            )));
        }
        let text = manifest
            .annotations
            .get(MANIFEST_ANNOTATION)
            .cloned()
            .ok_or_else(|| {
                PackageError::Format(format!(
                    "it is a Wasm component but not a Tenon plugin: it has no `{MANIFEST_ANNOTATION}` annotation (its plugin.toml)"
                ))
            })?;
        let config = blob(&manifest.config)?;
        manifest.config.check(&config)?;
        let component = blob(layer)?;
        layer.check(&component)?;
        let parsed = Manifest::parse(Path::new(MANIFEST_FILE), &text)?;
        if let Some(named) = &parsed.component_digest
            && *named != layer.digest
        {
            return Err(PackageError::Format(format!(
                "its {MANIFEST_FILE} names component {named}, but its layer is {}",
                layer.digest
            )));
        }
        Ok(Package {
            manifest_text: text,
            manifest: parsed,
            component,
            signature: manifest.annotations.get(SIGNATURE_ANNOTATION).cloned(),
            config,
        })
    }

    /// Write the package (an OCI image layout in a tar) to `out`.
    pub fn write_to(&self, out: impl Write) -> std::io::Result<()> {
        let image = self.image();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": IMAGE_MANIFEST_MEDIA_TYPE,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": self.manifest.version },
            }],
        });
        let index = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
        let blob = |bytes: &[u8]| format!("blobs/sha256/{}", hex_of(&crate::sha256(bytes)));
        let files: [(String, &[u8]); 5] = [
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json".into(), &index),
            (blob(&image.manifest), &image.manifest),
            (blob(&image.config), &image.config),
            (blob(&self.component), &self.component),
        ];
        let mut tar = tar::Builder::new(out);
        for (path, bytes) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append_data(&mut header, path, bytes)?;
        }
        tar.into_inner()?.flush()
    }

    /// Write the package to the file `path`, atomically: a new temporary file of a
    /// random name beside it (see [`write_file_atomic`]), renamed into place.
    pub fn write(&self, path: &Path) -> Result<(), PackageError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut file = temporary(dir)?;
        self.write_to(&mut file)
            .and_then(|()| file.as_file().sync_all())
            .map_err(io(file.path()))?;
        file.persist(path).map_err(|e| io(path)(e.error))?;
        sync_dir(dir)
    }

    /// Read a package (an OCI image layout in a tar holding one image).
    pub fn read(input: impl Read) -> Result<Package, PackageError> {
        let format = |why: String| PackageError::Format(why);
        let mut archive = tar::Archive::new(input.take(MAX_PACKAGE_BYTES + 1));
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut total = 0u64;
        let entries = archive
            .entries()
            .map_err(|e| format(format!("not a package (a tar): {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format(format!("not a package (a tar): {e}")))?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| format(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            // `./index.json`, `index.json` and `blobs//sha256/./x` name one file each.
            let path = path
                .split('/')
                .filter(|part| !part.is_empty() && *part != ".")
                .collect::<Vec<_>>()
                .join("/");
            if !kind.is_file() {
                return Err(format(format!("`{path}` is not a plain file")));
            }
            if files.contains_key(&path) {
                // A tar read by another tool may take the first copy where this one
                // would take the last: a package holds each file once.
                return Err(format(format!(
                    "`{path}` is in the package twice: a package holds each file once"
                )));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format(format!("`{path}`: {e}")))?;
            total += bytes.len() as u64;
            if total > MAX_PACKAGE_BYTES {
                return Err(format(format!(
                    "larger than {} MiB",
                    MAX_PACKAGE_BYTES >> 20
                )));
            }
            files.insert(path, bytes);
        }
        let index = files.get("index.json").ok_or_else(|| {
            format("not a package: it has no OCI image layout (`index.json`)".into())
        })?;
        #[derive(Deserialize)]
        struct Index {
            manifests: Vec<Descriptor>,
        }
        let index: Index =
            serde_json::from_slice(index).map_err(|e| format(format!("its index.json: {e}")))?;
        let [entry] = index.manifests.as_slice() else {
            return Err(format(format!(
                "its index.json lists {} images; a package holds one",
                index.manifests.len()
            )));
        };
        let blob = |d: &Descriptor| -> Result<Vec<u8>, PackageError> {
            let bytes = files
                .get(&format!("blobs/sha256/{}", hex_of(&d.digest)))
                .cloned()
                .ok_or_else(|| format(format!("blob {} is missing", d.digest)))?;
            d.check(&bytes)?;
            Ok(bytes)
        };
        let manifest = blob(entry)?;
        Package::from_image(&manifest, blob)
    }

    /// Install the version into the plugin directory `dir`: the component, then the
    /// signature (or no signature), then `plugin.toml`, each written to a new
    /// temporary file ([`write_file_atomic`]: a random name, created exclusively, so
    /// nothing planted in the directory is written through), flushed to disk and
    /// renamed into place; the directory is flushed before the manifest is written
    /// and after. The manifest goes last: it names its component
    /// (`component_digest`), so a watcher that reads the directory in between, or a
    /// start after a crash half way, sees the old version or a deploy under way,
    /// never a mix it would run.
    pub fn install(&self, dir: &Path) -> Result<(), PackageError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_file_atomic(dir, &self.manifest.component, &self.component)?;
        match &self.signature {
            Some(signature) => {
                write_file_atomic(dir, Path::new(SIGNATURE_FILE), signature.as_bytes())?
            }
            None => {
                let path = dir.join(SIGNATURE_FILE);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                    _ => {}
                }
            }
        }
        sync_dir(dir)?;
        write_file_atomic(dir, Path::new(MANIFEST_FILE), self.manifest_text.as_bytes())?;
        sync_dir(dir)
    }
}

/// A new temporary file in `dir`: a random name, created exclusively (`O_EXCL`), so
/// it is never a file or a symlink that was there already; removed unless persisted.
fn temporary(dir: &Path) -> Result<tempfile::NamedTempFile, PackageError> {
    tempfile::Builder::new()
        .prefix(".tenon-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir))
}

/// Write `bytes` to `dir/name` atomically: into a new temporary file of a random name
/// in `dir` (created exclusively: nothing planted there is followed), flushed to disk,
/// then renamed over `name` (a symlink at `name` is replaced, not followed). Flush
/// `dir` afterwards for the rename itself to be durable.
pub fn write_file_atomic(dir: &Path, name: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let path = dir.join(name);
    let mut file = temporary(dir)?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(io(file.path()))?;
    file.persist(&path).map_err(|e| io(&path)(e.error))?;
    Ok(())
}

/// Flush `dir`'s entries (the renames into it) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), PackageError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The hex of a `sha256:<hex>` digest.
fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// What a component imports and exports (its top-level names), read with wasmparser.
fn interface(wasm: &[u8]) -> Result<ComponentInterface, PackageError> {
    use wasmparser::{Encoding, Parser, Payload};
    let bad = |why: String| PackageError::Format(format!("the component is not valid: {why}"));
    let mut depth = 0usize;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| bad(e.to_string()))? {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding != Encoding::Component {
                    return Err(PackageError::Format(
                        "the component is a core WebAssembly module, not a component (build for wasm32-wasip2)".into(),
                    ));
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    imports.push(import.map_err(|e| bad(e.to_string()))?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    exports.push(export.map_err(|e| bad(e.to_string()))?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if depth != 0 || (imports.is_empty() && exports.is_empty() && wasm.len() < 8) {
        return Err(bad("it ends early".into()));
    }
    Ok(ComponentInterface {
        exports,
        imports,
        target: None,
    })
}

/// Now as RFC 3339 (UTC, seconds), or `SOURCE_DATE_EPOCH`'s time when set (for
/// reproducible packages).
fn created() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    rfc3339(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the preamble only.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn manifest() -> String {
        "name = \"stamp\"\nversion = \"1.0.0\"\nkind = \"transform\"\nworld = \"tenon:plugin/transform@0.1.0\"\ncomponent = \"stamp.wasm\"\n\n[grants]\nmemory_mib = 32\n".into()
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn a_package_round_trips_and_binds_its_component() {
        let mut package = Package::new(manifest(), EMPTY_COMPONENT.to_vec(), None).unwrap();
        let unbound = package.digest();
        assert!(package.bind_component().unwrap());
        assert!(!package.bind_component().unwrap());
        assert_ne!(package.digest(), unbound);
        let text = package.manifest_text();
        assert!(
            text.contains(&format!(
                "component_digest = \"{}\"\n\n[grants]",
                package.component_digest()
            )),
            "{text}"
        );
        let key = SecretKey::generate().unwrap();
        package.sign(&key, "acme");
        let mut bytes = Vec::new();
        package.write_to(&mut bytes).unwrap();
        let again = Package::read(bytes.as_slice()).unwrap();
        assert_eq!(again.digest(), package.digest());
        assert_eq!(again.signature(), package.signature());
        assert_eq!(
            again.image().manifest_digest,
            package.image().manifest_digest
        );

        let dir = tempfile::tempdir().unwrap();
        again.install(dir.path()).unwrap();
        let installed = Package::from_dir(dir.path()).unwrap();
        assert_eq!(installed.digest(), package.digest());
        assert!(installed.signature().is_some());
    }

    /// The tar of `files` (path, bytes), in that order.
    fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append_data(&mut header, path, bytes.as_slice())
                .unwrap();
        }
        tar.into_inner().unwrap()
    }

    /// The files of a package's tar, in order.
    fn files_of(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                (path, content)
            })
            .collect()
    }

    #[test]
    fn a_file_twice_in_a_package_is_refused() {
        let package = Package::new(manifest(), EMPTY_COMPONENT.to_vec(), None).unwrap();
        let mut bytes = Vec::new();
        package.write_to(&mut bytes).unwrap();
        let files = files_of(&bytes);
        assert!(Package::read(tar_of(&files).as_slice()).is_ok());
        // The same path again, spelt `./index.json`, or the exact same entry twice.
        let index = files.iter().find(|(p, _)| p == "index.json").unwrap();
        for again in [format!("./{}", index.0), index.0.clone()] {
            let mut twice = files.clone();
            twice.push((again.clone(), index.1.clone()));
            let err = Package::read(tar_of(&twice).as_slice()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("`index.json` is in the package twice"),
                "{again}: {err}"
            );
        }
        // A blob of another image under the same name, first or last: refused alike.
        let other = Package::new(
            manifest().replace("memory_mib = 32", "memory_mib = 16"),
            EMPTY_COMPONENT.to_vec(),
            None,
        )
        .unwrap();
        let mut other_bytes = Vec::new();
        other.write_to(&mut other_bytes).unwrap();
        let other_index = files_of(&other_bytes)
            .into_iter()
            .find(|(p, _)| p == "index.json")
            .unwrap();
        let mut shadowed = files.clone();
        shadowed.push(("./index.json".into(), other_index.1));
        assert!(Package::read(tar_of(&shadowed).as_slice()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn install_never_writes_through_what_is_planted_in_the_directory() {
        let package = {
            let mut p = Package::new(manifest(), EMPTY_COMPONENT.to_vec(), None).unwrap();
            p.bind_component().unwrap();
            p
        };
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Symlinks where a fixed temporary name would be, and where each file goes.
        let mut victims = Vec::new();
        for (i, name) in [
            ".stamp.wasm.tmp",
            ".plugin.toml.tmp",
            ".plugin.sig.tmp",
            "plugin.sig",
        ]
        .iter()
        .enumerate()
        {
            let victim = outside.path().join(format!("victim-{i}"));
            std::fs::write(&victim, b"untouched").unwrap();
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
            victims.push(victim);
        }
        package.install(dir.path()).unwrap();
        for victim in &victims {
            assert_eq!(
                std::fs::read(victim).unwrap(),
                b"untouched",
                "{} was written through a symlink",
                victim.display()
            );
        }
        let installed = Package::from_dir(dir.path()).unwrap();
        assert_eq!(installed.digest(), package.digest());
        assert!(!dir.path().join("plugin.sig").exists(), "unsigned");
        // No temporary file is left behind.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tenon-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_changed_blob_is_refused() {
        let package = Package::new(manifest(), EMPTY_COMPONENT.to_vec(), None).unwrap();
        let image = package.image();
        let changed = Package::from_image(&image.manifest, |d| {
            Ok(if d.media_type == WASM_LAYER_MEDIA_TYPE {
                b"\0asm\x0d\0\x01\x01".to_vec()
            } else {
                image.config.clone()
            })
        });
        let err = changed.unwrap_err().to_string();
        assert!(err.contains("corrupt or was changed"), "{err}");
        let module = Package::new(manifest(), b"\0asm\x01\0\0\0".to_vec(), None);
        assert!(
            module
                .unwrap_err()
                .to_string()
                .contains("core WebAssembly module")
        );
    }
}
