//! The atomics that the concurrency protocols ([`pin`](super::pin),
//! [`credit_pool`](super::credit_pool)) are written against: loom's under `--cfg loom` (the
//! model-checking build of `.ci/run`, which compiles only those protocols and their models),
//! core's otherwise.
//!
//! loom treats SeqCst *accesses* as AcqRel (it would report false races on a store-load
//! handshake made of them) but models `fence(SeqCst)` exactly; so the protocols that need
//! a store-load order (the registry's pin handshake) make it with SeqCst fences, which loom
//! checks as written.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicUsize};

/// One step of a wait for another thread: crossbeam's bounded backoff (spins, then
/// yields); under loom, a yield to the model's scheduler (a spinning model never ends).
pub(crate) struct Backoff(#[cfg(not(loom))] crossbeam_utils::Backoff);

impl Backoff {
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        return Self(crossbeam_utils::Backoff::new());
        #[cfg(loom)]
        return Self();
    }

    pub(crate) fn snooze(&self) {
        #[cfg(not(loom))]
        self.0.snooze();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}
