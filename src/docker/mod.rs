//! The host's Docker engine, shared: one connection, one events stream, one container list,
//! for every part of berth that needs to know the containers (the enrichment cache today,
//! capacity next).
//!
//! [`Engine::run`] is the only task that talks to the engine on its own account: it
//! connects (the configured socket, else `$DOCKER_HOST`, else `/var/run/docker.sock`; see
//! [`connect()`]), follows the container events (`start`, `die`, `destroy`, `rename`), and on
//! every (re)connection lists every container, because events were missed meanwhile. Each
//! `start` and `rename` is looked up in the list (one filtered list call, see [`Summary`]
//! for why the list and not inspect), so subscribers get the container with the event.
//! Unreachable (no socket, engine restarting): one warning per outage, reconnect with a
//! doubling backoff (0.5 s to 30 s, no jitter: the engine is this host's alone).
//!
//! Subscribers ([`Engine::subscribe`]) get a [`Snapshot`] of the container list as it is
//! now and a `broadcast` of every [`Change`] after it, all in the order the engine told
//! them. The snapshot is updated before a change is broadcast, so a change may repeat what
//! the snapshot already shows (apply changes idempotently) but none is missed. A subscriber
//! that falls behind (`RecvError::Lagged`) rebuilds from [`Engine::snapshot`], as after a
//! reconnection. What the list lacks is asked for on demand, bounded: [`Engine::find`] (one
//! container in the list), [`Engine::inspect`] and [`Engine::resources`] (an inspect, shared
//! limit of [`INSPECTS`] at once).
//!
//! Never in the log path: nothing here is awaited by the input except through a subscriber
//! that bounds its own waits. An inspect can wait for an exiting container's logs to drain
//! into berth (see [`Summary`]): call it off the log path, with a timeout.

mod connect;
mod container;
mod events;
pub mod labels;

pub use connect::{connect, resolve_host, DEFAULT_SOCKET, HOST_ENV};
pub use container::{Found, Resources, Summary};

use bollard::models::ContainerInspectResponse;
use bollard::Docker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Semaphore};

/// A Docker call (connect, list, inspect) that takes longer than this failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Inspects running at once, for every subscriber together (a start on a busy host queues
/// the rest rather than piling onto the engine).
pub const INSPECTS: usize = 4;
/// Changes a subscriber may fall behind by before it lags and must rebuild from the
/// snapshot. A host starts at most a few hundred containers at once.
const CHANGES: usize = 1024;
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to the docker engine at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("connecting to the docker engine at {host} timed out")]
    ConnectTimeout { host: String },
    #[error("the docker engine is not connected")]
    NotConnected,
    #[error("docker {what} {id} timed out")]
    Timeout { what: &'static str, id: String },
    #[error("docker {what} {id} failed: {source}")]
    Call {
        what: &'static str,
        id: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Where to find the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// `unix:///path`, `tcp://HOST:PORT` or `http://HOST:PORT`; `None`: `$DOCKER_HOST`, else
    /// [`DEFAULT_SOCKET`].
    pub socket: Option<String>,
    /// The bound of each call the events task makes (connect, the lists).
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options { socket: None, request_timeout: REQUEST_TIMEOUT }
    }
}

/// Every container the engine has, by id.
pub type Containers = Arc<HashMap<String, Summary>>;

/// The container list as the events task knows it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Connected now. While not, `containers` is what was known before the outage.
    pub connected: bool,
    /// Bumped on every connection whose list succeeded: `containers` was listed then, and
    /// kept up to date by the events since.
    pub listed: u64,
    pub containers: Containers,
}

/// What happened, in the engine's order.
#[derive(Debug, Clone)]
pub enum Change {
    /// (Re)connected and listed every container (all states). Events were missed before:
    /// rebuild from this (what is not in it is gone).
    Listed(Containers),
    /// (Re)connected, but the list failed: the reason. Events follow as usual.
    ListFailed(String),
    /// A container started: what the list says of it now.
    Started { id: String, found: Found },
    /// A container was renamed: the list's entry, with the event's own word on the new name.
    Renamed { id: String, found: Found },
    /// A container's process exited (it may start again).
    Died(String),
    /// A container was removed.
    Destroyed(String),
    /// The connection is lost: a `Listed` (or `ListFailed`) follows once it is back.
    Disconnected,
}

/// What [`Engine::subscribe`] returns: the list now, and every change after it.
pub struct Subscription {
    pub snapshot: Snapshot,
    pub changes: broadcast::Receiver<Change>,
}

/// The connection state, for warnings and `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    pub socket: String,
    pub connected: bool,
    /// The last connection error while not connected.
    pub error: Option<String>,
    /// Connection attempts that failed since start.
    pub failed_connects: u64,
}

/// The shared engine connection. Build one per host ([`Engine::new`]), run it
/// ([`Engine::run`]), and hand an `Arc` of it to every subscriber.
pub struct Engine {
    socket: String,
    request_timeout: Duration,
    client: RwLock<Option<Docker>>,
    error: Mutex<Option<String>>,
    failed_connects: AtomicU64,
    /// Set once the first connection attempt is over (success or not).
    first: watch::Sender<bool>,
    snapshot: watch::Sender<Snapshot>,
    changes: broadcast::Sender<Change>,
    inspects: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Not connected until [`Engine::run`] is.
    pub fn new(opts: Options) -> Engine {
        Engine {
            socket: resolve_host(opts.socket.as_deref()),
            request_timeout: opts.request_timeout,
            client: RwLock::new(None),
            error: Mutex::new(None),
            failed_connects: AtomicU64::new(0),
            first: watch::channel(false).0,
            snapshot: watch::channel(Snapshot::default()).0,
            changes: broadcast::channel(CHANGES).0,
            inspects: Arc::new(Semaphore::new(INSPECTS)),
        }
    }

    /// The engine's address, resolved.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The list now and every change after it (see the module doc for the guarantees).
    pub fn subscribe(&self) -> Subscription {
        // Subscribe first: a change sent meanwhile is then in both, never in neither.
        let changes = self.changes.subscribe();
        Subscription { snapshot: self.snapshot(), changes }
    }

    /// The container list as known now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// The snapshot, to await its updates (capacity: re-read when the containers change).
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    pub fn is_connected(&self) -> bool {
        self.client.read().map(|c| c.is_some()).unwrap_or(false)
    }

    pub fn status(&self) -> EngineStatus {
        let connected = self.is_connected();
        EngineStatus {
            socket: self.socket.clone(),
            connected,
            error: if connected { None } else { lock(&self.error).clone() },
            failed_connects: self.failed_connects.load(Ordering::Relaxed),
        }
    }

    /// Wait (at most `max`) for the first connection attempt, so that a start on a Docker
    /// host knows its containers for the very first records.
    pub async fn wait_first(&self, max: Duration) {
        let mut rx = self.first.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|d| *d)).await;
    }

    fn client(&self) -> Result<Docker, DockerError> {
        self.client.read().ok().and_then(|c| c.clone()).ok_or(DockerError::NotConnected)
    }

    /// The container with exactly this id, from the list (all states); `None` when Docker
    /// does not have it. Bounded by `timeout`. Does not wait for an exiting container's
    /// logs (see [`Summary`]).
    pub async fn find(&self, id: &str, timeout: Duration) -> Result<Option<Summary>, DockerError> {
        let client = self.client()?;
        bounded("container lookup", id, timeout, container::list_one(&client, id)).await
    }

    /// Inspect a container, bounded by `timeout` (not counting the wait for one of the
    /// [`INSPECTS`] shared permits). Docker answers only once an exiting container's logs
    /// have drained — into berth: never await this on the log path.
    pub async fn inspect(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<ContainerInspectResponse, DockerError> {
        let client = self.client()?;
        // The semaphore is never closed.
        let _permit = Arc::clone(&self.inspects).acquire_owned().await;
        bounded("inspect", id, timeout, client.inspect_container(id, None)).await
    }

    /// A container's resource settings (`HostConfig`: memory limit and reservation, CPU
    /// shares, cgroup parent), from an inspect: see [`Engine::inspect`] for the caveats.
    pub async fn resources(&self, id: &str, timeout: Duration) -> Result<Resources, DockerError> {
        Ok(Resources::from_inspect(&self.inspect(id, timeout).await?))
    }

    /// Connected: lookups may go to `client`. Logs the recovery after an outage.
    pub(crate) fn set_connected(&self, client: Docker) {
        if let Ok(mut c) = self.client.write() {
            *c = Some(client);
        }
        if lock(&self.error).take().is_some() {
            tracing::info!(socket = %self.socket, "docker engine reachable again: records are enriched");
        } else {
            tracing::info!(socket = %self.socket, "connected to the docker engine");
        }
        self.snapshot.send_modify(|s| s.connected = true);
        self.first.send_replace(true);
    }

    /// Called on every failure; logs once per outage.
    fn set_disconnected(&self, why: String) {
        let was = self.client.write().map(|mut c| c.take().is_some()).unwrap_or(false);
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
        self.snapshot.send_modify(|s| s.connected = false);
        if was {
            self.publish(Change::Disconnected);
        }
        self.first.send_replace(true);
    }

    /// Broadcast a change (after the snapshot has it). Nobody subscribed is fine.
    fn publish(&self, change: Change) {
        let _ = self.changes.send(change);
    }
}

/// A Docker call bounded by `timeout`, its errors named.
async fn bounded<T>(
    what: &'static str,
    id: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DockerError::Call { what, id: id.to_string(), source }),
        Err(_) => Err(DockerError::Timeout { what, id: id.to_string() }),
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
