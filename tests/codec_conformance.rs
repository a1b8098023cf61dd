//! Forward protocol conformance at the codec layer.
//!
//! Every capture in `tests/fixtures/forward/` (see its README) is replayed through
//! `frame_len` + `decode_frame` the way a connection drives them — whole, split at every
//! byte offset into two writes, and one byte per write — and must decode exactly to its
//! manifest, acks compared byte for byte. Then random events round-trip through every
//! encoder mode (proptest), and hostile inputs fail the way they should.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::event::{Event, EventTime};
use berth::forward::{
    decode_frame, encode_ack, encode_request, frame_len, DecodeError, EncodeOptions, Frame,
    FrameStatus, Limits, Mode,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde_json::{json, Value as Json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;

const MAX: usize = 16 * 1024 * 1024;
const LIMITS: Limits = Limits { max_message_size: MAX };

// ---------------------------------------------------------------------------------------
// A per-thread allocation meter, so the gzip-bomb test can prove the bomb is never held in
// memory. Per thread because the test harness runs tests in parallel.

struct Metered;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add_signed(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Metered = Metered;

/// Peak bytes this thread held live while running `f`, above what it held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// ---------------------------------------------------------------------------------------
// Driving the codec like a connection does.

/// What a stream decoded to.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    /// (tag, event) in order.
    events: Vec<(String, Event)>,
    /// The ack bytes a server would send, in order.
    acks: Vec<Vec<u8>>,
    heartbeats: usize,
}

/// Feeds `writes` one after the other into a read buffer, decoding every complete frame.
/// Like a connection, it only re-walks once `at_least` bytes are buffered.
fn drive<'a>(writes: impl IntoIterator<Item = &'a [u8]>) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    let mut buf = BytesMut::new();
    let mut need = 1;
    for w in writes {
        buf.extend_from_slice(w);
        while buf.len() >= need {
            match frame_len(&buf, MAX)? {
                FrameStatus::Complete(n) => {
                    let frame = buf.split_to(n).freeze();
                    need = 1;
                    match decode_frame(frame, &LIMITS)? {
                        Frame::Heartbeat => out.heartbeats += 1,
                        Frame::Request(req) => {
                            let tag = req.batch.tag.as_str().to_owned();
                            out.events
                                .extend(req.batch.events.into_iter().map(|e| (tag.clone(), e)));
                            if let Some(chunk) = req.options.chunk {
                                out.acks.push(encode_ack(&chunk));
                            }
                        }
                    }
                }
                FrameStatus::Incomplete { at_least } => {
                    assert!(at_least > buf.len(), "at_least {at_least} <= buffered {}", buf.len());
                    need = at_least;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded at end of stream", buf.len());
    Ok(out)
}

fn fixtures() -> Vec<(String, Vec<u8>, Json)> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/fixtures/forward");
    let mut bins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    bins.sort();
    assert!(bins.len() >= 11, "fixtures missing in {}", dir.display());
    bins.into_iter()
        .map(|bin| {
            let name = bin.file_stem().unwrap().to_string_lossy().into_owned();
            let manifest = std::fs::read(bin.with_extension("json")).unwrap();
            (name, std::fs::read(&bin).unwrap(), serde_json::from_slice(&manifest).unwrap())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// msgpack → the JSON the manifests were written with (Python msgpack + json).

fn to_json(v: &rmpv::Value) -> Json {
    use rmpv::Value as V;
    match v {
        V::Nil => Json::Null,
        V::Boolean(b) => json!(b),
        V::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => json!(u),
            (None, Some(s)) => json!(s),
            _ => panic!("integer {i:?}"),
        },
        V::F32(f) => json!(f64::from(*f)),
        V::F64(f) => json!(f),
        V::String(s) => json!(s.as_str().expect("utf-8 string")),
        // The manifests write bytes as base64, as they do acks.
        V::Binary(b) => json!(base64(b)),
        V::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        V::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().expect("string key").to_owned(), to_json(v)))
                .collect(),
        ),
        V::Ext(t, b) => panic!("ext {t} {b:02x?} in a record"),
    }
}

fn read_value(b: &[u8]) -> rmpv::Value {
    let mut cur = b;
    let v = rmpv::decode::read_value(&mut cur).expect("record is msgpack");
    assert!(cur.is_empty(), "record has trailing bytes");
    v
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..4 {
            s.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    s
}

/// The exact bytes of `{"ack": <chunk>}`, built independently of `encode_ack`.
fn expected_ack(chunk: &Json) -> Vec<u8> {
    let chunk = chunk.as_str().expect("manifest chunk is a string");
    let map = rmpv::Value::Map(vec![("ack".into(), chunk.into())]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).unwrap();
    out
}

fn check_manifest(name: &str, got: &Decoded, manifest: &Json) {
    let want = manifest["events"].as_array().unwrap();
    assert_eq!(got.events.len(), want.len(), "{name}: event count");
    for (i, ((tag, ev), w)) in got.events.iter().zip(want).enumerate() {
        assert_eq!(json!(tag), w["tag"], "{name} event {i}: tag");
        assert_eq!(json!([ev.time.secs, ev.time.nanos]), w["time"], "{name} event {i}: time");
        assert_eq!(to_json(&read_value(&ev.record)), w["record"], "{name} event {i}: record");
        let meta = (!ev.metadata.is_empty()).then(|| to_json(&read_value(&ev.metadata)));
        assert_eq!(meta.as_ref(), w.get("metadata"), "{name} event {i}: metadata");
    }
    let acks: Vec<Vec<u8>> =
        manifest["acks"].as_array().unwrap().iter().map(expected_ack).collect();
    assert_eq!(got.acks, acks, "{name}: acks");
}

#[test]
fn fixtures_decode_to_their_manifests() {
    for (name, bin, manifest) in fixtures() {
        let got = drive([&bin[..]]).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_manifest(&name, &got, &manifest);
    }
}

#[test]
fn fixtures_decode_the_same_split_at_every_offset() {
    for (name, bin, _) in fixtures() {
        let whole = drive([&bin[..]]).unwrap();
        for cut in 1..bin.len() {
            let split = drive([&bin[..cut], &bin[cut..]]).unwrap();
            assert!(split == whole, "{name}: split at {cut} decodes differently");
        }
    }
}

#[test]
fn fixtures_decode_the_same_one_byte_at_a_time() {
    for (name, bin, _) in fixtures() {
        let whole = drive([&bin[..]]).unwrap();
        let bytewise = drive(bin.chunks(1)).unwrap();
        assert!(bytewise == whole, "{name}: byte-at-a-time decodes differently");
    }
}

#[test]
fn fixture_modes_are_the_documented_ones() {
    let mode_of = |name: &str| -> Vec<Mode> {
        let (_, bin, _) = fixtures().into_iter().find(|(n, _, _)| n == name).unwrap();
        let mut modes = Vec::new();
        let mut rest = Bytes::from(bin);
        while !rest.is_empty() {
            let Ok(FrameStatus::Complete(n)) = frame_len(&rest, MAX) else { panic!("{name}") };
            if let Ok(Frame::Request(r)) = decode_frame(rest.split_to(n), &LIMITS) {
                modes.push(r.mode);
            }
        }
        modes.dedup();
        modes
    };
    assert_eq!(mode_of("pylogger-message"), [Mode::Message]);
    assert_eq!(mode_of("pylogger-eventtime"), [Mode::Message]);
    for docker in [
        "docker-plain",
        "docker-subsecond",
        "docker-request-ack",
        "docker-partial",
        "docker-async",
        "docker-labels-env",
    ] {
        assert_eq!(
            mode_of(docker),
            [Mode::Message],
            "{docker}: Docker's driver sends Message mode"
        );
    }
    assert_eq!(mode_of("fluentbit-forward"), [Mode::Forward]);
    assert_eq!(mode_of("fluentbit-gzip"), [Mode::CompressedPackedForward]);
    assert_eq!(mode_of("generated-packed-str"), [Mode::PackedForward]);
    assert_eq!(mode_of("generated-gzip-two-members-ext8"), [Mode::CompressedPackedForward]);
    assert_eq!(mode_of("generated-float-nil-empty"), [Mode::Message, Mode::Forward, Mode::Message]);
}

// ---------------------------------------------------------------------------------------
// Round trip of random events through every encoder mode.

fn leaf() -> impl Strategy<Value = rmpv::Value> {
    prop_oneof![
        Just(rmpv::Value::Nil),
        any::<bool>().prop_map(rmpv::Value::from),
        any::<i64>().prop_map(rmpv::Value::from),
        any::<u64>().prop_map(rmpv::Value::from),
        any::<f64>().prop_map(rmpv::Value::F64),
        any::<f32>().prop_map(rmpv::Value::F32),
        ".{0,40}".prop_map(rmpv::Value::from),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(rmpv::Value::Binary),
    ]
}

fn map_of(inner: impl Strategy<Value = rmpv::Value>) -> impl Strategy<Value = rmpv::Value> {
    proptest::collection::vec(("[a-z_]{1,12}".prop_map(rmpv::Value::from), inner), 0..8)
        .prop_map(rmpv::Value::Map)
}

fn value() -> impl Strategy<Value = rmpv::Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(rmpv::Value::Array),
            map_of(inner),
        ]
    })
}

fn msgpack(v: &rmpv::Value) -> Bytes {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    Bytes::from(out)
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u32>(),
        0u32..1_000_000_000,
        map_of(value()),
        proptest::option::of(
            map_of(value()).prop_filter("non-empty", |m| m.as_map().is_some_and(|m| !m.is_empty())),
        ),
    )
        .prop_map(|(secs, nanos, record, meta)| Event {
            time: EventTime::new(i64::from(secs), nanos),
            record: msgpack(&record),
            metadata: meta.as_ref().map(msgpack).unwrap_or_default(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_mode_round_trips(
        tag in "[a-zA-Z0-9._\\-]{1,30}|.{0,10}",
        events in proptest::collection::vec(event(), 1..20),
        event_time: bool,
        chunk in proptest::option::of("[A-Za-z0-9+/=]{1,24}"),
    ) {
        let opts = EncodeOptions { chunk: chunk.clone(), event_time };
        for mode in [Mode::Message, Mode::Forward, Mode::PackedForward, Mode::CompressedPackedForward] {
            let stream = encode_request(mode, &tag, &events, &opts);
            let got = drive([&stream[..]]).map_err(|e| TestCaseError::fail(format!("{mode:?}: {e}")))?;
            let want: Vec<(String, Event)> = events
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if !event_time {
                        e.time.nanos = 0;
                    }
                    if mode == Mode::Message {
                        e.metadata = Bytes::new(); // Message mode has no metadata slot
                    }
                    (tag.clone(), e)
                })
                .collect();
            prop_assert_eq!(&got.events, &want, "{:?}", mode);
            let requests = if mode == Mode::Message { events.len() } else { 1 };
            let acks: Vec<Vec<u8>> = match &chunk {
                Some(c) => vec![expected_ack(&json!(c)); requests],
                None => vec![],
            };
            prop_assert_eq!(&got.acks, &acks, "{:?}", mode);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// frame_len agrees with an independent encoder on where a value ends, and every
    /// prefix is incomplete with a lower bound that never overshoots.
    #[test]
    fn frame_len_finds_the_end_of_any_value(v in value(), trailing in proptest::collection::vec(any::<u8>(), 0..4)) {
        let bytes = msgpack(&v);
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(&trailing);
        prop_assert_eq!(frame_len(&buf, usize::MAX).ok(), Some(FrameStatus::Complete(bytes.len())));
        for cut in 0..bytes.len() {
            match frame_len(&bytes[..cut], usize::MAX) {
                Ok(FrameStatus::Incomplete { at_least }) => {
                    prop_assert!(at_least > cut && at_least <= bytes.len(), "cut {} at_least {}", cut, at_least)
                }
                other => prop_assert!(false, "cut {}: {:?}", cut, other),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile and broken input.

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn packed_gzip(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x93, 0xa1, b't', 0xc6];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.extend_from_slice(b"\x81\xaacompressed\xa4gzip");
    v
}

#[test]
fn truncated_frames_stay_incomplete() {
    let events = vec![
        Event {
            time: EventTime::new(1_763_769_600, 5),
            record: Bytes::from_static(b"\x82\xa3log\xa5hello\xa6source\xa6stdout"),
            metadata: Bytes::from_static(b"\x81\xa1k\xa1v"),
        };
        3
    ];
    let opts = EncodeOptions { chunk: Some("c".into()), event_time: true };
    for mode in [Mode::Message, Mode::Forward, Mode::PackedForward, Mode::CompressedPackedForward] {
        let b = encode_request(mode, "t", &events, &opts);
        let Ok(FrameStatus::Complete(first)) = frame_len(&b, MAX) else { panic!("{mode:?}") };
        for cut in 0..first {
            match frame_len(&b[..cut], MAX) {
                Ok(FrameStatus::Incomplete { at_least }) => {
                    assert!(at_least > cut && at_least <= first, "{mode:?} cut {cut}: {at_least}")
                }
                other => panic!("{mode:?} cut {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn four_billion_element_array_fails_fast() {
    for header in
        [&b"\xdd\xff\xff\xff\xff"[..], b"\x92\xa1t\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"]
    {
        let (res, peak) = peak_during(|| frame_len(header, MAX));
        let err = res.expect_err("must fail on the header alone");
        assert_eq!(err.reason(), "frame_too_large");
        assert_eq!(peak, 0, "frame_len allocated");
    }
    let err = frame_len(b"\xc6\x40\x00\x00\x00", MAX).unwrap_err();
    assert_eq!(err.to_string(), "frame of 1073741829 bytes exceeds max_message_size 16777216");
}

#[test]
fn gzip_bomb_fails_without_inflating_it() {
    // 100 MiB of zeros: one member, and the same again as 100 members of 1 MiB.
    let hundred_mib = vec![0u8; 100 << 20];
    let one = gzip(&hundred_mib);
    drop(hundred_mib);
    let member = gzip(&vec![0u8; 1 << 20]);
    let many: Vec<u8> = member.iter().copied().cycle().take(member.len() * 100).collect();
    for bomb in [one, many] {
        let frame = Bytes::from(packed_gzip(&bomb));
        assert!(frame.len() < 1 << 20, "bomb is {} bytes", frame.len());
        let (res, peak) = peak_during(|| decode_frame(frame, &LIMITS));
        let err = res.expect_err("bomb must fail");
        assert_eq!(err.reason(), "decompressed_too_large");
        assert_eq!(err.to_string(), "gzip payload inflates past max_message_size (16777216 bytes)");
        assert!(peak < 2 * MAX + (1 << 20), "decoding the bomb peaked at {peak} bytes");
    }
}

#[test]
fn broken_requests_fail_with_their_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"\xa5hello", "not_array"),
        (b"\x81\xa1a\x01", "not_array"),
        (b"\x93\x07\x01\x80", "bad_tag"),
        (b"\x93\xc4\x01t\x01\x80", "bad_tag"),
        (b"\x93\xa1t\x01\xa1x", "non_map_record"),
        (b"\x93\xa1t\x01\x91\x01", "non_map_record"),
        (b"\x92\xa1t\x91\x92\xc3\x80", "bad_time"),
        (b"\x93\xa1t\xd7\x01\x00\x00\x00\x01\x00\x00\x00\x00\x80", "bad_time"),
        (b"\x93\xa1t\xc4\x04\x1f\x8b\x00\x00\x81\xaacompressed\xa4gzip", "bad_compression"),
        (b"\x93\xa1t\xc4\x03abc\x81\xaacompressed\xa4gzip", "bad_compression"),
        (b"\x93\xa1t\x01\xc1", "malformed"),
    ];
    for (b, reason) in cases {
        let err = decode_frame(Bytes::from_static(b), &LIMITS).expect_err("must fail");
        assert_eq!(err.reason(), *reason, "{b:02x?}: {err}");
    }
}
