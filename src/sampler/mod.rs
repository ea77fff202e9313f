//! What the allocator cannot see: process RSS, system memory, the cgroup and PSI.
//!
//! The allocator counts only the heap bytes that pass through it. The OOM killer counts
//! more: memory mapped by C libraries, fragmentation, thread stacks, and in a container the
//! page cache charged to the cgroup. A [`Sampler`] reads those numbers on Linux from
//! `/proc` and `/sys`:
//!
//! | field | source |
//! |---|---|
//! | `rss_bytes`, `rss_anon_bytes`, `peak_rss_bytes` | `VmRSS`, `RssAnon`, `VmHWM` in `/proc/self/status` |
//! | `system_total_bytes`, `system_available_bytes` | `MemTotal`, `MemAvailable` in `/proc/meminfo` |
//! | `cgroup` | [`read_cgroup_memory`] (v1 and v2, smallest limit up the path) plus `memory.stat` |
//! | `psi` | the cgroup's `memory.pressure` (v2), else `/proc/pressure/memory` |
//!
//! A number that cannot be read is `None`, never a guess. On other operating systems only
//! `peak_rss_bytes` is filled, from `getrusage` (Unix); everything else is `None`.
//!
//! Reads are cached for a configurable age (100 ms by default), so many callers asking at
//! once cost one read. An uncached read costs about 0.2 ms (some 14 small files; measured
//! on a cgroup v1 machine, see `docs/monitoring.md` and `benches/sampler.rs`), a cached one
//! about 80 ns.

pub(crate) mod cgroup;
mod psi;

pub use cgroup::{read_cgroup_memory, CgroupMemory, CgroupVersion};
pub use psi::{parse_psi, Psi};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One reading of everything the allocator cannot see. Fields that could not be read are
/// `None`.
///
/// ```
/// use limited_allocator::sampler::Sampler;
/// let sample = Sampler::new().sample();
/// if let (Some(rss), Some(anon)) = (sample.rss_bytes, sample.rss_anon_bytes) {
///     assert!(anon <= rss);
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MemorySample {
    /// Resident set size of this process (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Anonymous resident memory (`RssAnon`): heap, stacks, anonymous mmap. Unlike `VmRSS`
    /// it leaves out file pages mapped from disk, which the kernel can drop.
    pub rss_anon_bytes: Option<u64>,
    /// Peak resident set size (`VmHWM`; `ru_maxrss` on other Unixes).
    pub peak_rss_bytes: Option<u64>,
    /// Physical memory (`MemTotal`).
    pub system_total_bytes: Option<u64>,
    /// Memory available to new work without swapping (`MemAvailable`), reclaimable page
    /// cache included.
    pub system_available_bytes: Option<u64>,
    /// The process's memory cgroup, when there is one.
    pub cgroup: Option<CgroupMemory>,
    /// Memory pressure-stall information, when the kernel provides it.
    pub psi: Option<Psi>,
}

impl MemorySample {
    /// A sample in which nothing could be read.
    ///
    /// ```
    /// let empty = limited_allocator::sampler::MemorySample::empty();
    /// assert_eq!(empty.rss_bytes, None);
    /// ```
    pub const fn empty() -> Self {
        Self {
            rss_bytes: None,
            rss_anon_bytes: None,
            peak_rss_bytes: None,
            system_total_bytes: None,
            system_available_bytes: None,
            cgroup: None,
            psi: None,
        }
    }

    /// The cgroup's hard limit, when there is one.
    ///
    /// ```
    /// let s = limited_allocator::sampler::MemorySample::empty();
    /// assert_eq!(s.cgroup_limit_bytes(), None);
    /// ```
    pub fn cgroup_limit_bytes(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|c| c.limit_bytes)
    }
}

/// Reads [`MemorySample`]s below a root directory, caching them for a short time.
///
/// `Sampler` is `Sync`: share one between threads. [`sample`](Self::sample) returns the
/// cached reading when it is younger than [`max_age`](Self::max_age) (100 ms by default),
/// [`sample_fresh`](Self::sample_fresh) always reads.
///
/// ```
/// use limited_allocator::sampler::Sampler;
/// use std::time::Duration;
///
/// let sampler = Sampler::new().with_max_age(Duration::from_millis(250));
/// let a = sampler.sample();
/// let b = sampler.sample(); // served from the cache
/// assert_eq!(a, b);
/// # #[cfg(target_os = "linux")]
/// assert!(a.rss_bytes.unwrap() > 0);
/// ```
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    max_age: Duration,
    cache: Mutex<Option<(Instant, MemorySample)>>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// The default cache age.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(100);

    /// A sampler of the real machine (root `/`) with a 100 ms cache.
    ///
    /// ```
    /// let sampler = limited_allocator::sampler::Sampler::new();
    /// assert_eq!(sampler.root(), std::path::Path::new("/"));
    /// ```
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// A sampler that reads `proc/...` and `sys/fs/cgroup/...` below `root` instead of `/`:
    /// for tests against fixture trees, or a host's `/proc` mounted elsewhere.
    ///
    /// ```
    /// let sampler = limited_allocator::sampler::Sampler::with_root("/nonexistent");
    /// let sample = sampler.sample();
    /// assert_eq!(sample.system_available_bytes, None);
    /// assert_eq!(sample.cgroup, None);
    /// ```
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            max_age: Self::DEFAULT_MAX_AGE,
            cache: Mutex::new(None),
        }
    }

    /// Sets how long a reading is served from the cache (zero: never).
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = limited_allocator::sampler::Sampler::new().with_max_age(Duration::ZERO);
    /// assert_eq!(s.max_age(), Duration::ZERO);
    /// ```
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The root directory read from.
    ///
    /// ```
    /// let s = limited_allocator::sampler::Sampler::with_root("/tmp/fixture");
    /// assert_eq!(s.root(), std::path::Path::new("/tmp/fixture"));
    /// ```
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How long a reading is served from the cache.
    ///
    /// ```
    /// let s = limited_allocator::sampler::Sampler::new();
    /// assert_eq!(s.max_age(), limited_allocator::sampler::Sampler::DEFAULT_MAX_AGE);
    /// ```
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The cached reading if it is young enough, else a fresh one (which is then cached).
    ///
    /// ```
    /// let sample = limited_allocator::sampler::Sampler::new().sample();
    /// println!("rss: {:?}", sample.rss_bytes);
    /// ```
    pub fn sample(&self) -> MemorySample {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, sample)) = cache.as_ref() {
                if now.saturating_duration_since(*at) < self.max_age {
                    return sample.clone();
                }
            }
        }
        let sample = self.sample_fresh();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        *cache = Some((now, sample.clone()));
        sample
    }

    /// Reads everything now, bypassing (and not updating) the cache.
    ///
    /// ```
    /// let sample = limited_allocator::sampler::Sampler::new().sample_fresh();
    /// # #[cfg(target_os = "linux")]
    /// assert!(sample.system_total_bytes.unwrap() > 0);
    /// ```
    pub fn sample_fresh(&self) -> MemorySample {
        let root = &self.root;
        let mut sample = MemorySample::empty();
        if let Ok(status) = fs::read_to_string(root.join("proc/self/status")) {
            sample.rss_bytes = kib_field(&status, "VmRSS:");
            sample.rss_anon_bytes = kib_field(&status, "RssAnon:");
            sample.peak_rss_bytes = kib_field(&status, "VmHWM:");
        }
        if let Ok(meminfo) = fs::read_to_string(root.join("proc/meminfo")) {
            sample.system_total_bytes = kib_field(&meminfo, "MemTotal:");
            sample.system_available_bytes = kib_field(&meminfo, "MemAvailable:");
        }
        let cgroup = read_cgroup_memory(root);
        let mut psi = None;
        if let Some(cg) = &cgroup {
            if cg.version == CgroupVersion::V2 {
                psi = fs::read_to_string(cg.dir.join("memory.pressure"))
                    .ok()
                    .and_then(|t| parse_psi(&t));
            }
        }
        if psi.is_none() {
            psi = fs::read_to_string(root.join("proc/pressure/memory"))
                .ok()
                .and_then(|t| parse_psi(&t));
        }
        sample.psi = psi;
        sample.cgroup = cgroup;
        #[cfg(not(target_os = "linux"))]
        if sample.peak_rss_bytes.is_none() && root == Path::new("/") {
            sample.peak_rss_bytes = getrusage_max_rss();
        }
        sample
    }
}

/// `Key:   1234 kB` from /proc/self/status or /proc/meminfo, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Peak RSS from `getrusage(RUSAGE_SELF)`: bytes on macOS, kilobytes elsewhere.
#[cfg(all(unix, not(target_os = "linux")))]
fn getrusage_max_rss() -> Option<u64> {
    let mut usage = core::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` points to writable memory of the right size and alignment for a
    // `rusage`; getrusage only writes into it, and we read it only when it returned 0.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it initialised the whole struct (and it was zeroed).
    let max = unsafe { usage.assume_init() }.ru_maxrss;
    let max = u64::try_from(max).ok()?;
    if cfg!(target_os = "macos") {
        Some(max)
    } else {
        max.checked_mul(1024)
    }
}

#[cfg(not(unix))]
fn getrusage_max_rss() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::cgroup::tests::Fixture;

    const STATUS: &str = "Name:\ttest\nVmPeak:\t  10000 kB\nVmHWM:\t    3000 kB\n\
                          VmRSS:\t    2000 kB\nRssAnon:\t     500 kB\nRssFile:\t 1500 kB\n";
    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:  1000 kB\n\
                           MemAvailable:    8000000 kB\n";

    fn sampler(f: &Fixture) -> Sampler {
        Sampler::with_root(&f.0).with_max_age(Duration::ZERO)
    }

    #[test]
    fn reads_process_and_system_fields_in_bytes() {
        let f = Fixture::new("sampler-proc");
        f.file("proc/self/status", STATUS)
            .file("proc/meminfo", MEMINFO);
        let s = sampler(&f).sample();
        assert_eq!(s.rss_bytes, Some(2000 * 1024));
        assert_eq!(s.rss_anon_bytes, Some(500 * 1024));
        assert_eq!(s.peak_rss_bytes, Some(3000 * 1024));
        assert_eq!(s.system_total_bytes, Some(16_000_000 * 1024));
        assert_eq!(s.system_available_bytes, Some(8_000_000 * 1024));
        assert_eq!(s.cgroup, None);
        assert_eq!(s.psi, None);
    }

    #[test]
    fn v1_cgroup_with_sentinel_working_set_and_host_psi() {
        let f = Fixture::new("sampler-v1");
        f.file("proc/self/cgroup", "4:memory:/docker/abc\n0::/\n")
            .file(
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            )
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "1073741824\n",
            )
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
                "600000000\n",
            )
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.stat",
                "cache 5\ninactive_file 1\ntotal_inactive_file 100000000\n",
            )
            .file(
                "proc/pressure/memory",
                "some avg10=2.50 avg60=1.00 avg300=0.00 total=5\n\
                 full avg10=0.50 avg60=0.10 avg300=0.00 total=1\n",
            );
        let s = sampler(&f).sample();
        let cg = s.cgroup.clone().unwrap();
        assert_eq!(cg.version, CgroupVersion::V1);
        assert_eq!(cg.limit_bytes, Some(1 << 30));
        assert_eq!(s.cgroup_limit_bytes(), Some(1 << 30));
        assert_eq!(cg.usage_bytes, Some(600_000_000));
        assert_eq!(cg.working_set_bytes, Some(500_000_000));
        let psi = s.psi.unwrap();
        assert_eq!(psi.some_avg10, Some(2.5));
        assert_eq!(psi.full_avg60, Some(0.1));
    }

    #[test]
    fn v2_nested_limit_and_cgroup_psi_wins_over_host_psi() {
        let f = Fixture::new("sampler-v2");
        f.file("proc/self/cgroup", "0::/a/b\n")
            .file("sys/fs/cgroup/a/memory.max", "2147483648\n")
            .file("sys/fs/cgroup/a/b/memory.max", "max\n")
            .file("sys/fs/cgroup/a/b/memory.current", "1000\n")
            .file(
                "sys/fs/cgroup/a/b/memory.stat",
                "anon 10\nfile 990\ninactive_file 5000\n",
            )
            .file(
                "sys/fs/cgroup/a/b/memory.pressure",
                "some avg10=40.00 avg60=20.00 avg300=1.00 total=5\n",
            )
            .file(
                "proc/pressure/memory",
                "some avg10=1.00 avg60=1.00 avg300=0.00 total=5\n",
            );
        let s = sampler(&f).sample();
        let cg = s.cgroup.unwrap();
        assert_eq!(cg.version, CgroupVersion::V2);
        assert_eq!(cg.limit_bytes, Some(2 << 30));
        // inactive_file above usage saturates instead of wrapping.
        assert_eq!(cg.working_set_bytes, Some(0));
        assert_eq!(s.psi.unwrap().some_avg10, Some(40.0));
    }

    #[test]
    fn garbage_and_missing_fields_are_none() {
        let f = Fixture::new("sampler-garbage");
        f.file(
            "proc/self/status",
            "VmRSS:\tlots kB\nRssAnon:\t12 MB\nVmHWM:\n",
        )
        .file("proc/meminfo", "MemTotal: 99999999999999999999999 kB\n")
        .file("proc/pressure/memory", "some avg10=NaN avg60=-1 x\nfull\n")
        .file("proc/self/cgroup", "0::/x\n")
        .file("sys/fs/cgroup/x/memory.max", "\u{0}\u{1}binary")
        .file("sys/fs/cgroup/x/memory.current", "12\n")
        .file("sys/fs/cgroup/x/memory.stat", "inactive_file twelve\n");
        let s = sampler(&f).sample();
        assert_eq!(
            (s.rss_bytes, s.rss_anon_bytes, s.peak_rss_bytes),
            (None, None, None)
        );
        assert_eq!(
            (s.system_total_bytes, s.system_available_bytes),
            (None, None)
        );
        assert_eq!(s.psi, None);
        let cg = s.cgroup.unwrap();
        assert_eq!(
            (cg.limit_bytes, cg.usage_bytes, cg.working_set_bytes),
            (None, Some(12), None)
        );

        let empty = Fixture::new("sampler-empty");
        assert_eq!(sampler(&empty).sample(), MemorySample::empty());
    }

    #[test]
    fn cache_serves_until_max_age_then_rereads() {
        let f = Fixture::new("sampler-cache");
        f.file("proc/meminfo", "MemAvailable: 1 kB\n");
        let cached = Sampler::with_root(&f.0).with_max_age(Duration::from_secs(3600));
        let uncached = sampler(&f);
        assert_eq!(cached.sample().system_available_bytes, Some(1024));
        f.file("proc/meminfo", "MemAvailable: 2 kB\n");
        assert_eq!(cached.sample().system_available_bytes, Some(1024));
        assert_eq!(cached.sample_fresh().system_available_bytes, Some(2048));
        assert_eq!(uncached.sample().system_available_bytes, Some(2048));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn real_machine_agrees_with_proc_self_status() {
        // Other tests allocate concurrently: bracket the sampler's read by two direct reads.
        let direct = || {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            kib_field(&status, "VmRSS:").unwrap() as f64
        };
        let before = direct();
        let sample = Sampler::new().sample_fresh();
        let after = direct();
        let (low, high) = (before.min(after) * 0.97, before.max(after) * 1.03);
        let sampled = sample.rss_bytes.unwrap() as f64;
        assert!(
            low <= sampled && sampled <= high,
            "{sampled} vs {before}..{after}"
        );
        assert!(sample.rss_anon_bytes.unwrap() <= sample.rss_bytes.unwrap());
        assert!(sample.peak_rss_bytes.unwrap() >= sample.rss_bytes.unwrap() / 2);
        let total = sample.system_total_bytes.unwrap();
        assert!(sample.system_available_bytes.unwrap() <= total);
        // This machine has a v1 memory controller; in any cgroup the usage is positive.
        if let Some(cg) = &sample.cgroup {
            if let Some(usage) = cg.usage_bytes {
                assert!(usage > 0);
                assert!(cg.working_set_bytes.unwrap_or(0) <= usage);
            }
            if let Some(limit) = cg.limit_bytes {
                assert!(limit > 0);
            }
        }
    }
}
