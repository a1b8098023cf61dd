//! Safe draining of this host (issue "Safe draining from the host"): notice termination,
//! set the container instance DRAINING, wait for the tasks while heart-beating the
//! lifecycle hook, flush their last logs, then complete the action — exactly once, across
//! restarts.
//!
//! - `plan`: which IMDS answers start a drain, the Spot notice, the deadline (the hook's
//!   global limit, the notice, `max_duration`), the heartbeat schedule — pure;
//! - `triggers`: the IMDS paths `[drain] watch` lists, read each poll, and the one trigger
//!   they start — the reading pure;
//! - `state`: the persisted state machine's record, replaced atomically beside the buffer;
//! - `machine`: the next step from the state and one tick's observation (the rules and
//!   their order are its contract) — pure;
//! - `runner`: the one task that applies them with the ECS and Auto Scaling clients, the
//!   agent's and Docker's view of the tasks, and the buffer's "delivered up to here?", and
//!   answers `berth drain`, `/v1/drain` and the shutdown.
//!
//! The drain talks to the log path through one question only ("has every sink delivered
//! everything up to this offset?"); nothing in the log path waits for it.

pub mod machine;
pub mod plan;
pub mod runner;
pub mod state;
pub mod triggers;
