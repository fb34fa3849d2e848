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
#![allow(
    unsafe_code,
    reason = "a global allocator hands out raw memory; the one place the SDK needs unsafe"
)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::mem::MaybeUninit;
use talc::wasm::WasmDynamicTalc;

/// Bytes of the arena. Mapping a quote into orders allocates about twelve times the
/// quote's size in all (counted natively: 29 KB for a 2.5 KB quote, 124 KB for
/// 10.6 KB), so the arena holds a message of up to ~80 KB. It is part of the initial
/// memory, which counts against the plugin's memory grant like any other: with the
/// stack and data, a plugin needs a grant of at least 2 MiB to start.
pub const ARENA_BYTES: usize = 1 << 20;

#[cfg(any(not(target_family = "wasm"), target_feature = "atomics"))]
compile_error!("the SDK's allocator is for single-threaded WebAssembly only");

static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

/// The SDK's global allocator (see the module's docs). There is one: a second over
/// the same arena would hand out memory the first has in use.
pub(crate) struct Allocator {
    /// Offset of the arena's first free byte.
    next: Cell<usize>,
    /// Allocations from the arena not yet freed: at none, the arena starts over.
    live: Cell<usize>,
    /// Where allocations go once the arena is full.
    talc: WasmDynamicTalc,
}

// SAFETY: compiled only for single-threaded WebAssembly (the `compile_error!` above):
// no threads, no signal handlers, and no re-entry (Talc's source only grows memory).
unsafe impl Sync for Allocator {}

impl core::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Allocator")
            .field("arena_used", &self.next.get())
            .finish_non_exhaustive()
    }
}

/// The SDK's global allocator, for the one `#[global_allocator]` in `lib.rs`.
pub(crate) const fn allocator() -> Allocator {
    Allocator {
        next: Cell::new(0),
        live: Cell::new(0),
        talc: talc::wasm::new_wasm_dynamic_allocator(),
    }
}

impl Allocator {
    fn base() -> usize {
        (&raw mut ARENA).addr()
    }

    /// The arena's byte at `offset` (keeping the arena's provenance).
    fn at(offset: usize) -> *mut u8 {
        (&raw mut ARENA).cast::<u8>().wrapping_add(offset)
    }

    fn in_arena(ptr: *mut u8) -> bool {
        ptr.addr().wrapping_sub(Self::base()) < ARENA_BYTES
    }

    /// `layout` from the arena, if it still has room.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = Self::base();
        let start = (base + self.next.get()).checked_next_multiple_of(layout.align())? - base;
        let end = start.checked_add(layout.size())?;
        if end > ARENA_BYTES {
            return None;
        }
        self.next.set(end);
        self.live.set(self.live.get() + 1);
        Some(Self::at(start))
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.talc.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::in_arena(ptr) {
            // SAFETY: not from the arena, so from Talc.
            return unsafe { self.talc.dealloc(ptr, layout) };
        }
        let live = self.live.get() - 1;
        self.live.set(live);
        if live == 0 {
            // Nothing in the arena is in use: all of it is free again.
            self.next.set(0);
        } else {
            let offset = ptr.addr() - Self::base();
            if offset + layout.size() == self.next.get() {
                // The block that ends at the bump pointer is taken back.
                self.next.set(offset);
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::in_arena(ptr) {
            // SAFETY: not from the arena, so from Talc.
            return unsafe { self.talc.realloc(ptr, layout, new_size) };
        }
        let offset = ptr.addr() - Self::base();
        let last = offset + layout.size() == self.next.get();
        if last && offset + new_size <= ARENA_BYTES {
            // The last allocation grows or shrinks where it is.
            self.next.set(offset + new_size);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is nonzero (it exceeds the old size) and rounds to a
        // valid layout with the old alignment (the caller's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the old one holds
            // `layout.size()` bytes, fewer than the new one.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
            // SAFETY: `ptr` came from the arena with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}
