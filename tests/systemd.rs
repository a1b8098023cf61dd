//! berth under systemd's protocols, with the test in systemd's place: `Type=notify`
//! (`READY=1` once serving, `RELOADING=1`/`READY=1` around a SIGHUP, `STOPPING=1`, `WATCHDOG=1`
//! at half `WATCHDOG_USEC`) on a datagram socket the test owns, and SIGHUP re-reading the
//! config — applying the log level, keeping the running config when the new one is bad,
//! saying what needs a restart, never killing berth.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &std::path::Path, forward: u16, admin: u16, level: &str, sink: &str) -> String {
    format!(
        r#"
[input.forward]
listen = ["tcp://127.0.0.1:{forward}"]
[admin]
listen = "127.0.0.1:{admin}"
[buffer]
path = "{dir}/buffer"
[shutdown]
grace_period = "2s"
[log]
level = "{level}"
[enrich.docker]
enabled = false
[enrich.ec2]
enabled = false
[[sink]]
name = "{sink}"
type = "null"
match = "**"
"#,
        dir = dir.display()
    )
}

/// The environment and stdio systemd gives berth: no `BERTH_LOG` (the config's level
/// decides), no `BERTH_CONFIG`, no IMDS, stderr collected.
fn as_systemd(cmd: &mut Command) {
    cmd.env_remove("BERTH_LOG")
        .env_remove("BERTH_CONFIG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
}

/// `berth run` as systemd would start it: no `--log-level` (the config's `[log] level`
/// decides), JSON logs, `env` added.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["--log-format", "json", "run", "--config"]).arg(config);
        as_systemd(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd)
    }

    /// Spawn `cmd` (stderr piped), collecting its stderr lines.
    fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd.spawn().unwrap();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s2, err) = (Arc::clone(&stderr), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                s2.lock().unwrap().push(l);
            }
        });
        Daemon { child, stderr }
    }

    fn text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn wait_log(&self, what: &str) {
        let start = Instant::now();
        while !self.text().contains(what) {
            assert!(start.elapsed() < WAIT, "no {what:?} in:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn ready_once_serving_reloading_stopping_and_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (fwd, admin) = (free_port(), free_port());
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, config(dir.path(), fwd, admin, "info", "null")).unwrap();
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut d = Daemon::start(
        &path,
        &[("NOTIFY_SOCKET", notify.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );

    // READY=1 comes once the listeners accept (and the admin endpoint answers).
    let mut first = recv(&sock);
    while first == "WATCHDOG=1" {
        first = recv(&sock);
    }
    assert_eq!(first, "READY=1");
    std::net::TcpStream::connect(("127.0.0.1", fwd)).expect("the Forward listener is bound");
    assert_eq!(http_get(&format!("127.0.0.1:{admin}"), "/healthz").0, 200);

    // The watchdog: every 200 ms (half of 400 ms).
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let start = Instant::now();
    let mut beats = 0;
    while beats < 4 {
        if recv(&sock) == "WATCHDOG=1" {
            beats += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2), "4 watchdog pings in {:?}", start.elapsed());

    // SIGHUP: RELOADING=1 (with the monotonic time systemd wants), then READY=1 again.
    d.signal("-HUP");
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m == "READY=1") {
        let m = recv(&sock);
        if m != "WATCHDOG=1" {
            got.push(m);
        }
    }
    assert!(got[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got:?}");

    d.signal("-TERM");
    loop {
        let m = recv(&sock);
        if m == "STOPPING=1" {
            break;
        }
        assert!(m == "WATCHDOG=1", "before STOPPING=1: {m}");
    }
    let status = wait_exit(&mut d.child, WAIT);
    assert!(status.success(), "{status}\n{}", d.text());
}

#[test]
fn sighup_applies_the_log_level_keeps_a_bad_config_and_says_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (fwd, admin) = (free_port(), free_port());
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, config(dir.path(), fwd, admin, "info", "null")).unwrap();
    let d = Daemon::start(&path, &[]);
    d.wait_log("berth is running");
    assert!(!d.text().contains("\"level\":\"DEBUG\""), "info at start");

    // The level goes to debug: applied at once, nothing else to restart for.
    std::fs::write(&path, config(dir.path(), fwd, admin, "debug", "null")).unwrap();
    d.signal("-HUP");
    d.wait_log("SIGHUP: config reloaded");
    let (status, _) = http_get(&format!("127.0.0.1:{admin}"), "/healthz");
    assert_eq!(status, 200);
    d.wait_log("SIGHUP: the log filter is replaced");
    assert!(d.text().contains("\"level\":\"DEBUG\""));

    // A bad config: logged, the running one kept, berth still serving.
    std::fs::write(&path, "[input.forward]\nlisten = 7\n").unwrap();
    d.signal("-HUP");
    d.wait_log("SIGHUP: the config is not valid; the running one is kept");
    assert!(d.text().contains("listen"), "the error names the key");
    assert_eq!(http_get(&format!("127.0.0.1:{admin}"), "/healthz").0, 200);

    // Another Forward port and a renamed sink: the sink is applied (tests/reload_sinks.rs),
    // the listener is said to need a restart.
    std::fs::write(&path, config(dir.path(), free_port(), admin, "debug", "renamed")).unwrap();
    d.signal("-HUP");
    d.wait_log("take effect only after a restart");
    let line = d
        .text()
        .lines()
        .find(|l| l.contains("take effect only after a restart"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["needs_restart"], "[\"input\"]", "{line}");
    assert_eq!(v["fields"]["applied"], "[\"sink\"]", "{line}");
    d.wait_log("SIGHUP: sinks changed");
    assert_eq!(http_get(&format!("127.0.0.1:{admin}"), "/healthz").0, 200);
}

/// `berth run` as systemd starts it from `berth.socket`: the sockets the test holds (as
/// systemd does) become fds 3 and 4, `LISTEN_FDS=2`, `LISTEN_PID` berth's own pid.
fn start_activated(
    config: &std::path::Path,
    unix: &std::os::unix::net::UnixListener,
    tcp: &std::net::TcpListener,
) -> Daemon {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (u, t) = (unix.as_raw_fd(), tcp.as_raw_fd());
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS=2; exec {} --log-format json run --config {}",
        berth_bin().display(),
        config.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    as_systemd(&mut cmd);
    // SAFETY: only fcntl and dup2 (async-signal-safe) between fork and exec. Both are
    // first copied above 10 (one may already be fd 3 or 4, and dup2 onto itself would keep
    // its close-on-exec flag); dup2 then gives 3 and 4 without it.
    unsafe {
        cmd.pre_exec(move || {
            let (hu, ht) = (libc::fcntl(u, libc::F_DUPFD, 10), libc::fcntl(t, libc::F_DUPFD, 10));
            if hu < 0 || ht < 0 || libc::dup2(hu, 3) < 0 || libc::dup2(ht, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon::spawn(cmd)
}

#[test]
fn socket_activation_keeps_the_socket_open_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("forward.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let admin = free_port();
    let path = dir.path().join("berth.toml");
    let cfg = config(dir.path(), port, admin, "info", "null").replace(
        &format!("listen = [\"tcp://127.0.0.1:{port}\"]"),
        &format!("listen = [\"tcp://127.0.0.1:{port}\", \"unix://{}\"]", sock.display()),
    );
    std::fs::write(&path, cfg).unwrap();
    let mut d = start_activated(&path, &unix, &tcp);
    d.wait_log("berth is running");
    assert_eq!(
        d.text().matches("listening on the socket systemd passed").count(),
        2,
        "{}",
        d.text()
    );
    let send = |c: &mut Client, chunk: &str| {
        c.send(&message("act.t", 1, rec(&[("a", "b")]), Some(chunk)), usize::MAX).unwrap();
        assert_eq!(c.read_exact_n(ack_bytes(chunk).len()), ack_bytes(chunk));
    };
    send(&mut Client::connect(&format!("unix://{}", sock.display())), "one");
    d.signal("-TERM");
    assert!(wait_exit(&mut d.child, WAIT).success(), "{}", d.text());
    assert!(sock.exists(), "berth does not remove the socket systemd owns");

    // berth is down, the socket is not: a client connects now (the backlog holds it) and
    // is served once berth is back on the same socket.
    let mut waiting = Client::connect(&format!("unix://{}", sock.display()));
    let d2 = start_activated(&path, &unix, &tcp);
    d2.wait_log("berth is running");
    send(&mut waiting, "two");
    send(&mut Client::connect(&format!("tcp://127.0.0.1:{port}")), "three");
}

#[test]
fn a_passed_socket_no_listener_names_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("other.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.path().join("berth.toml");
    // The config names a different port: neither passed socket is one of its listeners.
    std::fs::write(&path, config(dir.path(), free_port(), free_port(), "info", "null")).unwrap();
    let mut d = start_activated(&path, &unix, &tcp);
    let status = wait_exit(&mut d.child, WAIT);
    assert_eq!(status.code(), Some(78), "a config error: RestartPreventExitStatus=78");
    // The thread reading berth's stderr may not have taken its last line yet.
    d.wait_log("that no input.forward.listen address names");
}
