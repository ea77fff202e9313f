//! The one pseudo-random generator of the tests and benches (xorshift64, Marsaglia's
//! 13/7/17): deterministic, so a failing run replays from its seed. Test data only.
//!
//! Shared as a file, not a crate: `tests/common/mod.rs` declares it, and the overhead bench
//! and `allocator-tests` include it with `#[path]`.

/// A deterministic xorshift stream from `seed` (made odd, so the state is never zero).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
