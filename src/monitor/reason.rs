//! Signals, the reasons a level was reached, events and errors.

use super::*;

/// One of the inputs to the combined level.
///
/// ```
/// use limited_allocator::monitor::Signal;
/// assert_eq!(Signal::SystemAvailable.as_str(), "system_available");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Signal {
    /// The allocator's usage of its limit.
    Allocator,
    /// The process's anonymous RSS of its limit.
    Rss,
    /// The cgroup's working set of the cgroup limit.
    Cgroup,
    /// System available memory against the configured minimum.
    SystemAvailable,
    /// Linux pressure-stall information.
    Psi,
}

impl Signal {
    /// All signals.
    pub const ALL: [Signal; 5] = [
        Self::Allocator,
        Self::Rss,
        Self::Cgroup,
        Self::SystemAvailable,
        Self::Psi,
    ];

    /// The lower-case name used in metric labels.
    ///
    /// ```
    /// assert_eq!(limited_allocator::monitor::Signal::Rss.as_str(), "rss");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allocator => "allocator",
            Self::Rss => "rss",
            Self::Cgroup => "cgroup",
            Self::SystemAvailable => "system_available",
            Self::Psi => "psi",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the limit that RSS is measured against came from.
///
/// ```
/// assert_eq!(limited_allocator::monitor::LimitSource::Cgroup.to_string(), "cgroup limit");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LimitSource {
    /// [`MonitorBuilder::max_process_memory`].
    Configured,
    /// The cgroup's memory limit.
    Cgroup,
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Configured => "max_process_memory",
            Self::Cgroup => "cgroup limit",
        })
    }
}

/// Why a signal is at its level, with the numbers. Displays as
/// `rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high`.
///
/// ```
/// use limited_allocator::PressureLevel;
/// use limited_allocator::monitor::{LimitSource, Reason};
/// let r = Reason::Rss {
///     level: PressureLevel::High,
///     rss_bytes: 1932735283,
///     limit_bytes: 2 << 30,
///     limit_source: LimitSource::Cgroup,
/// };
/// assert_eq!(r.to_string(), "rss 1.8 GiB of 2.0 GiB cgroup limit (90.0%): high");
/// assert_eq!(r.level(), PressureLevel::High);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "signal"))]
#[non_exhaustive]
pub enum Reason {
    /// The allocator's budget.
    Allocator {
        /// The signal's level.
        level: PressureLevel,
        /// Bytes charged.
        allocated_bytes: u64,
        /// The allocator's limit.
        limit_bytes: u64,
    },
    /// Anonymous RSS of the process limit.
    Rss {
        /// The signal's level.
        level: PressureLevel,
        /// `RssAnon` (or `VmRSS` where `RssAnon` is missing).
        rss_bytes: u64,
        /// The limit measured against.
        limit_bytes: u64,
        /// Where that limit came from.
        limit_source: LimitSource,
    },
    /// The cgroup's working set of its limit.
    Cgroup {
        /// The signal's level.
        level: PressureLevel,
        /// Usage less inactive file pages.
        working_set_bytes: u64,
        /// The cgroup limit.
        limit_bytes: u64,
    },
    /// System available memory against the configured minimum.
    SystemAvailable {
        /// The signal's level.
        level: PressureLevel,
        /// `MemAvailable`.
        available_bytes: u64,
        /// [`MonitorBuilder::min_system_available`].
        min_available_bytes: u64,
    },
    /// Pressure-stall information.
    Psi {
        /// The signal's level.
        level: PressureLevel,
        /// `some avg10` in percent.
        some_avg10: f64,
    },
}

impl Reason {
    /// The signal's level.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// use limited_allocator::monitor::Reason;
    /// let r = Reason::Psi { level: PressureLevel::Medium, some_avg10: 12.0 };
    /// assert_eq!(r.level(), PressureLevel::Medium);
    /// ```
    pub fn level(&self) -> PressureLevel {
        match *self {
            Self::Allocator { level, .. }
            | Self::Rss { level, .. }
            | Self::Cgroup { level, .. }
            | Self::SystemAvailable { level, .. }
            | Self::Psi { level, .. } => level,
        }
    }

    /// Which signal this is.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// use limited_allocator::monitor::{Reason, Signal};
    /// let r = Reason::Psi { level: PressureLevel::Low, some_avg10: 0.0 };
    /// assert_eq!(r.signal(), Signal::Psi);
    /// ```
    pub fn signal(&self) -> Signal {
        match self {
            Self::Allocator { .. } => Signal::Allocator,
            Self::Rss { .. } => Signal::Rss,
            Self::Cgroup { .. } => Signal::Cgroup,
            Self::SystemAvailable { .. } => Signal::SystemAvailable,
            Self::Psi { .. } => Signal::Psi,
        }
    }
}

pub(super) fn bytes(n: u64) -> ByteSize {
    ByteSize(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) fn percent(used: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        used as f64 * 100.0 / of as f64
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Allocator {
                level,
                allocated_bytes,
                limit_bytes,
            } => write!(
                f,
                "allocator {} of {} limit ({:.1}%): {level}",
                bytes(allocated_bytes),
                bytes(limit_bytes),
                percent(allocated_bytes, limit_bytes)
            ),
            Self::Rss {
                level,
                rss_bytes,
                limit_bytes,
                limit_source,
            } => write!(
                f,
                "rss {} of {} {limit_source} ({:.1}%): {level}",
                bytes(rss_bytes),
                bytes(limit_bytes),
                percent(rss_bytes, limit_bytes)
            ),
            Self::Cgroup {
                level,
                working_set_bytes,
                limit_bytes,
            } => write!(
                f,
                "cgroup working set {} of {} limit ({:.1}%): {level}",
                bytes(working_set_bytes),
                bytes(limit_bytes),
                percent(working_set_bytes, limit_bytes)
            ),
            Self::SystemAvailable {
                level,
                available_bytes,
                min_available_bytes,
            } => write!(
                f,
                "system available {} ({:.2}x the {} minimum): {level}",
                bytes(available_bytes),
                if min_available_bytes == 0 {
                    f64::INFINITY
                } else {
                    available_bytes as f64 / min_available_bytes as f64
                },
                bytes(min_available_bytes)
            ),
            Self::Psi { level, some_avg10 } => {
                write!(f, "psi some avg10 {some_avg10:.1}%: {level}")
            }
        }
    }
}

/// What listeners are told.
///
/// ```
/// use limited_allocator::PressureLevel;
/// use limited_allocator::monitor::MonitorEvent;
/// let e = MonitorEvent::LevelChanged {
///     from: PressureLevel::Low,
///     to: PressureLevel::High,
///     reasons: vec![],
/// };
/// assert_eq!(e.to_string(), "memory pressure low -> high");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MonitorEvent {
    /// The combined level changed. `reasons` are the signals at the new level.
    LevelChanged {
        /// The level before.
        from: PressureLevel,
        /// The level now.
        to: PressureLevel,
        /// The signals at level `to`, highest first.
        reasons: Vec<Reason>,
    },
    /// A sustained upward trend was found. See [`crate::leak::TrendDetector`].
    LeakSuspected(LeakSuspected),
}

impl fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LevelChanged { from, to, reasons } => {
                write!(f, "memory pressure {from} -> {to}")?;
                for (i, r) in reasons.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Self::LeakSuspected(leak) => write!(f, "{leak}"),
        }
    }
}

/// A monitor configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The interval must be above zero.
    #[error("monitor interval must be above zero (got {interval_ns} ns)")]
    ZeroInterval {
        /// The interval that was given, in nanoseconds.
        interval_ns: u128,
    },
    /// The hysteresis margin must be a number of percentage points in `0..=100`.
    #[error("hysteresis margin {margin} is not within 0..=100 percentage points")]
    BadMargin {
        /// The margin that was given.
        margin: f64,
    },
    /// The leak detection config cannot work.
    #[error(transparent)]
    Leak(#[from] crate::leak::LeakConfigError),
    /// The operating system refused to start the monitor thread.
    #[error("could not start the memory-monitor thread: {0}")]
    Spawn(#[from] std::io::Error),
}
