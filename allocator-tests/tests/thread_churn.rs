//! Thousands of threads start, allocate (from their credit), free, and exit: afterwards
//! the global allocator's count is back exactly where it started, and allocations equal
//! deallocations, although every exiting thread held credit and unpublished counts.

use allocator_tests::{prepare_backtraces, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::thread;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const THREADS: usize = 2000;
const WAVE: usize = 50;

/// What one thread does: a mix of sizes (some past the credit batch), growth by realloc,
/// and one block handed back to the spawning thread to free there.
fn work(seed: usize) -> Box<[u8]> {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    for i in 0..20 {
        let size = 1 + (seed * 7919 + i * 104_729) % (64 << 10);
        keep.push(vec![i as u8; size]);
    }
    let mut grown: Vec<u64> = Vec::new();
    for i in 0..1000 {
        grown.push(i); // reallocations
    }
    if seed.is_multiple_of(10) {
        // Now and then a block larger than a credit batch.
        keep.push(vec![1; 600 << 10]);
    }
    let total: usize = keep.iter().map(|v| v.len()).sum::<usize>() + grown.len();
    assert!(total > 0);
    vec![seed as u8; 1 + seed % 5000].into_boxed_slice()
}

fn churn(threads: usize) -> usize {
    let mut handed_over = 0;
    for wave in 0..threads / WAVE {
        let handles: Vec<_> = (0..WAVE)
            .map(|i| thread::spawn(move || work(wave * WAVE + i)))
            .collect();
        for h in handles {
            // `join` returns after the thread's thread-local destructors ran, so its
            // credit and counts have been posted back by then.
            let block = h.join().expect("a churn thread failed");
            handed_over += block.len();
            drop(block); // freed here, on another thread than the one that allocated it
        }
    }
    handed_over
}

/// The only test of this binary: the global counters see everything the process does.
#[test]
fn thread_churn_leaves_no_drift() {
    prepare_backtraces();
    // Warm up once so that whatever std allocates for good on the first spawn is not
    // counted as drift.
    churn(WAVE);
    let limit = ALLOC.allocated_bytes() + (256 << 20);
    ALLOC.set_limit(limit);
    let before = Counts::of(&ALLOC);

    let handed_over = churn(THREADS);

    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(d.bytes, 0, "drift after {THREADS} threads: {d:?}");
    assert_eq!(d.allocs, d.deallocs, "unbalanced counts: {d:?}");
    assert!(
        d.allocs >= (THREADS * 22) as i128,
        "the churn's allocations were not all counted: {d:?}"
    );
    assert!(d.reallocs >= THREADS as i128, "{d:?}");
    assert_eq!(d.refusals, 0);
    assert!(handed_over > 0);
    assert!(ALLOC.peak_bytes() <= limit);
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
}
