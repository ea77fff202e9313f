//! The calls into a static allocator: out-of-line shims (the shape of `__rust_alloc`) and
//! an `allocator_api2` handle over them for the collection workloads.

use crate::allocators::Pick;
use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

/// `GlobalAlloc::alloc` behind a call, like `__rust_alloc`.
#[inline(never)]
pub(crate) fn alloc_via<P: Pick>(layout: Layout) -> *mut u8 {
    // SAFETY: every layout used here has a non-zero size (the only precondition).
    unsafe { P::get().alloc(layout) }
}

/// `GlobalAlloc::dealloc` behind a call.
///
/// # Safety
/// `ptr` was returned by `alloc_via::<P>(layout)` or `realloc_via::<P>` with this layout,
/// and is not used afterwards.
#[inline(never)]
pub(crate) unsafe fn dealloc_via<P: Pick>(ptr: *mut u8, layout: Layout) {
    // SAFETY: forwarded from this function's contract.
    unsafe { P::get().dealloc(ptr, layout) }
}

/// `GlobalAlloc::realloc` behind a call.
///
/// # Safety
/// As `GlobalAlloc::realloc` on `P::get()`.
#[inline(never)]
pub(crate) unsafe fn realloc_via<P: Pick>(ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
    // SAFETY: forwarded from this function's contract.
    unsafe { P::get().realloc(ptr, layout, new) }
}

/// An `allocator_api2` allocator over the static `P` names, for collections.
pub(crate) struct Via<P>(core::marker::PhantomData<P>);

impl<P> Via<P> {
    pub(crate) const NEW: Self = Via(core::marker::PhantomData);
}

impl<P> Clone for Via<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Via<P> {}

fn dangling(layout: Layout) -> NonNull<[u8]> {
    // An aligned, non-null address without provenance: valid for zero-sized blocks.
    let ptr = NonNull::new(layout.align() as *mut u8).expect("alignment is never zero");
    NonNull::slice_from_raw_parts(ptr, 0)
}

fn block(ptr: *mut u8, size: usize) -> Result<NonNull<[u8]>, AllocError> {
    NonNull::new(ptr)
        .map(|p| NonNull::slice_from_raw_parts(p, size))
        .ok_or(AllocError)
}

// SAFETY: blocks come from the `GlobalAlloc` static that `P` names, which lives for
// `'static`, so they stay valid until deallocated whatever happens to this handle or its
// copies; all handles of one `P` refer to the same allocator, so a block may be freed
// through any of them. Zero-sized requests never reach the `GlobalAlloc` (which forbids
// them) and get a dangling, aligned pointer that is never passed back to it. `grow`/`shrink` use `realloc` only when the alignment is unchanged
// (its precondition) and both sizes are non-zero; otherwise they allocate, copy and free.
unsafe impl<P: Pick> Allocator for Via<P> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        block(alloc_via::<P>(layout), layout.size())
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller guarantees `ptr` is a live block of ours with `layout`, and
            // non-zero blocks came from `alloc_via::<P>`/`realloc_via::<P>`.
            unsafe { dealloc_via::<P>(ptr.as_ptr(), layout) }
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() != 0 && old.align() == new.align() {
            // SAFETY: `ptr` is a live non-zero block of `self.0` with layout `old` (the
            // caller's contract), the alignment is unchanged, and `new.size() >= old.size()
            // > 0` is a valid size for that alignment because `new` is a `Layout`.
            return block(
                unsafe { realloc_via::<P>(ptr.as_ptr(), old, new.size()) },
                new.size(),
            );
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; `old.size() <= new.size()` bytes fit.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), old.size());
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() != 0 && old.align() == new.align() {
            // SAFETY: as in `grow`; `0 < new.size() <= old.size()`.
            return block(
                unsafe { realloc_via::<P>(ptr.as_ptr(), old, new.size()) },
                new.size(),
            );
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; `new.size() <= old.size()` bytes fit.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), new.size());
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }
}
