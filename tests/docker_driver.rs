//! Docker's real `fluentd` log driver → `berth run`, end to end on this machine's Docker
//! engine.
//!
//! No registry is reachable, so the containers run a `FROM scratch` image holding only the
//! host's static busybox (`scripts/test-deps` installs it). The tests drive the `docker` CLI;
//! every container has a unique name and is removed by a drop guard, also when a test fails.
//!
//! The engine is part of the suite: when it is unreachable these tests fail with the reason,
//! unless `BERTH_TEST_NO_DOCKER=1` is set, in which case each prints why it is skipped.
//!
//! `BERTH_UPDATE_FIXTURES=1` makes `driver_bytes_are_captured` (re)write the
//! `tests/fixtures/forward/docker-*.{bin,json}` captures; without it the capture is only
//! checked, because every run has a new container id and new times.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::docker::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Labels the ECS agent puts on every task container.
const ECS_LABELS: &[&str] = &[
    "com.amazonaws.ecs.cluster=c1",
    "com.amazonaws.ecs.container-name=app",
    "com.amazonaws.ecs.task-arn=arn:aws:ecs:eu-west-1:123456789012:task/c1/0123456789abcdef0123456789abcdef",
    "com.amazonaws.ecs.task-definition-family=fam",
    "com.amazonaws.ecs.task-definition-version=3",
];

/// berth for a Docker test: its dir on tmpfs (see `start_tmpfs`), and a long first-sight
/// lookup wait — under the suite's load dockerd has taken over the default 2 s to answer
/// (before berth used the container list, an inspect stuck behind a container's lock), and
/// a test's first lines then went on without their fields.
fn start_docker(config: &str) -> Berth {
    start_tmpfs(config, &[("BERTH_ENRICH__DOCKER__INSPECT_WAIT", "10s")])
}

// ---------------------------------------------------------------------------------------
// The engine, the image and containers.

/// A container removed (`docker rm -f`) on drop.
struct Container {
    name: String,
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

struct Run<'a> {
    test: &'a str,
    /// `--log-opt` values besides the driver's address and tag.
    log_opts: Vec<String>,
    /// Extra `docker run` arguments (labels, volumes).
    args: Vec<String>,
    script: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// `docker run -d` with the fluentd driver pointed at `address` (`tcp://…`, `unix://…`),
/// tag `docker.{{.Name}}`.
fn run(address: &str, r: Run) -> Container {
    let name =
        format!("berth-{}-{}-{}", r.test, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(["--log-driver".into(), "fluentd".into()]);
    args.extend(["--log-opt".into(), format!("fluentd-address={address}")]);
    args.extend(["--log-opt".into(), "tag=docker.{{.Name}}".into()]);
    for o in &r.log_opts {
        args.extend(["--log-opt".into(), o.clone()]);
    }
    args.extend(r.args.iter().cloned());
    args.extend([image().to_string(), "sh".into(), "-c".into(), r.script.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&argv);
    // Registered before checking, so a container created but not started is removed too.
    let c = Container { name, id: String::from_utf8_lossy(&out.stdout).trim().to_string() };
    assert!(out.status.success(), "docker run failed: {}", String::from_utf8_lossy(&out.stderr));
    c
}

impl Container {
    /// Wait (bounded) for the container to exit; its exit code.
    fn wait(&self) -> i64 {
        let mut child: Child = Command::new("docker")
            .args(["wait", &self.name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker wait");
        let status =
            wait_for(Duration::from_secs(60), &format!("container {} to exit", self.name), || {
                child.try_wait().ok().flatten()
            });
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read docker wait");
        assert!(status.success(), "docker wait {} failed", self.name);
        out.trim().parse().expect("exit code from docker wait")
    }

    fn tag(&self) -> String {
        format!("docker.{}", self.name)
    }
}

// ---------------------------------------------------------------------------------------
// Workloads and what must arrive.

/// `out 1..=n` on stdout and `err 1..=m` on stderr, interleaved.
fn numbered(n: usize, m: usize) -> String {
    format!(
        "i=1; while [ $i -le {max} ]; do \
           if [ $i -le {n} ]; then echo \"out $i\"; fi; \
           if [ $i -le {m} ]; then echo \"err $i\" >&2; fi; \
           i=$((i+1)); done",
        max = n.max(m)
    )
}

fn long_text(len: usize) -> String {
    "0123456789".chars().cycle().take(len).collect()
}

/// The records the file sink wrote for `tag`, in order.
fn delivered(dir: &Path, tag: &str) -> Vec<Value> {
    read_ndjson(&dir.join("out").join(format!("{tag}.ndjson")))
}

fn wait_delivered(dir: &Path, tag: &str, n: usize) -> Vec<Value> {
    wait_for(WAIT, &format!("{n} events for {tag}"), || {
        let got = delivered(dir, tag);
        (got.len() >= n).then_some(got)
    })
}

/// Every line arrived once, in order per stream, with Docker's fields.
fn check_numbered(c: &Container, got: &[Value], n: usize, m: usize) {
    assert_eq!(got.len(), n + m, "no extra events");
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in got {
        let r = &e["record"];
        assert_eq!(r["container_id"], c.id.as_str(), "{e}");
        // Docker's driver writes "/name"; enrichment replaces it with the current name.
        assert_eq!(r["container_name"], c.name.as_str(), "{e}");
        assert_eq!(r["image"], IMAGE, "{e}");
        let source = r["source"].as_str().unwrap_or_else(|| panic!("no source: {e}")).to_string();
        per.entry(source)
            .or_default()
            .push(r["log"].as_str().unwrap_or_else(|| panic!("no log: {e}")).to_string());
    }
    let want = |p: &str, k: usize| (1..=k).map(|i| format!("{p} {i}")).collect::<Vec<_>>();
    assert_eq!(per.get("stdout").cloned().unwrap_or_default(), want("out", n));
    assert_eq!(per.get("stderr").cloned().unwrap_or_default(), want("err", m));
}

fn nanos(e: &Value) -> u32 {
    parse_rfc3339(e["time"].as_str().expect("time")).1
}

struct Case {
    test: &'static str,
    /// Lines on stdout and on stderr.
    lines: (usize, usize),
    unix: bool,
    log_opts: &'static [&'static str],
    labels: bool,
}

/// Start berth, run `numbered(n, m)` through the driver, check what arrived; the events.
fn numbered_case(case: Case) -> Option<Vec<Value>> {
    if !docker_ready(case.test) {
        return None;
    }
    let (n, m) = case.lines;
    let b = start_docker(FILE_SINK);
    let address = if case.unix {
        format!("unix://{}", b.unix_path().display())
    } else {
        format!("tcp://{}", b.tcp_addr())
    };
    let mut args = Vec::new();
    if case.labels {
        for l in ECS_LABELS {
            args.extend(["--label".to_string(), l.to_string()]);
        }
    }
    let c = run(
        &address,
        Run {
            test: case.test,
            log_opts: case.log_opts.iter().map(|s| s.to_string()).collect(),
            args,
            script: numbered(n, m),
        },
    );
    assert_eq!(c.wait(), 0, "container exit code");
    // A bound, not a pace: with request-ack every line waits for its own fsync, which a loaded
    // 2-core machine can stretch past the usual 20 s for 300 lines.
    let got =
        wait_for(Duration::from_secs(90), &format!("{} events for {}", n + m, c.tag()), || {
            let got = delivered(b.path(), &c.tag());
            (got.len() >= n + m).then_some(got)
        });
    check_numbered(&c, &got, n, m);
    if case.labels {
        for e in &got {
            assert_eq!(e["record"]["ecs_cluster"], "c1", "{e}");
            assert_eq!(e["record"]["ecs_container_name"], "app", "{e}");
            assert_eq!(e["record"]["ecs_task_id"], "0123456789abcdef0123456789abcdef", "{e}");
            assert_eq!(e["record"]["ecs_task_definition_family"], "fam", "{e}");
            assert_eq!(e["record"]["ecs_task_definition_revision"], "3", "{e}");
        }
    } else {
        assert!(got.iter().all(|e| e["record"].get("ecs_cluster").is_none()));
    }
    assert_eq!(b.metric("berth_input_errors_total{reason=\"malformed\"}"), 0.0);
    Some(got)
}

// ---------------------------------------------------------------------------------------
// Delivery through berth.

#[test]
fn tcp_every_line_in_order_per_stream() {
    let Some(got) = numbered_case(Case {
        test: "tcp",
        lines: (200, 50),
        unix: false,
        log_opts: &[],
        labels: false,
    }) else {
        return;
    };
    assert!(got.iter().all(|e| nanos(e) == 0), "integer seconds without sub-second precision");
}

#[test]
fn unix_socket_every_line_in_order_per_stream() {
    numbered_case(Case {
        test: "unix",
        lines: (200, 50),
        unix: true,
        log_opts: &[],
        labels: false,
    });
}

#[test]
fn async_mode_delivers_every_line() {
    numbered_case(Case {
        test: "async",
        lines: (200, 50),
        unix: true,
        log_opts: &["fluentd-async=true"],
        labels: false,
    });
}

#[test]
fn sub_second_precision_times_have_nanoseconds() {
    let Some(got) = numbered_case(Case {
        test: "subsec",
        lines: (200, 50),
        unix: false,
        log_opts: &["fluentd-sub-second-precision=true"],
        labels: false,
    }) else {
        return;
    };
    // 250 lines all on a whole second would be a one-in-10^2000 accident.
    assert!(got.iter().any(|e| nanos(e) != 0), "sub-second times arrive with nanoseconds");
}

#[test]
fn request_ack_every_line_acked_and_delivered() {
    // With fluentd-request-ack the driver waits for berth's ack of each line before the
    // next one; a missing or wrong ack would make it resend (duplicates) or give up.
    //
    // stdout only: the driver's logger (fluent-logger-golang) writes a request and reads
    // its ack under separate locks, so with stdout and stderr logging at once one stream's
    // goroutine can read the other's ack, call it a mismatch, close the connection and
    // resend, again and again (seen against the test's recorder, which acks exactly like
    // Fluentd). That is the driver's race, not the server's, and no server can avoid it.
    numbered_case(Case {
        test: "ack",
        lines: (300, 0),
        unix: true,
        log_opts: &["fluentd-request-ack=true"],
        labels: false,
    });
}

#[test]
fn ecs_labelled_container_is_delivered() {
    numbered_case(Case { test: "ecs", lines: (200, 50), unix: true, log_opts: &[], labels: true });
}

/// `text` as one line of exactly that many bytes on stdout (built by doubling, so a
/// 1 MiB line costs the shell twenty steps).
fn print_line(text_len: usize, prefix: &str) -> String {
    format!(
        "s=0123456789; while [ ${{#s}} -lt {text_len} ]; do s=$s$s; done; \
         echo \"{prefix}${{s:0:{text_len}}}\""
    )
}

/// Docker cuts a line longer than 16 KiB into partial messages (`partial_id`,
/// `partial_ordinal`, `partial_last`); the sink gets each line whole, once, with the first
/// part's time and none of the partial fields.
#[test]
fn long_lines_arrive_whole() {
    if !docker_ready("long_lines") {
        return;
    }
    let b = start_docker(FILE_SINK);
    let sizes = [100 * 1024, 1024 * 1024];
    let script = format!(
        "{}; echo short; {}; echo done",
        print_line(sizes[0], ""),
        print_line(sizes[1], "")
    );
    let c = run(
        &format!("tcp://{}", b.tcp_addr()),
        Run { test: "long", log_opts: vec![], args: vec![], script },
    );
    assert_eq!(c.wait(), 0);
    let got = wait_for(WAIT, "the line after the long ones", || {
        let got = delivered(b.path(), &c.tag());
        got.iter().any(|e| e["record"]["log"] == "done").then_some(got)
    });
    let logs: Vec<&str> = got.iter().map(|e| e["record"]["log"].as_str().expect("log")).collect();
    assert_eq!(
        logs.len(),
        4,
        "one record per line: {:?}",
        logs.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert!(logs[0] == long_text(sizes[0]), "the 100 KiB line, whole");
    assert_eq!(logs[1], "short");
    assert!(logs[2] == long_text(sizes[1]), "the 1 MiB line, whole ({} bytes)", logs[2].len());
    assert_eq!(logs[3], "done");
    for e in &got {
        let r = &e["record"];
        for k in [
            "partial_message",
            "partial_id",
            "partial_ordinal",
            "partial_last",
            "partial_incomplete",
        ] {
            assert!(r.get(k).is_none(), "{k} in a whole line");
        }
        assert_eq!(r["container_id"], c.id.as_str());
        assert_eq!(r["source"], "stdout");
    }
    assert_eq!(
        b.metric(
            "berth_reassembled_records_total{sink=\"files\",kind=\"partial\",outcome=\"complete\"}"
        ),
        2.0
    );
}

/// Two containers write long lines at the same time over one berth: every line arrives
/// whole and nothing of one container ends up in the other's lines.
#[test]
fn interleaved_long_lines_of_two_containers_are_not_mixed() {
    if !docker_ready("interleaved") {
        return;
    }
    let b = start_docker(FILE_SINK);
    let addr = format!("unix://{}", b.unix_path().display());
    let lines = 6;
    let len = 50 * 1024;
    let script = |who: &str| {
        format!(
            "i=1; while [ $i -le {lines} ]; do {}; i=$((i+1)); done",
            print_line(len, &format!("{who}$i:"))
        )
    };
    let a = run(&addr, Run { test: "mix-a", log_opts: vec![], args: vec![], script: script("A") });
    let z = run(&addr, Run { test: "mix-z", log_opts: vec![], args: vec![], script: script("Z") });
    assert_eq!(a.wait(), 0);
    assert_eq!(z.wait(), 0);
    for (c, who) in [(&a, "A"), (&z, "Z")] {
        let got = wait_delivered(b.path(), &c.tag(), lines);
        assert_eq!(got.len(), lines, "{who}: one record per line");
        for (i, e) in got.iter().enumerate() {
            let want = format!("{who}{}:{}", i + 1, long_text(len));
            assert!(
                e["record"]["log"].as_str() == Some(want.as_str()),
                "{who} line {} is whole and its own",
                i + 1
            );
        }
    }
}

/// A container killed while it is writing a long line: what it wrote arrives in one record,
/// marked incomplete once `[enrich.partial] timeout` (5 s) has passed, because Docker sends
/// the rest of its buffer when the stream ends but never marks it last.
#[test]
fn container_killed_mid_line_loses_nothing_it_wrote() {
    if !docker_ready("killed") {
        return;
    }
    let b = start_docker(FILE_SINK);
    let len = 40 * 1024;
    // No newline after the text: the line is open when the container is killed.
    let script = format!(
        "s=0123456789; while [ ${{#s}} -lt {len} ]; do s=$s$s; done; printf '%s' \"${{s:0:{len}}}\"; sleep 600"
    );
    let c = run(
        &format!("tcp://{}", b.tcp_addr()),
        Run { test: "killed", log_opts: vec![], args: vec![], script },
    );
    // Docker has sent the first two 16 KiB parts once they are in berth's buffer.
    wait_for(WAIT, "the first parts in the buffer", || {
        (b.metric("berth_input_records_total") >= 2.0).then_some(())
    });
    docker_ok(&["kill", &c.name]);
    let got = wait_delivered(b.path(), &c.tag(), 1);
    assert_eq!(got.len(), 1, "one record");
    let r = &got[0]["record"];
    assert!(r["log"].as_str() == Some(long_text(len).as_str()), "every byte written, in order");
    // Docker never marks the last piece of a line cut short: the join times out.
    assert_eq!(r["partial_incomplete"], true, "marked incomplete");
    assert!(r["partial_id"].is_string(), "with its partial_id");
    assert_eq!(
        b.metric(
            "berth_reassembled_records_total{sink=\"files\",kind=\"partial\",outcome=\"timeout\"}"
        ),
        1.0
    );
}

/// berth stops (SIGTERM) and starts again on the same socket and buffer while a container
/// logs with `fluentd-async=true`: the driver reconnects and what is logged afterwards
/// arrives.
#[test]
fn berth_restart_while_container_logs_async() {
    if !docker_ready("restart") {
        return;
    }
    // berth's own temp dirs come and go; socket, buffer and output live here.
    let shared = tempfile::tempdir().expect("tempdir");
    let ctl = tempfile::tempdir().expect("tempdir");
    let cfg = FILE_SINK.replace("{dir}", &shared.path().display().to_string());
    let mut b1 = start_docker(&cfg);
    let sock = b1.unix_path();
    // The container ticks until the test creates /ctl/go (after berth is back), logs
    // `after 1..=20`, and stays up until /ctl/stop: in async mode Docker drops what the
    // driver still holds when the container exits (it sets fluent-logger-golang's
    // ForceStopAsyncSend), so exiting before delivery would lose lines for a reason that
    // is not berth's. The 50 ms pace is the workload, not synchronisation.
    let script = "i=0; while [ ! -e /ctl/go ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done; \
                  j=1; while [ $j -le 20 ]; do echo \"after $j\"; j=$((j+1)); done; \
                  while [ ! -e /ctl/stop ]; do sleep 0.05; done";
    let c = run(
        &format!("unix://{}", sock.display()),
        Run {
            test: "restart",
            log_opts: vec!["fluentd-async=true".into(), "fluentd-retry-wait=100ms".into()],
            args: vec!["-v".into(), format!("{}:/ctl", ctl.path().display())],
            script: script.into(),
        },
    );
    let tag = c.tag();
    wait_delivered(shared.path(), &tag, 5);
    let stopping = std::time::Instant::now();
    let status = b1.stop();
    let stop_took = stopping.elapsed();
    assert!(status.success(), "berth exit status {status}:\n{}", b1.stderr_text());
    let before = delivered(shared.path(), &tag).len();
    drop(b1);

    let b2 = start_docker(&cfg);
    assert_eq!(b2.unix_path(), sock);
    let back = std::time::Instant::now();
    std::fs::write(ctl.path().join("go"), b"").expect("create /ctl/go");
    let got = wait_for(WAIT, "after 20", || {
        let got = delivered(shared.path(), &tag);
        got.iter().any(|e| e["record"]["log"] == "after 20").then_some(got)
    });
    let took = back.elapsed();
    std::fs::write(ctl.path().join("stop"), b"").expect("create /ctl/stop");
    assert_eq!(c.wait(), 0);
    let after: Vec<&str> = got
        .iter()
        .filter_map(|e| e["record"]["log"].as_str())
        .filter(|l| l.starts_with("after "))
        .collect();
    let want: Vec<String> = (1..=20).map(|j| format!("after {j}")).collect();
    assert_eq!(after, want, "every line logged after the restart, in order");
    // Ticks logged while berth was down are the driver's async buffer's business; count
    // them for the record rather than assert on them.
    let ticks: Vec<u64> = got
        .iter()
        .filter_map(|e| e["record"]["log"].as_str()?.strip_prefix("tick ")?.parse().ok())
        .collect();
    let max = ticks.iter().copied().max().unwrap_or(0);
    eprintln!(
        "restart: {before} events before the stop, {} ticks of {max} arrived in total, \
         `after 20` {took:?} after berth was back; the stop took {stop_took:?}",
        ticks.len()
    );
}

// ---------------------------------------------------------------------------------------
// Capturing the driver's exact bytes.

/// A Forward server that keeps every request byte for byte (whole frames, in arrival
/// order) and answers `chunk` options with `{"ack": chunk}`, as Fluentd does.
struct Recorder {
    addr: String,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = format!("tcp://{}", l.local_addr().expect("addr"));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let f2 = Arc::clone(&frames);
        // The accept thread outlives the test's interest; it ends with the test process.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let f3 = Arc::clone(&f2);
                std::thread::spawn(move || record_conn(s, &f3));
            }
        });
        Recorder { addr, frames }
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }
}

fn record_conn(mut s: TcpStream, frames: &Mutex<Vec<Vec<u8>>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        loop {
            let mut cur = &pending[..];
            // An error here means an incomplete frame (the driver's frames are valid).
            let Ok(v) = rmpv::decode::read_value(&mut cur) else {
                break;
            };
            let used = pending.len() - cur.len();
            let frame: Vec<u8> = pending.drain(..used).collect();
            frames.lock().unwrap().push(frame);
            if let Some(chunk) = chunk_of(&v) {
                if s.write_all(&ack_bytes(&chunk)).is_err() {
                    return;
                }
            }
        }
    }
}

fn chunk_of(req: &rmpv::Value) -> Option<String> {
    let arr = req.as_array()?;
    let opts = arr.last()?.as_map()?;
    opts.iter()
        .find(|(k, _)| k.as_str() == Some("chunk"))
        .and_then(|(_, v)| v.as_str().map(str::to_string))
}

fn to_json(v: &rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => i
            .as_i64()
            .map(|x| json!(x))
            .or_else(|| i.as_u64().map(|x| json!(x)))
            .unwrap_or(Value::Null),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.as_str().expect("utf-8 string")),
        M::Binary(b) => json!(String::from_utf8_lossy(b)),
        M::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        M::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().expect("string key").to_string(), to_json(v)))
                .collect(),
        ),
        M::Ext(t, d) => panic!("unexpected ext {t} {d:?}"),
    }
}

/// `[seconds, nanoseconds]` of an integer or EventTime (ext 0) time.
fn time_of(v: &rmpv::Value) -> (i64, u32) {
    match v {
        rmpv::Value::Integer(i) => (i.as_i64().expect("time"), 0),
        rmpv::Value::Ext(0, d) if d.len() == 8 => (
            i64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])),
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        ),
        other => panic!("unexpected time {other:?}"),
    }
}

/// What the driver sent, decoded with rmpv (independent of berth's decoder): the manifest
/// of the fixture README, and a description of each request's shape.
struct Capture {
    manifest: Value,
    /// Per request: the time's marker byte and the option map's keys (None: no map).
    shapes: Vec<(u8, Option<Vec<String>>)>,
}

fn describe(frames: &[Vec<u8>]) -> Capture {
    let mut events = Vec::new();
    let mut acks = Vec::new();
    let mut shapes = Vec::new();
    for f in frames {
        let v = rmpv::decode::read_value(&mut &f[..]).expect("frame decodes");
        let arr = v.as_array().expect("request is an array");
        assert!(
            arr.len() == 3 || arr.len() == 4,
            "Message mode [tag, time, record(, option)]: {v}"
        );
        assert!(
            arr[1].is_i64() || arr[1].is_u64() || matches!(arr[1], rmpv::Value::Ext(0, _)),
            "{v}"
        );
        let tag = arr[0].as_str().expect("tag");
        // The time's first byte as sent (re-encoding would normalise it): skip the array
        // header and the tag.
        assert_eq!(f[0], 0x94, "a fixarray of 4: {v}");
        let mut after_tag = &f[1..];
        rmpv::decode::read_value(&mut after_tag).expect("tag");
        let time_marker = after_tag[0];
        let (secs, ns) = time_of(&arr[1]);
        let record = to_json(&arr[2]);
        assert!(record.is_object(), "record is a map: {v}");
        let keys = arr
            .get(3)
            .and_then(|o| o.as_map())
            .map(|m| m.iter().filter_map(|(k, _)| k.as_str().map(str::to_string)).collect());
        shapes.push((time_marker, keys));
        events.push(json!({"tag": tag, "time": [secs, ns], "record": record}));
        if let Some(c) = chunk_of(&v) {
            acks.push(json!(c));
        }
    }
    Capture { manifest: json!({"events": events, "acks": acks}), shapes }
}

fn write_fixture(name: &str, frames: &[Vec<u8>], manifest: &Value) {
    let dir = package_file("tests/fixtures/forward");
    std::fs::write(dir.join(format!("{name}.bin")), frames.concat()).expect("write .bin");
    // One-space indent, like the Python-written manifests beside it.
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(manifest, &mut ser).expect("json");
    out.push(b'\n');
    std::fs::write(dir.join(format!("{name}.json")), out).expect("write .json");
}

/// Each driver mode against the recorder: the requests have the shape the fixture README
/// describes, and with `BERTH_UPDATE_FIXTURES=1` they become `docker-*.bin` fixtures.
#[test]
fn driver_bytes_are_captured() {
    if !docker_ready("capture") {
        return;
    }
    let update = std::env::var("BERTH_UPDATE_FIXTURES").as_deref() == Ok("1");
    let labelled: Vec<String> = ECS_LABELS
        .iter()
        .flat_map(|l| ["--label".to_string(), l.to_string()])
        .chain(["-e".into(), "APP_ENV=prod".into()])
        .collect();
    // (fixture name, --log-opt values, script, requests expected, docker run arguments)
    type CaptureCase = (&'static str, &'static [&'static str], String, usize, Vec<String>);
    let cases: [CaptureCase; 6] = [
        ("docker-plain", &[], numbered(3, 2), 5, vec![]),
        ("docker-subsecond", &["fluentd-sub-second-precision=true"], numbered(3, 2), 5, vec![]),
        // stdout only: see request_ack_every_line_acked_and_delivered.
        ("docker-request-ack", &["fluentd-request-ack=true"], numbered(4, 0), 4, vec![]),
        ("docker-partial", &[], format!("{}; echo done", print_line(40 * 1024, "")), 4, vec![]),
        // Async: the container stays up until its lines are sent (Docker drops what the
        // async driver still holds at exit).
        (
            "docker-async",
            &["fluentd-async=true"],
            format!("{}; sleep 1", numbered(3, 2)),
            5,
            vec![],
        ),
        // The driver's own `labels` / `env` options copy those values into every record.
        (
            "docker-labels-env",
            &[
                "labels=com.amazonaws.ecs.cluster,com.amazonaws.ecs.task-definition-family",
                "env=APP_ENV",
            ],
            numbered(2, 0),
            2,
            labelled,
        ),
    ];
    for (name, opts, script, n, args) in cases {
        let rec = Recorder::start();
        let c = run(
            &rec.addr,
            Run {
                test: "capture",
                log_opts: opts.iter().map(|s| s.to_string()).collect(),
                args,
                script,
            },
        );
        assert_eq!(c.wait(), 0);
        let frames = wait_for(WAIT, &format!("{name}: {n} requests"), || {
            let f = rec.frames();
            (f.len() >= n).then_some(f)
        });
        let cap = describe(&frames);
        assert_eq!(frames.len(), n, "{name}: one request per line (or part)");
        for (marker, keys) in &cap.shapes {
            eprintln!("{name}: time marker {marker:#04x}, option keys {keys:?}");
            if name == "docker-subsecond" {
                assert_eq!(*marker, 0xd7, "{name}: EventTime as fixext8");
            } else {
                assert!(*marker <= 0x7f || (0xcc..=0xd3).contains(marker), "{name}: integer time");
            }
            let want: &[&str] = if name == "docker-request-ack" { &["chunk"] } else { &[] };
            assert_eq!(
                keys.as_deref(),
                Some(&want.iter().map(|k| k.to_string()).collect::<Vec<_>>()[..]),
                "{name}: option map"
            );
        }
        let events = cap.manifest["events"].as_array().expect("events");
        for e in events {
            assert_eq!(e["tag"], c.tag().as_str());
            assert_eq!(e["record"]["container_name"], format!("/{}", c.name));
            if name == "docker-labels-env" {
                assert_eq!(e["record"]["com.amazonaws.ecs.cluster"], "c1", "{e}");
                assert_eq!(e["record"]["com.amazonaws.ecs.task-definition-family"], "fam", "{e}");
                assert_eq!(e["record"]["APP_ENV"], "prod", "{e}");
            }
        }
        eprintln!("{name}: first record {}", {
            let mut r = events[0]["record"].clone();
            if let Some(l) = r.get_mut("log") {
                let s = l.as_str().unwrap_or("").to_string();
                *l = json!(if s.len() > 40 {
                    format!("{}… ({} bytes)", &s[..40], s.len())
                } else {
                    s
                });
            }
            r
        });
        if update {
            write_fixture(name, &frames, &cap.manifest);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Enrichment from the engine: the metadata cache, its events and its failures.

/// ECS agent labels for a task `task` of `cluster` running container `container`.
fn ecs_labels(
    cluster: &str,
    container: &str,
    task: &str,
    family: &str,
    revision: u32,
) -> Vec<String> {
    [
        format!("com.amazonaws.ecs.cluster={cluster}"),
        format!("com.amazonaws.ecs.container-name={container}"),
        format!(
            "com.amazonaws.ecs.task-arn=arn:aws:ecs:eu-west-1:123456789012:task/{cluster}/{task}"
        ),
        format!("com.amazonaws.ecs.task-definition-family={family}"),
        format!("com.amazonaws.ecs.task-definition-version={revision}"),
    ]
    .into_iter()
    .flat_map(|l| ["--label".to_string(), l])
    .collect()
}

fn status(b: &Berth) -> Value {
    serde_json::from_str(&b.http_get("/v1/status").1).expect("status json")
}

/// Two containers of different tasks log at once: every line carries its own container's
/// task fields, and a copied label and env variable.
#[test]
fn every_line_carries_its_own_containers_ecs_fields() {
    if !docker_ready("ecs_fields") {
        return;
    }
    let cfg = format!(
        "{FILE_SINK}\n[enrich.docker]\nlabels = [\"team=owner\"]\nenv = [\"APP_VERSION\"]\n"
    );
    let b = start_docker(&cfg);
    let addr = format!("unix://{}", b.unix_path().display());
    let mut a_args = ecs_labels("prod", "web", "aaaa1111", "shop", 7);
    a_args.extend([
        "--label".into(),
        "team=payments".into(),
        "-e".into(),
        "APP_VERSION=1.2.3".into(),
    ]);
    let a = run(
        &addr,
        Run { test: "ecs-a", log_opts: vec![], args: a_args, script: numbered(100, 20) },
    );
    let w = run(
        &addr,
        Run {
            test: "ecs-b",
            log_opts: vec![],
            args: ecs_labels("batch", "worker", "bbbb2222", "jobs", 2),
            script: numbered(100, 20),
        },
    );
    assert_eq!(a.wait(), 0);
    assert_eq!(w.wait(), 0);
    for (c, cluster, name, task, family, rev) in [
        (&a, "prod", "web", "aaaa1111", "shop", "7"),
        (&w, "batch", "worker", "bbbb2222", "jobs", "2"),
    ] {
        let got = wait_delivered(b.path(), &c.tag(), 120);
        check_numbered(c, &got, 100, 20);
        for e in &got {
            let r = &e["record"];
            assert_eq!(r["ecs_cluster"], cluster, "{e}");
            assert_eq!(r["ecs_container_name"], name, "{e}");
            assert_eq!(
                r["ecs_task_arn"],
                format!("arn:aws:ecs:eu-west-1:123456789012:task/{cluster}/{task}"),
                "{e}"
            );
            assert_eq!(r["ecs_task_id"], task, "{e}");
            assert_eq!(r["ecs_task_definition_family"], family, "{e}");
            assert_eq!(r["ecs_task_definition_revision"], rev, "{e}");
            if cluster == "prod" {
                assert_eq!(r["owner"], "payments", "{e}");
                assert_eq!(r["APP_VERSION"], "1.2.3", "{e}");
            } else {
                assert!(r.get("owner").is_none() && r.get("APP_VERSION").is_none(), "{e}");
            }
        }
    }
    assert_eq!(b.metric("berth_enrich_records_total{result=\"enriched\"}"), 240.0);
    assert_eq!(b.metric("berth_enrich_records_total{result=\"no_metadata\"}"), 0.0);
    let st = status(&b);
    assert_eq!(st["enrich"]["docker"]["connected"], true, "{st}");
}

/// Copies each way between `a` and `b` on threads of their own until either side ends.
fn splice(a: std::os::unix::net::UnixStream, b: std::os::unix::net::UnixStream) {
    for (mut from, mut to) in
        [(a.try_clone().expect("clone"), b.try_clone().expect("clone")), (b, a)]
    {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// Holds the driver's connections on a Unix socket of its own, unread, until `open`; then
/// copies each both ways to berth's socket. Lets a test choose when berth hears a
/// container's lines.
struct Gate {
    path: PathBuf,
    to: Arc<Mutex<Option<PathBuf>>>,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Gate {
        let dir = tmpfs_dir();
        let path = dir.path().join("gate.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind gate");
        let to: Arc<Mutex<Option<PathBuf>>> = Arc::new(Mutex::new(None));
        let to2 = Arc::clone(&to);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let to = Arc::clone(&to2);
                std::thread::spawn(move || {
                    let target = loop {
                        if let Some(p) = to.lock().unwrap().clone() {
                            break p;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    };
                    let Ok(up) = std::os::unix::net::UnixStream::connect(&target) else { return };
                    splice(conn, up);
                });
            }
        });
        Gate { path, to, _dir: dir }
    }

    fn open(&self, to: PathBuf) {
        *self.to.lock().unwrap() = Some(to);
    }
}

/// A batch job's container prints and exits while berth is not reading yet (berth
/// restarting, a slow start): Docker keeps the container's lock while its logs wait to
/// drain, so `docker inspect` of it hangs until berth has read them. berth, started then,
/// must not wait on that: every line arrives with its task's fields.
#[test]
fn container_that_exited_before_berth_read_it_is_enriched() {
    if !docker_ready("exited") {
        return;
    }
    let gate = Gate::new();
    let ctl = tempfile::tempdir().expect("tempdir");
    let mut args = ecs_labels("c1", "job", "eeee5555", "batch", 4);
    args.extend(["-v".into(), format!("{}:/ctl", ctl.path().display())]);
    // More than the pipes hold: the driver is blocked on the gate when the job exits.
    let script = format!("{}; touch /ctl/done", numbered(3000, 0));
    let c = run(
        &format!("unix://{}", gate.path.display()),
        Run { test: "exited", log_opts: vec![], args, script },
    );
    wait_for(WAIT, "the job to finish writing", || ctl.path().join("done").exists().then_some(()));
    // Exit handling (which takes the container's lock) starts right after; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let b = start_docker(FILE_SINK);
    gate.open(b.unix_path());
    assert_eq!(c.wait(), 0);
    let got = wait_delivered(b.path(), &c.tag(), 3000);
    check_numbered(&c, &got, 3000, 0);
    for e in &got {
        assert_eq!(e["record"]["ecs_task_id"], "eeee5555", "{e}");
        assert_eq!(e["record"]["ecs_task_definition_family"], "batch", "{e}");
    }
    assert_eq!(b.metric("berth_enrich_records_total{result=\"no_metadata\"}"), 0.0);
}

/// `docker rename` while the container logs: once the rename event is in, every later line
/// has the new name (Docker's own `container_name` field keeps the old one for ever).
#[test]
fn renamed_container_later_lines_carry_the_new_name() {
    if !docker_ready("rename") {
        return;
    }
    let b = start_docker(FILE_SINK);
    let ctl = tempfile::tempdir().expect("tempdir");
    // Ticks until /ctl/stop; the 20 ms pace is the workload, not synchronisation.
    let script = "i=0; while [ ! -e /ctl/stop ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.02; done";
    let mut c = run(
        &format!("unix://{}", b.unix_path().display()),
        Run {
            test: "rename",
            log_opts: vec![],
            args: vec!["-v".into(), format!("{}:/ctl", ctl.path().display())],
            script: script.into(),
        },
    );
    let tag = c.tag();
    let old = c.name.clone();
    wait_delivered(b.path(), &tag, 5);
    let new = format!("{old}-renamed");
    docker_ok(&["rename", &old, &new]);
    c.name = new.clone();
    let got = wait_for(WAIT, "a line with the new name", || {
        let got = delivered(b.path(), &tag);
        got.iter().any(|e| e["record"]["container_name"] == new.as_str()).then_some(got)
    });
    // A few more lines after the switch, then stop.
    let n = got.len() + 10;
    wait_delivered(b.path(), &tag, n);
    std::fs::write(ctl.path().join("stop"), b"").expect("create /ctl/stop");
    assert_eq!(c.wait(), 0);
    let got = delivered(b.path(), &tag);
    let names: Vec<&str> =
        got.iter().map(|e| e["record"]["container_name"].as_str().unwrap_or("?")).collect();
    let first_new = names.iter().position(|n| *n == new).expect("new name");
    assert!(
        names[..first_new].iter().all(|n| *n == old),
        "before the rename: the old name, without the slash: {names:?}"
    );
    assert!(names[first_new..].iter().all(|n| *n == new), "after it, only the new name: {names:?}");
    assert!(got.iter().all(|e| e["record"]["image"] == IMAGE));
}

/// A removed container's late lines (the driver's async buffer, a slow connection) are
/// still enriched during the grace period; then the entry expires and is gone from the
/// cache.
#[test]
fn removed_container_is_enriched_during_the_grace_period_then_expires() {
    if !docker_ready("removed") {
        return;
    }
    // Long enough for the late line to get in on a loaded CI machine (3 s was not), short
    // enough to watch the expiry.
    let cfg = format!("{FILE_SINK}\n[enrich.docker]\nremoved_grace_period = \"10s\"\n");
    let b = start_docker(&cfg);
    let c = run(
        &format!("tcp://{}", b.tcp_addr()),
        Run {
            test: "removed",
            log_opts: vec![],
            args: ecs_labels("c1", "app", "cccc3333", "fam", 1),
            script: numbered(3, 0),
        },
    );
    assert_eq!(c.wait(), 0);
    let got = wait_delivered(b.path(), &c.tag(), 3);
    assert!(got.iter().all(|e| e["record"]["ecs_task_id"] == "cccc3333"), "{got:?}");
    docker_ok(&["rm", &c.name]);
    // Other tests' containers are removed too: only berth's own word about this one counts.
    wait_for(WAIT, "the destroy event", || {
        b.stderr_text()
            .lines()
            .any(|l| l.contains("container removed: its entry is kept") && l.contains(&c.id))
            .then_some(())
    });

    // A last line of the removed container, sent the way the driver does.
    let late = |log: &str| {
        let r = rec(&[
            ("container_id", &c.id),
            ("container_name", &format!("/{}", c.name)),
            ("source", "stdout"),
            ("log", log),
        ]);
        let mut cl = Client::connect(&format!("tcp://{}", b.tcp_addr()));
        cl.send(&message(&c.tag(), 1, r, Some("k")), usize::MAX).unwrap();
        assert_eq!(cl.read_exact_n(ack_bytes("k").len()), ack_bytes("k"));
    };
    late("late within grace");
    let got = wait_delivered(b.path(), &c.tag(), 4);
    assert_eq!(got[3]["record"]["log"], "late within grace");
    assert_eq!(got[3]["record"]["ecs_task_id"], "cccc3333", "still enriched: {}", got[3]);
    assert_eq!(got[3]["record"]["container_name"], c.name.as_str());

    // Then the entry expires. The cache's size is no measure here: the events stream also
    // caches the containers other tests start on the same engine meanwhile. So: late lines,
    // paced, until one arrives without metadata, and none enriched after that.
    let mut sent = 4;
    let r = wait_for(
        Duration::from_secs(60),
        "a late line without metadata (the entry expired)",
        || {
            sent += 1;
            late(&format!("late {sent}"));
            let got = wait_delivered(b.path(), &c.tag(), sent);
            let r = got[sent - 1]["record"].clone();
            if r.get("ecs_task_id").is_some() {
                std::thread::sleep(Duration::from_millis(500)); // the pace of the late lines
                return None;
            }
            Some(r)
        },
    );
    assert_eq!(r["container_name"], format!("/{}", c.name), "Docker's field as sent");
    let got = delivered(b.path(), &c.tag());
    let first_bare = got
        .iter()
        .position(|e| e["record"].get("ecs_task_id").is_none())
        .expect("one without metadata");
    assert_eq!(first_bare, got.len() - 1, "once expired, no line is enriched again");
    assert_eq!(b.metric("berth_enrich_records_total{result=\"no_metadata\"}"), 1.0);
}

/// The engine unreachable (the socket does not exist): lines pass through as the driver
/// sent them, and berth says so once, not per record nor per reconnect attempt.
#[test]
fn docker_unreachable_records_pass_through_with_one_warning() {
    if !docker_ready("unreachable") {
        return;
    }
    let cfg =
        format!("{FILE_SINK}\n[enrich.docker]\nsocket = \"unix:///nonexistent/docker.sock\"\n");
    let b = start_docker(&cfg);
    let c = run(
        &format!("tcp://{}", b.tcp_addr()),
        Run {
            test: "unreachable",
            log_opts: vec![],
            args: ecs_labels("c1", "app", "dddd", "f", 1),
            script: numbered(50, 0),
        },
    );
    assert_eq!(c.wait(), 0);
    let got = wait_delivered(b.path(), &c.tag(), 50);
    for e in &got {
        let r = &e["record"];
        assert_eq!(r["container_name"], format!("/{}", c.name), "{e}");
        assert!(r.get("ecs_cluster").is_none() && r.get("image").is_none(), "{e}");
    }
    assert_eq!(b.metric("berth_enrich_records_total{result=\"no_metadata\"}"), 50.0);
    // Several reconnect attempts fail (backoff 0.5 s, 1 s, 2 s...) without more warnings.
    wait_for(WAIT, "three failed connection attempts", || {
        let st = status(&b);
        assert_eq!(st["enrich"]["docker"]["connected"], false, "{st}");
        (st["enrich"]["docker"]["failed_connects"].as_u64().unwrap_or(0) >= 3).then_some(())
    });
    let warnings =
        b.stderr_text().lines().filter(|l| l.contains("docker engine unreachable")).count();
    assert_eq!(warnings, 1, "{}", b.stderr_text());
}

/// A Unix socket in front of the engine's that a test can take down (closing every
/// connection through it, as a restarting dockerd does) and bring back.
struct EngineLink {
    path: PathBuf,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    _dir: tempfile::TempDir,
}

impl EngineLink {
    fn new() -> EngineLink {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = EngineLink {
            path: dir.path().join("docker.sock"),
            up: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            _dir: dir,
        };
        link.start();
        link
    }

    fn start(&self) {
        let l = std::os::unix::net::UnixListener::bind(&self.path).expect("bind the engine link");
        l.set_nonblocking(true).expect("nonblocking");
        self.up.store(true, Ordering::SeqCst);
        let (up, conns) = (Arc::clone(&self.up), Arc::clone(&self.conns));
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).expect("blocking");
                let Ok(engine) = std::os::unix::net::UnixStream::connect("/var/run/docker.sock")
                else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap()
                    .extend([c.try_clone().expect("clone"), engine.try_clone().expect("clone")]);
                splice(c, engine);
            }
        });
    }

    /// The engine goes away: every connection is cut, new ones are refused.
    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50)); // the accept loop's poll
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The engine goes away and comes back (dockerd restarted): berth reconnects, and one
/// container list catches up on what happened meanwhile — a container started during the
/// outage is enriched from its next line without a lookup, one removed during it is
/// marked removed.
#[test]
fn engine_back_after_an_outage_is_caught_up_with_one_list() {
    if !docker_ready("outage") {
        return;
    }
    let link = EngineLink::new();
    let cfg =
        format!("{FILE_SINK}\n[enrich.docker]\nsocket = \"unix://{}\"\n", link.path.display());
    let b = start_docker(&cfg);
    let addr = format!("unix://{}", b.unix_path().display());
    wait_for(WAIT, "berth connected to the engine", || {
        (status(&b)["enrich"]["docker"]["connected"] == true).then_some(())
    });
    // Seen before the outage, removed during it.
    let gone = run(
        &addr,
        Run { test: "outage-gone", log_opts: vec![], args: vec![], script: numbered(1, 0) },
    );
    assert_eq!(gone.wait(), 0);
    assert_eq!(wait_delivered(b.path(), &gone.tag(), 1)[0]["record"]["image"], IMAGE);

    link.stop();
    wait_for(WAIT, "berth to notice the outage", || {
        (status(&b)["enrich"]["docker"]["connected"] == false).then_some(())
    });
    docker_ok(&["rm", &gone.name]);
    let ctl = tempfile::tempdir().expect("tempdir");
    let mut args = ecs_labels("c1", "svc", "ffff6666", "web", 2);
    args.extend(["-v".into(), format!("{}:/ctl", ctl.path().display())]);
    // Ticks until /ctl/stop; the pace is the workload, not synchronisation.
    let script = "i=0; while [ ! -e /ctl/stop ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done";
    let c = run(&addr, Run { test: "outage-new", log_opts: vec![], args, script: script.into() });
    wait_delivered(b.path(), &c.tag(), 1);

    link.start();
    wait_for(WAIT, "a line of the new container with its task's fields", || {
        delivered(b.path(), &c.tag())
            .iter()
            .any(|e| e["record"]["ecs_task_id"] == "ffff6666")
            .then_some(())
    });
    std::fs::write(ctl.path().join("stop"), b"").expect("create /ctl/stop");
    assert_eq!(c.wait(), 0);
    let log = b.stderr_text();
    assert!(log.contains("docker engine reachable again"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("container removed: its entry is kept") && l.contains(&gone.id)),
        "the container removed during the outage is marked removed by the list"
    );
    // Once enriched, every later line is.
    let got = delivered(b.path(), &c.tag());
    let first = got
        .iter()
        .position(|e| e["record"]["ecs_task_id"] == "ffff6666")
        .expect("an enriched line");
    assert!(
        got[first..].iter().all(|e| e["record"]["ecs_task_id"] == "ffff6666"),
        "{:?}",
        &got[first..]
    );
}

/// A container labelled `berth.multiline.start` has its stack traces grouped: each line
/// matching the pattern starts a record, the lines after it are appended; an unlabelled
/// container beside it is left line by line. The groups keep the enrichment fields.
#[test]
fn multiline_label_groups_a_containers_stack_traces() {
    if !docker_ready("multiline") {
        return;
    }
    let b = start_docker(&format!("{FILE_SINK}\n[enrich.multiline]\ntimeout = \"500ms\"\n"));
    let addr = format!("unix://{}", b.unix_path().display());
    let script = "echo 'Exception in thread main'; echo '  at a.B.c(B.java:1)'; echo '  at d.E.f(E.java:2)'; \
                  echo 'next event'; echo '  detail'; echo 'last event'"
        .to_string();
    let mut args = ecs_labels("prod", "web", "cccc3333", "shop", 1);
    args.extend(["--label".into(), r"berth.multiline.start=^\S".into()]);
    let m = run(&addr, Run { test: "ml", log_opts: vec![], args, script: script.clone() });
    let plain = run(&addr, Run { test: "ml-plain", log_opts: vec![], args: vec![], script });
    assert_eq!(m.wait(), 0);
    assert_eq!(plain.wait(), 0);
    let got = wait_delivered(b.path(), &m.tag(), 3);
    let logs: Vec<&str> = got.iter().map(|e| e["record"]["log"].as_str().expect("log")).collect();
    assert_eq!(
        logs,
        vec![
            "Exception in thread main\n  at a.B.c(B.java:1)\n  at d.E.f(E.java:2)",
            "next event\n  detail",
            "last event"
        ]
    );
    for e in &got {
        assert_eq!(e["record"]["ecs_task_id"], "cccc3333", "{e}");
        assert!(e["record"].get("multiline_incomplete").is_none(), "{e}");
    }
    let lines = wait_delivered(b.path(), &plain.tag(), 6);
    assert_eq!(lines.len(), 6, "the unlabelled container's lines stay apart");
    b.wait_metric(
        "berth_reassembled_records_total{sink=\"files\",kind=\"multiline\",outcome=\"complete\"}",
        3.0,
    );
}
