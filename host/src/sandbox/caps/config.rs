//! `tenon:plugin/config`: the plugin's configuration, its manifest's defaults
//! overridden by the operator. A key outside its `[config]` and `grants.config` reads
//! as unset, and the refusal is audited.

use super::{Call, PluginState};
use crate::sandbox::bindings::config;
use wasmtime::component::{HasData, Linker};

/// The config capability's view of a call.
#[derive(Debug)]
pub struct ConfigView<'a> {
    call: &'a Call,
}

struct Config;

impl HasData for Config {
    type Data<'a> = ConfigView<'a>;
}

/// Link `tenon:plugin/config`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> anyhow::Result<()> {
    config::add_to_linker::<_, Config>(linker, |state| ConfigView { call: &state.call })?;
    Ok(())
}

impl config::Host for ConfigView<'_> {
    fn get(&mut self, key: String) -> Option<String> {
        let ctx = &self.call.ctx;
        if !ctx.readable_config.contains(&key) {
            self.call.deny(
                "config",
                &key,
                "the key is neither in the manifest's [config] nor in grants.config".into(),
            );
            return None;
        }
        ctx.config.get(&key).cloned()
    }
}
