use super::*;
use crate::event::{Event, EventTime, Tag};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use tempfile::TempDir;

fn batch(tag: &'static str, n: usize, fill: u8) -> Batch {
    let events = (0..n)
        .map(|i| Event {
            time: EventTime::new(1_700_000_000 + i as i64, 5),
            record: Bytes::from(vec![fill; 20 + i]),
            metadata: if i % 2 == 0 { Bytes::new() } else { Bytes::from_static(&[0x80]) },
        })
        .collect();
    Batch { tag: Tag::from_static(tag), events }
}

fn opts(dir: &TempDir) -> BufferOptions {
    let mut o = BufferOptions::new(dir.path().join("buf"));
    o.max_size = 1 << 20;
    o.segment_size = 4 << 10;
    o
}

/// Polls a condition the writer thread makes true, with a deadline (no blind sleeps).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_all(r: &mut Reader) -> Vec<ReadBatch> {
    let mut out = vec![];
    while let Some(rb) = r.try_next(usize::MAX, usize::MAX).await.unwrap() {
        out.push(rb);
    }
    out
}

fn segment_files(o: &BufferOptions) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(o.path.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| segment::parse_segment_name(p).is_some())
        .collect();
    v.sort();
    v
}

/// A buffer on `FaultyStorage`, and its faults and counters.
fn open_faulty(o: BufferOptions) -> (Buffer, Arc<storage::Faults>) {
    let fs = FaultyStorage::new();
    let faults = Arc::clone(&fs.faults);
    let (buf, _) = Buffer::open_with_storage(o, Arc::new(fs)).unwrap();
    (buf, faults)
}

#[tokio::test]
async fn appends_come_back_in_order_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, report) = Buffer::open(opts(&dir)).unwrap();
    assert_eq!(report, RecoveryReport::default());
    let mut r = buf.reader("es").unwrap();
    let b1 = batch("a", 3, 1);
    let b2 = batch("b", 2, 2);
    assert_eq!(buf.append(&b1).await.unwrap(), 0..3);
    assert_eq!(buf.append(&b2).await.unwrap(), 3..5);
    assert_eq!(buf.append(&batch("c", 0, 0)).await.unwrap(), 5..5);
    let got = read_all(&mut r).await;
    assert_eq!(
        got,
        vec![ReadBatch { first_offset: 0, batch: b1 }, ReadBatch { first_offset: 3, batch: b2 }]
    );
    assert_eq!(buf.stats().sinks[0].lag_events, 5);
    r.ack(3, 2).unwrap();
    assert_eq!(r.committed(), 0);
    assert!(buf.stats().sinks[0].oldest_undelivered.is_some());
    r.ack(0, 3).unwrap();
    assert_eq!(r.committed(), 5);
    assert!(buf.delivered_all());
    assert_eq!(buf.stats().sinks[0].lag_events, 0);
    assert_eq!(buf.stats().sinks[0].oldest_undelivered, None);
    assert!(matches!(buf.reader("es"), Err(BufferError::ReaderExists(_))));
    assert!(matches!(buf.reader("a/b"), Err(BufferError::SinkName(_))));
    buf.close().await.unwrap();
    assert!(matches!(buf.append(&batch("a", 1, 1)).await, Err(BufferError::Closed)));
}

#[tokio::test]
async fn reads_split_by_events_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(opts(&dir)).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 5, 1)).await.unwrap();
    let a = r.try_next(2, usize::MAX).await.unwrap().unwrap();
    assert_eq!((a.first_offset, a.batch.len()), (0, 2));
    // 22 + 23 bytes > 30: only one event, but always at least one.
    let b = r.try_next(10, 30).await.unwrap().unwrap();
    assert_eq!((b.first_offset, b.batch.len()), (2, 1));
    let c = r.try_next(10, 0).await.unwrap().unwrap();
    assert_eq!((c.first_offset, c.batch.len()), (3, 1));
    let d = r.try_next(10, usize::MAX).await.unwrap().unwrap();
    assert_eq!((d.first_offset, d.batch.len()), (4, 1));
    assert!(r.try_next(10, usize::MAX).await.unwrap().is_none());
}

#[tokio::test]
async fn reader_waits_for_appends_and_ends_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(opts(&dir)).unwrap();
    let mut r = buf.reader("s").unwrap();
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Some(rb) = r.next(100, usize::MAX).await.unwrap() {
            n += rb.batch.len();
            r.ack(rb.first_offset, rb.batch.len() as u64).unwrap();
        }
        n
    });
    for _ in 0..10 {
        buf.append(&batch("a", 3, 1)).await.unwrap();
    }
    buf.close().await.unwrap();
    assert_eq!(task.await.unwrap(), 30);
}

#[tokio::test]
async fn reopen_resumes_at_the_cursor_and_keeps_the_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    let id = buf.instance_id();
    let mut r = buf.reader("s").unwrap();
    for i in 0..20 {
        buf.append(&batch("a", 10, i)).await.unwrap();
    }
    let first = r.try_next(usize::MAX, usize::MAX).await.unwrap().unwrap();
    r.ack(first.first_offset, 10).unwrap();
    r.ack(15, 5).unwrap(); // from the second entry, out of order: does not move the cursor
                           // No close: the writer stops as if killed (cursor was renamed, not fsynced).
    drop(r);
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(buf.instance_id(), id);
    assert_eq!((report.entries, report.events, report.lost_events), (20, 200, 0));
    assert!(report.segments > 1);
    assert_eq!(buf.head(), 200);
    let mut r = buf.reader("s").unwrap();
    assert_eq!(r.position(), 10);
    let all = read_all(&mut r).await;
    assert_eq!(all.len(), 19);
    assert_eq!(all[0].first_offset, 10);
    assert_eq!(all[0].batch.events[0].record[0], 1);
    assert_eq!(buf.append(&batch("a", 1, 1)).await.unwrap(), 200..201);
}

#[tokio::test]
async fn torn_tail_is_truncated_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    for _ in 0..3 {
        buf.append(&batch("a", 2, 1)).await.unwrap();
    }
    drop(buf);
    let last = segment_files(&o).pop().unwrap();
    let before = std::fs::metadata(&last).unwrap().len();
    let mut torn = record::encode(&batch("a", 2, 9)).unwrap();
    record::seal(&mut torn, 6);
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, &torn[..torn.len() - 3]).unwrap();
    drop(f);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(report.truncated_bytes, torn.len() as u64 - 3);
    assert_eq!((report.events, report.lost_events, report.corrupt_bytes), (6, 0, 0));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), before);
    assert_eq!(buf.append(&batch("a", 1, 1)).await.unwrap(), 6..7);
    let mut r = buf.reader("s").unwrap();
    let got: Vec<u64> = read_all(&mut r).await.iter().map(|b| b.first_offset).collect();
    assert_eq!(got, vec![0, 2, 4, 6]);
}

/// A host that went down while segments were open with direct I/O leaves them padded with
/// zeros to a block end: recovery cuts the padding off without calling it damage or a torn
/// write, in the active segment and in a sealed one alike.
#[tokio::test]
async fn direct_io_padding_is_neither_damage_nor_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    for i in 0..60 {
        buf.append(&batch("a", 4, i)).await.unwrap();
    }
    drop(buf);
    let files = segment_files(&o);
    assert!(files.len() > 2);
    let block = storage::DIRECT_BLOCK as u64;
    let mut lens = vec![];
    for f in [&files[0], files.last().unwrap()] {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len % block != 0, "the test needs a partial last block");
        std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(len.next_multiple_of(block))
            .unwrap();
        lens.push(len);
    }
    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!((report.corrupt_bytes, report.truncated_bytes, report.lost_events), (0, 0, 0));
    assert_eq!((report.entries, report.events), (60, 240));
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), lens[0], "sealed: cut");
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    assert_eq!(got.iter().map(|b| b.batch.len()).sum::<usize>(), 240);
    // And appends go on after the last entry, not after the padding.
    buf.append(&batch("a", 4, 60)).await.unwrap();
    assert_eq!(read_all(&mut r).await.len(), 1);
    buf.close().await.unwrap();
    drop(buf);
    let (_, report) = Buffer::open(o).unwrap();
    assert_eq!((report.corrupt_bytes, report.truncated_bytes, report.events), (0, 0, 244));
}

/// Options for a buffer whose entries all fit in one segment.
fn one_segment(dir: &TempDir) -> BufferOptions {
    let mut o = opts(dir);
    o.segment_size = 1 << 20;
    o.max_size = 4 << 20;
    o
}

/// Appends `n` entries of 4 events (entry `i` filled with `i`), closes the buffer, then lets
/// `damage` change the newest segment's bytes, given where each entry starts (and where
/// the last ends). Returns those positions.
async fn damaged_after(
    o: &BufferOptions,
    n: u8,
    damage: impl FnOnce(&[u64], &mut Vec<u8>),
) -> Vec<u64> {
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    let mut positions = vec![0u64];
    for i in 0..n {
        buf.append(&batch("a", 4, i)).await.unwrap();
        positions.push(buf.stats().total_bytes);
    }
    drop(buf);
    let seg = segment_files(o).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    damage(&positions, &mut bytes);
    std::fs::write(&seg, &bytes).unwrap();
    positions
}

#[tokio::test]
async fn damaged_entries_in_the_middle_are_skipped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let o = one_segment(&dir);
    let positions = damaged_after(&o, 10, |positions, bytes| {
        // Entry 3 (offsets 12..16): a flipped byte in its first record (that event's CRC).
        // Entry 6 (24..28): a flipped magic byte (the whole entry).
        bytes[positions[3] as usize + 60] ^= 0x40;
        bytes[positions[6] as usize] ^= 0x01;
    })
    .await;
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(report.entries, 9);
    assert_eq!((report.events, report.lost_events, report.damaged_events), (35, 5, 1));
    assert_eq!(report.corrupt_bytes, positions[7] - positions[6]);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(buf.head(), 40);
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    let firsts: Vec<u64> = got.iter().map(|b| b.first_offset).collect();
    assert_eq!(firsts, vec![0, 4, 8, 12, 16, 20, 28, 32, 36]);
    let damaged = &got[3].batch;
    assert!(damaged.events[0].is_tombstone());
    assert_eq!(damaged.events[0].time, damaged.events[1].time, "a neighbour's time");
    assert_eq!(&damaged.events[1..], &batch("a", 4, 3).events[1..]);
    assert!(got.iter().all(|b| b.batch.events[1].record[0] == (b.first_offset / 4) as u8));
    for b in &got {
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    // The reader acknowledged the lost offsets itself: the cursor is not stuck.
    assert_eq!(r.committed(), 40);
}

#[tokio::test]
async fn segments_are_deleted_only_when_every_sink_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    let mut fast = buf.reader("fast").unwrap();
    let mut slow = buf.reader("slow").unwrap();
    for i in 0..100 {
        buf.append(&batch("a", 5, i)).await.unwrap();
    }
    let segs = buf.stats().segments;
    assert!(segs > 3, "{segs}");
    for b in read_all(&mut fast).await {
        fast.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    assert_eq!(fast.committed(), 500);
    // The slow sink holds every segment; the fast one still reads at full speed.
    buf.append(&batch("a", 1, 1)).await.unwrap();
    assert_eq!(read_all(&mut fast).await.len(), 1);
    assert_eq!(buf.stats().segments, segs);
    assert_eq!(segment_files(&o).len(), segs);
    let first = slow.try_next(usize::MAX, usize::MAX).await.unwrap().unwrap();
    slow.ack(first.first_offset, 5).unwrap();
    for b in read_all(&mut slow).await {
        slow.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    fast.ack(500, 1).unwrap();
    eventually("segments deleted", || buf.stats().segments == 1).await;
    assert_eq!(segment_files(&o).len(), 1);
    let st = buf.stats();
    assert_eq!(st.head, 501);
    assert_eq!(st.total_events, 501 - st.oldest);
    assert!(st.total_bytes < o.segment_size + 1024);
}

#[tokio::test]
async fn drop_newest_refuses_at_max_size_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.max_size = 16 << 10;
    o.when_full = WhenFull::DropNewest;
    let (buf, _) = Buffer::open(o).unwrap();
    buf.reader("s").unwrap();
    let mut ok = 0;
    let err = loop {
        match buf.append(&batch("a", 10, 1)).await {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, BufferError::Full { .. }), "{err}");
    assert!(ok > 10);
    assert_eq!(buf.stats().dropped_full, 10);
    assert!(buf.stats().total_bytes <= 16 << 10);
}

#[tokio::test]
async fn block_waits_until_a_sink_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.max_size = 16 << 10;
    let (buf, _) = Buffer::open(o).unwrap();
    let mut r = buf.reader("s").unwrap();
    let b = batch("a", 10, 1);
    while buf.shared.try_reserve(entry_size(&b)) {
        buf.shared.release(entry_size(&b));
        buf.append(&b).await.unwrap();
    }
    let b2 = buf.clone();
    let blocked = tokio::spawn(async move { b2.append(&batch("a", 10, 2)).await });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!blocked.is_finished(), "append completed on a full buffer");
    for rb in read_all(&mut r).await {
        r.ack(rb.first_offset, rb.batch.len() as u64).unwrap();
    }
    let range = blocked.await.unwrap().unwrap();
    assert_eq!(range.end - range.start, 10);
    assert_eq!(buf.stats().dropped_full, 0);
}

fn entry_size(b: &Batch) -> u64 {
    record::entry_len(b, 0) as u64
}

#[tokio::test]
async fn enospc_fails_the_append_cleanly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o.clone(), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 2, 1)).await.unwrap();
    let len = buf.stats().total_bytes;
    fs.faults.no_space.store(true, Ordering::SeqCst);
    let err = buf.append(&batch("a", 2, 2)).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BufferError::Write { .. }), "{msg}");
    assert!(msg.contains("segments") && msg.contains("No space left"), "{msg}");
    assert!(!buf.healthy());
    assert_eq!(buf.head(), 2);
    let seg = segment_files(&o).pop().unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "the torn write was not cut off");
    assert_eq!(buf.stats().write_errors, 1);
    fs.faults.no_space.store(false, Ordering::SeqCst);
    assert_eq!(buf.append(&batch("a", 2, 3)).await.unwrap(), 2..4);
    assert!(buf.healthy());
    let got: Vec<u8> = read_all(&mut r).await.iter().map(|b| b.batch.events[0].record[0]).collect();
    assert_eq!(got, vec![1, 3]);
    drop(r);
    drop(buf);
    let (_buf, report) = Buffer::open(o).unwrap();
    assert_eq!((report.events, report.corrupt_bytes, report.truncated_bytes), (4, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_serves_many_appends_with_few_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.segment_size = 8 << 20;
    o.max_size = 64 << 20;
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o, Arc::new(fs.clone())).unwrap();
    let n = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let buf = buf.clone();
        tasks.spawn(async move { buf.append(&batch("a", 2, i as u8)).await });
    }
    let mut ranges = vec![];
    while let Some(r) = tasks.join_next().await {
        ranges.push(r.unwrap().unwrap());
    }
    ranges.sort_by_key(|r| r.start);
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(*r, (2 * i as u64)..(2 * i as u64 + 2));
    }
    let syncs = fs.faults.segment_syncs.load(Ordering::SeqCst);
    let writes = fs.faults.segment_writes.load(Ordering::SeqCst);
    assert!(syncs < n as u64 / 2, "{syncs} fsyncs for {n} appends");
    assert_eq!(syncs, writes);
    assert_eq!(buf.stats().segment_fsyncs, syncs);
}

#[tokio::test]
async fn sync_always_fsyncs_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.sync = SyncMode::Always;
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o, Arc::new(fs.clone())).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let buf = buf.clone();
        tasks.spawn(async move { buf.append(&batch("a", 1, i)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(fs.faults.segment_syncs.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn sync_never_completes_after_write_and_fsyncs_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.sync = SyncMode::Never;
    o.sync_interval = Duration::from_secs(3600);
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o.clone(), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    for i in 0..5 {
        buf.append(&batch("a", 1, i)).await.unwrap();
    }
    assert_eq!(fs.faults.segment_syncs.load(Ordering::SeqCst), 0);
    // Readers see only what is fsynced: a host crash cannot take back what a sink has
    // delivered, and so cannot hand its offsets to new events.
    assert!(r.try_next(usize::MAX, usize::MAX).await.unwrap().is_none(), "nothing fsynced yet");
    buf.close().await.unwrap();
    assert_eq!(
        read_all(&mut r).await.iter().map(|b| b.batch.len()).sum::<usize>(),
        5,
        "readable once fsynced"
    );
    assert_eq!(fs.faults.segment_syncs.load(Ordering::SeqCst), 1);
    drop(buf);
    let (_b, report) = Buffer::open(o).unwrap();
    assert_eq!(report.events, 5);
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.segment_size = o.max_size;
    assert!(matches!(Buffer::open(o), Err(BufferError::InvalidOptions(_))));
}

#[tokio::test]
async fn a_damaged_cursor_restarts_the_sink_at_the_oldest_event() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    let r = buf.reader("s").unwrap();
    buf.append(&batch("a", 3, 1)).await.unwrap();
    r.ack(0, 3).unwrap();
    drop(r);
    buf.close().await.unwrap();
    drop(buf);
    std::fs::write(o.path.join("cursors/s"), b"junk").unwrap();
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(report.bad_cursors, 1);
    let r = buf.reader("s").unwrap();
    assert_eq!(r.position(), 0);
}

#[tokio::test]
async fn too_large_batches_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.max_size = 16 << 10;
    let (buf, _) = Buffer::open(o).unwrap();
    let err = buf.append(&batch("a", 400, 1)).await.unwrap_err();
    assert!(matches!(err, BufferError::Encode(record::RecordError::TooLarge(_))), "{err}");
    assert_eq!(buf.stats().dropped_invalid, 400);
    assert_eq!(buf.head(), 0);
}

#[tokio::test]
async fn enospc_when_starting_a_segment_fails_the_append_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o.clone(), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    let b = batch("a", 10, 1);
    // Fill the first segment to just below its size: the next append must roll.
    while buf.stats().total_bytes + entry_size(&b) <= o.segment_size {
        buf.append(&b).await.unwrap();
    }
    let head = buf.head();
    fs.faults.no_space.store(true, Ordering::SeqCst);
    let err = buf.append(&b).await.unwrap_err();
    assert!(matches!(err, BufferError::OpenSegment { .. }), "{err}");
    assert!(!buf.healthy());
    fs.faults.no_space.store(false, Ordering::SeqCst);
    assert_eq!(buf.append(&b).await.unwrap(), head..head + 10);
    assert!(buf.healthy());
    assert_eq!(buf.stats().segments, 2);
    let n: usize = read_all(&mut r).await.iter().map(|b| b.batch.len()).sum();
    assert_eq!(n as u64, head + 10);
}

#[tokio::test]
async fn a_write_that_cannot_be_cut_off_moves_on_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o.clone(), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 2, 1)).await.unwrap();
    fs.faults.no_space.store(true, Ordering::SeqCst);
    fs.faults.no_truncate.store(true, Ordering::SeqCst);
    buf.append(&batch("a", 2, 2)).await.unwrap_err();
    fs.faults.no_space.store(false, Ordering::SeqCst);
    fs.faults.no_truncate.store(false, Ordering::SeqCst);
    // The junk stays in the first segment, past its recorded end; writing goes on in a
    // new one, and readers never see the junk.
    assert_eq!(buf.append(&batch("a", 2, 3)).await.unwrap(), 2..4);
    assert_eq!(segment_files(&o).len(), 2);
    let got: Vec<u8> = read_all(&mut r).await.iter().map(|b| b.batch.events[0].record[0]).collect();
    assert_eq!(got, vec![1, 3]);
    drop(r);
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert!(report.corrupt_bytes > 0);
    assert_eq!((report.events, report.lost_events, report.truncated_bytes), (4, 0, 0));
    let mut r = buf.reader("s").unwrap();
    let got: Vec<u8> = read_all(&mut r).await.iter().map(|b| b.batch.events[0].record[0]).collect();
    assert_eq!(got, vec![1, 3]);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    assert!(matches!(Buffer::open(o.clone()), Err(BufferError::Locked { .. })));
    drop(buf);
    Buffer::open(o).unwrap();
}

#[tokio::test]
async fn damage_in_a_sealed_segment_is_skipped_by_readers_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    let mut sizes = vec![];
    for i in 0..60 {
        let b = batch("a", 3, i);
        sizes.push(entry_size(&b));
        buf.append(&b).await.unwrap();
    }
    drop(buf);
    let segs = segment_files(&o);
    assert!(segs.len() > 2);
    // The first segment: the second entry's header (its offset), and the second record of
    // the fourth entry (offsets 9..12).
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[sizes[0] as usize + record::HEADER_LEN + 1] ^= 0xff;
    let fourth = (sizes[0] + sizes[1] + sizes[2]) as usize;
    bytes[fourth + 95] ^= 0xff;
    std::fs::write(&segs[0], &bytes).unwrap();
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(
        (report.lost_events, report.damaged_events, report.corrupt_bytes, report.truncated_bytes),
        (4, 1, sizes[1], 0)
    );
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    assert_eq!(got.len(), 59);
    assert_eq!((got[0].first_offset, got[1].first_offset, got[2].first_offset), (0, 6, 9));
    for b in &got {
        for (i, e) in b.batch.events.iter().enumerate() {
            if b.first_offset + i as u64 == 10 {
                assert!(e.is_tombstone());
            } else {
                assert_eq!(e.record[0], (b.first_offset / 3) as u8);
            }
        }
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    assert_eq!(r.committed(), 180);
    eventually("segments deleted", || buf.stats().segments == 1).await;
}

/// A group written whole whose fsync fails, and which cannot be cut off again, leaves
/// complete, CRC-valid entries in the old segment with the same offsets the next appends
/// get in the new segment. After a restart those stale entries must not shadow the
/// acknowledged ones that reused their offsets.
#[tokio::test]
async fn whole_entries_left_by_a_failed_fsync_do_not_shadow_later_appends_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(o.clone(), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 2, 1)).await.unwrap();
    fs.faults.no_sync.store(true, Ordering::SeqCst);
    fs.faults.no_truncate.store(true, Ordering::SeqCst);
    let err = buf.append(&batch("a", 2, 2)).await.unwrap_err();
    assert!(matches!(err, BufferError::Sync { .. }), "{err}");
    fs.faults.no_sync.store(false, Ordering::SeqCst);
    fs.faults.no_truncate.store(false, Ordering::SeqCst);
    // Acknowledged: must be delivered, now and after a restart.
    let acked = buf.append(&batch("a", 2, 3)).await.unwrap();
    let got: Vec<u8> = read_all(&mut r).await.iter().map(|b| b.batch.events[0].record[0]).collect();
    assert_eq!(got, vec![1, 3]);
    drop(r);
    buf.close().await.unwrap();
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(report.events, 4, "{report:?}");
    assert!(report.corrupt_bytes > 0, "the failed group counts as damage: {report:?}");
    let mut r = buf.reader("s").unwrap();
    let got: Vec<(u64, u8)> = read_all(&mut r)
        .await
        .iter()
        .map(|b| (b.first_offset, b.batch.events[0].record[0]))
        .collect();
    assert_eq!(
        got,
        vec![(0, 1), (acked.start, 3)],
        "the acknowledged batch was shadowed by the failed one"
    );
}

/// At shutdown the buffer is closed first and the sinks then deliver what is left: their
/// acknowledgements come after the writer thread's last cursor fsync. A reader that has
/// read everything after close makes them durable before it reports the end.
#[tokio::test]
async fn acks_after_close_are_fsynced_when_the_reader_ends() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(opts(&dir), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 3, 1)).await.unwrap();
    buf.close().await.unwrap();
    let syncs = fs.faults.file_syncs.load(Ordering::SeqCst);
    let rb = r.next(usize::MAX, usize::MAX).await.unwrap().unwrap();
    r.ack(rb.first_offset, rb.batch.len() as u64).unwrap();
    assert!(r.next(usize::MAX, usize::MAX).await.unwrap().is_none());
    assert_eq!(
        fs.faults.file_syncs.load(Ordering::SeqCst),
        syncs + 1,
        "the last acknowledgement was not fsynced"
    );
    // Nothing changed since: no second fsync.
    assert!(r.next(usize::MAX, usize::MAX).await.unwrap().is_none());
    assert_eq!(fs.faults.file_syncs.load(Ordering::SeqCst), syncs + 1);
}

/// A sink cut off by the shutdown deadline never reaches the end of its reader: what it
/// acknowledged after close is made durable by `sync_cursors`, once per change.
#[tokio::test]
async fn sync_cursors_makes_acks_after_close_durable() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyStorage::new();
    let (buf, _) = Buffer::open_with_storage(opts(&dir), Arc::new(fs.clone())).unwrap();
    let mut r = buf.reader("s").unwrap();
    buf.append(&batch("a", 3, 1)).await.unwrap();
    buf.append(&batch("a", 3, 2)).await.unwrap();
    buf.close().await.unwrap();
    let syncs = fs.faults.file_syncs.load(Ordering::SeqCst);
    let rb = r.next(usize::MAX, usize::MAX).await.unwrap().unwrap();
    r.ack(rb.first_offset, rb.batch.len() as u64).unwrap();
    drop(r);
    buf.sync_cursors().unwrap();
    assert_eq!(fs.faults.file_syncs.load(Ordering::SeqCst), syncs + 1);
    buf.sync_cursors().unwrap();
    assert_eq!(
        fs.faults.file_syncs.load(Ordering::SeqCst),
        syncs + 1,
        "nothing changed: no second fsync"
    );
}

/// A buffer written by berth before per-event CRCs (version 1 entries) is read whole after
/// an upgrade, and new entries (version 2) go on in the same segment.
/// A segment of entries in an earlier format (`encode_old`) is read, appended to in the
/// current one, and both are read back, also after a reopen.
async fn entries_of_an_earlier_version_survive_an_upgrade(encode_old: fn(&Batch, u64) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    drop(buf);
    let seg = segment_files(&o).pop().unwrap();
    let (b0, b1) = (batch("old", 3, 1), batch("old", 2, 2));
    let mut bytes = encode_old(&b0, 0);
    bytes.extend(encode_old(&b1, 3));
    std::fs::write(&seg, &bytes).unwrap();

    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!(
        (report.entries, report.events, report.lost_events, report.corrupt_bytes),
        (2, 5, 0, 0)
    );
    assert_eq!(buf.head(), 5);
    assert!(buf.chunks().is_empty(), "earlier versions name no chunks");
    let b2 = batch("new", 2, 3);
    assert_eq!(buf.append(&b2).await.unwrap(), 5..7);
    let want = vec![
        ReadBatch { first_offset: 0, batch: b0 },
        ReadBatch { first_offset: 3, batch: b1 },
        ReadBatch { first_offset: 5, batch: b2 },
    ];
    let mut r = buf.reader("s").unwrap();
    assert_eq!(read_all(&mut r).await, want);
    r.ack(0, 3).unwrap();
    buf.close().await.unwrap();
    drop((r, buf));
    assert_eq!(segment_files(&o), vec![seg.clone()], "the new entry went on in the old segment");

    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(
        (report.entries, report.events, report.lost_events, report.corrupt_bytes),
        (3, 7, 0, 0)
    );
    let mut r = buf.reader("s").unwrap();
    assert_eq!(read_all(&mut r).await, want[1..]);
}

#[tokio::test]
async fn version_1_entries_survive_an_upgrade() {
    entries_of_an_earlier_version_survive_an_upgrade(record::encode_v1).await;
}

#[tokio::test]
async fn version_2_entries_survive_an_upgrade() {
    entries_of_an_earlier_version_survive_an_upgrade(record::encode_v2).await;
}

/// The keys of stored requests are in their entries: a crash (the buffer dropped without
/// `close`) and a reopen know them, and an entry lost to damage takes its keys with it.
#[tokio::test]
async fn chunk_keys_are_rebuilt_from_the_entries_on_reopen() {
    use chunks::Claim;
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    buf.enqueue_with_chunks(&batch("a", 2, 1), &[11, 12]).await.unwrap().await.unwrap();
    buf.enqueue_with_chunks(&batch("a", 1, 2), &[13]).await.unwrap().await.unwrap();
    buf.append(&batch("a", 1, 3)).await.unwrap();
    drop(buf);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    assert_eq!(buf.chunks().len(), 3);
    for k in [11, 12, 13] {
        assert!(matches!(buf.chunks().claim(k), Claim::Stored), "key {k}");
    }
    assert!(matches!(buf.chunks().claim(14), Claim::New(_)));
    drop(buf);
    // Damage the first entry's header: its events and its keys are gone, the rest stay.
    let seg = segment_files(&o).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[record::HEADER_LEN + 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!(report.lost_events, 2);
    assert!(matches!(buf.chunks().claim(11), Claim::New(_)));
    assert!(matches!(buf.chunks().claim(13), Claim::Stored));
}

#[tokio::test]
async fn delivered_up_to_an_offset_ignores_what_came_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(opts(&dir)).unwrap();
    assert!(buf.delivered_up_to(0) && buf.delivered_up_to(10), "no sink: nothing to wait for");
    let mut es = buf.reader("es").unwrap();
    let mut cw = buf.reader("cw").unwrap();
    assert_eq!(buf.append(&batch("a", 4, 1)).await.unwrap(), 0..4);
    let mark = buf.head();
    assert_eq!(mark, 4);
    assert_eq!(buf.append(&batch("b", 3, 2)).await.unwrap(), 4..7);
    read_all(&mut es).await;
    read_all(&mut cw).await;
    assert!(buf.delivered_up_to(0), "nothing below offset 0");
    assert!(!buf.delivered_up_to(mark));

    es.ack(0, 4).unwrap();
    assert!(!buf.delivered_up_to(mark), "every sink must have it: cw has not");
    cw.ack(0, 2).unwrap();
    assert!(buf.delivered_up_to(2) && !buf.delivered_up_to(3) && !buf.delivered_up_to(mark));
    cw.ack(2, 2).unwrap();
    assert!(buf.delivered_up_to(mark), "both have everything up to the mark");
    assert!(!buf.delivered_all(), "records after the mark do not count for it");
    es.ack(4, 3).unwrap();
    cw.ack(4, 3).unwrap();
    assert!(buf.delivered_all() && buf.delivered_up_to(buf.head()));
    buf.close().await.unwrap();
}

/// Complete, CRC-valid entries as a client could build them, at offsets of its choosing.
fn forged_entries(offsets: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &first in offsets {
        let mut e = record::encode(&batch("forged", 3, 0xf0)).unwrap();
        record::seal(&mut e, first);
        out.extend(e);
    }
    out
}

/// A Fluentd record `{"log": <bytes>}` (msgpack bin): what a client sends.
fn record_holding(bytes: &[u8]) -> Bytes {
    let v = rmpv::Value::Map(vec![(rmpv::Value::from("log"), rmpv::Value::Binary(bytes.to_vec()))]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &v).unwrap();
    Bytes::from(out)
}

fn is_forged(b: &ReadBatch) -> bool {
    b.batch.tag.as_str() == "forged"
        || b.batch.events.iter().any(|e| e.record.first() == Some(&0xf0))
}

/// berth dies while writing an entry whose record holds complete entries: the one at the
/// offset the torn entry had (a dense continuation), and one near `u64::MAX` that would
/// move the head (and so the cursors and GC) past every real event. Recovery must stop at
/// the torn write and believe neither.
#[tokio::test]
async fn entries_inside_a_torn_record_are_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    for i in 0..3 {
        buf.append(&batch("a", 2, i)).await.unwrap();
    }
    let good_len = buf.stats().total_bytes;
    let forged = forged_entries(&[6, u64::MAX - 10]);
    let hostile = Batch {
        tag: Tag::from_static("a"),
        events: vec![Event {
            time: EventTime::new(1_700_000_100, 0),
            record: record_holding(&forged),
            metadata: Bytes::from_static(&[0x80]),
        }],
    };
    assert_eq!(buf.append(&hostile).await.unwrap(), 6..7);
    drop(buf);
    // The kill came before the last bytes of the entry (its metadata) were written: the
    // forged entries are whole on disk, their container is not.
    let seg = segment_files(&o).pop().unwrap();
    let full = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(full, good_len + entry_size(&hostile));
    let torn_len = full - 3;
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(torn_len).unwrap();

    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!((report.entries, report.events, report.lost_events), (3, 6, 0), "{report:?}");
    assert_eq!((report.truncated_bytes, report.corrupt_bytes), (torn_len - good_len, 0));
    assert_eq!(buf.head(), 6, "the head stays where the real events end");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    assert!(!got.iter().any(is_forged), "forged events were recovered");
    let firsts: Vec<u64> = got.iter().map(|b| b.first_offset).collect();
    assert_eq!(firsts, vec![0, 2, 4]);
    for b in &got {
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    assert_eq!(r.committed(), 6);
    assert_eq!(buf.append(&batch("a", 1, 7)).await.unwrap(), 6..7);
    drop(r);
    buf.close().await.unwrap();
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!((report.events, report.lost_events, buf.head()), (7, 0, 7));
}

/// The same record in an entry whose header is damaged, with real entries after it: the
/// scanner steps into that entry's body and meets the forged entries. One that does not
/// continue the offsets (a jump to near `u64::MAX`, or past what the damaged bytes could
/// have held) is not believed, and the real entries after it are read at their offsets.
#[tokio::test]
async fn entries_that_do_not_continue_the_offsets_are_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.segment_size = 1 << 20;
    o.max_size = 4 << 20;
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    buf.reader("s").unwrap();
    buf.append(&batch("a", 2, 0)).await.unwrap();
    let damaged_at = buf.stats().total_bytes as usize;
    let forged = forged_entries(&[u64::MAX - 10, 1_000, u64::MAX - 2]);
    let hostile = Batch {
        tag: Tag::from_static("a"),
        events: vec![Event {
            time: EventTime::new(1_700_000_100, 0),
            record: record_holding(&forged),
            metadata: Bytes::new(),
        }],
    };
    assert_eq!(buf.append(&hostile).await.unwrap(), 2..3);
    for i in 0..3 {
        buf.append(&batch("a", 2, 10 + i)).await.unwrap();
    }
    drop(buf);
    let seg = segment_files(&o).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[damaged_at] ^= 0x01; // the hostile entry's magic
    std::fs::write(&seg, &bytes).unwrap();

    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!((report.entries, report.events, report.lost_events), (4, 8, 1), "{report:?}");
    assert_eq!(report.corrupt_bytes, entry_size(&hostile));
    assert_eq!(buf.head(), 9);
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    assert!(!got.iter().any(is_forged), "forged events were read");
    let firsts: Vec<u64> = got.iter().map(|b| b.first_offset).collect();
    assert_eq!(firsts, vec![0, 3, 5, 7]);
    for b in &got {
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    assert_eq!(r.committed(), 9);
    assert_eq!(buf.append(&batch("a", 1, 7)).await.unwrap(), 9..10);
}

/// The head moves past the newest segment's end when a sink's cursor is beyond what
/// survived (the events there were lost): appends then go to a new segment, so offsets
/// stay dense inside each segment and a later recovery reads them all.
#[tokio::test]
async fn a_head_raised_to_meet_a_cursor_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.segment_size = 1 << 20;
    o.max_size = 4 << 20;
    let (buf, _) = Buffer::open(o.clone()).unwrap();
    let mut r = buf.reader("s").unwrap();
    for i in 0..3 {
        buf.append(&batch("a", 2, i)).await.unwrap();
    }
    let two = entry_size(&batch("a", 2, 0)) * 2;
    read_all(&mut r).await;
    r.ack(0, 6).unwrap();
    drop(r);
    buf.close().await.unwrap();
    drop(buf);
    // The last entry is lost (as after a host crash that took back a delivered write).
    let seg = segment_files(&o).pop().unwrap();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(two).unwrap();
    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!((report.events, buf.head()), (4, 6));
    assert_eq!(buf.append(&batch("a", 2, 9)).await.unwrap(), 6..8);
    assert_eq!(segment_files(&o).len(), 2, "a new segment at the raised head");
    buf.close().await.unwrap();
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!((report.events, report.lost_events, buf.head()), (6, 2, 8), "{report:?}");
    let mut r = buf.reader("s").unwrap();
    let got = read_all(&mut r).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].first_offset, got[0].batch.events[0].record[0]), (6, 9));
}

/// A buffer directory copied to another instance (an AMI, a restored snapshot) keeps its
/// events but not its instance id: the two hosts' event ids must never meet.
#[tokio::test]
async fn a_buffer_copied_to_another_host_takes_a_new_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let host = |name: &str, machine: &str, ec2: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("machine-id"), format!("{machine}\n")).unwrap();
        std::fs::write(d.join("board_asset_tag"), format!("{ec2}\n")).unwrap();
        HostIdSources {
            machine_id: Some(d.join("machine-id")),
            ec2_instance_id: Some(d.join("board_asset_tag")),
        }
    };
    let mut o = opts(&dir);
    o.host_id = host("a", "5f0c6a1e2b3d4c5e6f708192a3b4c5d6", "i-0aaaaaaaaaaaaaaaa");
    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert!(!report.host_changed);
    let id = buf.instance_id();
    let mut r = buf.reader("es").unwrap();
    assert_eq!(buf.append(&batch("a", 3, 1)).await.unwrap(), 0..3);
    drop(r);
    buf.close().await.unwrap();
    drop(buf);
    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert_eq!((buf.instance_id(), report.host_changed), (id, false), "same host, same id");
    drop(buf);

    // Baked into an image: same machine id, another instance.
    o.host_id = host("b", "5f0c6a1e2b3d4c5e6f708192a3b4c5d6", "i-0bbbbbbbbbbbbbbbb");
    let (buf, report) = Buffer::open(o.clone()).unwrap();
    assert!(report.host_changed && buf.stats().recovery.host_changed);
    assert_ne!(buf.instance_id(), id);
    let moved = buf.instance_id();
    r = buf.reader("es").unwrap();
    let got = read_all(&mut r).await;
    assert_eq!(got.len(), 1, "the events stay");
    drop(r);
    drop(buf);
    let (buf, report) = Buffer::open(o).unwrap();
    assert_eq!((buf.instance_id(), report.host_changed), (moved, false), "and the new id stays");
}

/// Readers at the head take entries from the tail without opening a segment; one that falls
/// behind the tail reads on from the file just after the last entry it took, across a
/// segment change, and gets every event once, in order.
#[tokio::test]
async fn readers_at_the_head_read_from_memory_and_fall_back_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.tail_bytes = 3 * entry_size(&batch("t", 4, 0)) as usize;
    let (buf, faults) = open_faulty(o.clone());
    let opens = || faults.read_opens.load(Ordering::Relaxed);
    let mut r = buf.reader("es").unwrap();
    let mut want = vec![];
    let mut got = vec![];
    // At the head: every entry comes from memory.
    let at_open = opens();
    for i in 0..20u8 {
        let b = batch("t", 4, i);
        let range = buf.append(&b).await.unwrap();
        want.push(ReadBatch { first_offset: range.start, batch: b });
        got.extend(read_all(&mut r).await);
    }
    assert_eq!(opens(), at_open, "a reader at the head opened a segment");
    assert!(segment_files(&o).len() > 1, "the test must cross a segment change");
    // Behind by more than the tail holds, in the middle of a segment: the files.
    for i in 20..60u8 {
        let b = batch("t", 4, i);
        let range = buf.append(&b).await.unwrap();
        want.push(ReadBatch { first_offset: range.start, batch: b });
    }
    got.extend(read_all(&mut r).await);
    assert!(opens() > at_open, "the entries that left the tail come from the files");
    assert_eq!(got, want);
    // And back at the head, from memory again.
    let before = opens();
    let b = batch("t", 4, 99);
    let range = buf.append(&b).await.unwrap();
    assert_eq!(read_all(&mut r).await, vec![ReadBatch { first_offset: range.start, batch: b }]);
    assert_eq!(opens(), before);
    buf.close().await.unwrap();
}

async fn count_all(r: &mut Reader) -> Vec<Counted> {
    let mut out = vec![];
    while let Some(c) = r.try_next_counted().await.unwrap() {
        out.push(c);
    }
    out
}

fn counted(tag: &str, first: u64, n: u64) -> Counted {
    Counted { first_offset: first, end_offset: first + n, tag: Tag::from(tag.to_owned()), live: n }
}

/// A reader that counts takes whole entries from memory at the head, the files behind it,
/// and starts mid-entry where its cursor is, exactly as a reader that decodes.
#[tokio::test]
async fn counting_readers_take_whole_entries_from_memory_and_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.tail_bytes = 3 * entry_size(&batch("t", 4, 0)) as usize;
    let (buf, faults) = open_faulty(o.clone());
    let opens = || faults.read_opens.load(Ordering::Relaxed);
    let mut r = buf.reader("null").unwrap();
    let at_open = opens();
    let mut got = vec![];
    for i in 0..20u8 {
        buf.append(&batch(if i % 2 == 0 { "even" } else { "odd" }, 4, i)).await.unwrap();
        got.extend(count_all(&mut r).await);
    }
    assert_eq!(opens(), at_open, "a counting reader at the head opened a segment");
    let want: Vec<Counted> =
        (0..20).map(|i| counted(if i % 2 == 0 { "even" } else { "odd" }, i * 4, 4)).collect();
    assert_eq!(got, want);
    // Behind: from the files, decoded and counted.
    for i in 20..60u8 {
        buf.append(&batch("t", 4, i)).await.unwrap();
    }
    let got = count_all(&mut r).await;
    assert!(opens() > at_open);
    assert_eq!(got, (20..60).map(|i| counted("t", i * 4, 4)).collect::<Vec<_>>());
    // A cursor in the middle of an entry still in memory: the rest of it, then whole ones.
    r.ack(0, 237).unwrap();
    drop(r);
    let before = opens();
    let mut r = buf.reader("null").unwrap();
    assert_eq!(r.position(), 237);
    assert_eq!(count_all(&mut r).await, vec![counted("t", 237, 3)]);
    buf.append(&batch("t", 4, 60)).await.unwrap();
    assert_eq!(count_all(&mut r).await, vec![counted("t", 240, 4)]);
    assert_eq!(opens(), before, "the entries in memory came from memory");
    buf.close().await.unwrap();
}

/// Damaged events read from the files are not counted, and their offsets are passed.
#[tokio::test]
async fn counting_readers_leave_out_damaged_events() {
    let dir = tempfile::tempdir().unwrap();
    let o = one_segment(&dir);
    damaged_after(&o, 4, |positions, bytes| {
        bytes[positions[1] as usize + 60] ^= 0x40; // one event of entry 1
        bytes[positions[2] as usize] ^= 0x01; // all of entry 2
    })
    .await;
    let (buf, _) = Buffer::open(o).unwrap();
    let mut r = buf.reader("s").unwrap();
    let got = count_all(&mut r).await;
    let seen: Vec<(u64, u64, u64)> =
        got.iter().map(|c| (c.first_offset, c.end_offset, c.live)).collect();
    assert_eq!(seen, vec![(0, 4, 4), (4, 8, 3), (12, 16, 4)]);
    for c in &got {
        r.ack(c.first_offset, c.end_offset - c.first_offset).unwrap();
    }
    assert_eq!(r.committed(), 16);
}

/// A read cancelled while its scanner is in `spawn_blocking` (a sink's `select!` taking
/// another arm) goes on where it stood: every entry once, in order, and the segment is not
/// read again from its start after each cancellation.
#[tokio::test]
async fn cancelled_reads_resume_where_they_stood() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.tail_bytes = 0;
    o.segment_size = 8 << 20;
    o.max_size = 64 << 20;
    let (buf, faults) = open_faulty(o);
    let mut r = buf.reader("es").unwrap();
    let mut want = vec![];
    // Entries larger than a read chunk: each one is a read of its own.
    for i in 0..40u8 {
        let mut b = batch("t", 4, i);
        for e in &mut b.events {
            e.record = Bytes::from(vec![i; 100 << 10]);
        }
        let range = buf.append(&b).await.unwrap();
        want.push(ReadBatch { first_offset: range.start, batch: b });
    }
    let written = buf.stats().total_bytes;
    let mut got = vec![];
    let mut cancelled = 0;
    let events = 160;
    let mut n = 0;
    while n < events {
        // Every other read is cut off at its first await.
        if got.len() % 2 == 0 {
            let read = r.next(1, usize::MAX);
            match tokio::time::timeout(Duration::from_micros(1), read).await {
                Ok(rb) => got.push(rb.unwrap().unwrap()),
                Err(_) => cancelled += 1,
            }
        } else {
            got.push(r.next(usize::MAX, usize::MAX).await.unwrap().unwrap());
        }
        n = got.iter().map(|rb| rb.batch.len()).sum::<usize>();
    }
    assert!(cancelled > 0, "the test must cancel reads");
    // Reads of one event split entries: compare event by event.
    let flat = |v: &[ReadBatch]| -> Vec<(u64, Event)> {
        v.iter().flat_map(|rb| (rb.first_offset..).zip(rb.batch.events.iter().cloned())).collect()
    };
    let (got, want) = (flat(&got), flat(&want));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "events differ");
    let read = faults.read_bytes.load(Ordering::Relaxed);
    assert!(read < 3 * written, "{read} bytes read for {written} written, {cancelled} cancelled");
    buf.close().await.unwrap();
}

/// With no tail every reader reads the files, as before the tail existed.
#[tokio::test]
async fn a_buffer_without_a_tail_reads_everything_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.tail_bytes = 0;
    let (buf, faults) = open_faulty(o);
    let mut r = buf.reader("es").unwrap();
    let at_open = faults.read_opens.load(Ordering::Relaxed);
    let b = batch("t", 3, 1);
    buf.append(&b).await.unwrap();
    assert_eq!(read_all(&mut r).await, vec![ReadBatch { first_offset: 0, batch: b }]);
    assert!(faults.read_opens.load(Ordering::Relaxed) > at_open);
    buf.close().await.unwrap();
}

/// Deleting a delivered segment (an unlink that drops 64 MiB of pages: milliseconds) does
/// not hold up appends: the janitor does it, not the writer.
#[tokio::test]
async fn appends_complete_while_a_segment_is_being_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let (buf, faults) = open_faulty(o.clone());
    let mut r = buf.reader("es").unwrap();
    for i in 0..40 {
        buf.append(&batch("a", 5, i)).await.unwrap();
    }
    assert!(buf.stats().segments > 2);
    faults.hold_removes.store(true, Ordering::SeqCst);
    for b in read_all(&mut r).await {
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    eventually("a removal waiting", || faults.removes_waiting.load(Ordering::SeqCst) > 0).await;
    let segs = buf.stats().segments;
    for i in 0..40 {
        buf.append(&batch("b", 5, i)).await.unwrap();
    }
    assert!(buf.stats().segments > segs, "appends went on, into new segments");
    faults.hold_removes.store(false, Ordering::SeqCst);
    for b in read_all(&mut r).await {
        r.ack(b.first_offset, b.batch.len() as u64).unwrap();
    }
    eventually("delivered segments deleted", || buf.stats().segments == 1).await;
    assert_eq!(segment_files(&o).len(), 1);
    buf.close().await.unwrap();
}
