//! Rough figures for the durable buffer, printed, never asserted (timings vary by disk):
//! `cargo test --release --test buffer_throughput -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::buffer::{Buffer, BufferOptions, SyncMode};
use berth::event::{Batch, Event, EventTime, Tag};
use bytes::Bytes;
use std::time::Instant;

fn batch(events: usize) -> Batch {
    let ev = Event {
        time: EventTime::new(1, 0),
        record: Bytes::from(vec![0x80u8; 200]),
        metadata: Bytes::new(),
    };
    Batch { tag: Tag::from_static("docker.app"), events: vec![ev; events] }
}

async fn run(sync: SyncMode, conns: usize, appends_per_conn: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = BufferOptions::new(dir.path().join("b"));
    o.sync = sync;
    o.max_size = 4 << 30;
    let (buf, _) = Buffer::open(o).unwrap();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let buf = buf.clone();
        tasks.spawn(async move {
            let b = batch(10);
            for _ in 0..appends_per_conn {
                buf.append(&b).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let appends = (conns * appends_per_conn) as f64;
    let st = buf.stats();
    println!(
        "sync={sync:?} connections={conns}: {:.0} appends/s ({:.0} events/s, {:.1} MB/s), {} fsyncs ({:.0}/s, {:.1} appends per fsync)",
        appends / secs,
        appends * 10.0 / secs,
        st.total_bytes as f64 / secs / 1e6,
        st.segment_fsyncs,
        st.segment_fsyncs as f64 / secs,
        appends / st.segment_fsyncs.max(1) as f64,
    );
    let mut r = buf.reader("bench").unwrap();
    let start = Instant::now();
    let mut n = 0;
    // Acknowledge per ~1000 events, as a sink does per bulk request (each advance of the
    // cursor is a file write and rename).
    let mut unacked = None;
    while let Some(rb) = r.try_next(1000, 1 << 20).await.unwrap() {
        n += rb.batch.len();
        let (first, _) = unacked.get_or_insert((rb.first_offset, 0u64));
        let first = *first;
        if rb.end_offset() - first >= 1000 {
            r.ack(first, rb.end_offset() - first).unwrap();
            unacked = None;
        } else {
            unacked = Some((first, rb.end_offset() - first));
        }
    }
    if let Some((first, count)) = unacked {
        r.ack(first, count).unwrap();
    }
    assert_eq!(r.committed(), buf.head());
    let secs = start.elapsed().as_secs_f64();
    println!("  read + ack per 1000 events: {:.0} events/s", n as f64 / secs);
    buf.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints throughput figures; run on demand in release mode"]
async fn throughput() {
    run(SyncMode::Batch, 1, 500).await;
    run(SyncMode::Batch, 64, 100).await;
    run(SyncMode::Always, 64, 20).await;
    run(SyncMode::Never, 64, 500).await;
}
