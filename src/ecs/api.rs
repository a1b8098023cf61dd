//! The ECS API calls of this host, as ECS itself sees it: `DescribeContainerInstances` for
//! this host's container instance (what it registered, what ECS thinks is left, its task
//! counts) — capacity's cross-check of its own accounting — and the drain's
//! `UpdateContainerInstancesState` to `DRAINING` (ECS stops placing tasks here and moves
//! service tasks away), and back to `ACTIVE` when an operator aborts their own drain.
//!
//! Only this host's instance, one ARN per call: the policies can then be scoped to container
//! instances (packaging/iam/berth-capacity-policy.json, berth-drain-policy.json). Reading
//! the answers is pure functions ([`container_instance`], [`state_after_update`]) tested
//! without the network.

use crate::aws::api::{self, ApiError, ApiErrorKind};
use crate::aws::AwsConfig;
use crate::capacity::compute::Resources;
use aws_sdk_ecs as ecs;
use ecs::operation::describe_container_instances::DescribeContainerInstancesOutput;
use ecs::operation::update_container_instances_state::UpdateContainerInstancesStateOutput;
use ecs::types::{Failure, Resource};

const DESCRIBE: &str = "ecs:DescribeContainerInstances";
const PUT_ATTRIBUTES: &str = "ecs:PutAttributes";
const UPDATE_STATE: &str = "ecs:UpdateContainerInstancesState";
/// ECS's limit of custom attributes on one resource (and in one call).
pub const MAX_ATTRIBUTES: usize = 10;

/// A container instance as the ECS API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInstance {
    /// `registeredResources` CPU units and memory MiB.
    pub registered: Resources,
    /// `remainingResources`: registered minus what ECS has placed here.
    pub remaining: Resources,
    pub running_tasks: i64,
    pub pending_tasks: i64,
    /// `ACTIVE`, `DRAINING`, `REGISTERING`, …
    pub status: String,
    pub agent_connected: bool,
    pub ec2_instance_id: Option<String>,
}

/// The ECS client of capacity (and, next, of the drain).
#[derive(Debug, Clone)]
pub struct EcsApi {
    client: ecs::Client,
}

impl EcsApi {
    /// A client from the `[ecs]` section's AWS configuration: endpoints from the SDK's
    /// environment (`AWS_ENDPOINT_URL_ECS`), the SDK's standard retries and the timeouts of
    /// [`crate::aws::api`].
    pub fn new(aws: &AwsConfig) -> EcsApi {
        let conf = ecs::config::Builder::from(aws.sdk())
            .retry_config(api::retry_config())
            .timeout_config(api::timeout_config())
            .build();
        EcsApi { client: ecs::Client::from_conf(conf) }
    }

    /// `DescribeContainerInstances` for one instance. A `failures` entry (`MISSING`: not
    /// registered in that cluster) is an error of kind `NotFound` with the reason as code.
    pub async fn describe_container_instance(
        &self,
        cluster: &str,
        container_instance_arn: &str,
    ) -> Result<ContainerInstance, ApiError> {
        let out = self
            .client
            .describe_container_instances()
            .cluster(cluster)
            .container_instances(container_instance_arn)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(DESCRIBE, e))?;
        container_instance(&out, container_instance_arn)
    }

    /// `PutAttributes` on this container instance: each `(name, value)` created or replaced
    /// (at most [`MAX_ATTRIBUTES`] in one call, ECS's limit).
    pub async fn put_attributes(
        &self,
        cluster: &str,
        container_instance_arn: &str,
        attributes: &[(String, String)],
    ) -> Result<(), ApiError> {
        let mut req = self.client.put_attributes().cluster(cluster);
        for (name, value) in attributes.iter().take(MAX_ATTRIBUTES) {
            let a = ecs::types::Attribute::builder()
                .name(name)
                .value(value)
                // The full ARN, so no `targetType` (the API needs it only with a short id).
                .target_id(container_instance_arn)
                .build()
                .map_err(|e| {
                    ApiError::in_response(PUT_ATTRIBUTES, ApiErrorKind::Other, None, e.to_string())
                })?;
            req = req.attributes(a);
        }
        req.send().await.map_err(|e| ApiError::from_sdk(PUT_ATTRIBUTES, e))?;
        Ok(())
    }

    /// `UpdateContainerInstancesState` to `DRAINING` for this instance; the status ECS
    /// answers it has now (`DRAINING`). Idempotent: draining a draining instance succeeds,
    /// so the SDK's retries and a drain resumed after a restart are both safe. A `failures`
    /// entry is an error naming its reason (`MISSING`: not registered in that cluster, kind
    /// `NotFound`).
    pub async fn set_draining(
        &self,
        cluster: &str,
        container_instance_arn: &str,
    ) -> Result<String, ApiError> {
        self.set_state(
            cluster,
            container_instance_arn,
            ecs::types::ContainerInstanceStatus::Draining,
        )
        .await
    }

    /// `UpdateContainerInstancesState` back to `ACTIVE`: only when an operator aborts a
    /// drain an operator started (`berth drain --abort`). A drain the Auto Scaling group or
    /// Spot started is never undone — the instance is going anyway.
    pub async fn set_active(
        &self,
        cluster: &str,
        container_instance_arn: &str,
    ) -> Result<String, ApiError> {
        self.set_state(cluster, container_instance_arn, ecs::types::ContainerInstanceStatus::Active)
            .await
    }

    async fn set_state(
        &self,
        cluster: &str,
        container_instance_arn: &str,
        status: ecs::types::ContainerInstanceStatus,
    ) -> Result<String, ApiError> {
        let out = self
            .client
            .update_container_instances_state()
            .cluster(cluster)
            .container_instances(container_instance_arn)
            .status(status)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk(UPDATE_STATE, e))?;
        state_after_update(&out, container_instance_arn)
    }
}

/// The status of the one container instance an `UpdateContainerInstancesState` changed.
pub fn state_after_update(
    out: &UpdateContainerInstancesStateOutput,
    arn: &str,
) -> Result<String, ApiError> {
    if let Some(ci) = out.container_instances().first() {
        return ci.status().map(str::to_owned).ok_or_else(|| {
            ApiError::in_response(
                UPDATE_STATE,
                ApiErrorKind::Other,
                None,
                format!("the answer gives container instance {arn} no status"),
            )
        });
    }
    if let Some(f) = out.failures().first() {
        // MISSING is the one reason that means "not there"; any other (the API documents no
        // list) is a refusal to read from its message.
        let kind = match f.reason() {
            Some("MISSING") => ApiErrorKind::NotFound,
            _ => ApiErrorKind::Other,
        };
        return Err(failure(UPDATE_STATE, kind, f, arn));
    }
    Err(ApiError::in_response(
        UPDATE_STATE,
        ApiErrorKind::Other,
        None,
        format!("the answer names neither container instance {arn} nor a failure"),
    ))
}

/// An ECS `failures` entry as an error: its reason is the code, the message names the
/// instance, the reason and the detail.
fn failure(action: &'static str, kind: ApiErrorKind, f: &Failure, arn: &str) -> ApiError {
    let reason = f.reason().unwrap_or("unknown reason");
    let mut message = format!("container instance {} {reason}", f.arn().unwrap_or(arn));
    if let Some(d) = f.detail().filter(|d| !d.is_empty()) {
        message.push_str(": ");
        message.push_str(d);
    }
    ApiError::in_response(action, kind, Some(reason.to_owned()), message)
}

/// The one container instance asked for, from a `DescribeContainerInstances` answer.
pub fn container_instance(
    out: &DescribeContainerInstancesOutput,
    arn: &str,
) -> Result<ContainerInstance, ApiError> {
    if let Some(ci) = out.container_instances().first() {
        let registered = resources(ci.registered_resources(), "registeredResources")?;
        let remaining = resources(ci.remaining_resources(), "remainingResources")?;
        return Ok(ContainerInstance {
            registered,
            remaining,
            running_tasks: i64::from(ci.running_tasks_count()),
            pending_tasks: i64::from(ci.pending_tasks_count()),
            status: ci.status().unwrap_or_default().to_owned(),
            agent_connected: ci.agent_connected(),
            ec2_instance_id: ci.ec2_instance_id().map(str::to_owned),
        });
    }
    if let Some(f) = out.failures().first() {
        return Err(failure(DESCRIBE, ApiErrorKind::NotFound, f, arn));
    }
    Err(ApiError::in_response(
        DESCRIBE,
        ApiErrorKind::Other,
        None,
        format!("the answer names neither container instance {arn} nor a failure"),
    ))
}

/// CPU units and memory MiB from a resource list (entries `CPU` and `MEMORY`). Both must be
/// there: a figure of 0 would read as a full host.
fn resources(list: &[Resource], field: &str) -> Result<Resources, ApiError> {
    let get = |name: &str| {
        list.iter().find(|r| r.name() == Some(name)).map(value).ok_or_else(|| {
            ApiError::in_response(
                DESCRIBE,
                ApiErrorKind::Other,
                None,
                format!("{field} has no {name} entry"),
            )
        })
    };
    Ok(Resources { cpu_units: get("CPU")?, memory_mib: get("MEMORY")? })
}

/// A resource's number. ECS sends CPU and MEMORY as `INTEGER`; `LONG` and `DOUBLE` are read
/// too (a DOUBLE rounded down), and a negative figure (remaining briefly below zero while a
/// placement settles) counts as 0.
fn value(r: &Resource) -> u64 {
    let n = match r.r#type() {
        Some("LONG") => r.long_value(),
        Some("DOUBLE") => r.double_value().floor() as i64,
        Some("INTEGER") => i64::from(r.integer_value()),
        // No type: whichever field is set.
        _ => [i64::from(r.integer_value()), r.long_value(), r.double_value().floor() as i64]
            .into_iter()
            .find(|v| *v != 0)
            .unwrap_or(0),
    };
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecs::types::ContainerInstance as SdkInstance;

    fn int(name: &str, v: i32) -> Resource {
        Resource::builder().name(name).r#type("INTEGER").integer_value(v).build()
    }

    fn ports() -> Resource {
        Resource::builder().name("PORTS").r#type("STRINGSET").string_set_value("22").build()
    }

    fn answer(
        instance: Option<SdkInstance>,
        failure: Option<Failure>,
    ) -> DescribeContainerInstancesOutput {
        let mut b = DescribeContainerInstancesOutput::builder();
        if let Some(i) = instance {
            b = b.container_instances(i);
        }
        if let Some(f) = failure {
            b = b.failures(f);
        }
        b.build()
    }

    #[test]
    fn reads_registered_remaining_and_counts() {
        let ci = SdkInstance::builder()
            .registered_resources(int("CPU", 4096))
            .registered_resources(int("MEMORY", 7482))
            .registered_resources(ports())
            .remaining_resources(ports())
            .remaining_resources(int("MEMORY", 6970))
            .remaining_resources(int("CPU", 3840))
            .running_tasks_count(2)
            .pending_tasks_count(1)
            .status("ACTIVE")
            .agent_connected(true)
            .ec2_instance_id("i-0123456789abcdef0")
            .build();
        let got = container_instance(&answer(Some(ci), None), "arn:x").unwrap();
        assert_eq!(
            got,
            ContainerInstance {
                registered: Resources { cpu_units: 4096, memory_mib: 7482 },
                remaining: Resources { cpu_units: 3840, memory_mib: 6970 },
                running_tasks: 2,
                pending_tasks: 1,
                status: "ACTIVE".into(),
                agent_connected: true,
                ec2_instance_id: Some("i-0123456789abcdef0".into()),
            }
        );
    }

    #[test]
    fn tolerates_long_double_untyped_and_negative_values() {
        let long = Resource::builder().name("CPU").r#type("LONG").long_value(8192).build();
        let double =
            Resource::builder().name("MEMORY").r#type("DOUBLE").double_value(15_000.7).build();
        let untyped = Resource::builder().name("CPU").long_value(1024).build();
        let negative = int("MEMORY", -12);
        assert_eq!(value(&long), 8192);
        assert_eq!(value(&double), 15_000);
        assert_eq!(value(&untyped), 1024);
        assert_eq!(value(&negative), 0);
        assert_eq!(
            resources(&[long, double], "registeredResources").unwrap(),
            Resources { cpu_units: 8192, memory_mib: 15_000 }
        );
    }

    #[test]
    fn a_missing_cpu_or_memory_entry_is_an_error_not_zero() {
        let ci = SdkInstance::builder()
            .registered_resources(int("CPU", 4096))
            .remaining_resources(int("CPU", 4096))
            .remaining_resources(int("MEMORY", 1))
            .build();
        let e = container_instance(&answer(Some(ci), None), "arn:x").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Other);
        assert_eq!(e.message, "registeredResources has no MEMORY entry");
    }

    #[test]
    fn a_failure_entry_is_not_found_naming_the_reason() {
        let f = Failure::builder()
            .arn("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/abc")
            .reason("MISSING")
            .build();
        let e = container_instance(&answer(None, Some(f)), "abc").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::NotFound);
        assert_eq!(e.code.as_deref(), Some("MISSING"));
        assert_eq!(
            e.to_string(),
            "ecs:DescribeContainerInstances not found (MISSING): container instance \
             arn:aws:ecs:us-east-1:123456789012:container-instance/prod/abc MISSING"
        );
        let e = container_instance(&answer(None, None), "abc").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Other);
    }

    #[test]
    fn set_draining_reads_the_status_now_or_names_the_failure() {
        let ok = UpdateContainerInstancesStateOutput::builder()
            .container_instances(SdkInstance::builder().status("DRAINING").build())
            .build();
        assert_eq!(state_after_update(&ok, "arn:x").unwrap(), "DRAINING");

        let missing = UpdateContainerInstancesStateOutput::builder()
            .failures(Failure::builder().arn("arn:x").reason("MISSING").build())
            .build();
        let e = state_after_update(&missing, "arn:x").unwrap_err();
        assert_eq!((e.kind, e.code.as_deref()), (ApiErrorKind::NotFound, Some("MISSING")));
        assert_eq!(
            e.to_string(),
            "ecs:UpdateContainerInstancesState not found (MISSING): container instance arn:x MISSING"
        );

        let other = UpdateContainerInstancesStateOutput::builder()
            .failures(Failure::builder().reason("INACTIVE").detail("deregistered").build())
            .build();
        let e = state_after_update(&other, "arn:x").unwrap_err();
        assert_eq!((e.kind, e.code.as_deref()), (ApiErrorKind::Other, Some("INACTIVE")));
        assert_eq!(e.message, "container instance arn:x INACTIVE: deregistered");

        let empty = UpdateContainerInstancesStateOutput::builder().build();
        assert_eq!(state_after_update(&empty, "arn:x").unwrap_err().kind, ApiErrorKind::Other);
        let no_status = UpdateContainerInstancesStateOutput::builder()
            .container_instances(SdkInstance::builder().build())
            .build();
        assert_eq!(state_after_update(&no_status, "arn:x").unwrap_err().kind, ApiErrorKind::Other);
    }
}
