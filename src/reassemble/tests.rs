use super::*;
use crate::event::{EventTime, Tag};
use rmpv::Value;

const T: Duration = Duration::from_secs(5);

fn limits(max_size: usize) -> Limits {
    Limits { max_size, timeout: T }
}

fn encode(v: &Value) -> Bytes {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    Bytes::from(out)
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), Value::from(*v))).collect())
}

pub(crate) fn line(container: &str, log: &str) -> Bytes {
    encode(&map(&[
        ("container_id", container),
        ("container_name", "/web"),
        ("source", "stdout"),
        ("log", log),
    ]))
}

pub(crate) fn part(container: &str, id: &str, ordinal: u64, last: bool, log: &str) -> Bytes {
    encode(&map(&[
        ("container_id", container),
        ("container_name", "/web"),
        ("source", "stdout"),
        ("log", log),
        ("partial_message", "true"),
        ("partial_id", id),
        ("partial_ordinal", &ordinal.to_string()),
        ("partial_last", if last { "true" } else { "false" }),
    ]))
}

fn batch(tag: &str, records: Vec<Bytes>, secs: i64) -> Batch {
    Batch {
        tag: Tag::from_static(Box::leak(tag.to_string().into_boxed_str())),
        events: records
            .into_iter()
            .enumerate()
            .map(|(i, record)| Event {
                time: EventTime::new(secs, i as u32),
                record,
                metadata: Bytes::new(),
            })
            .collect(),
    }
}

pub(crate) fn decode(record: &[u8]) -> Value {
    let mut rd = record;
    rmpv::decode::read_value(&mut rd).unwrap()
}

pub(crate) fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map().unwrap().iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v)
}

fn joiner(opts: JoinOptions) -> Joiner {
    Joiner::new(opts, "s", Arc::new(Metrics::new()))
}

fn partial_only(max_size: usize) -> Joiner {
    joiner(JoinOptions { partial: Some(limits(max_size)), multiline: None })
}

/// Everything ready, as (first, seq, batch).
fn drain(j: &mut Joiner) -> Vec<(u64, u64, Batch)> {
    std::iter::from_fn(|| j.pop_ready()).collect()
}

fn logs(b: &Batch) -> Vec<Option<String>> {
    b.events
        .iter()
        .map(|e| {
            (!e.is_tombstone())
                .then(|| field(&decode(&e.record), "log").unwrap().as_str().unwrap().to_string())
        })
        .collect()
}

fn counter(m: &Metrics, kind: &'static str, outcome: &'static str) -> u64 {
    m.reassembled_records
        .get_or_create(&crate::metrics::JoinLabel { sink: "s".into(), kind, outcome })
        .get()
}

#[test]
fn records_without_parts_pass_untouched_and_at_once() {
    let mut j = partial_only(1 << 20);
    let records = vec![line("c1", "a"), encode(&map(&[("msg", "not docker")])), line("c1", "b")];
    let b = batch("t", records.clone(), 1);
    j.push(0, 3, b.clone(), Instant::now());
    let out = drain(&mut j);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].2, b, "same bytes, no copy of anything");
    assert_eq!(j.held_events(), 0);
}

#[test]
fn parts_in_one_delivery_join_into_the_first_slot() {
    let mut j = partial_only(1 << 20);
    let b = batch(
        "t",
        vec![
            part("c1", "p", 1, false, "aaa"),
            part("c1", "p", 2, false, "bbb"),
            part("c1", "p", 3, true, "cc"),
            line("c1", "next"),
        ],
        7,
    );
    j.push(10, 14, b, Instant::now());
    let out = drain(&mut j);
    assert_eq!(out.len(), 1);
    let (first, seq, got) = &out[0];
    assert_eq!((*first, *seq), (10, 14));
    assert_eq!(logs(got), vec![Some("aaabbbcc".into()), None, None, Some("next".into())]);
    let joined = decode(&got.events[0].record);
    assert_eq!(got.events[0].time, EventTime::new(7, 0), "the first part's time");
    for k in
        ["partial_message", "partial_id", "partial_ordinal", "partial_last", "partial_incomplete"]
    {
        assert!(field(&joined, k).is_none(), "{k} dropped from a whole line: {joined}");
    }
    assert_eq!(field(&joined, "container_id").unwrap().as_str(), Some("c1"));
    assert_eq!(field(&joined, "source").unwrap().as_str(), Some("stdout"));
    assert_eq!(got.events[1].time, EventTime::new(7, 1), "a tombstone keeps its slot's time");
}

#[test]
fn a_delivery_waits_for_the_rest_of_its_line_and_later_ones_wait_behind_it() {
    let m = Arc::new(Metrics::new());
    let mut j = Joiner::new(
        JoinOptions { partial: Some(limits(1 << 20)), multiline: None },
        "s",
        Arc::clone(&m),
    );
    let now = Instant::now();
    j.push(0, 2, batch("a", vec![line("c1", "before"), part("c1", "p", 1, false, "x1")], 1), now);
    assert!(drain(&mut j).is_empty(), "held: its line is open");
    // Another container's lines in between, in their own deliveries.
    j.push(2, 4, batch("b", vec![line("c2", "other1"), line("c2", "other2")], 2), now);
    assert!(drain(&mut j).is_empty(), "later deliveries wait: order is kept");
    j.push(4, 5, batch("a", vec![part("c1", "p", 2, true, "x2")], 3), now);
    let out = drain(&mut j);
    assert_eq!(out.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(0, 2), (2, 4), (4, 5)]);
    assert_eq!(logs(&out[0].2), vec![Some("before".into()), Some("x1x2".into())]);
    assert_eq!(logs(&out[1].2), vec![Some("other1".into()), Some("other2".into())]);
    assert_eq!(logs(&out[2].2), vec![None]);
    assert_eq!(counter(&m, "partial", "complete"), 1);
}

#[test]
fn parts_are_joined_in_ordinal_order_whatever_order_they_arrive_in() {
    let mut j = partial_only(1 << 20);
    let now = Instant::now();
    j.push(0, 1, batch("a", vec![part("c1", "p", 2, false, "two-")], 1), now);
    j.push(1, 2, batch("a", vec![part("c1", "p", 3, true, "three")], 1), now);
    assert!(drain(&mut j).is_empty(), "ordinal 1 is missing");
    j.push(2, 3, batch("a", vec![part("c1", "p", 1, false, "one-")], 1), now);
    let out = drain(&mut j);
    assert_eq!(logs(&out[0].2), vec![Some("one-two-three".into())]);
}

#[test]
fn interleaved_lines_of_two_containers_are_not_mixed() {
    let mut j = partial_only(1 << 20);
    let now = Instant::now();
    let b = batch(
        "t",
        vec![
            part("c1", "p1", 1, false, "A1"),
            part("c2", "p2", 1, false, "B1"),
            part("c1", "p1", 2, false, "A2"),
            part("c2", "p2", 2, true, "B2"),
            part("c1", "p1", 3, true, "A3"),
        ],
        1,
    );
    j.push(0, 5, b, now);
    let out = drain(&mut j);
    assert_eq!(logs(&out[0].2), vec![Some("A1A2A3".into()), Some("B1B2".into()), None, None, None]);
}

#[test]
fn a_line_whose_last_part_never_comes_is_sent_after_the_timeout_marked_incomplete() {
    let m = Arc::new(Metrics::new());
    let mut j = Joiner::new(
        JoinOptions { partial: Some(limits(1 << 20)), multiline: None },
        "s",
        Arc::clone(&m),
    );
    let now = Instant::now();
    j.push(
        0,
        2,
        batch("a", vec![part("c1", "p", 1, false, "x1"), part("c1", "p", 2, false, "x2")], 1),
        now,
    );
    assert_eq!(j.next_deadline(), Some(now + T));
    j.expire(now + T - Duration::from_millis(1));
    assert!(drain(&mut j).is_empty());
    j.expire(now + T);
    let out = drain(&mut j);
    assert_eq!(logs(&out[0].2), vec![Some("x1x2".into()), None]);
    let rec = decode(&out[0].2.events[0].record);
    assert_eq!(field(&rec, "partial_incomplete"), Some(&Value::Boolean(true)));
    assert_eq!(field(&rec, "partial_id").unwrap().as_str(), Some("p"), "kept, to find the rest");
    assert!(field(&rec, "partial_ordinal").is_none());
    assert_eq!(counter(&m, "partial", "timeout"), 1);
    assert_eq!(j.next_deadline(), None);
}

#[test]
fn a_line_over_max_size_is_sent_in_pieces_marked_incomplete() {
    let m = Arc::new(Metrics::new());
    let mut j = Joiner::new(
        JoinOptions { partial: Some(limits(10)), multiline: None },
        "s",
        Arc::clone(&m),
    );
    let now = Instant::now();
    let parts = (1..=5).map(|o| part("c1", "p", o, o == 5, &format!("{o}{o}{o}{o}"))).collect();
    j.push(0, 5, batch("a", parts, 1), now);
    // The rest goes on from ordinal 4 and ends with the last part: no wait for a timeout.
    let out = drain(&mut j);
    assert_eq!(
        logs(&out[0].2),
        vec![Some("111122223333".into()), None, None, Some("44445555".into()), None]
    );
    let first = decode(&out[0].2.events[0].record);
    assert_eq!(field(&first, "partial_incomplete"), Some(&Value::Boolean(true)));
    let rest = decode(&out[0].2.events[3].record);
    assert_eq!(
        field(&rest, "partial_incomplete"),
        Some(&Value::Boolean(true)),
        "a piece too: {rest}"
    );
    assert_eq!(counter(&m, "partial", "max_size"), 2);
}

#[test]
fn too_much_held_closes_the_oldest_group() {
    let m = Arc::new(Metrics::new());
    let mut j = Joiner::new(
        JoinOptions { partial: Some(limits(usize::MAX)), multiline: None },
        "s",
        Arc::clone(&m),
    );
    let now = Instant::now();
    j.push(0, 1, batch("a", vec![part("c1", "p", 1, false, "x")], 1), now);
    let mut off = 1;
    while j.held_events() <= READ_AHEAD_EVENTS && off < 2 * READ_AHEAD_EVENTS as u64 {
        let n = 10_000;
        j.push(off, off + n, batch("b", (0..n).map(|_| line("c2", "y")).collect(), 1), now);
        off += n;
        if !drain(&mut j).is_empty() {
            break;
        }
    }
    assert_eq!(counter(&m, "partial", "read_ahead"), 1);
    assert_eq!(j.held_events(), 0, "everything released");
}

struct Labels(Vec<(&'static str, &'static str)>);

impl MultilineSource for Labels {
    fn multiline_start(&self, container_id: &str) -> Option<String> {
        self.0.iter().find(|(c, _)| *c == container_id).map(|(_, p)| p.to_string())
    }
}

fn multiline(max_size: usize) -> (Joiner, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    let source = Arc::new(Labels(vec![("c1", r"^\S"), ("bad", "(")]));
    let opts =
        JoinOptions { partial: Some(limits(1 << 20)), multiline: Some((limits(max_size), source)) };
    (Joiner::new(opts, "s", Arc::clone(&m)), m)
}

#[test]
fn multiline_groups_lines_of_a_labelled_container_until_its_next_start_line() {
    let (mut j, m) = multiline(1 << 20);
    let now = Instant::now();
    let b = batch(
        "t",
        vec![
            line("c1", "  orphan continuation"),
            line("c1", "Exception: boom"),
            line("c2", "unlabelled"),
            line("c1", "  at a()"),
            line("c1", "  at b()"),
            line("c1", "next line"),
        ],
        1,
    );
    j.push(0, 6, b, now);
    assert!(drain(&mut j).is_empty(), "the group of 'next line' is open");
    j.expire(now + T);
    let out = drain(&mut j);
    assert_eq!(
        logs(&out[0].2),
        vec![
            Some("  orphan continuation".into()),
            Some("Exception: boom\n  at a()\n  at b()".into()),
            Some("unlabelled".into()),
            None,
            None,
            Some("next line".into()),
        ]
    );
    let rec = decode(&out[0].2.events[1].record);
    assert!(field(&rec, "multiline_incomplete").is_none(), "a group closed normally: {rec}");
    assert_eq!(counter(&m, "multiline", "complete"), 2);
}

#[test]
fn multiline_timeout_counts_from_the_last_line() {
    let (mut j, _) = multiline(1 << 20);
    let now = Instant::now();
    j.push(0, 1, batch("t", vec![line("c1", "Start")], 1), now);
    j.push(1, 2, batch("t", vec![line("c1", "  more")], 1), now + Duration::from_secs(3));
    j.expire(now + T);
    assert!(drain(&mut j).is_empty(), "3 s + 5 s after the last line");
    j.expire(now + Duration::from_secs(8));
    let out = drain(&mut j);
    assert_eq!(logs(&out[0].2), vec![Some("Start\n  more".into())]);
}

#[test]
fn multiline_group_over_max_size_is_split_and_marked() {
    let (mut j, m) = multiline(12);
    let b = batch(
        "t",
        vec![line("c1", "Start"), line("c1", " 1234"), line("c1", " 5678"), line("c1", " 9")],
        1,
    );
    j.push(0, 4, b, Instant::now());
    j.expire(Instant::now() + T);
    let out = drain(&mut j);
    assert_eq!(
        logs(&out[0].2),
        vec![Some("Start\n 1234\n 5678".into()), None, None, Some(" 9".into())]
    );
    let rec = decode(&out[0].2.events[0].record);
    assert_eq!(field(&rec, "multiline_incomplete"), Some(&Value::Boolean(true)));
    assert_eq!(counter(&m, "multiline", "max_size"), 1);
}

#[test]
fn an_invalid_pattern_leaves_lines_ungrouped() {
    let (mut j, _) = multiline(1 << 20);
    let b = batch("t", vec![line("bad", "a"), line("bad", " b")], 1);
    j.push(0, 2, b.clone(), Instant::now());
    assert_eq!(drain(&mut j)[0].2, b);
}

#[test]
fn a_split_line_closes_the_containers_multiline_group_first() {
    let (mut j, _) = multiline(1 << 20);
    let b = batch(
        "t",
        vec![
            line("c1", "Start"),
            line("c1", " cont"),
            part("c1", "p", 1, false, "L1"),
            part("c1", "p", 2, true, "L2"),
        ],
        1,
    );
    j.push(0, 4, b, Instant::now());
    let out = drain(&mut j);
    assert_eq!(logs(&out[0].2), vec![Some("Start\n cont".into()), None, Some("L1L2".into()), None]);
}

/// The record as `joined_record` built it with rmpv (decode, edit, encode): the oracle of
/// the byte-copying one, compared as values.
fn joined_by_rmpv(base: &[u8], kind: Kind, message: &[u8], incomplete: bool) -> Option<Value> {
    let mut rd = base;
    let Value::Map(mut map) = rmpv::decode::read_value(&mut rd).ok()? else { return None };
    let is_partial_key = |k: &Value| {
        matches!(k.as_str(), Some("partial_message" | "partial_ordinal" | "partial_last"))
    };
    map.retain(|(k, _)| !(is_partial_key(k) || (!incomplete && k.as_str() == Some("partial_id"))));
    let text = match String::from_utf8(message.to_vec()) {
        Ok(s) => Value::from(s),
        Err(e) => Value::Binary(e.into_bytes()),
    };
    match map.iter_mut().find(|(k, _)| k.as_str() == Some("log")) {
        Some((_, v)) => *v = text,
        None => map.push((Value::from("log"), text)),
    }
    if incomplete {
        let marker =
            if kind == Kind::Partial { "partial_incomplete" } else { "multiline_incomplete" };
        map.push((Value::from(marker), Value::Boolean(true)));
    }
    Some(Value::Map(map))
}

#[test]
fn joined_record_matches_the_value_tree_edit() {
    let records = [
        part("c", "id", 1, false, "x"),
        line("c", "y"),
        // No log; a non-string key; two logs (the first takes the message); nested values.
        encode(&Value::Map(vec![
            (Value::from(1), Value::from("one")),
            (Value::from("partial_message"), Value::from("true")),
            (Value::from("nested"), Value::Array(vec![Value::Nil, map(&[("log", "inner")])])),
        ])),
        encode(&Value::Map(vec![
            (Value::from("log"), Value::from("first")),
            (Value::from("partial_id"), Value::from("p")),
            (Value::from("log"), Value::from("second")),
            (Value::from("f"), Value::F64(1.5)),
        ])),
    ];
    for base in &records {
        for kind in [Kind::Partial, Kind::Multiline] {
            for incomplete in [false, true] {
                for message in [&b"joined text"[..], b"", b"\xff\xfe not utf-8"] {
                    let ours = joined_record(base, kind, message, incomplete).map(|r| decode(&r));
                    let want = joined_by_rmpv(base, kind, message, incomplete);
                    assert_eq!(ours, want, "{:?} {incomplete} {message:?}", decode(base));
                }
            }
        }
    }
    assert_eq!(joined_record(b"\x92\x01\x02", Kind::Partial, b"m", false), None, "not a map");
}

#[test]
fn hostile_ordinals_do_not_overflow() {
    // A last part at u64::MAX (ordinal + 1 overflows), and one below where the group
    // starts: neither panics (a debug build would), neither counts as complete, and the
    // groups end at their timeout with what they had.
    let mut j = partial_only(1 << 20);
    let now = Instant::now();
    j.push(0, 1, batch("a", vec![part("c1", "x", 1, false, "one-")], 1), now);
    j.push(1, 2, batch("a", vec![part("c1", "x", u64::MAX, true, "max")], 1), now);
    assert!(drain(&mut j).is_empty(), "not complete: ordinals 2..u64::MAX are missing");
    // A line split by max_size whose last piece is u64::MAX: no next ordinal to go on at.
    let mut small = partial_only(8);
    small.push(0, 1, batch("a", vec![part("c2", "y", u64::MAX, false, "0123456789")], 1), now);
    let later = now + std::time::Duration::from_secs(3600);
    small.push(1, 2, batch("a", vec![part("c2", "y", 1, true, "z")], 1), later);
    let mut j2 = partial_only(1 << 20);
    j2.push(0, 1, batch("a", vec![part("c3", "z", 0, true, "zero")], 1), now);
    let _ = drain(&mut j2);
    let _ = drain(&mut small);
    let _ = drain(&mut j);
}
