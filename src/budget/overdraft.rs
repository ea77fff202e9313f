//! The emergency overdraft of a panicking thread: a small, bounded, counted allowance above
//! the limit, so that a panic at an exhausted budget prints its own message and unwinds
//! instead of dying as "memory allocation of N bytes failed" or hanging.
//!
//! Why it is needed: std's default panic hook allocates (the formatted message, libtest's
//! capture buffer, the backtrace's symbols) while it holds the backtrace lock, and a refused
//! allocation there calls `handle_alloc_error`, whose default hook takes the same lock on a
//! process's first allocation failure (rust #127397, #148020): a deadlock. So a request the
//! budget refuses on a thread for which `std::thread::panicking()` is true (checked only
//! there, on the refusal path) is granted past the limit, as long as the charge stays within
//! `limit + overdraft`. When even that is spent, the allocator writes its line and aborts the
//! process ([`abort_spent`]): returning null into the panic machinery could only end in that
//! deadlock or in an abort without the explanation.
//!
//! The bound is on the charge, not on a running total: whatever the overdraft lent is given
//! back as its blocks are freed (usually by the unwinding itself), and a later panic has the
//! full allowance again. Every grant is counted, and the highest charge above the limit is
//! kept apart from the peak (`AllocatorStats::overdraft_*`), so `peak_bytes() <= limit()`
//! keeps its meaning.

use super::tuning::DEFAULT_OVERDRAFT;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The overdraft's setting and counters (one per instance).
pub(crate) struct Overdraft {
    allowance: AtomicUsize,
    grants: AtomicU64,
    granted_bytes: AtomicU64,
    /// The highest charge above the limit that a grant reached.
    peak_excess: AtomicUsize,
    /// Set by a grant, cleared by `reset_peak` (when the charge is within the limit again):
    /// while set, the peak is not raised past the limit by what the overdraft lent.
    since_reset: AtomicBool,
}

/// What [`Overdraft::counts`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OverdraftCounts {
    pub allowance: usize,
    pub grants: u64,
    pub granted_bytes: u64,
    pub peak_excess: usize,
}

impl Overdraft {
    pub(crate) const fn new() -> Self {
        Self {
            allowance: AtomicUsize::new(DEFAULT_OVERDRAFT),
            grants: AtomicU64::new(0),
            granted_bytes: AtomicU64::new(0),
            peak_excess: AtomicUsize::new(0),
            since_reset: AtomicBool::new(false),
        }
    }

    pub(crate) fn allowance(&self) -> usize {
        self.allowance.load(Relaxed)
    }

    pub(crate) fn set_allowance(&self, bytes: usize) {
        self.allowance.store(bytes, Relaxed);
    }

    /// Takes `size` bytes on `charged` if the charge stays within `limit + allowance`.
    /// Returns the charge after taking them, or the charge seen when they did not fit.
    ///
    /// Relaxed, like every other compare-and-swap on `charged`: the counter orders nothing
    /// but itself, and the read-modify-write cannot be overtaken.
    pub(crate) fn grant(
        &self,
        charged: &AtomicUsize,
        limit: usize,
        size: usize,
    ) -> Result<usize, usize> {
        let ceiling = limit.saturating_add(self.allowance());
        let mut current = charged.load(Relaxed);
        loop {
            if size > ceiling.saturating_sub(current) {
                return Err(current);
            }
            match charged.compare_exchange_weak(current, current + size, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let after = current + size;
        self.grants.fetch_add(1, Relaxed);
        self.granted_bytes.fetch_add(size as u64, Relaxed);
        self.peak_excess
            .fetch_max(after.saturating_sub(limit), Relaxed);
        self.since_reset.store(true, Relaxed);
        Ok(after)
    }

    /// The most a peak may read: the limit while something was lent since the peak was last
    /// reset (what the overdraft lent is reported apart), unbounded otherwise.
    #[inline]
    pub(crate) fn peak_cap(&self, limit: usize) -> usize {
        if self.since_reset.load(Relaxed) {
            limit
        } else {
            usize::MAX
        }
    }

    /// After `reset_peak`: a charge back within the limit ends the overdraft's influence.
    pub(crate) fn peak_reset(&self, charged: usize, limit: usize) {
        if charged <= limit {
            self.since_reset.store(false, Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> OverdraftCounts {
        OverdraftCounts {
            allowance: self.allowance(),
            grants: self.grants.load(Relaxed),
            granted_bytes: self.granted_bytes.load(Relaxed),
            peak_excess: self.peak_excess.load(Relaxed),
        }
    }
}

/// The overdraft is spent: say so in one line (never rate-limited) and abort. Neither
/// allocates nor unwinds (`std::process::abort` raises SIGABRT).
#[cold]
pub(crate) fn abort_spent(size: usize, current: usize, limit: usize, allowance: usize) -> ! {
    super::report::overdraft_spent(size, current, limit, allowance);
    std::process::abort()
}
