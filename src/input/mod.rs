//! The Forward input: listeners (TCP and Unix sockets) and the per-connection loop.
//!
//! Owns sockets only. Decoding is `forward::` (pure); what happens to events after `submit`
//! is the pipeline's business. A client's `chunk` is acknowledged only after `submit`
//! returned, i.e. after the pipeline took responsibility for the events.

pub mod activation;
mod budget;
mod connection;

pub use budget::{MemoryBudget, CONNECTION_ALLOWANCE};

use crate::config::{ForwardConfig, ListenAddr};
use crate::forward::handshake::ServerAuth;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot listen on tcp://{addr}: {source}")]
    BindTcp { addr: std::net::SocketAddr, source: io::Error },
    #[error("cannot listen on unix://{}: {source}", path.display())]
    BindUnix { path: PathBuf, source: io::Error },
    #[error("cannot listen on unix://{}: {reason}", path.display())]
    UnixPathInUse { path: PathBuf, reason: &'static str },
    #[error("cannot set mode {mode:o} on unix://{}: {source}", path.display())]
    SocketMode { path: PathBuf, mode: u32, source: io::Error },
    #[error("cannot use the socket systemd passed for {what}: {source}")]
    Inherited { what: String, source: io::Error },
    #[error("systemd passed a socket ({addr}) that no input.forward.listen address names: make the unit's ListenStream= and the config agree")]
    Unmatched { addr: String },
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    /// A Unix socket systemd passed: it owns the file, which berth never removes.
    Inherited {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    /// `tcp://127.0.0.1:24224` or `unix:///run/berth/forward.sock`; for TCP the actual
    /// address, so that port 0 shows the port the OS chose.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp://{a}"),
                Err(_) => "tcp://?".to_string(),
            },
            Listener::Unix { path, .. } | Listener::Inherited { path, .. } => {
                format!("unix://{}", path.display())
            }
        }
    }
}

/// Bind every configured address, failing on the first that cannot be bound. A socket
/// systemd passed (socket activation, see `activation`) is used for the listener with its
/// address instead of binding one.
pub async fn bind(cfg: &ForwardConfig) -> Result<Vec<Listener>, InputError> {
    use activation::InheritedAddr;
    let mut inherited = activation::take();
    let mut out = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        let found = inherited.iter().position(|i| match (&i.addr, addr) {
            (InheritedAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
            (InheritedAddr::Tcp(a), ListenAddr::Tcp(b)) => a == b,
            _ => false,
        });
        if let Some(i) = found {
            let fd = inherited.remove(i).fd;
            let adopt = |e: io::Error| InputError::Inherited { what: describe(addr), source: e };
            out.push(match addr {
                ListenAddr::Tcp(_) => {
                    let l = std::net::TcpListener::from(fd);
                    l.set_nonblocking(true).map_err(adopt)?;
                    Listener::Tcp(TcpListener::from_std(l).map_err(adopt)?)
                }
                ListenAddr::Unix(p) => {
                    let l = std::os::unix::net::UnixListener::from(fd);
                    l.set_nonblocking(true).map_err(adopt)?;
                    Listener::Inherited {
                        listener: UnixListener::from_std(l).map_err(adopt)?,
                        path: p.clone(),
                    }
                }
            });
            tracing::info!(listener = %describe(addr), "listening on the socket systemd passed");
            continue;
        }
        out.push(match addr {
            ListenAddr::Tcp(a) => Listener::Tcp(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| InputError::BindTcp { addr: *a, source })?,
            ),
            ListenAddr::Unix(p) => bind_unix(p, cfg.socket_mode).await?,
        });
    }
    if let Some(extra) = inherited.first() {
        return Err(InputError::Unmatched { addr: format!("{:?}", extra.addr) });
    }
    Ok(out)
}

fn describe(addr: &ListenAddr) -> String {
    match addr {
        ListenAddr::Tcp(a) => format!("tcp://{a}"),
        ListenAddr::Unix(p) => format!("unix://{}", p.display()),
    }
}

async fn bind_unix(path: &Path, mode: u32) -> Result<Listener, InputError> {
    let bind_err = |source| InputError::BindUnix { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket file left by a previous run is replaced; one that still answers
            // belongs to a live process and is not stolen.
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(InputError::UnixPathInUse {
                    path: path.to_path_buf(),
                    reason: "another process is listening on it",
                });
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => {
            return Err(InputError::UnixPathInUse {
                path: path.to_path_buf(),
                reason: "the path exists and is not a socket",
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
    }
    // The socket never exists at `path` with wider permissions than `mode`: it is bound in
    // a private directory (0700) beside it, given its mode there, then renamed into place
    // (atomic, same file system). Binding at `path` and then chmodding it would leave a
    // moment where anyone the umask allows could connect; changing the umask instead is
    // process-wide and races with other threads creating files.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let private = dir.join(format!(".{name}.bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(bind_err)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged).map_err(bind_err)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|source| InputError::SocketMode { path: path.to_path_buf(), mode, source })?;
        std::fs::rename(&staged, path).map_err(bind_err)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    Ok(Listener::Unix { listener: bound?, path: path.to_path_buf() })
}

/// What every connection needs; shared by `Arc`.
pub struct InputContext {
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    pub max_message_size: usize,
    pub idle_timeout: Duration,
    /// With `auth`: the whole handshake must be done this long after the accept.
    pub handshake_timeout: Duration,
    /// A frame must be whole this long after its first byte (budget waits not counted).
    pub frame_timeout: Duration,
    /// Bytes held by every connection of every listener, beyond their allowances.
    pub budget: Arc<MemoryBudget>,
    /// `Some` when `shared_key` is set: the handshake is required.
    pub auth: Option<ServerAuth>,
    /// After shutdown starts, a connection is closed once it has been quiet this long...
    pub drain_quiet: Duration,
    /// ...or once it has been drained this long (a client that never pauses).
    pub drain_max: Duration,
    /// Adds Docker / ECS / EC2 fields to records before they are stored.
    pub enricher: Arc<crate::enrich::Enricher>,
}

impl InputContext {
    pub fn new(cfg: &ForwardConfig, pipeline: Pipeline, metrics: Arc<Metrics>) -> InputContext {
        let auth = (!cfg.shared_key.is_empty()).then(|| ServerAuth {
            shared_key: cfg.shared_key.clone(),
            self_hostname: cfg.self_hostname.clone(),
            users: cfg.users.iter().map(|u| (u.username.clone(), u.password.clone())).collect(),
        });
        InputContext {
            budget: MemoryBudget::new(cfg.memory_budget, Arc::clone(&metrics)),
            pipeline,
            metrics,
            max_message_size: cfg.max_message_size,
            idle_timeout: cfg.idle_timeout,
            handshake_timeout: cfg.handshake_timeout,
            frame_timeout: cfg.frame_timeout,
            auth,
            drain_quiet: Duration::from_millis(300),
            drain_max: Duration::from_secs(3),
            enricher: Arc::new(crate::enrich::Enricher::disabled()),
        }
    }
}

/// Accept on every listener until `shutdown`; then stop accepting, let each connection finish
/// what its client already sent, and return when all connections are closed. Unix socket
/// files are removed on the way out.
///
/// Each listener has its own `max_connections` slots: clients that hold every TCP slot
/// (a neighbour on the host sending a byte now and then) cannot lock the Docker driver out
/// of the Unix socket. A listener whose slots are all taken stops accepting; new clients
/// wait in the kernel's accept queue until a connection closes (and, once that queue is
/// full, their connects are retried or refused by the kernel), rather than being accepted
/// and closed at once.
pub async fn serve(
    listeners: Vec<Listener>,
    ctx: InputContext,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(ctx);
    let connections = TaskTracker::new();
    let accepters = TaskTracker::new();
    let mut unix_paths = Vec::new();
    for listener in listeners {
        if let Listener::Unix { path, .. } = &listener {
            unix_paths.push(path.clone());
        }
        accepters.spawn(accept_loop(
            listener,
            Arc::clone(&ctx),
            Arc::new(Semaphore::new(max_connections)),
            connections.clone(),
            shutdown.clone(),
        ));
    }
    accepters.close();
    accepters.wait().await;
    for p in unix_paths {
        let _ = std::fs::remove_file(p);
    }
    drop(ctx);
    connections.close();
    connections.wait().await;
}

/// The inputs running on a thread of their own: see [`spawn_thread`].
pub struct InputThread {
    done: tokio::sync::oneshot::Receiver<()>,
    abort: CancellationToken,
}

impl InputThread {
    /// Resolves once [`serve`] has returned (or was aborted) and its runtime is gone.
    pub async fn wait(&mut self) {
        let _ = (&mut self.done).await;
    }

    /// Drops every connection now: what was not acked is sent again by its client.
    pub fn abort(&self) {
        self.abort.cancel();
    }
}

/// [`serve`] on a thread of its own, with a single-threaded runtime: the connections read,
/// decode and hand their requests to the buffer there, and the sinks, the admin endpoint
/// and the rest run on the main runtime beside them. On one runtime the connections and
/// the sinks were scattered over its workers and woke each other across threads: with the
/// input on a thread of its own berth took a tenth less CPU per record on two cores (0.307
/// against 0.342 CPU-s per million, medians of five, docs/performance.md). The input thread
/// spent ~0.14 CPU-s per million records of those (45% of berth's samples): one core would
/// take ~7 M records/s, far more than a host's containers log. The listeners move to that
/// thread's event loop.
pub fn spawn_thread(
    listeners: Vec<Listener>,
    ctx: InputContext,
    max_connections: usize,
    shutdown: CancellationToken,
) -> io::Result<InputThread> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Deregistered from the main runtime's event loop here, registered with the input
    // thread's there.
    let std_listeners =
        listeners.into_iter().map(StdListener::from).collect::<io::Result<Vec<_>>>()?;
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let abort = CancellationToken::new();
    let stop = abort.clone();
    std::thread::Builder::new().name("berth-input".into()).spawn(move || {
        rt.block_on(async move {
            let listeners = match std_listeners
                .into_iter()
                .map(StdListener::into_tokio)
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot move the listeners to the input thread");
                    return;
                }
            };
            tokio::select! {
                () = serve(listeners, ctx, max_connections, shutdown) => {}
                () = stop.cancelled() => {}
            }
        });
        // The runtime (and with it every connection still open after an abort) goes
        // before the main runtime hears that the inputs are done.
        drop(rt);
        let _ = done_tx.send(());
    })?;
    Ok(InputThread { done, abort })
}

/// A listener between two runtimes.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix { listener: std::os::unix::net::UnixListener, path: PathBuf, inherited: bool },
}

impl StdListener {
    fn from(l: Listener) -> io::Result<StdListener> {
        Ok(match l {
            Listener::Tcp(l) => StdListener::Tcp(l.into_std()?),
            Listener::Unix { listener, path } => {
                StdListener::Unix { listener: listener.into_std()?, path, inherited: false }
            }
            Listener::Inherited { listener, path } => {
                StdListener::Unix { listener: listener.into_std()?, path, inherited: true }
            }
        })
    }

    /// Inside the runtime that is to poll it.
    fn into_tokio(self) -> io::Result<Listener> {
        Ok(match self {
            StdListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            StdListener::Unix { listener, path, inherited } => {
                let listener = UnixListener::from_std(listener)?;
                if inherited {
                    Listener::Inherited { listener, path }
                } else {
                    Listener::Unix { listener, path }
                }
            }
        })
    }
}

static ACCEPT_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 10);

async fn accept_loop(
    listener: Listener,
    ctx: Arc<InputContext>,
    slots: Arc<Semaphore>,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    let name = listener.describe();
    loop {
        // A slot first: without one, the next client is not accepted at all (it waits in
        // the accept queue) instead of being accepted and closed.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                ctx.metrics
                    .input_connection_waits
                    .get_or_create(&crate::metrics::ListenerLabel { listener: name.clone() })
                    .inc();
                if let Some(n) = ACCEPT_WARN.check() {
                    tracing::warn!(listener = %name, suppressed = n, "max_connections reached: new connections wait until one closes");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = Arc::clone(&slots).acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed.
                        Err(_) => return,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = accept(&listener) => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if let Some(n) = ACCEPT_WARN.check() {
                    tracing::warn!(listener = %listener.describe(), error = %e, suppressed = n, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            ctx.metrics.input_connections.inc();
            match stream {
                Stream::Tcp(s) => {
                    let _ = s.set_nodelay(true);
                    connection::run(s, &peer, &ctx, &shutdown).await
                }
                Stream::Unix(s) => connection::run(s, &peer, &ctx, &shutdown).await,
            }
            ctx.metrics.input_connections.dec();
            drop(permit);
        });
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Stream::Tcp(s), a.to_string()))
        }
        Listener::Unix { listener, path } | Listener::Inherited { listener, path } => {
            let (s, _) = listener.accept().await?;
            let peer = match s.peer_cred() {
                Ok(c) => format!("unix:{} pid={}", path.display(), c.pid().unwrap_or(0)),
                Err(_) => format!("unix:{}", path.display()),
            };
            Ok((Stream::Unix(s), peer))
        }
    }
}
