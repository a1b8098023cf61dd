//! What hostile or slow clients can take from berth's Forward input: memory (one budget for
//! every connection), connection slots (per listener, so TCP clients cannot lock the Docker
//! driver out of the Unix socket) and time (deadlines for the handshake and for a request
//! to be whole, whatever the idle timeout). `berth run` as a real process, real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// FILE_SINK with `extra` keys added to `[input.forward]`.
fn with_input(extra: &str) -> String {
    FILE_SINK.replace("max_message_size = \"1MiB\"", extra)
}

/// Resident memory of a process, from /proc (bytes).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The head of a Message-mode request whose record holds one `bin32` of `len` bytes:
/// `[tag, time, {"log": <bin32 header>` — the bin's body and the rest follow.
fn big_record_head(tag: &str, len: u32) -> Vec<u8> {
    let mut v = vec![0x93];
    v.extend(mp(&s(tag)));
    v.extend(mp(&rmpv::Value::from(1)));
    v.extend([0x81]);
    v.extend(mp(&s("log")));
    v.push(0xc6);
    v.extend(len.to_be_bytes());
    v
}

/// A whole request with one record of `len` bytes of `log`, acked under `chunk`.
fn big_message(tag: &str, len: usize, chunk: &str) -> Vec<u8> {
    let record = rmpv::Value::Map(vec![(s("log"), rmpv::Value::Binary(vec![b'x'; len]))]);
    message(tag, 1, record, Some(chunk))
}

fn tcp_stream(b: &Berth) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(b.tcp_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Many connections each sending most of a 16 MiB request and never the rest: berth holds
/// what the budget allows and stops reading the others (their writes block: TCP
/// backpressure). Its memory stays under the budget plus a fixed margin, and a small client
/// on either listener still gets its ack.
#[test]
fn memory_budget_bounds_unfinished_frames_and_small_clients_get_through() {
    const CLIENTS: usize = 24;
    const BODY: usize = 14 << 20;
    let budget: u64 = 64 << 20;
    let b = start(&with_input(
        "max_message_size = \"16MiB\"\nmemory_budget = \"64MiB\"\nmax_connections = 64\nframe_timeout = \"1h\"",
    ));
    let pid = b.child.id();
    let before = rss(pid);
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..CLIENTS {
        let mut c = tcp_stream(&b);
        c.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        writers.push(std::thread::spawn(move || {
            let head = big_record_head(&format!("hog.{i}"), (BODY + 4096) as u32);
            c.write_all(&head).unwrap();
            let chunk = vec![b'x'; 256 << 10];
            let mut left = BODY;
            while left > 0 && !stop.load(Ordering::Relaxed) {
                let n = chunk.len().min(left);
                match c.write(&chunk[..n]) {
                    Ok(k) => {
                        left -= k;
                        sent.fetch_add(k, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => panic!("writer {i}: {e}"),
                }
            }
            c
        }));
    }
    // Until the writers stall: berth reads no more (what they sent beyond is in the
    // kernel's socket buffers, not in berth).
    let mut last = 0;
    let mut stalled_since = Instant::now();
    wait_for(Duration::from_secs(60), "the writers to stall", || {
        let now = sent.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stalled_since = Instant::now();
        }
        (stalled_since.elapsed() > Duration::from_secs(2) || now == CLIENTS * BODY).then_some(())
    });
    let grown = rss(pid).saturating_sub(before);
    // The margin: every connection's allowance (128 KiB) and allocator slack.
    let margin = (CLIENTS as u64) * (128 << 10) + (16 << 20);
    let hogged = sent.load(Ordering::Relaxed);
    assert!(
        grown <= budget + margin,
        "berth grew by {} MiB holding {CLIENTS} unfinished requests ({} MiB sent), budget {} MiB + margin {} MiB",
        grown >> 20,
        hogged >> 20,
        budget >> 20,
        margin >> 20
    );
    assert!(b.metric("berth_input_memory_waits_total") >= 1.0, "connections waited");
    assert!(b.metric("berth_input_memory_bytes") <= budget as f64);
    // A well-behaved client on each listener still gets through.
    for l in &b.listeners {
        let mut c = Client::connect(l);
        c.send(&message("small.t", 1, rec(&[("log", "hello")]), Some("ok")), usize::MAX).unwrap();
        assert_eq!(c.read_exact_n(ack_bytes("ok").len()), ack_bytes("ok"), "{l}");
    }
    // The hogs were paused, not dropped.
    assert_eq!(b.metric("berth_input_errors_total{reason=\"frame_timeout\"}"), 0.0);
    assert!(b.metric("berth_input_connections") >= CLIENTS as f64, "the hogs are connected");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        drop(w.join().unwrap());
    }
    eprintln!(
        "rss grew {} MiB with {CLIENTS} × {} MiB unfinished requests ({} MiB sent)",
        grown >> 20,
        BODY >> 20,
        hogged >> 20
    );
}

/// Requests of nearly max_message_size from several clients at once, under the smallest
/// budget allowed (twice max_message_size): each waits its turn, none waits for ever and
/// none is dropped, gzip ones included (their payload inflates to near the limit).
#[test]
fn large_requests_under_a_small_budget_all_get_through() {
    let b = start(&with_input("max_message_size = \"1MiB\"\nmemory_budget = \"2MiB\""));
    let tcp = format!("tcp://{}", b.tcp_addr());
    let mut threads = Vec::new();
    for i in 0..6 {
        let tcp = tcp.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&tcp);
            for k in 0..2 {
                let chunk = format!("big-{i}-{k}");
                let req = if i % 2 == 0 {
                    big_message(&format!("big.{i}"), 900 << 10, &chunk)
                } else {
                    // ~900 KiB of entries in a small gzip payload, with a chunk to ack.
                    let entry = mp(&rmpv::Value::Array(vec![
                        rmpv::Value::from(1),
                        rec(&[("log", &"y".repeat(1000))]),
                    ]));
                    let payload: Vec<u8> =
                        entry.iter().copied().cycle().take(entry.len() * 900).collect();
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&payload).unwrap();
                    mp(&rmpv::Value::Array(vec![
                        s(&format!("big.{i}")),
                        rmpv::Value::Binary(gz.finish().unwrap()),
                        rmpv::Value::Map(vec![
                            (s("compressed"), s("gzip")),
                            (s("chunk"), s(&chunk)),
                        ]),
                    ]))
                };
                c.send(&req, 64 << 10).unwrap();
                assert_eq!(c.read_exact_n(ack_bytes(&chunk).len()), ack_bytes(&chunk));
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    b.wait_metric("berth_input_records_total", (3 * 2 + 3 * 2 * 900) as f64);
    b.wait_metric("berth_input_memory_bytes", 0.0);
}

/// Slow clients holding every TCP slot (a byte of a request each, idle timeout far away)
/// leave the Unix socket's slots alone; a further TCP client waits for a slot instead of
/// being closed, and is served as soon as one frees.
#[test]
fn slow_tcp_clients_do_not_lock_out_the_unix_socket_and_extra_ones_wait() {
    let b = start(&with_input(
        "max_message_size = \"1MiB\"\nmax_connections = 3\nidle_timeout = \"1h\"\nframe_timeout = \"1h\"",
    ));
    let tcp = format!("tcp://{}", b.tcp_addr());
    let mut slow: Vec<Client> = (0..3).map(|_| Client::connect(&tcp)).collect();
    for c in &mut slow {
        c.send(&[0x94], usize::MAX).unwrap();
    }
    wait_for(WAIT, "three TCP connections", || {
        (b.metric("berth_input_connections") == 3.0).then_some(())
    });
    // The Docker driver on the Unix socket is served at once.
    let mut u = Client::connect(&format!("unix://{}", b.unix_path().display()));
    u.send(&message("docker.x", 1, rec(&[("log", "line")]), Some("u1")), usize::MAX).unwrap();
    assert_eq!(u.read_exact_n(ack_bytes("u1").len()), ack_bytes("u1"));
    // A fourth TCP client is connected (the kernel's accept queue) but not read yet...
    let mut extra = Client::connect(&tcp);
    extra.send(&message("t.extra", 1, rec(&[("log", "wait")]), Some("e1")), usize::MAX).unwrap();
    wait_for(WAIT, "the listener to count a wait", || {
        (b.metric(&format!("berth_input_connection_waits_total{{listener=\"{tcp}\"}}")) >= 1.0)
            .then_some(())
    });
    extra.set_read_timeout(Duration::from_millis(500));
    let mut one = [0u8; 1];
    match extra.read(&mut one) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => {
            panic!("the extra client was answered or closed while every slot was taken: {other:?}")
        }
    }
    // ...and served once a slot frees: nothing it sent was lost.
    drop(slow.pop());
    extra.set_read_timeout(WAIT);
    assert_eq!(extra.read_exact_n(ack_bytes("e1").len()), ack_bytes("e1"));
    assert_eq!(b.metric("berth_input_errors_total{reason=\"too_many_connections\"}"), 0.0);
}

/// With a shared key, a client that drips its PING a byte at a time (each byte would
/// restart the idle timeout) is closed at handshake_timeout.
#[test]
fn a_dripped_handshake_is_closed_at_handshake_timeout() {
    let b = start(&with_input(
        "max_message_size = \"1MiB\"\nshared_key = \"k\"\nidle_timeout = \"1h\"\nhandshake_timeout = \"1s\"",
    ));
    let mut c = tcp_stream(&b);
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut helo = [0u8; 16];
    assert!(c.read(&mut helo).unwrap() > 0, "HELO");
    let started = Instant::now();
    let ping = mp(&rmpv::Value::Array(vec![s("PING"), s(&"x".repeat(100))]));
    let closed = dripped_until_closed(c, &ping);
    let took = started.elapsed();
    assert!(closed, "still open after dripping the whole PING but its last byte");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    b.wait_metric("berth_input_errors_total{reason=\"handshake_timeout\"}", 1.0);
}

/// A request dripped a byte every 200 ms is closed at frame_timeout, though the idle
/// timeout never fires; nothing of it is stored or acked.
#[test]
fn a_dripped_request_is_closed_at_frame_timeout() {
    let b = start(&with_input(
        "max_message_size = \"1MiB\"\nidle_timeout = \"1h\"\nframe_timeout = \"1s\"",
    ));
    let c = tcp_stream(&b);
    let started = Instant::now();
    let req = message("drip.t", 1, rec(&[("log", &"z".repeat(200))]), Some("d1"));
    let closed = dripped_until_closed(c, &req);
    let took = started.elapsed();
    assert!(closed, "still open after dripping the whole request but its last byte");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    b.wait_metric("berth_input_errors_total{reason=\"frame_timeout\"}", 1.0);
    assert_eq!(b.metric("berth_input_records_total"), 0.0);
    // A client that sends its request at once is not affected.
    let mut ok = Client::connect(&b.listeners[0]);
    ok.send(&message("drip.t", 1, rec(&[("log", "fast")]), Some("f1")), usize::MAX).unwrap();
    assert_eq!(ok.read_exact_n(ack_bytes("f1").len()), ack_bytes("f1"));
}

/// Write `bytes` but the last one, a byte every 200 ms, until the server closes the
/// connection (true) or every byte but the last is sent (false).
fn dripped_until_closed(mut c: std::net::TcpStream, bytes: &[u8]) -> bool {
    // Only the server's close (or ours, at the end) ends the watcher's read.
    c.set_read_timeout(None).unwrap();
    let mut reader = c.try_clone().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&closed);
    let watcher = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        loop {
            match reader.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        seen.store(true, Ordering::SeqCst);
    });
    for byte in &bytes[..bytes.len() - 1] {
        if closed.load(Ordering::SeqCst) || c.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let was_closed = closed.load(Ordering::SeqCst);
    let _ = c.shutdown(std::net::Shutdown::Both);
    watcher.join().unwrap();
    was_closed
}
