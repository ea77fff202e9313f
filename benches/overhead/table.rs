//! The ratio table: every workload measured again with the six allocators interleaved
//! round by round, medians and per-round ratios printed as markdown.

use crate::allocators::{INNER, NAMES};
use crate::suite::{suite, Workload};
use std::time::Duration;

/// Time per iteration of each allocator (ns) in every round, measured interleaved: each
/// round runs every allocator once, in a rotated order, for a batch sized to take about
/// `target` on the first allocator. Short batches and many rounds put the noise of a shared
/// machine on every allocator alike.
fn measure(w: &Workload, rounds: usize, target: Duration) -> [Vec<f64>; 6] {
    let reference = w.runs.iter().flatten().next().expect("a workload has runs");
    let mut iters = 1u64;
    loop {
        let t = reference(iters);
        if t >= target / 4 || iters >= 1 << 40 {
            let per = t.as_secs_f64() / iters as f64;
            iters = ((target.as_secs_f64() / per.max(1e-12)) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    let mut samples: [Vec<f64>; 6] = Default::default();
    for round in 0..rounds {
        for k in 0..6 {
            let i = (k + round) % 6;
            if let Some(run) = w.runs[i] {
                let t = run(iters);
                samples[i].push(t.as_secs_f64() * 1e9 / iters as f64);
            }
        }
    }
    samples
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The median over rounds of `a`'s time divided by `b`'s in the same round: robust to the
/// machine getting busier or quieter between rounds.
fn ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

pub(crate) fn table(rounds: usize, filter: &str) {
    println!("\n## Overhead table: median time per iteration, {rounds} interleaved rounds\n");
    let mut all = Vec::new();
    print!("| workload | unit |");
    for n in NAMES {
        print!(" {n} |");
    }
    println!();
    println!("|---|---|{}", "---:|".repeat(6));
    for w in suite().into_iter().filter(|w| w.name.contains(filter)) {
        let target = if w.heavy {
            Duration::from_millis(40)
        } else {
            Duration::from_millis(3)
        };
        let rounds = if w.heavy {
            rounds.div_ceil(3).max(3)
        } else {
            rounds
        };
        let m = measure(&w, rounds, target);
        print!("| {} | {} |", w.name, w.unit);
        for s in &m {
            match median(s.clone()) {
                Some(ns) => print!(" {} |", fmt_ns(ns)),
                None => print!(" - |"),
            }
        }
        println!();
        all.push((w.name, m));
    }

    println!("\n## Ratios: each wrapper / its bare inner allocator (and / System)");
    println!("(median over rounds of the per-round ratio)\n");
    println!("| workload | Limited<System> | cap<System> | stats_alloc<System> | mimalloc / System | Limited<mimalloc> / mimalloc | Limited<mimalloc> / System |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
    for (name, m) in &all {
        let vs_inner = |i: usize| show(ratio(&m[i], &m[INNER[i]]));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            vs_inner(1),
            vs_inner(2),
            vs_inner(3),
            show(ratio(&m[4], &m[0])),
            vs_inner(5),
            show(ratio(&m[5], &m[0])),
        );
    }
    println!("\n(Queries have no bare allocator: compare their nanoseconds in the first table.)\n");
}
