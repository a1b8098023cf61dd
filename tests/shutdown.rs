//! The shutdown sequence is bounded by the grace period: SIGTERM ends berth in time while
//! an admin client pipelines requests without reading its answers (which holds axum's
//! graceful shutdown for ever) and while a sink's endpoint accepts and never answers. What
//! the stuck sink did not deliver stays in the buffer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(2);

/// An "Elasticsearch" that accepts connections and never answers (held open until the
/// test ends).
fn silent_endpoint() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        l.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if held.len() > 64 {
                return;
            }
        }
    });
    (format!("http://{addr}"), t)
}

/// Writes pipelined `GET /metrics` requests and never reads: stops once the kernel's
/// buffers are full (the write blocks) or after a bounded number of bytes.
fn pipeline_without_reading(admin: &str) -> TcpStream {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let req = b"GET /metrics HTTP/1.1\r\nHost: berth\r\n\r\n";
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match s.write(req) {
            Ok(n) => sent += n,
            Err(_) => break, // blocked: berth's answers fill the socket, unread
        }
    }
    s
}

#[test]
fn sigterm_ends_within_the_grace_period_with_a_stuck_sink_and_a_pipelining_admin_client() {
    let (endpoint, _server) = silent_endpoint();
    let cfg = config_endpoints(&[&endpoint], "timeout = \"60s\"\n");
    assert!(cfg.contains("grace_period = \"2s\""), "NETWORK_HEAD sets the grace period");
    let mut b = start(&cfg);

    // Records the sink will never deliver: one request in flight, the rest behind it.
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(WAIT);
    for i in 0..20 {
        let chunk = format!("c{i}");
        c.send(&message("app.x", 1_700_000_000 + i, rec(&[("n", "x")]), Some(&chunk)), usize::MAX)
            .unwrap();
        assert_eq!(c.read_exact_n(ack_bytes(&chunk).len()), ack_bytes(&chunk), "acked");
    }
    drop(c);
    wait_for(WAIT, "a bulk request in flight", || {
        (b.metric("berth_sink_lag_records{sink=\"search\"}") > 0.0).then_some(())
    });

    let admin = b.admin.clone().expect("admin address");
    let _unread = pipeline_without_reading(&admin);

    let t0 = Instant::now();
    b.signal(15);
    let status = wait_exit(&mut b.child, WAIT);
    let took = t0.elapsed();
    assert!(status.success(), "berth exited with {status}:\n{}", b.stderr_text());
    // The grace period, plus the runtime's last 0.5 s and process start-up noise.
    assert!(
        took < GRACE + Duration::from_millis(2500),
        "SIGTERM took {took:?} with a {GRACE:?} grace period:\n{}",
        b.stderr_text()
    );
    let err = b.stderr_text();
    assert!(err.contains("shutdown grace period expired"), "{err}");
    assert!(err.contains("events left in the buffer for the next start"), "{err}");
    assert!(err.contains("shutdown complete"), "{err}");
}
