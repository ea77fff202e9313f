//! A hash join under a memory budget: estimate the hash table, reserve it before the join,
//! run the join inside the entered reservation, and fall back to a partitioned join when
//! the reservation is refused.
//!
//! Run: `cargo run --release --example arrow_join`

use arrow_array::{Int64Array, UInt32Array};
use arrow_buffer::MemoryPool;
use limited_allocator::{ByteSize, LimitedAllocator, Overflow};
use std::alloc::System;
use std::collections::HashMap;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const BUILD_ROWS: usize = 1_000_000;
const PROBE_ROWS: usize = 2_000_000;
/// Budget on top of what the process uses at start.
const BUDGET: usize = 96 << 20;
/// For the small allocations around the join (Arc headers, buffers' bookkeeping).
const SLACK: usize = 64 << 10;

/// Bytes of a `HashMap<i64, u32>` with room for `rows` entries, as hashbrown lays it out:
/// a power-of-two number of buckets at 7/8 load, each an entry plus one control byte.
fn table_bytes(rows: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    let buckets = if rows < 8 {
        if rows < 4 {
            4
        } else {
            8
        }
    } else {
        (rows * 8 / 7).next_power_of_two()
    };
    buckets * (size_of::<(i64, u32)>() + 1) + 16
}

/// The join's working memory: the table over the build side plus the two output index
/// vectors, sized for the worst case (every probe row matches).
fn estimate(build_rows: usize, probe_rows: usize) -> usize {
    table_bytes(build_rows) + probe_rows * 2 * size_of::<u32>() + SLACK
}

struct Joined {
    matches: usize,
    checksum: u64,
    peak_used: usize,
}

/// Joins the rows whose key falls in partition `part` of `parts` (all rows for 1 part)
/// inside an entered reservation of `bytes`. Err: the reservation was refused.
fn join_part(
    build: &Int64Array,
    probe: &Int64Array,
    parts: u64,
    part: u64,
    build_rows: usize,
    probe_rows: usize,
) -> Result<Joined, limited_allocator::LimitExceeded> {
    let in_part = |k: i64| (k as u64) % parts == part;
    let budget = ALLOC.try_reserve(estimate(build_rows, probe_rows))?;
    budget.set_overflow(Overflow::Refuse); // the join cannot take more than it was granted
    let (build_idx, probe_idx) = {
        let _inside = budget.enter();
        let mut table: HashMap<i64, u32> = HashMap::new();
        table
            .try_reserve(build_rows)
            .expect("covered by the reservation");
        for (i, &k) in build.values().iter().enumerate() {
            if in_part(k) {
                table.insert(k, i as u32);
            }
        }
        let mut build_idx: Vec<u32> = Vec::new();
        let mut probe_idx: Vec<u32> = Vec::new();
        build_idx
            .try_reserve_exact(probe_rows)
            .expect("covered by the reservation");
        probe_idx
            .try_reserve_exact(probe_rows)
            .expect("covered by the reservation");
        for (j, &k) in probe.values().iter().enumerate() {
            if in_part(k) {
                if let Some(&i) = table.get(&k) {
                    build_idx.push(i);
                    probe_idx.push(j as u32);
                }
            }
        }
        drop(table);
        (build_idx, probe_idx)
    };
    // The output as Arrow arrays (zero-copy from the vectors).
    let (left, right) = (UInt32Array::from(build_idx), UInt32Array::from(probe_idx));
    let checksum = left
        .values()
        .iter()
        .zip(right.values().iter())
        .map(|(&l, &r)| (l as u64) * 31 + r as u64)
        .sum();
    Ok(Joined {
        matches: left.len(),
        checksum,
        peak_used: budget.peak_used(),
    })
}

fn join(build: &Int64Array, probe: &Int64Array) -> (usize, u64) {
    let need = estimate(build.len(), probe.len());
    println!(
        "  estimate: hash table {} + output {} = {}; available {}",
        ByteSize(table_bytes(build.len())),
        ByteSize(probe.len() * 8),
        ByteSize(need),
        ByteSize(ALLOC.available_bytes())
    );
    match join_part(build, probe, 1, 0, build.len(), probe.len()) {
        Ok(j) => {
            println!(
                "  single pass: reserved {}, peak used {} ({:.1}% of the estimate), {} matches",
                ByteSize(need),
                ByteSize(j.peak_used),
                j.peak_used as f64 * 100.0 / need as f64,
                j.matches
            );
            (j.matches, j.checksum)
        }
        Err(refused) => {
            println!("  refused: {refused}");
            // Partition so that one partition's estimate fits in 3/4 of what is free.
            let room = ALLOC.available_bytes() / 4 * 3;
            let mut parts = 2u64;
            while estimate(build.len() / parts as usize, probe.len() / parts as usize) > room {
                parts *= 2;
            }
            let count = |a: &Int64Array, p: u64| {
                a.values()
                    .iter()
                    .filter(|&&k| (k as u64) % parts == p)
                    .count()
            };
            println!(
                "  partitioned: {parts} partitions of ~{} each (room {})",
                ByteSize(estimate(
                    build.len() / parts as usize,
                    probe.len() / parts as usize
                )),
                ByteSize(room)
            );
            let (mut matches, mut checksum) = (0, 0u64);
            for p in 0..parts {
                let (b, q) = (count(build, p), count(probe, p));
                let j = join_part(build, probe, parts, p, b, q)
                    .expect("a partition sized to fit was refused");
                println!(
                    "    partition {p}: {b} build rows, {q} probe rows, reserved {}, peak used {}, {} matches",
                    ByteSize(estimate(b, q)),
                    ByteSize(j.peak_used),
                    j.matches
                );
                matches += j.matches;
                checksum = checksum.wrapping_add(j.checksum);
            }
            (matches, checksum)
        }
    }
}

fn main() {
    ALLOC.set_refusal_reporting(false); // refusals are handled and printed below
    ALLOC.set_limit(ALLOC.allocated_bytes() + BUDGET);
    let build = Int64Array::from_iter_values((0..BUILD_ROWS as i64).map(|i| i * 3));
    let probe = Int64Array::from_iter_values(
        (0..PROBE_ROWS as i64).map(|i| (i * 7919) % (3 * BUILD_ROWS as i64)),
    );
    // The arrays' buffers are claimed in the pool: attribution only, since ALLOC is the
    // global allocator and already charged them.
    let before = ALLOC.allocated_bytes();
    build.values().inner().claim(&ALLOC);
    probe.values().inner().claim(&ALLOC);
    println!(
        "budget {}; arrays: build {} rows, probe {} rows; pool role {:?}, claimed {}, charge change from claiming {} bytes",
        ByteSize(ALLOC.limit()),
        build.len(),
        probe.len(),
        ALLOC.pool_role(),
        ByteSize(ALLOC.stats().pool_claimed_bytes),
        ALLOC.allocated_bytes() as isize - before as isize,
    );
    println!(
        "used {} of {} ({:?} pressure)",
        ByteSize(ALLOC.used()),
        ByteSize(ALLOC.capacity()),
        ALLOC.pressure_level()
    );

    println!("join 1: nothing else in memory");
    let first = join(&build, &probe);

    let cache = vec![1u8; 48 << 20]; // something else now holds half the budget
    println!(
        "join 2: a cache of {} is held (used {} of {})",
        ByteSize(cache.len()),
        ByteSize(ALLOC.used()),
        ByteSize(ALLOC.capacity())
    );
    let second = join(&build, &probe);
    assert_eq!(first, second, "both plans give the same join");
    println!(
        "same result both ways: {} matches, checksum {}; peak {} of {}, refusals {}",
        first.0,
        first.1,
        ByteSize(ALLOC.peak_bytes()),
        ByteSize(ALLOC.limit()),
        ALLOC.stats().refusals
    );
    drop(cache);
}
