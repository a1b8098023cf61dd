//! `[enrich.docker]`, `[enrich.ec2]`, `[enrich.partial]` and `[enrich.multiline]`: typed,
//! with the checks that span several values (known field names, no key added twice).

use super::values::{de_parsed, default_true, one_of};
use super::values::{Dur, Size};
use super::{ConfigError, Ctx};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;
use toml::Spanned;

// --- the keys as written -----------------------------------------------------------------

/// `[enrich]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrich {
    /// Container, image and ECS task fields from the Docker engine.
    #[serde(default)]
    pub docker: RawEnrichDocker,
    /// Host fields from the EC2 instance metadata service (IMDSv2).
    #[serde(default)]
    pub ec2: RawEnrichEc2,
    /// Docker's partial messages (lines over 16 KiB) joined into one record.
    #[serde(default)]
    pub partial: RawJoin,
    /// Lines of one container grouped into one record, for containers labelled
    /// `berth.multiline.start` with a start-line regex.
    #[serde(default)]
    pub multiline: RawJoin,
}

/// `[enrich.docker]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrichDocker {
    /// Look containers up in the Docker engine and add their fields to Docker's records.
    /// Without a reachable engine records pass through unchanged (one warning).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The engine's API: `unix:///path`, `tcp://HOST:PORT` or `http://HOST:PORT`; empty
    /// means `$DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    #[serde(default = "default_socket")]
    pub socket: Spanned<String>,
    /// Which fields to add, in this order.
    #[serde(default = "default_docker_fields")]
    pub fields: Spanned<Vec<Spanned<String>>>,
    /// Container labels to copy: `"NAME"` (key = the label's name) or `"NAME=KEY"`.
    #[serde(default)]
    pub labels: Vec<Spanned<String>>,
    /// Container environment variables to copy: `"NAME"` or `"NAME=KEY"`.
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// How long a removed container's fields are kept, for its last lines still in flight.
    #[serde(default = "default_removed_grace_period")]
    pub removed_grace_period: Dur,
    /// The longest a new container's first line waits for its inspect (that connection
    /// waits; the line then goes on without the fields). At most 60 s.
    #[serde(default = "default_inspect_wait", deserialize_with = "de_inspect_wait")]
    pub inspect_wait: Dur,
    /// Most containers cached; the least recently used is dropped beyond it.
    #[serde(default = "default_max_containers", deserialize_with = "de_max_containers")]
    pub max_containers: usize,
}

impl Default for RawEnrichDocker {
    fn default() -> Self {
        RawEnrichDocker {
            enabled: true,
            socket: default_socket(),
            fields: default_docker_fields(),
            labels: Vec::new(),
            env: Vec::new(),
            removed_grace_period: default_removed_grace_period(),
            inspect_wait: default_inspect_wait(),
            max_containers: default_max_containers(),
        }
    }
}

/// `[enrich.ec2]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrichEc2 {
    /// Add `ec2_instance_id`, `availability_zone`, `region` and `instance_type` from
    /// IMDSv2; off EC2 they are absent (one warning).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `all`: every record gets the host fields; `docker`: only records from Docker's
    /// driver (others pass through without being copied).
    #[serde(default)]
    pub apply_to: ApplyTo,
}

impl Default for RawEnrichEc2 {
    fn default() -> Self {
        RawEnrichEc2 { enabled: true, apply_to: ApplyTo::default() }
    }
}

impl<'de> Deserialize<'de> for ApplyTo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            one_of(s, "apply_to", &[("all", ApplyTo::All), ("docker", ApplyTo::Docker)])
        })
    }
}

impl Serialize for ApplyTo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn default_socket() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_docker_fields() -> Spanned<Vec<Spanned<String>>> {
    let v =
        DockerField::DEFAULTS.iter().map(|f| Spanned::new(0..0, f.as_str().to_string())).collect();
    Spanned::new(0..0, v)
}

fn default_removed_grace_period() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_inspect_wait() -> Dur {
    Dur(Duration::from_secs(2))
}

fn de_inspect_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let w = Dur::deserialize(d)?;
    if w.0 > Duration::from_secs(60) {
        return Err(de::Error::custom(
            "at most 60s: a longer wait holds up the connection's other lines too",
        ));
    }
    Ok(w)
}

fn default_max_containers() -> usize {
    4096
}

fn de_max_containers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

/// `[enrich.partial]`, `[enrich.multiline]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJoin {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A group larger than this is sent as it is, marked incomplete.
    #[serde(default = "default_join_max_size")]
    pub max_size: Spanned<Size>,
    /// Partial: how long after its first part a line may wait for the rest. Multiline: how
    /// long after its last line a group waits for more.
    #[serde(default = "default_join_timeout")]
    pub timeout: Spanned<Dur>,
}

impl Default for RawJoin {
    fn default() -> Self {
        RawJoin {
            enabled: true,
            max_size: default_join_max_size(),
            timeout: default_join_timeout(),
        }
    }
}

fn default_join_max_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(1 << 20))
}

fn default_join_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(5)))
}

// --- the typed config --------------------------------------------------------------------

/// `[enrich]`
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    pub docker: DockerEnrichConfig,
    pub ec2: Ec2EnrichConfig,
    /// `[enrich.partial]`: `None` when disabled.
    pub partial: Option<crate::reassemble::Limits>,
    /// `[enrich.multiline]`: `None` when disabled.
    pub multiline: Option<crate::reassemble::Limits>,
}

/// `[enrich.docker]`: see `RawEnrichDocker` for each key's meaning.
#[derive(Debug, Clone)]
pub struct DockerEnrichConfig {
    pub enabled: bool,
    /// `None`: `$DOCKER_HOST`, else `unix:///var/run/docker.sock` (resolved at start).
    pub socket: Option<String>,
    /// Distinct, in the file's order.
    pub fields: Vec<DockerField>,
    /// Label name → record key; keys distinct from each other and from `fields`.
    pub labels: Vec<CopyKey>,
    /// Environment variable name → record key; same rules.
    pub env: Vec<CopyKey>,
    pub removed_grace_period: Duration,
    /// At most 60 s.
    pub inspect_wait: Duration,
    /// At least 1.
    pub max_containers: usize,
}

/// `"NAME"` or `"NAME=KEY"` of `labels` and `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyKey {
    /// The label or variable to read.
    pub name: String,
    /// The record key it is written as.
    pub key: String,
}

impl CopyKey {
    fn parse(s: &str) -> Result<CopyKey, String> {
        let (name, key) = s.split_once('=').unwrap_or((s, s));
        if name.is_empty() || key.is_empty() {
            return Err(format!("{s:?}: expected \"NAME\" or \"NAME=KEY\" with both non-empty"));
        }
        Ok(CopyKey { name: name.to_string(), key: key.to_string() })
    }

    fn to_raw(&self) -> String {
        if self.name == self.key {
            self.name.clone()
        } else {
            format!("{}={}", self.name, self.key)
        }
    }
}

/// `[enrich.ec2]`
#[derive(Debug, Clone)]
pub struct Ec2EnrichConfig {
    pub enabled: bool,
    pub apply_to: ApplyTo,
}

/// Which records get the host fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApplyTo {
    /// Every record.
    #[default]
    All,
    /// Records of Docker's driver (with a `container_id`) only.
    Docker,
}

impl ApplyTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Docker => "docker",
        }
    }
}

/// A field `[enrich.docker] fields` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerField {
    /// The container's name without Docker's leading `/`.
    ContainerName,
    /// The image as the container was started with it (`Config.Image`).
    Image,
    /// Label `com.amazonaws.ecs.cluster`.
    EcsCluster,
    /// Label `com.amazonaws.ecs.task-arn`.
    EcsTaskArn,
    /// The last `/` part of the task ARN.
    EcsTaskId,
    /// Label `com.amazonaws.ecs.task-definition-family`.
    EcsTaskDefinitionFamily,
    /// Label `com.amazonaws.ecs.task-definition-version`.
    EcsTaskDefinitionRevision,
    /// Label `com.amazonaws.ecs.container-name`.
    EcsContainerName,
}

impl DockerField {
    pub const ALL: [DockerField; 8] = [
        DockerField::ContainerName,
        DockerField::Image,
        DockerField::EcsCluster,
        DockerField::EcsTaskArn,
        DockerField::EcsTaskId,
        DockerField::EcsTaskDefinitionFamily,
        DockerField::EcsTaskDefinitionRevision,
        DockerField::EcsContainerName,
    ];
    /// The default `fields`: all of them.
    pub const DEFAULTS: [DockerField; 8] = DockerField::ALL;

    pub fn as_str(self) -> &'static str {
        match self {
            DockerField::ContainerName => "container_name",
            DockerField::Image => "image",
            DockerField::EcsCluster => "ecs_cluster",
            DockerField::EcsTaskArn => "ecs_task_arn",
            DockerField::EcsTaskId => "ecs_task_id",
            DockerField::EcsTaskDefinitionFamily => "ecs_task_definition_family",
            DockerField::EcsTaskDefinitionRevision => "ecs_task_definition_revision",
            DockerField::EcsContainerName => "ecs_container_name",
        }
    }

    fn parse(s: &str) -> Option<DockerField> {
        DockerField::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Fields, labels and env together must fit one pre-encoded set (`enrich::record`'s
/// `MAX_PAIRS`, checked against this at compile time in `enrich`).
pub const MAX_KEYS: usize = 64;

pub(super) fn build(raw: RawEnrich, ctx: &Ctx<'_>) -> Result<EnrichConfig, ConfigError> {
    let d = raw.docker;
    let socket = d.socket.get_ref().trim().to_string();
    if !socket.is_empty() && !["unix://", "tcp://", "http://"].iter().any(|p| socket.starts_with(p))
    {
        return Err(ctx.error(
            d.socket.span(),
            "enrich.docker.socket".into(),
            format!("{socket:?}: expected unix:///path, tcp://HOST:PORT or http://HOST:PORT (or \"\" for $DOCKER_HOST)"),
            true,
        ));
    }
    let mut keys: Vec<String> = Vec::new();
    let mut fields = Vec::new();
    for (i, f) in d.fields.get_ref().iter().enumerate() {
        let key = format!("enrich.docker.fields[{i}]");
        let Some(field) = DockerField::parse(f.get_ref()) else {
            let known: Vec<&str> = DockerField::ALL.iter().map(|f| f.as_str()).collect();
            return Err(ctx.error(
                f.span(),
                key,
                format!("unknown field {:?} (expected one of {})", f.get_ref(), known.join(", ")),
                true,
            ));
        };
        if fields.contains(&field) {
            return Err(ctx.error(
                f.span(),
                key,
                format!("field {:?} is listed twice", f.get_ref()),
                true,
            ));
        }
        fields.push(field);
        keys.push(field.as_str().to_string());
    }
    let mut copy = |list: &[Spanned<String>], what: &str| -> Result<Vec<CopyKey>, ConfigError> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let key = format!("enrich.docker.{what}[{i}]");
            let c = CopyKey::parse(s.get_ref())
                .map_err(|m| ctx.error(s.span(), key.clone(), m, true))?;
            if keys.contains(&c.key) {
                let message = format!(
                    "record key {:?} is already added by another entry of fields, labels or env",
                    c.key
                );
                return Err(ctx.error(s.span(), key, message, true));
            }
            keys.push(c.key.clone());
            out.push(c);
        }
        Ok(out)
    };
    let labels = copy(&d.labels, "labels")?;
    let env = copy(&d.env, "env")?;
    if keys.len() > MAX_KEYS {
        return Err(ctx.error(
            d.fields.span(),
            "enrich.docker".into(),
            format!("fields, labels and env add {} keys; at most {MAX_KEYS}", keys.len()),
            true,
        ));
    }
    Ok(EnrichConfig {
        docker: DockerEnrichConfig {
            enabled: d.enabled,
            socket: (!socket.is_empty()).then_some(socket),
            fields,
            labels,
            env,
            removed_grace_period: d.removed_grace_period.0,
            inspect_wait: d.inspect_wait.0,
            max_containers: d.max_containers,
        },
        ec2: Ec2EnrichConfig { enabled: raw.ec2.enabled, apply_to: raw.ec2.apply_to },
        partial: join_limits(&raw.partial, "enrich.partial", ctx)?,
        multiline: join_limits(&raw.multiline, "enrich.multiline", ctx)?,
    })
}

pub(super) fn to_raw(c: &EnrichConfig) -> RawEnrich {
    let none = 0..0;
    let d = &c.docker;
    let spanned = |v: String| Spanned::new(none.clone(), v);
    RawEnrich {
        docker: RawEnrichDocker {
            enabled: d.enabled,
            socket: spanned(d.socket.clone().unwrap_or_default()),
            fields: Spanned::new(
                none.clone(),
                d.fields.iter().map(|f| spanned(f.as_str().to_string())).collect(),
            ),
            labels: d.labels.iter().map(|l| spanned(l.to_raw())).collect(),
            env: d.env.iter().map(|l| spanned(l.to_raw())).collect(),
            removed_grace_period: Dur(d.removed_grace_period),
            inspect_wait: Dur(d.inspect_wait),
            max_containers: d.max_containers,
        },
        ec2: RawEnrichEc2 { enabled: c.ec2.enabled, apply_to: c.ec2.apply_to },
        partial: raw_join(c.partial),
        multiline: raw_join(c.multiline),
    }
}

/// The limits of `[enrich.partial]` or `[enrich.multiline]`, `None` when disabled.
fn join_limits(
    j: &RawJoin,
    section: &str,
    ctx: &Ctx<'_>,
) -> Result<Option<crate::reassemble::Limits>, ConfigError> {
    if !j.enabled {
        return Ok(None);
    }
    if j.max_size.get_ref().0 == 0 {
        return Err(ctx.error(
            j.max_size.span(),
            format!("{section}.max_size"),
            "must be more than 0".into(),
            true,
        ));
    }
    if j.timeout.get_ref().0.is_zero() {
        return Err(ctx.error(
            j.timeout.span(),
            format!("{section}.timeout"),
            "must be more than 0s".into(),
            true,
        ));
    }
    Ok(Some(crate::reassemble::Limits {
        max_size: usize::try_from(j.max_size.get_ref().0).unwrap_or(usize::MAX),
        timeout: j.timeout.get_ref().0,
    }))
}

fn raw_join(limits: Option<crate::reassemble::Limits>) -> RawJoin {
    let d = RawJoin::default();
    match limits {
        None => RawJoin { enabled: false, ..d },
        Some(l) => RawJoin {
            enabled: true,
            max_size: Spanned::new(0..0, Size(l.max_size as u64)),
            timeout: Spanned::new(0..0, Dur(l.timeout)),
        },
    }
}
