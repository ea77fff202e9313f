//! mimalloc's `test-stress` under a tight limit: threads allocate power-of-two blocks (now
//! and then a large one, past the credit batch), write a payload cookie into every word,
//! free some at random, and swap a quarter of them through a shared transfer table so that
//! blocks are freed on other threads than the ones that allocated them; every round the
//! threads are torn down and new ones started. Cookies are checked on every free. With the
//! limit biting all along (many refusals), the peak never passes it, and once everything
//! is freed and the threads are gone the count is back exactly where it started.
//!
//! Only fallible allocation inside the rounds (raw `alloc` with a null check): an
//! infallible one refused under the limit would abort the binary.

use allocator_tests::{prepare_backtraces, xorshift, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::{Layout, System};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const THREADS: usize = 6;
const ROUNDS: usize = 12;
const STEPS: usize = 4000;
const LOCAL: usize = 64;
const TRANSFER_SLOTS: usize = 1000;
/// Headroom over what is live when the test starts: tight for six threads of blocks up to
/// 512 KiB (about one allocation in 50 is refused).
const ROOM: usize = 3 << 20;
/// Transferred blocks are at most this many words, so the table alone (1000 slots) cannot
/// take the whole budget and starve the next round's thread starts.
const TRANSFER_MAX_WORDS: usize = 512;
const COOKIE: u64 = 0xbf58_476d_1ce4_e5b9;

static TRANSFER: [AtomicPtr<u64>; TRANSFER_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; TRANSFER_SLOTS];
static REFUSED: AtomicU64 = AtomicU64::new(0);
static CHECKED: AtomicU64 = AtomicU64::new(0);

fn layout(words: usize) -> Layout {
    Layout::array::<u64>(words).unwrap()
}

/// A block of `words` words: word 0 holds the length, every other word its cookie.
/// `None` when refused.
fn alloc_block(words: usize) -> Option<*mut u64> {
    // SAFETY: the layout has a non-zero size (at least 2 words).
    let p = unsafe { std::alloc::alloc(layout(words)) }.cast::<u64>();
    if p.is_null() {
        REFUSED.fetch_add(1, Relaxed);
        return None;
    }
    let cookie = p as u64 ^ COOKIE;
    // SAFETY: `p` is a fresh block of `words` u64s, suitably aligned by its layout.
    unsafe {
        p.write(words as u64);
        for i in 1..words {
            p.add(i).write(cookie ^ i as u64);
        }
    }
    Some(p)
}

/// Checks a block's cookies (panics on a damaged one) and frees it.
fn free_block(p: *mut u64) {
    // SAFETY: `p` came from `alloc_block`, is freed once, and its word 0 holds its length.
    unsafe {
        let words = p.read() as usize;
        assert!((2..=1 << 16).contains(&words), "damaged length {words}");
        let cookie = p as u64 ^ COOKIE;
        for i in 1..words {
            assert_eq!(p.add(i).read(), cookie ^ i as u64, "damaged block");
        }
        std::alloc::dealloc(p.cast(), layout(words));
    }
    CHECKED.fetch_add(1, Relaxed);
}

fn words_of(p: *mut u64) -> usize {
    // SAFETY: a live block from `alloc_block`.
    unsafe { p.read() as usize }
}

/// One thread's round: allocations, random frees and transfers, then everything local
/// freed. Allocates nothing infallibly: its blocks live in an array on the stack.
fn work(seed: u64) {
    let mut next = xorshift(seed);
    let mut local: [*mut u64; LOCAL] = [std::ptr::null_mut(); LOCAL];
    for _ in 0..STEPS {
        let r = next();
        let i = (r >> 8) as usize % LOCAL;
        match r % 8 {
            // Swap through the transfer table (a quarter of the steps).
            0 | 1 => {
                let mine = local[i];
                if !mine.is_null() && words_of(mine) > TRANSFER_MAX_WORDS {
                    continue;
                }
                let slot = &TRANSFER[(r >> 20) as usize % TRANSFER_SLOTS];
                local[i] = slot.swap(mine, Relaxed);
            }
            // Free one.
            2 | 3 => {
                if !local[i].is_null() {
                    free_block(std::mem::replace(&mut local[i], std::ptr::null_mut()));
                }
            }
            // Allocate one (replacing what was there): power-of-two sizes, rarely large.
            _ => {
                let words = if r.is_multiple_of(97) {
                    1 << 16 // 512 KiB: past the credit batch, the direct path
                } else {
                    2 << ((r >> 40) % 9) // 16 B .. 4 KiB
                };
                if !local[i].is_null() {
                    free_block(std::mem::replace(&mut local[i], std::ptr::null_mut()));
                }
                if let Some(p) = alloc_block(words) {
                    local[i] = p;
                }
            }
        }
    }
    for p in local {
        if !p.is_null() {
            free_block(p);
        }
    }
}

/// The only test of this binary (the global counters see everything the process does).
#[test]
fn stress_with_transfers_under_a_tight_limit() {
    prepare_backtraces();
    ALLOC.set_refusal_reporting(false);
    // Warm up: what std allocates for good on the first spawns is not drift.
    // Joined, not scoped: a scoped thread signals its end before its exit handed its credit
    // and counts back, which then landed inside the measured deltas (-256 KiB once).
    let warm: Vec<_> = (0..THREADS)
        .map(|t| thread::spawn(move || drop(vec![t; 64])))
        .collect();
    for h in warm {
        h.join().unwrap();
    }
    let before = Counts::of(&ALLOC);
    let limit = before.bytes + ROOM;
    ALLOC.set_limit(limit);
    ALLOC.reset_peak();
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let start = Arc::clone(&start);
                let seed = ((round * THREADS + t) as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                thread::spawn(move || {
                    // Whatever a thread's start allocates (infallibly), before any thread
                    // takes the budget.
                    drop(vec![0u8; 16]);
                    start.wait();
                    work(seed);
                })
            })
            .collect();
        // `join` returns after each thread's exit handed its credit back.
        for h in handles {
            h.join().expect("a stress thread failed");
        }
        assert!(
            ALLOC.peak_bytes() <= limit,
            "round {round}: peak {} > {limit}",
            ALLOC.peak_bytes()
        );
    }
    for slot in &TRANSFER {
        let p = slot.swap(std::ptr::null_mut(), Relaxed);
        if !p.is_null() {
            free_block(p);
        }
    }
    let after = Counts::of(&ALLOC);
    let d = after.since(&before);
    let peak = ALLOC.peak_bytes();
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    assert!(peak <= limit, "peak {peak} > limit {limit}");
    assert_eq!(d.bytes, 0, "not back to the start: {d:?}");
    assert_eq!(d.allocs, d.deallocs, "{d:?}");
    println!("{d:?}, {} blocks checked", CHECKED.load(Relaxed));
    assert!(d.refusals > 0, "the limit never bit: {d:?}");
    assert!(REFUSED.load(Relaxed) > 0);
    assert!(CHECKED.load(Relaxed) > (ROUNDS * THREADS * 100) as u64);
}
