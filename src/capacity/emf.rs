//! This host's free capacity as CloudWatch metrics, through the Embedded Metric Format
//! ([spec]): [`encode`] turns one [`Report`] into the interval's log events (pure, no I/O),
//! [`EmfPublisher`] puts them into CloudWatch Logs with the `x-amzn-logs-format: json/emf`
//! header, and CloudWatch Logs extracts the metrics. No CloudWatch SDK: the Logs client
//! berth already has does it.
//!
//! [spec]: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
//!
//! # The events of one interval
//! The point of the metrics (issue 10) is that a CloudWatch `Sum` of `SchedulableTasks`
//! over `ClusterName, TaskShape` is the number of tasks of that shape the whole cluster can
//! still place. So every host sends each figure **once per interval**, and a sum across
//! hosts for one period is the cluster's figure (the period must equal the interval: two
//! events of one host in one period would count it twice).
//!
//! An EMF dimension's value is one top-level string of the event, so one event cannot
//! carry two `TaskShape`s. Hence, per interval:
//! - one event per configured shape: one directive whose dimension sets are the configured
//!   sets that contain `TaskShape`, and the metric `SchedulableTasks` (`Count`);
//! - one host event: one directive with the sets without `TaskShape`, and `FreeCpuUnits`
//!   (`None`: CPU units are not a CloudWatch unit), `FreeMemoryMiB` (`Megabytes`, see
//!   below), `RunningTasks`, `PendingTasks` (`Count`), `IdleSeconds` (`Seconds`),
//!   `ScaleInProtected` (`Count`, 0 or 1; only when known).
//!
//! Every event also names its host: each identity value that is known is a top-level
//! member whether or not a set uses it (members no directive refers to are plain log
//! fields: free in CloudWatch metrics, and a Logs Insights query can still say which
//! host reported what). Members are written in one fixed order: `_aws`, the identity in
//! [`Dimension::ALL`] order, then the metrics.
//!
//! `FreeMemoryMiB` is labelled `Megabytes`: CloudWatch units are labels (it converts
//! nothing), the exact unit is in the name, and AWS labels the same ECS MiB figures
//! `Megabytes` itself (Container Insights' `MemoryReserved`), so the two graph on one axis.
//!
//! # What is never published
//! - A stale report ([`EmfSkip::Stale`]): a figure that is not current is not published as
//!   current; the interval has no data point, which an alarm sees as missing data rather
//!   than as a guess (a guessed 0 would scale out, a guessed old figure could hide a
//!   shortage).
//! - Figures while the free resources are unknown ([`EmfSkip::NoFree`]); a shape whose
//!   count is unknown gets no event ([`Encoded::unknown_shapes`]), never a 0.
//! - A dimension set one of whose values is unknown (no Auto Scaling group, say): the set
//!   is left out of every event of the interval ([`Encoded::left_out`]) and the rest is
//!   published; [`LeftOutLog`] says so once, and again only when that changes.

use super::report::Report;
use crate::aws::{Aws, AwsError};
use crate::config::capacity::{Dimension, PublishConfig, MAX_DIMENSIONS_PER_SET};
use crate::config::AwsAuth;
use aws_sdk_cloudwatchlogs as cwl;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use std::time::Duration;

/// The header PutLogEvents must carry for CloudWatch Logs to extract EMF metrics (spec:
/// "Clients MUST use the following log format header").
pub const FORMAT_HEADER: (&str, &str) = ("x-amzn-logs-format", "json/emf");

/// EMF's limits (the spec, and the current AWS libraries for the dimension count).
pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
pub const MAX_NAMESPACE_CHARS: usize = 255;

/// CloudWatch's units (`StandardUnit`).
pub const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Why an interval has no events at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmfSkip {
    /// A source a figure depends on did not answer at this tick.
    #[error("the report is stale: not published as current")]
    Stale,
    /// The registered resources are not known yet.
    #[error("free resources unknown")]
    NoFree,
}

/// A configured dimension set that is not in this interval's events, and a dimension of it
/// whose value is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub set: Vec<Dimension>,
    pub missing: Dimension,
}

/// The events of one interval, and what was left out of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// The shapes' events in configured order, then the host event; may be empty (no
    /// shapes and no set without `TaskShape`, or every set left out).
    pub events: Vec<String>,
    /// Sets not published, in configured order.
    pub left_out: Vec<LeftOut>,
    /// Shapes whose schedulable count is unknown: no event this interval.
    pub unknown_shapes: Vec<String>,
}

/// One metric of a directive and its value.
struct Metric {
    name: &'static str,
    unit: &'static str,
    value: u64,
}

/// The events for one interval, or why there are none. See the module doc.
pub fn encode(report: &Report, cfg: &PublishConfig) -> Result<Encoded, EmfSkip> {
    if !report.fresh {
        return Err(EmfSkip::Stale);
    }
    let free = report.free.ok_or(EmfSkip::NoFree)?;
    let id = &report.identity;
    // The host's values; `TaskShape` is per event.
    let host_value = |d: Dimension| -> Option<&str> {
        let v = match d {
            Dimension::ClusterName => &id.cluster,
            Dimension::AutoScalingGroupName => &id.auto_scaling_group,
            Dimension::InstanceId => &id.instance_id,
            Dimension::InstanceType => &id.instance_type,
            Dimension::AvailabilityZone => &id.availability_zone,
            Dimension::TaskShape => return None,
        };
        v.as_deref().filter(|s| !s.is_empty())
    };
    let mut out = Encoded::default();
    let (mut shape_sets, mut host_sets) = (Vec::new(), Vec::new());
    for set in &cfg.dimensions {
        let missing =
            set.iter().copied().find(|&d| d != Dimension::TaskShape && host_value(d).is_none());
        match missing {
            Some(missing) => out.left_out.push(LeftOut { set: set.clone(), missing }),
            None if set.contains(&Dimension::TaskShape) => shape_sets.push(set.as_slice()),
            None => host_sets.push(set.as_slice()),
        }
    }
    let timestamp = report.computed_at_ms;
    if !shape_sets.is_empty() {
        for shape in &report.shapes {
            let Some(n) = shape.schedulable else {
                out.unknown_shapes.push(shape.name.clone());
                continue;
            };
            let metrics = [Metric { name: "SchedulableTasks", unit: "Count", value: n }];
            out.events.push(event(
                timestamp,
                &cfg.namespace,
                &shape_sets,
                &host_value,
                Some(&shape.name),
                &metrics,
            ));
        }
    }
    if !host_sets.is_empty() {
        let mut metrics = vec![
            Metric { name: "FreeCpuUnits", unit: "None", value: free.cpu_units },
            Metric { name: "FreeMemoryMiB", unit: "Megabytes", value: free.memory_mib },
            Metric { name: "RunningTasks", unit: "Count", value: report.running_tasks },
            Metric { name: "PendingTasks", unit: "Count", value: report.pending_tasks },
            Metric { name: "IdleSeconds", unit: "Seconds", value: report.idle_seconds },
        ];
        if let Some(p) = report.protected {
            metrics.push(Metric { name: "ScaleInProtected", unit: "Count", value: u64::from(p) });
        }
        out.events.push(event(timestamp, &cfg.namespace, &host_sets, &host_value, None, &metrics));
    }
    Ok(out)
}

/// One event: a directive over `sets`, the identity, `shape` as `TaskShape`, the metrics.
fn event<'a>(
    timestamp: u64,
    namespace: &str,
    sets: &[&[Dimension]],
    host_value: &dyn Fn(Dimension) -> Option<&'a str>,
    shape: Option<&str>,
    metrics: &[Metric],
) -> String {
    let mut o = Vec::with_capacity(512);
    o.extend_from_slice(b"{\"_aws\":{\"Timestamp\":");
    o.extend_from_slice(itoa::Buffer::new().format(timestamp).as_bytes());
    o.extend_from_slice(b",\"CloudWatchMetrics\":[{\"Namespace\":");
    json_string(&mut o, namespace);
    o.extend_from_slice(b",\"Dimensions\":[");
    for (i, set) in sets.iter().enumerate() {
        o.extend_from_slice(if i == 0 { b"[" } else { b",[" });
        for (j, d) in set.iter().enumerate() {
            if j > 0 {
                o.push(b',');
            }
            json_string(&mut o, d.as_str());
        }
        o.push(b']');
    }
    o.extend_from_slice(b"],\"Metrics\":[");
    for (i, m) in metrics.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        o.extend_from_slice(b"{\"Name\":");
        json_string(&mut o, m.name);
        o.extend_from_slice(b",\"Unit\":");
        json_string(&mut o, m.unit);
        o.push(b'}');
    }
    o.extend_from_slice(b"]}]}");
    for d in Dimension::ALL {
        let value = match d {
            Dimension::TaskShape => shape,
            d => host_value(d),
        };
        if let Some(v) = value {
            o.push(b',');
            json_string(&mut o, d.as_str());
            o.push(b':');
            json_string(&mut o, v);
        }
    }
    for m in metrics {
        o.push(b',');
        json_string(&mut o, m.name);
        o.push(b':');
        o.extend_from_slice(itoa::Buffer::new().format(m.value).as_bytes());
    }
    o.push(b'}');
    // Only `str`s and ASCII went in: nothing is ever replaced.
    String::from_utf8(o).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, into the buffer; writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Says once which dimension sets are left out, and again only when that changes (a host
/// without an Auto Scaling group would otherwise warn every interval for its lifetime).
#[derive(Debug, Default)]
pub struct LeftOutLog {
    last: Vec<LeftOut>,
}

impl LeftOutLog {
    /// Log `left_out` if it differs from the last one logged; returns whether it logged.
    pub fn note(&mut self, left_out: &[LeftOut]) -> bool {
        if self.last == left_out {
            return false;
        }
        if left_out.is_empty() {
            tracing::info!("every configured EMF dimension set is published again");
        }
        for l in left_out {
            let set: Vec<&str> = l.set.iter().map(|d| d.as_str()).collect();
            tracing::warn!(
                dimension_set = %set.join(","),
                missing = l.missing.as_str(),
                "EMF dimension set left out: the value of one of its dimensions is unknown on this host"
            );
        }
        self.last = left_out.to_vec();
        true
    }
}

// --- the spec's rules, checked -----------------------------------------------------------

/// Check one event against the EMF rules berth relies on: a JSON object no larger than
/// 256 KiB; `_aws` with an integer `Timestamp` (ms) and a non-empty `CloudWatchMetrics`;
/// per directive a `Namespace` of 1-255 characters, dimension sets of at most 30 string
/// keys, each a top-level string of 1-1024 characters, at most 100 metrics with a name,
/// a unit from CloudWatch's list and a top-level number (or array of up to 100 numbers);
/// no member the spec does not define in `_aws`, a directive or a metric definition.
/// Used by the tests; cheap enough for anything else that wants it.
pub fn validate(event: &str) -> Result<(), String> {
    use serde_json::Value;
    if event.len() > MAX_EVENT_BYTES {
        return Err(format!("{} bytes: more than {MAX_EVENT_BYTES}", event.len()));
    }
    let root: Value = serde_json::from_str(event).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("the root is not an object")?;
    let aws = root.get("_aws").and_then(Value::as_object).ok_or("no _aws object")?;
    if let Some(k) = aws.keys().find(|k| !["Timestamp", "CloudWatchMetrics"].contains(&k.as_str()))
    {
        return Err(format!("_aws has an unknown member {k:?}"));
    }
    let ts = aws.get("Timestamp").ok_or("no _aws.Timestamp")?;
    if !ts.is_u64() {
        return Err(format!("_aws.Timestamp {ts} is not an integer of ms since the epoch"));
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or("_aws.CloudWatchMetrics is not a non-empty array")?;
    for (i, d) in directives.iter().enumerate() {
        let d = d.as_object().ok_or(format!("directive {i} is not an object"))?;
        if let Some(k) =
            d.keys().find(|k| !["Namespace", "Dimensions", "Metrics"].contains(&k.as_str()))
        {
            return Err(format!("directive {i} has an unknown member {k:?}"));
        }
        let ns = d
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or(format!("directive {i}: no Namespace string"))?;
        let n = ns.chars().count();
        if n == 0 || n > MAX_NAMESPACE_CHARS {
            return Err(format!(
                "directive {i}: Namespace of {n} characters (1-{MAX_NAMESPACE_CHARS})"
            ));
        }
        let sets = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or(format!("directive {i}: no Dimensions array"))?;
        let mut keys = Vec::new();
        for set in sets {
            let set =
                set.as_array().ok_or(format!("directive {i}: a dimension set is not an array"))?;
            if set.len() > MAX_DIMENSIONS_PER_SET {
                return Err(format!(
                    "directive {i}: a dimension set of {} keys (at most {MAX_DIMENSIONS_PER_SET})",
                    set.len()
                ));
            }
            for k in set {
                let k =
                    k.as_str().ok_or(format!("directive {i}: a dimension key is not a string"))?;
                match root.get(k) {
                    Some(Value::String(v)) if !v.is_empty() && v.chars().count() <= 1024 => {}
                    Some(Value::String(v)) => {
                        return Err(format!(
                            "dimension {k:?}: a value of {} characters (1-1024)",
                            v.chars().count()
                        ))
                    }
                    Some(other) => {
                        return Err(format!(
                            "dimension {k:?} is not a string at the top level: {other}"
                        ))
                    }
                    None => return Err(format!("dimension {k:?} is not a top-level member")),
                }
                keys.push(k);
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or(format!("directive {i}: no Metrics array"))?;
        if metrics.len() > MAX_METRICS_PER_DIRECTIVE {
            return Err(format!(
                "directive {i}: {} metrics (at most {MAX_METRICS_PER_DIRECTIVE})",
                metrics.len()
            ));
        }
        for m in metrics {
            let m = m.as_object().ok_or(format!("directive {i}: a metric is not an object"))?;
            if let Some(k) =
                m.keys().find(|k| !["Name", "Unit", "StorageResolution"].contains(&k.as_str()))
            {
                return Err(format!("directive {i}: a metric has an unknown member {k:?}"));
            }
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && n.chars().count() <= 1024);
            let name =
                name.ok_or(format!("directive {i}: a metric without a Name of 1-1024 characters"))?;
            if keys.contains(&name) {
                return Err(format!("{name:?} is both a dimension and a metric"));
            }
            if let Some(u) = m.get("Unit") {
                if !u.as_str().is_some_and(|u| UNITS.contains(&u)) {
                    return Err(format!("metric {name:?}: unit {u} is not a CloudWatch unit"));
                }
            }
            if let Some(r) = m.get("StorageResolution") {
                if !matches!(r.as_u64(), Some(1 | 60)) {
                    return Err(format!("metric {name:?}: StorageResolution {r} is not 1 or 60"));
                }
            }
            match root.get(name) {
                Some(Value::Number(_)) => {}
                Some(Value::Array(a)) if a.len() <= 100 && a.iter().all(Value::is_number) => {}
                Some(other) => {
                    return Err(format!(
                        "metric {name:?} is not a number at the top level: {other}"
                    ))
                }
                None => return Err(format!("metric {name:?} is not a top-level member")),
            }
        }
    }
    Ok(())
}

// --- the publisher -----------------------------------------------------------------------

/// A failed publish.
#[derive(Debug, thiserror::Error)]
pub enum EmfError {
    #[error("aws set-up for the EMF publisher: {0}")]
    Aws(#[from] AwsError),
    /// A CloudWatch Logs call failed; `code` is the AWS error code when there was an answer.
    #[error("{action} failed: {detail}")]
    Call { action: &'static str, code: Option<String>, status: Option<u16>, detail: String },
}

impl EmfError {
    fn call<E>(action: &'static str, e: &SdkError<E, HttpResponse>) -> EmfError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = e.code().map(str::to_owned);
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            _ => DisplayErrorContext(e).to_string(),
        };
        let status = e.raw_response().map(|r| r.status().as_u16());
        EmfError::Call { action, code, status, detail }
    }

    /// The AWS error code of a failed call.
    pub fn code(&self) -> Option<&str> {
        match self {
            EmfError::Call { code, .. } => code.as_deref(),
            EmfError::Aws(_) => None,
        }
    }
}

/// How long one CloudWatch Logs call may take: well inside the default 60 s interval, so a
/// stuck endpoint costs one interval's point and never piles calls up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// PutLogEvents' limits: events per call, and bytes (each message + 26).
const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;

/// Puts each interval's events into one log stream (this instance's).
///
/// No retries here, neither ours nor the SDK's: the next interval is the retry. A lost
/// answer retried would store the events twice, and a second event of one host in one
/// period is counted twice by every `Sum` across the cluster; a missing point only ages
/// the alarm's data by one period.
#[derive(Debug, Clone)]
pub struct EmfPublisher {
    client: cwl::Client,
    group: String,
    stream: String,
}

impl EmfPublisher {
    /// A publisher to `group`/`stream` with the identity of `auth` (`[ecs]`'s keys). Makes
    /// no call: the group and the stream are created when the first put finds them missing.
    pub async fn new(
        aws: &Aws,
        auth: &AwsAuth,
        group: &str,
        stream: &str,
    ) -> Result<EmfPublisher, EmfError> {
        let loaded = aws.load(auth).await?;
        let conf = cwl::config::Builder::from(loaded.sdk())
            .retry_config(cwl::config::retry::RetryConfig::disabled())
            .timeout_config(
                cwl::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(CALL_TIMEOUT)
                    .build(),
            )
            .build();
        Ok(EmfPublisher {
            client: cwl::Client::from_conf(conf),
            group: group.to_owned(),
            stream: stream.to_owned(),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Put one interval's events, all at `timestamp_ms` (in order, so chronological): one
    /// PutLogEvents (more only past its limits of 10,000 events or 1 MiB). A missing group
    /// or stream is created and the put made once more. Events CloudWatch Logs refuses in
    /// `rejectedLogEventsInfo` (too old, too new) are logged as a warning; they are not
    /// sent again.
    pub async fn publish(&self, events: Vec<String>, timestamp_ms: i64) -> Result<(), EmfError> {
        for batch in batches(events) {
            let input: Vec<cwl::types::InputLogEvent> =
                batch.into_iter().map(|m| log_event(timestamp_ms, m)).collect();
            match self.put(input.clone()).await {
                Err(e) if e.code() == Some("ResourceNotFoundException") => {
                    self.create().await?;
                    self.put(input).await?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn put(&self, events: Vec<cwl::types::InputLogEvent>) -> Result<(), EmfError> {
        let n = events.len();
        let out = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .customize()
            .mutate_request(|req| {
                // A static name and value, both valid header text: `insert` cannot panic.
                // Added before signing, so the header is signed like the others.
                req.headers_mut().insert(FORMAT_HEADER.0, FORMAT_HEADER.1);
            })
            .send()
            .await
            .map_err(|e| EmfError::call("PutLogEvents", &e))?;
        if let Some(r) = out.rejected_log_events_info() {
            tracing::warn!(
                log_group = %self.group,
                log_stream = %self.stream,
                events = n,
                too_new_start = ?r.too_new_log_event_start_index(),
                too_old_end = ?r.too_old_log_event_end_index(),
                expired_end = ?r.expired_log_event_end_index(),
                "CloudWatch Logs rejected EMF events (is the clock right?); they are not sent again"
            );
        }
        Ok(())
    }

    /// The stream, and the group first when the stream's creation says it is missing too
    /// (a new instance on an existing group is the common case: one call). Either existing
    /// already (another writer, or a race) is fine.
    async fn create(&self) -> Result<(), EmfError> {
        match self.create_stream().await {
            Err(e) if e.code() == Some("ResourceNotFoundException") => {}
            other => return other,
        }
        let created = self.client.create_log_group().log_group_name(&self.group).send().await;
        match created {
            Ok(_) => tracing::info!(log_group = %self.group, "EMF log group created"),
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
            Err(e) => return Err(EmfError::call("CreateLogGroup", &e)),
        }
        self.create_stream().await
    }

    async fn create_stream(&self) -> Result<(), EmfError> {
        let created = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(log_group = %self.group, log_stream = %self.stream, "EMF log stream created");
                Ok(())
            }
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
            Err(e) => Err(EmfError::call("CreateLogStream", &e)),
        }
    }
}

/// An SDK event (both required fields are set: `build` cannot fail).
fn log_event(timestamp: i64, message: String) -> cwl::types::InputLogEvent {
    cwl::types::InputLogEvent::builder()
        .timestamp(timestamp)
        .message(message)
        .build()
        .unwrap_or_else(|_| unreachable!("timestamp and message are set"))
}

/// The events in PutLogEvents-sized batches, in order (one batch in every real case: a
/// shape's event is ~300 bytes).
fn batches(events: Vec<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let size = e.len() + EVENT_OVERHEAD;
        match out.last_mut() {
            Some(b) if b.len() < MAX_BATCH_EVENTS && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                b.push(e);
            }
            _ => {
                bytes = size;
                out.push(vec![e]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::compute::Resources;
    use crate::capacity::report::{Identity, ShapeFit};
    use serde_json::{json, Value};
    use Dimension::*;

    fn report() -> Report {
        Report {
            computed_at_ms: 1_767_225_600_123,
            fresh: true,
            identity: Identity {
                cluster: Some("prod".into()),
                container_instance_arn: None,
                instance_id: Some("i-0abc".into()),
                availability_zone: Some("eu-west-1a".into()),
                instance_type: Some("m7g.large".into()),
                auto_scaling_group: None,
            },
            status: Some("ACTIVE".into()),
            registered: Some(Resources { cpu_units: 2048, memory_mib: 7680 }),
            reserved: Resources { cpu_units: 1024, memory_mib: 2048 },
            free: Some(Resources { cpu_units: 1024, memory_mib: 5632 }),
            shapes: vec![
                ShapeFit { name: "small".into(), cpu: 256, memory: 512, schedulable: Some(4) },
                ShapeFit { name: "large".into(), cpu: 1024, memory: 4096, schedulable: Some(1) },
            ],
            running_tasks: 2,
            pending_tasks: 1,
            daemon_tasks: 1,
            idle_since_ms: None,
            idle_seconds: 0,
            protected: Some(true),
            drift: None,
            sources: Vec::new(),
            tasks: Vec::new(),
        }
    }

    fn cfg(dims: &[&[Dimension]]) -> PublishConfig {
        PublishConfig {
            prometheus: true,
            cloudwatch_emf: true,
            emf_log_group: "/berth/capacity".into(),
            namespace: "Berth".into(),
            dimensions: dims.iter().map(|s| s.to_vec()).collect(),
            ecs_attributes: false,
        }
    }

    const DEFAULT: &[&[Dimension]] = &[&[ClusterName, TaskShape], &[ClusterName]];

    fn parsed(e: &Encoded) -> Vec<Value> {
        for ev in &e.events {
            validate(ev).unwrap_or_else(|err| panic!("{err}: {ev}"));
        }
        e.events.iter().map(|s| serde_json::from_str(s).unwrap()).collect()
    }

    #[test]
    fn two_shapes_with_the_default_dimensions() {
        let e = encode(&report(), &cfg(DEFAULT)).unwrap();
        assert!(e.left_out.is_empty() && e.unknown_shapes.is_empty());
        let v = parsed(&e);
        assert_eq!(v.len(), 3, "one event per shape and the host's");
        assert_eq!(
            v[0],
            json!({
                "_aws": {"Timestamp": 1_767_225_600_123u64, "CloudWatchMetrics": [{
                    "Namespace": "Berth",
                    "Dimensions": [["ClusterName", "TaskShape"]],
                    "Metrics": [{"Name": "SchedulableTasks", "Unit": "Count"}]}]},
                "ClusterName": "prod", "TaskShape": "small", "InstanceId": "i-0abc",
                "InstanceType": "m7g.large", "AvailabilityZone": "eu-west-1a",
                "SchedulableTasks": 4
            })
        );
        assert_eq!(
            (v[1]["TaskShape"].as_str(), v[1]["SchedulableTasks"].as_u64()),
            (Some("large"), Some(1))
        );
        let host = &v[2];
        assert_eq!(host["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["ClusterName"]]));
        assert!(host.get("TaskShape").is_none());
        let units: Vec<(&str, &str)> = host["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["Name"].as_str().unwrap(), m["Unit"].as_str().unwrap()))
            .collect();
        assert_eq!(
            units,
            [
                ("FreeCpuUnits", "None"),
                ("FreeMemoryMiB", "Megabytes"),
                ("RunningTasks", "Count"),
                ("PendingTasks", "Count"),
                ("IdleSeconds", "Seconds"),
                ("ScaleInProtected", "Count"),
            ]
        );
        let values: Vec<u64> = [
            "FreeCpuUnits",
            "FreeMemoryMiB",
            "RunningTasks",
            "PendingTasks",
            "IdleSeconds",
            "ScaleInProtected",
        ]
        .iter()
        .map(|k| host[k].as_u64().unwrap())
        .collect();
        assert_eq!(values, [1024, 5632, 2, 1, 0, 1]);
    }

    #[test]
    fn members_are_written_in_one_fixed_order() {
        let e = encode(&report(), &cfg(DEFAULT)).unwrap();
        let first = &e.events[0];
        let pos = |k: &str| first.find(&format!("\"{k}\":")).unwrap();
        assert!(first.starts_with("{\"_aws\":{\"Timestamp\":1767225600123,"));
        assert!(pos("ClusterName") < pos("TaskShape"));
        assert!(pos("TaskShape") < pos("InstanceId"));
        assert!(pos("AvailabilityZone") < pos("SchedulableTasks"));
        assert_eq!(e, encode(&report(), &cfg(DEFAULT)).unwrap(), "deterministic");
    }

    #[test]
    fn a_set_whose_dimension_is_unknown_is_left_out_and_the_rest_published() {
        let dims: &[&[Dimension]] = &[
            &[ClusterName, TaskShape],
            &[AutoScalingGroupName, TaskShape],
            &[ClusterName],
            &[ClusterName, AutoScalingGroupName],
        ];
        let e = encode(&report(), &cfg(dims)).unwrap();
        assert_eq!(
            e.left_out,
            [
                LeftOut {
                    set: vec![AutoScalingGroupName, TaskShape],
                    missing: AutoScalingGroupName
                },
                LeftOut {
                    set: vec![ClusterName, AutoScalingGroupName],
                    missing: AutoScalingGroupName
                },
            ]
        );
        let v = parsed(&e);
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["ClusterName", "TaskShape"]])
        );
        assert_eq!(v[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["ClusterName"]]));
        assert!(v.iter().all(|ev| ev.get("AutoScalingGroupName").is_none()));

        // Known: both sets in one directive each.
        let mut r = report();
        r.identity.auto_scaling_group = Some("prod-asg".into());
        let v = parsed(&encode(&r, &cfg(dims)).unwrap());
        assert_eq!(
            v[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["ClusterName", "TaskShape"], ["AutoScalingGroupName", "TaskShape"]])
        );
        assert_eq!(v[0]["AutoScalingGroupName"], "prod-asg");

        // An empty value is unknown, too; every set left out: no events.
        let mut r = report();
        r.identity.cluster = Some(String::new());
        let e = encode(&r, &cfg(DEFAULT)).unwrap();
        assert!(e.events.is_empty());
        assert_eq!(e.left_out.len(), 2);
    }

    #[test]
    fn a_stale_report_or_unknown_free_resources_publish_nothing() {
        let mut r = report();
        r.fresh = false;
        assert_eq!(encode(&r, &cfg(DEFAULT)), Err(EmfSkip::Stale));
        let mut r = report();
        r.free = None;
        assert_eq!(encode(&r, &cfg(DEFAULT)), Err(EmfSkip::NoFree));
        r.fresh = false;
        assert_eq!(encode(&r, &cfg(DEFAULT)), Err(EmfSkip::Stale), "stale first");
    }

    #[test]
    fn no_shapes_gives_the_host_event_only() {
        let mut r = report();
        r.shapes.clear();
        let v = parsed(&encode(&r, &cfg(DEFAULT)).unwrap());
        assert_eq!(v.len(), 1);
        assert!(v[0].get("FreeCpuUnits").is_some());
        // And no set without TaskShape: shape events only.
        let v = parsed(&encode(&report(), &cfg(&[&[ClusterName, TaskShape]])).unwrap());
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|e| e.get("FreeCpuUnits").is_none()));
    }

    #[test]
    fn a_shape_with_an_unknown_count_gets_no_event_never_a_zero() {
        let mut r = report();
        r.shapes[0].schedulable = None;
        let e = encode(&r, &cfg(DEFAULT)).unwrap();
        assert_eq!(e.unknown_shapes, ["small"]);
        let v = parsed(&e);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["TaskShape"], "large");
    }

    #[test]
    fn unknown_protection_is_not_published() {
        let mut r = report();
        r.protected = None;
        r.idle_seconds = 42;
        let v = parsed(&encode(&r, &cfg(DEFAULT)).unwrap());
        let host = v.last().unwrap();
        assert!(host.get("ScaleInProtected").is_none());
        assert_eq!(host["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len(), 5);
        assert_eq!(host["IdleSeconds"], 42);
    }

    #[test]
    fn values_are_escaped() {
        let mut r = report();
        r.shapes[0].name = "a\"b\\c".into();
        let v = parsed(&encode(&r, &cfg(DEFAULT)).unwrap());
        assert_eq!(v[0]["TaskShape"], "a\"b\\c");
    }

    #[test]
    fn validate_refuses_what_the_spec_refuses() {
        let ok = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["D"]],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"D":"x","M":1}"#;
        assert_eq!(validate(ok), Ok(()));
        let bad = |from: &str, to: &str| validate(&ok.replacen(from, to, 1)).unwrap_err();
        assert!(bad("\"Timestamp\":1", "\"Timestamp\":1.5").contains("integer"));
        assert!(bad("\"Timestamp\":1", "\"Timestamp\":\"1\"").contains("integer"));
        assert!(bad("\"Namespace\":\"N\"", "\"Namespace\":\"\"").contains("Namespace"));
        let long = format!("\"Namespace\":\"{}\"", "n".repeat(256));
        assert!(bad("\"Namespace\":\"N\"", &long).contains("256 characters"));
        assert!(bad("\"Unit\":\"Count\"", "\"Unit\":\"MiB\"").contains("not a CloudWatch unit"));
        assert!(bad("\"D\":\"x\"", "\"D\":1").contains("not a string"));
        assert!(bad(",\"D\":\"x\"", "").contains("not a top-level member"));
        assert!(bad("\"M\":1", "\"M\":\"1\"").contains("not a number"));
        assert!(bad(",\"M\":1", "").contains("not a top-level member"));
        assert!(bad("\"Namespace\"", "\"Extra\":1,\"Namespace\"").contains("unknown member"));
        let keys: Vec<String> = (0..31).map(|i| format!("\"D{i}\"")).collect();
        let members: String = (0..31).map(|i| format!(",\"D{i}\":\"v\"")).collect();
        let wide = ok.replacen("[\"D\"]", &format!("[{}]", keys.join(",")), 1).replacen(
            "\"M\":1",
            &format!("\"M\":1{members}"),
            1,
        );
        assert!(validate(&wide).unwrap_err().contains("31 keys"));
        let metrics: Vec<String> = (0..101).map(|i| format!("{{\"Name\":\"M{i}\"}}")).collect();
        let values: String = (0..101).map(|i| format!(",\"M{i}\":{i}")).collect();
        let many = ok
            .replacen("{\"Name\":\"M\",\"Unit\":\"Count\"}", &metrics.join(","), 1)
            .replacen("\"M\":1", &format!("\"M\":1{values}"), 1);
        assert!(validate(&many).unwrap_err().contains("101 metrics"));
        let big = ok.replacen(
            "\"D\":\"x\"",
            &format!("\"D\":\"x\",\"pad\":\"{}\"", "p".repeat(MAX_EVENT_BYTES)),
            1,
        );
        assert!(validate(&big).unwrap_err().contains("bytes"));
    }

    #[test]
    fn left_out_sets_are_said_once_and_again_on_a_change() {
        let mut log = LeftOutLog::default();
        assert!(!log.note(&[]), "nothing left out from the start: nothing to say");
        let asg =
            LeftOut { set: vec![ClusterName, AutoScalingGroupName], missing: AutoScalingGroupName };
        assert!(log.note(std::slice::from_ref(&asg)));
        assert!(!log.note(std::slice::from_ref(&asg)), "the same again: quiet");
        assert!(log.note(&[]), "back to complete: said once");
        assert!(!log.note(&[]));
    }

    #[test]
    fn batches_keep_order_within_put_log_events_limits() {
        assert!(batches(Vec::new()).is_empty());
        let small: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert_eq!(batches(small.clone()), vec![small]);
        let many: Vec<String> = (0..10_001).map(|_| "x".to_string()).collect();
        let b = batches(many);
        assert_eq!((b.len(), b[0].len(), b[1].len()), (2, 10_000, 1));
        let big = "b".repeat(200 * 1024);
        let b = batches(vec![big.clone(); 6]);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [5, 1]);
    }
}
