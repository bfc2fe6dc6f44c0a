//! Exact cost accounting in the pruning papers' convention: FLOPs are the multiply-accumulates
//! of conv and linear layers (batch norm, ReLU, pooling and adds are not counted); params are
//! the weights and biases of conv and linear layers. Batch-norm parameters are counted apart.

use crate::nn::{Graph, Op};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    pub name: String,
    pub kind: &'static str,
    /// Per-sample output shape.
    pub out_shape: Vec<usize>,
    pub macs: u64,
    pub params: u64,
    pub bn_params: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub layers: Vec<LayerCost>,
    pub macs: u64,
    pub params: u64,
    pub bn_params: u64,
}

/// MACs and weights (plus bias) of a conv or linear layer: the one formula every cost in lfgcl
/// uses (`models::cost` per node, `prune::budget` per candidate). Each of the `out` outputs at
/// each of `pixels` positions reads `in / groups` inputs over a `kernel_area` window.
pub fn layer_cost(out: u64, input: u64, groups: u64, kernel_area: u64, pixels: u64, bias: bool) -> (u64, u64) {
    let weights = out * (input / groups.max(1)) * kernel_area;
    (weights * pixels, weights + if bias { out } else { 0 })
}

/// MACs, params and batch-norm params of one node, from its parameter shapes and output shape.
pub fn node_cost(op: &Op, out_shape: &[usize]) -> (u64, u64, u64) {
    match op {
        Op::Conv(c) => {
            let w = c.weight.value.dims();
            let pixels = (out_shape[1] * out_shape[2]) as u64;
            let (macs, params) = layer_cost(
                w[0] as u64,
                c.in_channels() as u64,
                c.spec.groups as u64,
                (w[2] * w[3]) as u64,
                pixels,
                false,
            );
            (macs, params, 0)
        }
        Op::Linear(l) => {
            let w = l.weight.value.dims();
            let (macs, params) = layer_cost(w[0] as u64, w[1] as u64, 1, 1, 1, l.bias.is_some());
            (macs, params, 0)
        }
        Op::BatchNorm(bn) => (0, 0, 2 * bn.channels() as u64),
        Op::Input
        | Op::Relu
        | Op::Relu6
        | Op::Add { .. }
        | Op::Shortcut(_)
        | Op::MaxPool { .. }
        | Op::GlobalAvgPool
        | Op::Flatten => (0, 0, 0),
    }
}

pub fn graph_cost(graph: &Graph) -> Cost {
    let layers: Vec<LayerCost> = graph
        .nodes
        .iter()
        .map(|n| {
            let (macs, params, bn_params) = node_cost(&n.op, &n.out_shape);
            LayerCost {
                name: n.name.clone(),
                kind: n.op.kind(),
                out_shape: n.out_shape.clone(),
                macs,
                params,
                bn_params,
            }
        })
        .collect();
    Cost {
        macs: layers.iter().map(|l| l.macs).sum(),
        params: layers.iter().map(|l| l.params).sum(),
        bn_params: layers.iter().map(|l| l.bn_params).sum(),
        layers,
    }
}

/// `1234567` -> `"1,234,567"`.
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `125485696` -> `"125.49M"`.
pub fn human(v: u64) -> String {
    let f = v as f64;
    if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.2}K", f / 1e3)
    } else {
        v.to_string()
    }
}
