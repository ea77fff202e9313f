//! What the pool counts: per consumer (by name, so a finished query's operators stay in the
//! figures) and for the whole pool.

/// One consumer name's figures. DataFusion names consumers per operator and partition
/// (`ExternalSorter[0]`, `GroupedHashAggregateStream[1] (count(1))`, ...); consumers of
/// the same name, across queries, add up here.
///
/// ```
/// let s = limited_allocator::datafusion::ConsumerStats::default();
/// assert_eq!((s.registrations, s.refusals, s.peak_reserved), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// The consumer's name.
    pub name: String,
    /// Whether it can spill.
    pub can_spill: bool,
    /// Times a consumer of this name registered.
    pub registrations: u64,
    /// Bytes its live consumers hold now.
    pub reserved: usize,
    /// The most one consumer of this name held at once.
    pub peak_reserved: usize,
    /// Growths granted (`try_grow` and `grow`).
    pub grants: u64,
    /// `try_grow` calls refused.
    pub refusals: u64,
    /// Bytes asked for by the refused calls.
    pub refused_bytes: u64,
}

/// The pool's figures at one moment.
///
/// ```
/// let s = limited_allocator::datafusion::PoolStats::default();
/// assert_eq!(s.reserved, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Bytes reserved by all consumers now.
    pub reserved: usize,
    /// The most reserved at once.
    pub peak_reserved: usize,
    /// Consumers registered now.
    pub consumers: usize,
    /// Growths granted.
    pub grants: u64,
    /// `try_grow` calls refused.
    pub refusals: u64,
    /// Per consumer name, sorted by name.
    pub by_consumer: Vec<ConsumerStats>,
}
