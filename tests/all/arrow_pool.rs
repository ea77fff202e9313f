//! A standalone `LimitedAllocator` as an Arrow `MemoryPool`: claims are charged to its
//! budget, counted once, and survive the pool moving or dropping.
#![cfg(feature = "arrow")]

use arrow_buffer::{Buffer, MemoryPool, MemoryReservation, MutableBuffer};
use limited_allocator::arrow::PoolRole;
use limited_allocator::LimitedAllocator;
use std::alloc::System;

use crate::common::*;

fn buffer(bytes: usize) -> Buffer {
    Buffer::from_vec(vec![7u8; bytes])
}

#[test]
fn a_standalone_instance_detects_its_role() {
    let pool = quiet(1000);
    assert_eq!(pool.pool_role(), PoolRole::Standalone);
    let exact = LimitedAllocator::new_exact(System, 1000);
    assert_eq!(exact.pool_role(), PoolRole::Standalone);
    // The probe leaves nothing behind.
    assert_eq!(pool.allocated_bytes(), 0);
    assert_eq!(pool.stats().reserved_bytes, 0);
}

#[test]
fn pool_numbers_agree_with_the_allocator() {
    let pool = quiet(10_000);
    let b = buffer(3000);
    b.claim(&pool);
    assert_eq!(pool.used(), 3000);
    assert_eq!(pool.used(), pool.allocated_bytes());
    assert_eq!(pool.capacity(), pool.limit());
    assert_eq!(pool.available(), 7000);
    assert_eq!(pool.available() as usize, pool.available_bytes());
    let s = pool.stats();
    assert_eq!((s.current_bytes, s.pool_claimed_bytes), (3000, 3000));
    drop(b);
    assert_eq!((pool.used(), pool.stats().pool_claimed_bytes), (0, 0));
}

#[test]
fn reserve_overfills_and_fallible_requests_are_refused() {
    let pool = quiet(1000);
    let claim = pool.reserve(1500);
    assert_eq!(claim.size(), 1500);
    assert_eq!(pool.used(), 1500);
    assert_eq!(pool.available(), -500);
    assert_eq!(pool.available_bytes(), 0);
    let err = pool.check_can_allocate(1).unwrap_err();
    assert_eq!((err.requested, err.current, err.limit), (1, 1500, 1000));
    assert!(pool.try_reserve(1).is_err());
    // Allocations through the instance are refused too.
    let layout = std::alloc::Layout::from_size_align(8, 8).unwrap();
    assert!(unsafe { std::alloc::GlobalAlloc::alloc(&pool, layout) }.is_null());
    drop(claim);
    assert_eq!(pool.available(), 1000);
    assert!(pool.try_reserve(1000).is_ok());
}

#[test]
fn claiming_twice_or_a_slice_counts_once() {
    let pool = quiet(1 << 20);
    let b = buffer(4096);
    b.claim(&pool);
    b.claim(&pool);
    assert_eq!(pool.used(), 4096);
    // A slice shares the same bytes: arrow replaces the claim of the whole allocation.
    let slice = b.slice_with_length(1000, 100);
    slice.claim(&pool);
    assert_eq!(pool.used(), 4096);
    // So does a clone.
    let clone = b.clone();
    clone.claim(&pool);
    assert_eq!((pool.used(), pool.stats().pool_claimed_bytes), (4096, 4096));
    drop(b);
    drop(clone);
    assert_eq!(pool.used(), 4096, "the slice still holds the bytes");
    drop(slice);
    assert_eq!(pool.used(), 0);
}

#[test]
fn two_pools_claiming_one_buffer_move_the_claim() {
    let first = quiet(1 << 20);
    let second = quiet(1 << 20);
    let b = buffer(1000);
    b.claim(&first);
    b.claim(&second);
    assert_eq!((first.used(), second.used()), (0, 1000));
    drop(b);
    assert_eq!(second.used(), 0);
}

#[test]
fn a_reallocated_mutable_buffer_resizes_its_claim() {
    let pool = quiet(1 << 20);
    let mut m = MutableBuffer::with_capacity(128);
    m.claim(&pool);
    let first = pool.used();
    assert!(first >= 128, "{first}");
    m.extend_from_slice(&[1u8; 4000]);
    assert!(pool.used() >= 4000, "{}", pool.used());
    m.shrink_to_fit();
    assert_eq!(pool.used(), m.capacity());
    let frozen: Buffer = m.into();
    assert_eq!(
        pool.used(),
        frozen.capacity(),
        "the claim moves into the Buffer"
    );
    drop(frozen);
    assert_eq!(pool.used(), 0);
}

#[test]
fn claims_outlive_a_moved_pool() {
    let pool = quiet(10_000);
    let b = buffer(2000);
    b.claim(&pool);
    let moved = Box::new(pool); // the instance moves; the claim holds only its mailbox
    assert_eq!(moved.used(), 2000);
    drop(b);
    assert_eq!(moved.used(), 0);
    assert_eq!(moved.stats().pool_claimed_bytes, 0);
}

#[test]
fn claims_outlive_a_dropped_pool() {
    let b = buffer(2000);
    {
        let pool = quiet(10_000);
        b.claim(&pool);
        assert_eq!(pool.used(), 2000);
    }
    // Another instance may now own the dropped pool's slot: it must not see the release.
    let next = quiet(10_000);
    let r = next.try_reserve(100).unwrap();
    drop(b);
    assert_eq!(next.allocated_bytes(), 100);
    drop(r);
    assert_eq!(next.allocated_bytes(), 0);
}

#[test]
fn claims_released_on_other_threads_reach_the_pool() {
    let pool = quiet(1 << 20);
    let buffers: Vec<Buffer> = (0..8).map(|_| buffer(1000)).collect();
    for b in &buffers {
        b.claim(&pool);
    }
    assert_eq!(pool.used(), 8000);
    std::thread::scope(|s| {
        for b in buffers {
            s.spawn(move || drop(b));
        }
    });
    assert_eq!(pool.used(), 0);
}

#[test]
fn the_global_role_attributes_without_charging() {
    let pool = quiet(1000);
    pool.set_pool_role(PoolRole::Global);
    let b = buffer(5000);
    b.claim(&pool);
    assert_eq!(pool.used(), 0);
    assert_eq!(pool.stats().pool_claimed_bytes, 5000);
    drop(b);
    assert_eq!(pool.stats().pool_claimed_bytes, 0);
    pool.set_pool_role(PoolRole::Auto);
    assert_eq!(pool.pool_role(), PoolRole::Standalone);
}

#[test]
fn a_reservation_is_an_arrow_reservation() {
    let pool = quiet(1000);
    let mut r = pool.try_reserve(300).unwrap();
    assert_eq!(MemoryReservation::size(&r), 300);
    MemoryReservation::resize(&mut r, 900);
    assert_eq!((pool.used(), r.headroom()), (900, 900));
    // Infallible: past the limit it overfills.
    MemoryReservation::resize(&mut r, 1400);
    assert_eq!((pool.used(), pool.available()), (1400, -400));
    assert!(pool.check_can_allocate(1).is_err());
    MemoryReservation::resize(&mut r, 0);
    assert_eq!(pool.used(), 0);
    drop(r);
    assert_eq!((pool.used(), pool.stats().reserved_bytes), (0, 0));
    // Boxed as Arrow wants it (a 'static pool: leak one for the test).
    let leaked: &'static LimitedAllocator = Box::leak(Box::new(quiet(1000)));
    let boxed: Box<dyn MemoryReservation> = Box::new(leaked.try_reserve(10).unwrap());
    assert_eq!(boxed.size(), 10);
}
