//! Shared helpers for the global-allocator test binaries in `tests/`.
//!
//! Each binary installs `LimitedAllocator` as its `#[global_allocator]`, so its counters are
//! shared by everything in the process: the test harness, every test, and any child roles.
//! The helpers here make that manageable:
//!
//! - [`Counts`] snapshots the counters so tests assert *deltas*, never absolute numbers;
//! - [`run_child`] re-executes the test binary itself to run one test in a child process
//!   with a role selected by [`ROLE_VAR`] (for aborts, and for environment variables that
//!   must be set before anything reads them).
//!
//! A binary whose test asserts exact deltas holds exactly one `#[test]` (sub-cases run one
//! after another inside it). A mutex between tests is not enough: libtest's main thread
//! allocates (result bookkeeping, output) whenever *another* test finishes, which lands in
//! the middle of the running test's deltas. With one test, that thread sits blocked in a
//! channel receive until the test ends.

use limited_allocator::LimitedAllocator;
use std::alloc::GlobalAlloc;
use std::process::{Command, ExitStatus};

/// The variable that tells a re-executed test binary which child role to play.
pub const ROLE_VAR: &str = "ALLOCATOR_TESTS_CHILD_ROLE";

/// The child role this process was started with, if it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl ChildOutput {
    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }
}

/// Runs the test `test` of the current test binary (and only it: `--exact`) in a child
/// process with [`ROLE_VAR`] set to `role`, `set` added to and `unset` removed from its
/// environment, and returns what it did. Output is not captured by the child's harness
/// (`--nocapture`), so everything it writes reaches the pipes.
pub fn run_child(test: &str, role: &str, set: &[(&str, &str)], unset: &[&str]) -> ChildOutput {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env("RUST_BACKTRACE", "0");
    for (k, v) in set {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("the child process starts");
    ChildOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`run_child`] with a deadline: a child still running after `timeout` is killed
/// (SIGKILL) and reported as such, so a hang fails the test instead of stalling CI.
pub fn run_child_with_timeout(
    test: &str,
    role: &str,
    set: &[(&str, &str)],
    timeout: std::time::Duration,
) -> ChildOutput {
    use std::io::Read;
    use std::process::Stdio;
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in set {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the child process starts");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            break child.wait().expect("waiting for the killed child");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    ChildOutput {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// A snapshot of an allocator's counters, read on the calling thread (its own credit is
/// not usage, so on a thread that works alone the byte count is exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `allocated_bytes()`.
    pub bytes: usize,
    /// `stats().allocations`.
    pub allocs: u64,
    /// `stats().deallocations`.
    pub deallocs: u64,
    /// `stats().reallocations`.
    pub reallocs: u64,
    /// `stats().refusals`.
    pub refusals: u64,
    /// `stats().refused_bytes`.
    pub refused_bytes: u64,
}

impl Counts {
    /// Reads the counters now. Allocates nothing.
    pub fn of<A: GlobalAlloc>(a: &LimitedAllocator<A>) -> Self {
        let s = a.stats();
        Self {
            bytes: a.allocated_bytes(),
            allocs: s.allocations,
            deallocs: s.deallocations,
            reallocs: s.reallocations,
            refusals: s.refusals,
            refused_bytes: s.refused_bytes,
        }
    }

    /// What changed from `earlier` to `self`, as signed differences
    /// (bytes, allocations, deallocations, reallocations, refusals, refused bytes).
    pub fn since(&self, earlier: &Counts) -> Delta {
        let d = |now: u64, then: u64| now as i128 - then as i128;
        Delta {
            bytes: self.bytes as i128 - earlier.bytes as i128,
            allocs: d(self.allocs, earlier.allocs),
            deallocs: d(self.deallocs, earlier.deallocs),
            reallocs: d(self.reallocs, earlier.reallocs),
            refusals: d(self.refusals, earlier.refusals),
            refused_bytes: d(self.refused_bytes, earlier.refused_bytes),
        }
    }
}

/// The difference between two [`Counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delta {
    /// Change of `allocated_bytes()`.
    pub bytes: i128,
    /// Allocations made in between.
    pub allocs: i128,
    /// Deallocations made in between.
    pub deallocs: i128,
    /// Reallocations made in between.
    pub reallocs: i128,
    /// Refusals in between.
    pub refusals: i128,
    /// Bytes refused in between.
    pub refused_bytes: i128,
}

/// Total physical memory, as `sysconf` reports it (the base of a percentage limit when the
/// process has no cgroup limit).
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration and reports errors as -1.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Makes a failing assertion fail cleanly under a tight limit: installs a panic hook that
/// lifts `alloc`'s limit before the default hook formats the message and the backtrace.
/// Without it, the hook's own allocations are refused, `handle_alloc_error` then waits for
/// the backtrace lock the panicking thread already holds, and the test hangs instead of
/// failing. Idempotent enough: each call wraps the hook once more, which is harmless.
pub fn lift_limit_on_panic<A: GlobalAlloc + Sync>(alloc: &'static LimitedAllocator<A>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        alloc.set_limit(usize::MAX);
        previous(info);
    }));
}
