//! The README's main demo: a service-like program under a hard memory budget.
//!
//! Run it with `cargo run --release --example production_memory`, or with your own budget:
//! `LIMITED_ALLOCATOR_LIMIT=64MiB cargo run --release --example production_memory`.
//!
//! It shows the patterns of `docs/production.md`:
//! 1. the limit from the environment, with a default, applied to a `static` allocator;
//! 2. a pre-flight check before a large step, and a race-free reservation for it;
//! 3. reading the pressure level and halving the batch size under pressure;
//! 4. a refusal handled gracefully (`try_reserve` / `Vec::try_reserve`), not an abort;
//! 5. a final report of the numbers, and a picture of the run: `memory-timeline.svg`
//!    (allocated bytes, RSS and the limit over time, pressure levels as bands), recorded by
//!    the background `MemoryMonitor`.

use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::timeline::Timeline;
use limited_allocator::{limit_from_env, ByteSize, LimitedAllocator, PressureLevel};
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// Batches never shrink below this many rows.
const MIN_BATCH_ROWS: usize = 1 << 16;

/// The budget when `LIMITED_ALLOCATOR_LIMIT` is unset.
const DEFAULT_LIMIT: usize = 96 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Configure. A bad value is an error that names the variable; we refuse to start.
    let limit = match limit_from_env() {
        Ok(Some(bytes)) => bytes,
        Ok(None) => DEFAULT_LIMIT,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    };
    ALLOC.set_limit(ALLOC.allocated_bytes() + limit);
    println!(
        "budget: {} (already in use at start: {})",
        ByteSize(ALLOC.limit()),
        ByteSize(ALLOC.allocated_bytes())
    );

    // A monitor thread samples the allocator, RSS and the cgroup, prints level changes
    // with their reasons, and records a timeline for the picture.
    let mut monitor = MemoryMonitor::builder()
        .allocator(&ALLOC)
        .interval(Duration::from_millis(20))
        .record_timeline(Timeline::DEFAULT_CAPACITY)
        .listener(|event| println!("monitor: {event}"))
        .start()?;

    // 2. Pre-flight before a large step: a cheap look, then a race-free hold.
    let table_bytes = ALLOC.limit() / 3;
    match ALLOC.check_can_allocate(table_bytes) {
        Ok(()) => println!("pre-flight: a {} lookup table fits", ByteSize(table_bytes)),
        Err(e) => println!("pre-flight: {e}"),
    }
    let build = monitor.stage("build-lookup");
    let lookup: Vec<u64> = match ALLOC.try_reserve(table_bytes) {
        Ok(held) => {
            // The bytes are ours until `held` drops; build the table inside them.
            let _inside = held.enter();
            let table = (0..table_bytes as u64 / 8).collect();
            println!(
                "built the lookup table inside its reservation (peak used {})",
                ByteSize(held.peak_used())
            );
            table
        }
        Err(e) => {
            println!("no room for the lookup table, running without it: {e}");
            Vec::new()
        }
    };

    drop(build);

    // 3. Process batches, halving the batch size under pressure.
    let _batches = monitor.stage("batches");
    let mut batch_rows = 1 << 20;
    let mut kept: Vec<Vec<u64>> = Vec::new();
    let mut processed = 0usize;
    for step in 0..40 {
        let level = ALLOC.pressure_level();
        if level >= PressureLevel::High && batch_rows > MIN_BATCH_ROWS {
            batch_rows /= 2;
            println!(
                "step {step:2}: pressure {level} at {:.1}% -> batch size halved to {batch_rows} rows",
                ALLOC.usage_percent()
            );
        }
        if level == PressureLevel::Critical {
            // Give memory back: drop the oldest half of what we keep.
            let drop_n = kept.len().div_ceil(2);
            kept.drain(..drop_n);
            println!("step {step:2}: critical -> released {drop_n} cached batches");
        }
        // 4. Fallible allocation: a refusal is an error we handle, not an abort. Step 30
        //    brings a spike (an oversized batch) to show one.
        let rows = if step == 30 {
            ALLOC.limit() / 8
        } else {
            batch_rows
        };
        let mut batch: Vec<u64> = Vec::new();
        if let Err(e) = batch.try_reserve_exact(rows) {
            println!("step {step:2}: batch of {rows} rows refused ({e}); skipping it");
            continue;
        }
        batch.extend((0..rows as u64).map(|i| i ^ step as u64));
        processed += batch.len();
        kept.push(batch); // a cache that grows until pressure makes us shed it
        std::thread::sleep(Duration::from_millis(15)); // let the monitor see each step
    }

    // A request that can never fit is refused with every number in the error.
    if let Err(e) = ALLOC.try_reserve(ALLOC.limit()) {
        println!("as expected, a whole-budget reservation is refused: {e}");
    }

    // 5. The report.
    let s = ALLOC.stats();
    println!("\n== memory report");
    println!("rows processed       {processed}");
    println!("lookup table rows    {}", lookup.len());
    println!("limit                {}", ByteSize(s.limit_bytes));
    println!(
        "in use now           {} ({:.1}%)",
        ByteSize(s.current_bytes),
        s.usage_percent()
    );
    println!("peak                 {}", ByteSize(s.peak_bytes));
    println!("pressure now         {}", s.pressure);
    println!(
        "allocations          {} (+{} reallocations, {} frees)",
        s.allocations, s.reallocations, s.deallocations
    );
    println!(
        "refusals             {} ({} in all, largest {})",
        s.refusals,
        ByteSize(s.refused_bytes as usize),
        ByteSize(s.largest_refusal_bytes)
    );
    assert!(s.peak_bytes <= s.limit_bytes, "the hard limit held");

    drop(_batches);
    monitor.stop();
    let m = monitor.stats();
    println!(
        "monitor samples      {} ({} level changes)",
        m.samples, m.transitions
    );
    for stage in monitor.stage_stats() {
        let peak = stage.peak_allocated_bytes.unwrap_or(0) as usize;
        let rss = stage.peak_rss_bytes.unwrap_or(0) as usize;
        println!(
            "stage {:<14} peak allocated {}, peak RSS {}, {} samples",
            stage.name,
            ByteSize(peak),
            ByteSize(rss),
            stage.samples
        );
    }
    if let Some(timeline) = monitor.timeline() {
        let path = std::env::current_dir()?.join("memory-timeline.svg");
        timeline.write_svg(&path)?;
        println!("\nmemory timeline written to {}", path.display());
    }
    Ok(())
}
