//! The part of a reservation that the core reaches: its headroom, what was allocated
//! through it while entered, and its overflow policy. The public shell (`Reservation`,
//! `EnterGuard`) is `crate::reservation`, above the core.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::alloc::Layout;

/// What an entered reservation does with an allocation that its headroom cannot cover.
///
/// ```
/// use limited_allocator::{LimitedAllocator, Overflow};
/// let a = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let query = a.try_reserve(1024).unwrap();
/// query.set_overflow(Overflow::Refuse); // the query may not take more than 1 KiB
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Take the bytes from the allocator's shared budget (still bounded by its limit).
    #[default]
    Grow,
    /// Refuse the allocation: a fallible caller gets an error, an infallible one aborts
    /// through `handle_alloc_error`. Use with fallible code paths only.
    Refuse,
}

/// The part of a reservation that entered threads reach through their thread-local entry.
/// Heap-allocated and reference-counted (one reference for the `Reservation`, one for
/// each thread entry pointing at it), so a leaked or out-of-order `EnterGuard` cannot
/// leave a thread pointing at freed memory.
pub(crate) struct ReservationState {
    refs: AtomicUsize,
    /// Charged headroom not yet spent. Any value, `usize::MAX` included (a reservation of
    /// everything on an unlimited instance): whether the reservation was dropped is
    /// `closed`, never a value of this.
    held: AtomicUsize,
    /// Set by the guard's drop, before it takes `held`: see [`give`](Self::give).
    closed: AtomicBool,
    /// Bytes allocated through the reservation while entered, net of frees given back.
    used: AtomicUsize,
    peak_used: AtomicUsize,
    /// Enter-stack frames (on any thread) that hold this state; when the last one goes, the
    /// reservation is left everywhere and `used` is let go (see `Reservation::used`).
    frames: AtomicUsize,
    refuse: AtomicBool,
    refusals: AtomicU64,
}

impl ReservationState {
    /// Allocates a state with one reference, through the global allocator; `None` if that
    /// allocation is refused.
    pub(crate) fn allocate(held: usize) -> Option<NonNull<Self>> {
        let layout = Layout::new::<Self>();
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<Self>();
        let ptr = NonNull::new(raw)?;
        let state = Self {
            refs: AtomicUsize::new(1),
            held: AtomicUsize::new(held),
            closed: AtomicBool::new(false),
            used: AtomicUsize::new(0),
            peak_used: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            refuse: AtomicBool::new(false),
            refusals: AtomicU64::new(0),
        };
        // SAFETY: `ptr` is freshly allocated with this type's layout and unaliased.
        unsafe { ptr.as_ptr().write(state) };
        Some(ptr)
    }

    /// Adds a reference (taken by each entering thread).
    pub(crate) fn retain(&self) {
        self.refs.fetch_add(1, Relaxed);
    }

    /// Drops a reference; the last one frees the state.
    ///
    /// # Safety
    /// `ptr` must come from [`allocate`](Self::allocate) and the caller must own one of its
    /// references, which it must not use afterwards.
    pub(crate) unsafe fn release(ptr: NonNull<Self>) {
        // SAFETY: the caller owns a reference, so the state is alive here.
        // Arc's pattern: each drop's Release pairs with the last one's Acquire fence, so
        // every use of the state happens before it is freed.
        if unsafe { ptr.as_ref() }.refs.fetch_sub(1, Release) != 1 {
            return;
        }
        core::sync::atomic::fence(Acquire);
        // SAFETY: that was the last reference: nobody else can reach the state. It was
        // allocated by `allocate` with this layout.
        unsafe {
            core::ptr::drop_in_place(ptr.as_ptr());
            std::alloc::dealloc(ptr.as_ptr().cast(), Layout::new::<Self>());
        }
    }

    /// A frame of an enter stack now holds this state.
    pub(crate) fn entered(&self) {
        self.frames.fetch_add(1, Relaxed);
    }

    /// A frame holding this state was removed; the last one lets `used` go: what was
    /// allocated inside and is still live is the allocator's plain memory from now on, so
    /// frees outside (which the reservation cannot see) cannot leave it counted forever.
    pub(crate) fn left(&self) {
        if self.frames.fetch_sub(1, Relaxed) == 1 {
            // Take away what was counted until now rather than store 0: a thread entering
            // at this moment may already have counted its first allocation, which stays.
            // (Its frees inside may also have taken some of the old count: then less is
            // taken here, never more than there is.)
            let counted = self.used.load(Relaxed);
            let _ = self
                .used
                .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(counted)));
        }
    }

    /// Spends `size` bytes of headroom for an entered allocation.
    pub(crate) fn take(&self, size: usize) -> bool {
        // Relaxed: a dropped reservation has nothing left to take (its drop took `held`);
        // this only saves the attempt. The bytes in `held` are charged either way.
        if self.closed.load(Relaxed) {
            return false;
        }
        // Relaxed: `held` is a byte count that publishes nothing; its read-modify-writes
        // are totally ordered, so no byte is taken twice. (The drop's handshake is in `give`.)
        let taken = self
            .held
            .fetch_update(Relaxed, Relaxed, |h| (h >= size).then(|| h - size))
            .is_ok();
        if taken {
            self.note_growth(size);
        }
        taken
    }

    /// Records `size` bytes allocated through the reservation beyond its headroom.
    pub(crate) fn note_growth(&self, size: usize) {
        let used = self.used.fetch_add(size, Relaxed).saturating_add(size);
        self.peak_used.fetch_max(used, Relaxed);
    }

    /// Takes back up to `size` freed bytes as headroom; returns how many it took (the rest
    /// goes back to the shared budget).
    pub(crate) fn give(&self, size: usize) -> usize {
        // Relaxed: a byte count, like `held` in `take`.
        let before = self
            .used
            .fetch_update(Relaxed, Relaxed, |u| Some(u - u.min(size)))
            .unwrap_or(0);
        let back = before.min(size);
        if back == 0 {
            return 0;
        }
        // Dekker with the guard's drop (`close`): here `held += back`, then `closed` is
        // read; there `closed` is set, then `held` is taken. SeqCst on all four, so that
        // either this read sees `closed` (then the bytes may or may not have been taken by
        // the drop, and whatever of them is still in `held` is taken back out here and
        // returned to the caller), or the drop's take comes after this addition and
        // releases the bytes with the rest. Each giver takes out at most what it added, so
        // after the drop and every racing give, `held` is 0: nothing stays charged.
        // (No loom model covers this one, and loom would check SeqCst as AcqRel: this
        // argument is what covers the store-load.)
        self.held.fetch_add(back, SeqCst);
        if !self.closed.load(SeqCst) {
            return back;
        }
        let out = self
            .held
            .fetch_update(SeqCst, SeqCst, |h| Some(h - h.min(back)))
            .unwrap_or(0)
            .min(back);
        back - out
    }

    /// Closes the reservation (its guard drops) and takes its unspent headroom: the bytes
    /// to uncharge. See [`give`](Self::give) for the handshake.
    pub(crate) fn close(&self) -> usize {
        // SeqCst: pairs with `give`'s SeqCst `held += back` and load of `closed` (the
        // store-load handshake argued there).
        self.closed.store(true, SeqCst);
        self.held.swap(0, SeqCst)
    }

    pub(crate) fn may_grow(&self) -> bool {
        !self.refuse.load(Relaxed)
    }

    pub(crate) fn note_refusal(&self) {
        self.refusals.fetch_add(1, Relaxed);
    }

    /// Bytes allocated through the reservation while entered, net of frees given back.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Charged headroom not yet spent (0 once closed).
    pub(crate) fn headroom(&self) -> usize {
        self.held()
    }

    /// Relaxed: a reading for stats and refusal lines, which orders nothing.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// The highest `used` so far.
    pub(crate) fn peak_used(&self) -> usize {
        self.peak_used.load(Relaxed)
    }

    /// Allocations refused while entered.
    pub(crate) fn refusals(&self) -> u64 {
        self.refusals.load(Relaxed)
    }

    /// What entered allocations do past the headroom.
    pub(crate) fn overflow(&self) -> Overflow {
        if self.may_grow() {
            Overflow::Grow
        } else {
            Overflow::Refuse
        }
    }

    /// Chooses what entered allocations do past the headroom.
    pub(crate) fn set_overflow(&self, overflow: Overflow) {
        self.refuse.store(overflow == Overflow::Refuse, Relaxed);
    }

    /// Adds `bytes`, already charged to the budget, to the headroom. Only for a live
    /// reservation (never closed).
    pub(crate) fn add_held(&self, bytes: usize) {
        // Relaxed: a byte count (see `take`).
        self.held.fetch_add(bytes, Relaxed);
    }

    /// Takes up to `bytes` of unspent headroom out; returns how many it took.
    pub(crate) fn take_held(&self, bytes: usize) -> usize {
        let before = self
            .held
            .fetch_update(Relaxed, Relaxed, |h| Some(h - h.min(bytes))) // a byte count
            .unwrap_or(0);
        before.min(bytes)
    }
}
