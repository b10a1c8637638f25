//! The standard `process_*` metrics every Prometheus client library exports
//! (process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
//! process_open_fds, process_max_fds, process_start_time_seconds), read from `/proc/self` at
//! each scrape. Elsewhere than Linux, or when `/proc` is not mounted, they are left out.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The collector registered on the root of the metrics registry (no `taskhost_` prefix).
#[derive(Debug)]
pub struct ProcessMetrics;

/// One reading of `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessReading {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessReading {
    /// Reads this process's numbers; `None` without a readable `/proc/self/stat`.
    pub fn now() -> Option<ProcessReading> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields = stat_fields(&stat)?;
        // SAFETY: sysconf reads a constant of the system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
        let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
        // Fields counted from 1 in proc(5); `fields` starts at field 3 (state).
        let utime = field(14 - 3)?;
        let stime = field(15 - 3)?;
        let start_ticks = field(22 - 3)?;
        let vsize = field(23 - 3)?;
        let rss_pages = field(24 - 3)?;
        let boot_time = boot_time_seconds().unwrap_or_else(|| {
            // Without /proc/stat, the process's age from now.
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |now| now.as_secs_f64())
        });
        Some(ProcessReading {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident_bytes: (rss_pages as i64).saturating_mul(page),
            virtual_bytes: vsize as i64,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as i64),
            max_fds: max_fds(),
            start_time_seconds: boot_time + start_ticks as f64 / ticks,
        })
    }
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses, so the split is at the last `)`), starting with field 3, `state`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// When the machine booted, seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// The soft limit on open files.
fn max_fds() -> i64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX)
    } else {
        -1
    }
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(reading) = ProcessReading::now() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(reading.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, i64); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                reading.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                reading.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                reading.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let start = ConstGauge::new(reading.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_name_may_hold_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 2 3";
        assert_eq!(stat_fields(stat).unwrap(), ["S", "1", "2", "3"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_running_now_with_memory_and_files() {
        let reading = ProcessReading::now().expect("/proc/self/stat on Linux");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(reading.start_time_seconds <= now + 1.0, "{reading:?}");
        assert!(reading.start_time_seconds > now - 86_400.0, "{reading:?}");
        assert!(reading.resident_bytes > 1 << 20, "{reading:?}");
        assert!(
            reading.virtual_bytes >= reading.resident_bytes,
            "{reading:?}"
        );
        assert!(
            reading.open_fds >= 3 && reading.open_fds <= reading.max_fds,
            "{reading:?}"
        );
        assert!(reading.cpu_seconds >= 0.0);
    }
}
