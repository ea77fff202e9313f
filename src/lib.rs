// The crate doc is the README, so its examples are compiled and run as doctests and
// docs.rs opens on the model and the setup table.
#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn, unreachable_pub, missing_debug_implementations)]

// The accounting core: private; the public shells below are built on it.
mod budget;

mod allocator;
mod error;
mod release;
mod requests;
mod reservation;
mod scope;
mod stats;
mod stderr;
mod units;

pub mod chunking;
pub mod config;
pub mod leak;
pub mod metrics;
pub mod monitor;
pub mod panic_hook;
pub mod pressure;
pub mod sampler;
pub mod timeline;

// Integrations, one module each, behind their feature.
#[cfg(feature = "allocator-api2")]
pub mod allocator_api2;
#[cfg(feature = "arrow")]
pub mod arrow;
#[cfg(feature = "datafusion")]
pub mod datafusion;
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

// The guides' code blocks are compiled and run as doctests too (never documented: the
// guides are linked from the crate doc, not part of it). docs/services.md is not among
// them: its blocks are fragments of a hyper service.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../docs/arrow.md")]
    struct Arrow;
    // Its examples use the Prometheus collector and the SVG chart.
    #[cfg(all(feature = "prometheus", feature = "timeline"))]
    #[doc = include_str!("../docs/monitoring.md")]
    struct Monitoring;
    #[doc = include_str!("../docs/production.md")]
    struct Production;
}
