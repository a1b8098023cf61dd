//! The Docker metadata cache: container id → the fields to add, pre-encoded.
//!
//! Filled from the engine's container list — never from inspect alone, see
//! [`DockerCache::fetch_into_cache`] — on every (re)connection (the running containers), on
//! first sight of an id (concurrent first lookups of one id wait for the same lookup, which
//! runs in its own task so a caller giving up does not cancel it), and on the `start` and
//! `rename` events; `destroy` marks the entry removed, and removed entries expire after
//! `removed_grace_period` so the lines a container logged just before it went are still
//! enriched. Bounded: beyond `max_containers` the least recently used entry is dropped.
//!
//! Docker unreachable (no socket, engine restarting): lookups answer "unknown" at once and
//! records pass through; one warning per outage; the events task reconnects with backoff
//! and, once back, lists the containers again (events were missed meanwhile).
//!
//! Never in the way of intake: the hot path takes one short mutex per batch and container,
//! and never waits on Docker for longer than `inspect_wait` (2 s by default).

use super::record::Fields;
use crate::config::{DockerEnrichConfig, DockerField};
use crate::metrics::Metrics;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A lookup that takes longer than this (or than `inspect_wait`) failed.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The inspect that completes an entry (environment, image name) may wait this long: Docker
/// answers it only once an exiting container's logs are drained.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(120);
/// Such inspects running at once (a start on a busy host queues the rest).
const INSPECTS: usize = 4;
/// How long an id Docker does not know (404) or whose inspect failed is not asked again.
const MISSING_TTL: Duration = Duration::from_secs(30);
const FAILED_TTL: Duration = Duration::from_secs(5);
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// The label a container sets to have its lines grouped (read by the multiline stage).
pub use crate::reassemble::MULTILINE_LABEL;

const ECS_CLUSTER: &str = "com.amazonaws.ecs.cluster";
const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
const ECS_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
const ECS_REVISION: &str = "com.amazonaws.ecs.task-definition-version";

/// What the cache knows of one container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The configured fields, labels and env, encoded once.
    pub fields: Fields,
    /// Label `berth.multiline.start`, as written.
    pub multiline_start: Option<String>,
    /// What the entry was built from: a refresh from the container list keeps what only an
    /// inspect tells (`env`, the image's name).
    source: Inspected,
}

/// What Docker tells of a container, before it is encoded (a seam for tests).
#[derive(Debug, Default, Clone)]
pub struct Inspected {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `NAME=VALUE` entries as Docker reports them.
    pub env: Vec<String>,
    /// Whether this comes from an inspect, whose `env` and `image` (as the container was
    /// created from) are the container's for life. The list has no environment, and names
    /// the image by its id once its tag has moved to another image.
    pub inspected: bool,
}

impl Inspected {
    fn from_inspect(info: bollard::models::ContainerInspectResponse) -> Inspected {
        let config = info.config.unwrap_or_default();
        Inspected {
            id: info.id.unwrap_or_default(),
            name: info.name.unwrap_or_default(),
            image: config.image.filter(|i| !i.is_empty()).or(info.image).unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            inspected: true,
        }
    }

    fn from_summary(s: bollard::models::ContainerSummary) -> Inspected {
        Inspected {
            id: s.id.unwrap_or_default(),
            name: s.names.and_then(|n| n.into_iter().next()).unwrap_or_default(),
            image: s.image.unwrap_or_default(),
            labels: s.labels.unwrap_or_default(),
            env: Vec::new(),
            inspected: false,
        }
    }
}

/// The cache entry for `c` under `cfg`: fields in the configured order, empty values left
/// out.
pub fn build_container(cfg: &DockerEnrichConfig, c: &Inspected) -> Container {
    let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or("");
    let name = c.name.trim_start_matches('/');
    let arn = label(ECS_TASK_ARN);
    let mut fields = Fields::new();
    for f in &cfg.fields {
        let v = match f {
            DockerField::ContainerName => name,
            DockerField::Image => c.image.as_str(),
            DockerField::EcsCluster => label(ECS_CLUSTER),
            DockerField::EcsTaskArn => arn,
            DockerField::EcsTaskId => {
                arn.rsplit('/').next().filter(|_| arn.contains('/')).unwrap_or("")
            }
            DockerField::EcsTaskDefinitionFamily => label(ECS_FAMILY),
            DockerField::EcsTaskDefinitionRevision => label(ECS_REVISION),
            DockerField::EcsContainerName => label(ECS_CONTAINER_NAME),
        };
        if !v.is_empty() {
            fields.push_str(f.as_str(), v);
        }
    }
    for l in &cfg.labels {
        if let Some(v) = c.labels.get(&l.name) {
            fields.push_str(&l.key, v);
        }
    }
    for e in &cfg.env {
        let v = c
            .env
            .iter()
            .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == e.name).map(|(_, v)| v));
        if let Some(v) = v {
            fields.push_str(&e.key, v);
        }
    }
    Container {
        id: c.id.clone(),
        name: name.to_string(),
        fields,
        multiline_start: c.labels.get(MULTILINE_LABEL).cloned(),
        source: c.clone(),
    }
}

enum Slot {
    Ready {
        c: Arc<Container>,
        used: u64,
        removed: Option<Instant>,
        /// The inspect completing the entry is running: lookups wait for it (`true` when
        /// done) until the deadline, then take the entry as it is.
        inspect: Option<(watch::Receiver<bool>, Instant)>,
    },
    /// A first-sight lookup is running; `true` is sent when it is done.
    Pending(watch::Receiver<bool>),
    /// Not a container Docker knows, or its inspect failed: not asked again until then.
    Missing { until: Instant, used: u64 },
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Container>),
    /// Unknown now (Docker down, not a container): pass the record through.
    Miss,
    /// A first-sight inspect is running: wait (bounded) for it.
    Wait(watch::Receiver<bool>),
}

struct Inner {
    map: HashMap<String, Slot>,
    /// Bumped on every use: the LRU clock.
    clock: u64,
}

/// The connection state, for warnings and `/v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DockerStatus {
    pub enabled: bool,
    pub socket: String,
    pub connected: bool,
    /// The last connection error while not connected.
    pub error: Option<String>,
    pub cached_containers: usize,
    pub removed_containers: usize,
    /// Connection attempts that failed since start.
    pub failed_connects: u64,
}

pub struct DockerCache {
    cfg: DockerEnrichConfig,
    socket: String,
    inner: Mutex<Inner>,
    client: RwLock<Option<Docker>>,
    error: Mutex<Option<String>>,
    failed_connects: AtomicU64,
    /// Set once a container with a `berth.multiline.start` label was seen: until then the
    /// multiline stage does not even parse records.
    any_multiline: AtomicBool,
    /// Set once the first connection attempt is over (success or not).
    first: watch::Sender<bool>,
    inspects: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DockerCache {
    pub fn new(cfg: DockerEnrichConfig, metrics: Arc<Metrics>) -> DockerCache {
        let socket = cfg
            .socket
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        DockerCache {
            cfg,
            socket,
            inner: Mutex::new(Inner { map: HashMap::new(), clock: 0 }),
            inspects: Arc::new(tokio::sync::Semaphore::new(INSPECTS)),
            client: RwLock::new(None),
            error: Mutex::new(None),
            failed_connects: AtomicU64::new(0),
            any_multiline: AtomicBool::new(false),
            first: watch::channel(false).0,
            metrics,
        }
    }

    /// The label `berth.multiline.start` of a cached container; never waits, never asks
    /// Docker.
    pub fn multiline_start(&self, container_id: &str) -> Option<String> {
        match lock(&self.inner).map.get(container_id) {
            Some(Slot::Ready { c, .. }) => c.multiline_start.clone(),
            _ => None,
        }
    }

    /// Whether any container seen had a `berth.multiline.start` label.
    pub fn any_multiline(&self) -> bool {
        self.any_multiline.load(Ordering::Relaxed)
    }

    /// The cached entry of a container, if any (never waits).
    pub fn get(&self, container_id: &str) -> Option<Arc<Container>> {
        match lock(&self.inner).map.get(container_id) {
            Some(Slot::Ready { c, .. }) => Some(Arc::clone(c)),
            _ => None,
        }
    }

    pub fn status(&self) -> DockerStatus {
        let inner = lock(&self.inner);
        let ready = inner.map.values().filter(|s| matches!(s, Slot::Ready { .. }));
        let (mut cached, mut removed) = (0, 0);
        for s in ready {
            cached += 1;
            if let Slot::Ready { removed: Some(_), .. } = s {
                removed += 1;
            }
        }
        let connected = self.client.read().map(|c| c.is_some()).unwrap_or(false);
        DockerStatus {
            enabled: true,
            socket: self.socket.clone(),
            connected,
            error: if connected { None } else { lock(&self.error).clone() },
            cached_containers: cached,
            removed_containers: removed,
            failed_connects: self.failed_connects.load(Ordering::Relaxed),
        }
    }

    /// Wait (at most `max`) for the first connection attempt, so that a start on a Docker
    /// host enriches the very first records.
    pub async fn wait_first(&self, max: Duration) {
        let mut rx = self.first.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|d| *d)).await;
    }

    fn client(&self) -> Option<Docker> {
        self.client.read().ok().and_then(|c| c.clone())
    }

    /// Find a container; on first sight start its inspect (when Docker is reachable).
    pub fn lookup(self: &Arc<Self>, id: &str) -> Lookup {
        let mut inner = lock(&self.inner);
        inner.clock += 1;
        let now_used = inner.clock;
        match inner.map.get_mut(id) {
            Some(Slot::Ready { c, used, inspect, .. }) => {
                *used = now_used;
                match inspect {
                    Some((rx, until)) if *until > Instant::now() && !*rx.borrow() => {
                        return Lookup::Wait(rx.clone())
                    }
                    _ => return Lookup::Hit(Arc::clone(c)),
                }
            }
            Some(Slot::Pending(rx)) => return Lookup::Wait(rx.clone()),
            Some(Slot::Missing { until, .. }) if *until > Instant::now() => return Lookup::Miss,
            _ => {}
        }
        let Some(client) = self.client() else {
            return Lookup::Miss;
        };
        let (tx, rx) = watch::channel(false);
        self.insert(&mut inner, id.to_string(), Slot::Pending(rx.clone()));
        drop(inner);
        let this = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Some(mut inspect) = this.fetch_into_cache(&client, &id, None).await {
                // The waiters bound their own wait.
                let _ = inspect.wait_for(|done| *done).await;
            }
            let _ = tx.send(true);
        });
        Lookup::Wait(rx)
    }

    /// Wait for a first-sight lookup (and the inspect completing it), at most `inspect_wait`.
    pub async fn wait(&self, id: &str, mut rx: watch::Receiver<bool>) -> Option<Arc<Container>> {
        let _ = tokio::time::timeout(self.cfg.inspect_wait, rx.wait_for(|done| *done)).await;
        self.get(id)
    }

    /// Store what an inspect returned, as the events task does (tests, benchmarks).
    pub fn put(&self, c: &Inspected) {
        let c = build_container(&self.cfg, c);
        let mut inner = lock(&self.inner);
        inner.clock += 1;
        let used = inner.clock;
        self.insert(
            &mut inner,
            c.id.clone(),
            Slot::Ready { c: Arc::new(c), used, removed: None, inspect: None },
        );
    }

    /// Insert, dropping the least recently used entry (never a running inspect) when full.
    fn insert(&self, inner: &mut Inner, id: String, slot: Slot) {
        if !inner.map.contains_key(&id) && inner.map.len() >= self.cfg.max_containers {
            let victim = inner
                .map
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready { used, .. } | Slot::Missing { used, .. } => Some((*used, k)),
                    Slot::Pending(_) => None,
                })
                .min()
                .map(|(_, k)| k.clone());
            if let Some(k) = victim {
                inner.map.remove(&k);
            }
        }
        if let Slot::Ready { c, .. } = &slot {
            if c.multiline_start.is_some() {
                self.any_multiline.store(true, Ordering::Relaxed);
            }
        }
        inner.map.insert(id, slot);
        self.metrics.enrich_docker_cache_size.set(inner.map.len() as i64);
    }

    /// Look `id` up in the container list and store what was learnt (the entry, or a
    /// negative entry). Returns the running inspect that completes the entry, if any.
    ///
    /// The list, not inspect: Docker answers inspect under the container's lock, which it
    /// holds while an exiting container's logs drain (up to 10 s and more) — and they drain
    /// into berth, whose connection would be waiting for this very answer. The list is
    /// served from a snapshot without that lock. It lacks the environment, and names the
    /// image by id once its tag has moved: an inspect completes those when they are needed
    /// ([`Self::complete`]); lookups wait for it at most `inspect_wait`.
    async fn fetch_into_cache(
        self: &Arc<Self>,
        client: &Docker,
        id: &str,
        name: Option<&str>,
    ) -> Option<watch::Receiver<bool>> {
        let limit = INSPECT_TIMEOUT.max(self.cfg.inspect_wait);
        let res = tokio::time::timeout(limit, list_one(client, id)).await;
        let res = self.answered(res, "container lookup", id);
        let mut inner = lock(&self.inner);
        let failed = match res {
            Some(Some(mut found)) => {
                if let Some(n) = name {
                    // A rename event's own word on the new name.
                    found.name = n.to_string();
                }
                return self.store(&mut inner, client, found);
            }
            Some(None) => false,
            None => true,
        };
        // A removed container's entry outlives Docker's knowledge of it.
        if !matches!(inner.map.get(id), Some(Slot::Ready { .. })) {
            inner.clock += 1;
            let used = inner.clock;
            let until = Instant::now() + if failed { FAILED_TTL } else { MISSING_TTL };
            self.insert(&mut inner, id.to_string(), Slot::Missing { until, used });
        }
        None
    }

    /// Store a container found in the list, keeping what the cache knew that the list does
    /// not tell (removal, environment, image name); start the inspect when needed.
    fn store(
        self: &Arc<Self>,
        inner: &mut Inner,
        client: &Docker,
        mut found: Inspected,
    ) -> Option<watch::Receiver<bool>> {
        let (removed, mut inspect) = match inner.map.get(&found.id) {
            Some(Slot::Ready { c, removed, inspect, .. }) => {
                if c.source.inspected {
                    found.env = c.source.env.clone();
                    found.image = c.source.image.clone();
                    found.inspected = true;
                }
                (*removed, inspect.clone())
            }
            _ => (None, None),
        };
        let needed = !self.cfg.env.is_empty()
            || (self.cfg.fields.contains(&DockerField::Image)
                && found.image.starts_with("sha256:"));
        if found.inspected || !needed {
            inspect = None;
        } else if inspect.is_none() {
            let (tx, rx) = watch::channel(false);
            self.complete(client.clone(), found.id.clone(), tx);
            inspect = Some((rx, Instant::now() + self.cfg.inspect_wait));
        }
        inner.clock += 1;
        let used = inner.clock;
        let c = Arc::new(build_container(&self.cfg, &found));
        let waiting = inspect.as_ref().map(|(rx, _)| rx.clone());
        self.insert(inner, found.id, Slot::Ready { c, used, removed, inspect });
        waiting
    }

    /// Inspect `id` in the background for what the list lacks (environment, image name)
    /// and rebuild its entry with it.
    fn complete(self: &Arc<Self>, client: Docker, id: String, done: watch::Sender<bool>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let permit = Arc::clone(&this.inspects).acquire_owned().await;
            let res =
                tokio::time::timeout(COMPLETE_TIMEOUT, client.inspect_container(&id, None)).await;
            drop(permit);
            let info = this.answered(res, "inspect", &id).map(Inspected::from_inspect);
            if let Some(Slot::Ready { c, inspect, .. }) = lock(&this.inner).map.get_mut(&id) {
                *inspect = None;
                // Its name and labels stay as the latest list or event left them.
                if let Some(info) = info {
                    let mut source = c.source.clone();
                    source.env = info.env;
                    source.image = info.image;
                    source.inspected = true;
                    *c = Arc::new(build_container(&this.cfg, &source));
                }
            }
            let _ = done.send(true);
        });
    }

    /// After a (re)connection: one list of every container fills the cache with the running
    /// ones (their first lines wait for nothing), refreshes what is cached, and marks removed
    /// what Docker no longer has (events were missed meanwhile).
    async fn resync(self: &Arc<Self>, client: &Docker) {
        let opts = ListContainersOptions { all: true, ..Default::default() };
        let res = tokio::time::timeout(INSPECT_TIMEOUT, client.list_containers(Some(opts))).await;
        let Some(list) = self.answered(res, "container list", "") else { return };
        let mut seen = std::collections::HashSet::new();
        for s in list {
            let running = matches!(s.state, Some(ContainerSummaryStateEnum::RUNNING));
            let found = Inspected::from_summary(s);
            seen.insert(found.id.clone());
            let mut inner = lock(&self.inner);
            if running || matches!(inner.map.get(&found.id), Some(Slot::Ready { .. })) {
                self.store(&mut inner, client, found);
            }
        }
        let gone: Vec<String> = lock(&self.inner)
            .map
            .iter()
            .filter(|(k, s)| matches!(s, Slot::Ready { removed: None, .. }) && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            self.mark_removed(&id);
        }
    }

    /// The answer of a Docker call bounded by a timeout; a failure is counted and logged.
    fn answered<T>(
        &self,
        res: Result<Result<T, bollard::errors::Error>, tokio::time::error::Elapsed>,
        what: &str,
        id: &str,
    ) -> Option<T> {
        let why = match res {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        self.metrics.enrich_docker_errors.inc();
        tracing::debug!(container_id = id, error = why, "docker {what} failed");
        None
    }

    fn mark_removed(&self, id: &str) {
        if let Some(Slot::Ready { removed, .. }) = lock(&self.inner).map.get_mut(id) {
            *removed = Some(Instant::now());
            tracing::debug!(
                container_id = id,
                "container removed: its entry is kept for the grace period"
            );
        }
    }

    /// Drop removed containers past their grace period and stale negative entries.
    fn sweep(&self) {
        let now = Instant::now();
        let grace = self.cfg.removed_grace_period;
        let mut inner = lock(&self.inner);
        inner.map.retain(|_, s| match s {
            Slot::Ready { removed: Some(at), .. } => now.duration_since(*at) < grace,
            Slot::Missing { until, .. } => *until > now,
            _ => true,
        });
        self.metrics.enrich_docker_cache_size.set(inner.map.len() as i64);
    }

    fn connected(&self, client: Docker) {
        if let Ok(mut c) = self.client.write() {
            *c = Some(client);
        }
        if lock(&self.error).take().is_some() {
            tracing::info!(socket = %self.socket, "docker engine reachable again: records are enriched");
        } else {
            tracing::info!(socket = %self.socket, "connected to the docker engine");
        }
        self.first.send_replace(true);
    }

    /// Called on every failure; logs once per outage.
    fn disconnected(&self, why: String) {
        if let Ok(mut c) = self.client.write() {
            *c = None;
        }
        let mut err = lock(&self.error);
        if err.is_none() {
            tracing::warn!(
                socket = %self.socket,
                error = %why,
                "docker engine unreachable: records pass through without container fields until it is back"
            );
        }
        *err = Some(why);
        drop(err);
        self.first.send_replace(true);
    }

    /// Connect, follow the events and keep the cache fresh until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_INITIAL;
        let sweep_every = (self.cfg.removed_grace_period / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let client = match self.connect().await {
                Ok(c) => c,
                Err(why) => {
                    self.failed_connects.fetch_add(1, Ordering::Relaxed);
                    self.disconnected(why);
                    let until = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep_until(until) => break,
                            _ = sweep.tick() => self.sweep(),
                        }
                    }
                    continue;
                }
            };
            backoff = BACKOFF_INITIAL;
            let mut filters = HashMap::new();
            filters.insert("type".to_string(), vec!["container".to_string()]);
            filters.insert(
                "event".to_string(),
                ["start", "die", "destroy", "rename"].iter().map(|s| s.to_string()).collect(),
            );
            let mut events =
                client.events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
            self.connected(client.clone());
            self.resync(&client).await;
            let why = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => self.sweep(),
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => self.on_event(&client, ev).await,
                        Some(Err(e)) => break format!("events stream: {e}"),
                        None => break "events stream ended".to_string(),
                    },
                }
            };
            self.disconnected(why);
        }
    }

    async fn connect(&self) -> Result<Docker, String> {
        let client = Docker::connect_with_host(&self.socket).map_err(|e| e.to_string())?;
        // The engine may speak an older API than bollard's default (Docker 20.10: 1.41).
        match tokio::time::timeout(INSPECT_TIMEOUT, client.negotiate_version()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }

    async fn on_event(self: &Arc<Self>, client: &Docker, ev: bollard::models::EventMessage) {
        let Some(actor) = ev.actor else { return };
        let Some(id) = actor.id else { return };
        match ev.action.as_deref() {
            // A new container's lines find their entry ready.
            Some("start") => {
                self.fetch_into_cache(client, &id, None).await;
            }
            // A renamed one gets its new name.
            Some("rename") => {
                let name = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("name"))
                    .map(|n| format!("/{}", n.trim_start_matches('/')));
                self.fetch_into_cache(client, &id, name.as_deref()).await;
            }
            Some("destroy") => self.mark_removed(&id),
            _ => {}
        }
    }
}

/// The container with exactly this id, from the list (all states).
async fn list_one(client: &Docker, id: &str) -> Result<Option<Inspected>, bollard::errors::Error> {
    let mut filters = HashMap::new();
    filters.insert("id".to_string(), vec![id.to_string()]);
    let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let list = client.list_containers(Some(opts)).await?;
    // The filter matches id prefixes too.
    Ok(list.into_iter().map(Inspected::from_summary).find(|c| c.id == id))
}

impl crate::reassemble::MultilineSource for DockerCache {
    fn multiline_start(&self, container_id: &str) -> Option<String> {
        DockerCache::multiline_start(self, container_id)
    }

    fn any(&self) -> bool {
        self.any_multiline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CopyKey;

    fn cfg() -> DockerEnrichConfig {
        DockerEnrichConfig {
            enabled: true,
            socket: None,
            fields: DockerField::DEFAULTS.to_vec(),
            labels: vec![
                CopyKey { name: "team".into(), key: "team".into() },
                CopyKey { name: "com.example.v".into(), key: "version".into() },
            ],
            env: vec![CopyKey { name: "APP_ENV".into(), key: "app_env".into() }],
            removed_grace_period: Duration::from_secs(60),
            inspect_wait: Duration::from_secs(2),
            max_containers: 2,
        }
    }

    fn ecs() -> Inspected {
        let labels = [
            (ECS_CLUSTER, "c1"),
            (ECS_TASK_ARN, "arn:aws:ecs:eu-west-1:123456789012:task/c1/0123abcd"),
            (ECS_CONTAINER_NAME, "app"),
            (ECS_FAMILY, "fam"),
            (ECS_REVISION, "3"),
            ("team", "core"),
            (MULTILINE_LABEL, "^\\d{4}-"),
        ];
        Inspected {
            id: "abc".into(),
            name: "/web".into(),
            image: "nginx:1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            env: vec!["PATH=/bin".into(), "APP_ENV=prod=eu".into()],
            inspected: true,
        }
    }

    #[test]
    fn fields_come_from_labels_and_inspect_in_config_order() {
        let c = build_container(&cfg(), &ecs());
        let got: Vec<(&str, &str)> = c.fields.iter().collect();
        assert_eq!(
            got,
            [
                ("container_name", "web"),
                ("image", "nginx:1"),
                ("ecs_cluster", "c1"),
                ("ecs_task_arn", "arn:aws:ecs:eu-west-1:123456789012:task/c1/0123abcd"),
                ("ecs_task_id", "0123abcd"),
                ("ecs_task_definition_family", "fam"),
                ("ecs_task_definition_revision", "3"),
                ("ecs_container_name", "app"),
                ("team", "core"),
                ("app_env", "prod=eu"),
            ]
        );
        assert_eq!(c.multiline_start.as_deref(), Some("^\\d{4}-"));
    }

    #[test]
    fn a_plain_container_has_only_name_and_image() {
        let c = build_container(
            &cfg(),
            &Inspected {
                id: "x".into(),
                name: "/db".into(),
                image: "pg".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            c.fields.iter().collect::<Vec<_>>(),
            [("container_name", "db"), ("image", "pg")]
        );
        assert_eq!(c.multiline_start, None);
    }

    /// A fake engine on a Unix socket: answers the container list after 200 ms (counting
    /// those requests) and inspect after `inspect_delay`, as Docker 20.10 answers them.
    async fn fake_engine(
        dir: &std::path::Path,
        inspect_delay: Duration,
        list_image: &'static str,
    ) -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let path = dir.join("docker.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let inspects = Arc::new(AtomicU64::new(0));
        let n = Arc::clone(&inspects);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = Arc::clone(&n);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let line =
                        String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string();
                    let body = if line.contains("/containers/json") {
                        n.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        // The id filter also matches prefixes: only the exact id counts.
                        format!(
                            r#"[{{"Id":"abcd","Names":["/other"],"Image":"x","Labels":{{}},"State":"running"}},
                            {{"Id":"abc","Names":["/web"],"Image":"{list_image}","Labels":{{"com.amazonaws.ecs.cluster":"c1"}},"State":"exited"}}]"#
                        )
                    } else if line.contains("/containers/abc/json") {
                        tokio::time::sleep(inspect_delay).await;
                        r#"{"Id":"abc","Name":"/web","Config":{"Image":"img:1","Labels":{"com.amazonaws.ecs.cluster":"c1"},"Env":["APP_ENV=prod"]}}"#.to_string()
                    } else {
                        "{}".to_string()
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (format!("unix://{}", path.display()), inspects)
    }

    #[tokio::test]
    async fn concurrent_first_lookups_share_one_list_and_wait_for_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, inspects) = fake_engine(dir.path(), Duration::from_millis(400), "img:1").await;
        let cache = Arc::new(DockerCache::new(cfg(), Arc::new(Metrics::new())));
        let client = Docker::connect_with_host(&socket).unwrap();
        *cache.client.write().unwrap() = Some(client);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let c = Arc::clone(&cache);
            waits.push(tokio::spawn(async move {
                match c.lookup("abc") {
                    Lookup::Wait(rx) => c.wait("abc", rx).await,
                    Lookup::Hit(h) => Some(h),
                    Lookup::Miss => None,
                }
            }));
        }
        for w in waits {
            let c = w.await.unwrap().expect("listed");
            assert_eq!(c.name, "web");
            assert_eq!(c.fields.get("ecs_cluster"), Some("c1"));
            assert_eq!(
                c.fields.get("app_env"),
                Some("prod"),
                "the environment came within inspect_wait"
            );
        }
        assert_eq!(inspects.load(Ordering::SeqCst), 1, "one list for five first sights");
        assert!(matches!(cache.lookup("abc"), Lookup::Hit(_)));
    }

    /// Docker holds an exiting container's inspect until its logs have drained — into
    /// berth. The lookup must not depend on it: here inspect never answers. Without `env`
    /// the list answers at once; with it, the first sight waits `inspect_wait` for the
    /// environment, then takes the entry without it, and later lookups wait no more.
    #[tokio::test]
    async fn lookup_does_not_wait_for_a_stuck_inspect() {
        for with_env in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (socket, _) = fake_engine(dir.path(), Duration::from_secs(3600), "img:1").await;
            let mut cfg = cfg();
            cfg.inspect_wait = Duration::from_millis(500);
            if !with_env {
                cfg.env.clear();
            }
            let cache = Arc::new(DockerCache::new(cfg, Arc::new(Metrics::new())));
            *cache.client.write().unwrap() = Some(Docker::connect_with_host(&socket).unwrap());
            let t = std::time::Instant::now();
            let c = match cache.lookup("abc") {
                Lookup::Wait(rx) => cache.wait("abc", rx).await,
                _ => panic!("first sight waits for the lookup"),
            };
            let c = c.expect("found in the list");
            let took = t.elapsed();
            assert!(
                took < Duration::from_millis(if with_env { 1500 } else { 450 }),
                "with env {with_env}: {took:?}"
            );
            assert_eq!(c.fields.get("ecs_cluster"), Some("c1"));
            assert_eq!(c.fields.get("image"), Some("img:1"));
            assert_eq!(c.fields.get("app_env"), None);
            if with_env {
                assert!(took >= Duration::from_millis(450), "waited for the environment: {took:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                matches!(cache.lookup("abc"), Lookup::Hit(_)),
                "past the deadline: no more waits"
            );
        }
    }

    /// Once an image's tag has moved (a redeploy pulled `:latest` again), the list names a
    /// running container's image by id; the inspect tells the name it was created from.
    #[tokio::test]
    async fn image_named_by_id_in_the_list_is_completed_by_inspect() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) =
            fake_engine(dir.path(), Duration::from_millis(100), "sha256:0123abcd").await;
        let mut cfg = cfg();
        cfg.env.clear();
        let cache = Arc::new(DockerCache::new(cfg, Arc::new(Metrics::new())));
        *cache.client.write().unwrap() = Some(Docker::connect_with_host(&socket).unwrap());
        let c = match cache.lookup("abc") {
            Lookup::Wait(rx) => cache.wait("abc", rx).await,
            _ => panic!("first sight waits for the lookup"),
        };
        assert_eq!(c.expect("found").fields.get("image"), Some("img:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn lru_bound_and_removed_entries_expire_after_the_grace_period() {
        let m = Arc::new(Metrics::new());
        let cache = Arc::new(DockerCache::new(cfg(), m));
        let put = |id: &str| {
            cache.put(&Inspected { id: id.into(), name: format!("/{id}"), ..Default::default() })
        };
        put("a");
        put("b");
        assert!(matches!(cache.lookup("a"), Lookup::Hit(_)), "a used last");
        put("c");
        assert!(cache.get("b").is_none(), "b was the least recently used");
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        // Docker is not connected: an unknown id is a miss at once, no wait.
        assert!(matches!(cache.lookup("zzz"), Lookup::Miss));

        cache.mark_removed("a");
        tokio::time::advance(Duration::from_secs(59)).await;
        cache.sweep();
        assert!(cache.get("a").is_some(), "still within the grace period");
        assert_eq!(cache.status().removed_containers, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.sweep();
        assert!(cache.get("a").is_none(), "expired");
        assert!(cache.get("c").is_some(), "running containers do not expire");
    }
}
