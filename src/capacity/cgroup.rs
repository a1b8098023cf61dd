//! Task-level sizes, read from the task's own cgroup.
//!
//! What the ECS agent does (amazon-ecs-agent, `agent/api/task/task_linux.go`, checked at
//! 8dfceca6): with `ECS_ENABLE_TASK_CPU_MEM_LIMIT` (on by default) every task gets a cgroup
//! and every container of it `HostConfig.CgroupParent` set to that cgroup
//! (`overrideCgroupParent`):
//! - cgroup v1: `/ecs/<task id>` (`DefaultTaskCgroupV1Prefix`), under each controller's
//!   hierarchy: `/sys/fs/cgroup/cpu/ecs/<id>/`, `/sys/fs/cgroup/memory/ecs/<id>/`;
//! - cgroup v2 (systemd): the slice `ecstasks-<task id>.slice`, which systemd places at
//!   `/sys/fs/cgroup/ecstasks.slice/ecstasks-<id>.slice/`.
//!
//! The limits there (`BuildLinuxResourceSpec`) are the task's size where it has one:
//! - task `cpu` set: a CFS quota of `cpu / 1024` CPUs over the period
//!   (`ECS_CGROUP_CPU_PERIOD`, default 100 ms): v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
//!   v2 `cpu.max` ("QUOTA PERIOD"; systemd rounds the quota up to 10 ms per second, so a
//!   `cpu` that is not a multiple of 10.24 units reads back up to 10 units high);
//! - task `cpu` unset: no quota (shares, the containers' sum, which are not a size): the
//!   containers' figures stand;
//! - task `memory` set: v1 `memory.limit_in_bytes`, v2 `memory.max`, the task's MiB;
//!   unset: no limit (the agent does not sum the containers'): their figures stand.
//!
//! So: a quota is the task's CPU size, a limit the task's memory size, and "no quota" / "no
//! limit" (or no task cgroup at all: the feature off, or a task not started by the agent)
//! means the containers' figures. A berth running as a container reads the host's
//! hierarchy through a read-only mount of `/sys/fs/cgroup` (`[capacity] cgroup_root`): with
//! cgroup v2 a container's private cgroup namespace does not show its parents.

use super::compute::TaskSize;
use std::io;
use std::path::{Path, PathBuf};

/// cgroup v1 writes "no limit" as the largest page-aligned `i64`; anything at least this
/// large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
#[error("cgroup {}: {reason}", path.display())]
pub struct CgroupError {
    pub path: PathBuf,
    pub reason: String,
}

/// Which hierarchy the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller under the root (`cpu/`, `memory/`).
    V1,
    /// The unified hierarchy at the root.
    V2,
}

impl Layout {
    /// v2 when the root is a cgroup2 mount (it has `cgroup.controllers`), else v1.
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::V2
        } else {
            Layout::V1
        }
    }
}

/// The path under a hierarchy of a `CgroupParent` as Docker writes it: a cgroupfs path
/// (`/ecs/<id>`) as is; a systemd slice (`ecstasks-<id>.slice`) expanded the way systemd
/// nests slices (`a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`). `None` for an empty
/// parent (the container is not in a task cgroup) or one that would leave the hierarchy.
pub fn relative_path(parent: &str) -> Option<PathBuf> {
    let parent = parent.trim();
    if parent.is_empty() {
        return None;
    }
    let rel = if let Some(name) = parent.strip_suffix(".slice").filter(|_| !parent.contains('/')) {
        let mut path = PathBuf::new();
        let mut prefix = String::new();
        for part in name.split('-') {
            if part.is_empty() {
                return None;
            }
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            path.push(format!("{prefix}.slice"));
        }
        path
    } else {
        PathBuf::from(parent.trim_start_matches('/'))
    };
    // Never outside the hierarchy, whatever a container's settings say.
    let safe = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    (safe && rel.components().next().is_some()).then_some(rel)
}

/// The CPU units of a CFS quota: `quota / period × 1024`, rounded to the nearest unit.
fn units_of_quota(quota: u64, period: u64) -> Option<u64> {
    (period > 0 && quota > 0).then(|| (quota * 1024 + period / 2) / period)
}

/// v2 `cpu.max`: `"max PERIOD"` (no quota) or `"QUOTA PERIOD"`.
pub fn parse_cpu_max(text: &str) -> Result<Option<u64>, String> {
    let mut it = text.split_whitespace();
    let (Some(q), p) = (it.next(), it.next()) else {
        return Err(format!("cannot read cpu.max {text:?}"));
    };
    if q == "max" {
        return Ok(None);
    }
    let quota: u64 = q.parse().map_err(|_| format!("cannot read cpu.max {text:?}"))?;
    let period: u64 =
        p.unwrap_or("100000").parse().map_err(|_| format!("cannot read cpu.max {text:?}"))?;
    Ok(units_of_quota(quota, period))
}

/// v1 `cpu.cfs_quota_us` (`-1`: none) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Result<Option<u64>, String> {
    let q: i64 =
        quota.trim().parse().map_err(|_| format!("cannot read cpu.cfs_quota_us {quota:?}"))?;
    let p: u64 =
        period.trim().parse().map_err(|_| format!("cannot read cpu.cfs_period_us {period:?}"))?;
    Ok(u64::try_from(q).ok().and_then(|q| units_of_quota(q, p)))
}

/// A memory limit in bytes (`max` or v1's huge value: none) as MiB, rounded up.
pub fn parse_memory_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let bytes: u64 = t.parse().map_err(|_| format!("cannot read the memory limit {t:?}"))?;
    Ok((bytes < V1_UNLIMITED).then(|| bytes.div_ceil(1 << 20)))
}

/// Reads task cgroups under one root.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    layout: Layout,
}

impl Cgroups {
    pub fn new(root: &Path) -> Cgroups {
        Cgroups { root: root.to_path_buf(), layout: Layout::detect(root) }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The `CgroupParent` the agent gives the containers of task `task_id` on this host's
    /// layout (`BuildCgroupRoot`): for a task none of whose containers exists yet.
    pub fn task_parent(&self, task_id: &str) -> Option<String> {
        (!task_id.is_empty()).then(|| match self.layout {
            Layout::V1 => format!("/ecs/{task_id}"),
            Layout::V2 => format!("ecstasks-{task_id}.slice"),
        })
    }

    /// The task-level sizes of the cgroup `parent` (a container's `CgroupParent`). No
    /// parent, or a parent whose cgroup does not exist: no task-level size (the
    /// containers' figures stand). A cgroup that exists but cannot be read is an error.
    pub fn task_size(&self, parent: &str) -> Result<TaskSize, CgroupError> {
        let Some(rel) = relative_path(parent) else { return Ok(TaskSize::default()) };
        match self.layout {
            Layout::V2 => {
                let dir = self.root.join(&rel);
                let cpu = read_opt(&dir.join("cpu.max"))?;
                let mem = read_opt(&dir.join("memory.max"))?;
                Ok(TaskSize {
                    cpu_units: cpu
                        .map(|(p, t)| parse_cpu_max(&t).map_err(|r| err(p, r)))
                        .transpose()?
                        .flatten(),
                    memory_mib: mem
                        .map(|(p, t)| parse_memory_limit(&t).map_err(|r| err(p, r)))
                        .transpose()?
                        .flatten(),
                })
            }
            Layout::V1 => {
                let cpu_dir = self.root.join("cpu").join(&rel);
                let quota = read_opt(&cpu_dir.join("cpu.cfs_quota_us"))?;
                let cpu = match quota {
                    None => None,
                    Some((qp, q)) => {
                        let period_path = cpu_dir.join("cpu.cfs_period_us");
                        let p = read(&period_path)?;
                        parse_cfs(&q, &p).map_err(|r| err(qp, r))?
                    }
                };
                let mem =
                    read_opt(&self.root.join("memory").join(&rel).join("memory.limit_in_bytes"))?;
                Ok(TaskSize {
                    cpu_units: cpu,
                    memory_mib: mem
                        .map(|(p, t)| parse_memory_limit(&t).map_err(|r| err(p, r)))
                        .transpose()?
                        .flatten(),
                })
            }
        }
    }
}

fn err(path: PathBuf, reason: String) -> CgroupError {
    CgroupError { path, reason }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| err(path.to_path_buf(), e.to_string()))
}

/// The file's text, `None` when it (or its cgroup) does not exist.
fn read_opt(path: &Path) -> Result<Option<(PathBuf, String)>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some((path.to_path_buf(), t))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path.to_path_buf(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_map_to_paths_under_the_hierarchy() {
        for (parent, want) in [
            ("/ecs/5a0d5a0b1b7c4f6c9a9f0e0c6d4f1a2b", Some("ecs/5a0d5a0b1b7c4f6c9a9f0e0c6d4f1a2b")),
            ("ecs/abc", Some("ecs/abc")),
            (
                "ecstasks-5a0d5a0b1b7c4f6c9a9f0e0c6d4f1a2b.slice",
                Some("ecstasks.slice/ecstasks-5a0d5a0b1b7c4f6c9a9f0e0c6d4f1a2b.slice"),
            ),
            // An old-style task id with dashes nests as systemd nests it.
            (
                "ecstasks-1f73d099-b914.slice",
                Some("ecstasks.slice/ecstasks-1f73d099.slice/ecstasks-1f73d099-b914.slice"),
            ),
            ("system.slice", Some("system.slice")),
            ("", None),
            ("/", None),
            ("/ecs/../../etc", None),
            ("a--b.slice", None),
        ] {
            assert_eq!(relative_path(parent), want.map(PathBuf::from), "{parent:?}");
        }
    }

    #[test]
    fn limits_read_as_the_agent_writes_them() {
        // (cpu units of the task definition, the quota the agent writes at the default
        // 100 ms period): v1 is exact.
        for (units, quota) in
            [(1024u64, 100_000u64), (256, 25_000), (4096, 400_000), (128, 12_500), (100, 9_765)]
        {
            assert_eq!(parse_cfs(&quota.to_string(), "100000"), Ok(Some(units)), "{units}");
        }
        assert_eq!(parse_cfs("-1\n", "100000\n"), Ok(None), "no quota");
        assert_eq!(parse_cfs("50000", "50000"), Ok(Some(1024)), "another period");
        assert!(parse_cfs("x", "100000").is_err());
        // v2: systemd's quota, rounded up to 10 ms per second.
        for (text, want) in [
            ("max 100000\n", None),
            ("100000 100000\n", Some(1024)),
            ("25000 100000", Some(256)),
            ("10000 100000", Some(102)), // 100 units, rounded up by systemd
            ("200000 100000", Some(2048)),
        ] {
            assert_eq!(parse_cpu_max(text), Ok(want), "{text:?}");
        }
        assert!(parse_cpu_max("").is_err());
        assert!(parse_cpu_max("lots 100000").is_err());
        for (text, want) in [
            ("max\n", None),
            ("9223372036854771712\n", None), // v1's "unlimited"
            ("536870912\n", Some(512)),
            ("536870913", Some(513)),
        ] {
            assert_eq!(parse_memory_limit(text), Ok(want), "{text:?}");
        }
        assert!(parse_memory_limit("lots").is_err());
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_v1_tree_reads_the_task_size_and_missing_cgroups_are_no_size() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cpu/ecs/t1/cpu.cfs_quota_us"), "50000\n");
        write(&r.join("cpu/ecs/t1/cpu.cfs_period_us"), "100000\n");
        write(&r.join("memory/ecs/t1/memory.limit_in_bytes"), "1073741824\n");
        // A task with memory only: the agent writes no quota.
        write(&r.join("cpu/ecs/t2/cpu.cfs_quota_us"), "-1\n");
        write(&r.join("cpu/ecs/t2/cpu.cfs_period_us"), "100000\n");
        write(&r.join("memory/ecs/t2/memory.limit_in_bytes"), "536870912\n");
        // A task without task-level sizes.
        write(&r.join("cpu/ecs/t3/cpu.cfs_quota_us"), "-1\n");
        write(&r.join("cpu/ecs/t3/cpu.cfs_period_us"), "100000\n");
        write(&r.join("memory/ecs/t3/memory.limit_in_bytes"), "9223372036854771712\n");
        let cg = Cgroups::new(r);
        assert_eq!(cg.layout(), Layout::V1);
        let ts = |c, m| TaskSize { cpu_units: c, memory_mib: m };
        assert_eq!(cg.task_size("/ecs/t1").unwrap(), ts(Some(512), Some(1024)));
        assert_eq!(cg.task_size("/ecs/t2").unwrap(), ts(None, Some(512)));
        assert_eq!(cg.task_size("/ecs/t3").unwrap(), ts(None, None));
        assert_eq!(cg.task_size("/ecs/gone").unwrap(), ts(None, None));
        assert_eq!(cg.task_size("").unwrap(), ts(None, None));
        assert_eq!(cg.task_parent("t1").as_deref(), Some("/ecs/t1"));
        assert_eq!(cg.task_parent(""), None);
        write(&r.join("cpu/ecs/bad/cpu.cfs_quota_us"), "garbage\n");
        write(&r.join("cpu/ecs/bad/cpu.cfs_period_us"), "100000\n");
        let e = cg.task_size("/ecs/bad").unwrap_err();
        assert!(e.to_string().contains("cpu.cfs_quota_us"), "{e}");
    }

    #[test]
    fn a_v2_tree_reads_the_slice() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cgroup.controllers"), "cpu memory pids\n");
        let dir = r.join("ecstasks.slice/ecstasks-abc.slice");
        write(&dir.join("cpu.max"), "200000 100000\n");
        write(&dir.join("memory.max"), "2147483648\n");
        let other = r.join("ecstasks.slice/ecstasks-def.slice");
        write(&other.join("cpu.max"), "max 100000\n");
        write(&other.join("memory.max"), "max\n");
        let cg = Cgroups::new(r);
        assert_eq!(cg.layout(), Layout::V2);
        assert_eq!(
            cg.task_size("ecstasks-abc.slice").unwrap(),
            TaskSize { cpu_units: Some(2048), memory_mib: Some(2048) }
        );
        assert_eq!(cg.task_size("ecstasks-def.slice").unwrap(), TaskSize::default());
        let parent = cg.task_parent("abc").unwrap();
        assert_eq!(parent, "ecstasks-abc.slice");
        assert_eq!(cg.task_size(&parent).unwrap().cpu_units, Some(2048));
    }
}
