//! Unit tests of the msgpack → JSON transcoder.

use super::*;
use crate::event::{Batch, Tag};
use bytes::Bytes;
use proptest::prelude::*;
use rmpv::Value;

fn encode(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, v).unwrap();
    b
}

fn json(msgpack: &[u8]) -> String {
    let mut out = Vec::new();
    write_record_json(&mut out, msgpack).unwrap();
    String::from_utf8(out).unwrap()
}

fn rfc(secs: i64, nanos: u32) -> String {
    let mut out = Vec::new();
    write_rfc3339(&mut out, EventTime::new(secs, nanos));
    String::from_utf8(out).unwrap()
}

fn map(pairs: Vec<(Value, Value)>) -> Value {
    Value::Map(pairs)
}

#[test]
fn scalars() {
    assert_eq!(json(&encode(&Value::Nil)), "null");
    assert_eq!(json(&encode(&Value::Boolean(true))), "true");
    assert_eq!(json(&encode(&Value::Boolean(false))), "false");
    assert_eq!(json(&encode(&Value::from(u64::MAX))), "18446744073709551615");
    assert_eq!(json(&encode(&Value::from(i64::MIN))), "-9223372036854775808");
    assert_eq!(json(&encode(&Value::from(-5))), "-5");
    assert_eq!(json(&encode(&Value::F64(1.5))), "1.5");
    assert_eq!(json(&encode(&Value::F32(0.1))), "0.1");
    assert_eq!(json(&encode(&Value::from("hi"))), "\"hi\"");
}

#[test]
fn nested_containers() {
    let v = map(vec![
        (Value::from("a"), Value::Array(vec![Value::from(1), Value::Array(vec![]), map(vec![])])),
        (Value::from("b"), map(vec![(Value::from("c"), Value::Nil)])),
    ]);
    assert_eq!(json(&encode(&v)), r#"{"a":[1,[],{}],"b":{"c":null}}"#);
}

#[test]
fn nan_and_infinity_become_null() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(json(&encode(&Value::F64(f))), "null");
        assert_eq!(json(&encode(&Value::F32(f as f32))), "null");
    }
}

#[test]
fn escaping() {
    let s = "q\"b\\s/\u{0}\u{1f}\n\r\t\u{8}\u{c}\u{7f}é€😀\u{2028}";
    let out = json(&encode(&Value::from(s)));
    assert_eq!(out, "\"q\\\"b\\\\s/\\u0000\\u001f\\n\\r\\t\\b\\f\u{7f}é€😀\u{2028}\"");
    let back: String = serde_json::from_str(&out).unwrap();
    assert_eq!(back, s);
}

#[test]
fn invalid_utf8_becomes_replacement_char() {
    let raw: &[u8] = b"ok\xff\xfe then \xe2\x82 cut \xf0\x9f\x98";
    let mut msgpack = vec![0xa0 | raw.len() as u8];
    msgpack.extend_from_slice(raw);
    let out = json(&msgpack);
    let back: String = serde_json::from_str(&out).unwrap();
    assert_eq!(back, String::from_utf8_lossy(raw));
    assert!(back.contains('\u{FFFD}'));
}

#[test]
fn bin_is_written_as_text() {
    assert_eq!(json(&encode(&Value::Binary(b"a\"\xff".to_vec()))), "\"a\\\"\u{FFFD}\"");
}

#[test]
fn non_string_keys_become_their_json_text() {
    let v = map(vec![
        (Value::from(1), Value::from("int")),
        (Value::Nil, Value::from("nil")),
        (Value::Boolean(true), Value::from("bool")),
        (Value::Array(vec![Value::from(1), Value::from("x\\")]), Value::from("array")),
        (map(vec![(Value::from(2), Value::from(3))]), Value::from("map")),
        (Value::Binary(b"bin".to_vec()), Value::from("bin")),
        (Value::Ext(0, vec![0, 0, 0, 0, 0, 0, 0, 1]), Value::from("time")),
        (Value::F64(2.5), map(vec![(Value::from(-1), Value::Nil)])),
    ]);
    let out = json(&encode(&v));
    assert_eq!(
        out,
        r#"{"1":"int","null":"nil","true":"bool","[1,\"x\\\\\"]":"array","{\"2\":3}":"map","bin":"bin","1970-01-01T00:00:00.000000001Z":"time","2.5":{"-1":null}}"#
    );
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["[1,\"x\\\\\"]"], "array");
    assert_eq!(parsed["{\"2\":3}"], "map");
}

#[test]
fn nested_non_string_keys_are_quoted_twice() {
    // A map key holding a map whose key is an array: each level quotes its key text.
    let inner = map(vec![(Value::Array(vec![Value::from("a")]), Value::from(1))]);
    let v = map(vec![(inner, Value::from(2))]);
    let out = json(&encode(&v));
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (k, v) = parsed.as_object().unwrap().iter().next().unwrap();
    assert_eq!(v, 2);
    let k: serde_json::Value = serde_json::from_str(k).unwrap();
    assert_eq!(k, serde_json::json!({"[\"a\"]": 1}));
}

#[test]
fn event_time_ext_becomes_rfc3339_other_ext_null() {
    let mut t = vec![0xd7, 0x00];
    t.extend_from_slice(&1_795_330_805u32.to_be_bytes());
    t.extend_from_slice(&123_456_789u32.to_be_bytes());
    assert_eq!(json(&t), "\"2026-11-22T07:00:05.123456789Z\"");
    // Same 8 bytes as ext 8 (0xc7) are still an EventTime.
    let mut t8 = vec![0xc7, 8, 0x00];
    t8.extend_from_slice(&t[2..]);
    assert_eq!(json(&t8), "\"2026-11-22T07:00:05.123456789Z\"");
    assert_eq!(json(&encode(&Value::Ext(1, vec![0; 8]))), "null");
    assert_eq!(json(&encode(&Value::Ext(0, vec![0; 4]))), "null");
    assert_eq!(json(&encode(&Value::Ext(-1, vec![0; 12]))), "null");
}

#[test]
fn depth_limit() {
    let mut ok = vec![0x91; MAX_DEPTH - 1];
    ok.push(0x90);
    assert_eq!(json(&ok), format!("{}[]{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1)));
    let mut ok = vec![0x91; MAX_DEPTH];
    ok.push(0x01);
    assert!(write_record_json(&mut Vec::new(), &ok).is_ok());
    let mut deep = vec![0x91; MAX_DEPTH + 1];
    deep.push(0x01);
    let mut out = b"keep".to_vec();
    let err = write_record_json(&mut out, &deep).unwrap_err();
    assert_eq!(err, JsonError::TooDeep { limit: MAX_DEPTH, offset: MAX_DEPTH });
    assert_eq!(out, b"keep", "output restored on error");
    // A million nested maps fail fast, without recursion.
    let huge = [0x81, 0x01].repeat(1_000_000);
    assert!(matches!(write_record_json(&mut Vec::new(), &huge), Err(JsonError::TooDeep { .. })));
}

#[test]
fn malformed_input_is_an_error() {
    let mut out = Vec::new();
    // An array claiming 4 billion elements with none present.
    assert!(matches!(
        write_record_json(&mut out, &[0xdd, 0xff, 0xff, 0xff, 0xff]),
        Err(JsonError::Truncated { .. })
    ));
    assert!(matches!(
        write_record_json(&mut out, &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
        Err(JsonError::Truncated { .. })
    ));
    assert!(matches!(
        write_record_json(&mut out, &[0x82, 0xa1, b'a']),
        Err(JsonError::Truncated { .. })
    ));
    assert!(matches!(write_record_json(&mut out, &[]), Err(JsonError::Truncated { .. })));
    assert_eq!(write_record_json(&mut out, &[0xc1]), Err(JsonError::ReservedMarker { offset: 0 }));
    assert_eq!(
        write_record_json(&mut out, &[0x80, 0x80]),
        Err(JsonError::TrailingBytes { extra: 1 })
    );
    assert!(out.is_empty());
}

#[test]
fn every_truncation_of_a_record_fails_cleanly() {
    let v = map(vec![
        (Value::from("log"), Value::from("hello world")),
        (Value::from("n"), Value::from(-300_000)),
        (Value::from("f"), Value::F64(1.25)),
        (Value::from("t"), Value::Ext(0, vec![1; 8])),
        (Value::from("a"), Value::Array(vec![Value::Binary(vec![1, 2]), Value::from(u64::MAX)])),
    ]);
    let b = encode(&v);
    for cut in 0..b.len() {
        let mut out = Vec::new();
        assert!(write_record_json(&mut out, &b[..cut]).is_err(), "cut at {cut}");
        assert!(out.is_empty());
    }
}

fn event(record: Vec<u8>, metadata: Vec<u8>) -> Event {
    Event {
        time: EventTime::new(1_795_330_805, 5),
        record: Bytes::from(record),
        metadata: Bytes::from(metadata),
    }
}

#[test]
fn event_line_with_and_without_metadata() {
    let rec = encode(&map(vec![(Value::from("log"), Value::from("hi"))]));
    let mut out = Vec::new();
    write_event_line(&mut out, "app.\"web\"", &event(rec.clone(), vec![])).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"tag\":\"app.\\\"web\\\"\",\"time\":\"2026-11-22T07:00:05.000000005Z\",\"record\":{\"log\":\"hi\"}}\n"
    );
    let meta = encode(&map(vec![(Value::from("k"), Value::from(1))]));
    let mut out = Vec::new();
    write_event_line(&mut out, "t", &event(rec, meta)).unwrap();
    assert!(out.ends_with(b",\"record\":{\"log\":\"hi\"},\"metadata\":{\"k\":1}}\n"));
}

#[test]
fn bad_record_becomes_error_line_in_batch() {
    let good = encode(&map(vec![(Value::from("n"), Value::from(1))]));
    let batch = Batch {
        tag: Tag::from_static("t"),
        events: vec![
            event(good.clone(), vec![]),
            event(vec![0x81, 0xa1], vec![]),
            event(good, vec![0xc1]),
        ],
    };
    let mut out = Vec::new();
    let res = write_batch_lines(&mut out, &batch);
    assert_eq!(res.failed, 2);
    assert!(matches!(res.first_error, Some(JsonError::Truncated { .. })));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["record"]["n"], 1);
    assert!(lines[1]["record"].is_null());
    assert_eq!(lines[1]["error"], "msgpack value truncated at byte 2");
    assert_eq!(lines[2]["error"], "msgpack marker 0xc1 (never used) at byte 0");
    assert_eq!(lines[2]["time"], "2026-11-22T07:00:05.000000005Z");
}

// ---- property test: random msgpack → JSON, parsed back by serde_json ----

/// A str value with arbitrary (possibly invalid UTF-8) bytes: rmpv only builds those by
/// decoding.
fn raw_str(bytes: Vec<u8>) -> Value {
    let mut b = vec![0xdb];
    b.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    b.extend_from_slice(&bytes);
    rmpv::decode::read_value(&mut &b[..]).unwrap()
}

/// Keys whose JSON text serde_json writes exactly as we do (no f32, no maps).
fn arb_key() -> impl Strategy<Value = Value> {
    let simple = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::F64),
    ];
    prop_oneof![
        6 => ".{0,8}".prop_map(Value::from),
        1 => proptest::collection::vec(any::<u8>(), 0..6).prop_map(raw_str),
        2 => simple.clone(),
        1 => proptest::collection::vec(simple, 0..3).prop_map(Value::Array),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(5e-324)]
            .prop_map(Value::F64),
        any::<String>().prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(raw_str),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, d)),
        any::<[u8; 8]>().prop_map(|d| Value::Ext(0, d.to_vec())),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((arb_key(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

/// The JSON we expect for a key, as text (see `arb_key`).
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Value::Nil => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::F64(f) => ryu::Buffer::new().format_finite(*f).to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|v| {
                    let t = key_text(v);
                    if matches!(v, Value::String(_)) {
                        serde_json::to_string(&t).unwrap()
                    } else {
                        t
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => panic!("arb_key does not make {other:?}"),
    }
}

fn float_close(a: f64, b: f64) -> bool {
    // serde_json's default float parser may be off by an ulp or so.
    a == b || (a - b).abs() <= 1e-15 * a.abs().max(b.abs()) || (a - b).abs() <= 1e-300
}

fn check(v: &Value, j: &serde_json::Value) -> Result<(), String> {
    let fail = || Err(format!("{v:?} vs {j}"));
    let ok = match v {
        Value::Nil => j.is_null(),
        Value::Boolean(b) => j.as_bool() == Some(*b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => j.as_u64() == Some(u),
            (None, Some(s)) => j.as_i64() == Some(s),
            _ => false,
        },
        Value::F32(f) if f.is_finite() => j.as_f64().is_some_and(|x| x as f32 == *f),
        Value::F64(f) if f.is_finite() => j.as_f64().is_some_and(|x| float_close(x, *f)),
        Value::F32(_) | Value::F64(_) => j.is_null(),
        Value::String(s) => j.as_str() == Some(&*String::from_utf8_lossy(s.as_bytes())),
        Value::Binary(b) => j.as_str() == Some(&*String::from_utf8_lossy(b)),
        Value::Ext(0, d) if d.len() == 8 => {
            let secs = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            let nanos = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            j.as_str() == Some(&*rfc(i64::from(secs), nanos))
        }
        Value::Ext(..) => j.is_null(),
        Value::Array(a) => {
            let Some(ja) = j.as_array() else { return fail() };
            if ja.len() != a.len() {
                return fail();
            }
            for (x, y) in a.iter().zip(ja) {
                check(x, y)?;
            }
            true
        }
        Value::Map(m) => {
            let Some(jm) = j.as_object() else { return fail() };
            // Duplicate keys: serde_json keeps the last; so does this model.
            let mut model: Vec<(String, &Value)> = Vec::new();
            for (k, val) in m {
                let t = key_text(k);
                match model.iter_mut().find(|(mk, _)| *mk == t) {
                    Some(slot) => slot.1 = val,
                    None => model.push((t, val)),
                }
            }
            if model.len() != jm.len() {
                return fail();
            }
            for (k, val) in model {
                let Some(jv) = jm.get(&k) else {
                    return Err(format!("key {k:?} missing in {j}"));
                };
                check(val, jv)?;
            }
            true
        }
    };
    if ok {
        Ok(())
    } else {
        fail()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_msgpack_parses_back_as_the_same_json(v in arb_value()) {
        let b = encode(&v);
        let mut out = b"prefix".to_vec();
        write_record_json(&mut out, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let text = std::str::from_utf8(&out[6..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let j: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        check(&v, &j).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        if write_record_json(&mut out, &b).is_ok() {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        } else {
            prop_assert!(out.is_empty());
        }
    }
}

/// A map whose only key is `key` (and whose value is nil).
fn keyed(key: Value) -> Value {
    Value::Map(vec![(key, Value::Nil)])
}

#[test]
fn non_string_keys_nest_two_levels_and_no_more() {
    let enc = |v: &Value| {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    };
    // {{{"a\\": 1}: nil}: nil}: the record's key is a map whose key is a map: two levels.
    let inner = Value::Map(vec![(Value::from("a\\"), Value::from(1))]);
    let two = keyed(keyed(inner));
    let mut out = Vec::new();
    write_record_json(&mut out, &enc(&two)).unwrap();
    // Each level is the JSON text of the one inside it.
    let top: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let (k1, _) = top.as_object().unwrap().iter().next().unwrap();
    let l1: serde_json::Value = serde_json::from_str(k1).unwrap();
    let (k2, _) = l1.as_object().unwrap().iter().next().unwrap();
    let l2: serde_json::Value = serde_json::from_str(k2).unwrap();
    assert_eq!(l2, serde_json::json!({"a\\": 1}));
    let three = keyed(two);
    let mut out = b"kept".to_vec();
    let err = write_record_json(&mut out, &enc(&three)).unwrap_err();
    assert!(matches!(err, JsonError::KeyTooDeep { limit: MAX_KEY_NESTING, .. }), "{err}");
    assert_eq!(out, b"kept", "out is left as it was");
}

/// The fuzzer's find (fuzz/artifacts, kept in tests/fixtures/fuzz): 17 KB of nested
/// non-string keys whose JSON doubled per level — more than a computer's memory.
#[test]
fn nested_keys_from_the_fuzzer_are_refused_not_expanded() {
    let b = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/json-nested-keys.bin"),
    )
    .unwrap();
    let mut out = Vec::new();
    let res = write_record_json(&mut out, &b);
    assert!(res.is_err() || out.len() < 16 * b.len(), "{res:?}, {} bytes", out.len());
}
