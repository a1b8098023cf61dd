//! Capacity's EMF publisher (`berth::capacity::emf`) against a real CloudWatch Logs API
//! (moto_server, from scripts/test-deps) behind the recording proxy of tests/common/moto.rs:
//! a hand-made report is encoded and published into a group that does not exist yet (the
//! publisher creates it), read back with boto3 and checked event by event against the EMF
//! rules, values and timestamps; every PutLogEvents carried `x-amzn-logs-format: json/emf`;
//! a stale report publishes nothing.
//!
//! In-process: the SDK finds moto through `AWS_ENDPOINT_URL`, set with `std::env::set_var`
//! before the `Aws` is built. That is safe because nextest runs each test in a process of
//! its own (scripts/test uses nextest); under plain `cargo test` run these one at a time
//! (`--test-threads 1`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use berth::aws::Aws;
use berth::capacity::compute::Resources;
use berth::capacity::emf::{encode, validate, EmfPublisher, EmfSkip};
use berth::capacity::report::{Identity, Report, ShapeFit};
use berth::config::capacity::{Dimension, PublishConfig};
use berth::config::AwsAuth;
use berth::imds::Imds;
use common::moto::{FaultProxy, Faults, Moto, Stored};
use std::time::SystemTime;

const GROUP: &str = "/berth/capacity";
const INSTANCE: &str = "i-0123456789abcdef0";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn report(at_ms: u64, small: u64) -> Report {
    Report {
        computed_at_ms: at_ms,
        fresh: true,
        identity: Identity {
            cluster: Some("prod".into()),
            container_instance_arn: None,
            instance_id: Some(INSTANCE.into()),
            availability_zone: Some("us-east-1a".into()),
            instance_type: Some("m7g.large".into()),
            auto_scaling_group: None,
        },
        status: Some("ACTIVE".into()),
        registered: Some(Resources { cpu_units: 2048, memory_mib: 7680 }),
        reserved: Resources { cpu_units: 1024, memory_mib: 2048 },
        free: Some(Resources { cpu_units: 1024, memory_mib: 5632 }),
        shapes: vec![
            ShapeFit { name: "small".into(), cpu: 256, memory: 512, schedulable: Some(small) },
            ShapeFit { name: "large".into(), cpu: 1024, memory: 4096, schedulable: Some(1) },
        ],
        running_tasks: 2,
        pending_tasks: 0,
        daemon_tasks: 1,
        idle_since_ms: None,
        idle_seconds: 0,
        protected: Some(true),
        drift: None,
        sources: Vec::new(),
        tasks: Vec::new(),
    }
}

fn publish_cfg() -> PublishConfig {
    use Dimension::*;
    PublishConfig {
        prometheus: false,
        cloudwatch_emf: true,
        emf_log_group: GROUP.into(),
        namespace: "Berth".into(),
        // The defaults, and a set with the Auto Scaling group, which this host lacks.
        dimensions: vec![
            vec![ClusterName, TaskShape],
            vec![AutoScalingGroupName, TaskShape],
            vec![ClusterName],
        ],
        ecs_attributes: false,
    }
}

/// moto behind the recording proxy, and the SDK pointed at the proxy.
fn servers() -> (Moto, FaultProxy) {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(&moto.addr, Faults::default());
    // Safe: one test per process under nextest (see the crate doc).
    std::env::set_var("AWS_ENDPOINT_URL", proxy.url());
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    std::env::set_var("AWS_CONFIG_FILE", "/dev/null");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    (moto, proxy)
}

async fn publisher() -> EmfPublisher {
    let aws = Aws::new(Imds::disabled());
    let auth = AwsAuth { region: Some("us-east-1".into()), role_arn: None, external_id: None };
    EmfPublisher::new(&aws, &auth, GROUP, INSTANCE).await.unwrap()
}

#[tokio::test]
async fn a_report_round_trips_through_cloudwatch_logs_as_emf() {
    let (moto, proxy) = servers();
    let publisher = publisher().await;
    let cfg = publish_cfg();
    assert!(Stored::read(&moto.url(), None).groups.is_empty(), "no group beforehand");

    // Interval 1: the group and stream are missing; the publisher creates them.
    let t1 = now_ms() - 60_000;
    let first = encode(&report(t1, 4), &cfg).unwrap();
    assert_eq!(first.left_out.len(), 1, "the AutoScalingGroupName set is left out");
    assert_eq!(first.events.len(), 3, "two shapes and the host");
    publisher.publish(first.events.clone(), t1 as i64).await.unwrap();

    // Interval 2: one call.
    let t2 = t1 + 60_000;
    let second = encode(&report(t2, 3), &cfg).unwrap();
    publisher.publish(second.events.clone(), t2 as i64).await.unwrap();

    let stored = Stored::read(&moto.url(), None);
    let group = &stored.groups[GROUP];
    assert_eq!(group.streams.keys().collect::<Vec<_>>(), [INSTANCE]);
    let events = &group.streams[INSTANCE];
    let messages: Vec<String> = events.iter().map(|(_, m)| m.clone()).collect();
    let sent: Vec<String> = first.events.iter().chain(&second.events).cloned().collect();
    assert_eq!(messages, sent, "stored as sent, in order");
    let stamps: Vec<i64> = events.iter().map(|(t, _)| *t).collect();
    assert_eq!(stamps, [t1, t1, t1, t2, t2, t2].map(|t| t as i64));

    for (i, m) in messages.iter().enumerate() {
        validate(m).unwrap_or_else(|e| panic!("event {i}: {e}: {m}"));
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        assert_eq!(v["_aws"]["Timestamp"].as_u64(), Some(if i < 3 { t1 } else { t2 }));
        assert_eq!(v["ClusterName"], "prod");
        assert_eq!(v["InstanceId"], INSTANCE);
        assert!(v.get("AutoScalingGroupName").is_none());
    }
    let v: Vec<serde_json::Value> =
        messages.iter().map(|m| serde_json::from_str(m).unwrap()).collect();
    let shape = |e: &serde_json::Value| {
        (e["TaskShape"].as_str().unwrap().to_string(), e["SchedulableTasks"].as_u64().unwrap())
    };
    assert_eq!(shape(&v[0]), ("small".into(), 4));
    assert_eq!(shape(&v[1]), ("large".into(), 1));
    assert_eq!(shape(&v[3]), ("small".into(), 3));
    assert_eq!(
        v[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["ClusterName", "TaskShape"]])
    );
    let host = &v[2];
    assert_eq!(
        host["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["ClusterName"]])
    );
    for (k, want) in [
        ("FreeCpuUnits", 1024),
        ("FreeMemoryMiB", 5632),
        ("RunningTasks", 2),
        ("PendingTasks", 0),
        ("IdleSeconds", 0),
        ("ScaleInProtected", 1),
    ] {
        assert_eq!(host[k].as_u64(), Some(want), "{k}");
    }

    // PutLogEvents: refused once (no group), then once per interval; all with the header.
    let calls = proxy.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [400, 200, 200], "{calls:?}");
    for c in &calls {
        assert_eq!(c.header("x-amzn-logs-format"), Some("json/emf"), "{:?}", c.headers);
        assert_eq!((c.group.as_str(), c.stream.as_str(), c.events), (GROUP, INSTANCE, 3));
        assert!(c.sorted);
    }
}

#[tokio::test]
async fn a_stale_report_publishes_nothing() {
    let (moto, proxy) = servers();
    let publisher = publisher().await;
    let mut r = report(now_ms(), 4);
    r.fresh = false;
    assert_eq!(encode(&r, &publish_cfg()), Err(EmfSkip::Stale));
    // And an interval with no events (every set left out) makes no call either.
    publisher.publish(Vec::new(), now_ms() as i64).await.unwrap();
    assert!(proxy.calls().is_empty());
    assert!(Stored::read(&moto.url(), None).groups.is_empty(), "nothing created");
}
