//! Why the pool said no: the typed refusal behind DataFusion's `ResourcesExhausted` text.

use crate::error::Exact;
use core::fmt;

/// What a refused `try_grow` ran into.
///
/// ```
/// use limited_allocator::datafusion::RefusalReason;
/// let r = RefusalReason::Headroom { needed: 3 << 20, usable: 1 << 20 };
/// assert_eq!(r.to_string(), "needs 3145728 bytes (3.0 MiB) of real headroom, 1048576 bytes (1.0 MiB) usable");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// A spillable consumer would pass its fair share of the pool.
    FairShare {
        /// The consumer's share: the pool's capacity less the unspillable reservations,
        /// divided by the spillable consumers.
        share: usize,
    },
    /// The allocator's real headroom (less the margin) cannot back the growth and the
    /// copy the consumer makes of its reservation when it spills or emits.
    Headroom {
        /// Real bytes the grant would need.
        needed: usize,
        /// The allocator's available bytes less the margin.
        usable: usize,
    },
    /// A batch in flight between operators (`RepartitionExec`) met an allocator whose
    /// available bytes no longer cover the margin and the unspillable reservations: the
    /// batch goes to a spill file, which frees it.
    InFlight {
        /// The allocator's available bytes.
        available: usize,
        /// The margin plus the unspillable reservations.
        kept: usize,
    },
    /// The reservation's size would overflow `usize`.
    Overflow,
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::FairShare { share } => {
                write!(f, "would pass its fair share of {}", Exact(share))
            }
            Self::Headroom { needed, usable } => write!(
                f,
                "needs {} of real headroom, {} usable",
                Exact(needed),
                Exact(usable)
            ),
            Self::InFlight { available, kept } => write!(
                f,
                "a batch in flight, with {} available under the {} kept for the margin and \
                 unspillable reservations",
                Exact(available),
                Exact(kept)
            ),
            Self::Overflow => f.write_str("the reservation's size would overflow"),
        }
    }
}

/// A refused `try_grow` of [`DataFusionPool`](super::DataFusionPool), with the consumer's,
/// the pool's and the allocator's numbers. DataFusion sees its text inside
/// `DataFusionError::ResourcesExhausted`; [`DataFusionPool::last_refusal`](super::DataFusionPool::last_refusal)
/// returns it typed.
///
/// ```
/// use limited_allocator::datafusion::{Refusal, RefusalReason};
/// let r = Refusal {
///     consumer: "ExternalSorter[0]".into(),
///     consumer_id: 7,
///     can_spill: true,
///     requested: 1024,
///     held: 4096,
///     reason: RefusalReason::FairShare { share: 4096 },
///     pool_reserved: 8192,
///     allocator_charged: 1 << 20,
///     allocator_limit: 2 << 20,
///     margin: 1 << 16,
/// };
/// assert!(r.to_string().starts_with(
///     "DataFusionPool refused 1024 bytes to ExternalSorter[0]#7 (spillable, holding 4096 bytes): \
///      would pass its fair share of 4096 bytes"
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    /// The consumer's name, as DataFusion gave it (`ExternalSorter[0]`, `GroupedHashAggregateStream[1]`, ...).
    pub consumer: String,
    /// The consumer's id.
    pub consumer_id: usize,
    /// Whether the consumer can spill (a refusal makes it spill) or not (it fails the query).
    pub can_spill: bool,
    /// Bytes the reservation asked to grow by.
    pub requested: usize,
    /// Bytes the consumer held in the pool when it asked.
    pub held: usize,
    /// What the request ran into.
    pub reason: RefusalReason,
    /// Bytes reserved in the pool by all consumers.
    pub pool_reserved: usize,
    /// Bytes charged to the allocator's budget.
    pub allocator_charged: usize,
    /// The allocator's hard limit.
    pub allocator_limit: usize,
    /// Real bytes the pool keeps free below the limit for DataFusion's infallible allocations.
    pub margin: usize,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DataFusionPool refused {} to {}#{} ({}, holding {}): {}; pool reserved {}, \
             allocator charged {} of {} limit ({} margin)",
            Exact(self.requested),
            self.consumer,
            self.consumer_id,
            if self.can_spill {
                "spillable"
            } else {
                "unspillable"
            },
            Exact(self.held),
            self.reason,
            Exact(self.pool_reserved),
            Exact(self.allocator_charged),
            Exact(self.allocator_limit),
            Exact(self.margin),
        )
    }
}
