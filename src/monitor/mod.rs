//! The pressure monitor: one background thread that combines the allocator's budget with
//! what the [`Sampler`] sees into one [`PressureLevel`], tells listeners when it changes,
//! counts time per level and per stage, and watches for leaks.
//!
//! # Signals
//!
//! Each sample computes a level per signal; the combined level is the highest of them:
//!
//! | signal | measured | thresholds |
//! |---|---|---|
//! | `allocator` | allocated bytes of the limit | the monitor's [`PressureThresholds`] (60/80/95 %) |
//! | `rss` | anonymous RSS (`RssAnon`, page cache excluded) of the process limit: the smaller of [`MonitorBuilder::max_process_memory`] and the cgroup limit | same |
//! | `cgroup` | the cgroup's working set (usage less inactive file pages) of its limit: other processes in the container count too | same |
//! | `system_available` | `MemAvailable` against [`MonitorBuilder::min_system_available`] | below 2x Medium, 1.5x High, 1x Critical |
//! | `psi` | PSI `some avg10`, percent of time stalled on memory | 10/25/50 % by default |
//!
//! A signal whose input cannot be read does not take part; a missing number never
//! lowers or raises the level.
//!
//! # Hysteresis
//!
//! Every signal keeps its own [`HysteresisLevel`]: it rises as soon as a threshold is
//! reached but falls only once usage is the margin (5 points by default) below the
//! threshold of its current level. Listeners therefore see one transition, not a burst,
//! when usage hovers at a threshold.
//!
//! # Threads
//!
//! [`MonitorBuilder::start`] spawns one thread named `memory-monitor` that samples every
//! interval (1 s by default). Listeners run on it, after the monitor's own locks are
//! released, so they may allocate and may call back into the monitor. A panicking listener
//! is caught and counted ([`MonitorStats::listener_panics`]); the monitor goes on.
//! [`MemoryMonitor::stop`] and `Drop` wake the thread and join it, whatever the interval.

use crate::leak::{LeakConfig, LeakMetric, LeakSuspected, TrendDetector};
use crate::pressure::HysteresisLevel;
use crate::sampler::{MemorySample, Sampler};
use crate::timeline::{Timeline, TimelinePoint};
use crate::units::ByteSize;
use crate::{LimitedAllocator, PressureLevel, PressureThresholds};
use core::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A budget the monitor can watch: what [`LimitedAllocator`] reports, as a trait so a
/// monitor can also watch an allocator that is not `'static`, or a test double.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::monitor::BudgetSource;
/// let alloc = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let source: &dyn BudgetSource = &alloc;
/// assert_eq!(source.limit(), 1 << 20);
/// assert_eq!(source.allocated_bytes(), 0);
/// ```
pub trait BudgetSource: Send + Sync {
    /// Bytes charged to the budget now.
    fn allocated_bytes(&self) -> usize;
    /// The highest `allocated_bytes` seen.
    fn peak_bytes(&self) -> usize;
    /// The limit; `usize::MAX` means unlimited.
    fn limit(&self) -> usize;
    /// The allocator's counters, when the source is a [`LimitedAllocator`].
    fn allocator_stats(&self) -> Option<crate::AllocatorStats> {
        None
    }
    /// Bytes a DataFusion pool over this budget has reserved, when the source is a
    /// `DataFusionPool` (feature `datafusion`): the metrics show the gap to the real charge.
    fn datafusion_reserved_bytes(&self) -> Option<usize> {
        None
    }
}

impl<A: Send + Sync> BudgetSource for LimitedAllocator<A> {
    fn allocated_bytes(&self) -> usize {
        LimitedAllocator::allocated_bytes(self)
    }
    fn peak_bytes(&self) -> usize {
        LimitedAllocator::peak_bytes(self)
    }
    fn limit(&self) -> usize {
        LimitedAllocator::limit(self)
    }
    fn allocator_stats(&self) -> Option<crate::AllocatorStats> {
        Some(self.stats())
    }
}

mod builder;
mod reason;
mod stats;
#[cfg(test)]
mod tests;

pub use builder::MonitorBuilder;
pub use reason::{LimitSource, MonitorError, MonitorEvent, Reason, Signal};
pub use stats::{LevelStats, MonitorSample, MonitorStats, StageStats};

use reason::percent;
use stats::StageAcc;

type Listener = Arc<dyn Fn(&MonitorEvent) + Send + Sync>;

struct Config {
    interval: Duration,
    thresholds: PressureThresholds,
    psi_thresholds: Option<PressureThresholds>,
    margin: f64,
    max_process_memory: Option<u64>,
    min_system_available: Option<u64>,
    use_cgroup_limit: bool,
}

struct State {
    last_tick: Option<Instant>,
    signals: [Option<HysteresisLevel>; 5],
    level: PressureLevel,
    samples: u64,
    levels: [LevelStats; 4],
    transitions: u64,
    peak_rss: Option<u64>,
    peak_allocated: Option<u64>,
    leaks_suspected: u64,
    last: Option<MonitorSample>,
    leak_allocated: Option<TrendDetector>,
    leak_rss: Option<TrendDetector>,
    timeline: Option<Timeline>,
    stages: Vec<StageAcc>,
}

struct Shared {
    config: Config,
    started: Instant,
    sampler: Sampler,
    source: Option<Arc<dyn BudgetSource>>,
    state: Mutex<State>,
    level: AtomicU8,
    listeners: RwLock<Vec<Listener>>,
    listener_panics: AtomicU64,
    active_stages: Mutex<Vec<(u64, String)>>,
    next_stage_id: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(shared: &Shared) {
    let interval = shared.config.interval;
    let mut next = Instant::now();
    loop {
        shared.tick(Instant::now());
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now; // fell behind (slow listener): do not catch up in a burst
        }
        let stopped = lock(&shared.stop);
        let (stopped, _) = shared
            .wake
            .wait_timeout_while(stopped, next.saturating_duration_since(now), |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
    }
}

impl Shared {
    fn tick(&self, now: Instant) -> MonitorSample {
        let memory = self.sampler.sample();
        let budget = self
            .source
            .as_ref()
            .map(|s| (s.allocated_bytes() as u64, s.peak_bytes() as u64, s.limit()));
        let stages: Vec<String> = lock(&self.active_stages)
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        let mut events = Vec::new();
        let sample = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let c = &self.config;
            let elapsed = now.saturating_duration_since(self.started);

            // Time since the previous sample belongs to the level it left us at.
            if let Some(last) = st.last_tick {
                st.levels[st.level.index()].time += now.saturating_duration_since(last);
            }
            st.last_tick = Some(now);

            let process_limit = self.process_limit(&memory);
            let mut reasons = Vec::new();
            let mut update = |signal: Signal, value: Option<(f64, PressureThresholds)>| {
                let slot = &mut st.signals[signal.index()];
                match value {
                    None => {
                        *slot = None;
                        None
                    }
                    Some((pct, thresholds)) => {
                        let h =
                            slot.get_or_insert_with(|| HysteresisLevel::new(thresholds, c.margin));
                        Some(h.update(pct))
                    }
                }
            };

            let allocator = budget.filter(|&(_, _, limit)| limit != usize::MAX);
            if let Some(level) = update(
                Signal::Allocator,
                allocator.map(|(a, _, l)| (percent(a, l as u64), c.thresholds)),
            ) {
                let (allocated_bytes, _, limit) = allocator.unwrap_or_default();
                reasons.push(Reason::Allocator {
                    level,
                    allocated_bytes,
                    limit_bytes: limit as u64,
                });
            }

            let rss = memory.rss_anon_bytes.or(memory.rss_bytes);
            let rss_input = rss.zip(process_limit);
            if let Some(level) = update(
                Signal::Rss,
                rss_input.map(|(r, (l, _))| (percent(r, l), c.thresholds)),
            ) {
                if let Some((rss_bytes, (limit_bytes, limit_source))) = rss_input {
                    reasons.push(Reason::Rss {
                        level,
                        rss_bytes,
                        limit_bytes,
                        limit_source,
                    });
                }
            }

            let cgroup = memory
                .cgroup
                .as_ref()
                .filter(|_| c.use_cgroup_limit)
                .and_then(|cg| cg.working_set_bytes.zip(cg.limit_bytes));
            if let Some(level) = update(
                Signal::Cgroup,
                cgroup.map(|(w, l)| (percent(w, l), c.thresholds)),
            ) {
                if let Some((working_set_bytes, limit_bytes)) = cgroup {
                    reasons.push(Reason::Cgroup {
                        level,
                        working_set_bytes,
                        limit_bytes,
                    });
                }
            }

            // Available of the minimum, as a percentage that reaches 50 at 2x, 66.7 at
            // 1.5x and 100 at 1x, so the shared hysteresis applies.
            let system = memory
                .system_available_bytes
                .zip(c.min_system_available.filter(|&m| m > 0));
            if let Some(level) = update(
                Signal::SystemAvailable,
                system.map(|(avail, min)| {
                    let pct = if avail == 0 {
                        f64::INFINITY
                    } else {
                        min as f64 * 100.0 / avail as f64
                    };
                    (pct, system_available_thresholds())
                }),
            ) {
                if let Some((available_bytes, min_available_bytes)) = system {
                    reasons.push(Reason::SystemAvailable {
                        level,
                        available_bytes,
                        min_available_bytes,
                    });
                }
            }

            let psi = memory.psi.and_then(|p| p.some_avg10).zip(c.psi_thresholds);
            if let Some(level) = update(Signal::Psi, psi) {
                if let Some((some_avg10, _)) = psi {
                    reasons.push(Reason::Psi { level, some_avg10 });
                }
            }

            reasons.sort_by_key(|r| core::cmp::Reverse(r.level()));
            let level = reasons.first().map_or(PressureLevel::Low, Reason::level);
            st.samples += 1;
            st.levels[level.index()].samples += 1;
            if level != st.level {
                st.transitions += 1;
                events.push(MonitorEvent::LevelChanged {
                    from: st.level,
                    to: level,
                    reasons: reasons
                        .iter()
                        .filter(|r| r.level() == level)
                        .copied()
                        .collect(),
                });
                st.level = level;
                self.level.store(level.index() as u8, Ordering::Relaxed);
            }

            let max_opt = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            st.peak_rss = max_opt(
                st.peak_rss,
                max_opt(memory.rss_bytes, memory.peak_rss_bytes),
            );
            st.peak_allocated = max_opt(st.peak_allocated, budget.map(|(a, p, _)| a.max(p)));

            // The detectors take the samples' own time, so a driven clock drives them too.
            if let (Some(d), Some((allocated, _, limit))) = (st.leak_allocated.as_mut(), budget) {
                let limit = (limit != usize::MAX).then_some(limit as u64);
                events.extend(
                    d.observe(elapsed, allocated, limit)
                        .map(MonitorEvent::LeakSuspected),
                );
            }
            if let (Some(d), Some(rss)) = (st.leak_rss.as_mut(), rss) {
                let limit = process_limit.map(|(l, _)| l);
                events.extend(
                    d.observe(elapsed, rss, limit)
                        .map(MonitorEvent::LeakSuspected),
                );
            }
            st.leaks_suspected += events
                .iter()
                .filter(|e| matches!(e, MonitorEvent::LeakSuspected(_)))
                .count() as u64;

            let sample = MonitorSample {
                elapsed,
                level,
                allocated_bytes: budget.map(|(a, _, _)| a),
                peak_allocated_bytes: budget.map(|(_, p, _)| p),
                allocator_limit_bytes: allocator.map(|(_, _, l)| l as u64),
                process_limit,
                memory,
                reasons,
                stages,
            };
            if let Some(t) = st.timeline.as_mut() {
                t.push(TimelinePoint {
                    elapsed,
                    allocated_bytes: sample.allocated_bytes,
                    rss_bytes: sample.memory.rss_bytes,
                    allocator_limit_bytes: sample.allocator_limit_bytes,
                    process_limit_bytes: sample.process_limit.map(|(l, _)| l),
                    level,
                });
            }
            for name in &sample.stages {
                let acc = stage_acc(&mut st.stages, name);
                acc.samples += 1;
                acc.allocated.add(sample.allocated_bytes);
                acc.rss.add(sample.memory.rss_bytes);
            }
            st.last = Some(sample.clone());
            sample
        };
        self.dispatch(&events);
        sample
    }

    fn process_limit(&self, memory: &MemorySample) -> Option<(u64, LimitSource)> {
        let configured = self
            .config
            .max_process_memory
            .map(|l| (l, LimitSource::Configured));
        let cgroup = memory
            .cgroup_limit_bytes()
            .filter(|_| self.config.use_cgroup_limit)
            .map(|l| (l, LimitSource::Cgroup));
        match (configured, cgroup) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn dispatch(&self, events: &[MonitorEvent]) {
        if events.is_empty() {
            return;
        }
        let listeners: Vec<Listener> = self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for event in events {
            for listener in &listeners {
                if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
                    self.listener_panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// An observation for the stages' statistics only (entry and exit of a stage).
    fn observe_stage(&self, name: &str, edge: StageEdge) {
        let allocated = self.source.as_ref().map(|s| s.allocated_bytes() as u64);
        let rss = self.sampler.sample().rss_bytes;
        let mut st = lock(&self.state);
        let acc = stage_acc(&mut st.stages, name);
        acc.entered += u64::from(edge == StageEdge::Enter);
        acc.samples += 1;
        acc.allocated.add(allocated);
        acc.rss.add(rss);
    }
}

/// Which end of a stage an observation is taken at: only entries count as `entered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageEdge {
    Enter,
    Exit,
}

fn stage_acc<'a>(stages: &'a mut Vec<StageAcc>, name: &str) -> &'a mut StageAcc {
    let i = match stages.iter().position(|s| s.name == name) {
        Some(i) => i,
        None => {
            stages.push(StageAcc {
                name: name.to_string(),
                ..StageAcc::default()
            });
            stages.len() - 1
        }
    };
    &mut stages[i]
}

/// `min_system_available` scaled so that 2x / 1.5x / 1x of it reads 50 / 66.7 / 100.
fn system_available_thresholds() -> PressureThresholds {
    PressureThresholds::new(50.0, 200.0 / 3.0, 100.0).unwrap_or_default()
}

/// The default PSI thresholds on `some avg10`: 10 / 25 / 50 %.
///
/// ```
/// let t = limited_allocator::monitor::default_psi_thresholds();
/// assert_eq!((t.medium(), t.high(), t.critical()), (10.0, 25.0, 50.0));
/// ```
pub fn default_psi_thresholds() -> PressureThresholds {
    PressureThresholds::new(10.0, 25.0, 50.0).unwrap_or_default()
}

/// A cheap, cloneable view of a monitor, to query it or label stages from other threads
/// (and to register as a metrics collector). It does not keep the thread running: the
/// [`MemoryMonitor`] owns that.
///
/// ```
/// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// let handle = monitor.handle();
/// std::thread::spawn(move || handle.level()).join().unwrap();
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
#[derive(Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

impl MonitorHandle {
    /// The combined level as of the last sample (one atomic load).
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.level(), limited_allocator::PressureLevel::Low); // nothing sampled
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn level(&self) -> PressureLevel {
        PressureLevel::from_index(self.shared.level.load(Ordering::Relaxed) as usize)
    }

    /// Takes a sample now on the calling thread (listeners, if an event results, run
    /// here too) and returns it.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// let sample = monitor.sample_now();
    /// assert_eq!(sample.level, monitor.level());
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn sample_now(&self) -> MonitorSample {
        self.shared.tick(Instant::now())
    }

    /// For tests: a sample as if taken at `now`, so time per level and leak windows can be
    /// driven without waiting.
    #[cfg(test)]
    pub(crate) fn sample_at(&self, now: Instant) -> MonitorSample {
        self.shared.tick(now)
    }

    /// When the monitor was built.
    #[cfg(test)]
    pub(crate) fn started(&self) -> Instant {
        self.shared.started
    }

    /// The counters so far.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// monitor.sample_now();
    /// let stats = monitor.stats();
    /// assert_eq!(stats.samples, 1);
    /// assert_eq!(stats.levels.iter().map(|l| l.samples).sum::<u64>(), 1);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn stats(&self) -> MonitorStats {
        let st = lock(&self.shared.state);
        MonitorStats {
            samples: st.samples,
            levels: st.levels,
            transitions: st.transitions,
            peak_rss_bytes: st.peak_rss,
            peak_allocated_bytes: st.peak_allocated,
            listener_panics: self.shared.listener_panics.load(Ordering::Relaxed),
            leaks_suspected: st.leaks_suspected,
            last: st.last.clone(),
        }
    }

    /// Adds a listener to a running monitor.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// monitor.add_listener(|event| println!("{event}"));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn add_listener(&self, f: impl Fn(&MonitorEvent) + Send + Sync + 'static) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
    }

    /// For loops that poll cheaply: `true` on every `every`-th iteration (iteration 0
    /// included; `every` of 0 or 1 is always), and on every iteration while the level is
    /// High or Critical, so a loop reacts sooner when it matters. One atomic load.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// let checks = (0..100).filter(|&i| monitor.should_check(i, 10)).count();
    /// assert_eq!(checks, 10); // at Low
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn should_check(&self, iteration: u64, every: u64) -> bool {
        every <= 1 || iteration.is_multiple_of(every) || self.level() >= PressureLevel::High
    }

    /// Labels samples with `name` until the guard is dropped. Stages nest, and may be
    /// active on several threads at once; a sample counts for every active stage. Entry
    /// and exit each add an observation too (a cached sampler read), so a stage shorter
    /// than the interval still has numbers.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// {
    ///     let _merge = monitor.stage("merge");
    ///     let _rows = vec![0u8; 1 << 20];
    /// }
    /// let stats = monitor.stage_stats();
    /// assert_eq!(stats[0].name, "merge");
    /// assert_eq!(stats[0].entered, 1);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn stage(&self, name: impl Into<String>) -> StageGuard {
        let name = name.into();
        let id = self.shared.next_stage_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.active_stages).push((id, name.clone()));
        self.shared.observe_stage(&name, StageEdge::Enter);
        StageGuard {
            shared: Arc::clone(&self.shared),
            id,
            name,
        }
    }

    /// Statistics per stage, in the order stages were first entered.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert!(monitor.stage_stats().is_empty());
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn stage_stats(&self) -> Vec<StageStats> {
        lock(&self.shared.state)
            .stages
            .iter()
            .map(|s| StageStats {
                name: s.name.clone(),
                entered: s.entered,
                samples: s.samples,
                peak_allocated_bytes: s.allocated.peak(),
                mean_allocated_bytes: s.allocated.mean(),
                peak_rss_bytes: s.rss.peak(),
                mean_rss_bytes: s.rss.mean(),
            })
            .collect()
    }

    /// The recorded timeline (`None` unless built with
    /// [`record_timeline`](MonitorBuilder::record_timeline)).
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().record_timeline(100).build()?;
    /// monitor.sample_now();
    /// assert_eq!(monitor.timeline().unwrap().len(), 1);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn timeline(&self) -> Option<Timeline> {
        lock(&self.shared.state).timeline.clone()
    }

    /// The sampling interval.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.interval(), std::time::Duration::from_secs(1));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn interval(&self) -> Duration {
        self.shared.config.interval
    }

    /// Time since the monitor was built.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert!(monitor.uptime() < std::time::Duration::from_secs(3600));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// The watched budget, if any.
    pub(crate) fn source(&self) -> Option<&dyn BudgetSource> {
        self.shared.source.as_deref()
    }

    /// A (cached) reading of the monitor's sampler.
    pub(crate) fn sampler_reading(&self) -> MemorySample {
        self.shared.sampler.sample()
    }
}

/// Labels monitor samples with a stage name while alive. See [`MonitorHandle::stage`].
///
/// ```
/// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// let guard = monitor.stage("load");
/// assert_eq!(guard.name(), "load");
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
#[must_use = "the stage ends when the guard is dropped"]
pub struct StageGuard {
    shared: Arc<Shared>,
    id: u64,
    name: String,
}

impl StageGuard {
    /// The stage's name.
    ///
    /// ```
    /// # let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.stage("sort").name(), "sort");
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for StageGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageGuard")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        self.shared.observe_stage(&self.name, StageEdge::Exit);
        lock(&self.shared.active_stages).retain(|(id, _)| *id != self.id);
    }
}

/// A running (or, from [`MonitorBuilder::build`], manually driven) pressure monitor. See
/// `docs/monitoring.md` for the signals. Queries live on [`MonitorHandle`], which this
/// dereferences to.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::monitor::{MemoryMonitor, MonitorEvent};
/// use std::sync::{Arc, Mutex};
///
/// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
/// let events = Arc::new(Mutex::new(Vec::new()));
/// let sink = events.clone();
/// let mut monitor = MemoryMonitor::builder()
///     .allocator(&ALLOC)
///     .listener(move |e: &MonitorEvent| sink.lock().unwrap().push(e.to_string()))
///     .start()?;
/// monitor.stop();
/// assert!(monitor.stats().samples >= 1);
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
pub struct MemoryMonitor {
    handle: MonitorHandle,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MemoryMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMonitor")
            .field("level", &self.level())
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl MemoryMonitor {
    /// A builder with the defaults: no allocator, 1 s interval, 60/80/95 % thresholds,
    /// 5-point hysteresis, cgroup limit on, PSI on, leak detection with
    /// [`LeakConfig::default`] (the floor's trend over 2 hours).
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder {
            config: Config {
                interval: MonitorBuilder::DEFAULT_INTERVAL,
                thresholds: PressureThresholds::DEFAULT,
                psi_thresholds: Some(default_psi_thresholds()),
                margin: MonitorBuilder::DEFAULT_MARGIN,
                max_process_memory: None,
                min_system_available: None,
                use_cgroup_limit: true,
            },
            sampler: None,
            source: None,
            leak: Some(LeakConfig::default()),
            listeners: Vec::new(),
            timeline: None,
        }
    }

    /// A cloneable handle for other threads or a metrics collector.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// let handle = monitor.handle();
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn handle(&self) -> MonitorHandle {
        self.handle.clone()
    }

    /// Whether the background thread is running.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// assert!(!monitor.is_running());
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and waits for it; it wakes at once, whatever the interval. A
    /// listener that is running finishes first. Idempotent; `Drop` does the same.
    ///
    /// ```
    /// let mut monitor = limited_allocator::monitor::MemoryMonitor::builder().start()?;
    /// monitor.stop();
    /// assert!(!monitor.is_running());
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn stop(&mut self) {
        *lock(&self.handle.shared.stop) = true;
        self.handle.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A listener that owns the monitor and drops it would join itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl core::ops::Deref for MemoryMonitor {
    type Target = MonitorHandle;
    fn deref(&self) -> &MonitorHandle {
        &self.handle
    }
}

impl Drop for MemoryMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}
