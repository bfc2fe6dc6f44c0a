//! Masked channel gather: builds the compact net by keeping, in every tensor a group indexes,
//! only the kept channels (conv weights along output and input channels, batch-norm parameters
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
        for &p in g.producers.iter().chain(&g.norms).chain(&g.shortcut_writers) {
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
    check_keep(groups, keep)?;
    let nk = node_keep(groups, keep);
    let mut widths = model.arch.widths.clone();
    for (g, k) in groups.iter().zip(keep) {
        widths[g.slot] = k.len();
    }
    let arch = model.arch.with_widths(widths)?;
    // Gather every tensor of the old state into the new shapes.
    enum Value {
        F32(Tensor),
        I64(i64),
        I32(Vec<i32>),
    }
    let mut values: HashMap<String, Value> = HashMap::new();
    let owner: HashMap<&str, usize> = model.graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    for (name, entry) in model.graph.state() {
        let (node_name, _) = name.rsplit_once('.').expect("state names are node.field");
        let node = owner[node_name];
        let value = match entry {
            StateRef::F32(t) => {
                let mut t = match nk.out.get(&node) {
                    // A linear is never a producer; every other per-channel tensor has channels first.
                    Some(k) if !matches!(model.graph.nodes[node].op, Op::Linear(_)) => dev.index_select(t, 0, k)?,
                    _ => dev.copy(t)?,
                };
                if let Some(k) = nk.input.get(&node) {
                    if name.ends_with(".weight") && t.rank() >= 2 {
                        t = dev.index_select(&t, 1, k)?;
                    }
                }
                Value::F32(t)
            }
            StateRef::I64(v) => Value::I64(v),
            StateRef::I32(src) => Value::I32(compact_map(src, nk.out.get(&node), nk.input.get(&node))),
        };
        values.insert(name, value);
    }
    let mut graph = arch.build_graph(0)?;
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
        for &p in &g.producers {
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
