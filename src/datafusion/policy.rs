//! The grant rule, apart from the pool's locking so it can be tested number by number.
//!
//! DataFusion reserves an estimate of what an operator holds, and allocates more than that
//! without asking: an aggregate's hash table doubles, a spill sorts a copy of the buffered
//! batches, an emit builds output arrays of the whole state, a join concatenates its build
//! side. Those allocations are infallible, so a pool that lets a consumer grow up to the
//! last byte of real headroom has left nothing for them and the process aborts. The rule
//! therefore asks the allocator's *real* headroom to back each grant with room for the
//! copy that follows it, and keeps a margin free for everything outside the pool.

use super::refusal::RefusalReason;

/// Consumers whose reservations count batches in flight between operators: the bytes are
/// allocated before they ask, are handed on and never copied, and a refusal writes the batch
/// to a spill file instead. DataFusion gives no flag for that; its names do.
const IN_FLIGHT_PREFIXES: [&str; 1] = ["RepartitionExec["];

/// What a consumer's reservation is, for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Operator state that a refusal makes it spill (a sort's buffer, an aggregate's table):
    /// it takes a fair share and needs room for its copy.
    Spillable,
    /// State that cannot spill (a join's build side, a merge's buffers): a refusal fails
    /// the query.
    Unspillable,
    /// Batches already allocated, queued between operators (`RepartitionExec`'s channels):
    /// granting them adds no real bytes and they are never copied, so they take no fair
    /// share; a refusal spills the batch, which frees it.
    InFlight,
}

impl Kind {
    /// The kind of a consumer named `name`.
    pub(super) fn of(name: &str, can_spill: bool) -> Self {
        if !can_spill {
            Self::Unspillable
        } else if IN_FLIGHT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            Self::InFlight
        } else {
            Self::Spillable
        }
    }

    /// Whether DataFusion registered the consumer as one that spills.
    pub(super) fn can_spill(self) -> bool {
        self != Self::Unspillable
    }
}

/// One `try_grow` as the rule sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    /// Bytes asked for.
    pub(super) requested: usize,
    /// Bytes the consumer holds already (all its reservations).
    pub(super) held: usize,
    /// What the consumer's reservation is.
    pub(super) kind: Kind,
}

/// The pool and the allocator at the moment of the ask.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    /// Spillable consumers registered ([`Kind::Spillable`] only: batches in flight take no
    /// share).
    pub(super) num_spill: usize,
    /// Bytes reserved by spillable consumers.
    pub(super) spillable: usize,
    /// Bytes reserved by unspillable consumers.
    pub(super) unspillable: usize,
    /// The allocator's available bytes (limit less charged).
    pub(super) available: usize,
    /// Real bytes kept free for allocations the pool never sees.
    pub(super) margin: usize,
    /// Real bytes a reserved byte may bring with it when its consumer spills or emits,
    /// in percent of the reservation.
    pub(super) copy_percent: u32,
}

impl View {
    /// Real headroom the pool may hand out: the allocator's available bytes less the margin
    /// and less what unspillable consumers have reserved. Those reservations are mostly not
    /// real yet (a sort's pre-reserved merge memory, a join's build side counted over input
    /// batches it shares and only copies when it concatenates them), so the headroom must
    /// still hold them when they become real.
    pub(super) fn usable(&self) -> usize {
        self.available
            .saturating_sub(self.margin)
            .saturating_sub(self.unspillable)
    }

    /// `bytes` times the copy factor, saturating.
    fn copies(&self, bytes: usize) -> usize {
        let scaled = bytes as u128 * u128::from(self.copy_percent) / 100;
        usize::try_from(scaled).unwrap_or(usize::MAX)
    }

    /// What spillable consumers could hold in all: what they hold, plus what the usable
    /// headroom can back with its copies.
    pub(super) fn capacity(&self) -> usize {
        let backed = self.usable() as u128 * 100 / (100 + u128::from(self.copy_percent));
        self.spillable.saturating_add(backed as usize)
    }

    /// A spillable consumer's share: the capacity split evenly (as DataFusion's
    /// `FairSpillPool`).
    pub(super) fn share(&self) -> usize {
        self.capacity() / self.num_spill.max(1)
    }
}

/// Grants or refuses `ask`.
pub(super) fn decide(ask: Ask, view: &View) -> Result<(), RefusalReason> {
    let after = ask
        .held
        .checked_add(ask.requested)
        .ok_or(RefusalReason::Overflow)?;
    if ask.kind == Kind::InFlight {
        return in_flight(view);
    }
    let can_spill = ask.kind == Kind::Spillable;
    if can_spill && after > view.share() {
        return Err(RefusalReason::FairShare {
            share: view.share(),
        });
    }
    // A spillable consumer: the new bytes, plus the copies it may make of all it will hold
    // (a spill or an emit copies the whole state, not just the last growth). An unspillable
    // one: the new bytes, which `usable` goes on holding back while it is reserved.
    let copies = if can_spill { view.copies(after) } else { 0 };
    let needed = ask.requested.saturating_add(copies);
    let usable = view.usable();
    if needed > usable {
        return Err(RefusalReason::Headroom { needed, usable });
    }
    Ok(())
}

/// A batch in flight is already charged: granting it keeps it in memory, refusing it spills
/// and frees it. So it is granted while the allocator still has the margin and the
/// unspillable reservations free, whatever the fair shares, and spilled only when memory
/// is really short. `RepartitionExec` spilling is both slow and, in DataFusion 55.2, able
/// to deadlock the query (apache/datafusion#24883: two input tasks spilling into one
/// output's spill pool at once park every task); keeping it to real shortage keeps that
/// rare (see `docs/datafusion.md`).
fn in_flight(view: &View) -> Result<(), RefusalReason> {
    let kept = view.margin.saturating_add(view.unspillable);
    if view.available < kept {
        return Err(RefusalReason::InFlight {
            available: view.available,
            kept,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn view(available: usize) -> View {
        View {
            num_spill: 1,
            spillable: 0,
            unspillable: 0,
            available,
            margin: 10 * MIB,
            copy_percent: 100,
        }
    }

    fn spill(requested: usize, held: usize) -> Ask {
        Ask {
            requested,
            held,
            kind: Kind::Spillable,
        }
    }

    #[test]
    fn a_spillable_grant_needs_room_for_its_copy() {
        // 100 MiB available, 10 MiB margin: 90 usable. Holding 40 and asking 5 needs
        // 5 + 45 = 50: granted. Holding 40 and asking 30 needs 30 + 70 = 100: refused.
        let v = view(100 * MIB);
        assert_eq!(decide(spill(5 * MIB, 40 * MIB), &v), Ok(()));
        assert_eq!(
            decide(spill(30 * MIB, 40 * MIB), &v),
            Err(RefusalReason::FairShare { share: 45 * MIB })
        );
    }

    #[test]
    fn the_margin_is_never_handed_out() {
        let v = view(10 * MIB);
        assert_eq!(
            decide(spill(1, 0), &v),
            Err(RefusalReason::FairShare { share: 0 })
        );
        let unspillable = Ask {
            requested: 1,
            held: 0,
            kind: Kind::Unspillable,
        };
        assert_eq!(
            decide(unspillable, &v),
            Err(RefusalReason::Headroom {
                needed: 1,
                usable: 0
            })
        );
    }

    #[test]
    fn spillable_consumers_get_fair_shares() {
        // Two spillable consumers, 20 MiB reserved between them, 60 usable: capacity is
        // 20 + 60 / 2 = 50, a share 25.
        let v = View {
            num_spill: 2,
            spillable: 20 * MIB,
            available: 70 * MIB,
            ..view(0)
        };
        assert_eq!(v.capacity(), 50 * MIB);
        assert_eq!(v.share(), 25 * MIB);
        assert_eq!(decide(spill(5 * MIB, 20 * MIB), &v), Ok(()));
        assert_eq!(
            decide(spill(6 * MIB, 20 * MIB), &v),
            Err(RefusalReason::FairShare { share: 25 * MIB })
        );
    }

    #[test]
    fn unspillable_reservations_are_held_back_from_the_headroom() {
        // 50 MiB available, 10 margin, 30 reserved unspillable (not real yet): 10 usable.
        let v = View {
            unspillable: 30 * MIB,
            ..view(50 * MIB)
        };
        assert_eq!(v.usable(), 10 * MIB);
        let ask = |requested| Ask {
            requested,
            held: 30 * MIB,
            kind: Kind::Unspillable,
        };
        assert_eq!(decide(ask(10 * MIB), &v), Ok(()));
        assert_eq!(
            decide(ask(10 * MIB + 1), &v),
            Err(RefusalReason::Headroom {
                needed: 10 * MIB + 1,
                usable: 10 * MIB
            })
        );
        // And they shrink what spillable consumers may take: capacity 10 / 2.
        assert_eq!(v.share(), 5 * MIB);
    }

    #[test]
    fn kinds_follow_the_spill_flag_and_the_name() {
        assert_eq!(Kind::of("RepartitionExec[1]", true), Kind::InFlight);
        assert_eq!(Kind::of("ExternalSorter[0]", true), Kind::Spillable);
        assert_eq!(
            Kind::of("RepartitionExec[Merge 0]", false),
            Kind::Unspillable
        );
        assert_eq!(Kind::of("HashJoinInput", false), Kind::Unspillable);
    }

    #[test]
    fn batches_in_flight_ignore_shares_and_spill_only_when_memory_is_short() {
        let in_flight = |requested, held| Ask {
            requested,
            held,
            kind: Kind::InFlight,
        };
        // 30 MiB available, 10 margin, 15 unspillable: 5 usable, a spillable share of
        // 5 / 2 = 2.5 MiB (copies of 100%). A batch in flight is already charged: it is granted past any
        // share while the margin and the unspillable reservations are still free.
        let v = View {
            unspillable: 15 * MIB,
            ..view(30 * MIB)
        };
        assert_eq!(v.share(), 5 * MIB / 2);
        assert_eq!(decide(in_flight(8 * MIB, 40 * MIB), &v), Ok(()));
        // 24 MiB available is under the 25 kept: the batch spills.
        let short = View {
            available: 24 * MIB,
            ..v
        };
        assert_eq!(
            decide(in_flight(1, 0), &short),
            Err(RefusalReason::InFlight {
                available: 24 * MIB,
                kept: 25 * MIB
            })
        );
        assert_eq!(
            decide(in_flight(usize::MAX, 1), &v),
            Err(RefusalReason::Overflow)
        );
    }

    #[test]
    fn overflowing_sizes_are_refused_not_wrapped() {
        let v = view(usize::MAX);
        assert_eq!(
            decide(spill(usize::MAX, 1), &v),
            Err(RefusalReason::Overflow)
        );
        let huge = View {
            copy_percent: u32::MAX,
            ..v
        };
        assert!(decide(spill(usize::MAX / 2, 0), &huge).is_err());
    }
}
