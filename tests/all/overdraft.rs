//! The emergency overdraft on standalone instances: a thread that is panicking (here: an
//! unwinding that runs a destructor which allocates) is served past the limit, within the
//! allowance; the grant is counted apart and kept out of the peak, and freeing gives it back
//! exactly. (Spending it aborts the process: `allocator-tests/tests/panic_at_limit_main.rs`.)

use limited_allocator::{LimitedAllocator, Overflow};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::common::*;

/// Allocates `size` bytes from `a` when dropped, recording the block.
struct AllocatesOnDrop<'a> {
    a: &'a LimitedAllocator,
    size: usize,
    got: &'a Cell<Option<*mut u8>>,
}

impl Drop for AllocatesOnDrop<'_> {
    fn drop(&mut self) {
        assert!(std::thread::panicking());
        self.got.set(alloc(self.a, self.size));
    }
}

/// Unwinds (without the panic hook's output) through a destructor that allocates.
fn allocate_while_unwinding(a: &LimitedAllocator, size: usize) -> Option<*mut u8> {
    let got = Cell::new(None);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _d = AllocatesOnDrop { a, size, got: &got };
        resume_unwind(Box::new("unwinding"));
    }));
    assert!(r.is_err());
    got.get()
}

#[test]
fn a_panicking_thread_is_served_past_the_limit_counted_apart() {
    let a = quiet(10_000);
    let held = a.try_reserve(9_900).unwrap();
    assert!(alloc(&a, 300).is_none(), "not panicking: refused");
    let p = allocate_while_unwinding(&a, 300).expect("served by the overdraft");
    let s = a.stats();
    assert_eq!(
        (
            s.overdraft_grants,
            s.overdraft_bytes,
            s.overdraft_peak_bytes
        ),
        (1, 300, 200)
    );
    assert_eq!(s.overdraft_limit_bytes, 1 << 20);
    assert_eq!(s.refusals, 1, "the overdraft's grant is no refusal");
    // The block is live and charged; the peak stays within the limit.
    assert_eq!(a.allocated_bytes(), 10_200);
    assert!(a.peak_bytes() <= a.limit(), "{}", a.peak_bytes());
    assert!(s.peak_bytes <= s.limit_bytes, "{s:?}");
    free(&a, p, 300);
    assert_eq!(a.allocated_bytes(), 9_900);
    drop(held);
    assert_eq!(a.allocated_bytes(), 0);
    // Once back within the limit, a reset peak forgets the overdraft's influence.
    a.reset_peak();
    assert_eq!(a.peak_bytes(), 0);
    assert_eq!(a.stats().overdraft_grants, 1);
}

#[test]
fn the_allowance_bounds_the_charge_not_a_running_total() {
    let a = quiet(10_000);
    a.set_panic_overdraft(1000);
    let held = a.try_reserve(10_000).unwrap();
    // Two grants of 600 each would pass limit + 1000 together; one after the other's free
    // fits again.
    for _ in 0..3 {
        let p = allocate_while_unwinding(&a, 600).unwrap();
        free(&a, p, 600);
    }
    let p = allocate_while_unwinding(&a, 1000).expect("exactly the allowance");
    let s = a.stats();
    assert_eq!((s.overdraft_grants, s.overdraft_bytes), (4, 2800));
    assert_eq!(s.overdraft_peak_bytes, 1000);
    free(&a, p, 1000);
    drop(held);
    assert_eq!(a.allocated_bytes(), 0);
}

#[test]
fn a_refusing_reservation_serves_a_panicking_thread_from_the_shared_budget() {
    let a = quiet(10_000);
    let r = a.try_reserve(100).unwrap();
    r.set_overflow(Overflow::Refuse);
    let p = {
        let _inside = r.enter();
        allocate_while_unwinding(&a, 500).expect("the shared budget has room")
    };
    let s = a.stats();
    assert_eq!((s.overdraft_grants, s.refusals, r.refusals()), (0, 0, 0));
    assert_eq!(a.allocated_bytes(), 600);
    free(&a, p, 500);
    drop(r);
    assert_eq!(a.allocated_bytes(), 0);
}
