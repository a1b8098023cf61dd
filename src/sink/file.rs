//! The file sink: JSON lines appended to files named from a path template, `{tag}` replaced
//! by the event's tag (sanitised so a tag can never leave the directory).
//!
//! Durability: a group is acknowledged only after every byte of it was written and every
//! touched file `sync_data`ed — once per file per group, not per batch. The durable buffer
//! relies on "acknowledged by the sink = on disk".
//!
//! Retries never duplicate or tear a line: each file's share of a group is one buffer with a
//! count of the bytes the kernel took, and a retry resumes there. If the file at the path is
//! no longer the one we wrote into (deleted, or its directory recreated), the whole buffer is
//! written again to the new file, since the old one took our bytes with it.
//!
//! The blocking file I/O runs on tokio's blocking pool via the shared run loop
//! ([`super::stdout`]'s `drive`).

use super::stdout::{drive, encode_group, write_backoff, write_from, GroupWriter, WriteError};
use super::{SinkContext, SinkError};
use crate::config::Format;
use crate::msgpack::json::BatchLines;
use crate::pipeline::Delivery;
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files kept open at once; the least recently used is closed beyond this.
pub const MAX_OPEN_FILES: usize = 128;

/// Longest sanitised tag put into a path: keeps file names under the usual 255-byte limit
/// (a longer name would fail to open forever and stall the sink). Tags that share their
/// first 200 characters share a file.
pub const MAX_TAG_IN_PATH: usize = 200;

/// Append JSON lines to the files named by `path` until every input has stopped.
pub async fn run(path: &str, format: Format, ctx: SinkContext) -> Result<(), SinkError> {
    drive(ctx, FileWriter::new(path, format, MAX_OPEN_FILES), write_backoff()).await
}

/// A path with `{tag}` placeholders.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    /// The literal text around the placeholders: `a{tag}b{tag}c` → `["a", "b", "c"]`.
    parts: Vec<String>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> PathTemplate {
        PathTemplate { parts: template.split("{tag}").map(str::to_owned).collect() }
    }

    /// The path for events with this tag.
    pub fn render(&self, tag: &str) -> PathBuf {
        let len: usize = self.parts.iter().map(String::len).sum();
        let mut s = String::with_capacity(len + tag.len().min(MAX_TAG_IN_PATH));
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                push_sanitized_tag(&mut s, tag);
            }
            s.push_str(part);
        }
        PathBuf::from(s)
    }
}

/// Append `tag` made safe for one path component: only `[A-Za-z0-9._-]` kept (anything
/// else, `/` included, becomes `_`), a leading `.` becomes `_` (so no `.`, `..` or hidden
/// file), empty becomes `_`, at most [`MAX_TAG_IN_PATH`] bytes.
pub fn push_sanitized_tag(out: &mut String, tag: &str) {
    let start = out.len();
    for c in tag.chars().take(MAX_TAG_IN_PATH) {
        let safe = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let c = if safe && !(c == '.' && out.len() == start) { c } else { '_' };
        out.push(c);
    }
    if out.len() == start {
        out.push('_');
    }
}

/// Which file a handle or a write went to: (device, inode).
type Ident = (u64, u64);

struct OpenFile {
    /// Shared with the `Pending` that wrote into it, which keeps the inode alive: while
    /// any handle is open the (device, inode) pair cannot be reused by a new file, so
    /// comparing idents really tells whether the path still names the file we wrote.
    file: Arc<File>,
    ident: Ident,
    last_used: u64,
}

/// Open files by path, at most `cap`, least recently used closed first.
struct OpenFiles {
    map: HashMap<PathBuf, OpenFile>,
    /// Directories that gained an entry (a file or directory this sink created) and were
    /// not fsynced since: a new name is durable only once its directory is. Kept until a
    /// sync succeeds, whatever happens to the handles.
    dirty_dirs: Vec<PathBuf>,
    cap: usize,
    tick: u64,
}

fn error(what: &str, path: &Path, source: io::Error) -> WriteError {
    WriteError { what: format!("{what} {}", path.display()), source }
}

impl OpenFiles {
    fn new(cap: usize) -> OpenFiles {
        OpenFiles { map: HashMap::new(), dirty_dirs: Vec::new(), cap: cap.max(1), tick: 0 }
    }

    /// The open file at `path`, opening (and creating) it if it is not open or if the
    /// path now names another file (rotated, deleted, directory recreated).
    fn get(&mut self, path: &Path) -> Result<&mut OpenFile, WriteError> {
        self.tick += 1;
        let on_disk = match fs::metadata(path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(error("stat", path, e)),
        };
        let current = self.map.get(path).is_some_and(|f| Some(f.ident) == on_disk);
        if !current {
            self.map.remove(path);
            let opened = open(path, on_disk.is_none(), &mut self.dirty_dirs)?;
            if self.map.len() >= self.cap {
                self.evict_lru();
            }
            self.map.insert(path.to_path_buf(), opened);
        }
        let tick = self.tick;
        let f = self.map.get_mut(path).ok_or_else(|| {
            error("open", path, io::Error::other("missing from the open-file table"))
        })?;
        f.last_used = tick;
        Ok(f)
    }

    /// Close the handle (after an error: the next attempt starts with a fresh one).
    fn forget(&mut self, path: &Path) {
        self.map.remove(path);
    }

    fn evict_lru(&mut self) {
        let oldest = self.map.iter().min_by_key(|(_, f)| f.last_used).map(|(p, _)| p.clone());
        if let Some(p) = oldest {
            self.map.remove(&p);
        }
    }
}

fn open(
    path: &Path,
    creating: bool,
    dirty_dirs: &mut Vec<PathBuf>,
) -> Result<OpenFile, WriteError> {
    let parent = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        // Every directory created here is a new entry in its own parent.
        let mut missing = Vec::new();
        let mut d = parent;
        while !d.as_os_str().is_empty() && !d.is_dir() {
            missing.push(d.to_path_buf());
            d = d.parent().unwrap_or(Path::new(""));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| error("create directory", parent, e))?;
        for m in missing {
            let up = m.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            mark_dirty(dirty_dirs, up);
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| error("open", path, e))?;
    if creating {
        mark_dirty(dirty_dirs, parent);
    }
    cut_torn_tail(&file, path)?;
    let m = file.metadata().map_err(|e| error("stat", path, e))?;
    Ok(OpenFile { file: Arc::new(file), ident: (m.dev(), m.ino()), last_used: 0 })
}

/// A file that does not end in '\n' was cut mid-write by a crash (berth killed between two
/// writes of one group). Nothing of that group was acknowledged, so it is all written again:
/// cutting the torn line keeps every line of the file whole JSON.
fn cut_torn_tail(file: &File, path: &Path) -> Result<(), WriteError> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(|e| error("stat", path, e))?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buf, start).map_err(|e| error("read", path, e))?;
        if let Some(i) = memchr::memrchr(b'\n', buf) {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(path = %path.display(), bytes = len - end, "output file ends in a line torn by a crash; cutting it (its events are written again)");
        file.set_len(end).map_err(|e| error("truncate", path, e))?;
        file.sync_data().map_err(|e| error("fsync", path, e))?;
    }
    Ok(())
}

fn mark_dirty(dirty_dirs: &mut Vec<PathBuf>, dir: &Path) {
    if !dirty_dirs.iter().any(|d| d == dir) {
        dirty_dirs.push(dir.to_path_buf());
    }
}

/// One file's share of the current group.
struct Pending {
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes of `buf` the kernel has taken.
    written: usize,
    /// The file those bytes went to (held open, see `OpenFile::file`).
    target: Option<(Arc<File>, Ident)>,
    synced: bool,
}

/// The file sink's [`GroupWriter`].
pub(super) struct FileWriter {
    template: PathTemplate,
    files: OpenFiles,
    pending: Vec<Pending>,
    /// Buffers of finished groups, reused.
    spare: Vec<Vec<u8>>,
}

impl FileWriter {
    pub(super) fn new(path: &str, format: Format, max_open: usize) -> FileWriter {
        // One format today; a new one must be handled here (the pattern stops compiling).
        let Format::Json = format;
        FileWriter {
            template: PathTemplate::parse(path),
            files: OpenFiles::new(max_open),
            pending: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Make sure the file at `p.path` holds all of `p.buf`; returns that file.
    fn ensure_written<'a>(
        files: &'a mut OpenFiles,
        p: &mut Pending,
    ) -> Result<&'a mut OpenFile, WriteError> {
        let f = files.get(&p.path)?;
        if p.target.as_ref().map(|t| t.1) != Some(f.ident) {
            // First write of this group, or the bytes written so far went to a file that
            // is no longer at this path: (re)start from the beginning of the buffer.
            p.written = 0;
            p.synced = false;
            p.target = Some((Arc::clone(&f.file), f.ident));
        }
        if p.written < p.buf.len() {
            p.synced = false;
            let mut file: &File = &f.file;
            write_from(&mut file, &p.buf, &mut p.written)
                .map_err(|e| error("write", &p.path, e))?;
        }
        Ok(f)
    }

    fn write_all(&mut self) -> Result<(), WriteError> {
        // All writes first, then the syncs: the kernel can flush the files together.
        for p in &mut self.pending {
            if let Err(e) = Self::ensure_written(&mut self.files, p) {
                self.files.forget(&p.path);
                return Err(e);
            }
        }
        for p in &mut self.pending {
            if p.synced {
                continue;
            }
            let f = match Self::ensure_written(&mut self.files, p) {
                Ok(f) => f,
                Err(e) => {
                    self.files.forget(&p.path);
                    return Err(e);
                }
            };
            if let Err(e) = f.file.sync_data().map_err(|e| error("sync", &p.path, e)) {
                // After a failed fsync the kernel may have dropped the dirty pages and marked
                // them clean: a second fsync would succeed with the data gone. Write the
                // whole group's share again (its lines may then appear twice: duplicates,
                // never loss), through a fresh handle that reports the next failure.
                p.written = 0;
                self.files.forget(&p.path);
                return Err(e);
            }
            p.synced = true;
        }
        // The names of new files and directories, deepest first (a directory's own entry
        // is in its parent, synced after it).
        let dirs = &mut self.files.dirty_dirs;
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        while let Some(dir) = dirs.first() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| error("sync directory", dir, e))?;
            dirs.remove(0);
        }
        Ok(())
    }
}

impl GroupWriter for FileWriter {
    fn encode(&mut self, group: &[Delivery]) -> BatchLines {
        self.clear();
        let mut total = BatchLines::default();
        for d in group {
            let path = self.template.render(d.batch.tag.as_str());
            let i = match self.pending.iter().position(|p| p.path == path) {
                Some(i) => i,
                None => {
                    let buf = self.spare.pop().unwrap_or_default();
                    self.pending.push(Pending {
                        path,
                        buf,
                        written: 0,
                        target: None,
                        synced: false,
                    });
                    self.pending.len() - 1
                }
            };
            let lines = encode_group(&mut self.pending[i].buf, std::slice::from_ref(d));
            total.failed += lines.failed;
            total.first_error = total.first_error.or(lines.first_error);
        }
        total
    }

    fn write(&mut self) -> Result<(), WriteError> {
        self.write_all()
    }

    fn bytes(&self) -> u64 {
        self.pending.iter().map(|p| p.buf.len() as u64).sum()
    }

    fn clear(&mut self) {
        for mut p in self.pending.drain(..) {
            p.buf.clear();
            self.spare.push(p.buf);
        }
        // Keep a few buffers, not one per tag ever seen.
        self.spare.truncate(16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Event, EventTime, Tag};
    use crate::metrics::{Metrics, SinkLabel};
    use crate::pipeline::Pipeline;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    fn setup() -> (Pipeline, SinkContext, Arc<Metrics>, tempfile::TempDir) {
        SinkContext::for_test("files")
    }

    fn batch(tag: &str, from: u64, n: u64) -> Batch {
        let events = (from..from + n)
            .map(|i| {
                let v = rmpv::Value::Map(vec![(rmpv::Value::from("n"), rmpv::Value::from(i))]);
                let mut b = Vec::new();
                rmpv::encode::write_value(&mut b, &v).unwrap();
                Event { time: EventTime::new(0, 0), record: Bytes::from(b), metadata: Bytes::new() }
            })
            .collect();
        Batch { tag: Tag::from(tag.to_string()), events }
    }

    fn numbers(path: &Path) -> Vec<u64> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn counter(
        f: &prometheus_client::metrics::family::Family<
            SinkLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> u64 {
        f.get_or_create(&SinkLabel { sink: "files".into() }).get()
    }

    fn fast() -> crate::backoff::Backoff {
        crate::backoff::Backoff::doubling(Duration::from_millis(1), Duration::from_millis(5))
    }

    fn writer(template: &str) -> FileWriter {
        FileWriter::new(template, Format::Json, MAX_OPEN_FILES)
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn every_new_name_marks_its_directory_for_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/t.log");
        let mut dirty = Vec::new();
        open(&path, true, &mut dirty).unwrap();
        let mut want = vec![dir.path().to_path_buf(), dir.path().join("a"), dir.path().join("a/b")];
        want.sort();
        dirty.sort();
        assert_eq!(dirty, want, "b's entry is in a, a's in the root, the file's in b");
        // An existing file in an existing directory adds nothing.
        let mut dirty = Vec::new();
        open(&path, false, &mut dirty).unwrap();
        assert!(dirty.is_empty());
    }

    #[test]
    fn a_line_torn_by_a_crash_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let check = |content: &[u8], want: &[u8]| {
            fs::write(&path, content).unwrap();
            open(&path, false, &mut Vec::new()).unwrap();
            assert_eq!(fs::read(&path).unwrap(), want, "{:?}", String::from_utf8_lossy(content));
        };
        check(b"", b"");
        check(b"{\"a\":1}\n{\"b\":2}\n", b"{\"a\":1}\n{\"b\":2}\n");
        check(b"{\"a\":1}\n{\"b\":", b"{\"a\":1}\n");
        check(b"{\"torn\"", b"");
        // A torn line longer than one read chunk.
        let mut long = b"{\"a\":1}\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 200 << 10));
        check(&long, b"{\"a\":1}\n");
    }

    #[test]
    fn sanitised_tags() {
        let s = |t: &str| {
            let mut out = String::new();
            push_sanitized_tag(&mut out, t);
            out
        };
        assert_eq!(s("app.web-1_x"), "app.web-1_x");
        assert_eq!(s("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(s(".."), "_.");
        assert_eq!(s("."), "_");
        assert_eq!(s(".hidden"), "_hidden");
        assert_eq!(s(""), "_");
        assert_eq!(s("a/b\\c d\0é"), "a_b_c_d__");
        assert_eq!(s(&"x".repeat(1000)).len(), MAX_TAG_IN_PATH);
    }

    #[test]
    fn template_renders_every_placeholder() {
        let t = PathTemplate::parse("/var/log/{tag}/{tag}.log");
        assert_eq!(t.render("a/../b"), PathBuf::from("/var/log/a_.._b/a_.._b.log"));
        assert_eq!(PathTemplate::parse("/x/all.log").render("t"), PathBuf::from("/x/all.log"));
    }

    #[test]
    fn open_files_are_bounded_lru() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = OpenFiles::new(2);
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        files.get(&a).unwrap();
        files.get(&b).unwrap();
        files.get(&a).unwrap();
        files.get(&c).unwrap(); // closes b, the least recently used
        assert_eq!(files.map.len(), 2);
        assert!(files.map.contains_key(&a) && files.map.contains_key(&c));
    }

    #[test]
    fn reopens_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.log");
        let mut files = OpenFiles::new(4);
        let old = files.get(&path).unwrap();
        let (first, _keep_inode) = (old.ident, Arc::clone(&old.file));
        assert_eq!(files.get(&path).unwrap().ident, first, "kept open");
        fs::remove_dir_all(dir.path().join("sub")).unwrap();
        let second = files.get(&path).unwrap().ident;
        assert!(path.exists());
        assert_ne!(second, first);
    }

    #[test]
    fn modes_of_created_files_and_directories() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/e/x.log");
        // The umask may clear bits, never add them: assert no bit beyond 0640 / 0755.
        OpenFiles::new(1).get(&path).unwrap();
        let fmode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let dmode = fs::metadata(dir.path().join("d/e")).unwrap().permissions().mode() & 0o777;
        assert_eq!(fmode & !0o640, 0, "file mode {fmode:o}");
        assert_eq!(dmode & !0o755, 0, "dir mode {dmode:o}");
    }

    #[test]
    fn rewrites_into_a_replacement_file_after_a_failed_sync() {
        // Simulate: the group was written, the sync failed, and the file was deleted before
        // the retry. The retry must put the whole group into the new file, once.
        let dir = tempfile::tempdir().unwrap();
        let template = format!("{}/{{tag}}.log", dir.path().display());
        let mut w = writer(&template);
        let group = vec![Delivery { first: 0, seq: 1, batch: Arc::new(batch("t", 0, 3)) }];
        w.encode(&group);
        for p in &mut w.pending {
            FileWriter::ensure_written(&mut w.files, p).unwrap();
        }
        let path = dir.path().join("t.log");
        fs::remove_file(&path).unwrap();
        w.write().unwrap();
        assert_eq!(numbers(&path), vec![0, 1, 2]);
        // And a retry of an already-written group adds nothing.
        w.write().unwrap();
        assert_eq!(numbers(&path), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn lines_land_in_per_tag_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let template = format!("{}/logs/{{tag}}.log", dir.path().display());
        let (p, ctx, metrics, _dir) = setup();
        let sink = tokio::spawn(drive(ctx, writer(&template), fast()));
        p.submit(&batch("app.web", 0, 2)).await.unwrap();
        p.submit(&batch("app.db", 100, 1)).await.unwrap();
        p.submit(&batch("app.web", 2, 3)).await.unwrap();
        p.submit(&batch("app.db", 101, 2)).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        sink.await.unwrap().unwrap();
        let logs = dir.path().join("logs");
        assert_eq!(numbers(&logs.join("app.web.log")), vec![0, 1, 2, 3, 4]);
        assert_eq!(numbers(&logs.join("app.db.log")), vec![100, 101, 102]);
        assert_eq!(counter(&metrics.output_records), 8);
        let on_disk = fs::metadata(logs.join("app.web.log")).unwrap().len()
            + fs::metadata(logs.join("app.db.log")).unwrap().len();
        assert_eq!(counter(&metrics.output_bytes), on_disk);
        assert_eq!(counter(&metrics.output_errors), 0);
    }

    #[tokio::test]
    async fn appends_to_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let template = format!("{}/{{tag}}.log", dir.path().display());
        for from in [0, 10] {
            let (p, ctx, _, _dir) = setup();
            let sink = tokio::spawn(drive(ctx, writer(&template), fast()));
            p.submit(&batch("t", from, 2)).await.unwrap();
            p.buffer().close().await.unwrap();
            drop(p);
            sink.await.unwrap().unwrap();
        }
        assert_eq!(numbers(&dir.path().join("t.log")), vec![0, 1, 10, 11]);
    }

    #[tokio::test]
    async fn hostile_tag_stays_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a/b");
        let template = format!("{}/{{tag}}.log", base.display());
        let (p, ctx, _, _dir) = setup();
        let sink = tokio::spawn(drive(ctx, writer(&template), fast()));
        p.submit(&batch("../../escaped", 0, 1)).await.unwrap();
        p.submit(&batch("..", 1, 1)).await.unwrap();
        p.submit(&batch("/etc/passwd", 2, 1)).await.unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        sink.await.unwrap().unwrap();
        let mut names: Vec<String> = fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["_..log", "_._.._escaped.log", "_etc_passwd.log"]);
        // Nothing appeared above the template's directory.
        let top: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(top, ["a"]);
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn retries_without_acking_until_the_path_is_writable() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: opening fails with ENOTDIR even as root.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"").unwrap();
        let template = format!("{}/sub/{{tag}}.log", blocker.display());
        let (p, ctx, metrics, _dir) = setup();
        let sink = tokio::spawn(drive(ctx, writer(&template), fast()));
        p.submit(&batch("x", 0, 2)).await.unwrap();
        p.submit(&batch("y", 50, 1)).await.unwrap();
        wait_for("retries", || counter(&metrics.output_errors) >= 3).await;
        assert_eq!(counter(&metrics.output_records), 0, "nothing acknowledged while failing");
        p.submit(&batch("x", 2, 1)).await.unwrap();
        fs::remove_file(&blocker).unwrap();
        p.buffer().close().await.unwrap();
        drop(p);
        sink.await.unwrap().unwrap();
        assert_eq!(numbers(&blocker.join("sub/x.log")), vec![0, 1, 2]);
        assert_eq!(numbers(&blocker.join("sub/y.log")), vec![50]);
        assert_eq!(counter(&metrics.output_records), 4);
    }
}
