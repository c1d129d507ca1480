//! The standard Prometheus process metrics (`process_cpu_seconds_total`, …), read from
//! `/proc/self` at each scrape.
//!
//! Written here rather than taken from a crate: five values from three small files and one
//! system call, where the crates that render them (`prometheus`'s `process` feature, `procfs`)
//! bring a registry or a parser of all of /proc.

use std::fmt::Write;

/// Appends the process metrics to `s`; a value that cannot be read is left out, not invented.
pub fn render(s: &mut String) {
    // SAFETY: sysconf takes no pointers.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // The fields after the command, which is in parentheses and may hold spaces: state is
    // field 3 of stat(5), so field n is at index n - 3.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|st| st.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let mut gauge = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            let _ = writeln!(s, "{name} {v}");
        }
    };
    if ticks > 0 {
        let cpu = field(14)
            .zip(field(15))
            .map(|(u, k)| (u + k) as f64 / ticks as f64);
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
        let start = field(22)
            .zip(boot_time())
            .map(|(t, boot)| boot as f64 + t as f64 / ticks as f64);
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|m| m.split_whitespace().nth(1)?.parse::<u64>().ok());
    gauge(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss.filter(|_| page > 0).map(|p| (p * page as u64) as f64),
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    gauge(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds,
    );
    // SAFETY: all-zero is a valid rlimit, which getrlimit fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let max = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur as f64);
    gauge(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max,
    );
}

/// The system's boot time in Unix seconds (`btime` in /proc/stat), which process start times
/// in /proc are counted from.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `name` in `text`.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn the_values_are_this_process_s() {
        let mut s = String::new();
        render(&mut s);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value(&s, "process_start_time_seconds");
        // Started within the last hour, not in the future (btime and ticks are coarse: 1 s).
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(value(&s, "process_resident_memory_bytes") > 1e6);
        let open = value(&s, "process_open_fds");
        assert!(open >= 3.0 && open <= value(&s, "process_max_fds"), "{s}");
        assert!(value(&s, "process_cpu_seconds_total") >= 0.0);
        assert_eq!(s.matches("# TYPE ").count(), 5, "{s}");
    }
}
