//! The entry format: pure encoding and decoding, no I/O.
//!
//! Version 3, the only one written:
//! ```text
//! entry = magic u32 | body_len u32 | head_crc u32 | body
//! body  = first_offset u64 | count u32 | tag_len u16 | tag | chunks | event * count
//! chunks = chunk_count u32 | stored_at u64 | chunk_key u64 * chunk_count
//! event = crc u32 | secs i64 | nanos u32 | record_len u32 | record | metadata_len u32 | metadata
//! head_crc  = crc32c(body_len ++ first_offset ++ count ++ tag_len ++ tag ++ chunks)
//! event crc = crc32c(secs .. end of metadata): the event's bytes after its crc field
//! ```
//! All integers little-endian. Records and metadata are the msgpack bytes as received.
//! `chunks` names the Forward requests whose events the entry holds (the key of each
//! request that carried a `chunk` id, see `buffer::chunks`), and `stored_at` (unix seconds)
//! when the entry was encoded: a restart rebuilds from them which chunks are already stored,
//! so a client resending a request whose ack it never got is acked without the events being
//! stored twice.
//!
//! Each event carries its own CRC, so damage loses exactly the damaged events: the
//! header CRC protects the entry's length (the next entry starts right after it whatever
//! happened inside) and its offsets, count, tag and chunk keys; [`decode_body`] checks every
//! event and puts a tombstone (see [`Event::tombstone`]) in the place of each damaged one, so
//! offsets stay dense. [`encode`] computes the event CRCs (in the connection task); [`seal`],
//! in the writer thread once the offset is known, computes only the header CRC.
//!
//! How a walk over damaged events continues: at the first event whose CRC fails, the
//! lengths from that event on are followed without checking CRCs. When they chain through
//! exactly the remaining events to the exact end of the body, every event's place is taken
//! as known, and each event whose CRC fails is one tombstone; a damaged length almost never
//! chains exactly to the end, and whatever is delivered has its own CRC checked, so this
//! cannot hand out damaged bytes. When they do not chain (a damaged length field), there is
//! no telling from the lengths where the next event starts: the walk searches on from the
//! damaged event for the first position holding an event whose own CRC verifies and from
//! which the lengths chain to the exact end of the body in fewer events than are left. The
//! events from there on are anchored to the end of the entry (its count is covered by the
//! header CRC), so they keep their exact offsets, and only the events in between become
//! tombstones: one flipped length loses one event. The search does bounded work (linear in
//! the body); when it finds nothing, every event from the damage on is a tombstone. Two
//! damaged events in one entry of which the first is a length lose the events between
//! them too (their place is not known exactly).
//!
//! Earlier versions are still read so that a buffer survives an upgrade. Version 2 (magic
//! `0xB1E7_E402`) is version 3 without `chunks` (its header CRC ends with the tag).
//! Version 1 (magic `0xB1E7_E401`), written by berth before per-event CRCs: its header CRC
//! covers the whole body and its events have no crc field. Damage anywhere in a v1 body
//! loses the whole entry (the scanner rejects it).

use crate::event::{Batch, Event, EventTime, Tag};
use bytes::Bytes;

/// First four bytes of every entry written ("berth entry, version 3").
pub const MAGIC: u32 = 0xB1E7_E403;
pub const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// Magic of version 2 entries (no chunk keys): read, never written.
pub const MAGIC_V2: u32 = 0xB1E7_E402;
pub const MAGIC_V2_BYTES: [u8; 4] = MAGIC_V2.to_le_bytes();
/// Magic of version 1 entries (whole-body CRC, no per-event CRC): read, never written.
pub const MAGIC_V1: u32 = 0xB1E7_E401;
pub const MAGIC_V1_BYTES: [u8; 4] = MAGIC_V1.to_le_bytes();
/// magic + body_len + crc.
pub const HEADER_LEN: usize = 12;
/// first_offset + count + tag_len: the smallest possible body (of any version).
pub const MIN_BODY_LEN: usize = 14;
/// chunk_count + stored_at: the fixed part of a v3 body's chunk keys.
const CHUNKS_FIXED: usize = 4 + 8;
/// Larger bodies are refused on append and treated as corruption on read, so a flipped
/// length byte can never make a reader allocate gigabytes.
pub const MAX_BODY_LEN: usize = 128 << 20;
/// crc + secs + nanos + record_len + metadata_len.
const EVENT_FIXED: usize = 4 + 8 + 4 + 4 + 4;
const EVENT_FIXED_V1: usize = 8 + 4 + 4 + 4;
/// The fewest bytes an event takes in either version: `n` damaged bytes held at most
/// `n / MIN_EVENT_LEN` events.
pub const MIN_EVENT_LEN: usize = EVENT_FIXED_V1;

/// The entry format version, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    V3,
}

/// What an entry's fixed header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub body_len: usize,
    /// v2, v3: the header CRC; v1: the CRC of the whole body.
    pub crc: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("tag is {0} bytes, more than the 65535 an entry can hold")]
    TagTooLong(usize),
    #[error("entry body would be {0} bytes, more than the {MAX_BODY_LEN} allowed")]
    TooLarge(usize),
    #[error("entry body is malformed at byte {0}")]
    Malformed(usize),
}

/// A decoded body: events `[first, first + batch.len())`, `lost` of them tombstones that
/// stand for damaged events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub first: u64,
    pub batch: Batch,
    pub lost: u32,
}

/// The encoded size of `batch`'s entry with `chunks` chunk keys, header included.
pub fn entry_len(batch: &Batch, chunks: usize) -> usize {
    let events: usize =
        batch.events.iter().map(|e| EVENT_FIXED + e.record.len() + e.metadata.len()).sum();
    HEADER_LEN + MIN_BODY_LEN + batch.tag.as_bytes().len() + CHUNKS_FIXED + 8 * chunks + events
}

/// Encodes `batch` into a new entry with no chunk keys: see [`encode_with_chunks`].
pub fn encode(batch: &Batch) -> Result<Vec<u8>, RecordError> {
    encode_with_chunks(batch, &[], 0)
}

/// Encodes `batch` into a new entry, event CRCs included, whose offset and header checksum
/// are filled in later by [`seal`], once the writer has assigned the offset. `chunks` are
/// the keys of the requests whose events these are, `stored_at` the time (unix seconds)
/// they are stored at. This is the one copy of the records on the write path.
pub fn encode_with_chunks(
    batch: &Batch,
    chunks: &[u64],
    stored_at: u64,
) -> Result<Vec<u8>, RecordError> {
    let tag = batch.tag.as_bytes();
    if tag.len() > u16::MAX as usize {
        return Err(RecordError::TagTooLong(tag.len()));
    }
    let len = entry_len(batch, chunks.len());
    if len - HEADER_LEN > MAX_BODY_LEN
        || batch.events.len() > u32::MAX as usize
        || chunks.len() > u32::MAX as usize
    {
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
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&stored_at.to_le_bytes());
    for k in chunks {
        out.extend_from_slice(&k.to_le_bytes());
    }
    // Events are written with a zero CRC and get theirs three at a time (`event_crc3`):
    // (start, end) of the events still waiting for it.
    let mut waiting = [(0usize, 0usize); 3];
    let mut n = 0;
    for e in &batch.events {
        let at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&e.time.secs.to_le_bytes());
        out.extend_from_slice(&e.time.nanos.to_le_bytes());
        // Lengths fit: the body was checked against MAX_BODY_LEN (< u32::MAX) above.
        out.extend_from_slice(&(e.record.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.record);
        out.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.metadata);
        waiting[n] = (at, out.len());
        n += 1;
        if n == 3 {
            let [a, b, c] = waiting;
            let crcs = event_crc3(&out[a.0 + 4..a.1], &out[b.0 + 4..b.1], &out[c.0 + 4..c.1]);
            for ((at, _), crc) in waiting.into_iter().zip(crcs) {
                out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
            }
            n = 0;
        }
    }
    for &(at, end) in &waiting[..n] {
        let crc = event_crc(&out[at + 4..end]);
        out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// Writes the entry's first offset and then its header checksum (which covers the offset).
#[expect(clippy::expect_used, reason = "entries come from `encode`, which always writes the head")]
pub fn seal(entry: &mut [u8], first_offset: u64) {
    entry[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&first_offset.to_le_bytes());
    let crc = head_crc(entry, Version::V3).expect("an encoded entry holds its head");
    entry[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Where the head of a v2 or v3 body ends (after the tag; for v3, after the chunk keys),
/// `None` when `body` ends before it does.
fn head_len(body: &[u8], version: Version) -> Option<usize> {
    if body.len() < MIN_BODY_LEN {
        return None;
    }
    let tag_end = MIN_BODY_LEN + u16::from_le_bytes([body[12], body[13]]) as usize;
    let end = match version {
        Version::V3 => {
            let n = body.get(tag_end..tag_end + 4).map(|b| u32_at(b, 0) as usize)?;
            n.checked_mul(8)?.checked_add(tag_end + CHUNKS_FIXED)?
        }
        _ => tag_end,
    };
    (end <= body.len()).then_some(end)
}

/// The v2 or v3 header CRC of `entry` (header and at least the body's head); `None` when
/// the bytes end before the head does.
fn head_crc(entry: &[u8], version: Version) -> Option<u32> {
    let body = entry.get(HEADER_LEN..)?;
    let end = head_len(body, version)?;
    Some(crc32c::crc32c_append(crc32c::crc32c(&entry[4..8]), &body[..end]))
}

/// The chunk keys a checked v3 body names, and when they were stored (unix seconds);
/// `None` for earlier versions (which have none) or a head that does not parse.
pub fn chunk_keys(body: &[u8], version: Version) -> Option<(u64, impl Iterator<Item = u64> + '_)> {
    if version != Version::V3 {
        return None;
    }
    let end = head_len(body, version)?;
    let tag_end = MIN_BODY_LEN + u16::from_le_bytes([body[12], body[13]]) as usize;
    let stored_at = u64_at(body, tag_end + 4);
    let keys = body[tag_end + CHUNKS_FIXED..end].chunks_exact(8).map(|k| u64_at(k, 0));
    Some((stored_at, keys))
}

/// The event count stored in an encoded (sealed or not) entry.
pub fn entry_count(entry: &[u8]) -> u32 {
    u32_at(entry, HEADER_LEN + 8)
}

/// What the fixed header says; `None` when the magic is wrong or the length impossible.
pub fn parse_header(h: &[u8]) -> Option<Header> {
    if h.len() < HEADER_LEN {
        return None;
    }
    let version = if h[0..4] == MAGIC_BYTES {
        Version::V3
    } else if h[0..4] == MAGIC_V2_BYTES {
        Version::V2
    } else if h[0..4] == MAGIC_V1_BYTES {
        Version::V1
    } else {
        return None;
    };
    let body_len = u32_at(h, 4) as usize;
    if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return None;
    }
    Some(Header { version, body_len, crc: u32_at(h, 8) })
}

/// Whether a whole entry (`header.body_len` bytes of body after the header) checks out:
/// v2 and v3, its header CRC (the events are checked by [`decode_body`]); v1, the CRC of
/// its body.
pub fn check_entry(header: &Header, entry: &[u8]) -> bool {
    debug_assert_eq!(entry.len(), HEADER_LEN + header.body_len);
    match header.version {
        Version::V2 | Version::V3 => head_crc(entry, header.version) == Some(header.crc),
        Version::V1 => crc32c::crc32c(&entry[HEADER_LEN..]) == header.crc,
    }
}

/// Whether the v2 or v3 header CRC of the entry starting `front` (its first bytes,
/// possibly not all of it) matches: `None` when `front` ends before the head does, or for
/// v1 (whose CRC covers the whole body).
pub fn check_head(header: &Header, front: &[u8]) -> Option<bool> {
    match header.version {
        Version::V2 | Version::V3 => head_crc(front, header.version).map(|crc| crc == header.crc),
        Version::V1 => None,
    }
}

/// `(first_offset, count)` of a checked body.
pub fn body_span(body: &[u8]) -> (u64, u32) {
    (u64_at(body, 0), u32_at(body, 8))
}

/// Decodes a checked body of `version` into its batch; records and metadata are slices of
/// `body`. Damaged v2 events become tombstones (see the module doc for how the walk goes on
/// past one), counted in `lost`. `Err` only when the body's head itself is malformed (a
/// count or tag that cannot fit: not disk damage once the header CRC matched) or a v1 body
/// does not parse.
pub fn decode_body(body: &Bytes, version: Version) -> Result<Decoded, RecordError> {
    decode(body, version, Check::Crcs)
}

/// [`decode_body`] of a body this process encoded and still holds in memory (the buffer's
/// tail): the same bytes that went to disk, so their CRCs, which guard against damage on
/// disk, are not computed again.
pub fn decode_written(body: &Bytes) -> Result<Decoded, RecordError> {
    decode(body, Version::V3, Check::Trusted)
}

/// The tag of a body this process encoded and still holds in memory, and its first event's
/// time (`None` for an entry of no events), without walking its events: what a reader that
/// only counts (see `buffer::Reader::next_counted`) needs of a tail entry.
pub fn written_head(body: &Bytes) -> Result<(Tag, Option<EventTime>), RecordError> {
    let b = &body[..];
    let events_at = head_len(b, Version::V3).ok_or(RecordError::Malformed(0))?;
    let tag_end = MIN_BODY_LEN + u16::from_le_bytes([b[12], b[13]]) as usize;
    let tag = Tag::from_bytes(body.slice(MIN_BODY_LEN..tag_end))
        .ok_or(RecordError::Malformed(MIN_BODY_LEN))?;
    let time = (body_span(b).1 > 0 && b.len() >= events_at + 16)
        .then(|| EventTime::new(u64_at(b, events_at + 4) as i64, u32_at(b, events_at + 12)));
    Ok((tag, time))
}

/// Whether [`walk`] checks each event's CRC.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Crcs,
    Trusted,
}

fn decode(body: &Bytes, version: Version, check: Check) -> Result<Decoded, RecordError> {
    // The count is under the header CRC, yet bounded by what the body can hold.
    let count = if body.len() >= MIN_BODY_LEN { body_span(body).1 as usize } else { 0 };
    let mut events = Vec::with_capacity(count.min(body.len() / MIN_EVENT_LEN));
    let (first, tag, lost) = walk(body, version, check, |e| events.push(e))?;
    Ok(Decoded { first, batch: Batch { tag, events }, lost })
}

/// How many events of a checked body are damaged (what [`decode_body`] would return as
/// `lost`), without building the batch.
pub fn damaged_events(body: &Bytes, version: Version) -> Result<u32, RecordError> {
    Ok(walk(body, version, Check::Crcs, |_| {})?.2)
}

/// Decodes the head of `body` and hands every event (or its tombstone) to `push`, in order.
fn walk(
    body: &Bytes,
    version: Version,
    check: Check,
    mut push: impl FnMut(Event),
) -> Result<(u64, Tag, u32), RecordError> {
    let b = &body[..];
    if b.len() < MIN_BODY_LEN {
        return Err(RecordError::Malformed(0));
    }
    let (first, count) = body_span(b);
    let tag_len = u16::from_le_bytes([b[12], b[13]]) as usize;
    let pos = MIN_BODY_LEN;
    let tag_end = pos + tag_len;
    if tag_end > b.len() {
        return Err(RecordError::Malformed(pos));
    }
    let tag = Tag::from_bytes(body.slice(pos..tag_end)).ok_or(RecordError::Malformed(pos))?;
    let (fixed, events_at) = match version {
        Version::V1 => (EVENT_FIXED_V1, tag_end),
        Version::V2 => (EVENT_FIXED, tag_end),
        Version::V3 => (EVENT_FIXED, head_len(b, version).ok_or(RecordError::Malformed(tag_end))?),
    };
    // Every event takes at least `fixed` bytes: a count that cannot fit is corruption, and
    // checking it first bounds the work below.
    if (count as usize).saturating_mul(fixed) > b.len() - events_at {
        return Err(RecordError::Malformed(events_at));
    }
    let lost = match version {
        Version::V1 => {
            walk_v1(body, events_at, count, &mut push)?;
            0
        }
        // The event layout of v3 is v2's.
        Version::V2 | Version::V3 => walk_v2(body, events_at, count, check, &mut push),
    };
    Ok((first, tag, lost))
}

fn walk_v1(
    body: &Bytes,
    mut pos: usize,
    count: u32,
    push: &mut dyn FnMut(Event),
) -> Result<(), RecordError> {
    let b = &body[..];
    for _ in 0..count {
        let Some((rec, meta, end)) = event_span(b, pos + 16 - 4) else {
            return Err(RecordError::Malformed(pos));
        };
        let secs = u64_at(b, pos) as i64;
        let nanos = u32_at(b, pos + 8);
        push(event(body, EventTime::new(secs, nanos), rec, meta));
        pos = end;
    }
    if pos != b.len() {
        return Err(RecordError::Malformed(pos));
    }
    Ok(())
}

/// Where `record` and `metadata` of the event whose `record_len` is at `len_at` lie, and
/// where the event ends; `None` when that runs out of `b`.
fn event_span(
    b: &[u8],
    len_at: usize,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>, usize)> {
    if b.len().checked_sub(len_at)? < 4 {
        return None;
    }
    let rstart = len_at + 4;
    let rend = rstart.checked_add(u32_at(b, len_at) as usize)?;
    if b.len().checked_sub(rend)? < 4 {
        return None;
    }
    let mstart = rend + 4;
    let mend = mstart.checked_add(u32_at(b, rend) as usize)?;
    if mend > b.len() {
        return None;
    }
    Some((rstart..rend, mstart..mend, mend))
}

fn event(
    body: &Bytes,
    time: EventTime,
    rec: std::ops::Range<usize>,
    meta: std::ops::Range<usize>,
) -> Event {
    let metadata = if meta.is_empty() { Bytes::new() } else { body.slice(meta) };
    Event { time, record: body.slice(rec), metadata }
}

/// Whether the v2 event lengths from `pos` chain through `count` events to the end of `b`.
fn chains_to_end(b: &[u8], mut pos: usize, count: u32) -> bool {
    for _ in 0..count {
        match event_span(b, pos + 16) {
            Some((_, _, end)) => pos = end,
            None => return false,
        }
    }
    pos == b.len()
}

/// How much work a search for the next intact event may do, per byte of body (bytes
/// checksummed plus lengths followed): linear in the body whatever it holds, also a record
/// built so that every byte looks like the start of an event.
const RESYNC_WORK_PER_BYTE: usize = 8;

/// After the event at `pos` whose lengths cannot be trusted, where the entry goes on: the
/// first position after it holding an event whose own CRC verifies and from which the
/// lengths chain through to the exact end of the body in fewer than `rest` events (the
/// damaged one, at least, is lost). `(position, events from there to the end)`.
///
/// The count anchors the events found to the end of the entry, so their offsets are exact:
/// the entry's count is covered by the header CRC, and a damaged length that still points
/// at an intact event (events of one size, a flipped bit worth one event) chains to the end
/// with the wrong number of events and is not taken.
fn resync_v2(b: &[u8], pos: usize, rest: u32) -> Option<(usize, u32)> {
    if rest < 2 {
        return None;
    }
    let mut work = b.len().saturating_mul(RESYNC_WORK_PER_BYTE).max(1 << 16);
    let mut at = pos.checked_add(EVENT_FIXED)?;
    while b.len().checked_sub(at).is_some_and(|left| left >= EVENT_FIXED) {
        work = work.checked_sub(1)?;
        if let Some((_, _, end)) = event_span(b, at + 16) {
            work = work.checked_sub(end - at)?;
            if event_crc(&b[at + 4..end]) == u32_at(b, at) {
                if let Some(after) = chain_count(b, at, rest - 1, &mut work)? {
                    return Some((at, after));
                }
            }
        }
        at += 1;
    }
    None
}

/// How many events the lengths from `pos` chain through to the exact end of `b`:
/// `Some(None)` when they do not, or take more than `most`; `None` when `work` runs out.
fn chain_count(b: &[u8], mut pos: usize, most: u32, work: &mut usize) -> Option<Option<u32>> {
    let mut n = 0;
    while pos < b.len() {
        *work = work.checked_sub(1)?;
        if n == most {
            return Some(None);
        }
        match event_span(b, pos + 16) {
            Some((_, _, end)) => pos = end,
            None => return Some(None),
        }
        n += 1;
    }
    Some(Some(n))
}

fn walk_v2(
    body: &Bytes,
    mut pos: usize,
    count: u32,
    check: Check,
    push: &mut dyn FnMut(Event),
) -> u32 {
    let b = &body[..];
    // Whether the lengths from the first damaged event on chain to the end; worked out at
    // the first damage (the events before it checked out, so their lengths are right), and
    // true again after a resync (which found them chaining).
    let mut trusted: Option<bool> = None;
    let mut lost = 0;
    // Tombstones take the time of the good event before them (of the first good one after,
    // for leading ones; time 0 when the entry has none): a damaged event's own time is not
    // to be trusted, and a sink's lag is measured from event times.
    let mut last_time: Option<EventTime> = None;
    let mut leading = 0u32;
    let tombstones =
        |n: u32, last_time: Option<EventTime>, leading: &mut u32, push: &mut dyn FnMut(Event)| {
            match last_time {
                Some(t) => (0..n).for_each(|_| push(Event::tombstone(t))),
                None => *leading += n,
            }
        };
    let mut i = 0;
    while i < count {
        let span = event_span(b, pos + 16);
        let good = span.as_ref().is_some_and(|(_, _, end)| {
            check == Check::Trusted || event_crc(&b[pos + 4..*end]) == u32_at(b, pos)
        });
        match span {
            Some((rec, meta, end)) if good => {
                let time = EventTime::new(u64_at(b, pos + 4) as i64, u32_at(b, pos + 12));
                if last_time.is_none() {
                    for _ in 0..std::mem::take(&mut leading) {
                        push(Event::tombstone(time));
                    }
                }
                last_time = Some(time);
                push(event(body, time, rec, meta));
                pos = end;
                i += 1;
            }
            Some((_, _, end))
                if *trusted.get_or_insert_with(|| chains_to_end(b, pos, count - i)) =>
            {
                lost += 1;
                tombstones(1, last_time, &mut leading, push);
                pos = end;
                i += 1;
            }
            _ => {
                // A damaged length: where this event ends, and so where the next starts, is
                // not known. Resume at the next intact event whose lengths lead to the end,
                // so only the events in between are lost.
                let rest = count - i;
                let Some((at, after)) = resync_v2(b, pos, rest) else {
                    // None found: every event from here on is lost.
                    lost += rest;
                    tombstones(rest, last_time, &mut leading, push);
                    break;
                };
                let skipped = rest - after;
                lost += skipped;
                tombstones(skipped, last_time, &mut leading, push);
                pos = at;
                i += skipped;
                trusted = Some(true);
            }
        }
    }
    if last_time.is_none() {
        for _ in 0..leading {
            push(Event::tombstone(EventTime::new(0, 0)));
        }
    }
    lost
}

/// CRC-32C of one event (the same value as `crc32c::crc32c`). Events are mostly a few
/// hundred bytes at any alignment, where the `crc32c` crate runs one stream and takes the
/// unaligned head and tail a byte at a time; this takes them 8 bytes at a time (unaligned
/// loads), about twice as fast there. From 768 bytes on the crate's three-stream code wins.
fn event_crc(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() < 768 && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42_short(data) };
        }
    }
    crc32c::crc32c(data)
}

/// The CRC-32C of three events at once (each the same value as [`event_crc`]). The CPU's
/// `crc32` instruction takes three cycles to give its result and can start one every cycle,
/// so one stream uses a third of it: three independent streams, interleaved over the length
/// the three share, run in about the time of one. Encoding computes every event's CRC, and
/// that was 7% of the ingest path's CPU with one stream (docs/performance.md).
fn event_crc3(a: &[u8], b: &[u8], c: &[u8]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    {
        let short = a.len() < 768 && b.len() < 768 && c.len() < 768;
        if short && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42_x3(a, b, c) };
        }
    }
    [event_crc(a), event_crc(b), event_crc(c)]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42_x3(a: &[u8], b: &[u8], c: &[u8]) -> [u32; 3] {
    use std::arch::x86_64::_mm_crc32_u64;
    let common = a.len().min(b.len()).min(c.len()) & !7;
    let (mut x, mut y, mut z) = (u64::from(!0u32), u64::from(!0u32), u64::from(!0u32));
    let mut i = 0;
    while i < common {
        x = _mm_crc32_u64(x, u64_at(a, i));
        y = _mm_crc32_u64(y, u64_at(b, i));
        z = _mm_crc32_u64(z, u64_at(c, i));
        i += 8;
    }
    [
        !crc32c_sse42_from(x as u32, &a[common..]),
        !crc32c_sse42_from(y as u32, &b[common..]),
        !crc32c_sse42_from(z as u32, &c[common..]),
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42_short(data: &[u8]) -> u32 {
    !crc32c_sse42_from(!0u32, data)
}

/// The CRC register after `data`, from register value `crc` (not inverted either way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42_from(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut crc = u64::from(crc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        crc = _mm_crc32_u64(
            crc,
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        );
    }
    let mut crc = crc as u32;
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        crc = _mm_crc32_u32(crc, u32_at(rest, 0));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        crc = _mm_crc32_u16(crc, u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A sealed version 2 entry, as berth wrote them before chunk keys: for tests of the
/// upgrade path.
#[cfg(test)]
pub(crate) fn encode_v2(batch: &Batch, first_offset: u64) -> Vec<u8> {
    let Ok(mut e) = encode(batch) else { return Vec::new() };
    let tag_end = HEADER_LEN + MIN_BODY_LEN + batch.tag.as_bytes().len();
    e.drain(tag_end..tag_end + CHUNKS_FIXED);
    e[0..4].copy_from_slice(&MAGIC_V2_BYTES);
    let body_len = (e.len() - HEADER_LEN) as u32;
    e[4..8].copy_from_slice(&body_len.to_le_bytes());
    e[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&first_offset.to_le_bytes());
    let crc = head_crc(&e, Version::V2).unwrap_or_default();
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    e
}

/// A sealed version 1 entry, as berth wrote them before per-event CRCs: for tests of the
/// upgrade path.
#[cfg(test)]
pub(crate) fn encode_v1(batch: &Batch, first_offset: u64) -> Vec<u8> {
    let tag = batch.tag.as_bytes();
    let mut body = Vec::new();
    body.extend_from_slice(&first_offset.to_le_bytes());
    body.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    body.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    body.extend_from_slice(tag);
    for e in &batch.events {
        body.extend_from_slice(&e.time.secs.to_le_bytes());
        body.extend_from_slice(&e.time.nanos.to_le_bytes());
        body.extend_from_slice(&(e.record.len() as u32).to_le_bytes());
        body.extend_from_slice(&e.record);
        body.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
        body.extend_from_slice(&e.metadata);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC_V1_BYTES);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(secs: i64, record: &'static [u8], metadata: &'static [u8]) -> Event {
        Event {
            time: EventTime::new(secs, 7),
            record: Bytes::from_static(record),
            metadata: Bytes::from_static(metadata),
        }
    }

    fn batch() -> Batch {
        Batch {
            tag: Tag::from_static("app.web"),
            events: vec![
                Event {
                    time: EventTime::new(-5, 7),
                    record: Bytes::from_static(&[0x81, 0xa1, b'a', 1]),
                    metadata: Bytes::new(),
                },
                Event {
                    time: EventTime::new(1_700_000_000, 999_999_999),
                    record: Bytes::from_static(&[0x80]),
                    metadata: Bytes::from_static(&[0x80]),
                },
            ],
        }
    }

    fn five() -> Batch {
        Batch {
            tag: Tag::from_static("t"),
            events: vec![
                ev(10, b"record-0", b""),
                ev(11, b"record-1", b"m1"),
                ev(12, b"record-2", b""),
                ev(13, b"record-3", b"meta-3"),
                ev(14, b"record-4", b""),
            ],
        }
    }

    fn sealed(b: &Batch, first: u64) -> Vec<u8> {
        let mut e = encode(b).unwrap();
        seal(&mut e, first);
        e
    }

    /// Byte position (in the entry) of event `i`'s crc field.
    fn event_pos(e: &[u8], i: usize) -> usize {
        let mut pos = HEADER_LEN + head_len(&e[HEADER_LEN..], Version::V3).unwrap();
        for _ in 0..i {
            let rlen = u32_at(e, pos + 16) as usize;
            let mlen = u32_at(e, pos + 20 + rlen) as usize;
            pos += EVENT_FIXED + rlen + mlen;
        }
        pos
    }

    fn decode(e: &[u8]) -> Result<Decoded, RecordError> {
        let h = parse_header(e).unwrap();
        decode_body(&Bytes::copy_from_slice(e).slice(HEADER_LEN..), h.version)
    }

    #[test]
    fn round_trip_with_offset_and_checksum() {
        let b = batch();
        let mut e = encode(&b).unwrap();
        assert_eq!(e.len(), entry_len(&b, 0));
        assert_eq!(entry_count(&e), 2);
        seal(&mut e, 42);
        let h = parse_header(&e).unwrap();
        assert_eq!((h.version, h.body_len), (Version::V3, e.len() - HEADER_LEN));
        assert!(check_entry(&h, &e));
        let d = decode(&e).unwrap();
        assert_eq!((d.first, d.lost), (42, 0));
        assert_eq!(d.batch, b);
        let (at, keys) = chunk_keys(&e[HEADER_LEN..], Version::V3).unwrap();
        assert_eq!((at, keys.count()), (0, 0));
        assert_eq!(damaged_events(&Bytes::from(e).slice(HEADER_LEN..), Version::V3), Ok(0));
    }

    #[test]
    fn chunk_keys_round_trip_and_are_covered_by_the_header_crc() {
        let b = five();
        let keys = [7u64, u64::MAX, 0x0123_4567_89ab_cdef];
        let mut e = encode_with_chunks(&b, &keys, 1_800_000_000).unwrap();
        assert_eq!(e.len(), entry_len(&b, 3));
        seal(&mut e, 9);
        let h = parse_header(&e).unwrap();
        assert!(check_entry(&h, &e));
        let (at, got) = chunk_keys(&e[HEADER_LEN..], h.version).unwrap();
        assert_eq!((at, got.collect::<Vec<_>>()), (1_800_000_000, keys.to_vec()));
        let d = decode(&e).unwrap();
        assert_eq!((d.first, d.lost, &d.batch), (9, 0, &b));
        // Every byte of the chunk keys (count, time, keys) is under the header CRC.
        let from = HEADER_LEN + MIN_BODY_LEN + 1;
        for at in from..from + CHUNKS_FIXED + 8 * keys.len() {
            let mut bad = e.clone();
            bad[at] ^= 0x01;
            assert!(!check_entry(&h, &bad), "byte {at}");
        }
        // A chunk count that runs past the body is malformed, not a panic.
        let mut bad = e.clone();
        bad[from..from + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(chunk_keys(&bad[HEADER_LEN..], Version::V3).is_none());
        assert!(decode(&bad).is_err());
        assert!(!check_entry(&h, &bad));
    }

    /// The tail's decoding (no CRCs) gives what the checked one gives for what was written.
    #[test]
    fn a_written_entry_decodes_the_same_without_its_crcs() {
        for b in [five(), batch()] {
            let e = sealed(&b, 11);
            let body = Bytes::from(e[HEADER_LEN..].to_vec());
            let checked = decode_body(&body, Version::V3).unwrap();
            assert_eq!(decode_written(&body).unwrap(), checked);
            assert_eq!((checked.first, checked.lost, &checked.batch), (11, 0, &b));
        }
    }

    #[test]
    fn the_written_head_is_the_decoded_tag_and_first_time() {
        let empty = Batch { tag: Tag::from_static("t.empty"), events: vec![] };
        for (b, keys) in [(five(), vec![]), (batch(), vec![7, 9]), (empty, vec![3])] {
            let mut e = encode_with_chunks(&b, &keys, 1_800_000_000).unwrap();
            seal(&mut e, 4);
            let body = Bytes::from(e[HEADER_LEN..].to_vec());
            let d = decode_written(&body).unwrap();
            let want = (d.batch.tag.clone(), d.batch.events.first().map(|e| e.time));
            assert_eq!(written_head(&body).unwrap(), want);
        }
        assert_eq!(written_head(&Bytes::from_static(&[0; 10])), Err(RecordError::Malformed(0)));
    }

    #[test]
    fn version_2_entries_still_decode_and_have_no_chunk_keys() {
        let b = five();
        let e = encode_v2(&b, 30);
        let h = parse_header(&e).unwrap();
        assert_eq!(h.version, Version::V2);
        assert!(check_entry(&h, &e));
        assert_eq!(check_head(&h, &e[..HEADER_LEN + MIN_BODY_LEN + 1]), Some(true));
        let d = decode(&e).unwrap();
        assert_eq!((d.first, d.lost, &d.batch), (30, 0, &b));
        assert!(chunk_keys(&e[HEADER_LEN..], Version::V2).is_none());
        // A damaged event of a v2 entry is one tombstone, as in v3.
        let mut bad = e.clone();
        let at = HEADER_LEN + MIN_BODY_LEN + 1 + 22;
        bad[at] ^= 0x08;
        assert_eq!(decode(&bad).unwrap().lost, 1);
    }

    #[test]
    fn the_header_crc_covers_length_offset_count_tag_and_chunks_only() {
        let e = sealed(&five(), 7);
        let h = parse_header(&e).unwrap();
        let head_end = HEADER_LEN + MIN_BODY_LEN + 1 + CHUNKS_FIXED;
        for at in (4..8).chain(HEADER_LEN..head_end) {
            let mut bad = e.clone();
            bad[at] ^= 0x10;
            assert!(!check_entry(&h, &bad), "byte {at}");
        }
        let mut bad = e.clone();
        bad[head_end + 30] ^= 0x10;
        assert!(check_entry(&h, &bad), "events are not the header's business");
    }

    #[test]
    fn a_damaged_record_is_exactly_one_tombstone() {
        let b = five();
        let e = sealed(&b, 100);
        for victim in 0..5 {
            // Every byte of the event: crc, time, lengths, record, metadata.
            for at in event_pos(&e, victim)..event_pos(&e, victim + 1) {
                let mut bad = e.clone();
                bad[at] ^= 0x04;
                let d = decode(&bad).unwrap();
                assert_eq!(d.first, 100);
                assert_eq!(d.batch.len(), 5, "offsets stay dense");
                // A damaged length too: the walk resumes at the next intact event.
                assert_eq!(d.lost, 1, "byte {at}");
                for (i, got) in d.batch.events.iter().enumerate() {
                    if i == victim {
                        assert!(got.is_tombstone());
                        let t =
                            if victim == 0 { b.events[1].time } else { b.events[victim - 1].time };
                        assert_eq!(got.time, t, "a tombstone takes a neighbour's time");
                    } else {
                        assert_eq!(got, &b.events[i], "byte {at}, event {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn two_damaged_records_are_two_tombstones() {
        let b = five();
        let mut e = sealed(&b, 0);
        let (p1, p3) = (event_pos(&e, 1), event_pos(&e, 3));
        e[p1 + 22] ^= 0xff;
        e[p3 + 25] ^= 0xff;
        let d = decode(&e).unwrap();
        assert_eq!(d.lost, 2);
        let tomb: Vec<bool> = d.batch.events.iter().map(Event::is_tombstone).collect();
        assert_eq!(tomb, vec![false, true, false, true, false]);
    }

    #[test]
    fn a_damaged_length_loses_only_its_event_without_panics() {
        let b = five();
        let e = sealed(&b, 0);
        let p = event_pos(&e, 2);
        for v in [0u32, 1, 9, 100, 1 << 20, u32::MAX] {
            // Record 2 is 8 bytes, its metadata 0.
            for at in
                [p + 16, p + 20 + 8].into_iter().filter(|&at| v != if at == p + 16 { 8 } else { 0 })
            {
                let mut bad = e.clone();
                bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
                let d = decode(&bad).unwrap();
                assert_eq!(d.batch.len(), 5);
                assert_eq!(d.lost, 1, "length {v} at {at}");
                assert_eq!(&d.batch.events[..2], &b.events[..2]);
                assert!(d.batch.events[2].is_tombstone());
                assert_eq!(&d.batch.events[3..], &b.events[3..], "length {v} at {at}");
            }
        }
        // Every length damaged: nothing to resume at, all tombstones with time 0.
        let mut bad = e.clone();
        for i in 0..5 {
            let pi = event_pos(&e, i);
            bad[pi + 16..pi + 20].copy_from_slice(&9999u32.to_le_bytes());
        }
        let d = decode(&bad).unwrap();
        assert_eq!(d.lost, 5);
        assert!(d.batch.events.iter().all(|e| e.is_tombstone() && e.time == EventTime::new(0, 0)));
    }

    /// The issue's figure: one flipped `record_len` in a 1,000-event entry lost the 495
    /// events after it; now it loses that one event, and every other is delivered at its
    /// own offset. Also when the events are all of one size and the flip is worth exactly
    /// one event (the damaged length then points at an intact event, one too far).
    #[test]
    fn one_damaged_length_in_a_thousand_events_loses_one() {
        let events: Vec<Event> = (0..1000)
            .map(|i| Event {
                time: EventTime::new(1_700_000_000 + i, 0),
                record: Bytes::from(format!("{{\"log\":\"line {i:04} {}\"}}", "x".repeat(200))),
                metadata: Bytes::new(),
            })
            .collect();
        let b = Batch { tag: Tag::from_static("t"), events };
        let e = sealed(&b, 5_000);
        let size = (event_pos(&e, 1) - event_pos(&e, 0)) as u32;
        let p = event_pos(&e, 505);
        let rlen = u32_at(&e, p + 16);
        for (what, v) in
            [("a flipped high bit", rlen ^ (1 << 30)), ("one event too far", rlen + size)]
        {
            let mut bad = e.clone();
            bad[p + 16..p + 20].copy_from_slice(&v.to_le_bytes());
            let d = decode(&bad).unwrap();
            assert_eq!((d.first, d.batch.len(), d.lost), (5_000, 1000, 1), "{what}");
            for (i, got) in d.batch.events.iter().enumerate() {
                if i == 505 {
                    assert!(got.is_tombstone(), "{what}");
                } else {
                    assert_eq!(got, &b.events[i], "{what}: event {i}");
                }
            }
        }
    }

    /// A search for the next intact event stays linear in the body whatever the bytes: here
    /// a 4 MiB record of back-to-back tiny events, every one CRC-valid, after a damaged
    /// length (its own events chain only to the end of the record, not of the entry).
    #[test]
    fn the_search_after_a_damaged_length_is_bounded() {
        let mut fake = Vec::new();
        while fake.len() < 4 << 20 {
            let at = fake.len();
            fake.extend_from_slice(&[0; 4]);
            fake.extend_from_slice(&1i64.to_le_bytes());
            fake.extend_from_slice(&0u32.to_le_bytes());
            fake.extend_from_slice(&0u32.to_le_bytes());
            fake.extend_from_slice(&0u32.to_le_bytes());
            let crc = event_crc(&fake[at + 4..]);
            fake[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let big =
            Event { time: EventTime::new(1, 0), record: Bytes::from(fake), metadata: Bytes::new() };
        let mut events = vec![big];
        events.extend((0..1000).map(|i| ev(i, b"after", b"")));
        let b = Batch { tag: Tag::from_static("t"), events };
        let mut e = sealed(&b, 0);
        let p = event_pos(&e, 0);
        e[p + 19] ^= 0x80;
        let t = std::time::Instant::now();
        let d = decode(&e).unwrap();
        let took = t.elapsed();
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        // The search ran out of work before it got past the fakes: it gives up (every
        // event from the damage on is lost, as before the search existed) rather than
        // spend quadratic time. Decoding is deterministic, so readers agree.
        assert_eq!((d.batch.len(), d.lost), (1001, 1001));
    }

    #[test]
    fn refuses_long_tags_and_bad_headers() {
        let b = Batch { tag: Tag::from("x".repeat(70_000)), events: vec![] };
        assert_eq!(encode(&b), Err(RecordError::TagTooLong(70_000)));
        let mut e = encode(&batch()).unwrap();
        // (Not the low bits: those make another version's magic.)
        e[0] ^= 0x10;
        assert!(parse_header(&e).is_none());
        e[0] ^= 0x10;
        e[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(&e).is_none());
    }

    #[test]
    fn truncated_bodies_are_errors_or_tombstones_not_panics() {
        for e in
            [sealed(&batch(), 0), sealed(&five(), 3), encode_v2(&five(), 3), encode_v1(&five(), 3)]
        {
            let version = parse_header(&e).unwrap().version;
            let body = Bytes::from(e).slice(HEADER_LEN..);
            for cut in 0..body.len() {
                match decode_body(&body.slice(..cut), version) {
                    Err(_) => {}
                    Ok(d) => {
                        assert_ne!(version, Version::V1, "v1 cut at {cut}");
                        assert!(d.lost > 0, "cut at {cut}");
                        assert_eq!(d.batch.len() as u32, body_span(&body).1);
                    }
                }
            }
            let mut bad = body.to_vec();
            bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(decode_body(&Bytes::from(bad), version).is_err());
        }
        // Arbitrary bytes after a valid head never panic either.
        let e = sealed(&five(), 0);
        for at in HEADER_LEN + MIN_BODY_LEN + 1 + CHUNKS_FIXED..e.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = e.clone();
                bad[at] ^= x;
                let d = decode(&bad).unwrap();
                assert!(d.lost >= 1 && d.batch.len() == 5, "byte {at}");
            }
        }
    }

    #[test]
    fn event_crc_is_crc32c_at_every_length_and_alignment() {
        let bytes: Vec<u8> =
            (0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in (0..40).chain([63, 64, 65, 211, 500, 767, 768, 769, 1000, 3000]) {
            for off in 0..9 {
                let s = &bytes[off..off + len];
                assert_eq!(event_crc(s), crc32c::crc32c(s), "len {len} at {off}");
            }
        }
    }

    #[test]
    fn three_event_crcs_at_once_are_each_crc32c() {
        let bytes: Vec<u8> =
            (0..6000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let lens = [0, 1, 7, 8, 9, 15, 16, 17, 64, 200, 211, 767, 768, 1000];
        for (k, &la) in lens.iter().enumerate() {
            for &lb in &lens {
                for &lc in &lens[k % 3..] {
                    let off = (la + lb) % 9;
                    let (a, b, c) = (
                        &bytes[off..off + la],
                        &bytes[1000 + off..1000 + off + lb],
                        &bytes[3000..3000 + lc],
                    );
                    let want = [crc32c::crc32c(a), crc32c::crc32c(b), crc32c::crc32c(c)];
                    assert_eq!(event_crc3(a, b, c), want, "lengths {la} {lb} {lc}");
                }
            }
        }
    }

    /// Entries of 1 to 7 events: every event's CRC checks out whichever way encoding
    /// grouped them (three at a time, and the one or two left over).
    #[test]
    fn every_event_crc_is_right_for_any_count() {
        for n in 1..=7 {
            let mut b = five();
            b.events = b.events.iter().cycle().take(n).cloned().collect();
            let e = sealed(&b, 0);
            let d = decode(&e).unwrap();
            assert_eq!((d.lost, d.batch.len()), (0, n), "{n} events");
            for i in 0..n {
                let at = event_pos(&e, i);
                let end = if i + 1 < n { event_pos(&e, i + 1) } else { e.len() };
                assert_eq!(u32_at(&e, at), crc32c::crc32c(&e[at + 4..end]), "event {i} of {n}");
            }
        }
    }

    #[test]
    fn version_1_entries_still_decode() {
        let b = five();
        let e = encode_v1(&b, 55);
        let h = parse_header(&e).unwrap();
        assert_eq!((h.version, h.body_len), (Version::V1, e.len() - HEADER_LEN));
        assert!(check_entry(&h, &e));
        let d = decode(&e).unwrap();
        assert_eq!((d.first, d.lost), (55, 0));
        assert_eq!(d.batch, b);
        // Its CRC covers the whole body.
        let mut bad = e.clone();
        bad[e.len() - 3] ^= 1;
        assert!(!check_entry(&h, &bad));
    }
}
