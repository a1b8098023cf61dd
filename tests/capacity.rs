//! Capacity end to end: `berth run` with `[capacity]` on, against this machine's real
//! Docker engine (busybox containers with the ECS agent's labels and sizes), a real task
//! cgroup (the ECS agent's `/ecs/<task id>` on a cgroup v1 host, with the limits the agent
//! writes), the fake ECS agent introspection API and a fake IMDSv2 (nothing real exists for
//! those), and moto_server for ECS, Auto Scaling and CloudWatch Logs (a host set up as a real
//! one by tests/fixtures/ecs_tool.py).
//!
//! Checked: free CPU and memory move as tasks start and stop; the schedulable count of each
//! shape; daemons hold resources but are not work; drift against moto's own view;
//! scale-in protection on while work runs and off after the idle grace, read back from
//! moto; the AWS call counts over the run (one DescribeContainerInstances, one
//! DescribeAutoScalingInstances, one SetInstanceProtection per change); EMF events read back
//! from moto and valid; `berth capacity`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::docker::{docker, docker_ok, docker_ready, image};
use common::ecs_agent::{AgentState, FakeAgent, FakeTask};
use common::imds::FakeImds;
use common::moto::{ecs_tool, Moto};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const ROOT: (&str, &str) = ("testing", "testing");
/// moto registers every container instance with these (it ignores `totalResources`).
const REGISTERED: (i64, i64) = (4096, 7482);

/// A container removed on drop.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A task cgroup as the ECS agent makes it on a cgroup v1 host, removed on drop.
struct TaskCgroup(Vec<std::path::PathBuf>);
impl Drop for TaskCgroup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `/ecs/<id>` with a CFS quota of `cpu` units and a memory limit of `mib`, as the agent's
/// `BuildLinuxResourceSpec` writes them (quota = cpu / 1024 × the 100 ms period). `None`
/// when this host's cgroups are not v1 or not writable (then the test says so and checks
/// the rest).
fn task_cgroup(id: &str, cpu: u64, mib: u64) -> Option<TaskCgroup> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return None;
    }
    let cpu_dir = root.join("cpu/ecs").join(id);
    let mem_dir = root.join("memory/ecs").join(id);
    let made = std::fs::create_dir_all(&cpu_dir)
        .and_then(|()| std::fs::create_dir_all(&mem_dir))
        .and_then(|()| std::fs::write(cpu_dir.join("cpu.cfs_period_us"), "100000"))
        .and_then(|()| {
            std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), (cpu * 100_000 / 1024).to_string())
        })
        .and_then(|()| {
            std::fs::write(mem_dir.join("memory.limit_in_bytes"), (mib << 20).to_string())
        });
    let guard = TaskCgroup(vec![cpu_dir, mem_dir]);
    match made {
        Ok(()) => Some(guard),
        Err(e) => {
            eprintln!("no task cgroup on this host ({e}): the task-level size is not checked");
            None
        }
    }
}

/// One ECS task of one container: the agent's labels, `docker run` sizes; its id.
fn run_task(name: &str, arn: &str, family: &str, sizes: &[&str]) -> (Container, String) {
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    for l in [
        "com.amazonaws.ecs.cluster=prod".to_string(),
        format!("com.amazonaws.ecs.task-arn={arn}"),
        "com.amazonaws.ecs.container-name=main".to_string(),
        format!("com.amazonaws.ecs.task-definition-family={family}"),
        "com.amazonaws.ecs.task-definition-version=1".to_string(),
    ] {
        args.extend(["--label".into(), l]);
    }
    args.extend(sizes.iter().map(|s| s.to_string()));
    args.extend([image().to_string(), "sleep".into(), "600".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = docker_ok(&argv);
    (Container(name.into()), id)
}

fn fake_task(arn: &str, family: &str, known: &str, container: (&str, &str)) -> FakeTask {
    FakeTask {
        arn: arn.into(),
        desired: if known == "STOPPED" { "STOPPED".into() } else { "RUNNING".into() },
        known: known.into(),
        family: family.into(),
        version: "1".into(),
        containers: vec![(container.0.into(), container.1.into(), "main".into())],
    }
}

/// Wait until the report satisfies `ok`; the last report in the failure.
fn wait_report(b: &Berth, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let (status, body) = b.http_get("/v1/capacity");
        if status == 200 {
            last = serde_json::from_str(&dechunk(&body)).unwrap_or(Value::Null);
            if ok(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("capacity never showed {what}; last report:\n{last:#}\n{}", b.stderr_text());
}

/// What both tests' berth has: ports the OS picks, a null sink, no EC2 fields.
const BASE_CONFIG: &str = r#"
[input.forward]
listen = ["tcp://127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[buffer]
path = "{dir}/buffer"
[[sink]]
name = "null"
type = "null"
match = "**"
[enrich.ec2]
enabled = false
"#;

fn protected(moto: &Moto, instance: &str) -> Value {
    ecs_tool(&moto.url(), &["protected", instance], ROOT)
}

#[test]
fn capacity_follows_tasks_protects_while_busy_and_publishes() {
    if !docker_ready("capacity_follows_tasks_protects_while_busy_and_publishes") {
        return;
    }
    let moto = Moto::start(&[]);
    let host = ecs_tool(&moto.url(), &["setup"], ROOT);
    let instance = host["asg_instance"].as_str().unwrap().to_string();
    let ci_arn = host["container_instance_arn"].as_str().unwrap().to_string();
    let imds = FakeImds::start_as(&instance);
    let agent = FakeAgent::start(AgentState {
        down: false,
        cluster: "prod".into(),
        instance_arn: Some(ci_arn.clone()),
        tasks: vec![],
    });

    let pid = std::process::id();
    // Task ids as the agent derives them (32 hex digits), unique per run.
    let web_id = format!("{:0>32x}", 0xa000_0000u64 + u64::from(pid));
    let batch_id = format!("{:0>32x}", 0xb000_0000u64 + u64::from(pid));
    let daemon_id = format!("{:0>32x}", 0xd000_0000u64 + u64::from(pid));
    let arn = |id: &str| format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{id}");

    // web: container-level sizes (512 units, a 256 MiB reservation under a 512 MiB limit).
    let (_web, web) = run_task(
        &format!("berth-cap-web-{pid}"),
        &arn(&web_id),
        "web",
        &["--cpu-shares", "512", "--memory-reservation", "256m", "--memory", "512m"],
    );
    // batch: a task-level size (1024 units, 1024 MiB) in its task cgroup; its container has
    // ECS cpu 0 (2 shares) and a 128 MiB limit, which the task size overrides.
    let cgroup = task_cgroup(&batch_id, 1024, 1024);
    let mut batch_args = vec!["--cpu-shares", "2", "--memory", "128m"];
    let parent = format!("/ecs/{batch_id}");
    if cgroup.is_some() {
        batch_args.extend(["--cgroup-parent", parent.as_str()]);
    }
    let (_batch, batch) =
        run_task(&format!("berth-cap-batch-{pid}"), &arn(&batch_id), "batch", &batch_args);
    // A daemon of the host (listed in daemon_task_families): holds 128 units / 64 MiB.
    let (_daemon, daemon) = run_task(
        &format!("berth-cap-daemon-{pid}"),
        &arn(&daemon_id),
        "log-router",
        &["--cpu-shares", "128", "--memory-reservation", "64m"],
    );
    let batch_size = if cgroup.is_some() { (1024, 1024) } else { (0, 128) };
    {
        let mut st = agent.state.lock().unwrap();
        st.tasks = vec![
            fake_task(&arn(&web_id), "web", "RUNNING", (&web, "ecs-web-1-main")),
            fake_task(&arn(&batch_id), "batch", "RUNNING", (&batch, "ecs-batch-1-main")),
            fake_task(
                &arn(&daemon_id),
                "log-router",
                "RUNNING",
                (&daemon, "ecs-log-router-1-main"),
            ),
        ];
    }

    let config = format!(
        r#"{base}[ecs]
agent_url = "{agent}"
region = "us-east-1"
daemon_task_families = ["log-router"]
[capacity]
enabled = true
interval = "1s"
ecs_api_interval = "1h"
task_shapes = [ {{ name = "worker", cpu = 1024, memory = 2048 }},
                {{ name = "large", cpu = 4096, memory = 15722 }},
                {{ name = "small-mem", memory = 512 }} ]
[capacity.publish]
cloudwatch_emf = true
emf_log_group = "/berth/capacity"
namespace = "Berth"
dimensions = [["ClusterName", "TaskShape"], ["AutoScalingGroupName", "TaskShape"], ["ClusterName"]]
ecs_attributes = true
[capacity.scale_in_protection]
enabled = true
idle_grace = "8s"
"#,
        base = BASE_CONFIG,
        agent = agent.url
    );
    let mut b = start_in(
        tmpfs_dir(),
        &config,
        &[
            ("AWS_ENDPOINT_URL", &moto.url()),
            ("AWS_ACCESS_KEY_ID", ROOT.0),
            ("AWS_SECRET_ACCESS_KEY", ROOT.1),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint),
        ],
    );

    // Busy: web + batch are work, the daemon is not; all three hold resources.
    let reserved = (512 + batch_size.0 + 128, 256 + batch_size.1 + 64);
    let free = (REGISTERED.0 - reserved.0, REGISTERED.1 - reserved.1);
    let r = wait_report(&b, "the three tasks, fresh", |r| {
        r["fresh"] == true && r["running_tasks"] == 2 && r["protected"] == true
    });
    assert_eq!(r["registered"]["cpu_units"], REGISTERED.0, "{r:#}");
    assert_eq!(r["registered"]["memory_mib"], REGISTERED.1);
    assert_eq!(
        (r["reserved"]["cpu_units"].as_i64(), r["reserved"]["memory_mib"].as_i64()),
        (Some(reserved.0), Some(reserved.1)),
        "{r:#}"
    );
    assert_eq!(
        (r["free"]["cpu_units"].as_i64(), r["free"]["memory_mib"].as_i64()),
        (Some(free.0), Some(free.1))
    );
    assert_eq!(r["daemon_tasks"], 1);
    assert_eq!(r["pending_tasks"], 0);
    let fit = |r: &Value, name: &str| {
        r["shapes"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["schedulable"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(fit(&r, "worker"), (free.0 / 1024).min(free.1 / 2048));
    assert_eq!(fit(&r, "large"), 0, "15722 MiB do not fit in {}", free.1);
    assert_eq!(fit(&r, "small-mem"), free.1 / 512);
    let batch_view =
        r["tasks"].as_array().unwrap().iter().find(|t| t["family"] == "batch").unwrap();
    if cgroup.is_some() {
        assert_eq!(batch_view["sized_by"], "task", "{batch_view}");
    }
    assert_eq!(r["identity"]["instance_id"], instance.as_str());
    assert_eq!(r["identity"]["auto_scaling_group"], "berth-asg");
    assert_eq!(r["identity"]["cluster"], "prod");
    // moto ran two 256-unit / 512 MiB tasks of its own that are not here, and knows none
    // of ours: local minus ECS.
    let d = &r["drift"];
    assert_eq!(d["drifted"], true, "{d}");
    assert_eq!(d["cpu_units"].as_i64(), Some(free.0 - (REGISTERED.0 - 512)), "{d}");
    assert_eq!(d["memory_mib"].as_i64(), Some(free.1 - (REGISTERED.1 - 1024)));
    assert_eq!(d["running_tasks"].as_i64(), Some(3 - 2));
    assert_eq!(
        protected(&moto, &instance),
        true,
        "protected while work runs (read back from moto)"
    );
    // The same figures on /metrics.
    assert_eq!(b.metric("berth_capacity_free_cpu_units"), free.0 as f64);
    assert_eq!(b.metric("berth_capacity_free_memory_mib"), free.1 as f64);
    assert_eq!(b.metric("berth_capacity_schedulable{shape=\"worker\"}"), fit(&r, "worker") as f64);
    assert_eq!(b.metric("berth_capacity_running_tasks"), 2.0);
    assert_eq!(b.metric("berth_capacity_protected"), 1.0);
    assert_eq!(b.metric("berth_capacity_source_up{source=\"agent\"}"), 1.0);
    assert_eq!(b.metric("berth_capacity_drift{resource=\"running_tasks\"}"), 1.0);

    // `berth capacity` reads the same report from the running daemon.
    // (The daemon's own file says port 0: give the CLI the address it bound.)
    let cfg = b.path().join("cli.toml");
    let text = std::fs::read_to_string(b.path().join("berth.toml")).unwrap();
    let admin = b.admin.clone().unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "listen = \"127.0.0.1:0\"\n[buffer]",
            &format!("listen = \"{admin}\"\n[buffer]"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["capacity", "--config"])
        .arg(&cfg)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!("free          {} cpu units, {} MiB", free.0, free.1)),
        "{text}"
    );
    assert!(text.contains(&format!("fits          {} x worker", fit(&r, "worker"))), "{text}");

    // The tasks end: web and batch stop (the agent says STOPPED, Docker removes them).
    {
        let mut st = agent.state.lock().unwrap();
        for t in st.tasks.iter_mut().filter(|t| t.family != "log-router") {
            t.known = "STOPPED".into();
        }
    }
    drop(_web);
    drop(_batch);
    let r = wait_report(&b, "the work gone", |r| r["running_tasks"] == 0 && r["fresh"] == true);
    assert_eq!(
        r["free"]["cpu_units"].as_i64(),
        Some(REGISTERED.0 - 128),
        "only the daemon holds: {r:#}"
    );
    assert_eq!(r["free"]["memory_mib"].as_i64(), Some(REGISTERED.1 - 64));
    assert_eq!(r["protected"], true, "within the idle grace: still protected");
    // A task that starts within the grace does not flap it.
    let (_web2, web2) =
        run_task(&format!("berth-cap-web2-{pid}"), &arn("f00d"), "web", &["--cpu-shares", "256"]);
    agent.state.lock().unwrap().tasks.push(fake_task(
        &arn("f00d"),
        "web",
        "RUNNING",
        (&web2, "ecs-web-2-main"),
    ));
    wait_report(&b, "the second web task", |r| r["running_tasks"] == 1);
    agent.state.lock().unwrap().tasks.retain(|t| t.arn != arn("f00d"));
    drop(_web2);
    let r = wait_report(&b, "protection lifted after the idle grace", |r| r["protected"] == false);
    assert!(r["idle_seconds"].as_u64().unwrap() >= 8, "{r:#}");
    assert_eq!(protected(&moto, &instance), false, "lifted in moto too");

    // The call counts: start-up calls once, SetInstanceProtection once per change.
    let calls = |action: &str, result: &str| {
        b.metric(&format!("berth_aws_api_calls_total{{action=\"{action}\",result=\"{result}\"}}"))
    };
    assert_eq!(calls("DescribeContainerInstances", "ok"), 1.0, "one call in an hour-long interval");
    assert_eq!(calls("DescribeAutoScalingInstances", "ok"), 1.0);
    assert_eq!(calls("SetInstanceProtection", "ok"), 2.0, "on once, off once: no flapping");
    assert!(calls("PutLogEvents", "ok") >= 1.0, "EMF published");
    let attrs = ecs_tool(&moto.url(), &["attributes", "prod", &ci_arn], ROOT);
    assert_eq!(
        attrs["berth.schedulable.worker"],
        ((REGISTERED.0 - 128) / 1024).min((REGISTERED.1 - 64) / 2048).to_string(),
        "{attrs}"
    );
    let puts = calls("PutAttributes", "ok");
    assert!((2.0..=4.0).contains(&puts), "one put per change of the counts, not per tick: {puts}");

    // The EMF events in moto: valid, one host event and one per shape per interval.
    let stored = moto::Stored::read(&moto.url(), None);
    let events = stored.messages("/berth/capacity", &instance);
    assert!(!events.is_empty(), "EMF events in /berth/capacity/{instance}");
    for e in &events {
        let v: Value = serde_json::from_str(e).unwrap();
        let directives = v["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        for d in directives {
            for m in d["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                assert!(v[name].is_number(), "{name} in {e}");
            }
            for set in d["Dimensions"].as_array().unwrap() {
                for k in set.as_array().unwrap() {
                    assert!(v[k.as_str().unwrap()].is_string(), "{k} in {e}");
                }
            }
        }
    }
    let worker: Vec<&String> =
        events.iter().filter(|e| e.contains("\"TaskShape\":\"worker\"")).collect();
    assert!(
        !worker.is_empty()
            && worker.iter().all(|e| e.contains("\"AutoScalingGroupName\":\"berth-asg\""))
    );

    // The agent stops answering (an agent update): the report says so, the figures are no
    // longer published as current, protection is left as it is.
    let (_web3, web3) =
        run_task(&format!("berth-cap-web3-{pid}"), &arn("beef"), "web", &["--cpu-shares", "256"]);
    agent.state.lock().unwrap().tasks.push(fake_task(
        &arn("beef"),
        "web",
        "RUNNING",
        (&web3, "ecs-web-3-main"),
    ));
    wait_report(&b, "protection back on with work", |r| r["protected"] == true);
    agent.state.lock().unwrap().down = true;
    let r = wait_report(&b, "the agent down", |r| {
        r["sources"].as_array().unwrap().iter().any(|s| s["source"] == "agent" && s["up"] == false)
    });
    assert_eq!(r["fresh"], false, "{r:#}");
    let (_, metrics) = b.http_get("/metrics");
    assert!(metrics.contains("berth_capacity_source_up{source=\"agent\"} 0"), "{metrics}");
    for absent in [
        "berth_capacity_free_cpu_units",
        "berth_capacity_schedulable",
        "berth_capacity_running_tasks",
    ] {
        assert!(!metrics.contains(absent), "{absent} published from stale figures:\n{metrics}");
    }
    // Past the idle grace with no answer: protection is not lifted on missing data.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(protected(&moto, &instance), true);
    assert_eq!(calls("SetInstanceProtection", "ok"), 3.0, "on, off, on: nothing on missing data");
    b.stop();
    assert!(!b.stderr_text().contains("panicked"), "{}", b.stderr_text());
}

/// An ECS endpoint that answers every call `400 ThrottlingException` (the AWS JSON
/// protocol's error shape), counting them.
fn throttling_ecs() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let h = std::sync::Arc::clone(&h);
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                while read_http_request(&mut r).is_some() {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: t\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, hits)
}

#[test]
fn a_throttled_ecs_api_backs_off_is_reported_and_never_holds_the_log_path() {
    let (ecs, hits) = throttling_ecs();
    let agent = FakeAgent::start(AgentState {
        down: false,
        cluster: "prod".into(),
        instance_arn: Some("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/abc".into()),
        tasks: vec![],
    });
    let config = format!(
        r#"{base}[enrich.docker]
enabled = false
[ecs]
agent_url = "{agent}"
region = "us-east-1"
[capacity]
enabled = true
interval = "1s"
"#,
        base = BASE_CONFIG,
        agent = agent.url
    );
    let b = start_in(
        tmpfs_dir(),
        &config,
        &[
            ("AWS_ENDPOINT_URL_ECS", &ecs),
            ("AWS_ACCESS_KEY_ID", ROOT.0),
            ("AWS_SECRET_ACCESS_KEY", ROOT.1),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            // Capacity needs Docker for container sizes; this host has no tasks.
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ],
    );
    let r = wait_report(&b, "the ECS API throttled", |r| {
        r["sources"].as_array().unwrap().iter().any(|s| {
            s["source"] == "ecs_api"
                && s["up"] == false
                && s["error"].as_str().is_some_and(|e| e.contains("ThrottlingException"))
        })
    });
    assert_eq!(r["registered"], Value::Null);
    assert_eq!(r["fresh"], false);
    let calls = || {
        b.metric(
            "berth_aws_api_calls_total{action=\"DescribeContainerInstances\",result=\"throttled\"}",
        )
    };
    assert_eq!(calls(), 1.0);
    // Ticks go on every second; the call does not: the SDK's attempts of that one call,
    // then berth's own backoff (minutes after a throttled call).
    let after_first = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&after_first), "{after_first} attempts of one call");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        after_first,
        "no call while backing off"
    );
    assert_eq!(calls(), 1.0);
    // The log path does not wait for any of it: a record is acknowledged.
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(Duration::from_secs(10));
    let chunk = "Y2Fw";
    c.send(&message("app", 1_700_000_000, rec(&[("log", "x")]), Some(chunk)), usize::MAX).unwrap();
    assert_eq!(c.read_exact_n(ack_bytes(chunk).len()), ack_bytes(chunk));
}
