//! Processing a `RecordBatch` in chunks whose size follows memory pressure.
//!
//! Run: `cargo run --release --example chunked_batches`

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
use limited_allocator::{LimitedAllocator, PressureLevel};
use std::alloc::System;
use std::sync::Arc;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const ROWS: usize = 2_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids = Int64Array::from_iter_values(0..ROWS as i64);
    let prices = Float64Array::from_iter_values((0..ROWS).map(|i| (i % 1000) as f64 / 10.0));
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as Arc<dyn Array>),
        ("price", Arc::new(prices) as Arc<dyn Array>),
    ])?;
    // 64 MiB on top of the data; a "cache" then takes most of it half-way through.
    ALLOC.set_limit(ALLOC.allocated_bytes() + (64 << 20));
    let mut cache: Vec<Vec<u8>> = Vec::new();

    // Each row needs ~48 bytes of working memory while processed (a copy and a sort).
    let config = ChunkConfig::new(262_144, 48)
        .with_min_rows(4096)
        .with_check_every(4);
    let mut chunker = AdaptiveChunker::new(&ALLOC, batch.num_rows(), config)?;
    let mut total = 0.0;
    let mut last_size = 0;
    while let Some(rows) = chunker.next_chunk() {
        let rows = rows?;
        let chunk = batch.slice(rows.start, rows.len()); // zero-copy
        let prices = chunk
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let mut work: Vec<f64> = prices.values().to_vec();
        work.sort_by(f64::total_cmp);
        total += work.iter().sum::<f64>();
        if rows.len() != last_size {
            println!(
                "rows {:>9}..{:<9} chunk {:>6} rows  {:?} pressure, {:.0}% used",
                rows.start,
                rows.end,
                rows.len(),
                ALLOC.pressure_level(),
                ALLOC.usage_percent()
            );
            last_size = rows.len();
        }
        if rows.end > ROWS / 2 && cache.is_empty() {
            cache.push(vec![1u8; 56 << 20]); // pressure arrives
        }
        if rows.end > ROWS * 3 / 4 {
            cache.clear(); // and goes away
        }
    }
    let report = chunker.report();
    println!(
        "total {total:.1}: {} chunks, {} shrinks, {} grows, smallest {} rows; chunks at high/critical: {}/{}",
        report.chunks,
        report.shrinks,
        report.grows,
        report.smallest_chunk_rows,
        report.at(PressureLevel::High).chunks,
        report.at(PressureLevel::Critical).chunks,
    );
    Ok(())
}
