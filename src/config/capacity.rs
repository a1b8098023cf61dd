//! `[ecs]` (the ECS agent and the AWS identity capacity and drain call ECS, Auto Scaling and
//! CloudWatch Logs with) and `[capacity]` (per-host free capacity, its publishers and
//! scale-in protection): the keys as written, their checks and the typed config.

use super::aws::{self, AwsAuth, RawAws};
use super::values::{default_true, Dur};
use super::{ConfigError, Ctx};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// `[ecs]`
#[derive(Debug, Clone)]
pub struct EcsConfig {
    /// The ECS agent's introspection API, without a trailing `/`.
    pub agent_url: String,
    /// Region and credentials of the ECS, Auto Scaling and CloudWatch Logs calls.
    pub aws: AwsAuth,
    /// Task definition families that are daemons: they hold resources but are not work
    /// (capacity does not count them as work, the drain does not wait for them).
    pub daemon_task_families: Vec<String>,
}

/// `[capacity]`
#[derive(Debug, Clone)]
pub struct CapacityConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// `None`: no periodic cross-check (`"0s"`).
    pub ecs_api_interval: Option<Duration>,
    pub drift_tolerance_cpu_units: u64,
    pub drift_tolerance_memory_mib: u64,
    pub task_shapes: Vec<TaskShape>,
    pub cgroup_root: PathBuf,
    pub publish: PublishConfig,
    pub scale_in_protection: ProtectionConfig,
}

/// One task size whose schedulable count is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskShape {
    /// The `shape` label and the `TaskShape` dimension.
    pub name: String,
    /// CPU units (1024 per vCPU); 0: the shape does not need CPU.
    #[serde(default)]
    pub cpu: u64,
    /// Memory MiB; 0: the shape does not need memory.
    #[serde(default)]
    pub memory: u64,
}

/// `[capacity.publish]`
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub prometheus: bool,
    pub cloudwatch_emf: bool,
    pub emf_log_group: String,
    pub namespace: String,
    pub dimensions: Vec<Vec<Dimension>>,
    pub ecs_attributes: bool,
}

/// ECS's limit of custom attributes on one container instance.
pub const MAX_ECS_ATTRIBUTES: usize = 10;

/// A dimension EMF events can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    ClusterName,
    TaskShape,
    AutoScalingGroupName,
    InstanceId,
    InstanceType,
    AvailabilityZone,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::ClusterName,
        Dimension::TaskShape,
        Dimension::AutoScalingGroupName,
        Dimension::InstanceId,
        Dimension::InstanceType,
        Dimension::AvailabilityZone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::ClusterName => "ClusterName",
            Dimension::TaskShape => "TaskShape",
            Dimension::AutoScalingGroupName => "AutoScalingGroupName",
            Dimension::InstanceId => "InstanceId",
            Dimension::InstanceType => "InstanceType",
            Dimension::AvailabilityZone => "AvailabilityZone",
        }
    }

    fn parse(s: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// `[capacity.scale_in_protection]`
#[derive(Debug, Clone)]
pub struct ProtectionConfig {
    pub enabled: bool,
    pub idle_grace: Duration,
}

// --- the keys as written -----------------------------------------------------------------

pub(super) const DEFAULT_AGENT_URL: &str = "http://127.0.0.1:51678";

/// `[ecs]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEcs {
    /// The ECS container agent's introspection API (`/v1/metadata`, `/v1/tasks`), on this
    /// host: `http://HOST:PORT`. Shared by capacity and the drain.
    #[serde(default = "default_agent_url")]
    pub agent_url: Spanned<String>,
    /// Task definition families that are daemons (they hold resources but are not work:
    /// capacity does not count them, the drain does not wait for them); berth's own family
    /// is found from its container's labels.
    #[serde(default)]
    pub daemon_task_families: Vec<Spanned<String>>,
    /// The region of the ECS, Auto Scaling and CloudWatch Logs calls of capacity and the
    /// drain; empty or absent: `AWS_REGION`, the profile, then IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Spanned<String>>,
    /// A role those calls assume (STS AssumeRole, session name `berth`) with the default
    /// credentials (the instance role); must start with `arn:`; empty for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<Spanned<String>>,
    /// The external id the role's trust policy asks for; only with `role_arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Spanned<String>>,
}

impl Default for RawEcs {
    fn default() -> Self {
        RawEcs {
            agent_url: default_agent_url(),
            daemon_task_families: Vec::new(),
            region: None,
            role_arn: None,
            external_id: None,
        }
    }
}

fn default_agent_url() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_AGENT_URL.to_string())
}

/// `[capacity]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapacity {
    /// Compute this host's free capacity from the ECS agent, Docker and the task cgroups.
    #[serde(default)]
    pub enabled: bool,
    /// How often the figures are recomputed and published (also at once when a container
    /// starts or stops). At least 1 s.
    #[serde(default = "default_interval")]
    pub interval: Spanned<Dur>,
    /// How often `DescribeContainerInstances` cross-checks the local figures (jittered ±10%);
    /// `"0s"`: only the one call at start that reads the registered resources.
    #[serde(default = "default_ecs_api_interval")]
    pub ecs_api_interval: Spanned<Dur>,
    /// Differences between the local figures and ECS's `remainingResources` up to this many
    /// CPU units are not drift.
    #[serde(default)]
    pub drift_tolerance_cpu_units: u64,
    /// The same for memory MiB.
    #[serde(default)]
    pub drift_tolerance_memory_mib: u64,
    /// Task sizes whose schedulable count is reported: `{ name, cpu, memory }`, names
    /// unique.
    #[serde(default)]
    pub task_shapes: Vec<Spanned<TaskShape>>,
    /// Where the host's cgroup file system is mounted (task-level sizes are read under it);
    /// a container running berth mounts the host's `/sys/fs/cgroup` read-only.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// Where the figures go.
    #[serde(default)]
    pub publish: RawPublish,
    /// Protect this instance from scale-in while work runs on it.
    #[serde(default)]
    pub scale_in_protection: RawProtection,
}

impl Default for RawCapacity {
    fn default() -> Self {
        RawCapacity {
            enabled: false,
            interval: default_interval(),
            ecs_api_interval: default_ecs_api_interval(),
            drift_tolerance_cpu_units: 0,
            drift_tolerance_memory_mib: 0,
            task_shapes: Vec::new(),
            cgroup_root: default_cgroup_root(),
            publish: RawPublish::default(),
            scale_in_protection: RawProtection::default(),
        }
    }
}

/// `[capacity.publish]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    /// `berth_capacity_*` gauges on the admin endpoint's `/metrics`.
    #[serde(default = "default_true")]
    pub prometheus: bool,
    /// CloudWatch metrics as Embedded Metric Format events, put into `emf_log_group`.
    #[serde(default)]
    pub cloudwatch_emf: bool,
    /// The log group of the EMF events (created if missing); the stream is the instance id.
    #[serde(default = "default_emf_log_group")]
    pub emf_log_group: Spanned<String>,
    /// The CloudWatch metric namespace (not `AWS/…`).
    #[serde(default = "default_namespace")]
    pub namespace: Spanned<String>,
    /// Dimension sets of the EMF metrics, from `ClusterName`, `TaskShape`,
    /// `AutoScalingGroupName`, `InstanceId`, `InstanceType`, `AvailabilityZone`. Sets with
    /// `TaskShape` carry the schedulable counts; the host's figures go with the sets
    /// without it.
    #[serde(default = "default_dimensions")]
    pub dimensions: Spanned<Vec<Spanned<Vec<Spanned<String>>>>>,
    /// Also as ECS custom attributes of this container instance,
    /// `berth.schedulable.<shape>` = the count (`PutAttributes`): only when a count changed,
    /// at most once per `interval`. ECS allows 10 custom attributes per instance, yours
    /// included.
    #[serde(default = "no")]
    pub ecs_attributes: Spanned<bool>,
}

impl Default for RawPublish {
    fn default() -> Self {
        RawPublish {
            prometheus: true,
            cloudwatch_emf: false,
            emf_log_group: default_emf_log_group(),
            namespace: default_namespace(),
            dimensions: default_dimensions(),
            ecs_attributes: no(),
        }
    }
}

/// `[capacity.scale_in_protection]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtection {
    /// `SetInstanceProtection` on this instance while non-daemon tasks run here (only on a
    /// change); never while the instance is DRAINING.
    #[serde(default)]
    pub enabled: bool,
    /// Protection is lifted after this long without work (a task that ends and another
    /// that starts within it does not flap it).
    #[serde(default = "default_idle_grace")]
    pub idle_grace: Dur,
}

impl Default for RawProtection {
    fn default() -> Self {
        RawProtection { enabled: false, idle_grace: default_idle_grace() }
    }
}

fn no() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(60)))
}
fn default_ecs_api_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(3600)))
}
fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_emf_log_group() -> Spanned<String> {
    Spanned::new(0..0, "/berth/capacity".to_string())
}
fn default_namespace() -> Spanned<String> {
    Spanned::new(0..0, "Berth".to_string())
}
fn default_dimensions() -> Spanned<Vec<Spanned<Vec<Spanned<String>>>>> {
    let set = |names: &[&str]| {
        Spanned::new(0..0, names.iter().map(|n| Spanned::new(0..0, n.to_string())).collect())
    };
    Spanned::new(0..0, vec![set(&["ClusterName", "TaskShape"]), set(&["ClusterName"])])
}
fn default_idle_grace() -> Dur {
    Dur(Duration::from_secs(600))
}

/// EMF's limit of dimensions in one dimension set.
pub const MAX_DIMENSIONS_PER_SET: usize = 30;

// --- checks ------------------------------------------------------------------------------

pub(super) fn build_ecs(raw: RawEcs, ctx: &Ctx<'_>) -> Result<EcsConfig, ConfigError> {
    let url = raw.agent_url.get_ref().trim().trim_end_matches('/').to_string();
    let ok = url
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']));
    if !ok {
        return Err(ctx.error(
            raw.agent_url.span(),
            "ecs.agent_url".into(),
            format!("{url:?} is not an agent address (http://HOST:PORT, e.g. {DEFAULT_AGENT_URL})"),
            true,
        ));
    }
    // The same three keys, spelled and checked as in every section that talks to AWS.
    let mut families = Vec::new();
    for f in &raw.daemon_task_families {
        let name = f.get_ref().trim();
        if name.is_empty() {
            return Err(ctx.error(
                f.span(),
                "ecs.daemon_task_families".into(),
                "a family name is empty".into(),
                true,
            ));
        }
        families.push(name.to_string());
    }
    let keys = RawAws { region: raw.region, role_arn: raw.role_arn, external_id: raw.external_id };
    Ok(EcsConfig {
        agent_url: url,
        aws: aws::build(&keys, "ecs", ctx)?,
        daemon_task_families: families,
    })
}

pub(super) fn build(raw: RawCapacity, ctx: &Ctx<'_>) -> Result<CapacityConfig, ConfigError> {
    let err = |span: std::ops::Range<usize>, key: &str, message: String| {
        ctx.error(span, format!("capacity.{key}"), message, true)
    };
    if raw.interval.get_ref().0 < Duration::from_secs(1) {
        return Err(err(raw.interval.span(), "interval", "must be at least 1s".into()));
    }
    let api = raw.ecs_api_interval.get_ref().0;
    if !api.is_zero() && api < Duration::from_secs(1) {
        return Err(err(
            raw.ecs_api_interval.span(),
            "ecs_api_interval",
            "must be \"0s\" (off) or at least 1s".into(),
        ));
    }
    let mut shapes = Vec::new();
    let mut names = HashSet::new();
    for s in &raw.task_shapes {
        let shape = s.get_ref();
        let name = shape.name.trim();
        let bad = |m: String| err(s.span(), "task_shapes", m);
        if name.is_empty() {
            return Err(bad("a shape's name is empty".into()));
        }
        // Shape names are label values, dimension values and ECS attribute names: keep to
        // what all of them take.
        if name.len() > 100
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad(format!("shape name {name:?} must be 1-100 of A-Z a-z 0-9 . _ -")));
        }
        if !names.insert(name.to_string()) {
            return Err(bad(format!("shape {name:?} is named twice")));
        }
        if shape.cpu == 0 && shape.memory == 0 {
            return Err(bad(format!("shape {name:?} needs cpu or memory (both are 0)")));
        }
        shapes.push(TaskShape { name: name.to_string(), cpu: shape.cpu, memory: shape.memory });
    }
    let publish = build_publish(&raw.publish, ctx)?;
    if publish.ecs_attributes && shapes.len() > MAX_ECS_ATTRIBUTES {
        return Err(err(
            raw.publish.ecs_attributes.span(),
            "publish.ecs_attributes",
            format!(
                "{} task shapes, but ECS allows {MAX_ECS_ATTRIBUTES} custom attributes per container instance",
                shapes.len()
            ),
        ));
    }
    Ok(CapacityConfig {
        enabled: raw.enabled,
        interval: raw.interval.get_ref().0,
        ecs_api_interval: (!api.is_zero()).then_some(api),
        drift_tolerance_cpu_units: raw.drift_tolerance_cpu_units,
        drift_tolerance_memory_mib: raw.drift_tolerance_memory_mib,
        task_shapes: shapes,
        cgroup_root: raw.cgroup_root,
        publish,
        scale_in_protection: ProtectionConfig {
            enabled: raw.scale_in_protection.enabled,
            idle_grace: raw.scale_in_protection.idle_grace.0,
        },
    })
}

fn build_publish(raw: &RawPublish, ctx: &Ctx<'_>) -> Result<PublishConfig, ConfigError> {
    let err = |span: std::ops::Range<usize>, key: &str, message: String| {
        ctx.error(span, format!("capacity.publish.{key}"), message, true)
    };
    let group = raw.emf_log_group.get_ref().trim();
    // CloudWatch Logs: 1-512 characters of [.\-_/#A-Za-z0-9].
    if group.is_empty()
        || group.len() > 512
        || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/#".contains(&b))
    {
        return Err(err(
            raw.emf_log_group.span(),
            "emf_log_group",
            format!("{group:?} is not a log group name (1-512 of A-Z a-z 0-9 . _ - / #)"),
        ));
    }
    let ns = raw.namespace.get_ref().trim();
    // CloudWatch namespaces: 1-255 of [0-9A-Za-z.\-_/#:], not starting with "AWS/".
    if ns.is_empty()
        || ns.len() > 255
        || ns.starts_with("AWS/")
        || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/#:".contains(&b))
    {
        return Err(err(
            raw.namespace.span(),
            "namespace",
            format!("{ns:?} is not a CloudWatch namespace (1-255 of A-Z a-z 0-9 . _ - / # :, not AWS/...)"),
        ));
    }
    let mut sets = Vec::new();
    for set in raw.dimensions.get_ref() {
        if set.get_ref().len() > MAX_DIMENSIONS_PER_SET {
            return Err(err(
                set.span(),
                "dimensions",
                format!("a dimension set has more than {MAX_DIMENSIONS_PER_SET} dimensions"),
            ));
        }
        let mut dims = Vec::new();
        for d in set.get_ref() {
            let Some(dim) = Dimension::parse(d.get_ref().trim()) else {
                let known: Vec<_> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
                return Err(err(
                    d.span(),
                    "dimensions",
                    format!(
                        "unknown dimension {:?} (expected one of {})",
                        d.get_ref(),
                        known.join(", ")
                    ),
                ));
            };
            if dims.contains(&dim) {
                return Err(err(
                    d.span(),
                    "dimensions",
                    format!("dimension {:?} is in one set twice", dim.as_str()),
                ));
            }
            dims.push(dim);
        }
        if sets.contains(&dims) {
            return Err(err(set.span(), "dimensions", "a dimension set is listed twice".into()));
        }
        sets.push(dims);
    }
    Ok(PublishConfig {
        prometheus: raw.prometheus,
        cloudwatch_emf: raw.cloudwatch_emf,
        emf_log_group: group.to_string(),
        namespace: ns.to_string(),
        dimensions: sets,
        ecs_attributes: *raw.ecs_attributes.get_ref(),
    })
}

// --- back to the file's shape ------------------------------------------------------------

pub(super) fn ecs_to_raw(c: &EcsConfig) -> RawEcs {
    let keys = aws::to_raw(&c.aws);
    RawEcs {
        agent_url: Spanned::new(0..0, c.agent_url.clone()),
        daemon_task_families: c.daemon_task_families.iter().map(|f| sp(f.clone())).collect(),
        region: keys.region,
        role_arn: keys.role_arn,
        external_id: keys.external_id,
    }
}

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

pub(super) fn to_raw(c: &CapacityConfig) -> RawCapacity {
    RawCapacity {
        enabled: c.enabled,
        interval: sp(Dur(c.interval)),
        ecs_api_interval: sp(Dur(c.ecs_api_interval.unwrap_or_default())),
        drift_tolerance_cpu_units: c.drift_tolerance_cpu_units,
        drift_tolerance_memory_mib: c.drift_tolerance_memory_mib,
        task_shapes: c.task_shapes.iter().map(|s| sp(s.clone())).collect(),
        cgroup_root: c.cgroup_root.clone(),
        publish: RawPublish {
            prometheus: c.publish.prometheus,
            cloudwatch_emf: c.publish.cloudwatch_emf,
            emf_log_group: sp(c.publish.emf_log_group.clone()),
            namespace: sp(c.publish.namespace.clone()),
            dimensions: sp(c
                .publish
                .dimensions
                .iter()
                .map(|set| sp(set.iter().map(|d| sp(d.as_str().to_string())).collect()))
                .collect()),
            ecs_attributes: sp(c.publish.ecs_attributes),
        },
        scale_in_protection: RawProtection {
            enabled: c.scale_in_protection.enabled,
            idle_grace: Dur(c.scale_in_protection.idle_grace),
        },
    }
}
