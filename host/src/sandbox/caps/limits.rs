//! The memory limit of a call, over all of its store's memories together (a component
//! can have several), recording each refusal.

use super::{PluginContext, Violation, Violations};
use std::sync::Arc;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// The store's resource limiter.
pub(crate) struct Limiter {
    inner: StoreLimits,
    /// Bytes of every memory of the store together.
    total: usize,
    ctx: Arc<PluginContext>,
    violations: Violations,
}

impl Limiter {
    /// The limits of a plugin version, recording into the call's violations.
    pub(crate) fn new(ctx: Arc<PluginContext>, violations: Violations) -> Limiter {
        Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(ctx.memory_bytes())
                .instances(16)
                .tables(64)
                .memories(8)
                .build(),
            total: 0,
            ctx,
            violations,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        let allowed = total <= self.ctx.memory_bytes()
            && self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.total = total;
        } else {
            let limit = self.ctx.grants.memory_mib;
            let reason = format!(
                "growth from {} to {} KiB refused: the limit is {limit} MiB over all the plugin's memories",
                current >> 10,
                desired >> 10
            );
            let violation = Violation::Limit(format!(
                "memory limit of {limit} MiB reached (growth to {} KiB refused)",
                total >> 10
            ));
            self.violations.refuse(
                &self.ctx,
                "memory",
                &format!("{limit} MiB"),
                reason,
                violation,
            );
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
