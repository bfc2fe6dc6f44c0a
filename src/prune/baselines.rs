//! The pruning baselines a user would try before a search, each at the same exact budget as the
//! search's candidates (kept counts raised one rounding step at a time while the budget holds,
//! as `budget::project` does), so that every method spends the same FLOPs:
//!
//! - **uniform**: the same keep ratio in every group (the largest that meets the budget), then
//!   the budget's remainder spent one channel at a time on the groups furthest below full width;
//!   channels by L1 norm or FPGM (the pruner's criterion);
//! - **global magnitude**: one threshold over every group's filter norms, each group's norms
//!   divided by their mean first (the "global pruning" of other tools, with their mean
//!   normalisation: raw norms of convs with different fan-in are not comparable), the threshold
//!   the lowest that meets the budget, then the remainder spent on the next channels in score
//!   order that still fit; every group keeps at least the lower bound.

use super::budget::{keep_count, Budget, Constraints, Projected};
use super::Pruner;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a pruned net's kept counts are chosen (`pipeline --methods`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Method {
    /// The LFGCL search (DDPG agent, label-free reward).
    Lfgcl,
    /// Random search with the same number of evaluations as the LFGCL search.
    Random,
    /// Uniform keep ratio, channels by L1 norm.
    Uniform,
    /// Uniform keep ratio, channels by FPGM.
    UniformFpgm,
    /// Global threshold over mean-normalised filter L1 norms.
    Global,
}

impl Method {
    /// The name in tables and reports (`lfgcl`, `random search`, `uniform L1`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Method::Lfgcl => "lfgcl",
            Method::Random => "random search",
            Method::Uniform => "uniform L1",
            Method::UniformFpgm => "uniform FPGM",
            Method::Global => "global magnitude",
        }
    }

    /// The method's name on the command line (`uniform-fpgm`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Method::Lfgcl => "lfgcl",
            Method::Random => "random",
            Method::Uniform => "uniform",
            Method::UniformFpgm => "uniform-fpgm",
            Method::Global => "global",
        }
    }

    /// The folder of its fine-tuning in a pipeline's output (`finetune-<this>`).
    pub fn dir_name(self) -> &'static str {
        match self {
            Method::Random => "random-search",
            m => m.key(),
        }
    }

    /// Whether the method runs a search (and so costs evaluations).
    pub fn searches(self) -> bool {
        matches!(self, Method::Lfgcl | Method::Random)
    }
}

fn meets(budget: &Budget, (fm, fp): (f64, f64)) -> bool {
    budget.flops.is_none_or(|f| fm <= f + 1e-12) && budget.params.is_none_or(|p| fp <= p + 1e-12)
}

fn projected(pruner: &Pruner, kept: Vec<usize>) -> Projected {
    let cm = &pruner.cost;
    let (macs, params) = cm.cost(&kept);
    let (flops_fraction, params_fraction) = cm.fractions(&kept);
    Projected {
        ratios: kept.iter().zip(&cm.channels).map(|(&k, &c)| k as f64 / c as f64).collect(),
        kept,
        macs,
        params,
        flops_fraction,
        params_fraction,
    }
}

/// Uniform pruning at the exact budget: the largest common keep ratio that fits, then the
/// remainder of the budget one rounding step at a time on the groups with the lowest keep
/// ratio (the search's projection of an all-ones action).
pub fn uniform_exact(pruner: &Pruner, budget: &Budget, c: &Constraints) -> Result<Projected> {
    if budget.flops.is_none() && budget.params.is_none() {
        return Err(Error::Budget("uniform pruning needs a FLOPs or params budget".into()));
    }
    pruner.project(&vec![1.0; pruner.groups.len()], budget, c)
}

/// Each group's importance divided by its mean (all zeros stay zeros).
pub fn normalised_importance(pruner: &Pruner) -> Vec<Vec<f64>> {
    pruner
        .importance()
        .iter()
        .map(|imp| {
            let mean = imp.iter().sum::<f64>() / imp.len().max(1) as f64;
            imp.iter().map(|&v| if mean > 0.0 { v / mean } else { v }).collect()
        })
        .collect()
}

/// Global magnitude pruning at the exact budget: one threshold over the mean-normalised
/// importance of every channel of every group (use an L1 pruner for filter norms), at least
/// `c.lower` of each group kept, the lowest threshold that meets the budget, then the next
/// channels in score order that still fit.
pub fn global_threshold(pruner: &Pruner, budget: &Budget, c: &Constraints) -> Result<Projected> {
    // Validates the budget and constraints and says why the budget is out of reach, if it is.
    pruner.uniform(budget, c)?;
    let cm = &pruner.cost;
    let n = cm.channels.len();
    let step = c.round.max(1);
    let floor: Vec<usize> = cm.channels.iter().map(|&ch| keep_count(c.lower, ch, step)).collect();
    let scores = normalised_importance(pruner);
    // Every channel, best first; ties by group then channel, so the order is deterministic.
    let mut all: Vec<(f64, usize)> =
        scores.iter().enumerate().flat_map(|(g, s)| s.iter().map(move |&v| (v, g))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let kept_at = |count: usize| -> Vec<usize> {
        // The first `count` channels of `all`, per group, at least the floor, rounded up.
        let mut k = vec![0usize; n];
        for &(_, g) in &all[..count] {
            k[g] += 1;
        }
        k.iter()
            .enumerate()
            .map(|(g, &x)| (x.max(floor[g]).div_ceil(step) * step).min(cm.channels[g]).max(floor[g]))
            .collect()
    };
    // kept_at is monotone in count: the largest prefix that meets the budget.
    let (mut lo, mut hi) = (0usize, all.len());
    if meets(budget, cm.fractions(&kept_at(hi))) {
        return Ok(projected(pruner, kept_at(hi)));
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if meets(budget, cm.fractions(&kept_at(mid))) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut kept = kept_at(lo);
    // The remainder: the next channels in score order, where they still fit.
    let mut seen = vec![0usize; n];
    for &(_, g) in &all[..lo] {
        seen[g] += 1;
    }
    for &(_, g) in &all[lo..] {
        seen[g] += 1;
        if seen[g] <= kept[g] || kept[g] >= cm.channels[g] {
            continue; // already kept (the floor or the rounding took it)
        }
        let old = kept[g];
        kept[g] = (old + step).min(cm.channels[g]);
        if !meets(budget, cm.fractions(&kept)) {
            kept[g] = old;
        }
    }
    Ok(projected(pruner, kept))
}
