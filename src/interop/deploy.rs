//! `lfgcl bench deploy`: images/s of a baseline and its pruned net in lfgcl (CPU, and GPU when
//! one is used) and in onnxruntime on the exported ONNX files, on the same threads in the same
//! run, for each batch size; each runtime's pruning speed-up is printed next to the MACs ratio.
//! Without a pruned net it is lfgcl's CPU inference throughput against onnxruntime's.

use super::onnx::{self, ExportOptions};
use crate::backend::{self, Device, DeviceKind};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Mode;
use crate::tensor::Tensor;
use crate::train::checkpoint;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// onnxruntime timing script, run as a subprocess (shipped in the binary so it needs no checkout).
pub const ORT_BENCH_SCRIPT: &str = include_str!("../../scripts/ort_bench.py");

#[derive(Clone)]
pub struct DeployOptions {
    pub batches: Vec<usize>,
    /// Threads for every runtime (lfgcl's rayon pool is expected to have this many).
    pub threads: usize,
    /// Minimum seconds of timed repetitions per measurement (after warm-up).
    pub min_seconds: f64,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct DeployReport {
    pub model: String,
    pub threads: usize,
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
        let mut s = format!("{}, {} threads", self.model, self.threads);
        match (self.pruned_macs, self.macs_ratio) {
            (Some(p), Some(ratio)) => {
                s += &format!(
                    "; MACs per image {} -> {} (ratio {ratio:.2}x)\n",
                    crate::models::cost::human(self.base_macs),
                    crate::models::cost::human(p)
                );
                s += &format!(
                    "{:<16} {:>5} {:>12} {:>12} {:>9} {:>10}\n",
                    "runtime", "batch", "base img/s", "pruned img/s", "speed-up", "MACs ratio"
                );
                for r in &self.rows {
                    s += &format!(
                        "{:<16} {:>5} {:>12.1} {:>12.1} {:>8.2}x {:>9.2}x\n",
                        r.runtime,
                        r.batch,
                        r.base_images_per_sec,
                        r.pruned_images_per_sec.unwrap_or(f64::NAN),
                        r.speedup.unwrap_or(f64::NAN),
                        ratio
                    );
                }
            }
            _ => {
                s += &format!("; {} MACs per image\n", crate::models::cost::human(self.base_macs));
                s += &format!("{:<16} {:>5} {:>12}\n", "runtime", "batch", "img/s");
                for r in &self.rows {
                    s += &format!("{:<16} {:>5} {:>12.1}\n", r.runtime, r.batch, r.base_images_per_sec);
                }
                for (b, ratio) in self.lfgcl_vs_onnxruntime() {
                    s += &format!("lfgcl cpu / onnxruntime cpu, batch {b}: {ratio:.2}x (images/s)\n");
                }
            }
        }
        if let Some(n) = &self.onnxruntime_note {
            s += &format!("onnxruntime not timed: {n}\n");
        }
        s
    }
}

/// Median seconds per call of `f` after two warm-up calls, repeated for at least `min_seconds`
/// (and 3 times), timed by the device (CUDA events on a GPU).
fn median_seconds(dev: &Device, min_seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let start = Instant::now();
    let mut t = Vec::new();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < min_seconds && t.len() < 10_000) {
        t.push(dev.time_ms(&mut f)? / 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

fn lfgcl_images_per_sec(model: &mut Model, dev: &Device, batch: usize, min_seconds: f64) -> Result<f64> {
    let shape: Vec<usize> = std::iter::once(batch).chain(model.graph.input_shape().iter().copied()).collect();
    let n: usize = shape.iter().product();
    let host: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let x = match dev.kind() {
        DeviceKind::Cpu => Tensor::from_vec(&shape, host)?,
        DeviceKind::Cuda => dev.from_host(&shape, &host)?,
    };
    let secs = median_seconds(dev, min_seconds, || model.graph.forward(dev, dev.copy(&x)?, Mode::Eval).map(|_| ()))?;
    Ok(batch as f64 / secs)
}

#[derive(serde::Deserialize)]
struct OrtResult {
    model: String,
    batch: usize,
    images_per_sec: f64,
}

#[derive(serde::Deserialize)]
struct OrtOutput {
    onnxruntime: String,
    results: Vec<OrtResult>,
}

/// Runs the timing script on `models`; Err(reason) when onnxruntime cannot be run.
fn ort_bench(models: &[PathBuf], opts: &DeployOptions) -> std::result::Result<OrtOutput, String> {
    let script = opts.work_dir.join("ort_bench.py");
    std::fs::write(&script, ORT_BENCH_SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    let batches: Vec<String> = opts.batches.iter().map(|b| b.to_string()).collect();
    let mut cmd = super::python_command();
    cmd.arg(&script)
        .arg("--threads")
        .arg(opts.threads.to_string())
        .arg("--batches")
        .arg(batches.join(","))
        .arg("--min-seconds")
        .arg(opts.min_seconds.to_string())
        .args(models);
    let out = cmd.output().map_err(|e| format!("cannot start python ({e}); set LFGCL_PYTHON"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("scripts/ort_bench.py failed: {last}"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output of scripts/ort_bench.py: {e}"))
}

/// The deployment benchmark of `base` (and `pruned`) checkpoints.
pub fn bench_deploy(base_path: &Path, pruned_path: Option<&Path>, opts: &DeployOptions) -> Result<DeployReport> {
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err(Error::Invalid("batch sizes must be positive".into()));
    }
    let cpu = backend::cpu();
    let mut base = checkpoint::load(base_path, &cpu)?;
    let mut pruned = pruned_path.map(|p| checkpoint::load(p, &cpu)).transpose()?;
    if let Some(p) = &pruned {
        if p.graph.input_shape() != base.graph.input_shape() || p.arch.model != base.arch.model {
            return Err(Error::Invalid(format!(
                "the pruned net ({} {:?}) is not a pruned {} {:?}",
                p.arch.model,
                p.graph.input_shape(),
                base.arch.model,
                base.graph.input_shape()
            )));
        }
    }
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| Error::io(&opts.work_dir, e))?;
    let base_onnx = opts.work_dir.join("base.onnx");
    let pruned_onnx = opts.work_dir.join("pruned.onnx");
    let mut rows = Vec::new();
    let mut measure = |runtime: &str, dev: &Device, base: &mut Model, mut pruned: Option<&mut Model>| -> Result<()> {
        for &b in &opts.batches {
            let bi = lfgcl_images_per_sec(base, dev, b, opts.min_seconds)?;
            let pi = match pruned.as_deref_mut() {
                Some(p) => Some(lfgcl_images_per_sec(p, dev, b, opts.min_seconds)?),
                None => None,
            };
            rows.push(Row {
                runtime: runtime.into(),
                batch: b,
                base_images_per_sec: bi,
                pruned_images_per_sec: pi,
                speedup: pi.map(|p| p / bi),
            });
        }
        Ok(())
    };
    measure("lfgcl cpu", &cpu, &mut base, pruned.as_mut())?;
    if let Some(gpu) = &opts.gpu {
        let mut gb = checkpoint::load(base_path, gpu)?;
        let mut gp = pruned_path.map(|p| checkpoint::load(p, gpu)).transpose()?;
        measure(
            &format!("lfgcl {}", if gpu.kind() == DeviceKind::Cuda { "cuda" } else { "gpu" }),
            gpu,
            &mut gb,
            gp.as_mut(),
        )?;
    }
    let (mut note, mut version) = (None, None);
    if opts.onnxruntime {
        let eo = ExportOptions::default();
        onnx::export(&base, &base_onnx, &eo)?;
        let mut files = vec![base_onnx.clone()];
        if let Some(p) = &pruned {
            onnx::export(p, &pruned_onnx, &eo)?;
            files.push(pruned_onnx.clone());
        }
        match ort_bench(&files, opts) {
            Ok(out) => {
                version = Some(out.onnxruntime.clone());
                for &b in &opts.batches {
                    let get = |f: &Path| {
                        out.results.iter().find(|r| r.batch == b && Path::new(&r.model) == f).map(|r| r.images_per_sec)
                    };
                    let bi = get(&base_onnx)
                        .ok_or_else(|| Error::Invalid(format!("ort_bench.py gave no result for batch {b}")))?;
                    let pi = if pruned.is_some() { get(&pruned_onnx) } else { None };
                    rows.push(Row {
                        runtime: "onnxruntime cpu".into(),
                        batch: b,
                        base_images_per_sec: bi,
                        pruned_images_per_sec: pi,
                        speedup: pi.map(|p| p / bi),
                    });
                }
            }
            Err(reason) => note = Some(reason),
        }
    } else {
        note = Some("disabled".into());
    }
    let base_macs = base.cost().macs;
    let pruned_macs = pruned.as_ref().map(|p| p.cost().macs);
    Ok(DeployReport {
        model: base.arch.model.clone(),
        threads: opts.threads,
        base_macs,
        pruned_macs,
        macs_ratio: pruned_macs.map(|p| base_macs as f64 / p.max(1) as f64),
        rows,
        onnxruntime_note: note,
        onnxruntime_version: version,
    })
}
