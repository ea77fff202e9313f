//! Shared helpers for the global-allocator test binaries in `tests/`.
//!
//! Each binary installs `LimitedAllocator` as its `#[global_allocator]`, so its counters are
//! shared by everything in the process: the test harness, every test, and any child roles.
//! The helpers here make that manageable:
//!
//! - [`Counts`] snapshots the counters so tests assert *deltas*, never absolute numbers;
//! - [`run_child`] (and [`Child`] for more options) re-executes the test binary itself to
//!   run one test in a child process with a role selected by [`ROLE_VAR`], killed after a
//!   timeout (for aborts, panics at the limit, hang checks, and environment variables that
//!   must be set before anything reads them).
//!
//! A failing assertion under a tight limit needs no help to be reported: the allocator's
//! emergency overdraft serves the panicking thread (see `set_panic_overdraft`), so the
//! panic prints its message and nothing lifts the limit behind the test's back.
//!
//! A binary whose test asserts exact deltas holds exactly one `#[test]` (sub-cases run one
//! after another inside it). A mutex between tests is not enough: libtest's main thread
//! allocates (result bookkeeping, output) whenever *another* test finishes, which lands in
//! the middle of the running test's deltas. With one test, that thread sits blocked in a
//! channel receive until the test ends.

use limited_allocator::LimitedAllocator;
use std::alloc::GlobalAlloc;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// The tests' one pseudo-random generator, shared with the root crate's tests and benches.
#[path = "../../tests/common/xorshift.rs"]
mod xorshift;
pub use xorshift::xorshift;

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
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl ChildOutput {
    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    /// Both streams, stdout first (libtest prints a failed test's captured output there).
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// How long a child may run before it counts as hung and is killed: generous, for a
/// machine shared with other builds; a hang runs forever, so any bound tells it apart.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the test `test` of the current test binary (and only it: `--exact`) in a child
/// process with [`ROLE_VAR`] set to `role`, `set` added to and `unset` removed from its
/// environment, and returns what it did. Output is not captured by the child's harness
/// (`--nocapture`), so everything it writes reaches the pipes. Killed after
/// [`CHILD_TIMEOUT`].
pub fn run_child(test: &str, role: &str, set: &[(&str, &str)], unset: &[&str]) -> ChildOutput {
    Child::test(test, role).set(set).unset(unset).run()
}

/// [`run_child`] with `timeout` instead of [`CHILD_TIMEOUT`] (`None`: that default). A
/// child killed at it reads `timed_out`, and `SIGKILL` in [`ChildOutput::signal`].
pub fn run_child_within(
    test: &str,
    role: &str,
    set: &[(&str, &str)],
    unset: &[&str],
    timeout: Option<Duration>,
) -> ChildOutput {
    Child::test(test, role)
        .set(set)
        .unset(unset)
        .timeout(timeout.unwrap_or(CHILD_TIMEOUT))
        .run()
}

/// A child process to run: this binary re-executed with a role, with a timeout.
#[derive(Debug, Clone)]
pub struct Child {
    args: Vec<String>,
    role: String,
    set: Vec<(String, String)>,
    unset: Vec<String>,
    timeout: Duration,
}

impl Child {
    /// The libtest test `test` of this binary, alone, with `--nocapture` (see
    /// [`capture`](Self::capture)), `RUST_BACKTRACE=0` unless [`set`](Self::set) says
    /// otherwise, and [`CHILD_TIMEOUT`].
    pub fn test(test: &str, role: &str) -> Self {
        // `--include-ignored`: a test marked `#[ignore]` (run by hand) still runs its child.
        let args = [
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ];
        Self::with_args(&args, role)
    }

    /// This binary with `args` (for a `harness = false` binary: its own `main`).
    pub fn with_args(args: &[&str], role: &str) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            role: role.to_string(),
            set: vec![("RUST_BACKTRACE".into(), "0".into())],
            unset: Vec::new(),
            timeout: CHILD_TIMEOUT,
        }
    }

    /// Leaves libtest's output capture on (drops `--nocapture`): a failing test's output
    /// then goes through libtest's capture buffer and is printed by its main thread.
    pub fn capture(mut self) -> Self {
        self.args.retain(|a| a != "--nocapture");
        self
    }

    /// Adds environment variables (later ones win).
    pub fn set(mut self, vars: &[(&str, &str)]) -> Self {
        for (k, v) in vars {
            self.set.retain(|(key, _)| key != k);
            self.set.push((k.to_string(), v.to_string()));
        }
        self
    }

    /// Removes environment variables.
    pub fn unset(mut self, vars: &[&str]) -> Self {
        self.unset.extend(vars.iter().map(|v| v.to_string()));
        self
    }

    /// Kills the child after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs it to the end or the timeout and returns what it did.
    pub fn run(&self) -> ChildOutput {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .env(ROLE_VAR, &self.role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.set {
            cmd.env(k, v);
        }
        for k in &self.unset {
            cmd.env_remove(k);
        }
        let start = Instant::now();
        let mut child = cmd.spawn().expect("the child process starts");
        let drain = |r: Option<Box<dyn Read + Send>>| {
            let mut r = r.expect("a piped stream");
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the child") {
                break status;
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("reaping the killed child");
            }
            thread::sleep(Duration::from_millis(20));
        };
        ChildOutput {
            status,
            stdout: out.join().expect("the stdout reader"),
            stderr: err.join().expect("the stderr reader"),
            timed_out,
            elapsed: start.elapsed(),
        }
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

/// Makes a failing assertion under a tight limit print its message and backtrace: when
/// backtraces are on (`RUST_BACKTRACE` set and not `0`), [`warm_symbolizer`] now, so the
/// symbolizer's caches are charged before the limit is set. The panic then needs well
/// under the emergency overdraft (measured: ~0.5 MiB instead of ~40 MiB), and libtest has
/// room to print the captured output afterwards. Unlike lifting the limit in a panic hook,
/// this leaves the limit (and every `peak <= limit` check after a caught panic) as it is.
/// Call it before the limit is set.
pub fn prepare_backtraces() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        warm_symbolizer();
    }
}

/// Resolves one backtrace, so that the symbolizer's caches (tens of MiB for a test binary
/// with full debug info, allocated at the first backtrace and kept) are allocated now, as
/// `docs/production.md` advises for services that want backtraces at the limit.
pub fn warm_symbolizer() {
    let resolved = std::backtrace::Backtrace::force_capture().to_string();
    assert!(resolved.contains("warm_symbolizer"), "{resolved}");
}

/// Takes every byte `alloc`'s budget has left, 8 MiB past what is live, through fallible
/// APIs only, and returns the blocks (dropping them gives the bytes back); afterwards even
/// a 16-byte allocation is refused. Its own refusals write no lines (reporting is off
/// meanwhile), so the rate limit's burst is left for what follows.
pub fn exhaust<A: GlobalAlloc>(alloc: &LimitedAllocator<A>) -> Vec<Vec<u8>> {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(4096); // before the limit is set
    let reporting = alloc.refusal_reporting();
    alloc.set_refusal_reporting(false);
    alloc.set_limit(alloc.allocated_bytes() + (8 << 20));
    let mut size = 1 << 20;
    while size >= 16 && held.len() < held.capacity() {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(size).is_ok() {
            held.push(v);
        } else {
            size /= 2;
        }
    }
    let mut probe: Vec<u8> = Vec::new();
    assert!(
        probe.try_reserve_exact(16).is_err(),
        "the budget is not exhausted"
    );
    alloc.set_refusal_reporting(reporting);
    held
}
