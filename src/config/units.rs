//! The small value languages of the config file: sizes, durations, octal file modes and
//! listen addresses. Pure functions; each error message quotes the input and says what was
//! expected, because it ends up in front of an operator reading a failed deploy.

use super::ListenAddr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Size units, longest first so that "MiB" is tried before "B".
const SIZE_UNITS: [(&str, u64); 7] = [
    ("KiB", KIB),
    ("MiB", MIB),
    ("GiB", GIB),
    ("KB", 1000),
    ("MB", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("B", 1),
];

/// `"16MiB"`, `"512KiB"`, `"1GiB"`, `"16MB"` (decimal), `"1000"` or `"1000B"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?} (expected a number with a unit such as \"16MiB\")");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    let mult = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(bad)?
    };
    let n: u64 = digits.parse().map_err(|_| format!("size {s:?} is too large"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// The shortest exact spelling: "16MiB", "1GiB", "1000".
pub fn format_size(n: u64) -> String {
    for (unit, mult) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n != 0 && n.is_multiple_of(mult) {
            return format!("{}{unit}", n / mult);
        }
    }
    n.to_string()
}

const DURATION_UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];

/// `"250ms"`, `"5s"`, `"5m"`, `"1h"`: a whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?} (expected a whole number with a unit: \"250ms\", \"5s\", \"5m\" or \"1h\")"
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    let mult = DURATION_UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(bad)?;
    let n: u64 = digits.parse().map_err(|_| format!("duration {s:?} is too large"))?;
    let ms = n.checked_mul(mult).ok_or_else(|| format!("duration {s:?} is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// The largest unit that is exact: "5m", "25s", "250ms". Sub-millisecond parts (which
/// `parse_duration` never produces) are rounded down.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, mult) in DURATION_UNITS.iter().rev() {
        let mult = u128::from(*mult);
        if ms != 0 && ms.is_multiple_of(mult) {
            return format!("{}{unit}", ms / mult);
        }
    }
    format!("{ms}ms")
}

/// An octal permission string such as `"0660"` or `"660"`, at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let mode = if !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        u32::from_str_radix(digits, 8).ok()
    } else {
        None
    };
    match mode {
        Some(m) if m <= 0o777 => Ok(m),
        Some(_) => Err(format!("invalid socket mode {s:?} (at most \"0777\": setuid, setgid and sticky bits make no sense on a socket)")),
        None => Err(format!("invalid socket mode {s:?} (expected an octal string such as \"0660\")")),
    }
}

pub fn format_mode(m: u32) -> String {
    format!("{m:04o}")
}

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_PATH: usize = 107;

/// `tcp://HOST:PORT` (IPv4, `[IPv6]` or `localhost`) or `unix:///absolute/path`.
pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    const EXPECTED: &str = "expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\"";
    if let Some(rest) = s.strip_prefix("tcp://") {
        let addr = parse_host_port(rest)
            .map_err(|why| format!("invalid listen address {s:?}: {why} ({EXPECTED})"))?;
        Ok(ListenAddr::Tcp(addr))
    } else if let Some(path) = s.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "invalid listen address {s:?}: the socket path must be absolute, as in \"unix:///run/berth/forward.sock\""
            ));
        }
        if path.ends_with('/') {
            return Err(format!("invalid listen address {s:?}: the socket path names a directory"));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(format!(
                "invalid listen address {s:?}: the socket path is {} bytes, longer than the {MAX_UNIX_PATH} Linux allows",
                path.len()
            ));
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    } else {
        Err(format!("invalid listen address {s:?} ({EXPECTED})"))
    }
}

/// `HOST:PORT` with HOST an IPv4 literal, a bracketed IPv6 literal or `localhost`
/// (127.0.0.1: no resolver at load, and the Docker driver connects over IPv4 by default).
pub fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("missing \":PORT\"".to_string());
    };
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        IpAddr::V6(v6.parse().map_err(|_| format!("invalid IPv6 address {v6:?}"))?)
    } else {
        IpAddr::V4(host.parse().map_err(|_| {
            format!("invalid host {host:?} (an IP address, \"[IPv6]\" or \"localhost\"; names are not resolved)")
        })?)
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 * MIB));
        assert_eq!(parse_size("512KiB"), Ok(512 * KIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("16MB"), Ok(16_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1000B"), Ok(1000));
        assert_eq!(parse_size(" 16 MiB "), Ok(16 * MIB));
        assert_eq!(
            parse_size("16XB"),
            Err("invalid size \"16XB\" (expected a number with a unit such as \"16MiB\")"
                .to_string())
        );
        for bad in ["", "MiB", "16mib", "1.5MiB", "-1", "16 MiB x"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999999GiB").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999999").unwrap_err().contains("too large"));
        for n in [1000, KIB, 16 * MIB, GIB, 3 * KIB + 1] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(16 * MIB), "16MiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["5", "s", "1.5s", "5 x", "5min", "-1s", ""] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {bad:?}")), "{e}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(25)), "25s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o777"), Ok(0o777));
        assert!(parse_mode("0800").unwrap_err().contains("octal"));
        assert!(parse_mode("1777").unwrap_err().contains("at most"));
        assert!(parse_mode("").is_err());
        assert_eq!(format_mode(0o660), "0660");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("tcp://127.0.0.1:24224"),
            Ok(ListenAddr::Tcp("127.0.0.1:24224".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp://localhost:1"),
            Ok(ListenAddr::Tcp("127.0.0.1:1".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp://[::1]:24224"),
            Ok(ListenAddr::Tcp("[::1]:24224".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp://0.0.0.0:0"),
            Ok(ListenAddr::Tcp("0.0.0.0:0".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("unix:///run/berth/forward.sock"),
            Ok(ListenAddr::Unix(PathBuf::from("/run/berth/forward.sock")))
        );
        for (bad, why) in [
            ("127.0.0.1:24224", "expected \"tcp://"),
            ("tcp://127.0.0.1", "missing \":PORT\""),
            ("tcp://127.0.0.1:99999", "invalid port"),
            ("tcp://example.com:1", "names are not resolved"),
            ("tcp://[zz]:1", "invalid IPv6"),
            ("unix://run/x.sock", "must be absolute"),
            ("unix:///run/", "directory"),
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("unix:///{}", "x".repeat(200));
        assert!(parse_listen(&long).unwrap_err().contains("longer than"));
    }
}
