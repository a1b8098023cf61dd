//! The AWS half of capacity: the few calls it makes, each proportional to start-ups and
//! changes, never to time or to task starts — except the optional cross-check, at most one
//! per `ecs_api_interval` (default 1 h, jittered ±10%).
//!
//! - `DescribeContainerInstances` once the agent has registered the instance: the
//!   registered resources (they do not change while the agent runs), ECS's status, and the
//!   cross-check of the local figures against `remainingResources` and the task counts.
//!   Retried with a backoff (5 s doubling to 5 min, longer on throttling) until it answers.
//! - `DescribeAutoScalingInstances` once (the group's name and the protection it has now),
//!   when scale-in protection is on or a dimension names the group.
//! - `SetInstanceProtection` only when `protection::decide` asks for a change.
//! - `PutAttributes` (`[capacity.publish] ecs_attributes`) only when a schedulable count
//!   changed, and at most once per `interval` (changes in between are coalesced).
//!
//! The SDK retries a throttled or failed call itself (standard mode, with backoff); what
//! reaches here is the outcome, counted in `berth_aws_api_calls_total`.

use super::compute::Resources;
use super::protection;
use super::report::Drift;
use crate::autoscaling::AutoScaling;
use crate::aws::api::{ApiError, ApiErrorKind};
use crate::aws::Aws;
use crate::backoff::Backoff;
use crate::config::{AwsAuth, CapacityConfig, Dimension};
use crate::ecs::api::{ContainerInstance, EcsApi};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the local view says, for the cross-check: free resources and every task's state
/// (daemons included: ECS counts them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFigures {
    pub free: Resources,
    /// Tasks holding resources whose desired status is RUNNING (ECS's `runningTasksCount`
    /// counts by desired status).
    pub running: i64,
    /// Tasks holding resources not yet RUNNING (`pendingTasksCount`).
    pub pending: i64,
}

/// The cross-check: local minus ECS, and whether any difference exceeds the tolerance.
/// Pure.
pub fn drift(
    local: LocalFigures,
    ecs: &ContainerInstance,
    tolerance: Resources,
    checked_at_ms: u64,
) -> Drift {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    let cpu = d(local.free.cpu_units, ecs.remaining.cpu_units);
    let mem = d(local.free.memory_mib, ecs.remaining.memory_mib);
    let running = local.running - ecs.running_tasks;
    let pending = local.pending - ecs.pending_tasks;
    let drifted = cpu.unsigned_abs() > tolerance.cpu_units
        || mem.unsigned_abs() > tolerance.memory_mib
        || running != 0
        || pending != 0;
    Drift {
        checked_at_ms,
        cpu_units: cpu,
        memory_mib: mem,
        running_tasks: running,
        pending_tasks: pending,
        status: ecs.status.clone(),
        agent_connected: ecs.agent_connected,
        drifted,
    }
}

/// `interval` ± 10%, from `seed` (deterministic in tests).
pub fn jittered(interval: Duration, seed: u64) -> Duration {
    let tenth = interval.as_millis() as u64 / 10;
    if tenth == 0 {
        return interval;
    }
    let offset = seed % (2 * tenth + 1);
    Duration::from_millis(interval.as_millis() as u64 - tenth + offset)
}

/// The clients, made once the AWS configuration loads (it needs a region).
struct Clients {
    ecs: EcsApi,
    asg: AutoScaling,
}

pub struct Control {
    aws: Arc<Aws>,
    auth: AwsAuth,
    metrics: Arc<Metrics>,
    clients: Option<Clients>,
    api_interval: Option<Duration>,
    tolerance: Resources,
    wants_group: bool,
    protect: bool,
    idle_grace: Duration,
    /// What the control plane said.
    pub registered: Option<Resources>,
    pub status: Option<String>,
    pub drift: Option<Drift>,
    pub group: Option<String>,
    group_known: bool,
    pub protection: protection::State,
    /// The next cross-check (after the first answer).
    next_check: Option<Instant>,
    /// The earliest time a failed call is tried again.
    retry_at: Option<Instant>,
    backoff: Backoff,
    group_retry_at: Option<Instant>,
    group_backoff: Backoff,
    last_drift_logged: Option<(i64, i64, i64, i64, String)>,
    /// ECS's answer, kept until a tick has the complete local view to compare it with (at
    /// start Docker may not have answered yet).
    unchecked: Option<(ContainerInstance, u64)>,
    attributes: bool,
    interval: Duration,
    /// The attributes as last put, and when.
    put: Option<(Vec<(String, String)>, Instant)>,
}

/// The attributes of a report: `berth.schedulable.<shape>` = the count, for the shapes whose
/// count is known. Pure.
pub fn attributes(report: &super::report::Report) -> Vec<(String, String)> {
    report
        .shapes
        .iter()
        .filter_map(|s| {
            s.schedulable.map(|n| (format!("berth.schedulable.{}", s.name), n.to_string()))
        })
        .collect()
}

/// Whether to put `want` now: it differs from what was put, and the last put is at least
/// `interval` ago. Pure.
pub fn attributes_due(
    put: Option<&(Vec<(String, String)>, Instant)>,
    want: &[(String, String)],
    interval: Duration,
    now: Instant,
) -> bool {
    match put {
        None => !want.is_empty(),
        Some((last, at)) => {
            last.as_slice() != want && now.saturating_duration_since(*at) >= interval
        }
    }
}

impl Control {
    pub fn new(
        cfg: &CapacityConfig,
        auth: &AwsAuth,
        aws: Arc<Aws>,
        metrics: Arc<Metrics>,
    ) -> Control {
        let wants_group = cfg.scale_in_protection.enabled
            || (cfg.publish.cloudwatch_emf
                && cfg
                    .publish
                    .dimensions
                    .iter()
                    .flatten()
                    .any(|d| *d == Dimension::AutoScalingGroupName));
        Control {
            aws,
            auth: auth.clone(),
            metrics,
            clients: None,
            api_interval: cfg.ecs_api_interval,
            tolerance: Resources {
                cpu_units: cfg.drift_tolerance_cpu_units,
                memory_mib: cfg.drift_tolerance_memory_mib,
            },
            wants_group,
            protect: cfg.scale_in_protection.enabled,
            idle_grace: cfg.scale_in_protection.idle_grace,
            registered: None,
            status: None,
            drift: None,
            group: None,
            group_known: false,
            protection: protection::State::default(),
            next_check: None,
            retry_at: None,
            backoff: Backoff::from_entropy(RETRY_MIN, RETRY_MAX),
            group_retry_at: None,
            group_backoff: Backoff::from_entropy(RETRY_MIN, RETRY_MAX),
            last_drift_logged: None,
            unchecked: None,
            attributes: cfg.publish.ecs_attributes,
            interval: cfg.interval,
            put: None,
        }
    }

    fn count<T>(&self, action: &'static str, r: &Result<T, ApiError>) {
        self.metrics.api_outcome(action, r);
    }

    async fn clients(&mut self) -> Result<&Clients, String> {
        if self.clients.is_none() {
            let c =
                self.aws.load(&self.auth).await.map_err(|e| format!("AWS configuration: {e}"))?;
            self.clients = Some(Clients { ecs: EcsApi::new(&c), asg: AutoScaling::new(&c) });
        }
        self.clients.as_ref().ok_or_else(|| "AWS configuration: not loaded".to_string())
    }

    /// The registered resources and the cross-check, when due. `local` is this tick's
    /// view, `None` when incomplete (the agent or Docker did not answer, a container not
    /// sized yet): the comparison then waits for a tick that has it. The outcome when a
    /// call was made (or could not be: no AWS configuration), `None` when none was due.
    pub async fn describe(
        &mut self,
        cluster: Option<&str>,
        arn: Option<&str>,
        local: impl FnOnce(Resources) -> Option<LocalFigures>,
        now: Instant,
    ) -> Option<Result<(), String>> {
        let (Some(cluster), Some(arn)) = (cluster, arn) else { return None };
        if let Some((ci, at)) = self.unchecked.take() {
            match local(ci.registered) {
                Some(l) => self.compare(l, &ci, at),
                None => self.unchecked = Some((ci, at)),
            }
            return None;
        }
        let due = match (self.registered, self.next_check) {
            (None, _) => true,
            (Some(_), Some(at)) => now >= at,
            (Some(_), None) => false,
        };
        if !due || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let clients = match self.clients().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let r = clients.ecs.describe_container_instance(cluster, arn).await;
        self.count("DescribeContainerInstances", &r);
        match r {
            Ok(ci) => {
                self.retry_at = None;
                self.backoff.reset();
                if self.registered.is_none() {
                    tracing::info!(
                        cpu_units = ci.registered.cpu_units,
                        memory_mib = ci.registered.memory_mib,
                        status = %ci.status,
                        "capacity: registered resources of this container instance"
                    );
                }
                self.registered = Some(ci.registered);
                self.status = Some(ci.status.clone());
                self.next_check =
                    self.api_interval.map(|i| now + jittered(i, rand::random::<u64>()));
                let at = super::collector::unix_ms(SystemTime::now());
                match local(ci.registered) {
                    Some(l) => self.compare(l, &ci, at),
                    None => self.unchecked = Some((ci, at)),
                }
                Some(Ok(()))
            }
            Err(e) => {
                let delay = if e.kind == ApiErrorKind::Throttled {
                    // Throttled after the SDK's own retries: the account's budget is spent
                    // (shared with the agent and deployments): step well back.
                    self.backoff.next_delay().max(RETRY_MAX / 2)
                } else {
                    self.backoff.next_delay()
                };
                self.retry_at = Some(now + delay);
                Some(Err(e.to_string()))
            }
        }
    }

    /// The cross-check itself; a drift is logged once per change.
    fn compare(&mut self, local: LocalFigures, ci: &ContainerInstance, at: u64) {
        let d = drift(local, ci, self.tolerance, at);
        let key = (d.cpu_units, d.memory_mib, d.running_tasks, d.pending_tasks, d.status.clone());
        if d.drifted && self.last_drift_logged.as_ref() != Some(&key) {
            tracing::warn!(
                cpu_units = d.cpu_units,
                memory_mib = d.memory_mib,
                running_tasks = d.running_tasks,
                pending_tasks = d.pending_tasks,
                status = %d.status,
                "capacity: the local figures differ from ECS's (local minus ECS)"
            );
            self.last_drift_logged = Some(key);
        } else if !d.drifted {
            self.last_drift_logged = None;
        }
        self.drift = Some(d);
    }

    /// The group's name, looked up once (with its current protection).
    pub async fn lookup_group(&mut self, instance_id: Option<&str>, now: Instant) {
        let Some(id) = instance_id else { return };
        if !self.wants_group || self.group_known || self.group_retry_at.is_some_and(|t| now < t) {
            return;
        }
        let Ok(clients) = self.clients().await else { return };
        let r = clients.asg.describe_instance(id).await;
        self.count("DescribeAutoScalingInstances", &r);
        match r {
            Ok(found) => {
                self.group_known = true;
                match found {
                    Some(i) => {
                        tracing::info!(group = %i.group, protected = i.protected, "capacity: this instance's Auto Scaling group");
                        self.protection.protected = Some(i.protected);
                        self.group = Some(i.group);
                    }
                    None => tracing::warn!(
                        instance = id,
                        "capacity: this instance is in no Auto Scaling group: no scale-in protection, no AutoScalingGroupName dimension"
                    ),
                }
            }
            Err(e) => {
                self.group_retry_at = Some(now + self.group_backoff.next_delay());
                tracing::warn!(error = %e, "capacity: cannot look up this instance's Auto Scaling group");
            }
        }
    }

    /// The schedulable counts as ECS custom attributes, when they changed (see the module
    /// doc). Only fresh reports: a stale count is never put.
    pub async fn put_attributes(&mut self, report: &super::report::Report, now: Instant) {
        if !self.attributes || !report.fresh {
            return;
        }
        let (Some(cluster), Some(arn)) =
            (report.identity.cluster.clone(), report.identity.container_instance_arn.clone())
        else {
            return;
        };
        let want = attributes(report);
        if !attributes_due(self.put.as_ref(), &want, self.interval, now) {
            return;
        }
        let Ok(clients) = self.clients().await else { return };
        let r = clients.ecs.put_attributes(&cluster, &arn, &want).await;
        self.count("PutAttributes", &r);
        match r {
            Ok(()) => self.put = Some((want, now)),
            Err(e) => {
                // Tried again at the next tick due; the interval spaces the tries.
                self.put = self.put.take().map(|(last, _)| (last, now));
                tracing::warn!(error = %e, "capacity: cannot put the ECS attributes");
            }
        }
    }

    /// Decide and, on a change, set scale-in protection. `work`: non-daemon tasks running
    /// or pending (`None`: the agent did not answer).
    pub async fn protect(&mut self, instance_id: Option<&str>, work: Option<u32>, now: Instant) {
        if !self.protect {
            return;
        }
        let (Some(id), Some(group)) = (instance_id, self.group.clone()) else { return };
        let draining = self.status.as_deref() == Some("DRAINING");
        let obs = protection::Observation { work, draining, now };
        let Some(want) = protection::decide(&mut self.protection, obs, self.idle_grace) else {
            return;
        };
        let Ok(clients) = self.clients().await else { return };
        let r = clients.asg.set_protection(&group, id, want).await;
        self.count("SetInstanceProtection", &r);
        match r {
            Ok(()) => {
                tracing::info!(protected = want, group = %group, work = ?work, "capacity: scale-in protection set");
                self.protection.protected = Some(want);
            }
            // Asked again at the next tick (the decision stays pending until it succeeds).
            Err(e) => {
                tracing::warn!(error = %e, protected = want, "capacity: cannot set scale-in protection")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(remaining: (u64, u64), running: i64, pending: i64) -> ContainerInstance {
        ContainerInstance {
            registered: Resources { cpu_units: 2048, memory_mib: 7680 },
            remaining: Resources { cpu_units: remaining.0, memory_mib: remaining.1 },
            running_tasks: running,
            pending_tasks: pending,
            status: "ACTIVE".into(),
            agent_connected: true,
            ec2_instance_id: Some("i-1".into()),
        }
    }

    #[test]
    fn drift_is_local_minus_ecs_beyond_the_tolerance() {
        let local = |c, m, r, p| LocalFigures {
            free: Resources { cpu_units: c, memory_mib: m },
            running: r,
            pending: p,
        };
        let tol = Resources { cpu_units: 0, memory_mib: 0 };
        let d = drift(local(1024, 5632, 2, 0), &ci((1024, 5632), 2, 0), tol, 7);
        assert!(!d.drifted);
        assert_eq!((d.cpu_units, d.memory_mib, d.running_tasks, d.pending_tasks), (0, 0, 0, 0));
        let d = drift(local(1024, 5632, 2, 0), &ci((512, 5632), 3, 0), tol, 7);
        assert!(d.drifted);
        assert_eq!((d.cpu_units, d.running_tasks), (512, -1));
        let loose = Resources { cpu_units: 512, memory_mib: 100 };
        assert!(!drift(local(1024, 5600, 2, 0), &ci((512, 5632), 2, 0), loose, 7).drifted);
        assert!(drift(local(1024, 5500, 2, 0), &ci((512, 5632), 2, 0), loose, 7).drifted);
        assert!(
            drift(local(1024, 5632, 2, 1), &ci((1024, 5632), 2, 0), loose, 7).drifted,
            "counts must match"
        );
    }

    #[test]
    fn attributes_are_put_on_a_change_at_most_once_per_interval() {
        let t0 = Instant::now();
        let i = Duration::from_secs(60);
        let a = |n: &str| vec![("berth.schedulable.worker".to_string(), n.to_string())];
        assert!(attributes_due(None, &a("3"), i, t0), "the first");
        assert!(!attributes_due(None, &[], i, t0), "nothing to put");
        let put = (a("3"), t0);
        assert!(!attributes_due(Some(&put), &a("3"), i, t0 + i * 5), "unchanged: never");
        assert!(!attributes_due(Some(&put), &a("2"), i, t0 + i / 2), "changed, but too soon");
        assert!(attributes_due(Some(&put), &a("2"), i, t0 + i), "changed, an interval later");
    }

    #[test]
    fn the_cross_check_interval_is_jittered_within_a_tenth() {
        let h = Duration::from_secs(3600);
        for seed in [0u64, 1, 359_999, 360_000, 720_000, u64::MAX] {
            let j = jittered(h, seed);
            assert!(j >= Duration::from_secs(3240) && j <= Duration::from_secs(3960), "{j:?}");
        }
        assert_eq!(jittered(h, 0), Duration::from_secs(3240));
        assert_eq!(jittered(Duration::from_millis(5), 3), Duration::from_millis(5));
    }
}
