//! The msgpack walkers outside the decoder, on the same Docker-shaped records: the JSON
//! transcoder (stdout, file and Elasticsearch bodies), a name template's field lookup
//! (CloudWatch group/stream names, Elasticsearch index names) and enrichment's map walk.
//!
//! `cargo bench --bench msgpack -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration handles 1000 records of ~200 bytes.

use berth::enrich::record::walk_map;
use berth::event::{Batch, Event, EventTime, Tag};
use berth::msgpack::json::write_batch_lines;
use berth::sink::template::{NameTemplate, Naming};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

#[path = "common.rs"]
mod common;
use common::docker_record;

const RECORDS: usize = 1000;

fn bench(c: &mut Criterion) {
    let batch = Batch {
        tag: Tag::from_static("docker.app"),
        events: (0..RECORDS)
            .map(|i| Event {
                time: EventTime::new(1_763_769_600 + i as i64, 123_456_789),
                record: docker_record(i),
                metadata: bytes::Bytes::new(),
            })
            .collect(),
    };
    let mut g = c.benchmark_group("msgpack_records");
    g.throughput(Throughput::Elements(RECORDS as u64));

    let mut out = Vec::with_capacity(512 * RECORDS);
    g.bench_function("json_lines", |b| {
        b.iter(|| {
            out.clear();
            let res = write_batch_lines(&mut out, black_box(&batch));
            assert_eq!(res.failed, 0);
            out.len()
        })
    });

    // `log` is the record's last key: the walk passes over the three before it.
    let stream = NameTemplate::parse_as("{container_name}/{log}", Naming::LogStream)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut name = Vec::with_capacity(256);
    g.bench_function("template_render", |b| {
        b.iter(|| {
            let mut n = 0;
            for ev in &black_box(&batch).events {
                n += usize::from(stream.render(&mut name, &ev.record, &ev.metadata, ev.time));
            }
            n
        })
    });

    g.bench_function("walk_map", |b| {
        b.iter(|| {
            let mut n = 0;
            for ev in &black_box(&batch).events {
                if walk_map(&ev.record, |k, _| n += k.len()).is_none() {
                    n += 1;
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
