//! systemd's readiness protocol (`sd_notify(3)`): `READY=1` once every listener is bound and
//! the buffer recovered, `STOPPING=1` when the shutdown starts, `RELOADING=1` … `READY=1`
//! around a reload, and `WATCHDOG=1` every half `WatchdogSec` while the process runs.
//!
//! The protocol is one datagram per message to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), and the watchdog's period
//! is `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or ours. Written here rather than taken
//! from a crate: it is a dozen lines over `std::os::unix::net::UnixDatagram`, and the crates
//! that do it add nothing berth needs. Outside systemd (no `$NOTIFY_SOCKET`) every call is a
//! no-op. Documented at <https://www.freedesktop.org/software/systemd/man/sd_notify.html>.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where systemd listens, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ours = var("WATCHDOG_PID").is_none_or(|p| p == std::process::id().to_string());
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket: var("NOTIFY_SOCKET"), watchdog }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Send one message (`READY=1`, `STOPPING=1`, …). Failures are logged once per call, not
    /// fatal: systemd then times the start out itself, which says more than berth could.
    pub fn send(&self, message: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send_to(path, message) {
            tracing::warn!(socket = %path, error = %e, "cannot notify systemd ({message})");
        }
    }

    /// How often to send `WATCHDOG=1`: half the watchdog's timeout, as sd_watchdog_enabled(3)
    /// advises; `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled()).map(|d| d / 2)
    }
}

fn send_to(path: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some(path.display().to_string()), watchdog: None };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n =
            Notifier { socket: Some(format!("@{name}")), watchdog: Some(Duration::from_secs(30)) };
        n.send("STOPPING=1");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(15)));
        assert_eq!(Notifier::default().watchdog_every(), None);
        Notifier::default().send("READY=1"); // outside systemd: nothing, no error
    }
}
