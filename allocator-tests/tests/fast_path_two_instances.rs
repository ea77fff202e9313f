//! The global allocator and a standalone instance used on the same threads: each keeps its
//! own per-thread credit, so traffic on one never shows in the other's numbers, and the
//! standalone budget refuses past its own limit however much credit the global one holds.

use allocator_tests::{prepare_backtraces, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::thread;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

static POOL: LimitedAllocator = LimitedAllocator::new(System, 1 << 20);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Interleaves global allocations (Vecs) with the pool's, on one thread; returns the bytes
/// the pool ended with live (freed by the caller).
fn interleave(seed: usize) -> Vec<(usize, usize)> {
    let mut pool_live = Vec::new();
    let mut global_live: Vec<Vec<u8>> = Vec::new();
    for i in 0..200 {
        global_live.push(vec![1u8; 1 + (seed + i * 37) % 3000]);
        let size = 1 + (seed * 13 + i * 101) % 2000;
        // SAFETY: non-zero size.
        let p = unsafe { POOL.alloc(layout(size)) };
        if !p.is_null() {
            pool_live.push((p as usize, size));
        }
        if i % 3 == 0 {
            global_live.swap_remove(0);
            if let Some((p, size)) = pool_live.pop() {
                // SAFETY: a live block of POOL with this layout, freed once.
                unsafe { POOL.dealloc(p as *mut u8, layout(size)) };
            }
        }
    }
    pool_live
}

/// The only test of this binary (the global counters see everything the process does).
#[test]
fn global_and_standalone_instances_do_not_mix_credit() {
    prepare_backtraces();
    POOL.set_refusal_reporting(false);
    let global_before = Counts::of(&ALLOC);

    // On this thread: the pool's count is exact whatever the global one does.
    let live = interleave(1);
    let expected: usize = live.iter().map(|&(_, s)| s).sum();
    assert_eq!(POOL.allocated_bytes(), expected);
    // The pool refuses past its own limit, although this thread holds global credit.
    let room = POOL.limit() - POOL.allocated_bytes();
    // SAFETY: non-zero sizes; a granted block is freed once below.
    unsafe {
        assert!(POOL.alloc(layout(room + 1)).is_null());
        let p = POOL.alloc(layout(room));
        assert!(!p.is_null());
        POOL.dealloc(p, layout(room));
    }
    for (p, size) in live {
        // SAFETY: live blocks of POOL with these layouts, freed once.
        unsafe { POOL.dealloc(p as *mut u8, layout(size)) };
    }
    assert_eq!(POOL.allocated_bytes(), 0);

    // On many threads, each exiting with credit of both instances.
    for wave in 0..20 {
        let handles: Vec<_> = (0..8)
            .map(|t| thread::spawn(move || interleave(wave * 8 + t + 2)))
            .collect();
        for h in handles {
            for (p, size) in h.join().unwrap() {
                // SAFETY: live blocks of POOL handed over by the exited thread.
                unsafe { POOL.dealloc(p as *mut u8, layout(size)) };
            }
        }
    }
    assert_eq!(POOL.allocated_bytes(), 0);
    let s = POOL.stats();
    assert_eq!(s.allocations, s.deallocations);
    assert!(s.peak_bytes <= POOL.limit());

    // The global allocator saw none of the pool's bytes: everything above was freed.
    let global = Counts::of(&ALLOC).since(&global_before);
    assert_eq!(global.allocs, global.deallocs, "{global:?}");
}
