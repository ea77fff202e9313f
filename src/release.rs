//! Handing freed memory back to the operating system.
//!
//! Freeing memory in Rust returns it to the C allocator, which often keeps it (in its arenas
//! and free lists) rather than returning it to the kernel: the budget goes down, RSS does
//! not. [`release_free_memory`] asks the C allocator to give what it holds back.

/// Asks the C allocator to return free memory to the operating system; true when it says it
/// released some.
///
/// On Linux with glibc this is `malloc_trim(0)`, which trims the top of the main heap and
/// releases whole free pages inside every arena. Elsewhere (musl, macOS, Windows, other
/// inner allocators such as mimalloc or jemalloc, which manage their own memory) it is a
/// documented no-op that returns false. It never touches the budget: freed bytes were
/// already given back to the [`LimitedAllocator`](crate::LimitedAllocator) when they were
/// freed. It can take milliseconds on a large heap: call it at Critical pressure, not per
/// allocation (the chunker calls it once per Critical check).
///
/// ```
/// let released: bool = limited_allocator::release_free_memory();
/// # let _ = released;
/// ```
pub fn release_free_memory() -> bool {
    imp::release()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub(super) fn release() -> bool {
        // SAFETY: `malloc_trim` takes no pointers and is thread-safe in glibc (it takes each
        // arena's lock in turn); 0 is a valid padding argument.
        unsafe { libc::malloc_trim(0) != 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn release() -> bool {
        false
    }
}
