//! `type = "cloudwatch_logs"`: the typed sink config and its checks at load (issue 5).
//!
//! [`RawCloudWatch`] is the table as written (serde reads single values, so their errors
//! carry a line); [`build`] checks the keys together and makes what the sink runs with,
//! every error naming the line of the value at fault.

use super::aws::{self, AwsAuth, RawAws};
use super::network::{self, is_http_url, network_options, NetworkOptions, RawNetwork};
use super::table::{self, keys_of};
use super::values::{one_of, Dur, Size};
use super::{ConfigError, Ctx};
use crate::template::{NameTemplate, Naming};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use toml::de::DeTable;
use toml::Spanned;

pub const DEFAULT_LOG_GROUP: &str = "/ecs/{ecs_cluster}/{ecs_task_definition_family}";
pub const DEFAULT_LOG_STREAM: &str = "{ecs_task_id}/{ecs_container_name}";
pub const DEFAULT_MESSAGE_KEY: &str = "log";
/// The largest event PutLogEvents takes, its 26 bytes of overhead included (the sink's
/// `encode::MAX_EVENT_SIZE` is checked against it at compile time).
pub const MAX_EVENT_SIZE: usize = 1 << 20;
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
    /// A batch whose destination is refused is dead-lettered after this.
    pub denied_retry_duration: Duration,
    /// `flush_interval`, `concurrency`, `timeout`, `max_retry_duration` and the dead-letter
    /// file: the keys both network sinks have.
    pub network: NetworkOptions,
}

/// `type = "cloudwatch_logs"`: the sink's own keys. `region`, `role_arn` and
/// `external_id` are in [`RawAws`], and the keys both network sinks have in
/// [`RawNetwork`], flattened into this table by [`read`].
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloudWatch {
    /// `region`, `role_arn`, `external_id` (read by [`read`]).
    #[serde(flatten, skip_deserializing)]
    pub aws: RawAws,
    /// Endpoint URL override (a VPC endpoint, a local emulator); empty: the SDK's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<Spanned<String>>,
    /// Log group name template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_group: Option<Spanned<String>>,
    /// Log stream name template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<Spanned<String>>,
    /// The record field sent as the message; records without it are sent as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_key: Option<Spanned<String>>,
    /// Create a log group that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_missing_group: Option<Spanned<bool>>,
    /// Create a log stream that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_missing_stream: Option<Spanned<bool>>,
    /// Retention set on groups berth creates; 0 leaves it as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<Spanned<i64>>,
    /// `STANDARD` or `INFREQUENT_ACCESS`, for groups berth creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_group_class: Option<Spanned<String>>,
    /// KMS key for groups berth creates; empty for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<Spanned<String>>,
    /// Largest event sent, its 26 bytes of overhead included; longer messages are split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_size: Option<Spanned<Size>>,
    /// How long a batch whose group or stream is refused (AccessDenied, a group that may
    /// not or cannot be created) is retried before its events are dead-lettered (`denied`),
    /// so one bad destination does not hold every other stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_retry_duration: Option<Spanned<Dur>>,
    /// `flush_interval`, `concurrency`, `timeout`, `max_retry_duration`,
    /// `dead_letter_path` (read by [`read`]).
    #[serde(flatten, skip_deserializing)]
    pub network: RawNetwork,
}

/// Every key of the sink's table, besides `name`, `type` and `match`.
pub(super) fn keys() -> Vec<&'static str> {
    let mut keys = keys_of::<RawAws>().to_vec();
    keys.extend(keys_of::<RawCloudWatch>());
    keys.extend(keys_of::<RawNetwork>());
    keys
}

/// Read the sink's table (without `name`, `type` and `match`), the AWS and network keys
/// flattened into it.
pub(super) fn read(
    span: std::ops::Range<usize>,
    mut t: DeTable<'_>,
) -> Result<RawCloudWatch, toml::de::Error> {
    // Unknown keys were refused by `sink::read`, with the whole list of this type's keys.
    let part = table::split_off(&mut t, keys_of::<RawAws>());
    let aws = table::read(span.clone(), part)?;
    let mut cw: RawCloudWatch =
        table::read_flat(span, t, |cw: &mut RawCloudWatch, n| cw.network = n)?;
    cw.aws = aws;
    Ok(cw)
}

pub(super) fn build(
    s: &RawCloudWatch,
    name: &str,
    i: usize,
    ctx: &Ctx<'_>,
) -> Result<CloudWatchConfig, ConfigError> {
    let key = |k: &str| format!("sink[{i}].{k}");
    let invalid = |span: std::ops::Range<usize>, k: &str, message: String| {
        ctx.error(span, key(k), message, true)
    };
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
        Some(c) => one_of(
            c.get_ref(),
            "log group class",
            &[
                ("STANDARD", LogGroupClass::Standard),
                ("INFREQUENT_ACCESS", LogGroupClass::InfrequentAccess),
            ],
        )
        .map_err(|m| invalid(c.span(), "log_group_class", m))?,
    };
    let aws = aws::build(&s.aws, &format!("sink[{i}]"), ctx)?;
    let max_event_size = match &s.max_event_size {
        None => MAX_EVENT_SIZE,
        Some(v) if (1024..=MAX_EVENT_SIZE as u64).contains(&v.get_ref().0) => {
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
    let network = network_options(&s.network, name, i, ctx)?;
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
        denied_retry_duration: s
            .denied_retry_duration
            .as_ref()
            .map_or(DEFAULT_DENIED_RETRY_DURATION, |d| d.get_ref().0),
        network,
    })
}

/// How long a refused destination is retried by default: long enough for an IAM change
/// made to fix it to propagate, short enough that the sink's other streams do not wait long.
pub const DEFAULT_DENIED_RETRY_DURATION: Duration = Duration::from_secs(300);

/// The typed config back in the file's shape.
pub(super) fn to_raw(c: &CloudWatchConfig) -> RawCloudWatch {
    fn sp<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }
    RawCloudWatch {
        aws: aws::to_raw(&c.aws),
        endpoint_url: sp(c.endpoint_url.clone().unwrap_or_default()),
        log_group: sp(c.log_group.clone()),
        log_stream: sp(c.log_stream.clone()),
        message_key: sp(c.message_key.clone().unwrap_or_default()),
        create_missing_group: sp(c.create_missing_group),
        create_missing_stream: sp(c.create_missing_stream),
        retention_days: sp(c.retention_days.map_or(0, i64::from)),
        log_group_class: sp(c.log_group_class.as_str().to_owned()),
        kms_key_id: sp(c.kms_key_id.clone().unwrap_or_default()),
        max_event_size: sp(Size(c.max_event_size as u64)),
        denied_retry_duration: sp(Dur(c.denied_retry_duration)),
        network: network::to_raw(&c.network),
    }
}
