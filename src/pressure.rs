//! Pressure levels: how close to its limit a budget is, as four ordered steps.
//!
//! [`PressureLevel`] is what programs branch on ("halve the batch at High"). The default
//! thresholds are GopherFrame's: below 60 % is Low, 60 % up to 80 % Medium, 80 % up to 95 %
//! High, 95 % and above Critical. [`PressureThresholds`] makes them configurable, and
//! [`HysteresisLevel`] adds the memory a monitor needs so a level does not flap when usage
//! hovers at a threshold.

use core::fmt;

/// How close a budget is to its limit. Ordered: `Low < Medium < High < Critical`.
///
/// ```
/// use limited_allocator::PressureLevel;
/// assert!(PressureLevel::Low < PressureLevel::Critical);
/// assert_eq!(PressureLevel::High.to_string(), "high");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum PressureLevel {
    /// Plenty of room (below the medium threshold, 60 % by default).
    #[default]
    Low = 0,
    /// Getting fuller: a good moment to stop growing caches (60 % to below 80 %).
    Medium = 1,
    /// Shrink work: smaller batches, fewer concurrent queries (80 % to below 95 %).
    High = 2,
    /// At the edge: release what can be released and refuse new large work (95 % and up).
    Critical = 3,
}

impl PressureLevel {
    /// All levels, lowest first.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// assert_eq!(PressureLevel::ALL.len(), 4);
    /// assert_eq!(PressureLevel::ALL[3], PressureLevel::Critical);
    /// ```
    pub const ALL: [PressureLevel; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    /// The level's lower-case name, as used in metrics labels (`"low"`, ..., `"critical"`).
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// assert_eq!(PressureLevel::Medium.as_str(), "medium");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The level as a small number (0 = Low ... 3 = Critical), for gauges and arrays.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// assert_eq!(PressureLevel::Critical.index(), 3);
    /// ```
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The inverse of [`index`](Self::index); indices above 3 saturate at Critical.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// assert_eq!(PressureLevel::from_index(1), PressureLevel::Medium);
    /// ```
    pub const fn from_index(index: usize) -> Self {
        match index {
            0 => Self::Low,
            1 => Self::Medium,
            2 => Self::High,
            _ => Self::Critical,
        }
    }
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds rejected by [`PressureThresholds::new`].
///
/// ```
/// let err = limited_allocator::PressureThresholds::new(90.0, 80.0, 95.0).unwrap_err();
/// assert_eq!((err.medium, err.high, err.critical), (90.0, 80.0, 95.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "invalid pressure thresholds medium={medium}%, high={high}%, critical={critical}%: \
     they must be strictly increasing and within 0..=100"
)]
pub struct ThresholdError {
    /// The medium threshold that was given, in percent.
    pub medium: f64,
    /// The high threshold that was given, in percent.
    pub high: f64,
    /// The critical threshold that was given, in percent.
    pub critical: f64,
}

/// Where Medium, High and Critical start, in percent of the limit.
///
/// A usage exactly at a threshold belongs to the higher level (exactly 60 % is Medium).
///
/// ```
/// use limited_allocator::{PressureLevel, PressureThresholds};
/// let t = PressureThresholds::default();
/// assert_eq!(t.level_for(59.9), PressureLevel::Low);
/// assert_eq!(t.level_for(60.0), PressureLevel::Medium);
/// assert_eq!(t.level_for(95.0), PressureLevel::Critical);
///
/// let strict = PressureThresholds::new(50.0, 70.0, 90.0)?;
/// assert_eq!(strict.level_for(75.0), PressureLevel::High);
/// assert!(PressureThresholds::new(80.0, 70.0, 90.0).is_err());
/// # Ok::<(), limited_allocator::pressure::ThresholdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureThresholds {
    medium: f64,
    high: f64,
    critical: f64,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl PressureThresholds {
    /// 60 / 80 / 95 percent.
    pub const DEFAULT: Self = Self {
        medium: 60.0,
        high: 80.0,
        critical: 95.0,
    };

    /// Thresholds in percent; they must satisfy `0 <= medium < high < critical <= 100`.
    ///
    /// ```
    /// use limited_allocator::PressureThresholds;
    /// let err = PressureThresholds::new(60.0, 80.0, 120.0).unwrap_err();
    /// assert!(err.to_string().contains("critical=120%"));
    /// ```
    pub fn new(medium: f64, high: f64, critical: f64) -> Result<Self, ThresholdError> {
        let ok = (0.0..=100.0).contains(&medium)
            && (0.0..=100.0).contains(&critical)
            && medium < high
            && high < critical;
        if ok {
            Ok(Self {
                medium,
                high,
                critical,
            })
        } else {
            Err(ThresholdError {
                medium,
                high,
                critical,
            })
        }
    }

    /// The medium threshold in percent.
    ///
    /// ```
    /// assert_eq!(limited_allocator::PressureThresholds::DEFAULT.medium(), 60.0);
    /// ```
    pub fn medium(&self) -> f64 {
        self.medium
    }

    /// The high threshold in percent.
    ///
    /// ```
    /// assert_eq!(limited_allocator::PressureThresholds::DEFAULT.high(), 80.0);
    /// ```
    pub fn high(&self) -> f64 {
        self.high
    }

    /// The critical threshold in percent.
    ///
    /// ```
    /// assert_eq!(limited_allocator::PressureThresholds::DEFAULT.critical(), 95.0);
    /// ```
    pub fn critical(&self) -> f64 {
        self.critical
    }

    /// The threshold in percent at which `level` starts (0 for Low).
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, PressureThresholds};
    /// assert_eq!(PressureThresholds::DEFAULT.threshold(PressureLevel::High), 80.0);
    /// ```
    pub fn threshold(&self, level: PressureLevel) -> f64 {
        match level {
            PressureLevel::Low => 0.0,
            PressureLevel::Medium => self.medium,
            PressureLevel::High => self.high,
            PressureLevel::Critical => self.critical,
        }
    }

    /// The level for a usage in percent. NaN counts as Critical: a broken reading must not
    /// look like an idle system.
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, PressureThresholds};
    /// assert_eq!(PressureThresholds::DEFAULT.level_for(f64::NAN), PressureLevel::Critical);
    /// ```
    pub fn level_for(&self, percent: f64) -> PressureLevel {
        if percent.is_nan() || percent >= self.critical {
            PressureLevel::Critical
        } else if percent >= self.high {
            PressureLevel::High
        } else if percent >= self.medium {
            PressureLevel::Medium
        } else {
            PressureLevel::Low
        }
    }

    /// Packs the thresholds into hundredths of a percent, for atomic storage.
    pub(crate) fn to_bits(self) -> u64 {
        let bp = |p: f64| (p * 100.0).round() as u64;
        bp(self.medium) | bp(self.high) << 16 | bp(self.critical) << 32
    }

    /// The inverse of [`to_bits`](Self::to_bits).
    pub(crate) fn from_bits(bits: u64) -> Self {
        let p = |shift: u32| ((bits >> shift) & 0xffff) as f64 / 100.0;
        Self {
            medium: p(0),
            high: p(16),
            critical: p(32),
        }
    }

    /// [`DEFAULT`](Self::DEFAULT) packed by [`to_bits`](Self::to_bits).
    pub(crate) const DEFAULT_BITS: u64 = 6000 | 8000 << 16 | 9500 << 32;
}

/// A level with hysteresis: it rises as soon as a threshold is reached, but falls only once
/// usage is `margin` points below the threshold of the current level.
///
/// Used by the monitor and the chunker so a usage hovering at 80 % does not flip between
/// Medium and High on every sample.
///
/// ```
/// use limited_allocator::{PressureLevel, PressureThresholds};
/// use limited_allocator::pressure::HysteresisLevel;
/// let mut level = HysteresisLevel::new(PressureThresholds::DEFAULT, 5.0);
/// assert_eq!(level.update(81.0), PressureLevel::High);
/// assert_eq!(level.update(78.0), PressureLevel::High); // not yet 5 points below 80
/// assert_eq!(level.update(74.9), PressureLevel::Medium);
/// assert_eq!(level.update(96.0), PressureLevel::Critical); // rising is immediate
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HysteresisLevel {
    thresholds: PressureThresholds,
    margin: f64,
    current: PressureLevel,
}

impl HysteresisLevel {
    /// Starts at Low. `margin` is in percentage points (negative values count as 0).
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, PressureThresholds};
    /// use limited_allocator::pressure::HysteresisLevel;
    /// let level = HysteresisLevel::new(PressureThresholds::DEFAULT, 5.0);
    /// assert_eq!(level.current(), PressureLevel::Low);
    /// ```
    pub fn new(thresholds: PressureThresholds, margin: f64) -> Self {
        Self {
            thresholds,
            margin: margin.max(0.0),
            current: PressureLevel::Low,
        }
    }

    /// The level as of the last update.
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, PressureThresholds};
    /// use limited_allocator::pressure::HysteresisLevel;
    /// let mut level = HysteresisLevel::new(PressureThresholds::DEFAULT, 5.0);
    /// level.update(99.0);
    /// assert_eq!(level.current(), PressureLevel::Critical);
    /// ```
    pub fn current(&self) -> PressureLevel {
        self.current
    }

    /// Feeds a new usage in percent and returns the level after it.
    ///
    /// ```
    /// use limited_allocator::{PressureLevel, PressureThresholds};
    /// use limited_allocator::pressure::HysteresisLevel;
    /// let mut level = HysteresisLevel::new(PressureThresholds::DEFAULT, 5.0);
    /// assert_eq!(level.update(10.0), PressureLevel::Low);
    /// ```
    pub fn update(&mut self, percent: f64) -> PressureLevel {
        let instant = self.thresholds.level_for(percent);
        if instant >= self.current {
            self.current = instant;
            return instant;
        }
        // Falling: step down while usage is clearly below the current level's threshold.
        while self.current > instant
            && percent < self.thresholds.threshold(self.current) - self.margin
        {
            self.current = PressureLevel::from_index(self.current.index() - 1);
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_belong_to_the_higher_level() {
        let t = PressureThresholds::DEFAULT;
        assert_eq!(t.level_for(0.0), PressureLevel::Low);
        assert_eq!(t.level_for(60.0), PressureLevel::Medium);
        assert_eq!(t.level_for(79.99), PressureLevel::Medium);
        assert_eq!(t.level_for(80.0), PressureLevel::High);
        assert_eq!(t.level_for(94.99), PressureLevel::High);
        assert_eq!(t.level_for(95.0), PressureLevel::Critical);
        assert_eq!(t.level_for(250.0), PressureLevel::Critical);
    }

    #[test]
    fn invalid_thresholds_are_typed_errors() {
        for (m, h, c) in [
            (60.0, 60.0, 90.0),
            (-1.0, 50.0, 90.0),
            (10.0, 20.0, 100.5),
            (f64::NAN, 20.0, 30.0),
            (90.0, 80.0, 95.0),
        ] {
            let err = PressureThresholds::new(m, h, c).unwrap_err();
            assert_eq!((err.high, err.critical), (h, c));
        }
        assert!(PressureThresholds::new(0.0, 50.0, 100.0).is_ok());
    }

    #[test]
    fn bits_round_trip() {
        let t = PressureThresholds::new(12.5, 50.25, 99.99).unwrap();
        assert_eq!(PressureThresholds::from_bits(t.to_bits()), t);
        let d = PressureThresholds::DEFAULT;
        assert_eq!(PressureThresholds::from_bits(d.to_bits()), d);
    }

    #[test]
    fn hysteresis_falls_several_levels_at_once_when_far_below() {
        let mut h = HysteresisLevel::new(PressureThresholds::DEFAULT, 5.0);
        assert_eq!(h.update(99.0), PressureLevel::Critical);
        assert_eq!(h.update(91.0), PressureLevel::Critical);
        assert_eq!(h.update(89.0), PressureLevel::High);
        assert_eq!(h.update(10.0), PressureLevel::Low);
        assert_eq!(h.update(f64::NAN), PressureLevel::Critical);
    }
}
