//! A hard, observable memory budget for a Rust process.
//!
//! [`LimitedAllocator`] wraps a [`GlobalAlloc`](std::alloc::GlobalAlloc) and refuses
//! allocations past its limit (returning null, or a typed [`LimitExceeded`] from the
//! fallible APIs) instead of letting the process be OOM-killed. It reports usage, peak and
//! [`PressureLevel`]s, answers pre-flight checks ([`LimitedAllocator::check_can_allocate`],
//! [`LimitedAllocator::try_reserve`]), and its limit can come from the environment
//! ([`limit_from_env`]).
//!
//! ```no_run
//! use limited_allocator::{limit_from_env, LimitedAllocator};
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ALLOC.set_limit(limit_from_env()?.unwrap_or(2 << 30));
//!     let mut rows: Vec<u64> = Vec::new();
//!     if rows.try_reserve(10_000_000).is_err() {
//!         eprintln!("not enough budget: {:?}", ALLOC.stats());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Guides: `docs/production.md` (choosing a limit, what happens at it), `docs/performance.md`
//! (the fast path and what it costs), `docs/arrow.md` (the Arrow pool, per-operation
//! budgets, collections on their own budget, adaptive chunking).
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]

// The budget's core: private, its public shells re-exported below.
mod accounting;
mod allocator;
mod error;
mod registry;
mod release;
mod report;
mod requests;
mod reservation;
mod scope;
mod stats;
mod thread_cache;
mod units;

pub mod chunking;
pub mod config;
pub mod leak;
pub mod metrics;
pub mod monitor;
pub mod pressure;
pub mod sampler;
pub mod timeline;

// Integrations, one module each, behind their feature.
#[cfg(feature = "allocator-api2")]
pub mod allocator_api2;
#[cfg(feature = "arrow")]
pub mod arrow;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;

pub use allocator::LimitedAllocator;
pub use config::limit_from_env;
pub use error::LimitExceeded;
pub use pressure::{PressureLevel, PressureThresholds};
pub use release::release_free_memory;
pub use reservation::{EnterError, EnterGuard, Overflow, Reservation};
pub use scope::Scoped;
pub use stats::AllocatorStats;
pub use units::ByteSize;
