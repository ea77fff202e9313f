//! A copy of the message of the panic under way, for the line that explains an abort.
//!
//! At an exhausted limit a panicking thread draws on the emergency overdraft; when even
//! that is spent (a cold backtrace symbolizer can need tens of MiB), the allocator writes
//! its line and aborts. Without output capture the panic's message went to stderr before
//! the backtrace and survives. Under libtest's capture it sits in libtest's buffer, which
//! only reaches the terminal after the test: the abort loses it. So a panic hook chained
//! in front of the one in place keeps a copy of the message (its first [`KEPT_BYTES`]
//! bytes, in a static buffer: nothing is allocated) while the previous hook runs, and the
//! allocator's abort line is followed by that copy.
//!
//! On Linux the hook is chained at load time (an ELF constructor, before `main`), so a
//! program gets it without a call; [`keep_messages`] chains it again after a hook of the
//! program's own, and elsewhere. Only one panic is kept at a time: a second thread panicking
//! at once is not copied (its message takes its normal way).

use core::fmt::{self, Write};
use core::sync::atomic::{
    AtomicBool, AtomicU8, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// The bytes of a message kept: a message and its location fit in far less.
pub const KEPT_BYTES: usize = 1024;

/// One kept message. Bytes are atomics so that a thread reading while another keeps its
/// own panic reads a torn line, never undefined behaviour.
struct Kept {
    /// Taken by the hook that keeps its panic, for as long as the previous hook runs.
    busy: AtomicBool,
    /// Bytes kept; 0 while no panic's hook is under way.
    len: AtomicUsize,
    bytes: [AtomicU8; KEPT_BYTES],
}

static KEPT: Kept = Kept {
    busy: AtomicBool::new(false),
    len: AtomicUsize::new(0),
    bytes: [const { AtomicU8::new(0) }; KEPT_BYTES],
};

/// Writes into [`KEPT`] from `len` on, cutting what does not fit.
struct KeptWriter {
    len: usize,
}

impl Write for KeptWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let Some(slot) = KEPT.bytes.get(self.len) else {
                return Err(fmt::Error);
            };
            slot.store(b, Relaxed);
            self.len += 1;
        }
        Ok(())
    }
}

/// Chains the message-keeping hook in front of the panic hook in place now (see the
/// [module docs](self)). Call it after setting a hook of your own; on Linux it is already
/// chained in front of std's default hook at load time. Calling it again adds a link that
/// finds the copy taken and passes on.
///
/// ```
/// limited_allocator::panic_hook::keep_messages();
/// let caught = std::panic::catch_unwind(|| panic!("kept while the hook runs"));
/// assert!(caught.is_err());
/// ```
pub fn keep_messages() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Acquire: pairs with the Release that ended the last keeper's hold, so its clearing
        // of `len` is seen before this one writes.
        let mine = KEPT
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok();
        if mine {
            let mut w = KeptWriter { len: 0 };
            let _ = write!(w, "{info}");
            // Release: pairs with the Acquire in `write_kept`, which then reads these bytes.
            KEPT.len.store(w.len, Release);
        }
        previous(info);
        if mine {
            KEPT.len.store(0, Relaxed);
            // Release: pairs with the next keeper's Acquire.
            KEPT.busy.store(false, Release);
        }
    }));
}

/// Writes the message of the panic under way, if a hook kept one, as a line after the
/// allocator's abort line. Never allocates (used on the way to `abort`).
pub(crate) fn write_kept() {
    // Acquire: pairs with the Release after the bytes were written.
    let len = KEPT.len.load(Acquire).min(KEPT_BYTES);
    if len == 0 {
        return;
    }
    const HEAD: &[u8] = b"limited-allocator: the panic under way was: ";
    let mut line = [0u8; HEAD.len() + KEPT_BYTES + 1];
    line[..HEAD.len()].copy_from_slice(HEAD);
    for (out, b) in line[HEAD.len()..].iter_mut().zip(&KEPT.bytes[..len]) {
        *out = b.load(Relaxed);
    }
    line[HEAD.len() + len] = b'\n';
    crate::stderr::write_all(&line[..=HEAD.len() + len]);
}

/// The ELF constructor that chains the hook at load time, before `main`, with no other
/// thread running (see the module docs).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static KEEP_CONSTRUCTOR: extern "C" fn() = {
    extern "C" fn keep_at_load() {
        // A panic cannot cross this `extern "C"` boundary; `keep_messages` does not panic
        // outside a panicking thread, and none panics before `main`.
        keep_messages();
    }
    keep_at_load
};
