//! Per-thread credit: the fast path's private stock of bytes already charged to a budget.
//!
//! Each thread has one [`Entry`] per cached registry slot. An entry serves the instance
//! whose *token* it carries; the token packs the instance's unique id, its credit epoch and
//! its slot (see `token`).
//!
//! The allocator's fast path loads the instance's token and its entry's offset ([`EntryAt`]),
//! finds this thread's entry at that offset and compares tokens: equal means "this credit is this instance's and still
//! current". Everything else (another instance in a reused slot, an epoch bumped to recall
//! credit, an entered reservation, a thread still starting or already exiting) fails the
//! comparison and takes the slow path in `accounting`.
//!
//! Storage: a `const`-initialised `thread_local!` without a destructor, so access is a
//! plain TLS offset and never allocates or registers anything. Returning credit at thread
//! exit needs a destructor, registered once per thread (registering may allocate, so
//! re-entrant calls during registration are sent down the exact path). On unix it is a
//! `pthread_key_create` destructor, not std's thread-local destructor list: on targets
//! without `__cxa_thread_atexit_impl` (macOS, musl, the BSDs) that list grew through the
//! global allocator before std 1.93, and registering into it from inside the allocator
//! aborted with "the global allocator may not use TLS with destructors". A pthread key's
//! destructor also runs after std's thread-local destructors (glibc, musl and macOS run key
//! destructors last), so their allocations and frees still use the credit. Elsewhere
//! (Windows) it is a thread-local with a destructor, which needs std 1.93 or later.

use super::registry::{self, Post};
use super::reservation_state::ReservationState;
use super::token::Token;
use super::tuning::{CACHED_SLOTS, HOLD_MAX, HOLD_UNIT, MAX_ENTERED, PUBLISH_EVERY};
use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Which counter an operation bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Alloc,
    Realloc,
    Dealloc,
    /// Moves bytes without counting an operation (refunds, reservations).
    Quiet,
}

/// Marks the branch that calls it as the unusual one, so that the compiler lays the usual
/// one out as the straight line, with no taken jump (the call itself disappears when
/// inlined).
#[cold]
#[inline]
pub(crate) fn unusual() {}

/// One thread's credit for one instance. Only its own thread touches it (plain `Cell`s).
///
/// One cache line, with the fields the fast path touches first; its size is a power of two
/// so the fast path finds an entry with a shift (see [`ThreadCache::fast_entry`]).
#[repr(C, align(64))]
pub(crate) struct Entry {
    token: Cell<Token>,
    /// The credit above the window's low-water mark: `credit - low`. Together with `low`
    /// and `ceiling` it holds the credit, its low-water mark and the hold allowance in a
    /// form where an allocation is one subtraction in memory and a free one comparison and
    /// one addition (see [`try_spend`] and [`try_refund`]): an allocation that does not
    /// make a new low leaves `low` (and so `ceiling`) alone, so neither the peak nor the
    /// hold costs anything per allocation.
    ///
    /// Credit: bytes charged to the instance's budget and not yet spent by this thread. At
    /// most `hold <= HOLD_MAX` between calls (refills leave at most one batch, refunds stop
    /// at the hold), which the fast paths rely on for overflow-free sums.
    ///
    /// [`try_spend`]: Self::try_spend
    /// [`try_refund`]: Self::try_refund
    above: Cell<usize>,
    /// The lowest credit since the window opened (for the peak).
    low: Cell<usize>,
    /// `hold - low` (0 when the hold is below the low-water mark), where `hold` is the
    /// most credit this thread may keep from frees. Kept relative to `low` rather than to
    /// the credit, so that an allocation (which moves only `above`) leaves it alone; a free
    /// fits when `above + size <= ceiling`, one unsigned comparison.
    ceiling: Cell<usize>,
    /// Count-downs to the next publication: `PUBLISH_EVERY` minus the pending operations of
    /// each kind. A count-down lets the fast path count and test in one instruction.
    allocs_left: Cell<u16>,
    deallocs_left: Cell<u16>,
    reallocs_left: Cell<u16>,
    /// The hold in units of [`HOLD_UNIT`] bytes: `HOLD_MAX` far from the limit, shrinking
    /// with the headroom (set on each slow path, see `Core::set_hold`), so near the limit
    /// freed bytes go straight back to the shared budget. In units so that it fits the
    /// entry's one cache line next to the count-downs.
    hold_units: Cell<u16>,
    /// The instance's charge when the window opened.
    base: Cell<usize>,
    /// The instance's peak generation when the window opened.
    peak_gen: Cell<usize>,
    /// The innermost live entered reservation of this instance on this thread, or null.
    /// Borrowed: the reference that keeps it alive is held by its [`EnterStack`] frame.
    entered: Cell<*const ReservationState>,
}

impl Entry {
    const fn new() -> Self {
        Self {
            token: Cell::new(Token::NONE),
            above: Cell::new(0),
            low: Cell::new(0),
            ceiling: Cell::new(0),
            allocs_left: Cell::new(PUBLISH_EVERY),
            deallocs_left: Cell::new(PUBLISH_EVERY),
            reallocs_left: Cell::new(PUBLISH_EVERY),
            hold_units: Cell::new(0),
            base: Cell::new(0),
            peak_gen: Cell::new(0),
            entered: Cell::new(core::ptr::null()),
        }
    }

    /// The token of the instance this entry serves (with the entry-only flags), or
    /// [`Token::NONE`].
    #[inline(always)]
    pub(crate) fn token(&self) -> Token {
        self.token.get()
    }

    /// Re-syncs the entry to `token` (the slow path's, after it brought the credit in line).
    #[inline]
    pub(crate) fn set_token(&self, token: Token) {
        self.token.set(token);
    }

    /// Sets the instance's charge when the window opened.
    #[inline]
    pub(crate) fn set_base(&self, base: usize) {
        self.base.set(base);
    }

    /// The instance's peak generation when the window opened.
    #[inline]
    pub(crate) fn peak_gen(&self) -> usize {
        self.peak_gen.get()
    }

    #[inline]
    pub(crate) fn set_peak_gen(&self, gen: usize) {
        self.peak_gen.set(gen);
    }

    /// The innermost live entered reservation of this instance on this thread, or null.
    #[inline]
    pub(crate) fn entered(&self) -> *const ReservationState {
        self.entered.get()
    }

    /// Points the entry at the innermost live entered reservation (null: none). Borrowed:
    /// the caller's enter-stack frame holds the reference.
    #[inline]
    pub(crate) fn set_entered(&self, state: *const ReservationState) {
        self.entered.set(state);
    }

    /// Bytes charged to the budget and not yet spent by this thread.
    #[inline]
    pub(crate) fn credit(&self) -> usize {
        self.low.get() + self.above.get()
    }

    /// The most credit frees may leave this thread holding.
    #[inline]
    pub(crate) fn hold(&self) -> usize {
        self.hold_units.get() as usize * HOLD_UNIT
    }

    /// The lowest credit since the window opened.
    #[cfg(test)]
    pub(crate) fn low(&self) -> usize {
        self.low.get()
    }

    /// Sets the credit, keeping the hold; a credit below the low-water mark is the new low.
    pub(crate) fn set_credit(&self, credit: usize) {
        let low = self.low.get().min(credit);
        self.set_low(low);
        self.above.set(credit - low);
    }

    /// Moves the low-water mark (and so `ceiling`, which is relative to it).
    #[inline(always)]
    fn set_low(&self, low: usize) {
        self.low.set(low);
        self.ceiling.set(self.hold().saturating_sub(low));
    }

    /// Takes `bytes` out of the credit to hand them back to the budget. Not usage: if the
    /// credit falls below the low-water mark, the window's base charge falls with it, so
    /// that the window's peak candidate (base minus low) stays what it was.
    pub(crate) fn hand_back(&self, bytes: usize) {
        let credit = self.credit() - bytes;
        let low = self.low.get();
        if credit < low {
            self.base.set(self.base.get().saturating_sub(low - credit));
            self.set_low(credit);
        }
        self.above.set(credit - self.low.get());
    }

    /// Sets the hold allowance, rounded down to a multiple of [`HOLD_UNIT`] and at most
    /// [`HOLD_MAX`].
    pub(crate) fn set_hold(&self, hold: usize) {
        self.hold_units.set((hold.min(HOLD_MAX) / HOLD_UNIT) as u16);
        self.set_low(self.low.get());
    }

    /// Opens a new low-water window at the current credit.
    pub(crate) fn reset_low(&self) {
        self.set_low(self.credit());
        self.above.set(0);
    }

    /// Counts one operation; true when the counts should be published now.
    #[inline(always)]
    pub(crate) fn count(&self, op: Op) -> bool {
        let left = match op {
            Op::Alloc => &self.allocs_left,
            Op::Realloc => &self.reallocs_left,
            Op::Dealloc => &self.deallocs_left,
            Op::Quiet => return false,
        };
        // Wrapping: a count-down that is not reset at 0 (no publication possible) keeps
        // counting modulo 2^16, and `pending` still reads it right (the slow path publishes
        // too, so a publication is never far off).
        let n = left.get().wrapping_sub(1);
        left.set(n);
        n == 0
    }

    /// Operations counted and not yet published: (allocs, deallocs, reallocs).
    pub(crate) fn pending(&self) -> (u64, u64, u64) {
        let p = |left: &Cell<u16>| PUBLISH_EVERY.wrapping_sub(left.get()) as u64;
        (
            p(&self.allocs_left),
            p(&self.deallocs_left),
            p(&self.reallocs_left),
        )
    }

    /// The largest usage this thread saw in the current window: the window's base charge
    /// minus the least credit held since.
    pub(crate) fn peak_candidate(&self) -> usize {
        self.base.get().saturating_sub(self.low.get())
    }

    /// Takes the pending counts, leaving zeros.
    pub(crate) fn take_counts(&self) -> (u64, u64, u64) {
        let counts = self.pending();
        self.reset_counts();
        counts
    }

    fn reset_counts(&self) {
        self.allocs_left.set(PUBLISH_EVERY);
        self.deallocs_left.set(PUBLISH_EVERY);
        self.reallocs_left.set(PUBLISH_EVERY);
    }

    /// Forgets everything (the instance it served is gone).
    pub(crate) fn clear(&self, token: Token) {
        self.token.set(token);
        self.above.set(0);
        self.low.set(0);
        self.ceiling.set(0);
        self.hold_units.set(0);
        self.base.set(0);
        self.reset_counts();
        self.entered.set(core::ptr::null());
    }

    /// Tries to spend `size` bytes of credit for `token`: the fast path of `alloc`.
    ///
    /// Spending within the credit above the low-water mark takes `size` from `above` and
    /// touches nothing else; only an allocation that makes a new low (credit falling below
    /// every earlier point of the window) moves `low` and `ceiling`, on a branch of its
    /// own.
    #[inline(always)]
    pub(crate) fn try_spend(&self, token: Token, size: usize, op: Op) -> Spent {
        if self.token.get() != token {
            return Spent::No;
        }
        let (above, short) = self.above.get().overflowing_sub(size);
        self.above.set(above);
        if short {
            // A new low, or not enough credit: undo, then see which. Out of the straight
            // line: in the steady state allocations make no new low.
            unusual();
            if !self.new_low(size) {
                return Spent::No;
            }
        }
        if self.count(op) {
            Spent::YesPublish
        } else {
            Spent::Yes
        }
    }

    /// `try_spend` once `above` came up short (and was left `size` less, wrapping): spends
    /// from below the low-water mark if the credit suffices, making a new low; otherwise
    /// restores `above` and answers false.
    #[inline(always)]
    fn new_low(&self, size: usize) -> bool {
        // Reloaded rather than reused, so the fast path can subtract in memory.
        // SAFETY: a plain read of this thread's own cell.
        let above = unsafe { self.above.as_ptr().read_volatile() };
        // `low + above` is now `credit - size` modulo 2^64: it carries exactly when
        // `credit >= size` (then it is the new low).
        let (left, fits) = self.low.get().overflowing_add(above);
        if fits {
            self.set_low(left);
            self.above.set(0);
        } else {
            self.above.set(above.wrapping_add(size));
        }
        fits
    }

    /// Tries to take `size` freed bytes back as credit for `token`: the fast path of
    /// `dealloc`. Refuses when that would hold more than `hold`.
    #[inline(always)]
    pub(crate) fn try_refund(&self, token: Token, size: usize, op: Op) -> Spent {
        if self.token.get() != token {
            return Spent::No;
        }
        // Fits when `credit + size <= hold`, i.e. `above + size <= hold - low = ceiling`
        // (never when the hold is below `low`: then `ceiling` is 0). The sum cannot wrap:
        // `above <= HOLD_MAX` between calls and `size <= isize::MAX` (a Layout's bound).
        let credit_above = self.above.get() + size;
        if credit_above > self.ceiling.get() {
            return Spent::No;
        }
        self.above.set(credit_above);
        if self.count(op) {
            Spent::YesPublish
        } else {
            Spent::Yes
        }
    }
}

/// One `enter()` on this thread: which instance, which reservation (holding one counted
/// reference to it), and whether its guard is still alive.
#[derive(Clone, Copy)]
struct Frame {
    id: u64,
    state: *const ReservationState,
    live: bool,
}

impl Frame {
    const EMPTY: Frame = Frame {
        id: 0,
        state: core::ptr::null(),
        live: false,
    };
}

/// This thread's entered reservations, innermost last. Guards are usually dropped innermost
/// first; one dropped out of order only marks its frame dead, and dead frames are removed
/// once nothing live is above them. So a live guard's frame never moves, and after all
/// guards are dropped nothing is entered, in whatever order they went. Not on the
/// allocation path: that reads [`Entry::entered`], which `enter`/`leave` keep equal to the
/// innermost live frame of the entry's instance.
pub(crate) struct EnterStack {
    frames: [Cell<Frame>; MAX_ENTERED],
    len: Cell<usize>,
}

impl EnterStack {
    const fn new() -> Self {
        Self {
            frames: [const { Cell::new(Frame::EMPTY) }; MAX_ENTERED],
            len: Cell::new(0),
        }
    }

    /// Pushes a live frame (taking over the caller's reference to `state`); its index, or
    /// `None` when the stack is full.
    pub(crate) fn push(&self, id: u64, state: *const ReservationState) -> Option<usize> {
        let len = self.len.get();
        let frame = self.frames.get(len)?;
        frame.set(Frame {
            id,
            state,
            live: true,
        });
        self.len.set(len + 1);
        Some(len)
    }

    /// Marks frame `index` dead and removes the dead frames on top. Returns the removed
    /// frames' states (whose references the caller now owns) in `out`, and how many.
    pub(crate) fn kill(
        &self,
        index: usize,
        out: &mut [*const ReservationState; MAX_ENTERED],
    ) -> usize {
        if let Some(frame) = self.frames.get(index) {
            let mut f = frame.get();
            f.live = false;
            frame.set(f);
        }
        let mut n = 0;
        let mut len = self.len.get();
        while len > 0 && !self.frames[len - 1].get().live {
            len -= 1;
            out[n] = self.frames[len].replace(Frame::EMPTY).state;
            n += 1;
        }
        self.len.set(len);
        n
    }

    /// The innermost live frame's state for instance `id`, or null.
    pub(crate) fn innermost(&self, id: u64) -> *const ReservationState {
        self.frames[..self.len.get()]
            .iter()
            .rev()
            .map(Cell::get)
            .find(|f| f.live && f.id == id)
            .map_or(core::ptr::null(), |f| f.state)
    }
}

/// The outcome of a fast-path attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// Not possible here: take the slow path.
    No,
    /// Done.
    Yes,
    /// Done, and the pending counts should be published.
    YesPublish,
}

const _: () = assert!(CACHED_SLOTS.is_power_of_two() && CACHED_SLOTS <= 1 << 10);
const _: () = assert!(core::mem::size_of::<Entry>() == 64);
// `cache_for` relies on the cache's storage never being torn down by a destructor.
const _: () = assert!(!core::mem::needs_drop::<ThreadCache>());

/// Where a thread's cache is in its life: only a `Live` cache may hold credit, because only
/// then does the thread's exit hook return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheState {
    /// No call has needed the cache yet: its exit hook is not registered.
    Fresh,
    /// The exit hook is being registered (which may allocate and re-enter the allocator).
    Registering,
    /// The exit hook is registered: entries may hold credit.
    Live,
    /// The exit hook ran (or could not be registered): calls on this thread are exact.
    Exited,
}

/// One thread's entries, one per cached slot.
pub(crate) struct ThreadCache {
    entries: [Entry; CACHED_SLOTS],
    state: Cell<CacheState>,
}

impl ThreadCache {
    const fn new() -> Self {
        Self {
            entries: [const { Entry::new() }; CACHED_SLOTS],
            state: Cell::new(CacheState::Fresh),
        }
    }

    /// The entry for a token's slot, if the slot is a cached one.
    #[inline(always)]
    pub(crate) fn entry(&self, token: Token) -> Option<&Entry> {
        self.entries.get(token.slot())
    }

    /// The entry at `at`, for the fast path to compare its instance's token against.
    /// Neither masked nor bounds-checked: an [`EntryAt`] only ever holds the byte offset of
    /// a cached slot's entry, so any value loaded from it is in bounds. The fast path only
    /// acts when that entry holds exactly its token. An entry only ever holds 0 or tokens
    /// of its own slot (see `Core::sync_entry`), and no token is 0, so a stale offset (0
    /// before registration), an uncached slot or `UNREGISTERED` never matches.
    #[inline(always)]
    pub(crate) fn fast_entry(&self, at: &EntryAt) -> &Entry {
        let offset = at.0.load(Relaxed);
        // SAFETY: `offset` is `slot * size_of::<Entry>()` for some `slot < CACHED_SLOTS`
        // (the only values an `EntryAt` holds), so it points at an element of `entries`,
        // which is aligned and initialised.
        unsafe {
            &*self
                .entries
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<Entry>()
        }
    }
}

/// Where an instance's entry sits in every thread's cache: the byte offset of a cached
/// slot's entry, 0 until set. Read next to the token by the fast path, which then needs no
/// arithmetic on the token and no bounds check (see [`ThreadCache::fast_entry`]).
pub(crate) struct EntryAt(AtomicUsize);

impl EntryAt {
    pub(crate) const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Points at `slot`'s entry; masked to a cached slot (callers pass one).
    pub(crate) fn set(&self, slot: usize) {
        let slot = slot & (CACHED_SLOTS - 1);
        self.0.store(slot * core::mem::size_of::<Entry>(), Relaxed);
    }
}

thread_local! {
    static CACHE: ThreadCache = const { ThreadCache::new() };
    static ENTERED: EnterStack = const { EnterStack::new() };
}

#[cfg(not(unix))]
thread_local! {
    static EXIT: ExitGuard = const { ExitGuard };
}

/// Runs `f` on this thread's cache without any set-up: the fast path. Entries of a thread
/// that has not registered its exit hook hold no tokens, so they simply never match.
#[inline(always)]
pub(crate) fn with_cache<R>(f: impl FnOnce(&ThreadCache) -> R) -> R {
    CACHE.with(f)
}

/// This thread's cache, borrowed for as long as the instance whose entry offset is `at`
/// (callers use it within one call on that instance). For code that works on the cache
/// across several steps: `with_cache` with a large closure is not inlined
/// (`LocalKey::with` becomes a call, with the closure's captures spilled to the stack);
/// the closure here is one address, which is.
#[inline(always)]
pub(crate) fn cache_for(_at: &EntryAt) -> &ThreadCache {
    let c = with_cache(core::ptr::from_ref);
    // SAFETY: `c` points at this thread's `CACHE`, which `with_cache` just handed out, so
    // it is valid now. It stays valid while this thread runs: `ThreadCache` has no drop
    // glue (asserted above), so its storage is never torn down early, only released with
    // the thread. The reference cannot reach another thread: `ThreadCache` is not `Sync`,
    // so `&ThreadCache` is not `Send`. Nothing in an allocator call or a query ends the
    // thread, and callers drop the reference before they return.
    unsafe { &*c }
}

/// This thread's entry at `at` (see [`ThreadCache::fast_entry`]), for a slow path that
/// works on it across several steps (see [`cache_for`]).
#[inline(always)]
pub(crate) fn fast_entry_here(at: &EntryAt) -> &Entry {
    cache_for(at).fast_entry(at)
}

/// Runs `f` on this thread's cache if it may hold credit (its exit hook is registered).
/// `None` while the hook is being registered (a re-entrant call from inside that
/// registration) and after the thread's exit hook has run.
pub(crate) fn with_live_cache<R>(f: impl FnOnce(&ThreadCache) -> R) -> Option<R> {
    CACHE.with(|cache| {
        match cache.state.get() {
            CacheState::Live => {}
            CacheState::Fresh => {
                cache.state.set(CacheState::Registering);
                // Registering may allocate and re-enter the allocator, which then sees
                // REGISTERING and takes the exact path. It fails when a thread's first
                // allocation comes from a destructor at its exit, when registering is no
                // longer possible: then this thread never holds credit.
                let registered = register_exit_hook();
                if !registered {
                    cache.state.set(CacheState::Exited);
                    return None;
                }
                cache.state.set(CacheState::Live);
            }
            CacheState::Registering | CacheState::Exited => return None,
        }
        Some(f(cache))
    })
}

/// Runs `f` on this thread's stack of entered reservations; `None` once the thread's
/// thread-locals are being destroyed.
pub(crate) fn with_enter_stack<R>(f: impl FnOnce(&EnterStack) -> R) -> Option<R> {
    ENTERED.try_with(f).ok()
}

/// Registers this thread's exit hook ([`return_all_credit`]); false if that is not possible
/// (the thread is exiting already).
#[cfg(not(unix))]
fn register_exit_hook() -> bool {
    // Touching EXIT registers its destructor. `try_with`: not possible once the thread's
    // thread-locals are being destroyed.
    EXIT.try_with(|_| {}).is_ok()
}

/// Runs [`return_all_credit`] when its thread exits (not unix: see the module docs).
#[cfg(not(unix))]
struct ExitGuard;

#[cfg(not(unix))]
impl Drop for ExitGuard {
    fn drop(&mut self) {
        return_all_credit();
    }
}

/// Registers this thread's exit hook ([`return_all_credit`]): a non-null value for the
/// process's pthread key, whose destructor runs at the thread's exit. False if that is not
/// possible. The key is made once per process; threads that race to make it each make one
/// and all but the first delete theirs, so nobody waits.
#[cfg(unix)]
fn register_exit_hook() -> bool {
    use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// The key plus one; 0 until made.
    static KEY: AtomicUsize = AtomicUsize::new(0);
    let key = match KEY.load(Relaxed) {
        0 => {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: `key` is a valid out-pointer; the destructor has the signature
            // pthread expects and never unwinds.
            if unsafe { libc::pthread_key_create(&mut key, Some(exit_hook)) } != 0 {
                return false;
            }
            // Relaxed: the key is a plain number; nothing else is published with it.
            match KEY.compare_exchange(0, key as usize + 1, Relaxed, Relaxed) {
                Ok(_) => key,
                Err(first) => {
                    // SAFETY: our own key, not handed to anyone.
                    unsafe { libc::pthread_key_delete(key) };
                    (first - 1) as libc::pthread_key_t
                }
            }
        }
        plus_one => (plus_one - 1) as libc::pthread_key_t,
    };
    // Any non-null value: pthread only runs the destructor for keys whose value is set.
    let mark = core::ptr::NonNull::<u8>::dangling()
        .as_ptr()
        .cast::<libc::c_void>();
    // SAFETY: `key` was made by pthread_key_create above (here or on another thread) and is
    // never deleted once stored.
    unsafe { libc::pthread_setspecific(key, mark) == 0 }
}

/// The pthread key's destructor: this thread is exiting.
#[cfg(unix)]
extern "C" fn exit_hook(_: *mut libc::c_void) {
    return_all_credit();
}

/// Returns every entry's credit, hold and counts through the registry when its thread
/// exits, and marks the cache exited (later calls on this thread are exact).
fn return_all_credit() {
    CACHE.with(|cache| {
        cache.state.set(CacheState::Exited);
        for (slot, entry) in cache.entries.iter().enumerate() {
            let token = entry.token();
            if token.is_none() {
                continue;
            }
            let (allocs, deallocs, reallocs) = entry.take_counts();
            let post = Post {
                returned: entry.credit(),
                added: 0,
                allocs,
                deallocs,
                reallocs,
                peak: entry.peak_candidate(),
                peak_gen: entry.peak_gen(),
                hold: entry.hold(),
                ..Post::default()
            };
            registry::post(slot, token.id(), post);
            entry.clear(Token::NONE);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_and_refund_respect_token_and_bounds() {
        let e = Entry::new();
        let t = Token::new(1, Some(0));
        assert_eq!(e.try_spend(t, 1, Op::Alloc), Spent::No);
        e.token.set(t);
        e.set_credit(100);
        e.reset_low();
        assert_eq!(e.try_spend(t, 101, Op::Alloc), Spent::No);
        assert_eq!(e.try_spend(t, 60, Op::Alloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.pending().0), (40, 40, 1));
        e.set_hold(50); // rounded down to whole units: 48
        assert_eq!(e.hold(), 48);
        assert_eq!(e.try_refund(t, 9, Op::Dealloc), Spent::No);
        assert_eq!(e.try_refund(t, 8, Op::Dealloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.hold()), (48, 40, 48));
        // Within the credit above the low: the low stays; below it: a new low.
        assert_eq!(e.try_spend(t, 5, Op::Alloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.hold()), (43, 40, 48));
        assert_eq!(e.try_spend(t, 20, Op::Alloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.hold()), (23, 23, 48));
        assert_eq!(e.try_spend(t, 24, Op::Alloc), Spent::No);
        assert_eq!((e.credit(), e.low(), e.hold()), (23, 23, 48));
        assert_eq!(e.try_refund(t, 26, Op::Dealloc), Spent::No);
        assert_eq!(e.try_refund(t, 25, Op::Dealloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.hold()), (48, 23, 48));
        e.hand_back(35);
        assert_eq!((e.credit(), e.low(), e.hold()), (13, 13, 48));
        // A hold below the low-water mark takes nothing back, until a new low passes it.
        e.set_hold(0);
        assert_eq!(e.try_refund(t, 1, Op::Dealloc), Spent::No);
        e.set_credit(40);
        e.reset_low();
        e.set_hold(HOLD_UNIT);
        assert_eq!(e.try_refund(t, 1, Op::Dealloc), Spent::No);
        assert_eq!(e.try_spend(t, 30, Op::Alloc), Spent::Yes);
        assert_eq!((e.credit(), e.low(), e.hold()), (10, 10, 16));
        assert_eq!(e.try_refund(t, 7, Op::Dealloc), Spent::No);
        assert_eq!(e.try_refund(t, 6, Op::Dealloc), Spent::Yes);
        // The hold never passes HOLD_MAX, whatever is asked.
        e.set_hold(usize::MAX);
        assert_eq!(e.hold(), HOLD_MAX);
        assert_eq!(e.try_spend(t.next_epoch(), 1, Op::Alloc), Spent::No);
    }

    /// Random operations on an entry against a plain model of its credit, low-water mark
    /// and hold, with sizes up to `isize::MAX`: the fast paths grant exactly what fits, and
    /// `ceiling` stays `hold - low` (0 below) through every way `low` or the hold moves.
    #[test]
    fn entry_matches_model() {
        let mut s: u64 = 0x1234_5678_9abc_def1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..2000 {
            let e = Entry::new();
            let t = Token::new(1, Some(0));
            e.token.set(t);
            let (mut credit, mut low, mut hold) = (0usize, 0usize, 0usize);
            for step in 0..200 {
                let r = next();
                let small = (next() % (HOLD_MAX as u64 + 1000)) as usize;
                let size = match r % 4 {
                    0 => small % 64 + 1,
                    1 => small,
                    2 => (next() as usize) & (isize::MAX as usize),
                    _ => small % 4096,
                };
                match r % 7 {
                    0 => {
                        let c = small.min(HOLD_MAX);
                        e.set_credit(c);
                        credit = c;
                        low = low.min(c);
                    }
                    1 => {
                        if credit > 0 {
                            let b = small % (credit + 1);
                            e.hand_back(b);
                            credit -= b;
                            low = low.min(credit);
                        }
                    }
                    2 => {
                        let h = if next() % 5 == 0 { usize::MAX } else { small };
                        e.set_hold(h);
                        hold = h.min(HOLD_MAX) / HOLD_UNIT * HOLD_UNIT;
                    }
                    3 => {
                        e.reset_low();
                        low = credit;
                    }
                    4 | 5 => {
                        let got = e.try_spend(t, size, Op::Alloc) != Spent::No;
                        assert_eq!(got, size <= credit, "r{round} s{step} spend {size}");
                        if got {
                            credit -= size;
                            low = low.min(credit);
                        }
                    }
                    _ => {
                        let got = e.try_refund(t, size, Op::Dealloc) != Spent::No;
                        // A refund of 0 bytes is granted even over the hold (it moves nothing).
                        let want = size == 0 || credit.checked_add(size).is_some_and(|c| c <= hold);
                        assert_eq!(
                            got, want,
                            "r{round} s{step} refund {size} c{credit} l{low} h{hold}"
                        );
                        if got {
                            credit += size;
                        }
                    }
                }
                assert_eq!(e.credit(), credit, "r{round} s{step}");
                assert_eq!(e.low(), low, "r{round} s{step}");
                assert_eq!(e.hold(), hold, "r{round} s{step}");
                assert_eq!(
                    e.ceiling.get(),
                    hold.saturating_sub(low),
                    "r{round} s{step}"
                );
                assert!(e.above.get() <= HOLD_MAX);
            }
        }
    }
}
