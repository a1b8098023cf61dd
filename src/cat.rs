//! `berth cat`: the `fluent-cat` a user reaches for. Reads JSON objects from stdin, one a
//! line, and sends them as Forward requests to a server (berth, fluentd, Fluent Bit).
//!
//! It streams: a batch is sent as soon as it is full or stdin has nothing more for now, so
//! `tail -f app.log | berth cat app` delivers promptly and a stdin of millions of lines is
//! never held in memory. With `--ack` every request carries a `chunk` and the next one is
//! sent only after the server acknowledged it (no pipelining: `cat` is a tool for testing
//! and for small feeds, and one outstanding request makes a failure point at its lines).

use crate::event::{Event, EventTime};
use crate::forward::encode::{encode_request, EncodeOptions};
use crate::forward::handshake::{self, ClientAuth, ClientHandshake, HandshakeError};
use crate::forward::{frame_len, FrameStatus, Mode};
use bytes::Bytes;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// The largest server reply (HELO, PONG, ack) accepted; real ones are under 300 bytes.
const MAX_REPLY: usize = 64 * 1024;

/// How long, at most, to wait for the server to close after our last request when nothing
/// is acknowledged: closing with the server's bytes unread could reset the connection and
/// lose what it had not read yet.
const LINGER: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
pub struct CatArgs {
    /// Where to send: tcp://HOST:PORT or unix:///PATH.
    #[arg(long, default_value = "tcp://127.0.0.1:24224", value_parser = Address::parse)]
    pub address: Address,
    /// The Forward carrier mode.
    #[arg(long, value_enum, default_value_t = CatMode::Forward)]
    pub mode: CatMode,
    /// Ask the server to acknowledge every request, and fail if one is not.
    #[arg(long)]
    pub ack: bool,
    /// Perform the shared-key handshake (HELO / PING / PONG) first.
    #[arg(long, env = "BERTH_CAT_SHARED_KEY", hide_env_values = true)]
    pub shared_key: Option<String>,
    /// Username, when the server asks for one during the handshake.
    #[arg(long, requires = "password", requires = "shared_key")]
    pub username: Option<String>,
    /// Password, when the server asks for one during the handshake.
    #[arg(long, env = "BERTH_CAT_PASSWORD", hide_env_values = true, requires = "username")]
    pub password: Option<String>,
    /// Events per request in forward, packed and compressed modes (message mode sends one
    /// event per request).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Take each event's time from this field (seconds since the epoch, fractions allowed,
    /// or an RFC 3339 string); the field stays in the record. Default: the time it is read.
    #[arg(long)]
    pub time_key: Option<String>,
    /// Limit for connecting, the handshake, each write and each ack (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
    /// The tag of every event.
    pub tag: String,
}

/// `--mode`: the four Forward carrier modes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatMode {
    Message,
    Forward,
    Packed,
    Compressed,
}

impl CatMode {
    fn wire(self) -> Mode {
        match self {
            CatMode::Message => Mode::Message,
            CatMode::Forward => Mode::Forward,
            CatMode::Packed => Mode::PackedForward,
            CatMode::Compressed => Mode::CompressedPackedForward,
        }
    }
}

/// `--address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `HOST:PORT`, resolved when connecting.
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// `tcp://HOST:PORT` or `unix:///PATH`.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("unix:// needs a socket path, e.g. unix:///run/berth.sock".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("tcp://").ok_or_else(|| {
            format!("unsupported address {s:?}: expected tcp://HOST:PORT or unix:///PATH")
        })?;
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(hostport.to_string()))
            }
            _ => Err(format!("address {s:?} needs a host and a port, e.g. tcp://127.0.0.1:24224")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// What was sent, printed by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatSummary {
    pub events: u64,
    pub requests: u64,
    /// Requests the server acknowledged (0 without `--ack`).
    pub acked: u64,
}

impl fmt::Display for CatSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sent {} events in {} requests", self.events, self.requests)?;
        if self.acked > 0 {
            write!(f, ", {} acknowledged", self.acked)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatError {
    #[error("connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("read stdin at line {line}: {source}")]
    ReadInput { line: u64, source: io::Error },
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    #[error("send to {address}: {source}")]
    Send { address: String, source: io::Error },
    #[error("receive from {address}: {source}")]
    Receive { address: String, source: io::Error },
    #[error("timed out after {timeout:?} {doing}")]
    Timeout { doing: &'static str, timeout: Duration },
    #[error("server closed the connection while {doing}")]
    Closed { doing: &'static str },
    #[error("handshake with {address}: {source}")]
    Handshake { address: String, source: HandshakeError },
    #[error("server sent a HELO: it requires the handshake, give --shared-key")]
    HandshakeRequired,
    #[error("no ack for chunk {chunk} (lines {first_line}-{last_line}) within {timeout:?}")]
    AckTimeout { chunk: String, first_line: u64, last_line: u64, timeout: Duration },
    #[error("server closed the connection before acknowledging chunk {chunk} (lines {first_line}-{last_line})")]
    AckClosed { chunk: String, first_line: u64, last_line: u64 },
    #[error("wrong ack for chunk {chunk} (lines {first_line}-{last_line}): got {got}")]
    AckMismatch { chunk: String, first_line: u64, last_line: u64, got: String },
}

/// `berth cat` on stdin.
pub async fn run(args: CatArgs) -> Result<CatSummary, CatError> {
    // A large buffer: a partial batch is sent whenever the buffer runs dry and stdin has
    // not answered yet, so the buffer bounds how small batches get on a fast pipe.
    let stdin = tokio::io::BufReader::with_capacity(1 << 20, tokio::io::stdin());
    run_with_input(args, stdin).await
}

/// `berth cat` reading `input` instead of stdin (tests feed it directly).
pub async fn run_with_input<R>(args: CatArgs, input: R) -> Result<CatSummary, CatError>
where
    R: AsyncBufRead + Unpin,
{
    let address = args.address.to_string();
    let connect_err = |source| CatError::Connect { address: address.clone(), source };
    match &args.address {
        Address::Tcp(hostport) => {
            let stream =
                within(args.timeout, "connecting", tokio::net::TcpStream::connect(hostport))
                    .await?
                    .map_err(connect_err)?;
            // Requests are written whole; Nagle would only delay the last one.
            let _ = stream.set_nodelay(true);
            session(stream, &args, input).await
        }
        Address::Unix(path) => {
            let stream = within(args.timeout, "connecting", tokio::net::UnixStream::connect(path))
                .await?
                .map_err(connect_err)?;
            session(stream, &args, input).await
        }
    }
}

async fn within<F: std::future::Future>(
    timeout: Duration,
    doing: &'static str,
    f: F,
) -> Result<F::Output, CatError> {
    tokio::time::timeout(timeout, f).await.map_err(|_| CatError::Timeout { doing, timeout })
}

/// One connection: optional handshake, then batches until the input ends.
async fn session<S, R>(stream: S, args: &CatArgs, mut input: R) -> Result<CatSummary, CatError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let address = args.address.to_string();
    let (rd, mut wr) = tokio::io::split(stream);
    let mut replies = Replies { rd, buf: Vec::with_capacity(256), address: address.clone() };
    let send_err = |source| CatError::Send { address: address.clone(), source };

    if let Some(shared_key) = &args.shared_key {
        let auth = ClientAuth {
            shared_key: shared_key.clone(),
            self_hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            username: args.username.clone().unwrap_or_default(),
            password: args.password.clone().unwrap_or_default(),
        };
        let hs_err = |source| CatError::Handshake { address: address.clone(), source };
        let helo = replies.next(args.timeout, "waiting for HELO").await?;
        let client = ClientHandshake::from_helo(&helo).map_err(hs_err)?;
        within(args.timeout, "sending PING", wr.write_all(&client.ping(&auth)))
            .await?
            .map_err(send_err)?;
        let pong = replies.next(args.timeout, "waiting for PONG").await?;
        client.check_pong(&auth, &pong).map_err(hs_err)?;
    }

    let mode = args.mode.wire();
    // With acks every Message-mode request needs its own chunk and its own wait.
    let batch_size = if mode == Mode::Message && args.ack { 1 } else { args.batch as usize };
    let mut summary = CatSummary::default();
    let mut batch: Vec<Event> = Vec::with_capacity(batch_size.min(10_000));
    let mut line = String::new();
    let mut line_no: u64 = 0;
    let mut first_line: u64 = 0;
    let mut eof = false;

    while !eof {
        // Send a partial batch when stdin has nothing more for now, so a slow feed is not
        // held back waiting for a full batch.
        if !batch.is_empty() && !input_ready(&mut input).await {
            let lines = (first_line, line_no);
            send_batch(&mut wr, &mut replies, args, &batch, lines, &mut summary).await?;
            batch.clear();
        }
        line.clear();
        let n = input
            .read_line(&mut line)
            .await
            .map_err(|source| CatError::ReadInput { line: line_no + 1, source })?;
        if n == 0 {
            eof = true;
        } else {
            line_no += 1;
            if let Some(ev) = parse_line(&line, line_no, args.time_key.as_deref())? {
                if batch.is_empty() {
                    first_line = line_no;
                }
                batch.push(ev);
            }
        }
        if !batch.is_empty() && (batch.len() >= batch_size || eof) {
            let lines = (first_line, line_no);
            send_batch(&mut wr, &mut replies, args, &batch, lines, &mut summary).await?;
            batch.clear();
        }
    }

    within(args.timeout, "closing the connection", wr.shutdown()).await?.map_err(send_err)?;
    if !args.ack && summary.requests > 0 {
        // Without acks the only sign the server has read everything is it closing too.
        // A server that keeps the connection open costs the linger; that is not an error.
        let _ = tokio::time::timeout(LINGER.min(args.timeout), replies.drain()).await;
    }
    Ok(summary)
}

/// Whether `input` has bytes (or EOF) available without waiting. Polling `poll_fill_buf`
/// once is cancel-safe: whatever it buffers stays in the reader for `read_line`.
async fn input_ready<R: AsyncBufRead + Unpin>(input: &mut R) -> bool {
    std::future::poll_fn(|cx| match Pin::new(&mut *input).poll_fill_buf(cx) {
        Poll::Ready(_) => Poll::Ready(true),
        Poll::Pending => Poll::Ready(false),
    })
    .await
}

async fn send_batch<W, R>(
    wr: &mut W,
    replies: &mut Replies<R>,
    args: &CatArgs,
    batch: &[Event],
    (first_line, last_line): (u64, u64),
    summary: &mut CatSummary,
) -> Result<(), CatError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let chunk = args.ack.then(new_chunk_id);
    let opts = EncodeOptions { chunk: chunk.clone(), event_time: true };
    let mode = args.mode.wire();
    let bytes = encode_request(mode, &args.tag, batch, &opts);
    within(args.timeout, "sending a request", wr.write_all(&bytes))
        .await?
        .map_err(|source| CatError::Send { address: replies.address.clone(), source })?;
    summary.events += batch.len() as u64;
    summary.requests += if mode == Mode::Message { batch.len() as u64 } else { 1 };

    let Some(chunk) = chunk else { return Ok(()) };
    let reply = match replies.next(args.timeout, "waiting for an ack").await {
        Ok(r) => r,
        Err(CatError::Timeout { timeout, .. }) => {
            return Err(CatError::AckTimeout { chunk, first_line, last_line, timeout })
        }
        Err(CatError::Closed { .. }) => {
            return Err(CatError::AckClosed { chunk, first_line, last_line })
        }
        Err(e) => return Err(e),
    };
    match handshake::ack_chunk(&reply) {
        Some(got) if got == chunk.as_bytes() => {
            summary.acked += 1;
            Ok(())
        }
        Some(got) => Err(CatError::AckMismatch {
            chunk,
            first_line,
            last_line,
            got: format!("{:?}", String::from_utf8_lossy(got)),
        }),
        None if handshake::is_helo(&reply) => Err(CatError::HandshakeRequired),
        None => Err(CatError::AckMismatch {
            chunk,
            first_line,
            last_line,
            got: format!("a reply that is not an ack ({} bytes)", reply.len()),
        }),
    }
}

/// The server's side of the connection, cut into msgpack values.
struct Replies<R> {
    rd: R,
    buf: Vec<u8>,
    address: String,
}

impl<R: AsyncRead + Unpin> Replies<R> {
    /// The next complete reply, within `timeout`.
    async fn next(&mut self, timeout: Duration, doing: &'static str) -> Result<Vec<u8>, CatError> {
        within(timeout, doing, self.next_inner(doing)).await?
    }

    async fn next_inner(&mut self, doing: &'static str) -> Result<Vec<u8>, CatError> {
        loop {
            match frame_len(&self.buf, MAX_REPLY) {
                Ok(FrameStatus::Complete(n)) => {
                    let rest = self.buf.split_off(n);
                    return Ok(std::mem::replace(&mut self.buf, rest));
                }
                Ok(FrameStatus::Incomplete { .. }) => {}
                Err(e) => {
                    return Err(CatError::Receive {
                        address: self.address.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidData, format!("reply: {e}")),
                    })
                }
            }
            let mut tmp = [0u8; 4096];
            let n = self
                .rd
                .read(&mut tmp)
                .await
                .map_err(|source| CatError::Receive { address: self.address.clone(), source })?;
            if n == 0 {
                return Err(CatError::Closed { doing });
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads until the server closes (or fails); what it says is of no interest.
    async fn drain(&mut self) {
        let mut tmp = [0u8; 1024];
        while let Ok(n) = self.rd.read(&mut tmp).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Base64 of 16 random bytes, the chunk id fluent-logger and Fluent Bit send.
fn new_chunk_id() -> String {
    let raw: [u8; 16] = rand::random();
    base64(&raw)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One input line → an event; `None` for a blank line.
///
/// The JSON is transcoded straight into msgpack, keeping the order of keys as written (a
/// `serde_json::Value` would sort them) and building no intermediate tree.
fn parse_line(line: &str, line_no: u64, time_key: Option<&str>) -> Result<Option<Event>, CatError> {
    let text = line.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| CatError::BadLine { line: line_no, reason };
    if !text.starts_with('{') {
        return Err(bad("not a JSON object".into()));
    }
    let mut record = Vec::with_capacity(text.len());
    let mut time = TimeField::Absent;
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Transcode { out: &mut record, time_key, time: None, top: Some(&mut time) };
    serde::de::DeserializeSeed::deserialize(seed, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let time = match (time_key, time) {
        (None, _) => EventTime::now(),
        (Some(_), TimeField::Valid(t)) => t,
        (Some(key), TimeField::Absent) => return Err(bad(format!("no time field {key:?}"))),
        (Some(key), TimeField::Invalid) => {
            return Err(bad(format!(
                "time field {key:?} is not seconds since the epoch or an RFC 3339 time"
            )))
        }
    };
    Ok(Some(Event { time, record: Bytes::from(record), metadata: Bytes::new() }))
}

/// What the `--time-key` field of a record held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeField {
    Absent,
    Invalid,
    Valid(EventTime),
}

fn time_from_f64(f: f64) -> Option<EventTime> {
    if !f.is_finite() || f.abs() > 1e15 {
        return None;
    }
    let secs = f.floor();
    // Rounded to whole microseconds: an f64 near today's epoch seconds has no finer
    // precision, and rounding keeps 1.1 from becoming 1.099999904.
    let micros = ((f - secs) * 1e6).round() as u32;
    let (secs, micros) = if micros >= 1_000_000 { (secs + 1.0, 0) } else { (secs, micros) };
    Some(EventTime::new(secs as i64, micros * 1000))
}

/// A serde visitor that writes each JSON value as msgpack into `out`: integers stay
/// integers (u64 or i64), other numbers become float64.
///
/// msgpack puts a container's length before its items and JSON does not say it, so a
/// container's header is inserted in front of its items once they are counted.
struct Transcode<'a> {
    out: &'a mut Vec<u8>,
    /// The key whose top-level value is the event time.
    time_key: Option<&'a str>,
    /// Set when this value is the time field: where to record what it held.
    time: Option<&'a mut TimeField>,
    /// Set only for the record itself (the top-level object): where its time field goes.
    top: Option<&'a mut TimeField>,
}

impl Transcode<'_> {
    fn set_time(&mut self, t: Option<EventTime>) {
        if let Some(slot) = self.time.as_deref_mut() {
            *slot = t.map_or(TimeField::Invalid, TimeField::Valid);
        }
    }
}

// Writing msgpack into a Vec cannot fail; rmp's Result only reports I/O errors.
impl<'de> serde::de::Visitor<'de> for Transcode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.set_time(None);
        let _ = rmp::encode::write_nil(self.out);
        Ok(())
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.set_time(None);
        let _ = rmp::encode::write_bool(self.out, v);
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.set_time(i64::try_from(v).ok().map(|s| EventTime::new(s, 0)));
        let _ = rmp::encode::write_uint(self.out, v);
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.set_time(Some(EventTime::new(v, 0)));
        let _ = rmp::encode::write_sint(self.out, v);
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.set_time(time_from_f64(v));
        let _ = rmp::encode::write_f64(self.out, v);
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.set_time(parse_rfc3339(v));
        let _ = rmp::encode::write_str(self.out, v);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.set_time(None);
        let out = self.out;
        let start = out.len();
        let mut n: u32 = 0;
        while seq
            .next_element_seed(Transcode { out: &mut *out, time_key: None, time: None, top: None })?
            .is_some()
        {
            n = n.saturating_add(1);
        }
        let mut header = Vec::with_capacity(5);
        let _ = rmp::encode::write_array_len(&mut header, n);
        out.splice(start..start, header);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.set_time(None);
        let (out, time_key, mut top) = (self.out, self.time_key, self.top);
        let start = out.len();
        let mut n: u32 = 0;
        while let Some(is_time) = map.next_key_seed(Key { out: &mut *out, time_key })? {
            // Only the record's own field is its time, not one nested deeper.
            let time = if is_time { top.as_deref_mut() } else { None };
            let value = Transcode { out: &mut *out, time_key: None, time, top: None };
            map.next_value_seed(value)?;
            n = n.saturating_add(1);
        }
        let mut header = Vec::with_capacity(5);
        let _ = rmp::encode::write_map_len(&mut header, n);
        out.splice(start..start, header);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.top.is_some() {
            d.deserialize_map(self)
        } else {
            d.deserialize_any(self)
        }
    }
}

/// A map key: written as a msgpack str; yields whether it is the time key.
struct Key<'a> {
    out: &'a mut Vec<u8>,
    time_key: Option<&'a str>,
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        let _ = rmp::encode::write_str(self.out, v);
        Ok(self.time_key == Some(v))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `T` or a space between date and time.
pub fn parse_rfc3339(s: &str) -> Option<EventTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=crate::calendar::days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Digits past nanoseconds are dropped.
        for (k, d) in b[start..i].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = crate::calendar::days_from_civil(year, month, day);
    // A leap second (:60) is folded into the next second, as most systems do.
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(EventTime::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("tcp://127.0.0.1:24224"),
            Ok(Address::Tcp("127.0.0.1:24224".into()))
        );
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
        let ev =
            parse_line(r#"{"z":{"ts":5},"a":[],"m":{},"ts":7,"s":"\u00e9\"q"}"#, 1, Some("ts"))
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
}
