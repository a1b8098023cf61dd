//! Docker's split lines joined between the buffer and the sinks, driven by a raw Forward
//! client that sends exactly the parts a test needs (the Docker tests cover the real
//! driver): a line cut short is flushed after the timeout, marked; a restart between two
//! parts (even SIGKILL) still yields the whole line, once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use rmpv::Value;

fn part(id: &str, ordinal: u32, last: bool, log: &str) -> Value {
    rec(&[
        ("container_id", "c0ffee"),
        ("container_name", "/web"),
        ("source", "stdout"),
        ("log", log),
        ("partial_message", "true"),
        ("partial_id", id),
        ("partial_ordinal", &ordinal.to_string()),
        ("partial_last", if last { "true" } else { "false" }),
    ])
}

/// Send one acked Message-mode request and wait for its ack.
fn send_acked(c: &mut Client, record: Value, chunk: &str) {
    c.send(&message("docker.web", 1_795_000_000, record, Some(chunk)), 0).expect("send");
    assert_eq!(c.read_exact_n(ack_bytes(chunk).len()), ack_bytes(chunk), "ack of {chunk}");
}

fn config(extra: &str) -> String {
    format!("{FILE_SINK}\n{extra}")
}

fn out(b: &Berth) -> Vec<serde_json::Value> {
    read_ndjson(&b.path().join("out/docker.web.ndjson"))
}

#[test]
fn a_line_cut_short_is_flushed_after_the_timeout_marked_incomplete() {
    let b = start(&config("[enrich.partial]\ntimeout = \"300ms\""));
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    send_acked(&mut c, part("p1", 1, false, "AAA"), "1");
    send_acked(&mut c, part("p1", 2, false, "BBB"), "2");
    let got = wait_for(WAIT, "the incomplete line", || {
        let got = out(&b);
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got.len(), 1);
    let r = &got[0]["record"];
    assert_eq!(r["log"], "AAABBB");
    assert_eq!(r["partial_incomplete"], true);
    assert_eq!(r["partial_id"], "p1");
    assert!(r.get("partial_ordinal").is_none() && r.get("partial_last").is_none(), "{r}");
    b.wait_metric(
        "berth_reassembled_records_total{sink=\"files\",kind=\"partial\",outcome=\"timeout\"}",
        1.0,
    );
}

#[test]
fn disabled_partial_join_stores_parts_as_they_came() {
    let b = start(&config("[enrich.partial]\nenabled = false"));
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    send_acked(&mut c, part("p1", 1, false, "AAA"), "1");
    send_acked(&mut c, part("p1", 2, true, "BBB"), "2");
    let got = wait_for(WAIT, "both parts", || {
        let got = out(&b);
        (got.len() >= 2).then_some(got)
    });
    assert_eq!(got[0]["record"]["log"], "AAA");
    assert_eq!(got[1]["record"]["partial_ordinal"], "2");
}

/// Part 1 is acknowledged (so on disk) and held in the sink's reader; berth is killed; part 2
/// comes after the restart: the line arrives whole and exactly once.
#[test]
fn sigkill_between_two_parts_still_yields_the_whole_line_once() {
    let cfg = config("[enrich.partial]\ntimeout = \"60s\"");
    let mut b = start(&cfg);
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    send_acked(&mut c, rec(&[("container_id", "c0ffee"), ("log", "before")]), "0");
    send_acked(&mut c, part("p1", 1, false, "AAA"), "1");
    // Delivered and acknowledged; only the held part is left.
    b.wait_metric("berth_sink_lag_records{sink=\"files\"}", 1.0);
    b.signal(9);
    wait_exit(&mut b.child, WAIT);
    let b = restart(b, &cfg);
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    send_acked(&mut c, part("p1", 2, true, "BBB"), "2");
    send_acked(&mut c, rec(&[("container_id", "c0ffee"), ("log", "after")]), "3");
    let got = wait_for(WAIT, "the joined line and the one after", || {
        let got = out(&b);
        got.iter().any(|e| e["record"]["log"] == "after").then_some(got)
    });
    let logs: Vec<&str> = got.iter().map(|e| e["record"]["log"].as_str().unwrap()).collect();
    assert_eq!(logs, vec!["before", "AAABBB", "after"]);
    assert!(got[1]["record"].get("partial_incomplete").is_none());
    b.wait_metric("berth_sink_lag_records{sink=\"files\"}", 0.0);
}

#[test]
fn bad_limits_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "[enrich.partial]\ntimeout = \"0s\"\n\n[[sink]]\nname = \"n\"\ntype = \"null\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enrich.partial.timeout") && err.contains("berth.toml"), "{err}");
}

/// A drain (SIGTERM: the instance is going away) delivers a line still waiting for its
/// other parts, marked, rather than leaving it in a buffer nobody will read again.
#[test]
fn sigterm_delivers_a_held_line_before_exit() {
    let mut b = start(&config("[enrich.partial]\ntimeout = \"60s\""));
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    send_acked(&mut c, part("p1", 1, false, "AAA"), "1");
    b.wait_metric("berth_sink_lag_records{sink=\"files\"}", 1.0);
    drop(c);
    assert!(b.stop().success());
    let got = out(&b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["record"]["log"], "AAA");
    assert_eq!(got[0]["record"]["partial_incomplete"], true);
}
