//! What the engine tells of a container: its entry in the container list ([`Summary`]) and,
//! through an inspect, its resource settings ([`Resources`]).

use super::labels;
use bollard::models::{ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use std::collections::HashMap;

/// A container as the list shows it.
///
/// The list, not inspect, is what the engine module reads: Docker answers an inspect under
/// the container's lock, which it holds while an exiting container's logs drain — into
/// berth, whose input may be waiting for that very answer. The list is served from a
/// snapshot without that lock. What only inspect tells (environment, resource settings) is
/// asked for separately, bounded, off the log path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub id: String,
    /// As Docker writes it: with a leading `/`.
    pub name: String,
    /// The image as the list names it: by id (`sha256:…`) once its tag has moved to another
    /// image.
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `None` when the engine did not say.
    pub state: Option<ContainerSummaryStateEnum>,
}

impl Summary {
    pub fn running(&self) -> bool {
        matches!(self.state, Some(ContainerSummaryStateEnum::RUNNING))
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Label `com.amazonaws.ecs.task-arn`: set on the containers the ECS agent started.
    pub fn ecs_task_arn(&self) -> Option<&str> {
        self.label(labels::ECS_TASK_ARN)
    }

    pub(crate) fn from_list(s: ContainerSummary) -> Summary {
        Summary {
            id: s.id.unwrap_or_default(),
            name: s.names.and_then(|n| n.into_iter().next()).unwrap_or_default(),
            image: s.image.unwrap_or_default(),
            labels: s.labels.unwrap_or_default(),
            state: s.state,
        }
    }
}

/// What the list said of one container id (after a `start` or `rename` event).
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Listed(Summary),
    /// Not in the list: gone already (a container that exited at once and was removed), or
    /// not a container.
    Gone,
    /// The list failed (timed out, engine error): the reason.
    Failed(String),
}

/// A container's resource settings (`HostConfig` of its inspect), for capacity: what its
/// task reserved on this host. Docker's zero means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `HostConfig.Memory`: the hard limit, bytes.
    pub memory: i64,
    /// `HostConfig.MemoryReservation`: the soft limit, bytes.
    pub memory_reservation: i64,
    /// `HostConfig.CpuShares`: the relative CPU weight (ECS: 1024 per vCPU reserved).
    pub cpu_shares: i64,
    /// `HostConfig.CgroupParent`: the task's cgroup when the ECS agent sets task limits.
    pub cgroup_parent: String,
}

impl Resources {
    pub(crate) fn from_inspect(info: &ContainerInspectResponse) -> Resources {
        let Some(h) = &info.host_config else { return Resources::default() };
        Resources {
            memory: h.memory.unwrap_or(0),
            memory_reservation: h.memory_reservation.unwrap_or(0),
            cpu_shares: h.cpu_shares.unwrap_or(0),
            cgroup_parent: h.cgroup_parent.clone().unwrap_or_default(),
        }
    }
}

/// Every container the engine has, in all states.
pub(crate) async fn list_all(client: &Docker) -> Result<Vec<Summary>, bollard::errors::Error> {
    let opts = ListContainersOptions { all: true, ..Default::default() };
    Ok(client.list_containers(Some(opts)).await?.into_iter().map(Summary::from_list).collect())
}

/// The container with exactly this id, from the list (all states).
pub(crate) async fn list_one(
    client: &Docker,
    id: &str,
) -> Result<Option<Summary>, bollard::errors::Error> {
    let mut filters = HashMap::new();
    filters.insert("id".to_string(), vec![id.to_string()]);
    let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let list = client.list_containers(Some(opts)).await?;
    // The filter matches id prefixes too.
    Ok(list.into_iter().map(Summary::from_list).find(|c| c.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_an_inspect_zero_when_unset() {
        let info: ContainerInspectResponse = serde_json::from_str(
            r#"{"Id":"abc","HostConfig":{"Memory":536870912,"MemoryReservation":268435456,"CpuShares":512,"CgroupParent":"/ecs/0123abcd"}}"#,
        )
        .unwrap();
        assert_eq!(
            Resources::from_inspect(&info),
            Resources {
                memory: 536_870_912,
                memory_reservation: 268_435_456,
                cpu_shares: 512,
                cgroup_parent: "/ecs/0123abcd".into()
            }
        );
        let bare: ContainerInspectResponse = serde_json::from_str(r#"{"Id":"abc"}"#).unwrap();
        assert_eq!(Resources::from_inspect(&bare), Resources::default());
    }

    #[test]
    fn summary_from_the_list() {
        let s: ContainerSummary = serde_json::from_str(
            r#"{"Id":"abc","Names":["/web","/alias"],"Image":"nginx:1","Labels":{"com.amazonaws.ecs.task-arn":"arn:x/y"},"State":"running"}"#,
        )
        .unwrap();
        let s = Summary::from_list(s);
        assert_eq!((s.id.as_str(), s.name.as_str(), s.image.as_str()), ("abc", "/web", "nginx:1"));
        assert!(s.running());
        assert_eq!(s.ecs_task_arn(), Some("arn:x/y"));
    }
}
