//! The Arrow memory pool: `impl arrow_buffer::MemoryPool for LimitedAllocator` (feature
//! `arrow`).
//!
//! Arrow buffers *claim* their bytes from a pool ([`arrow_buffer::Buffer::claim`]): the
//! pool hands out a `Box<dyn MemoryReservation>` that the buffer keeps, resizes when it
//! reallocates, and drops with its last reference. An instance plays one of two
//! [`PoolRole`]s:
//!
//! - [`PoolRole::Standalone`]: the instance is not the `#[global_allocator]`, so it never
//!   sees the buffers' bytes. A claim *charges* them to its budget. `reserve` is infallible
//!   by the trait, so it may overfill (`available()` goes negative) and the next fallible
//!   request (`try_reserve`, `check_can_allocate`, an allocation) is refused.
//! - [`PoolRole::Global`]: the instance is also the `#[global_allocator]` and already
//!   charged every heap byte of the buffer when it was allocated. A claim only *attributes*
//!   them: it is counted in [`AllocatorStats::pool_claimed_bytes`](crate::AllocatorStats)
//!   and never charged a second time.
//!
//! Both roles count claims in `pool_claimed_bytes`. The role is [`PoolRole::Auto`] by
//! default and decided on first use by a probe (see [`PoolRole::Auto`]), or set explicitly
//! with [`LimitedAllocator::set_pool_role`].
//!
//! A claim outlives the `&self` it was made from (the trait wants a `'static` box), and the
//! instance may be moved or dropped before the buffer: so a claim holds only the instance's
//! registry mailbox (slot and unique id) and posts its changes there. The instance absorbs
//! them on its next read or slow path; a post to an instance that is gone is discarded. No
//! claim ever dereferences the instance.

use crate::budget::registry::{self, Post};
use crate::reservation::Reservation;
use crate::LimitedAllocator;
use arrow_buffer::{MemoryPool, MemoryReservation};
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::alloc::{GlobalAlloc, Layout};

/// Which way an instance accounts Arrow claims ([`arrow_buffer::MemoryPool`]): charged to
/// its budget (a standalone pool) or attributed only (the global allocator, which already
/// charged the bytes). Set with [`LimitedAllocator::set_pool_role`]; see `docs/arrow.md`.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::arrow::PoolRole;
/// let pool = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// // Not the global allocator of this program: the probe finds that out.
/// assert_eq!(pool.pool_role(), PoolRole::Standalone);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PoolRole {
    /// Decide on first use. The probe enters a private, empty [`Reservation`] of this
    /// instance on the calling thread, allocates 16 bytes through the global allocator
    /// (`std::alloc::alloc`) and frees them: if the instance is the global allocator, the
    /// allocation was drawn from that reservation (only the calling thread can touch it, so
    /// the answer is exact under any concurrency), otherwise nothing reached it. An instance
    /// that cannot enter reservations ([`LimitedAllocator::new_exact`], or no free thread
    /// slot) is probed by its count of allocations and refusals instead, which another
    /// thread allocating through the same instance at that moment can disturb (reading a
    /// standalone instance as global): set the role explicitly there.
    /// The answer is remembered until [`LimitedAllocator::set_pool_role`] is called.
    #[default]
    Auto,
    /// Claims are charged to this instance's budget (it is not the global allocator).
    Standalone,
    /// Claims are attribution only (this instance is the global allocator and already
    /// charged the bytes).
    Global,
}

const STANDALONE: u8 = 1;
const GLOBAL: u8 = 2;

/// The Arrow pool's state in each [`LimitedAllocator`] (a field behind `feature = "arrow"`,
/// kept out of the budget's core): the [`PoolRole`] in force.
#[derive(Debug)]
pub(crate) struct ArrowState {
    /// 0 while [`PoolRole::Auto`] has not decided yet, else [`STANDALONE`] or [`GLOBAL`].
    /// Relaxed: a setting read on its own; the probe that decides it may run twice.
    role: AtomicU8,
}

impl ArrowState {
    pub(crate) const fn new() -> Self {
        Self {
            role: AtomicU8::new(0),
        }
    }
}

impl<A: GlobalAlloc> LimitedAllocator<A> {
    /// Sets how claims made through the Arrow [`MemoryPool`] interface are accounted.
    /// [`PoolRole::Auto`] (the default) probes on the next use. Claims already made keep the
    /// role they were made with.
    ///
    /// Declaring [`PoolRole::Global`] on an instance that is not the global allocator makes
    /// claims invisible to its budget; declaring [`PoolRole::Standalone`] on the global
    /// allocator charges the claimed bytes twice.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::arrow::PoolRole;
    /// use arrow_buffer::MemoryPool;
    ///
    /// let pool = LimitedAllocator::new(std::alloc::System, 1000);
    /// pool.set_pool_role(PoolRole::Standalone);
    /// let claim = pool.reserve(600);
    /// assert_eq!(pool.allocated_bytes(), 600);
    /// drop(claim);
    /// assert_eq!(pool.allocated_bytes(), 0);
    /// ```
    pub fn set_pool_role(&self, role: PoolRole) {
        let code = match role {
            PoolRole::Auto => 0,
            PoolRole::Standalone => STANDALONE,
            PoolRole::Global => GLOBAL,
        };
        self.arrow_state().role.store(code, Relaxed);
    }

    /// The role in effect for new claims: [`PoolRole::Standalone`] or [`PoolRole::Global`],
    /// running the [`PoolRole::Auto`] probe first if the role is not decided yet.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::arrow::PoolRole;
    /// let pool = LimitedAllocator::new(std::alloc::System, 1000);
    /// assert_eq!(pool.pool_role(), PoolRole::Standalone);
    /// pool.set_pool_role(PoolRole::Global);
    /// assert_eq!(pool.pool_role(), PoolRole::Global);
    /// ```
    pub fn pool_role(&self) -> PoolRole {
        match self.arrow_state().role.load(Relaxed) {
            STANDALONE => PoolRole::Standalone,
            GLOBAL => PoolRole::Global,
            _ => {
                let global = self.probe_is_global();
                let code = if global { GLOBAL } else { STANDALONE };
                self.arrow_state().role.store(code, Relaxed);
                if global {
                    PoolRole::Global
                } else {
                    PoolRole::Standalone
                }
            }
        }
    }

    /// True when an allocation through the global allocator on this thread reaches this
    /// instance. See [`PoolRole::Auto`].
    fn probe_is_global(&self) -> bool {
        let layout = Layout::new::<[u64; 2]>();
        let probe = |check: &dyn Fn() -> bool| {
            // `black_box`: an unused allocation may be optimised away, and then the probe
            // would see nothing (a global instance would read as standalone).
            // SAFETY: the layout has a non-zero size.
            let p = core::hint::black_box(unsafe { std::alloc::alloc(layout) });
            let seen = check();
            if !p.is_null() {
                // SAFETY: `p` was just allocated by the global allocator with `layout`.
                unsafe { std::alloc::dealloc(p, layout) };
            }
            seen
        };
        if let Ok(private) = self.try_reserve(0) {
            if let Ok(inside) = private.try_enter() {
                let seen = probe(&|| private.peak_used() > 0 || private.refusals() > 0);
                drop(inside);
                return seen;
            }
        }
        // No thread slot (or this thread is entered in a reservation that refused even the
        // probe's bookkeeping): compare the instance's count of allocations and refusals
        // around the probe, three times.
        let seen = || {
            let c = self.core().counts();
            c.allocs + c.refusals
        };
        (0..3).all(|_| {
            let before = seen();
            probe(&|| seen() > before)
        })
    }
}

/// A claim made through [`MemoryPool::reserve`]: posts its changes to the instance's
/// mailbox, never touching the instance itself.
#[derive(Debug)]
struct PoolClaim {
    /// The instance's registry slot and id; `None` when the table was full (the claim then
    /// accounts nothing).
    mailbox: Option<(usize, u64)>,
    size: usize,
    /// Standalone role: the bytes are charged to the budget, not only attributed.
    charged: bool,
}

impl PoolClaim {
    fn post(&self, added: usize, returned: usize) {
        let Some((slot, id)) = self.mailbox else {
            return;
        };
        let charged = |n: usize| if self.charged { n } else { 0 };
        registry::post(
            slot,
            id,
            Post {
                added: charged(added),
                returned: charged(returned),
                attributed: added,
                unattributed: returned,
                ..Post::default()
            },
        );
    }
}

impl MemoryReservation for PoolClaim {
    fn size(&self) -> usize {
        self.size
    }

    fn resize(&mut self, new_size: usize) {
        if new_size > self.size {
            self.post(new_size - self.size, 0);
        } else {
            self.post(0, self.size - new_size);
        }
        self.size = new_size;
    }
}

impl Drop for PoolClaim {
    fn drop(&mut self) {
        self.post(0, self.size);
    }
}

/// The budget as an Arrow memory pool. `capacity()` is [`limit`](LimitedAllocator::limit),
/// `used()` is [`allocated_bytes`](LimitedAllocator::allocated_bytes), `available()` is
/// their difference (negative when a standalone pool was overfilled by claims, clamped to
/// `isize`). How a claim is accounted depends on the instance's [`PoolRole`].
///
/// ```
/// use arrow_buffer::{Buffer, MemoryPool};
/// use limited_allocator::LimitedAllocator;
///
/// let pool = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let buffer = Buffer::from_vec(vec![0u8; 4096]);
/// buffer.claim(&pool);
/// buffer.slice(100).claim(&pool); // the same bytes: replaces the claim, counts once
/// assert_eq!((pool.used(), pool.stats().pool_claimed_bytes), (4096, 4096));
/// assert_eq!(pool.available(), (1 << 20) - 4096);
/// drop(buffer);
/// assert_eq!(pool.used(), 0);
/// ```
impl<A: GlobalAlloc + Send + Sync> MemoryPool for LimitedAllocator<A> {
    fn reserve(&self, size: usize) -> Box<dyn MemoryReservation> {
        let charged = self.pool_role() == PoolRole::Standalone;
        let mailbox = self.core().mailbox();
        if mailbox.is_some() {
            if charged {
                self.core().charge_unchecked(size);
            }
            self.core().add_attributed(size);
        }
        Box::new(PoolClaim {
            mailbox,
            size,
            charged,
        })
    }

    fn available(&self) -> isize {
        let (limit, used) = (self.limit() as i128, self.allocated_bytes() as i128);
        (limit - used).clamp(isize::MIN as i128, isize::MAX as i128) as isize
    }

    fn used(&self) -> usize {
        self.allocated_bytes()
    }

    fn capacity(&self) -> usize {
        self.limit()
    }
}

/// A [`Reservation`] is an Arrow reservation too. Arrow's `resize` is infallible: growing
/// past the budget overfills it exactly like [`MemoryPool::reserve`] does (the bytes are
/// charged anyway and the next fallible request is refused); shrinking stops at the bytes
/// in use, as [`Reservation::resize`] does.
///
/// ```
/// use arrow_buffer::MemoryReservation;
/// use limited_allocator::LimitedAllocator;
///
/// let pool = LimitedAllocator::new(std::alloc::System, 1000);
/// let mut r = pool.try_reserve(400)?;
/// MemoryReservation::resize(&mut r, 1200); // overfills
/// assert_eq!((MemoryReservation::size(&r), pool.allocated_bytes()), (1200, 1200));
/// assert!(pool.check_can_allocate(1).is_err());
/// MemoryReservation::resize(&mut r, 100);
/// assert_eq!(pool.allocated_bytes(), 100);
/// # Ok::<(), limited_allocator::LimitExceeded>(())
/// ```
impl<A: Sync> MemoryReservation for Reservation<'_, A> {
    fn size(&self) -> usize {
        Reservation::size(self)
    }

    fn resize(&mut self, new_size: usize) {
        let size = Reservation::size(self);
        if new_size > size {
            self.grow_overfill(new_size - size);
        } else {
            self.shrink(size - new_size);
        }
    }
}
