//! The sinks that write on this host: `type = "stdout"`, `"file"` and `"null"`, their keys
//! and their output format.

use super::sink::SinkKind;
use super::values::{de_parsed, one_of};
use super::{ConfigError, Ctx};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| one_of(s, "format", &[("json", Format::Json)]))
    }
}

impl Serialize for Format {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `type = "stdout"`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStdout {
    /// Output format: `json`, one `{"tag", "time", "record"}` object per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Spanned<Format>>,
}

/// `type = "file"`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    /// Output format, as for `stdout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Spanned<Format>>,
    /// File path, required; `{tag}` is replaced by the event tag (sanitised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
}

/// `type = "null"`: no keys of its own.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNull {}

fn format(f: Option<Spanned<Format>>) -> Format {
    f.map_or(Format::Json, Spanned::into_inner)
}

pub(super) fn build_stdout(s: RawStdout) -> SinkKind {
    SinkKind::Stdout { format: format(s.format) }
}

pub(super) fn build_file(
    s: RawFile,
    i: usize,
    table_span: Range<usize>,
    ctx: &Ctx<'_>,
) -> Result<SinkKind, ConfigError> {
    match s.path {
        None => {
            let message = "missing key \"path\" (sinks of type \"file\" need one)".to_string();
            Err(ctx.error(table_span, format!("sink[{i}]"), message, true))
        }
        Some(p) if p.get_ref().is_empty() => Err(ctx.error(
            p.span(),
            format!("sink[{i}].path"),
            "must not be empty".to_string(),
            true,
        )),
        Some(p) => Ok(SinkKind::File { path: p.into_inner(), format: format(s.format) }),
    }
}

pub(super) fn stdout_to_raw(format: Format) -> RawStdout {
    RawStdout { format: Some(Spanned::new(0..0, format)) }
}

pub(super) fn file_to_raw(path: &str, format: Format) -> RawFile {
    RawFile {
        path: Some(Spanned::new(0..0, path.to_string())),
        format: Some(Spanned::new(0..0, format)),
    }
}
