//! The drain's AWS calls against a real ECS / Auto Scaling API (moto_server, from
//! scripts/test-deps) through the library's own clients: `set_draining` read back from
//! moto, the terminating hooks of the group (not its launching hook), heartbeat and
//! completion by instance id, and what a heartbeat or completion of an action that is no
//! longer active answers (`ApiError::is_no_active_action`); SigV4 + IAM with
//! packaging/iam/berth-drain-policy.json and its ARN patterns against the documented formats.
//!
//! moto 5.2.5 does not implement `RecordLifecycleActionHeartbeat` or
//! `CompleteLifecycleAction` (HTTP 500), so every call goes through
//! [`common::lifecycle::LifecycleProxy`], which forwards the rest to moto unchanged and
//! answers those two as the service does, recording each call's parameters.
//!
//! The clients find the proxy the way they find any endpoint: `AWS_ENDPOINT_URL`, read when
//! the configuration loads (moto serves every service on one port). That is process state,
//! set per test under [`ENV`]: nextest runs every test in a process of its own, and under
//! `cargo test` the lock keeps two tests' endpoints apart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
use berth::autoscaling::{AutoScaling, LifecycleHook, LifecycleResult, TERMINATING};
use berth::aws::ApiErrorKind;
use berth::ecs::api::EcsApi;
use common::lifecycle::{form, LifecycleProxy, COMPLETE, HEARTBEAT};
use common::moto::{aws_config, ecs_tool, Moto};
use common::package_file;
use std::collections::BTreeSet;
use std::time::Duration;

/// Held for a whole test: the endpoint is process-wide.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// moto's credentials while it does not authenticate.
const ROOT: (&str, &str) = ("testing", "testing");
const POLICY: &str = "packaging/iam/berth-drain-policy.json";
const HOOK: &str = "berth-drain";

/// Each test's bound on one call: far above what the calls take, below a hung test.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("the call returned within its bound")
}

/// What ecs_tool.py's `setup` made.
struct Host {
    cluster: String,
    arn: String,
    instance: String,
    group: String,
    v: serde_json::Value,
}

fn setup(url: &str, policy: bool) -> Host {
    let path = package_file(POLICY);
    let mut args = vec!["setup"];
    if policy {
        args.push(path.to_str().unwrap());
    }
    let v = ecs_tool(url, &args, ROOT);
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_owned();
    Host {
        cluster: s("cluster"),
        arn: s("container_instance_arn"),
        instance: s("asg_instance"),
        group: s("group"),
        v,
    }
}

/// The terminating hook the drain tests use: 900 s heartbeat timeout, CONTINUE by default.
fn put_terminating_hook(url: &str, group: &str, creds: (&str, &str)) -> serde_json::Value {
    ecs_tool(url, &["hook", group, HOOK, "terminating", "900", "CONTINUE"], creds)
}

/// moto, the proxy in front of it with the group's terminating hook registered, and the
/// host; the clients' endpoint is the proxy.
async fn started() -> (Moto, LifecycleProxy, Host, berth::aws::AwsConfig) {
    let moto = Moto::start(&[]);
    let host = setup(&moto.url(), false);
    put_terminating_hook(&moto.url(), &host.group, ROOT);
    let proxy = LifecycleProxy::start(&moto.url());
    proxy.register_hook(&host.group, HOOK);
    let config = aws_config(&proxy.url(), ROOT).await;
    (moto, proxy, host, config)
}

#[tokio::test]
async fn set_draining_is_read_back_as_draining() {
    let _env = ENV.lock().await;
    let (moto, proxy, host, config) = started().await;
    let ecs = EcsApi::new(&config);

    assert_eq!(ecs_tool(&moto.url(), &["status", &host.cluster, &host.arn], ROOT), "ACTIVE");
    let now = bounded(ecs.set_draining(&host.cluster, &host.arn)).await.unwrap();
    assert_eq!(now, "DRAINING");
    assert_eq!(ecs_tool(&moto.url(), &["status", &host.cluster, &host.arn], ROOT), "DRAINING");
    let ci = bounded(ecs.describe_container_instance(&host.cluster, &host.arn)).await.unwrap();
    assert_eq!(ci.status, "DRAINING");
    // Idempotent: a drain resumed after a restart sets it again.
    assert_eq!(bounded(ecs.set_draining(&host.cluster, &host.arn)).await.unwrap(), "DRAINING");
    // The JSON calls went through the proxy, forwarded and named by their target.
    let forwarded = proxy.calls();
    let names: Vec<&str> = forwarded.iter().map(|c| c.action.as_str()).collect();
    let (update, describe) = ("UpdateContainerInstancesState", "DescribeContainerInstances");
    assert_eq!(names, [update, describe, update]);
    assert!(forwarded.iter().all(|c| !c.answered_here && c.status == 200), "{forwarded:?}");
    assert!(forwarded.iter().all(|c| c.params.is_empty()), "{forwarded:?}");

    let missing = host.arn.replace(host.arn.rsplit('/').next().unwrap(), "0000-gone");
    let e = bounded(ecs.set_draining(&host.cluster, &missing)).await.unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ApiErrorKind::NotFound, Some("MISSING")), "{e}");
    assert_eq!(e.action, "ecs:UpdateContainerInstancesState");
    assert!(e.to_string().contains("0000-gone"), "{e}");
    let e = bounded(ecs.set_draining("no-such-cluster", &host.arn)).await.unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::NotFound, "{e}");
    assert_eq!(e.code.as_deref(), Some("ClusterNotFoundException"));
}

#[tokio::test]
async fn describe_terminating_hooks_finds_the_hook_with_its_timeouts_and_not_a_launching_one() {
    let _env = ENV.lock().await;
    let (moto, proxy, host, config) = started().await;
    ecs_tool(&moto.url(), &["hook", &host.group, "warm-up", "launching", "300", "ABANDON"], ROOT);
    let asg = AutoScaling::new(&config);

    let hooks = bounded(asg.describe_terminating_hooks(&host.group)).await.unwrap();
    assert_eq!(
        hooks,
        vec![LifecycleHook {
            name: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout: Duration::from_secs(900),
            // moto answers every hook with the service's 48 h maximum.
            global_timeout: Some(Duration::from_secs(172_800)),
            default_result: LifecycleResult::Continue,
        }]
    );
    let calls = proxy.calls_of("DescribeLifecycleHooks");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].param("AutoScalingGroupName"), Some(host.group.as_str()));
    assert!(!calls[0].answered_here && calls[0].status == 200, "{:?}", calls[0]);
}

#[tokio::test]
async fn heartbeat_and_complete_succeed_and_send_exactly_the_documented_parameters() {
    let _env = ENV.lock().await;
    let (_moto, proxy, host, config) = started().await;
    let asg = AutoScaling::new(&config);
    proxy.start_action(&host.instance);

    for _ in 0..2 {
        bounded(asg.record_heartbeat(&host.group, HOOK, &host.instance)).await.unwrap();
    }
    assert!(proxy.is_active(&host.instance), "a heartbeat does not end the action");
    bounded(asg.complete(&host.group, HOOK, &host.instance, LifecycleResult::Continue))
        .await
        .unwrap();
    assert!(!proxy.is_active(&host.instance));

    let want = |action: &str, extra: &[(&str, &str)]| {
        let mut m: std::collections::BTreeMap<String, String> = [
            ("Action", action),
            ("Version", "2011-01-01"),
            ("AutoScalingGroupName", host.group.as_str()),
            ("LifecycleHookName", HOOK),
            ("InstanceId", host.instance.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
    };
    let heartbeats = proxy.calls_of(HEARTBEAT);
    assert_eq!(heartbeats.len(), 2);
    for c in &heartbeats {
        // By instance id, no token.
        assert_eq!(c.params, want(HEARTBEAT, &[]));
        assert!(c.succeeded_here(), "{c:?}");
    }
    let completes = proxy.calls_of(COMPLETE);
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].params, want(COMPLETE, &[("LifecycleActionResult", "CONTINUE")]));
    assert!(completes[0].succeeded_here());
    assert!(heartbeats[1].at <= completes[0].at);

    // ABANDON is spelled as the API does.
    proxy.start_action(&host.instance);
    bounded(asg.complete(&host.group, HOOK, &host.instance, LifecycleResult::Abandon))
        .await
        .unwrap();
    let last = proxy.calls_of(COMPLETE).pop().unwrap();
    assert_eq!(last.param("LifecycleActionResult"), Some("ABANDON"));
    assert!(last.succeeded_here());
}

#[tokio::test]
async fn after_complete_a_heartbeat_or_a_second_complete_is_no_active_action() {
    let _env = ENV.lock().await;
    let (_moto, proxy, host, config) = started().await;
    let asg = AutoScaling::new(&config);

    // Before the instance waits: there is no action yet.
    let e = bounded(asg.record_heartbeat(&host.group, HOOK, &host.instance)).await.unwrap_err();
    assert!(e.is_no_active_action(), "{e}");

    proxy.start_action(&host.instance);
    bounded(asg.complete(&host.group, HOOK, &host.instance, LifecycleResult::Continue))
        .await
        .unwrap();
    let heartbeat =
        bounded(asg.record_heartbeat(&host.group, HOOK, &host.instance)).await.unwrap_err();
    let again = bounded(asg.complete(&host.group, HOOK, &host.instance, LifecycleResult::Continue))
        .await
        .unwrap_err();
    for (e, action) in [
        (&heartbeat, "autoscaling:RecordLifecycleActionHeartbeat"),
        (&again, "autoscaling:CompleteLifecycleAction"),
    ] {
        assert!(e.is_no_active_action(), "{e}");
        assert_eq!(e.action, action);
        assert_eq!(e.kind, ApiErrorKind::Other, "{e}");
        assert!(!e.kind.is_transient());
        assert_eq!((e.code.as_deref(), e.status), (Some("ValidationError"), Some(400)));
        // The SDK read the service's message from the XML error.
        assert_eq!(
            e.message,
            format!("No active Lifecycle Action found with instance ID {}", host.instance)
        );
    }
    // A ValidationError is not retried: one request per call.
    let answered: Vec<_> = proxy.calls().into_iter().filter(|c| c.answered_here).collect();
    assert_eq!(answered.len(), 4, "{answered:?}");
    assert_eq!(answered.iter().filter(|c| c.succeeded_here()).count(), 1);
}

#[tokio::test]
async fn the_proxy_checks_parameters_and_records_what_it_refused() {
    let _env = ENV.lock().await;
    let (_moto, proxy, host, config) = started().await;
    let asg = AutoScaling::new(&config);
    let token = proxy.start_action(&host.instance);

    // A hook the test did not register: refused through the SDK as the service would.
    let e =
        bounded(asg.record_heartbeat(&host.group, "not-a-hook", &host.instance)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("ValidationError"), "{e}");
    assert!(e.message.contains("not-a-hook"), "{e}");
    let refused = proxy.calls_of(HEARTBEAT).pop().unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.error.as_ref().unwrap().0, "ValidationError");

    let base =
        format!("Version=2011-01-01&AutoScalingGroupName={}&LifecycleHookName={HOOK}", host.group);
    let i = &host.instance;
    let call = |action: &str, rest: String| format!("Action={action}&{base}{rest}");
    let no_group = format!("Action={HEARTBEAT}&Version=2011-01-01&LifecycleHookName={HOOK}");
    let cases: &[(String, u16, &str)] = &[
        (call(COMPLETE, format!("&LifecycleActionResult=MAYBE&InstanceId={i}")), 400, "MAYBE"),
        (call(COMPLETE, format!("&InstanceId={i}")), 400, "LifecycleActionResult"),
        (call(HEARTBEAT, String::new()), 400, "InstanceId or LifecycleActionToken"),
        (format!("{no_group}&InstanceId={i}"), 400, "AutoScalingGroupName"),
        (
            call(HEARTBEAT, "&LifecycleActionToken=nope".into()),
            400,
            "No active Lifecycle Action found with token nope",
        ),
        // By token: the same action the instance id names.
        (
            call(HEARTBEAT, format!("&LifecycleActionToken={token}")),
            200,
            "<RecordLifecycleActionHeartbeatResult/>",
        ),
        (
            call(COMPLETE, format!("&LifecycleActionToken={token}&LifecycleActionResult=CONTINUE")),
            200,
            "<CompleteLifecycleActionResult/>",
        ),
        (
            call(COMPLETE, format!("&LifecycleActionToken={token}&LifecycleActionResult=CONTINUE")),
            400,
            "No active Lifecycle Action found with token",
        ),
    ];
    const ERROR_HEAD: &str = concat!(
        "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">",
        "<Error><Type>Sender</Type><Code>ValidationError</Code><Message>"
    );
    for (body, status, needle) in cases {
        let (got, text) = proxy.post(body);
        assert_eq!(got, *status, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
        if *status == 400 {
            assert!(text.starts_with(ERROR_HEAD), "{text}");
            assert!(text.contains("</Error><RequestId>"), "{text}");
        } else {
            assert!(text.contains("<ResponseMetadata><RequestId>"), "{text}");
        }
    }
    assert!(!proxy.is_active(&host.instance));
    let recorded: Vec<u16> =
        proxy.calls().iter().filter(|c| c.answered_here).map(|c| c.status).collect();
    assert_eq!(recorded.len(), cases.len() + 1);
    let statuses: Vec<u16> = cases.iter().map(|c| c.1).collect();
    assert_eq!(&recorded[1..], &statuses[..]);
}

#[test]
fn form_bodies_decode_as_the_query_protocol_encodes_them() {
    let p = form(b"Action=CompleteLifecycleAction&Version=2011-01-01&A=x%2Fy+z%3A&Empty=&Flag");
    assert_eq!(p["Action"], "CompleteLifecycleAction");
    assert_eq!(p["A"], "x/y z:");
    assert_eq!(p["Empty"], "");
    assert_eq!(p["Flag"], "");
}

/// What setup's IAM part creates after the host: 4 calls for the allowed user, 2 for the
/// denied one; the host itself is 8; then PutLifecycleHook and DescribeLifecycleHooks.
const SETUP_CALLS: u64 = 8 + 6 + 2;

#[tokio::test]
async fn sigv4_and_iam_the_drain_policy_allows_its_calls_and_nothing_else_does() {
    let _env = ENV.lock().await;
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", &SETUP_CALLS.to_string())]);
    let host = setup(&moto.url(), true);
    put_terminating_hook(&moto.url(), &host.group, ROOT);
    assert_eq!(host.v["calls"].as_u64().unwrap() + 2, SETUP_CALLS, "setup's call count changed");
    let proxy = LifecycleProxy::start(&moto.url());
    proxy.register_hook(&host.group, HOOK);
    let key = |who: &str| {
        (
            host.v[who]["key"].as_str().unwrap().to_owned(),
            host.v[who]["secret"].as_str().unwrap().to_owned(),
        )
    };
    let (allowed, denied) = (key("allowed"), key("denied"));

    // Signed by a user holding only the drain policy, forwarded by the proxy unchanged: moto
    // recomputes each signature and evaluates the policy.
    let config = aws_config(&proxy.url(), (&allowed.0, &allowed.1)).await;
    let ecs = EcsApi::new(&config);
    let asg = AutoScaling::new(&config);
    assert_eq!(bounded(ecs.set_draining(&host.cluster, &host.arn)).await.unwrap(), "DRAINING");
    let hooks = bounded(asg.describe_terminating_hooks(&host.group)).await.unwrap();
    assert_eq!(hooks.len(), 1);
    // (Heartbeat and completion are the proxy's: moto cannot evaluate them.)

    let config = aws_config(&proxy.url(), (&denied.0, &denied.1)).await;
    let refused = [
        bounded(EcsApi::new(&config).set_draining(&host.cluster, &host.arn)).await.unwrap_err(),
        bounded(AutoScaling::new(&config).describe_terminating_hooks(&host.group))
            .await
            .unwrap_err(),
    ];
    let granted = common::iam::actions(POLICY);
    for e in &refused {
        assert_eq!(e.kind, ApiErrorKind::AccessDenied, "{e}");
        assert_eq!(e.status, Some(403), "{e}");
        assert!(granted.contains(e.action), "{} is not in {POLICY}", e.action);
        assert!(!format!("{e} {e:?}").contains(&denied.1), "an error shows the secret");
    }
}

#[test]
fn the_drain_policy_grants_exactly_its_actions_on_the_documented_arn_formats() {
    let want: BTreeSet<String> = [
        "ecs:UpdateContainerInstancesState",
        "autoscaling:DescribeLifecycleHooks",
        "autoscaling:RecordLifecycleActionHeartbeat",
        "autoscaling:CompleteLifecycleAction",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(common::iam::actions(POLICY), want);
    // Every action berth's clients name for these calls is one of them.
    for a in ["autoscaling:RecordLifecycleActionHeartbeat", "autoscaling:CompleteLifecycleAction"] {
        assert!(want.contains(a));
    }

    let ci_new = "arn:aws:ecs:eu-west-1:123456789012:container-instance/prod/0123456789abcdef0123456789abcdef";
    let ci_old =
        "arn:aws:ecs:us-east-1:123456789012:container-instance/53ac7152-dcd1-4102-81f5-208962864132";
    let group = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:\
                 8e1f7a2c-1b3d-4e5f-a6b7-c8d9e0f1a2b3:autoScalingGroupName/prod-ecs-hosts";
    let launch_config = "arn:aws:autoscaling:us-east-1:123456789012:launchConfiguration:1:\
                         launchConfigurationName/x";
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "ecs:UpdateContainerInstancesState",
            &[ci_new, ci_old],
            &[
                "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "arn:aws:ecs:us-east-1:123456789012:service/prod/web",
            ],
        ),
        // No resource-level permissions: "*" is the only Resource that works.
        ("autoscaling:DescribeLifecycleHooks", &["*"], &[]),
        ("autoscaling:RecordLifecycleActionHeartbeat", &[group], &[launch_config]),
        ("autoscaling:CompleteLifecycleAction", &[group], &[launch_config]),
    ];
    common::iam::check_resources(POLICY, cases);
}
