//! The accounting core: one budget, charged before memory is handed out, never overtaken.
//!
//! Invariant: `charged <= limit` after every successful charge, where `charged` counts
//! live allocations, reservation headroom, and credit handed to threads. Because credit is
//! carved out of the budget *before* a thread spends it, threads can allocate from their
//! credit without touching shared memory and the limit still holds exactly.
//!
//! Credit is taken in batches of at most [`MAX_BATCH`] and at most 1/[`HEADROOM_SHARE`] of
//! the headroom left, so batches shrink to nothing (exact per-call accounting) as the budget
//! fills. A thread keeps at most [`HOLD_MAX`], and at most 1/[`HOLD_SHARE`] of the headroom,
//! of freed bytes as credit; past that it hands back all but half the allowance. Every hold
//! comes from one pool per instance capped at `limit / CREDIT_SHARE`, and a thread's credit
//! never passes its hold between calls, so all credit together is bounded whatever the
//! number of threads (see [`CREDIT_SHARE`]). When a
//! request is refused, the instance's credit epoch is advanced, which makes every thread
//! hand its credit back on its next call.
//!
//! The fast path ([`Core::charge_fast`], [`Core::release_fast`]) loads the instance's token
//! and entry offset, compares the token with this thread's entry, and moves bytes between
//! the entry's credit and the caller: no shared write, no lock, no allocation, no panic.
//! Everything else (refills, give-backs, publication, parking, entering, threads starting
//! or exiting) is out of line in the `*_rest` / `*_slow` functions. Blocks larger than a
//! batch that the credit cannot serve or hold take the *direct* path there: exactly their
//! size on the shared counter, the credit untouched (see [`DIRECT_MIN`]).
//!
//! What "exact" means here: read on one thread, `allocated_bytes()` is `charged` minus that
//! thread's own credit, which is exactly the live bytes when no other thread holds credit.
//! Credit held by other live threads (at most `HOLD_MAX` each, `limit / CREDIT_SHARE` in all)
//! reads as usage until they return it; a thread's exit returns it through the [`registry`]
//! mailbox.

use super::credit_pool::{self, CreditPool};
use super::overdraft::{self, Overdraft, OverdraftCounts};
use super::registry::{self, Post, Prefer, SLOTS};
use super::reservation_state::ReservationState;
use super::tuning::{
    CACHED_SLOTS, CREDIT_SHARE, DIRECT_MIN, HEADROOM_SHARE, HOLD_MAX, HOLD_SHARE, HOLD_UNIT,
    MAX_BATCH,
    THREAD_SHARE,
};
use super::report::Refused;
use super::thread_cache::{self, unusual, Entry, EntryAt, Op, Spent, ThreadCache};
use super::token::{AtomicToken, Entered, Side, Token};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use crossbeam_utils::CachePadded;

/// This thread's entry for the instance whose token is `token`, if it holds one of any
/// epoch (what [`Core::own_entry`] finds).
#[inline(always)]
fn own_entry_in(cache: &ThreadCache, token: Token) -> Option<&Entry> {
    let e = cache.entry(token)?;
    e.token().is_of(token).then_some(e)
}

/// Read on every call: written only by `set_limit`, threshold changes, and epoch bumps.
///
/// `repr(C)` so that what the fast path and the queries read (everything but
/// `thresholds`) shares the first 64 bytes.
#[repr(C)]
struct Hot {
    token: AtomicToken,
    /// Where this instance's entry sits in every thread's cache (0 until registered and
    /// for an instance without a cached slot). Read next to `token` by the fast path. A
    /// stale 0 is harmless: entry 0 only ever holds tokens of slot 0, so it matches this
    /// instance's token only if 0 is in fact its slot.
    entry_at: EntryAt,
    /// This instance's mailbox flag in the registry ([`registry::post_flag`]), or
    /// [`registry::NEVER_POSTED`] until it owns a slot: always a `'static` flag, so that
    /// [`Core::absorb`] polls it with one load and no slot arithmetic. A stale
    /// `NEVER_POSTED` (read just after another thread registered the instance) only defers
    /// absorbing to a later read, as a post that lands just after the poll would.
    posted: AtomicPtr<AtomicBool>,
    limit: AtomicUsize,
    /// The least usage at which the medium, high and critical thresholds are reached at the
    /// current limit ([`cut_point`]), so that [`Core::level_of`] is three comparisons. Kept
    /// up to date by [`Core::update_cuts`] whenever the limit or the thresholds change.
    cuts: [AtomicUsize; 3],
    report_refusals: AtomicBool,
    thread_cache: AtomicBool,
    /// The thresholds in basis points, 16 bits each (medium, high, critical from bit 0),
    /// as `PressureThresholds::to_bits` packs them.
    thresholds: AtomicU64,
}

// On 64-bit targets; with 4-byte words everything fits the first line anyway.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(core::mem::offset_of!(Hot, thresholds) == 64);

/// The least `used` with `used / limit >= bp / 10_000`, i.e. `used * 10_000 >= bp * limit`:
/// `ceil(bp * limit / 10_000)`, exact in `u128`. A threshold of at most 100 % (all that
/// `PressureThresholds::new` accepts) has a cut point of at most `limit`; one that cannot
/// be reached saturates at `usize::MAX`.
const fn cut_point(bp: u64, limit: usize) -> usize {
    let cut = (bp as u128 * limit as u128).div_ceil(10_000);
    if cut > usize::MAX as u128 {
        usize::MAX
    } else {
        cut as usize
    }
}

/// The cut points of the three thresholds packed in `bits`, at `limit`.
const fn cut_points(bits: u64, limit: usize) -> [usize; 3] {
    [
        cut_point(bits & 0xffff, limit),
        cut_point((bits >> 16) & 0xffff, limit),
        cut_point((bits >> 32) & 0xffff, limit),
    ]
}

/// Written on slow paths and read by `stats()`.
struct Cold {
    peak: AtomicUsize,
    peak_gen: AtomicUsize,
    allocs: AtomicU64,
    deallocs: AtomicU64,
    reallocs: AtomicU64,
    /// Counted as allocations/reallocations by the fast path before the inner allocator
    /// failed; subtracted in `stats()` so the counts stay exact without a second TLS visit.
    uncounted_allocs: AtomicU64,
    uncounted_reallocs: AtomicU64,
    refusals: AtomicU64,
    refused_bytes: AtomicU64,
    largest_refusal: AtomicUsize,
    inner_failures: AtomicU64,
    reserved: AtomicUsize,
    claimed: AtomicUsize,
    /// The Arrow pool role (see `arrow`): 0 undecided, else a `PoolRole` code.
    pool_role: AtomicU8,
    /// A panicking thread's emergency allowance above the limit.
    overdraft: Overdraft,
}

/// How an instance accounts: with per-thread credit, or every call on the shared counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Per-thread credit carved out of the budget (`LimitedAllocator::new`).
    Credit,
    /// Every call exactly on the shared counter: slower under contention, no slack at all
    /// (`LimitedAllocator::new_exact`).
    Exact,
}

/// Whether a refusal writes its line on stderr (when reporting is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// A `GlobalAlloc` refusal: the line explains a failure (or the abort after it).
    Line,
    /// A fallible pre-flight refusal (`try_reserve`, `grow`): the caller has the error.
    Silent,
}

/// The budget had no room for a request (after absorbing the mailbox, and for
/// [`Core::reserve`] after handing this thread's credit back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct NoRoom;

/// What a carve took from the budget.
#[derive(Debug, Clone, Copy)]
struct Carved {
    /// Bytes taken: the request plus the batch.
    taken: usize,
    /// `charged` after taking them.
    after: usize,
}

/// The batch cap of a carve that takes exactly what is asked.
const NO_BATCH: usize = 0;

/// The counters of [`Core::counts`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub allocs: u64,
    pub deallocs: u64,
    pub reallocs: u64,
    pub refusals: u64,
    pub refused_bytes: u64,
    pub largest_refusal: usize,
    pub inner_failures: u64,
    pub reserved: usize,
    pub claimed: usize,
    pub overdraft: OverdraftCounts,
}

pub(crate) struct Core {
    hot: CachePadded<Hot>,
    charged: CachePadded<AtomicUsize>,
    /// The sum of every thread's hold for this instance (entries of any epoch, and holds
    /// posted by exiting threads but not yet absorbed): at most `limit / CREDIT_SHARE`
    /// whenever a hold grows (see [`Core::grow_hold`]). Each entry's credit is at most its
    /// hold between calls, so this bounds all credit together. Written only when a hold
    /// changes (near the limit, or when the pool is short), never on the fast path.
    credit_out: CachePadded<CreditPool>,
    cold: CachePadded<Cold>,
}

impl Core {
    /// A budget of `limit` bytes, accounted as `mode` says.
    pub(crate) const fn new(limit: usize, mode: Mode) -> Self {
        let thread_cache = match mode {
            Mode::Credit => true,
            Mode::Exact => false,
        };
        Self {
            hot: CachePadded::new(Hot {
                token: AtomicToken::new(Token::UNREGISTERED),
                entry_at: EntryAt::new(),
                posted: AtomicPtr::new(
                    &registry::NEVER_POSTED as *const AtomicBool as *mut AtomicBool,
                ),
                limit: AtomicUsize::new(limit),
                cuts: {
                    let [medium, high, critical] =
                        cut_points(crate::PressureThresholds::DEFAULT_BITS, limit);
                    [
                        AtomicUsize::new(medium),
                        AtomicUsize::new(high),
                        AtomicUsize::new(critical),
                    ]
                },
                report_refusals: AtomicBool::new(true),
                thread_cache: AtomicBool::new(thread_cache),
                thresholds: AtomicU64::new(crate::PressureThresholds::DEFAULT_BITS),
            }),
            charged: CachePadded::new(AtomicUsize::new(0)),
            credit_out: CachePadded::new(CreditPool::new()),
            cold: CachePadded::new(Cold {
                peak: AtomicUsize::new(0),
                peak_gen: AtomicUsize::new(0),
                allocs: AtomicU64::new(0),
                deallocs: AtomicU64::new(0),
                reallocs: AtomicU64::new(0),
                uncounted_allocs: AtomicU64::new(0),
                uncounted_reallocs: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                refused_bytes: AtomicU64::new(0),
                largest_refusal: AtomicUsize::new(0),
                inner_failures: AtomicU64::new(0),
                reserved: AtomicUsize::new(0),
                claimed: AtomicUsize::new(0),
                pool_role: AtomicU8::new(0),
                overdraft: Overdraft::new(),
            }),
        }
    }

    // ---- settings -------------------------------------------------------------------

    #[inline]
    pub(crate) fn limit(&self) -> usize {
        self.hot.limit.load(Relaxed)
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        // SeqCst for `update_cuts` (see there); AcqRel would do for the rest.
        let old = self.hot.limit.swap(limit, SeqCst);
        self.update_cuts();
        if limit < old {
            // Credit carved under the old limit may now be more than fits: recall it, and
            // threads park if usage is over the new limit.
            self.recall_credit();
            self.recall_if_over(self.charged.load(Relaxed));
        } else if limit > old && self.charged.load(Relaxed) <= limit {
            // Parked threads may take credit again.
            self.recall_credit();
        }
    }

    #[inline]
    pub(crate) fn thresholds_bits(&self) -> u64 {
        self.hot.thresholds.load(Relaxed)
    }

    /// The pressure level of `used` bytes against the limit and thresholds, in integers:
    /// `used / limit >= bp / 10000` as `used * 10000 >= bp * limit`, exact, which is
    /// `used >= cut` for the cut points kept in `Hot` (three loads and comparisons, no
    /// multiplication, no float). Agrees with `PressureThresholds::level_for(percent)` (the
    /// thresholds are kept in basis points either way) except where float rounding of the
    /// percentage straddles a threshold. A zero limit reads Critical, as 100 % does.
    ///
    /// The level is the number of thresholds reached, with no branch: the cut points never
    /// decrease from medium to critical (`PressureThresholds::new` requires
    /// `medium < high < critical`, rounding to basis points and `cut_point` keep the order),
    /// so reaching one means reaching those below it. While the limit or the thresholds are
    /// being changed on another thread, the cut points read may mix old and new ones; the
    /// count is then between the level of the old and that of the new setting.
    #[inline]
    pub(crate) fn level_of(&self, used: usize) -> crate::PressureLevel {
        let reached = |cut: &AtomicUsize| usize::from(used >= cut.load(Relaxed));
        let [medium, high, critical] = &self.hot.cuts;
        crate::PressureLevel::from_index(reached(medium) + reached(high) + reached(critical))
    }

    /// Recomputes the cut points after the limit or the thresholds changed, until they were
    /// computed from the limit and thresholds that are still current after they were stored.
    ///
    /// So two threads changing the limit and the thresholds at once cannot leave stale cut
    /// points behind: with every access here and the writers' stores `SeqCst`, whichever
    /// writer stores a cut point last re-reads the limit and thresholds after that store,
    /// and a change it does not see is ordered after it, so the writer that made that
    /// change stores its cut points later still.
    fn update_cuts(&self) {
        loop {
            let limit = self.hot.limit.load(SeqCst);
            let bits = self.hot.thresholds.load(SeqCst);
            for (cut, value) in self.hot.cuts.iter().zip(cut_points(bits, limit)) {
                cut.store(value, SeqCst);
            }
            if self.hot.limit.load(SeqCst) == limit && self.hot.thresholds.load(SeqCst) == bits {
                return;
            }
        }
    }

    pub(crate) fn set_thresholds_bits(&self, bits: u64) {
        self.hot.thresholds.store(bits, SeqCst);
        self.update_cuts();
    }

    pub(crate) fn set_report_refusals(&self, on: bool) {
        self.hot.report_refusals.store(on, Relaxed);
    }

    pub(crate) fn report_refusals(&self) -> bool {
        self.hot.report_refusals.load(Relaxed)
    }

    pub(crate) fn thread_cache_enabled(&self) -> bool {
        self.hot.thread_cache.load(Relaxed)
    }

    // ---- the allocation path ----------------------------------------------------------

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
    fn charge_slow(&self, size: usize, op: Op) -> bool {
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
    fn in_sync_here(&self) -> Option<&Entry> {
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
    fn charge_direct(&self, e: &Entry, size: usize, op: Op) -> bool {
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
    fn charge_general(&self, size: usize, op: Op) -> bool {
        if let Some(e) = self.in_sync_here() {
            return self.spend_cached(e, size, op);
        }
        thread_cache::with_live_cache(|c| self.charge_cached(c, size, op))
            .unwrap_or_else(|| self.charge_exact(size, op))
    }

    fn charge_cached(&self, cache: &ThreadCache, size: usize, op: Op) -> bool {
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
    fn spend_cached(&self, e: &Entry, size: usize, op: Op) -> bool {
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
    fn release_slow(&self, size: usize, op: Op) {
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
    fn release_direct(&self, e: &Entry, size: usize, op: Op) {
        let after = self.charged.fetch_sub(size, Relaxed) - size;
        self.moved_own(e, after);
        if e.count(op) {
            self.publish(e);
        }
    }

    /// Everything the fast path could not finish but a large block's direct release.
    #[inline(never)]
    fn release_general(&self, size: usize, op: Op) {
        if let Some(e) = self.in_sync_here() {
            return self.refund_cached(e, size, op);
        }
        thread_cache::with_live_cache(|c| self.release_cached(c, size, op))
            .unwrap_or_else(|| self.release_exact(size, op))
    }

    fn release_cached(&self, cache: &ThreadCache, size: usize, op: Op) {
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
    fn moved_own(&self, e: &Entry, after: usize) {
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
    /// what bounds all threads' credit together (see [`CREDIT_SHARE`]).
    #[inline]
    fn keep_within_hold(&self, e: &Entry) {
        if e.credit() > e.hold() {
            self.trim_credit(e);
        }
    }

    /// [`keep_within_hold`](Self::keep_within_hold) once the credit is over the hold.
    #[cold]
    #[inline(never)]
    fn trim_credit(&self, e: &Entry) {
        let bytes = e.credit() - e.hold() / 2;
        e.hand_back(bytes);
        let after = self.charged.fetch_sub(bytes, Relaxed) - bytes;
        // Not `rebase`: that resizes the hold, which is what sent us here.
        self.restart_window(e, after);
    }

    /// Takes `size` freed bytes back as credit, handing back what passes the entry's hold.
    /// The entry is in sync (not parked, not entering).
    fn refund_cached(&self, e: &Entry, size: usize, op: Op) {
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
    fn charge_exact(&self, size: usize, op: Op) -> bool {
        match self.carve_exact(size) {
            Some(after) => {
                self.cold.peak.fetch_max(after, Relaxed);
                self.count_shared(op);
                true
            }
            None => self.refuse_alloc(size, op),
        }
    }

    fn release_exact(&self, size: usize, op: Op) {
        self.charged.fetch_sub(size, Relaxed);
        self.count_shared(op);
    }

    fn count_shared(&self, op: Op) {
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
    fn carve(&self, need: usize, cap: usize) -> Option<Carved> {
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
    fn take_from_budget(&self, need: usize, batch_cap: usize) -> Option<Carved> {
        let carve = || {
            let limit = self.limit();
            credit_pool::carve(&self.charged, limit, need, HEADROOM_SHARE, MAX_BATCH.min(batch_cap))
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
    fn note_own_change(&self, after: usize) {
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

    /// Credit is only safe to spend while `charged <= limit`: past it, recall all credit so
    /// threads park (see `sync_entry`).
    fn recall_if_over(&self, after: usize) {
        if after > self.limit() {
            self.set_side(Side::Over);
        }
    }

    /// Sets or clears the token's `OVER` state (advancing the epoch with it, so every entry
    /// re-syncs); nothing if it is set that way already or the instance is unregistered.
    /// Release as in [`recall_credit`](Self::recall_credit).
    fn set_side(&self, side: Side) {
        self.hot.token.update(Release, Relaxed, |t| {
            (t != Token::UNREGISTERED && t.side() != side).then(|| t.next_epoch_toggling_over())
        });
    }

    /// Which side of the limit the charge is on now.
    fn side_now(&self) -> Side {
        if self.charged.load(Relaxed) > self.limit() {
            Side::Over
        } else {
            Side::Under
        }
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
    fn refuse_alloc(&self, size: usize, op: Op) -> bool {
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
    fn refuse_in_reservation(&self, r: &ReservationState, size: usize, op: Op) -> bool {
        if std::thread::panicking() {
            return self.charge_exact(size, op); // and the overdraft if that is refused
        }
        r.note_refusal();
        if self.report_refusals() {
            let what = Refused::Reservation {
                headroom: r.headroom(),
                used: r.used(),
            };
            super::report::refusal(size, self.allocated_bytes(), self.limit(), what);
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
    fn overdraw(&self, size: usize, op: Op) -> bool {
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

    /// The most a peak may read now (see [`Overdraft::peak_cap`]).
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
            super::report::refusal(size, current, limit, Refused::Alloc);
        }
    }

    /// The instance's token (which carries its credit epoch), for tests of what recalls credit.
    #[cfg(test)]
    pub(crate) fn token_now(&self) -> Token {
        self.hot.token.load(Relaxed)
    }

    /// This thread's hold for the instance (0 without an entry), for tests of the pool.
    #[cfg(test)]
    pub(crate) fn own_hold(&self) -> usize {
        self.own_entry(|e| e.hold()).unwrap_or(0)
    }

    /// Advances the credit epoch: every thread returns its credit on its next call.
    ///
    /// Release pairs with the Acquire load in [`token`](Self::token) that `sync_entry`
    /// makes: a thread that syncs to the new epoch also sees what was stored before it was
    /// advanced (`set_limit`'s new limit), so it does not re-sync against the old limit.
    /// Nothing is read through the old value: its load is Relaxed.
    pub(crate) fn recall_credit(&self) {
        self.hot.token.update(Release, Relaxed, |t| {
            (t != Token::UNREGISTERED).then(|| t.next_epoch())
        });
    }

    // ---- this thread's entry ----------------------------------------------------------

    /// Registers the instance in the slot table on first use; returns its token.
    fn register(&self) -> Token {
        let id = registry::next_id();
        let prefer = if self.thread_cache_enabled() {
            Prefer::Cached
        } else {
            Prefer::Uncached
        };
        let slot = registry::claim(id, prefer);
        let fresh = Token::new(id, slot);
        // AcqRel / Acquire: the Release half pairs with `token`'s Acquire load (and the
        // Acquire half with a racing registrar's Release), so a thread that uses the token's
        // slot sees the slot claimed for its id (`registry::claim`) before it posts there.
        match self
            .hot
            .token
            .compare_exchange(Token::UNREGISTERED, fresh, AcqRel, Acquire)
        {
            Ok(_) => {
                if let Some(slot) = slot {
                    let flag = registry::post_flag(slot);
                    let flag = flag as *const AtomicBool as *mut AtomicBool;
                    self.hot.posted.store(flag, Relaxed);
                }
                if let Some(slot) = slot.filter(|&s| s < CACHED_SLOTS) {
                    self.hot.entry_at.set(slot);
                }
                fresh
            }
            Err(existing) => {
                if let Some(slot) = slot {
                    registry::release(slot, id);
                }
                existing
            }
        }
    }

    /// The instance's token, registering it first if needed.
    /// Acquire pairs with the Release of `register`, `recall_credit` and `set_side`.
    pub(crate) fn token(&self) -> Token {
        match self.hot.token.load(Acquire) {
            Token::UNREGISTERED => self.register(),
            t => t,
        }
    }

    /// Brings this thread's entry up to date with the instance's token and returns it, or
    /// `None` when the instance has no cached slot (or its cache is off).
    ///
    /// Also parks the entry while the instance is over its limit: credit is safe to spend
    /// only while `charged <= limit`, so an over-limit instance is served exactly.
    fn sync_entry<'c>(&self, cache: &'c ThreadCache) -> Option<&'c Entry> {
        if !self.thread_cache_enabled() {
            return None;
        }
        let current = self.token();
        let e = cache.entry(current)?;
        let held = e.token();
        if held == current {
            // In sync, neither parked nor entering: nothing to do. (Going over the limit
            // always advances the epoch, see `recall_if_over` and `set_limit`, so an entry
            // synced at the current epoch was synced while under the limit.)
            return Some(e);
        }
        self.absorb();
        // The token's OVER state follows what this slow path sees (whoever sees the change
        // first flips it), so that entries synced on the other side never match.
        let side = self.side_now();
        let current = if side != current.side() {
            self.set_side(side);
            self.token()
        } else {
            current
        };
        if held.without_flags() != current {
            if held.is_of(current) {
                // Our own credit from an earlier epoch: hand it back, keep counts and entering.
                self.give_back(e, e.credit());
            } else {
                // Empty, or left over from a dropped instance that used this slot.
                e.clear(current);
                self.rebase(e, self.charged.load(Relaxed));
            }
        }
        let entered = e.token().entered(); // cleared entries are not entered
        let synced = current.with_entered(entered);
        match self.side_now() {
            Side::Under => e.set_token(synced),
            Side::Over => {
                self.give_back(e, e.credit());
                e.set_token(synced.parked());
            }
        }
        self.set_hold(e, self.charged.load(Relaxed));
        self.keep_within_hold(e);
        Some(e)
    }

    /// Sets how much credit frees may leave this thread holding: `HOLD_MAX`, at most
    /// 1/[`HOLD_SHARE`] of the headroom at `charged`, so that near the limit freed bytes go
    /// back to the budget, where other threads can use them, and at most what the pool of
    /// all threads' holds allows (see [`resize_hold`](Self::resize_hold)). Recomputed on
    /// every general slow-path call (also when a parked thread resumes); the direct paths
    /// only near the limit (see [`moved_own`](Self::moved_own)). The caller keeps the
    /// credit within the new hold ([`keep_within_hold`](Self::keep_within_hold)) before
    /// it returns to the fast path.
    fn set_hold(&self, e: &Entry, charged: usize) {
        let headroom = self.limit().saturating_sub(charged);
        self.resize_hold(e, headroom / HOLD_SHARE);
    }

    /// The most one thread may hold: `HOLD_MAX`, and 1/[`THREAD_SHARE`] of the pool.
    #[inline]
    fn thread_hold_max(&self) -> usize {
        (self.limit() / CREDIT_SHARE / THREAD_SHARE).min(HOLD_MAX)
    }

    /// Makes the entry's hold `want` (capped by [`thread_hold_max`](Self::thread_hold_max),
    /// in whole [`HOLD_UNIT`]s), taking the growth from the pool `credit_out` or giving the
    /// shrink back to it; a growth the pool cannot cover in full gets what is left, and a
    /// pool over its bound takes back from every hold that passes. Only writes the pool
    /// when the hold changes: far from the limit and with the pool not short, the hold
    /// stays at the same maximum and this is a load and a few comparisons.
    ///
    /// [`HOLD_UNIT`]: HOLD_UNIT
    fn resize_hold(&self, e: &Entry, want: usize) {
        let unit = HOLD_UNIT;
        let old = e.hold();
        let mut want = want.min(self.thread_hold_max());
        // A pool over its bound (the limit was lowered since its holds were taken): every
        // thread that passes here gives back what it can towards the bound, so the busy
        // threads bring all credit back under the new bound on their next slow path.
        let (out, bound) = (self.credit_out.load(), self.limit() / CREDIT_SHARE);
        if out > bound {
            want = want.min(old.saturating_sub(out - bound));
        }
        let want = want / unit * unit;
        if want < old {
            e.set_hold(want);
            // After the entry stopped holding it: the pool counts every hold in full.
            self.credit_out.give(old - want);
        } else if want > old {
            let mut got = self.grow_hold(want - old);
            // A short pool may be full of holds that exited threads posted back: absorb
            // them and retry once, or this thread stays at hold 0 (one CAS per call) until
            // something else absorbs. `has_post` keeps the common case to one load.
            if got < want - old && self.has_post() && self.absorb_posted_holds() {
                got += self.grow_hold(want - old - got);
            }
            if got > 0 {
                e.set_hold(old + got);
            }
        }
    }

    /// Takes up to `more` bytes (whole units) of hold from the pool, without ever taking it
    /// past `limit / CREDIT_SHARE`; returns how many were taken.
    fn grow_hold(&self, more: usize) -> usize {
        let bound = self.limit() / CREDIT_SHARE;
        self.credit_out.take(bound, more, HOLD_UNIT)
    }

    /// Gives the entry's whole hold back to the pool (its credit must be 0 already): a
    /// thread that goes idle on purpose ([`return_own_credit`](Self::return_own_credit)).
    fn drop_hold(&self, e: &Entry) {
        let old = e.hold();
        if old > 0 {
            e.set_hold(0);
            self.credit_out.give(old);
        }
    }

    /// Returns `bytes` of the entry's credit to the budget.
    fn give_back(&self, e: &Entry, bytes: usize) {
        if bytes == 0 {
            return;
        }
        e.hand_back(bytes);
        let after = self.charged.fetch_sub(bytes, Relaxed) - bytes;
        self.rebase(e, after);
        // The headroom only grew, but the pool or the limit may have shrunk the hold.
        self.keep_within_hold(e);
    }

    /// Publishes the entry's window and opens a new one at charge `after`; resizes the
    /// entry's hold allowance to the headroom left.
    fn rebase(&self, e: &Entry, after: usize) {
        self.restart_window(e, after);
        self.set_hold(e, after);
    }

    /// Publishes the entry's window and opens a new one at charge `after` (what `rebase`
    /// and the direct paths' `moved_own` share; they differ in how they resize the hold).
    #[inline]
    fn restart_window(&self, e: &Entry, after: usize) {
        // Only the peak: a window's peak is lost if not published when the window closes,
        // while counts keep (they are published by the count-downs, on exit, and read by
        // this thread directly), so the slow path costs no counter writes.
        // The generation is loaded once, for both the old window's check and the new one.
        let gen = self.cold.peak_gen.load(Relaxed);
        self.publish_peak_at(e, gen);
        e.set_base(after);
        e.reset_low();
        e.set_peak_gen(gen);
    }

    /// Publishes pending counts and the window's peak candidate.
    fn publish(&self, e: &Entry) {
        let (allocs, deallocs, reallocs) = e.take_counts();
        let add = |counter: &AtomicU64, n: u64| {
            if n != 0 {
                counter.fetch_add(n, Relaxed);
            }
        };
        add(&self.cold.allocs, allocs);
        add(&self.cold.deallocs, deallocs);
        add(&self.cold.reallocs, reallocs);
        self.publish_peak(e);
    }

    /// Publishes the window's peak candidate; a plain load first, so that the common case
    /// (no new peak) writes nothing to the shared line.
    fn publish_peak(&self, e: &Entry) {
        self.publish_peak_at(e, self.cold.peak_gen.load(Relaxed));
    }

    /// [`publish_peak`](Self::publish_peak) with the peak generation `gen` already loaded.
    #[inline]
    fn publish_peak_at(&self, e: &Entry, gen: usize) {
        let candidate = e.peak_candidate();
        if candidate > self.cold.peak.load(Relaxed) && e.peak_gen() == gen {
            // The cap only here, on the rare new peak: the direct paths pass by every time.
            self.cold
                .peak
                .fetch_max(candidate.min(self.peak_cap()), Relaxed);
        }
    }

    #[cold]
    #[inline(never)]
    fn publish_own(&self) {
        let token = self.hot.token.load(Relaxed);
        thread_cache::with_cache(|c| {
            if let Some(e) = c.entry(token) {
                if e.token() == token {
                    self.publish(e);
                }
            }
        });
    }

    /// This thread's entry for this instance, if it holds one (any epoch).
    ///
    /// The token is loaded Relaxed: it is only used to find and recognise this thread's own
    /// entry, which only this thread writes, and carries everything needed for that (slot
    /// and id) in its own bits; nothing another thread wrote before storing it is read.
    #[inline]
    fn own_entry<R>(&self, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let token = self.hot.token.load(Relaxed);
        thread_cache::with_cache(|c| own_entry_in(c, token).map(f))
    }

    #[inline]
    fn own_credit(&self) -> usize {
        self.own_entry(|e| e.credit()).unwrap_or(0)
    }

    /// Hands this thread's credit back to the budget now, and its hold back to the pool
    /// (its next free takes a hold again, on the slow path).
    pub(crate) fn return_own_credit(&self) {
        let _ = self.own_entry(|e| {
            self.give_back(e, e.credit());
            self.drop_hold(e);
        });
    }

    /// Takes what exiting threads and dropped claims posted for this instance.
    /// True when bytes came back.
    ///
    /// When nothing was posted (nearly always), this is two dependent loads and a branch
    /// that is not taken: the flag's address, then the flag. Relaxed suffices: a post that
    /// is not seen yet is absorbed on a later read (as one made just after this poll
    /// would be), and `registry::take` acquires what the poster released.
    #[inline]
    fn absorb(&self) -> bool {
        self.has_post() && self.absorb_posted()
    }

    /// Whether something may have been posted to this instance's mailbox since it was last
    /// absorbed: a load of the flag's address (on the instance's read-mostly line), then of
    /// the flag.
    #[inline(always)]
    fn has_post(&self) -> bool {
        // SAFETY: `posted` only ever holds the address of a `'static` flag (see `Hot`).
        let flag = unsafe { &*self.hot.posted.load(Relaxed) };
        flag.load(Relaxed)
    }

    /// [`absorb`](Self::absorb) once something was posted: out of line, so that readers
    /// (`allocated_bytes`, `check_can_allocate`) pay only the poll when nothing was.
    #[cold]
    #[inline(never)]
    fn absorb_posted(&self) -> bool {
        let slot = self.hot.token.load(Relaxed).slot();
        if slot >= SLOTS {
            return false;
        }
        let post = registry::take(slot);
        if post.is_empty() {
            return false;
        }
        self.apply(post);
        post.returned > post.added
    }

    /// [`absorb_posted`](Self::absorb_posted) for [`resize_hold`](Self::resize_hold): true
    /// when holds came back to the pool.
    #[cold]
    #[inline(never)]
    fn absorb_posted_holds(&self) -> bool {
        let slot = self.hot.token.load(Relaxed).slot();
        if slot >= SLOTS {
            return false;
        }
        let post = registry::take(slot);
        self.apply(post);
        post.hold > 0
    }

    fn apply(&self, post: Post) {
        if post.added > post.returned {
            let grow = post.added - post.returned;
            let after = self.charged.fetch_add(grow, Relaxed) + grow;
            self.recall_if_over(after);
        } else if post.returned > post.added {
            self.charged.fetch_sub(post.returned - post.added, Relaxed);
        }
        if post.hold > 0 {
            // An exited thread's holds: its credit came back above, with `returned`.
            self.credit_out.give(post.hold);
        }
        self.cold.allocs.fetch_add(post.allocs, Relaxed);
        self.cold.deallocs.fetch_add(post.deallocs, Relaxed);
        self.cold.reallocs.fetch_add(post.reallocs, Relaxed);
        // Only a peak of the current generation: one taken before a `reset_peak` and
        // applied after it would bring the old peak back.
        if post.peak != 0 && post.peak_gen == self.cold.peak_gen.load(Relaxed) {
            self.cold
                .peak
                .fetch_max(post.peak.min(self.peak_cap()), Relaxed);
        }
        if post.claimed > post.unclaimed {
            self.cold
                .claimed
                .fetch_add(post.claimed - post.unclaimed, Relaxed);
        } else if post.unclaimed > post.claimed {
            self.cold
                .claimed
                .fetch_sub(post.unclaimed - post.claimed, Relaxed);
        }
    }

    // ---- entered reservations ---------------------------------------------------------

    fn entered<'e>(&self, e: &'e Entry) -> &'e ReservationState {
        // SAFETY: ENTERED is set on an entry only together with a non-null `entered`
        // pointer to the state of a live frame of this thread's enter stack, and a frame
        // holds one counted reference to its heap-allocated state (see
        // `ReservationState::retain`). `leave` repoints the entry before it releases a
        // removed frame's reference, so the pointee outlives this borrow.
        unsafe { &*e.entered() }
    }

    fn charge_entered(&self, e: &Entry, size: usize, op: Op) -> bool {
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

    fn release_entered(&self, e: &Entry, size: usize, op: Op) {
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
    /// [`MAX_ENTERED`]: super::tuning::MAX_ENTERED
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
        let mut removed = [core::ptr::null(); super::tuning::MAX_ENTERED];
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

    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool
    pub(crate) fn add_claimed(&self, bytes: usize) {
        self.cold.claimed.fetch_add(bytes, Relaxed);
    }

    /// The Arrow pool role code (0 = not decided yet).
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool
    pub(crate) fn pool_role_code(&self) -> u8 {
        self.cold.pool_role.load(Relaxed)
    }

    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool
    pub(crate) fn set_pool_role_code(&self, code: u8) {
        self.cold.pool_role.store(code, Relaxed);
    }

    // ---- reading ------------------------------------------------------------------------

    /// Bytes charged now, as seen from this thread (its own unspent credit is not usage).
    #[inline]
    pub(crate) fn allocated_bytes(&self) -> usize {
        match self.allocated_bytes_quick() {
            Some(bytes) => bytes,
            None => self.allocated_bytes_cold(),
        }
    }

    /// [`allocated_bytes`](Self::allocated_bytes) when nothing was posted to the mailbox
    /// (so [`absorb`](Self::absorb) has nothing to do), `None` otherwise: then callers
    /// tail-call [`allocated_bytes_cold`](Self::allocated_bytes_cold), so this path saves
    /// no registers for it.
    ///
    /// This thread's credit is first looked for the way the fast path finds its entry: when
    /// the entry holds exactly the instance's token (the usual case on a thread that
    /// allocates through the instance), that is the entry, and its credit is read at once.
    /// Exact equality identifies it: entries only ever hold 0 or tokens of their own slot
    /// and no token is 0, so the entry at a stale offset never matches (see
    /// `ThreadCache::fast_entry`). Otherwise (an entry of an earlier epoch, which still
    /// holds credit to subtract; a parked or entering entry; no entry; an instance without
    /// a cached slot) the general lookup runs, [`own_entry`](Self::own_entry)'s.
    ///
    /// All loads are Relaxed: the token is only used to find and recognise this thread's
    /// own entry, which only this thread writes; and `charged` is a snapshot in which this
    /// thread's own changes (which its credit came from) are seen in program order, by
    /// coherence, so the credit subtracted is counted in the value read. (`None` if it
    /// somehow were not, rather than a wrapped number.)
    #[inline(always)]
    pub(crate) fn allocated_bytes_quick(&self) -> Option<usize> {
        if self.has_post() {
            return None;
        }
        let charged = self.charged.load(Relaxed);
        let token = self.hot.token.load(Relaxed);
        let at = &self.hot.entry_at;
        let c = thread_cache::cache_for(at);
        let e = c.fast_entry(at);
        let credit = if e.token() == token {
            e.credit()
        } else {
            unusual();
            own_entry_in(c, token).map_or(0, Entry::credit)
        };
        charged.checked_sub(credit)
    }

    /// [`allocated_bytes`](Self::allocated_bytes) in general: absorbs the mailbox, then
    /// finds this thread's entry for any epoch. Out of line (see
    /// [`allocated_bytes_quick`](Self::allocated_bytes_quick)).
    #[cold]
    #[inline(never)]
    pub(crate) fn allocated_bytes_cold(&self) -> usize {
        self.absorb();
        self.charged.load(Relaxed).saturating_sub(self.own_credit())
    }

    /// The pressure level of [`allocated_bytes`](Self::allocated_bytes).
    #[inline]
    pub(crate) fn pressure_level(&self) -> crate::PressureLevel {
        match self.allocated_bytes_quick() {
            Some(used) => self.level_of(used),
            None => self.pressure_level_cold(),
        }
    }

    /// [`pressure_level`](Self::pressure_level) when the quick read does not apply.
    #[cold]
    #[inline(never)]
    fn pressure_level_cold(&self) -> crate::PressureLevel {
        self.level_of(self.allocated_bytes_cold())
    }

    pub(crate) fn peak_bytes(&self) -> usize {
        let current = self.allocated_bytes();
        let gen = self.cold.peak_gen.load(Relaxed);
        let own = self
            .own_entry(|e| {
                if e.peak_gen() == gen {
                    e.peak_candidate()
                } else {
                    0
                }
            })
            .unwrap_or(0);
        let cap = self.peak_cap();
        self.cold
            .peak
            .load(Relaxed)
            .max(own.min(cap))
            .max(current.min(cap))
    }

    pub(crate) fn reset_peak(&self) {
        // Relaxed: the generation publishes nothing; every reader compares it Relaxed, and
        // the posters' comparison with the slot's copy is ordered by the pin's SeqCst fences.
        let gen = self.cold.peak_gen.fetch_add(1, Relaxed) + 1;
        // Peaks that exiting threads posted (or are posting) from earlier windows are
        // discarded, and later posts of them refused, before the peak restarts here.
        let t = self.token();
        if t.slot() < SLOTS {
            registry::reset_peak(t.slot(), t.id(), gen);
        }
        let current = self.allocated_bytes();
        self.cold.peak.store(current.min(self.peak_cap()), Relaxed);
        self.cold.overdraft.peak_reset(current, self.limit());
        let _ = self.own_entry(|e| {
            e.set_base(self.charged.load(Relaxed));
            e.reset_low();
            e.set_peak_gen(gen);
        });
    }

    /// Counters, including this thread's unpublished ones.
    pub(crate) fn counts(&self) -> Counts {
        self.absorb();
        let (a, d, r) = self.own_entry(|e| e.pending()).unwrap_or_default();
        let c = &self.cold;
        Counts {
            allocs: (c.allocs.load(Relaxed) + a).saturating_sub(c.uncounted_allocs.load(Relaxed)),
            deallocs: c.deallocs.load(Relaxed) + d,
            reallocs: (c.reallocs.load(Relaxed) + r)
                .saturating_sub(c.uncounted_reallocs.load(Relaxed)),
            refusals: c.refusals.load(Relaxed),
            refused_bytes: c.refused_bytes.load(Relaxed),
            largest_refusal: c.largest_refusal.load(Relaxed),
            inner_failures: c.inner_failures.load(Relaxed),
            reserved: c.reserved.load(Relaxed),
            claimed: c.claimed.load(Relaxed),
            overdraft: c.overdraft.counts(),
        }
    }

    /// This instance's registry slot and id, registering it if needed; `None` when the
    /// table is full.
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))] // the Arrow pool
    pub(crate) fn mailbox(&self) -> Option<(usize, u64)> {
        let t = self.token();
        let slot = t.slot();
        (slot < SLOTS).then(|| (slot, t.id()))
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let t = self.hot.token.get_mut();
        let slot = t.slot();
        if slot < SLOTS {
            registry::release(slot, t.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PressureLevel, PressureThresholds};

    /// Holds that exited threads posted back are absorbed when a live thread's hold grows
    /// on a pool they left full: 8 threads take the whole pool (`limit / 16`, 8 full holds)
    /// and exit; the main thread, synced before and holding nothing, gets a hold on its next
    /// slow path (without the absorb it stayed at 0 until something else absorbed).
    #[test]
    fn a_hold_grows_from_holds_posted_by_exited_threads() {
        use crate::LimitedAllocator;
        use core::alloc::{GlobalAlloc, Layout};
        use std::alloc::System;
        let a = LimitedAllocator::new(System, 64 << 20);
        a.set_refusal_reporting(false);
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let pair = || {
            // SAFETY: a non-zero layout; the block is freed with it at once.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                a.dealloc(p, layout);
            }
        };
        pair(); // the main thread's entry is synced
        a.core().return_own_credit();
        assert_eq!(a.core().own_hold(), 0);
        // All hold at once (a thread that synced after another exited would absorb its
        // post), then exit together.
        let all_hold = std::sync::Barrier::new(THREAD_SHARE);
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREAD_SHARE)
                .map(|_| {
                    s.spawn(|| {
                        pair();
                        assert_eq!(a.core().own_hold(), HOLD_MAX, "the pool had room");
                        all_hold.wait();
                    })
                })
                .collect();
            // Joined explicitly: that waits for each thread's exit (its TLS destructors).
            threads.into_iter().for_each(|t| t.join().unwrap());
        });
        // Every hold is posted, none absorbed yet: the pool reads full.
        assert_eq!(a.core().credit_out.load(), (64 << 20) / CREDIT_SHARE);
        // Its credit is spent: the next allocation takes the slow path, which resizes.
        let big = Layout::from_size_align(64 << 10, 8).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null());
            a.dealloc(p, big);
        }
        assert!(a.core().own_hold() > 0, "the posted holds were not absorbed");
        assert_eq!(a.allocated_bytes(), 0);
    }

    /// A peak taken from the mailbox before `reset_peak` and applied after it (an absorb
    /// racing the reset) does not bring the old peak back: the post carries the generation
    /// it was taken at, and only the current one is merged.
    #[test]
    fn a_peak_taken_before_a_reset_is_not_applied_after_it() {
        use crate::LimitedAllocator;
        use std::alloc::System;
        let a = LimitedAllocator::new(System, 64 << 20);
        let t = a.core().token();
        let (slot, id) = (t.slot(), t.id());
        assert!(slot < SLOTS, "the instance owns a slot");
        let old_peak = 5 << 20;
        let posted = Post {
            peak: old_peak,
            peak_gen: a.core().cold.peak_gen.load(Relaxed),
            ..Post::default()
        };
        registry::post(slot, id, posted);
        let taken = registry::take(slot);
        assert_eq!(taken.peak, old_peak);
        a.reset_peak();
        a.core().apply(taken);
        assert!(
            a.peak_bytes() < old_peak,
            "the old peak came back: {}",
            a.peak_bytes()
        );
        // A peak of the current generation is still merged.
        let now = Post {
            peak: 1 << 20,
            peak_gen: a.core().cold.peak_gen.load(Relaxed),
            ..Post::default()
        };
        a.core().apply(now);
        assert_eq!(a.peak_bytes(), 1 << 20);
    }

    /// The definition the cut points implement: the highest threshold with
    /// `used * 10_000 >= bp * limit`, in `u128`.
    fn reference(used: usize, limit: usize, bits: u64) -> PressureLevel {
        let reached = |shift: u32| {
            used as u128 * 10_000 >= ((bits >> shift) & 0xffff) as u128 * limit as u128
        };
        match (reached(0), reached(16), reached(32)) {
            (_, _, true) => PressureLevel::Critical,
            (_, true, _) => PressureLevel::High,
            (true, _, _) => PressureLevel::Medium,
            _ => PressureLevel::Low,
        }
    }

    /// At and next to every cut point, for limits from 0 to `usize::MAX` (where the products
    /// overflow `usize`) and thresholds from 0 % to 100 %, the level is the exact one.
    #[test]
    fn levels_are_exact_at_every_cut_point() {
        let thresholds = [
            PressureThresholds::DEFAULT,
            PressureThresholds::new(0.0, 0.01, 100.0).unwrap(),
            PressureThresholds::new(33.33, 66.67, 99.99).unwrap(),
        ];
        let limits = [
            0,
            1,
            3,
            1000,
            10_007,
            usize::MAX / 0xffff,
            usize::MAX / 0xffff + 1,
            usize::MAX / 10_000,
            usize::MAX / 10_000 + 1,
            usize::MAX - 1,
            usize::MAX,
        ];
        for t in thresholds {
            let bits = t.to_bits();
            for limit in limits {
                let core = Core::new(limit, Mode::Credit);
                core.set_thresholds_bits(bits);
                let mut points = vec![0, 1, limit / 2, limit, usize::MAX];
                for cut in cut_points(bits, limit) {
                    points.extend([cut.saturating_sub(1), cut, cut.saturating_add(1)]);
                }
                for used in points {
                    assert_eq!(
                        core.level_of(used),
                        reference(used, limit, bits),
                        "{used} of {limit} at {t:?}"
                    );
                }
            }
        }
        assert_eq!(Core::new(0, Mode::Credit).level_of(0), PressureLevel::Critical);
    }

    /// The cut points follow the limit and the thresholds, also when both change at once on
    /// two threads: they end up those of the final setting.
    #[test]
    fn cut_points_follow_concurrent_changes() {
        let core = Core::new(1000, Mode::Credit);
        assert_eq!(core.level_of(600), PressureLevel::Medium);
        core.set_limit(2000);
        assert_eq!(core.level_of(600), PressureLevel::Low);
        let custom = PressureThresholds::new(10.0, 20.0, 30.0).unwrap().to_bits();
        core.set_thresholds_bits(custom);
        assert_eq!(core.level_of(600), PressureLevel::Critical);
        let defaults = PressureThresholds::DEFAULT_BITS;
        for round in 0..50 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 0..200 {
                        core.set_limit(1000 + (i + round) % 7 * 1000);
                    }
                });
                s.spawn(|| {
                    for i in 0..200 {
                        core.set_thresholds_bits(if i % 2 == 0 { custom } else { defaults });
                    }
                });
            });
            let (limit, bits) = (core.limit(), core.thresholds_bits());
            let cuts = core.hot.cuts.each_ref().map(|c| c.load(Relaxed));
            assert_eq!(cuts, cut_points(bits, limit), "round {round}");
        }
    }
}
