//! The six allocators the workloads run on, each a `static` named at the type level.

use cap::Cap;
use limited_allocator::LimitedAllocator;
use mimalloc::MiMalloc;
use stats_alloc::StatsAlloc;
use std::alloc::{GlobalAlloc, System};
use std::time::Duration;

/// A budget the workloads never reach, so every allocator does the same work; the
/// LimitedAllocator still runs its full accounting (credit batches are sized from it).
pub(crate) const LIMIT: usize = 64 << 30;

pub(crate) static SYS: System = System;
pub(crate) static LIM_SYS: LimitedAllocator<System> = LimitedAllocator::new(System, LIMIT);
pub(crate) static CAP_SYS: Cap<System> = Cap::new(System, LIMIT);
pub(crate) static STATS_SYS: StatsAlloc<System> = StatsAlloc::system();
pub(crate) static MI: MiMalloc = MiMalloc;
pub(crate) static LIM_MI: LimitedAllocator<MiMalloc> = LimitedAllocator::new(MiMalloc, LIMIT);

pub(crate) const NAMES: [&str; 6] = [
    "System",
    "Limited<System>",
    "cap<System>",
    "stats_alloc<System>",
    "mimalloc",
    "Limited<mimalloc>",
];
/// For each allocator, the index of the bare allocator it wraps.
pub(crate) const INNER: [usize; 6] = [0, 0, 0, 0, 4, 4];

/// Names one of the statics at the type level, so the shims see a constant address (as
/// `__rg_alloc` sees the `#[global_allocator]` static).
pub(crate) trait Pick: 'static {
    type G: GlobalAlloc + Sync + 'static;
    fn get() -> &'static Self::G;
}

macro_rules! pick {
    ($p:ident, $t:ty, $s:ident) => {
        pub(crate) struct $p;
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
pub(crate) type Run = fn(u64) -> Duration;
