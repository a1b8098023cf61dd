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
    /// Current length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStorage;

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

impl ReadFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
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
        DiskStorage.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        DiskStorage.list_dir(path)
    }
    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>> {
        DiskStorage.read_small(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        DiskStorage.write_file(path, data, sync)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        DiskStorage.rename(from, to)
    }
    fn overwrite(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if self.faults.no_cursor_write.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        DiskStorage.overwrite(path, data)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if self.faults.hold_removes.load(Ordering::SeqCst) && is_segment(path) {
            self.faults.removes_waiting.fetch_add(1, Ordering::SeqCst);
            while self.faults.hold_removes.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.faults.removes_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        DiskStorage.remove_file(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.faults.file_syncs.fetch_add(1, Ordering::SeqCst);
        DiskStorage.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        DiskStorage.sync_dir(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        if self.faults.no_space.load(Ordering::SeqCst) && !path.exists() {
            return Err(enospc());
        }
        let inner = DiskStorage.open_append(path)?;
        Ok(Box::new(FaultyFile { inner, faults: Arc::clone(&self.faults) }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        self.faults.read_opens.fetch_add(1, Ordering::Relaxed);
        DiskStorage.open_read(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        DiskStorage.lock(path)
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
