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
//! sees the slot dead, or the instance sees the pin and waits.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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
    /// A peak candidate observed by the poster.
    pub peak: usize,
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
    debug_assert!(id != FREE && id != DYING);
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
    while slot.pins.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
    let _ = take_all(slot);
    slot.owner.store(FREE, Ordering::Release);
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
        slot.peak.fetch_max(post.peak, Ordering::Relaxed);
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
        hold: slot.hold.swap(0, Ordering::Relaxed),
        claimed: slot.claimed.swap(0, Ordering::Relaxed),
        unclaimed: slot.unclaimed.swap(0, Ordering::Relaxed),
    }
}

/// Unique instance ids; the token keeps 38 bits of them (2.7e11 instances per process).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
