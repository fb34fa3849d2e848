//! The plugin's global allocator on wasm: Talc, fed first from an arena inside the
//! module's own zero-initialised data, then from linear memory grown page by page.
//!
//! Why an arena: the runtime gives each message a fresh instance by default, and an
//! instance starts with only its stack and data in memory. Growing memory from there
//! is cheap in WASM but not in the host: each `memory.grow` changes the protection
//! of pages in the pooled slot (an `mprotect`, with a TLB shootdown on every core
//! that ran the process), and resetting the slot for the next instance changes it
//! back. The arena sits in `.bss`, so it is part of the initial memory (no growth for
//! a message that fits in it), costs nothing in the compiled component (zero pages
//! are not stored), and only the pages an instance touches become resident.
//!
//! Past the arena, memory grows by what an allocation needs and no more, as Talc's
//! own `WasmGrowAndExtend` does: a plugin's memory grant is a hard limit, and a
//! growth it refuses fails the call, so the allocator never grows speculatively.

#![allow(
    unsafe_code,
    reason = "an allocator's source hands out raw memory; the one place the SDK needs unsafe"
)]

use core::alloc::Layout;
use core::arch::wasm32::memory_grow;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use talc::base::Talc;
use talc::base::binning::Binning;
use talc::cell::TalcSyncCell;
use talc::source::Source;
use talc::wasm::WasmBinning;

/// Bytes of the arena: a ~10 KB quote mapped into orders needs ~200 KB of heap at
/// its peak, so most messages never grow memory. It counts against the plugin's
/// memory grant like any other memory (grants are whole MiB: any grant holds it).
pub const ARENA_BYTES: usize = 512 << 10;

const PAGE: usize = 64 << 10;

static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

/// The allocator's source of memory: the arena once, then growth.
#[derive(Debug)]
pub struct ArenaThenGrow {
    arena_claimed: bool,
    /// The end of the heap grown last, to extend it when memory grows again.
    end: Option<NonNull<u8>>,
}

/// The type of the SDK's global allocator.
pub type Allocator = TalcSyncCell<ArenaThenGrow, WasmBinning>;

/// The SDK's global allocator (see the module's docs).
pub const fn allocator() -> Allocator {
    TalcSyncCell::new_wasm(ArenaThenGrow {
        arena_claimed: false,
        end: None,
    })
}

// SAFETY: `acquire` allocates nothing itself; it hands Talc the arena (memory nothing
// else uses: the static is private to this module) and then memory fresh from
// `memory.grow` (beyond everything in use).
unsafe impl Source for ArenaThenGrow {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        if !talc.source.arena_claimed {
            talc.source.arena_claimed = true;
            // SAFETY: see above; claimed once.
            let claimed = unsafe { talc.claim((&raw mut ARENA).cast(), ARENA_BYTES) };
            if claimed.is_some() {
                // Talc retries the allocation, and comes back here if it does not fit.
                return Ok(());
            }
        }
        let pages = pages_for(layout);
        let previous = memory_grow::<0>(pages);
        if previous == usize::MAX {
            return Err(());
        }
        let base = (previous * PAGE) as *mut u8;
        let bytes = pages * PAGE;
        // SAFETY: the pages were just added to linear memory; nothing else knows them.
        let end = unsafe {
            match talc.source.end.take() {
                Some(end) if end.as_ptr() == base => Some(talc.extend(end, base.add(bytes))),
                _ => talc.claim(base, bytes),
            }
        };
        talc.source.end = end;
        Ok(())
    }
}

/// Pages a new heap needs to hold `layout`, with Talc's per-heap and per-chunk
/// overhead (generously: a page too many is cheaper than a second growth).
fn pages_for(layout: Layout) -> usize {
    let overhead = 4 * talc::base::CHUNK_UNIT + layout.align();
    layout.size().saturating_add(overhead).div_ceil(PAGE)
}
