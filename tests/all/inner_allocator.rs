//! A custom inner allocator: layouts are forwarded unchanged, and when the inner allocator
//! fails (returns null) within the limit, nothing stays charged and nothing is counted as a
//! refusal or as a successful operation.

use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// `System`, except that it fails every request for more than `fail_above` bytes, and
/// remembers the last layout it was asked for.
struct Flaky {
    fail_above: AtomicUsize,
    last_size: AtomicUsize,
    last_align: AtomicUsize,
}

impl Flaky {
    const fn new(fail_above: usize) -> Self {
        Self {
            fail_above: AtomicUsize::new(fail_above),
            last_size: AtomicUsize::new(0),
            last_align: AtomicUsize::new(0),
        }
    }

    fn note(&self, size: usize, align: usize) -> bool {
        self.last_size.store(size, SeqCst);
        self.last_align.store(align, SeqCst);
        size <= self.fail_above.load(SeqCst)
    }
}

// SAFETY: forwards to `System` with the caller's arguments unchanged, or returns null,
// which `GlobalAlloc` permits for any request.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.note(layout.size(), layout.align()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.note(layout.size(), layout.align()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout` (we only hand out System blocks).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.note(new_size, layout.align()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check_inner_failures(a: &LimitedAllocator<Flaky>) {
    let small = Layout::from_size_align(1000, 64).unwrap();
    let big = Layout::from_size_align(10_000, 8).unwrap();
    // SAFETY: non-zero sizes; every granted block is freed once with its layout.
    unsafe {
        let p = a.alloc(small);
        assert!(!p.is_null());
        assert_eq!(
            (
                a.inner().last_size.load(SeqCst),
                a.inner().last_align.load(SeqCst)
            ),
            (1000, 64),
            "the layout reaches the inner allocator unchanged"
        );
        assert!(a.alloc(big).is_null(), "the inner allocator failed it");
        assert!(a.alloc_zeroed(big).is_null());
        assert_eq!(
            a.allocated_bytes(),
            1000,
            "a failed inner allocation is not charged"
        );
        // A realloc the inner allocator fails leaves the old block intact and charged.
        p.write_bytes(9, 1000);
        assert!(a.realloc(p, small, 10_000).is_null());
        assert_eq!((a.allocated_bytes(), *p.add(999)), (1000, 9));
        let s = a.stats();
        assert_eq!(
            (s.allocations, s.reallocations, s.refusals, s.inner_failures),
            (1, 0, 0, 3),
            "{s:?}"
        );
        // Within what the inner allocator serves, everything works as usual.
        let q = a.realloc(p, small, 2000);
        assert!(!q.is_null());
        assert_eq!(a.allocated_bytes(), 2000);
        a.dealloc(q, Layout::from_size_align(2000, 64).unwrap());
    }
    let s = a.stats();
    assert_eq!(
        (
            s.current_bytes,
            s.allocations,
            s.deallocations,
            s.reallocations
        ),
        (0, 1, 1, 1),
        "{s:?}"
    );
    // The budget is charged before the inner allocator is asked, so a request it then
    // fails was briefly charged (10_000 on top of 1000): the peak may include it, never more.
    assert!(s.peak_bytes >= 2000 && s.peak_bytes <= 11_000, "{s:?}");
}

#[test]
fn inner_failures_are_not_charged_nor_counted_as_refusals_cached() {
    check_inner_failures(&LimitedAllocator::new(Flaky::new(4096), 1 << 20));
}

#[test]
fn inner_failures_are_not_charged_nor_counted_as_refusals_exact() {
    check_inner_failures(&LimitedAllocator::new_exact(Flaky::new(4096), 1 << 20));
}
