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
    /// release, `:1.2.3` exactly that one) or `...@sha256:<hex>` (exactly that image).
    /// Without a tag: the tag `latest`, whatever it points at.
    pub reference: String,
    /// The plugin directory to install into (a running Tenon watching it swaps the
    /// version in).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// The plugin expected (its manifest's `name`), when it is not the repository's
    /// last path segment (`oci://.../acme/acme-crm` holds `acme-crm`).
    #[arg(long)]
    pub name: Option<String>,
    /// Install a version lower (semver) than the one in `--dir`.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Install an unsigned package when the policy allows one (`--config` whose
    /// `[trust]` does not require signatures); without it, `install` requires a
    /// signature by a key the policy trusts for the plugin's name.
    #[arg(long)]
    pub allow_unsigned: bool,
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
        let file = Path::new(SIGNATURE_FILE);
        let signature = package.signature().unwrap_or_default().as_bytes();
        tenon_registry::package::write_file_atomic(&args.path, file, signature)
            .and_then(|()| tenon_registry::package::sync_dir(&args.path))
            .with_context(|| format!("cannot write {}", args.path.join(file).display()))?;
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

/// `tenon plugin install`: pull, check (the trust policy, the plugin's name, its
/// version against the tag and against the version in the directory), write into the
/// plugin directory (component, signature, then manifest).
pub async fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let source: OciRef = args.reference.parse()?;
    let Some(mut policy) = policy(&args.trust)? else {
        bail!(
            "give --config <tenon.toml> (its [trust]) or --key <public key>: an installed plugin is checked before it is written"
        );
    };
    // What comes from a registry is signed, unless the operator says otherwise.
    policy.require_signatures |= !args.allow_unsigned;
    // The plugin the directory holds now, if any: checked before anything is pulled.
    let existing_path = args.dir.join(tenon_registry::MANIFEST_FILE);
    let existing = match existing_path.try_exists() {
        Ok(false) => None,
        Ok(true) => Some(tenon_registry::Manifest::load(&existing_path).with_context(|| {
            format!(
                "--dir {}: the version there does not read, so what it is cannot be compared: nothing installed",
                args.dir.display()
            )
        })?),
        Err(e) => bail!("--dir {}: {e}", args.dir.display()),
    };
    let expected = args.name.clone().unwrap_or_else(|| {
        source
            .repository
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let pulled = oci::pull(&source).await?;
    let package = pulled.package;
    let manifest = package.manifest();
    let digest = package.digest();
    let from = source.pinned(&pulled.manifest_digest);
    let refused = |why: String| {
        anyhow::anyhow!(
            "{from}: {} {} {digest} refused, nothing installed: {why}",
            manifest.name,
            manifest.version
        )
    };
    let signer = policy
        .check(
            &manifest.name,
            &digest,
            package.signature().map(|s| (SIGNATURE_FILE, s)),
        )
        .map_err(|refusal| {
            let hint = match refusal {
                tenon_registry::TrustError::Unsigned { .. } if !args.allow_unsigned => {
                    " (install takes signed packages only: --allow-unsigned when the policy allows unsigned ones)"
                }
                _ => "",
            };
            refused(format!("{refusal}{hint}"))
        })?;
    if manifest.name != expected {
        return Err(refused(match &args.name {
            Some(_) => format!(
                "it is plugin `{}`, not `{expected}` (--name)",
                manifest.name
            ),
            None => format!(
                "it is plugin `{}`, but the repository is `{}`: a repository holds the plugin it is named for (--name {} if this one is meant)",
                manifest.name, source.repository, manifest.name
            ),
        }));
    }
    if let Some(existing) = &existing
        && existing.name != manifest.name
    {
        return Err(refused(format!(
            "{} holds plugin `{}`, and a plugin directory keeps its plugin (a running Tenon refuses another in its instance): install into a directory of its own",
            args.dir.display(),
            existing.name
        )));
    }
    let version = semver::Version::parse(&manifest.version)
        .map_err(|e| refused(format!("its version `{}`: {e}", manifest.version)))?;
    // A tag that is a version (asked for, or what `:1.2` resolved to) is this version.
    if let Some(tag) = &pulled.tag
        && let Ok(tagged) = semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag))
        && tagged != version
    {
        return Err(refused(format!(
            "it is tagged {tag} but its plugin.toml says version {}: the tag does not name this version",
            manifest.version
        )));
    }
    if let Some(existing) = &existing
        && let Ok(installed) = semver::Version::parse(&existing.version)
        && version < installed
        && !args.allow_downgrade
    {
        return Err(refused(format!(
            "{} holds version {installed}, a higher one: --allow-downgrade to go back (a revoked version is refused either way: [trust] revoked_digests)",
            args.dir.display()
        )));
    }
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
