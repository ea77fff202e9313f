//! A panic at an exhausted limit prints its own message and the process ends within
//! seconds, under libtest's output capture and without it, with `RUST_BACKTRACE` 0, 1 and
//! full: the panicking thread is served by the emergency overdraft, so std's panic hook
//! neither dies as "memory allocation of N bytes failed" nor deadlocks on its backtrace
//! lock (rust #127397, #148020). Each case is a child process with a timeout; this binary's
//! tests panic on libtest's test thread and on a thread the test spawns (the process's main
//! thread: `panic_at_limit_main.rs`).

use allocator_tests::{child_role, exhaust, warm_symbolizer, Child, ChildOutput};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// The message each child panics with (formatted at run time, so it allocates).
const MESSAGE: &str = "the panic's own message";

/// A hang runs forever; a child that ends runs a second or two even on a loaded machine.
const HANG: Duration = Duration::from_secs(30);

fn child(role: &str) {
    let role = match role.strip_prefix("warm-") {
        Some(rest) => {
            warm_symbolizer();
            rest
        }
        None => role,
    };
    match role {
        "test-thread" => {
            let held = exhaust(&ALLOC);
            panic!("{MESSAGE}: {} blocks held", held.len());
        }
        "spawned" => {
            let joined = std::thread::spawn(|| {
                let held = exhaust(&ALLOC);
                panic!("{MESSAGE}: {} blocks held", held.len());
            })
            .join();
            // The thread's blocks were freed by its unwinding: room to report again.
            let s = ALLOC.stats();
            println!(
                "OVERDRAFT grants={} bytes={} peak_excess={} peak={} limit={}",
                s.overdraft_grants,
                s.overdraft_bytes,
                s.overdraft_peak_bytes,
                ALLOC.peak_bytes(),
                ALLOC.limit()
            );
            assert!(joined.is_err(), "the spawned thread did not panic");
            std::panic::resume_unwind(joined.unwrap_err());
        }
        "capture-at-limit" | "primed-capture-at-limit" => {
            if role.starts_with("primed") {
                // The first call reads the environment (and allocates); later ones reuse it.
                drop(std::backtrace::Backtrace::capture());
            }
            let held = exhaust(&ALLOC);
            let bt = std::backtrace::Backtrace::capture();
            println!("CAPTURED {:?} with {} blocks held", bt.status(), held.len());
        }
        "fallible-in-unwind" => {
            /// A destructor that handles a refused request, as a fallible one should.
            struct TriesWhileUnwinding;
            impl Drop for TriesWhileUnwinding {
                fn drop(&mut self) {
                    assert!(std::thread::panicking());
                    let mut big: Vec<u8> = Vec::new();
                    let refused = big.try_reserve_exact(64 << 20).is_err();
                    let mut small: Vec<u8> = Vec::new();
                    let served = small.try_reserve_exact(256).is_ok();
                    println!("UNWINDING big_refused={refused} small_served={served}");
                }
            }
            let held = exhaust(&ALLOC);
            let unwound = std::panic::catch_unwind(|| {
                let _guard = TriesWhileUnwinding;
                panic!("{MESSAGE}");
            });
            drop(held);
            assert!(unwound.is_err());
            println!("SURVIVED");
        }
        other => panic!("unknown child role {other:?}"),
    }
}

/// Runs `role` as a child (`capture`: under libtest's capture) with `RUST_BACKTRACE` set to
/// `backtrace`, and checks that it ended in time and printed the panic's message.
///
/// It ends as a failing test does (101), or, when the backtrace's symbolization needs more
/// than the 1 MiB overdraft (a cold symbolizer: ~9 MiB for this binary, ~40 MiB with
/// dependencies' debug info), with the allocator's line and SIGABRT. Without capture the
/// message and the backtrace's start went out before; under capture they sat in libtest's
/// buffer, which the abort loses, so the message must come from the allocator's copy
/// (`panic_hook`, chained at load time) on the line after its own.
fn panics_with_its_message(test: &str, role: &str, capture: bool, backtrace: &str) -> ChildOutput {
    let mut child = Child::test(test, role)
        .set(&[("RUST_BACKTRACE", backtrace)])
        .timeout(HANG);
    if capture {
        child = child.capture();
    }
    let out = child.run();
    let case = format!("{role}, capture {capture}, RUST_BACKTRACE={backtrace}");
    assert!(!out.timed_out, "{case}: hung ({:?}): {out:#?}", out.elapsed);
    let all = out.all_output();
    let message = all
        .find(&format!("{MESSAGE}: "))
        .unwrap_or_else(|| panic!("{case}: the panic's message is lost: {out:#?}"));
    match out.status.code() {
        Some(101) => assert!(
            !all.contains("memory allocation of"),
            "{case}: an allocation failure: {out:#?}"
        ),
        // The overdraft was spent: the panicking thread's line, or (when another thread
        // was refused while the budget was overdrawn) that thread's, explains the abort.
        None if out.signal() == Some(libc::SIGABRT) && !capture && backtrace != "0" => {
            assert!(
                all[message..].contains("limited-allocator: refused"),
                "{case}: aborted without the allocator's line: {out:#?}"
            );
        }
        // Under capture: the allocator's line, then its copy of the message.
        None if out.signal() == Some(libc::SIGABRT) && capture && backtrace != "0" => {
            let refused = all.find("limited-allocator: refused").unwrap_or_else(|| {
                panic!("{case}: aborted without the allocator's line: {out:#?}")
            });
            assert!(
                all[refused..].contains("the panic under way was: panicked at "),
                "{case}: the message is not the allocator's copy: {out:#?}"
            );
            assert!(message > refused, "{case}: {out:#?}");
            return out; // the backtrace was in libtest's buffer too
        }
        _ => panic!("{case}: did not end as a panicking test does: {out:#?}"),
    }
    if backtrace != "0" {
        assert!(
            all.contains("stack backtrace:"),
            "{case}: no backtrace: {out:#?}"
        );
    }
    out
}

/// The cases: with and without capture, with a cold symbolizer and a warm one.
const CASES: [(&str, bool, &str); 9] = [
    ("", true, "0"),
    ("", true, "1"),
    ("", true, "full"),
    ("warm-", true, "1"),
    ("warm-", true, "full"),
    ("", false, "0"),
    ("", false, "1"),
    ("", false, "full"),
    ("warm-", false, "1"),
];

#[test]
fn a_panic_on_the_test_thread_keeps_its_message() {
    const TEST: &str = "a_panic_on_the_test_thread_keeps_its_message";
    if let Some(role) = child_role() {
        return child(&role);
    }
    for (warm, capture, backtrace) in CASES {
        let out = panics_with_its_message(TEST, &format!("{warm}test-thread"), capture, backtrace);
        if !warm.is_empty() {
            assert_eq!(out.status.code(), Some(101), "{out:#?}");
        }
    }
}

#[test]
fn a_panic_on_a_spawned_thread_keeps_its_message() {
    const TEST: &str = "a_panic_on_a_spawned_thread_keeps_its_message";
    if let Some(role) = child_role() {
        return child(&role);
    }
    for (warm, capture, backtrace) in CASES {
        let out = panics_with_its_message(TEST, &format!("{warm}spawned"), capture, backtrace);
        if out.status.code() != Some(101) {
            continue; // the overdraft was spent by a cold symbolizer: no stats line
        }
        let line = out
            .stdout
            .split_once("OVERDRAFT ")
            .and_then(|(_, rest)| rest.lines().next())
            .unwrap_or_else(|| panic!("no stats line: {out:#?}"));
        let field = |name: &str| -> usize {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        // The overdraft served the panic, within its bound, and the peak kept its meaning.
        assert!(field("grants") > 0, "{line}");
        assert!(field("bytes") > 0, "{line}");
        let excess = field("peak_excess");
        assert!(excess > 0 && excess <= 1 << 20, "{line}");
        assert!(field("peak") <= field("limit"), "{line}");
    }
}

/// A fallible request larger than the whole overdraft, made by a destructor while the
/// thread unwinds at an exhausted limit, gets its `Err` (the process lives on); a small one
/// is still served by the overdraft.
#[test]
fn a_fallible_request_past_the_overdraft_is_refused_while_unwinding() {
    const TEST: &str = "a_fallible_request_past_the_overdraft_is_refused_while_unwinding";
    if let Some(role) = child_role() {
        return child(&role);
    }
    let out = Child::test(TEST, "fallible-in-unwind")
        .set(&[("RUST_BACKTRACE", "0")])
        .timeout(HANG)
        .run();
    assert!(!out.timed_out, "hung: {out:#?}");
    assert!(
        out.stdout
            .contains("UNWINDING big_refused=true small_served=true"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("SURVIVED"), "{out:#?}");
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
}

/// What `std::backtrace::Backtrace::capture` does at an exhausted limit on a thread that is
/// not panicking (documented in `docs/production.md`): its first call in a process reads the
/// environment, which allocates, so it is refused and the process aborts through
/// `handle_alloc_error` even with backtraces off; once that was read, with backtraces off it
/// returns `Disabled` without allocating. (With them on, the frames' refused allocation
/// calls `handle_alloc_error` inside `capture`'s backtrace lock and the process hangs.)
#[test]
fn backtrace_capture_at_the_limit() {
    const TEST: &str = "backtrace_capture_at_the_limit";
    if let Some(role) = child_role() {
        return child(&role);
    }
    let run = |role: &str, on: bool| {
        let mut child = Child::test(TEST, role).timeout(HANG);
        if on {
            child = child.set(&[("RUST_LIB_BACKTRACE", "1")]);
        } else {
            child = child.unset(&["RUST_LIB_BACKTRACE"]);
        }
        let out = child.run();
        assert!(!out.timed_out, "{role}, on {on}: {out:#?}");
        out
    };
    let aborts = |out: &ChildOutput| {
        assert_eq!(out.signal(), Some(libc::SIGABRT), "{out:#?}");
        assert!(
            out.stderr.contains("limited-allocator: refused"),
            "{out:#?}"
        );
        assert!(out.stderr.contains("memory allocation of"), "{out:#?}");
    };
    aborts(&run("capture-at-limit", false));
    let off = run("primed-capture-at-limit", false);
    assert!(off.status.success(), "{off:#?}");
    assert!(off.stdout.contains("CAPTURED Disabled"), "{off:#?}");
    // With backtraces on, the refused allocation's `handle_alloc_error` waits for the
    // backtrace lock that `capture` holds: a hang (std 1.95, documented), not tested here.
}
