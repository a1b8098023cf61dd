//! The drain's next step, decided from the persisted state and what this tick observed: a
//! pure function, table-tested. The runner makes the one call it asks for, records the
//! outcome in the state (persisted before the next decision), and asks again until the
//! answer is [`Action::Wait`].
//!
//! The order of the rules is the contract:
//! 1. a finished drain does nothing;
//! 2. DRAINING is set first (once: `draining_set` survives restarts);
//! 3. a heartbeat that is due goes before anything else that waits, and never after the
//!    deadline or once the action is completed;
//! 4. at the deadline the action is completed with `result_on_timeout` (tasks still
//!    running are not stopped: the instance goes with them, as the operator chose);
//! 5. while non-daemon tasks hold resources: wait (unknown, because the agent did not
//!    answer, is not "none left");
//! 6. the tasks gone: mark the buffer's head, then wait until every sink has delivered up
//!    to it (their last lines);
//! 7. then complete with CONTINUE — never twice (`may_complete`).

use super::state::{DrainState, Step};
use crate::config::LifecycleResult;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What this tick saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub now: SystemTime,
    /// Non-daemon tasks still holding resources here; `None`: the agent did not answer.
    pub work: Option<u32>,
    /// Every sink has delivered up to `flush_mark`.
    pub flushed: bool,
    /// The lifecycle action's heartbeat interval; `None`: there is no lifecycle action to
    /// keep alive and complete (a Spot notice without a hook, an operator's drain).
    pub heartbeat_every: Option<Duration>,
}

/// The one thing to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `UpdateContainerInstancesState(DRAINING)`.
    SetDraining,
    /// `RecordLifecycleActionHeartbeat`.
    Heartbeat,
    /// Record the buffer's head as `flush_mark`; the step becomes `Flush`.
    MarkFlush,
    /// `CompleteLifecycleAction` with this result.
    Complete(LifecycleResult),
    /// Nothing to complete: the step becomes `Done`.
    Finish,
    /// Nothing to do until the next tick.
    Wait,
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The next action (see the module doc for the rules and their order).
pub fn decide(s: &DrainState, o: &Observation, on_timeout: LifecycleResult) -> Action {
    if s.step == Step::Done {
        return Action::Wait;
    }
    if !s.draining_set {
        return Action::SetDraining;
    }
    let deadline = at(s.deadline_ms);
    let hook = o.heartbeat_every.filter(|_| s.may_complete());
    if let Some(every) = hook {
        if super::plan::heartbeat_due(s.last_heartbeat_ms.map(at), every, o.now, deadline) {
            return Action::Heartbeat;
        }
    }
    let end = |result| if hook.is_some() { Action::Complete(result) } else { Action::Finish };
    if o.now >= deadline {
        return end(on_timeout);
    }
    match s.step {
        Step::SetDraining | Step::WaitTasks => match o.work {
            Some(0) => Action::MarkFlush,
            _ => Action::Wait,
        },
        Step::Flush if o.flushed => end(LifecycleResult::Continue),
        Step::Flush => Action::Wait,
        // Decided before a restart: do it (the completion is recorded only once it is made).
        Step::Complete => end(LifecycleResult::Continue),
        Step::Done => Action::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::state::{Completion, Trigger};

    const T0: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn state(step: Step, draining_set: bool) -> DrainState {
        let mut s = DrainState::new(Trigger::AsgLifecycle, T0, T0 + 60 * MIN);
        s.step = step;
        s.draining_set = draining_set;
        s
    }

    fn obs(min: u64, work: Option<u32>, flushed: bool, hook: bool) -> Observation {
        Observation {
            now: at(T0 + min * MIN),
            work,
            flushed,
            heartbeat_every: hook.then_some(Duration::from_secs(300)),
        }
    }

    use Action::*;
    use LifecycleResult::{Abandon, Continue};

    #[test]
    fn the_rules_in_their_order() {
        let beat = |s: &mut DrainState, min: u64| s.last_heartbeat_ms = Some(T0 + min * MIN);
        let mut cases: Vec<(&str, DrainState, Observation, Action)> = Vec::new();
        cases.push((
            "DRAINING first, even with a heartbeat due",
            state(Step::SetDraining, false),
            obs(0, Some(3), false, true),
            SetDraining,
        ));
        cases.push((
            "then the first heartbeat",
            state(Step::WaitTasks, true),
            obs(0, Some(3), false, true),
            Heartbeat,
        ));
        let mut s = state(Step::WaitTasks, true);
        beat(&mut s, 0);
        cases.push((
            "tasks run, heartbeat not due: wait",
            s.clone(),
            obs(4, Some(3), false, true),
            Wait,
        ));
        cases.push((
            "heartbeat due after 5 min",
            s.clone(),
            obs(5, Some(3), false, true),
            Heartbeat,
        ));
        cases.push((
            "the agent silent is not 'no tasks'",
            s.clone(),
            obs(4, None, false, true),
            Wait,
        ));
        cases.push((
            "tasks gone: mark the buffer",
            s.clone(),
            obs(4, Some(0), false, true),
            MarkFlush,
        ));
        let mut f = state(Step::Flush, true);
        beat(&mut f, 10);
        cases.push(("flushing", f.clone(), obs(12, Some(0), false, true), Wait));
        cases.push((
            "flushed: complete CONTINUE",
            f.clone(),
            obs(12, Some(0), true, true),
            Complete(Continue),
        ));
        cases.push((
            "flushed without a hook: finish",
            f.clone(),
            obs(12, Some(0), true, false),
            Finish,
        ));
        cases.push((
            "a heartbeat due while flushing goes first",
            f.clone(),
            obs(15, Some(0), true, true),
            Heartbeat,
        ));
        let mut late = state(Step::WaitTasks, true);
        beat(&mut late, 58);
        cases.push((
            "the deadline: result_on_timeout, no heartbeat past it",
            late.clone(),
            obs(60, Some(2), false, true),
            Complete(Abandon),
        ));
        cases.push((
            "the deadline without a hook: finish",
            late.clone(),
            obs(61, Some(2), false, false),
            Finish,
        ));
        let mut resumed = state(Step::Complete, true);
        beat(&mut resumed, 20);
        cases.push((
            "a completion decided before a restart is made",
            resumed,
            obs(21, None, false, true),
            Complete(Continue),
        ));
        let mut done = state(Step::Flush, true);
        done.completion = Some(Completion { result: "CONTINUE".into(), at_ms: T0 });
        cases.push((
            "completed: no heartbeat, no second completion",
            done.clone(),
            obs(30, Some(0), true, true),
            Finish,
        ));
        let mut finished = done;
        finished.step = Step::Done;
        cases.push(("done: nothing", finished, obs(30, Some(0), true, true), Wait));
        for (what, s, o, want) in cases {
            assert_eq!(decide(&s, &o, Abandon), want, "{what}");
        }
    }

    /// A whole drain, applying each action as the runner would: DRAINING once, heartbeats
    /// every 5 minutes while two tasks run for 22 minutes, then the flush, one completion.
    #[test]
    fn a_drain_runs_through_once() {
        let mut s = state(Step::SetDraining, false);
        let mut calls = Vec::new();
        for minute in 0..40u64 {
            let work = Some(if minute < 22 { 2 } else { 0 });
            let flushed = minute >= 24;
            loop {
                let o = obs(minute, work, flushed, true);
                let a = decide(&s, &o, Continue);
                match a {
                    Wait => break,
                    SetDraining => {
                        s.draining_set = true;
                        s.step = Step::WaitTasks;
                    }
                    Heartbeat => {
                        s.heartbeats += 1;
                        s.last_heartbeat_ms = Some(T0 + minute * MIN);
                    }
                    MarkFlush => {
                        s.flush_mark = Some(42);
                        s.step = Step::Flush;
                    }
                    Complete(r) => {
                        s.completion = Some(Completion { result: r.as_str().into(), at_ms: T0 });
                        s.step = Step::Done;
                    }
                    Finish => s.step = Step::Done,
                }
                calls.push((minute, a));
            }
        }
        let beats: Vec<u64> =
            calls.iter().filter(|(_, a)| *a == Heartbeat).map(|(m, _)| *m).collect();
        assert_eq!(beats, [0, 5, 10, 15, 20]);
        assert_eq!(calls.iter().filter(|(_, a)| *a == SetDraining).count(), 1);
        assert_eq!(
            calls.iter().filter(|(_, a)| matches!(a, Complete(_))).collect::<Vec<_>>(),
            [&(24, Complete(Continue))]
        );
        assert!(calls.contains(&(22, MarkFlush)));
        assert_eq!(s.heartbeats, 5);
    }
}
