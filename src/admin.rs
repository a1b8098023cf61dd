//! The admin endpoint, on 127.0.0.1 by default: `/healthz`, `/metrics`, `/v1/status`.
//!
//! Read-only views of state other modules own; never in the log path.

use crate::buffer::Buffer;
use crate::metrics::{Metrics, SinkLabel};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on admin address {addr}: {source}")]
pub struct AdminError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// What the admin endpoint reports; filled in by `app`.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Its health and lag are part of /healthz, /metrics and /v1/status.
    pub buffer: Buffer,
    pub started: Instant,
    /// Set once every listener is bound; cleared when shutdown starts.
    pub ready: AtomicBool,
    pub listeners: Vec<String>,
    /// The sinks that run (SIGHUP may change them).
    pub sinks: std::sync::RwLock<Vec<SinkInfo>>,
    /// `[capacity] enabled`: `/v1/capacity` answers.
    pub capacity_enabled: bool,
    /// `[drain] enabled`: `/v1/drain` answers.
    pub drain: Option<crate::drain::runner::Handle>,
    /// Docker and IMDS state for /v1/status.
    pub enricher: Arc<crate::enrich::Enricher>,
}

#[derive(Clone, Serialize)]
pub struct SinkInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "match")]
    pub pattern: String,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr).await.map_err(|source| AdminError { addr, source })
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/capacity", get(capacity))
        .route("/v1/drain", get(drain_view).post(drain_request))
        .with_state(state)
}

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

/// The latest capacity report; 404 with capacity off, 503 before its first tick.
async fn capacity(State(s): State<Arc<AdminState>>) -> Response {
    if !s.capacity_enabled {
        return (StatusCode::NOT_FOUND, "capacity is not enabled ([capacity] enabled = false)\n")
            .into_response();
    }
    match s.metrics.capacity.get() {
        Some(r) => Json(&*r).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "capacity: no report yet\n").into_response(),
    }
}

/// The drain in progress or the last one; 404 with draining off.
async fn drain_view(State(s): State<Arc<AdminState>>) -> Response {
    match &s.drain {
        Some(d) => Json(d.view()).into_response(),
        None => drain_off(),
    }
}

fn drain_off() -> Response {
    (StatusCode::NOT_FOUND, "draining is not enabled ([drain] enabled = false)\n").into_response()
}

/// `POST /v1/drain` body: `{}` or `{"deadline": "2h"}` starts an operator's drain (if none
/// is in progress), `{"abort": true}` aborts the one in progress. Answers the view.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    abort: bool,
}

async fn drain_request(State(s): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    use crate::drain::runner::Request;
    let Some(d) = &s.drain else { return drain_off() };
    let bad = |m: String| (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response();
    let req: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest { deadline: None, abort: false }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return bad(format!(
                    "not a drain request ({e}): {{\"deadline\": \"2h\"}} or {{\"abort\": true}}"
                ))
            }
        }
    };
    let r = match (req.abort, req.deadline) {
        (true, Some(_)) => return bad("abort and deadline together: choose one".into()),
        (true, None) => Request::Abort,
        (false, None) => Request::Start { deadline: None },
        (false, Some(t)) => match crate::config::parse_duration(&t) {
            Ok(d) => Request::Start { deadline: Some(d) },
            Err(e) => return bad(format!("deadline {t:?}: {e}")),
        },
    };
    match d.request(r).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else if !s.buffer.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "buffer cannot write to disk\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    s.metrics.observe_buffer(&s.buffer.stats());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    ready: bool,
    uptime_seconds: u64,
    listeners: Vec<String>,
    input: InputStatus,
    enrich: crate::enrich::EnrichStatus,
    buffer: BufferStatus,
    sinks: Vec<SinkStatus>,
    /// The drain's step, trigger, deadline and outcome (`GET /v1/drain` has the rest);
    /// absent with draining off.
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<DrainStatus>,
}

#[derive(Serialize)]
struct DrainStatus {
    active: bool,
    step: Option<&'static str>,
    trigger: Option<serde_json::Value>,
    outcome: Option<&'static str>,
    remaining_tasks: Option<u32>,
    deadline_in_seconds: Option<i64>,
    heartbeats: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct BufferStatus {
    path: String,
    healthy: bool,
    instance_id: String,
    head: u64,
    oldest: u64,
    bytes: u64,
    records: u64,
    segments: usize,
    dropped_full: u64,
    recovered_records: u64,
    corrupt_records: u64,
}

#[derive(Serialize)]
struct InputStatus {
    connections: i64,
    requests: u64,
    records: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct SinkStatus {
    #[serde(flatten)]
    info: SinkInfo,
    delivered_records: u64,
    errors: u64,
    /// Events in the buffer this sink has not delivered.
    lag_records: Option<u64>,
    committed_offset: Option<u64>,
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<Status> {
    let m = &s.metrics;
    let st = s.buffer.stats();
    let infos = s.sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
    let sinks = infos
        .iter()
        .map(|info| {
            let label = SinkLabel { sink: info.name.clone() };
            let cursor = st.sinks.iter().find(|c| c.name == info.name);
            SinkStatus {
                lag_records: cursor.map(|c| c.lag_events),
                committed_offset: cursor.map(|c| c.committed),
                info: info.clone(),
                delivered_records: m.output_records.get_or_create(&label).get(),
                errors: m.output_errors.get_or_create(&label).get(),
            }
        })
        .collect();
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        ready: s.ready.load(Ordering::Relaxed),
        uptime_seconds: s.started.elapsed().as_secs(),
        listeners: s.listeners.clone(),
        input: InputStatus {
            connections: m.input_connections.get(),
            requests: m.input_requests.get(),
            records: m.input_records.get(),
            bytes: m.input_bytes.get(),
        },
        enrich: s.enricher.status(),
        buffer: BufferStatus {
            path: s.buffer.path().display().to_string(),
            healthy: st.healthy,
            instance_id: format!("{:016x}", st.instance_id),
            head: st.head,
            oldest: st.oldest,
            bytes: st.total_bytes,
            records: st.total_events,
            segments: st.segments,
            dropped_full: st.dropped_full,
            recovered_records: st.recovery.events,
            corrupt_records: st.recovery.lost_events,
        },
        sinks,
        drain: s.drain.as_ref().map(|d| {
            let v = d.view();
            let st = v.drain.as_ref();
            DrainStatus {
                active: v.active,
                step: st.map(|s| s.step.as_str()),
                trigger: st.and_then(|s| serde_json::to_value(&s.trigger).ok()),
                outcome: st.and_then(|s| s.outcome.map(|o| o.as_str())),
                remaining_tasks: v.remaining_tasks,
                deadline_in_seconds: v.deadline_in_seconds,
                heartbeats: st.map_or(0, |s| s.heartbeats),
                error: v.error.clone(),
            }
        }),
    })
}
