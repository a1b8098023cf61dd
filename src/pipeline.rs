//! The path from inputs to sinks, through the durable buffer.
//!
//! Inputs `submit` batches: `submit` resolves once the batch is in the buffer on disk (see
//! `buffer::SyncMode`), and only then may the input acknowledge a Forward `chunk`. Each sink
//! has a `SinkReader`: it reads, in order, the batches whose tag matches its pattern and
//! acknowledges what it delivered; its cursor in the buffer moves over what it acknowledged
//! (and over the batches its pattern skips). A slow sink never slows a fast one, only the
//! inputs once the buffer is full.

use crate::backoff::Backoff;
use crate::buffer::{Appending, Buffer, BufferError, Reader};
use crate::event::Batch;
use crate::metrics::Metrics;
use crate::reassemble::{JoinOptions, Joiner};
use crate::route::TagPattern;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events a sink gets at most per delivery, and bytes of records past the first event.
const READ_MAX_EVENTS: usize = 10_000;
const READ_MAX_BYTES: usize = 4 << 20;

/// One batch handed to one sink, with its place in the buffer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The buffer offset of the first event.
    pub first: u64,
    /// One past the last event's offset: `ack(seq)` means "delivered everything below".
    pub seq: u64,
    pub batch: Arc<Batch>,
}

impl Delivery {
    /// The stable identity of event `i` of this delivery: survives restarts, so a sink can
    /// use it to make retries idempotent (e.g. an Elasticsearch `_id`).
    pub fn offset_of(&self, i: usize) -> u64 {
        self.first + i as u64
    }
}

/// Events handed to one sink as a count (see [`SinkReader::recv_counted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedDelivery {
    /// As [`Delivery::seq`]: `ack(seq)` means "delivered everything below".
    pub seq: u64,
    /// The events that are not tombstones.
    pub live: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// `when_full = "drop_newest"` and the buffer is full: counted, not acknowledged.
    #[error("the buffer is full (max_size {max_size} bytes): events refused")]
    Full { max_size: u64 },
    /// The request cannot be stored as one buffer entry (see `buffer::record`).
    #[error("request cannot be stored: {0}")]
    TooLarge(String),
    /// The buffer is closed (shutdown) or failed to write (disk error, already logged).
    #[error("{0}")]
    Buffer(BufferError),
}

struct Inner {
    buffer: Buffer,
    /// Each sink's name and pattern: a tag none matches is not stored. Changed when SIGHUP
    /// adds, changes or removes sinks.
    patterns: std::sync::RwLock<Vec<(String, TagPattern)>>,
    metrics: Arc<Metrics>,
}

/// The inputs' handle. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

/// What a sink asks of the pipeline: its name (its cursor's name) and which tags it takes.
pub struct SinkRoute {
    pub name: String,
    pub pattern: TagPattern,
    /// Docker partial-line and multiline joins between the buffer and the sink.
    pub join: JoinOptions,
}

/// A sink's end of the pipeline.
pub struct SinkReader {
    reader: Reader,
    pattern: TagPattern,
    /// Everything below is acknowledged to the buffer by this reader.
    acked: u64,
    /// Everything below was acknowledged by the sink, or skipped with nothing outstanding:
    /// `acked` without the cursor write errors (`acked` stays behind when one fails, and
    /// must not make later skipped batches wait for a delivery that may never come).
    settled: u64,
    /// One past the last event handed to the sink (or skipped for it).
    delivered: u64,
    /// Batches skipped (tag not matched) after the last delivery, not yet acknowledged.
    skipped_to: Option<u64>,
    /// Joins split lines; holds deliveries back while a group is open (see `reassemble`).
    joiner: Option<Joiner>,
    metrics: Arc<Metrics>,
}

static READ_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);

impl Pipeline {
    /// One reader per route, in order; each resumes at its sink's cursor. Sinks the buffer
    /// knows from an earlier run but not configured now are forgotten.
    pub fn new(
        buffer: Buffer,
        routes: Vec<SinkRoute>,
        metrics: Arc<Metrics>,
    ) -> Result<(Pipeline, Vec<SinkReader>), BufferError> {
        // A cursor left by a sink removed from the config (or renamed) would hold every
        // segment after it for ever: the buffer fills and the drain never sees "all
        // delivered". Deliberately lossy for that sink only: nothing reads for it any more.
        let known = buffer.stats().sinks;
        let pipeline =
            Pipeline { inner: Arc::new(Inner { buffer, patterns: Default::default(), metrics }) };
        for old in known.iter().filter(|old| !routes.iter().any(|r| r.name == old.name)) {
            let undelivered = pipeline.remove_sink(&old.name)?;
            tracing::warn!(sink = %old.name, undelivered, "sink no longer configured: forgetting its cursor");
        }
        let readers = routes.into_iter().map(|r| pipeline.add_sink(r)).collect::<Result<_, _>>()?;
        Ok((pipeline, readers))
    }

    fn patterns(&self) -> std::sync::RwLockReadGuard<'_, Vec<(String, TagPattern)>> {
        self.inner.patterns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn patterns_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(String, TagPattern)>> {
        self.inner.patterns.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader of a sink added (or changed) while berth runs, resuming at its cursor (a
    /// new sink: at the oldest event in the buffer); its pattern takes part in deciding
    /// which tags are stored from now on. The sink's previous reader, if any, must be gone.
    pub fn add_sink(&self, r: SinkRoute) -> Result<SinkReader, BufferError> {
        let reader = self.inner.buffer.reader(&r.name)?;
        let at = reader.committed();
        {
            let mut patterns = self.patterns_mut();
            patterns.retain(|(n, _)| *n != r.name);
            patterns.push((r.name.clone(), r.pattern.clone()));
        }
        let metrics = &self.inner.metrics;
        let joiner = r.join.enabled().then(|| Joiner::new(r.join, &r.name, Arc::clone(metrics)));
        Ok(SinkReader {
            reader,
            pattern: r.pattern,
            acked: at,
            settled: at,
            delivered: at,
            skipped_to: None,
            joiner,
            metrics: Arc::clone(metrics),
        })
    }

    /// A sink removed while berth runs, its reader already gone: its pattern no longer
    /// stores anything, and its cursor is forgotten (as at start for a sink no longer
    /// configured), so it holds no segment. `Ok(undelivered)`: the events it had not
    /// delivered, now never delivered by it.
    pub fn remove_sink(&self, name: &str) -> Result<u64, BufferError> {
        self.patterns_mut().retain(|(n, _)| n != name);
        let lag = self
            .inner
            .buffer
            .stats()
            .sinks
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.lag_events);
        self.inner.buffer.remove_sink(name)?;
        Ok(lag)
    }

    /// Put a batch in the buffer. `Ok` once it is durable: the caller may then acknowledge
    /// it. A batch whose tag no sink takes is counted and not stored (nothing would ever
    /// read it). With `when_full = "block"` this waits while the buffer is full.
    pub async fn submit(&self, batch: &Batch) -> Result<(), SubmitError> {
        self.enqueue(batch).await?.await.map(|_| ()).map_err(SubmitError::Buffer)
    }

    /// The first half of `submit`: the batch is handed to the buffer's writer (in call
    /// order) and the returned `Appending` resolves once it is durable. Lets a connection
    /// read its next request while the previous one waits for its fsync.
    pub async fn enqueue(&self, batch: &Batch) -> Result<Appending, SubmitError> {
        self.enqueue_with_chunks(batch, &[]).await
    }

    /// [`Pipeline::enqueue`] of the events of the Forward requests whose keys are `chunks`
    /// (see `buffer::chunks`).
    pub async fn enqueue_with_chunks(
        &self,
        batch: &Batch,
        chunks: &[u64],
    ) -> Result<Appending, SubmitError> {
        let stored = Appending::Done(Some(Ok(0..0)));
        if batch.is_empty() {
            return Ok(stored);
        }
        let tag = batch.tag.as_str();
        if !self.patterns().iter().any(|(_, p)| p.matches(tag)) {
            self.inner.metrics.unmatched_records.inc_by(batch.len() as u64);
            return Ok(stored);
        }
        match self.inner.buffer.enqueue_with_chunks(batch, chunks).await {
            Ok(a) => Ok(a),
            Err(BufferError::Full { max_size }) => {
                self.inner.metrics.buffer_dropped("full", batch.len() as u64);
                Err(SubmitError::Full { max_size })
            }
            Err(BufferError::Encode(e)) => {
                // Cannot be stored at all (over the entry size limits): never acked.
                self.inner.metrics.buffer_dropped("too_large", batch.len() as u64);
                Err(SubmitError::TooLarge(e.to_string()))
            }
            Err(e) => Err(SubmitError::Buffer(e)),
        }
    }

    /// A pipeline with one sink taking every tag, on a buffer with default options in `dir`:
    /// for tests and tools that drive a sink directly.
    pub fn with_one_sink(
        dir: &std::path::Path,
        sink: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Pipeline, SinkReader), BufferError> {
        let (buffer, _) = Buffer::open(crate::buffer::BufferOptions::new(dir))?;
        let route = SinkRoute {
            name: sink.to_string(),
            pattern: TagPattern::match_all(),
            join: JoinOptions::default(),
        };
        let (p, mut readers) = Pipeline::new(buffer, vec![route], metrics)?;
        let reader = readers.pop().ok_or(BufferError::Closed)?;
        Ok((p, reader))
    }

    pub fn buffer(&self) -> &Buffer {
        &self.inner.buffer
    }
}

impl SinkReader {
    /// The next batch for this sink: waits for one; `None` once the buffer is closed and
    /// this sink has read everything in it.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.read(true).await
    }

    /// Like `recv`, but `None` at once when nothing is left to read right now.
    pub async fn try_recv(&mut self) -> Option<Delivery> {
        self.read(false).await
    }

    async fn read(&mut self, wait: bool) -> Option<Delivery> {
        // The disk is this host's alone: no jitter.
        let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            if let Some(j) = &mut self.joiner {
                j.expire(Instant::now());
                if let Some((first, seq, batch)) = j.pop_ready() {
                    return Some(Delivery { first, seq, batch: Arc::new(batch) });
                }
            }
            let deadline = self.joiner.as_ref().and_then(Joiner::next_deadline);
            let next = if !wait {
                self.reader.try_next(READ_MAX_EVENTS, READ_MAX_BYTES).await
            } else if let Some(deadline) = deadline {
                // Wake up when a held group times out, even if nothing new arrives.
                tokio::select! {
                    next = self.reader.next(READ_MAX_EVENTS, READ_MAX_BYTES) => next,
                    () = tokio::time::sleep_until(deadline.into()) => continue,
                }
            } else {
                self.reader.next(READ_MAX_EVENTS, READ_MAX_BYTES).await
            };
            let rb = match next {
                Ok(Some(rb)) => rb,
                // Closed and all read (the inputs have stopped): what is held goes out now.
                Ok(None) if wait && self.joiner.as_mut().is_some_and(Joiner::finish) => continue,
                Ok(None) => return None,
                Err(e) if self.read_failed(&e, wait, &mut backoff).await => continue,
                Err(_) => return None,
            };
            let first = rb.first_offset;
            let end = first + rb.batch.len() as u64;
            if self.pattern.matches(rb.batch.tag.as_str()) {
                self.delivered = end;
                self.skipped_to = None;
                match &mut self.joiner {
                    Some(j) => {
                        j.push(first, end, rb.batch, Instant::now());
                        continue;
                    }
                    None => return Some(Delivery { first, seq: end, batch: Arc::new(rb.batch) }),
                }
            }
            self.skip(end);
        }
    }

    /// A read error (EIO): the data stays on disk. Logged (rate-limited); `true` once the
    /// backoff has passed and the read is to be tried again, `false` when not waiting.
    async fn read_failed(&self, e: &BufferError, wait: bool, backoff: &mut Backoff) -> bool {
        if let Some(suppressed) = READ_WARN.check() {
            tracing::error!(sink = self.reader.sink(), error = %e, suppressed, "reading the buffer failed; retrying");
        }
        if wait {
            backoff.wait(None).await;
        }
        wait
    }

    /// Events up to `end`, not for this sink: acknowledged now if nothing delivered is
    /// outstanding, else together with the delivery before them.
    fn skip(&mut self, end: u64) {
        if self.settled == self.delivered {
            self.ack_to(end);
            self.delivered = end;
            self.settled = end;
        } else {
            self.skipped_to = Some(end);
        }
    }

    /// Like `recv`, but the events are counted instead of decoded (see
    /// `buffer::Reader::next_counted`): for a sink that discards them. With joins on, the
    /// events are decoded and joined as for `recv`, and the live ones counted.
    pub async fn recv_counted(&mut self) -> Option<CountedDelivery> {
        self.read_counted(true).await
    }

    /// Like `recv_counted`, but `None` at once when nothing is left to read right now.
    pub async fn try_recv_counted(&mut self) -> Option<CountedDelivery> {
        self.read_counted(false).await
    }

    async fn read_counted(&mut self, wait: bool) -> Option<CountedDelivery> {
        if self.joiner.is_some() {
            let d = self.read(wait).await?;
            return Some(CountedDelivery { seq: d.seq, live: d.batch.live_len() as u64 });
        }
        let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let next = if wait {
                self.reader.next_counted().await
            } else {
                self.reader.try_next_counted().await
            };
            let c = match next {
                Ok(Some(c)) => c,
                Ok(None) => return None,
                Err(e) if self.read_failed(&e, wait, &mut backoff).await => continue,
                Err(_) => return None,
            };
            if self.pattern.matches(c.tag.as_str()) {
                self.delivered = c.end_offset;
                self.skipped_to = None;
                return Some(CountedDelivery { seq: c.end_offset, live: c.live });
            }
            self.skip(c.end_offset);
        }
    }

    /// The sink has delivered everything below `seq` (a `Delivery::seq`), in order.
    pub fn ack(&mut self, seq: u64) {
        self.ack_to(seq);
        self.settled = self.settled.max(seq);
        if seq >= self.delivered {
            if let Some(to) = self.skipped_to.take() {
                self.ack_to(to);
                self.delivered = to;
                self.settled = to;
            }
        }
    }

    fn ack_to(&mut self, to: u64) {
        if to <= self.acked {
            return;
        }
        if let Err(e) = self.reader.ack(self.acked, to - self.acked) {
            // The cursor file could not be written: the events stay "undelivered" and will
            // be sent again after a restart (at-least-once), never lost.
            self.metrics.buffer_cursor_errors.inc();
            if let Some(suppressed) = READ_WARN.check() {
                tracing::error!(sink = self.reader.sink(), error = %e, suppressed, "cannot record delivery in the buffer cursor");
            }
            return;
        }
        self.acked = to;
    }

    /// Everything below this offset is acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn sink(&self) -> &str {
        self.reader.sink()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufferOptions;
    use crate::event::{Event, EventTime, Tag};
    use bytes::Bytes;

    fn batch(tag: &'static str, n: usize) -> Batch {
        let ev = Event {
            time: EventTime::new(1, 0),
            record: Bytes::from_static(&[0x80]),
            metadata: Bytes::new(),
        };
        Batch { tag: Tag::from_static(tag), events: vec![ev; n] }
    }

    fn open(dir: &std::path::Path, routes: &[(&str, &str)]) -> (Pipeline, Vec<SinkReader>) {
        let (buffer, _) = Buffer::open(BufferOptions::new(dir)).unwrap();
        let routes = routes
            .iter()
            .map(|(n, p)| SinkRoute {
                name: n.to_string(),
                pattern: TagPattern::parse(p).unwrap(),
                join: JoinOptions::default(),
            })
            .collect();
        Pipeline::new(buffer, routes, Arc::new(Metrics::new())).unwrap()
    }

    #[tokio::test]
    async fn routes_by_tag_and_skipped_batches_do_not_hold_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let (p, mut readers) = open(dir.path(), &[("app", "app.**"), ("all", "**")]);
        p.submit(&batch("app.web", 2)).await.unwrap();
        p.submit(&batch("sys", 1)).await.unwrap();
        p.submit(&batch("nobody", 0)).await.unwrap();
        let mut all = readers.pop().unwrap();
        let mut app = readers.pop().unwrap();

        let a = app.recv().await.unwrap();
        assert_eq!((a.batch.tag.as_str(), a.first, a.seq), ("app.web", 0, 2));
        assert!(app.try_recv().await.is_none(), "sys is not for app");
        app.ack(a.seq);
        assert_eq!(app.acked(), 3, "the skipped sys batch is acknowledged with it");

        let x = all.recv().await.unwrap();
        let y = all.recv().await.unwrap();
        assert_eq!((x.seq, y.first, y.seq), (2, 2, 3));
        all.ack(y.seq);
        assert_eq!(all.acked(), 3);
        assert!(p.buffer().delivered_all());
        p.buffer().close().await.unwrap();
        assert!(all.recv().await.is_none());
    }

    /// Counted deliveries route and skip as decoded ones do.
    #[tokio::test]
    async fn counted_deliveries_route_by_tag_and_acknowledge_skipped_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (p, mut readers) = open(dir.path(), &[("app", "app.**"), ("all", "**")]);
        p.submit(&batch("app.web", 2)).await.unwrap();
        p.submit(&batch("sys", 1)).await.unwrap();
        p.submit(&batch("app.db", 3)).await.unwrap();
        let mut all = readers.pop().unwrap();
        let mut app = readers.pop().unwrap();
        while let Some(d) = all.try_recv_counted().await {
            all.ack(d.seq);
        }
        let a = app.recv_counted().await.unwrap();
        assert_eq!(a, CountedDelivery { seq: 2, live: 2 });
        app.ack(a.seq);
        let b = app.try_recv_counted().await.unwrap();
        assert_eq!(b, CountedDelivery { seq: 6, live: 3 }, "sys skipped");
        assert_eq!(app.acked(), 3, "sys acknowledged at once: nothing was outstanding");
        assert!(app.try_recv_counted().await.is_none());
        app.ack(b.seq);
        assert!(p.buffer().delivered_all());
        p.buffer().close().await.unwrap();
        assert!(app.recv_counted().await.is_none());
    }

    /// A sink taken out of the config (or renamed) must stop holding the buffer: otherwise
    /// its old cursor keeps every segment on disk until the buffer is full, and "has every
    /// sink delivered everything?" (the drain's question) is never yes.
    #[tokio::test]
    async fn a_sink_no_longer_configured_does_not_hold_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (p, _readers) = open(dir.path(), &[("a", "**"), ("old", "**")]);
            p.submit(&batch("t", 2)).await.unwrap();
            p.buffer().close().await.unwrap();
        }
        let (p, mut readers) = open(dir.path(), &[("a", "**")]);
        let d = readers[0].recv().await.unwrap();
        readers[0].ack(d.seq);
        let names: Vec<String> = p.buffer().stats().sinks.into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["a".to_string()]);
        assert!(p.buffer().delivered_all());
        assert!(!dir.path().join("cursors").join("old").exists());
    }

    /// A batch this sink skips is acknowledged at once when nothing is outstanding. If that
    /// cursor write fails, the next skipped batches must still be acknowledged: else a sink
    /// whose pattern matches nothing more never moves its cursor again and holds the buffer.
    #[tokio::test]
    async fn a_failed_cursor_write_for_a_skipped_batch_does_not_stall_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::buffer::FaultyStorage::new();
        let (buffer, _) =
            Buffer::open_with_storage(BufferOptions::new(dir.path()), Arc::new(fs.clone()))
                .unwrap();
        let routes = vec![
            SinkRoute {
                name: "app".into(),
                pattern: TagPattern::parse("app.**").unwrap(),
                join: JoinOptions::default(),
            },
            SinkRoute {
                name: "all".into(),
                pattern: TagPattern::parse("**").unwrap(),
                join: JoinOptions::default(),
            },
        ];
        let (p, mut readers) = Pipeline::new(buffer, routes, Arc::new(Metrics::new())).unwrap();
        let mut app = readers.remove(0);
        p.submit(&batch("sys", 2)).await.unwrap();
        fs.faults.no_cursor_write.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(app.try_recv().await.is_none());
        fs.faults.no_cursor_write.store(false, std::sync::atomic::Ordering::SeqCst);
        p.submit(&batch("sys", 1)).await.unwrap();
        assert!(app.try_recv().await.is_none());
        assert_eq!(
            app.acked(),
            3,
            "the skipped batches after the failed write were not acknowledged"
        );
        let on_disk =
            crate::buffer::cursor::decode(&std::fs::read(dir.path().join("cursors/app")).unwrap());
        assert_eq!(on_disk, Some(3));
    }

    fn open_joining(dir: &std::path::Path, timeout: Duration) -> (Pipeline, SinkReader) {
        let (buffer, _) = Buffer::open(BufferOptions::new(dir)).unwrap();
        let join = JoinOptions {
            partial: Some(crate::reassemble::Limits { max_size: 1 << 20, timeout }),
            multiline: None,
        };
        let route = SinkRoute { name: "s".into(), pattern: TagPattern::match_all(), join };
        let (p, mut readers) =
            Pipeline::new(buffer, vec![route], Arc::new(Metrics::new())).unwrap();
        (p, readers.pop().unwrap())
    }

    fn docker(records: Vec<Bytes>) -> Batch {
        let events = records
            .into_iter()
            .map(|record| Event { time: EventTime::new(1, 0), record, metadata: Bytes::new() })
            .collect();
        Batch { tag: Tag::from_static("docker.web"), events }
    }

    fn log_of(e: &Event) -> Option<String> {
        use crate::reassemble::tests::{decode, field};
        (!e.is_tombstone())
            .then(|| field(&decode(&e.record), "log").unwrap().as_str().unwrap().to_string())
    }

    /// The join state lives only in memory: what it holds is not acknowledged, so a restart
    /// between two parts reads the first again and joins the line whole. (The SIGKILL case
    /// is `tests/reassembly.rs`; here the first run ends with a clean shutdown, which sends
    /// what it holds — a drain must deliver everything — and a crash right after that send.)
    #[tokio::test]
    async fn a_line_split_across_a_restart_is_joined_after_it() {
        use crate::reassemble::tests::{line, part};
        let dir = tempfile::tempdir().unwrap();
        {
            let (p, mut r) = open_joining(dir.path(), Duration::from_secs(60));
            p.submit(&docker(vec![line("c1", "one")])).await.unwrap();
            p.submit(&docker(vec![part("c1", "p", 1, false, "AAA")])).await.unwrap();
            p.submit(&docker(vec![line("c2", "other")])).await.unwrap();
            let d = r.recv().await.unwrap();
            assert_eq!((d.first, d.seq), (0, 1));
            r.ack(d.seq);
            assert!(r.try_recv().await.is_none(), "held behind the open line");
            p.buffer().close().await.unwrap();
            let flushed = r.recv().await.expect("held deliveries are sent at shutdown");
            assert_eq!((flushed.first, flushed.seq), (1, 2));
            let rec = crate::reassemble::tests::decode(&flushed.batch.events[0].record);
            assert_eq!(
                crate::reassemble::tests::field(&rec, "partial_incomplete"),
                Some(&rmpv::Value::Boolean(true))
            );
            assert_eq!(r.recv().await.map(|d| (d.first, d.seq)), Some((2, 3)));
            assert!(r.recv().await.is_none());
            // Not acknowledged (the process died before the sink's ack): read again.
            assert_eq!(r.acked(), 1);
        }
        let (p, mut r) = open_joining(dir.path(), Duration::from_secs(60));
        p.submit(&docker(vec![part("c1", "p", 2, true, "BBB")])).await.unwrap();
        let got: Vec<Delivery> =
            vec![r.recv().await.unwrap(), r.recv().await.unwrap(), r.recv().await.unwrap()];
        assert_eq!(
            got.iter().map(|d| (d.first, d.seq)).collect::<Vec<_>>(),
            vec![(1, 2), (2, 3), (3, 4)]
        );
        assert_eq!(log_of(&got[0].batch.events[0]).as_deref(), Some("AAABBB"));
        assert_eq!(log_of(&got[1].batch.events[0]).as_deref(), Some("other"));
        assert!(got[2].batch.events[0].is_tombstone());
        r.ack(4);
        assert!(p.buffer().delivered_all());
    }

    /// With joins on, counting goes through the join: the parts of a line count as one.
    #[tokio::test]
    async fn counted_deliveries_with_joins_count_joined_records() {
        use crate::reassemble::tests::{line, part};
        let dir = tempfile::tempdir().unwrap();
        let (p, mut r) = open_joining(dir.path(), Duration::from_secs(60));
        let parts = vec![part("c1", "p", 1, false, "AAA"), part("c1", "p", 2, true, "BBB")];
        p.submit(&docker(parts)).await.unwrap();
        p.submit(&docker(vec![line("c1", "one")])).await.unwrap();
        assert_eq!(r.recv_counted().await, Some(CountedDelivery { seq: 2, live: 1 }));
        assert_eq!(r.recv_counted().await, Some(CountedDelivery { seq: 3, live: 1 }));
        r.ack(3);
        assert!(p.buffer().delivered_all());
    }

    /// A sink waiting in `recv` is woken by a group's timeout, without new input.
    #[tokio::test]
    async fn recv_wakes_up_for_a_timed_out_line() {
        use crate::reassemble::tests::part;
        let dir = tempfile::tempdir().unwrap();
        let (p, mut r) = open_joining(dir.path(), Duration::from_millis(200));
        p.submit(&docker(vec![part("c1", "p", 1, false, "AAA")])).await.unwrap();
        let d =
            tokio::time::timeout(Duration::from_secs(10), r.recv()).await.expect("woken").unwrap();
        assert_eq!(log_of(&d.batch.events[0]).as_deref(), Some("AAA"));
        r.ack(d.seq);
        assert!(p.buffer().delivered_all());
    }

    #[tokio::test]
    async fn unmatched_tags_are_counted_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _readers) = open(dir.path(), &[("app", "app.**")]);
        p.submit(&batch("other", 4)).await.unwrap();
        assert_eq!(p.buffer().head(), 0);
        assert_eq!(p.inner.metrics.unmatched_records.get(), 4);
    }

    #[tokio::test]
    async fn a_sink_resumes_after_what_it_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (p, mut readers) = open(dir.path(), &[("s", "**")]);
            for _ in 0..3 {
                p.submit(&batch("t", 2)).await.unwrap();
            }
            let mut r = readers.pop().unwrap();
            let d = r.recv().await.unwrap();
            r.ack(d.seq);
            p.buffer().close().await.unwrap();
        }
        let (_p, mut readers) = open(dir.path(), &[("s", "**")]);
        let d = readers[0].recv().await.unwrap();
        assert_eq!(d.first, 2);
        readers.pop();
    }
}
