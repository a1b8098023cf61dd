//! Wiring and the shutdown sequence, nothing else.
//!
//! Start: open (and recover) the durable buffer, start the sinks on it, bind the listeners
//! (a bind error stops the start before anything is accepted), the admin endpoint, accept.
//! Stop (SIGTERM/SIGINT or a sink failing): stop accepting → connections finish what their
//! clients already sent (acked once in the buffer) → the buffer closes for writes → sinks
//! deliver what is left and end → cursors are synced → background services stop → admin
//! stops. Every wait is bounded by `shutdown.grace_period` (`crate::shutdown`); a second
//! signal cuts it short. What a sink could not deliver in time stays in the buffer and is
//! delivered after the next start.

use crate::admin::{self, AdminState, SinkInfo};
use crate::aws::Aws;
use crate::buffer::{Buffer, BufferError};
use crate::config::{Config, SinkKind};
use crate::docker;
use crate::enrich;
use crate::imds::Imds;
use crate::input::{self, InputContext};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::reassemble::JoinOptions;
use crate::shutdown::{Deadlines, Shutdown};
use crate::sink::{self, set::RunningSinks};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

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
    #[error("cannot start the input thread: {0}")]
    InputThread(std::io::Error),
    /// A setting that cannot work, found before serving (exit 78, as a config error).
    #[error("{0}")]
    Config(String),
}

impl AppError {
    /// A configuration problem (the operator must change something), not a runtime failure.
    pub fn is_config(&self) -> bool {
        matches!(self, AppError::Config(_))
    }
}

/// The AWS identities the config uses, each with the key path that names it.
fn aws_identities(config: &Config) -> Vec<(String, crate::config::AwsAuth)> {
    let mut out = Vec::new();
    for (i, s) in config.sinks.iter().enumerate() {
        match &s.kind {
            SinkKind::CloudWatchLogs(c) => {
                out.push((format!("sink[{i}] ({:?})", s.name), c.aws.clone()))
            }
            SinkKind::Elasticsearch(e) => {
                if let crate::config::EsAuth::AwsSigV4(a) = &e.auth {
                    out.push((format!("sink[{i}].auth ({:?})", s.name), a.aws.clone()));
                }
            }
            _ => {}
        }
    }
    if config.capacity.enabled {
        out.push(("ecs (for [capacity])".to_string(), config.ecs.aws.clone()));
    }
    if config.drain.enabled {
        out.push(("ecs (for [drain])".to_string(), config.ecs.aws.clone()));
    }
    out
}

/// Every AWS identity has a region before anything is served: without one, no call could
/// be signed, and a sink would retry for ever. Found here, it is a config error (exit 78).
async fn check_regions(config: &Config, aws: &Aws) -> Result<(), AppError> {
    for (key, auth) in aws_identities(config) {
        if let Err(e) = aws.load(&auth).await {
            return Err(AppError::Config(format!("{}: {key}: {e}", config.source)));
        }
    }
    Ok(())
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
            AppError::Buffer(BufferError::SpawnThread(std::io::Error::other(e.to_string())))
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

/// Replaces berth's log filter with a level or a tracing filter.
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// berth's own log filter, replaceable while it runs.
pub struct LogControl {
    pub set: SetFilter,
    /// The command line gave the level: the config's `[log] level` does not change it.
    pub pinned: bool,
}

/// What SIGHUP needs: where the config came from, and the log filter.
#[derive(Default)]
pub struct Reload {
    /// `--config` as given (`None`: `$BERTH_CONFIG`, the default path or the built-in
    /// defaults, found again as at start).
    pub path: Option<std::path::PathBuf>,
    pub log: Option<LogControl>,
}

/// The sections of `new` that differ from `old`, by their names in the file. Compared
/// field by field in memory (secrets included, never printed).
pub fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let mut out = Vec::new();
    for (name, a, b) in [
        ("input", d(&old.input), d(&new.input)),
        ("admin", d(&old.admin), d(&new.admin)),
        ("buffer", d(&old.buffer), d(&new.buffer)),
        ("shutdown", d(&old.shutdown), d(&new.shutdown)),
        ("log", d(&old.log_level), d(&new.log_level)),
        ("enrich", d(&old.enrich), d(&new.enrich)),
        ("ecs", d(&old.ecs), d(&new.ecs)),
        ("capacity", d(&old.capacity), d(&new.capacity)),
        ("drain", d(&old.drain), d(&new.drain)),
        ("sink", d(&old.sinks), d(&new.sinks)),
    ] {
        if a != b {
            out.push(name);
        }
    }
    out
}

/// What SIGHUP may change while berth runs besides the log level: the sinks.
struct Live<'a> {
    sinks: &'a mut RunningSinks,
    aws: &'a Aws,
    state: &'a AdminState,
}

fn sink_infos(sinks: &[crate::config::SinkConfig]) -> Vec<SinkInfo> {
    sinks
        .iter()
        .map(|s| SinkInfo {
            name: s.name.clone(),
            kind: sink_type(&s.kind),
            pattern: s.match_.as_str().to_string(),
        })
        .collect()
}

/// SIGHUP: re-read and check the config; apply the log level and the sinks; say what else
/// changed and needs a restart. A config that does not load changes nothing (the error is
/// logged).
async fn reload(
    running: &mut Config,
    r: &Reload,
    live: Live<'_>,
    notifier: &crate::notify::Notifier,
) {
    notifier.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    match Config::load(r.path.as_deref()) {
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config is not valid; the running one is kept")
        }
        Ok(new) => {
            let changed = changed_sections(running, &new);
            let mut applied = Vec::new();
            if changed.contains(&"log") {
                match (&r.log, &new.log_level) {
                    (Some(l), _) if l.pinned => tracing::info!("SIGHUP: [log] level ignored: the command line's --log-level (BERTH_LOG) is kept"),
                    (Some(l), level) => match (l.set)(level.as_deref().unwrap_or("info")) {
                        Ok(()) => {
                            applied.push("log");
                            // Seen only when the new filter lets debug through.
                            tracing::debug!(level = ?level, "SIGHUP: the log filter is replaced");
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: cannot change the log level"),
                    },
                    (None, _) => {}
                }
            }
            if changed.contains(&"sink") {
                // An AWS sink needs a region, as at start; without one nothing changes.
                match check_regions(&new, live.aws).await {
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the new sinks cannot work; the running ones are kept")
                    }
                    Ok(()) => match live.sinks.apply(&new.sinks).await {
                        Ok(plan) => {
                            applied.push("sink");
                            tracing::info!(stopped = ?plan.stop, removed = ?plan.remove, started = ?plan.start, "SIGHUP: sinks changed");
                        }
                        Err(failed) => {
                            tracing::error!(failed = ?failed, "SIGHUP: some sinks could not start (see above); the others are applied")
                        }
                    },
                }
                running.sinks = live.sinks.configs();
                *live.state.sinks.write().unwrap_or_else(|p| p.into_inner()) =
                    sink_infos(&running.sinks);
            }
            // A level the command line pinned is not a restart's business either.
            let pinned = r.log.as_ref().is_some_and(|l| l.pinned);
            let restart: Vec<&str> = changed
                .iter()
                .copied()
                .filter(|c| !(applied.contains(c) || (pinned && *c == "log")))
                .collect();
            running.log_level = new.log_level.clone();
            if restart.is_empty() {
                tracing::info!(source = %new.source, applied = ?applied, "SIGHUP: config reloaded");
            } else {
                tracing::warn!(
                    source = %new.source,
                    applied = ?applied,
                    needs_restart = ?restart,
                    "SIGHUP: config reloaded; these sections changed and take effect only after a restart"
                );
            }
        }
    }
    notifier.send("READY=1");
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Run the daemon until a signal (or a fatal error) and a clean shutdown.
pub async fn run(config: Config) -> Result<(), AppError> {
    run_with(config, Reload::default()).await
}

/// [`run`], with SIGHUP re-reading the config as `reload` says.
pub async fn run_with(mut config: Config, reload_with: Reload) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    // SIGHUP never kills berth: it re-reads the config.
    let mut sighup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    let notifier = crate::notify::Notifier::from_env();
    if let (Some(level), Some(l)) = (&config.log_level, &reload_with.log) {
        if !l.pinned {
            if let Err(e) = (l.set)(level) {
                tracing::error!(error = %e, "cannot set the log level from [log] level");
            }
        }
    }

    let metrics = Arc::new(Metrics::new());
    let buffer = open_buffer(&config, &metrics).await?;
    let fwd = &config.input.forward;
    // A socket systemd passed that no listener names is the unit and the config
    // disagreeing: a config error (exit 78), which a restart cannot fix.
    let listeners = input::bind(fwd).await.map_err(|e| match e {
        input::InputError::Unmatched { .. } => AppError::Config(e.to_string()),
        e => AppError::Input(e),
    })?;

    // The one shutdown sequence: background services (the Docker engine's events, IMDS
    // now, capacity, the drain next) run on its tracker and stop in its `background` phase,
    // after the inputs are done with them. Started once the listeners are bound: a start
    // that fails there asks nothing of Docker or IMDS.
    let shutdown = Shutdown::new();
    // One IMDS client and one AWS loader for the process: host fields, every AWS client's
    // region and credentials, and (next) capacity and drain share them.
    let imds = Imds::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "EC2 instance metadata client unavailable");
        Imds::disabled()
    });
    let aws = Arc::new(Aws::new(imds.clone()));
    check_regions(&config, &aws).await?;
    // The host's one Docker connection (events, container list): the enrichment cache
    // subscribes to it, and so will anything else that needs the containers.
    let engine = (config.enrich.docker.enabled || config.capacity.enabled || config.drain.enabled)
        .then(|| {
            Arc::new(docker::Engine::new(docker::Options {
                socket: config.enrich.docker.socket.clone(),
                request_timeout: docker::REQUEST_TIMEOUT.max(config.enrich.docker.inspect_wait),
            }))
        });
    if let Some(e) = &engine {
        shutdown.tracker().spawn(Arc::clone(e).run(shutdown.background().clone()));
    }
    // Capacity: beside the log path, on the background phase of the shutdown.
    metrics.capacity.set_prometheus(config.capacity.enabled && config.capacity.publish.prometheus);
    if config.capacity.enabled {
        let deps = crate::capacity::Deps {
            engine: engine.clone(),
            imds: imds.clone(),
            aws: Arc::clone(&aws),
            metrics: Arc::clone(&metrics),
        };
        let (cfg, ecs, stop) =
            (config.capacity.clone(), config.ecs.clone(), shutdown.background().clone());
        shutdown.tracker().spawn(async move {
            if let Err(e) = crate::capacity::run(cfg, ecs, deps, stop).await {
                tracing::error!(error = %e, "capacity stopped");
            }
        });
    }
    let enrich = enrich::start(
        &config.enrich,
        engine.as_ref(),
        &metrics,
        &imds,
        shutdown.tracker(),
        shutdown.background(),
    );

    // Multiline start patterns come from container labels, through the Docker cache.
    let multiline = match (config.enrich.multiline, enrich.enricher.docker()) {
        (Some(limits), Some(d)) => {
            Some((limits, Arc::clone(d) as Arc<dyn crate::reassemble::MultilineSource>))
        }
        _ => None,
    };
    let join = JoinOptions { partial: config.enrich.partial, multiline };
    let routes = config.sinks.iter().map(|s| sink::set::route(s, &join)).collect();
    let (pipeline, readers) = Pipeline::new(buffer.clone(), routes, Arc::clone(&metrics))?;

    // The drain: beside the log path, asking it only "delivered up to here?". Its state
    // lives in the buffer's directory.
    let drain = if config.drain.enabled {
        let deps = crate::drain::runner::Deps {
            engine: engine.clone(),
            imds: imds.clone(),
            aws: Arc::clone(&aws),
            metrics: Arc::clone(&metrics),
            buffer: buffer.clone(),
        };
        let h = crate::drain::runner::spawn(
            config.drain.clone(),
            config.ecs.clone(),
            deps,
            shutdown.background().clone(),
            shutdown.tracker(),
        )
        .map_err(|e| AppError::Config(format!("{}: ecs.agent_url: {e}", config.source)))?;
        Some(h)
    } else {
        None
    };

    let mut sinks =
        RunningSinks::new(pipeline.clone(), Arc::clone(&metrics), Arc::clone(&aws), join);
    for (cfg, reader) in config.sinks.iter().cloned().zip(readers) {
        sinks.start(cfg, reader);
    }
    let described: Vec<String> = listeners.iter().map(|l| l.describe()).collect();

    let state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        buffer: buffer.clone(),
        started: Instant::now(),
        ready: false.into(),
        listeners: described.clone(),
        enricher: Arc::clone(&enrich.enricher),
        capacity_enabled: config.capacity.enabled,
        drain: drain.clone(),
        sinks: sink_infos(&config.sinks).into(),
    });
    let admin_task = match config.admin.listen {
        Some(addr) => {
            let l = admin::bind(addr).await?;
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(address = %bound, "admin endpoint listening");
            Some(tokio::spawn(admin::serve(l, Arc::clone(&state), shutdown.admin().clone())))
        }
        None => None,
    };

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
    let mut input_thread =
        input::spawn_thread(listeners, ctx, fwd.max_connections, shutdown.intake().clone())
            .map_err(AppError::InputThread)?;
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(listeners = ?described, sinks = config.sinks.len(), "berth is running");
    // Every listener is bound, the buffer recovered: systemd may start what comes after.
    notifier.send("READY=1");
    if let Some(every) = notifier.watchdog_every() {
        // Not on the shutdown tracker: the watchdog is fed until the process ends.
        let n = notifier.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                n.send("WATCHDOG=1");
            }
        });
    }

    // Run until a signal or a sink fails.
    let mut failure = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: re-reading the config");
                let live = Live { sinks: &mut sinks, aws: &aws, state: &state };
                reload(&mut config, &reload_with, live, &notifier).await;
                continue;
            }
            Some((_, res)) = sinks.next_end() => {
                failure = Some(match res {
                    Err(e) => AppError::Sink(e),
                    Ok(()) => AppError::Sink(sink::SinkError::Stopped),
                });
                tracing::error!(error = %failure.as_ref().map(|e| e.to_string()).unwrap_or_default(), "a sink stopped: shutting down");
            }
        }
        break;
    }
    notifier.send("STOPPING=1");
    // A SIGTERM during a drain is part of it (ECS stops daemon tasks, berth's own, as soon
    // as the other tasks have left RUNNING): the inputs stay open for the stopping tasks'
    // last lines and the drain goes on — flush, completion — until it is done or the stop
    // timeout leaves only the grace period. A second signal cuts it short.
    if let (None, Some(d)) = (&failure, &drain) {
        match d.request(crate::drain::runner::Request::Shutdown).await {
            Ok(v) if v.active => {
                let wait = config.drain.stop_timeout.saturating_sub(config.shutdown.grace_period);
                tracing::info!(wait = ?wait, "a drain is in progress: finishing it before shutting down");
                let finished = tokio::select! {
                    _ = d.until_idle() => true,
                    _ = tokio::time::sleep(wait) => false,
                    _ = sigterm.recv() => false,
                    _ = sigint.recv() => false,
                };
                if finished {
                    tracing::info!("the drain is done: shutting down");
                } else {
                    tracing::warn!("shutting down with the drain still in progress (it resumes if berth starts again)");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot ask the drain whether one is in progress"),
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    let grace = config.shutdown.grace_period;
    let deadlines = Deadlines::from(tokio::time::Instant::now(), grace);
    // A second signal cuts every phase short.
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
            tracing::warn!("second signal: cutting the shutdown short");
            shutdown.abort();
        }
    });

    // Phase 1: the inputs finish what their clients already sent. Sinks keep delivering
    // meanwhile, so a connection held by a full buffer gets room; at the sinks' deadline
    // it is cut (what it had not got acked is sent again by its client after the restart).
    shutdown.intake().cancel();
    let inputs_done = shutdown.until(deadlines.work, input_thread.wait()).await.is_some();
    if !inputs_done {
        input_thread.abort();
    }
    // Phase 2: no more writes; the sinks deliver what is in the buffer, then end. Closing
    // waits for the writer's last fsync, which a stalled disk could hold forever.
    let closed = match shutdown.until(deadlines.work, buffer.close()).await {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::error!(error = %e, "closing the buffer");
            true
        }
        None => false,
    };
    let drained = closed && { shutdown.until(deadlines.work, sinks.join_all()).await.is_some() };
    let finished = inputs_done && drained;
    if !drained {
        // Aborting is immediate; joining the aborted tasks is bounded all the same.
        let _ = shutdown.until(deadlines.end, sinks.abort_all()).await;
    }
    // Sinks acknowledged deliveries after the close synced the cursors: make those durable
    // too (a sink cut off by the deadline never reached its reader's end, which does it).
    let b = buffer.clone();
    // Not cut short by a second signal (only by the end of the grace period): it takes
    // milliseconds, and skipping it would deliver again, after the restart, everything
    // acknowledged since the last sync.
    match tokio::time::timeout_at(deadlines.end, tokio::task::spawn_blocking(move || b.sync_cursors()))
        .await
        .ok()
    {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => tracing::error!(error = %e, "cannot fsync the sink cursors at shutdown"),
        Some(Err(e)) => tracing::error!(error = %e, "cannot fsync the sink cursors at shutdown"),
        None => tracing::error!("the sink cursors were not fsynced before the end of the grace period: deliveries since the last sync are sent again after the restart"),
    }
    // What is left is on disk for the next start.
    let stats = buffer.stats();
    for s in stats.sinks.iter().filter(|s| s.lag_events > 0) {
        tracing::warn!(sink = %s.name, undelivered = s.lag_events, "events left in the buffer for the next start");
    }
    // Phase 3: background services.
    if !shutdown.stop_background(deadlines.end).await {
        tracing::warn!("background tasks still running at the end of the grace period");
    }
    // Phase 4: the admin endpoint, last. A client that pipelines requests without reading
    // holds axum's graceful shutdown: it is cut at the end of the grace period.
    shutdown.admin().cancel();
    if let Some(mut t) = admin_task {
        if shutdown.until(deadlines.end, &mut t).await.is_none() {
            t.abort();
        }
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
