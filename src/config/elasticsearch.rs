//! `type = "elasticsearch"`: the typed sink config and its checks at load (issue 4).
//!
//! [`RawElasticsearch`] is the table as written (serde reads single values, so their errors
//! carry a line); [`build`] checks the keys together and makes what the sink runs with,
//! every error naming the line of the value at fault.

use super::aws::{self, AwsAuth, RawAws};
use super::network::{self, is_http_url, network_options, NetworkOptions, RawNetwork};
use super::table::{self, keys_of};
use super::values::{one_of, Size};
use super::{redact, ConfigError, Ctx};
use crate::template::IndexTemplate;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use super::network::{
    DEFAULT_CONCURRENCY, DEFAULT_FLUSH_INTERVAL, DEFAULT_TIMEOUT, MAX_CONCURRENCY,
};
pub const DEFAULT_INDEX_FALLBACK: &str = "unknown";
/// Under the 10 MiB request limit of the smallest Amazon OpenSearch Service domains.
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 5 << 20;
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 5000;
/// Larger bodies than this are refused by every managed offering (100 MiB on the largest).
pub const MAX_BATCH_MAX_BYTES: u64 = 100 << 20;
pub const MAX_BATCH_MAX_RECORDS: i64 = 100_000;

/// The bulk action of every item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Fails with 409 if the `_id` exists: with stable ids, exactly-once. Data streams
    /// accept only `create`.
    Create,
    /// Overwrites a document with the same `_id`.
    Index,
}

impl BulkAction {
    pub fn name(self) -> &'static str {
        match self {
            BulkAction::Create => "create",
            BulkAction::Index => "index",
        }
    }
}

/// Where `_id` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMode {
    /// `{instance_id:016x}-{offset:x}-{crc:08x}`: the buffer's identity of the event and a
    /// checksum of what its document is made of (tag, time, record), so a 409 means this
    /// same event is stored.
    Stable,
    /// No `_id`: the cluster assigns one (required by OpenSearch Serverless time series).
    None,
}

/// What the body looks like and where batches are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    pub action: BulkAction,
    pub id: IdMode,
    /// Ingest pipeline; empty for none.
    pub pipeline: String,
    /// Key of the event time added to each document (RFC 3339, ns).
    pub timestamp_key: String,
    /// Key of the Fluentd tag added to each document; empty to leave the tag out.
    pub tag_key: String,
    /// A body is cut before the item that would make it larger than this (a single item
    /// larger than this is sent alone: the server's 413 then decides).
    pub batch_max_bytes: usize,
    /// Items per body at most.
    pub batch_max_records: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            action: BulkAction::Create,
            id: IdMode::Stable,
            pipeline: String::new(),
            timestamp_key: "@timestamp".into(),
            tag_key: "tag".into(),
            batch_max_bytes: 5 << 20,
            batch_max_records: 5000,
        }
    }
}

impl EncodeOptions {
    /// True when a 409 on an item means "already delivered": `create` with stable ids.
    pub fn conflict_means_delivered(&self) -> bool {
        self.action == BulkAction::Create && self.id == IdMode::Stable
    }
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsAuth {
    None,
    Basic { username: String, password: String },
    AwsSigV4(SigV4Auth),
}

/// `auth.type = "aws_sigv4"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Auth {
    /// The signing region and the credentials (`auth.region`, `auth.role_arn`,
    /// `auth.external_id`).
    pub aws: AwsAuth,
    /// The signing name: `auth.service`.
    pub service: SigV4Service,
}

/// The signing name: Amazon OpenSearch Service or OpenSearch Serverless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigV4Service {
    Es,
    Aoss,
}

impl SigV4Service {
    pub fn name(self) -> &'static str {
        match self {
            SigV4Service::Es => "es",
            SigV4Service::Aoss => "aoss",
        }
    }
}

/// A validated `elasticsearch` sink.
#[derive(Debug, Clone)]
pub struct ElasticsearchConfig {
    /// Base URLs without a trailing `/`, tried in order.
    pub endpoints: Vec<String>,
    /// The index template as written (for printing).
    pub index: String,
    /// `index`, parsed (with `index_fallback`).
    pub template: IndexTemplate,
    pub index_fallback: String,
    /// Action, ids, pipeline, added keys and batch limits.
    pub encode: EncodeOptions,
    /// gzip request bodies.
    pub gzip: bool,
    /// `flush_interval`, `concurrency`, `timeout`, `max_retry_duration` and the dead-letter
    /// file: the keys both network sinks have.
    pub network: NetworkOptions,
    pub auth: EsAuth,
    /// Extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
}

/// `type = "elasticsearch"`: the sink's own keys. The keys both network sinks have are
/// in [`RawNetwork`], and `auth.region`, `auth.role_arn`, `auth.external_id` in
/// [`RawAws`], flattened into these tables by [`read`].
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawElasticsearch {
    /// Base URLs (`http://` or `https://`), tried in order: the next one after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Spanned<Vec<String>>>,
    /// Index name template: `{field}` from the record, strftime (`%Y.%m.%d`) on event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Spanned<String>>,
    /// What an unknown `{field}` renders as in the index name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_fallback: Option<Spanned<String>>,
    /// `create` (exactly-once with stable ids; data streams need it) or `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Spanned<String>>,
    /// `stable` (`_id` from the buffer's record identity and the document's checksum) or
    /// `none` (the cluster assigns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Spanned<String>>,
    /// Ingest pipeline; empty for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Spanned<String>>,
    /// Key of the event time added to each document (RFC 3339, ns) unless present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_key: Option<Spanned<String>>,
    /// Key of the tag added to each document; `""` leaves the tag out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_key: Option<Spanned<String>>,
    /// `gzip` (the default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Spanned<String>>,
    /// A `_bulk` body is cut before it grows past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_bytes: Option<Spanned<Size>>,
    /// Items per `_bulk` body at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_records: Option<Spanned<i64>>,
    /// `flush_interval`, `concurrency`, `timeout`, `max_retry_duration`,
    /// `dead_letter_path` (read by [`read`]).
    #[serde(flatten, skip_deserializing)]
    pub network: RawNetwork,
    /// `[sink.auth]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Spanned<RawAuth>>,
    /// `[sink.tls]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<RawTls>>,
}

/// `[sink.auth]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    /// `none`, `basic` or `aws_sigv4`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// `basic`: the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<Spanned<String>>,
    /// `basic`: the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Spanned<String>>,
    /// `aws_sigv4`: `es` or `aoss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Spanned<String>>,
    /// `aws_sigv4`: `region`, `role_arn`, `external_id` (read by [`read`]).
    #[serde(flatten, skip_deserializing)]
    pub aws: RawAws,
}

/// `[sink.tls]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// PEM file of CA certificates trusted in addition to the system's; empty for none.
    #[serde(default)]
    pub ca_file: String,
}

/// Every key of the sink's table, besides `name`, `type` and `match`.
pub(super) fn keys() -> Vec<&'static str> {
    let mut keys = keys_of::<RawElasticsearch>().to_vec();
    keys.extend(keys_of::<RawNetwork>());
    keys
}

/// Read the sink's table (without `name`, `type` and `match`), the shared network keys and
/// the AWS keys of `[sink.auth]` flattened into it.
pub(super) fn read(
    span: std::ops::Range<usize>,
    mut t: DeTable<'_>,
    i: usize,
    ctx: &Ctx<'_>,
) -> Result<RawElasticsearch, ConfigError> {
    let de = |e: toml::de::Error| ctx.deserialize_error(&e);
    let mut aws = RawAws::default();
    let auth_span = t.get("auth").map_or(span.clone(), |a| a.span());
    if let Some(DeValue::Table(auth)) = t.get_mut("auth").map(|a| a.get_mut()) {
        // Checked here, as serde would only list the keys of one of the two parts.
        let mut known = keys_of::<RawAuth>().to_vec();
        known.extend(keys_of::<RawAws>());
        if let Some((k, key_span)) = table::unknown_key(auth, &known) {
            let message = table::unknown_key_message(k, &known);
            return Err(ctx.error(key_span, format!("sink[{i}].auth"), message, false));
        }
        let part = table::split_off(auth, keys_of::<RawAws>());
        aws = table::read(auth_span, part).map_err(de)?;
    }
    let mut es: RawElasticsearch =
        table::read_flat(span, t, |es: &mut RawElasticsearch, n| es.network = n).map_err(de)?;
    if let Some(auth) = &mut es.auth {
        auth.get_mut().aws = aws;
    }
    Ok(es)
}

fn string(v: &Option<Spanned<String>>, default: &str) -> String {
    v.as_ref().map_or_else(|| default.to_string(), |v| v.get_ref().clone())
}

pub(super) fn build(
    s: &RawElasticsearch,
    name: &str,
    i: usize,
    table_span: std::ops::Range<usize>,
    ctx: &Ctx<'_>,
) -> Result<ElasticsearchConfig, ConfigError> {
    let key = |k: &str| format!("sink[{i}].{k}");
    let invalid = |span: std::ops::Range<usize>, k: &str, message: String| {
        ctx.error(span, key(k), message, true)
    };

    let Some(eps) = &s.endpoints else {
        return Err(invalid(
            table_span,
            "endpoints",
            "missing key \"endpoints\" (sinks of type \"elasticsearch\" need at least one URL)"
                .into(),
        ));
    };
    if eps.get_ref().is_empty() {
        return Err(invalid(eps.span(), "endpoints", "must list at least one URL".into()));
    }
    let mut endpoints = Vec::with_capacity(eps.get_ref().len());
    for e in eps.get_ref() {
        if !is_http_url(e) {
            return Err(invalid(
                eps.span(),
                "endpoints",
                format!("{e:?} is not an http:// or https:// URL with a host"),
            ));
        }
        let authority =
            e.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        if authority.contains('@') {
            // Printed by check-config and named in logs: never a place for a password.
            let message =
                "a URL with a user or password: put them in [sink.auth] (type = \"basic\") instead"
                    .to_string();
            return Err(invalid(eps.span(), "endpoints", message));
        }
        endpoints.push(e.trim_end_matches('/').to_string());
    }

    let Some(index) = &s.index else {
        return Err(invalid(
            table_span,
            "index",
            "missing key \"index\" (the index name template, e.g. \"logs-%Y.%m.%d\")".into(),
        ));
    };
    let index_fallback = string(&s.index_fallback, DEFAULT_INDEX_FALLBACK);
    if let Some(f) = &s.index_fallback {
        if f.get_ref().is_empty() {
            return Err(invalid(f.span(), "index_fallback", "must not be empty".into()));
        }
    }
    let template = IndexTemplate::parse(index.get_ref())
        .map_err(|e| invalid(index.span(), "index", e))?
        .with_fallback(&index_fallback);

    let action = match &s.action {
        None => BulkAction::Create,
        Some(a) => one_of(
            a.get_ref(),
            "action",
            &[("create", BulkAction::Create), ("index", BulkAction::Index)],
        )
        .map_err(|m| invalid(a.span(), "action", m))?,
    };
    let id = match &s.id {
        None => IdMode::Stable,
        Some(a) => {
            one_of(a.get_ref(), "id mode", &[("stable", IdMode::Stable), ("none", IdMode::None)])
                .map_err(|m| invalid(a.span(), "id", m))?
        }
    };
    let gzip = match &s.compression {
        None => true,
        Some(c) => one_of(c.get_ref(), "compression", &[("gzip", true), ("none", false)])
            .map_err(|m| invalid(c.span(), "compression", m))?,
    };
    let timestamp_key = string(&s.timestamp_key, "@timestamp");
    if let Some(t) = s.timestamp_key.as_ref().filter(|t| t.get_ref().is_empty()) {
        return Err(invalid(
            t.span(),
            "timestamp_key",
            "must not be empty (documents need their event time)".into(),
        ));
    }
    let batch_max_bytes =
        s.batch_max_bytes.as_ref().map_or(DEFAULT_BATCH_MAX_BYTES, |b| b.get_ref().0);
    if let Some(b) = &s.batch_max_bytes {
        if b.get_ref().0 == 0 || b.get_ref().0 > MAX_BATCH_MAX_BYTES {
            return Err(invalid(
                b.span(),
                "batch_max_bytes",
                "must be more than 0 and at most 100MiB".into(),
            ));
        }
    }
    let batch_max_records = match &s.batch_max_records {
        None => DEFAULT_BATCH_MAX_RECORDS,
        Some(n) if (1..=MAX_BATCH_MAX_RECORDS).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(invalid(
                n.span(),
                "batch_max_records",
                format!("must be from 1 to {MAX_BATCH_MAX_RECORDS}"),
            ))
        }
    };
    let network = network_options(&s.network, name, i, ctx)?;
    let auth = match &s.auth {
        None => EsAuth::None,
        Some(a) => auth(a, i, ctx)?,
    };
    let ca_file = s
        .tls
        .as_ref()
        .map(|t| t.get_ref().ca_file.clone())
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);

    Ok(ElasticsearchConfig {
        endpoints,
        index: index.get_ref().clone(),
        template,
        index_fallback,
        encode: EncodeOptions {
            action,
            id,
            pipeline: string(&s.pipeline, ""),
            timestamp_key,
            tag_key: string(&s.tag_key, "tag"),
            batch_max_bytes: usize::try_from(batch_max_bytes).unwrap_or(usize::MAX),
            batch_max_records,
        },
        gzip,
        network,
        auth,
        ca_file,
    })
}

fn auth(a: &Spanned<RawAuth>, i: usize, ctx: &Ctx<'_>) -> Result<EsAuth, ConfigError> {
    let r = a.get_ref();
    let key = |k: &str| format!("sink[{i}].auth.{k}");
    let kind = r.kind.get_ref().as_str();
    let sigv4_only = [
        ("region", &r.aws.region),
        ("service", &r.service),
        ("role_arn", &r.aws.role_arn),
        ("external_id", &r.aws.external_id),
    ];
    let basic_only = [("username", &r.username), ("password", &r.password)];
    let reject = |keys: &[(&str, &Option<Spanned<String>>)]| -> Result<(), ConfigError> {
        for (k, v) in keys {
            if let Some(v) = v {
                return Err(ctx.error(
                    v.span(),
                    key(k),
                    format!("auth type \"{kind}\" has no {k}"),
                    true,
                ));
            }
        }
        Ok(())
    };
    match kind {
        "none" => {
            reject(&sigv4_only)?;
            reject(&basic_only)?;
            Ok(EsAuth::None)
        }
        "basic" => {
            reject(&sigv4_only)?;
            let username = match &r.username {
                Some(u) if !u.get_ref().is_empty() => u.get_ref().clone(),
                Some(u) => {
                    return Err(ctx.error(
                        u.span(),
                        key("username"),
                        "must not be empty".into(),
                        true,
                    ))
                }
                None => {
                    return Err(ctx.error(
                        a.span(),
                        key("username"),
                        "missing key \"username\" (auth type \"basic\" needs one)".into(),
                        true,
                    ))
                }
            };
            let password = r.password.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
            Ok(EsAuth::Basic { username, password })
        }
        "aws_sigv4" => {
            reject(&basic_only)?;
            let service = match &r.service {
                None => SigV4Service::Es,
                Some(v) => one_of(
                    v.get_ref(),
                    "service",
                    &[("es", SigV4Service::Es), ("aoss", SigV4Service::Aoss)],
                )
                .map_err(|m| ctx.error(v.span(), key("service"), m, true))?,
            };
            let aws = aws::build(&r.aws, &format!("sink[{i}].auth"), ctx)?;
            Ok(EsAuth::AwsSigV4(SigV4Auth { aws, service }))
        }
        other => Err(ctx.error(
            r.kind.span(),
            key("type"),
            format!("unknown auth type {other:?} (expected \"none\", \"basic\" or \"aws_sigv4\")"),
            true,
        )),
    }
}

/// The public config back in the file's shape (password redacted), into `out`'s
/// elasticsearch keys.
pub(super) fn to_raw(c: &ElasticsearchConfig) -> RawElasticsearch {
    fn sp<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }
    let e = &c.encode;
    let auth = match &c.auth {
        EsAuth::None => RawAuth {
            kind: Spanned::new(0..0, "none".into()),
            username: None,
            password: None,
            aws: RawAws::default(),
            service: None,
        },
        EsAuth::Basic { username, password } => RawAuth {
            kind: Spanned::new(0..0, "basic".into()),
            username: sp(username.clone()),
            password: sp(redact(password)),
            aws: RawAws::default(),
            service: None,
        },
        EsAuth::AwsSigV4(a) => RawAuth {
            kind: Spanned::new(0..0, "aws_sigv4".into()),
            username: None,
            password: None,
            aws: aws::to_raw(&a.aws),
            service: sp(a.service.name().into()),
        },
    };
    RawElasticsearch {
        endpoints: sp(c.endpoints.clone()),
        index: sp(c.index.clone()),
        index_fallback: sp(c.index_fallback.clone()),
        action: sp(e.action.name().into()),
        id: sp(match e.id {
            IdMode::Stable => "stable".into(),
            IdMode::None => "none".into(),
        }),
        pipeline: sp(e.pipeline.clone()),
        timestamp_key: sp(e.timestamp_key.clone()),
        tag_key: sp(e.tag_key.clone()),
        compression: sp(if c.gzip { "gzip".into() } else { "none".into() }),
        batch_max_bytes: sp(Size(e.batch_max_bytes as u64)),
        batch_max_records: sp(e.batch_max_records as i64),
        network: network::to_raw(&c.network),
        auth: sp(auth),
        tls: c.ca_file.as_ref().and_then(|f| sp(RawTls { ca_file: f.display().to_string() })),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, SinkKind};
    use super::*;
    use std::time::Duration;

    const FILE: &str = "/etc/berth/berth.toml";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, FILE, std::iter::empty::<(&str, &str)>())
    }

    fn es(text: &str) -> ElasticsearchConfig {
        let c = load(text).unwrap_or_else(|e| panic!("{e}"));
        match &c.sinks[0].kind {
            SinkKind::Elasticsearch(es) => (**es).clone(),
            k => panic!("not elasticsearch: {k:?}"),
        }
    }

    fn err(text: &str) -> String {
        match load(text) {
            Ok(c) => panic!("expected an error, loaded {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const MIN: &str = "[[sink]]\nname = \"search\"\ntype = \"elasticsearch\"\nendpoints = [\"http://127.0.0.1:9200/\"]\nindex = \"logs-%Y.%m.%d\"\n";

    #[test]
    fn defaults() {
        let c = es(MIN);
        assert_eq!(c.endpoints, ["http://127.0.0.1:9200"]);
        assert_eq!(c.encode, EncodeOptions::default());
        assert!(c.gzip);
        assert_eq!(
            (c.network.flush_interval, c.network.timeout, c.network.concurrency),
            (DEFAULT_FLUSH_INTERVAL, DEFAULT_TIMEOUT, 4)
        );
        assert_eq!(
            c.network.dead_letter_path,
            PathBuf::from("/var/lib/berth/dead-letter/search.ndjson")
        );
        assert_eq!(c.auth, EsAuth::None);
        assert_eq!(c.ca_file, None);
        assert_eq!(c.index_fallback, "unknown");
        assert_eq!(c.network.max_retry_duration, None, "retried for ever");
    }

    #[test]
    fn max_retry_duration_empty_or_zero_is_for_ever_and_at_least_the_timeout() {
        for v in ["\"\"", "\"0s\""] {
            assert_eq!(
                es(&format!("{MIN}max_retry_duration = {v}\n")).network.max_retry_duration,
                None,
                "{v}"
            );
        }
        let c = es(&format!("{MIN}timeout = \"5s\"\nmax_retry_duration = \"5s\"\n"));
        assert_eq!(c.network.max_retry_duration, Some(Duration::from_secs(5)));
        let got = err(&format!("{MIN}max_retry_duration = \"10s\"\n"));
        assert!(got.contains("line 6: sink[0].max_retry_duration: must be \"\" or \"0s\" (retry for ever), or at least the request timeout (30s)"), "{got}");
        let got = err(&format!("{MIN}max_retry_duration = \"soon\"\n"));
        assert!(got.contains("sink[0].max_retry_duration"), "{got}");
        let got = err("[[sink]]\nname = \"s\"\ntype = \"stdout\"\nmax_retry_duration = \"1m\"\n");
        assert!(
            got.contains("only sinks of type \"elasticsearch\" have max_retry_duration"),
            "{got}"
        );
        // Printed and loaded again: the limit, or "" for none, survives.
        for (v, want) in [("\"90s\"", Some(Duration::from_secs(90))), ("\"\"", None)] {
            let printed =
                load(&format!("{MIN}max_retry_duration = {v}\n")).unwrap().to_redacted_toml();
            assert_eq!(es(&printed).network.max_retry_duration, want, "{printed}");
        }
    }

    #[test]
    fn every_key() {
        let c = es(&format!(
            "{MIN}action = \"index\"\nid = \"none\"\npipeline = \"p\"\ntimestamp_key = \"ts\"\ntag_key = \"\"\ncompression = \"none\"\n\
             batch_max_bytes = \"1MiB\"\nbatch_max_records = 10\nflush_interval = \"200ms\"\nconcurrency = 1\ntimeout = \"5s\"\n\
             dead_letter_path = \"/tmp/dl.ndjson\"\nindex_fallback = \"none\"\n\
             [sink.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"p\"\n[sink.tls]\nca_file = \"/etc/ca.pem\"\n"
        ));
        assert_eq!(c.encode.action, BulkAction::Index);
        assert_eq!(c.encode.id, IdMode::None);
        assert_eq!(
            (
                c.encode.pipeline.as_str(),
                c.encode.timestamp_key.as_str(),
                c.encode.tag_key.as_str()
            ),
            ("p", "ts", "")
        );
        assert_eq!((c.encode.batch_max_bytes, c.encode.batch_max_records), (1 << 20, 10));
        assert!(!c.gzip);
        assert_eq!(
            (c.network.flush_interval, c.network.timeout),
            (Duration::from_millis(200), Duration::from_secs(5))
        );
        assert_eq!(c.auth, EsAuth::Basic { username: "u".into(), password: "p".into() });
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.network.dead_letter_path, PathBuf::from("/tmp/dl.ndjson"));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nindex = \"i\"\n", "line 1: sink[0].endpoints: missing key \"endpoints\""),
            ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"http://h\"]\n", "line 1: sink[0].index: missing key \"index\""),
            ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = []\nindex = \"i\"\n", "line 4: sink[0].endpoints: must list at least one URL"),
            ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"ftp://h\"]\nindex = \"i\"\n", "line 4: sink[0].endpoints: \"ftp://h\" is not an http:// or https:// URL"),
            ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"https://u:secret@h\"]\nindex = \"i\"\n", "line 4: sink[0].endpoints: a URL with a user or password: put them in [sink.auth]"),
            (&format!("{MIN}action = \"update\"\n"), "line 6: sink[0].action: unknown action \"update\""),
            (&format!("{MIN}id = \"random\"\n"), "line 6: sink[0].id: unknown id mode"),
            (&format!("{MIN}compression = \"zstd\"\n"), "line 6: sink[0].compression: unknown compression \"zstd\""),
            (&format!("{MIN}concurrency = 0\n"), "line 6: sink[0].concurrency: must be from 1 to 64"),
            (&format!("{MIN}concurrency = 65\n"), "line 6: sink[0].concurrency: must be from 1 to 64"),
            (&format!("{MIN}batch_max_records = 0\n"), "line 6: sink[0].batch_max_records: must be from 1 to 100000"),
            (&format!("{MIN}batch_max_bytes = \"1GiB\"\n"), "line 6: sink[0].batch_max_bytes: must be more than 0 and at most 100MiB"),
            (&format!("{MIN}timeout = \"0s\"\n"), "line 6: sink[0].timeout: must be more than 0s"),
            (&format!("{MIN}path = \"/x\"\n"), "line 6: sink[0].path: only sinks of type \"file\" have a path"),
            (&format!("{MIN}format = \"json\"\n"), "line 6: sink[0].format: sinks of type \"elasticsearch\" have no format"),
            (&format!("{MIN}[sink.auth]\ntype = \"aws_sigv4\"\nservice = \"s3\"\n"), "line 8: sink[0].auth.service: unknown service \"s3\" (expected \"es\" or \"aoss\")"),
            (&format!("{MIN}[sink.auth]\ntype = \"aws_sigv4\"\nexternal_id = \"x\"\n"), "line 8: sink[0].auth.external_id: external_id needs role_arn"),
            (&format!("{MIN}[sink.auth]\ntype = \"aws_sigv4\"\nusername = \"u\"\n"), "line 8: sink[0].auth.username: auth type \"aws_sigv4\" has no username"),
            (&format!("{MIN}[sink.auth]\ntype = \"kerberos\"\n"), "line 7: sink[0].auth.type: unknown auth type \"kerberos\""),
            (&format!("{MIN}[sink.auth]\ntype = \"basic\"\n"), "sink[0].auth.username: missing key \"username\""),
            (&format!("{MIN}[sink.auth]\ntype = \"none\"\nusername = \"u\"\n"), "line 8: sink[0].auth.username: auth type \"none\" has no username"),
            (&format!("{MIN}[sink.auth]\ntype = \"basic\"\nusername = \"u\"\nregion = \"x\"\n"), "line 9: sink[0].auth.region: auth type \"basic\" has no region"),
            (&format!("{MIN}[sink.tls]\nca = \"x\"\n"), "unknown key \"ca\""),
            (&format!("{MIN}endpoint = \"x\"\n"), "unknown key \"endpoint\""),
            ("[[sink]]\nname = \"s\"\ntype = \"stdout\"\nendpoints = [\"http://h\"]\n", "line 4: sink[0].endpoints: only sinks of type \"elasticsearch\" have endpoints (this one is \"stdout\")"),
            ("[[sink]]\nname = \"s\"\ntype = \"file\"\npath = \"/x\"\n[sink.auth]\ntype = \"none\"\n", "sink[0].auth: only sinks of type \"elasticsearch\" have auth"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "for:\n{text}\ngot:  {got}\nwant: {want}");
            assert!(got.starts_with(FILE), "{got}");
        }
    }

    #[test]
    fn printed_config_loads_again_with_the_password_redacted() {
        let text = format!(
            "{MIN}[sink.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"secret\"\n"
        );
        let printed = load(&text).unwrap().to_redacted_toml();
        assert!(!printed.contains("secret"), "{printed}");
        let again = es(&printed);
        assert_eq!(again.endpoints, ["http://127.0.0.1:9200"]);
        assert!(matches!(again.auth, EsAuth::Basic { ref username, .. } if username == "u"));
    }

    #[test]
    fn aws_sigv4_loads_and_prints_again() {
        let c = es(&format!("{MIN}[sink.auth]\ntype = \"aws_sigv4\"\n"));
        assert_eq!(
            c.auth,
            EsAuth::AwsSigV4(SigV4Auth { aws: AwsAuth::default(), service: SigV4Service::Es })
        );
        let text = format!(
            "{MIN}[sink.auth]\ntype = \"aws_sigv4\"\nregion = \"eu-west-1\"\nservice = \"aoss\"\nrole_arn = \"arn:aws:iam::123456789012:role/logs\"\nexternal_id = \"x1\"\n"
        );
        let want = EsAuth::AwsSigV4(SigV4Auth {
            aws: AwsAuth {
                region: Some("eu-west-1".into()),
                role_arn: Some("arn:aws:iam::123456789012:role/logs".into()),
                external_id: Some("x1".into()),
            },
            service: SigV4Service::Aoss,
        });
        assert_eq!(es(&text).auth, want);
        assert_eq!(es(&load(&text).unwrap().to_redacted_toml()).auth, want);
        let empty = es(&format!(
            "{MIN}[sink.auth]\ntype = \"aws_sigv4\"\nrole_arn = \"\"\nregion = \"\"\n"
        ));
        assert_eq!(
            empty.auth,
            EsAuth::AwsSigV4(SigV4Auth { aws: AwsAuth::default(), service: SigV4Service::Es })
        );
    }
}
