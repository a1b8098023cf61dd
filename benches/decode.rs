//! frame_len + decode_frame throughput per Forward mode, on Docker-shaped records.
//!
//! `cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration decodes one stream of 1000 records of ~200 bytes, driven the way a
//! connection does (walk, split off the frame, decode). Reported twice: as records/s and
//! as bytes/s of wire data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::forward::{
    decode_frame, encode_request, frame_len, EncodeOptions, Frame, FrameStatus, Limits, Mode,
};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

#[path = "common.rs"]
mod common;
use common::docker_events;

const RECORDS: usize = 1000;
const LIMITS: Limits = Limits { max_message_size: 16 * 1024 * 1024 };

/// Decodes every frame of `stream`; returns the record count so nothing is optimised away.
fn decode_stream(stream: &Bytes) -> usize {
    let mut rest = stream.clone();
    let mut records = 0;
    while !rest.is_empty() {
        let n = match frame_len(&rest, LIMITS.max_message_size) {
            Ok(FrameStatus::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        match decode_frame(rest.split_to(n), &LIMITS) {
            Ok(Frame::Request(r)) => records += r.batch.len(),
            other => panic!("{other:?}"),
        }
    }
    records
}

fn bench(c: &mut Criterion) {
    let events = docker_events(RECORDS);
    let avg = events.iter().map(|e| e.record.len()).sum::<usize>() / RECORDS;
    eprintln!("records: {RECORDS} per stream, {avg} bytes each on average");
    let opts = EncodeOptions { chunk: Some("p8PTjvQzRlKlYs0ZQ7n0Ng==".into()), event_time: true };
    let modes = [
        ("message", Mode::Message),
        ("forward", Mode::Forward),
        ("packed_forward", Mode::PackedForward),
        ("compressed_packed_forward", Mode::CompressedPackedForward),
    ];
    let streams: Vec<(&str, Bytes)> = modes
        .iter()
        .map(|&(name, mode)| {
            let s = Bytes::from(encode_request(mode, "docker.app", &events, &opts));
            assert_eq!(decode_stream(&s), RECORDS);
            eprintln!("{name}: {} bytes on the wire", s.len());
            (name, s)
        })
        .collect();

    let mut g = c.benchmark_group("decode_records");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, s) in &streams {
        g.bench_function(*name, |b| b.iter(|| decode_stream(black_box(s))));
    }
    g.finish();

    let mut g = c.benchmark_group("decode_bytes");
    for (name, s) in &streams {
        g.throughput(Throughput::Bytes(s.len() as u64));
        g.bench_function(*name, |b| b.iter(|| decode_stream(black_box(s))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
