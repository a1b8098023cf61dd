//! Segment files: their names and the entry scanner shared by recovery and readers.
//!
//! The scanner reads a segment in bounded chunks up to a byte limit, checks every entry's
//! magic, length and header CRC (v2; the CRC of the whole body for v1 entries), and steps
//! over damaged bytes by searching for the next magic that starts a valid entry. It does
//! not check the events inside an entry: their own CRCs are checked when the body is
//! decoded, so damage to an event loses that event, not its entry. It never holds more
//! than one chunk plus one entry.
//!
//! Records are client bytes, and a client can put a complete, CRC-valid entry inside one
//! of its records. The scanner never looks inside an entry it returned, so such an entry
//! is only ever met after the scanner stepped into damaged (or torn) bytes. Three rules
//! keep it from being believed there:
//! - **A torn write ends the scan.** At a trusted position (the segment start, or the end
//!   of the entry just returned) a header whose body runs past the limit is a write that
//!   never completed: the scan stops there ([`Scanner::torn_at`]) instead of searching
//!   that body for the next magic. Only a v2 header whose own CRC (complete below the
//!   limit) fails is taken as a damaged length and stepped over.
//! - **Offsets continue densely.** Entries of a segment start at its name and each one at
//!   the end of the one before. An entry that does not continue is not returned (its
//!   bytes are stepped over as damage), except after damaged bytes, where a gap of at most
//!   one event per [`record::MIN_EVENT_LEN`] bytes stepped over stands for the events
//!   those bytes held. A stale entry (offsets below the expected one) is not returned
//!   either.
//! - **Offset arithmetic is checked**: an entry whose offsets would pass `u64::MAX` is
//!   damage.
//!
//! Gaps elsewhere are between segments only: a new segment is started wherever offsets
//! jump (see `recover`).

use super::record::{self, Version, HEADER_LEN, MAGIC_BYTES, MAGIC_V1_BYTES, MAGIC_V2_BYTES};
use super::storage::ReadFile;
use bytes::{Bytes, BytesMut};
use std::io;
use std::path::{Path, PathBuf};

/// Read size of the scanner; entries larger than this are read in one go.
pub const CHUNK: usize = 256 << 10;

pub fn segment_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}.seg"))
}

/// The first offset a segment file name stands for; `None` for other files.
pub fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One checked entry.
#[derive(Debug)]
pub struct RawEntry {
    /// Byte position of the entry in its segment.
    pub pos: u64,
    pub first_offset: u64,
    pub count: u32,
    pub version: Version,
    /// The body (after the 12-byte header). Its head is CRC checked (the whole of it for
    /// v1); its events are checked by [`record::decode_body`].
    pub body: Bytes,
}

impl RawEntry {
    pub fn end_offset(&self) -> u64 {
        // The scanner returns no entry whose end overflows.
        self.first_offset.saturating_add(u64::from(self.count))
    }
}

pub struct Scanner {
    file: Box<dyn ReadFile>,
    buf: BytesMut,
    /// File position of `buf[0]`.
    pos: u64,
    /// End of the last valid entry returned.
    pub valid_end: u64,
    /// Bytes stepped over because they did not form a valid entry, entries that do not
    /// continue the offsets included.
    pub corrupt_bytes: u64,
    /// The first offset the next entry must have: the segment's first offset, then the end
    /// of each entry returned.
    next: u64,
    /// Where the scan stopped at a torn write: an entry whose header checks out (or cannot
    /// be checked yet) and whose body runs past the limit, at a trusted position. Cleared
    /// when a later call gets past it (a larger limit).
    pub torn_at: Option<u64>,
}

/// What to do with an entry whose header checked out.
enum Verdict {
    Take,
    /// Not a continuation of the offsets: stepped over as damage.
    Reject,
}

impl Scanner {
    /// A scanner of the segment named `first_offset`, from its start.
    pub fn new(file: Box<dyn ReadFile>, first_offset: u64) -> Self {
        Scanner::resume(file, 0, first_offset)
    }

    /// A scanner of a segment resuming at byte `pos`, just after the entry that ends at
    /// offset `next` (written by this process): a trusted position, as the segment start is.
    pub fn resume(file: Box<dyn ReadFile>, pos: u64, next: u64) -> Self {
        Scanner {
            file,
            buf: BytesMut::new(),
            pos,
            valid_end: pos,
            corrupt_bytes: 0,
            next,
            torn_at: None,
        }
    }

    /// Whether the entry at the front (`first`, `count`) continues the offsets.
    fn verdict(&self, first: u64, count: u32) -> Verdict {
        if first.checked_add(u64::from(count)).is_none() {
            return Verdict::Reject;
        }
        if first == self.next {
            return Verdict::Take;
        }
        // Bytes stepped over since the last entry returned: they held at most this many
        // events, so the offsets may jump by no more (a forged entry near `u64::MAX` after
        // a torn record cannot move the head).
        let stepped = self.pos - self.valid_end;
        let most = stepped / record::MIN_EVENT_LEN as u64;
        match first.checked_sub(self.next) {
            Some(gap) if gap <= most => Verdict::Take,
            _ => Verdict::Reject,
        }
    }

    /// Whether the scanner stands where an entry must start (nothing stepped over since
    /// the segment start or the last entry returned).
    fn trusted(&self) -> bool {
        self.pos == self.valid_end
    }

    /// `(byte position, next offset)` for [`Scanner::resume`] to go on exactly where this
    /// scanner stands; `None` after stepping over damage (only a scan from a trusted
    /// position knows how far the offsets may jump).
    pub fn resume_point(&self) -> Option<(u64, u64)> {
        self.trusted().then_some((self.pos, self.next))
    }

    /// The next valid entry that ends at or before `limit`, or `None` when none is left
    /// below it. Bytes below `limit` that do not form an entry are counted as corrupt and
    /// consumed, so only call this with a limit below which the file is complete (the
    /// durable length of the active segment, or the length of a sealed one).
    pub fn next_entry(&mut self, limit: u64) -> io::Result<Option<RawEntry>> {
        loop {
            if !self.fill(HEADER_LEN, limit)? {
                self.skip(self.buf.len());
                return Ok(None);
            }
            let Some(h) = record::parse_header(&self.buf) else {
                self.resync();
                continue;
            };
            let total = HEADER_LEN + h.body_len;
            if !self.fill(total, limit)? {
                // The length runs past the limit. Where an entry must start, that is a
                // write that never completed, unless the header's own CRC says the length
                // is damaged: its body may hold a client's record shaped like an entry, so
                // it is not searched for one. Anywhere else it is damage.
                if self.trusted() && record::check_head(&h, &self.buf) != Some(false) {
                    self.torn_at = Some(self.pos);
                    return Ok(None);
                }
                self.resync();
                continue;
            }
            self.torn_at = None;
            if !record::check_entry(&h, &self.buf[..total]) {
                self.resync();
                continue;
            }
            let body = &self.buf[HEADER_LEN..total];
            let (first, count) = record::body_span(body);
            match self.verdict(first, count) {
                Verdict::Take => return Ok(Some(self.take(total, h.version))),
                Verdict::Reject => {
                    tracing::debug!(
                        at = self.pos,
                        first_offset = first,
                        count,
                        expected = self.next,
                        "buffer entry does not continue the offsets: stepped over"
                    );
                    self.resync();
                }
            }
        }
    }

    /// The next entry if it is already buffered whole and valid: no I/O, so callers on an
    /// async runtime can skip `spawn_blocking`. `None` means "use `next_entry`".
    pub fn next_buffered(&mut self, limit: u64) -> Option<RawEntry> {
        let h = record::parse_header(&self.buf)?;
        let total = HEADER_LEN + h.body_len;
        if self.buf.len() < total || self.pos + total as u64 > limit {
            return None;
        }
        if !record::check_entry(&h, &self.buf[..total]) {
            return None;
        }
        let (first, count) = record::body_span(&self.buf[HEADER_LEN..total]);
        match self.verdict(first, count) {
            Verdict::Take => Some(self.take(total, h.version)),
            Verdict::Reject => None,
        }
    }

    fn take(&mut self, total: usize, version: Version) -> RawEntry {
        let pos = self.pos;
        let entry = self.buf.split_to(total).freeze();
        self.pos += total as u64;
        self.valid_end = self.pos;
        let body = entry.slice(HEADER_LEN..);
        let (first_offset, count) = record::body_span(&body);
        // `verdict` checked that the end does not overflow.
        self.next = first_offset.saturating_add(u64::from(count));
        RawEntry { pos, first_offset, count, version, body }
    }

    /// Ensures `need` bytes are buffered, reading up to `limit`; false if the limit or the
    /// end of the file comes first.
    fn fill(&mut self, need: usize, limit: u64) -> io::Result<bool> {
        while self.buf.len() < need {
            let at = self.pos + self.buf.len() as u64;
            if at >= limit {
                return Ok(false);
            }
            let want = (need - self.buf.len()).max(CHUNK).min((limit - at) as usize);
            self.buf.reserve(want);
            let spare = &mut self.buf.spare_capacity_mut()[..want];
            let n = self.file.read_at_uninit(spare, at)?.min(want);
            // SAFETY: the read initialised the first `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + n) };
            if n == 0 {
                // The file is shorter than the limit says; what is there is all there is.
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Steps over the bad byte at the front and on to the next candidate magic.
    fn resync(&mut self) {
        let skip = self.buf[1..]
            .windows(MAGIC_BYTES.len())
            .position(|w| w == MAGIC_BYTES || w == MAGIC_V2_BYTES || w == MAGIC_V1_BYTES)
            .map(|i| i + 1)
            // Keep a tail that could be the start of a magic split across chunks.
            .unwrap_or_else(|| self.buf.len().saturating_sub(MAGIC_BYTES.len() - 1).max(1));
        self.skip(skip);
    }

    fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        let _ = self.buf.split_to(n);
        self.pos += n as u64;
        self.corrupt_bytes += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::storage::{DiskStorage, Storage};
    use crate::event::{Batch, Event, EventTime, Tag};

    fn entry(first: u64, n: usize, size: usize) -> Vec<u8> {
        let ev = Event {
            time: EventTime::new(1, 2),
            record: Bytes::from(vec![0xa5; size]),
            metadata: Bytes::new(),
        };
        let mut e =
            record::encode(&Batch { tag: Tag::from_static("t"), events: vec![ev; n] }).unwrap();
        record::seal(&mut e, first);
        e
    }

    /// `(first, count, damaged events)` of every entry, the valid end and the corrupt bytes.
    fn scan_all(bytes: &[u8]) -> (Vec<(u64, u32, u32)>, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.seg");
        std::fs::write(&p, bytes).unwrap();
        let mut s = Scanner::new(DiskStorage::default().open_read(&p).unwrap(), 0);
        let mut out = vec![];
        while let Some(e) = s.next_entry(bytes.len() as u64).unwrap() {
            let d = record::decode_body(&e.body, e.version).unwrap();
            assert_eq!((d.first, d.batch.len() as u32), (e.first_offset, e.count));
            out.push((e.first_offset, e.count, d.lost));
        }
        (out, s.valid_end, s.corrupt_bytes)
    }

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/b"), 42);
        assert_eq!(p, Path::new("/b/00000000000000000042.seg"));
        assert_eq!(parse_segment_name(&p), Some(42));
        assert_eq!(parse_segment_name(Path::new("/b/42.seg")), None);
        assert_eq!(parse_segment_name(Path::new("/b/00000000000000000042.tmp")), None);
    }

    #[test]
    fn keeps_entries_with_damaged_events_skips_damaged_headers_and_reports_the_torn_tail() {
        let mut bytes = entry(0, 2, 10);
        let second = bytes.len();
        bytes.extend(entry(2, 3, 300_000)); // larger than a chunk
        let third = bytes.len();
        bytes.extend(entry(5, 1, 10));
        let fourth = bytes.len();
        bytes.extend(entry(6, 2, 10));
        let good_end = bytes.len();
        bytes.extend(&entry(8, 1, 10)[..20]); // torn
                                              // Inside the second entry's first record: that event is lost, not its entry.
        bytes[second + 40] ^= 0xff;
        // The third entry's offset: its header CRC fails, it is stepped over.
        bytes[third + HEADER_LEN + 2] ^= 0x01;
        let (got, end, corrupt) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (2, 3, 1), (6, 2, 0)]);
        assert_eq!(end, good_end as u64);
        // The torn write is where the scan stopped, not damage it stepped over.
        assert_eq!(corrupt, (fourth - third) as u64);
    }

    #[test]
    fn a_damaged_length_steps_over_the_entry_to_the_next() {
        let mut bytes = entry(0, 2, 10);
        let second = bytes.len();
        bytes.extend(entry(2, 3, 100));
        let third = bytes.len();
        bytes.extend(entry(5, 1, 10));
        // Plausible but wrong: the header CRC covers the length.
        let len = u32::from_le_bytes(bytes[second + 4..second + 8].try_into().unwrap());
        bytes[second + 4..second + 8].copy_from_slice(&(len - 7).to_le_bytes());
        let (got, end, corrupt) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (5, 1, 0)]);
        assert_eq!((end, corrupt), (bytes.len() as u64, (third - second) as u64));
    }

    /// A length flipped to run past the end of the file, at a trusted position: not a torn
    /// write (the header CRC gives it away), so the entries after it are kept, not cut off.
    #[test]
    fn a_length_damaged_past_the_end_is_stepped_over_not_taken_for_a_torn_write() {
        let mut bytes = entry(0, 2, 10);
        let second = bytes.len();
        bytes.extend(entry(2, 3, 100));
        let third = bytes.len();
        bytes.extend(entry(5, 1, 10));
        bytes[second + 7] ^= 0x04; // + 64 MiB: still a plausible length
        assert!(record::parse_header(&bytes[second..]).is_some());
        let (got, end, corrupt) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (5, 1, 0)]);
        assert_eq!((end, corrupt), (bytes.len() as u64, (third - second) as u64));
    }

    /// After damaged bytes, an entry may skip at most the events those bytes could hold.
    #[test]
    fn a_gap_after_damage_is_bounded_by_the_bytes_stepped_over() {
        let mut bytes = entry(0, 2, 10);
        let damaged = bytes.len();
        bytes.extend(entry(2, 3, 10)); // 12 + 15 + 12 + 3 * 34 = 141 bytes: at most 7 events
        bytes.extend(entry(5, 1, 10)); // continues after the 3 lost
        bytes[damaged] ^= 0x01;
        let (got, _, _) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (5, 1, 0)]);
        let mut far = entry(0, 2, 10);
        far.extend(entry(2, 3, 10));
        far.extend(entry(10, 1, 10)); // 8 past the damage: more than 141 bytes could hold
        far.extend(entry(20, 1, 10)); // 18 past it: more than those 214 bytes could hold
        far[damaged] ^= 0x01;
        let (got, _, corrupt) = scan_all(&far);
        assert_eq!(got, vec![(0, 2, 0)], "nothing after an impossible jump continues");
        assert_eq!(corrupt, (far.len() - damaged) as u64);
    }

    #[test]
    fn entries_of_every_version_are_read_in_one_segment() {
        let ev = Event {
            time: EventTime::new(1, 2),
            record: Bytes::from(vec![0xa5; 30]),
            metadata: Bytes::new(),
        };
        let b = |n| Batch { tag: Tag::from_static("old"), events: vec![ev.clone(); n] };
        let mut bytes = record::encode_v1(&b(2), 0);
        let second = bytes.len();
        bytes.extend(record::encode_v1(&b(3), 2));
        let third = bytes.len();
        bytes.extend(entry(5, 2, 10));
        bytes.extend(record::encode_v1(&b(1), 7));
        let fifth = bytes.len();
        bytes.extend(record::encode_v2(&b(2), 8));
        bytes.extend(entry(10, 1, 10));
        let (got, _, corrupt) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (2, 3, 0), (5, 2, 0), (7, 1, 0), (8, 2, 0), (10, 1, 0)]);
        assert_eq!(corrupt, 0);
        // A v1 entry is checked whole: damage in an event loses the entry.
        bytes[second + 40] ^= 0xff;
        let (got, _, corrupt) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (5, 2, 0), (7, 1, 0), (8, 2, 0), (10, 1, 0)]);
        assert_eq!(corrupt, (third - second) as u64);
        // A v2 entry with a damaged header is stepped over to the v3 one after it.
        bytes[fifth + 13] ^= 0xff;
        let (got, _, _) = scan_all(&bytes);
        assert_eq!(got, vec![(0, 2, 0), (5, 2, 0), (7, 1, 0), (10, 1, 0)]);
    }

    #[test]
    fn garbage_only_yields_nothing() {
        let mut g = vec![0u8; 1000];
        g[100..104].copy_from_slice(&MAGIC_BYTES);
        let (got, end, corrupt) = scan_all(&g);
        assert!(got.is_empty());
        assert_eq!((end, corrupt), (0, 1000));
    }
}
