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
//! sink        stdout, file, null, elasticsearch (_bulk, SigV4), cloudwatch_logs;
//!             sink::batch gathers each sink's groups from its SinkReader
//!
//! beside it:  docker (the host's engine: one connection, one events stream, one container
//!             list; subscribers: enrich's container cache, capacity)
//!             capacity:: what ECS can still place here: collector (agent, Docker, task
//!             cgroups) → report → Prometheus, /v1/capacity, EMF; scale-in protection
//!             drain:: safe draining: triggers (IMDS) → DRAINING → heartbeats while the
//!             tasks finish → the sinks deliver up to the buffer's head → completion; a
//!             persisted state, /v1/drain, `berth drain`
//!             ecs:: the ECS agent's introspection API (the tasks on this host), the ECS
//!             API's view of this container instance (ecs::api), which tasks are daemons
//!             (ecs::daemons)
//!             autoscaling:: this instance's Auto Scaling group and scale-in protection
//!             admin (127.0.0.1:24220) /healthz, /metrics, /v1/status, /v1/capacity,
//!             /v1/drain; metrics; config; cli
//! shared:     aws:: one loader (region, credentials cache, AssumeRole) for every AWS client,
//!             and aws::api's one error type (and retry/timeout settings) for API calls
//!             imds:: the process's one IMDSv2 client (404 = absent)
//!             shutdown:: the one shutdown sequence's tokens, tracker and bounded waits
//!             backoff (every retry and reconnect loop), ratelimit (every repeated warning)
//!             msgpack (the one reader of msgpack bytes, and the msgpack → JSON codec)
//!             calendar (civil dates and RFC 3339 text for JSON, names and HTTP-dates)
//! ```
//!
//! `app` wires them and owns the start and shutdown sequences; `main` only parses the
//! command line, sets up logging and maps errors to exit codes. The Docker engine task is
//! started by `app` and stops with the enrichment, after the inputs are done with it.

pub mod admin;
pub mod app;
pub mod autoscaling;
pub mod aws;
pub mod backoff;
pub mod buffer;
pub mod calendar;
pub mod capacity;
pub mod cat;
pub mod cli;
pub mod config;
pub mod docker;
pub mod drain;
pub mod ecs;
pub mod enrich;
pub mod error;
pub mod event;
pub mod forward;
pub mod imds;
pub mod input;
pub mod metrics;
pub mod msgpack;
pub mod notify;
pub mod pipeline;
pub mod process_metrics;
pub mod ratelimit;
pub mod reassemble;
pub mod route;
pub mod shutdown;
pub mod sink;
pub mod template;
