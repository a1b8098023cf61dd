//! Per-sink cursors: the committed offset ("every event below it was delivered"), the
//! acknowledged ranges above it, and the file that keeps it.
//!
//! File: `magic u32 | offset u64 | crc32c(magic, offset) u32`. Created by writing
//! `<name>.tmp` and renaming it over `<name>`; each advance then overwrites the 16 bytes in
//! place. One 16-byte `pwrite` cannot be half done when the process is killed, and it lies
//! within one disk sector for a host crash; the CRC turns any damage into "nothing delivered"
//! (redelivery, never loss). In place rather than rename per advance: a sink that acks
//! every small batch would otherwise create and rename a file per batch.

use super::storage::Storage;
use super::BufferError;
use crate::event::EventTime;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const MAGIC: u32 = 0xB1E7_C0F1;
const LEN: usize = 16;

/// Sink names become file names: keep them to a safe alphabet.
pub fn valid_sink_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.ends_with(".tmp")
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn encode(offset: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || b[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[12..16]);
    if crc32c::crc32c(&b[0..12]) != u32::from_le_bytes(crc) {
        return None;
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[4..12]);
    Some(u64::from_le_bytes(o))
}

/// Acknowledged ranges folded into a committed offset.
#[derive(Debug, Default)]
pub struct AckSet {
    committed: u64,
    /// start → end of acknowledged ranges above `committed`, possibly overlapping.
    above: BTreeMap<u64, u64>,
}

impl AckSet {
    pub fn new(committed: u64) -> Self {
        AckSet { committed, above: BTreeMap::new() }
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Records `[first, first+count)` and returns the new committed offset if it moved.
    pub fn ack(&mut self, first: u64, count: u64) -> Option<u64> {
        let end = first.saturating_add(count);
        if count == 0 || end <= self.committed {
            return None;
        }
        let e = self.above.entry(first).or_insert(end);
        *e = (*e).max(end);
        let before = self.committed;
        while let Some((&start, &end)) = self.above.first_key_value() {
            if start > self.committed {
                break;
            }
            self.above.remove(&start);
            self.committed = self.committed.max(end);
        }
        (self.committed > before).then_some(self.committed)
    }

    /// Ranges held above the committed offset (memory is proportional to this).
    pub fn pending_ranges(&self) -> usize {
        self.above.len()
    }
}

struct State {
    acks: AckSet,
    /// Bumped by every file write; `synced` is the generation last fsynced.
    written: u64,
    synced: u64,
    /// end offset → time of the first event of entries handed out and not yet passed by
    /// the committed offset: gives the age of the oldest undelivered event.
    in_flight: BTreeMap<u64, EventTime>,
}

pub struct SinkCursor {
    pub name: String,
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    committed: AtomicU64,
    /// A reader is open for this sink.
    pub attached: AtomicBool,
}

impl SinkCursor {
    pub fn new(dir: &Path, name: &str, committed: u64, storage: Arc<dyn Storage>) -> Self {
        SinkCursor {
            name: name.to_owned(),
            path: dir.join(name),
            tmp: dir.join(format!("{name}.tmp")),
            dir: dir.to_owned(),
            storage,
            state: Mutex::new(State {
                acks: AckSet::new(committed),
                written: 0,
                synced: 0,
                in_flight: BTreeMap::new(),
            }),
            committed: AtomicU64::new(committed),
            attached: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock left plain integers behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Records an acknowledged range; when the committed offset advances, the file is
    /// overwritten in place at once (no fsync: that survives a killed process; the periodic
    /// [`SinkCursor::sync`] makes it survive a host crash). Returns the new committed offset.
    pub fn ack(&self, first: u64, count: u64) -> Result<Option<u64>, BufferError> {
        let mut st = self.lock();
        let Some(c) = st.acks.ack(first, count) else { return Ok(None) };
        self.committed.store(c, Ordering::Release);
        while let Some((&end, _)) = st.in_flight.first_key_value() {
            if end > c {
                break;
            }
            st.in_flight.remove(&end);
        }
        st.written += 1;
        self.storage
            .overwrite(&self.path, &encode(c))
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    self.write_file(c, false)
                } else {
                    Err(e)
                }
            })
            .map_err(|source| BufferError::WriteCursor { path: self.path.clone(), source })?;
        Ok(Some(c))
    }

    /// Creates the file at open (fsynced) so a sink's existence holds segments back.
    pub fn create(&self) -> Result<(), BufferError> {
        let _st = self.lock();
        self.write(self.committed(), true)?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|source| BufferError::SyncDir { path: self.dir.clone(), source })
    }

    fn write(&self, offset: u64, sync: bool) -> Result<(), BufferError> {
        self.write_file(offset, sync)
            .map_err(|source| BufferError::WriteCursor { path: self.path.clone(), source })
    }

    /// Replaces the file whole: temp file, then rename.
    fn write_file(&self, offset: u64, sync: bool) -> std::io::Result<()> {
        self.storage
            .write_file(&self.tmp, &encode(offset), sync)
            .and_then(|_| self.storage.rename(&self.tmp, &self.path))
    }

    /// fsyncs the file and the directory if it changed since the last call.
    pub fn sync(&self) -> Result<(), BufferError> {
        let mut st = self.lock();
        if st.synced == st.written {
            return Ok(());
        }
        // Under the lock, so no rename swaps the file between the two fsyncs.
        self.storage
            .sync_file(&self.path)
            .and_then(|_| self.storage.sync_dir(&self.dir))
            .map_err(|source| BufferError::WriteCursor { path: self.path.clone(), source })?;
        st.synced = st.written;
        Ok(())
    }

    pub fn note_in_flight(&self, end: u64, time: EventTime) {
        let mut st = self.lock();
        if end > self.committed() {
            st.in_flight.entry(end).or_insert(time);
        }
    }

    pub fn oldest_in_flight(&self) -> Option<EventTime> {
        self.lock().in_flight.first_key_value().map(|(_, t)| *t)
    }

    pub fn pending_ranges(&self) -> usize {
        self.lock().acks.pending_ranges()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_prefix_only() {
        let mut a = AckSet::new(10);
        assert_eq!(a.ack(15, 5), None);
        assert_eq!(a.ack(12, 2), None);
        assert_eq!(a.ack(5, 5), None); // below committed
        assert_eq!(a.ack(10, 2), Some(14));
        assert_eq!(a.ack(14, 1), Some(20));
        assert_eq!(a.pending_ranges(), 0);
        assert_eq!(a.ack(18, 10), Some(28)); // overlapping the committed offset
        assert_eq!(a.ack(28, 0), None);
    }

    #[test]
    fn file_format_checks_itself() {
        let b = encode(0x1234_5678_9abc);
        assert_eq!(decode(&b), Some(0x1234_5678_9abc));
        let mut bad = b;
        bad[5] ^= 1;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&b[..15]), None);
    }

    #[test]
    fn sink_names() {
        assert!(valid_sink_name("es-main_1.a"));
        for bad in ["", ".", "..", "a/b", "a b", "x.tmp", "é"] {
            assert!(!valid_sink_name(bad), "{bad}");
        }
    }
}
