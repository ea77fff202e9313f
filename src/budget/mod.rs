//! The accounting core: one budget, the per-thread credit carved out of it, the registry
//! of instances, and the concurrency protocols they share. Private: the public shells
//! (`LimitedAllocator` in `allocator`, `Reservation` and `EnterGuard` in `reservation`,
//! `scope`, the Arrow pool in `arrow`) are built on it and import from it; nothing here
//! imports a shell. Outside this folder the core uses only the leaf modules `error` (the
//! refusal line's number formatting), `stderr` (the raw write of a line), `panic_hook` (the
//! kept panic message that follows an abort's line; it imports only `stderr`) and
//! `pressure` (levels and thresholds).
//!
//! Dependencies, one way (an arrow reads "imports"; checked with
//! `grep -rn "use super::\|crate::" src/budget`):
//!
//! ```text
//!   allocator   reservation ◀── scope   arrow                 the shells (crate::*)
//!       │            │                    │
//!       ▼            ▼                    ▼
//!   accounting ◀── accounting/{charge, credit, entered}       Core, Mode, Report
//!       │
//!       ├──▶ thread_cache ──▶ registry, reservation_state, token, tuning
//!       ├──▶ registry ──────▶ pin ──▶ sync;  token, tuning
//!       ├──▶ credit_pool ───▶ sync
//!       ├──▶ overdraft ─────▶ report ──▶ crate::{error, stderr, panic_hook};  tuning
//!       └──▶ reservation_state, token, tuning, crate::pressure  (leaves: import nothing
//!                                                               of the crate)
//! ```
//!
//! | module | what it owns |
//! |---|---|
//! | `accounting` | [`Core`]: the shared counter, settings, readings; its paths in `accounting/` |
//! | `accounting/charge` | the charge and release paths, carving, refusal, the overdraft's use |
//! | `accounting/credit` | this thread's entry: registration, sync, holds, windows, publication, mailbox, epochs |
//! | `accounting/entered` | allocations served from an entered reservation |
//! | `thread_cache` | the per-thread `Entry` array, its fast-path spend/refund, the enter stack, the exit hook |
//! | `registry` | the static slot table and the mailbox exiting threads post to |
//! | `pin` | the registry's handshake between posters and a dropping owner (loom-modelled) |
//! | `credit_pool` | the carve CAS and the pool that bounds all holds together (loom-modelled) |
//! | `sync` | the atomics the protocols use: loom's under `--cfg loom`, else `core`'s |
//! | `reservation_state` | the part of a reservation the core reaches (headroom, used, overflow) |
//! | `token` | the packed token newtype and its predicates |
//! | `tuning` | every tuning constant, each with why it has its value |
//! | `overdraft` | a panicking thread's bounded emergency allowance |
//! | `report` | the one rate-limited refusal line on stderr |

// The concurrency protocols, written against the `sync` shim: loom-models/ includes these
// three files by path and model-checks them (this crate is never built with --cfg loom).
mod credit_pool;
mod pin;
mod sync;

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
