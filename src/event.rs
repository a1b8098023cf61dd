//! Events as they flow through berth: a tag, a time and a record kept as the msgpack bytes
//! that arrived. Nothing here does I/O.
//!
//! Records are `Bytes` slices of the frame they were decoded from: cloning an event or a
//! batch never copies a record, and decoding allocates once per request, not per field.

use bytes::Bytes;
use std::fmt;

/// Seconds and nanoseconds since the Unix epoch (Forward spec: `EventTime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    pub secs: i64,
    pub nanos: u32,
}

impl EventTime {
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Self { secs, nanos }
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
    }
}

/// A Fluentd tag: valid UTF-8, shared cheaply between the events of a request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag(Bytes);

impl Tag {
    /// `None` when the bytes are not UTF-8.
    pub fn from_bytes(b: Bytes) -> Option<Tag> {
        std::str::from_utf8(&b).ok()?;
        Some(Tag(b))
    }

    pub fn from_static(s: &'static str) -> Tag {
        Tag(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Only `from_bytes` and `from_static`/`From<String>` build a Tag and both guarantee
        // UTF-8; a failed check here would be a bug, and an empty tag is the safe answer.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for Tag {
    fn from(s: String) -> Tag {
        Tag(Bytes::from(s))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time: EventTime,
    /// One msgpack map, byte for byte as the client sent it (after decompression).
    pub record: Bytes,
    /// Fluent Bit's metadata map from `[[time, metadata], record]` entries when it is
    /// non-empty; empty bytes otherwise.
    pub metadata: Bytes,
}

impl Event {
    /// A slot whose content was moved into another event between the buffer and a sink
    /// (a later part of a split Docker line, joined into the event of its first part).
    /// It keeps its place so that offsets stay contiguous; sinks skip it and acknowledge it
    /// with its delivery. The input never produces one: a record is at least one byte.
    pub fn tombstone(time: EventTime) -> Event {
        Event { time, record: Bytes::new(), metadata: Bytes::new() }
    }

    pub fn is_tombstone(&self) -> bool {
        self.record.is_empty()
    }
}

/// The events of one request: they share one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub tag: Tag,
    pub events: Vec<Event>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events that are not tombstones: what a sink counts as delivered.
    pub fn live_len(&self) -> usize {
        self.events.iter().filter(|e| !e.is_tombstone()).count()
    }

    /// Bytes of record payload, the unit of the byte counters.
    pub fn record_bytes(&self) -> usize {
        self.events.iter().map(|e| e.record.len()).sum()
    }
}
