//! Where an inference's time goes (`bench infer --layers`): each step of the eval forward (a
//! node, or a conv chain run as one fused conv) timed over repetitions, with its MACs, its rate
//! and its share of the total; then the steps summed by kind (1x1 convs, depthwise 3x3, ...).

use super::cpu::input_for;
use super::machine::Machine;
use super::timing::median;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::models::{cost::node_cost, Arch, Model};
use crate::nn::{Graph, Op};
use serde::Serialize;
use std::collections::BTreeMap;

/// One step of the forward.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// The first node's name (a fused chain is named by its conv).
    pub layer: String,
    /// The nodes' kinds, `+`-joined (`Conv2d+BatchNorm+ReLU6`).
    pub ops: String,
    /// What `kinds` sums it under.
    pub kind: String,
    /// Per-sample output shape of the step's last node.
    pub output: Vec<usize>,
    /// MACs of the whole batch.
    pub macs: u64,
    pub median_us: f64,
    pub gflops: f64,
    /// Of the steps' summed medians.
    pub share: f64,
}

/// The steps of one kind, summed.
#[derive(Clone, Debug, Serialize)]
pub struct KindRow {
    pub kind: String,
    pub steps: usize,
    pub macs: u64,
    pub median_us: f64,
    pub gflops: f64,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerProfile {
    pub device: String,
    pub machine: Machine,
    pub model: String,
    pub batch: usize,
    pub reps: usize,
    /// The steps' medians summed (a little over an unprofiled forward: each step is synchronised).
    pub total_us: f64,
    pub steps: Vec<StepRow>,
    /// Slowest first.
    pub kinds: Vec<KindRow>,
}

/// What a step counts as: convolutions by kernel, stride and grouping, other ops by kind.
fn kind_of(op: &Op) -> String {
    match op {
        Op::Conv(c) => {
            let w = c.weight.value.dims();
            let grouping = if c.is_depthwise() {
                " depthwise".to_string()
            } else if c.spec.groups > 1 {
                format!(" {} groups", c.spec.groups)
            } else {
                String::new()
            };
            format!("conv {}x{} s{}{grouping}", w[2], w[3], c.spec.stride)
        }
        other => other.kind().to_string(),
    }
}

/// `reps` profiled eval forwards of `model` (after `warmup`) on random data at `batch`, the
/// median of each step.
pub fn layer_profile(
    dev: &Device,
    model: &str,
    side: Option<usize>,
    batch: usize,
    warmup: usize,
    reps: usize,
) -> Result<LayerProfile> {
    if batch == 0 || reps == 0 {
        return Err(Error::Invalid("bench infer --layers: the batch and --reps must be at least 1".into()));
    }
    let (c, size) = input_for(model, side)?;
    let mut m = Model::new(Arch::new(model, c, size, 10)?, dev, 0)?;
    let host: Vec<f32> = (0..batch * c * size * size).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
    let x = dev.from_host(&[batch, c, size, size], &host)?;
    for _ in 0..warmup {
        m.graph.forward_profiled(dev, dev.copy(&x)?)?;
    }
    let mut samples: Vec<Vec<f64>> = Vec::new();
    let mut spans = Vec::new();
    for rep in 0..reps {
        let (_, times) = m.graph.forward_profiled(dev, dev.copy(&x)?)?;
        if rep == 0 {
            spans = times.iter().map(|t| (t.first, t.last)).collect();
            samples = vec![Vec::with_capacity(reps); times.len()];
        }
        // The same graph runs the same steps every time.
        for (sample, t) in samples.iter_mut().zip(&times) {
            sample.push(t.seconds);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    let total: f64 = medians.iter().sum();
    let steps: Vec<StepRow> = spans
        .iter()
        .zip(&medians)
        .map(|(&(first, last), &secs)| step_row(&m.graph, first, last, batch, secs, total))
        .collect();
    let mut by_kind: BTreeMap<String, (usize, u64, f64)> = BTreeMap::new();
    for s in &steps {
        let e = by_kind.entry(s.kind.clone()).or_default();
        *e = (e.0 + 1, e.1 + s.macs, e.2 + s.median_us);
    }
    let mut kinds: Vec<KindRow> = by_kind
        .into_iter()
        .map(|(kind, (steps, macs, us))| KindRow {
            kind,
            steps,
            macs,
            median_us: us,
            gflops: gflops(macs, us),
            share: us / (1e6 * total).max(f64::MIN_POSITIVE),
        })
        .collect();
    kinds.sort_by(|a, b| b.median_us.total_cmp(&a.median_us));
    Ok(LayerProfile {
        device: dev.describe(),
        machine: Machine::this(),
        model: model.to_string(),
        batch,
        reps,
        total_us: 1e6 * total,
        steps,
        kinds,
    })
}

fn gflops(macs: u64, us: f64) -> f64 {
    if us > 0.0 {
        2.0 * macs as f64 / (us * 1e3)
    } else {
        0.0
    }
}

fn step_row(graph: &Graph, first: usize, last: usize, batch: usize, secs: f64, total: f64) -> StepRow {
    let nodes = &graph.nodes[first..=last];
    let macs: u64 = nodes.iter().map(|n| node_cost(&n.op, &n.out_shape).0).sum::<u64>() * batch as u64;
    let us = 1e6 * secs;
    StepRow {
        layer: nodes[0].name.clone(),
        ops: nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>().join("+"),
        kind: kind_of(&nodes[0].op),
        output: nodes[nodes.len() - 1].out_shape.clone(),
        macs,
        median_us: us,
        gflops: gflops(macs, us),
        share: secs / total.max(f64::MIN_POSITIVE),
    }
}

impl LayerProfile {
    /// The steps in graph order, then the kinds, slowest first.
    pub fn table(&self) -> String {
        let name_w = self.steps.iter().map(|s| s.layer.len()).max().unwrap_or(5).max(5) + 2;
        let ops_w = self.steps.iter().map(|s| s.ops.len()).max().unwrap_or(3).max(3) + 2;
        let mut out = format!(
            "{} inference on {}, batch {}: each step's median over {} reps ({})\n",
            self.model, self.device, self.batch, self.reps, self.machine
        );
        out += &format!(
            "{:<name_w$}{:<ops_w$}{:>16}{:>10}{:>10}{:>9}{:>7}\n",
            "layer", "ops", "output", "MMACs", "us", "GFLOP/s", "%"
        );
        for s in &self.steps {
            let shape = s.output.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            out += &format!(
                "{:<name_w$}{:<ops_w$}{:>16}{:>10.2}{:>10.1}{:>9.1}{:>7.1}\n",
                s.layer,
                s.ops,
                shape,
                s.macs as f64 / 1e6,
                s.median_us,
                s.gflops,
                100.0 * s.share
            );
        }
        out += &format!("total {:.1} us\n\nby kind, slowest first:\n", self.total_us);
        out += &format!("{:<24}{:>6}{:>10}{:>10}{:>9}{:>7}\n", "kind", "steps", "MMACs", "us", "GFLOP/s", "%");
        for k in &self.kinds {
            out += &format!(
                "{:<24}{:>6}{:>10.2}{:>10.1}{:>9.1}{:>7.1}\n",
                k.kind,
                k.steps,
                k.macs as f64 / 1e6,
                k.median_us,
                k.gflops,
                100.0 * k.share
            );
        }
        out
    }
}
