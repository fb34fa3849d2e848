//! The first-party plugins, built by `build.rs` and embedded in the binary, so that
//! `tenon demo` runs from anywhere with nothing to build or download.

use std::path::Path;
use tenon_registry::{MANIFEST_FILE, Manifest};

/// A plugin embedded in the binary.
#[derive(Debug)]
pub struct EmbeddedPlugin {
    /// Its directory name under `plugins/`.
    pub dir: &'static str,
    /// Its `plugin.toml`.
    pub manifest: &'static str,
    /// Its component.
    pub component: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// Write every first-party plugin as `<dir>/<plugin>/{plugin.toml, component}`.
pub fn extract_first_party(dir: &Path) -> anyhow::Result<()> {
    for plugin in FIRST_PARTY {
        let target = dir.join(plugin.dir);
        std::fs::create_dir_all(&target)?;
        let manifest = Manifest::parse(&target.join(MANIFEST_FILE), plugin.manifest)?;
        std::fs::write(target.join(MANIFEST_FILE), plugin.manifest)?;
        std::fs::write(target.join(&manifest.component), plugin.component)?;
    }
    Ok(())
}
