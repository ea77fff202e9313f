//! The process-wide table that gives each live [`LimitedAllocator`](crate::LimitedAllocator)
//! a slot: an index into every thread's credit cache, and a mailbox for what is handed back
//! when the instance's own memory cannot be touched.
//!
//! Why a mailbox: a thread that exits (or an Arrow buffer that drops its claim) may hold
//! bytes charged to an instance it has no reference to. The instance may have moved (a
//! `LimitedAllocator` is an ordinary value) or been dropped. So those bytes are posted here,
//! in static memory keyed by the instance's unique id, and the instance absorbs them on its
//! next slow-path call or read. A post for an instance that has died is discarded.
//!
//! Safety of posting against a concurrent drop is a two-sided handshake: a poster pins the
//! slot, then checks the owner; the dropping instance marks the slot dead, then waits until
//! no pins remain. With sequentially consistent ordering on both sides, either the poster
//! sees the slot dead, or the instance sees the pin and waits. The wait backs off
//! (`crossbeam_utils::Backoff`, spinning then yielding), and a pin can never be left behind
//! by a thread that no longer exists: after `fork()` the child clears the pins the parent's
//! other threads held (see `after_fork_in_child`), so a child can drop instances.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crossbeam_utils::Backoff;

/// Slots in the table (one less than the token's 10-bit slot field can name: the last value
/// means "no slot"). The first [`CACHED_SLOTS`] also index the per-thread credit caches.
pub(crate) const SLOTS: usize = 1023;
/// Slots that get a per-thread credit cache (the fast path). Later slots have a mailbox
/// only: their instances use exact per-call accounting.
pub(crate) const CACHED_SLOTS: usize = 64;

const FREE: u64 = 0;
const DYING: u64 = u64::MAX;

/// One slot of the table: who owns it and what has been posted for it.
pub(crate) struct Slot {
    owner: AtomicU64,
    pins: AtomicUsize,
    dirty: AtomicBool,
    returned: AtomicUsize,
    added: AtomicUsize,
    allocs: AtomicU64,
    deallocs: AtomicU64,
    reallocs: AtomicU64,
    peak: AtomicUsize,
    /// The owner's peak generation (see [`reset_peak`]): a posted peak of another
    /// generation is from before a reset and is discarded.
    peak_gen: AtomicUsize,
    hold: AtomicUsize,
    claimed: AtomicUsize,
    unclaimed: AtomicUsize,
}

impl Slot {
    const fn new() -> Self {
        Self {
            owner: AtomicU64::new(FREE),
            pins: AtomicUsize::new(0),
            dirty: AtomicBool::new(false),
            returned: AtomicUsize::new(0),
            added: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            deallocs: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            peak_gen: AtomicUsize::new(0),
            hold: AtomicUsize::new(0),
            claimed: AtomicUsize::new(0),
            unclaimed: AtomicUsize::new(0),
        }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];

/// What a thread or a claim hands back to an instance through its mailbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Post {
    /// Bytes to take off the instance's charge (unspent credit, released claims).
    pub returned: usize,
    /// Bytes to add to the instance's charge (claims grown after the fact; may overfill).
    pub added: usize,
    /// Operation counts not yet published.
    pub allocs: u64,
    pub deallocs: u64,
    pub reallocs: u64,
    /// A peak candidate observed by the poster, of peak generation `peak_gen`.
    pub peak: usize,
    pub peak_gen: usize,
    /// Hold allowance to give back to the instance's pool of holds (an exited thread's).
    pub hold: usize,
    /// Bytes newly claimed / released through the Arrow pool interface (attribution for
    /// `pool_claimed_bytes`, separate from the charge).
    pub claimed: usize,
    pub unclaimed: usize,
}

impl Post {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Post::default()
    }
}

/// Claims a free slot for instance `id`, preferring the cached range when `want_cache`.
/// `None` when the table is full.
pub(crate) fn claim(id: u64, want_cache: bool) -> Option<usize> {
    debug_assert!(id != FREE && id != DYING && id <= ID_MAX);
    clear_pins_after_fork();
    let (first, second) = if want_cache {
        (0..CACHED_SLOTS, CACHED_SLOTS..SLOTS)
    } else {
        (CACHED_SLOTS..SLOTS, 0..CACHED_SLOTS)
    };
    // Look before swapping: a failed compare-exchange still takes the cache line.
    first.chain(second).find(|&i| {
        let owner = &TABLE[i].owner;
        owner.load(Ordering::Relaxed) == FREE
            && owner
                .compare_exchange(FREE, id, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    })
}

/// Gives slot `index` back; waits for posters that are mid-post to finish. Whatever was
/// posted and not absorbed is discarded with the instance.
pub(crate) fn release(index: usize, id: u64) {
    let slot = &TABLE[index];
    if slot.owner.load(Ordering::SeqCst) != id {
        return;
    }
    slot.owner.store(DYING, Ordering::SeqCst);
    wait_unpinned(slot);
    let _ = take_all(slot);
    slot.peak_gen.store(0, Ordering::Relaxed);
    // Release: pairs with `claim`'s Acquire, so the next owner sees the slot emptied.
    slot.owner.store(FREE, Ordering::Release);
}

/// Waits until no poster pins `slot`. A pin lasts one post (a few dozen instructions, no
/// blocking), so the wait is short: it spins, then yields to let a preempted poster run.
/// SeqCst for the handshake of the module docs.
fn wait_unpinned(slot: &Slot) {
    let backoff = Backoff::new();
    while slot.pins.load(Ordering::SeqCst) != 0 {
        backoff.snooze();
    }
}

/// Starts peak generation `gen` for the owner `id` of slot `index`: a peak posted from now
/// on counts only if it is of `gen`, and what was posted before is discarded. Waits out the
/// posters that pinned the slot before the new generation was visible to them.
///
/// The same handshake as [`release`]: a poster pins (SeqCst), then loads the generation
/// (SeqCst); here the generation is stored (SeqCst), then the pins are waited out, then the
/// peak is cleared. Either the poster's load sees the new generation (and drops an old
/// peak), or its pin is seen here and the clear comes after its post.
pub(crate) fn reset_peak(index: usize, id: u64, gen: usize) {
    let Some(slot) = TABLE.get(index) else { return };
    if slot.owner.load(Ordering::SeqCst) != id {
        return;
    }
    slot.peak_gen.store(gen, Ordering::SeqCst);
    wait_unpinned(slot);
    slot.peak.store(0, Ordering::Relaxed);
}

/// Posts to instance `id` at slot `index`; silently dropped if that instance is gone.
/// Never allocates or blocks: safe in thread-exit destructors and in `Drop` of claims.
pub(crate) fn post(index: usize, id: u64, post: Post) {
    if post.is_empty() {
        return;
    }
    let Some(slot) = TABLE.get(index) else { return };
    slot.pins.fetch_add(1, Ordering::SeqCst);
    if slot.owner.load(Ordering::SeqCst) == id {
        let add = |a: &AtomicUsize, v: usize| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        let add64 = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&slot.returned, post.returned);
        add(&slot.added, post.added);
        add64(&slot.allocs, post.allocs);
        add64(&slot.deallocs, post.deallocs);
        add64(&slot.reallocs, post.reallocs);
        if post.peak != 0 && slot.peak_gen.load(Ordering::SeqCst) == post.peak_gen {
            slot.peak.fetch_max(post.peak, Ordering::Relaxed);
        }
        add(&slot.hold, post.hold);
        add(&slot.claimed, post.claimed);
        add(&slot.unclaimed, post.unclaimed);
        slot.dirty.store(true, Ordering::Release);
    }
    slot.pins.fetch_sub(1, Ordering::Release);
}

/// Never set: the flag an instance polls before it owns a slot (and when the table was
/// full), so that polling needs no check of the slot first.
pub(crate) static NEVER_POSTED: AtomicBool = AtomicBool::new(false);

/// The flag that is set when something is posted to slot `index` and cleared by [`take`]:
/// an instance keeps a reference to its own, so that a reader that polls on every call
/// (`allocated_bytes`) pays one relaxed load of it, with no slot arithmetic or bounds
/// check. [`NEVER_POSTED`] for an index past the table.
pub(crate) fn post_flag(index: usize) -> &'static AtomicBool {
    TABLE.get(index).map_or(&NEVER_POSTED, |slot| &slot.dirty)
}

/// Takes everything posted for the owner of slot `index` (the caller is that owner).
/// Cheap when nothing was posted: one load.
pub(crate) fn take(index: usize) -> Post {
    match TABLE.get(index) {
        Some(slot) if slot.dirty.load(Ordering::Relaxed) => {
            if slot.dirty.swap(false, Ordering::Acquire) {
                take_all(slot)
            } else {
                Post::default()
            }
        }
        _ => Post::default(),
    }
}

fn take_all(slot: &Slot) -> Post {
    Post {
        returned: slot.returned.swap(0, Ordering::Relaxed),
        added: slot.added.swap(0, Ordering::Relaxed),
        allocs: slot.allocs.swap(0, Ordering::Relaxed),
        deallocs: slot.deallocs.swap(0, Ordering::Relaxed),
        reallocs: slot.reallocs.swap(0, Ordering::Relaxed),
        peak: slot.peak.swap(0, Ordering::Relaxed),
        peak_gen: 0,
        hold: slot.hold.swap(0, Ordering::Relaxed),
        claimed: slot.claimed.swap(0, Ordering::Relaxed),
        unclaimed: slot.unclaimed.swap(0, Ordering::Relaxed),
    }
}

/// Instance ids have this many bits: all the token keeps of them (see
/// `thread_cache::token`), so that the registry compares exactly what tokens carry.
pub(crate) const ID_BITS: u32 = 38;
/// The largest instance id.
pub(crate) const ID_MAX: u64 = (1 << ID_BITS) - 1;

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Instance ids, already cut to [`ID_BITS`] (never 0 = [`FREE`]): unique among the last
/// 2.7e11 instances of the process, after which they come round again. Cut here, where they
/// are made, so that a slot's owner and a token's id are the same number: a post or a
/// returned credit always finds its instance.
pub(crate) fn next_id() -> u64 {
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed) & ID_MAX;
        if id != FREE {
            return id;
        }
    }
}

/// Registers (once per process, from the first `claim`) a `pthread_atfork` child handler
/// that clears every pin: in the child of a fork, the only thread is the one that called
/// `fork`, which was not posting, so every pin was held by a thread that does not exist
/// there and would make the child's `release` wait for ever.
///
/// Not a `Once`: `pthread_atfork` may allocate, re-entering the allocator and this function
/// on the same thread; the re-entrant call sees "registering" and goes on without waiting.
fn clear_pins_after_fork() {
    #[cfg(unix)]
    {
        static STATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
        if STATE.load(Ordering::Relaxed) != 0
            || STATE
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // SAFETY: registers a handler with the C signature pthread_atfork expects; the
        // handler only does relaxed atomic stores to static memory (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        STATE.store(2, Ordering::Relaxed);
    }
}

/// The `pthread_atfork` child handler: see [`clear_pins_after_fork`]. A slot the parent
/// was releasing at the fork stays dead in the child (its instance is gone there too).
#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    for slot in &TABLE {
        slot.pins.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are made within the token's 38 bits, and 0 (a free slot) is skipped when they
    /// come round: a slot's owner is always exactly the id its tokens carry.
    #[test]
    fn ids_are_cut_where_they_are_made() {
        NEXT.fetch_max(ID_MAX, Ordering::Relaxed);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(next_id());
        }
        assert!(
            seen.iter().all(|&id| id != FREE && id <= ID_MAX),
            "{seen:?}"
        );
        // Past ID_MAX the ids came round (another test may take some in between).
        assert!(seen.windows(2).any(|w| w[1] < w[0]), "{seen:?}");
    }

    #[test]
    fn posts_reach_the_owner_and_only_the_owner() {
        let id = next_id();
        let slot = claim(id, false).unwrap();
        assert!(slot >= CACHED_SLOTS);
        post(
            slot,
            id,
            Post {
                returned: 10,
                allocs: 2,
                ..Post::default()
            },
        );
        post(
            slot,
            id + 1_000_000,
            Post {
                returned: 99,
                ..Post::default()
            },
        );
        assert!(post_flag(slot).load(Ordering::Relaxed));
        let got = take(slot);
        assert_eq!((got.returned, got.allocs), (10, 2));
        assert!(!post_flag(slot).load(Ordering::Relaxed));
        assert!(take(slot).is_empty());
        assert!(core::ptr::eq(post_flag(SLOTS), &NEVER_POSTED));
        release(slot, id);
        post(
            slot,
            id,
            Post {
                returned: 5,
                ..Post::default()
            },
        );
        let other = next_id();
        let again = claim(other, false).unwrap();
        if again == slot {
            assert!(
                take(slot).is_empty(),
                "a dead owner's post leaked to the next owner"
            );
        }
        release(again, other);
    }
}
