//! The ECS container agent's introspection API (`http://127.0.0.1:51678` by default):
//! `GET /v1/metadata` (cluster, container instance ARN) and `GET /v1/tasks` (the tasks on
//! this host and their containers), with `?dockerid=` for the task of one container.
//!
//! Faithful to the agent's handlers (amazon-ecs-agent `agent/handlers/v1`):
//! - `ContainerInstanceArn` is `null` until the agent has registered the instance;
//! - `DesiredStatus` is left out (omitempty) when it would contradict `KnownStatus`;
//! - internal containers (the `awsvpc` pause container) are not listed;
//! - `?dockerid=` takes a full id or a 12-character short id; an unknown one is 404 (with an
//!   empty task as body), an ambiguous short id or both `dockerid` and `taskarn` are 400.
//!
//! Docs: <https://docs.aws.amazon.com/AmazonECS/latest/developerguide/ecs-agent-introspection.html>.

use serde::Deserialize;
use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:51678";
/// The agent answers from memory: a slow answer means it is stuck or restarting.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot build the ECS agent client: {0}")]
    Build(String),
    #[error("ECS agent {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("ECS agent {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("ECS agent {url}: unexpected answer: {reason}")]
    Body { url: String, reason: String },
}

/// `GET /v1/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub cluster: String,
    /// `None` until the agent has registered the container instance.
    pub container_instance_arn: Option<String>,
    #[serde(default)]
    pub version: String,
}

/// One task of `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub arn: String,
    /// Empty when the agent leaves it out.
    #[serde(default)]
    pub desired_status: String,
    pub known_status: String,
    pub family: String,
    pub version: String,
    /// `null` in the agent's "not found" body.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Container {
    #[serde(rename = "DockerId")]
    pub docker_id: String,
    #[serde(rename = "DockerName")]
    pub docker_name: String,
    #[serde(rename = "Name")]
    pub name: String,
}

#[derive(Deserialize)]
struct Tasks {
    #[serde(rename = "Tasks", default, deserialize_with = "null_as_empty")]
    tasks: Vec<Task>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A client of the local agent.
#[derive(Debug, Clone)]
pub struct Agent {
    http: reqwest::Client,
    base: String,
}

impl Agent {
    pub fn new(base: &str) -> Result<Agent, AgentError> {
        let http = reqwest::Client::builder()
            // The agent is on this host: never through a proxy.
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| AgentError::Build(e.to_string()))?;
        Ok(Agent { http, base: base.trim_end_matches('/').to_string() })
    }

    pub async fn metadata(&self) -> Result<Metadata, AgentError> {
        let (status, body, url) = self.get("/v1/metadata").await?;
        match status {
            200 => parse(&url, &body),
            s => Err(AgentError::Status { url, status: s }),
        }
    }

    /// Every task the agent knows on this host (stopped ones included, until it forgets
    /// them).
    pub async fn tasks(&self) -> Result<Vec<Task>, AgentError> {
        let (status, body, url) = self.get("/v1/tasks").await?;
        match status {
            200 => parse::<Tasks>(&url, &body).map(|t| t.tasks),
            s => Err(AgentError::Status { url, status: s }),
        }
    }

    /// The task of one container (full or 12-character id); `None` when the agent has no
    /// task with it (404: not an ECS container, or one it has forgotten).
    pub async fn task_of(&self, docker_id: &str) -> Result<Option<Task>, AgentError> {
        let (status, body, url) = self.get(&format!("/v1/tasks?dockerid={docker_id}")).await?;
        match status {
            200 => parse(&url, &body).map(Some),
            404 => Ok(None),
            s => Err(AgentError::Status { url, status: s }),
        }
    }

    async fn get(&self, path: &str) -> Result<(u16, bytes::Bytes, String), AgentError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: reqwest::Error| AgentError::Unreachable {
            url: url.clone(),
            reason: crate::error::describe(&e),
        };
        let resp = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(unreachable)?;
        Ok((status, body, url))
    }
}

fn parse<'a, T: Deserialize<'a>>(url: &str, body: &'a [u8]) -> Result<T, AgentError> {
    serde_json::from_slice(body)
        .map_err(|e| AgentError::Body { url: url.to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_documented_answers_parse() {
        let m: Metadata = serde_json::from_str(
            r#"{"Cluster":"default","ContainerInstanceArn":"arn:aws:ecs:us-west-2:012345678910:container-instance/default/1f73d099-b914-411c-a9ff-81633b7741dd","Version":"Amazon ECS Agent - v1.30.0 (02ff320c)"}"#,
        )
        .unwrap();
        assert_eq!(m.cluster, "default");
        assert!(m
            .container_instance_arn
            .unwrap()
            .ends_with("1f73d099-b914-411c-a9ff-81633b7741dd"));
        let unregistered: Metadata =
            serde_json::from_str(r#"{"Cluster":"c","ContainerInstanceArn":null,"Version":"v"}"#)
                .unwrap();
        assert_eq!(unregistered.container_instance_arn, None);

        let t: Tasks = serde_json::from_str(
            r#"{"Tasks":[{"Arn":"arn:aws:ecs:us-west-2:012345678910:task/090eff9b","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Family":"console-sample-app-static","Version":"6","Containers":[{"DockerId":"189a8ff4b5f0","DockerName":"ecs-console-sample-app-static-6-simple-app-86caf9bcabe3e9c61600","Name":"simple-app"}]},
            {"Arn":"arn:aws:ecs:us-west-2:012345678910:task/2d5a","KnownStatus":"STOPPED","Family":"x","Version":"1","Containers":[]}]}"#,
        )
        .unwrap();
        assert_eq!(t.tasks.len(), 2);
        assert_eq!(t.tasks[0].containers[0].name, "simple-app");
        assert_eq!(t.tasks[1].desired_status, "", "left out by the agent");
        // The agent's "not found" body for ?dockerid=.
        let empty: Task = serde_json::from_str(
            r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#,
        )
        .unwrap();
        assert!(empty.containers.is_empty());
        let none: Tasks = serde_json::from_str(r#"{"Tasks":null}"#).unwrap();
        assert!(none.tasks.is_empty());
    }
}
