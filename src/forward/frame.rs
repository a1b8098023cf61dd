//! Is a whole msgpack value buffered yet? The hot-path check a connection runs on every read.
//!
//! [`frame_len`] walks msgpack *headers* only: it never builds a value, never copies and
//! never recurses. Instead of a stack it keeps one counter of values still to skip (an array
//! of n adds n, a map of n adds 2n), so a frame nested a million levels deep costs a loop,
//! not a stack overflow. `str`, `bin` and `ext` bodies are jumped over by their length
//! headers.
//!
//! The size limit is enforced from the headers, before the bytes arrive: every value still
//! to be read takes at least one byte, so `position + values pending` is a lower bound of
//! the frame's size. An array32 header claiming four billion elements, or a bin32 of 1 GiB,
//! fails the moment its header is buffered.
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md#formats>.

use super::DecodeError;

/// The state of a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// The buffer starts with a complete msgpack value of this many bytes.
    Complete(usize),
    /// More bytes are needed; the frame is at least this long in total.
    Incomplete { at_least: usize },
}

/// How a marker byte shapes the value it starts.
enum Shape {
    /// Header of this many bytes (marker included) and nothing else.
    Fixed(usize),
    /// Marker followed by a big-endian length of `len_bytes` bytes, then `extra` bytes
    /// (the ext type byte) and a body of that length.
    Sized { len_bytes: usize, extra: usize },
    /// An array or map header of `hdr` bytes whose element count is `n` (inline, for the
    /// fix forms) or read from the `hdr - 1` bytes after the marker; `per` values per element.
    Container { hdr: usize, inline: Option<usize>, per: usize },
    /// 0xc1, "never used".
    Reserved,
}

#[inline]
fn shape(marker: u8) -> Shape {
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Shape::Fixed(1),
        0x80..=0x8f => {
            Shape::Container { hdr: 1, inline: Some(usize::from(marker & 0x0f)), per: 2 }
        }
        0x90..=0x9f => {
            Shape::Container { hdr: 1, inline: Some(usize::from(marker & 0x0f)), per: 1 }
        }
        // fixstr: the length is in the marker; model it as a fixed header plus body below.
        0xa0..=0xbf => Shape::Fixed(1 + usize::from(marker & 0x1f)),
        0xc1 => Shape::Reserved,
        0xc4 | 0xd9 => Shape::Sized { len_bytes: 1, extra: 0 }, // bin8, str8
        0xc5 | 0xda => Shape::Sized { len_bytes: 2, extra: 0 }, // bin16, str16
        0xc6 | 0xdb => Shape::Sized { len_bytes: 4, extra: 0 }, // bin32, str32
        0xc7 => Shape::Sized { len_bytes: 1, extra: 1 },        // ext8
        0xc8 => Shape::Sized { len_bytes: 2, extra: 1 },        // ext16
        0xc9 => Shape::Sized { len_bytes: 4, extra: 1 },        // ext32
        0xca | 0xd2 | 0xce => Shape::Fixed(5),                  // f32, i32, u32
        0xcb | 0xd3 | 0xcf => Shape::Fixed(9),                  // f64, i64, u64
        0xcc | 0xd0 => Shape::Fixed(2),                         // u8, i8
        0xcd | 0xd1 => Shape::Fixed(3),                         // u16, i16
        0xd4 => Shape::Fixed(3),                                // fixext1
        0xd5 => Shape::Fixed(4),                                // fixext2
        0xd6 => Shape::Fixed(6),                                // fixext4
        0xd7 => Shape::Fixed(10),                               // fixext8
        0xd8 => Shape::Fixed(18),                               // fixext16
        0xdc => Shape::Container { hdr: 3, inline: None, per: 1 }, // array16
        0xdd => Shape::Container { hdr: 5, inline: None, per: 1 }, // array32
        0xde => Shape::Container { hdr: 3, inline: None, per: 2 }, // map16
        0xdf => Shape::Container { hdr: 5, inline: None, per: 2 }, // map32
    }
}

/// Reads a big-endian length of 1, 2 or 4 bytes.
#[inline]
fn be_len(b: &[u8]) -> usize {
    b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
}

/// Whether `buf` starts with one complete msgpack value, and how long it is.
///
/// Fails with `FrameTooLarge` as soon as the headers read so far prove the value is longer
/// than `max`, and with `Malformed` on the reserved marker 0xc1. `Incomplete { at_least }`
/// is a lower bound of the whole value's length: re-walking before that many bytes are
/// buffered would only say the same again.
pub fn frame_len(buf: &[u8], max: usize) -> Result<FrameStatus, DecodeError> {
    let mut pos = 0usize;
    // Values still to be read, the current one included. Never more than `max` (checked
    // below), so it cannot overflow.
    let mut pending = 1usize;
    while pending > 0 {
        let Some(&marker) = buf.get(pos) else {
            return Ok(FrameStatus::Incomplete { at_least: pos + pending });
        };
        pending -= 1;
        let next = match shape(marker) {
            Shape::Fixed(n) => pos + n,
            Shape::Sized { len_bytes, extra } => {
                let hdr = 1 + len_bytes + extra;
                let Some(len) = buf.get(pos + 1..pos + 1 + len_bytes) else {
                    return incomplete(pos + hdr, pending, max);
                };
                (pos + hdr).saturating_add(be_len(len))
            }
            Shape::Container { hdr, inline, per } => {
                let n = match inline {
                    Some(n) => n,
                    None => match buf.get(pos + 1..pos + hdr) {
                        Some(len) => be_len(len),
                        None => return incomplete(pos + hdr, pending, max),
                    },
                };
                pending = pending.saturating_add(n.saturating_mul(per));
                pos + hdr
            }
            Shape::Reserved => {
                return Err(DecodeError::Malformed { what: "reserved marker 0xc1", offset: pos })
            }
        };
        let at_least = next.saturating_add(pending);
        if at_least > max {
            return Err(DecodeError::FrameTooLarge { size: at_least, max });
        }
        if next > buf.len() {
            return Ok(FrameStatus::Incomplete { at_least });
        }
        pos = next;
    }
    Ok(FrameStatus::Complete(pos))
}

#[inline]
fn incomplete(header_end: usize, pending: usize, max: usize) -> Result<FrameStatus, DecodeError> {
    let at_least = header_end.saturating_add(pending);
    if at_least > max {
        return Err(DecodeError::FrameTooLarge { size: at_least, max });
    }
    Ok(FrameStatus::Incomplete { at_least })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn complete(b: &[u8]) -> usize {
        match frame_len(b, MAX) {
            Ok(FrameStatus::Complete(n)) => n,
            other => panic!("{b:02x?}: {other:?}"),
        }
    }

    #[test]
    fn scalars() {
        for b in [&[0x00][..], &[0x7f], &[0xe0], &[0xff], &[0xc0], &[0xc2], &[0xc3]] {
            assert_eq!(complete(b), 1);
        }
        assert_eq!(complete(&[0xcc, 1]), 2);
        assert_eq!(complete(&[0xcd, 1, 2]), 3);
        assert_eq!(complete(&[0xce, 0, 0, 0, 1]), 5);
        assert_eq!(complete(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 1]), 9);
        assert_eq!(complete(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 1]), 9);
        assert_eq!(complete(&[0xca, 0, 0, 0, 0]), 5);
        assert_eq!(complete(&[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]), 9);
    }

    #[test]
    fn strings_bins_exts_jump_their_bodies() {
        assert_eq!(complete(b"\xa3abc"), 4);
        assert_eq!(complete(b"\xd9\x03abc"), 5);
        assert_eq!(complete(b"\xda\x00\x03abc"), 6);
        assert_eq!(complete(b"\xdb\x00\x00\x00\x03abc"), 8);
        assert_eq!(complete(b"\xc4\x02ab"), 4);
        assert_eq!(complete(b"\xc5\x00\x02ab"), 5);
        assert_eq!(complete(b"\xc6\x00\x00\x00\x02ab"), 7);
        assert_eq!(complete(b"\xd7\x00\x00\x00\x00\x01\x00\x00\x00\x02"), 10);
        assert_eq!(complete(b"\xc7\x08\x00\x00\x00\x00\x01\x00\x00\x00\x02"), 11);
        assert_eq!(complete(b"\xc8\x00\x01\x05x"), 5);
        assert_eq!(complete(b"\xc9\x00\x00\x00\x01\x05x"), 7);
        assert_eq!(complete(b"\xd4\x01x"), 3);
        assert_eq!(complete(&[0xd8; 18]), 18);
    }

    #[test]
    fn containers_count_their_elements() {
        // [1, {"a": [nil]}, "x"]
        let v = b"\x93\x01\x81\xa1a\x91\xc0\xa1x";
        assert_eq!(complete(v), v.len());
        assert_eq!(complete(b"\x90"), 1);
        assert_eq!(complete(b"\x80"), 1);
        assert_eq!(complete(b"\xdc\x00\x02\x01\x02"), 5);
        assert_eq!(complete(b"\xde\x00\x01\x01\x02"), 5);
        assert_eq!(complete(b"\xdd\x00\x00\x00\x01\xc0"), 6);
        assert_eq!(complete(b"\xdf\x00\x00\x00\x01\xc0\xc0"), 7);
    }

    #[test]
    fn trailing_bytes_are_not_part_of_the_frame() {
        assert_eq!(complete(b"\x92\x01\x02\x93"), 3);
    }

    #[test]
    fn every_prefix_is_incomplete_with_a_sound_lower_bound() {
        let v = b"\x93\xa3tag\xd7\x00\x00\x00\x00\x01\x00\x00\x00\x02\x82\xa1a\xc4\x02xy\xa1b\xdc\x00\x01\xc3";
        assert_eq!(complete(v), v.len());
        for cut in 0..v.len() {
            match frame_len(&v[..cut], MAX) {
                Ok(FrameStatus::Incomplete { at_least }) => {
                    assert!(at_least > cut && at_least <= v.len(), "cut {cut}: {at_least}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut v = vec![0x91; 1_000_000];
        v.push(0xc0);
        assert_eq!(frame_len(&v, usize::MAX).ok(), Some(FrameStatus::Complete(v.len())));
    }

    #[test]
    fn reserved_marker_is_malformed() {
        let err = frame_len(b"\x92\x01\xc1", MAX).err();
        assert!(matches!(err, Some(DecodeError::Malformed { offset: 2, .. })), "{err:?}");
    }

    #[test]
    fn huge_declared_sizes_fail_before_the_bytes_arrive() {
        for hdr in [
            &b"\xdd\xff\xff\xff\xff"[..],    // array32 of 4 billion
            b"\xdf\x80\x00\x00\x00",         // map32 of 2 billion pairs
            b"\xc6\x40\x00\x00\x00",         // bin32 of 1 GiB
            b"\xdb\x40\x00\x00\x00",         // str32 of 1 GiB
            b"\xc9\x40\x00\x00\x00",         // ext32 of 1 GiB (type byte not yet here)
            b"\x92\xc0\xc6\x00\x10\x00\x00", // bin32 of 1 MiB inside an array
        ] {
            let err = frame_len(hdr, MAX).err();
            assert!(
                matches!(err, Some(DecodeError::FrameTooLarge { max: MAX, .. })),
                "{hdr:02x?}: {err:?}"
            );
        }
    }

    #[test]
    fn exactly_max_is_allowed() {
        let mut v = vec![0xc4, 0xfe];
        v.resize(256, b'x');
        assert_eq!(frame_len(&v, 256).ok(), Some(FrameStatus::Complete(256)));
        assert!(frame_len(&v, 255).is_err());
    }

    #[test]
    fn incomplete_header_reports_header_end() {
        assert_eq!(frame_len(b"\xdd\x00", MAX).ok(), Some(FrameStatus::Incomplete { at_least: 5 }));
        assert_eq!(frame_len(b"", MAX).ok(), Some(FrameStatus::Incomplete { at_least: 1 }));
        assert_eq!(frame_len(b"\x92\x01", MAX).ok(), Some(FrameStatus::Incomplete { at_least: 3 }));
    }
}
