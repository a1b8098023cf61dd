use super::*;
use crate::event::EventTime;

#[test]
fn addresses() {
    assert_eq!(Address::parse("tcp://127.0.0.1:24224"), Ok(Address::Tcp("127.0.0.1:24224".into())));
    assert_eq!(Address::parse("tcp://[::1]:1"), Ok(Address::Tcp("[::1]:1".into())));
    assert_eq!(Address::parse("unix:///run/b.sock"), Ok(Address::Unix("/run/b.sock".into())));
    for bad in
        ["127.0.0.1:24224", "tcp://host", "tcp://:80", "tcp://h:99999", "unix://", "udp://h:1"]
    {
        assert!(Address::parse(bad).is_err(), "{bad}");
    }
    let a = Address::parse("unix:///x").expect("parses");
    assert_eq!(a.to_string(), "unix:///x");
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (raw, enc) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(raw.as_bytes()), enc);
    }
    assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    let id = new_chunk_id();
    assert_eq!(id.len(), 24);
    assert!(id.ends_with("=="));
    assert_ne!(id, new_chunk_id());
}

#[test]
fn rfc3339_times() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(EventTime::new(0, 0)));
    assert_eq!(
        parse_rfc3339("2024-02-29T12:34:56.123456789Z"),
        Some(EventTime::new(1_709_210_096, 123_456_789))
    );
    assert_eq!(
        parse_rfc3339("2024-02-29T14:34:56.5+02:00"),
        Some(EventTime::new(1_709_210_096, 500_000_000))
    );
    assert_eq!(parse_rfc3339("1969-12-31t23:59:59-00:01"), Some(EventTime::new(59, 0)));
    assert_eq!(
        parse_rfc3339("2024-01-01 00:00:00.1234567891z"),
        Some(EventTime::new(1_704_067_200, 123_456_789))
    );
    for bad in [
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+0100",
        "2024-1-01T00:00:00Z",
        "yesterday",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn times_from_numbers() {
    let t = |s: &str| match parse_line(&format!("{{\"t\":{s}}}"), 1, Some("t")) {
        Ok(Some(ev)) => Some(ev.time),
        _ => None,
    };
    assert_eq!(t("1700000000"), Some(EventTime::new(1_700_000_000, 0)));
    assert_eq!(t("1700000000.25"), Some(EventTime::new(1_700_000_000, 250_000_000)));
    assert_eq!(t("1.1"), Some(EventTime::new(1, 100_000_000)));
    assert_eq!(t("-1.5"), Some(EventTime::new(-2, 500_000_000)));
    assert_eq!(t("true"), None);
    assert_eq!(t("1e300"), None);
}

#[test]
fn json_becomes_msgpack_with_integers_kept() {
    let ev = parse_line(
        r#"{"a":1,"b":-2,"c":1.5,"d":"x","e":[true,null],"f":{"g":18446744073709551615}}"#,
        1,
        None,
    )
    .expect("ok")
    .expect("event");
    let v = rmpv::decode::read_value(&mut &ev.record[..]).expect("msgpack");
    let want = rmpv::Value::Map(vec![
        ("a".into(), rmpv::Value::from(1u64)),
        ("b".into(), rmpv::Value::from(-2i64)),
        ("c".into(), rmpv::Value::F64(1.5)),
        ("d".into(), "x".into()),
        ("e".into(), rmpv::Value::Array(vec![true.into(), rmpv::Value::Nil])),
        ("f".into(), rmpv::Value::Map(vec![("g".into(), rmpv::Value::from(u64::MAX))])),
    ]);
    assert_eq!(v, want);
}

#[test]
fn key_order_is_kept_and_only_the_top_level_time_key_counts() {
    let ev = parse_line(r#"{"z":{"ts":5},"a":[],"m":{},"ts":7,"s":"\u00e9\"q"}"#, 1, Some("ts"))
        .expect("ok")
        .expect("event");
    assert_eq!(ev.time, EventTime::new(7, 0));
    let v = rmpv::decode::read_value(&mut &ev.record[..]).expect("msgpack");
    let want = rmpv::Value::Map(vec![
        ("z".into(), rmpv::Value::Map(vec![("ts".into(), rmpv::Value::from(5u64))])),
        ("a".into(), rmpv::Value::Array(vec![])),
        ("m".into(), rmpv::Value::Map(vec![])),
        ("ts".into(), rmpv::Value::from(7u64)),
        ("s".into(), "\u{e9}\"q".into()),
    ]);
    assert_eq!(v, want);
    // Nested time keys are not the event's time.
    let err = parse_line(r#"{"z":{"ts":5}}"#, 2, Some("ts")).expect_err("no top-level ts");
    assert_eq!(err.to_string(), "line 2: no time field \"ts\"");
    // Trailing garbage and truncation are invalid JSON.
    assert!(parse_line(r#"{"a":1} x"#, 3, None).is_err());
    assert!(parse_line(r#"{"a":[1,2}"#, 3, None).is_err());
    // A long array gets a 16-bit length header in front of its items.
    let items = vec!["1"; 70_000].join(",");
    let ev = parse_line(&format!("{{\"a\":[{items}]}}"), 4, None).expect("ok").expect("event");
    let v = rmpv::decode::read_value(&mut &ev.record[..]).expect("msgpack");
    assert_eq!(v["a"].as_array().map(Vec::len), Some(70_000));
}

#[test]
fn bad_lines_name_their_number() {
    assert!(parse_line("  \r\n", 3, None).expect("blank ok").is_none());
    for (line, want) in [
        ("[1,2]", "line 7: not a JSON object"),
        ("{\"a\":", "line 7: invalid JSON"),
        ("{\"a\":1}", "line 7: no time field \"ts\""),
        ("{\"ts\":\"soon\"}", "line 7: time field \"ts\" is not"),
    ] {
        let err = parse_line(line, 7, Some("ts")).expect_err(line).to_string();
        assert!(err.starts_with(want), "{err}");
    }
    let ev = parse_line("{\"ts\":\"2024-01-01T00:00:00Z\",\"m\":1}", 1, Some("ts"))
        .expect("ok")
        .expect("event");
    assert_eq!(ev.time, EventTime::new(1_704_067_200, 0));
}
