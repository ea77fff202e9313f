//! Entered reservations on the global allocator: a per-query budget for ordinary
//! collections, with other threads unaffected.

use limited_allocator::{LimitedAllocator, Overflow};
use std::alloc::System;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// The tests compare process-wide numbers: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_query_cannot_take_more_than_it_was_granted() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.set_refusal_reporting(false);
    let query = ALLOC.try_reserve(1 << 20).unwrap();
    query.set_overflow(Overflow::Refuse);
    let before = ALLOC.allocated_bytes();
    let (ok, refused) = {
        let _inside = query.enter();
        let mut ok: Vec<u8> = Vec::new();
        let fits = ok.try_reserve_exact(512 << 10).is_ok();
        let mut big: Vec<u8> = Vec::new();
        let refused = big.try_reserve_exact(1 << 20).is_err();
        (fits.then_some(ok), refused)
    };
    assert!(ok.is_some() && refused);
    // Left everywhere: the 512 KiB still live are plain memory now (`used` let go).
    assert_eq!((query.used(), query.peak_used()), (0, 512 << 10));
    assert_eq!(query.refusals(), 1);
    // Outside the guard, the same request is served from the shared budget.
    let mut big: Vec<u8> = Vec::new();
    assert!(big.try_reserve_exact(1 << 20).is_ok());
    drop(big);
    // Freed outside: back to the shared budget, no drift.
    drop(ok);
    assert!(ALLOC.allocated_bytes() <= before);
    drop(query);
}

#[test]
fn workers_share_one_query_budget() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let query = ALLOC.try_reserve(8 << 20).unwrap();
    query.set_overflow(Overflow::Refuse);
    let results: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let _inside = query.enter();
                    let mut v: Vec<u64> = Vec::new();
                    v.try_reserve_exact(100_000).unwrap(); // 800 KB each
                    v.extend(0..100_000);
                    v.iter().sum::<u64>() as usize
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|&s| s == 4_999_950_000));
    assert!(query.peak_used() >= 800_000, "{}", query.peak_used());
    assert!(query.peak_used() <= 8 << 20);
    assert_eq!(query.refusals(), 0);
}
