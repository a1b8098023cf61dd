//! Per-host free capacity: what ECS can still place here, computed on the host from the ECS
//! agent, Docker and cgroups, beside the log path and never in it.
//!
//! - `compute`: the accounting, pure and table-tested.
//! - `cgroup`: task-level sizes read from the task cgroups the ECS agent makes.
//! - `collector`: the local sources (agent, Docker, cgroups) at each tick, into a report.
//! - `control`: the AWS calls (registered resources, cross-check, scale-in protection).
//! - `emf`: the report as CloudWatch Embedded Metric Format events (pure encoder and its
//!   spec check) and the PutLogEvents publisher.
//! - `protection`: the scale-in protection decision, pure and table-tested.
//! - `report`: what one tick found, the value every publisher reads.
//! - `publish`: the latest report for the admin endpoint and the Prometheus gauges.
//!
//! [`run`] is the one task: a tick every `interval`, and one soon after a container starts
//! or stops (Docker's events, debounced), so protection goes on as a task starts. Every
//! call it makes has a timeout; a source that does not answer is reported as such and its
//! figures are not published as current.

pub mod cgroup;
pub mod collector;
pub mod compute;
pub mod control;
pub mod emf;
pub mod protection;
pub mod publish;
pub mod report;

use crate::config::{CapacityConfig, EcsConfig};
use crate::docker;
use crate::ecs::agent::Agent;
use crate::imds::{self, Imds};
use crate::metrics::Metrics;
use collector::Local;
use report::Source;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Containers that start or stop together (a task's) make one extra tick.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What capacity runs on: the process's shared pieces.
pub struct Deps {
    pub engine: Option<Arc<docker::Engine>>,
    pub imds: Imds,
    pub aws: Arc<crate::aws::Aws>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Agent(#[from] crate::ecs::agent::AgentError),
}

/// Run until `shutdown`.
pub async fn run(
    cfg: CapacityConfig,
    ecs: EcsConfig,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), CapacityError> {
    let emf = cfg.publish.cloudwatch_emf.then(|| {
        emf_loop(
            cfg.clone(),
            ecs.clone(),
            Arc::clone(&deps.aws),
            Arc::clone(&deps.metrics),
            shutdown.clone(),
        )
    });
    let collect = collect_loop(cfg, ecs, deps, shutdown);
    match emf {
        Some(emf) => tokio::join!(collect, emf).0,
        None => collect.await,
    }
}

/// The collector: a report at every tick.
async fn collect_loop(
    cfg: CapacityConfig,
    ecs: EcsConfig,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), CapacityError> {
    let agent = Agent::new(&ecs.agent_url)?;
    let cgroups = cgroup::Cgroups::new(&cfg.cgroup_root);
    let latest = Arc::clone(&deps.metrics.capacity);
    let mut local = Local::new(
        agent,
        deps.engine.clone(),
        cgroups,
        cfg.task_shapes.clone(),
        crate::ecs::daemons::Daemons::new(&ecs.daemon_task_families),
    );
    let mut control =
        control::Control::new(&cfg, &ecs.aws, Arc::clone(&deps.aws), Arc::clone(&deps.metrics));
    let mut changes = deps.engine.as_ref().map(|e| e.subscribe().changes);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One warning per source and distinct error, again only if it persists for 5 minutes.
    let warn: std::collections::HashMap<Source, crate::ratelimit::RateLimit> =
        Source::ALL.into_iter().map(|s| (s, crate::ratelimit::RateLimit::new(1, 300))).collect();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            true = changed(&mut changes) => {
                tokio::time::sleep(DEBOUNCE).await;
                if let Some(rx) = changes.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
        }
        let once = async {
            local.refresh_identity().await;
            identity_from_imds(&mut local, &deps.imds).await;
            let now = Instant::now();
            let tasks = local.observe(now).await;
            let id = local.identity.clone();
            let asked = control
                .describe(
                    id.cluster.as_deref(),
                    id.container_instance_arn.as_deref(),
                    |registered| {
                        let t = tasks.as_deref().filter(|_| local.complete())?;
                        Some(collector::local_figures(t, registered))
                    },
                    now,
                )
                .await;
            match asked {
                Some(Ok(())) => local.source_ok(Source::EcsApi, now),
                Some(Err(e)) => local.source_failed(Source::EcsApi, e),
                None => {}
            }
            control.lookup_group(id.instance_id.as_deref(), now).await;
            local.identity.auto_scaling_group = control.group.clone();
            let mut report = local.report(
                tasks.as_deref(),
                control.registered,
                control.status.clone(),
                control.drift.clone(),
                control.protection.protected,
                now,
                SystemTime::now(),
            );
            let work = Local::work(&report, tasks.is_some());
            control.protect(id.instance_id.as_deref(), work, now).await;
            report.protected = control.protection.protected;
            control.put_attributes(&report, now).await;
            for s in report.sources.iter().filter(|s| !s.up) {
                let limit = &warn[&s.source];
                if let Some(n) = limit.check_key(s.error.as_deref().unwrap_or("")) {
                    tracing::warn!(
                        source = s.source.as_str(),
                        error = s.error.as_deref().unwrap_or(""),
                        suppressed = n,
                        "capacity: a source did not answer; its figures are not published as current"
                    );
                }
            }
            latest.set(report);
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = once => {}
        }
    }
    Ok(())
}

/// EMF: one batch of events per `interval` on its own fixed schedule — never on the extra
/// ticks after container changes, since a second event from this host in one period would
/// count it twice in the cluster's `Sum`. A report older than one interval, or not fresh,
/// is skipped (stale figures are never published as current). No retries: a retry after a
/// lost answer would store the events twice; the next interval is the retry.
async fn emf_loop(
    cfg: CapacityConfig,
    ecs: EcsConfig,
    aws: Arc<crate::aws::Aws>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), CapacityError> {
    let latest = Arc::clone(&metrics.capacity);
    let mut publisher: Option<emf::EmfPublisher> = None;
    let mut left_out = emf::LeftOutLog::default();
    let warn = crate::ratelimit::RateLimit::new(1, 300);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the collector's first report comes a moment later.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let Some(report) = latest.get() else { continue };
        let age_ms = collector::unix_ms(SystemTime::now()).saturating_sub(report.computed_at_ms);
        let skip = |why: &str| {
            if let Some(n) = warn.check_key(why) {
                tracing::warn!(reason = why, suppressed = n, "capacity: EMF interval skipped");
            }
        };
        if age_ms > cfg.interval.as_millis() as u64 + 1000 {
            skip("the last report is older than the interval");
            continue;
        }
        let encoded = match emf::encode(&report, &cfg.publish) {
            Ok(e) => e,
            Err(e) => {
                skip(&e.to_string());
                continue;
            }
        };
        left_out.note(&encoded.left_out);
        let Some(stream) = report.identity.instance_id.clone() else {
            skip("the instance id is not known yet (IMDS)");
            continue;
        };
        if publisher.is_none() {
            let made = emf::EmfPublisher::new(&aws, &ecs.aws, &cfg.publish.emf_log_group, &stream);
            match tokio::select! { _ = shutdown.cancelled() => return Ok(()), p = made => p } {
                Ok(p) => publisher = Some(p),
                Err(e) => {
                    skip(&e.to_string());
                    continue;
                }
            }
        }
        let Some(p) = &publisher else { continue };
        let sent = p.publish(encoded.events, report.computed_at_ms as i64);
        let r = tokio::select! { _ = shutdown.cancelled() => return Ok(()), r = sent => r };
        match r {
            Ok(()) => metrics.api_call("PutLogEvents", "ok"),
            Err(e) => {
                let throttled = e.code().is_some_and(|c| c.contains("Throttl"));
                metrics.api_call("PutLogEvents", if throttled { "throttled" } else { "error" });
                skip(&e.to_string());
            }
        }
    }
}

/// `true` when a container started, stopped or was removed; pends for ever without Docker.
pub(crate) async fn changed(
    rx: &mut Option<tokio::sync::broadcast::Receiver<docker::Change>>,
) -> bool {
    let Some(rx) = rx else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(
                docker::Change::Started { .. }
                | docker::Change::Died(_)
                | docker::Change::Destroyed(_),
            )
            | Ok(docker::Change::Listed(_))
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return std::future::pending().await;
            }
        }
    }
}

/// Instance id, zone and type, until IMDS has given them (off EC2: never; reported).
async fn identity_from_imds(local: &mut Local, imds: &Imds) {
    if local.identity.instance_id.is_some() || !imds.is_enabled() {
        return;
    }
    let read = async {
        let id = imds.require(imds::path::INSTANCE_ID).await?;
        let az = imds.get(imds::path::AVAILABILITY_ZONE).await?;
        let ty = imds.get(imds::path::INSTANCE_TYPE).await?;
        Ok::<_, imds::ImdsError>((id, az, ty))
    };
    match read.await {
        Ok((id, az, ty)) => {
            local.identity.instance_id = Some(id);
            local.identity.availability_zone = az;
            local.identity.instance_type = ty;
            local.source_ok(Source::Imds, Instant::now());
        }
        Err(e) => local.source_failed(Source::Imds, e.to_string()),
    }
}
