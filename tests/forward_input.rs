//! `berth run` as a real process, spoken to over real TCP and Unix sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

fn fixtures() -> Vec<(String, Vec<u8>, Value)> {
    let dir = common::package_file("tests/fixtures/forward");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            let bin = std::fs::read(&p).unwrap();
            let manifest: Value =
                serde_json::from_slice(&std::fs::read(p.with_extension("json")).unwrap()).unwrap();
            out.push((name, bin, manifest));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 11, "fixtures missing from {}", dir.display());
    out
}

/// Events the file sink wrote, per tag, in order.
fn delivered(b: &Berth) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(b.path().join("out")) else { return out };
    for e in rd {
        let p = e.unwrap().path();
        for v in read_ndjson(&p) {
            out.entry(v["tag"].as_str().unwrap().to_string()).or_insert_with(Vec::new).push(v);
        }
    }
    out
}

fn count(m: &BTreeMap<String, Vec<Value>>) -> usize {
    m.values().map(Vec::len).sum()
}

/// The decoding layer only: records as the clients sent them, parts of split lines apart.
fn as_received() -> String {
    format!("{FILE_SINK}\n[enrich.partial]\nenabled = false\n")
}

/// Every capture of a real client, replayed whole and one byte per write, over TCP and over
/// a Unix socket, yields exactly its manifest's events and acks. A capture whose requests
/// ask for acks is, replayed, the client resending them (same chunks): each replay is
/// acked and its events are stored once.
#[test]
fn conformance_fixtures_over_tcp_and_unix() {
    for (name, bin, manifest) in fixtures() {
        let b = start(&as_received());
        let events = manifest["events"].as_array().unwrap();
        let acks: Vec<u8> = manifest["acks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| ack_bytes(c.as_str().unwrap()))
            .collect();
        let n_acks = manifest["acks"].as_array().unwrap().len();
        // How many copies of the events `rounds` replays store.
        let copies = |rounds: usize| if n_acks == 0 { rounds } else { rounds.min(1) };
        let mut rounds = 0;
        for listener in b.listeners.clone() {
            for step in [usize::MAX, 1] {
                rounds += 1;
                let mut c = Client::connect(&listener);
                c.send(&bin, step).unwrap();
                if !acks.is_empty() {
                    assert_eq!(
                        c.read_exact_n(acks.len()),
                        acks,
                        "{name}: acks via {listener} step {step}"
                    );
                }
                c.shutdown_write();
                assert!(c.closed_by_server(), "{name}: no bytes beyond the acks may be sent");
                let want = events.len() * copies(rounds);
                wait_for(WAIT, &format!("{name}: {want} events"), || {
                    (count(&delivered(&b)) >= want
                        && b.metric("berth_sink_lag_records{sink=\"files\"}") == 0.0)
                        .then_some(())
                });
            }
        }
        let got = delivered(&b);
        assert_eq!(count(&got), events.len() * copies(rounds), "{name}: no extra events");
        let resent = if n_acks == 0 { 0 } else { (rounds - 1) * n_acks };
        assert_eq!(b.metric("berth_input_duplicate_chunks_total"), resent as f64, "{name}");
        let mut expected: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for _ in 0..copies(rounds) {
            for e in events {
                expected.entry(e["tag"].as_str().unwrap().to_string()).or_default().push(e);
            }
        }
        for (tag, exp) in expected {
            let got = &got[&tag];
            for (i, (g, e)) in got.iter().zip(exp).enumerate() {
                let (secs, nanos) = parse_rfc3339(g["time"].as_str().unwrap());
                assert_eq!(
                    (secs, nanos as i64),
                    (e["time"][0].as_i64().unwrap(), e["time"][1].as_i64().unwrap()),
                    "{name}: time of {tag}[{i}]"
                );
                assert_eq!(g["record"], e["record"], "{name}: record {tag}[{i}]");
            }
        }
        assert_eq!(b.metric("berth_input_errors_total{reason=\"malformed\"}"), 0.0);
    }
}

/// One bad-input case: what to send, and the reason label it must be counted under.
struct Bad {
    name: &'static str,
    bytes: Vec<u8>,
    reason: &'static str,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn compressed(tag: &str, payload: Vec<u8>) -> Vec<u8> {
    mp(&rmpv::Value::Array(vec![
        s(tag),
        rmpv::Value::Binary(payload),
        rmpv::Value::Map(vec![(s("compressed"), s("gzip"))]),
    ]))
}

fn bad_cases() -> Vec<Bad> {
    let entry = mp(&rmpv::Value::Array(vec![rmpv::Value::from(1), rec(&[("log", "x")])]));
    // 4 MiB of entries compress to a few KiB and inflate past the 1 MiB limit.
    let bomb: Vec<u8> = entry.iter().copied().cycle().take(4 << 20).collect();
    vec![
        Bad { name: "reserved marker", bytes: vec![0xc1], reason: "malformed" },
        Bad { name: "non-array request", bytes: mp(&rec(&[("a", "b")])), reason: "not_array" },
        Bad {
            name: "integer tag",
            bytes: mp(&rmpv::Value::Array(vec![
                rmpv::Value::from(7),
                rmpv::Value::from(1),
                rec(&[]),
            ])),
            reason: "bad_tag",
        },
        Bad {
            name: "non-map record",
            bytes: mp(&rmpv::Value::Array(vec![s("t"), rmpv::Value::from(1), s("just a string")])),
            reason: "non_map_record",
        },
        Bad {
            name: "oversize frame",
            // A bin32 header announcing 2 MiB: rejected from the header, before the bytes.
            bytes: vec![0x93, 0xa1, b't', 0xc6, 0x00, 0x20, 0x00, 0x00],
            reason: "frame_too_large",
        },
        Bad {
            name: "gzip bomb",
            bytes: compressed("t", gzip(&bomb)),
            reason: "decompressed_too_large",
        },
        Bad {
            name: "bad gzip stream",
            bytes: compressed("t", b"\x1f\x8b\x08\x00garbage that is not deflate".to_vec()),
            reason: "bad_compression",
        },
    ]
}

/// Each kind of bad input: the connection is closed, the reason counted, events acked
/// before it on the same connection are kept, and another client keeps working.
#[test]
fn bad_input_closes_only_that_connection() {
    let b = start(FILE_SINK);
    let tcp = format!("tcp://{}", b.tcp_addr());
    let mut expected = 0;
    for (i, case) in bad_cases().into_iter().enumerate() {
        let mut bad = Client::connect(&tcp);
        let chunk = format!("before-{i}");
        bad.send(
            &message("bad.before", 1, rec(&[("n", &i.to_string())]), Some(&chunk)),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(bad.read_exact_n(ack_bytes(&chunk).len()), ack_bytes(&chunk), "{}", case.name);
        expected += 1;
        let _ = bad.send(&case.bytes, usize::MAX);
        assert!(bad.closed_by_server(), "{}: connection must be closed", case.name);
        let metric = format!("berth_input_errors_total{{reason=\"{}\"}}", case.reason);
        wait_for(WAIT, &metric, || (b.metric(&metric) >= 1.0).then_some(()));

        let mut good = Client::connect(&tcp);
        let chunk = format!("after-{i}");
        good.send(
            &message("good.after", 2, rec(&[("n", &i.to_string())]), Some(&chunk)),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(
            good.read_exact_n(ack_bytes(&chunk).len()),
            ack_bytes(&chunk),
            "{}: good client",
            case.name
        );
        expected += 1;
    }
    wait_for(WAIT, "all good events", || (count(&delivered(&b)) == expected).then_some(()));
    let warned = b.stderr_text();
    assert!(warned.contains("closing connection"), "a warning names the problem:\n{warned}");
}

/// A request cut off by the client is not acked and is counted; nothing half-parsed leaks.
#[test]
fn truncated_request_is_dropped_and_counted() {
    let b = start(FILE_SINK);
    let mut c = Client::connect(&b.listeners[0]);
    let full = message("t.trunc", 1, rec(&[("log", "hello")]), Some("c1"));
    c.send(&full[..full.len() - 3], usize::MAX).unwrap();
    c.shutdown_write();
    assert!(c.closed_by_server());
    wait_for(WAIT, "truncated counter", || {
        (b.metric("berth_input_errors_total{reason=\"truncated\"}") == 1.0).then_some(())
    });
    assert_eq!(count(&delivered(&b)), 0);
}

#[test]
fn admin_endpoint_health_metrics_status() {
    let b = start(FILE_SINK);
    assert!(b.admin.as_deref().unwrap().starts_with("127.0.0.1:"));
    let (code, body) = b.http_get("/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let mut c = Client::connect(&b.listeners[0]);
    c.send(&message("a.b", 1, rec(&[("log", "x")]), Some("k")), usize::MAX).unwrap();
    c.read_exact_n(ack_bytes("k").len());
    wait_for(WAIT, "delivery", || {
        (b.metric("berth_output_records_total{sink=\"files\"}") == 1.0).then_some(())
    });
    let (code, body) = b.http_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "berth_input_records_total 1",
        "berth_input_bytes_total",
        "berth_input_connections 1",
        "berth_output_errors_total{sink=\"files\"} 0",
        "berth_buffer_dropped_records_total{reason=\"full\"} 0",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    let (code, body) = b.http_get("/v1/status");
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["ready"], true);
    assert_eq!(st["input"]["records"], 1);
    assert_eq!(st["sinks"][0]["name"], "files");
    assert_eq!(st["sinks"][0]["delivered_records"], 1);
    assert_eq!(st["listeners"].as_array().unwrap().len(), 2);
}

/// SIGTERM: every request the client sent before it is read, acked and delivered; exit 0;
/// the Unix socket file is removed.
#[test]
fn sigterm_drains_and_exits_zero() {
    let mut b = start(FILE_SINK);
    let sock = b.unix_path();
    let mut c = Client::connect(&b.listeners[0]);
    let n = 500;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend(message("drain.t", 1, rec(&[("i", &i.to_string())]), None));
    }
    c.send(&all, usize::MAX).unwrap();
    // Ack the last one so we know the server has read everything before the signal.
    c.send(&message("drain.t", 1, rec(&[("i", "last")]), Some("end")), usize::MAX).unwrap();
    c.read_exact_n(ack_bytes("end").len());
    let status = b.stop();
    assert!(status.success(), "exit status {status}:\n{}", b.stderr_text());
    assert_eq!(delivered(&b)["drain.t"].len(), n + 1);
    assert!(!sock.exists(), "unix socket removed on exit");
}

#[test]
fn stale_unix_socket_is_replaced_and_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("forward.sock");
    // A stale socket file: bound, then its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let cfg = FILE_SINK.replace("\"tcp://127.0.0.1:0\", ", "");
    let b = start_in(dir, &cfg, &[]);
    let mut c = Client::connect(&b.listeners[0]);
    c.send(&message("u.t", 1, rec(&[("a", "b")]), Some("x")), usize::MAX).unwrap();
    assert_eq!(c.read_exact_n(ack_bytes("x").len()), ack_bytes("x"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b.unix_path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660, "default socket mode");
    // Bound in a private directory beside it and renamed into place (never reachable with a
    // wider mode): nothing of that is left.
    let left: Vec<_> = std::fs::read_dir(b.unix_path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".bind-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A second berth on the same path must refuse, naming the path.
    let cfg2 = cfg.replace("{dir}/forward.sock", &b.unix_path().display().to_string());
    let d2 = tempfile::tempdir().unwrap();
    let cfg2 = cfg2.replace("{dir}", &d2.path().display().to_string());
    std::fs::write(d2.path().join("b.toml"), cfg2).unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["run", "--config"])
        .arg(d2.path().join("b.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is listening"), "{err}");
}

#[test]
fn bind_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = FILE_SINK
        .replace("tcp://127.0.0.1:0", &format!("tcp://{addr}"))
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("b.toml"), cfg).unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("b.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on tcp://{addr}")), "{err}");
}

/// max_connections as documented: a connection beyond it waits (in the accept queue) until
/// one closes, rather than being accepted and closed; idle connections are closed.
#[test]
fn max_connections_makes_the_extra_connection_wait_and_idle_ones_are_closed() {
    let cfg = FILE_SINK.replace(
        "max_message_size = \"1MiB\"",
        "max_message_size = \"1MiB\"\nmax_connections = 2\nidle_timeout = \"1s\"",
    );
    let b = start(&cfg);
    let tcp = format!("tcp://{}", b.tcp_addr());
    let mut c1 = Client::connect(&tcp);
    let mut c2 = Client::connect(&tcp);
    // Both are served (an acked request each proves the slot is taken).
    for (c, k) in [(&mut c1, "a"), (&mut c2, "b")] {
        c.send(&message("mc.t", 1, rec(&[("k", k)]), Some(k)), usize::MAX).unwrap();
        assert_eq!(c.read_exact_n(ack_bytes(k).len()), ack_bytes(k));
    }
    // A third one is not closed: it waits, its request unread, until a slot frees.
    let mut c3 = Client::connect(&tcp);
    c3.send(&message("mc.t", 1, rec(&[("k", "c")]), Some("c")), usize::MAX).unwrap();
    wait_for(WAIT, "connection_waits counter", || {
        (b.metric(&format!("berth_input_connection_waits_total{{listener=\"{tcp}\"}}")) >= 1.0)
            .then_some(())
    });
    // idle_timeout: the quiet connections are closed by berth, freeing their slots...
    assert!(c1.closed_by_server() && c2.closed_by_server(), "idle connections closed");
    // ...and the waiting one is served: nothing it sent was lost.
    assert_eq!(c3.read_exact_n(ack_bytes("c").len()), ack_bytes("c"));
    assert_eq!(b.metric("berth_input_errors_total{reason=\"too_many_connections\"}"), 0.0);
    wait_for(WAIT, "the three events", || {
        (delivered(&b).get("mc.t").map_or(0, Vec::len) == 3).then_some(())
    });
}

#[test]
fn unix_socket_path_problems_fail_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let sock = blocker.join("forward.sock");
    let cfg = FILE_SINK
        .replace("unix://{dir}/forward.sock", &format!("unix://{}", sock.display()))
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("b.toml"), cfg).unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("b.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on unix://{}", sock.display())), "{err}");
}
