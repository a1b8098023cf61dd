//! `[[sink]]`: every sink has a `name`, a `type` and a `match`; the other keys are those of
//! its type, one struct per type (`local`, `elasticsearch`, `cloudwatch`).
//!
//! A sink table is read by hand rather than as a serde enum tagged on `type` (which would
//! lose the spans and `deny_unknown_fields`, see `table`): the common keys are split off
//! and read first, then `type` says which struct the rest must be. A key of another type is
//! named as such ("only sinks of type "elasticsearch" have endpoints"), worked out from the
//! structs' keys.

use super::cloudwatch::{self, RawCloudWatch};
use super::elasticsearch::{self, RawElasticsearch};
use super::local::{self, RawFile, RawNull, RawStdout};
use super::table::{self, keys_of};
use super::values::{de_parsed, one_of, Pattern};
use super::{CloudWatchConfig, ConfigError, Ctx, ElasticsearchConfig, Format};
use crate::route::TagPattern;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Range;
use toml::de::DeValue;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique, non-empty.
    pub name: String,
    /// Which tags the sink receives (`match` in the file).
    pub match_: TagPattern,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    Stdout {
        format: Format,
    },
    /// `path` is non-empty; `{tag}` in it is the event tag.
    File {
        path: String,
        format: Format,
    },
    Null,
    Elasticsearch(Box<ElasticsearchConfig>),
    CloudWatchLogs(Box<CloudWatchConfig>),
}

/// `[[sink]]` as written: the keys every sink has, and those of its type in `body`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    /// Unique name, used in logs, metrics and the status page (and the sink's cursor file).
    pub name: Spanned<String>,
    /// `stdout`, `file`, `null`, `elasticsearch` or `cloudwatch_logs`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Fluentd tag pattern selecting the events this sink receives.
    #[serde(rename = "match", default = "default_match")]
    pub pattern: Pattern,
    /// The keys of the sink's type (read by [`read`], not by serde).
    #[serde(flatten, skip_deserializing)]
    pub body: RawSinkBody,
}

/// The keys of one sink type.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum RawSinkBody {
    Stdout(RawStdout),
    File(RawFile),
    Null(RawNull),
    Elasticsearch(Box<RawElasticsearch>),
    CloudwatchLogs(Box<RawCloudWatch>),
}

impl Default for RawSinkBody {
    fn default() -> Self {
        RawSinkBody::Null(RawNull {})
    }
}

fn default_match() -> Pattern {
    Pattern(TagPattern::match_all())
}

/// The sink types this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SinkType {
    Stdout,
    File,
    Null,
    Elasticsearch,
    CloudwatchLogs,
}

impl SinkType {
    const ALL: [SinkType; 5] = [
        SinkType::Stdout,
        SinkType::File,
        SinkType::Null,
        SinkType::Elasticsearch,
        SinkType::CloudwatchLogs,
    ];

    /// The order in which a key of another type is looked for, so that the error names
    /// the most telling owner first (the network sinks', then `path`, then `format`).
    const OWNERS: [SinkType; 4] =
        [SinkType::Elasticsearch, SinkType::CloudwatchLogs, SinkType::File, SinkType::Stdout];

    fn as_str(self) -> &'static str {
        match self {
            SinkType::Stdout => "stdout",
            SinkType::File => "file",
            SinkType::Null => "null",
            SinkType::Elasticsearch => "elasticsearch",
            SinkType::CloudwatchLogs => "cloudwatch_logs",
        }
    }

    /// The keys of this type's table, besides `name`, `type` and `match`.
    fn keys(self) -> Vec<&'static str> {
        match self {
            SinkType::Stdout => keys_of::<RawStdout>().to_vec(),
            SinkType::File => keys_of::<RawFile>().to_vec(),
            SinkType::Null => keys_of::<RawNull>().to_vec(),
            SinkType::Elasticsearch => elasticsearch::keys(),
            SinkType::CloudwatchLogs => cloudwatch::keys(),
        }
    }
}

impl fmt::Display for SinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SinkType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            let choices = SinkType::ALL.map(|t| (t.as_str(), t));
            one_of(s, "sink type", &choices)
        })
    }
}

impl Serialize for SinkType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Read the `i`th `[[sink]]` table: the common keys, then the keys of its type. Returns the
/// table's span with it (for "missing key" errors).
pub(super) fn read(
    i: usize,
    value: Spanned<DeValue<'_>>,
    ctx: &Ctx<'_>,
) -> Result<(Range<usize>, RawSink), ConfigError> {
    let span = value.span();
    let DeValue::Table(mut rest) = value.into_inner() else {
        let message = "invalid type: expected a table ([[sink]])".to_string();
        return Err(ctx.error(span, format!("sink[{i}]"), message, false));
    };
    let head = table::split_off(&mut rest, keys_of::<RawSink>());
    let mut sink: RawSink =
        table::read(span.clone(), head).map_err(|e| ctx.deserialize_error(&e))?;
    let kind = sink.kind;
    let own = kind.keys();
    let key = |k: &str| format!("sink[{i}].{k}");

    // A key no type has is unknown, as in any other table.
    let every: Vec<&str> = SinkType::ALL.iter().flat_map(|t| t.keys()).collect();
    if let Some((k, key_span)) = table::unknown_key(&rest, &every) {
        let expected: Vec<&str> = keys_of::<RawSink>().iter().copied().chain(own.clone()).collect();
        let message = table::unknown_key_message(k, &expected);
        return Err(ctx.error(key_span, format!("sink[{i}]"), message, false));
    }
    // A key of another type: its value is read as its owner reads it first, so that a bad
    // value is reported as such (as for a key of this type) before the key is refused.
    let mut foreign = Vec::new();
    for owner in SinkType::OWNERS {
        let mut part = toml::de::DeTable::new();
        for k in owner.keys().into_iter().filter(|k| !own.contains(k)) {
            if let Some((key, v)) = rest.remove_entry(k) {
                foreign.push((k, owner, v.span()));
                part.insert(key, v);
            }
        }
        if !part.is_empty() {
            read_body(owner, span.clone(), part, i, ctx)?;
        }
    }
    sink.body = read_body(kind, span.clone(), rest, i, ctx)?;
    // Then say whose key it is.
    if let Some((k, owner, value_span)) = foreign.into_iter().next() {
        let message = match (k, owner, kind) {
            ("path", ..) => {
                format!("only sinks of type \"file\" have a path (this one is \"{kind}\")")
            }
            ("format", ..) => format!("sinks of type \"{kind}\" have no format"),
            (_, SinkType::Elasticsearch, SinkType::CloudwatchLogs) => format!(
                "only sinks of type \"elasticsearch\" have {k} (cloudwatch_logs sinks share only {})",
                shared_keys(SinkType::Elasticsearch, SinkType::CloudwatchLogs).join(", ")
            ),
            _ => format!("only sinks of type \"{owner}\" have {k} (this one is \"{kind}\")"),
        };
        return Err(ctx.error(value_span, key(k), message, true));
    }
    Ok((span, sink))
}

/// Read the keys of a sink of type `kind` (without `name`, `type` and `match`).
fn read_body(
    kind: SinkType,
    span: Range<usize>,
    rest: toml::de::DeTable<'_>,
    i: usize,
    ctx: &Ctx<'_>,
) -> Result<RawSinkBody, ConfigError> {
    let de = |e: toml::de::Error| ctx.deserialize_error(&e);
    Ok(match kind {
        SinkType::Stdout => RawSinkBody::Stdout(table::read(span, rest).map_err(de)?),
        SinkType::File => RawSinkBody::File(table::read(span, rest).map_err(de)?),
        SinkType::Null => RawSinkBody::Null(table::read(span, rest).map_err(de)?),
        SinkType::Elasticsearch => {
            RawSinkBody::Elasticsearch(Box::new(elasticsearch::read(span, rest, i, ctx)?))
        }
        SinkType::CloudwatchLogs => {
            RawSinkBody::CloudwatchLogs(Box::new(cloudwatch::read(span, rest).map_err(de)?))
        }
    })
}

/// The keys of `a` that `b` has too, in `a`'s order.
fn shared_keys(a: SinkType, b: SinkType) -> Vec<&'static str> {
    let theirs = b.keys();
    a.keys().into_iter().filter(|k| theirs.contains(k)).collect()
}

/// Check the sinks together (names) and each on its own, into the public types.
pub(super) fn build(
    raw: Vec<(Range<usize>, RawSink)>,
    ctx: &Ctx<'_>,
) -> Result<Vec<SinkConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::Invalid {
            file: ctx.file.to_string(),
            line: None,
            key: "sink".to_string(),
            message: "no sink configured (add a [[sink]] table)".to_string(),
        });
    }
    let mut sinks = Vec::with_capacity(raw.len());
    let mut seen: Vec<(String, Range<usize>)> = Vec::new();
    for (i, (table_span, s)) in raw.into_iter().enumerate() {
        let name_span = s.name.span();
        let name = s.name.get_ref().clone();
        let invalid = |message: String| {
            ctx.error(name_span.clone(), format!("sink[{i}].name"), message, true)
        };
        if name.is_empty() {
            return Err(invalid("must not be empty".to_string()));
        }
        if !crate::buffer::cursor::valid_sink_name(&name) {
            return Err(invalid(format!("{name:?}: use letters, digits, '_', '-' and '.', at most 128 (it names the sink's cursor file)")));
        }
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(invalid(format!(
                "duplicate sink name {name:?} (first used on {})",
                ctx.describe(first.clone())
            )));
        }
        seen.push((name.clone(), name_span.clone()));
        let kind = match s.body {
            RawSinkBody::Stdout(b) => local::build_stdout(b),
            RawSinkBody::File(b) => local::build_file(b, i, table_span, ctx)?,
            RawSinkBody::Null(_) => SinkKind::Null,
            RawSinkBody::Elasticsearch(b) => SinkKind::Elasticsearch(Box::new(
                elasticsearch::build(&b, &name, i, table_span, ctx)?,
            )),
            RawSinkBody::CloudwatchLogs(b) => {
                SinkKind::CloudWatchLogs(Box::new(cloudwatch::build(&b, &name, i, ctx)?))
            }
        };
        sinks.push(SinkConfig { name, match_: s.pattern.0, kind });
    }
    Ok(sinks)
}

/// A sink back in the file's shape (secrets redacted), for printing.
pub(super) fn to_raw(s: &SinkConfig) -> RawSink {
    let (kind, body) = match &s.kind {
        SinkKind::Stdout { format } => {
            (SinkType::Stdout, RawSinkBody::Stdout(local::stdout_to_raw(*format)))
        }
        SinkKind::File { path, format } => {
            (SinkType::File, RawSinkBody::File(local::file_to_raw(path, *format)))
        }
        SinkKind::Null => (SinkType::Null, RawSinkBody::Null(RawNull {})),
        SinkKind::Elasticsearch(c) => (
            SinkType::Elasticsearch,
            RawSinkBody::Elasticsearch(Box::new(elasticsearch::to_raw(c))),
        ),
        SinkKind::CloudWatchLogs(c) => {
            (SinkType::CloudwatchLogs, RawSinkBody::CloudwatchLogs(Box::new(cloudwatch::to_raw(c))))
        }
    };
    RawSink {
        name: Spanned::new(0..0, s.name.clone()),
        kind,
        pattern: Pattern(s.match_.clone()),
        body,
    }
}
