//! `fork()` while other threads allocate (jemalloc's `test/unit/fork.c`): the child must be
//! able to allocate and to drop instances without waiting for ever on the parent's threads,
//! which do not exist in the child (a registry pin they held at the fork would otherwise
//! never be released). Each child is waited for with a deadline and killed past it.

use limited_allocator::LimitedAllocator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, 1 << 30);

/// A standalone instance the parent's short-lived threads post to on exit (their credit),
/// so that forks land in the middle of posts to its mailbox.
static SIDE: LimitedAllocator = LimitedAllocator::new(System, 1 << 30);

fn churn(stop: &AtomicBool) {
    let l = Layout::from_size_align(256, 8).unwrap();
    while !stop.load(Relaxed) {
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let v: Vec<u8> = vec![1; 4096];
                    black_box(&v);
                    // SAFETY: allocated and freed with the same layout, on this thread.
                    unsafe {
                        let p = SIDE.alloc(l);
                        assert!(!p.is_null());
                        SIDE.dealloc(p, l);
                    }
                });
            }
        });
    }
}

/// Waits for `pid` for at most `limit`; kills it past that. Its exit code, or `None` if it
/// had to be killed.
fn wait_with_deadline(pid: libc::pid_t, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            });
        }
        if start.elapsed() > limit {
            // SAFETY: our own child; killed and reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In the child: allocate through the global instance, use and drop fresh instances (each
/// claims and releases a registry slot), and use the side instance.
fn child() -> i32 {
    let v: Vec<u64> = (0..10_000).collect();
    black_box(&v);
    for _ in 0..70 {
        let a = LimitedAllocator::new(System, 1 << 20);
        let r = a.try_reserve(1000).expect("fits");
        drop(r);
    }
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: allocated and freed with the same layout.
    unsafe {
        let p = SIDE.alloc(l);
        if p.is_null() {
            return 2;
        }
        SIDE.dealloc(p, l);
    }
    0
}

#[test]
fn a_forked_child_allocates_and_drops_instances() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| churn(&stop));
        s.spawn(|| churn(&stop));
        for round in 0..30 {
            std::thread::sleep(Duration::from_millis(3));
            // A fresh instance per round, alive across the fork and dropped in the child.
            let local = LimitedAllocator::new(System, 1 << 20);
            drop(local.try_reserve(10).unwrap());
            // SAFETY: the child only allocates, drops instances and `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = child();
                drop(local);
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(code) };
            }
            let code = wait_with_deadline(pid, Duration::from_secs(20));
            assert_eq!(code, Some(0), "round {round}: the child hung or failed");
        }
        stop.store(true, Relaxed);
    });
}
