//! Instances come and go: a registry slot reused by a new instance never inherits the old
//! one's per-thread credit or its mailbox, and more instances than there are cached slots
//! still account exactly.

use limited_allocator::LimitedAllocator;
use std::alloc::GlobalAlloc;
use std::sync::{Arc, Barrier};
use std::thread;

mod common;
use common::*;

/// Allocates and frees a spread of sizes so that the calling thread holds credit.
fn take_credit(a: &LimitedAllocator) {
    for size in [100, 5000, 70_000, 3] {
        // SAFETY: non-zero size; freed right away with the same layout.
        unsafe {
            let p = a.alloc(layout(size));
            assert!(!p.is_null());
            a.dealloc(p, layout(size));
        }
    }
    assert_eq!(a.allocated_bytes(), 0);
}

/// The whole limit is available, to the byte, and no more.
fn assert_fresh(b: &LimitedAllocator, limit: usize) {
    assert_eq!(b.allocated_bytes(), 0);
    // SAFETY: non-zero sizes; each granted block is freed once with its layout.
    unsafe {
        let p = b.alloc(layout(limit));
        assert!(!p.is_null(), "the full limit is not available");
        assert!(
            b.alloc(layout(1)).is_null(),
            "a byte past the limit was granted"
        );
        assert_eq!(b.allocated_bytes(), limit);
        b.dealloc(p, layout(limit));
    }
    assert_eq!(b.allocated_bytes(), 0);
}

#[test]
fn a_new_instance_never_spends_a_dropped_instances_credit() {
    for _ in 0..300 {
        let a = quiet(1 << 20);
        take_credit(&a); // this thread now holds credit for `a`
        drop(a);
        let b = quiet(1000);
        assert_fresh(&b, 1000);
        let s = b.stats();
        assert_eq!((s.allocations, s.deallocations, s.refusals), (1, 1, 1));
    }
}

#[test]
fn a_thread_exiting_after_its_instance_died_posts_nothing_to_the_slots_next_owner() {
    let a = Arc::new(quiet(1 << 20));
    let step = Arc::new(Barrier::new(2));
    let t = {
        let (a, step) = (a.clone(), step.clone());
        thread::spawn(move || {
            take_credit(&a);
            drop(a); // the thread holds credit for an instance it no longer references
            step.wait(); // 1
            step.wait(); // 2: the instance is gone and its slot probably reused
        })
    };
    step.wait(); // 1
    drop(a); // the last reference: the instance is dropped, its slot released
             // New instances register (and so claim slots) on their first allocation.
    let fresh: Vec<LimitedAllocator> = (0..8).map(|_| quiet(1 << 20)).collect();
    for b in &fresh {
        take_credit(b);
    }
    step.wait(); // 2
    t.join().unwrap(); // its exit posts the dead instance's credit: it must be dropped
    for b in &fresh {
        assert_fresh(b, 1 << 20);
    }
}

#[test]
fn more_instances_than_cached_slots_account_exactly() {
    const N: usize = 100; // more than the 64 slots with a per-thread cache
    let all: Vec<LimitedAllocator> = (0..N).map(|i| quiet(10_000 + i)).collect();
    let mut blocks = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for size in [1, 10, 100, 1000] {
            // SAFETY: non-zero size; freed below with the same layout.
            let p = unsafe { a.alloc(layout(size + i)) };
            assert!(!p.is_null());
            blocks.push((i, p, size + i));
        }
    }
    let mut cannot_enter = 0;
    for (i, a) in all.iter().enumerate() {
        let live = 1111 + 4 * i;
        assert_eq!(a.allocated_bytes(), live, "instance {i}");
        // Exactly the rest of the limit fits.
        let rest = a.limit() - live;
        // SAFETY: non-zero size; freed right away.
        unsafe {
            assert!(a.alloc(layout(rest + 1)).is_null(), "instance {i}");
            let p = a.alloc(layout(rest));
            assert!(!p.is_null(), "instance {i}");
            a.dealloc(p, layout(rest));
        }
        let r = a.try_reserve(10).unwrap();
        if r.try_enter().is_err() {
            cannot_enter += 1;
        }
    }
    // Instances without a cached slot account exactly but cannot be entered.
    assert!(
        cannot_enter >= N - 64,
        "{cannot_enter} of {N} could not be entered"
    );
    for (i, p, size) in blocks {
        // SAFETY: allocated above by `all[i]` with `layout(size)`; freed once.
        unsafe { all[i].dealloc(p, layout(size)) };
    }
    for (i, a) in all.iter().enumerate() {
        let s = a.stats();
        assert_eq!(
            (s.current_bytes, s.allocations, s.deallocations, s.refusals),
            (0, 5, 5, 1),
            "instance {i}: {s:?}"
        );
        assert_eq!(s.peak_bytes, a.limit(), "instance {i}");
    }
}
