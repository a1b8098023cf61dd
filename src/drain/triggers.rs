//! What starts a drain, read from the instance metadata service: the Auto Scaling target
//! lifecycle state, the Spot two-minute notice, a rebalance recommendation, scheduled
//! maintenance events — only those `[drain] watch` lists.
//!
//! Polling (every `poll_interval`) is the only way to hear them on the host: the lifecycle
//! hook's notification goes to SQS/SNS/EventBridge, which a host agent does not read. Each
//! poll reads the current answers; [`pick`], pure, turns them into at most one trigger, so
//! a notice seen on every poll is one drain, not one per poll (the Node Termination
//! Handler's issue #1100) — the persisted state makes that hold across restarts too.

use super::plan::{self, SpotNotice};
use super::state::Trigger;
use crate::config::Watch;
use crate::imds::{self, Imds};

/// The documented path of scheduled maintenance events: a JSON array, `[]` or 404 when
/// there are none.
pub const SCHEDULED_EVENTS: &str = "/latest/meta-data/events/maintenance/scheduled";

/// What one poll read; `None` for a path not asked (not watched) or absent (404).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    pub lifecycle_state: Option<String>,
    pub spot: Option<String>,
    pub rebalance: Option<String>,
    pub scheduled: Option<String>,
}

/// A trigger, and the Spot notice that bounds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub trigger: Trigger,
    pub spot: Option<SpotNotice>,
}

/// The trigger these answers start, if any: the Spot notice first (the hardest bound), then
/// the lifecycle state, then the soft ones. A body that cannot be read is reported (the
/// error) and starts nothing — except a Spot notice: the instance goes in two minutes
/// whatever its body says, so an unreadable one starts a drain that ends now.
pub fn pick(watch: &[Watch], a: &Answers, now_ms: u64) -> (Option<Found>, Vec<String>) {
    let mut errors = Vec::new();
    let on = |w: Watch| watch.contains(&w);
    if let (true, Some(body)) = (on(Watch::SpotInterruption), &a.spot) {
        let (action, time_ms, spot) = match plan::parse_spot_notice(body) {
            Ok(n) => {
                let ms = crate::capacity::collector::unix_ms(n.time);
                (n.action.clone(), ms, Some(n))
            }
            Err(e) => {
                errors.push(e);
                ("terminate".to_string(), now_ms, None)
            }
        };
        return (Some(Found { trigger: Trigger::Spot { action, time_ms }, spot }), errors);
    }
    if let (true, Some(state)) = (on(Watch::AsgLifecycle), &a.lifecycle_state) {
        if plan::lifecycle_starts_drain(state) {
            return (Some(Found { trigger: Trigger::AsgLifecycle, spot: None }), errors);
        }
    }
    if let (true, Some(_)) = (on(Watch::Rebalance), &a.rebalance) {
        let what = "rebalance recommendation".to_string();
        return (Some(Found { trigger: Trigger::Advisory { what }, spot: None }), errors);
    }
    if let (true, Some(body)) = (on(Watch::ScheduledEvents), &a.scheduled) {
        match scheduled_pending(body) {
            Ok(Some(what)) => {
                return (Some(Found { trigger: Trigger::Advisory { what }, spot: None }), errors)
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (None, errors)
}

/// The first scheduled event still to come (`State` neither `Completed` nor `Canceled`),
/// described as `"<Code> <EventId>"`; `None` for none.
pub fn scheduled_pending(body: &str) -> Result<Option<String>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event {
        #[serde(default)]
        code: String,
        #[serde(default)]
        event_id: String,
        #[serde(default)]
        state: String,
    }
    if body.trim().is_empty() {
        return Ok(None);
    }
    let events: Vec<Event> = serde_json::from_str(body)
        .map_err(|e| format!("scheduled events: not a list of events ({e}): {body:.200}"))?;
    Ok(events
        .iter()
        .find(|e| !matches!(e.state.as_str(), "Completed" | "Canceled"))
        .map(|e| format!("scheduled event {} {}", e.code, e.event_id).trim().to_string()))
}

/// Read the watched paths. An IMDS that does not answer is an error (reported by the
/// caller, rate-limited), never "no notice": the next poll asks again.
pub async fn poll(imds: &Imds, watch: &[Watch]) -> Result<Answers, imds::ImdsError> {
    let mut a = Answers::default();
    for w in watch {
        match w {
            Watch::AsgLifecycle => {
                a.lifecycle_state = imds.get(imds::path::TARGET_LIFECYCLE_STATE).await?
            }
            Watch::SpotInterruption => a.spot = imds.get(imds::path::SPOT_INSTANCE_ACTION).await?,
            Watch::Rebalance => a.rebalance = imds.get(imds::path::REBALANCE).await?,
            Watch::ScheduledEvents => a.scheduled = imds.get(SCHEDULED_EVENTS).await?,
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Watch::*;

    const NOW: u64 = 1_505_722_800_000;

    fn answers(state: Option<&str>, spot: Option<&str>, reb: bool, sched: Option<&str>) -> Answers {
        Answers {
            lifecycle_state: state.map(str::to_string),
            spot: spot.map(str::to_string),
            rebalance: reb.then(|| r#"{"noticeTime":"2017-09-18T08:22:00Z"}"#.to_string()),
            scheduled: sched.map(str::to_string),
        }
    }

    #[test]
    fn triggers_in_their_order_and_only_when_watched() {
        let all = [AsgLifecycle, SpotInterruption, Rebalance, ScheduledEvents];
        let spot = r#"{"action":"terminate","time":"2017-09-18T08:22:00Z"}"#;
        let event = r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"}]"#;
        let done = r#"[{"Code":"system-reboot","EventId":"e-1","State":"Completed"}]"#;
        let kind = |(f, _): (Option<Found>, Vec<String>)| f.map(|f| f.trigger);
        let cases: Vec<(&str, &[Watch], Answers, Option<Trigger>)> = vec![
            ("nothing", &all, answers(Some("InService"), None, false, Some("[]")), None),
            (
                "terminated",
                &all,
                answers(Some("Terminated"), None, false, None),
                Some(Trigger::AsgLifecycle),
            ),
            ("warm pool: never", &all, answers(Some("Warmed:Terminated"), None, false, None), None),
            (
                "spot before lifecycle",
                &all,
                answers(Some("Terminated"), Some(spot), false, None),
                Some(Trigger::Spot { action: "terminate".into(), time_ms: 1_505_722_920_000 }),
            ),
            (
                "spot not watched",
                &[AsgLifecycle],
                answers(Some("InService"), Some(spot), false, None),
                None,
            ),
            (
                "rebalance",
                &all,
                answers(Some("InService"), None, true, None),
                Some(Trigger::Advisory { what: "rebalance recommendation".into() }),
            ),
            (
                "rebalance not watched",
                &[AsgLifecycle, SpotInterruption],
                answers(None, None, true, None),
                None,
            ),
            (
                "a scheduled event",
                &all,
                answers(None, None, false, Some(event)),
                Some(Trigger::Advisory {
                    what: "scheduled event system-reboot instance-event-0d59937288b749b32".into(),
                }),
            ),
            ("a completed event", &all, answers(None, None, false, Some(done)), None),
        ];
        for (what, watch, a, want) in cases {
            assert_eq!(kind(pick(watch, &a, NOW)), want, "{what}");
        }
    }

    #[test]
    fn an_unreadable_spot_notice_still_drains_at_once_and_says_why() {
        let (found, errors) =
            pick(&[SpotInterruption], &answers(None, Some("{oops"), false, None), NOW);
        let f = found.unwrap();
        assert_eq!(f.trigger, Trigger::Spot { action: "terminate".into(), time_ms: NOW });
        assert!(f.spot.is_none());
        assert!(errors[0].contains("not a Spot instance-action notice"), "{errors:?}");
        let (found, errors) =
            pick(&[ScheduledEvents], &answers(None, None, false, Some("nope")), NOW);
        assert!(found.is_none());
        assert!(errors[0].contains("scheduled events: not a list"), "{errors:?}");
    }
}
