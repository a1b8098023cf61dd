//! Per-host free capacity: what ECS can still place here, computed on the host from the ECS
//! agent, Docker and cgroups, beside the log path and never in it.
//!
//! Built so far (issue "Per-host free capacity"): the accounting (`compute`) and the
//! scale-in protection decision (`protection`), both pure and table-tested. The collector,
//! the publishers and the wiring come next, on the shared Docker connection, AWS loader and
//! IMDS client.

pub mod compute;
pub mod protection;
