//! The global allocator the `resnet` binary installs: the system's, with every block of
//! 4 KB or more starting on a cache line.
//!
//! glibc returns large blocks 16 bytes past a page boundary (its chunk header), so every
//! tensor and scratch buffer began 16 bytes into a cache line. A row of 16 floats, the
//! panel kernel's unit of C, then spans two lines instead of one, and every other 8-float
//! store of it straddles a line boundary. On line-aligned buffers (two networks in one
//! process, alternating pairs), ResNet-50's inference at batch 16 ran at median ratios
//! 1.020, 0.996 and 1.035 (20, 20, 40 pairs), at batch 1 1.012 (60), its training step at
//! batch 16 1.024 (8); ResNet-20 at batch 128 1.094 in inference (30) and 1.055 in training
//! (20). The 128→512 product of ResNet-50's second stage alone, 12544 rows on one thread,
//! took 18.8 ms with C aligned against 21.6 (BENCHMARKS.md).
//!
//! A program using this library gets the same by installing it:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: resnet::engine::alloc::CacheLineAlloc = resnet::engine::alloc::CacheLineAlloc;
//! # fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks this large or larger are aligned to [`LINE`]. Below it, the extra alignment
/// would waste more than it could save.
const LARGE: usize = 4096;
/// A cache line of x86-64 and most ARM cores.
const LINE: usize = 64;

/// The system allocator, with blocks of 4 KB or more aligned to a cache line.
pub struct CacheLineAlloc;

/// The layout a request is served with: a function of the request alone, so that `alloc`,
/// `dealloc` and `realloc` agree on every block.
fn served(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LINE {
        // Only a size within 64 bytes of `isize::MAX` cannot be aligned: it is served as
        // asked (and fails there), since an allocator must not panic.
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every call forwards to the system allocator with the layout `served` gives the
// request, and a block is always freed or resized with the layout it was made with.
unsafe impl GlobalAlloc for CacheLineAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `served` keeps the size (nonzero, as the caller promises).
        unsafe { System.alloc(served(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(served(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was made by this allocator for `layout`, so with `served(layout)`.
        unsafe { System.dealloc(ptr, served(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size` is nonzero and valid for the alignment.
        let new = served(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        let old = served(layout);
        // SAFETY: `ptr` was made with `old`; the system allocator keeps a block's alignment
        // across `realloc`, so where both sizes are served alike it can resize in place.
        if new.align() == old.align() {
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Growing past `LARGE` (or shrinking below it): a new block, the bytes both hold
        // copied, the old one freed.
        // SAFETY: `new` is a valid, nonzero layout; the copy stays within both blocks.
        unsafe {
            let moved = System.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 4).unwrap()
    }

    #[test]
    fn large_blocks_start_on_a_cache_line() {
        // Several at once, so that a lucky first address proves nothing alone.
        let blocks: Vec<_> =
            [4096, 5000, 1 << 20, 3 << 20].map(|size| (unsafe { CacheLineAlloc.alloc(layout(size)) }, size)).into();
        for &(p, size) in &blocks {
            assert!(!p.is_null());
            assert_eq!(p as usize % LINE, 0, "{size} bytes at {p:?}");
        }
        let zeroed = unsafe { CacheLineAlloc.alloc_zeroed(layout(1 << 20)) };
        assert_eq!(zeroed as usize % LINE, 0);
        assert!(unsafe { std::slice::from_raw_parts(zeroed, 1 << 20) }.iter().all(|&b| b == 0));
        unsafe { CacheLineAlloc.dealloc(zeroed, layout(1 << 20)) };
        for (p, size) in blocks {
            unsafe { CacheLineAlloc.dealloc(p, layout(size)) };
        }
    }

    #[test]
    fn small_blocks_keep_the_requested_alignment() {
        let p = unsafe { CacheLineAlloc.alloc(layout(100)) };
        assert_eq!(p as usize % 4, 0);
        unsafe { CacheLineAlloc.dealloc(p, layout(100)) };
    }

    #[test]
    fn realloc_across_the_threshold_keeps_the_bytes_and_aligns() {
        unsafe {
            // Small → large → larger → small: each move keeps what both sizes hold.
            let mut p = CacheLineAlloc.alloc(layout(1000));
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            let mut size = 1000;
            for new_size in [10_000, 3 << 20, 2000] {
                p = CacheLineAlloc.realloc(p, layout(size), new_size);
                assert!(!p.is_null());
                if new_size >= LARGE {
                    assert_eq!(p as usize % LINE, 0, "{new_size} bytes at {p:?}");
                }
                let kept = size.min(new_size).min(1000);
                assert!((0..kept).all(|i| *p.add(i) == i as u8), "bytes lost growing {size} → {new_size}");
                size = new_size;
            }
            CacheLineAlloc.dealloc(p, layout(size));
        }
    }
}
