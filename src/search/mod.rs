//! The LFGCL search: a DDPG agent reads the whole architecture and proposes the keep ratio of
//! every prunable group at once; each proposal is projected onto the budget, turned into a
//! compact candidate (gathered kept channels) and scored without labels against the baseline's
//! features.
//!
//! [`Search`] is the search itself (`new` / `resume` / `step` / `outcome`): it owns no file.
//! [`run`] is the thin loop around it that owns the output folder, the log, the checkpoints
//! (binary, at most every few seconds, at the end and on SIGINT/SIGTERM) and the progress bar.
//!
//! Where the time goes is measured in three parts: scoring (gather, forward, feature MSE),
//! agent (proposing and training) and bookkeeping (log lines, checkpoints).

pub mod ddpg;
pub mod observation;
pub mod proxy;
pub mod reward;
mod run;
mod saved;

pub use run::{run, RunOptions, SearchFiles};

use crate::backend::Device;
use crate::data::{Dataset, Loader, Normalization};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Mode;
use crate::prune::{Budget, Constraints, Criterion, GroupScope, Policy, Projected, Pruner};
use crate::tensor::Tensor;
use ddpg::{Agent, DdpgConfig, Transition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reward::{RewardConfig, Scorer};
use saved::SavedSearch;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
    /// Train the agent while the device scores the next step's candidates (one-step lag: the
    /// proposals of step t come from the actor trained on the transitions of steps < t-1).
    /// Chosen by device: on a GPU the CPU is otherwise idle while the device scores; on the CPU
    /// the scoring already uses every core, so the agent trains after scoring.
    #[serde(default)]
    pub overlap_agent: bool,
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
            return Err(Error::Invalid("--episodes and --candidates-per-step must be positive".into()));
        }
        if self.candidates_per_step > MAX_CANDIDATES_PER_STEP {
            return Err(Error::Invalid(format!(
                "--candidates-per-step {} is above the limit of {MAX_CANDIDATES_PER_STEP}",
                self.candidates_per_step
            )));
        }
        if self.episodes > MAX_EPISODES {
            return Err(Error::Invalid(format!("--episodes {} is above the limit of {MAX_EPISODES}", self.episodes)));
        }
        if self.updates_per_episode > 100_000 {
            return Err(Error::Invalid(format!(
                "--updates-per-episode {} is above the limit of 100000",
                self.updates_per_episode
            )));
        }
        Ok(())
    }
}

/// Ceilings on sizes taken from flags: the log and the reward cache grow with their product.
pub const MAX_CANDIDATES_PER_STEP: usize = 4096;
pub const MAX_EPISODES: usize = 10_000_000;

/// One evaluated candidate, as logged (one JSON line each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CandidateRecord {
    /// -1 for the uniform reference policy evaluated before the search.
    pub episode: i64,
    pub index: usize,
    /// The agent's action in [0, 1] per group, before projection. Stored as f64 (each value is
    /// an exact f32) so that the log reads back bit for bit.
    pub action: Vec<f64>,
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

/// Seconds spent in each part of the loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeBreakdown {
    /// Building and scoring candidates (gather, BN re-estimation, forward, feature MSE).
    pub scoring_s: f64,
    /// Proposing actions and training the agent, as far as the loop waited for it (with the
    /// overlap, training hidden behind scoring is not counted here).
    pub agent_s: f64,
    /// Log lines and checkpoints.
    pub bookkeeping_s: f64,
    /// Wall time of the whole loop (the three parts and the rest).
    pub total_s: f64,
}

impl TimeBreakdown {
    pub fn candidates_per_second(&self, evaluated: usize) -> f64 {
        evaluated as f64 / self.total_s.max(1e-9)
    }

    /// `scoring 81% agent 12% bookkeeping 1%`.
    pub fn shares(&self) -> String {
        let t = self.total_s.max(1e-9);
        format!(
            "scoring {:.0}% agent {:.0}% bookkeeping {:.0}%",
            100.0 * self.scoring_s / t,
            100.0 * self.agent_s / t,
            100.0 * self.bookkeeping_s / t
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchOutcome {
    pub best: CandidateRecord,
    pub uniform: CandidateRecord,
    /// Distinct candidates scored (cached repeats excluded).
    pub evaluated: usize,
    pub seconds: f64,
    /// End to end: `evaluated / seconds`.
    pub candidates_per_second: f64,
    pub time: TimeBreakdown,
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

impl AccuracyReport {
    /// A copy on the host.
    pub fn duplicate(&self) -> Result<AccuracyReport> {
        Ok(AccuracyReport {
            images: Tensor::from_vec(self.images.dims(), self.images.to_vec()?)?,
            labels: self.labels.clone(),
        })
    }
}

/// The normalised image batch of a dataset, as one host tensor.
pub fn batch_tensor(ds: &Dataset, norm: &Normalization) -> Result<Tensor> {
    let loader = Loader::try_new(ds, ds.len().max(1), norm)?;
    let b = loader
        .batches(0)
        .next()
        .transpose()?
        .ok_or_else(|| Error::Invalid(format!("dataset {} has no images", ds.name)))?;
    Tensor::from_vec(&b.dims, b.images)
}

/// The reward's fixed batch: `n` images drawn (seeded) from `pool` with their labels dropped,
/// normalised as the baseline was trained (or, for a checkpoint that does not record it, with
/// the pool's channel statistics).
pub fn reward_batch(base: &Model, pool: &Dataset, n: usize, seed: u64) -> Result<Tensor> {
    if pool.is_empty() || n == 0 {
        return Err(Error::Invalid(format!("{}: the reward needs at least one unlabeled image", pool.name)));
    }
    crate::train::check_compatible(base, pool)?;
    let norm = crate::train::normalization_for(base, pool)?;
    let batch = pool.clone().without_labels().random_subset(n.min(pool.len()), seed);
    batch_tensor(&batch, &norm)
}

/// `--candidates-per-step auto`: 8 on the CPU (they run side by side on the thread pool); on a
/// GPU as many as fit in a quarter of its free memory, at 3 live activation maps of the widest
/// layer per image per candidate, between 8 and 64.
pub fn auto_candidates_per_step(dev: &Device, base: &Model, images: usize) -> Result<usize> {
    let Some(free) = dev.free_memory()? else { return Ok(8) };
    let widest = images * base.graph.nodes.iter().map(|n| n.out_shape.iter().product::<usize>()).max().unwrap_or(1);
    let per_candidate = 3 * widest * std::mem::size_of::<f32>();
    Ok((free / 4 / per_candidate.max(1)).clamp(8, 64))
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
        let ce = dev.softmax_cross_entropy(&logits, &labels[start..end])?;
        // An accuracy counted from NaN logits is no result.
        if !ce.loss.is_finite() {
            return Err(Error::Invalid(format!(
                "the {} net's outputs are not finite (loss {} on test images {start}..{end})",
                model.arch.model, ce.loss
            )));
        }
        correct += ce.correct;
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// Randomness of one episode's proposals, derived from (seed, strategy, episode) alone: a
/// resumed search draws exactly what an uninterrupted one would, and random search never
/// replays the DDPG agent's warm-up draws.
fn episode_rng(seed: u64, strategy: Strategy, episode: usize) -> StdRng {
    let stream = match strategy {
        Strategy::Ddpg => 0x5ea4c4,
        Strategy::Random => 0x7a4d0,
    };
    StdRng::seed_from_u64(crate::data::seed_hash(&[seed, stream, episode as u64]))
}

/// Randomness of the agent updates that follow `episode` (replay sampling), a stream of its own
/// so that updating before or during the next step's scoring draws the same batches.
fn update_rng(seed: u64, episode: usize) -> StdRng {
    StdRng::seed_from_u64(crate::data::seed_hash(&[seed, 0xa9e47, episode as u64]))
}

/// What identifies a search's inputs, so a resume cannot mix them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// sha256 of the baseline's architecture and tensors.
    pub checkpoint: String,
    /// sha256 of the unlabeled images (the data and how many were drawn).
    pub images: String,
    /// How many labelled images the accuracy report uses (0: none).
    pub report_images: usize,
}

fn sha256_floats(h: &mut sha2::Sha256, t: &Tensor) -> Result<()> {
    use sha2::Digest;
    for v in t.to_vec()? {
        h.update(v.to_le_bytes());
    }
    Ok(())
}

impl Fingerprint {
    fn of(base: &Model, images: &Tensor, report: Option<&AccuracyReport>) -> Result<Fingerprint> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(serde_json::to_string(&base.arch).expect("arch serialises"));
        for (name, entry) in base.graph.state() {
            h.update(name.as_bytes());
            if let crate::nn::StateRef::F32(t) = entry {
                sha256_floats(&mut h, t)?;
            }
        }
        let checkpoint = format!("{:x}", h.finalize());
        let mut h = Sha256::new();
        h.update(format!("{:?}", images.dims()));
        sha256_floats(&mut h, images)?;
        let images = format!("{:x}", h.finalize());
        Ok(Fingerprint { checkpoint, images, report_images: report.map_or(0, |r| r.labels.len()) })
    }

    /// What differs from `saved`, in words, or None.
    fn differences(&self, saved: &Fingerprint) -> Option<String> {
        let mut what = Vec::new();
        if self.checkpoint != saved.checkpoint {
            what.push("the checkpoint (--ckpt)".to_string());
        }
        if self.images != saved.images {
            what.push("the unlabeled images (--data, --images, --image-size or --seed)".to_string());
        }
        if self.report_images != saved.report_images {
            what.push(format!(
                "the accuracy report (--report-accuracy: {} images now, {} when started)",
                self.report_images, saved.report_images
            ));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// The settings that differ between a search's configuration now and when it was started
/// (`seed was 5, now 99`, `ddpg.actor_lr ...`), the episode count excepted.
fn config_differences(now: &SearchConfig, saved: &SearchConfig) -> Vec<String> {
    let a = serde_json::to_value(SearchConfig { episodes: 0, ..now.clone() }).expect("config serialises");
    let b = serde_json::to_value(SearchConfig { episodes: 0, ..saved.clone() }).expect("config serialises");
    crate::report::json_differences(&b, &a)
}

/// Rewards (and reported accuracies) of every kept-channel vector evaluated so far.
type RewardCache = std::collections::HashMap<Vec<usize>, (f64, Option<f64>)>;

/// The search: the agent, the scorer, the reward cache and the running best. Owns no file.
pub struct Search<'a> {
    cfg: SearchConfig,
    base: &'a Model,
    dev: Device,
    pruner: Pruner,
    scorer: Scorer,
    agent: Agent,
    report: Option<AccuracyReport>,
    fingerprint: Fingerprint,
    cache: RewardCache,
    episodes_done: usize,
    evaluated: usize,
    uniform: Option<CandidateRecord>,
    best: Option<CandidateRecord>,
    time: TimeBreakdown,
    /// Agent updates owed for the last finished episode, run while the next one is scored
    /// (overlap mode only).
    pending_updates: usize,
}

impl<'a> Search<'a> {
    /// Sets up a search on `base` with the unlabeled, normalised `images` the reward uses.
    /// Fails early, before any evaluation, when the budget is out of reach.
    pub fn new(
        base: &'a mut Model,
        dev: &Device,
        images: &Tensor,
        cfg: SearchConfig,
        report: Option<AccuracyReport>,
    ) -> Result<Search<'a>> {
        cfg.validate()?;
        let pruner = Pruner::new(base, cfg.scope, cfg.criterion)?;
        pruner.uniform(&cfg.budget, &cfg.constraints)?;
        let fingerprint = Fingerprint::of(base, images, report.as_ref())?;
        let scorer = Scorer::new(base, dev, images, &pruner.groups, cfg.reward.clone())?;
        let state_vec = observation::observe(base, &pruner, &cfg.budget);
        let mut init_rng = StdRng::seed_from_u64(cfg.seed);
        let agent = Agent::new(cfg.ddpg.clone(), state_vec, pruner.groups.len(), &mut init_rng)?;
        let base: &'a Model = base;
        Ok(Search {
            cfg,
            base,
            dev: dev.clone(),
            pruner,
            scorer,
            agent,
            report,
            fingerprint,
            cache: RewardCache::new(),
            episodes_done: 0,
            evaluated: 0,
            uniform: None,
            best: None,
            time: TimeBreakdown::default(),
            pending_updates: 0,
        })
    }

    pub fn config(&self) -> &SearchConfig {
        &self.cfg
    }
    pub fn pruner(&self) -> &Pruner {
        &self.pruner
    }
    pub fn episodes_done(&self) -> usize {
        self.episodes_done
    }
    pub fn evaluated(&self) -> usize {
        self.evaluated
    }
    pub fn done(&self) -> bool {
        self.episodes_done >= self.cfg.episodes
    }
    pub fn best(&self) -> Option<&CandidateRecord> {
        self.best.as_ref()
    }
    pub fn uniform(&self) -> Option<&CandidateRecord> {
        self.uniform.as_ref()
    }
    pub fn time(&self) -> TimeBreakdown {
        self.time
    }
    /// Adds wall time of the surrounding loop: `bookkeeping` of it went to logs and checkpoints.
    pub fn add_time(&mut self, total: Duration, bookkeeping: Duration) {
        self.time.total_s += total.as_secs_f64();
        self.time.bookkeeping_s += bookkeeping.as_secs_f64();
    }

    /// Scores the uniform reference policy (logged as episode -1): the first thing a new search
    /// does, and the line its plots compare with.
    pub fn start(&mut self) -> Result<CandidateRecord> {
        let uniform = self.pruner.uniform(&self.cfg.budget, &self.cfg.constraints)?;
        let t = Instant::now();
        let (r, top1) = self.evaluate_fresh(std::slice::from_ref(&&uniform))?[0];
        if !r.is_finite() {
            return Err(Error::Invalid(format!(
                "the uniform reference scored reward {r}: the pruned net's outputs are not finite"
            )));
        }
        self.time.scoring_s += t.elapsed().as_secs_f64();
        self.cache.insert(uniform.kept.clone(), (r, top1));
        self.evaluated += 1;
        let lower = self.cfg.constraints.lower;
        // The action that projects to these ratios (all ones when nothing may be pruned).
        let action: Vec<f64> = uniform
            .ratios
            .iter()
            .map(|&x| if lower < 1.0 { ((x - lower) / (1.0 - lower)).clamp(0.0, 1.0) as f32 as f64 } else { 1.0 })
            .collect();
        let rec = CandidateRecord { episode: -1, index: 0, action, policy: uniform, reward: r, top1, cached: false };
        self.uniform = Some(rec.clone());
        Ok(rec)
    }

    /// Continues from a saved state and the log lines written up to it.
    fn resume(&mut self, saved: SavedSearch, log: &[CandidateRecord]) -> Result<()> {
        self.agent.restore(saved.agent)?;
        self.cache = log.iter().map(|r| (r.policy.kept.clone(), (r.reward, r.top1))).collect();
        self.episodes_done = saved.meta.episodes_done;
        self.evaluated = saved.meta.evaluated;
        self.uniform = Some(saved.meta.uniform);
        self.best = saved.meta.best;
        self.time = saved.meta.time;
        self.pending_updates = saved.meta.pending_updates;
        Ok(())
    }

    /// Why `saved` cannot be continued by this search, naming what differs, or Ok.
    fn check_resumable(&self, saved: &saved::SavedMeta) -> Result<()> {
        let mut what = config_differences(&self.cfg, &saved.config);
        if let Some(d) = self.fingerprint.differences(&saved.fingerprint) {
            what.push(d);
        }
        if !what.is_empty() {
            return Err(Error::Invalid(format!(
                "the saved search differs: {}; resume with the same inputs and options (only --episodes may grow) or use a new --out",
                what.join("; ")
            )));
        }
        if saved.episodes_done > self.cfg.episodes {
            return Err(Error::Invalid(format!(
                "{} episodes are already done; ask for at least that many to resume",
                saved.episodes_done
            )));
        }
        Ok(())
    }

    /// Checks every field of a saved state against the log lines it covers (`log`, oldest first)
    /// and this search's net, so that a state that does not describe its log is refused, naming
    /// the field, instead of being taken as it is.
    fn check_saved_state(&self, saved: &saved::SavedMeta, log: &[CandidateRecord]) -> Result<()> {
        let field = |name: &str, msg: String| Error::Invalid(format!("field {name}: {msg}"));
        let channels = &self.pruner.cost.channels;
        let mut seen: std::collections::HashMap<&[usize], f64> = Default::default();
        for (n, r) in log.iter().enumerate() {
            let line = |msg: String| Error::Invalid(format!("candidates.jsonl line {}: {msg}", n + 1));
            let fits = r.policy.kept.len() == channels.len()
                && r.policy.kept.iter().zip(channels).all(|(&k, &c)| (1..=c).contains(&k));
            if !fits {
                return Err(line(format!(
                    "kept channels {:?} do not fit the {} groups of {} ({channels:?} channels)",
                    r.policy.kept,
                    channels.len(),
                    self.base.arch.model
                )));
            }
            if r.action.len() != channels.len() || r.action.iter().any(|a| !(0.0..=1.0).contains(a)) {
                return Err(line(format!("action {:?} is not one value in [0, 1] per group", r.action)));
            }
            if !r.reward.is_finite() {
                return Err(line(format!("reward {} is not finite", r.reward)));
            }
            match seen.get(r.policy.kept.as_slice()) {
                Some(&reward) if !r.cached || reward != r.reward => {
                    return Err(line("repeats an earlier candidate but is not logged as a cached repeat of it".into()))
                }
                None if r.cached => {
                    return Err(line("is logged as cached, but no earlier line has its channels".into()))
                }
                _ => {}
            }
            seen.insert(&r.policy.kept, r.reward);
        }
        let Some((first, rest)) = log.split_first() else {
            return Err(field("log_bytes", "covers no line of the log".into()));
        };
        if first.episode != -1 || first != &saved.uniform {
            return Err(field("uniform", "differs from the uniform reference on the log's first line".into()));
        }
        let k = self.cfg.candidates_per_step;
        if saved.episodes_done.checked_mul(k) != Some(rest.len()) {
            return Err(field(
                "episodes_done",
                format!(
                    "{} episodes of {k} candidates, but the {} bytes of the log it covers (log_bytes) hold {} candidates",
                    saved.episodes_done,
                    saved.log_bytes,
                    rest.len()
                ),
            ));
        }
        for (i, r) in rest.iter().enumerate() {
            if r.episode != (i / k) as i64 || r.index != i % k {
                return Err(Error::Invalid(format!(
                    "candidates.jsonl line {}: episode {} candidate {}, expected episode {} candidate {}",
                    i + 2,
                    r.episode,
                    r.index,
                    i / k,
                    i % k
                )));
            }
        }
        let evaluated = log.iter().filter(|r| !r.cached).count();
        if saved.evaluated != evaluated {
            return Err(field(
                "evaluated",
                format!("{} candidates, but the log holds {evaluated} evaluated (not cached) ones", saved.evaluated),
            ));
        }
        let mut best: Option<&CandidateRecord> = None;
        for r in rest {
            if best.is_none_or(|b| r.reward > b.reward) {
                best = Some(r);
            }
        }
        if saved.best.as_ref() != best {
            return Err(field(
                "best",
                format!(
                    "{}, but the best logged candidate is {}",
                    saved.best.as_ref().map_or("none".into(), |b| format!(
                        "episode {} candidate {} (reward {}, kept {:?})",
                        b.episode, b.index, b.reward, b.policy.kept
                    )),
                    best.map_or("none".into(), |b| format!(
                        "episode {} candidate {} (reward {}, kept {:?})",
                        b.episode, b.index, b.reward, b.policy.kept
                    ))
                ),
            ));
        }
        let t = &saved.time;
        for (name, v) in [
            ("time.scoring_s", t.scoring_s),
            ("time.agent_s", t.agent_s),
            ("time.bookkeeping_s", t.bookkeeping_s),
            ("time.total_s", t.total_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(field(name, format!("{v} is not a number of seconds")));
            }
        }
        let learned_last = saved.episodes_done.checked_sub(1).is_some_and(|e| {
            self.cfg.strategy == Strategy::Ddpg && self.cfg.overlap_agent && e >= self.cfg.ddpg.warmup_episodes
        });
        let pending = if learned_last { self.cfg.updates_per_episode } else { 0 };
        if saved.pending_updates != pending {
            return Err(field(
                "pending_updates",
                format!("{}, but after {} episodes it must be {pending}", saved.pending_updates, saved.episodes_done),
            ));
        }
        Ok(())
    }

    fn snapshot(&self, log_bytes: u64) -> SavedSearch {
        SavedSearch {
            meta: saved::SavedMeta {
                format: String::new(),
                agent_meta: serde_json::Value::Null,
                config: self.cfg.clone(),
                fingerprint: self.fingerprint.clone(),
                episodes_done: self.episodes_done,
                evaluated: self.evaluated,
                time: self.time,
                uniform: self.uniform.clone().expect("a started search has its uniform reference"),
                best: self.best.clone(),
                pending_updates: self.pending_updates,
                log_bytes,
            },
            agent: self.agent.snapshot(),
        }
    }

    /// One episode: propose K actions, project them, score the ones not seen before, let the
    /// agent learn. Returns the episode's records in order.
    pub fn step(&mut self) -> Result<Vec<CandidateRecord>> {
        if self.uniform.is_none() {
            return Err(Error::Invalid("the search must be started (uniform reference) before stepping".into()));
        }
        let episode = self.episodes_done;
        let k = self.cfg.candidates_per_step;
        let learning = self.cfg.strategy == Strategy::Ddpg && episode >= self.cfg.ddpg.warmup_episodes;

        let t = Instant::now();
        let mut rng = episode_rng(self.cfg.seed, self.cfg.strategy, episode);
        let groups = self.pruner.groups.len();
        let actions: Vec<Vec<f32>> = match self.cfg.strategy {
            Strategy::Ddpg => self.agent.explore(episode, k, &mut rng)?,
            Strategy::Random => (0..k).map(|_| (0..groups).map(|_| rng.random_range(0.0..=1.0)).collect()).collect(),
        };
        // Nothing non-finite may reach the log or a saved state: the search stops here, and the
        // state saved before this episode stays resumable.
        for (i, a) in actions.iter().enumerate() {
            if let Some(v) = a.iter().find(|v| !v.is_finite()) {
                return Err(Error::AgentDiverged(format!(
                    "episode {episode}: the actor proposed action {v} (candidate {i}){}",
                    diverged_hint(&self.cfg)
                )));
            }
        }
        let lower = self.cfg.constraints.lower;
        let projected: Vec<Projected> = actions
            .iter()
            .map(|a| {
                let ratios: Vec<f64> = a.iter().map(|&x| lower + (1.0 - lower) * x as f64).collect();
                self.pruner.project(&ratios, &self.cfg.budget, &self.cfg.constraints)
            })
            .collect::<Result<_>>()?;
        let mut fresh: Vec<&Projected> = Vec::new();
        for p in &projected {
            if !self.cache.contains_key(&p.kept) && !fresh.iter().any(|q| q.kept == p.kept) {
                fresh.push(p);
            }
        }
        self.time.agent_s += t.elapsed().as_secs_f64();

        // Score; with the overlap, the agent trains on what it has meanwhile.
        let t = Instant::now();
        let results = if self.cfg.overlap_agent && self.pending_updates > 0 {
            let updates = std::mem::take(&mut self.pending_updates);
            let seed = self.cfg.seed;
            let Search { agent, scorer, base, pruner, report, dev, .. } = self;
            let (scored, waited) = std::thread::scope(|s| {
                let trainer = s.spawn(move || train_agent(agent, updates, update_rng(seed, episode - 1)));
                let scored = evaluate(scorer, base, pruner, report.as_ref(), dev, &fresh);
                let scored_at = Instant::now();
                let trained =
                    trainer.join().unwrap_or_else(|_| Err(Error::Invalid("the agent's thread panicked".into())));
                (scored.and_then(|s| trained.map(|_| s)), scored_at.elapsed())
            });
            self.time.agent_s += waited.as_secs_f64();
            self.time.scoring_s += (t.elapsed() - waited).as_secs_f64();
            scored?
        } else {
            let scored = self.evaluate_fresh(&fresh)?;
            self.time.scoring_s += t.elapsed().as_secs_f64();
            scored
        };
        if let Some((p, (r, _))) = fresh.iter().zip(&results).find(|(_, (r, _))| !r.is_finite()) {
            return Err(Error::AgentDiverged(format!(
                "episode {episode}: a candidate (kept channels {:?}) scored reward {r}; its net's outputs are not finite",
                p.kept
            )));
        }
        self.check_agent(episode)?;
        let new = fresh.len();
        let mut first_use: std::collections::HashSet<Vec<usize>> = Default::default();
        for (p, r) in fresh.iter().zip(results) {
            self.cache.insert(p.kept.clone(), r);
            first_use.insert(p.kept.clone());
        }

        let t = Instant::now();
        let mut records = Vec::with_capacity(k);
        for (i, (a, p)) in actions.into_iter().zip(projected).enumerate() {
            let (reward, top1) = self.cache[&p.kept];
            let cached = !first_use.remove(&p.kept);
            self.agent.remember(Transition { action: a.clone(), reward: reward as f32 });
            let rec = CandidateRecord {
                episode: episode as i64,
                index: i,
                action: a.into_iter().map(f64::from).collect(),
                policy: p,
                reward,
                top1,
                cached,
            };
            if self.best.as_ref().is_none_or(|b| reward > b.reward) {
                self.best = Some(rec.clone());
            }
            records.push(rec);
        }
        if learning {
            if self.cfg.overlap_agent {
                self.pending_updates = self.cfg.updates_per_episode;
            } else {
                train_agent(&mut self.agent, self.cfg.updates_per_episode, update_rng(self.cfg.seed, episode))?;
                self.check_agent(episode)?;
            }
        }
        self.time.agent_s += t.elapsed().as_secs_f64();
        self.evaluated += new;
        self.episodes_done += 1;
        Ok(records)
    }

    /// Errors if the agent's weights went non-finite (during or after `episode`'s updates).
    fn check_agent(&self, episode: usize) -> Result<()> {
        match self.agent.first_non_finite() {
            Some(what) => Err(Error::AgentDiverged(format!(
                "after the updates of episode {episode}, {what}{}",
                diverged_hint(&self.cfg)
            ))),
            None => Ok(()),
        }
    }

    fn evaluate_fresh(&self, fresh: &[&Projected]) -> Result<Vec<(f64, Option<f64>)>> {
        evaluate(&self.scorer, self.base, &self.pruner, self.report.as_ref(), &self.dev, fresh)
    }

    /// The best candidate as a policy and its compact net, with the BN statistics it was scored
    /// with.
    pub fn best_net(&self, source: &str) -> Result<(Policy, Model)> {
        let best = self.best.as_ref().ok_or_else(|| Error::Invalid("the search evaluated no candidate".into()))?;
        let policy = self.pruner.policy(self.base, &best.policy, &self.cfg.constraints, source);
        let keep = self.pruner.keep_indices(&best.policy.kept)?;
        let net = self.scorer.candidate(self.base, &self.pruner.groups, &keep)?;
        Ok((policy, net))
    }

    /// The outcome so far: best candidate, uniform reference, counts, time breakdown.
    pub fn outcome(&self, reward_accuracy_spearman: Option<f64>, best_policy: Policy) -> Result<SearchOutcome> {
        let best = self.best.clone().ok_or_else(|| Error::Invalid("the search evaluated no candidate".into()))?;
        let uniform = self.uniform.clone().ok_or_else(|| Error::Invalid("the search was not started".into()))?;
        Ok(SearchOutcome {
            best,
            uniform,
            evaluated: self.evaluated,
            seconds: self.time.total_s,
            candidates_per_second: self.time.candidates_per_second(self.evaluated),
            time: self.time,
            reward_accuracy_spearman,
            best_policy,
        })
    }
}

/// How to go on after the agent diverged.
fn diverged_hint(cfg: &SearchConfig) -> String {
    format!(
        "; lower --actor-lr ({}) or --critic-lr ({}) and start again in a new --out (the folder still \
         resumes from its last saved state)",
        cfg.ddpg.actor_lr, cfg.ddpg.critic_lr
    )
}

fn train_agent(agent: &mut Agent, updates: usize, mut rng: StdRng) -> Result<()> {
    for _ in 0..updates {
        agent.update(&mut rng)?;
    }
    Ok(())
}

/// Rewards (and reported accuracies) of candidates none of which is in the cache; under `mpirun`
/// each rank scores a share of them (see [`crate::dist::shard`]).
fn evaluate(
    scorer: &Scorer,
    base: &Model,
    pruner: &Pruner,
    report: Option<&AccuracyReport>,
    dev: &Device,
    fresh: &[&Projected],
) -> Result<Vec<(f64, Option<f64>)>> {
    let kept: Vec<Vec<usize>> = fresh.iter().map(|p| p.kept.clone()).collect();
    crate::dist::shard::score(&kept, |share| evaluate_kept(scorer, base, pruner, report, dev, share))
}

/// A scoring rank of a search run under `mpirun` (any rank but 0): scores the candidates rank 0
/// sends until it says stop. Writes nothing.
pub fn serve(
    base: &mut Model,
    dev: &Device,
    images: &Tensor,
    cfg: SearchConfig,
    report: Option<AccuracyReport>,
) -> Result<()> {
    let s = Search::new(base, dev, images, cfg, report)?;
    crate::dist::shard::serve(|kept| evaluate_kept(&s.scorer, s.base, &s.pruner, s.report.as_ref(), &s.dev, kept))
}

/// [`evaluate`] on this process, of candidates given by their kept channels per group.
fn evaluate_kept(
    scorer: &Scorer,
    base: &Model,
    pruner: &Pruner,
    report: Option<&AccuracyReport>,
    dev: &Device,
    kept: &[Vec<usize>],
) -> Result<Vec<(f64, Option<f64>)>> {
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    let keeps: Vec<Vec<Vec<u32>>> = kept.iter().map(|k| pruner.keep_indices(k)).collect::<Result<_>>()?;
    let Some(r) = report else {
        let rewards = scorer.score_batch(base, &pruner.groups, &keeps)?;
        return Ok(rewards.into_iter().map(|x| (x, None)).collect());
    };
    // With the accuracy report each candidate is also classified, so it is built once for both.
    reward::per_candidate(dev, &keeps, |keep| {
        let mut cand = scorer.candidate(base, &pruner.groups, keep)?;
        let reward = scorer.score(&mut cand, keep)?;
        Ok((reward, Some(top1(&mut cand, dev, &r.images, &r.labels)?)))
    })
}
