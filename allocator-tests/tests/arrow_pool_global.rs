//! The global allocator as an Arrow pool: it already charged every buffer byte when it was
//! allocated, so a claim is attribution only (`pool_claimed_bytes`), never a second charge.

use arrow_buffer::{Buffer, MemoryPool};
use limited_allocator::arrow::PoolRole;
use limited_allocator::LimitedAllocator;
use std::alloc::System;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// Slack for the small bookkeeping allocations a claim makes (its box, arrow's mutex).
const SLACK: usize = 4096;

#[test]
fn the_global_instance_attributes_claims() {
    ALLOC.set_refusal_reporting(false);
    assert_eq!(ALLOC.pool_role(), PoolRole::Global);
    // A second instance in the same process is not the global one.
    let standalone = LimitedAllocator::new(System, 1 << 30);
    assert_eq!(standalone.pool_role(), PoolRole::Standalone);

    let before = ALLOC.allocated_bytes();
    let b = Buffer::from_vec(vec![1u8; 1 << 20]);
    let with_buffer = ALLOC.allocated_bytes();
    assert!(
        with_buffer >= before + (1 << 20),
        "the allocation itself is charged"
    );

    b.claim(&ALLOC);
    b.slice(10).claim(&ALLOC);
    let claimed = ALLOC.allocated_bytes();
    assert!(
        claimed < with_buffer + SLACK,
        "a claim must not charge the bytes again: {with_buffer} -> {claimed}"
    );
    assert_eq!(ALLOC.stats().pool_claimed_bytes, 1 << 20);
    assert_eq!(ALLOC.used(), ALLOC.allocated_bytes());
    assert_eq!(ALLOC.capacity(), ALLOC.limit());

    // The standalone instance charges the same buffer: it never saw the bytes.
    b.claim(&standalone);
    assert_eq!(standalone.used(), 1 << 20);
    assert_eq!(ALLOC.stats().pool_claimed_bytes, 0, "the claim moved");

    drop(b);
    assert_eq!(standalone.used(), 0);
    assert!(ALLOC.allocated_bytes() < before + SLACK);

    // The probe is exact while other threads allocate through the global instance (run
    // after the numbers above: other threads' credit reads as usage).
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(std::hint::black_box(vec![0u8; 64]));
            }
        });
        for _ in 0..100 {
            let pool = LimitedAllocator::new(System, 1 << 20);
            assert_eq!(pool.pool_role(), PoolRole::Standalone);
            ALLOC.set_pool_role(PoolRole::Auto);
            assert_eq!(ALLOC.pool_role(), PoolRole::Global);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
