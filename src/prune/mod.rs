//! Structured pruning: channel groups derived from the graph, filter ranking, exact budgets,
//! masked gather into a compact net, and the policy files that describe a pruning.

pub mod apply;
pub mod baselines;
pub mod budget;
pub mod groups;
pub mod rank;

pub use budget::{keep_count, Budget, Constraints, CostModel, Projected};
pub use groups::{ChannelGroup, GroupKind, GroupScope};
pub use rank::Criterion;

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::models::Model;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything needed to prune one model: its groups, their cost model and channel rankings.
pub struct Pruner {
    pub groups: Vec<ChannelGroup>,
    pub cost: CostModel,
    pub scope: GroupScope,
    pub criterion: Criterion,
    /// Channel importance per group (higher is kept first), computed once.
    importance: Vec<Vec<f64>>,
    /// Option-A shortcut copies between the groups (with `--streams`): their channels are
    /// ranked and kept jointly (`rank::select_coupled`).
    links: Vec<rank::StreamLink>,
}

impl Pruner {
    pub fn new(model: &Model, scope: GroupScope, criterion: Criterion) -> Result<Pruner> {
        let groups = groups::groups(model, scope)?;
        if groups.is_empty() {
            return Err(Error::Invalid(format!("{} has no prunable channel groups", model.arch.model)));
        }
        let cost = CostModel::new(&model.graph, &groups)?;
        let importance =
            groups.iter().map(|g| rank::importance(&model.graph, g, criterion)).collect::<Result<Vec<_>>>()?;
        let links = rank::stream_links(&model.graph, &groups);
        Ok(Pruner { groups, cost, scope, criterion, importance, links })
    }

    /// The same pruner with every stream group ranked on its own, as before issue 21 (a
    /// shortcut then copies only the channels kept on both of its sides). For comparisons only.
    pub fn with_independent_streams(mut self) -> Pruner {
        self.links.clear();
        self
    }

    /// Channel importance per group under the pruner's criterion (higher is kept first).
    pub fn importance(&self) -> &[Vec<f64>] {
        &self.importance
    }

    /// The shortcut copies between groups whose channels are kept jointly.
    pub fn links(&self) -> &[rank::StreamLink] {
        &self.links
    }

    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).collect()
    }

    /// The channels each group keeps for the given kept counts.
    pub fn keep_indices(&self, kept: &[usize]) -> Result<Vec<Vec<u32>>> {
        if kept.len() != self.groups.len() {
            return Err(Error::Invalid(format!("{} kept counts for {} groups", kept.len(), self.groups.len())));
        }
        Ok(rank::select_coupled(&self.importance, &self.links, kept))
    }

    /// The compact net keeping `kept[g]` channels in group g.
    pub fn prune(&self, model: &Model, dev: &Device, kept: &[usize]) -> Result<Model> {
        apply::apply(model, dev, &self.groups, &self.keep_indices(kept)?)
    }

    pub fn project(&self, ratios: &[f64], budget: &Budget, c: &Constraints) -> Result<Projected> {
        budget::project(&self.cost, ratios, budget, c)
    }

    /// A policy's keep ratios as a feasible pruning: projected onto `budget` when it sets a
    /// limit, else taken as they are (rounded to `c.round` channels).
    pub fn apply_ratios(&self, ratios: &[f64], budget: &Budget, c: &Constraints) -> Result<Projected> {
        if budget.flops.is_some() || budget.params.is_some() {
            return self.project(ratios, budget, c);
        }
        budget::check_ratios(ratios, self.groups.len(), "the keep ratios")?;
        let kept: Vec<usize> =
            ratios.iter().zip(&self.cost.channels).map(|(&r, &ch)| keep_count(r, ch, c.round)).collect();
        let (macs, params) = self.cost.cost(&kept);
        let (flops_fraction, params_fraction) = self.cost.fractions(&kept);
        Ok(Projected {
            ratios: kept.iter().zip(&self.cost.channels).map(|(&k, &ch)| k as f64 / ch as f64).collect(),
            kept,
            macs,
            params,
            flops_fraction,
            params_fraction,
        })
    }

    pub fn uniform(&self, budget: &Budget, c: &Constraints) -> Result<Projected> {
        budget::uniform(&self.cost, budget, c)
    }

    /// A random feasible policy: ratios uniform in [lower, 1], then projected.
    pub fn random(&self, rng: &mut impl Rng, budget: &Budget, c: &Constraints) -> Result<Projected> {
        let r: Vec<f64> = (0..self.groups.len()).map(|_| rng.random_range(c.lower..=1.0)).collect();
        self.project(&r, budget, c)
    }

    /// The policy record written next to a pruned net.
    pub fn policy(&self, model: &Model, p: &Projected, constraints: &Constraints, source: &str) -> Policy {
        Policy {
            model: model.arch.model.clone(),
            scope: self.scope,
            criterion: self.criterion,
            round: constraints.round,
            groups: self.group_names(),
            ratios: p.ratios.clone(),
            kept: p.kept.clone(),
            channels: self.cost.channels.clone(),
            macs: p.macs,
            params: p.params,
            flops_fraction: p.flops_fraction,
            params_fraction: p.params_fraction,
            source: source.to_string(),
        }
    }
}

/// A pruning policy as stored in JSON: one keep ratio per group, and what it costs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Policy {
    pub model: String,
    #[serde(default)]
    pub scope: GroupScope,
    #[serde(default)]
    pub criterion: Criterion,
    #[serde(default = "one")]
    pub round: usize,
    /// Group names, in the order of `ratios`.
    #[serde(default)]
    pub groups: Vec<String>,
    pub ratios: Vec<f64>,
    #[serde(default)]
    pub kept: Vec<usize>,
    #[serde(default)]
    pub channels: Vec<usize>,
    #[serde(default)]
    pub macs: u64,
    #[serde(default)]
    pub params: u64,
    #[serde(default)]
    pub flops_fraction: f64,
    #[serde(default)]
    pub params_fraction: f64,
    /// What produced it: `uniform`, `random`, `lfgcl search`, `user`.
    #[serde(default)]
    pub source: String,
}

fn one() -> usize {
    1
}

/// Ratios read from a user's file: a bare JSON list `[0.5, 0.7, ...]`, or a policy object with
/// at least `ratios` (and optionally `groups`, `scope`, `criterion`, `round`).
#[derive(Clone, Debug)]
pub struct RatioFile {
    pub ratios: Vec<f64>,
    pub groups: Option<Vec<String>>,
    pub scope: Option<GroupScope>,
    pub criterion: Option<Criterion>,
    pub round: Option<usize>,
    /// The model the policy was made for (`model` field of a policy object).
    pub model: Option<String>,
    /// The channels of each group of the net the policy was made for (`channels` field).
    pub channels: Option<Vec<usize>>,
}

/// Roundings a policy file or `--round` may ask for.
pub const ROUNDINGS: [usize; 5] = [1, 2, 4, 8, 16];

pub fn read_ratio_file(path: &Path) -> Result<RatioFile> {
    let bytes = crate::limits::read_bounded(path, crate::limits::MAX_JSON_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::format(path, "not UTF-8 text"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    let as_ratios = |v: &serde_json::Value| -> Result<Vec<f64>> {
        v.as_array()
            .ok_or_else(|| Error::format(path, "ratios must be a list of numbers"))?
            .iter()
            .map(|x| x.as_f64().ok_or_else(|| Error::format(path, format!("ratio {x} is not a number"))))
            .collect()
    };
    if v.is_array() {
        return Ok(RatioFile {
            ratios: as_ratios(&v)?,
            groups: None,
            scope: None,
            criterion: None,
            round: None,
            model: None,
            channels: None,
        });
    }
    let obj =
        v.as_object().ok_or_else(|| Error::format(path, "expected a list of ratios or an object with \"ratios\""))?;
    let ratios = as_ratios(obj.get("ratios").ok_or_else(|| Error::format(path, "no \"ratios\" field"))?)?;
    let field = |k: &str| obj.get(k).cloned();
    let parse = |k: &str| -> Result<Option<serde_json::Value>> { Ok(field(k).filter(|x| !x.is_null())) };
    let groups = match parse("groups")? {
        Some(g) => Some(serde_json::from_value(g).map_err(|e| Error::format(path, format!("groups: {e}")))?),
        None => None,
    };
    let scope = match parse("scope")? {
        Some(s) => Some(serde_json::from_value(s).map_err(|e| Error::format(path, format!("scope: {e}")))?),
        None => None,
    };
    let criterion = match parse("criterion")? {
        Some(s) => Some(serde_json::from_value(s).map_err(|e| Error::format(path, format!("criterion: {e}")))?),
        None => None,
    };
    let round = match parse("round")? {
        None => None,
        Some(r) => match r.as_u64().map(|r| r as usize) {
            Some(r) if ROUNDINGS.contains(&r) => Some(r),
            _ => return Err(Error::format(path, format!("field \"round\" is {r}; it must be one of {ROUNDINGS:?}"))),
        },
    };
    let model = match parse("model")? {
        None => None,
        Some(serde_json::Value::String(m)) => Some(m),
        Some(m) => return Err(Error::format(path, format!("field \"model\" is {m}; expected a model name"))),
    };
    let channels = match parse("channels")? {
        Some(c) => {
            Some(serde_json::from_value(c).map_err(|e| Error::format(path, format!("field \"channels\": {e}")))?)
        }
        None => None,
    };
    Ok(RatioFile { ratios, groups, scope, criterion, round, model, channels })
}
