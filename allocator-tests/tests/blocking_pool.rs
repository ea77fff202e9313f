//! tokio's blocking pool growing to 64 threads and shrinking back (threads that come and
//! go, blocks allocated on one thread and freed on another) leaves no drift: after each
//! runtime is dropped, `allocated_bytes` is exactly where it was before it was built.

use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const ROUNDS: usize = 6;
const WAVES: usize = 3;
const BLOCKING: usize = 64;
/// Idle blocking threads exit after this: each wave's threads are gone before the next.
const KEEP_ALIVE: Duration = Duration::from_millis(20);

/// One runtime: `WAVES` times, 64 blocking tasks each allocate a block (and scratch they
/// free themselves) and hand the block to the async side, which frees it on a worker
/// thread; then the pool idles until its threads have exited. Returns the threads the
/// pool started.
fn one_runtime() -> usize {
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&started);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING)
        .thread_keep_alive(KEEP_ALIVE)
        .on_thread_start(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..WAVES {
            let tasks: Vec<_> = (0..BLOCKING)
                .map(|i| {
                    tokio::task::spawn_blocking(move || {
                        let scratch: Vec<u64> = (0..1000 + i as u64).collect();
                        std::thread::sleep(Duration::from_millis(5));
                        vec![scratch.len() as u8; 16 << 10]
                    })
                })
                .collect();
            let mut blocks = Vec::with_capacity(BLOCKING);
            for t in tasks {
                blocks.push(t.await.unwrap());
            }
            // Freed here, on a worker thread: allocated on the blocking threads.
            tokio::spawn(async move { drop(blocks) }).await.unwrap();
            tokio::time::sleep(KEEP_ALIVE * 5).await;
        }
    });
    drop(rt); // joins the workers and every blocking thread
    started.load(std::sync::atomic::Ordering::Relaxed)
}

/// Exact byte deltas on the global counter: run on the main thread, without libtest.
fn main() {
    let mut deltas = Vec::new();
    let mut threads = 0;
    for _ in 0..ROUNDS {
        let before = ALLOC.allocated_bytes();
        threads += one_runtime();
        deltas.push(ALLOC.allocated_bytes() as i128 - before as i128);
    }
    // The first runtime may leave what tokio initializes once per process.
    assert!(
        deltas[1..].iter().all(|&d| d == 0),
        "allocated_bytes moved across a runtime's life: {deltas:?} bytes per round"
    );
    assert!(
        threads >= ROUNDS * (2 + WAVES * BLOCKING / 2),
        "the pool did not grow and shrink: {threads} threads in {ROUNDS} rounds"
    );
    println!("blocking_pool: ok ({threads} threads came and went; deltas per round {deltas:?})");
}
