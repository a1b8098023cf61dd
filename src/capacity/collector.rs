//! The collector: every `interval` (and soon after a container starts or stops) it reads
//! the tasks from the ECS agent, their containers' sizes from Docker (one inspect per
//! container, cached for its life) and task-level sizes from the task cgroups, and makes a
//! [`Report`]. All local: the only AWS calls are those of `control` (proportional to
//! start-ups and changes, plus the optional hourly cross-check).
//!
//! Runs on the shutdown tracker beside the log path; nothing here is awaited by an input,
//! and every call it makes is bounded by a timeout.

use super::cgroup::Cgroups;
use super::compute::{self, ContainerSize, Resources, TaskSize};
use super::report::{Identity, Report, ShapeFit, Source, SourceState, TaskView};
use crate::config::TaskShape;
use crate::docker::{self, labels};
use crate::ecs::agent::{Agent, Task};
use crate::ecs::daemons::Daemons;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A Docker inspect for a container's size that takes longer failed (retried next tick).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One task as this tick saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskObs {
    pub arn: String,
    pub family: String,
    pub version: String,
    pub known_status: String,
    pub desired_status: String,
    pub task_size: TaskSize,
    /// The containers whose size Docker told.
    pub containers: Vec<ContainerSize>,
    /// Containers not sized (not created yet, or the inspect failed).
    pub not_sized: usize,
}

/// What the tasks add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub reserved: Resources,
    pub running: u64,
    pub pending: u64,
    pub daemon: u64,
    pub tasks: Vec<TaskView>,
}

/// Add up the tasks: what each holds (task-level sizes first, see `compute`), which are
/// work (not daemons) and whether each runs or is still starting. Pure.
pub fn summarize(tasks: &[TaskObs], is_daemon: impl Fn(&str) -> bool) -> Summary {
    let mut s = Summary::default();
    for t in tasks {
        let holds = compute::holds_resources(&t.known_status);
        let reserved = if holds {
            compute::task_reservation(t.task_size, &t.containers)
        } else {
            Resources::default()
        };
        let daemon = is_daemon(&t.family);
        if holds {
            s.reserved.cpu_units += reserved.cpu_units;
            s.reserved.memory_mib += reserved.memory_mib;
            match (daemon, t.known_status.as_str()) {
                (true, _) => s.daemon += 1,
                (false, "RUNNING") => s.running += 1,
                (false, _) => s.pending += 1,
            }
        }
        let sized_by = match (t.task_size.cpu_units.is_some(), t.task_size.memory_mib.is_some()) {
            (true, true) => "task",
            (false, false) => "containers",
            _ => "task+containers",
        };
        s.tasks.push(TaskView {
            arn: t.arn.clone(),
            family: t.family.clone(),
            version: t.version.clone(),
            known_status: t.known_status.clone(),
            desired_status: t.desired_status.clone(),
            daemon,
            reserved,
            sized_by,
            containers_not_sized: t.not_sized,
        });
    }
    s
}

/// The local figures the cross-check compares with ECS's: free resources and every
/// task's state, daemons included (ECS counts them too). Pure.
pub fn local_figures(tasks: &[TaskObs], registered: Resources) -> super::control::LocalFigures {
    let s = summarize(tasks, |_| false);
    let holding = tasks.iter().filter(|t| compute::holds_resources(&t.known_status));
    let running = holding.clone().filter(|t| t.known_status == "RUNNING").count() as i64;
    let pending = holding.count() as i64 - running;
    super::control::LocalFigures { free: compute::free(registered, [s.reserved]), running, pending }
}

/// The schedulable count of each shape; `None` each while `free` is unknown.
pub fn fits(free: Option<Resources>, shapes: &[TaskShape]) -> Vec<ShapeFit> {
    shapes
        .iter()
        .map(|s| ShapeFit {
            name: s.name.clone(),
            cpu: s.cpu,
            memory: s.memory,
            schedulable: free.map(|f| {
                compute::schedulable(f, Resources { cpu_units: s.cpu, memory_mib: s.memory })
            }),
        })
        .collect()
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One source's last answer.
#[derive(Debug, Clone, Default)]
struct SourceTrack {
    last_ok: Option<Instant>,
    error: Option<String>,
    /// The last call answered.
    up: bool,
}

impl SourceTrack {
    fn ok(&mut self, now: Instant) {
        self.last_ok = Some(now);
        self.error = None;
        self.up = true;
    }
    fn failed(&mut self, e: String) {
        self.error = Some(e);
        self.up = false;
    }
}

/// The local half of the collector: the agent, Docker and the cgroups, and the state kept
/// between ticks (container sizes, idle time, source states). The AWS half (`control`)
/// sets `registered`, `status`, `drift`, `protected` and the group name.
pub struct Local {
    agent: Agent,
    engine: Option<std::sync::Arc<docker::Engine>>,
    cgroups: Cgroups,
    shapes: Vec<TaskShape>,
    daemons: Daemons,
    sizes: HashMap<String, (ContainerSize, String)>,
    sources: HashMap<Source, SourceTrack>,
    pub identity: Identity,
    /// Since when no work has run.
    idle_since: Option<(Instant, SystemTime)>,
    /// The last tick sized every container.
    all_sized: bool,
}

impl Local {
    pub fn new(
        agent: Agent,
        engine: Option<std::sync::Arc<docker::Engine>>,
        cgroups: Cgroups,
        shapes: Vec<TaskShape>,
        daemons: Daemons,
    ) -> Local {
        Local {
            agent,
            engine,
            cgroups,
            shapes,
            daemons,
            sizes: HashMap::new(),
            sources: HashMap::new(),
            identity: Identity::default(),
            idle_since: None,
            all_sized: false,
        }
    }

    pub fn source_ok(&mut self, s: Source, now: Instant) {
        self.sources.entry(s).or_default().ok(now);
    }

    pub fn source_failed(&mut self, s: Source, e: String) {
        self.sources.entry(s).or_default().failed(e);
    }

    /// This tick sized every task: Docker and the cgroups answered, and no container is
    /// waiting for its size.
    pub fn complete(&self) -> bool {
        self.up(Source::Agent)
            && self.up(Source::Docker)
            && self.up(Source::Cgroup)
            && self.all_sized
    }

    fn up(&self, s: Source) -> bool {
        self.sources.get(&s).is_some_and(|t| t.up)
    }

    /// The agent's identity (until it has registered the instance).
    pub async fn refresh_identity(&mut self) {
        if self.identity.container_instance_arn.is_some() {
            return;
        }
        match self.agent.metadata().await {
            Ok(m) => {
                self.identity.cluster = Some(m.cluster);
                self.identity.container_instance_arn = m.container_instance_arn;
            }
            Err(e) => self.source_failed(Source::Agent, e.to_string()),
        }
    }

    /// The size of one container: cached, else one bounded inspect.
    async fn size_of(&mut self, id: &str) -> Result<(ContainerSize, String), String> {
        if let Some(s) = self.sizes.get(id) {
            return Ok(s.clone());
        }
        let Some(engine) = &self.engine else { return Err("Docker is not enabled".into()) };
        let r = engine.resources(id, INSPECT_TIMEOUT).await.map_err(|e| e.to_string())?;
        let size = ContainerSize {
            cpu_shares: r.cpu_shares.max(0) as u64,
            memory_reservation: r.memory_reservation.max(0) as u64,
            memory_limit: r.memory.max(0) as u64,
        };
        self.sizes.insert(id.to_string(), (size.clone(), r.cgroup_parent.clone()));
        Ok((size, r.cgroup_parent))
    }

    /// Read the tasks and size them.
    pub async fn observe(&mut self, now: Instant) -> Option<Vec<TaskObs>> {
        self.daemons.find_own_family(self.engine.as_deref());
        let tasks: Vec<Task> = match self.agent.tasks().await {
            Ok(t) => {
                self.source_ok(Source::Agent, now);
                t
            }
            Err(e) => {
                self.source_failed(Source::Agent, e.to_string());
                return None;
            }
        };
        let mut seen = HashSet::new();
        let mut docker_error = None;
        let mut cgroup_error = None;
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            let holds = compute::holds_resources(&t.known_status);
            let mut containers = Vec::new();
            let mut not_sized = 0;
            let mut parent = String::new();
            if holds {
                for c in &t.containers {
                    if c.docker_id.is_empty() {
                        not_sized += 1;
                        continue;
                    }
                    seen.insert(c.docker_id.clone());
                    match self.size_of(&c.docker_id).await {
                        Ok((size, p)) => {
                            containers.push(size);
                            if parent.is_empty() {
                                parent = p;
                            }
                        }
                        Err(e) => {
                            not_sized += 1;
                            docker_error = Some(e);
                        }
                    }
                }
            }
            // The agent's task cgroup, where no container told it (a task still pulling).
            if holds && parent.is_empty() {
                parent = self.cgroups.task_parent(labels::task_id(&t.arn)).unwrap_or_default();
            }
            let task_size = if holds {
                match self.cgroups.task_size(&parent) {
                    Ok(s) => s,
                    Err(e) => {
                        cgroup_error = Some(e.to_string());
                        TaskSize::default()
                    }
                }
            } else {
                TaskSize::default()
            };
            out.push(TaskObs {
                arn: t.arn,
                family: t.family,
                version: t.version,
                known_status: t.known_status,
                desired_status: t.desired_status,
                task_size,
                containers,
                not_sized,
            });
        }
        self.all_sized = out.iter().all(|t| t.not_sized == 0);
        // Sizes of containers no task holds any more are not needed again.
        self.sizes.retain(|id, _| seen.contains(id));
        match docker_error {
            Some(e) => self.source_failed(Source::Docker, e),
            None => self.source_ok(Source::Docker, now),
        }
        match cgroup_error {
            Some(e) => self.source_failed(Source::Cgroup, e),
            None => self.source_ok(Source::Cgroup, now),
        }
        Some(out)
    }

    /// The report of this tick. `registered` and the AWS fields come from `control`.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &mut self,
        tasks: Option<&[TaskObs]>,
        registered: Option<Resources>,
        status: Option<String>,
        drift: Option<super::report::Drift>,
        protected: Option<bool>,
        now: Instant,
        wall: SystemTime,
    ) -> Report {
        let summary = tasks.map(|t| summarize(t, |f| self.daemons.is_daemon(f)));
        if let Some(s) = &summary {
            if s.running + s.pending == 0 {
                self.idle_since.get_or_insert((now, wall));
            } else {
                self.idle_since = None;
            }
        }
        let s = summary.unwrap_or_default();
        let free = registered.map(|r| compute::free(r, [s.reserved]));
        let fresh = tasks.is_some()
            && self.up(Source::Docker)
            && self.up(Source::Cgroup)
            && registered.is_some();
        let sources = Source::ALL
            .into_iter()
            .filter_map(|src| {
                let t = self.sources.get(&src)?;
                Some(SourceState {
                    source: src,
                    up: t.up,
                    age_seconds: t
                        .last_ok
                        .map(|at| now.saturating_duration_since(at).as_secs_f64()),
                    error: t.error.clone(),
                })
            })
            .collect();
        Report {
            computed_at_ms: unix_ms(wall),
            fresh,
            identity: self.identity.clone(),
            status,
            registered,
            reserved: s.reserved,
            free,
            shapes: fits(free, &self.shapes),
            running_tasks: s.running,
            pending_tasks: s.pending,
            daemon_tasks: s.daemon,
            idle_since_ms: self.idle_since.map(|(_, w)| unix_ms(w)),
            idle_seconds: self
                .idle_since
                .map_or(0, |(at, _)| now.saturating_duration_since(at).as_secs()),
            protected,
            drift,
            sources,
            tasks: s.tasks,
        }
    }

    /// Non-daemon tasks running or pending, for the protection decision; `None` when the
    /// agent did not answer this tick.
    pub fn work(report: &Report, tasks_known: bool) -> Option<u32> {
        tasks_known.then(|| (report.running_tasks + report.pending_tasks) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn task(family: &str, status: &str, size: TaskSize, cs: &[(u64, u64, u64)]) -> TaskObs {
        TaskObs {
            arn: format!("arn:aws:ecs:us-east-1:1:task/c/{family}"),
            family: family.into(),
            version: "1".into(),
            known_status: status.into(),
            desired_status: "RUNNING".into(),
            task_size: size,
            containers: cs
                .iter()
                .map(|&(cpu, res, lim)| ContainerSize {
                    cpu_shares: cpu,
                    memory_reservation: res * MIB,
                    memory_limit: lim * MIB,
                })
                .collect(),
            not_sized: 0,
        }
    }

    #[test]
    fn tasks_add_up_daemons_hold_but_are_not_work_stopped_hold_nothing() {
        let sized = TaskSize { cpu_units: Some(1024), memory_mib: Some(2048) };
        let tasks = [
            task("web", "RUNNING", TaskSize::default(), &[(256, 128, 512), (2, 0, 64)]),
            task("batch", "PULLED", sized, &[]),
            task("berth", "RUNNING", TaskSize::default(), &[(128, 64, 0)]),
            task("old", "STOPPED", sized, &[(1024, 0, 1024)]),
        ];
        let s = summarize(&tasks, |f| f == "berth");
        assert_eq!(
            s.reserved,
            Resources { cpu_units: 256 + 1024 + 128, memory_mib: 128 + 64 + 2048 + 64 }
        );
        assert_eq!((s.running, s.pending, s.daemon), (1, 1, 1));
        let by: Vec<_> =
            s.tasks.iter().map(|t| (t.family.as_str(), t.sized_by, t.daemon)).collect();
        assert_eq!(
            by,
            [
                ("web", "containers", false),
                ("batch", "task", false),
                ("berth", "containers", true),
                ("old", "task", false)
            ]
        );
        assert_eq!(s.tasks[3].reserved, Resources::default(), "a stopped task holds nothing");
        assert_eq!(summarize(&[], |_| false), Summary::default());
    }

    #[test]
    fn shapes_fit_only_when_free_is_known() {
        let shapes = [
            TaskShape { name: "large".into(), cpu: 4096, memory: 15722 },
            TaskShape { name: "worker".into(), cpu: 1024, memory: 2048 },
        ];
        let free = Resources { cpu_units: 6144, memory_mib: 7000 };
        let f = fits(Some(free), &shapes);
        assert_eq!(f.iter().map(|s| s.schedulable).collect::<Vec<_>>(), [Some(0), Some(3)]);
        assert!(fits(None, &shapes).iter().all(|s| s.schedulable.is_none()));
    }
}
