//! `Reservation::scope` on a real tokio multi-thread runtime with the allocator installed
//! globally: per-request budgets that follow a task across `.await`s and worker threads.

use limited_allocator::{LimitedAllocator, Overflow};
use std::alloc::System;
use std::collections::HashSet;
use std::sync::Mutex;
use std::thread::ThreadId;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// Both tests read process-wide numbers: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const REQUESTS: usize = 64;
/// Request `i` holds `(i + 1) * STEP` bytes at its peak, in `CHUNKS` blocks. Any other
/// request's bytes attributed to it would add at least `STEP`.
const STEP: usize = 16 << 10;
const CHUNKS: usize = 4;
/// What a request may see beyond its own blocks: the runtime's bookkeeping inside its polls
/// (a wake-up, a yield), which the docs say is attributed.
const SLACK: usize = 4 << 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

struct Outcome {
    held: usize,
    peak_used: usize,
    used_after: usize,
    refusals: u64,
    threads: usize,
}

/// One request: allocates its blocks one per poll, yielding in between (so it may resume
/// on another worker), then frees them the same way, all inside `scope`.
async fn request(i: usize) -> Outcome {
    let held = (i + 1) * STEP;
    let reservation = ALLOC.try_reserve(held + SLACK).unwrap();
    let threads = Mutex::new(HashSet::<ThreadId>::new());
    let note_thread = || {
        threads.lock().unwrap().insert(std::thread::current().id());
    };
    let used_after = reservation
        .scope(async {
            let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(CHUNKS);
            for _ in 0..CHUNKS {
                note_thread();
                let mut b = vec![0u8; held / CHUNKS];
                b[0] = i as u8; // touch it
                blocks.push(b);
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            while let Some(b) = blocks.pop() {
                note_thread();
                assert_eq!(b[0], i as u8);
                drop(b);
                tokio::task::yield_now().await;
            }
            drop(blocks);
            // Read inside, after the frees: still entered, so what was freed is given back.
            reservation.used()
        })
        .await;
    let threads = threads.lock().unwrap().len();
    Outcome {
        held,
        peak_used: reservation.peak_used(),
        used_after,
        refusals: reservation.refusals(),
        threads,
    }
}

#[test]
fn each_request_sees_its_own_bytes_across_yields_and_workers() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let outcomes: Vec<Outcome> = rt.block_on(async {
        let tasks: Vec<_> = (0..REQUESTS).map(|i| tokio::spawn(request(i))).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    drop(rt);
    let mut moved = 0;
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            o.peak_used >= o.held,
            "request {i}: peak_used {} does not cover the {} bytes it held",
            o.peak_used,
            o.held
        );
        assert!(
            o.peak_used <= o.held + SLACK,
            "request {i}: peak_used {} counts more than its {} bytes (+{SLACK}): \
             another request's bytes were attributed to it",
            o.peak_used,
            o.held
        );
        assert!(
            o.used_after <= SLACK,
            "request {i}: used {} after it freed everything",
            o.used_after
        );
        assert_eq!(o.refusals, 0, "request {i}");
        moved += usize::from(o.threads > 1);
    }
    println!("{moved} of {REQUESTS} requests ran on more than one worker thread");
    assert!(
        moved > 0,
        "no request moved between workers: the test proved nothing"
    );
}

#[test]
fn a_request_over_its_budget_gets_an_error_and_the_runtime_goes_on() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.set_refusal_reporting(false);
    let rt = runtime();
    let (refused, small_ok, refusals) = rt.block_on(async {
        tokio::spawn(async {
            let request = ALLOC.try_reserve(64 << 10).unwrap();
            request.set_overflow(Overflow::Refuse);
            let (refused, small_ok) = request
                .scope(async {
                    tokio::task::yield_now().await;
                    let mut big: Vec<u8> = Vec::new();
                    let refused = big.try_reserve_exact(1 << 20).is_err();
                    tokio::task::yield_now().await;
                    let mut small: Vec<u8> = Vec::new();
                    let small_ok = small.try_reserve_exact(16 << 10).is_ok();
                    (refused, small_ok)
                })
                .await;
            (refused, small_ok, request.refusals())
        })
        .await
        .unwrap()
    });
    assert!(
        refused,
        "1 MiB granted to a request of 64 KiB under Overflow::Refuse"
    );
    assert!(small_ok, "16 KiB refused within the request's 64 KiB");
    assert_eq!(refusals, 1);
    // The same runtime serves the requests that follow, from the shared budget.
    let sums: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                tokio::spawn(async move {
                    let v: Vec<u64> = (0..100_000).map(|x| x * i).collect();
                    tokio::task::yield_now().await;
                    v.iter().sum()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(sums[3], 3 * 4_999_950_000);
}
