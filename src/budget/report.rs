//! The one line the allocator writes when it refuses, so an abort that follows is explained.
//!
//! Runs inside the allocator: it formats into a stack buffer with `core::fmt` (which does
//! not allocate) and hands the bytes to `write(2)` directly, bypassing `std::io::stderr()`
//! and its lock.
//!
//! Lines are rate-limited process-wide by a token bucket: a burst of [`BURST`] lines may go
//! out at once, then one per second, and a quiet second earns one line back (the generic
//! cell rate algorithm, one compare-and-swap on one word). A burst rather than a strict one
//! line per second because the refusal that matters most usually comes right after another:
//! a program handles a fallible refusal (a smaller chunk, a refused query) and a moment
//! later an infallible allocation is refused and the process aborts. With one line per
//! second that last, fatal line was swallowed; with the burst it is lost only when more
//! than `BURST` refusals came within the last seconds, and then the next line says how many
//! were not shown. The line of a panicking thread whose overdraft is spent (the process
//! aborts right after it) is never rate-limited.

use crate::error::Exact;
use core::cell::Cell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Lines that may go out at once before the rate limit applies.
pub(crate) const BURST: u64 = 8;
/// The steady rate: one line per this many milliseconds.
const INTERVAL_MS: u64 = 1000;

/// The bucket's theoretical arrival time (milliseconds on the monotonic clock): a line may
/// go out while it is at most `(BURST - 1) * INTERVAL_MS` ahead of now.
static NEXT_LINE_MS: AtomicU64 = AtomicU64::new(0);
/// Refusals that fell inside the rate limit since the last line.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The full new size of the `realloc` whose growth this thread is charging on the slow
    /// path (0 otherwise), so that its refusal line can name it. Set only around the slow
    /// path, so the fast path pays nothing for it; `const` and without a destructor, so it
    /// never allocates or registers anything.
    static GROWING_TO: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` (a realloc's slow-path charge) with `new_size` as the size a refusal names.
#[inline]
pub(crate) fn growing_to<R>(new_size: usize, f: impl FnOnce() -> R) -> R {
    let _ = GROWING_TO.try_with(|c| c.set(new_size));
    let r = f();
    let _ = GROWING_TO.try_with(|c| c.set(0));
    r
}

/// What was refused, for the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// An allocation (or a realloc's growth: the line then names the new size too).
    Alloc,
    /// An allocation inside an entered reservation with `Overflow::Refuse`, past its own
    /// headroom; the allocator's budget may have had room.
    Reservation { headroom: usize, used: usize },
}

/// Writes `limited-allocator: refused ...` to stderr unless the rate limit holds it back.
pub(crate) fn refusal(requested: usize, current: usize, limit: usize, what: Refused) {
    if !take_token(&NEXT_LINE_MS, monotonic_ms()) {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    let growing_to = GROWING_TO.try_with(Cell::get).unwrap_or(0);
    let mut line = StackLine::new();
    let facts = Facts {
        requested,
        growing_to,
        current,
        limit,
        what,
        suppressed,
    };
    // Formatting only fails when the line is full; a cut line is still worth writing.
    let _ = write_refusal(&mut line, &facts);
    line.finish_and_write();
}

/// The line of a panicking thread whose emergency overdraft is spent; never rate-limited
/// (the process aborts right after it).
pub(crate) fn overdraft_spent(requested: usize, current: usize, limit: usize, allowance: usize) {
    let mut line = StackLine::new();
    let _ = write!(
        line,
        "limited-allocator: refused {} to a panicking thread: {} in use, the {} limit and its \
         {} emergency overdraft are spent; aborting rather than hang the panic",
        Exact(requested),
        Exact(current),
        Exact(limit),
        Exact(allowance),
    );
    line.finish_and_write();
    // Under output capture the panic's own message went to a buffer the abort loses.
    crate::panic_hook::write_kept();
}

/// The token bucket (GCRA): takes one line's token at `now` if there is one.
fn take_token(bucket: &AtomicU64, now: u64) -> bool {
    let burst_ahead = (BURST - 1) * INTERVAL_MS;
    let mut next = bucket.load(Ordering::Relaxed);
    loop {
        if next > now.saturating_add(burst_ahead) {
            return false;
        }
        let later = next.max(now) + INTERVAL_MS;
        // Relaxed: the word orders nothing but itself; a lost race only retries.
        match bucket.compare_exchange_weak(next, later, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => next = seen,
        }
    }
}

/// What a refusal line says.
struct Facts {
    requested: usize,
    /// A realloc's full new size (0 for other requests).
    growing_to: usize,
    current: usize,
    limit: usize,
    what: Refused,
    /// Lines held back by the rate limit since the last one.
    suppressed: u64,
}

/// `limited-allocator: refused <request><whose budget, its numbers>[; N earlier refusals
/// not shown]`.
fn write_refusal(out: &mut StackLine, f: &Facts) -> fmt::Result {
    write!(out, "limited-allocator: refused {}", Exact(f.requested))?;
    // A realloc names its full new size too.
    if f.growing_to > f.requested {
        write!(out, " (the growth of a realloc to {})", Exact(f.growing_to))?;
    }
    match f.what {
        Refused::Alloc => write!(
            out,
            ": {} of the {} limit in use ({:.1}%), {} available",
            Exact(f.current),
            Exact(f.limit),
            crate::error::percent(f.current, f.limit),
            Exact(f.limit.saturating_sub(f.current)),
        )?,
        Refused::Reservation { headroom, used } => write!(
            out,
            " by the entered reservation's own budget (Overflow::Refuse): {} headroom left, \
             {} used",
            Exact(headroom),
            Exact(used),
        )?,
    }
    if f.suppressed > 0 {
        write!(out, "; {} earlier refusals not shown", f.suppressed)?;
    }
    Ok(())
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on
    // the platforms libc exposes it for. On failure `ts` stays zero, which only weakens
    // the rate limit.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000
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
        crate::stderr::write_all(&self.buf[..=end]);
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

    /// An allocation's refusal at 1900 of 2048 bytes.
    fn alloc(requested: usize, growing_to: usize, suppressed: u64) -> Facts {
        Facts {
            requested,
            growing_to,
            current: 1900,
            limit: 2048,
            what: Refused::Alloc,
            suppressed,
        }
    }

    #[test]
    fn line_names_the_numbers() {
        let mut line = StackLine::new();
        write_refusal(&mut line, &alloc(4096, 0, 3)).unwrap();
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "limited-allocator: refused 4096 bytes: 1900 bytes of the 2048 bytes limit in use \
             (92.8%), 148 bytes available; 3 earlier refusals not shown"
        );
    }

    #[test]
    fn a_realloc_names_its_new_size_and_a_reservation_its_budget() {
        let mut line = StackLine::new();
        write_refusal(&mut line, &alloc(3000, 4096, 0)).unwrap();
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.starts_with(
                "limited-allocator: refused 3000 bytes (the growth of a realloc to 4096 bytes): \
                 1900 bytes"
            ),
            "{text}"
        );
        let mut line = StackLine::new();
        let in_reservation = Facts {
            what: Refused::Reservation {
                headroom: 200,
                used: 800,
            },
            ..alloc(300, 0, 0)
        };
        write_refusal(&mut line, &in_reservation).unwrap();
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "limited-allocator: refused 300 bytes by the entered reservation's own budget \
             (Overflow::Refuse): 200 bytes headroom left, 800 bytes used"
        );
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_line_a_second() {
        let bucket = AtomicU64::new(0);
        let start = 10_000_000;
        let granted = (0..20).filter(|_| take_token(&bucket, start)).count() as u64;
        assert_eq!(granted, BURST);
        assert!(
            !take_token(&bucket, start + 999),
            "no token back within the second"
        );
        assert!(
            take_token(&bucket, start + 1000),
            "a quiet second earns one line"
        );
        assert!(!take_token(&bucket, start + 1000));
        // After a long quiet spell the whole burst is back, never more.
        let later = start + 3_600_000;
        let granted = (0..20).filter(|_| take_token(&bucket, later)).count() as u64;
        assert_eq!(granted, BURST);
    }

    #[test]
    fn overlong_lines_are_cut_not_grown() {
        let mut line = StackLine::new();
        let long = "x".repeat(1000);
        assert!(line.write_str(&long).is_err());
        assert_eq!(line.len, 319);
    }
}
