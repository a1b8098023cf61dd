//! End-to-end load generator: starts `berth run` with a `null` sink, pushes Forward traffic
//! from N loopback connections, and reports records/s, MB/s, CPU seconds per million records
//! and berth's peak RSS.
//!
//! With `--sink es` the sink is an `elasticsearch` one instead, sending to `--es-endpoint`,
//! to an osmem-server started from `--osmem BIN`, or else to a null `_bulk` endpoint run by
//! this tool (it answers every item "created" without storing anything: berth alone is
//! measured), with `--gzip on|off`; the report adds the bytes on the wire
//! (`berth_output_bytes_total`) and berth's CPU only (not the server's).
//!
//! With `--sink cw` the sink is a `cloudwatch_logs` one, sending to `--cw-endpoint`, to a
//! moto_server started from `--moto BIN` on a loopback port, or else to a null endpoint run
//! by this tool that answers every call `{}` (test credentials are set for
//! berth when the environment has none); event times are then the last minutes, so that
//! CloudWatch's 14-day window takes them. Records without ECS fields: the group is
//! `/ecs/unknown/unknown` and each of the 7 container ids is a stream.
//!
//! ```text
//! cargo build --release && target/release/berth-load --connections 8 --records 4000000
//! target/release/berth-load --sink es --gzip on --records 1000000
//! target/release/berth-load --sink cw --moto /var/tmp/berth-test-venv/bin/moto_server --records 200000
//! ```
//! With `--peer fluent-bit` the same workload also goes to a `fluent-bit` binary
//! (`--fluent-bit PATH` or on PATH; none: skipped, saying so), runs alternating, then both
//! medians and the ratios (docs/performance.md).
//!
//! The workload is the one in shared/PERFORMANCE.md: ~200-byte Docker-like records, 1,000
//! per PackedForward request.

#![allow(clippy::expect_used)] // a load generator: a failed connection ends the run, saying why

use berth::event::{Event, EventTime};
use berth::forward::decode::Mode;
use berth::forward::encode::{encode_request, EncodeOptions};
use bytes::Bytes;
use clap::Parser;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Push Forward traffic into `berth run` and measure it")]
struct Args {
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Records to send in total.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// message | forward | packed | compressed
    #[arg(long, default_value = "packed")]
    mode: String,
    /// Ask for an ack on every request and wait for it before sending the next.
    #[arg(long)]
    ack: bool,
    /// The berth binary (default: next to this one).
    #[arg(long)]
    berth: Option<PathBuf>,
    /// The buffer's fsync policy: batch | always | never.
    #[arg(long, default_value = "batch")]
    sync: String,
    /// The buffer's `direct_io`: on | off.
    #[arg(long, default_value = "on")]
    direct_io: String,
    /// After each berth run, measure the disk: write + fdatasync cycles of berth's mean
    /// group commit (its bytes written over its fsyncs) for two seconds in the buffer's
    /// filesystem, the way berth writes (`--direct-io`), and print how much of that rate
    /// berth used.
    #[arg(long)]
    disk_probe: bool,
    /// Add a second sink (a file sink whose directory is blocked by a regular file) that can
    /// never deliver: the whole run stays in the buffer as its backlog.
    #[arg(long)]
    stalled_sink: bool,
    /// The buffer directory (default: a temporary directory, removed at the end).
    #[arg(long)]
    buffer_path: Option<PathBuf>,
    /// The sink to deliver to: null | es | cw.
    #[arg(long, default_value = "null")]
    sink: String,
    /// With `--sink es`: the cluster's base URL (default: osmem-server with `--osmem`, else a
    /// null `_bulk` endpoint in this process).
    #[arg(long)]
    es_endpoint: Option<String>,
    /// With `--sink es`: start this osmem-server binary on a loopback port and send to it.
    #[arg(long)]
    osmem: Option<PathBuf>,
    /// With `--sink es`: `compression` of the sink, on (gzip) | off.
    #[arg(long, default_value = "on")]
    gzip: String,
    /// With `--sink es`: `batch_max_records` of the sink.
    #[arg(long, default_value_t = 5000)]
    es_batch: usize,
    /// With `--sink es`: `concurrency` of the sink (requests in flight).
    #[arg(long, default_value_t = 4)]
    es_concurrency: usize,
    /// With `--sink cw`: the CloudWatch Logs endpoint URL (default: moto_server with `--moto`,
    /// else a null endpoint in this process).
    #[arg(long)]
    cw_endpoint: Option<String>,
    /// With `--sink cw`: start this moto_server binary on a loopback port and send to it.
    #[arg(long)]
    moto: Option<PathBuf>,
    /// Give up waiting for delivery after this many seconds (the report then says
    /// `complete=false` and counts only what was delivered).
    #[arg(long, default_value_t = 120)]
    deadline: u64,
    /// Measure a peer beside berth on the same workload: `fluent-bit` (its `forward`
    /// input, a `null` or `es` output as `--sink` says), runs alternating, then the ratios.
    #[arg(long)]
    peer: Option<String>,
    /// With `--peer fluent-bit`: its binary (default: `fluent-bit` on PATH; none: the peer
    /// is skipped, saying so).
    #[arg(long)]
    fluent_bit: Option<PathBuf>,
    /// With `--peer`: Fluent Bit's input buffering, `memory` or `filesystem` (chunks in files
    /// under the run's directory, as its durable setup).
    #[arg(long, default_value = "memory")]
    peer_storage: String,
    /// With `--peer`: Fluent Bit's `Flush` (seconds; its default is 1).
    #[arg(long, default_value = "1")]
    peer_flush: String,
    /// With `--peer`: how many runs of each, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Report {
    complete: bool,
    records: u64,
    /// Until the last record was sent (with `--ack`: acknowledged).
    sent_secs: f64,
    /// Until the sink (the peer's output) had every record.
    secs: f64,
    cpu_s: f64,
    rss_mib: f64,
}

impl Report {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
    fn sent_rate(&self) -> f64 {
        self.records as f64 / self.sent_secs.max(1e-9)
    }
    fn cpu_per_m(&self) -> f64 {
        self.cpu_s / (self.records.max(1) as f64 / 1e6)
    }
}

/// A `POST /_bulk` endpoint that stores nothing: every item of every request is answered
/// `201 created` (`"errors": false`, one item per action line), gzip bodies inflated first.
/// With `cloudwatch`, a CloudWatch Logs JSON endpoint instead: every call (PutLogEvents,
/// CreateLogStream, …) is answered 200 `{}`. HTTP/1.1 with keep-alive and `Content-Length`
/// bodies only, which is what berth sends.
fn null_endpoint(cloudwatch: bool) -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || serve_null(c, cloudwatch));
        }
    });
    Ok(format!("http://{addr}"))
}

/// The header lines of an HTTP message after its first line, up to the blank line:
/// `(Content-Length, whether Content-Encoding is gzip)`; `None` when the connection ends.
fn read_headers(r: &mut impl BufRead) -> Option<(usize, bool)> {
    let (mut len, mut gzip) = (0usize, false);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some((len, gzip));
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("content-encoding") {
                gzip = v.trim().eq_ignore_ascii_case("gzip");
            }
        }
    }
}

fn serve_null(c: TcpStream, cloudwatch: bool) {
    let Ok(mut w) = c.try_clone() else { return };
    let mut r = BufReader::new(c);
    let (mut body, mut plain, mut reply) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some((len, gzip)) = read_headers(&mut r) else { return };
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if cloudwatch {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}";
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let ndjson = if gzip {
            plain.clear();
            if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).is_err() {
                return;
            }
            &plain
        } else {
            &body
        };
        // Every action of berth's bodies is followed by one source line.
        let items = ndjson.iter().filter(|b| **b == b'\n').count() / 2;
        reply.clear();
        reply.extend_from_slice(b"{\"took\":0,\"errors\":false,\"items\":[");
        for i in 0..items {
            if i > 0 {
                reply.push(b',');
            }
            reply.extend_from_slice(b"{\"create\":{\"status\":201,\"result\":\"created\"}}");
        }
        reply.extend_from_slice(b"]}");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes()).and_then(|_| w.write_all(&reply)).is_err() {
            return;
        }
    }
}

/// Start osmem-server from `bin` on a loopback port; its first stdout line is
/// `{"url":"http://127.0.0.1:PORT",...}` once bound.
fn start_osmem(bin: &std::path::Path) -> Started {
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--no-ja", "--parent-pid", &std::process::id().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next().transpose()? {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(u) = v["url"].as_str() {
            let url = u.trim_end_matches('/').to_string();
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((child, url));
        }
    }
    let _ = child.kill();
    Err(std::io::Error::other("osmem-server exited before printing its url"))
}

type Started = std::io::Result<(std::process::Child, String)>;

/// The URL to send to: `explicit`, else a server started from `bin` with `start` (its child
/// returned, to be killed at the end), else a null endpoint in this process. Exits on failure.
fn endpoint_for(
    explicit: Option<&String>,
    bin: Option<&std::path::Path>,
    start: fn(&std::path::Path) -> Started,
    what: &str,
    cloudwatch: bool,
) -> (String, Option<std::process::Child>) {
    let started = match (explicit, bin) {
        (Some(e), _) => return (e.clone(), None),
        (None, Some(bin)) => start(bin).map(|(child, url)| (url, Some(child))),
        (None, None) => null_endpoint(cloudwatch).map(|url| (url, None)),
    };
    started.unwrap_or_else(|e| {
        let what = if bin.is_some() { what } else { "the null endpoint" };
        eprintln!("cannot start {what}: {e}");
        std::process::exit(1);
    })
}

/// With `--sink es`: where to send (see [`endpoint_for`]), for berth and the peer alike.
fn es_endpoint(args: &Args) -> (String, Option<std::process::Child>) {
    endpoint_for(
        args.es_endpoint.as_ref(),
        args.osmem.as_deref(),
        start_osmem,
        "osmem-server",
        false,
    )
}

/// moto_server on a free loopback port; returns once it accepts connections.
fn start_moto(bin: &std::path::Path) -> Started {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).is_err() {
        if Instant::now() > until {
            return Err(std::io::Error::other("moto_server did not listen within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, format!("http://{addr}")))
}

fn record(i: usize) -> Bytes {
    let line = format!(
        "{{\"container_id\":\"{:064x}\",\"container_name\":\"/ecs-app-{}\",\"source\":\"stdout\",\"log\":\"{}\"}}",
        i % 7,
        i % 5,
        "GET /api/v1/items?page=2 HTTP/1.1 200 512 0.003 request-id=5f0c2a7e-1b2c-4d3e-9f00-aa",
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    let mut out = Vec::new();
    write_json_as_msgpack(&mut out, &v);
    Bytes::from(out)
}

fn write_json_as_msgpack(out: &mut Vec<u8>, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let _ = rmp::encode::write_map_len(out, m.len() as u32);
            for (k, v) in m {
                let _ = rmp::encode::write_str(out, k);
                write_json_as_msgpack(out, v);
            }
        }
        serde_json::Value::String(s) => {
            let _ = rmp::encode::write_str(out, s);
        }
        _ => {
            let _ = rmp::encode::write_nil(out);
        }
    }
}

fn proc_stat(pid: u32) -> (f64, u64) {
    // utime + stime in seconds, and VmHWM in KiB.
    let ticks = unsafe_sysconf_clk_tck();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu / ticks, hwm)
}

fn unsafe_sysconf_clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn metric(admin: &str, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(admin) else { return 0.0 };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn parse_mode(args: &Args) -> (Mode, usize) {
    let mode = match args.mode.as_str() {
        "message" => Mode::Message,
        "forward" => Mode::Forward,
        "packed" => Mode::PackedForward,
        "compressed" => Mode::CompressedPackedForward,
        m => {
            eprintln!("unknown mode {m}");
            std::process::exit(2);
        }
    };
    let batch = if mode == Mode::Message { 1 } else { args.batch.max(1) };
    (mode, batch)
}

/// The run's events: one request's worth, the same in every request. CloudWatch takes only
/// the last 14 days: times just before now for it.
fn workload(args: &Args, batch: usize) -> Vec<Event> {
    let base =
        if args.sink == "cw" { EventTime::now().secs - batch as i64 - 60 } else { 1_763_769_600 };
    (0..batch)
        .map(|i| Event {
            time: EventTime::new(base + i as i64, 123_456_789),
            record: record(i),
            metadata: Bytes::new(),
        })
        .collect()
}

/// What the clients did: records sent, when the last was sent, each ack's latency (µs).
struct Pushed {
    total: u64,
    sent_at: Duration,
    latencies: Vec<u64>,
}

/// The workload from `args.connections` connections to `tcp`.
fn push(args: &Args, tcp: &str, mode: Mode, events: &[Event]) -> Pushed {
    let start = Instant::now();
    let batch = events.len();
    let requests = args.records.div_ceil(batch as u64);
    let per_conn = requests.div_ceil(args.connections as u64);
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.connections)
        .map(|c| {
            let (tcp, events, sent, ack) =
                (tcp.to_string(), events.to_vec(), Arc::clone(&sent), args.ack);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut s = TcpStream::connect(&tcp).expect("connect");
                let _ = s.set_nodelay(true);
                let plain = encode_request(
                    mode,
                    "load.test",
                    &events,
                    &EncodeOptions { chunk: None, event_time: true },
                );
                let mut ackbuf = [0u8; 256];
                // With acks every request has its own chunk id, of a fixed width: encoded
                // once, and each request's id written over the last one's in place, so the
                // client's own work between two requests is a few bytes (not a re-encoding
                // of 1,000 records, which would be in every round trip it measures).
                let chunk_id = |r: u64| format!("c{c:04}-{r:012}");
                let first_id = chunk_id(0);
                let mut req = encode_request(
                    mode,
                    "load.test",
                    &events,
                    &EncodeOptions { chunk: Some(first_id.clone()), event_time: true },
                );
                // Every place it is at: in Message mode each record is a request with it.
                let id_at: Vec<usize> = req
                    .windows(first_id.len())
                    .enumerate()
                    .filter_map(|(i, w)| (w == first_id.as_bytes()).then_some(i))
                    .collect();
                assert!(!id_at.is_empty(), "the chunk id is in the request");
                for r in 0..per_conn {
                    if ack {
                        let id = chunk_id(r);
                        for &at in &id_at {
                            req[at..at + id.len()].copy_from_slice(id.as_bytes());
                        }
                        let t0 = Instant::now();
                        s.write_all(&req).expect("write");
                        let n = s.read(&mut ackbuf).expect("read ack");
                        assert!(n > 0, "connection closed");
                        latencies.push(t0.elapsed().as_micros() as u64);
                    } else {
                        s.write_all(&plain).expect("write");
                    }
                    sent.fetch_add(events.len() as u64, Ordering::Relaxed);
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<u64> = Vec::new();
    for t in threads {
        latencies.extend(t.join().unwrap_or_default());
    }
    latencies.sort_unstable();
    Pushed { total: sent.load(Ordering::Relaxed), sent_at: start.elapsed(), latencies }
}

fn main() {
    let args = Args::parse();
    match args.peer.as_deref() {
        None => {
            run_berth(&args);
        }
        Some("fluent-bit") => compare_with_fluent_bit(&args),
        Some(p) => {
            eprintln!("unknown peer {p} (fluent-bit)");
            std::process::exit(2);
        }
    }
}

/// Writes a config file, or ends the run saying why.
fn write_config(path: &std::path::Path, text: String) {
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}

/// Starts `cmd` (the program under test), or ends the run saying why.
fn spawn_or_exit(cmd: &mut Command, what: &std::path::Path) -> std::process::Child {
    cmd.spawn().unwrap_or_else(|e| {
        eprintln!("cannot start {}: {e}", what.display());
        std::process::exit(1);
    })
}

/// The end of a run: the program, the server it sent to, the run's directory.
fn finish(
    mut child: std::process::Child,
    server: Option<std::process::Child>,
    dir: &std::path::Path,
) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(mut o) = server {
        let _ = o.kill();
        let _ = o.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Write + fdatasync cycles of `group` bytes for two seconds in a new file under `dir`,
/// written as berth writes its segments (direct I/O or not): `(cycles, bytes per second)`.
fn disk_probe(dir: &std::path::Path, group: usize, direct_io: bool) -> std::io::Result<(u64, f64)> {
    use berth::buffer::storage::{DiskStorage, Storage};
    let path = dir.join(format!("berth-load-disk-probe-{}", std::process::id()));
    let data: Vec<u8> = (0..group.max(1)).map(|i| (i as u8).wrapping_mul(151) | 1).collect();
    let res = (|| {
        let mut f = DiskStorage { direct_io }.open_append(&path)?;
        let start = Instant::now();
        let mut cycles = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            f.write_all_vectored(&[&data])?;
            f.sync()?;
            cycles += 1;
        }
        Ok((cycles, (cycles * data.len() as u64) as f64 / start.elapsed().as_secs_f64()))
    })();
    let _ = std::fs::remove_file(&path);
    res
}

/// A free loopback port (bound and released: a peer binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `fluent-bit` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// berth and Fluent Bit on the same workload, alternating, then the medians and ratios.
fn compare_with_fluent_bit(args: &Args) {
    let fb = args.fluent_bit.clone().or_else(|| on_path("fluent-bit"));
    let Some(fb) = fb else {
        eprintln!("--peer fluent-bit: no fluent-bit binary (--fluent-bit PATH, or on PATH): skipped, berth alone is measured");
        run_berth(args);
        return;
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(1) {
        ours.push(run_berth(args));
        theirs.push(run_fluent_bit(args, &fb));
    }
    let median = |v: &[Report], f: fn(&Report) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let range = |v: &[Report], f: fn(&Report) -> f64| {
        let x: Vec<f64> = v.iter().map(f).collect();
        (x.iter().copied().fold(f64::INFINITY, f64::min), x.iter().copied().fold(0.0, f64::max))
    };
    println!(
        "side-by-side sink={} mode={} ack={} connections={} records={} runs={} fluent-bit storage={}",
        args.sink,
        args.mode,
        args.ack,
        args.connections,
        args.records,
        args.runs.max(1),
        args.peer_storage
    );
    for (name, f) in [
        ("delivered_records/s", Report::rate as fn(&Report) -> f64),
        ("sent_records/s (acked with --ack)", Report::sent_rate),
        ("cpu_s_per_M", Report::cpu_per_m),
        ("peak_rss_MiB", |r: &Report| r.rss_mib),
    ] {
        let (b, p) = (median(&ours, f), median(&theirs, f));
        let ((b0, b1), (p0, p1)) = (range(&ours, f), range(&theirs, f));
        println!(
            "{name}: berth {b:.3} ({b0:.3}-{b1:.3})  fluent-bit {p:.3} ({p0:.3}-{p1:.3})  berth/fluent-bit {:.2}",
            b / p.max(1e-9)
        );
    }
    if ours.iter().chain(&theirs).any(|r| !r.complete) {
        println!(
            "note: some runs did not complete within --deadline (rates over what was delivered)"
        );
    }
}

/// Fluent Bit's `forward` input into a `null` output, or an `es` output to the same
/// endpoint berth's sink would use (osmem-server or the null `_bulk`); the same clients.
/// Done when its output has processed every record (`/api/v1/metrics`).
fn run_fluent_bit(args: &Args, bin: &std::path::Path) -> Report {
    let (mode, batch) = parse_mode(args);
    let dir = std::env::temp_dir().join(format!("berth-load-fb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let (port, http) = (free_port(), free_port());
    let mut server = None;
    let output = match args.sink.as_str() {
        "null" => "[OUTPUT]\n    Name null\n    Match *\n".to_string(),
        "es" => {
            let (endpoint, child) = es_endpoint(args);
            server = child;
            let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
            let (host, eport) = hostport.rsplit_once(':').unwrap_or((hostport, "9200"));
            let compress = if args.gzip == "on" { "    Compress gzip\n" } else { "" };
            format!(
                "[OUTPUT]\n    Name es\n    Match *\n    Host {host}\n    Port {eport}\n    Index load\n    Suppress_Type_Name On\n    Buffer_Size False\n    Retry_Limit False\n{compress}"
            )
        }
        s => {
            eprintln!("--peer fluent-bit: --sink {s} is not compared (null or es)");
            std::process::exit(2);
        }
    };
    let storage = match args.peer_storage.as_str() {
        "memory" => String::new(),
        "filesystem" => format!("    storage.path {}\n", dir.join("storage").display()),
        s => {
            eprintln!("--peer-storage must be memory or filesystem, not {s}");
            std::process::exit(2);
        }
    };
    let flush = &args.peer_flush;
    let input_storage =
        if storage.is_empty() { String::new() } else { "    storage.type filesystem\n".into() };
    let cfg = format!(
        "[SERVICE]\n    Flush {flush}\n    Log_Level warn\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {http}\n{storage}[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n{input_storage}{output}"
    );
    let cfg_path = dir.join("fluent-bit.conf");
    write_config(&cfg_path, cfg);
    let mut child = spawn_or_exit(
        Command::new(bin).arg("-c").arg(&cfg_path).stdout(Stdio::null()).stderr(Stdio::null()),
        bin,
    );
    let pid = child.id();
    let tcp = format!("127.0.0.1:{port}");
    let api = format!("127.0.0.1:{http}");
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&tcp).is_err() || TcpStream::connect(&api).is_err() {
        if Instant::now() > until {
            eprintln!("fluent-bit did not listen on {tcp} and {api} within 30 s");
            let _ = child.kill();
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = workload(args, batch);
    let (cpu0, _) = proc_stat(pid);
    let start = Instant::now();
    let pushed = push(args, &tcp, mode, &events);
    let deadline = Instant::now() + Duration::from_secs(args.deadline);
    let processed = || fb_output_records(&api);
    while processed() < pushed.total && Instant::now() < deadline {
        std::thread::sleep(
            (start.elapsed() / 100).clamp(Duration::from_millis(5), Duration::from_millis(500)),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let (cpu1, hwm) = proc_stat(pid);
    let done = processed();
    finish(child, server, &dir);
    let r = Report {
        complete: done >= pushed.total,
        records: done.min(pushed.total),
        sent_secs: pushed.sent_at.as_secs_f64(),
        secs,
        cpu_s: cpu1 - cpu0,
        rss_mib: hwm as f64 / 1024.0,
    };
    println!(
        "peer=fluent-bit complete={} mode={} storage={} sink={} connections={} batch={} ack={} records={} sent_in={:.2}s delivered_in={:.2}s records/s={:.0} cpu_s_per_M={:.3} peak_rss_MiB={:.1}",
        r.complete,
        args.mode,
        args.peer_storage,
        args.sink,
        args.connections,
        batch,
        args.ack,
        r.records,
        pushed.sent_at.as_secs_f64(),
        secs,
        r.rate(),
        r.cpu_per_m(),
        r.rss_mib,
    );
    r
}

/// The records Fluent Bit's outputs processed, from its `/api/v1/metrics` JSON
/// (`output.<name>.proc_records`, summed).
fn fb_output_records(api: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(api) else { return 0 };
    let _ = write!(s, "GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // Fluent Bit keeps the connection open whatever the request says: read the headers,
    // then exactly Content-Length bytes (reading to the end would wait for its idle
    // timeout, seconds, and the run would seem to take that long).
    let mut r = BufReader::new(s);
    let mut status = String::new();
    if r.read_line(&mut status).unwrap_or(0) == 0 {
        return 0;
    }
    let Some((len, _)) = read_headers(&mut r) else { return 0 };
    let mut body = vec![0u8; len];
    if r.read_exact(&mut body).is_err() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["output"]
        .as_object()
        .map(|o| o.values().filter_map(|x| x["proc_records"].as_u64()).sum())
        .unwrap_or(0)
}

/// `berth run` with the sink `--sink` says, on the workload; prints its line.
fn run_berth(args: &Args) -> Report {
    let (mode, batch) = parse_mode(args);
    let direct_io = match args.direct_io.as_str() {
        "on" => true,
        "off" => false,
        d => {
            eprintln!("--direct-io must be on or off, not {d}");
            std::process::exit(2);
        }
    };
    let berth = args.berth.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("berth")))
            .unwrap_or_else(|| "berth".into())
    });
    let dir = std::env::temp_dir().join(format!("berth-load-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut server = None;
    let (sink_name, sink_cfg, endpoint) = match args.sink.as_str() {
        "null" => ("null", "type = \"null\"\n".to_string(), String::new()),
        "es" => {
            let (endpoint, child) = es_endpoint(args);
            server = child;
            let compression = match args.gzip.as_str() {
                "on" => "gzip",
                "off" => "none",
                g => {
                    eprintln!("--gzip must be on or off, not {g}");
                    std::process::exit(2);
                }
            };
            let cfg = format!(
                "type = \"elasticsearch\"\nendpoints = [{endpoint:?}]\nindex = \"load-%Y.%m.%d\"\ncompression = \"{compression}\"\nbatch_max_records = {}\nconcurrency = {}\nflush_interval = \"100ms\"\ndead_letter_path = {:?}\n",
                args.es_batch,
                args.es_concurrency,
                dir.join("dead.ndjson").display().to_string(),
            );
            ("es", cfg, endpoint)
        }
        "cw" => {
            let (endpoint, child) = endpoint_for(
                args.cw_endpoint.as_ref(),
                args.moto.as_deref(),
                start_moto,
                "moto_server",
                true,
            );
            server = child;
            let cfg = format!(
                "type = \"cloudwatch_logs\"\nregion = \"us-east-1\"\nendpoint_url = {endpoint:?}\nflush_interval = \"200ms\"\ndead_letter_path = {:?}\n",
                dir.join("dead.ndjson").display().to_string(),
            );
            ("cw", cfg, endpoint)
        }
        s => {
            eprintln!("unknown sink {s} (null, es or cw)");
            std::process::exit(2);
        }
    };
    let cfg = format!(
        "[input.forward]\nlisten = [\"tcp://127.0.0.1:0\"]\nmax_connections = 4096\n[admin]\nlisten = \"127.0.0.1:0\"\n[buffer]\npath = {:?}\nsync = {:?}\ndirect_io = {}\n[enrich.docker]\nenabled = false\n[enrich.ec2]\nenabled = false\n[[sink]]\nname = \"{sink_name}\"\nmatch = \"**\"\n{sink_cfg}",
        args.buffer_path.clone().unwrap_or_else(|| dir.join("buffer")).display().to_string(),
        args.sync,
        direct_io,
    ) + &if args.stalled_sink {
        let blocker = dir.join("blocked");
        let _ = std::fs::write(&blocker, b"a file where the sink wants a directory");
        format!("[[sink]]\nname = \"stalled\"\ntype = \"file\"\nmatch = \"**\"\npath = {:?}\n", blocker.join("{tag}.log").display().to_string())
    } else {
        String::new()
    };
    let cfg_path = dir.join("berth.toml");
    write_config(&cfg_path, cfg);
    let mut cmd = Command::new(&berth);
    if sink_name == "cw" && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn_or_exit(&mut cmd, &berth);
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let (mut tcp, mut admin) = (None, None);
    let mut line = String::new();
    while tcp.is_none() {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            eprintln!("berth exited during start");
            std::process::exit(1);
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let f = &v["fields"];
        if f["message"] == "admin endpoint listening" {
            admin = f["address"].as_str().map(str::to_string);
        }
        if f["message"] == "berth is running" {
            let ls: Vec<String> =
                serde_json::from_str(f["listeners"].as_str().unwrap_or("[]")).unwrap_or_default();
            tcp = ls.iter().find_map(|l| l.strip_prefix("tcp://").map(str::to_string));
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let (tcp, admin) = (tcp.unwrap_or_default(), admin.unwrap_or_default());

    let events = workload(args, batch);
    let record_bytes: usize = events.iter().map(|e| e.record.len()).sum();
    let (cpu0, _) = proc_stat(pid);
    let start = Instant::now();
    let Pushed { total, sent_at, latencies } = push(args, &tcp, mode, &events);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(args.deadline);
    let delivered = format!("berth_output_records_total{{sink=\"{sink_name}\"}}");
    while metric(&admin, &delivered) < total as f64 && Instant::now() < deadline {
        // Each poll is a scrape berth pays for: often for short runs (the end time matters),
        // at most every 1% of the run so far for long ones (a slow server).
        std::thread::sleep(
            (start.elapsed() / 100).clamp(Duration::from_millis(5), Duration::from_millis(500)),
        );
    }
    let elapsed = start.elapsed();
    let (cpu1, hwm) = proc_stat(pid);
    let fsyncs = metric(&admin, "berth_buffer_fsyncs_total");
    let written = metric(&admin, "berth_buffer_written_bytes_total");
    let backlog = metric(&admin, "berth_buffer_bytes");
    let wire = metric(&admin, &format!("berth_output_bytes_total{{sink=\"{sink_name}\"}}"));
    let requests = metric(
        &admin,
        &format!("berth_output_request_duration_seconds_count{{sink=\"{sink_name}\"}}"),
    );
    let delivered_n = metric(&admin, &delivered);
    let dead: f64 = ["too_old", "too_new", "expired", "rejected", "retry_expired"]
        .iter()
        .map(|r| {
            metric(
                &admin,
                &format!("berth_dead_letter_records_total{{sink=\"{sink_name}\",reason=\"{r}\"}}"),
            )
        })
        .sum();
    let complete = delivered_n >= total as f64;
    // Rates over what was delivered: all of it, unless the deadline passed.
    let total = if complete { total } else { delivered_n as u64 };
    finish(child, server, &dir);
    let secs = elapsed.as_secs_f64();
    let mb = total as f64 * (record_bytes as f64 / batch as f64) / 1e6;
    println!(
        "complete={} mode={} sync={} connections={} batch={} ack={} records={} sent_in={:.2}s delivered_in={:.2}s records/s={:.0} MB/s={:.1} cpu_s_per_M={:.3} peak_rss_MiB={:.1} fsyncs/s={:.0} disk_MB/s={:.1} group_KiB={:.0} ack_p50_ms={:.2} ack_p99_ms={:.2} buffer_MiB={:.0}",
        complete,
        args.mode,
        args.sync,
        args.connections,
        batch,
        args.ack,
        total,
        sent_at.as_secs_f64(),
        secs,
        total as f64 / secs,
        mb / secs,
        (cpu1 - cpu0) / (total as f64 / 1e6),
        hwm as f64 / 1024.0,
        fsyncs / secs,
        written / secs / 1e6,
        written / fsyncs.max(1.0) / 1024.0,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        backlog / 1048576.0,
    );
    if args.disk_probe && fsyncs > 0.0 {
        let group = (written / fsyncs) as usize;
        let probe_dir = args.buffer_path.clone().unwrap_or_else(std::env::temp_dir);
        match disk_probe(&probe_dir, group, direct_io) {
            Ok((cycles, rate)) => println!(
                "disk_probe group_KiB={:.0} direct_io={} cycles={} MB/s={:.1} berth_share={:.2}",
                group as f64 / 1024.0,
                args.direct_io,
                cycles,
                rate / 1e6,
                written / secs / rate,
            ),
            Err(e) => eprintln!("disk probe in {} failed: {e}", probe_dir.display()),
        }
    }
    if sink_name == "cw" {
        println!(
            "sink=cw endpoint={} delivered={} put_log_events={} message_MB={:.1} dead_letters={}",
            if args.cw_endpoint.is_some() {
                endpoint.as_str()
            } else if args.moto.is_some() {
                "moto_server"
            } else {
                "null-cloudwatch"
            },
            delivered_n,
            requests,
            wire / 1e6,
            dead,
        );
    }
    if sink_name == "es" {
        println!(
            "sink=es endpoint={} gzip={} delivered={} requests={} wire_MB={:.1} wire_bytes_per_record={:.1}",
            if args.es_endpoint.is_some() { endpoint.as_str() } else if args.osmem.is_some() { "osmem-server" } else { "null-bulk" },
            args.gzip,
            delivered_n,
            requests,
            wire / 1e6,
            wire / delivered_n.max(1.0),
        );
    }
    Report {
        complete,
        records: total,
        sent_secs: sent_at.as_secs_f64(),
        secs,
        cpu_s: cpu1 - cpu0,
        rss_mib: hwm as f64 / 1024.0,
    }
}
