//! The standard process metrics every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), with
//! the names and meanings dashboards and alerts already expect.
//!
//! Read from Linux's /proc at scrape time, never per request: four small
//! files and one directory listing, each a read of kernel memory. Read by
//! hand rather than through the `metrics-process` crate, which on Linux
//! brings the `procfs` crate and its dependencies for the same six numbers
//! and, being a recorder of gauges, still needs a call on every scrape. On
//! other systems the metrics are left out, as the Go and Python clients do.

use super::metrics::sample;

/// What /proc said; a value that could not be read is left out of /metrics
/// rather than reported as 0.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// Appends the process metrics, each with its HELP and TYPE.
pub fn render(out: &mut String) {
    let p = read();
    let metrics = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in metrics {
        if let Some(v) = value {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            sample(out, name, &[], v);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn read() -> Process {
    Process::default()
}

#[cfg(target_os = "linux")]
fn read() -> Process {
    let file = |path: &str| std::fs::read_to_string(path).ok();
    let mut p = Process::default();
    if let Some(stat) = file("/proc/self/stat") {
        let boot = file("/proc/stat").as_deref().and_then(boot_time);
        (p.cpu_seconds, p.start_time_seconds) = from_stat(&stat, boot);
    }
    if let Some(status) = file("/proc/self/status") {
        p.resident_bytes = status_kib(&status, "VmRSS:").map(|k| k * 1024.0);
        p.virtual_bytes = status_kib(&status, "VmSize:").map(|k| k * 1024.0);
    }
    // The listing's own descriptor is among the entries: not counted.
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as f64);
    p.max_fds = file("/proc/self/limits").as_deref().and_then(soft_fd_limit);
    p
}

/// The process's CPU time so far (user + system, all threads), in seconds;
/// one read of /proc/self/stat. `None` where there is no /proc.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        from_stat(&stat, None).0
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The kernel reports times in USER_HZ, fixed at 100 for user space on the
/// architectures Linux runs on (what `sysconf(_SC_CLK_TCK)` answers; the
/// Prometheus project's procfs library makes the same assumption).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) and start time from /proc/self/stat, given
/// the boot time. The command name, field 2, is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted after the last `)`.
fn from_stat(stat: &str, boot: Option<f64>) -> (Option<f64>, Option<f64>) {
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (None, None);
    };
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) / USER_HZ),
        _ => None,
    };
    let start = field(22)
        .zip(boot)
        .map(|(ticks, boot)| boot + ticks / USER_HZ);
    (cpu, start)
}

/// The `btime` line of /proc/stat: boot time in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Name:   1234 kB` line of /proc/self/status, in KiB.
fn status_kib(status: &str, name: &str) -> Option<f64> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit on the `Max open files` line of /proc/self/limits; none
/// when it is `unlimited`.
fn soft_fd_limit(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may
        // name itself.
        let stat = "4242 (gate way) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 8 0 12345 123456789 2048 18446744073709551615";
        let (cpu, start) = from_stat(stat, Some(1_700_000_000.0));
        assert_eq!(cpu, Some(3.0));
        assert!(
            (start.unwrap() - 1_700_000_123.45).abs() < 1e-6,
            "{start:?}"
        );
        assert_eq!(from_stat("garbage", Some(1.0)), (None, None));
        assert_eq!(from_stat(stat, None).1, None);
    }

    #[test]
    fn status_limits_and_boot_time_are_read_by_name() {
        let status = "Name:\tgateway\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63435                63435                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_fd_limit(limits), Some(1024.0));
        assert_eq!(
            soft_fd_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let p = read();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(p.resident_bytes.is_some_and(|r| r > 1_000_000.0));
        assert!(p.virtual_bytes >= p.resident_bytes);
        let (open, max) = (p.open_fds.unwrap(), p.max_fds.unwrap());
        assert!(open >= 3.0 && open <= max, "{open} of {max}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
