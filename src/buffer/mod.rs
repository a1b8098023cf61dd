//! The durable buffer: an append-only, segmented log of events on disk between the inputs
//! and the sinks. A batch acknowledged to a client is in this log and stays until every
//! sink has delivered it.
//!
//! # Invariants
//!
//! - **Offsets count events.** Events are numbered 0, 1, 2, … for the life of the buffer
//!   directory (u64, never reused once durable). `(instance_id, offset)` identifies an event
//!   for ever: `instance_id` is a random u64 written to `<path>/instance-id`, bound to the
//!   host in `<path>/host-id`; a buffer found written on another host (a copied disk
//!   image) takes a new one, so two hosts never share ids (see `identity.rs`).
//! - **Entries.** One entry per appended `Batch`, covering offsets `[first, first+count)`:
//!   `magic u32 | body_len u32 | head_crc u32 | body`, body =
//!   `first_offset u64 | count u32 | tag_len u16 | tag | chunks | events`, chunks =
//!   `chunk_count u32 | stored_at u64 | chunk_key u64 * chunk_count` (the Forward requests
//!   whose events these are, see [`chunks`]), each event
//!   `crc u32 | secs i64 | nanos u32 | record_len u32 | record | metadata_len u32 | metadata`,
//!   all little-endian (see [`record`]). Records are stored as received. `head_crc` covers
//!   `body_len` and the body up to the end of the chunk keys (offsets included); each
//!   event's `crc` covers the rest of that event. Entries in a segment are dense: the first starts
//!   at the segment's name, each next one where the one before ends; gaps exist only where
//!   damaged entries were skipped, and between segments (recovery starts a new segment
//!   when the head moves past the newest one's end). Entries of the previous formats
//!   (version 2: no chunk keys; version 1: one CRC over the whole body, no event CRCs) are
//!   still read, never written.
//! - **Segments.** `<path>/segments/<first offset, 20 digits>.seg`; every entry in a
//!   segment has offsets ≥ its name. Only the writer thread appends, and only to the newest
//!   (active) segment; it starts a new one when the active one reaches `segment_size`.
//!   A segment other than the active one is deleted (by the janitor thread, so that the
//!   writer never waits for an unlink) only when every known sink's committed
//!   cursor is ≥ the next segment's first offset (its end). A sink is known once it has a
//!   cursor file; a buffer with no known sink deletes nothing.
//! - **Durability.** `append` resolves `Ok` only after its entry is written and, unless
//!   `sync = "never"`, fsynced. Readers see only entries up to the durable head (published
//!   through a `watch` after the fsync, also with `never`), so a sink never delivers what a
//!   crash could take back — and a host crash never hands a delivered offset (an
//!   Elasticsearch `_id`) to a new event.
//!   A failed write is truncated away before its caller hears `Err`: no torn entry is ever
//!   followed by a good one in the active segment.
//! - **Cursors.** `<path>/cursors/<sink>` holds a committed offset: every event below it was
//!   delivered by that sink. Sinks acknowledge ranges in any order; the cursor advances over
//!   the contiguous acknowledged prefix only, and never goes backwards. Each advance overwrites
//!   the file's 16 bytes in place (survives the process being killed); the janitor thread fsyncs
//!   changed cursors every [`CURSOR_SYNC_INTERVAL`], the writer at close, and a reader fsyncs its
//!   cursor when it reports the end after close (sinks deliver and ack after close). So a host crash may
//!   redeliver at most the events acknowledged in the last interval (at-least-once); a
//!   cursor file found damaged is treated as "nothing delivered" (the oldest offset).
//! - **Recovery.** `Buffer::open` scans every segment. An entry whose header is damaged
//!   (bad magic, length or header CRC) is stepped over by searching for the next magic that
//!   starts a valid entry; the events it held are counted as lost in the [`RecoveryReport`].
//!   Records are client bytes and may hold complete entries, so only what berth wrote is
//!   believed (see [`segment`]): an entry whose body runs past the end of the newest segment
//!   is a torn write, and the scan ends there instead of searching its body; an entry found
//!   after damaged bytes is taken only if it continues the offsets, with a gap of at most
//!   what those bytes could hold (never a jump towards `u64::MAX`).
//!   An event whose own CRC fails inside a valid entry is lost alone: it is counted
//!   (`damaged_events`, part of `lost_events`), and readers hand out a tombstone in its
//!   place, which sinks skip and acknowledge, so offsets stay dense and the entry's other
//!   events are delivered (after a damaged length field the walk resumes at the next
//!   event whose own CRC verifies: see [`record`]). Bytes after the last valid entry of the newest segment (a torn write) are
//!   truncated. Every entry whose append returned `Ok` before a crash is read back. The
//!   next offset is one past the last valid entry (or past every cursor, whichever is
//!   larger), so cursors stay meaningful.
//! - **One owner.** `<path>/lock` is `flock`ed for the life of the `Buffer` (the kernel
//!   drops it when the process dies): a second process cannot open the same directory.
//! - **Bounded memory.** Readers read entries from disk in bounded chunks (one chunk plus
//!   one entry); nothing is kept in memory for a slow sink. The newest durable entries
//!   (`tail_bytes` of them, 8 MiB by default) stay in memory, shared by the readers that
//!   keep up, which take them from there instead of reading them back (see `tail`).
//!
//! # Use
//! `append` from the inputs (ack the client on `Ok` only), `reader(sink)` once per sink,
//! `close` at shutdown. Every sink reads every event: a sink must acknowledge every offset
//! it receives, including the ones its tag pattern filters out, or its cursor stops there.
//! In place of `pipeline`: `Pipeline::submit` → [`Buffer::append`], `SinkReader::recv` →
//! [`Reader::next`], `ack(seq)` → [`Reader::ack`]`(first, count)` or an [`Acker`].

pub mod chunks;
pub mod cursor;
mod identity;
pub mod inspect;
mod janitor;
mod reader;
pub mod record;
mod recover;
pub mod segment;
pub mod storage;
mod tail;
#[cfg(test)]
mod tests;
mod writer;

pub use identity::{HostId, HostIdSources};
pub use reader::{Acker, Counted, ReadBatch, Reader};
pub use storage::{DiskStorage, FaultyStorage, Storage};
pub use tail::TAIL_BYTES;

use crate::event::{Batch, EventTime};
use cursor::SinkCursor;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};

/// How often changed cursors are fsynced.
pub const CURSOR_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// When an append's entry must be on disk before `append` resolves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// One fsync per group of pending appends (group commit).
    #[default]
    Batch,
    /// One fsync per append.
    Always,
    /// Resolve after write(2); fsync every `sync_interval` in the background. Survives a
    /// killed process, not a host crash.
    Never,
}

/// What `append` does when the segments would exceed `max_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for sinks to free space (the caller stops reading its socket).
    #[default]
    Block,
    /// Fail at once with [`BufferError::Full`]; the caller must not ack.
    DropNewest,
}

#[derive(Clone, Debug)]
pub struct BufferOptions {
    /// Directory holding `instance-id`, `segments/` and `cursors/`.
    pub path: PathBuf,
    /// Total bytes of segment files allowed on disk.
    pub max_size: u64,
    /// A segment is closed and a new one started past this size. At most `max_size / 2`.
    pub segment_size: u64,
    pub sync: SyncMode,
    /// With `sync = "never"`, the longest written data waits for an fsync. With `batch`
    /// the writer fsyncs every group as soon as it is written (the next group forms while
    /// that fsync runs), so no append waits longer than one write and fsync.
    pub sync_interval: Duration,
    pub when_full: WhenFull,
    /// Where the host's identity is read, to which the instance id is bound (see
    /// `identity.rs`).
    pub host_id: HostIdSources,
    /// Bytes of the newest durable entries kept in memory for the readers at the head
    /// (see `tail`); 0 keeps none, so every reader reads the files.
    pub tail_bytes: usize,
    /// Segments written with direct I/O where the filesystem takes it (see
    /// `storage::DirectFile`); by [`Buffer::open`], not by `open_with_storage`.
    pub direct_io: bool,
}

impl BufferOptions {
    /// Defaults: 1 GiB, 64 MiB segments, group commit, block when full, the host's
    /// identity from `/etc/machine-id` and the EC2 instance id in DMI, an 8 MiB tail, direct
    /// I/O.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BufferOptions {
            path: path.into(),
            max_size: 1 << 30,
            segment_size: 64 << 20,
            sync: SyncMode::Batch,
            sync_interval: Duration::from_millis(200),
            when_full: WhenFull::Block,
            host_id: HostIdSources::default(),
            tail_bytes: tail::TAIL_BYTES,
            direct_io: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("invalid buffer options: {0}")]
    InvalidOptions(&'static str),
    #[error("cannot lock buffer {path} (is another berth using it?): {source}")]
    Locked { path: PathBuf, source: io::Error },
    #[error("cannot create buffer directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot list buffer directory {path}: {source}")]
    ListDir { path: PathBuf, source: io::Error },
    #[error("cannot fsync directory {path}: {source}")]
    SyncDir { path: PathBuf, source: io::Error },
    #[error("cannot read or write instance id {path}: {source}")]
    InstanceId { path: PathBuf, source: io::Error },
    #[error("cannot open segment {path}: {source}")]
    OpenSegment { path: PathBuf, source: io::Error },
    #[error("cannot read segment {path}: {source}")]
    ReadSegment { path: PathBuf, source: io::Error },
    #[error("cannot truncate segment {path}: {source}")]
    TruncateSegment { path: PathBuf, source: io::Error },
    #[error("cannot write segment {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot fsync segment {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot write cursor {path}: {source}")]
    WriteCursor { path: PathBuf, source: io::Error },
    #[error("cannot encode entry: {0}")]
    Encode(#[from] record::RecordError),
    #[error("buffer is full ({max_size} bytes)")]
    Full { max_size: u64 },
    #[error("invalid sink name {0:?} (allowed: A-Z a-z 0-9 _ . -)")]
    SinkName(String),
    #[error("sink {0:?} already has a reader")]
    ReaderExists(String),
    #[error("cannot start a buffer thread (writer or janitor): {0}")]
    SpawnThread(io::Error),
    #[error("the buffer is closed")]
    Closed,
}

/// What `open` found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub entries: u64,
    pub events: u64,
    /// Bytes stepped over inside segments because they formed no valid entry.
    pub corrupt_bytes: u64,
    /// Events lost to damage: offsets missing between valid entries, plus
    /// `damaged_events`.
    pub lost_events: u64,
    /// Events inside valid entries whose own CRC failed: readers hand out tombstones in
    /// their place (sinks skip and acknowledge them).
    pub damaged_events: u64,
    /// Bytes cut from the end of the newest segment (a torn write).
    pub truncated_bytes: u64,
    /// Cursor files that could not be read and were reset to the oldest offset.
    pub bad_cursors: usize,
    /// The buffer was written on another host (`host-id` names another machine or EC2
    /// instance: a disk image copied between instances) and took a new instance id.
    pub host_changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkStats {
    pub name: String,
    pub committed: u64,
    pub lag_events: u64,
    /// Time of the first event of the oldest entry handed to the sink and not yet
    /// acknowledged; `None` when nothing is in flight (backlog not read yet, or none).
    pub oldest_undelivered: Option<EventTime>,
}

#[derive(Clone, Debug)]
pub struct BufferStats {
    pub instance_id: u64,
    /// Next offset to be assigned: one past the newest durable event.
    pub head: u64,
    /// First offset of the oldest segment on disk.
    pub oldest: u64,
    pub total_bytes: u64,
    pub total_events: u64,
    pub segments: usize,
    pub healthy: bool,
    /// Events refused by `append` with `Full` (`when_full = "drop_newest"`).
    pub dropped_full: u64,
    /// Events refused by `append` because their entry could not be encoded (tag over
    /// 65535 bytes, entry over `max_size / 2` or the 128 MiB entry limit).
    pub dropped_invalid: u64,
    /// Appends (groups) that failed on a write or fsync error.
    pub write_errors: u64,
    pub segment_fsyncs: u64,
    /// Bytes of entries written to segments since start (what the disk was given).
    pub written_bytes: u64,
    pub recovery: RecoveryReport,
    pub sinks: Vec<SinkStats>,
}

/// An entry handed to the writer: resolves with its offsets once durable, or with the
/// write error (the entry is then not in the log: the caller may enqueue it again).
#[derive(Debug)]
pub enum Appending {
    Pending(oneshot::Receiver<Result<Range<u64>, BufferError>>),
    Done(Option<Result<Range<u64>, BufferError>>),
}

impl Appending {
    /// `Some` once the outcome is known, without waiting.
    pub fn try_result(&mut self) -> Option<Result<Range<u64>, BufferError>> {
        match self {
            Appending::Done(r) => r.take(),
            Appending::Pending(rx) => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(BufferError::Closed)),
            },
        }
    }
}

impl std::future::Future for Appending {
    type Output = Result<Range<u64>, BufferError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Appending::Done(r) => {
                std::task::Poll::Ready(r.take().unwrap_or(Err(BufferError::Closed)))
            }
            Appending::Pending(rx) => {
                std::pin::Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(BufferError::Closed)))
            }
        }
    }
}

/// What readers know of the log's durable end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Durable {
    /// Every offset below this is durable (or lost to damage).
    head: u64,
    active_first: u64,
    /// Bytes of the active segment that are durable.
    active_len: u64,
    closed: bool,
}

struct SegmentInfo {
    path: PathBuf,
    /// Valid bytes: the readers' limit. For the active segment, see `Durable::active_len`.
    len: u64,
}

enum Msg {
    Append(AppendReq),
    Close(oneshot::Sender<Result<(), BufferError>>),
    /// Stop without the closing fsyncs: what a crash would leave, minus the data loss.
    Abandon,
}

struct AppendReq {
    entry: Vec<u8>,
    reply: oneshot::Sender<Result<Range<u64>, BufferError>>,
}

struct Shared {
    opts: BufferOptions,
    storage: Arc<dyn Storage>,
    instance_id: u64,
    segments_dir: PathBuf,
    cursors_dir: PathBuf,
    segments: Mutex<BTreeMap<u64, SegmentInfo>>,
    durable: watch::Sender<Durable>,
    /// Bytes of segments on disk plus bytes reserved by appends in flight.
    used: AtomicU64,
    space: Notify,
    healthy: AtomicBool,
    closed: AtomicBool,
    cursors: Mutex<HashMap<String, Arc<SinkCursor>>>,
    /// End offset of the oldest deletable-when-passed segment: acks past it wake the GC.
    gc_hint: AtomicU64,
    tx: mpsc::Sender<Msg>,
    janitor: mpsc::Sender<janitor::JanitorMsg>,
    dropped_full: AtomicU64,
    dropped_invalid: AtomicU64,
    write_errors: AtomicU64,
    segment_fsyncs: AtomicU64,
    written_bytes: AtomicU64,
    recovery: RecoveryReport,
    /// Which Forward requests are stored (see `chunks`).
    chunks: Arc<chunks::RecentChunks>,
    /// The newest durable entries, for readers at the head (see `tail`).
    tail: tail::Tail,
}

impl Shared {
    fn segments(&self) -> MutexGuard<'_, BTreeMap<u64, SegmentInfo>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursors(&self) -> MutexGuard<'_, HashMap<String, Arc<SinkCursor>>> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: Msg) -> Result<(), BufferError> {
        self.tx.send(msg).map_err(|_| BufferError::Closed)
    }

    /// Asks the janitor to delete the segments every sink has passed.
    fn gc(&self) {
        let _ = self.janitor.send(janitor::JanitorMsg::Gc);
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        let max = self.opts.max_size;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= max).then_some(u + bytes)
            })
            .is_ok()
    }

    /// fsyncs every cursor changed since its last fsync; the first error, after trying
    /// them all.
    fn sync_cursors(&self) -> Result<(), BufferError> {
        let cursors: Vec<Arc<SinkCursor>> = self.cursors().values().cloned().collect();
        let mut res = Ok(());
        for c in cursors {
            if let Err(e) = c.sync() {
                res = res.and(Err(e));
            }
        }
        res
    }

    fn min_committed(&self) -> Option<u64> {
        self.cursors().values().map(|c| c.committed()).min()
    }

    fn oldest(&self) -> u64 {
        let head = self.durable.borrow().head;
        self.segments().keys().next().copied().unwrap_or(head).min(head)
    }
}

/// The buffer. Cheap to clone; the writer thread stops when `close` is called or the last
/// clone is dropped (without the closing fsyncs, like a crash).
#[derive(Clone)]
pub struct Buffer {
    shared: Arc<Shared>,
    _handle: Arc<WriterHandle>,
}

struct WriterHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    janitor: Mutex<Option<JoinHandle<()>>>,
    /// `<path>/lock`, released after the writer has stopped.
    _lock: Box<dyn Send + Sync>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        let _ = self.shared.send(Msg::Abandon);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Joined so a buffer reopened on the same path never races the old writer.
            let _ = t.join();
        }
        let _ = self.shared.janitor.send(janitor::JanitorMsg::Stop);
        if let Some(t) = self.janitor.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Nor its janitor deleting segments.
            let _ = t.join();
        }
    }
}

impl Buffer {
    /// Opens (creating or recovering) the buffer at `opts.path` on the real filesystem.
    pub fn open(opts: BufferOptions) -> Result<(Buffer, RecoveryReport), BufferError> {
        let storage = DiskStorage { direct_io: opts.direct_io };
        Self::open_with_storage(opts, Arc::new(storage))
    }

    pub fn open_with_storage(
        opts: BufferOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<(Buffer, RecoveryReport), BufferError> {
        if opts.segment_size == 0 || opts.segment_size > opts.max_size / 2 {
            // A full buffer frees space only by deleting sealed segments; with two or more
            // segments' room the active one can always be sealed and passed.
            return Err(BufferError::InvalidOptions(
                "segment_size must be > 0 and at most max_size / 2",
            ));
        }
        if opts.sync_interval.is_zero() {
            return Err(BufferError::InvalidOptions("sync_interval must be > 0"));
        }
        let existed = opts.path.is_dir();
        storage
            .create_dir_all(&opts.path)
            .map_err(|source| BufferError::CreateDir { path: opts.path.clone(), source })?;
        if !existed {
            // A new buffer directory must itself survive a host crash, or everything
            // acknowledged into it could vanish with its directory entry.
            if let Some(parent) = opts.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                storage.sync_dir(parent).map_err(|source| BufferError::SyncDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        let lock_path = opts.path.join("lock");
        let lock = storage
            .lock(&lock_path)
            .map_err(|source| BufferError::Locked { path: lock_path, source })?;
        let rec = recover::recover(&opts, storage.as_ref())?;
        let (tx, rx) = mpsc::channel();
        let (janitor_tx, janitor_rx) = mpsc::channel();
        let durable = Durable {
            head: rec.head,
            active_first: rec.active_first,
            active_len: rec.active_len,
            closed: false,
        };
        let (durable_tx, _) = watch::channel(durable);
        let cursors_dir = opts.path.join("cursors");
        let tail_bytes = opts.tail_bytes;
        let cursors = rec
            .cursors
            .iter()
            .map(|(name, off)| {
                (
                    name.clone(),
                    Arc::new(SinkCursor::new(&cursors_dir, name, *off, Arc::clone(&storage))),
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            segments_dir: opts.path.join("segments"),
            cursors_dir,
            opts,
            storage,
            instance_id: rec.instance_id,
            segments: Mutex::new(rec.segments),
            durable: durable_tx,
            used: AtomicU64::new(rec.total_bytes),
            space: Notify::new(),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            cursors: Mutex::new(cursors),
            gc_hint: AtomicU64::new(0),
            tx,
            janitor: janitor_tx,
            dropped_full: AtomicU64::new(0),
            dropped_invalid: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            segment_fsyncs: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            recovery: rec.report.clone(),
            chunks: chunks::RecentChunks::new(chunks::MAX_CHUNKS, chunks::WINDOW, rec.chunks),
            tail: tail::Tail::new(tail_bytes),
        });
        let thread = writer::spawn(Arc::clone(&shared), rx, rec.active_file)?;
        let janitor = match janitor::spawn(Arc::clone(&shared), janitor_rx) {
            Ok(j) => j,
            Err(e) => {
                let _ = shared.send(Msg::Abandon);
                let _ = thread.join();
                return Err(e);
            }
        };
        let handle = Arc::new(WriterHandle {
            shared: Arc::clone(&shared),
            thread: Mutex::new(Some(thread)),
            janitor: Mutex::new(Some(janitor)),
            _lock: lock,
        });
        Ok((Buffer { shared, _handle: handle }, rec.report))
    }

    /// Appends `batch` as one entry. Resolves with its offsets once the entry is durable
    /// (see [`SyncMode`]); only then may the caller acknowledge it. An empty batch takes no
    /// offsets. Cancelling the future does not cancel a write already handed to the writer.
    pub async fn append(&self, batch: &Batch) -> Result<Range<u64>, BufferError> {
        self.enqueue(batch).await?.await
    }

    /// The first half of [`Buffer::append`]: encodes the entry, waits for space
    /// (`when_full = "block"`) and hands it to the writer. Entries are written in the order
    /// `enqueue` calls return, so a connection can hand over its next request before the
    /// previous one is durable and still have them stored, and acknowledged, in order. The
    /// returned [`Appending`] resolves once the entry is durable.
    pub async fn enqueue(&self, batch: &Batch) -> Result<Appending, BufferError> {
        self.enqueue_with_chunks(batch, &[]).await
    }

    /// [`Buffer::enqueue`] of the events of the Forward requests whose keys are `chunks`:
    /// the keys are stored in the entry, so that [`Buffer::chunks`] knows them after a
    /// restart.
    pub async fn enqueue_with_chunks(
        &self,
        batch: &Batch,
        chunks: &[u64],
    ) -> Result<Appending, BufferError> {
        let sh = &self.shared;
        if sh.closed.load(Ordering::Acquire) {
            return Err(BufferError::Closed);
        }
        if batch.is_empty() {
            let h = sh.durable.borrow().head;
            return Ok(Appending::Done(Some(Ok(h..h))));
        }
        let stored_at = if chunks.is_empty() { 0 } else { chunks::unix_now() };
        let entry = match record::encode_with_chunks(batch, chunks, stored_at) {
            Ok(e) if e.len() as u64 <= sh.opts.max_size / 2 => Ok(e),
            Ok(e) => Err(record::RecordError::TooLarge(e.len())),
            Err(e) => Err(e),
        }
        .inspect_err(|_| {
            sh.dropped_invalid.fetch_add(batch.len() as u64, Ordering::Relaxed);
        })?;
        let len = entry.len() as u64;
        loop {
            let notified = sh.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if sh.try_reserve(len) {
                break;
            }
            if sh.opts.when_full == WhenFull::DropNewest {
                sh.dropped_full.fetch_add(batch.len() as u64, Ordering::Relaxed);
                return Err(BufferError::Full { max_size: sh.opts.max_size });
            }
            if sh.closed.load(Ordering::Acquire) {
                return Err(BufferError::Closed);
            }
            notified.await;
        }
        let (reply, rx) = oneshot::channel();
        if let Err(e) = sh.send(Msg::Append(AppendReq { entry, reply })) {
            sh.release(len);
            return Err(e);
        }
        // The writer releases the reservation itself when the write fails.
        Ok(Appending::Pending(rx))
    }

    /// The Forward requests stored recently (rebuilt from the entries at open): the inputs
    /// claim each request here before storing it (see `chunks`).
    pub fn chunks(&self) -> &Arc<chunks::RecentChunks> {
        &self.shared.chunks
    }

    /// The reader of sink `name`, resuming at its committed cursor (or the oldest offset
    /// for a new sink, whose cursor file is created now so segments wait for it).
    pub fn reader(&self, name: &str) -> Result<Reader, BufferError> {
        if !cursor::valid_sink_name(name) {
            return Err(BufferError::SinkName(name.to_owned()));
        }
        let sh = &self.shared;
        let cur = {
            let mut map = sh.cursors();
            match map.get(name) {
                Some(c) => Arc::clone(c),
                None => {
                    let c = Arc::new(SinkCursor::new(
                        &sh.cursors_dir,
                        name,
                        sh.oldest(),
                        Arc::clone(&sh.storage),
                    ));
                    c.create()?;
                    map.insert(name.to_owned(), Arc::clone(&c));
                    c
                }
            }
        };
        if cur.attached.swap(true, Ordering::AcqRel) {
            return Err(BufferError::ReaderExists(name.to_owned()));
        }
        Ok(Reader::new(Arc::clone(sh), cur))
    }

    /// Forgets a sink that is no longer configured, so it stops holding segments.
    pub fn remove_sink(&self, name: &str) -> Result<bool, BufferError> {
        let sh = &self.shared;
        let Some(c) = sh.cursors().remove(name) else { return Ok(false) };
        let path = sh.cursors_dir.join(&c.name);
        match sh.storage.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(BufferError::WriteCursor { path, source }),
        }
        sh.gc();
        Ok(true)
    }

    pub fn instance_id(&self) -> u64 {
        self.shared.instance_id
    }

    pub fn path(&self) -> &Path {
        &self.shared.opts.path
    }

    /// One past the newest durable offset.
    pub fn head(&self) -> u64 {
        self.shared.durable.borrow().head
    }

    /// False after a write or fsync failed, until a later one succeeds.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// True when every known sink has acknowledged everything durable (the moving head).
    pub fn delivered_all(&self) -> bool {
        self.delivered_up_to(self.head())
    }

    /// True when every known sink has acknowledged every offset below `offset`: the drain's
    /// question, with `offset` the head when the host's last task exited (records appended
    /// since — berth's own, a daemon's — do not hold the instance). No sink: true.
    pub fn delivered_up_to(&self, offset: u64) -> bool {
        self.shared.min_committed().is_none_or(|m| m >= offset)
    }

    pub fn stats(&self) -> BufferStats {
        let sh = &self.shared;
        let head = self.head();
        let oldest = sh.oldest();
        let (total_bytes, segments) = {
            let segs = sh.segments();
            (segs.values().map(|s| s.len).sum::<u64>(), segs.len())
        };
        let mut sinks: Vec<SinkStats> = sh
            .cursors()
            .values()
            .map(|c| {
                let committed = c.committed();
                SinkStats {
                    name: c.name.clone(),
                    committed,
                    lag_events: head.saturating_sub(committed.max(oldest)),
                    oldest_undelivered: c.oldest_in_flight(),
                }
            })
            .collect();
        sinks.sort_by(|a, b| a.name.cmp(&b.name));
        BufferStats {
            instance_id: sh.instance_id,
            head,
            oldest,
            total_bytes,
            total_events: head - oldest,
            segments,
            healthy: self.healthy(),
            dropped_full: sh.dropped_full.load(Ordering::Relaxed),
            dropped_invalid: sh.dropped_invalid.load(Ordering::Relaxed),
            write_errors: sh.write_errors.load(Ordering::Relaxed),
            segment_fsyncs: sh.segment_fsyncs.load(Ordering::Relaxed),
            written_bytes: sh.written_bytes.load(Ordering::Relaxed),
            recovery: sh.recovery.clone(),
            sinks,
        }
    }

    /// fsyncs every sink cursor changed since its last fsync. Blocking (call it on the
    /// blocking pool). The janitor thread does this periodically, the writer at close; after close,
    /// sinks still deliver and acknowledge, and a sink stopped before its reader ended
    /// (shutdown deadline) leaves acknowledgements only this makes durable.
    pub fn sync_cursors(&self) -> Result<(), BufferError> {
        self.shared.sync_cursors()
    }

    /// Stops intake, completes the appends already queued, fsyncs the active segment and
    /// every cursor, and stops the writer. Readers then return what is left and `None`.
    pub async fn close(&self) -> Result<(), BufferError> {
        let sh = &self.shared;
        sh.closed.store(true, Ordering::Release);
        sh.space.notify_waiters();
        let (tx, rx) = oneshot::channel();
        sh.send(Msg::Close(tx))?;
        rx.await.unwrap_or(Err(BufferError::Closed))
    }
}
