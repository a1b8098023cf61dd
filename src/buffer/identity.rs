//! The buffer's identity: the instance id that, with an offset, names an event for ever
//! (record ids, the Elasticsearch `_id`), and the host it belongs to.
//!
//! A buffer directory baked into an AMI or restored from a snapshot on another instance
//! keeps its `instance-id`: two hosts would then hand out the same ids, and a sink that
//! settles duplicates by id (Elasticsearch `create` answering 409) would take the second
//! host's events for the first one's and drop them. So the id is bound to the host:
//! `<path>/host-id` records what the host was when the id was made — its systemd machine
//! id and, on EC2, its instance id as the Nitro hypervisor shows it in DMI, both read from
//! local files (the buffer opens before any network is asked, and must open without it).
//!
//! At open, a value known both in `host-id` and now that differs means another host: a new
//! instance id is made (logged at warn with both values, and reported as
//! [`RecoveryReport::host_changed`](super::RecoveryReport)). The events still buffered get
//! new ids with it — better stored twice than taken for the other host's. A value missing
//! on either side is learnt, never a mismatch (a buffer from before `host-id`, a container
//! without `/etc/machine-id`, an instance type without the DMI tag), so a source that comes
//! and goes never renames a buffer.

use super::storage::Storage;
use super::BufferError;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where the buffer learns which host it runs on. Each source is optional; a source that
/// is missing or unreadable says nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdSources {
    /// systemd's machine id (`/etc/machine-id`).
    pub machine_id: Option<PathBuf>,
    /// The EC2 instance id in DMI (`/sys/devices/virtual/dmi/id/board_asset_tag` on Nitro
    /// instances): no network call. Taken only when it looks like one (`i-…`).
    pub ec2_instance_id: Option<PathBuf>,
}

impl Default for HostIdSources {
    fn default() -> Self {
        HostIdSources {
            machine_id: Some(PathBuf::from("/etc/machine-id")),
            ec2_instance_id: Some(PathBuf::from("/sys/devices/virtual/dmi/id/board_asset_tag")),
        }
    }
}

/// What a host says it is; `None` where a source said nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostId {
    pub machine_id: Option<String>,
    pub ec2_instance_id: Option<String>,
}

const MACHINE_ID: &str = "machine-id";
const EC2_INSTANCE_ID: &str = "ec2-instance-id";

impl HostId {
    /// Reads every source (small local files only).
    pub fn read(sources: &HostIdSources) -> HostId {
        HostId {
            machine_id: sources.machine_id.as_deref().and_then(read_value).filter(|v| {
                // An image's placeholder, not an identity (systemd's first-boot marker).
                v != "uninitialized"
            }),
            ec2_instance_id: sources.ec2_instance_id.as_deref().and_then(read_value).filter(|v| {
                v.strip_prefix("i-").is_some_and(|hex| {
                    !hex.is_empty()
                        && hex.len() <= 32
                        && hex.bytes().all(|b| b.is_ascii_alphanumeric())
                })
            }),
        }
    }

    fn fields(&self) -> [(&'static str, Option<&str>); 2] {
        [
            (MACHINE_ID, self.machine_id.as_deref()),
            (EC2_INSTANCE_ID, self.ec2_instance_id.as_deref()),
        ]
    }

    fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// The `host-id` file's text: one `key value` line per known value.
    fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.fields() {
            if let Some(v) = v {
                out.push_str(k);
                out.push(' ');
                out.push_str(v);
                out.push('\n');
            }
        }
        out
    }

    /// Reads a `host-id` file's text; lines it does not know are ignored.
    fn parse(text: &str) -> HostId {
        let mut h = HostId::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(' ') else { continue };
            let v = Some(v.trim().to_owned()).filter(|v| valid_value(v));
            match k {
                MACHINE_ID => h.machine_id = v,
                EC2_INSTANCE_ID => h.ec2_instance_id = v,
                _ => {}
            }
        }
        h
    }

    /// The first value known on both sides that differs: `(key, ours, theirs)`.
    fn conflict<'a>(&'a self, now: &'a HostId) -> Option<(&'static str, &'a str, &'a str)> {
        self.fields().into_iter().zip(now.fields()).find_map(|((k, a), (_, b))| match (a, b) {
            (Some(a), Some(b)) if a != b => Some((k, a, b)),
            _ => None,
        })
    }

    /// `now`'s values, and ours where `now` has none.
    fn learn(&self, now: &HostId) -> HostId {
        HostId {
            machine_id: now.machine_id.clone().or_else(|| self.machine_id.clone()),
            ec2_instance_id: now.ec2_instance_id.clone().or_else(|| self.ec2_instance_id.clone()),
        }
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("(unknown)");
        }
        let mut first = true;
        for (k, v) in self.fields() {
            if let Some(v) = v {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                write!(f, "{k} {v}")?;
            }
        }
        Ok(())
    }
}

fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// The first line of a small file, if it holds a plausible value.
fn read_value(path: &Path) -> Option<String> {
    let mut text = String::new();
    let res = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_string(&mut text));
    if let Err(e) = res {
        tracing::debug!(path = %path.display(), error = %e, "host identity source not readable");
        return None;
    }
    let v = text.lines().next().unwrap_or("").trim().to_owned();
    valid_value(&v).then_some(v)
}

/// What open found: the id to use, and whether it is new because the host changed.
pub(super) struct Identity {
    pub instance_id: u64,
    pub host_changed: bool,
}

/// Reads (or makes) the instance id of the buffer at `dir` and binds it to this host.
pub(super) fn open(
    storage: &dyn Storage,
    dir: &Path,
    sources: &HostIdSources,
) -> Result<Identity, BufferError> {
    let id_path = dir.join("instance-id");
    let host_path = dir.join("host-id");
    let now = HostId::read(sources);
    let mut id = read_instance_id(storage, &id_path)?;
    let stored = match storage.read_small(&host_path) {
        Ok(b) => HostId::parse(&String::from_utf8_lossy(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HostId::default(),
        Err(source) => return Err(BufferError::InstanceId { path: host_path, source }),
    };
    let mut host_changed = false;
    if let Some(old) = id {
        if let Some((key, was, is)) = stored.conflict(&now) {
            let new: u64 = rand::random();
            tracing::warn!(
                path = %dir.display(),
                key,
                written_on = was,
                running_on = is,
                stored_host = %stored,
                this_host = %now,
                old_instance_id = %format_args!("{old:016x}"),
                new_instance_id = %format_args!("{new:016x}"),
                "the buffer was written on another host (a disk image copied between instances?): it takes a new instance id, so its event ids cannot be taken for the other host's; events still buffered get new ids and may be stored twice by sinks that had them"
            );
            id = Some(new);
            host_changed = true;
        }
    }
    let (instance_id, record) = match id {
        Some(i) if !host_changed => (i, stored.learn(&now)),
        Some(i) => (i, now.clone()),
        None => (rand::random(), now.clone()),
    };
    let id_is_new = id.is_none() || host_changed;
    if id_is_new {
        // The id first: a crash before the host is written leaves an id with no host,
        // which the next open adopts.
        write_atomic(storage, dir, &id_path, format!("{instance_id:016x}\n").as_bytes())?;
    }
    if record != stored {
        write_atomic(storage, dir, &host_path, record.render().as_bytes())?;
    }
    Ok(Identity { instance_id, host_changed })
}

/// The stored instance id; `None` when there is none (or it is unreadable: logged).
fn read_instance_id(storage: &dyn Storage, path: &Path) -> Result<Option<u64>, BufferError> {
    match storage.read_small(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            if let Ok(id) = u64::from_str_radix(text.trim(), 16) {
                return Ok(Some(id));
            }
            // Only disk damage gets here (it is written once, atomically). Record ids are
            // made of it: the events still buffered get new ones too.
            tracing::warn!(
                path = %path.display(),
                "instance id is unreadable, creating a new one: buffered events get new record ids, so a sink with stable ids may store those it had delivered once more"
            );
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BufferError::InstanceId { path: path.to_owned(), source }),
    }
}

fn write_atomic(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    data: &[u8],
) -> Result<(), BufferError> {
    let err = |source: io::Error| BufferError::InstanceId { path: path.to_owned(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    storage.write_file(&tmp, data, true).map_err(err)?;
    storage.rename(&tmp, path).map_err(err)?;
    storage.sync_dir(dir).map_err(|source| BufferError::SyncDir { path: dir.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::storage::DiskStorage;

    fn host(machine: Option<&str>, ec2: Option<&str>) -> HostId {
        HostId { machine_id: machine.map(str::to_owned), ec2_instance_id: ec2.map(str::to_owned) }
    }

    #[test]
    fn host_ids_round_trip_and_compare_only_what_both_know() {
        let a = host(Some("0123456789abcdef0123456789abcdef"), Some("i-0abc"));
        assert_eq!(HostId::parse(&a.render()), a);
        assert_eq!(HostId::parse("junk\nmachine-id  x \nother y\n"), host(Some("x"), None));
        let b = host(Some("0123456789abcdef0123456789abcdef"), Some("i-0def"));
        assert_eq!(a.conflict(&b), Some((EC2_INSTANCE_ID, "i-0abc", "i-0def")));
        assert_eq!(a.conflict(&host(None, Some("i-0abc"))), None);
        assert_eq!(a.conflict(&HostId::default()), None);
        assert_eq!(HostId::default().learn(&b), b);
        assert_eq!(a.learn(&host(None, Some("i-9"))), host(a.machine_id.as_deref(), Some("i-9")));
        assert_eq!(
            a.to_string(),
            "machine-id 0123456789abcdef0123456789abcdef, ec2-instance-id i-0abc"
        );
    }

    #[test]
    fn sources_that_say_nothing_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        let read = |m, e| HostId::read(&HostIdSources { machine_id: m, ec2_instance_id: e });
        assert_eq!(
            read(w("m", "0123abcd\n"), w("t", "i-0123456789abcdef0\n")),
            host(Some("0123abcd"), Some("i-0123456789abcdef0"))
        );
        assert_eq!(read(w("m", "uninitialized\n"), w("t", "Default string\n")), host(None, None));
        assert_eq!(read(w("m", "\n"), w("t", "i-\n")), host(None, None));
        assert_eq!(read(Some(dir.path().join("missing")), None), host(None, None));
    }

    fn sources(dir: &Path, machine: &str, ec2: Option<&str>) -> HostIdSources {
        std::fs::write(dir.join("machine-id"), format!("{machine}\n")).unwrap();
        let e = dir.join("asset-tag");
        std::fs::write(&e, ec2.unwrap_or("")).unwrap();
        HostIdSources { machine_id: Some(dir.join("machine-id")), ec2_instance_id: Some(e) }
    }

    #[test]
    fn an_id_is_kept_on_its_host_and_replaced_on_another() {
        let host_a = tempfile::tempdir().unwrap();
        let host_b = tempfile::tempdir().unwrap();
        let buf = tempfile::tempdir().unwrap();
        let a = sources(host_a.path(), "aaaa", Some("i-0aaa"));
        let first = open(&DiskStorage::default(), buf.path(), &a).unwrap();
        assert!(!first.host_changed);
        let text = std::fs::read_to_string(buf.path().join("host-id")).unwrap();
        assert_eq!(text, "machine-id aaaa\nec2-instance-id i-0aaa\n");
        let again = open(&DiskStorage::default(), buf.path(), &a).unwrap();
        assert_eq!((again.instance_id, again.host_changed), (first.instance_id, false));

        // The directory copied to host B (same image: same machine id, other instance).
        let b = sources(host_b.path(), "aaaa", Some("i-0bbb"));
        let moved = open(&DiskStorage::default(), buf.path(), &b).unwrap();
        assert!(moved.host_changed);
        assert_ne!(moved.instance_id, first.instance_id);
        let text = std::fs::read_to_string(buf.path().join("host-id")).unwrap();
        assert_eq!(text, "machine-id aaaa\nec2-instance-id i-0bbb\n");
        let again = open(&DiskStorage::default(), buf.path(), &b).unwrap();
        assert_eq!((again.instance_id, again.host_changed), (moved.instance_id, false));
    }

    #[test]
    fn a_source_that_comes_and_goes_renames_nothing() {
        let h = tempfile::tempdir().unwrap();
        let buf = tempfile::tempdir().unwrap();
        // A buffer from before host-id: its id is adopted.
        std::fs::write(buf.path().join("instance-id"), "00000000000000aa\n").unwrap();
        let id = open(&DiskStorage::default(), buf.path(), &sources(h.path(), "m1", None)).unwrap();
        assert_eq!((id.instance_id, id.host_changed), (0xaa, false));
        // The DMI tag appears, then vanishes; the machine id stays.
        let id = open(&DiskStorage::default(), buf.path(), &sources(h.path(), "m1", Some("i-01")))
            .unwrap();
        assert_eq!((id.instance_id, id.host_changed), (0xaa, false));
        let none = HostIdSources { machine_id: None, ec2_instance_id: None };
        let id = open(&DiskStorage::default(), buf.path(), &none).unwrap();
        assert_eq!((id.instance_id, id.host_changed), (0xaa, false));
        let text = std::fs::read_to_string(buf.path().join("host-id")).unwrap();
        assert_eq!(text, "machine-id m1\nec2-instance-id i-01\n", "what was learnt is kept");
        // Another machine id: another host.
        let id = open(&DiskStorage::default(), buf.path(), &sources(h.path(), "m2", None)).unwrap();
        assert!(id.host_changed);
        assert_ne!(id.instance_id, 0xaa);
    }
}
