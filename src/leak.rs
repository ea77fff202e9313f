//! Leak trends: a sustained upward slope of a memory series over a sliding window.
//!
//! A [`TrendDetector`] keeps the samples of one series (allocated bytes, or RSS) from the
//! last `window` and fits a least-squares line through them. It suspects a leak when all
//! of these hold:
//!
//! - the samples span most of the window (at least 80 %) and number at least
//!   [`LeakConfig::min_samples`], so one burst at start-up is not a trend;
//! - the slope is at least [`LeakConfig::min_bytes_per_sec`];
//! - the line explains the data: R² (coefficient of determination) is at least
//!   [`LeakConfig::min_r_squared`] (0.8 by default). A sawtooth (a cache that fills and is
//!   flushed) or noise around a plateau fits a line badly and is not reported.
//!
//! Once raised, a suspicion for a series is not raised again until the condition has
//! stopped holding, so listeners get one event per episode, not one per sample.

use core::fmt;
use std::collections::VecDeque;
use std::time::Duration;

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

/// A suspected leak: `metric` grew by `bytes_per_sec` on average over `window`, and a
/// straight line fits that growth with `r_squared`.
///
/// ```
/// use limited_allocator::leak::{LeakMetric, LeakSuspected};
/// use std::time::Duration;
/// let event = LeakSuspected {
///     metric: LeakMetric::Rss,
///     bytes_per_sec: 1048576.0,
///     window: Duration::from_secs(600),
///     r_squared: 0.99,
///     current_bytes: 1 << 30,
/// };
/// assert_eq!(
///     event.to_string(),
///     "suspected leak: rss grows 1.0 MiB/s over the last 600 s (R² 0.99), now 1.0 GiB"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LeakSuspected {
    /// The series that grows.
    pub metric: LeakMetric,
    /// The fitted slope.
    pub bytes_per_sec: f64,
    /// The span of the samples the line was fitted to.
    pub window: Duration,
    /// How well the line fits, 0 to 1.
    pub r_squared: f64,
    /// The series' last value.
    pub current_bytes: u64,
}

impl fmt::Display for LeakSuspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = crate::ByteSize(self.bytes_per_sec.max(0.0) as usize);
        write!(
            f,
            "suspected leak: {} grows {rate}/s over the last {} s (R² {:.2}), now {}",
            self.metric,
            self.window.as_secs(),
            self.r_squared,
            crate::ByteSize(usize::try_from(self.current_bytes).unwrap_or(usize::MAX)),
        )
    }
}

/// The least-squares fit of a window of samples.
///
/// ```
/// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
/// use std::time::Duration;
/// let mut d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
/// for i in 0..10u64 {
///     d.observe(Duration::from_secs(i), 1000 + 10 * i);
/// }
/// let fit = d.fit().unwrap();
/// assert!((fit.bytes_per_sec - 10.0).abs() < 1e-9);
/// assert!(fit.r_squared > 0.999);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// The slope in bytes per second.
    pub bytes_per_sec: f64,
    /// The coefficient of determination; 0 when the series is flat.
    pub r_squared: f64,
    /// The number of samples in the window.
    pub samples: usize,
    /// The time from the oldest to the newest sample.
    pub span: Duration,
}

/// How sure the detector must be before it suspects a leak.
///
/// ```
/// use limited_allocator::leak::LeakConfig;
/// use std::time::Duration;
/// let config = LeakConfig {
///     window: Duration::from_secs(300),
///     min_bytes_per_sec: 64.0 * 1024.0,
///     ..LeakConfig::default()
/// };
/// assert_eq!(config.min_r_squared, 0.8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakConfig {
    /// How far back the fit looks (default 10 minutes).
    pub window: Duration,
    /// The fit-quality floor, 0 to 1 (default 0.8).
    pub min_r_squared: f64,
    /// The smallest slope that counts (default 1 KiB/s: 3.5 MiB an hour).
    pub min_bytes_per_sec: f64,
    /// The fewest samples a fit needs (default 10).
    pub min_samples: usize,
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            min_r_squared: 0.8,
            min_bytes_per_sec: 1024.0,
            min_samples: 10,
        }
    }
}

/// Sliding-window trend detection for one series: a least-squares line through the last
/// `window` of samples; a leak is suspected when the samples cover at least 80 % of the
/// window, number at least `min_samples`, rise at least `min_bytes_per_sec`, and fit with
/// R² of at least `min_r_squared`. Raised once per episode, re-armed when it stops holding.
///
/// ```
/// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
/// use std::time::Duration;
///
/// let config = LeakConfig { window: Duration::from_secs(60), ..LeakConfig::default() };
/// let mut detector = TrendDetector::new(LeakMetric::AllocatedBytes, config);
/// let mut events = Vec::new();
/// for second in 0..=60u64 {
///     // 1 MiB more every second.
///     if let Some(e) = detector.observe(Duration::from_secs(second), second << 20) {
///         events.push(e);
///     }
/// }
/// assert_eq!(events.len(), 1);
/// assert!((events[0].bytes_per_sec - 1048576.0).abs() < 1.0);
/// ```
#[derive(Debug, Clone)]
pub struct TrendDetector {
    metric: LeakMetric,
    config: LeakConfig,
    points: VecDeque<(Duration, u64)>,
    raised: bool,
}

impl TrendDetector {
    /// An empty detector for `metric`.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
    /// assert!(d.fit().is_none());
    /// ```
    pub fn new(metric: LeakMetric, config: LeakConfig) -> Self {
        Self {
            metric,
            config,
            points: VecDeque::new(),
            raised: false,
        }
    }

    /// The configuration.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
    /// assert_eq!(d.config().min_samples, 10);
    /// ```
    pub fn config(&self) -> &LeakConfig {
        &self.config
    }

    /// Adds a sample taken at `at` (any monotonic clock, e.g. time since start) and returns
    /// an event when this sample makes a leak suspected for the first time in an episode.
    /// Samples older than the window are dropped; a sample older than the newest one is
    /// ignored.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// use std::time::Duration;
    /// let mut d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
    /// assert!(d.observe(Duration::from_secs(1), 100).is_none());
    /// ```
    pub fn observe(&mut self, at: Duration, value: u64) -> Option<LeakSuspected> {
        if let Some(&(last, _)) = self.points.back() {
            if at < last {
                return None;
            }
        }
        self.points.push_back((at, value));
        while let Some(&(first, _)) = self.points.front() {
            if at.saturating_sub(first) > self.config.window {
                self.points.pop_front();
            } else {
                break;
            }
        }
        let suspected = self.suspected();
        match (suspected, self.raised) {
            (Some(fit), false) => {
                self.raised = true;
                Some(LeakSuspected {
                    metric: self.metric,
                    bytes_per_sec: fit.bytes_per_sec,
                    window: fit.span,
                    r_squared: fit.r_squared,
                    current_bytes: value,
                })
            }
            (None, true) => {
                self.raised = false;
                None
            }
            _ => None,
        }
    }

    /// Whether a leak is suspected now (the state after the last [`observe`](Self::observe)).
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// let d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
    /// assert!(!d.is_suspected());
    /// ```
    pub fn is_suspected(&self) -> bool {
        self.raised
    }

    /// The least-squares fit of the samples in the window, when there are at least two at
    /// distinct times.
    ///
    /// ```
    /// use limited_allocator::leak::{LeakConfig, LeakMetric, TrendDetector};
    /// use std::time::Duration;
    /// let mut d = TrendDetector::new(LeakMetric::Rss, LeakConfig::default());
    /// d.observe(Duration::from_secs(0), 5);
    /// d.observe(Duration::from_secs(1), 5);
    /// let fit = d.fit().unwrap();
    /// assert_eq!((fit.bytes_per_sec, fit.r_squared), (0.0, 0.0));
    /// ```
    pub fn fit(&self) -> Option<Trend> {
        let n = self.points.len();
        if n < 2 {
            return None;
        }
        let (t0, _) = self.points[0];
        let (t_last, _) = self.points[n - 1];
        let nf = n as f64;
        let xs = || self.points.iter().map(|&(t, _)| (t - t0).as_secs_f64());
        let ys = || self.points.iter().map(|&(_, v)| v as f64);
        let mean_x = xs().sum::<f64>() / nf;
        let mean_y = ys().sum::<f64>() / nf;
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        for (x, y) in xs().zip(ys()) {
            let (dx, dy) = (x - mean_x, y - mean_y);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
        if sxx <= 0.0 {
            return None;
        }
        let slope = sxy / sxx;
        let r_squared = if syy > 0.0 {
            ((sxy * sxy) / (sxx * syy)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(Trend {
            bytes_per_sec: slope,
            r_squared,
            samples: n,
            span: t_last - t0,
        })
    }

    fn suspected(&self) -> Option<Trend> {
        let fit = self.fit()?;
        let covers = fit.span.as_secs_f64() >= self.config.window.as_secs_f64() * 0.8;
        let ok = covers
            && fit.samples >= self.config.min_samples.max(2)
            && fit.bytes_per_sec >= self.config.min_bytes_per_sec
            && fit.bytes_per_sec > 0.0
            && fit.r_squared >= self.config.min_r_squared;
        ok.then_some(fit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn config() -> LeakConfig {
        LeakConfig {
            window: Duration::from_secs(100),
            ..LeakConfig::default()
        }
    }

    /// Feeds `values` at one-second steps and returns the events.
    fn run(values: impl IntoIterator<Item = u64>) -> (TrendDetector, Vec<LeakSuspected>) {
        let mut d = TrendDetector::new(LeakMetric::AllocatedBytes, config());
        let events = values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| d.observe(Duration::from_secs(i as u64), v))
            .collect();
        (d, events)
    }

    /// A deterministic pseudo-random sequence in [-1, 1) (xorshift).
    fn noise(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_growth_is_reported_once_with_its_slope() {
        let (d, events) = run((0..300).map(|i| 100 * MIB + i * 64 * 1024));
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!(e.metric, LeakMetric::AllocatedBytes);
        assert!(
            (e.bytes_per_sec - 65536.0).abs() < 1e-6,
            "{}",
            e.bytes_per_sec
        );
        assert!(e.r_squared > 0.999);
        assert!(e.window >= Duration::from_secs(80) && e.window <= Duration::from_secs(100));
        assert!(d.is_suspected());
    }

    #[test]
    fn not_before_the_window_is_mostly_covered() {
        let (_, events) = run((0..75).map(|i| i * MIB));
        assert!(events.is_empty());
        let (_, events) = run((0..81).map(|i| i * MIB));
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn sawtooth_is_not_a_leak() {
        // A cache that fills for 20 s and is flushed, for 5 minutes.
        let (d, events) = run((0..300).map(|i| 100 * MIB + (i % 20) * 5 * MIB));
        assert!(events.is_empty());
        let fit = d.fit().unwrap();
        assert!(fit.r_squared < 0.8, "{fit:?}");
    }

    #[test]
    fn plateau_and_noise_around_it_are_not_a_leak() {
        let (d, events) = run(std::iter::repeat_n(500 * MIB, 300));
        assert!(events.is_empty());
        assert_eq!(d.fit().unwrap().bytes_per_sec, 0.0);

        let wobble = noise(300);
        let (_, events) = run(wobble
            .iter()
            .map(|n| (500.0 * MIB as f64 + n * 50.0 * MIB as f64) as u64));
        assert!(events.is_empty());
    }

    #[test]
    fn noisy_linear_growth_is_still_a_leak() {
        let wobble = noise(300);
        let (_, events) = run(wobble
            .iter()
            .enumerate()
            .map(|(i, n)| ((100 + i) as f64 * MIB as f64 + n * 4.0 * MIB as f64) as u64));
        assert_eq!(events.len(), 1);
        assert!((events[0].bytes_per_sec / MIB as f64 - 1.0).abs() < 0.1);
    }

    #[test]
    fn slow_growth_below_the_floor_is_ignored() {
        // 100 bytes a second: a perfect line, but below the 1 KiB/s floor.
        let (_, events) = run((0..300).map(|i| MIB + i * 100));
        assert!(events.is_empty());
    }

    #[test]
    fn re_arms_after_the_growth_stops() {
        let growth = (0..150).map(|i| i * MIB);
        let plateau = std::iter::repeat_n(150 * MIB, 150);
        let again = (0..150).map(|i| (150 + i) * MIB);
        let (_, events) = run(growth.chain(plateau).chain(again));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn out_of_order_and_degenerate_samples_do_not_panic() {
        let mut d = TrendDetector::new(LeakMetric::Rss, config());
        assert!(d.fit().is_none());
        d.observe(Duration::from_secs(5), u64::MAX);
        d.observe(Duration::from_secs(5), 0);
        assert!(d.fit().is_none()); // two points at one time: no slope
        assert!(d.observe(Duration::from_secs(1), 7).is_none());
        d.observe(Duration::MAX, u64::MAX);
        let _ = d.fit();
    }

    /// A real leak: the test allocates and holds memory, touching every page, and feeds the
    /// process's real RSS (read by the sampler) to the detector at synthetic one-second
    /// steps. Only behaviour is asserted: the growth is found and its rate is about right.
    #[cfg(target_os = "linux")]
    #[test]
    fn real_leak_in_this_process_is_found() {
        let sampler = crate::sampler::Sampler::new();
        let config = LeakConfig {
            window: Duration::from_secs(30),
            min_bytes_per_sec: 256.0 * 1024.0,
            ..LeakConfig::default()
        };
        let mut d = TrendDetector::new(LeakMetric::Rss, config);
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut events = Vec::new();
        for second in 0..40u64 {
            let mut block = vec![0u8; 2 << 20];
            for page in block.chunks_mut(4096) {
                page[0] = 1;
            }
            held.push(block);
            let s = sampler.sample_fresh();
            let rss = s.rss_anon_bytes.or(s.rss_bytes).unwrap();
            events.extend(d.observe(Duration::from_secs(second), rss));
        }
        assert_eq!(events.len(), 1, "{:?}", d.fit());
        // 2 MiB a step; other tests in this process allocate too, so allow slack.
        let rate = events[0].bytes_per_sec / (2 << 20) as f64;
        assert!(rate > 0.5 && rate < 3.0, "{rate}");
        assert_eq!(held.len(), 40);
    }
}
