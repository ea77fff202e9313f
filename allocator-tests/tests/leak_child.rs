//! A real leak, caught by the monitor: a child process runs a loop that allocates and
//! frees batches (a sawtooth of 32 MiB) and keeps a cache that is never evicted (the
//! leak, 2 MiB/s); the same program with an evicting cache must not be flagged. The
//! monitor runs on its own thread with the leak detector on a fast clock (100 ms buckets:
//! a horizon of 2.4 s) so the child runs five seconds; each child has a timeout.

use allocator_tests::{child_role, run_child_within};
use limited_allocator::leak::LeakConfig;
use limited_allocator::monitor::{MemoryMonitor, MonitorEvent};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, 1 << 30);

/// The cache grows by this much a second when nothing is evicted.
const LEAK_PER_SEC: usize = 2 << 20;
const ENTRY: usize = 4096;
const RUN: Duration = Duration::from_secs(5);

/// The child: the workload, with the cache evicting (`bounded`) or not, under a monitor;
/// prints one line per leak event and `LEAKS=n` at the end.
fn child(bounded: bool) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let config = LeakConfig {
        // A quarter of the leak: the noise of this loop is far below it.
        min_bytes_per_sec: (LEAK_PER_SEC / 4) as f64,
        ..LeakConfig::fast(Duration::from_millis(100))
    };
    let mut monitor = MemoryMonitor::builder()
        .allocator(&ALLOC)
        .interval(Duration::from_millis(10))
        .psi_thresholds(None)
        .leak_detection(Some(config))
        .listener(move |e| {
            if let MonitorEvent::LeakSuspected(l) = e {
                sink.lock().unwrap().push(*l);
            }
        })
        .start()
        .expect("the monitor starts");

    let started = Instant::now();
    let mut cache: VecDeque<Vec<u8>> = VecDeque::new();
    let mut inserted = 0usize;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_started = Instant::now();
    while started.elapsed() < RUN {
        // The cache's inserts follow the clock, so the rate holds however fast the loop is.
        let due = (started.elapsed().as_secs_f64() * LEAK_PER_SEC as f64) as usize / ENTRY;
        while inserted < due {
            cache.push_back(vec![inserted as u8; ENTRY]);
            inserted += 1;
            if bounded && cache.len() > 256 {
                cache.pop_front();
            }
        }
        // The batch: 64 KiB blocks (up to 32 MiB) for 200 ms, then all freed. Its period
        // follows the clock, so it stays shorter than the envelope (600 ms) on a busy
        // machine too.
        if batch.len() < 512 {
            batch.push(vec![1u8; 64 << 10]);
        }
        if batch_started.elapsed() > Duration::from_millis(200) {
            batch.clear();
            batch_started = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    monitor.stop();
    let events = events.lock().unwrap();
    for e in events.iter() {
        println!("EVENT {:?} {e}", e.metric);
    }
    println!("LEAKS={} CACHE={}", events.len(), cache.len());
}

fn leaks(role: &str) -> (usize, String) {
    let out = run_child_within(
        "a_never_evicted_cache_is_flagged_and_an_evicting_one_is_not",
        role,
        &[],
        &[],
        Some(Duration::from_secs(60)),
    );
    assert!(out.status.success(), "{role}: {out:?}");
    // libtest's "test ... " shares the child's first line.
    let n = out
        .stdout
        .split("LEAKS=")
        .nth(1)
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{role}: no LEAKS line: {out:?}"));
    (n, out.stdout)
}

#[test]
fn a_never_evicted_cache_is_flagged_and_an_evicting_one_is_not() {
    match child_role().as_deref() {
        Some("leak") => return child(false),
        Some("healthy") => return child(true),
        _ => {}
    }
    let (n, stdout) = leaks("leak");
    let allocated: Vec<&str> = stdout.split("EVENT AllocatedBytes").skip(1).collect();
    // One episode: the allocator's bytes grow all along. (RSS may stop and start again
    // while the cache refills heap pages the batches freed: episodes of its own.)
    assert_eq!(allocated.len(), 1, "the leak in allocated bytes: {stdout}");
    assert!(n >= 1);
    // The slope in the event is the leak's, give or take the batches.
    let rate = allocated[0]
        .split(" rises ")
        .nth(1)
        .expect("the event's rate");
    let slope: f64 = rate.split(' ').next().and_then(|r| r.parse().ok()).unwrap();
    assert!(
        rate.contains("MiB/s") && (1.0..4.0).contains(&slope),
        "{rate}: {stdout}"
    );

    let (n, stdout) = leaks("healthy");
    assert_eq!(n, 0, "the evicting cache was flagged: {stdout}");
}
