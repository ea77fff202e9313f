//! This thread's entry for an instance, and the instance's credit epoch.
//!
//! Registration (`register`, `token`: the slot and the token, once per instance), syncing
//! an entry to the token (`sync_entry`: credit of an older epoch handed back, an entry left
//! by a dropped instance cleared, parking while over the limit), the hold and the pool
//! that bounds all holds together (`set_hold`, `resize_hold`, `grow_hold`, `drop_hold`),
//! low-water windows and the peak (`rebase`, `restart_window`, `publish_peak`),
//! publication of pending counts (`publish`), the mailbox (`absorb`, `apply`), and what
//! makes every thread return its credit: the epoch bump (`recall_credit`) and the OVER
//! state (`set_side`, `recall_if_over`).

use super::{own_entry_in, Core};
use crate::budget::registry::{self, Post, Prefer, SLOTS};
use crate::budget::thread_cache::{self, Entry, ThreadCache};
use crate::budget::token::{Side, Token};
use crate::budget::tuning::{
    CACHED_SLOTS, CREDIT_SHARE, HOLD_MAX, HOLD_SHARE, HOLD_UNIT, THREAD_SHARE,
};
use core::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

impl Core {
    /// Registers the instance in the slot table on first use; returns its token.
    pub(super) fn register(&self) -> Token {
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
    pub(super) fn sync_entry<'c>(&self, cache: &'c ThreadCache) -> Option<&'c Entry> {
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
    pub(super) fn set_hold(&self, e: &Entry, charged: usize) {
        let headroom = self.limit().saturating_sub(charged);
        self.resize_hold(e, headroom / HOLD_SHARE);
    }

    /// The most one thread may hold: `HOLD_MAX`, and 1/[`THREAD_SHARE`] of the pool.
    #[inline]
    pub(super) fn thread_hold_max(&self) -> usize {
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
    pub(super) fn resize_hold(&self, e: &Entry, want: usize) {
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
            if got < want - old && self.has_post() && self.take_posted().is_some_and(|p| p.hold > 0)
            {
                got += self.grow_hold(want - old - got);
            }
            if got > 0 {
                e.set_hold(old + got);
            }
        }
    }

    /// Takes up to `more` bytes (whole units) of hold from the pool, without ever taking it
    /// past `limit / CREDIT_SHARE`; returns how many were taken.
    pub(super) fn grow_hold(&self, more: usize) -> usize {
        let bound = self.limit() / CREDIT_SHARE;
        self.credit_out.take(bound, more, HOLD_UNIT)
    }

    /// Gives the entry's whole hold back to the pool (its credit must be 0 already): a
    /// thread that goes idle on purpose ([`return_own_credit`](Self::return_own_credit)).
    pub(super) fn drop_hold(&self, e: &Entry) {
        let old = e.hold();
        if old > 0 {
            e.set_hold(0);
            self.credit_out.give(old);
        }
    }

    /// Returns `bytes` of the entry's credit to the budget.
    pub(super) fn give_back(&self, e: &Entry, bytes: usize) {
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
    pub(super) fn rebase(&self, e: &Entry, after: usize) {
        self.restart_window(e, after);
        self.set_hold(e, after);
    }

    /// Publishes the entry's window and opens a new one at charge `after` (what `rebase`
    /// and the direct paths' `moved_own` share; they differ in how they resize the hold).
    #[inline]
    pub(super) fn restart_window(&self, e: &Entry, after: usize) {
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
    pub(super) fn publish(&self, e: &Entry) {
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
    pub(super) fn publish_peak(&self, e: &Entry) {
        self.publish_peak_at(e, self.cold.peak_gen.load(Relaxed));
    }

    /// [`publish_peak`](Self::publish_peak) with the peak generation `gen` already loaded.
    #[inline]
    pub(super) fn publish_peak_at(&self, e: &Entry, gen: usize) {
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
    pub(super) fn publish_own(&self) {
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
    pub(super) fn own_entry<R>(&self, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let token = self.hot.token.load(Relaxed);
        thread_cache::with_cache(|c| own_entry_in(c, token).map(f))
    }

    #[inline]
    pub(super) fn own_credit(&self) -> usize {
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
    pub(super) fn absorb(&self) -> bool {
        self.has_post() && self.take_posted().is_some_and(|p| p.returned > p.added)
    }

    /// Whether something may have been posted to this instance's mailbox since it was last
    /// absorbed: a load of the flag's address (on the instance's read-mostly line), then of
    /// the flag.
    #[inline(always)]
    pub(super) fn has_post(&self) -> bool {
        // SAFETY: `posted` only ever holds the address of a `'static` flag (see `Hot`).
        let flag = unsafe { &*self.hot.posted.load(Relaxed) };
        flag.load(Relaxed)
    }

    /// Takes and applies what was posted to this thread's slot: the post, or `None` when
    /// nothing was. Out of line, so that readers (`allocated_bytes`, `check_can_allocate`)
    /// pay only the poll when nothing was; [`absorb`](Self::absorb) asks whether bytes came
    /// back, [`resize_hold`](Self::resize_hold) whether holds did.
    #[cold]
    #[inline(never)]
    fn take_posted(&self) -> Option<Post> {
        let slot = self.hot.token.load(Relaxed).slot();
        if slot >= SLOTS {
            return None;
        }
        let post = registry::take(slot);
        if post.is_empty() {
            return None;
        }
        self.apply(post);
        Some(post)
    }

    pub(super) fn apply(&self, post: Post) {
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
        if post.attributed > post.unattributed {
            self.cold
                .attributed
                .fetch_add(post.attributed - post.unattributed, Relaxed);
        } else if post.unattributed > post.attributed {
            self.cold
                .attributed
                .fetch_sub(post.unattributed - post.attributed, Relaxed);
        }
    }

    /// Credit is only safe to spend while `charged <= limit`: past it, recall all credit so
    /// threads park (see `sync_entry`).
    pub(super) fn recall_if_over(&self, after: usize) {
        if after > self.limit() {
            self.set_side(Side::Over);
        }
    }

    /// Sets or clears the token's `OVER` state (advancing the epoch with it, so every entry
    /// re-syncs); nothing if it is set that way already or the instance is unregistered.
    /// Release as in [`recall_credit`](Self::recall_credit).
    pub(super) fn set_side(&self, side: Side) {
        self.hot.token.update(Release, Relaxed, |t| {
            (t != Token::UNREGISTERED && t.side() != side).then(|| t.next_epoch_toggling_over())
        });
    }

    /// Which side of the limit the charge is on now.
    pub(super) fn side_now(&self) -> Side {
        if self.charged.load(Relaxed) > self.limit() {
            Side::Over
        } else {
            Side::Under
        }
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
}
