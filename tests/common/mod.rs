//! Helpers shared by the tests on standalone instances (`tests/all/` and
//! `tests/instances.rs`, each of which uses only some of them).
#![allow(dead_code)]

mod xorshift;
pub use xorshift::xorshift;

use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Barrier;

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

/// Runs `threads` threads at once that churn blocks on `a` for `rounds` steps each: free a
/// held block (always when `max_held` are held, else one step in three), otherwise allocate
/// `size(r)` bytes for the step's random `r`. Each thread counts a block in a shared `live`
/// only while it holds it, so `live` never exceeds the bytes granted at that moment, and
/// asserts that it never exceeds the limit. Every block is freed and every thread joined
/// (which waits for their thread-local destructors, which return credit; the scope's end
/// alone does not). Returns how many allocations were refused.
pub fn churn_on_threads(
    a: &LimitedAllocator,
    threads: usize,
    rounds: usize,
    max_held: usize,
    seed: u64,
    size: impl Fn(u64) -> usize + Sync,
) -> usize {
    let limit = a.limit();
    let live = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (live, refused, start, size) = (&live, &refused, &start, &size);
                s.spawn(move || {
                    let mut next = xorshift(seed + t as u64);
                    let mut held: Vec<(*mut u8, usize)> = Vec::with_capacity(max_held);
                    start.wait();
                    for _ in 0..rounds {
                        let r = next();
                        if held.len() == max_held || (!held.is_empty() && r.is_multiple_of(3)) {
                            let (p, size) = held.swap_remove(r as usize % held.len());
                            live.fetch_sub(size, SeqCst);
                            free(a, p, size);
                        } else {
                            let size = size(r);
                            match alloc(a, size) {
                                Some(p) => {
                                    let now = live.fetch_add(size, SeqCst) + size;
                                    assert!(now <= limit, "{now} bytes granted, limit {limit}");
                                    held.push((p, size));
                                }
                                None => {
                                    refused.fetch_add(1, SeqCst);
                                }
                            }
                        }
                    }
                    for (p, size) in held {
                        live.fetch_sub(size, SeqCst);
                        free(a, p, size);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    refused.load(SeqCst)
}

/// After a [`churn_on_threads`] run on `a` under `limit` that counted `refused` refusals:
/// the peak stayed within the limit, and every thread exited and returned its credit, so
/// nothing is charged and the counts match.
pub fn assert_back_at_zero(a: &LimitedAllocator, limit: usize, refused: usize) {
    assert!(a.peak_bytes() <= limit, "peak {} > {limit}", a.peak_bytes());
    assert_eq!(a.allocated_bytes(), 0, "limit {limit}");
    let s = a.stats();
    assert_eq!(s.allocations, s.deallocations, "limit {limit}");
    assert!(s.refusals >= refused as u64);
}
