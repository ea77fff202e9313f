//! Blocks larger than a credit batch (256 KiB) that the thread's credit cannot serve or
//! hold are charged and released directly, exactly their size on the shared counter: these
//! pin that path's numbers (exact on one thread, the limit held on many, refusals right,
//! the slack bound kept near the limit).
//!
//! These tests assert behaviour only, never timings.

use std::alloc::GlobalAlloc;
use std::sync::{mpsc, Arc};

use crate::common::*;

/// 4 KiB to 1 MiB, log-uniform (the shape of the `mixed_4KiB_1MiB` bench): a third of
/// them above 256 KiB.
fn mixed_size(next: &mut impl FnMut() -> u64) -> usize {
    let shift = 12 + next() % 9;
    ((1usize << shift) + (next() as usize % (1usize << shift))).min(1 << 20)
}

/// One thread, 16 live blocks of 4 KiB-1 MiB, the oldest freed for each new one (and
/// sometimes a realloc across the 256 KiB line), at a roomy and at a tight limit:
/// `allocated_bytes`, `peak_bytes` and the counts equal a model's after every step, and a
/// block is granted exactly when it fits `limit - live`.
#[test]
fn large_blocks_on_one_thread_keep_every_number_exact() {
    for limit in [1 << 30, 6 << 20, 3 << 20] {
        let a = quiet(limit);
        let mut next = xorshift(0xb16 + limit as u64);
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        let (mut used, mut peak) = (0usize, 0usize);
        let (mut allocs, mut frees, mut reallocs, mut refusals) = (0u64, 0u64, 0u64, 0u64);
        for step in 0..3000 {
            if live.len() == 16 {
                let (p, size) = live.remove(0);
                free(&a, p, size);
                used -= size;
                frees += 1;
            }
            let size = mixed_size(&mut next);
            let fits = size <= limit - used;
            match alloc(&a, size) {
                Some(p) => {
                    assert!(fits, "step {step}: {size} granted over {used} of {limit}");
                    live.push((p, size));
                    used += size;
                    allocs += 1;
                }
                None => {
                    assert!(!fits, "step {step}: {size} refused at {used} of {limit}");
                    refusals += 1;
                }
            }
            peak = peak.max(used);
            if step % 7 == 0 && !live.is_empty() {
                // Grow or shrink a block across the direct threshold.
                let i = next() as usize % live.len();
                let (p, old) = live[i];
                let new = mixed_size(&mut next);
                let fits = new <= old || new - old <= limit - used;
                // SAFETY: `p` is live, allocated by `a` with `layout(old)`; `new >= 1`.
                let q = unsafe { a.realloc(p, layout(old), new) };
                assert_eq!(!q.is_null(), fits, "step {step}: realloc {old} -> {new}");
                if !q.is_null() {
                    live[i] = (q, new);
                    used = used - old + new;
                    reallocs += 1;
                    peak = peak.max(used);
                } else {
                    refusals += 1;
                }
            }
            if step % 500 == 250 {
                a.reset_peak();
                peak = used;
            }
            assert_eq!(a.allocated_bytes(), used, "step {step}, limit {limit}");
            assert_eq!(a.peak_bytes(), peak, "step {step}, limit {limit}");
            let s = a.stats();
            assert_eq!(
                (s.allocations, s.deallocations, s.reallocations, s.refusals),
                (allocs, frees, reallocs, refusals),
                "step {step}, limit {limit}"
            );
        }
        for (p, size) in live.drain(..) {
            free(&a, p, size);
        }
        assert_eq!(a.allocated_bytes(), 0);
        assert_eq!(a.peak_bytes(), peak);
        if limit == 1 << 30 {
            assert_eq!(refusals, 0);
        } else {
            assert!(refusals > 0, "limit {limit} was never reached");
        }
    }
}

/// Eight threads churn mostly large blocks at tight budgets. As in `fast_path.rs`, each
/// thread counts a block in `live` only while it holds it, so `live` never exceeds the
/// bytes granted at that moment, which must never exceed the limit.
#[test]
fn large_blocks_hold_the_limit_on_many_threads() {
    const THREADS: usize = 8;
    for limit in [3 << 19, 3 << 20, 6 << 20] {
        let a = quiet(limit);
        let refused = churn_on_threads(&a, THREADS, 4000, 8, 0x1a4e, |r| {
            // Mostly above 256 KiB, some small ones to keep credit.
            if r.is_multiple_of(4) {
                1 + (r >> 8) as usize % 4096
            } else {
                (200 << 10) + (r >> 8) as usize % (900 << 10)
            }
        });
        // One thread alone reaches the two tighter budgets (8 blocks of ~650 KiB).
        if limit <= 3 << 20 {
            assert!(refused > 0, "limit {limit} was never reached");
        }
        assert_back_at_zero(&a, limit, refused);
    }
}

/// A large block that does not fit returns null and is counted with its size; one that
/// fits only with this thread's own credit counted as free room (its credit is not usage)
/// is granted.
#[test]
fn a_refused_large_block_returns_null_with_the_right_numbers() {
    const LIMIT: usize = 4 << 20;
    let a = quiet(LIMIT);
    // A small block: this thread now holds a batch of credit too.
    let small = alloc(&a, 1000).unwrap();
    let big = alloc(&a, 3 << 20).unwrap();
    assert_eq!(a.allocated_bytes(), 1000 + (3 << 20));
    // 1 MiB does not fit the 1 MiB - 1000 left.
    assert!(alloc(&a, 1 << 20).is_none());
    let s = a.stats();
    assert_eq!(
        (s.refusals, s.refused_bytes, s.largest_refusal_bytes),
        (1, 1 << 20, 1 << 20)
    );
    assert_eq!((s.allocations, s.current_bytes), (2, 1000 + (3 << 20)));
    assert_eq!(a.peak_bytes(), 1000 + (3 << 20));
    // Exactly what is left fits, whatever credit this thread holds.
    let rest = LIMIT - 1000 - (3 << 20);
    let last = alloc(&a, rest).expect("exactly the headroom left");
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (LIMIT, LIMIT));
    assert_eq!(a.stats().refusals, 1);
    free(&a, last, rest);
    free(&a, big, 3 << 20);
    free(&a, small, 1000);
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (0, LIMIT));
    let s = a.stats();
    assert_eq!((s.allocations, s.deallocations), (3, 3));
}

/// A large block near the limit shrinks the headroom, and with it the hold: the credit this
/// thread keeps (which other threads read as usage) stays within 1/8 of the headroom left.
#[test]
fn a_large_block_near_the_limit_trims_the_threads_credit() {
    const LIMIT: usize = 8 << 20;
    let a = Arc::new(quiet(LIMIT));
    let (go, wait_go) = mpsc::channel::<()>();
    let (done, wait_done) = mpsc::channel::<()>();
    let worker = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            // A small block takes a full batch of credit (256 KiB far from the limit)...
            let small = Block(alloc(&a, 1000).unwrap(), 1000);
            // ...then a large one, charged directly, leaves less than 1 MiB of headroom.
            let big = Block(alloc(&a, 7 << 20).unwrap(), 7 << 20);
            done.send(()).unwrap();
            let _ = wait_go.recv();
            free(&a, big.0, big.1);
            free(&a, small.0, small.1);
        })
    };
    wait_done.recv().unwrap();
    let live = 1000 + (7 << 20);
    let slack = a.allocated_bytes() - live;
    assert!(
        slack <= (LIMIT - live) / 8,
        "slack {slack} over 1/8 of the headroom {}",
        LIMIT - live
    );
    go.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(a.allocated_bytes(), 0);
    assert!(a.peak_bytes() <= LIMIT);
}

/// A raw pointer that may cross threads (the blocks are plain bytes).
struct Block(*mut u8, usize);
// SAFETY: a block is owned by whichever thread holds the `Block`; nothing aliases it.
unsafe impl Send for Block {}
