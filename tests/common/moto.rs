//! moto_server (CloudWatch Logs and IAM, installed in the test venv by scripts/test-deps)
//! for the cloudwatch_logs sink tests, a boto3 reader (tests/fixtures/cw_tool.py), and a
//! fault proxy for the JSON API that records every PutLogEvents it forwards (with its
//! headers).

use super::{test_python, wait_for, WAIT};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running moto_server on 127.0.0.1, killed on drop.
pub struct Moto {
    child: Child,
    pub addr: String,
}

impl Moto {
    /// Start on a free port; `env` e.g. `INITIAL_NO_AUTH_ACTION_COUNT`. Returns once the
    /// port accepts connections (no HTTP request: with authentication on, every request
    /// counts). Fails, never skips, when moto is missing: run scripts/test-deps.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let py = test_python();
        let bin = py.parent().expect("venv bin").join("moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test-deps (it installs moto[server])",
            bin.display()
        );
        // Port 0: the OS picks, and moto (werkzeug) prints ` * Running on http://HOST:PORT`.
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn moto_server");
        let stderr = child.stderr.take().expect("stderr");
        let found: Arc<Mutex<Option<String>>> = Arc::default();
        let f2 = Arc::clone(&found);
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Read to the end: moto logs every request here, and must not block on a full pipe.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    *f2.lock().unwrap() = Some(addr);
                }
            }
        });
        let addr = wait_for(WAIT, "moto_server to print its address", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto_server exited during start with {status}");
            }
            found.lock().unwrap().clone()
        });
        wait_for(WAIT, "moto_server to listen", || TcpStream::connect(&addr).ok().map(|_| ()));
        Moto { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run tests/fixtures/cw_tool.py against `url` with test credentials (or `creds`).
pub fn cw_tool(url: &str, args: &[&str], creds: Option<(&str, &str)>) -> String {
    let script = super::package_file("tests/fixtures/cw_tool.py");
    let (key, secret) = creds.unwrap_or(("testing", "testing"));
    let out = Command::new(test_python())
        .arg(script)
        .arg(url)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run cw_tool.py");
    assert!(
        out.status.success(),
        "cw_tool.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// What is stored: group → (retention, class, stream → [(timestamp, message)] in order).
#[derive(Debug, Default)]
pub struct Stored {
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Default)]
pub struct Group {
    pub retention: Option<u64>,
    pub class: Option<String>,
    pub streams: BTreeMap<String, Vec<(i64, String)>>,
}

impl Stored {
    pub fn read(url: &str, creds: Option<(&str, &str)>) -> Stored {
        let v: serde_json::Value =
            serde_json::from_str(&cw_tool(url, &["dump"], creds)).expect("dump json");
        let mut s = Stored::default();
        for (g, gv) in v.as_object().expect("object") {
            let mut group = Group {
                retention: gv["retention"].as_u64(),
                class: gv["class"].as_str().map(str::to_owned),
                ..Group::default()
            };
            for (st, evs) in gv["streams"].as_object().expect("streams") {
                let evs = evs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e[0].as_i64().unwrap(), e[1].as_str().unwrap().to_owned()))
                    .collect();
                group.streams.insert(st.clone(), evs);
            }
            s.groups.insert(g.clone(), group);
        }
        s
    }

    /// Messages of one stream, in order; empty when it does not exist.
    pub fn messages(&self, group: &str, stream: &str) -> Vec<String> {
        self.groups
            .get(group)
            .and_then(|g| g.streams.get(stream))
            .map(|e| e.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.groups.values().flat_map(|g| g.streams.values()).map(Vec::len).sum()
    }
}

/// Faults a [`FaultProxy`] injects into PutLogEvents calls, by their number (1-based).
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// Every n-th call is answered 400 `ThrottlingException` (not forwarded); 0 for never.
    pub throttle_every: usize,
    /// Every n-th call is answered 503 (not forwarded); 0 for never.
    pub unavailable_every: usize,
    /// Every n-th call is forwarded (moto stores it) and its connection closed without an
    /// answer; 0 for never.
    pub lose_every: usize,
    /// Every call's first event is forwarded 15 days older than sent, so that moto itself
    /// rejects it in `rejectedLogEventsInfo`. moto 5.2.5 answers the index of the last
    /// too-old event (`tooOldLogEventEndIndex: 0`); the PutLogEvents reference says the
    /// field "is exclusive" (1 for the first event alone), so the proxy answers that. Only
    /// for moto without authentication: the signature no longer matches the body.
    pub age_first_event: bool,
    /// Calls naming this log group (PutLogEvents, CreateLogGroup, CreateLogStream) are
    /// answered 400 `AccessDeniedException`, as when the IAM policy does not allow the group
    /// (moto evaluates a policy's actions, not its resources).
    pub deny_group: Option<&'static str>,
}

/// One PutLogEvents that reached the proxy.
#[derive(Debug, Clone)]
pub struct PutCall {
    pub group: String,
    pub stream: String,
    pub events: usize,
    /// UTF-8 bytes of the messages + 26 per event, as CloudWatch counts a batch.
    pub bytes: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Timestamps in the order sent are non-decreasing.
    pub sorted: bool,
    /// Largest message + 26.
    pub max_event: usize,
    /// `forwarded`, `throttled`, `unavailable` or `lost`.
    pub fate: &'static str,
    /// The HTTP status moto answered (0 when not forwarded or no answer).
    pub status: u16,
    /// The request's header lines as received (`Name: value`, without the CRLF).
    pub headers: Vec<String>,
}

impl PutCall {
    /// Forwarded, answered 200 and the answer reached berth.
    pub fn accepted(&self) -> bool {
        self.fate == "forwarded" && self.status == 200
    }

    /// The value of a request header, trimmed (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
        })
    }
}

/// An HTTP/1.1 proxy in front of moto for the AWS JSON protocol: forwards every request
/// with its headers unchanged (SigV4 signatures stay valid), records and faults
/// PutLogEvents (`X-Amz-Target: Logs_20140328.PutLogEvents`).
pub struct FaultProxy {
    pub addr: String,
    pub calls: Arc<Mutex<Vec<PutCall>>>,
}

impl FaultProxy {
    pub fn start(target: &str, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let calls: Arc<Mutex<Vec<PutCall>>> = Arc::default();
        let (c2, target) = (Arc::clone(&calls), target.to_string());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let (calls, target) = (Arc::clone(&c2), target.clone());
                std::thread::spawn(move || serve(c, &target, faults, &calls));
            }
        });
        FaultProxy { addr, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<PutCall> {
        self.calls.lock().unwrap().clone()
    }
}

fn serve(c: TcpStream, target: &str, f: Faults, calls: &Mutex<Vec<PutCall>>) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    while let Some(req) = super::read_http_request(&mut r) {
        let amz_target = req.header("x-amz-target").unwrap_or_default().to_string();
        let req_headers = req.headers.clone();
        let (request_line, mut body) = (req.line, req.body);
        let mut headers = req.headers;
        if let Some(denied) = f.deny_group {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["logGroupName"].as_str() == Some(denied) {
                let action = amz_target.rsplit('.').next().unwrap_or("").to_string();
                let msg = format!(
                    r#"{{"__type":"AccessDeniedException","message":"User is not authorized to perform: logs:{action} on resource: log-group:{denied} (injected)"}}"#
                );
                let head = format!(
                    "HTTP/1.1 400 X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                    msg.len()
                );
                if w.write_all(head.as_bytes()).and_then(|_| w.write_all(msg.as_bytes())).is_err() {
                    return;
                }
                continue;
            }
        }
        if f.age_first_event && amz_target.ends_with(".PutLogEvents") {
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).expect("PutLogEvents json");
            if let Some(first) = v["logEvents"].get_mut(0) {
                first["timestamp"] =
                    (first["timestamp"].as_i64().unwrap() - 15 * 86_400_000).into();
            }
            body = serde_json::to_vec(&v).unwrap();
            headers.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
            headers.push(format!("Content-Length: {}\r\n", body.len()));
        }
        let mut fate = "forwarded";
        let mut call_index = None;
        if amz_target.ends_with(".PutLogEvents") {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("PutLogEvents json");
            let evs = v["logEvents"].as_array().cloned().unwrap_or_default();
            let ts: Vec<i64> = evs.iter().map(|e| e["timestamp"].as_i64().unwrap()).collect();
            let sizes: Vec<usize> =
                evs.iter().map(|e| e["message"].as_str().unwrap().len() + 26).collect();
            let mut all = calls.lock().unwrap();
            let n = all.len() + 1;
            fate = if f.throttle_every > 0 && n.is_multiple_of(f.throttle_every) {
                "throttled"
            } else if f.unavailable_every > 0 && n.is_multiple_of(f.unavailable_every) {
                "unavailable"
            } else if f.lose_every > 0 && n.is_multiple_of(f.lose_every) {
                "lost"
            } else {
                "forwarded"
            };
            all.push(PutCall {
                group: v["logGroupName"].as_str().unwrap_or_default().to_string(),
                stream: v["logStreamName"].as_str().unwrap_or_default().to_string(),
                events: evs.len(),
                bytes: sizes.iter().sum(),
                min_ts: ts.iter().copied().min().unwrap_or(0),
                max_ts: ts.iter().copied().max().unwrap_or(0),
                sorted: ts.windows(2).all(|w| w[0] <= w[1]),
                max_event: sizes.iter().copied().max().unwrap_or(0),
                fate,
                status: 0,
                headers: req_headers.iter().map(|h| h.trim_end().to_string()).collect(),
            });
            call_index = Some(all.len() - 1);
        }
        let reply = match fate {
            "throttled" => (
                400,
                "application/x-amz-json-1.1".to_string(),
                br#"{"__type":"ThrottlingException","message":"Rate exceeded (injected)"}"#
                    .to_vec(),
            ),
            "unavailable" => (
                503,
                "application/x-amz-json-1.1".to_string(),
                br#"{"__type":"ServiceUnavailableException","message":"injected"}"#.to_vec(),
            ),
            _ => match forward(target, &request_line, &headers, &body) {
                Some(r) => r,
                None => {
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
            },
        };
        if let (Some(i), "forwarded" | "lost") = (call_index, fate) {
            calls.lock().unwrap()[i].status = reply.0;
        }
        if fate == "lost" {
            let _ = w.shutdown(Shutdown::Both);
            return;
        }
        let (status, ctype, mut body) = reply;
        if f.age_first_event && amz_target.ends_with(".PutLogEvents") && status == 200 {
            let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(end) = v.pointer("/rejectedLogEventsInfo/tooOldLogEventEndIndex") {
                let exclusive = end.as_i64().unwrap_or(0) + 1;
                v["rejectedLogEventsInfo"]["tooOldLogEventEndIndex"] = exclusive.into();
                body = serde_json::to_vec(&v).unwrap();
            }
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if w.write_all(head.as_bytes()).and_then(|_| w.write_all(&body)).is_err() {
            return;
        }
    }
}

/// One request to moto with `Connection: close` instead of the client's own `Connection`
/// header (the client's connection to the proxy stays open): (status, content type, body).
pub(super) fn forward(
    target: &str,
    request_line: &str,
    headers: &[String],
    body: &[u8],
) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(target).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = request_line.as_bytes().to_vec();
    for h in headers.iter().filter(|h| !h.to_ascii_lowercase().starts_with("connection:")) {
        req.extend_from_slice(h.as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let ctype = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "application/x-amz-json-1.1".into());
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = super::dechunk(&String::from_utf8_lossy(&body)).into_bytes();
    }
    Some((status, ctype, body))
}

/// tests/fixtures/ecs_tool.py's JSON answer (a host set up in moto: see the script), run
/// with `creds`.
pub fn ecs_tool(url: &str, args: &[&str], creds: (&str, &str)) -> serde_json::Value {
    let out = Command::new(test_python())
        .arg(super::package_file("tests/fixtures/ecs_tool.py"))
        .arg(url)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", creds.0)
        .env("AWS_SECRET_ACCESS_KEY", creds.1)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .expect("run ecs_tool.py");
    assert!(
        out.status.success(),
        "ecs_tool.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ecs_tool.py json")
}

/// The AWS configuration berth's `[ecs]` section would give (region us-east-1, no role),
/// with `creds` and every service at `endpoint`: the SDK reads `AWS_ENDPOINT_URL` when it
/// loads, so this sets it, and keeps out the profile files and instance metadata of the
/// machine running the tests. Process state: nextest runs each test in a process of its
/// own; under `cargo test` the caller holds its crate's lock for the whole test.
pub async fn aws_config(endpoint: &str, creds: (&str, &str)) -> berth::aws::AwsConfig {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
    std::env::set_var("AWS_CONFIG_FILE", "/dev/null");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let provider =
        SharedCredentialsProvider::new(Credentials::new(creds.0, creds.1, None, None, "test"));
    let aws = berth::aws::Aws::with_credentials_provider(berth::imds::Imds::disabled(), provider);
    let auth = berth::config::AwsAuth {
        region: Some("us-east-1".into()),
        role_arn: None,
        external_id: None,
    };
    aws.load(&auth).await.unwrap()
}
