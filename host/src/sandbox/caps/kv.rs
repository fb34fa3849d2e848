//! `tenon:plugin/kv`: key-value storage in the plugin instance's own namespace, under
//! its quota. Reads see the call's own writes; the writes are buffered and commit
//! with the step's result (a trap, a timeout or a failure leaves nothing behind).

use super::{Call, PluginState, Violation};
use crate::sandbox::bindings::kv;
use crate::store::{KvNamespace, KvWrites, kv_entry_size};
use wasmtime::component::{HasData, Linker};

/// A call's key-value state: its namespace, and the writes it buffered.
#[derive(Debug)]
pub struct KvCall {
    ns: KvNamespace,
    writes: KvWrites,
    /// The committed usage, read at the first write.
    committed: Option<u64>,
    /// What this call's writes add to it (may be negative).
    delta: i64,
}

impl KvCall {
    /// A call on `ns`, nothing written yet.
    pub fn new(ns: KvNamespace) -> KvCall {
        KvCall {
            writes: ns.writes(),
            ns,
            committed: None,
            delta: 0,
        }
    }

    /// Start the next call on the same namespace: the previous call's writes were
    /// taken (or discarded), and its view of the committed usage may be stale.
    pub fn renew(&mut self) {
        self.writes = self.ns.writes();
        self.committed = None;
        self.delta = 0;
    }

    /// The call's writes, to commit with its result (none when it wrote nothing).
    pub fn take_writes(&mut self) -> Option<KvWrites> {
        Some(std::mem::take(&mut self.writes)).filter(|w| !w.is_empty())
    }
}

/// The kv capability's view of a call.
#[derive(Debug)]
pub struct KvView<'a> {
    call: &'a Call,
    kv: Option<&'a mut KvCall>,
}

struct Kv;

impl HasData for Kv {
    type Data<'a> = KvView<'a>;
}

/// Link `tenon:plugin/kv`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> anyhow::Result<()> {
    kv::add_to_linker::<_, Kv>(linker, |state| KvView {
        call: &state.call,
        kv: state.kv.as_mut(),
    })?;
    Ok(())
}

impl kv::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let kv = self.kv()?;
        if let Some(written) = kv.writes.get(&key) {
            return Ok(written.map(<[u8]>::to_vec));
        }
        kv.ns.get(&key).await.map_err(|e| e.to_string())
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.write(key, Some(value)).await
    }

    async fn delete(&mut self, key: String) -> Result<(), String> {
        self.write(key, None).await
    }
}

impl KvView<'_> {
    fn kv(&mut self) -> Result<&mut KvCall, String> {
        self.kv
            .as_deref_mut()
            .ok_or_else(|| "key-value storage is not granted to this plugin".into())
    }

    /// Buffer a write after checking the quota against what is committed plus what
    /// this call wrote so far.
    async fn write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), String> {
        let kv = self.kv()?;
        let old = match kv.writes.get(&key) {
            Some(written) => kv_entry_size(&key, written),
            None => {
                let committed = kv.ns.get(&key).await.map_err(|e| e.to_string())?;
                kv_entry_size(&key, committed.as_deref())
            }
        };
        let kv = self.kv()?;
        let committed = match kv.committed {
            Some(used) => used,
            None => {
                let used = kv.ns.usage().await.map_err(|e| e.to_string())?;
                self.kv()?.committed = Some(used);
                used
            }
        };
        let new = kv_entry_size(&key, value.as_deref());
        let call = self.call;
        let kv = self.kv()?;
        let after = (committed as i64 + kv.delta - old as i64 + new as i64).max(0) as u64;
        if let Some(quota) = kv.ns.quota()
            && new > old
            && after > quota
        {
            let reason = format!(
                "key-value quota of {quota} bytes exceeded ({after} bytes after this write)"
            );
            let violation = Violation::Limit(reason.clone());
            call.violations
                .refuse(&call.ctx, "kv", &key, reason.clone(), violation);
            return Err(reason);
        }
        kv.delta += new as i64 - old as i64;
        kv.writes.put(&key, value);
        Ok(())
    }
}
