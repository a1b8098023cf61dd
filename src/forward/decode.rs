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
//!
//! The msgpack itself is read with the crate's one [`Reader`]; this module knows only the
//! protocol's shapes (requests, entries, options, times).

use crate::event::{Batch, Event, EventTime, Tag};
use crate::msgpack::{self, value_len, Extent, Kind, Reader, Token};
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

/// What a failed msgpack read means for a request.
impl From<msgpack::Error> for DecodeError {
    fn from(e: msgpack::Error) -> DecodeError {
        match e {
            msgpack::Error::Truncated { offset } => {
                DecodeError::Malformed { what: TRUNCATED, offset }
            }
            msgpack::Error::Reserved { offset } => {
                DecodeError::Malformed { what: "reserved marker 0xc1", offset }
            }
            msgpack::Error::TooLarge { size, max } => DecodeError::FrameTooLarge { size, max },
            msgpack::Error::TooDeep { offset, .. } => {
                DecodeError::Malformed { what: "nested too deeply", offset }
            }
        }
    }
}

/// The `what` of a value cut short, matched by [`packed_entries`].
const TRUNCATED: &str = "value truncated";

/// Decodes one complete frame (as found by [`super::frame_len`]) into a heartbeat or a request.
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
    let mut r = Reader::new(&frame);
    let decoded = decode_value(&frame, &mut r, max)?;
    if !r.at_end() {
        return Err(DecodeError::Malformed {
            what: "trailing bytes after the request",
            offset: r.position(),
        });
    }
    Ok(decoded)
}

/// Whether a frame (or its first bytes) may be a CompressedPackedForward request, whose
/// payload inflates to up to `max_message_size`: a 3-element array whose second element is
/// a `bin` or `str` (the options that say "gzip" come after the payload). True when the
/// bytes are too few, or too odd, to tell: callers reserve memory by it.
pub fn may_inflate(frame: &[u8]) -> bool {
    let mut r = Reader::new(frame);
    match r.array_len() {
        Ok(Some(3)) => {}
        Ok(_) => return false,
        Err(_) => return true,
    }
    if r.skip().is_err() {
        return true;
    }
    r.peek().map_or(true, |m| matches!(Kind::of(m), Kind::Str | Kind::Bin))
}

fn decode_value(frame: &Bytes, r: &mut Reader<'_>, max: usize) -> Result<Frame, DecodeError> {
    let first = r.peek()?;
    if first == 0xc0 {
        r.read()?;
        return Ok(Frame::Heartbeat);
    }
    let Some(len) = r.array_len()? else {
        return Err(DecodeError::NotArray { found: type_name(first) });
    };
    if !(2..=4).contains(&len) {
        return Err(DecodeError::RequestLength { len });
    }

    let tag_marker = r.peek()?;
    let tag = match str_or_bin_range(r)? {
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
            let time = time(r, 0)?;
            let record = record(r, 0)?;
            let options = if len == 4 { options(r, frame)?.0 } else { Options::default() };
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
                events.push(entry(r, frame, index)?);
            }
            let options = if len == 3 { options(r, frame)?.0 } else { Options::default() };
            Ok(request(Mode::Forward, tag, events, options))
        }
        Kind::Str | Kind::Bin => {
            // PackedForward / CompressedPackedForward: [tag, entries-as-bytes, option?]
            if len > 3 {
                return Err(DecodeError::ModeLength { mode: Mode::PackedForward, len });
            }
            let Some((payload, is_str)) = str_or_bin_range(r)? else {
                return Err(DecodeError::Malformed {
                    what: "packed payload",
                    offset: r.position(),
                });
            };
            let (options, compression) =
                if len == 3 { options(r, frame)? } else { (Options::default(), Compression::Text) };
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
    let mut r = Reader::new(payload);
    let mut index = 0;
    while !r.at_end() {
        match entry(&mut r, payload, index) {
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
    while let Ok(Extent::Complete(len)) = value_len(&payload[pos..], payload.len() - pos) {
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

/// "a string", "a map", … for error messages.
fn type_name(marker: u8) -> &'static str {
    Kind::of(marker).describe()
}

/// [`Reader::str_or_bin`] with the body's range in the buffer, to slice it zero-copy.
#[inline]
fn str_or_bin_range(r: &mut Reader<'_>) -> Result<Option<(Range<usize>, bool)>, DecodeError> {
    Ok(r.str_or_bin()?.map(|(body, is_str)| (r.position() - body.len()..r.position(), is_str)))
}

/// An event time: integer seconds, float seconds, or EventTime (fixext8 or ext8 form).
#[inline]
fn time(r: &mut Reader<'_>, index: usize) -> Result<EventTime, DecodeError> {
    let m = r.peek()?;
    if !matches!(Kind::of(m), Kind::Int | Kind::Float | Kind::Ext) {
        return Err(DecodeError::BadTime { index, found: type_name(m) });
    }
    match r.read()? {
        Token::UInt(secs) => {
            let secs = i64::try_from(secs).map_err(|_| DecodeError::TimeOutOfRange { index })?;
            Ok(EventTime::new(secs, 0))
        }
        Token::Int(secs) => Ok(EventTime::new(secs, 0)),
        Token::F32(f) => float_time(f64::from(f), index),
        Token::F64(f) => float_time(f, index),
        Token::Ext(0, &[s0, s1, s2, s3, n0, n1, n2, n3]) => {
            let secs = u32::from_be_bytes([s0, s1, s2, s3]);
            let nanos = u32::from_be_bytes([n0, n1, n2, n3]);
            if nanos >= 1_000_000_000 {
                return Err(DecodeError::TimeOutOfRange { index });
            }
            Ok(EventTime::new(i64::from(secs), nanos))
        }
        Token::Ext(ext_type, body) => {
            Err(DecodeError::BadTimeExt { index, ext_type, len: body.len() })
        }
        // Not reached: the marker was an int, a float or an ext.
        _ => Err(DecodeError::BadTime { index, found: type_name(m) }),
    }
}

/// Skips a record, checking that it is a map.
#[inline]
fn record(r: &mut Reader<'_>, index: usize) -> Result<Range<usize>, DecodeError> {
    let m = r.peek()?;
    if Kind::of(m) != Kind::Map {
        return Err(DecodeError::NonMapRecord { index, found: type_name(m) });
    }
    Ok(r.skip()?)
}

/// `[time, record]` or Fluent Bit's `[[time, metadata], record]`.
#[inline]
fn entry(r: &mut Reader<'_>, base: &Bytes, index: usize) -> Result<Event, DecodeError> {
    match r.array_len()? {
        Some(2) => {}
        Some(_) => {
            return Err(DecodeError::BadEntry {
                index,
                what: "an array of the wrong length, not [time, record]",
            })
        }
        None => return Err(DecodeError::BadEntry { index, what: "not an array" }),
    }
    let (time, metadata) = match r.array_len()? {
        None => (time(r, index)?, Bytes::new()),
        Some(2) => {
            let time = time(r, index)?;
            let range = r.skip()?;
            // Only a non-empty map is metadata worth keeping (Fluent Bit sends `{}`).
            let non_empty_map =
                matches!(Reader::new(&base[range.clone()]).map_len(), Ok(Some(n)) if n > 0);
            let metadata = if non_empty_map { base.slice(range) } else { Bytes::new() };
            (time, metadata)
        }
        Some(_) => {
            return Err(DecodeError::BadEntry {
                index,
                what: "a [time, metadata] header of the wrong length",
            })
        }
    };
    let record = record(r, index)?;
    Ok(Event { time, record: base.slice(record), metadata })
}

/// The option map (or nil). Returns the options and the payload compression.
fn options(r: &mut Reader<'_>, base: &Bytes) -> Result<(Options, Compression), DecodeError> {
    let mut options = Options::default();
    let mut compression = Compression::Text;
    let m = r.peek()?;
    if m == 0xc0 {
        r.read()?;
        return Ok((options, compression));
    }
    let Some(n) = r.map_len()? else {
        return Err(DecodeError::OptionsNotMap { found: type_name(m) });
    };
    for _ in 0..n {
        let key = match r.str_or_bin()? {
            Some((key, true)) => Some(key),
            Some(_) => None,
            None => {
                r.skip()?;
                None
            }
        };
        match key {
            Some(b"chunk") => options.chunk = Some(base.slice(r.skip()?)),
            Some(b"size") => {
                let vm = r.peek()?;
                let size = match Kind::of(vm) {
                    Kind::Int => match r.read()? {
                        Token::UInt(v) => Some(v),
                        Token::Int(v) => u64::try_from(v).ok(),
                        _ => None,
                    },
                    _ => None,
                };
                let Some(v) = size else {
                    return Err(DecodeError::BadOption {
                        key: "size",
                        found: type_name(vm),
                        expected: "a non-negative integer",
                    });
                };
                options.size = Some(v);
            }
            Some(b"compressed") => {
                let vm = r.peek()?;
                let Some((value, true)) = r.str_or_bin()? else {
                    return Err(DecodeError::BadOption {
                        key: "compressed",
                        found: type_name(vm),
                        expected: "a string",
                    });
                };
                compression = match value {
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
                r.skip()?;
            }
        }
    }
    Ok((options, compression))
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
    payload.first().is_some_and(|&m| Kind::of(m) == Kind::Bool)
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
mod tests;
