//! The Elasticsearch / OpenSearch `_bulk` sink (issue 4).
//!
//! This module holds the pure parts, with no network: index name templates
//! ([`crate::sink::template`]), the `_bulk` body ([`encode`]), the classification of responses
//! ([`response`]), and here the bookkeeping between them: what a verdict means for the items
//! of the body that was sent ([`settle`]) and which buffer positions may be acknowledged
//! ([`AckWindow`]). Backoff is `crate::backoff`, shared with every retry loop.
//!
//! The loop the next layer runs, for each body:
//! encode → send → classify → settle → delivered and rejected items are settled in the
//! `AckWindow` (rejected ones once written to the dead-letter file), `retry` items are
//! selected into a new body and sent after a backoff, `Split` sends each half, `ResendAll`
//! sends the same body after a backoff. Acknowledge `AckWindow::ackable()`.
//! Invariant (tested by `every_offset_settles_exactly_once_across_any_split`): every event
//! is settled exactly once, as delivered or dead-lettered, whatever the server answers.

pub mod client;
pub mod encode;
pub mod response;
mod run;
pub mod sigv4;

pub use run::run;

use crate::pipeline::Delivery;
use encode::BulkBody;
use response::{BulkVerdict, ItemOutcome};
use std::collections::VecDeque;
use std::time::Duration;

/// An item that will never be accepted: to the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub offset: u64,
    pub status: u16,
    pub error_type: String,
    pub reason: String,
}

/// Items of one sent body whose fate is known, and those to send again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Offsets stored by the server (including 409 "already there").
    pub delivered: Vec<u64>,
    pub rejected: Vec<Rejected>,
    /// Indexes into the sent body's items: send these again (`BulkBody::select`).
    pub retry: Vec<usize>,
    /// Why the first retried item failed (for the retries metric and the log).
    pub retry_reason: Option<String>,
}

impl Settlement {
    pub fn clear(&mut self) {
        self.delivered.clear();
        self.rejected.clear();
        self.retry.clear();
        self.retry_reason = None;
    }
}

/// What to do after a response, when not every item is settled by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `Settlement` says it all (it may still hold items to retry).
    Settled,
    /// Send each half of the body (`BulkBody::split_half`).
    Split,
    /// Send the same body again after a backoff (at least `retry_after`).
    ResendAll { retry_after: Option<Duration>, refresh_credentials: bool, reason: String },
}

/// Apply a verdict to the body it answers. `out` is cleared first.
pub fn settle(sent: &BulkBody, verdict: BulkVerdict, out: &mut Settlement) -> Next {
    out.clear();
    match verdict {
        BulkVerdict::AllDelivered => {
            out.delivered.extend(sent.items.iter().map(|i| i.offset));
            Next::Settled
        }
        BulkVerdict::Items(outcomes) => {
            for (i, (item, outcome)) in sent.items.iter().zip(outcomes).enumerate() {
                match outcome {
                    ItemOutcome::Delivered | ItemOutcome::AlreadyDelivered => {
                        out.delivered.push(item.offset)
                    }
                    ItemOutcome::Retry { status, error_type } => {
                        out.retry.push(i);
                        out.retry_reason
                            .get_or_insert_with(|| format!("item status {status} {error_type}"));
                    }
                    ItemOutcome::Reject { status, error_type, reason } => out
                        .rejected
                        .push(Rejected { offset: item.offset, status, error_type, reason }),
                }
            }
            // `classify` answers one outcome per item sent; should it ever answer fewer,
            // the rest are retried, never lost.
            let answered = out.delivered.len() + out.rejected.len() + out.retry.len();
            if answered < sent.items.len() {
                out.retry.extend(answered..sent.items.len());
                out.retry_reason.get_or_insert_with(|| "no item outcome".into());
            }
            Next::Settled
        }
        BulkVerdict::Split if sent.items.len() > 1 => Next::Split,
        BulkVerdict::Split | BulkVerdict::TooLarge => {
            out.rejected.extend(sent.items.iter().map(|i| Rejected {
                offset: i.offset,
                status: 413,
                error_type: "request_too_large".into(),
                reason: format!(
                    "a _bulk request with only this record ({} bytes) is too large",
                    i.range.len()
                ),
            }));
            Next::Settled
        }
        BulkVerdict::Backoff { status, retry_after } => Next::ResendAll {
            retry_after,
            refresh_credentials: false,
            reason: format!("http status {status}"),
        },
        BulkVerdict::Unauthorized { status, message } => Next::ResendAll {
            retry_after: None,
            refresh_credentials: true,
            reason: format!("http status {status}: {message}"),
        },
        BulkVerdict::Fail { status, message } => Next::ResendAll {
            retry_after: None,
            refresh_credentials: false,
            reason: format!("http status {status}: {message}"),
        },
    }
}

/// Why [`AckWindow::settle`] refused an offset: a bug in the caller, never data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("offset {offset} is not in any open delivery")]
    Unknown { offset: u64 },
    #[error("offset {offset} was already settled")]
    Twice { offset: u64 },
}

#[derive(Debug)]
struct Open {
    first: u64,
    seq: u64,
    left: u64,
    /// One bit per event: settled.
    done: Vec<u64>,
}

/// Deliveries in flight, in read order, and which of their events are settled. A delivery
/// may be acknowledged (`SinkReader::ack(seq)`) once it and every delivery before it are
/// fully settled: the buffer cursor moves in order, so one stuck item holds back the
/// acknowledgement of later ones, never the other way round.
#[derive(Debug, Default)]
pub struct AckWindow {
    open: VecDeque<Open>,
    /// Everything below is acknowledged (the last `seq` returned by `ackable`).
    acked: u64,
}

impl AckWindow {
    /// A window for a sink whose reader has acknowledged everything below `acked`
    /// (`SinkReader::acked()`).
    pub fn new(acked: u64) -> AckWindow {
        AckWindow { open: VecDeque::new(), acked }
    }

    /// Track a delivery. Deliveries must be pushed in the order they were read.
    pub fn push(&mut self, d: &Delivery) {
        let n = d.seq.saturating_sub(d.first);
        self.open.push_back(Open {
            first: d.first,
            seq: d.seq,
            left: n,
            done: vec![0; n.div_ceil(64) as usize],
        });
    }

    /// Mark one event settled (delivered, or written to the dead-letter file).
    pub fn settle(&mut self, offset: u64) -> Result<(), SettleError> {
        // Deliveries are in offset order: binary search on `first`.
        let i = self.open.partition_point(|o| o.first <= offset);
        let o = i
            .checked_sub(1)
            .and_then(|i| self.open.get_mut(i))
            .filter(|o| offset < o.seq)
            .ok_or(SettleError::Unknown { offset })?;
        let bit = offset - o.first;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if o.done[word] & mask != 0 {
            return Err(SettleError::Twice { offset });
        }
        o.done[word] |= mask;
        o.left -= 1;
        Ok(())
    }

    /// The `seq` to acknowledge now, if any: past every leading fully settled delivery
    /// (which are forgotten). Only a `seq` past the last one returned.
    pub fn ackable(&mut self) -> Option<u64> {
        let mut seq = None;
        while self.open.front().is_some_and(|o| o.left == 0) {
            seq = self.open.pop_front().map(|o| o.seq);
        }
        let seq = seq.filter(|s| *s > self.acked)?;
        self.acked = seq;
        Some(seq)
    }

    /// Deliveries not yet acknowledged.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{BulkEncoder, EncodeOptions, Item, Position};
    use super::response::{classify, RequestInfo};
    use super::*;
    use crate::event::{Batch, Event, EventTime, Tag};
    use crate::sink::template::IndexTemplate;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    fn body_of(offsets: &[u64]) -> BulkBody {
        let mut b = BulkBody::default();
        for (i, o) in offsets.iter().enumerate() {
            b.items.push(Item { offset: *o, range: i * 10..i * 10 + 10 });
        }
        b.body = vec![b'x'; offsets.len() * 10];
        b
    }

    fn delivery(first: u64, records: Vec<Bytes>) -> Delivery {
        let n = records.len() as u64;
        let events = records
            .into_iter()
            .map(|record| Event { time: EventTime::new(1, 0), record, metadata: Bytes::new() })
            .collect();
        Delivery {
            first,
            seq: first + n,
            batch: Arc::new(Batch { tag: Tag::from_static("t"), events }),
        }
    }

    #[test]
    fn settle_table() {
        let sent = body_of(&[10, 11, 12, 13]);
        let mut st = Settlement::default();
        assert_eq!(settle(&sent, BulkVerdict::AllDelivered, &mut st), Next::Settled);
        assert_eq!(st.delivered, vec![10, 11, 12, 13]);

        let outcomes = vec![
            ItemOutcome::Delivered,
            ItemOutcome::Retry {
                status: 429,
                error_type: "es_rejected_execution_exception".into(),
            },
            ItemOutcome::Reject {
                status: 400,
                error_type: "mapper_parsing_exception".into(),
                reason: "r".into(),
            },
        ];
        assert_eq!(settle(&sent, BulkVerdict::Items(outcomes), &mut st), Next::Settled);
        assert_eq!(st.delivered, vec![10]);
        assert_eq!(st.retry, vec![1, 3], "the item without an outcome is retried");
        assert_eq!(
            st.retry_reason.as_deref(),
            Some("item status 429 es_rejected_execution_exception")
        );
        assert_eq!(
            st.rejected,
            vec![Rejected {
                offset: 12,
                status: 400,
                error_type: "mapper_parsing_exception".into(),
                reason: "r".into()
            }]
        );

        assert_eq!(settle(&sent, BulkVerdict::Split, &mut st), Next::Split);
        assert!(st.delivered.is_empty() && st.retry.is_empty(), "cleared");
        for v in [BulkVerdict::Split, BulkVerdict::TooLarge] {
            assert_eq!(settle(&body_of(&[7]), v, &mut st), Next::Settled);
            assert_eq!(st.rejected.len(), 1);
            assert_eq!((st.rejected[0].offset, st.rejected[0].status), (7, 413));
            assert_eq!(
                st.rejected[0].reason,
                "a _bulk request with only this record (10 bytes) is too large"
            );
        }
        let ra = Some(Duration::from_secs(2));
        assert_eq!(
            settle(&sent, BulkVerdict::Backoff { status: 503, retry_after: ra }, &mut st),
            Next::ResendAll {
                retry_after: ra,
                refresh_credentials: false,
                reason: "http status 503".into()
            }
        );
        assert_eq!(
            settle(
                &sent,
                BulkVerdict::Unauthorized { status: 403, message: "expired".into() },
                &mut st
            ),
            Next::ResendAll {
                retry_after: None,
                refresh_credentials: true,
                reason: "http status 403: expired".into()
            }
        );
        assert!(matches!(
            settle(&sent, BulkVerdict::Fail { status: 500, message: "x".into() }, &mut st),
            Next::ResendAll { refresh_credentials: false, .. }
        ));
    }

    #[test]
    fn ack_window_acknowledges_in_order_and_refuses_mistakes() {
        let r = Bytes::from_static(&[0x80]);
        let mut w = AckWindow::default();
        w.push(&delivery(0, vec![r.clone(); 2]));
        w.push(&delivery(2, vec![]));
        w.push(&delivery(5, vec![r.clone(); 70])); // a gap: skipped batches
        assert_eq!(w.ackable(), None);
        w.settle(1).unwrap();
        assert_eq!(w.settle(1), Err(SettleError::Twice { offset: 1 }));
        assert_eq!(w.settle(3), Err(SettleError::Unknown { offset: 3 }));
        assert_eq!(w.settle(75), Err(SettleError::Unknown { offset: 75 }));
        for o in 5..75 {
            w.settle(o).unwrap();
        }
        assert_eq!(w.ackable(), None, "offset 0 holds everything back");
        w.settle(0).unwrap();
        assert_eq!(w.ackable(), Some(75));
        assert!(w.is_empty());
        assert_eq!(w.settle(0), Err(SettleError::Unknown { offset: 0 }));
        w.push(&delivery(75, vec![]));
        assert_eq!(w.ackable(), None, "an empty delivery at the acknowledged seq moves nothing");
        assert!(w.is_empty());
    }

    proptest! {
        /// Workers settle in any order; the window acknowledges exactly the longest fully
        /// settled prefix of deliveries, and never moves backwards.
        #[test]
        fn settlements_in_any_order_acknowledge_in_order(
            sizes in proptest::collection::vec((0u64..3, 0u64..70), 1..8),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..600),
        ) {
            let r = Bytes::from_static(&[0x80]);
            let (mut ds, mut next) = (Vec::new(), 0u64);
            for (gap, n) in &sizes {
                next += gap;
                ds.push(delivery(next, vec![r.clone(); *n as usize]));
                next += n;
            }
            let mut w = AckWindow::default();
            for d in &ds {
                w.push(d);
            }
            // Every offset once, shuffled by `order`.
            let mut offsets: Vec<u64> = ds.iter().flat_map(|d| d.first..d.seq).collect();
            for (i, ix) in order.iter().enumerate() {
                if offsets.is_empty() {
                    break;
                }
                let (a, b) = (i % offsets.len(), ix.index(offsets.len()));
                offsets.swap(a, b);
            }
            let mut settled = BTreeSet::new();
            let mut acked = 0u64;
            let check = |settled: &BTreeSet<u64>| ds.iter().take_while(|d| (d.first..d.seq).all(|o| settled.contains(&o))).last().map_or(0, |d| d.seq);
            if let Some(seq) = w.ackable() {
                acked = seq;
            }
            prop_assert_eq!(acked, check(&settled), "empty deliveries at the front");
            for o in offsets {
                w.settle(o).map_err(|e| TestCaseError::fail(e.to_string()))?;
                settled.insert(o);
                if let Some(seq) = w.ackable() {
                    prop_assert!(seq > acked, "only forward");
                    acked = seq;
                }
                prop_assert_eq!(acked, check(&settled), "acknowledged exactly the settled prefix");
            }
            prop_assert_eq!(acked, ds.last().map_or(0, |d| d.seq));
            prop_assert!(w.is_empty());
        }
    }

    // ---- the whole loop against a model server ----

    /// What an event is, for the model server.
    const GOOD: u8 = 0;
    const NOT_A_MAP: u8 = 1; // dead at encode
    const MAPPING_CONFLICT: u8 = 2; // 400 from the server
    const HUGE: u8 = 3; // 413 whenever it is in a body

    fn record(kind: u8) -> Bytes {
        if kind == NOT_A_MAP {
            return Bytes::from_static(&[0x01]);
        }
        let v = rmpv::Value::Map(vec![(rmpv::Value::from("kind"), rmpv::Value::from(kind))]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        Bytes::from(b)
    }

    /// A `_bulk` endpoint with create semantics and scripted faults.
    struct Server {
        stored: BTreeMap<String, u8>,
        dice: Vec<u8>,
        rolls: usize,
        max_items: usize,
    }

    impl Server {
        fn roll(&mut self) -> u8 {
            self.rolls += 1;
            // Benign after a while, so every run ends.
            if self.rolls > 300 {
                return 255;
            }
            self.dice[self.rolls % self.dice.len()]
        }

        fn handle(&mut self, body: &[u8]) -> (u16, String) {
            let text = std::str::from_utf8(body).unwrap();
            let lines: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let pairs: Vec<(String, u8)> = lines
                .chunks(2)
                .map(|p| {
                    (
                        p[0]["create"]["_id"].as_str().unwrap().to_owned(),
                        p[1]["kind"].as_u64().unwrap() as u8,
                    )
                })
                .collect();
            if pairs.len() > self.max_items || pairs.iter().any(|(_, k)| *k == HUGE) {
                return (413, String::new());
            }
            let whole = self.roll();
            if whole.is_multiple_of(8) {
                return (503, "{\"error\":\"unavailable\"}".into());
            }
            let lost = whole % 8 == 1; // stored, but the response is lost
            let mut items = Vec::new();
            for (id, kind) in pairs {
                let item = if self.stored.contains_key(&id) {
                    serde_json::json!({"create": {"_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "document already exists"}}})
                } else if kind == MAPPING_CONFLICT {
                    serde_json::json!({"create": {"_id": id, "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [kind]"}}})
                } else if self.roll().is_multiple_of(4) {
                    serde_json::json!({"create": {"_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}})
                } else {
                    self.stored.insert(id.clone(), kind);
                    serde_json::json!({"create": {"_id": id, "status": 201, "result": "created"}})
                };
                items.push(item);
            }
            if lost {
                return (502, String::new());
            }
            let errors = items.iter().any(|i| i["create"]["status"] != 201);
            (200, serde_json::json!({"took": 1, "errors": errors, "items": items}).to_string())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_offset_settles_exactly_once_across_any_split(
            batches in proptest::collection::vec((0u64..3, proptest::collection::vec(prop_oneof![6 => Just(GOOD), 1 => Just(NOT_A_MAP), 1 => Just(MAPPING_CONFLICT), 1 => Just(HUGE)], 0..12)), 1..6),
            max_records in 1usize..10,
            max_items in 1usize..8,
            dice in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let mut ds = Vec::new();
            let mut kinds = BTreeMap::new();
            let mut next = 0u64;
            for (gap, ks) in &batches {
                next += gap;
                for (i, k) in ks.iter().enumerate() {
                    kinds.insert(next + i as u64, *k);
                }
                ds.push(delivery(next, ks.iter().map(|k| record(*k)).collect()));
                next += ks.len() as u64;
            }
            let final_seq = ds.last().map(|d| d.seq).unwrap_or(0);
            let mut window = AckWindow::default();
            for d in &ds {
                window.push(d);
            }
            let opts = EncodeOptions { batch_max_records: max_records, ..Default::default() };
            let mut enc = BulkEncoder::new(opts, IndexTemplate::parse("i").unwrap(), 0xabc);
            let mut queue = VecDeque::new();
            let mut dead: BTreeMap<u64, u16> = BTreeMap::new();
            let mut delivered = BTreeSet::new();
            let mut pos = Some(Position::default());
            while let Some(p) = pos {
                let mut b = BulkBody::default();
                pos = enc.encode(&ds, p, &mut b);
                for d in b.dead.drain(..) {
                    window.settle(d.offset).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(dead.insert(d.offset, 0).is_none());
                }
                if !b.is_empty() {
                    queue.push_back(b);
                }
            }
            let mut server = Server { stored: BTreeMap::new(), dice, rolls: 0, max_items };
            let mut acked = 0u64;
            let mut st = Settlement::default();
            let mut requests = 0;
            while let Some(body) = queue.pop_front() {
                requests += 1;
                prop_assert!(requests < 10_000, "no progress");
                let (status, resp) = server.handle(&body.body);
                let verdict = classify(status, None, resp.as_bytes(), RequestInfo { items: body.len(), conflict_means_delivered: true });
                match settle(&body, verdict, &mut st) {
                    Next::Settled => {
                        for o in &st.delivered {
                            window.settle(*o).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert!(delivered.insert(*o));
                        }
                        for r in &st.rejected {
                            window.settle(r.offset).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert!(dead.insert(r.offset, r.status).is_none());
                        }
                        if !st.retry.is_empty() {
                            let mut again = BulkBody::default();
                            body.select(st.retry.iter().copied(), &mut again);
                            queue.push_back(again);
                        }
                    }
                    Next::Split => {
                        let (mut a, mut b) = (BulkBody::default(), BulkBody::default());
                        body.split_half(&mut a, &mut b);
                        prop_assert!(!a.is_empty() && !b.is_empty());
                        queue.push_back(a);
                        queue.push_back(b);
                    }
                    Next::ResendAll { .. } => queue.push_back(body),
                }
                if let Some(seq) = window.ackable() {
                    prop_assert!(seq > acked);
                    acked = seq;
                }
            }
            if let Some(seq) = window.ackable() {
                acked = seq;
            }
            prop_assert!(window.is_empty());
            prop_assert_eq!(acked, final_seq);
            let mut ids = BTreeMap::new();
            for d in &ds {
                for (i, e) in d.batch.events.iter().enumerate() {
                    let crc = encode::content_crc(d.batch.tag.as_str(), e);
                    ids.insert(d.offset_of(i), format!("{:016x}-{:x}-{crc:08x}", 0xabc, d.offset_of(i)));
                }
            }
            for (offset, kind) in &kinds {
                let id = &ids[offset];
                match *kind {
                    GOOD => {
                        prop_assert!(delivered.contains(offset), "{} not delivered", offset);
                        prop_assert_eq!(server.stored.get(id), Some(&GOOD));
                    }
                    NOT_A_MAP => prop_assert_eq!(dead.get(offset), Some(&0)),
                    MAPPING_CONFLICT => prop_assert_eq!(dead.get(offset), Some(&400)),
                    _ => prop_assert_eq!(dead.get(offset), Some(&413)),
                }
            }
            prop_assert_eq!(delivered.len() + dead.len(), kinds.len());
            prop_assert_eq!(server.stored.len(), delivered.len());
        }
    }
}
