//! The Auto Scaling calls of this host: which group it is in (and whether it is protected
//! from scale-in), and setting that protection — what capacity's scale-in protection and
//! the drain act through — and the drain's lifecycle-hook calls: which terminating hooks
//! hold this instance in `Terminating:Wait` (and for how long), a heartbeat that extends
//! the wait, and the completion that lets the termination go on.
//!
//! Only this host's instance id is ever asked about or changed. The decisions *whether* to
//! protect, heartbeat or complete are `capacity::protection`'s and the drain machine's;
//! this module only carries them out. Lifecycle actions are named by instance id, never by
//! the `LifecycleActionToken`: the token arrives only in the hook's notification (SQS, SNS,
//! EventBridge), which the host does not read, while the instance id is its own.

use crate::aws::api::{self, ApiError};
use crate::aws::AwsConfig;
use aws_sdk_autoscaling as asg;
use std::time::Duration;

const DESCRIBE: &str = "autoscaling:DescribeAutoScalingInstances";
const PROTECT: &str = "autoscaling:SetInstanceProtection";
const DESCRIBE_HOOKS: &str = "autoscaling:DescribeLifecycleHooks";
pub(crate) const HEARTBEAT: &str = "autoscaling:RecordLifecycleActionHeartbeat";
pub(crate) const COMPLETE: &str = "autoscaling:CompleteLifecycleAction";

/// The transition of the hooks that hold a terminating instance.
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// What the service assumes when a hook has no `HeartbeatTimeout` (the API reference's
/// default: one hour).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);

/// This instance as its Auto Scaling group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgInstance {
    /// The group's name.
    pub group: String,
    /// `ProtectedFromScaleIn`.
    pub protected: bool,
    /// `InService`, `Pending`, `Terminating:Wait`, … (the drain reads it next).
    pub lifecycle_state: String,
}

/// A lifecycle hook of the group, as `DescribeLifecycleHooks` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHook {
    /// `LifecycleHookName`.
    pub name: String,
    /// `LifecycleTransition`: [`TERMINATING`] for every hook
    /// [`AutoScaling::describe_terminating_hooks`] returns.
    pub transition: String,
    /// How long the instance waits without a heartbeat before `default_result` is taken
    /// (`HeartbeatTimeout`; [`DEFAULT_HEARTBEAT_TIMEOUT`] when the answer has none).
    pub heartbeat_timeout: Duration,
    /// The most the instance can wait, heartbeats or not (`GlobalTimeout`: 48 hours or 100
    /// heartbeat timeouts, whichever is less); `None` when the answer has none.
    pub global_timeout: Option<Duration>,
    /// What happens when a timeout passes (`DefaultResult`).
    pub default_result: LifecycleResult,
}

/// `LifecycleActionResult` of a completion, and a hook's `DefaultResult`: the one type,
/// also `[drain] result_on_timeout`'s.
pub use crate::config::LifecycleResult;

/// From a hook's `DefaultResult`. The service accepts only `CONTINUE` and `ABANDON` and
/// answers `ABANDON` when none was given, so anything else (nothing, a value from a newer
/// API) is read as `ABANDON`, its documented default.
fn result_from_default(s: Option<&str>) -> LifecycleResult {
    match s {
        Some(r) if r.eq_ignore_ascii_case("CONTINUE") => LifecycleResult::Continue,
        _ => LifecycleResult::Abandon,
    }
}

/// The Auto Scaling client of capacity and drain.
#[derive(Debug, Clone)]
pub struct AutoScaling {
    client: asg::Client,
}

impl AutoScaling {
    /// A client from the `[ecs]` section's AWS configuration (endpoint from
    /// `AWS_ENDPOINT_URL_AUTO_SCALING`), the SDK's standard retries and the timeouts of
    /// [`crate::aws::api`].
    pub fn new(aws: &AwsConfig) -> AutoScaling {
        let conf = asg::config::Builder::from(aws.sdk())
            .retry_config(api::retry_config())
            .timeout_config(api::timeout_config())
            .build();
        AutoScaling { client: asg::Client::from_conf(conf) }
    }

    /// `DescribeAutoScalingInstances` for one instance; `None` when it is in no group (the
    /// API answers an empty list, not an error).
    pub async fn describe_instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<AsgInstance>, ApiError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(DESCRIBE, e))?;
        Ok(out.auto_scaling_instances().iter().find(|i| i.instance_id() == Some(instance_id)).map(
            |i| AsgInstance {
                group: i.auto_scaling_group_name().unwrap_or_default().to_owned(),
                protected: i.protected_from_scale_in().unwrap_or(false),
                lifecycle_state: i.lifecycle_state().unwrap_or_default().to_owned(),
            },
        ))
    }

    /// `SetInstanceProtection` for this instance in `group`. Idempotent: setting the value
    /// it already has succeeds (which is why the SDK may retry it).
    pub async fn set_protection(
        &self,
        group: &str,
        instance_id: &str,
        protected: bool,
    ) -> Result<(), ApiError> {
        self.client
            .set_instance_protection()
            .auto_scaling_group_name(group)
            .instance_ids(instance_id)
            .protected_from_scale_in(protected)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(PROTECT, e))?;
        Ok(())
    }

    /// `DescribeLifecycleHooks` of `group`, keeping only the terminating ones (in the order
    /// the service lists them); launching hooks are not the drain's business.
    pub async fn describe_terminating_hooks(
        &self,
        group: &str,
    ) -> Result<Vec<LifecycleHook>, ApiError> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(DESCRIBE_HOOKS, e))?;
        Ok(terminating_hooks(out.lifecycle_hooks()))
    }

    /// `RecordLifecycleActionHeartbeat` for this instance's action on `hook`: the wait
    /// restarts its heartbeat timeout (never beyond the global timeout). An action that is
    /// no longer active answers an error for which [`ApiError::is_no_active_action`] holds.
    pub async fn record_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<(), ApiError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(HEARTBEAT, e))?;
        Ok(())
    }

    /// `CompleteLifecycleAction` for this instance's action on `hook` with `result`. Not
    /// idempotent on the wire: a second completion (a retry whose first answer was lost,
    /// a drain resumed after a restart) answers an error for which
    /// [`ApiError::is_no_active_action`] holds, and the caller reads that as "done".
    pub async fn complete(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: LifecycleResult,
    ) -> Result<(), ApiError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(COMPLETE, e))?;
        Ok(())
    }
}

/// The terminating hooks of a `DescribeLifecycleHooks` answer. A hook without a name is
/// skipped: no call could name it.
pub fn terminating_hooks(hooks: &[asg::types::LifecycleHook]) -> Vec<LifecycleHook> {
    let secs = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or(0));
    hooks
        .iter()
        .filter(|h| h.lifecycle_transition() == Some(TERMINATING))
        .filter_map(|h| {
            Some(LifecycleHook {
                name: h.lifecycle_hook_name()?.to_owned(),
                transition: TERMINATING.to_owned(),
                heartbeat_timeout: h.heartbeat_timeout().map_or(DEFAULT_HEARTBEAT_TIMEOUT, secs),
                global_timeout: h.global_timeout().map(secs),
                default_result: result_from_default(h.default_result()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use asg::types::LifecycleHook as SdkHook;

    #[test]
    fn only_terminating_hooks_with_their_timeouts_and_default_result() {
        let hooks = [
            SdkHook::builder()
                .lifecycle_hook_name("launch")
                .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
                .heartbeat_timeout(300)
                .build(),
            SdkHook::builder()
                .lifecycle_hook_name("drain")
                .lifecycle_transition(TERMINATING)
                .heartbeat_timeout(900)
                .global_timeout(90_000)
                .default_result("CONTINUE")
                .build(),
            // Nothing but a name and a transition: the service's defaults.
            SdkHook::builder()
                .lifecycle_hook_name("bare")
                .lifecycle_transition(TERMINATING)
                .build(),
            SdkHook::builder().lifecycle_transition(TERMINATING).build(),
        ];
        assert_eq!(
            terminating_hooks(&hooks),
            vec![
                LifecycleHook {
                    name: "drain".into(),
                    transition: TERMINATING.into(),
                    heartbeat_timeout: Duration::from_secs(900),
                    global_timeout: Some(Duration::from_secs(90_000)),
                    default_result: LifecycleResult::Continue,
                },
                LifecycleHook {
                    name: "bare".into(),
                    transition: TERMINATING.into(),
                    heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
                    global_timeout: None,
                    default_result: LifecycleResult::Abandon,
                },
            ]
        );
    }

    #[test]
    fn lifecycle_results_spell_as_the_api_does() {
        assert_eq!(LifecycleResult::Continue.as_str(), "CONTINUE");
        assert_eq!(LifecycleResult::Abandon.as_str(), "ABANDON");
        for (given, want) in [
            (Some("CONTINUE"), LifecycleResult::Continue),
            (Some("ABANDON"), LifecycleResult::Abandon),
            (None, LifecycleResult::Abandon),
            (Some("SOMETHING-NEW"), LifecycleResult::Abandon),
        ] {
            assert_eq!(result_from_default(given), want, "{given:?}");
        }
    }
}
