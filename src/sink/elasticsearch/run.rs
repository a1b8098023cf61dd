//! The sink's run loop: group deliveries → encode → `POST /_bulk` → classify → settle →
//! acknowledge, with up to `concurrency` requests in flight.
//!
//! One owner task holds the `SinkReader` and the `AckWindow`: it gathers groups, encodes
//! them into bodies and hands each body to an idle [`Worker`]. A worker owns a client and
//! sees its body through to the end (retries, halves after a 413, dead letters), reporting
//! the offsets it settles after each request over a channel; the owner settles them in the
//! window and acknowledges what became contiguous. Workers are moved into a task per body
//! and come back when it is done, so there are never more than `concurrency` bodies in
//! flight; the owner reads more only once every encoded body is in a worker's hands.
//!
//! Exactly-once rests on three things: `_id`s are the buffer's stable identity of each
//! event with a checksum of its document (`create` answers 409 for a retry of the same
//! document already stored, and only for that), a buffer position
//! is acknowledged only when it and everything before it is settled (`AckWindow`), and a
//! dead-lettered event is synced to the dead-letter file before it counts as settled.
//!
//! Retries never end by themselves unless `max_retry_duration` is set: the durable buffer
//! holds the backlog while the cluster is down. With a limit, a body whose first attempt is
//! older than the limit has its remaining items written to the dead-letter file
//! (`retry_expired`) at its next failure — counted, never dropped silently.

use super::client::{describe, BulkClient, SendError};
use super::encode::{gzip, BulkBody, BulkEncoder, IdMode, Position};
use super::response::{classify, RequestInfo};
use super::{settle, AckWindow, Next, Settlement};
use crate::backoff::Backoff;
use crate::config::elasticsearch::{ElasticsearchConfig, EsAuth, SigV4Auth, SigV4Service};
use crate::metrics::{Metrics, SinkLabel, SinkReasonLabel};
use crate::pipeline::Delivery;
use crate::sink::batch::{Gather, Limits, MaxWait, Step};
use crate::sink::deadletter::DeadLetters;
use crate::sink::{SinkContext, SinkError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Warnings for failed requests: a cluster that is down for an hour must not fill the log.
static SEND_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);
/// Errors for requests refused as unauthorized (401/403) or not signed: the same limit.
static AUTH_ERROR: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);

/// Backoff of whole requests (server down, 429/5xx): from 100 ms up to 30 s.
const REQUEST_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));
/// Backoff of items answered 429/5xx inside a 200 response.
const ITEM_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(10));

/// Body buffers kept for the next bodies (see [`Spare`]).
const SPARE_BODIES: usize = 2;

/// Deliveries read but not acknowledged past which the sink stops reading for a while;
/// or more, when `concurrency + 1` groups of `batch_max_records` one-event deliveries need it.
const MAX_OPEN_DELIVERIES: usize = 1 << 16;

/// Run until the pipeline ends (every input stopped and everything read was settled).
pub async fn run(
    cfg: &ElasticsearchConfig,
    instance_id: u64,
    mut ctx: SinkContext,
) -> Result<(), SinkError> {
    let name = ctx.name.clone();
    if let EsAuth::AwsSigV4(SigV4Auth { service: SigV4Service::Aoss, .. }) = &cfg.auth {
        if cfg.encode.id == IdMode::Stable {
            tracing::warn!(
                sink = %name,
                "id = \"stable\" with OpenSearch Serverless: time series collections refuse document ids \
                 (every event would be dead-lettered); set id = \"none\" for them (search collections take ids)"
            );
        }
    }
    // Unbounded, yet bounded by what is in flight: a worker sends each offset once, and only
    // offsets of bodies it holds.
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Vec<u64>>();
    let dead_file_lock = Arc::new(Mutex::new(()));
    let spare = Arc::new(Spare::default());
    let conflict_means_delivered = cfg.encode.conflict_means_delivered();
    let mut idle = Vec::with_capacity(cfg.network.concurrency);
    for _ in 0..cfg.network.concurrency {
        let client = BulkClient::new(cfg, &ctx.aws)
            .await
            .map_err(|e| SinkError::Io { sink: name.clone(), source: std::io::Error::other(e) })?;
        idle.push(Worker {
            client,
            dead: DeadLetters::new(
                &cfg.network.dead_letter_path,
                cfg.network.dead_letter_max_size,
                &dead_file_lock,
            ),
            done: Vec::new(),
            settled: settled_tx.clone(),
            conflict_means_delivered,
            gzip: cfg.gzip,
            request_backoff: Backoff::from_entropy(REQUEST_BACKOFF.0, REQUEST_BACKOFF.1),
            item_backoff: Backoff::from_entropy(ITEM_BACKOFF.0, ITEM_BACKOFF.1),
            settlement: Settlement::default(),
            spare: Arc::clone(&spare),
            records: ctx
                .metrics
                .output_records
                .get_or_create(&SinkLabel { sink: name.clone() })
                .clone(),
            bytes: ctx
                .metrics
                .output_bytes
                .get_or_create(&SinkLabel { sink: name.clone() })
                .clone(),
            request_duration: ctx
                .metrics
                .output_request_duration
                .get_or_create(&SinkLabel { sink: name.clone() })
                .clone(),
            max_retry: cfg.network.max_retry_duration,
            metrics: Arc::clone(&ctx.metrics),
            name: name.clone(),
        });
    }
    // Only the workers hold senders: the channel never closes while one exists.
    drop(settled_tx);
    let endpoint = idle.first().map_or("", |w| w.client.endpoint()).to_owned();
    tracing::info!(sink = %name, endpoint, concurrency = cfg.network.concurrency, dead_letter_path = %cfg.network.dead_letter_path.display(), "elasticsearch sink started");

    let mut owner = Owner {
        encoder: BulkEncoder::new(cfg.encode.clone(), cfg.template.clone(), instance_id),
        window: AckWindow::new(ctx.reader.acked()),
        dead: DeadLetters::new(
            &cfg.network.dead_letter_path,
            cfg.network.dead_letter_max_size,
            &dead_file_lock,
        ),
        spare,
        name: name.clone(),
    };
    let open_limit =
        MAX_OPEN_DELIVERIES.max((cfg.network.concurrency + 1) * cfg.encode.batch_max_records);
    let mut gathering = gather(cfg);
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut tasks: JoinSet<Worker> = JoinSet::new();
    let mut ended = false;
    loop {
        while !pending.is_empty() && !idle.is_empty() {
            if let (Some(job), Some(worker)) = (pending.pop_front(), idle.pop()) {
                tasks.spawn(worker.deliver(job));
            }
        }
        if ended && pending.is_empty() && tasks.is_empty() {
            // Every worker is back: whatever they sent is in the channel.
            while let Ok(offsets) = settled_rx.try_recv() {
                owner.settle(&mut ctx, &offsets);
            }
            return Ok(());
        }
        // Read more only once every encoded body is in a worker's hands: memory holds at
        // most `concurrency` bodies and the group being gathered. And not while one body
        // stuck in retries holds back the acknowledgement of too much read after it: the
        // window keeps a few bytes for each delivery it tracks.
        let reading = !ended && pending.is_empty() && owner.window.len() < open_limit;
        tokio::select! {
            Some(offsets) = settled_rx.recv() => owner.settle(&mut ctx, &offsets),
            Some(joined) = tasks.join_next() => match joined {
                Ok(worker) => idle.push(worker),
                // A worker only ends by returning itself; a panic is a bug, and its
                // offsets can never settle: stop rather than hold acknowledgements for ever.
                Err(e) => return Err(SinkError::Io { sink: name, source: std::io::Error::other(format!("elasticsearch sink worker failed: {e}")) }),
            },
            // Cancel-safe: a completing worker may interrupt it without losing anything.
            step = gathering.next(&mut ctx.reader), if reading => {
                let flush = match step {
                    Step::Added(full) => full,
                    Step::Waited => true,
                    Step::End => {
                        ended = true;
                        true
                    }
                };
                if flush && !gathering.is_empty() {
                    let group = gathering.take();
                    owner.encode(&mut ctx, group, &mut pending).await;
                }
            }
            // Unreachable while a worker exists (each holds a sender); never spin.
            else => return Err(SinkError::Stopped),
        }
    }
}

/// The group being gathered: deliveries until a body is full or `flush_interval` passed
/// since the first one.
fn gather(cfg: &ElasticsearchConfig) -> Gather {
    Gather::new(Limits {
        events: cfg.encode.batch_max_records,
        bytes: cfg.encode.batch_max_bytes,
        deliveries: usize::MAX,
        max_wait: MaxWait::For(cfg.network.flush_interval),
    })
}

/// What only the reading side touches: the encoder and the acknowledgement window.
struct Owner {
    encoder: BulkEncoder,
    window: AckWindow,
    /// Events that cannot be encoded.
    dead: DeadLetters,
    spare: Arc<Spare>,
    name: String,
}

/// Buffers of bodies already compressed onto the wire, for the next bodies to be encoded
/// into. A body of 5,000 documents is ~2 MB: a new one each time may come from `mmap` with
/// its pages to fault in anew (~7% more CPU per document, measured with a 1 MiB mmap
/// threshold), or leave holes in the heap; and holding each body until its request ended
/// held `concurrency` of them. Two spares serve the owner, which encodes one body at a
/// time, while workers compress theirs.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u8>>>);

impl Spare {
    fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BODIES {
            spare.push(buf);
        }
    }
}

impl Owner {
    /// Track `group` in the window and queue its bodies; events that cannot be encoded go
    /// to the dead-letter file at once.
    async fn encode(
        &mut self,
        ctx: &mut SinkContext,
        group: Vec<Delivery>,
        pending: &mut VecDeque<Job>,
    ) {
        for d in &group {
            self.window.push(d);
        }
        let group: Arc<[Delivery]> = group.into();
        let since = Instant::now();
        let mut pos = Some(Position::default());
        let mut settled = Vec::new();
        while let Some(p) = pos {
            let mut body = BulkBody { body: self.spare.take(), ..BulkBody::default() };
            pos = self.encoder.encode(&group, p, &mut body);
            settled.append(&mut body.skipped);
            for d in body.dead.drain(..) {
                let reason = d.reason.to_string();
                self.dead.push(&group, d.offset, 0, d.reason.label(), &reason, d.reason.label());
            }
            if !body.is_empty() {
                pending.push_back(Job { group: Arc::clone(&group), body, since });
            }
        }
        self.dead.flush(&self.name, &ctx.metrics, &mut settled).await;
        self.settle(ctx, &settled);
    }

    /// Settle `offsets` and acknowledge what became contiguous.
    fn settle(&mut self, ctx: &mut SinkContext, offsets: &[u64]) {
        for offset in offsets {
            if let Err(e) = self.window.settle(*offset) {
                // A bug, never data: the event's fate is known, only the bookkeeping is off.
                tracing::error!(sink = %self.name, error = %e, "ack window refused an offset");
            }
        }
        if let Some(seq) = self.window.ackable() {
            ctx.reader.ack(seq);
        }
    }
}

/// One encoded body for a worker, with the group its events come from (for dead letters).
struct Job {
    group: Arc<[Delivery]>,
    body: BulkBody,
    since: Instant,
}

/// Sends one body at a time, to the end, with its own client, backoff and failover.
struct Worker {
    client: BulkClient,
    dead: DeadLetters,
    /// Offsets settled by the current request, sent to the owner after it.
    done: Vec<u64>,
    settled: mpsc::UnboundedSender<Vec<u64>>,
    conflict_means_delivered: bool,
    gzip: bool,
    request_backoff: Backoff,
    item_backoff: Backoff,
    settlement: Settlement,
    /// Where a body's buffer goes once it is compressed.
    spare: Arc<Spare>,
    /// `berth_output_records_total` / `_bytes_total` of this sink, looked up once.
    records: Counter,
    bytes: Counter,
    /// `berth_output_request_duration_seconds` of this sink.
    request_duration: Histogram,
    /// `max_retry_duration`: `None` retries for ever.
    max_retry: Option<Duration>,
    metrics: Arc<Metrics>,
    name: String,
}

/// A body waiting to be sent, with the time its items were first sent (or encoded): the
/// start of their retries for `max_retry_duration`. Retried items and split halves keep it.
struct Queued {
    body: BulkBody,
    since: Instant,
}

impl Worker {
    /// Deliver `job` until each of its items is delivered or dead-lettered; then the worker
    /// is free again.
    async fn deliver(mut self, job: Job) -> Worker {
        let mut queue = VecDeque::from([Queued { body: job.body, since: job.since }]);
        while let Some(Queued { body, since }) = queue.pop_front() {
            self.send_body(&job.group, body, since, &mut queue).await;
            if !self.done.is_empty() {
                // The owner is gone only once the sink stops: nothing left to tell.
                let _ = self.settled.send(std::mem::take(&mut self.done));
            }
        }
        self
    }

    async fn flush_dead(&mut self) {
        self.dead.flush(&self.name, &self.metrics, &mut self.done).await;
    }

    fn retried(&self, reason: &'static str, n: u64) {
        self.metrics
            .output_retries
            .get_or_create(&SinkReasonLabel { sink: self.name.clone(), reason })
            .inc_by(n);
    }

    /// True when items first sent at `since` have been retried past `max_retry_duration`.
    fn expired(&self, since: Instant) -> bool {
        self.max_retry.is_some_and(|max| since.elapsed() >= max)
    }

    /// Back off before resending, but not past the `max_retry_duration` deadline: the last
    /// attempt is made at the deadline rather than a whole backoff after it.
    async fn backoff_request(&mut self, since: Instant, retry_after: Option<Duration>) {
        let delay = self.request_backoff.next_delay_after(retry_after);
        let delay = match self.max_retry {
            Some(max) => delay.min(max.saturating_sub(since.elapsed())),
            None => delay,
        };
        tokio::time::sleep(delay).await;
    }

    /// Items `which` of `body` were retried past `max_retry_duration`: to the dead-letter
    /// file, with the last failure as the reason.
    async fn expire(
        &mut self,
        group: &[Delivery],
        body: &BulkBody,
        which: &[usize],
        status: u16,
        last: &str,
    ) {
        let max = self.max_retry.unwrap_or_default();
        let reason = format!(
            "not delivered after retrying for max_retry_duration ({}); last error: {last}",
            crate::config::format_duration(max)
        );
        tracing::warn!(sink = %self.name, items = which.len(), last_error = last, "retries expired (max_retry_duration)");
        self.dead_letter(group, body, which, status, "retry_expired", &reason).await;
    }

    /// Items `which` of `body` to the dead-letter file (`error_type` is also the metric's
    /// reason), synced before they count as settled.
    async fn dead_letter(
        &mut self,
        group: &[Delivery],
        body: &BulkBody,
        which: &[usize],
        status: u16,
        error_type: &'static str,
        reason: &str,
    ) {
        for i in which {
            let Some(item) = body.items.get(*i) else { continue };
            self.dead.push(group, item.offset, status, error_type, reason, error_type);
        }
        self.flush_dead().await;
    }

    /// A body's bytes could not be had back from its own gzip (a bug, never the data):
    /// its items go to the dead-letter file, which keeps each event, rather than retried
    /// blind or lost.
    async fn unwire_failed(
        &mut self,
        group: &[Delivery],
        body: &BulkBody,
        which: &[usize],
        e: &std::io::Error,
    ) {
        let reason = format!("cannot decompress the sink's own request body: {e}");
        tracing::error!(sink = %self.name, items = which.len(), error = %e, "cannot decompress a request body to retry it; its items go to the dead-letter file");
        self.dead_letter(group, body, which, 0, "internal", &reason).await;
    }

    /// Send one body until every item in it is settled or queued again (retries, halves).
    async fn send_body(
        &mut self,
        group: &[Delivery],
        body: BulkBody,
        since: Instant,
        queue: &mut VecDeque<Queued>,
    ) {
        let info = RequestInfo {
            items: body.len(),
            conflict_means_delivered: self.conflict_means_delivered,
        };
        // A 401/403 has made the client load its credentials again and retry at once.
        let mut refreshed = false;
        // Compressed once: every attempt at this body sends the same bytes.
        let mut body = body;
        let (wire, gzipped) = wire(&mut body, self.gzip, &self.spare, &self.name);
        let wire_len = wire.len() as u64;
        loop {
            let sent_at = Instant::now();
            let reply = self.client.send(wire.clone(), gzipped).await;
            self.request_duration.observe(sent_at.elapsed().as_secs_f64());
            let reply = match reply {
                Ok(r) => r,
                Err(SendError::Sign(e)) => {
                    // No credentials (yet): the chain is asked again after the backoff.
                    self.retried("credentials", 1);
                    if let Some(suppressed) = AUTH_ERROR.check() {
                        tracing::error!(sink = %self.name, endpoint = self.client.endpoint(), error = %describe(&e), suppressed, "bulk request not signed; retrying");
                    }
                    self.request_backoff.wait(None).await;
                    continue;
                }
                Err(e) => {
                    let e = describe(&e);
                    if self.expired(since) {
                        let all: Vec<usize> = (0..body.len()).collect();
                        self.expire(group, &body, &all, 0, &e).await;
                        self.client.fail_over();
                        return;
                    }
                    self.retried("connection", 1);
                    if let Some(suppressed) = SEND_WARN.check() {
                        tracing::warn!(sink = %self.name, endpoint = self.client.endpoint(), error = %e, suppressed, "bulk request failed; retrying");
                    }
                    self.client.fail_over();
                    self.backoff_request(since, None).await;
                    continue;
                }
            };
            let verdict = classify(reply.status, reply.retry_after, &reply.body, info);
            match settle(&body, verdict, &mut self.settlement) {
                Next::ResendAll { retry_after, reason, refresh_credentials: true } => {
                    // Bounded like every failure that holds the sink (one rule for both
                    // network sinks): refused past `max_retry_duration`, dead-lettered.
                    if self.expired(since) {
                        let all: Vec<usize> = (0..body.len()).collect();
                        self.expire(group, &body, &all, reply.status, &reason).await;
                        return;
                    }
                    self.retried("unauthorized", 1);
                    // Credentials rotated or revoked before their expiry: load them again
                    // and retry at once, once. Refused again, it is not a passing thing.
                    if !refreshed && self.client.refresh_credentials().await {
                        refreshed = true;
                        tracing::info!(sink = %self.name, endpoint = self.client.endpoint(), status = reply.status, "bulk request refused; loading the aws credentials again and retrying");
                        continue;
                    }
                    if let Some(suppressed) = AUTH_ERROR.check() {
                        tracing::error!(
                            sink = %self.name,
                            endpoint = self.client.endpoint(),
                            status = reply.status,
                            reason,
                            suppressed,
                            "bulk request refused as unauthorized (check the credentials, the sink's auth settings and the cluster's access policy); retrying with backoff"
                        );
                    }
                    // Ask the chain again after the backoff (a fixed profile, a new role).
                    self.client.refresh_credentials().await;
                    self.request_backoff.wait(retry_after).await;
                    continue;
                }
                Next::ResendAll { retry_after, reason, .. } => {
                    if self.expired(since) {
                        let all: Vec<usize> = (0..body.len()).collect();
                        self.expire(group, &body, &all, reply.status, &reason).await;
                        if reply.status >= 500 || reply.status == 429 {
                            self.client.fail_over();
                        }
                        return;
                    }
                    self.retried("http_status", 1);
                    if let Some(suppressed) = SEND_WARN.check() {
                        tracing::warn!(sink = %self.name, endpoint = self.client.endpoint(), reason, suppressed, "bulk request refused; retrying");
                    }
                    if reply.status >= 500 || reply.status == 429 {
                        self.client.fail_over();
                    }
                    self.backoff_request(since, retry_after).await;
                    continue;
                }
                Next::Split => {
                    if let Err(e) = unwire(&mut body, &wire, gzipped) {
                        let all: Vec<usize> = (0..body.len()).collect();
                        self.unwire_failed(group, &body, &all, &e).await;
                        return;
                    }
                    self.retried("split", body.len() as u64);
                    tracing::info!(sink = %self.name, items = body.len(), "bulk request too large (413); splitting it");
                    let (mut a, mut b) = (BulkBody::default(), BulkBody::default());
                    body.split_half(&mut a, &mut b);
                    queue.push_front(Queued { body: b, since });
                    queue.push_front(Queued { body: a, since });
                    return;
                }
                Next::Settled => {}
            }
            self.request_backoff.reset();
            self.bytes.inc_by(wire_len);
            let st = std::mem::take(&mut self.settlement);
            self.records.inc_by(st.delivered.len() as u64);
            self.done.extend_from_slice(&st.delivered);
            for r in &st.rejected {
                let label = if r.status == 413 { "too_large" } else { "rejected" };
                self.dead.push(group, r.offset, r.status, &r.error_type, &r.reason, label);
            }
            self.flush_dead().await;
            if !st.retry.is_empty() && self.expired(since) {
                let last = st.retry_reason.clone().unwrap_or_default();
                self.expire(group, &body, &st.retry, 0, &last).await;
                self.item_backoff.reset();
            } else if !st.retry.is_empty() {
                if let Err(e) = unwire(&mut body, &wire, gzipped) {
                    self.unwire_failed(group, &body, &st.retry, &e).await;
                    self.settlement = st;
                    return;
                }
                self.retried("item", st.retry.len() as u64);
                tracing::debug!(sink = %self.name, items = st.retry.len(), reason = st.retry_reason.as_deref().unwrap_or(""), "items to retry");
                let mut again = BulkBody::default();
                body.select(st.retry.iter().copied(), &mut again);
                self.item_backoff.wait(None).await;
                queue.push_front(Queued { body: again, since });
            } else {
                self.item_backoff.reset();
            }
            self.settlement = st;
            return;
        }
    }
}

/// The bytes to send for `body`, and whether they are gzip-compressed. The body gives its
/// bytes up: while a request is in flight only what goes on the wire is held (the body of
/// 5,000 documents is ~2 MB, its gzip a tenth of that, and up to `concurrency` are in
/// flight); a compressed body's buffer goes to `spare` for the next one, and the rare split
/// or item retry gets the bytes back with [`unwire`].
fn wire(body: &mut BulkBody, gzip_it: bool, spare: &Spare, sink: &str) -> (bytes::Bytes, bool) {
    if gzip_it {
        let mut out = Vec::new();
        match gzip(&body.body, &mut out) {
            Ok(()) => {
                spare.give(std::mem::take(&mut body.body));
                return (out.into(), true);
            }
            // In memory: cannot fail short of allocation failure; send it plain.
            Err(e) => tracing::warn!(sink, error = %e, "gzip failed; sending uncompressed"),
        }
    }
    (std::mem::take(&mut body.body).into(), false)
}

/// Gives `body` its bytes back from the `wire` they were sent as (see [`wire`]), to
/// split it or retry some of its items.
fn unwire(body: &mut BulkBody, wire: &bytes::Bytes, gzipped: bool) -> std::io::Result<()> {
    if !body.body.is_empty() {
        return Ok(());
    }
    if gzipped {
        use std::io::Read;
        let mut out = Vec::with_capacity(wire.len().saturating_mul(8));
        flate2::read::GzDecoder::new(&wire[..]).read_to_end(&mut out)?;
        body.body = out;
    } else {
        body.body = wire.to_vec();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::elasticsearch::encode::Item;

    fn body(lines: &[&str]) -> BulkBody {
        let mut b = BulkBody::default();
        for (i, l) in lines.iter().enumerate() {
            let start = b.body.len();
            b.body.extend_from_slice(l.as_bytes());
            b.items.push(Item { offset: i as u64, range: start..b.body.len() });
        }
        b
    }

    #[test]
    fn a_body_given_up_for_the_wire_comes_back_from_it_whole() {
        let lines = ["{\"create\":{}}\n{\"a\":1}\n", "{\"create\":{}}\n{\"b\":\"two\"}\n"];
        let original = body(&lines);
        for gzipped in [true, false] {
            let mut sent = original.clone();
            let spare = Spare::default();
            let (bytes, compressed) = wire(&mut sent, gzipped, &spare, "s");
            assert_eq!(compressed, gzipped);
            assert!(sent.body.is_empty());
            // A compressed body's buffer is kept for the next one; a plain one is the wire.
            assert_eq!(spare.take().capacity() > 0, gzipped);
            unwire(&mut sent, &bytes, gzipped).unwrap();
            assert_eq!(sent, original, "gzipped {gzipped}");
            // Halves and retries work on the bytes given back.
            let (mut a, mut b) = (BulkBody::default(), BulkBody::default());
            sent.split_half(&mut a, &mut b);
            assert_eq!(
                (a.item_bytes(0), b.item_bytes(0)),
                (lines[0].as_bytes(), lines[1].as_bytes())
            );
            // A body that still has its bytes is left as it is.
            unwire(&mut sent, &bytes::Bytes::from_static(b"junk"), gzipped).unwrap();
            assert_eq!(sent, original);
        }
    }

    #[test]
    fn spare_bodies_come_back_empty_with_their_capacity_and_at_most_two_are_kept() {
        let spare = Spare::default();
        assert!(spare.take().capacity() == 0, "none yet: a new buffer");
        for _ in 0..3 {
            let mut b = Vec::with_capacity(1 << 20);
            b.extend_from_slice(b"{\"create\":{}}\n{}\n");
            spare.give(b);
        }
        let (a, b) = (spare.take(), spare.take());
        assert!(a.is_empty() && b.is_empty(), "cleared when given back");
        assert!(a.capacity() >= 1 << 20 && b.capacity() >= 1 << 20, "their memory is kept");
        assert_eq!(spare.take().capacity(), 0, "the third was let go");
    }

    #[test]
    fn wire_bytes_that_are_not_gzip_are_an_error_not_a_body() {
        let mut b = body(&["{\"create\":{}}\n{}\n"]);
        b.body.clear();
        let err = unwire(&mut b, &bytes::Bytes::from_static(b"not gzip at all"), true).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(b.body.is_empty());
    }
}
