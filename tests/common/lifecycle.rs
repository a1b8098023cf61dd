//! A recording proxy in front of moto for the Auto Scaling Query protocol (form-encoded
//! POST bodies, `Action=…&Version=2011-01-01&…`), because moto 5.2.5 answers
//! `RecordLifecycleActionHeartbeat` and `CompleteLifecycleAction` with an HTTP 500 (not
//! implemented). Every other request is forwarded unchanged, headers and body, so SigV4
//! signatures stay valid; those two the proxy answers itself as the real service does:
//!
//! - parameters checked: `AutoScalingGroupName` and `LifecycleHookName` present and naming
//!   a group/hook registered with [`LifecycleProxy::register_hook`], `InstanceId` or
//!   `LifecycleActionToken` present, `LifecycleActionResult` ∈ {CONTINUE, ABANDON} for a
//!   completion; anything else is answered 400 `ValidationError`;
//! - per-instance action state: an action is active from [`LifecycleProxy::start_action`]
//!   until a completion ends it; a heartbeat or completion for an instance with no active
//!   action is answered 400 `ValidationError` "No active Lifecycle Action found with
//!   instance ID i-…" (or "… with token …"), the service's words and XML error shape;
//! - success is the documented empty result (`<…Response><…Result/><ResponseMetadata>…`).
//!
//! One action per instance (the group's terminating hooks are not told apart): enough for
//! a host with one terminating hook, which is what the drain tests set up. The codes and
//! the "No active Lifecycle Action found with …" wording are the service's; the messages
//! for malformed parameters are the proxy's own (only their code is the service's). Every
//! request is recorded ([`LifecycleCall`]): action, parameters, when, what it was answered.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
pub const HEARTBEAT: &str = "RecordLifecycleActionHeartbeat";
pub const COMPLETE: &str = "CompleteLifecycleAction";

/// One request that reached the proxy.
#[derive(Debug, Clone)]
pub struct LifecycleCall {
    /// The operation: a Query call's `Action` parameter (`CompleteLifecycleAction`,
    /// `DescribeLifecycleHooks`, …), a JSON call's `X-Amz-Target` operation
    /// (`UpdateContainerInstancesState` for ECS); empty when it names neither.
    pub action: String,
    /// Every form parameter of a Query call, decoded (`Action` and `Version` included);
    /// empty for a JSON call.
    pub params: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
    /// Answered by the proxy (heartbeat and completion) rather than forwarded to moto.
    pub answered_here: bool,
    /// The HTTP status answered (moto's for a forwarded call; 0 when moto gave none).
    pub status: u16,
    /// For an error the proxy answered: its code (`ValidationError`) and message.
    pub error: Option<(String, String)>,
}

impl LifecycleCall {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Answered here with the empty success result.
    pub fn succeeded_here(&self) -> bool {
        self.answered_here && self.status == 200
    }
}

/// Where an instance's lifecycle action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionState {
    Active,
    Completed,
}

#[derive(Default)]
struct State {
    /// (group, hook) pairs the test registered.
    hooks: BTreeSet<(String, String)>,
    /// By instance id.
    actions: BTreeMap<String, ActionState>,
    /// Token → instance id.
    tokens: BTreeMap<String, String>,
    calls: Vec<LifecycleCall>,
    requests: u64,
}

/// The proxy; threads serve it until the test process ends (like [`super::moto::FaultProxy`]).
pub struct LifecycleProxy {
    addr: String,
    state: Arc<Mutex<State>>,
}

impl LifecycleProxy {
    /// In front of moto at `moto_url` (`http://HOST:PORT`), on a port the OS picks.
    pub fn start(moto_url: &str) -> LifecycleProxy {
        let target = moto_url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind lifecycle proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let state: Arc<Mutex<State>> = Arc::default();
        let s2 = Arc::clone(&state);
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let (state, target) = (Arc::clone(&s2), target.clone());
                std::thread::spawn(move || serve(c, &target, &state));
            }
        });
        LifecycleProxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Heartbeats and completions may name `hook` of `group`.
    pub fn register_hook(&self, group: &str, hook: &str) {
        self.state.lock().unwrap().hooks.insert((group.to_string(), hook.to_string()));
    }

    /// `instance` enters the wait: its action is active (again, if it had been completed).
    /// Returns the action's `LifecycleActionToken`, which names it as well as the id does.
    pub fn start_action(&self, instance: &str) -> String {
        let mut s = self.state.lock().unwrap();
        s.actions.insert(instance.to_string(), ActionState::Active);
        let token = format!("{:08x}-0000-4000-8000-{:012x}", s.tokens.len() + 1, s.requests);
        s.tokens.insert(token.clone(), instance.to_string());
        token
    }

    /// Whether `instance`'s action is active now.
    pub fn is_active(&self, instance: &str) -> bool {
        self.state.lock().unwrap().actions.get(instance) == Some(&ActionState::Active)
    }

    /// Every request so far, in arrival order.
    pub fn calls(&self) -> Vec<LifecycleCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// A raw Query call to the proxy (unsigned, `Connection: close`): `body` is the form,
    /// e.g. `Action=CompleteLifecycleAction&Version=2011-01-01&…`. (status, body).
    pub fn post(&self, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect lifecycle proxy");
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // The proxy serves a connection until its client ends it: end it, then read.
        s.shutdown(Shutdown::Write).unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
        let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// The calls of one `Action`.
    pub fn calls_of(&self, action: &str) -> Vec<LifecycleCall> {
        self.calls().into_iter().filter(|c| c.action == action).collect()
    }
}

fn serve(c: TcpStream, target: &str, state: &Mutex<State>) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    while let Some(req) = super::read_http_request(&mut r) {
        let at = Instant::now();
        // A Query call names its action in the form; a JSON call (ECS) in its target header.
        let is_form = req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        let params = if is_form { form(&req.body) } else { BTreeMap::new() };
        let action = match (params.get("Action"), req.header("x-amz-target")) {
            (Some(a), _) => a.clone(),
            (None, Some(t)) => t.rsplit('.').next().unwrap_or(t).to_string(),
            (None, None) => String::new(),
        };
        let mut call =
            LifecycleCall { action, params, at, answered_here: false, status: 0, error: None };
        let reply = if call.action == HEARTBEAT || call.action == COMPLETE {
            call.answered_here = true;
            let mut s = state.lock().unwrap();
            s.requests += 1;
            let request_id = format!("{:08x}-1111-4222-8333-{:012x}", s.requests, s.requests);
            Some(match answer(&mut s, &call.action, &call.params) {
                Ok(()) => (200, "text/xml".to_string(), success(&call.action, &request_id)),
                Err(message) => {
                    let body = error_xml("ValidationError", &message, &request_id);
                    call.error = Some(("ValidationError".to_string(), message));
                    (400, "text/xml".to_string(), body.into_bytes())
                }
            })
        } else {
            super::moto::forward(target, &req.line, &req.headers, &req.body)
        };
        call.status = reply.as_ref().map_or(0, |r| r.0);
        state.lock().unwrap().calls.push(call);
        let Some((status, ctype, body)) = reply else {
            let _ = w.shutdown(Shutdown::Both);
            return;
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if w.write_all(head.as_bytes()).and_then(|_| w.write_all(&body)).is_err() {
            return;
        }
    }
}

/// Check a heartbeat or completion and apply it: `Err` is the `ValidationError` message.
fn answer(s: &mut State, action: &str, p: &BTreeMap<String, String>) -> Result<(), String> {
    let group = required(p, "AutoScalingGroupName")?;
    let hook = required(p, "LifecycleHookName")?;
    if !s.hooks.iter().any(|(g, _)| g == group) {
        return Err(format!("Group {group} not found"));
    }
    if !s.hooks.contains(&(group.to_string(), hook.to_string())) {
        return Err(format!("No Lifecycle Hook found with name {hook} for group {group}"));
    }
    if action == COMPLETE {
        let result = required(p, "LifecycleActionResult")?;
        if result != "CONTINUE" && result != "ABANDON" {
            return Err(format!(
                "Value '{result}' at 'lifecycleActionResult' failed to satisfy constraint: \
                 Member must be CONTINUE or ABANDON"
            ));
        }
    }
    let (instance, by) = match (p.get("InstanceId"), p.get("LifecycleActionToken")) {
        (Some(id), _) if !id.is_empty() => (id.clone(), format!("instance ID {id}")),
        (_, Some(token)) if !token.is_empty() => match s.tokens.get(token) {
            Some(id) => (id.clone(), format!("token {token}")),
            None => return Err(format!("No active Lifecycle Action found with token {token}")),
        },
        _ => return Err("Either InstanceId or LifecycleActionToken must be specified".to_string()),
    };
    match s.actions.get(&instance) {
        Some(ActionState::Active) => {
            if action == COMPLETE {
                s.actions.insert(instance, ActionState::Completed);
            }
            Ok(())
        }
        _ => Err(format!("No active Lifecycle Action found with {by}")),
    }
}

fn required<'a>(p: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, String> {
    match p.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!(
            "1 validation error detected: Value null at '{name}' failed to satisfy \
             constraint: Member must not be null"
        )),
    }
}

/// The documented success answer: an empty result and the request id.
fn success(action: &str, request_id: &str) -> Vec<u8> {
    format!(
        "<{action}Response xmlns=\"{XMLNS}\"><{action}Result/><ResponseMetadata>\
         <RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
    )
    .into_bytes()
}

/// The Query protocol's error answer.
fn error_xml(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
        xml_escape(message)
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

/// `application/x-www-form-urlencoded` decoded: `+` is a space, `%XX` a byte; a pair that
/// does not decode (a bad escape, not UTF-8) is left out.
pub fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
