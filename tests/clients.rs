//! Real clients against `berth run`: `berth cat` in every mode, with and without acks and
//! the shared-key handshake, and Python's fluent-logger.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn config(shared_key: &str) -> String {
    format!(
        r#"
[input.forward]
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/forward.sock"]
shared_key = "{shared_key}"
self_hostname = "berth-test"

[admin]
listen = "127.0.0.1:0"

[buffer]
path = "{{dir}}/buffer"

[[sink]]
name = "files"
type = "file"
match = "**"
path = "{{dir}}/out/{{tag}}.ndjson"
"#
    )
}

fn cat(address: &str, args: &[&str], tag: &str, input: &str) -> std::process::Output {
    let mut child = Command::new(berth_bin())
        .arg("cat")
        .args(["--address", address])
        .args(args)
        .arg(tag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `berth cat` may exit before reading it all (a refused handshake): a broken pipe here
    // is its answer, which the exit status and stderr tell.
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing berth cat's stdin: {e}");
    }
    child.wait_with_output().unwrap()
}

fn lines(n: usize, label: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"i\":{i},\"label\":\"{label}\",\"nested\":{{\"ok\":true}}}}\n"))
        .collect()
}

/// Every mode × ack × listener kind, with the handshake on: all events arrive, in order.
#[test]
fn berth_cat_every_mode_with_handshake_and_acks() {
    let b = start(&config("s3cret"));
    let mut tags = Vec::new();
    for listener in b.listeners.clone() {
        let kind = &listener[..3];
        for mode in ["message", "forward", "packed", "compressed"] {
            for ack in [false, true] {
                let tag = format!("cat.{kind}.{mode}.{}", if ack { "ack" } else { "noack" });
                let mut args = vec!["--mode", mode, "--shared-key", "s3cret", "--batch", "7"];
                if ack {
                    args.push("--ack");
                }
                let out = cat(&listener, &args, &tag, &lines(25, &tag));
                assert!(out.status.success(), "{tag}: {}", String::from_utf8_lossy(&out.stderr));
                tags.push(tag);
            }
        }
    }
    for tag in tags {
        let path = b.path().join(format!("out/{tag}.ndjson"));
        let got = wait_for(WAIT, &tag, || {
            let v = read_ndjson(&path);
            (v.len() >= 25).then_some(v)
        });
        assert_eq!(got.len(), 25, "{tag}");
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v["record"]["i"], i, "{tag} order");
            assert_eq!(v["record"]["nested"]["ok"], true);
        }
    }
}

#[test]
fn berth_cat_wrong_key_is_refused_and_counted() {
    let b = start(&config("s3cret"));
    let out = cat(&b.listeners[0], &["--shared-key", "wrong", "--ack"], "cat.bad", &lines(3, "x"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("shared key"), "the server's reason is shown: {err}");
    wait_for(WAIT, "auth_failed counter", || {
        (b.metric("berth_input_errors_total{reason=\"auth_failed\"}") >= 1.0).then_some(())
    });
    // No key at all: the client cannot send before the handshake; berth sends HELO and the
    // PING never comes. The right key still works afterwards.
    let out =
        cat(&b.listeners[0], &["--shared-key", "s3cret", "--ack"], "cat.good", &lines(3, "y"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!b.path().join("out/cat.bad.ndjson").exists());
}

/// `[[input.forward.user]]`: the handshake also checks a username and password.
#[test]
fn handshake_with_users() {
    let cfg =
        config("k3y") + "\n[[input.forward.user]]\nusername = \"docker\"\npassword = \"pw\"\n";
    let b = start(&cfg);
    let ok = cat(
        &b.listeners[0],
        &["--shared-key", "k3y", "--username", "docker", "--password", "pw", "--ack"],
        "cat.user",
        &lines(2, "u"),
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = cat(
        &b.listeners[0],
        &["--shared-key", "k3y", "--username", "docker", "--password", "nope", "--ack"],
        "cat.user",
        &lines(2, "u"),
    );
    assert!(!bad.status.success());
    wait_for(WAIT, "auth_failed", || {
        (b.metric("berth_input_errors_total{reason=\"auth_failed\"}") >= 1.0).then_some(())
    });
    let got = wait_for(WAIT, "2 events", || {
        let v = read_ndjson(&b.path().join("out/cat.user.ndjson"));
        (v.len() >= 2).then_some(v)
    });
    assert_eq!(got.len(), 2, "only the authenticated client's events");
}

#[test]
fn berth_cat_without_handshake_and_time_key() {
    let b = start(&config(""));
    let input = "{\"ts\": 1763769600.5, \"msg\": \"a\"}\n\n{\"ts\": \"2025-11-22T00:00:01.25Z\", \"msg\": \"b\"}\n";
    let out = cat(
        &b.listeners[0],
        &["--time-key", "ts", "--ack", "--mode", "message"],
        "cat.time",
        input,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = b.path().join("out/cat.time.ndjson");
    let got = wait_for(WAIT, "2 events", || {
        let v = read_ndjson(&path);
        (v.len() == 2).then_some(v)
    });
    assert_eq!(parse_rfc3339(got[0]["time"].as_str().unwrap()), (1763769600, 500_000_000));
    assert_eq!(parse_rfc3339(got[1]["time"].as_str().unwrap()), (1763769601, 250_000_000));
}

#[test]
fn berth_cat_reports_unacked_chunk_when_nothing_listens() {
    // A listener that accepts and reads but never acks.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    });
    let out = cat(&addr, &["--ack", "--timeout", "500ms"], "cat.noack", &lines(2, "z"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk"), "names the chunk: {err}");
}

#[test]
fn bad_json_line_is_named() {
    let b = start(&config(""));
    let out = cat(&b.listeners[0], &[], "cat.badjson", "{\"a\":1}\nnot json\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
}

/// Python's fluent-logger 0.11 (Message mode; EventTime with nanosecond_precision).
#[test]
fn python_fluent_logger() {
    let py = test_python();
    let b = start(&config(""));
    let addr = b.tcp_addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let sock = b.unix_path();
    let script = format!(
        r#"
from fluent import sender
for ns in (False, True):
    s = sender.FluentSender("py", host="{host}", port={port}, nanosecond_precision=ns)
    for i in range(50):
        assert s.emit("tcp", {{"i": i, "ns": ns, "msg": "héllo", "f": 1.5, "n": None, "l": [1, "two"]}}), s.last_error
    s.close()
u = sender.FluentSender("py", host="unix://{sock}")
for i in range(10):
    assert u.emit("unix", {{"i": i}}), u.last_error
u.close()
"#,
        sock = sock.display()
    );
    let out = Command::new(py).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tcp = wait_for(WAIT, "100 events", || {
        let v = read_ndjson(&b.path().join("out/py.tcp.ndjson"));
        (v.len() >= 100).then_some(v)
    });
    assert_eq!(tcp.len(), 100);
    // Two connections: each one's events in order (berth orders within a connection only).
    for ns in [false, true] {
        let conn: Vec<_> = tcp.iter().filter(|v| v["record"]["ns"] == ns).collect();
        assert_eq!(conn.len(), 50);
        for (k, v) in conn.iter().enumerate() {
            assert_eq!(v["record"]["i"], k);
            assert_eq!(v["record"]["msg"], "héllo");
            assert_eq!(v["record"]["f"], 1.5);
            assert_eq!(v["record"]["l"][1], "two");
            assert!(v["record"]["n"].is_null());
        }
        // nanosecond_precision=True sends EventTime: the sub-second part survives.
        let subsec =
            conn.iter().filter(|v| parse_rfc3339(v["time"].as_str().unwrap()).1 != 0).count();
        assert_eq!(subsec > 0, ns, "EventTime carries nanoseconds, integer time does not");
    }
    let unix = wait_for(WAIT, "10 unix events", || {
        let v = read_ndjson(&b.path().join("out/py.unix.ndjson"));
        (v.len() >= 10).then_some(v)
    });
    assert_eq!(unix.len(), 10);
}
