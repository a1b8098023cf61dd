//! The partial-line joiner's memory, measured by a counting allocator (this test binary's
//! global allocator; nextest runs each test in its own process, so the counts are the
//! test's own): open groups are bounded by the read-ahead bound, pieces do not pin the
//! chunks they were read in, and joining a record costs about its size whatever it holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::Metrics;
use berth::reassemble::{JoinOptions, Joiner, Limits};
use bytes::Bytes;
use rmpv::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

const MIB: usize = 1 << 20;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Peak live bytes since the last call, above what was live then.
fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn s(x: &str) -> Value {
    Value::from(x)
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

/// A Docker partial message, with `extra` pairs after Docker's.
fn part(id: &str, ordinal: u64, last: bool, log: &str, extra: Vec<(Value, Value)>) -> Vec<u8> {
    let mut pairs = vec![
        (s("container_id"), s("c0ffee")),
        (s("source"), s("stdout")),
        (s("log"), s(log)),
        (s("partial_message"), s("true")),
        (s("partial_id"), s(id)),
        (s("partial_ordinal"), s(&ordinal.to_string())),
        (s("partial_last"), s(if last { "true" } else { "false" })),
    ];
    pairs.extend(extra);
    encode(&Value::Map(pairs))
}

fn batch(records: Vec<Bytes>) -> Batch {
    Batch {
        tag: Tag::from_static("docker.web"),
        events: records
            .into_iter()
            .map(|record| Event { time: EventTime::new(1, 0), record, metadata: Bytes::new() })
            .collect(),
    }
}

fn joiner() -> Joiner {
    let limits = Limits { max_size: 16 * MIB, timeout: Duration::from_secs(3600) };
    Joiner::new(
        JoinOptions { partial: Some(limits), multiline: None },
        "s",
        Arc::new(Metrics::new()),
    )
}

/// Thousands of lines whose last part never comes, their later parts large: what the
/// joiner holds stays near its read-ahead bound (64 MiB), the oldest groups closed as
/// incomplete. (Before, pieces of tombstoned parts were not counted: 381 MiB held here.)
#[test]
fn thousands_of_open_groups_stay_within_the_read_ahead_bound() {
    let mut j = joiner();
    let now = Instant::now();
    let base = reset_peak();
    let big = "p".repeat(16 << 10);
    let mut off = 0u64;
    let mut handed_out = Vec::new();
    for g in 0..4000 {
        let id = format!("line-{g}");
        let mut records = vec![Bytes::from(part(&id, 1, false, "a", vec![]))];
        for o in 2..=4 {
            records.push(Bytes::from(part(&id, o, false, &big, vec![])));
        }
        let n = records.len() as u64;
        j.push(off, off + n, batch(records), now);
        off += n;
        // What is ready goes to the sink (dropped here).
        while let Some(ready) = j.pop_ready() {
            handed_out.push(ready.2.len());
        }
    }
    let peak = PEAK.load(Ordering::Relaxed) - base;
    eprintln!("peak {} MiB held by 4,000 open groups", peak >> 20);
    assert!(peak < 80 * MIB, "peak {} MiB held by 4,000 open groups", peak >> 20);
    assert!(!handed_out.is_empty(), "the read-ahead bound closed groups");
}

/// Each later part arrives in its own 1 MiB read chunk (as records are slices of what the
/// sink read from the buffer): once tombstoned, the chunk is freed; the piece the group
/// keeps is a copy. (Before, each 16 KiB piece pinned its whole chunk: ~100 MiB here.)
#[test]
fn pieces_do_not_pin_their_read_chunks() {
    let mut j = joiner();
    let now = Instant::now();
    let base = reset_peak();
    let big = "q".repeat(16 << 10);
    let mut off = 0u64;
    for g in 0..100 {
        let id = format!("line-{g}");
        j.push(off, off + 1, batch(vec![Bytes::from(part(&id, 1, false, "a", vec![]))]), now);
        let rec = part(&id, 2, false, &big, vec![]);
        let mut chunk = rec.clone();
        chunk.resize(MIB, 0);
        let chunk = Bytes::from(chunk);
        j.push(off + 1, off + 2, batch(vec![chunk.slice(..rec.len())]), now);
        off += 2;
    }
    let held = live() - base;
    eprintln!("{} MiB live for 100 open lines of 16 KiB pieces", held >> 20);
    assert!(held < 16 * MIB, "{} MiB live for 100 open lines of 16 KiB pieces", held >> 20);
}

/// A first part carrying 16 MiB of nils: joining its line costs a few times its size, not
/// a value per nil. (Decoded into rmpv::Values, it took 960 MiB.)
#[test]
fn joining_a_record_of_16_million_nils_costs_its_size() {
    let mut j = joiner();
    let now = Instant::now();
    // {"…": …, "junk": [nil × 16M]}, written by hand: rmpv would need the Values to write it.
    let mut first = part("nils", 1, false, "a", vec![]);
    first[0] += 1; // one more pair (a fixmap of 7 pairs becomes 8)
    first.push(0xa4);
    first.extend_from_slice(b"junk");
    let n: u32 = 16 << 20;
    first.push(0xdd);
    first.extend_from_slice(&n.to_be_bytes());
    first.resize(first.len() + n as usize, 0xc0);
    let first = Bytes::from(first);
    let size = first.len();
    j.push(0, 1, batch(vec![first]), now);
    let base = reset_peak();
    j.push(1, 2, batch(vec![Bytes::from(part("nils", 2, true, "b", vec![]))]), now);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    eprintln!("joining a {} MiB record took {} MiB", size >> 20, peak >> 20);
    let (_, _, joined) = j.pop_ready().expect("the line is complete");
    let rec = &joined.events[0].record;
    assert!(rec.len() > size - 200 && rec.ends_with(&[0xc0; 64]), "the nils are kept");
    assert!(peak < 4 * size, "joining a {} MiB record took {} MiB", size >> 20, peak >> 20);
}
