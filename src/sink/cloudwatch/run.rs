//! The sink's run loop: gather deliveries → encode → PutLogEvents per stream (up to
//! `concurrency` streams at once, each stream's batches in order) → settle → acknowledge.
//!
//! A group of deliveries is acknowledged once every record in it is delivered or synced to
//! the dead-letter file; the next group is read after that. Retries never end by themselves
//! unless `max_retry_duration` is set: the durable buffer holds the backlog meanwhile.

use super::encode::{Encoder, LogBatch, MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use super::{classify, Failure, RejectedInfo};
use crate::aws::{Aws, AwsError};
use crate::backoff::Backoff;
use crate::config::cloudwatch::CloudWatchConfig;
use crate::metrics::{Metrics, SinkLabel, SinkReasonLabel};
use crate::pipeline::Delivery;
use crate::sink::batch::{Gather, Limits, MaxWait};
use crate::sink::deadletter::{find, DeadLetters};
use crate::sink::{SinkContext, SinkError};
use aws_sdk_cloudwatchlogs as cwl;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use cwl::types::InputLogEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Warnings for failed requests: an endpoint that is down for an hour must not fill the log.
static SEND_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);
/// Errors for refused credentials and groups or streams that cannot be created.
static AUTH_ERROR: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);

/// Backoff of failed calls: from 100 ms up to 30 s, with jitter.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// Run until the pipeline ends (every input stopped and everything read was settled).
/// An encoder for this sink's names, messages and limits.
fn new_encoder(cfg: &CloudWatchConfig) -> Encoder {
    Encoder::new(
        cfg.group_template.clone(),
        cfg.stream_template.clone(),
        cfg.message_key.clone(),
        cfg.retention_days,
        cfg.max_event_size,
    )
}

pub async fn run(cfg: &CloudWatchConfig, mut ctx: SinkContext) -> Result<(), SinkError> {
    let name = ctx.name.clone();
    let client = client(cfg, &ctx.aws)
        .await
        .map_err(|e| SinkError::Io { sink: name.clone(), source: std::io::Error::other(e) })?;
    let label = SinkLabel { sink: name.clone() };
    let shared = Arc::new(Shared {
        client,
        cfg: cfg.clone(),
        records: ctx.metrics.output_records.get_or_create(&label).clone(),
        bytes: ctx.metrics.output_bytes.get_or_create(&label).clone(),
        request_duration: ctx.metrics.output_request_duration.get_or_create(&label).clone(),
        metrics: Arc::clone(&ctx.metrics),
        dead_lock: Arc::new(Mutex::new(())),
        name: name.clone(),
    });
    let split = ctx.metrics.output_split_records.get_or_create(&label).clone();
    tracing::info!(
        sink = %name,
        endpoint = cfg.endpoint_url.as_deref().unwrap_or("(sdk default)"),
        log_group = %cfg.log_group,
        log_stream = %cfg.log_stream,
        concurrency = cfg.network.concurrency,
        dead_letter_path = %cfg.network.dead_letter_path.display(),
        "cloudwatch_logs sink started"
    );
    let mut encoder = new_encoder(cfg);
    let streams_at_once = Arc::new(Semaphore::new(cfg.network.concurrency));
    let mut gather = gather(cfg);
    while let Some(group) = gather.fill(&mut ctx.reader).await {
        let seq = group.last().map_or(0, |d| d.seq);
        let group: Arc<[Delivery]> = group.into();
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let encoded = encoder.encode(&group, now_ms);
        split.inc_by(encoded.split);
        if !encoded.dead.is_empty() {
            let mut dead = shared.dead_letters();
            for (offset, reason) in &encoded.dead {
                dead.push(&group, *offset, 0, reason.label(), reason.describe(), reason.label());
            }
            dead.flush(&name, &ctx.metrics, &mut Vec::new()).await;
        }
        // Batches of one stream are next to each other: one task per stream.
        let mut tasks = JoinSet::new();
        let mut batches = encoded.batches.into_iter().peekable();
        while let Some(first) = batches.next() {
            let mut mine = vec![first];
            while let Some(b) =
                batches.next_if(|b| b.group == mine[0].group && b.stream == mine[0].stream)
            {
                mine.push(b);
            }
            let (shared, group, permits) =
                (Arc::clone(&shared), Arc::clone(&group), Arc::clone(&streams_at_once));
            let mut again = new_encoder(cfg);
            tasks.spawn(async move {
                // The semaphore is never closed.
                let _permit = permits.acquire_owned().await;
                for b in mine {
                    shared.send(&group, b, &mut again).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            // A panic is a bug; its batch's fate is unknown: stop rather than acknowledge it.
            joined.map_err(|e| SinkError::Io {
                sink: name.clone(),
                source: std::io::Error::other(format!("cloudwatch_logs sink task failed: {e}")),
            })?;
        }
        ctx.reader.ack(seq);
    }
    Ok(())
}

/// Groups of deliveries until `flush_interval` passed since the first one, or enough for
/// `concurrency` full batches.
fn gather(cfg: &CloudWatchConfig) -> Gather {
    Gather::new(Limits {
        events: MAX_BATCH_EVENTS * cfg.network.concurrency,
        bytes: MAX_BATCH_BYTES * cfg.network.concurrency,
        deliveries: usize::MAX,
        max_wait: MaxWait::For(cfg.network.flush_interval),
    })
}

/// The SDK client, on the process's AWS configuration for this sink's keys (region,
/// `role_arn`, `external_id`: see `crate::aws`). The SDK's own retries are off: retries are
/// this sink's, counted and backed off with jitter per batch.
async fn client(cfg: &CloudWatchConfig, aws: &Aws) -> Result<cwl::Client, AwsError> {
    let loaded = aws.load(&cfg.aws).await?;
    let mut b = cwl::config::Builder::from(loaded.sdk())
        .retry_config(cwl::config::retry::RetryConfig::disabled())
        .timeout_config(
            cwl::config::timeout::TimeoutConfig::builder()
                .operation_timeout(cfg.network.timeout)
                .build(),
        );
    if let Some(u) = &cfg.endpoint_url {
        b = b.endpoint_url(u.clone());
    }
    Ok(cwl::Client::from_conf(b.build()))
}

/// What is kept of each event sent, to settle it and to make it again for a retry.
struct Sent {
    offset: u64,
    part: u32,
    timestamp: i64,
    /// Message bytes.
    len: usize,
}

/// An SDK event (both required fields are set: `build` cannot fail).
fn log_event(timestamp: i64, message: String) -> InputLogEvent {
    InputLogEvent::builder()
        .timestamp(timestamp)
        .message(message)
        .build()
        .unwrap_or_else(|_| unreachable!("timestamp and message are set"))
}

/// What every stream task of the sink shares.
struct Shared {
    client: cwl::Client,
    cfg: CloudWatchConfig,
    records: Counter,
    bytes: Counter,
    request_duration: Histogram,
    metrics: Arc<Metrics>,
    /// One dead-letter writer at a time.
    dead_lock: Arc<Mutex<()>>,
    name: String,
}

/// The text of an error from any CloudWatch Logs call: `Code: message`, or the whole chain
/// when there was no answer.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => DisplayErrorContext(e).to_string(),
    }
}

fn status_of<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl Shared {
    fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(
            &self.cfg.network.dead_letter_path,
            self.cfg.network.dead_letter_max_size,
            &self.dead_lock,
        )
    }

    fn retried(&self, reason: &'static str) {
        self.metrics
            .output_retries
            .get_or_create(&SinkReasonLabel { sink: self.name.clone(), reason })
            .inc();
    }

    /// Send one batch until each of its records is delivered or dead-lettered. The first
    /// attempt moves the encoded messages into the request; a retry makes them again from
    /// the records with `again` (no copy of every message on the path that succeeds).
    async fn send(&self, group: &[Delivery], batch: LogBatch, again: &mut Encoder) {
        let since = Instant::now();
        let mut backoff = Backoff::from_entropy(BACKOFF.0, BACKOFF.1);
        let LogBatch { group: log_group, stream, events, bytes } = batch;
        let ids: Vec<Sent> = events
            .iter()
            .map(|e| Sent {
                offset: e.offset,
                part: e.part,
                timestamp: e.timestamp,
                len: e.message.len(),
            })
            .collect();
        let mut first =
            Some(events.into_iter().map(|e| log_event(e.timestamp, e.message)).collect::<Vec<_>>());
        let mut created = false;
        // Since when this batch's destination has been refused (not the credentials: the
        // policy, for this group or stream), and the last refusal.
        let mut denied: Option<(Instant, String)> = None;
        loop {
            let input = first.take().unwrap_or_else(|| {
                ids.iter()
                    .map(|s| {
                        let message = find(group, s.offset)
                            .map(|(_, ev)| again.message_again(&ev.record, s.part))
                            .unwrap_or_default();
                        log_event(s.timestamp, message)
                    })
                    .collect()
            });
            let sent_at = Instant::now();
            let reply = self
                .client
                .put_log_events()
                .log_group_name(&log_group)
                .log_stream_name(&stream)
                .set_log_events(Some(input))
                .send()
                .await;
            self.request_duration.observe(sent_at.elapsed().as_secs_f64());
            let err = match reply {
                Ok(out) => {
                    self.accepted(group, &ids, bytes, out.rejected_log_events_info()).await;
                    return;
                }
                Err(e) => e,
            };
            let (code, status, text) =
                (err.code().map(str::to_owned), status_of(&err), describe(&err));
            let failure = classify(code.as_deref(), status);
            match failure {
                // Just created (or found existing) and still not found: the service may not
                // see it yet; back off rather than loop, and create again next time.
                Failure::NotFound if created => {
                    self.retried("not_found");
                    created = false;
                }
                Failure::NotFound => {
                    self.retried("not_found");
                    match self.ensure_exists(&log_group, &stream).await {
                        Ok(()) => {
                            created = true;
                            continue;
                        }
                        Err((e, refused)) => {
                            if refused {
                                denied.get_or_insert_with(|| (Instant::now(), String::new())).1 =
                                    e.clone();
                            }
                            if let Some(suppressed) = AUTH_ERROR.check() {
                                tracing::error!(sink = %self.name, log_group, log_stream = stream, error = %e, suppressed, "log group or stream missing and not created; retrying");
                            }
                        }
                    }
                }
                Failure::Denied => {
                    self.retried("denied");
                    denied.get_or_insert_with(|| (Instant::now(), String::new())).1 = text.clone();
                    if let Some(suppressed) = AUTH_ERROR.check() {
                        tracing::error!(sink = %self.name, log_group, log_stream = stream, error = %text, suppressed, "PutLogEvents refused for this log group by the policy (logs:PutLogEvents on it); retrying, then its events go to the dead-letter file");
                    }
                }
                Failure::AlreadyAccepted => {
                    self.accepted(group, &ids, bytes, None).await;
                    return;
                }
                Failure::Reject => {
                    let reason = format!("PutLogEvents refused the batch: {text}");
                    let mut dead = self.dead_letters();
                    let mut last = None;
                    for s in &ids {
                        if last != Some(s.offset) {
                            dead.push(
                                group,
                                s.offset,
                                status.unwrap_or(0),
                                code.as_deref().unwrap_or("rejected"),
                                &reason,
                                "rejected",
                            );
                            last = Some(s.offset);
                        }
                    }
                    dead.flush(&self.name, &self.metrics, &mut Vec::new()).await;
                    return;
                }
                Failure::Unauthorized => {
                    self.retried("unauthorized");
                    if let Some(suppressed) = AUTH_ERROR.check() {
                        tracing::error!(
                            sink = %self.name,
                            status,
                            error = %text,
                            suppressed,
                            "PutLogEvents refused as unauthorized (check the credentials, role_arn and the IAM policy: logs:PutLogEvents, logs:CreateLogStream, logs:CreateLogGroup, logs:PutRetentionPolicy); retrying with backoff"
                        );
                    }
                }
                // AlreadyExists does not answer a PutLogEvents: an odd 4xx, retried.
                Failure::Retry { .. } | Failure::AlreadyExists => {
                    let reason = match failure {
                        Failure::Retry { reason } => reason,
                        _ => "http_status",
                    };
                    self.retried(reason);
                    if let Some(suppressed) = SEND_WARN.check() {
                        tracing::warn!(sink = %self.name, status, reason, error = %text, suppressed, "PutLogEvents failed; retrying");
                    }
                }
            }
            if let Some((_, why)) =
                denied.as_ref().filter(|(at, _)| at.elapsed() >= self.cfg.denied_retry_duration)
            {
                self.refused(group, &ids, &log_group, &stream, why).await;
                return;
            }
            if self.cfg.network.max_retry_duration.is_some_and(|max| since.elapsed() >= max) {
                self.expire(group, &ids, &text).await;
                return;
            }
            backoff.wait(None).await;
        }
    }

    /// A PutLogEvents answered 200: records are delivered except those the answer rejects.
    async fn accepted(
        &self,
        group: &[Delivery],
        ids: &[Sent],
        bytes: usize,
        info: Option<&cwl::types::RejectedLogEventsInfo>,
    ) {
        let idx = |v: Option<i32>| v.and_then(|i| usize::try_from(i).ok());
        let rejected = RejectedInfo {
            too_new_start: info.and_then(|i| idx(i.too_new_log_event_start_index())),
            too_old_end: info.and_then(|i| idx(i.too_old_log_event_end_index())),
            expired_end: info.and_then(|i| idx(i.expired_log_event_end_index())),
        };
        let mut dead = self.dead_letters();
        let (mut delivered, mut sent_bytes, mut last_dead) = (0u64, bytes, None);
        for (i, s) in ids.iter().enumerate() {
            match rejected.reason(i) {
                Some(why) => {
                    sent_bytes -= s.len + super::encode::EVENT_OVERHEAD;
                    if last_dead != Some(s.offset) {
                        let reason = format!(
                            "rejected by CloudWatch Logs (rejectedLogEventsInfo): {}",
                            why.describe()
                        );
                        dead.push(group, s.offset, 200, why.label(), &reason, why.label());
                        last_dead = Some(s.offset);
                    }
                }
                None => delivered += u64::from(s.part == 0),
            }
        }
        self.records.inc_by(delivered);
        self.bytes.inc_by(sent_bytes as u64);
        dead.flush(&self.name, &self.metrics, &mut Vec::new()).await;
    }

    /// The destination refused for `denied_retry_duration`: the batch's records to the
    /// dead-letter file (`denied`), so the sink's other streams go on.
    async fn refused(
        &self,
        group: &[Delivery],
        ids: &[Sent],
        log_group: &str,
        stream: &str,
        last: &str,
    ) {
        let reason = format!(
            "log group {log_group:?} stream {stream:?} refused for denied_retry_duration ({}): {last}",
            crate::config::format_duration(self.cfg.denied_retry_duration)
        );
        tracing::error!(sink = %self.name, log_group, log_stream = stream, records = ids.len(), last_error = last, "destination refused: records written to the dead-letter file");
        self.dead_letter_all(group, ids, "denied", &reason).await;
    }

    /// Retried past `max_retry_duration`: the batch's records to the dead-letter file.
    async fn expire(&self, group: &[Delivery], ids: &[Sent], last: &str) {
        let max = self.cfg.network.max_retry_duration.unwrap_or_default();
        let reason = format!(
            "not delivered after retrying for max_retry_duration ({}); last error: {last}",
            crate::config::format_duration(max)
        );
        tracing::warn!(sink = %self.name, records = ids.len(), last_error = last, "retries expired (max_retry_duration)");
        self.dead_letter_all(group, ids, "retry_expired", &reason).await;
    }

    /// Every record of a batch to the dead-letter file, once each (a record sent in parts
    /// has several `Sent`), as `kind` (its `error_type` and metric reason).
    async fn dead_letter_all(
        &self,
        group: &[Delivery],
        ids: &[Sent],
        kind: &'static str,
        reason: &str,
    ) {
        let mut dead = self.dead_letters();
        let mut prev = None;
        for s in ids {
            if prev != Some(s.offset) {
                dead.push(group, s.offset, 0, kind, reason, kind);
                prev = Some(s.offset);
            }
        }
        dead.flush(&self.name, &self.metrics, &mut Vec::new()).await;
    }

    /// Create the stream, and the group first when it is missing too (as allowed). The
    /// error says whether the destination itself is refused (not allowed to be created, the
    /// policy denies it, its name is invalid) rather than the service unreachable.
    async fn ensure_exists(&self, group: &str, stream: &str) -> Result<(), (String, bool)> {
        let refused = |f: &Failure| matches!(f, Failure::Denied | Failure::Reject);
        if !self.cfg.create_missing_stream {
            return Err((
                format!("log stream {stream:?} in {group:?} does not exist and create_missing_stream = false"),
                true,
            ));
        }
        match self.create_stream(group, stream).await {
            Ok(()) => return Ok(()),
            Err(Failure::NotFound) => {}
            Err(other) => {
                return Err((format!("CreateLogStream failed: {other:?}"), refused(&other)))
            }
        }
        if !self.cfg.create_missing_group {
            return Err((
                format!("log group {group:?} does not exist and create_missing_group = false"),
                true,
            ));
        }
        self.create_group(group).await?;
        self.create_stream(group, stream)
            .await
            .map_err(|f| (format!("CreateLogStream failed: {f:?}"), refused(&f)))
    }

    async fn create_stream(&self, group: &str, stream: &str) -> Result<(), Failure> {
        match self
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(sink = %self.name, log_group = group, log_stream = stream, "log stream created");
                Ok(())
            }
            Err(e) => {
                let status = status_of(&e);
                match classify(e.code(), status) {
                    Failure::AlreadyExists => Ok(()),
                    f => {
                        tracing::debug!(sink = %self.name, error = %DisplayErrorContext(&e), "CreateLogStream failed");
                        Err(f)
                    }
                }
            }
        }
    }

    async fn create_group(&self, group: &str) -> Result<(), (String, bool)> {
        let class = cwl::types::LogGroupClass::from(self.cfg.log_group_class.as_str());
        let created = self
            .client
            .create_log_group()
            .log_group_name(group)
            .log_group_class(class)
            .set_kms_key_id(self.cfg.kms_key_id.clone())
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(sink = %self.name, log_group = group, class = self.cfg.log_group_class.as_str(), "log group created")
            }
            Err(e) => {
                let status = status_of(&e);
                return match classify(e.code(), status) {
                    // Someone else created it: its settings are theirs.
                    Failure::AlreadyExists => Ok(()),
                    f => Err((
                        format!("CreateLogGroup failed: {}", DisplayErrorContext(&e)),
                        matches!(f, Failure::Denied | Failure::Reject),
                    )),
                };
            }
        }
        if let Some(days) = self.cfg.retention_days {
            if let Err(e) = self
                .client
                .put_retention_policy()
                .log_group_name(group)
                .retention_in_days(days)
                .send()
                .await
            {
                // The group exists and takes events: a warning, not a reason to hold them.
                tracing::warn!(sink = %self.name, log_group = group, retention_days = days, error = %DisplayErrorContext(&e), "cannot set the retention of a created log group");
            }
        }
        Ok(())
    }
}
