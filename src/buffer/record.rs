//! The entry format: pure encoding and decoding, no I/O.
//!
//! ```text
//! entry = magic u32 | body_len u32 | crc32c(body) u32 | body
//! body  = first_offset u64 | count u32 | tag_len u16 | tag | event * count
//! event = secs i64 | nanos u32 | record_len u32 | record | metadata_len u32 | metadata
//! ```
//! All integers little-endian. Records and metadata are the msgpack bytes as received.

use crate::event::{Batch, Event, EventTime, Tag};
use bytes::Bytes;

/// First four bytes of every entry ("berth entry, version 1").
pub const MAGIC: u32 = 0xB1E7_E401;
pub const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// magic + body_len + crc.
pub const HEADER_LEN: usize = 12;
/// first_offset + count + tag_len: the smallest possible body.
pub const MIN_BODY_LEN: usize = 14;
/// Larger bodies are refused on append and treated as corruption on read, so a flipped
/// length byte can never make a reader allocate gigabytes.
pub const MAX_BODY_LEN: usize = 128 << 20;
const EVENT_FIXED: usize = 8 + 4 + 4 + 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("tag is {0} bytes, more than the 65535 an entry can hold")]
    TagTooLong(usize),
    #[error("entry body would be {0} bytes, more than the {MAX_BODY_LEN} allowed")]
    TooLarge(usize),
    #[error("entry body is malformed at byte {0}")]
    Malformed(usize),
}

/// The encoded size of `batch`'s entry, header included.
pub fn entry_len(batch: &Batch) -> usize {
    let events: usize =
        batch.events.iter().map(|e| EVENT_FIXED + e.record.len() + e.metadata.len()).sum();
    HEADER_LEN + MIN_BODY_LEN + batch.tag.as_bytes().len() + events
}

/// Encodes `batch` into a new entry whose offset and checksum are filled in later by
/// [`seal`], once the writer has assigned the offset. This is the one copy of the records
/// on the write path.
pub fn encode(batch: &Batch) -> Result<Vec<u8>, RecordError> {
    let tag = batch.tag.as_bytes();
    if tag.len() > u16::MAX as usize {
        return Err(RecordError::TagTooLong(tag.len()));
    }
    let len = entry_len(batch);
    if len - HEADER_LEN > MAX_BODY_LEN || batch.events.len() > u32::MAX as usize {
        return Err(RecordError::TooLarge(len - HEADER_LEN));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC_BYTES);
    out.extend_from_slice(&((len - HEADER_LEN) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    out.extend_from_slice(tag);
    for e in &batch.events {
        out.extend_from_slice(&e.time.secs.to_le_bytes());
        out.extend_from_slice(&e.time.nanos.to_le_bytes());
        // Lengths fit: the body was checked against MAX_BODY_LEN (< u32::MAX) above.
        out.extend_from_slice(&(e.record.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.record);
        out.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.metadata);
    }
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// Writes the entry's first offset and then its checksum (which covers the offset).
pub fn seal(entry: &mut [u8], first_offset: u64) {
    entry[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&first_offset.to_le_bytes());
    let crc = crc32c::crc32c(&entry[HEADER_LEN..]);
    entry[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The event count stored in an encoded (sealed or not) entry.
pub fn entry_count(entry: &[u8]) -> u32 {
    u32_at(entry, HEADER_LEN + 8)
}

/// What the fixed header says; `None` when the magic is wrong or the length impossible.
pub fn parse_header(h: &[u8]) -> Option<(usize, u32)> {
    if h.len() < HEADER_LEN || h[0..4] != MAGIC_BYTES {
        return None;
    }
    let body_len = u32_at(h, 4) as usize;
    if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return None;
    }
    Some((body_len, u32_at(h, 8)))
}

/// `(first_offset, count)` of a checked body.
pub fn body_span(body: &[u8]) -> (u64, u32) {
    (u64_at(body, 0), u32_at(body, 8))
}

/// Decodes a checked body into its batch; records and metadata are slices of `body`.
pub fn decode_body(body: &Bytes) -> Result<(u64, Batch), RecordError> {
    let b = &body[..];
    if b.len() < MIN_BODY_LEN {
        return Err(RecordError::Malformed(0));
    }
    let (first, count) = body_span(b);
    let tag_len = u16::from_le_bytes([b[12], b[13]]) as usize;
    let mut pos = MIN_BODY_LEN;
    let tag_end = pos + tag_len;
    if tag_end > b.len() {
        return Err(RecordError::Malformed(pos));
    }
    let tag = Tag::from_bytes(body.slice(pos..tag_end)).ok_or(RecordError::Malformed(pos))?;
    pos = tag_end;
    // Every event takes at least EVENT_FIXED bytes: a count that cannot fit is corruption,
    // and checking it first bounds the allocation below.
    if (count as usize).saturating_mul(EVENT_FIXED) > b.len() - pos {
        return Err(RecordError::Malformed(pos));
    }
    let mut events = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if b.len() - pos < 16 {
            return Err(RecordError::Malformed(pos));
        }
        let secs = u64_at(b, pos) as i64;
        let nanos = u32_at(b, pos + 8);
        let rlen = u32_at(b, pos + 12) as usize;
        pos += 16;
        if b.len() - pos < rlen + 4 {
            return Err(RecordError::Malformed(pos));
        }
        let record = body.slice(pos..pos + rlen);
        pos += rlen;
        let mlen = u32_at(b, pos) as usize;
        pos += 4;
        if b.len() - pos < mlen {
            return Err(RecordError::Malformed(pos));
        }
        let metadata = if mlen == 0 { Bytes::new() } else { body.slice(pos..pos + mlen) };
        pos += mlen;
        events.push(Event { time: EventTime::new(secs, nanos), record, metadata });
    }
    if pos != b.len() {
        return Err(RecordError::Malformed(pos));
    }
    Ok((first, Batch { tag, events }))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            tag: Tag::from_static("app.web"),
            events: vec![
                Event { time: EventTime::new(-5, 7), record: Bytes::from_static(&[0x81, 0xa1, b'a', 1]), metadata: Bytes::new() },
                Event { time: EventTime::new(1_700_000_000, 999_999_999), record: Bytes::from_static(&[0x80]), metadata: Bytes::from_static(&[0x80]) },
            ],
        }
    }

    #[test]
    fn round_trip_with_offset_and_checksum() {
        let b = batch();
        let mut e = encode(&b).unwrap();
        assert_eq!(e.len(), entry_len(&b));
        assert_eq!(entry_count(&e), 2);
        seal(&mut e, 42);
        let (body_len, crc) = parse_header(&e).unwrap();
        assert_eq!(body_len, e.len() - HEADER_LEN);
        assert_eq!(crc, crc32c::crc32c(&e[HEADER_LEN..]));
        let body = Bytes::from(e).slice(HEADER_LEN..);
        let (first, got) = decode_body(&body).unwrap();
        assert_eq!(first, 42);
        assert_eq!(got, b);
    }

    #[test]
    fn refuses_long_tags_and_bad_headers() {
        let b = Batch { tag: Tag::from("x".repeat(70_000)), events: vec![] };
        assert_eq!(encode(&b), Err(RecordError::TagTooLong(70_000)));
        let mut e = encode(&batch()).unwrap();
        e[0] ^= 1;
        assert!(parse_header(&e).is_none());
        e[0] ^= 1;
        e[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(&e).is_none());
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let mut e = encode(&batch()).unwrap();
        seal(&mut e, 0);
        let body = Bytes::from(e).slice(HEADER_LEN..);
        for cut in 0..body.len() {
            assert!(decode_body(&body.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = body.to_vec();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_body(&Bytes::from(bad)).is_err());
    }
}
