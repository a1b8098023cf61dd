//! The file sink through its public entry point, with a real pipeline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::config::Format;
use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::{Metrics, SinkLabel};
use berth::pipeline::Pipeline;
use berth::sink::{file, SinkContext};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setup() -> (Pipeline, SinkContext, Arc<Metrics>, tempfile::TempDir) {
    let metrics = Arc::new(Metrics::new());
    let dir = tempfile::tempdir().unwrap();
    let (p, reader) = Pipeline::with_one_sink(dir.path(), "s", Arc::clone(&metrics)).unwrap();
    let ctx = SinkContext {
        name: "file".into(),
        reader,
        metrics: Arc::clone(&metrics),
        aws: Arc::new(berth::aws::Aws::new(berth::imds::Imds::disabled())),
    };
    (p, ctx, metrics, dir)
}

fn batch(tag: &str, from: u64, n: u64) -> Batch {
    let events = (from..from + n)
        .map(|i| {
            let v = rmpv::Value::Map(vec![
                (rmpv::Value::from("log"), rmpv::Value::from(format!("line {i}\n\"quoted\""))),
                (rmpv::Value::from("n"), rmpv::Value::from(i)),
            ]);
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &v).unwrap();
            Event {
                time: EventTime::new(1_795_330_805, i as u32),
                record: Bytes::from(b),
                metadata: Bytes::new(),
            }
        })
        .collect();
    Batch { tag: Tag::from(tag.to_string()), events }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn numbers(path: &Path) -> Vec<u64> {
    lines(path).iter().map(|l| l["record"]["n"].as_u64().unwrap()).collect()
}

fn count(m: &Metrics, which: &str) -> u64 {
    let label = SinkLabel { sink: "file".into() };
    match which {
        "records" => m.output_records.get_or_create(&label).get(),
        "errors" => m.output_errors.get_or_create(&label).get(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn json_lines_per_tag() {
    let dir = tempfile::tempdir().unwrap();
    let template = format!("{}/{{tag}}/out.log", dir.path().display());
    let (p, ctx, metrics, _dir) = setup();
    let sink = tokio::spawn(async move { file::run(&template, Format::Json, ctx).await });
    for i in 0..20 {
        p.submit(&batch(if i % 2 == 0 { "even" } else { "odd" }, i * 10, 10)).await.unwrap();
    }
    p.buffer().close().await.unwrap();
    drop(p);
    sink.await.unwrap().unwrap();
    let even = numbers(&dir.path().join("even/out.log"));
    let odd = numbers(&dir.path().join("odd/out.log"));
    assert_eq!(
        even,
        (0..20).filter(|i| i % 2 == 0).flat_map(|i| i * 10..i * 10 + 10).collect::<Vec<_>>()
    );
    assert_eq!(
        odd,
        (0..20).filter(|i| i % 2 == 1).flat_map(|i| i * 10..i * 10 + 10).collect::<Vec<_>>()
    );
    let first = &lines(&dir.path().join("even/out.log"))[0];
    assert_eq!(first["tag"], "even");
    assert_eq!(first["time"], "2026-11-22T07:00:05.000000000Z");
    assert_eq!(first["record"]["log"], "line 0\n\"quoted\"");
    assert_eq!(count(&metrics, "records"), 200);
}

#[tokio::test]
async fn blocked_path_is_retried_and_everything_arrives_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let template = format!("{}/sub/{{tag}}.log", blocker.display());
    let (p, ctx, metrics, _dir) = setup();
    let sink = tokio::spawn(async move { file::run(&template, Format::Json, ctx).await });
    p.submit(&batch("a", 0, 3)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&metrics, "errors") < 2 {
        assert!(Instant::now() < deadline, "no retry seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(&metrics, "records"), 0);
    p.submit(&batch("a", 3, 2)).await.unwrap();
    std::fs::remove_file(&blocker).unwrap();
    p.buffer().close().await.unwrap();
    drop(p);
    tokio::time::timeout(Duration::from_secs(30), sink).await.unwrap().unwrap().unwrap();
    assert_eq!(numbers(&blocker.join("sub/a.log")), vec![0, 1, 2, 3, 4]);
    assert_eq!(count(&metrics, "records"), 5);
}
