//! A standalone `LimitedAllocator` (not the global allocator): limits, counts and errors,
//! including GopherFrame's cases.

use limited_allocator::{LimitedAllocator, PressureLevel, PressureThresholds};
use std::alloc::{GlobalAlloc, Layout, System};

use crate::common::*;

#[test]
fn half_used_is_fifty_percent() {
    let a = quiet(1024);
    let p = alloc(&a, 512).unwrap();
    assert_eq!(a.allocated_bytes(), 512);
    assert_eq!(a.usage_percent(), 50.0);
    assert_eq!(a.available_bytes(), 512);
    free(&a, p, 512);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn refusal_keeps_the_count() {
    let a = quiet(1024);
    let p1 = alloc(&a, 512).unwrap();
    let p2 = alloc(&a, 400).unwrap();
    assert!(alloc(&a, 200).is_none());
    assert_eq!(a.allocated_bytes(), 912);
    let s = a.stats();
    assert_eq!(
        (
            s.allocations,
            s.refusals,
            s.largest_refusal_bytes,
            s.refused_bytes
        ),
        (2, 1, 200, 200)
    );
    free(&a, p1, 512);
    // Free then allocate again: the room is back.
    let p3 = alloc(&a, 512).unwrap();
    assert_eq!(a.allocated_bytes(), 912);
    free(&a, p2, 400);
    free(&a, p3, 512);
    assert_eq!(a.allocated_bytes(), 0);
    assert_eq!(a.peak_bytes(), 912);
    assert_eq!(a.stats().deallocations, 3);
}

#[test]
fn realloc_grows_then_refuses_and_keeps_the_old_block() {
    let a = quiet(2048);
    let p = alloc(&a, 512).unwrap();
    unsafe { p.write_bytes(7, 512) };
    let p = unsafe { a.realloc(p, layout(512), 1024) };
    assert!(!p.is_null());
    assert_eq!(a.allocated_bytes(), 1024);
    let refused = unsafe { a.realloc(p, layout(1024), 4096) };
    assert!(refused.is_null());
    assert_eq!(
        a.allocated_bytes(),
        1024,
        "a refused realloc leaves the old charge"
    );
    assert_eq!(unsafe { *p.add(511) }, 7, "and the old block intact");
    let p = unsafe { a.realloc(p, layout(1024), 100) };
    assert!(!p.is_null());
    assert_eq!(a.allocated_bytes(), 100);
    free(&a, p, 100);
    let s = a.stats();
    assert_eq!((s.allocations, s.reallocations, s.deallocations), (1, 2, 1));
    assert_eq!((s.refusals, s.current_bytes, s.peak_bytes), (1, 0, 1024));
}

#[test]
fn pressure_levels_at_gopherframe_points() {
    let a = quiet(1000);
    for (bytes, level) in [
        (500, PressureLevel::Low),
        (700, PressureLevel::Medium),
        (850, PressureLevel::High),
        (970, PressureLevel::Critical),
    ] {
        let r = a.try_reserve(bytes).unwrap();
        assert_eq!(a.pressure_level(), level, "{bytes} of 1000");
        assert_eq!(a.stats().pressure, level);
        drop(r);
    }
    for (bytes, level) in [(600, PressureLevel::Medium), (950, PressureLevel::Critical)] {
        let _r = a.try_reserve(bytes).unwrap();
        assert_eq!(a.pressure_level(), level, "exactly {bytes}");
    }
}

#[test]
fn custom_thresholds_apply() {
    let a = quiet(1000);
    a.set_thresholds(PressureThresholds::new(10.0, 20.0, 30.0).unwrap());
    let _r = a.try_reserve(250).unwrap();
    assert_eq!(a.pressure_level(), PressureLevel::High);
}

#[test]
fn check_can_allocate_reports_every_number() {
    let a = quiet(1024);
    let p = alloc(&a, 800).unwrap();
    assert!(a.check_can_allocate(224).is_ok());
    let err = a.check_can_allocate(300).unwrap_err();
    assert_eq!(
        (err.requested, err.limit, err.current, err.available),
        (300, 1024, 800, 224)
    );
    assert!(err.to_string().contains("(78.1% used)"), "{err}");
    // A look is not a refusal.
    assert_eq!(a.stats().refusals, 0);
    free(&a, p, 800);
}

#[test]
fn zero_limit_refuses_everything_and_is_critical() {
    let a = quiet(0);
    assert!(alloc(&a, 1).is_none());
    assert_eq!(a.usage_percent(), 100.0);
    assert_eq!(a.pressure_level(), PressureLevel::Critical);
    assert!(a.try_reserve(1).is_err());
    assert!(a.try_reserve(0).is_ok());
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn requests_near_usize_max_do_not_wrap() {
    let a = quiet(1 << 20);
    let p = alloc(&a, 1000).unwrap();
    for huge in [usize::MAX, usize::MAX - 999, isize::MAX as usize + 1] {
        assert!(a.check_can_allocate(huge).is_err());
        let err = a.try_reserve(huge).unwrap_err();
        assert_eq!((err.requested, err.current), (huge, 1000));
        let grown = unsafe { a.realloc(p, layout(1000), huge - 7) };
        assert!(grown.is_null());
    }
    assert_eq!(a.allocated_bytes(), 1000);
    free(&a, p, 1000);
    // Unlimited: usize::MAX - usage never wraps either.
    let u = quiet(LimitedAllocator::UNLIMITED);
    let r = u.try_reserve(usize::MAX - 10).unwrap();
    assert!(u.try_reserve(11).is_err());
    assert!(u.usage_percent() <= 100.0);
    drop(r);
}

#[test]
fn lowering_the_limit_below_usage_refuses_new_requests() {
    let a = quiet(4096);
    let p = alloc(&a, 3000).unwrap();
    a.set_limit(2000);
    assert_eq!(a.available_bytes(), 0);
    assert!(alloc(&a, 1).is_none());
    assert!(a.usage_percent() > 100.0);
    assert_eq!(a.pressure_level(), PressureLevel::Critical);
    free(&a, p, 3000);
    assert_eq!(a.allocated_bytes(), 0);
    let q = alloc(&a, 2000).unwrap();
    assert!(alloc(&a, 1).is_none());
    free(&a, q, 2000);
}

#[test]
fn exact_and_cached_instances_agree_on_every_number() {
    for a in [quiet(1 << 20), {
        let e = LimitedAllocator::new_exact(System, 1 << 20);
        e.set_refusal_reporting(false);
        e
    }] {
        let mut live = Vec::new();
        for i in 1..200 {
            live.push((alloc(&a, i * 13).unwrap(), i * 13));
        }
        let total: usize = live.iter().map(|&(_, s)| s).sum();
        assert_eq!(a.allocated_bytes(), total);
        for (p, s) in live.drain(..).rev().step_by(2) {
            free(&a, p, s);
        }
        assert_eq!(a.peak_bytes(), total);
        a.reset_peak();
        assert_eq!(a.peak_bytes(), a.allocated_bytes());
    }
}

#[test]
fn alignment_is_honoured() {
    let a = quiet(1 << 24);
    for align in [1, 8, 64, 4096, 65536] {
        let l = Layout::from_size_align(100, align).unwrap();
        let p = unsafe { a.alloc(l) };
        assert_eq!(p as usize % align, 0);
        unsafe { a.dealloc(p, l) };
    }
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn reservation_counts_and_release() {
    let a = quiet(1000);
    let r = a.try_reserve(600).unwrap();
    assert_eq!(a.stats().reserved_bytes, 600);
    assert!(a.try_reserve(401).is_err());
    r.resize(900).unwrap();
    let err = r.grow(101).unwrap_err();
    assert_eq!((err.requested, err.current, err.available), (101, 900, 100));
    drop(r);
    let s = a.stats();
    assert_eq!(
        (s.current_bytes, s.reserved_bytes, s.peak_bytes),
        (0, 0, 900)
    );
}
