//! `tenon:plugin/secrets`: the secrets the operator maps to this plugin instance,
//! by the plugin's names for them; nothing else. Each read is audited once a call.

use super::{Call, MAX_TARGET_CHARS, PluginState, bounded};
use crate::sandbox::bindings::secrets;
use crate::store::audit::Decision;
use wasmtime::component::{HasData, Linker};

/// The secrets capability's view of a call.
#[derive(Debug)]
pub struct SecretsView<'a> {
    call: &'a Call,
}

struct Secrets;

impl HasData for Secrets {
    type Data<'a> = SecretsView<'a>;
}

/// Link `tenon:plugin/secrets`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> anyhow::Result<()> {
    secrets::add_to_linker::<_, Secrets>(linker, |state| SecretsView { call: &state.call })?;
    Ok(())
}

impl secrets::Host for SecretsView<'_> {
    fn get(&mut self, name: String) -> Result<String, String> {
        let (ctx, violations) = (&self.call.ctx, &self.call.violations);
        if !ctx.grants.all_secrets().any(|s| *s == name) {
            let reason = "not granted to this plugin".to_owned();
            self.call.deny("secret", &name, reason.clone());
            return Err(format!(
                "secret `{}` is {reason}",
                bounded(&name, MAX_TARGET_CHARS)
            ));
        }
        match ctx.secrets.get(&name) {
            Some(secret) => {
                // Each secret's read is audited once a call, however often it is read.
                if violations.lock().secrets_read.insert(name.clone()) {
                    violations.decide(ctx, "secret", &name, Decision::Allow, None);
                }
                Ok(secret.expose().to_owned())
            }
            None => {
                let reason = "not mapped to this plugin instance by the operator".to_owned();
                violations.decide(ctx, "secret", &name, Decision::Deny, Some(reason.clone()));
                Err(format!("secret `{name}` is {reason}"))
            }
        }
    }
}
