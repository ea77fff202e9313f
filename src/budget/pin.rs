//! The registry's handshake between posters and a dropping owner, on one slot.
//!
//! A poster pins the slot, then checks the owner, and writes the slot's mailbox only if the
//! owner is the instance it posts to; the dropping owner marks the slot dead, then waits
//! until no pins remain, then empties the mailbox and frees the slot. The store-load order
//! on both sides (pin then read the owner; mark dead then read the pins) is made with SeqCst
//! fences: if the poster's fence comes first in their single total order, the owner's read
//! of the pins after its fence sees the pin; if the owner's comes first, the poster's read
//! of the owner after its fence sees it dead. So a post either lands while the owner is
//! alive, before the mailbox is emptied, or is dropped: never after the slot was freed and
//! given to another instance. The loom models below check exactly this code.

use super::sync::{fence, AtomicU64, AtomicUsize, Backoff};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

/// The owner value of a free slot.
pub(crate) const FREE: u64 = 0;
/// The owner value of a slot whose instance is being dropped.
pub(crate) const DYING: u64 = u64::MAX;

/// Who owns a slot, and how many posters are in it.
pub(crate) struct Pin {
    owner: AtomicU64,
    pins: AtomicUsize,
}

impl Pin {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            owner: AtomicU64::new(FREE),
            pins: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            owner: AtomicU64::new(FREE),
            pins: AtomicUsize::new(0),
        }
    }

    /// Takes the slot for `id` if it is free. AcqRel: acquires what the last owner's
    /// [`release`](Self::release) did to the slot (its mailbox emptied) before it freed it.
    pub(crate) fn claim(&self, id: u64) -> bool {
        // Look before swapping: a failed compare-exchange still takes the cache line.
        self.owner.load(Relaxed) == FREE
            && self
                .owner
                .compare_exchange(FREE, id, AcqRel, Relaxed)
                .is_ok()
    }

    /// Whether `id` owns the slot now (a hint for the owner itself: only it changes that).
    #[cfg_attr(loom, allow(dead_code))] // used by the registry, not by the models
    pub(crate) fn is_owned_by(&self, id: u64) -> bool {
        self.owner.load(Relaxed) == id
    }

    /// Runs `post` with the slot pinned if `id` owns it; see the module docs. Never blocks.
    pub(crate) fn with_pinned(&self, id: u64, post: impl FnOnce()) {
        self.pins.fetch_add(1, Relaxed);
        // SeqCst: pairs with the owner's fence in `fence_and_wait` (after it marks the
        // slot dying): one of the two fences comes first, so either the owner sees this
        // pin or this load sees the owner gone (see the module docs).
        fence(SeqCst);
        if self.owner.load(Relaxed) == id {
            post();
        }
        // Release: the owner's wait acquires it, so what `post` wrote is seen there.
        self.pins.fetch_sub(1, Release);
    }

    /// Waits until no poster that could have missed a store made before the caller's
    /// SeqCst fence is still in the slot. Backs off (spins, then yields); a pin lasts one
    /// post, a few dozen instructions that never block.
    pub(crate) fn wait_unpinned(&self) {
        let backoff = Backoff::new();
        // Acquire: pairs with the Release of each poster's unpin.
        while self.pins.load(Acquire) != 0 {
            backoff.snooze();
        }
    }

    /// For the owner `id`: a store it made before calling this (in program order) is seen
    /// by every later poster, and every earlier one has finished (their writes seen here).
    pub(crate) fn fence_and_wait(&self) {
        // SeqCst: pairs with each poster's fence in `with_pinned` (see there).
        fence(SeqCst);
        self.wait_unpinned();
    }

    /// Gives the slot back for the owner `id`: marks it dead, waits out the posters, runs
    /// `drain` (which empties the mailbox), then frees it. False if `id` does not own it.
    pub(crate) fn release(&self, id: u64, drain: impl FnOnce()) -> bool {
        if self.owner.load(Relaxed) != id {
            return false;
        }
        self.owner.store(DYING, Relaxed);
        self.fence_and_wait();
        drain();
        // Release: pairs with `claim`'s AcqRel, so the next owner sees the slot emptied.
        self.owner.store(FREE, Release);
        true
    }

    /// After `fork()`, in the child: the only thread is the one that forked, which was not
    /// posting, so every pin belonged to a thread that does not exist here.
    #[cfg(all(unix, not(loom)))]
    pub(crate) fn clear_pins(&self) {
        self.pins.store(0, Relaxed);
    }
}

use core::sync::atomic::Ordering::AcqRel;

#[cfg(all(test, loom))]
mod models {
    use super::*;
    use loom::sync::Arc;

    /// Loom with a bound on preemptions (three threads with a wait loop, unbounded, take
    /// minutes).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// A post races the owner's drop (and, with three threads, another post): whatever
    /// the interleaving, nothing is left in the mailbox once the slot is freed, so nothing
    /// can reach the slot's next owner.
    #[test]
    fn a_post_never_outlives_its_owner() {
        model(|| {
            let slot = Arc::new((Pin::new(), AtomicUsize::new(0)));
            assert!(slot.0.claim(7));
            let poster = {
                let slot = Arc::clone(&slot);
                loom::thread::spawn(move || {
                    slot.0.with_pinned(7, || {
                        slot.1.fetch_add(5, Relaxed);
                    })
                })
            };
            let drained = slot.0.release(7, || {
                slot.1.swap(0, Relaxed);
            });
            assert!(drained);
            poster.join().unwrap();
            assert_eq!(slot.1.load(Relaxed), 0, "a post landed after the drain");
        });
    }

    /// Two posters and a drop, and a new owner claiming the slot: the new owner never
    /// finds the old owner's posts in its mailbox.
    #[test]
    fn a_new_owner_never_sees_old_posts() {
        model(|| {
            let slot = Arc::new((Pin::new(), AtomicUsize::new(0)));
            assert!(slot.0.claim(7));
            let posters: Vec<_> = (0..2)
                .map(|_| {
                    let slot = Arc::clone(&slot);
                    loom::thread::spawn(move || {
                        slot.0.with_pinned(7, || {
                            slot.1.fetch_add(1, Relaxed);
                        })
                    })
                })
                .collect();
            slot.0.release(7, || {
                slot.1.swap(0, Relaxed);
            });
            assert!(slot.0.claim(8));
            assert_eq!(slot.1.load(Relaxed), 0, "the new owner got an old post");
            for p in posters {
                p.join().unwrap();
            }
            assert_eq!(slot.1.load(Relaxed), 0, "an old post reached the new owner");
        });
    }
}
