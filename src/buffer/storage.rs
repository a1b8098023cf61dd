//! The buffer's only way to the filesystem. A trait so tests can inject ENOSPC, torn writes
//! and count fsyncs; [`DiskStorage`] is the real thing.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// File operations the buffer performs. All calls are blocking: the buffer makes them from
/// its writer thread or from `spawn_blocking`, except the small rename-only cursor write.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Paths of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// The whole content of a small file.
    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path`, writes `data`, and fsyncs the file when `sync`.
    fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Writes `data` at the start of an existing file, in place (no create, no truncate).
    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsync of an existing file.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// fsync of a directory, so created, renamed and removed names are durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Opens `path` for appending, creating it when missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Takes an exclusive lock on `path` (created if missing), held until the returned
    /// guard is dropped, and released by the kernel if the process dies.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// The active segment, opened for appending.
pub trait AppendFile: Send {
    /// Writes all of `bufs` at the end of the file (one writev when possible).
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A segment opened for positional reads.
pub trait ReadFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// `read_at` into memory not yet initialised: the bytes read are initialised, the count
    /// returned. By default the memory is zeroed first; the real file reads into it as it
    /// is (zeroing a 256 KiB read buffer before every read was 4% of a lagging sink's CPU).
    fn read_at_uninit(
        &self,
        buf: &mut [std::mem::MaybeUninit<u8>],
        offset: u64,
    ) -> io::Result<usize> {
        buf.fill(std::mem::MaybeUninit::new(0));
        // SAFETY: every byte was initialised just above.
        let init = unsafe { &mut *(buf as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        self.read_at(init, offset)
    }
    /// Current length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The real filesystem. Segments are written with direct I/O (see [`DirectFile`]) where the
/// filesystem takes it, unless `direct_io` is off.
#[derive(Debug, Clone, Copy)]
pub struct DiskStorage {
    pub direct_io: bool,
}

impl Default for DiskStorage {
    fn default() -> Self {
        DiskStorage { direct_io: true }
    }
}

impl Storage for DiskStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new().write(true).open(path)?.write_all_at(data, 0)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        if self.direct_io {
            match DirectFile::open(path) {
                Ok(d) => return Ok(Box::new(d)),
                // The filesystem does not take O_DIRECT (tmpfs, some FUSE and network
                // filesystems): buffered writes, as before direct I/O.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(DiskFile(f)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(DiskFile(File::open(path)?)))
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock on a file descriptor this function owns for the call's duration.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(f))
    }
}

struct DiskFile(File);

impl AppendFile for DiskFile {
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match self.0.write_vectored(rest) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        // fdatasync: the length change is metadata it does flush; timestamps are not needed.
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// Direct I/O's unit: file offsets, lengths and memory addresses are multiples of it. 4096
/// serves disks of 512- and 4096-byte logical blocks alike.
pub const DIRECT_BLOCK: usize = 4096;

/// The most a [`DirectFile`] stages at once: a larger write goes out in pieces of this.
const DIRECT_STAGING: usize = 2 << 20;

/// The active segment written with `O_DIRECT`: entries go from a block-aligned staging
/// buffer to the disk, not through the page cache.
///
/// Why: through the page cache every byte was copied into a page by `write(2)` (the writer
/// thread's largest cost), each page was then looked up, locked, dirtied and written back,
/// and deleting a delivered segment freed its 16,384 pages one by one (the janitor's whole
/// cost). Sinks that keep up never read what was just written (they take it from the
/// buffer's tail in memory), so the cache only served a sink that fell behind. Direct I/O
/// does the one copy into the staging buffer and none of the rest (docs/performance.md:
/// about a tenth of berth's CPU per record).
///
/// Direct I/O writes whole blocks at block offsets. The last block of the data is padded
/// with zeros to the block's end, and the next write rewrites that block from its start
/// with its bytes kept here (`carry`), so the file holds exactly the entries followed by
/// less than a block of zeros. `len` is the logical length: the file is cut to it when this
/// is dropped (a sealed segment) and recovery takes such trailing zeros for padding, not
/// for a torn write (`recover::scan_segment`). Durability is unchanged: `sync` is
/// `fdatasync`, which flushes the disk's cache and the file size.
pub struct DirectFile {
    file: File,
    /// Logical length: the bytes written, without padding.
    len: u64,
    staging: AlignedBuf,
    /// Bytes of the last, partial block (`len % DIRECT_BLOCK`), at the start of `staging`.
    carry: usize,
}

impl DirectFile {
    /// Opens (creating) `path` for direct writes at its end; `EINVAL` when the filesystem
    /// does not support `O_DIRECT`.
    pub fn open(path: &Path) -> io::Result<DirectFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut d = DirectFile { file, len, staging: AlignedBuf::new(DIRECT_BLOCK)?, carry: 0 };
        d.load_carry()?;
        Ok(d)
    }

    /// Reads the last partial block (below `len`) into the start of `staging`.
    fn load_carry(&mut self) -> io::Result<()> {
        let carry = (self.len % DIRECT_BLOCK as u64) as usize;
        if carry > 0 {
            let at = self.len - carry as u64;
            // One aligned block-sized read at a block offset (what O_DIRECT asks); past the
            // end of the file it comes back short.
            let n = loop {
                match self.file.read_at(&mut self.staging.as_mut()[..DIRECT_BLOCK], at) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            if n < carry {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("segment shorter than its length {} when read back", self.len),
                ));
            }
        }
        self.carry = carry;
        Ok(())
    }

    /// Writes `staging[..fill]` (the carry first) at the block offset it starts at, padded
    /// with zeros to a whole block.
    fn write_staged(&mut self, at: u64, fill: usize) -> io::Result<()> {
        let padded = fill.next_multiple_of(DIRECT_BLOCK);
        let buf = &mut self.staging.as_mut()[..padded];
        buf[fill..].fill(0);
        match self.file.write_all_at(buf, at) {
            // A filesystem that took O_DIRECT at open and refuses the write itself (an
            // alignment it wants and does not say, some overlay or FUSE filesystems): the
            // same bytes through the page cache from now on, padding and all.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && clear_o_direct(&self.file)? => {
                tracing::warn!(error = %e, "direct I/O refused by the buffer's filesystem: writing through the page cache");
                self.file.write_all_at(buf, at)
            }
            r => r,
        }
    }

    fn write_all(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let need = (self.carry + total).next_multiple_of(DIRECT_BLOCK).min(DIRECT_STAGING);
        if need > self.staging.len() {
            let mut grown = AlignedBuf::new(need.next_power_of_two().min(DIRECT_STAGING))?;
            grown.as_mut()[..self.carry].copy_from_slice(&self.staging.as_mut()[..self.carry]);
            self.staging = grown;
        }
        let cap = self.staging.len();
        // File offset of staging[0], and how much of staging is filled.
        let mut at = self.len - self.carry as u64;
        let mut fill = self.carry;
        for b in bufs {
            let mut rest: &[u8] = b;
            while !rest.is_empty() {
                let take = rest.len().min(cap - fill);
                self.staging.as_mut()[fill..fill + take].copy_from_slice(&rest[..take]);
                fill += take;
                rest = &rest[take..];
                if fill == cap {
                    self.write_staged(at, fill)?;
                    at += cap as u64;
                    fill = 0;
                }
            }
        }
        if fill > 0 {
            self.write_staged(at, fill)?;
        }
        self.len += total as u64;
        // The new last partial block goes to the front for the next write.
        let carry = fill % DIRECT_BLOCK;
        self.staging.as_mut().copy_within(fill - carry..fill, 0);
        self.carry = carry;
        Ok(())
    }
}

/// Turns `O_DIRECT` off on `file`; `Ok(false)` when it was not on.
fn clear_o_direct(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor `file` owns for the duration of the call.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_DIRECT == 0 {
        return Ok(false);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

impl AppendFile for DirectFile {
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        let res = self.write_all(bufs);
        if res.is_err() {
            // A full staging buffer may have gone out over the carry: read it back (the
            // bytes below `len` on disk are unchanged, they were rewritten as they were).
            // The writer then cuts the file to `len` (`truncate`).
            let _ = self.load_carry();
        }
        res
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        self.load_carry()
    }
}

impl Drop for DirectFile {
    /// A segment done with (sealed, or the writer stopping) loses its padding. Not
    /// fsynced: if the host goes down first, recovery knows the padding for what it is.
    fn drop(&mut self) {
        let _ = self.file.set_len(self.len);
    }
}

/// A heap buffer aligned to [`DIRECT_BLOCK`], as direct I/O needs its memory to be; `Vec`
/// cannot promise an alignment.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory like a `Vec<u8>`'s, reached only through `&mut self`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> io::Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len, DIRECT_BLOCK).map_err(io::Error::other)
    }

    /// `len` (a non-zero multiple of the block) zeroed bytes: no uninitialised memory is
    /// ever read or written out.
    fn new(len: usize) -> io::Result<AlignedBuf> {
        debug_assert!(len > 0 && len.is_multiple_of(DIRECT_BLOCK));
        let layout = Self::layout(len)?;
        // SAFETY: the layout's size is non-zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "staging buffer"))?;
        Ok(AlignedBuf { ptr, len })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, then written) bytes this owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `new` with this same layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

impl ReadFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // SAFETY: initialised bytes seen as possibly uninitialised; `read_at_uninit` only
        // writes initialised bytes into them.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        self.read_at_uninit(uninit, offset)
    }

    fn read_at_uninit(
        &self,
        buf: &mut [std::mem::MaybeUninit<u8>],
        offset: u64,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        loop {
            // SAFETY: pread writes at most `buf.len()` bytes into memory this call borrows
            // mutably; it only writes, so the memory need not be initialised.
            let n = unsafe {
                libc::pread(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset)
            };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// Test double over the real filesystem: counts fsyncs of segments and, while `no_space`
/// is set, writes half of what it is given and then fails with ENOSPC (a torn write), and
/// refuses to create segments.
#[derive(Debug, Default, Clone)]
pub struct FaultyStorage {
    pub faults: Arc<Faults>,
}

#[derive(Debug, Default)]
pub struct Faults {
    pub no_space: AtomicBool,
    /// Truncating a segment fails with EIO (so a failed write cannot be cut off).
    pub no_truncate: AtomicBool,
    /// fsyncing a segment fails with EIO (after the write itself succeeded).
    pub no_sync: AtomicBool,
    /// Overwriting a cursor in place fails with EIO.
    pub no_cursor_write: AtomicBool,
    pub segment_syncs: AtomicU64,
    pub segment_writes: AtomicU64,
    /// fsyncs of files other than segments (cursors).
    pub file_syncs: AtomicU64,
    /// Files opened for reading (readers and recovery).
    pub read_opens: AtomicU64,
    /// Bytes read from the files opened for reading.
    pub read_bytes: AtomicU64,
    /// While set, removing a segment file waits (a slow unlink), and `removes_waiting`
    /// counts the removals that are waiting.
    pub hold_removes: AtomicBool,
    pub removes_waiting: AtomicU64,
}

impl FaultyStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

fn is_segment(path: &Path) -> bool {
    super::segment::parse_segment_name(path).is_some()
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        DiskStorage::default().create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        DiskStorage::default().list_dir(path)
    }
    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>> {
        DiskStorage::default().read_small(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        DiskStorage::default().write_file(path, data, sync)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        DiskStorage::default().rename(from, to)
    }
    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if self.faults.no_cursor_write.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        DiskStorage::default().overwrite(path, data)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if self.faults.hold_removes.load(Ordering::SeqCst) && is_segment(path) {
            self.faults.removes_waiting.fetch_add(1, Ordering::SeqCst);
            while self.faults.hold_removes.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.faults.removes_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        DiskStorage::default().remove_file(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.faults.file_syncs.fetch_add(1, Ordering::SeqCst);
        DiskStorage::default().sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        DiskStorage::default().sync_dir(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        if self.faults.no_space.load(Ordering::SeqCst) && !path.exists() {
            return Err(enospc());
        }
        let inner = DiskStorage::default().open_append(path)?;
        Ok(Box::new(FaultyFile { inner, faults: Arc::clone(&self.faults) }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        self.faults.read_opens.fetch_add(1, Ordering::Relaxed);
        let inner = DiskStorage::default().open_read(path)?;
        Ok(Box::new(CountingRead { inner, faults: Arc::clone(&self.faults) }))
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        DiskStorage::default().lock(path)
    }
}

/// A file opened for reading that counts the bytes read from it.
struct CountingRead {
    inner: Box<dyn ReadFile>,
    faults: Arc<Faults>,
}

impl ReadFile for CountingRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.faults.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn read_at_uninit(
        &self,
        buf: &mut [std::mem::MaybeUninit<u8>],
        offset: u64,
    ) -> io::Result<usize> {
        let n = self.inner.read_at_uninit(buf, offset)?;
        self.faults.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

struct FaultyFile {
    inner: Box<dyn AppendFile>,
    faults: Arc<Faults>,
}

impl AppendFile for FaultyFile {
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        self.faults.segment_writes.fetch_add(1, Ordering::SeqCst);
        if self.faults.no_space.load(Ordering::SeqCst) {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let joined: Vec<u8> = bufs.concat();
            self.inner.write_all_vectored(&[&joined[..total / 2]])?;
            return Err(enospc());
        }
        self.inner.write_all_vectored(bufs)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.faults.segment_syncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.no_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        if self.faults.no_truncate.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.truncate(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `DirectFile` on `path`, or `None` (said) where the filesystem has no `O_DIRECT`.
    fn direct(path: &Path) -> Option<DirectFile> {
        match DirectFile::open(path) {
            Ok(f) => Some(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("no O_DIRECT on {}: skipped", path.display());
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The file holds exactly `want` and then less than a block of zeros, to a block end.
    fn holds(path: &Path, want: &[u8]) {
        let got = std::fs::read(path).unwrap();
        assert!(got.len() >= want.len() && got.len() - want.len() < DIRECT_BLOCK);
        assert_eq!(got.len() % DIRECT_BLOCK, 0, "whole blocks while open");
        assert!(got[..want.len()] == *want, "content differs");
        assert!(got[want.len()..].iter().all(|&b| b == 0), "padding is zeros");
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    #[test]
    fn direct_writes_of_any_size_land_whole_and_the_padding_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let Some(mut f) = direct(&path) else { return };
        let mut want = vec![];
        // Across block ends, exactly at one, one piece larger than the staging buffer, and
        // groups of many small entries (one writev's worth).
        let sizes = [1, 4094, 1, 4096, 4097, 3, DIRECT_STAGING + 5000, 12, 8191];
        for (i, &n) in sizes.iter().enumerate() {
            let b = bytes(n, i as u8);
            f.write_all_vectored(&[&b]).unwrap();
            want.extend_from_slice(&b);
            holds(&path, &want);
        }
        let group: Vec<Vec<u8>> = (0..300).map(|i| bytes(200 + i, i as u8)).collect();
        let slices: Vec<&[u8]> = group.iter().map(|g| &g[..]).collect();
        f.write_all_vectored(&slices).unwrap();
        want.extend(group.concat());
        holds(&path, &want);
        f.sync().unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), want, "cut to its length when dropped");
    }

    /// The fallback for a filesystem that takes O_DIRECT at open and refuses its writes:
    /// the flag comes off, once, and the file goes on as it was.
    #[test]
    fn o_direct_comes_off_once_and_the_file_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let Some(mut f) = direct(&path) else { return };
        let a = bytes(5000, 1);
        f.write_all_vectored(&[&a]).unwrap();
        assert!(clear_o_direct(&f.file).unwrap());
        assert!(!clear_o_direct(&f.file).unwrap());
        let b = bytes(3000, 2);
        f.write_all_vectored(&[&b]).unwrap();
        f.sync().unwrap();
        holds(&path, &[&a[..], &b[..]].concat());
    }

    #[test]
    fn a_reopened_or_truncated_direct_file_goes_on_from_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let Some(mut f) = direct(&path) else { return };
        let a = bytes(5000, 1);
        f.write_all_vectored(&[&a]).unwrap();
        drop(f);
        // Reopened in the middle of a block: that block's start is read back.
        let mut f = direct(&path).unwrap();
        let b = bytes(100, 2);
        f.write_all_vectored(&[&b]).unwrap();
        holds(&path, &[&a[..], &b[..]].concat());
        // Cut back into the first block (a failed write cut off), then on from there.
        f.truncate(1000).unwrap();
        let c = bytes(7000, 3);
        f.write_all_vectored(&[&c]).unwrap();
        holds(&path, &[&a[..1000], &c[..]].concat());
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap().len(), 8000);
    }
}
