//! The plugin's global allocator on wasm: a bump arena inside the module's own
//! zero-initialised data, then Talc over linear memory grown as needed.
//!
//! The runtime gives each message a fresh instance by default, so most instances
//! live for one call and are thrown away whole. For them:
//!
//! - **Allocation is a pointer bump and freeing does nothing**, except that the block
//!   that ends at the bump pointer is taken back, and the whole arena once nothing in
//!   it is in use any more: nothing allocated needs to outlive the instance, so keeping
//!   free lists is wasted work. An instance kept across messages that holds nothing
//!   from one message to the next starts each message on an empty arena.
//! - **Memory does not grow.** An instance starts with only its stack and data; each
//!   `memory.grow` costs the host an `mprotect` of the pooled slot (and one more when
//!   the slot is reset), with a TLB shootdown on every core that ran the process.
//!   The arena sits in `.bss`: part of the initial memory, nothing in the compiled
//!   component (zero pages are not stored), resident only where touched.
//!
//! An instance that needs more than the arena holds (a big message, or a kept
//! instance that holds on to some of what it allocated) goes on with Talc, which
//! reuses what is freed and grows memory by what an allocation needs and no more: a
//! plugin's memory grant is a hard limit, and a growth it refuses fails the call,
//! so nothing grows speculatively.
//!
//! **One limit it brings.** The component's `cabi_realloc`, which the host calls to
//! hand the guest a string or a list, allocates with this allocator; wasi-libc frees
//! what it lifts that way for itself with its own `free`, which is dlmalloc's and
//! knows nothing of this arena. The environment does (one variable granted by the
//! host made a plugin that reads it trap on a wild pointer), and by the same pattern
//! the arguments and the preopened directories. Tenon gives a plugin none of those
//! (the host's WASI context is empty, and a test checks what a plugin sees), so the
//! two never meet; a host that granted them would need libc's `malloc` family served
//! from here too.
//! Rust's own WASI bindings (random bytes, `wasi:http`, the SDK's imports) free with
//! Rust's allocator, which is this one.
//!
//! The arena's logic is `arena.rs` (tested natively); this installs it over a static.
#![allow(
    unsafe_code,
    reason = "the allocator's static arena; the SDK's only unsafe code is here and in arena.rs"
)]

use crate::arena::Arena;
use core::mem::MaybeUninit;
use talc::wasm::WasmDynamicTalc;

/// Bytes of the arena. Mapping a quote into orders allocates about twelve times the
/// quote's size in all (counted natively: 29 KB for a 2.5 KB quote, 124 KB for
/// 10.6 KB), so the arena holds a message of up to ~80 KB. It is part of the initial
/// memory, which counts against the plugin's memory grant like any other: with the
/// stack and data, a plugin needs a grant of at least 2 MiB to start.
const ARENA_BYTES: usize = 1 << 20;

#[cfg(any(not(target_family = "wasm"), target_feature = "atomics"))]
compile_error!("the SDK's allocator is for single-threaded WebAssembly only");

static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

/// The SDK's global allocator: the arena, then Talc over memory grown as needed.
pub(crate) struct Allocator(Arena<WasmDynamicTalc>);

// SAFETY: compiled only for single-threaded WebAssembly (the `compile_error!` above):
// no threads, no signal handlers, and no re-entry (Talc's source only grows memory).
unsafe impl Sync for Allocator {}

impl core::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// The SDK's global allocator, for the one `#[global_allocator]` in `lib.rs`: the
/// only arena over `ARENA` (a second would hand out memory the first has in use).
pub(crate) const fn allocator() -> Allocator {
    // SAFETY: `ARENA` is private to this module and this is its one arena (the one
    // call is the global allocator's initialiser); Talc's memory comes from
    // `memory.grow`, above the initial memory that holds `ARENA`.
    Allocator(unsafe {
        Arena::new(
            (&raw mut ARENA).cast::<u8>(),
            ARENA_BYTES,
            talc::wasm::new_wasm_dynamic_allocator(),
        )
    })
}

unsafe impl core::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(
        &self,
        ptr: *mut u8,
        layout: core::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
