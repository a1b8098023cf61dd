//! The EC2 instance metadata service (IMDSv2), one client for the whole process.
//!
//! Owns: the one `aws_config::imds::Client` (session token kept and refreshed, a 401 answered
//! with a new token, 5xx retried), the SDKs' environment (`AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`, `AWS_EC2_METADATA_DISABLED`), and the meaning of
//! an answer. Its users: the EC2 host fields of the enricher, the AWS loader (the instance's
//! region and, through the SDK's default chain, its role credentials), and capacity and the
//! drain (identity, Spot and lifecycle notices).
//!
//! Why the SDK's client and not a hand-written one: it is compiled in anyway (the credentials
//! chain needs it), it reads the same environment as every other AWS tool on the host, and it
//! handles tokens, 401 and retries as documented. What it does not give is the distinction the
//! drain needs, made here in [`Imds::get`]: 404 means "no such item" — no Spot notice, no
//! rebalance recommendation, no lifecycle state yet — and is an answer ([`None`]), not an
//! error.
//!
//! Timeouts are short: off EC2 nothing answers (or the address is unroutable), and that must
//! cost a start no more than a second or two. Connection failures are not retried by the
//! client; callers poll or back off themselves.
//!
//! Docs: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html>.

use crate::error::describe;
use aws_config::imds::client::error::ImdsError as SdkImdsError;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const ENDPOINT_MODE_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
pub const DISABLED_ENV: &str = "AWS_EC2_METADATA_DISABLED";
/// The token TTL asked for (the maximum is 6 hours).
pub const TOKEN_TTL: Duration = Duration::from_secs(21_600);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// One call, its token fetch and retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The client's own retries (5xx and 401 only: a connection failure is not retried).
const ATTEMPTS: u32 = 3;

/// Metadata paths berth reads.
pub mod path {
    pub const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
    pub const AVAILABILITY_ZONE: &str = "/latest/meta-data/placement/availability-zone";
    pub const REGION: &str = "/latest/meta-data/placement/region";
    pub const INSTANCE_TYPE: &str = "/latest/meta-data/instance-type";
    /// The Spot two-minute notice: 404 until there is one.
    pub const SPOT_INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
    /// A rebalance recommendation: 404 until there is one.
    pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
    /// The Auto Scaling lifecycle state (`InService`, `Terminated`, `Warmed:*`…): 404 outside
    /// an Auto Scaling group.
    pub const TARGET_LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata is disabled ({DISABLED_ENV}=true)")]
    Disabled,
    #[error("cannot build the instance metadata client: {0}")]
    Build(String),
    #[error("{path}: HTTP {status}")]
    Status { path: String, status: u16 },
    /// No answer, or no token: not on EC2, a hop limit of 1 inside a container, a
    /// timeout, IMDS turned off for the instance.
    #[error("{path}: {reason}")]
    Unreachable { path: String, reason: String },
}

/// The process's IMDSv2 client. Cheap to clone (the SDK client is a handle).
#[derive(Clone, Debug)]
pub struct Imds {
    /// `None`: disabled by the environment.
    client: Option<aws_config::imds::Client>,
    endpoint: String,
}

impl Imds {
    /// From the SDKs' environment variables. Disabled (every call answers
    /// [`ImdsError::Disabled`]) when `AWS_EC2_METADATA_DISABLED=true`.
    pub fn from_env() -> Result<Imds, ImdsError> {
        if std::env::var(DISABLED_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Imds { client: None, endpoint: String::new() });
        }
        match std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty()) {
            Some(e) => Imds::new(&e),
            None => {
                let ipv6 =
                    std::env::var(ENDPOINT_MODE_ENV).is_ok_and(|m| m.eq_ignore_ascii_case("ipv6"));
                Imds::new(if ipv6 { DEFAULT_ENDPOINT_IPV6 } else { DEFAULT_ENDPOINT })
            }
        }
    }

    /// A client for this endpoint (tests, and `from_env`).
    pub fn new(endpoint: &str) -> Result<Imds, ImdsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let client = aws_config::imds::Client::builder()
            .endpoint(&endpoint)
            .map_err(|e| ImdsError::Build(format!("endpoint {endpoint:?}: {e}")))?
            .token_ttl(TOKEN_TTL)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .max_attempts(ATTEMPTS)
            .build();
        Ok(Imds { client: Some(client), endpoint })
    }

    /// Off: every call answers [`ImdsError::Disabled`].
    pub fn disabled() -> Imds {
        Imds { client: None, endpoint: String::new() }
    }

    pub fn is_enabled(&self) -> bool {
        self.client.is_some()
    }

    /// The endpoint (empty when disabled), for status and log lines.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The SDK client, for the AWS loader's region and credentials providers (so that the
    /// process keeps one token). `None` when disabled.
    pub fn sdk_client(&self) -> Option<&aws_config::imds::Client> {
        self.client.as_ref()
    }

    /// GET a metadata path. `Ok(None)`: 404, the documented answer for an item that does
    /// not exist (now) — no Spot notice, no rebalance recommendation, not in an Auto Scaling
    /// group. Any other status, and no answer at all, is an error.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let Some(client) = &self.client else { return Err(ImdsError::Disabled) };
        match client.get(path).await {
            Ok(v) => Ok(Some(String::from(v))),
            Err(e) => match classify(&e) {
                Answer::Absent => Ok(None),
                Answer::Status(status) => Err(ImdsError::Status { path: path.into(), status }),
                Answer::Unreachable => {
                    Err(ImdsError::Unreachable { path: path.into(), reason: describe(&e) })
                }
            },
        }
    }

    /// GET a path that must exist (instance id, region…): 404 is an error there.
    pub async fn require(&self, path: &str) -> Result<String, ImdsError> {
        self.get(path).await?.ok_or(ImdsError::Status { path: path.into(), status: 404 })
    }
}

/// What an SDK error means to berth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Absent,
    Status(u16),
    Unreachable,
}

fn classify(e: &SdkImdsError) -> Answer {
    match e {
        SdkImdsError::ErrorResponse(r) => status_answer(r.response().status().as_u16()),
        // No token: nothing answered, or IMDS refused one (403: turned off for the
        // instance). Either way no metadata can be read; the message says which.
        _ => Answer::Unreachable,
    }
}

/// 404 is the documented "no such item"; the rest of the statuses are errors.
fn status_answer(status: u16) -> Answer {
    match status {
        404 => Answer::Absent,
        s => Answer::Status(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_404_is_absent() {
        for (status, want) in [
            (404, Answer::Absent),
            (400, Answer::Status(400)),
            (401, Answer::Status(401)),
            (403, Answer::Status(403)),
            (500, Answer::Status(500)),
            (503, Answer::Status(503)),
        ] {
            assert_eq!(status_answer(status), want, "{status}");
        }
    }

    #[tokio::test]
    async fn disabled_answers_disabled() {
        let i = Imds::disabled();
        assert!(!i.is_enabled());
        assert!(matches!(i.get(path::INSTANCE_ID).await, Err(ImdsError::Disabled)));
    }

    #[test]
    fn a_bad_endpoint_is_a_build_error() {
        assert!(matches!(Imds::new("not a uri"), Err(ImdsError::Build(_))));
    }
}
