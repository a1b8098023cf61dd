//! Model test of the durable buffer: random appends, reads, out-of-order acks, crashes
//! (with and without a torn write at the end) and clean reopens, checked against a plain
//! in-memory model.
//!
//! Checked: offsets are dense and increasing; every acknowledged append is readable, with
//! its bytes, after any crash until every sink has acknowledged it; a sink's cursor never
//! goes backwards and survives a crash of the process; no event is delivered twice to a
//! sink unless it was not yet acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::buffer::{Buffer, BufferOptions, Reader, SyncMode};
use berth::event::{Batch, Event, EventTime, Tag};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    Append {
        events: u8,
        size: u8,
    },
    Read {
        sink: usize,
        max: usize,
    },
    Ack {
        sink: usize,
        pick: usize,
    },
    /// Drop without close; optionally leave the first bytes of an entry that was being
    /// written when the process died.
    Crash {
        torn: Option<usize>,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..5, 0u8..80).prop_map(|(events, size)| Op::Append { events, size }),
        3 => (0..SINKS, 1usize..7).prop_map(|(sink, max)| Op::Read { sink, max }),
        3 => (0..SINKS, any::<usize>()).prop_map(|(sink, pick)| Op::Ack { sink, pick }),
        1 => proptest::option::of(1usize..300).prop_map(|torn| Op::Crash { torn }),
        1 => Just(Op::Reopen),
    ]
}

const SINKS: usize = 2;
const NAMES: [&str; SINKS] = ["fast", "slow"];

fn record(offset: u64, size: u8) -> Bytes {
    let mut r = offset.to_le_bytes().to_vec();
    r.extend(std::iter::repeat_n(offset as u8, size as usize));
    Bytes::from(r)
}

fn batch(first: u64, events: u8, size: u8) -> Batch {
    let events = (0..u64::from(events))
        .map(|i| Event {
            time: EventTime::new(first as i64, 0),
            record: record(first + i, size),
            metadata: Bytes::new(),
        })
        .collect();
    Batch { tag: Tag::from_static("model"), events }
}

#[derive(Default)]
struct SinkModel {
    committed: u64,
    acked_above: BTreeSet<u64>,
    /// Ranges delivered in this session and not acknowledged yet.
    outstanding: Vec<(u64, u64)>,
    /// The offset the next read must start at.
    next: u64,
}

impl SinkModel {
    fn ack(&mut self, first: u64, count: u64) {
        self.acked_above.extend(first..first + count);
        while self.acked_above.remove(&self.committed) {
            self.committed += 1;
        }
    }
}

struct World {
    opts: BufferOptions,
    buf: Option<Buffer>,
    readers: Vec<Reader>,
    log: Vec<Bytes>,
    sinks: Vec<SinkModel>,
}

impl World {
    fn open(&mut self, torn: usize) {
        let (buf, report) = Buffer::open(self.opts.clone()).unwrap();
        assert_eq!(report.lost_events, 0, "{report:?}");
        assert_eq!(report.corrupt_bytes, 0, "{report:?}");
        assert_eq!(report.truncated_bytes, torn as u64, "{report:?}");
        assert_eq!(buf.head(), self.log.len() as u64, "head after recovery");
        self.readers = NAMES.iter().map(|n| buf.reader(n).unwrap()).collect();
        for (r, s) in self.readers.iter().zip(&mut self.sinks) {
            // Persisted by rename at every advance: survives the crash exactly.
            assert_eq!(r.committed(), s.committed, "cursor of {}", r.sink());
            assert_eq!(r.position(), s.committed);
            s.next = s.committed;
            s.outstanding.clear();
            s.acked_above.clear();
        }
        self.buf = Some(buf);
    }

    fn crash(&mut self, torn: Option<usize>) {
        self.readers.clear();
        self.buf = None;
        let mut torn_len = 0;
        if let Some(len) = torn {
            let mut segs: Vec<_> = std::fs::read_dir(self.opts.path.join("segments"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect();
            segs.sort();
            let last = segs.pop().unwrap();
            let entry = encoded_entry(self.log.len() as u64);
            torn_len = len.min(entry.len() - 1);
            append_bytes(&last, &entry[..torn_len]);
        }
        self.open(torn_len);
    }

    async fn read(&mut self, sink: usize, max: usize) {
        let Some(rb) = self.readers[sink].try_next(max, usize::MAX).await.unwrap() else {
            let next = self.sinks[sink].next;
            if self.opts.sync == SyncMode::Never {
                // Readers see what is fsynced, at most `sync_interval` behind the appends.
                assert!(next <= self.log.len() as u64);
            } else {
                assert_eq!(next, self.log.len() as u64, "reader stopped before the head");
            }
            return;
        };
        let s = &mut self.sinks[sink];
        assert_eq!(rb.first_offset, s.next, "dense, in order, no redelivery of acked events");
        assert!(rb.first_offset >= s.committed);
        assert!(!rb.batch.is_empty() && rb.batch.len() <= max);
        for (i, e) in rb.batch.events.iter().enumerate() {
            let o = rb.first_offset + i as u64;
            assert_eq!(e.record, self.log[o as usize], "content of offset {o}");
        }
        s.next = rb.end_offset();
        s.outstanding.push((rb.first_offset, rb.batch.len() as u64));
    }

    fn ack(&mut self, sink: usize, pick: usize) {
        let s = &mut self.sinks[sink];
        if s.outstanding.is_empty() {
            return;
        }
        let (first, count) = s.outstanding.remove(pick % s.outstanding.len());
        let before = self.readers[sink].committed();
        self.readers[sink].ack(first, count).unwrap();
        s.ack(first, count);
        let after = self.readers[sink].committed();
        assert!(after >= before, "cursor went backwards");
        assert_eq!(after, s.committed);
    }
}

/// A real entry's bytes, to leave a torn prefix of it.
fn encoded_entry(first: u64) -> Vec<u8> {
    let mut e = berth::buffer::record::encode(&batch(first, 3, 40)).unwrap();
    berth::buffer::record::seal(&mut e, first);
    e
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn run(ops: Vec<Op>, sync: SyncMode) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = BufferOptions::new(dir.path().join("b"));
        opts.segment_size = 600;
        opts.max_size = 1 << 20;
        opts.sync = sync;
        let mut w = World {
            opts,
            buf: None,
            readers: vec![],
            log: vec![],
            sinks: (0..SINKS).map(|_| SinkModel::default()).collect(),
        };
        w.open(0);
        for op in ops {
            match op {
                Op::Append { events, size } => {
                    let first = w.log.len() as u64;
                    let b = batch(first, events, size);
                    let buf = w.buf.as_ref().unwrap();
                    let r = buf.append(&b).await.unwrap();
                    assert_eq!(r, first..first + u64::from(events), "offsets dense and increasing");
                    w.log.extend(b.events.into_iter().map(|e| e.record));
                    if sync == SyncMode::Never {
                        assert!(buf.head() <= w.log.len() as u64, "readers wait for the fsync");
                    } else {
                        assert_eq!(buf.head(), w.log.len() as u64);
                    }
                }
                Op::Read { sink, max } => w.read(sink, max).await,
                Op::Ack { sink, pick } => w.ack(sink, pick),
                Op::Crash { torn } => w.crash(torn),
                Op::Reopen => {
                    w.readers.clear();
                    let buf = w.buf.take().unwrap();
                    buf.close().await.unwrap();
                    drop(buf);
                    w.open(0);
                }
            }
        }
        // Every sink can still read everything it has not acknowledged.
        for sink in 0..SINKS {
            while w.sinks[sink].next < w.log.len() as u64 {
                let before = w.sinks[sink].next;
                w.read(sink, usize::MAX).await;
                if w.sinks[sink].next == before {
                    // `never`: the writer's next periodic fsync makes the rest readable.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            w.read(sink, 1).await;
            while !w.sinks[sink].outstanding.is_empty() {
                w.ack(sink, 0);
            }
            assert_eq!(w.sinks[sink].committed, w.log.len() as u64);
        }
        assert!(w.buf.as_ref().unwrap().delivered_all());
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn buffer_matches_model(ops in proptest::collection::vec(op(), 1..60), never in any::<bool>()) {
        run(ops, if never { SyncMode::Never } else { SyncMode::Batch });
    }
}

#[test]
fn crash_with_torn_write_after_rolls() {
    let mut ops = vec![];
    for i in 0..30 {
        ops.push(Op::Append { events: 3, size: 50 });
        ops.push(Op::Read { sink: 0, max: 2 });
        ops.push(Op::Ack { sink: 0, pick: i });
        if i % 7 == 0 {
            ops.push(Op::Crash { torn: Some(i * 9 + 1) });
        }
    }
    run(ops, SyncMode::Batch);
}
