//! A point-in-time copy of an allocator's counters.

use crate::{error::percent, PressureLevel};

/// Everything a dashboard wants from one [`LimitedAllocator`](crate::LimitedAllocator), read
/// at once by [`stats`](crate::LimitedAllocator::stats).
///
/// Counts made on the calling thread are exact. Counts made on other live threads are
/// published in batches (every 4096 operations of a kind, and when a thread exits), so
/// they may lag by that much; see `docs/performance.md`.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use std::alloc::{GlobalAlloc, Layout, System};
///
/// let a = LimitedAllocator::new(System, 1 << 20);
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// unsafe {
///     let p = a.alloc(layout);
///     a.dealloc(p, layout);
/// }
/// let s = a.stats();
/// assert_eq!((s.allocations, s.deallocations, s.current_bytes, s.peak_bytes), (1, 1, 0, 100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AllocatorStats {
    /// Successful `alloc`/`alloc_zeroed` calls.
    pub allocations: u64,
    /// `dealloc` calls.
    pub deallocations: u64,
    /// Successful `realloc` calls.
    pub reallocations: u64,
    /// Requests refused because they would have exceeded the limit (allocations, reallocations
    /// and reservations alike). A request over the headroom of an entered reservation with
    /// [`Overflow::Refuse`](crate::Overflow::Refuse) is that reservation's refusal
    /// ([`Reservation::refusals`](crate::Reservation::refusals)), not counted here.
    pub refusals: u64,
    /// Sum of the bytes of all refused requests.
    pub refused_bytes: u64,
    /// Bytes of the largest refused request (0 if none was refused).
    pub largest_refusal_bytes: usize,
    /// Requests within the limit that the inner allocator could not satisfy (it returned null).
    pub inner_failures: u64,
    /// Bytes charged to the budget now: live allocations plus reservation headroom
    /// (same as [`allocated_bytes`](crate::LimitedAllocator::allocated_bytes)).
    pub current_bytes: usize,
    /// Of `current_bytes`, headroom held by live [`Reservation`](crate::Reservation)s and not
    /// yet spent by allocations.
    pub reserved_bytes: usize,
    /// Highest `current_bytes` since creation or the last
    /// [`reset_peak`](crate::LimitedAllocator::reset_peak).
    pub peak_bytes: usize,
    /// The limit in force.
    pub limit_bytes: usize,
    /// Bytes claimed through the Arrow `MemoryPool` interface (attribution only when this
    /// instance is also the global allocator; see `docs/arrow.md`).
    pub pool_claimed_bytes: usize,
    /// The pressure level for `current_bytes` against `limit_bytes`.
    pub pressure: PressureLevel,
    /// The emergency overdraft a panicking thread may take past the limit
    /// ([`set_panic_overdraft`](crate::LimitedAllocator::set_panic_overdraft)).
    pub overdraft_limit_bytes: usize,
    /// Requests of panicking threads served past the limit by the overdraft.
    pub overdraft_grants: u64,
    /// Sum of the bytes those requests took.
    pub overdraft_bytes: u64,
    /// The highest charge above the limit the overdraft reached (0 if never used): reported
    /// here, apart from `peak_bytes`, which stays within the limit.
    pub overdraft_peak_bytes: usize,
}

impl AllocatorStats {
    /// `current_bytes` in percent of `limit_bytes` (100 for a zero limit, never NaN).
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// let _r = a.try_reserve(250).unwrap();
    /// assert_eq!(a.stats().usage_percent(), 25.0);
    /// ```
    pub fn usage_percent(&self) -> f64 {
        percent(self.current_bytes, self.limit_bytes)
    }

    /// `limit_bytes - current_bytes`, saturating at 0.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// assert_eq!(a.stats().available_bytes(), 1000);
    /// ```
    pub fn available_bytes(&self) -> usize {
        self.limit_bytes.saturating_sub(self.current_bytes)
    }
}
