//! Name templates shared by the sinks: Elasticsearch index names
//! (`logs-{ecs_task_definition_family}-%Y.%m.%d`) and CloudWatch Logs group and stream
//! names (`/ecs/{ecs_cluster}/{ecs_task_definition_family}`). [`Naming`] says which names a
//! template makes and so how field values are cleaned.
//!
//! A template is parsed once at config load; rendering is per event, into the caller's
//! reused buffer, and allocates nothing: `{field}` values are read straight from the record's
//! msgpack bytes by walking its top-level map without building it.
//!
//! Owns: template syntax, field lookup, date formatting, and making the result a valid index
//! name. Never fails per event: an unknown or unusable field renders as the fallback (the
//! issue: "never fails the batch"), and whatever the fields contain is cleaned into a name
//! Elasticsearch accepts (lowercase, none of `\ / * ? " < > | , #` or space, not starting
//! with `-`, `_` or `+`, not `.` or `..`, at most 255 bytes).
//!
//! Lossy choices, each covered by a test named after it:
//! - forbidden characters in field values become `_` (`forbidden_chars_become_underscore`);
//! - names longer than 255 bytes are cut at a character boundary (`long_names_are_cut`).

use crate::calendar::DateTime;
use crate::event::EventTime;
use crate::msgpack::{Reader, Token};

/// Elasticsearch's limit on an index name, in bytes.
pub const MAX_INDEX_BYTES: usize = 255;

/// What `{field}` renders as when neither the record nor the metadata has it.
pub const DEFAULT_FALLBACK: &str = "unknown";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
    Year,
    Month,
    Day,
    Hour,
}

/// CloudWatch Logs' limit on a log group or log stream name, in bytes.
pub const MAX_CLOUDWATCH_NAME_BYTES: usize = 512;

/// What kind of name a template makes: the characters allowed and the length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// An Elasticsearch index: lowercase, none of `\ / * ? " < > | , # :` or space, not
    /// starting with `-_+`, at most 255 bytes.
    Index,
    /// A CloudWatch Logs group: `[A-Za-z0-9._/#-]`, at most 512 bytes.
    LogGroup,
    /// A CloudWatch Logs stream: anything but `:` `*` (and control characters), at most 512
    /// bytes.
    LogStream,
}

impl Naming {
    fn max_bytes(self) -> usize {
        match self {
            Naming::Index => MAX_INDEX_BYTES,
            Naming::LogGroup | Naming::LogStream => MAX_CLOUDWATCH_NAME_BYTES,
        }
    }

    /// The byte an ASCII byte becomes in a name (`_` when it is not allowed).
    #[inline]
    fn clean(self, b: u8) -> u8 {
        match self {
            Naming::Index => clean_ascii(b),
            Naming::LogGroup => GROUP_BYTES[usize::from(b)],
            Naming::LogStream => STREAM_BYTES[usize::from(b)],
        }
    }

    fn what(self) -> &'static str {
        match self {
            Naming::Index => "index",
            Naming::LogGroup => "log group",
            Naming::LogStream => "log stream",
        }
    }
}

/// What each byte becomes in a CloudWatch log group name: `[A-Za-z0-9._/#-]` kept, the rest
/// `_` (non-ASCII is handled per character by `sanitize`).
static GROUP_BYTES: [u8; 256] = cloudwatch_bytes(true);
/// What each byte becomes in a log stream name: `:`, `*` and control characters to `_`,
/// everything else (UTF-8 included) kept.
static STREAM_BYTES: [u8; 256] = cloudwatch_bytes(false);

const fn cloudwatch_bytes(group: bool) -> [u8; 256] {
    let mut t = [b'_'; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let keep = if group {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'#' | b'-')
        } else {
            !matches!(b, b':' | b'*' | 0..=0x1f | 0x7f)
        };
        if keep {
            t[i] = b;
        }
        i += 1;
    }
    t
}

/// A parsed name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
    fallback: String,
    naming: Naming,
}

/// The Elasticsearch sink's name for it.
pub type IndexTemplate = NameTemplate;

impl NameTemplate {
    /// Parse an index name template (see [`NameTemplate::parse_as`]).
    pub fn parse(s: &str) -> Result<NameTemplate, String> {
        NameTemplate::parse_as(s, Naming::Index)
    }

    /// Parse `{field}` placeholders and `%Y %m %d %H %%`. The error names what is wrong, for
    /// the config error message.
    pub fn parse_as(s: &str, naming: Naming) -> Result<NameTemplate, String> {
        let what = naming.what();
        if s.is_empty() {
            return Err(format!("{what} template is empty"));
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    let rest = &s[at + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!("{what} template {s:?}: unclosed '{{' at byte {at}"));
                    };
                    let name = &rest[..end];
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("{what} template {s:?}: bad field name at byte {at}"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name.to_owned()));
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!("{what} template {s:?}: '}}' without '{{' at byte {at}"))
                }
                '%' => {
                    let part = match chars.next() {
                        Some((_, 'Y')) => Part::Year,
                        Some((_, 'm')) => Part::Month,
                        Some((_, 'd')) => Part::Day,
                        Some((_, 'H')) => Part::Hour,
                        Some((_, '%')) => {
                            lit.push('%');
                            continue;
                        }
                        Some((_, other)) => {
                            return Err(format!(
                            "{what} template {s:?}: unsupported '%{other}' (use %Y %m %d %H or %%)"
                        ))
                        }
                        None => return Err(format!("{what} template {s:?}: '%' at the end")),
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                }
                _ => {
                    // A literal the template author wrote is checked here, once, rather than
                    // silently rewritten per event like field values.
                    if naming == Naming::Index && c.is_uppercase() {
                        return Err(format!("{what} template {s:?}: index names must be lowercase ({c:?} at byte {at})"));
                    }
                    let bad = if c.is_ascii() {
                        naming.clean(c as u8) != c as u8
                    } else {
                        naming == Naming::LogGroup
                    };
                    if bad {
                        return Err(format!(
                            "{what} template {s:?}: {what} names cannot contain {c:?} (byte {at})"
                        ));
                    }
                    lit.push(c)
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if let (Naming::Index, Some(Part::Literal(first))) = (naming, parts.first()) {
            if first.starts_with(['-', '_', '+']) {
                return Err(format!(
                    "{what} template {s:?}: index names cannot start with '-', '_' or '+'"
                ));
            }
        }
        Ok(NameTemplate { parts, fallback: DEFAULT_FALLBACK.to_owned(), naming })
    }

    /// What an unknown `{field}` renders as (default `unknown`). Cleaned like any field value
    /// when rendered.
    pub fn with_fallback(mut self, fallback: &str) -> NameTemplate {
        self.fallback = fallback.to_owned();
        self
    }

    /// True when the name does not depend on the event (no fields, no dates): the caller
    /// may render it once.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Replace `out` with the name for one event. `record` and `metadata` are msgpack
    /// maps (either may be empty or malformed: fields then fall back). The record wins
    /// over the metadata. True when every `{field}` was found (none fell back).
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        record: &[u8],
        metadata: &[u8],
        time: EventTime,
    ) -> bool {
        out.clear();
        let mut complete = true;
        let date = DateTime::from_unix(time.secs);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Year => write_padded(out, date.year, 4),
                Part::Month => write_padded(out, i64::from(date.month), 2),
                Part::Day => write_padded(out, i64::from(date.day), 2),
                Part::Hour => write_padded(out, i64::from(date.hour), 2),
                Part::Field(name) => {
                    let found = [record, metadata]
                        .into_iter()
                        .find_map(|m| field(m, name.as_bytes()).filter(usable));
                    match found {
                        Some(s) => write_scalar(out, &s),
                        None => {
                            complete = false;
                            out.extend_from_slice(self.fallback.as_bytes())
                        }
                    }
                }
            }
        }
        sanitize(out, self.naming);
        if out.is_empty() {
            // Everything was cleaned away: the fallback is the only name left.
            out.extend_from_slice(self.fallback.as_bytes());
            sanitize(out, self.naming);
            if out.is_empty() {
                out.extend_from_slice(DEFAULT_FALLBACK.as_bytes());
            }
        }
        complete
    }
}

/// A top-level value usable in an index name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    Str(&'a [u8]),
    Int(i64),
    UInt(u64),
    Float(f64),
}

/// Whether a value writes any text: an empty string or a NaN/infinite float does not, and
/// falls through to the metadata, then to the fallback.
fn usable(s: &Scalar<'_>) -> bool {
    match s {
        Scalar::Str(b) => !b.is_empty(),
        Scalar::Float(f) => f.is_finite(),
        Scalar::Int(_) | Scalar::UInt(_) => true,
    }
}

fn write_scalar(out: &mut Vec<u8>, s: &Scalar<'_>) {
    match *s {
        Scalar::Str(b) => match std::str::from_utf8(b) {
            Ok(t) => out.extend_from_slice(t.as_bytes()),
            // Invalid UTF-8: keep the valid parts, `_` for the rest (sanitize keeps UTF-8).
            Err(_) => {
                for chunk in b.utf8_chunks() {
                    out.extend_from_slice(chunk.valid().as_bytes());
                    if !chunk.invalid().is_empty() {
                        out.push(b'_');
                    }
                }
            }
        },
        Scalar::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Scalar::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        Scalar::Float(f) if f.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes())
        }
        Scalar::Float(_) => {}
    }
}

fn write_padded(out: &mut Vec<u8>, v: i64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    for _ in s.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(s.as_bytes());
}

/// Make `out` a valid name in place: for indexes lowercase, forbidden characters to `_`,
/// leading `-_+` removed, `.`/`..` removed, cut to 255 bytes at a character boundary; for
/// CloudWatch names forbidden characters to `_` and cut to 512 bytes.
pub(crate) fn sanitize(out: &mut Vec<u8>, naming: Naming) {
    if naming != Naming::Index {
        let table = if naming == Naming::LogGroup { &GROUP_BYTES } else { &STREAM_BYTES };
        // The common case: a name that is already valid (group names' non-ASCII bytes are
        // never "valid" here, so they take the slow path below).
        if out.len() <= naming.max_bytes() && out.iter().all(|b| table[usize::from(*b)] == *b) {
            return;
        }
        let ascii = out.is_ascii();
        if naming == Naming::LogGroup && !ascii {
            // Only ASCII is allowed: each non-ASCII character becomes one `_`.
            let mut w = 0;
            for i in 0..out.len() {
                let b = out[i];
                if b.is_ascii() {
                    out[w] = naming.clean(b);
                    w += 1;
                } else if b & 0xc0 != 0x80 {
                    out[w] = b'_';
                    w += 1;
                }
            }
            out.truncate(w);
        } else {
            for b in out.iter_mut().filter(|b| b.is_ascii()) {
                *b = table[usize::from(*b)];
            }
        }
        cut_at_char(out, naming.max_bytes());
        return;
    }
    let ascii = out.is_ascii();
    if ascii {
        for b in out.iter_mut() {
            *b = clean_ascii(*b);
        }
    } else if let Ok(s) = std::str::from_utf8(out) {
        // Rare (non-ASCII field values): lowercase per char; one allocation is acceptable.
        let lowered: String = s
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c.is_ascii() { clean_ascii(c as u8) as char } else { c })
            .collect();
        out.clear();
        out.extend_from_slice(lowered.as_bytes());
    } else {
        // Not UTF-8 cannot happen (literals are str, fields are cleaned), but never emit it.
        for b in out.iter_mut() {
            *b = if b.is_ascii() { clean_ascii(*b) } else { b'_' };
        }
    }
    let lead = out.iter().take_while(|b| matches!(b, b'-' | b'_' | b'+')).count();
    out.drain(..lead);
    cut_at_char(out, MAX_INDEX_BYTES);
    if out == b"." || out == b".." {
        out.clear();
    }
}

/// Cut UTF-8 `out` to at most `max` bytes at a character boundary.
fn cut_at_char(out: &mut Vec<u8>, max: usize) {
    if out.len() > max {
        let mut cut = max;
        // Back up to a character boundary (continuation bytes are 0b10xx_xxxx).
        while cut > 0 && (out[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
    }
}

fn clean_ascii(b: u8) -> u8 {
    match b {
        b'\\' | b'/' | b'*' | b'?' | b'"' | b'<' | b'>' | b'|' | b' ' | b',' | b'#' | b':' => b'_',
        0..=0x1f | 0x7f => b'_',
        _ => b.to_ascii_lowercase(),
    }
}

// ---- msgpack: find a top-level field without building the map ----

/// The value of `key` in the msgpack map `map`, when it is a string or a number. `None`
/// when `map` is not a map, is malformed before the key is found, or lacks the key. The
/// first occurrence of a duplicate key wins.
pub(crate) fn field<'a>(map: &'a [u8], key: &[u8]) -> Option<Scalar<'a>> {
    let mut r = Reader::new(map);
    let n = r.map_len().ok()??;
    for _ in 0..n {
        match r.str_or_bin().ok()? {
            Some((k, _)) if k == key => return scalar(&mut r),
            Some(_) => {}
            None => {
                r.skip().ok()?; // a non-string key: skip it
            }
        }
        r.skip().ok()?;
    }
    None
}

/// Whether the msgpack map `map` has the top-level string keys `a` and `b` (any value),
/// in one walk over the map.
pub(crate) fn has_keys(map: &[u8], a: &[u8], b: &[u8]) -> (bool, bool) {
    let mut found = (false, false);
    let mut r = Reader::new(map);
    let Ok(Some(n)) = r.map_len() else { return found };
    for _ in 0..n {
        match r.str_or_bin() {
            Ok(Some((k, _))) => {
                found.0 |= k == a;
                found.1 |= k == b;
                if found == (true, true) {
                    break;
                }
            }
            Ok(None) => {
                if r.skip().is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
        if r.skip().is_err() {
            break;
        }
    }
    found
}

/// A str (or bin) or number value; `None` for any other type or malformed bytes.
fn scalar<'a>(r: &mut Reader<'a>) -> Option<Scalar<'a>> {
    Some(match r.read().ok()? {
        Token::Str(s) | Token::Bin(s) => Scalar::Str(s),
        Token::UInt(u) => Scalar::UInt(u),
        Token::Int(i) => Scalar::Int(i),
        Token::F32(f) => Scalar::Float(f64::from(f)),
        Token::F64(f) => Scalar::Float(f),
        Token::Nil | Token::Bool(_) | Token::Ext(..) | Token::Array(_) | Token::Map(_) => {
            return None
        }
    })
}

#[cfg(test)]
mod tests;
