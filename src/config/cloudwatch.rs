//! `type = "cloudwatch_logs"`: the typed sink config and its checks at load (issue 5).
//!
//! Single values are read by serde in `raw`; here the keys are checked together and turned
//! into what the sink runs with, every error naming the line of the value at fault.

use super::aws::{self, AwsAuth, RawAws};
use super::network::{is_http_url, network_keys, NetworkKeys};
use super::raw::{Dur, LimitDur, RawSink, Size, NETWORK_SINK_KEYS};
use super::{ConfigError, Ctx};
use crate::sink::cloudwatch::encode::MAX_EVENT_BYTES;
use crate::sink::template::{NameTemplate, Naming};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_LOG_GROUP: &str = "/ecs/{ecs_cluster}/{ecs_task_definition_family}";
pub const DEFAULT_LOG_STREAM: &str = "{ecs_task_id}/{ecs_container_name}";
pub const DEFAULT_MESSAGE_KEY: &str = "log";
/// The values `PutRetentionPolicy` accepts (`retentionInDays`), besides 0 = leave as is.
pub const RETENTION_DAYS: [i64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The storage class of log groups the sink creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogGroupClass {
    Standard,
    InfrequentAccess,
}

impl LogGroupClass {
    pub fn as_str(self) -> &'static str {
        match self {
            LogGroupClass::Standard => "STANDARD",
            LogGroupClass::InfrequentAccess => "INFREQUENT_ACCESS",
        }
    }
}

/// A validated `cloudwatch_logs` sink.
#[derive(Debug, Clone)]
pub struct CloudWatchConfig {
    /// The region and the credentials (`region`, `role_arn`, `external_id`).
    pub aws: AwsAuth,
    /// `None`: the SDK's endpoint (which honours `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`).
    pub endpoint_url: Option<String>,
    /// The templates as written (for printing).
    pub log_group: String,
    pub log_stream: String,
    pub group_template: NameTemplate,
    pub stream_template: NameTemplate,
    /// `None`: every record is sent as compact JSON.
    pub message_key: Option<String>,
    pub create_missing_group: bool,
    pub create_missing_stream: bool,
    /// `None`: leave the retention of groups it creates as is (never expire).
    pub retention_days: Option<i32>,
    pub log_group_class: LogGroupClass,
    pub kms_key_id: Option<String>,
    /// Bytes of one event at most, its overhead included: 1 KiB to 1 MiB.
    pub max_event_size: usize,
    pub flush_interval: Duration,
    /// PutLogEvents calls in flight at once (each for a different stream).
    pub concurrency: usize,
    pub timeout: Duration,
    /// A batch still not delivered after being retried this long goes to the dead-letter
    /// file (`retry_expired`); `None`: retried for ever (the default).
    pub max_retry_duration: Option<Duration>,
    pub dead_letter_path: PathBuf,
}

/// The first cloudwatch_logs-only key a sink of another type has: an error.
pub(super) fn reject_keys(s: &RawSink, i: usize, ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    super::network::reject_foreign(s.first_cloudwatch_only(), "cloudwatch_logs", s, i, ctx)
}

pub(super) fn build(
    s: &RawSink,
    name: &str,
    i: usize,
    ctx: &Ctx<'_>,
) -> Result<CloudWatchConfig, ConfigError> {
    let key = |k: &str| format!("sink[{i}].{k}");
    let invalid = |span: std::ops::Range<usize>, k: &str, message: String| {
        ctx.error(span, key(k), message, true)
    };
    if let Some(p) = &s.path {
        return Err(invalid(
            p.span(),
            "path",
            "only sinks of type \"file\" have a path (this one is \"cloudwatch_logs\")".into(),
        ));
    }
    if let Some(f) = &s.format {
        return Err(invalid(
            f.span(),
            "format",
            "sinks of type \"cloudwatch_logs\" have no format".into(),
        ));
    }
    if let Some((k, span)) = s.first_es_only() {
        return Err(invalid(
            span,
            k,
            format!("only sinks of type \"elasticsearch\" have {k} (cloudwatch_logs sinks share only {})", NETWORK_SINK_KEYS.join(", ")),
        ));
    }
    // An empty string is "not set", as in the example (`role_arn = ""`).
    let opt = |v: &Option<Spanned<String>>| {
        v.as_ref().map(|v| v.get_ref().trim().to_owned()).filter(|v| !v.is_empty())
    };

    let endpoint_url = opt(&s.endpoint_url);
    if let (Some(u), Some(raw)) = (&endpoint_url, &s.endpoint_url) {
        if !is_http_url(u) {
            return Err(invalid(
                raw.span(),
                "endpoint_url",
                format!("{u:?} is not an http:// or https:// URL with a host"),
            ));
        }
    }
    let template = |v: &Option<Spanned<String>>,
                    k: &str,
                    default: &str,
                    naming: Naming|
     -> Result<(String, NameTemplate), ConfigError> {
        match v {
            None => Ok((
                default.to_owned(),
                NameTemplate::parse_as(default, naming).map_err(|e| invalid(0..0, k, e))?,
            )),
            Some(t) => Ok((
                t.get_ref().clone(),
                NameTemplate::parse_as(t.get_ref(), naming).map_err(|e| invalid(t.span(), k, e))?,
            )),
        }
    };
    let (log_group, group_template) =
        template(&s.log_group, "log_group", DEFAULT_LOG_GROUP, Naming::LogGroup)?;
    let (log_stream, stream_template) =
        template(&s.log_stream, "log_stream", DEFAULT_LOG_STREAM, Naming::LogStream)?;
    let message_key = match &s.message_key {
        None => Some(DEFAULT_MESSAGE_KEY.to_owned()),
        Some(k) => Some(k.get_ref().clone()).filter(|k| !k.is_empty()),
    };
    let retention_days = match &s.retention_days {
        None => None,
        Some(d) if *d.get_ref() == 0 => None,
        Some(d) if RETENTION_DAYS.contains(d.get_ref()) => Some(*d.get_ref() as i32),
        Some(d) => {
            let list: Vec<String> = RETENTION_DAYS.iter().map(i64::to_string).collect();
            return Err(invalid(d.span(), "retention_days", format!("{} is not a retention CloudWatch Logs accepts (0 to leave it as is, or one of {})", d.get_ref(), list.join(", "))));
        }
    };
    let log_group_class = match &s.log_group_class {
        None => LogGroupClass::Standard,
        Some(c) => match c.get_ref().as_str() {
            "STANDARD" => LogGroupClass::Standard,
            "INFREQUENT_ACCESS" => LogGroupClass::InfrequentAccess,
            other => return Err(invalid(c.span(), "log_group_class", format!("unknown log group class {other:?} (expected \"STANDARD\" or \"INFREQUENT_ACCESS\")"))),
        },
    };
    let raw = RawAws {
        region: s.region.clone(),
        role_arn: s.role_arn.clone(),
        external_id: s.external_id.clone(),
    };
    let aws = aws::build(&raw, &format!("sink[{i}]"), ctx)?;
    let max_event_size = match &s.max_event_size {
        None => MAX_EVENT_BYTES,
        Some(v) if (1024..=MAX_EVENT_BYTES as u64).contains(&v.get_ref().0) => {
            v.get_ref().0 as usize
        }
        Some(v) => {
            return Err(invalid(
                v.span(),
                "max_event_size",
                "must be between 1KiB and 1MiB (PutLogEvents' limit)".into(),
            ))
        }
    };
    let NetworkKeys { flush_interval, concurrency, timeout, max_retry_duration, dead_letter_path } =
        network_keys(s, name, i, ctx)?;
    Ok(CloudWatchConfig {
        aws,
        endpoint_url,
        log_group,
        log_stream,
        group_template,
        stream_template,
        message_key,
        create_missing_group: s.create_missing_group.as_ref().is_none_or(|b| *b.get_ref()),
        create_missing_stream: s.create_missing_stream.as_ref().is_none_or(|b| *b.get_ref()),
        retention_days,
        log_group_class,
        kms_key_id: opt(&s.kms_key_id),
        max_event_size,
        flush_interval,
        concurrency,
        timeout,
        max_retry_duration,
        dead_letter_path,
    })
}

/// The typed config back in the file's shape, into `out`'s cloudwatch_logs keys.
pub(super) fn to_raw(c: &CloudWatchConfig, out: &mut RawSink) {
    fn sp<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }
    let aws = aws::to_raw(&c.aws);
    out.region = aws.region;
    out.role_arn = aws.role_arn;
    out.external_id = aws.external_id;
    out.endpoint_url = sp(c.endpoint_url.clone().unwrap_or_default());
    out.log_group = sp(c.log_group.clone());
    out.log_stream = sp(c.log_stream.clone());
    out.message_key = sp(c.message_key.clone().unwrap_or_default());
    out.create_missing_group = sp(c.create_missing_group);
    out.create_missing_stream = sp(c.create_missing_stream);
    out.retention_days = sp(c.retention_days.map_or(0, i64::from));
    out.log_group_class = sp(c.log_group_class.as_str().to_owned());
    out.kms_key_id = sp(c.kms_key_id.clone().unwrap_or_default());
    out.max_event_size = sp(Size(c.max_event_size as u64));
    out.flush_interval = sp(Dur(c.flush_interval));
    out.concurrency = sp(c.concurrency as i64);
    out.timeout = sp(Dur(c.timeout));
    out.max_retry_duration = sp(LimitDur(c.max_retry_duration.unwrap_or(Duration::ZERO)));
    out.dead_letter_path = sp(c.dead_letter_path.display().to_string());
}
