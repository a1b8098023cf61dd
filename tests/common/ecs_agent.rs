//! A fake ECS container agent introspection API on 127.0.0.1, for tests. Faithful to the
//! agent's v1 handlers (amazon-ecs-agent `agent/handlers/v1`):
//! - `GET /v1/metadata`: `Cluster`, `ContainerInstanceArn` (`null` until registered),
//!   `Version`;
//! - `GET /v1/tasks`: `{"Tasks": [...]}` with `Arn`, `DesiredStatus` (left out when empty),
//!   `KnownStatus`, `Family`, `Version`, `Containers[{DockerId, DockerName, Name}]`;
//! - `?dockerid=`: a full id, or a short one of at most 12 characters (400 when it matches
//!   several tasks); unknown: 404 with the agent's empty task body; with `taskarn` too: 400;
//! - any other path: 404.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct FakeTask {
    pub arn: String,
    pub desired: String,
    pub known: String,
    pub family: String,
    pub version: String,
    /// (docker id, docker name, container name)
    pub containers: Vec<(String, String, String)>,
}

#[derive(Default)]
pub struct AgentState {
    /// Answer 503 to everything (the agent restarting, as during an agent update).
    pub down: bool,
    pub cluster: String,
    pub instance_arn: Option<String>,
    pub tasks: Vec<FakeTask>,
}

pub struct FakeAgent {
    pub url: String,
    pub state: Arc<Mutex<AgentState>>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

fn task_json(t: &FakeTask) -> serde_json::Value {
    let containers: Vec<_> = t
        .containers
        .iter()
        .map(|(id, dn, n)| serde_json::json!({"DockerId": id, "DockerName": dn, "Name": n}))
        .collect();
    let mut v = serde_json::json!({
        "Arn": t.arn, "KnownStatus": t.known, "Family": t.family, "Version": t.version,
        "Containers": containers,
    });
    if !t.desired.is_empty() {
        v["DesiredStatus"] = serde_json::Value::from(t.desired.clone());
    }
    v
}

fn answer(st: &AgentState, target: &str) -> (u16, String) {
    if st.down {
        return (503, String::new());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    match path {
        "/v1/metadata" => (
            200,
            serde_json::json!({"Cluster": st.cluster, "ContainerInstanceArn": st.instance_arn,
                "Version": "Amazon ECS Agent - v1.89.0 (fake)"})
            .to_string(),
        ),
        "/v1/tasks" => match (get("dockerid"), get("taskarn")) {
            (Some(_), Some(_)) => (400, String::new()),
            (Some(id), None) => {
                let hits: Vec<&FakeTask> = st
                    .tasks
                    .iter()
                    .filter(|t| {
                        t.containers.iter().any(|(d, _, _)| {
                            if id.len() > 12 {
                                d == id
                            } else {
                                d.starts_with(id)
                            }
                        })
                    })
                    .collect();
                match hits.as_slice() {
                    [t] => (200, task_json(t).to_string()),
                    [] => (
                        404,
                        r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#
                            .to_string(),
                    ),
                    _ => (400, String::new()),
                }
            }
            (None, Some(arn)) => match st.tasks.iter().find(|t| t.arn == arn) {
                Some(t) => (200, task_json(t).to_string()),
                None => (
                    404,
                    r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#
                        .to_string(),
                ),
            },
            (None, None) => (
                200,
                serde_json::json!({"Tasks": st.tasks.iter().map(task_json).collect::<Vec<_>>()})
                    .to_string(),
            ),
        },
        _ => (404, "404 page not found\n".to_string()),
    }
}

impl FakeAgent {
    pub fn start(state: AgentState) -> FakeAgent {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind fake ecs agent");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(state));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (st, reqs) = (Arc::clone(&state), Arc::clone(&requests));
        // The accept thread ends with the test process.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (st, reqs) = (Arc::clone(&st), Arc::clone(&reqs));
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().expect("clone"));
                    let mut w = s;
                    while let Some(req) = super::read_http_request(&mut r) {
                        let target = req.line.split_whitespace().nth(1).unwrap_or("").to_string();
                        reqs.lock().unwrap().push(target.clone());
                        let (status, body) = answer(&st.lock().unwrap(), &target);
                        let reason = match status {
                            200 => "OK",
                            400 => "Bad Request",
                            503 => "Service Unavailable",
                            _ => "Not Found",
                        };
                        let resp = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeAgent { url, state, requests }
    }
}
