//! `lfgcl bench search`: the search's per-candidate work (gather, forward, feature MSE) one
//! candidate after another and batched, and whole search loops with their time breakdown.

use super::machine::Machine;
use crate::backend::Device;
use crate::error::Result;
use crate::models::Model;
use crate::tensor::Tensor;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct SearchBenchReport {
    pub device: String,
    pub machine: Machine,
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
        machine: Machine::this(),
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
    pub machine: Machine,
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
        machine: Machine::this(),
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
