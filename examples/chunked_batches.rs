//! Processing a `RecordBatch` in chunks whose size follows memory pressure, in two runs:
//!
//! 1. steered by the allocator: a cache inside the budget takes most of it half-way;
//! 2. steered by a running monitor: memory the allocator never sees (pages `mmap`ed by
//!    "a C library", as a decoder or a native engine would) fills the process limit. The
//!    allocator's own level stays Low; the monitor's combined level (RSS) rises, and the
//!    chunks shrink; at Critical a release hook unmaps the pages and they grow back.
//!
//! Run: `cargo run --release --example chunked_batches`. `cargo test --example
//! chunked_batches` runs the second part as a test.

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig, ChunkReport, PressureSource};
use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::sampler::Sampler;
use limited_allocator::{LimitedAllocator, PressureLevel};
use std::alloc::System;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const ROWS: usize = 2_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batch = table(ROWS)?;
    println!("-- steered by the allocator");
    let report = allocator_pressure(&batch)?;
    summary(&report);
    println!("-- steered by the monitor (RSS outside the allocator)");
    let run = rss_pressure(&batch)?;
    summary(&run.report);
    println!(
        "allocator level at most {:?}, monitor level at most {:?}",
        run.max_allocator_level, run.max_monitor_level
    );
    Ok(())
}

fn table(rows: usize) -> Result<RecordBatch, Box<dyn std::error::Error>> {
    let ids = Int64Array::from_iter_values(0..rows as i64);
    let prices = Float64Array::from_iter_values((0..rows).map(|i| (i % 1000) as f64 / 10.0));
    Ok(RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as Arc<dyn Array>),
        ("price", Arc::new(prices) as Arc<dyn Array>),
    ])?)
}

/// The work on one chunk: a copy and a sort of its prices (~48 bytes a row with Arrow's
/// own buffers), summed.
fn work(batch: &RecordBatch, rows: std::ops::Range<usize>) -> f64 {
    let chunk = batch.slice(rows.start, rows.len()); // zero-copy
    let prices = chunk
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("a Float64 column");
    let mut work: Vec<f64> = prices.values().to_vec();
    work.sort_by(f64::total_cmp);
    work.iter().sum()
}

/// Run 1: a cache inside the allocator's budget takes most of it half-way through.
fn allocator_pressure(batch: &RecordBatch) -> Result<ChunkReport, Box<dyn std::error::Error>> {
    // 64 MiB on top of the data; a "cache" then takes most of it half-way through.
    ALLOC.set_limit(ALLOC.allocated_bytes() + (64 << 20));
    let mut cache: Vec<Vec<u8>> = Vec::new();
    let config = ChunkConfig::new(262_144, 48)
        .with_min_rows(4096)
        .with_check_every(4);
    let mut chunker = AdaptiveChunker::new(&ALLOC, batch.num_rows(), config)?;
    let mut last_size = 0;
    while let Some(rows) = chunker.next_chunk() {
        let rows = rows?;
        work(batch, rows.clone());
        if rows.len() != last_size {
            print_chunk(&rows, &ALLOC);
            last_size = rows.len();
        }
        if rows.end > ROWS / 2 && cache.is_empty() {
            cache.push(vec![1u8; 56 << 20]); // pressure arrives
        }
        if rows.end > ROWS * 3 / 4 {
            cache.clear(); // and goes away
        }
    }
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    Ok(chunker.report())
}

/// What run 2 saw.
struct RssRun {
    report: ChunkReport,
    max_allocator_level: PressureLevel,
    max_monitor_level: PressureLevel,
}

/// Run 2: anonymous pages mapped outside the allocator fill the process limit.
fn rss_pressure(batch: &RecordBatch) -> Result<RssRun, Box<dyn std::error::Error>> {
    let rss = |s: limited_allocator::sampler::MemorySample| s.rss_anon_bytes.or(s.rss_bytes);
    let baseline = rss(Sampler::new().sample_fresh()).ok_or("no RSS on this system")?;
    // The allocator has plenty of room: its own level stays Low.
    ALLOC.set_limit(ALLOC.allocated_bytes() + (1 << 30));
    let monitor = MemoryMonitor::builder()
        .allocator(&ALLOC)
        .max_process_memory(baseline + (256 << 20))
        .use_cgroup_limit(false)
        .psi_thresholds(None)
        .leak_detection(None)
        .interval(Duration::from_millis(10))
        .start()?;

    let mapped: RefCell<Vec<Mapping>> = RefCell::new(Vec::new());
    let config = ChunkConfig::new(65_536, 8)
        .with_min_rows(1024)
        .with_check_every(1);
    let mut chunker = AdaptiveChunker::new(&*monitor, batch.num_rows(), config)?;
    // At Critical: the "C library" drops its cache.
    chunker.add_release_hook(|| mapped.borrow_mut().clear());
    let (mut max_allocator_level, mut max_monitor_level) = (PressureLevel::Low, PressureLevel::Low);
    let mut last_size = 0;
    let mut released = false;
    while let Some(rows) = chunker.next_chunk() {
        let rows = rows?;
        work(batch, rows.clone());
        max_allocator_level = max_allocator_level.max(ALLOC.pressure_level());
        max_monitor_level = max_monitor_level.max(monitor.level());
        if rows.len() != last_size {
            print_chunk(&rows, &*monitor);
            last_size = rows.len();
        }
        // 16 MiB more mapped per chunk, up to 250 MiB of the 256 MiB limit, until released.
        released |= chunker.report().releases > 0;
        if !released && mapped.borrow().len() < 250 / 16 + 1 {
            mapped.borrow_mut().push(Mapping::touched(16 << 20)?);
        }
        std::thread::sleep(Duration::from_millis(15)); // the monitor samples meanwhile
    }
    let report = chunker.report();
    drop(chunker);
    mapped.borrow_mut().clear();
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    Ok(RssRun {
        report,
        max_allocator_level,
        max_monitor_level,
    })
}

fn print_chunk(rows: &std::ops::Range<usize>, source: &impl PressureSource) {
    let room = source.headroom().map_or(0, |h| h.available() >> 20);
    println!(
        "rows {:>9}..{:<9} chunk {:>6} rows  {:?} pressure, {room} MiB of headroom",
        rows.start,
        rows.end,
        rows.len(),
        source.pressure_level(),
    );
}

fn summary(report: &ChunkReport) {
    println!(
        "{} chunks, {} shrinks, {} grows, smallest {} rows, {} releases; chunks at high/critical: {}/{}",
        report.chunks,
        report.shrinks,
        report.grows,
        report.smallest_chunk_rows,
        report.releases,
        report.at(PressureLevel::High).chunks,
        report.at(PressureLevel::Critical).chunks,
    );
}

/// Anonymous memory mapped and touched outside the allocator, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn touched(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `ptr..ptr + len` is the mapping just created, readable and writable;
        // writing one byte per page makes each page resident.
        unsafe {
            for page in (0..len).step_by(4096) {
                ptr.cast::<u8>().add(page).write_volatile(1);
            }
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those of a mapping this value owns, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only RSS rises: the allocator's level stays Low, the monitor's reaches High or
    /// Critical, and the chunks steered by the monitor shrink.
    #[test]
    fn only_rss_rises_and_the_chunks_shrink() {
        let batch = table(ROWS).unwrap();
        let run = rss_pressure(&batch).unwrap();
        assert_eq!(run.max_allocator_level, PressureLevel::Low);
        assert!(run.max_monitor_level >= PressureLevel::High);
        assert!(run.report.shrinks >= 2, "{:?}", run.report);
        assert!(
            run.report.smallest_chunk_rows <= 65_536 / 4,
            "{:?}",
            run.report
        );
    }
}
