//! Every number at once: a [`Snapshot`] of the allocator, the sampler and the monitor,
//! `serde`-serializable (feature `serde`), and a Prometheus collector for the
//! `prometheus-client` crate (feature `prometheus`).
//!
//! Metric names (all prefixed `limited_allocator_`; a number that could not be read is
//! left out of the exposition, never reported as 0):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `allocated_bytes`, `peak_allocated_bytes`, `limit_bytes`, `reserved_bytes`, `pool_claimed_bytes` | gauge | |
//! | `datafusion_reserved_bytes`, `datafusion_unreserved_bytes`, `datafusion_rss_unreserved_bytes` (a `DataFusionPool` as the source) | gauge | |
//! | `allocations_total`, `deallocations_total`, `reallocations_total`, `refusals_total`, `refused_bytes_total`, `inner_failures_total` | counter | |
//! | `overdraft_limit_bytes`, `overdraft_peak_bytes` | gauge | |
//! | `overdraft_grants_total`, `overdraft_bytes_total` | counter | |
//! | `process_rss_bytes`, `process_rss_anon_bytes`, `process_peak_rss_bytes`, `process_limit_bytes` | gauge | |
//! | `system_memory_total_bytes`, `system_memory_available_bytes` | gauge | |
//! | `cgroup_limit_bytes`, `cgroup_high_bytes`, `cgroup_usage_bytes`, `cgroup_working_set_bytes` | gauge | |
//! | `cgroup_oom_kills_total` | counter | |
//! | `psi_memory_ratio` | gauge | `kind` (some, full), `window` (10s, 60s) |
//! | `pressure_level` | gauge (0 low .. 3 critical) | |
//! | `signal_level` | gauge (0 .. 3) | `signal` |
//! | `level_samples_total`, `level_seconds_total` | counter | `level` |
//! | `level_transitions_total`, `monitor_samples_total`, `listener_panics_total`, `leaks_suspected_total` | counter | |
//! | `request_peak_bytes` (with `PrometheusCollector::with_requests`) | histogram | `le` |
//! | `requests_shed_total` | counter | `reason` (allocator_level, monitor_level, reservation) |
//! | `request_refusals_total` | counter | |

use crate::monitor::{MonitorHandle, Reason, Signal, StageStats};
use crate::sampler::MemorySample;
use crate::PressureLevel;

pub use crate::requests::{RequestSnapshot, RequestStats, ShedReason, PEAK_BUCKETS};

/// The allocator's numbers in a [`Snapshot`]. Counters the source does not report are
/// `None` (a plain [`BudgetSource`](crate::monitor::BudgetSource) reports only the first three).
///
/// ```no_run
/// # let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// if let Some(a) = monitor.snapshot().allocator {
///     println!("{} of {:?} bytes", a.allocated_bytes, a.limit_bytes);
/// }
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct AllocatorSnapshot {
    /// Bytes charged now.
    pub allocated_bytes: u64,
    /// The highest charge seen.
    pub peak_bytes: u64,
    /// The limit; `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Successful allocations.
    pub allocations: Option<u64>,
    /// Deallocations.
    pub deallocations: Option<u64>,
    /// Reallocations.
    pub reallocations: Option<u64>,
    /// Allocations refused at the limit.
    pub refusals: Option<u64>,
    /// Bytes asked for by refused allocations.
    pub refused_bytes: Option<u64>,
    /// The largest single refused request.
    pub largest_refusal_bytes: Option<u64>,
    /// Failures of the inner allocator.
    pub inner_failures: Option<u64>,
    /// Headroom held by reservations.
    pub reserved_bytes: Option<u64>,
    /// Bytes claimed through the Arrow pool.
    pub pool_claimed_bytes: Option<u64>,
    /// The emergency overdraft a panicking thread may take past the limit.
    pub overdraft_limit_bytes: Option<u64>,
    /// Requests of panicking threads served past the limit.
    pub overdraft_grants: Option<u64>,
    /// Bytes those requests took.
    pub overdraft_bytes: Option<u64>,
    /// The highest charge above the limit the overdraft reached (apart from `peak_bytes`).
    pub overdraft_peak_bytes: Option<u64>,
    /// Bytes reserved in the DataFusion pool (when the source is a `DataFusionPool`).
    pub datafusion_reserved_bytes: Option<u64>,
    /// Bytes charged less bytes reserved in the DataFusion pool: the real memory DataFusion
    /// holds outside its reservations (plus everything else the process allocates).
    /// Negative when reservations count bytes that are not new (shared input batches).
    pub datafusion_unreserved_bytes: Option<i64>,
}

/// Time and samples at one level, in a [`Snapshot`].
///
/// ```
/// let l = limited_allocator::metrics::LevelSnapshot::default();
/// assert_eq!(l.seconds, 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LevelSnapshot {
    /// The level.
    pub level: PressureLevel,
    /// Samples at this level.
    pub samples: u64,
    /// Seconds spent at this level.
    pub seconds: f64,
}

/// Every number the crate knows, at one moment: allocator counters (read live), the last
/// sampler reading, and the monitor's statistics.
///
/// ```
/// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
/// monitor.sample_now();
/// let snapshot = monitor.snapshot();
/// assert_eq!(snapshot.samples, 1);
/// assert_eq!(snapshot.levels.len(), 4);
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// Seconds since the monitor was built.
    pub uptime_seconds: f64,
    /// The combined level.
    pub level: PressureLevel,
    /// One reason per readable signal, highest level first (from the last sample).
    pub reasons: Vec<Reason>,
    /// The allocator, when the monitor watches one.
    pub allocator: Option<AllocatorSnapshot>,
    /// The last sampler reading (a fresh one, if the monitor has not sampled yet).
    pub memory: MemorySample,
    /// The limit RSS is measured against.
    pub process_limit_bytes: Option<u64>,
    /// Monitor samples taken.
    pub samples: u64,
    /// Changes of the combined level.
    pub transitions: u64,
    /// Samples and seconds per level, Low first.
    pub levels: [LevelSnapshot; 4],
    /// The highest RSS seen by the monitor.
    pub peak_rss_bytes: Option<u64>,
    /// The highest allocated bytes seen by the monitor.
    pub peak_allocated_bytes: Option<u64>,
    /// Listener calls that panicked.
    pub listener_panics: u64,
    /// Leak suspicions raised.
    pub leaks_suspected: u64,
    /// Per-stage statistics.
    pub stages: Vec<StageStats>,
    /// RSS less the bytes reserved in the DataFusion pool (when the monitor watches a
    /// `DataFusionPool` and RSS could be read).
    pub datafusion_rss_unreserved_bytes: Option<i64>,
}

impl Snapshot {
    /// The level of one signal in the last sample, `None` when it could not be read.
    ///
    /// ```
    /// use limited_allocator::monitor::Signal;
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().psi_thresholds(None).build()?;
    /// monitor.sample_now();
    /// assert_eq!(monitor.snapshot().signal_level(Signal::Psi), None);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn signal_level(&self, signal: Signal) -> Option<PressureLevel> {
        self.reasons
            .iter()
            .find(|r| r.signal() == signal)
            .map(Reason::level)
    }
}

impl MonitorHandle {
    /// A [`Snapshot`] of every number now.
    ///
    /// ```
    /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
    /// let s = monitor.snapshot();
    /// assert_eq!(s.samples, 0);
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let stats = self.stats();
        let allocator = self.source().map(|s| {
            let limit = s.limit();
            let mut a = AllocatorSnapshot {
                allocated_bytes: s.allocated_bytes() as u64,
                peak_bytes: s.peak_bytes() as u64,
                limit_bytes: (limit != usize::MAX).then_some(limit as u64),
                ..AllocatorSnapshot::default()
            };
            if let Some(st) = s.allocator_stats() {
                a.allocations = Some(st.allocations);
                a.deallocations = Some(st.deallocations);
                a.reallocations = Some(st.reallocations);
                a.refusals = Some(st.refusals);
                a.refused_bytes = Some(st.refused_bytes);
                a.largest_refusal_bytes = Some(st.largest_refusal_bytes as u64);
                a.inner_failures = Some(st.inner_failures);
                a.reserved_bytes = Some(st.reserved_bytes as u64);
                a.pool_claimed_bytes = Some(st.pool_claimed_bytes as u64);
                a.overdraft_limit_bytes = Some(st.overdraft_limit_bytes as u64);
                a.overdraft_grants = Some(st.overdraft_grants);
                a.overdraft_bytes = Some(st.overdraft_bytes);
                a.overdraft_peak_bytes = Some(st.overdraft_peak_bytes as u64);
            }
            if let Some(reserved) = s.datafusion_reserved_bytes() {
                a.datafusion_reserved_bytes = Some(reserved as u64);
                a.datafusion_unreserved_bytes = Some(signed_gap(a.allocated_bytes, reserved));
            }
            a
        });
        let (memory, reasons, process_limit_bytes) = match &stats.last {
            Some(last) => (
                last.memory.clone(),
                last.reasons.clone(),
                last.process_limit.map(|(l, _)| l),
            ),
            None => (self.sampler_reading(), Vec::new(), None),
        };
        let levels = PressureLevel::ALL.map(|level| {
            let l = stats.at(level);
            LevelSnapshot {
                level,
                samples: l.samples,
                seconds: l.time.as_secs_f64(),
            }
        });
        let datafusion_rss_unreserved_bytes = allocator
            .as_ref()
            .and_then(|a| a.datafusion_reserved_bytes)
            .zip(memory.rss_bytes)
            .map(|(reserved, rss)| signed_gap(rss, reserved as usize));
        Snapshot {
            datafusion_rss_unreserved_bytes,
            uptime_seconds: self.uptime().as_secs_f64(),
            level: self.level(),
            reasons,
            allocator,
            memory,
            process_limit_bytes,
            samples: stats.samples,
            transitions: stats.transitions,
            levels,
            peak_rss_bytes: stats.peak_rss_bytes,
            peak_allocated_bytes: stats.peak_allocated_bytes,
            listener_panics: stats.listener_panics,
            leaks_suspected: stats.leaks_suspected,
            stages: self.stage_stats(),
        }
    }
}

/// `whole - part` as a signed number, saturating at i64's ends.
fn signed_gap(whole: u64, part: usize) -> i64 {
    let gap = i128::from(whole) - part as i128;
    i64::try_from(gap).unwrap_or(if gap < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(feature = "serde")]
impl serde::Serialize for PressureLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "prometheus")]
pub use prom::PrometheusCollector;

#[cfg(feature = "prometheus")]
mod prom {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, NoLabelSet};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::registry::Unit;
    use std::fmt::Error;

    /// A `prometheus-client` collector: register it in the service's own registry and
    /// every scrape reads a fresh [`Snapshot`]. The metric names are listed in `docs/monitoring.md`.
    ///
    /// ```
    /// use limited_allocator::metrics::PrometheusCollector;
    /// use limited_allocator::monitor::MemoryMonitor;
    /// use prometheus_client::registry::Registry;
    ///
    /// let monitor = MemoryMonitor::builder().build()?;
    /// monitor.sample_now();
    /// let mut registry = Registry::default();
    /// registry.register_collector(Box::new(PrometheusCollector::new(monitor.handle())));
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains("limited_allocator_pressure_level 0"));
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    #[derive(Debug, Clone)]
    pub struct PrometheusCollector {
        handle: MonitorHandle,
        requests: Option<RequestStats>,
    }

    impl PrometheusCollector {
        /// A collector reading from `handle`.
        ///
        /// ```
        /// let monitor = limited_allocator::monitor::MemoryMonitor::builder().build()?;
        /// let c = limited_allocator::metrics::PrometheusCollector::new(monitor.handle());
        /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
        /// ```
        pub fn new(handle: MonitorHandle) -> Self {
            Self {
                handle,
                requests: None,
            }
        }

        /// Exports a service's per-request numbers too: `request_peak_bytes` (a
        /// histogram), `requests_shed_total{reason}` and `request_refusals_total`.
        ///
        /// ```
        /// use limited_allocator::metrics::{PrometheusCollector, RequestStats};
        /// use limited_allocator::monitor::MemoryMonitor;
        /// let monitor = MemoryMonitor::builder().build()?;
        /// let requests = RequestStats::new(); // given to the tower layer too
        /// let c = PrometheusCollector::new(monitor.handle()).with_requests(requests.clone());
        /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
        /// ```
        pub fn with_requests(mut self, requests: RequestStats) -> Self {
            self.requests = Some(requests);
            self
        }
    }

    fn encode_requests(out: &mut Out<'_, '_>, r: &RequestSnapshot) -> Result<(), Error> {
        let name = out.name("request_peak").to_string();
        let mut m = out.enc.encode_descriptor(
            &name,
            "Bytes each request had in use at its peak (its reservation's peak_used).",
            Some(&Unit::Bytes),
            MetricType::Histogram,
        )?;
        // The encoder wants per-bucket counts and an unbounded (f64::MAX) last bucket.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = r
            .buckets
            .iter()
            .map(|&(upper, cumulative)| {
                let n = cumulative - below;
                below = cumulative;
                (upper as f64, n)
            })
            .collect();
        buckets.push((f64::MAX, r.completed.saturating_sub(below)));
        m.encode_histogram::<NoLabelSet>(r.peak_sum as f64, r.completed, &buckets, None)?;
        let name = out.name("requests_shed").to_string();
        let mut family = out.enc.encode_descriptor(
            &name,
            "Requests refused before they ran, per reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in r.shed {
            family
                .encode_family(&[("reason", reason.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        out.counter(
            "request_refusals",
            "Allocations refused inside request budgets.",
            false,
            Some(r.refusals),
        )
    }

    const PREFIX: &str = "limited_allocator_";

    struct Out<'a, 'b> {
        enc: &'a mut DescriptorEncoder<'b>,
        name: String,
    }

    impl Out<'_, '_> {
        fn name(&mut self, base: &str) -> &str {
            self.name.clear();
            self.name.push_str(PREFIX);
            self.name.push_str(base);
            &self.name
        }

        /// A gauge in bytes: `base` gets `_bytes` from the unit.
        fn bytes(&mut self, base: &str, help: &str, v: Option<u64>) -> Result<(), Error> {
            let Some(v) = v else { return Ok(()) };
            let name = self.name(base).to_string();
            let mut m =
                self.enc
                    .encode_descriptor(&name, help, Some(&Unit::Bytes), MetricType::Gauge)?;
            m.encode_gauge(&clamp(v))
        }

        fn gauge(&mut self, base: &str, help: &str, v: i64) -> Result<(), Error> {
            let name = self.name(base).to_string();
            let mut m = self
                .enc
                .encode_descriptor(&name, help, None, MetricType::Gauge)?;
            m.encode_gauge(&v)
        }

        /// A counter: `base` gets `_total` from the encoder (and `_bytes` if `bytes`).
        fn counter(
            &mut self,
            base: &str,
            help: &str,
            bytes: bool,
            v: Option<u64>,
        ) -> Result<(), Error> {
            let Some(v) = v else { return Ok(()) };
            let name = self.name(base).to_string();
            let unit = bytes.then_some(&Unit::Bytes);
            let mut m = self
                .enc
                .encode_descriptor(&name, help, unit, MetricType::Counter)?;
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)
        }

        /// A counter family with one `level` label per pressure level.
        fn per_level<V: EncodeCounterValue>(
            &mut self,
            base: &str,
            help: &str,
            values: impl Iterator<Item = (PressureLevel, V)>,
        ) -> Result<(), Error> {
            let name = self.name(base).to_string();
            let mut family = self
                .enc
                .encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (level, v) in values {
                family
                    .encode_family(&[("level", level.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
            Ok(())
        }
    }

    fn clamp(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    impl Collector for PrometheusCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
            let s = self.handle.snapshot();
            let mut out = Out {
                enc: &mut encoder,
                name: String::new(),
            };
            if let Some(a) = &s.allocator {
                out.bytes(
                    "allocated",
                    "Bytes charged to the allocator's budget.",
                    Some(a.allocated_bytes),
                )?;
                out.bytes(
                    "peak_allocated",
                    "Highest charge to the budget.",
                    Some(a.peak_bytes),
                )?;
                out.bytes("limit", "The allocator's hard limit.", a.limit_bytes)?;
                out.bytes(
                    "reserved",
                    "Headroom held by reservations.",
                    a.reserved_bytes,
                )?;
                out.bytes(
                    "pool_claimed",
                    "Bytes claimed through the Arrow memory pool.",
                    a.pool_claimed_bytes,
                )?;
                out.bytes(
                    "datafusion_reserved",
                    "Bytes reserved in the DataFusion pool.",
                    a.datafusion_reserved_bytes,
                )?;
                if let Some(gap) = a.datafusion_unreserved_bytes {
                    out.gauge(
                        "datafusion_unreserved_bytes",
                        "Bytes charged less bytes reserved in the DataFusion pool.",
                        gap,
                    )?;
                }
                out.counter("allocations", "Allocations granted.", false, a.allocations)?;
                out.counter("deallocations", "Deallocations.", false, a.deallocations)?;
                out.counter("reallocations", "Reallocations.", false, a.reallocations)?;
                out.counter(
                    "refusals",
                    "Allocations refused at the limit.",
                    false,
                    a.refusals,
                )?;
                out.counter(
                    "refused",
                    "Bytes asked for by refused allocations.",
                    true,
                    a.refused_bytes,
                )?;
                out.counter(
                    "inner_failures",
                    "Failures of the inner allocator.",
                    false,
                    a.inner_failures,
                )?;
                out.bytes(
                    "overdraft_limit",
                    "Emergency overdraft a panicking thread may take past the limit.",
                    a.overdraft_limit_bytes,
                )?;
                out.bytes(
                    "overdraft_peak",
                    "Highest charge above the limit reached by the emergency overdraft.",
                    a.overdraft_peak_bytes,
                )?;
                out.counter(
                    "overdraft_grants",
                    "Requests of panicking threads served past the limit.",
                    false,
                    a.overdraft_grants,
                )?;
                out.counter(
                    "overdraft",
                    "Bytes taken past the limit by panicking threads.",
                    true,
                    a.overdraft_bytes,
                )?;
            }
            if let Some(gap) = s.datafusion_rss_unreserved_bytes {
                out.gauge(
                    "datafusion_rss_unreserved_bytes",
                    "Process RSS less bytes reserved in the DataFusion pool.",
                    gap,
                )?;
            }
            let m = &s.memory;
            out.bytes(
                "process_rss",
                "Process resident set size (VmRSS).",
                m.rss_bytes,
            )?;
            out.bytes(
                "process_rss_anon",
                "Anonymous resident memory (RssAnon).",
                m.rss_anon_bytes,
            )?;
            out.bytes(
                "process_peak_rss",
                "Peak resident set size (VmHWM).",
                m.peak_rss_bytes,
            )?;
            out.bytes(
                "process_limit",
                "The limit RSS is measured against (configured or cgroup).",
                s.process_limit_bytes,
            )?;
            out.bytes(
                "system_memory_total",
                "Physical memory (MemTotal).",
                m.system_total_bytes,
            )?;
            out.bytes(
                "system_memory_available",
                "Memory available without swapping (MemAvailable).",
                m.system_available_bytes,
            )?;
            if let Some(cg) = &m.cgroup {
                out.bytes("cgroup_limit", "The cgroup's memory limit.", cg.limit_bytes)?;
                out.bytes("cgroup_high", "The cgroup's soft limit.", cg.high_bytes)?;
                out.bytes(
                    "cgroup_usage",
                    "The cgroup's usage, page cache included.",
                    cg.usage_bytes,
                )?;
                out.bytes(
                    "cgroup_working_set",
                    "The cgroup's usage less inactive file pages.",
                    cg.working_set_bytes,
                )?;
                out.counter(
                    "cgroup_oom_kills",
                    "OOM kills in the cgroup.",
                    false,
                    cg.oom_kills,
                )?;
            }
            if let Some(psi) = m.psi {
                let values = [
                    ("some", "10s", psi.some_avg10),
                    ("some", "60s", psi.some_avg60),
                    ("full", "10s", psi.full_avg10),
                    ("full", "60s", psi.full_avg60),
                ];
                let name = out.name("psi_memory_ratio").to_string();
                let mut family = out.enc.encode_descriptor(
                    &name,
                    "Share of time stalled on memory (PSI averages), 0 to 1.",
                    None,
                    MetricType::Gauge,
                )?;
                for (kind, window, v) in values {
                    if let Some(v) = v {
                        family
                            .encode_family(&[("kind", kind), ("window", window)])?
                            .encode_gauge(&(v / 100.0))?;
                    }
                }
            }
            out.gauge(
                "pressure_level",
                "Combined pressure level: 0 low, 1 medium, 2 high, 3 critical.",
                s.level.index() as i64,
            )?;
            if !s.reasons.is_empty() {
                let name = out.name("signal_level").to_string();
                let mut family = out.enc.encode_descriptor(
                    &name,
                    "Pressure level per signal: 0 low .. 3 critical.",
                    None,
                    MetricType::Gauge,
                )?;
                for r in &s.reasons {
                    family
                        .encode_family(&[("signal", r.signal().as_str())])?
                        .encode_gauge(&(r.level().index() as i64))?;
                }
            }
            out.per_level(
                "level_samples",
                "Monitor samples per pressure level.",
                s.levels.iter().map(|l| (l.level, l.samples)),
            )?;
            out.per_level(
                "level_seconds",
                "Seconds spent per pressure level.",
                s.levels.iter().map(|l| (l.level, l.seconds)),
            )?;
            out.counter(
                "level_transitions",
                "Changes of the combined pressure level.",
                false,
                Some(s.transitions),
            )?;
            out.counter(
                "monitor_samples",
                "Samples taken by the monitor.",
                false,
                Some(s.samples),
            )?;
            out.counter(
                "listener_panics",
                "Listener calls that panicked (caught).",
                false,
                Some(s.listener_panics),
            )?;
            out.counter(
                "leaks_suspected",
                "Sustained growth episodes reported as suspected leaks.",
                false,
                Some(s.leaks_suspected),
            )?;
            if let Some(r) = &self.requests {
                encode_requests(&mut out, &r.snapshot())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MemoryMonitor;
    use crate::sampler::cgroup::tests::Fixture;
    use crate::sampler::Sampler;
    use crate::LimitedAllocator;
    use std::sync::Arc;
    use std::time::Duration;

    fn fixture() -> Fixture {
        let f = Fixture::new("metrics");
        f.file(
            "proc/self/status",
            "VmHWM:\t4096 kB\nVmRSS:\t2048 kB\nRssAnon:\t1024 kB\n",
        )
        .file(
            "proc/meminfo",
            "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
        )
        .file("proc/self/cgroup", "0::/svc\n")
        .file("sys/fs/cgroup/svc/memory.max", "4194304")
        .file("sys/fs/cgroup/svc/memory.current", "3000000")
        .file("sys/fs/cgroup/svc/memory.stat", "inactive_file 1000000\n")
        .file("sys/fs/cgroup/svc/memory.events", "oom_kill 2\n")
        .file(
            "proc/pressure/memory",
            "some avg10=12.50 avg60=1.00 avg300=0 total=1\n",
        );
        f
    }

    #[test]
    fn snapshot_has_every_number() {
        let f = fixture();
        let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 20));
        let m = MemoryMonitor::builder()
            .sampler(Sampler::with_root(&f.0).with_max_age(Duration::ZERO))
            .budget_source(alloc.clone())
            .build()
            .unwrap();
        let _held = alloc.try_reserve(700 << 10).unwrap();
        m.sample_now();
        let s = m.snapshot();
        let a = s.allocator.clone().unwrap();
        assert_eq!(a.allocated_bytes, 700 << 10);
        assert_eq!(a.limit_bytes, Some(1 << 20));
        assert_eq!(a.refusals, Some(0));
        assert_eq!(s.memory.rss_bytes, Some(2 << 20));
        assert_eq!(s.process_limit_bytes, Some(4 << 20));
        assert_eq!(
            s.memory.cgroup.as_ref().unwrap().working_set_bytes,
            Some(2_000_000)
        );
        // allocator 68.4 % -> Medium, psi 12.5 % -> Medium, cgroup 47.7 % -> Low.
        assert_eq!(s.level, PressureLevel::Medium);
        assert_eq!(s.signal_level(Signal::Psi), Some(PressureLevel::Medium));
        assert_eq!(s.signal_level(Signal::Cgroup), Some(PressureLevel::Low));
        assert_eq!(s.signal_level(Signal::SystemAvailable), None);
        assert_eq!(s.levels[1].samples, 1);
        assert_eq!(s.samples, 1);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn snapshot_serializes_to_json() {
        let f = fixture();
        let m = MemoryMonitor::builder()
            .sampler(Sampler::with_root(&f.0).with_max_age(Duration::ZERO))
            .build()
            .unwrap();
        let _stage = m.stage("load");
        m.sample_now();
        let json: serde_json::Value = serde_json::to_value(m.snapshot()).unwrap();
        assert_eq!(json["level"], "medium");
        assert_eq!(json["memory"]["rss_bytes"], 2 << 20);
        assert_eq!(json["memory"]["cgroup"]["version"], "v2");
        assert_eq!(json["reasons"][0]["signal"], "psi");
        assert_eq!(json["levels"][1]["level"], "medium");
        assert_eq!(json["stages"][0]["name"], "load");
        assert!(json["allocator"].is_null());
    }

    #[cfg(feature = "prometheus")]
    type Parsed = (
        std::collections::HashMap<String, String>,
        Vec<(String, Vec<(String, String)>, f64)>,
    );

    /// Parses the text exposition: `# TYPE` lines and samples `name{labels} value`.
    #[cfg(feature = "prometheus")]
    fn parse_exposition(text: &str) -> Parsed {
        let mut types = std::collections::HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name}"
            );
            samples.push((name.to_string(), labels, value));
        }
        (types, samples)
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn prometheus_text_exposition_parses_and_follows_conventions() {
        use prometheus_client::registry::Registry;
        let f = fixture();
        let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 20));
        let m = MemoryMonitor::builder()
            .sampler(Sampler::with_root(&f.0).with_max_age(Duration::ZERO))
            .budget_source(alloc.clone())
            .build()
            .unwrap();
        let _held = alloc.try_reserve(900 << 10).unwrap();
        m.sample_now();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(PrometheusCollector::new(m.handle())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let (types, samples) = parse_exposition(&text);
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && labels
                            .iter()
                            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(_, _, v)| *v)
                .unwrap_or_else(|| panic!("{name} {labels:?} missing in\n{text}"))
        };
        assert!(samples
            .iter()
            .all(|(n, _, _)| n.starts_with("limited_allocator_")));
        assert_eq!(value("limited_allocator_allocated_bytes", &[]), 921600.0);
        assert_eq!(value("limited_allocator_limit_bytes", &[]), 1048576.0);
        assert_eq!(value("limited_allocator_refusals_total", &[]), 0.0);
        assert_eq!(
            value("limited_allocator_overdraft_limit_bytes", &[]),
            1048576.0
        );
        assert_eq!(value("limited_allocator_overdraft_grants_total", &[]), 0.0);
        assert_eq!(value("limited_allocator_overdraft_bytes_total", &[]), 0.0);
        assert_eq!(value("limited_allocator_overdraft_peak_bytes", &[]), 0.0);
        assert_eq!(value("limited_allocator_process_rss_bytes", &[]), 2097152.0);
        assert_eq!(value("limited_allocator_cgroup_oom_kills_total", &[]), 2.0);
        assert_eq!(
            value("limited_allocator_cgroup_working_set_bytes", &[]),
            2e6
        );
        assert_eq!(
            value(
                "limited_allocator_psi_memory_ratio",
                &[("kind", "some"), ("window", "10s")]
            ),
            0.125
        );
        // 87.9 % of the allocator's limit: High.
        assert_eq!(value("limited_allocator_pressure_level", &[]), 2.0);
        assert_eq!(
            value("limited_allocator_signal_level", &[("signal", "allocator")]),
            2.0
        );
        assert_eq!(
            value(
                "limited_allocator_level_samples_total",
                &[("level", "high")]
            ),
            1.0
        );
        assert_eq!(
            value("limited_allocator_level_samples_total", &[("level", "low")]),
            0.0
        );
        value(
            "limited_allocator_level_seconds_total",
            &[("level", "critical")],
        );
        assert_eq!(value("limited_allocator_level_transitions_total", &[]), 1.0);
        assert_eq!(types["limited_allocator_pressure_level"], "gauge");
        assert_eq!(types["limited_allocator_refusals"], "counter");
        assert_eq!(types["limited_allocator_allocated_bytes"], "gauge");
        // Counters end in _total, byte gauges in _bytes; nothing unreadable is reported.
        for (name, _, _) in &samples {
            let base = name.trim_end_matches("_total");
            if name.ends_with("_total") {
                assert_eq!(
                    types.get(base).map(String::as_str),
                    Some("counter"),
                    "{name}"
                );
            }
        }
        assert!(!text.contains("system_memory_available_bytes NaN"));
        assert!(!text.contains("cgroup_high_bytes"));
    }
}
