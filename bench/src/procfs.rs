//! What the benchmark reads from Linux about a process and the machine: resident memory,
//! CPU time, and the facts that make a run comparable with another (cores, kernel, date).
//!
//! Everything comes from `/proc` and `/sys`; nothing here starts a process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

/// A process's resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now, in bytes.
    pub rss_bytes: u64,
    /// `VmHWM`: the most it was ever resident (the high-water mark), in bytes.
    pub peak_rss_bytes: u64,
}

/// Resident memory of process `pid` (use `"self"` for this one).
pub fn memory(pid: &str) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("{path} has no {name} line"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: {name} is not a number of kB: {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

/// Process `pid`'s proportional set size (`Pss` in `/proc/PID/smaps_rollup`), in bytes: its
/// resident pages, each shared page divided among the processes mapping it. Unlike RSS, a page
/// mapped at many addresses counts once: a module's data image, mapped copy-on-write into every
/// instance of it, is one copy in RAM however many instances read it.
pub fn pss_bytes(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let rollup =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    let kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .with_context(|| format!("{path} has no Pss line"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: Pss is not a number of kB"))?;
    Ok(kib * 1024)
}

/// [`pss_bytes`] summed over [`process_tree`]: the physical memory of a server made of several
/// processes, each shared page counted once in all.
pub fn tree_pss_bytes(pid: u32) -> anyhow::Result<u64> {
    let root = pss_bytes(&pid.to_string())?;
    let rest: u64 = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(|child| pss_bytes(&child.to_string()).ok())
        .sum();
    Ok(root + rest)
}

/// How many files process `pid` has open (the entries of `/proc/PID/fd`): sockets, the
/// tasks folder's watch, cache files.
pub fn open_fds(pid: &str) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("could not read {path}"))?;
    Ok(entries.count())
}

/// CPU time (user plus system, all threads) that process `pid` has used so far.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("{path}: field {} is not a tick count", index + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second() as f64,
    ))
}

/// Process `pid` and every process below it (children, their children, ...), from the parent
/// ids in `/proc/*/stat`: a server made of several processes (Swoole's master, manager,
/// workers and task workers) is measured as the whole tree.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // After the name in parentheses: state, then the parent id.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|field| field.parse::<u32>().ok());
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        next += 1;
    }
    tree
}

/// [`cpu_time`] summed over [`process_tree`]. A process that ended meanwhile takes its time
/// with it; the servers measured keep their processes for the whole run.
pub fn tree_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let root = cpu_time(&pid.to_string())?;
    let rest: Duration = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(|child| cpu_time(&child.to_string()).ok())
        .sum();
    Ok(root + rest)
}

/// [`memory`] summed over [`process_tree`]: resident now, and the sum of each process's own
/// peak (an upper bound of the tree's peak, since the processes need not peak together).
/// Pages the processes share (a forked parent's) count once per process, as `VmRSS` does.
pub fn tree_memory(pid: u32) -> anyhow::Result<Memory> {
    let mut total = memory(&pid.to_string())?;
    for child in process_tree(pid).into_iter().skip(1) {
        if let Ok(memory) = memory(&child.to_string()) {
            total.rss_bytes += memory.rss_bytes;
            total.peak_rss_bytes += memory.peak_rss_bytes;
        }
    }
    Ok(total)
}

/// CPU time that the whole machine has spent busy (all cores, all processes, user, system and
/// interrupts; not idle or waiting for I/O), from the first line of `/proc/stat`.
pub fn machine_busy_time() -> anyhow::Result<Duration> {
    let times = machine_times()?;
    Ok(times.busy + times.stolen)
}

/// The whole machine's CPU time since boot, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineTimes {
    /// Run by this machine's processes: user, system and interrupts, on all cores.
    pub busy: Duration,
    /// `steal`: time the hypervisor ran someone else on this virtual machine's cores while
    /// they had work. A host squeezed by its neighbours shows here, not in any process.
    pub stolen: Duration,
}

/// Reads [`MachineTimes`] now.
pub fn machine_times() -> anyhow::Result<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let sum = |fields: &[usize]| -> Duration {
        let total: u64 = fields.iter().filter_map(|&i| ticks.get(i)).sum();
        Duration::from_secs_f64(total as f64 / clock_ticks_per_second() as f64)
    };
    Ok(MachineTimes {
        busy: sum(&[0, 1, 2, 5, 6]),
        stolen: sum(&[7]),
    })
}

/// The unit of `/proc/PID/stat` times (almost always 100 per second).
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Raises this process's open-file limit to its hard limit, so a thousand connections (two
/// sockets each on loopback, one here and one in the server, which inherits the limit) fit.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// Sends SIGTERM to `pid`, the server's clean-shutdown signal.
pub fn terminate(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("process id out of range")?;
    // SAFETY: kill has no memory effects; `pid` is our own child, which we have not reaped.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "could not send SIGTERM to {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The machine a run was made on, written beside its figures.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// When the run started, UTC, ISO 8601.
    pub date: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_total_bytes: u64,
    pub kernel: String,
    /// Caps the sandbox pool (six mappings per task worker).
    pub vm_max_map_count: Option<u64>,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_total_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024);
        Machine {
            date: utc_now(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_total_bytes,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            vm_max_map_count: read("/proc/sys/vm/max_map_count").trim().parse().ok(),
        }
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn reads_this_process() {
        let memory = memory("self").unwrap();
        assert!(memory.rss_bytes > 0 && memory.peak_rss_bytes >= memory.rss_bytes);
        let pss = pss_bytes("self").unwrap();
        assert!(
            pss > 0 && pss <= memory.rss_bytes + (1 << 20),
            "{pss} against {memory:?}"
        );
        cpu_time("self").unwrap();
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        let alone = cpu_time("self").unwrap();
        assert!(tree_cpu_time(me).unwrap() >= alone);
        // At least the directory being read.
        assert!(open_fds("self").unwrap() > 0);
    }
}
