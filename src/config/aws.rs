//! Region and credentials of an AWS client: one type, one raw form and one set of checks,
//! shared by every section that talks to AWS (the `elasticsearch` sink's `auth` table with
//! `type = "aws_sigv4"`, the `cloudwatch_logs` sink's top level), so the keys are spelled
//! and checked the same way everywhere.

use super::{ConfigError, Ctx};
use serde::{Deserialize, Serialize};
use toml::Spanned;

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

/// The three keys as written, flattened into the table of each section that has them.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    /// AWS region; empty or absent: `AWS_REGION`, the profile, then IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Spanned<String>>,
    /// A role to assume (STS AssumeRole, session name `berth`) with the default
    /// credentials; must start with `arn:`; empty for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<Spanned<String>>,
    /// The external id the role's trust policy asks for; only with `role_arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Spanned<String>>,
}

/// Check the keys; `prefix` is the key path of the table they are in (`sink[0]`,
/// `sink[0].auth`). An empty string is "not set", as `role_arn = ""` in the examples.
pub(super) fn build(raw: &RawAws, prefix: &str, ctx: &Ctx<'_>) -> Result<AwsAuth, ConfigError> {
    let opt = |v: &Option<Spanned<String>>| {
        v.as_ref().map(|v| v.get_ref().trim().to_owned()).filter(|v| !v.is_empty())
    };
    let invalid = |v: &Spanned<String>, k: &str, message: String| {
        ctx.error(v.span(), format!("{prefix}.{k}"), message, true)
    };
    let role_arn = opt(&raw.role_arn);
    if let (Some(r), Some(v)) = (&role_arn, &raw.role_arn) {
        if !r.starts_with("arn:") {
            return Err(invalid(
                v,
                "role_arn",
                format!("{r:?} is not a role ARN (arn:aws:iam::<account>:role/<name>)"),
            ));
        }
    }
    let external_id = opt(&raw.external_id);
    if let (Some(_), Some(v), None) = (&external_id, &raw.external_id, &role_arn) {
        return Err(invalid(v, "external_id", "external_id needs role_arn".into()));
    }
    Ok(AwsAuth { region: opt(&raw.region), role_arn, external_id })
}

/// The typed keys back in the file's shape; absent ones as `""`, so that `check-config`
/// shows every key.
pub(super) fn to_raw(a: &AwsAuth) -> RawAws {
    let sp = |v: &Option<String>| Some(Spanned::new(0..0, v.clone().unwrap_or_default()));
    RawAws { region: sp(&a.region), role_arn: sp(&a.role_arn), external_id: sp(&a.external_id) }
}
