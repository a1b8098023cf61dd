//! Per-host free capacity: what ECS can still place here, computed on the host from the ECS
//! agent, Docker and cgroups, beside the log path and never in it.
//!
//! - `compute`: the accounting, pure and table-tested.
//! - `emf`: the report as CloudWatch Embedded Metric Format events (pure encoder and its
//!   spec check) and the PutLogEvents publisher.
//! - `protection`: the scale-in protection decision, pure and table-tested.
//! - `report`: what one tick found, the value every publisher reads.

pub mod cgroup;
pub mod compute;
pub mod emf;
pub mod protection;
pub mod report;
