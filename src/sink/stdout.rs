//! The stdout sink: every event as one JSON line on standard output.
//!
//! This module also holds the run loop it shares with the file sink ([`drive`]): take one
//! batch and whatever else is already queued, encode the group and write it on the blocking
//! pool, retry the same bytes until they are written, and only then acknowledge. A sink
//! never drops data and never acknowledges what it has not written; while it cannot write,
//! its queue fills and the pipeline slows the inputs.

use super::batch::{Gather, Limits, MaxWait};
use super::{SinkContext, SinkError};
use crate::backoff::Backoff;
use crate::config::Format;
use crate::metrics::{Metrics, SinkLabel};
use crate::msgpack::json::{write_batch_lines, BatchLines};
use crate::pipeline::Delivery;
use crate::ratelimit::RateLimit;
use prometheus_client::metrics::counter::Counter;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::Duration;

/// Write JSON lines to standard output until every input has stopped.
pub async fn run(format: Format, ctx: SinkContext) -> Result<(), SinkError> {
    // A duplicate of fd 1, written directly: std's `Stdout` buffers by line and tokio's
    // reports a write as done before the kernel has it. We must know exactly which bytes
    // were written before acknowledging, and where to resume after an error.
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| SinkError::Io { sink: ctx.name.clone(), source })?;
    let writer = StdoutWriter::new(format, std::fs::File::from(fd));
    drive(ctx, writer, write_backoff()).await
}

/// The stdout sink's [`GroupWriter`]: one buffer, written from where the last attempt
/// stopped.
pub(super) struct StdoutWriter<W> {
    out: W,
    buf: Vec<u8>,
    written: usize,
}

impl<W: Write + Send + 'static> StdoutWriter<W> {
    pub(super) fn new(format: Format, out: W) -> Self {
        // One format today; a new one must be handled here (the match stops compiling).
        let Format::Json = format;
        StdoutWriter { out, buf: Vec::with_capacity(64 * 1024), written: 0 }
    }
}

impl<W: Write + Send + 'static> GroupWriter for StdoutWriter<W> {
    fn encode(&mut self, group: &[Delivery]) -> BatchLines {
        self.buf.clear();
        self.written = 0;
        encode_group(&mut self.buf, group)
    }

    fn write(&mut self) -> Result<(), WriteError> {
        write_from(&mut self.out, &self.buf, &mut self.written)
            .and_then(|()| self.out.flush())
            .map_err(|source| WriteError { what: "write to stdout".into(), source })
    }

    fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.written = 0;
    }
}

/// JSON lines for every batch of a group, appended to `out`.
pub(super) fn encode_group(out: &mut Vec<u8>, group: &[Delivery]) -> BatchLines {
    let mut total = BatchLines::default();
    for d in group {
        let lines = write_batch_lines(out, &d.batch);
        total.failed += lines.failed;
        total.first_error = total.first_error.or(lines.first_error);
    }
    total
}

/// Write `buf[*written..]`, advancing `*written` by what the kernel took, so a retry after
/// an error resumes exactly there: no line is written twice or torn.
pub(super) fn write_from(out: &mut impl Write, buf: &[u8], written: &mut usize) -> io::Result<()> {
    while let Some(rest) = buf.get(*written..).filter(|r| !r.is_empty()) {
        match out.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A sink's output, as the shared run loop sees it. Both methods that do I/O run on the
/// blocking pool.
pub(super) trait GroupWriter: Send + 'static {
    /// Encode a group of deliveries, replacing the previous group's output. Called once per
    /// group; an event that cannot be transcoded is encoded as an error line and counted.
    fn encode(&mut self, group: &[Delivery]) -> BatchLines;
    /// Write the encoded group and make it as durable as the sink promises. After an error
    /// the next call resumes where this one stopped, without duplicating anything.
    fn write(&mut self) -> Result<(), WriteError>;
    /// Bytes of encoded output in the group.
    fn bytes(&self) -> u64;
    /// Forget the group once it has been written.
    fn clear(&mut self);
}

/// A failed write: what was being done to what (`open /var/log/x.log`), and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(super) struct WriteError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

/// The backoff between retries of the same group: 100 ms, doubling to 10 s, no jitter (the
/// disk is this host's alone: nobody to spread the retries from). Quick recovery from a
/// blip, no busy loop on a full disk.
pub(super) fn write_backoff() -> Backoff {
    Backoff::doubling(Duration::from_millis(100), Duration::from_secs(10))
}

/// How often the same warning may repeat while a problem persists: a sink retrying every
/// 10 s for an hour must not write 360 identical lines.
const REWARN_AFTER_SECS: u64 = 300;

/// Warn once per distinct message, again only after [`REWARN_AFTER_SECS`].
fn warn_limiter() -> RateLimit {
    RateLimit::new(1, REWARN_AFTER_SECS)
}

/// The sink's counters, created at start so they show 0 before the first event.
struct Counters {
    records: Counter,
    bytes: Counter,
    errors: Counter,
}

impl Counters {
    fn new(metrics: &Metrics, sink: &str) -> Counters {
        let label = SinkLabel { sink: sink.to_owned() };
        Counters {
            records: metrics.output_records.get_or_create(&label).clone(),
            bytes: metrics.output_bytes.get_or_create(&label).clone(),
            errors: metrics.output_errors.get_or_create(&label).clone(),
        }
    }
}

/// At most this much record payload, or this many batches, per write: bounds the buffer
/// and the work lost to a retry, while still coalescing bursts into few writes and fsyncs.
const MAX_GROUP_BYTES: usize = 4 * 1024 * 1024;
const MAX_GROUP_BATCHES: usize = 1024;

/// Groups: the next batch and what is already queued behind it, within the limits above.
fn gather() -> Gather {
    Gather::new(Limits {
        events: usize::MAX,
        bytes: MAX_GROUP_BYTES,
        deliveries: MAX_GROUP_BATCHES,
        max_wait: MaxWait::Queued,
    })
}

/// The run loop of the local sinks: group, encode and write off the async workers, retry
/// with backoff until written, then acknowledge and count. Returns once the pipeline has
/// ended and everything received has been written.
pub(super) async fn drive<W: GroupWriter>(
    mut ctx: SinkContext,
    writer: W,
    mut backoff: Backoff,
) -> Result<(), SinkError> {
    let counters = Counters::new(&ctx.metrics, &ctx.name);
    let write_warn = warn_limiter();
    let encode_warn = warn_limiter();
    let mut gather = gather();
    // Moved to the blocking pool for each attempt and handed back.
    let mut state = (writer, Vec::new());
    loop {
        match gather.fill(&mut ctx.reader).await {
            Some(group) => state.1 = group,
            None => return Ok(()),
        }
        let mut first_attempt = true;
        let mut failed_before = false;
        loop {
            let encode = std::mem::take(&mut first_attempt);
            let job = tokio::task::spawn_blocking(move || {
                let (writer, group) = &mut state;
                let lines = encode.then(|| writer.encode(group));
                let result = writer.write();
                (state, lines, result)
            });
            let (s, lines, result) = job.await.map_err(|e| SinkError::Io {
                sink: ctx.name.clone(),
                source: io::Error::other(format!("writer task failed: {e}")),
            })?;
            state = s;
            if let Some(BatchLines { failed, first_error: Some(e) }) = lines {
                counters.errors.inc_by(failed);
                if let Some(suppressed) = encode_warn.check_key("transcode") {
                    tracing::warn!(sink = %ctx.name, failed, error = %e, suppressed, "records that are not valid msgpack written as error lines");
                }
            }
            match result {
                Ok(()) => break,
                Err(e) => {
                    counters.errors.inc();
                    if let Some(suppressed) = write_warn.check_key(&e.to_string()) {
                        tracing::warn!(sink = %ctx.name, error = %e, suppressed, "write failed; retrying the same data");
                    }
                    failed_before = true;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        if failed_before {
            tracing::info!(sink = %ctx.name, "write succeeded after errors");
            backoff.reset();
            write_warn.reset();
        }
        let (writer, group) = &mut state;
        let records: u64 = group.iter().map(|d| d.batch.live_len() as u64).sum();
        if let Some(seq) = group.iter().map(|d| d.seq).max() {
            ctx.reader.ack(seq);
        }
        counters.records.inc_by(records);
        counters.bytes.inc_by(writer.bytes());
        writer.clear();
        group.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Event, EventTime, Tag};
    use crate::pipeline::Pipeline;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn setup() -> (Pipeline, SinkContext, Arc<Metrics>, tempfile::TempDir) {
        SinkContext::for_test("out")
    }

    fn batch(tag: &'static str, from: u64, n: u64) -> Batch {
        let events = (from..from + n)
            .map(|i| {
                let v = rmpv::Value::Map(vec![(rmpv::Value::from("n"), rmpv::Value::from(i))]);
                let mut b = Vec::new();
                rmpv::encode::write_value(&mut b, &v).unwrap();
                Event { time: EventTime::new(0, 0), record: Bytes::from(b), metadata: Bytes::new() }
            })
            .collect();
        Batch { tag: Tag::from_static(tag), events }
    }

    fn numbers(out: &[u8]) -> Vec<u64> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn counter(f: &prometheus_client::metrics::family::Family<SinkLabel, Counter>) -> u64 {
        f.get_or_create(&SinkLabel { sink: "out".into() }).get()
    }

    /// A shared buffer that can be told to fail, or to take only a few bytes per write.
    #[derive(Clone, Default)]
    struct TestOut {
        data: Arc<Mutex<Vec<u8>>>,
        /// Results of the next writes, front first: `Err` → that error, `Ok(n)` → take at most n.
        script: Arc<Mutex<std::collections::VecDeque<io::Result<usize>>>>,
        broken: Arc<AtomicBool>,
    }

    impl Write for TestOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = match self.script.lock().unwrap().pop_front() {
                Some(Err(e)) => return Err(e),
                Some(Ok(n)) => n.min(buf.len()),
                None => buf.len(),
            };
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn fast() -> Backoff {
        Backoff::doubling(Duration::from_millis(1), Duration::from_millis(5))
    }

    #[tokio::test]
    async fn writes_every_line_in_order_and_counts() {
        let (p, ctx, metrics, _dir) = setup();
        let out = TestOut::default();
        let sink = tokio::spawn(drive(ctx, StdoutWriter::new(Format::Json, out.clone()), fast()));
        p.submit(&batch("a", 0, 3)).await.unwrap();
        p.submit(&batch("b", 3, 2)).await.unwrap();
        p.submit(&batch("a", 5, 1)).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        sink.await.unwrap().unwrap();
        let data = out.data.lock().unwrap().clone();
        assert_eq!(numbers(&data), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(counter(&metrics.output_records), 6);
        assert_eq!(counter(&metrics.output_bytes), data.len() as u64);
        assert_eq!(counter(&metrics.output_errors), 0);
    }

    #[tokio::test]
    async fn counters_exist_before_the_first_event() {
        let (p, ctx, metrics, _dir) = setup();
        p.buffer().close().await.unwrap();
        drop(p);
        drive(ctx, StdoutWriter::new(Format::Json, TestOut::default()), fast()).await.unwrap();
        let text = metrics.render();
        for name in [
            "output_records_total{sink=\"out\"} 0",
            "output_bytes_total{sink=\"out\"} 0",
            "output_errors_total{sink=\"out\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn errors_and_partial_writes_are_retried_without_duplicates() {
        let (p, ctx, metrics, _dir) = setup();
        let out = TestOut::default();
        out.script.lock().unwrap().extend([
            Err(io::ErrorKind::BrokenPipe.into()),
            Ok(7), // part of the first line
            Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(1),
            Err(io::ErrorKind::Interrupted.into()), // retried at once, not counted
        ]);
        p.submit(&batch("a", 0, 4)).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        drive(ctx, StdoutWriter::new(Format::Json, out.clone()), fast()).await.unwrap();
        assert_eq!(numbers(&out.data.lock().unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(counter(&metrics.output_errors), 2);
        assert_eq!(counter(&metrics.output_records), 4);
    }

    #[tokio::test]
    async fn nothing_is_acknowledged_while_writes_fail() {
        let (p, ctx, metrics, _dir) = setup();
        let out = TestOut::default();
        out.broken.store(true, Ordering::SeqCst);
        let sink = tokio::spawn(drive(ctx, StdoutWriter::new(Format::Json, out.clone()), fast()));
        p.submit(&batch("a", 0, 2)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&metrics.output_errors) < 3 {
            assert!(Instant::now() < deadline, "sink never retried");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(counter(&metrics.output_records), 0);
        assert!(out.data.lock().unwrap().is_empty());
        out.broken.store(false, Ordering::SeqCst);
        p.submit(&batch("a", 2, 1)).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        sink.await.unwrap().unwrap();
        assert_eq!(numbers(&out.data.lock().unwrap()), vec![0, 1, 2]);
        assert_eq!(counter(&metrics.output_records), 3);
    }

    #[tokio::test]
    async fn unencodable_record_is_written_as_error_line_and_counted() {
        let (p, ctx, metrics, _dir) = setup();
        let out = TestOut::default();
        let mut b = batch("a", 0, 2);
        b.events[0].record = Bytes::from_static(&[0x81, 0xa1]);
        p.submit(&b).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        drive(ctx, StdoutWriter::new(Format::Json, out.clone()), fast()).await.unwrap();
        let data = out.data.lock().unwrap().clone();
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&data)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0]["record"].is_null());
        assert!(lines[0]["error"].as_str().unwrap().contains("truncated"));
        assert_eq!(lines[1]["record"]["n"], 1);
        assert_eq!(counter(&metrics.output_errors), 1);
        assert_eq!(counter(&metrics.output_records), 2);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = write_backoff();
        let seq: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn warnings_once_per_distinct_error() {
        let w = warn_limiter();
        assert!(w.check_key("a").is_some());
        assert!(w.check_key("a").is_none());
        assert!(w.check_key("b").is_some());
        assert!(w.check_key("a").is_some());
    }
}
