//! `tower::BudgetLayer` on standalone allocators: each way a request is shed, with its
//! numbers, and an admitted request's peak and refusals recorded.
#![cfg(feature = "tower")]

use limited_allocator::metrics::ShedReason;
use limited_allocator::monitor::{BudgetSource, MemoryMonitor};
use limited_allocator::tower::{BudgetError, BudgetLayer, Shed};
use limited_allocator::{LimitedAllocator, Overflow, PressureLevel};
use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tower_layer::Layer;
use tower_service::Service;

fn leak(limit: usize) -> &'static LimitedAllocator {
    Box::leak(Box::new(LimitedAllocator::new(System, limit)))
}

/// A service whose requests allocate `bytes` from `budget` (null if refused), yield once,
/// and free them: answers whether the allocation was granted.
#[derive(Clone, Copy)]
struct Alloc(&'static LimitedAllocator);

struct Job {
    budget: &'static LimitedAllocator,
    layout: Layout,
    block: Option<*mut u8>,
}

// SAFETY: the raw block is only touched by the future that owns it.
unsafe impl Send for Job {}

impl Future for Job {
    type Output = Result<bool, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.block {
            None => {
                // SAFETY: the layout has a non-zero size.
                let p = unsafe { self.budget.alloc(self.layout) };
                self.block = Some(p);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(p) => {
                let granted = !p.is_null();
                if granted {
                    // SAFETY: allocated above with this layout.
                    unsafe { self.budget.dealloc(p, self.layout) };
                }
                self.block = Some(core::ptr::null_mut());
                Poll::Ready(Ok(granted))
            }
        }
    }
}

impl Service<usize> for Alloc {
    type Response = bool;
    type Error = Infallible;
    type Future = Job;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, bytes: usize) -> Job {
        Job {
            budget: self.0,
            layout: Layout::from_size_align(bytes, 8).unwrap(),
            block: None,
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn shed_of(r: Result<bool, BudgetError<Infallible>>) -> Shed {
    match r {
        Err(BudgetError::Shed(s)) => s,
        other => panic!("not shed: {other:?}"),
    }
}

#[test]
fn a_request_at_the_shedding_level_is_shed_with_the_numbers() {
    let budget = leak(1000);
    let layer = BudgetLayer::new(budget, 100).size_with(|_: &usize| 100);
    let mut svc = layer.layer(Alloc(budget));
    let _held = budget.try_reserve(800).unwrap(); // 80 %: High
    let shed = shed_of(block_on(svc.call(10)));
    assert_eq!(
        shed,
        Shed {
            reason: ShedReason::AllocatorLevel,
            level: PressureLevel::High,
            shed_at: PressureLevel::High,
            requested: 100,
            allocated: 800,
            limit: 1000,
        }
    );
    assert_eq!(
        budget.allocated_bytes(),
        800,
        "nothing of the request stays charged"
    );
    let s = layer.stats().snapshot();
    assert_eq!((s.shed(ShedReason::AllocatorLevel), s.completed), (1, 0));
}

#[test]
fn a_reservation_that_would_reach_the_level_is_given_back_and_shed() {
    let budget = leak(1000);
    let layer = BudgetLayer::new(budget, 150);
    let mut svc = layer.layer(Alloc(budget));
    let _held = budget.try_reserve(700).unwrap(); // Medium; 700 + 150 is High
    let shed = shed_of(block_on(svc.call(10)));
    assert_eq!(
        (shed.reason, shed.level),
        (ShedReason::AllocatorLevel, PressureLevel::High)
    );
    assert_eq!(budget.allocated_bytes(), 700);
    // One that stays below the level runs.
    let layer = BudgetLayer::new(budget, 50);
    assert!(block_on(layer.layer(Alloc(budget)).call(10)).unwrap());
}

#[test]
fn a_reservation_the_budget_cannot_give_is_shed() {
    let budget = leak(1000);
    let layer = BudgetLayer::new(budget, 2000).shed_at(PressureLevel::Critical);
    let shed = shed_of(block_on(layer.layer(Alloc(budget)).call(1)));
    assert_eq!(
        (shed.reason, shed.requested, shed.allocated),
        (ShedReason::Reservation, 2000, 0)
    );
    assert_eq!(layer.stats().snapshot().shed(ShedReason::Reservation), 1);
}

#[test]
fn the_monitors_combined_level_sheds_too() {
    struct NinetySeven;
    impl BudgetSource for NinetySeven {
        fn allocated_bytes(&self) -> usize {
            970
        }
        fn peak_bytes(&self) -> usize {
            970
        }
        fn limit(&self) -> usize {
            1000
        }
    }
    let monitor = MemoryMonitor::builder()
        .budget_source(Arc::new(NinetySeven))
        .use_cgroup_limit(false)
        .psi_thresholds(None)
        .build()
        .unwrap();
    monitor.sample_now();
    let budget = leak(1 << 20);
    let layer = BudgetLayer::new(budget, 100).monitor(monitor.handle());
    let shed = shed_of(block_on(layer.layer(Alloc(budget)).call(1)));
    assert_eq!(
        (shed.reason, shed.level),
        (ShedReason::MonitorLevel, PressureLevel::Critical)
    );
    assert_eq!(budget.allocated_bytes(), 0);
}

#[test]
fn an_admitted_request_runs_in_its_reservation_and_its_peak_is_recorded() {
    let budget = leak(1 << 20);
    let layer = BudgetLayer::new(budget, 8192).overflow(Overflow::Refuse);
    let mut svc = layer.layer(Alloc(budget));
    assert!(block_on(svc.call(4096)).unwrap());
    // Over its own 8 KiB, under Refuse: the allocation is refused, the service goes on.
    assert!(!block_on(svc.call(16384)).unwrap());
    assert!(block_on(svc.call(100)).unwrap());
    let s = layer.stats().snapshot();
    assert_eq!((s.completed, s.peak_sum, s.refusals), (3, 4196, 1));
    // Cumulative: the refused one peaked at 0 and the small one at 100, both <= 1 KiB.
    assert_eq!((s.buckets[0], s.buckets[1]), ((1024, 2), (4096, 3)));
    assert_eq!(budget.allocated_bytes(), 0, "every reservation given back");
}

#[test]
fn a_request_dropped_before_it_finished_is_recorded_and_gives_back() {
    let budget = leak(1 << 20);
    let layer = BudgetLayer::new(budget, 8192);
    let mut svc = layer.layer(Alloc(budget));
    let mut fut = Box::pin(svc.call(4096));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending()); // holds 4096 now
    drop(fut); // the block leaks with the Job (it is a raw pointer), the budget does not
    let s = layer.stats().snapshot();
    assert_eq!((s.completed, s.peak_sum), (1, 4096));
    assert_eq!(
        budget.allocated_bytes(),
        4096,
        "only the leaked block stays charged"
    );
}
