//! `DataFusionPool`: DataFusion's `MemoryPool` over a [`LimitedAllocator`]'s hard limit.

use super::policy::{self, Ask, Kind, View};
use super::refusal::Refusal;
use super::stats::{ConsumerStats, PoolStats};
use crate::error::Exact;
use crate::LimitedAllocator;
use datafusion_common::DataFusionError;
use datafusion_execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use std::alloc::{GlobalAlloc, System};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// The default margin: this share of the limit ...
const MARGIN_DIVISOR: usize = 16;
/// ... but at least this many bytes (DataFusion's batches of 8192 rows, the spill files'
/// write buffers, tokio's task state and the output under way all live outside the pool).
/// 4 MiB was short: two partitions merging their spill files at once build output batches
/// no reservation covers, and 5 of 84 runs of `docs/datafusion.md`'s aggregate at 1.5x
/// aborted; 8 MiB keeps twice that room (0 of 80) ...
const MIN_MARGIN: usize = 8 << 20;
/// ... and never more than this share of the limit, so a small limit keeps most of its room.
const MAX_MARGIN_DIVISOR: usize = 4;
/// The default copy factor, in percent of a consumer's reservation.
const COPY_PERCENT: u32 = 200;

/// A DataFusion [`MemoryPool`] whose limit is the allocator's hard limit: install it with
/// `RuntimeEnvBuilder::with_memory_pool` and the allocator's limit is the only number to
/// give. A query then completes (spilling where its operators can) or fails with
/// DataFusion's `ResourcesExhausted`; it does not abort the process. That holds above the
/// query's own minimum: an operator that is refused emits or spills, which allocates, so the
/// room over the data must exceed a few batches per partition (measured in
/// `docs/datafusion.md`: 1.5 to 2 MiB per partition for a group-by at 8192-row batches).
///
/// It grants a `try_grow` only when the allocator's *real* headroom, less a margin kept for
/// DataFusion's unreserved allocations, can hold the growth plus a copy of what the
/// consumer will hold (the copy a spill or an emit makes), and spillable consumers share the
/// room fairly, as in `FairSpillPool`. The rule and the measurements behind the defaults are in
/// [`docs/datafusion.md`](https://docs.rs/crate/limited-allocator/latest/source/docs/datafusion.md).
///
/// ```
/// use datafusion_execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool};
/// use limited_allocator::datafusion::DataFusionPool;
/// use limited_allocator::LimitedAllocator;
/// use std::sync::Arc;
///
/// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 256 << 20);
///
/// let pool: Arc<dyn MemoryPool> = Arc::new(DataFusionPool::new(&BUDGET));
/// assert!(matches!(pool.memory_limit(), MemoryLimit::Finite(n) if n == 240 << 20));
/// let sorter = MemoryConsumer::new("sorter").with_can_spill(true).register(&pool);
/// sorter.try_grow(10 << 20)?;
/// assert_eq!(pool.reserved(), 10 << 20);
/// // Over half the usable headroom: the copy would not fit, so the sorter must spill.
/// assert!(sorter.try_grow(200 << 20).is_err());
/// # Ok::<(), datafusion_common::DataFusionError>(())
/// ```
pub struct DataFusionPool<A: 'static = System> {
    allocator: &'static LimitedAllocator<A>,
    margin: Option<usize>,
    copy_percent: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: HashMap<usize, Live>,
    by_name: HashMap<String, ConsumerStats>,
    num_spill: usize,
    spillable: usize,
    unspillable: usize,
    in_flight: usize,
    peak_reserved: usize,
    grants: u64,
    refusals: u64,
    last_refusal: Option<Refusal>,
}

struct Live {
    name: String,
    kind: Kind,
    reserved: usize,
}

impl<A: GlobalAlloc + Send + Sync> DataFusionPool<A> {
    /// A pool over `allocator`'s budget, with the defaults (a margin of 1/16 of the
    /// limit, at least 8 MiB and at most 1/4; a copy factor of 200%).
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let pool = DataFusionPool::new(&BUDGET);
    /// assert_eq!(pool.margin(), 64 << 20);
    /// ```
    pub fn new(allocator: &'static LimitedAllocator<A>) -> Self {
        Self {
            allocator,
            margin: None,
            copy_percent: COPY_PERCENT,
            state: Mutex::new(State::default()),
        }
    }

    /// Keeps exactly `bytes` of real headroom free below the limit, instead of the default
    /// share of the limit.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(DataFusionPool::new(&BUDGET).with_margin(8 << 20).margin(), 8 << 20);
    /// ```
    pub fn with_margin(mut self, bytes: usize) -> Self {
        self.margin = Some(bytes);
        self
    }

    /// Real bytes a consumer may allocate beyond its reservation when it spills or emits,
    /// in percent of the reservation (200 by default: two copies, see `docs/datafusion.md`). 0
    /// grants by headroom alone.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(DataFusionPool::new(&BUDGET).with_copy_percent(100).copy_percent(), 100);
    /// ```
    pub fn with_copy_percent(mut self, percent: u32) -> Self {
        self.copy_percent = percent;
        self
    }

    /// The margin in force: real bytes never handed out to consumers.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static SMALL: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 8 << 20);
    /// assert_eq!(DataFusionPool::new(&SMALL).margin(), 2 << 20); // at most a quarter
    /// ```
    pub fn margin(&self) -> usize {
        self.margin.unwrap_or_else(|| {
            let limit = self.allocator.limit();
            (limit / MARGIN_DIVISOR)
                .max(MIN_MARGIN)
                .min(limit / MAX_MARGIN_DIVISOR)
        })
    }

    /// The copy factor in force, in percent.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(DataFusionPool::new(&BUDGET).copy_percent(), 200);
    /// ```
    pub fn copy_percent(&self) -> u32 {
        self.copy_percent
    }

    /// The allocator whose budget the pool guards.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert_eq!(DataFusionPool::new(&BUDGET).allocator().limit(), 1 << 30);
    /// ```
    pub fn allocator(&self) -> &'static LimitedAllocator<A> {
        self.allocator
    }

    /// The pool's and each consumer name's figures.
    ///
    /// ```
    /// use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// use std::sync::Arc;
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    ///
    /// let pool = Arc::new(DataFusionPool::new(&BUDGET));
    /// let dyn_pool: Arc<dyn MemoryPool> = pool.clone();
    /// let r = MemoryConsumer::new("join").register(&dyn_pool);
    /// r.grow(1000);
    /// r.shrink(400);
    /// let stats = pool.stats();
    /// assert_eq!((stats.reserved, stats.peak_reserved, stats.consumers), (600, 1000, 1));
    /// assert_eq!(stats.by_consumer[0].name, "join");
    /// ```
    pub fn stats(&self) -> PoolStats {
        let state = self.lock();
        let mut by_consumer: Vec<ConsumerStats> = state.by_name.values().cloned().collect();
        by_consumer.sort_by(|a, b| a.name.cmp(&b.name));
        PoolStats {
            reserved: state.reserved(),
            peak_reserved: state.peak_reserved,
            consumers: state.live.len(),
            grants: state.grants,
            refusals: state.refusals,
            by_consumer,
        }
    }

    /// The last refusal, typed (DataFusion carries only its text).
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// assert!(DataFusionPool::new(&BUDGET).last_refusal().is_none());
    /// ```
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.lock().last_refusal.clone()
    }

    /// Forgets the peak and the counters (per consumer too), keeping live reservations.
    ///
    /// ```
    /// use limited_allocator::{datafusion::DataFusionPool, LimitedAllocator};
    /// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
    /// let pool = DataFusionPool::new(&BUDGET);
    /// pool.reset_stats();
    /// assert_eq!(pool.stats().grants, 0);
    /// ```
    pub fn reset_stats(&self) {
        let mut state = self.lock();
        state.peak_reserved = state.reserved();
        state.grants = 0;
        state.refusals = 0;
        state.last_refusal = None;
        state.by_name.retain(|_, s| s.reserved > 0);
        for s in state.by_name.values_mut() {
            *s = ConsumerStats {
                name: std::mem::take(&mut s.name),
                can_spill: s.can_spill,
                reserved: s.reserved,
                peak_reserved: s.reserved,
                ..ConsumerStats::default()
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left counts that are still whole numbers: the
        // pool goes on with them rather than poison every later query.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, state: &State) -> View {
        View {
            num_spill: state.num_spill,
            spillable: state.spillable,
            unspillable: state.unspillable,
            available: self.allocator.available_bytes(),
            margin: self.margin(),
            copy_percent: self.copy_percent,
        }
    }
}

impl State {
    fn reserved(&self) -> usize {
        self.spillable + self.unspillable + self.in_flight
    }

    /// The sum that `kind`'s reservations add to.
    fn sum_of(&mut self, kind: Kind) -> &mut usize {
        match kind {
            Kind::Spillable => &mut self.spillable,
            Kind::Unspillable => &mut self.unspillable,
            Kind::InFlight => &mut self.in_flight,
        }
    }

    /// The live entry of `consumer`, made on first sight (a reservation grown before its
    /// consumer registered with this pool still gets counted).
    fn live(&mut self, consumer: &MemoryConsumer) -> &mut Live {
        self.live.entry(consumer.id()).or_insert_with(|| Live {
            name: consumer.name().to_string(),
            kind: Kind::of(consumer.name(), consumer.can_spill()),
            reserved: 0,
        })
    }

    fn named(&mut self, name: &str, can_spill: bool) -> &mut ConsumerStats {
        if !self.by_name.contains_key(name) {
            let stats = ConsumerStats {
                name: name.to_string(),
                can_spill,
                ..ConsumerStats::default()
            };
            self.by_name.insert(name.to_string(), stats);
        }
        self.by_name.get_mut(name).expect("inserted above")
    }

    fn add(&mut self, consumer: &MemoryConsumer, bytes: usize) {
        let live = self.live(consumer);
        live.reserved = live.reserved.saturating_add(bytes);
        let (held, kind, name) = (live.reserved, live.kind, live.name.clone());
        let sum = self.sum_of(kind);
        *sum = sum.saturating_add(bytes);
        self.peak_reserved = self.peak_reserved.max(self.reserved());
        self.grants += 1;
        let named = self.named(&name, kind.can_spill());
        named.reserved = named.reserved.saturating_add(bytes);
        named.peak_reserved = named.peak_reserved.max(held);
        named.grants += 1;
    }

    fn remove(&mut self, consumer: &MemoryConsumer, bytes: usize) {
        let live = self.live(consumer);
        // DataFusion never shrinks by more than it grew; saturate rather than wrap if a
        // caller does.
        let bytes = bytes.min(live.reserved);
        live.reserved -= bytes;
        let (kind, name) = (live.kind, live.name.clone());
        let sum = self.sum_of(kind);
        *sum = sum.saturating_sub(bytes);
        let named = self.named(&name, kind.can_spill());
        named.reserved = named.reserved.saturating_sub(bytes);
    }
}

impl<A: GlobalAlloc + Send + Sync> MemoryPool for DataFusionPool<A> {
    fn name(&self) -> &str {
        "limited_allocator"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        let mut state = self.lock();
        if state.live(consumer).kind == Kind::Spillable {
            state.num_spill += 1;
        }
        state
            .named(consumer.name(), consumer.can_spill())
            .registrations += 1;
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        let mut state = self.lock();
        // Its reservations were freed (shrunk) before the registration dropped.
        if let Some(live) = state.live.remove(&consumer.id()) {
            if live.kind == Kind::Spillable {
                state.num_spill = state.num_spill.saturating_sub(1);
            }
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.lock().add(reservation.consumer(), additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.lock().remove(reservation.consumer(), shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion_common::Result<()> {
        let consumer = reservation.consumer();
        let mut state = self.lock();
        // This reservation's bytes, not the consumer's total: an operator that splits its
        // reservation (an aggregate's merge of spill files beside its own state) copies
        // what each part holds, and FairSpillPool judges the same figure.
        let held = reservation.size();
        let kind = state.live(consumer).kind;
        let view = self.view(&state);
        let ask = Ask {
            requested: additional,
            held,
            kind,
        };
        match policy::decide(ask, &view) {
            Ok(()) => {
                state.add(consumer, additional);
                Ok(())
            }
            Err(reason) => {
                let refusal = Refusal {
                    consumer: consumer.name().to_string(),
                    consumer_id: consumer.id(),
                    can_spill: consumer.can_spill(),
                    requested: additional,
                    held,
                    reason,
                    pool_reserved: state.reserved(),
                    allocator_charged: self.allocator.allocated_bytes(),
                    allocator_limit: self.allocator.limit(),
                    margin: view.margin,
                };
                state.refusals += 1;
                let named = state.named(consumer.name(), consumer.can_spill());
                named.refusals += 1;
                named.refused_bytes = named.refused_bytes.saturating_add(additional as u64);
                let err = DataFusionError::ResourcesExhausted(refusal.to_string());
                state.last_refusal = Some(refusal);
                Err(err)
            }
        }
    }

    fn reserved(&self) -> usize {
        self.lock().reserved()
    }

    /// `Finite(limit - margin)`: DataFusion turns off the aggregation paths that cannot
    /// spill when the limit is finite, and a hard limit is finite.
    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.allocator.limit().saturating_sub(self.margin()))
    }
}

impl<A> fmt::Debug for DataFusionPool<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataFusionPool")
            .field("allocator", self.allocator)
            .field("margin", &self.margin)
            .field("copy_percent", &self.copy_percent)
            .finish_non_exhaustive()
    }
}

impl<A: GlobalAlloc + Send + Sync> fmt::Display for DataFusionPool<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "limited_allocator(reserved: {}, limit: {}, margin: {}, copy: {}%)",
            Exact(self.reserved()),
            Exact(self.allocator.limit()),
            Exact(self.margin()),
            self.copy_percent
        )
    }
}

/// A monitor watching the pool reads the allocator's numbers and the pool's reservations,
/// so a [`Snapshot`](crate::metrics::Snapshot) and the Prometheus collector show the gap between
/// what DataFusion reserved and what it really holds.
///
/// ```
/// use limited_allocator::{datafusion::DataFusionPool, monitor::MemoryMonitor, LimitedAllocator};
/// use std::sync::Arc;
/// static BUDGET: LimitedAllocator = LimitedAllocator::new(std::alloc::System, 1 << 30);
///
/// let pool = Arc::new(DataFusionPool::new(&BUDGET));
/// let monitor = MemoryMonitor::builder().budget_source(pool.clone()).build()?;
/// let a = monitor.snapshot().allocator.unwrap();
/// assert_eq!(a.datafusion_reserved_bytes, Some(0));
/// assert_eq!(a.datafusion_unreserved_bytes, Some(a.allocated_bytes as i64));
/// # Ok::<(), limited_allocator::monitor::MonitorError>(())
/// ```
impl<A: GlobalAlloc + Send + Sync> crate::monitor::BudgetSource for DataFusionPool<A> {
    fn allocated_bytes(&self) -> usize {
        self.allocator.allocated_bytes()
    }
    fn peak_bytes(&self) -> usize {
        self.allocator.peak_bytes()
    }
    fn limit(&self) -> usize {
        self.allocator.limit()
    }
    fn allocator_stats(&self) -> Option<crate::AllocatorStats> {
        Some(self.allocator.stats())
    }
    fn datafusion_reserved_bytes(&self) -> Option<usize> {
        Some(self.reserved())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datafusion::RefusalReason;
    use datafusion_execution::memory_pool::MemoryConsumer;
    use std::sync::Arc;

    const MIB: usize = 1 << 20;
    // Not the global allocator: nothing is charged, so `available_bytes()` is the limit.
    static BUDGET: LimitedAllocator = LimitedAllocator::new(System, 64 * MIB);

    /// A pool with a 4 MiB margin (below the default floor), so the shares are round.
    fn pool() -> (Arc<DataFusionPool>, Arc<dyn MemoryPool>) {
        let pool = Arc::new(DataFusionPool::new(&BUDGET).with_margin(4 * MIB));
        let dyn_pool: Arc<dyn MemoryPool> = pool.clone();
        (pool, dyn_pool)
    }

    #[test]
    fn the_limit_is_finite_so_datafusion_picks_its_spilling_paths() {
        // The default margin: 64 MiB / 16 is under the 8 MiB floor.
        let default = DataFusionPool::new(&BUDGET);
        assert_eq!(default.margin(), 8 * MIB);
        assert!(matches!(default.memory_limit(), MemoryLimit::Finite(n) if n == 56 * MIB));
        let (pool, _) = pool();
        assert!(matches!(pool.memory_limit(), MemoryLimit::Finite(n) if n == 60 * MIB));
    }

    #[test]
    fn spillable_consumers_split_the_room_and_refusals_name_everything() {
        let (pool, dyn_pool) = pool();
        let a = MemoryConsumer::new("sorter[0]")
            .with_can_spill(true)
            .register(&dyn_pool);
        let b = MemoryConsumer::new("sorter[1]")
            .with_can_spill(true)
            .register(&dyn_pool);
        // 60 MiB usable (nothing is charged: not the global allocator), copies of 200%:
        // capacity 0 + 60 / 3 = 20, a share 10 each; after `a` holds 10 the capacity is
        // 10 + 20 = 30, a share 15.
        a.try_grow(10 * MIB).unwrap();
        let err = a.try_grow(6 * MIB).unwrap_err();
        assert!(matches!(
            err.find_root(),
            datafusion_common::DataFusionError::ResourcesExhausted(_)
        ));
        let refusal = pool.last_refusal().unwrap();
        assert_eq!(refusal.consumer, "sorter[0]");
        assert_eq!((refusal.requested, refusal.held), (6 * MIB, 10 * MIB));
        assert_eq!(refusal.pool_reserved, 10 * MIB);
        assert_eq!(refusal.allocator_limit, 64 * MIB);
        assert_eq!(refusal.margin, 4 * MIB);
        assert_eq!(refusal.reason, RefusalReason::FairShare { share: 15 * MIB });
        assert!(err.to_string().contains(&refusal.to_string()), "{err}");
        // The other consumer still gets its share; after `a` is gone, `b` gets it all.
        b.try_grow(MIB).unwrap();
        drop(a);
        b.try_grow(15 * MIB).unwrap();
        let stats = pool.stats();
        assert_eq!(
            (stats.reserved, stats.consumers, stats.refusals),
            (16 * MIB, 1, 1)
        );
        let a_stats = &stats.by_consumer[0];
        assert_eq!(a_stats.name, "sorter[0]");
        assert_eq!((a_stats.reserved, a_stats.peak_reserved), (0, 10 * MIB));
        assert_eq!((a_stats.grants, a_stats.refusals), (1, 1));
        assert_eq!(a_stats.refused_bytes, 6 * MIB as u64);
    }

    #[test]
    fn repartition_batches_take_no_share_from_the_spilling_operators() {
        let (pool, dyn_pool) = pool();
        let sorter = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&dyn_pool);
        let channel = MemoryConsumer::new("RepartitionExec[0]")
            .with_can_spill(true)
            .register(&dyn_pool);
        // 60 MiB usable, copies of 200%: the sorter alone has a share of 20 MiB, the
        // repartition's channel does not halve it.
        sorter.try_grow(20 * MIB).unwrap();
        // The channel's batches pass any share while the margin is free ...
        channel.try_grow(30 * MIB).unwrap();
        assert_eq!(pool.reserved(), 50 * MIB);
        assert_eq!(pool.stats().refusals, 0);
        // ... and count as spillable in the figures, as DataFusion registered them.
        let stats = pool.stats();
        let by_name = |n: &str| stats.by_consumer.iter().find(|c| c.name == n).unwrap();
        assert!(by_name("RepartitionExec[0]").can_spill);
        assert_eq!(by_name("RepartitionExec[0]").reserved, 30 * MIB);
    }

    #[test]
    fn grow_and_shrink_are_counted_even_past_the_limit() {
        let (pool, dyn_pool) = pool();
        let join = MemoryConsumer::new("join").register(&dyn_pool);
        join.grow(100 * MIB); // infallible: counted, never refused
        assert_eq!(pool.reserved(), 100 * MIB);
        // Unspillable reservations are held back from the headroom: nothing is usable now.
        assert!(join.try_grow(1).is_err());
        join.shrink(100 * MIB);
        assert_eq!(pool.reserved(), 0);
        join.try_grow(MIB).unwrap();
        assert_eq!(pool.stats().peak_reserved, 100 * MIB);
    }
}
