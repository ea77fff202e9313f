//! The core's tuning constants, in one leaf module (it imports nothing): each says why it
//! has its value. Changing one changes the trade-off between the fast path's reach (how
//! much credit a thread keeps, how often it touches shared memory) and the slack other
//! threads' credit may show; `docs/performance.md` has the measurements behind them.

/// The most credit a thread takes in one refill. 256 KiB: a thread that allocates and
/// frees small blocks refills once per ~1000 of them at 256 bytes, so the shared counter's
/// contended read-modify-write is off the per-call cost, while one refill is still a small
/// bite of any budget large enough to run a thread pool.
pub(crate) const MAX_BATCH: usize = 256 << 10;

/// The most freed bytes a thread keeps as credit before handing the excess back. Two
/// batches: a thread that frees what it just allocated (the common pattern) keeps a full
/// batch of room either way of its working point, so it neither refills nor gives back on
/// every swing.
pub(crate) const HOLD_MAX: usize = 2 * MAX_BATCH;

/// A refill takes at most this fraction (1/N) of the headroom left after the request. 1/32:
/// batches shrink geometrically as the budget fills, so near the limit accounting is exact
/// per call and one thread's refill cannot starve the rest.
pub(crate) const HEADROOM_SHARE: usize = 32;

/// A thread keeps at most this fraction (1/N) of the headroom (as of its last slow path)
/// in freed bytes. 1/8: freed bytes go back to the shared budget sooner than refills shrink
/// (1/32), so near the limit the bytes a thread frees become available to the others.
pub(crate) const HOLD_SHARE: usize = 8;

/// Blocks larger than this that the credit cannot serve (or hold) are charged and released
/// *directly*: exactly their size on the shared counter, with the credit left alone. One
/// batch: a refill for such a block would be mostly the block itself, and a refund would be
/// mostly handed back at once, so going through the credit only costs instructions.
pub(crate) const DIRECT_MIN: usize = MAX_BATCH;

/// All threads' credit together is at most 1/N of the limit: the bound `B` of
/// `docs/design.md`. Each thread's credit is at most its hold, and every hold is taken from
/// one pool per instance (`Core::credit_out`) that never passes `limit / CREDIT_SHARE`, so
/// however many threads hold credit (busy, idle or parked for ever), they withhold at most
/// `B` bytes together. 1/16: small enough that a program can reserve 15/16 of its budget
/// with nothing live (a 64 MiB budget withholds at most 4 MiB), large enough that 8
/// threads get a full [`HOLD_MAX`] on a budget of 64 MiB (see [`THREAD_SHARE`]).
pub(crate) const CREDIT_SHARE: usize = 16;

/// One thread's hold is at most 1/N of the pool `limit / CREDIT_SHARE`, so at least N
/// threads get credit before the pool runs dry (more when holds shrink with the headroom).
/// 8: a typical worker pool on a small machine gets a full hold each.
pub(crate) const THREAD_SHARE: usize = 8;

/// The hold is kept in units of this many bytes (see `Entry::set_hold`). 16: the hold then
/// fits a `u16` next to the count-downs in the entry's one cache line (asserted below), and
/// 16 bytes is below any allocator's granule, so the rounding costs nothing visible.
pub(crate) const HOLD_UNIT: usize = 16;
const _: () = assert!(HOLD_MAX / HOLD_UNIT <= u16::MAX as usize);

/// Pending counts are published once any of them reaches this, so other threads' `stats()`
/// lag by at most this many operations per live thread. 4096: a publication (a few shared
/// writes) then costs well under 1 % of the calls it publishes, and it still fits the `u16`
/// count-downs.
pub(crate) const PUBLISH_EVERY: u16 = 4096;

/// Most reservations one thread can have entered at once (all instances together). 16: far
/// more nesting than a query plan uses, and the enter stack stays a small fixed array (no
/// allocation when entering).
pub(crate) const MAX_ENTERED: usize = 16;

/// Registry slots that get a per-thread credit cache (the fast path); later slots have a
/// mailbox only, and their instances use exact per-call accounting. 64: each slot costs
/// every thread one 64-byte entry (4 KiB of thread-local storage per thread in all), and
/// programs rarely keep more than a handful of budgets alive. A power of two so the fast
/// path finds an entry with a shift.
pub(crate) const CACHED_SLOTS: usize = 64;

/// A panicking thread's default emergency allowance above the limit (see `overdraft`).
/// 1 MiB: enough for the default panic hook's message, libtest's capture buffer and the
/// unwinder's exception object with room to spare; a full backtrace's symbolization can
/// take more (see `docs/production.md`).
pub(crate) const DEFAULT_OVERDRAFT: usize = 1 << 20;
