//! `[buffer]`: the durable on-disk buffer — the keys as written, their checks and the
//! typed config (the storage engine's options).

use super::values::{de_parsed, default_true, one_of};
use super::values::{Dur, Size};
use super::{format_size, ConfigError, Ctx};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// `[buffer]`: see [`RawBuffer`] for each key's meaning.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub path: PathBuf,
    pub max_size: u64,
    pub segment_size: u64,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    pub when_full: WhenFull,
    pub direct_io: bool,
}

impl BufferConfig {
    /// The storage engine's options.
    pub fn options(&self) -> crate::buffer::BufferOptions {
        crate::buffer::BufferOptions {
            path: self.path.clone(),
            max_size: self.max_size,
            segment_size: self.segment_size,
            sync: self.sync,
            sync_interval: self.sync_interval,
            when_full: self.when_full,
            host_id: crate::buffer::HostIdSources::default(),
            tail_bytes: crate::buffer::TAIL_BYTES,
            direct_io: self.direct_io,
        }
    }
}

/// `[buffer]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    /// Directory of the buffer's segments, cursors and instance id; created if missing.
    #[serde(default = "default_buffer_path", deserialize_with = "de_buffer_path")]
    pub path: std::path::PathBuf,
    /// Total size of the segments on disk; when reached, see `when_full`.
    #[serde(default = "default_buffer_max_size")]
    pub max_size: Spanned<Size>,
    /// Size at which a segment file is closed and a new one started.
    #[serde(default = "default_segment_size")]
    pub segment_size: Spanned<Size>,
    /// `batch`: acks wait for a group-commit fsync; `always`: fsync per request;
    /// `never`: acks after write(2) (survives a crash of berth, not of the host).
    #[serde(default)]
    pub sync: SyncMode,
    /// With `sync = "never"`, the longest written data waits for an fsync. (With `batch`
    /// a group forms while the previous fsync runs: no added wait.)
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Spanned<Dur>,
    /// `block`: stop reading the sockets (TCP backpressure); `drop_newest`: refuse new
    /// events, counted, and do not ack them.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Segments are written with `O_DIRECT` (bypassing the page cache) where the
    /// filesystem takes it; `false`: through the page cache.
    #[serde(default = "default_true")]
    pub direct_io: bool,
}

impl Default for RawBuffer {
    fn default() -> Self {
        RawBuffer {
            path: default_buffer_path(),
            max_size: default_buffer_max_size(),
            segment_size: default_segment_size(),
            sync: SyncMode::default(),
            sync_interval: default_sync_interval(),
            when_full: WhenFull::default(),
            direct_io: true,
        }
    }
}

fn default_buffer_path() -> std::path::PathBuf {
    std::path::PathBuf::from("/var/lib/berth/buffer")
}

fn de_buffer_path<'de, D: Deserializer<'de>>(d: D) -> Result<std::path::PathBuf, D::Error> {
    let p = std::path::PathBuf::deserialize(d)?;
    if p.as_os_str().is_empty() {
        return Err(de::Error::custom(
            "must not be empty (a directory berth owns, e.g. /var/lib/berth/buffer)",
        ));
    }
    Ok(p)
}

fn default_buffer_max_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(2 << 30))
}

fn default_segment_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(64 << 20))
}

fn default_sync_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_millis(50)))
}

pub use crate::buffer::{SyncMode, WhenFull};

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            one_of(
                s,
                "sync mode",
                &[
                    ("batch", SyncMode::Batch),
                    ("always", SyncMode::Always),
                    ("never", SyncMode::Never),
                ],
            )
        })
    }
}

impl Serialize for SyncMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            SyncMode::Batch => "batch",
            SyncMode::Always => "always",
            SyncMode::Never => "never",
        })
    }
}

impl<'de> Deserialize<'de> for WhenFull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            one_of(
                s,
                "when_full",
                &[("block", WhenFull::Block), ("drop_newest", WhenFull::DropNewest)],
            )
        })
    }
}

impl Serialize for WhenFull {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop_newest",
        })
    }
}

/// The checks that involve several keys, into the typed config.
pub(super) fn build(raw: RawBuffer, ctx: &Ctx<'_>) -> Result<BufferConfig, ConfigError> {
    // The buffer frees space only by deleting sealed segments: it needs room for two.
    let (seg, max) = (&raw.segment_size, &raw.max_size);
    if seg.get_ref().0 == 0 || seg.get_ref().0 > max.get_ref().0 / 2 {
        // Point at whichever of the two the file (or environment) set.
        let (span, key) = if seg.span().is_empty() {
            (max.span(), "buffer.max_size")
        } else {
            (seg.span(), "buffer.segment_size")
        };
        return Err(ctx.error(
            span,
            key.into(),
            format!(
                "buffer.segment_size ({}) must be more than 0 and at most half of buffer.max_size ({})",
                format_size(seg.get_ref().0),
                format_size(max.get_ref().0)
            ),
            true,
        ));
    }
    if raw.sync_interval.get_ref().0.is_zero() {
        return Err(ctx.error(
            raw.sync_interval.span(),
            "buffer.sync_interval".into(),
            "must be more than 0s".into(),
            true,
        ));
    }

    Ok(BufferConfig {
        path: raw.path,
        max_size: raw.max_size.get_ref().0,
        segment_size: raw.segment_size.get_ref().0,
        sync: raw.sync,
        sync_interval: raw.sync_interval.get_ref().0,
        when_full: raw.when_full,
        direct_io: raw.direct_io,
    })
}

/// The typed config back in the file's shape.
pub(super) fn to_raw(c: &BufferConfig) -> RawBuffer {
    let none = 0..0;
    RawBuffer {
        path: c.path.clone(),
        max_size: Spanned::new(none.clone(), Size(c.max_size)),
        segment_size: Spanned::new(none.clone(), Size(c.segment_size)),
        sync: c.sync,
        sync_interval: Spanned::new(none, Dur(c.sync_interval)),
        when_full: c.when_full,
        direct_io: c.direct_io,
    }
}
