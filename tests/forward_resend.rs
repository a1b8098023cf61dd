//! A Forward client resends a request whose ack it did not get, with the same `chunk`:
//! after the network dropped the ack, when berth was killed after the fsync and before
//! the ack, and when two of its writers race (Docker 20.10's driver). berth acks the copy
//! and stores the events once (`berth_input_duplicate_chunks_total`), across connections,
//! listeners and a SIGKILL; a different request that reuses a chunk id is still stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use rmpv::Value;
use std::collections::BTreeMap;

const DUPLICATES: &str = "berth_input_duplicate_chunks_total";
const LAG: &str = "berth_sink_lag_records{sink=\"files\"}";
const TIME: i64 = 1_795_330_805;

/// A PackedForward request of `ids` on `tag` asking for an ack with `chunk`.
fn request(tag: &str, ids: std::ops::Range<u64>, chunk: &str) -> Vec<u8> {
    let entries: Vec<u8> = ids
        .map(|id| {
            mp(&Value::Array(vec![
                Value::from(TIME + id as i64),
                Value::Map(vec![(s("id"), Value::from(id)), (s("log"), s(&format!("line {id}")))]),
            ]))
        })
        .flat_map(|b| b.into_iter())
        .collect();
    mp(&Value::Array(vec![
        s(tag),
        Value::Binary(entries),
        Value::Map(vec![(s("chunk"), s(chunk))]),
    ]))
}

/// Send `req` and read its ack.
fn send_acked(listener: &str, req: &[u8], chunk: &str) -> Client {
    let mut c = Client::connect(listener);
    c.send(req, usize::MAX).unwrap();
    let want = ack_bytes(chunk);
    assert_eq!(c.read_exact_n(want.len()), want, "ack of {chunk} via {listener}");
    c
}

/// How many times each id was delivered, per tag, once the sink delivered at least
/// `events` and has caught up with the buffer.
fn delivered(b: &Berth, events: usize) -> BTreeMap<(String, u64), usize> {
    wait_for(WAIT, &format!("{events} events delivered"), || {
        let got = read_out(b);
        (got.values().sum::<usize>() >= events && b.metric(LAG) == 0.0).then_some(())
    });
    read_out(b)
}

fn read_out(b: &Berth) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(b.path().join("out")) else { return out };
    for e in rd {
        for v in read_ndjson(&e.unwrap().path()) {
            let key = (v["tag"].as_str().unwrap().to_string(), v["record"]["id"].as_u64().unwrap());
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

fn once(tag: &str, ids: std::ops::Range<u64>) -> Vec<((String, u64), usize)> {
    ids.map(|id| ((tag.to_string(), id), 1)).collect()
}

#[test]
fn a_request_sent_again_on_another_connection_is_acked_and_stored_once() {
    let b = start(FILE_SINK);
    let (tcp, unix) = (b.listeners[0].clone(), b.listeners[1].clone());
    let req = request("app.web", 0..3, "Y2h1bmstMQ==");
    // The first copy, then the same request on a second connection and another listener,
    // and once more on the first connection, each acked.
    let mut first = send_acked(&tcp, &req, "Y2h1bmstMQ==");
    drop(send_acked(&unix, &req, "Y2h1bmstMQ=="));
    first.send(&req, usize::MAX).unwrap();
    assert_eq!(first.read_exact_n(ack_bytes("Y2h1bmstMQ==").len()), ack_bytes("Y2h1bmstMQ=="));
    // A client that reuses a chunk id for other events loses nothing: the key covers the
    // content. The same events under another chunk id are another request, stored too.
    drop(send_acked(&tcp, &request("app.web", 3..5, "Y2h1bmstMQ=="), "Y2h1bmstMQ=="));
    drop(send_acked(&tcp, &request("app.api", 0..3, "Y2h1bmstMQ=="), "Y2h1bmstMQ=="));
    drop(send_acked(&tcp, &request("app.web", 0..3, "Y2h1bmstMg=="), "Y2h1bmstMg=="));
    let got = delivered(&b, 11);
    let mut want: BTreeMap<_, _> = once("app.web", 3..5).into_iter().collect();
    want.extend(once("app.api", 0..3));
    for id in 0..3 {
        // Stored twice: once per chunk id.
        want.insert(("app.web".to_string(), id), 2);
    }
    assert_eq!(got, want);
    assert_eq!(b.metric(DUPLICATES), 2.0);
}

#[test]
fn copies_sent_at_once_on_two_connections_are_stored_once() {
    let b = start(FILE_SINK);
    let tcp = b.listeners[0].clone();
    // Both copies are in before either ack is read: one waits for the other's write.
    for round in 0..20u64 {
        let chunk = format!("race-{round}");
        let req = request("race", round * 10..round * 10 + 10, &chunk);
        let mut a = Client::connect(&tcp);
        let mut c = Client::connect(&tcp);
        a.send(&req, usize::MAX).unwrap();
        c.send(&req, usize::MAX).unwrap();
        for x in [&mut a, &mut c] {
            assert_eq!(x.read_exact_n(ack_bytes(&chunk).len()), ack_bytes(&chunk), "{chunk}");
        }
    }
    let got = delivered(&b, 200);
    assert_eq!(got, once("race", 0..200).into_iter().collect());
    assert_eq!(b.metric(DUPLICATES), 20.0);
}

#[test]
fn a_request_resent_after_berth_was_killed_is_stored_once() {
    let b = start(FILE_SINK);
    let unix = b.listeners[1].clone();
    let req = request("crash", 0..50, "before-the-kill");
    // Stored and fsynced; the ack is written but the client never reads it: to the client
    // this is berth dying between the fsync and the ack. The sink delivers it first, so a
    // second copy in the buffer would be delivered again.
    let mut c = Client::connect(&unix);
    c.send(&req, usize::MAX).unwrap();
    assert_eq!(delivered(&b, 50), once("crash", 0..50).into_iter().collect());
    b.signal(libc::SIGKILL);
    drop(c);
    let mut b = b;
    let _ = wait_exit(&mut b.child, WAIT);
    let b = restart(b, FILE_SINK);
    // The client reconnects and sends what it holds no ack for, on another listener.
    let tcp = b.listeners[0].clone();
    drop(send_acked(&tcp, &req, "before-the-kill"));
    drop(send_acked(&tcp, &request("crash", 50..60, "after"), "after"));
    assert_eq!(delivered(&b, 60), once("crash", 0..60).into_iter().collect());
    assert_eq!(b.metric(DUPLICATES), 1.0);
}
