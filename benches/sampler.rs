//! What a sampler read costs: uncached (`sample_fresh`: /proc/self/status, /proc/meminfo,
//! the cgroup files, PSI) and cached (`sample` within its max age), plus a monitor sample
//! and a Prometheus-style snapshot.
//!
//! ```text
//! cargo bench --bench sampler
//! ```

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::sampler::Sampler;
use limited_allocator::LimitedAllocator;
use std::sync::Arc;
use std::time::Duration;

fn sampler(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampler");
    let s = Sampler::new();
    g.bench_function("sample_fresh", |b| b.iter(|| black_box(s.sample_fresh())));
    let cached = Sampler::new().with_max_age(Duration::from_secs(3600));
    cached.sample();
    g.bench_function("sample_cached", |b| b.iter(|| black_box(cached.sample())));
    g.finish();

    let mut g = c.benchmark_group("monitor");
    let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 30));
    let monitor = MemoryMonitor::builder()
        .budget_source(alloc)
        .sampler(Sampler::new().with_max_age(Duration::ZERO))
        .build()
        .expect("monitor");
    g.bench_function("sample_now_uncached", |b| {
        b.iter(|| black_box(monitor.sample_now()))
    });
    g.bench_function("snapshot", |b| b.iter(|| black_box(monitor.snapshot())));
    g.bench_function("should_check", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(monitor.should_check(i, 64))
        })
    });
    g.finish();
}

criterion_group!(benches, sampler);
criterion_main!(benches);
