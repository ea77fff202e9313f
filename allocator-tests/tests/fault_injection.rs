//! SQLite's faultsim against the global allocator: the inner allocator fails the Nth call
//! from now, for N = 1, 2, ... until an operation (collections built with fallible APIs
//! only, small blocks, blocks past the credit batch, reallocations) succeeds without the
//! fault; once failing, it fails just that call, or every call after it. Then jemalloc's
//! refusing extent hooks: an inner allocator that refuses every large request. After every
//! attempt nothing stays charged and every counter is exact: allocations and reallocations
//! are those that succeeded, each failure is one inner failure and no refusal.

use allocator_tests::{prepare_backtraces, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

/// `System`, with faults armed per thread (so only the test's own thread sees them).
struct Faulty;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Fail the Nth call from arming, and only it.
    Once,
    /// Fail the Nth call and every one after it.
    Persistent,
    /// Fail every request larger than N bytes.
    RefuseAbove,
}

thread_local! {
    static MODE: Cell<Option<Mode>> = const { Cell::new(None) };
    /// Calls left before the fault (Once, Persistent), or the size bound (RefuseAbove).
    static N: Cell<usize> = const { Cell::new(0) };
    static FIRED: Cell<u64> = const { Cell::new(0) };
}

impl Faulty {
    /// Whether the call for `size` bytes fails.
    fn fails(size: usize) -> bool {
        let Some(mode) = MODE.with(Cell::get) else {
            return false;
        };
        let fail = match mode {
            Mode::RefuseAbove => size > N.with(Cell::get),
            Mode::Once | Mode::Persistent => {
                let left = N.with(Cell::get);
                N.with(|n| n.set(left.saturating_sub(1)));
                left == 1 || (mode == Mode::Persistent && left == 0)
            }
        };
        if fail {
            FIRED.with(|f| f.set(f.get() + 1));
        }
        fail
    }
}

// SAFETY: forwards to `System` with the caller's arguments unchanged, or returns null,
// which `GlobalAlloc` permits for any request; frees are never refused.
unsafe impl GlobalAlloc for Faulty {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::fails(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::fails(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: every block came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::fails(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LimitedAllocator<Faulty> = LimitedAllocator::new(Faulty, LimitedAllocator::UNLIMITED);

/// What the operation got from the allocator.
#[derive(Debug, Default)]
struct Tally {
    allocs: i128,
    reallocs: i128,
}

/// Sizes from 24 bytes to past the credit batch (256 KiB) and the hold.
const SIZES: [usize; 6] = [24, 200, 4000, 70_000, 300_000, 1_100_000];

/// Builds collections with fallible APIs only; any failure unwinds them (frees) and ends it.
fn operation(t: &mut Tally) -> Result<usize, ()> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    blocks.try_reserve_exact(36).map_err(drop)?;
    t.allocs += 1;
    for i in 0..36 {
        let size = SIZES[i % SIZES.len()];
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(size).map_err(drop)?;
        t.allocs += 1;
        v.resize(size, i as u8);
        if i % 3 == 0 {
            v.try_reserve_exact(size).map_err(drop)?; // a realloc to twice the size
            t.reallocs += 1;
        }
        blocks.push(v); // within the capacity reserved above
    }
    let mut map: HashMap<u64, u64> = HashMap::new();
    map.try_reserve(500).map_err(drop)?;
    t.allocs += 1;
    for k in 0..500 {
        map.insert(k, k * k); // within the capacity reserved
    }
    Ok(blocks.iter().map(Vec::len).sum::<usize>() + map.len())
}

/// Runs the operation with the fault armed; returns (result, faults fired, tally).
fn attempt(mode: Mode, n: usize) -> (Result<usize, ()>, u64, Tally) {
    let mut tally = Tally::default();
    FIRED.with(|f| f.set(0));
    N.with(|c| c.set(n));
    MODE.with(|m| m.set(Some(mode)));
    let result = operation(&mut tally);
    MODE.with(|m| m.set(None));
    (result, FIRED.with(Cell::get), tally)
}

/// One attempt, checked: nothing charged, counters exact.
fn checked_attempt(mode: Mode, n: usize) -> (Result<usize, ()>, u64) {
    let before = Counts::of(&ALLOC);
    let failures_before = ALLOC.stats().inner_failures;
    let (result, fired, tally) = attempt(mode, n);
    let d = Counts::of(&ALLOC).since(&before);
    let failures = ALLOC.stats().inner_failures - failures_before;
    let case = format!(
        "{mode:?} N={n}: {result:?}, {fired} faults, {tally:?}, {d:?}, {:?}",
        ALLOC.stats()
    );
    assert_eq!(d.bytes, 0, "{case}: bytes stay charged");
    assert_eq!(
        (d.allocs, d.reallocs),
        (tally.allocs, tally.reallocs),
        "{case}"
    );
    assert_eq!(d.deallocs, tally.allocs, "{case}: every block freed once");
    assert_eq!((d.refusals, failures), (0, fired), "{case}");
    assert_eq!(result.is_err(), fired > 0, "{case}");
    (result, fired)
}

/// The only test of this binary (the global counters see everything the process does).
#[test]
fn inner_failures_leave_nothing_charged_and_counters_exact() {
    prepare_backtraces();
    // Warm up: what the first run allocates for good (none expected) is not drift.
    let (warm, _, _) = attempt(Mode::Once, 0);
    let expected = warm.expect("no fault armed");
    for limit in [
        LimitedAllocator::UNLIMITED,
        ALLOC.allocated_bytes() + (64 << 20),
    ] {
        ALLOC.set_limit(limit);
        for mode in [Mode::Once, Mode::Persistent] {
            let mut n = 1;
            loop {
                let (result, fired) = checked_attempt(mode, n);
                if fired == 0 {
                    assert_eq!(result, Ok(expected));
                    break;
                }
                n += 1;
            }
            // Every allocating call of the operation was failed once.
            assert!(n > 40, "{mode:?}: only {n} calls");
        }
        // jemalloc-style: the inner allocator refuses every large request.
        for above in [0, 64, 100_000, 1 << 20] {
            let (result, fired) = checked_attempt(Mode::RefuseAbove, above);
            assert_eq!(fired, 1, "the operation stops at the first refused block");
            assert!(result.is_err());
        }
    }
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
}
