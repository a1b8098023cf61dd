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

use crate::event::EventTime;

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
        let date = Date::of(time);
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

/// Civil UTC date parts of an event time.
struct Date {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
}

impl Date {
    fn of(t: EventTime) -> Date {
        let days = t.secs.div_euclid(86_400);
        let hour = (t.secs.rem_euclid(86_400) / 3600) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day, hour }
    }
}

// ---- msgpack: find a top-level field without building the map ----

/// The value of `key` in the msgpack map `map`, when it is a string or a number. `None`
/// when `map` is not a map, is malformed before the key is found, or lacks the key. The
/// first occurrence of a duplicate key wins.
pub(crate) fn field<'a>(map: &'a [u8], key: &[u8]) -> Option<Scalar<'a>> {
    let mut r = Walk { buf: map, pos: 0 };
    let n = r.map_len()?;
    for _ in 0..n {
        let k = r.str_value();
        match k {
            Some(k) if k == key => return r.scalar(),
            _ => {
                if k.is_none() {
                    r.skip()?; // a non-string key: skip it
                }
                r.skip()?;
            }
        }
    }
    None
}

/// Whether the msgpack map `map` has the top-level string keys `a` and `b` (any value),
/// in one walk over the map.
pub(crate) fn has_keys(map: &[u8], a: &[u8], b: &[u8]) -> (bool, bool) {
    let mut found = (false, false);
    let mut r = Walk { buf: map, pos: 0 };
    let Some(n) = r.map_len() else { return found };
    for _ in 0..n {
        match r.str_value() {
            Some(k) => {
                found.0 |= k == a;
                found.1 |= k == b;
                if found == (true, true) {
                    break;
                }
            }
            None => {
                if r.skip().is_none() {
                    break;
                }
            }
        }
        if r.skip().is_none() {
            break;
        }
    }
    found
}

struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn map_len(&mut self) -> Option<u64> {
        let m = *self.take(1)?.first()?;
        match m {
            0x80..=0x8f => Some(u64::from(m & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }

    /// A str (or bin) value's bytes; on anything else the position is left unchanged.
    fn str_value(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        let m = *self.buf.get(start)?;
        self.pos += 1;
        let len = match m {
            0xa0..=0xbf => Some(u64::from(m & 0x1f)),
            0xd9 | 0xc4 => self.be(1),
            0xda | 0xc5 => self.be(2),
            0xdb | 0xc6 => self.be(4),
            _ => None,
        };
        let s = len.and_then(|l| self.take(usize::try_from(l).ok()?));
        if s.is_none() {
            self.pos = start;
        }
        s
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        if let Some(s) = self.str_value() {
            return Some(Scalar::Str(s));
        }
        let m = *self.take(1)?.first()?;
        Some(match m {
            0x00..=0x7f => Scalar::UInt(u64::from(m)),
            0xe0..=0xff => Scalar::Int(i64::from(m as i8)),
            0xcc => Scalar::UInt(self.be(1)?),
            0xcd => Scalar::UInt(self.be(2)?),
            0xce => Scalar::UInt(self.be(4)?),
            0xcf => Scalar::UInt(self.be(8)?),
            0xd0 => Scalar::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Scalar::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Scalar::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Scalar::Int(self.be(8)? as i64),
            0xca => Scalar::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Scalar::Float(f64::from_bits(self.be(8)?)),
            _ => return None,
        })
    }

    /// Skip one complete value. Iterative: a count of values still to skip, so nesting
    /// costs no stack; each value consumes at least one byte, so claimed counts larger
    /// than the input end in `None` at the input's end.
    fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let m = *self.take(1)?.first()?;
            let data = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => {
                    pending += 2 * u64::from(m & 0x0f);
                    0
                }
                0x90..=0x9f => {
                    pending += u64::from(m & 0x0f);
                    0
                }
                0xa0..=0xbf => usize::from(m & 0x1f),
                0xc4 | 0xd9 => self.be(1)? as usize,
                0xc5 | 0xda => self.be(2)? as usize,
                0xc6 | 0xdb => usize::try_from(self.be(4)?).ok()?,
                0xc7 => self.be(1)? as usize + 1,
                0xc8 => self.be(2)? as usize + 1,
                0xc9 => usize::try_from(self.be(4)?).ok()?.checked_add(1)?,
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xca | 0xce | 0xd2 => 4,
                0xcb | 0xcf | 0xd3 => 8,
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xdc => {
                    pending += self.be(2)?;
                    0
                }
                0xdd => {
                    pending += self.be(4)?;
                    0
                }
                0xde => {
                    pending += 2 * self.be(2)?;
                    0
                }
                0xdf => {
                    pending += 2 * self.be(4)?;
                    0
                }
                _ => return None, // 0xc1, never used
            };
            self.take(data)?;
            if pending > (self.buf.len() - self.pos) as u64 {
                return None; // more values claimed than bytes left
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    fn rec(pairs: &[(&str, Value)]) -> Vec<u8> {
        enc(&Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect()))
    }

    fn render(t: &str, record: &[u8], meta: &[u8], secs: i64) -> String {
        let mut out = b"stale".to_vec();
        IndexTemplate::parse(t).unwrap().render(&mut out, record, meta, EventTime::new(secs, 0));
        String::from_utf8(out).unwrap()
    }

    const T: i64 = 1_795_330_805; // 2026-11-22T07:00:05Z

    #[test]
    fn parse_errors() {
        for (t, want) in [
            ("", "empty"),
            ("logs-{x", "unclosed"),
            ("logs-{}", "bad field name"),
            ("logs-x}", "without"),
            ("logs-%q", "unsupported '%q'"),
            ("logs-%", "at the end"),
            ("Logs-%Y", "must be lowercase ('L' at byte 0)"),
            ("logs *", "cannot contain ' ' (byte 4)"),
            ("logs-a,b", "cannot contain ','"),
            ("_logs", "cannot start with"),
        ] {
            let e = IndexTemplate::parse(t).unwrap_err();
            assert!(e.contains(want), "{t:?}: {e}");
        }
    }

    #[test]
    fn table() {
        let family = rec(&[
            ("log", Value::from("x")),
            ("ecs_task_definition_family", Value::from("Web-App")),
            ("n", Value::from(-42)),
            ("u", Value::from(7u64)),
            ("f", Value::F64(1.5)),
            ("nan", Value::F64(f64::NAN)),
            ("b", Value::Boolean(true)),
            ("nested", Value::Map(vec![(Value::from("k"), Value::from("v"))])),
            ("empty", Value::from("")),
        ]);
        let meta = rec(&[("cluster", Value::from("prod")), ("n", Value::from("meta-loses"))]);
        for (t, want) in [
            ("logs-{ecs_task_definition_family}-%Y.%m.%d", "logs-web-app-2026.11.22"),
            ("logs-%Y.%m.%d-%H", "logs-2026.11.22-07"),
            ("{n}-{u}-{f}", "42-7-1.5"), // a leading '-' is removed
            ("x{n}", "x-42"),
            ("logs-{cluster}", "logs-prod"),
            ("logs-{missing}", "logs-unknown"),
            ("logs-{b}", "logs-unknown"),
            ("logs-{nested}", "logs-unknown"),
            ("logs-{empty}", "logs-unknown"),
            ("logs-{nan}", "logs-unknown"),
            ("100%%-{u}", "100%-7"),
            ("static.é", "static.é"),
        ] {
            assert_eq!(render(t, &family, &meta, T), want, "{t}");
        }
    }

    #[test]
    fn custom_fallback_and_metadata_only() {
        let tpl = IndexTemplate::parse("a-{k}").unwrap().with_fallback("None Given");
        assert!(
            IndexTemplate::parse("{k}").is_ok(),
            "a field may start the name: cleaned when rendered"
        );
        let mut out = Vec::new();
        tpl.render(&mut out, &[], &[0xc1], EventTime::new(0, 0));
        assert_eq!(out, b"a-none_given");
        tpl.render(&mut out, &[0x80], &rec(&[("k", Value::from("M"))]), EventTime::new(0, 0));
        assert_eq!(out, b"a-m");
    }

    #[test]
    fn forbidden_chars_become_underscore() {
        let r = rec(&[("f", Value::from("A\\b/c*d?e\"f<g>h|i j,k#l:m\tn"))]);
        assert_eq!(render("{f}", &r, &[], T), "a_b_c_d_e_f_g_h_i_j_k_l_m_n");
        let r = rec(&[("f", Value::from("_-+Lead"))]);
        assert_eq!(render("{f}", &r, &[], T), "lead");
        let r = rec(&[("f", Value::from(".."))]);
        assert_eq!(render("{f}", &r, &[], T), "unknown");
        let r = rec(&[("f", Value::from("ÄÖ-Straße"))]);
        assert_eq!(render("{f}", &r, &[], T), "äö-straße");
    }

    #[test]
    fn long_names_are_cut() {
        let r = rec(&[("f", Value::from("é".repeat(200)))]);
        let s = render("{f}", &r, &[], T);
        assert!(s.len() <= MAX_INDEX_BYTES && s.len() == 254, "{}", s.len());
        let r = rec(&[("f", Value::from("a".repeat(300)))]);
        assert_eq!(render("{f}", &r, &[], T).len(), 255);
    }

    #[test]
    fn dates_before_epoch_and_far_future() {
        assert_eq!(render("%Y.%m.%d.%H", &[], &[], -1), "1969.12.31.23");
        assert_eq!(render("%Y.%m.%d", &[], &[], 951_782_400), "2000.02.29");
        assert_eq!(render("%Y.%m.%d", &[], &[], 4_107_542_400), "2100.03.01");
    }

    #[test]
    fn field_walk_skips_every_kind_of_value_and_survives_garbage() {
        let big = Value::Array((0..20).map(Value::from).collect());
        let r = rec(&[
            ("a", Value::Nil),
            ("bin", Value::Binary(vec![1, 2, 3])),
            ("ext", Value::Ext(0, vec![0; 8])),
            ("ext3", Value::Ext(5, vec![0; 3])),
            ("big", big),
            ("s", Value::from("x".repeat(70_000))),
            ("f32", Value::F32(2.5)),
            ("k", Value::from("found")),
        ]);
        assert_eq!(field(&r, b"k"), Some(Scalar::Str(b"found")));
        assert_eq!(field(&r, b"f32"), Some(Scalar::Float(2.5)));
        assert_eq!(has_keys(&r, b"ext3", b"nope"), (true, false));
        assert_eq!(has_keys(&r, b"k", b"a"), (true, true));
        // Non-string keys are skipped.
        let odd = enc(&Value::Map(vec![
            (Value::from(1), Value::from(2)),
            (Value::from("k"), Value::from(3)),
        ]));
        assert_eq!(field(&odd, b"k"), Some(Scalar::UInt(3)));
        for cut in 0..r.len() {
            let _ = field(&r[..cut], b"k");
            let _ = has_keys(&r[..cut], b"k", b"a");
        }
        // A claimed huge map costs nothing.
        assert_eq!(field(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x91], b"k"), None);
        assert_eq!(field(&[0x81, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff], b"k"), None);
        assert_eq!(field(&[0x91, 0x01], b"k"), None, "not a map");
    }

    #[test]
    fn render_reuses_the_buffer() {
        let tpl = IndexTemplate::parse("logs-{k}-%Y").unwrap();
        let r = rec(&[("k", Value::from("v"))]);
        let mut out = Vec::with_capacity(64);
        let cap = out.capacity();
        for _ in 0..100 {
            tpl.render(&mut out, &r, &[], EventTime::new(T, 0));
        }
        assert_eq!(out.capacity(), cap);
        assert!(!tpl.is_static() && IndexTemplate::parse("x%%").unwrap().is_static());
    }

    #[test]
    fn cloudwatch_names_keep_case_and_clean_their_own_characters() {
        let r = rec(&[
            ("ecs_cluster", Value::from("Prod Cluster:1")),
            ("ecs_task_id", Value::from("abc*def")),
            ("ecs_container_name", Value::from("wéb")),
        ]);
        let mut out = Vec::new();
        let g = NameTemplate::parse_as("/ecs/{ecs_cluster}/{family}", Naming::LogGroup).unwrap();
        assert!(!g.render(&mut out, &r, &[], EventTime::new(T, 0)), "a field fell back");
        assert_eq!(out, b"/ecs/Prod_Cluster_1/unknown");
        let s = NameTemplate::parse_as("{ecs_task_id}/{ecs_container_name}", Naming::LogStream)
            .unwrap();
        assert!(s.render(&mut out, &r, &[], EventTime::new(T, 0)));
        assert_eq!(std::str::from_utf8(&out).unwrap(), "abc_def/wéb");
        let g = NameTemplate::parse_as("/x/{ecs_container_name}", Naming::LogGroup).unwrap();
        g.render(&mut out, &r, &[], EventTime::new(T, 0));
        assert_eq!(out, b"/x/w_b", "one `_` per non-ASCII character in group names");
        for (t, naming) in [
            ("/ecs/a b", Naming::LogGroup),
            ("a:b", Naming::LogStream),
            ("a*", Naming::LogStream),
            ("/é", Naming::LogGroup),
        ] {
            assert!(NameTemplate::parse_as(t, naming).is_err(), "{t}");
        }
        assert!(NameTemplate::parse_as("/ecs/Upper_Case#1", Naming::LogGroup).is_ok());
        let long = rec(&[("k", Value::from("a".repeat(600)))]);
        let s = NameTemplate::parse_as("{k}", Naming::LogStream).unwrap();
        s.render(&mut out, &long, &[], EventTime::new(T, 0));
        assert_eq!(out.len(), MAX_CLOUDWATCH_NAME_BYTES);
    }
}
