//! CPU throughput measurements for `lfgcl bench cpu` and the criterion benches: the machine's
//! SGEMM peak measured in the same run, then inference and training-step images/s of each model
//! and the GFLOP/s they achieve as a fraction of that peak, side by side with onnxruntime
//! (inference, on the ONNX export of the same weights) and PyTorch eager (inference and training
//! step, same weights) on the same threads, in the same run.

use super::deploy::OrtTiming;
use super::machine::Machine;
use super::timing::{summarise, time_on, time_samples, Timing};
use crate::backend::{self, cpu::gemm::sgemm, Device};
use crate::error::{Error, Result};
use crate::models::{Arch, Model};
use crate::nn::Mode;
use crate::tensor::Tensor;
use crate::train::Sgd;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct GemmPoint {
    pub size: usize,
    pub gflops: f64,
    pub timing: Timing,
}

/// The square SGEMM sizes `sgemm_peak` times.
pub const SGEMM_SIZES: [usize; 4] = [256, 512, 1024, 2048];

/// Seconds of `reps` square SGEMMs of `size` on every thread, after one warm-up.
pub fn sgemm_samples(size: usize, reps: usize) -> Result<Vec<f64>> {
    let threads = rayon::current_num_threads();
    let a: Vec<f32> = (0..size * size).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..size * size).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; size * size];
    time_samples(1, reps, || {
        sgemm(size, size, size, &a, false, &b, false, &mut c, false, threads);
        Ok(())
    })
}

fn gemm_point(size: usize, samples: Vec<f64>) -> GemmPoint {
    let timing = summarise(samples);
    GemmPoint { size, gflops: 2.0 * (size as f64).powi(3) / timing.median_s / 1e9, timing }
}

/// Square SGEMMs of growing size on every thread; the best is the peak the model runs are
/// compared with.
pub fn sgemm_peak(reps: usize) -> Result<Vec<GemmPoint>> {
    SGEMM_SIZES.iter().map(|&size| Ok(gemm_point(size, sgemm_samples(size, reps)?))).collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub batch: usize,
    pub images_per_sec: f64,
    /// Useful GFLOP/s: 2 x MACs per image (x3 for a training step: forward, backward-data,
    /// backward-weight) times images per second.
    pub gflops: f64,
    pub fraction_of_sgemm_peak: f64,
    pub timing: Timing,
}

/// `(channels, side)` of the input `model` is benchmarked on: its family's usual input (32x32;
/// 28x28 grey for the small CNN; 224x224 for the torchvision families) unless `side` is given.
pub(super) fn input_for(model: &str, side: Option<usize>) -> Result<(usize, usize)> {
    let (c, usual) = crate::models::family(model)?.default_input();
    Ok((c, side.unwrap_or(usual)))
}

/// The net `model_bench` and the layer profiles time: a family with seeded random weights at its
/// usual input (or `side`), or a checkpoint as saved (a pruned net's own widths and input).
#[derive(Clone, Copy, Debug)]
pub enum BenchNet<'a> {
    Family { model: &'a str, side: Option<usize> },
    Checkpoint(&'a std::path::Path),
}

impl BenchNet<'_> {
    /// The model on `dev`, and a fixed input batch of `batch` images for it.
    pub(super) fn build(&self, dev: &Device, batch: usize) -> Result<(Model, Tensor)> {
        let m = match *self {
            BenchNet::Family { model, side } => {
                let (c, size) = input_for(model, side)?;
                Model::new(Arch::new(model, c, size, 10)?, dev, 0)?
            }
            BenchNet::Checkpoint(path) => crate::train::checkpoint::load(path, dev)?,
        };
        let ([h, w], c) = (m.arch.input_hw(), m.arch.in_channels);
        let host: Vec<f32> = (0..batch * c * h * w).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
        let x = dev.from_host(&[batch, c, h, w], &host)?;
        Ok((m, x))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelBench {
    pub device: String,
    pub machine: Machine,
    pub model: String,
    pub macs_per_image: u64,
    pub what: String,
    pub throughput: Throughput,
}

/// Inference (`train == false`) or one full training step (forward, cross-entropy, backward,
/// SGD update) of `net` (`BenchNet`) on fixed data at its input size, on any device, after
/// warm-up.
pub fn model_bench(
    dev: &Device,
    net: BenchNet,
    batch: usize,
    train: bool,
    warmup: usize,
    reps: usize,
) -> Result<ModelBench> {
    let (mut m, x) = net.build(dev, batch)?;
    let macs = m.cost().macs;
    let labels = bench_labels(batch, m.arch.num_classes);
    let mut opt = Sgd::new(0.9, 5e-4, false)?;
    let timing = if train {
        time_on(dev, warmup, reps, || {
            let trace = m.graph.forward_train(dev, dev.copy(&x)?)?;
            let ce = dev.softmax_cross_entropy(trace.output(), &labels)?;
            m.graph.zero_grad();
            m.graph.backward(dev, trace, ce.dlogits)?;
            opt.step(dev, &mut m.graph, 0.01)
        })?
    } else {
        time_on(dev, warmup, reps, || m.graph.forward(dev, dev.copy(&x)?, Mode::Eval).map(|_| ()))?
    };
    let ips = batch as f64 / timing.median_s;
    let flops = if train { 6.0 } else { 2.0 } * macs as f64;
    Ok(ModelBench {
        device: dev.describe(),
        machine: Machine::this(),
        model: m.arch.model.clone(),
        macs_per_image: macs,
        what: if train { "train step".into() } else { "inference".into() },
        throughput: Throughput {
            batch,
            images_per_sec: ips,
            gflops: ips * flops / 1e9,
            fraction_of_sgemm_peak: f64::NAN,
            timing,
        },
    })
}

/// Labels of a timed training step: 0, 1, ... cycling through the net's classes.
pub(super) fn bench_labels(batch: usize, classes: usize) -> Vec<u32> {
    (0..batch).map(|i| (i % classes.max(1)) as u32).collect()
}

/// PyTorch timing script of `bench cpu` and the module file it builds the models with, run as a
/// subprocess (shipped in the binary so it needs no checkout).
pub const TORCH_CPU_BENCH_SCRIPT: &str = include_str!("../../scripts/torch_cpu_bench.py");
pub const LFGCL_TORCH_SCRIPT: &str = include_str!("../../scripts/lfgcl_torch.py");

/// What `bench cpu` measures, and how.
#[derive(Clone, Debug)]
pub struct CpuBenchOptions {
    pub models: Vec<String>,
    /// Side of the input images (None: each family's usual input).
    pub image_size: Option<usize>,
    /// Inference batch sizes.
    pub batches: Vec<usize>,
    /// Batch of the training step.
    pub train_batch: usize,
    /// Timed repetitions of every measurement (SGEMMs included), spread over the rounds (at
    /// least one per round).
    pub reps: usize,
    /// Rounds the measurements are interleaved in: every runtime, model and batch once per
    /// round, so that load from other processes falls on all of them alike.
    pub rounds: usize,
    /// Where the checkpoints, ONNX files and timing scripts are written.
    pub work_dir: PathBuf,
    /// Time onnxruntime (skipped with a note when it cannot be imported).
    pub onnxruntime: bool,
    /// Time PyTorch eager (skipped with a note when it cannot be imported).
    pub torch: bool,
    /// Progress on stderr.
    pub verbose: bool,
}

/// Another runtime's images/s on the same measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    /// From the median repetition.
    pub images_per_sec: f64,
    /// From the fastest repetition.
    pub best_images_per_sec: f64,
    pub timing: Timing,
}

impl Rate {
    fn from_samples(batch: usize, t: Vec<f64>) -> Rate {
        let timing = summarise(t);
        Rate {
            images_per_sec: batch as f64 / timing.median_s,
            best_images_per_sec: batch as f64 / timing.min_s,
            timing,
        }
    }
}

/// One measurement (a model's inference at one batch, or its training step) in every runtime.
#[derive(Clone, Debug, Serialize)]
pub struct CpuRow {
    pub model: String,
    /// `inference` or `train step`.
    pub what: String,
    pub batch: usize,
    pub lfgcl: Throughput,
    /// onnxruntime on the ONNX export of the same weights (inference only).
    pub onnxruntime: Option<Rate>,
    /// PyTorch eager on the same weights.
    pub torch: Option<Rate>,
    /// lfgcl images/s over onnxruntime's (medians, same threads, same run).
    pub lfgcl_vs_onnxruntime: Option<f64>,
    /// lfgcl images/s over PyTorch's (medians, same threads, same run).
    pub lfgcl_vs_torch: Option<f64>,
    /// The same ratios from each runtime's fastest repetition: on a machine shared with other
    /// processes, closer to what the runtimes do with their cores to themselves.
    pub lfgcl_vs_onnxruntime_best: Option<f64>,
    pub lfgcl_vs_torch_best: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuModel {
    pub model: String,
    pub macs_per_image: u64,
    pub params: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuBenchReport {
    pub device: String,
    pub machine: Machine,
    pub threads: usize,
    pub rounds: usize,
    /// Timed repetitions per measurement and round (after one warm-up run; two for onnxruntime).
    pub reps_per_round: usize,
    pub sgemm: Vec<GemmPoint>,
    pub sgemm_peak_gflops: f64,
    pub models: Vec<CpuModel>,
    pub rows: Vec<CpuRow>,
    pub onnxruntime_version: Option<String>,
    /// Why onnxruntime was not timed, when it was not.
    pub onnxruntime_note: Option<String>,
    pub torch_version: Option<String>,
    /// Why PyTorch was not timed, when it was not.
    pub torch_note: Option<String>,
}

impl CpuBenchReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on {}, median of {} interleaved rounds x {} reps per measurement\n",
            self.device, self.machine, self.rounds, self.reps_per_round
        );
        for g in &self.sgemm {
            s += &format!("  sgemm {0}x{0}x{0}: {1:>7.1} GFLOP/s\n", g.size, g.gflops);
        }
        s += &format!("  sgemm peak (best of the above): {:.1} GFLOP/s\n", self.sgemm_peak_gflops);
        if let Some(v) = &self.onnxruntime_version {
            s += &format!("  onnxruntime {v}: {} intra-op threads, on lfgcl's ONNX export (BN folded)\n", self.threads);
        }
        if let Some(v) = &self.torch_version {
            s += &format!("  PyTorch {v} eager: torch.set_num_threads({})\n", self.threads);
        }
        s += &format!(
            "{:<10} {:<10} {:>5} {:>11} {:>8} {:>7} {:>11} {:>9} {:>11} {:>11}\n",
            "model",
            "what",
            "batch",
            "lfgcl img/s",
            "GFLOP/s",
            "% peak",
            "ort img/s",
            "lfgcl/ort",
            "torch img/s",
            "lfgcl/torch"
        );
        let num = |v: Option<f64>, suffix: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{suffix}"));
        let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
        for r in &self.rows {
            s += &format!(
                "{:<10} {:<10} {:>5} {:>11.1} {:>8.1} {:>6.1}% {:>11} {:>9} {:>11} {:>11}\n",
                r.model,
                r.what,
                r.batch,
                r.lfgcl.images_per_sec,
                r.lfgcl.gflops,
                100.0 * r.lfgcl.fraction_of_sgemm_peak,
                num(r.onnxruntime.as_ref().map(|o| o.images_per_sec), ""),
                ratio(r.lfgcl_vs_onnxruntime),
                num(r.torch.as_ref().map(|t| t.images_per_sec), ""),
                ratio(r.lfgcl_vs_torch),
            );
        }
        if let Some(n) = &self.onnxruntime_note {
            s += &format!("onnxruntime not timed: {n}\n");
        }
        if let Some(n) = &self.torch_note {
            s += &format!("PyTorch not timed: {n}\n");
        }
        s
    }
}

#[derive(serde::Deserialize)]
struct TorchResult {
    model: String,
    what: String,
    batch: usize,
    times: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct TorchOutput {
    torch: String,
    results: Vec<TorchResult>,
}

/// A model of `bench cpu`, with its checkpoint and ONNX export.
struct CpuNet {
    model: Model,
    opt: Sgd,
    ckpt: PathBuf,
    onnx: PathBuf,
}

/// Which runtime a sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Runtime {
    Lfgcl,
    Onnxruntime,
    Torch,
}

/// Samples of one (runtime, net, training?, batch), gathered over the rounds.
type CpuSamples = std::collections::BTreeMap<(Runtime, usize, bool, usize), Vec<f64>>;

/// `lfgcl bench cpu`: the SGEMM peak, then for every model (seeded random weights, saved as a
/// checkpoint and exported to ONNX) inference at every batch and one training step (forward,
/// cross-entropy, backward, SGD with momentum) in lfgcl, onnxruntime (inference) and PyTorch
/// eager, on the same threads, in interleaved rounds. A runtime that cannot be run (no Python,
/// package not installed) is reported in a note and left out; it never fails the benchmark.
pub fn cpu_bench(opts: &CpuBenchOptions) -> Result<CpuBenchReport> {
    use crate::interop::onnx::{self, ExportOptions};
    if opts.models.is_empty() {
        return Err(Error::Invalid("bench cpu needs at least one model".into()));
    }
    if opts.batches.is_empty() || opts.batches.contains(&0) || opts.train_batch == 0 {
        return Err(Error::Invalid("batch sizes must be positive".into()));
    }
    let dev: Device = backend::cpu();
    let threads = rayon::current_num_threads();
    let rounds = opts.rounds.max(1);
    let reps = opts.reps.max(1).div_ceil(rounds);
    let dir = &opts.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut nets = Vec::new();
    for (k, name) in opts.models.iter().enumerate() {
        let (c, size) = input_for(name, opts.image_size)?;
        let model = Model::new(Arch::new(name, c, size, 10)?, &dev, 0)?;
        let stem = format!("{k}-{}", model.arch.model);
        let (ckpt, onnx_file) = (dir.join(format!("{stem}.safetensors")), dir.join(format!("{stem}.onnx")));
        crate::train::checkpoint::save(&model, &ckpt, &serde_json::Value::Null)?;
        if opts.onnxruntime {
            onnx::export(&model, &onnx_file, &ExportOptions::default())?;
        }
        nets.push(CpuNet { model, opt: Sgd::new(0.9, 5e-4, false)?, ckpt, onnx: onnx_file });
    }

    let (mut ort_note, mut ort_version) = ((!opts.onnxruntime).then(|| "disabled".to_string()), None);
    let (mut torch_note, mut torch_version) = ((!opts.torch).then(|| "disabled".to_string()), None);
    let mut samples = CpuSamples::new();
    // The SGEMM peak is measured in every round too: a machine whose speed changes during the
    // run (shared cores, frequency) changes it alike for the peak and the models.
    let mut gemm: Vec<Vec<f64>> = vec![Vec::new(); SGEMM_SIZES.len()];
    for round in 0..rounds {
        if opts.verbose {
            eprintln!("round {}/{rounds}: sgemm peak ...", round + 1);
        }
        for (t, &size) in gemm.iter_mut().zip(&SGEMM_SIZES) {
            t.extend(sgemm_samples(size, reps)?);
        }
        for (k, net) in nets.iter_mut().enumerate() {
            let name = &net.model.arch.model;
            let (c, size) = (net.model.arch.in_channels, net.model.arch.input_size);
            for &b in &opts.batches {
                if opts.verbose {
                    eprintln!("round {}/{rounds}: lfgcl {name} inference, batch {b} ...", round + 1);
                }
                let host: Vec<f32> = (0..b * c * size * size).map(|i| ((i % 255) as f32 / 255.0) - 0.5).collect();
                let t = time_samples(1, reps, || {
                    let x = Tensor::from_vec(&[b, c, size, size], host.clone())?;
                    net.model.graph.forward(&dev, x, Mode::Eval).map(|_| ())
                })?;
                samples.entry((Runtime::Lfgcl, k, false, b)).or_default().extend(t);
            }
            let b = opts.train_batch;
            if opts.verbose {
                eprintln!("round {}/{rounds}: lfgcl {name} training step, batch {b} ...", round + 1);
            }
            let host: Vec<f32> = (0..b * c * size * size).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
            let labels: Vec<u32> = (0..b).map(|i| (i % 10) as u32).collect();
            let (graph, opt) = (&mut net.model.graph, &mut net.opt);
            let t = time_samples(1, reps, || {
                let x = Tensor::from_vec(&[b, c, size, size], host.clone())?;
                let trace = graph.forward_train(&dev, x)?;
                let ce = dev.softmax_cross_entropy(trace.output(), &labels)?;
                graph.zero_grad();
                graph.backward(&dev, trace, ce.dlogits)?;
                opt.step(&dev, graph, 0.01)
            })?;
            samples.entry((Runtime::Lfgcl, k, true, b)).or_default().extend(t);
        }
        if ort_note.is_none() {
            if opts.verbose {
                eprintln!("round {}/{rounds}: onnxruntime ...", round + 1);
            }
            let files: Vec<PathBuf> = nets.iter().map(|n| n.onnx.clone()).collect();
            match super::deploy::ort_bench(dir, &files, threads, &opts.batches, OrtTiming::Reps(reps)) {
                Ok(out) => {
                    ort_version = Some(out.onnxruntime);
                    for r in out.results {
                        if let Some(k) = files.iter().position(|f| Path::new(&r.model) == f) {
                            samples.entry((Runtime::Onnxruntime, k, false, r.batch)).or_default().extend(r.times);
                        }
                    }
                }
                Err(reason) => ort_note = Some(reason),
            }
        }
        if torch_note.is_none() {
            if opts.verbose {
                eprintln!("round {}/{rounds}: PyTorch ...", round + 1);
            }
            let batches: Vec<String> = opts.batches.iter().map(|b| b.to_string()).collect();
            let mut args = vec![
                "--threads".to_string(),
                threads.to_string(),
                "--batches".into(),
                batches.join(","),
                "--train-batch".into(),
                opts.train_batch.to_string(),
                "--reps".into(),
                reps.to_string(),
            ];
            args.extend(nets.iter().map(|n| n.ckpt.to_string_lossy().into_owned()));
            let files = [("torch_cpu_bench.py", TORCH_CPU_BENCH_SCRIPT), ("lfgcl_torch.py", LFGCL_TORCH_SCRIPT)];
            match crate::interop::run_script::<TorchOutput>(crate::interop::torch_python_command(), dir, &files, &args)
            {
                Ok(out) => {
                    torch_version = Some(out.torch);
                    for r in out.results {
                        if let Some(k) = nets.iter().position(|n| Path::new(&r.model) == n.ckpt) {
                            let key = (Runtime::Torch, k, r.what == "train step", r.batch);
                            samples.entry(key).or_default().extend(r.times);
                        }
                    }
                }
                Err(reason) => torch_note = Some(reason),
            }
        }
    }
    // A runtime that failed in a later round is left out altogether: its rows would mix rounds.
    if ort_note.is_some() {
        ort_version = None;
    }
    if torch_note.is_some() {
        torch_version = None;
    }

    let sgemm: Vec<GemmPoint> = SGEMM_SIZES.iter().zip(gemm).map(|(&size, t)| gemm_point(size, t)).collect();
    let peak = sgemm.iter().map(|g| g.gflops).fold(0.0, f64::max);
    let mut rows = Vec::new();
    let mut models = Vec::new();
    for (k, net) in nets.iter().enumerate() {
        let cost = net.model.cost();
        models.push(CpuModel { model: net.model.arch.model.clone(), macs_per_image: cost.macs, params: cost.params });
        let cases = opts.batches.iter().map(|&b| (false, b)).chain(std::iter::once((true, opts.train_batch)));
        for (train, b) in cases {
            let rate = |rt: Runtime| match (rt, &ort_note, &torch_note) {
                (Runtime::Onnxruntime, Some(_), _) | (Runtime::Torch, _, Some(_)) => None,
                _ => samples.get(&(rt, k, train, b)).map(|t| Rate::from_samples(b, t.clone())),
            };
            let lfgcl = rate(Runtime::Lfgcl).ok_or_else(|| Error::Invalid(format!("no lfgcl timing for batch {b}")))?;
            let flops_per_image = if train { 6.0 } else { 2.0 } * cost.macs as f64;
            let gflops = lfgcl.images_per_sec * flops_per_image / 1e9;
            let (ort, torch) = (rate(Runtime::Onnxruntime), rate(Runtime::Torch));
            rows.push(CpuRow {
                model: net.model.arch.model.clone(),
                what: if train { "train step" } else { "inference" }.into(),
                batch: b,
                lfgcl_vs_onnxruntime: ort.as_ref().map(|o| lfgcl.images_per_sec / o.images_per_sec),
                lfgcl_vs_torch: torch.as_ref().map(|t| lfgcl.images_per_sec / t.images_per_sec),
                lfgcl_vs_onnxruntime_best: ort.as_ref().map(|o| lfgcl.best_images_per_sec / o.best_images_per_sec),
                lfgcl_vs_torch_best: torch.as_ref().map(|t| lfgcl.best_images_per_sec / t.best_images_per_sec),
                onnxruntime: ort,
                torch,
                lfgcl: Throughput {
                    batch: b,
                    images_per_sec: lfgcl.images_per_sec,
                    gflops,
                    fraction_of_sgemm_peak: gflops / peak,
                    timing: lfgcl.timing,
                },
            });
        }
    }
    Ok(CpuBenchReport {
        device: dev.describe(),
        machine: Machine::this(),
        threads,
        rounds,
        reps_per_round: reps,
        sgemm,
        sgemm_peak_gflops: peak,
        models,
        rows,
        onnxruntime_version: ort_version,
        onnxruntime_note: ort_note,
        torch_version,
        torch_note,
    })
}
