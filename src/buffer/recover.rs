//! Opening a buffer directory: instance id, segment scan, torn-tail truncation, cursors.
//! Cheap enough to run at every start and safe to interrupt at any point: it only
//! truncates bytes no append was acknowledged for, and creates files atomically.

use super::cursor;
use super::record;
use super::segment::{parse_segment_name, segment_path, RawEntry, Scanner};
use super::storage::{AppendFile, Storage};
use super::{BufferError, BufferOptions, RecoveryReport, SegmentInfo};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) struct Recovered {
    pub instance_id: u64,
    pub segments: BTreeMap<u64, SegmentInfo>,
    pub head: u64,
    pub active_first: u64,
    pub active_len: u64,
    pub active_file: Box<dyn AppendFile>,
    pub total_bytes: u64,
    pub cursors: Vec<(String, u64)>,
    pub report: RecoveryReport,
    /// `(chunk key, stored_at)` of the newest entries' requests, oldest first, at most
    /// `chunks::MAX_CHUNKS` (see `chunks`).
    pub chunks: Vec<(u64, u64)>,
}

fn mkdir(storage: &dyn Storage, path: &Path) -> Result<(), BufferError> {
    storage
        .create_dir_all(path)
        .map_err(|source| BufferError::CreateDir { path: path.to_owned(), source })
}

fn list(storage: &dyn Storage, path: &Path) -> Result<Vec<std::path::PathBuf>, BufferError> {
    storage.list_dir(path).map_err(|source| BufferError::ListDir { path: path.to_owned(), source })
}

/// What one segment file holds, found without changing it: shared by recovery (which then
/// truncates a torn tail) and `inspect` (which must never write).
#[derive(Debug)]
pub(super) struct SegmentScan {
    /// File size when opened (the scan's limit), without the padding.
    pub len: u64,
    /// Zeros after the last entry that direct I/O padded its block with (see
    /// `padding_after`): cut off at recovery without a word.
    pub padding: u64,
    /// End of the last valid entry (stale ones included).
    pub valid_end: u64,
    pub entries: u64,
    /// Events of the valid entries that are intact (damaged ones not included).
    pub events: u64,
    /// Offsets missing before this segment's first valid entry (counting from the end of
    /// the previous segment) and between its entries, plus the damaged events.
    pub lost_events: u64,
    /// Events inside valid entries whose own CRC failed (readers hand out tombstones in
    /// their place); counted in `lost_events` too.
    pub damaged_events: u64,
    /// One past the last valid event so far: the `expected` of the next segment.
    pub next: u64,
    /// One past this segment's last valid event; `None` when it holds none.
    pub end: Option<u64>,
    /// Bytes readers may read: the file size, or less when the tail is junk (see
    /// `scan_segment`'s `before`).
    pub usable_len: u64,
    /// Bytes of entries that checked out but repeat older offsets, and junk past
    /// `usable_len`.
    stale_bytes: u64,
    /// Bytes the scanner stepped over, a torn tail included unless the scan stopped at it
    /// (`torn`).
    scanner_corrupt: u64,
    /// The scan stopped at an entry whose body runs past the end of the file (see
    /// [`Scanner::torn_at`]): the bytes from `valid_end` on were not stepped over.
    torn: bool,
}

impl SegmentScan {
    /// `(damaged bytes, torn tail bytes)`. Only the newest segment (`last`) can have a
    /// torn tail: bytes after its last valid entry are a write that never completed.
    /// Anywhere else they are damage.
    pub fn damage(&self, last: bool) -> (u64, u64) {
        let tail = if last { self.len - self.valid_end.min(self.len) } else { 0 };
        // The part of the tail the scanner counted as stepped over.
        let stepped = if self.torn { 0 } else { tail.min(self.scanner_corrupt) };
        (self.stale_bytes + self.scanner_corrupt - stepped, tail)
    }
}

/// Scans the segment at `path` (first offset `first`) up to its current size. `expected`
/// is one past the last valid event of the segments before it (`None` for the first);
/// `before` is the first offset of the next segment (`None` for the newest).
/// `on_entry` sees every valid entry that is counted. Reads only.
pub(super) fn scan_segment(
    storage: &dyn Storage,
    path: &Path,
    first: u64,
    expected: Option<u64>,
    before: Option<u64>,
    on_entry: &mut dyn FnMut(&RawEntry),
) -> Result<SegmentScan, BufferError> {
    let file = storage
        .open_read(path)
        .map_err(|source| BufferError::OpenSegment { path: path.to_owned(), source })?;
    let len =
        file.size().map_err(|source| BufferError::ReadSegment { path: path.to_owned(), source })?;
    let mut lost_events = 0;
    if let Some(e) = expected {
        if first > e {
            lost_events += first - e;
        }
    }
    let (mut entries, mut events, mut damaged_events, mut stale_bytes, mut end) =
        (0, 0, 0, 0, None);
    // The scanner returns only entries that continue the offsets from `first` (the
    // segment's name) on, with a gap only where it stepped over damaged bytes.
    let mut sc = Scanner::new(file, first);
    let mut next = first;
    // Where junk starts: the rest of the file is not read by anyone.
    let mut junk_from = None;
    while let Some(entry) = sc
        .next_entry(len)
        .map_err(|source| BufferError::ReadSegment { path: path.to_owned(), source })?
    {
        if before.is_some_and(|b| entry.end_offset() > b) {
            // The next segment starts at `b`, so this entry was never acknowledged: a group
            // written whole whose fsync failed and could not be cut off (the writer then
            // started the next segment at the same offsets). Read, it would shadow the
            // acknowledged entries that reuse its offsets.
            junk_from = Some(entry.pos);
            break;
        }
        // The events the damaged bytes before this entry held (the scanner bounds it).
        lost_events += entry.first_offset.saturating_sub(next);
        entries += 1;
        // The header checked out; the events are checked one by one. A body whose head
        // does not parse although its CRC matched (a writer bug) loses all its events.
        let damaged =
            u64::from(record::damaged_events(&entry.body, entry.version).unwrap_or(entry.count));
        damaged_events += damaged;
        lost_events += damaged;
        events += u64::from(entry.count) - damaged;
        next = entry.end_offset();
        end = Some(next);
        on_entry(&entry);
    }
    if before.is_some() {
        if let Some(pos) = sc.torn_at {
            // A sealed segment ending in a write that never completed (it failed and could
            // not be cut off, and the writer moved on): junk, not read by anyone.
            junk_from = Some(pos);
        }
    }
    if let Some(pos) = junk_from {
        stale_bytes += len - pos;
    }
    // Direct I/O pads the last block of a segment with zeros (`storage::DirectFile`); the
    // file is cut to its entries once sealed, but not if the host went down first. Zeros
    // after the last entry, fewer than a block and ending on a block boundary, are that
    // padding: neither damage nor a torn write. The scanner stepped over them.
    let padding = if junk_from.is_none() && sc.torn_at.is_none() {
        padding_after(storage, path, sc.valid_end, len)?
    } else {
        0
    };
    let len = len - padding;
    Ok(SegmentScan {
        len,
        padding,
        valid_end: junk_from.unwrap_or(sc.valid_end),
        usable_len: junk_from.unwrap_or(len),
        entries,
        events,
        lost_events,
        damaged_events,
        next: end.or(expected).unwrap_or(first),
        end,
        stale_bytes,
        scanner_corrupt: sc.corrupt_bytes - padding.min(sc.corrupt_bytes),
        torn: junk_from.is_none() && sc.torn_at.is_some(),
    })
}

/// Cuts the segment at `path` to `len` bytes, durably.
fn cut(storage: &dyn Storage, path: &Path, len: u64) -> Result<(), BufferError> {
    let mut f = storage
        .open_append(path)
        .map_err(|source| BufferError::OpenSegment { path: path.to_owned(), source })?;
    f.truncate(len)
        .and_then(|_| f.sync())
        .map_err(|source| BufferError::TruncateSegment { path: path.to_owned(), source })
}

/// How many bytes of padding follow the last entry (which ends at `valid_end`) of a file of
/// `len` bytes: all of them when they are zeros, fewer than a block, and end on a block
/// boundary; else 0.
fn padding_after(
    storage: &dyn Storage,
    path: &Path,
    valid_end: u64,
    len: u64,
) -> Result<u64, BufferError> {
    let block = super::storage::DIRECT_BLOCK as u64;
    let pad = len.saturating_sub(valid_end);
    if pad == 0 || pad >= block || !len.is_multiple_of(block) {
        return Ok(0);
    }
    let read = |source| BufferError::ReadSegment { path: path.to_owned(), source };
    let file = storage.open_read(path).map_err(read)?;
    let mut buf = vec![0xff; pad as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], valid_end + got as u64).map_err(read)? {
            0 => return Ok(0),
            n => got += n,
        }
    }
    Ok(if buf.iter().all(|&b| b == 0) { pad } else { 0 })
}

pub(super) fn recover(
    opts: &BufferOptions,
    storage: &dyn Storage,
) -> Result<Recovered, BufferError> {
    let segdir = opts.path.join("segments");
    let curdir = opts.path.join("cursors");
    mkdir(storage, &opts.path)?;
    mkdir(storage, &segdir)?;
    mkdir(storage, &curdir)?;
    let identity = super::identity::open(storage, &opts.path, &opts.host_id)?;
    let instance_id = identity.instance_id;
    let mut report = RecoveryReport { host_changed: identity.host_changed, ..Default::default() };

    let mut names: Vec<u64> =
        list(storage, &segdir)?.iter().filter_map(|p| parse_segment_name(p)).collect();
    names.sort_unstable();
    report.segments = names.len();

    let mut segments = BTreeMap::new();
    // One past the last valid event seen; `None` before the first entry.
    let mut expected: Option<u64> = None;
    let mut active_len = 0;
    // The offset the newest segment's next entry would get: one past its last entry, or
    // its name when it holds none.
    let mut active_next = None;
    // The keys of the requests stored last, so that a resend after the restart is known.
    let mut chunks = std::collections::VecDeque::new();
    let mut keep_chunks = |entry: &RawEntry| {
        if let Some((at, keys)) = record::chunk_keys(&entry.body, entry.version) {
            for k in keys {
                if chunks.len() == super::chunks::MAX_CHUNKS {
                    chunks.pop_front();
                }
                chunks.push_back((k, at));
            }
        }
    };
    for (i, &first) in names.iter().enumerate() {
        let path = segment_path(&segdir, first);
        let last = i + 1 == names.len();
        let scan = scan_segment(
            storage,
            &path,
            first,
            expected,
            names.get(i + 1).copied(),
            &mut keep_chunks,
        )?;
        expected = Some(scan.next);
        report.entries += scan.entries;
        report.events += scan.events;
        report.lost_events += scan.lost_events;
        report.damaged_events += scan.damaged_events;
        let (corrupt, tail) = scan.damage(last);
        report.corrupt_bytes += corrupt;
        let mut seg_len = scan.usable_len;
        if tail > 0 {
            // Bytes after the newest valid entry of the newest segment: a write that never
            // completed, so never acknowledged.
            report.truncated_bytes += tail;
            cut(storage, &path, scan.valid_end)?;
            tracing::warn!(path = %path.display(), bytes = tail, "truncated a torn write at the end of the buffer");
            seg_len = scan.valid_end;
        }
        if tail == 0 && scan.padding > 0 {
            cut(storage, &path, scan.valid_end)?;
            tracing::debug!(path = %path.display(), bytes = scan.padding, "cut the padding of a segment written with direct I/O");
        }
        if last {
            active_len = seg_len;
            active_next = Some(scan.end.unwrap_or(first));
        }
        segments.insert(first, SegmentInfo { path, len: seg_len });
    }

    let oldest = names.first().copied().unwrap_or(0);
    let mut cursors = Vec::new();
    for p in list(storage, &curdir)? {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        if name.ends_with(".tmp") {
            let _ = storage.remove_file(&p);
            continue;
        }
        if !cursor::valid_sink_name(name) {
            continue;
        }
        let off = match storage.read_small(&p).ok().as_deref().and_then(cursor::decode) {
            Some(o) => o,
            None => {
                tracing::warn!(path = %p.display(), "cursor is unreadable; the sink restarts at the oldest event");
                report.bad_cursors += 1;
                oldest
            }
        };
        cursors.push((name.to_owned(), off));
    }

    let max_cursor = cursors.iter().map(|c| c.1).max().unwrap_or(0);
    // Never below the newest segment's name: the offsets below it were all handed out
    // (some may be lost to damage, and delivered), and none is ever given to a new event.
    let head = expected.unwrap_or(0).max(max_cursor).max(names.last().copied().unwrap_or(0));
    let (active_first, active_file, active_len) = match (names.last(), active_next) {
        (Some(&first), Some(next)) if next == head => {
            let path = segment_path(&segdir, first);
            let f = storage
                .open_append(&path)
                .map_err(|source| BufferError::OpenSegment { path, source })?;
            (first, f, active_len)
        }
        // No segment, or the head moved past the newest segment's end (to meet a cursor,
        // after the events there were lost): a new segment starts at the head, so offsets
        // inside a segment stay dense (see `segment`'s rules).
        _ => {
            let path = segment_path(&segdir, head);
            let f = storage
                .open_append(&path)
                .map_err(|source| BufferError::OpenSegment { path: path.clone(), source })?;
            storage
                .sync_dir(&segdir)
                .map_err(|source| BufferError::SyncDir { path: segdir.clone(), source })?;
            segments.insert(head, SegmentInfo { path, len: 0 });
            (head, f, 0)
        }
    };
    let total_bytes = segments.values().map(|s| s.len).sum();
    if report.corrupt_bytes > 0 || report.lost_events > 0 {
        tracing::error!(
            corrupt_bytes = report.corrupt_bytes,
            lost_events = report.lost_events,
            damaged_events = report.damaged_events,
            "buffer segments were damaged; skipped the damaged entries and events"
        );
    }
    tracing::info!(
        path = %opts.path.display(),
        segments = report.segments,
        entries = report.entries,
        events = report.events,
        head,
        recent_chunks = chunks.len(),
        "buffer opened"
    );
    Ok(Recovered {
        instance_id,
        segments,
        head,
        active_first,
        active_len,
        active_file,
        total_bytes,
        cursors,
        report,
        chunks: chunks.into(),
    })
}
