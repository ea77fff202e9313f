//! The refusal error: every number an operator needs to act, in fields and in the text.

use crate::units::ByteSize;
use core::fmt;

/// A request that the budget cannot grant: returned by
/// [`check_can_allocate`](crate::LimitedAllocator::check_can_allocate),
/// [`try_reserve`](crate::LimitedAllocator::try_reserve) and the reservation methods.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use std::alloc::System;
///
/// let budget = LimitedAllocator::new(System, 1024);
/// let _held = budget.try_reserve(800)?;
/// let err = budget.check_can_allocate(300).unwrap_err();
/// assert_eq!((err.requested, err.limit, err.current, err.available), (300, 1024, 800, 224));
/// assert_eq!(
///     err.to_string(),
///     "memory limit exceeded: requested 300 bytes, limit 1024 bytes, \
///      currently allocated 800 bytes (78.1% used), 224 bytes available"
/// );
/// # Ok::<(), limited_allocator::LimitExceeded>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct LimitExceeded {
    /// Bytes that were asked for.
    pub requested: usize,
    /// The limit in force when the request was refused.
    pub limit: usize,
    /// Bytes charged to the budget when the request was refused.
    pub current: usize,
    /// `limit - current`, saturating at 0.
    pub available: usize,
}

impl LimitExceeded {
    /// Builds the error for a refused request of `requested` bytes.
    ///
    /// ```
    /// let e = limited_allocator::LimitExceeded::new(10, 100, 95);
    /// assert_eq!(e.available, 5);
    /// ```
    pub const fn new(requested: usize, limit: usize, current: usize) -> Self {
        Self {
            requested,
            limit,
            current,
            available: limit.saturating_sub(current),
        }
    }

    /// Usage at refusal time in percent of the limit (100 for a zero limit).
    ///
    /// ```
    /// let e = limited_allocator::LimitExceeded::new(300, 1024, 800);
    /// assert!((e.usage_percent() - 78.125).abs() < 1e-9);
    /// ```
    pub fn usage_percent(&self) -> f64 {
        percent(self.current, self.limit)
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory limit exceeded: requested {}, limit {}, currently allocated {} \
             ({:.1}% used), {} available",
            Exact(self.requested),
            Exact(self.limit),
            Exact(self.current),
            self.usage_percent(),
            Exact(self.available),
        )
    }
}

/// `used` as a percentage of `limit`; 100 for a zero limit, never NaN.
pub(crate) fn percent(used: usize, limit: usize) -> f64 {
    if limit == 0 {
        100.0
    } else {
        used as f64 * 100.0 / limit as f64
    }
}

/// A byte count as `N bytes`, with the human form added once it is large:
/// `3221225472 bytes (3.0 GiB)`. Exact for scripts, readable for people.
pub(crate) struct Exact(pub usize);

impl fmt::Display for Exact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 1024 * 1024 {
            write!(f, "{} bytes", self.0)
        } else {
            write!(f, "{} bytes ({})", self.0, ByteSize(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_get_human_units() {
        let e = LimitExceeded::new(3 << 30, 4 << 30, 2 << 30);
        let text = e.to_string();
        assert!(
            text.contains("requested 3221225472 bytes (3.0 GiB)"),
            "{text}"
        );
        assert!(text.contains("limit 4294967296 bytes (4.0 GiB)"), "{text}");
        assert!(text.contains("(50.0% used)"), "{text}");
    }

    #[test]
    fn zero_limit_reads_as_full() {
        let e = LimitExceeded::new(1, 0, 0);
        assert_eq!(e.usage_percent(), 100.0);
        assert_eq!(e.available, 0);
    }
}
