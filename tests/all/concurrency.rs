//! Threads racing for one standalone budget: the limit holds at every moment, refusals
//! happen, and once every thread has exited the counters are back to zero exactly.
//!
//! The test tracks the bytes it was granted in its own atomic: it adds after a successful
//! allocation and subtracts *before* a free, so the tracked figure never exceeds what the
//! allocator has really handed out. If that figure ever passes the limit, the allocator
//! granted more than its budget.

use crate::common::xorshift;
use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;

const THREADS: usize = 8;
const OPS_PER_THREAD: usize = 50_000;
const MAX_SIZE: usize = 8 << 10;
/// Blocks a thread keeps at most before it frees one anyway.
const MAX_LIVE: usize = 64;

/// Uniform in `lo..=hi`, from a stream of the tests' one generator.
fn range(rng: &mut impl FnMut() -> u64, lo: usize, hi: usize) -> usize {
    lo + (rng() % (hi - lo + 1) as u64) as usize
}

fn quiet(exact: bool, limit: usize) -> Arc<LimitedAllocator> {
    let a = if exact {
        LimitedAllocator::new_exact(System, limit)
    } else {
        LimitedAllocator::new(System, limit)
    };
    a.set_refusal_reporting(false);
    Arc::new(a)
}

/// Granted bytes as the test sees them; panics the moment they pass the limit.
struct Granted {
    bytes: AtomicUsize,
    limit: usize,
}

impl Granted {
    fn add(&self, n: usize) {
        let now = self.bytes.fetch_add(n, SeqCst) + n;
        assert!(
            now <= self.limit,
            "granted {now} bytes under a limit of {}",
            self.limit
        );
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, SeqCst);
    }
}

/// A live block: pointer, layout, and the tag byte written at both ends.
struct Block {
    ptr: *mut u8,
    layout: Layout,
    tag: u8,
}

impl Block {
    fn stamp(&self) {
        // SAFETY: `ptr` is a live block of `layout.size() >= 1` bytes that this thread owns.
        unsafe {
            self.ptr.write(self.tag);
            self.ptr.add(self.layout.size() - 1).write(self.tag);
        }
    }

    fn check(&self) {
        // SAFETY: as in `stamp`; the bytes were written by `stamp` (realloc preserves the
        // first `min(old, new)` bytes, and we re-stamp after every realloc).
        let (first, last) = unsafe { (*self.ptr, *self.ptr.add(self.layout.size() - 1)) };
        assert_eq!(
            (first, last),
            (self.tag, self.tag),
            "a block was overwritten"
        );
    }
}

/// One worker: random allocs, frees, reallocs (grow and shrink) and reservations.
fn worker(a: &LimitedAllocator, granted: &Granted, seed: u64) {
    let mut rng = xorshift(seed);
    let mut live: Vec<Block> = Vec::with_capacity(MAX_LIVE);
    let mut reservations = Vec::new();
    for i in 0..OPS_PER_THREAD {
        let roll = range(&mut rng, 0, 99);
        if live.len() >= MAX_LIVE || (roll < 30 && !live.is_empty()) {
            // Free a random block.
            let b = live.swap_remove(range(&mut rng, 0, live.len() - 1));
            b.check();
            granted.sub(b.layout.size());
            // SAFETY: `b.ptr` was allocated by `a` with `b.layout` and is freed once.
            unsafe { a.dealloc(b.ptr, b.layout) };
        } else if roll < 50 && !live.is_empty() {
            // Realloc a random block to a random size.
            let idx = range(&mut rng, 0, live.len() - 1);
            let b = &mut live[idx];
            b.check();
            let old = b.layout.size();
            let new = range(&mut rng, 1, MAX_SIZE);
            if new < old {
                granted.sub(old - new);
            }
            // SAFETY: `b.ptr` is live, allocated by `a` with `b.layout`; `new` is non-zero
            // and, rounded up to the alignment, far below `isize::MAX`.
            let p = unsafe { a.realloc(b.ptr, b.layout, new) };
            if p.is_null() {
                assert!(new > old, "a shrinking realloc was refused");
                b.check(); // the old block is intact
            } else {
                if new > old {
                    granted.add(new - old);
                }
                b.ptr = p;
                b.layout = Layout::from_size_align(new, b.layout.align()).unwrap();
                b.stamp();
            }
        } else if roll < 55 {
            // Reserve headroom for a while (dropped a few operations later).
            let bytes = range(&mut rng, 1, MAX_SIZE);
            if let Ok(r) = a.try_reserve(bytes) {
                granted.add(bytes);
                reservations.push((r, bytes));
            }
            if reservations.len() > 2 {
                let (r, bytes) = reservations.remove(0);
                granted.sub(bytes);
                drop(r);
            }
        } else {
            let size = range(&mut rng, 1, MAX_SIZE);
            let align = 1 << range(&mut rng, 0, 6);
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe { a.alloc(layout) };
            if !p.is_null() {
                granted.add(size);
                assert_eq!(p as usize % align, 0);
                let b = Block {
                    ptr: p,
                    layout,
                    tag: (seed as u8) ^ (i as u8),
                };
                b.stamp();
                live.push(b);
            }
        }
        if i % 1024 == 0 {
            // Whatever this thread reads, usage never passes the limit.
            assert!(a.allocated_bytes() <= a.limit());
            assert!(a.peak_bytes() <= a.limit());
        }
    }
    for b in live {
        b.check();
        granted.sub(b.layout.size());
        // SAFETY: as above.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    for (r, bytes) in reservations {
        granted.sub(bytes);
        drop(r);
    }
}

/// Runs the race and checks everything the budget promises once the threads have exited.
fn race(exact: bool, limit: usize) {
    let a = quiet(exact, limit);
    let granted = Arc::new(Granted {
        bytes: AtomicUsize::new(0),
        limit,
    });
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (a, granted, start) = (a.clone(), granted.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                worker(&a, &granted, 0x5EED + t as u64 * 7919);
            })
        })
        .collect();
    for h in handles {
        // `join` waits for the thread's exit, thread-local destructors included, so every
        // thread's credit has been handed back when it returns.
        h.join().expect("a worker failed");
    }
    assert_eq!(granted.bytes.load(SeqCst), 0);
    let s = a.stats();
    eprintln!("exact={exact} limit={limit}: {s:?}");
    assert!(s.refusals > 0, "the budget was never tight: {s:?}");
    assert!(s.largest_refusal_bytes >= 1 && s.largest_refusal_bytes <= MAX_SIZE);
    assert_eq!(
        a.allocated_bytes(),
        0,
        "drift after all threads exited: {s:?}"
    );
    assert_eq!(s.current_bytes, 0);
    assert_eq!(s.reserved_bytes, 0);
    assert_eq!(s.allocations, s.deallocations, "{s:?}");
    assert!(s.allocations > 0 && s.reallocations > 0, "{s:?}");
    assert!(
        s.peak_bytes <= limit,
        "peak {} > limit {limit}",
        s.peak_bytes
    );
    assert!(s.peak_bytes > 0);
    assert_eq!(s.inner_failures, 0);
    // The whole budget is usable again, in one piece.
    let whole = Layout::from_size_align(limit, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { a.alloc(whole) };
    assert!(
        !p.is_null(),
        "the full budget is not available after the race"
    );
    // SAFETY: allocated just above with `whole`.
    unsafe { a.dealloc(p, whole) };
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn tight_budget_64k_cached() {
    race(false, 64 << 10);
}

#[test]
fn tight_budget_64k_exact() {
    race(true, 64 << 10);
}

#[test]
fn budget_1m_cached() {
    race(false, 1 << 20);
}

#[test]
fn budget_1m_exact() {
    race(true, 1 << 20);
}

/// Credit held by other *live* threads reads as usage, at most 512 KiB per thread, and is
/// exact once they hand it back (`release_thread_credit`) or exit.
#[test]
fn other_threads_credit_is_bounded_slack_and_comes_back() {
    const HOLD_MAX: usize = 512 << 10;
    const KEEP: usize = 1000;
    let a = quiet(false, 256 << 20);
    let phase = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (a, phase) = (a.clone(), phase.clone());
            thread::spawn(move || {
                let mut rng = xorshift(t as u64 + 1);
                let keep = Layout::from_size_align(KEEP, 8).unwrap();
                // SAFETY: non-zero size.
                let kept = unsafe { a.alloc(keep) };
                assert!(!kept.is_null());
                // Churn so that the thread holds credit.
                for _ in 0..2000 {
                    let l = Layout::from_size_align(range(&mut rng, 1, 64 << 10), 8).unwrap();
                    // SAFETY: non-zero size; freed right away with the same layout.
                    unsafe {
                        let p = a.alloc(l);
                        assert!(!p.is_null());
                        a.dealloc(p, l);
                    }
                }
                phase.wait(); // 1: idle, alive, holding credit
                phase.wait(); // 2: main has looked
                a.release_thread_credit();
                phase.wait(); // 3: credit handed back
                phase.wait(); // 4: main has looked
                              // SAFETY: allocated above with `keep`.
                unsafe { a.dealloc(kept, keep) };
            })
        })
        .collect();
    let live = THREADS * KEEP;
    phase.wait(); // 1
    let seen = a.allocated_bytes();
    assert!(
        seen >= live && seen <= live + THREADS * HOLD_MAX,
        "{seen} bytes read with {live} live: slack beyond {THREADS} x {HOLD_MAX}"
    );
    phase.wait(); // 2
    phase.wait(); // 3
    assert_eq!(a.allocated_bytes(), live, "credit handed back is not usage");
    phase.wait(); // 4
    for h in handles {
        h.join().unwrap();
    }
    let s = a.stats();
    assert_eq!(a.allocated_bytes(), 0);
    assert_eq!(
        (s.allocations, s.deallocations),
        (THREADS as u64 * 2001, THREADS as u64 * 2001)
    );
    assert_eq!(s.refusals, 0);
}

/// A refusal recalls credit: a thread that holds credit hands it back on its next call
/// after another thread was refused, so the refused request then fits in what is free.
#[test]
fn refusal_recalls_other_threads_credit() {
    let limit = 8 << 20;
    let a = quiet(false, limit);
    let step = Arc::new(Barrier::new(2));
    let (big_l, small_l) = (
        Layout::from_size_align(1000, 8).unwrap(),
        Layout::from_size_align(100, 8).unwrap(),
    );
    let worker = {
        let (a, step) = (a.clone(), step.clone());
        thread::spawn(move || {
            // SAFETY: non-zero sizes; each block is freed once with its layout.
            let (big, small) = unsafe { (a.alloc(big_l), a.alloc(small_l)) };
            assert!(!big.is_null() && !small.is_null());
            step.wait(); // 1: holding credit (a batch taken from 8 MiB of headroom)
            step.wait(); // 2: main was refused
                         // SAFETY: as above.
            unsafe { a.dealloc(small, small_l) };
            step.wait(); // 3: the free handed the recalled credit back
            step.wait(); // 4: main is done
                         // SAFETY: as above.
            unsafe { a.dealloc(big, big_l) };
        })
    };
    step.wait(); // 1
                 // Everything except the worker's live 1100 bytes: only fits once its credit is back.
    let rest = Layout::from_size_align(limit - 1100, 8).unwrap();
    // SAFETY: non-zero size.
    assert!(
        unsafe { a.alloc(rest) }.is_null(),
        "the worker's credit should have been charged"
    );
    assert_eq!(a.stats().refusals, 1);
    step.wait(); // 2
    step.wait(); // 3
                 // SAFETY: non-zero size.
    let p = unsafe { a.alloc(rest) };
    assert!(
        !p.is_null(),
        "the refusal did not recall the worker's credit"
    );
    // The worker keeps the 100 freed bytes as credit; the limit is still exact.
    assert_eq!(a.allocated_bytes(), limit);
    // SAFETY: allocated above with `rest`.
    unsafe { a.dealloc(p, rest) };
    step.wait(); // 4
    worker.join().unwrap();
    assert_eq!(a.allocated_bytes(), 0);
    assert_eq!(a.peak_bytes(), limit);
}
