//! A sort and a group-by over generated data, first without a limit, then under a hard limit
//! with `DataFusionPool`: DataFusion spills to disk to stay under it, and the results match.
//!
//! ```text
//! cargo run --release --example datafusion_spill --features datafusion [LIMIT]
//! ```
//! `LIMIT` (default `160MiB`) is the allocator's hard limit, the only number given; the
//! generated table takes 72 MiB of it, shared by both runs. Measured (release, 2 cores):
//! the sort peaks at 138 MiB unlimited and 104 MiB under 160 MiB (7 spill files), the
//! group-by at 162 MiB and 101 MiB (15 spill files), both with the unlimited run's checksum.

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use limited_allocator::config::parse_size;
use limited_allocator::datafusion::DataFusionPool;
use limited_allocator::{ByteSize, LimitedAllocator};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOC: LimitedAllocator =
    LimitedAllocator::new(std::alloc::System, LimitedAllocator::UNLIMITED);

const ROWS: i64 = 1 << 21;
const BATCH: i64 = 8192;

const QUERIES: [(&str, &str); 2] = [
    ("sort", "SELECT v, k, s FROM t ORDER BY v"),
    (
        "group-by",
        "SELECT k, COUNT(*) AS c, SUM(v) AS s FROM t GROUP BY k",
    ),
];

fn table() -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let mut parts = vec![Vec::new(), Vec::new()];
    for b in 0..ROWS / BATCH {
        let rows = b * BATCH..(b + 1) * BATCH;
        let k = Int64Array::from_iter_values(rows.clone().map(|i| (i * 7919) % (ROWS / 2)));
        let v = Int64Array::from_iter_values(rows.clone().map(|i| (i * 1_000_003) % ROWS));
        let s = StringArray::from_iter_values(rows.map(|i| format!("name-{:06}", i % 99_991)));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v), Arc::new(s)])
                .expect("a batch of the schema");
        parts[b as usize % 2].push(batch);
    }
    MemTable::try_new(schema, parts).expect("the table")
}

/// A checksum over the rows, in order (the sort's order is part of its result).
async fn run(ctx: &SessionContext, sql: &str) -> Result<(u64, usize), DataFusionError> {
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    let mut stream = execute_stream(plan.clone(), ctx.task_ctx())?;
    let (mut sum, mut rows) = (0u64, 0u64);
    let ordered = sql.contains("ORDER BY");
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for row in 0..batch.num_rows() {
            let mut h = if ordered { rows } else { 0 };
            for col in batch.columns() {
                let v = match col.as_any().downcast_ref::<Int64Array>() {
                    Some(a) => a.value(row) as u64,
                    None => col
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map_or(0, |a| a.value(row).len() as u64),
                };
                h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
            }
            sum = sum.wrapping_add(h);
            rows += 1;
        }
    }
    Ok((sum, spills(&plan)))
}

fn spills(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
    own + plan.children().into_iter().map(spills).sum::<usize>()
}

/// A session over `table`, with the pool (and its settings) when there is one. Both sessions
/// share the one table, so the limited run's room is the limit less one table.
fn context(
    pool: Option<Arc<DataFusionPool>>,
    table: Arc<MemTable>,
) -> Result<SessionContext, DataFusionError> {
    let mut runtime = RuntimeEnvBuilder::new();
    let mut config = SessionConfig::new().with_target_partitions(2);
    if let Some(pool) = pool {
        runtime = runtime.with_memory_pool(pool);
        // The settings a query under the hard limit needs beside the pool.
        config = limited_allocator::datafusion::configure(config);
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    ctx.register_table("t", table)?;
    Ok(ctx)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit = parse_size(&std::env::args().nth(1).unwrap_or_else(|| "160MiB".into()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let before = ALLOC.allocated_bytes();
    let table = Arc::new(table());
    println!(
        "table: {} in memory",
        ByteSize(ALLOC.allocated_bytes() - before)
    );
    let unlimited = context(None, table.clone())?;
    let pool = Arc::new(DataFusionPool::new(&ALLOC));
    let limited = context(Some(pool.clone()), table)?;

    for (name, sql) in QUERIES {
        ALLOC.reset_peak();
        let started = Instant::now();
        let (expected, _) = rt.block_on(run(&unlimited, sql))?;
        let free_peak = ALLOC.peak_bytes();
        let free_time = started.elapsed();

        ALLOC.set_limit(limit);
        ALLOC.reset_peak();
        pool.reset_stats();
        let started = Instant::now();
        let result = rt.block_on(run(&limited, sql));
        let peak = ALLOC.peak_bytes();
        ALLOC.set_limit(LimitedAllocator::UNLIMITED);
        let stats = pool.stats();
        println!(
            "\n{name}: unlimited peak {} in {free_time:.2?}",
            ByteSize(free_peak)
        );
        match result {
            Ok((checksum, spill_files)) => println!(
                "{name}: under {} peak {} in {:.2?}, {spill_files} spill files, pool peak {}, \
                 {} refusals; checksum {checksum:#018x} {} the unlimited run's",
                ByteSize(limit),
                ByteSize(peak),
                started.elapsed(),
                ByteSize(stats.peak_reserved),
                stats.refusals,
                if checksum == expected {
                    "matches"
                } else {
                    "DIFFERS FROM"
                },
            ),
            Err(e) => println!("{name}: refused under {}: {e}", ByteSize(limit)),
        }
        assert!(peak <= limit, "the hard limit held");
    }
    Ok(())
}
