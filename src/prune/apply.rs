//! Masked channel gather: builds the compact net by keeping, in every tensor a group indexes,
//! only the kept channels (conv weights along output and input channels, depthwise filters, batch-norm parameters
//! and statistics, linear inputs, shortcut channel maps). Runs through `Backend::index_select`,
//! so the same code uses the gather kernel on a GPU.

use super::groups::ChannelGroup;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{Op, StateMut, StateRef};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Per node: which output channels and which input channels (or features) it keeps.
struct NodeKeep {
    out: HashMap<usize, Vec<u32>>,
    input: HashMap<usize, Vec<u32>>,
}

fn check_keep(groups: &[ChannelGroup], keep: &[Vec<u32>]) -> Result<()> {
    if keep.len() != groups.len() {
        return Err(Error::Invalid(format!("{} keep lists for {} groups", keep.len(), groups.len())));
    }
    for (g, k) in groups.iter().zip(keep) {
        if k.is_empty() {
            return Err(Error::Invalid(format!("group {} would keep no channel", g.name)));
        }
        if k.windows(2).any(|w| w[0] >= w[1]) || k.iter().any(|&c| c as usize >= g.channels) {
            return Err(Error::Invalid(format!(
                "group {}: keep indices must be increasing and below {}",
                g.name, g.channels
            )));
        }
    }
    Ok(())
}

fn node_keep(groups: &[ChannelGroup], keep: &[Vec<u32>]) -> NodeKeep {
    let mut out = HashMap::new();
    let mut input = HashMap::new();
    for (g, k) in groups.iter().zip(keep) {
        for &p in g.producers.iter().chain(&g.depthwise).chain(&g.norms).chain(&g.shortcut_writers) {
            out.insert(p, k.clone());
        }
        for &c in &g.conv_consumers {
            input.insert(c, k.clone());
        }
        for &s in &g.shortcut_readers {
            input.insert(s, k.clone());
        }
        for &(l, mult) in &g.linear_consumers {
            let features: Vec<u32> =
                k.iter().flat_map(|&c| (0..mult as u32).map(move |j| c * mult as u32 + j)).collect();
            input.insert(l, features);
        }
    }
    NodeKeep { out, input }
}

/// The compacted channel map of a shortcut: kept outputs, sources renumbered among kept inputs.
fn compact_map(src: &[i32], out_keep: Option<&Vec<u32>>, in_keep: Option<&Vec<u32>>) -> Vec<i32> {
    let outputs: Vec<usize> = match out_keep {
        Some(k) => k.iter().map(|&c| c as usize).collect(),
        None => (0..src.len()).collect(),
    };
    outputs
        .into_iter()
        .map(|o| {
            let s = src[o];
            match (s, in_keep) {
                (s, _) if s < 0 => -1,
                (s, Some(k)) => k.binary_search(&(s as u32)).map_or(-1, |pos| pos as i32),
                (s, None) => s,
            }
        })
        .collect()
}

/// The compact model that keeps `keep[g]` channels of each group `groups[g]`.
pub fn apply(model: &Model, dev: &Device, groups: &[ChannelGroup], keep: &[Vec<u32>]) -> Result<Model> {
    let mut nets = apply_batch(model, dev, groups, std::slice::from_ref(&keep.to_vec()))?;
    Ok(nets.pop().expect("one candidate in, one net out"))
}

/// A gathered tensor, integer or count of every candidate.
enum Value {
    F32(Tensor),
    I64(i64),
    I32(Vec<i32>),
}

/// The compact models of K candidates at once (`keeps[i][g]`: the channels candidate i keeps in
/// group g). Each tensor's output channels are gathered for all K candidates by one
/// `gather_candidates` call (one launch on a GPU); input channels follow per candidate.
pub fn apply_batch(
    model: &Model,
    dev: &Device,
    groups: &[ChannelGroup],
    keeps: &[Vec<Vec<u32>>],
) -> Result<Vec<Model>> {
    let mut node_keeps = Vec::with_capacity(keeps.len());
    for keep in keeps {
        check_keep(groups, keep)?;
        node_keeps.push(node_keep(groups, keep));
    }
    let k = keeps.len();
    let mut values: Vec<HashMap<String, Value>> = (0..k).map(|_| HashMap::new()).collect();
    let owner: HashMap<&str, usize> = model.graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    for (name, entry) in model.graph.state() {
        let (node_name, _) = name.rsplit_once('.').expect("state names are node.field");
        let node = owner[node_name];
        match entry {
            StateRef::F32(t) => {
                // Every candidate prunes the same groups, so a node's role is the same for all.
                let is_linear = matches!(model.graph.nodes[node].op, Op::Linear(_));
                let outs: Option<Vec<&[u32]>> = (!is_linear)
                    .then(|| node_keeps.iter().map(|nk| nk.out.get(&node).map(Vec::as_slice)).collect())
                    .flatten();
                let mut gathered = match outs {
                    // A linear is never a producer; every other per-channel tensor has channels first.
                    Some(lists) => dev.gather_candidates(t, 0, &lists)?,
                    None => (0..k).map(|_| dev.copy(t)).collect::<Result<_>>()?,
                };
                if name.ends_with(".weight") && t.rank() >= 2 {
                    for (g, nk) in gathered.iter_mut().zip(&node_keeps) {
                        if let Some(ins) = nk.input.get(&node) {
                            *g = dev.index_select(g, 1, ins)?;
                        }
                    }
                }
                for (v, g) in values.iter_mut().zip(gathered) {
                    v.insert(name.clone(), Value::F32(g));
                }
            }
            StateRef::I64(n) => values.iter_mut().for_each(|v| {
                v.insert(name.clone(), Value::I64(n));
            }),
            StateRef::I32(src) => {
                for (v, nk) in values.iter_mut().zip(&node_keeps) {
                    v.insert(name.clone(), Value::I32(compact_map(src, nk.out.get(&node), nk.input.get(&node))));
                }
            }
        }
    }
    keeps.iter().zip(values).map(|(keep, v)| assemble(model, groups, keep, v)).collect()
}

/// The compact net of one candidate from its gathered state.
fn assemble(
    model: &Model,
    groups: &[ChannelGroup],
    keep: &[Vec<u32>],
    mut values: HashMap<String, Value>,
) -> Result<Model> {
    let mut widths = model.arch.widths.clone();
    for (g, k) in groups.iter().zip(keep) {
        widths[g.slot] = k.len();
    }
    let arch = model.arch.with_widths(widths)?;
    // Every tensor is overwritten below: no random initialisation.
    let mut graph = arch.build_graph_zeroed()?;
    for (name, slot) in graph.state_mut() {
        let v = values
            .remove(&name)
            .ok_or_else(|| Error::Invalid(format!("pruned net needs {name}, which the original lacks")))?;
        match (slot, v) {
            (StateMut::F32(t), Value::F32(v)) => {
                if t.dims() != v.dims() {
                    return Err(Error::Shape(format!(
                        "gathering {name}: got {:?}, the pruned net expects {:?}",
                        v.dims(),
                        t.dims()
                    )));
                }
                *t = v;
            }
            (StateMut::I64(t), Value::I64(v)) => *t = v,
            (StateMut::I32(t), Value::I32(v)) => {
                if t.len() != v.len() {
                    return Err(Error::Shape(format!("gathering {name}: {} channels, expected {}", v.len(), t.len())));
                }
                *t = v;
            }
            _ => return Err(Error::Invalid(format!("gathering {name}: type changed"))),
        }
    }
    Ok(Model { arch, graph, normalization: model.normalization.clone() })
}

/// The same net with the pruned channels zeroed instead of removed: their producing filters
/// and batch-norm scale and shift are zero (so the channels are exactly zero after batch norm)
/// and shortcuts no longer copy into them. Its outputs equal the compact net's; tests use it to
/// check `apply`. Host (CPU) tensors only.
pub fn mask(model: &Model, groups: &[ChannelGroup], keep: &[Vec<u32>]) -> Result<Model> {
    check_keep(groups, keep)?;
    let mut out = model.duplicate()?;
    for (g, k) in groups.iter().zip(keep) {
        let dropped: Vec<usize> = (0..g.channels).filter(|c| k.binary_search(&(*c as u32)).is_err()).collect();
        for &p in g.producers.iter().chain(&g.depthwise) {
            if let Op::Conv(c) = &mut out.graph.nodes[p].op {
                let per = c.weight.value.numel() / g.channels;
                let w = c.weight.value.as_mut_slice()?;
                for &d in &dropped {
                    w[d * per..(d + 1) * per].fill(0.0);
                }
            }
        }
        for &b in &g.norms {
            if let Op::BatchNorm(bn) = &mut out.graph.nodes[b].op {
                for t in [&mut bn.weight.value, &mut bn.bias.value] {
                    let s = t.as_mut_slice()?;
                    for &d in &dropped {
                        s[d] = 0.0;
                    }
                }
            }
        }
        for &s in &g.shortcut_writers {
            if let Op::Shortcut(sc) = &mut out.graph.nodes[s].op {
                for &d in &dropped {
                    sc.src[d] = -1;
                }
            }
        }
    }
    Ok(out)
}
