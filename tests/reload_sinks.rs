//! SIGHUP applies `[[sink]]` while berth runs: a sink added starts at the oldest event in
//! the buffer, a changed one resumes at its own cursor with its new settings, a removed one
//! stops and its cursor is forgotten, one that did not change keeps running untouched (no
//! event delivered twice), and a sink list that cannot work keeps the running one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn file_sink(name: &str, pattern: &str) -> String {
    format!(
        "\n[[sink]]\nname = \"{name}\"\ntype = \"file\"\nmatch = \"{pattern}\"\npath = \"{{dir}}/out/{name}/{{tag}}.ndjson\"\n"
    )
}

fn write_config(dir: &Path, sinks: &[String]) {
    let text =
        format!("{NETWORK_HEAD}{}", sinks.concat()).replace("{dir}", &dir.display().to_string());
    std::fs::write(dir.join("berth.toml"), text).unwrap();
}

/// `ids` on `tag`, one Message-mode request each, acked.
fn send(b: &Berth, tag: &str, ids: std::ops::Range<u64>) {
    let mut c = Client::connect(&b.listeners[0]);
    for id in ids {
        let chunk = format!("{tag}-{id}");
        let rec = rmpv::Value::Map(vec![(s("id"), rmpv::Value::from(id))]);
        c.send(&message(tag, 1_795_330_805, rec, Some(&chunk)), usize::MAX).unwrap();
        assert_eq!(c.read_exact_n(ack_bytes(&chunk).len()), ack_bytes(&chunk));
    }
}

/// Per sink, per tag: the ids delivered, in order.
fn delivered(dir: &Path) -> BTreeMap<String, BTreeMap<String, Vec<u64>>> {
    let mut out = BTreeMap::new();
    let Ok(sinks) = std::fs::read_dir(dir.join("out")) else { return out };
    for s in sinks {
        let s = s.unwrap();
        let sink = s.file_name().to_string_lossy().to_string();
        let per: &mut BTreeMap<String, Vec<u64>> = out.entry(sink).or_default();
        for f in std::fs::read_dir(s.path()).unwrap() {
            for v in read_ndjson(&f.unwrap().path()) {
                let tag = v["tag"].as_str().unwrap().to_string();
                per.entry(tag).or_default().push(v["record"]["id"].as_u64().unwrap());
            }
        }
    }
    out
}

fn ids(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

fn wait_delivered(b: &Berth, sink: &str, tag: &str, want: &[u64]) {
    wait_for(WAIT, &format!("{sink} delivers {tag} {want:?}"), || {
        let got = delivered(b.path());
        (got.get(sink).and_then(|t| t.get(tag)).map(Vec::as_slice).unwrap_or(&[]) == want)
            .then_some(())
    });
}

fn reload(b: &Berth, sinks: &[String], expect: &str) {
    let before = b.stderr_text().matches(expect).count();
    write_config(b.path(), sinks);
    b.signal(libc::SIGHUP);
    wait_for(WAIT, expect, || (b.stderr_text().matches(expect).count() > before).then_some(()));
}

fn status_sinks(b: &Berth) -> Vec<String> {
    let (code, body) = b.http_get("/v1/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["sinks"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn sighup_adds_changes_and_removes_sinks_while_the_rest_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &[file_sink("all", "**")]);
    let text = std::fs::read_to_string(dir.path().join("berth.toml")).unwrap();
    let b = start_in(dir, &text, &[]);
    send(&b, "app.web", 0..5);
    send(&b, "other.db", 0..3);
    wait_delivered(&b, "all", "app.web", &ids(0..5));
    wait_delivered(&b, "all", "other.db", &ids(0..3));

    // Added: starts at the oldest event in the buffer (the backlog of its tags included);
    // "all" is not restarted.
    reload(&b, &[file_sink("all", "**"), file_sink("apps", "app.**")], "SIGHUP: sinks changed");
    send(&b, "app.web", 5..8);
    send(&b, "other.db", 3..4);
    wait_delivered(&b, "apps", "app.web", &ids(0..8));
    wait_delivered(&b, "all", "app.web", &ids(0..8));
    wait_delivered(&b, "all", "other.db", &ids(0..4));
    assert_eq!(status_sinks(&b), ["all", "apps"]);
    assert!(!delivered(b.path())["apps"].contains_key("other.db"));

    // Changed: resumes at its own cursor, with its new pattern (nothing it passed comes
    // back: its cursor moved over the tags it skipped too).
    reload(&b, &[file_sink("all", "**"), file_sink("apps", "other.**")], "SIGHUP: sinks changed");
    send(&b, "other.db", 4..6);
    send(&b, "app.web", 8..9);
    wait_delivered(&b, "apps", "other.db", &ids(4..6));
    wait_delivered(&b, "all", "other.db", &ids(0..6));
    wait_delivered(&b, "all", "app.web", &ids(0..9));
    assert_eq!(delivered(b.path())["apps"]["app.web"], ids(0..8), "nothing new for app.**");

    // Removed: stops, its cursor forgotten; tags no sink takes are no longer stored.
    reload(&b, &[file_sink("apps", "other.**")], "SIGHUP: sinks changed");
    assert!(b.stderr_text().contains("SIGHUP: sink removed; its cursor is forgotten"));
    assert_eq!(status_sinks(&b), ["apps"]);
    let unmatched = b.metric("berth_unmatched_records_total");
    send(&b, "app.web", 9..11);
    send(&b, "other.db", 6..7);
    wait_delivered(&b, "apps", "other.db", &ids(4..7));
    assert_eq!(b.metric("berth_unmatched_records_total"), unmatched + 2.0);
    assert_eq!(delivered(b.path())["all"]["app.web"], ids(0..9), "a removed sink delivers nothing");
    let cursors = std::fs::read_dir(b.path().join("buffer/cursors")).unwrap();
    let names: Vec<String> =
        cursors.map(|c| c.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["apps"]);

    // A sink list that cannot work (an AWS sink without a region) keeps the running one.
    let cw = "\n[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\nmatch = \"**\"\n".to_string();
    reload(&b, &[file_sink("apps", "other.**"), cw], "the running ones are kept");
    let err = b.stderr_text();
    let line = err.lines().rfind(|l| l.contains("the running ones are kept")).unwrap();
    assert!(line.contains("sink[1]") && line.contains("no aws region"), "names the sink: {line}");
    send(&b, "other.db", 7..8);
    wait_delivered(&b, "apps", "other.db", &ids(4..8));
    assert_eq!(status_sinks(&b), ["apps"]);

    // Nothing was delivered twice by a sink that kept running, and berth stops cleanly.
    let got = delivered(b.path());
    assert_eq!(got["all"]["app.web"], ids(0..9));
    assert_eq!(got["all"]["other.db"], ids(0..6));
    let mut b = b;
    assert!(b.stop().success(), "{}", b.stderr_text());
    assert!(!b.stderr_text().contains("panicked"));
}
