//! The Auto Scaling calls of this host: which group it is in (and whether it is protected
//! from scale-in), and setting that protection — what capacity's scale-in protection and
//! the drain act through.
//!
//! Only this host's instance id is ever asked about or changed. The decision *whether* to
//! protect is `capacity::protection`'s; this module only carries it out.

use crate::aws::api::{self, ApiError};
use crate::aws::AwsConfig;
use aws_sdk_autoscaling as asg;

const DESCRIBE: &str = "autoscaling:DescribeAutoScalingInstances";
const PROTECT: &str = "autoscaling:SetInstanceProtection";

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
}
