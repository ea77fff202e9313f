//! Carving bytes out of the budget, and the pool that bounds all threads' credit together.
//!
//! The budget is one counter, `charged`, that only [`carve`] raises, with a
//! compare-and-swap that re-checks the limit against the value it replaces: two threads
//! never both pass a check only one of them fits. A thread's credit comes out of `charged`
//! like anything else, in a batch cut to its *hold*, and every hold is taken from one
//! [`CreditPool`] per instance that never passes its bound: so all credit together is at
//! most the bound, however many threads hold it, and a request of `limit - bound` fits when
//! nothing is live. The loom models below check the two together.

use super::sync::AtomicUsize;
use core::sync::atomic::Ordering::Relaxed;

/// Takes `need` bytes, plus a batch of at most `headroom_left / share` and at most `cap`,
/// from `charged` if `need` fits under `limit`. Returns (bytes taken, `charged` after), or
/// `None` when `need` does not fit.
///
/// Relaxed: `charged` is a count, not a channel (nothing is published through it); the
/// compare-and-swap makes every increase a single step against the value it replaces, so
/// the count never passes the limit whatever the interleaving.
#[inline]
pub(crate) fn carve(
    charged: &AtomicUsize,
    limit: usize,
    need: usize,
    share: usize,
    cap: usize,
) -> Option<(usize, usize)> {
    let mut current = charged.load(Relaxed);
    loop {
        let headroom = limit.saturating_sub(current);
        if need > headroom {
            return None;
        }
        let take = need + ((headroom - need) / share).min(cap);
        match charged.compare_exchange_weak(current, current + take, Relaxed, Relaxed) {
            Ok(_) => return Some((take, current + take)),
            Err(now) => current = now,
        }
    }
}

/// The sum of every thread's hold for one instance, kept at most a bound when it grows.
pub(crate) struct CreditPool(AtomicUsize);

impl CreditPool {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// The holds outstanding now.
    pub(crate) fn load(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// Takes up to `more` bytes of hold, in whole `unit`s, without taking the pool past
    /// `bound`; returns how many were taken.
    ///
    /// Relaxed: the pool is a bound, not a channel; nothing is read on the strength of
    /// having taken from it. Every hold is added here before an entry may use it and given
    /// back only after the entry stopped using it (each thread's changes in program order,
    /// the counter's in one modification order), so its value is at least the sum of the
    /// holds in use at every moment.
    pub(crate) fn take(&self, bound: usize, more: usize, unit: usize) -> usize {
        let mut out = self.0.load(Relaxed);
        loop {
            let got = more.min(bound.saturating_sub(out)) / unit * unit;
            if got == 0 {
                return 0;
            }
            match self
                .0
                .compare_exchange_weak(out, out + got, Relaxed, Relaxed)
            {
                Ok(_) => return got,
                Err(now) => out = now,
            }
        }
    }

    /// Gives back `bytes` of hold that an entry no longer uses.
    pub(crate) fn give(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Relaxed);
    }
}

#[cfg(all(test, loom))]
mod models {
    use super::*;
    use loom::sync::Arc;

    const LIMIT: usize = 64;
    const BOUND: usize = LIMIT / 16;

    struct Budget {
        charged: AtomicUsize,
        pool: CreditPool,
    }

    /// One thread's life: take a hold, refill credit within it, spend some, free it back
    /// into the credit, return the credit and the hold.
    fn thread_life(b: &Budget, want_hold: usize) {
        let hold = b.pool.take(BOUND, want_hold, 1);
        assert!(b.pool.load() <= BOUND);
        if let Some((taken, after)) = carve(&b.charged, LIMIT, 1, 1, hold) {
            assert!(after <= LIMIT);
            assert!(taken <= 1 + hold, "the batch passed the hold");
            // Spend 1 (live), free it again: the credit is `taken` again, within the hold
            // plus the byte in use a moment ago; hand it all back.
            b.charged.fetch_sub(taken, Relaxed);
        }
        b.pool.give(hold);
    }

    /// Loom with a bound on preemptions: the compare-and-swap loops of three threads
    /// unbounded take far longer than `.ci/run` may spend.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// A thread takes credit (1 byte live) while another reserves `LIMIT - BOUND - 1`:
    /// live + reservation + at most `BOUND` of credit. The reservation always fits,
    /// `charged` never passes the limit, the pool never passes its bound, and everything
    /// comes back.
    #[test]
    fn credit_within_the_bound_never_blocks_a_reservation() {
        model(|| {
            let b = Arc::new(Budget {
                charged: AtomicUsize::new(0),
                pool: CreditPool::new(),
            });
            let t = {
                let b = Arc::clone(&b);
                loom::thread::spawn(move || thread_life(&b, BOUND))
            };
            let r = carve(&b.charged, LIMIT, LIMIT - BOUND - 1, 1, 0);
            let (taken, after) = r.expect("limit - bound fits with only credit charged");
            assert_eq!(taken, LIMIT - BOUND - 1);
            assert!(after <= LIMIT);
            b.charged.fetch_sub(taken, Relaxed);
            t.join().unwrap();
            assert_eq!((b.charged.load(Relaxed), b.pool.load()), (0, 0));
        });
    }

    /// Two threads take holds and credit at once: the pool never passes its bound (each
    /// asks for more than half of it), `charged` never passes the limit, all comes back.
    #[test]
    fn two_threads_share_the_bound() {
        model(|| {
            let b = Arc::new(Budget {
                charged: AtomicUsize::new(0),
                pool: CreditPool::new(),
            });
            let threads: Vec<_> = [3, 3]
                .into_iter()
                .map(|want| {
                    let b = Arc::clone(&b);
                    loom::thread::spawn(move || thread_life(&b, want))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!((b.charged.load(Relaxed), b.pool.load()), (0, 0));
        });
    }
}
