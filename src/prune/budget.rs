//! Exact FLOPs and params of any keep vector without building the net, and the projection of
//! any ratio vector onto a budget.
//!
//! Each conv or linear contributes `out * (in / groups) * k*k * pixels` MACs (the one formula,
//! `models::cost::layer_cost`), where `out` and `in` are either a group's kept count or a fixed
//! width (a depthwise conv's are both its group's): total cost is a sum of such terms, evaluated
//! in O(layers).

use super::groups::ChannelGroup;
use crate::error::{Error, Result};
use crate::models::cost::layer_cost;
use crate::nn::{Graph, Op};
use serde::{Deserialize, Serialize};

/// How a term's input channels split into groups.
#[derive(Clone, Copy, Debug)]
enum TermGroups {
    Fixed(u64),
    /// Depthwise: one group per input channel, whatever the kept count.
    PerChannel,
}

#[derive(Clone, Debug)]
struct Term {
    out_group: Option<usize>,
    out_fixed: u64,
    in_group: Option<usize>,
    in_fixed: u64,
    /// Input features per input channel (H*W after a flatten, else 1).
    in_mult: u64,
    /// Kernel area (1 for a linear).
    kernel_area: u64,
    /// Output pixels (1 for a linear).
    pixels: u64,
    groups: TermGroups,
    bias: bool,
}

/// Cost of the net as a function of the kept channel count of each group.
#[derive(Clone, Debug)]
pub struct CostModel {
    terms: Vec<Term>,
    /// Channel count of each group in the model the cost model was built from.
    pub channels: Vec<usize>,
    pub full_macs: u64,
    pub full_params: u64,
}

impl CostModel {
    /// Builds the cost model of `graph` with `groups` variable and everything else fixed.
    pub fn new(graph: &Graph, groups: &[ChannelGroup]) -> Result<CostModel> {
        let mut terms = Vec::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let (out_c, in_c, kernel_area, pixels, term_groups, bias) = match &node.op {
                Op::Conv(c) => {
                    let k = (c.kernel() * c.kernel()) as u64;
                    let pixels = (node.out_shape[1] * node.out_shape[2]) as u64;
                    let g =
                        if c.is_depthwise() { TermGroups::PerChannel } else { TermGroups::Fixed(c.spec.groups as u64) };
                    (c.out_channels(), c.in_channels(), k, pixels, g, false)
                }
                Op::Linear(l) => (l.out_features(), l.in_features(), 1, 1, TermGroups::Fixed(1), l.bias.is_some()),
                Op::Input
                | Op::BatchNorm(_)
                | Op::Relu
                | Op::Relu6
                | Op::Add { .. }
                | Op::Shortcut(_)
                | Op::MaxPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten => continue,
            };
            // A depthwise conv's outputs and inputs are both its group's channels.
            let dw_group = groups.iter().position(|g| g.depthwise.contains(&i));
            let out_group = groups.iter().position(|g| g.producers.contains(&i)).or(dw_group);
            let conv_in = groups.iter().position(|g| g.conv_consumers.contains(&i)).or(dw_group);
            let lin_in = groups
                .iter()
                .enumerate()
                .find_map(|(gi, g)| g.linear_consumers.iter().find(|(n, _)| *n == i).map(|&(_, m)| (gi, m)));
            let (in_group, in_mult) = match (conv_in, lin_in) {
                (Some(g), _) => (Some(g), 1),
                (None, Some((g, m))) => (Some(g), m as u64),
                (None, None) => (None, 1),
            };
            if let Some((g, m)) = lin_in {
                if groups[g].channels * m != in_c {
                    return Err(Error::Invalid(format!("{}: input features do not match its group", node.name)));
                }
            }
            terms.push(Term {
                out_group,
                out_fixed: out_c as u64,
                in_group,
                in_fixed: in_c as u64,
                in_mult,
                kernel_area,
                pixels,
                groups: term_groups,
                bias,
            });
        }
        let channels: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        let mut cm = CostModel { terms, channels: channels.clone(), full_macs: 0, full_params: 0 };
        let (m, p) = cm.cost(&channels);
        cm.full_macs = m;
        cm.full_params = p;
        Ok(cm)
    }

    /// (MACs, params) with `kept[g]` channels in group g, through `models::cost::layer_cost`.
    pub fn cost(&self, kept: &[usize]) -> (u64, u64) {
        let (mut macs, mut params) = (0u64, 0u64);
        for t in &self.terms {
            let out = t.out_group.map_or(t.out_fixed, |g| kept[g] as u64);
            let inp = t.in_group.map_or(t.in_fixed, |g| kept[g] as u64 * t.in_mult);
            let groups = match t.groups {
                TermGroups::Fixed(g) => g,
                TermGroups::PerChannel => inp,
            };
            let (m, p) = layer_cost(out, inp, groups, t.kernel_area, t.pixels, t.bias);
            macs += m;
            params += p;
        }
        (macs, params)
    }

    /// Cost as fractions of the full model.
    pub fn fractions(&self, kept: &[usize]) -> (f64, f64) {
        let (m, p) = self.cost(kept);
        (m as f64 / self.full_macs.max(1) as f64, p as f64 / self.full_params.max(1) as f64)
    }
}

/// Kept channels for a keep ratio: `ceil(ratio * channels)` rounded up to a multiple of
/// `round`, at least one rounding step (or all channels if fewer), at most all channels.
pub fn keep_count(ratio: f64, channels: usize, round: usize) -> usize {
    let m = round.max(1);
    let raw = ((ratio * channels as f64) - 1e-9).ceil().max(1.0) as usize;
    let rounded = raw.div_ceil(m) * m;
    rounded.clamp(m.min(channels), channels)
}

/// Budget as fractions of the full (unpruned) model's cost; `None` leaves that cost free.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub flops: Option<f64>,
    pub params: Option<f64>,
}

impl Budget {
    pub fn validate(&self) -> Result<()> {
        if self.flops.is_none() && self.params.is_none() {
            return Err(Error::Budget("give a FLOPs or a params budget (a fraction in (0, 1])".into()));
        }
        for (what, v) in [("FLOPs (--flops)", self.flops), ("params (--params)", self.params)] {
            if let Some(v) = v {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(Error::Budget(format!("{what} budget must be a fraction in (0, 1], got {v}")));
                }
            }
        }
        Ok(())
    }
    fn met(&self, (macs, params): (f64, f64)) -> bool {
        self.flops.is_none_or(|f| macs <= f + 1e-12) && self.params.is_none_or(|p| params <= p + 1e-12)
    }
}

/// Bounds on a policy: a keep ratio per group is at least `lower`, and kept counts are rounded
/// up to multiples of `round`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    pub lower: f64,
    pub round: usize,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints { lower: 0.2, round: 1 }
    }
}

impl Constraints {
    pub fn validate(&self) -> Result<()> {
        if !(self.lower > 0.0 && self.lower <= 1.0) {
            return Err(Error::Budget(format!(
                "the lower bound on keep ratios (--lower) must be in (0, 1], got {}",
                self.lower
            )));
        }
        if !super::ROUNDINGS.contains(&self.round) {
            return Err(Error::Invalid(format!("--round must be 1, 2, 4, 8 or 16, got {}", self.round)));
        }
        Ok(())
    }
}

/// A feasible policy: the kept count per group and what it costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projected {
    /// Effective keep ratios `kept / channels`.
    pub ratios: Vec<f64>,
    pub kept: Vec<usize>,
    pub macs: u64,
    pub params: u64,
    pub flops_fraction: f64,
    pub params_fraction: f64,
}

fn kept_for(cm: &CostModel, ratios: &[f64], c: &Constraints) -> Vec<usize> {
    ratios.iter().zip(&cm.channels).map(|(&r, &ch)| keep_count(r, ch, c.round)).collect()
}

fn finish(cm: &CostModel, kept: Vec<usize>) -> Projected {
    let (macs, params) = cm.cost(&kept);
    let (fm, fp) = cm.fractions(&kept);
    Projected {
        ratios: kept.iter().zip(&cm.channels).map(|(&k, &c)| k as f64 / c as f64).collect(),
        kept,
        macs,
        params,
        flops_fraction: fm,
        params_fraction: fp,
    }
}

/// Checks a ratio vector given by a user: one entry per group, each in (0, 1].
pub fn check_ratios(ratios: &[f64], groups: usize, what: &str) -> Result<()> {
    if ratios.len() != groups {
        return Err(Error::Invalid(format!(
            "{what} has {} ratios but the model has {groups} prunable groups",
            ratios.len()
        )));
    }
    if let Some((i, r)) = ratios.iter().enumerate().find(|(_, r)| !(**r > 0.0 && **r <= 1.0)) {
        return Err(Error::Invalid(format!("{what}: ratio {i} is {r}, outside (0, 1]")));
    }
    Ok(())
}

/// The cheapest policy the constraints allow, or a `Budget` error saying why the budget is out
/// of reach.
fn check_reachable(cm: &CostModel, budget: &Budget, c: &Constraints) -> Result<Vec<usize>> {
    budget.validate()?;
    c.validate()?;
    let floor = kept_for(cm, &vec![c.lower; cm.channels.len()], c);
    let (fm, fp) = cm.fractions(&floor);
    if !budget.met((fm, fp)) {
        return Err(Error::Budget(format!(
            "unreachable: with every group at its lower bound ({:.0}% of channels, rounded to multiples of {}) \
the net keeps {:.1}% of its FLOPs and {:.1}% of its params, above the budget (FLOPs {}, params {})",
            100.0 * c.lower,
            c.round,
            100.0 * fm,
            100.0 * fp,
            budget.flops.map_or("free".into(), |f| format!("{:.1}%", 100.0 * f)),
            budget.params.map_or("free".into(), |p| format!("{:.1}%", 100.0 * p)),
        )));
    }
    Ok(floor)
}

/// Projects any ratio vector onto {cost within budget, every ratio >= lower, rounded counts}.
///
/// Ratios are clamped to [lower, 1]; if that already fits, it is returned (rounded). Otherwise
/// the vector is moved along the segment towards the all-lower-bound policy (bisection on the
/// largest feasible step, which keeps the policy's shape), then kept counts are raised again one
/// rounding step at a time, largest shortfall first, while the budget still holds. The feasible
/// set is not convex (costs are bilinear in the widths), so this is a close feasible point, not
/// the Euclidean nearest; it always meets the budget.
pub fn project(cm: &CostModel, ratios: &[f64], budget: &Budget, c: &Constraints) -> Result<Projected> {
    if ratios.len() != cm.channels.len() {
        return Err(Error::Invalid(format!(
            "ratio vector has {} entries for {} groups",
            ratios.len(),
            cm.channels.len()
        )));
    }
    let floor = check_reachable(cm, budget, c)?;
    let target: Vec<f64> = ratios.iter().map(|r| if r.is_finite() { r.clamp(c.lower, 1.0) } else { c.lower }).collect();
    let desired = kept_for(cm, &target, c);
    if budget.met(cm.fractions(&desired)) {
        return Ok(finish(cm, desired));
    }
    let at = |alpha: f64| -> Vec<usize> {
        let r: Vec<f64> = target.iter().map(|&t| c.lower + alpha * (t - c.lower)).collect();
        kept_for(cm, &r, c)
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if budget.met(cm.fractions(&at(mid))) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut kept = at(lo);
    if !budget.met(cm.fractions(&kept)) {
        kept = floor;
    }
    // Greedy refill: spend what is left of the budget on the largest shortfalls.
    let mut blocked = vec![false; kept.len()];
    loop {
        let best = (0..kept.len()).filter(|&g| !blocked[g] && kept[g] < desired[g]).max_by(|&a, &b| {
            let da = (desired[a] - kept[a]) as f64 / cm.channels[a] as f64;
            let db = (desired[b] - kept[b]) as f64 / cm.channels[b] as f64;
            da.total_cmp(&db).then(b.cmp(&a))
        });
        let Some(g) = best else { break };
        let step = c.round.max(1);
        let next = (kept[g] + step).min(desired[g]);
        let old = kept[g];
        kept[g] = next;
        if !budget.met(cm.fractions(&kept)) {
            kept[g] = old;
            blocked[g] = true;
        }
    }
    Ok(finish(cm, kept))
}

/// The largest single keep ratio that, applied to every group, meets the budget.
pub fn uniform(cm: &CostModel, budget: &Budget, c: &Constraints) -> Result<Projected> {
    check_reachable(cm, budget, c)?;
    let n = cm.channels.len();
    if budget.met(cm.fractions(&kept_for(cm, &vec![1.0; n], c))) {
        return Ok(finish(cm, kept_for(cm, &vec![1.0; n], c)));
    }
    let (mut lo, mut hi) = (c.lower, 1.0f64);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if budget.met(cm.fractions(&kept_for(cm, &vec![mid; n], c))) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(finish(cm, kept_for(cm, &vec![lo; n], c)))
}
