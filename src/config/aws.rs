//! The keys every section that talks to AWS shares.

/// Region and credentials of one AWS client. Shared by every section that talks to AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AwsAuth {
    /// `None`: `AWS_REGION`, the profile, then the instance's region (IMDS).
    pub region: Option<String>,
    /// AssumeRole (session name `berth`) on top of the default credentials chain.
    pub role_arn: Option<String>,
    /// Only with `role_arn`.
    pub external_id: Option<String>,
}
