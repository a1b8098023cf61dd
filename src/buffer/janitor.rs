//! The janitor thread: deletes the segments every sink has passed and fsyncs changed
//! cursors, off the writer thread.
//!
//! Deleting a 64 MiB segment is one `unlink`, but the kernel drops the file's pages and
//! frees its blocks inside it: ~14 ms measured here (docs/performance.md), and one segment
//! goes every ~0.1 s at full rate. On the writer thread that was a 14 ms stall of every
//! append in flight (the ack p99). Here it only holds up the release of the segment's space.

use super::{BufferError, Shared, CURSOR_SYNC_INTERVAL};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

pub(super) enum JanitorMsg {
    /// A cursor moved past the GC hint, or a sink was forgotten: look for segments to delete.
    Gc,
    /// The buffer is gone: stop (without a last cursor fsync: `close` did that, and a
    /// buffer dropped without `close` stands for a crash).
    Stop,
}

pub(super) fn spawn(
    sh: Arc<Shared>,
    rx: mpsc::Receiver<JanitorMsg>,
) -> Result<JoinHandle<()>, BufferError> {
    update_gc_hint(&sh);
    std::thread::Builder::new()
        .name("berth-buffer-gc".into())
        .spawn(move || run(&sh, &rx))
        .map_err(BufferError::SpawnThread)
}

fn run(sh: &Shared, rx: &mpsc::Receiver<JanitorMsg>) {
    let mut last_cursor_sync = Instant::now();
    loop {
        let wait = CURSOR_SYNC_INTERVAL.saturating_sub(last_cursor_sync.elapsed());
        match rx.recv_timeout(wait) {
            Ok(JanitorMsg::Gc) => {
                // One pass serves every request already queued.
                loop {
                    match rx.try_recv() {
                        Ok(JanitorMsg::Gc) => {}
                        Ok(JanitorMsg::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
                gc(sh);
            }
            Ok(JanitorMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if last_cursor_sync.elapsed() >= CURSOR_SYNC_INTERVAL {
            last_cursor_sync = Instant::now();
            if let Err(e) = sh.sync_cursors() {
                tracing::warn!(error = %e, "cannot fsync sink cursors");
            }
            gc(sh);
        }
    }
}

/// The end offset of the oldest segment that can be deleted once passed (the second one's
/// name), for the ackers to know when to wake the janitor; `u64::MAX` with one segment.
pub(super) fn update_gc_hint(sh: &Shared) {
    let segs = sh.segments();
    let mut keys = segs.keys();
    let hint = match (keys.next(), keys.next()) {
        (Some(_), Some(&end)) => end,
        _ => u64::MAX,
    };
    sh.gc_hint.store(hint, Ordering::Release);
}

/// Deletes sealed segments every known sink has passed. The active segment is the newest
/// one, never deleted: a segment goes only when the next one's first offset is passed.
fn gc(sh: &Shared) {
    let Some(min) = sh.min_committed() else { return };
    let doomed: Vec<(u64, PathBuf, u64)> = {
        let segs = sh.segments();
        let keys: Vec<u64> = segs.keys().copied().collect();
        keys.windows(2)
            .take_while(|w| min >= w[1])
            .filter_map(|w| segs.get(&w[0]).map(|s| (w[0], s.path.clone(), s.len)))
            .collect()
    };
    for (first, path, len) in doomed {
        match sh.storage.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete delivered buffer segment");
                break;
            }
        }
        sh.segments().remove(&first);
        sh.release(len);
        tracing::debug!(path = %path.display(), "deleted delivered buffer segment");
    }
    update_gc_hint(sh);
}
