//! Tests of the monitor: fake budget sources, fixture trees, real threads.

use super::*;
use crate::sampler::cgroup::tests::Fixture;
use std::sync::atomic::AtomicUsize;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A budget the test sets by hand.
#[derive(Default)]
struct FakeBudget {
    allocated: AtomicUsize,
    limit: AtomicUsize,
}

impl FakeBudget {
    fn new(limit: usize) -> Arc<Self> {
        let b = Self::default();
        b.limit.store(limit, Ordering::Relaxed);
        Arc::new(b)
    }
    fn set(&self, allocated: usize) {
        self.allocated.store(allocated, Ordering::Relaxed);
    }
}

impl BudgetSource for FakeBudget {
    fn allocated_bytes(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }
    fn peak_bytes(&self) -> usize {
        self.allocated_bytes()
    }
    fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

fn fixture_sampler(f: &Fixture) -> Sampler {
    Sampler::with_root(&f.0).with_max_age(Duration::ZERO)
}

fn status(rss_anon: u64) -> String {
    format!(
        "VmHWM:\t{} kB\nVmRSS:\t{} kB\nRssAnon:\t{} kB\n",
        rss_anon / 1024 + 100,
        rss_anon / 1024 + 50,
        rss_anon / 1024
    )
}

fn meminfo(available: u64) -> String {
    format!(
        "MemTotal: {} kB\nMemAvailable: {} kB\n",
        64 * GIB / 1024,
        available / 1024
    )
}

/// Records every event; the listener also notes its thread's name.
type Recorded = Arc<Mutex<Vec<(MonitorEvent, Option<String>)>>>;

fn recorder() -> (Recorded, impl Fn(&MonitorEvent) + Send + Sync + 'static) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let listener = move |e: &MonitorEvent| {
        let name = std::thread::current().name().map(str::to_string);
        sink.lock().unwrap().push((e.clone(), name));
    };
    (events, listener)
}

fn levels(events: &Mutex<Vec<(MonitorEvent, Option<String>)>>) -> Vec<PressureLevel> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(e, _)| match e {
            MonitorEvent::LevelChanged { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

#[test]
fn rss_against_the_cgroup_limit_with_a_readable_reason() {
    let f = Fixture::new("monitor-rss");
    f.file("proc/self/cgroup", "0::/svc\n")
        .file("sys/fs/cgroup/svc/memory.max", &(2 * GIB).to_string())
        .file("sys/fs/cgroup/svc/memory.current", "1000")
        .file("proc/self/status", &status(1843 * MIB));
    let (events, listener) = recorder();
    let monitor = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .listener(listener)
        .build()
        .unwrap();
    let sample = monitor.sample_now();
    assert_eq!(sample.level, PressureLevel::High);
    assert_eq!(sample.process_limit, Some((2 * GIB, LimitSource::Cgroup)));
    assert_eq!(
        sample.reasons[0].to_string(),
        "rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high"
    );
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].0.to_string(),
        "memory pressure low -> high: rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high"
    );

    // A smaller configured limit wins over the cgroup's.
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .max_process_memory(GIB)
        .build()
        .unwrap();
    let s = m.sample_now();
    assert_eq!(s.process_limit, Some((GIB, LimitSource::Configured)));
    assert_eq!(s.level, PressureLevel::Critical);
    // And the cgroup can be ignored.
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .use_cgroup_limit(false)
        .build()
        .unwrap();
    assert_eq!(m.sample_now().process_limit, None);
    assert_eq!(m.level(), PressureLevel::Low);
}

#[test]
fn page_cache_in_the_cgroup_is_not_pressure() {
    let f = Fixture::new("monitor-cache");
    f.file("proc/self/cgroup", "0::/svc\n")
        .file("sys/fs/cgroup/svc/memory.max", &GIB.to_string())
        // 98 % charged, but 600 MiB of it is inactive page cache.
        .file(
            "sys/fs/cgroup/svc/memory.current",
            &(1004 * MIB).to_string(),
        )
        .file(
            "sys/fs/cgroup/svc/memory.stat",
            &format!("anon 1\ninactive_file {}\n", 600 * MIB),
        )
        .file("proc/self/status", &status(100 * MIB));
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .build()
        .unwrap();
    let s = m.sample_now();
    assert_eq!(s.level, PressureLevel::Low, "{:?}", s.reasons);
    assert!(s.reasons.iter().any(|r| matches!(
        r,
        Reason::Cgroup { working_set_bytes, .. } if *working_set_bytes == 404 * MIB
    )));
    // When the working set itself is high, it is pressure.
    f.file("sys/fs/cgroup/svc/memory.stat", "inactive_file 0\n");
    let s = m.sample_now();
    assert_eq!(s.level, PressureLevel::Critical);
    assert_eq!(s.reasons[0].signal(), Signal::Cgroup);
}

#[test]
fn system_available_at_two_one_and_a_half_and_one_times_the_minimum() {
    let f = Fixture::new("monitor-avail");
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .min_system_available(GIB)
        .hysteresis_margin(0.0)
        .build()
        .unwrap();
    for (available, level) in [
        (3 * GIB, PressureLevel::Low),
        (1843 * MIB, PressureLevel::Medium),
        (1434 * MIB, PressureLevel::High),
        (GIB, PressureLevel::Critical),
        (0, PressureLevel::Critical),
        (5 * GIB, PressureLevel::Low),
    ] {
        f.file("proc/meminfo", &meminfo(available));
        let s = m.sample_now();
        assert_eq!(s.level, level, "available {available}");
        assert_eq!(s.reasons[0].signal(), Signal::SystemAvailable);
    }
    assert!(m.sample_now().reasons[0]
        .to_string()
        .starts_with("system available 5.0 GiB (5.00x"));
}

#[test]
fn hysteresis_and_listeners_on_transitions_only() {
    let f = Fixture::new("monitor-hyst");
    let budget = FakeBudget::new(1000);
    let (events, listener) = recorder();
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .listener(listener)
        .build()
        .unwrap();
    // Hovering around 80 % does not flap; falling needs 5 points below the threshold.
    for (allocated, level) in [
        (100, PressureLevel::Low),
        (810, PressureLevel::High),
        (790, PressureLevel::High),
        (805, PressureLevel::High),
        (760, PressureLevel::High),
        (749, PressureLevel::Medium),
        (600, PressureLevel::Medium),
        (560, PressureLevel::Medium),
        (549, PressureLevel::Low),
        (960, PressureLevel::Critical),
        (0, PressureLevel::Low),
    ] {
        budget.set(allocated);
        assert_eq!(m.sample_now().level, level, "allocated {allocated}");
    }
    use PressureLevel::*;
    assert_eq!(levels(&events), [High, Medium, Low, Critical, Low]);
    let stats = m.stats();
    assert_eq!(stats.transitions, 5);
    assert_eq!(stats.samples, 11);
    assert_eq!(stats.at(High).samples, 4);
    assert_eq!(stats.peak_allocated_bytes, Some(960));
}

#[test]
fn the_real_allocator_as_a_budget_source() {
    let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 10 * MIB as usize));
    let f = Fixture::new("monitor-real");
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(alloc.clone())
        .build()
        .unwrap();
    assert_eq!(m.sample_now().level, PressureLevel::Low);
    let held = alloc.try_reserve(9 * MIB as usize).unwrap();
    let s = m.sample_now();
    assert_eq!(s.level, PressureLevel::High);
    assert_eq!(
        s.reasons[0].to_string(),
        "allocator 9.0 MiB of 10.0 MiB limit (90.0%): high"
    );
    drop(held);
    assert_eq!(m.sample_now().level, PressureLevel::Low);
    // An unlimited allocator gives no allocator signal.
    let unlimited = Arc::new(LimitedAllocator::new(std::alloc::System, usize::MAX));
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(unlimited)
        .build()
        .unwrap();
    let s = m.sample_now();
    assert!(s.reasons.is_empty());
    assert_eq!(
        (s.allocated_bytes, s.allocator_limit_bytes),
        (Some(0), None)
    );
}

#[test]
fn psi_signal_and_unreadable_inputs() {
    let f = Fixture::new("monitor-psi");
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .min_system_available(GIB)
        .build()
        .unwrap();
    // Nothing readable: Low, no reasons, no made-up numbers.
    let s = m.sample_now();
    assert_eq!((s.level, s.reasons.len()), (PressureLevel::Low, 0));
    f.file(
        "proc/pressure/memory",
        "some avg10=30.00 avg60=5.00 avg300=0.00 total=1\n",
    );
    let s = m.sample_now();
    assert_eq!(s.level, PressureLevel::High);
    assert_eq!(s.reasons[0].to_string(), "psi some avg10 30.0%: high");
    let ignoring = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .psi_thresholds(None)
        .build()
        .unwrap();
    assert_eq!(ignoring.sample_now().level, PressureLevel::Low);
}

#[test]
fn a_panicking_listener_is_counted_and_the_others_still_run() {
    let f = Fixture::new("monitor-panic");
    let budget = FakeBudget::new(100);
    let (events, listener) = recorder();
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .listener(|_| panic!("listener bug"))
        .listener(listener)
        .build()
        .unwrap();
    budget.set(99);
    m.sample_now();
    budget.set(0);
    m.sample_now();
    assert_eq!(m.stats().listener_panics, 2);
    assert_eq!(levels(&events).len(), 2);
}

#[test]
fn time_per_level_and_leaks_with_a_driven_clock() {
    let f = Fixture::new("monitor-clock");
    let budget = FakeBudget::new(usize::MAX - 1);
    let (events, listener) = recorder();
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .thresholds(PressureThresholds::new(1e-9, 2e-9, 3e-9).unwrap())
        .leak_detection(Some(LeakConfig {
            min_bytes_per_sec: 1024.0,
            ..LeakConfig::fast(Duration::from_secs(2))
        }))
        .listener(listener)
        .build()
        .unwrap();
    let t0 = m.started();
    // 1 MiB a second for 100 s: a leak, and the level climbs with it.
    for s in 0..=100u64 {
        budget.set((s * MIB) as usize);
        m.sample_at(t0 + Duration::from_secs(s));
    }
    let stats = m.stats();
    let total: Duration = stats.levels.iter().map(|l| l.time).sum();
    assert_eq!(total, Duration::from_secs(100));
    assert_eq!(stats.leaks_suspected, 1);
    let leaks: Vec<LeakSuspected> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(e, _)| match e {
            MonitorEvent::LeakSuspected(l) => Some(*l),
            _ => None,
        })
        .collect();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].metric, LeakMetric::AllocatedBytes);
    assert!((leaks[0].bytes_per_sec - MIB as f64).abs() < 1.0);
    // The fake budget's limit is known: the event says when it is reached.
    let eta = leaks[0].time_to_limit.unwrap().as_secs_f64();
    let left = (usize::MAX - 1) as f64 - leaks[0].current_bytes as f64;
    assert!((eta / (left / MIB as f64) - 1.0).abs() < 0.01, "{eta}");

    // A plateau then: time accrues at the level reached, no new leak.
    let before = stats.at(m.level()).time;
    for s in 101..=130u64 {
        m.sample_at(t0 + Duration::from_secs(s));
    }
    assert_eq!(
        m.stats().at(m.level()).time - before,
        Duration::from_secs(30)
    );
    assert_eq!(m.stats().leaks_suspected, 1);
}

#[test]
fn should_check_every_nth_and_always_under_pressure() {
    let f = Fixture::new("monitor-check");
    let budget = FakeBudget::new(100);
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .build()
        .unwrap();
    assert_eq!((0..30).filter(|&i| m.should_check(i, 10)).count(), 3);
    assert!((0..5).all(|i| m.should_check(i, 0)));
    budget.set(85);
    m.sample_now();
    assert!((0..30).all(|i| m.should_check(i, 10)));
}

#[test]
fn stages_nest_and_keep_their_own_numbers() {
    let f = Fixture::new("monitor-stages");
    f.file("proc/self/status", &status(10 * MIB));
    let budget = FakeBudget::new(1 << 40);
    let m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .build()
        .unwrap();
    {
        let _pipeline = m.stage("pipeline");
        budget.set(100);
        {
            let _load = m.stage("load");
            budget.set(300);
            m.sample_now();
            budget.set(200);
        }
        let merge = m.stage("merge");
        budget.set(900);
        let s = m.sample_now();
        assert_eq!(s.stages, ["pipeline", "merge"]);
        drop(merge);
        budget.set(50);
    }
    drop(m.stage("load")); // entered again, briefly
    let stats = m.stage_stats();
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pipeline", "load", "merge"]);
    let (pipeline, load, merge) = (&stats[0], &stats[1], &stats[2]);
    // pipeline: entry 0, two samples (300, 900), exit 50.
    assert_eq!(pipeline.samples, 4);
    assert_eq!(pipeline.peak_allocated_bytes, Some(900));
    assert_eq!(pipeline.mean_allocated_bytes, Some(1250.0 / 4.0));
    // load: entry 100, sample 300, exit 200, then entry and exit at 50.
    assert_eq!((load.entered, load.samples), (2, 5));
    assert_eq!(load.peak_allocated_bytes, Some(300));
    // merge: entry 200, sample 900, exit 900.
    assert_eq!(merge.samples, 3);
    assert_eq!(merge.mean_allocated_bytes, Some(2000.0 / 3.0));
    assert_eq!(merge.peak_rss_bytes, Some(10 * MIB + 50 * 1024));
    assert!(m.sample_now().stages.is_empty());
}

#[test]
fn background_thread_samples_calls_listeners_on_itself_and_stops_promptly() {
    let f = Fixture::new("monitor-thread");
    let budget = FakeBudget::new(100);
    budget.set(99);
    let (events, listener) = recorder();
    let mut m = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .budget_source(budget.clone())
        .interval(Duration::from_millis(5))
        .listener(listener)
        .record_timeline(64)
        .start()
        .unwrap();
    assert!(m.is_running());
    // Wait (bounded) for a few samples; no timing is asserted.
    for _ in 0..2000 {
        if m.stats().samples >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(m.stats().samples >= 3);
    m.stop();
    assert!(!m.is_running());
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1); // Low -> Critical once, however many samples
    assert_eq!(events[0].1.as_deref(), Some("memory-monitor"));
    let timeline = m.timeline().unwrap();
    assert!(timeline.len() >= 3);
    assert_eq!(timeline.points()[0].allocator_limit_bytes, Some(100));

    // An hour-long interval still stops at once (the test would hang otherwise).
    let slow = MemoryMonitor::builder()
        .sampler(fixture_sampler(&f))
        .interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    drop(slow);
}

#[test]
fn invalid_configuration_is_a_typed_error() {
    let err = MemoryMonitor::builder()
        .interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, MonitorError::ZeroInterval { interval_ns: 0 }));
    let err = MemoryMonitor::builder()
        .hysteresis_margin(f64::NAN)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("NaN"));
    assert!(MemoryMonitor::builder()
        .hysteresis_margin(101.0)
        .build()
        .is_err());
}
