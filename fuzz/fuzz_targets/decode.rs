//! Arbitrary bytes through the connection's decode path: `frame_len` over a read buffer,
//! then `decode_frame` on each complete frame, plus `decode_frame` on the raw input.
//! Nothing may panic, and what is returned must be consistent.
//! The handshake has its own target, `handshake`.
#![no_main]

use berth::forward::{decode_frame, frame_len, Frame, FrameStatus, Limits};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Small, so size limits and gzip bombs are reachable by the fuzzer.
const LIMITS: Limits = Limits { max_message_size: 64 * 1024 };

fn check(frame: Bytes) {
    if let Ok(Frame::Request(req)) = decode_frame(frame, &LIMITS) {
        for ev in &req.batch.events {
            // Records are whole msgpack maps, metadata empty or a whole map.
            assert!(berth::msgpack::is_map(&ev.record));
            assert_eq!(
                frame_len(&ev.record, usize::MAX).ok(),
                Some(FrameStatus::Complete(ev.record.len()))
            );
            if !ev.metadata.is_empty() {
                assert_eq!(
                    frame_len(&ev.metadata, usize::MAX).ok(),
                    Some(FrameStatus::Complete(ev.metadata.len()))
                );
            }
            assert!(ev.time.nanos < 1_000_000_000);
        }
        if let Some(chunk) = &req.options.chunk {
            assert_eq!(frame_len(chunk, usize::MAX).ok(), Some(FrameStatus::Complete(chunk.len())));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = Bytes::copy_from_slice(data);
    loop {
        match frame_len(&rest, LIMITS.max_message_size) {
            Ok(FrameStatus::Complete(n)) => {
                assert!(n > 0 && n <= rest.len() && n <= LIMITS.max_message_size);
                // One byte short of a complete frame is incomplete, and the lower bound
                // (more than what is buffered, at most the true length) is then exact.
                match frame_len(&rest[..n - 1], LIMITS.max_message_size) {
                    Ok(FrameStatus::Incomplete { at_least }) => assert_eq!(at_least, n),
                    other => panic!("prefix of a {n}-byte frame: {other:?}"),
                }
                check(rest.split_to(n));
            }
            Ok(FrameStatus::Incomplete { at_least }) => {
                assert!(at_least > rest.len());
                break;
            }
            Err(_) => break,
        }
    }
    check(Bytes::copy_from_slice(data));
});
