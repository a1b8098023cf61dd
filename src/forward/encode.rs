//! What Forward clients send, and the ack a server sends back.
//!
//! Used by `berth cat`, the tests and the benches; the daemon itself only encodes acks.
//! Records are already msgpack maps ([`Event::record`]), so encoding only writes the
//! envelope around them and copies the record bytes once.
//!
//! Spec: <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>
//! (sections "Message Modes" and "Response").

use super::decode::Mode;
use crate::event::{Event, EventTime};
use rmp::encode as enc;
use std::io::Write;

/// How [`encode_request`] writes a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Sent as the `chunk` option (a msgpack str): the server must answer `{"ack": chunk}`.
    pub chunk: Option<String>,
    /// Write times as `EventTime` (ext type 0, seconds + nanoseconds) instead of integer
    /// seconds, which drops the nanoseconds.
    pub event_time: bool,
}

// Writing msgpack into a `Vec<u8>` cannot fail (rmp's `RmpWrite` for `io::Write` only
// reports I/O errors, and a `Vec` has none short of an allocation abort), so the results
// of the `rmp::encode` calls below are deliberately discarded.

/// Encodes `events` as Forward requests in `mode`.
///
/// Message mode writes one request per event back to back (the chunk, if any, on each;
/// metadata has no slot in Message mode and is dropped). Forward, PackedForward and
/// CompressedPackedForward write one request holding all events; entries with non-empty
/// metadata use Fluent Bit's `[[time, metadata], record]` form.
///
/// `EventTime` carries seconds as a u32, so with `event_time` a time outside
/// 1970..2106 wraps: the format cannot say it.
pub fn encode_request(mode: Mode, tag: &str, events: &[Event], opts: &EncodeOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(tag, events));
    match mode {
        Mode::Message => {
            for ev in events {
                let len = if opts.chunk.is_some() { 4 } else { 3 };
                let _ = enc::write_array_len(&mut out, len);
                let _ = enc::write_str(&mut out, tag);
                write_time(&mut out, ev.time, opts.event_time);
                out.extend_from_slice(&ev.record);
                if let Some(chunk) = &opts.chunk {
                    write_options(&mut out, Some(chunk.as_str()), None, false);
                }
            }
        }
        Mode::Forward => {
            let len = if opts.chunk.is_some() { 3 } else { 2 };
            let _ = enc::write_array_len(&mut out, len);
            let _ = enc::write_str(&mut out, tag);
            let _ = enc::write_array_len(&mut out, len_u32(events.len()));
            for ev in events {
                write_entry(&mut out, ev, opts.event_time);
            }
            if let Some(chunk) = &opts.chunk {
                write_options(&mut out, Some(chunk.as_str()), None, false);
            }
        }
        Mode::PackedForward => {
            let mut entries = Vec::with_capacity(estimate("", events));
            for ev in events {
                write_entry(&mut entries, ev, opts.event_time);
            }
            write_packed(&mut out, tag, &entries, events.len(), opts.chunk.as_deref(), false);
        }
        Mode::CompressedPackedForward => {
            let mut entries = Vec::with_capacity(estimate("", events));
            for ev in events {
                write_entry(&mut entries, ev, opts.event_time);
            }
            match gzip(&entries) {
                Some(gz) => {
                    write_packed(&mut out, tag, &gz, events.len(), opts.chunk.as_deref(), true)
                }
                // Unreachable in practice (see `gzip`); a plain PackedForward request
                // carries the same events and every server accepts it.
                None => write_packed(
                    &mut out,
                    tag,
                    &entries,
                    events.len(),
                    opts.chunk.as_deref(),
                    false,
                ),
            }
        }
    }
    out
}

/// The ack for a request whose `chunk` option was `chunk_raw` (its raw msgpack bytes):
/// exactly the map `{"ack": <chunk>}`, the chunk echoed byte for byte.
pub fn encode_ack(chunk_raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + chunk_raw.len());
    let _ = enc::write_map_len(&mut out, 1);
    let _ = enc::write_str(&mut out, "ack");
    out.extend_from_slice(chunk_raw);
    out
}

/// Writes one event time: EventTime ext (`d7 00` + big-endian u32 secs + u32 nanos) or
/// integer seconds.
pub(crate) fn write_time(out: &mut Vec<u8>, t: EventTime, event_time: bool) {
    if event_time {
        let _ = enc::write_ext_meta(out, 8, 0);
        // EventTime has 32-bit seconds: the truncation is the format's (documented above).
        out.extend_from_slice(&(t.secs as u32).to_be_bytes());
        out.extend_from_slice(&t.nanos.to_be_bytes());
    } else {
        let _ = enc::write_sint(out, t.secs);
    }
}

fn write_entry(out: &mut Vec<u8>, ev: &Event, event_time: bool) {
    let _ = enc::write_array_len(out, 2);
    if ev.metadata.is_empty() {
        write_time(out, ev.time, event_time);
    } else {
        let _ = enc::write_array_len(out, 2);
        write_time(out, ev.time, event_time);
        out.extend_from_slice(&ev.metadata);
    }
    out.extend_from_slice(&ev.record);
}

fn write_packed(
    out: &mut Vec<u8>,
    tag: &str,
    payload: &[u8],
    count: usize,
    chunk: Option<&str>,
    gzip: bool,
) {
    let _ = enc::write_array_len(out, 3);
    let _ = enc::write_str(out, tag);
    let _ = enc::write_bin(out, payload);
    // Fluent Bit and fluentd send `size` with packed payloads; servers may use it to
    // pre-size, and berth's decoder ignores it.
    write_options(out, chunk, Some(count), gzip);
}

fn write_options(out: &mut Vec<u8>, chunk: Option<&str>, size: Option<usize>, gzip: bool) {
    let n = u32::from(chunk.is_some()) + u32::from(size.is_some()) + u32::from(gzip);
    let _ = enc::write_map_len(out, n);
    if let Some(chunk) = chunk {
        let _ = enc::write_str(out, "chunk");
        let _ = enc::write_str(out, chunk);
    }
    if let Some(size) = size {
        let _ = enc::write_str(out, "size");
        let _ = enc::write_uint(out, size as u64);
    }
    if gzip {
        let _ = enc::write_str(out, "compressed");
        let _ = enc::write_str(out, "gzip");
    }
}

/// Gzip of `data`; `None` only if the encoder reports an error, which writing into a
/// `Vec` never does.
fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    gz.write_all(data).ok()?;
    gz.finish().ok()
}

fn len_u32(n: usize) -> u32 {
    // A request of more than 4 billion events cannot be built in memory anyway.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn estimate(tag: &str, events: &[Event]) -> usize {
    let per_event = 16 + tag.len();
    events.iter().map(|e| e.record.len() + e.metadata.len() + per_event).sum::<usize>() + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec() -> Bytes {
        // {"a": 1}
        Bytes::from_static(&[0x81, 0xa1, b'a', 0x01])
    }

    fn ev(secs: i64, nanos: u32) -> Event {
        Event { time: EventTime::new(secs, nanos), record: rec(), metadata: Bytes::new() }
    }

    #[test]
    fn ack_echoes_chunk_bytes() {
        // chunk "xy" as str
        assert_eq!(
            encode_ack(&[0xa2, b'x', b'y']),
            [0x81, 0xa3, b'a', b'c', b'k', 0xa2, b'x', b'y']
        );
    }

    #[test]
    fn message_mode_integer_time() {
        let out = encode_request(Mode::Message, "t", &[ev(1, 5)], &EncodeOptions::default());
        assert_eq!(out, [0x93, 0xa1, b't', 0x01, 0x81, 0xa1, b'a', 0x01]);
    }

    #[test]
    fn message_mode_event_time_and_chunk_on_each() {
        let opts = EncodeOptions { chunk: Some("c".into()), event_time: true };
        let out = encode_request(Mode::Message, "t", &[ev(1, 2), ev(3, 4)], &opts);
        let one: &[u8] = &[
            0x94, 0xa1, b't', 0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 2, 0x81, 0xa1, b'a', 0x01, 0x81,
            0xa5, b'c', b'h', b'u', b'n', b'k', 0xa1, b'c',
        ];
        assert_eq!(&out[..one.len()], one);
        assert_eq!(out.len(), 2 * one.len());
    }

    #[test]
    fn forward_mode_with_metadata() {
        let mut e = ev(7, 0);
        e.metadata = Bytes::from_static(&[0x81, 0xa1, b'm', 0x02]);
        let out = encode_request(Mode::Forward, "t", &[e], &EncodeOptions::default());
        assert_eq!(
            out,
            [
                0x92, 0xa1, b't', 0x91, 0x92, 0x92, 0x07, 0x81, 0xa1, b'm', 0x02, 0x81, 0xa1, b'a',
                0x01
            ]
        );
    }

    #[test]
    fn packed_forward_has_bin_payload_and_size() {
        let out = encode_request(Mode::PackedForward, "t", &[ev(7, 0)], &EncodeOptions::default());
        assert_eq!(
            out,
            [
                0x93, 0xa1, b't', 0xc4, 6, 0x92, 0x07, 0x81, 0xa1, b'a', 0x01, 0x81, 0xa4, b's',
                b'i', b'z', b'e', 0x01
            ]
        );
    }

    #[test]
    fn compressed_payload_is_gzip() {
        let out = encode_request(
            Mode::CompressedPackedForward,
            "t",
            &[ev(7, 0)],
            &EncodeOptions::default(),
        );
        assert_eq!(&out[..4], &[0x93, 0xa1, b't', 0xc4]);
        // gzip magic right after the bin8 length
        assert_eq!(&out[5..7], &[0x1f, 0x8b]);
        assert!(out.ends_with(b"\xaacompressed\xa4gzip"));
    }
}
