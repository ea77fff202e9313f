//! Model-based property test: random sequences of allocations, reallocations, frees, limit
//! changes and reservations (held, grown, shrunk, entered, dropped) on one thread, checked
//! after every step against a reference model that is just a list of live sizes, a list of
//! reservations and a limit.
//!
//! On one thread every number is exact (the thread's own credit is not usage), so the model
//! is exact too: a request is granted iff it fits in `limit - used` (a limit lowered below
//! usage refuses everything until usage drops), an entered reservation serves what its
//! headroom covers first, and `allocated_bytes`, `peak_bytes` and every counter must equal
//! the model's after each step. Both the cached (`new`) and the exact (`new_exact`) instance
//! are checked.

use limited_allocator::{LimitedAllocator, Overflow, Reservation};
use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, System};

use crate::common::*;

/// An operation on heap blocks, at top level or inside an entered reservation.
#[derive(Debug, Clone)]
enum BlockOp {
    Alloc(usize),
    Realloc(Index, usize),
    Free(Index),
}

#[derive(Debug, Clone)]
enum Step {
    Block(BlockOp),
    SetLimit(usize),
    Reserve(usize),
    DropReservation(Index),
    Grow(Index, usize),
    Shrink(Index, usize),
    /// Enters a reservation (refusing past its headroom when the flag is set), runs the
    /// block operations, leaves.
    Entered(Index, bool, Vec<BlockOp>),
    Check(usize),
    ResetPeak,
}

/// Sizes that exercise exact fits: tiny, ordinary, and around typical limits.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1..=64usize,
        4 => 1..=4096usize,
        2 => 1..=(96usize << 10),
        1 => 1..=(2usize << 20),
    ]
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0..=(64usize << 10),
        1 => (64usize << 10)..=(2 << 20),
    ]
}

fn block_op() -> impl Strategy<Value = BlockOp> {
    prop_oneof![
        5 => size().prop_map(BlockOp::Alloc),
        2 => (any::<Index>(), size()).prop_map(|(i, s)| BlockOp::Realloc(i, s)),
        3 => any::<Index>().prop_map(BlockOp::Free),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => block_op().prop_map(Step::Block),
        2 => limit().prop_map(Step::SetLimit),
        3 => prop_oneof![Just(0usize), size()].prop_map(Step::Reserve),
        2 => any::<Index>().prop_map(Step::DropReservation),
        1 => (any::<Index>(), size()).prop_map(|(i, s)| Step::Grow(i, s)),
        1 => (any::<Index>(), size()).prop_map(|(i, s)| Step::Shrink(i, s)),
        2 => (any::<Index>(), any::<bool>(), prop::collection::vec(block_op(), 1..8))
            .prop_map(|(i, refuse, ops)| Step::Entered(i, refuse, ops)),
        1 => size().prop_map(Step::Check),
        1 => Just(Step::ResetPeak),
    ]
}

/// One reservation as the model sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Res {
    /// Unspent headroom (charged).
    held: usize,
    /// Bytes allocated through it while entered, net of frees given back to it.
    used: usize,
    peak_used: usize,
    /// `Overflow::Refuse`: entered allocations past the headroom are refused.
    refuse: bool,
    refusals: u64,
}

/// What the allocator should report.
#[derive(Debug, Default)]
struct Model {
    limit: usize,
    live: Vec<usize>,
    res: Vec<Res>,
    peak: usize,
    allocs: u64,
    deallocs: u64,
    reallocs: u64,
    refusals: u64,
    refused_bytes: u64,
    largest_refusal: usize,
}

impl Model {
    fn used(&self) -> usize {
        self.live.iter().sum::<usize>() + self.held()
    }

    fn held(&self) -> usize {
        self.res.iter().map(|r| r.held).sum()
    }

    /// Whether `bytes` more fit. A limit lowered below usage refuses everything but 0.
    fn fits(&self, bytes: usize) -> bool {
        bytes <= self.limit.saturating_sub(self.used())
    }

    fn refuse(&mut self, bytes: usize) {
        self.refusals += 1;
        self.refused_bytes += bytes as u64;
        self.largest_refusal = self.largest_refusal.max(bytes);
    }

    fn note_peak(&mut self) {
        self.peak = self.peak.max(self.used());
    }

    /// Charges `bytes` for an allocation or a realloc's growth, through the entered
    /// reservation `entered` if any. False = refused (and counted).
    fn charge(&mut self, bytes: usize, entered: Option<usize>) -> bool {
        if let Some(j) = entered {
            let r = &mut self.res[j];
            if r.held >= bytes {
                r.held -= bytes;
                r.used += bytes;
                r.peak_used = r.peak_used.max(r.used);
                return true;
            }
            if r.refuse {
                // The reservation's own refusal: the allocator counts nothing.
                r.refusals += 1;
                return false;
            }
        }
        if !self.fits(bytes) {
            if let Some(j) = entered {
                self.res[j].refusals += 1;
            }
            self.refuse(bytes);
            return false;
        }
        if let Some(j) = entered {
            let r = &mut self.res[j];
            r.used += bytes;
            r.peak_used = r.peak_used.max(r.used);
        }
        true
    }

    /// Gives back `bytes` of a free or a realloc's shrink (to the entered reservation up to
    /// what was allocated through it, the rest to the shared budget).
    fn release(&mut self, bytes: usize, entered: Option<usize>) {
        if let Some(j) = entered {
            let r = &mut self.res[j];
            let back = bytes.min(r.used);
            r.used -= back;
            r.held += back;
        }
    }
}

/// Runs one block operation on the allocator and the model, `entered` naming the
/// reservation entered on this thread (if any).
fn block_step(
    a: &LimitedAllocator,
    m: &mut Model,
    blocks: &mut Vec<*mut u8>,
    op: &BlockOp,
    entered: Option<usize>,
) -> Result<(), TestCaseError> {
    match op {
        BlockOp::Alloc(size) => {
            let granted = m.charge(*size, entered);
            // SAFETY: `size >= 1`.
            let p = unsafe { a.alloc(layout(*size)) };
            prop_assert_eq!(!p.is_null(), granted, "{:?} entered {:?}", op, entered);
            if granted {
                blocks.push(p);
                m.live.push(*size);
                m.allocs += 1;
                m.note_peak();
            }
        }
        BlockOp::Realloc(i, new) => {
            if blocks.is_empty() {
                return Ok(());
            }
            let i = i.index(blocks.len());
            let old = m.live[i];
            let granted = if *new > old {
                m.charge(new - old, entered)
            } else {
                m.release(old - new, entered);
                true
            };
            // SAFETY: `blocks[i]` is live, allocated by `a` with `layout(old)`; `new >= 1`
            // and small.
            let p = unsafe { a.realloc(blocks[i], layout(old), *new) };
            prop_assert_eq!(
                !p.is_null(),
                granted,
                "{:?} from {} entered {:?}",
                op,
                old,
                entered
            );
            if granted {
                blocks[i] = p;
                m.live[i] = *new;
                m.reallocs += 1;
                m.note_peak();
            }
        }
        BlockOp::Free(i) => {
            if blocks.is_empty() {
                return Ok(());
            }
            let i = i.index(blocks.len());
            let p = blocks.swap_remove(i);
            let size = m.live.swap_remove(i);
            m.release(size, entered);
            // SAFETY: `p` is live, allocated by `a` with `layout(size)`; freed once.
            unsafe { a.dealloc(p, layout(size)) };
            m.deallocs += 1;
        }
    }
    Ok(())
}

/// Every number the allocator reports against the model's.
fn check(
    a: &LimitedAllocator,
    m: &Model,
    reservations: &[Reservation<'_>],
    after: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    let used = m.used();
    prop_assert_eq!(a.allocated_bytes(), used, "after {:?}", after);
    prop_assert_eq!(a.peak_bytes(), m.peak, "after {:?}", after);
    prop_assert_eq!(a.available_bytes(), m.limit.saturating_sub(used));
    let s = a.stats();
    prop_assert_eq!(
        (
            s.allocations,
            s.deallocations,
            s.reallocations,
            s.refusals,
            s.refused_bytes,
            s.largest_refusal_bytes,
        ),
        (
            m.allocs,
            m.deallocs,
            m.reallocs,
            m.refusals,
            m.refused_bytes,
            m.largest_refusal,
        ),
        "after {:?}",
        after
    );
    prop_assert_eq!(
        (
            s.current_bytes,
            s.peak_bytes,
            s.limit_bytes,
            s.reserved_bytes
        ),
        (used, m.peak, m.limit, m.held()),
        "after {:?}",
        after
    );
    prop_assert_eq!(s.inner_failures, 0);
    for (r, mr) in reservations.iter().zip(&m.res) {
        prop_assert_eq!(
            (
                r.headroom(),
                r.used(),
                r.peak_used(),
                r.size(),
                r.refusals()
            ),
            (
                mr.held,
                mr.used,
                mr.peak_used,
                mr.held + mr.used,
                mr.refusals
            ),
            "after {:?}",
            after
        );
    }
    Ok(())
}

/// Runs `steps` on a fresh instance and checks it against the model after each one.
fn run(exact: bool, initial_limit: usize, steps: &[Step]) -> Result<(), TestCaseError> {
    let a = if exact {
        LimitedAllocator::new_exact(System, initial_limit)
    } else {
        LimitedAllocator::new(System, initial_limit)
    };
    a.set_refusal_reporting(false);
    let mut m = Model {
        limit: initial_limit,
        ..Model::default()
    };
    let mut blocks: Vec<*mut u8> = Vec::new();
    let mut reservations: Vec<Reservation<'_>> = Vec::new();

    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Block(op) => block_step(&a, &mut m, &mut blocks, op, None)?,
            Step::SetLimit(limit) => {
                a.set_limit(*limit);
                m.limit = *limit;
            }
            Step::Reserve(bytes) => match a.try_reserve(*bytes) {
                Ok(r) => {
                    prop_assert!(m.fits(*bytes), "step {}: {:?} granted", n, step);
                    reservations.push(r);
                    m.res.push(Res {
                        held: *bytes,
                        ..Res::default()
                    });
                    m.note_peak();
                }
                Err(e) => {
                    prop_assert!(!m.fits(*bytes), "step {}: {:?} refused: {}", n, step, e);
                    prop_assert_eq!(
                        (e.requested, e.limit, e.current),
                        (*bytes, m.limit, m.used())
                    );
                    m.refuse(*bytes);
                }
            },
            Step::DropReservation(i) => {
                if reservations.is_empty() {
                    continue;
                }
                let i = i.index(reservations.len());
                drop(reservations.swap_remove(i));
                // Its headroom goes back; what was allocated through it stays live.
                m.res.swap_remove(i);
            }
            Step::Grow(i, bytes) => {
                if reservations.is_empty() {
                    continue;
                }
                let i = i.index(reservations.len());
                match reservations[i].grow(*bytes) {
                    Ok(()) => {
                        prop_assert!(m.fits(*bytes), "step {}: {:?} granted", n, step);
                        m.res[i].held += bytes;
                        m.note_peak();
                    }
                    Err(e) => {
                        prop_assert!(!m.fits(*bytes), "step {}: {:?} refused: {}", n, step, e);
                        prop_assert_eq!(
                            (e.requested, e.limit, e.current),
                            (*bytes, m.limit, m.used())
                        );
                        m.refuse(*bytes);
                    }
                }
            }
            Step::Shrink(i, bytes) => {
                if reservations.is_empty() {
                    continue;
                }
                let i = i.index(reservations.len());
                let given = reservations[i].shrink(*bytes);
                prop_assert_eq!(given, (*bytes).min(m.res[i].held));
                m.res[i].held -= given;
            }
            Step::Entered(i, refuse, ops) => {
                if reservations.is_empty() {
                    continue;
                }
                let i = i.index(reservations.len());
                let r = &reservations[i];
                if exact {
                    // No thread cache, no entering: the operations run on the shared budget.
                    prop_assert!(r.try_enter().is_err());
                    for op in ops {
                        block_step(&a, &mut m, &mut blocks, op, None)?;
                        check(&a, &m, &reservations, op)?;
                    }
                } else {
                    r.set_overflow(if *refuse {
                        Overflow::Refuse
                    } else {
                        Overflow::Grow
                    });
                    m.res[i].refuse = *refuse;
                    let guard = r.enter();
                    for op in ops {
                        block_step(&a, &mut m, &mut blocks, op, Some(i))?;
                        check(&a, &m, &reservations, op)?;
                    }
                    drop(guard);
                    // Left everywhere: what it allocated is plain memory now.
                    m.res[i].used = 0;
                }
            }
            Step::Check(bytes) => {
                let r = a.check_can_allocate(*bytes);
                prop_assert_eq!(r.is_ok(), m.fits(*bytes), "step {}: {:?}", n, step);
                if let Err(e) = r {
                    prop_assert_eq!(
                        (e.requested, e.limit, e.current, e.available),
                        (*bytes, m.limit, m.used(), m.limit.saturating_sub(m.used()))
                    );
                }
            }
            Step::ResetPeak => {
                a.reset_peak();
                m.peak = m.used();
            }
        }
        check(&a, &m, &reservations, &(n, step))?;
    }

    // Tear down: everything back, nothing drifts.
    drop(reservations);
    for (p, size) in blocks.into_iter().zip(m.live.drain(..)) {
        // SAFETY: live, allocated by `a` with `layout(size)`; freed once.
        unsafe { a.dealloc(p, layout(size)) };
    }
    prop_assert_eq!(a.allocated_bytes(), 0);
    prop_assert_eq!(a.stats().reserved_bytes, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn cached_instance_matches_the_model(
        initial in limit(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        run(false, initial, &steps)?;
    }

    #[test]
    fn exact_instance_matches_the_model(
        initial in limit(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        run(true, initial, &steps)?;
    }
}

// ---- regressions the model found, as plain tests ---------------------------------------

fn alloc(a: &LimitedAllocator, size: usize) -> *mut u8 {
    // SAFETY: every size used here is non-zero.
    let p = unsafe { a.alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

/// Headroom given back by a reservation (shrink, drop) lowers usage; allocations made from
/// the thread's credit afterwards must not be measured against the old, higher charge.
#[test]
fn peak_is_exact_after_a_reservation_shrinks_or_drops() {
    let a = quiet(1 << 20);
    let r = a.try_reserve(1000).unwrap();
    let p = alloc(&a, 10);
    assert_eq!(a.peak_bytes(), 1010);
    r.shrink(500);
    assert_eq!(a.allocated_bytes(), 510);
    let q = alloc(&a, 1);
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (511, 1010));
    drop(r);
    let s = alloc(&a, 5);
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (16, 1010));
    a.reset_peak();
    for (p, n) in [(p, 10), (q, 1), (s, 5)] {
        free(&a, p, n);
    }
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (0, 16));
}

/// A block allocated outside a reservation and freed while it is entered goes back to the
/// shared budget; later allocations from credit must see the lower usage.
#[test]
fn peak_is_exact_after_an_entered_free_of_an_outside_block() {
    let a = quiet(1 << 20);
    let p = alloc(&a, 100);
    let r = a.try_reserve(50).unwrap();
    assert_eq!(a.peak_bytes(), 150);
    {
        let _inside = r.enter();
        free(&a, p, 100);
    }
    assert_eq!(a.allocated_bytes(), 50);
    let q = alloc(&a, 10);
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (60, 150));
    free(&a, q, 10);
    drop(r);
    assert_eq!((a.allocated_bytes(), a.peak_bytes()), (0, 150));
    let s = a.stats();
    assert_eq!((s.allocations, s.deallocations), (2, 2));
}

/// Growing a reservation may use this thread's own unspent credit, as `try_reserve` does:
/// a request within `available_bytes()` is not refused.
#[test]
fn reservation_grow_uses_the_threads_own_credit() {
    let a = quiet(1 << 20);
    let p = alloc(&a, 1000); // takes a batch of credit from the headroom
    let r = a.try_reserve(0).unwrap();
    let free_now = a.available_bytes();
    assert_eq!(free_now, (1 << 20) - 1000);
    r.grow(free_now)
        .expect("grow within available_bytes() refused");
    assert_eq!((a.allocated_bytes(), a.available_bytes()), (1 << 20, 0));
    let err = r.grow(1).unwrap_err();
    assert_eq!((err.requested, err.current, err.available), (1, 1 << 20, 0));
    assert_eq!(a.stats().refusals, 1);
    drop(r);
    free(&a, p, 1000);
    assert_eq!(a.allocated_bytes(), 0);
}

/// An entered reservation that overflows its headroom grows from the shared budget; the
/// thread's own unspent credit is part of that budget and must not cause a refusal.
#[test]
fn entered_overflow_uses_the_threads_own_credit() {
    let a = quiet(1 << 20);
    let p = alloc(&a, 1000); // takes a batch of credit from the headroom
    let r = a.try_reserve(0).unwrap();
    let rest = a.available_bytes();
    assert_eq!(rest, (1 << 20) - 1000);
    let q = {
        let _inside = r.enter();
        // SAFETY: non-zero size.
        unsafe { a.alloc(layout(rest)) }
    };
    assert!(
        !q.is_null(),
        "entered allocation within available_bytes() refused"
    );
    assert_eq!(
        (a.allocated_bytes(), r.peak_used(), a.stats().refusals),
        (1 << 20, rest, 0)
    );
    free(&a, q, rest);
    drop(r);
    free(&a, p, 1000);
    assert_eq!(a.allocated_bytes(), 0);
}
