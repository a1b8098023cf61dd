//! Which tasks on this host are daemons: they hold resources but are not work. Capacity does
//! not count them as work (idleness, scale-in protection) and the drain does not wait for
//! them — the one answer both use.
//!
//! A daemon is a task whose family is in `[ecs] daemon_task_families`, or berth's own task
//! (found from its own container's `com.amazonaws.ecs.task-definition-family` label when
//! berth runs as an ECS daemon task). The ECS agent's introspection API does not say which
//! tasks a `DAEMON` service started, so the operator's list is the only other source.

use crate::docker::{self, labels};
use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct Daemons {
    families: HashSet<String>,
    /// berth's own container, when it runs in one.
    own_container: Option<String>,
    /// berth's own family, once found from its container's labels.
    own_family: Option<String>,
}

impl Daemons {
    /// The configured families; berth's own container from `/proc/self`.
    pub fn new(families: &[String]) -> Daemons {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let own = own_container_id(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"));
        Daemons::with_own_container(families, own)
    }

    pub fn with_own_container(families: &[String], own_container: Option<String>) -> Daemons {
        Daemons { families: families.iter().cloned().collect(), own_container, own_family: None }
    }

    /// Look for berth's own family in Docker's list (until found; cheap: a map lookup).
    pub fn find_own_family(&mut self, engine: Option<&docker::Engine>) {
        if self.own_family.is_some() {
            return;
        }
        let (Some(id), Some(engine)) = (&self.own_container, engine) else { return };
        if let Some(c) = engine.snapshot().containers.get(id.as_str()) {
            if let Some(f) = c.label(labels::ECS_TASK_DEFINITION_FAMILY) {
                tracing::info!(family = f, "berth's own task family is a daemon");
                self.own_family = Some(f.to_string());
            }
        }
    }

    pub fn is_daemon(&self, family: &str) -> bool {
        self.families.contains(family) || self.own_family.as_deref() == Some(family)
    }
}

/// berth's own container id when it runs in a container: Docker bind-mounts the
/// container's `hostname`, `hosts` and `resolv.conf` from
/// `/var/lib/docker/containers/<id>/`, which `/proc/self/mountinfo` shows whatever the
/// cgroup version or namespace; `/proc/self/cgroup` (v1: `.../docker/<id>` or
/// `/ecs/<task>/<id>`) is the fallback. Pure over the two files' text.
pub fn own_container_id(mountinfo: &str, cgroup: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for line in mountinfo.lines() {
        if let Some(rest) = line.split("/containers/").nth(1) {
            if let Some(id) = rest.split('/').next().filter(|id| is_id(id)) {
                return Some(id.to_string());
            }
        }
    }
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let last = path.rsplit('/').next().unwrap_or("");
        let last =
            last.strip_prefix("docker-").and_then(|l| l.strip_suffix(".scope")).unwrap_or(last);
        if is_id(last) {
            return Some(last.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_families_are_daemons() {
        let d = Daemons::with_own_container(&["log-router".into()], None);
        assert!(d.is_daemon("log-router"));
        assert!(!d.is_daemon("web"));
    }

    #[test]
    fn own_container_id_from_mountinfo_else_cgroup() {
        let id = "4c5ac2b1e9e0f7a9d6b2c1e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3";
        let mountinfo = format!(
            "610 590 0:52 / / rw,relatime master:1 - overlay overlay rw\n\
             631 610 259:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/root rw\n"
        );
        assert_eq!(own_container_id(&mountinfo, ""), Some(id.to_string()));
        let v1 = format!("12:memory:/ecs/5a0d5a0b1b7c4f6c/{id}\n11:cpu:/docker/{id}\n");
        assert_eq!(own_container_id("", &v1), Some(id.to_string()));
        let systemd = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(own_container_id("", &systemd), Some(id.to_string()));
        assert_eq!(
            own_container_id("1 2 0:1 / / rw - ext4 /dev/root rw\n", "0::/\n"),
            None,
            "not a container"
        );
        assert_eq!(own_container_id("", "0::/user.slice/user-0.slice/session-1.scope\n"), None);
    }
}
