//! A short fine-tuning proxy for a search's top candidates (issue 21, item 4).
//!
//! The label-free reward scores a candidate as it is pruned, before any training. On the
//! under-trained ResNet-56 of issue 21 the pick with the best reward was the worst after
//! fine-tuning, so the reward alone can mislead near the top. The proxy takes the `top`
//! best candidates by reward that are at least `spread` apart, fine-tunes each for `steps` steps of the same label-free
//! distillation the pipeline fine-tunes with (same batches for every candidate, constant learning
//! rate), and keeps the one whose outputs then match the baseline's best: the lowest KL
//! divergence to the baseline's softened outputs on the reward's unlabeled images. No label is
//! read; labelled report images, when given, are only classified for the report.

use super::reward::{scored_candidate, RewardConfig};
use super::{AccuracyReport, CandidateRecord};
use crate::backend::Device;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Mode;
use crate::prune::Pruner;
use crate::tensor::Tensor;
use crate::train::{self, Objective, Sgd, TrainConfig};
use serde::{Deserialize, Serialize};

/// Ceilings on the flags: each candidate costs `steps` training steps.
pub const MAX_TOP: usize = 64;
pub const MAX_STEPS: usize = 100_000;

/// How many top candidates are fine-tuned briefly, for how many steps, and how far apart they
/// must be (`top == 0`: off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    pub top: usize,
    pub steps: usize,
    /// The least mean absolute difference of keep ratios between two compared candidates: a
    /// search's best rewards are mostly one policy with a channel moved here and there (issue
    /// 21's ResNet-56: the 8 best all kept 4-6 of 16 channels in stage 1), and a proxy over
    /// near-copies has nothing to choose between.
    pub spread: f64,
}

impl ProxyConfig {
    pub fn is_off(&self) -> bool {
        self.top == 0
    }

    pub fn validate(&self) -> Result<()> {
        if self.is_off() {
            return Ok(());
        }
        if !(2..=MAX_TOP).contains(&self.top) {
            return Err(Error::Invalid(format!(
                "--proxy-top {}: give 0 (off) or 2 to {MAX_TOP} candidates to compare",
                self.top
            )));
        }
        if !(self.spread.is_finite() && (0.0..=1.0).contains(&self.spread)) {
            return Err(Error::Invalid(format!(
                "--proxy-spread {}: give a keep-ratio distance from 0 to 1",
                self.spread
            )));
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return Err(Error::Invalid(format!("--proxy-steps {}: give 1 to {MAX_STEPS}", self.steps)));
        }
        if crate::dist::world().size() > 1 {
            return Err(Error::Invalid(
                "--proxy-top is not supported under mpirun (its short fine-tunings run on rank 0 alone)".into(),
            ));
        }
        Ok(())
    }
}

/// One candidate the proxy fine-tuned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyScore {
    pub kept: Vec<usize>,
    /// The search's label-free reward (before fine-tuning).
    pub reward: f64,
    /// KL divergence to the baseline's softened outputs on the reward images, after the proxy's
    /// steps (lower is better; the proxy keeps the lowest).
    pub kl_after: f64,
    /// Top-1 on the report images after the proxy's steps (report only; labels never choose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_after: Option<f64>,
    pub chosen: bool,
}

/// The fine-tuning settings the proxy's short runs use (what must match for `--resume` to reuse
/// its scores).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyTraining {
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    pub augment: bool,
    pub seed: u64,
}

impl ProxyTraining {
    pub fn of(ft: &TrainConfig) -> ProxyTraining {
        ProxyTraining {
            batch_size: ft.batch_size,
            lr: ft.lr,
            momentum: ft.momentum,
            weight_decay: ft.weight_decay,
            nesterov: ft.nesterov,
            augment: ft.augment,
            seed: ft.seed,
        }
    }
}

/// What the proxy wrote: its settings and every score, the chosen one marked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyResult {
    pub config: ProxyConfig,
    pub training: ProxyTraining,
    pub temperature: f32,
    pub feature_weight: f32,
    pub scores: Vec<ProxyScore>,
}

impl ProxyResult {
    pub fn chosen(&self) -> Option<&ProxyScore> {
        self.scores.iter().find(|s| s.chosen)
    }
}

/// Mean absolute difference of two candidates' keep ratios.
pub fn distance(a: &CandidateRecord, b: &CandidateRecord) -> f64 {
    let n = a.policy.ratios.len().max(1) as f64;
    a.policy.ratios.iter().zip(&b.policy.ratios).map(|(x, y)| (x - y).abs()).sum::<f64>() / n
}

/// Up to `top` candidates of a search log, best reward first (ties: the earlier one), each
/// different from and at least `spread` (see [`distance`]) away from every one taken before it.
/// The uniform reference and cached repeats are left out.
pub fn top_spread(records: &[CandidateRecord], top: usize, spread: f64) -> Vec<&CandidateRecord> {
    let mut searched: Vec<&CandidateRecord> = records.iter().filter(|r| r.episode >= 0 && !r.cached).collect();
    // Stable: equal rewards keep the log's order.
    searched.sort_by(|a, b| b.reward.total_cmp(&a.reward));
    let mut picked: Vec<&CandidateRecord> = Vec::with_capacity(top.min(searched.len()));
    for r in searched {
        if picked.len() == top {
            break;
        }
        if picked.iter().all(|p| p.policy.kept != r.policy.kept && distance(p, r) >= spread) {
            picked.push(r);
        }
    }
    picked
}

/// What the proxy needs besides the candidates.
pub struct ProxyInputs<'a> {
    /// The unpruned baseline (pruned from, and the distillation teacher).
    pub base: &'a mut Model,
    pub pruner: &'a Pruner,
    /// The reward's normalised unlabeled images, on `dev`.
    pub images: &'a Tensor,
    pub reward: &'a RewardConfig,
    /// Unlabeled training images the short fine-tunings draw their batches from.
    pub train: &'a Dataset,
    /// The fine-tuning's settings: batch size, learning rate (held constant), momentum, weight
    /// decay, augmentation and seed.
    pub finetune: &'a TrainConfig,
    pub temperature: f32,
    /// `--ft-feature-weight` as given (`None`: the fine-tuning's default for each net).
    pub feature_weight: Option<f32>,
    pub report: Option<&'a AccuracyReport>,
}

/// Fine-tunes each candidate for `cfg.steps` steps and scores it; marks the lowest KL as chosen
/// (ties: the better reward, which comes first).
pub fn run(
    dev: &Device,
    inputs: ProxyInputs<'_>,
    candidates: &[&CandidateRecord],
    cfg: &ProxyConfig,
) -> Result<ProxyResult> {
    cfg.validate()?;
    if candidates.is_empty() {
        return Err(Error::Invalid("the fine-tuning proxy has no candidate to compare".into()));
    }
    if inputs.train.is_empty() {
        return Err(Error::Invalid(format!("dataset {} holds no training images for the proxy", inputs.train.name)));
    }
    let ft = inputs.finetune;
    let unlabeled = inputs.train.clone().without_labels();
    let norm = train::normalization_for(inputs.base, &unlabeled)?;
    let loader = train::training_loader(&unlabeled, ft, &norm)?;
    let teacher_logits = inputs.base.graph.forward(dev, dev.copy(inputs.images)?, Mode::Eval)?;
    let mut scores = Vec::with_capacity(candidates.len());
    let mut feature_weight = 0.0f32;
    for (i, rec) in candidates.iter().enumerate() {
        let keep = inputs.pruner.keep_indices(&rec.policy.kept)?;
        let mut net = scored_candidate(inputs.base, dev, &inputs.pruner.groups, &keep, inputs.images, inputs.reward)?;
        net.normalization = Some(norm.clone());
        let mut teacher = inputs.base.duplicate()?;
        let mut objective = Objective::distill(&mut teacher, inputs.temperature, inputs.feature_weight, &net);
        feature_weight = objective.feature_weight();
        let mut opt = Sgd::new(ft.momentum, ft.weight_decay, ft.nesterov)?;
        let mut done = 0;
        'epochs: for epoch in 0.. {
            let at_start = done;
            for batch in loader.batches(epoch) {
                if done == cfg.steps {
                    break 'epochs;
                }
                let s = train::train_step(&mut net, dev, &batch?, &mut objective, &mut opt, ft.lr).map_err(
                    |e| match e {
                        Error::Diverged(m) => {
                            Error::Diverged(format!("fine-tuning proxy, candidate {} step {}: {m}", i + 1, done + 1))
                        }
                        e => e,
                    },
                )?;
                if s.stop {
                    return Err(Error::Interrupted(
                        "the fine-tuning proxy was stopped; run the same command with --resume to redo it".into(),
                    ));
                }
                done += 1;
            }
            if done == at_start {
                return Err(Error::Invalid(format!("dataset {} gave the proxy no batch", inputs.train.name)));
            }
        }
        let student_logits = net.graph.forward(dev, dev.copy(inputs.images)?, Mode::Eval)?;
        let (kl, _) = dev.distill_kl(&student_logits, &teacher_logits, inputs.temperature)?;
        if !kl.is_finite() {
            return Err(Error::Diverged(format!("fine-tuning proxy, candidate {}: its KL is {kl}", i + 1)));
        }
        let top1_after = match inputs.report {
            Some(r) => Some(super::top1(&mut net, dev, &r.images, &r.labels)?),
            None => None,
        };
        scores.push(ProxyScore {
            kept: rec.policy.kept.clone(),
            reward: rec.reward,
            kl_after: kl as f64,
            top1_after,
            chosen: false,
        });
    }
    let best = (0..scores.len())
        .min_by(|&a, &b| scores[a].kl_after.total_cmp(&scores[b].kl_after))
        .expect("at least one candidate");
    scores[best].chosen = true;
    Ok(ProxyResult {
        config: *cfg,
        training: ProxyTraining::of(ft),
        temperature: inputs.temperature,
        feature_weight,
        scores,
    })
}
