//! The drain end to end: `berth run` with `[drain]` on, against moto_server for ECS and Auto
//! Scaling (a host set up as a real one by tests/fixtures/ecs_tool.py) behind the recording
//! lifecycle proxy (moto 5.2 answers neither `RecordLifecycleActionHeartbeat` nor
//! `CompleteLifecycleAction`: the proxy answers them as documented and checks their
//! parameters), a fake IMDSv2 whose target lifecycle state and Spot notice flip on command,
//! the fake ECS agent, this machine's real Docker engine (a container logging through
//! Docker's own `fluentd` driver) and osmem-server behind a proxy that can take it down.
//!
//! Checked: the order (DRAINING, heartbeats at their rate, completion only once the
//! containers exited, the ECS API agrees and their last lines are in the sink); a SIGKILL
//! mid-drain resumes without setting DRAINING again and completes exactly once; a SIGTERM
//! as the last task leaves RUNNING is part of the drain; a rejected heartbeat stops it;
//! warm-pool states do nothing; the Spot path; `berth drain --wait` and `--abort`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::docker::{docker, docker_ok, docker_ready, image};
use common::ecs_agent::{AgentState, FakeAgent, FakeTask};
use common::imds::FakeImds;
use common::lifecycle::{LifecycleProxy, COMPLETE, HEARTBEAT};
use common::moto::{ecs_tool, Moto};

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const ROOT: (&str, &str) = ("testing", "testing");
const HOOK: &str = "berth-drain";
const LIFECYCLE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const SPOT: &str = "/latest/meta-data/spot/instance-action";
const UPDATE_STATE: &str = "UpdateContainerInstancesState";
/// Long enough for the slowest step here (a drain's whole final phase), short of a hung test.
const LONG: Duration = Duration::from_secs(90);

/// A container removed on drop.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// moto with the host set up, the lifecycle proxy in front of it (the group's terminating
/// hook registered), the fake IMDS as the group's instance and the fake agent.
struct World {
    moto: Moto,
    proxy: LifecycleProxy,
    imds: FakeImds,
    agent: FakeAgent,
    cluster: String,
    ci_arn: String,
    instance: String,
    group: String,
}

impl World {
    fn start() -> World {
        let moto = Moto::start(&[]);
        let host = ecs_tool(&moto.url(), &["setup"], ROOT);
        let s = |k: &str| host[k].as_str().unwrap().to_string();
        let (instance, group, ci_arn) =
            (s("asg_instance"), s("group"), s("container_instance_arn"));
        // The shortest heartbeat timeout the API takes.
        ecs_tool(&moto.url(), &["hook", &group, HOOK, "terminating", "30", "ABANDON"], ROOT);
        let proxy = LifecycleProxy::start(&moto.url());
        proxy.register_hook(&group, HOOK);
        let imds = FakeImds::start_as(&instance);
        imds.set(LIFECYCLE, Some("InService"));
        let agent = FakeAgent::start(AgentState {
            down: false,
            cluster: "prod".into(),
            instance_arn: Some(ci_arn.clone()),
            tasks: vec![],
        });
        World { moto, proxy, imds, agent, cluster: s("cluster"), ci_arn, instance, group }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.proxy.url()),
            ("AWS_ACCESS_KEY_ID", ROOT.0.into()),
            ("AWS_SECRET_ACCESS_KEY", ROOT.1.into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "false".into()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.endpoint.clone()),
        ]
    }

    fn status(&self) -> String {
        ecs_tool(&self.moto.url(), &["status", &self.cluster, &self.ci_arn], ROOT)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// ECS sees the tasks it placed here stop (moto's own two, from `setup`).
    fn stop_ecs_tasks(&self) {
        ecs_tool(&self.moto.url(), &["stop-tasks", &self.cluster], ROOT);
    }

    fn calls_of(&self, action: &str) -> Vec<common::lifecycle::LifecycleCall> {
        self.proxy.calls_of(action)
    }
}

fn envs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn config(world: &World, sinks: &str, extra: &str) -> String {
    format!(
        r#"
[input.forward]
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/berth.sock"]
[admin]
listen = "127.0.0.1:0"
[buffer]
path = "{{dir}}/buffer"
[shutdown]
grace_period = "2s"
[enrich.ec2]
enabled = false
[ecs]
agent_url = "{agent}"
region = "us-east-1"
daemon_task_families = ["log-router"]
[drain]
enabled = true
poll_interval = "1s"
heartbeat_fraction = 0.1
stop_timeout = "60s"
{extra}
{sinks}
"#,
        agent = world.agent.url
    )
}

const NULL_SINK: &str = "[[sink]]\nname = \"null\"\ntype = \"null\"\nmatch = \"**\"\n";

fn view(b: &Berth) -> Value {
    let (status, body) = b.http_get("/v1/drain");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&dechunk(&body)).unwrap()
}

fn wait_view(b: &Berth, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        last = view(b);
        if ok(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the drain never showed {what}; last view:\n{last:#}\n{}", b.stderr_text());
}

fn fake_task(arn: &str, family: &str, known: &str, desired: &str, id: &str) -> FakeTask {
    FakeTask {
        arn: arn.into(),
        desired: desired.into(),
        known: known.into(),
        family: family.into(),
        version: "1".into(),
        containers: vec![(id.into(), format!("ecs-{family}-1-main"), "main".into())],
    }
}

fn heartbeat_gaps(world: &World) -> Vec<f64> {
    let beats = world.calls_of(HEARTBEAT);
    beats.windows(2).map(|w| w[1].at.duration_since(w[0].at).as_secs_f64()).collect()
}

#[test]
fn a_lifecycle_drain_survives_sigkill_and_sigterm_and_completes_once_after_the_last_lines() {
    if !docker_ready("a_lifecycle_drain") {
        return;
    }
    let world = World::start();
    let osmem = Osmem::start();
    let search = Proxy::start(&osmem.addr);
    let sinks = format!(
        "[[sink]]\nname = \"search\"\ntype = \"elasticsearch\"\nmatch = \"**\"\nendpoints = [\"{}\"]\nindex = \"logs\"\nflush_interval = \"50ms\"\n",
        search.url()
    );
    let cfg = config(&world, &sinks, "");
    let env = world.env();
    let dir = tmpfs_dir();
    let ctl = tempfile::tempdir().unwrap();
    let mut b = start_in(dir, &cfg, &envs(&env));
    let sock = b.unix_path();

    // The work: ticks until the test creates /ctl/stop, then its last line, then exits.
    let pid = std::process::id();
    let marker = format!("LAST-{pid}");
    let name = format!("berth-drain-work-{pid}");
    let script = format!(
        "i=0; while [ ! -e /ctl/stop ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done; echo {marker}"
    );
    let work_id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--log-driver",
        "fluentd",
        "--log-opt",
        &format!("fluentd-address=unix://{}", sock.display()),
        "--log-opt",
        "tag=work",
        "-v",
        &format!("{}:/ctl", ctl.path().display()),
        image(),
        "sh",
        "-c",
        &script,
    ]);
    let _work = Container(name.clone());
    let daemon_name = format!("berth-drain-daemon-{pid}");
    let daemon_id = docker_ok(&["run", "-d", "--name", &daemon_name, image(), "sleep", "600"]);
    let _daemon = Container(daemon_name);
    let task_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{:0>32x}", pid);
    let daemon_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{:0>32x}", pid + 1);
    let set_work = |known: &str, desired: &str| {
        world.agent.state.lock().unwrap().tasks = vec![
            fake_task(&task_arn, "batch", known, desired, &work_id),
            fake_task(&daemon_arn, "log-router", "RUNNING", "RUNNING", &daemon_id),
        ];
    };
    set_work("RUNNING", "RUNNING");
    wait_for(LONG, "the work's lines in the sink", || (osmem.count("logs") > 0).then_some(()));
    assert_eq!(view(&b)["drain"], Value::Null, "nothing started a drain yet");

    // The group scales in: the lifecycle action starts and IMDS says so.
    world.proxy.start_action(&world.instance);
    world.imds.set(LIFECYCLE, Some("Terminated"));
    let v = wait_view(&b, "the first heartbeat", |v| v["drain"]["heartbeats"] == 1);
    assert_eq!(v["drain"]["trigger"]["kind"], "asg_lifecycle", "{v:#}");
    assert_eq!(v["drain"]["hook"]["name"], HOOK);
    assert_eq!(v["drain"]["hook"]["group"], world.group.as_str());
    assert_eq!(v["heartbeat_every_seconds"], 5, "a tenth of 30 s, at least 5 s");
    assert_eq!(v["remaining_tasks"], 1, "the daemon is not work: {v:#}");
    assert_eq!(world.status(), "DRAINING");
    assert_eq!(world.calls_of(UPDATE_STATE).len(), 1);
    let (_, status) = b.http_get("/v1/status");
    let status: Value = serde_json::from_str(&dechunk(&status)).unwrap();
    assert_eq!(status["drain"]["step"], "wait_tasks", "{status:#}");
    assert_eq!(status["drain"]["trigger"]["kind"], "asg_lifecycle");
    let beat = &world.calls_of(HEARTBEAT)[0];
    assert_eq!(beat.param("InstanceId"), Some(world.instance.as_str()));
    assert_eq!(beat.param("LifecycleHookName"), Some(HOOK));
    assert_eq!(beat.param("AutoScalingGroupName"), Some(world.group.as_str()));
    assert!(beat.succeeded_here(), "{beat:?}");

    // SIGKILL mid-drain: the restarted berth resumes — no second DRAINING, the heartbeat
    // schedule kept.
    b.signal(9);
    wait_exit(&mut b.child, WAIT);
    let mut b = restart_with(b, &cfg, &envs(&env));
    let v = wait_view(&b, "the heartbeat after the restart", |v| v["drain"]["heartbeats"] == 2);
    assert_eq!(v["drain"]["step"], "wait_tasks", "{v:#}");
    assert_eq!(world.calls_of(UPDATE_STATE).len(), 1, "DRAINING is not set again after a restart");
    assert!(b.stderr_text().contains("resuming the drain in progress"));

    // ECS stops daemon tasks as soon as the others have left RUNNING: berth's SIGTERM comes
    // while the work's container is still stopping, and the sink is down.
    search.set_down(true);
    set_work("RUNNING", "STOPPED");
    b.signal(15);
    wait_for(WAIT, "berth to say it finishes the drain first", || {
        b.stderr_text().contains("a drain is in progress: finishing it").then_some(())
    });
    std::fs::write(ctl.path().join("stop"), b"").unwrap();
    let exited = docker_ok(&["wait", &name]);
    assert_eq!(exited, "0");
    set_work("STOPPED", "STOPPED");
    // The agent says stopped, but ECS still counts its tasks here: no completion.
    std::thread::sleep(Duration::from_secs(5));
    assert!(world.calls_of(COMPLETE).is_empty(), "completed while ECS still counts tasks");
    let v = view(&b);
    assert_eq!(v["drain"]["step"], "wait_tasks", "{v:#}");
    assert_eq!(v["remaining_tasks"], 0);
    world.stop_ecs_tasks();
    // Now the flush: the sink is down, so the action waits for it.
    let v = wait_view(&b, "the flush step", |v| v["drain"]["step"] == "flush");
    assert_eq!(v["flushed"], false, "{v:#}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(world.calls_of(COMPLETE).is_empty(), "completed before the last lines were delivered");
    search.set_down(false);

    // Delivered, completed once, and berth exits by itself inside the stop timeout.
    let status = wait_exit(&mut b.child, LONG);
    assert!(status.success(), "{status}\n{}", b.stderr_text());
    let completes = world.calls_of(COMPLETE);
    assert_eq!(completes.len(), 1, "{completes:?}");
    let c = &completes[0];
    assert!(c.succeeded_here(), "{c:?}");
    assert_eq!(c.param("LifecycleActionResult"), Some("CONTINUE"));
    assert_eq!(c.param("InstanceId"), Some(world.instance.as_str()));
    assert_eq!(c.param("LifecycleHookName"), Some(HOOK));
    assert_eq!(c.param("AutoScalingGroupName"), Some(world.group.as_str()));
    osmem.refresh("logs");
    let docs = osmem.search_all("logs");
    assert!(
        docs.iter().any(|d| d["_source"]["log"].as_str().is_some_and(|l| l.contains(&marker))),
        "the last line is in the sink: {} docs",
        docs.len()
    );
    let last_beat = world.calls_of(HEARTBEAT).last().unwrap().at;
    assert!(c.at >= last_beat, "no heartbeat after the completion");
    for gap in heartbeat_gaps(&world) {
        assert!(gap >= 4.5, "heartbeats {:?} apart, every 5 s wanted", heartbeat_gaps(&world));
    }
    let state: Value =
        serde_json::from_slice(&std::fs::read(b.path().join("buffer/drain.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], "done");
    assert_eq!(state["outcome"], "drained");
    assert_eq!(state["completion"]["result"], "CONTINUE");
}

#[test]
fn warm_pool_states_do_nothing_and_a_rejected_heartbeat_stops_the_drain() {
    let world = World::start();
    let env = world.env();
    let b = start_in(tmpfs_dir(), &config(&world, NULL_SINK, ""), &envs(&env));
    world.imds.set(LIFECYCLE, Some("Warmed:Terminated"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(view(&b)["drain"], Value::Null, "a warm-pool state starts nothing");
    assert!(world.calls_of(UPDATE_STATE).is_empty());
    assert_eq!(world.status(), "ACTIVE");

    // Terminated, but the action is gone (completed elsewhere): the first heartbeat is
    // refused and the drain's AWS side stops there.
    world.imds.set(LIFECYCLE, Some("Terminated"));
    let v = wait_view(&b, "the drain ended", |v| v["drain"]["step"] == "done");
    assert_eq!(v["drain"]["outcome"], "rejected", "{v:#}");
    assert_eq!(v["drain"]["completion"]["result"], "rejected");
    std::thread::sleep(Duration::from_secs(2));
    let beats = world.calls_of(HEARTBEAT);
    assert_eq!(beats.len(), 1, "one refused heartbeat, none after: {beats:?}");
    assert_eq!(beats[0].error.as_ref().map(|e| e.0.as_str()), Some("ValidationError"));
    assert!(world.calls_of(COMPLETE).is_empty());
    assert_eq!(b.metric("berth_drain_state{step=\"done\"}"), 1.0);
    assert_eq!(b.metric("berth_drain_heartbeats_total"), 0.0);
    assert_eq!(
        b.metric(
            "berth_aws_api_calls_total{action=\"RecordLifecycleActionHeartbeat\",result=\"error\"}"
        ),
        1.0
    );
    // The notice stays: the finished drain is not started again.
    assert_eq!(world.calls_of(UPDATE_STATE).len(), 1);
}

#[test]
fn a_spot_notice_drains_fast_without_a_lifecycle_action() {
    let world = World::start();
    world.stop_ecs_tasks();
    let env = world.env();
    let b = start_in(tmpfs_dir(), &config(&world, NULL_SINK, ""), &envs(&env));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let at = now.as_secs() + 120;
    let mut time = Vec::new();
    berth::calendar::write_rfc3339(&mut time, berth::event::EventTime { secs: at as _, nanos: 0 });
    let time = String::from_utf8(time).unwrap();
    let started = Instant::now();
    world.imds.set(SPOT, Some(&format!(r#"{{"action": "terminate", "time": "{time}"}}"#)));
    let v = wait_view(&b, "the drain done", |v| v["drain"]["step"] == "done");
    assert!(started.elapsed() < Duration::from_secs(120), "inside the two minutes");
    assert_eq!(v["drain"]["outcome"], "drained", "{v:#}");
    assert_eq!(v["drain"]["trigger"]["kind"], "spot");
    assert_eq!(v["drain"]["deadline_ms"].as_u64(), Some(at * 1000));
    assert_eq!(world.status(), "DRAINING");
    assert!(world.calls_of(HEARTBEAT).is_empty() && world.calls_of(COMPLETE).is_empty());
}

#[test]
fn berth_drain_starts_waits_for_and_aborts_an_operators_drain() {
    let world = World::start();
    let env = world.env();
    let b = start_in(
        tmpfs_dir(),
        &config(&world, NULL_SINK, "watch = []\ndrain_on_shutdown = true"),
        &envs(&env),
    );
    // The CLI finds the daemon through a config naming its admin address.
    let cfg_path = b.path().join("cli.toml");
    std::fs::write(
        &cfg_path,
        format!("[admin]\nlisten = \"{}\"\n{NULL_SINK}", b.admin.as_deref().unwrap()),
    )
    .unwrap();
    let drain = |args: &[&str]| {
        let out = std::process::Command::new(berth_bin())
            .arg("drain")
            .args(["--config", cfg_path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let task = fake_task("arn:aws:ecs:us-east-1:1:task/prod/0a", "batch", "RUNNING", "RUNNING", "");
    world.agent.state.lock().unwrap().tasks = vec![task.clone()];

    // Start, then abort: the instance is ACTIVE again.
    let (code, out, err) = drain(&["--deadline", "1h"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("drain started"), "{err}");
    assert!(out.contains("(operator)"), "{out}");
    let v = wait_view(&b, "DRAINING set", |v| v["drain"]["draining_set"] == true);
    let left = v["deadline_in_seconds"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{v:#}");
    assert_eq!(world.status(), "DRAINING");
    let (code, _, err) = drain(&["--abort"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(view(&b)["drain"]["outcome"], "aborted");
    assert_eq!(world.status(), "ACTIVE", "an operator's abort undoes its DRAINING");
    let (code, _, err) = drain(&["--abort"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no drain is in progress"), "{err}");

    // Start and wait: it ends once the task is gone and ECS agrees.
    let mut waiting = std::process::Command::new(berth_bin())
        .arg("drain")
        .args(["--config", cfg_path.to_str().unwrap(), "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_view(&b, "a second drain", |v| v["active"] == true && v["drain"]["draining_set"] == true);
    let (code, _, err) = drain(&[]);
    assert_eq!(code, Some(0));
    assert!(err.contains("already in progress"), "{err}");
    let mut stopped = task;
    stopped.known = "STOPPED".into();
    world.agent.state.lock().unwrap().tasks = vec![stopped];
    world.stop_ecs_tasks();
    let status = wait_exit(&mut waiting, LONG);
    let out = {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut waiting.stdout.take().unwrap(), &mut s).unwrap();
        s
    };
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("set_draining (operator)")
            || lines[0].starts_with("wait_tasks (operator)"),
        "{out}"
    );
    assert!(out.contains("1 task left"), "{out}");
    assert!(lines.last().unwrap().starts_with("done (drained, operator)"), "{out}");
    let (code, out, _) = drain(&["--status", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["drain"]["outcome"], "drained");
    assert_eq!(v["active"], false);
}

#[test]
fn the_preflight_says_what_would_keep_a_drain_from_working() {
    let world = World::start();
    ecs_tool(
        &world.moto.url(),
        &[
            "hook",
            &world.group,
            "ecs-managed-draining-termination-hook",
            "terminating",
            "30",
            "CONTINUE",
        ],
        ROOT,
    );
    world.agent.state.lock().unwrap().down = true;
    let env = world.env();
    let b = start_in(tmpfs_dir(), &config(&world, NULL_SINK, ""), &envs(&env));
    let v =
        wait_view(&b, "the preflight", |v| v["preflight"].as_array().is_some_and(|p| p.len() >= 2));
    let text = v["preflight"].to_string();
    assert!(text.contains("ECS agent's introspection API does not answer"), "{text}");
    assert!(text.contains("ECS managed draining's hook"), "{text}");
    assert!(text.contains("two drainers"), "{text}");
    assert!(b.stderr_text().contains("drain preflight"));

    // No terminating hook of its own: said too.
    let world = World::start();
    let other = ecs_tool(
        &world.moto.url(),
        &["hook", &world.group, HOOK, "launching", "30", "CONTINUE"],
        ROOT,
    );
    assert_eq!(other["LifecycleTransition"], "autoscaling:EC2_INSTANCE_LAUNCHING");
    let env = world.env();
    let b = start_in(tmpfs_dir(), &config(&world, NULL_SINK, ""), &envs(&env));
    let v = wait_view(&b, "the preflight", |v| !v["preflight"].as_array().unwrap().is_empty());
    assert!(
        v["preflight"].to_string().contains("has no terminating lifecycle hook of its own"),
        "{v:#}"
    );
}

#[test]
fn a_rebalance_recommendation_and_a_shutdown_start_soft_drains_when_asked() {
    let world = World::start();
    world.stop_ecs_tasks();
    let env = world.env();
    let b =
        start_in(tmpfs_dir(), &config(&world, NULL_SINK, "watch = [\"rebalance\"]"), &envs(&env));
    world.imds.set(
        "/latest/meta-data/events/recommendations/rebalance",
        Some(r#"{"noticeTime": "2026-12-02T10:00:00Z"}"#),
    );
    let v = wait_view(&b, "the soft drain done", |v| v["drain"]["step"] == "done");
    assert_eq!(v["drain"]["trigger"]["kind"], "advisory", "{v:#}");
    assert_eq!(v["drain"]["outcome"], "drained");
    assert_eq!(world.status(), "DRAINING");
    assert!(world.calls_of(HEARTBEAT).is_empty(), "no lifecycle action to keep alive");
    drop(b);

    // drain_on_shutdown: the stop drains the host, then berth exits.
    let world = World::start();
    world.stop_ecs_tasks();
    let env = world.env();
    let mut b = start_in(
        tmpfs_dir(),
        &config(&world, NULL_SINK, "watch = []\ndrain_on_shutdown = true"),
        &envs(&env),
    );
    assert_eq!(world.status(), "ACTIVE");
    b.signal(15);
    let status = wait_exit(&mut b.child, LONG);
    assert!(status.success(), "{status}\n{}", b.stderr_text());
    assert_eq!(world.status(), "DRAINING");
    let state: Value =
        serde_json::from_slice(&std::fs::read(b.path().join("buffer/drain.json")).unwrap())
            .unwrap();
    assert_eq!(state["trigger"]["kind"], "shutdown");
    assert_eq!(state["outcome"], "drained");
}

#[test]
fn another_instances_drain_state_is_set_aside_not_resumed() {
    let world = World::start();
    let env = world.env();
    let dir = tmpfs_dir();
    std::fs::create_dir_all(dir.path().join("buffer")).unwrap();
    let foreign = serde_json::json!({
        "version": 1, "trigger": {"kind": "asg_lifecycle"}, "step": "wait_tasks",
        "started_ms": 1, "deadline_ms": 4_000_000_000_000u64, "draining_set": true,
        "heartbeats": 3, "last_heartbeat_ms": 1, "flush_mark": null, "completion": null,
        "instance_id": "i-0someoneelse", "cluster": "prod", "container_instance_arn": "arn:x",
        "hook": {"group": "g", "name": "h", "heartbeat_timeout_ms": 30000},
        "hook_resolved": true, "tasks_done_ms": null, "outcome": null, "done_ms": null,
    });
    std::fs::write(dir.path().join("buffer/drain.json"), foreign.to_string()).unwrap();
    let b = start_in(dir, &config(&world, NULL_SINK, ""), &envs(&env));
    wait_for(WAIT, "the foreign state set aside", || {
        b.path().join("buffer/drain.json.foreign").exists().then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(view(&b)["drain"], Value::Null);
    assert!(world.proxy.calls_of(HEARTBEAT).is_empty(), "never heart-beats another host's action");
    assert!(b.stderr_text().contains("another instance's"));
}

#[test]
fn the_group_and_hook_from_config_are_used_without_discovery() {
    let world = World::start();
    world.stop_ecs_tasks();
    // A second terminating hook: the configured one is chosen, not the first listed.
    ecs_tool(
        &world.moto.url(),
        &["hook", &world.group, "other-hook", "terminating", "30", "CONTINUE"],
        ROOT,
    );
    world.proxy.register_hook(&world.group, "other-hook");
    let env = world.env();
    let extra = format!(
        "auto_scaling_group_name = \"{}\"\nlifecycle_hook_name = \"other-hook\"",
        world.group
    );
    let b = start_in(tmpfs_dir(), &config(&world, NULL_SINK, &extra), &envs(&env));
    world.proxy.start_action(&world.instance);
    world.imds.set(LIFECYCLE, Some("Terminated"));
    let v = wait_view(&b, "the drain done", |v| v["drain"]["step"] == "done");
    assert_eq!(v["drain"]["outcome"], "drained", "{v:#}");
    assert_eq!(v["drain"]["hook"]["name"], "other-hook");
    let completes = world.calls_of(COMPLETE);
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].param("LifecycleHookName"), Some("other-hook"));
    assert_eq!(completes[0].param("AutoScalingGroupName"), Some(world.group.as_str()));
    assert!(
        world.calls_of("DescribeAutoScalingInstances").is_empty(),
        "the group is not looked up when configured"
    );
}
