//! Wiring and the shutdown sequence, nothing else.
//!
//! Start: open (and recover) the durable buffer, start the sinks on it, bind the listeners
//! (a bind error stops the start before anything is accepted), the admin endpoint, accept.
//! Stop (SIGTERM/SIGINT or a sink failing): stop accepting → connections finish what their
//! clients already sent (acked once in the buffer) → the buffer closes for writes → sinks
//! deliver what is left and end → cursors are synced → admin stops. All within
//! `shutdown.grace_period`; a second signal cuts it short. What a sink could not deliver in
//! time stays in the buffer and is delivered after the next start.

use crate::admin::{self, AdminState, SinkInfo};
use crate::buffer::{Buffer, BufferError};
use crate::config::{Config, SinkKind};
use crate::docker;
use crate::enrich;
use crate::input::{self, InputContext};
use crate::metrics::{Metrics, SinkLabel};
use crate::pipeline::{Pipeline, SinkRoute};
use crate::reassemble::JoinOptions;
use crate::sink::{self, SinkContext};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the start waits for the first Docker and IMDS answers before accepting
/// connections.
const ENRICH_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Sink(#[from] sink::SinkError),
    #[error("cannot open the buffer: {0}")]
    Buffer(#[from] BufferError),
}

pub fn sink_type(kind: &SinkKind) -> &'static str {
    match kind {
        SinkKind::Stdout { .. } => "stdout",
        SinkKind::File { .. } => "file",
        SinkKind::Null => "null",
        SinkKind::Elasticsearch(_) => "elasticsearch",
        SinkKind::CloudWatchLogs(_) => "cloudwatch_logs",
    }
}

/// Open the buffer off the async workers (recovery scans every segment) and report what
/// recovery found.
async fn open_buffer(config: &Config, metrics: &Metrics) -> Result<Buffer, AppError> {
    let opts = config.buffer.options();
    let (buffer, report) =
        tokio::task::spawn_blocking(move || Buffer::open(opts)).await.map_err(|e| {
            AppError::Buffer(BufferError::SpawnWriter(std::io::Error::other(e.to_string())))
        })??;
    metrics.buffer_recovered_records.inc_by(report.events);
    metrics.buffer_corrupt_records.inc_by(report.lost_events);
    let path = config.buffer.path.display().to_string();
    if report.lost_events > 0 || report.corrupt_bytes > 0 || report.truncated_bytes > 0 {
        tracing::warn!(
            path,
            recovered_events = report.events,
            lost_events = report.lost_events,
            corrupt_bytes = report.corrupt_bytes,
            truncated_bytes = report.truncated_bytes,
            "buffer recovered with damage: {}",
            match (report.lost_events > 0 || report.corrupt_bytes > 0, report.truncated_bytes > 0) {
                (true, true) => "damaged entries skipped, torn tail truncated",
                (true, false) => "damaged entries skipped",
                _ => "torn tail truncated",
            }
        );
    } else {
        tracing::info!(
            path,
            segments = report.segments,
            recovered_events = report.events,
            "buffer opened"
        );
    }
    Ok(buffer)
}

/// Run the daemon until a signal (or a fatal error) and a clean shutdown.
pub async fn run(config: Config) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;

    let metrics = Arc::new(Metrics::new());
    let buffer = open_buffer(&config, &metrics).await?;
    let fwd = &config.input.forward;
    let listeners = input::bind(fwd).await?;

    // Enrichment's background tasks (Docker events, IMDS) stop with `stop_enrich`, after
    // the inputs are done with them. Started once the listeners are bound: a start that
    // fails there asks nothing of Docker or IMDS.
    let stop_enrich = CancellationToken::new();
    let enrich_tasks = TaskTracker::new();
    // The host's one Docker connection (events, container list): the enrichment cache
    // subscribes to it, and so will anything else that needs the containers.
    let engine = config.enrich.docker.enabled.then(|| {
        Arc::new(docker::Engine::new(docker::Options {
            socket: config.enrich.docker.socket.clone(),
            request_timeout: docker::REQUEST_TIMEOUT.max(config.enrich.docker.inspect_wait),
        }))
    });
    if let Some(e) = &engine {
        enrich_tasks.spawn(Arc::clone(e).run(stop_enrich.clone()));
    }
    let enrich =
        enrich::start(&config.enrich, engine.as_ref(), &metrics, &enrich_tasks, &stop_enrich);
    enrich_tasks.close();

    // Multiline start patterns come from container labels, through the Docker cache.
    let multiline = match (config.enrich.multiline, enrich.enricher.docker()) {
        (Some(limits), Some(d)) => {
            Some((limits, Arc::clone(d) as Arc<dyn crate::reassemble::MultilineSource>))
        }
        _ => None,
    };
    let join = JoinOptions { partial: config.enrich.partial, multiline };
    let routes = config
        .sinks
        .iter()
        .map(|s| SinkRoute { name: s.name.clone(), pattern: s.match_.clone(), join: join.clone() })
        .collect();
    let (pipeline, readers) = Pipeline::new(buffer.clone(), routes, Arc::clone(&metrics))?;

    let mut sinks = JoinSet::new();
    for (cfg, reader) in config.sinks.iter().cloned().zip(readers) {
        let label = SinkLabel { sink: cfg.name.clone() };
        let _ = metrics.output_records.get_or_create(&label);
        let _ = metrics.output_errors.get_or_create(&label);
        let _ = metrics.output_bytes.get_or_create(&label);
        let ctx = SinkContext { name: cfg.name.clone(), reader, metrics: Arc::clone(&metrics) };
        let instance_id = buffer.instance_id();
        sinks.spawn(async move { sink::run(&cfg, ctx, instance_id).await });
    }
    let described: Vec<String> = listeners.iter().map(|l| l.describe()).collect();

    let state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        buffer: buffer.clone(),
        started: Instant::now(),
        ready: false.into(),
        listeners: described.clone(),
        enricher: Arc::clone(&enrich.enricher),
        sinks: config
            .sinks
            .iter()
            .map(|s| SinkInfo {
                name: s.name.clone(),
                kind: sink_type(&s.kind),
                pattern: s.match_.as_str().to_string(),
            })
            .collect(),
    });
    let stop_admin = CancellationToken::new();
    let admin_task = match config.admin.listen {
        Some(addr) => {
            let l = admin::bind(addr).await?;
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(address = %bound, "admin endpoint listening");
            Some(tokio::spawn(admin::serve(l, Arc::clone(&state), stop_admin.clone())))
        }
        None => None,
    };

    let stop_input = CancellationToken::new();
    // The Docker connection and, on EC2, the host fields take milliseconds: have them for
    // the first records (a restart while containers log). Off EC2 or without Docker this
    // costs at most the timeouts, once.
    let docker_first = async {
        if let Some(d) = enrich.enricher.docker() {
            d.wait_first(ENRICH_START_WAIT).await;
        }
    };
    let host_first = async {
        if let Some(h) = &enrich.host {
            h.wait_first(ENRICH_START_WAIT).await;
        }
    };
    tokio::join!(docker_first, host_first);
    let mut ctx = InputContext::new(fwd, pipeline, Arc::clone(&metrics));
    ctx.enricher = Arc::clone(&enrich.enricher);
    let mut input_task =
        tokio::spawn(input::serve(listeners, ctx, fwd.max_connections, stop_input.clone()));
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(listeners = ?described, sinks = config.sinks.len(), "berth is running");

    // Run until a signal or a sink fails.
    let mut failure = None;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        Some(res) = sinks.join_next() => {
            failure = Some(match res {
                Ok(Err(e)) => AppError::Sink(e),
                Ok(Ok(())) | Err(_) => AppError::Sink(sink::SinkError::Stopped),
            });
            tracing::error!(error = %failure.as_ref().map(|e| e.to_string()).unwrap_or_default(), "a sink stopped: shutting down");
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    stop_input.cancel();

    let grace = config.shutdown.grace_period;
    let deadline = tokio::time::Instant::now() + grace;
    // Phase 1: the inputs finish what their clients already sent. At most half the grace
    // period, so that sinks get the other half even when a connection is held by a full
    // buffer (what it had not got acked is sent again by its client after the restart).
    let inputs_deadline = tokio::time::Instant::now() + grace / 2;
    let inputs_done = tokio::select! {
        _ = tokio::time::sleep_until(inputs_deadline) => false,
        _ = &mut input_task => true,
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
    };
    if !inputs_done {
        input_task.abort();
    }
    // Phase 2: no more writes; the sinks deliver what is in the buffer, then end. Closing
    // waits for the writer's last fsync, which a stalled disk could hold forever.
    let closed = tokio::select! {
        r = buffer.close() => r.map(|_| true),
        _ = tokio::time::sleep_until(deadline) => Ok(false),
        _ = sigterm.recv() => Ok(false),
        _ = sigint.recv() => Ok(false),
    };
    let closed = closed.unwrap_or_else(|e| {
        tracing::error!(error = %e, "closing the buffer");
        true
    });
    let drained = closed && {
        let drained = async {
            while let Some(res) = sinks.join_next().await {
                if let Ok(Err(e)) = res {
                    tracing::error!(error = %e, "sink failed during shutdown");
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => false,
            _ = drained => true,
            _ = sigterm.recv() => false,
            _ = sigint.recv() => false,
        }
    };
    let finished = inputs_done && drained;
    if !drained {
        sinks.abort_all();
        while sinks.join_next().await.is_some() {}
    }
    // Sinks acknowledged deliveries after the close synced the cursors: make those durable
    // too (a sink cut off by the deadline never reached its reader's end, which does it).
    let b = buffer.clone();
    match tokio::task::spawn_blocking(move || b.sync_cursors()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot fsync the sink cursors at shutdown"),
        Err(e) => tracing::error!(error = %e, "cannot fsync the sink cursors at shutdown"),
    }
    // What is left is on disk for the next start.
    let stats = buffer.stats();
    for s in stats.sinks.iter().filter(|s| s.lag_events > 0) {
        tracing::warn!(sink = %s.name, undelivered = s.lag_events, "events left in the buffer for the next start");
    }
    stop_enrich.cancel();
    enrich_tasks.wait().await;
    stop_admin.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    drop(buffer);
    if let Some(e) = failure {
        return Err(e);
    }
    if !finished {
        tracing::warn!(grace = ?grace, "shutdown grace period expired before every sink was done");
    }
    tracing::info!("shutdown complete");
    Ok(())
}
