//! The ECS agent introspection client (`berth::ecs::agent`) against the fake agent of
//! tests/common/ecs_agent.rs: metadata before and after registration, the task list,
//! `?dockerid=` by full and short id, 404 as "no such task", 400 and no agent as errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use berth::ecs::agent::{Agent, AgentError};
use common::ecs_agent::{AgentState, FakeAgent, FakeTask};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn task(arn: &str, known: &str, family: &str, ids: &[&str]) -> FakeTask {
    FakeTask {
        arn: arn.into(),
        desired: if known == "STOPPED" { String::new() } else { "RUNNING".into() },
        known: known.into(),
        family: family.into(),
        version: "3".into(),
        containers: ids
            .iter()
            .map(|id| (id.to_string(), format!("ecs-{family}-3-app-{id}"), "app".to_string()))
            .collect(),
    }
}

const ID_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const ID_B: &str = "aaaaaaaaaaaa2222222222222222222222222222222222222222222222222222";
const ID_C: &str = "cccccccccccc3333333333333333333333333333333333333333333333333333";

#[test]
fn metadata_tasks_and_lookups_by_docker_id() {
    let fake = FakeAgent::start(AgentState {
        down: false,
        cluster: "prod".into(),
        instance_arn: None,
        tasks: vec![
            task("arn:aws:ecs:eu-west-1:1:task/prod/t1", "RUNNING", "batch", &[ID_A]),
            task("arn:aws:ecs:eu-west-1:1:task/prod/t2", "STOPPED", "web", &[ID_B, ID_C]),
        ],
    });
    let agent = Agent::new(&fake.url).unwrap();
    rt().block_on(async {
        let m = agent.metadata().await.unwrap();
        assert_eq!((m.cluster.as_str(), m.container_instance_arn.as_deref()), ("prod", None));
        fake.state.lock().unwrap().instance_arn =
            Some("arn:aws:ecs:eu-west-1:1:container-instance/prod/ci1".into());
        let m = agent.metadata().await.unwrap();
        assert_eq!(
            m.container_instance_arn.as_deref(),
            Some("arn:aws:ecs:eu-west-1:1:container-instance/prod/ci1"),
            "registered"
        );

        let tasks = agent.tasks().await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            (tasks[0].family.as_str(), tasks[0].known_status.as_str()),
            ("batch", "RUNNING")
        );
        assert_eq!(tasks[1].desired_status, "", "left out by the agent for a stopped task");
        assert_eq!(tasks[1].containers.len(), 2);

        let t = agent.task_of(ID_C).await.unwrap().expect("found by full id");
        assert_eq!(t.arn, "arn:aws:ecs:eu-west-1:1:task/prod/t2");
        let t = agent.task_of(&ID_C[..12]).await.unwrap().expect("found by short id");
        assert_eq!(t.family, "web");
        assert_eq!(agent.task_of(&"f".repeat(64)).await.unwrap(), None, "404: no such task");
        // A short id shared by two tasks' containers: the agent answers 400.
        let e = agent.task_of(&ID_A[..12]).await.unwrap_err();
        assert!(matches!(e, AgentError::Status { status: 400, .. }), "{e}");
    });
    let reqs = fake.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r == &format!("/v1/tasks?dockerid={ID_C}")), "{reqs:?}");
}

#[test]
fn no_agent_is_an_error_naming_its_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let agent = Agent::new(&url).unwrap();
    let e = rt().block_on(agent.tasks()).unwrap_err();
    assert!(matches!(e, AgentError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}
