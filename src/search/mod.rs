//! The LFGCL search: a DDPG agent reads the whole architecture and proposes the keep ratio of
//! every prunable group at once; each proposal is projected onto the budget, pruned with the
//! masked gather, and scored without labels against the baseline's features. K candidates are
//! evaluated per episode (in parallel on the CPU), every candidate is logged, and the search
//! state is saved after every episode so an interrupted search resumes where it stopped.

pub mod ddpg;
pub mod reward;
pub mod state;

use crate::backend::{Device, DeviceKind};
use crate::data::{Dataset, Loader, Normalization};
use crate::error::{write_atomic, Error, Result};
use crate::models::Model;
use crate::nn::Mode;
use crate::prune::{Budget, Constraints, Criterion, GroupScope, Policy, Projected, Pruner};
use crate::report::{self, BarChart, JsonlWriter, LinePlot, ScatterPlot, Series, SeriesStyle};
use crate::tensor::Tensor;
use ddpg::{Agent, AgentSnapshot, DdpgConfig, Transition};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use reward::{RewardConfig, Scorer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How candidates are proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The LFGCL agent (random warm-up, then the actor plus decaying noise).
    Ddpg,
    /// Random search: uniformly random ratio vectors, projected, for the whole run.
    Random,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    pub budget: Budget,
    pub constraints: Constraints,
    pub scope: GroupScope,
    pub criterion: Criterion,
    pub strategy: Strategy,
    pub episodes: usize,
    pub candidates_per_step: usize,
    /// Gradient steps of the agent after each episode (once warm-up is over).
    pub updates_per_episode: usize,
    pub seed: u64,
    pub ddpg: DdpgConfig,
    pub reward: RewardConfig,
}

impl SearchConfig {
    pub fn validate(&self) -> Result<()> {
        self.budget.validate()?;
        self.constraints.validate()?;
        self.ddpg.validate()?;
        if self.episodes == 0 || self.candidates_per_step == 0 {
            return Err(Error::Invalid("episodes and candidates per step must be positive".into()));
        }
        Ok(())
    }
}

/// One evaluated candidate, as logged (one JSON line each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CandidateRecord {
    /// -1 for the uniform reference policy evaluated before the search.
    pub episode: i64,
    pub index: usize,
    /// The agent's action in [0, 1] per group, before projection.
    pub action: Vec<f32>,
    /// The feasible policy the action was projected to (keep ratios, kept channels, cost).
    #[serde(flatten)]
    pub policy: Projected,
    pub reward: f64,
    /// Top-1 accuracy before fine-tuning, only with `report_accuracy` (labels used for the
    /// report, never by the search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    /// The same kept channels were evaluated before: the reward was reused, not recomputed
    /// (rewards are deterministic), and the candidate does not count as an evaluation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// Saved after every episode; `--resume` continues from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SearchState {
    config: SearchConfig,
    /// Fingerprint of the baseline and the images, so a resume cannot mix inputs.
    fingerprint: String,
    episodes_done: usize,
    evaluated: usize,
    elapsed_seconds: f64,
    uniform: CandidateRecord,
    best: Option<CandidateRecord>,
    agent: Option<AgentSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchOutcome {
    pub best: CandidateRecord,
    pub uniform: CandidateRecord,
    pub evaluated: usize,
    pub seconds: f64,
    pub candidates_per_second: f64,
    /// Spearman rank correlation between reward and top-1 over the logged candidates, when
    /// accuracy was reported.
    pub reward_accuracy_spearman: Option<f64>,
    pub best_policy: Policy,
}

/// Labelled images used only to report each candidate's accuracy (never by the search).
pub struct AccuracyReport {
    pub images: Tensor,
    pub labels: Vec<u32>,
}

/// The normalised image batch of a dataset, as one host tensor.
pub fn batch_tensor(ds: &Dataset, norm: &Normalization) -> Result<Tensor> {
    let loader = Loader::try_new(ds, ds.len().max(1), norm)?;
    let b = loader.epoch(0).next().ok_or_else(|| Error::Invalid(format!("dataset {} has no images", ds.name)))?;
    Tensor::from_vec(&b.dims, b.images)
}

/// Candidate evaluation: prune, score, optionally measure accuracy.
struct Evaluator<'a> {
    base: &'a Model,
    pruner: &'a Pruner,
    scorer: Scorer,
    dev: Device,
    report: Option<AccuracyReport>,
}

impl Evaluator<'_> {
    fn evaluate(&self, p: &Projected) -> Result<(f64, Option<f64>)> {
        let keep = self.pruner.keep_indices(&p.kept)?;
        let mut cand = crate::prune::apply::apply(self.base, &self.dev, &self.pruner.groups, &keep)?;
        let reward = self.scorer.score(&mut cand, &keep)?;
        let top1 = match &self.report {
            Some(r) => Some(top1(&mut cand, &self.dev, &r.images, &r.labels)?),
            None => None,
        };
        Ok((reward, top1))
    }

    /// K candidates: in parallel on the CPU (each one's forward also uses the pool), one after
    /// another on a GPU (one stream).
    fn evaluate_all(&self, ps: &[&Projected]) -> Result<Vec<(f64, Option<f64>)>> {
        if self.dev.kind() == DeviceKind::Cpu {
            ps.par_iter().with_max_len(1).map(|p| self.evaluate(p)).collect()
        } else {
            ps.iter().map(|p| self.evaluate(p)).collect()
        }
    }

    /// Evaluates the candidates whose kept channels are not in `cache` (each distinct one once)
    /// and returns every candidate's result and whether it came from the cache. Returns the
    /// number of new evaluations too.
    fn evaluate_cached(
        &self,
        ps: &[Projected],
        cache: &mut RewardCache,
    ) -> Result<(Vec<((f64, Option<f64>), bool)>, usize)> {
        let mut fresh: Vec<&Projected> = Vec::new();
        for p in ps {
            if !cache.contains_key(&p.kept) && !fresh.iter().any(|q| q.kept == p.kept) {
                fresh.push(p);
            }
        }
        let results = self.evaluate_all(&fresh)?;
        let new = fresh.len();
        let mut first_use: std::collections::HashSet<Vec<usize>> = Default::default();
        for (p, r) in fresh.iter().zip(results) {
            cache.insert(p.kept.clone(), r);
            first_use.insert(p.kept.clone());
        }
        let out = ps
            .iter()
            .map(|p| {
                let was_fresh = first_use.remove(&p.kept);
                (cache[&p.kept], !was_fresh)
            })
            .collect();
        Ok((out, new))
    }
}

/// Top-1 of `model` on pre-normalised images, in chunks.
pub fn top1(model: &mut Model, dev: &Device, images: &Tensor, labels: &[u32]) -> Result<f64> {
    let n = images.dims()[0];
    let per: usize = images.dims()[1..].iter().product();
    let host = images.to_vec()?;
    let mut correct = 0usize;
    for start in (0..n).step_by(500) {
        let end = (start + 500).min(n);
        let mut dims = images.dims().to_vec();
        dims[0] = end - start;
        let x = dev.from_host(&dims, &host[start * per..end * per])?;
        let logits = model.graph.forward(dev, x, Mode::Eval)?;
        correct += dev.softmax_cross_entropy(&logits, &labels[start..end])?.correct;
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// Randomness of one episode, derived from (seed, strategy, episode) alone: a resumed search
/// draws exactly what an uninterrupted one would, and random search never replays the DDPG
/// agent's warm-up draws.
fn episode_rng(seed: u64, strategy: Strategy, episode: usize) -> StdRng {
    let stream = match strategy {
        Strategy::Ddpg => 0x5ea4c4,
        Strategy::Random => 0x7a4d0,
    };
    StdRng::seed_from_u64(crate::data::seed_hash(&[seed, stream, episode as u64]))
}

fn fingerprint(base: &Model, images: &Tensor) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_string(&base.arch).expect("arch serialises"));
    for (name, entry) in base.graph.state() {
        h.update(name.as_bytes());
        if let crate::nn::StateRef::F32(t) = entry {
            for v in t.to_vec()? {
                h.update(v.to_le_bytes());
            }
        }
    }
    for v in images.to_vec()? {
        h.update(v.to_le_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Files a search writes into its output directory.
pub struct SearchFiles {
    pub dir: PathBuf,
}

impl SearchFiles {
    pub fn log(&self) -> PathBuf {
        self.dir.join("candidates.jsonl")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("search_state.json")
    }
    pub fn policy(&self) -> PathBuf {
        self.dir.join("best_policy.json")
    }
    pub fn pruned(&self) -> PathBuf {
        self.dir.join("pruned.safetensors")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
}

fn record(
    episode: i64,
    index: usize,
    action: Vec<f32>,
    p: &Projected,
    reward: f64,
    top1: Option<f64>,
) -> CandidateRecord {
    CandidateRecord { episode, index, action, policy: p.clone(), reward, top1, cached: false }
}

/// Rewards (and reported accuracies) of every kept-channel vector evaluated so far.
type RewardCache = std::collections::HashMap<Vec<usize>, (f64, Option<f64>)>;

/// Keeps only the log lines of completed episodes (a crash between logging an episode and
/// saving the state leaves lines the resumed run will write again).
fn truncate_log(path: &Path, episodes_done: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let records: Vec<CandidateRecord> = report::read_jsonl(path)?;
    let mut text = String::new();
    for r in records.into_iter().filter(|r| r.episode < episodes_done as i64) {
        text += &serde_json::to_string(&r).expect("record serialises");
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Runs (or resumes) a search. `images`: the unlabeled, normalised batch the reward uses.
#[allow(clippy::too_many_arguments)]
pub fn run(
    base: &mut Model,
    dev: &Device,
    images: &Tensor,
    cfg: &SearchConfig,
    files: &SearchFiles,
    resume: bool,
    report: Option<AccuracyReport>,
    progress: bool,
) -> Result<SearchOutcome> {
    cfg.validate()?;
    std::fs::create_dir_all(&files.dir).map_err(|e| Error::io(&files.dir, e))?;
    let pruner = Pruner::new(base, cfg.scope, cfg.criterion)?;
    // Fail early, before any evaluation, when the budget is out of reach.
    let uniform = pruner.uniform(&cfg.budget, &cfg.constraints)?;
    let fp = fingerprint(base, images)?;
    let scorer = Scorer::new(base, dev, images, &pruner.groups, cfg.reward.clone())?;
    let state_vec = state::state_vector(base, &pruner, &cfg.budget);
    let mut init_rng = StdRng::seed_from_u64(cfg.seed);
    let mut agent = Agent::new(cfg.ddpg.clone(), state_vec, pruner.groups.len(), &mut init_rng)?;
    let eval = Evaluator { base, pruner: &pruner, scorer, dev: dev.clone(), report };

    let saved: Option<SearchState> = if resume && files.state().exists() {
        let s: SearchState = report::read_json(files.state())?;
        // Every setting must match except the episode count, which a resume may extend.
        if (SearchConfig { episodes: cfg.episodes, ..s.config.clone() }) != *cfg {
            return Err(Error::Invalid(format!(
                "{}: the saved search used other settings; resume with the same options (only --episodes may grow) or use a new --out",
                files.state().display()
            )));
        }
        if s.episodes_done > cfg.episodes {
            return Err(Error::Invalid(format!(
                "{}: {} episodes are already done; ask for more than that to resume",
                files.state().display(),
                s.episodes_done
            )));
        }
        if s.fingerprint != fp {
            return Err(Error::Invalid(format!(
                "{}: the saved search used another checkpoint or other images",
                files.state().display()
            )));
        }
        Some(s)
    } else {
        if resume {
            eprintln!("note: nothing to resume in {}; starting a new search", files.dir.display());
        }
        None
    };
    let mut cache = RewardCache::new();
    let (start, mut evaluated, mut elapsed, uniform_rec, mut best) = match saved {
        Some(s) => {
            if let Some(a) = s.agent {
                agent.restore(a)?;
            }
            truncate_log(&files.log(), s.episodes_done)?;
            for r in report::read_jsonl::<CandidateRecord>(files.log())? {
                cache.insert(r.policy.kept.clone(), (r.reward, r.top1));
            }
            (s.episodes_done, s.evaluated, s.elapsed_seconds, s.uniform, s.best)
        }
        None => {
            let mut log = JsonlWriter::create(files.log())?;
            let (r, t) = eval.evaluate(&uniform)?;
            cache.insert(uniform.kept.clone(), (r, t));
            let a: Vec<f32> = uniform
                .ratios
                .iter()
                .map(|&x| ((x - cfg.constraints.lower) / (1.0 - cfg.constraints.lower)).clamp(0.0, 1.0) as f32)
                .collect();
            let rec = record(-1, 0, a, &uniform, r, t);
            log.write(&rec)?;
            (0, 0, 0.0, rec, None)
        }
    };
    let mut log = JsonlWriter::append(files.log())?;
    let pb = if progress { ProgressBar::new(cfg.episodes as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} episodes {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix("search");
    pb.set_position(start as u64);
    let lower = cfg.constraints.lower;
    for episode in start..cfg.episodes {
        let t0 = Instant::now();
        let mut rng = episode_rng(cfg.seed, cfg.strategy, episode);
        let k = cfg.candidates_per_step;
        let actions: Vec<Vec<f32>> = match cfg.strategy {
            Strategy::Ddpg => agent.explore(episode, k, &mut rng)?,
            Strategy::Random => {
                (0..k).map(|_| (0..pruner.groups.len()).map(|_| rng.random_range(0.0..=1.0)).collect()).collect()
            }
        };
        let projected: Vec<Projected> = actions
            .iter()
            .map(|a| {
                let ratios: Vec<f64> = a.iter().map(|&x| lower + (1.0 - lower) * x as f64).collect();
                pruner.project(&ratios, &cfg.budget, &cfg.constraints)
            })
            .collect::<Result<_>>()?;
        let (results, new) = eval.evaluate_cached(&projected, &mut cache)?;
        for (i, ((a, p), ((r, t), cached))) in actions.into_iter().zip(&projected).zip(results).enumerate() {
            let rec = CandidateRecord { cached, ..record(episode as i64, i, a.clone(), p, r, t) };
            log.write(&rec)?;
            if best.as_ref().is_none_or(|b| r > b.reward) {
                best = Some(rec);
            }
            agent.remember(Transition { action: a, reward: r as f32 });
        }
        if cfg.strategy == Strategy::Ddpg && episode >= cfg.ddpg.warmup_episodes {
            for _ in 0..cfg.updates_per_episode {
                agent.update(&mut rng)?;
            }
        }
        evaluated += new;
        elapsed += t0.elapsed().as_secs_f64();
        let state = SearchState {
            config: cfg.clone(),
            fingerprint: fp.clone(),
            episodes_done: episode + 1,
            evaluated,
            elapsed_seconds: elapsed,
            uniform: uniform_rec.clone(),
            best: best.clone(),
            agent: Some(agent.snapshot()),
        };
        report::write_json(files.state(), &state)?;
        let b = best.as_ref().expect("at least one candidate");
        pb.set_message(format!(
            "best reward {:.5} (uniform {:.5}) FLOPs {:.1}% {:.2} cand/s",
            b.reward,
            uniform_rec.reward,
            100.0 * b.policy.flops_fraction,
            evaluated as f64 / elapsed.max(1e-9)
        ));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let best = best.ok_or_else(|| Error::Invalid("the search evaluated no candidate".into()))?;
    finish(base, dev, images, &pruner, cfg, files, &uniform_rec, best, evaluated, elapsed)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    base: &Model,
    dev: &Device,
    images: &Tensor,
    pruner: &Pruner,
    cfg: &SearchConfig,
    files: &SearchFiles,
    uniform: &CandidateRecord,
    best: CandidateRecord,
    evaluated: usize,
    elapsed: f64,
) -> Result<SearchOutcome> {
    let source = match cfg.strategy {
        Strategy::Ddpg => "lfgcl search",
        Strategy::Random => "random search",
    };
    let policy = pruner.policy(base, &best.policy, &cfg.constraints, source);
    let mut policy_json = serde_json::to_value(&policy).expect("policy serialises");
    policy_json["reward"] = serde_json::json!(best.reward);
    policy_json["uniform_reward"] = serde_json::json!(uniform.reward);
    report::write_json(files.policy(), &policy_json)?;
    let mut pruned = pruner.prune(base, dev, &best.policy.kept)?;
    if cfg.reward.recalibrate_bn {
        // Saved as it was scored: with BN statistics of the unlabeled images.
        reward::recalibrate_bn(&mut pruned, dev, &dev.to_device(images)?)?;
    }
    crate::train::checkpoint::save(&pruned, files.pruned(), &policy_json)?;
    let records: Vec<CandidateRecord> = report::read_jsonl(files.log())?;
    let spearman = {
        let with: Vec<&CandidateRecord> = records.iter().filter(|r| r.top1.is_some()).collect();
        let x: Vec<f64> = with.iter().map(|r| r.reward).collect();
        let y: Vec<f64> = with.iter().map(|r| r.top1.expect("filtered")).collect();
        report::spearman(&x, &y)
    };
    plots(files, pruner, &records, uniform, &best, spearman)?;
    let outcome = SearchOutcome {
        best,
        uniform: uniform.clone(),
        evaluated,
        seconds: elapsed,
        candidates_per_second: evaluated as f64 / elapsed.max(1e-9),
        reward_accuracy_spearman: spearman,
        best_policy: policy,
    };
    report::write_json(
        files.summary(),
        &serde_json::json!({ "config": cfg, "outcome": &outcome, "device": dev.describe() }),
    )?;
    Ok(outcome)
}

fn plots(
    files: &SearchFiles,
    pruner: &Pruner,
    records: &[CandidateRecord],
    uniform: &CandidateRecord,
    best: &CandidateRecord,
    spearman: Option<f64>,
) -> Result<()> {
    let episodes = records.iter().map(|r| r.episode).max().unwrap_or(0).max(0) as usize + 1;
    let (mut mean, mut best_so_far) = (Vec::new(), Vec::new());
    let mut running = f64::NEG_INFINITY;
    for e in 0..episodes {
        let rs: Vec<f64> = records.iter().filter(|r| r.episode == e as i64).map(|r| r.reward).collect();
        if rs.is_empty() {
            continue;
        }
        running = running.max(rs.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
        mean.push((e as f64, rs.iter().sum::<f64>() / rs.len() as f64));
        best_so_far.push((e as f64, running));
    }
    LinePlot::new("LFGCL search: label-free reward per episode", "episode", "reward (-normalised feature MSE)")
        .with_series(Series::new("episode mean", mean, SeriesStyle::Points))
        .with_series(Series::line("best so far", best_so_far))
        .with_hline(uniform.reward, "uniform pruning")
        .save(files.dir.join("reward.svg"))?;
    BarChart::new("Keep ratio per group: best policy vs uniform", "group", "keep ratio")
        .with_categories(pruner.group_names())
        .with_series("LFGCL best", best.policy.ratios.clone())
        .with_series("uniform", uniform.policy.ratios.clone())
        .save(files.dir.join("ratios.svg"))?;
    if let Some(rho) = spearman {
        let pts: Vec<(f64, f64)> = records.iter().filter_map(|r| r.top1.map(|a| (r.reward, 100.0 * a))).collect();
        ScatterPlot {
            title: "Label-free reward vs top-1 before fine-tuning".into(),
            x_label: "reward".into(),
            y_label: "top-1 (%)".into(),
            points: pts,
            annotation: Some(format!(
                "Spearman rho = {rho:.3} over {} candidates",
                records.iter().filter(|r| r.top1.is_some()).count()
            )),
        }
        .save(files.dir.join("reward_vs_accuracy.svg"))?;
    }
    Ok(())
}
