//! What the hard limit costs DataFusion: a group-by aggregate, a full `ORDER BY` and a hash
//! join over a generated in-memory table, with `LimitedAllocator` as the global allocator and
//! `DataFusionPool`, against `System` with DataFusion's `FairSpillPool` of the same size
//! (the pool's `memory_limit()`, so both pools spill the same way where they spill).
//!
//! One binary cannot install two global allocators, so the global one is a switch that
//! picks `LimitedAllocator` or `System` once, on its first call, from the environment
//! (`getenv`, which does not allocate), and the benchmark runs each side in a child
//! process. The parent alternates the children round by round (so the noise of a shared
//! machine falls on both alike) and prints each query's median time per side and the
//! ratio, with the spill files each side wrote. `DF_BENCH_ROUNDS` sets the rounds (default
//! 5), `DF_BENCH_FACTOR` the limit (see [`HEADROOM_FACTOR`]), `DF_BENCH_CRITERION=1` also runs
//! criterion's own report inside each child. Under `cargo test --benches` each query runs
//! once per side, as a smoke test.
//!
//! Run: `cargo bench --bench datafusion --features datafusion` (about two minutes).

use criterion::Criterion;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use limited_allocator::datafusion::DataFusionPool;
use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- the switch -------------------------------------------------------------------------

static LIMITED: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);
/// 0: not decided yet, 1: LIMITED, 2: System.
static MODE: AtomicU8 = AtomicU8::new(0);
const SYSTEM_VAR: &std::ffi::CStr = c"DF_BENCH_SYSTEM";

struct Switch;

impl Switch {
    fn limited() -> bool {
        let mode = MODE.load(Ordering::Relaxed);
        if mode != 0 {
            return mode == 1;
        }
        // SAFETY: getenv reads the environment the C runtime set up before main; it does not
        // allocate. The first allocation happens before any thread that could setenv.
        let system = !unsafe { libc::getenv(SYSTEM_VAR.as_ptr()) }.is_null();
        // Every thread computes the same answer, so a race here stores it twice.
        MODE.store(if system { 2 } else { 1 }, Ordering::Relaxed);
        !system
    }
}

// SAFETY: every call goes to the same allocator for the whole process (the mode never
// changes once decided), so each block is freed by the allocator that made it.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe {
            if Self::limited() {
                LIMITED.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (see the impl's comment).
        unsafe {
            if Self::limited() {
                LIMITED.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe {
            if Self::limited() {
                LIMITED.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator with `layout`.
        unsafe {
            if Self::limited() {
                LIMITED.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

// ---- the queries ------------------------------------------------------------------------

const ROWS: i64 = 1 << 20;
const BATCH: i64 = 8192;
/// The limit: the tables plus this multiple of their size (`DF_BENCH_FACTOR` sets another).
/// At 3 the sort and the join run without spilling on both sides; the aggregate spills
/// under `DataFusionPool` only (its copy room makes the share smaller than
/// `FairSpillPool`'s), which the spill-files column shows. At 6 nothing spills.
const HEADROOM_FACTOR: f64 = 3.0;

const QUERIES: [(&str, &str); 3] = [
    (
        "aggregate",
        "SELECT k, COUNT(*) AS c, SUM(v) AS s FROM t GROUP BY k",
    ),
    ("sort", "SELECT v, k, s FROM t ORDER BY v"),
    ("join", "SELECT t.k, t.v, d.w FROM t JOIN d ON t.k = d.k"),
];

/// The fact and dimension tables, and their Arrow bytes.
fn tables() -> (MemTable, MemTable, usize) {
    let fact = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let dim = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("w", DataType::Int64, false),
    ]));
    let (mut t, mut d) = (vec![vec![], vec![]], vec![vec![], vec![]]);
    let mut bytes = 0;
    for b in 0..ROWS / BATCH {
        let rows = b * BATCH..(b + 1) * BATCH;
        let k = Int64Array::from_iter_values(rows.clone().map(|i| (i * 7919) % (ROWS / 2)));
        let v = Int64Array::from_iter_values(rows.clone().map(|i| (i * 1_000_003) % ROWS));
        let s =
            StringArray::from_iter_values(rows.clone().map(|i| format!("name-{:06}", i % 99_991)));
        let batch = RecordBatch::try_new(fact.clone(), vec![Arc::new(k), Arc::new(v), Arc::new(s)]);
        let batch = batch.expect("fact batch");
        bytes += batch.get_array_memory_size();
        t[b as usize % 2].push(batch);
        if b % 2 == 0 {
            let k = Int64Array::from_iter_values(rows.clone().map(|i| i % (ROWS / 2)));
            let w = Int64Array::from_iter_values(rows.map(|i| i * 3));
            let batch = RecordBatch::try_new(dim.clone(), vec![Arc::new(k), Arc::new(w)]);
            let batch = batch.expect("dim batch");
            bytes += batch.get_array_memory_size();
            d[b as usize % 2].push(batch);
        }
    }
    (
        MemTable::try_new(fact, t).expect("table t"),
        MemTable::try_new(dim, d).expect("table d"),
        bytes,
    )
}

struct Side {
    name: &'static str,
    ctx: SessionContext,
    rt: tokio::runtime::Runtime,
}

/// The child's side: its tables, its limit and its pool.
fn side() -> Side {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (t, d, table_bytes) = tables();
    let factor = std::env::var("DF_BENCH_FACTOR")
        .ok()
        .map(|f| f.parse::<f64>().expect("DF_BENCH_FACTOR is a number"))
        .unwrap_or(HEADROOM_FACTOR);
    let headroom = (table_bytes as f64 * factor) as usize;
    let limited = Switch::limited();
    let pool: Arc<dyn MemoryPool> = if limited {
        LIMITED.set_limit(LIMITED.allocated_bytes() + headroom);
        Arc::new(DataFusionPool::new(&LIMITED))
    } else {
        Arc::new(FairSpillPool::new(headroom))
    };
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone())
        .build_arc()
        .expect("runtime");
    // Both sides with the hard limit's settings (one spill file per repartitioned batch), so
    // the ratio is the pool's and the allocator's, not a DataFusion setting's.
    let config =
        limited_allocator::datafusion::configure(SessionConfig::new().with_target_partitions(2));
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_table("t", Arc::new(t)).expect("t");
    ctx.register_table("d", Arc::new(d)).expect("d");
    Side {
        name: if limited {
            "Limited+DataFusionPool"
        } else {
            "System+FairSpillPool"
        },
        ctx,
        rt,
    }
}

/// Spill files written by `plan` and its children.
fn spills(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
    own + plan.children().into_iter().map(spills).sum::<usize>()
}

/// Runs `sql` to the end; returns (rows, spill files).
fn run_query(side: &Side, sql: &str) -> (u64, usize) {
    side.rt.block_on(async {
        let plan = side
            .ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let mut stream = execute_stream(plan.clone(), side.ctx.task_ctx()).expect("stream");
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            rows += batch.expect("a batch").num_rows() as u64;
        }
        drop(stream);
        (rows, spills(&plan))
    })
}

fn main() {
    if std::env::var_os("DF_BENCH_CHILD").is_some() {
        return child();
    }
    let smoke = std::env::args().all(|a| a != "--bench");
    let rounds: usize = if smoke {
        1
    } else {
        std::env::var("DF_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5)
    };
    let exe = std::env::current_exe().expect("the bench binary");
    let mut times: Vec<[Vec<Duration>; 2]> = QUERIES.iter().map(|_| [vec![], vec![]]).collect();
    let mut names = ["", ""];
    // The most spill files a run of each query wrote, per side: the sides compare only
    // where they did the same work.
    let mut spill_files = [[0usize; 2]; QUERIES.len()];
    for round in 0..rounds {
        for (s, system) in [false, true].into_iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.args(std::env::args().skip(1))
                .env("DF_BENCH_CHILD", "1");
            if system {
                cmd.env("DF_BENCH_SYSTEM", "1");
            }
            if round > 0 || smoke {
                cmd.env_remove("DF_BENCH_CRITERION");
            }
            let out = cmd.output().expect("the child runs");
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(rest) = line.strip_prefix("DFBENCH ") {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    let q = QUERIES.iter().position(|(n, _)| *n == f[0]).expect("query");
                    names[s] = if system {
                        "System+FairSpillPool"
                    } else {
                        "Limited+DataFusionPool"
                    };
                    times[q][s].push(Duration::from_nanos(f[1].parse().expect("nanos")));
                    spill_files[q][s] = spill_files[q][s].max(f[2].parse().expect("spills"));
                } else {
                    println!("{line}");
                }
            }
        }
    }
    println!(
        "\nDataFusion queries, {ROWS} rows, median of {rounds} rounds (each the best of 3 runs):"
    );
    println!(
        "{:<10} {:>24} {:>24} {:>8}  spill files",
        "query", names[0], names[1], "ratio"
    );
    for (q, (name, _)) in QUERIES.iter().enumerate() {
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (a, b) = (med(&mut times[q][0]), med(&mut times[q][1]));
        println!(
            "{name:<10} {:>21.1} ms {:>21.1} ms {:>8.3}  {} / {}",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64(),
            spill_files[q][0],
            spill_files[q][1]
        );
    }
}

fn child() {
    let side = side();
    let smoke = std::env::args().all(|a| a != "--bench");
    if std::env::var_os("DF_BENCH_CRITERION").is_some() && !smoke {
        let mut c = Criterion::default()
            .sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .configure_from_args();
        let mut group = c.benchmark_group("datafusion");
        for (name, sql) in QUERIES {
            group.bench_function(format!("{name}/{}", side.name), |b| {
                b.iter(|| run_query(&side, sql))
            });
        }
        group.finish();
    }
    for (name, sql) in QUERIES {
        let runs = if smoke { 1 } else { 3 };
        let mut spilled = 0;
        let best = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let (_, files) = std::hint::black_box(run_query(&side, sql));
                spilled = spilled.max(files);
                started.elapsed()
            })
            .min()
            .expect("at least one run");
        println!("DFBENCH {name} {} {spilled}", best.as_nanos());
    }
}
