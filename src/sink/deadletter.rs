//! The dead-letter file, shared by the sinks: events the destination will never accept, one JSON line each, so that
//! nothing is dropped silently. A line is on disk (`sync_data`) before the event's buffer
//! position may be acknowledged.
//!
//! Line shape (the record as JSON when it can be transcoded, else its msgpack bytes in hex):
//! ```text
//! {"time":"2026-11-22T07:00:05.000000005Z","tag":"app","offset":42,"status":400,
//!  "error_type":"mapper_parsing_exception","reason":"failed to parse field [n]","record":{…}}
//! ```

use crate::backoff::Backoff;
use crate::calendar::write_rfc3339;
use crate::event::{Event, Tag};
use crate::metrics::{Metrics, SinkReasonLabel};
use crate::msgpack::json::write_record_json;
use crate::pipeline::Delivery;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One event to write, with why.
pub struct DeadLetter<'a> {
    pub tag: &'a Tag,
    pub event: &'a Event,
    pub offset: u64,
    /// HTTP status of the item, 0 when it was never sent (it could not be encoded).
    pub status: u16,
    pub error_type: &'a str,
    pub reason: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the dead-letter file {path}: {source}")]
pub struct DeadLetterError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Appends to one dead-letter file. Lines for a set of events are built in memory and
/// written, then synced, with one call: a failure leaves them unacknowledged, and the
/// retry may write some of them twice (at-least-once, never lost).
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    buf: Vec<u8>,
}

impl DeadLetterFile {
    pub fn new(path: &Path) -> DeadLetterFile {
        DeadLetterFile { path: path.to_path_buf(), buf: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue one line.
    pub fn push(&mut self, d: &DeadLetter<'_>) {
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"time\":\"");
        write_rfc3339(b, d.event.time);
        b.extend_from_slice(b"\",\"tag\":");
        json_string(b, d.tag.as_str());
        b.extend_from_slice(b",\"offset\":");
        b.extend_from_slice(itoa::Buffer::new().format(d.offset).as_bytes());
        b.extend_from_slice(b",\"status\":");
        b.extend_from_slice(itoa::Buffer::new().format(d.status).as_bytes());
        b.extend_from_slice(b",\"error_type\":");
        json_string(b, d.error_type);
        b.extend_from_slice(b",\"reason\":");
        json_string(b, d.reason);
        b.extend_from_slice(b",\"record\":");
        if write_record_json(b, &d.event.record).is_err() {
            b.truncate(b.len() - b"\"record\":".len());
            b.extend_from_slice(b"\"record_msgpack_hex\":\"");
            b.extend_from_slice(hex::encode(&d.event.record).as_bytes());
            b.push(b'"');
        }
        b.extend_from_slice(b"}\n");
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The queued lines.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Forget the queued lines (once `append_sync` wrote them).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Append the queued lines and sync them (blocking: call from the blocking pool).
    /// The queue is emptied only on success.
    pub fn flush_blocking(&mut self) -> Result<(), DeadLetterError> {
        append_sync(&self.path, &self.buf, None)?;
        self.buf.clear();
        Ok(())
    }
}

/// The older generation of a dead-letter file: `<path>.1`.
pub fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Append `lines` to the file at `path` (created with its directory) and `sync_data` it.
/// With `max`: when the file would pass half of it, it becomes the older generation
/// (`<path>.1`, replacing the one before, whose lines are dropped) and a new file is
/// started, so the two hold at most about `max` — rejects never fill the buffer's disk.
/// Returns how many lines were dropped.
pub fn append_sync(path: &Path, lines: &[u8], max: Option<u64>) -> Result<u64, DeadLetterError> {
    if lines.is_empty() {
        return Ok(0);
    }
    let err = |source| DeadLetterError { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(err)?;
    }
    let mut dropped = 0;
    if let Some(max) = max {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        if len > 0 && len + lines.len() as u64 > max / 2 {
            let old = older(path);
            // The generation dropped: its lines counted (it is at most half the cap, and
            // this happens once per half cap of rejects).
            dropped = match std::fs::read(&old) {
                Ok(b) => memchr::memchr_iter(b'\n', &b).count() as u64,
                Err(_) => 0,
            };
            std::fs::rename(path, &old).map_err(err)?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(err)?;
    f.write_all(lines).map_err(err)?;
    f.sync_data().map_err(err)?;
    if dropped > 0 || max.is_some() {
        // The rename is durable with the directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(dropped)
}

/// Dead letters queued by one task of a sink, and the lock all its tasks take to append
/// them: the lines of two tasks never interleave. `flush` retries until the disk takes them.
pub struct DeadLetters {
    file: DeadLetterFile,
    /// Offsets of the lines queued in `file`, with their metric reason.
    offsets: Vec<(u64, &'static str)>,
    /// One writer at a time, so that the lines of two workers never interleave.
    lock: Arc<Mutex<()>>,
    /// `dead_letter_max_size`.
    max: Option<u64>,
}

impl DeadLetters {
    pub fn new(path: &Path, max: Option<u64>, lock: &Arc<Mutex<()>>) -> DeadLetters {
        DeadLetters {
            file: DeadLetterFile::new(path),
            offsets: Vec::new(),
            lock: Arc::clone(lock),
            max,
        }
    }

    /// Queue the event at `offset` of `group`; `label` is the metric's reason.
    pub fn push(
        &mut self,
        group: &[Delivery],
        offset: u64,
        status: u16,
        error_type: &str,
        reason: &str,
        label: &'static str,
    ) {
        if let Some((tag, event)) = find(group, offset) {
            self.file.push(&DeadLetter { tag, event, offset, status, error_type, reason });
            self.offsets.push((offset, label));
        }
    }

    /// Write and sync the queued dead letters, retrying until the disk takes them; then
    /// they count as settled (appended to `settled`).
    pub async fn flush(&mut self, sink: &str, metrics: &Metrics, settled: &mut Vec<u64>) {
        if self.offsets.is_empty() {
            return;
        }
        let mut backoff =
            Backoff::from_entropy(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            // A copy to the blocking pool: the lines stay queued until they are on disk.
            let (path, lines, lock, max) = (
                self.file.path().to_path_buf(),
                self.file.pending().to_vec(),
                Arc::clone(&self.lock),
                self.max,
            );
            let write = move || {
                // A writer that panicked left no half-held state behind: the file is reopened.
                let _one_writer = lock.lock().unwrap_or_else(PoisonError::into_inner);
                append_sync(&path, &lines, max)
            };
            match tokio::task::spawn_blocking(write).await {
                Ok(Ok(dropped)) => {
                    if dropped > 0 {
                        metrics
                            .dead_letter_dropped
                            .get_or_create(&crate::metrics::SinkLabel { sink: sink.to_owned() })
                            .inc_by(dropped);
                        tracing::warn!(sink, dropped, path = %self.file.path().display(), "dead-letter file rotated at dead_letter_max_size: its oldest generation dropped");
                    }
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(sink, error = %e, "dead letters not written; retrying")
                }
                Err(e) => {
                    tracing::error!(sink, error = %e, "dead-letter writer task failed; retrying")
                }
            }
            backoff.wait(None).await;
        }
        self.file.clear();
        let records = self.offsets.len();
        for (offset, reason) in self.offsets.drain(..) {
            settled.push(offset);
            metrics
                .dead_letter_records
                .get_or_create(&SinkReasonLabel { sink: sink.to_owned(), reason })
                .inc();
        }
        tracing::warn!(sink, records, path = %self.file.path().display(), "records written to the dead-letter file");
    }
}

/// The event at `offset` among `group` (deliveries in offset order).
pub fn find(group: &[Delivery], offset: u64) -> Option<(&Tag, &Event)> {
    let i = group.partition_point(|d| d.first <= offset).checked_sub(1)?;
    let d = group.get(i)?;
    let ev = d.batch.events.get(usize::try_from(offset.checked_sub(d.first)?).ok()?)?;
    Some((&d.batch.tag, ev))
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, into the buffer without an intermediate String.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_and_its_older_generation_stay_under_the_cap_and_drops_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/s.ndjson");
        let max = 1 << 20;
        let line = format!("{}\n", "x".repeat(1023)); // 1 KiB a line
        let chunk = line.repeat(100); // 100 KiB, 100 lines
        let mut dropped = 0;
        for _ in 0..30 {
            dropped += append_sync(&path, chunk.as_bytes(), Some(max)).unwrap();
            let cur = std::fs::metadata(&path).unwrap().len();
            let old = std::fs::metadata(older(&path)).map_or(0, |m| m.len());
            assert!(cur + old <= max, "{cur} + {old} over the cap");
        }
        // 3,000 lines written, the two generations hold at most 1,000 of them; every line
        // not there is counted.
        let count = |p: &Path| {
            std::fs::read(p).map_or(0, |b| memchr::memchr_iter(b'\n', &b).count() as u64)
        };
        assert_eq!(dropped + count(&path) + count(&older(&path)), 3000);
        assert!(dropped >= 2000, "{dropped}");
        // No cap: one file grows.
        let free = dir.path().join("free.ndjson");
        for _ in 0..30 {
            assert_eq!(append_sync(&free, chunk.as_bytes(), None).unwrap(), 0);
        }
        assert_eq!(count(&free), 3000);
        assert!(!older(&free).exists());
    }
    use crate::event::{Batch, EventTime};
    use bytes::Bytes;

    #[test]
    fn lines_carry_record_reason_and_fall_back_to_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dl.ndjson");
        let mut f = DeadLetterFile::new(&path);
        let tag = Tag::from_static("app.web");
        let map = Bytes::from_static(&[0x81, 0xa1, b'n', 0xa1, b'x']); // {"n":"x"}
        let ev = Event { time: EventTime::new(5, 7), record: map, metadata: Bytes::new() };
        f.push(&DeadLetter {
            tag: &tag,
            event: &ev,
            offset: 42,
            status: 400,
            error_type: "mapper_parsing_exception",
            reason: "bad \"n\"",
        });
        let bad = Event {
            time: EventTime::new(5, 7),
            record: Bytes::from_static(&[0xc1]),
            metadata: Bytes::new(),
        };
        f.push(&DeadLetter {
            tag: &tag,
            event: &bad,
            offset: 43,
            status: 0,
            error_type: "not_a_map",
            reason: "record is not a msgpack map",
        });
        f.flush_blocking().unwrap();
        assert!(f.is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["record"], serde_json::json!({"n": "x"}));
        assert_eq!(lines[0]["reason"], "bad \"n\"");
        assert_eq!(
            (lines[0]["offset"].as_u64(), lines[0]["status"].as_u64()),
            (Some(42), Some(400))
        );
        assert_eq!(lines[0]["time"], "1970-01-01T00:00:05.000000007Z");
        assert_eq!(lines[1]["record_msgpack_hex"], "c1");
        assert!(lines[1].get("record").is_none());
    }

    #[test]
    fn find_locates_events_across_deliveries_with_gaps() {
        let ev = |n: u8| Event {
            time: EventTime::new(1, 0),
            record: Bytes::from(vec![n]),
            metadata: Bytes::new(),
        };
        let d = |first: u64, n: u8| Delivery {
            first,
            seq: first + u64::from(n),
            batch: Arc::new(Batch { tag: Tag::from_static("t"), events: (0..n).map(ev).collect() }),
        };
        let group = vec![d(0, 2), d(5, 3)];
        assert_eq!(find(&group, 1).map(|(_, e)| e.record[0]), Some(1));
        assert_eq!(find(&group, 7).map(|(_, e)| e.record[0]), Some(2));
        assert!(find(&group, 3).is_none());
        assert!(find(&group, 8).is_none());
    }
}
