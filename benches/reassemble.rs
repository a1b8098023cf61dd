//! The join stage every sink's reader runs (Docker partial lines, multiline groups).
//!
//! `cargo bench --bench reassemble -- --warm-up-time 1 --measurement-time 3`
//!
//! One delivery of 1000 Docker-shaped records (~200 bytes) pushed through a `Joiner` and
//! taken out again: the cost every record pays on its way to a sink with the defaults on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::Metrics;
use berth::reassemble::{JoinOptions, Joiner, Limits, MultilineSource};
use bytes::Bytes;
use common::docker_record;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RECORDS: usize = 1000;
const LIMITS: Limits = Limits { max_size: 1 << 20, timeout: Duration::from_secs(5) };

/// Some container has a label, not these ones: the multiline stage has to look.
struct OtherLabelled;

impl MultilineSource for OtherLabelled {
    fn multiline_start(&self, _container_id: &str) -> Option<String> {
        None
    }
}

fn batch(records: impl Iterator<Item = Bytes>) -> Batch {
    let events = records
        .map(|record| Event {
            time: EventTime::new(1_763_769_600, 0),
            record,
            metadata: Bytes::new(),
        })
        .collect();
    Batch { tag: Tag::from_static("docker.app"), events }
}

fn run(j: &mut Joiner, b: &Batch, at: &mut u64) -> usize {
    j.push(*at, *at + RECORDS as u64, b.clone(), Instant::now());
    *at += RECORDS as u64;
    let (_, _, out) = j.pop_ready().expect("ready");
    out.len()
}

fn bench(c: &mut Criterion) {
    let plain = batch((0..RECORDS).map(docker_record));
    let mut g = c.benchmark_group("reassemble");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let metrics = Arc::new(Metrics::new());

    let mut off = Joiner::new(JoinOptions::default(), "b", Arc::clone(&metrics));
    let mut at = 0;
    g.bench_function("pass-through, joins off", |b| {
        b.iter(|| black_box(run(&mut off, &plain, &mut at)))
    });

    let mut partial = Joiner::new(
        JoinOptions { partial: Some(LIMITS), multiline: None },
        "b",
        Arc::clone(&metrics),
    );
    g.bench_function("no parts, partial join on (default)", |b| {
        b.iter(|| black_box(run(&mut partial, &plain, &mut at)))
    });

    let source: Arc<dyn MultilineSource> = Arc::new(OtherLabelled);
    let mut both = Joiner::new(
        JoinOptions { partial: Some(LIMITS), multiline: Some((LIMITS, source)) },
        "b",
        Arc::clone(&metrics),
    );
    g.bench_function("unlabelled lines, another container labelled", |b| {
        b.iter(|| black_box(run(&mut both, &plain, &mut at)))
    });

    // 1000 parts of 50 lines of 20 parts each, joined within the delivery.
    let parts = batch((0..RECORDS).map(|i| {
        let (line, ordinal) = (i / 20, i % 20 + 1);
        let mut v = Vec::new();
        let id = format!("{line:064x}");
        let _ = rmp::encode::write_map_len(&mut v, 8);
        for (k, val) in [
            ("container_id", "c0ffee"),
            ("container_name", "/ecs-app-1"),
            ("source", "stdout"),
            ("log", &"x".repeat(200)),
            ("partial_message", "true"),
            ("partial_id", &id),
            ("partial_ordinal", &ordinal.to_string()),
            ("partial_last", if ordinal == 20 { "true" } else { "false" }),
        ] {
            let _ = rmp::encode::write_str(&mut v, k);
            let _ = rmp::encode::write_str(&mut v, val);
        }
        Bytes::from(v)
    }));
    g.bench_function("every record a part (50 lines of 20 parts)", |b| {
        b.iter(|| black_box(run(&mut partial, &parts, &mut at)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
