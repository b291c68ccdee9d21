//! Memory figures of this process, read from `/proc` (Linux). Used by benchmarks, tests and
//! `/stats` to report resident memory; every function returns `None` where `/proc` is absent.

use std::path::Path;

/// Resident set size of this process, in KiB.
pub fn process_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident KiB of every memory mapping of the file at `path` in this process: the pages of the
/// file this process has actually touched (plus the kernel's read-around), not the page cache.
pub fn mapping_rss_kib(path: &Path) -> Option<u64> {
    let canon = std::fs::canonicalize(path).ok()?;
    let canon = canon.to_str()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_mapping = false;
    let mut total = 0;
    for line in smaps.lines() {
        // A mapping header starts with "start-end"; the attribute lines start with "Name:".
        let first = line.split_whitespace().next().unwrap_or("");
        if !first.ends_with(':') {
            in_mapping = line.trim_end().ends_with(canon);
        } else if in_mapping && first == "Rss:" {
            total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Memory the kernel says can be allocated without swapping (`MemAvailable`), in bytes.
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}
