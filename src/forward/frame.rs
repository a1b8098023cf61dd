//! Is a whole msgpack value buffered yet? The hot-path check a connection runs on every read.
//!
//! [`frame_len`] is [`msgpack::value_len`](crate::msgpack::value_len) — a walk of msgpack
//! *headers* only, that never builds a value, never copies and never recurses (see
//! [`crate::msgpack`]) — with its errors in the protocol's terms. The size limit is enforced
//! from the headers, before the bytes arrive: an array32 header claiming four billion
//! elements, or a bin32 of 1 GiB, fails the moment its header is buffered.
//!
//! A connection reading a frame in many reads walks it with a [`FrameWalk`], which resumes
//! where the previous read's walk stopped: a frame dripped in small reads costs one walk,
//! not one per read.
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md#formats>.

use super::DecodeError;
use crate::msgpack::{value_len, ValueWalk};

/// The state of a read buffer: `Complete(n)` when it starts with a whole msgpack value of
/// `n` bytes, `Incomplete { at_least }` when the value is at least that long in total.
pub use crate::msgpack::Extent as FrameStatus;

/// Whether `buf` starts with one complete msgpack value, and how long it is.
///
/// Fails with `FrameTooLarge` as soon as the headers read so far prove the value is longer
/// than `max`, and with `Malformed` on the reserved marker 0xc1. `Incomplete { at_least }`
/// is a lower bound of the whole value's length: re-walking before that many bytes are
/// buffered would only say the same again.
#[inline]
pub fn frame_len(buf: &[u8], max: usize) -> Result<FrameStatus, DecodeError> {
    value_len(buf, max).map_err(DecodeError::from)
}

/// [`frame_len`] over a read buffer that grows between calls, resumed where the last call
/// stopped (see [`ValueWalk`]). Start a new one for each frame: after a `Complete` frame is
/// split off the buffer, or after an error.
#[derive(Debug, Default)]
pub struct FrameWalk(ValueWalk);

impl FrameWalk {
    pub fn new() -> FrameWalk {
        FrameWalk(ValueWalk::new())
    }

    /// `buf` starts with the bytes of the previous calls; `max` is the same on every call.
    #[inline]
    pub fn next(&mut self, buf: &[u8], max: usize) -> Result<FrameStatus, DecodeError> {
        self.0.walk(buf, max).map_err(DecodeError::from)
    }

    /// Headers read over every call: the walk's cost.
    pub fn steps(&self) -> u64 {
        self.0.steps()
    }
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
