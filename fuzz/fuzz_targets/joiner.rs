//! The partial-line joiner fed client-controlled parts: the fuzzer picks, per event, a
//! container, a `partial_id`, a `partial_ordinal` (any u64, as a hostile client may send),
//! `partial_last` and the text, or raw bytes as the record; events go in deliveries of a few,
//! with the clock moving on. Whatever comes in: no panic (overflow checks are on with `-a`),
//! every delivery comes out exactly once with as many slots as went in, and what is held
//! stays bounded.
#![no_main]

use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::Metrics;
use berth::reassemble::{JoinOptions, Joiner, Limits};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn str_(out: &mut Vec<u8>, s: &[u8]) {
    rmp::encode::write_str_len(out, s.len() as u32).unwrap();
    out.extend_from_slice(s);
}

fn part(container: u8, id: u8, ordinal: u64, last: bool, log: &[u8]) -> Bytes {
    let mut b = Vec::new();
    rmp::encode::write_map_len(&mut b, 6).unwrap();
    for (k, v) in [
        (&b"container_id"[..], format!("c{container}").into_bytes()),
        (b"log", log.to_vec()),
        (b"partial_message", b"true".to_vec()),
        (b"partial_id", format!("p{id}").into_bytes()),
        (b"partial_ordinal", ordinal.to_string().into_bytes()),
        (b"partial_last", if last { b"true".to_vec() } else { b"false".to_vec() }),
    ] {
        str_(&mut b, k);
        str_(&mut b, &v);
    }
    Bytes::from(b)
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_size: 64, timeout: Duration::from_secs(5) };
    let mut j = Joiner::new(
        JoinOptions { partial: Some(limits), multiline: None },
        "fuzz",
        Arc::new(Metrics::new()),
    );
    let start = Instant::now();
    let mut now = start;
    let (mut first, mut seq, mut sent, mut out_slots) = (0u64, 0u64, Vec::new(), 0usize);
    let mut it = data.chunks(12);
    loop {
        let mut events = Vec::new();
        for c in it.by_ref().take(4) {
            if c.len() < 12 {
                break;
            }
            let ordinal = match c[2] % 4 {
                0 => u64::MAX,
                1 => 0,
                _ => u64::from(c[3] % 8),
            };
            let record = if c[0] == 0xff {
                Bytes::copy_from_slice(&c[1..]) // not a map at all
            } else {
                part(c[0] % 3, c[1] % 3, ordinal, c[4] & 1 == 1, &c[5..5 + usize::from(c[5] % 7)])
            };
            events.push(Event { time: EventTime::new(1, 0), record, metadata: Bytes::new() });
        }
        if events.is_empty() {
            break;
        }
        let n = events.len() as u64;
        seq += 1;
        sent.push((first, n));
        j.push(first, seq, Batch { tag: Tag::from_static("fuzz"), events }, now);
        first += n;
        now += Duration::from_millis(700);
        j.expire(now);
        while let Some((_, _, b)) = j.pop_ready() {
            out_slots += b.events.len();
        }
        assert!(j.held_events() <= 100_000);
    }
    j.expire(now + Duration::from_secs(60));
    j.finish();
    while let Some((_, _, b)) = j.pop_ready() {
        out_slots += b.events.len();
    }
    let in_slots: u64 = sent.iter().map(|(_, n)| n).sum();
    assert_eq!(out_slots as u64, in_slots, "every slot comes out once");
});
