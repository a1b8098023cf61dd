//! One client connection: optional handshake, then frames → decode → pipeline → ack.
//!
//! Bytes are read into one growing buffer; `frame_len` tells when a whole request is there
//! (and how long it is at least, so a large request is not re-walked on every read). A frame
//! is split off the buffer without copying and its records stay slices of it.

use super::InputContext;
use crate::backoff::Backoff;
use crate::buffer::{Appending, BufferError};
use crate::event::Batch;
use crate::forward::decode::{decode_frame, Frame, Limits, Mode};
use crate::forward::encode::encode_ack;
use crate::forward::frame::{frame_len, FrameStatus};
use crate::forward::handshake::ServerHandshake;
use crate::pipeline::SubmitError;
use crate::ratelimit::RateLimit;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const READ_CHUNK: usize = 64 * 1024;

static BAD_INPUT_WARN: RateLimit = RateLimit::new(10, 10);

/// Full-buffer refusals and buffer write errors, shared by all connections.
static BUFFER_WARN: RateLimit = RateLimit::new(5, 10);

/// Why a connection ended.
enum End {
    /// Client closed, idle, or shutdown: not an error.
    Normal,
    /// Bad input or I/O error, already counted and logged.
    Dropped,
}

pub(super) async fn run<S>(stream: S, peer: &str, ctx: &InputContext, shutdown: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        peer,
        ctx,
        inflight_bytes: 0,
        retry_backoff: Backoff::doubling(RETRY_INITIAL, RETRY_MAX),
    };
    if let End::Dropped = conn.serve(shutdown).await {
        tracing::debug!(peer, "connection dropped");
    }
}

struct Conn<'a, S> {
    stream: S,
    buf: BytesMut,
    peer: &'a str,
    ctx: &'a InputContext,
    /// Frame bytes of the in-flight requests.
    inflight_bytes: usize,
    /// Pause before handing a failed request over again; doubles up to `RETRY_MAX`, no
    /// jitter (the disk is this host's alone).
    retry_backoff: Backoff,
}

const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Read {
    Data,
    Eof,
    Idle,
    Failed,
}

/// A request handed to the buffer and not yet durable. Its batch is kept so that it can be
/// handed over again if the write fails (disk full): nothing is acked or lost meanwhile.
struct InFlight {
    batch: Batch,
    /// The `chunk`s to ack once durable, in request order (several when requests were
    /// stored together, none for clients that do not ask for acks).
    chunks: Vec<Bytes>,
    appending: Appending,
    bytes: usize,
}

/// Consecutive requests of one connection with the same tag, read together, are stored as
/// one buffer entry: Docker's driver sends one Message-mode request per line, and one entry
/// (one CRC, one writer hand-off, one read-back) per line would cost several times the CPU
/// of the line itself. Bounded so a group never waits for more than what is already read.
struct Group {
    batch: Batch,
    chunks: Vec<Bytes>,
    bytes: usize,
}

const GROUP_MAX_BYTES: usize = 256 << 10;
const GROUP_MAX_EVENTS: usize = 10_000;

/// Requests a connection may have in the buffer's write queue before it stops reading: the
/// next requests are read and handed over while earlier ones wait for their group commit,
/// so one client's stream fills a group instead of waiting one fsync per request.
const MAX_INFLIGHT: usize = 1024;
const MAX_INFLIGHT_BYTES: usize = 1 << 20;

/// The oldest in-flight request's outcome; never resolves when there is none.
async fn front(inflight: &mut VecDeque<InFlight>) -> Result<std::ops::Range<u64>, BufferError> {
    match inflight.front_mut() {
        Some(f) => (&mut f.appending).await,
        None => std::future::pending().await,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn serve(&mut self, shutdown: &CancellationToken) -> End {
        if let Some(end) = self.handshake(shutdown).await {
            return end;
        }
        let limits = Limits { max_message_size: self.ctx.max_message_size };
        let mut inflight = VecDeque::new();
        // Bytes needed before it is worth walking the buffer again.
        let mut need = 1;
        // Set when shutdown starts: read until the client is quiet, but not past this.
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let mut group: Option<Group> = None;
            while self.buf.len() >= need {
                match frame_len(&self.buf, limits.max_message_size) {
                    Ok(FrameStatus::Complete(n)) => {
                        let frame = self.buf.split_to(n).freeze();
                        need = 1;
                        let g = match self.decode(frame, &limits) {
                            Ok(Some(g)) => g,
                            Ok(None) => continue,
                            Err(end) => {
                                self.store(group.take(), &mut inflight).await;
                                return self.finish(&mut inflight, end).await;
                            }
                        };
                        group = match group.take() {
                            Some(mut acc)
                                if acc.batch.tag == g.batch.tag
                                    && acc.bytes + g.bytes <= GROUP_MAX_BYTES
                                    && acc.batch.len() + g.batch.len() <= GROUP_MAX_EVENTS =>
                            {
                                acc.batch.events.extend(g.batch.events);
                                acc.chunks.extend(g.chunks);
                                acc.bytes += g.bytes;
                                Some(acc)
                            }
                            other => {
                                if let Some(end) = self.store(other, &mut inflight).await {
                                    return self.finish(&mut inflight, end).await;
                                }
                                Some(g)
                            }
                        };
                    }
                    Ok(FrameStatus::Incomplete { at_least }) => {
                        need = at_least.max(self.buf.len() + 1);
                        break;
                    }
                    Err(e) => {
                        let end = self.reject(e.reason(), &e);
                        self.store(group.take(), &mut inflight).await;
                        return self.finish(&mut inflight, end).await;
                    }
                }
            }
            if let Some(end) = self.store(group.take(), &mut inflight).await {
                return self.finish(&mut inflight, end).await;
            }
            // Acks go out as soon as their requests are durable, in order.
            if let Some(end) = self.settle_ready(&mut inflight).await {
                return end;
            }
            // A full window: wait for the oldest request before reading more.
            while inflight.len() >= MAX_INFLIGHT || self.inflight_bytes >= MAX_INFLIGHT_BYTES {
                let res = front(&mut inflight).await;
                if let Some(end) = self.complete(&mut inflight, res).await {
                    return end;
                }
            }
            let want = need
                .saturating_sub(self.buf.len())
                .clamp(READ_CHUNK, limits.max_message_size.max(READ_CHUNK));
            self.buf.reserve(want);
            // Once shutdown starts, keep reading what the client already sent, and close when
            // it has been quiet for a moment (or at EOF).
            let timeout = match draining {
                Some(until) => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        // A client that never pauses: stop here. What it sent after this
                        // point was not acked, so it is sent again after the restart.
                        return self.finish(&mut inflight, End::Normal).await;
                    }
                    self.ctx.drain_quiet.min(left)
                }
                None => self.ctx.idle_timeout,
            };
            let read = tokio::select! {
                r = self.read(timeout) => r,
                res = front(&mut inflight) => {
                    if let Some(end) = self.complete(&mut inflight, res).await {
                        return end;
                    }
                    continue;
                }
                _ = shutdown.cancelled(), if draining.is_none() => {
                    draining = Some(tokio::time::Instant::now() + self.ctx.drain_max);
                    continue;
                }
            };
            match read {
                Read::Data => {}
                Read::Eof => {
                    let end = if self.buf.is_empty() {
                        End::Normal
                    } else {
                        // A request cut short by the client: nothing of it was acked.
                        self.ctx.metrics.input_error("truncated");
                        self.warn(
                            "truncated",
                            &format!(
                                "connection closed in the middle of a request ({} bytes buffered)",
                                self.buf.len()
                            ),
                        );
                        End::Dropped
                    };
                    return self.finish(&mut inflight, end).await;
                }
                Read::Idle => return self.finish(&mut inflight, End::Normal).await,
                Read::Failed => return End::Dropped,
            }
        }
    }

    async fn read(&mut self, timeout: Duration) -> Read {
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Read::Idle,
            Ok(Ok(0)) => Read::Eof,
            Ok(Ok(_)) => Read::Data,
            Ok(Err(e)) => {
                tracing::debug!(peer = self.peer, error = %e, "read failed");
                Read::Failed
            }
        }
    }

    /// One complete frame, decoded and counted. `Ok(None)`: nothing to store (a heartbeat);
    /// `Err` ends the connection.
    fn decode(&mut self, frame: Bytes, limits: &Limits) -> Result<Option<Group>, End> {
        let len = frame.len();
        let req = match decode_frame(frame, limits) {
            Ok(Frame::Heartbeat) => return Ok(None),
            Ok(Frame::Request(r)) => r,
            Err(e) => return Err(self.reject(e.reason(), &e)),
        };
        let m = &self.ctx.metrics;
        m.input_requests.inc();
        m.input_records.inc_by(req.batch.len() as u64);
        m.input_bytes.inc_by(len as u64);
        // What the request holds in memory until durable: its frame, or the inflated
        // payload its records point into (a gzip request is small on the wire). Other
        // modes' records are slices of the frame: no need to add them up.
        let bytes = match req.mode {
            Mode::CompressedPackedForward => len.max(req.batch.record_bytes()),
            _ => len,
        };
        Ok(Some(Group { batch: req.batch, chunks: req.options.chunk.into_iter().collect(), bytes }))
    }

    /// Hand a group of requests to the buffer; it joins the in-flight queue, to be acked
    /// once durable. `Some` ends the connection.
    async fn store(
        &mut self,
        group: Option<Group>,
        inflight: &mut VecDeque<InFlight>,
    ) -> Option<End> {
        let mut g = group?;
        // Before the buffer: what is stored (and acked) is the enriched record.
        g.bytes += self.ctx.enricher.enrich(&mut g.batch).await;
        let appending = match self.ctx.pipeline.enqueue(&g.batch).await {
            Ok(a) => a,
            Err(SubmitError::Full { .. }) => {
                // when_full = "drop_newest": counted by the pipeline; not acked, so a
                // client that asked for an ack sends it again later.
                if let Some(suppressed) = BUFFER_WARN.check() {
                    tracing::warn!(
                        peer = self.peer,
                        suppressed,
                        "buffer full: events refused (when_full = \"drop_newest\")"
                    );
                }
                return None;
            }
            Err(e @ SubmitError::TooLarge(_)) => return Some(self.reject("too_large", &e)),
            Err(SubmitError::Buffer(BufferError::Closed)) => return Some(End::Dropped),
            // Retried by `complete` like a failed write.
            Err(SubmitError::Buffer(e)) => Appending::Done(Some(Err(e))),
        };
        self.inflight_bytes += g.bytes;
        inflight.push_back(InFlight {
            batch: g.batch,
            chunks: g.chunks,
            appending,
            bytes: g.bytes,
        });
        None
    }

    /// Complete every in-flight request that is already durable, without waiting.
    async fn settle_ready(&mut self, inflight: &mut VecDeque<InFlight>) -> Option<End> {
        while let Some(res) = inflight.front_mut().and_then(|f| f.appending.try_result()) {
            if let Some(end) = self.complete(inflight, res).await {
                return Some(end);
            }
        }
        None
    }

    /// The oldest in-flight request has an outcome: ack it, or hand it over again after a
    /// failed write (the client waits meanwhile: TCP backpressure, nothing acked or lost).
    /// A request handed over again is stored after those that followed it and succeeded:
    /// a disk error may reorder a connection's requests, never lose them.
    async fn complete(
        &mut self,
        inflight: &mut VecDeque<InFlight>,
        res: Result<std::ops::Range<u64>, BufferError>,
    ) -> Option<End> {
        match res {
            Ok(_) => {
                let f = inflight.pop_front()?;
                self.inflight_bytes -= f.bytes;
                self.retry_backoff.reset();
                for chunk in &f.chunks {
                    // A client that asks for acks but never reads them would block this
                    // write for ever (and itself, on its own writes): bounded like reads.
                    let ack = encode_ack(chunk);
                    match tokio::time::timeout(self.ctx.idle_timeout, self.stream.write_all(&ack))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(peer = self.peer, error = %e, "ack write failed");
                            return Some(End::Dropped);
                        }
                        Err(_) => {
                            self.warn("ack_timeout", "the client does not read its acks");
                            return Some(End::Dropped);
                        }
                    }
                }
                None
            }
            Err(BufferError::Closed) => Some(End::Dropped),
            Err(e) => {
                if let Some(suppressed) = BUFFER_WARN.check() {
                    tracing::error!(peer = self.peer, error = %e, suppressed, "cannot write to the buffer; holding the client until it can");
                }
                self.retry_backoff.wait(None).await;
                let f = inflight.front_mut()?;
                match self.ctx.pipeline.enqueue(&f.batch).await {
                    Ok(a) => f.appending = a,
                    Err(SubmitError::Full { .. }) => {
                        // drop_newest while retrying: refused like a new request.
                        let f = inflight.pop_front()?;
                        self.inflight_bytes -= f.bytes;
                    }
                    Err(SubmitError::Buffer(BufferError::Closed)) => return Some(End::Dropped),
                    Err(SubmitError::Buffer(e)) => f.appending = Appending::Done(Some(Err(e))),
                    Err(e @ SubmitError::TooLarge(_)) => return Some(self.reject("too_large", &e)),
                }
                None
            }
        }
    }

    /// Before the connection ends: wait for what was handed over and ack it, so that a
    /// client closing its side right after sending still gets every ack it asked for.
    async fn finish(&mut self, inflight: &mut VecDeque<InFlight>, end: End) -> End {
        while !inflight.is_empty() {
            let res = front(inflight).await;
            if let Some(e) = self.complete(inflight, res).await {
                return e;
            }
        }
        end
    }

    /// The HELO / PING / PONG exchange when a shared key is configured. `Some` ends the
    /// connection.
    async fn handshake(&mut self, shutdown: &CancellationToken) -> Option<End> {
        let auth = self.ctx.auth.as_ref()?;
        let hs = ServerHandshake::new(auth);
        if self.stream.write_all(&hs.helo()).await.is_err() {
            return Some(End::Dropped);
        }
        // The PING is small; a client that sends more than this before authenticating is
        // not a Forward client.
        const MAX_PING: usize = 64 * 1024;
        let frame = loop {
            match frame_len(&self.buf, MAX_PING) {
                Ok(FrameStatus::Complete(n)) => break self.buf.split_to(n).freeze(),
                Ok(FrameStatus::Incomplete { .. }) => {}
                Err(e) => return Some(self.reject("bad_handshake", &e)),
            }
            self.buf.reserve(1024);
            let read = tokio::select! {
                r = self.read(self.ctx.idle_timeout) => r,
                _ = shutdown.cancelled() => return Some(End::Normal),
            };
            match read {
                Read::Data => {}
                Read::Eof | Read::Idle => return Some(End::Normal),
                Read::Failed => return Some(End::Dropped),
            }
        };
        let outcome = hs.check_ping(auth, &frame);
        let write = self.stream.write_all(&outcome.pong).await;
        if !outcome.accepted {
            let reason = outcome.error.as_ref().map_or("auth_failed", |e| e.reason());
            self.ctx.metrics.input_error(reason);
            self.warn(reason, &format!("handshake failed: {}", outcome.reason));
            let _ = self.stream.shutdown().await;
            return Some(End::Dropped);
        }
        if write.is_err() {
            return Some(End::Dropped);
        }
        None
    }

    fn reject(&mut self, reason: &'static str, err: &dyn std::fmt::Display) -> End {
        self.ctx.metrics.input_error(reason);
        self.warn(reason, &err.to_string());
        End::Dropped
    }

    fn warn(&self, reason: &'static str, message: &str) {
        if let Some(suppressed) = BAD_INPUT_WARN.check() {
            tracing::warn!(peer = self.peer, reason, suppressed, "closing connection: {message}");
        }
    }
}
