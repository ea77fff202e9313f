//! [`MonitorBuilder`]: configures and starts a [`MemoryMonitor`].

use super::*;

/// Configures a [`MemoryMonitor`]. Start from [`MemoryMonitor::builder`].
///
/// The allocator is given either as `&'static` ([`allocator`](Self::allocator), the usual
/// case for the `#[global_allocator]` static) or as an `Arc<dyn BudgetSource>`
/// ([`budget_source`](Self::budget_source)); without one, the monitor watches only the
/// process and the machine.
///
/// ```
/// use limited_allocator::{LimitedAllocator, PressureLevel};
/// use limited_allocator::monitor::MemoryMonitor;
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
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
#[must_use = "a builder does nothing until build() or start()"]
pub struct MonitorBuilder {
    pub(super) config: Config,
    pub(super) sampler: Option<Sampler>,
    pub(super) source: Option<Arc<dyn BudgetSource>>,
    pub(super) leak: Option<LeakConfig>,
    pub(super) listeners: Vec<Listener>,
    pub(super) timeline: Option<usize>,
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
    /// # use limited_allocator::LimitedAllocator;
    /// # use limited_allocator::monitor::MemoryMonitor;
    /// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let monitor = MemoryMonitor::builder().allocator(&ALLOC).build()?;
    /// assert_eq!(monitor.sample_now().allocator_limit_bytes, Some(1 << 30));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn allocator<S: BudgetSource + 'static>(mut self, allocator: &'static S) -> Self {
        self.source = Some(Arc::new(StaticSource(allocator)));
        self
    }

    /// Watches any shared [`BudgetSource`], e.g. an `Arc<LimitedAllocator>` that is not a
    /// `static`.
    ///
    /// ```
    /// # use limited_allocator::LimitedAllocator;
    /// # use limited_allocator::monitor::MemoryMonitor;
    /// use std::sync::Arc;
    /// let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 20));
    /// let monitor = MemoryMonitor::builder().budget_source(alloc.clone()).build()?;
    /// let _held = alloc.try_reserve(700 << 10).unwrap();
    /// assert_eq!(monitor.sample_now().allocated_bytes, Some(700 << 10));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn budget_source(mut self, source: Arc<dyn BudgetSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// A limit for the process's anonymous RSS. The effective limit is the smaller of this
    /// and the cgroup limit (unless [`use_cgroup_limit(false)`](Self::use_cgroup_limit)).
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder().max_process_memory(4 << 30);
    /// ```
    pub fn max_process_memory(mut self, bytes: u64) -> Self {
        self.config.max_process_memory = Some(bytes);
        self
    }

    /// The least system available memory (`MemAvailable`) that is comfortable: below 2x of
    /// it is Medium, below 1.5x High, at or below 1x Critical.
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder().min_system_available(1 << 30);
    /// ```
    pub fn min_system_available(mut self, bytes: u64) -> Self {
        self.config.min_system_available = Some(bytes);
        self
    }

    /// Whether the cgroup limit is taken into account (default `true`): as a limit for RSS
    /// and as the `cgroup` working-set signal.
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder().use_cgroup_limit(false);
    /// ```
    pub fn use_cgroup_limit(mut self, on: bool) -> Self {
        self.config.use_cgroup_limit = on;
        self
    }

    /// The sampling interval (default 1 s; must be above zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = limited_allocator::monitor::MemoryMonitor::builder().interval(Duration::ZERO).build();
    /// assert!(err.is_err());
    /// ```
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Thresholds for the percentage signals (allocator, rss, cgroup); default 60/80/95.
    ///
    /// ```
    /// use limited_allocator::PressureThresholds;
    /// use limited_allocator::monitor::MemoryMonitor;
    /// let b = MemoryMonitor::builder().thresholds(PressureThresholds::new(50.0, 70.0, 90.0)?);
    /// # Ok::<(), limited_allocator::pressure::ThresholdError>(())
    /// ```
    pub fn thresholds(mut self, thresholds: PressureThresholds) -> Self {
        self.config.thresholds = thresholds;
        self
    }

    /// Thresholds on PSI `some avg10` in percent (default [`default_psi_thresholds`],
    /// 10/25/50), or `None` to ignore PSI.
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder().psi_thresholds(None);
    /// ```
    pub fn psi_thresholds(mut self, thresholds: Option<PressureThresholds>) -> Self {
        self.config.psi_thresholds = thresholds;
        self
    }

    /// The hysteresis margin in percentage points (default 5): a level is left only once
    /// usage is this far below its threshold.
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder().hysteresis_margin(2.5);
    /// ```
    pub fn hysteresis_margin(mut self, points: f64) -> Self {
        self.config.margin = points;
        self
    }

    /// The sampler to read with (default: the real machine, cached for at most half the
    /// interval). Use [`Sampler::with_root`] to watch a fixture tree or a mounted `/proc`.
    ///
    /// ```
    /// use limited_allocator::monitor::MemoryMonitor;
    /// use limited_allocator::sampler::Sampler;
    /// let b = MemoryMonitor::builder().sampler(Sampler::with_root("/"));
    /// ```
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Leak detection on allocated bytes and anonymous RSS (default: on, with
    /// [`LeakConfig::default`]: the floor's trend over 2 hours), or `None` to turn it off.
    /// A bad config is refused by [`build`](Self::build).
    ///
    /// ```
    /// use limited_allocator::leak::LeakConfig;
    /// use limited_allocator::monitor::MemoryMonitor;
    /// use std::time::Duration;
    /// let b = MemoryMonitor::builder().leak_detection(Some(LeakConfig {
    ///     horizon: Duration::from_secs(4 * 3600),
    ///     bucket: Duration::from_secs(600),
    ///     ..LeakConfig::default()
    /// }));
    /// let bad = MemoryMonitor::builder()
    ///     .leak_detection(Some(LeakConfig { bucket: Duration::ZERO, ..LeakConfig::default() }));
    /// assert!(bad.build().is_err());
    /// ```
    pub fn leak_detection(mut self, config: Option<LeakConfig>) -> Self {
        self.leak = config;
        self
    }

    /// Adds a listener, called on the monitor thread for every [`MonitorEvent`].
    ///
    /// ```
    /// let b = limited_allocator::monitor::MemoryMonitor::builder()
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
    /// let b = limited_allocator::monitor::MemoryMonitor::builder()
    ///     .record_timeline(limited_allocator::timeline::Timeline::DEFAULT_CAPACITY);
    /// ```
    pub fn record_timeline(mut self, capacity: usize) -> Self {
        self.timeline = Some(capacity);
        self
    }

    /// Builds a monitor without a thread: samples are taken by
    /// [`sample_now`](MonitorHandle::sample_now), listeners run on the caller's thread.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// monitor.sample_now();
    /// assert_eq!(monitor.stats().samples, 1);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
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
        let detector = |metric| self.leak.map(|l| TrendDetector::new(metric, l)).transpose();
        let leak_allocated = detector(LeakMetric::AllocatedBytes)?;
        let leak_rss = detector(LeakMetric::Rss)?;
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
            leak_allocated,
            leak_rss,
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
    /// let mut monitor = limited_allocator::monitor::MemoryMonitor::builder().start()?;
    /// monitor.stop();
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
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
