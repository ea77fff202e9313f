//! Reservations that follow an async task: [`Reservation::scope`] and its future, [`Scoped`].

use crate::Reservation;
use core::fmt;
use core::future::Future;
use core::mem::ManuallyDrop;
use core::pin::Pin;
use core::task::{Context, Poll};

/// A future polled with a [`Reservation`] entered. Returned by [`Reservation::scope`].
///
/// An [entered](Reservation::enter) reservation belongs to a thread, but a request handled
/// by an async runtime is a task that may run on a different worker thread after every
/// `.await`. `Scoped` enters the reservation around each `poll` of the wrapped future, on
/// whichever thread polls it, and leaves it before `poll` returns. The reservation is
/// therefore entered exactly while the request's own code runs, and never while the same
/// thread runs another task.
///
/// # What is attributed to the reservation
/// Everything allocated through the reservation's allocator on the polling thread while
/// the wrapped future's `poll` (or its drop) runs:
/// - the request's own allocations, also across `.await`s and worker threads;
/// - whatever the runtime allocates on the request's behalf *inside* that poll: a task
///   spawned from it (its task cell, not what the spawned task does later), a timer or a
///   channel block first touched there.
///
/// Frees made inside a poll give back to the reservation (at most what it has in use),
/// whichever task allocated the block.
///
/// # What is not
/// - Work between polls: the runtime's scheduling, the server's connection buffers, what
///   other tasks allocate on the same worker thread in between.
/// - Tasks spawned from the request (wrap them in a scope of their own) and closures sent
///   to a blocking pool.
/// - Blocks allocated inside and freed elsewhere, for example a response body that the
///   server frees after writing it: the free goes to the shared budget; the reservation
///   still counts those bytes in [`used`](Reservation::used) while the scope lives (its
///   rule says when it lets them go), and they were part of its
///   [`peak_used`](Reservation::peak_used). Nothing drifts: the allocator's own count is
///   exact in every case; only the attribution to this request is approximate.
///
/// The reservation counts as entered from the scope's creation to its drop, also between
/// polls when no thread has it entered, so what a request allocated in one poll is still
/// its own (and given back when freed) in the next.
///
/// If the reservation cannot be entered on a thread (see [`Reservation::try_enter`]), that
/// poll runs unattributed rather than failing; [`Scoped::unentered_polls`] counts them.
///
/// `Send` when the wrapped future is (and the allocator is `Sync`), so it can be spawned
/// on a multi-thread runtime.
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<'r, A, F> {
    reservation: &'r Reservation<'r, A>,
    unentered_polls: u64,
    /// Dropped with the reservation entered, so the frees of a cancelled request give
    /// back to its budget too.
    future: EnteredFuture<F>,
}

impl<'a, A> Reservation<'a, A> {
    /// Wraps `future` so that every poll of it runs with this reservation entered, on
    /// whichever thread polls it: a per-request budget for async code. See [`Scoped`] for what is and is not attributed.
    ///
    /// With [`Overflow::Refuse`](crate::Overflow::Refuse), an allocation of the request past
    /// the reservation fails: fallible APIs (`Vec::try_reserve`) return an error, which the
    /// request can turn into a refusal, while the rest of the process goes on. Infallible
    /// allocations past it abort, as anywhere else; keep some slack in the reservation for
    /// them.
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, Overflow};
    /// use std::alloc::{GlobalAlloc, Layout, System};
    /// use std::future::Future;
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let budget = LimitedAllocator::new(System, 1 << 20);
    /// let request = budget.try_reserve(64 << 10)?;
    /// request.set_overflow(Overflow::Refuse);
    /// let layout = Layout::from_size_align(4096, 8).unwrap();
    /// let work = request.scope(async {
    ///     let p = unsafe { budget.alloc(layout) }; // drawn from `request`
    ///     std::future::ready(()).await;
    ///     unsafe { budget.dealloc(p, layout) };    // given back to it
    /// });
    /// let mut work = std::pin::pin!(work);
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(work.as_mut().poll(&mut cx).is_ready());
    /// assert_eq!((request.used(), request.peak_used()), (0, 4096));
    /// # Ok::<(), limited_allocator::LimitExceeded>(())
    /// ```
    pub fn scope<F: Future>(&self, future: F) -> Scoped<'_, A, F> {
        Scoped {
            reservation: self,
            unentered_polls: 0,
            future: EnteredFuture::new(future, self),
        }
    }
}

impl<A, F> Scoped<'_, A, F> {
    /// Polls on which the reservation could not be entered (the allocator has no
    /// per-thread slot, or the thread already had 16 reservations entered), so they ran
    /// unattributed.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new_exact(std::alloc::System, 1 << 20);
    /// let r = a.try_reserve(10).unwrap();
    /// let mut s = std::pin::pin!(r.scope(async {}));
    /// let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// assert!(std::future::Future::poll(s.as_mut(), &mut cx).is_ready());
    /// assert_eq!(s.unentered_polls(), 1); // new_exact has no per-thread slot
    /// ```
    pub fn unentered_polls(&self) -> u64 {
        self.unentered_polls
    }
}

/// Runs `f` with `reservation` entered on this thread if it can be; says whether it was.
pub(crate) fn entered<A, T>(reservation: &Reservation<'_, A>, f: impl FnOnce() -> T) -> (T, bool) {
    match reservation.try_enter() {
        Ok(_guard) => (f(), true),
        Err(_) => (f(), false),
    }
}

/// A future polled and dropped with a reservation entered. It is dropped inside the poll
/// that completes it, while still entered, so a finished request costs one enter and
/// leave less; a future dropped before it finished is dropped entered by its owner's
/// `Drop` ([`drop_in`](Self::drop_in)).
pub(crate) struct EnteredFuture<F> {
    future: ManuallyDrop<F>,
    live: bool,
}

impl<F> EnteredFuture<F> {
    /// Wraps `future`, holding `reservation` as entered until the future is dropped, so
    /// that what it allocated in one poll is still its own in the next (the reservation is
    /// left on every thread between polls, which would otherwise let `used` go).
    pub(crate) fn new<A>(future: F, reservation: &Reservation<'_, A>) -> Self {
        reservation.hold();
        Self {
            future: ManuallyDrop::new(future),
            live: true,
        }
    }

    /// Holds `reservation` (see [`new`](Self::new)), then makes the future with it entered
    /// (a service's `call`, which may allocate the future's state).
    pub(crate) fn start<A>(reservation: &Reservation<'_, A>, make: impl FnOnce() -> F) -> Self {
        reservation.hold();
        let (future, _) = entered(reservation, make);
        Self {
            future: ManuallyDrop::new(future),
            live: true,
        }
    }

    /// Drops the future (if not yet dropped) with `reservation` entered.
    pub(crate) fn drop_in<A>(&mut self, reservation: &Reservation<'_, A>) {
        if self.live {
            self.live = false;
            let future = &mut self.future;
            // SAFETY: dropped once (`live` is now false), in place: pinning allows that.
            entered(reservation, || unsafe { ManuallyDrop::drop(future) });
            reservation.unhold();
        }
    }
}

impl<F: Future> EnteredFuture<F> {
    /// Polls the future with `reservation` entered; says whether it was entered.
    ///
    /// # Panics
    /// If polled again after it completed.
    pub(crate) fn poll_in<A>(
        self: Pin<&mut Self>,
        reservation: &Reservation<'_, A>,
        cx: &mut Context<'_>,
    ) -> (Poll<F::Output>, bool) {
        // SAFETY: `future` is structurally pinned: never moved out of `self`, only dropped
        // in place (here or in `drop_in`/`Drop`), and the type is `Unpin` only when `F` is.
        let this = unsafe { self.get_unchecked_mut() };
        assert!(this.live, "a scoped future was polled after it completed");
        let future = &mut this.future;
        let live = &mut this.live;
        let (poll, was_entered) = entered(reservation, || {
            // SAFETY: as above: `future` stays where it is until dropped.
            let poll = unsafe { Pin::new_unchecked(&mut **future) }.poll(cx);
            if poll.is_ready() {
                *live = false;
                // SAFETY: dropped once (`live` is now false), in place.
                unsafe { ManuallyDrop::drop(future) };
            }
            poll
        });
        if poll.is_ready() {
            reservation.unhold();
        }
        (poll, was_entered)
    }
}

impl<F> Drop for EnteredFuture<F> {
    fn drop(&mut self) {
        if self.live {
            // Only reached when the owner did not call `drop_in` (it always does).
            // SAFETY: dropped once, in place.
            unsafe { ManuallyDrop::drop(&mut self.future) }
        }
    }
}

impl<A, F: Future> Future for Scoped<'_, A, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned (see `EnteredFuture::poll_in`); the other
        // fields are plain data, never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        let (poll, was_entered) = future.poll_in(this.reservation, cx);
        this.unentered_polls += u64::from(!was_entered);
        poll
    }
}

impl<A, F> Drop for Scoped<'_, A, F> {
    fn drop(&mut self) {
        self.future.drop_in(self.reservation);
    }
}

impl<A, F> fmt::Debug for Scoped<'_, A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("reservation", self.reservation)
            .field("unentered_polls", &self.unentered_polls)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LimitedAllocator;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn a_scoped_future_is_send_when_its_future_is() {
        let a = LimitedAllocator::new(std::alloc::System, 1 << 20);
        let r = a.try_reserve(10).unwrap();
        let s = r.scope(async { 1 });
        assert_send(&s);
    }

    #[test]
    #[should_panic(expected = "polled after it completed")]
    fn polling_after_completion_panics_instead_of_touching_a_dropped_future() {
        let a = LimitedAllocator::new(std::alloc::System, 1 << 20);
        let r = a.try_reserve(10).unwrap();
        let mut s = std::pin::pin!(r.scope(async { 1 }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(s.as_mut().poll(&mut cx), Poll::Ready(1));
        let _ = s.as_mut().poll(&mut cx);
    }
}
