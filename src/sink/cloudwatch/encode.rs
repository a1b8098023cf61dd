//! From deliveries to PutLogEvents batches, with no network: log group and stream names
//! (templates), the message of each event, the time window CloudWatch Logs accepts, events
//! split when too large, and batches cut at every PutLogEvents limit.
//!
//! The limits, from the PutLogEvents API reference (checked 2026-11):
//! - a batch is at most 1,048,576 bytes, counted as the UTF-8 bytes of each message plus 26
//!   per event, and at most 10,000 events;
//! - events in a batch are in chronological order and span at most 24 hours;
//! - events more than 14 days old, older than the group's retention, or more than 2 hours in
//!   the future are rejected (`rejectedLogEventsInfo`);
//! - one event is at most 1 MB including its 26 bytes (it was 256 KB; `max_event_size` sets
//!   the limit berth keeps to, for endpoints still enforcing the old one).
//!
//! Lossy or visible choices, each covered by a test named after it:
//! - an event outside the time window is not sent: it goes to the dead-letter file with the
//!   reason (`events_outside_the_window_are_dead_letters_not_dropped`);
//! - an event larger than an event may be is sent as several events, in order, each
//!   message starting with `[berth part i/n] ` (`large_events_are_split_in_marked_parts`);
//! - an empty message (CloudWatch refuses empty events) is sent as the record's JSON
//!   (`empty_messages_are_sent_as_json`);
//! - a message that is not valid UTF-8 has its invalid bytes replaced by U+FFFD.

use crate::event::Tag;
use crate::msgpack::json::write_record_json;
use crate::pipeline::Delivery;
use crate::sink::template::{field, sanitize, NameTemplate, Naming, Scalar};
use std::collections::HashMap;

/// Bytes counted for each event on top of its message.
pub const EVENT_OVERHEAD: usize = 26;
/// Bytes in one PutLogEvents batch at most (messages + `EVENT_OVERHEAD` each).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Events in one PutLogEvents batch at most.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// One event at most, its overhead included: "Each log event can be no larger than 1 MB"
/// (PutLogEvents' reference, 2026; it said 256 KB before, and `max_event_size` can still
/// say so). With the overhead it then fills a batch alone.
pub const MAX_EVENT_BYTES: usize = MAX_BATCH_BYTES;
// The config checks `max_event_size` against its own copy of the limit.
const _: () = assert!(MAX_EVENT_BYTES == crate::config::cloudwatch::MAX_EVENT_SIZE);
/// Room kept in each part of a split event for its `[berth part i/n] ` marker.
const MARKER_ROOM: usize = 48;
/// The time span of one batch is kept under this (milliseconds).
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Events older than this are refused (milliseconds).
pub const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
/// Events further in the future than this are refused (milliseconds).
pub const MAX_FUTURE_MS: i64 = 2 * 3600 * 1000;

/// One event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub message: String,
    /// The buffer offset of the record it comes from (parts of a split record share it).
    pub offset: u64,
    /// Which part of a split record this is (0 for a record sent whole).
    pub part: u32,
}

impl LogEvent {
    /// True for a record sent whole and for the first part of a split one: a record counts
    /// once.
    pub fn first_part(&self) -> bool {
        self.part == 0
    }
}

/// Events for one PutLogEvents call: one stream, in chronological order, within every limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBatch {
    pub group: String,
    pub stream: String,
    pub events: Vec<LogEvent>,
    /// Messages' bytes + `EVENT_OVERHEAD` per event.
    pub bytes: usize,
}

/// Why a record is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    TooOld,
    BeforeRetention,
    TooNew,
}

impl DeadReason {
    /// The `reason` label of `berth_dead_letter_records_total` and the line's `error_type`.
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::TooOld => "too_old",
            DeadReason::BeforeRetention => "expired",
            DeadReason::TooNew => "too_new",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DeadReason::TooOld => "event is more than 14 days old: CloudWatch Logs refuses it",
            DeadReason::BeforeRetention => {
                "event is older than the log group's retention: CloudWatch Logs refuses it"
            }
            DeadReason::TooNew => {
                "event is more than 2 hours in the future: CloudWatch Logs refuses it"
            }
        }
    }
}

/// What one group of deliveries became.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Batches, those of one stream next to each other and in order.
    pub batches: Vec<LogBatch>,
    /// Records not sent, with why.
    pub dead: Vec<(u64, DeadReason)>,
    /// Records sent as several parts.
    pub split: u64,
}

/// Turns deliveries into batches. Keeps its scratch buffers between calls.
pub struct Encoder {
    group: NameTemplate,
    stream: NameTemplate,
    container_id: NameTemplate,
    message_key: Option<String>,
    retention_ms: Option<i64>,
    /// The longest message sent in one event.
    max_message: usize,
    name_buf: Vec<u8>,
    stream_buf: Vec<u8>,
    json: Vec<u8>,
}

/// The events of one stream, gathered before sorting and cutting.
struct Stream {
    group: String,
    stream: String,
    events: Vec<LogEvent>,
}

impl Encoder {
    /// `max_event_bytes`: one event at most, its overhead included (at least 1 KiB).
    pub fn new(
        group: NameTemplate,
        stream: NameTemplate,
        message_key: Option<String>,
        retention_days: Option<i32>,
        max_event_bytes: usize,
    ) -> Encoder {
        Encoder {
            group,
            stream,
            container_id: NameTemplate::parse_as("{container_id}", Naming::LogStream)
                .unwrap_or_else(|_| unreachable!("a valid template")),
            message_key,
            retention_ms: retention_days.map(|d| i64::from(d) * 24 * 3600 * 1000),
            max_message: max_event_bytes.clamp(1024, MAX_EVENT_BYTES) - EVENT_OVERHEAD,
            name_buf: Vec::new(),
            stream_buf: Vec::new(),
            json: Vec::new(),
        }
    }

    /// Encode every event of `group` (tombstones skipped); `now_ms` decides the time window.
    pub fn encode(&mut self, group: &[Delivery], now_ms: i64) -> Encoded {
        let mut out = Encoded::default();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut streams: Vec<Stream> = Vec::new();
        let oldest = now_ms - self.retention_ms.map_or(MAX_AGE_MS, |r| r.min(MAX_AGE_MS));
        for d in group {
            for (i, ev) in d.batch.events.iter().enumerate() {
                if ev.is_tombstone() {
                    continue;
                }
                let offset = d.offset_of(i);
                let ts = ev
                    .time
                    .secs
                    .saturating_mul(1000)
                    .saturating_add(i64::from(ev.time.nanos / 1_000_000));
                if ts < now_ms - MAX_AGE_MS {
                    out.dead.push((offset, DeadReason::TooOld));
                    continue;
                }
                if ts < oldest {
                    out.dead.push((offset, DeadReason::BeforeRetention));
                    continue;
                }
                if ts > now_ms + MAX_FUTURE_MS {
                    out.dead.push((offset, DeadReason::TooNew));
                    continue;
                }
                // Key: group NUL stream, in a reused buffer; names are only allocated for
                // a stream seen the first time in this group of deliveries.
                self.group.render(&mut self.name_buf, &ev.record, &ev.metadata, ev.time);
                self.stream_name(&d.batch.tag, &ev.record, &ev.metadata, ev.time);
                let glen = self.name_buf.len();
                self.name_buf.push(0);
                self.name_buf.extend_from_slice(&self.stream_buf);
                let at = match index.get(self.name_buf.as_slice()) {
                    Some(at) => *at,
                    None => {
                        let g = String::from_utf8_lossy(&self.name_buf[..glen]).into_owned();
                        let s = String::from_utf8_lossy(&self.stream_buf).into_owned();
                        index.insert(self.name_buf.clone(), streams.len());
                        streams.push(Stream { group: g, stream: s, events: Vec::new() });
                        streams.len() - 1
                    }
                };
                let message = self.message(&ev.record);
                let events = &mut streams[at].events;
                if message.len() <= self.max_message {
                    events.push(LogEvent { timestamp: ts, message, offset, part: 0 });
                } else {
                    out.split += 1;
                    split_into(&message, self.max_message, ts, offset, events);
                }
            }
        }
        for mut s in streams {
            // Stable: records with the same timestamp keep their order (and parts theirs).
            s.events.sort_by_key(|e| e.timestamp);
            cut(s, &mut out.batches);
        }
        out
    }

    /// The stream name into `stream_buf`: the template, or when one of its fields is
    /// missing the record's `container_id`, else the tag.
    fn stream_name(
        &mut self,
        tag: &Tag,
        record: &[u8],
        metadata: &[u8],
        time: crate::event::EventTime,
    ) {
        if self.stream.render(&mut self.stream_buf, record, metadata, time) {
            return;
        }
        if self.container_id.render(&mut self.stream_buf, record, metadata, time) {
            return;
        }
        self.stream_buf.clear();
        self.stream_buf.extend_from_slice(tag.as_str().as_bytes());
        sanitize(&mut self.stream_buf, Naming::LogStream);
        if self.stream_buf.is_empty() {
            self.stream_buf.extend_from_slice(b"unknown");
        }
    }

    /// The message of part `part` of `record` again, as [`Encoder::encode`] made it: for a
    /// retry, so that the first attempt can hand its messages to the SDK without a copy.
    pub fn message_again(&mut self, record: &[u8], part: u32) -> String {
        let message = self.message(record);
        if message.len() <= self.max_message {
            return message;
        }
        let mut parts = Vec::new();
        split_into(&message, self.max_message, 0, 0, &mut parts);
        parts.into_iter().nth(part as usize).map(|e| e.message).unwrap_or_default()
    }

    /// The message of a record: its `message_key` string when it has a non-empty one, else
    /// its compact JSON.
    fn message(&mut self, record: &[u8]) -> String {
        if let Some(key) = &self.message_key {
            if let Some(Scalar::Str(s)) = field(record, key.as_bytes()) {
                if !s.is_empty() {
                    // Validation first: the lossy path walks byte chunks, far slower.
                    return match std::str::from_utf8(s) {
                        Ok(t) => t.to_owned(),
                        Err(_) => String::from_utf8_lossy(s).into_owned(),
                    };
                }
            }
        }
        self.json.clear();
        if write_record_json(&mut self.json, record).is_err() || self.json.is_empty() {
            // Not transcodable: its bytes in hex, never an empty (refused) event.
            self.json.clear();
            self.json.extend_from_slice(b"{\"record_msgpack_hex\":\"");
            self.json.extend_from_slice(hex::encode(record).as_bytes());
            self.json.extend_from_slice(b"\"}");
        }
        String::from_utf8_lossy(&self.json).into_owned()
    }
}

/// Split `message` into parts of at most `max` bytes, cut at character boundaries, each
/// starting with `[berth part i/n] `.
fn split_into(message: &str, max: usize, ts: i64, offset: u64, out: &mut Vec<LogEvent>) {
    let room = max - MARKER_ROOM;
    let mut pieces = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let mut cut = room.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (a, b) = rest.split_at(cut);
        pieces.push(a);
        rest = b;
    }
    let n = pieces.len();
    for (i, p) in pieces.into_iter().enumerate() {
        let mut m = String::with_capacity(p.len() + MARKER_ROOM);
        m.push_str("[berth part ");
        m.push_str(itoa::Buffer::new().format(i + 1));
        m.push('/');
        m.push_str(itoa::Buffer::new().format(n));
        m.push_str("] ");
        m.push_str(p);
        out.push(LogEvent { timestamp: ts, message: m, offset, part: i as u32 });
    }
}

/// Cut one stream's sorted events into batches within the count, size and span limits.
fn cut(s: Stream, out: &mut Vec<LogBatch>) {
    let mut cur =
        LogBatch { group: s.group.clone(), stream: s.stream.clone(), events: Vec::new(), bytes: 0 };
    for e in s.events {
        let size = e.message.len() + EVENT_OVERHEAD;
        let full = cur.events.len() >= MAX_BATCH_EVENTS
            || cur.bytes + size > MAX_BATCH_BYTES
            || cur.events.first().is_some_and(|f| e.timestamp - f.timestamp >= MAX_SPAN_MS);
        if full {
            let next = LogBatch {
                group: s.group.clone(),
                stream: s.stream.clone(),
                events: Vec::new(),
                bytes: 0,
            };
            out.push(std::mem::replace(&mut cur, next));
        }
        cur.bytes += size;
        cur.events.push(e);
    }
    if !cur.events.is_empty() {
        out.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Event, EventTime};
    use bytes::Bytes;
    use rmpv::Value;
    use std::sync::Arc;

    const NOW: i64 = 1_795_330_805_000;

    fn rec(pairs: &[(&str, &str)]) -> Bytes {
        let v = Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), Value::from(*v))).collect());
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        Bytes::from(b)
    }

    fn ev(ms: i64, record: Bytes) -> Event {
        Event {
            time: EventTime::new(ms.div_euclid(1000), (ms.rem_euclid(1000) * 1_000_000) as u32),
            record,
            metadata: Bytes::new(),
        }
    }

    fn delivery(first: u64, tag: &'static str, events: Vec<Event>) -> Delivery {
        let n = events.len() as u64;
        Delivery {
            first,
            seq: first + n,
            batch: Arc::new(Batch { tag: Tag::from_static(tag), events }),
        }
    }

    fn encoder() -> Encoder {
        Encoder::new(
            NameTemplate::parse_as("/ecs/{ecs_cluster}", Naming::LogGroup).unwrap(),
            NameTemplate::parse_as("{ecs_task_id}/{ecs_container_name}", Naming::LogStream)
                .unwrap(),
            Some("log".into()),
            None,
            256 * 1024,
        )
    }

    #[test]
    fn names_messages_and_stream_fallbacks() {
        let full = rec(&[
            ("log", "hello"),
            ("ecs_cluster", "prod"),
            ("ecs_task_id", "t1"),
            ("ecs_container_name", "web"),
        ]);
        let no_task = rec(&[("log", "x"), ("container_id", "abc123")]);
        let bare = rec(&[("msg", "no log field")]);
        let empty = rec(&[("log", ""), ("n", "1")]);
        let d = delivery(
            10,
            "docker.web",
            vec![
                ev(NOW, full),
                ev(NOW, no_task),
                ev(NOW, bare),
                ev(NOW, empty),
                Event::tombstone(EventTime::new(0, 0)),
            ],
        );
        let out = encoder().encode(&[d], NOW);
        assert!(out.dead.is_empty());
        let got: Vec<(&str, &str, &str, u64)> = out
            .batches
            .iter()
            .flat_map(|b| {
                b.events.iter().map(move |e| {
                    (b.group.as_str(), b.stream.as_str(), e.message.as_str(), e.offset)
                })
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("/ecs/prod", "t1/web", "hello", 10),
                ("/ecs/unknown", "abc123", "x", 11),
                ("/ecs/unknown", "docker.web", r#"{"msg":"no log field"}"#, 12),
                ("/ecs/unknown", "docker.web", r#"{"log":"","n":"1"}"#, 13),
            ]
        );
    }

    #[test]
    fn empty_messages_are_sent_as_json() {
        let d = delivery(0, "t", vec![ev(NOW, rec(&[("log", "")]))]);
        let out = encoder().encode(&[d], NOW);
        assert_eq!(out.batches[0].events[0].message, r#"{"log":""}"#);
    }

    #[test]
    fn events_outside_the_window_are_dead_letters_not_dropped() {
        let r = rec(&[("log", "x")]);
        let d = delivery(
            0,
            "t",
            vec![
                ev(NOW - 15 * 24 * 3600 * 1000, r.clone()),
                ev(NOW - 3 * 24 * 3600 * 1000, r.clone()),
                ev(NOW + 3 * 3600 * 1000, r.clone()),
                ev(NOW + 3600 * 1000, r.clone()),
            ],
        );
        let out = encoder().encode(std::slice::from_ref(&d), NOW);
        assert_eq!(out.dead, vec![(0, DeadReason::TooOld), (2, DeadReason::TooNew)]);
        assert_eq!(out.batches.iter().map(|b| b.events.len()).sum::<usize>(), 2);
        let mut short = Encoder::new(
            NameTemplate::parse_as("g", Naming::LogGroup).unwrap(),
            NameTemplate::parse_as("s", Naming::LogStream).unwrap(),
            None,
            Some(1),
            256 * 1024,
        );
        let out = short.encode(&[d], NOW);
        assert_eq!(
            out.dead,
            vec![
                (0, DeadReason::TooOld),
                (1, DeadReason::BeforeRetention),
                (2, DeadReason::TooNew)
            ]
        );
    }

    #[test]
    fn batches_respect_count_size_and_span_and_are_sorted() {
        // 10,001 small events: two batches.
        let r = rec(&[("log", "m")]);
        let d = delivery(0, "t", (0..10_001).map(|i| ev(NOW - 10_001 + i, r.clone())).collect());
        let out = encoder().encode(&[d], NOW);
        assert_eq!(out.batches.iter().map(|b| b.events.len()).collect::<Vec<_>>(), vec![10_000, 1]);
        // 2 MiB in 1 KiB events: each batch at most MAX_BATCH_BYTES.
        let kib = "k".repeat(1024);
        let r = rec(&[("log", &kib)]);
        let d = delivery(0, "t", (0..2048).map(|_| ev(NOW, r.clone())).collect());
        let out = encoder().encode(&[d], NOW);
        assert_eq!(out.batches.len(), 3);
        for b in &out.batches {
            assert!(b.bytes <= MAX_BATCH_BYTES);
            assert_eq!(
                b.bytes,
                b.events.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum::<usize>()
            );
        }
        assert_eq!(out.batches[0].events.len(), MAX_BATCH_BYTES / (1024 + EVENT_OVERHEAD));
        // 30 hours, out of order: sorted, and cut where the span would reach 24 h.
        let hour = 3600 * 1000;
        let d = delivery(
            0,
            "t",
            (0..31).rev().map(|h| ev(NOW - h * hour, rec(&[("log", &h.to_string())]))).collect(),
        );
        let out = encoder().encode(&[d], NOW);
        for b in &out.batches {
            assert!(b.events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
            assert!(b.events.last().unwrap().timestamp - b.events[0].timestamp < MAX_SPAN_MS);
        }
        assert_eq!(out.batches.iter().map(|b| b.events.len()).collect::<Vec<_>>(), vec![24, 7]);
        // Stable: equal timestamps keep their order.
        let d =
            delivery(0, "t", (0..5).map(|i| ev(NOW, rec(&[("log", &i.to_string())]))).collect());
        let out = encoder().encode(&[d], NOW);
        assert_eq!(
            out.batches[0].events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            vec!["0", "1", "2", "3", "4"]
        );
    }

    #[test]
    fn large_events_are_split_in_marked_parts() {
        // 3 MiB with multi-byte characters: parts cut at char boundaries, in order.
        let big: String = "é".repeat(3 << 19);
        let d = delivery(7, "t", vec![ev(NOW, rec(&[("log", &big)]))]);
        let out = encoder().encode(&[d], NOW);
        assert_eq!(out.split, 1);
        let parts: Vec<&LogEvent> = out.batches.iter().flat_map(|b| &b.events).collect();
        let n = parts.len();
        let max = 256 * 1024 - EVENT_OVERHEAD;
        assert_eq!(n, (3usize << 20).div_ceil(max - MARKER_ROOM));
        let mut joined = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.message.len() <= max);
            let marker = format!("[berth part {}/{n}] ", i + 1);
            assert!(p.message.starts_with(&marker), "{i}");
            assert_eq!((p.offset, p.part, p.first_part()), (7, i as u32, i == 0));
            joined.push_str(&p.message[marker.len()..]);
        }
        assert_eq!(joined, big);
        let record = rec(&[("log", &big)]);
        let mut again = encoder();
        for p in &parts {
            assert!(
                again.message_again(&record, p.part) == p.message,
                "part {} rebuilt the same",
                p.part
            );
        }
        assert_eq!(again.message_again(&rec(&[("log", "small")]), 0), "small");
        for b in &out.batches {
            assert!(b.bytes <= MAX_BATCH_BYTES);
        }
    }
}
