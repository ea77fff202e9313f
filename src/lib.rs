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

mod accounting;
mod allocator;
#[cfg(feature = "allocator-api2")]
mod allocator_api;
#[cfg(feature = "arrow")]
mod arrow_pool;
mod cgroup;
mod chunking;
mod config;
#[cfg(feature = "datafusion")]
pub mod datafusion;
mod error;
mod leak;
mod metrics;
mod monitor;
mod pressure;
mod registry;
mod release;
mod report;
mod reservation;
mod sampler;
mod stats;
mod thread_cache;
mod timeline;
mod units;

pub use allocator::LimitedAllocator;
#[cfg(feature = "arrow")]
pub use arrow_pool::PoolRole;
pub use cgroup::{read_cgroup_memory, CgroupMemory, CgroupVersion};
#[cfg(feature = "arrow")]
pub use chunking::SliceRows;
pub use chunking::{
    process_in_chunks, AdaptiveChunker, ChunkConfig, ChunkError, ChunkReport, LevelTime,
};
pub use config::{limit_from_env, limit_from_var, ConfigError, LIMIT_ENV_VAR};
pub use error::LimitExceeded;
pub use leak::{LeakConfig, LeakMetric, LeakSuspected, Trend, TrendDetector};
#[cfg(feature = "prometheus")]
pub use metrics::PrometheusCollector;
pub use metrics::{AllocatorSnapshot, LevelSnapshot, Snapshot};
pub use monitor::{
    default_psi_thresholds, BudgetSource, LevelStats, LimitSource, MemoryMonitor, MonitorBuilder,
    MonitorError, MonitorEvent, MonitorHandle, MonitorSample, MonitorStats, Reason, Signal,
    StageGuard, StageStats,
};
pub use pressure::{HysteresisLevel, PressureLevel, PressureThresholds, ThresholdError};
pub use release::release_free_memory;
pub use reservation::{EnterError, EnterGuard, Overflow, Reservation};
pub use sampler::{parse_psi, MemorySample, Psi, Sampler};
pub use stats::AllocatorStats;
#[cfg(feature = "timeline")]
pub use timeline::TimelineError;
pub use timeline::{Timeline, TimelinePoint};
pub use units::{parse_size, ByteSize, SizeParseError};
