//! Byte sizes for people: parsing `512MiB` / `2GB` / `536870912`, and printing `1.5 GiB`.
//!
//! Both directions live here so the configuration parser and every error message agree on
//! what a unit means: `KiB`/`MiB`/`GiB`/`TiB` are powers of 1024, `KB`/`MB`/`GB`/`TB` powers
//! of 1000, matching what `ls -h`/`free` users and cloud consoles respectively expect.

use core::fmt;

/// Why a byte-size string could not be read. See [`parse_size`].
///
/// ```
/// use limited_allocator::config::{parse_size, SizeParseError};
/// assert_eq!(parse_size("3 furlongs"), Err(SizeParseError::UnknownUnit("furlongs".into())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeParseError {
    /// The string was empty or only white space.
    #[error("empty size")]
    Empty,
    /// The number part is not a non-negative decimal number.
    #[error("'{0}' is not a non-negative number")]
    BadNumber(String),
    /// The unit is not one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (any case).
    #[error("unknown unit '{0}' (expected B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")]
    UnknownUnit(String),
    /// The value does not fit in a `usize`.
    #[error("size overflows usize ({max} bytes is the most this platform can address)", max = usize::MAX)]
    Overflow,
}

const UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    // Short forms as written by `free -h`, docker (`512m`) and k8s (`2Gi`).
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
    ("ti", 1 << 40),
];

/// Parses a byte size: plain bytes (`536870912`), binary units (`512MiB`, `1.5 GiB`),
/// decimal units (`2GB`), case-insensitive, with white space allowed around and between.
///
/// Fractions are allowed with a unit (`1.5GiB`) and are rounded down to whole bytes.
///
/// ```
/// use limited_allocator::config::parse_size;
/// assert_eq!(parse_size("536870912"), Ok(536_870_912));
/// assert_eq!(parse_size("512MiB"), Ok(512 << 20));
/// assert_eq!(parse_size(" 2 gb "), Ok(2_000_000_000));
/// assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
/// assert!(parse_size("12 parsecs").is_err());
/// assert!(parse_size("-5MB").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<usize, SizeParseError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeParseError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (text[..split].trim(), text[split..].trim());
    if number.is_empty() {
        return Err(SizeParseError::BadNumber(text.to_string()));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        let lower = unit.to_ascii_lowercase();
        UNITS
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|&(_, m)| m)
            .ok_or_else(|| SizeParseError::UnknownUnit(unit.to_string()))?
    };
    let bytes = scale(number, multiplier)?;
    usize::try_from(bytes).map_err(|_| SizeParseError::Overflow)
}

/// `number * multiplier` in integer arithmetic, so `0.1GB` is exactly 100 000 000 bytes.
fn scale(number: &str, multiplier: u128) -> Result<u128, SizeParseError> {
    let bad = || SizeParseError::BadNumber(number.to_string());
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(bad());
    }
    if !whole
        .bytes()
        .chain(frac.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let digits = |s: &str| -> Result<u128, SizeParseError> {
        if s.is_empty() {
            return Ok(0);
        }
        s.parse::<u128>().map_err(|_| SizeParseError::Overflow)
    };
    let whole_bytes = digits(whole)?
        .checked_mul(multiplier)
        .ok_or(SizeParseError::Overflow)?;
    // Only as many fraction digits as can matter; u128 holds 10^38.
    let frac = &frac[..frac.len().min(30)];
    let frac_bytes = digits(frac)?
        .checked_mul(multiplier)
        .ok_or(SizeParseError::Overflow)?
        / 10u128.pow(frac.len() as u32);
    whole_bytes
        .checked_add(frac_bytes)
        .ok_or(SizeParseError::Overflow)
}

/// Displays a byte count for people: `512 bytes`, `1.5 KiB`, `3.0 GiB`.
///
/// Used by every error and report in this crate. Formatting never allocates, so it is also
/// used to write the refusal line from inside the allocator.
///
/// ```
/// use limited_allocator::ByteSize;
/// assert_eq!(ByteSize(300).to_string(), "300 bytes");
/// assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
/// assert_eq!(ByteSize(3 << 30).to_string(), "3.0 GiB");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub usize);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} bytes");
        }
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < NAMES.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", NAMES[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_family() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1b"), Ok(1));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4kb"), Ok(4000));
        assert_eq!(parse_size("3 TiB"), Ok(3 << 40));
        assert_eq!(parse_size("3TB"), Ok(3_000_000_000_000));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert_eq!(parse_size("0.1GB"), Ok(100_000_000));
        assert_eq!(parse_size(".5 KiB"), Ok(512));
    }

    #[test]
    fn rejects_garbage_with_the_offending_part() {
        assert_eq!(parse_size("  "), Err(SizeParseError::Empty));
        assert_eq!(
            parse_size("12 parsecs"),
            Err(SizeParseError::UnknownUnit("parsecs".into()))
        );
        assert_eq!(
            parse_size("-5MB"),
            Err(SizeParseError::BadNumber("-5MB".into()))
        );
        assert_eq!(
            parse_size("1.2.3"),
            Err(SizeParseError::BadNumber("1.2.3".into()))
        );
        assert_eq!(parse_size("."), Err(SizeParseError::BadNumber(".".into())));
        assert_eq!(
            parse_size("MiB"),
            Err(SizeParseError::BadNumber("MiB".into()))
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(
            parse_size("99999999999999999999999"),
            Err(SizeParseError::Overflow)
        );
        assert_eq!(parse_size("99999999 TiB"), Err(SizeParseError::Overflow));
        let max = usize::MAX.to_string();
        assert_eq!(parse_size(&max), Ok(usize::MAX));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(ByteSize(0).to_string(), "0 bytes");
        assert_eq!(ByteSize(1023).to_string(), "1023 bytes");
        assert_eq!(ByteSize(1024).to_string(), "1.0 KiB");
        assert_eq!(ByteSize(2 << 20).to_string(), "2.0 MiB");
        assert_eq!(ByteSize(usize::MAX).to_string(), "16.0 EiB");
    }
}
