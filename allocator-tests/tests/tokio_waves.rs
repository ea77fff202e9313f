//! A tokio runtime under a 64 MiB global budget, as a service would run it: 16 workers, up
//! to 64 blocking threads, five waves of 2000 small requests (each a task that allocates and
//! hands a blocking job to `spawn_blocking`). After each wave nothing of it is live, and
//! the budget must be usable again: `allocated_bytes` is back near the start (within the
//! credit bound, `limit / 16`) and `try_reserve(48 MiB)` succeeds, although 80 threads took
//! credit and now sit idle (the workers parked, the blocking threads waiting for work).
//! Before credit was bounded in total this read 27 MiB above the start and every wave's
//! reservation was refused.

use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const LIMIT: usize = 64 << 20;
/// The bound on all threads' credit together (`limit / 16`, see `docs/design.md`).
const CREDIT_BOUND: usize = LIMIT / 16;
/// What the runtime itself may keep from a wave (its task slabs, the blocking pool's
/// thread handles and queues): measured below 200 KiB here; a generous margin.
const RUNTIME_GROWTH: usize = 1 << 20;

async fn request(i: usize) -> usize {
    let body = vec![i as u8; 512 + i % 3000];
    let header = format!("request {i} of {} bytes", body.len());
    let job = tokio::task::spawn_blocking(move || {
        let mut rows: Vec<u64> = (0..(64 + i % 500) as u64).collect();
        rows.reverse();
        black_box(&rows).len() + black_box(&header).len()
    });
    job.await.expect("the blocking job ran") + black_box(&body).len()
}

#[test]
fn the_budget_is_usable_after_every_wave() {
    ALLOC.set_refusal_reporting(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(16)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .expect("a runtime");
    ALLOC.set_limit(LIMIT);
    let start = ALLOC.allocated_bytes();
    assert!(start < 8 << 20, "the runtime alone uses {start} bytes");
    for wave in 0..5 {
        let total = rt.block_on(async {
            let tasks: Vec<_> = (0..2000).map(|i| tokio::spawn(request(i))).collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("the request task ran");
            }
            total
        });
        assert!(total > 0);
        let now = ALLOC.allocated_bytes();
        eprintln!(
            "wave {wave}: {now} bytes charged ({} KiB above the start), peak {}",
            now.saturating_sub(start) >> 10,
            ALLOC.peak_bytes()
        );
        assert!(
            now <= start + CREDIT_BOUND + RUNTIME_GROWTH,
            "wave {wave}: {now} bytes read as used, {start} at the start"
        );
        let r = ALLOC.try_reserve(48 << 20);
        assert!(r.is_ok(), "wave {wave}: {:?}", r.err());
        drop(r);
        assert!(ALLOC.peak_bytes() <= LIMIT);
    }
    drop(rt);
}
