//! What a `_bulk` response means for each item sent: pure decisions, table-tested.
//!
//! Owns the classification only; acting on it (acknowledging, retrying, dead-lettering,
//! refreshing credentials, sleeping) is the sink loop's job. Bulk API reference:
//! <https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html>
//! (OpenSearch answers the same shape).
//!
//! The `items` of a response are in request order: item `i` answers the `i`-th action.
//! Only the fields needed are parsed; a missing field never panics or fails the parse:
//! - an item without a `status` is retried (nothing says it was stored);
//! - a response with fewer items than sent has the missing ones retried; extra ones are
//!   ignored.
//!
//! A body with `"errors": false` means every item succeeded and is not read further.

use serde::Deserialize;
use std::time::Duration;

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// 200/201: stored.
    Delivered,
    /// 409 on `create` with a stable `_id`: stored by an earlier attempt whose response was
    /// lost. Acknowledge it like a delivery; never send it again.
    AlreadyDelivered,
    /// 429 or 5xx: send this item again (alone, or with other retries) after a backoff.
    Retry { status: u16, error_type: String },
    /// Any other status (mapping conflict, parse error, missing index): it will never be
    /// accepted. Dead-letter it with the reason.
    Reject { status: u16, error_type: String, reason: String },
}

/// What the whole response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkVerdict {
    /// `errors: false`: every item was stored.
    AllDelivered,
    /// The request was processed: one outcome per item sent, in request order.
    Items(Vec<ItemOutcome>),
    /// 413 with more than one item: split the body in half and send each half.
    Split,
    /// 413 for a single item: it can never be sent. Dead-letter it.
    TooLarge,
    /// 429, 502, 503, 504 (and 408): wait (at least `retry_after` when the server said so)
    /// and send the same request again.
    Backoff { status: u16, retry_after: Option<Duration> },
    /// 401/403: refresh credentials once and resend; if it comes again, report and back off.
    Unauthorized { status: u16, message: String },
    /// Anything else (other 4xx/5xx, or a 2xx body that is not a bulk response): report it
    /// clearly, back off, and resend. Never a reason to drop the batch.
    Fail { status: u16, message: String },
}

/// What the classifier needs to know about the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    /// Items in the request body.
    pub items: usize,
    /// `create` with stable ids (see `EncodeOptions::conflict_means_delivered`).
    pub conflict_means_delivered: bool,
}

/// Classify one `_bulk` response. `retry_after` is the parsed `Retry-After` header (see
/// `sink::retry::parse_retry_after`).
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    req: RequestInfo,
) -> BulkVerdict {
    match status {
        200..=299 => classify_items(status, body, req),
        413 if req.items > 1 => BulkVerdict::Split,
        413 => BulkVerdict::TooLarge,
        408 | 429 | 502 | 503 | 504 => BulkVerdict::Backoff { status, retry_after },
        401 | 403 => BulkVerdict::Unauthorized { status, message: error_message(body) },
        _ => BulkVerdict::Fail { status, message: error_message(body) },
    }
}

/// Classify one item's status (exposed for the sink's metrics and tests).
pub fn classify_item(
    status: u16,
    error_type: &str,
    reason: &str,
    conflict_means_delivered: bool,
) -> ItemOutcome {
    match status {
        200..=299 => ItemOutcome::Delivered,
        409 if conflict_means_delivered => ItemOutcome::AlreadyDelivered,
        429 | 500..=599 => ItemOutcome::Retry { status, error_type: error_type.to_owned() },
        _ => ItemOutcome::Reject {
            status,
            error_type: error_type.to_owned(),
            reason: reason.to_owned(),
        },
    }
}

fn classify_items(status: u16, body: &[u8], req: RequestInfo) -> BulkVerdict {
    // Fast path: most responses say `errors: false`; serde skips `items` without building it.
    #[derive(Deserialize)]
    struct Head {
        errors: Option<bool>,
    }
    match serde_json::from_slice::<Head>(body) {
        Ok(Head { errors: Some(false) }) => return BulkVerdict::AllDelivered,
        Ok(_) => {}
        Err(e) => {
            return BulkVerdict::Fail { status, message: format!("unreadable _bulk response: {e}") }
        }
    }
    let parsed: Full = match serde_json::from_slice(body) {
        Ok(f) => f,
        Err(e) => {
            return BulkVerdict::Fail { status, message: format!("unreadable _bulk response: {e}") }
        }
    };
    let Some(items) = parsed.items else {
        return BulkVerdict::Fail {
            status,
            message: "_bulk response has neither errors: false nor items".into(),
        };
    };
    let mut out = Vec::with_capacity(req.items);
    for i in 0..req.items {
        let outcome = match items.get(i).and_then(item_result) {
            None => ItemOutcome::Retry { status: 0, error_type: "missing_item".into() },
            Some(r) => {
                match r.get("status").and_then(|s| s.as_u64()).and_then(|s| u16::try_from(s).ok()) {
                    None => ItemOutcome::Retry { status: 0, error_type: "missing_status".into() },
                    Some(s) => {
                        let (ty, reason) = describe(r.get("error"));
                        classify_item(s, &ty, &reason, req.conflict_means_delivered)
                    }
                }
            }
        };
        out.push(outcome);
    }
    BulkVerdict::Items(out)
}

/// Only reached when `errors` is not `false`, so building values here costs nothing on the
/// common path; `Value` keeps every odd shape (a null item, a string status) parseable.
#[derive(Deserialize)]
struct Full {
    items: Option<Vec<serde_json::Value>>,
}

/// `{"create": {...}}`: one key, the action, whose value is the result.
fn item_result(item: &serde_json::Value) -> Option<&serde_json::Value> {
    item.as_object()?.values().next().filter(|r| r.is_object())
}

/// `(type, reason)` of an error object, with the first `caused_by` appended to the reason
/// (for mapping errors it names the field and value that failed). Old servers sent a plain
/// string.
fn describe(error: Option<&serde_json::Value>) -> (String, String) {
    let Some(e) = error else { return (String::new(), String::new()) };
    if let Some(s) = e.as_str() {
        return (String::new(), s.to_owned());
    }
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let ty = text(e, "type");
    let mut reason = text(e, "reason");
    if let Some(c) = e.get("caused_by") {
        let (cty, cr) = (text(c, "type"), text(c, "reason"));
        if !cty.is_empty() || !cr.is_empty() {
            reason.push_str(&format!(" (caused by {cty}: {cr})"));
        }
    }
    (ty, reason)
}

/// A one-line description of a whole-request error body: `type: reason` from an
/// Elasticsearch error, else the start of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get("error") {
            let (ty, reason) = describe(Some(e));
            if !ty.is_empty() || !reason.is_empty() {
                return format!("{ty}: {reason}");
            }
        }
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            // Amazon OpenSearch Service's own errors: {"message": "..."}.
            return m.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STABLE: RequestInfo = RequestInfo { items: 4, conflict_means_delivered: true };

    // Shaped like real Elasticsearch 8 / OpenSearch 2 responses (fields the classifier does
    // not read are kept, so the parser proves it skips them).
    const ALL_OK: &str = r#"{"took":30,"errors":false,"items":[
        {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-0","_version":1,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}}]}"#;

    const MIXED: &str = r#"{"took":486,"errors":true,"items":[
        {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-0","_version":1,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}},
        {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[00c0ffee00c0ffee-1]: version conflict, document already exists (current version [1])","index_uuid":"aAsFqTI0Tc2W0LCWgPNrOA","shard":"0","index":"logs-web-2026.11.22"}}},
        {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-2","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [status] of type [long] in document with id '00c0ffee00c0ffee-2'. Preview of field's value: 'ok'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"ok\""}}}},
        {"create":{"_index":"logs-web-2026.11.22","_id":"00c0ffee00c0ffee-3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [coordinating_and_primary_bytes=105126959, replica_bytes=0, all_bytes=105126959, coordinating_operation_bytes=2597635, max_coordinating_and_primary_bytes=107374182]"}}}]}"#;

    fn items(v: BulkVerdict) -> Vec<ItemOutcome> {
        match v {
            BulkVerdict::Items(i) => i,
            other => panic!("not items: {other:?}"),
        }
    }

    #[test]
    fn mixed_response_per_item() {
        let got = items(classify(200, None, MIXED.as_bytes(), STABLE));
        assert_eq!(got[0], ItemOutcome::Delivered);
        assert_eq!(got[1], ItemOutcome::AlreadyDelivered);
        assert_eq!(
            got[2],
            ItemOutcome::Reject {
                status: 400,
                error_type: "mapper_parsing_exception".into(),
                reason: "failed to parse field [status] of type [long] in document with id '00c0ffee00c0ffee-2'. Preview of field's value: 'ok' (caused by illegal_argument_exception: For input string: \"ok\")".into(),
            }
        );
        assert_eq!(
            got[3],
            ItemOutcome::Retry {
                status: 429,
                error_type: "es_rejected_execution_exception".into()
            }
        );
        // Without stable ids a 409 is a real conflict: dead-letter it, never loop on it.
        let got = items(classify(
            200,
            None,
            MIXED.as_bytes(),
            RequestInfo { conflict_means_delivered: false, ..STABLE },
        ));
        assert!(
            matches!(&got[1], ItemOutcome::Reject { status: 409, error_type, .. } if error_type == "version_conflict_engine_exception")
        );
    }

    #[test]
    fn errors_false_is_all_delivered() {
        assert_eq!(classify(200, None, ALL_OK.as_bytes(), STABLE), BulkVerdict::AllDelivered);
        assert_eq!(classify(200, None, br#"{"errors":false}"#, STABLE), BulkVerdict::AllDelivered);
    }

    #[test]
    fn item_table() {
        for (status, conflict_ok, want) in [
            (200, true, "delivered"),
            (201, false, "delivered"),
            (409, true, "already"),
            (409, false, "reject"),
            (429, false, "retry"),
            (500, true, "retry"),
            (503, true, "retry"),
            (400, true, "reject"),
            (404, true, "reject"),
            (413, true, "reject"),
        ] {
            let got = match classify_item(status, "t", "r", conflict_ok) {
                ItemOutcome::Delivered => "delivered",
                ItemOutcome::AlreadyDelivered => "already",
                ItemOutcome::Retry { .. } => "retry",
                ItemOutcome::Reject { .. } => "reject",
            };
            assert_eq!(got, want, "{status} {conflict_ok}");
        }
    }

    #[test]
    fn request_status_table() {
        let ra = Some(Duration::from_secs(7));
        let one = RequestInfo { items: 1, ..STABLE };
        let es_429 = br#"{"error":{"root_cause":[{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}],"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"},"status":429}"#;
        assert_eq!(classify(413, None, b"", STABLE), BulkVerdict::Split);
        assert_eq!(classify(413, None, b"", one), BulkVerdict::TooLarge);
        for s in [408, 429, 502, 503, 504] {
            assert_eq!(
                classify(s, ra, es_429, STABLE),
                BulkVerdict::Backoff { status: s, retry_after: ra }
            );
        }
        assert_eq!(
            classify(
                403,
                None,
                br#"{"message":"The security token included in the request is expired"}"#,
                STABLE
            ),
            BulkVerdict::Unauthorized {
                status: 403,
                message: "The security token included in the request is expired".into()
            }
        );
        assert!(matches!(
            classify(401, None, b"", STABLE),
            BulkVerdict::Unauthorized { status: 401, .. }
        ));
        assert_eq!(
            classify(400, None, br#"{"error":{"root_cause":[],"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#, STABLE),
            BulkVerdict::Fail { status: 400, message: "illegal_argument_exception: The bulk request must be terminated by a newline [\\n]".into() }
        );
        assert_eq!(
            classify(500, None, b"<html>Internal Server Error</html>", STABLE),
            BulkVerdict::Fail { status: 500, message: "<html>Internal Server Error</html>".into() }
        );
    }

    #[test]
    fn robust_to_missing_fields_and_short_item_lists() {
        let body = br#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"index":{"_id":"x"}},
            {"index":{"status":400}},
            {"create":{"status":400,"error":"MapperParsingException[failed to parse]"}},
            null, "junk", {}, {"index":{"status":"200"}}]}"#;
        let got = items(classify(
            200,
            None,
            body,
            RequestInfo { items: 10, conflict_means_delivered: true },
        ));
        assert_eq!(got.len(), 10);
        assert_eq!(got[0], ItemOutcome::Delivered);
        assert_eq!(got[1], ItemOutcome::Retry { status: 0, error_type: "missing_status".into() });
        assert_eq!(
            got[2],
            ItemOutcome::Reject { status: 400, error_type: String::new(), reason: String::new() }
        );
        assert_eq!(
            got[3],
            ItemOutcome::Reject {
                status: 400,
                error_type: String::new(),
                reason: "MapperParsingException[failed to parse]".into()
            }
        );
        for g in &got[4..] {
            assert!(matches!(g, ItemOutcome::Retry { status: 0, .. }), "{g:?}");
        }
        // More items than sent: the extra ones are ignored.
        assert_eq!(
            items(classify(200, None, MIXED.as_bytes(), RequestInfo { items: 1, ..STABLE })),
            vec![ItemOutcome::Delivered]
        );
        // errors missing but items present: read the items.
        assert_eq!(
            items(classify(
                200,
                None,
                br#"{"items":[{"index":{"status":200}}]}"#,
                RequestInfo { items: 1, ..STABLE }
            )),
            vec![ItemOutcome::Delivered]
        );
    }

    #[test]
    fn unreadable_2xx_bodies_fail_the_request_not_the_items() {
        for body in [
            &b""[..],
            b"not json",
            br#"{"errors":true}"#,
            br#"{"errors":true,"items":"x"}"#,
            b"[1,2]",
        ] {
            assert!(
                matches!(classify(200, None, body, STABLE), BulkVerdict::Fail { status: 200, .. }),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
