//! Helpers for integration tests: start `berth run` as a real process on ports the OS
//! picks, read what it logs, talk HTTP to its admin endpoint, and clean up even on failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod docker;
pub mod ecs_agent;
pub mod iam;
pub mod imds;
pub mod lifecycle;

pub const WAIT: Duration = Duration::from_secs(20);

/// A file of the package (`tests/fixtures/…`, `examples/…`), found through the directory
/// cargo runs the tests from rather than the one the binary was built in: several clones
/// may share one target dir, and a test binary built in a clone since removed would
/// otherwise look there.
pub fn package_file(rel: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    dir.join(rel)
}

/// berth on ports the OS picks (TCP and a Unix socket), the buffer and a file sink under the
/// test's `{dir}`: events land in `{dir}/out/<tag>.ndjson`.
pub const FILE_SINK: &str = r#"
[input.forward]
listen = ["tcp://127.0.0.1:0", "unix://{dir}/forward.sock"]
max_message_size = "1MiB"

[admin]
listen = "127.0.0.1:0"

[buffer]
path = "{dir}/buffer"

[shutdown]
grace_period = "10s"

[[sink]]
name = "files"
type = "file"
match = "**"
path = "{dir}/out/{tag}.ndjson"
"#;

/// The head of a config for a network sink test: Forward on a TCP port the OS picks, the
/// admin endpoint, the buffer under `{dir}`, a 2 s grace period. The sink table follows.
pub const NETWORK_HEAD: &str = r#"
[input.forward]
listen = ["tcp://127.0.0.1:0"]
max_message_size = "32MiB"

[admin]
listen = "127.0.0.1:0"

[buffer]
path = "{dir}/buffer"

[shutdown]
grace_period = "2s"
"#;

/// IAM's ARN matching: `*` any run of characters (colons and slashes included), `?` one.
pub fn arn_like(pattern: &str, arn: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), arn.as_bytes())
}

/// Poll `f` until it returns `Some` or `timeout` passes (no blind sleeps: the loop exits as
/// soon as the condition holds).
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// A running `berth run`, killed on drop.
pub struct Berth {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// `tcp://…` / `unix://…` as logged by berth once bound.
    pub listeners: Vec<String>,
    pub admin: Option<String>,
}

/// Config text where `{dir}` is replaced by the test's temp dir.
pub fn start(config: &str) -> Berth {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir, config, &[])
}

/// Like [`start`], with the temp dir (buffer, sockets) on tmpfs where there is one, for
/// tests about a protocol rather than the disk: under the suite's load an fsync on the
/// shared disk can take seconds, and with `fluentd-request-ack` Docker's driver sends one
/// line per fsync and gives an exited container's logger only 10 s to drain (seen: a
/// container's last lines dropped by dockerd as "Logger already closed").
pub fn start_tmpfs(config: &str, env: &[(&str, &str)]) -> Berth {
    start_in(tmpfs_dir(), config, env)
}

/// A temp dir on tmpfs (`/dev/shm`) where there is one, else the usual one.
pub fn tmpfs_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("tempdir")
}

pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Berth {
    let config = config.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(berth_bin());
    cmd.args(["--log-format", "json", "--log-level", "debug", "run", "--config"])
        .arg(&path)
        .env_remove("BERTH_CONFIG")
        // Tests never reach the real instance metadata address (169.254.169.254): IMDS
        // is off unless a test points berth at its fake one (`env` overrides this).
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn berth");
    let stderr = collect(child.stderr.take().expect("stderr"));
    let stdout = collect(child.stdout.take().expect("stdout"));
    let mut b = Berth { child, dir, stderr, stdout, listeners: vec![], admin: None };
    let (listeners, admin) = wait_for(WAIT, "berth to start", || {
        if let Ok(Some(status)) = b.child.try_wait() {
            panic!("berth exited during start with {status}:\n{}", b.stderr_text());
        }
        let lines = b.stderr.lock().unwrap();
        let mut admin = None;
        for l in lines.iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else { continue };
            let fields = &v["fields"];
            if fields["message"] == "admin endpoint listening" {
                admin = fields["address"].as_str().map(str::to_string);
            }
            if fields["message"] == "berth is running" {
                let ls = fields["listeners"].as_str().unwrap_or("[]");
                let ls: Vec<String> = serde_json::from_str(ls).unwrap_or_default();
                return Some((ls, admin));
            }
        }
        None
    });
    b.listeners = listeners;
    b.admin = admin;
    b
}

/// Start berth again on the directory of `b` (already stopped or killed).
pub fn restart(mut b: Berth, config: &str) -> Berth {
    assert!(b.child.try_wait().expect("try_wait").is_some(), "restart of a running berth");
    assert!(!b.stderr_text().contains("panicked"), "berth panicked:\n{}", b.stderr_text());
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    start_in(dir, config, &[])
}

/// [`restart`] with environment variables for the new process.
pub fn restart_with(mut b: Berth, config: &str, env: &[(&str, &str)]) -> Berth {
    assert!(b.child.try_wait().expect("try_wait").is_some(), "restart of a running berth");
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    start_in(dir, config, env)
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push(line);
        }
    });
    lines
}

impl Berth {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn tcp_addr(&self) -> String {
        self.listeners
            .iter()
            .find_map(|l| l.strip_prefix("tcp://"))
            .expect("a tcp listener")
            .to_string()
    }

    pub fn unix_path(&self) -> PathBuf {
        PathBuf::from(
            self.listeners.iter().find_map(|l| l.strip_prefix("unix://")).expect("a unix listener"),
        )
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin.as_deref().expect("admin endpoint"), path)
    }

    /// The value of a metric line (exact name with labels), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        metric_value(&body, name)
    }

    /// Wait until a metric reaches `value`: counters move after the effect a test sees
    /// (a dead letter is on disk before it is counted), so a test waits for both.
    pub fn wait_metric(&self, name: &str, value: f64) {
        let start = Instant::now();
        loop {
            let (_, body) = self.http_get("/metrics");
            let got = metric_value(&body, name);
            if got == value {
                return;
            }
            assert!(start.elapsed() < WAIT, "{name} is {got}, want {value}\n{body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.child.id() as i32, sig);
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(15);
        wait_exit(&mut self.child, WAIT)
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for(timeout, "process exit", || child.try_wait().ok().flatten())
}

pub fn metric_value(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- berth stderr ----\n{}", self.stderr_text());
        }
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // std has no kill(2) with a signal number; the `kill` command does.
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// A minimal HTTP/1.1 GET (the admin endpoint is plain HTTP on loopback).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, dechunk(&body))
}

pub fn dechunk(body: &str) -> String {
    // axum answers with a Content-Length for these bodies; handle chunked just in case.
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return body.to_string() };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// Parse `2026-11-22T07:00:05.123456789Z` into (secs, nanos).
pub fn parse_rfc3339(s: &str) -> (i64, u32) {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("T");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().unwrap();
    let days = berth::calendar::days_from_civil(d[0], d[1], d[2]);
    (days * 86400 + t[0] * 3600 + t[1] * 60 + t[2], nanos)
}

/// Read every JSON line a file sink wrote under `dir` (all files, sorted by name).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else { return vec![] };
    // A sink may be writing while a test polls: only lines that end in '\n' are complete.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The Python interpreter of the test venv made by scripts/test-deps.
pub fn test_python() -> PathBuf {
    let venv =
        std::env::var("BERTH_TEST_VENV").unwrap_or_else(|_| "/var/tmp/berth-test-venv".to_string());
    let py = PathBuf::from(venv).join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/test-deps (it installs the Python test clients)",
        py.display()
    );
    py
}

/// Connect to `tcp://…` or `unix://…` (a listener string as berth logs it).
pub enum Client {
    Tcp(TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Client {
    pub fn connect(listener: &str) -> Client {
        let c = if let Some(a) = listener.strip_prefix("tcp://") {
            let s = TcpStream::connect(a).expect("connect tcp");
            s.set_nodelay(true).unwrap();
            Client::Tcp(s)
        } else {
            let p = listener.strip_prefix("unix://").expect("tcp:// or unix://");
            Client::Unix(std::os::unix::net::UnixStream::connect(p).expect("connect unix"))
        };
        c.set_read_timeout(WAIT);
        c
    }

    pub fn set_read_timeout(&self, d: Duration) {
        match self {
            Client::Tcp(s) => s.set_read_timeout(Some(d)).unwrap(),
            Client::Unix(s) => s.set_read_timeout(Some(d)).unwrap(),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Client::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Client::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    /// Write all of `bytes`, `step` bytes per write (usize::MAX: one write).
    pub fn send(&mut self, bytes: &[u8], step: usize) -> std::io::Result<()> {
        for part in bytes.chunks(step.max(1)) {
            self.write_all(part)?;
        }
        self.flush()
    }

    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        buf
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.read(buf),
            Client::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.write(buf),
            Client::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// msgpack of `v` (tests encode with rmpv: independent of berth's own encoder).
pub fn mp(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

pub fn s(x: &str) -> rmpv::Value {
    rmpv::Value::from(x)
}

/// A record map from string pairs.
pub fn rec(pairs: &[(&str, &str)]) -> rmpv::Value {
    rmpv::Value::Map(pairs.iter().map(|(k, v)| (s(k), s(v))).collect())
}

/// A Message-mode request `[tag, time, record, {chunk}]`.
pub fn message(tag: &str, time: i64, record: rmpv::Value, chunk: Option<&str>) -> Vec<u8> {
    let mut arr = vec![s(tag), rmpv::Value::from(time), record];
    if let Some(c) = chunk {
        arr.push(rmpv::Value::Map(vec![(s("chunk"), s(c))]));
    }
    mp(&rmpv::Value::Array(arr))
}

pub fn ack_bytes(chunk: &str) -> Vec<u8> {
    mp(&rmpv::Value::Map(vec![(s("ack"), s(chunk))]))
}

/// One HTTP/1.1 request read off a connection: the request line and the header lines as
/// received (with their CRLF), and the body (`Content-Length` bytes).
pub struct HttpRequest {
    pub line: String,
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The value of a header, trimmed (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
        })
    }
}

/// The next request on `r`; `None` at the end of the connection or on a broken request.
pub fn read_http_request(r: &mut impl BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        headers.push(h);
    }
    let mut req = HttpRequest { line, headers, body: Vec::new() };
    let len = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    req.body = vec![0u8; len];
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

pub mod moto;
mod osmem;
// Only the elasticsearch tests use it; the other test crates compile this module too.
#[allow(unused_imports)]
pub use osmem::*;
