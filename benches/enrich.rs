//! The input's record rewrite: Docker records gaining their container's ECS fields and the
//! host fields (cache hit), and records of other clients passing through.
//!
//! `cargo bench --bench enrich -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration enriches one batch of 1000 records of ~200 bytes, as a connection does
//! before handing the batch to the buffer (the batch's clone is outside the timing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::config::{ApplyTo, DockerEnrichConfig, DockerField};
use berth::docker::{Engine, Options};
use berth::enrich::docker::{DockerCache, Inspected};
use berth::enrich::ec2::HostFields;
use berth::enrich::record::Fields;
use berth::enrich::Enricher;
use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::Metrics;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;

#[path = "common.rs"]
mod common;

const RECORDS: usize = 1000;
const ID: &str = "4f1e0c0b5a7d4e4c9b1f7a6e3c2d1b0a4f1e0c0b5a7d4e4c9b1f7a6e3c2d1b0a";

fn batch(records: impl Fn(usize) -> Bytes) -> Batch {
    Batch {
        tag: Tag::from_static("docker.app"),
        events: (0..RECORDS)
            .map(|i| Event {
                time: EventTime::new(1_763_769_600 + i as i64, 0),
                record: records(i),
                metadata: Bytes::new(),
            })
            .collect(),
    }
}

fn plain_record(i: usize) -> Bytes {
    let mut v = Vec::new();
    let _ = rmp::encode::write_map_len(&mut v, 2);
    let _ = rmp::encode::write_str(&mut v, "level");
    let _ = rmp::encode::write_str(&mut v, "info");
    let _ = rmp::encode::write_str(&mut v, "message");
    let _ = rmp::encode::write_str(&mut v, &format!("{i:06} request served in 4 ms for tenant 42, cache hit, upstream 10.0.3.7:8080, bytes 1532, status 200 OK"));
    Bytes::from(v)
}

fn enricher(apply_to: ApplyTo) -> Enricher {
    let metrics = Arc::new(Metrics::new());
    let cfg = DockerEnrichConfig {
        enabled: true,
        socket: None,
        fields: DockerField::DEFAULTS.to_vec(),
        labels: vec![],
        env: vec![],
        removed_grace_period: Duration::from_secs(300),
        inspect_wait: Duration::from_secs(2),
        max_containers: 4096,
    };
    // An engine never run: the cache is filled by `put` alone.
    let engine = Arc::new(Engine::new(Options::default()));
    let cache = Arc::new(DockerCache::new(cfg, engine, Arc::clone(&metrics)));
    let labels = [
        ("com.amazonaws.ecs.cluster", "production"),
        (
            "com.amazonaws.ecs.task-arn",
            "arn:aws:ecs:eu-west-1:123456789012:task/production/0123456789abcdef0123456789abcdef",
        ),
        ("com.amazonaws.ecs.container-name", "app"),
        ("com.amazonaws.ecs.task-definition-family", "shop-frontend"),
        ("com.amazonaws.ecs.task-definition-version", "42"),
    ];
    cache.put(&Inspected {
        id: ID.into(),
        name: "/ecs-shop-frontend-42-app-e2c8a1f0".into(),
        image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop-frontend:1.8.3".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        env: vec![],
        inspected: true,
    });
    let host = Arc::new(HostFields::new("http://127.0.0.1:1", true));
    let mut f = Fields::new();
    for (k, v) in [
        ("ec2_instance_id", "i-0123456789abcdef0"),
        ("availability_zone", "eu-west-1b"),
        ("region", "eu-west-1"),
        ("instance_type", "m6i.large"),
    ] {
        f.push_str(k, v);
    }
    host.set(f);
    Enricher::from_parts(Some(cache), Some(host), apply_to, Some(metrics))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let all = enricher(ApplyTo::All);
    let docker_only = enricher(ApplyTo::Docker);
    let docker = batch(|i| common::docker_record_of(i, ID));
    let plain = batch(plain_record);
    {
        let mut b = docker.clone();
        let grew = rt.block_on(all.enrich(&mut b));
        eprintln!(
            "docker records: {} bytes each, +{} bytes enriched",
            docker.events[0].record.len(),
            grew / RECORDS
        );
    }
    let mut g = c.benchmark_group("enrich_records");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, e, input) in [
        ("docker_ecs_and_host_fields", &all, &docker),
        ("other_client_host_fields", &all, &plain),
        ("other_client_untouched", &docker_only, &plain),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || input.clone(),
                |mut batch| rt.block_on(e.enrich(&mut batch)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
