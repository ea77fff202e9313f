//! Per-request numbers of a service: how much each request needed at its peak (a
//! histogram), the requests shed before they ran and why, and the allocations refused
//! inside request budgets. Filled by the `tower` layer (feature `tower`), or by hand around
//! [`Reservation::scope`](crate::Reservation::scope), and exported by the Prometheus
//! collector (`PrometheusCollector::with_requests`, feature `prometheus`).

use crate::Reservation;
use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Upper bounds of the peak histogram's buckets, in bytes: 1 KiB to 1 GiB by factors of
/// four (the last bucket, unbounded, is implied).
pub const PEAK_BUCKETS: [u64; 11] = [
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    1 << 30,
];

/// Why a request was refused before it ran.
///
/// ```
/// assert_eq!(limited_allocator::metrics::ShedReason::MonitorLevel.as_str(), "monitor_level");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// The allocator's own pressure level was at or above the shedding level.
    AllocatorLevel,
    /// The monitor's combined level (RSS, cgroup, PSI, ...) was at or above it.
    MonitorLevel,
    /// The request's reservation could not be had from the budget.
    Reservation,
}

impl ShedReason {
    /// All reasons, in label order.
    pub const ALL: [ShedReason; 3] = [Self::AllocatorLevel, Self::MonitorLevel, Self::Reservation];

    /// The label value used in metrics.
    ///
    /// ```
    /// assert_eq!(limited_allocator::metrics::ShedReason::Reservation.as_str(), "reservation");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllocatorLevel => "allocator_level",
            Self::MonitorLevel => "monitor_level",
            Self::Reservation => "reservation",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ShedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Default)]
struct Counters {
    /// Requests per bucket (not cumulative); the last one is unbounded.
    buckets: [AtomicU64; PEAK_BUCKETS.len() + 1],
    peak_sum: AtomicU64,
    completed: AtomicU64,
    shed: [AtomicU64; 3],
    refusals: AtomicU64,
}

/// Shared, lock-free counters of a service's requests; clones count into the same numbers.
///
/// ```
/// use limited_allocator::metrics::{RequestStats, ShedReason};
/// use limited_allocator::LimitedAllocator;
/// let budget = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let stats = RequestStats::new();
/// let r = budget.try_reserve(4096)?;
/// stats.record(&r); // after the request ran in `r.scope(..)`
/// stats.record_shed(ShedReason::AllocatorLevel);
/// let s = stats.snapshot();
/// assert_eq!((s.completed, s.shed_total()), (1, 1));
/// # Ok::<(), limited_allocator::LimitExceeded>(())
/// ```
#[derive(Clone, Default)]
pub struct RequestStats {
    counters: Arc<Counters>,
}

impl RequestStats {
    /// Empty counters.
    ///
    /// ```
    /// assert_eq!(limited_allocator::metrics::RequestStats::new().snapshot().completed, 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a request that ran: its reservation's peak and its refusals.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1 << 20);
    /// let stats = limited_allocator::metrics::RequestStats::new();
    /// stats.record(&a.try_reserve(10).unwrap());
    /// assert_eq!(stats.snapshot().buckets[0], (1024, 1));
    /// ```
    pub fn record<A>(&self, reservation: &Reservation<'_, A>) {
        self.record_peak(reservation.peak_used() as u64);
        self.counters
            .refusals
            .fetch_add(reservation.refusals(), Relaxed);
    }

    /// Records a request that ran and needed `bytes` at its peak.
    ///
    /// ```
    /// let stats = limited_allocator::metrics::RequestStats::new();
    /// stats.record_peak(5000);
    /// let s = stats.snapshot();
    /// assert_eq!((s.peak_sum, s.buckets[1], s.buckets[2]), (5000, (4096, 0), (16384, 1)));
    /// ```
    pub fn record_peak(&self, bytes: u64) {
        let c = &self.counters;
        let bucket = PEAK_BUCKETS.partition_point(|&upper| upper < bytes);
        c.buckets[bucket].fetch_add(1, Relaxed);
        c.peak_sum.fetch_add(bytes, Relaxed);
        c.completed.fetch_add(1, Relaxed);
    }

    /// Records a request refused before it ran.
    ///
    /// ```
    /// use limited_allocator::metrics::{RequestStats, ShedReason};
    /// let stats = RequestStats::new();
    /// stats.record_shed(ShedReason::Reservation);
    /// assert_eq!(stats.snapshot().shed(ShedReason::Reservation), 1);
    /// ```
    pub fn record_shed(&self, reason: ShedReason) {
        self.counters.shed[reason.index()].fetch_add(1, Relaxed);
    }

    /// The numbers now. Each counter is read on its own, so under load they may be a
    /// moment apart.
    ///
    /// ```
    /// let s = limited_allocator::metrics::RequestStats::new().snapshot();
    /// assert_eq!(s.buckets.len(), limited_allocator::metrics::PEAK_BUCKETS.len());
    /// ```
    pub fn snapshot(&self) -> RequestSnapshot {
        let c = &self.counters;
        let count = |n: &AtomicU64| n.load(Relaxed);
        let mut cumulative = 0;
        let buckets = PEAK_BUCKETS
            .iter()
            .zip(&c.buckets)
            .map(|(&upper, n)| {
                cumulative += count(n);
                (upper, cumulative)
            })
            .collect();
        RequestSnapshot {
            buckets,
            completed: count(&c.completed),
            peak_sum: count(&c.peak_sum),
            shed: ShedReason::ALL.map(|r| (r, count(&c.shed[r.index()]))),
            refusals: count(&c.refusals),
        }
    }
}

impl fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// [`RequestStats`] at one moment.
///
/// ```
/// let stats = limited_allocator::metrics::RequestStats::new();
/// stats.record_peak(100);
/// assert_eq!(stats.snapshot().completed, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestSnapshot {
    /// `(upper bound in bytes, requests whose peak was at most that)`, cumulative, one
    /// per [`PEAK_BUCKETS`] entry; requests above the last bound count only in
    /// [`completed`](Self::completed).
    pub buckets: Vec<(u64, u64)>,
    /// Requests that ran (and were recorded).
    pub completed: u64,
    /// Sum of their peaks, in bytes.
    pub peak_sum: u64,
    /// Requests shed, per reason.
    pub shed: [(ShedReason, u64); 3],
    /// Allocations refused inside request budgets.
    pub refusals: u64,
}

impl RequestSnapshot {
    /// Requests shed for `reason`.
    ///
    /// ```
    /// use limited_allocator::metrics::{RequestStats, ShedReason};
    /// assert_eq!(RequestStats::new().snapshot().shed(ShedReason::MonitorLevel), 0);
    /// ```
    pub fn shed(&self, reason: ShedReason) -> u64 {
        self.shed[reason.index()].1
    }

    /// Requests shed for any reason.
    ///
    /// ```
    /// assert_eq!(limited_allocator::metrics::RequestStats::new().snapshot().shed_total(), 0);
    /// ```
    pub fn shed_total(&self) -> u64 {
        self.shed.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_land_in_the_bucket_whose_bound_covers_them() {
        let stats = RequestStats::new();
        for bytes in [0, 1024, 1025, 1 << 30, (1 << 30) + 1] {
            stats.record_peak(bytes);
        }
        let s = stats.snapshot();
        assert_eq!(s.buckets[0], (1024, 2)); // 0 and exactly 1 KiB
        assert_eq!(s.buckets[1], (4096, 3));
        assert_eq!(s.buckets[10], (1 << 30, 4));
        assert_eq!(s.completed, 5); // the one above 1 GiB counts only here
        assert_eq!(s.peak_sum, 2049 + (1 << 31) + 1);
    }

    #[test]
    fn clones_share_counts() {
        let a = RequestStats::new();
        let b = a.clone();
        b.record_shed(ShedReason::MonitorLevel);
        a.record_shed(ShedReason::MonitorLevel);
        assert_eq!(a.snapshot().shed(ShedReason::MonitorLevel), 2);
        assert_eq!(a.snapshot().shed_total(), 2);
    }
}
