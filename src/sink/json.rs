//! msgpack → JSON text, streamed: the bytes a client sent go straight to JSON without a
//! value tree. Every record the stdout and file sinks write (and the Elasticsearch sink's
//! document bodies) passes through here, so nothing in this module allocates per field:
//! output goes into the caller's reused buffer, nesting is tracked on a fixed-size stack.
//!
//! Pure: no I/O, no logging. Input comes from the network, so every length is checked
//! against the bytes actually present (a claimed 4-billion-element array costs nothing until
//! its elements arrive) and nesting is capped at [`MAX_DEPTH`].
//!
//! msgpack has values JSON cannot hold. The lossy choices, each covered by a test named
//! after it:
//! - NaN and ±infinity become `null` (JSON has no such numbers).
//! - Invalid UTF-8 in a str becomes U+FFFD, one per maximal invalid sequence, as
//!   `String::from_utf8_lossy` does; bin is written as a string the same way (base64 would
//!   be lossless but unreadable in a log line, and log "bytes" are almost always text).
//! - A map key that is not a string is written as a JSON string holding its JSON form
//!   (`1` → `"1"`, `[1,2]` → `"[1,2]"`): JSON keys must be strings. A key whose JSON form
//!   already is a string (str, bin, EventTime) is used as is.
//! - Ext type 0 with 8 bytes (Forward's EventTime) becomes its RFC 3339 text; any other
//!   ext becomes `null`: its meaning is private to the application that sent it.
//! - Duplicate keys are kept as sent; JSON readers usually keep the last one.
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md>,
//! EventTime: Forward protocol v1, "EventTime Ext Format".

use crate::event::{Event, EventTime};

/// How deeply arrays and maps may nest. Real log records are a few levels deep; this bounds
/// the work a hostile record can cause and keeps the nesting stack at a fixed 1 KiB.
pub const MAX_DEPTH: usize = 64;

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
}

/// Append the JSON text of the single msgpack value `msgpack` to `out`.
///
/// On error `out` is left as it was before the call, so the caller can write something
/// else in its place.
pub fn write_record_json(out: &mut Vec<u8>, msgpack: &[u8]) -> Result<(), JsonError> {
    let start = out.len();
    let mut r = Reader { buf: msgpack, pos: 0 };
    let result = transcode(out, &mut r).and_then(|()| match msgpack.len() - r.pos {
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

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range RFC 3339's four-digit years
/// can express.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// Append `t` as RFC 3339 text in UTC with nine fractional digits, without quotes:
/// `2026-11-22T07:00:05.123456789Z`.
///
/// Times before year 0 or after year 9999 are clamped to the first / last representable
/// nanosecond (RFC 3339 has four-digit years; a clamped time is still sortable and
/// obviously wrong, where a five-digit year would break readers). Nanoseconds of a second
/// or more are carried into the seconds.
pub fn write_rfc3339(out: &mut Vec<u8>, t: EventTime) {
    let mut secs = t.secs.saturating_add(i64::from(t.nanos / NANOS_PER_SEC));
    let mut nanos = t.nanos % NANOS_PER_SEC;
    if secs < MIN_SECS {
        secs = MIN_SECS;
        nanos = 0;
    } else if secs > MAX_SECS {
        secs = MAX_SECS;
        nanos = NANOS_PER_SEC - 1;
    }
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);

    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut b[0..4], year as u32);
    put_digits(&mut b[5..7], month);
    put_digits(&mut b[8..10], day);
    put_digits(&mut b[11..13], sod / 3600);
    put_digits(&mut b[14..16], sod / 60 % 60);
    put_digits(&mut b[17..19], sod % 60);
    put_digits(&mut b[20..29], nanos);
    out.extend_from_slice(&b);
}

/// Write `v` as decimal digits right-aligned in `dst`, zero-padded (dst is pre-zeroed).
fn put_digits(dst: &mut [u8], mut v: u32) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>):
/// eras of 400 years, each exactly 146097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JsonError> {
        let truncated = JsonError::Truncated { offset: self.buf.len() };
        let end = self.pos.checked_add(n).ok_or(truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], JsonError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, JsonError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, JsonError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, JsonError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, JsonError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
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
                    if value_done(out, &mut stack[..depth]) {
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

        let offset = r.pos;
        let marker = r.u8()?;
        // Containers: (is_map, length); everything else is written and finished here.
        let container = match marker {
            0x00..=0x7f => {
                write_u64(out, u64::from(marker));
                None
            }
            0x80..=0x8f => Some((true, u32::from(marker & 0x0f))),
            0x90..=0x9f => Some((false, u32::from(marker & 0x0f))),
            0xa0..=0xbf => {
                let s = r.take(usize::from(marker & 0x1f))?;
                write_str(out, s);
                None
            }
            0xc0 => {
                out.extend_from_slice(b"null");
                None
            }
            0xc1 => return Err(JsonError::ReservedMarker { offset }),
            0xc2 => {
                out.extend_from_slice(b"false");
                None
            }
            0xc3 => {
                out.extend_from_slice(b"true");
                None
            }
            // bin 8/16/32 and str 8/16/32: text either way (see the module doc).
            0xc4 | 0xd9 => {
                let n = r.u8()?;
                write_str(out, r.take(usize::from(n))?);
                None
            }
            0xc5 | 0xda => {
                let n = r.u16()?;
                write_str(out, r.take(usize::from(n))?);
                None
            }
            0xc6 | 0xdb => {
                let n = r.u32()?;
                write_str(out, r.take(n as usize)?);
                None
            }
            0xc7 => {
                let n = r.u8()?;
                write_ext(out, r, usize::from(n))?;
                None
            }
            0xc8 => {
                let n = r.u16()?;
                write_ext(out, r, usize::from(n))?;
                None
            }
            0xc9 => {
                let n = r.u32()?;
                write_ext(out, r, n as usize)?;
                None
            }
            0xca => {
                let v = f32::from_bits(r.u32()?);
                if v.is_finite() {
                    // ryu's f32 formatting gives the shortest text that reads back as this
                    // f32 (`0.1`, not the f64 widening `0.10000000149011612`).
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
                None
            }
            0xcb => {
                let v = f64::from_bits(r.u64()?);
                if v.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
                None
            }
            0xcc => {
                let v = r.u8()?;
                write_u64(out, u64::from(v));
                None
            }
            0xcd => {
                let v = r.u16()?;
                write_u64(out, u64::from(v));
                None
            }
            0xce => {
                let v = r.u32()?;
                write_u64(out, u64::from(v));
                None
            }
            0xcf => {
                let v = r.u64()?;
                write_u64(out, v);
                None
            }
            0xd0 => {
                let v = r.u8()? as i8;
                write_i64(out, i64::from(v));
                None
            }
            0xd1 => {
                let v = r.u16()? as i16;
                write_i64(out, i64::from(v));
                None
            }
            0xd2 => {
                let v = r.u32()? as i32;
                write_i64(out, i64::from(v));
                None
            }
            0xd3 => {
                let v = r.u64()? as i64;
                write_i64(out, v);
                None
            }
            0xd4 => {
                write_ext(out, r, 1)?;
                None
            }
            0xd5 => {
                write_ext(out, r, 2)?;
                None
            }
            0xd6 => {
                write_ext(out, r, 4)?;
                None
            }
            0xd7 => {
                write_ext(out, r, 8)?;
                None
            }
            0xd8 => {
                write_ext(out, r, 16)?;
                None
            }
            0xdc => Some((false, u32::from(r.u16()?))),
            0xdd => Some((false, r.u32()?)),
            0xde => Some((true, u32::from(r.u16()?))),
            0xdf => Some((true, r.u32()?)),
            0xe0..=0xff => {
                write_i64(out, i64::from(marker as i8));
                None
            }
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
        if value_done(out, &mut stack[..depth]) {
            return Ok(());
        }
    }
}

/// An item ended; advance the innermost open container. `true` when the item was the
/// top-level value.
fn value_done(out: &mut Vec<u8>, stack: &mut [Frame]) -> bool {
    let Some(f) = stack.last_mut() else {
        return true;
    };
    match f.kind {
        Kind::Array => {}
        Kind::MapKey => {
            if out.get(f.key_start) != Some(&b'"') {
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
    false
}

/// An ext value of `len` data bytes, after its length: type byte, then data.
fn write_ext(out: &mut Vec<u8>, r: &mut Reader<'_>, len: usize) -> Result<(), JsonError> {
    let ty = r.u8()? as i8;
    let data = r.take(len)?;
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
    Ok(())
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Tag};
    use bytes::Bytes;
    use proptest::prelude::*;
    use rmpv::Value;

    fn encode(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    fn json(msgpack: &[u8]) -> String {
        let mut out = Vec::new();
        write_record_json(&mut out, msgpack).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn rfc(secs: i64, nanos: u32) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, EventTime::new(secs, nanos));
        String::from_utf8(out).unwrap()
    }

    fn map(pairs: Vec<(Value, Value)>) -> Value {
        Value::Map(pairs)
    }

    #[test]
    fn scalars() {
        assert_eq!(json(&encode(&Value::Nil)), "null");
        assert_eq!(json(&encode(&Value::Boolean(true))), "true");
        assert_eq!(json(&encode(&Value::Boolean(false))), "false");
        assert_eq!(json(&encode(&Value::from(u64::MAX))), "18446744073709551615");
        assert_eq!(json(&encode(&Value::from(i64::MIN))), "-9223372036854775808");
        assert_eq!(json(&encode(&Value::from(-5))), "-5");
        assert_eq!(json(&encode(&Value::F64(1.5))), "1.5");
        assert_eq!(json(&encode(&Value::F32(0.1))), "0.1");
        assert_eq!(json(&encode(&Value::from("hi"))), "\"hi\"");
    }

    #[test]
    fn nested_containers() {
        let v = map(vec![
            (
                Value::from("a"),
                Value::Array(vec![Value::from(1), Value::Array(vec![]), map(vec![])]),
            ),
            (Value::from("b"), map(vec![(Value::from("c"), Value::Nil)])),
        ]);
        assert_eq!(json(&encode(&v)), r#"{"a":[1,[],{}],"b":{"c":null}}"#);
    }

    #[test]
    fn nan_and_infinity_become_null() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(json(&encode(&Value::F64(f))), "null");
            assert_eq!(json(&encode(&Value::F32(f as f32))), "null");
        }
    }

    #[test]
    fn escaping() {
        let s = "q\"b\\s/\u{0}\u{1f}\n\r\t\u{8}\u{c}\u{7f}é€😀\u{2028}";
        let out = json(&encode(&Value::from(s)));
        assert_eq!(out, "\"q\\\"b\\\\s/\\u0000\\u001f\\n\\r\\t\\b\\f\u{7f}é€😀\u{2028}\"");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_char() {
        let raw: &[u8] = b"ok\xff\xfe then \xe2\x82 cut \xf0\x9f\x98";
        let mut msgpack = vec![0xa0 | raw.len() as u8];
        msgpack.extend_from_slice(raw);
        let out = json(&msgpack);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, String::from_utf8_lossy(raw));
        assert!(back.contains('\u{FFFD}'));
    }

    #[test]
    fn bin_is_written_as_text() {
        assert_eq!(json(&encode(&Value::Binary(b"a\"\xff".to_vec()))), "\"a\\\"\u{FFFD}\"");
    }

    #[test]
    fn non_string_keys_become_their_json_text() {
        let v = map(vec![
            (Value::from(1), Value::from("int")),
            (Value::Nil, Value::from("nil")),
            (Value::Boolean(true), Value::from("bool")),
            (Value::Array(vec![Value::from(1), Value::from("x\\")]), Value::from("array")),
            (map(vec![(Value::from(2), Value::from(3))]), Value::from("map")),
            (Value::Binary(b"bin".to_vec()), Value::from("bin")),
            (Value::Ext(0, vec![0, 0, 0, 0, 0, 0, 0, 1]), Value::from("time")),
            (Value::F64(2.5), map(vec![(Value::from(-1), Value::Nil)])),
        ]);
        let out = json(&encode(&v));
        assert_eq!(
            out,
            r#"{"1":"int","null":"nil","true":"bool","[1,\"x\\\\\"]":"array","{\"2\":3}":"map","bin":"bin","1970-01-01T00:00:00.000000001Z":"time","2.5":{"-1":null}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["[1,\"x\\\\\"]"], "array");
        assert_eq!(parsed["{\"2\":3}"], "map");
    }

    #[test]
    fn nested_non_string_keys_are_quoted_twice() {
        // A map key holding a map whose key is an array: each level quotes its key text.
        let inner = map(vec![(Value::Array(vec![Value::from("a")]), Value::from(1))]);
        let v = map(vec![(inner, Value::from(2))]);
        let out = json(&encode(&v));
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let (k, v) = parsed.as_object().unwrap().iter().next().unwrap();
        assert_eq!(v, 2);
        let k: serde_json::Value = serde_json::from_str(k).unwrap();
        assert_eq!(k, serde_json::json!({"[\"a\"]": 1}));
    }

    #[test]
    fn event_time_ext_becomes_rfc3339_other_ext_null() {
        let mut t = vec![0xd7, 0x00];
        t.extend_from_slice(&1_795_330_805u32.to_be_bytes());
        t.extend_from_slice(&123_456_789u32.to_be_bytes());
        assert_eq!(json(&t), "\"2026-11-22T07:00:05.123456789Z\"");
        // Same 8 bytes as ext 8 (0xc7) are still an EventTime.
        let mut t8 = vec![0xc7, 8, 0x00];
        t8.extend_from_slice(&t[2..]);
        assert_eq!(json(&t8), "\"2026-11-22T07:00:05.123456789Z\"");
        assert_eq!(json(&encode(&Value::Ext(1, vec![0; 8]))), "null");
        assert_eq!(json(&encode(&Value::Ext(0, vec![0; 4]))), "null");
        assert_eq!(json(&encode(&Value::Ext(-1, vec![0; 12]))), "null");
    }

    #[test]
    fn depth_limit() {
        let mut ok = vec![0x91; MAX_DEPTH - 1];
        ok.push(0x90);
        assert_eq!(
            json(&ok),
            format!("{}[]{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1))
        );
        let mut ok = vec![0x91; MAX_DEPTH];
        ok.push(0x01);
        assert!(write_record_json(&mut Vec::new(), &ok).is_ok());
        let mut deep = vec![0x91; MAX_DEPTH + 1];
        deep.push(0x01);
        let mut out = b"keep".to_vec();
        let err = write_record_json(&mut out, &deep).unwrap_err();
        assert_eq!(err, JsonError::TooDeep { limit: MAX_DEPTH, offset: MAX_DEPTH });
        assert_eq!(out, b"keep", "output restored on error");
        // A million nested maps fail fast, without recursion.
        let huge = [0x81, 0x01].repeat(1_000_000);
        assert!(matches!(
            write_record_json(&mut Vec::new(), &huge),
            Err(JsonError::TooDeep { .. })
        ));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut out = Vec::new();
        // An array claiming 4 billion elements with none present.
        assert!(matches!(
            write_record_json(&mut out, &[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(JsonError::Truncated { .. })
        ));
        assert!(matches!(
            write_record_json(&mut out, &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(JsonError::Truncated { .. })
        ));
        assert!(matches!(
            write_record_json(&mut out, &[0x82, 0xa1, b'a']),
            Err(JsonError::Truncated { .. })
        ));
        assert!(matches!(write_record_json(&mut out, &[]), Err(JsonError::Truncated { .. })));
        assert_eq!(
            write_record_json(&mut out, &[0xc1]),
            Err(JsonError::ReservedMarker { offset: 0 })
        );
        assert_eq!(
            write_record_json(&mut out, &[0x80, 0x80]),
            Err(JsonError::TrailingBytes { extra: 1 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn every_truncation_of_a_record_fails_cleanly() {
        let v = map(vec![
            (Value::from("log"), Value::from("hello world")),
            (Value::from("n"), Value::from(-300_000)),
            (Value::from("f"), Value::F64(1.25)),
            (Value::from("t"), Value::Ext(0, vec![1; 8])),
            (
                Value::from("a"),
                Value::Array(vec![Value::Binary(vec![1, 2]), Value::from(u64::MAX)]),
            ),
        ]);
        let b = encode(&v);
        for cut in 0..b.len() {
            let mut out = Vec::new();
            assert!(write_record_json(&mut out, &b[..cut]).is_err(), "cut at {cut}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn rfc3339_vectors() {
        assert_eq!(rfc(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(1_795_330_805, 123_456_789), "2026-11-22T07:00:05.123456789Z");
        assert_eq!(rfc(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc(1_709_251_199, 999_999_999), "2024-02-29T23:59:59.999999999Z");
        assert_eq!(rfc(4_107_456_000, 0), "2100-02-28T00:00:00.000000000Z");
        assert_eq!(rfc(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z"); // 2100 is not leap
        assert_eq!(rfc(2_147_483_647, 0), "2038-01-19T03:14:07.000000000Z");
        assert_eq!(rfc(2_147_483_648, 0), "2038-01-19T03:14:08.000000000Z");
        assert_eq!(rfc(4_294_967_295, 0), "2106-02-07T06:28:15.000000000Z");
        assert_eq!(rfc(-1, 500_000_000), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(rfc(-86_400 * 365, 0), "1969-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(-62_135_596_800, 0), "0001-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MIN_SECS, 0), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MAX_SECS, 7), "9999-12-31T23:59:59.000000007Z");
    }

    #[test]
    fn rfc3339_clamps_out_of_range_and_carries_nanos() {
        assert_eq!(rfc(i64::MIN, 5), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MIN_SECS - 1, 0), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(i64::MAX, u32::MAX), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(rfc(MAX_SECS + 1, 0), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(rfc(0, 2_500_000_000), "1970-01-01T00:00:02.500000000Z");
    }

    #[test]
    fn civil_from_days_matches_day_by_day_walk() {
        // Walk every day from 1600-01-01 (a leap century) to 2400-12-31 by hand.
        let is_leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: i64, m: u32| match m {
            2 if is_leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut d) = (1600i64, 1u32, 1u32);
        let start = -135_140; // days from 1970-01-01 back to 1600-01-01
        for days in start.. {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            if (y, m, d) == (2400, 12, 31) {
                break;
            }
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    fn event(record: Vec<u8>, metadata: Vec<u8>) -> Event {
        Event {
            time: EventTime::new(1_795_330_805, 5),
            record: Bytes::from(record),
            metadata: Bytes::from(metadata),
        }
    }

    #[test]
    fn event_line_with_and_without_metadata() {
        let rec = encode(&map(vec![(Value::from("log"), Value::from("hi"))]));
        let mut out = Vec::new();
        write_event_line(&mut out, "app.\"web\"", &event(rec.clone(), vec![])).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"tag\":\"app.\\\"web\\\"\",\"time\":\"2026-11-22T07:00:05.000000005Z\",\"record\":{\"log\":\"hi\"}}\n"
        );
        let meta = encode(&map(vec![(Value::from("k"), Value::from(1))]));
        let mut out = Vec::new();
        write_event_line(&mut out, "t", &event(rec, meta)).unwrap();
        assert!(out.ends_with(b",\"record\":{\"log\":\"hi\"},\"metadata\":{\"k\":1}}\n"));
    }

    #[test]
    fn bad_record_becomes_error_line_in_batch() {
        let good = encode(&map(vec![(Value::from("n"), Value::from(1))]));
        let batch = Batch {
            tag: Tag::from_static("t"),
            events: vec![
                event(good.clone(), vec![]),
                event(vec![0x81, 0xa1], vec![]),
                event(good, vec![0xc1]),
            ],
        };
        let mut out = Vec::new();
        let res = write_batch_lines(&mut out, &batch);
        assert_eq!(res.failed, 2);
        assert!(matches!(res.first_error, Some(JsonError::Truncated { .. })));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["record"]["n"], 1);
        assert!(lines[1]["record"].is_null());
        assert_eq!(lines[1]["error"], "msgpack value truncated at byte 2");
        assert_eq!(lines[2]["error"], "msgpack marker 0xc1 (never used) at byte 0");
        assert_eq!(lines[2]["time"], "2026-11-22T07:00:05.000000005Z");
    }

    // ---- property test: random msgpack → JSON, parsed back by serde_json ----

    /// A str value with arbitrary (possibly invalid UTF-8) bytes: rmpv only builds those by
    /// decoding.
    fn raw_str(bytes: Vec<u8>) -> Value {
        let mut b = vec![0xdb];
        b.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        b.extend_from_slice(&bytes);
        rmpv::decode::read_value(&mut &b[..]).unwrap()
    }

    /// Keys whose JSON text serde_json writes exactly as we do (no f32, no maps).
    fn arb_key() -> impl Strategy<Value = Value> {
        let simple = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::F64),
        ];
        prop_oneof![
            6 => ".{0,8}".prop_map(Value::from),
            1 => proptest::collection::vec(any::<u8>(), 0..6).prop_map(raw_str),
            2 => simple.clone(),
            1 => proptest::collection::vec(simple, 0..3).prop_map(Value::Array),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f32>().prop_map(Value::F32),
            any::<f64>().prop_map(Value::F64),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(5e-324)]
                .prop_map(Value::F64),
            any::<String>().prop_map(Value::from),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(raw_str),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(t, d)| Value::Ext(t, d)),
            any::<[u8; 8]>().prop_map(|d| Value::Ext(0, d.to_vec())),
        ];
        leaf.prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((arb_key(), inner), 0..8).prop_map(Value::Map),
            ]
        })
    }

    /// The JSON we expect for a key, as text (see `arb_key`).
    fn key_text(k: &Value) -> String {
        match k {
            Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Value::Nil => "null".into(),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::F64(f) => ryu::Buffer::new().format_finite(*f).to_string(),
            Value::Array(a) => format!(
                "[{}]",
                a.iter()
                    .map(|v| {
                        let t = key_text(v);
                        if matches!(v, Value::String(_)) {
                            serde_json::to_string(&t).unwrap()
                        } else {
                            t
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => panic!("arb_key does not make {other:?}"),
        }
    }

    fn float_close(a: f64, b: f64) -> bool {
        // serde_json's default float parser may be off by an ulp or so.
        a == b || (a - b).abs() <= 1e-15 * a.abs().max(b.abs()) || (a - b).abs() <= 1e-300
    }

    fn check(v: &Value, j: &serde_json::Value) -> Result<(), String> {
        let fail = || Err(format!("{v:?} vs {j}"));
        let ok = match v {
            Value::Nil => j.is_null(),
            Value::Boolean(b) => j.as_bool() == Some(*b),
            Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => j.as_u64() == Some(u),
                (None, Some(s)) => j.as_i64() == Some(s),
                _ => false,
            },
            Value::F32(f) if f.is_finite() => j.as_f64().is_some_and(|x| x as f32 == *f),
            Value::F64(f) if f.is_finite() => j.as_f64().is_some_and(|x| float_close(x, *f)),
            Value::F32(_) | Value::F64(_) => j.is_null(),
            Value::String(s) => j.as_str() == Some(&*String::from_utf8_lossy(s.as_bytes())),
            Value::Binary(b) => j.as_str() == Some(&*String::from_utf8_lossy(b)),
            Value::Ext(0, d) if d.len() == 8 => {
                let secs = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let nanos = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                j.as_str() == Some(&*rfc(i64::from(secs), nanos))
            }
            Value::Ext(..) => j.is_null(),
            Value::Array(a) => {
                let Some(ja) = j.as_array() else { return fail() };
                if ja.len() != a.len() {
                    return fail();
                }
                for (x, y) in a.iter().zip(ja) {
                    check(x, y)?;
                }
                true
            }
            Value::Map(m) => {
                let Some(jm) = j.as_object() else { return fail() };
                // Duplicate keys: serde_json keeps the last; so does this model.
                let mut model: Vec<(String, &Value)> = Vec::new();
                for (k, val) in m {
                    let t = key_text(k);
                    match model.iter_mut().find(|(mk, _)| *mk == t) {
                        Some(slot) => slot.1 = val,
                        None => model.push((t, val)),
                    }
                }
                if model.len() != jm.len() {
                    return fail();
                }
                for (k, val) in model {
                    let Some(jv) = jm.get(&k) else {
                        return Err(format!("key {k:?} missing in {j}"));
                    };
                    check(val, jv)?;
                }
                true
            }
        };
        if ok {
            Ok(())
        } else {
            fail()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn random_msgpack_parses_back_as_the_same_json(v in arb_value()) {
            let b = encode(&v);
            let mut out = b"prefix".to_vec();
            write_record_json(&mut out, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = std::str::from_utf8(&out[6..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let j: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            check(&v, &j).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            if write_record_json(&mut out, &b).is_ok() {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            } else {
                prop_assert!(out.is_empty());
            }
        }
    }
}
