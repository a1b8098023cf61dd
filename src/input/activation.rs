//! systemd socket activation (`sd_listen_fds(3)`): with `berth.socket`, systemd owns the
//! Forward socket and hands it to berth as fd 3 onwards (`LISTEN_FDS`, `LISTEN_PID`), so
//! the socket stays open — and clients' connects wait in its backlog — while berth restarts
//! or upgrades. Each inherited socket is matched to a configured listener by its address
//! (a Unix path, a TCP address); a configured listener with no inherited socket is bound as
//! usual, and an inherited one no listener names is refused (a unit and a config that
//! disagree). Written here: it is two environment variables and `getsockname`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// A socket systemd passed, and what it listens on.
#[derive(Debug)]
pub struct Inherited {
    pub fd: OwnedFd,
    pub addr: InheritedAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InheritedAddr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
    Other,
}

/// How many fds the environment says were passed to this process: `LISTEN_FDS` when
/// `LISTEN_PID` is ours. Pure over the two values.
pub fn count(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> usize {
    match (listen_pid.and_then(|p| p.parse::<u32>().ok()), listen_fds) {
        (Some(p), Some(n)) if p == pid => n.parse().unwrap_or(0),
        _ => 0,
    }
}

/// Take the passed sockets (once: the variables are removed so children do not see them).
pub fn take() -> Vec<Inherited> {
    let n = count(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    // SAFETY (remove_var): called at start, before any thread of berth's reads the
    // environment; std documents removal as unsafe only in the presence of such threads.
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        unsafe { std::env::remove_var(v) };
    }
    (0..n as RawFd)
        .map(|i| {
            let raw = FIRST_FD + i;
            // SAFETY: systemd passed fds FIRST_FD.. FIRST_FD+n, open and ours to own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let addr = address(raw);
            // CLOEXEC, so the fd does not leak into processes berth starts.
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
            Inherited { fd, addr }
        })
        .collect()
}

fn address(fd: RawFd) -> InheritedAddr {
    // SAFETY: getsockname writes at most `len` bytes into the zeroed storage given.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len)
    };
    if rc != 0 {
        return InheritedAddr::Other;
    }
    match i32::from(storage.ss_family) {
        libc::AF_UNIX => {
            // SAFETY: the family says this storage holds a sockaddr_un.
            let un: &libc::sockaddr_un =
                unsafe { &*(&storage as *const _ as *const libc::sockaddr_un) };
            let bytes: Vec<u8> =
                un.sun_path.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
            use std::os::unix::ffi::OsStringExt;
            InheritedAddr::Unix(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
        }
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            InheritedAddr::Tcp(std::net::SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            InheritedAddr::Tcp(std::net::SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => InheritedAddr::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fds_meant_for_this_process_count() {
        assert_eq!(count(Some("42"), Some("2"), 42), 2);
        assert_eq!(count(Some("41"), Some("2"), 42), 0, "another process's (a parent's)");
        assert_eq!(count(None, Some("2"), 42), 0);
        assert_eq!(count(Some("42"), None, 42), 0);
        assert_eq!(count(Some("42"), Some("x"), 42), 0);
    }

    #[test]
    fn addresses_are_read_back_from_the_socket() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let u = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert_eq!(address(u.as_raw_fd()), InheritedAddr::Unix(p));
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(address(t.as_raw_fd()), InheritedAddr::Tcp(t.local_addr().unwrap()));
    }
}
