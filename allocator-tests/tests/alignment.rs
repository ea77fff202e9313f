//! Alignments up to 64 KiB are honoured through `std::alloc` with `LimitedAllocator` as the
//! global allocator (alloc, alloc_zeroed, realloc), and every block is charged exactly its
//! size.

use allocator_tests::{prepare_backtraces, Counts};
use limited_allocator::LimitedAllocator;
use std::alloc::{Layout, System};

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const SIZES: [usize; 6] = [1, 7, 100, 4096, 65_537, 300_000];

fn alignments() -> impl Iterator<Item = usize> {
    (0..=16).map(|shift| 1usize << shift) // 1 B ..= 64 KiB
}

/// One test per binary: the global counters see everything the process does (see the
/// crate docs), so the sub-cases run one after another here.
#[test]
fn alignment() {
    prepare_backtraces();
    alignments_up_to_64_kib_are_honoured_and_counted_exactly();
    aligned_requests_are_limited_by_their_size();
}

fn alignments_up_to_64_kib_are_honoured_and_counted_exactly() {
    let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(17 * SIZES.len());
    let before = Counts::of(&ALLOC);
    let mut charged = 0usize;
    for align in alignments() {
        for (k, &size) in SIZES.iter().enumerate() {
            let layout = Layout::from_size_align(size, align).unwrap();
            let zeroed = k % 2 == 0;
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe {
                if zeroed {
                    std::alloc::alloc_zeroed(layout)
                } else {
                    std::alloc::alloc(layout)
                }
            };
            assert!(!p.is_null(), "{layout:?} refused under no limit");
            assert_eq!(p as usize % align, 0, "{layout:?} misaligned at {p:p}");
            // SAFETY: `p` is a live block of `size` bytes.
            unsafe {
                if zeroed {
                    assert_eq!((*p, *p.add(size - 1)), (0, 0), "alloc_zeroed not zeroed");
                }
                p.add(size - 1).write(0x3C);
                p.write(0xC3); // last, so a 1-byte block holds it too
            }
            charged += size;
            blocks.push((p, layout));
        }
    }
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(d.bytes, charged as i128, "charged exactly the sizes: {d:?}");
    assert_eq!(d.allocs, blocks.len() as i128);

    // Grow and shrink every block by realloc: alignment kept, contents kept, charge exact.
    for (i, (p, layout)) in blocks.iter_mut().enumerate() {
        let new_size = if i % 2 == 0 {
            layout.size() * 3
        } else {
            1.max(layout.size() / 2)
        };
        // SAFETY: `*p` is live with `*layout`; `new_size` is non-zero and small.
        let q = unsafe { std::alloc::realloc(*p, *layout, new_size) };
        assert!(!q.is_null());
        assert_eq!(q as usize % layout.align(), 0, "realloc lost the alignment");
        // SAFETY: the first byte is kept by realloc.
        assert_eq!(unsafe { *q }, 0xC3);
        charged = charged - layout.size() + new_size;
        *p = q;
        *layout = Layout::from_size_align(new_size, layout.align()).unwrap();
    }
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(d.bytes, charged as i128, "{d:?}");
    assert_eq!(d.reallocs, blocks.len() as i128);

    for (p, layout) in blocks.drain(..) {
        // SAFETY: live, allocated with `layout`; freed once.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!((d.bytes, d.allocs - d.deallocs), (0, 0), "{d:?}");
}

/// A limit applies to the requested size however large the alignment: a 64 KiB-aligned
/// block that fits is granted, one byte more is refused.
fn aligned_requests_are_limited_by_their_size() {
    ALLOC.set_refusal_reporting(false);
    let layout = Layout::from_size_align(1 << 20, 1 << 16).unwrap();
    ALLOC.set_limit(ALLOC.allocated_bytes() + (1 << 20));
    let before = Counts::of(&ALLOC);
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    assert!(!p.is_null());
    assert_eq!(p as usize % (1 << 16), 0);
    let one = Layout::from_size_align(1, 1 << 16).unwrap();
    // SAFETY: non-zero size.
    let q = unsafe { std::alloc::alloc(one) };
    assert!(q.is_null(), "a byte past the limit was granted");
    let d = Counts::of(&ALLOC).since(&before);
    assert_eq!(
        (d.bytes, d.allocs, d.refusals, d.refused_bytes),
        (1 << 20, 1, 1, 1)
    );
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(p, layout) };
    ALLOC.set_limit(LimitedAllocator::UNLIMITED);
    ALLOC.set_refusal_reporting(true);
}
