//! The accounting core: one budget, charged before memory is handed out, never overtaken.
//!
//! Invariant: `charged <= limit` after every successful charge, where `charged` counts
//! live allocations, reservation headroom, and credit handed to threads. Because credit is
//! carved out of the budget *before* a thread spends it, threads can allocate from their
//! credit without touching shared memory and the limit still holds exactly.
//!
//! Credit is taken in batches of at most `MAX_BATCH` and at most 1/`HEADROOM_SHARE` of
//! the headroom left, so batches shrink to nothing (exact per-call accounting) as the budget
//! fills. A thread keeps at most `HOLD_MAX`, and at most 1/`HOLD_SHARE` of the headroom, of
//! freed bytes as credit; past that it hands back all but half the allowance. Every hold
//! comes from one pool per instance capped at `limit / CREDIT_SHARE`, and a thread's credit
//! never passes its hold between calls, so all credit together is bounded whatever the
//! number of threads (the constants and why they have their values: `budget::tuning`).
//! When a request is refused, the instance's credit epoch is advanced, which makes every
//! thread hand its credit back on its next call.
//!
//! The fast path ([`Core::charge_fast`], [`Core::release_fast`]) loads the instance's token
//! and entry offset, compares the token with this thread's entry, and moves bytes between
//! the entry's credit and the caller: no shared write, no lock, no allocation, no panic.
//! Everything else (refills, give-backs, publication, parking, entering, threads starting
//! or exiting) is out of line in the `*_rest` / `*_slow` functions. Blocks larger than a
//! batch that the credit cannot serve or hold take the *direct* path there: exactly their
//! size on the shared counter, the credit untouched (`DIRECT_MIN`).
//!
//! What "exact" means here: read on one thread, `allocated_bytes()` is `charged` minus that
//! thread's own credit, which is exactly the live bytes when no other thread holds credit.
//! Credit held by other live threads (at most `HOLD_MAX` each, `limit / CREDIT_SHARE` in all)
//! reads as usage until they return it; a thread's exit returns it through the [`registry`]
//! mailbox.
//!
//! # Where things are
//!
//! This file holds [`Core`]'s state, its settings (limit, thresholds) and its readings
//! (`allocated_bytes`, the pressure level, the peak, the counts). The rest of its methods
//! are split by concern:
//!
//! - [`charge`]: the charge and release paths, fast to slow, carving from the shared
//!   counter, refusals and the overdraft (its call graph is at its top);
//! - [`credit`]: this thread's entry: registration, syncing to the token, holds and the
//!   pool, low-water windows and the peak, publication, the mailbox, and the credit epoch
//!   and OVER state that recall credit;
//! - [`entered`]: entered reservations (allocations served from a reservation first).
//!
//! # Fields and who touches them
//!
//! Every field is an atomic (or a `CreditPool`/`Overdraft` of atomics) written through
//! `&self`; what differs is *who* writes it and on which path. "Fast path" means
//! `charge_fast` / `release_fast`: they only *load* `hot.token` and `hot.entry_at`, and
//! write nothing shared (only this thread's `Entry`).
//!
//! | field | written by | read by |
//! |---|---|---|
//! | `hot.token` | `register` (once, CAS from `UNREGISTERED`), `recall_credit` and `set_side` (epoch bumps on refusal, `set_limit`, going over or back under the limit) | the fast path (Relaxed, compared with the entry's token), `token()` (Acquire) on slow paths |
//! | `hot.entry_at` | `register` (once) | the fast path |
//! | `hot.posted` | `register` (once) | `absorb` (every slow path and reading) |
//! | `hot.limit`, `hot.cuts` | `set_limit`, `set_thresholds_bits` | slow paths, `level_of`, readings |
//! | `hot.thresholds`, `hot.report_refusals`, `hot.thread_cache` | their setters (`LimitedAllocator`'s builders) | slow paths, readings |
//! | `charged` | slow paths only: `carve` (CAS that re-checks the limit), give-backs and direct releases (`fetch_sub`), `absorb` (posted returns), `charge_unchecked` (Arrow's infallible claims), the overdraft | readings, slow paths |
//! | `credit_out` | a hold that grows or shrinks (`resize_hold`, `drop_hold`), `absorb` (holds posted by exited threads) | `grow_hold` |
//! | `cold.*` counters | publications of an entry's pending counts (every `PUBLISH_EVERY` operations, at a slow path, at thread exit through the mailbox), refusals, reservations | `counts()`, `stats()` |
//! | `cold.peak`, `cold.peak_gen` | `publish_peak`, `charge_exact`, `absorb`; `reset_peak` (bumps the generation) | `peak_bytes()` |
//!
//! Outside `Core`, each thread's `Entry` is touched by its own thread only (plain `Cell`s),
//! and the registry's slot by posters (exiting threads, dropped Arrow buffers) and by the
//! owner's `absorb` and `drop` (the `pin` handshake).

use super::credit_pool::CreditPool;
use super::overdraft::{Overdraft, OverdraftCounts};
use super::registry::{self, SLOTS};
use super::thread_cache::{self, unusual, Entry, EntryAt, ThreadCache};
use super::token::{AtomicToken, Token};
use crate::pressure::{PressureLevel, PressureThresholds};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use crossbeam_utils::CachePadded;

mod charge;
mod credit;
mod entered;

/// This thread's entry for the instance whose token is `token`, if it holds one of any
/// epoch (what `Core::own_entry` finds).
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

/// A byte count that may dip below zero for a moment (two racing updates applied in the
/// other order) read as 0 while it does, instead of as a wrapped, huge number.
const fn settled(count: usize) -> usize {
    if count > isize::MAX as usize {
        0
    } else {
        count
    }
}

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
    /// Bytes attributed by a shell without a charge (the Arrow pool's claims).
    attributed: AtomicUsize,
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
    pub attributed: usize,
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
                        cut_points(PressureThresholds::DEFAULT_BITS, limit);
                    [
                        AtomicUsize::new(medium),
                        AtomicUsize::new(high),
                        AtomicUsize::new(critical),
                    ]
                },
                report_refusals: AtomicBool::new(true),
                thread_cache: AtomicBool::new(thread_cache),
                thresholds: AtomicU64::new(PressureThresholds::DEFAULT_BITS),
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
                attributed: AtomicUsize::new(0),
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
        // SeqCst: pairs with the SeqCst loads of the limit in `update_cuts` (on this or
        // another thread changing the thresholds), one total order of the limit, the
        // thresholds and the cut points (see there). The token's Release epoch bump below
        // (`recall_credit`) is what publishes the new limit to syncing threads.
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
    pub(crate) fn level_of(&self, used: usize) -> PressureLevel {
        let reached = |cut: &AtomicUsize| usize::from(used >= cut.load(Relaxed));
        let [medium, high, critical] = &self.hot.cuts;
        PressureLevel::from_index(reached(medium) + reached(high) + reached(critical))
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
        // SeqCst throughout: these loads pair with the writers' SeqCst stores of the limit
        // and thresholds, and the cut-point stores with the re-reads after them (the
        // argument above needs the single total order, not just acquire/release).
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
        // SeqCst: pairs with the SeqCst loads of the thresholds in `update_cuts`, as the
        // limit's swap in `set_limit` does.
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
    pub(crate) fn pressure_level(&self) -> PressureLevel {
        match self.allocated_bytes_quick() {
            Some(used) => self.level_of(used),
            None => self.pressure_level_cold(),
        }
    }

    /// [`pressure_level`](Self::pressure_level) when the quick read does not apply.
    #[cold]
    #[inline(never)]
    fn pressure_level_cold(&self) -> PressureLevel {
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
            // A drop that takes a reservation's headroom can be counted a moment before a
            // racing free's give-back is: the sum dips below 0 (wraps) for that moment.
            // Read as 0 then rather than as 16 EiB.
            reserved: settled(c.reserved.load(Relaxed)),
            attributed: c.attributed.load(Relaxed),
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
    use crate::budget::registry::Post;
    use crate::budget::tuning::{CREDIT_SHARE, HOLD_MAX, THREAD_SHARE};

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
        assert!(
            a.core().own_hold() > 0,
            "the posted holds were not absorbed"
        );
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
        assert_eq!(
            Core::new(0, Mode::Credit).level_of(0),
            PressureLevel::Critical
        );
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
