//! What the budget costs: `LimitedAllocator` against the bare allocator it wraps and against
//! the peer crates `cap` and `stats_alloc`, on the workloads of issue 3.
//!
//! Six allocators run every workload side by side: `System`, `LimitedAllocator<System>`,
//! `cap::Cap<System>`, `stats_alloc::StatsAlloc<System>`, `mimalloc::MiMalloc` and
//! `LimitedAllocator<MiMalloc>`. One binary cannot install six global allocators, so each
//! one is a `static` and is called directly:
//!
//! - pair workloads call its `GlobalAlloc` methods through one `#[inline(never)]` shim per
//!   static ([`shims::alloc_via`], [`shims::dealloc_via`], [`shims::realloc_via`], monomorphised over an [`allocators::Pick`]
//!   that names the static). That is the shape of a real program, where `__rust_alloc` is an
//!   out-of-line call into the global allocator's inlined `alloc` on a static whose address
//!   is a constant, and it keeps the optimiser from deleting or merging alloc/free pairs.
//! - collection workloads (`Vec`, `HashMap`) use [`shims::Via`], a zero-sized
//!   `allocator_api2::Allocator` (like `std::alloc::Global`) that goes through the same shims.
//!
//! After criterion's own report, a driver measures every workload again, the six
//! allocators interleaved round by round (so the noise of a shared machine falls on all of
//! them alike), and prints medians and ratios: each allocator against its bare inner
//! allocator and against `System`. Under `cargo test` every workload runs once, as a smoke
//! test. `README.md` next to this file lists the environment variables and the workloads.
//!
//! Run: `cargo bench --bench overhead` (a few minutes on 2 cores).

// The tests' one pseudo-random generator, shared as a file.
#[path = "../../tests/common/xorshift.rs"]
mod xorshift;

mod allocators;
mod queries;
mod shims;
mod suite;
mod table;
mod workloads;

use allocators::NAMES;
use criterion::Criterion;
use std::hint::black_box;
use suite::{benches, suite};
use table::table;

/// glibc moves its mmap threshold with the history of frees (up to 32 MiB), so whether a
/// 256 KiB block costs an mmap/munmap pair depended on which workloads ran before. Fixing
/// the thresholds makes every workload see the same `System`, whatever the order or filter:
/// blocks up to 1 MiB come from the heap, and freed memory is not trimmed back.
fn pin_glibc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; called before the benchmark threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() {
    pin_glibc_thresholds();
    // `OVERHEAD_PROBE=small_pairs_1_thread:1:1000000`: run one workload on one allocator
    // (index into NAMES) for that many iterations and exit, for `valgrind --tool=callgrind`.
    if let Ok(probe) = std::env::var("OVERHEAD_PROBE") {
        let mut parts = probe.split(':');
        let (name, index, iters) = (parts.next(), parts.next(), parts.next());
        let index: usize = index.and_then(|i| i.parse().ok()).expect("allocator index");
        let iters: u64 = iters.and_then(|i| i.parse().ok()).expect("iterations");
        let w = suite()
            .into_iter()
            .find(|w| Some(w.name) == name)
            .expect("workload name");
        let run = w.runs[index].expect("allocator runs this workload");
        let t = run(iters);
        println!("{}: {:?} per iteration", NAMES[index], t / iters as u32);
        return;
    }
    let bench_mode = std::env::args().any(|a| a == "--bench");
    if !bench_mode {
        // `cargo test --all-targets`: run each workload once on each allocator.
        for w in suite() {
            for run in w.runs.into_iter().flatten() {
                black_box(run(1));
            }
        }
        println!("overhead: 8 workloads smoke-tested on 6 allocators");
        return;
    }
    if std::env::var("OVERHEAD_CRITERION").as_deref() != Ok("0") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    if std::env::var("OVERHEAD_TABLE").as_deref() != Ok("0") {
        // The table follows criterion's filter (a substring of the workload's name).
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let rounds = std::env::var("OVERHEAD_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(41);
        table(rounds, filter.as_deref().unwrap_or(""));
    }
}
