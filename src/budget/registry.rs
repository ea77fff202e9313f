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
//! Safety of posting against a concurrent drop is a two-sided handshake ([`Pin`], with its
//! loom models): a poster pins the slot, then checks the owner; the dropping instance marks
//! the slot dead, then waits until no pins remain. With SeqCst fences on both sides, either
//! the poster sees the slot dead, or the instance sees the pin and waits. The wait backs off
//! (`crossbeam_utils::Backoff`, spinning then yielding), and a pin can never be left behind
//! by a thread that no longer exists: after `fork()` the child clears the pins the parent's
//! other threads held (see `after_fork_in_child`), so a child can drop instances.

use super::pin::{Pin, DYING, FREE};
use super::token::ID_BITS;
use super::tuning::CACHED_SLOTS;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Slots in the table (one less than the token's 10-bit slot field can name: the last value
/// means "no slot"). The first [`CACHED_SLOTS`] also index the per-thread credit caches.
pub(crate) const SLOTS: usize = 1023;

/// One slot of the table: who owns it and what has been posted for it.
pub(crate) struct Slot {
    pin: Pin,
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
    attributed: AtomicUsize,
    unattributed: AtomicUsize,
}

impl Slot {
    const fn new() -> Self {
        Self {
            pin: Pin::new(),
            dirty: AtomicBool::new(false),
            returned: AtomicUsize::new(0),
            added: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            deallocs: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            peak_gen: AtomicUsize::new(0),
            hold: AtomicUsize::new(0),
            attributed: AtomicUsize::new(0),
            unattributed: AtomicUsize::new(0),
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
    /// Bytes a shell attributes to the instance, or stops attributing, without charging
    /// them (the Arrow pool's claims, `AllocatorStats::pool_claimed_bytes`): a count the
    /// core carries for it, posted here because the claim may outlive the instance.
    pub attributed: usize,
    pub unattributed: usize,
}

impl Post {
    /// Nothing to apply (the generation alone tags no peak).
    pub(crate) fn is_empty(&self) -> bool {
        Post {
            peak_gen: 0,
            ..*self
        } == Post::default()
    }
}

/// Which range of the table an instance's slot should come from first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefer {
    /// A slot with a per-thread cache (an instance that keeps credit per thread).
    Cached,
    /// A mailbox-only slot (an exact instance, which leaves the cached slots to others).
    Uncached,
}

/// Claims a free slot for instance `id`, from the range `prefer` names first. `None` when
/// the table is full.
pub(crate) fn claim(id: u64, prefer: Prefer) -> Option<usize> {
    debug_assert!(id != FREE && id != DYING && id <= ID_MAX);
    clear_pins_after_fork();
    let (first, second) = match prefer {
        Prefer::Cached => (0..CACHED_SLOTS, CACHED_SLOTS..SLOTS),
        Prefer::Uncached => (CACHED_SLOTS..SLOTS, 0..CACHED_SLOTS),
    };
    first.chain(second).find(|&i| TABLE[i].pin.claim(id))
}

/// Gives slot `index` back; waits for posters that are mid-post to finish. Whatever was
/// posted and not absorbed is discarded with the instance.
pub(crate) fn release(index: usize, id: u64) {
    let slot = &TABLE[index];
    slot.pin.release(id, || {
        let _ = take_all(slot);
        slot.peak_gen.store(0, Ordering::Relaxed);
    });
}

/// Starts peak generation `gen` for the owner `id` of slot `index`: a peak posted from now
/// on counts only if it is of `gen`, and what was posted before is discarded. Waits out the
/// posters that pinned the slot before the new generation was visible to them.
///
/// The same handshake as [`release`] ([`Pin`]): a poster pins, fences, then loads the
/// generation; here the generation is stored, then fenced, then the pins are waited out,
/// then the peak is cleared. Either the poster's load sees the new generation (and drops an
/// old peak), or its pin is seen here and the clear comes after its post.
pub(crate) fn reset_peak(index: usize, id: u64, gen: usize) {
    let Some(slot) = TABLE.get(index) else { return };
    if !slot.pin.is_owned_by(id) {
        return;
    }
    // Relaxed: ordered before the posters' loads by `fence_and_wait`'s SeqCst fence.
    slot.peak_gen.store(gen, Ordering::Relaxed);
    slot.pin.fence_and_wait();
    slot.peak.store(0, Ordering::Relaxed);
}

/// Posts to instance `id` at slot `index`; silently dropped if that instance is gone.
/// Never allocates or blocks: safe in thread-exit destructors and in `Drop` of claims.
pub(crate) fn post(index: usize, id: u64, post: Post) {
    if post.is_empty() {
        return;
    }
    let Some(slot) = TABLE.get(index) else { return };
    slot.pin.with_pinned(id, || {
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
        // Relaxed: after the pin's SeqCst fence, as `reset_peak` requires.
        if post.peak != 0 && slot.peak_gen.load(Ordering::Relaxed) == post.peak_gen {
            slot.peak.fetch_max(post.peak, Ordering::Relaxed);
        }
        add(&slot.hold, post.hold);
        add(&slot.attributed, post.attributed);
        add(&slot.unattributed, post.unattributed);
        // Release: pairs with the Acquire swap in `take`, so an owner that sees the flag
        // set also sees the counts added above (it then swaps them out, Relaxed).
        slot.dirty.store(true, Ordering::Release);
    });
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
            // Acquire: pairs with the Release store of the flag in `post`, so the counts
            // posted before it are seen by `take_all`.
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
    // The generation before the peak: a peak in the slot is of this generation or a later
    // one (posts land only when they match, and `reset_peak` clears the slot after it
    // stores a new one), so tagging it with this one can only make the owner drop a newer
    // peak (it under-reports until that thread's next window), never keep an older one.
    let peak_gen = slot.peak_gen.load(Ordering::Relaxed);
    Post {
        returned: slot.returned.swap(0, Ordering::Relaxed),
        added: slot.added.swap(0, Ordering::Relaxed),
        allocs: slot.allocs.swap(0, Ordering::Relaxed),
        deallocs: slot.deallocs.swap(0, Ordering::Relaxed),
        reallocs: slot.reallocs.swap(0, Ordering::Relaxed),
        peak: slot.peak.swap(0, Ordering::Relaxed),
        peak_gen,
        hold: slot.hold.swap(0, Ordering::Relaxed),
        attributed: slot.attributed.swap(0, Ordering::Relaxed),
        unattributed: slot.unattributed.swap(0, Ordering::Relaxed),
    }
}

/// The largest instance id: ids have [`ID_BITS`], all the token keeps of them (see
/// `token`), so that the registry compares exactly what tokens carry.
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

/// Makes sure the `pthread_atfork` child handler is registered before a slot is claimed:
/// in the child of a fork, the only thread is the one that called `fork`, which was not
/// posting, so every pin was held by a thread that does not exist there and would make the
/// child's `release` wait for ever.
///
/// Registering is never done here on Linux: `pthread_atfork` takes glibc's `atfork_lock`
/// (and may `malloc`), and `claim` runs on the allocation path, where a `fork` in progress
/// on another thread holds that lock while its prepare handlers run; a prepare handler that
/// allocated through this allocator would then deadlock against itself. So on Linux the
/// handler is registered by an ELF constructor ([`ATFORK_CONSTRUCTOR`], `.init_array`),
/// which runs when the binary is loaded, before `main` and before any thread exists. The
/// `black_box` keeps the constructor's object linked in (the linker drops unreferenced
/// archive members, `#[used]` or not).
///
/// Other unix systems register here, on the first claim (documented in `docs/design.md`):
/// not a `Once`, because `pthread_atfork` may allocate, re-entering the allocator and this
/// function on the same thread; the re-entrant call sees "registering" and goes on.
fn clear_pins_after_fork() {
    #[cfg(target_os = "linux")]
    {
        core::hint::black_box(&ATFORK_CONSTRUCTOR);
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    register_atfork();
}

/// 0: not registered, 1: registering, 2: registered.
#[cfg(unix)]
static ATFORK_STATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Registers [`after_fork_in_child`] once per process.
#[cfg(unix)]
extern "C" fn register_atfork() {
    if ATFORK_STATE.load(Ordering::Relaxed) != 0
        || ATFORK_STATE
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // SAFETY: registers a handler with the C signature pthread_atfork expects; the
    // handler only does relaxed atomic stores to static memory (async-signal-safe).
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    ATFORK_STATE.store(2, Ordering::Relaxed);
}

/// The ELF constructor that registers the fork handler at load time (see
/// [`clear_pins_after_fork`]): the dynamic loader (or a static binary's start code) calls
/// every `.init_array` entry before `main`, with no other thread running.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static ATFORK_CONSTRUCTOR: extern "C" fn() = register_atfork;

/// The `pthread_atfork` child handler: see [`clear_pins_after_fork`]. A slot the parent
/// was releasing at the fork stays dead in the child (its instance is gone there too).
#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    for slot in &TABLE {
        slot.pin.clear_pins();
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

    /// The fork handler is registered when the binary is loaded, not by a claim (which runs
    /// on the allocation path): on Linux nothing else registers it.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_fork_handler_is_registered_at_load() {
        assert_eq!(ATFORK_STATE.load(Ordering::Relaxed), 2);
    }

    /// A pin held across `fork()` on the slot the child releases: in the child the pinning
    /// thread does not exist, so without the child handler's clear the release waits for
    /// ever (the child's `alarm(5)` then kills it with SIGALRM). The pin is taken by a
    /// helper thread that holds it, deterministically, until the parent has forked.
    #[cfg(unix)]
    #[test]
    fn a_child_releases_a_slot_pinned_across_the_fork() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let id = next_id();
        let index = claim(id, Prefer::Uncached).unwrap();
        let (pinned, forked) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|s| {
            s.spawn(|| {
                TABLE[index].pin.with_pinned(id, || {
                    pinned.store(true, Ordering::Relaxed);
                    while !forked.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    }
                });
            });
            while !pinned.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            // SAFETY: the child only releases the slot (atomics, `sched_yield`), then
            // `_exit`s; it neither allocates nor takes a lock.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // SAFETY: async-signal-safe calls only.
                unsafe {
                    libc::alarm(5);
                    release(index, id);
                    libc::_exit(0);
                }
            }
            forked.store(true, Ordering::Relaxed);
            let start = Instant::now();
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
                assert!(start.elapsed() < Duration::from_secs(30), "the child hung");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the child's release hung on the parent's pin (status {status:#x})"
            );
        });
        release(index, id);
    }

    #[test]
    fn posts_reach_the_owner_and_only_the_owner() {
        let id = next_id();
        let slot = claim(id, Prefer::Uncached).unwrap();
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
        let again = claim(other, Prefer::Uncached).unwrap();
        if again == slot {
            assert!(
                take(slot).is_empty(),
                "a dead owner's post leaked to the next owner"
            );
        }
        release(again, other);
    }
}
