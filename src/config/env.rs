//! `BERTH_<SECTION>__<KEY>` environment overrides, applied to the parsed document before
//! it is deserialized, so an overridden value goes through exactly the checks a value in
//! the file does.
//!
//! To make errors in such values name their variable, each value gets a span past the end
//! of the file text: variable `i` owns the virtual byte range `bases[i] .. bases[i] + len + 1`.
//! Whatever span toml reports then tells file lines from variables apart (`Origin`).

use std::borrow::Cow;
use std::ops::Range;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

const PREFIX: &str = "BERTH_";

/// Whether a variable is a config override: `BERTH_` and a key path of at least two
/// segments. Every key is at least two deep (`admin.listen`), and requiring the `__` leaves
/// the namespace's other variables alone: `BERTH_CONFIG`, `BERTH_LOG`,
/// `BERTH_CAT_SHARED_KEY` (read by `berth cat`), test harness variables. A typo after the
/// first `__` (`BERTH_ADMIN__LISTN`) is still an error, not silently ignored.
pub(super) fn is_override(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|rest| rest.contains("__"))
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Segment {
    Index(usize),
    Key(String),
}

#[derive(Debug, Clone)]
pub(super) struct Override {
    pub var: String,
    pub path: Vec<Segment>,
    pub value: String,
    /// Take the value as a string even when it reads as another TOML value: set when the
    /// key it sets turned out to want a string (`SHARED_KEY=987654321`).
    pub literal: bool,
}

impl Override {
    /// The key as written in the file: `input.forward.shared_key`, `sink[0].path`.
    pub fn key(&self) -> String {
        render_path(&self.path)
    }
}

pub(super) fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// Pick the `BERTH_` variables out of an environment, sorted so that a table is created
/// before its keys are set (`SINK__1__NAME` and `SINK__1__TYPE` both land in one new table,
/// and index 10 comes after index 9). Errors are `(variable, message)`.
pub(super) fn collect<I, K, V>(vars: I) -> Result<Vec<Override>, (String, String)>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = Vec::new();
    for (name, value) in vars {
        let name = name.as_ref();
        let Some(rest) = name.strip_prefix(PREFIX).filter(|_| is_override(name)) else {
            continue;
        };
        let mut path = Vec::new();
        for seg in rest.split("__") {
            if seg.is_empty() {
                return Err((
                    name.to_string(),
                    "empty key segment (segments are separated by exactly two underscores, as in BERTH_INPUT__FORWARD__SHARED_KEY)"
                        .to_string(),
                ));
            }
            path.push(match seg.parse::<usize>() {
                Ok(i) if seg.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(i),
                _ => Segment::Key(seg.to_ascii_lowercase()),
            });
        }
        out.push(Override {
            var: name.to_string(),
            path,
            value: value.as_ref().to_string(),
            literal: false,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.var.cmp(&b.var)));
    Ok(out)
}

/// The virtual span bases of `overrides` given a file of `file_len` bytes.
pub(super) fn bases(file_len: usize, overrides: &[Override]) -> Vec<usize> {
    let mut next = file_len + 1;
    overrides
        .iter()
        .map(|o| {
            let base = next;
            next += o.value.len() + 1;
            base
        })
        .collect()
}

/// Where a span points: a line of the file, or an environment variable.
pub(super) enum Origin<'a> {
    Line(usize),
    Env(&'a Override),
}

pub(super) fn origin<'a>(
    text: &str,
    overrides: &'a [Override],
    bases: &[usize],
    at: usize,
) -> Origin<'a> {
    if at <= text.len() || overrides.is_empty() {
        let upto = &text.as_bytes()[..at.min(text.len())];
        return Origin::Line(1 + upto.iter().filter(|&&b| b == b'\n').count());
    }
    let i = bases.partition_point(|&b| b <= at).saturating_sub(1);
    Origin::Env(&overrides[i.min(overrides.len() - 1)])
}

/// Apply one override to the document. The value is read as TOML when it is a TOML value
/// (`5`, `true`, `["a"]`, `'"quoted"'`) and taken as a plain string otherwise (or when
/// `literal`: the key wants a string, see `config::parse`).
pub(super) fn apply<'i>(
    root: &mut Spanned<DeValue<'i>>,
    o: &'i Override,
    base: usize,
) -> Result<(), String> {
    let span = base..base + o.value.len();
    // Tables and arrays the variable creates, and their keys, get a span one byte wider than
    // its value (still inside the variable's range), so an error about such a table ("missing
    // key", "unknown key") is not attributed to the key or value inside it.
    let wide = base..base + o.value.len() + 1;
    let value = match DeValue::parse(&o.value) {
        Ok(v) if !o.literal => shift(v, base),
        _ => Spanned::new(span.clone(), DeValue::String(Cow::Borrowed(o.value.as_str()))),
    };
    let mut value = Some(value);
    let mut cur = root;
    for (i, seg) in o.path.iter().enumerate() {
        let last = i + 1 == o.path.len();
        let here = render_path(&o.path[..i]);
        let fresh = || {
            let v = match o.path.get(i + 1) {
                Some(Segment::Index(_)) => DeValue::Array(DeArray::new()),
                _ => DeValue::Table(DeTable::new()),
            };
            Spanned::new(wide.clone(), v)
        };
        cur = match (cur.get_mut(), seg) {
            (DeValue::Table(t), Segment::Key(k)) => {
                if last {
                    if let Some(v) = value.take() {
                        // Replacing keeps the file's key span: only the value is the variable's.
                        match t.get_mut(k.as_str()) {
                            Some(slot) => *slot = v,
                            None => {
                                t.insert(Spanned::new(span.clone(), Cow::Owned(k.clone())), v);
                            }
                        }
                    }
                    return Ok(());
                }
                if !t.contains_key(k.as_str()) {
                    t.insert(Spanned::new(wide.clone(), Cow::Owned(k.clone())), fresh());
                }
                match t.get_mut(k.as_str()) {
                    Some(slot) => slot,
                    None => return Err(format!("cannot create {}", render_path(&o.path[..=i]))),
                }
            }
            (DeValue::Array(a), Segment::Index(n)) => {
                let n = *n;
                if n > a.len() {
                    return Err(format!(
                        "index {n} is out of range: {here} has {} entries (an override may add entry {} at most)",
                        a.len(),
                        a.len()
                    ));
                }
                if n == a.len() {
                    a.push(fresh());
                }
                let items: &mut [Spanned<DeValue<'i>>] = a;
                if last {
                    if let Some(v) = value.take() {
                        items[n] = v;
                    }
                    return Ok(());
                }
                &mut items[n]
            }
            (DeValue::Array(_), Segment::Key(k)) => {
                return Err(format!(
                "{here} is an array: an index must come before {k:?}, as in BERTH_SINK__0__PATH"
            ))
            }
            (DeValue::Table(_), Segment::Index(n)) => {
                let shown = if here.is_empty() { "the document".to_string() } else { here };
                return Err(format!("{shown} is a table, not an array: index {n} does not apply"));
            }
            (other, _) => return Err(format!("{here} is a {}, not a table", other.type_str())),
        };
    }
    Ok(())
}

/// Move a value parsed from a variable to the variable's virtual span range.
fn shift<'i>(v: Spanned<DeValue<'i>>, base: usize) -> Spanned<DeValue<'i>> {
    let span = v.span();
    let inner = match v.into_inner() {
        DeValue::Array(a) => DeValue::Array(a.into_iter().map(|x| shift(x, base)).collect()),
        DeValue::Table(t) => DeValue::Table(
            t.into_iter()
                .map(|(k, x)| (Spanned::new(add(k.span(), base), k.into_inner()), shift(x, base)))
                .collect(),
        ),
        other => other,
    };
    Spanned::new(add(span, base), inner)
}

fn add(r: Range<usize>, base: usize) -> Range<usize> {
    r.start + base..r.end + base
}

/// The key path of the deepest key or value whose span covers `span`, as in
/// `input.forward.listen[1]`. `on_key` is true when that is a key rather than a value (an
/// unknown key error points at the key).
pub(super) fn key_at(root: &DeValue<'_>, span: &Range<usize>) -> (Vec<Segment>, bool) {
    let mut best: Option<(Vec<Segment>, bool)> = None;
    let mut path = Vec::new();
    walk(root, span, &mut path, &mut best);
    best.unwrap_or_default()
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn walk(
    v: &DeValue<'_>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Option<(Vec<Segment>, bool)>,
) {
    let consider = |path: &Vec<Segment>, on_key: bool, best: &mut Option<(Vec<Segment>, bool)>| {
        if best.as_ref().is_none_or(|(b, _)| path.len() > b.len()) {
            *best = Some((path.clone(), on_key));
        }
    };
    match v {
        DeValue::Table(t) => {
            for (k, child) in t.iter() {
                path.push(Segment::Key(k.get_ref().to_string()));
                if covers(&k.span(), span) {
                    consider(path, true, best);
                }
                if covers(&child.span(), span) {
                    consider(path, false, best);
                }
                walk(child.get_ref(), span, path, best);
                path.pop();
            }
        }
        DeValue::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Segment::Index(i));
                if covers(&child.span(), span) {
                    consider(path, false, best);
                }
                walk(child.get_ref(), span, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_sorted_lowercased_paths() {
        let vars = [
            ("PATH", "/bin"),
            ("BERTH_CONFIG", "/x.toml"),
            ("BERTH_LOG", "debug"),
            ("BERTH_CAT_SHARED_KEY", "k"),
            ("BERTH_TEST_VENV", "/v"),
            ("BERTH_SINK__10__NAME", "b"),
            ("BERTH_SINK__9__NAME", "a"),
            ("BERTH_INPUT__FORWARD__SHARED_KEY", "k"),
        ];
        let o = collect(vars).unwrap();
        let keys: Vec<String> = o.iter().map(|o| o.key()).collect();
        assert_eq!(keys, ["input.forward.shared_key", "sink[9].name", "sink[10].name"]);
        assert_eq!(o[0].var, "BERTH_INPUT__FORWARD__SHARED_KEY");
    }

    #[test]
    fn empty_segments_are_rejected() {
        let (var, msg) = collect([("BERTH_ADMIN__", "x")]).unwrap_err();
        assert_eq!(var, "BERTH_ADMIN__");
        assert!(msg.contains("empty key segment"));
    }
}
