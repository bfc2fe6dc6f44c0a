//! Where an inference's time goes (`bench infer --layers`): each step of the eval forward (a
//! node, or a conv chain run as one fused conv) timed over repetitions, with its MACs, its rate
//! and its share of the total; then the steps summed by kind (1x1 convs, depthwise 3x3, ...).

use super::cpu::{bench_labels, BenchNet};
use super::machine::Machine;
use super::timing::median;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::models::{cost::node_cost, Model};
use crate::nn::{BackwardPart, Graph, Op};
use crate::tensor::Tensor;
use crate::train::Sgd;
use serde::Serialize;
use std::collections::BTreeMap;

/// What one step of a profiled pass runs: a node, or nodes run as one op.
#[derive(Clone, Debug, Serialize)]
pub struct StepOf {
    /// The first node's name (a fused chain is named by its conv).
    pub layer: String,
    /// The nodes' kinds, `+`-joined (`Conv2d+BatchNorm+ReLU6`).
    pub ops: String,
    /// What `kinds` sums it under.
    pub kind: String,
    /// Per-sample output shape of the step's last node.
    pub output: Vec<usize>,
    /// MACs of the whole batch's forward.
    pub macs: u64,
}

/// Nodes `first..=last` of `graph` as one step, at `batch`.
fn step_of(graph: &Graph, first: usize, last: usize, batch: usize) -> StepOf {
    let nodes = &graph.nodes[first..=last];
    StepOf {
        layer: nodes[0].name.clone(),
        ops: nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>().join("+"),
        kind: kind_of(&nodes[0].op),
        output: nodes[nodes.len() - 1].out_shape.clone(),
        macs: nodes.iter().map(|n| node_cost(&n.op, &n.out_shape).0).sum::<u64>() * batch as u64,
    }
}

/// `net` (`BenchNet::build`: a family with seed 0 for 10 classes, or a checkpoint) and its input
/// at `batch` (element i is `(i mod 251) / 251 - 0.5`), for a profile named `what`.
fn profiled_model(dev: &Device, net: BenchNet, batch: usize, reps: usize, what: &str) -> Result<(Model, Tensor)> {
    if batch == 0 || reps == 0 {
        return Err(Error::Invalid(format!("{what}: the batch and --reps must be at least 1")));
    }
    net.build(dev, batch)
}

/// One step of the forward.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    #[serde(flatten)]
    pub step: StepOf,
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

/// `reps` profiled eval forwards of `net` (after `warmup`) on random data at `batch`, the
/// median of each step.
pub fn layer_profile(dev: &Device, net: BenchNet, batch: usize, warmup: usize, reps: usize) -> Result<LayerProfile> {
    let (mut m, x) = profiled_model(dev, net, batch, reps, "bench infer --layers")?;
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
        let e = by_kind.entry(s.step.kind.clone()).or_default();
        *e = (e.0 + 1, e.1 + s.step.macs, e.2 + s.median_us);
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
        model: m.arch.model.clone(),
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
    let step = step_of(graph, first, last, batch);
    let us = 1e6 * secs;
    StepRow { median_us: us, gflops: gflops(step.macs, us), share: secs / total.max(f64::MIN_POSITIVE), step }
}

impl LayerProfile {
    /// The steps in graph order, then the kinds, slowest first.
    pub fn table(&self) -> String {
        let name_w = self.steps.iter().map(|s| s.step.layer.len()).max().unwrap_or(5).max(5) + 2;
        let ops_w = self.steps.iter().map(|s| s.step.ops.len()).max().unwrap_or(3).max(3) + 2;
        let mut out = format!(
            "{} inference on {}, batch {}: each step's median over {} reps ({})\n",
            self.model, self.device, self.batch, self.reps, self.machine
        );
        out += &format!(
            "{:<name_w$}{:<ops_w$}{:>16}{:>10}{:>10}{:>9}{:>7}\n",
            "layer", "ops", "output", "MMACs", "us", "GFLOP/s", "%"
        );
        for s in &self.steps {
            let shape = s.step.output.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            out += &format!(
                "{:<name_w$}{:<ops_w$}{:>16}{:>10.2}{:>10.1}{:>9.1}{:>7.1}\n",
                s.step.layer,
                s.step.ops,
                shape,
                s.step.macs as f64 / 1e6,
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

/// One step of a profiled training pass (a batch norm -> activation pair runs as one op): its
/// forward, and the backward of its nodes.
#[derive(Clone, Debug, Serialize)]
pub struct TrainStepRow {
    #[serde(flatten)]
    pub step: StepOf,
    pub forward_us: f64,
    /// A convolution's input gradient, or another op's whole backward; with the hand-over of the
    /// gradients to the step's inputs.
    pub backward_us: f64,
    /// A convolution's weight gradient (0 for other ops).
    pub weight_grad_us: f64,
    /// Of the step's total (steps, loss and optimizer).
    pub share: f64,
}

/// The steps of one kind, summed, with each part's rate (a part's FLOPs are the forward's: the
/// input and the weight gradients cost as much as the forward each).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainKindRow {
    pub kind: String,
    pub steps: usize,
    pub macs: u64,
    pub forward_us: f64,
    pub backward_us: f64,
    pub weight_grad_us: f64,
    pub total_us: f64,
    pub forward_gflops: f64,
    pub backward_gflops: f64,
    pub weight_grad_gflops: f64,
    pub share: f64,
}

/// Where a training step's time goes (`bench train --layers`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainProfile {
    pub device: String,
    pub machine: Machine,
    pub model: String,
    pub batch: usize,
    pub reps: usize,
    /// Cross-entropy and its gradient, and clearing the gradients.
    pub loss_us: f64,
    /// The SGD step over every parameter (momentum 0.9, weight decay 5e-4, as `bench train`).
    pub optimizer_us: f64,
    /// The medians summed (a little over an unprofiled step: each part is synchronised).
    pub total_us: f64,
    pub steps: Vec<TrainStepRow>,
    /// Slowest first.
    pub kinds: Vec<TrainKindRow>,
}

/// `reps` profiled training steps of `net` (after `warmup`) on random data at `batch`, as
/// `bench train` runs them (forward, cross-entropy, backward, SGD), the median of each part.
pub fn train_profile(dev: &Device, net: BenchNet, batch: usize, warmup: usize, reps: usize) -> Result<TrainProfile> {
    let (mut m, x) = profiled_model(dev, net, batch, reps, "bench train --layers")?;
    let labels = bench_labels(batch, m.arch.num_classes);
    let mut opt = Sgd::new(0.9, 5e-4, false)?;
    let mut forward: Vec<Vec<f64>> = Vec::new();
    let mut backward: Vec<Vec<f64>> = Vec::new();
    let (mut loss, mut optimizer) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    let mut spans = Vec::new();
    let mut parts = Vec::new();
    for rep in 0..warmup + reps {
        let (trace, f) = m.graph.forward_train_profiled(dev, dev.copy(&x)?)?;
        let started = std::time::Instant::now();
        let ce = dev.softmax_cross_entropy(trace.output(), &labels)?;
        m.graph.zero_grad();
        dev.synchronize()?;
        let loss_s = started.elapsed().as_secs_f64();
        let b = m.graph.backward_profiled(dev, trace, ce.dlogits)?;
        let started = std::time::Instant::now();
        opt.step(dev, &mut m.graph, 0.01)?;
        dev.synchronize()?;
        let optimizer_s = started.elapsed().as_secs_f64();
        if rep < warmup {
            continue;
        }
        if rep == warmup {
            spans = f.iter().map(|t| (t.first, t.last)).collect();
            parts = b.iter().map(|t| (t.node, t.part)).collect();
            forward = vec![Vec::with_capacity(reps); f.len()];
            backward = vec![Vec::with_capacity(reps); b.len()];
        }
        // The same graph runs the same steps every time.
        for (sample, t) in forward.iter_mut().zip(&f) {
            sample.push(t.seconds);
        }
        for (sample, t) in backward.iter_mut().zip(&b) {
            sample.push(t.seconds);
        }
        loss.push(loss_s);
        optimizer.push(optimizer_s);
    }
    let us = |s: Vec<f64>| 1e6 * median(s);
    let mut steps: Vec<TrainStepRow> = spans
        .iter()
        .zip(forward)
        .map(|(&(first, last), f)| TrainStepRow {
            step: step_of(&m.graph, first, last, batch),
            forward_us: us(f),
            backward_us: 0.0,
            weight_grad_us: 0.0,
            share: 0.0,
        })
        .collect();
    let mut step_at = vec![None; m.graph.nodes.len()];
    for (s, &(first, last)) in spans.iter().enumerate() {
        step_at[first..=last].fill(Some(s));
    }
    for (&(node, part), b) in parts.iter().zip(backward) {
        let Some(row) = step_at.get(node).copied().flatten().map(|s| &mut steps[s]) else {
            return Err(Error::Invalid(format!("bench train --layers: node {node} ran no forward step")));
        };
        match part {
            BackwardPart::ConvWeight => row.weight_grad_us += us(b),
            BackwardPart::Rest => row.backward_us += us(b),
        }
    }
    let (loss_us, optimizer_us) = (us(loss), us(optimizer));
    let step_us = |s: &TrainStepRow| s.forward_us + s.backward_us + s.weight_grad_us;
    let total_us = loss_us + optimizer_us + steps.iter().map(step_us).sum::<f64>();
    let share = |t: f64| t / total_us.max(f64::MIN_POSITIVE);
    for s in &mut steps {
        s.share = share(step_us(s));
    }
    let mut by_kind: BTreeMap<String, TrainKindRow> = BTreeMap::new();
    for s in &steps {
        let k = by_kind
            .entry(s.step.kind.clone())
            .or_insert_with(|| TrainKindRow { kind: s.step.kind.clone(), ..Default::default() });
        k.steps += 1;
        k.macs += s.step.macs;
        k.forward_us += s.forward_us;
        k.backward_us += s.backward_us;
        k.weight_grad_us += s.weight_grad_us;
    }
    let mut kinds: Vec<TrainKindRow> = by_kind
        .into_values()
        .map(|mut k| {
            k.total_us = k.forward_us + k.backward_us + k.weight_grad_us;
            k.forward_gflops = gflops(k.macs, k.forward_us);
            k.backward_gflops = gflops(k.macs, k.backward_us);
            k.weight_grad_gflops = gflops(k.macs, k.weight_grad_us);
            k.share = share(k.total_us);
            k
        })
        .collect();
    kinds.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    Ok(TrainProfile {
        device: dev.describe(),
        machine: Machine::this(),
        model: m.arch.model.clone(),
        batch,
        reps,
        loss_us,
        optimizer_us,
        total_us,
        steps,
        kinds,
    })
}

impl TrainProfile {
    /// The steps in graph order, then the kinds, slowest first, then the loss and the optimizer.
    pub fn table(&self) -> String {
        let name_w = self.steps.iter().map(|s| s.step.layer.len()).max().unwrap_or(5).max(5) + 2;
        let ops_w = self.steps.iter().map(|s| s.step.ops.len()).max().unwrap_or(3).max(3) + 2;
        let mut out = format!(
            "{} training step on {}, batch {}: each part's median over {} reps ({})\n\
             (backward: a conv's input gradient or another op's whole backward; wgrad: a conv's weight gradient)\n",
            self.model, self.device, self.batch, self.reps, self.machine
        );
        out += &format!(
            "{:<name_w$}{:<ops_w$}{:>16}{:>10}{:>10}{:>10}{:>10}{:>7}\n",
            "layer", "ops", "output", "MMACs", "fwd us", "bwd us", "wgrad us", "%"
        );
        for s in &self.steps {
            let shape = s.step.output.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            out += &format!(
                "{:<name_w$}{:<ops_w$}{:>16}{:>10.2}{:>10.1}{:>10.1}{:>10.1}{:>7.1}\n",
                s.step.layer,
                s.step.ops,
                shape,
                s.step.macs as f64 / 1e6,
                s.forward_us,
                s.backward_us,
                s.weight_grad_us,
                100.0 * s.share
            );
        }
        out += &format!("total {:.1} us\n\nby kind, slowest first (GFLOP/s of each part):\n", self.total_us);
        out += &format!(
            "{:<24}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}{:>7}{:>7}{:>7}{:>7}\n",
            "kind", "steps", "MMACs", "fwd us", "bwd us", "wgrad us", "total us", "fwd", "bwd", "wgrad", "%"
        );
        for k in &self.kinds {
            out += &format!(
                "{:<24}{:>6}{:>10.2}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>7.0}{:>7.0}{:>7.0}{:>7.1}\n",
                k.kind,
                k.steps,
                k.macs as f64 / 1e6,
                k.forward_us,
                k.backward_us,
                k.weight_grad_us,
                k.total_us,
                k.forward_gflops,
                k.backward_gflops,
                k.weight_grad_gflops,
                100.0 * k.share
            );
        }
        let share = |t: f64| 100.0 * t / self.total_us.max(f64::MIN_POSITIVE);
        out += &format!("{:<24}{:>46.1}{:>35.1}\n", "loss, zero_grad", self.loss_us, share(self.loss_us));
        out += &format!("{:<24}{:>46.1}{:>35.1}\n", "SGD step", self.optimizer_us, share(self.optimizer_us));
        out
    }
}
