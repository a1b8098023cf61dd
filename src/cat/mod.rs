//! `berth cat`: the `fluent-cat` a user reaches for. Reads JSON objects from stdin, one a
//! line, and sends them as Forward requests to a server (berth, fluentd, Fluent Bit).
//!
//! It streams: a batch is sent as soon as it is full or stdin has nothing more for now, so
//! `tail -f app.log | berth cat app` delivers promptly and a stdin of millions of lines is
//! never held in memory. With `--ack` every request carries a `chunk` and the next one is
//! sent only after the server acknowledged it (no pipelining: `cat` is a tool for testing
//! and for small feeds, and one outstanding request makes a failure point at its lines).

use crate::event::Event;
use crate::forward::encode::{encode_request, EncodeOptions};
use crate::forward::handshake::{self, ClientAuth, ClientHandshake, HandshakeError};
use crate::forward::{frame_len, FrameStatus, Mode};
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

mod line;
#[cfg(test)]
mod tests;

pub use crate::calendar::parse_rfc3339;
use line::parse_line;
