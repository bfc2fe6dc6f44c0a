//! CPU throughput measurements for `lfgcl bench cpu` and the criterion benches: the machine's
//! SGEMM peak measured in the same run, then inference and training-step images/s of a model
//! and the GFLOP/s they achieve as a fraction of that peak.

use crate::backend::{self, cpu::gemm::sgemm, Device};
use crate::error::Result;
use crate::models::{Arch, Model};
use crate::nn::Mode;
use crate::tensor::Tensor;
use crate::train::Sgd;
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
pub fn time_it(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    let mut t: Vec<f64> = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(summarise(t))
}

/// Like `time_it`, timed by the device (`Backend::time_ms`: CUDA events on a GPU).
pub fn time_on(dev: &Device, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t: Vec<f64> = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        t.push(dev.time_ms(&mut f)? / 1e3);
    }
    Ok(summarise(t))
}

fn summarise(mut t: Vec<f64>) -> Timing {
    t.sort_by(|a, b| a.total_cmp(b));
    Timing { median_s: t[t.len() / 2], min_s: t[0], max_s: t[t.len() - 1], reps: t.len() }
}

#[derive(Clone, Debug, Serialize)]
pub struct GemmPoint {
    pub size: usize,
    pub gflops: f64,
    pub timing: Timing,
}

/// Square SGEMMs of growing size on every thread; the best is the peak the model runs are
/// compared with.
pub fn sgemm_peak(reps: usize) -> Result<Vec<GemmPoint>> {
    let threads = rayon::current_num_threads();
    let mut out = Vec::new();
    for size in [256usize, 512, 1024, 2048] {
        let a: Vec<f32> = (0..size * size).map(|i| (i % 17) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..size * size).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut c = vec![0.0f32; size * size];
        let timing = time_it(reps, || {
            sgemm(size, size, size, &a, false, &b, false, &mut c, false, threads);
            Ok(())
        })?;
        let gflops = 2.0 * (size as f64).powi(3) / timing.median_s / 1e9;
        out.push(GemmPoint { size, gflops, timing });
    }
    Ok(out)
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

#[derive(Clone, Debug, Serialize)]
pub struct CpuBenchReport {
    pub device: String,
    pub threads: usize,
    pub model: String,
    pub macs_per_image: u64,
    pub sgemm: Vec<GemmPoint>,
    pub sgemm_peak_gflops: f64,
    pub inference: Throughput,
    pub train_step: Throughput,
}

impl CpuBenchReport {
    pub fn table(&self) -> String {
        let mut s = format!("{} ({} threads), model {}\n", self.device, self.threads, self.model);
        for g in &self.sgemm {
            s += &format!("  sgemm {0}x{0}x{0}: {1:>7.1} GFLOP/s\n", g.size, g.gflops);
        }
        s += &format!("  sgemm peak (best of the above): {:.1} GFLOP/s\n", self.sgemm_peak_gflops);
        for (what, t) in [("inference", &self.inference), ("train step", &self.train_step)] {
            s += &format!(
                "  {what:<10} batch {:>4}: {:>8.1} img/s  {:>6.1} GFLOP/s = {:>5.1}% of sgemm peak  (median {:.1} ms, min {:.1}, max {:.1}, {} reps)\n",
                t.batch,
                t.images_per_sec,
                t.gflops,
                100.0 * t.fraction_of_sgemm_peak,
                1e3 * t.timing.median_s,
                1e3 * t.timing.min_s,
                1e3 * t.timing.max_s,
                t.timing.reps
            );
        }
        s
    }
}

fn input_for(model: &str) -> (usize, usize) {
    if model.starts_with("smallcnn") {
        (1, 28)
    } else {
        (3, 32)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelBench {
    pub device: String,
    pub model: String,
    pub macs_per_image: u64,
    pub what: String,
    pub throughput: Throughput,
}

/// Inference (`train == false`) or one full training step (forward, cross-entropy, backward,
/// SGD update) of `model` on random 32x32 data, on any device, after warm-up.
pub fn model_bench(
    dev: &Device,
    model: &str,
    batch: usize,
    train: bool,
    warmup: usize,
    reps: usize,
) -> Result<ModelBench> {
    let (c, size) = input_for(model);
    let mut m = Model::new(Arch::new(model, c, size, 10)?, dev, 0)?;
    let macs = m.cost().macs;
    let host: Vec<f32> = (0..batch * c * size * size).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
    let x = dev.from_host(&[batch, c, size, size], &host)?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
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
        model: model.to_string(),
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

/// Inference (eval mode) and one full SGD training step of `model` on random data.
pub fn cpu_bench(model: &str, batch: usize, train_batch: usize, reps: usize, verbose: bool) -> Result<CpuBenchReport> {
    let dev: Device = backend::cpu();
    let (c, size) = input_for(model);
    let mut m = Model::new(Arch::new(model, c, size, 10)?, &dev, 0)?;
    let macs = m.cost().macs;
    if verbose {
        eprintln!("measuring sgemm peak ...");
    }
    let sgemm = sgemm_peak(reps)?;
    let peak = sgemm.iter().map(|g| g.gflops).fold(0.0, f64::max);
    let x_infer: Vec<f32> = (0..batch * c * size * size).map(|i| ((i % 255) as f32 / 255.0) - 0.5).collect();
    if verbose {
        eprintln!("measuring {model} inference, batch {batch} ...");
    }
    let infer_t = time_it(reps, || {
        let x = Tensor::from_vec(&[batch, c, size, size], x_infer.clone())?;
        m.graph.forward(&dev, x, Mode::Eval).map(|_| ())
    })?;
    let x_train: Vec<f32> = (0..train_batch * c * size * size).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
    let labels: Vec<u32> = (0..train_batch).map(|i| (i % 10) as u32).collect();
    let mut opt = Sgd::new(0.9, 5e-4, false)?;
    if verbose {
        eprintln!("measuring {model} training step, batch {train_batch} ...");
    }
    let train_t = time_it(reps, || {
        let x = Tensor::from_vec(&[train_batch, c, size, size], x_train.clone())?;
        let trace = m.graph.forward_train(&dev, x)?;
        let ce = dev.softmax_cross_entropy(trace.output(), &labels)?;
        m.graph.zero_grad();
        m.graph.backward(&dev, trace, ce.dlogits)?;
        opt.step(&dev, &mut m.graph, 0.01)
    })?;
    let through = |b: usize, t: Timing, flops_per_image: f64| {
        let ips = b as f64 / t.median_s;
        let gflops = ips * flops_per_image / 1e9;
        Throughput { batch: b, images_per_sec: ips, gflops, fraction_of_sgemm_peak: gflops / peak, timing: t }
    };
    Ok(CpuBenchReport {
        device: dev.describe(),
        threads: rayon::current_num_threads(),
        model: model.to_string(),
        macs_per_image: macs,
        sgemm,
        sgemm_peak_gflops: peak,
        inference: through(batch, infer_t, 2.0 * macs as f64),
        train_step: through(train_batch, train_t, 6.0 * macs as f64),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchBenchReport {
    pub device: String,
    pub model: String,
    pub images: usize,
    pub keep: f64,
    pub candidates: usize,
    /// Candidates evaluated one after another (each forward uses every thread).
    pub sequential_candidates_per_second: f64,
    /// Candidates evaluated together, as `lfgcl search` does (parallel on the CPU).
    pub batched_candidates_per_second: f64,
}

/// `n` standard-normal images of the model's input shape (seeded): search benchmarks need no data.
fn random_images(model: &Model, n: usize) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let a = &model.arch;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let len = n * a.in_channels * a.input_size * a.input_size;
    Tensor::from_vec(
        &[n, a.in_channels, a.input_size, a.input_size],
        (0..len).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal)).collect(),
    )
}

/// Times the search's per-candidate work on a checkpoint: gather the kept channels (keep ratio
/// `keep` in every inner group), forward `images` unlabeled images, reduce the feature MSE.
pub fn search_bench(
    dev: &Device,
    model: &mut Model,
    images: usize,
    candidates: usize,
    keep: f64,
) -> Result<SearchBenchReport> {
    use crate::prune::{keep_count, Criterion, GroupScope, Pruner};
    use crate::search::reward::{RewardConfig, Scorer};
    use rayon::prelude::*;
    let x = random_images(model, images)?;
    let pruner = Pruner::new(model, GroupScope::Inner, Criterion::L1)?;
    // Running BN statistics: the same work per candidate as scripts/torch_search_eval.py
    // (gather, forward, feature MSE), so the two can be compared.
    let cfg = RewardConfig { recalibrate_bn: false, ..RewardConfig::default() };
    let scorer = Scorer::new(model, dev, &x, &pruner.groups, cfg)?;
    let kept: Vec<usize> = pruner.cost.channels.iter().map(|&c| keep_count(keep, c, 1)).collect();
    let keep_idx = pruner.keep_indices(&kept)?;
    let one = || -> Result<f64> {
        let mut cand = scorer.candidate(model, &pruner.groups, &keep_idx)?;
        scorer.score(&mut cand, &keep_idx)
    };
    one()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..candidates {
        one()?;
    }
    dev.synchronize()?;
    let sequential = candidates as f64 / t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    if dev.kind() == crate::backend::DeviceKind::Cpu {
        (0..candidates).into_par_iter().with_max_len(1).map(|_| one().map(|_| ())).collect::<Result<Vec<()>>>()?;
    } else {
        for _ in 0..candidates {
            one()?;
        }
    }
    dev.synchronize()?;
    let batched = candidates as f64 / t1.elapsed().as_secs_f64();
    Ok(SearchBenchReport {
        device: dev.describe(),
        model: model.arch.model.clone(),
        images,
        keep,
        candidates,
        sequential_candidates_per_second: sequential,
        batched_candidates_per_second: batched,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchLoopReport {
    pub device: String,
    pub model: String,
    pub strategy: crate::search::Strategy,
    pub images: usize,
    pub episodes: usize,
    pub candidates_per_step: usize,
    pub updates_per_episode: usize,
    /// Distinct candidates the loop scored.
    pub evaluated: usize,
    pub time: crate::search::TimeBreakdown,
    /// The whole loop: evaluated candidates per second of wall time.
    pub end_to_end_candidates_per_second: f64,
    /// The same candidates scored again, K at a time, with nothing else around them.
    pub raw_candidates_per_second: f64,
    pub ratio: f64,
}

impl SearchLoopReport {
    pub fn table(&self) -> String {
        let t = &self.time;
        format!(
            "search loop ({:?}, {} episodes x {} candidates, {} agent updates per episode, {} images) on {}:\n  \
             end to end {:.2} candidates/s ({} scored in {:.2}s: scoring {:.2}s, agent {:.2}s, bookkeeping {:.3}s = {:.2} ms/episode)\n  \
             raw scoring of the same candidates {:.2} candidates/s\n  end to end / raw = {:.3}",
            self.strategy,
            self.episodes,
            self.candidates_per_step,
            self.updates_per_episode,
            self.images,
            self.device,
            self.end_to_end_candidates_per_second,
            self.evaluated,
            t.total_s,
            t.scoring_s,
            t.agent_s,
            t.bookkeeping_s,
            1e3 * t.bookkeeping_s / self.episodes.max(1) as f64,
            self.raw_candidates_per_second,
            self.ratio
        )
    }
}

/// The whole search loop (proposals, scoring, agent, log, checkpoints) at 50% FLOPs on random
/// unlabeled images, then the raw scoring rate of the candidates it scored (K at a time, as the
/// loop does), so their ratio says what the loop costs around the scorer.
pub fn search_loop_bench(
    dev: &Device,
    model: &mut Model,
    images: usize,
    candidates_per_step: usize,
    episodes: usize,
    strategy: crate::search::Strategy,
    progress: bool,
) -> Result<SearchLoopReport> {
    use crate::prune::{Budget, Constraints, Criterion, GroupScope, Pruner};
    use crate::search::ddpg::DdpgConfig;
    use crate::search::reward::{RewardConfig, Scorer};
    use crate::search::{CandidateRecord, RunOptions, SearchConfig, SearchFiles};
    let x = random_images(model, images)?;
    let k = candidates_per_step;
    let cfg = SearchConfig {
        budget: Budget { flops: Some(0.5), params: None },
        constraints: Constraints::default(),
        scope: GroupScope::Inner,
        criterion: Criterion::L1,
        strategy,
        episodes,
        candidates_per_step: k,
        updates_per_episode: 4 * k,
        overlap_agent: dev.kind() == crate::backend::DeviceKind::Cuda,
        seed: 0,
        // A quarter of the episodes warm up, so most of the loop trains the agent.
        ddpg: DdpgConfig { warmup_episodes: episodes / 4, ..DdpgConfig::default() },
        reward: RewardConfig::default(),
    };
    let dir = std::env::temp_dir().join(format!("lfgcl-bench-search-{}", std::process::id()));
    let files = SearchFiles { dir: dir.clone() };
    let opts = RunOptions { progress, ..RunOptions::default() };
    let result = crate::search::run(model, dev, &x, &cfg, &files, None, &opts)
        .and_then(|outcome| Ok((outcome.time, crate::report::read_jsonl::<CandidateRecord>(files.log())?)));
    let _ = std::fs::remove_dir_all(&dir);
    let (time, records) = result?;
    // The raw rate: the very candidates the loop scored (not the cached repeats, not the uniform
    // reference), K at a time.
    let pruner = Pruner::new(model, cfg.scope, cfg.criterion)?;
    let scorer = Scorer::new(model, dev, &x, &pruner.groups, cfg.reward.clone())?;
    let keeps: Vec<Vec<Vec<u32>>> = records
        .iter()
        .filter(|r| !r.cached && r.episode >= 0)
        .map(|r| pruner.keep_indices(&r.policy.kept))
        .collect::<Result<_>>()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    for chunk in keeps.chunks(k.max(1)) {
        scorer.score_batch(model, &pruner.groups, chunk)?;
    }
    dev.synchronize()?;
    let raw = keeps.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let evaluated = keeps.len();
    let e2e = time.candidates_per_second(evaluated + 1); // + the uniform reference
    Ok(SearchLoopReport {
        device: dev.describe(),
        model: model.arch.model.clone(),
        strategy,
        images,
        episodes,
        candidates_per_step: k,
        updates_per_episode: cfg.updates_per_episode,
        evaluated,
        time,
        end_to_end_candidates_per_second: e2e,
        raw_candidates_per_second: raw,
        ratio: e2e / raw,
    })
}
