//! Timing: warm up, then the best of several timed batches (the machine is shared; the
//! minimum is the least disturbed run).

use std::time::{Duration, Instant};

/// Seconds per call of `f`: the minimum over `reps` batches, each at least `min_batch` long.
pub fn best_seconds(mut f: impl FnMut(), reps: usize, min_batch: Duration) -> f64 {
    f();
    let mut per_batch = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        if t.elapsed() >= min_batch / 4 || per_batch >= 1 << 20 {
            break;
        }
        per_batch *= 2;
    }
    let calls = (per_batch * 4).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    best
}

/// CPU seconds this process has used (all threads), from `CLOCK_PROCESS_CPUTIME_ID`; NaN if
/// the clock is unavailable. On a shared machine, time slices lost to other processes inflate
/// wall time but not this.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
