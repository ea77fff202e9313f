//! [`LimitedAllocator`]: the `GlobalAlloc` wrapper and its public API.

use crate::budget::{Core, Mode};
use crate::budget::{Op, Spent};
use crate::error::{percent, LimitExceeded};
use crate::reservation::Reservation;
use crate::stats::AllocatorStats;
use crate::{PressureLevel, PressureThresholds};
use core::fmt;
use std::alloc::{GlobalAlloc, Layout, System};

/// A memory budget enforced at the allocator: wraps an inner [`GlobalAlloc`] (by default
/// [`System`]) and refuses, by returning null, any allocation that would take the bytes
/// charged to it past its limit.
///
/// Install it as the `#[global_allocator]`, use a standalone instance as an Arrow memory
/// pool or as the allocator of a single collection, and ask it before large steps
/// ([`check_can_allocate`](Self::check_can_allocate), [`try_reserve`](Self::try_reserve)).
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);
///
/// fn main() {
///     ALLOC.set_limit(ALLOC.allocated_bytes() + (64 << 20)); // 64 MiB more than now
///     let mut big: Vec<u8> = Vec::new();
///     assert!(big.try_reserve(128 << 20).is_err()); // refused, and the program goes on
///     assert!(ALLOC.peak_bytes() <= ALLOC.limit());
/// }
/// ```
///
/// # Accounting
/// Each allocation is charged `layout.size()` bytes; frees give back exactly what was
/// charged; a `realloc` charges or gives back the difference, and a refused `realloc`
/// leaves the old block intact and charged. The limit is checked with a reservation that
/// cannot be overtaken, so under any number of threads the charged bytes never pass it.
///
/// For speed, each thread takes *credit* (already charged bytes) in batches of at most
/// 256 KiB, and at most 1/32 of the headroom left, and spends it without touching shared
/// memory; it keeps at most 512 KiB of freed bytes. All threads' credit together is at most
/// 1/16 of the limit, however many threads there are (each thread's share comes from one
/// pool). Read on one thread, every number is exact for that thread's own work; credit held
/// by *other* live threads reads as usage (at most `limit / 16` in all), and a thread
/// returns it when it exits or when a refusal recalls it. A request is refused only if live
/// bytes, reservations and that credit together leave no room for it. See
/// `docs/design.md`.
/// [`new_exact`](Self::new_exact) turns the credit off.
pub struct LimitedAllocator<A = System> {
    inner: A,
    core: Core,
    /// The Arrow pool's own state, next to its impl.
    #[cfg(feature = "arrow")]
    arrow: crate::arrow::ArrowState,
}

impl LimitedAllocator {
    /// A limit so large that it never refuses: start a `static` with it and
    /// [`set_limit`](Self::set_limit) in `main`. (Defined on the default `System` form so
    /// `LimitedAllocator::UNLIMITED` needs no type annotation; it is just `usize::MAX`.)
    pub const UNLIMITED: usize = usize::MAX;
}

impl<A> LimitedAllocator<A> {
    /// Wraps `inner` with a budget of `limit_bytes`. `const`, so it can initialise a
    /// `static`. A limit of 0 refuses everything (and reads as Critical).
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(ALLOC.limit(), 1 << 30);
    /// ```
    pub const fn new(inner: A, limit_bytes: usize) -> Self {
        Self {
            inner,
            core: Core::new(limit_bytes, Mode::Credit),
            #[cfg(feature = "arrow")]
            arrow: crate::arrow::ArrowState::new(),
        }
    }

    /// Like [`new`](Self::new), without per-thread credit: every call is accounted on one
    /// shared counter, so every number is exact on every thread at every moment, at the
    /// price of a contended atomic per call. Entered reservations need the credit cache and
    /// are not available on such an instance.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// static EXACT: LimitedAllocator = LimitedAllocator::new_exact(std::alloc::System, 1 << 30);
    /// assert_eq!(EXACT.allocated_bytes(), 0);
    /// ```
    pub const fn new_exact(inner: A, limit_bytes: usize) -> Self {
        Self {
            inner,
            core: Core::new(limit_bytes, Mode::Exact),
            #[cfg(feature = "arrow")]
            arrow: crate::arrow::ArrowState::new(),
        }
    }

    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    #[cfg(feature = "arrow")]
    pub(crate) fn arrow_state(&self) -> &crate::arrow::ArrowState {
        &self.arrow
    }

    /// The wrapped allocator.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 10);
    /// let _system: &std::alloc::System = a.inner();
    /// ```
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The limit in bytes.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// assert_eq!(a.limit(), 1000);
    /// ```
    pub fn limit(&self) -> usize {
        self.core.limit()
    }

    /// Changes the limit at run time. Lowering it below current usage frees nothing: new
    /// requests are refused until usage falls below the new limit. Credit that threads hold
    /// is recalled when the limit is lowered.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// let held = a.try_reserve(800).unwrap();
    /// a.set_limit(500);
    /// assert_eq!(a.available_bytes(), 0);
    /// assert!(a.check_can_allocate(1).is_err());
    /// drop(held);
    /// assert!(a.check_can_allocate(500).is_ok());
    /// ```
    pub fn set_limit(&self, bytes: usize) {
        self.core.set_limit(bytes);
    }

    /// Bytes charged to the budget now: live allocations plus reservation headroom, as seen
    /// from the calling thread (see the type's docs on credit).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// let _r = a.try_reserve(300).unwrap();
    /// assert_eq!(a.allocated_bytes(), 300);
    /// ```
    #[inline]
    pub fn allocated_bytes(&self) -> usize {
        self.core.allocated_bytes()
    }

    /// The highest [`allocated_bytes`](Self::allocated_bytes) since creation or the last
    /// [`reset_peak`](Self::reset_peak). Never above the limit unless the limit was lowered
    /// or Arrow claims overfilled a standalone pool (see `docs/arrow.md`).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// drop(a.try_reserve(700).unwrap());
    /// assert_eq!((a.allocated_bytes(), a.peak_bytes()), (0, 700));
    /// ```
    pub fn peak_bytes(&self) -> usize {
        self.core.peak_bytes()
    }

    /// Starts a new peak from the current usage (e.g. per query or per report interval).
    /// Exact for the calling thread; other threads' unpublished peaks from before the reset
    /// are discarded.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// drop(a.try_reserve(700).unwrap());
    /// a.reset_peak();
    /// assert_eq!(a.peak_bytes(), 0);
    /// ```
    pub fn reset_peak(&self) {
        self.core.reset_peak();
    }

    /// `limit - allocated`, saturating at 0.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// let _r = a.try_reserve(300).unwrap();
    /// assert_eq!(a.available_bytes(), 700);
    /// ```
    pub fn available_bytes(&self) -> usize {
        self.limit().saturating_sub(self.allocated_bytes())
    }

    /// Usage in percent of the limit. A zero limit reads 100; never NaN.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1024);
    /// let _r = a.try_reserve(512).unwrap();
    /// assert_eq!(a.usage_percent(), 50.0);
    /// assert_eq!(LimitedAllocator::new(std::alloc::System, 0).usage_percent(), 100.0);
    /// ```
    pub fn usage_percent(&self) -> f64 {
        percent(self.allocated_bytes(), self.limit())
    }

    /// The pressure level of the current usage against the thresholds (60/80/95 % by
    /// default). Instantaneous: the monitor adds hysteresis on top.
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, PressureLevel};
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// let _r = a.try_reserve(850).unwrap();
    /// assert_eq!(a.pressure_level(), PressureLevel::High);
    /// ```
    #[inline]
    pub fn pressure_level(&self) -> PressureLevel {
        self.core.pressure_level()
    }

    /// The thresholds [`pressure_level`](Self::pressure_level) uses.
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, PressureThresholds};
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// assert_eq!(a.thresholds(), PressureThresholds::DEFAULT);
    /// ```
    pub fn thresholds(&self) -> PressureThresholds {
        PressureThresholds::from_bits(self.core.thresholds_bits())
    }

    /// Replaces the thresholds (validated by [`PressureThresholds::new`]).
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, PressureLevel, PressureThresholds};
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// a.set_thresholds(PressureThresholds::new(50.0, 70.0, 90.0)?);
    /// let _r = a.try_reserve(700).unwrap();
    /// assert_eq!(a.pressure_level(), PressureLevel::High);
    /// # Ok::<(), limited_allocator::pressure::ThresholdError>(())
    /// ```
    pub fn set_thresholds(&self, thresholds: PressureThresholds) {
        self.core.set_thresholds_bits(thresholds.to_bits());
    }

    /// Turns the one-line stderr report on refusal on or off (on by default). The line is
    /// written with `write(2)`, rate-limited process-wide (a burst of 8 lines, then one per
    /// second; see `docs/production.md`).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 10);
    /// a.set_refusal_reporting(false);
    /// assert!(!a.refusal_reporting());
    /// ```
    pub fn set_refusal_reporting(&self, on: bool) {
        self.core.set_report_refusals(on);
    }

    /// Sets the emergency overdraft of a panicking thread (default 1 MiB): how far past the
    /// limit the charge may go for requests of threads that are panicking, so the panic
    /// prints its own message and unwinds (see `docs/production.md`). When even that is
    /// spent, the allocator writes its line and aborts the process rather than return null
    /// into the panic machinery, where it could only hang or hide the message. 0 turns the
    /// overdraft off (a panic at the limit then aborts with the line at once). What it
    /// lends is counted in [`AllocatorStats`] (`overdraft_*`), never in the peak.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1 << 20);
    /// assert_eq!(a.panic_overdraft(), 1 << 20);
    /// a.set_panic_overdraft(4 << 20); // room for a full backtrace's symbols
    /// assert_eq!(a.panic_overdraft(), 4 << 20);
    /// ```
    pub fn set_panic_overdraft(&self, bytes: usize) {
        self.core.set_overdraft_allowance(bytes);
    }

    /// The emergency overdraft of a panicking thread (see
    /// [`set_panic_overdraft`](Self::set_panic_overdraft)).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 10);
    /// assert_eq!(a.panic_overdraft(), 1 << 20);
    /// ```
    pub fn panic_overdraft(&self) -> usize {
        self.core.overdraft_allowance()
    }

    /// Whether refusals are reported on stderr.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 10);
    /// assert!(a.refusal_reporting());
    /// ```
    pub fn refusal_reporting(&self) -> bool {
        self.core.report_refusals()
    }

    /// A cheap, racy look: would `bytes` more fit right now? Another thread may take the
    /// room a moment later; use [`try_reserve`](Self::try_reserve) to hold it.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1024);
    /// let _r = a.try_reserve(800).unwrap();
    /// assert!(a.check_can_allocate(224).is_ok());
    /// let err = a.check_can_allocate(300).unwrap_err();
    /// assert_eq!((err.requested, err.current, err.limit, err.available), (300, 800, 1024, 224));
    /// ```
    #[inline]
    pub fn check_can_allocate(&self, bytes: usize) -> Result<(), LimitExceeded> {
        // The usual answer, "fits", from the quick read: `current + bytes <= limit` without
        // overflow is `bytes <= limit - current` with `current <= limit`, one addition and
        // one comparison. Everything else (a mailbox post to absorb, no room, usage over
        // the limit, where a request of 0 bytes still fits) is decided again out of line.
        let limit = self.limit();
        if let Some(current) = self.core.allocated_bytes_quick() {
            if let Some(total) = current.checked_add(bytes) {
                if total <= limit {
                    return Ok(());
                }
            }
        }
        check_can_allocate_cold(&self.core, bytes)
    }

    /// Charges `bytes` to the budget now, race-free, and holds them until the returned
    /// [`Reservation`] drops. Refused (and counted as a refusal) when they do not fit.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let a = LimitedAllocator::new(std::alloc::System, 1000);
    /// let r = a.try_reserve(600)?;
    /// let err = a.try_reserve(600).unwrap_err();
    /// assert_eq!((err.requested, err.current), (600, 600));
    /// assert_eq!(a.stats().refusals, 1);
    /// drop(r);
    /// assert!(a.try_reserve(600).is_ok());
    /// # Ok::<(), limited_allocator::LimitExceeded>(())
    /// ```
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation<'_, A>, LimitExceeded> {
        Reservation::new(self, bytes)
    }

    /// Gives this thread's unspent credit back to the shared budget now, e.g. before a
    /// worker parks for a long time. (A thread's exit does this by itself.) An idle
    /// thread's credit is only recalled with its cooperation, so a runtime's workers call
    /// this where they go idle: with tokio, `on_thread_park` (see `docs/design.md`).
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 64 << 20);
    ///
    /// let rt = tokio::runtime::Builder::new_multi_thread()
    ///     .on_thread_park(|| ALLOC.release_thread_credit())
    ///     .build()?;
    /// # drop(rt);
    /// ALLOC.release_thread_credit();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn release_thread_credit(&self) {
        self.core.return_own_credit();
    }

    /// All counters at once. See [`AllocatorStats`] for what lags on other threads.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1000);
    /// let s = a.stats();
    /// assert_eq!((s.current_bytes, s.limit_bytes, s.refusals), (0, 1000, 0));
    /// ```
    pub fn stats(&self) -> AllocatorStats {
        let counts = self.core.counts();
        let limit = self.limit();
        let current = self.allocated_bytes();
        AllocatorStats {
            allocations: counts.allocs,
            deallocations: counts.deallocs,
            reallocations: counts.reallocs,
            refusals: counts.refusals,
            refused_bytes: counts.refused_bytes,
            largest_refusal_bytes: counts.largest_refusal,
            inner_failures: counts.inner_failures,
            current_bytes: current,
            reserved_bytes: counts.reserved,
            peak_bytes: self.peak_bytes().max(current.min(self.core.peak_cap())),
            limit_bytes: limit,
            pool_claimed_bytes: counts.attributed,
            pressure: self.core.level_of(current),
            overdraft_limit_bytes: counts.overdraft.allowance,
            overdraft_grants: counts.overdraft.grants,
            overdraft_bytes: counts.overdraft.granted_bytes,
            overdraft_peak_bytes: counts.overdraft.peak_excess,
        }
    }
}

impl<A: GlobalAlloc> LimitedAllocator<A> {
    /// `alloc` when the fast path could not finish the charge: out of line, so the fast
    /// path keeps no registers for it. (`this` comes last so that the caller's arguments
    /// are already in place for the tail call.)
    ///
    /// # Safety
    /// `alloc`'s contract for `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_rest(layout: Layout, spent: Spent, fill: Fill, this: &Self) -> *mut u8 {
        let size = layout.size();
        if !this.core.finish_charge(spent, size, Op::Alloc) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract for `layout`; forwarded as is.
        let ptr = unsafe {
            match fill {
                Fill::Zeroed => this.inner.alloc_zeroed(layout),
                Fill::Uninit => this.inner.alloc(layout),
            }
        };
        if ptr.is_null() {
            this.core.inner_failed(size, Op::Alloc);
        }
        ptr
    }

    /// `dealloc` when the fast path could not take the bytes back: frees first, then
    /// returns the bytes (possibly to the shared budget, hence after the free).
    ///
    /// # Safety
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_rest(ptr: *mut u8, layout: Layout, spent: Spent, this: &Self) {
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by the
        // inner one) with `layout`.
        unsafe { this.inner.dealloc(ptr, layout) };
        this.core.finish_release(spent, layout.size(), Op::Dealloc);
    }
}

/// [`check_can_allocate`](LimitedAllocator::check_can_allocate) in general: with the mailbox
/// absorbed and this thread's credit of any epoch subtracted. Out of line and not generic,
/// so the common answer's path holds no code for the error, and one copy serves every
/// inner allocator.
#[cold]
#[inline(never)]
fn check_can_allocate_cold(core: &Core, bytes: usize) -> Result<(), LimitExceeded> {
    let limit = core.limit();
    let current = core.allocated_bytes_cold();
    if bytes <= limit.saturating_sub(current) {
        Ok(())
    } else {
        Err(LimitExceeded::new(bytes, limit, current))
    }
}

impl<A> fmt::Debug for LimitedAllocator<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedAllocator")
            .field("limit", &self.limit())
            .field("allocated", &self.allocated_bytes())
            .field("peak", &self.peak_bytes())
            .finish_non_exhaustive()
    }
}

// SAFETY: every method forwards the caller's layout and pointer unchanged to the inner
// allocator, so the inner allocator's guarantees (alignment, size, validity) are exactly
// what the caller gets. The accounting around it only decides whether to forward
// (returning null, which `GlobalAlloc` permits, when the budget refuses); it never
// allocates, locks, panics or unwinds.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LimitedAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        match self.core.charge_fast(size, Op::Alloc) {
            Spent::Yes => {
                // SAFETY: the caller upholds `alloc`'s contract for `layout`; forwarded as is.
                let ptr = unsafe { self.inner.alloc(layout) };
                if ptr.is_null() {
                    self.core.inner_failed(size, Op::Alloc);
                }
                ptr
            }
            // SAFETY: as above.
            spent => unsafe { Self::alloc_rest(layout, spent, Fill::Uninit, self) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        match self.core.charge_fast(size, Op::Alloc) {
            Spent::Yes => {
                // SAFETY: as in `alloc`.
                let ptr = unsafe { self.inner.alloc_zeroed(layout) };
                if ptr.is_null() {
                    self.core.inner_failed(size, Op::Alloc);
                }
                ptr
            }
            // SAFETY: as in `alloc`.
            spent => unsafe { Self::alloc_rest(layout, spent, Fill::Zeroed, self) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.core.release_fast(layout.size(), Op::Dealloc) {
            // The bytes went back into this thread's credit, which only this thread (busy
            // here) can spend, so the inner free can come last, as a tail call.
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by
            // the inner one, which we forwarded to) with `layout`.
            Spent::Yes => unsafe { self.inner.dealloc(ptr, layout) },
            // SAFETY: as above.
            spent => unsafe { Self::dealloc_rest(ptr, layout, spent, self) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_size = layout.size();
        if new_size > old_size {
            let growth = new_size - old_size;
            let charged = match self.core.charge_fast(growth, Op::Realloc) {
                Spent::Yes => true,
                // Out of the fast path: a refusal's line names the full new size too.
                spent => crate::budget::growing_to(new_size, || {
                    self.core.charge_rest(spent, growth, Op::Realloc)
                }),
            };
            if !charged {
                return core::ptr::null_mut(); // the old block stays valid and charged
            }
            // SAFETY: the caller upholds `realloc`'s contract; forwarded unchanged.
            let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
            if new.is_null() {
                self.core.inner_failed(growth, Op::Realloc);
            }
            new
        } else {
            // SAFETY: as above.
            let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                self.core.release(old_size - new_size, Op::Realloc);
            }
            new
        }
    }
}

/// What the inner allocator is asked for on the slow path: `alloc` or `alloc_zeroed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Uninit,
    Zeroed,
}
