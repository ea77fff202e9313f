//! Helpers shared by the tests on standalone instances (each `tests/*.rs` is its own crate
//! and uses only some of them).
#![allow(dead_code)]

use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};

/// A byte layout of `size` with 8-byte alignment.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates through the instance; None when refused.
pub fn alloc(a: &LimitedAllocator, size: usize) -> Option<*mut u8> {
    // SAFETY: sizes used by the tests are non-zero.
    let p = unsafe { a.alloc(layout(size)) };
    (!p.is_null()).then_some(p)
}

/// Frees a block from [`alloc`].
pub fn free(a: &LimitedAllocator, p: *mut u8, size: usize) {
    // SAFETY: every caller passes a block it got from `alloc(a, size)`, once.
    unsafe { a.dealloc(p, layout(size)) }
}

/// A standalone instance that does not write refusal lines to the test output.
pub fn quiet(limit: usize) -> LimitedAllocator {
    let a = LimitedAllocator::new(System, limit);
    a.set_refusal_reporting(false);
    a
}

/// A deterministic xorshift stream.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
