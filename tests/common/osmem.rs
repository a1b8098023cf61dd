//! osmem-server (an in-memory OpenSearch-compatible server, installed in the test venv by
//! scripts/test-deps) for the elasticsearch sink tests, and a TCP proxy in front of it that
//! can "take the server down" without losing its in-memory data.

use super::{dechunk, test_python, wait_for, WAIT};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The server binary: `OSMEM_SERVER_BIN`, else the one bundled in the venv's package (asked
/// of the package itself, so the venv layout does not matter). Fails, never skips, when it
/// is missing: run scripts/test-deps.
pub fn osmem_bin() -> PathBuf {
    if let Ok(b) = std::env::var("OSMEM_SERVER_BIN") {
        return PathBuf::from(b);
    }
    let out = Command::new(test_python())
        .args(["-c", "import osmem_server; print(osmem_server.resolve_binary())"])
        .output()
        .expect("run the venv python");
    assert!(
        out.status.success(),
        "osmem-server is not installed in the test venv: run scripts/test-deps\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running osmem-server on 127.0.0.1, killed on drop.
pub struct Osmem {
    child: Child,
    /// Held open: the server exits when its stdin closes (so it never outlives the test
    /// process, even when this one is killed).
    _stdin: Option<ChildStdin>,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Osmem {
    /// Start on a port the server picks (`--addr 127.0.0.1:0`); returns once it answers.
    pub fn start() -> Osmem {
        let mut child = Command::new(osmem_bin())
            .args([
                "--addr",
                "127.0.0.1:0",
                "--no-ja",
                "--parent-pid",
                &std::process::id().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn osmem-server");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        // Its first stdout line is `{"url":"http://127.0.0.1:PORT",...}` once bound.
        let url: Arc<Mutex<Option<String>>> = Arc::default();
        let u2 = Arc::clone(&url);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(u) = v["url"].as_str() {
                        *u2.lock().unwrap() = Some(u.to_string());
                    }
                }
            }
        });
        let mut s = Osmem { child, _stdin: stdin, addr: String::new() };
        let url = wait_for(WAIT, "osmem-server to print its url", || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("osmem-server exited during start with {status}");
            }
            url.lock().unwrap().clone()
        });
        s.addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        wait_for(WAIT, "osmem-server to answer", || {
            (try_request(&s.addr, "GET", "/", None).map(|r| r.0) == Some(200)).then_some(())
        });
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A JSON request; panics on a transport error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) =
            try_request(&self.addr, method, path, body).expect("request to osmem-server");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Make everything written so far searchable (a no-op on osmem today, but the API says so).
    pub fn refresh(&self, index: &str) {
        let _ = try_request(&self.addr, "POST", &format!("/{index}/_refresh"), None);
    }

    /// `_count` of an index pattern; 0 when it does not exist yet.
    pub fn count(&self, index: &str) -> u64 {
        self.refresh(index);
        let (status, v) = self.request("GET", &format!("/{index}/_count"), None);
        if status == 404 {
            return 0;
        }
        assert_eq!(status, 200, "_count: {v}");
        v["count"].as_u64().expect("count")
    }

    /// Every hit (with `_id`, `_index`, `_source`) of an index pattern, up to 10 000.
    pub fn search_all(&self, index: &str) -> Vec<serde_json::Value> {
        self.refresh(index);
        let body = r#"{"size":10000,"query":{"match_all":{}}}"#;
        let (status, v) = self.request("POST", &format!("/{index}/_search"), Some(body));
        if status == 404 {
            return vec![];
        }
        assert_eq!(status, 200, "_search: {v}");
        v["hits"]["hits"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; `None` when the server cannot be reached.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let (head, rest) = resp.split_once("\r\n\r\n")?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Some((status, if chunked { dechunk(rest) } else { rest.to_string() }))
}

/// A TCP proxy on its own port in front of `target`. `set_down(true)` closes every open
/// connection and refuses new ones (accepted, then closed at once) until `set_down(false)`:
/// to berth the server is gone, while osmem-server (in memory only, it cannot be restarted
/// without losing its data) keeps what it stored.
pub struct Proxy {
    pub addr: String,
    down: Arc<AtomicBool>,
    /// Requests still reach the server, but its responses are swallowed (a lost response).
    lose_responses: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(false));
        let lose = Arc::new(AtomicBool::new(false));
        let lose2 = Arc::clone(&lose);
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, st, cs, target) =
            (Arc::clone(&down), Arc::clone(&stop), Arc::clone(&conns), target.to_string());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = c else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&target) else {
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut cs = cs.lock().unwrap();
                    cs.push(c.try_clone().unwrap());
                    cs.push(up.try_clone().unwrap());
                }
                pipe(c.try_clone().unwrap(), up.try_clone().unwrap(), None);
                pipe(up, c, Some(Arc::clone(&lose2)));
            }
        });
        Proxy { addr, down, lose_responses: lose, conns, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forward requests but drop every response byte from now on (until set back).
    pub fn set_lose_responses(&self, lose: bool) {
        self.lose_responses.store(lose, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_down(true);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr.parse().unwrap(), Duration::from_secs(1));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, discard: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if discard.as_ref().is_some_and(|d| d.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Faults a `FaultServer` injects, counted over the `_bulk` requests it receives.
#[derive(Clone, Copy)]
pub struct Faults {
    /// Bodies longer than this get 413.
    pub max_body: usize,
    /// Every n-th request (not 413) gets 503 with `Retry-After: <retry_after>`; 0 for never.
    pub unavailable_every: usize,
    /// Seconds in the 503's `Retry-After`.
    pub retry_after: u32,
    /// Every n-th item of a forwarded request is reported as 429 (after the server stored
    /// it: the retry then sees 409, "already delivered"); 0 for never.
    pub item_429_every: usize,
    /// The first `gate` requests are held until that many are waiting at once (each
    /// released together), so a test can see `gate` requests in flight at the same time;
    /// 0 for no gate. A request waits at most 30 s: a client that never has that many in
    /// flight shows as `FaultStats::gate_peak` below `gate`.
    pub gate: usize,
    /// Every request is answered 403 `security_exception` (the cluster's access policy
    /// refuses the role), nothing stored.
    pub forbidden: bool,
}

/// An HTTP/1.1 `_bulk` endpoint in front of osmem-server that injects [`Faults`]. Bodies
/// plain or gzip (`Content-Encoding: gzip`): `max_body` counts them as sent.
pub struct FaultServer {
    pub addr: String,
    pub stats: Arc<Mutex<FaultStats>>,
}

#[derive(Debug, Default, Clone)]
pub struct FaultStats {
    pub requests: usize,
    pub too_large: usize,
    pub unavailable: usize,
    pub items_429: usize,
    /// Requests that reached the gate, and how many were waiting at once when the last
    /// of them arrived (itself included).
    pub gated: usize,
    pub gate_waiting: usize,
    pub gate_peak: usize,
    /// When each request arrived, and when each 503 was answered.
    pub arrived: Vec<std::time::Instant>,
    pub unavailable_at: Vec<std::time::Instant>,
    /// Requests whose body came gzip-compressed.
    pub gzipped: usize,
}

impl FaultServer {
    pub fn start(target: &str, faults: Faults) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        let addr = listener.local_addr().unwrap().to_string();
        let stats: Arc<Mutex<FaultStats>> = Arc::default();
        let (st, target) = (Arc::clone(&stats), target.to_string());
        let gate = Arc::new(Condvar::new());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let (st, target, gate) = (Arc::clone(&st), target.clone(), Arc::clone(&gate));
                std::thread::spawn(move || serve_faults(c, &target, faults, &st, &gate));
            }
        });
        FaultServer { addr, stats }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve_faults(c: TcpStream, target: &str, f: Faults, stats: &Mutex<FaultStats>, gate: &Condvar) {
    let mut w = c.try_clone().unwrap();
    let mut r = std::io::BufReader::new(c);
    while let Some(req) = super::read_http_request(&mut r) {
        let req_gzip =
            req.header("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let body = req.body;
        {
            let mut s = stats.lock().unwrap();
            if s.gated < f.gate {
                s.gated += 1;
                if s.gated == f.gate {
                    s.gate_peak = s.gate_waiting + 1;
                    gate.notify_all();
                } else {
                    s.gate_waiting += 1;
                    s = gate
                        .wait_timeout_while(s, Duration::from_secs(30), |s| s.gated < f.gate)
                        .unwrap()
                        .0;
                    s.gate_waiting -= 1;
                }
            }
        }
        let n = {
            let mut s = stats.lock().unwrap();
            s.requests += 1;
            s.arrived.push(std::time::Instant::now());
            s.requests
        };
        let (status, extra, reply) = if f.forbidden {
            (
                403,
                String::new(),
                r#"{"error":{"type":"security_exception","reason":"no permissions for [indices:data/write/bulk] (injected)"},"status":403}"#.to_string(),
            )
        } else if body.len() > f.max_body {
            stats.lock().unwrap().too_large += 1;
            (413, String::new(), String::new())
        } else if f.unavailable_every > 0 && n % f.unavailable_every == 0 {
            stats.lock().unwrap().unavailable += 1;
            (
                503,
                format!("Retry-After: {}\r\n", f.retry_after),
                "{\"error\":\"unavailable\"}".to_string(),
            )
        } else {
            let body = if req_gzip {
                stats.lock().unwrap().gzipped += 1;
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
                    .expect("gzip body");
                out
            } else {
                body
            };
            let text = String::from_utf8(body).expect("ndjson body");
            let (status, resp) =
                try_request(target, "POST", "/_bulk", Some(&text)).expect("forward to osmem");
            let mut v: serde_json::Value = serde_json::from_str(&resp).expect("bulk response");
            if f.item_429_every > 0 {
                let mut injected = 0;
                if let Some(items) = v["items"].as_array_mut() {
                    for (i, item) in items.iter_mut().enumerate() {
                        if (i + n) % f.item_429_every == 0 {
                            let action =
                                item.as_object().and_then(|o| o.keys().next().cloned()).unwrap();
                            item[&action]["status"] = 429.into();
                            item[&action]["error"] = serde_json::json!({"type": "es_rejected_execution_exception", "reason": "injected"});
                            injected += 1;
                        }
                    }
                }
                if injected > 0 {
                    v["errors"] = true.into();
                    stats.lock().unwrap().items_429 += injected;
                }
            }
            (status, String::new(), v.to_string())
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes()).and_then(|_| w.write_all(reply.as_bytes())).is_err() {
            return;
        }
        if status == 503 {
            stats.lock().unwrap().unavailable_at.push(std::time::Instant::now());
        }
    }
}

/// berth with one elasticsearch sink `search` to `endpoints` (failover order), its buffer
/// and dead-letter file under the test's `{dir}`; `extra` is appended to the sink's table.
pub fn config_endpoints(endpoints: &[&str], extra: &str) -> String {
    let endpoints = endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"{head}
[[sink]]
name = "search"
type = "elasticsearch"
match = "**"
endpoints = [{endpoints}]
index = "logs-{{app}}-%Y.%m.%d"
flush_interval = "50ms"
dead_letter_path = "{{dir}}/dead/search.ndjson"
{extra}
"#,
        head = super::NETWORK_HEAD
    )
}
