//! One error type for the AWS API calls of capacity and drain (ECS, Auto Scaling, and the
//! CloudWatch Logs calls of the EMF publisher), and the client settings they share.
//!
//! Each SDK has its own error enum per operation; callers only need to know *what kind* of
//! failure it was (back off? tell the operator about the policy? give up on this host?),
//! so [`ApiError::from_sdk`] turns any of them into one [`ApiError`] through the SDK's
//! [`ProvideErrorMetadata`] code and the HTTP status. The decision is [`classify`], a pure
//! function with a table test.
//!
//! Never formats a credential: the message is the service's own text (an AccessDenied names
//! the caller's ARN, never its keys) or the transport error's chain.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
// aws-smithy-types' trait, which every `aws-sdk-*` crate re-exports (the same trait).
use aws_sdk_ecs::error::ProvideErrorMetadata;
use std::time::Duration;

/// What kind of failure an AWS call ended in (after the SDK's own retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// The service refused the rate: back off (the SDK already retried with backoff).
    Throttled,
    /// Credentials refused or the policy does not allow the action: an operator's problem,
    /// retrying soon will not help.
    AccessDenied,
    /// The thing asked about does not exist (an ECS `failures` entry, an unknown cluster).
    NotFound,
    /// No response: connection refused, DNS, TLS, the connection dropped.
    Unreachable,
    /// No response in time (the connect, attempt or operation timeout).
    Timeout,
    /// Anything else: a 5xx, a validation error, an answer we could not read.
    Other,
}

impl ApiErrorKind {
    fn label(self) -> &'static str {
        match self {
            ApiErrorKind::Throttled => "throttled",
            ApiErrorKind::AccessDenied => "access denied",
            ApiErrorKind::NotFound => "not found",
            ApiErrorKind::Unreachable => "unreachable",
            ApiErrorKind::Timeout => "timed out",
            ApiErrorKind::Other => "failed",
        }
    }

    /// Worth trying again later without anyone changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, ApiErrorKind::Throttled | ApiErrorKind::Unreachable | ApiErrorKind::Timeout)
    }
}

/// A failed AWS API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The IAM action, e.g. `ecs:DescribeContainerInstances` (what a policy must allow).
    pub action: &'static str,
    /// The service's error code (`ThrottlingException`, …), or an ECS failure reason
    /// (`MISSING`); `None` when there was no response or it carried no code.
    pub code: Option<String>,
    /// The service's message, or the transport error with its causes.
    pub message: String,
    /// The HTTP status of the response, when there was one.
    pub status: Option<u16>,
    pub kind: ApiErrorKind,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.action, self.kind.label())?;
        match (&self.code, self.status) {
            (Some(c), Some(s)) => write!(f, " ({c}, HTTP {s})")?,
            (Some(c), None) => write!(f, " ({c})")?,
            (None, Some(s)) => write!(f, " (HTTP {s})")?,
            (None, None) => {}
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// How the transport ended, for [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A response arrived (its code and status decide).
    Response,
    /// No response: the connection failed.
    NoResponse,
    /// No response in time.
    TimedOut,
}

/// The error codes the SDK's standard retry treats as throttling (aws-smithy-runtime's
/// `THROTTLING_ERRORS`), so that `Throttled` means "what the SDK already backed off on".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Refused identities and refused actions. JSON services say `AccessDeniedException`,
/// query services (Auto Scaling, IAM, STS) `AccessDenied`; a key the service does not know
/// is `UnrecognizedClientException` (JSON) or `InvalidClientTokenId` (query).
const DENIED: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "UnauthorizedOperation",
];

/// Codes naming something that is not there.
const NOT_FOUND: &[&str] =
    &["ClusterNotFoundException", "ResourceNotFoundException", "ServiceNotFoundException"];

/// The kind of a failure from the transport outcome, the error code and the HTTP status.
/// A code decides before the status: moto and some gateways send auth errors as 403 with
/// a body the SDK cannot read a code from, hence the status fallback.
pub fn classify(transport: Transport, code: Option<&str>, status: Option<u16>) -> ApiErrorKind {
    match transport {
        Transport::TimedOut => return ApiErrorKind::Timeout,
        Transport::NoResponse => return ApiErrorKind::Unreachable,
        Transport::Response => {}
    }
    if let Some(c) = code {
        if THROTTLING.contains(&c) {
            return ApiErrorKind::Throttled;
        }
        if DENIED.contains(&c) {
            return ApiErrorKind::AccessDenied;
        }
        if NOT_FOUND.contains(&c) {
            return ApiErrorKind::NotFound;
        }
    }
    match status {
        Some(429) => ApiErrorKind::Throttled,
        Some(401 | 403) => ApiErrorKind::AccessDenied,
        _ => ApiErrorKind::Other,
    }
}

impl ApiError {
    /// From any service's SDK error (every `aws-sdk-*` operation error provides its
    /// metadata, and every client's raw response is an [`HttpResponse`]).
    pub fn from_sdk<E>(action: &'static str, err: SdkError<E, HttpResponse>) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let transport = match &err {
            SdkError::TimeoutError(_) => Transport::TimedOut,
            SdkError::DispatchFailure(d) if d.is_timeout() => Transport::TimedOut,
            SdkError::DispatchFailure(_) => Transport::NoResponse,
            // A request that could not be built (no credentials, no region) never left, but
            // it is not the network's fault: with no code and no status it classifies as
            // Other, and its message says why.
            _ => Transport::Response,
        };
        let code = err.code().map(str::to_owned);
        let message = match (&err, err.message()) {
            (SdkError::ServiceError(_), Some(m)) => m.to_owned(),
            // The transport's reason (connection refused, no credentials) is in the chain.
            _ => crate::error::describe(&err),
        };
        let kind = classify(transport, code.as_deref(), status);
        ApiError { action, code, message, status, kind }
    }

    /// An error this crate finds in a successful response (a `failures` entry, a missing
    /// field).
    pub fn in_response(
        action: &'static str,
        kind: ApiErrorKind,
        code: Option<String>,
        message: String,
    ) -> ApiError {
        ApiError { action, code, message, status: None, kind }
    }

    /// A lifecycle heartbeat or completion refused because the action is not active: it was
    /// completed already, its timeout passed, or the instance never entered the wait. The
    /// service answers all of these with a plain `ValidationError` (HTTP 400), "No active
    /// Lifecycle Action found with instance ID i-…" (or "… with token …"), not with a code
    /// of their own — as reported against the real service in convox/rack#2432 and
    /// department-of-veterans-affairs/va.gov-cms#1719 (CompleteLifecycleAction by instance
    /// id) and spacelift-io/terraform-aws-spacelift-workerpool-on-ec2#197 (by token); the
    /// API reference lists no other error for these calls but ResourceContention. Hence
    /// a check of the code on these two actions only, rather than a new [`ApiErrorKind`]
    /// (the kind stays `Other`: for any other call a `ValidationError` is a bug of ours).
    /// The message is not matched: its wording is not a contract. A request the service
    /// finds malformed also answers `ValidationError`; berth only names hooks that
    /// `DescribeLifecycleHooks` listed and its own instance id, so for the drain both
    /// readings mean "there is nothing left to complete".
    pub fn is_no_active_action(&self) -> bool {
        use crate::autoscaling::{COMPLETE, HEARTBEAT};
        (self.action == HEARTBEAT || self.action == COMPLETE)
            && self.code.as_deref() == Some("ValidationError")
    }
}

/// Per attempt: a Describe or SetInstanceProtection answers in well under a second; 10 s
/// is long enough for a slow region and short enough that a hung connection is retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole operation, retries and backoff included: a capacity tick or a drain step waits
/// no longer than this for one call.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of the capacity and drain clients: the SDK's standard mode (3 attempts,
/// exponential backoff with jitter, a longer backoff after throttling errors and a
/// client-side retry budget). Unlike the log sinks, which run their own backoff around
/// a durable buffer and so turn SDK retries off, these are occasional calls (start-up,
/// one every `ecs_api_interval`, a drain step) whose callers would otherwise each need a
/// retry loop of their own; the operation timeout bounds the whole.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(3)
}

/// The attempt and operation timeouts above (the SDK's default connect timeout stays).
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApiErrorKind::*;

    #[test]
    fn classification_table() {
        let r = Transport::Response;
        for (transport, code, status, want) in [
            (r, Some("ThrottlingException"), Some(400), Throttled),
            (r, Some("Throttling"), Some(400), Throttled),
            (r, Some("RequestLimitExceeded"), Some(503), Throttled),
            (r, Some("TooManyRequestsException"), Some(429), Throttled),
            (r, None, Some(429), Throttled),
            (r, Some("AccessDeniedException"), Some(400), AccessDenied),
            (r, Some("AccessDenied"), Some(403), AccessDenied),
            (r, Some("UnrecognizedClientException"), Some(400), AccessDenied),
            (r, Some("InvalidClientTokenId"), Some(403), AccessDenied),
            (r, Some("SignatureDoesNotMatch"), Some(403), AccessDenied),
            (r, Some("ExpiredTokenException"), Some(400), AccessDenied),
            // moto's auth error for a JSON service: an XML body, no code the SDK reads.
            (r, None, Some(403), AccessDenied),
            (r, None, Some(401), AccessDenied),
            (r, Some("ClusterNotFoundException"), Some(400), NotFound),
            (r, Some("ResourceNotFoundException"), Some(400), NotFound),
            (r, Some("ValidationError"), Some(400), Other),
            (r, Some("ServerException"), Some(500), Other),
            (r, None, Some(500), Other),
            (r, None, None, Other),
            // A code wins over the status.
            (r, Some("ThrottlingException"), Some(403), Throttled),
            (Transport::NoResponse, None, None, Unreachable),
            (Transport::TimedOut, None, None, Timeout),
            // No response means no code; a stale one cannot make it throttled.
            (Transport::NoResponse, Some("ThrottlingException"), None, Unreachable),
        ] {
            assert_eq!(
                classify(transport, code, status),
                want,
                "{transport:?} {code:?} {status:?}"
            );
        }
    }

    #[test]
    fn transient_kinds() {
        let transient: Vec<_> = [Throttled, AccessDenied, NotFound, Unreachable, Timeout, Other]
            .into_iter()
            .filter(|k| k.is_transient())
            .collect();
        assert_eq!(transient, vec![Throttled, Unreachable, Timeout]);
    }

    #[test]
    fn display_names_the_action_and_the_code() {
        let e = ApiError {
            action: "ecs:DescribeContainerInstances",
            code: Some("ThrottlingException".into()),
            message: "Rate exceeded".into(),
            status: Some(400),
            kind: Throttled,
        };
        assert_eq!(
            e.to_string(),
            "ecs:DescribeContainerInstances throttled (ThrottlingException, HTTP 400): Rate exceeded"
        );
        let e = ApiError::in_response(
            "ecs:DescribeContainerInstances",
            NotFound,
            Some("MISSING".into()),
            "container instance arn:x MISSING".into(),
        );
        assert_eq!(
            e.to_string(),
            "ecs:DescribeContainerInstances not found (MISSING): container instance arn:x MISSING"
        );
        let e = ApiError {
            action: "autoscaling:SetInstanceProtection",
            code: None,
            message: String::new(),
            status: None,
            kind: Unreachable,
        };
        assert_eq!(e.to_string(), "autoscaling:SetInstanceProtection unreachable");
    }

    #[test]
    fn no_active_action_is_a_validation_error_of_a_lifecycle_call() {
        let e = |action: &'static str, code: Option<&str>| ApiError {
            action,
            code: code.map(str::to_owned),
            message: "No active Lifecycle Action found with instance ID i-0".into(),
            status: Some(400),
            kind: Other,
        };
        let heartbeat = "autoscaling:RecordLifecycleActionHeartbeat";
        let complete = "autoscaling:CompleteLifecycleAction";
        assert!(e(heartbeat, Some("ValidationError")).is_no_active_action());
        assert!(e(complete, Some("ValidationError")).is_no_active_action());
        assert!(!e(complete, Some("ResourceContention")).is_no_active_action());
        assert!(!e(complete, None).is_no_active_action());
        assert!(
            !e("autoscaling:SetInstanceProtection", Some("ValidationError")).is_no_active_action()
        );
        // Classified as any validation error: not transient, not "not found".
        assert_eq!(classify(Transport::Response, Some("ValidationError"), Some(400)), Other);
    }
}
