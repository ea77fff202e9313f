//! The accounting core: one budget, the per-thread credit carved out of it, the registry
//! of instances, and the concurrency protocols they share. Private: the public shells
//! (`LimitedAllocator`, `Reservation`, `scope`) are built on it and import from it; nothing
//! here imports a shell.

// The concurrency protocols, written against the `sync` shim: all that a loom build
// compiles (loom-models/ includes these three files by path).
mod credit_pool;
mod pin;
mod sync;

not_in_loom_builds! {
mod accounting;
mod overdraft;
pub(crate) mod registry;
mod report;
mod reservation_state;
mod thread_cache;
mod token;
mod tuning;

pub(crate) use accounting::{Core, Mode, Report};
pub(crate) use report::growing_to;
pub use reservation_state::Overflow;
pub(crate) use reservation_state::ReservationState;
pub(crate) use thread_cache::{Op, Spent};
}
