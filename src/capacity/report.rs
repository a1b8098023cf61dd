//! What capacity knows of this host at one tick: the one value every publisher reads
//! (Prometheus gauges, `GET /v1/capacity`, EMF, `berth capacity`). Built by the collector,
//! read-only everywhere else.

use super::compute::Resources;
use serde::Serialize;

/// Where the figures come from. Each is reported with whether its last call answered and
/// how old its figures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The ECS agent's introspection API: identity and tasks.
    Agent,
    /// The Docker engine: the containers' sizes.
    Docker,
    /// The task cgroups: task-level sizes.
    Cgroup,
    /// `DescribeContainerInstances`: registered resources and the cross-check.
    EcsApi,
    /// The instance metadata service: instance id, zone, type.
    Imds,
}

impl Source {
    pub const ALL: [Source; 5] =
        [Source::Agent, Source::Docker, Source::Cgroup, Source::EcsApi, Source::Imds];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Agent => "agent",
            Source::Docker => "docker",
            Source::Cgroup => "cgroup",
            Source::EcsApi => "ecs_api",
            Source::Imds => "imds",
        }
    }
}

/// One source's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceState {
    pub source: Source,
    /// Its last call answered.
    pub up: bool,
    /// Seconds since it last answered; `None`: never.
    pub age_seconds: Option<f64>,
    /// Why its last call failed (no secrets: these are local addresses and API codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Who this host is. Fields are `None` until their source has answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub auto_scaling_group: Option<String>,
}

/// One configured task shape and how many of it still fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShapeFit {
    pub name: String,
    pub cpu: u64,
    pub memory: u64,
    /// `None` while the free resources are unknown.
    pub schedulable: Option<u64>,
}

/// A task on this host as capacity counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    pub arn: String,
    pub family: String,
    pub version: String,
    pub known_status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub desired_status: String,
    /// A daemon: holds resources, is not work.
    pub daemon: bool,
    /// What ECS accounts for it (0 for a task that no longer holds resources).
    pub reserved: Resources,
    /// `task` (its cgroup's limits) or `containers` (the sum over its containers), per
    /// resource: `"task"`, `"containers"`, `"task+containers"` when one of each.
    pub sized_by: &'static str,
}

/// The local figures against ECS's own, from the last `DescribeContainerInstances`.
/// Differences are local minus ECS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Unix time of the call, ms.
    pub checked_at_ms: u64,
    pub cpu_units: i64,
    pub memory_mib: i64,
    pub running_tasks: i64,
    pub pending_tasks: i64,
    /// ECS's `status` of the container instance (`ACTIVE`, `DRAINING`, …).
    pub status: String,
    pub agent_connected: bool,
    /// A difference beyond the configured tolerances.
    pub drifted: bool,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Unix time this was computed, ms.
    pub computed_at_ms: u64,
    /// Every source a published figure depends on (agent, Docker, cgroups, the registered
    /// resources) answered at this tick: figures may be published as current.
    pub fresh: bool,
    pub identity: Identity,
    /// The container instance's ECS status as last known (the cross-check, or the drain).
    pub status: Option<String>,
    /// What the agent registered (`DescribeContainerInstances` at start).
    pub registered: Option<Resources>,
    /// What the tasks here hold.
    pub reserved: Resources,
    /// Registered minus reserved; `None` while the registered resources are unknown.
    pub free: Option<Resources>,
    pub shapes: Vec<ShapeFit>,
    /// Non-daemon tasks RUNNING here.
    pub running_tasks: u64,
    /// Non-daemon tasks placed here and not yet RUNNING.
    pub pending_tasks: u64,
    /// Daemon tasks holding resources here (berth's own included).
    pub daemon_tasks: u64,
    /// Unix time since which no non-daemon task has run, ms; `None` while one runs.
    pub idle_since_ms: Option<u64>,
    /// Seconds idle (0 while work runs).
    pub idle_seconds: u64,
    /// Scale-in protection as last set; `None`: not managed, or not known yet.
    pub protected: Option<bool>,
    pub drift: Option<Drift>,
    pub sources: Vec<SourceState>,
    pub tasks: Vec<TaskView>,
}

impl Report {
    /// The state of one source.
    pub fn source(&self, s: Source) -> Option<&SourceState> {
        self.sources.iter().find(|x| x.source == s)
    }

    /// Seconds since the oldest figure a publisher relies on was read: the largest age of
    /// the agent, Docker and cgroup sources (those of a report's every tick).
    pub fn age_seconds(&self) -> Option<f64> {
        [Source::Agent, Source::Docker, Source::Cgroup]
            .into_iter()
            .map(|s| self.source(s).and_then(|x| x.age_seconds))
            .try_fold(0.0f64, |acc, a| a.map(|a| acc.max(a)))
    }
}
