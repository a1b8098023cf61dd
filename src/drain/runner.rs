//! The drain's one task: watch the triggers, and while a drain is in progress apply the
//! machine's decisions (`machine::decide`) with the ECS and Auto Scaling clients, the local
//! view of the tasks and the buffer's one answer ("has every sink delivered up to here?"),
//! persisting the state after every step.
//!
//! Beside the log path: nothing here is awaited by an input or a sink. Every call has a
//! timeout (the AWS clients' operation timeout, the agent's, IMDS's); a call that fails is
//! retried with backoff on a later tick, never in a tight loop. Requests (`berth drain`, the
//! shutdown) are answered between ticks.

use super::machine::{self, Action, Observation};
use super::plan::{self, Bound};
use super::state::{self, Completion, DrainState, Hook, Outcome, Step, Trigger};
use super::triggers;
use crate::autoscaling::{AutoScaling, LifecycleHook};
use crate::aws::api::{ApiError, ApiErrorKind};
use crate::aws::Aws;
use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::capacity::collector::unix_ms;
use crate::capacity::compute::holds_resources;
use crate::config::{DrainConfig, EcsConfig, LifecycleResult, Watch};
use crate::docker;
use crate::ecs::agent::{Agent, Task};
use crate::ecs::api::EcsApi;
use crate::ecs::daemons::Daemons;
use crate::imds::{self, Imds};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// After the last work container exited, how long Docker's `fluentd` driver is given to
/// send its last lines before the buffer's head is marked: the driver copies a container's
/// output until the pipe's end and closes its connection after the container exited.
pub const DRIVER_DRAIN: Duration = Duration::from_secs(3);
/// How often, at most, the ECS API is asked to confirm that no work is left.
pub const CONFIRM_EVERY: Duration = Duration::from_secs(10);
/// The hook ECS managed instance draining puts on a capacity provider's group: a second
/// drainer on the same instances.
pub const MANAGED_DRAINING_HOOK: &str = "ecs-managed-draining-termination-hook";
/// A request waits at most this long for the runner (busy with a slow AWS call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// What the drain runs on: the process's shared pieces.
pub struct Deps {
    pub engine: Option<Arc<docker::Engine>>,
    pub imds: Imds,
    pub aws: Arc<Aws>,
    pub metrics: Arc<Metrics>,
    pub buffer: Buffer,
}

/// What the admin endpoint and the shutdown ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `berth drain`: start an operator's drain (if none is in progress), with an optional
    /// deadline from now.
    Start { deadline: Option<Duration> },
    /// `berth drain --abort`.
    Abort,
    /// SIGTERM: is a drain in progress? (With `drain_on_shutdown`, one is started.)
    Shutdown,
}

/// One sink's undelivered events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkLag {
    pub sink: String,
    pub lag_records: u64,
}

/// What `GET /v1/drain` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct View {
    pub enabled: bool,
    pub watching: Vec<&'static str>,
    /// A drain is in progress.
    pub active: bool,
    /// The persisted state of the current or last drain.
    pub drain: Option<DrainState>,
    /// Non-daemon tasks still on the host; `None`: not known (the agent did not answer).
    pub remaining_tasks: Option<u32>,
    /// Their ARNs.
    pub tasks: Vec<String>,
    /// Seconds to the deadline (negative: past it).
    pub deadline_in_seconds: Option<i64>,
    pub heartbeat_every_seconds: Option<u64>,
    /// Every sink has delivered up to the flush mark.
    pub flushed: Option<bool>,
    pub sinks: Vec<SinkLag>,
    /// The ECS API agrees no work is left (`None`: not asked yet).
    pub ecs_confirms_no_work: Option<bool>,
    /// The last problem (a failed call, an unreadable notice), cleared by the next success.
    pub error: Option<String>,
    /// What would keep a drain from working, found at start.
    pub preflight: Vec<String>,
    /// A message for the requester (`berth drain` when one is already in progress, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The runner's address: requests in, views out.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<(Request, oneshot::Sender<Result<View, String>>)>,
    view: watch::Receiver<View>,
}

impl Handle {
    pub async fn request(&self, r: Request) -> Result<View, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((r, tx)).await.map_err(|_| "the drain is not running".to_string())?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the drain stopped before answering".into()),
            Err(_) => Err("the drain did not answer in time (a slow AWS call?)".into()),
        }
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Until no drain is in progress.
    pub async fn until_idle(&self) {
        let mut rx = self.view.clone();
        let _ = rx.wait_for(|v| !v.active).await;
    }
}

/// The tasks of one agent answer that are work: not daemons, and holding resources (not
/// `STOPPED`) or with a container Docker still runs. Also how many daemon tasks still hold
/// resources (ECS counts them too). Pure.
pub fn work_tasks(
    tasks: &[Task],
    is_daemon: impl Fn(&str) -> bool,
    running: impl Fn(&str) -> bool,
) -> (Vec<String>, u32) {
    let mut work = Vec::new();
    let mut daemons = 0;
    for t in tasks {
        let alive = holds_resources(&t.known_status)
            || t.containers.iter().any(|c| !c.docker_id.is_empty() && running(&c.docker_id));
        if !alive {
            continue;
        }
        if is_daemon(&t.family) {
            daemons += 1;
        } else {
            work.push(t.arn.clone());
        }
    }
    (work, daemons)
}

/// The hook to keep alive among the group's terminating hooks: the configured one, else the
/// first that is not ECS managed draining's. Pure.
pub fn choose_hook<'a>(
    hooks: &'a [LifecycleHook],
    configured: Option<&str>,
) -> Option<&'a LifecycleHook> {
    match configured {
        Some(name) => hooks.iter().find(|h| h.name == name),
        None => hooks.iter().find(|h| h.name != MANAGED_DRAINING_HOOK),
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Start the runner on `tracker`, stopping with `stop`.
pub fn spawn(
    cfg: DrainConfig,
    ecs: EcsConfig,
    deps: Deps,
    stop: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Handle, crate::ecs::agent::AgentError> {
    let agent = Agent::new(&ecs.agent_url)?;
    let dir = deps.buffer.path().to_path_buf();
    let (tx, rx) = mpsc::channel(8);
    let view = View {
        enabled: true,
        watching: cfg.watch.iter().map(|w| w.as_str()).collect(),
        ..View::default()
    };
    let (view_tx, view_rx) = watch::channel(view);
    let mut r = Runner {
        daemons: Daemons::new(&ecs.daemon_task_families),
        cfg,
        ecs,
        deps,
        agent,
        dir,
        clients: None,
        state: None,
        broken: None,
        instance_id: None,
        lifecycle_terminated: false,
        zero_since: None,
        confirmed: None,
        confirmed_at: None,
        work: None,
        work_arns: Vec::new(),
        retry_at: None,
        backoff: Backoff::from_entropy(Duration::from_secs(2), Duration::from_secs(60)),
        dirty: false,
        error: None,
        preflight: None,
        warn: RateLimit::new(1, 300),
        view_tx,
    };
    r.load();
    tracker.spawn(async move { r.run(rx, stop).await });
    Ok(Handle { tx, view: view_rx })
}

struct Clients {
    ecs: EcsApi,
    asg: AutoScaling,
}

struct Runner {
    cfg: DrainConfig,
    ecs: EcsConfig,
    deps: Deps,
    agent: Agent,
    daemons: Daemons,
    dir: PathBuf,
    clients: Option<Clients>,
    state: Option<DrainState>,
    /// The state file cannot be read: nothing is done (it could complete an action twice
    /// or skip one) until an operator moves it away.
    broken: Option<String>,
    instance_id: Option<String>,
    /// IMDS said `Terminated` during this run: the lifecycle action is to be kept alive,
    /// whatever started the drain.
    lifecycle_terminated: bool,
    /// Since when no work task is seen.
    zero_since: Option<Instant>,
    confirmed: Option<bool>,
    confirmed_at: Option<Instant>,
    work: Option<u32>,
    work_arns: Vec<String>,
    /// AWS calls wait until then after a failure.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The state changed but could not be stored: stored again before the next call.
    dirty: bool,
    error: Option<String>,
    preflight: Option<Vec<String>>,
    warn: RateLimit,
    view_tx: watch::Sender<View>,
}

impl Runner {
    fn load(&mut self) {
        match state::load(&self.dir) {
            Ok(Some(s)) if s.active() && s.trigger == Trigger::Shutdown => {
                // A drain on shutdown belongs to the stop that started it; berth started
                // again means the stop is over.
                tracing::warn!(
                    "drain: a drain on shutdown was still in progress when berth stopped; not resumed (the instance stays DRAINING until set ACTIVE)"
                );
                let mut s = s;
                s.step = Step::Done;
                s.outcome = Some(Outcome::Aborted);
                s.done_ms = Some(unix_ms(SystemTime::now()));
                self.state = Some(s);
                self.persist();
            }
            Ok(Some(s)) => {
                if s.active() {
                    tracing::info!(
                        trigger = ?s.trigger,
                        step = ?s.step,
                        heartbeats = s.heartbeats,
                        "drain: resuming the drain in progress"
                    );
                }
                self.state = Some(s);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "drain: the state file cannot be read; draining is off until it is moved away");
                self.broken = Some(e.to_string());
            }
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<(Request, oneshot::Sender<Result<View, String>>)>,
        stop: CancellationToken,
    ) {
        let mut changes = self.deps.engine.as_ref().map(|e| e.subscribe().changes);
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut answer = None;
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                req = rx.recv() => match req {
                    Some(r) => answer = Some(r),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep(self.heartbeat_in()) => {}
                true = crate::capacity::changed(&mut changes) => {}
            }
            let once = async {
                if let Some((req, reply)) = answer {
                    let r = self.handle(req).await;
                    self.publish(None);
                    let _ = reply.send(r.map(|note| self.view(note)));
                }
                self.tick().await;
                self.publish(None);
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = once => {}
            }
        }
    }

    /// Until the next heartbeat is due (on time, not at the next poll); a day when none is.
    fn heartbeat_in(&self) -> Duration {
        let far = Duration::from_secs(86_400);
        let Some(s) = self.state.as_ref().filter(|s| s.active() && s.may_complete()) else {
            return far;
        };
        let (Some(h), Some(last)) = (&s.hook, s.last_heartbeat_ms) else { return far };
        let every = plan::heartbeat_every(
            Duration::from_millis(h.heartbeat_timeout_ms),
            self.cfg.heartbeat_fraction,
        );
        let due = at(last) + every;
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        // After a failed call the backoff decides; a due heartbeat is not a busy loop.
        let retry =
            self.retry_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
        wait.max(retry).max(Duration::from_millis(500))
    }

    async fn clients(&mut self) -> Result<&Clients, String> {
        if self.clients.is_none() {
            let c = self
                .deps
                .aws
                .load(&self.ecs.aws)
                .await
                .map_err(|e| format!("AWS configuration: {e}"))?;
            self.clients = Some(Clients { ecs: EcsApi::new(&c), asg: AutoScaling::new(&c) });
        }
        self.clients.as_ref().ok_or_else(|| "AWS configuration: not loaded".to_string())
    }

    fn persist(&mut self) {
        let Some(s) = &self.state else { return };
        match state::store(&self.dir, s) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                self.dirty = true;
                tracing::error!(error = %e, "drain: cannot store the state (retried before the next call)");
            }
        }
    }

    fn failed(&mut self, what: &str, e: String) {
        let delay = self.backoff.next_delay().max(Duration::from_secs(1));
        self.retry_at = Some(Instant::now() + delay);
        if let Some(n) = self.warn.check_key(what) {
            tracing::warn!(error = %e, retry_in = ?delay, suppressed = n, "drain: {what} failed");
        }
        self.error = Some(format!("{what}: {e}"));
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
        self.error = None;
    }

    /// `Ok(note)` for the requester.
    async fn handle(&mut self, req: Request) -> Result<Option<String>, String> {
        if let Some(b) = &self.broken {
            return Err(format!("draining is off: {b}"));
        }
        let active = self.state.as_ref().is_some_and(DrainState::active);
        match req {
            Request::Start { .. } | Request::Shutdown if active => {
                Ok(Some("a drain is already in progress".into()))
            }
            Request::Start { deadline } => {
                let requested = deadline.map(|d| SystemTime::now() + d);
                self.begin(Trigger::Operator, None, requested).await;
                Ok(None)
            }
            Request::Shutdown if self.cfg.drain_on_shutdown => {
                self.begin(Trigger::Shutdown, None, None).await;
                Ok(None)
            }
            Request::Shutdown => Ok(None),
            Request::Abort if !active => Err("no drain is in progress".into()),
            Request::Abort => {
                self.abort().await;
                Ok(None)
            }
        }
    }

    async fn abort(&mut self) {
        let Some(mut s) = self.state.clone() else { return };
        let undo = matches!(s.trigger, Trigger::Operator | Trigger::Shutdown) && s.draining_set;
        s.step = Step::Done;
        s.outcome = Some(Outcome::Aborted);
        s.done_ms = Some(unix_ms(SystemTime::now()));
        tracing::warn!(trigger = ?s.trigger, "drain: aborted by an operator; no more heartbeats, the lifecycle action (if any) is not completed by berth");
        self.state = Some(s.clone());
        self.persist();
        if let (true, Some(cluster), Some(arn)) =
            (undo, s.cluster.as_deref(), s.container_instance_arn.as_deref())
        {
            let r = match self.clients().await {
                Ok(c) => c.ecs.set_active(cluster, arn).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match r {
                Ok(status) => {
                    self.deps.metrics.api_call("UpdateContainerInstancesState", "ok");
                    tracing::info!(status, "drain: the container instance is ACTIVE again")
                }
                Err(e) => {
                    self.deps.metrics.api_call("UpdateContainerInstancesState", "error");
                    tracing::error!(error = %e, "drain: cannot set the container instance ACTIVE again; set it yourself");
                    self.error = Some(e);
                }
            }
        }
    }

    /// A new drain (replacing a finished one).
    async fn begin(
        &mut self,
        trigger: Trigger,
        spot: Option<plan::SpotNotice>,
        requested: Option<SystemTime>,
    ) {
        let now = SystemTime::now();
        let bound = spot.as_ref().map_or(Bound::None, |n| Bound::Spot(n.time));
        let deadline = plan::deadline(now, bound, self.cfg.max_duration, requested);
        let mut s = DrainState::new(trigger, unix_ms(now), unix_ms(deadline));
        s.instance_id = self.instance_id.clone();
        tracing::info!(
            trigger = ?s.trigger,
            deadline_in = ?deadline.duration_since(now).unwrap_or_default(),
            "drain: started"
        );
        self.state = Some(s);
        self.zero_since = None;
        self.confirmed = None;
        self.confirmed_at = None;
        self.retry_at = None;
        self.persist();
    }

    async fn instance_id(&mut self) -> Option<String> {
        if self.instance_id.is_none() && self.deps.imds.is_enabled() {
            match self.deps.imds.require(imds::path::INSTANCE_ID).await {
                Ok(id) => {
                    let id = id.trim().to_string();
                    self.forget_foreign(&id);
                    self.instance_id = Some(id);
                }
                Err(e) => self.error = Some(format!("IMDS: {e}")),
            }
        }
        self.instance_id.clone()
    }

    /// A state written on another instance (a data volume or disk image copied between
    /// hosts) is not this host's drain: it is set aside, never resumed or completed here.
    fn forget_foreign(&mut self, id: &str) {
        let Some(theirs) = self.state.as_ref().and_then(|s| s.instance_id.clone()) else { return };
        if theirs == id {
            return;
        }
        tracing::warn!(state_instance = theirs, instance = id, "drain: the drain state is another instance's (a copied disk?); set aside as drain.json.foreign");
        let (from, to) =
            (self.dir.join(state::FILE), self.dir.join(format!("{}.foreign", state::FILE)));
        if let Err(e) = std::fs::rename(&from, &to) {
            tracing::error!(error = %e, "drain: cannot set the other instance's state aside; draining is off");
            self.broken = Some(format!(
                "{}: another instance's drain state ({theirs}); move it away",
                from.display()
            ));
            return;
        }
        self.state = None;
    }

    /// Once, at the first tick: what would keep a drain from working.
    async fn preflight(&mut self) {
        if self.preflight.is_some() {
            return;
        }
        let mut found = Vec::new();
        // The one read of the id (it also sets a foreign state aside).
        let id = self.instance_id().await;
        if id.is_none() {
            found.push(if self.deps.imds.is_enabled() {
                let e = self.error.as_deref().unwrap_or("").trim_start_matches("IMDS: ");
                format!("instance metadata (IMDS) unreachable: {e} (in a container, the instance's metadata hop limit must be at least 2); no trigger but `berth drain` can start a drain")
            } else {
                "instance metadata (IMDS) is disabled: no trigger but `berth drain` can start a drain".into()
            });
        }
        if let Err(e) = self.agent.metadata().await {
            found.push(format!("the ECS agent's introspection API does not answer ({e}): the drain cannot set DRAINING or see the tasks"));
        }
        if let (Some(id), true) = (id, self.cfg.watch.contains(&Watch::AsgLifecycle)) {
            found.extend(self.preflight_group(&id).await);
        }
        for f in &found {
            tracing::warn!("drain preflight: {f}");
        }
        self.preflight = Some(found);
    }

    async fn preflight_group(&mut self, id: &str) -> Vec<String> {
        let mut found = Vec::new();
        let configured_group = self.cfg.auto_scaling_group_name.clone();
        let configured_hook = self.cfg.lifecycle_hook_name.clone();
        let metrics = Arc::clone(&self.deps.metrics);
        let c = match self.clients().await {
            Ok(c) => c,
            Err(e) => return vec![e],
        };
        let denied = |e: &ApiError| {
            if e.kind == ApiErrorKind::AccessDenied {
                format!("IAM: {e} — the drain needs the actions of packaging/iam/berth-drain-policy.json")
            } else {
                e.to_string()
            }
        };
        let group = match configured_group {
            Some(g) => Some(g),
            None => {
                let r = c.asg.describe_instance(id).await;
                metrics.api_outcome("DescribeAutoScalingInstances", &r);
                match r {
                    Ok(Some(i)) => Some(i.group),
                    Ok(None) => {
                        found.push(format!("instance {id} is in no Auto Scaling group: asg_lifecycle never starts a drain"));
                        None
                    }
                    Err(e) => {
                        found.push(denied(&e));
                        None
                    }
                }
            }
        };
        let Some(group) = group else { return found };
        let r = c.asg.describe_terminating_hooks(&group).await;
        metrics.api_outcome("DescribeLifecycleHooks", &r);
        match r {
            Ok(hooks) => {
                if hooks.iter().any(|h| h.name == MANAGED_DRAINING_HOOK) {
                    found.push(format!("group {group} also has ECS managed draining's hook ({MANAGED_DRAINING_HOOK}): two drainers act on this instance; turn one off"));
                }
                match choose_hook(&hooks, configured_hook.as_deref()) {
                    Some(h) => tracing::info!(group, hook = h.name, heartbeat_timeout = ?h.heartbeat_timeout, "drain: the lifecycle hook to keep alive"),
                    None => match configured_hook {
                        Some(name) => found.push(format!("group {group} has no terminating hook named {name:?} (drain.lifecycle_hook_name)")),
                        None => found.push(format!("group {group} has no terminating lifecycle hook of its own: the instance is terminated without waiting for its tasks or logs")),
                    },
                }
            }
            Err(e) => found.push(denied(&e)),
        }
        found
    }

    /// One tick: the triggers, then the drain's steps.
    async fn tick(&mut self) {
        if self.broken.is_some() {
            return;
        }
        self.preflight().await;
        let answers = self.poll().await;
        let now = SystemTime::now();
        if let Some(a) = &answers {
            if a.lifecycle_state.as_deref().is_some_and(plan::lifecycle_starts_drain) {
                self.lifecycle_terminated = true;
            }
            let (found, errors) = triggers::pick(&self.cfg.watch, a, unix_ms(now));
            for e in errors {
                if let Some(n) = self.warn.check_key(&e) {
                    tracing::warn!(error = %e, suppressed = n, "drain: unreadable notice");
                }
            }
            self.on_answers(found, a).await;
        }
        if self.state.as_ref().is_some_and(DrainState::active) {
            self.drive().await;
        }
    }

    async fn poll(&mut self) -> Option<triggers::Answers> {
        if self.cfg.watch.is_empty() || !self.deps.imds.is_enabled() {
            return None;
        }
        match triggers::poll(&self.deps.imds, &self.cfg.watch).await {
            Ok(a) => Some(a),
            Err(e) => {
                let e = format!("IMDS: {e}");
                if let Some(n) = self.warn.check_key("imds") {
                    tracing::warn!(error = %e, suppressed = n, "drain: cannot read the triggers");
                }
                self.error = Some(e);
                None
            }
        }
    }

    async fn on_answers(&mut self, found: Option<triggers::Found>, a: &triggers::Answers) {
        match self.state.clone() {
            Some(s) if s.active() => {
                // A Spot notice during a drain brings its deadline forward.
                if let Some(n) = found.and_then(|f| f.spot) {
                    let notice = unix_ms(n.time);
                    if notice < s.deadline_ms {
                        tracing::warn!(action = n.action, "drain: Spot interruption notice: the deadline is now the notice's time");
                        if let Some(st) = self.state.as_mut() {
                            st.deadline_ms = notice.max(st.started_ms);
                        }
                        self.persist();
                    }
                }
            }
            done => {
                let Some(f) = found else {
                    // Back in service after a finished drain: forget it.
                    if done.is_some() && a.lifecycle_state.as_deref() == Some("InService") {
                        if let Err(e) = state::clear(&self.dir) {
                            tracing::error!(error = %e, "drain: cannot remove the finished drain's state");
                        } else {
                            tracing::info!("drain: the instance is in service again; the finished drain is forgotten");
                            self.state = None;
                        }
                    }
                    return;
                };
                // One drain per notice: a finished drain of the same kind is not started
                // again while the notice stays.
                let same = done.as_ref().is_some_and(|d| {
                    std::mem::discriminant(&d.trigger) == std::mem::discriminant(&f.trigger)
                });
                if !same {
                    self.begin(f.trigger, f.spot, None).await;
                }
            }
        }
    }

    /// Whether this drain keeps a lifecycle action alive (and completes it).
    fn needs_hook(&self, s: &DrainState) -> bool {
        s.trigger == Trigger::AsgLifecycle || self.lifecycle_terminated
    }

    /// The group and hook (config, else discovered) and the deadline they bound.
    async fn resolve_hook(&mut self) -> Result<(), String> {
        let id = self.instance_id().await.ok_or("the instance id is not known (IMDS)")?;
        let metrics = Arc::clone(&self.deps.metrics);
        let (group_cfg, hook_cfg) =
            (self.cfg.auto_scaling_group_name.clone(), self.cfg.lifecycle_hook_name.clone());
        let c = self.clients().await?;
        let group = match group_cfg {
            Some(g) => Some(g),
            None => {
                let r = c.asg.describe_instance(&id).await;
                metrics.api_outcome("DescribeAutoScalingInstances", &r);
                r.map_err(|e| e.to_string())?.map(|i| i.group)
            }
        };
        let hook = match &group {
            Some(g) => {
                let r = c.asg.describe_terminating_hooks(g).await;
                metrics.api_outcome("DescribeLifecycleHooks", &r);
                let hooks = r.map_err(|e| e.to_string())?;
                choose_hook(&hooks, hook_cfg.as_deref()).cloned()
            }
            None => None,
        };
        let Some(s) = self.state.as_mut() else { return Ok(()) };
        s.hook_resolved = true;
        match (group, hook) {
            (Some(group), Some(h)) => {
                let start = at(s.started_ms);
                let limit = plan::deadline(
                    start,
                    Bound::Hook {
                        heartbeat_timeout: h.heartbeat_timeout,
                        global_timeout: h.global_timeout,
                    },
                    self.cfg.max_duration,
                    None,
                );
                s.deadline_ms = s.deadline_ms.min(unix_ms(limit));
                tracing::info!(
                    group,
                    hook = h.name,
                    heartbeat_timeout = ?h.heartbeat_timeout,
                    deadline_in = ?at(s.deadline_ms).duration_since(SystemTime::now()).unwrap_or_default(),
                    "drain: keeping the lifecycle action alive"
                );
                s.hook = Some(Hook {
                    group,
                    name: h.name,
                    heartbeat_timeout_ms: h.heartbeat_timeout.as_millis() as u64,
                });
            }
            (group, _) => tracing::warn!(
                group = group.as_deref().unwrap_or("(none)"),
                "drain: no lifecycle hook to keep alive: draining without one"
            ),
        }
        self.persist();
        Ok(())
    }

    /// The container instance's cluster and ARN, from the agent.
    async fn identity(&mut self) {
        let need_id = self.state.as_ref().is_some_and(|s| s.instance_id.is_none());
        if need_id {
            let id = self.instance_id().await;
            if let Some(s) = self.state.as_mut() {
                s.instance_id = id;
            }
        }
        if self.state.as_ref().is_some_and(|s| s.container_instance_arn.is_some()) {
            return;
        }
        match self.agent.metadata().await {
            Ok(m) => {
                if let Some(s) = self.state.as_mut() {
                    s.cluster = Some(m.cluster);
                    s.container_instance_arn = m.container_instance_arn;
                }
                self.persist();
            }
            Err(e) => self.error = Some(format!("ECS agent: {e}")),
        }
    }

    /// This tick's view of the work, as the machine reads it: `Some(0)` only once no work
    /// task has been seen for [`DRIVER_DRAIN`] and the ECS API agrees (or cannot be asked);
    /// `None` while that is not known.
    async fn observe_work(&mut self) -> Option<u32> {
        self.daemons.find_own_family(self.deps.engine.as_deref());
        let tasks = match self.agent.tasks().await {
            Ok(t) => t,
            Err(e) => {
                self.work = None;
                self.error = Some(format!("ECS agent: {e}"));
                return None;
            }
        };
        let snapshot = self.deps.engine.as_ref().map(|e| e.snapshot());
        if snapshot.as_ref().is_some_and(|s| !s.connected) {
            self.error =
                Some("Docker is not connected: cannot tell whether containers exited".into());
            self.work = None;
            return None;
        }
        let running = |id: &str| {
            snapshot.as_ref().is_some_and(|s| s.containers.get(id).is_some_and(|c| c.running()))
        };
        let (work, daemons) = work_tasks(&tasks, |f| self.daemons.is_daemon(f), running);
        self.work = Some(work.len() as u32);
        self.work_arns = work;
        let now = Instant::now();
        if !self.work_arns.is_empty() {
            self.zero_since = None;
            self.confirmed = None;
            return Some(self.work_arns.len() as u32);
        }
        let since = *self.zero_since.get_or_insert(now);
        if now.duration_since(since) < DRIVER_DRAIN {
            return None;
        }
        if self.confirmed != Some(true)
            && self.confirmed_at.is_none_or(|t| now.duration_since(t) >= CONFIRM_EVERY)
        {
            self.confirmed_at = Some(now);
            self.confirmed = Some(self.confirm(daemons).await);
        }
        (self.confirmed == Some(true)).then_some(0)
    }

    /// Whether the ECS API sees no more tasks here than the daemons berth sees. A call that
    /// fails does not hold the drain: the local view (the agent and Docker) is the judge,
    /// the API only a check of it.
    async fn confirm(&mut self, daemons: u32) -> bool {
        let (Some(cluster), Some(arn)) = self
            .state
            .as_ref()
            .map(|s| (s.cluster.clone(), s.container_instance_arn.clone()))
            .unwrap_or_default()
        else {
            return true;
        };
        let metrics = Arc::clone(&self.deps.metrics);
        let c = match self.clients().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "drain: cannot confirm with the ECS API; going by the local view");
                return true;
            }
        };
        let r = c.ecs.describe_container_instance(&cluster, &arn).await;
        metrics.api_outcome("DescribeContainerInstances", &r);
        match r {
            Ok(ci) => {
                let ecs = ci.running_tasks + ci.pending_tasks;
                let ok = ecs <= i64::from(daemons);
                if !ok {
                    tracing::info!(
                        ecs_tasks = ecs,
                        local_daemons = daemons,
                        "drain: the ECS API still counts tasks here; waiting"
                    );
                }
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "drain: cannot confirm with the ECS API; going by the local view");
                true
            }
        }
    }

    /// Apply the machine's actions until it says wait.
    async fn drive(&mut self) {
        if self.dirty {
            self.persist();
            if self.dirty {
                return;
            }
        }
        self.identity().await;
        let needs_hook = self.state.as_ref().is_some_and(|s| self.needs_hook(s));
        if needs_hook && self.state.as_ref().is_some_and(|s| !s.hook_resolved) && self.may_call() {
            if let Err(e) = self.resolve_hook().await {
                self.failed("finding the lifecycle hook", e);
            }
        }
        let work = match self.state.as_ref().map(|s| s.step) {
            Some(Step::SetDraining | Step::WaitTasks) => self.observe_work().await,
            _ => {
                // Shown, not decided on.
                let _ = self.observe_work().await;
                Some(0)
            }
        };
        for _ in 0..8 {
            let Some(s) = self.state.clone() else { return };
            let now = SystemTime::now();
            let flushed = s.flush_mark.is_some_and(|m| self.deps.buffer.delivered_up_to(m));
            let o = Observation {
                now,
                work,
                flushed,
                heartbeat_every: s.hook.as_ref().map(|h| {
                    plan::heartbeat_every(
                        Duration::from_millis(h.heartbeat_timeout_ms),
                        self.cfg.heartbeat_fraction,
                    )
                }),
            };
            let mut action = machine::decide(&s, &o, self.cfg.result_on_timeout);
            if needs_hook && !s.hook_resolved && action != Action::SetDraining {
                action = Action::Wait;
            }
            let calls_aws =
                matches!(action, Action::SetDraining | Action::Heartbeat | Action::Complete(_));
            if calls_aws && !self.may_call() {
                return;
            }
            match action {
                Action::Wait => return,
                Action::SetDraining => {
                    if !self.set_draining(&s).await {
                        return;
                    }
                }
                Action::Heartbeat => {
                    if !self.heartbeat(&s).await {
                        return;
                    }
                }
                Action::MarkFlush => {
                    let mark = self.deps.buffer.head();
                    tracing::info!(mark, "drain: no work left; waiting for the sinks to deliver up to the buffer's head");
                    self.update(|s| {
                        s.flush_mark = Some(mark);
                        s.tasks_done_ms = Some(unix_ms(now));
                        s.step = Step::Flush;
                    });
                }
                Action::Complete(result) => {
                    if !self.complete(&s, result, now).await {
                        return;
                    }
                }
                Action::Finish => {
                    let outcome =
                        if now >= at(s.deadline_ms) { Outcome::TimedOut } else { Outcome::Drained };
                    self.finish(outcome, now);
                }
            }
        }
    }

    fn may_call(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    fn update(&mut self, f: impl FnOnce(&mut DrainState)) {
        if let Some(s) = self.state.as_mut() {
            f(s);
        }
        self.persist();
    }

    fn finish(&mut self, outcome: Outcome, now: SystemTime) {
        let s = self.state.clone().unwrap_or_else(|| DrainState::new(Trigger::Operator, 0, 0));
        let took = Duration::from_millis(unix_ms(now).saturating_sub(s.started_ms));
        match outcome {
            Outcome::Drained => {
                tracing::info!(took = ?took, heartbeats = s.heartbeats, "drain: done")
            }
            _ => {
                tracing::warn!(outcome = outcome.as_str(), took = ?took, heartbeats = s.heartbeats, remaining_tasks = ?self.work, "drain: ended")
            }
        }
        self.update(|s| {
            s.step = Step::Done;
            s.outcome = Some(outcome);
            s.done_ms = Some(unix_ms(now));
        });
    }

    async fn set_draining(&mut self, s: &DrainState) -> bool {
        let (Some(cluster), Some(arn)) = (s.cluster.clone(), s.container_instance_arn.clone())
        else {
            self.failed(
                "setting DRAINING",
                "the container instance is not known yet (the ECS agent has not registered it or does not answer)".into(),
            );
            return false;
        };
        let metrics = Arc::clone(&self.deps.metrics);
        let r = match self.clients().await {
            Ok(c) => {
                let r = c.ecs.set_draining(&cluster, &arn).await;
                metrics.api_outcome("UpdateContainerInstancesState", &r);
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(status) => {
                tracing::info!(
                    status,
                    container_instance = arn,
                    "drain: the container instance is DRAINING: ECS places nothing more here"
                );
                self.succeeded();
                self.update(|s| {
                    s.draining_set = true;
                    if s.step == Step::SetDraining {
                        s.step = Step::WaitTasks;
                    }
                });
                true
            }
            Err(e) => {
                self.failed("setting DRAINING", e);
                false
            }
        }
    }

    async fn heartbeat(&mut self, s: &DrainState) -> bool {
        // This host's id as IMDS gives it now, never only the state's: a state from
        // another host must not act on that host's action.
        let (Some(h), Some(id)) = (s.hook.clone(), self.instance_id().await) else {
            self.failed("the lifecycle action", "this instance's id is not known (IMDS)".into());
            return false;
        };
        let metrics = Arc::clone(&self.deps.metrics);
        let r = match self.clients().await {
            Ok(c) => {
                let r = c.asg.record_heartbeat(&h.group, &h.name, &id).await;
                metrics.api_outcome("RecordLifecycleActionHeartbeat", &r);
                r
            }
            Err(e) => {
                self.failed("the heartbeat", e);
                return false;
            }
        };
        let now = SystemTime::now();
        match r {
            Ok(()) => {
                self.succeeded();
                metrics.drain_heartbeats.inc();
                self.update(|s| {
                    s.heartbeats += 1;
                    s.last_heartbeat_ms = Some(unix_ms(now));
                });
                tracing::info!(
                    hook = h.name,
                    heartbeats = s.heartbeats + 1,
                    "drain: lifecycle action heart-beaten"
                );
                true
            }
            Err(e) if e.is_no_active_action() => {
                tracing::warn!(error = %e, "drain: the lifecycle action is gone (completed elsewhere or expired): the drain's AWS side stops here");
                self.update(|s| {
                    s.completion =
                        Some(Completion { result: "rejected".into(), at_ms: unix_ms(now) });
                });
                self.finish(Outcome::Rejected, now);
                false
            }
            Err(e) => {
                self.failed("the heartbeat", e.to_string());
                false
            }
        }
    }

    async fn complete(&mut self, s: &DrainState, result: LifecycleResult, now: SystemTime) -> bool {
        // This host's id as IMDS gives it now, never only the state's: a state from
        // another host must not act on that host's action.
        let (Some(h), Some(id)) = (s.hook.clone(), self.instance_id().await) else {
            self.failed("the lifecycle action", "this instance's id is not known (IMDS)".into());
            return false;
        };
        // Recorded before the call: a restart in between makes the call again, and a
        // second completion is answered "no active action", read as done.
        if s.step != Step::Complete {
            self.update(|s| s.step = Step::Complete);
        }
        let metrics = Arc::clone(&self.deps.metrics);
        let r = match self.clients().await {
            Ok(c) => {
                let r = c.asg.complete(&h.group, &h.name, &id, result).await;
                metrics.api_outcome("CompleteLifecycleAction", &r);
                r
            }
            Err(e) => {
                self.failed("completing the lifecycle action", e);
                return false;
            }
        };
        let outcome = if now >= at(s.deadline_ms) { Outcome::TimedOut } else { Outcome::Drained };
        match r {
            Ok(()) => {
                self.succeeded();
                tracing::info!(
                    result = result.as_str(),
                    hook = h.name,
                    "drain: lifecycle action completed: the instance may go"
                );
            }
            Err(e) if e.is_no_active_action() => {
                tracing::info!(error = %e, "drain: the lifecycle action was already completed");
            }
            Err(e) => {
                self.failed("completing the lifecycle action", e.to_string());
                return false;
            }
        }
        self.update(|s| {
            s.completion = Some(Completion { result: result.as_str().into(), at_ms: unix_ms(now) });
        });
        self.finish(outcome, now);
        true
    }

    fn view(&self, note: Option<String>) -> View {
        let now = SystemTime::now();
        let s = self.state.clone();
        let active = s.as_ref().is_some_and(DrainState::active);
        let stats = self.deps.buffer.stats();
        View {
            enabled: true,
            watching: self.cfg.watch.iter().map(|w| w.as_str()).collect(),
            active,
            remaining_tasks: if active { self.work } else { None },
            tasks: if active { self.work_arns.clone() } else { Vec::new() },
            deadline_in_seconds: s
                .as_ref()
                .filter(|s| s.active())
                .map(|s| (s.deadline_ms as i64 - unix_ms(now) as i64).div_euclid(1000)),
            heartbeat_every_seconds: s.as_ref().and_then(|s| s.hook.as_ref()).map(|h| {
                plan::heartbeat_every(
                    Duration::from_millis(h.heartbeat_timeout_ms),
                    self.cfg.heartbeat_fraction,
                )
                .as_secs()
            }),
            flushed: s
                .as_ref()
                .and_then(|s| s.flush_mark)
                .map(|m| self.deps.buffer.delivered_up_to(m)),
            sinks: stats
                .sinks
                .iter()
                .map(|c| SinkLag { sink: c.name.clone(), lag_records: c.lag_events })
                .collect(),
            ecs_confirms_no_work: if active { self.confirmed } else { None },
            error: self.broken.clone().or_else(|| self.error.clone()),
            preflight: self.preflight.clone().unwrap_or_default(),
            drain: s,
            note,
        }
    }

    fn publish(&self, note: Option<String>) {
        let v = self.view(note);
        self.deps.metrics.observe_drain(&v);
        self.view_tx.send_replace(v);
    }
}

/// One line of a view (`GET /v1/drain`'s JSON) for `berth drain`: the step, the tasks
/// left, the time to the deadline, the heartbeats, the sinks' lag — or how it ended.
pub fn line(v: &serde_json::Value) -> String {
    let Some(d) = v.get("drain").filter(|d| !d.is_null()) else {
        return "no drain".to_string();
    };
    let str_at = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("");
    let num_at = |p: &str| v.pointer(p).and_then(serde_json::Value::as_i64);
    let trigger = d.pointer("/trigger/kind").and_then(|k| k.as_str()).unwrap_or("?");
    let beats = d.get("heartbeats").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mut parts = Vec::new();
    if v.get("active").and_then(serde_json::Value::as_bool).unwrap_or(false) {
        parts.push(format!("{} ({trigger})", str_at("/drain/step")));
        match num_at("/remaining_tasks") {
            Some(n) => parts.push(format!("{n} task{} left", if n == 1 { "" } else { "s" })),
            None => parts.push("tasks unknown".into()),
        }
        if let Some(s) = num_at("/deadline_in_seconds") {
            let d = crate::config::format_duration(Duration::from_secs(s.max(0) as u64));
            parts.push(format!("deadline in {d}"));
        }
        match num_at("/heartbeat_every_seconds") {
            Some(e) => parts.push(format!("{beats} heartbeats (every {e}s)")),
            None => parts.push("no lifecycle action".into()),
        }
        let lag: Vec<String> = v
            .get("sinks")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let name = s.get("sink").and_then(|n| n.as_str()).unwrap_or("?");
                        let lag = s.get("lag_records").and_then(serde_json::Value::as_u64);
                        format!("{name}={}", lag.unwrap_or(0))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !lag.is_empty() {
            parts.push(format!("lag {}", lag.join(" ")));
        }
    } else {
        let took = match (num_at("/drain/started_ms"), num_at("/drain/done_ms")) {
            (Some(a), Some(b)) => {
                format!(
                    " in {}",
                    crate::config::format_duration(Duration::from_millis((b - a).max(0) as u64))
                )
            }
            _ => String::new(),
        };
        parts.push(format!("done ({}, {trigger}){took}", str_at("/drain/outcome")));
        parts.push(format!("{beats} heartbeats"));
        if let Some(r) = d.pointer("/completion/result").and_then(|r| r.as_str()) {
            parts.push(format!("lifecycle action {r}"));
        }
    }
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        parts.push(format!("last error: {e}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::agent::Container;

    #[test]
    fn one_line_per_view() {
        let v = serde_json::json!({
            "active": true, "remaining_tasks": 2, "deadline_in_seconds": 3600,
            "heartbeat_every_seconds": 150,
            "sinks": [{"sink": "search", "lag_records": 12}],
            "drain": {"step": "wait_tasks", "trigger": {"kind": "asg_lifecycle"}, "heartbeats": 3},
        });
        assert_eq!(
            line(&v),
            "wait_tasks (asg_lifecycle), 2 tasks left, deadline in 1h, 3 heartbeats (every 150s), lag search=12"
        );
        let done = serde_json::json!({
            "active": false,
            "drain": {"step": "done", "outcome": "drained", "trigger": {"kind": "operator"},
                      "heartbeats": 0, "started_ms": 0, "done_ms": 90_000},
        });
        assert_eq!(line(&done), "done (drained, operator) in 90s, 0 heartbeats");
        assert_eq!(line(&serde_json::json!({"drain": null})), "no drain");
    }

    fn task(family: &str, known: &str, docker_id: &str) -> Task {
        Task {
            arn: format!("arn:aws:ecs:us-east-1:1:task/c/{family}"),
            desired_status: "STOPPED".into(),
            known_status: known.into(),
            family: family.into(),
            version: "1".into(),
            containers: vec![Container {
                docker_id: docker_id.into(),
                docker_name: format!("ecs-{family}"),
                name: "main".into(),
            }],
        }
    }

    #[test]
    fn work_is_non_daemon_tasks_not_stopped_or_still_running_in_docker() {
        let tasks = [
            task("web", "RUNNING", "a"),
            task("batch", "STOPPED", "b"), // stopped, its container gone
            task("slow", "STOPPED", "c"),  // the agent says stopped, Docker still runs it
            task("berth", "RUNNING", "d"), // a daemon
            task("log-router", "STOPPED", "e"), // a stopped daemon holds nothing
            task("pulling", "PULLED", ""), // not started yet: work
        ];
        let (work, daemons) =
            work_tasks(&tasks, |f| f == "berth" || f == "log-router", |id| id == "c");
        let families: Vec<_> = work.iter().map(|a| a.rsplit('/').next().unwrap()).collect();
        assert_eq!(families, ["web", "slow", "pulling"]);
        assert_eq!(daemons, 1);
        assert_eq!(work_tasks(&[], |_| false, |_| false), (vec![], 0));
    }

    #[test]
    fn the_hook_is_the_configured_one_else_the_first_not_ecs_managed_draining() {
        let hook = |name: &str| LifecycleHook {
            name: name.into(),
            transition: crate::autoscaling::TERMINATING.into(),
            heartbeat_timeout: Duration::from_secs(300),
            global_timeout: None,
            default_result: LifecycleResult::Abandon,
        };
        let hooks = [hook(MANAGED_DRAINING_HOOK), hook("drain"), hook("other")];
        assert_eq!(choose_hook(&hooks, None).map(|h| h.name.as_str()), Some("drain"));
        assert_eq!(choose_hook(&hooks, Some("other")).map(|h| h.name.as_str()), Some("other"));
        assert_eq!(choose_hook(&hooks, Some("missing")), None);
        assert_eq!(choose_hook(&hooks[..1], None), None, "only ECS's own: none of ours");
    }
}
