//! Entered reservations on standalone instances: per-operation budgets.

use limited_allocator::{LimitedAllocator, Overflow};
use std::alloc::GlobalAlloc;

use crate::common::*;

fn alloc(a: &LimitedAllocator, size: usize) -> Option<usize> {
    let p = unsafe { a.alloc(layout(size)) };
    (!p.is_null()).then_some(p as usize)
}

fn free(a: &LimitedAllocator, p: usize, size: usize) {
    unsafe { a.dealloc(p as *mut u8, layout(size)) }
}

#[test]
fn allocations_draw_from_the_reservation_and_frees_give_back() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(4096).unwrap();
    assert_eq!(
        (a.allocated_bytes(), a.stats().reserved_bytes),
        (4096, 4096)
    );
    let g = r.enter();
    let p = alloc(&a, 1000).unwrap();
    assert_eq!((r.used(), r.headroom(), r.size()), (1000, 3096, 4096));
    assert_eq!(
        a.allocated_bytes(),
        4096,
        "drawn from the held bytes, not added"
    );
    assert_eq!(a.stats().reserved_bytes, 3096);
    let q = alloc(&a, 2000).unwrap();
    assert_eq!((r.used(), r.headroom()), (3000, 1096));
    free(&a, p, 1000);
    assert_eq!((r.used(), r.headroom()), (2000, 2096));
    free(&a, q, 2000);
    assert_eq!((r.used(), r.headroom(), r.peak_used()), (0, 4096, 3000));
    drop(g);
    // Left: allocations are the shared budget's again.
    let p = alloc(&a, 500).unwrap();
    assert_eq!((r.used(), a.allocated_bytes()), (0, 4596));
    free(&a, p, 500);
    drop(r);
    assert_eq!((a.allocated_bytes(), a.stats().reserved_bytes), (0, 0));
    assert_eq!(a.stats().allocations, 3);
}

#[test]
fn grow_overflow_takes_from_the_shared_budget_within_the_limit() {
    let a = quiet(10_000);
    let r = a.try_reserve(1000).unwrap();
    assert_eq!(r.overflow(), Overflow::Grow);
    let _g = r.enter();
    let p = alloc(&a, 3000).unwrap();
    assert_eq!(
        (r.used(), r.headroom(), a.allocated_bytes()),
        (3000, 1000, 4000)
    );
    // Still bounded by the allocator's limit.
    assert!(alloc(&a, 7000).is_none());
    assert_eq!(r.refusals(), 1);
    assert!(a.peak_bytes() <= a.limit());
    free(&a, p, 3000);
    // Frees give back to the reservation up to what it had used.
    assert_eq!((r.used(), r.headroom()), (0, 4000));
}

#[test]
fn refuse_overflow_caps_the_operation() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(1000).unwrap();
    r.set_overflow(Overflow::Refuse);
    let g = r.enter();
    let p = alloc(&a, 800).unwrap();
    assert!(alloc(&a, 300).is_none(), "past the reservation: refused");
    // The reservation's refusal, not the allocator's: its budget had room.
    assert_eq!((r.refusals(), a.stats().refusals), (1, 0));
    let q = alloc(&a, 200).unwrap();
    assert_eq!((r.used(), r.headroom()), (1000, 0));
    free(&a, p, 800);
    let p = alloc(&a, 300).unwrap(); // room again after a free
    free(&a, p, 300);
    free(&a, q, 200);
    drop(g);
    assert_eq!(r.peak_used(), 1000);
    // Outside, the shared budget serves.
    let big = alloc(&a, 100_000).unwrap();
    free(&a, big, 100_000);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

#[cfg(feature = "allocator-api2")]
#[test]
fn fallible_collections_see_the_cap_as_an_error() {
    // The reservation entered on the global allocator would do the same for a Vec; on a
    // standalone instance the allocator_api2 path shows it.
    let a = quiet(1 << 20);
    let r = a.try_reserve(4096).unwrap();
    r.set_overflow(Overflow::Refuse);
    let _g = r.enter();
    let mut v: allocator_api2::vec::Vec<u8, _> = allocator_api2::vec::Vec::new_in(&a);
    assert!(v.try_reserve_exact(4000).is_ok());
    assert!(v.try_reserve_exact(8000).is_err());
    assert_eq!(r.used(), 4000);
}

#[test]
fn nesting_serves_the_innermost_and_restores_the_outer() {
    let a = quiet(1 << 20);
    let outer = a.try_reserve(1000).unwrap();
    let inner = a.try_reserve(1000).unwrap();
    let go = outer.enter();
    let p = alloc(&a, 100).unwrap();
    let gi = inner.enter();
    let q = alloc(&a, 200).unwrap();
    assert_eq!((outer.used(), inner.used()), (100, 200));
    // Entering the same reservation again nests too.
    let again = outer.enter();
    let s = alloc(&a, 50).unwrap();
    assert_eq!((outer.used(), inner.used()), (150, 200));
    drop(again);
    free(&a, s, 50);
    // A free gives back to the reservation entered now (up to what it used).
    assert_eq!((outer.used(), inner.used()), (150, 150));
    drop(gi);
    // Inner is left everywhere now: its `used` is let go (q is plain memory from here).
    let t = alloc(&a, 300).unwrap();
    assert_eq!((outer.used(), inner.used()), (450, 0));
    free(&a, t, 300);
    free(&a, p, 100);
    free(&a, q, 200);
    drop(go);
    // Frees were given to whichever reservation was entered; with nothing live, the budget
    // holds exactly the two headrooms.
    assert_eq!(a.allocated_bytes(), outer.headroom() + inner.headroom());
    drop(outer);
    drop(inner);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn out_of_order_guard_drops_leave_nothing_entered() {
    let a = quiet(1 << 20);
    let r1 = a.try_reserve(100).unwrap();
    r1.set_overflow(Overflow::Refuse);
    let r2 = a.try_reserve(100).unwrap();
    r2.set_overflow(Overflow::Refuse);
    let g1 = r1.enter();
    let g2 = r2.enter();
    drop(g1); // out of order: r2 stays entered
    let p = alloc(&a, 60).unwrap();
    assert_eq!((r1.used(), r2.used()), (0, 60));
    drop(g2);
    // Nothing is entered now: a large allocation goes to the shared budget.
    let big = alloc(&a, 1000).expect("still entered after all guards dropped");
    assert_eq!((r1.used(), r2.used(), r1.refusals()), (0, 0, 0));
    free(&a, big, 1000);
    free(&a, p, 60); // outside, after r2 was left everywhere (its `used` let go at once)

    // Three deep, the middle one first, then re-entering before the rest goes.
    let g1 = r1.enter();
    let g2 = r2.enter();
    let g3 = r1.enter();
    drop(g2);
    let p = alloc(&a, 10).unwrap();
    assert_eq!(r1.used(), 10, "g3 (r1) is the innermost live guard");
    drop(g3);
    let q = alloc(&a, 10).unwrap();
    assert_eq!(
        (r1.used(), r2.used()),
        (20, 0),
        "back to g1 (r1), skipping dead g2"
    );
    let g4 = r2.enter();
    drop(g1);
    let s = alloc(&a, 5).unwrap();
    assert_eq!(r2.used(), 5);
    drop(g4);
    let big = alloc(&a, 1000).unwrap();
    // Both left everywhere: what they allocated is the allocator's plain memory now.
    assert_eq!((r1.used(), r2.used()), (0, 0));
    assert_eq!((r1.peak_used(), r2.peak_used()), (20, 60));
    for (p, n) in [(big, 1000), (p, 10), (q, 10), (s, 5)] {
        free(&a, p, n);
    }
    drop(r1);
    drop(r2);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn entering_and_leaving_many_times_leaves_no_drift() {
    let a = quiet(1 << 20);
    for _ in 0..100 {
        let r = a.try_reserve(64).unwrap();
        let g = r.enter();
        let p = alloc(&a, 32).unwrap();
        drop(g);
        free(&a, p, 32);
        drop(r);
    }
    assert_eq!(a.allocated_bytes(), 0);
    assert_eq!(a.stats().reserved_bytes, 0);
}

#[test]
fn the_enter_depth_is_bounded() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(64).unwrap();
    let guards: Vec<_> = (0..16).map(|_| r.try_enter().unwrap()).collect();
    assert!(r.try_enter().is_err());
    drop(guards);
    assert!(r.try_enter().is_ok());
}

#[test]
fn allocated_inside_freed_outside_leaves_no_drift() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(4096).unwrap();
    let g = r.enter();
    let ps: Vec<usize> = (0..10).map(|_| alloc(&a, 100).unwrap()).collect();
    drop(g);
    for p in ps {
        free(&a, p, 100);
    }
    // Left everywhere, the reservation let its `used` go (it could not see these frees)...
    assert_eq!((r.used(), r.headroom(), r.peak_used()), (0, 3096, 1000));
    // ...but the budget is exact: headroom only, the freed bytes are not charged.
    assert_eq!(a.allocated_bytes(), 3096);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn allocated_outside_freed_inside_leaves_no_drift() {
    let a = quiet(1 << 20);
    let ps: Vec<usize> = (0..10).map(|_| alloc(&a, 100).unwrap()).collect();
    let r = a.try_reserve(4096).unwrap();
    assert_eq!(a.allocated_bytes(), 5096);
    let g = r.enter();
    for p in ps {
        free(&a, p, 100);
    }
    // Not the reservation's bytes: they go back to the shared budget, not into it.
    assert_eq!((r.used(), r.headroom()), (0, 4096));
    assert_eq!(a.allocated_bytes(), 4096);
    drop(g);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn realloc_inside_charges_the_difference() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(10_000).unwrap();
    let _g = r.enter();
    let p = alloc(&a, 1000).unwrap();
    let p = unsafe { a.realloc(p as *mut u8, layout(1000), 5000) } as usize;
    assert_eq!(r.used(), 5000);
    let p = unsafe { a.realloc(p as *mut u8, layout(5000), 2000) } as usize;
    assert_eq!((r.used(), r.peak_used()), (2000, 5000));
    free(&a, p, 2000);
    assert_eq!(r.used(), 0);
}

#[test]
fn one_reservation_entered_on_many_threads() {
    const THREADS: usize = 4;
    const EACH: usize = 200;
    let a = quiet(64 << 20);
    let r = a.try_reserve(THREADS * EACH * 1000).unwrap();
    r.set_overflow(Overflow::Refuse);
    let before = a.allocated_bytes();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let _g = r.enter();
                let ps: Vec<usize> = (0..EACH).map(|_| alloc(&a, 1000).unwrap()).collect();
                for p in ps {
                    free(&a, p, 1000);
                }
            });
        }
    });
    assert_eq!(r.refusals(), 0);
    assert_eq!((r.used(), r.headroom()), (0, THREADS * EACH * 1000));
    assert!(r.peak_used() >= EACH * 1000, "{}", r.peak_used());
    assert!(r.peak_used() <= THREADS * EACH * 1000);
    assert_eq!(a.allocated_bytes(), before);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn many_threads_share_a_refusing_cap() {
    const THREADS: usize = 4;
    let a = quiet(64 << 20);
    let r = a.try_reserve(100 * 1000).unwrap();
    r.set_overflow(Overflow::Refuse);
    let granted = std::sync::atomic::AtomicUsize::new(0);
    let all_allocated = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let _g = r.enter();
                let ps: Vec<usize> = (0..100).filter_map(|_| alloc(&a, 1000)).collect();
                granted.fetch_add(ps.len(), std::sync::atomic::Ordering::Relaxed);
                all_allocated.wait(); // everything is held at once
                for p in ps {
                    free(&a, p, 1000);
                }
            });
        }
    });
    // 400 attempts, nothing freed before all were made: exactly the 100 blocks of 1000
    // bytes that fit in the cap were granted.
    assert_eq!(granted.into_inner(), 100);
    assert_eq!(r.peak_used(), 100 * 1000);
    assert!(r.refusals() > 0);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn reservations_of_two_instances_are_entered_independently() {
    let a = quiet(1 << 20);
    let b = quiet(1 << 20);
    let ra = a.try_reserve(1000).unwrap();
    let rb = b.try_reserve(1000).unwrap();
    let ga = ra.enter();
    let gb = rb.enter();
    let p = alloc(&a, 100).unwrap();
    let q = alloc(&b, 200).unwrap();
    assert_eq!((ra.used(), rb.used()), (100, 200));
    drop(ga); // out of order across instances: b stays entered, a is left
    let p2 = alloc(&a, 50).unwrap();
    let q2 = alloc(&b, 50).unwrap();
    assert_eq!((ra.used(), rb.used()), (100, 250));
    drop(gb);
    for (x, n) in [(p, 100), (p2, 50)] {
        free(&a, x, n);
    }
    for (x, n) in [(q, 200), (q2, 50)] {
        free(&b, x, n);
    }
    drop((ra, rb));
    assert_eq!((a.allocated_bytes(), b.allocated_bytes()), (0, 0));
}

/// Blocks allocated inside and freed outside (after leaving, on another thread) do not
/// make `used` (and `size`) grow enterings after enterings: it is let go at each leaving.
#[test]
fn used_does_not_grow_when_blocks_are_freed_outside() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(1000).unwrap(); // Overflow::Grow: each block overflows the headroom
    for round in 0..100 {
        let g = r.enter();
        let p = alloc(&a, 4000).unwrap();
        assert_eq!(r.used(), 4000, "round {round}");
        drop(g);
        assert_eq!((r.used(), r.size()), (0, 1000), "round {round}");
        // Joined explicitly: `join` returns after the thread's exit handed its credit back.
        std::thread::scope(|s| s.spawn(|| free(&a, p, 4000)).join().unwrap());
    }
    assert_eq!(r.peak_used(), 4000);
    assert_eq!(a.allocated_bytes(), 1000);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}

/// A refusal over a refusing reservation's own headroom is its own: the allocator counts
/// nothing (its budget had room) and goes on serving the same request outside.
#[test]
fn a_refusing_reservations_refusal_stays_local() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(1000).unwrap();
    r.set_overflow(Overflow::Refuse);
    let g = r.enter();
    for _ in 0..10 {
        assert!(alloc(&a, 2000).is_none());
    }
    let s = a.stats();
    assert_eq!((r.refusals(), s.refusals, s.refused_bytes), (10, 0, 0));
    drop(g);
    let p = alloc(&a, 2000).expect("the allocator's budget has room");
    free(&a, p, 2000);
    // Under Overflow::Grow a request the shared budget cannot cover is both's refusal.
    r.set_overflow(Overflow::Grow);
    let g = r.enter();
    assert!(alloc(&a, 2 << 20).is_none());
    assert_eq!((r.refusals(), a.stats().refusals), (11, 1));
    drop(g);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}
