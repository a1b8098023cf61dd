//! The writer thread: sole owner of the active segment. It takes every append pending,
//! writes them with one writev, fsyncs once and completes them all (group commit) and rolls
//! segments. Deleting segments and the periodic cursor fsyncs are the janitor's.
//!
//! A dedicated OS thread, so an fsync never blocks a tokio worker.

use super::record::{self, HEADER_LEN};
use super::segment::segment_path;
use super::storage::AppendFile;
use super::tail::TailEntry;
use super::{janitor, AppendReq, BufferError, Msg, SegmentInfo, Shared, SyncMode};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

/// Most bytes written by one writev; more pending appends wait for the next group.
const MAX_GROUP_BYTES: u64 = 16 << 20;

pub(super) fn spawn(
    sh: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    active: Box<dyn AppendFile>,
) -> Result<JoinHandle<()>, BufferError> {
    let d = *sh.durable.borrow();
    let active_path = segment_path(&sh.segments_dir, d.active_first);
    let w = Writer {
        sh,
        active,
        active_path,
        active_first: d.active_first,
        active_len: d.active_len,
        head: d.head,
        poisoned: false,
        unsynced: false,
        last_sync: Instant::now(),
    };
    std::thread::Builder::new()
        .name("berth-buffer-writer".into())
        .spawn(move || w.run(rx))
        .map_err(BufferError::SpawnThread)
}

struct Writer {
    sh: Arc<Shared>,
    active: Box<dyn AppendFile>,
    active_path: PathBuf,
    active_first: u64,
    /// Bytes of the active segment that hold complete entries.
    active_len: u64,
    /// Next offset to assign.
    head: u64,
    /// A failed write could not be truncated: the file holds junk past `active_len`, so
    /// the next write goes to a new segment.
    poisoned: bool,
    /// `sync = "never"`: written since the last fsync.
    unsynced: bool,
    last_sync: Instant,
}

/// Copies an error for each caller of a failed group (`io::Error` is not `Clone`).
fn dup(e: &BufferError) -> BufferError {
    fn io_dup(e: &io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        }
    }
    match e {
        BufferError::Write { path, source } => {
            BufferError::Write { path: path.clone(), source: io_dup(source) }
        }
        BufferError::Sync { path, source } => {
            BufferError::Sync { path: path.clone(), source: io_dup(source) }
        }
        BufferError::OpenSegment { path, source } => {
            BufferError::OpenSegment { path: path.clone(), source: io_dup(source) }
        }
        BufferError::SyncDir { path, source } => {
            BufferError::SyncDir { path: path.clone(), source: io_dup(source) }
        }
        _ => BufferError::Closed,
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let tick = self.sh.opts.sync_interval;
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut bytes = 0u64;
            let mut close = None;
            let mut abandon = false;
            let mut next = first;
            while let Some(m) = next.take() {
                match m {
                    Msg::Append(a) => {
                        bytes += a.entry.len() as u64;
                        appends.push(a);
                    }
                    Msg::Close(reply) => close = Some(reply),
                    Msg::Abandon => abandon = true,
                }
                if close.is_none() && !abandon && bytes < MAX_GROUP_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.write_group(appends);
            }
            self.periodic();
            if let Some(reply) = close {
                let _ = reply.send(self.close());
                return;
            }
            if abandon {
                break;
            }
        }
        self.sh.durable.send_modify(|d| d.closed = true);
    }

    fn write_group(&mut self, appends: Vec<AppendReq>) {
        let seg_size = self.sh.opts.segment_size;
        let always = self.sh.opts.sync == SyncMode::Always;
        let mut run: Vec<AppendReq> = Vec::new();
        let mut run_bytes = 0u64;
        let mut next = self.head;
        let mut iter = appends.into_iter();
        while let Some(mut a) = iter.next() {
            let len = a.entry.len() as u64;
            let fill = self.active_len + run_bytes;
            if self.poisoned || (fill > 0 && fill + len > seg_size) {
                let res = self
                    .commit(std::mem::take(&mut run), run_bytes)
                    .and_then(|_| self.roll(next).inspect_err(|e| self.note_failure(e)));
                run_bytes = 0;
                if let Err(e) = res {
                    self.fail(std::iter::once(a).chain(iter), &e);
                    return;
                }
            }
            let count = u64::from(record::entry_count(&a.entry));
            record::seal(&mut a.entry, next);
            next += count;
            run_bytes += len;
            run.push(a);
            if always {
                if let Err(e) = self.commit(std::mem::take(&mut run), run_bytes) {
                    self.fail(iter, &e);
                    return;
                }
                run_bytes = 0;
            }
        }
        let _ = self.commit(run, run_bytes);
    }

    fn fail(&self, reqs: impl Iterator<Item = AppendReq>, e: &BufferError) {
        for a in reqs {
            self.sh.release(a.entry.len() as u64);
            let _ = a.reply.send(Err(dup(e)));
        }
    }

    /// Writes and (per the sync mode) fsyncs `run`, then completes it. On failure the
    /// written bytes are cut off again and every caller gets the error.
    fn commit(&mut self, run: Vec<AppendReq>, run_bytes: u64) -> Result<(), BufferError> {
        if run.is_empty() {
            return Ok(());
        }
        let sh = Arc::clone(&self.sh);
        let bufs: Vec<&[u8]> = run.iter().map(|a| &a.entry[..]).collect();
        let path = &self.active_path;
        let mut res = self
            .active
            .write_all_vectored(&bufs)
            .map_err(|source| BufferError::Write { path: path.clone(), source });
        if res.is_ok() {
            sh.written_bytes.fetch_add(run_bytes, Ordering::Relaxed);
            if sh.opts.sync == SyncMode::Never {
                self.unsynced = true;
            } else {
                sh.segment_fsyncs.fetch_add(1, Ordering::Relaxed);
                res = self
                    .active
                    .sync()
                    .map_err(|source| BufferError::Sync { path: path.clone(), source });
                self.last_sync = Instant::now();
            }
        }
        drop(bufs);
        if let Err(e) = res {
            self.note_failure(&e);
            self.truncate_back();
            self.fail(run.into_iter(), &e);
            return Err(e);
        }
        if !sh.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(path = %self.active_path.display(), "buffer writes succeed again");
        }
        let mut pos = self.active_len;
        self.active_len += run_bytes;
        let mut replies = Vec::with_capacity(run.len());
        let mut written = Vec::with_capacity(run.len());
        for a in run {
            let (first, count) = record::body_span(&a.entry[HEADER_LEN..]);
            replies.push((a.reply, first..first + u64::from(count)));
            let entry = bytes::Bytes::from(a.entry);
            let len = entry.len() as u64;
            written.push(TailEntry { first, count, seg: self.active_first, pos, entry });
            pos += len;
        }
        if let Some((_, r)) = replies.last() {
            self.head = r.end;
        }
        if let Some(s) = sh.segments().get_mut(&self.active_first) {
            s.len = self.active_len;
        }
        // In the tail before readers hear of the new head, so they find them there.
        sh.tail.push(written);
        // With `never` readers wait for the fsync (`sync_active`): what a sink delivers is
        // on disk, so a host crash cannot hand its offsets to new events.
        if sh.opts.sync != SyncMode::Never {
            self.publish();
        }
        for (reply, r) in replies {
            let _ = reply.send(Ok(r));
        }
        Ok(())
    }

    /// Counts a failed write and marks the buffer unhealthy; logged once per outage.
    fn note_failure(&self, e: &BufferError) {
        self.sh.write_errors.fetch_add(1, Ordering::Relaxed);
        if self.sh.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %e, "buffer write failed; appends fail until a write succeeds");
        }
    }

    fn truncate_back(&mut self) {
        let len = self.active_len;
        if let Err(e) = self.active.truncate(len).and_then(|_| self.active.sync()) {
            tracing::error!(path = %self.active_path.display(), error = %e, "cannot cut a failed write off the buffer; starting a new segment");
            self.poisoned = true;
        }
    }

    fn publish(&self) {
        let (head, first, len) = (self.head, self.active_first, self.active_len);
        self.sh.durable.send_modify(|d| {
            d.head = head;
            d.active_first = first;
            d.active_len = len;
        });
    }

    /// Seals the active segment and starts `<first>.seg`.
    fn roll(&mut self, first: u64) -> Result<(), BufferError> {
        if self.unsynced {
            let _ = self.sync_active();
        }
        let dir = &self.sh.segments_dir;
        let path = segment_path(dir, first);
        let mut file = self
            .sh
            .storage
            .open_append(&path)
            .map_err(|source| BufferError::OpenSegment { path: path.clone(), source })?;
        if first == self.active_first {
            // Only reached when the poisoned active segment holds no entry at all.
            file.truncate(0)
                .map_err(|source| BufferError::TruncateSegment { path: path.clone(), source })?;
        }
        if let Err(source) = self.sh.storage.sync_dir(dir) {
            let _ = self.sh.storage.remove_file(&path);
            return Err(BufferError::SyncDir { path: dir.clone(), source });
        }
        self.sh.segments().insert(first, SegmentInfo { path: path.clone(), len: 0 });
        self.active = file;
        self.active_path = path;
        self.active_first = first;
        self.active_len = 0;
        self.poisoned = false;
        janitor::update_gc_hint(&self.sh);
        Ok(())
    }

    /// Fsyncs what `never` left unsynced and shows it to readers; a failure is logged here
    /// and returned (close reports it).
    fn sync_active(&mut self) -> Result<(), BufferError> {
        self.sh.segment_fsyncs.fetch_add(1, Ordering::Relaxed);
        let res = self.active.sync();
        self.last_sync = Instant::now();
        match res {
            Ok(()) => {
                self.unsynced = false;
                // Earlier segments were synced when they were sealed: all written is durable.
                self.publish();
                Ok(())
            }
            Err(source) => {
                tracing::error!(path = %self.active_path.display(), error = %source, "cannot fsync buffer segment");
                Err(BufferError::Sync { path: self.active_path.clone(), source })
            }
        }
    }

    fn periodic(&mut self) {
        if self.unsynced && self.last_sync.elapsed() >= self.sh.opts.sync_interval {
            let _ = self.sync_active();
        }
    }

    fn close(&mut self) -> Result<(), BufferError> {
        let res = if self.unsynced { self.sync_active() } else { Ok(()) };
        let c = self.sh.sync_cursors();
        self.sh.durable.send_modify(|d| d.closed = true);
        res.and(c)
    }
}
