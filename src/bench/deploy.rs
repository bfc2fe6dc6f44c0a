//! `lfgcl bench deploy`: images/s of a baseline and its pruned net in lfgcl (CPU, and GPU when
//! one is used) and in onnxruntime on the exported ONNX files, on the same threads in the same
//! run, for each batch size; each runtime's pruning speed-up is printed next to the MACs ratio.
//! Without a pruned net it is lfgcl's CPU inference throughput against onnxruntime's.

use super::machine::Machine;
use super::timing::{median, time_for_at_least};
use crate::backend::{self, Device, DeviceKind};
use crate::error::{Error, Result};
use crate::interop::onnx::{self, ExportOptions};
use crate::models::Model;
use crate::nn::Mode;
use crate::tensor::Tensor;
use crate::train::checkpoint;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// onnxruntime timing script, run as a subprocess (shipped in the binary so it needs no checkout).
pub const ORT_BENCH_SCRIPT: &str = include_str!("../../scripts/ort_bench.py");

#[derive(Clone)]
pub struct DeployOptions {
    pub batches: Vec<usize>,
    /// Threads for every runtime (lfgcl's rayon pool is expected to have this many).
    pub threads: usize,
    /// Minimum seconds of timed repetitions per measurement (after warm-up), over all rounds.
    pub min_seconds: f64,
    /// Rounds the measurements are interleaved in (see `bench_deploy`).
    pub rounds: usize,
    /// A GPU to time lfgcl on as well.
    pub gpu: Option<Device>,
    /// Where the ONNX files (and the timing script) are written.
    pub work_dir: PathBuf,
    /// Time onnxruntime too (skipped with a note when it cannot be imported).
    pub onnxruntime: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `lfgcl cpu`, `lfgcl cuda`, `onnxruntime cpu`.
    pub runtime: String,
    pub batch: usize,
    pub base_images_per_sec: f64,
    pub pruned_images_per_sec: Option<f64>,
    /// pruned / base images per second.
    pub speedup: Option<f64>,
    /// Images/s of the fastest repetition: on a machine shared with other processes, closer to
    /// what the runtime does when it has its cores to itself.
    pub base_best_images_per_sec: f64,
    pub pruned_best_images_per_sec: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeployReport {
    pub model: String,
    pub machine: Machine,
    pub threads: usize,
    pub rounds: usize,
    pub base_macs: u64,
    pub pruned_macs: Option<u64>,
    /// base MACs / pruned MACs: the speed-up the MACs promise.
    pub macs_ratio: Option<f64>,
    pub rows: Vec<Row>,
    /// Why onnxruntime was not timed, when it was not.
    pub onnxruntime_note: Option<String>,
    pub onnxruntime_version: Option<String>,
}

impl DeployReport {
    /// lfgcl CPU images/s over onnxruntime's for the baseline, per batch.
    pub fn lfgcl_vs_onnxruntime(&self) -> Vec<(usize, f64)> {
        let find = |rt: &str, b: usize| self.rows.iter().find(|r| r.runtime == rt && r.batch == b);
        self.rows
            .iter()
            .filter(|r| r.runtime == "lfgcl cpu")
            .filter_map(|r| {
                find("onnxruntime cpu", r.batch).map(|o| (r.batch, r.base_images_per_sec / o.base_images_per_sec))
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on {}, {} threads, median of {} interleaved rounds",
            self.model, self.machine, self.threads, self.rounds
        );
        match (self.pruned_macs, self.macs_ratio) {
            (Some(p), Some(ratio)) => {
                s += &format!(
                    "; MACs per image {} -> {} (ratio {ratio:.2}x)\n",
                    crate::models::cost::human(self.base_macs),
                    crate::models::cost::human(p)
                );
                s += &format!(
                    "{:<16} {:>5} {:>12} {:>12} {:>9} {:>10} {:>10}\n",
                    "runtime", "batch", "base img/s", "pruned img/s", "speed-up", "best-rep", "MACs ratio"
                );
                for r in &self.rows {
                    let best = r.pruned_best_images_per_sec.map_or(f64::NAN, |p| p / r.base_best_images_per_sec);
                    s += &format!(
                        "{:<16} {:>5} {:>12.1} {:>12.1} {:>8.2}x {:>9.2}x {:>9.2}x\n",
                        r.runtime,
                        r.batch,
                        r.base_images_per_sec,
                        r.pruned_images_per_sec.unwrap_or(f64::NAN),
                        r.speedup.unwrap_or(f64::NAN),
                        best,
                        ratio
                    );
                }
            }
            _ => {
                s += &format!("; {} MACs per image\n", crate::models::cost::human(self.base_macs));
                s += &format!("{:<16} {:>5} {:>12} {:>14}\n", "runtime", "batch", "img/s", "best-rep img/s");
                for r in &self.rows {
                    s += &format!(
                        "{:<16} {:>5} {:>12.1} {:>14.1}\n",
                        r.runtime, r.batch, r.base_images_per_sec, r.base_best_images_per_sec
                    );
                }
            }
        }
        for (b, ratio) in self.lfgcl_vs_onnxruntime() {
            s += &format!("lfgcl cpu / onnxruntime cpu (baseline), batch {b}: {ratio:.2}x images/s\n");
        }
        if let Some(n) = &self.onnxruntime_note {
            s += &format!("onnxruntime not timed: {n}\n");
        }
        s
    }
}

fn lfgcl_samples(model: &mut Model, dev: &Device, batch: usize, min_seconds: f64) -> Result<Vec<f64>> {
    let shape: Vec<usize> = std::iter::once(batch).chain(model.graph.input_shape().iter().copied()).collect();
    let n: usize = shape.iter().product();
    let host: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let x = match dev.kind() {
        DeviceKind::Cpu => Tensor::from_vec(&shape, host)?,
        DeviceKind::Cuda => dev.from_host(&shape, &host)?,
    };
    time_for_at_least(dev, min_seconds, || model.graph.forward(dev, dev.copy(&x)?, Mode::Eval).map(|_| ()))
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct OrtResult {
    /// The ONNX file, as it was passed.
    pub model: String,
    pub batch: usize,
    /// Seconds of every timed run.
    pub times: Vec<f64>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct OrtOutput {
    /// onnxruntime's version.
    pub onnxruntime: String,
    pub results: Vec<OrtResult>,
}

/// How many runs `ort_bench` times per model and batch (after two warm-up runs).
#[derive(Clone, Copy, Debug)]
pub enum OrtTiming {
    /// Runs for at least this many seconds (and 3 runs).
    MinSeconds(f64),
    /// Exactly this many runs.
    Reps(usize),
}

/// Times every ONNX file of `models` at every batch in onnxruntime (CPU, `threads` intra-op
/// threads) through `scripts/ort_bench.py`, written into `work_dir`; `Err(reason)` when
/// onnxruntime cannot be run (not installed, no Python, ...), for the caller to report.
pub fn ort_bench(
    work_dir: &Path,
    models: &[PathBuf],
    threads: usize,
    batches: &[usize],
    timing: OrtTiming,
) -> std::result::Result<OrtOutput, String> {
    let batches: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let mut args = vec!["--threads".to_string(), threads.to_string(), "--batches".into(), batches.join(",")];
    match timing {
        OrtTiming::MinSeconds(s) => args.extend(["--min-seconds".to_string(), s.to_string()]),
        OrtTiming::Reps(n) => args.extend(["--reps".to_string(), n.max(1).to_string()]),
    }
    args.extend(models.iter().map(|m| m.to_string_lossy().into_owned()));
    crate::interop::run_script(crate::interop::python_command(), work_dir, &[("ort_bench.py", ORT_BENCH_SCRIPT)], &args)
}

/// Per-repetition seconds of one (runtime, net, batch), gathered over the rounds.
type Samples = std::collections::BTreeMap<(String, usize, usize), Vec<f64>>;

/// The deployment benchmark of `base` (and `pruned`) checkpoints. Measurements run in `rounds`
/// rounds (every runtime, net and batch once per round, each for `min_seconds / rounds`), so that
/// load from other processes on a shared machine spreads over all of them; the median of all
/// repetitions gives images/s.
pub fn bench_deploy(base_path: &Path, pruned_path: Option<&Path>, opts: &DeployOptions) -> Result<DeployReport> {
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err(Error::Invalid("batch sizes must be positive".into()));
    }
    let cpu = backend::cpu();
    let mut nets = vec![checkpoint::load(base_path, &cpu)?];
    if let Some(p) = pruned_path {
        let p = checkpoint::load(p, &cpu)?;
        if p.graph.input_shape() != nets[0].graph.input_shape() || p.arch.model != nets[0].arch.model {
            return Err(Error::Invalid(format!(
                "the pruned net ({} {:?}) is not a pruned {} {:?}",
                p.arch.model,
                p.graph.input_shape(),
                nets[0].arch.model,
                nets[0].graph.input_shape()
            )));
        }
        nets.push(p);
    }
    let mut gpu_nets = Vec::new();
    let gpu_name = match &opts.gpu {
        Some(gpu) => {
            gpu_nets.push(checkpoint::load(base_path, gpu)?);
            if let Some(p) = pruned_path {
                gpu_nets.push(checkpoint::load(p, gpu)?);
            }
            format!("lfgcl {}", if gpu.kind() == DeviceKind::Cuda { "cuda" } else { "gpu" })
        }
        None => String::new(),
    };
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| Error::io(&opts.work_dir, e))?;
    let onnx_files: Vec<PathBuf> =
        ["base.onnx", "pruned.onnx"].iter().take(nets.len()).map(|f| opts.work_dir.join(f)).collect();
    let (mut note, mut version) = (None, None);
    let mut ort_enabled = opts.onnxruntime;
    if ort_enabled {
        for (net, file) in nets.iter().zip(&onnx_files) {
            onnx::export(net, file, &ExportOptions::default())?;
        }
    } else {
        note = Some("disabled".into());
    }
    let rounds = opts.rounds.max(1);
    let per_round = opts.min_seconds / rounds as f64;
    let mut samples = Samples::new();
    for _ in 0..rounds {
        for &b in &opts.batches {
            for (k, net) in nets.iter_mut().enumerate() {
                let t = lfgcl_samples(net, &cpu, b, per_round)?;
                samples.entry(("lfgcl cpu".into(), k, b)).or_default().extend(t);
            }
            if let Some(gpu) = &opts.gpu {
                for (k, net) in gpu_nets.iter_mut().enumerate() {
                    let t = lfgcl_samples(net, gpu, b, per_round)?;
                    samples.entry((gpu_name.clone(), k, b)).or_default().extend(t);
                }
            }
        }
        if ort_enabled {
            match ort_bench(&opts.work_dir, &onnx_files, opts.threads, &opts.batches, OrtTiming::MinSeconds(per_round))
            {
                Ok(out) => {
                    version = Some(out.onnxruntime.clone());
                    for r in out.results {
                        let k = onnx_files.iter().position(|f| Path::new(&r.model) == f).ok_or_else(|| {
                            Error::Invalid(format!("ort_bench.py timed an unknown model {}", r.model))
                        })?;
                        samples.entry(("onnxruntime cpu".into(), k, r.batch)).or_default().extend(r.times);
                    }
                }
                Err(reason) => {
                    note = Some(reason);
                    ort_enabled = false;
                }
            }
        }
    }
    let mut runtimes = vec!["lfgcl cpu".to_string()];
    if opts.gpu.is_some() {
        runtimes.push(gpu_name);
    }
    if ort_enabled {
        runtimes.push("onnxruntime cpu".into());
    }
    let mut rows = Vec::new();
    for rt in &runtimes {
        for &b in &opts.batches {
            let ips = |k: usize| -> Option<(f64, f64)> {
                samples.get(&(rt.clone(), k, b)).map(|t| {
                    let best = t.iter().copied().fold(f64::INFINITY, f64::min);
                    (b as f64 / median(t.clone()), b as f64 / best)
                })
            };
            let (bi, bbest) = ips(0).ok_or_else(|| Error::Invalid(format!("{rt} gave no timing for batch {b}")))?;
            let pruned = if nets.len() > 1 { ips(1) } else { None };
            let pi = pruned.map(|p| p.0);
            rows.push(Row {
                runtime: rt.clone(),
                batch: b,
                base_images_per_sec: bi,
                pruned_images_per_sec: pi,
                speedup: pi.map(|p| p / bi),
                base_best_images_per_sec: bbest,
                pruned_best_images_per_sec: pruned.map(|p| p.1),
            });
        }
    }
    let base_macs = nets[0].cost().macs;
    let pruned_macs = nets.get(1).map(|p| p.cost().macs);
    Ok(DeployReport {
        model: nets[0].arch.model.clone(),
        machine: Machine::this(),
        threads: opts.threads,
        rounds,
        base_macs,
        pruned_macs,
        macs_ratio: pruned_macs.map(|p| base_macs as f64 / p.max(1) as f64),
        rows,
        onnxruntime_note: note,
        onnxruntime_version: version,
    })
}
