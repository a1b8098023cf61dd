//! The one msgpack reader: marker decoding, length reading and skipping a value, for every
//! part of berth that looks inside msgpack bytes — the Forward frame check and decoder, the
//! handshake, the JSON transcoder ([`json`]), the sinks' name templates and enrichment's map
//! walk. Nothing else in the tree decodes a marker.
//!
//! Hand-written rather than `rmp`/`rmpv` because every caller needs zero-copy slices of the
//! bytes it was given and no allocation per value: `rmpv` builds a tree (a `Vec` per array,
//! a `String` per str), and `rmp::decode` reads through `std::io::Read`, copying strings out
//! and reporting a failed marker read with no byte offset. The decoder bench
//! (docs/performance.md) measures this reader; `rmpv` is the oracle of its differential
//! proptest (`tests.rs`) and of the fuzz target `fuzz/fuzz_targets/msgpack.rs`.
//!
//! Two ways in:
//! - [`value_len`]: is a whole value in the buffer, and how long is it? It walks headers
//!   only, never builds a value and never recurses: one counter of values still to read
//!   (an array of n adds n, a map of n adds 2n), so a value nested a million levels deep
//!   costs a loop, not a stack overflow. `str`, `bin` and `ext` bodies are jumped over by
//!   their length headers. A size limit is enforced from the headers before the bytes
//!   arrive: every value still to be read takes at least one byte, so `position + values
//!   pending` is a lower bound of the value's length.
//! - [`Reader`]: a cursor that reads one value's header at a time ([`Reader::read`] gives a
//!   [`Token`] borrowing the buffer), reads typed headers ([`Reader::array_len`],
//!   [`Reader::str_or_bin`], …) and skips whole values ([`Reader::skip`], the walk above).
//!
//! Input comes from the network: every length is checked against the bytes present, a
//! claimed count allocates nothing, and arbitrary bytes fail with an [`Error`], never a
//! panic. The reserved marker 0xc1 is an error wherever it appears.
//!
//! Spec: <https://github.com/msgpack/msgpack/blob/master/spec.md#formats>.

pub mod json;

#[cfg(test)]
mod tests;

use std::ops::Range;

/// Why msgpack bytes could not be read. Offsets count from the start of the reader's
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends inside a value; `offset` is the buffer's length.
    #[error("msgpack value truncated at byte {offset}")]
    Truncated { offset: usize },
    /// Marker 0xc1, "never used" in the spec.
    #[error("msgpack marker 0xc1 (never used) at byte {offset}")]
    Reserved { offset: usize },
    /// The headers read so far prove the value longer than the limit given to
    /// [`value_len`]; `size` is a lower bound of its length.
    #[error("msgpack value of at least {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    /// More than `limit` non-empty arrays or maps open at once ([`Reader::skip_nested`]).
    #[error("msgpack value nested deeper than {limit} levels at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
}

/// The msgpack family of a marker byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bin,
    Array,
    Map,
    Ext,
    /// 0xc1, never used.
    Reserved,
}

impl Kind {
    #[inline]
    pub fn of(marker: u8) -> Kind {
        match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => Kind::Int,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc0 => Kind::Nil,
            0xc1 => Kind::Reserved,
            0xc2 | 0xc3 => Kind::Bool,
            0xc4..=0xc6 => Kind::Bin,
            0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
            0xca | 0xcb => Kind::Float,
        }
    }

    /// "a string", "a map", … for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Nil => "nil",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Float => "a float",
            Kind::Str => "a string",
            Kind::Bin => "a binary",
            Kind::Array => "an array",
            Kind::Map => "a map",
            Kind::Ext => "an extension",
            Kind::Reserved => "the reserved marker 0xc1",
        }
    }
}

/// Whether the first byte of `v` starts a map (any header width).
#[inline]
pub fn is_map(v: &[u8]) -> bool {
    v.first().is_some_and(|&m| Kind::of(m) == Kind::Map)
}

/// One value as [`Reader::read`] finds it: scalars with their value, `str`, `bin` and `ext`
/// with their body borrowed from the buffer, arrays and maps with their element count (the
/// elements follow).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token<'a> {
    Nil,
    Bool(bool),
    /// A positive fixint or a uint 8/16/32/64.
    UInt(u64),
    /// A negative fixint or an int 8/16/32/64 (of any sign).
    Int(i64),
    F32(f32),
    F64(f64),
    /// The bytes of a `str`, not checked to be UTF-8.
    Str(&'a [u8]),
    Bin(&'a [u8]),
    /// Type and data of an ext or fixext.
    Ext(i8, &'a [u8]),
    /// An array header: this many values follow.
    Array(u32),
    /// A map header: this many key/value pairs follow.
    Map(u32),
}

/// How much of a buffer one value takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// The buffer starts with a complete msgpack value of this many bytes.
    Complete(usize),
    /// More bytes are needed; the value is at least this long in total.
    Incomplete { at_least: usize },
}

/// How a marker byte shapes the value it starts: the one table [`value_len`] walks by.
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
/// Fails with [`Error::TooLarge`] as soon as the headers read so far prove the value longer
/// than `max`, and with [`Error::Reserved`] on the marker 0xc1. `Incomplete { at_least }`
/// is a lower bound of the whole value's length: walking again before that many bytes are
/// buffered would only say the same again.
#[inline]
pub fn value_len(buf: &[u8], max: usize) -> Result<Extent, Error> {
    ValueWalk::new().walk(buf, max)
}

/// A [`value_len`] walk that keeps its place between calls, for a buffer that only grows
/// at its end (a connection's read buffer between two frames).
///
/// A fresh `value_len` on every read of an unfinished frame walks it again from byte 0:
/// a 16 MiB frame of small records dripped in small reads costs reads × headers, quadratic
/// in the frame's size. `walk` resumes at the first header it could not finish, so the
/// whole frame costs one walk plus one re-read header per call. Its state is only valid
/// while the bytes already walked stay where they are: start a new walk for the next
/// frame (after the complete one is split off the buffer).
#[derive(Debug, Clone)]
pub struct ValueWalk {
    /// Where the next header starts: every value before it is accounted for.
    pos: usize,
    /// Values still to be read, the one at `pos` included. Never more than the `max` the
    /// walk was given (checked as it grows), so it cannot overflow.
    pending: usize,
    /// Headers read, over every call: the walk's cost, which tests check is linear.
    steps: u64,
}

impl Default for ValueWalk {
    fn default() -> Self {
        ValueWalk::new()
    }
}

impl ValueWalk {
    #[inline]
    pub const fn new() -> ValueWalk {
        ValueWalk { pos: 0, pending: 1, steps: 0 }
    }

    /// Headers read so far, over every call.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// [`value_len`] of `buf`, resumed where the previous call on the same walk stopped.
    /// `buf` must start with the bytes the previous calls saw (more may follow), and `max`
    /// must be the same on every call. After `Complete` or an error, start a new walk.
    pub fn walk(&mut self, buf: &[u8], max: usize) -> Result<Extent, Error> {
        let mut pos = self.pos;
        let mut pending = self.pending;
        while pending > 0 {
            let Some(&marker) = buf.get(pos) else {
                self.save(pos, pending);
                return Ok(Extent::Incomplete { at_least: pos.saturating_add(pending) });
            };
            self.steps += 1;
            // Values still to be read once this one is.
            let rest = pending - 1;
            let (next, rest) = match shape(marker) {
                Shape::Fixed(n) => (pos + n, rest),
                Shape::Sized { len_bytes, extra } => {
                    let hdr = 1 + len_bytes + extra;
                    let Some(len) = buf.get(pos + 1..pos + 1 + len_bytes) else {
                        // The header is read again once the rest of it is here.
                        self.save(pos, pending);
                        return incomplete(pos + hdr, rest, max);
                    };
                    ((pos + hdr).saturating_add(be_len(len)), rest)
                }
                Shape::Container { hdr, inline, per } => {
                    let n = match inline {
                        Some(n) => n,
                        None => match buf.get(pos + 1..pos + hdr) {
                            Some(len) => be_len(len),
                            None => {
                                self.save(pos, pending);
                                return incomplete(pos + hdr, rest, max);
                            }
                        },
                    };
                    (pos + hdr, rest.saturating_add(n.saturating_mul(per)))
                }
                Shape::Reserved => return Err(Error::Reserved { offset: pos }),
            };
            pending = rest;
            let at_least = next.saturating_add(pending);
            if at_least > max {
                return Err(Error::TooLarge { size: at_least, max });
            }
            if next > buf.len() {
                // A `str`/`bin`/`ext` body still arriving: the walk goes on after it,
                // without reading it again.
                self.save(next, pending);
                return Ok(Extent::Incomplete { at_least });
            }
            pos = next;
        }
        if pos > buf.len() {
            // Resumed after the body of the last value, which is still arriving.
            return Ok(Extent::Incomplete { at_least: pos });
        }
        self.save(pos, 0);
        Ok(Extent::Complete(pos))
    }

    #[inline]
    fn save(&mut self, pos: usize, pending: usize) {
        self.pos = pos;
        self.pending = pending;
    }
}

#[inline]
fn incomplete(header_end: usize, pending: usize, max: usize) -> Result<Extent, Error> {
    let at_least = header_end.saturating_add(pending);
    if at_least > max {
        return Err(Error::TooLarge { size: at_least, max });
    }
    Ok(Extent::Incomplete { at_least })
}

/// The body of the `str` that `v` starts with; `None` for any other type or a short buffer.
/// Bytes after the string are ignored.
#[inline]
pub fn str_body(v: &[u8]) -> Option<&[u8]> {
    Reader::new(v).str().ok().flatten()
}

/// A bounds-checked cursor over msgpack bytes. Every method either consumes what it
/// returns or fails; the typed readers (`array_len`, `map_len`, `str`, `str_or_bin`)
/// consume nothing and return `Ok(None)` when the next value is of another type.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub const fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far: the offset of the next value.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn truncated(&self) -> Error {
        Error::Truncated { offset: self.buf.len() }
    }

    /// The next marker byte, not consumed; the reserved 0xc1 is an error.
    #[inline]
    pub fn peek(&self) -> Result<u8, Error> {
        match self.buf.get(self.pos) {
            Some(0xc1) => Err(Error::Reserved { offset: self.pos }),
            Some(&b) => Ok(b),
            None => Err(self.truncated()),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A 32-bit length as usize (lossless on the 32- and 64-bit targets berth runs on; a
    /// length that did not fit could not be present in the buffer either).
    #[inline]
    fn len32(&mut self) -> Result<usize, Error> {
        let n = self.u32()?;
        usize::try_from(n).map_err(|_| self.truncated())
    }

    /// Reads one value's header: a scalar whole, a `str`/`bin`/`ext` with its body, an array
    /// or map header without its elements.
    #[inline]
    pub fn read(&mut self) -> Result<Token<'a>, Error> {
        let offset = self.pos;
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => Token::UInt(u64::from(marker)),
            0x80..=0x8f => Token::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Token::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Token::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Token::Nil,
            0xc1 => return Err(Error::Reserved { offset }),
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4 => {
                let n = self.u8()?;
                Token::Bin(self.take(usize::from(n))?)
            }
            0xc5 => {
                let n = self.u16()?;
                Token::Bin(self.take(usize::from(n))?)
            }
            0xc6 => {
                let n = self.len32()?;
                Token::Bin(self.take(n)?)
            }
            0xc7 => {
                let n = self.u8()?;
                self.ext(usize::from(n))?
            }
            0xc8 => {
                let n = self.u16()?;
                self.ext(usize::from(n))?
            }
            0xc9 => {
                let n = self.len32()?;
                self.ext(n)?
            }
            0xca => Token::F32(f32::from_bits(self.u32()?)),
            0xcb => Token::F64(f64::from_bits(self.u64()?)),
            0xcc => Token::UInt(u64::from(self.u8()?)),
            0xcd => Token::UInt(u64::from(self.u16()?)),
            0xce => Token::UInt(u64::from(self.u32()?)),
            0xcf => Token::UInt(self.u64()?),
            0xd0 => Token::Int(i64::from(self.u8()? as i8)),
            0xd1 => Token::Int(i64::from(self.u16()? as i16)),
            0xd2 => Token::Int(i64::from(self.u32()? as i32)),
            0xd3 => Token::Int(self.u64()? as i64),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.u8()?;
                Token::Str(self.take(usize::from(n))?)
            }
            0xda => {
                let n = self.u16()?;
                Token::Str(self.take(usize::from(n))?)
            }
            0xdb => {
                let n = self.len32()?;
                Token::Str(self.take(n)?)
            }
            0xdc => Token::Array(u32::from(self.u16()?)),
            0xdd => Token::Array(self.u32()?),
            0xde => Token::Map(u32::from(self.u16()?)),
            0xdf => Token::Map(self.u32()?),
            0xe0..=0xff => Token::Int(i64::from(marker as i8)),
        })
    }

    /// An ext body of `len` data bytes, after its length: the type byte, then the data.
    #[inline]
    fn ext(&mut self, len: usize) -> Result<Token<'a>, Error> {
        let ty = self.u8()? as i8;
        Ok(Token::Ext(ty, self.take(len)?))
    }

    /// Consumes an array header and returns its length, or `None` (consuming nothing)
    /// when the next value is not an array.
    #[inline]
    pub fn array_len(&mut self) -> Result<Option<usize>, Error> {
        let n = match self.peek()? {
            m @ 0x90..=0x9f => {
                self.pos += 1;
                usize::from(m & 0x0f)
            }
            0xdc => {
                self.pos += 1;
                usize::from(self.u16()?)
            }
            0xdd => {
                self.pos += 1;
                self.len32()?
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// Like [`Reader::array_len`] for maps (pairs, not values).
    #[inline]
    pub fn map_len(&mut self) -> Result<Option<usize>, Error> {
        let n = match self.peek()? {
            m @ 0x80..=0x8f => {
                self.pos += 1;
                usize::from(m & 0x0f)
            }
            0xde => {
                self.pos += 1;
                usize::from(self.u16()?)
            }
            0xdf => {
                self.pos += 1;
                self.len32()?
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// Consumes a `str` and returns its bytes, or `None` (consuming nothing) for any other
    /// type.
    #[inline]
    pub fn str(&mut self) -> Result<Option<&'a [u8]>, Error> {
        // Its own match rather than `str_or_bin`: enrichment reads every record's keys
        // with it.
        let len = match self.peek()? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                usize::from(self.u8()?)
            }
            0xda => {
                self.pos += 1;
                usize::from(self.u16()?)
            }
            0xdb => {
                self.pos += 1;
                self.len32()?
            }
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    /// Consumes a `str` or `bin` and returns its body and whether it was a `str`; `None`
    /// (consuming nothing) for any other type. Its range in the buffer is
    /// `position() - body.len()..position()`.
    #[inline]
    pub fn str_or_bin(&mut self) -> Result<Option<(&'a [u8], bool)>, Error> {
        let m = self.peek()?;
        let (hdr, is_str) = match m {
            0xa0..=0xbf => (0, true),
            0xd9 => (1, true),
            0xda => (2, true),
            0xdb => (4, true),
            0xc4 => (1, false),
            0xc5 => (2, false),
            0xc6 => (4, false),
            _ => return Ok(None),
        };
        self.pos += 1;
        let len = match hdr {
            0 => usize::from(m & 0x1f),
            1 => usize::from(self.u8()?),
            2 => usize::from(self.u16()?),
            _ => self.len32()?,
        };
        Ok(Some((self.take(len)?, is_str)))
    }

    /// Skips one whole value of any depth (without recursion) and returns its range.
    #[inline]
    pub fn skip(&mut self) -> Result<Range<usize>, Error> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        // Strings and small scalars, what log records are mostly made of, are measured here
        // (str8 included: Docker's `container_id` and `log` are str8, and enrichment's map
        // walk skips them for every record); anything else by the header walk.
        let n = match *rest {
            [0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3, ..] => 1,
            [m @ 0xa0..=0xbf, ..] => 1 + usize::from(m & 0x1f),
            [0xd9, n, ..] => 2 + usize::from(n),
            [0xda, n0, n1, ..] => 3 + usize::from(u16::from_be_bytes([n0, n1])),
            _ => match value_len(rest, rest.len()) {
                Ok(Extent::Complete(n)) => n,
                Ok(Extent::Incomplete { .. }) | Err(Error::TooLarge { .. }) => {
                    return Err(self.truncated())
                }
                Err(Error::Reserved { offset }) => {
                    return Err(Error::Reserved { offset: start + offset })
                }
                Err(e) => return Err(e),
            },
        };
        if n > rest.len() {
            return Err(self.truncated());
        }
        self.pos += n;
        Ok(start..self.pos)
    }

    /// [`Reader::skip`] for callers that also bound nesting: fails with [`Error::TooDeep`]
    /// when a value would open a non-empty array or map while `MAX` are already open.
    /// Reads value by value with a fixed stack of `MAX` counts, so it never recurses either.
    pub fn skip_nested<const MAX: usize>(&mut self) -> Result<Range<usize>, Error> {
        let start = self.pos;
        // Values still to be read in each open container, innermost last.
        let mut open = [0u64; MAX];
        let mut depth = 0usize;
        loop {
            let offset = self.pos;
            let items = match self.read()? {
                Token::Array(n) => u64::from(n),
                Token::Map(n) => 2 * u64::from(n),
                _ => 0,
            };
            if items > 0 {
                let Some(slot) = open.get_mut(depth) else {
                    return Err(Error::TooDeep { limit: MAX, offset });
                };
                *slot = items;
                depth += 1;
                continue;
            }
            // A value ended: it may be the last of its container, and that of its own.
            loop {
                let Some(slot) = depth.checked_sub(1).and_then(|i| open.get_mut(i)) else {
                    return Ok(start..self.pos);
                };
                *slot -= 1;
                if *slot > 0 {
                    break;
                }
                depth -= 1;
            }
        }
    }
}
