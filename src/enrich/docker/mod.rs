//! The Docker metadata cache: container id → the fields to add, pre-encoded.
//!
//! A subscriber of the host's one [`Engine`] (`crate::docker`): it holds no connection and
//! follows no events stream of its own (`subscriber`).
//!
//! Filled from the engine's container list — never from inspect alone, see
//! `DockerCache::fetch_into_cache` — on every (re)connection (the running containers), on
//! first sight of an id (concurrent first lookups of one id wait for the same lookup, which
//! runs in its own task so a caller giving up does not cancel it), and on the `start` and
//! `rename` events; `destroy` marks the entry removed, and removed entries expire after
//! `removed_grace_period` so the lines a container logged just before it went are still
//! enriched. Bounded: beyond `max_containers` the least recently used entry is dropped.
//!
//! Docker unreachable (no socket, engine restarting): lookups answer "unknown" at once and
//! records pass through; one warning per outage (the engine's); the engine reconnects with
//! backoff and, once back, lists the containers again (events were missed meanwhile), which
//! the cache catches up from.
//!
//! Never in the way of intake: the hot path takes one short mutex per batch and container,
//! and never waits on Docker for longer than `inspect_wait` (2 s by default).
//!
//! - `entry`: one entry, built from what Docker tells (pure).
//! - `subscriber`: the task that applies the engine's changes and expires entries.

mod entry;
mod subscriber;

/// The label a container sets to have its lines grouped (read by the multiline stage).
pub use crate::reassemble::MULTILINE_LABEL;
pub use entry::{build_container, Container, Inspected};

use crate::config::{DockerEnrichConfig, DockerField};
use crate::docker::{Engine, Found, Summary};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The inspect that completes an entry (environment, image name) may wait this long: Docker
/// answers it only once an exiting container's logs are drained.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an id Docker does not know (404) or whose inspect failed is not asked again.
const MISSING_TTL: Duration = Duration::from_secs(30);
const FAILED_TTL: Duration = Duration::from_secs(5);

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
    engine: Arc<Engine>,
    inner: Mutex<Inner>,
    /// Set once a container with a `berth.multiline.start` label was seen: until then the
    /// multiline stage does not even parse records.
    any_multiline: AtomicBool,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DockerCache {
    /// A cache over `engine`'s containers; [`DockerCache::run`] keeps it fresh. An engine
    /// that is never run (tests, benchmarks) leaves it to [`DockerCache::put`].
    pub fn new(cfg: DockerEnrichConfig, engine: Arc<Engine>, metrics: Arc<Metrics>) -> DockerCache {
        DockerCache {
            cfg,
            engine,
            inner: Mutex::new(Inner { map: HashMap::new(), clock: 0 }),
            any_multiline: AtomicBool::new(false),
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
        let (mut cached, mut removed) = (0, 0);
        for s in lock(&self.inner).map.values() {
            if let Slot::Ready { removed: r, .. } = s {
                cached += 1;
                if r.is_some() {
                    removed += 1;
                }
            }
        }
        let engine = self.engine.status();
        DockerStatus {
            enabled: true,
            socket: engine.socket,
            connected: engine.connected,
            error: engine.error,
            cached_containers: cached,
            removed_containers: removed,
            failed_connects: engine.failed_connects,
        }
    }

    /// Wait (at most `max`) for the engine's first connection attempt, so that a start on
    /// a Docker host enriches the very first records.
    pub async fn wait_first(&self, max: Duration) {
        self.engine.wait_first(max).await;
    }

    /// Find a container; on first sight start its lookup (when Docker is reachable).
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
        if !self.engine.is_connected() {
            return Lookup::Miss;
        }
        let (tx, rx) = watch::channel(false);
        self.insert(&mut inner, id.to_string(), Slot::Pending(rx.clone()));
        drop(inner);
        let this = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Some(mut inspect) = this.fetch_into_cache(&id).await {
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

    /// Look `id` up in the container list (first sight) and store what was learnt. Returns
    /// the running inspect that completes the entry, if any.
    ///
    /// The list, not inspect: Docker answers inspect under the container's lock, which it
    /// holds while an exiting container's logs drain (up to 10 s and more) — and they drain
    /// into berth, whose connection would be waiting for this very answer. The list is
    /// served from a snapshot without that lock. It lacks the environment, and names the
    /// image by id once its tag has moved: an inspect completes those when they are needed
    /// ([`Self::complete`]); lookups wait for it at most `inspect_wait`.
    async fn fetch_into_cache(self: &Arc<Self>, id: &str) -> Option<watch::Receiver<bool>> {
        let limit = crate::docker::REQUEST_TIMEOUT.max(self.cfg.inspect_wait);
        let found = match self.engine.find(id, limit).await {
            Ok(Some(s)) => Found::Listed(s),
            Ok(None) => Found::Gone,
            Err(e) => Found::Failed(e.to_string()),
        };
        self.learn(id, found)
    }

    /// Store what the list said of `id` (the entry, or a negative entry). Returns the
    /// running inspect that completes the entry, if any.
    fn learn(self: &Arc<Self>, id: &str, found: Found) -> Option<watch::Receiver<bool>> {
        let failed = match found {
            Found::Listed(s) => {
                let mut inner = lock(&self.inner);
                return self.store(&mut inner, &s);
            }
            Found::Gone => false,
            Found::Failed(why) => {
                self.failed("container lookup", id, &why);
                true
            }
        };
        let mut inner = lock(&self.inner);
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
    fn store(self: &Arc<Self>, inner: &mut Inner, s: &Summary) -> Option<watch::Receiver<bool>> {
        let mut found = Inspected::from_summary(s);
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
            self.complete(found.id.clone(), tx);
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
    fn complete(self: &Arc<Self>, id: String, done: watch::Sender<bool>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let info = match this.engine.inspect(&id, COMPLETE_TIMEOUT).await {
                Ok(info) => Some(Inspected::from_inspect(info)),
                Err(e) => {
                    this.failed("inspect", &id, &e);
                    None
                }
            };
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

    /// A failed Docker call, counted and logged (at debug: the outage itself is warned of
    /// once, by the engine).
    fn failed(&self, what: &str, id: &str, why: &dyn std::fmt::Display) {
        self.metrics.enrich_docker_errors.inc();
        tracing::debug!(container_id = id, error = %why, "docker {what} failed");
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
mod tests;
