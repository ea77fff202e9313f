//! The workloads: each runs `iters` iterations on the allocator `P` names and returns the
//! time taken.

use crate::allocators::Pick;
use crate::shims::{alloc_via, dealloc_via, Via};
use crate::xorshift::xorshift;
use std::alloc::Layout;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// 1024 small layouts, 16-256 bytes, align 8.
fn small_layouts() -> &'static [Layout; 1024] {
    static LAYOUTS: std::sync::OnceLock<[Layout; 1024]> = std::sync::OnceLock::new();
    LAYOUTS.get_or_init(|| {
        let mut next = xorshift(0x5eed);
        core::array::from_fn(|_| {
            let size = 16 + (next() % 241) as usize;
            Layout::from_size_align(size, 8).unwrap()
        })
    })
}

/// `iters` alloc+free pairs of 16-256 bytes.
fn pairs<P: Pick>(iters: u64) {
    let layouts = small_layouts();
    for i in 0..iters {
        let layout = layouts[i as usize & 1023];
        let p = alloc_via::<P>(layout);
        assert!(!p.is_null());
        // SAFETY: `p` is a live block of `P` with `layout`, freed once.
        unsafe { dealloc_via::<P>(black_box(p), layout) };
    }
}

pub(crate) fn small_pairs_1t<P: Pick>(iters: u64) -> Duration {
    let start = Instant::now();
    pairs::<P>(iters);
    start.elapsed()
}

/// The same pairs on this thread and a second one at once; wall time until both finish.
pub(crate) fn small_pairs_2t<P: Pick>(iters: u64) -> Duration {
    let ready = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            ready.wait();
            pairs::<P>(iters);
        });
        ready.wait();
        let start = Instant::now();
        pairs::<P>(iters);
        other.join().unwrap();
        start.elapsed()
    })
}

/// A `Vec<u64>` grown by `push` to 1 MiB (17 doubling reallocations), then dropped.
/// (Pushing, not appending slices from the stack: a slice copy's speed depends on whether
/// source and destination alias modulo 4 KiB, which differs between allocators' addresses
/// and made this workload bimodal.)
pub(crate) fn vec_growth<P: Pick>(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut v = allocator_api2::vec::Vec::new_in(Via::<P>::NEW);
        for i in 0..(1u64 << 17) {
            v.push(i);
        }
        black_box(&v);
    }
    start.elapsed()
}

/// Blocks of 4 KiB-1 MiB (log-uniform), 16 live at a time: each iteration frees the oldest
/// and allocates a new one.
pub(crate) fn mixed_large<P: Pick>(iters: u64) -> Duration {
    const LIVE: usize = 16;
    let mut next = xorshift(0xb16);
    let layouts: Vec<Layout> = (0..256)
        .map(|_| {
            let shift = 12 + next() % 9; // 4 KiB ..= 1 MiB
            let size = (1usize << shift) + (next() as usize % (1usize << shift));
            Layout::from_size_align(size.min(1 << 20), 16).unwrap()
        })
        .collect();
    let mut live: [(*mut u8, Layout); LIVE] = [(core::ptr::null_mut(), layouts[0]); LIVE];
    let start = Instant::now();
    for i in 0..iters as usize {
        let slot = &mut live[i % LIVE];
        if !slot.0.is_null() {
            // SAFETY: a live block of `P` with this layout, freed once.
            unsafe { dealloc_via::<P>(slot.0, slot.1) };
        }
        let layout = layouts[i % layouts.len()];
        let p = alloc_via::<P>(layout);
        assert!(!p.is_null());
        *slot = (black_box(p), layout);
    }
    for (p, layout) in live {
        if !p.is_null() {
            // SAFETY: as above.
            unsafe { dealloc_via::<P>(p, layout) };
        }
    }
    start.elapsed()
}

/// A hash map of 200 000 byte-string keys, built and dropped, all in the allocator.
pub(crate) fn hashmap_200k<P: Pick>(iters: u64) -> Duration {
    type Key<P> = allocator_api2::vec::Vec<u8, Via<P>>;
    let start = Instant::now();
    for _ in 0..iters {
        let mut map: hashbrown::HashMap<Key<P>, u32, hashbrown::DefaultHashBuilder, Via<P>> =
            hashbrown::HashMap::with_hasher_in(Default::default(), Via::NEW);
        for i in 0..200_000u32 {
            let mut digits = [0u8; 10];
            let mut n = i;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let mut key = Key::with_capacity_in(4 + digits.len() - at, Via::NEW);
            key.extend_from_slice(b"key-");
            key.extend_from_slice(&digits[at..]);
            map.insert(key, i);
        }
        black_box(&map);
    }
    start.elapsed()
}

const BLOCKS: usize = 100_000;

/// 100 000 small blocks allocated, then freed in a random order.
pub(crate) fn random_free<P: Pick>(iters: u64) -> Duration {
    let layouts = small_layouts();
    let mut order: Vec<usize> = (0..BLOCKS).collect();
    let mut next = xorshift(0xf7ee);
    for i in (1..BLOCKS).rev() {
        order.swap(i, next() as usize % (i + 1));
    }
    let mut ptrs = vec![core::ptr::null_mut::<u8>(); BLOCKS];
    let start = Instant::now();
    for _ in 0..iters {
        for (i, p) in ptrs.iter_mut().enumerate() {
            *p = alloc_via::<P>(layouts[i & 1023]);
            assert!(!p.is_null());
        }
        for &i in &order {
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe { dealloc_via::<P>(ptrs[i], layouts[i & 1023]) };
        }
    }
    start.elapsed()
}
