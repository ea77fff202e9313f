//! `Vec::try_reserve` past the limit of the global allocator returns `Err`, the refusal is
//! counted with its size, and the process goes on allocating within the limit.

use allocator_tests::{prepare_backtraces, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::System;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// Sets the limit to `headroom` bytes above current usage; restores "unlimited" on drop.
struct LimitAbove;

impl LimitAbove {
    fn set(headroom: usize) -> (Self, usize) {
        ALLOC.set_refusal_reporting(false);
        let limit = ALLOC.allocated_bytes() + headroom;
        ALLOC.set_limit(limit);
        ALLOC.reset_peak();
        (LimitAbove, limit)
    }
}

impl Drop for LimitAbove {
    fn drop(&mut self) {
        ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    }
}

/// The global counters see everything the process does (see the crate docs), and these
/// sub-cases assert exact byte deltas, so they run one after another on the main thread
/// with no test harness (`harness = false` in Cargo.toml): libtest's own thread, busy with
/// its bookkeeping while the test thread starts, once showed up in them as 19 848 bytes.
fn main() {
    prepare_backtraces();
    vec_try_reserve_past_the_limit_is_an_error_and_the_process_goes_on();
    halving_on_refusal_fills_the_budget_without_passing_it();
    println!("try_reserve_past_limit: ok");
}

fn vec_try_reserve_past_the_limit_is_an_error_and_the_process_goes_on() {
    let (_limit, limit) = LimitAbove::set(64 << 20);
    let before = Counts::of(&ALLOC);

    let mut v: Vec<u8> = Vec::new();
    let err = v
        .try_reserve(128 << 20)
        .expect_err("128 MiB granted under 64 MiB of headroom");
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(
        (d.refusals, d.refused_bytes, d.allocs, d.bytes),
        (1, 128 << 20, 0, 0),
        "exactly one refusal of 128 MiB, nothing charged"
    );
    assert!(ALLOC.stats().largest_refusal_bytes >= 128 << 20);
    assert_eq!(v.capacity(), 0);
    let text = err.to_string(); // allocates: measure from here on
    assert!(
        text.contains("allocator returned an error"),
        "the allocator refused (not a capacity overflow): {text}"
    );
    drop(text);
    let before = Counts::of(&ALLOC);

    // The process goes on: 32 MiB fit, are charged exactly, and are usable.
    v.try_reserve_exact(32 << 20)
        .expect("32 MiB within the limit refused");
    v.resize(32 << 20, 0xA5);
    assert_eq!((v[0], v[12345], v[(32 << 20) - 1]), (0xA5, 0xA5, 0xA5));
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!((d.bytes, d.allocs, d.refusals), (32 << 20, 1, 0));

    // A second large request is refused too, and `v` is untouched by it.
    assert!(v.try_reserve(64 << 20).is_err());
    assert_eq!(
        (v.len(), v.capacity(), v[12345]),
        (32 << 20, 32 << 20, 0xA5)
    );
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(
        (d.bytes, d.allocs, d.reallocs, d.refusals),
        (32 << 20, 1, 0, 1),
        "the refused growth left the old block charged"
    );
    assert!(ALLOC.peak_bytes() <= limit);
    drop(v);
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!((d.bytes, d.allocs, d.deallocs, d.refusals), (0, 1, 1, 1));
}

/// The degrade pattern: ask for big chunks, halve on refusal, and end up using the budget
/// almost to the byte without ever passing it.
fn halving_on_refusal_fills_the_budget_without_passing_it() {
    const HEADROOM: usize = (16 << 20) - 12345;
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(256);
    let (_limit, limit) = LimitAbove::set(HEADROOM);
    let before = Counts::of(&ALLOC);
    let mut chunk = 8 << 20;
    let mut refused = 0;
    while chunk >= 4096 {
        let mut c: Vec<u8> = Vec::new();
        if c.try_reserve_exact(chunk).is_ok() {
            chunks.push(c);
        } else {
            refused += 1;
            chunk /= 2;
        }
    }
    let total: usize = chunks.iter().map(|c| c.capacity()).sum();
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(
        d.bytes, total as i128,
        "the charge is exactly what was granted"
    );
    assert_eq!(d.refusals, refused);
    assert!(total <= HEADROOM);
    assert!(
        total > HEADROOM - 4096,
        "only {total} of {HEADROOM} bytes used: headroom was lost"
    );
    assert!(ALLOC.allocated_bytes() <= limit && ALLOC.peak_bytes() <= limit);
    let outer = chunks.capacity() * std::mem::size_of::<Vec<u8>>();
    drop(chunks);
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(
        d.bytes,
        -(outer as i128),
        "everything given back, the outer Vec too"
    );
    assert_eq!(d.deallocs, d.allocs + 1);
}
