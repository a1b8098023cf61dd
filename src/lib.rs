//! berth: a per-host agent for Amazon ECS container instances.
//!
//! How the parts fit: data flows one way.
//!
//! ```text
//! input       Forward over TCP / Unix sockets: listeners, one task per connection
//!   │         forward:: the protocol as pure functions (frame walk, decode, handshake, acks)
//!   │         msgpack:: the one msgpack reader every walker uses, and msgpack → JSON
//!   │         enrich:: Docker / ECS / EC2 fields added to each record before it is stored
//!   ▼
//! pipeline    submit → buffer (acks to clients once durable); one SinkReader per sink,
//!   │         filtered by its route:: tag pattern, acknowledging what it delivered
//!   ▼
//! buffer      append-only segments on disk, group-commit fsync, a cursor per sink,
//!   │         recovery after a crash (invariants in buffer/mod.rs)
//!   ▼
//! sink        stdout, file, null; elasticsearch (pure core so far)
//!
//! beside it:  admin (127.0.0.1:24220) /healthz, /metrics, /v1/status; metrics; config; cli;
//!             calendar (civil dates and RFC 3339 text for JSON, names and HTTP-dates)
//! ```
//!
//! `app` wires them and owns the start and shutdown sequences; `main` only parses the
//! command line, sets up logging and maps errors to exit codes.

pub mod admin;
pub mod app;
pub mod buffer;
pub mod calendar;
pub mod cat;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod event;
pub mod forward;
pub mod input;
pub mod metrics;
pub mod msgpack;
pub mod pipeline;
pub mod ratelimit;
pub mod reassemble;
pub mod route;
pub mod sink;
