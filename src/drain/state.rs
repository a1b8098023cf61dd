//! The drain's state, persisted beside the buffer so that a berth restarted (or SIGKILLed)
//! mid-drain resumes where it was: it does not set DRAINING again needlessly, keeps the
//! heartbeat schedule, and never completes the lifecycle action twice.
//!
//! One small JSON file, replaced atomically (write a temporary file, fsync it, rename it
//! over the old one, fsync the directory): a crash leaves the old state or the new one,
//! never half of either. A file that cannot be read is an error for the caller to report —
//! never taken as "no drain", which could complete an action twice or skip one.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's format version; another one is refused, not guessed at.
pub const VERSION: u32 = 1;
/// The file's name in its directory.
pub const FILE: &str = "drain.json";

/// What started the drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// The Auto Scaling group's target lifecycle state became `Terminated`.
    AsgLifecycle,
    /// The Spot two-minute notice.
    Spot { action: String, time_ms: u64 },
    /// A rebalance recommendation or a scheduled event (a soft drain).
    Advisory { what: String },
    /// `berth drain` / `POST /v1/drain`.
    Operator,
    /// `drain_on_shutdown`: the systemd unit stopping.
    Shutdown,
}

/// Where the drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// DRAINING is to be set.
    SetDraining,
    /// Waiting for the non-daemon tasks to exit.
    WaitTasks,
    /// The tasks are gone: waiting for the sinks to deliver their last lines.
    Flush,
    /// The lifecycle action is to be completed.
    Complete,
    /// Done: completed, rejected, or nothing to complete.
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::SetDraining => "set_draining",
            Step::WaitTasks => "wait_tasks",
            Step::Flush => "flush",
            Step::Complete => "complete",
            Step::Done => "done",
        }
    }
}

/// How the lifecycle action ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// `CONTINUE` or `ABANDON` as sent; `rejected` when the service said there was no such
    /// action any more (completed by someone else, or expired).
    pub result: String,
    pub at_ms: u64,
}

/// How a finished drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The tasks exited and their logs were delivered before the deadline (the action, if
    /// any, completed with `CONTINUE`).
    Drained,
    /// The deadline came first (the action, if any, completed with `result_on_timeout`).
    TimedOut,
    /// The lifecycle action was no longer there (a heartbeat or completion was answered
    /// "no active lifecycle action"): someone else completed it, or it expired.
    Rejected,
    /// An operator aborted the drain.
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Drained => "drained",
            Outcome::TimedOut => "timed_out",
            Outcome::Rejected => "rejected",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The lifecycle action a drain keeps alive and completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub group: String,
    pub name: String,
    /// The hook's `HeartbeatTimeout`.
    pub heartbeat_timeout_ms: u64,
}

/// The persisted drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainState {
    pub version: u32,
    pub trigger: Trigger,
    pub step: Step,
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// `UpdateContainerInstancesState(DRAINING)` succeeded.
    pub draining_set: bool,
    pub heartbeats: u64,
    pub last_heartbeat_ms: Option<u64>,
    /// The buffer's head when the last task had exited: the sinks must deliver up to it.
    pub flush_mark: Option<u64>,
    pub completion: Option<Completion>,
    pub instance_id: Option<String>,
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    /// The lifecycle action to heart-beat and complete; `None`: none (yet).
    pub hook: Option<Hook>,
    /// The hook was looked for (found or not): the deadline includes its limit.
    pub hook_resolved: bool,
    /// When the last work task had exited.
    pub tasks_done_ms: Option<u64>,
    /// How it ended, once `step` is `Done`.
    pub outcome: Option<Outcome>,
    pub done_ms: Option<u64>,
}

impl DrainState {
    pub fn new(trigger: Trigger, started_ms: u64, deadline_ms: u64) -> DrainState {
        DrainState {
            version: VERSION,
            trigger,
            step: Step::SetDraining,
            started_ms,
            deadline_ms,
            draining_set: false,
            heartbeats: 0,
            last_heartbeat_ms: None,
            flush_mark: None,
            completion: None,
            instance_id: None,
            cluster: None,
            container_instance_arn: None,
            hook: None,
            hook_resolved: false,
            tasks_done_ms: None,
            outcome: None,
            done_ms: None,
        }
    }

    /// The lifecycle action may still be completed: never twice.
    pub fn may_complete(&self) -> bool {
        self.completion.is_none()
    }

    /// Still to finish.
    pub fn active(&self) -> bool {
        self.step != Step::Done
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("drain state {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("drain state {}: cannot read it ({reason}); move it away to start afresh", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// The state in `dir`, `None` when there is no drain.
pub fn load(dir: &Path) -> Result<Option<DrainState>, StateError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(n) if n == u64::from(VERSION) => {}
        other => {
            return Err(StateError::Corrupt {
                path,
                reason: format!("version {other:?}, this berth reads version {VERSION}"),
            })
        }
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| StateError::Corrupt { path, reason: e.to_string() })
}

/// Replace the state in `dir` atomically (see the module doc).
pub fn store(dir: &Path, state: &DrainState) -> Result<(), StateError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |source| StateError::Io { path: path.clone(), source };
    // Serializing plain fields cannot fail.
    let body = serde_json::to_vec_pretty(state).unwrap_or_default();
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Forget a finished drain (after the instance came back into service, say).
pub fn clear(dir: &Path) -> Result<(), StateError> {
    let path = dir.join(FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DrainState {
        let mut s = DrainState::new(
            Trigger::Spot { action: "terminate".into(), time_ms: 1_505_722_920_000 },
            1_505_722_800_000,
            1_505_722_920_000,
        );
        s.step = Step::WaitTasks;
        s.draining_set = true;
        s.heartbeats = 3;
        s.last_heartbeat_ms = Some(1_505_722_860_000);
        s.instance_id = Some("i-0abc".into());
        s.hook = Some(Hook {
            group: "prod-hosts".into(),
            name: "drain".into(),
            heartbeat_timeout_ms: 600_000,
        });
        s.hook_resolved = true;
        s
    }

    #[test]
    fn state_round_trips_and_absent_is_no_drain() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let s = sample();
        store(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        let mut done = s;
        done.step = Step::Done;
        done.completion = Some(Completion { result: "CONTINUE".into(), at_ms: 1 });
        store(dir.path(), &done).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert!(!back.may_complete(), "completed once: never again");
        assert!(!dir.path().join("drain.json.tmp").exists());
        clear(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        clear(dir.path()).unwrap();
    }

    #[test]
    fn a_leftover_temporary_file_is_ignored_and_a_damaged_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        // A crash between writing the temporary file and the rename.
        std::fs::write(dir.path().join("drain.json.tmp"), b"{\"version\":1,\"trig").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        store(dir.path(), &sample()).unwrap();

        for (text, says) in [
            (&b"{\"version\":1,\"trig"[..], "cannot read it"),
            (b"{\"version\":2}", "version Some(2), this berth reads version 1"),
            (b"{}", "version None"),
            (b"{\"version\":1,\"trigger\":{\"kind\":\"meteor\"}}", "meteor"),
        ] {
            std::fs::write(dir.path().join(FILE), text).unwrap();
            let e = load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("drain.json"), "{e}");
        }
    }

    #[test]
    fn the_file_is_plain_json_an_operator_can_read() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        for part in ["\"kind\": \"spot\"", "\"step\": \"wait_tasks\"", "\"heartbeats\": 3"] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
