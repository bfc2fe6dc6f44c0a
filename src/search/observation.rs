//! The agent's observation: one row of features per prunable group (AMC's per-layer features,
//! for every group at once), each feature min-max normalised across the net, flattened, plus the
//! budget. The agent sees the whole architecture in one observation.

use crate::models::Model;
use crate::nn::Op;
use crate::prune::{Budget, GroupKind, Pruner};

/// Names of the per-group features, in column order.
pub const FEATURES: &[&str] = &[
    "position",
    "kind",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "feature_map",
    "params",
    "flops",
    "flops_share",
];

/// The raw (unnormalised) feature matrix, `groups x FEATURES.len()`.
pub fn raw_features(model: &Model, pruner: &Pruner) -> Vec<Vec<f64>> {
    let g_count = pruner.groups.len();
    let total = pruner.cost.full_macs.max(1) as f64;
    pruner
        .groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let first = g.producers[0];
            let node = &model.graph.nodes[first];
            let (in_c, kernel, stride) = match &node.op {
                Op::Conv(c) => (c.in_channels(), c.kernel(), c.spec.stride),
                _ => (0, 0, 0),
            };
            // Cost that depends on this group: what removing all its channels would save.
            let mut kept = pruner.cost.channels.clone();
            let (m_full, p_full) = pruner.cost.cost(&kept);
            kept[gi] = 0;
            let (m_none, p_none) = pruner.cost.cost(&kept);
            let flops = (m_full - m_none) as f64;
            vec![
                gi as f64 / (g_count.max(2) - 1) as f64,
                if g.kind == GroupKind::Stream { 1.0 } else { 0.0 },
                in_c as f64,
                g.channels as f64,
                kernel as f64,
                stride as f64,
                node.out_shape.get(1).copied().unwrap_or(1) as f64,
                (p_full - p_none) as f64,
                flops,
                flops / total,
            ]
        })
        .collect()
}

/// Min-max normalises each column to [0, 1] (a constant column becomes 0).
pub fn normalise(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    if rows.is_empty() {
        return vec![];
    }
    let cols = rows[0].len();
    let mut out = rows.to_vec();
    for c in 0..cols {
        let (lo, hi) = rows.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| (l.min(r[c]), h.max(r[c])));
        for r in out.iter_mut() {
            r[c] = if hi > lo { (r[c] - lo) / (hi - lo) } else { 0.0 };
        }
    }
    out
}

/// The observation (the agent's state vector): normalised features of every group, row by row, then the FLOPs and params
/// budgets (1 when a cost is unconstrained).
pub fn observe(model: &Model, pruner: &Pruner, budget: &Budget) -> Vec<f32> {
    let mut s: Vec<f32> = normalise(&raw_features(model, pruner)).into_iter().flatten().map(|v| v as f32).collect();
    s.push(budget.flops.unwrap_or(1.0) as f32);
    s.push(budget.params.unwrap_or(1.0) as f32);
    s
}
