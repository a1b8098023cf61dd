//! Reading a table by hand where serde's own tools lose what the errors need.
//!
//! serde's `flatten` and internally tagged enums buffer a table before reading it: the
//! values lose their spans (so errors could not name the line) and `deny_unknown_fields`
//! stops working. Instead, the parts of a table are split apart here, on the parsed
//! document (which keeps every span), and each part is read as its own struct with plain
//! derives. The keys a struct has come from its `Deserialize` derive ([`keys_of`]), so no
//! list of keys is kept by hand.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use std::ops::Range;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// The keys of a struct deriving `Deserialize` (its fields, renamed, in declaration
/// order; fields with `skip_deserializing` are not keys).
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // Always an error: the probe only records what the derive asks for.
    let _ = T::deserialize(Probe(&mut keys));
    keys
}

/// A deserializer that answers nothing and notes the fields a struct asks for.
struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Move the entries named in `keys` out of `table`, into a table of their own.
pub(super) fn split_off<'i>(table: &mut DeTable<'i>, keys: &[&str]) -> DeTable<'i> {
    let mut out = DeTable::new();
    for k in keys {
        if let Some((key, value)) = table.remove_entry(*k) {
            out.insert(key, value);
        }
    }
    out
}

/// The first key of `table` that is not one of `keys`, with its span.
pub(super) fn unknown_key<'a>(
    table: &'a DeTable<'_>,
    keys: &[&str],
) -> Option<(&'a str, Range<usize>)> {
    table.keys().map(|k| (k.get_ref().as_ref(), k.span())).find(|(k, _)| !keys.contains(k))
}

/// "unknown key" as serde says it (in the file's words) for a table read by hand.
pub(super) fn unknown_key_message(key: &str, expected: &[&str]) -> String {
    let expected: Vec<String> = expected.iter().map(|k| format!("\"{k}\"")).collect();
    format!("unknown key \"{key}\" (expected one of {})", expected.join(", "))
}

/// Read `table` (spanning `span` of the text) as `T`, spans and unknown keys intact.
pub(super) fn read<T: DeserializeOwned>(
    span: Range<usize>,
    table: DeTable<'_>,
) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(Spanned::new(span, DeValue::Table(table))))
}

/// Read `T` from `table` with the keys of `F` flattened into it: `F`'s keys are split off
/// and read first, then the rest as `T`, and `join` puts `F` into `T`.
pub(super) fn read_flat<T: DeserializeOwned, F: DeserializeOwned>(
    span: Range<usize>,
    mut table: DeTable<'_>,
    join: impl FnOnce(&mut T, F),
) -> Result<T, toml::de::Error> {
    let part = split_off(&mut table, keys_of::<F>());
    let flat = read::<F>(span.clone(), part)?;
    let mut whole = read::<T>(span, table)?;
    join(&mut whole, flat);
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::super::network::RawNetwork;
    use super::*;

    #[test]
    fn keys_come_from_the_derive() {
        assert_eq!(
            keys_of::<RawNetwork>(),
            [
                "flush_interval",
                "concurrency",
                "timeout",
                "max_retry_duration",
                "dead_letter_path",
                "dead_letter_max_size"
            ]
        );
        // Flattened parts are read by hand, so they are not keys of the outer struct.
        let cw = keys_of::<super::super::cloudwatch::RawCloudWatch>();
        assert!(cw.contains(&"log_group") && !cw.contains(&"region") && !cw.contains(&"timeout"));
        let all = super::super::cloudwatch::keys();
        assert!(
            all.contains(&"region") && all.contains(&"external_id") && all.contains(&"timeout")
        );
    }
}
