//! What a per-request budget costs, side by side in one run: a request (allocate 1 KiB,
//! free it, answer) called bare, inside `Reservation::scope` (enter and leave around the
//! poll), and through `tower::BudgetLayer` (level checks, a reservation taken and given
//! back, the call and poll entered, the peak recorded). The allocator is the global one
//! in all three, so only the budget's bookkeeping differs.
//!
//! ```text
//! cargo bench --bench service --features tower
//! ```

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use limited_allocator::tower::BudgetLayer;
use limited_allocator::LimitedAllocator;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::task::{Context, Poll, Waker};
use tower_layer::Layer;
use tower_service::Service;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);

/// Allocates `n` bytes, touches them, frees them, answers their length.
#[derive(Clone, Copy)]
struct Work;

impl Service<usize> for Work {
    type Response = usize;
    type Error = Infallible;
    type Future = Ready<Result<usize, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, n: usize) -> Self::Future {
        let v = vec![1u8; n];
        ready(Ok(black_box(v).len()))
    }
}

fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the bench's futures are ready at once"),
    }
}

fn service(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_1KiB");
    let mut bare = Work;
    g.bench_function("bare", |b| b.iter(|| poll_once(bare.call(black_box(1024)))));
    let reservation = ALLOC.try_reserve(64 << 10).unwrap();
    g.bench_function("scope", |b| {
        b.iter(|| poll_once(reservation.scope(async { bare.call(black_box(1024)).await })))
    });
    let mut layered = BudgetLayer::new(&ALLOC, 64 << 10).layer(Work);
    g.bench_function("budget_layer", |b| {
        b.iter(|| poll_once(layered.call(black_box(1024))))
    });
    g.finish();
}

criterion_group!(benches, service);
criterion_main!(benches);
