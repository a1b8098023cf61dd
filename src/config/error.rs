//! [`ConfigError`], and what turns a span of the text into the file, line and key (or the
//! environment variable) an error names.

use super::env;
use std::ops::Range;
use std::path::PathBuf;
use toml::de::DeValue;

/// Why the config could not be loaded. Display is one line that names the file (or the
/// environment variable), the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named) but cannot be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, an unknown key, or a value of the wrong type or out of range.
    #[error("{}", place(file, Some(*line), key, message))]
    Parse { file: String, line: usize, key: String, message: String },
    /// Values that are fine alone but not together (duplicate names, a missing `path`).
    #[error("{}", place(file, *line, key, message))]
    Invalid { file: String, line: Option<usize>, key: String, message: String },
    /// A `BERTH_*` variable that is malformed or whose value is invalid.
    #[error("environment variable {var}: {}", keyed(key, message))]
    Env { var: String, key: String, message: String },
}

fn keyed(key: &str, message: &str) -> String {
    if key.is_empty() {
        message.to_string()
    } else {
        format!("{key}: {message}")
    }
}

fn place(file: &str, line: Option<usize>, key: &str, message: &str) -> String {
    match line {
        Some(line) => format!("{file}: line {line}: {}", keyed(key, message)),
        None => format!("{file}: {}", keyed(key, message)),
    }
}

/// What error reporting needs to turn a span into a place.
pub(super) struct Ctx<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub overrides: &'a [env::Override],
    pub bases: Vec<usize>,
    /// The document after overrides, kept to name the key an error span falls in.
    pub tree: DeValue<'a>,
}

impl Ctx<'_> {
    pub fn error(
        &self,
        span: Range<usize>,
        key: String,
        message: String,
        invalid: bool,
    ) -> ConfigError {
        let file = self.file.to_string();
        match env::origin(self.text, self.overrides, &self.bases, span.start) {
            env::Origin::Line(line) if invalid => {
                ConfigError::Invalid { file, line: Some(line), key, message }
            }
            env::Origin::Line(line) => ConfigError::Parse { file, line, key, message },
            env::Origin::Env(o) => ConfigError::Env { var: o.var.clone(), key, message },
        }
    }

    /// "line 7" or "BERTH_SINK__0__NAME".
    pub fn describe(&self, span: Range<usize>) -> String {
        match env::origin(self.text, self.overrides, &self.bases, span.start) {
            env::Origin::Line(line) => format!("line {line}"),
            env::Origin::Env(o) => o.var.clone(),
        }
    }

    /// Rephrase serde's messages in the file's vocabulary ("key", not "field") and attach
    /// the key path the span falls in.
    pub fn deserialize_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let (mut path, on_key) = env::key_at(&self.tree, &span);
        let mut message = e.message().to_string();
        if let Some((name, tail)) =
            message.strip_prefix("unknown field `").and_then(|r| r.split_once('`'))
        {
            if on_key {
                path.pop();
            }
            let expected = tail.strip_prefix(", ").map(|t| format!(" ({t})")).unwrap_or_default();
            message = format!("unknown key \"{name}\"{expected}");
        } else if let Some((name, _)) =
            message.strip_prefix("missing field `").and_then(|r| r.split_once('`'))
        {
            message = format!("missing key \"{name}\"");
        }
        let mut message = message.replace('`', "\"");
        if path.last().is_some_and(|s| matches!(s, env::Segment::Key(k) if is_secret(k))) {
            message = without_quoted(&message);
        }
        self.error(span, env::render_path(&path), message, false)
    }
}

/// Keys whose values are secrets: never in an error message, a log line or `check-config`.
pub(super) const SECRET_KEYS: [&str; 3] = ["shared_key", "password", "secret_access_key"];

pub(super) fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// A message with every "quoted" part (serde quotes the value it could not take) replaced
/// by `<redacted>`.
fn without_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push_str(if i % 2 == 0 { "<redacted>" } else { part });
    }
    out
}

pub(super) fn line_of(text: &str, at: usize) -> usize {
    1 + text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}
