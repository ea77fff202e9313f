//! Entered reservations: while a thread has a reservation of this instance entered, its
//! entry carries the ENTERED flag and points at the reservation's state, so the slow path
//! serves its allocations from the reservation's headroom first (`charge_entered`) and
//! gives its frees back to it (`release_entered`). `enter` / `leave` keep the entry equal
//! to the innermost live frame of the thread's enter stack.

use super::Core;
use crate::budget::reservation_state::ReservationState;
use crate::budget::thread_cache::{self, Entry, Op};
use crate::budget::token::Entered;
use crate::budget::tuning::MAX_ENTERED;
use core::sync::atomic::Ordering::Relaxed;

impl Core {
    pub(super) fn entered<'e>(&self, e: &'e Entry) -> &'e ReservationState {
        // SAFETY: ENTERED is set on an entry only together with a non-null `entered`
        // pointer to the state of a live frame of this thread's enter stack, and a frame
        // holds one counted reference to its heap-allocated state (see
        // `ReservationState::retain`). `leave` repoints the entry before it releases a
        // removed frame's reference, so the pointee outlives this borrow.
        unsafe { &*e.entered() }
    }

    pub(super) fn charge_entered(&self, e: &Entry, size: usize, op: Op) -> bool {
        let r = self.entered(e);
        if r.take(size) {
            self.cold.reserved.fetch_sub(size, Relaxed);
        } else if !r.may_grow() {
            // Over the reservation's own budget: its refusal, not the allocator's, so it
            // neither counts there nor recalls every thread's credit.
            return self.refuse_in_reservation(r, size, op);
        } else if self.reserve(size).is_ok() {
            r.note_growth(size);
        } else {
            let granted = self.refuse_alloc(size, op); // by the overdraft, if panicking
            if !granted {
                r.note_refusal();
            }
            return granted;
        }
        if e.count(op) {
            self.publish(e);
        }
        true
    }

    pub(super) fn release_entered(&self, e: &Entry, size: usize, op: Op) {
        let r = self.entered(e);
        let back = r.give(size);
        self.cold.reserved.fetch_add(back, Relaxed);
        if back < size {
            let after = self.charged.fetch_sub(size - back, Relaxed) - (size - back);
            // As in `uncharge`: the window's base charge is now too high.
            self.rebase(e, after);
            self.keep_within_hold(e);
        }
        if e.count(op) {
            self.publish(e);
        }
    }

    /// Makes `state` the innermost entered reservation of this thread. The caller's
    /// reference to `state` moves into a frame of this thread's [`EnterStack`]; returns the
    /// frame's index for [`leave`](Self::leave). `None` (nothing moved) when the instance has
    /// no cached slot or the thread has [`MAX_ENTERED`] reservations entered already.
    ///
    /// [`EnterStack`]: thread_cache::EnterStack
    /// [`MAX_ENTERED`]: MAX_ENTERED
    pub(crate) fn enter(&self, state: *const ReservationState) -> Option<usize> {
        thread_cache::with_live_cache(|c| {
            let e = self.sync_entry(c)?;
            let id = self.token().id();
            let index = thread_cache::with_enter_stack(|s| s.push(id, state)).flatten()?;
            e.set_entered(state);
            e.set_token(e.token().with_entered(Entered::Yes));
            Some(index)
        })
        .flatten()
    }

    /// Leaves the reservation entered as frame `index`: marks the frame dead, removes the
    /// dead frames on top of the stack, and points this thread's entry at the innermost live
    /// frame of this instance (not entered if none). Calls `release` once for each removed
    /// frame's reference, after the entry is consistent again (releasing may free memory,
    /// which comes back through this allocator).
    pub(crate) fn leave(&self, index: usize, release: impl FnMut(*const ReservationState)) {
        let mut removed = [core::ptr::null(); MAX_ENTERED];
        // Relaxed: only the id, fixed since this thread entered (registered) the instance.
        let id = self.hot.token.load(Relaxed).id();
        let (n, innermost) = thread_cache::with_enter_stack(|s| {
            let n = s.kill(index, &mut removed);
            (n, s.innermost(id))
        })
        .unwrap_or((0, core::ptr::null()));
        let _ = self.own_entry(|e| {
            e.set_entered(innermost);
            let entered = if innermost.is_null() {
                Entered::No
            } else {
                Entered::Yes
            };
            e.set_token(e.token().with_entered(entered));
        });
        removed[..n].iter().copied().for_each(release);
    }

    pub(crate) fn add_reserved(&self, bytes: usize) {
        self.cold.reserved.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn sub_reserved(&self, bytes: usize) {
        self.cold.reserved.fetch_sub(bytes, Relaxed);
    }

    /// Attributes `bytes` to the instance without charging them (see `Post::attributed`).
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool's claims
    pub(crate) fn add_attributed(&self, bytes: usize) {
        self.cold.attributed.fetch_add(bytes, Relaxed);
    }
}
