//! The `_bulk` request body: NDJSON, one action line and one document line per event.
//!
//! Owns: the bytes sent, where each item lies in them (so an item can be retried alone and
//! a batch split in half after a 413), where a batch is cut (`batch_max_bytes`,
//! `batch_max_records`), and which events can never be sent (dead letters). Never does I/O.
//!
//! Per event, into one reused body buffer and without allocating:
//! ```text
//! {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-2a-5d1e07c3"}}
//! {"log":"hello","@timestamp":"2026-11-22T07:00:05.000000005Z","tag":"app.web"}
//! ```
//! The `_id` is the buffer's `(instance_id, offset)` and a checksum of what the document is
//! made of (tag, time, record): a retry after a lost response or a restart writes the same
//! id, and `create` answers 409 instead of indexing a duplicate. The checksum makes that
//! 409 mean "this same event is stored", not only "something was stored at this offset":
//! what is sent for an offset can differ between two reads of the buffer (a partial line
//! flushed incomplete at shutdown, and joined whole after the restart; see
//! `crate::reassemble`), and the second, different document must not be taken as
//! delivered (`a_different_document_at_the_same_offset_gets_another_id`).
//!
//! Lossy choices, each covered by a test named after it:
//! - a record that already has `timestamp_key` (or `tag_key`) keeps its own value
//!   (`record_keys_win_over_added_keys`);
//! - a record that is not a msgpack map, or cannot be transcoded, is a dead letter and is
//!   not sent (`bad_records_become_dead_letters`): Elasticsearch documents are JSON objects.

use crate::calendar::write_rfc3339;
use crate::msgpack::is_map;
use crate::msgpack::json::{write_record_json, JsonError};
use crate::pipeline::Delivery;
use crate::sink::template::{has_keys, IndexTemplate};
use std::ops::Range;

// The options are plain config data, owned (and checked) by the config.
pub use crate::config::elasticsearch::{BulkAction, EncodeOptions, IdMode};

/// One event in a body: its buffer offset and its two lines' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub offset: u64,
    /// Action line and document line, both with their `\n`.
    pub range: Range<usize>,
}

/// Why an event cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeadReason {
    #[error("record cannot be transcoded to json: {0}")]
    Transcode(JsonError),
    #[error("record is not a msgpack map")]
    NotAMap,
}

impl DeadReason {
    /// A short label for metrics (`berth_dead_letter_records_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            DeadReason::Transcode(_) => "transcode",
            DeadReason::NotAMap => "not_a_map",
        }
    }
}

/// An event that is never sent: it goes to the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadItem {
    pub offset: u64,
    pub reason: DeadReason,
}

/// A `_bulk` body and its items, in body order. Reuse one per in-flight request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkBody {
    pub body: Vec<u8>,
    pub items: Vec<Item>,
    /// Events of the encoded range that are not in the body.
    pub dead: Vec<DeadItem>,
    /// Offsets of tombstones in the encoded range: nothing to send, settled at once.
    pub skipped: Vec<u64>,
}

impl BulkBody {
    pub fn clear(&mut self) {
        self.body.clear();
        self.items.clear();
        self.dead.clear();
        self.skipped.clear();
    }

    /// Items in the body (dead items excluded).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The two lines of item `i`.
    pub fn item_bytes(&self, i: usize) -> &[u8] {
        self.items.get(i).and_then(|it| self.body.get(it.range.clone())).unwrap_or_default()
    }

    /// Replace `out` with a body of the chosen items (indexes into `self.items`, in the
    /// order given): to retry some items alone, or send half a batch. Copies bytes; does
    /// not re-encode. `out.dead` is left empty.
    pub fn select(&self, which: impl IntoIterator<Item = usize>, out: &mut BulkBody) {
        out.clear();
        for i in which {
            let Some(it) = self.items.get(i) else { continue };
            let start = out.body.len();
            out.body.extend_from_slice(&self.body[it.range.clone()]);
            out.items.push(Item { offset: it.offset, range: start..out.body.len() });
        }
    }

    /// The two halves of this body (after a 413). The first half has the extra item
    /// when the count is odd; a body of one item gives it and an empty second half.
    pub fn split_half(&self, first: &mut BulkBody, second: &mut BulkBody) {
        let mid = self.items.len().div_ceil(2);
        self.select(0..mid, first);
        self.select(mid..self.items.len(), second);
    }
}

/// Where encoding continues: event `event` of delivery `delivery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub delivery: usize,
    pub event: usize,
}

/// Builds `_bulk` bodies. One per sink; holds the parsed options and scratch buffers.
#[derive(Debug, Clone)]
pub struct BulkEncoder {
    opts: EncodeOptions,
    template: IndexTemplate,
    instance_id: u64,
    /// `"@timestamp":` — the key, JSON-escaped once.
    ts_key: Vec<u8>,
    /// `"tag":`, or empty when the tag is left out.
    tag_key: Vec<u8>,
    /// `,"pipeline":"…"` or empty.
    pipeline: Vec<u8>,
    index: Vec<u8>,
}

impl BulkEncoder {
    /// `instance_id` is the buffer's (`Buffer::instance_id`), part of every stable `_id`.
    pub fn new(opts: EncodeOptions, template: IndexTemplate, instance_id: u64) -> BulkEncoder {
        let key = |k: &str| {
            let mut v = json_str(k);
            v.push(b':');
            v
        };
        let ts_key = key(&opts.timestamp_key);
        let tag_key = if opts.tag_key.is_empty() { Vec::new() } else { key(&opts.tag_key) };
        let pipeline = if opts.pipeline.is_empty() {
            Vec::new()
        } else {
            let mut v = b",\"pipeline\":".to_vec();
            v.extend_from_slice(&json_str(&opts.pipeline));
            v
        };
        BulkEncoder {
            opts,
            template,
            instance_id,
            ts_key,
            tag_key,
            pipeline,
            index: Vec::with_capacity(64),
        }
    }

    pub fn options(&self) -> &EncodeOptions {
        &self.opts
    }

    /// Append to `out` the events of `deliveries` from `from` on, until the body would
    /// pass `batch_max_bytes` or hold `batch_max_records` items. Returns where the next
    /// body starts, or `None` when every event is in `out` (as an item or a dead item).
    /// Always takes at least one event when there is one, so every call makes progress.
    /// A returned position is always at an event: empty deliveries are passed over.
    /// Positions index `deliveries`: pass the same slice (or one with the same front) to
    /// the next call.
    pub fn encode(
        &mut self,
        deliveries: &[Delivery],
        from: Position,
        out: &mut BulkBody,
    ) -> Option<Position> {
        let mut pos = from;
        loop {
            let d = deliveries.get(pos.delivery)?;
            let Some(ev) = d.batch.events.get(pos.event) else {
                pos = Position { delivery: pos.delivery + 1, event: 0 };
                continue;
            };
            let offset = d.offset_of(pos.event);
            if ev.is_tombstone() {
                out.skipped.push(offset);
                pos.event += 1;
                continue;
            }
            if out.items.len() >= self.opts.batch_max_records {
                return Some(pos);
            }
            let start = out.body.len();
            match self.write_item(&mut out.body, d.batch.tag.as_str(), ev, offset) {
                Ok(()) => {
                    if out.body.len() > self.opts.batch_max_bytes && !out.items.is_empty() {
                        // Does not fit: this event starts the next body. Encoding it
                        // twice is cheaper than encoding every event into scratch first.
                        out.body.truncate(start);
                        return Some(pos);
                    }
                    out.items.push(Item { offset, range: start..out.body.len() });
                }
                Err(reason) => {
                    out.body.truncate(start);
                    out.dead.push(DeadItem { offset, reason });
                }
            }
            pos.event += 1;
        }
    }

    /// Both lines of one event. On error `body` may hold a partial item; the caller cuts it.
    fn write_item(
        &mut self,
        body: &mut Vec<u8>,
        tag: &str,
        ev: &crate::event::Event,
        offset: u64,
    ) -> Result<(), DeadReason> {
        if !is_map(&ev.record) {
            return Err(DeadReason::NotAMap);
        }
        // Action line.
        body.extend_from_slice(b"{\"");
        body.extend_from_slice(self.opts.action.name().as_bytes());
        body.extend_from_slice(b"\":{\"_index\":\"");
        self.template.render(&mut self.index, &ev.record, &ev.metadata, ev.time);
        // A rendered index name has no '"', '\\' or control characters: no escaping needed.
        body.extend_from_slice(&self.index);
        body.push(b'"');
        if self.opts.id == IdMode::Stable {
            body.extend_from_slice(b",\"_id\":\"");
            write_hex(body, self.instance_id, 16);
            body.push(b'-');
            write_hex(body, offset, 1);
            body.push(b'-');
            write_hex(body, u64::from(content_crc(tag, ev)), 8);
            body.push(b'"');
        }
        body.extend_from_slice(&self.pipeline);
        body.extend_from_slice(b"}}\n");

        // Document line: the record, then the added keys before its closing brace.
        let doc = body.len();
        write_record_json(body, &ev.record).map_err(DeadReason::Transcode)?;
        let (has_ts, has_tag) =
            has_keys(&ev.record, self.opts.timestamp_key.as_bytes(), self.opts.tag_key.as_bytes());
        let add_ts = !has_ts;
        let add_tag = !self.tag_key.is_empty() && !has_tag;
        if add_ts || add_tag {
            body.pop(); // the record's '}'
            let mut first = body.len() == doc + 1; // "{" only: the record was empty
            if add_ts {
                if !first {
                    body.push(b',');
                }
                first = false;
                body.extend_from_slice(&self.ts_key);
                body.push(b'"');
                write_rfc3339(body, ev.time);
                body.push(b'"');
            }
            if add_tag {
                if !first {
                    body.push(b',');
                }
                body.extend_from_slice(&self.tag_key);
                push_json_str(body, tag);
            }
            body.push(b'}');
        }
        body.push(b'\n');
        Ok(())
    }
}

/// The checksum in a stable `_id`: CRC-32C of what the document is made of — the tag
/// (length first, so tag and record cannot trade bytes), the event time and the record.
/// Options (keys added, index) are not in it: they are the same for every read of an event
/// within one configuration.
pub fn content_crc(tag: &str, ev: &crate::event::Event) -> u32 {
    let mut c = crc32c::crc32c(&(tag.len() as u32).to_le_bytes());
    c = crc32c::crc32c_append(c, tag.as_bytes());
    c = crc32c::crc32c_append(c, &ev.time.secs.to_le_bytes());
    c = crc32c::crc32c_append(c, &ev.time.nanos.to_le_bytes());
    crc32c::crc32c_append(c, &ev.record)
}

/// gzip `body` into `out` (replacing its contents) at the fast level: the CPU matters more
/// than the last few percent of bytes on a host that also runs the workload.
pub fn gzip(body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    out.clear();
    let mut enc = flate2::write::GzEncoder::new(std::mem::take(out), flate2::Compression::fast());
    enc.write_all(body)?;
    *out = enc.finish()?;
    Ok(())
}

fn write_hex(out: &mut Vec<u8>, v: u64, min_width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - (v.leading_zeros() as usize / 4)).max(min_width).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_str(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    push_json_str(&mut v, s);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Event, EventTime, Tag};
    use bytes::Bytes;
    use rmpv::Value;
    use std::sync::Arc;

    const ID: u64 = 0x00c0_ffee_00c0_ffee;

    fn rec(pairs: &[(&str, Value)]) -> Bytes {
        let v = Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect());
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        Bytes::from(b)
    }

    fn ev(record: Bytes) -> Event {
        Event { time: EventTime::new(1_795_330_805, 5), record, metadata: Bytes::new() }
    }

    fn delivery(first: u64, tag: &'static str, records: Vec<Bytes>) -> Delivery {
        let n = records.len() as u64;
        let batch =
            Batch { tag: Tag::from_static(tag), events: records.into_iter().map(ev).collect() };
        Delivery { first, seq: first + n, batch: Arc::new(batch) }
    }

    fn encoder(opts: EncodeOptions) -> BulkEncoder {
        BulkEncoder::new(opts, IndexTemplate::parse("logs-{app}-%Y.%m.%d").unwrap(), ID)
    }

    fn text(b: &BulkBody) -> String {
        String::from_utf8(b.body.clone()).unwrap()
    }

    #[test]
    fn table_of_action_and_document_lines() {
        let r = rec(&[("log", Value::from("hi")), ("app", Value::from("Web"))]);
        let crc = content_crc("app.\"x\"", &ev(r.clone()));
        let cases: Vec<(EncodeOptions, String)> = vec![
            (
                EncodeOptions::default(),
                format!("{{\"create\":{{\"_index\":\"logs-web-2026.11.22\",\"_id\":\"00c0ffee00c0ffee-2a-{crc:08x}\"}}}}\n\
                 {{\"log\":\"hi\",\"app\":\"Web\",\"@timestamp\":\"2026-11-22T07:00:05.000000005Z\",\"tag\":\"app.\\\"x\\\"\"}}\n"),
            ),
            (
                EncodeOptions { action: BulkAction::Index, id: IdMode::None, pipeline: "p\"1".into(), tag_key: String::new(), ..Default::default() },
                "{\"index\":{\"_index\":\"logs-web-2026.11.22\",\"pipeline\":\"p\\\"1\"}}\n\
                 {\"log\":\"hi\",\"app\":\"Web\",\"@timestamp\":\"2026-11-22T07:00:05.000000005Z\"}\n".to_owned(),
            ),
            (
                EncodeOptions { timestamp_key: "time".into(), tag_key: "t\n".into(), ..Default::default() },
                format!("{{\"create\":{{\"_index\":\"logs-web-2026.11.22\",\"_id\":\"00c0ffee00c0ffee-2a-{crc:08x}\"}}}}\n\
                 {{\"log\":\"hi\",\"app\":\"Web\",\"time\":\"2026-11-22T07:00:05.000000005Z\",\"t\\n\":\"app.\\\"x\\\"\"}}\n"),
            ),
        ];
        for (opts, want) in cases {
            let mut enc = encoder(opts.clone());
            let mut out = BulkBody::default();
            let d = [delivery(42, "app.\"x\"", vec![r.clone()])];
            assert_eq!(enc.encode(&d, Position::default(), &mut out), None);
            assert_eq!(text(&out), want, "{opts:?}");
            assert_eq!(out.items, vec![Item { offset: 42, range: 0..want.len() }]);
            for line in text(&out).lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }

    #[test]
    fn empty_record_and_stable_id_of_offset_zero() {
        let mut enc =
            BulkEncoder::new(EncodeOptions::default(), IndexTemplate::parse("i").unwrap(), 0);
        let mut out = BulkBody::default();
        enc.encode(&[delivery(0, "t", vec![rec(&[])])], Position::default(), &mut out);
        assert_eq!(
            text(&out),
            "{\"create\":{\"_index\":\"i\",\"_id\":\"0000000000000000-0-34a1a82b\"}}\n\
             {\"@timestamp\":\"2026-11-22T07:00:05.000000005Z\",\"tag\":\"t\"}\n"
        );
        let mut hex = Vec::new();
        write_hex(&mut hex, u64::MAX, 1);
        assert_eq!(hex, b"ffffffffffffffff");
    }

    /// The joiner's shutdown flush then restart: the same offset first carries the
    /// incomplete line, then the whole one. The second must not hit the first's `_id` (a
    /// 409 would take it as delivered and it would never be stored); sending the same event
    /// again must hit it.
    #[test]
    fn a_different_document_at_the_same_offset_gets_another_id() {
        let id_of = |tag: &'static str, r: Bytes| {
            let mut enc = encoder(EncodeOptions::default());
            let mut out = BulkBody::default();
            enc.encode(&[delivery(7, tag, vec![r])], Position::default(), &mut out);
            let action: serde_json::Value =
                serde_json::from_str(text(&out).lines().next().unwrap()).unwrap();
            action["create"]["_id"].as_str().unwrap().to_owned()
        };
        let part =
            rec(&[("log", Value::from("first half ")), ("partial_incomplete", Value::from(true))]);
        let whole = rec(&[("log", Value::from("first half second half"))]);
        let a = id_of("app", part.clone());
        assert!(a.starts_with("00c0ffee00c0ffee-7-"), "{a}");
        assert_eq!(a, id_of("app", part.clone()), "the same event, the same id");
        assert_ne!(a, id_of("app", whole), "another document at the same offset");
        assert_ne!(a, id_of("app2", part), "the tag is part of the document");
    }

    #[test]
    fn record_keys_win_over_added_keys() {
        let r = rec(&[("@timestamp", Value::from("mine")), ("tag", Value::from("mine too"))]);
        let mut enc = encoder(EncodeOptions::default());
        let mut out = BulkBody::default();
        enc.encode(&[delivery(1, "t", vec![r])], Position::default(), &mut out);
        let doc = text(&out).lines().nth(1).unwrap().to_owned();
        assert_eq!(doc, "{\"@timestamp\":\"mine\",\"tag\":\"mine too\"}");
    }

    #[test]
    fn bad_records_become_dead_letters() {
        let good = rec(&[("app", Value::from("a"))]);
        let recs = vec![
            good.clone(),
            Bytes::from_static(&[0x81, 0xa1]), // truncated map
            Bytes::from_static(&[0x92, 0x01, 0x02]), // an array
            Bytes::new(),                      // a tombstone: skipped, not dead
            good,
        ];
        let mut enc = encoder(EncodeOptions::default());
        let mut out = BulkBody::default();
        assert_eq!(enc.encode(&[delivery(10, "t", recs)], Position::default(), &mut out), None);
        assert_eq!(out.items.iter().map(|i| i.offset).collect::<Vec<_>>(), vec![10, 14]);
        assert_eq!(
            out.dead,
            vec![
                DeadItem {
                    offset: 11,
                    reason: DeadReason::Transcode(JsonError::Truncated { offset: 2 })
                },
                DeadItem { offset: 12, reason: DeadReason::NotAMap },
            ]
        );
        assert_eq!(out.skipped, vec![13]);
        assert_eq!(text(&out).lines().count(), 4, "no trace of the dead items in the body");
        assert_eq!(
            out.dead[0].reason.to_string(),
            "record cannot be transcoded to json: msgpack value truncated at byte 2"
        );
    }

    #[test]
    fn cuts_at_max_records_and_max_bytes_across_deliveries() {
        let r = rec(&[("app", Value::from("a"))]);
        let ds = [
            delivery(0, "t", vec![r.clone(); 3]),
            delivery(3, "t", vec![]),
            delivery(3, "t", vec![r.clone(); 4]),
        ];
        let mut enc = encoder(EncodeOptions { batch_max_records: 3, ..Default::default() });
        let mut out = BulkBody::default();
        let next = enc.encode(&ds, Position::default(), &mut out);
        assert_eq!(
            next,
            Some(Position { delivery: 2, event: 0 }),
            "the empty delivery is passed over"
        );
        out.clear();
        let next = enc.encode(&ds, next.unwrap(), &mut out);
        assert_eq!(next, Some(Position { delivery: 2, event: 3 }));
        assert_eq!(out.items.iter().map(|i| i.offset).collect::<Vec<_>>(), vec![3, 4, 5]);

        // Bytes: one item is ~130 bytes; 300 fits two.
        let one = {
            let mut o = BulkBody::default();
            encoder(EncodeOptions::default()).encode(&ds[..1], Position::default(), &mut o);
            o.items[0].range.len()
        };
        let mut enc =
            encoder(EncodeOptions { batch_max_bytes: 2 * one + one / 2, ..Default::default() });
        let mut out = BulkBody::default();
        assert_eq!(
            enc.encode(&ds, Position::default(), &mut out),
            Some(Position { delivery: 0, event: 2 })
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out.body.len(), 2 * one);
        // An item larger than the limit is still sent, alone.
        let mut enc = encoder(EncodeOptions { batch_max_bytes: 1, ..Default::default() });
        let mut out = BulkBody::default();
        assert_eq!(
            enc.encode(&ds, Position { delivery: 0, event: 2 }, &mut out),
            Some(Position { delivery: 2, event: 0 })
        );
        assert_eq!(out.len(), 1);
        // Past the end: nothing to do.
        out.clear();
        assert_eq!(enc.encode(&ds, Position { delivery: 3, event: 0 }, &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn select_and_split_copy_items_exactly() {
        let recs: Vec<Bytes> = (0..5).map(|i| rec(&[("n", Value::from(i))])).collect();
        let mut enc = encoder(EncodeOptions::default());
        let mut all = BulkBody::default();
        enc.encode(&[delivery(100, "t", recs)], Position::default(), &mut all);
        let (mut a, mut b) = (BulkBody::default(), BulkBody::default());
        all.split_half(&mut a, &mut b);
        assert_eq!((a.len(), b.len()), (3, 2));
        let mut joined = a.body.clone();
        joined.extend_from_slice(&b.body);
        assert_eq!(joined, all.body);
        assert_eq!(b.items[0], Item { offset: 103, range: 0..all.items[3].range.len() });
        let mut some = BulkBody::default();
        all.select([4, 1, 99], &mut some);
        assert_eq!(some.items.iter().map(|i| i.offset).collect::<Vec<_>>(), vec![104, 101]);
        assert_eq!(some.item_bytes(0), all.item_bytes(4));
        assert_eq!(some.item_bytes(1), all.item_bytes(1));
        assert_eq!(some.item_bytes(7), b"");
        let (mut c, mut d) = (BulkBody::default(), BulkBody::default());
        some.split_half(&mut c, &mut d);
        let mut one = BulkBody::default();
        c.split_half(&mut one, &mut d);
        assert_eq!((one.len(), d.len()), (1, 0));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = b"{\"create\":{}}\n{}\n".repeat(100);
        let mut z = vec![1, 2, 3];
        gzip(&body, &mut z).unwrap();
        assert!(z.len() < body.len() / 5);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&z[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn conflict_means_delivered_only_for_create_with_stable_ids() {
        let o = EncodeOptions::default();
        assert!(o.conflict_means_delivered());
        assert!(
            !EncodeOptions { action: BulkAction::Index, ..o.clone() }.conflict_means_delivered()
        );
        assert!(!EncodeOptions { id: IdMode::None, ..o }.conflict_means_delivered());
    }
}
