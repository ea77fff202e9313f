//! DataFusion under a hard limit (feature `datafusion`): [`DataFusionPool`], a DataFusion
//! `MemoryPool` that takes its limit from a [`LimitedAllocator`](crate::LimitedAllocator)
//! installed as the global allocator.
//!
//! ```no_run
//! use datafusion::execution::runtime_env::RuntimeEnvBuilder;
//! use datafusion::prelude::{SessionConfig, SessionContext};
//! use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
//! use std::sync::Arc;
//!
//! #[global_allocator]
//! static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 512 << 20);
//!
//! let runtime = RuntimeEnvBuilder::new()
//!     .with_memory_pool(Arc::new(DataFusionPool::new(&ALLOC)))
//!     .build_arc()?;
//! // The settings a query under a hard limit needs beside the pool (see `configure`).
//! let config = limited_allocator::datafusion::configure(SessionConfig::new());
//! let ctx = SessionContext::new_with_config_rt(config, runtime);
//! # Ok::<(), datafusion::error::DataFusionError>(())
//! ```
//!
//! A DataFusion user builds this crate with `default-features = false, features =
//! ["datafusion"]`: the default `arrow` feature is arrow-buffer 60 and DataFusion 55 is on
//! arrow 59, so keeping it would build two arrow-buffers.

mod config;
mod policy;
mod pool;
mod refusal;
mod stats;

pub use config::{configure, REPARTITION_SPILL_FILE_BYTES};
pub use pool::DataFusionPool;
pub use refusal::{Refusal, RefusalReason};
pub use stats::{ConsumerStats, PoolStats};
