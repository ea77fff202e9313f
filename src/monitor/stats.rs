//! What the monitor reports: per-level, per-sample and per-stage statistics.

use super::*;

/// Samples and time spent at one level.
///
/// ```
/// let s = limited_allocator::monitor::LevelStats::default();
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
/// # let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// let sample = monitor.sample_now();
/// for reason in &sample.reasons {
///     println!("{reason}");
/// }
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
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
/// # let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// use limited_allocator::PressureLevel;
/// let stats = monitor.stats();
/// println!("{:?} at critical", stats.at(PressureLevel::Critical).time);
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
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
    /// # let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// let low = monitor.stats().at(limited_allocator::PressureLevel::Low).samples;
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn at(&self, level: PressureLevel) -> LevelStats {
        self.levels[level.index()]
    }
}

/// Memory use while a stage was active. See [`MonitorHandle::stage`].
///
/// ```
/// let s = limited_allocator::monitor::StageStats::default();
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
pub(super) struct Accumulator {
    pub(super) n: u64,
    pub(super) sum: f64,
    pub(super) peak: u64,
}

impl Accumulator {
    pub(super) fn add(&mut self, v: Option<u64>) {
        if let Some(v) = v {
            self.n += 1;
            self.sum += v as f64;
            self.peak = self.peak.max(v);
        }
    }
    pub(super) fn peak(&self) -> Option<u64> {
        (self.n > 0).then_some(self.peak)
    }
    pub(super) fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

#[derive(Default)]
pub(super) struct StageAcc {
    pub(super) name: String,
    pub(super) entered: u64,
    pub(super) samples: u64,
    pub(super) allocated: Accumulator,
    pub(super) rss: Accumulator,
}
