//! The one line the allocator writes when it refuses, so an abort that follows is explained.
//!
//! Runs inside the allocator: it formats into a stack buffer with `core::fmt` (which does
//! not allocate) and hands the bytes to `write(2)` directly, bypassing `std::io::stderr()`
//! and its lock. Lines are rate-limited process-wide to one per second; the number of
//! refusals not reported in between is added to the next line.

use crate::error::Exact;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Seconds (monotonic clock) of the last line written, plus one; 0 = never.
static LAST_LINE_SECS: AtomicU64 = AtomicU64::new(0);
/// Refusals that fell inside the rate limit since the last line.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Writes `limited-allocator: refused ...` to stderr unless a line went out this second.
pub(crate) fn refusal(requested: usize, current: usize, limit: usize) {
    let now = monotonic_secs().saturating_add(1);
    let last = LAST_LINE_SECS.load(Ordering::Relaxed);
    if last == now
        || LAST_LINE_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    let mut line = StackLine::new();
    // Formatting only fails when the line is full; a cut line is still worth writing.
    let _ = write_refusal(&mut line, requested, current, limit, suppressed);
    line.finish_and_write();
}

fn write_refusal(
    out: &mut StackLine,
    requested: usize,
    current: usize,
    limit: usize,
    suppressed: u64,
) -> fmt::Result {
    write!(
        out,
        "limited-allocator: refused {}: {} of the {} limit in use ({:.1}%), {} available",
        Exact(requested),
        Exact(current),
        Exact(limit),
        crate::error::percent(current, limit),
        Exact(limit.saturating_sub(current)),
    )?;
    if suppressed > 0 {
        write!(out, "; {suppressed} earlier refusals not shown")?;
    }
    Ok(())
}

fn monotonic_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on
    // the platforms libc exposes it for. On failure `ts` stays zero, which only weakens
    // the rate limit.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64
}

/// A fixed-size line buffer on the stack; writes past its end are cut, never allocated.
struct StackLine {
    buf: [u8; 320],
    len: usize,
}

impl StackLine {
    fn new() -> Self {
        Self {
            buf: [0; 320],
            len: 0,
        }
    }

    fn finish_and_write(mut self) {
        let end = self.len.min(self.buf.len() - 1);
        self.buf[end] = b'\n';
        let mut bytes = &self.buf[..=end];
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a live, initialised slice; write(2) reads at most its length.
            let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return; // stderr closed or broken: nothing more we can do without allocating
            }
            bytes = &bytes[n as usize..];
        }
    }
}

impl Write for StackLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the newline.
        let room = self.buf.len() - 1 - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_names_the_numbers() {
        let mut line = StackLine::new();
        write_refusal(&mut line, 4096, 1900, 2048, 3).unwrap();
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "limited-allocator: refused 4096 bytes: 1900 bytes of the 2048 bytes limit in use \
             (92.8%), 148 bytes available; 3 earlier refusals not shown"
        );
    }

    #[test]
    fn overlong_lines_are_cut_not_grown() {
        let mut line = StackLine::new();
        let long = "x".repeat(1000);
        assert!(line.write_str(&long).is_err());
        assert_eq!(line.len, 319);
    }
}
