//! The timing helpers every benchmark uses: wall-clock or device-timed repetitions after a
//! warm-up, summarised as median / min / max, and the SIGINT/SIGTERM check between two of them.

use crate::backend::Device;
use crate::error::Result;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Median seconds per repetition.
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub reps: usize,
}

/// Runs `f` once to warm up, then `reps` timed times (wall clock).
pub fn time_it(reps: usize, f: impl FnMut() -> Result<()>) -> Result<Timing> {
    Ok(summarise(time_samples(1, reps, f)?))
}

/// Seconds of each of `reps` (at least one) timed calls of `f` (wall clock), after `warmup` calls.
pub fn time_samples(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t: Vec<f64> = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        stop_if_interrupted()?;
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(t)
}

/// Like `time_it`, timed by the device (`Backend::time_ms`: CUDA events on a GPU).
pub fn time_on(dev: &Device, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t: Vec<f64> = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        stop_if_interrupted()?;
        t.push(dev.time_ms(&mut f)? / 1e3);
    }
    Ok(summarise(t))
}

/// A benchmark stops between two timed calls on SIGINT/SIGTERM (its temporary files are then
/// removed by the caller, as after a failure).
pub(crate) fn stop_if_interrupted() -> Result<()> {
    crate::interrupt::check(|| "the benchmark was stopped before it finished; nothing was measured".into())
}

/// Median, min and max of timed samples (at least one).
pub(crate) fn summarise(mut t: Vec<f64>) -> Timing {
    t.sort_by(|a, b| a.total_cmp(b));
    Timing { median_s: t[t.len() / 2], min_s: t[0], max_s: t[t.len() - 1], reps: t.len() }
}

/// Seconds per call of `f` after two warm-up calls, repeated for at least `min_seconds` (and 3
/// times), timed by the device (CUDA events on a GPU).
pub fn time_for_at_least(dev: &Device, min_seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    f()?;
    let start = Instant::now();
    let mut t = Vec::new();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < min_seconds && t.len() < 10_000) {
        stop_if_interrupted()?;
        t.push(dev.time_ms(&mut f)? / 1e3);
    }
    Ok(t)
}

/// The median sample (NaN when there is none).
pub fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.total_cmp(b));
    t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
}
