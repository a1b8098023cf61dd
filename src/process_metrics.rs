//! The process's own metrics, read from `/proc/self` at each scrape (prometheus-client has
//! no process collector): CPU seconds, resident memory, open file descriptors, start time —
//! the usual `process_*` set, here `berth_process_*`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub struct Process;

/// Clock ticks per second and the page size, for `/proc/self/stat` and `statm`.
fn ticks_and_page() -> (f64, f64) {
    // SAFETY: sysconf reads a configuration value; no memory is passed.
    let (t, p) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    (if t > 0 { t as f64 } else { 100.0 }, if p > 0 { p as f64 } else { 4096.0 })
}

/// (user + system CPU seconds, start time in seconds since boot) from `/proc/self/stat`'s
/// fields 14, 15 and 22 (after the `(comm)`, which may hold spaces). Pure.
pub fn parse_stat(stat: &str, ticks: f64) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start: f64 = f.get(19)?.parse().ok()?;
    Some(((utime + stime) / ticks, start / ticks))
}

fn boot_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let (ticks, page) = ticks_and_page();
        if let Some((cpu, start)) =
            std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s, ticks))
        {
            let c = ConstCounter::new(cpu);
            c.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the process",
                None,
                c.metric_type(),
            )?)?;
            if let Some(boot) = boot_time() {
                let g = ConstGauge::new(boot + start);
                g.encode(e.encode_descriptor(
                    "process_start_time_seconds",
                    "When the process started, in seconds since the Unix epoch",
                    None,
                    g.metric_type(),
                )?)?;
            }
        }
        if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        {
            let g = ConstGauge::new(rss * page);
            g.encode(e.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(fds.count() as f64);
            g.encode(e.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the process",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (berth (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 150 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat, 100.0), Some((4.0, 1234.56)));
        assert_eq!(parse_stat("garbage", 100.0), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own, ticks_and_page().0).is_some(), "{own}");
    }
}
