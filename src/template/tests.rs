//! Unit tests of name templates.

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
    let s =
        NameTemplate::parse_as("{ecs_task_id}/{ecs_container_name}", Naming::LogStream).unwrap();
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
