//! Writing to stderr without allocating or locking: the allocator's lines go straight to
//! file descriptor 2, since `std::io::stderr()` may allocate and takes a lock.

/// Writes all of `bytes` to fd 2, giving up quietly if stderr is closed or broken.
pub(crate) fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live, initialised slice; write(2) reads at most its length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return; // nothing more can be done without allocating
        }
        bytes = &bytes[n as usize..];
    }
}
