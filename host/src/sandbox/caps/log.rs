//! `tenon:plugin/log`: the plugin's log lines, into the host's tracing. Each line is
//! redacted whole, then cut at [`MAX_LOG_LINE`], its line breaks escaped (a plugin
//! cannot forge lines of the host's log); a call writes at most
//! [`LOG_BYTES_PER_CALL`], a plugin version [`LOG_BYTES_PER_MINUTE`]; the excess is
//! dropped, counted, and audited once a minute.

use super::{Call, PluginState, bounded};
use crate::sandbox::bindings::{log, types};
use crate::store::audit::Decision;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::component::{HasData, Linker};

/// Longest log line kept; a longer one is cut.
pub const MAX_LOG_LINE: usize = 4 << 10;
/// Most bytes of log lines one call may write; the rest is dropped.
pub const LOG_BYTES_PER_CALL: usize = 64 << 10;
/// Most bytes of log lines one plugin version may write a minute; the rest is dropped.
pub const LOG_BYTES_PER_MINUTE: u64 = 1 << 20;

/// A plugin version's log allowance per minute, and the count of what it dropped.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// The minute (since the Unix epoch) `used` counts.
    minute: AtomicU64,
    used: AtomicU64,
    /// The minute whose drops were last audited (plus one; 0: never).
    audited: AtomicU64,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl LogBudget {
    /// Take `bytes` from this minute's allowance; false when it would go over.
    pub(super) fn take(&self, bytes: usize) -> bool {
        let minute = crate::model::now_ms() / 60_000;
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.used.store(0, Ordering::Relaxed);
        }
        let before = self.used.fetch_add(bytes as u64, Ordering::Relaxed);
        if before + bytes as u64 > LOG_BYTES_PER_MINUTE {
            self.used.fetch_sub(bytes as u64, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Lines and bytes dropped since the version was loaded.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_lines.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }

    /// Count a call's drops; true when they are the first of this minute (the ones
    /// to audit).
    pub(super) fn note_dropped(&self, lines: u64, bytes: u64) -> bool {
        self.dropped_lines.fetch_add(lines, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        let minute = crate::model::now_ms() / 60_000 + 1;
        self.audited.swap(minute, Ordering::Relaxed) != minute
    }
}

/// What one call logged and dropped.
#[derive(Debug, Default)]
pub struct LogCall {
    logged: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl LogCall {
    /// Count the call's drops and audit them (once a minute per plugin version).
    pub(super) fn finish(&self, call: &Call) {
        let (lines, bytes) = (self.dropped_lines, self.dropped_bytes);
        if lines > 0 && call.ctx.logs.note_dropped(lines, bytes) {
            call.ctx.decide(
                "log",
                "log lines",
                Decision::Deny,
                Some(format!(
                    "{lines} line{} ({bytes} bytes) dropped: over {LOG_BYTES_PER_CALL} bytes a call or {LOG_BYTES_PER_MINUTE} bytes a minute (later drops this minute are only counted)",
                    if lines == 1 { "" } else { "s" }
                )),
            );
        }
    }
}

/// The log capability's view of a call.
#[derive(Debug)]
pub struct LogView<'a> {
    call: &'a Call,
    log: &'a mut LogCall,
}

struct Log;

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

/// Link `tenon:plugin/log` (and the shared types).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> anyhow::Result<()> {
    fn view(state: &mut PluginState) -> LogView<'_> {
        LogView {
            call: &state.call,
            log: &mut state.log,
        }
    }
    types::add_to_linker::<_, Log>(linker, view)?;
    log::add_to_linker::<_, Log>(linker, view)?;
    Ok(())
}

impl types::Host for LogView<'_> {}

impl log::Host for LogView<'_> {
    fn log(&mut self, level: log::Level, message: String) {
        let ctx = &self.call.ctx;
        let message = bounded(&ctx.redact(&message), MAX_LOG_LINE)
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        let len = message.len();
        if self.log.logged + len > LOG_BYTES_PER_CALL || !ctx.logs.take(len) {
            self.log.dropped_lines += 1;
            self.log.dropped_bytes += len as u64;
            return;
        }
        self.log.logged += len;
        let plugin = ctx.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}
