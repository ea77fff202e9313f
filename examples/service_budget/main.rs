//! An HTTP server with a per-request memory budget and load shedding, under a 64 MiB
//! limit (or `LIMITED_ALLOCATOR_LIMIT`).
//!
//! ```text
//! cargo run --release --example service_budget --features tower,prometheus -- [PORT] [SECONDS]
//! curl -s 'localhost:8080/work?kib=256'      # 200 sum=...
//! curl -s 'localhost:8080/work?kib=4096'     # 503 over budget (a request may hold 1 MiB)
//! curl -s localhost:8080/metrics | grep -E 'request_peak|requests_shed|allocated_bytes'
//! ```
//!
//! PORT defaults to 8080 (0 picks a free one), SECONDS to 60; `GET /quit` stops it early.
//! Each `/work` request reserves what it asks for (capped at 1 MiB + 32 KiB) with
//! `Overflow::Refuse`, and is shed with 503 while the allocator (or the monitor) is at High
//! pressure or above: the fifth of the budget left is the runtime's and the server's own.

mod app;

use limited_allocator::{limit_from_env, ByteSize, LimitedAllocator};
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 64 << 20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(limit) = limit_from_env()? {
        ALLOC.set_limit(limit);
    }
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8080);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        // An idle worker's credit comes back only with its cooperation: hand it back at
        // each park, so the whole budget stays usable (docs/design.md).
        .on_thread_park(|| ALLOC.release_thread_credit())
        .enable_all()
        .build()?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "serving http://{}/work?kib=N and /metrics for {seconds} s (limit {})",
            listener.local_addr()?,
            ByteSize(ALLOC.limit())
        );
        let stop = tokio::time::sleep(Duration::from_secs(seconds));
        app::serve(listener, &ALLOC, app::Settings::default(), stop).await
    })?;
    drop(runtime);
    let s = served.stats.snapshot();
    println!(
        "done: {} requests ran, {} shed; peak {} of {} limit",
        s.completed,
        s.shed_total(),
        ByteSize(ALLOC.peak_bytes()),
        ByteSize(ALLOC.limit())
    );
    Ok(())
}
