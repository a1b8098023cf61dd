//! Value types of the file (sizes, durations, modes, addresses, tag patterns): each is
//! checked inside `Deserialize`, so toml gives the error the value's own span and the
//! message names its line.

use super::units;
use crate::route::TagPattern;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// `#[serde(default = "default_true")]`: a switch that is on unless the file says `false`.
pub(super) fn default_true() -> bool {
    true
}

/// `value` as one of `choices` (each as the file spells it, and what it means); else the
/// message every key of a fixed set of values gives: `unknown <what> "<value>" (expected
/// "a", "b" or "c")`.
pub(super) fn one_of<T: Copy>(value: &str, what: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*t);
    }
    let names: Vec<String> = choices.iter().map(|(name, _)| format!("{name:?}")).collect();
    let expected = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("unknown {what} {value:?} (expected {expected})"))
}

/// Deserialize a string and parse it with `parse`, whose message becomes the error. The
/// parse runs inside the visitor so that toml gives the error this value's own span (an
/// element of `listen` gets its own line, not the array's).
pub(super) fn de_parsed<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.0)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V(parse))
}

/// A byte size, written `"16MiB"` (or a bare integer of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16MiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                units::parse_size(s).map(Size).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {n} (must not be negative)")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_size(self.0))
    }
}

/// A duration, written `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| units::parse_duration(s).map(Dur))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_duration(self.0))
    }
}

/// A limit written as a duration, where `""` (like `"0s"`) means "no limit" (zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LimitDur(pub Duration);

impl<'de> Deserialize<'de> for LimitDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            if s.is_empty() {
                Ok(LimitDur(Duration::ZERO))
            } else {
                units::parse_duration(s).map(LimitDur)
            }
        })
    }
}

impl Serialize for LimitDur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_zero() {
            return s.serialize_str("");
        }
        s.serialize_str(&units::format_duration(self.0))
    }
}

/// A file mode, written as an octal string `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Strings only: an integer 660 would be decimal, which is never what was meant.
        de_parsed(d, |s| units::parse_mode(s).map(Mode))
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_mode(self.0))
    }
}

/// The admin address: `"HOST:PORT"` or `""` (disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AdminListen(pub Option<SocketAddr>);

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            if s.is_empty() {
                return Ok(AdminListen(None));
            }
            units::parse_host_port(s).map(|a| AdminListen(Some(a))).map_err(|why| {
                format!("invalid address {s:?}: {why} (expected HOST:PORT such as \"127.0.0.1:24220\", or \"\" to disable)")
            })
        })
    }
}

impl Serialize for AdminListen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.collect_str(&a),
            None => s.serialize_str(""),
        }
    }
}

/// A tag pattern, checked when read.
#[derive(Debug, Clone)]
pub(super) struct Pattern(pub TagPattern);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            TagPattern::parse(s)
                .map(Pattern)
                .map_err(|why| format!("invalid tag pattern {s:?}: {why}"))
        })
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::one_of;

    #[test]
    fn one_of_names_every_choice_in_its_message() {
        let three = [("batch", 1), ("always", 2), ("never", 3)];
        assert_eq!(one_of("always", "sync mode", &three), Ok(2));
        let cases: [(&[(&str, i32)], &str); 3] = [
            (&three, r#"unknown sync mode "sometimes" (expected "batch", "always" or "never")"#),
            (&three[..2], r#"unknown sync mode "sometimes" (expected "batch" or "always")"#),
            (&three[..1], r#"unknown sync mode "sometimes" (expected "batch")"#),
        ];
        for (choices, want) in cases {
            assert_eq!(one_of("sometimes", "sync mode", choices), Err(want.to_string()));
        }
        // The file's spelling, exactly: no case folding, no trimming.
        assert!(one_of("Batch", "sync mode", &three).is_err());
        assert!(one_of(" batch", "sync mode", &three).is_err());
    }
}
