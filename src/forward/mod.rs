//! The Fluentd Forward protocol v1, as pure functions over bytes: no sockets, no clocks.
//!
//! Spec: <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>.
//!
//! - [`frame`]: is a complete msgpack value buffered yet? A cheap header walk that never
//!   builds values, never recurses and enforces the size limit before anything is parsed.
//! - [`decode`]: one complete frame → a [`decode::Frame`] (heartbeat or request with its
//!   events, as zero-copy slices of the frame).
//! - [`handshake`]: HELO / PING / PONG with shared keys and users.
//! - [`encode`]: what clients send (used by `berth cat`, tests and benches) and acks.

pub mod decode;
pub mod encode;
pub mod frame;
pub mod handshake;

pub use decode::{decode_frame, DecodeError, Frame, Limits, Mode, Options, Request};
pub use encode::{encode_ack, encode_request, EncodeOptions};
pub use frame::{frame_len, FrameStatus, FrameWalk};
