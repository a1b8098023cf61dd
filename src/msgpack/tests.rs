//! The reader's tests: tables per marker, and the differential proptest that makes it
//! "fuzzed" in the normal suite — random msgpack in every width (ints 8-64, str/bin 8/16/32,
//! ext and fixext, nested arrays and maps), then random truncations and byte flips, each
//! read by this reader and by `rmpv::decode::read_value`: the same value or the same
//! failure, the same length consumed, and never a panic. The cargo-fuzz target
//! `fuzz/fuzz_targets/msgpack.rs` runs the same comparison on arbitrary bytes.

use super::*;
use proptest::prelude::*;

/// Nesting the test's own recursive reader follows; deeper input is compared by length
/// only. Generated values nest at most 6 levels, flips add at most one.
const TREE_DEPTH: usize = 200;

/// A value as canonical text, from this reader: floats by their bits, strings and bins by
/// their bytes (so invalid UTF-8 and NaN payloads compare exactly).
fn ours(r: &mut Reader<'_>, depth: usize) -> Result<String, Error> {
    if depth > TREE_DEPTH {
        return Err(Error::TooDeep { limit: TREE_DEPTH, offset: r.position() });
    }
    Ok(match r.read()? {
        Token::Nil => "nil".into(),
        Token::Bool(b) => format!("bool:{b}"),
        Token::UInt(u) => format!("int:{u}"),
        Token::Int(i) => format!("int:{i}"),
        Token::F32(f) => format!("f32:{:x}", f.to_bits()),
        Token::F64(f) => format!("f64:{:x}", f.to_bits()),
        Token::Str(s) => format!("str:{}", hex::encode(s)),
        Token::Bin(b) => format!("bin:{}", hex::encode(b)),
        Token::Ext(t, d) => format!("ext:{t}:{}", hex::encode(d)),
        Token::Array(n) => {
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(ours(r, depth + 1)?);
            }
            format!("[{}]", items.join(","))
        }
        Token::Map(n) => {
            let mut items = Vec::new();
            for _ in 0..n {
                let k = ours(r, depth + 1)?;
                let v = ours(r, depth + 1)?;
                items.push(format!("{k}:{v}"));
            }
            format!("{{{}}}", items.join(","))
        }
    })
}

/// The same canonical text from an `rmpv` value.
fn canon(v: &rmpv::Value) -> String {
    use rmpv::Value;
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => format!("bool:{b}"),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => format!("int:{u}"),
            (None, Some(i)) => format!("int:{i}"),
            (None, None) => unreachable!("an integer is a u64 or an i64"),
        },
        Value::F32(f) => format!("f32:{:x}", f.to_bits()),
        Value::F64(f) => format!("f64:{:x}", f.to_bits()),
        Value::String(s) => format!("str:{}", hex::encode(s.as_bytes())),
        Value::Binary(b) => format!("bin:{}", hex::encode(b)),
        Value::Ext(t, d) => format!("ext:{t}:{}", hex::encode(d)),
        Value::Array(a) => format!("[{}]", a.iter().map(canon).collect::<Vec<_>>().join(",")),
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", canon(k), canon(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// What `rmpv` makes of `b`: the canonical value and the bytes it consumed.
fn oracle(b: &[u8]) -> Option<(String, usize)> {
    let mut rest = b;
    let v = rmpv::decode::read_value(&mut rest).ok()?;
    Some((canon(&v), b.len() - rest.len()))
}

/// Compares this reader with `rmpv` on arbitrary bytes, and the reader's three ways of
/// finding a value's end with each other.
fn differential(input: &[u8]) -> Result<(), TestCaseError> {
    // Never a panic, whatever the bytes, in every entry point.
    let _ = value_len(input, usize::MAX);
    let _ = value_len(input, 16);
    let _ = Reader::new(input).skip();
    let _ = Reader::new(input).skip_nested::<4>();
    let _ = str_body(input);
    let _ = json::write_record_json(&mut Vec::new(), input);

    // rmpv reads 0xc1 as nil where this reader refuses it: compare the reader's refusal
    // with the offset it names, then the rest of the value with that byte as nil.
    let mut b = input.to_vec();
    let mine = loop {
        let mut r = Reader::new(&b);
        match ours(&mut r, 0) {
            Err(Error::Reserved { offset }) => {
                prop_assert_eq!(b.get(offset), Some(&0xc1), "reserved at {}", offset);
                // The walk meets the same byte first, unless the counts it has read already
                // prove the value longer than the buffer.
                let skipped = Reader::new(&b).skip();
                prop_assert!(
                    skipped == Err(Error::Reserved { offset })
                        || matches!(skipped, Err(Error::Truncated { .. })),
                    "skip says {:?} of the reserved marker at {}",
                    skipped,
                    offset
                );
                b[offset] = 0xc0;
            }
            other => break other.map(|v| (v, r.position())),
        }
    };
    if matches!(mine, Err(Error::TooDeep { .. })) {
        return Ok(()); // deeper than the test's own recursion: lengths are checked elsewhere
    }
    let theirs = oracle(&b);
    match (&mine, &theirs) {
        (Ok((v, n)), Some((tv, tn))) => {
            prop_assert_eq!(v, tv);
            prop_assert_eq!(n, tn);
        }
        (Err(Error::Truncated { offset }), None) => prop_assert_eq!(*offset, b.len()),
        _ => return Err(TestCaseError::fail(format!("{b:02x?}: ours {mine:?}, rmpv {theirs:?}"))),
    }
    // The header walk, the skip and the depth-bounded skip agree on where it ends.
    let walked = value_len(&b, usize::MAX);
    let skipped = Reader::new(&b).skip();
    let nested = Reader::new(&b).skip_nested::<{ TREE_DEPTH + 2 }>();
    match mine {
        Ok((_, n)) => {
            prop_assert_eq!(walked, Ok(Extent::Complete(n)));
            prop_assert_eq!(skipped, Ok(0..n));
            prop_assert_eq!(nested, Ok(0..n));
        }
        Err(_) => {
            match walked {
                Ok(Extent::Incomplete { at_least }) => prop_assert!(at_least > b.len()),
                other => return Err(TestCaseError::fail(format!("value_len: {other:?}"))),
            }
            prop_assert_eq!(skipped, Err(Error::Truncated { offset: b.len() }));
            prop_assert_eq!(nested, Err(Error::Truncated { offset: b.len() }));
        }
    }
    Ok(())
}

// ---- msgpack in every width, written by hand (rmp writes only the shortest form) ----

fn be(v: u64, width: usize) -> Vec<u8> {
    v.to_be_bytes()[8 - width..].to_vec()
}

/// An integer in one of the ten forms, `raw` cut to fit.
fn int(form: u8, raw: u64) -> Vec<u8> {
    match form % 10 {
        0 => vec![(raw & 0x7f) as u8],
        1 => vec![0xe0 | (raw & 0x1f) as u8],
        f @ 2..=5 => {
            let w = 1usize << (f - 2);
            [vec![0xcc + f - 2], be(raw, w)].concat()
        }
        f => {
            let w = 1usize << (f - 6);
            [vec![0xd0 + f - 6], be(raw, w)].concat()
        }
    }
}

/// A length header: `fix` (when given and `n` fits `fix_max`), else the 8/16/32-bit forms
/// from `markers`, at least as wide as `n` needs and as wide as `width` asks.
fn header(n: usize, width: u8, fix: Option<(u8, usize)>, markers: [Option<u8>; 3]) -> Vec<u8> {
    if let Some((m, max)) = fix {
        if width == 0 && n <= max {
            return vec![m | n as u8];
        }
    }
    let need = if n <= 0xff {
        0
    } else if n <= 0xffff {
        1
    } else {
        2
    };
    let mut i = usize::from(width.saturating_sub(1)).max(need);
    while markers[i].is_none() {
        i += 1;
    }
    let marker = markers[i].unwrap_or(0xc1);
    [vec![marker], be(n as u64, 1 << i)].concat()
}

fn leaf() -> impl Strategy<Value = Vec<u8>> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        Just(vec![0xc0]),
        any::<bool>().prop_map(|b| vec![0xc2 | u8::from(b)]),
        (any::<u8>(), any::<u64>()).prop_map(|(f, raw)| int(f, raw)),
        any::<u32>().prop_map(|bits| [vec![0xca], be(u64::from(bits), 4)].concat()),
        any::<u64>().prop_map(|bits| [vec![0xcb], be(bits, 8)].concat()),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)].prop_map(|f| [
            vec![0xcb],
            be(f.to_bits(), 8)
        ]
        .concat()),
        (0..4u8, bytes.clone()).prop_map(|(w, s)| {
            let h = header(s.len(), w, Some((0xa0, 31)), [Some(0xd9), Some(0xda), Some(0xdb)]);
            [h, s].concat()
        }),
        (0..4u8, bytes.clone()).prop_map(|(w, s)| {
            let h = header(s.len(), w, None, [Some(0xc4), Some(0xc5), Some(0xc6)]);
            [h, s].concat()
        }),
        (any::<i8>(), 0..5u32, any::<[u8; 16]>()).prop_map(|(t, k, d)| {
            // fixext 1, 2, 4, 8, 16
            let n = 1usize << k;
            [vec![0xd4 + k as u8, t as u8], d[..n].to_vec()].concat()
        }),
        (any::<i8>(), 1..4u8, bytes).prop_map(|(t, w, d)| {
            let h = header(d.len(), w, None, [Some(0xc7), Some(0xc8), Some(0xc9)]);
            [h, vec![t as u8], d].concat()
        }),
        // Forward's EventTime, as fixext8 and ext8.
        any::<[u8; 8]>().prop_map(|d| [vec![0xd7, 0], d.to_vec()].concat()),
        any::<[u8; 8]>().prop_map(|d| [vec![0xc7, 8, 0], d.to_vec()].concat()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    leaf().prop_recursive(6, 64, 10, |inner| {
        prop_oneof![
            (0..4u8, proptest::collection::vec(inner.clone(), 0..10)).prop_map(|(w, items)| {
                let h = header(items.len(), w, Some((0x90, 15)), [None, Some(0xdc), Some(0xdd)]);
                [h, items.concat()].concat()
            }),
            (0..4u8, proptest::collection::vec((inner.clone(), inner), 0..8)).prop_map(
                |(w, pairs)| {
                    let h =
                        header(pairs.len(), w, Some((0x80, 15)), [None, Some(0xde), Some(0xdf)]);
                    let body: Vec<u8> =
                        pairs.into_iter().flat_map(|(k, v)| [k, v].concat()).collect();
                    [h, body].concat()
                }
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Valid msgpack of every form: read as rmpv reads it, whole, and with bytes after it.
    #[test]
    fn reads_what_rmpv_reads(v in value(), trailing in proptest::collection::vec(any::<u8>(), 0..4)) {
        differential(&v)?;
        let n = v.len();
        let with_tail = [v, trailing].concat();
        differential(&with_tail)?;
        prop_assert_eq!(value_len(&with_tail, n), Ok(Extent::Complete(n)));
        if n > 1 {
            let limited = value_len(&with_tail, n - 1);
            prop_assert!(matches!(limited, Err(Error::TooLarge { .. })), "{:?}", limited);
        }
    }

    /// Every truncation of a value is incomplete, for rmpv and for this reader alike.
    #[test]
    fn truncations_fail_like_rmpv(v in value(), cut in any::<proptest::sample::Index>()) {
        let cut = cut.index(v.len());
        differential(&v[..cut])?;
        match value_len(&v[..cut], usize::MAX) {
            Ok(Extent::Incomplete { at_least }) => prop_assert!(at_least > cut && at_least <= v.len()),
            other => return Err(TestCaseError::fail(format!("cut {cut}: {other:?}"))),
        }
    }

    /// A walk resumed over a growing buffer says at every length what a fresh
    /// `value_len` says, whatever the lengths it is called at (with a limit too).
    #[test]
    fn resumed_walk_agrees_with_a_fresh_one(
        v in value(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        trailing in proptest::collection::vec(any::<u8>(), 0..4),
        limited in any::<bool>(),
    ) {
        let b = [v.clone(), trailing].concat();
        let max = if limited { v.len().saturating_sub(1).max(1) } else { usize::MAX };
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.index(b.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(b.len());
        let mut walk = ValueWalk::new();
        for cut in cuts {
            let resumed = walk.walk(&b[..cut], max);
            prop_assert_eq!(resumed, value_len(&b[..cut], max), "cut {}", cut);
            if !matches!(resumed, Ok(Extent::Incomplete { .. })) {
                break;
            }
        }
    }

    /// Flipped bytes (markers, lengths, bodies): the same value or the same failure.
    #[test]
    fn byte_flips_fail_or_read_like_rmpv(
        v in value(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1..=255u8), 1..4),
    ) {
        let mut b = v;
        for (at, x) in flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        differential(&b)?;
    }

    /// Arbitrary short byte strings.
    #[test]
    fn random_bytes_read_like_rmpv(b in proptest::collection::vec(any::<u8>(), 0..48)) {
        differential(&b)?;
    }
}

// ---- tables ----

fn read_all(b: &[u8]) -> Result<Token<'_>, Error> {
    let mut r = Reader::new(b);
    let t = r.read()?;
    assert_eq!(r.position(), b.len(), "{b:02x?} read whole");
    Ok(t)
}

#[test]
fn tokens_of_every_marker_family() {
    assert_eq!(read_all(&[0x05]), Ok(Token::UInt(5)));
    assert_eq!(read_all(&[0xff]), Ok(Token::Int(-1)));
    assert_eq!(read_all(&[0xcc, 0xff]), Ok(Token::UInt(255)));
    assert_eq!(read_all(&[0xcd, 1, 0]), Ok(Token::UInt(256)));
    assert_eq!(read_all(&[0xce, 0, 1, 0, 0]), Ok(Token::UInt(65536)));
    assert_eq!(
        read_all(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Ok(Token::UInt(u64::MAX))
    );
    assert_eq!(read_all(&[0xd0, 0x80]), Ok(Token::Int(-128)));
    assert_eq!(read_all(&[0xd1, 0x80, 0]), Ok(Token::Int(-32768)));
    assert_eq!(read_all(&[0xd2, 0, 0, 0, 5]), Ok(Token::Int(5)), "a signed form keeps its kind");
    assert_eq!(read_all(&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]), Ok(Token::Int(i64::MIN)));
    assert_eq!(read_all(&[0xca, 0x3f, 0xc0, 0, 0]), Ok(Token::F32(1.5)));
    assert_eq!(read_all(&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]), Ok(Token::F64(1.5)));
    assert_eq!(read_all(&[0xc0]), Ok(Token::Nil));
    assert_eq!(read_all(&[0xc2]), Ok(Token::Bool(false)));
    assert_eq!(read_all(&[0xc3]), Ok(Token::Bool(true)));
    assert_eq!(read_all(b"\xa2hi"), Ok(Token::Str(b"hi")));
    assert_eq!(read_all(b"\xd9\x02hi"), Ok(Token::Str(b"hi")));
    assert_eq!(read_all(b"\xda\x00\x02hi"), Ok(Token::Str(b"hi")));
    assert_eq!(read_all(b"\xdb\x00\x00\x00\x02hi"), Ok(Token::Str(b"hi")));
    assert_eq!(read_all(b"\xc4\x02hi"), Ok(Token::Bin(b"hi")));
    assert_eq!(read_all(b"\xc5\x00\x02hi"), Ok(Token::Bin(b"hi")));
    assert_eq!(read_all(b"\xc6\x00\x00\x00\x02hi"), Ok(Token::Bin(b"hi")));
    assert_eq!(read_all(b"\xd4\x01x"), Ok(Token::Ext(1, b"x")));
    assert_eq!(read_all(b"\xd5\xffxy"), Ok(Token::Ext(-1, b"xy")));
    assert_eq!(read_all(&[0xd8; 18]), Ok(Token::Ext(-40, &[0xd8; 16])));
    assert_eq!(read_all(b"\xc7\x01\x05x"), Ok(Token::Ext(5, b"x")));
    assert_eq!(read_all(b"\xc8\x00\x01\x05x"), Ok(Token::Ext(5, b"x")));
    assert_eq!(read_all(b"\xc9\x00\x00\x00\x01\x05x"), Ok(Token::Ext(5, b"x")));
    assert_eq!(read_all(&[0x93]), Ok(Token::Array(3)));
    assert_eq!(read_all(&[0xdc, 1, 0]), Ok(Token::Array(256)));
    assert_eq!(read_all(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Ok(Token::Array(u32::MAX)));
    assert_eq!(read_all(&[0x82]), Ok(Token::Map(2)));
    assert_eq!(read_all(&[0xde, 0, 16]), Ok(Token::Map(16)));
    assert_eq!(read_all(&[0xdf, 0, 1, 0, 0]), Ok(Token::Map(65536)));
    assert_eq!(read_all(&[0xc1]), Err(Error::Reserved { offset: 0 }));
}

#[test]
fn truncation_names_the_buffer_end() {
    for b in
        [&b""[..], b"\xcd\x01", b"\xa3ab", b"\xdb\xff\xff\xff\xff", b"\xd7\x00\x01", b"\xde\x00"]
    {
        assert_eq!(Reader::new(b).read(), Err(Error::Truncated { offset: b.len() }), "{b:02x?}");
    }
}

#[test]
fn typed_reads_consume_nothing_on_another_type() {
    let b = b"\xa1x";
    let mut r = Reader::new(b);
    assert_eq!(r.array_len(), Ok(None));
    assert_eq!(r.map_len(), Ok(None));
    assert_eq!(r.position(), 0);
    assert_eq!(r.str_or_bin(), Ok(Some((&b"x"[..], true))));
    assert!(r.at_end());
    let mut r = Reader::new(b"\xc4\x01y");
    assert_eq!(r.str(), Ok(None), "a bin is not a str");
    assert_eq!(r.str_or_bin(), Ok(Some((&b"y"[..], false))));
    let mut r = Reader::new(b"\x92\xdc\x00\x01\xdf\x00\x00\x00\x00");
    assert_eq!(r.array_len(), Ok(Some(2)));
    assert_eq!(r.array_len(), Ok(Some(1)));
    assert_eq!(r.map_len(), Ok(Some(0)));
    assert!(r.at_end());
    assert_eq!(Reader::new(b"\xc1").array_len(), Err(Error::Reserved { offset: 0 }));
}

#[test]
fn str_body_ignores_what_follows_and_refuses_other_types() {
    assert_eq!(str_body(b"\xa2hi\xc0"), Some(&b"hi"[..]));
    assert_eq!(str_body(b"\xda\x00\x01z"), Some(&b"z"[..]));
    assert_eq!(str_body(b"\xc4\x01z"), None);
    assert_eq!(str_body(b"\xa3hi"), None);
    assert_eq!(str_body(b""), None);
}

#[test]
fn skip_returns_the_range_and_names_reserved_offsets() {
    let b = b"\x01\x92\xa1a\x81\x01\x02\xc0";
    let mut r = Reader::new(b);
    assert_eq!(r.skip(), Ok(0..1));
    assert_eq!(r.skip(), Ok(1..7));
    assert_eq!(r.skip(), Ok(7..8));
    assert_eq!(r.skip(), Err(Error::Truncated { offset: 8 }));
    let mut r = Reader::new(b"\x01\x92\x01\xc1");
    assert_eq!(r.skip(), Ok(0..1));
    assert_eq!(r.skip(), Err(Error::Reserved { offset: 3 }));
    // A claimed count larger than the bytes left is truncated, not a limit error.
    assert_eq!(
        Reader::new(b"\xdd\xff\xff\xff\xff\x01").skip(),
        Err(Error::Truncated { offset: 6 })
    );
}

#[test]
fn skip_nested_counts_open_non_empty_containers() {
    // Eight nested arrays around a scalar: fine at MAX 8; a ninth is too deep.
    let mut ok = vec![0x91; 8];
    ok.push(0x01);
    assert_eq!(Reader::new(&ok).skip_nested::<8>(), Ok(0..9));
    let mut deep = vec![0x91; 9];
    deep.push(0x01);
    assert_eq!(Reader::new(&deep).skip_nested::<8>(), Err(Error::TooDeep { limit: 8, offset: 8 }));
    // An empty container opens nothing; maps count their pairs.
    let mut empty = vec![0x91; 8];
    empty.push(0x90);
    assert_eq!(Reader::new(&empty).skip_nested::<8>(), Ok(0..9));
    assert_eq!(Reader::new(b"\x82\x01\x91\x02\x03\x80").skip_nested::<2>(), Ok(0..6));
    assert_eq!(Reader::new(b"\x92\x01").skip_nested::<2>(), Err(Error::Truncated { offset: 2 }));
}

#[test]
fn deep_nesting_costs_no_stack() {
    let mut v = vec![0x91; 1_000_000];
    v.push(0xc0);
    assert_eq!(value_len(&v, usize::MAX), Ok(Extent::Complete(v.len())));
    assert_eq!(Reader::new(&v).skip(), Ok(0..v.len()));
    assert!(matches!(Reader::new(&v).skip_nested::<64>(), Err(Error::TooDeep { limit: 64, .. })));
    let maps = [0x81, 0x01].repeat(1_000_000);
    assert_eq!(Reader::new(&maps).skip(), Err(Error::Truncated { offset: maps.len() }));
}

#[test]
fn kinds_and_descriptions() {
    assert_eq!(Kind::of(0x00), Kind::Int);
    assert_eq!(Kind::of(0xd3), Kind::Int);
    assert_eq!(Kind::of(0xde), Kind::Map);
    assert_eq!(Kind::of(0xdd), Kind::Array);
    assert_eq!(Kind::of(0xd9), Kind::Str);
    assert_eq!(Kind::of(0xc6), Kind::Bin);
    assert_eq!(Kind::of(0xd8), Kind::Ext);
    assert_eq!(Kind::of(0xcb), Kind::Float);
    assert_eq!(Kind::of(0xc1).describe(), "the reserved marker 0xc1");
    assert!(is_map(b"\x80") && is_map(b"\xdf") && !is_map(b"\x90") && !is_map(b""));
    // Every marker's kind agrees with the token it reads as.
    for m in 0..=255u8 {
        let mut b = vec![m];
        b.resize(40, 0);
        let kind = match Reader::new(&b).read() {
            Ok(Token::Nil) => Kind::Nil,
            Ok(Token::Bool(_)) => Kind::Bool,
            Ok(Token::UInt(_) | Token::Int(_)) => Kind::Int,
            Ok(Token::F32(_) | Token::F64(_)) => Kind::Float,
            Ok(Token::Str(_)) => Kind::Str,
            Ok(Token::Bin(_)) => Kind::Bin,
            Ok(Token::Ext(..)) => Kind::Ext,
            Ok(Token::Array(_)) => Kind::Array,
            Ok(Token::Map(_)) => Kind::Map,
            Err(_) => Kind::Reserved,
        };
        assert_eq!(Kind::of(m), kind, "marker {m:#04x}");
    }
}

/// A large value fed a few bytes at a time costs one walk: each call reads again at most the
/// one header it stopped in, so the steps are the headers plus the calls, not their product.
/// (Restarted at byte 0 on every call, as before `ValueWalk`, the same drip took
/// 3,286,104,290 steps.)
#[test]
fn dripped_value_is_walked_once() {
    // [tag, [[t, {"log": "line n"}] × 20,000]]: a Forward-mode request of small entries.
    let entries = 20_000usize;
    let mut v = vec![0x92, 0xa3, b't', b'a', b'g', 0xdc];
    v.extend_from_slice(&u16::try_from(entries).unwrap_or(u16::MAX).to_be_bytes());
    for i in 0..entries {
        v.extend_from_slice(&[0x92, 0xce]);
        v.extend_from_slice(&u32::try_from(i).unwrap_or(0).to_be_bytes());
        let line = format!("line {i:06}");
        v.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa0 | line.len() as u8]);
        v.extend_from_slice(line.as_bytes());
    }
    // Headers: the request, the tag, the array, and per entry its array, time, map, key, value.
    let headers = 3 + 5 * entries as u64;
    let mut walk = ValueWalk::new();
    let mut calls = 0u64;
    let mut end = 0;
    let result = loop {
        end = (end + 7).min(v.len());
        calls += 1;
        match walk.walk(&v[..end], usize::MAX) {
            Ok(Extent::Incomplete { .. }) => assert!(end < v.len(), "incomplete at the end"),
            other => break other,
        }
    };
    assert_eq!(result, Ok(Extent::Complete(v.len())));
    assert!(calls > 50_000, "{calls} calls: the value was not dripped");
    assert!(
        walk.steps() <= headers + calls,
        "{} steps for {headers} headers in {calls} calls",
        walk.steps()
    );
}
