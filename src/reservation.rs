//! Reservations: headroom held race-free until dropped, and per-operation budgets.
//!
//! [`LimitedAllocator::try_reserve`](crate::LimitedAllocator::try_reserve) charges the
//! requested bytes to the budget at once, so nothing else can take them; the
//! [`Reservation`] guard gives them back when dropped. It can grow and shrink.
//!
//! A reservation can also be **entered** on a thread ([`Reservation::enter`]): while the
//! guard lives, that thread's allocations from this allocator are served from the
//! reservation's headroom first, and its frees go back to it. That turns a pre-flight
//! estimate into a per-query budget. Past its headroom, an entered reservation either grows
//! from the shared budget ([`Overflow::Grow`], the default) or refuses ([`Overflow::Refuse`]).
//!
//! Bytes allocated inside an entered reservation stay charged to the allocator after the
//! reservation is dropped (they are live memory); only the unspent headroom is released.
//! So memory allocated inside and freed outside, or the reverse, never drifts the count.
//! What the reservation itself counts as [`used`](Reservation::used) follows a rule of its
//! own, documented there: it is let go when the reservation is left everywhere.
//!
//! With [`Overflow::Refuse`], a request past the reservation's headroom is the
//! reservation's refusal: counted in [`Reservation::refusals`], not in the allocator's
//! `refusals`, with no recall of other threads' credit (the shared budget had no part in
//! it), and its stderr line says it was the reservation's budget. Under `Overflow::Grow`,
//! a request the shared budget cannot cover either is the allocator's refusal too.

pub use crate::budget::Overflow;
use crate::budget::{Core, Report, ReservationState};
use crate::error::LimitExceeded;
use crate::LimitedAllocator;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use std::alloc::{GlobalAlloc, System};

/// Headroom charged to a [`LimitedAllocator`] and held until this guard drops.
///
/// Created by [`LimitedAllocator::try_reserve`]. [`size`](Self::size) is what the
/// reservation accounts for: its unspent [`headroom`](Self::headroom) plus what was
/// allocated through it while [entered](Self::enter).
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use std::alloc::System;
///
/// let budget = LimitedAllocator::new(System, 1000);
/// let join = budget.try_reserve(600)?;
/// assert_eq!(budget.available_bytes(), 400);
/// assert!(budget.try_reserve(500).is_err()); // the 600 are held
/// join.grow(100)?;
/// join.shrink(300);
/// assert_eq!(join.size(), 400);
/// drop(join);
/// assert_eq!(budget.allocated_bytes(), 0);
/// # Ok::<(), limited_allocator::LimitExceeded>(())
/// ```
pub struct Reservation<'a, A = System> {
    owner: &'a LimitedAllocator<A>,
    state: NonNull<ReservationState>,
}

// SAFETY: the state is only reached through atomics and its reference count; the owner is a
// shared reference, which is Send/Sync exactly when the allocator is Sync.
unsafe impl<A: Sync> Send for Reservation<'_, A> {}
// SAFETY: as above: every method takes `&self` and works through atomics.
unsafe impl<A: Sync> Sync for Reservation<'_, A> {}

impl<'a, A> Reservation<'a, A> {
    /// Charges `bytes` to `owner` and wraps them in a guard.
    pub(crate) fn new(owner: &'a LimitedAllocator<A>, bytes: usize) -> Result<Self, LimitExceeded> {
        let core = owner.core();
        let refused = |core: &Core| {
            core.refuse(bytes, Report::Silent);
            LimitExceeded::new(bytes, core.limit(), core.allocated_bytes())
        };
        let state = ReservationState::allocate(bytes).ok_or_else(|| refused(core))?;
        if core.reserve(bytes).is_err() {
            // SAFETY: we own the only reference and do not use `state` again.
            unsafe { ReservationState::release(state) };
            return Err(refused(core));
        }
        core.add_reserved(bytes);
        Ok(Self { owner, state })
    }

    fn state(&self) -> &ReservationState {
        // SAFETY: this guard owns a reference to the state until it drops.
        unsafe { self.state.as_ref() }
    }

    /// Bytes this reservation accounts for: unspent headroom plus bytes allocated through
    /// it while entered.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(40).unwrap().size(), 40);
    /// ```
    pub fn size(&self) -> usize {
        self.headroom() + self.used()
    }

    /// Charged bytes not yet spent by allocations: what [`shrink`](Self::shrink) can give
    /// back and what dropping the guard releases.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(40).unwrap().headroom(), 40);
    /// ```
    pub fn headroom(&self) -> usize {
        self.state().held()
    }

    /// Bytes allocated through the reservation while entered and not yet freed while
    /// entered.
    ///
    /// The rule: a block belongs to the reservation from its allocation inside until it is
    /// freed inside (by any thread entered in it) or until the reservation is left
    /// everywhere (its last [`EnterGuard`] drops), whichever comes first. A block freed
    /// outside (by a thread not entered in it) cannot be seen, so it stays counted until
    /// then; after that, what is still live is plain memory of the allocator (still
    /// charged, exactly), and `used` starts again from 0. So `used` never grows across
    /// enterings; within one, blocks handed to other threads and freed there keep it high
    /// (bounded by what was allocated inside). [`peak_used`](Self::peak_used) keeps the
    /// highest value.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(40).unwrap().used(), 0);
    /// ```
    pub fn used(&self) -> usize {
        self.state().used()
    }

    /// The highest [`used`](Self::used) so far: how much the operation really needed.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(40).unwrap().peak_used(), 0);
    /// ```
    pub fn peak_used(&self) -> usize {
        self.state().peak_used()
    }

    /// Allocations refused while entered under [`Overflow::Refuse`] (or because the shared
    /// budget could not cover the overflow either).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(40).unwrap().refusals(), 0);
    /// ```
    pub fn refusals(&self) -> u64 {
        self.state().refusals()
    }

    /// Chooses what entered allocations do past the headroom (default [`Overflow::Grow`]).
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, Overflow};
    /// let a = LimitedAllocator::new(std::alloc::System, 100);
    /// let r = a.try_reserve(40).unwrap();
    /// r.set_overflow(Overflow::Refuse);
    /// assert_eq!(r.overflow(), Overflow::Refuse);
    /// ```
    pub fn set_overflow(&self, overflow: Overflow) {
        self.state().set_overflow(overflow);
    }

    /// The current [`Overflow`] policy.
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, Overflow};
    /// let a = LimitedAllocator::new(std::alloc::System, 100);
    /// assert_eq!(a.try_reserve(1).unwrap().overflow(), Overflow::Grow);
    /// ```
    pub fn overflow(&self) -> Overflow {
        self.state().overflow()
    }

    /// Adds `additional` bytes of headroom from the shared budget, race-free.
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// let r = a.try_reserve(40).unwrap();
    /// r.grow(60).unwrap();
    /// let err = r.grow(1).unwrap_err();
    /// assert_eq!((err.requested, err.current, err.limit), (1, 100, 100));
    /// ```
    pub fn grow(&self, additional: usize) -> Result<(), LimitExceeded> {
        let core = self.owner.core();
        if core.reserve(additional).is_err() {
            core.refuse(additional, Report::Silent);
            return Err(LimitExceeded::new(
                additional,
                core.limit(),
                core.allocated_bytes(),
            ));
        }
        self.add_headroom(additional);
        Ok(())
    }

    /// Adds `additional` bytes of headroom, past the limit if need be (Arrow's infallible
    /// `MemoryReservation::resize`): charged anyway, so the budget reads overfilled and the
    /// next fallible request is refused.
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))]
    pub(crate) fn grow_overfill(&self, additional: usize) {
        let core = self.owner.core();
        if core.reserve(additional).is_err() {
            core.charge_unchecked(additional);
        }
        self.add_headroom(additional);
    }

    /// Adds bytes already charged to the budget to this reservation's headroom.
    fn add_headroom(&self, bytes: usize) {
        // A live reservation (this guard is borrowed) is never closed.
        self.state().add_held(bytes);
        self.owner.core().add_reserved(bytes);
    }

    /// Gives up to `bytes` of unspent headroom back to the shared budget; returns how many
    /// were given back (at most [`headroom`](Self::headroom)).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// let r = a.try_reserve(40).unwrap();
    /// assert_eq!(r.shrink(50), 40);
    /// assert_eq!(a.allocated_bytes(), 0);
    /// ```
    pub fn shrink(&self, bytes: usize) -> usize {
        let given = self.state().take_held(bytes);
        let core = self.owner.core();
        core.uncharge(given);
        core.sub_reserved(given);
        given
    }

    /// Grows or shrinks so that [`size`](Self::size) becomes `new_size` (shrinking stops at
    /// the bytes in use).
    ///
    /// ```
    /// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 100);
    /// let r = a.try_reserve(10).unwrap();
    /// r.resize(70).unwrap();
    /// assert_eq!(r.size(), 70);
    /// r.resize(5).unwrap();
    /// assert_eq!(a.allocated_bytes(), 5);
    /// ```
    pub fn resize(&self, new_size: usize) -> Result<(), LimitExceeded> {
        let size = self.size();
        if new_size > size {
            self.grow(new_size - size)
        } else {
            self.shrink(size - new_size);
            Ok(())
        }
    }

    /// Enters the reservation on this thread: until the guard drops, this thread's
    /// allocations from the owning allocator draw from the reservation's headroom first and
    /// its frees give back to it. Guards nest; the same reservation may be entered on
    /// several threads at once.
    ///
    /// Guards may be dropped in any order: a guard dropped while guards entered after it
    /// are alive stops counting at once for nothing (those inner guards stay in force), and
    /// once every guard is dropped the thread is not entered in anything, in whatever order
    /// they went.
    ///
    /// # Panics
    /// If the allocator has no slot in the process-wide table (more than 64 allocators with
    /// a thread cache are alive at once, or it was built with
    /// [`new_exact`](LimitedAllocator::new_exact)), or this thread already has 16
    /// reservations entered; use [`try_enter`](Self::try_enter) to handle that case.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use std::alloc::{GlobalAlloc, Layout, System};
    ///
    /// let budget = LimitedAllocator::new(System, 1 << 20);
    /// let query = budget.try_reserve(4096)?;
    /// let layout = Layout::from_size_align(1000, 8).unwrap();
    /// {
    ///     let _inside = query.enter();
    ///     let p = unsafe { budget.alloc(layout) }; // drawn from the reservation
    ///     assert_eq!((query.used(), query.headroom()), (1000, 3096));
    ///     unsafe { budget.dealloc(p, layout) };   // given back to it
    /// }
    /// assert_eq!((query.used(), query.peak_used()), (0, 1000));
    /// # Ok::<(), limited_allocator::LimitExceeded>(())
    /// ```
    pub fn enter(&self) -> EnterGuard<'_> {
        match self.try_enter() {
            Ok(guard) => guard,
            Err(e) => panic!("{e}"),
        }
    }

    /// Holds the reservation as entered between an async task's polls, until
    /// [`unhold`](Self::unhold): what [`scope`](Self::scope) keeps from its creation to its
    /// drop. It counts as one more frame, so the reservation is not "left everywhere"
    /// (which lets `used` go) while no thread has it entered between two polls.
    pub(crate) fn hold(&self) {
        self.state().entered();
    }

    /// Gives back a [`hold`](Self::hold); the last frame or hold to go lets `used` go.
    pub(crate) fn unhold(&self) {
        self.state().left();
    }

    /// Like [`enter`](Self::enter), but says so instead of panicking when the allocator
    /// cannot serve entered reservations.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// let exact = LimitedAllocator::new_exact(std::alloc::System, 1000);
    /// let r = exact.try_reserve(10).unwrap();
    /// assert!(r.try_enter().is_err());
    /// ```
    pub fn try_enter(&self) -> Result<EnterGuard<'_>, EnterError> {
        let core = self.owner.core();
        let ptr = self.state.as_ptr().cast_const();
        self.state().retain();
        match core.enter(ptr) {
            Some(frame) => {
                self.state().entered(); // the frame holds it now
                Ok(EnterGuard {
                    core,
                    frame,
                    _not_send: PhantomData,
                })
            }
            None => {
                // SAFETY: we own the reference taken just above and drop it here.
                unsafe { ReservationState::release(self.state) };
                Err(EnterError)
            }
        }
    }
}

impl<A> fmt::Debug for Reservation<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("headroom", &self.headroom())
            .field("used", &self.used())
            .field("peak_used", &self.peak_used())
            .field("overflow", &self.overflow())
            .finish()
    }
}

impl<A> Drop for Reservation<'_, A> {
    fn drop(&mut self) {
        let held = self.state().close();
        let core = self.owner.core();
        core.uncharge(held);
        core.sub_reserved(held);
        // SAFETY: the guard owns one reference and never touches the state again.
        unsafe { ReservationState::release(self.state) };
    }
}

/// A reservation could not be entered: its allocator has no slot in the process-wide table
/// (it was built with [`LimitedAllocator::new_exact`], or more than 64 allocators with a
/// thread cache are alive at once), or the thread already has 16 reservations entered.
///
/// ```
/// let exact = limited_allocator::LimitedAllocator::new_exact(std::alloc::System, 100);
/// let r = exact.try_reserve(10).unwrap();
/// let err: limited_allocator::EnterError = r.try_enter().unwrap_err();
/// assert!(err.to_string().starts_with("cannot enter the reservation"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot enter the reservation: its allocator has no per-thread slot (built with \
     new_exact, or more than 64 allocators with a thread cache are alive), or this thread \
     already has 16 reservations entered"
)]
pub struct EnterError;

/// While alive, this thread's allocations are served from the entered reservation.
/// Returned by [`Reservation::enter`]; not `Send` (entering is per thread).
///
/// ```
/// let a = limited_allocator::LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let r = a.try_reserve(4096).unwrap();
/// let outer = r.enter();
/// let inner = r.enter(); // guards nest
/// drop(inner);
/// drop(outer);
/// ```
#[must_use = "the reservation is left as soon as the guard drops"]
pub struct EnterGuard<'r> {
    core: &'r Core,
    /// This entering's frame in the thread's enter stack (which holds the reference).
    frame: usize,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for EnterGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnterGuard").finish_non_exhaustive()
    }
}

impl Drop for EnterGuard<'_> {
    fn drop(&mut self) {
        self.core.leave(self.frame, |removed| {
            if let Some(ptr) = NonNull::new(removed.cast_mut()) {
                // SAFETY: `leave` hands over the reference a removed frame held for `ptr`, a
                // state from `ReservationState::allocate`, so it is alive until released
                // here; the frame is gone and no entry points at it any more.
                unsafe {
                    ptr.as_ref().left();
                    ReservationState::release(ptr);
                }
            }
        });
    }
}

// Keep `GlobalAlloc` in scope for the docs' intra-doc links.
#[allow(unused_imports)]
use GlobalAlloc as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::Layout;

    /// A refusal over a refusing reservation's headroom recalls no thread's credit (the
    /// credit epoch stays), while one of the shared budget does.
    #[test]
    fn a_local_refusal_recalls_no_credit() {
        let a = LimitedAllocator::new(System, 1 << 20);
        a.set_refusal_reporting(false);
        let layout = Layout::from_size_align(2000, 8).unwrap();
        let r = a.try_reserve(1000).unwrap();
        r.set_overflow(Overflow::Refuse);
        let guard = r.enter();
        let epoch = a.core().token_now();
        // SAFETY: a non-zero layout; the call is refused, so nothing is to be freed.
        assert!(unsafe { a.alloc(layout) }.is_null());
        assert_eq!(
            a.core().token_now(),
            epoch,
            "a local refusal recalled credit"
        );
        drop(guard);
        assert!(a.try_reserve(2 << 20).is_err());
        assert_ne!(
            a.core().token_now(),
            epoch,
            "the budget's refusal recalls it"
        );
    }
}
