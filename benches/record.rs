//! The buffer's entry format: encoding a request's events (the one copy of the records and
//! every event's CRC, in the connection task) and decoding an entry held in memory.
//!
//! `cargo bench --bench record -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration handles one batch of 1000 Docker-shaped records of ~200 bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benches: a failed unwrap is a failed run

use berth::buffer::record::{decode_written, encode_with_chunks, seal, written_head, HEADER_LEN};
use berth::event::{Batch, Tag};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

#[path = "common.rs"]
mod common;
use common::docker_events;

const RECORDS: usize = 1000;

fn bench(c: &mut Criterion) {
    let batch = Batch { tag: Tag::from_static("docker.app"), events: docker_events(RECORDS) };
    let bytes: usize = batch.events.iter().map(|e| e.record.len()).sum();
    let mut entry = encode_with_chunks(&batch, &[42], 1_800_000_000).unwrap();
    seal(&mut entry, 7);
    let body = Bytes::from(entry).slice(HEADER_LEN..);

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_with_chunks(black_box(&batch), &[42], 1_800_000_000).unwrap())
    });
    g.bench_function("decode_written", |b| b.iter(|| decode_written(black_box(&body)).unwrap()));
    g.bench_function("written_head", |b| b.iter(|| written_head(black_box(&body)).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
