//! The fast path's correctness on standalone instances: per-thread credit never lets the
//! limit be passed, counts come back exact when threads exit, instances never share
//! credit, a refusal recalls credit, and a lowered limit parks threads.
//!
//! These tests assert behaviour only, never timings.

use std::alloc::GlobalAlloc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};

use crate::common::*;

/// A raw pointer that may cross threads (the blocks are plain bytes).
struct Block(*mut u8, usize);
// SAFETY: a block is owned by whichever thread holds the `Block`; nothing aliases it.
unsafe impl Send for Block {}

/// Many threads churn blocks against budgets from tiny to roomy. Each thread adds a block's
/// size to `live` after `alloc` returned it and subtracts it before `dealloc`, so `live`
/// never exceeds the bytes actually granted at that moment, and granted bytes must never
/// exceed the limit.
#[test]
fn limit_holds_at_tight_budgets_with_many_threads() {
    const THREADS: usize = 8;
    for limit in [4 << 10, 64 << 10, 1 << 20] {
        let a = quiet(limit);
        let refused = churn_on_threads(&a, THREADS, 20_000, 64, 0x1234, |r| {
            1 + (r >> 8) as usize % (limit / 16)
        });
        assert!(refused > 0, "limit {limit} was never reached");
        assert_back_at_zero(&a, limit, refused);
    }
}

/// Thousands of threads allocate, free and leave blocks for others to free; after they are
/// gone the instance is back at its start, counts included.
#[test]
fn counts_are_exact_after_thousands_of_threads_exit() {
    let a = quiet(256 << 20);
    let start = alloc(&a, 1000).unwrap();
    let (tx, rx) = mpsc::channel::<Block>();
    for wave in 0..250 {
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (a, tx) = (&a, tx.clone());
                    s.spawn(move || {
                        let mut next = xorshift(wave * 8 + t);
                        for _ in 0..50 {
                            let size = 1 + next() as usize % 5000;
                            let p = alloc(a, size).unwrap();
                            if next().is_multiple_of(4) {
                                tx.send(Block(p, size)).unwrap(); // freed by the main thread
                            } else {
                                free(a, p, size);
                            }
                        }
                    })
                })
                .collect();
            // Joined explicitly, so that the threads have exited (see above).
            for t in threads {
                t.join().unwrap();
            }
        });
        // Blocks allocated on exited threads are freed here, on another thread.
        while let Ok(Block(p, size)) = rx.try_recv() {
            free(&a, p, size);
        }
    }
    assert_eq!(a.allocated_bytes(), 1000);
    let s = a.stats();
    assert_eq!(s.allocations, 2000 * 50 + 1);
    assert_eq!(s.deallocations, 2000 * 50);
    free(&a, start, 1000);
    assert_eq!(a.allocated_bytes(), 0);
    assert!(a.peak_bytes() <= a.limit());
}

/// Two instances on one thread: each has its own credit, and neither's numbers see the
/// other's traffic.
#[test]
fn two_instances_on_one_thread_do_not_mix_credit() {
    let a = quiet(1 << 20);
    let b = quiet(10_000);
    let mut live_a = Vec::new();
    let mut live_b = Vec::new();
    for i in 1..=50 {
        live_a.push((alloc(&a, i * 100).unwrap(), i * 100));
        if i * 30 + live_b.iter().map(|&(_, s)| s).sum::<usize>() <= 10_000 {
            live_b.push((alloc(&b, i * 30).unwrap(), i * 30));
        }
        let sum = |v: &Vec<(*mut u8, usize)>| v.iter().map(|&(_, s)| s).sum::<usize>();
        assert_eq!(a.allocated_bytes(), sum(&live_a));
        assert_eq!(b.allocated_bytes(), sum(&live_b));
    }
    // `a` holds plenty of credit on this thread; `b` must still refuse past its own limit.
    let used_b = b.allocated_bytes();
    assert!(alloc(&b, 10_000 - used_b + 1).is_none());
    let last = alloc(&b, 10_000 - used_b).unwrap();
    assert_eq!(b.allocated_bytes(), 10_000);
    free(&b, last, 10_000 - used_b);
    // Blocks freed into the wrong budget would show here.
    for (p, s) in live_b.drain(..) {
        free(&b, p, s);
    }
    assert_eq!(b.allocated_bytes(), 0);
    assert_eq!(
        a.allocated_bytes(),
        live_a.iter().map(|&(_, s)| s).sum::<usize>()
    );
    for (p, s) in live_a.drain(..) {
        free(&a, p, s);
    }
    assert_eq!((a.allocated_bytes(), b.allocated_bytes()), (0, 0));
    assert_eq!((a.stats().allocations, a.stats().deallocations), (50, 50));
}

/// An instance dropped while this thread holds its credit leaves a stale entry; a new
/// instance (which may reuse the slot) must start from nothing and not spend it.
#[test]
fn a_new_instance_never_spends_a_dropped_ones_credit() {
    for _ in 0..100 {
        let old = quiet(1 << 30);
        let p = alloc(&old, 64).unwrap(); // takes a batch of credit
        free(&old, p, 64); // and keeps the bytes as credit
        drop(old);
        let new = quiet(1000);
        assert_eq!(new.allocated_bytes(), 0);
        let p = alloc(&new, 600).unwrap();
        assert_eq!(new.allocated_bytes(), 600);
        assert!(alloc(&new, 401).is_none());
        free(&new, p, 600);
        assert_eq!(new.allocated_bytes(), 0);
    }
}

/// A refusal recalls every thread's credit: an idle thread that holds a lot of it does not
/// keep another from the budget once it makes any call, or exits.
#[test]
fn credit_is_recalled_on_refusal() {
    // Roomy enough that one thread may hold the full 512 KiB (1/128 of the limit, the
    // pool's per-thread share).
    const LIMIT: usize = 64 << 20;
    let a = Arc::new(quiet(LIMIT));
    let (poke, poked) = mpsc::channel::<bool>();
    let (done, wait_done) = mpsc::channel::<()>();
    let holder = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            // Freed bytes stay as this thread's credit (up to 512 KiB in a roomy budget).
            let small = Block(alloc(&a, 8).unwrap(), 8);
            let p = alloc(&a, 400 << 10).unwrap();
            free(&a, p, 400 << 10);
            done.send(()).unwrap();
            // When poked, free the small block: one call, which takes no new batch.
            let _ = poked.recv();
            free(&a, small.0, small.1);
            done.send(()).unwrap();
            // Then exit when told.
            let _ = poked.recv();
        })
    };
    wait_done.recv().unwrap();
    // The holder's credit reads as usage from here (bounded slack) and leaves too little
    // headroom for `big`, which would fit the live bytes: refused, which recalls it.
    let slack = a.allocated_bytes() - 8;
    assert!((100 << 10..=512 << 10).contains(&slack), "slack {slack}");
    let big = LIMIT - 8 - slack / 2;
    assert!(alloc(&a, big).is_none());
    assert_eq!(a.stats().refusals, 1);
    // The holder's next call hands its credit back.
    poke.send(true).unwrap();
    wait_done.recv().unwrap();
    let slack = a.allocated_bytes();
    assert!(slack <= 8, "slack after the recall {slack}");
    let p = alloc(&a, big).expect("fits once the holder's credit is recalled");
    // The holder exits: its exit returns whatever credit it held.
    poke.send(false).unwrap();
    holder.join().unwrap();
    assert_eq!(a.allocated_bytes(), big);
    free(&a, p, big);
    assert_eq!(a.allocated_bytes(), 0);
    let all = alloc(&a, LIMIT).expect("the whole budget with no other thread");
    free(&a, all, LIMIT);
}

/// Lowering the limit below usage parks every thread that holds credit: nobody allocates,
/// not even from credit carved under the old limit, until usage is back under the limit.
#[test]
fn lowering_the_limit_parks_threads() {
    const THREADS: usize = 4;
    let a = quiet(4 << 20);
    let lowered = AtomicBool::new(false);
    let ready = Barrier::new(THREADS + 1);
    let checked = Barrier::new(THREADS + 1);
    let freed = Barrier::new(THREADS + 1);
    let resumed = Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        let mut threads = Vec::new();
        for _ in 0..THREADS {
            let (a, lowered) = (&a, &lowered);
            let (ready, checked, freed, resumed) = (&ready, &checked, &freed, &resumed);
            threads.push(s.spawn(move || {
                // 256 KiB live per thread, plus whatever credit the thread holds.
                let big = alloc(a, 256 << 10).unwrap();
                let p = alloc(a, 64).unwrap();
                free(a, p, 64);
                ready.wait();
                // The main thread lowers the limit below usage here.
                ready.wait();
                assert!(lowered.load(SeqCst));
                assert!(
                    alloc(a, 16).is_none(),
                    "allocated from old credit past the limit"
                );
                checked.wait();
                free(a, big, 256 << 10);
                freed.wait();
                // Usage is under the limit again: allocation resumes.
                let p = alloc(a, 16).expect("unparked");
                free(a, p, 16);
                resumed.wait();
            }));
        }
        ready.wait();
        let usage = a.allocated_bytes();
        assert!(usage >= THREADS * (256 << 10));
        a.set_limit(512 << 10);
        lowered.store(true, SeqCst);
        ready.wait();
        assert!(alloc(&a, 16).is_none());
        checked.wait();
        freed.wait();
        assert!(a.allocated_bytes() < a.limit(), "{:?}", a.stats());
        let p = alloc(&a, 16).expect("unparked");
        free(&a, p, 16);
        resumed.wait();
        for t in threads {
            t.join().unwrap(); // the threads' exit returns their credit
        }
    });
    assert_eq!(a.allocated_bytes(), 0);
    assert!(a.stats().refusals > THREADS as u64);
}

/// The fast path counts exactly on one thread, including across the periodic publication
/// of pending counts and the realloc path.
#[test]
fn counts_are_exact_on_one_thread_across_publications() {
    let a = quiet(1 << 30);
    for round in 1..=3u64 {
        for _ in 0..5000 {
            let p = alloc(&a, 48).unwrap();
            free(&a, p, 48);
        }
        let s = a.stats();
        assert_eq!(
            (s.allocations, s.deallocations),
            (round * 5000, round * 5000)
        );
        assert_eq!(s.current_bytes, 0);
    }
    let l = layout(100);
    // SAFETY: a live block of `a`, grown and shrunk in place of itself, freed once.
    unsafe {
        let p = a.alloc(l);
        let p = a.realloc(p, l, 5000);
        assert_eq!(a.allocated_bytes(), 5000);
        let p = a.realloc(p, layout(5000), 10);
        assert_eq!(a.allocated_bytes(), 10);
        a.dealloc(p, layout(10));
    }
    let s = a.stats();
    assert_eq!(
        (s.reallocations, s.current_bytes, s.peak_bytes),
        (2, 0, 5000)
    );
}

/// The queries subtract this thread's own credit also when its entry is of an earlier epoch
/// (a recall this thread has not answered yet, as after `set_limit`): that credit is still
/// held, and still not usage. Another thread sees it as usage (bounded slack).
#[test]
fn queries_subtract_own_credit_of_an_earlier_epoch() {
    use limited_allocator::{PressureLevel, PressureThresholds};
    const LIMIT: usize = 16 << 20;
    let a = quiet(LIMIT);
    // Medium from 0.5 % (83887 bytes): above the live bytes, below live bytes plus credit
    // (a batch of 128 KiB, the most one thread may hold at this limit).
    a.set_thresholds(PressureThresholds::new(0.5, 50.0, 90.0).unwrap());
    let p = alloc(&a, 1000).unwrap(); // takes a batch: this thread now holds credit
    let elsewhere = || std::thread::scope(|s| s.spawn(|| a.allocated_bytes()).join().unwrap());
    let held = elsewhere() - 1000;
    assert!(held >= 20_000, "credit held by this thread: {held}");
    // Lowering the limit recalls credit by advancing the epoch; this thread answers on its
    // next call, so its entry is now of an earlier epoch and still holds the credit.
    a.set_limit(LIMIT - 1);
    assert_eq!(elsewhere(), 1000 + held, "the credit is still held");
    assert_eq!(a.allocated_bytes(), 1000);
    assert_eq!(a.available_bytes(), LIMIT - 1 - 1000);
    assert_eq!(a.pressure_level(), PressureLevel::Low);
    assert_eq!(a.stats().current_bytes, 1000);
    assert!(a.check_can_allocate(LIMIT - 1 - 1000).is_ok());
    let err = a.check_can_allocate(LIMIT - 1000).unwrap_err();
    assert_eq!((err.current, err.limit), (1000, LIMIT - 1));
    // Seen from a thread without credit, the same state is Medium.
    let level = std::thread::scope(|s| s.spawn(|| a.pressure_level()).join().unwrap());
    assert_eq!(level, PressureLevel::Medium);
    // This thread's next call answers the recall: the old credit goes back (the freed
    // bytes may stay as new credit).
    free(&a, p, 1000);
    assert_eq!(a.allocated_bytes(), 0);
    assert!(elsewhere() <= 1000, "{}", elsewhere());
}

/// This thread's entry may still hold a dropped instance's token and credit when a new
/// instance that reuses the slot was registered on another thread: the queries must not
/// subtract that credit from the new instance's usage.
#[test]
fn queries_ignore_a_dropped_instances_credit() {
    use limited_allocator::PressureLevel;
    for _ in 0..20 {
        let old = quiet(1 << 30);
        let p = alloc(&old, 64).unwrap(); // this thread now holds old's credit
        free(&old, p, 64);
        drop(old);
        let new = quiet(100_000);
        // Joined explicitly: that waits for the thread's exit, which returns its credit.
        std::thread::scope(|s| {
            s.spawn(|| {
                let p = alloc(&new, 64).unwrap(); // registers `new`, maybe in old's slot
                free(&new, p, 64);
            })
            .join()
            .unwrap();
        });
        for _ in 0..2 {
            assert_eq!(new.allocated_bytes(), 0);
            assert!(new.check_can_allocate(100_000).is_ok());
            assert!(new.check_can_allocate(100_001).is_err());
            assert_eq!(new.pressure_level(), PressureLevel::Low);
        }
        let p = alloc(&new, 60_000).unwrap();
        assert_eq!(new.allocated_bytes(), 60_000);
        assert_eq!(new.pressure_level(), PressureLevel::Medium);
        free(&new, p, 60_000);
    }
}

/// All threads' credit together withholds at most `limit / 16` (the bound `B` of
/// `docs/design.md`), whatever the number of threads: 64 and 512 threads each take credit
/// in a burst (allocations, then frees the hold keeps) and stay alive, idle. With nothing
/// live, the budget reads at most `B` used, a reservation of `limit - B` succeeds, and so
/// does one of `limit / 2 - B` after the limit is halved (the idle threads never answer the
/// recall: their credit stays, but within the bound). Then they exit and everything comes
/// back.
#[test]
fn credit_is_bounded_in_total_under_many_idle_threads() {
    const LIMIT: usize = 64 << 20;
    const BOUND: usize = LIMIT / 16;
    for threads in [64, 512] {
        let a = quiet(LIMIT);
        let burst_done = Barrier::new(threads + 1);
        let checked = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for t in 0..threads {
                let (a, burst_done, checked) = (&a, &burst_done, &checked);
                let h = std::thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn_scoped(s, move || {
                        let mut next = xorshift(t as u64 + 1);
                        let blocks: Vec<(*mut u8, usize)> = (0..64)
                            .map(|_| {
                                let size = 16 + next() as usize % 8192;
                                (alloc(a, size).expect("far from the limit"), size)
                            })
                            .collect();
                        for (p, size) in blocks {
                            free(a, p, size);
                        }
                        burst_done.wait();
                        checked.wait(); // idle, holding whatever credit it kept
                    })
                    .unwrap();
                handles.push(h);
            }
            burst_done.wait();
            let used = a.allocated_bytes();
            assert!(
                used <= BOUND,
                "{threads} idle threads withhold {used} > {BOUND}"
            );
            let r = a.try_reserve(LIMIT - BOUND);
            assert!(r.is_ok(), "{threads} threads: {:?}", r.err());
            drop(r);
            // A lowered limit: the idle threads' credit (carved under the old bound) stays,
            // and the rest of the new limit is usable.
            a.set_limit(LIMIT / 2);
            let r = a.try_reserve(LIMIT / 2 - BOUND);
            assert!(r.is_ok(), "{threads} threads, lowered limit: {:?}", r.err());
            drop(r);
            a.set_limit(LIMIT);
            checked.wait();
            // Joined explicitly: that waits for each thread's exit (its TLS destructors).
            handles.into_iter().for_each(|h| h.join().unwrap());
        });
        assert_eq!(a.allocated_bytes(), 0, "{threads} threads exited");
        let s = a.stats();
        assert_eq!(s.allocations, s.deallocations);
        assert_eq!(s.allocations, threads as u64 * 64);
    }
}

/// A reservation of every byte of an unlimited instance (or one grown to it) gives its
/// bytes back when dropped: no value of the held headroom means "closed".
#[test]
fn a_reservation_of_usize_max_is_given_back() {
    let a = quiet(usize::MAX);
    let r = a
        .try_reserve(usize::MAX)
        .expect("everything fits an unlimited budget");
    assert_eq!(
        (r.headroom(), a.allocated_bytes()),
        (usize::MAX, usize::MAX)
    );
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
    let r = a.try_reserve(1).unwrap();
    r.grow(usize::MAX - 1).unwrap();
    assert_eq!(r.headroom(), usize::MAX);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
    assert!(a.try_reserve(usize::MAX).is_ok());
}

/// A thread that made a peak before `reset_peak` and exits after it does not bring the old
/// peak back (its exit posts the window's peak only if it is of the current generation).
#[test]
fn an_exiting_thread_brings_back_no_peak_from_before_a_reset() {
    let a = quiet(64 << 20);
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<Block>>();
    let (go, wait_go) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a = &a;
        let holder = s.spawn(move || {
            // 200 000 bytes from one batch (256 KiB): this thread's window now has a peak
            // candidate of 200 000 and no slow path published it; the blocks are freed on
            // the main thread, so this thread's credit stays at the batch's rest.
            let blocks = (0..200)
                .map(|_| Block(alloc(a, 1000).unwrap(), 1000))
                .collect();
            blocks_tx.send(blocks).unwrap();
            wait_go.recv().unwrap();
        });
        for b in blocks_rx.recv().unwrap() {
            free(a, b.0, b.1);
        }
        a.reset_peak();
        let after_reset = a.peak_bytes();
        let sent = go.send(());
        assert!(after_reset < 100_000, "peak {after_reset} after the reset");
        sent.unwrap();
        // Joined explicitly: that waits for the thread's exit (its TLS destructors).
        holder.join().unwrap();
    });
    // The thread has exited and posted its credit, counts and peak.
    assert_eq!(a.allocated_bytes(), 0);
    assert!(
        a.peak_bytes() < 100_000,
        "an old peak came back: {}",
        a.peak_bytes()
    );
}

/// A thread that took credit, then sat idle through thousands of recalls while the limit
/// was lowered below usage, does not spend its stale credit when it wakes: the epoch came
/// round (16 384 refusals wrapped the old 14-bit one back to the thread's token), but the
/// instance's token carries its over-the-limit state, which the thread's entry does not.
#[test]
fn an_idle_thread_spends_no_stale_credit_over_the_limit() {
    let a = quiet(64 << 20);
    let (ready, wait_ready) = mpsc::channel::<()>();
    let (go, wait_go) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a = &a;
        let idle = s.spawn(move || {
            let p = alloc(a, 1000).unwrap(); // takes a batch of credit
            ready.send(()).unwrap();
            wait_go.recv().unwrap();
            let granted = alloc(a, 100);
            free(a, p, 1000);
            granted.map(|q| free(a, q, 100)).is_some()
        });
        wait_ready.recv().unwrap();
        a.set_limit(500); // below what is charged (1000 live and the batch)
        for _ in 0..16383 {
            assert!(alloc(a, 1 << 20).is_none());
        }
        go.send(()).unwrap();
        let granted = idle.join().unwrap();
        assert!(!granted, "stale credit was spent over the limit");
    });
    a.set_limit(64 << 20);
    assert_eq!(a.allocated_bytes(), 0);
}
