//! Unit tests of the request decoder.

use super::*;
use crate::forward::encode::{encode_request, EncodeOptions};
use rmp::encode as enc;
use std::io::Write;

const LIMITS: Limits = Limits { max_message_size: 1 << 20 };
/// {"a": 1}
const REC: &[u8] = &[0x81, 0xa1, b'a', 0x01];
/// {"m": 2}
const META: &[u8] = &[0x81, 0xa1, b'm', 0x02];

fn decode(b: &[u8]) -> Result<Frame, DecodeError> {
    decode_frame(Bytes::copy_from_slice(b), &LIMITS)
}

fn req(b: &[u8]) -> Request {
    match decode(b) {
        Ok(Frame::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn err(b: &[u8]) -> DecodeError {
    match decode(b) {
        Err(e) => e,
        Ok(f) => panic!("decoded {f:?}"),
    }
}

fn ev(secs: i64, nanos: u32, meta: &'static [u8]) -> Event {
    Event {
        time: EventTime::new(secs, nanos),
        record: Bytes::from_static(REC),
        metadata: Bytes::from_static(meta),
    }
}

/// `[tag, <second>, {"a": 1}, <rest>...]` with the array length given.
fn message(len: u32, tag: &[u8], second: &[u8], rest: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = enc::write_array_len(&mut v, len);
    v.extend_from_slice(tag);
    v.extend_from_slice(second);
    v.extend_from_slice(REC);
    for r in rest {
        v.extend_from_slice(r);
    }
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn packed(tag: &str, payload: &[u8], compressed: Option<&str>) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = enc::write_array_len(&mut v, if compressed.is_some() { 3 } else { 2 });
    let _ = enc::write_str(&mut v, tag);
    let _ = enc::write_bin(&mut v, payload);
    if let Some(c) = compressed {
        let _ = enc::write_map_len(&mut v, 1);
        let _ = enc::write_str(&mut v, "compressed");
        let _ = enc::write_str(&mut v, c);
    }
    v
}

#[test]
fn nil_is_a_heartbeat() {
    assert!(matches!(decode(&[0xc0]), Ok(Frame::Heartbeat)));
}

#[test]
fn message_mode_time_forms() {
    let cases: &[(&[u8], EventTime)] = &[
        (&[0x05], EventTime::new(5, 0)),
        (&[0xce, 0x69, 0x20, 0xfd, 0x00], EventTime::new(1763769600, 0)),
        (&[0xcf, 0, 0, 0, 0, 0x69, 0x20, 0xfd, 0x00], EventTime::new(1763769600, 0)),
        (&[0xd2, 0xff, 0xff, 0xff, 0xfe], EventTime::new(-2, 0)),
        (&[0xff], EventTime::new(-1, 0)),
        // f64 1763769600.25
        (
            &[0xcb, 0x41, 0xda, 0x48, 0x3f, 0x40, 0x10, 0, 0],
            EventTime::new(1763769600, 250_000_000),
        ),
        // f32 1.5
        (&[0xca, 0x3f, 0xc0, 0, 0], EventTime::new(1, 500_000_000)),
        // fixext8 EventTime
        (&[0xd7, 0x00, 0x69, 0x20, 0xfd, 0x00, 0, 0, 0x01, 0xf4], EventTime::new(1763769600, 500)),
        // ext8 EventTime
        (
            &[0xc7, 0x08, 0x00, 0x69, 0x20, 0xfd, 0x00, 0, 0, 0x01, 0xf4],
            EventTime::new(1763769600, 500),
        ),
    ];
    for (time, want) in cases {
        let r = req(&message(3, b"\xa1t", time, &[]));
        assert_eq!(r.mode, Mode::Message);
        assert_eq!(r.batch.tag.as_str(), "t");
        assert_eq!(
            r.batch.events,
            vec![Event { time: *want, record: Bytes::from_static(REC), metadata: Bytes::new() }],
            "{time:02x?}"
        );
    }
}

#[test]
fn float_time_rounds_to_the_nanosecond() {
    assert_eq!(float_time(1.999_999_999_9, 0).ok(), Some(EventTime::new(2, 0)));
    assert_eq!(float_time(-0.5, 0).ok(), Some(EventTime::new(-1, 500_000_000)));
    assert!(float_time(f64::NAN, 0).is_err());
    assert!(float_time(1e300, 0).is_err());
}

#[test]
fn message_mode_chunk_is_kept_raw_and_records_are_zero_copy() {
    // {"chunk": "abc", "size": 1, "other": [1]}
    let opt: &[u8] = b"\x83\xa5chunk\xa3abc\xa4size\x01\xa5other\x91\x01";
    let frame = Bytes::from(message(4, b"\xa1t", &[0x01], &[opt]));
    let Ok(Frame::Request(r)) = decode_frame(frame.clone(), &LIMITS) else { panic!() };
    assert_eq!(r.options.chunk.as_deref(), Some(&b"\xa3abc"[..]));
    assert_eq!(r.options.size, Some(1));
    let rec = &r.batch.events[0].record;
    let inside = frame.as_ptr_range();
    assert!(inside.contains(&rec.as_ptr()), "record is not a slice of the frame");
}

#[test]
fn nil_options_mean_none() {
    let r = req(&message(4, b"\xa1t", &[0x01], &[&[0xc0]]));
    assert_eq!(r.options, Options::default());
}

#[test]
fn forward_mode_entries_and_metadata() {
    let events = [ev(1, 2, META), ev(3, 4, b"")];
    let b = encode_request(
        Mode::Forward,
        "fwd",
        &events,
        &EncodeOptions { chunk: Some("c1".into()), event_time: true },
    );
    let r = req(&b);
    assert_eq!(r.mode, Mode::Forward);
    assert_eq!(r.batch.events, events);
    assert_eq!(r.options.chunk.as_deref(), Some(&b"\xa2c1"[..]));
}

#[test]
fn empty_metadata_map_is_dropped() {
    // [t, [[[1, {}], {"a":1}], [[2, nil], {"a":1}]]]
    let b = b"\x92\xa1t\x92\x92\x92\x01\x80\x81\xa1a\x01\x92\x92\x02\xc0\x81\xa1a\x01";
    let r = req(b);
    assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
}

#[test]
fn forward_mode_with_zero_entries_is_valid() {
    let r = req(b"\x93\xa1t\x90\x80");
    assert_eq!(r.mode, Mode::Forward);
    assert!(r.batch.is_empty());
}

#[test]
fn packed_forward_bin_and_str_payloads() {
    let events = [ev(1, 0, b""), ev(2, 5, META)];
    let b = encode_request(
        Mode::PackedForward,
        "p",
        &events,
        &EncodeOptions { chunk: None, event_time: true },
    );
    let r = req(&b);
    assert_eq!((r.mode, r.options.size), (Mode::PackedForward, Some(2)));
    assert_eq!(r.batch.events, events);

    // fluentd's out_forward sends the payload as a str.
    let payload = b"\x92\x01\x81\xa1a\x01\x92\x02\x81\xa1a\x01";
    let mut v = b"\x93\xa1p".to_vec();
    let _ = enc::write_str_len(&mut v, payload.len() as u32);
    v.extend_from_slice(payload);
    v.extend_from_slice(b"\x81\xaacompressed\xa4text");
    let r = req(&v);
    assert_eq!(r.mode, Mode::PackedForward);
    assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
}

#[test]
fn packed_str_payload_transcoded_from_latin1() {
    // The entries `[1, {"a": 1}]` `[0xce 0x69 0x20 0xfd 0x00, {}]` with every byte >= 0x80
    // written as the UTF-8 of that Latin-1 character.
    let raw = b"\x92\x01\x81\xa1a\x01\x92\xce\x69\x20\xfd\x00\x81\xa1a\x01";
    let text: String = raw.iter().map(|&b| char::from(b)).collect();
    let mut v = b"\x92\xa1p".to_vec();
    let _ = enc::write_str(&mut v, &text);
    let r = req(&v);
    assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(1763769600, 0, b"")]);
    // Not Latin-1 (U+2713) after a transcoded start: malformed, not misread.
    let mut v = b"\x92\xa1p".to_vec();
    let _ = enc::write_str(&mut v, "\u{92}\u{2713}");
    assert_eq!(err(&v).reason(), "malformed");
}

#[test]
fn compressed_packed_forward_single_and_multi_member() {
    let events = [ev(1, 0, b""), ev(2, 5, META), ev(3, 0, b"")];
    let b = encode_request(Mode::CompressedPackedForward, "z", &events, &EncodeOptions::default());
    let r = req(&b);
    assert_eq!(r.mode, Mode::CompressedPackedForward);
    assert_eq!(r.batch.events.len(), 3);
    assert_eq!(r.batch.events[1].metadata, Bytes::from_static(META));

    let mut two = gzip(b"\x92\x01\x81\xa1a\x01");
    two.extend(gzip(b"\x92\x02\x81\xa1a\x01"));
    let r = req(&packed("z", &two, Some("gzip")));
    assert_eq!(r.batch.events, vec![ev(1, 0, b""), ev(2, 0, b"")]);
}

#[test]
fn gzip_bomb_stops_at_the_limit() {
    let zeros = vec![0u8; 4 << 20];
    let b = packed("z", &gzip(&zeros), Some("gzip"));
    let e = err(&b);
    assert_eq!(e.reason(), "decompressed_too_large");
    assert_eq!(e.to_string(), "gzip payload inflates past max_message_size (1048576 bytes)");
}

#[test]
fn corrupt_gzip_fails_clearly() {
    let e = err(&packed("z", b"\x1f\x8bnot really gzip at all", Some("gzip")));
    assert_eq!(e.reason(), "bad_compression");
    assert!(e.to_string().starts_with("gzip payload is corrupt"), "{e}");
    let mut truncated = gzip(b"\x92\x01\x81\xa1a\x01");
    truncated.truncate(truncated.len() - 4);
    assert_eq!(err(&packed("z", &truncated, Some("gzip"))).reason(), "bad_compression");
}

#[test]
fn unknown_compression_is_rejected() {
    let e = err(&packed("z", b"", Some("zstd")));
    assert_eq!(e.reason(), "bad_compression");
    assert_eq!(e.to_string(), "unknown compression \"zstd\" (expected \"gzip\" or \"text\")");
}

#[test]
fn truncated_packed_entry_is_a_bad_entry() {
    let e = err(&packed("p", b"\x92\x01\x81\xa1a", None));
    assert_eq!(e.reason(), "bad_entry");
    assert_eq!(e.to_string(), "entry 0 is truncated in the packed payload");
}

#[test]
fn malformed_record_inside_a_packed_payload() {
    let e = err(&packed("p", b"\x92\x01\x81\xa1a\xc1", None));
    assert_eq!(e.reason(), "malformed");
}

#[test]
fn errors_and_reasons() {
    let cases: &[(&[u8], &str, &str)] = &[
        (b"\x81\xa1a\x01", "not_array", "request is a map, not an array"),
        (b"\x91\xa1t", "not_array", "request is an array of 1 elements, not 2 to 4"),
        (b"\x95\xa1t\x01\x80\xc0\xc0", "not_array", "request is an array of 5 elements, not 2 to 4"),
        (b"\x93\x01\x01\x80", "bad_tag", "tag is an integer, not a string"),
        (b"\x93\xc4\x01t\x01\x80", "bad_tag", "tag is a binary, not a string"),
        (b"\x93\xa1\xff\x01\x80", "bad_tag", "tag is not valid utf-8"),
        (b"\x93\xa1t\xc0\x80", "bad_entry", "second element of the request is nil: not a time, an entry array or a packed payload"),
        (b"\x92\xa1t\x01", "bad_entry", "Message request has 2 elements"),
        (b"\x93\xa1t\x01\xa1x", "non_map_record", "record 0 is a string, not a map"),
        (b"\x93\xa1t\xd6\x00\x00\x00\x00\x01\x80", "bad_time", "time of entry 0 is an extension of type 0 and 4 bytes, not an EventTime (type 0, 8 bytes)"),
        (b"\x93\xa1t\xd7\x05\x00\x00\x00\x01\x00\x00\x00\x00\x80", "bad_time", "time of entry 0 is an extension of type 5 and 8 bytes, not an EventTime (type 0, 8 bytes)"),
        (b"\x93\xa1t\xd7\x00\x00\x00\x00\x01\x3b\x9a\xca\x00\x80", "bad_time", "time of entry 0 is out of range"),
        (b"\x93\xa1t\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x80", "bad_time", "time of entry 0 is out of range"),
        (b"\x92\xa1t\x91\x92\xa1x\x80", "bad_time", "time of entry 0 is a string, not an integer, a float or an EventTime"),
        (b"\x92\xa1t\x91\x93\x01\x80\x80", "bad_entry", "entry 0 is an array of the wrong length, not [time, record]"),
        (b"\x92\xa1t\x91\x01", "bad_entry", "entry 0 is not an array"),
        (b"\x92\xa1t\x91\x92\x93\x01\x80\x80\x80", "bad_entry", "entry 0 is a [time, metadata] header of the wrong length"),
        (b"\x94\xa1t\x01\x80\x91\x01", "bad_options", "options are an array, not a map"),
        (b"\x94\xa1t\x01\x80\x81\xa4size\xa1x", "bad_options", "option \"size\" is a string, not a non-negative integer"),
        (b"\x94\xa1t\x01\x80\x81\xaacompressed\x01", "bad_options", "option \"compressed\" is an integer, not a string"),
        (b"\x92\xa1t\xc1", "malformed", "malformed msgpack at byte 3: reserved marker 0xc1"),
        (b"\x92\xa1t", "malformed", "malformed msgpack at byte 3: value truncated"),
        (b"\xc0\xc0", "malformed", "malformed msgpack at byte 1: trailing bytes after the request"),
    ];
    for (b, reason, msg) in cases {
        let e = err(b);
        assert_eq!((e.reason(), e.to_string().as_str()), (*reason, *msg), "{b:02x?}");
    }
}

#[test]
fn non_map_record_names_its_index() {
    let b = b"\x92\xa1t\x94\x92\x01\x80\x92\x01\x80\x92\x01\x80\x92\x01\xa1x";
    assert_eq!(err(b).to_string(), "record 3 is a string, not a map");
}

#[test]
fn frame_over_the_limit() {
    let limits = Limits { max_message_size: 16 };
    let b = Bytes::from(message(3, b"\xa1t", &[0xce, 0, 0, 0, 1], &[]));
    let padded = Bytes::from([&b[..], &[0u8; 20][..]].concat());
    let e = decode_frame(padded, &limits).err().unwrap();
    assert_eq!(e.reason(), "frame_too_large");
    assert_eq!(e.to_string(), "frame of 32 bytes exceeds max_message_size 16");
}

#[test]
fn hostile_entry_count_does_not_preallocate() {
    // Forward mode claiming 4 billion entries in a 9-byte frame: the Vec is sized from
    // the bytes left, not the claim, and the first entry is found missing.
    let e = err(b"\x92\xa1t\xdd\xff\xff\xff\xff");
    assert_eq!(e.to_string(), "malformed msgpack at byte 8: value truncated");
}

/// Only a packed request with options may be gzip; a prefix too short to tell may be.
#[test]
fn may_inflate_tells_packed_requests_with_options() {
    let entry = [&[0x92, 0x01][..], REC].concat();
    let gz = packed("t", &gzip(&entry), Some("gzip"));
    let text = packed("t", REC, None);
    let message = b"\x94\xa1t\x01\x81\xa1a\x01\x80";
    let forward = b"\x93\xa1t\x91\x92\x01\x81\xa1a\x01\x80";
    assert!(may_inflate(&gz));
    assert!(matches!(req(&gz).mode, Mode::CompressedPackedForward));
    assert!(!may_inflate(&text), "two elements: no options, no compression");
    assert!(!may_inflate(message));
    assert!(!may_inflate(forward));
    assert!(!may_inflate(b"\xc0"), "a heartbeat");
    for cut in 0..4 {
        assert!(may_inflate(&gz[..cut]), "{cut} bytes cannot tell");
    }
}
