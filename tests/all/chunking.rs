//! Adaptive chunked processing: chunk sizes follow the pressure of a standalone budget.

use limited_allocator::chunking::{process_in_chunks, AdaptiveChunker, ChunkConfig, ChunkError};
use limited_allocator::PressureLevel;
use std::cell::{Cell, RefCell};

use crate::common::*;

#[test]
fn a_tight_budget_shrinks_the_chunks_and_room_grows_them_back() {
    let budget = quiet(1_000_000);
    let mut cache = Some(budget.try_reserve(900_000).unwrap()); // 90 %: High
    let config = ChunkConfig::new(8000, 8)
        .with_min_rows(500)
        .with_check_every(2);
    let mut chunker = AdaptiveChunker::new(&budget, 40_000, config).unwrap();
    let mut sizes = Vec::new();
    let mut processed = 0;
    while let Some(range) = chunker.next_chunk() {
        let range = range.unwrap();
        // The chunk's working memory comes from the same budget.
        let _work = budget.try_reserve(range.len() * 8).unwrap();
        sizes.push(range.len());
        processed += range.len();
        if processed >= 12_000 {
            cache = None; // the pressure goes away
        }
    }
    assert!(cache.is_none());
    assert_eq!(
        sizes,
        [4000, 4000, 2000, 2000, 4000, 4000, 8000, 8000, 4000],
        "halved at High every 2 chunks, doubled back at Low, never above 8000"
    );
    let report = chunker.report();
    assert_eq!((report.chunks, report.rows), (9, 40_000));
    assert_eq!((report.shrinks, report.grows, report.releases), (2, 2, 0));
    assert_eq!(
        (report.smallest_chunk_rows, report.chunk_rows),
        (2000, 8000)
    );
    assert_eq!(report.at(PressureLevel::High).chunks, 4);
    assert_eq!(report.at(PressureLevel::Low).chunks, 5);
    let total: u64 = report.per_level.iter().map(|l| l.chunks).sum();
    assert_eq!(total, report.chunks);
    assert_eq!(budget.allocated_bytes(), 0);
}

#[test]
fn the_default_interval_is_ten_chunks() {
    let budget = quiet(1_000_000);
    let _held = budget.try_reserve(850_000).unwrap(); // High
    let config = ChunkConfig::new(1000, 1).with_min_rows(100);
    assert_eq!(config.check_every, 10);
    let sizes: Vec<usize> = AdaptiveChunker::new(&budget, 20_000, config)
        .unwrap()
        .map(|r| r.unwrap().len())
        .take(21)
        .collect();
    assert_eq!(&sizes[..10], &[500; 10]);
    assert_eq!(&sizes[10..20], &[250; 10]);
    assert_eq!(sizes[20], 125);
}

#[test]
fn critical_pressure_releases_first_then_quarters_down_to_the_floor() {
    let budget = quiet(1_000_000);
    let _held = budget.try_reserve(960_000).unwrap(); // 96 %: Critical
    let hook_calls = Cell::new(0);
    let config = ChunkConfig::new(8000, 0)
        .with_min_rows(500)
        .with_check_every(1);
    let mut chunker = AdaptiveChunker::new(&budget, 20_000, config).unwrap();
    chunker.add_release_hook(|| hook_calls.set(hook_calls.get() + 1)); // frees nothing
    let sizes: Vec<usize> = chunker.by_ref().map(|r| r.unwrap().len()).collect();
    assert_eq!(&sizes[..4], &[2000, 500, 500, 500]);
    assert_eq!(sizes.iter().sum::<usize>(), 20_000);
    let report = chunker.report();
    assert_eq!(report.shrinks, 2);
    assert_eq!(
        report.releases, report.chunks,
        "a release round at every Critical check"
    );
    assert_eq!(hook_calls.get() as u64, report.chunks);
    assert_eq!(report.at(PressureLevel::Critical).chunks, report.chunks);
}

#[test]
fn a_release_hook_that_frees_enough_keeps_the_chunk_size() {
    let budget = quiet(1_000_000);
    let cache = RefCell::new(Some(budget.try_reserve(960_000).unwrap()));
    let config = ChunkConfig::new(8000, 8)
        .with_min_rows(500)
        .with_check_every(1);
    let mut chunker = AdaptiveChunker::new(&budget, 24_000, config).unwrap();
    chunker.add_release_hook(|| drop(cache.borrow_mut().take()));
    let sizes: Vec<usize> = chunker.by_ref().map(|r| r.unwrap().len()).collect();
    assert_eq!(sizes, [8000, 8000, 8000]);
    let report = chunker.report();
    assert_eq!((report.releases, report.shrinks), (1, 0));
    assert_eq!(report.at(PressureLevel::Low).chunks, 3);
    assert!(cache.borrow().is_none());
}

#[test]
fn chunks_shrink_to_what_the_budget_can_afford() {
    let budget = quiet(1_000_000);
    let _held = budget.try_reserve(550_000).unwrap(); // Low, 450 000 bytes free
    let config = ChunkConfig::new(80_000, 8).with_min_rows(1000);
    let mut chunker = AdaptiveChunker::new(&budget, 100_000, config).unwrap();
    assert_eq!(
        chunker.next_chunk(),
        Some(Ok(0..56_250)),
        "450 000 / 8 rows"
    );
    assert_eq!(chunker.report().shrinks, 1);
    assert_eq!(chunker.next_chunk(), Some(Ok(56_250..100_000)));
}

#[test]
fn a_budget_that_cannot_fit_the_floor_chunk_is_a_typed_error() {
    let budget = quiet(100_000);
    let _held = budget.try_reserve(99_000).unwrap();
    let released = Cell::new(false);
    let config = ChunkConfig::new(8000, 8).with_min_rows(500);
    let mut chunker = AdaptiveChunker::new(&budget, 10_000, config).unwrap();
    chunker.add_release_hook(|| released.set(true));
    let err = chunker.next_chunk().unwrap().unwrap_err();
    assert_eq!(
        err,
        ChunkError::CannotAfford {
            rows: 500,
            requested: 4000,
            current: 99_000,
            limit: 100_000,
            available: 1000,
            level: PressureLevel::Critical,
        }
    );
    let text = err.to_string();
    for number in [
        "500 rows",
        "4000 bytes",
        "99000",
        "100000",
        "1000 bytes available",
    ] {
        assert!(text.contains(number), "{number} missing in: {text}");
    }
    assert!(released.get(), "a release round is tried before giving up");
    assert_eq!(chunker.next_chunk(), None, "nothing after the error");
    assert_eq!(chunker.report().chunks, 0);

    // The helper returns the same error.
    let err = process_in_chunks(&budget, 10_000, config, |_| {}).unwrap_err();
    assert!(matches!(
        err,
        ChunkError::CannotAfford {
            requested: 4000,
            ..
        }
    ));
}

#[test]
fn bad_configs_are_typed_errors() {
    let budget = quiet(1000);
    let cases = [
        (ChunkConfig::new(0, 8), ChunkError::ZeroStart),
        (
            ChunkConfig::new(100, 8).with_min_rows(0),
            ChunkError::ZeroFloor,
        ),
        (
            ChunkConfig::new(100, 8).with_min_rows(101),
            ChunkError::FloorAboveStart {
                min_rows: 101,
                start_rows: 100,
            },
        ),
        (
            ChunkConfig::new(100, 8).with_check_every(0),
            ChunkError::ZeroInterval,
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate(), Err(expected));
        assert_eq!(
            AdaptiveChunker::new(&budget, 10, config).err(),
            Some(expected)
        );
        assert_eq!(
            process_in_chunks(&budget, 10, config, |_| {}),
            Err(expected)
        );
    }
    let text = ChunkError::FloorAboveStart {
        min_rows: 101,
        start_rows: 100,
    }
    .to_string();
    assert!(
        text.contains("101 rows") && text.contains("100 rows"),
        "{text}"
    );
}

#[test]
fn the_report_counts_time_per_level() {
    let budget = quiet(1 << 20);
    let report = process_in_chunks(&budget, 30, ChunkConfig::new(10, 8), |_| {
        std::thread::sleep(std::time::Duration::from_millis(2));
    })
    .unwrap();
    let low = report.at(PressureLevel::Low);
    assert_eq!((report.chunks, low.chunks), (3, 3));
    assert!(
        low.time >= std::time::Duration::from_millis(6),
        "{:?}",
        low.time
    );
    assert!(report.elapsed >= low.time);
    assert_eq!(
        report.at(PressureLevel::High).time,
        std::time::Duration::ZERO
    );
}

#[test]
fn an_empty_table_has_no_chunks() {
    let budget = quiet(1000);
    let report =
        process_in_chunks(&budget, 0, ChunkConfig::new(10, 8), |_| unreachable!()).unwrap();
    assert_eq!((report.chunks, report.rows), (0, 0));
}

#[cfg(feature = "arrow")]
#[test]
fn arrow_buffers_slice_by_chunk() {
    use arrow_buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
    use limited_allocator::chunking::SliceRows;

    let budget = quiet(1 << 20);
    let values = ScalarBuffer::from((0..1000i64).collect::<Vec<_>>());
    let nulls = NullBuffer::new(BooleanBuffer::from_iter((0..1000).map(|i| i % 3 != 0)));
    let offsets = OffsetBuffer::<i32>::from_lengths(std::iter::repeat_n(2, 1000));
    let mut sum = 0i64;
    let mut valid = 0usize;
    process_in_chunks(&budget, values.len(), ChunkConfig::new(64, 8), |rows| {
        let chunk = values.slice_rows(rows.clone());
        let chunk_nulls = nulls.slice_rows(rows.clone());
        let chunk_offsets = offsets.slice_rows(rows.clone());
        assert_eq!(chunk_offsets.len(), rows.len() + 1);
        assert_eq!(
            chunk_nulls.inner().slice_rows(0..rows.len()).len(),
            rows.len()
        );
        sum += chunk.iter().sum::<i64>();
        valid += chunk_nulls.len() - chunk_nulls.null_count();
    })
    .unwrap();
    assert_eq!(sum, 499_500);
    assert_eq!(valid, 1000 - 334);
}

/// A `/proc` tree of its own for the monitor's sampler, whose RSS the test sets.
struct FakeProc(std::path::PathBuf);

impl FakeProc {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("limited-allocator-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proc/self")).unwrap();
        Self(dir)
    }

    fn set_rss(&self, bytes: u64) {
        let kib = bytes >> 10;
        let status = format!("VmRSS:\t{kib} kB\nRssAnon:\t{kib} kB\n");
        std::fs::write(self.0.join("proc/self/status"), status).unwrap();
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Only RSS rises (memory the allocator never sees): a chunker steered by the monitor's
/// combined level shrinks its chunks, one steered by the allocator alone does not.
#[test]
fn chunks_follow_a_monitor_when_only_rss_rises() {
    use limited_allocator::monitor::MemoryMonitor;
    use limited_allocator::sampler::Sampler;
    use std::time::Duration;
    let proc = FakeProc::new("chunking-rss");
    proc.set_rss(100 << 20);
    let budget = limited_allocator::LimitedAllocator::new(std::alloc::System, 1 << 30);
    let monitor = MemoryMonitor::builder()
        .sampler(Sampler::with_root(&proc.0).with_max_age(Duration::ZERO))
        .max_process_memory(1 << 30)
        .use_cgroup_limit(false)
        .psi_thresholds(None)
        .leak_detection(None)
        .build()
        .unwrap();
    monitor.sample_now();
    let config = ChunkConfig::new(256, 64)
        .with_min_rows(4)
        .with_check_every(1);

    // RSS climbs 150 MiB per chunk towards the 1 GiB process limit; the allocator's own
    // bytes stay where they are.
    let run = |source: &dyn limited_allocator::chunking::PressureSource| {
        let mut rss = 100u64 << 20;
        proc.set_rss(rss);
        monitor.sample_now();
        let mut sizes = Vec::new();
        let mut chunker = AdaptiveChunker::new(source, 1600, config).unwrap();
        while let Some(rows) = chunker.next_chunk() {
            sizes.push(rows.unwrap().len());
            rss = (rss + (150 << 20)).min(1000 << 20);
            proc.set_rss(rss);
            monitor.sample_now(); // what the monitor thread does every interval
        }
        (sizes, chunker.report())
    };
    let (by_monitor, report) = run(&*monitor);
    assert_eq!(budget.pressure_level(), PressureLevel::Low);
    assert_eq!(by_monitor[..5], [256; 5]);
    // High from 80 % (halving), Critical from 95 % (quartering) down to the floor.
    assert_eq!(*by_monitor.last().unwrap(), 4, "{by_monitor:?}");
    assert!(report.at(PressureLevel::Critical).chunks > 0, "{report:?}");
    assert!(report.shrinks >= 3, "{report:?}");

    let (by_allocator, report) = run(&budget);
    // All full chunks but the table's remainder.
    assert!(
        by_allocator[..by_allocator.len() - 1]
            .iter()
            .all(|&n| n == 256),
        "{by_allocator:?}"
    );
    assert_eq!(report.shrinks, 0, "{report:?}");
}
