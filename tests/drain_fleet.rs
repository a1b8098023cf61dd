//! A fleet simulation: many hosts — each a `berth run` with its own data dir, its own fake
//! IMDS (its own instance id and lifecycle state) and its own fake ECS agent — against one
//! moto cluster and Auto Scaling group (behind the recording lifecycle proxy), with IAM on:
//! every host signs with the key of a user holding only packaging/iam's capacity and drain
//! policies. Several hosts are scaled in at once while their tasks are still running and
//! logging through berth.
//!
//! Checked: no task cut short (every completion after its host's task stopped), no line lost
//! (each host's file sink has every line its task sent, all acknowledged), every lifecycle
//! action completed exactly once, the hosts not scaled in left alone. Reported (stderr,
//! `--no-capture`): each drained host's time from notice to completion and heartbeats, and
//! the AWS calls per drained host by action.
//!
//! Size: `BERTH_FLEET_HOSTS` (default 4) hosts, `BERTH_FLEET_DRAIN` (default 2) of them
//! scaled in; `scripts/fleet-sim HOSTS DRAIN` runs it larger.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::ecs_agent::{AgentState, FakeAgent, FakeTask};
use common::imds::FakeImds;
use common::lifecycle::{LifecycleProxy, COMPLETE, HEARTBEAT};
use common::moto::{ecs_tool, Moto};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const LIFECYCLE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const POLICIES: [&str; 2] =
    ["packaging/iam/berth-capacity-policy.json", "packaging/iam/berth-drain-policy.json"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Host {
    instance: String,
    arn: String,
    imds: FakeImds,
    agent: FakeAgent,
    berth: Berth,
    task: FakeTask,
}

fn config(agent: &str) -> String {
    format!(
        r#"
[input.forward]
listen = ["tcp://127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[buffer]
path = "{{dir}}/buffer"
[shutdown]
grace_period = "2s"
[enrich.ec2]
enabled = false
[enrich.docker]
enabled = false
[ecs]
agent_url = "{agent}"
region = "us-east-1"
[drain]
enabled = true
poll_interval = "1s"
heartbeat_fraction = 0.1
[[sink]]
name = "out"
type = "file"
match = "**"
path = "{{dir}}/out/{{tag}}.ndjson"
"#
    )
}

fn drain_view(b: &Berth) -> Value {
    let (_, body) = b.http_get("/v1/drain");
    serde_json::from_str(&dechunk(&body)).unwrap_or(Value::Null)
}

/// The host's task: `lines` lines through `berth cat --ack` over `secs` seconds, then the
/// task stops (as the agent reports it). Returns when it stopped.
fn run_task(h: &Host, tag: &str, lines: usize, secs: f64) -> Instant {
    let mut cat = std::process::Command::new(berth_bin())
        .args(["cat", "--address", &format!("tcp://{}", h.berth.tcp_addr()), "--ack", tag])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cat.stdin.take().unwrap();
    let pause = Duration::from_secs_f64(secs / lines as f64);
    for n in 0..lines {
        writeln!(stdin, "{{\"n\": {n}, \"host\": \"{}\"}}", h.instance).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(pause);
    }
    drop(stdin);
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "berth cat: {}", String::from_utf8_lossy(&out.stderr));
    let mut stopped = h.task.clone();
    stopped.known = "STOPPED".into();
    stopped.desired = "STOPPED".into();
    h.agent.state.lock().unwrap().tasks = vec![stopped];
    Instant::now()
}

#[test]
fn a_fleet_scaled_in_at_once_drains_every_host_once_with_every_line() {
    let hosts_n = env_usize("BERTH_FLEET_HOSTS", 4).max(2);
    let drain_n = env_usize("BERTH_FLEET_DRAIN", 2).clamp(1, hosts_n);
    // The setup's own calls go unauthenticated; every later one is checked against IAM.
    let setup_calls = 5 + hosts_n + 2 + 2 * POLICIES.len();
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", &setup_calls.to_string())]);
    let mut args = vec!["fleet".to_string(), hosts_n.to_string(), "30".to_string()];
    args.extend(POLICIES.iter().map(|p| package_file(p).display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let fleet = ecs_tool(&moto.url(), &argv, ("testing", "testing"));
    assert_eq!(fleet["calls"].as_u64(), Some(setup_calls as u64), "{fleet}");
    let key = fleet["allowed"]["key"].as_str().unwrap().to_string();
    let secret = fleet["allowed"]["secret"].as_str().unwrap().to_string();
    let (group, hook) = (fleet["group"].as_str().unwrap(), fleet["hook"].as_str().unwrap());
    let proxy = LifecycleProxy::start(&moto.url());
    proxy.register_hook(group, hook);

    let started = Instant::now();
    let hosts: Vec<Host> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let instance = h["instance"].as_str().unwrap().to_string();
            let arn = h["arn"].as_str().unwrap().to_string();
            let imds = FakeImds::start_as(&instance);
            imds.set(LIFECYCLE, Some("InService"));
            let task = FakeTask {
                arn: format!("arn:aws:ecs:us-east-1:123456789012:task/fleet/{i:032x}"),
                desired: "RUNNING".into(),
                known: "RUNNING".into(),
                family: "job".into(),
                version: "1".into(),
                containers: vec![],
            };
            let agent = FakeAgent::start(AgentState {
                down: false,
                cluster: "fleet".into(),
                instance_arn: Some(arn.clone()),
                tasks: vec![task.clone()],
            });
            let env = [
                ("AWS_ENDPOINT_URL", proxy.url()),
                ("AWS_ACCESS_KEY_ID", key.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
                ("AWS_CONFIG_FILE", "/dev/null".into()),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
                ("AWS_EC2_METADATA_DISABLED", "false".into()),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint.clone()),
            ];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let berth = start_in(tmpfs_dir(), &config(&agent.url), &env);
            Host { instance, arn, imds, agent, berth, task }
        })
        .collect();
    eprintln!("fleet: {hosts_n} hosts started in {:?}", started.elapsed());
    for h in &hosts {
        let v = drain_view(&h.berth);
        assert!(v["preflight"].as_array().unwrap().is_empty(), "preflight: {v:#}");
    }

    // Scale in `drain_n` hosts at once, their tasks still running for 4 to 10 s more and
    // logging all along; the others' tasks go on.
    let notice = Instant::now();
    for h in &hosts[..drain_n] {
        proxy.start_action(&h.instance);
        h.imds.set(LIFECYCLE, Some("Terminated"));
    }
    let lines = 40;
    let stops: Vec<Instant> = std::thread::scope(|s| {
        let jobs: Vec<_> = hosts[..drain_n]
            .iter()
            .enumerate()
            .map(|(i, h)| s.spawn(move || run_task(h, "job", lines, 4.0 + (i % 4) as f64 * 2.0)))
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });

    let mut report = Vec::new();
    for (i, h) in hosts[..drain_n].iter().enumerate() {
        let v = wait_for(Duration::from_secs(90), "the host's drain to end", || {
            let v = drain_view(&h.berth);
            (v["drain"]["step"] == "done").then_some(v)
        });
        assert_eq!(v["drain"]["outcome"], "drained", "host {i}: {v:#}\n{}", h.berth.stderr_text());
        let completes: Vec<_> = proxy
            .calls_of(COMPLETE)
            .into_iter()
            .filter(|c| c.param("InstanceId") == Some(h.instance.as_str()))
            .collect();
        assert_eq!(completes.len(), 1, "host {i}: one completion: {completes:?}");
        assert!(
            completes[0].succeeded_here()
                && completes[0].param("LifecycleActionResult") == Some("CONTINUE")
        );
        assert!(completes[0].at > stops[i], "host {i}: completed before its task stopped");
        let got = read_ndjson(&h.berth.path().join("out/job.ndjson"));
        let mut ns: Vec<i64> = got.iter().filter_map(|e| e["record"]["n"].as_i64()).collect();
        ns.sort_unstable();
        assert_eq!(ns, (0..lines as i64).collect::<Vec<_>>(), "host {i}: every line once");
        let beats = proxy
            .calls_of(HEARTBEAT)
            .iter()
            .filter(|c| c.param("InstanceId") == Some(h.instance.as_str()))
            .count();
        report.push((h.instance.clone(), completes[0].at.duration_since(notice), beats));
    }
    for (i, h) in hosts[drain_n..].iter().enumerate() {
        let v = drain_view(&h.berth);
        assert_eq!(v["drain"], Value::Null, "host {}: left alone: {v:#}", drain_n + i);
        let status = ecs_tool(&moto.url(), &["status", "fleet", &h.arn], (&key, &secret));
        assert_eq!(status, "ACTIVE");
        let touched =
            proxy.calls().iter().any(|c| c.param("InstanceId") == Some(h.instance.as_str()));
        assert!(!touched, "no lifecycle call names a host not scaled in");
    }
    for h in &hosts[..drain_n] {
        let status = ecs_tool(&moto.url(), &["status", "fleet", &h.arn], (&key, &secret));
        assert_eq!(status, "DRAINING");
    }

    // Nothing was refused by IAM, and what the drains cost.
    let calls = proxy.calls();
    let refused: Vec<_> = calls.iter().filter(|c| !c.answered_here && c.status >= 400).collect();
    assert!(refused.is_empty(), "moto (IAM) refused: {refused:?}");
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.at >= notice) {
        *by_action.entry(c.action.clone()).or_default() += 1;
    }
    eprintln!("fleet: {drain_n} of {hosts_n} hosts scaled in at once");
    for (instance, took, beats) in &report {
        eprintln!("fleet:   {instance}: notice to completion {took:.1?}, {beats} heartbeats");
    }
    for (action, n) in &by_action {
        eprintln!(
            "fleet:   {action}: {n} calls, {:.1} per drained host",
            *n as f64 / drain_n as f64
        );
    }
}
