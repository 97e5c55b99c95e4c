//! The environment a run reports: CPU, active int8 ISA, threads, versions, start time.

use serde::{Deserialize, Serialize};

/// Where and with what a run ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `model name` from `/proc/cpuinfo` (or `unknown`).
    pub cpu: String,
    /// Logical CPUs the OS reports.
    pub cpus: usize,
    /// The int8 kernel ISA `qat_kernels::isa::active()` picks (after `QAT_KERNELS_ISA`).
    pub isa: String,
    /// Threads of the run (candle's rayon pool and the int8 runtime).
    pub threads: usize,
    pub os: String,
    pub arch: String,
    /// `mobilenet-v2` crate version.
    pub crate_version: String,
    /// The candle version the workspace pins.
    pub candle_version: String,
    /// Whether this binary was built with optimizations.
    pub optimized: bool,
}

/// The workspace pins candle with `=0.11.1`.
const CANDLE_VERSION: &str = "0.11.1";

/// `model name` from `/proc/cpuinfo`, or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Environment {
    /// The current process's environment.
    pub fn detect(threads: usize) -> Self {
        Environment {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            isa: qat_kernels::isa::active().to_string(),
            threads,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            candle_version: CANDLE_VERSION.into(),
            optimized: !cfg!(debug_assertions),
        }
    }
}

/// CPU time (user + system) this process has used, in seconds, from `/proc/self/stat`; `None`
/// where that file does not exist. Unlike wall time it does not grow when other processes
/// share the cores.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust supports.
    Some(ticks / 100.0)
}

/// A UNIX time in seconds as UTC `(year, month, day, hour, minute, second)`.
pub fn utc_civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the UNIX epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH-MM-SSZ` (file-name safe) for a UNIX time in seconds.
pub fn utc_stamp(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}-{mm:02}-{ss:02}Z")
}

/// Turn off the purging of freed memory in mimalloc (the global allocator of our binaries:
/// call it first thing in `main`). Every training step frees and reallocates its activations
/// (≈ 400 MB at batch 32, over 1 GB at batch 128); with purging on, the kernel faults and
/// re-zeroes those pages each step (`qat-bench train-step --batch 128`, 1 thread, 5 steps:
/// 47 585 page faults and +15% CPU per step, against 879 without). The PyTorch reference in
/// MEASURED.md ran with jemalloc purging off, the same steady state. Harmless when mimalloc is
/// linked but not the global allocator.
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49, default
    // features, which do not export the option constants); -1 means never purge.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // Names the crate so that its C library is linked into every binary that calls this.
    let _ = std::mem::size_of::<mimalloc::MiMalloc>();
    // SAFETY: `mi_option_set` is exported by the mimalloc library this crate links (the
    // `mimalloc` dependency); it only stores the value in mimalloc's option table.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// [`utc_stamp`] of now.
pub fn now_stamp() -> String {
    utc_stamp(unix_now())
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "1970-01-01T00-00-00Z");
        // `date -u -d @951782400` (a leap day) and `@1795734245`.
        assert_eq!(utc_stamp(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(utc_stamp(1_795_734_245), "2026-11-26T23-04-05Z");
    }
}
