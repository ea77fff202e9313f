//! The token: what the fast path compares to know that this thread's credit is this
//! instance's and still current. One `u64`, so that the comparison is one instruction:
//!
//! ```text
//!  63       62      61 ............. 24  23    22 ...... 10  9 ..... 0
//! [ENTERED][PARKED][ instance id (38 b) ][OVER][ epoch (13) ][ slot (10) ]
//! ```
//!
//! An instance's token (in `Core`) carries its id, its slot, its credit epoch and its OVER
//! state; an entry's token (in `Entry`) is a copy of the instance's token it was synced
//! to, plus the entry-only flags ENTERED and PARKED. A leaf module: it imports nothing.

use core::sync::atomic::{AtomicU64, Ordering};

const SLOT_MASK: u64 = 0x3ff;
/// The slot value of an instance without a slot (or not yet registered).
const NO_SLOT: u64 = SLOT_MASK;
const EPOCH_SHIFT: u32 = 10;
const EPOCH_MASK: u64 = 0x1fff << EPOCH_SHIFT;
/// Set on the instance's token while it is over its limit (a lowered limit, an overfilled
/// pool). A state, not a count: an entry synced while under the limit never carries it, so
/// it cannot match the token while the instance is over, however often the epoch wraps
/// meanwhile (a thread idle through 8192 recalls then finds its old token again only once
/// the instance is back under its limit, where its credit, still charged and within the
/// pool's bound, is safe to spend). Entries synced while over are PARKED, and never match
/// either.
const OVER: u64 = 1 << 23;
const ID_SHIFT: u32 = 24;
/// Bits of the instance id a token carries.
pub(crate) const ID_BITS: u32 = 38;
const ID_MASK: u64 = ((1 << ID_BITS) - 1) << ID_SHIFT;
/// Set on an entry (never on an instance's token) while a reservation is entered.
const ENTERED: u64 = 1 << 63;
/// Set on an entry (never on an instance's token) while the instance is over its limit
/// (lowered limit, overfilled pool): the thread then neither spends nor keeps credit.
const PARKED: u64 = 1 << 62;
/// The entry-only flags.
const FLAGS: u64 = ENTERED | PARKED;

/// A packed token (see the module docs). `repr(transparent)` over `u64` and every method a
/// `const fn` on the bits, so the fast path's comparison compiles to what a raw `u64`'s did.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(u64);

impl Token {
    /// The token of an entry that serves no instance (never an instance's token: those
    /// always carry a slot value, `NO_SLOT` at least, or an id).
    pub(crate) const NONE: Token = Token(0);
    /// An instance's token before its first slow-path call.
    pub(crate) const UNREGISTERED: Token = Token(NO_SLOT);

    /// A fresh token for instance `id` in `slot` (`None`: no slot), epoch 0, not over.
    pub(crate) const fn new(id: u64, slot: Option<usize>) -> Token {
        let slot = match slot {
            Some(s) => s as u64,
            None => NO_SLOT,
        };
        Token(((id << ID_SHIFT) & ID_MASK) | (slot & SLOT_MASK))
    }

    /// The registry slot (`SLOTS` or more: none).
    #[inline(always)]
    pub(crate) const fn slot(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    /// The instance id.
    #[inline(always)]
    pub(crate) const fn id(self) -> u64 {
        (self.0 & ID_MASK) >> ID_SHIFT
    }

    /// Whether this is an entry's token that serves no instance.
    #[inline(always)]
    pub(crate) const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Whether `self` (an entry's token of any epoch) is `instance`'s: not empty, same id.
    #[inline(always)]
    pub(crate) const fn is_of(self, instance: Token) -> bool {
        !self.is_none() && self.id() == instance.id()
    }

    /// The same token with the epoch advanced (wrapping within its 13 bits).
    pub(crate) const fn next_epoch(self) -> Token {
        let epoch = (self.0 & EPOCH_MASK).wrapping_add(1 << EPOCH_SHIFT) & EPOCH_MASK;
        Token((self.0 & !EPOCH_MASK) | epoch)
    }

    /// Whether the instance was over its limit when this token was made.
    #[inline(always)]
    pub(crate) const fn is_over(self) -> bool {
        self.0 & OVER != 0
    }

    /// Which side of its limit the instance was on when this token was made.
    pub(crate) const fn side(self) -> Side {
        if self.is_over() {
            Side::Over
        } else {
            Side::Under
        }
    }

    /// The next epoch with the OVER state flipped: going over the limit, or back under it,
    /// always advances the epoch too, so every entry re-syncs.
    pub(crate) const fn next_epoch_toggling_over(self) -> Token {
        Token(self.next_epoch().0 ^ OVER)
    }

    /// Whether a reservation is entered (an entry's token).
    #[inline(always)]
    pub(crate) const fn is_entered(self) -> bool {
        self.0 & ENTERED != 0
    }

    /// Whether the entry is parked (an entry's token).
    #[inline(always)]
    pub(crate) const fn is_parked(self) -> bool {
        self.0 & PARKED != 0
    }

    /// The instance's token this entry's token was synced to: without the entry-only flags.
    pub(crate) const fn without_flags(self) -> Token {
        Token(self.0 & !FLAGS)
    }

    /// With the ENTERED flag set or cleared as `entered` says.
    pub(crate) const fn with_entered(self, entered: Entered) -> Token {
        match entered {
            Entered::Yes => Token(self.0 | ENTERED),
            Entered::No => Token(self.0 & !ENTERED),
        }
    }

    /// Whether the ENTERED flag is set, as an [`Entered`].
    pub(crate) const fn entered(self) -> Entered {
        if self.is_entered() {
            Entered::Yes
        } else {
            Entered::No
        }
    }

    /// With the PARKED flag set.
    pub(crate) const fn parked(self) -> Token {
        Token(self.0 | PARKED)
    }
}

/// Which side of its limit an instance is on (the OVER state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `charged <= limit`: credit is safe to spend.
    Under,
    /// `charged > limit` (a lowered limit, an overfilled pool, an overdraft): entries park.
    Over,
}

/// Whether a thread has a reservation of the instance entered (the ENTERED flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entered {
    No,
    Yes,
}

/// An instance's token, shared by every thread that uses the instance.
#[repr(transparent)]
pub(crate) struct AtomicToken(AtomicU64);

impl AtomicToken {
    pub(crate) const fn new(token: Token) -> Self {
        Self(AtomicU64::new(token.0))
    }

    #[inline(always)]
    pub(crate) fn load(&self, order: Ordering) -> Token {
        Token(self.0.load(order))
    }

    /// The token, through exclusive access (no atomic operation).
    pub(crate) fn get_mut(&mut self) -> Token {
        Token(*self.0.get_mut())
    }

    pub(crate) fn compare_exchange(
        &self,
        current: Token,
        new: Token,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Token, Token> {
        self.0
            .compare_exchange(current.0, new.0, success, failure)
            .map(Token)
            .map_err(Token)
    }

    /// Replaces the token with what `f` makes of it, unless `f` answers `None`.
    pub(crate) fn update(
        &self,
        set_order: Ordering,
        fetch_order: Ordering,
        mut f: impl FnMut(Token) -> Option<Token>,
    ) {
        let _ = self
            .0
            .fetch_update(set_order, fetch_order, |t| f(Token(t)).map(|t| t.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_round_trip() {
        let t = Token::new(12345, Some(7));
        assert_eq!((t.id(), t.slot()), (12345, 7));
        let n = t.next_epoch();
        assert_ne!(n, t);
        assert_eq!((n.id(), n.slot()), (12345, 7));
        let mut wrapped = t;
        for _ in 0..(1 << 13) {
            wrapped = wrapped.next_epoch();
        }
        assert_eq!(wrapped, t, "epoch wraps without touching the id");
        assert_eq!(t.with_entered(Entered::Yes).id(), 12345);
    }

    #[test]
    fn flags_and_over_are_apart_from_the_fields() {
        let t = Token::new(9, None);
        assert_eq!(t.slot(), NO_SLOT as usize);
        assert!(!t.is_over());
        let o = t.next_epoch_toggling_over();
        assert!(o.is_over() && o != t.next_epoch() && o.id() == 9);
        assert!(!o.next_epoch_toggling_over().is_over());
        let e = o.with_entered(Entered::Yes).parked();
        assert!(e.is_entered() && e.is_parked() && e.is_of(o));
        assert_eq!(e.without_flags(), o);
        assert_eq!(e.with_entered(Entered::No).entered(), Entered::No);
        assert!(!Token::NONE.is_of(Token::new(0, Some(0))));
    }
}
