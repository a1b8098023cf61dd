//! The log's newest entries, kept in memory for the readers that keep up.
//!
//! Without it, every sink reads back what the writer has just written: a `spawn_blocking`
//! hop per read, a `pread` that copies the entry out of the page cache, and the header and
//! event CRCs checked again. A sink at the head of the log (the usual case: sinks keep up)
//! then costs about as much CPU as the write itself. The writer hands each entry it has
//! made durable to this tail instead of dropping it; a reader whose next offset is in the
//! tail takes the entry from here — one `Bytes` clone — and only a reader that fell
//! further behind goes to the segment files.
//!
//! What is here is exactly what was written (the same bytes, moved here after a successful
//! write and fsync), so the CRCs, which guard against damage on disk, are not checked
//! again. Readers still see nothing past the durable head: the tail may hold, with
//! `sync = "never"`, entries written and not yet fsynced, and a reader takes an entry only
//! when it ends at or below the head it was shown.
//!
//! Bounded by bytes (`BufferOptions::tail_bytes`, [`TAIL_BYTES`] by default): the oldest
//! entries go first; one entry larger than the bound is not kept at all.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Bytes of entries kept. Sinks that keep up read within a group commit or two of the head
/// (a group is what the connections sent during one fsync: ~2 MiB for 8 connections sending
/// 1,000-record requests); a sink that is behind by more reads the segment files as before.
pub const TAIL_BYTES: usize = 8 << 20;

/// One durable entry, header included, as written at `pos` in the segment `seg`.
#[derive(Clone, Debug)]
pub struct TailEntry {
    pub first: u64,
    pub count: u32,
    /// The segment (its first offset) and byte position the entry was written at, so that
    /// a reader leaving the tail resumes reading the file just after it.
    pub seg: u64,
    pub pos: u64,
    pub entry: Bytes,
}

impl TailEntry {
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }
}

pub struct Tail {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// In offset order and dense: the writer assigns offsets one after the other, and a
    /// failed write (never pushed) gives its offsets to the next one.
    entries: VecDeque<TailEntry>,
    bytes: usize,
}

impl Tail {
    pub fn new(max_bytes: usize) -> Tail {
        Tail { max_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds entries the writer has just made durable, in offset order after every entry
    /// already here, and drops the oldest past the bound.
    pub fn push(&self, new: impl IntoIterator<Item = TailEntry>) {
        let mut dropped = Vec::new();
        {
            let mut t = self.inner();
            for e in new {
                if e.entry.len() > self.max_bytes {
                    // Too large to keep: and every entry before it is older, so a reader
                    // reaching it would find the tail useless anyway.
                    t.bytes = 0;
                    dropped.extend(t.entries.drain(..));
                    continue;
                }
                debug_assert!(t.entries.back().is_none_or(|b| b.end() <= e.first));
                t.bytes += e.entry.len();
                t.entries.push_back(e);
                while t.bytes > self.max_bytes {
                    let Some(old) = t.entries.pop_front() else { break };
                    t.bytes -= old.entry.len();
                    dropped.push(old);
                }
            }
        }
        // Freed outside the lock: readers are not held up by the allocator.
        drop(dropped);
    }

    /// The entry holding `offset`, if it is here and ends at or below `head`.
    pub fn get(&self, offset: u64, head: u64) -> Option<TailEntry> {
        let t = self.inner();
        // The last entry starting at or before `offset`.
        let i = t.entries.partition_point(|e| e.first <= offset).checked_sub(1)?;
        let e = &t.entries[i];
        (offset < e.end() && e.end() <= head).then(|| e.clone())
    }

    #[cfg(test)]
    fn offsets(&self) -> Vec<(u64, u32)> {
        self.inner().entries.iter().map(|e| (e.first, e.count)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(first: u64, count: u32, len: usize) -> TailEntry {
        TailEntry { first, count, seg: 0, pos: first * 10, entry: Bytes::from(vec![0u8; len]) }
    }

    #[test]
    fn drops_the_oldest_past_the_bound() {
        let t = Tail::new(100);
        t.push([e(0, 2, 40), e(2, 3, 40)]);
        assert_eq!(t.offsets(), vec![(0, 2), (2, 3)]);
        t.push([e(5, 1, 40)]);
        assert_eq!(t.offsets(), vec![(2, 3), (5, 1)]);
        // Larger than the bound: kept by nobody, and what is older goes with it.
        t.push([e(6, 1, 101)]);
        assert_eq!(t.offsets(), vec![]);
        t.push([e(7, 1, 100)]);
        assert_eq!(t.offsets(), vec![(7, 1)]);
    }

    #[test]
    fn get_finds_the_entry_holding_an_offset_below_the_head() {
        let t = Tail::new(1000);
        t.push([e(10, 5, 10), e(15, 5, 10), e(20, 2, 10)]);
        let first = |o, head| t.get(o, head).map(|e| e.first);
        // (offset, head, entry)
        let table: &[(u64, u64, Option<u64>)] = &[
            (9, 100, None),      // older than the tail: read the files
            (10, 100, Some(10)), // its first offset
            (14, 100, Some(10)), // its last
            (15, 100, Some(15)),
            (21, 100, Some(20)),
            (22, 100, None), // past the newest
            (15, 19, None),  // not durable yet (sync = "never")
            (15, 20, Some(15)),
        ];
        for &(offset, head, want) in table {
            assert_eq!(first(offset, head), want, "offset {offset} head {head}");
        }
    }
}
