//! The durable buffer under pressure, with `berth run` as a real process: a sink that is
//! down for a while, a buffer that fills up (`when_full = "block"` and `"drop_newest"`), and
//! a disk that fills up (ENOSPC on a small tmpfs).
//!
//! The file sink is "down" while a regular file sits where its output directory should be
//! (the tests run as root, so permissions would not stop it); removing that file brings it
//! back. Every record carries a unique `id`, so delivery is checked exactly: what was acked
//! arrives once, in order, and nothing else arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use rmpv::Value;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TAG: &str = "bp.app";

/// First id: every id up to 2^32 is then a msgpack uint32, so all requests of the same
/// number of records have exactly the same size (test 2 relies on it).
const ID_BASE: u64 = 1 << 20;

/// A config with the file sink writing under `{dir}/out` and `buffer` as the `[buffer]` table.
fn config(buffer: &str) -> String {
    r#"
[input.forward]
listen = ["tcp://127.0.0.1:0"]
max_message_size = "8MiB"

[admin]
listen = "127.0.0.1:0"

[buffer]
@BUFFER@

[shutdown]
grace_period = "5s"

[[sink]]
name = "files"
type = "file"
match = "**"
path = "{dir}/out/{tag}.ndjson"
"#
    .replace("@BUFFER@", buffer)
}

const LAG: &str = "berth_sink_lag_records{sink=\"files\"}";
const OUTPUT: &str = "berth_output_records_total{sink=\"files\"}";
const OUTPUT_ERRORS: &str = "berth_output_errors_total{sink=\"files\"}";
const DROPPED_FULL: &str = "berth_buffer_dropped_records_total{reason=\"full\"}";

/// A temp dir whose `out` is a regular file: the file sink cannot create its directory.
fn blocked_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("out"), b"blocks the sink's output directory\n")
        .expect("write blocker");
    dir
}

fn unblock(b: &Berth) {
    std::fs::remove_file(b.path().join("out")).expect("remove the blocker");
}

/// Same length for every id (see [`ID_BASE`]); checked on delivery to catch corruption.
fn payload(id: u64) -> String {
    format!("{id:012}-{}", "x".repeat(180))
}

/// A PackedForward request `[tag, bin(entries), {"chunk": chunk}]` with one record per id.
fn packed(ids: Range<u64>, chunk: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    for id in ids {
        let record = Value::Map(vec![(s("id"), Value::from(id)), (s("log"), s(&payload(id)))]);
        rmpv::encode::write_value(
            &mut entries,
            &Value::Array(vec![Value::from(1_700_000_000), record]),
        )
        .expect("encode entry");
    }
    mp(&Value::Array(vec![
        s(TAG),
        Value::Binary(entries),
        Value::Map(vec![(s("chunk"), s(chunk))]),
    ]))
}

/// A client that sends requests and reads acks with bounded waits, keeping a partly read
/// ack for the next call.
struct Sender {
    client: Client,
    pending: Vec<u8>,
}

impl Sender {
    fn connect(b: &Berth) -> Sender {
        Sender { client: Client::connect(&format!("tcp://{}", b.tcp_addr())), pending: Vec::new() }
    }

    fn send(&mut self, request: &[u8]) {
        self.client.send(request, usize::MAX).expect("send request");
    }

    /// True once exactly the ack of `chunk` has arrived; false if it has not within `timeout`.
    fn ack_within(&mut self, chunk: &str, timeout: Duration) -> bool {
        let ack = ack_bytes(chunk);
        let deadline = Instant::now() + timeout;
        while self.pending.len() < ack.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return false;
            }
            self.client.set_read_timeout(left);
            let mut buf = [0u8; 256];
            match self.client.read(&mut buf) {
                Ok(0) => {
                    panic!("berth closed the connection while {chunk} was waiting for its ack")
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(e) => panic!("reading the ack of {chunk}: {e}"),
            }
        }
        let got: Vec<u8> = self.pending.drain(..ack.len()).collect();
        assert_eq!(got, ack, "the next bytes must be exactly the ack of {chunk}");
        true
    }

    /// Send a request and wait (up to [`WAIT`]) for its ack.
    fn send_acked(&mut self, ids: Range<u64>, chunk: &str) {
        self.send(&packed(ids, chunk));
        assert!(self.ack_within(chunk, WAIT), "no ack for {chunk}");
    }
}

fn out_file(b: &Berth) -> PathBuf {
    b.path().join("out").join(format!("{TAG}.ndjson"))
}

/// Ids the file sink wrote, in file order; each record's payload is checked intact.
fn delivered_ids(path: &Path) -> Vec<u64> {
    read_ndjson(path)
        .iter()
        .map(|v| {
            assert_eq!(v["tag"], TAG);
            let id =
                v["record"]["id"].as_u64().unwrap_or_else(|| panic!("record without an id: {v}"));
            assert_eq!(v["record"]["log"], payload(id), "payload of id {id}");
            id
        })
        .collect()
}

/// Wait until the sink has delivered `n` records, then check the output holds exactly
/// `expected`: in order, or (`Order::Any`, several connections) as a set.
fn assert_delivered_exactly(b: &Berth, expected: &[u64], order: Order, timeout: Duration) {
    let n = expected.len() as f64;
    wait_for(timeout, &format!("{n} records delivered"), || (b.metric(OUTPUT) >= n).then_some(()));
    let mut got = delivered_ids(&out_file(b));
    let mut expected = expected.to_vec();
    if order == Order::Any {
        got.sort_unstable();
        expected.sort_unstable();
    }
    assert_eq!(got.len(), expected.len(), "delivered count (each acked record exactly once)");
    if let Some(i) = got.iter().zip(&expected).position(|(g, e)| g != e) {
        panic!("delivery differs at line {i}: got id {}, expected {}", got[i], expected[i]);
    }
    assert_eq!(b.metric(OUTPUT), n, "no extra records delivered");
    wait_for(WAIT, "lag back to 0", || (b.metric(LAG) == 0.0).then_some(()));
}

#[derive(Debug, PartialEq)]
enum Order {
    /// One sender: delivered in the order acked.
    Acked,
    /// Several senders: the order between them is not defined.
    Any,
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn assert_alive(b: &mut Berth) {
    if let Ok(Some(status)) = b.child.try_wait() {
        panic!("berth exited with {status}");
    }
}

/// Case 1: A sink that is down: 200k acked records pile up in the buffer (on disk, not in
/// memory), then all of them drain in order, exactly once.
#[test]
fn sink_down_backlog_stays_on_disk_then_drains_in_order() {
    const PER_REQUEST: u64 = 1000;
    const TOTAL: u64 = 200_000;
    let mut b = start_in(blocked_dir(), &config(r#"path = "{dir}/buffer""#), &[]);
    let pid = b.child.id();
    let mut tx = Sender::connect(&b);
    let mut rss_at_50k = 0;
    for (i, first) in (ID_BASE..ID_BASE + TOTAL).step_by(PER_REQUEST as usize).enumerate() {
        tx.send_acked(first..first + PER_REQUEST, &format!("sink-down-{i}"));
        let sent = first + PER_REQUEST - ID_BASE;
        if sent == 50_000 {
            assert_eq!(b.metric("berth_buffer_records"), 50_000.0);
            assert_eq!(b.metric(LAG), 50_000.0);
            rss_at_50k = rss_kib(pid);
        }
    }
    assert_eq!(
        b.metric("berth_buffer_records"),
        TOTAL as f64,
        "every acked record is in the buffer"
    );
    assert_eq!(b.metric(LAG), TOTAL as f64, "the sink delivered nothing");
    assert_eq!(b.metric(OUTPUT), 0.0);
    wait_for(WAIT, "sink write errors", || (b.metric(OUTPUT_ERRORS) > 0.0).then_some(()));
    let rss_at_200k = rss_kib(pid);
    eprintln!("berth VmRSS: {rss_at_50k} KiB after 50k records, {rss_at_200k} KiB after 200k");
    // 150k more records are ~30 MiB of payload: holding the backlog in memory would show.
    assert!(rss_at_200k < 100 * 1024, "RSS {rss_at_200k} KiB is not bounded");
    assert!(
        rss_at_200k < rss_at_50k + 16 * 1024,
        "RSS grew with the backlog: {rss_at_50k} KiB at 50k, {rss_at_200k} KiB at 200k"
    );
    assert_alive(&mut b);

    unblock(&b);
    let expected: Vec<u64> = (ID_BASE..ID_BASE + TOTAL).collect();
    // The sink's retry backoff reaches 10 s; then ~50 MiB of JSON lines are written.
    assert_delivered_exactly(&b, &expected, Order::Acked, Duration::from_secs(45));
}

/// How a request ended in cases 2 to 4.
#[derive(Debug, PartialEq)]
enum Outcome {
    Acked,
    /// Not acked, and the metrics say why (buffer full, request refused, disk full).
    Held,
}

/// Send one request and wait for its ack or for `held()` to say it will not come.
fn send_and_classify(
    tx: &mut Sender,
    request: &[u8],
    chunk: &str,
    mut held: impl FnMut() -> bool,
) -> Outcome {
    tx.send(request);
    wait_for(WAIT, &format!("the ack of {chunk} or a reason it cannot come"), || {
        if tx.ack_within(chunk, Duration::from_millis(200)) {
            Some(Outcome::Acked)
        } else {
            held().then_some(Outcome::Held)
        }
    })
}

const SMALL_BUFFER: u64 = 2 << 20;
const SMALL_PER_REQUEST: u64 = 100;

/// Case 2: `when_full = "block"`: acks stop at the limit and berth stays responsive; once the
/// sink is back the held request is acked and everything arrives.
#[test]
fn full_buffer_blocks_the_sender_then_resumes() {
    let mut b = start_in(
        blocked_dir(),
        &config(
            r#"path = "{dir}/buffer"
max_size = "2MiB"
segment_size = "256KiB"
when_full = "block""#,
        ),
        &[],
    );
    let mut tx = Sender::connect(&b);
    let mut acked = Vec::new();
    let mut next = ID_BASE;
    let mut bytes = b.metric("berth_buffer_bytes");
    // Size of one request's buffer entry, measured from the first acks (all requests are
    // the same size): the request is certainly held once it no longer fits.
    let mut entry = 0.0;
    let held_chunk = loop {
        let i = acked.len() as u64 / SMALL_PER_REQUEST;
        assert!(i < 500, "the 2 MiB buffer never filled");
        let chunk = format!("block-{i}");
        let ids = next..next + SMALL_PER_REQUEST;
        next = ids.end;
        let outcome = send_and_classify(&mut tx, &packed(ids.clone(), &chunk), &chunk, || {
            entry > 0.0 && b.metric("berth_buffer_bytes") + entry > SMALL_BUFFER as f64
        });
        if outcome == Outcome::Held {
            break (chunk, ids);
        }
        acked.extend(ids);
        let now = b.metric("berth_buffer_bytes");
        entry = now - bytes;
        bytes = now;
    };
    assert!(acked.len() >= 10 * SMALL_PER_REQUEST as usize, "only {} records fit", acked.len());
    eprintln!(
        "{} records acked before the buffer was full ({} bytes, {entry} per request)",
        acked.len(),
        b.metric("berth_buffer_bytes")
    );
    // Blocked: the ack must not come while the sink is down, however long we wait.
    assert!(!tx.ack_within(&held_chunk.0, Duration::from_secs(2)), "acked past a full buffer");
    let (status, _) = b.http_get("/healthz");
    assert_eq!(status, 200, "a full buffer is not a disk failure");
    assert_eq!(b.metric("berth_buffer_healthy"), 1.0);
    assert_eq!(b.metric(DROPPED_FULL), 0.0, "block drops nothing");
    assert_eq!(b.metric("berth_buffer_records"), acked.len() as f64);
    assert_alive(&mut b);

    unblock(&b);
    assert!(
        tx.ack_within(&held_chunk.0, Duration::from_secs(40)),
        "the held request was never acked"
    );
    acked.extend(held_chunk.1);
    // And the connection keeps working.
    let last = next..next + SMALL_PER_REQUEST;
    tx.send_acked(last.clone(), "block-after");
    acked.extend(last);
    assert_delivered_exactly(&b, &acked, Order::Acked, Duration::from_secs(40));
}

/// Case 3: `when_full = "drop_newest"`: requests past the limit are refused (no ack), counted
/// exactly, and never delivered; every acked record is.
#[test]
fn full_buffer_drop_newest_refuses_and_counts_exactly() {
    let mut b = start_in(
        blocked_dir(),
        &config(
            r#"path = "{dir}/buffer"
max_size = "2MiB"
segment_size = "256KiB"
when_full = "drop_newest""#,
        ),
        &[],
    );
    let mut tx = Sender::connect(&b);
    let mut acked = Vec::new();
    let mut refused_records = 0u64;
    let mut refused_requests = 0;
    let mut next = ID_BASE;
    let mut i = 0;
    // Fill the buffer, then have a few more requests refused.
    while refused_requests < 5 {
        assert!(i < 500, "the 2 MiB buffer never filled");
        let chunk = format!("drop-{i}");
        i += 1;
        let ids = next..next + SMALL_PER_REQUEST;
        next = ids.end;
        // One request in flight at a time: a rise of the counter is this request's refusal.
        let before = b.metric(DROPPED_FULL);
        let outcome = send_and_classify(&mut tx, &packed(ids.clone(), &chunk), &chunk, || {
            b.metric(DROPPED_FULL) > before
        });
        match outcome {
            Outcome::Acked => acked.extend(ids),
            Outcome::Held => {
                refused_records += SMALL_PER_REQUEST;
                refused_requests += 1;
                assert_eq!(
                    b.metric(DROPPED_FULL),
                    before + SMALL_PER_REQUEST as f64,
                    "one refusal counted"
                );
            }
        }
    }
    assert!(acked.len() >= 10 * SMALL_PER_REQUEST as usize, "only {} records fit", acked.len());
    // A refused request is never acked later.
    assert!(!tx.ack_within("anything", Duration::from_millis(500)), "bytes after a refusal");
    assert!(tx.pending.is_empty(), "bytes after a refusal: {:?}", tx.pending);
    assert_eq!(b.metric(DROPPED_FULL), refused_records as f64);
    let (status, _) = b.http_get("/healthz");
    assert_eq!(status, 200);
    assert_alive(&mut b);

    unblock(&b);
    // A fresh request proves the connection still works once there is room again.
    let last = next..next + SMALL_PER_REQUEST;
    // Delivered segments are deleted in the background: wait until one request surely fits.
    wait_for(Duration::from_secs(40), "space in the buffer", || {
        (b.metric(LAG) == 0.0 && b.metric("berth_buffer_bytes") <= (SMALL_BUFFER / 2) as f64)
            .then_some(())
    });
    tx.send_acked(last.clone(), "drop-after");
    acked.extend(last);
    assert_delivered_exactly(&b, &acked, Order::Acked, Duration::from_secs(40));
    eprintln!("{} records acked (the last after unblocking), {refused_records} refused in {refused_requests} requests", acked.len());
    assert_eq!(
        b.metric(DROPPED_FULL),
        refused_records as f64,
        "the counter equals the refused records"
    );
}

/// A tmpfs mounted for the life of the guard (unmounted on drop, even when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) when mounting fails and `BERTH_TEST_NO_MOUNT=1`.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { path: path.to_path_buf() }),
            Ok(o) => format!(
                "mount exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if std::env::var("BERTH_TEST_NO_MOUNT").as_deref() == Ok("1") {
            eprintln!("SKIPPED: cannot mount a tmpfs for the disk-full test ({why}); BERTH_TEST_NO_MOUNT=1");
            return None;
        }
        panic!("cannot mount a tmpfs at {} ({why}); this test needs root (set BERTH_TEST_NO_MOUNT=1 to skip it)", path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process not yet reaped): detach it rather than leave it mounted.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Case 4: Disk full: berth does not ack what it could not store, reports itself unhealthy and
/// stays up; once space is freed it recovers by itself and every acked record is
/// delivered exactly once, intact.
#[test]
fn disk_full_holds_clients_then_recovers() {
    // Declared first so they drop last: berth is killed, then the tmpfs unmounted, then
    // the mount point removed.
    let mount_root = tempfile::tempdir().expect("tempdir");
    let disk = mount_root.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(&disk, "8m") else { return };
    let buffer = format!("path = \"{}/buffer\"", disk.display());
    let mut b = start_in(tempfile::tempdir().expect("tempdir"), &config(&buffer), &[]);

    // Leave about 1 MiB free on the 8 MiB tmpfs.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 7 << 20]).expect("write the filler file");

    let mut tx = Sender::connect(&b);
    let mut acked = Vec::new();
    let mut next = ID_BASE;
    let held = loop {
        let i = acked.len() as u64 / SMALL_PER_REQUEST;
        assert!(i < 500, "the disk never filled");
        let chunk = format!("disk-{i}");
        let ids = next..next + SMALL_PER_REQUEST;
        next = ids.end;
        let outcome = send_and_classify(&mut tx, &packed(ids.clone(), &chunk), &chunk, || {
            b.metric("berth_buffer_healthy") == 0.0
        });
        if outcome == Outcome::Held {
            break (chunk, ids);
        }
        acked.extend(ids);
    };
    assert!(!acked.is_empty(), "nothing fitted before the disk was full");
    // The disk stays full: the held request must not be acked.
    assert!(
        !tx.ack_within(&held.0, Duration::from_secs(2)),
        "acked a request the disk could not take"
    );
    // A second client is held the same way.
    let mut tx2 = Sender::connect(&b);
    let second = next..next + SMALL_PER_REQUEST;
    next = second.end;
    tx2.send(&packed(second.clone(), "disk-second"));
    assert!(
        !tx2.ack_within("disk-second", Duration::from_secs(1)),
        "acked a request the disk could not take"
    );
    let (status, body) = b.http_get("/healthz");
    assert_eq!(status, 503, "healthz while the buffer cannot write: {body}");
    assert_eq!(b.metric("berth_buffer_healthy"), 0.0);
    assert!(b.metric("berth_buffer_write_errors_total") > 0.0);
    assert_alive(&mut b);

    std::fs::remove_file(&filler).expect("remove the filler");
    wait_for(Duration::from_secs(30), "healthz 200 after space was freed", || {
        (b.http_get("/healthz").0 == 200).then_some(())
    });
    assert!(tx.ack_within(&held.0, Duration::from_secs(30)), "the held request was never acked");
    acked.extend(held.1);
    assert!(
        tx2.ack_within("disk-second", Duration::from_secs(30)),
        "the second held request was never acked"
    );
    acked.extend(second);
    eprintln!("{} records acked around the disk-full episode", acked.len());
    let last = next..next + SMALL_PER_REQUEST;
    tx.send_acked(last.clone(), "disk-after");
    acked.extend(last);
    assert_eq!(b.metric("berth_buffer_healthy"), 1.0);
    assert_delivered_exactly(&b, &acked, Order::Any, Duration::from_secs(40));
    assert_alive(&mut b);

    // The failed writes left nothing behind on disk: a restart on the same buffer finds it
    // undamaged (no torn entry, nothing skipped) and nothing left to deliver.
    let status = b.stop();
    assert!(status.success(), "berth exited with {status} after SIGTERM");
    let again = start_in(tempfile::tempdir().expect("tempdir"), &config(&buffer), &[]);
    let log = again.stderr_text();
    assert!(log.contains("buffer opened"), "restart log:\n{log}");
    assert!(!log.contains("buffer recovered with damage"), "restart log:\n{log}");
    assert_eq!(again.metric("berth_buffer_corrupt_records_total"), 0.0);
    assert_eq!(again.metric(LAG), 0.0, "everything was delivered before the restart");
}
