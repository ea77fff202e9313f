//! A panic on the process's main thread at an exhausted limit prints its own message and
//! the process ends within seconds, with `RUST_BACKTRACE` 0, 1 and full; and a panic whose
//! overdraft is spent ends in the allocator's line and an abort, never a hang. No test
//! harness: `main` is the parent, and each child is this binary re-executed with a role,
//! which then panics on its main thread.

use allocator_tests::{child_role, exhaust, warm_symbolizer, Child, ChildOutput};
use limited_allocator::LimitedAllocator;
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

const MESSAGE: &str = "the main thread's own message";
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
        "panic" => {
            let held = exhaust(&ALLOC);
            panic!("{MESSAGE}: {} blocks held", held.len());
        }
        "no-overdraft" => {
            ALLOC.set_panic_overdraft(0);
            let held = exhaust(&ALLOC);
            panic!("{MESSAGE}: {} blocks held", held.len());
        }
        other => panic!("unknown child role {other:?}"),
    }
}

fn run(role: &str, backtrace: &str) -> ChildOutput {
    let out = Child::with_args(&[], role)
        .set(&[("RUST_BACKTRACE", backtrace)])
        .timeout(HANG)
        .run();
    assert!(!out.timed_out, "{role}, {backtrace}: hung: {out:#?}");
    out
}

fn main() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    for (role, backtrace) in [
        ("panic", "0"),
        ("panic", "1"),
        ("panic", "full"),
        ("warm-panic", "1"),
    ] {
        let out = run(role, backtrace);
        let message = out
            .stderr
            .find(&format!("{MESSAGE}: "))
            .unwrap_or_else(|| panic!("{role}, {backtrace}: the message is lost: {out:#?}"));
        match out.status.code() {
            Some(101) => assert!(!out.stderr.contains("memory allocation of"), "{out:#?}"),
            // A cold symbolizer spent the overdraft in the backtrace, after the message.
            None if backtrace != "0" && role == "panic" => assert!(
                out.signal() == Some(libc::SIGABRT)
                    && out.stderr[message..].contains("emergency overdraft are spent"),
                "{out:#?}"
            ),
            _ => panic!("{role}, {backtrace}: {out:#?}"),
        }
        println!(
            "main thread, {role}, RUST_BACKTRACE={backtrace}: ended in {:?}",
            out.elapsed
        );
    }
    // Without an overdraft the panic cannot print; the allocator says why and aborts
    // instead of returning null into the hook (which would deadlock on its lock).
    let out = run("no-overdraft", "1");
    assert_eq!(out.signal(), Some(libc::SIGABRT), "{out:#?}");
    assert!(
        out.stderr.contains("to a panicking thread: ")
            && out
                .stderr
                .contains("emergency overdraft are spent; aborting"),
        "{out:#?}"
    );
    println!(
        "spent overdraft: the line and an abort in {:?}",
        out.elapsed
    );
}
