//! The charge and release paths: from the fast path's credit to the shared counter, the
//! refusal and the overdraft.
//!
//! ```text
//! alloc / realloc (LimitedAllocator)              dealloc / realloc
//!   charge_fast ── entry.try_spend ─ Yes ─▶ done     release_fast ── entry.try_refund ─▶ done
//!     │ YesPublish: charge_rest ─▶ publish_own         │ YesPublish: release_rest ─▶ publish_own
//!     │ No                                             │ No
//!   charge_rest / finish_charge                      release_rest / finish_release
//!     └ charge_slow                                    └ release_slow
//!         ├ size > DIRECT_MIN, entry in sync:              ├ size > DIRECT_MIN, in sync:
//!         │   charge_direct ─ take_from_budget(NO_BATCH)   │   release_direct ─ fetch_sub
//!         │     └ no room: fall through                    │
//!         └ charge_general                                 └ release_general
//!             ├ in_sync_here ─▶ spend_cached                   ├ in_sync_here ─▶ refund_cached
//!             └ with_live_cache ─▶ charge_cached               └ with_live_cache ─▶ release_cached
//!                  ├ sync_entry (credit: epoch, OVER, park)         ├ sync_entry
//!                  ├ ENTERED ─▶ charge_entered (entered)            ├ ENTERED ─▶ release_entered
//!                  ├ PARKED / no cache ─▶ charge_exact              ├ PARKED / no cache ─▶ release_exact
//!                  └ spend_cached                                   └ refund_cached ─▶ give_back
//!                      └ short: carve (refill: need + batch)            (past the hold)
//!                          └ take_from_budget ─ credit_pool::carve (CAS under the limit)
//!                              └ no room: absorb the mailbox, retry once
//!                                  └ still none: refuse_alloc
//!                                      ├ panicking: overdraw ─ Overdraft::grant
//!                                      │   └ spent: overdraft::abort_spent (line, abort)
//!                                      └ refuse(Report::Line): count, recall_credit
//!                                          (epoch bump: every thread returns its credit),
//!                                          the stderr line
//! ```
//!
//! `charge_exact` / `release_exact` are the paths of a thread without a usable cache
//! (starting, exiting, an instance without a cached slot or in exact mode, an over-limit
//! instance's parked entries): the request's own bytes on the shared counter. Reservations
//! charge through [`Core::reserve`] (exact bytes, this thread's credit handed back first if
//! they do not fit) and refuse with `Report::Silent`: the caller has the error.

use super::{Carved, Core, NoRoom, Report, NO_BATCH};
use crate::budget::credit_pool;
use crate::budget::overdraft;
use crate::budget::report::{self, Refused};
use crate::budget::reservation_state::ReservationState;
use crate::budget::thread_cache::{self, Entry, Op, Spent, ThreadCache};
use crate::budget::tuning::{DIRECT_MIN, HEADROOM_SHARE, HOLD_MAX, HOLD_SHARE, MAX_BATCH};
use core::sync::atomic::Ordering::Relaxed;

impl Core {
    /// The fast half of a charge of `size` bytes for an allocation (or a realloc's growth):
    /// spends this thread's credit if it can. Never allocates, locks or panics.
    /// Anything but `Spent::Yes` must be finished by [`charge_rest`](Self::charge_rest).
    ///
    /// One load of the instance's token, then only this thread's entry: no shared write.
    #[inline(always)]
    pub(crate) fn charge_fast(&self, size: usize, op: Op) -> Spent {
        let token = self.hot.token.load(Relaxed);
        let at = &self.hot.entry_at;
        thread_cache::with_cache(|c| c.fast_entry(at).try_spend(token, size, op))
    }

    /// Finishes a charge whose fast half answered `spent`: publishes, or takes the slow
    /// path. Out of line so the fast path's callers stay small.
    #[cold]
    #[inline(never)]
    pub(crate) fn charge_rest(&self, spent: Spent, size: usize, op: Op) -> bool {
        self.finish_charge(spent, size, op)
    }

    /// The body of [`charge_rest`](Self::charge_rest), for a caller that is out of line
    /// already (`alloc_rest`): inlined there, so a large block's direct charge costs no
    /// further call.
    #[inline(always)]
    pub(crate) fn finish_charge(&self, spent: Spent, size: usize, op: Op) -> bool {
        match spent {
            Spent::Yes => true,
            Spent::YesPublish => {
                self.publish_own();
                true
            }
            Spent::No => self.charge_slow(size, op),
        }
    }

    /// Gives back `size` bytes of a freed block (or a realloc's shrink).
    #[inline(always)]
    pub(crate) fn release(&self, size: usize, op: Op) {
        match self.release_fast(size, op) {
            Spent::Yes => {}
            spent => self.release_rest(spent, size, op),
        }
    }

    /// The fast half of [`release`](Self::release): takes the bytes back into this thread's
    /// credit if it may hold them. Anything but `Spent::Yes` must be finished by
    /// [`release_rest`](Self::release_rest).
    ///
    /// Credit taken back here is only spendable by this thread, so `dealloc` may do this
    /// *before* handing the block to the inner allocator (and then tail-call it): nobody can
    /// allocate against those bytes until the block is gone. `release_rest` may return
    /// bytes to the shared budget, so it must run after the block is freed.
    #[inline(always)]
    pub(crate) fn release_fast(&self, size: usize, op: Op) -> Spent {
        let token = self.hot.token.load(Relaxed);
        let at = &self.hot.entry_at;
        thread_cache::with_cache(|c| c.fast_entry(at).try_refund(token, size, op))
    }

    /// Finishes a release whose fast half answered `spent`.
    #[cold]
    #[inline(never)]
    pub(crate) fn release_rest(&self, spent: Spent, size: usize, op: Op) {
        self.finish_release(spent, size, op);
    }

    /// The body of [`release_rest`](Self::release_rest), for a caller that is out of line
    /// already (`dealloc_rest`), as [`finish_charge`](Self::finish_charge).
    #[inline(always)]
    pub(crate) fn finish_release(&self, spent: Spent, size: usize, op: Op) {
        match spent {
            Spent::Yes => {}
            Spent::YesPublish => self.publish_own(),
            Spent::No => self.release_slow(size, op),
        }
    }

    /// Undoes a successful charge whose inner allocation then failed.
    #[cold]
    pub(crate) fn inner_failed(&self, size: usize, op: Op) {
        self.release(size, Op::Quiet);
        self.cold.inner_failures.fetch_add(1, Relaxed);
        match op {
            Op::Alloc => self.cold.uncounted_allocs.fetch_add(1, Relaxed),
            Op::Realloc => self.cold.uncounted_reallocs.fetch_add(1, Relaxed),
            Op::Dealloc | Op::Quiet => 0,
        };
    }

    /// The slow path of a charge: a large block directly, anything else (and a large
    /// block that does not fit the headroom without this thread's credit) through
    /// [`charge_general`](Self::charge_general).
    #[inline(always)]
    pub(super) fn charge_slow(&self, size: usize, op: Op) -> bool {
        if size > DIRECT_MIN {
            if let Some(e) = self.in_sync_here() {
                if self.charge_direct(e, size, op) {
                    return true;
                }
            }
        }
        self.charge_general(size, op)
    }

    /// This thread's entry if it holds exactly the instance's token: in sync, neither
    /// parked nor entering, and (having been synced) on a live thread cache. Then the slow
    /// path needs none of `sync_entry`'s checks: the fast path only failed for want of
    /// credit or room to hold it, and goes straight to a direct charge or release, a
    /// refill or a give-back. Without a closure (see [`thread_cache::fast_entry_here`]),
    /// so that the direct paths inline into `alloc_rest`/`dealloc_rest`.
    #[inline(always)]
    pub(super) fn in_sync_here(&self) -> Option<&Entry> {
        let token = self.hot.token.load(Relaxed);
        let e = thread_cache::fast_entry_here(&self.hot.entry_at);
        (e.token() == token).then_some(e)
    }

    /// Charges a block the credit cannot serve (`size > DIRECT_MIN`, more than the credit:
    /// the fast path failed) exactly, on the shared counter, with the one compare-and-swap
    /// of [`take_from_budget`](Self::take_from_budget); the credit stays as it is. False
    /// when the block does not fit the headroom: then the general path tries again with
    /// this thread's credit counted in, and refuses if that does not fit either.
    #[inline(always)]
    pub(super) fn charge_direct(&self, e: &Entry, size: usize, op: Op) -> bool {
        let Some(Carved { after, .. }) = self.take_from_budget(size, NO_BATCH) else {
            return false;
        };
        self.moved_own(e, after);
        if e.count(op) {
            self.publish(e);
        }
        true
    }

    /// Everything the fast path could not finish but a large block's direct charge.
    #[inline(never)]
    pub(super) fn charge_general(&self, size: usize, op: Op) -> bool {
        if let Some(e) = self.in_sync_here() {
            return self.spend_cached(e, size, op);
        }
        thread_cache::with_live_cache(|c| self.charge_cached(c, size, op))
            .unwrap_or_else(|| self.charge_exact(size, op))
    }

    pub(super) fn charge_cached(&self, cache: &ThreadCache, size: usize, op: Op) -> bool {
        let Some(e) = self.sync_entry(cache) else {
            return self.charge_exact(size, op);
        };
        if e.token().is_entered() {
            return self.charge_entered(e, size, op);
        }
        if e.token().is_parked() {
            return self.charge_exact(size, op);
        }
        self.spend_cached(e, size, op)
    }

    /// Spends `size` of the entry's credit, refilling it first if short. The entry is in
    /// sync (not parked, not entering).
    pub(super) fn spend_cached(&self, e: &Entry, size: usize, op: Op) -> bool {
        let credit = e.credit();
        if credit < size {
            // The batch beyond the shortfall is what is left after the spend: at most the
            // hold, so that the credit stays within the hold (and the pool's bound).
            match self.carve(size - credit, e.hold()) {
                Some(Carved { taken, after }) => {
                    e.set_credit(credit + taken);
                    self.rebase(e, after);
                }
                None => return self.refuse_alloc(size, op),
            }
        }
        // A new low, if it is one (`set_credit` lowers the low-water mark).
        e.set_credit(e.credit() - size);
        // `rebase` may have shrunk the hold below the batch (the refill took headroom).
        self.keep_within_hold(e);
        if e.count(op) {
            self.publish(e);
        }
        true
    }

    /// The slow path of a release: a large block directly, anything else through
    /// [`release_general`](Self::release_general).
    #[inline(always)]
    pub(super) fn release_slow(&self, size: usize, op: Op) {
        if size > DIRECT_MIN {
            if let Some(e) = self.in_sync_here() {
                return self.release_direct(e, size, op);
            }
        }
        self.release_general(size, op);
    }

    /// Releases a block the credit cannot hold (`size > DIRECT_MIN`, more than the room
    /// left under the hold: the fast path failed) exactly, with one `fetch_sub` on the
    /// shared counter; the credit stays as it is. Runs after the block was freed (see
    /// [`release_fast`](Self::release_fast)).
    #[inline(always)]
    pub(super) fn release_direct(&self, e: &Entry, size: usize, op: Op) {
        let after = self.charged.fetch_sub(size, Relaxed) - size;
        self.moved_own(e, after);
        if e.count(op) {
            self.publish(e);
        }
    }

    /// Everything the fast path could not finish but a large block's direct release.
    #[inline(never)]
    pub(super) fn release_general(&self, size: usize, op: Op) {
        if let Some(e) = self.in_sync_here() {
            return self.refund_cached(e, size, op);
        }
        thread_cache::with_live_cache(|c| self.release_cached(c, size, op))
            .unwrap_or_else(|| self.release_exact(size, op))
    }

    pub(super) fn release_cached(&self, cache: &ThreadCache, size: usize, op: Op) {
        let Some(e) = self.sync_entry(cache) else {
            return self.release_exact(size, op);
        };
        if e.token().is_entered() {
            return self.release_entered(e, size, op);
        }
        if e.token().is_parked() {
            return self.release_exact(size, op);
        }
        self.refund_cached(e, size, op);
    }

    /// After this thread moved `charged` to `after` by a block's own bytes, its credit
    /// untouched (the direct paths): restarts the window at `after` (as
    /// [`rebase`](Self::rebase), which also resizes the hold to the headroom left), and
    /// keeps the credit within that hold: a large block near the limit shrinks the
    /// headroom, and the credit must shrink with it to keep the slack bound.
    #[inline(always)]
    pub(super) fn moved_own(&self, e: &Entry, after: usize) {
        self.restart_window(e, after);
        // The hold: far from the limit it would be what it is (at most `HOLD_MAX` and the
        // pool's share), so leaving it keeps the slack bound (a hold left smaller by an
        // earlier call near the limit is resized by the next general slow path). Near the
        // limit it follows the headroom, and the credit shrinks with it.
        let headroom = self.limit().saturating_sub(after);
        if headroom < HOLD_MAX * HOLD_SHARE {
            self.resize_hold(e, headroom / HOLD_SHARE);
            self.keep_within_hold(e);
        }
    }

    /// Hands back the credit above half the hold, if the credit is above the hold (the hold
    /// shrank below it): every entry's credit stays within its hold between calls, which is
    /// what bounds all threads' credit together (see [`CREDIT_SHARE`](crate::budget::tuning::CREDIT_SHARE)).
    #[inline]
    pub(super) fn keep_within_hold(&self, e: &Entry) {
        if e.credit() > e.hold() {
            self.trim_credit(e);
        }
    }

    /// [`keep_within_hold`](Self::keep_within_hold) once the credit is over the hold.
    #[cold]
    #[inline(never)]
    pub(super) fn trim_credit(&self, e: &Entry) {
        let bytes = e.credit() - e.hold() / 2;
        e.hand_back(bytes);
        let after = self.charged.fetch_sub(bytes, Relaxed) - bytes;
        // Not `rebase`: that resizes the hold, which is what sent us here.
        self.restart_window(e, after);
    }

    /// Takes `size` freed bytes back as credit, handing back what passes the entry's hold.
    /// The entry is in sync (not parked, not entering).
    pub(super) fn refund_cached(&self, e: &Entry, size: usize, op: Op) {
        let credit = e.credit().saturating_add(size);
        e.set_credit(credit);
        let hold = e.hold();
        if credit > hold {
            // Keep half the allowance so the next few frees stay on the fast path.
            self.give_back(e, credit - hold / 2);
        }
        if e.count(op) {
            self.publish(e);
        }
    }

    /// Charges `size` directly on the shared counter: for threads without a usable cache
    /// (starting, exiting, instance without a cached slot, cache turned off).
    pub(super) fn charge_exact(&self, size: usize, op: Op) -> bool {
        match self.carve_exact(size) {
            Some(after) => {
                self.cold.peak.fetch_max(after, Relaxed);
                self.count_shared(op);
                true
            }
            None => self.refuse_alloc(size, op),
        }
    }

    pub(super) fn release_exact(&self, size: usize, op: Op) {
        self.charged.fetch_sub(size, Relaxed);
        self.count_shared(op);
    }

    pub(super) fn count_shared(&self, op: Op) {
        let counter = match op {
            Op::Alloc => &self.cold.allocs,
            Op::Realloc => &self.cold.reallocs,
            Op::Dealloc => &self.cold.deallocs,
            Op::Quiet => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    // ---- carving from the shared budget -----------------------------------------------

    /// Takes `need` bytes plus a refill batch of at most `cap` from the budget. Returns
    /// (bytes taken, the charge after taking them).
    pub(super) fn carve(&self, need: usize, cap: usize) -> Option<Carved> {
        self.take_from_budget(need, cap)
    }

    /// Takes exactly `bytes` from the budget. Returns the charge after taking them.
    pub(crate) fn carve_exact(&self, bytes: usize) -> Option<usize> {
        self.take_from_budget(bytes, NO_BATCH).map(|c| c.after)
    }

    /// The one compare-and-swap loop that raises `charged`: takes `need` bytes (plus a batch
    /// of up to 1/[`HEADROOM_SHARE`] of the spare headroom, at most [`MAX_BATCH`] and at
    /// most `batch_cap`; [`NO_BATCH`] for none) if they fit under the limit, after absorbing
    /// the mailbox once if they do not.
    #[inline]
    pub(super) fn take_from_budget(&self, need: usize, batch_cap: usize) -> Option<Carved> {
        let carve = || {
            let limit = self.limit();
            credit_pool::carve(
                &self.charged,
                limit,
                need,
                HEADROOM_SHARE,
                MAX_BATCH.min(batch_cap),
            )
            .map(|(taken, after)| Carved { taken, after })
        };
        match carve() {
            Some(carved) => Some(carved),
            None if self.absorb() => carve(),
            None => None,
        }
    }

    /// Adds bytes to the charge even past the limit (Arrow's infallible `reserve`).
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool
    pub(crate) fn charge_unchecked(&self, bytes: usize) {
        let after = self.charged.fetch_add(bytes, Relaxed).saturating_add(bytes);
        self.note_own_change(after);
        self.recall_if_over(after);
    }

    /// Takes exactly `bytes` from the budget for this thread's reservation or entered
    /// allocation, keeping the peak and this thread's window right.
    ///
    /// This thread's own unspent credit is part of the budget too: when the bytes do not
    /// fit, it is handed back and the request retried once before refusing.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<(), NoRoom> {
        let after = match self.carve_exact(bytes) {
            Some(after) => after,
            None if self.own_credit() > 0 => {
                self.return_own_credit();
                self.carve_exact(bytes).ok_or(NoRoom)?
            }
            None => return Err(NoRoom),
        };
        self.note_own_change(after);
        Ok(())
    }

    /// After this thread moved `charged` to `after` outside its credit: publish the peak
    /// and restart this thread's window from the new charge.
    pub(super) fn note_own_change(&self, after: usize) {
        let own = self.own_entry(|e| {
            self.rebase(e, after);
            // The usage at `after` is measured with the credit held then; trimming it
            // after is no usage.
            let credit = e.credit();
            self.keep_within_hold(e);
            credit
        });
        self.cold
            .peak
            .fetch_max(after.saturating_sub(own.unwrap_or(0)), Relaxed);
    }

    /// Gives bytes back to the budget (reservation headroom, claims).
    pub(crate) fn uncharge(&self, bytes: usize) {
        let after = self.charged.fetch_sub(bytes, Relaxed) - bytes;
        // This thread's window measured usage against the higher charge: restart it, or
        // credit spent later would read as a peak above anything really in use.
        let _ = self.own_entry(|e| {
            self.rebase(e, after);
            self.keep_within_hold(e);
        });
    }

    /// The budget refused a `GlobalAlloc` request of `size` bytes. On a panicking thread
    /// (the only place `std::thread::panicking()` is asked) the emergency overdraft serves
    /// it, or the process aborts with its line; otherwise the refusal is recorded and
    /// reported. True when the overdraft granted it.
    #[cold]
    #[inline(never)]
    pub(super) fn refuse_alloc(&self, size: usize, op: Op) -> bool {
        if std::thread::panicking() {
            return self.overdraw(size, op);
        }
        self.refuse(size, Report::Line);
        false
    }

    /// Refuses `size` bytes over the headroom of the entered reservation `r` (with
    /// `Overflow::Refuse`): counted in `r`'s refusals only, with a line naming its budget.
    /// A panicking thread is served by the shared budget, else the overdraft.
    #[cold]
    #[inline(never)]
    pub(super) fn refuse_in_reservation(&self, r: &ReservationState, size: usize, op: Op) -> bool {
        if std::thread::panicking() {
            return self.charge_exact(size, op); // and the overdraft if that is refused
        }
        r.note_refusal();
        if self.report_refusals() {
            let what = Refused::Reservation {
                headroom: r.headroom(),
                used: r.used(),
            };
            report::refusal(size, self.allocated_bytes(), self.limit(), what);
        }
        false
    }

    /// Serves a panicking thread's refused request from the emergency overdraft: charged
    /// exactly on the shared counter (its free gives it back like any block's), counted
    /// apart, never raising the peak. Aborts with the line when the overdraft is spent.
    ///
    /// A request larger than the whole allowance could never have been served, however
    /// little was lent: it is refused as at any limit (null), not aborted, so a fallible
    /// request made while unwinding (a destructor's `try_reserve(64 MiB)`) gets its `Err`.
    /// An infallible one ends in `handle_alloc_error` as it would without a panic. With the
    /// overdraft off (0) every request keeps the abort with the line, as documented there.
    pub(super) fn overdraw(&self, size: usize, op: Op) -> bool {
        let limit = self.limit();
        let o = &self.cold.overdraft;
        if size > o.allowance() && o.allowance() != 0 {
            self.refuse(size, Report::Line);
            return false;
        }
        match o.grant(&self.charged, limit, size) {
            Ok(after) => {
                // Over the limit now: recall the credit, so other threads are served
                // exactly (and refused) until the overdraft is given back.
                self.recall_if_over(after);
                self.count_shared(op);
                true
            }
            Err(current) => overdraft::abort_spent(size, current, limit, o.allowance()),
        }
    }

    /// The most a peak may read now (see [`Overdraft::peak_cap`](overdraft::Overdraft::peak_cap)).
    #[inline]
    pub(crate) fn peak_cap(&self) -> usize {
        self.cold.overdraft.peak_cap(self.limit())
    }

    pub(crate) fn overdraft_allowance(&self) -> usize {
        self.cold.overdraft.allowance()
    }

    pub(crate) fn set_overdraft_allowance(&self, bytes: usize) {
        self.cold.overdraft.set_allowance(bytes);
    }

    /// Records a refusal; with [`Report::Line`], also writes the stderr line when enabled.
    pub(crate) fn refuse(&self, size: usize, report: Report) {
        self.cold.refusals.fetch_add(1, Relaxed);
        self.cold.refused_bytes.fetch_add(size as u64, Relaxed);
        self.cold.largest_refusal.fetch_max(size, Relaxed);
        self.recall_credit();
        if report == Report::Line && self.report_refusals() {
            let (current, limit) = (self.allocated_bytes(), self.limit());
            report::refusal(size, current, limit, Refused::Alloc);
        }
    }
}
