//! What the budget costs: `LimitedAllocator` against the bare allocator it wraps and against
//! the peer crates `cap` and `stats_alloc`, on the workloads of issue 3.
//!
//! Six allocators run every workload side by side: `System`, `LimitedAllocator<System>`,
//! `cap::Cap<System>`, `stats_alloc::StatsAlloc<System>`, `mimalloc::MiMalloc` and
//! `LimitedAllocator<MiMalloc>`. One binary cannot install six global allocators, so each
//! one is a `static` and is called directly:
//!
//! - pair workloads call its `GlobalAlloc` methods through one `#[inline(never)]` shim per
//!   static ([`alloc_via`], [`dealloc_via`], [`realloc_via`], monomorphised over a [`Pick`]
//!   that names the static). That is the shape of a real program, where `__rust_alloc` is an
//!   out-of-line call into the global allocator's inlined `alloc` on a static whose address
//!   is a constant, and it keeps the optimiser from deleting or merging alloc/free pairs.
//! - collection workloads (`Vec`, `HashMap`) use [`Via`], a zero-sized
//!   `allocator_api2::Allocator` (like `std::alloc::Global`) that goes through the same shims.
//!
//! After criterion's own report, a driver measures every workload again, the six
//! allocators interleaved round by round (so the noise of a shared machine falls on all of
//! them alike), and prints medians and ratios: each allocator against its bare inner
//! allocator and against `System`. The table follows criterion's name filter;
//! `OVERHEAD_TABLE=0` skips it, `OVERHEAD_CRITERION=0` skips criterion (table only), and
//! `OVERHEAD_ROUNDS` sets its rounds (default 41; a third of that for the heavy ones). Under `cargo test` every workload runs once, as a smoke
//! test.
//!
//! Run: `cargo bench --bench overhead` (a few minutes on 2 cores).

// The tests' one pseudo-random generator, shared as a file.
#[path = "../../tests/common/xorshift.rs"]
mod xorshift;

use allocator_api2::alloc::{AllocError, Allocator};
use cap::Cap;
use criterion::{criterion_group, BenchmarkId, Criterion, SamplingMode};
use limited_allocator::{LimitedAllocator, PressureLevel};
use mimalloc::MiMalloc;
use stats_alloc::StatsAlloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};
use xorshift::xorshift;

// ---- the allocators ---------------------------------------------------------------------

/// A budget the workloads never reach, so every allocator does the same work; the
/// LimitedAllocator still runs its full accounting (credit batches are sized from it).
const LIMIT: usize = 64 << 30;

static SYS: System = System;
static LIM_SYS: LimitedAllocator<System> = LimitedAllocator::new(System, LIMIT);
static CAP_SYS: Cap<System> = Cap::new(System, LIMIT);
static STATS_SYS: StatsAlloc<System> = StatsAlloc::system();
static MI: MiMalloc = MiMalloc;
static LIM_MI: LimitedAllocator<MiMalloc> = LimitedAllocator::new(MiMalloc, LIMIT);

const NAMES: [&str; 6] = [
    "System",
    "Limited<System>",
    "cap<System>",
    "stats_alloc<System>",
    "mimalloc",
    "Limited<mimalloc>",
];
/// For each allocator, the index of the bare allocator it wraps.
const INNER: [usize; 6] = [0, 0, 0, 0, 4, 4];

/// Names one of the statics at the type level, so the shims see a constant address (as
/// `__rg_alloc` sees the `#[global_allocator]` static).
trait Pick: 'static {
    type G: GlobalAlloc + Sync + 'static;
    fn get() -> &'static Self::G;
}

macro_rules! pick {
    ($p:ident, $t:ty, $s:ident) => {
        struct $p;
        impl Pick for $p {
            type G = $t;
            #[inline(always)]
            fn get() -> &'static $t {
                &$s
            }
        }
    };
}
pick!(PSys, System, SYS);
pick!(PLimSys, LimitedAllocator<System>, LIM_SYS);
pick!(PCapSys, Cap<System>, CAP_SYS);
pick!(PStatsSys, StatsAlloc<System>, STATS_SYS);
pick!(PMi, MiMalloc, MI);
pick!(PLimMi, LimitedAllocator<MiMalloc>, LIM_MI);

/// One workload on one allocator: runs `iters` iterations and returns the time taken.
type Run = fn(u64) -> Duration;

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

// ---- the call shims -----------------------------------------------------------------------

/// `GlobalAlloc::alloc` behind a call, like `__rust_alloc`.
#[inline(never)]
fn alloc_via<P: Pick>(layout: Layout) -> *mut u8 {
    // SAFETY: every layout used here has a non-zero size (the only precondition).
    unsafe { P::get().alloc(layout) }
}

/// `GlobalAlloc::dealloc` behind a call.
///
/// # Safety
/// `ptr` was returned by `alloc_via::<P>(layout)` or `realloc_via::<P>` with this layout,
/// and is not used afterwards.
#[inline(never)]
unsafe fn dealloc_via<P: Pick>(ptr: *mut u8, layout: Layout) {
    // SAFETY: forwarded from this function's contract.
    unsafe { P::get().dealloc(ptr, layout) }
}

/// `GlobalAlloc::realloc` behind a call.
///
/// # Safety
/// As `GlobalAlloc::realloc` on `P::get()`.
#[inline(never)]
unsafe fn realloc_via<P: Pick>(ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
    // SAFETY: forwarded from this function's contract.
    unsafe { P::get().realloc(ptr, layout, new) }
}

/// An `allocator_api2` allocator over the static `P` names, for collections.
struct Via<P>(core::marker::PhantomData<P>);

impl<P> Via<P> {
    const NEW: Self = Via(core::marker::PhantomData);
}

impl<P> Clone for Via<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Via<P> {}

fn dangling(layout: Layout) -> NonNull<[u8]> {
    // An aligned, non-null address without provenance: valid for zero-sized blocks.
    let ptr = NonNull::new(layout.align() as *mut u8).expect("alignment is never zero");
    NonNull::slice_from_raw_parts(ptr, 0)
}

fn block(ptr: *mut u8, size: usize) -> Result<NonNull<[u8]>, AllocError> {
    NonNull::new(ptr)
        .map(|p| NonNull::slice_from_raw_parts(p, size))
        .ok_or(AllocError)
}

// SAFETY: blocks come from the `GlobalAlloc` static that `P` names, which lives for
// `'static`, so they stay valid until deallocated whatever happens to this handle or its
// copies; all handles of one `P` refer to the same allocator, so a block may be freed
// through any of them. Zero-sized requests never reach the `GlobalAlloc` (which forbids
// them) and get a dangling, aligned pointer that is never passed back to it. `grow`/`shrink` use `realloc` only when the alignment is unchanged
// (its precondition) and both sizes are non-zero; otherwise they allocate, copy and free.
unsafe impl<P: Pick> Allocator for Via<P> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        block(alloc_via::<P>(layout), layout.size())
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller guarantees `ptr` is a live block of ours with `layout`, and
            // non-zero blocks came from `alloc_via::<P>`/`realloc_via::<P>`.
            unsafe { dealloc_via::<P>(ptr.as_ptr(), layout) }
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() != 0 && old.align() == new.align() {
            // SAFETY: `ptr` is a live non-zero block of `self.0` with layout `old` (the
            // caller's contract), the alignment is unchanged, and `new.size() >= old.size()
            // > 0` is a valid size for that alignment because `new` is a `Layout`.
            return block(
                unsafe { realloc_via::<P>(ptr.as_ptr(), old, new.size()) },
                new.size(),
            );
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; `old.size() <= new.size()` bytes fit.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), old.size());
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() != 0 && old.align() == new.align() {
            // SAFETY: as in `grow`; `0 < new.size() <= old.size()`.
            return block(
                unsafe { realloc_via::<P>(ptr.as_ptr(), old, new.size()) },
                new.size(),
            );
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; `new.size() <= old.size()` bytes fit.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), new.size());
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }
}

// ---- workloads ------------------------------------------------------------------------------

/// 1024 small layouts, 16-256 bytes, align 8.
fn small_layouts() -> &'static [Layout; 1024] {
    static LAYOUTS: std::sync::OnceLock<[Layout; 1024]> = std::sync::OnceLock::new();
    LAYOUTS.get_or_init(|| {
        let mut next = xorshift(0x5eed);
        core::array::from_fn(|_| {
            let size = 16 + (next() % 241) as usize;
            Layout::from_size_align(size, 8).unwrap()
        })
    })
}

/// `iters` alloc+free pairs of 16-256 bytes.
fn pairs<P: Pick>(iters: u64) {
    let layouts = small_layouts();
    for i in 0..iters {
        let layout = layouts[i as usize & 1023];
        let p = alloc_via::<P>(layout);
        assert!(!p.is_null());
        // SAFETY: `p` is a live block of `P` with `layout`, freed once.
        unsafe { dealloc_via::<P>(black_box(p), layout) };
    }
}

fn small_pairs_1t<P: Pick>(iters: u64) -> Duration {
    let start = Instant::now();
    pairs::<P>(iters);
    start.elapsed()
}

/// The same pairs on this thread and a second one at once; wall time until both finish.
fn small_pairs_2t<P: Pick>(iters: u64) -> Duration {
    let ready = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            ready.wait();
            pairs::<P>(iters);
        });
        ready.wait();
        let start = Instant::now();
        pairs::<P>(iters);
        other.join().unwrap();
        start.elapsed()
    })
}

/// A `Vec<u64>` grown by `push` to 1 MiB (17 doubling reallocations), then dropped.
/// (Pushing, not appending slices from the stack: a slice copy's speed depends on whether
/// source and destination alias modulo 4 KiB, which differs between allocators' addresses
/// and made this workload bimodal.)
fn vec_growth<P: Pick>(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut v = allocator_api2::vec::Vec::new_in(Via::<P>::NEW);
        for i in 0..(1u64 << 17) {
            v.push(i);
        }
        black_box(&v);
    }
    start.elapsed()
}

/// Blocks of 4 KiB-1 MiB (log-uniform), 16 live at a time: each iteration frees the oldest
/// and allocates a new one.
fn mixed_large<P: Pick>(iters: u64) -> Duration {
    const LIVE: usize = 16;
    let mut next = xorshift(0xb16);
    let layouts: Vec<Layout> = (0..256)
        .map(|_| {
            let shift = 12 + next() % 9; // 4 KiB ..= 1 MiB
            let size = (1usize << shift) + (next() as usize % (1usize << shift));
            Layout::from_size_align(size.min(1 << 20), 16).unwrap()
        })
        .collect();
    let mut live: [(*mut u8, Layout); LIVE] = [(core::ptr::null_mut(), layouts[0]); LIVE];
    let start = Instant::now();
    for i in 0..iters as usize {
        let slot = &mut live[i % LIVE];
        if !slot.0.is_null() {
            // SAFETY: a live block of `P` with this layout, freed once.
            unsafe { dealloc_via::<P>(slot.0, slot.1) };
        }
        let layout = layouts[i % layouts.len()];
        let p = alloc_via::<P>(layout);
        assert!(!p.is_null());
        *slot = (black_box(p), layout);
    }
    for (p, layout) in live {
        if !p.is_null() {
            // SAFETY: as above.
            unsafe { dealloc_via::<P>(p, layout) };
        }
    }
    start.elapsed()
}

/// A hash map of 200 000 byte-string keys, built and dropped, all in the allocator.
fn hashmap_200k<P: Pick>(iters: u64) -> Duration {
    type Key<P> = allocator_api2::vec::Vec<u8, Via<P>>;
    let start = Instant::now();
    for _ in 0..iters {
        let mut map: hashbrown::HashMap<Key<P>, u32, hashbrown::DefaultHashBuilder, Via<P>> =
            hashbrown::HashMap::with_hasher_in(Default::default(), Via::NEW);
        for i in 0..200_000u32 {
            let mut digits = [0u8; 10];
            let mut n = i;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let mut key = Key::with_capacity_in(4 + digits.len() - at, Via::NEW);
            key.extend_from_slice(b"key-");
            key.extend_from_slice(&digits[at..]);
            map.insert(key, i);
        }
        black_box(&map);
    }
    start.elapsed()
}

const BLOCKS: usize = 100_000;

/// 100 000 small blocks allocated, then freed in a random order.
fn random_free<P: Pick>(iters: u64) -> Duration {
    let layouts = small_layouts();
    let mut order: Vec<usize> = (0..BLOCKS).collect();
    let mut next = xorshift(0xf7ee);
    for i in (1..BLOCKS).rev() {
        order.swap(i, next() as usize % (i + 1));
    }
    let mut ptrs = vec![core::ptr::null_mut::<u8>(); BLOCKS];
    let start = Instant::now();
    for _ in 0..iters {
        for (i, p) in ptrs.iter_mut().enumerate() {
            *p = alloc_via::<P>(layouts[i & 1023]);
            assert!(!p.is_null());
        }
        for &i in &order {
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe { dealloc_via::<P>(ptrs[i], layouts[i & 1023]) };
        }
    }
    start.elapsed()
}

// ---- the budget queries -------------------------------------------------------------------

/// The closest each allocator has to "would `bytes` more fit?" and "how full is it?".
trait Budget: Sync + 'static {
    fn fits(&self, bytes: usize) -> bool;
    fn pressure(&self) -> u8;
    /// Puts the calling thread in the state a query usually finds it in: it has allocated
    /// through the instance (registered it, holds credit). Without this, a query run alone
    /// (a name filter, `OVERHEAD_PROBE`) would measure an instance nobody has used yet.
    fn warm(&self) {}
}

impl<A: GlobalAlloc + Sync + 'static> Budget for LimitedAllocator<A> {
    fn fits(&self, bytes: usize) -> bool {
        self.check_can_allocate(bytes).is_ok()
    }
    fn pressure(&self) -> u8 {
        self.pressure_level() as u8
    }
    fn warm(&self) {
        let layout = Layout::new::<u64>();
        // SAFETY: the layout has a non-zero size, and the block is freed at once with it.
        unsafe {
            let p = self.alloc(layout);
            if !p.is_null() {
                self.dealloc(p, layout);
            }
        }
    }
}

impl Budget for Cap<System> {
    fn fits(&self, bytes: usize) -> bool {
        self.remaining() >= bytes
    }
    fn pressure(&self) -> u8 {
        level(self.allocated(), self.limit())
    }
}

impl Budget for StatsAlloc<System> {
    fn fits(&self, bytes: usize) -> bool {
        let s = self.stats();
        s.bytes_allocated - s.bytes_deallocated + bytes <= LIMIT
    }
    fn pressure(&self) -> u8 {
        let s = self.stats();
        level(s.bytes_allocated - s.bytes_deallocated, LIMIT)
    }
}

/// GopherFrame's thresholds for the peers without levels.
fn level(used: usize, limit: usize) -> u8 {
    let pct = used as f64 * 100.0 / limit as f64;
    let l = if pct >= 95.0 {
        PressureLevel::Critical
    } else if pct >= 80.0 {
        PressureLevel::High
    } else if pct >= 60.0 {
        PressureLevel::Medium
    } else {
        PressureLevel::Low
    };
    l as u8
}

fn check_can_allocate<B: Budget>(b: &'static B, iters: u64) -> Duration {
    b.warm();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(b.fits(black_box(4096)));
    }
    start.elapsed()
}

fn pressure_level<B: Budget>(b: &'static B, iters: u64) -> Duration {
    b.warm();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(b).pressure());
    }
    start.elapsed()
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

// ---- the suite ----------------------------------------------------------------------------

struct Workload {
    name: &'static str,
    /// What one iteration is, for the table.
    unit: &'static str,
    runs: [Option<Run>; 6],
    /// Criterion measurement time and flat sampling for the slow ones.
    heavy: bool,
}

fn all(runs: [Run; 6]) -> [Option<Run>; 6] {
    runs.map(Some)
}

fn suite() -> Vec<Workload> {
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

fn overhead(c: &mut Criterion) {
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

// ---- the ratio table ----------------------------------------------------------------------

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

fn table(rounds: usize, filter: &str) {
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
