//! msgpack → JSON text, streamed: the bytes a client sent go straight to JSON without a
//! value tree. Every record the stdout and file sinks write (and the Elasticsearch sink's
//! document bodies) passes through here, so nothing in this module allocates per field:
//! output goes into the caller's reused buffer, nesting is tracked on a fixed-size stack.
//!
//! Pure: no I/O, no logging. Input comes from the network: values are read with the
//! crate's one msgpack [`Reader`], which checks every length against the bytes actually
//! present (a claimed 4-billion-element array costs nothing until its elements arrive), and
//! nesting is capped at [`MAX_DEPTH`].
//!
//! msgpack has values JSON cannot hold. The lossy choices, each covered by a test named
//! after it:
//! - NaN and ±infinity become `null` (JSON has no such numbers).
//! - Invalid UTF-8 in a str becomes U+FFFD, one per maximal invalid sequence, as
//!   `String::from_utf8_lossy` does; bin is written as a string the same way (base64 would
//!   be lossless but unreadable in a log line, and log "bytes" are almost always text).
//! - A map key that is not a string is written as a JSON string holding its JSON form
//!   (`1` → `"1"`, `[1,2]` → `"[1,2]"`): JSON keys must be strings. A key whose JSON form
//!   already is a string (str, bin, EventTime) is used as is. Such keys may hold non-string
//!   keys of their own only [`MAX_KEY_NESTING`] levels deep: every level escapes the text of
//!   the levels inside it again, so the output doubles per level (found by the fuzzer: 64
//!   levels in a 17 KB record would be an exabyte); deeper is [`JsonError::KeyTooDeep`].
//! - Ext type 0 with 8 bytes (Forward's EventTime) becomes its RFC 3339 text; any other
//!   ext becomes `null`: its meaning is private to the application that sent it.
//! - Duplicate keys are kept as sent; JSON readers usually keep the last one.
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md>,
//! EventTime: Forward protocol v1, "EventTime Ext Format".

use super::{Reader, Token};
use crate::calendar::write_rfc3339;
use crate::event::{Event, EventTime};

/// How deeply arrays and maps may nest. Real log records are a few levels deep; this bounds
/// the work a hostile record can cause and keeps the nesting stack at a fixed 1 KiB.
pub const MAX_DEPTH: usize = 64;

/// How many non-string map keys may enclose one another (see the module doc): each level
/// at most doubles the bytes of the text inside it, so this bounds the growth at 4×.
pub const MAX_KEY_NESTING: usize = 2;

/// Why a msgpack value could not be transcoded. Offsets count from the start of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("msgpack value truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("msgpack marker 0xc1 (never used) at byte {offset}")]
    ReservedMarker { offset: usize },
    #[error("msgpack value nested deeper than {limit} levels at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
    #[error("{extra} trailing bytes after the msgpack value")]
    TrailingBytes { extra: usize },
    #[error(
        "msgpack map key that is not a string nested more than {limit} levels deep in other such keys, at byte {offset}"
    )]
    KeyTooDeep { limit: usize, offset: usize },
}

impl From<super::Error> for JsonError {
    fn from(e: super::Error) -> JsonError {
        match e {
            super::Error::Truncated { offset } => JsonError::Truncated { offset },
            super::Error::Reserved { offset } => JsonError::ReservedMarker { offset },
            super::Error::TooDeep { limit, offset } => JsonError::TooDeep { limit, offset },
            // Only a size-limited walk fails so; the transcoder reads without a limit.
            super::Error::TooLarge { size, .. } => JsonError::Truncated { offset: size },
        }
    }
}

/// Append the JSON text of the single msgpack value `msgpack` to `out`.
///
/// On error `out` is left as it was before the call, so the caller can write something
/// else in its place.
pub fn write_record_json(out: &mut Vec<u8>, msgpack: &[u8]) -> Result<(), JsonError> {
    let start = out.len();
    let mut r = Reader::new(msgpack);
    let result = transcode(out, &mut r).and_then(|()| match r.remaining() {
        0 => Ok(()),
        extra => Err(JsonError::TrailingBytes { extra }),
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Append one JSON line for an event:
/// `{"tag":"…","time":"…","record":{…}}\n`, with `,"metadata":{…}` before the closing
/// brace when the event carries Fluent Bit metadata.
///
/// On error `out` is left as it was before the call.
pub fn write_event_line(out: &mut Vec<u8>, tag: &str, ev: &Event) -> Result<(), JsonError> {
    let start = out.len();
    write_head(out, tag, ev.time);
    out.extend_from_slice(b",\"record\":");
    let mut result = write_record_json(out, &ev.record);
    if result.is_ok() && !ev.metadata.is_empty() {
        out.extend_from_slice(b",\"metadata\":");
        result = write_record_json(out, &ev.metadata);
    }
    match result {
        Ok(()) => {
            out.extend_from_slice(b"}\n");
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Append the line that stands in for an event whose record could not be transcoded:
/// `{"tag":"…","time":"…","record":null,"error":"…"}\n`. Writing it keeps the event's
/// place (and a trace of it) in the output instead of dropping it silently.
pub fn write_error_line(out: &mut Vec<u8>, tag: &str, time: EventTime, err: &JsonError) {
    use std::io::Write as _;
    write_head(out, tag, time);
    out.extend_from_slice(b",\"record\":null,\"error\":");
    // The message is ASCII from our own format strings; formatting it needs no escaping
    // beyond what write_str does, and this path is rare.
    let mut msg = [0u8; 128];
    let mut cursor = std::io::Cursor::new(&mut msg[..]);
    let n = match write!(cursor, "{err}") {
        Ok(()) => cursor.position() as usize,
        // Longer than the buffer: keep what fitted.
        Err(_) => msg.len(),
    };
    write_str(out, &msg[..n]);
    out.extend_from_slice(b"}\n");
}

/// What [`write_batch_lines`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchLines {
    /// Events written as error lines because their record could not be transcoded.
    pub failed: u64,
    /// The first such error, for the caller's (rate-limited) log.
    pub first_error: Option<JsonError>,
}

/// Append one line per event of a batch; an event whose record cannot be transcoded gets
/// an error line (see [`write_error_line`]) and is counted, never skipped.
pub fn write_batch_lines(out: &mut Vec<u8>, batch: &crate::event::Batch) -> BatchLines {
    let mut res = BatchLines::default();
    let tag = batch.tag.as_str();
    for ev in batch.events.iter().filter(|e| !e.is_tombstone()) {
        if let Err(e) = write_event_line(out, tag, ev) {
            write_error_line(out, tag, ev.time, &e);
            res.failed += 1;
            res.first_error.get_or_insert(e);
        }
    }
    res
}

/// `{"tag":"…","time":"…"` — the common start of event and error lines.
fn write_head(out: &mut Vec<u8>, tag: &str, time: EventTime) {
    out.extend_from_slice(b"{\"tag\":");
    write_str(out, tag.as_bytes());
    out.extend_from_slice(b",\"time\":\"");
    write_rfc3339(out, time);
    out.push(b'"');
}

/// Bytes that need escaping in a JSON string: 0 = copy, `u` = `\u00XX`, else `\` + that byte.
/// The short forms are the ones JSON defines (and serde_json writes); other control
/// characters use `\u00XX`.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a quoted JSON string; invalid UTF-8 becomes U+FFFD.
fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        escape_into(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

/// Escape valid UTF-8 text: copy runs that need no escaping in one go.
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if esc == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Turn the JSON text `out[start..]` into a JSON string holding that text, in place:
/// quotes around it, `"` and `\` escaped. Our own JSON output has no raw control
/// characters, so those two are all that need escaping.
fn quote_in_place(out: &mut Vec<u8>, start: usize) {
    let old_end = out.len();
    let extra = out[start..].iter().filter(|&&b| b == b'"' || b == b'\\').count();
    out.resize(old_end + extra + 2, 0);
    // Walk backwards so every byte is read before its slot is overwritten.
    let mut w = out.len() - 1;
    out[w] = b'"';
    for r in (start..old_end).rev() {
        let b = out[r];
        w -= 1;
        out[w] = b;
        if b == b'"' || b == b'\\' {
            w -= 1;
            out[w] = b'\\';
        }
    }
    out[start] = b'"';
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Array,
    /// In a map, the next item is a key.
    MapKey,
    /// In a map, the next item is a value.
    MapValue,
}

/// One open array or map.
#[derive(Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Array elements / map entries not yet started.
    remaining: u32,
    first: bool,
    /// Where the current key's JSON text starts in `out`.
    key_start: usize,
}

const EMPTY_FRAME: Frame = Frame { kind: Kind::Array, remaining: 0, first: true, key_start: 0 };

/// Write one msgpack value. The loop reads one marker per turn; containers push a frame,
/// and `value_done` tells the enclosing frame that an item ended.
fn transcode(out: &mut Vec<u8>, r: &mut Reader<'_>) -> Result<(), JsonError> {
    let mut stack = [EMPTY_FRAME; MAX_DEPTH];
    let mut depth = 0usize;
    loop {
        if let Some(f) = depth.checked_sub(1).and_then(|i| stack.get_mut(i)) {
            match f.kind {
                Kind::Array | Kind::MapKey if f.remaining == 0 => {
                    out.push(if f.kind == Kind::Array { b']' } else { b'}' });
                    depth -= 1;
                    if value_done(out, &mut stack[..depth], r.position())? {
                        return Ok(());
                    }
                    continue;
                }
                Kind::Array => {
                    if !f.first {
                        out.push(b',');
                    }
                    f.first = false;
                    f.remaining -= 1;
                }
                Kind::MapKey => {
                    if !f.first {
                        out.push(b',');
                    }
                    f.first = false;
                    f.key_start = out.len();
                }
                Kind::MapValue => {}
            }
        }

        let offset = r.position();
        // Containers: (is_map, length); everything else is written and finished here.
        let container = match r.read()? {
            Token::Nil => {
                out.extend_from_slice(b"null");
                None
            }
            Token::Bool(b) => {
                out.extend_from_slice(if b { b"true" } else { b"false" });
                None
            }
            Token::UInt(v) => {
                write_u64(out, v);
                None
            }
            Token::Int(v) => {
                write_i64(out, v);
                None
            }
            Token::F32(v) => {
                if v.is_finite() {
                    // ryu's f32 formatting gives the shortest text that reads back as this
                    // f32 (`0.1`, not the f64 widening `0.10000000149011612`).
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
                None
            }
            Token::F64(v) => {
                if v.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
                None
            }
            // bin and str: text either way (see the module doc).
            Token::Str(s) | Token::Bin(s) => {
                write_str(out, s);
                None
            }
            Token::Ext(ty, data) => {
                write_ext(out, ty, data);
                None
            }
            Token::Array(n) => Some((false, n)),
            Token::Map(n) => Some((true, n)),
        };

        match container {
            Some((is_map, 0)) => out.extend_from_slice(if is_map { b"{}" } else { b"[]" }),
            Some((is_map, len)) => {
                let Some(slot) = stack.get_mut(depth) else {
                    return Err(JsonError::TooDeep { limit: MAX_DEPTH, offset });
                };
                let kind = if is_map { Kind::MapKey } else { Kind::Array };
                *slot = Frame { kind, remaining: len, first: true, key_start: 0 };
                depth += 1;
                out.push(if is_map { b'{' } else { b'[' });
                continue;
            }
            None => {}
        }
        if value_done(out, &mut stack[..depth], r.position())? {
            return Ok(());
        }
    }
}

/// An item ended; advance the innermost open container. `true` when the item was the
/// top-level value.
fn value_done(out: &mut Vec<u8>, stack: &mut [Frame], offset: usize) -> Result<bool, JsonError> {
    let Some((f, outer)) = stack.split_last_mut() else {
        return Ok(true);
    };
    match f.kind {
        Kind::Array => {}
        Kind::MapKey => {
            if out.get(f.key_start) != Some(&b'"') {
                // Keys being written around this one: each would escape this text again.
                let enclosing = outer.iter().filter(|o| o.kind == Kind::MapKey).count();
                if enclosing >= MAX_KEY_NESTING {
                    return Err(JsonError::KeyTooDeep { limit: MAX_KEY_NESTING, offset });
                }
                quote_in_place(out, f.key_start);
            }
            out.push(b':');
            f.kind = Kind::MapValue;
        }
        Kind::MapValue => {
            f.kind = Kind::MapKey;
            f.remaining -= 1;
        }
    }
    Ok(false)
}

/// An ext value: Forward's EventTime as RFC 3339 text, anything else as `null`.
fn write_ext(out: &mut Vec<u8>, ty: i8, data: &[u8]) {
    match (ty, data) {
        (0, &[s0, s1, s2, s3, n0, n1, n2, n3]) => {
            let t = EventTime::new(
                i64::from(u32::from_be_bytes([s0, s1, s2, s3])),
                u32::from_be_bytes([n0, n1, n2, n3]),
            );
            out.push(b'"');
            write_rfc3339(out, t);
            out.push(b'"');
        }
        // Meaning private to the sender: nothing faithful to write (module doc).
        _ => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
mod tests;
