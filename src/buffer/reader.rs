//! A sink's reader: resumes at the sink's committed cursor, reads entries from the
//! segment files with its own handles (in `spawn_blocking`), and waits for the durable
//! head to move. Holds at most one decoded entry and one read chunk.

use super::cursor::SinkCursor;
use super::record::{self, HEADER_LEN};
use super::segment::{RawEntry, Scanner};
use super::tail::TailEntry;
use super::{BufferError, Durable, Shared};
use crate::event::Batch;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// At most one log line about damaged events per reader in this interval.
const DAMAGE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Events `[first_offset, first_offset + batch.len())`, all with one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBatch {
    pub first_offset: u64,
    pub batch: Batch,
}

impl ReadBatch {
    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.batch.len() as u64
    }
}

/// Acknowledges delivered ranges for one sink; cheap to clone and hand to the tasks that
/// see delivery results.
#[derive(Clone)]
pub struct Acker {
    sh: Arc<Shared>,
    cursor: Arc<SinkCursor>,
}

impl Acker {
    /// Marks `[first, first+count)` delivered. Ranges may come in any order; the committed
    /// cursor moves over the contiguous prefix and is written (renamed, not fsynced) as it
    /// moves. Acknowledge only offsets this sink has received.
    pub fn ack(&self, first: u64, count: u64) -> Result<(), BufferError> {
        if let Some(c) = self.cursor.ack(first, count)? {
            if c >= self.sh.gc_hint.load(Ordering::Acquire) {
                self.sh.gc();
            }
        }
        Ok(())
    }

    /// Every offset below this is delivered.
    pub fn committed(&self) -> u64 {
        self.cursor.committed()
    }
}

pub struct Reader {
    sh: Arc<Shared>,
    acker: Acker,
    durable: watch::Receiver<Durable>,
    /// Next offset to hand out.
    next_offset: u64,
    /// First offset (name) of the segment being read.
    seg: Option<u64>,
    /// `None` after a cancelled read: reopened at the segment start, entries below
    /// `next_offset` skipped.
    scanner: Option<Box<Scanner>>,
    /// The entry being handed out, possibly in parts.
    pending: Option<(u64, Batch)>,
    /// After an entry taken from the tail: `(segment, byte position, offset)` just past it,
    /// where the next file read starts (instead of the segment start) when `scanner` is
    /// `None`.
    resume: Option<(u64, u64, u64)>,
    /// When damaged events were last logged, and how many were met since without a log.
    damage_logged: Option<Instant>,
    damage_unlogged: u64,
}

/// Events `[first_offset, end_offset)`, all with one tag, `live` of them not tombstones
/// (damaged on disk): what [`Reader::next_counted`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub first_offset: u64,
    pub end_offset: u64,
    pub tag: crate::event::Tag,
    pub live: u64,
}

/// What one [`Reader::advance`] did.
enum Advance {
    /// Something changed (an entry is pending, offsets were skipped, the head moved): look
    /// again.
    Again,
    Counted(Counted),
    /// Nothing left: closed and read to the end, or nothing durable and not waiting.
    End,
}

enum Step {
    Entry(RawEntry),
    EndOfSegment,
    /// The segment vanished: locate again.
    Retry,
}

impl Reader {
    pub(super) fn new(sh: Arc<Shared>, cursor: Arc<SinkCursor>) -> Reader {
        let durable = sh.durable.subscribe();
        let next_offset = cursor.committed();
        Reader {
            acker: Acker { sh: Arc::clone(&sh), cursor },
            sh,
            durable,
            next_offset,
            seg: None,
            scanner: None,
            pending: None,
            resume: None,
            damage_logged: None,
            damage_unlogged: 0,
        }
    }

    pub fn sink(&self) -> &str {
        &self.acker.cursor.name
    }

    /// The next offset `next` will return.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    pub fn committed(&self) -> u64 {
        self.acker.committed()
    }

    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// See [`Acker::ack`].
    pub fn ack(&self, first: u64, count: u64) -> Result<(), BufferError> {
        self.acker.ack(first, count)
    }

    /// The next events: at most `max_events` (≥ 1) and, past the first event, at most
    /// `max_bytes` of records and metadata, from one entry. Waits for new appends; `None`
    /// once the buffer is closed and everything durable has been read. Cancel-safe.
    pub async fn next(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<ReadBatch>, BufferError> {
        self.read(max_events, max_bytes, true).await
    }

    /// Like `next` but returns `None` at once when nothing durable is left to read.
    pub async fn try_next(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<ReadBatch>, BufferError> {
        self.read(max_events, max_bytes, false).await
    }

    /// Like `next`, but the events are counted, not decoded: whole entries at a time, for
    /// a sink that discards what it is given. An entry taken from the tail (the usual case
    /// for a sink that keeps up) costs a look at its head; one read from the files is
    /// decoded and checked as for `next`, so damaged events are not counted.
    pub async fn next_counted(&mut self) -> Result<Option<Counted>, BufferError> {
        self.read_counted(true).await
    }

    /// Like `next_counted` but returns `None` at once when nothing durable is left to read.
    pub async fn try_next_counted(&mut self) -> Result<Option<Counted>, BufferError> {
        self.read_counted(false).await
    }

    async fn read(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        wait: bool,
    ) -> Result<Option<ReadBatch>, BufferError> {
        loop {
            if let Some(rb) = self.take_pending(max_events.max(1), max_bytes) {
                return Ok(Some(rb));
            }
            match self.advance(wait, false).await? {
                Advance::Again => {}
                Advance::Counted(_) => unreachable!("advance counts only when asked to"),
                Advance::End => return Ok(None),
            }
        }
    }

    async fn read_counted(&mut self, wait: bool) -> Result<Option<Counted>, BufferError> {
        loop {
            if let Some(rb) = self.take_pending(usize::MAX, usize::MAX) {
                let live = rb.batch.live_len() as u64;
                return Ok(Some(Counted {
                    first_offset: rb.first_offset,
                    end_offset: rb.end_offset(),
                    tag: rb.batch.tag,
                    live,
                }));
            }
            match self.advance(wait, true).await? {
                Advance::Again => {}
                Advance::Counted(c) => return Ok(Some(c)),
                Advance::End => return Ok(None),
            }
        }
    }

    /// One step towards the next events: waits for the durable head to move, or puts the
    /// next entry in `pending` (from the tail or the files), or skips what does not exist.
    /// With `count`, an entry from the tail that starts at `next_offset` is counted and
    /// handed back instead.
    async fn advance(&mut self, wait: bool, count: bool) -> Result<Advance, BufferError> {
        let d = *self.durable.borrow_and_update();
        if self.next_offset >= d.head {
            if d.closed {
                self.sync_cursor().await;
                return Ok(Advance::End);
            }
            if !wait || self.durable.changed().await.is_err() {
                return Ok(Advance::End);
            }
            return Ok(Advance::Again);
        }
        if let Some(t) = self.sh.tail.get(self.next_offset, d.head) {
            if count && t.first == self.next_offset {
                if let Some(c) = self.count_from_tail(&t) {
                    return Ok(Advance::Counted(c));
                }
            }
            self.take_from_tail(t);
            return Ok(Advance::Again);
        }
        match self.read_entry(&d).await? {
            Step::Entry(raw) => {
                let end = raw.end_offset();
                if end <= self.next_offset {
                    return Ok(Advance::Again);
                }
                if raw.first_offset > self.next_offset {
                    self.skip_to(raw.first_offset)?;
                }
                match record::decode_body(&raw.body, raw.version) {
                    Ok(d) => {
                        if d.lost > 0 {
                            self.damaged(&d);
                        }
                        self.pending = Some((d.first, d.batch));
                    }
                    Err(e) => {
                        // The header CRC matched, so this is a writer bug, not disk damage.
                        tracing::error!(sink = self.sink(), offset = raw.first_offset, error = %e, "undecodable buffer entry skipped");
                        self.skip_to(end)?;
                    }
                }
            }
            Step::Retry => {}
            Step::EndOfSegment => {
                let seg = self.seg.unwrap_or(0);
                let next = self.sh.segments().range(seg + 1..).next().map(|(k, _)| *k);
                match next {
                    Some(k) if seg != d.active_first => {
                        self.seg = Some(k);
                        self.scanner = None;
                    }
                    // The active segment is read up to its durable end, yet offsets
                    // below the head remain: they were lost to damage (or the head was
                    // raised past them to meet a cursor).
                    _ => self.skip_to(d.head)?,
                }
            }
        }
        Ok(Advance::Again)
    }

    /// `t` (which starts at `next_offset`) counted from its head; `None` when the head does
    /// not parse (then `take_from_tail` reports it).
    fn count_from_tail(&mut self, t: &TailEntry) -> Option<Counted> {
        let (tag, time) = record::written_head(&t.entry.slice(HEADER_LEN..)).ok()?;
        let end = t.end();
        self.resume_after(t);
        self.next_offset = end;
        if let Some(time) = time {
            self.acker.cursor.note_in_flight(end, time);
        }
        // What the writer stored has no tombstones: every event is live.
        Some(Counted { first_offset: t.first, end_offset: end, tag, live: u64::from(t.count) })
    }

    /// Hands out `t` (which holds `next_offset`) from memory, and leaves the file reading
    /// to resume just after it should the reader fall out of the tail.
    fn take_from_tail(&mut self, t: TailEntry) {
        let end = t.end();
        match record::decode_written(&t.entry.slice(HEADER_LEN..)) {
            Ok(d) => self.pending = Some((d.first, d.batch)),
            Err(e) => {
                // The writer encoded these bytes itself: a bug, and the file holds the same.
                tracing::error!(sink = self.sink(), offset = t.first, error = %e, "undecodable buffer entry skipped");
                let _ = self.skip_to(end);
            }
        }
        self.resume_after(&t);
    }

    /// After an entry taken from the tail: file reading, should the reader fall out of the
    /// tail, resumes just after it.
    fn resume_after(&mut self, t: &TailEntry) {
        self.seg = Some(t.seg);
        self.scanner = None;
        self.resume = Some((t.seg, t.pos + t.entry.len() as u64, t.end()));
    }

    /// Logs (rate-limited) the damaged events of an entry: they are handed on as
    /// tombstones, which the sink skips and acknowledges.
    fn damaged(&mut self, d: &record::Decoded) {
        self.damage_unlogged += u64::from(d.lost);
        let now = Instant::now();
        if self.damage_logged.is_some_and(|t| now.duration_since(t) < DAMAGE_LOG_INTERVAL) {
            return;
        }
        self.damage_logged = Some(now);
        let first_damaged = d
            .batch
            .events
            .iter()
            .position(|e| e.is_tombstone())
            .map_or(d.first, |i| d.first + i as u64);
        tracing::error!(
            sink = self.sink(),
            entry_offsets = %format_args!("{}..{}", d.first, d.first + d.batch.len() as u64),
            first_damaged,
            damaged = d.lost,
            damaged_since_last_report = self.damage_unlogged,
            "damaged events in the buffer (checksum mismatch): skipped, the rest of the entry is delivered"
        );
        self.damage_unlogged = 0;
    }

    /// After close the writer thread no longer fsyncs cursors, yet sinks go on
    /// acknowledging what they deliver during shutdown: make those acknowledgements
    /// durable when the reader reports the end (a no-op when nothing changed).
    async fn sync_cursor(&self) {
        let cursor = Arc::clone(&self.acker.cursor);
        let res = tokio::task::spawn_blocking(move || cursor.sync()).await;
        match res {
            Ok(Ok(())) => {}
            // Not fatal: the cursor was written in place, only a host crash could lose it
            // (the events are then delivered again).
            Ok(Err(e)) => {
                tracing::warn!(sink = self.sink(), error = %e, "cannot fsync the sink cursor at shutdown")
            }
            Err(e) => {
                tracing::warn!(sink = self.sink(), error = %e, "cannot fsync the sink cursor at shutdown")
            }
        }
    }

    /// Offsets `[next_offset, to)` do not exist: acknowledge them so the cursor passes.
    fn skip_to(&mut self, to: u64) -> Result<(), BufferError> {
        if to > self.next_offset {
            let n = to - self.next_offset;
            tracing::debug!(
                sink = self.sink(),
                from = self.next_offset,
                events = n,
                "skipping offsets not in the buffer"
            );
            self.acker.ack(self.next_offset, n)?;
            self.next_offset = to;
        }
        Ok(())
    }

    fn take_pending(&mut self, max_events: usize, max_bytes: usize) -> Option<ReadBatch> {
        let (first, batch) = self.pending.as_ref()?;
        let start = self.next_offset.saturating_sub(*first) as usize;
        if start >= batch.len() {
            self.pending = None;
            return None;
        }
        let mut n = 0;
        let mut bytes = 0;
        for e in &batch.events[start..] {
            let size = e.record.len() + e.metadata.len();
            if n > 0 && (n >= max_events || bytes + size > max_bytes) {
                break;
            }
            n += 1;
            bytes += size;
        }
        let batch = if start == 0 && n == batch.len() {
            self.pending.take().map(|p| p.1)?
        } else {
            let b =
                Batch { tag: batch.tag.clone(), events: batch.events[start..start + n].to_vec() };
            if start + n == batch.len() {
                self.pending = None;
            }
            b
        };
        let rb = ReadBatch { first_offset: self.next_offset, batch };
        self.next_offset += n as u64;
        if let Some(e) = rb.batch.events.first() {
            self.acker.cursor.note_in_flight(rb.end_offset(), e.time);
        }
        Some(rb)
    }

    fn locate(&self) -> Option<u64> {
        let segs = self.sh.segments();
        segs.range(..=self.next_offset).next_back().or_else(|| segs.iter().next()).map(|(k, _)| *k)
    }

    async fn read_entry(&mut self, d: &Durable) -> Result<Step, BufferError> {
        let seg = match self.seg {
            Some(s) => s,
            None => {
                let s = self.locate().ok_or(BufferError::Closed)?;
                self.seg = Some(s);
                self.scanner = None;
                s
            }
        };
        let (path, limit) = {
            let segs = self.sh.segments();
            match segs.get(&seg) {
                Some(info) => {
                    (info.path.clone(), if seg == d.active_first { d.active_len } else { info.len })
                }
                None => {
                    drop(segs);
                    // Deleted: everything in it was delivered by every sink, this one too.
                    self.seg = None;
                    self.scanner = None;
                    return Ok(Step::Retry);
                }
            }
        };
        if let Some(raw) = self.scanner.as_mut().and_then(|sc| sc.next_buffered(limit)) {
            return Ok(Step::Entry(raw));
        }
        let storage = Arc::clone(&self.sh.storage);
        let scanner = self.scanner.take();
        // A read cancelled while the scanner is away (a sink's `select!` taking another
        // arm) loses the scanner: the next read resumes where it stood, instead of at the
        // segment start, which re-read up to a whole segment per cancellation (a quarter
        // more CPU for the Elasticsearch sink with four requests in flight).
        if let Some((pos, next)) = scanner.as_ref().and_then(|sc| sc.resume_point()) {
            self.resume = Some((seg, pos, next));
        }
        // Kept until the read is done: a cancelled read resumes there again.
        let resume = self.resume.filter(|r| r.0 == seg);
        let joined = tokio::task::spawn_blocking(move || {
            let mut sc = match scanner {
                Some(s) => s,
                None => match storage.open_read(&path) {
                    Ok(f) => Box::new(match resume {
                        Some((_, pos, next)) => Scanner::resume(f, pos, next),
                        None => Scanner::new(f, seg),
                    }),
                    Err(source) => return (None, Err(BufferError::OpenSegment { path, source })),
                },
            };
            let r =
                sc.next_entry(limit).map_err(|source| BufferError::ReadSegment { path, source });
            (Some(sc), r)
        })
        .await;
        let (scanner, res) = joined.map_err(|e| BufferError::ReadSegment {
            path: self.sh.segments_dir.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        self.scanner = scanner;
        self.resume = None;
        match res? {
            Some(raw) => Ok(Step::Entry(raw)),
            None => Ok(Step::EndOfSegment),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.acker.cursor.attached.store(false, Ordering::Release);
    }
}
