//! The stdout sink writes to the process's real fd 1: run it in a child copy of this test
//! binary and read the child's stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::config::Format;
use berth::event::{Batch, Event, EventTime, Tag};
use berth::metrics::Metrics;
use berth::pipeline::Pipeline;
use berth::sink::{stdout, SinkContext};
use bytes::Bytes;
use std::process::Command;
use std::sync::Arc;

const CHILD: &str = "BERTH_TEST_STDOUT_CHILD";

/// In the child: send 100 events through the stdout sink. In the parent: does nothing.
#[tokio::test]
async fn child_writes_events() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let metrics = Arc::new(Metrics::new());
    let dir = tempfile::tempdir().unwrap();
    let (p, reader) = Pipeline::with_one_sink(dir.path(), "s", Arc::clone(&metrics)).unwrap();
    let ctx = SinkContext {
        name: "stdout".into(),
        reader,
        metrics,
        aws: Arc::new(berth::aws::Aws::new(berth::imds::Imds::disabled())),
    };
    let sink = tokio::spawn(stdout::run(Format::Json, ctx));
    for b in 0..10u64 {
        let events = (b * 10..b * 10 + 10)
            .map(|i| {
                let v = rmpv::Value::Map(vec![(rmpv::Value::from("n"), rmpv::Value::from(i))]);
                let mut buf = Vec::new();
                rmpv::encode::write_value(&mut buf, &v).unwrap();
                Event {
                    time: EventTime::new(0, 0),
                    record: Bytes::from(buf),
                    metadata: Bytes::new(),
                }
            })
            .collect();
        p.submit(&Batch { tag: Tag::from_static("t"), events }).await.unwrap();
    }
    p.buffer().close().await.unwrap();
    drop(p);
    sink.await.unwrap().unwrap();
}

#[test]
fn stdout_sink_writes_json_lines_to_fd_1() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writes_events", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // The test harness prints its own text too (the first JSON line follows "test … " on
    // the same line); ours are the JSON objects.
    let ns: Vec<u64> = text
        .lines()
        .filter_map(|l| l.find("{\"tag\"").map(|i| &l[i..]))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ns, (0..100).collect::<Vec<_>>());
}
