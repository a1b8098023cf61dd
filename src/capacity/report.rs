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
    /// Containers of it whose size is not known yet (not created, or Docker did not
    /// answer): `reserved` leaves them out.
    #[serde(skip_serializing_if = "is_zero")]
    pub containers_not_sized: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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

/// The report as text for `berth capacity`, from its JSON (what the admin endpoint sends;
/// the CLI may talk to a daemon of another version, so it reads fields by name).
pub fn text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut o = String::new();
    let id = &v["identity"];
    let _ = writeln!(o, "cluster       {}", s(&id["cluster"]));
    let _ = writeln!(
        o,
        "instance      {} ({}, {})",
        s(&id["instance_id"]),
        s(&id["instance_type"]),
        s(&id["availability_zone"])
    );
    let _ = writeln!(o, "container     {}", s(&id["container_instance_arn"]));
    let _ = writeln!(
        o,
        "status        {}{}",
        s(&v["status"]),
        if v["fresh"] == true { "" } else { "  (figures not current: see sources)" }
    );
    let res = |r: &serde_json::Value| {
        if r.is_null() {
            "-".to_string()
        } else {
            format!("{} cpu units, {} MiB", s(&r["cpu_units"]), s(&r["memory_mib"]))
        }
    };
    let _ = writeln!(o, "registered    {}", res(&v["registered"]));
    let _ = writeln!(o, "reserved      {}", res(&v["reserved"]));
    let _ = writeln!(o, "free          {}", res(&v["free"]));
    for shape in v["shapes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "fits          {} x {} ({} cpu, {} MiB)",
            s(&shape["schedulable"]),
            s(&shape["name"]),
            s(&shape["cpu"]),
            s(&shape["memory"])
        );
    }
    let _ = writeln!(
        o,
        "tasks         {} running, {} pending, {} daemon",
        s(&v["running_tasks"]),
        s(&v["pending_tasks"]),
        s(&v["daemon_tasks"])
    );
    let idle = v["idle_seconds"].as_u64().unwrap_or(0);
    let _ = writeln!(
        o,
        "idle          {}",
        if v["idle_since_ms"].is_null() { "no".to_string() } else { format!("{idle} s") }
    );
    let _ = writeln!(o, "protected     {}", s(&v["protected"]));
    if let Some(d) = v["drift"].as_object() {
        let _ = writeln!(
            o,
            "drift         cpu {} units, memory {} MiB, running {}, pending {}{}",
            s(&d["cpu_units"]),
            s(&d["memory_mib"]),
            s(&d["running_tasks"]),
            s(&d["pending_tasks"]),
            if d["drifted"] == true { "  (beyond tolerance)" } else { "" }
        );
    }
    for src in v["sources"].as_array().into_iter().flatten() {
        let age =
            src["age_seconds"].as_f64().map_or("never".to_string(), |a| format!("{a:.0} s ago"));
        let _ = writeln!(
            o,
            "source        {:<8} {}  {}{}",
            s(&src["source"]),
            if src["up"] == true { "up  " } else { "DOWN" },
            age,
            src["error"].as_str().map(|e| format!("  {e}")).unwrap_or_default()
        );
    }
    o
}
