//! A `tower` layer that gives every request a memory budget and sheds load before the
//! limit (feature `tower`).
//!
//! For each request, [`Budget`] (the service [`BudgetLayer`] makes):
//! 1. refuses it with [`BudgetError::Shed`] when the allocator's [pressure
//!    level](crate::LimitedAllocator::pressure_level), or the [monitor's](crate::monitor::MonitorHandle)
//!    combined level, is at or above the configured [`shed_at`](BudgetLayer::shed_at) level;
//! 2. takes a [`Reservation`] of the request's size (a fixed default, or computed from the
//!    request by [`size_with`](BudgetLayer::size_with)); if the budget cannot give it, or
//!    the allocator's level with it charged is at or above `shed_at`, the request is shed
//!    too (so what admitted requests reserve stays below the shedding level);
//! 3. runs the inner service's `call` and its future with that reservation entered on every
//!    poll (the [`Reservation::scope`] mechanism), under the configured [`Overflow`];
//! 4. records the request's peak (and the allocations refused inside it) in
//!    [`RequestStats`], which the Prometheus collector exports
//!    ([`PrometheusCollector::with_requests`](crate::metrics::PrometheusCollector::with_requests)).
//!
//! # Why shed before the limit
//! At the limit, the runtime's and the server's own *infallible* allocations (task cells,
//! connection buffers, header maps) are refused too, and a refused infallible allocation
//! aborts the process. Per-request reservations bound what admitted requests take, but the
//! runtime needs room of its own beside them; shedding at [`PressureLevel::High`] (80 % of
//! the limit by default) leaves a fifth of the budget to it. Measured under a 64 MiB limit
//! with 64 connections (`docs/services.md`): without the layer the server aborted in 3 runs
//! of 3; the server's own memory under the burst was 2.5-2.9 MiB, plus up to one request
//! per worker thread being admitted at once, about 7 MiB in all: more than Critical's
//! 3.2 MiB, well within High's 12.8 MiB. The guarantee holds for requests that cannot
//! grow past their reservation ([`Overflow::Refuse`]); under [`Overflow::Grow`] (the
//! default) a request that keeps allocating fallibly can still fill the budget.
//!
//! ```
//! use limited_allocator::tower::{BudgetError, BudgetLayer};
//! use limited_allocator::{LimitedAllocator, Overflow, PressureLevel};
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 20);
//!
//! let layer = BudgetLayer::new(&BUDGET, 64 << 10)
//!     .size_with(|req: &usize| *req) // this service's requests say what they need
//!     .overflow(Overflow::Refuse)
//!     .shed_at(PressureLevel::High);
//! let mut svc = layer.layer(TryAlloc); // a service that allocates what it is asked
//! let shed = block_on(svc.call(2 << 20)).unwrap_err(); // more than the whole budget
//! assert!(matches!(shed, BudgetError::Shed(_)));
//! assert!(block_on(svc.call(1000)).unwrap());
//! assert_eq!(layer.stats().snapshot().completed, 1);
//! # struct TryAlloc;
//! # impl Service<usize> for TryAlloc {
//! #     type Response = bool;
//! #     type Error = std::convert::Infallible;
//! #     type Future = std::future::Ready<Result<bool, Self::Error>>;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
//! #         std::task::Poll::Ready(Ok(()))
//! #     }
//! #     fn call(&mut self, n: usize) -> Self::Future {
//! #         std::future::ready(Ok(Vec::<u8>::new().try_reserve(n).is_ok()))
//! #     }
//! # }
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

use crate::metrics::{RequestStats, ShedReason};
use crate::monitor::MonitorHandle;
use crate::scope::EnteredFuture;
use crate::units::ByteSize;
use crate::{LimitedAllocator, Overflow, PressureLevel, Reservation};
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::alloc::System;
use std::sync::Arc;
use tower_layer::Layer;
use tower_service::Service;

/// The level at which [`BudgetLayer`] sheds by default: [`PressureLevel::High`], the last
/// level whose remaining share of a 64 MiB budget (a fifth) covered the runtime's measured
/// need (see the [module docs](self)).
pub const DEFAULT_SHED_AT: PressureLevel = PressureLevel::High;

/// Every request gets the same size: what [`BudgetLayer::new`] sizes with.
///
/// ```
/// use limited_allocator::tower::{Fixed, RequestSize};
/// assert_eq!(Fixed(4096).size(&"any request"), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed(pub usize);

/// How many bytes to reserve for a request.
///
/// Implemented by [`Fixed`] and by any `Fn(&Req) -> usize`.
///
/// ```
/// use limited_allocator::tower::RequestSize;
/// let by_len = |r: &String| r.len() * 2;
/// assert_eq!(by_len.size(&"abc".to_string()), 6);
/// ```
pub trait RequestSize<Req> {
    /// Bytes to reserve for `request`.
    fn size(&self, request: &Req) -> usize;
}

impl<Req> RequestSize<Req> for Fixed {
    fn size(&self, _: &Req) -> usize {
        self.0
    }
}

impl<Req, F: Fn(&Req) -> usize> RequestSize<Req> for F {
    fn size(&self, request: &Req) -> usize {
        self(request)
    }
}

/// Everything but the sizing: cheap to clone into each service.
struct Settings<A: 'static> {
    allocator: &'static LimitedAllocator<A>,
    overflow: Overflow,
    shed_at: PressureLevel,
    monitor: Option<MonitorHandle>,
    stats: RequestStats,
}

impl<A> Clone for Settings<A> {
    fn clone(&self) -> Self {
        Self {
            allocator: self.allocator,
            overflow: self.overflow,
            shed_at: self.shed_at,
            monitor: self.monitor.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// A [`Layer`] that wraps a service in [`Budget`]. See the [module docs](self).
///
/// ```
/// use limited_allocator::{tower::BudgetLayer, LimitedAllocator, PressureLevel};
/// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
/// let layer = BudgetLayer::new(&A, 1 << 20).shed_at(PressureLevel::Medium);
/// assert_eq!(layer.shed_level(), PressureLevel::Medium);
/// ```
pub struct BudgetLayer<A: 'static = System, S = Fixed> {
    settings: Settings<A>,
    size: Arc<S>,
}

impl<A, S> Clone for BudgetLayer<A, S> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            size: Arc::clone(&self.size),
        }
    }
}

impl<A, S> fmt::Debug for BudgetLayer<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("BudgetLayer")
            .field("overflow", &s.overflow)
            .field("shed_at", &s.shed_at)
            .field("monitor", &s.monitor.is_some())
            .field("stats", &s.stats)
            .finish_non_exhaustive()
    }
}

impl<A> BudgetLayer<A, Fixed> {
    /// Reserves `default_bytes` for every request from `allocator`, with
    /// [`Overflow::Grow`], shedding at [`DEFAULT_SHED_AT`], no monitor, fresh
    /// [`RequestStats`].
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator, Overflow};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(BudgetLayer::new(&A, 1 << 20).overflow_policy(), Overflow::Grow);
    /// ```
    pub fn new(allocator: &'static LimitedAllocator<A>, default_bytes: usize) -> Self {
        Self {
            settings: Settings {
                allocator,
                overflow: Overflow::Grow,
                shed_at: DEFAULT_SHED_AT,
                monitor: None,
                stats: RequestStats::new(),
            },
            size: Arc::new(Fixed(default_bytes)),
        }
    }
}

impl<A, S> BudgetLayer<A, S> {
    /// Sizes each request's reservation with `size` (a closure over the request, or any
    /// [`RequestSize`]) instead of the fixed default.
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let layer = BudgetLayer::new(&A, 0).size_with(|body: &Vec<u8>| 4 * body.len());
    /// ```
    pub fn size_with<T>(self, size: T) -> BudgetLayer<A, T> {
        BudgetLayer {
            settings: self.settings,
            size: Arc::new(size),
        }
    }

    /// What a request's allocations do past its reservation (default [`Overflow::Grow`]:
    /// from the shared budget). With [`Overflow::Refuse`], a request cannot take more than
    /// its reservation: its fallible allocations past it fail, and its infallible ones
    /// abort, so size the reservation with slack for those.
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator, Overflow};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let layer = BudgetLayer::new(&A, 1 << 20).overflow(Overflow::Refuse);
    /// assert_eq!(layer.overflow_policy(), Overflow::Refuse);
    /// ```
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.settings.overflow = overflow;
        self
    }

    /// Sheds requests while the allocator's (or the monitor's) level is at or above
    /// `level` (default [`DEFAULT_SHED_AT`]). [`PressureLevel::Low`] sheds everything.
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator, PressureLevel};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let layer = BudgetLayer::new(&A, 1 << 20).shed_at(PressureLevel::Critical);
    /// assert_eq!(layer.shed_level(), PressureLevel::Critical);
    /// ```
    pub fn shed_at(mut self, level: PressureLevel) -> Self {
        self.settings.shed_at = level;
        self
    }

    /// Sheds on the monitor's combined level too (RSS, cgroup, PSI, system memory: what
    /// the allocator cannot see).
    ///
    /// ```
    /// use limited_allocator::{monitor::MemoryMonitor, tower::BudgetLayer, LimitedAllocator};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let monitor = MemoryMonitor::builder().build()?;
    /// let layer = BudgetLayer::new(&A, 1 << 20).monitor(monitor.handle());
    /// # Ok::<(), limited_allocator::monitor::MonitorError>(())
    /// ```
    pub fn monitor(mut self, monitor: MonitorHandle) -> Self {
        self.settings.monitor = Some(monitor);
        self
    }

    /// Records into `stats` (shared with a collector, or with other layers) instead of
    /// the layer's own fresh counters.
    ///
    /// ```
    /// use limited_allocator::{metrics::RequestStats, tower::BudgetLayer, LimitedAllocator};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let stats = RequestStats::new();
    /// let layer = BudgetLayer::new(&A, 1 << 20).stats_into(stats.clone());
    /// ```
    pub fn stats_into(mut self, stats: RequestStats) -> Self {
        self.settings.stats = stats;
        self
    }

    /// The counters this layer records into (a clone shares them).
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(BudgetLayer::new(&A, 1).stats().snapshot().completed, 0);
    /// ```
    pub fn stats(&self) -> RequestStats {
        self.settings.stats.clone()
    }

    /// The configured shedding level.
    ///
    /// ```
    /// use limited_allocator::{tower::{BudgetLayer, DEFAULT_SHED_AT}, LimitedAllocator};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(BudgetLayer::new(&A, 1).shed_level(), DEFAULT_SHED_AT);
    /// ```
    pub fn shed_level(&self) -> PressureLevel {
        self.settings.shed_at
    }

    /// The configured [`Overflow`].
    ///
    /// ```
    /// use limited_allocator::{tower::BudgetLayer, LimitedAllocator, Overflow};
    /// static A: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(BudgetLayer::new(&A, 1).overflow_policy(), Overflow::Grow);
    /// ```
    pub fn overflow_policy(&self) -> Overflow {
        self.settings.overflow
    }
}

impl<Svc, A, S> Layer<Svc> for BudgetLayer<A, S> {
    type Service = Budget<Svc, A, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        Budget {
            inner,
            settings: self.settings.clone(),
            size: Arc::clone(&self.size),
        }
    }
}

/// The service [`BudgetLayer`] wraps around an inner one.
pub struct Budget<Svc, A: 'static = System, S = Fixed> {
    inner: Svc,
    settings: Settings<A>,
    size: Arc<S>,
}

impl<Svc: Clone, A, S> Clone for Budget<Svc, A, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            size: Arc::clone(&self.size),
        }
    }
}

impl<Svc: fmt::Debug, A, S> fmt::Debug for Budget<Svc, A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A request refused before it ran, with the numbers that made the layer refuse it.
///
/// ```
/// use limited_allocator::{metrics::ShedReason, tower::Shed, PressureLevel};
/// let s = Shed {
///     reason: ShedReason::AllocatorLevel,
///     level: PressureLevel::High,
///     shed_at: PressureLevel::High,
///     requested: 65536,
///     allocated: 55 << 20,
///     limit: 64 << 20,
/// };
/// assert_eq!(
///     s.to_string(),
///     "request shed (allocator_level): pressure high at or above high; \
///      64.0 KiB requested, 55.0 MiB of 64.0 MiB allocated"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "request shed ({reason}): pressure {level} {}{shed_at}; {} requested, {} of {} allocated",
    if *level >= *shed_at { "at or above " } else { "below " },
    ByteSize(*requested),
    ByteSize(*allocated),
    ByteSize(*limit)
)]
pub struct Shed {
    /// What refused it.
    pub reason: ShedReason,
    /// The level that refused it (for [`ShedReason::Reservation`], the allocator's level).
    pub level: PressureLevel,
    /// The configured shedding level.
    pub shed_at: PressureLevel,
    /// The reservation the request would have taken, in bytes.
    pub requested: usize,
    /// The allocator's charged bytes at the refusal (this request's reservation, if it
    /// was taken, already given back).
    pub allocated: usize,
    /// The allocator's limit.
    pub limit: usize,
}

/// What a [`Budget`] service fails with: a shed request, or the inner service's error.
///
/// ```
/// use limited_allocator::tower::BudgetError;
/// let e: BudgetError<std::io::Error> = BudgetError::Inner(std::io::Error::other("boom"));
/// assert_eq!(e.to_string(), "boom");
/// assert!(e.shed().is_none());
/// ```
#[derive(Debug, thiserror::Error)]
pub enum BudgetError<E> {
    /// Refused before it ran (map it to `503 Service Unavailable`).
    #[error(transparent)]
    Shed(Shed),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> BudgetError<E> {
    /// The shed request's numbers, if it was shed.
    ///
    /// ```
    /// use limited_allocator::tower::BudgetError;
    /// assert!(BudgetError::Inner(std::fmt::Error).shed().is_none());
    /// ```
    pub fn shed(&self) -> Option<&Shed> {
        match self {
            Self::Shed(s) => Some(s),
            Self::Inner(_) => None,
        }
    }
}

impl<A> Settings<A> {
    fn shed(&self, reason: ShedReason, level: PressureLevel, requested: usize) -> Shed {
        self.stats.record_shed(reason);
        Shed {
            reason,
            level,
            shed_at: self.shed_at,
            requested,
            allocated: self.allocator.allocated_bytes(),
            limit: self.allocator.limit(),
        }
    }

    /// The reservation for a request of `size` bytes, or why it is shed.
    fn admit(&self, size: usize) -> Result<Reservation<'static, A>, Shed>
    where
        A: std::alloc::GlobalAlloc,
    {
        let level = self.allocator.pressure_level();
        if level >= self.shed_at {
            return Err(self.shed(ShedReason::AllocatorLevel, level, size));
        }
        if let Some(m) = &self.monitor {
            let combined = m.level();
            if combined >= self.shed_at {
                return Err(self.shed(ShedReason::MonitorLevel, combined, size));
            }
        }
        let reservation = self
            .allocator
            .try_reserve(size)
            .map_err(|_| self.shed(ShedReason::Reservation, level, size))?;
        // Checked again with the reservation charged: requests admitted together cannot
        // take the budget past the shedding level between them (only the few being
        // admitted at this instant, one per thread calling the service, may pass it,
        // and they give it back here).
        let level = self.allocator.pressure_level();
        if level >= self.shed_at {
            drop(reservation);
            return Err(self.shed(ShedReason::AllocatorLevel, level, size));
        }
        reservation.set_overflow(self.overflow);
        Ok(reservation)
    }
}

impl<Svc, A, S, Req> Service<Req> for Budget<Svc, A, S>
where
    Svc: Service<Req>,
    A: std::alloc::GlobalAlloc + Sync,
    S: RequestSize<Req>,
{
    type Response = Svc::Response;
    type Error = BudgetError<Svc::Error>;
    type Future = ResponseFuture<Svc::Future, A>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BudgetError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let size = self.size.size(&request);
        let reservation = match self.settings.admit(size) {
            Ok(r) => r,
            Err(shed) => return ResponseFuture::shed(shed),
        };
        let inner = &mut self.inner;
        ResponseFuture {
            state: State::Running {
                future: EnteredFuture::start(&reservation, || inner.call(request)),
                reservation,
                stats: self.settings.stats.clone(),
            },
        }
    }
}

/// The future of a [`Budget`] request: the inner future polled with the request's
/// reservation entered, or a shed request's error.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F, A: 'static = System> {
    state: State<F, A>,
}

enum State<F, A: 'static> {
    Running {
        /// Polled and dropped with the reservation entered.
        future: EnteredFuture<F>,
        reservation: Reservation<'static, A>,
        stats: RequestStats,
    },
    Shed(Option<Shed>),
}

impl<F, A> ResponseFuture<F, A> {
    fn shed(shed: Shed) -> Self {
        Self {
            state: State::Shed(Some(shed)),
        }
    }
}

impl<F, A> fmt::Debug for ResponseFuture<F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Running { reservation, .. } => f
                .debug_struct("ResponseFuture")
                .field("reservation", reservation)
                .finish_non_exhaustive(),
            State::Shed(shed) => f.debug_tuple("ResponseFuture").field(shed).finish(),
        }
    }
}

impl<F, A, T, E> Future for ResponseFuture<F, A>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, BudgetError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned (see `EnteredFuture::poll_in`): the state
        // never changes variant after construction; the other fields are never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        match &mut this.state {
            State::Running {
                future,
                reservation,
                ..
            } => {
                // SAFETY: as above.
                let future = unsafe { Pin::new_unchecked(future) };
                let (poll, _) = future.poll_in(reservation, cx);
                poll.map(|r| r.map_err(BudgetError::Inner))
            }
            State::Shed(shed) => match shed.take() {
                Some(s) => Poll::Ready(Err(BudgetError::Shed(s))),
                None => panic!("ResponseFuture polled after it completed"),
            },
        }
    }
}

impl<F, A> Drop for ResponseFuture<F, A> {
    fn drop(&mut self) {
        if let State::Running {
            future,
            reservation,
            stats,
        } = &mut self.state
        {
            future.drop_in(reservation);
            stats.record(reservation);
        }
    }
}
