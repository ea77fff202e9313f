//! The budget queries: "would this fit?" and "how full is it?" on each allocator that
//! keeps a count.

use crate::allocators::LIMIT;
use cap::Cap;
use limited_allocator::{LimitedAllocator, PressureLevel};
use stats_alloc::StatsAlloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The closest each allocator has to "would `bytes` more fit?" and "how full is it?".
pub(crate) trait Budget: Sync + 'static {
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

pub(crate) fn check_can_allocate<B: Budget>(b: &'static B, iters: u64) -> Duration {
    b.warm();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(b.fits(black_box(4096)));
    }
    start.elapsed()
}

pub(crate) fn pressure_level<B: Budget>(b: &'static B, iters: u64) -> Duration {
    b.warm();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(b).pressure());
    }
    start.elapsed()
}
