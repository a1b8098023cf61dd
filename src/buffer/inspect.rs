//! `berth buffer inspect`: a read-only report of a buffer directory — instance id,
//! segments, head, each sink's cursor and lag, damage, and whether a berth holds the lock.
//!
//! Safe while berth runs: this module never takes the buffer's lock, never creates,
//! truncates, renames or deletes a file. It reads segments with the same scanner and the
//! same accounting as recovery ([`super::recover::scan_segment`]), so the damage it reports
//! is what the next `Buffer::open` will find — except that a torn tail is only reported;
//! the daemon truncates it when it next opens the buffer. While berth runs, what looks like
//! a torn tail at the end of the newest segment may be an append still being written.

use super::cursor;
use super::record;
use super::recover::scan_segment;
use super::segment::{parse_segment_name, segment_path, RawEntry};
use super::storage::{DiskStorage, Storage};
use super::BufferError;
use crate::event::EventTime;
use serde::{Serialize, Serializer};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A directory or file of the buffer could not be read.
    #[error("cannot read {}: {}", path.display(), io_message(source))]
    Read { path: PathBuf, source: io::Error },
}

/// An io::Error's message without the " (os error N)" suffix std appends, so errors read
/// like the shell's: `cannot read /x/segments: No such file or directory`.
fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(i)) => s[..i].to_owned(),
        _ => s,
    }
}

/// Whether a process holds `<path>/lock`, i.e. whether berth is running on this buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LockState {
    /// Another open file holds the lock: berth is running.
    Held,
    /// Nobody holds it: berth is not running on this directory.
    Free,
    /// No lock file: no berth has opened this directory yet.
    Absent,
    /// The probe failed (e.g. permission denied on the lock file).
    Unknown { error: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentReport {
    /// File name inside `segments/`.
    pub file: String,
    pub first_offset: u64,
    /// One past the last valid event in the segment (= `first_offset` when it has none).
    pub end_offset: u64,
    pub entries: u64,
    pub events: u64,
    /// File size when scanned.
    pub bytes: u64,
    /// Bytes that formed no valid entry (torn tail excluded).
    pub damaged_bytes: u64,
    /// Events lost to damage: offsets missing before and between this segment's entries,
    /// plus `damaged_events`.
    pub lost_events: u64,
    /// Events inside valid entries whose own CRC failed (readers skip them).
    pub damaged_events: u64,
    /// Bytes after the last valid entry of the newest segment: reported, not repaired.
    pub torn_tail_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkReport {
    pub name: String,
    /// The cursor file's offset; `None` when the file is damaged (berth restarts that sink
    /// at the oldest offset, and the lag is counted from there).
    pub committed: Option<u64>,
    /// `head - committed` (from the oldest offset on disk if the cursor is below it or
    /// damaged), as in `Buffer::stats`.
    pub lag_events: u64,
    /// Time of the first event at or after the committed offset; `None` when the sink is
    /// caught up. Unlike `Buffer::stats`, this does not depend on what was read.
    #[serde(serialize_with = "ser_time")]
    pub oldest_undelivered: Option<EventTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub segments: usize,
    pub entries: u64,
    pub events: u64,
    pub bytes: u64,
    pub damaged_bytes: u64,
    pub lost_events: u64,
    pub damaged_events: u64,
    pub torn_tail_bytes: u64,
    pub damaged_cursors: usize,
}

/// What [`inspect`] found: a snapshot; a running berth may have moved on since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// `None` when `instance-id` is missing or unreadable. Hex in JSON, as in the file:
    /// a u64 does not survive JSON readers that use doubles.
    #[serde(serialize_with = "ser_instance_id")]
    pub instance_id: Option<u64>,
    pub lock: LockState,
    pub segments: Vec<SegmentReport>,
    /// One past the newest event (or past every cursor, whichever is larger), as
    /// recovery computes it.
    pub head: u64,
    /// First offset of the oldest segment (`head` when there is none).
    pub oldest: u64,
    /// Sorted by name.
    pub sinks: Vec<SinkReport>,
    pub totals: Totals,
}

fn ser_instance_id<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&format!("{id:016x}")),
        None => s.serialize_none(),
    }
}

fn ser_time<S: Serializer>(t: &Option<EventTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn rfc3339(t: EventTime) -> String {
    let mut b = Vec::with_capacity(30);
    crate::calendar::write_rfc3339(&mut b, t);
    String::from_utf8_lossy(&b).into_owned()
}

/// Reads the buffer at `path` without changing anything in it.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let storage = DiskStorage::default();
    let segdir = path.join("segments");
    let curdir = path.join("cursors");
    let read_err = |p: &Path| {
        let p = p.to_owned();
        move |source| InspectError::Read { path: p, source }
    };

    let mut names: Vec<u64> = storage
        .list_dir(&segdir)
        .map_err(read_err(&segdir))?
        .iter()
        .filter_map(|p| parse_segment_name(p))
        .collect();
    names.sort_unstable();
    let instance_id = read_instance_id(&storage, path)?;
    let oldest_name = names.first().copied().unwrap_or(0);

    let mut sinks = Vec::new();
    let mut damaged_cursors = 0;
    for p in storage.list_dir(&curdir).map_err(read_err(&curdir))? {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        // Same filter as recovery: `.tmp` files are half-written replacements.
        if name.ends_with(".tmp") || !cursor::valid_sink_name(name) {
            continue;
        }
        let committed = match storage.read_small(&p) {
            Ok(b) => cursor::decode(&b),
            // Removed by `remove_sink` since the listing: the sink is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&p)(e)),
        };
        damaged_cursors += usize::from(committed.is_none());
        sinks.push(SinkReport {
            name: name.to_owned(),
            committed,
            lag_events: 0,
            oldest_undelivered: None,
        });
    }
    sinks.sort_by(|a, b| a.name.cmp(&b.name));

    // Where each sink's undelivered events start: recovery's offset for a damaged cursor.
    let starts: Vec<u64> = sinks.iter().map(|s| s.committed.unwrap_or(oldest_name)).collect();
    let mut times: Vec<Option<EventTime>> = vec![None; sinks.len()];
    let mut on_entry = |e: &RawEntry| {
        let end = e.end_offset();
        if !starts.iter().zip(&times).any(|(&s, t)| t.is_none() && s < end) {
            return;
        }
        // One decode per sink over the whole scan (more only if a body is malformed): entries
        // come in offset order, so the first entry ending past a sink's start holds its
        // oldest undelivered event.
        let Ok(record::Decoded { batch, .. }) = record::decode_body(&e.body, e.version) else {
            return;
        };
        for (&s, t) in starts.iter().zip(times.iter_mut()) {
            if t.is_none() && s < end {
                let i = s.saturating_sub(e.first_offset) as usize;
                *t = batch.events.get(i).map(|ev| ev.time);
            }
        }
    };

    let mut segments = Vec::with_capacity(names.len());
    let mut totals = Totals { damaged_cursors, ..Totals::default() };
    let mut expected = None;
    for (i, &first) in names.iter().enumerate() {
        let p = segment_path(&segdir, first);
        let scan = match scan_segment(
            &storage,
            &p,
            first,
            expected,
            names.get(i + 1).copied(),
            &mut on_entry,
        ) {
            Ok(s) => s,
            // Deleted by the running berth's GC since the listing: every sink had delivered
            // it, and GC deletes oldest first, so skipping it leaves no false gap.
            Err(BufferError::OpenSegment { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(
                BufferError::OpenSegment { path, source }
                | BufferError::ReadSegment { path, source },
            ) => return Err(InspectError::Read { path, source }),
            Err(e) => return Err(InspectError::Read { path: p, source: io::Error::other(e) }),
        };
        expected = Some(scan.next);
        let (damaged_bytes, torn_tail_bytes) = scan.damage(i + 1 == names.len());
        let seg = SegmentReport {
            file: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            first_offset: first,
            end_offset: scan.end.unwrap_or(first),
            entries: scan.entries,
            events: scan.events,
            bytes: scan.len,
            damaged_bytes,
            lost_events: scan.lost_events,
            damaged_events: scan.damaged_events,
            torn_tail_bytes,
        };
        totals.segments += 1;
        totals.entries += seg.entries;
        totals.events += seg.events;
        totals.bytes += seg.bytes;
        totals.damaged_bytes += seg.damaged_bytes;
        totals.lost_events += seg.lost_events;
        totals.damaged_events += seg.damaged_events;
        totals.torn_tail_bytes += seg.torn_tail_bytes;
        segments.push(seg);
    }

    let max_cursor = sinks.iter().filter_map(|s| s.committed).max().unwrap_or(0);
    // As recovery works it out (never below the newest segment's name).
    let newest = segments.last().map_or(0, |s| s.first_offset);
    let head = expected.unwrap_or(0).max(max_cursor).max(newest);
    let oldest = segments.first().map_or(head, |s| s.first_offset.min(head));
    for (s, t) in sinks.iter_mut().zip(times) {
        let from = s.committed.unwrap_or(oldest).max(oldest);
        s.lag_events = head.saturating_sub(from);
        s.oldest_undelivered = if s.lag_events > 0 { t } else { None };
    }
    Ok(Inspection {
        path: path.to_owned(),
        instance_id,
        lock: probe_lock(&path.join("lock")),
        segments,
        head,
        oldest,
        sinks,
        totals,
    })
}

fn read_instance_id(storage: &dyn Storage, dir: &Path) -> Result<Option<u64>, InspectError> {
    let path = dir.join("instance-id");
    match storage.read_small(&path) {
        Ok(b) => Ok(u64::from_str_radix(String::from_utf8_lossy(&b).trim(), 16).ok()),
        // Never created here: that is `Buffer::open`'s job, and this must not write.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InspectError::Read { path, source }),
    }
}

/// Probes the lock with a shared, non-blocking flock on a separate open of the file,
/// released at once. The owner holds it exclusively, so the probe fails without touching
/// it. Only a berth starting during the microseconds the probe holds a free lock could be
/// refused (and would say so and exit); `fcntl(F_GETLK)` cannot see flock locks on Linux.
fn probe_lock(path: &Path) -> LockState {
    use std::os::fd::AsRawFd;
    // Read-only: the lock file is never created or modified here.
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LockState::Absent,
        Err(e) => {
            return LockState::Unknown {
                error: format!("cannot open {}: {}", path.display(), io_message(&e)),
            }
        }
    };
    // SAFETY: flock on a descriptor owned by `f`, which outlives both calls.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above. Closing `f` would release it too; this makes it immediate.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        return LockState::Free;
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        LockState::Held
    } else {
        LockState::Unknown { error: format!("cannot probe {}: {}", path.display(), io_message(&e)) }
    }
}

impl Inspection {
    /// True when the lock is held: berth is running on this buffer.
    pub fn running(&self) -> bool {
        self.lock == LockState::Held
    }

    /// The report as one JSON object and a newline.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }

    /// The report for people.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "buffer       {}", self.path.display())?;
        match self.instance_id {
            Some(id) => writeln!(out, "instance id  {id:016x}")?,
            None => writeln!(out, "instance id  (missing or unreadable)")?,
        }
        let lock = match &self.lock {
            LockState::Held => "held (berth is running)".to_owned(),
            LockState::Free => "free (berth is not running)".to_owned(),
            LockState::Absent => "absent (no berth has opened this buffer)".to_owned(),
            LockState::Unknown { error } => format!("unknown ({error})"),
        };
        writeln!(out, "lock         {lock}")?;
        writeln!(out, "head         {}", self.head)?;
        writeln!(out, "oldest       {}", self.oldest)?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<26} {:>12} {:>12} {:>9} {:>10} {:>12}",
            "SEGMENT", "FIRST", "END", "ENTRIES", "EVENTS", "BYTES"
        )?;
        for s in &self.segments {
            writeln!(
                out,
                "{:<26} {:>12} {:>12} {:>9} {:>10} {:>12}",
                s.file, s.first_offset, s.end_offset, s.entries, s.events, s.bytes
            )?;
            if s.damaged_bytes > 0 || s.lost_events > 0 {
                write!(out, "  damaged: {} bytes, {} events lost", s.damaged_bytes, s.lost_events)?;
                if s.damaged_events > 0 {
                    write!(out, " ({} of them damaged events in valid entries)", s.damaged_events)?;
                }
                writeln!(out)?;
            }
            if s.torn_tail_bytes > 0 {
                let why = if self.running() {
                    "an append in progress, or a torn write"
                } else {
                    "a torn write"
                };
                writeln!(
                    out,
                    "  torn tail: {} bytes after the last valid entry ({why}; not repaired here)",
                    s.torn_tail_bytes
                )?;
            }
        }
        writeln!(out)?;
        writeln!(out, "{:<26} {:>12} {:>12}  OLDEST UNDELIVERED", "SINK", "COMMITTED", "LAG")?;
        for s in &self.sinks {
            let committed = s.committed.map_or_else(|| "damaged".to_owned(), |c| c.to_string());
            let oldest = s.oldest_undelivered.map_or_else(|| "-".to_owned(), rfc3339);
            writeln!(out, "{:<26} {:>12} {:>12}  {oldest}", s.name, committed, s.lag_events)?;
        }
        let t = &self.totals;
        writeln!(out)?;
        writeln!(
            out,
            "total: {} segments, {} entries, {} events, {} bytes",
            t.segments, t.entries, t.events, t.bytes
        )?;
        if t.damaged_bytes > 0
            || t.lost_events > 0
            || t.torn_tail_bytes > 0
            || t.damaged_cursors > 0
        {
            writeln!(
                out,
                "damage: {} bytes, {} events lost ({} damaged events in valid entries), {} torn tail bytes, {} damaged cursors",
                t.damaged_bytes, t.lost_events, t.damaged_events, t.torn_tail_bytes, t.damaged_cursors
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{Buffer, BufferOptions};
    use crate::event::{Batch, Event, Tag};
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use tempfile::TempDir;

    /// Event `i` of every batch has time 1_700_000_000 + i s, 5 ns.
    fn batch(n: usize, fill: u8) -> Batch {
        let events = (0..n)
            .map(|i| Event {
                time: EventTime::new(1_700_000_000 + i as i64, 5),
                record: Bytes::from(vec![fill; 20 + i]),
                metadata: Bytes::new(),
            })
            .collect();
        Batch { tag: Tag::from_static("app"), events }
    }

    fn opts(dir: &TempDir) -> BufferOptions {
        let mut o = BufferOptions::new(dir.path().join("buf"));
        o.max_size = 1 << 20;
        o.segment_size = 4 << 10;
        o
    }

    /// 20 entries of 10 events (offsets 0..200) over several segments.
    async fn filled(o: &BufferOptions) -> Buffer {
        let (buf, _) = Buffer::open(o.clone()).unwrap();
        for i in 0..20 {
            buf.append(&batch(10, i)).await.unwrap();
        }
        buf
    }

    /// Every file under `dir` with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn segment_files(o: &BufferOptions) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(o.path.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| parse_segment_name(p).is_some())
            .collect();
        v.sort();
        v
    }

    fn text(i: &Inspection) -> String {
        let mut out = Vec::new();
        i.write_text(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn json(i: &Inspection) -> serde_json::Value {
        let mut out = Vec::new();
        i.write_json(&mut out).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[tokio::test]
    async fn reports_a_running_buffer_and_agrees_with_its_stats() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(&dir);
        let buf = filled(&o).await;
        let es = buf.reader("es").unwrap();
        let _cw = buf.reader("cw").unwrap();
        es.ack(0, 10).unwrap();
        es.ack(10, 3).unwrap();
        let before = snapshot(&o.path);

        let i = inspect(&o.path).unwrap();
        assert_eq!(i.lock, LockState::Held, "the open Buffer holds the lock");
        assert!(i.running());
        assert_eq!(i.instance_id, Some(buf.instance_id()));
        assert_eq!((i.head, i.oldest), (buf.head(), 0));
        assert_eq!(i.head, 200);
        let files = segment_files(&o);
        assert!(files.len() > 2, "{} segments", files.len());
        assert_eq!(i.segments.len(), files.len());
        let mut next = 0;
        for (s, f) in i.segments.iter().zip(&files) {
            assert_eq!(Path::new(&s.file), f.file_name().unwrap());
            assert_eq!(s.first_offset, next);
            assert_eq!(s.end_offset - s.first_offset, s.events);
            // The active segment, written with direct I/O, ends in its last block's
            // padding: not counted.
            let size = std::fs::metadata(f).unwrap().len();
            let block = crate::buffer::storage::DIRECT_BLOCK as u64;
            assert!(size == s.bytes || (size % block == 0 && size - s.bytes < block), "{size}");
            assert_eq!((s.damaged_bytes, s.lost_events, s.torn_tail_bytes), (0, 0, 0));
            next = s.end_offset;
        }
        let t = &i.totals;
        assert_eq!((t.segments, t.entries, t.events), (files.len(), 20, 200));
        assert_eq!(t.bytes, i.segments.iter().map(|s| s.bytes).sum::<u64>());

        let stats = buf.stats();
        let got: Vec<_> =
            i.sinks.iter().map(|s| (s.name.as_str(), s.committed, s.lag_events)).collect();
        let want: Vec<_> = stats
            .sinks
            .iter()
            .map(|s| (s.name.as_str(), Some(s.committed), s.lag_events))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got, vec![("cw", Some(0), 200), ("es", Some(13), 187)]);
        assert_eq!(i.sinks[0].oldest_undelivered, Some(EventTime::new(1_700_000_000, 5)));
        // Offset 13 is event 3 of the second entry.
        assert_eq!(i.sinks[1].oldest_undelivered, Some(EventTime::new(1_700_000_003, 5)));

        let j = json(&i);
        assert_eq!(j["lock"]["state"], "held");
        assert_eq!(j["instance_id"], format!("{:016x}", buf.instance_id()));
        assert_eq!(j["head"], 200);
        assert_eq!(j["sinks"][1]["name"], "es");
        assert_eq!(j["sinks"][1]["committed"], 13);
        assert_eq!(j["sinks"][1]["lag_events"], 187);
        assert_eq!(j["sinks"][1]["oldest_undelivered"], "2023-11-14T22:13:23.000000005Z");
        assert_eq!(j["segments"].as_array().unwrap().len(), files.len());
        assert_eq!(j["totals"]["events"], 200);
        let txt = text(&i);
        assert!(txt.contains("lock         held (berth is running)"), "{txt}");
        assert!(txt.contains(&format!("instance id  {:016x}", buf.instance_id())), "{txt}");
        assert!(txt.contains("2023-11-14T22:13:23.000000005Z"), "{txt}");
        assert!(!txt.contains("damage"), "{txt}");

        assert_eq!(snapshot(&o.path), before, "inspect changed the buffer");
        // The owner is undisturbed: it still appends, and its lock still keeps others out.
        assert_eq!(buf.append(&batch(1, 1)).await.unwrap(), 200..201);
        assert!(Buffer::open(o.clone()).is_err());
        buf.close().await.unwrap();
        drop((es, _cw, buf));

        let i = inspect(&o.path).unwrap();
        assert_eq!(i.lock, LockState::Free);
        assert_eq!(i.head, 201);
        assert_eq!(json(&i)["lock"]["state"], "free");
        assert!(text(&i).contains("free (berth is not running)"));
        // Nobody kept the lock: the daemon can start.
        Buffer::open(o).unwrap();
    }

    #[tokio::test]
    async fn damage_and_a_torn_tail_are_reported_not_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(&dir);
        let buf = filled(&o).await;
        buf.reader("es").unwrap().ack(0, 5).unwrap();
        buf.close().await.unwrap();
        drop(buf);

        let files = segment_files(&o);
        assert!(files.len() > 2);
        // The first (sealed) segment: in its second entry (offsets 10..20) a flipped record
        // byte, which loses that event; in its third (20..30) a flipped offset byte, which
        // loses the entry.
        let len0 = record::entry_len(&batch(10, 0), 0) as u64;
        let len1 = record::entry_len(&batch(10, 1), 0) as u64;
        let len2 = record::entry_len(&batch(10, 2), 0) as u64;
        let mut bytes = std::fs::read(&files[0]).unwrap();
        bytes[len0 as usize + 60] ^= 0x40;
        bytes[(len0 + len1) as usize + record::HEADER_LEN + 1] ^= 0x40;
        std::fs::write(&files[0], &bytes).unwrap();
        // A torn append at the end of the newest segment.
        let mut torn = record::encode(&batch(2, 9)).unwrap();
        record::seal(&mut torn, 200);
        let torn_len = torn.len() as u64 - 3;
        let last = files.last().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&torn[..torn_len as usize]).unwrap();
        drop(f);
        let before = snapshot(&o.path);

        let i = inspect(&o.path).unwrap();
        assert_eq!(snapshot(&o.path), before, "inspect changed the buffer");
        assert_eq!(i.lock, LockState::Free);
        let first = &i.segments[0];
        assert_eq!(
            (first.damaged_bytes, first.lost_events, first.damaged_events, first.torn_tail_bytes),
            (len2, 11, 1, 0)
        );
        assert_eq!(first.events, first.entries * 10 - 1);
        let newest = i.segments.last().unwrap();
        assert_eq!(
            (
                newest.damaged_bytes,
                newest.lost_events,
                newest.damaged_events,
                newest.torn_tail_bytes
            ),
            (0, 0, 0, torn_len)
        );
        assert_eq!(newest.bytes, std::fs::metadata(last).unwrap().len());
        let t = &i.totals;
        assert_eq!(
            (
                t.entries,
                t.events,
                t.damaged_bytes,
                t.lost_events,
                t.damaged_events,
                t.torn_tail_bytes
            ),
            (19, 189, len2, 11, 1, torn_len)
        );
        assert_eq!(i.head, 200);
        assert_eq!((i.sinks[0].committed, i.sinks[0].lag_events), (Some(5), 195));
        assert_eq!(i.sinks[0].oldest_undelivered, Some(EventTime::new(1_700_000_005, 5)));
        let txt = text(&i);
        assert!(
            txt.contains(&format!("  damaged: {len2} bytes, 11 events lost (1 of them damaged events in valid entries)")),
            "{txt}"
        );
        assert!(
            txt.contains(&format!(
                "  torn tail: {torn_len} bytes after the last valid entry (a torn write;"
            )),
            "{txt}"
        );
        let j = json(&i);
        assert_eq!(j["totals"]["torn_tail_bytes"], torn_len);
        assert_eq!(j["segments"][0]["lost_events"], 11);
        assert_eq!(j["segments"][0]["damaged_events"], 1);

        // Recovery, which shares the scan, finds the same and only then repairs.
        let (_buf, report) = Buffer::open(o).unwrap();
        assert_eq!(
            (
                report.entries,
                report.events,
                report.corrupt_bytes,
                report.lost_events,
                report.damaged_events,
                report.truncated_bytes
            ),
            (
                t.entries,
                t.events,
                t.damaged_bytes,
                t.lost_events,
                t.damaged_events,
                t.torn_tail_bytes
            )
        );
        assert_eq!(report.segments, t.segments);
    }

    #[tokio::test]
    async fn damaged_cursors_and_a_fresh_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(&dir);
        let (buf, _) = Buffer::open(o.clone()).unwrap();
        buf.close().await.unwrap();
        drop(buf);
        let i = inspect(&o.path).unwrap();
        assert_eq!((i.head, i.oldest, i.segments.len(), i.sinks.len()), (0, 0, 1, 0));
        assert_eq!(i.totals, Totals { segments: 1, ..Totals::default() });

        let buf = filled(&o).await;
        buf.close().await.unwrap();
        drop(buf);
        std::fs::write(o.path.join("cursors/bad"), b"garbage").unwrap();
        std::fs::write(o.path.join("cursors/es.tmp"), cursor::encode(7)).unwrap();
        std::fs::write(o.path.join("cursors/es"), cursor::encode(200)).unwrap();
        let i = inspect(&o.path).unwrap();
        let got: Vec<_> =
            i.sinks.iter().map(|s| (s.name.as_str(), s.committed, s.lag_events)).collect();
        assert_eq!(got, vec![("bad", None, 200), ("es", Some(200), 0)]);
        assert_eq!(i.sinks[0].oldest_undelivered, Some(EventTime::new(1_700_000_000, 5)));
        assert_eq!(i.sinks[1].oldest_undelivered, None);
        assert_eq!(i.totals.damaged_cursors, 1);
        assert_eq!(json(&i)["sinks"][0]["committed"], serde_json::Value::Null);
        assert!(text(&i).contains("damaged"));
    }

    #[test]
    fn a_directory_berth_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("segments")).unwrap();
        std::fs::create_dir_all(dir.path().join("cursors")).unwrap();
        let i = inspect(dir.path()).unwrap();
        assert_eq!((i.lock.clone(), i.instance_id, i.head), (LockState::Absent, None, 0));
        assert!(!dir.path().join("lock").exists() && !dir.path().join("instance-id").exists());
        assert_eq!(json(&i)["lock"]["state"], "absent");
        assert_eq!(json(&i)["instance_id"], serde_json::Value::Null);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let e = inspect(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read {}/segments: No such file or directory", p.display())
        );
        assert!(!p.exists(), "inspect created the directory");
        std::fs::create_dir_all(p.join("segments")).unwrap();
        let e = inspect(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read {}/cursors: No such file or directory", p.display())
        );
    }
}
