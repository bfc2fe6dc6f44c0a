//! The label-free reward. On a fixed batch of unlabeled images the baseline's features are
//! computed once; a candidate's reward is minus the mean squared difference between its
//! features and the baseline's, divided by the variance of the baseline's features, averaged
//! over the chosen feature taps. It is 0 for the unpruned net and falls as pruning changes what
//! the net computes. No label is read.

use crate::backend::{Device, DeviceKind};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{Mode, Op};
use crate::prune::apply::apply;
use crate::prune::groups::analyse;
use crate::prune::ChannelGroup;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which features the reward compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taps {
    /// The features that feed the classifier (global average pool of a ResNet, last hidden
    /// layer of VGG).
    pub penultimate: bool,
    pub logits: bool,
    /// The output of every stage (residual stage or pooling stage).
    pub stages: bool,
}

impl Default for Taps {
    fn default() -> Self {
        Taps { penultimate: true, logits: false, stages: false }
    }
}

impl Taps {
    /// Parses a comma-separated list: `penultimate`, `logits`, `stages`.
    pub fn parse(s: &str) -> Result<Taps> {
        let mut t = Taps { penultimate: false, logits: false, stages: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "penultimate" => t.penultimate = true,
                "logits" => t.logits = true,
                "stages" => t.stages = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown reward tap '{other}' (expected penultimate, logits, stages)"
                    )))
                }
            }
        }
        if !(t.penultimate || t.logits || t.stages) {
            return Err(Error::Invalid("choose at least one reward tap".into()));
        }
        Ok(t)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardConfig {
    pub taps: Taps,
    /// Re-estimate every batch norm's statistics on the unlabeled batch before scoring. On by
    /// default: over 400 random ResNet-20 candidates at 50% FLOPs, the Spearman correlation of
    /// reward and top-1 before fine-tuning rose from 0.38 to 0.90 (Fashion-MNIST) and from 0.45
    /// to 0.59 (synthetic) with it (`scripts/search_experiments.sh`, part B).
    pub recalibrate_bn: bool,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig { taps: Taps::default(), recalibrate_bn: true }
    }
}

/// One compared feature map of the baseline.
struct Tap {
    node: usize,
    baseline: Tensor,
    /// Per-channel sum of squares of the baseline (what dropping a channel costs).
    channel_energy: Vec<f64>,
    /// Variance of the baseline's features (over every element).
    variance: f64,
    /// Group whose channels index this tap's channel axis, if it is pruned.
    group: Option<usize>,
}

/// Scores candidates against the baseline's features on a fixed unlabeled batch.
pub struct Scorer {
    dev: Device,
    images: Tensor,
    taps: Vec<Tap>,
    cfg: RewardConfig,
}

/// Runs every batch norm in training mode once over `images` with momentum 1, so the running
/// statistics become this batch's (PyTorch's unbiased variance), then restores the momentum.
pub fn recalibrate_bn(model: &mut Model, dev: &Device, images: &Tensor) -> Result<()> {
    let mut saved = Vec::new();
    for node in &mut model.graph.nodes {
        if let Op::BatchNorm(bn) = &mut node.op {
            saved.push(bn.momentum);
            bn.momentum = 1.0;
        }
    }
    let result = model.graph.forward(dev, dev.copy(images)?, Mode::Train).map(|_| ());
    let mut it = saved.into_iter();
    for node in &mut model.graph.nodes {
        if let Op::BatchNorm(bn) = &mut node.op {
            bn.momentum = it.next().expect("one momentum per batch norm");
        }
    }
    result
}

/// The compact net that keeps `keep[g]` channels of each group, with the batch-norm statistics
/// the reward `cfg` scores it with (re-estimated on `images`, the normalised unlabeled batch
/// already on `dev`, when the reward does so).
pub fn scored_candidate(
    base: &Model,
    dev: &Device,
    groups: &[ChannelGroup],
    keep: &[Vec<u32>],
    images: &Tensor,
    cfg: &RewardConfig,
) -> Result<Model> {
    let mut cand = apply(base, dev, groups, keep)?;
    if cfg.recalibrate_bn {
        recalibrate_bn(&mut cand, dev, images)?;
    }
    Ok(cand)
}

/// `f` of every candidate: side by side on the CPU's thread pool (each candidate's forward also
/// uses the pool), one after another on a device's single stream.
pub fn per_candidate<T: Sync, R: Send>(
    dev: &Device,
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync + Send,
) -> Result<Vec<R>> {
    if dev.kind() == DeviceKind::Cpu {
        use rayon::prelude::*;
        items.par_iter().with_max_len(1).map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}

impl Scorer {
    /// `images`: the normalised unlabeled batch `[N, C, H, W]` (any device). `groups`: the
    /// groups candidates may prune (to know which taps lose channels).
    pub fn new(
        base: &mut Model,
        dev: &Device,
        images: &Tensor,
        groups: &[ChannelGroup],
        cfg: RewardConfig,
    ) -> Result<Scorer> {
        let images = dev.to_device(images)?;
        let mut nodes = Vec::new();
        if cfg.taps.stages {
            nodes.extend(base.stage_outputs());
        }
        if cfg.taps.penultimate {
            nodes.push(base.penultimate_node());
        }
        if cfg.taps.logits {
            nodes.push(base.graph.output_index());
        }
        nodes.dedup();
        let analysis = analyse(&base.graph)?;
        let (_, feats) = base.graph.forward_taps(dev, dev.copy(&images)?, Mode::Eval, &nodes)?;
        let mut taps = Vec::with_capacity(nodes.len());
        for (node, baseline) in nodes.into_iter().zip(feats) {
            let host = baseline.to_vec()?;
            let n = baseline.dims()[0];
            let c = baseline.dims()[1];
            let per = host.len() / (n * c).max(1);
            let mut energy = vec![0.0f64; c];
            for i in 0..n {
                for (ch, e) in energy.iter_mut().enumerate() {
                    *e += host[(i * c + ch) * per..(i * c + ch + 1) * per]
                        .iter()
                        .map(|&v| (v as f64).powi(2))
                        .sum::<f64>();
                }
            }
            let count = host.len() as f64;
            let mean = host.iter().map(|&v| v as f64).sum::<f64>() / count;
            let variance = host.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / count;
            if !variance.is_finite() {
                return Err(Error::Invalid(format!(
                    "the baseline's features at {} are not finite on these images: the checkpoint's weights or the images hold NaN or infinite values",
                    base.graph.nodes[node].name
                )));
            }
            if variance <= 0.0 {
                return Err(Error::Invalid(format!(
                    "the baseline's features at {} are constant on these images; the reward needs varied images",
                    base.graph.nodes[node].name
                )));
            }
            let space = analysis.space_of[node];
            let group = groups.iter().position(|g| g.producers.first().is_some_and(|&p| analysis.space_of[p] == space));
            taps.push(Tap { node, baseline, channel_energy: energy, variance, group });
        }
        Ok(Scorer { dev: dev.clone(), images, taps, cfg })
    }

    /// The compact candidate that keeps `keep[g]` channels of each group, with the batch-norm
    /// statistics it is scored with (re-estimated on the unlabeled batch when the reward does
    /// so). The one place where "prune, then re-estimate BN as it was scored" happens: the
    /// search's scoring, its saved pruned net and the pipeline's "before fine-tuning" accuracy
    /// all use it.
    pub fn candidate(&self, base: &Model, groups: &[ChannelGroup], keep: &[Vec<u32>]) -> Result<Model> {
        scored_candidate(base, &self.dev, groups, keep, &self.images, &self.cfg)
    }

    /// The reward of a candidate built by [`Scorer::candidate`] with the same `keep`.
    pub fn score(&self, candidate: &mut Model, keep: &[Vec<u32>]) -> Result<f64> {
        let nodes: Vec<usize> = self.taps.iter().map(|t| t.node).collect();
        let (_, feats) = candidate.graph.forward_taps(&self.dev, self.dev.copy(&self.images)?, Mode::Eval, &nodes)?;
        let mut total = 0.0f64;
        for (tap, f) in self.taps.iter().zip(feats) {
            let full = tap.baseline.numel() as f64;
            let nmse = match tap.group {
                Some(g) if keep[g].len() < tap.channel_energy.len() => {
                    // Kept channels against the baseline's same channels, dropped ones cost
                    // their whole energy (a dropped channel is an exact zero).
                    let base_kept = self.dev.index_select(&tap.baseline, 1, &keep[g])?;
                    let mse_kept = self.dev.feature_mse(&f.reshape(&[1, base_kept.numel()])?, &base_kept)?[0] as f64;
                    let kept_count = base_kept.numel() as f64;
                    let dropped: f64 = (0..tap.channel_energy.len())
                        .filter(|c| keep[g].binary_search(&(*c as u32)).is_err())
                        .map(|c| tap.channel_energy[c])
                        .sum();
                    (mse_kept * kept_count + dropped) / full / tap.variance
                }
                _ => {
                    self.dev.feature_mse(&f.reshape(&[1, tap.baseline.numel()])?, &tap.baseline)?[0] as f64
                        / tap.variance
                }
            };
            total += nmse;
        }
        Ok(-total / self.taps.len() as f64)
    }

    /// Rewards of K candidates (`keeps[i]` for candidate i), equal bit for bit to scoring them
    /// one by one. On the CPU the candidates run side by side on the thread pool (each forward
    /// also uses the pool); on a GPU their weights are gathered together (`apply_batch`) and
    /// their forward passes queued one after another on the device's stream.
    pub fn score_batch(&self, base: &Model, groups: &[ChannelGroup], keeps: &[Vec<Vec<u32>>]) -> Result<Vec<f64>> {
        if self.dev.kind() == DeviceKind::Cpu {
            return per_candidate(&self.dev, keeps, |keep| {
                let mut cand = self.candidate(base, groups, keep)?;
                self.score(&mut cand, keep)
            });
        }
        // On a device: every tensor of all K candidates gathered in one launch each, then the
        // candidates' BN re-estimation and forward passes queued back to back.
        let nets = crate::prune::apply::apply_batch(base, &self.dev, groups, keeps)?;
        nets.into_iter()
            .zip(keeps)
            .map(|(mut cand, keep)| {
                if self.cfg.recalibrate_bn {
                    recalibrate_bn(&mut cand, &self.dev, &self.images)?;
                }
                self.score(&mut cand, keep)
            })
            .collect()
    }
}
