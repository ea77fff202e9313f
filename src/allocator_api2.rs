//! Budgets for single collections: `impl allocator_api2::alloc::Allocator for
//! LimitedAllocator` (feature `allocator-api2`, on by default).
//!
//! `allocator_api2` implements `Allocator` for `&A` whenever `A: Allocator`, so
//! `Vec::new_in(&budget)` and `hashbrown::HashMap::new_in(&budget)` borrow an instance: the
//! collection's memory is charged to that instance, and past its limit the collection gets
//! `AllocError` (from `try_reserve`, or `handle_alloc_error` from infallible growth) while
//! the rest of the program is unaffected. The bytes come from the inner allocator, so a
//! standalone instance over [`System`](std::alloc::System) limits the collection alone; when
//! the instance is also the global allocator, the collection simply shares the process budget.

use crate::LimitedAllocator;
use allocator_api2::alloc::{AllocError, Allocator};
use core::ptr::NonNull;
use std::alloc::{GlobalAlloc, Layout};

/// A non-null, well-aligned pointer for a zero-sized block of `layout` (never dereferenced
/// and never passed to the inner allocator).
fn dangling(layout: Layout) -> NonNull<u8> {
    // The alignment is a non-zero power of two, so the address is non-null and aligned.
    NonNull::new(layout.align() as *mut u8).unwrap_or(NonNull::dangling())
}

fn block(ptr: NonNull<u8>, len: usize) -> NonNull<[u8]> {
    NonNull::slice_from_raw_parts(ptr, len)
}

/// What the new bytes of a block hold: `allocate`/`grow` leave them as they are, the
/// `_zeroed` forms zero them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Uninit,
    Zeroed,
}

impl<A: GlobalAlloc> LimitedAllocator<A> {
    fn api_fresh(&self, layout: Layout, fill: Fill) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(block(dangling(layout), 0));
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe {
            match fill {
                Fill::Zeroed => GlobalAlloc::alloc_zeroed(self, layout),
                Fill::Uninit => GlobalAlloc::alloc(self, layout),
            }
        };
        NonNull::new(raw)
            .map(|p| block(p, layout.size()))
            .ok_or(AllocError)
    }

    /// Moves a block to `new` by allocating, copying `min(old, new)` bytes and freeing.
    ///
    /// # Safety
    /// `ptr` must be a block of this allocator with layout `old`.
    unsafe fn api_relocate(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        fill: Fill,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let fresh = self.api_fresh(new, fill)?;
        let len = old.size().min(new.size());
        // SAFETY: both blocks are valid for `len` bytes (each is at least that large), and
        // they do not overlap: the new one was just allocated while the old one is live.
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast().as_ptr(), len) };
        // SAFETY: the caller guarantees `ptr` is a block of ours with layout `old`.
        unsafe { Allocator::deallocate(self, ptr, old) };
        Ok(fresh)
    }

    /// `grow` and `grow_zeroed`: a zero-sized old block is a fresh allocation.
    ///
    /// # Safety
    /// `Allocator::grow`'s contract: `ptr` is a block of this allocator with layout `old`,
    /// and `new.size() >= old.size()`.
    unsafe fn api_grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        fill: Fill,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 {
            return self.api_fresh(new, fill);
        }
        // SAFETY: the caller's contract; both sizes are non-zero here.
        unsafe { self.api_resize(ptr, old, new, fill) }
    }

    /// Resizes a non-empty block in place or by `realloc` when the alignment is unchanged,
    /// else by relocating. Zero-sized results are handled by the callers.
    ///
    /// # Safety
    /// `ptr` must be a block of this allocator with layout `old`, `old.size() > 0`, and
    /// `new.size() > 0`.
    unsafe fn api_resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        fill: Fill,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.align() != new.align() {
            // SAFETY: forwarded from the caller.
            return unsafe { self.api_relocate(ptr, old, new, fill) };
        }
        // SAFETY: `ptr` was allocated by us with `old` (caller), `new.size()` is non-zero,
        // and `new` is a valid layout with the same alignment, so rounding it up cannot
        // overflow `isize`.
        let raw = unsafe { GlobalAlloc::realloc(self, ptr.as_ptr(), old, new.size()) };
        let moved = NonNull::new(raw).ok_or(AllocError)?;
        if fill == Fill::Zeroed && new.size() > old.size() {
            // SAFETY: the block is `new.size()` bytes long; the tail past `old.size()` is ours.
            unsafe {
                moved
                    .as_ptr()
                    .add(old.size())
                    .write_bytes(0, new.size() - old.size())
            };
        }
        Ok(block(moved, new.size()))
    }
}

/// Each allocation is charged to this instance's budget exactly like a `GlobalAlloc` call
/// (it *is* one, on the same accounting), so `allocated_bytes()`, the limit, reservations
/// and entering all apply. Zero-sized requests get a dangling, aligned pointer and are never
/// charged or passed on. `grow`/`shrink` use `realloc` (charging or giving back only the
/// difference) when the alignment is unchanged, and allocate-copy-free otherwise; a refused
/// `grow` leaves the old block valid and charged.
///
/// ```
/// use allocator_api2::vec::Vec;
/// use limited_allocator::LimitedAllocator;
///
/// let budget = LimitedAllocator::new(std::alloc::System, 1024);
/// let mut small: Vec<u64, _> = Vec::new_in(&budget);
/// small.try_reserve_exact(100).unwrap(); // 800 bytes
/// assert_eq!(budget.allocated_bytes(), 800);
/// assert!(small.try_reserve_exact(200).is_err()); // 1600 bytes would not fit
/// drop(small);
/// assert_eq!(budget.allocated_bytes(), 0);
/// ```
// SAFETY: blocks come from the inner allocator through `GlobalAlloc`, whose contract gives
// the requested size and alignment; zero-sized blocks are dangling and never dereferenced or
// freed; `grow`/`shrink` keep the old contents (realloc or copy) and free the old block only
// once the new one exists. Memory stays valid while the allocator (or a copy of the `&`
// reference) is alive, and blocks may be freed through any reference to the same instance.
unsafe impl<A: GlobalAlloc> Allocator for LimitedAllocator<A> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.api_fresh(layout, Fill::Uninit)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.api_fresh(layout, Fill::Zeroed)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller guarantees `ptr` is a block of ours allocated with
            // `layout`; non-empty blocks came from `GlobalAlloc::alloc` with that layout.
            unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), layout) };
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract for `grow`, which `api_grow` shares.
        unsafe { self.api_grow(ptr, old, new, Fill::Uninit) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract for `grow_zeroed`, which `api_grow` shares.
        unsafe { self.api_grow(ptr, old, new, Fill::Zeroed) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == 0 {
            // SAFETY: the caller's contract: `ptr` is ours with layout `old`.
            unsafe { Allocator::deallocate(self, ptr, old) };
            return Ok(block(dangling(new), 0));
        }
        // SAFETY: the caller's contract; `new.size() > 0` and so `old.size() > 0`.
        unsafe { self.api_resize(ptr, old, new, Fill::Uninit) }
    }
}
