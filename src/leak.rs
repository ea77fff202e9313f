//! Leak detection: the memory that stays after each cycle keeps rising.
//!
//! A service's memory goes up and down with its work: caches fill and flush, batches
//! allocate and free, garbage-collected runtimes saw-tooth. None of that is a leak. A leak
//! is what stays *after* each cycle: the floor the series keeps returning to rises. A
//! [`TrendDetector`] therefore tests the **lower envelope** of one series (allocated bytes,
//! or RSS), not its samples:
//!
//! 1. **Buckets.** Samples fall into buckets of [`LeakConfig::bucket`] (5 min by default);
//!    a bucket keeps only its minimum and maximum. Memory and time per sample are constant:
//!    a ring of `horizon / bucket` minima, whatever the horizon and the sampling rate.
//! 2. **Envelope.** Each envelope point is the minimum of the last
//!    [`LeakConfig::envelope`] (30 min) of buckets: the floor the series came back to
//!    within that time. A cycle shorter than the envelope (sawtooth, batch loop) leaves a
//!    flat floor; a leak raises it.
//! 3. **Trend.** Once per closed bucket, over the points of the last
//!    [`LeakConfig::horizon`] (2 h), the detector computes the Theil–Sen slope (the median
//!    of all pairwise slopes; Sen 1968, after Theil 1950) and the Mann–Kendall test for a
//!    monotone trend (Mann 1945, Kendall 1975), with the tie correction of the variance.
//!    Both are rank statistics: one outlier or one burst moves them by one pair of many,
//!    where a least-squares line and its R² are dragged along (the R² of a leak under a
//!    sawtooth is near zero although its floor rises steadily).
//! 4. **Persistence.** The horizon is cut into [`LeakConfig::SEGMENTS`] (4) segments; the
//!    Theil–Sen slope of each is taken on its own. A segment *rises* when its slope is at
//!    least half of [`LeakConfig::min_bytes_per_sec`] and a quarter of the horizon's
//!    slope. A load step raises one segment; a leak raises them all. The newer half of the
//!    horizon must also rise at least half as fast as the whole: the tail of a warm-up
//!    that levels off still rises, but ever slower.
//!
//! A leak is suspected when, at once: the history covers the horizon and its envelope; the
//! Mann–Kendall confidence (one-sided, `1 - p`) is at least [`LeakConfig::min_confidence`];
//! the Theil–Sen slope over the horizon is at least [`LeakConfig::min_bytes_per_sec`]; at
//! least 3 of the 4 segments rise, the newest among them; the newer half keeps pace. It is
//! raised once per episode ([`LeakSuspected`]) and re-armed when the growth stops: when
//! the newer half of the horizon rises at less than a quarter of the floor.
//!
//! Why these defaults, and the false-alarm and detection rates they give over a corpus of
//! healthy and leaking series: `docs/monitoring.md` ("Leak trends").
//!
//! Everything is computed from the samples' own timestamps, never the wall clock, so a
//! recorded or synthetic series can be fed as fast as it can be read. The pairwise
//! statistics cost O(k²) for k buckets in the horizon (24 by default: 276 pairs), once per
//! bucket; the scratch space for them is allocated when the detector is built.
//!
//! References: H. Theil, "A rank-invariant method of linear and polynomial regression
//! analysis" (1950); P. K. Sen, "Estimates of the regression coefficient based on Kendall's
//! tau", JASA 63 (1968); H. B. Mann, "Nonparametric tests against trend", Econometrica 13
//! (1945); M. G. Kendall, *Rank Correlation Methods*, 4th ed. (1975). The same pair is the
//! standard test for trends in hydrology and climate series (e.g. Hirsch, Slack & Smith,
//! Water Resources Research 18, 1982), where seasonality plays the part of our cycles.

use core::fmt;
use std::time::Duration;

const SEGMENTS: usize = LeakConfig::SEGMENTS;

/// Which series a trend is about.
///
/// ```
/// use limited_allocator::leak::LeakMetric;
/// assert_eq!(LeakMetric::Rss.as_str(), "rss");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LeakMetric {
    /// Bytes charged to the allocator's budget.
    AllocatedBytes,
    /// The process's anonymous resident memory (`RssAnon`, else `VmRSS`).
    Rss,
}

impl LeakMetric {
    /// A short lower-case name (`"allocated_bytes"`, `"rss"`), as used in metric labels.
    ///
    /// ```
    /// assert_eq!(limited_allocator::leak::LeakMetric::AllocatedBytes.as_str(), "allocated_bytes");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllocatedBytes => "allocated_bytes",
            Self::Rss => "rss",
        }
    }
}

impl fmt::Display for LeakMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A suspected leak: the floor of `metric` rose by `bytes_per_sec` over `horizon`, with
/// the Mann–Kendall `confidence`; at this rate the series reaches `limit_bytes` in
/// `time_to_limit`.
///
/// ```
/// use limited_allocator::leak::{LeakMetric, LeakSuspected};
/// use std::time::Duration;
/// let event = LeakSuspected {
///     metric: LeakMetric::Rss,
///     bytes_per_sec: 4096.0,
///     horizon: Duration::from_secs(7200),
///     confidence: 0.9995,
///     floor_bytes: 900 << 20,
///     current_bytes: 1 << 30,
///     limit_bytes: Some(2 << 30),
///     time_to_limit: Some(Duration::from_secs(262_144)),
/// };
/// assert_eq!(
///     event.to_string(),
///     "suspected leak: the floor of rss rises 4.0 KiB/s over the last 2 h 0 min \
///      (confidence 99.95%), now 1.0 GiB; the 2.0 GiB limit is reached in 72 h 49 min \
///      at this rate"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LeakSuspected {
    /// The series that grows.
    pub metric: LeakMetric,
    /// The Theil–Sen slope of the lower envelope over the horizon.
    pub bytes_per_sec: f64,
    /// The span the trend was tested over ([`LeakConfig::horizon`]).
    pub horizon: Duration,
    /// The Mann–Kendall one-sided confidence that the envelope rises, `1 - p`, 0.5 to 1.
    pub confidence: f64,
    /// The envelope's newest point: the floor the series comes back to now.
    pub floor_bytes: u64,
    /// The series' last value.
    pub current_bytes: u64,
    /// The limit the series counts against, when one is known.
    pub limit_bytes: Option<u64>,
    /// When the recent peak reaches `limit_bytes` at this slope (zero if it is there).
    pub time_to_limit: Option<Duration>,
}

impl fmt::Display for LeakSuspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |b: u64| crate::ByteSize(usize::try_from(b).unwrap_or(usize::MAX));
        let rate = crate::ByteSize(self.bytes_per_sec.max(0.0) as usize);
        write!(
            f,
            "suspected leak: the floor of {} rises {rate}/s over the last {} (confidence {:.2}%), now {}",
            self.metric,
            HumanDuration(self.horizon),
            self.confidence * 100.0,
            size(self.current_bytes),
        )?;
        if let (Some(limit), Some(eta)) = (self.limit_bytes, self.time_to_limit) {
            write!(
                f,
                "; the {} limit is reached in {} at this rate",
                size(limit),
                HumanDuration(eta)
            )?;
        }
        Ok(())
    }
}

/// Hours and minutes, or seconds below a minute.
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0..60 => write!(f, "{s} s"),
            60..3600 => write!(f, "{} min", s / 60),
            _ => write!(f, "{} h {} min", s / 3600, s % 3600 / 60),
        }
    }
}

/// The detector's latest verdict on the envelope (computed once per closed bucket).
///
/// ```
/// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
/// use std::time::Duration;
/// let config = LeakConfig::fast(Duration::from_secs(1));
/// let mut d = TrendDetector::new(LeakMetric::Rss, config)?;
/// for s in 0..=40u64 {
///     d.observe(Duration::from_secs(s), 1000 + 10_000 * s, None);
/// }
/// let trend = d.trend().unwrap();
/// assert!((trend.bytes_per_sec - 10_000.0).abs() < 1e-6);
/// assert!(trend.confidence > 0.999);
/// assert_eq!(trend.rising_segments, 4);
/// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Trend {
    /// The Theil–Sen slope of the envelope over the horizon, bytes per second.
    pub bytes_per_sec: f64,
    /// The Mann–Kendall one-sided confidence of a rise, `Φ(z)`.
    pub confidence: f64,
    /// The Mann–Kendall statistic, standardized (with tie and continuity corrections).
    pub z: f64,
    /// Kendall's tau of the envelope against time, -1 to 1.
    pub tau: f64,
    /// Segments (of [`LeakConfig::SEGMENTS`]) whose own slope is at least half the floor.
    pub rising_segments: usize,
    /// Whether the newest segment rises.
    pub newest_rising: bool,
    /// The Theil–Sen slope of the newer half of the horizon, bytes per second.
    pub recent_bytes_per_sec: f64,
    /// The envelope's newest point.
    pub floor_bytes: u64,
    /// Envelope points tested (buckets without samples are left out).
    pub points: usize,
}

/// How sure the detector must be before it suspects a leak, and over what time.
///
/// The defaults suit a long-running service sampled every second or so; see
/// `docs/monitoring.md` for the false-alarm and detection rates they give.
///
/// ```
/// use limited_allocator::leak::LeakConfig;
/// use std::time::Duration;
/// let config = LeakConfig::default();
/// assert_eq!(config.horizon, Duration::from_secs(2 * 3600));
/// assert_eq!(config.buckets(), 24);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LeakConfig {
    /// How far back the trend is tested (default 2 h). The first verdict comes after
    /// `horizon + envelope` of samples.
    pub horizon: Duration,
    /// The time a bucket covers (default 5 min); the horizon must hold 12 to 128 buckets.
    pub bucket: Duration,
    /// The lower envelope's window (default 30 min, rounded up to whole buckets): cycles
    /// shorter than this leave the floor flat. At most half the horizon.
    pub envelope: Duration,
    /// The smallest slope of the floor that counts (default 1 KiB/s, 3.5 MiB an hour).
    pub min_bytes_per_sec: f64,
    /// The Mann–Kendall confidence needed, in `(0.5, 1)` (default 0.99).
    pub min_confidence: f64,
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            horizon: Duration::from_secs(2 * 3600),
            bucket: Duration::from_secs(300),
            envelope: Duration::from_secs(1800),
            min_bytes_per_sec: 1024.0,
            min_confidence: 0.99,
        }
    }
}

impl LeakConfig {
    /// The fewest buckets a horizon may hold (3 points per segment).
    pub const MIN_BUCKETS: usize = 12;
    /// The most buckets a horizon may hold (8128 pairs per verdict).
    pub const MAX_BUCKETS: usize = 128;
    /// The segments the horizon is cut into for the persistence check: a leak must raise
    /// at least `SEGMENTS - 1` of them, the newest included.
    pub const SEGMENTS: usize = 4;

    /// The defaults scaled to `bucket`: a horizon of 24 buckets and an envelope of 6, so a
    /// test or a short batch job can run the same method in seconds. The slope floor stays
    /// at the default; set it for the scale of the job.
    ///
    /// ```
    /// use limited_allocator::leak::LeakConfig;
    /// use std::time::Duration;
    /// let c = LeakConfig::fast(Duration::from_millis(100));
    /// assert_eq!(c.horizon, Duration::from_millis(2400));
    /// assert_eq!(c.envelope, Duration::from_millis(600));
    /// ```
    pub fn fast(bucket: Duration) -> Self {
        Self {
            horizon: bucket * 24,
            bucket,
            envelope: bucket * 6,
            ..Self::default()
        }
    }

    /// Buckets in the horizon (rounded down), 0 when the bucket is zero.
    ///
    /// ```
    /// assert_eq!(limited_allocator::leak::LeakConfig::default().buckets(), 24);
    /// ```
    pub fn buckets(&self) -> usize {
        ratio(self.horizon, self.bucket, false)
    }

    /// Buckets in the envelope window (rounded up, at least 1).
    ///
    /// ```
    /// assert_eq!(limited_allocator::leak::LeakConfig::default().envelope_buckets(), 6);
    /// ```
    pub fn envelope_buckets(&self) -> usize {
        ratio(self.envelope, self.bucket, true).max(1)
    }

    /// Rejects a zero bucket, a horizon outside 12 to 128 buckets, an envelope longer than
    /// half the horizon, a slope floor that is not a positive number, and a confidence
    /// outside `(0.5, 1)`.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakConfigError};
    /// use std::time::Duration;
    /// let c = LeakConfig { bucket: Duration::from_secs(3600), ..LeakConfig::default() };
    /// assert_eq!(
    ///     c.validate(),
    ///     Err(LeakConfigError::Buckets { buckets: 2, horizon: c.horizon, bucket: c.bucket })
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), LeakConfigError> {
        if self.bucket.is_zero() {
            return Err(LeakConfigError::ZeroBucket);
        }
        let buckets = self.buckets();
        if !(Self::MIN_BUCKETS..=Self::MAX_BUCKETS).contains(&buckets) {
            return Err(LeakConfigError::Buckets {
                buckets,
                horizon: self.horizon,
                bucket: self.bucket,
            });
        }
        if self.envelope_buckets() > buckets / 2 {
            return Err(LeakConfigError::Envelope {
                envelope: self.envelope,
                horizon: self.horizon,
            });
        }
        if !(self.min_bytes_per_sec.is_finite() && self.min_bytes_per_sec > 0.0) {
            return Err(LeakConfigError::MinSlope {
                min_bytes_per_sec: self.min_bytes_per_sec,
            });
        }
        if !(self.min_confidence > 0.5 && self.min_confidence < 1.0) {
            return Err(LeakConfigError::Confidence {
                min_confidence: self.min_confidence,
            });
        }
        Ok(())
    }
}

/// `a / b` in whole buckets, saturating; 0 when `b` is zero.
fn ratio(a: Duration, b: Duration, round_up: bool) -> usize {
    let (a, b) = (a.as_nanos(), b.as_nanos());
    if b == 0 {
        return 0;
    }
    let q = if round_up { a.div_ceil(b) } else { a / b };
    usize::try_from(q).unwrap_or(usize::MAX)
}

/// A [`LeakConfig`] that cannot work.
///
/// ```
/// use limited_allocator::leak::{LeakConfig, LeakConfigError};
/// let c = LeakConfig { min_confidence: 1.5, ..LeakConfig::default() };
/// assert_eq!(
///     c.validate().unwrap_err().to_string(),
///     "invalid leak config: the confidence 1.5 is not within (0.5, 1)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LeakConfigError {
    /// [`LeakConfig::bucket`] is zero.
    #[error("invalid leak config: the bucket is 0 s long (it must be above zero)")]
    ZeroBucket,
    /// The horizon holds too few or too many buckets.
    #[error(
        "invalid leak config: the horizon of {horizon:?} holds {buckets} buckets of {bucket:?}; \
         it must hold 12 to 128"
    )]
    Buckets {
        /// Buckets in the horizon.
        buckets: usize,
        /// The horizon given.
        horizon: Duration,
        /// The bucket given.
        bucket: Duration,
    },
    /// The envelope window is longer than half the horizon.
    #[error(
        "invalid leak config: the envelope of {envelope:?} is longer than half the horizon \
         of {horizon:?}"
    )]
    Envelope {
        /// The envelope given.
        envelope: Duration,
        /// The horizon given.
        horizon: Duration,
    },
    /// The slope floor is not a positive number.
    #[error(
        "invalid leak config: the slope floor {min_bytes_per_sec} B/s is not a positive number"
    )]
    MinSlope {
        /// The floor given.
        min_bytes_per_sec: f64,
    },
    /// The confidence is not within `(0.5, 1)`.
    #[error("invalid leak config: the confidence {min_confidence} is not within (0.5, 1)")]
    Confidence {
        /// The confidence given.
        min_confidence: f64,
    },
}

/// The bucket samples are falling into now.
#[derive(Debug, Clone, Copy)]
struct OpenBucket {
    index: u128,
    min: u64,
    max: u64,
}

/// Leak detection for one series on its lower envelope (see the [module](self) docs):
/// constant memory and constant time per sample; a verdict per closed bucket; one
/// [`LeakSuspected`] per episode.
///
/// ```
/// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
/// use std::time::Duration;
///
/// // Seconds for buckets: the horizon is 24 s, the envelope 6 s.
/// let config = LeakConfig { min_bytes_per_sec: 1024.0, ..LeakConfig::fast(Duration::from_secs(1)) };
/// let mut detector = TrendDetector::new(LeakMetric::AllocatedBytes, config)?;
/// let mut events = Vec::new();
/// for tenth in 0..600u64 {
///     // A batch loop of 4 s (allocates 1 MiB a tenth, then frees it all) that keeps
///     // 8 KiB of every loop: the floor rises by 2 KiB/s.
///     let kept = (tenth / 40) * 8192;
///     let batch = (tenth % 40) << 20;
///     let at = Duration::from_millis(100 * tenth);
///     events.extend(detector.observe(at, kept + batch, Some(1 << 30)));
/// }
/// assert_eq!(events.len(), 1);
/// assert!((events[0].bytes_per_sec - 2048.0).abs() < 100.0, "{}", events[0]);
/// assert!(events[0].time_to_limit.is_some());
/// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TrendDetector {
    metric: LeakMetric,
    config: LeakConfig,
    /// Buckets in the horizon.
    k: usize,
    /// Buckets per envelope point.
    w: usize,
    /// The minima of the last `k + w - 1` closed buckets (a ring; `None`: no samples).
    mins: Box<[Option<u64>]>,
    /// The next slot of `mins` to write.
    head: usize,
    /// Closed buckets in `mins` since the start or the last reset, up to its length.
    filled: usize,
    open: Option<OpenBucket>,
    /// The maximum of the newest closed bucket (the recent peak, for the time to limit).
    last_max: u64,
    last_at: Option<Duration>,
    /// Scratch for the envelope (x in buckets, y in bytes) and the pairwise slopes.
    envelope: Vec<(f64, f64)>,
    slopes: Vec<f64>,
    trend: Option<Trend>,
    /// Per segment of the last verdict, oldest first: whether it rises.
    rising: [bool; SEGMENTS],
    raised: bool,
}

impl TrendDetector {
    /// An empty detector for `metric`; fails on a bad `config`.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default())?;
    /// assert!(d.trend().is_none());
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn new(metric: LeakMetric, config: LeakConfig) -> Result<Self, LeakConfigError> {
        config.validate()?;
        let (k, w) = (config.buckets(), config.envelope_buckets());
        Ok(Self {
            metric,
            config,
            k,
            w,
            mins: vec![None; k + w - 1].into_boxed_slice(),
            head: 0,
            filled: 0,
            open: None,
            last_max: 0,
            last_at: None,
            envelope: Vec::with_capacity(k),
            slopes: Vec::with_capacity(k * (k - 1) / 2),
            trend: None,
            rising: [false; SEGMENTS],
            raised: false,
        })
    }

    /// The configuration.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default())?;
    /// assert_eq!(d.config().buckets(), 24);
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn config(&self) -> &LeakConfig {
        &self.config
    }

    /// Adds a sample taken at `at` (any monotonic clock: time since start, or a recorded
    /// timestamp) against `limit` (the bytes the series may reach, if known), and returns
    /// an event when this sample closes a bucket that makes a leak suspected for the first
    /// time in an episode. A sample older than the newest one is ignored; a gap without
    /// samples longer than the whole history starts the history afresh.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// use std::time::Duration;
    /// let mut d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default())?;
    /// assert!(d.observe(Duration::from_secs(1), 100, None).is_none());
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn observe(
        &mut self,
        at: Duration,
        value: u64,
        limit: Option<u64>,
    ) -> Option<LeakSuspected> {
        if self.last_at.is_some_and(|last| at < last) {
            return None;
        }
        self.last_at = Some(at);
        let index = at.as_nanos() / self.config.bucket.as_nanos();
        let mut event = None;
        match &mut self.open {
            Some(b) if b.index == index => {
                b.min = b.min.min(value);
                b.max = b.max.max(value);
            }
            open => {
                if let Some(closed) = open.replace(OpenBucket {
                    index,
                    min: value,
                    max: value,
                }) {
                    self.close(closed, index);
                    event = self.judge(value, limit);
                }
            }
        }
        event
    }

    /// Whether a leak is suspected now (raised and not yet re-armed).
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default())?;
    /// assert!(!d.is_suspected());
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn is_suspected(&self) -> bool {
        self.raised
    }

    /// The latest verdict, once the history covers the horizon and its envelope.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// use std::time::Duration;
    /// let mut d = TrendDetector::new(LeakMetric::Rss, LeakConfig::fast(Duration::from_secs(1)))?;
    /// for s in 0..=40u64 {
    ///     d.observe(Duration::from_secs(s), 5 << 20, None);
    /// }
    /// let flat = d.trend().unwrap();
    /// assert_eq!((flat.bytes_per_sec, flat.z, flat.rising_segments), (0.0, 0.0, 0));
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn trend(&self) -> Option<Trend> {
        self.trend
    }

    /// The envelope points of the last verdict as (seconds, bytes), oldest first; `x` is
    /// the end of each point's window. For plots and diagnostics.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default())?;
    /// assert!(d.envelope().is_empty());
    /// # Ok::<(), limited_allocator::leak::LeakConfigError>(())
    /// ```
    pub fn envelope(&self) -> Vec<(f64, u64)> {
        let Some(open) = self.open.filter(|_| self.trend.is_some()) else {
            return Vec::new();
        };
        let bucket = self.config.bucket.as_secs_f64();
        // Point x (in buckets, 0..k) ends at the newest closed bucket for x = k - 1.
        let newest_end = open.index as f64;
        self.envelope
            .iter()
            .map(|&(x, y)| ((newest_end - (self.k as f64 - 1.0 - x)) * bucket, y as u64))
            .collect()
    }

    /// Records `closed` and the empty buckets between it and `next`.
    fn close(&mut self, closed: OpenBucket, next: u128) {
        let gap = next - closed.index - 1;
        if gap >= self.mins.len() as u128 {
            // No samples for longer than the history: what came before says nothing now.
            self.filled = 0;
            self.trend = None;
            self.raised = false;
            self.push(Some(closed.min));
            return;
        }
        self.push(Some(closed.min));
        for _ in 0..gap {
            self.push(None);
        }
        self.last_max = closed.max;
    }

    fn push(&mut self, min: Option<u64>) {
        self.mins[self.head] = min;
        self.head = (self.head + 1) % self.mins.len();
        self.filled = (self.filled + 1).min(self.mins.len());
    }

    /// Computes the verdict on the closed buckets and raises or re-arms.
    fn judge(&mut self, value: u64, limit: Option<u64>) -> Option<LeakSuspected> {
        if self.filled < self.mins.len() {
            return None;
        }
        self.fill_envelope();
        // Most of the horizon must have samples: a verdict on a few points means little.
        if self.envelope.len() * 10 < self.k * 9 {
            self.trend = None;
            return None;
        }
        let trend = self.compute();
        self.trend = Some(trend);
        let floor = self.config.min_bytes_per_sec;
        let suspected = trend.confidence >= self.config.min_confidence
            && trend.bytes_per_sec >= floor
            && trend.rising_segments >= SEGMENTS - 1
            && trend.newest_rising
            && trend.recent_bytes_per_sec >= trend.bytes_per_sec / 2.0;
        if self.raised {
            if self.stopped() {
                self.raised = false;
            }
            return None;
        }
        if !suspected {
            return None;
        }
        self.raised = true;
        Some(LeakSuspected {
            metric: self.metric,
            bytes_per_sec: trend.bytes_per_sec,
            horizon: self.config.horizon,
            confidence: trend.confidence,
            floor_bytes: trend.floor_bytes,
            current_bytes: value,
            limit_bytes: limit,
            time_to_limit: limit.map(|l| self.time_to(l, value, trend.bytes_per_sec)),
        })
    }

    /// The time until the recent peak (the cycle's top rides on the rising floor) reaches
    /// `limit` at `slope`.
    fn time_to(&self, limit: u64, value: u64, slope: f64) -> Duration {
        let peak = self.last_max.max(value);
        let left = limit.saturating_sub(peak) as f64;
        Duration::try_from_secs_f64(left / slope).unwrap_or(Duration::MAX)
    }

    /// Whether the growth stopped: the newer half of the horizon rises at less than a
    /// quarter of the floor. A half, not a segment: memory that grows in steps (RSS, as the
    /// heap is extended) has flat segments within one episode.
    fn stopped(&self) -> bool {
        self.trend
            .is_some_and(|t| t.recent_bytes_per_sec < self.config.min_bytes_per_sec / 4.0)
    }

    /// The envelope of the ring: point `i` is the minimum of buckets `i..i + w` (oldest
    /// first), left out when they hold no samples.
    fn fill_envelope(&mut self) {
        self.envelope.clear();
        let len = self.mins.len();
        // With a full ring, `head` is the oldest bucket.
        let at = |j: usize| self.mins[(self.head + j) % len];
        for i in 0..self.k {
            let floor = (i..i + self.w).filter_map(at).min();
            if let Some(y) = floor {
                self.envelope.push((i as f64, y as f64));
            }
        }
    }

    fn compute(&mut self) -> Trend {
        let bucket = self.config.bucket.as_secs_f64();
        let pts = &self.envelope;
        let slope = theil_sen(pts, &mut self.slopes).unwrap_or(0.0) / bucket;
        let (s, var) = mann_kendall(pts);
        let z = if var > 0.0 {
            (s - s.signum()) / var.sqrt()
        } else {
            0.0
        };
        let n = pts.len() as f64;
        // A segment rises at half the floor, and at a quarter of the horizon's slope: the
        // tail of a warm-up that levels off rises, but ever slower.
        let half = (self.config.min_bytes_per_sec / 2.0).max(slope / 4.0);
        let recent = theil_sen(&pts[pts.len() / 2..], &mut self.slopes).unwrap_or(0.0) / bucket;
        for seg in 0..SEGMENTS {
            let (from, to) = segment_bounds(pts.len(), seg);
            self.rising[seg] =
                theil_sen(&pts[from..to], &mut self.slopes).is_some_and(|s| s / bucket >= half);
        }
        Trend {
            bytes_per_sec: slope,
            confidence: normal_cdf(z),
            z,
            tau: if n > 1.0 {
                s / (n * (n - 1.0) / 2.0)
            } else {
                0.0
            },
            rising_segments: self.rising.iter().filter(|&&r| r).count(),
            newest_rising: self.rising[SEGMENTS - 1],
            recent_bytes_per_sec: recent,
            floor_bytes: pts.last().map_or(0, |p| p.1 as u64),
            points: pts.len(),
        }
    }
}

/// The index range of segment `seg` of `SEGMENTS` over `n` points.
fn segment_bounds(n: usize, seg: usize) -> (usize, usize) {
    (n * seg / SEGMENTS, n * (seg + 1) / SEGMENTS)
}

/// The median of the pairwise slopes (Sen 1968) of points with distinct x; `scratch` holds
/// them (its capacity is reserved up front, so this does not allocate).
fn theil_sen(pts: &[(f64, f64)], scratch: &mut Vec<f64>) -> Option<f64> {
    scratch.clear();
    for (i, &(xi, yi)) in pts.iter().enumerate() {
        for &(xj, yj) in &pts[i + 1..] {
            if xj != xi {
                scratch.push((yj - yi) / (xj - xi));
            }
        }
    }
    let m = scratch.len();
    if m == 0 {
        return None;
    }
    let (_, &mut upper, _) = scratch.select_nth_unstable_by(m / 2, f64::total_cmp);
    if m % 2 == 1 {
        return Some(upper);
    }
    let lower = scratch[..m / 2].iter().copied().fold(f64::MIN, f64::max);
    Some((lower + upper) / 2.0)
}

/// The Mann–Kendall statistic S (pairs rising minus pairs falling, in time order) and its
/// variance under no trend, corrected for ties (Kendall 1975):
/// `(n(n-1)(2n+5) - Σ t(t-1)(2t+5)) / 18` over groups of `t` equal values.
fn mann_kendall(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len();
    let mut s = 0i64;
    let mut ties = 0.0;
    for (i, &(_, yi)) in pts.iter().enumerate() {
        let mut equal = 0usize; // equal values, this one included
        for (j, &(_, yj)) in pts.iter().enumerate() {
            if yj == yi {
                equal += 1;
            } else if j > i {
                s += if yj > yi { 1 } else { -1 };
            }
        }
        // Each member of a group of t adds (t-1)(2t+5), so the group adds t(t-1)(2t+5).
        let t = equal as f64;
        ties += (t - 1.0) * (2.0 * t + 5.0);
    }
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    (s as f64, var)
}

/// The standard normal distribution function, via `erfc` (Numerical Recipes' `erfcc`,
/// fractional error below 1.2e-7).
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / core::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One-second buckets: horizon 24 s, envelope 6 s; 1 KiB/s floor.
    fn config() -> LeakConfig {
        LeakConfig {
            min_bytes_per_sec: 1024.0,
            ..LeakConfig::fast(Duration::from_secs(1))
        }
    }

    /// Feeds `values` at 100 ms steps and returns the events.
    fn run(values: impl IntoIterator<Item = u64>) -> (TrendDetector, Vec<LeakSuspected>) {
        let mut d = TrendDetector::new(LeakMetric::AllocatedBytes, config()).unwrap();
        let events = values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| d.observe(Duration::from_millis(100 * i as u64), v, None))
            .collect();
        (d, events)
    }

    #[test]
    fn statistics_match_hand_computed_values() {
        let pts: Vec<(f64, f64)> = [1.0, 3.0, 2.0, 5.0, 4.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        let mut scratch = Vec::new();
        // Slopes sorted: -1 -1 .33 .5 .75 1 1 1.33 2 3: the median of 10 is (.75 + 1) / 2.
        assert_eq!(theil_sen(&pts, &mut scratch), Some(0.875));
        // S = 8 rising - 2 falling; var = 5*4*15/18.
        assert_eq!(mann_kendall(&pts), (6.0, 5.0 * 4.0 * 15.0 / 18.0));
        // Ties: [1, 1, 2] has S = 2, var = (3*2*11 - 2*1*9)/18.
        let tied = [(0.0, 1.0), (1.0, 1.0), (2.0, 2.0)];
        assert_eq!(mann_kendall(&tied), (2.0, (66.0 - 18.0) / 18.0));
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-2.326_348) - 0.01).abs() < 1e-6);
    }

    #[test]
    fn linear_growth_is_reported_once_with_its_slope_and_time_to_limit() {
        let mut d = TrendDetector::new(LeakMetric::Rss, config()).unwrap();
        let mut events = Vec::new();
        for i in 0..600u64 {
            let v = 100 * MIB + i * 1024; // 10 KiB/s
            events.extend(d.observe(Duration::from_millis(100 * i), v, Some(200 * MIB)));
        }
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!(e.metric, LeakMetric::Rss);
        assert!((e.bytes_per_sec - 10240.0).abs() < 1e-6, "{e:?}");
        assert_eq!(e.horizon, Duration::from_secs(24));
        assert!(e.confidence > 0.9999, "{e:?}");
        // First verdict: 24 + 6 - 1 buckets closed, at the sample that opens bucket 29.
        assert_eq!(e.current_bytes, 100 * MIB + 290 * 1024);
        let eta = e.time_to_limit.unwrap().as_secs_f64();
        let expected = (100 * MIB - 290 * 1024) as f64 / 10240.0;
        assert!((eta - expected).abs() < 1.0, "{eta} vs {expected}");
        assert!(d.is_suspected());
        assert_eq!(d.envelope().len(), 24);
    }

    #[test]
    fn sawtooth_warm_up_and_step_are_not_leaks() {
        // A batch loop of 3 s that frees everything.
        let (_, events) = run((0..900).map(|i| 100 * MIB + (i % 30) * 2 * MIB));
        assert!(events.is_empty());
        // A warm-up of 10 s, then flat.
        let (_, events) = run((0..900).map(|i| 100 * MIB + i.min(100) * MIB));
        assert!(events.is_empty());
        // A load step up in the middle.
        let (d, events) = run((0..900).map(|i| if i < 450 { 100 * MIB } else { 300 * MIB }));
        assert!(events.is_empty());
        assert!(d.trend().unwrap().rising_segments <= 1, "{:?}", d.trend());
    }

    #[test]
    fn leak_under_a_sawtooth_is_found() {
        // The loop keeps 2 KiB of every 3-second cycle of 60 MiB: R² would be ~0.
        let (_, events) =
            run((0..900).map(|i| 100 * MIB + (i / 30) * 6 * 1024 + (i % 30) * 2 * MIB));
        assert_eq!(events.len(), 1);
        assert!(
            (events[0].bytes_per_sec - 2048.0).abs() < 50.0,
            "{}",
            events[0]
        );
    }

    #[test]
    fn slow_growth_below_the_floor_is_ignored() {
        // 500 B/s: a perfect line, below the 1 KiB/s floor.
        let (d, events) = run((0..900).map(|i| MIB + i * 50));
        assert!(events.is_empty());
        assert!(d.trend().unwrap().confidence > 0.999);
    }

    #[test]
    fn re_arms_after_the_growth_stops() {
        let growth = (0..400).map(|i| i * 1024); // 10 KiB/s for 40 s
        let plateau = std::iter::repeat_n(400 * 1024, 400);
        let again = (0..400).map(|i| (400 + i) * 1024);
        let (_, events) = run(growth.chain(plateau).chain(again));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn memory_stays_what_was_reserved_at_construction() {
        let c = LeakConfig::default();
        let mut d = TrendDetector::new(LeakMetric::Rss, c).unwrap();
        let (ring, env, pairs) = (d.mins.len(), d.envelope.capacity(), d.slopes.capacity());
        assert_eq!((ring, pairs), (24 + 6 - 1, 24 * 23 / 2));
        // Ten hours at 10 samples a second, with a gap now and then.
        for i in 0..360_000u64 {
            let at = Duration::from_millis(100 * i + (i / 50_000) * 600_000);
            d.observe(at, (i % 977) << 12, None);
        }
        assert!(d.trend().is_some());
        assert_eq!(
            (d.mins.len(), d.envelope.capacity(), d.slopes.capacity()),
            (ring, env, pairs)
        );
    }

    #[test]
    fn a_long_gap_starts_the_history_afresh() {
        let mut d = TrendDetector::new(LeakMetric::Rss, config()).unwrap();
        for s in 0..40u64 {
            d.observe(Duration::from_secs(s), s * MIB, None);
        }
        assert!(d.is_suspected());
        d.observe(Duration::from_secs(1000), 0, None);
        assert!(!d.is_suspected());
        assert!(d.trend().is_none());
    }

    #[test]
    fn bad_configs_are_refused_with_their_numbers() {
        let c = LeakConfig {
            bucket: Duration::ZERO,
            ..config()
        };
        assert_eq!(c.validate(), Err(LeakConfigError::ZeroBucket));
        let c = LeakConfig {
            envelope: Duration::from_secs(13),
            ..config()
        };
        assert_eq!(
            TrendDetector::new(LeakMetric::Rss, c).err(),
            Some(LeakConfigError::Envelope {
                envelope: Duration::from_secs(13),
                horizon: Duration::from_secs(24)
            })
        );
        let c = LeakConfig {
            min_bytes_per_sec: f64::NAN,
            ..config()
        };
        assert!(c.validate().unwrap_err().to_string().contains("NaN B/s"));
        let c = LeakConfig {
            horizon: Duration::from_secs(200),
            ..config()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("200 buckets"));
    }

    #[test]
    fn out_of_order_and_degenerate_samples_do_not_panic() {
        let mut d = TrendDetector::new(LeakMetric::Rss, config()).unwrap();
        d.observe(Duration::from_secs(5), u64::MAX, Some(0));
        d.observe(Duration::from_secs(5), 0, None);
        assert!(d.observe(Duration::from_secs(1), 7, None).is_none());
        for s in 6..60 {
            d.observe(Duration::from_secs(s), u64::MAX - s, Some(1));
        }
        d.observe(Duration::MAX, u64::MAX, Some(u64::MAX));
        let _ = d.trend();
    }
}
