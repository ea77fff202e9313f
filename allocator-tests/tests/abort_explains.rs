//! An infallible allocation past the limit kills the process (Rust's `handle_alloc_error`
//! aborts), and the allocator's own line on stderr says why, naming the request and the
//! limit. Each case runs in a child process: the test binary re-executed with a role.

use allocator_tests::{child_role, run_child, ChildOutput};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const LIMIT: usize = 64 << 20;
const ASK: usize = 256 << 20;
/// The fatal request after handled refusals: another size than theirs.
const FATAL: usize = 200 << 20;
/// What the line says about the limit (`Exact` formatting: bytes, then the human form).
const LIMIT_TEXT: &str = "of the 67108864 bytes (64.0 MiB) limit";

/// The child side: do the fatal thing; reaching the end is a failure the parent sees.
fn child(role: &str) {
    match role {
        "vec" => {
            ALLOC.set_limit(LIMIT);
            let v = vec![0u8; ASK]; // alloc_zeroed, refused: aborts here
            black_box(&v);
        }
        "quiet" => {
            ALLOC.set_refusal_reporting(false);
            ALLOC.set_limit(LIMIT);
            let v = vec![0u8; ASK];
            black_box(&v);
        }
        "realloc" => {
            let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
            v.push(1);
            ALLOC.set_limit(LIMIT);
            v.reserve_exact(ASK); // realloc from 1 MiB to ASK + 1 bytes, refused
            black_box(&v);
        }
        "handled-then-fatal" => {
            ALLOC.set_limit(LIMIT);
            // A few fallible refusals the program handles (it would try smaller chunks)...
            for _ in 0..3 {
                let mut v: Vec<u8> = Vec::new();
                assert!(v.try_reserve_exact(ASK).is_err());
            }
            // ...and a moment later an infallible one of another size that aborts.
            let v = vec![0u8; FATAL];
            black_box(&v);
        }
        "reservation" => {
            let r = ALLOC.try_reserve(4096).unwrap();
            r.set_overflow(limited_allocator::Overflow::Refuse);
            let before = ALLOC.stats().refusals;
            {
                let _inside = r.enter();
                let mut v: Vec<u8> = Vec::new();
                assert!(v.try_reserve_exact(8192).is_err());
            }
            let after = ALLOC.stats().refusals;
            println!(
                "RESERVATION refusals={} allocator={}",
                r.refusals(),
                after - before
            );
            return;
        }
        other => panic!("unknown child role {other:?}"),
    }
    println!("CHILD SURVIVED");
}

/// Runs `test` as a child in `role` and checks that it died of SIGABRT.
fn aborted(test: &str, role: &str) -> ChildOutput {
    let out = run_child(test, role, &[], &[]);
    assert!(!out.status.success(), "the child survived: {out:#?}");
    assert_eq!(
        out.signal(),
        Some(libc::SIGABRT),
        "the child did not abort: {out:#?}"
    );
    assert!(!out.stdout.contains("CHILD SURVIVED"), "{out:#?}");
    out
}

/// Our line, if the child wrote one.
fn our_line(out: &ChildOutput) -> Option<&str> {
    out.stderr
        .lines()
        .find(|l| l.starts_with("limited-allocator: refused"))
}

#[test]
fn infallible_vec_past_the_limit_aborts_and_the_line_names_the_limit() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = aborted(
        "infallible_vec_past_the_limit_aborts_and_the_line_names_the_limit",
        "vec",
    );
    let line = our_line(&out).unwrap_or_else(|| panic!("no refusal line: {out:#?}"));
    assert!(
        line.starts_with("limited-allocator: refused 268435456 bytes (256.0 MiB): "),
        "{line}"
    );
    assert!(line.contains(LIMIT_TEXT), "the limit is not named: {line}");
    assert!(line.contains("available"), "{line}");
    // Rust's own message follows ours: the operator sees both.
    let ours = out.stderr.find("limited-allocator: refused").unwrap();
    let rusts = out
        .stderr
        .find(&format!("memory allocation of {ASK} bytes failed"))
        .unwrap_or_else(|| panic!("no message from handle_alloc_error: {out:#?}"));
    assert!(ours < rusts, "{out:#?}");
}

#[test]
fn refused_realloc_growth_aborts_and_the_line_names_the_growth() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = aborted(
        "refused_realloc_growth_aborts_and_the_line_names_the_growth",
        "realloc",
    );
    let line = our_line(&out).unwrap_or_else(|| panic!("no refusal line: {out:#?}"));
    // A realloc is charged (and refused) by its growth: ASK + 1 bytes minus the 1 MiB held;
    // the line names the full new size as well.
    let growth = ASK + 1 - (1 << 20);
    assert!(
        line.starts_with(&format!(
            "limited-allocator: refused {growth} bytes (255.0 MiB) (the growth of a realloc \
             to {} bytes (256.0 MiB)): ",
            ASK + 1
        )),
        "{line}"
    );
    assert!(line.contains(LIMIT_TEXT), "{line}");
    assert!(
        out.stderr
            .contains(&format!("memory allocation of {} bytes failed", ASK + 1)),
        "{out:#?}"
    );
}

#[test]
fn with_reporting_off_it_still_aborts_but_writes_no_line() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = aborted(
        "with_reporting_off_it_still_aborts_but_writes_no_line",
        "quiet",
    );
    assert!(
        !out.stderr.contains("limited-allocator:"),
        "a line although reporting is off: {out:#?}"
    );
    assert!(
        out.stderr
            .contains(&format!("memory allocation of {ASK} bytes failed")),
        "{out:#?}"
    );
}

/// The rate limit keeps a burst: a refusal the program handled does not swallow the line of
/// the fatal one that follows a moment later.
#[test]
fn the_fatal_refusal_after_handled_ones_is_explained() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = aborted(
        "the_fatal_refusal_after_handled_ones_is_explained",
        "handled-then-fatal",
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("limited-allocator: refused"))
        .collect();
    let handled = format!("limited-allocator: refused {ASK} bytes");
    let fatal = format!("limited-allocator: refused {FATAL} bytes (200.0 MiB): ");
    assert_eq!(lines.len(), 4, "{out:#?}");
    assert!(
        lines[..3].iter().all(|l| l.starts_with(&handled)),
        "{out:#?}"
    );
    assert!(lines[3].starts_with(&fatal), "{out:#?}");
    assert!(lines[3].contains(LIMIT_TEXT), "{out:#?}");
}

/// A refusal over an entered reservation's own budget (`Overflow::Refuse`) says so, and is
/// the reservation's, not the allocator's.
#[test]
fn a_reservation_refusal_line_names_its_budget() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = run_child(
        "a_reservation_refusal_line_names_its_budget",
        "reservation",
        &[],
        &[],
    );
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout.contains("RESERVATION refusals=1 allocator=0"),
        "{out:#?}"
    );
    let line = our_line(&out).unwrap_or_else(|| panic!("no refusal line: {out:#?}"));
    assert_eq!(
        line,
        "limited-allocator: refused 8192 bytes by the entered reservation's own budget \
         (Overflow::Refuse): 4096 bytes headroom left, 0 bytes used"
    );
}
