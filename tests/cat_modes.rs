//! `berth cat` against an in-test Forward server on loopback TCP and a Unix socket: every
//! mode × ack × handshake (none, right key, wrong key), acks answered wrongly or never,
//! user authentication, and streaming (a request leaves before stdin ends).
//!
//! The server decodes with `rmpv`, independently of berth's own decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use berth::cat::{self, CatArgs, CatError, CatSummary};
use berth::forward::encode::encode_ack;
use berth::forward::handshake::{HandshakeError, ServerAuth, ServerHandshake};
use clap::Parser;
use rmpv::Value;
use std::io::Read;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CatArgs,
}

fn parse_args(list: &[String]) -> CatArgs {
    let argv = std::iter::once("cat".to_string()).chain(list.iter().cloned());
    Cli::try_parse_from(argv).expect("arguments parse").args
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Req {
    tag: String,
    mode: &'static str,
    /// `(secs, nanos, used EventTime, record)`
    events: Vec<(i64, u32, bool, Value)>,
    chunk: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Acks {
    Right,
    Wrong,
    Never,
}

#[derive(Clone)]
struct ServerOpts {
    auth: Option<ServerAuth>,
    acks: Acks,
}

fn server_auth(users: &[(&str, &str)]) -> ServerAuth {
    ServerAuth {
        shared_key: "s3cret".into(),
        self_hostname: "test-server".into(),
        users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
    }
}

/// Reads one msgpack value; `Ok(None)` at a clean end of stream.
async fn read_value<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<(Value, Vec<u8>)>, String> {
    loop {
        if !buf.is_empty() {
            let mut cur = &buf[..];
            if let Ok(v) = rmpv::decode::read_value(&mut cur) {
                let used = buf.len() - cur.len();
                let raw: Vec<u8> = buf.drain(..used).collect();
                return Ok(Some((v, raw)));
            }
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err("eof mid-value".into()) };
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn time_of(v: &Value) -> (i64, u32, bool) {
    match v {
        Value::Ext(0, d) if d.len() == 8 => {
            let secs = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            let nanos = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            (secs as i64, nanos, true)
        }
        Value::Integer(i) => (i.as_i64().expect("i64 time"), 0, false),
        other => panic!("bad time {other:?}"),
    }
}

fn entry(v: &Value) -> (i64, u32, bool, Value) {
    let pair = v.as_array().expect("entry is an array");
    let (s, n, et) = time_of(&pair[0]);
    (s, n, et, pair[1].clone())
}

fn option<'a>(opt: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    opt?.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn decode_request(v: &Value) -> Req {
    let arr = v.as_array().expect("request is an array");
    let tag = arr[0].as_str().expect("tag").to_string();
    let (mode, events, opt) = match &arr[1] {
        Value::Array(entries) => ("forward", entries.iter().map(entry).collect(), arr.get(2)),
        Value::Binary(payload) => {
            let opt = arr.get(2);
            let compressed = option(opt, "compressed").and_then(|c| c.as_str()) == Some("gzip");
            let raw = if compressed {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&payload[..])
                    .read_to_end(&mut out)
                    .expect("gunzip");
                out
            } else {
                payload.clone()
            };
            let mut cur = &raw[..];
            let mut events = Vec::new();
            while !cur.is_empty() {
                events.push(entry(&rmpv::decode::read_value(&mut cur).expect("entry")));
            }
            let size = option(opt, "size").and_then(|s| s.as_u64());
            assert_eq!(size, Some(events.len() as u64), "size option");
            (if compressed { "compressed" } else { "packed" }, events, opt)
        }
        t => {
            let (s, n, et) = time_of(t);
            ("message", vec![(s, n, et, arr[2].clone())], arr.get(3))
        }
    };
    let chunk = option(opt, "chunk").map(|c| c.as_str().expect("chunk is a str").to_string());
    Req { tag, mode, events, chunk }
}

/// A Forward server for one connection. Every request is also sent on `seen` as it
/// arrives. Returns the requests, or `Err` with the refusal reason when the handshake failed.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    opts: ServerOpts,
    seen: mpsc::UnboundedSender<Req>,
) -> Result<Vec<Req>, String> {
    let mut buf = Vec::new();
    if let Some(auth) = &opts.auth {
        let hs = ServerHandshake::new(auth);
        s.write_all(&hs.helo()).await.map_err(|e| e.to_string())?;
        let (_, raw) = read_value(&mut s, &mut buf).await?.ok_or("no ping")?;
        let outcome = hs.check_ping(auth, &raw);
        s.write_all(&outcome.pong).await.map_err(|e| e.to_string())?;
        if let Some(e) = outcome.error {
            return Err(e.to_string());
        }
    }
    let mut reqs = Vec::new();
    while let Some((v, _)) = read_value(&mut s, &mut buf).await? {
        let req = decode_request(&v);
        if let Some(chunk) = &req.chunk {
            let answer = match opts.acks {
                Acks::Right => Some(chunk.clone()),
                Acks::Wrong => Some(format!("{chunk}x")),
                Acks::Never => None,
            };
            if let Some(a) = answer {
                let mut raw = Vec::new();
                rmpv::encode::write_value(&mut raw, &Value::from(a.as_str())).expect("encode");
                s.write_all(&encode_ack(&raw)).await.map_err(|e| e.to_string())?;
            }
        }
        let _ = seen.send(req.clone());
        reqs.push(req);
    }
    Ok(reqs)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Tcp,
    Unix,
}

/// Starts a one-connection server; returns the `--address`, the server task and a feed of
/// requests as they arrive. `dir` keeps the Unix socket's directory alive.
async fn start(
    transport: Transport,
    opts: ServerOpts,
    dir: &tempfile::TempDir,
) -> (String, tokio::task::JoinHandle<Result<Vec<Req>, String>>, mpsc::UnboundedReceiver<Req>) {
    let (tx, rx) = mpsc::unbounded_channel();
    match transport {
        Transport::Tcp => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = format!("tcp://{}", l.local_addr().expect("addr"));
            let task = tokio::spawn(async move {
                let (s, _) = l.accept().await.map_err(|e| e.to_string())?;
                serve(s, opts, tx).await
            });
            (addr, task, rx)
        }
        Transport::Unix => {
            let path = dir.path().join("berth.sock");
            let l = tokio::net::UnixListener::bind(&path).expect("bind unix");
            let addr = format!("unix://{}", path.display());
            let task = tokio::spawn(async move {
                let (s, _) = l.accept().await.map_err(|e| e.to_string())?;
                serve(s, opts, tx).await
            });
            (addr, task, rx)
        }
    }
}

fn input_lines(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("{{\"n\":{i},\"msg\":\"line {i}\",\"f\":{i}.5}}\n"));
        if i == 2 {
            s.push('\n'); // a blank line is skipped
        }
    }
    s
}

struct Case {
    transport: Transport,
    mode: &'static str,
    ack: bool,
    key: Option<&'static str>,
    server_auth: Option<ServerAuth>,
    acks: Acks,
    extra: Vec<String>,
}

impl Case {
    fn new(transport: Transport, mode: &'static str) -> Case {
        Case {
            transport,
            mode,
            ack: false,
            key: None,
            server_auth: None,
            acks: Acks::Right,
            extra: Vec::new(),
        }
    }
}

/// Runs `cat` over `input` against a fresh server.
async fn run_case(
    case: &Case,
    input: &str,
) -> (Result<CatSummary, CatError>, Result<Vec<Req>, String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServerOpts { auth: case.server_auth.clone(), acks: case.acks };
    let (addr, server, _rx) = start(case.transport, opts, &dir).await;
    let mut argv = vec![
        "--address".to_string(),
        addr,
        "--mode".into(),
        case.mode.into(),
        "--batch".into(),
        "2".into(),
    ];
    if !case.extra.iter().any(|a| a == "--timeout") {
        argv.extend(["--timeout".to_string(), "2s".to_string()]);
    }
    if case.ack {
        argv.push("--ack".into());
    }
    if let Some(k) = case.key {
        argv.extend(["--shared-key".to_string(), k.to_string()]);
    }
    argv.extend(case.extra.iter().cloned());
    argv.push("test.tag".into());
    let args = parse_args(&argv);
    let out =
        tokio::time::timeout(Duration::from_secs(20), cat::run_with_input(args, input.as_bytes()))
            .await
            .expect("cat finishes");
    let served = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("server finishes")
        .expect("server task");
    (out, served)
}

/// Every mode × ack × (no handshake, right key, wrong key) over `transport`.
async fn matrix(transport: Transport) {
    const N: usize = 5;
    let input = input_lines(N);
    let before = berth::event::EventTime::now();
    for mode in ["message", "forward", "packed", "compressed"] {
        for ack in [false, true] {
            for key in [None, Some("s3cret"), Some("wrong")] {
                let label = format!("{transport:?} {mode} ack={ack} key={key:?}");
                let mut case = Case::new(transport, mode);
                case.ack = ack;
                case.key = key;
                case.server_auth = key.map(|_| server_auth(&[]));
                let (out, served) = run_case(&case, &input).await;

                if key == Some("wrong") {
                    let err = out.expect_err(&label);
                    assert!(
                        matches!(
                            &err,
                            CatError::Handshake { source: HandshakeError::Rejected { reason }, .. }
                                if reason == "shared key mismatch"
                        ),
                        "{label}: {err}"
                    );
                    assert!(err.to_string().contains("shared key mismatch"), "{label}: {err}");
                    assert_eq!(served.expect_err(&label), "shared key mismatch", "{label}");
                    continue;
                }

                let summary = out.unwrap_or_else(|e| panic!("{label}: {e}"));
                let reqs = served.unwrap_or_else(|e| panic!("{label}: server: {e}"));
                let want_requests = if mode == "message" { N } else { N.div_ceil(2) };
                assert_eq!(summary.events, N as u64, "{label}");
                assert_eq!(summary.requests, want_requests as u64, "{label}");
                assert_eq!(summary.acked, if ack { want_requests as u64 } else { 0 }, "{label}");
                assert_eq!(reqs.len(), want_requests, "{label}");
                let mut chunks = std::collections::HashSet::new();
                for r in &reqs {
                    assert_eq!(r.tag, "test.tag", "{label}");
                    assert_eq!(r.mode, mode, "{label}");
                    assert_eq!(r.chunk.is_some(), ack, "{label}");
                    if let Some(c) = &r.chunk {
                        assert_eq!(c.len(), 24, "{label}: base64 of 16 bytes");
                        assert!(chunks.insert(c.clone()), "{label}: chunk reused");
                    }
                }
                let events: Vec<_> = reqs.iter().flat_map(|r| r.events.clone()).collect();
                assert_eq!(events.len(), N, "{label}");
                for (i, (secs, _nanos, event_time, rec)) in events.iter().enumerate() {
                    assert!(event_time, "{label}: EventTime carries the nanoseconds");
                    assert!(*secs >= before.secs && *secs <= before.secs + 60, "{label}");
                    let want = Value::Map(vec![
                        ("n".into(), Value::from(i as u64)),
                        ("msg".into(), Value::from(format!("line {i}").as_str())),
                        ("f".into(), Value::F64(i as f64 + 0.5)),
                    ]);
                    assert_eq!(rec, &want, "{label}");
                }
            }
        }
    }
}

#[tokio::test]
async fn every_mode_ack_and_handshake_over_tcp() {
    matrix(Transport::Tcp).await;
}

#[tokio::test]
async fn every_mode_ack_and_handshake_over_unix() {
    matrix(Transport::Unix).await;
}

#[tokio::test]
async fn wrong_ack_names_chunk_and_lines() {
    let mut case = Case::new(Transport::Tcp, "forward");
    case.ack = true;
    case.acks = Acks::Wrong;
    // Lines 1-2 are the first batch (batch size 2).
    let (out, _served) = run_case(&case, &input_lines(5)).await;
    let err = out.expect_err("wrong ack");
    let msg = err.to_string();
    match &err {
        CatError::AckMismatch { chunk, first_line, last_line, got } => {
            assert_eq!((*first_line, *last_line), (1, 2));
            assert!(msg.contains(chunk.as_str()), "{msg}");
            assert!(got.contains(&format!("{chunk}x")), "{got}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn missing_ack_times_out_naming_chunk_and_lines() {
    let mut case = Case::new(Transport::Unix, "message");
    case.ack = true;
    case.acks = Acks::Never;
    case.extra = vec!["--timeout".into(), "200ms".into()];
    let (out, served) = run_case(&case, &input_lines(3)).await;
    match out.expect_err("no ack") {
        CatError::AckTimeout { chunk, first_line, last_line, timeout } => {
            assert_eq!((first_line, last_line), (1, 1));
            assert_eq!(timeout, Duration::from_millis(200));
            let reqs = served.expect("server");
            assert_eq!(reqs.len(), 1, "nothing is sent after an unacknowledged request");
            assert_eq!(reqs[0].chunk.as_deref(), Some(chunk.as_str()));
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn users_right_and_wrong() {
    let auth = server_auth(&[("alice", "pw")]);
    let mut case = Case::new(Transport::Tcp, "packed");
    case.key = Some("s3cret");
    case.server_auth = Some(auth);
    case.ack = true;
    case.extra = vec!["--username".into(), "alice".into(), "--password".into(), "pw".into()];
    let (out, served) = run_case(&case, &input_lines(3)).await;
    assert_eq!(out.expect("right user").acked, 2);
    assert_eq!(served.expect("server").len(), 2);

    case.extra = vec!["--username".into(), "alice".into(), "--password".into(), "no".into()];
    let (out, served) = run_case(&case, &input_lines(3)).await;
    let msg = out.expect_err("wrong password").to_string();
    assert!(msg.contains("username/password mismatch"), "{msg}");
    assert_eq!(served.expect_err("refused"), "username/password mismatch");
}

#[tokio::test]
async fn helo_without_shared_key_is_explained() {
    let mut case = Case::new(Transport::Tcp, "forward");
    case.ack = true;
    case.server_auth = Some(server_auth(&[]));
    let (out, _served) = run_case(&case, &input_lines(1)).await;
    assert!(matches!(out, Err(CatError::HandshakeRequired)), "{out:?}");
}

#[tokio::test]
async fn bad_line_is_an_error_naming_it() {
    let case = Case::new(Transport::Tcp, "forward");
    let input = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n[4]\n";
    let (out, served) = run_case(&case, input).await;
    let err = out.expect_err("bad line");
    assert_eq!(err.to_string(), "line 4: not a JSON object");
    // The first full batch had already gone out.
    let reqs = served.expect("server");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].events.len(), 2);
}

#[tokio::test]
async fn time_key_sets_the_event_time_and_stays_in_the_record() {
    let mut case = Case::new(Transport::Tcp, "forward");
    case.extra = vec!["--time-key".into(), "ts".into()];
    let input = "{\"ts\":1700000000.25}\n{\"ts\":\"2024-01-01T00:00:00.5Z\"}\n";
    let (out, served) = run_case(&case, input).await;
    out.expect("cat");
    let reqs = served.expect("server");
    let ev = &reqs[0].events;
    assert_eq!((ev[0].0, ev[0].1), (1_700_000_000, 250_000_000));
    assert_eq!((ev[1].0, ev[1].1), (1_704_067_200, 500_000_000));
    assert_eq!(ev[1].3, Value::Map(vec![("ts".into(), "2024-01-01T00:00:00.5Z".into())]));
}

/// A request leaves as soon as stdin pauses, before stdin ends: `cat` streams.
#[tokio::test]
async fn sends_before_stdin_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServerOpts { auth: None, acks: Acks::Right };
    let (addr, server, mut seen) = start(Transport::Tcp, opts, &dir).await;
    let (mut feed, stdin) = tokio::io::duplex(64 * 1024);
    // Batch 100, but only 3 lines so far.
    let args = parse_args(&["--address".into(), addr, "--ack".into(), "test.tag".into()]);
    let cat = tokio::spawn(cat::run_with_input(args, tokio::io::BufReader::new(stdin)));
    feed.write_all(input_lines(3).as_bytes()).await.expect("feed");
    let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("a request before stdin ends")
        .expect("request");
    assert_eq!(first.events.len(), 3);
    feed.write_all(b"{\"last\":true}\n").await.expect("feed");
    drop(feed);
    let summary = tokio::time::timeout(Duration::from_secs(10), cat)
        .await
        .expect("cat finishes")
        .expect("task")
        .expect("cat");
    assert_eq!(summary, CatSummary { events: 4, requests: 2, acked: 2 });
    assert_eq!(server.await.expect("server").expect("served").len(), 2);
}

#[test]
fn cli_defaults() {
    let args = parse_args(&["app.log".to_string()]);
    assert_eq!(args.address, cat::Address::Tcp("127.0.0.1:24224".into()));
    assert_eq!(args.mode, cat::CatMode::Forward);
    assert_eq!(args.batch, 100);
    assert_eq!(args.timeout, Duration::from_secs(10));
    assert!(!args.ack);
    assert_eq!(args.tag, "app.log");
    let bad = Cli::try_parse_from(["cat", "--batch", "0", "t"]);
    assert!(bad.is_err());
    let bad = Cli::try_parse_from(["cat", "--username", "u", "t"]);
    assert!(bad.is_err(), "--username needs --password and --shared-key");
}

#[tokio::test]
async fn empty_input_sends_nothing_and_succeeds() {
    for ack in [false, true] {
        let mut case = Case::new(Transport::Tcp, "forward");
        case.ack = ack;
        let (out, served) = run_case(&case, "\n\n").await;
        assert_eq!(out.expect("cat"), CatSummary::default());
        assert!(served.expect("server").is_empty());
    }
}

#[tokio::test]
async fn handshake_timeout_when_server_sends_no_helo() {
    let mut case = Case::new(Transport::Unix, "forward");
    case.key = Some("s3cret");
    case.extra = vec!["--timeout".into(), "100ms".into()];
    // The server expects no handshake and waits for requests; cat waits for a HELO.
    let (out, _served) = run_case(&case, &input_lines(1)).await;
    let err = out.expect_err("no helo");
    assert_eq!(err.to_string(), "timed out after 100ms waiting for HELO");
}
