//! The CloudWatch Logs sink (issue 5): PutLogEvents through `aws-sdk-cloudwatchlogs`.
//!
//! [`encode`] turns a group of deliveries into batches, with no network (names, messages,
//! the time window, split events, every batch limit). Here: what a PutLogEvents failure
//! means ([`classify`]), pure and table-tested. The loop is in `run`.
//!
//! Settlement: a group of deliveries is acknowledged to the buffer once each of its records
//! is delivered or written to the dead-letter file. While berth runs, a batch that was
//! accepted is never sent again; a batch whose response was lost (connection reset, timeout
//! after the request was sent) is sent again and may be stored twice, counted in
//! `berth_output_retries_total{reason="connection"}`. After a crash the unacknowledged group
//! is sent again whole: PutLogEvents has no idempotency key.
//!
//! Never: DescribeLogStreams/DescribeLogGroups per batch. A missing group or stream shows
//! as ResourceNotFoundException on PutLogEvents; then (when allowed) the stream is created,
//! and the group first when CreateLogStream says it is missing too.

pub mod encode;
mod run;

pub use run::run;

use encode::DeadReason;

/// `rejectedLogEventsInfo` of a PutLogEvents answer, as indexes into the events sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectedInfo {
    /// Events from this index on were too far in the future.
    pub too_new_start: Option<usize>,
    /// Events before this index were too old: the PutLogEvents reference says
    /// `tooOldLogEventEndIndex` "is exclusive" (the event at it was stored).
    pub too_old_end: Option<usize>,
    /// Events up to and including this index were older than the group's retention (the
    /// reference does not say; read inclusively, as the name "end index" of the events it
    /// names — a stored event dead-lettered is a copy, a dropped one would be a loss).
    pub expired_end: Option<usize>,
}

impl RejectedInfo {
    /// Why event `i` of the batch was not stored, if it was not.
    pub fn reason(&self, i: usize) -> Option<DeadReason> {
        if self.expired_end.is_some_and(|e| i <= e) {
            Some(DeadReason::BeforeRetention)
        } else if self.too_old_end.is_some_and(|e| i < e) {
            Some(DeadReason::TooOld)
        } else if self.too_new_start.is_some_and(|s| i >= s) {
            Some(DeadReason::TooNew)
        } else {
            None
        }
    }
}

/// What to do after a failed PutLogEvents (or CreateLogGroup / CreateLogStream) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The group or the stream does not exist: create them, then send again at once.
    NotFound,
    /// Throttled, unavailable, a 5xx or a connection error: back off, send the same batch.
    Retry { reason: &'static str },
    /// Credentials missing, wrong or expired: back off, send again, log an error. Holds
    /// the sink (nothing else could get through either).
    Unauthorized,
    /// The policy refuses this group or stream (`AccessDeniedException`): other
    /// destinations may be allowed, so after `denied_retry_duration` its events are
    /// dead-lettered and the sink goes on.
    Denied,
    /// The request itself is refused and will be refused again: to the dead-letter file.
    Reject,
    /// The group or stream already exists (a create call raced another writer): done.
    AlreadyExists,
    /// The batch was stored before (`DataAlreadyAcceptedException`, no longer returned by
    /// the service since sequence tokens went away): delivered.
    AlreadyAccepted,
}

/// Classify an error by its AWS error code and HTTP status (either may be missing: no
/// response at all is a connection error).
pub fn classify(code: Option<&str>, status: Option<u16>) -> Failure {
    match code {
        Some("ResourceNotFoundException") => return Failure::NotFound,
        Some("ResourceAlreadyExistsException") => return Failure::AlreadyExists,
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "LimitExceededException",
        ) => return Failure::Retry { reason: "throttled" },
        Some("ServiceUnavailableException" | "InternalFailure" | "ServiceUnavailable") => {
            return Failure::Retry { reason: "unavailable" }
        }
        Some("AccessDeniedException" | "AccessDenied") => return Failure::Denied,
        Some(
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "MissingAuthenticationToken",
        ) => return Failure::Unauthorized,
        Some("DataAlreadyAcceptedException") => return Failure::AlreadyAccepted,
        Some("InvalidParameterException" | "MalformedQueryString") => return Failure::Reject,
        _ => {}
    }
    match status {
        None => Failure::Retry { reason: "connection" },
        Some(401 | 403) => Failure::Unauthorized,
        Some(429) => Failure::Retry { reason: "throttled" },
        Some(s) if s >= 500 => Failure::Retry { reason: "unavailable" },
        // An unknown 4xx: not worth dropping data over; retried with backoff and logged.
        Some(_) => Failure::Retry { reason: "http_status" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_info_marks_the_ranges_it_names() {
        let none = RejectedInfo::default();
        assert!((0..5).all(|i| none.reason(i).is_none()));
        // tooOldLogEventEndIndex 3 is exclusive: events 0..3 were too old, 3 was stored;
        // tooNewLogEventStartIndex 8 is inclusive.
        let r = RejectedInfo { too_new_start: Some(8), too_old_end: Some(3), expired_end: Some(1) };
        let got: Vec<Option<&str>> = (0..10).map(|i| r.reason(i).map(DeadReason::label)).collect();
        let (e, o, n) = (Some("expired"), Some("too_old"), Some("too_new"));
        assert_eq!(got, vec![e, e, o, None, None, None, None, None, n, n]);
        let first_only = RejectedInfo { too_old_end: Some(1), ..RejectedInfo::default() };
        assert_eq!(first_only.reason(0).map(DeadReason::label), o);
        assert_eq!(first_only.reason(1), None, "the event at the exclusive end was accepted");
    }

    #[test]
    fn classify_table() {
        for (code, status, want) in [
            (Some("ResourceNotFoundException"), Some(400), Failure::NotFound),
            (Some("ResourceAlreadyExistsException"), Some(400), Failure::AlreadyExists),
            (Some("ThrottlingException"), Some(400), Failure::Retry { reason: "throttled" }),
            (
                Some("ServiceUnavailableException"),
                Some(503),
                Failure::Retry { reason: "unavailable" },
            ),
            (None, Some(503), Failure::Retry { reason: "unavailable" }),
            (None, Some(429), Failure::Retry { reason: "throttled" }),
            (None, None, Failure::Retry { reason: "connection" }),
            (Some("UnrecognizedClientException"), Some(400), Failure::Unauthorized),
            (Some("AccessDeniedException"), Some(400), Failure::Denied),
            (Some("InvalidSignatureException"), Some(403), Failure::Unauthorized),
            (None, Some(403), Failure::Unauthorized),
            (Some("InvalidParameterException"), Some(400), Failure::Reject),
            (Some("DataAlreadyAcceptedException"), Some(400), Failure::AlreadyAccepted),
            (Some("SomethingNew"), Some(400), Failure::Retry { reason: "http_status" }),
        ] {
            assert_eq!(classify(code, status), want, "{code:?} {status:?}");
        }
    }
}
