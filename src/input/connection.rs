//! One client connection: optional handshake, then frames → decode → pipeline → ack.
//!
//! Bytes are read into one growing buffer; a [`FrameWalk`] tells when a whole request is
//! there, resuming where the previous read's walk stopped (so a request dripped in small
//! reads is walked once), and how long it is at least. A frame is split off the buffer
//! without copying and its records stay slices of it.
//!
//! Memory: what a connection holds beyond its allowance (a read buffer outgrowing it, the
//! frames of requests not yet acked, an inflated payload) is taken from the input's
//! [`MemoryBudget`](super::MemoryBudget) before it is allocated; when the budget has no room
//! the connection is not read (TCP backpressure). The rules that keep that deadlock-free are
//! in `budget.rs`.
//!
//! Deadlines: the handshake must be done `handshake_timeout` after the accept, a request
//! whole `frame_timeout` after its first byte (time waiting for the budget excluded), and a
//! connection that sends nothing for `idle_timeout` is closed. A client sending a byte now
//! and then keeps none of them going for ever.

use super::budget::{Share, CONNECTION_ALLOWANCE};
use super::InputContext;
use crate::backoff::Backoff;
use crate::buffer::chunks::{self, Claim, Claimed};
use crate::buffer::{Appending, BufferError};
use crate::event::Batch;
use crate::forward::decode::{decode_frame, may_inflate, Frame, Limits, Mode};
use crate::forward::encode::encode_ack;
use crate::forward::frame::{frame_len, FrameStatus, FrameWalk};
use crate::forward::handshake::ServerHandshake;
use crate::pipeline::SubmitError;
use crate::ratelimit::RateLimit;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const READ_CHUNK: usize = 64 * 1024;

static BAD_INPUT_WARN: RateLimit = RateLimit::new(10, 10);

/// Full-buffer refusals and buffer write errors, shared by all connections.
static BUFFER_WARN: RateLimit = RateLimit::new(5, 10);

/// Connections pausing for the memory budget, shared by all connections.
static MEMORY_WARN: RateLimit = RateLimit::new(5, 10);

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
        held_bytes: 0,
        retry_backoff: Backoff::doubling(RETRY_INITIAL, RETRY_MAX),
        walk: FrameWalk::new(),
        share: ctx.budget.share(),
        frame_reserve: None,
        frame_deadline: None,
        budget_wait_since: None,
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
    /// Bytes of the requests split off the buffer and not yet acked (grouped, or in the
    /// buffer's write queue): their frames, or the payloads they inflated to.
    held_bytes: usize,
    /// Pause before handing a failed request over again; doubles up to `RETRY_MAX`, no
    /// jitter (the disk is this host's alone).
    retry_backoff: Backoff,
    /// The walk of the frame at the start of `buf`, kept across reads.
    walk: FrameWalk,
    /// This connection's bytes of the memory budget.
    share: Share,
    /// Set when the frame being read outgrew the allowance: the budget bytes reserved for
    /// the read buffer until it is whole (the largest it can become, see `budget.rs`).
    frame_reserve: Option<usize>,
    /// When the frame being read must be whole; `None` between frames.
    frame_deadline: Option<Instant>,
    /// Since when the connection has been waiting for the budget (kept if the wait is
    /// interrupted by an ack going out), to move `frame_deadline` by the time waited.
    budget_wait_since: Option<Instant>,
}

const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Read {
    Data,
    Eof,
    Idle,
    /// `frame_timeout` passed with a frame unfinished.
    FrameTimeout,
    Failed,
}

/// A request handed to the buffer and not yet durable. Its batch is kept so that it can be
/// handed over again if the write fails (disk full): nothing is acked or lost meanwhile.
struct InFlight {
    batch: Batch,
    /// The `chunk`s to ack once durable, in request order (several when requests were
    /// stored together, none for clients that do not ask for acks).
    chunks: Vec<Bytes>,
    /// The claims on the requests' keys (see `buffer::chunks`), made stored once durable.
    claims: Vec<Claimed>,
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
    claims: Vec<Claimed>,
    /// Of a request just decoded: its key, not yet claimed.
    key: Option<u64>,
    bytes: usize,
}

impl Group {
    fn keys(claims: &[Claimed]) -> Vec<u64> {
        claims.iter().map(Claimed::key).collect()
    }
}

const GROUP_MAX_BYTES: usize = 256 << 10;
const GROUP_MAX_EVENTS: usize = 10_000;

/// Requests a connection may have in the buffer's write queue before it stops reading: the
/// next requests are read and handed over while earlier ones wait for their group commit,
/// so one client's stream fills a group instead of waiting one fsync per request. Each
/// request is held twice meanwhile (its frame, kept to store it again if the write fails,
/// and its entry), so the bytes cost double: 512 KiB (three requests of 1,000 Docker
/// records) streams as fast as 1 MiB did and took 8 MiB off peak RSS with 8 connections
/// sending without acks (docs/performance.md).
const MAX_INFLIGHT: usize = 1024;
const MAX_INFLIGHT_BYTES: usize = 512 << 10;

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
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // Bytes needed before it is worth walking the buffer again.
        let mut need = 1;
        // Set when shutdown starts: read until the client is quiet, but not past this.
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let mut group: Option<Group> = None;
            while self.buf.len() >= need {
                match self.walk.next(&self.buf, limits.max_message_size) {
                    Ok(FrameStatus::Complete(n)) => {
                        let frame = self.buf.split_to(n).freeze();
                        self.frame_split(n);
                        need = 1;
                        // A gzip payload inflates to up to max_message_size: room for it
                        // first. Without room now, what this connection holds goes out
                        // first (stored, acked), so that it waits holding nothing but its
                        // allowance and the frame (see budget.rs).
                        if may_inflate(&frame) {
                            let target = self.charge() + limits.max_message_size;
                            if !self.share.try_hold(target) {
                                if let Some(end) = self.store(group.take(), &mut inflight).await {
                                    return self.finish(&mut inflight, end).await;
                                }
                                if let Some(end) = self.drain(&mut inflight).await {
                                    return end;
                                }
                                self.wait_for_budget(self.charge() + limits.max_message_size).await;
                            }
                        }
                        let decoded = self.decode(frame, &limits);
                        // Back to what is held now: the inflated payload, not the limit.
                        self.share.release_to(self.charge());
                        let g = match decoded {
                            Ok(Some(g)) => g,
                            Ok(None) => continue,
                            Err(end) => {
                                self.store(group.take(), &mut inflight).await;
                                return self.finish(&mut inflight, end).await;
                            }
                        };
                        let g = match self.dedupe(g, &mut group, &mut inflight).await {
                            Ok(g) => g,
                            Err(end) => return self.finish(&mut inflight, end).await,
                        };
                        group = match group.take() {
                            Some(mut acc)
                                if acc.batch.tag == g.batch.tag
                                    && acc.bytes + g.bytes <= GROUP_MAX_BYTES
                                    && acc.batch.len() + g.batch.len() <= GROUP_MAX_EVENTS =>
                            {
                                acc.batch.events.extend(g.batch.events);
                                acc.chunks.extend(g.chunks);
                                acc.claims.extend(g.claims);
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
                        if self.frame_deadline.is_none() {
                            self.frame_deadline = Some(Instant::now() + self.ctx.frame_timeout);
                        }
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
            while inflight.len() >= MAX_INFLIGHT || self.held_bytes >= MAX_INFLIGHT_BYTES {
                let res = front(&mut inflight).await;
                if let Some(end) = self.complete(&mut inflight, res).await {
                    return end;
                }
            }
            let grow_to = self.grow_to(need);
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
                r = self.fill(grow_to, need, timeout) => r,
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
                Read::FrameTimeout => {
                    // Nothing of the unfinished request was acked: the client sends it again.
                    self.ctx.metrics.input_error("frame_timeout");
                    self.warn(
                        "frame_timeout",
                        &format!(
                            "a request was not complete {:?} after its first byte ({} bytes buffered)",
                            self.ctx.frame_timeout,
                            self.buf.len()
                        ),
                    );
                    return self.finish(&mut inflight, End::Dropped).await;
                }
                Read::Failed => return End::Dropped,
            }
        }
    }

    /// Budget bytes this connection should hold now: its read buffer (or the reservation
    /// of the frame being read) and its requests not yet acked, beyond the allowance.
    fn charge(&self) -> usize {
        self.charge_with(self.buf.capacity())
    }

    fn charge_with(&self, buf_capacity: usize) -> usize {
        let buf = self.frame_reserve.map_or(buf_capacity, |r| r.max(buf_capacity));
        (buf + self.held_bytes).saturating_sub(CONNECTION_ALLOWANCE)
    }

    /// A whole frame of `n` bytes was split off the buffer: it is held as a request now,
    /// and what follows it in the buffer starts the next frame.
    fn frame_split(&mut self, n: usize) {
        self.held_bytes += n;
        self.walk = FrameWalk::new();
        if self.frame_reserve.take().is_some() {
            // After a large frame: what follows it (at most one read, see `fill`) moves to
            // a buffer the allowance pays for, and the reservation goes back with the next
            // `release_to`. So the next frame starts holding nothing from the budget.
            let mut small =
                BytesMut::with_capacity(CONNECTION_ALLOWANCE.max(self.buf.len() + READ_CHUNK));
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
        self.frame_deadline =
            (!self.buf.is_empty()).then(|| Instant::now() + self.ctx.frame_timeout);
    }

    /// The capacity the read buffer must grow to before the next read (copying what it
    /// holds into a new allocation of exactly that size, so the budget charge is known
    /// before the memory is taken), or `None` if it has room for a read. It grows at most
    /// twofold at a time towards the frame's known length: a header that claims 16 MiB
    /// takes nothing until its bytes arrive.
    fn grow_to(&self, need: usize) -> Option<usize> {
        let len = self.buf.len();
        if self.buf.capacity() - len >= READ_CHUNK {
            return None;
        }
        let want = need.saturating_sub(len).clamp(READ_CHUNK, len.max(READ_CHUNK));
        Some(len + want)
    }

    /// Wait for the budget to give this connection `target` bytes, counting the pause
    /// against the memory, not against the client's frame deadline.
    async fn wait_for_budget(&mut self, target: usize) {
        if self.share.try_hold(target) {
            self.budget_waited();
            return;
        }
        if self.budget_wait_since.is_none() {
            self.budget_wait_since = Some(Instant::now());
            if let Some(suppressed) = MEMORY_WARN.check() {
                tracing::warn!(
                    peer = self.peer,
                    suppressed,
                    held = self.share.held(),
                    wanted = target,
                    "memory_budget reached: this connection is not read until there is room"
                );
            }
        }
        self.share.hold(target).await;
        self.budget_waited();
    }

    fn budget_waited(&mut self) {
        if let Some(since) = self.budget_wait_since.take() {
            if let Some(d) = &mut self.frame_deadline {
                *d += since.elapsed();
            }
        }
    }

    /// Room for the next read (from the budget, growing the buffer when `grow_to` says),
    /// then the read itself, bounded by `timeout` and the frame's deadline. Cancel safe:
    /// interrupted, it holds at most what the next call asks for anyway.
    async fn fill(&mut self, grow_to: Option<usize>, need: usize, timeout: Duration) -> Read {
        if let Some(cap) = grow_to {
            if cap > CONNECTION_ALLOWANCE && self.frame_reserve.is_none() && !self.buf.is_empty() {
                // Outgrowing the allowance: reserve the largest this frame can become,
                // once (see budget.rs), and its inflated payload if it may be gzip.
                let max = self.ctx.max_message_size;
                // The inflated payload, and the allowance the next frame's bytes move to
                // when this one is split: decoding it then needs nothing more.
                let inflate = if may_inflate(&self.buf) { max + CONNECTION_ALLOWANCE } else { 0 };
                let reserve = max + READ_CHUNK + inflate;
                let target = (reserve + self.held_bytes).saturating_sub(CONNECTION_ALLOWANCE);
                self.wait_for_budget(target).await;
                self.frame_reserve = Some(reserve);
            }
            // With a reservation, the buffer grows to the frame's known length at once (a
            // `bin` header gives it): no copy per doubling, nor freed copies the allocator
            // keeps. Never past the reservation: `need` is at most max_message_size.
            let cap = match self.frame_reserve {
                Some(_) => cap.max(need + READ_CHUNK),
                None => cap,
            };
            self.wait_for_budget(self.charge_with(cap)).await;
            let mut grown = BytesMut::with_capacity(cap);
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
        } else {
            // Acks sent since the last read may have freed part of the share.
            self.share.release_to(self.charge());
        }
        let (timeout, frame_bound) = match self.frame_deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (timeout.min(left), left <= timeout)
            }
            None => (timeout, false),
        };
        // A reserved frame reads at most one read past its known length (`need` never
        // passes the frame's end): what follows the frame when it is split fits the
        // allowance, so the next frame never holds budget bytes while it waits for some.
        let limit = match self.frame_reserve {
            Some(_) => need.saturating_sub(self.buf.len()).max(READ_CHUNK),
            None => usize::MAX,
        };
        match self.read_at_most(limit, timeout).await {
            Read::Idle if frame_bound => Read::FrameTimeout,
            r => r,
        }
    }

    async fn read(&mut self, timeout: Duration) -> Read {
        self.read_at_most(usize::MAX, timeout).await
    }

    async fn read_at_most(&mut self, limit: usize, timeout: Duration) -> Read {
        let mut room = bytes::BufMut::limit(&mut self.buf, limit);
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut room)).await {
            Err(_) => Read::Idle,
            Ok(Ok(0)) => Read::Eof,
            Ok(Ok(_)) => Read::Data,
            Ok(Err(e)) => {
                tracing::debug!(peer = self.peer, error = %e, "read failed");
                Read::Failed
            }
        }
    }

    /// One complete frame (already in `held_bytes`), decoded and counted. `Ok(None)`:
    /// nothing to store (a heartbeat); `Err` ends the connection.
    fn decode(&mut self, frame: Bytes, limits: &Limits) -> Result<Option<Group>, End> {
        let len = frame.len();
        // The request's bytes as sent, for its key (see `buffer::chunks`): a cheap handle.
        let raw = frame.clone();
        let req = match decode_frame(frame, limits) {
            Ok(Frame::Heartbeat) => {
                self.held_bytes -= len;
                return Ok(None);
            }
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
        self.held_bytes += bytes - len;
        // The request's identity for a resend, of what the client sent (before enrichment).
        let key = req.options.chunk.as_ref().map(|c| chunks::chunk_key(c, &raw));
        Ok(Some(Group {
            batch: req.batch,
            chunks: req.options.chunk.into_iter().collect(),
            claims: Vec::new(),
            key,
            bytes,
        }))
    }

    /// A request just decoded, claimed by its key (see `buffer::chunks`): one already
    /// stored (a client resending what it got no ack for) keeps only its ack, which goes
    /// out in order with this connection's others; one that another copy is being stored
    /// for waits for that copy first. `Err` ends the connection.
    async fn dedupe(
        &mut self,
        mut g: Group,
        group: &mut Option<Group>,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<Group, End> {
        let Some(key) = g.key.take() else { return Ok(g) };
        let recent = Arc::clone(self.ctx.pipeline.buffer().chunks());
        loop {
            match recent.claim(key) {
                Claim::New(c) => {
                    g.claims.push(c);
                    return Ok(g);
                }
                Claim::Stored => {
                    self.ctx.metrics.input_duplicate_chunks.inc();
                    tracing::debug!(peer = self.peer, tag = %g.batch.tag, events = g.batch.len(), "a request already stored was sent again: acked, not stored");
                    g.batch.events.clear();
                    self.held_bytes -= g.bytes;
                    g.bytes = 0;
                    return Ok(g);
                }
                Claim::Pending(p) => {
                    // The other copy may be this connection's own, grouped or in flight:
                    // settle those first, so that waiting for it cannot wait for itself.
                    if let Some(end) = self.store(group.take(), inflight).await {
                        return Err(end);
                    }
                    if let Some(end) = self.drain(inflight).await {
                        return Err(end);
                    }
                    p.settled().await;
                }
            }
        }
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
        let added = self.ctx.enricher.enrich(&mut g.batch).await;
        g.bytes += added;
        self.held_bytes += added;
        let keys = Group::keys(&g.claims);
        let appending = match self.ctx.pipeline.enqueue_with_chunks(&g.batch, &keys).await {
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
                self.held_bytes -= g.bytes;
                return None;
            }
            Err(e @ SubmitError::TooLarge(_)) => return Some(self.reject("too_large", &e)),
            Err(SubmitError::Buffer(BufferError::Closed)) => return Some(End::Dropped),
            // Retried by `complete` like a failed write.
            Err(SubmitError::Buffer(e)) => Appending::Done(Some(Err(e))),
        };
        inflight.push_back(InFlight {
            batch: g.batch,
            chunks: g.chunks,
            claims: g.claims,
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
                self.held_bytes -= f.bytes;
                self.retry_backoff.reset();
                // Stored before the acks go out: a copy the client sends after reading
                // its ack finds it.
                for c in f.claims {
                    c.stored();
                }
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
                let keys = Group::keys(&f.claims);
                match self.ctx.pipeline.enqueue_with_chunks(&f.batch, &keys).await {
                    Ok(a) => f.appending = a,
                    Err(SubmitError::Full { .. }) => {
                        // drop_newest while retrying: refused like a new request.
                        let f = inflight.pop_front()?;
                        self.held_bytes -= f.bytes;
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
        self.drain(inflight).await.unwrap_or(end)
    }

    /// Wait for every in-flight request and ack it. `Some` ends the connection.
    async fn drain(&mut self, inflight: &mut VecDeque<InFlight>) -> Option<End> {
        while !inflight.is_empty() {
            let res = front(inflight).await;
            if let Some(e) = self.complete(inflight, res).await {
                return Some(e);
            }
        }
        None
    }

    /// The HELO / PING / PONG exchange when a shared key is configured, all of it within
    /// `handshake_timeout`: a client that drips its PING (each byte restarting the idle
    /// timeout) does not keep its slot for ever. `Some` ends the connection.
    async fn handshake(&mut self, shutdown: &CancellationToken) -> Option<End> {
        self.ctx.auth.as_ref()?;
        let limit = self.ctx.handshake_timeout;
        match tokio::time::timeout(limit, self.exchange(shutdown)).await {
            Ok(end) => end,
            Err(_) => {
                self.ctx.metrics.input_error("handshake_timeout");
                self.warn(
                    "handshake_timeout",
                    &format!("the handshake was not complete {limit:?} after connecting"),
                );
                Some(End::Dropped)
            }
        }
    }

    async fn exchange(&mut self, shutdown: &CancellationToken) -> Option<End> {
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
                Read::Eof | Read::Idle | Read::FrameTimeout => return Some(End::Normal),
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
