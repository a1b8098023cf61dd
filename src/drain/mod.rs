//! Safe draining of this host (issue "Safe draining from the host"): notice termination,
//! set the container instance DRAINING, wait for the tasks while heart-beating the
//! lifecycle hook, flush their last logs, then complete the action — exactly once, across
//! restarts.
//!
//! Built so far, the parts with no I/O of their own, table-tested:
//! - `plan`: which IMDS answers start a drain, the Spot notice, the deadline (the hook's
//!   global limit, the notice, `max_duration`), the heartbeat schedule;
//! - `state`: the persisted state machine's record, replaced atomically beside the buffer;
//! - `machine`: the next step from the state and one tick's observation (the rules and
//!   their order are its contract).
//!
//! Next: the `[drain]` config, the watcher on the shared IMDS client, the state machine on
//! the ECS and Auto Scaling clients (`ecs::api`, `autoscaling`) and the capacity view of
//! which tasks are work, `berth drain` and `/v1/drain`.

pub mod machine;
pub mod plan;
pub mod state;
