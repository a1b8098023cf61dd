//! Joining what Docker split: partial lines (one line over 16 KiB arrives as several
//! events) and, per container, multiline groups (a stack trace arrives one line per event).
//!
//! The stage sits between the buffer and each sink, inside its `SinkReader`, so the buffer
//! holds exactly what the clients sent and every event was acknowledged to its client as soon
//! as it was on disk: the driver waits for the ack of one part before it sends the next, so an
//! input-side join could never ack before it had every part.
//!
//! The joined record takes the slot of the group's first event (its offset is the joined
//! record's identity, its time the first part's time); the slots of the later events become
//! tombstones, which sinks skip. Deliveries leave the stage in buffer order, and a delivery
//! holding the start of an open group waits (with every delivery read after it) until the
//! group closes. The cursor therefore never passes an event whose group has not been
//! delivered: after a crash the parts are read again and joined again, identically. Nothing of
//! this state needs to be saved.
//!
//! A group closes when it is complete (the part marked last, with every ordinal before it;
//! for multiline, the next start line of the container), when it grows past `max_size`, when
//! `timeout` passes (partial: since its first part; multiline: since its last line), or when
//! the read-ahead bound is reached. Incomplete records are marked and counted.
//!
//! Memory: the read-ahead bound counts both the deliveries held and the pieces held by open
//! groups. A later part's (or line's) record becomes a tombstone, so its piece is copied out
//! of it: a slice would pin the whole chunk read from the buffer that the record points into.
//! The joined record is built by copying the base record's pairs as bytes, never by decoding
//! it into a value tree (40–48 bytes a value: a 16 MiB record of nils would take ~1 GB).

use crate::event::{Batch, Event};
use crate::metrics::Metrics;
use bytes::Bytes;
use memchr::memmem;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The container label holding a container's multiline start pattern (a regex).
pub const MULTILINE_LABEL: &str = "berth.multiline.start";

/// Deliveries held behind an open group, at most: past this the oldest groups are closed
/// as incomplete, so memory stays bounded whatever the clients send.
const READ_AHEAD_EVENTS: usize = 100_000;
const READ_AHEAD_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_size: usize,
    pub timeout: Duration,
}

/// Where a container's multiline start pattern comes from (the Docker metadata cache).
pub trait MultilineSource: Send + Sync {
    /// The raw pattern of `container_id`'s `berth.multiline.start` label, if it has one.
    /// Must not block: a cache lookup.
    fn multiline_start(&self, container_id: &str) -> Option<String>;

    /// Whether any known container has the label: when none has, lines are not even
    /// parsed.
    fn any(&self) -> bool {
        true
    }
}

/// What the stage joins; `None` switches a kind off.
#[derive(Clone, Default)]
pub struct JoinOptions {
    pub partial: Option<Limits>,
    pub multiline: Option<(Limits, Arc<dyn MultilineSource>)>,
}

impl JoinOptions {
    pub fn enabled(&self) -> bool {
        self.partial.is_some() || self.multiline.is_some()
    }
}

/// Why a group was closed: the `outcome` label of `berth_reassembled_records_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Timeout,
    MaxSize,
    ReadAhead,
    Shutdown,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Timeout => "timeout",
            Outcome::MaxSize => "max_size",
            Outcome::ReadAhead => "read_ahead",
            Outcome::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Partial,
    Multiline,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Partial => "partial",
            Kind::Multiline => "multiline",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Partial { container: String, id: String },
    Multiline { container: String },
}

struct Group {
    kind: Kind,
    /// The slot of the first event: (first offset of its delivery, index in the batch).
    at: (u64, usize),
    /// The first event's record: every field but the message comes from it.
    base: Bytes,
    /// Pieces of the message in order: ordinal → bytes (multiline: line number → line).
    pieces: BTreeMap<u64, Bytes>,
    bytes: usize,
    /// Bytes of the pieces copied out of tombstoned records (all but the first piece),
    /// counted in the joiner's `group_bytes`.
    owned: usize,
    /// The ordinal marked last, once seen (partial only).
    last: Option<u64>,
    /// The ordinal this group starts at: 1, or where a line split by `max_size` goes on.
    from: u64,
    deadline: Instant,
}

/// A delivery read from the buffer and not yet handed to the sink.
struct Held {
    first: u64,
    seq: u64,
    batch: Batch,
    /// Groups that start in this delivery and are still open.
    open: usize,
}

/// One sink's join stage: feed it what the buffer yields, take back what is ready.
pub struct Joiner {
    opts: JoinOptions,
    queue: VecDeque<Held>,
    queued_events: usize,
    queued_bytes: usize,
    /// Bytes of pieces open groups hold beyond the queued records (see `Group::owned`).
    group_bytes: usize,
    groups: HashMap<Key, Group>,
    /// Lines split by `max_size`: the ordinal their next piece starts at.
    split: HashMap<Key, u64>,
    /// Start patterns by container id: the label as last seen, compiled (`None`: invalid).
    patterns: HashMap<String, (String, Option<regex::bytes::Regex>)>,
    /// Searcher for Docker's `partial_message` key, built once (building one per record
    /// costs more than the search).
    part_finder: memmem::Finder<'static>,
    sink: String,
    metrics: Arc<Metrics>,
}

static PATTERN_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);
static READ_AHEAD_WARN: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new(5, 60);

impl Joiner {
    pub fn new(opts: JoinOptions, sink: &str, metrics: Arc<Metrics>) -> Joiner {
        Joiner {
            opts,
            queue: VecDeque::new(),
            queued_events: 0,
            queued_bytes: 0,
            group_bytes: 0,
            groups: HashMap::new(),
            split: HashMap::new(),
            patterns: HashMap::new(),
            part_finder: memmem::Finder::new(PARTIAL_KEY),
            sink: sink.to_owned(),
            metrics,
        }
    }

    /// Takes a delivery read from the buffer (`first..seq` are its events' offsets).
    pub fn push(&mut self, first: u64, seq: u64, batch: Batch, now: Instant) {
        self.queued_events += batch.len();
        self.queued_bytes += batch.record_bytes();
        let n = batch.len();
        self.queue.push_back(Held { first, seq, batch, open: 0 });
        for i in 0..n {
            self.take_event(first, i, now);
        }
        // Too much held: close the oldest groups (those holding the front back) as
        // incomplete until the front can go.
        while (self.queued_events > READ_AHEAD_EVENTS || self.held_bytes() > READ_AHEAD_BYTES)
            && self.queue.front().is_some_and(|h| h.open > 0)
        {
            let Some(key) = self.oldest_open() else { break };
            if let Some(suppressed) = READ_AHEAD_WARN.check() {
                tracing::warn!(
                    sink = %self.sink,
                    groups = self.groups.len(),
                    held_events = self.queued_events,
                    held_bytes = self.held_bytes(),
                    suppressed,
                    "join read-ahead bound reached: the oldest open line is sent incomplete"
                );
            }
            self.close(&key, Outcome::ReadAhead);
        }
    }

    /// The next delivery that no open group holds back.
    pub fn pop_ready(&mut self) -> Option<(u64, u64, Batch)> {
        if self.queue.front()?.open > 0 {
            return None;
        }
        let h = self.queue.pop_front()?;
        self.queued_events -= h.batch.len();
        self.queued_bytes = self.queued_bytes.saturating_sub(h.batch.record_bytes());
        Some((h.first, h.seq, h.batch))
    }

    /// When the next open group times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.deadline).min()
    }

    /// Closes the groups whose timeout has passed.
    pub fn expire(&mut self, now: Instant) {
        if self.groups.is_empty() {
            return;
        }
        let due: Vec<Key> =
            self.groups.iter().filter(|(_, g)| g.deadline <= now).map(|(k, _)| k.clone()).collect();
        for k in due {
            self.close(&k, Outcome::Timeout);
        }
    }

    /// The input has stopped and everything was read: close every open group so that a
    /// drain delivers all of it (after a crash, instead, the groups are joined again from
    /// the buffer). Whether anything is left to hand out.
    pub fn finish(&mut self) -> bool {
        let open: Vec<Key> = self.groups.keys().cloned().collect();
        for k in open {
            self.close(&k, Outcome::Shutdown);
        }
        !self.queue.is_empty()
    }

    /// Events read and not yet handed out (held behind an open group).
    pub fn held_events(&self) -> usize {
        self.queued_events
    }

    /// Bytes held: records read and not yet handed out, and the pieces of open groups.
    pub fn held_bytes(&self) -> usize {
        self.queued_bytes + self.group_bytes
    }

    fn oldest_open(&self) -> Option<Key> {
        self.groups.iter().min_by_key(|(_, g)| g.at).map(|(k, _)| k.clone())
    }

    fn held_mut(&mut self, first: u64) -> Option<&mut Held> {
        let i = self.queue.binary_search_by_key(&first, |h| h.first).ok()?;
        self.queue.get_mut(i)
    }

    fn take_event(&mut self, first: u64, i: usize, now: Instant) {
        let Some(record) = self.queue.back().map(|h| &h.batch.events[i].record) else { return };
        // The common case, a record that is neither a part nor a multiline candidate, is
        // one substring scan: no parse, no copy.
        let part = self.opts.partial.is_some() && self.part_finder.find(record).is_some();
        let multiline = !part && self.opts.multiline.as_ref().is_some_and(|(_, src)| src.any());
        if !part && !multiline {
            return;
        }
        let record = record.clone();
        if let (true, Some(limits)) = (part, self.opts.partial) {
            if let Some(p) = Part::parse(&record) {
                self.take_part(p, record, (first, i), limits, now);
                return;
            }
        }
        let Some((limits, _)) = &self.opts.multiline else { return };
        let limits = *limits;
        let Some(line) = DockerLine::parse(&record) else { return };
        let Some(is_start) = self.starts_group(&line) else {
            // No pattern for this container: its lines pass through.
            return;
        };
        let key = Key::Multiline { container: line.container.to_owned() };
        if let (false, Some(g)) = (is_start, self.groups.get_mut(&key)) {
            let n = g.pieces.len() as u64;
            g.bytes += line.log.len() + 1;
            // Its record becomes a tombstone: the line is copied out of the read chunk.
            g.owned += line.log.len();
            self.group_bytes += line.log.len();
            g.pieces.insert(n, Bytes::copy_from_slice(&line.log));
            g.deadline = now + limits.timeout;
            let over = g.bytes > limits.max_size;
            self.tombstone(first, i);
            if over {
                self.close(&key, Outcome::MaxSize);
            }
            return;
        }
        if self.groups.contains_key(&key) {
            self.close(&key, Outcome::Complete);
        }
        if !is_start {
            // A line before the first start line: nothing to attach it to.
            return;
        }
        let log = line.log;
        self.open(
            key,
            Kind::Multiline,
            record.clone(),
            (first, i),
            log,
            0,
            None,
            now + limits.timeout,
        );
    }

    /// `Some(is_start)` when the line's container has a valid start pattern.
    fn starts_group(&mut self, line: &DockerLine) -> Option<bool> {
        let (_, source) = self.opts.multiline.as_ref()?;
        // Asked every time: a container first seen by the cache after its first lines, or
        // relabelled by a new task, is picked up.
        let raw = source.multiline_start(line.container)?;
        if self.patterns.get(line.container).is_none_or(|(seen, _)| *seen != raw) {
            if self.patterns.len() >= 4096 {
                self.patterns.clear();
            }
            let compiled = match regex::bytes::Regex::new(&raw) {
                Ok(re) => Some(re),
                Err(e) => {
                    if let Some(suppressed) = PATTERN_WARN.check() {
                        tracing::warn!(container = %line.container, label = MULTILINE_LABEL, pattern = %raw, error = %e, suppressed, "invalid multiline start pattern: lines pass through ungrouped");
                    }
                    None
                }
            };
            self.patterns.insert(line.container.to_owned(), (raw, compiled));
        }
        let (_, re) = self.patterns.get(line.container)?;
        Some(re.as_ref()?.is_match(&line.log))
    }

    fn take_part(
        &mut self,
        p: Part,
        record: Bytes,
        at: (u64, usize),
        limits: Limits,
        now: Instant,
    ) {
        // A split line ends the container's multiline group: its parts must not be
        // reordered around it.
        let ml = Key::Multiline { container: p.container.clone() };
        if self.groups.contains_key(&ml) {
            self.close(&ml, Outcome::Complete);
        }
        let key = Key::Partial { container: p.container, id: p.id };
        let Some(g) = self.groups.get_mut(&key) else {
            let last = p.last.then_some(p.ordinal);
            self.open(
                key.clone(),
                Kind::Partial,
                record,
                at,
                p.log,
                p.ordinal,
                last,
                now + limits.timeout,
            );
            self.settle_partial(&key, limits);
            return;
        };
        g.bytes += p.log.len();
        // Its record becomes a tombstone: the piece is copied out of the read chunk.
        g.owned += p.log.len();
        self.group_bytes += p.log.len();
        g.pieces.insert(p.ordinal, Bytes::copy_from_slice(&p.log));
        if p.last {
            g.last = Some(p.ordinal);
        }
        self.tombstone(at.0, at.1);
        self.settle_partial(&key, limits);
    }

    /// Closes a partial group that is complete or too large.
    fn settle_partial(&mut self, key: &Key, limits: Limits) {
        let Some(g) = self.groups.get(key) else { return };
        // Checked: ordinals come from clients (a hostile `partial_ordinal` of u64::MAX, or a
        // last part below where a split line goes on, must not overflow).
        let complete = g.last.is_some_and(|last| {
            last.checked_add(1).and_then(|n| n.checked_sub(g.from)) == Some(g.pieces.len() as u64)
                && g.pieces.keys().next() == Some(&g.from)
                && g.pieces.keys().next_back() == Some(&last)
        });
        if complete {
            self.close(key, Outcome::Complete);
        } else if g.bytes > limits.max_size {
            self.close(key, Outcome::MaxSize);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        key: Key,
        kind: Kind,
        base: Bytes,
        at: (u64, usize),
        piece: Bytes,
        ordinal: u64,
        last: Option<u64>,
        deadline: Instant,
    ) {
        let mut pieces = BTreeMap::new();
        let bytes = piece.len();
        pieces.insert(ordinal, piece);
        if let Some(h) = self.held_mut(at.0) {
            h.open += 1;
        }
        let from = self.split.remove(&key).unwrap_or(if kind == Kind::Partial { 1 } else { 0 });
        self.groups
            .insert(key, Group { kind, at, base, pieces, bytes, owned: 0, last, from, deadline });
    }

    fn tombstone(&mut self, first: u64, i: usize) {
        let freed = self.held_mut(first).map_or(0, |h| {
            let ev = &mut h.batch.events[i];
            let n = ev.record.len();
            *ev = Event::tombstone(ev.time);
            n
        });
        self.queued_bytes = self.queued_bytes.saturating_sub(freed);
    }

    /// Writes the group's record into its first slot and releases that slot's delivery.
    fn close(&mut self, key: &Key, outcome: Outcome) {
        let Some(g) = self.groups.remove(key) else { return };
        self.group_bytes -= g.owned;
        let outcome = match (g.kind, outcome) {
            // The rest of a line split by max_size is a piece too, however it ends.
            (Kind::Partial, Outcome::Complete) if g.from > 1 => Outcome::MaxSize,
            // A multiline group closed by its timeout is the normal end of a trace.
            (Kind::Multiline, Outcome::Timeout) => Outcome::Complete,
            (_, o) => o,
        };
        if g.kind == Kind::Partial && outcome == Outcome::MaxSize && g.last.is_none() {
            if self.split.len() >= 1024 {
                self.split.clear();
            }
            // Where the rest of the line goes on; none after the largest ordinal there is.
            if let Some(next) = g.pieces.keys().next_back().map_or(Some(1), |o| o.checked_add(1)) {
                self.split.insert(key.clone(), next);
            }
        }
        let incomplete = outcome != Outcome::Complete;
        let sep: &[u8] = if g.kind == Kind::Multiline { b"\n" } else { b"" };
        let mut message = Vec::with_capacity(g.bytes);
        for (n, piece) in g.pieces.values().enumerate() {
            if n > 0 {
                message.extend_from_slice(sep);
            }
            message.extend_from_slice(piece);
        }
        let record = joined_record(&g.base, g.kind, &message, incomplete)
            .map_or_else(|| g.base.clone(), Bytes::from);
        self.metrics.reassembled(&self.sink, g.kind.label(), outcome.label());
        let (first, i) = g.at;
        let (new, old) = (
            record.len(),
            self.held_mut(first).map_or(0, |h| {
                let ev = &mut h.batch.events[i];
                h.open -= 1;
                std::mem::replace(&mut ev.record, record).len()
            }),
        );
        self.queued_bytes = (self.queued_bytes + new).saturating_sub(old);
    }
}

// ---------------------------------------------------------------------------------------
// Reading Docker's records.

const PARTIAL_KEY: &[u8] = b"partial_message";
const MESSAGE_KEY: &str = "log";

/// The fields of one Docker partial message.
struct Part {
    container: String,
    id: String,
    ordinal: u64,
    last: bool,
    log: Bytes,
}

impl Part {
    /// `Some` for a record with Docker's `partial_message = "true"` and well-formed
    /// `partial_id`, `partial_ordinal`, `partial_last` and `log`: everything else passes.
    fn parse(record: &Bytes) -> Option<Part> {
        let [message, container, id, ordinal, last, log] = str_fields(
            record,
            [
                PARTIAL_KEY,
                b"container_id",
                b"partial_id",
                b"partial_ordinal",
                b"partial_last",
                MESSAGE_KEY.as_bytes(),
            ],
        )?;
        if message? != b"true" {
            return None;
        }
        fn text(v: Option<&[u8]>) -> Option<&str> {
            std::str::from_utf8(v?).ok()
        }
        Some(Part {
            container: text(container).unwrap_or("").to_owned(),
            id: text(id)?.to_owned(),
            ordinal: text(ordinal)?.parse().ok().filter(|o| *o >= 1)?,
            last: last? == b"true",
            log: record.slice_ref(log?),
        })
    }
}

/// A whole line of a Docker container.
struct DockerLine<'a> {
    container: &'a str,
    log: Bytes,
}

impl<'a> DockerLine<'a> {
    /// Without allocating: this runs for every Docker record once a labelled container exists.
    fn parse(record: &'a Bytes) -> Option<DockerLine<'a>> {
        let [container, log] = str_fields(record, [b"container_id", MESSAGE_KEY.as_bytes()])?;
        Some(DockerLine {
            container: std::str::from_utf8(container?).ok()?,
            log: record.slice_ref(log?),
        })
    }
}

/// The string values of `keys` among the top-level pairs of the map `record` (the first
/// of duplicate keys wins); `None` when `record` is not one whole map.
fn str_fields<'r, const N: usize>(
    record: &'r [u8],
    keys: [&[u8]; N],
) -> Option<[Option<&'r [u8]>; N]> {
    let mut out = [None; N];
    crate::enrich::record::walk_map(record, |k, v| {
        let key = &record[k];
        if let Some(i) = keys.iter().position(|want| *want == key) {
            if out[i].is_none() {
                out[i] = crate::msgpack::str_body(&record[v]);
            }
        }
    })?;
    Some(out)
}

/// `base` with its message replaced by `message`, Docker's partial fields dropped when the
/// line is whole, and a marker when it is not.
///
/// The base's other pairs are copied as bytes, as the client encoded them: memory is the
/// record's size, whatever it holds (decoding it into `rmpv::Value`s cost 40–48 bytes a
/// value). `None` when `base` is not one whole map.
fn joined_record(base: &[u8], kind: Kind, message: &[u8], incomplete: bool) -> Option<Vec<u8>> {
    let mut r = crate::msgpack::Reader::new(base);
    let len = r.map_len().ok()??;
    let mut body = Vec::with_capacity(base.len() + message.len() + 32);
    let mut count = 0u64;
    let mut message_written = false;
    for _ in 0..len {
        let start = r.position();
        let key = r.str().ok()?;
        if key.is_none() {
            r.skip().ok()?;
        }
        let key_end = r.position();
        r.skip().ok()?;
        match key {
            Some(b"partial_message" | b"partial_ordinal" | b"partial_last") => continue,
            Some(b"partial_id") if !incomplete => continue,
            // The first `log` takes the message, where it was.
            Some(k) if k == MESSAGE_KEY.as_bytes() && !message_written => {
                body.extend_from_slice(&base[start..key_end]);
                write_text(&mut body, message);
                message_written = true;
            }
            _ => body.extend_from_slice(&base[start..r.position()]),
        }
        count += 1;
    }
    if !message_written {
        let _ = rmp::encode::write_str(&mut body, MESSAGE_KEY);
        write_text(&mut body, message);
        count += 1;
    }
    if incomplete {
        let marker = match kind {
            Kind::Partial => "partial_incomplete",
            Kind::Multiline => "multiline_incomplete",
        };
        let _ = rmp::encode::write_str(&mut body, marker);
        let _ = rmp::encode::write_bool(&mut body, true);
        count += 1;
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    let _ = rmp::encode::write_map_len(&mut out, u32::try_from(count).ok()?);
    out.extend_from_slice(&body);
    Some(out)
}

/// The message as a msgpack `str`, or a `bin` when it is not UTF-8 (writing into a `Vec`
/// cannot fail).
fn write_text(out: &mut Vec<u8>, message: &[u8]) {
    let _ = match std::str::from_utf8(message) {
        Ok(text) => rmp::encode::write_str(out, text),
        Err(_) => rmp::encode::write_bin(out, message),
    };
}

#[cfg(test)]
pub(crate) mod tests;
