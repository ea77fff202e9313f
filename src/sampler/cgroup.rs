//! The memory controller of the process's cgroup (v1 and v2), read from /proc and /sys.
//!
//! A container's limit is the one the OOM killer enforces, so it is what a percentage
//! limit (`LIMITED_ALLOCATOR_LIMIT=75%`) and the monitor measure against. Everything is read
//! below a configurable root so tests can point it at fixture trees.
//!
//! Where the files are: `/proc/self/cgroup` names the process's cgroup path per hierarchy
//! (`0::/path` for v2, `N:memory:/path` or `N:cpu,memory:/path` for v1). The controllers are
//! looked for at their standard mount points, `/sys/fs/cgroup` (v2) and
//! `/sys/fs/cgroup/memory` (v1). Limits apply hierarchically, so the effective limit is the
//! smallest along the path from the process's cgroup up to the root; inside a cgroup
//! namespace the path may not exist below the mount point, and the mount point's own files
//! are the process's.

use std::fs;
use std::path::{Path, PathBuf};

/// cgroup v1 writes this (or a value near it, rounded to a page) when there is no limit.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// Which cgroup hierarchy the memory controller was found in.
///
/// ```
/// use limited_allocator::sampler::{read_cgroup_memory, CgroupVersion};
/// if let Some(cg) = read_cgroup_memory(std::path::Path::new("/")) {
///     let file = match cg.version {
///         CgroupVersion::V1 => "memory.limit_in_bytes",
///         CgroupVersion::V2 => "memory.max",
///     };
///     println!("limit read from {}/{file}", cg.dir.display());
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum CgroupVersion {
    /// The legacy per-controller hierarchy (`memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`memory.max`).
    V2,
}

/// The memory controller's numbers for this process's cgroup. Each field is `None` when
/// its file is missing or unreadable, never a guess.
///
/// ```
/// let cg = limited_allocator::sampler::read_cgroup_memory(std::path::Path::new("/"));
/// let container_limit = cg.and_then(|c| c.limit_bytes); // None: no limit, or not in a container
/// println!("{container_limit:?}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CgroupMemory {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The cgroup directory the numbers were read from.
    pub dir: PathBuf,
    /// The hard limit: smallest `memory.max` / `memory.limit_in_bytes` on the path to the
    /// root. `None` means unlimited ("max", or v1's huge sentinel) or unreadable.
    pub limit_bytes: Option<u64>,
    /// The soft limit: smallest `memory.high` (v2) / `memory.soft_limit_in_bytes` (v1).
    pub high_bytes: Option<u64>,
    /// Current usage as the kernel charges it, page cache included: `memory.current` (v2) /
    /// `memory.usage_in_bytes` (v1).
    pub usage_bytes: Option<u64>,
    /// Usage less inactive file pages (`inactive_file` in `memory.stat`; v1 prefers
    /// `total_inactive_file`): what cannot be dropped cheaply. This is the number kubelet
    /// evicts on, and the one the monitor compares with the limit, so that a page cache
    /// the kernel would reclaim is not mistaken for pressure.
    pub working_set_bytes: Option<u64>,
    /// OOM kills in this cgroup: `oom_kill` in `memory.events` (v2) or
    /// `memory.oom_control` (v1, kernels >= 4.13).
    pub oom_kills: Option<u64>,
}

/// Reads the cgroup memory controller below `root` (use `/` for the real machine).
/// Returns `None` when the process is in no memory cgroup that can be found.
///
/// ```
/// // On any machine this returns without panicking; inside a container it finds the limit.
/// let cg = limited_allocator::sampler::read_cgroup_memory(std::path::Path::new("/"));
/// if let Some(cg) = cg {
///     println!("cgroup {:?} limit {:?}", cg.version, cg.limit_bytes);
/// }
/// ```
pub fn read_cgroup_memory(root: &Path) -> Option<CgroupMemory> {
    let table = fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mut v1_path = None;
    let mut v2_path = None;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path);
        }
    }
    // A v1 memory controller wins: on hybrid hosts the unified tree has no memory files.
    if let Some(path) = v1_path {
        let mount = root.join("sys/fs/cgroup/memory");
        if let Some(cg) = read_hierarchy(CgroupVersion::V1, &mount, path) {
            return Some(cg);
        }
    }
    let path = v2_path?;
    let mount = root.join("sys/fs/cgroup");
    read_hierarchy(CgroupVersion::V2, &mount, path)
}

struct Files {
    limit: &'static str,
    high: &'static str,
    usage: &'static str,
}

const V1_FILES: Files = Files {
    limit: "memory.limit_in_bytes",
    high: "memory.soft_limit_in_bytes",
    usage: "memory.usage_in_bytes",
};
const V2_FILES: Files = Files {
    limit: "memory.max",
    high: "memory.high",
    usage: "memory.current",
};

fn read_hierarchy(version: CgroupVersion, mount: &Path, path: &str) -> Option<CgroupMemory> {
    let files = match version {
        CgroupVersion::V1 => &V1_FILES,
        CgroupVersion::V2 => &V2_FILES,
    };
    let relative = path.trim_start_matches('/');
    let mut dir = mount.join(relative);
    if !dir.join(files.usage).exists() && !dir.join(files.limit).exists() {
        // cgroup namespace: our cgroup is the mount point itself.
        dir = mount.to_path_buf();
        if !dir.join(files.usage).exists() && !dir.join(files.limit).exists() {
            return None;
        }
    }
    let ancestors: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| d.starts_with(mount))
        .collect();
    let smallest = |file: &str| {
        ancestors
            .iter()
            .filter_map(|d| read_limit(version, &d.join(file)))
            .min()
    };
    let usage_bytes = read_u64(&dir.join(files.usage));
    Some(CgroupMemory {
        version,
        limit_bytes: smallest(files.limit),
        high_bytes: smallest(files.high),
        usage_bytes,
        working_set_bytes: usage_bytes.and_then(|usage| read_working_set(version, &dir, usage)),
        oom_kills: read_oom_kills(version, &dir),
        dir,
    })
}

/// A limit file's value; `None` for "max", v1's sentinel, or anything unreadable.
fn read_limit(version: CgroupVersion, file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    match version {
        CgroupVersion::V1 if value >= V1_UNLIMITED_FROM => None,
        _ => Some(value),
    }
}

/// `usage` less the inactive file pages of `memory.stat`.
fn read_working_set(version: CgroupVersion, dir: &Path, usage: u64) -> Option<u64> {
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    let field = |key: &str| {
        stat.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let inactive = match version {
        CgroupVersion::V1 => field("total_inactive_file").or_else(|| field("inactive_file")),
        CgroupVersion::V2 => field("inactive_file"),
    }?;
    Some(usage.saturating_sub(inactive))
}

fn read_u64(file: &Path) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn read_oom_kills(version: CgroupVersion, dir: &Path) -> Option<u64> {
    let file = match version {
        CgroupVersion::V1 => "memory.oom_control",
        CgroupVersion::V2 => "memory.events",
    };
    let text = fs::read_to_string(dir.join(file)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A throw-away directory tree for fixture files, removed on drop.
    pub(crate) struct Fixture(pub PathBuf);

    impl Fixture {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "limited-allocator-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(crate) fn file(&self, path: &str, text: &str) -> &Self {
            let file = self.0.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
            self
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn v2_takes_the_smallest_limit_up_the_path() {
        let f = Fixture::new("v2-nested");
        f.file("proc/self/cgroup", "0::/outer/inner\n")
            .file("sys/fs/cgroup/memory.max", "max\n")
            .file("sys/fs/cgroup/outer/memory.max", "1073741824\n")
            .file("sys/fs/cgroup/outer/inner/memory.max", "max\n")
            .file("sys/fs/cgroup/outer/inner/memory.high", "805306368\n")
            .file("sys/fs/cgroup/outer/inner/memory.current", "1000\n")
            .file(
                "sys/fs/cgroup/outer/inner/memory.events",
                "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
            );
        let cg = read_cgroup_memory(&f.0).unwrap();
        assert_eq!(cg.version, CgroupVersion::V2);
        assert_eq!(cg.limit_bytes, Some(1 << 30));
        assert_eq!(cg.high_bytes, Some(805_306_368));
        assert_eq!(cg.usage_bytes, Some(1000));
        assert_eq!(cg.oom_kills, Some(1));
    }

    #[test]
    fn v2_max_everywhere_is_unlimited() {
        let f = Fixture::new("v2-max");
        f.file("proc/self/cgroup", "0::/svc\n")
            .file("sys/fs/cgroup/svc/memory.max", "max\n")
            .file("sys/fs/cgroup/svc/memory.current", "5\n");
        let cg = read_cgroup_memory(&f.0).unwrap();
        assert_eq!(
            (cg.limit_bytes, cg.usage_bytes, cg.oom_kills),
            (None, Some(5), None)
        );
    }

    #[test]
    fn v1_sentinel_is_unlimited_and_real_limits_count() {
        let f = Fixture::new("v1");
        f.file(
            "proc/self/cgroup",
            "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        )
        .file(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "536870912\n",
        )
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
            "4096\n",
        )
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        let cg = read_cgroup_memory(&f.0).unwrap();
        assert_eq!(cg.version, CgroupVersion::V1);
        assert_eq!(cg.limit_bytes, Some(512 << 20));
        assert_eq!(cg.usage_bytes, Some(4096));
        assert_eq!(cg.oom_kills, Some(3));

        let g = Fixture::new("v1-unlimited");
        g.file("proc/self/cgroup", "4:memory:/\n").file(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(read_cgroup_memory(&g.0).unwrap().limit_bytes, None);
    }

    #[test]
    fn namespaced_cgroup_reads_the_mount_point() {
        let f = Fixture::new("v2-ns");
        f.file("proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
            .file("sys/fs/cgroup/memory.max", "2147483648\n")
            .file("sys/fs/cgroup/memory.current", "77\n");
        let cg = read_cgroup_memory(&f.0).unwrap();
        assert_eq!((cg.limit_bytes, cg.usage_bytes), (Some(2 << 30), Some(77)));
    }

    #[test]
    fn garbage_and_missing_files_are_none() {
        let f = Fixture::new("garbage");
        f.file("proc/self/cgroup", "0::/x\n")
            .file("sys/fs/cgroup/x/memory.max", "lots\n")
            .file("sys/fs/cgroup/x/memory.current", "-1\n");
        let cg = read_cgroup_memory(&f.0).unwrap();
        assert_eq!(
            (cg.limit_bytes, cg.high_bytes, cg.usage_bytes),
            (None, None, None)
        );

        let empty = Fixture::new("empty");
        assert_eq!(read_cgroup_memory(&empty.0), None);
        empty.file("proc/self/cgroup", "not a cgroup file");
        assert_eq!(read_cgroup_memory(&empty.0), None);
    }
}
