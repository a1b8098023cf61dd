//! A fake EC2 instance metadata service (IMDSv2 only), on 127.0.0.1, for tests.
//!
//! Faithful to the documented behaviour berth relies on:
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` (1..=21600),
//!   else 400; it answers a new token as text, with the TTL granted in the same header
//!   (the SDKs' IMDS clients require it).
//! - a GET without `X-aws-ec2-metadata-token`, or with one it did not issue, is 401
//!   (IMDSv1 is off, as with `HttpTokens=required`);
//! - the four paths berth reads answer their value; others 404.
//!
//! Every request is recorded (method, path, token header) for the tests' assertions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub ttl: Option<String>,
    pub token: Option<String>,
    pub status: u16,
}

pub struct FakeImds {
    pub endpoint: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Paths whose answers a test flips (`set`): the Auto Scaling target lifecycle state,
    /// the Spot notice, a rebalance recommendation.
    paths: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

pub const INSTANCE_ID: &str = "i-0123456789abcdef0";
pub const AZ: &str = "eu-west-1b";
pub const REGION: &str = "eu-west-1";
pub const INSTANCE_TYPE: &str = "m6i.large";

struct State {
    instance_id: String,
    paths: Arc<Mutex<std::collections::HashMap<String, String>>>,
    tokens: Vec<String>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeImds {
    pub fn start() -> FakeImds {
        FakeImds::start_as(INSTANCE_ID)
    }

    /// With another instance id (one that exists in moto's EC2, say).
    pub fn start_as(instance_id: &str) -> FakeImds {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind fake imds");
        let endpoint = format!("http://{}", l.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let paths: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
        let state = Arc::new(Mutex::new(State {
            instance_id: instance_id.to_string(),
            paths: Arc::clone(&paths),
            tokens: Vec::new(),
            requests: Arc::clone(&requests),
        }));
        // The accept thread ends with the test process.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let st = Arc::clone(&state);
                std::thread::spawn(move || serve(s, &st));
            }
        });
        FakeImds { endpoint, requests, paths }
    }

    /// Answer `path` (e.g. `/latest/meta-data/autoscaling/target-lifecycle-state`) with
    /// `value` from now on; `None`: 404 again, as before the event.
    pub fn set(&self, path: &str, value: Option<&str>) {
        let mut p = self.paths.lock().unwrap();
        match value {
            Some(v) => p.insert(path.to_string(), v.to_string()),
            None => p.remove(path),
        };
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(s: TcpStream, state: &Mutex<State>) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut ttl, mut token, mut len) = (None, None, 0usize);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else { continue };
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "x-aws-ec2-metadata-token-ttl-seconds" => ttl = Some(v),
                "x-aws-ec2-metadata-token" => token = Some(v),
                "content-length" => len = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let (status, text) = {
            let mut st = state.lock().unwrap();
            let answer = match (method.as_str(), path.as_str()) {
                ("PUT", "/latest/api/token") => {
                    match ttl.as_deref().and_then(|t| t.parse::<u32>().ok()) {
                        Some(1..=21600) => {
                            let t = format!("fake-token-{}", st.tokens.len() + 1);
                            st.tokens.push(t.clone());
                            (200, t)
                        }
                        _ => (400, "missing or invalid ttl".to_string()),
                    }
                }
                ("GET", p) => {
                    if !token.as_ref().is_some_and(|t| st.tokens.contains(t)) {
                        (401, String::new())
                    } else {
                        match p {
                            "/latest/meta-data/instance-id" => (200, st.instance_id.clone()),
                            "/latest/meta-data/placement/availability-zone" => {
                                (200, AZ.to_string())
                            }
                            "/latest/meta-data/placement/region" => (200, REGION.to_string()),
                            "/latest/meta-data/instance-type" => (200, INSTANCE_TYPE.to_string()),
                            other => match st.paths.lock().unwrap().get(other) {
                                Some(v) => (200, v.clone()),
                                None => (404, String::new()),
                            },
                        }
                    }
                }
                _ => (405, String::new()),
            };
            st.requests.lock().unwrap().push(Request {
                method: method.clone(),
                path: path.clone(),
                ttl: ttl.clone(),
                token: token.clone(),
                status: answer.0,
            });
            answer
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let granted = match (method.as_str(), status) {
            ("PUT", 200) => {
                format!(
                    "X-aws-ec2-metadata-token-ttl-seconds: {}\r\n",
                    ttl.as_deref().unwrap_or("")
                )
            }
            _ => String::new(),
        };
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n{granted}Content-Length: {}\r\n\r\n{text}", text.len());
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// The fake itself behaves as documented (so berth's test against it means something).
pub fn self_check(f: &FakeImds) {
    let req = |raw: String| -> u16 {
        let mut s = TcpStream::connect(f.endpoint.trim_start_matches("http://"))
            .expect("connect fake imds");
        s.write_all(raw.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    };
    assert_eq!(
        req("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into()),
        400,
        "PUT without TTL"
    );
    assert_eq!(
        req("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        401,
        "GET without token"
    );
    assert_eq!(req("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: forged\r\n\r\n".into()), 401, "GET with a bad token");
    f.requests.lock().unwrap().clear();
}
