//! DataFusion settings that a query under a hard limit needs beside the pool.

use datafusion_execution::config::SessionConfig;

/// `datafusion.execution.max_spill_file_size_bytes` under a hard limit: every batch that
/// `RepartitionExec` spills gets a file of its own, finished as soon as it is written.
///
/// DataFusion 55.2's `RepartitionExec` can deadlock once two of its input tasks spill into
/// one output partition while their files are open (apache/datafusion#24883, fixed on
/// DataFusion's main branch by apache/datafusion#24891): the reader waits on the older
/// file, the batch it needs is in the newer one, and the writers wait on the channel gate
/// that only the reader opens. Every task parks; the query neither finishes nor fails. A
/// file that is finished at once is never open while a writer waits, so the cycle cannot
/// close. Only `RepartitionExec` reads this setting; the cost is one file per spilled batch,
/// and a repartition spills only when memory is really short (see [`DataFusionPool`]).
///
/// [`DataFusionPool`]: super::DataFusionPool
pub const REPARTITION_SPILL_FILE_BYTES: usize = 1;

/// Applies the settings a query under a hard limit needs to `config`: today
/// `datafusion.execution.max_spill_file_size_bytes` = [`REPARTITION_SPILL_FILE_BYTES`],
/// which keeps DataFusion 55.2's `RepartitionExec` from deadlocking when it spills.
///
/// ```
/// use datafusion_execution::config::SessionConfig;
/// use limited_allocator::datafusion;
///
/// let config = datafusion::configure(SessionConfig::new().with_target_partitions(4));
/// assert_eq!(config.options().execution.max_spill_file_size_bytes.get(), 1);
/// assert_eq!(config.target_partitions(), 4);
/// ```
pub fn configure(config: SessionConfig) -> SessionConfig {
    config.set_usize(
        "datafusion.execution.max_spill_file_size_bytes",
        REPARTITION_SPILL_FILE_BYTES,
    )
}
