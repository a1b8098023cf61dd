//! Scale-in protection, decided: on as soon as work runs here, off after `idle_grace` with
//! none, off while DRAINING, and never changed on missing data. A pure function over the
//! last state, table-tested; the caller makes the one `SetInstanceProtection` call it asks
//! for and records the result.

use std::time::{Duration, Instant};

/// What the host looks like at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Non-daemon tasks running or pending here; `None` when the sources did not answer.
    pub work: Option<u32>,
    /// The container instance is DRAINING (the drain has started).
    pub draining: bool,
    pub now: Instant,
}

/// What the decider remembers between ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// As last set (or read at start); `None` when unknown.
    pub protected: Option<bool>,
    /// Since when no work has run; `None` while work runs or before the first idle tick.
    pub idle_since: Option<Instant>,
}

/// The protection to set now, `None` for no call. Updates `state.idle_since`; the caller
/// sets `state.protected` once its call succeeded (a failed call is asked for again on the
/// next tick).
pub fn decide(state: &mut State, obs: Observation, idle_grace: Duration) -> Option<bool> {
    let want = if obs.draining {
        // A drain lets the instance go: protection would hold the termination.
        false
    } else {
        match obs.work {
            None => return None,
            Some(n) if n > 0 => {
                state.idle_since = None;
                true
            }
            Some(_) => {
                let since = *state.idle_since.get_or_insert(obs.now);
                if obs.now.saturating_duration_since(since) < idle_grace {
                    // Within the grace: a task that ends and another that starts soon after
                    // must not flap the protection.
                    return None;
                }
                false
            }
        }
    };
    (state.protected != Some(want)).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn on_with_work_off_after_the_grace_never_on_missing_data() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let obs = |work: Option<u32>, s: u64| Observation { work, draining: false, now: at(s) };
        let mut st = State { protected: Some(false), idle_since: None };
        // (observation, call asked for, protected after a successful call)
        let steps = [
            (obs(Some(0), 0), None),         // idle, grace starts
            (obs(Some(0), 599), None),       // still within it
            (obs(Some(1), 600), Some(true)), // work: on at once
            (obs(Some(2), 660), None),       // already on: no call
            (obs(None, 700), None),          // sources silent: leave it
            (obs(Some(0), 720), None),       // idle again: grace restarts
            (obs(Some(1), 900), None),       // work again within the grace: no flap
            (obs(Some(0), 1000), None),
            (obs(None, 1300), None),           // missing data never lifts it
            (obs(Some(0), 1599), None),        // 599 s idle
            (obs(Some(0), 1600), Some(false)), // 600 s idle: off
            (obs(Some(0), 3000), None),        // already off
        ];
        for (i, (o, want)) in steps.into_iter().enumerate() {
            let got = decide(&mut st, o, GRACE);
            assert_eq!(got, want, "step {i}: {o:?} {st:?}");
            if let Some(p) = got {
                st.protected = Some(p);
            }
        }
    }

    #[test]
    fn draining_lifts_it_even_with_work_and_an_unknown_state_is_set() {
        let now = Instant::now();
        let mut st = State { protected: Some(true), idle_since: None };
        let o = Observation { work: Some(3), draining: true, now };
        assert_eq!(decide(&mut st, o, GRACE), Some(false));
        st.protected = Some(false);
        assert_eq!(decide(&mut st, o, GRACE), None);

        let mut unknown = State::default();
        let o = Observation { work: Some(1), draining: false, now };
        assert_eq!(decide(&mut unknown, o, GRACE), Some(true), "unknown: set it");
        let mut failed = State::default();
        assert_eq!(decide(&mut failed, o, GRACE), Some(true));
        assert_eq!(decide(&mut failed, o, GRACE), Some(true), "a failed call is asked again");
    }
}
