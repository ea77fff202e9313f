//! The suite: every workload with its six runs, and criterion's report of it.

use crate::allocators::{
    PCapSys, PLimMi, PLimSys, PMi, PStatsSys, PSys, Run, CAP_SYS, LIM_MI, LIM_SYS, NAMES, STATS_SYS,
};
use crate::queries::{check_can_allocate, pressure_level};
use crate::workloads::{
    hashmap_200k, mixed_large, random_free, small_pairs_1t, small_pairs_2t, vec_growth,
};
use criterion::{criterion_group, BenchmarkId, Criterion, SamplingMode};
use std::time::Duration;

/// The six allocators, in [`NAMES`] order, for a workload generic over the [`Pick`].
macro_rules! six {
    ($w:ident) => {
        [
            $w::<PSys> as Run,
            $w::<PLimSys> as Run,
            $w::<PCapSys> as Run,
            $w::<PStatsSys> as Run,
            $w::<PMi> as Run,
            $w::<PLimMi> as Run,
        ]
    };
}

/// The query workloads: only the allocators that keep a count take part.
macro_rules! budgets {
    ($w:ident) => {
        [
            None,
            Some((|n| $w(&LIM_SYS, n)) as Run),
            Some((|n| $w(&CAP_SYS, n)) as Run),
            Some((|n| $w(&STATS_SYS, n)) as Run),
            None,
            Some((|n| $w(&LIM_MI, n)) as Run),
        ]
    };
}

pub(crate) struct Workload {
    pub(crate) name: &'static str,
    /// What one iteration is, for the table.
    pub(crate) unit: &'static str,
    pub(crate) runs: [Option<Run>; 6],
    /// Criterion measurement time and flat sampling for the slow ones.
    pub(crate) heavy: bool,
}

fn all(runs: [Run; 6]) -> [Option<Run>; 6] {
    runs.map(Some)
}

pub(crate) fn suite() -> Vec<Workload> {
    vec![
        Workload {
            name: "small_pairs_1_thread",
            unit: "pair",
            runs: all(six!(small_pairs_1t)),
            heavy: false,
        },
        Workload {
            name: "small_pairs_2_threads",
            unit: "pair per thread",
            runs: all(six!(small_pairs_2t)),
            heavy: false,
        },
        Workload {
            name: "vec_growth_1MiB",
            unit: "Vec",
            runs: all(six!(vec_growth)),
            heavy: false,
        },
        Workload {
            name: "mixed_4KiB_1MiB",
            unit: "free+alloc",
            runs: all(six!(mixed_large)),
            heavy: false,
        },
        Workload {
            name: "hashmap_200k_keys",
            unit: "map",
            runs: all(six!(hashmap_200k)),
            heavy: true,
        },
        Workload {
            name: "random_free_100k",
            unit: "100k blocks",
            runs: all(six!(random_free)),
            heavy: true,
        },
        Workload {
            name: "check_can_allocate",
            unit: "call",
            runs: budgets!(check_can_allocate),
            heavy: false,
        },
        Workload {
            name: "pressure_level",
            unit: "call",
            runs: budgets!(pressure_level),
            heavy: false,
        },
    ]
}

pub(crate) fn overhead(c: &mut Criterion) {
    for w in suite() {
        let mut group = c.benchmark_group(w.name);
        if w.heavy {
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(2));
        } else {
            group
                .sample_size(20)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
        }
        for (name, run) in NAMES.iter().zip(w.runs) {
            if let Some(run) = run {
                group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter_custom(run));
            }
        }
        group.finish();
    }
}

criterion_group!(benches, overhead);
