//! A bump arena in front of another allocator: the logic of the plugin's allocator
//! (`heap.rs` installs it on wasm and says why). Target-independent, so that its
//! tests run natively.
#![allow(
    unsafe_code,
    reason = "an allocator hands out raw memory; the SDK's only unsafe code is here and in heap.rs"
)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

/// Allocations from `len` bytes at `start` by a pointer bump, then from `fallback`.
/// Freeing takes back the block that ends at the bump pointer, and the whole arena
/// once nothing in it is in use.
pub(crate) struct Arena<F> {
    start: *mut u8,
    len: usize,
    /// Offset of the arena's first free byte.
    next: Cell<usize>,
    /// Allocations from the arena not yet freed: at none, the arena starts over.
    live: Cell<usize>,
    /// Where allocations go once the arena is full.
    fallback: F,
}

impl<F> core::fmt::Debug for Arena<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len)
            .field("used", &self.next.get())
            .field("live", &self.live.get())
            .finish_non_exhaustive()
    }
}

impl<F> Arena<F> {
    /// An arena over `len` bytes at `start`.
    ///
    /// # Safety
    /// The bytes are the arena's alone for as long as it is used: nothing else reads
    /// or writes them, and no other arena is made over them.
    pub(crate) const unsafe fn new(start: *mut u8, len: usize, fallback: F) -> Self {
        Arena {
            start,
            len,
            next: Cell::new(0),
            live: Cell::new(0),
            fallback,
        }
    }

    /// Where `ptr` is in the arena, if it is.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        let offset = ptr.addr().wrapping_sub(self.start.addr());
        (offset < self.len).then_some(offset)
    }

    /// `layout` from the arena, if it still has room.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.start.addr();
        let start = (base + self.next.get()).checked_next_multiple_of(layout.align())? - base;
        let end = start.checked_add(layout.size())?;
        if end > self.len {
            return None;
        }
        self.next.set(end);
        self.live.set(self.live.get() + 1);
        Some(self.start.wrapping_add(start))
    }
}

// SAFETY: blocks from the arena lie within it (`bump` checks the end), are aligned
// (`bump` rounds the address up), and never overlap a live block: every live block
// ends at or below `next`, which only moves down to the start of the block ending
// there (nothing live above it) or to 0 once no block is live. Anything else comes
// from and goes back to `fallback`, whose memory is outside the arena (`Arena::new`).
unsafe impl<F: GlobalAlloc> GlobalAlloc for Arena<F> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.fallback.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(offset) = self.offset_of(ptr) else {
            // SAFETY: not from the arena, so from the fallback.
            return unsafe { self.fallback.dealloc(ptr, layout) };
        };
        let live = self.live.get() - 1;
        self.live.set(live);
        if live == 0 {
            // Nothing in the arena is in use: all of it is free again.
            self.next.set(0);
        } else if offset + layout.size() == self.next.get() {
            // The block that ends at the bump pointer is taken back.
            self.next.set(offset);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = self.offset_of(ptr) else {
            // SAFETY: not from the arena, so from the fallback.
            return unsafe { self.fallback.realloc(ptr, layout, new_size) };
        };
        let last = offset + layout.size() == self.next.get();
        if last && new_size <= self.len - offset {
            // The block that ends at the bump pointer grows or shrinks where it is.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;
    use std::alloc::System;

    /// A random walk of allocations, frees and reallocations (sizes up to past the
    /// arena, alignments up to 128, the last block and others), every block filled
    /// with its own mark and checked whole before it is freed or moved: a block
    /// handed out twice, misaligned or not copied right shows as a wrong byte.
    #[test]
    fn blocks_stay_whole_aligned_and_apart_and_the_arena_starts_over_once_empty() {
        const LEN: usize = 64 << 10;
        let mut memory = vec![0u128; LEN / 16];
        // SAFETY: the vector is the arena's alone until the end of the test.
        let arena = unsafe { Arena::new(memory.as_mut_ptr().cast::<u8>(), LEN, System) };
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        // (pointer, layout, mark)
        let mut blocks: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let check = |(ptr, layout, mark): &(*mut u8, Layout, u8)| {
            assert_eq!(ptr.addr() % layout.align(), 0);
            // SAFETY: a live block of `layout.size()` bytes.
            let bytes = unsafe { core::slice::from_raw_parts(*ptr, layout.size()) };
            assert!(bytes.iter().all(|b| b == mark), "block {mark} overwritten");
        };
        let in_arena = |blocks: &[(*mut u8, Layout, u8)]| {
            blocks
                .iter()
                .filter(|(p, ..)| arena.offset_of(*p).is_some())
                .count()
        };
        for step in 0..20_000u32 {
            let mark = (step % 251) as u8;
            match random(10) {
                0..=3 => {
                    let size = match random(20) {
                        0 => 1 + random(3 * LEN),
                        _ => 1 + random(2048),
                    };
                    let layout = Layout::from_size_align(size, 1 << random(8)).unwrap();
                    // SAFETY: a nonzero size.
                    let ptr = unsafe { arena.alloc(layout) };
                    assert!(!ptr.is_null());
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { ptr.write_bytes(mark, size) };
                    blocks.push((ptr, layout, mark));
                }
                4..=7 if !blocks.is_empty() => {
                    // Mostly the newest block (as a program frees), sometimes any.
                    let i = match random(2) {
                        0 => blocks.len() - 1,
                        _ => random(blocks.len()),
                    };
                    let block = blocks.swap_remove(i);
                    check(&block);
                    // SAFETY: a live block, with its layout.
                    unsafe { arena.dealloc(block.0, block.1) };
                }
                8..=9 if !blocks.is_empty() => {
                    let i = random(blocks.len());
                    let (ptr, layout, old_mark) = blocks[i];
                    check(&blocks[i]);
                    let new_size = 1 + random(2 * layout.size() + 64);
                    // SAFETY: a live block, its layout, a nonzero size.
                    let new = unsafe { arena.realloc(ptr, layout, new_size) };
                    assert!(!new.is_null());
                    let kept = layout.size().min(new_size);
                    // SAFETY: the new block holds `new_size` bytes.
                    let bytes = unsafe { core::slice::from_raw_parts(new, kept) };
                    assert!(bytes.iter().all(|b| *b == old_mark), "realloc lost bytes");
                    // SAFETY: as above.
                    unsafe { new.write_bytes(mark, new_size) };
                    let layout = Layout::from_size_align(new_size, layout.align()).unwrap();
                    blocks[i] = (new, layout, mark);
                }
                _ => {}
            }
            assert_eq!(arena.live.get(), in_arena(&blocks));
            for (ptr, layout, _) in &blocks {
                if let Some(offset) = arena.offset_of(*ptr) {
                    assert!(offset + layout.size() <= arena.next.get());
                }
            }
            if step % 100 == 0 {
                blocks.iter().for_each(check);
            }
        }
        for block in blocks.drain(..) {
            check(&block);
            // SAFETY: a live block, with its layout.
            unsafe { arena.dealloc(block.0, block.1) };
        }
        assert_eq!((arena.live.get(), arena.next.get()), (0, 0));
    }
}
