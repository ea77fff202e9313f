//! The global allocator under a tight budget and 8 threads that allocate only through
//! fallible APIs (`Vec::try_reserve_exact`): the threads run on their per-thread credit, the
//! budget refuses many requests, and the limit is never passed. Each thread adds a block's
//! size to `LIVE` after it was granted and subtracts it before freeing, so `LIVE` never
//! exceeds the bytes granted to the test, which with everything else live in the process
//! must stay under the limit.

use allocator_tests::{prepare_backtraces, xorshift};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Barrier;
use std::thread;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const THREADS: usize = 8;
const ROOM: usize = 4 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// Churns blocks, holding at most `held.capacity()` of them. `held` is allocated by the
/// caller before the limit is set: this must allocate only through fallible APIs, or a
/// refusal aborts the process.
fn work(seed: u64, base: usize, held: &mut Vec<Vec<u8>>) {
    let mut next = xorshift(seed);
    for _ in 0..20_000 {
        let r = next();
        if held.len() == held.capacity() || (!held.is_empty() && r.is_multiple_of(3)) {
            let v = held.swap_remove(r as usize % held.len());
            LIVE.fetch_sub(v.capacity(), SeqCst);
            drop(v);
        } else {
            let size = 1 + (r >> 8) as usize % (ROOM / 8);
            let mut v: Vec<u8> = Vec::new();
            if v.try_reserve_exact(size).is_ok() {
                let now = LIVE.fetch_add(v.capacity(), SeqCst) + v.capacity();
                assert!(
                    base + now <= ALLOC.limit(),
                    "{base} + {now} bytes live, limit {}",
                    ALLOC.limit()
                );
                held.push(v);
            } else {
                REFUSED.fetch_add(1, SeqCst);
            }
        }
    }
    for v in held.drain(..) {
        LIVE.fetch_sub(v.capacity(), SeqCst);
    }
}

/// The only test of this binary (the global counters see everything the process does).
#[test]
fn tight_global_limit_holds_under_threads() {
    prepare_backtraces();
    let ready = Barrier::new(THREADS + 1);
    let go = Barrier::new(THREADS + 1);
    let done = Barrier::new(THREADS + 1);
    let base = AtomicUsize::new(0);
    let mut peak_and_limit = (0, 0);
    thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ready, go, done, base) = (&ready, &go, &done, &base);
                s.spawn(move || {
                    // Register the thread's exit hook (its first slow path) and hand its
                    // credit back, so that the base read below counts only live bytes.
                    drop(vec![0u8; 64]);
                    let mut held: Vec<Vec<u8>> = Vec::with_capacity(64);
                    ALLOC.release_thread_credit();
                    ready.wait();
                    go.wait(); // the main thread has read the base and set the limit
                    work(t as u64 + 1, base.load(SeqCst), &mut held);
                    done.wait();
                })
            })
            .collect();
        ready.wait();
        // Everything live now (harness, threads' bookkeeping) plus ROOM is the budget.
        let now = ALLOC.allocated_bytes();
        base.store(now, SeqCst);
        ALLOC.set_limit(now + ROOM);
        ALLOC.reset_peak(); // the peak from here on
        go.wait();
        done.wait();
        peak_and_limit = (ALLOC.peak_bytes(), ALLOC.limit());
        ALLOC.set_limit(LimitedAllocator::UNLIMITED);
        for t in threads {
            t.join().unwrap();
        }
    });
    let (peak, limit) = peak_and_limit;
    assert!(peak <= limit, "peak {peak} > limit {limit}");
    assert!(REFUSED.load(SeqCst) > 0, "the budget was never reached");
    assert_eq!(LIVE.load(SeqCst), 0);
}
