//! Capacity's AWS calls against a real ECS / Auto Scaling / CloudWatch Logs / IAM API
//! (moto_server, from scripts/test-deps), through the library's own clients: a host set up
//! as a real one is (tests/fixtures/ecs_tool.py: an Auto Scaling group whose instance is a
//! registered ECS container instance running two tasks, and an instance in no group);
//! errors classified (a missing container instance, an unreachable endpoint, a user without
//! the policy); SigV4 + IAM with packaging/iam/berth-capacity-policy.json; the policy's ARN
//! patterns against the documented ARN formats.
//!
//! The clients find moto the way they find any endpoint: the SDK reads `AWS_ENDPOINT_URL`
//! when [`Aws::load`] builds the configuration. That is process state, set per test under
//! [`ENV`]: nextest runs every test in a process of its own, and under `cargo test` the lock
//! keeps two tests' endpoints apart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
use berth::autoscaling::{AsgInstance, AutoScaling};
use berth::aws::{ApiError, ApiErrorKind, AwsConfig};
use berth::capacity::compute::Resources;
use berth::ecs::api::EcsApi;
use common::moto::{ecs_tool, Moto};
use common::{arn_like, package_file};
use std::collections::BTreeSet;
use std::time::Duration;

/// Held for a whole test: the endpoint is process-wide.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// moto's fixed account and the credentials it accepts while it does not authenticate.
const ROOT: (&str, &str) = ("testing", "testing");
const POLICY: &str = "packaging/iam/berth-capacity-policy.json";

/// Each test's bound on one call: far above what the calls take, below a hung test.
const BOUND: Duration = Duration::from_secs(60);

/// The configuration berth's `[ecs]` section would give, with `creds` and `endpoint`.
async fn config_for(endpoint: &str, creds: (&str, &str)) -> AwsConfig {
    common::moto::aws_config(endpoint, creds).await
}

/// What `setup` made.
struct Host {
    cluster: String,
    arn: String,
    asg_instance: String,
    lone_instance: String,
    group: String,
    v: serde_json::Value,
}

fn setup(url: &str, policy: bool) -> Host {
    let policy_path = package_file(POLICY);
    let mut args = vec!["setup"];
    let p = policy_path.to_str().unwrap();
    if policy {
        args.push(p);
    }
    let v = ecs_tool(url, &args, ROOT);
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_owned();
    Host {
        cluster: s("cluster"),
        arn: s("container_instance_arn"),
        asg_instance: s("asg_instance"),
        lone_instance: s("lone_instance"),
        group: s("group"),
        v,
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("the call returned within its bound")
}

#[tokio::test]
async fn describe_container_instance_reads_registered_remaining_and_counts() {
    let _env = ENV.lock().await;
    let moto = Moto::start(&[]);
    let host = setup(&moto.url(), false);
    let ecs = EcsApi::new(&config_for(&moto.url(), ROOT).await);

    let ci = bounded(ecs.describe_container_instance(&host.cluster, &host.arn)).await.unwrap();
    // moto registers every instance at 4096 units / 7482 MiB (it ignores totalResources);
    // two tasks of 256 / 512 run on it.
    assert_eq!(ci.registered, Resources { cpu_units: 4096, memory_mib: 7482 });
    assert_eq!(ci.remaining, Resources { cpu_units: 4096 - 512, memory_mib: 7482 - 1024 });
    assert_eq!((ci.running_tasks, ci.pending_tasks), (2, 0));
    assert_eq!(ci.status, "ACTIVE");
    assert!(ci.agent_connected);
    assert_eq!(ci.ec2_instance_id.as_deref(), Some(host.asg_instance.as_str()));

    // The short id names the same instance (ECS accepts either).
    let id = host.arn.rsplit('/').next().unwrap();
    let again = bounded(ecs.describe_container_instance(&host.cluster, id)).await.unwrap();
    assert_eq!(again, ci);
}

#[tokio::test]
async fn a_missing_container_instance_is_not_found() {
    let _env = ENV.lock().await;
    let moto = Moto::start(&[]);
    let host = setup(&moto.url(), false);
    let ecs = EcsApi::new(&config_for(&moto.url(), ROOT).await);

    let missing = host.arn.replace(host.arn.rsplit('/').next().unwrap(), "0000-gone");
    let e = bounded(ecs.describe_container_instance(&host.cluster, &missing)).await.unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::NotFound, "{e}");
    assert_eq!(e.code.as_deref(), Some("MISSING"));
    assert_eq!(e.action, "ecs:DescribeContainerInstances");
    assert!(e.to_string().contains("0000-gone"), "{e}");

    let e =
        bounded(ecs.describe_container_instance("no-such-cluster", &host.arn)).await.unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::NotFound, "{e}");
    assert_eq!(e.code.as_deref(), Some("ClusterNotFoundException"));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_not_a_hang() {
    let _env = ENV.lock().await;
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let config = config_for(&url, ROOT).await;

    let e =
        bounded(EcsApi::new(&config).describe_container_instance("prod", "abc")).await.unwrap_err();
    // Unreachable, not Timeout: refused connections end the retries, the 30 s operation
    // timeout is not what stopped them.
    assert_eq!(e.kind, ApiErrorKind::Unreachable, "{e}");
    assert!(e.kind.is_transient());
    assert_eq!((e.code.as_deref(), e.status), (None, None));

    let e = bounded(AutoScaling::new(&config).describe_instance("i-0")).await.unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::Unreachable, "{e}");
}

#[tokio::test]
async fn describe_instance_finds_the_group_and_set_protection_round_trips() {
    let _env = ENV.lock().await;
    let moto = Moto::start(&[]);
    let host = setup(&moto.url(), false);
    let asg = AutoScaling::new(&config_for(&moto.url(), ROOT).await);

    let got = bounded(asg.describe_instance(&host.asg_instance)).await.unwrap();
    assert_eq!(
        got,
        Some(AsgInstance {
            group: host.group.clone(),
            protected: false,
            lifecycle_state: "InService".into(),
        })
    );
    assert_eq!(bounded(asg.describe_instance(&host.lone_instance)).await.unwrap(), None);

    for on in [true, false, true] {
        bounded(asg.set_protection(&host.group, &host.asg_instance, on)).await.unwrap();
        let read_back = ecs_tool(&moto.url(), &["protected", &host.asg_instance], ROOT);
        assert_eq!(read_back, serde_json::json!(on), "ProtectedFromScaleIn after set({on})");
        let ours = bounded(asg.describe_instance(&host.asg_instance)).await.unwrap().unwrap();
        assert_eq!(ours.protected, on);
    }
    // Setting what is already set succeeds (the SDK may retry it).
    bounded(asg.set_protection(&host.group, &host.asg_instance, true)).await.unwrap();
}

/// What setup's IAM part creates after the host: 4 calls for the allowed user, 2 for the
/// denied one; the host itself is 8. moto authenticates every request after these.
const SETUP_CALLS: u64 = 8 + 6;

#[tokio::test]
async fn sigv4_and_iam_the_policy_allows_every_call_and_nothing_else_does() {
    let _env = ENV.lock().await;
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", &SETUP_CALLS.to_string())]);
    let host = setup(&moto.url(), true);
    assert_eq!(host.v["calls"], SETUP_CALLS, "ecs_tool.py setup's call count changed");
    let key = |who: &str| {
        (
            host.v[who]["key"].as_str().unwrap().to_owned(),
            host.v[who]["secret"].as_str().unwrap().to_owned(),
        )
    };
    let (allowed, denied) = (key("allowed"), key("denied"));

    // The user holding only the policy: every call capacity makes succeeds, signed.
    let config = config_for(&moto.url(), (&allowed.0, &allowed.1)).await;
    let ecs = EcsApi::new(&config);
    let asg = AutoScaling::new(&config);
    let ci = bounded(ecs.describe_container_instance(&host.cluster, &host.arn)).await.unwrap();
    assert_eq!(ci.registered.cpu_units, 4096);
    let found = bounded(asg.describe_instance(&host.asg_instance)).await.unwrap().unwrap();
    bounded(asg.set_protection(&found.group, &host.asg_instance, true)).await.unwrap();
    let read_back =
        ecs_tool(&moto.url(), &["protected", &host.asg_instance], (&allowed.0, &allowed.1));
    assert_eq!(read_back, serde_json::json!(true));
    let attrs = [("berth.schedulable.worker".to_string(), "3".to_string())];
    // (Read back in tests/capacity.rs: ecs:ListAttributes is not the policy's to grant.)
    bounded(ecs.put_attributes(&host.cluster, &host.arn, &attrs)).await.unwrap();
    emf_calls(&config).await.unwrap();

    // The allowed key with a wrong secret: moto recomputes the signature and refuses it.
    let forged = config_for(&moto.url(), (&allowed.0, "not-the-secret")).await;
    let e = bounded(EcsApi::new(&forged).describe_container_instance(&host.cluster, &host.arn))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::AccessDenied, "{e}");

    // The same calls by a user holding nothing: each refused, and classified as such.
    let config = config_for(&moto.url(), (&denied.0, &denied.1)).await;
    let ecs = EcsApi::new(&config);
    let asg = AutoScaling::new(&config);
    let mut refused = vec![
        bounded(ecs.describe_container_instance(&host.cluster, &host.arn)).await.unwrap_err(),
        bounded(asg.describe_instance(&host.asg_instance)).await.unwrap_err(),
        bounded(asg.set_protection(&host.group, &host.asg_instance, false)).await.unwrap_err(),
        bounded(ecs.put_attributes(&host.cluster, &host.arn, &[("a".into(), "b".into())]))
            .await
            .unwrap_err(),
    ];
    refused.push(emf_calls(&config).await.unwrap_err());
    for e in &refused {
        assert_eq!(e.kind, ApiErrorKind::AccessDenied, "{e}");
        assert!(!e.kind.is_transient());
        assert_eq!(e.status, Some(403), "{e}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(&denied.1), "an error shows the secret: {shown}");
    }
    // What each refused call needs is an action of the policy.
    let granted: BTreeSet<String> = common::iam::actions(POLICY);
    for e in &refused {
        assert!(granted.contains(e.action), "{} is not in {POLICY}", e.action);
    }
    // Nothing else changed the protection.
    let read_back =
        ecs_tool(&moto.url(), &["protected", &host.asg_instance], (&allowed.0, &allowed.1));
    assert_eq!(read_back, serde_json::json!(true));
}

/// The EMF publisher's calls, with the CloudWatch Logs client built as the others are: the
/// policy's logs statement covers them, and [`ApiError::from_sdk`] takes their errors too.
async fn emf_calls(config: &AwsConfig) -> Result<(), ApiError> {
    use aws_sdk_cloudwatchlogs as cwl;
    let client = cwl::Client::from_conf(
        cwl::config::Builder::from(config.sdk())
            .retry_config(berth::aws::api::retry_config())
            .timeout_config(berth::aws::api::timeout_config())
            .build(),
    );
    let (group, stream) = ("/berth/capacity", "i-host");
    match bounded(client.create_log_group().log_group_name(group).send()).await {
        Ok(_) => {}
        Err(e) => {
            let e = ApiError::from_sdk("logs:CreateLogGroup", e);
            if e.code.as_deref() != Some("ResourceAlreadyExistsException") {
                return Err(e);
            }
        }
    }
    bounded(client.create_log_stream().log_group_name(group).log_stream_name(stream).send())
        .await
        .map_err(|e| ApiError::from_sdk("logs:CreateLogStream", e))?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as i64;
    let event = cwl::types::InputLogEvent::builder().timestamp(now).message("{}").build().unwrap();
    bounded(
        client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .log_events(event)
            .send(),
    )
    .await
    .map_err(|e| ApiError::from_sdk("logs:PutLogEvents", e))?;
    Ok(())
}

#[test]
fn arn_like_is_iam_wildcard_matching() {
    assert!(arn_like("a*c", "abbc") && arn_like("a*c", "ac") && arn_like("a?c", "abc"));
    assert!(!arn_like("a?c", "ac") && !arn_like("a*c", "acb"));
}

#[test]
fn the_policy_grants_exactly_capacitys_actions_on_the_documented_arn_formats() {
    let want: BTreeSet<String> = [
        "ecs:DescribeContainerInstances",
        "ecs:PutAttributes",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:SetInstanceProtection",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(common::iam::actions(POLICY), want);

    // Per action: ARNs of the documented formats (Service Authorization Reference) that must
    // match a Resource of its statement, and neighbours that must not.
    let (ci_new, ci_old) = (
        // container-instance/${ClusterName}/${ContainerInstanceId}, and the older format
        // without the cluster that accounts may still use.
        "arn:aws:ecs:eu-west-1:123456789012:container-instance/prod/0123456789abcdef0123456789abcdef",
        "arn:aws:ecs:us-east-1:123456789012:container-instance/53ac7152-dcd1-4102-81f5-208962864132",
    );
    let group = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:\
                 8e1f7a2c-1b3d-4e5f-a6b7-c8d9e0f1a2b3:autoScalingGroupName/prod-ecs-hosts";
    let log_group = "arn:aws:logs:us-east-1:123456789012:log-group:/berth/capacity";
    let log_stream =
        "arn:aws:logs:us-east-1:123456789012:log-group:/berth/capacity:log-stream:i-0abc";
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "ecs:DescribeContainerInstances",
            &[ci_new, ci_old],
            &[
                "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "arn:aws:ecs:us-east-1:123456789012:task/prod/abc",
            ],
        ),
        (
            "ecs:PutAttributes",
            &[ci_new, ci_old],
            &["arn:aws:ecs:us-east-1:123456789012:task-definition/web:1"],
        ),
        // No resource-level permissions: "*" is the only Resource that works.
        ("autoscaling:DescribeAutoScalingInstances", &["*"], &[]),
        (
            "autoscaling:SetInstanceProtection",
            &[group],
            &["arn:aws:autoscaling:us-east-1:123456789012:launchConfiguration:1:launchConfigurationName/x"],
        ),
        (
            "logs:CreateLogGroup",
            &[log_group],
            &["arn:aws:logs:us-east-1:123456789012:log-group:/ecs/app"],
        ),
        (
            "logs:CreateLogStream",
            &[log_group, log_stream],
            &["arn:aws:logs:us-east-1:123456789012:log-group:/ecs/app:log-stream:x"],
        ),
        ("logs:PutLogEvents", &[log_group, log_stream], &[]),
    ];
    common::iam::check_resources(POLICY, cases);
}
