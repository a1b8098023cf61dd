//! The msgpack side of enrichment, pure and without I/O: pre-encoded key/value pairs
//! ([`Fields`]), a walk over a record's top-level map ([`walk_map`]) and the rewrite that
//! appends pairs to it ([`rewrite`]).
//!
//! A record is rewritten by copying its bytes once with a new map header and the cached
//! pairs appended as they are (a `memcpy` per field set, no re-encoding). Anything that is
//! not exactly one well-formed map (another type, truncated, trailing bytes) is left as it
//! arrived: enrichment never damages or drops a record.
//!
//! The bytes are read with the crate's one msgpack [`Reader`].
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md#map-format-family>.

use crate::msgpack::{str_body, Reader};
use std::ops::Range;

/// Most pairs one [`Fields`] may hold: which of them a record already has is kept in a
/// `u64` bit set. The config keeps `fields` + `labels` + `env` below it.
pub const MAX_PAIRS: usize = 64;

/// Key/value pairs encoded as msgpack once, to be appended to many records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    bytes: Vec<u8>,
    pairs: Vec<Pair>,
    /// Bit `len % 64` set for the length of every key.
    key_lens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pair {
    /// The key's string bytes (without their header) in `bytes`.
    key: Range<usize>,
    /// The encoded value in `bytes`.
    value: Range<usize>,
    /// The whole encoded pair in `bytes`.
    all: Range<usize>,
}

impl Fields {
    /// No pairs.
    pub const EMPTY: Fields = Fields { bytes: Vec::new(), pairs: Vec::new(), key_lens: 0 };

    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds `key = value` as two msgpack strings; a key already in the set, or past
    /// [`MAX_PAIRS`], is ignored (the config rejects both before this is reached).
    pub fn push_str(&mut self, key: &str, value: &str) {
        if self.pairs.len() >= MAX_PAIRS || self.get(key).is_some() {
            return;
        }
        let start = self.bytes.len();
        write_str_header(&mut self.bytes, key.len());
        let key_start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        let value_start = self.bytes.len();
        write_str_header(&mut self.bytes, value.len());
        self.bytes.extend_from_slice(value.as_bytes());
        let end = self.bytes.len();
        self.pairs.push(Pair {
            key: key_start..value_start,
            value: value_start..end,
            all: start..end,
        });
        self.key_lens |= 1 << (key.len() % 64);
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of `key`, decoded (for status pages and tests, not the hot path).
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.index(key.as_bytes())?;
        let v = &self.bytes[self.pairs[i].value.clone()];
        std::str::from_utf8(str_body(v)?).ok()
    }

    /// Which pair has this key.
    pub fn index(&self, key: &[u8]) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.key.len() == key.len() && &self.bytes[p.key.clone()] == key)
    }

    /// The encoded value of pair `i`.
    pub fn value_bytes(&self, i: usize) -> &[u8] {
        self.pairs.get(i).map_or(&[], |p| &self.bytes[p.value.clone()])
    }

    /// `(key, value)` pairs, decoded.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().filter_map(|p| {
            let k = std::str::from_utf8(&self.bytes[p.key.clone()]).ok()?;
            let v = std::str::from_utf8(str_body(&self.bytes[p.value.clone()])?).ok()?;
            Some((k, v))
        })
    }

    /// The bit set of this set's keys found among a record's `keys` (bit i: pair i).
    /// Per record on the hot path: a key whose length no pair has is passed over with one
    /// bit test, so a Docker record's four keys cost a few compares.
    pub fn present<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> u64 {
        let mut mask = 0u64;
        for k in keys {
            if self.key_lens & (1 << (k.len() % 64)) == 0 {
                continue;
            }
            if let Some(i) = self.index(k) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Appends the pairs not in `skip` to `out`; how many.
    fn append_to(&self, out: &mut Vec<u8>, skip: u64) -> usize {
        if skip == 0 {
            out.extend_from_slice(&self.bytes);
            return self.pairs.len();
        }
        let mut n = 0;
        for (i, p) in self.pairs.iter().enumerate() {
            if skip & (1 << i) == 0 {
                out.extend_from_slice(&self.bytes[p.all.clone()]);
                n += 1;
            }
        }
        n
    }

    fn added(&self, skip: u64) -> usize {
        self.pairs.len() - (skip & self.mask()).count_ones() as usize
    }

    fn mask(&self) -> u64 {
        if self.pairs.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.pairs.len()) - 1
        }
    }

    /// Bytes of all pairs encoded.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_str_header(out: &mut Vec<u8>, len: usize) {
    // Writing to a Vec cannot fail; keys and values (Docker, IMDS) are far below 4 GiB.
    let _ = rmp::encode::write_str_len(out, len as u32);
}

/// A record's top-level map header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapView {
    /// Bytes of the map header (1, 3 or 5).
    pub header_len: usize,
    /// Pairs in the map.
    pub len: usize,
}

/// Walks the pairs of the map `record` is, calling `f(key, value)` with the byte range of
/// each key's string body (empty for a key that is not a string) and of its encoded value.
/// `None` when `record` is not exactly one complete map.
pub fn walk_map(record: &[u8], mut f: impl FnMut(Range<usize>, Range<usize>)) -> Option<MapView> {
    let mut r = Reader::new(record);
    let len = r.map_len().ok()??;
    let header_len = r.position();
    for _ in 0..len {
        // A string key is read as one (its body is what callers compare); anything else is
        // skipped and reported as an empty range at its start.
        let key_start = r.position();
        let key = match r.str().ok()? {
            Some(body) => r.position() - body.len()..r.position(),
            None => {
                r.skip().ok()?;
                key_start..key_start
            }
        };
        let value = r.skip().ok()?;
        f(key, value);
    }
    r.at_end().then_some(MapView { header_len, len })
}

/// The range of the string body of the encoded value at `v`; empty when not a string.
pub fn body_range(record: &[u8], v: Range<usize>) -> Range<usize> {
    match str_body(&record[v.clone()]) {
        // The body is the value's tail.
        Some(b) => v.end - b.len()..v.end,
        None => v.start..v.start,
    }
}

/// A change to one record.
pub struct Edit<'a> {
    /// Replace the value at this range of the record with these encoded bytes.
    pub replace: Option<(Range<usize>, &'a [u8])>,
    /// Field sets to append, each with the bit set of its pairs to leave out (keys the
    /// record already has).
    pub append: &'a [(&'a Fields, u64)],
}

impl Edit<'_> {
    /// Whether applying it would change nothing.
    pub fn is_noop(&self) -> bool {
        self.replace.is_none() && self.append.iter().all(|(f, skip)| f.added(*skip) == 0)
    }
}

/// Writes `record` with `edit` applied to the end of `out`; `view` is what [`walk_map`]
/// returned for it. The map header grows from fixmap to map16 to map32 as needed.
pub fn rewrite(record: &[u8], view: MapView, edit: &Edit<'_>, out: &mut Vec<u8>) {
    let added: usize = edit.append.iter().map(|(f, skip)| f.added(*skip)).sum();
    let len = view.len + added;
    let extra: usize = edit.append.iter().map(|(f, _)| f.encoded_len()).sum();
    out.reserve(record.len() + extra + 5);
    let before = out.len();
    // The shortest header: fixmap, map16 or map32. A map of more than 4 billion pairs
    // does not fit in a record.
    let _ = rmp::encode::write_map_len(out, len as u32);
    let body = &record[view.header_len..];
    match &edit.replace {
        Some((range, value)) => {
            out.extend_from_slice(&record[view.header_len..range.start]);
            out.extend_from_slice(value);
            out.extend_from_slice(&record[range.end..]);
        }
        None => out.extend_from_slice(body),
    }
    let mut appended = 0;
    for (f, skip) in edit.append {
        appended += f.append_to(out, *skip);
    }
    debug_assert_eq!(appended, added, "pairs written match the header");
    debug_assert!(out.len() > before);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rmpv::Value;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn decode(b: &[u8]) -> Value {
        let mut r = b;
        let v = rmpv::decode::read_value(&mut r).unwrap();
        assert!(r.is_empty(), "trailing bytes");
        v
    }

    fn map(n: usize) -> Value {
        Value::Map((0..n).map(|i| (Value::from(format!("k{i}")), Value::from(i as u64))).collect())
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut f = Fields::new();
        for (k, v) in pairs {
            f.push_str(k, v);
        }
        f
    }

    /// Walk, skip present keys, rewrite: what enrichment does with one set.
    fn apply(record: &[u8], f: &Fields) -> Option<Vec<u8>> {
        let mut keys: Vec<Range<usize>> = Vec::new();
        let view = walk_map(record, |k, _| keys.push(k))?;
        let append = [(f, f.present(keys.iter().map(|r| &record[r.clone()])))];
        let edit = Edit { replace: None, append: &append };
        if edit.is_noop() {
            return None;
        }
        let mut out = Vec::new();
        rewrite(record, view, &edit, &mut out);
        Some(out)
    }

    #[test]
    fn header_grows_from_fixmap_to_map16_at_16_pairs() {
        let f = fields(&[("a", "1")]);
        let out = apply(&encode(&map(15)), &f).unwrap();
        assert_eq!(out[0], 0xde, "16 pairs need a map16");
        assert_eq!(&out[1..3], &[0, 16]);
        let Value::Map(m) = decode(&out) else { panic!() };
        assert_eq!(m.len(), 16);
        assert_eq!(m[15], (Value::from("a"), Value::from("1")));

        let out = apply(&encode(&map(14)), &f).unwrap();
        assert_eq!(out[0], 0x8f, "15 pairs still fit a fixmap");
        assert_eq!(decode(&out).as_map().unwrap().len(), 15);
    }

    #[test]
    fn map16_and_map32_records_keep_their_pairs() {
        let f = fields(&[("a", "1"), ("b", "2")]);
        let out = apply(&encode(&map(300)), &f).unwrap();
        assert_eq!(out[0], 0xde);
        assert_eq!(decode(&out).as_map().unwrap().len(), 302);
        // A map32 header for a small map is legal msgpack; the rewrite uses the shortest.
        let mut rec = vec![0xdf, 0, 0, 0, 1];
        rec.extend_from_slice(&encode(&Value::from("x"))[..]);
        rec.extend_from_slice(&encode(&Value::from(1))[..]);
        let out = apply(&rec, &f).unwrap();
        assert_eq!(out[0], 0x83);
        assert_eq!(
            decode(&out),
            Value::Map(vec![
                (Value::from("x"), Value::from(1)),
                (Value::from("a"), Value::from("1")),
                (Value::from("b"), Value::from("2")),
            ])
        );
    }

    #[test]
    fn keys_the_record_has_are_not_overwritten() {
        let rec = encode(&Value::Map(vec![
            (Value::from("log"), Value::from("hi")),
            (Value::from("image"), Value::from("mine")),
        ]));
        let f = fields(&[("image", "theirs"), ("ecs_cluster", "c1")]);
        let out = decode(&apply(&rec, &f).unwrap());
        assert_eq!(
            out,
            Value::Map(vec![
                (Value::from("log"), Value::from("hi")),
                (Value::from("image"), Value::from("mine")),
                (Value::from("ecs_cluster"), Value::from("c1")),
            ])
        );
        // Every key present: no copy at all.
        let all = encode(&Value::Map(vec![
            (Value::from("image"), Value::from("mine")),
            (Value::from("ecs_cluster"), Value::from("x")),
        ]));
        assert_eq!(apply(&all, &f), None);
    }

    #[test]
    fn replace_splices_a_value_in_place() {
        let rec = encode(&Value::Map(vec![
            (Value::from("container_name"), Value::from("/old")),
            (Value::from("log"), Value::from("hi")),
        ]));
        let f = fields(&[("container_name", "new"), ("image", "busybox")]);
        let mut range = None;
        let view = walk_map(&rec, |k, v| {
            if &rec[k] == b"container_name" {
                range = Some(v)
            }
        })
        .unwrap();
        let i = f.index(b"container_name").unwrap();
        let append = [(&f, 1u64 << i)];
        let edit = Edit { replace: Some((range.unwrap(), f.value_bytes(i))), append: &append };
        let mut out = Vec::new();
        rewrite(&rec, view, &edit, &mut out);
        assert_eq!(
            decode(&out),
            Value::Map(vec![
                (Value::from("container_name"), Value::from("new")),
                (Value::from("log"), Value::from("hi")),
                (Value::from("image"), Value::from("busybox")),
            ])
        );
    }

    #[test]
    fn anything_but_one_whole_map_is_left_alone() {
        let f = fields(&[("a", "1")]);
        let whole = encode(&map(3));
        for bad in [
            encode(&Value::from("not a map")),
            encode(&Value::Array(vec![Value::from(1)])),
            whole[..whole.len() - 1].to_vec(),
            [whole.clone(), vec![0xc0]].concat(),
            vec![0xde, 0x00],
            vec![0xc1],
            vec![],
        ] {
            assert_eq!(apply(&bad, &f), None, "{bad:02x?}");
        }
    }

    #[test]
    fn fields_encode_long_strings_and_ignore_duplicates() {
        let long = "x".repeat(300);
        let f = fields(&[("k", &long), ("k", "again"), ("e", "")]);
        assert_eq!(f.len(), 2);
        assert_eq!(f.get("k"), Some(long.as_str()));
        assert_eq!(f.get("e"), Some(""));
        let out = apply(&encode(&map(0)), &f).unwrap();
        assert_eq!(decode(&out).as_map().unwrap()[0].1, Value::from(long.as_str()));
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Nil),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((".{0,8}".prop_map(Value::from), inner), 0..4)
                    .prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        /// The rewritten record decodes to the original map followed by the added pairs
        /// whose keys it did not have.
        #[test]
        fn rewritten_record_is_the_original_plus_the_fields(
            pairs in proptest::collection::vec(("[a-e]{1,2}", value()), 0..40),
            extra in proptest::collection::vec(("[a-h]{1,2}", ".{0,20}"), 0..20),
        ) {
            let rec = Value::Map(pairs.iter().map(|(k, v)| (Value::from(k.as_str()), v.clone())).collect());
            let bytes = encode(&rec);
            let f = fields(&extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
            let mut want = pairs.iter().map(|(k, v)| (Value::from(k.as_str()), v.clone())).collect::<Vec<_>>();
            for (k, v) in f.iter() {
                if !pairs.iter().any(|(pk, _)| pk == k) {
                    want.push((Value::from(k), Value::from(v)));
                }
            }
            match apply(&bytes, &f) {
                Some(out) => prop_assert_eq!(decode(&out), Value::Map(want)),
                None => prop_assert_eq!(want.len(), pairs.len()),
            }
        }
    }
}
