//! Lowering the limit of a tokio service below what idle workers' credit holds: credit is
//! recalled only with its thread's cooperation (`docs/design.md`, "Why not take idle
//! threads' credit away from them"), and tokio's `on_thread_park` is where a worker
//! cooperates: `release_thread_credit` there hands its credit back each time it goes idle.
//! After a wave of requests on 16 workers, the limit lowered to 256 KiB above what is live
//! (below what the idle workers would keep without the hook) lets a reservation of 128 KiB
//! through.

use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const LIMIT: usize = 64 << 20;

/// A request that holds ~100 KiB in small blocks across a yield, so every worker's credit
/// fills up to its hold when they are freed.
async fn request(i: usize) -> usize {
    let blocks: Vec<Vec<u8>> = (0..50)
        .map(|j| vec![j as u8; 1024 + (i * 7 + j) % 3000])
        .collect();
    tokio::task::yield_now().await;
    blocks.iter().map(|b| black_box(b).len()).sum()
}

/// Runs one wave of 200 requests (about 25 MiB at once) on `rt` and returns what is charged
/// after it, once `settled` says the charge has settled or 10 s have passed (`settled` gets
/// the charge before and after 20 ms).
fn wave(rt: &tokio::runtime::Runtime, settled: impl Fn(usize, usize) -> bool) -> usize {
    let total = rt.block_on(async {
        let tasks: Vec<_> = (0..200).map(|i| tokio::spawn(request(i))).collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("the request task ran");
        }
        total
    });
    assert!(total > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = ALLOC.allocated_bytes();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = ALLOC.allocated_bytes();
        if settled(last, now) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn runtime(release_on_park: bool) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(16).enable_all();
    if release_on_park {
        builder.on_thread_park(|| ALLOC.release_thread_credit());
    }
    builder.build().expect("a runtime")
}

#[test]
fn parked_workers_give_their_credit_back() {
    ALLOC.set_refusal_reporting(false);
    ALLOC.set_limit(LIMIT);

    // Without the hook, for the figures: what idle workers keep (at most limit / 16).
    let plain = runtime(false);
    let start = ALLOC.allocated_bytes();
    // Settled when it stops falling: idle workers keep their credit.
    let kept = wave(&plain, |before, now| now >= before).saturating_sub(start);
    drop(plain);
    eprintln!(
        "without on_thread_park: {} KiB kept by idle workers",
        kept >> 10
    );
    assert!(
        kept <= LIMIT / 16 + (1 << 20),
        "{kept} bytes kept past the bound"
    );

    let rt = runtime(true);
    let start = ALLOC.allocated_bytes();
    // Settled once the workers have parked, however long a loaded machine takes to park
    // them (a worker searches for work a while before it parks).
    let kept = wave(&rt, |_, now| now.saturating_sub(start) < 64 << 10).saturating_sub(start);
    eprintln!(
        "with on_thread_park: {} KiB kept by idle workers",
        kept >> 10
    );
    // The runtime's own growth (task slabs, a few KiB) is all that stays.
    assert!(kept < 64 << 10, "{kept} bytes still charged after the wave");

    // Lowered to 256 KiB above what was live before the wave: below what idle workers
    // keep without the hook (0.6-2 MiB here), above what is live.
    ALLOC.set_limit(start + (256 << 10));
    let held = ALLOC
        .try_reserve(128 << 10)
        .expect("128 KiB under a limit lowered to 256 KiB above what is live");
    drop(held);
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    drop(rt);
}
