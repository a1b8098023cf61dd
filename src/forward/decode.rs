//! One complete frame → a heartbeat or a request with its events.
//!
//! Spec: <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>,
//! sections "Event Modes" (Message, Forward, PackedForward, CompressedPackedForward),
//! "EventTime Ext Format", "Option" and "Heartbeat Message".
//!
//! Pure: no I/O, no clocks. The tag, records, metadata and the raw `chunk` are zero-copy
//! [`Bytes::slice`]s of the frame (or of the one buffer a gzip payload inflates into); the
//! only allocations per request are the `Vec<Event>` (sized once) and, for
//! CompressedPackedForward, the inflated payload.
//!
//! The mode is decided from the msgpack type of the request's second element, as fluentd's
//! `in_forward` does: a time (int, float, ext) is Message mode, an array is Forward mode, a
//! `bin` or `str` is a packed payload.

use super::frame::{frame_len, FrameStatus};
use crate::event::{Batch, Event, EventTime, Tag};
use bytes::Bytes;
use std::io::Read;
use std::ops::Range;

/// Limits a decoder enforces on what a client sends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest frame accepted, and the largest a gzip payload may inflate to.
    pub max_message_size: usize,
}

/// The four event modes of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Message,
    Forward,
    PackedForward,
    CompressedPackedForward,
}

/// The request's option map; unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The raw msgpack bytes of the `chunk` option's value, echoed verbatim in the ack.
    pub chunk: Option<Bytes>,
    pub size: Option<u64>,
}

#[derive(Debug)]
pub struct Request {
    pub mode: Mode,
    pub batch: Batch,
    pub options: Options,
}

#[derive(Debug)]
pub enum Frame {
    /// A top-level `nil` (spec: "Heartbeat Message" over TCP). Nothing to answer.
    Heartbeat,
    Request(Request),
}

/// Why a frame was rejected. [`DecodeError::reason`] is the stable metrics label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed msgpack at byte {offset}: {what}")]
    Malformed { what: &'static str, offset: usize },
    /// `size` is exact when the frame was whole, a lower bound when only headers were read.
    #[error("frame of {size} bytes exceeds max_message_size {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("request is {found}, not an array")]
    NotArray { found: &'static str },
    #[error("request is an array of {len} elements, not 2 to 4")]
    RequestLength { len: usize },
    #[error("{mode:?} request has {len} elements")]
    ModeLength { mode: Mode, len: usize },
    #[error("tag is {found}, not a string")]
    TagNotString { found: &'static str },
    #[error("tag is not valid utf-8")]
    TagNotUtf8,
    #[error(
        "second element of the request is {found}: not a time, an entry array or a packed payload"
    )]
    UnknownMode { found: &'static str },
    #[error("time of entry {index} is {found}, not an integer, a float or an EventTime")]
    BadTime { index: usize, found: &'static str },
    #[error("time of entry {index} is an extension of type {ext_type} and {len} bytes, not an EventTime (type 0, 8 bytes)")]
    BadTimeExt { index: usize, ext_type: i8, len: usize },
    #[error("time of entry {index} is out of range")]
    TimeOutOfRange { index: usize },
    #[error("entry {index} is {what}")]
    BadEntry { index: usize, what: &'static str },
    #[error("record {index} is {found}, not a map")]
    NonMapRecord { index: usize, found: &'static str },
    #[error("options are {found}, not a map")]
    OptionsNotMap { found: &'static str },
    #[error("option {key:?} is {found}, not {expected}")]
    BadOption { key: &'static str, found: &'static str, expected: &'static str },
    #[error("unknown compression {value:?} (expected \"gzip\" or \"text\")")]
    UnknownCompression { value: String },
    #[error("gzip payload is corrupt: {source}")]
    CorruptGzip {
        #[source]
        source: std::io::Error,
    },
    #[error("gzip payload inflates past max_message_size ({max} bytes)")]
    DecompressedTooLarge { max: usize },
}

impl DecodeError {
    /// A stable snake_case label for metrics (`berth_decode_errors_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::NotArray { .. } | DecodeError::RequestLength { .. } => "not_array",
            DecodeError::TagNotString { .. } | DecodeError::TagNotUtf8 => "bad_tag",
            DecodeError::BadTime { .. }
            | DecodeError::BadTimeExt { .. }
            | DecodeError::TimeOutOfRange { .. } => "bad_time",
            DecodeError::ModeLength { .. }
            | DecodeError::UnknownMode { .. }
            | DecodeError::BadEntry { .. } => "bad_entry",
            DecodeError::NonMapRecord { .. } => "non_map_record",
            DecodeError::OptionsNotMap { .. } | DecodeError::BadOption { .. } => "bad_options",
            DecodeError::UnknownCompression { .. } | DecodeError::CorruptGzip { .. } => {
                "bad_compression"
            }
            DecodeError::DecompressedTooLarge { .. } => "decompressed_too_large",
        }
    }
}

/// Decodes one complete frame (as found by [`frame_len`]) into a heartbeat or a request.
///
/// The frame must hold exactly one msgpack value, or the request fails (trailing bytes
/// included). Every read is bounds-checked, so arbitrary bytes fail cleanly rather than
/// panic.
pub fn decode_frame(frame: Bytes, limits: &Limits) -> Result<Frame, DecodeError> {
    let max = limits.max_message_size;
    if frame.len() > max {
        return Err(DecodeError::FrameTooLarge { size: frame.len(), max });
    }
    // Not re-walked here: the connection's `frame_len` already proved the frame whole, and
    // re-walking would cost a Forward-mode request a third pass over its records. Every
    // read below is bounds-checked and values are skipped with the same walker, so
    // arbitrary bytes still fail cleanly (the fuzz target feeds them).
    let mut r = Reader { buf: &frame, pos: 0 };
    let decoded = decode_value(&frame, &mut r, max)?;
    if r.pos != frame.len() {
        return Err(DecodeError::Malformed {
            what: "trailing bytes after the request",
            offset: r.pos,
        });
    }
    Ok(decoded)
}

fn decode_value(frame: &Bytes, r: &mut Reader<'_>, max: usize) -> Result<Frame, DecodeError> {
    let first = r.peek()?;
    if first == 0xc0 {
        r.pos += 1;
        return Ok(Frame::Heartbeat);
    }
    let Some(len) = r.array_len()? else {
        return Err(DecodeError::NotArray { found: type_name(first) });
    };
    if !(2..=4).contains(&len) {
        return Err(DecodeError::RequestLength { len });
    }

    let tag_marker = r.peek()?;
    let tag = match r.str_or_bin()? {
        Some((range, true)) => {
            Tag::from_bytes(frame.slice(range)).ok_or(DecodeError::TagNotUtf8)?
        }
        _ => return Err(DecodeError::TagNotString { found: type_name(tag_marker) }),
    };

    let second = r.peek()?;
    match Kind::of(second) {
        Kind::Int | Kind::Float | Kind::Ext => {
            // Message: [tag, time, record, option?]
            if len < 3 {
                return Err(DecodeError::ModeLength { mode: Mode::Message, len });
            }
            let time = r.time(0)?;
            let record = r.record(0)?;
            let options = if len == 4 { r.options(frame)?.0 } else { Options::default() };
            let events = vec![Event { time, record: frame.slice(record), metadata: Bytes::new() }];
            Ok(request(Mode::Message, tag, events, options))
        }
        Kind::Array => {
            // Forward: [tag, [entry...], option?]
            if len > 3 {
                return Err(DecodeError::ModeLength { mode: Mode::Forward, len });
            }
            let n = r.array_len()?.unwrap_or(0);
            // Each entry takes at least 3 bytes (`[t, {}]`), which bounds a hostile count.
            let mut events = Vec::with_capacity(n.min(r.remaining() / 3));
            for index in 0..n {
                events.push(r.entry(frame, index)?);
            }
            let options = if len == 3 { r.options(frame)?.0 } else { Options::default() };
            Ok(request(Mode::Forward, tag, events, options))
        }
        Kind::Str | Kind::Bin => {
            // PackedForward / CompressedPackedForward: [tag, entries-as-bytes, option?]
            if len > 3 {
                return Err(DecodeError::ModeLength { mode: Mode::PackedForward, len });
            }
            let Some((payload, is_str)) = r.str_or_bin()? else {
                return Err(DecodeError::Malformed { what: "packed payload", offset: r.pos });
            };
            let (options, compression) =
                if len == 3 { r.options(frame)? } else { (Options::default(), Compression::Text) };
            let (mode, payload) = match compression {
                Compression::Text if is_str && is_transcoded(&frame[payload.clone()]) => {
                    (Mode::PackedForward, latin1_from_utf8(&frame[payload])?)
                }
                Compression::Text => (Mode::PackedForward, frame.slice(payload)),
                Compression::Gzip => (Mode::CompressedPackedForward, gunzip(&frame[payload], max)?),
            };
            let events = packed_entries(&payload, options.size)?;
            Ok(request(mode, tag, events, options))
        }
        Kind::Nil | Kind::Bool | Kind::Map | Kind::Reserved => {
            Err(DecodeError::UnknownMode { found: type_name(second) })
        }
    }
}

fn request(mode: Mode, tag: Tag, events: Vec<Event>, options: Options) -> Frame {
    Frame::Request(Request { mode, batch: Batch { tag, events }, options })
}

/// Decodes the concatenated entries of a packed payload (a slice of the frame, or the
/// inflated buffer). The top-level frame walk jumped over the payload as one `bin`/`str`,
/// so every entry is walked here before it is trusted.
fn packed_entries(payload: &Bytes, size: Option<u64>) -> Result<Vec<Event>, DecodeError> {
    let min_entries = payload.len() / 3;
    let capacity = match size.and_then(|s| usize::try_from(s).ok()) {
        // Fluent Bit and fluentd send the entry count; trust it only as far as it is plausible.
        Some(s) if s <= min_entries + 1 => s,
        _ => count_entries(payload),
    };
    let mut events = Vec::with_capacity(capacity);
    let mut r = Reader { buf: payload, pos: 0 };
    let mut index = 0;
    while r.remaining() > 0 {
        match r.entry(payload, index) {
            Ok(ev) => events.push(ev),
            Err(DecodeError::Malformed { what: TRUNCATED, .. }) => {
                return Err(DecodeError::BadEntry {
                    index,
                    what: "truncated in the packed payload",
                })
            }
            Err(e) => return Err(e),
        }
        index += 1;
    }
    Ok(events)
}

/// Entry count of a packed payload, for sizing the `Vec` when the client sent no `size`.
/// Stops at the first problem: the decode that follows reports it.
fn count_entries(payload: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while let Ok(FrameStatus::Complete(len)) = frame_len(&payload[pos..], payload.len() - pos) {
        pos += len;
        n += 1;
        if pos >= payload.len() {
            break;
        }
    }
    n
}

/// Inflates a gzip payload (one or more concatenated members) without ever holding more
/// than `max` bytes: a decompression bomb stops at the limit instead of filling memory.
fn gunzip(gz: &[u8], max: usize) -> Result<Bytes, DecodeError> {
    let decoder = flate2::read::MultiGzDecoder::new(gz);
    // Log payloads typically compress 5-10x; start there, the Vec grows if needed.
    let mut out = Vec::with_capacity(gz.len().saturating_mul(8).min(max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|source| DecodeError::CorruptGzip { source })?;
    if out.len() > max {
        return Err(DecodeError::DecompressedTooLarge { max });
    }
    Ok(Bytes::from(out))
}

#[derive(Clone, Copy)]
enum Compression {
    Text,
    Gzip,
}

/// The msgpack family of a marker byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bin,
    Array,
    Map,
    Ext,
    Reserved,
}

impl Kind {
    fn of(marker: u8) -> Kind {
        match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => Kind::Int,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc0 => Kind::Nil,
            0xc1 => Kind::Reserved,
            0xc2 | 0xc3 => Kind::Bool,
            0xc4..=0xc6 => Kind::Bin,
            0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
            0xca | 0xcb => Kind::Float,
        }
    }
}

/// "a string", "a map", … for error messages.
fn type_name(marker: u8) -> &'static str {
    match Kind::of(marker) {
        Kind::Nil => "nil",
        Kind::Bool => "a boolean",
        Kind::Int => "an integer",
        Kind::Float => "a float",
        Kind::Str => "a string",
        Kind::Bin => "a binary",
        Kind::Array => "an array",
        Kind::Map => "a map",
        Kind::Ext => "an extension",
        Kind::Reserved => "the reserved marker 0xc1",
    }
}

/// A cursor over msgpack bytes that reads headers and hands out ranges to slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const TRUNCATED: &str = "value truncated";

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Malformed { what: TRUNCATED, offset: self.buf.len() }
    }

    /// The next marker byte; the reserved 0xc1 is malformed wherever it appears.
    fn peek(&self) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(0xc1) => {
                Err(DecodeError::Malformed { what: "reserved marker 0xc1", offset: self.pos })
            }
            Some(&b) => Ok(b),
            None => Err(self.truncated()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn len_of(&mut self, n: usize) -> Result<usize, DecodeError> {
        let v = self.be(n)?;
        usize::try_from(v).map_err(|_| self.truncated())
    }

    /// Consumes an array header and returns its length, or `None` (consuming nothing)
    /// when the next value is not an array.
    fn array_len(&mut self) -> Result<Option<usize>, DecodeError> {
        let m = self.peek()?;
        let n = match m {
            0x90..=0x9f => {
                self.pos += 1;
                usize::from(m & 0x0f)
            }
            0xdc => {
                self.pos += 1;
                self.len_of(2)?
            }
            0xdd => {
                self.pos += 1;
                self.len_of(4)?
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// Like [`Reader::array_len`] for maps (pairs, not values).
    fn map_len(&mut self) -> Result<Option<usize>, DecodeError> {
        let m = self.peek()?;
        let n = match m {
            0x80..=0x8f => {
                self.pos += 1;
                usize::from(m & 0x0f)
            }
            0xde => {
                self.pos += 1;
                self.len_of(2)?
            }
            0xdf => {
                self.pos += 1;
                self.len_of(4)?
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// Consumes a `str` or `bin` and returns its body's range and whether it was a `str`;
    /// `None` (consuming nothing) for any other type.
    fn str_or_bin(&mut self) -> Result<Option<(Range<usize>, bool)>, DecodeError> {
        let m = self.peek()?;
        let (hdr, is_str) = match m {
            0xa0..=0xbf => (0, true),
            0xd9 => (1, true),
            0xda => (2, true),
            0xdb => (4, true),
            0xc4 => (1, false),
            0xc5 => (2, false),
            0xc6 => (4, false),
            _ => return Ok(None),
        };
        self.pos += 1;
        let len = if hdr == 0 { usize::from(m & 0x1f) } else { self.len_of(hdr)? };
        let start = self.pos;
        self.take(len)?;
        Ok(Some((start..self.pos, is_str)))
    }

    /// Skips one whole value (of any depth, without recursion) and returns its range.
    fn skip(&mut self) -> Result<Range<usize>, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        match frame_len(rest, rest.len()) {
            Ok(FrameStatus::Complete(n)) => {
                self.pos += n;
                Ok(start..self.pos)
            }
            Ok(FrameStatus::Incomplete { .. }) | Err(DecodeError::FrameTooLarge { .. }) => {
                Err(self.truncated())
            }
            Err(DecodeError::Malformed { what, offset }) => {
                Err(DecodeError::Malformed { what, offset: start + offset })
            }
            Err(e) => Err(e),
        }
    }

    /// An integer of any width, as i128 so that u64 and i64 both fit.
    fn int(&mut self) -> Result<Option<i128>, DecodeError> {
        let m = self.peek()?;
        let v = match m {
            0x00..=0x7f => {
                self.pos += 1;
                i128::from(m)
            }
            0xe0..=0xff => {
                self.pos += 1;
                i128::from(m as i8)
            }
            0xcc..=0xcf => {
                self.pos += 1;
                let n = 1usize << (m - 0xcc);
                i128::from(self.be(n)?)
            }
            0xd0..=0xd3 => {
                self.pos += 1;
                let n = 1usize << (m - 0xd0);
                let raw = self.be(n)?;
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n as u32;
                i128::from(((raw << shift) as i64) >> shift)
            }
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    /// An event time: integer seconds, float seconds, or EventTime (fixext8 or ext8 form).
    fn time(&mut self, index: usize) -> Result<EventTime, DecodeError> {
        let m = self.peek()?;
        if let Some(secs) = self.int()? {
            let secs = i64::try_from(secs).map_err(|_| DecodeError::TimeOutOfRange { index })?;
            return Ok(EventTime::new(secs, 0));
        }
        match m {
            0xca => {
                self.pos += 1;
                let bits = self.be(4)? as u32;
                float_time(f64::from(f32::from_bits(bits)), index)
            }
            0xcb => {
                self.pos += 1;
                float_time(f64::from_bits(self.be(8)?), index)
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                self.pos += 1;
                let len = match m {
                    0xd4 => 1,
                    0xd5 => 2,
                    0xd6 => 4,
                    0xd7 => 8,
                    0xd8 => 16,
                    0xc7 => self.len_of(1)?,
                    0xc8 => self.len_of(2)?,
                    _ => self.len_of(4)?,
                };
                let ext_type = self.take(1)?[0] as i8;
                let body = self.take(len)?;
                if ext_type != 0 || len != 8 {
                    return Err(DecodeError::BadTimeExt { index, ext_type, len });
                }
                let secs = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let nanos = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                if nanos >= 1_000_000_000 {
                    return Err(DecodeError::TimeOutOfRange { index });
                }
                Ok(EventTime::new(i64::from(secs), nanos))
            }
            _ => Err(DecodeError::BadTime { index, found: type_name(m) }),
        }
    }

    /// Skips a record, checking that it is a map.
    fn record(&mut self, index: usize) -> Result<Range<usize>, DecodeError> {
        let m = self.peek()?;
        if Kind::of(m) != Kind::Map {
            return Err(DecodeError::NonMapRecord { index, found: type_name(m) });
        }
        self.skip()
    }

    /// `[time, record]` or Fluent Bit's `[[time, metadata], record]`.
    fn entry(&mut self, base: &Bytes, index: usize) -> Result<Event, DecodeError> {
        match self.array_len()? {
            Some(2) => {}
            Some(_) => {
                return Err(DecodeError::BadEntry {
                    index,
                    what: "an array of the wrong length, not [time, record]",
                })
            }
            None => return Err(DecodeError::BadEntry { index, what: "not an array" }),
        }
        let (time, metadata) = match self.array_len()? {
            None => (self.time(index)?, Bytes::new()),
            Some(2) => {
                let time = self.time(index)?;
                let m = self.peek()?;
                let range = self.skip()?;
                // Only a non-empty map is metadata worth keeping (Fluent Bit sends `{}`).
                let metadata = if Kind::of(m) == Kind::Map && !is_empty_map(&base[range.clone()]) {
                    base.slice(range)
                } else {
                    Bytes::new()
                };
                (time, metadata)
            }
            Some(_) => {
                return Err(DecodeError::BadEntry {
                    index,
                    what: "a [time, metadata] header of the wrong length",
                })
            }
        };
        let record = self.record(index)?;
        Ok(Event { time, record: base.slice(record), metadata })
    }

    /// The option map (or nil). Returns the options and the payload compression.
    fn options(&mut self, base: &Bytes) -> Result<(Options, Compression), DecodeError> {
        let mut options = Options::default();
        let mut compression = Compression::Text;
        let m = self.peek()?;
        if m == 0xc0 {
            self.pos += 1;
            return Ok((options, compression));
        }
        let Some(n) = self.map_len()? else {
            return Err(DecodeError::OptionsNotMap { found: type_name(m) });
        };
        for _ in 0..n {
            let key = match self.str_or_bin()? {
                Some((range, true)) => Some(range),
                Some(_) => None,
                None => {
                    self.skip()?;
                    None
                }
            };
            match key.as_ref().map(|k| &self.buf[k.clone()]) {
                Some(b"chunk") => options.chunk = Some(base.slice(self.skip()?)),
                Some(b"size") => {
                    let vm = self.peek()?;
                    match self.int()?.and_then(|v| u64::try_from(v).ok()) {
                        Some(v) => options.size = Some(v),
                        None => {
                            return Err(DecodeError::BadOption {
                                key: "size",
                                found: type_name(vm),
                                expected: "a non-negative integer",
                            })
                        }
                    }
                }
                Some(b"compressed") => {
                    let vm = self.peek()?;
                    let Some((range, true)) = self.str_or_bin()? else {
                        return Err(DecodeError::BadOption {
                            key: "compressed",
                            found: type_name(vm),
                            expected: "a string",
                        });
                    };
                    compression = match &self.buf[range] {
                        b"gzip" => Compression::Gzip,
                        b"text" => Compression::Text,
                        other => {
                            return Err(DecodeError::UnknownCompression {
                                value: String::from_utf8_lossy(other).into_owned(),
                            })
                        }
                    };
                }
                _ => {
                    self.skip()?;
                }
            }
        }
        Ok((options, compression))
    }
}

/// Whether a `str` packed payload holds its entries transcoded as if each byte were a
/// Latin-1 character written in UTF-8 (0x92 → `c2 92`), as clients do whose msgpack library
/// only packs text into `str` (Python's, for one). fluentd itself writes the raw bytes
/// under a str32 header, which the plain path handles.
///
/// Unambiguous: a raw payload starts with an entry array (0x92, 0xdc or 0xdd), while a
/// transcoded one starts with `c2` or `c3`, which as msgpack are `false`/`true` and can
/// never start an entry.
fn is_transcoded(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0xc2 | 0xc3))
}

/// Undoes the Latin-1-in-UTF-8 transcoding (see [`is_transcoded`]): one allocation for the
/// whole payload, only on this rare path.
fn latin1_from_utf8(s: &[u8]) -> Result<Bytes, DecodeError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let byte = match b {
            0x00..=0x7f => b,
            0xc2 | 0xc3 => match s.get(i + 1) {
                Some(&c @ 0x80..=0xbf) => {
                    i += 1;
                    ((b & 0x03) << 6) | (c & 0x3f)
                }
                _ => {
                    return Err(DecodeError::Malformed {
                        what: "packed str payload is not latin-1 text",
                        offset: i,
                    })
                }
            },
            _ => {
                return Err(DecodeError::Malformed {
                    what: "packed str payload is not latin-1 text",
                    offset: i,
                })
            }
        };
        out.push(byte);
        i += 1;
    }
    Ok(Bytes::from(out))
}

/// Whether a map value (already known to be a map) has no pairs, in any header width.
fn is_empty_map(v: &[u8]) -> bool {
    matches!(v, [0x80] | [0xde, 0, 0] | [0xdf, 0, 0, 0, 0])
}

/// Float seconds → seconds and nanoseconds, rounded to the nearest nanosecond.
fn float_time(f: f64, index: usize) -> Result<EventTime, DecodeError> {
    // NaN and infinities fail the range check too; the bound stays below 2^63 because
    // i64::MAX as f64 rounds up to it.
    if !(-9.2e18..=9.2e18).contains(&f) {
        return Err(DecodeError::TimeOutOfRange { index });
    }
    let secs = f.floor();
    let mut nanos = ((f - secs) * 1e9).round() as u32;
    let mut secs = secs as i64;
    if nanos >= 1_000_000_000 {
        secs += 1;
        nanos -= 1_000_000_000;
    }
    Ok(EventTime::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::encode::{encode_request, EncodeOptions};
    use rmp::encode as enc;
    use std::io::Write;

    const LIMITS: Limits = Limits { max_message_size: 1 << 20 };
    /// {"a": 1}
    const REC: &[u8] = &[0x81, 0xa1, b'a', 0x01];
    /// {"m": 2}
    const META: &[u8] = &[0x81, 0xa1, b'm', 0x02];

    fn decode(b: &[u8]) -> Result<Frame, DecodeError> {
        decode_frame(Bytes::copy_from_slice(b), &LIMITS)
    }

    fn req(b: &[u8]) -> Request {
        match decode(b) {
            Ok(Frame::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn err(b: &[u8]) -> DecodeError {
        match decode(b) {
            Err(e) => e,
            Ok(f) => panic!("decoded {f:?}"),
        }
    }

    fn ev(secs: i64, nanos: u32, meta: &'static [u8]) -> Event {
        Event {
            time: EventTime::new(secs, nanos),
            record: Bytes::from_static(REC),
            metadata: Bytes::from_static(meta),
        }
    }

    /// `[tag, <second>, {"a": 1}, <rest>...]` with the array length given.
    fn message(len: u32, tag: &[u8], second: &[u8], rest: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = enc::write_array_len(&mut v, len);
        v.extend_from_slice(tag);
        v.extend_from_slice(second);
        v.extend_from_slice(REC);
        for r in rest {
            v.extend_from_slice(r);
        }
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn packed(tag: &str, payload: &[u8], compressed: Option<&str>) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = enc::write_array_len(&mut v, if compressed.is_some() { 3 } else { 2 });
        let _ = enc::write_str(&mut v, tag);
        let _ = enc::write_bin(&mut v, payload);
        if let Some(c) = compressed {
            let _ = enc::write_map_len(&mut v, 1);
            let _ = enc::write_str(&mut v, "compressed");
            let _ = enc::write_str(&mut v, c);
        }
        v
    }

    #[test]
    fn nil_is_a_heartbeat() {
        assert!(matches!(decode(&[0xc0]), Ok(Frame::Heartbeat)));
    }

    #[test]
    fn message_mode_time_forms() {
        let cases: &[(&[u8], EventTime)] = &[
            (&[0x05], EventTime::new(5, 0)),
            (&[0xce, 0x69, 0x20, 0xfd, 0x00], EventTime::new(1763769600, 0)),
            (&[0xcf, 0, 0, 0, 0, 0x69, 0x20, 0xfd, 0x00], EventTime::new(1763769600, 0)),
            (&[0xd2, 0xff, 0xff, 0xff, 0xfe], EventTime::new(-2, 0)),
            (&[0xff], EventTime::new(-1, 0)),
            // f64 1763769600.25
            (
                &[0xcb, 0x41, 0xda, 0x48, 0x3f, 0x40, 0x10, 0, 0],
                EventTime::new(1763769600, 250_000_000),
            ),
            // f32 1.5
            (&[0xca, 0x3f, 0xc0, 0, 0], EventTime::new(1, 500_000_000)),
            // fixext8 EventTime
            (
                &[0xd7, 0x00, 0x69, 0x20, 0xfd, 0x00, 0, 0, 0x01, 0xf4],
                EventTime::new(1763769600, 500),
            ),
            // ext8 EventTime
            (
                &[0xc7, 0x08, 0x00, 0x69, 0x20, 0xfd, 0x00, 0, 0, 0x01, 0xf4],
                EventTime::new(1763769600, 500),
            ),
        ];
        for (time, want) in cases {
            let r = req(&message(3, b"\xa1t", time, &[]));
            assert_eq!(r.mode, Mode::Message);
            assert_eq!(r.batch.tag.as_str(), "t");
            assert_eq!(
                r.batch.events,
                vec![Event {
                    time: *want,
                    record: Bytes::from_static(REC),
                    metadata: Bytes::new()
                }],
                "{time:02x?}"
            );
        }
    }

    #[test]
    fn float_time_rounds_to_the_nanosecond() {
        assert_eq!(float_time(1.999_999_999_9, 0).ok(), Some(EventTime::new(2, 0)));
        assert_eq!(float_time(-0.5, 0).ok(), Some(EventTime::new(-1, 500_000_000)));
        assert!(float_time(f64::NAN, 0).is_err());
        assert!(float_time(1e300, 0).is_err());
    }

    #[test]
    fn message_mode_chunk_is_kept_raw_and_records_are_zero_copy() {
        // {"chunk": "abc", "size": 1, "other": [1]}
        let opt: &[u8] = b"\x83\xa5chunk\xa3abc\xa4size\x01\xa5other\x91\x01";
        let frame = Bytes::from(message(4, b"\xa1t", &[0x01], &[opt]));
        let Ok(Frame::Request(r)) = decode_frame(frame.clone(), &LIMITS) else { panic!() };
        assert_eq!(r.options.chunk.as_deref(), Some(&b"\xa3abc"[..]));
        assert_eq!(r.options.size, Some(1));
        let rec = &r.batch.events[0].record;
        let inside = frame.as_ptr_range();
        assert!(inside.contains(&rec.as_ptr()), "record is not a slice of the frame");
    }

    #[test]
    fn nil_options_mean_none() {
        let r = req(&message(4, b"\xa1t", &[0x01], &[&[0xc0]]));
        assert_eq!(r.options, Options::default());
    }

    #[test]
    fn forward_mode_entries_and_metadata() {
        let events = [ev(1, 2, META), ev(3, 4, b"")];
        let b = encode_request(
            Mode::Forward,
            "fwd",
            &events,
            &EncodeOptions { chunk: Some("c1".into()), event_time: true },
        );
        let r = req(&b);
        assert_eq!(r.mode, Mode::Forward);
        assert_eq!(r.batch.events, events);
        assert_eq!(r.options.chunk.as_deref(), Some(&b"\xa2c1"[..]));
    }

    #[test]
    fn empty_metadata_map_is_dropped() {
        // [t, [[[1, {}], {"a":1}], [[2, nil], {"a":1}]]]
        let b = b"\x92\xa1t\x92\x92\x92\x01\x80\x81\xa1a\x01\x92\x92\x02\xc0\x81\xa1a\x01";
        let r = req(b);
        assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
    }

    #[test]
    fn forward_mode_with_zero_entries_is_valid() {
        let r = req(b"\x93\xa1t\x90\x80");
        assert_eq!(r.mode, Mode::Forward);
        assert!(r.batch.is_empty());
    }

    #[test]
    fn packed_forward_bin_and_str_payloads() {
        let events = [ev(1, 0, b""), ev(2, 5, META)];
        let b = encode_request(
            Mode::PackedForward,
            "p",
            &events,
            &EncodeOptions { chunk: None, event_time: true },
        );
        let r = req(&b);
        assert_eq!((r.mode, r.options.size), (Mode::PackedForward, Some(2)));
        assert_eq!(r.batch.events, events);

        // fluentd's out_forward sends the payload as a str.
        let payload = b"\x92\x01\x81\xa1a\x01\x92\x02\x81\xa1a\x01";
        let mut v = b"\x93\xa1p".to_vec();
        let _ = enc::write_str_len(&mut v, payload.len() as u32);
        v.extend_from_slice(payload);
        v.extend_from_slice(b"\x81\xaacompressed\xa4text");
        let r = req(&v);
        assert_eq!(r.mode, Mode::PackedForward);
        assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
    }

    #[test]
    fn packed_str_payload_transcoded_from_latin1() {
        // The entries `[1, {"a": 1}]` `[0xce 0x69 0x20 0xfd 0x00, {}]` with every byte >= 0x80
        // written as the UTF-8 of that Latin-1 character.
        let raw = b"\x92\x01\x81\xa1a\x01\x92\xce\x69\x20\xfd\x00\x81\xa1a\x01";
        let text: String = raw.iter().map(|&b| char::from(b)).collect();
        let mut v = b"\x92\xa1p".to_vec();
        let _ = enc::write_str(&mut v, &text);
        let r = req(&v);
        assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(1763769600, 0, b"")]);
        // Not Latin-1 (U+2713) after a transcoded start: malformed, not misread.
        let mut v = b"\x92\xa1p".to_vec();
        let _ = enc::write_str(&mut v, "\u{92}\u{2713}");
        assert_eq!(err(&v).reason(), "malformed");
    }

    #[test]
    fn compressed_packed_forward_single_and_multi_member() {
        let events = [ev(1, 0, b""), ev(2, 5, META), ev(3, 0, b"")];
        let b =
            encode_request(Mode::CompressedPackedForward, "z", &events, &EncodeOptions::default());
        let r = req(&b);
        assert_eq!(r.mode, Mode::CompressedPackedForward);
        assert_eq!(r.batch.events.len(), 3);
        assert_eq!(r.batch.events[1].metadata, Bytes::from_static(META));

        let mut two = gzip(b"\x92\x01\x81\xa1a\x01");
        two.extend(gzip(b"\x92\x02\x81\xa1a\x01"));
        let r = req(&packed("z", &two, Some("gzip")));
        assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let b = packed("z", &gzip(&zeros), Some("gzip"));
        let e = err(&b);
        assert_eq!(e.reason(), "decompressed_too_large");
        assert_eq!(e.to_string(), "gzip payload inflates past max_message_size (1048576 bytes)");
    }

    #[test]
    fn corrupt_gzip_fails_clearly() {
        let e = err(&packed("z", b"\x1f\x8bnot really gzip at all", Some("gzip")));
        assert_eq!(e.reason(), "bad_compression");
        assert!(e.to_string().starts_with("gzip payload is corrupt"), "{e}");
        let mut truncated = gzip(b"\x92\x01\x81\xa1a\x01");
        truncated.truncate(truncated.len() - 4);
        assert_eq!(err(&packed("z", &truncated, Some("gzip"))).reason(), "bad_compression");
    }

    #[test]
    fn unknown_compression_is_rejected() {
        let e = err(&packed("z", b"", Some("zstd")));
        assert_eq!(e.reason(), "bad_compression");
        assert_eq!(e.to_string(), "unknown compression \"zstd\" (expected \"gzip\" or \"text\")");
    }

    #[test]
    fn truncated_packed_entry_is_a_bad_entry() {
        let e = err(&packed("p", b"\x92\x01\x81\xa1a", None));
        assert_eq!(e.reason(), "bad_entry");
        assert_eq!(e.to_string(), "entry 0 is truncated in the packed payload");
    }

    #[test]
    fn malformed_record_inside_a_packed_payload() {
        let e = err(&packed("p", b"\x92\x01\x81\xa1a\xc1", None));
        assert_eq!(e.reason(), "malformed");
    }

    #[test]
    fn errors_and_reasons() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"\x81\xa1a\x01", "not_array", "request is a map, not an array"),
            (b"\x91\xa1t", "not_array", "request is an array of 1 elements, not 2 to 4"),
            (b"\x95\xa1t\x01\x80\xc0\xc0", "not_array", "request is an array of 5 elements, not 2 to 4"),
            (b"\x93\x01\x01\x80", "bad_tag", "tag is an integer, not a string"),
            (b"\x93\xc4\x01t\x01\x80", "bad_tag", "tag is a binary, not a string"),
            (b"\x93\xa1\xff\x01\x80", "bad_tag", "tag is not valid utf-8"),
            (b"\x93\xa1t\xc0\x80", "bad_entry", "second element of the request is nil: not a time, an entry array or a packed payload"),
            (b"\x92\xa1t\x01", "bad_entry", "Message request has 2 elements"),
            (b"\x93\xa1t\x01\xa1x", "non_map_record", "record 0 is a string, not a map"),
            (b"\x93\xa1t\xd6\x00\x00\x00\x00\x01\x80", "bad_time", "time of entry 0 is an extension of type 0 and 4 bytes, not an EventTime (type 0, 8 bytes)"),
            (b"\x93\xa1t\xd7\x05\x00\x00\x00\x01\x00\x00\x00\x00\x80", "bad_time", "time of entry 0 is an extension of type 5 and 8 bytes, not an EventTime (type 0, 8 bytes)"),
            (b"\x93\xa1t\xd7\x00\x00\x00\x00\x01\x3b\x9a\xca\x00\x80", "bad_time", "time of entry 0 is out of range"),
            (b"\x93\xa1t\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x80", "bad_time", "time of entry 0 is out of range"),
            (b"\x92\xa1t\x91\x92\xa1x\x80", "bad_time", "time of entry 0 is a string, not an integer, a float or an EventTime"),
            (b"\x92\xa1t\x91\x93\x01\x80\x80", "bad_entry", "entry 0 is an array of the wrong length, not [time, record]"),
            (b"\x92\xa1t\x91\x01", "bad_entry", "entry 0 is not an array"),
            (b"\x92\xa1t\x91\x92\x93\x01\x80\x80\x80", "bad_entry", "entry 0 is a [time, metadata] header of the wrong length"),
            (b"\x94\xa1t\x01\x80\x91\x01", "bad_options", "options are an array, not a map"),
            (b"\x94\xa1t\x01\x80\x81\xa4size\xa1x", "bad_options", "option \"size\" is a string, not a non-negative integer"),
            (b"\x94\xa1t\x01\x80\x81\xaacompressed\x01", "bad_options", "option \"compressed\" is an integer, not a string"),
            (b"\x92\xa1t\xc1", "malformed", "malformed msgpack at byte 3: reserved marker 0xc1"),
            (b"\x92\xa1t", "malformed", "malformed msgpack at byte 3: value truncated"),
            (b"\xc0\xc0", "malformed", "malformed msgpack at byte 1: trailing bytes after the request"),
        ];
        for (b, reason, msg) in cases {
            let e = err(b);
            assert_eq!((e.reason(), e.to_string().as_str()), (*reason, *msg), "{b:02x?}");
        }
    }

    #[test]
    fn non_map_record_names_its_index() {
        let b = b"\x92\xa1t\x94\x92\x01\x80\x92\x01\x80\x92\x01\x80\x92\x01\xa1x";
        assert_eq!(err(b).to_string(), "record 3 is a string, not a map");
    }

    #[test]
    fn frame_over_the_limit() {
        let limits = Limits { max_message_size: 16 };
        let b = Bytes::from(message(3, b"\xa1t", &[0xce, 0, 0, 0, 1], &[]));
        let padded = Bytes::from([&b[..], &[0u8; 20][..]].concat());
        let e = decode_frame(padded, &limits).err().unwrap();
        assert_eq!(e.reason(), "frame_too_large");
        assert_eq!(e.to_string(), "frame of 32 bytes exceeds max_message_size 16");
    }

    #[test]
    fn hostile_entry_count_does_not_preallocate() {
        // Forward mode claiming 4 billion entries in a 9-byte frame: the Vec is sized from
        // the bytes left, not the claim, and the first entry is found missing.
        let e = err(b"\x92\xa1t\xdd\xff\xff\xff\xff");
        assert_eq!(e.to_string(), "malformed msgpack at byte 8: value truncated");
    }
}
