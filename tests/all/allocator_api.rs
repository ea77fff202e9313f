//! `allocator_api2::alloc::Allocator` for `&LimitedAllocator`: single collections on their
//! own budget.
#![cfg(feature = "allocator-api2")]

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::vec::Vec as BVec;
use hashbrown::HashMap;
use std::alloc::Layout;
use std::ptr::NonNull;

use crate::common::*;

#[test]
fn a_hashbrown_map_draws_from_its_budget_and_gets_errors_past_it() {
    let budget = quiet(64 << 10);
    let mut map: HashMap<u64, u64, _, _> =
        HashMap::with_hasher_in(hashbrown::DefaultHashBuilder::default(), &budget);
    let mut inserted = 0u64;
    loop {
        if map.try_reserve(1).is_err() {
            break;
        }
        map.insert(inserted, inserted * 2);
        inserted += 1;
        assert!(inserted < 1_000_000, "the budget never refused");
    }
    assert!(inserted > 1000, "{inserted}");
    assert!(budget.allocated_bytes() > 0);
    assert!(budget.peak_bytes() <= budget.limit());
    assert!(budget.stats().refusals >= 1);
    // The rest of the program is unaffected: this Vec uses the global allocator.
    let unaffected = vec![0u8; 1 << 20];
    assert_eq!(unaffected.len(), 1 << 20);
    assert_eq!(map.get(&10), Some(&20));
    drop(map);
    assert_eq!(budget.allocated_bytes(), 0);
}

#[test]
fn hashbrown_new_in_reference() {
    let budget = quiet(1 << 20);
    let mut map = HashMap::new_in(&budget);
    for i in 0..1000u32 {
        map.insert(i, i);
    }
    let used = budget.allocated_bytes();
    assert!(used >= 1000 * 8, "{used}");
    map.clear();
    map.shrink_to_fit();
    assert_eq!(budget.allocated_bytes(), 0);
}

#[test]
fn a_vec_grows_and_shrinks_on_the_budget() {
    let budget = quiet(10_000);
    let mut v: BVec<u8, _> = BVec::new_in(&budget);
    assert_eq!(
        budget.allocated_bytes(),
        0,
        "an empty Vec allocates nothing"
    );
    v.try_reserve_exact(1000).unwrap();
    assert_eq!(budget.allocated_bytes(), 1000);
    v.extend(std::iter::repeat_n(7u8, 1000));
    v.try_reserve_exact(4000).unwrap(); // grow: realloc, charges the difference
    assert_eq!(budget.allocated_bytes(), 5000);
    assert!(v.iter().all(|&b| b == 7));
    let err = v.try_reserve_exact(20_000).unwrap_err();
    let _ = err; // a TryReserveError: the Vec is untouched
    assert_eq!((v.len(), budget.allocated_bytes()), (1000, 5000));
    v.shrink_to_fit(); // shrink
    assert_eq!(budget.allocated_bytes(), 1000);
    v.clear();
    v.shrink_to_fit(); // shrink to zero: deallocates
    assert_eq!(budget.allocated_bytes(), 0);
    let s = budget.stats();
    assert_eq!(s.allocations, s.deallocations);
}

#[test]
fn zero_sized_allocations_are_free_and_aligned() {
    let budget = quiet(0); // refuses every byte
    let layout = Layout::from_size_align(0, 64).unwrap();
    let by_ref = &budget; // the `Allocator` for `&LimitedAllocator`
    let block = by_ref.allocate(layout).unwrap();
    assert_eq!(block.len(), 0);
    assert_eq!(block.cast::<u8>().as_ptr() as usize % 64, 0);
    unsafe { by_ref.deallocate(block.cast(), layout) };
    let zst: BVec<(), _> = {
        let mut v = BVec::new_in(&budget);
        v.extend(std::iter::repeat_n((), 1000));
        v
    };
    assert_eq!(zst.len(), 1000);
    assert_eq!(budget.stats().allocations, 0);
    assert!(by_ref.allocate(Layout::new::<u8>()).is_err());
}

#[test]
fn grow_zeroed_shrink_and_alignment_changes_keep_contents() {
    let budget = quiet(1 << 20);
    let a = &budget;
    let small = Layout::from_size_align(16, 8).unwrap();
    let big = Layout::from_size_align(64, 8).unwrap();
    let big_aligned = Layout::from_size_align(128, 256).unwrap();
    unsafe {
        let p: NonNull<[u8]> = a.allocate(small).unwrap();
        let p = p.cast::<u8>();
        p.as_ptr().write_bytes(0xAB, 16);
        let g = a.grow_zeroed(p, small, big).unwrap().cast::<u8>();
        let bytes = std::slice::from_raw_parts(g.as_ptr(), 64);
        assert!(bytes[..16].iter().all(|&b| b == 0xAB));
        assert!(bytes[16..].iter().all(|&b| b == 0));
        assert_eq!(budget.allocated_bytes(), 64);
        // A new alignment: allocate, copy, free.
        let m = a.grow(g, big, big_aligned).unwrap().cast::<u8>();
        assert_eq!(m.as_ptr() as usize % 256, 0);
        assert_eq!(*m.as_ptr(), 0xAB);
        assert_eq!(budget.allocated_bytes(), 128);
        let s = a.shrink(m, big_aligned, small).unwrap().cast::<u8>();
        assert_eq!(*s.as_ptr().add(15), 0xAB);
        assert_eq!(budget.allocated_bytes(), 16);
        // Growing from a zero-sized block allocates; shrinking to zero frees.
        let zero = Layout::from_size_align(0, 8).unwrap();
        let z = a.shrink(s, small, zero).unwrap();
        assert_eq!((z.len(), budget.allocated_bytes()), (0, 0));
        let back = a.grow(z.cast(), zero, small).unwrap();
        assert_eq!(budget.allocated_bytes(), 16);
        a.deallocate(back.cast(), small);
    }
    assert_eq!(budget.allocated_bytes(), 0);
}

#[test]
fn a_refused_grow_leaves_the_block_valid() {
    let budget = quiet(100);
    let a = &budget;
    let small = Layout::from_size_align(50, 8).unwrap();
    let big = Layout::from_size_align(200, 8).unwrap();
    unsafe {
        let p = a.allocate(small).unwrap().cast::<u8>();
        p.as_ptr().write_bytes(1, 50);
        assert_eq!(a.grow(p, small, big), Err(AllocError));
        assert_eq!(*p.as_ptr().add(49), 1);
        assert_eq!(budget.allocated_bytes(), 50);
        // Also across an alignment change (the relocating path).
        let aligned = Layout::from_size_align(80, 64).unwrap();
        assert_eq!(a.grow(p, small, aligned), Err(AllocError));
        a.deallocate(p, small);
    }
    assert_eq!(budget.allocated_bytes(), 0);
}
