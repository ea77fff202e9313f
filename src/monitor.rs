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
use crate::sampler::{MemorySample, Sampler};
use crate::timeline::{Timeline, TimelinePoint};
use crate::units::ByteSize;
use crate::{HysteresisLevel, LimitedAllocator, PressureLevel, PressureThresholds};
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
/// use limited_allocator::{BudgetSource, LimitedAllocator};
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

/// One of the inputs to the combined level.
///
/// ```
/// use limited_allocator::Signal;
/// assert_eq!(Signal::SystemAvailable.as_str(), "system_available");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Signal {
    /// The allocator's usage of its limit.
    Allocator,
    /// The process's anonymous RSS of its limit.
    Rss,
    /// The cgroup's working set of the cgroup limit.
    Cgroup,
    /// System available memory against the configured minimum.
    SystemAvailable,
    /// Linux pressure-stall information.
    Psi,
}

impl Signal {
    /// All signals.
    pub const ALL: [Signal; 5] = [
        Self::Allocator,
        Self::Rss,
        Self::Cgroup,
        Self::SystemAvailable,
        Self::Psi,
    ];

    /// The lower-case name used in metric labels.
    ///
    /// ```
    /// assert_eq!(limited_allocator::Signal::Rss.as_str(), "rss");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allocator => "allocator",
            Self::Rss => "rss",
            Self::Cgroup => "cgroup",
            Self::SystemAvailable => "system_available",
            Self::Psi => "psi",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the limit that RSS is measured against came from.
///
/// ```
/// assert_eq!(limited_allocator::LimitSource::Cgroup.to_string(), "cgroup limit");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LimitSource {
    /// [`MonitorBuilder::max_process_memory`].
    Configured,
    /// The cgroup's memory limit.
    Cgroup,
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Configured => "max_process_memory",
            Self::Cgroup => "cgroup limit",
        })
    }
}

/// Why a signal is at its level, with the numbers. Displays as
/// `rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high`.
///
/// ```
/// use limited_allocator::{LimitSource, PressureLevel, Reason};
/// let r = Reason::Rss {
///     level: PressureLevel::High,
///     rss_bytes: 1932735283,
///     limit_bytes: 2 << 30,
///     limit_source: LimitSource::Cgroup,
/// };
/// assert_eq!(r.to_string(), "rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high");
/// assert_eq!(r.level(), PressureLevel::High);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "signal"))]
#[non_exhaustive]
pub enum Reason {
    /// The allocator's budget.
    Allocator {
        /// The signal's level.
        level: PressureLevel,
        /// Bytes charged.
        allocated_bytes: u64,
        /// The allocator's limit.
        limit_bytes: u64,
    },
    /// Anonymous RSS of the process limit.
    Rss {
        /// The signal's level.
        level: PressureLevel,
        /// `RssAnon` (or `VmRSS` where `RssAnon` is missing).
        rss_bytes: u64,
        /// The limit measured against.
        limit_bytes: u64,
        /// Where that limit came from.
        limit_source: LimitSource,
    },
    /// The cgroup's working set of its limit.
    Cgroup {
        /// The signal's level.
        level: PressureLevel,
        /// Usage less inactive file pages.
        working_set_bytes: u64,
        /// The cgroup limit.
        limit_bytes: u64,
    },
    /// System available memory against the configured minimum.
    SystemAvailable {
        /// The signal's level.
        level: PressureLevel,
        /// `MemAvailable`.
        available_bytes: u64,
        /// [`MonitorBuilder::min_system_available`].
        min_available_bytes: u64,
    },
    /// Pressure-stall information.
    Psi {
        /// The signal's level.
        level: PressureLevel,
        /// `some avg10` in percent.
        some_avg10: f64,
    },
}

impl Reason {
    /// The signal's level.
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, Reason};
    /// let r = Reason::Psi { level: PressureLevel::Medium, some_avg10: 12.0 };
    /// assert_eq!(r.level(), PressureLevel::Medium);
    /// ```
    pub fn level(&self) -> PressureLevel {
        match *self {
            Self::Allocator { level, .. }
            | Self::Rss { level, .. }
            | Self::Cgroup { level, .. }
            | Self::SystemAvailable { level, .. }
            | Self::Psi { level, .. } => level,
        }
    }

    /// Which signal this is.
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, Reason, Signal};
    /// let r = Reason::Psi { level: PressureLevel::Low, some_avg10: 0.0 };
    /// assert_eq!(r.signal(), Signal::Psi);
    /// ```
    pub fn signal(&self) -> Signal {
        match self {
            Self::Allocator { .. } => Signal::Allocator,
            Self::Rss { .. } => Signal::Rss,
            Self::Cgroup { .. } => Signal::Cgroup,
            Self::SystemAvailable { .. } => Signal::SystemAvailable,
            Self::Psi { .. } => Signal::Psi,
        }
    }
}

fn bytes(n: u64) -> ByteSize {
    ByteSize(usize::try_from(n).unwrap_or(usize::MAX))
}

fn percent(used: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        used as f64 * 100.0 / of as f64
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Allocator {
                level,
                allocated_bytes,
                limit_bytes,
            } => write!(
                f,
                "allocator {} of {} limit ({:.1}%): {level}",
                bytes(allocated_bytes),
                bytes(limit_bytes),
                percent(allocated_bytes, limit_bytes)
            ),
            Self::Rss {
                level,
                rss_bytes,
                limit_bytes,
                limit_source,
            } => write!(
                f,
                "rss {} of {} {limit_source} ({:.1}%): {level}",
                bytes(rss_bytes),
                bytes(limit_bytes),
                percent(rss_bytes, limit_bytes)
            ),
            Self::Cgroup {
                level,
                working_set_bytes,
                limit_bytes,
            } => write!(
                f,
                "cgroup working set {} of {} limit ({:.1}%): {level}",
                bytes(working_set_bytes),
                bytes(limit_bytes),
                percent(working_set_bytes, limit_bytes)
            ),
            Self::SystemAvailable {
                level,
                available_bytes,
                min_available_bytes,
            } => write!(
                f,
                "system available {} ({:.2}x the {} minimum): {level}",
                bytes(available_bytes),
                if min_available_bytes == 0 {
                    f64::INFINITY
                } else {
                    available_bytes as f64 / min_available_bytes as f64
                },
                bytes(min_available_bytes)
            ),
            Self::Psi { level, some_avg10 } => {
                write!(f, "psi some avg10 {some_avg10:.1}%: {level}")
            }
        }
    }
}

/// What listeners are told.
///
/// ```
/// use limited_allocator::{MonitorEvent, PressureLevel};
/// let e = MonitorEvent::LevelChanged {
///     from: PressureLevel::Low,
///     to: PressureLevel::High,
///     reasons: vec![],
/// };
/// assert_eq!(e.to_string(), "memory pressure low -> high");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MonitorEvent {
    /// The combined level changed. `reasons` are the signals at the new level.
    LevelChanged {
        /// The level before.
        from: PressureLevel,
        /// The level now.
        to: PressureLevel,
        /// The signals at level `to`, highest first.
        reasons: Vec<Reason>,
    },
    /// A sustained upward trend was found. See [`crate::TrendDetector`].
    LeakSuspected(LeakSuspected),
}

impl fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LevelChanged { from, to, reasons } => {
                write!(f, "memory pressure {from} -> {to}")?;
                for (i, r) in reasons.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Self::LeakSuspected(leak) => write!(f, "{leak}"),
        }
    }
}

/// A monitor configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The interval must be above zero.
    #[error("monitor interval must be above zero (got {interval_ns} ns)")]
    ZeroInterval {
        /// The interval that was given, in nanoseconds.
        interval_ns: u128,
    },
    /// The hysteresis margin must be a number of percentage points in `0..=100`.
    #[error("hysteresis margin {margin} is not within 0..=100 percentage points")]
    BadMargin {
        /// The margin that was given.
        margin: f64,
    },
    /// The operating system refused to start the monitor thread.
    #[error("could not start the memory-monitor thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Samples and time spent at one level.
///
/// ```
/// let s = limited_allocator::LevelStats::default();
/// assert_eq!(s.samples, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LevelStats {
    /// Samples whose combined level was this one.
    pub samples: u64,
    /// Time spent at this level: the time from each such sample to the next one.
    pub time: Duration,
}

/// One monitor sample: the budget, the machine and the verdict.
///
/// ```no_run
/// # let monitor = limited_allocator::MemoryMonitor::builder().build()?;
/// let sample = monitor.sample_now();
/// for reason in &sample.reasons {
///     println!("{reason}");
/// }
/// # Ok::<(), limited_allocator::MonitorError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MonitorSample {
    /// Time since the monitor was built.
    pub elapsed: Duration,
    /// The combined level after this sample.
    pub level: PressureLevel,
    /// Bytes charged to the allocator (no allocator: `None`).
    pub allocated_bytes: Option<u64>,
    /// The allocator's peak.
    pub peak_allocated_bytes: Option<u64>,
    /// The allocator's limit (`None` also when unlimited).
    pub allocator_limit_bytes: Option<u64>,
    /// The limit RSS is measured against, and where it came from.
    pub process_limit: Option<(u64, LimitSource)>,
    /// What the sampler read.
    pub memory: MemorySample,
    /// One reason per signal that could be read, highest level first.
    pub reasons: Vec<Reason>,
    /// The stages active when the sample was taken, outermost first.
    pub stages: Vec<String>,
}

/// The monitor's counters. See [`MonitorHandle::stats`].
///
/// ```no_run
/// # let monitor = limited_allocator::MemoryMonitor::builder().build()?;
/// use limited_allocator::PressureLevel;
/// let stats = monitor.stats();
/// println!("{:?} at critical", stats.at(PressureLevel::Critical).time);
/// # Ok::<(), limited_allocator::MonitorError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MonitorStats {
    /// Samples taken.
    pub samples: u64,
    /// Per level, indexed by [`PressureLevel::index`].
    pub levels: [LevelStats; 4],
    /// Changes of the combined level.
    pub transitions: u64,
    /// The highest `VmRSS` sampled (or `VmHWM`, if higher).
    pub peak_rss_bytes: Option<u64>,
    /// The highest allocated bytes sampled (or the allocator's peak, if higher).
    pub peak_allocated_bytes: Option<u64>,
    /// Listener calls that panicked.
    pub listener_panics: u64,
    /// `LeakSuspected` events raised.
    pub leaks_suspected: u64,
    /// The last sample.
    pub last: Option<MonitorSample>,
}

impl MonitorStats {
    /// The statistics of one level.
    ///
    /// ```no_run
    /// # let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// let low = monitor.stats().at(limited_allocator::PressureLevel::Low).samples;
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn at(&self, level: PressureLevel) -> LevelStats {
        self.levels[level.index()]
    }
}

/// Memory use while a stage was active. See [`MonitorHandle::stage`].
///
/// ```
/// let s = limited_allocator::StageStats::default();
/// assert_eq!(s.mean_rss_bytes, None);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// Times the stage was entered.
    pub entered: u64,
    /// Observations: monitor samples while active, plus one on entry and one on exit.
    pub samples: u64,
    /// The highest allocated bytes observed.
    pub peak_allocated_bytes: Option<u64>,
    /// The mean of allocated bytes observed.
    pub mean_allocated_bytes: Option<f64>,
    /// The highest `VmRSS` observed.
    pub peak_rss_bytes: Option<u64>,
    /// The mean of `VmRSS` observed.
    pub mean_rss_bytes: Option<f64>,
}

#[derive(Default)]
struct Accumulator {
    n: u64,
    sum: f64,
    peak: u64,
}

impl Accumulator {
    fn add(&mut self, v: Option<u64>) {
        if let Some(v) = v {
            self.n += 1;
            self.sum += v as f64;
            self.peak = self.peak.max(v);
        }
    }
    fn peak(&self) -> Option<u64> {
        (self.n > 0).then_some(self.peak)
    }
    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

#[derive(Default)]
struct StageAcc {
    name: String,
    entered: u64,
    samples: u64,
    allocated: Accumulator,
    rss: Accumulator,
}

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

/// Configures a [`MemoryMonitor`]. Start from [`MemoryMonitor::builder`].
///
/// The allocator is given either as `&'static` ([`allocator`](Self::allocator), the usual
/// case for the `#[global_allocator]` static) or as an `Arc<dyn BudgetSource>`
/// ([`budget_source`](Self::budget_source)); without one, the monitor watches only the
/// process and the machine.
///
/// ```
/// use limited_allocator::{LimitedAllocator, MemoryMonitor, PressureLevel};
/// use std::time::Duration;
///
/// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
///
/// let monitor = MemoryMonitor::builder()
///     .allocator(&ALLOC)
///     .max_process_memory(2 << 30)
///     .min_system_available(512 << 20)
///     .interval(Duration::from_millis(500))
///     .listener(|event| eprintln!("{event}"))
///     .start()?;
/// assert!(monitor.level() <= PressureLevel::Critical);
/// drop(monitor); // stops and joins the thread
/// # Ok::<(), limited_allocator::MonitorError>(())
/// ```
#[must_use = "a builder does nothing until build() or start()"]
pub struct MonitorBuilder {
    config: Config,
    sampler: Option<Sampler>,
    source: Option<Arc<dyn BudgetSource>>,
    leak: Option<LeakConfig>,
    listeners: Vec<Listener>,
    timeline: Option<usize>,
}

impl fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("interval", &self.config.interval)
            .field("has_source", &self.source.is_some())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl MonitorBuilder {
    /// The default sampling interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// The default hysteresis margin, in percentage points.
    pub const DEFAULT_MARGIN: f64 = 5.0;

    /// Watches a `'static` allocator, usually the `#[global_allocator]`.
    ///
    /// ```
    /// # use limited_allocator::{LimitedAllocator, MemoryMonitor};
    /// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let monitor = MemoryMonitor::builder().allocator(&ALLOC).build()?;
    /// assert_eq!(monitor.sample_now().allocator_limit_bytes, Some(1 << 30));
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn allocator<S: BudgetSource + 'static>(mut self, allocator: &'static S) -> Self {
        self.source = Some(Arc::new(StaticSource(allocator)));
        self
    }

    /// Watches any shared [`BudgetSource`], e.g. an `Arc<LimitedAllocator>` that is not a
    /// `static`.
    ///
    /// ```
    /// # use limited_allocator::{LimitedAllocator, MemoryMonitor};
    /// use std::sync::Arc;
    /// let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 20));
    /// let monitor = MemoryMonitor::builder().budget_source(alloc.clone()).build()?;
    /// let _held = alloc.try_reserve(700 << 10).unwrap();
    /// assert_eq!(monitor.sample_now().allocated_bytes, Some(700 << 10));
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn budget_source(mut self, source: Arc<dyn BudgetSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// A limit for the process's anonymous RSS. The effective limit is the smaller of this
    /// and the cgroup limit (unless [`use_cgroup_limit(false)`](Self::use_cgroup_limit)).
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder().max_process_memory(4 << 30);
    /// ```
    pub fn max_process_memory(mut self, bytes: u64) -> Self {
        self.config.max_process_memory = Some(bytes);
        self
    }

    /// The least system available memory (`MemAvailable`) that is comfortable: below 2x of
    /// it is Medium, below 1.5x High, at or below 1x Critical.
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder().min_system_available(1 << 30);
    /// ```
    pub fn min_system_available(mut self, bytes: u64) -> Self {
        self.config.min_system_available = Some(bytes);
        self
    }

    /// Whether the cgroup limit is taken into account (default `true`): as a limit for RSS
    /// and as the `cgroup` working-set signal.
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder().use_cgroup_limit(false);
    /// ```
    pub fn use_cgroup_limit(mut self, on: bool) -> Self {
        self.config.use_cgroup_limit = on;
        self
    }

    /// The sampling interval (default 1 s; must be above zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = limited_allocator::MemoryMonitor::builder().interval(Duration::ZERO).build();
    /// assert!(err.is_err());
    /// ```
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Thresholds for the percentage signals (allocator, rss, cgroup); default 60/80/95.
    ///
    /// ```
    /// use limited_allocator::{MemoryMonitor, PressureThresholds};
    /// let b = MemoryMonitor::builder().thresholds(PressureThresholds::new(50.0, 70.0, 90.0)?);
    /// # Ok::<(), limited_allocator::ThresholdError>(())
    /// ```
    pub fn thresholds(mut self, thresholds: PressureThresholds) -> Self {
        self.config.thresholds = thresholds;
        self
    }

    /// Thresholds on PSI `some avg10` in percent (default [`default_psi_thresholds`],
    /// 10/25/50), or `None` to ignore
    /// PSI.
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder().psi_thresholds(None);
    /// ```
    pub fn psi_thresholds(mut self, thresholds: Option<PressureThresholds>) -> Self {
        self.config.psi_thresholds = thresholds;
        self
    }

    /// The hysteresis margin in percentage points (default 5): a level is left only once
    /// usage is this far below its threshold.
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder().hysteresis_margin(2.5);
    /// ```
    pub fn hysteresis_margin(mut self, points: f64) -> Self {
        self.config.margin = points;
        self
    }

    /// The sampler to read with (default: the real machine, cached for at most half the
    /// interval). Use [`Sampler::with_root`] to watch a fixture tree or a mounted `/proc`.
    ///
    /// ```
    /// use limited_allocator::{MemoryMonitor, Sampler};
    /// let b = MemoryMonitor::builder().sampler(Sampler::with_root("/"));
    /// ```
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Leak detection on allocated bytes and anonymous RSS (default: on, with
    /// [`LeakConfig::default`], a 10-minute window), or `None` to turn it off.
    ///
    /// ```
    /// use limited_allocator::{LeakConfig, MemoryMonitor};
    /// use std::time::Duration;
    /// let b = MemoryMonitor::builder().leak_detection(Some(LeakConfig {
    ///     window: Duration::from_secs(120),
    ///     ..LeakConfig::default()
    /// }));
    /// ```
    pub fn leak_detection(mut self, config: Option<LeakConfig>) -> Self {
        self.leak = config;
        self
    }

    /// Adds a listener, called on the monitor thread for every [`MonitorEvent`].
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder()
    ///     .listener(|event| eprintln!("memory: {event}"));
    /// ```
    pub fn listener(mut self, f: impl Fn(&MonitorEvent) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(f));
        self
    }

    /// Records a [`Timeline`] of at most `capacity` points (see
    /// [`MonitorHandle::timeline`]).
    ///
    /// ```
    /// let b = limited_allocator::MemoryMonitor::builder()
    ///     .record_timeline(limited_allocator::Timeline::DEFAULT_CAPACITY);
    /// ```
    pub fn record_timeline(mut self, capacity: usize) -> Self {
        self.timeline = Some(capacity);
        self
    }

    /// Builds a monitor without a thread: samples are taken by
    /// [`sample_now`](MonitorHandle::sample_now), listeners run on the caller's thread.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// monitor.sample_now();
    /// assert_eq!(monitor.stats().samples, 1);
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn build(self) -> Result<MemoryMonitor, MonitorError> {
        let c = &self.config;
        if c.interval.is_zero() {
            return Err(MonitorError::ZeroInterval {
                interval_ns: c.interval.as_nanos(),
            });
        }
        if !(0.0..=100.0).contains(&c.margin) {
            return Err(MonitorError::BadMargin { margin: c.margin });
        }
        let sampler = self.sampler.unwrap_or_else(|| {
            Sampler::new().with_max_age(Sampler::DEFAULT_MAX_AGE.min(c.interval / 2))
        });
        let leak = self.leak;
        let state = State {
            last_tick: None,
            signals: [None; 5],
            level: PressureLevel::Low,
            samples: 0,
            levels: [LevelStats::default(); 4],
            transitions: 0,
            peak_rss: None,
            peak_allocated: None,
            leaks_suspected: 0,
            last: None,
            leak_allocated: leak.map(|l| TrendDetector::new(LeakMetric::AllocatedBytes, l)),
            leak_rss: leak.map(|l| TrendDetector::new(LeakMetric::Rss, l)),
            timeline: self.timeline.map(Timeline::with_capacity),
            stages: Vec::new(),
        };
        Ok(MemoryMonitor {
            handle: MonitorHandle {
                shared: Arc::new(Shared {
                    config: self.config,
                    started: Instant::now(),
                    sampler,
                    source: self.source,
                    state: Mutex::new(state),
                    level: AtomicU8::new(0),
                    listeners: RwLock::new(self.listeners),
                    listener_panics: AtomicU64::new(0),
                    active_stages: Mutex::new(Vec::new()),
                    next_stage_id: AtomicU64::new(0),
                    stop: Mutex::new(false),
                    wake: Condvar::new(),
                }),
            },
            thread: None,
        })
    }

    /// Builds the monitor and starts its `memory-monitor` thread, which takes the first
    /// sample at once and then one per interval.
    ///
    /// ```
    /// let mut monitor = limited_allocator::MemoryMonitor::builder().start()?;
    /// monitor.stop();
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn start(self) -> Result<MemoryMonitor, MonitorError> {
        let mut monitor = self.build()?;
        let shared = Arc::clone(&monitor.handle.shared);
        let thread = std::thread::Builder::new()
            .name("memory-monitor".into())
            .spawn(move || run(&shared))?;
        monitor.thread = Some(thread);
        Ok(monitor)
    }
}

struct StaticSource<S: 'static>(&'static S);

impl<S: BudgetSource> BudgetSource for StaticSource<S> {
    fn allocated_bytes(&self) -> usize {
        self.0.allocated_bytes()
    }
    fn peak_bytes(&self) -> usize {
        self.0.peak_bytes()
    }
    fn limit(&self) -> usize {
        self.0.limit()
    }
    fn allocator_stats(&self) -> Option<crate::AllocatorStats> {
        self.0.allocator_stats()
    }
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

            if let (Some(d), Some((allocated, _, _))) = (st.leak_allocated.as_mut(), budget) {
                events.extend(
                    d.observe(elapsed, allocated)
                        .map(MonitorEvent::LeakSuspected),
                );
            }
            if let (Some(d), Some(rss)) = (st.leak_rss.as_mut(), rss) {
                events.extend(d.observe(elapsed, rss).map(MonitorEvent::LeakSuspected));
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
    fn observe_stage(&self, name: &str, entering: bool) {
        let allocated = self.source.as_ref().map(|s| s.allocated_bytes() as u64);
        let rss = self.sampler.sample().rss_bytes;
        let mut st = lock(&self.state);
        let acc = stage_acc(&mut st.stages, name);
        acc.entered += u64::from(entering);
        acc.samples += 1;
        acc.allocated.add(allocated);
        acc.rss.add(rss);
    }
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
/// let t = limited_allocator::default_psi_thresholds();
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
/// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
/// let handle = monitor.handle();
/// std::thread::spawn(move || handle.level()).join().unwrap();
/// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.level(), limited_allocator::PressureLevel::Low); // nothing sampled
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn level(&self) -> PressureLevel {
        PressureLevel::from_index(self.shared.level.load(Ordering::Relaxed) as usize)
    }

    /// Takes a sample now on the calling thread (listeners, if an event results, run
    /// here too) and returns it.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// let sample = monitor.sample_now();
    /// assert_eq!(sample.level, monitor.level());
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// monitor.sample_now();
    /// let stats = monitor.stats();
    /// assert_eq!(stats.samples, 1);
    /// assert_eq!(stats.levels.iter().map(|l| l.samples).sum::<u64>(), 1);
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// monitor.add_listener(|event| println!("{event}"));
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// let checks = (0..100).filter(|&i| monitor.should_check(i, 10)).count();
    /// assert_eq!(checks, 10); // at Low
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// {
    ///     let _merge = monitor.stage("merge");
    ///     let _rows = vec![0u8; 1 << 20];
    /// }
    /// let stats = monitor.stage_stats();
    /// assert_eq!(stats[0].name, "merge");
    /// assert_eq!(stats[0].entered, 1);
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn stage(&self, name: impl Into<String>) -> StageGuard {
        let name = name.into();
        let id = self.shared.next_stage_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.active_stages).push((id, name.clone()));
        self.shared.observe_stage(&name, true);
        StageGuard {
            shared: Arc::clone(&self.shared),
            id,
            name,
        }
    }

    /// Statistics per stage, in the order stages were first entered.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert!(monitor.stage_stats().is_empty());
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().record_timeline(100).build()?;
    /// monitor.sample_now();
    /// assert_eq!(monitor.timeline().unwrap().len(), 1);
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn timeline(&self) -> Option<Timeline> {
        lock(&self.shared.state).timeline.clone()
    }

    /// The sampling interval.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.interval(), std::time::Duration::from_secs(1));
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn interval(&self) -> Duration {
        self.shared.config.interval
    }

    /// Time since the monitor was built.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert!(monitor.uptime() < std::time::Duration::from_secs(3600));
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
/// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
/// let guard = monitor.stage("load");
/// assert_eq!(guard.name(), "load");
/// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// # let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert_eq!(monitor.stage("sort").name(), "sort");
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
        self.shared.observe_stage(&self.name, false);
        lock(&self.shared.active_stages).retain(|(id, _)| *id != self.id);
    }
}

/// A running (or, from [`MonitorBuilder::build`], manually driven) pressure monitor. See
/// `docs/monitoring.md` for the signals. Queries live on [`MonitorHandle`], which this
/// dereferences to.
///
/// ```
/// use limited_allocator::{LimitedAllocator, MemoryMonitor, MonitorEvent};
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
/// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// 5-point hysteresis, cgroup limit on, PSI on, leak detection over 10 minutes.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// # Ok::<(), limited_allocator::MonitorError>(())
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
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// let handle = monitor.handle();
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn handle(&self) -> MonitorHandle {
        self.handle.clone()
    }

    /// Whether the background thread is running.
    ///
    /// ```
    /// let monitor = limited_allocator::MemoryMonitor::builder().build()?;
    /// assert!(!monitor.is_running());
    /// # Ok::<(), limited_allocator::MonitorError>(())
    /// ```
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and waits for it; it wakes at once, whatever the interval. A
    /// listener that is running finishes first. Idempotent; `Drop` does the same.
    ///
    /// ```
    /// let mut monitor = limited_allocator::MemoryMonitor::builder().start()?;
    /// monitor.stop();
    /// assert!(!monitor.is_running());
    /// # Ok::<(), limited_allocator::MonitorError>(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::tests::Fixture;
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
                window: Duration::from_secs(60),
                ..LeakConfig::default()
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
}
