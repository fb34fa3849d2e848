//! Packages, signatures and registries, as a partner and an operator use them:
//! `tenon plugin pack`, `keygen`, `sign`, `verify`, `publish`, `install`. Everything
//! here is offline except `publish` and `install`, which talk to an OCI registry; none
//! talks to a running Tenon (an installed version reaches it through its plugin
//! directory, where the watcher takes it).
//!
//! The formats are `tenon_registry`'s: a package is an OCI image layout in a tar
//! ([`tenon_registry::package`]), a signature an ed25519 signature of the version
//! digest ([`tenon_registry::signing`]), a trust policy the `[trust]` of `tenon.toml`
//! ([`tenon_registry::trust`]).

use anyhow::{Context as _, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tenon_registry::oci::{self, OciRef};
use tenon_registry::{Package, PublicKey, SIGNATURE_FILE, SecretKey, TrustPolicy};

/// `tenon plugin pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The plugin directory: its `plugin.toml`, the component it names, and its
    /// `plugin.sig` if it is signed.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The package file to write (default: `<name>-<version>.tar` here).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// `tenon plugin keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (PKCS#8 PEM, mode 0600); the public key goes to
    /// `<out>.pub`. Neither may exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// `tenon plugin sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// A package (`tenon plugin pack`), signed in place, or a plugin directory, which
    /// gets a `plugin.sig`.
    pub path: PathBuf,
    /// The secret key (`tenon plugin keygen`, or an Ed25519 PKCS#8 PEM of OpenSSL's).
    #[arg(long)]
    pub key: PathBuf,
    /// The name you publish under, as operators' trust policies call you (default:
    /// the key's id). A policy trusts the key, not this name.
    #[arg(long)]
    pub publisher: Option<String>,
}

/// Where trust comes from: a config's `[trust]` or one key.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct TrustArgs {
    /// Check against the `[trust]` of this `tenon.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Trust exactly this public key (`ed25519:...`, or a file holding it or a PEM
    /// public key), for any plugin name.
    #[arg(long)]
    pub key: Option<String>,
}

/// `tenon plugin verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A package or a plugin directory.
    pub path: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// `tenon plugin publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// A package, or a plugin directory (packed on the way).
    pub path: PathBuf,
    /// Where: `oci://host[:port]/namespace/name:tag` (without a tag: the version).
    pub reference: String,
}

/// `tenon plugin install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// What: `oci://host[:port]/namespace/name:tag` (`:1.2` takes the highest 1.2.x
    /// release) or `...@sha256:<hex>` (exactly that image).
    pub reference: String,
    /// The plugin directory to install into (a running Tenon watching it swaps the
    /// version in).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// `tenon plugin pack`: one file of a plugin directory's version, its manifest made to
/// name its component (as hot swap needs).
pub fn pack(args: PackArgs) -> anyhow::Result<ExitCode> {
    let mut package = Package::from_dir(&args.dir)?;
    let signed = package.signature().is_some();
    if package.bind_component()? {
        eprintln!(
            "note: {}/plugin.toml does not name its component; the package's does (component_digest = \"{}\"), as hot swap needs{}",
            args.dir.display(),
            package.component_digest(),
            if signed {
                ": that is a new version, so the directory's plugin.sig is left out (sign the package)"
            } else {
                ""
            }
        );
    } else if signed && let Err(why) = self_check(&package) {
        eprintln!("note: {SIGNATURE_FILE} is left out: {why}");
        package.set_signature(None);
    }
    let manifest = package.manifest();
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.tar", manifest.name, manifest.version)));
    package.write(&out)?;
    println!(
        "packed {} {} {} into {}",
        manifest.name,
        manifest.version,
        package.digest(),
        out.display()
    );
    println!("signer   {}", signer_line(&package));
    Ok(ExitCode::SUCCESS)
}

/// `tenon plugin keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let public_path = PathBuf::from(format!("{}.pub", args.out.display()));
    for path in [&args.out, &public_path] {
        if path.exists() {
            bail!("{} exists: keys are not overwritten", path.display());
        }
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let key = SecretKey::generate()?;
    write_new(&args.out, key.to_pem().as_bytes(), 0o600)?;
    let public = key.public();
    write_new(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    println!("public key {public}");
    println!("key id     {}", public.id());
    println!(
        "secret key {} (mode 0600: keep it secret); public key also in {}",
        args.out.display(),
        public_path.display()
    );
    println!(
        "\nAn operator trusts it for your plugins' names with, in tenon.toml:\n\n[[trust.publishers]]\nname = \"<you>\"\nkey = \"{public}\"\nprefixes = [\"<the beginning of your plugins' names>\"]"
    );
    Ok(ExitCode::SUCCESS)
}

/// Create `path` (it must not exist) with `bytes` and `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `tenon plugin sign`.
pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let key = SecretKey::from_pem(&text).with_context(|| args.key.display().to_string())?;
    let publisher = args
        .publisher
        .unwrap_or_else(|| format!("key {}", key.public().id()));
    let mut package = Package::open(&args.path)?;
    package.sign(&key, &publisher);
    if args.path.is_dir() {
        let file = args.path.join(SIGNATURE_FILE);
        let tmp = args.path.join(format!(".{SIGNATURE_FILE}.tmp"));
        std::fs::write(&tmp, package.signature().unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .with_context(|| format!("cannot write {}", file.display()))?;
        if package.manifest().component_digest.is_none() {
            eprintln!(
                "note: its plugin.toml does not name its component: a watched plugin directory will not take it (`tenon plugin pack` makes a package whose manifest does; sign that)"
            );
        }
    } else {
        package.write(&args.path)?;
    }
    let manifest = package.manifest();
    println!(
        "signed {} {} {} as {publisher} (key {})",
        manifest.name,
        manifest.version,
        package.digest(),
        key.public().id()
    );
    Ok(ExitCode::SUCCESS)
}

/// The policy `trust` stands for: a config's `[trust]`, or one key trusted for
/// every name; `None` when neither is given.
fn policy(trust: &TrustArgs) -> anyhow::Result<Option<TrustPolicy>> {
    if let Some(config) = &trust.config {
        let config = tenon::config::Config::load(config)?;
        return Ok(Some(config.trust));
    }
    let Some(key) = &trust.key else {
        return Ok(None);
    };
    let text = match key.starts_with("ed25519:") {
        true => key.clone(),
        false => std::fs::read_to_string(key)
            .with_context(|| format!("--key {key}: neither `ed25519:...` nor a readable file"))?,
    };
    let public = match text.parse::<PublicKey>() {
        Ok(public) => public,
        // A secret key file stands for its public key.
        Err(e) => SecretKey::from_pem(&text)
            .map(|secret| secret.public())
            .map_err(|_| e)
            .with_context(|| format!("--key {key}"))?,
    };
    Ok(Some(TrustPolicy::trusting(public)))
}

/// Whether the package's signature, if any, is for its files and verifies.
fn self_check(package: &Package) -> Result<(), tenon_registry::TrustError> {
    TrustPolicy::default()
        .check(
            &package.manifest().name,
            &package.digest(),
            package.signature().map(|s| (SIGNATURE_FILE, s)),
        )
        .map(drop)
}

/// Who signed it, checked for itself only.
fn signer_line(package: &Package) -> String {
    match TrustPolicy::default().check(
        &package.manifest().name,
        &package.digest(),
        package.signature().map(|s| (SIGNATURE_FILE, s)),
    ) {
        Ok(None) => "unsigned".into(),
        Ok(Some(s)) => format!(
            "\"{}\" (key {}; the signature verifies)",
            s.publisher, s.key_id
        ),
        Err(e) => format!("REFUSED: {e}"),
    }
}

/// `tenon plugin verify`: exits 0 when the package is signed by a key the policy
/// trusts for its name (or, with neither `--config` nor `--key`, when its signature
/// verifies for its files), 1 otherwise.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let package = Package::open(&args.path)?;
    let manifest = package.manifest();
    let digest = package.digest();
    let sig = package.signature().map(|s| (SIGNATURE_FILE, s));
    let decided = match policy(&args.trust)? {
        Some(policy) => TrustPolicy {
            require_signatures: true,
            ..policy
        }
        .check(&manifest.name, &digest, sig)
        .map(|signer| signer.map(|s| s.to_string())),
        None => TrustPolicy {
            require_signatures: true,
            ..TrustPolicy::default()
        }
        .check(&manifest.name, &digest, sig)
        .or_else(|e| match e {
            // Without a policy, no key is trusted: the signature itself is what is checked.
            tenon_registry::TrustError::UntrustedKey { key_id, claimed } => {
                Ok(Some(tenon_registry::Signer {
                    publisher: claimed,
                    key_id,
                    trusted: false,
                }))
            }
            e => Err(e),
        })
        .map(|signer| {
            signer.map(|s| {
                format!(
                    "\"{}\" (key {}; not checked against a trust policy: give --config or --key)",
                    s.publisher, s.key_id
                )
            })
        }),
    };
    match decided {
        Ok(signer) => {
            println!(
                "verified {} {} {}: signed by {}",
                manifest.name,
                manifest.version,
                digest,
                signer.unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            println!(
                "REFUSED {} {} {}: {refusal}",
                manifest.name, manifest.version, digest
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `tenon plugin publish`.
pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let target: OciRef = args.reference.parse()?;
    let mut package = Package::open(&args.path)?;
    if args.path.is_dir() && package.bind_component()? {
        eprintln!(
            "note: plugin.toml does not name its component; the published one does (component_digest = \"{}\"){}",
            package.component_digest(),
            if package.signature().is_none() && args.path.join(SIGNATURE_FILE).exists() {
                ": a new version, so the directory's plugin.sig does not go with it"
            } else {
                ""
            }
        );
    }
    if let Err(why) = self_check(&package) {
        bail!(
            "{}: not published: {why} (sign it again: `tenon plugin sign`)",
            args.path.display()
        );
    }
    if package.signature().is_none() {
        eprintln!(
            "note: publishing an unsigned package: a Tenon whose [trust] requires signatures refuses it"
        );
    }
    let pushed = oci::push(&package, &target).await?;
    let manifest = package.manifest();
    println!(
        "published {} {} {} to {}",
        manifest.name,
        manifest.version,
        package.digest(),
        pushed.reference
    );
    println!(
        "pinned   {}",
        pushed.reference.pinned(&pushed.manifest_digest)
    );
    println!("signer   {}", signer_line(&package));
    Ok(ExitCode::SUCCESS)
}

/// `tenon plugin install`: pull, check against the trust policy, write into the
/// plugin directory (component, signature, then manifest).
pub async fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let source: OciRef = args.reference.parse()?;
    let Some(policy) = policy(&args.trust)? else {
        bail!(
            "give --config <tenon.toml> (its [trust]) or --key <public key>: an installed plugin is checked before it is written"
        );
    };
    let pulled = oci::pull(&source).await?;
    let package = pulled.package;
    let manifest = package.manifest();
    let digest = package.digest();
    let from = source.pinned(&pulled.manifest_digest);
    let signer = policy
        .check(
            &manifest.name,
            &digest,
            package.signature().map(|s| (SIGNATURE_FILE, s)),
        )
        .map_err(|refusal| {
            anyhow::anyhow!(
                "{from}: {} {} {digest} refused, nothing installed: {refusal}",
                manifest.name,
                manifest.version
            )
        })?;
    if manifest.component_digest.is_none() {
        bail!(
            "{from}: its plugin.toml does not name its component (component_digest): a watched plugin directory would not take it; publish a package made by `tenon plugin pack`"
        );
    }
    package
        .install(&args.dir)
        .with_context(|| format!("cannot install into {}", args.dir.display()))?;
    println!(
        "installed {} {} {} into {}",
        manifest.name,
        manifest.version,
        digest,
        args.dir.display()
    );
    println!(
        "from     {from}{}",
        pulled
            .tag
            .map(|t| format!(" (tag {t})"))
            .unwrap_or_default()
    );
    println!(
        "signer   {}",
        signer.map_or_else(|| "unsigned".to_owned(), |s| s.to_string())
    );
    Ok(ExitCode::SUCCESS)
}
