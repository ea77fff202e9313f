//! The limit from the environment: `LIMITED_ALLOCATOR_LIMIT=512MiB` (or `2GB`, `536870912`,
//! `75%`).
//!
//! A percentage is of the cgroup memory limit when the process has one (that is what the
//! OOM killer enforces in a container), otherwise of physical memory.

use crate::sampler::read_cgroup_memory;
pub use crate::units::{parse_size, ByteSize, SizeParseError};
use std::path::Path;

/// The environment variable read by [`limit_from_env`].
///
/// ```
/// assert_eq!(limited_allocator::config::LIMIT_ENV_VAR, "LIMITED_ALLOCATOR_LIMIT");
/// ```
pub const LIMIT_ENV_VAR: &str = "LIMITED_ALLOCATOR_LIMIT";

/// A configuration value that cannot be used. The text names the variable and quotes the
/// value, so the fix is obvious from a log line.
///
/// ```
/// use limited_allocator::config::{limit_from_var, ConfigError};
/// std::env::set_var("DOC_LIMIT", "150%");
/// let err = limit_from_var("DOC_LIMIT").unwrap_err();
/// assert!(matches!(err, ConfigError::PercentOutOfRange { .. }));
/// assert_eq!(
///     err.to_string(),
///     "DOC_LIMIT=\"150%\": a percentage must be above 0 and at most 100"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value is not a size or a percentage.
    #[error(
        "{var}={value:?} is not a memory size: {reason} (examples: 536870912, 512MiB, 2GB, 75%)"
    )]
    InvalidSize {
        /// The variable's name.
        var: String,
        /// The value as found.
        value: String,
        /// What is wrong with it.
        reason: SizeParseError,
    },
    /// A percentage outside `0 < N <= 100`.
    #[error("{var}={value:?}: a percentage must be above 0 and at most 100")]
    PercentOutOfRange {
        /// The variable's name.
        var: String,
        /// The value as found.
        value: String,
    },
    /// A limit of zero bytes would refuse every allocation, including the ones `main` needs.
    #[error("{var}={value:?}: a limit of 0 bytes would refuse every allocation")]
    Zero {
        /// The variable's name.
        var: String,
        /// The value as found.
        value: String,
    },
    /// A percentage was asked for but neither a cgroup limit nor physical memory is known.
    #[error("{var}={value:?}: no cgroup memory limit and physical memory size unknown")]
    NoBaseForPercent {
        /// The variable's name.
        var: String,
        /// The value as found.
        value: String,
    },
    /// The variable is set but is not valid Unicode.
    #[error("{var} is set but is not valid UTF-8: {value:?}")]
    NotUnicode {
        /// The variable's name.
        var: String,
        /// The value, lossily converted.
        value: String,
    },
}

/// Reads the limit from `LIMITED_ALLOCATOR_LIMIT`. `Ok(None)` when it is unset.
///
/// Accepts plain bytes, `KiB/MiB/GiB/TiB` (1024-based), `KB/MB/GB/TB` (1000-based), any
/// case, spaces allowed, or `N%` with `0 < N <= 100` of the cgroup limit (else of physical
/// memory). Everything else, including `0`, is a [`ConfigError`].
///
/// The usual pattern: the allocator starts unlimited in a `static` (a `const fn` cannot read
/// the environment), and `main` applies the configured limit first thing.
///
/// ```
/// use limited_allocator::{limit_from_env, LimitedAllocator};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);
///
/// fn main() -> Result<(), limited_allocator::config::ConfigError> {
///     # std::env::set_var("LIMITED_ALLOCATOR_LIMIT", "512MiB");
///     let limit = limit_from_env()?.unwrap_or(1 << 30); // default: 1 GiB
///     ALLOC.set_limit(limit);
///     assert_eq!(ALLOC.limit(), 512 << 20);
///     Ok(())
/// }
/// ```
pub fn limit_from_env() -> Result<Option<usize>, ConfigError> {
    limit_from_var(LIMIT_ENV_VAR)
}

/// Like [`limit_from_env`], for a variable of your choosing.
///
/// ```
/// std::env::set_var("MY_SERVICE_MEMORY", "2 GB");
/// assert_eq!(limited_allocator::config::limit_from_var("MY_SERVICE_MEMORY"), Ok(Some(2_000_000_000)));
/// std::env::set_var("MY_SERVICE_MEMORY", "lots");
/// let err = limited_allocator::config::limit_from_var("MY_SERVICE_MEMORY").unwrap_err();
/// assert!(err.to_string().starts_with("MY_SERVICE_MEMORY=\"lots\" is not a memory size"));
/// ```
pub fn limit_from_var(var: &str) -> Result<Option<usize>, ConfigError> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(ConfigError::NotUnicode {
            var: var.to_string(),
            value: raw.to_string_lossy().into_owned(),
        }),
        Ok(value) => parse_limit(var, &value, &SystemMemory::read(Path::new("/"))).map(Some),
    }
}

/// The sizes a percentage can be taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SystemMemory {
    pub cgroup_limit: Option<u64>,
    pub physical: Option<u64>,
}

impl SystemMemory {
    pub(crate) fn read(root: &Path) -> Self {
        Self {
            cgroup_limit: read_cgroup_memory(root).and_then(|c| c.limit_bytes),
            physical: physical_memory(),
        }
    }

    fn percent_base(&self) -> Option<u64> {
        self.cgroup_limit.or(self.physical)
    }
}

/// Total physical memory from `sysconf`, `None` where it is not reported.
pub(crate) fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration; these names are valid on every
    // platform libc exposes them for, and errors come back as -1.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return None;
    }
    (pages as u64).checked_mul(page_size as u64)
}

/// Parses one value of the limit variable; `memory` supplies the base for percentages.
pub(crate) fn parse_limit(
    var: &str,
    value: &str,
    memory: &SystemMemory,
) -> Result<usize, ConfigError> {
    let named = |make: fn(String, String) -> ConfigError| make(var.to_string(), value.to_string());
    let trimmed = value.trim();
    let bytes = if let Some(number) = trimmed.strip_suffix('%') {
        let percent: f64 = number
            .trim()
            .parse()
            .map_err(|_| ConfigError::InvalidSize {
                var: var.to_string(),
                value: value.to_string(),
                reason: SizeParseError::BadNumber(number.trim().to_string()),
            })?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(named(|var, value| ConfigError::PercentOutOfRange {
                var,
                value,
            }));
        }
        let base = memory
            .percent_base()
            .ok_or_else(|| named(|var, value| ConfigError::NoBaseForPercent { var, value }))?;
        let bytes = (base as f64 * percent / 100.0) as u64;
        usize::try_from(bytes).unwrap_or(usize::MAX)
    } else {
        parse_size(trimmed).map_err(|reason| ConfigError::InvalidSize {
            var: var.to_string(),
            value: value.to_string(),
            reason,
        })?
    };
    if bytes == 0 {
        return Err(named(|var, value| ConfigError::Zero { var, value }));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: SystemMemory = SystemMemory {
        cgroup_limit: Some(2 << 30),
        physical: Some(16 << 30),
    };
    const NO_CGROUP: SystemMemory = SystemMemory {
        cgroup_limit: None,
        physical: Some(16 << 30),
    };

    fn parse(value: &str) -> Result<usize, ConfigError> {
        parse_limit(LIMIT_ENV_VAR, value, &MEM)
    }

    #[test]
    fn sizes_in_every_spelling() {
        assert_eq!(parse("536870912"), Ok(536_870_912));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("512 mib"), Ok(512 << 20));
        assert_eq!(parse("2GB"), Ok(2_000_000_000));
        assert_eq!(parse(" 1 TiB "), Ok(1 << 40));
    }

    #[test]
    fn percent_is_of_the_cgroup_limit_else_physical() {
        assert_eq!(parse("75%"), Ok(3 << 29));
        assert_eq!(parse("100 %"), Ok(2 << 30));
        assert_eq!(parse_limit(LIMIT_ENV_VAR, "50%", &NO_CGROUP), Ok(8 << 30));
        let none = SystemMemory {
            cgroup_limit: None,
            physical: None,
        };
        assert!(matches!(
            parse_limit(LIMIT_ENV_VAR, "50%", &none),
            Err(ConfigError::NoBaseForPercent { .. })
        ));
    }

    #[test]
    fn bad_values_name_the_variable_and_quote_the_value() {
        for bad in ["", "lots", "-1", "-5MB", "12 parsecs", "1.2.3GB", "abc%"] {
            let err = parse(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("LIMITED_ALLOCATOR_LIMIT={bad:?}")),
                "{text}"
            );
            assert!(matches!(err, ConfigError::InvalidSize { .. }), "{err:?}");
        }
        for bad in ["0%", "150%", "-5%", "NaN%"] {
            assert!(
                matches!(parse(bad), Err(ConfigError::PercentOutOfRange { .. })),
                "{bad}"
            );
        }
        assert!(matches!(parse("0"), Err(ConfigError::Zero { .. })));
        assert!(matches!(parse("0 GiB"), Err(ConfigError::Zero { .. })));
        assert!(matches!(
            parse("999999999999 TiB"),
            Err(ConfigError::InvalidSize {
                reason: SizeParseError::Overflow,
                ..
            })
        ));
    }

    #[test]
    fn physical_memory_is_known_here() {
        assert!(physical_memory().unwrap() > 64 << 20);
    }
}
