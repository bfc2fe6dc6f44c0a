//! Channel groups derived from the network graph.
//!
//! Every node output lives in a "channel space". A conv or linear starts a new space (it
//! produces channels); batch norm, ReLU, pooling, flatten and a depthwise conv (one filter per
//! channel) pass their input's space through;
//! an element-wise add merges the spaces of its two inputs (their channels must stay aligned);
//! an option-A shortcut starts a new space linked to its input only through its channel map.
//! Merging is a union-find, so groups follow from the structure of any model: a block's inner
//! channels (conv1 out, bn1, conv2 in) form a space of their own, and a ResNet stage's residual
//! stream (the stem or the previous shortcut, every conv2 writing into the stream, their BNs and
//! every conv reading the stream) forms one coupled space. A projection shortcut (1x1 conv + BN)
//! is one more producer of the stream it writes, so each stage's stream is a space of its own.
//! A grouped conv (1 < groups < channels) ties its channels in blocks: its input and output
//! spaces are left unpruned.

use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{Graph, Op};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Channels written by one conv and read by the next layers only: free to prune.
    Inner,
    /// Channels tied together by residual adds: pruned with the same indices everywhere.
    Stream,
}

/// A set of channels that must be pruned together, and every tensor they index.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelGroup {
    /// The architecture's name for the width slot (`layer1.0.conv1`, `layer2 stream`, ...).
    pub name: String,
    /// Index into `Arch::widths`.
    pub slot: usize,
    pub kind: GroupKind,
    /// Current number of channels.
    pub channels: usize,
    /// Convs whose output channels these are (output axis of their weights).
    pub producers: Vec<usize>,
    /// Batch norms over these channels.
    pub norms: Vec<usize>,
    /// Depthwise convs over these channels (one filter per channel: output axis of their weights).
    pub depthwise: Vec<usize>,
    /// Convs reading these channels (input axis of their weights).
    pub conv_consumers: Vec<usize>,
    /// Linears reading these channels after a flatten: (node, features per channel).
    pub linear_consumers: Vec<(usize, usize)>,
    /// Shortcuts writing into this space (their output channels are these channels).
    pub shortcut_writers: Vec<usize>,
    /// Shortcuts reading this space (their channel map indexes these channels).
    pub shortcut_readers: Vec<usize>,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Keep the earlier space as the root so groups come out in network order.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

/// What the analysis finds: every space (group or not) by node, and the prunable groups.
pub struct Analysis {
    /// Root space of each node's output (indexed by node); spaces are named by a node index.
    pub space_of: Vec<usize>,
    /// All channel groups that can be pruned, inner and stream, in network order.
    pub groups: Vec<ChannelGroup>,
}

/// Derives channel groups from the graph; the graph's width slots name them.
pub fn analyse(graph: &Graph) -> Result<Analysis> {
    let width_names: Vec<String> = graph.slots.iter().map(|s| s.name.clone()).collect();
    let n = graph.nodes.len();
    let mut uf = UnionFind((0..n).collect());
    // Space of each node before unions: producers start their own, pass-through nodes inherit.
    let mut raw: Vec<usize> = (0..n).collect();
    let mut merged_by_add = vec![false; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        raw[i] = match &node.op {
            Op::Input | Op::Linear(_) | Op::Shortcut(_) => i,
            Op::Conv(c) if c.is_depthwise() => raw[node.inputs[0]],
            Op::Conv(_) => i,
            Op::Add { .. } => {
                let (a, b) = (raw[node.inputs[0]], raw[node.inputs[1]]);
                uf.union(a, b);
                merged_by_add[a] = true;
                merged_by_add[b] = true;
                a
            }
            Op::BatchNorm(_) | Op::Relu | Op::Relu6 | Op::MaxPool { .. } | Op::GlobalAvgPool | Op::Flatten => {
                raw[node.inputs[0]]
            }
        };
    }
    let space_of: Vec<usize> = (0..n).map(|i| uf.find(raw[i])).collect();
    let mut coupled = vec![false; n];
    for (s, _) in merged_by_add.iter().enumerate().filter(|(_, &merged)| merged) {
        let r = uf.find(s);
        coupled[r] = true;
    }
    // Spaces a grouped (not depthwise) conv reads or writes are tied in blocks: not pruned.
    let mut fixed = vec![false; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::Conv(c) = &node.op {
            if c.spec.groups > 1 && !c.is_depthwise() {
                fixed[space_of[node.inputs[0]]] = true;
                fixed[space_of[i]] = true;
            }
        }
    }
    let output_space = space_of[n - 1];
    // Collect members per root space.
    let mut groups: Vec<ChannelGroup> = Vec::new();
    let mut group_of_root: std::collections::HashMap<usize, usize> = Default::default();
    for (i, node) in graph.nodes.iter().enumerate() {
        let root = space_of[i];
        if root == space_of[0] || root == output_space || fixed[root] {
            continue; // the image channels, the logits and grouped channels are never pruned
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = group_of_root.entry(root) {
            let opens = match &node.op {
                Op::Conv(c) => !c.is_depthwise(),
                Op::Shortcut(_) => true,
                Op::Input
                | Op::BatchNorm(_)
                | Op::Relu
                | Op::Relu6
                | Op::Add { .. }
                | Op::MaxPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten
                | Op::Linear(_) => false,
            };
            if !opens {
                continue; // spaces opened by a linear (classifier hidden units) are not grouped
            }
            slot.insert(groups.len());
            groups.push(ChannelGroup {
                name: String::new(),
                slot: usize::MAX,
                kind: if coupled[root] { GroupKind::Stream } else { GroupKind::Inner },
                channels: node.out_shape[0],
                producers: vec![],
                norms: vec![],
                depthwise: vec![],
                conv_consumers: vec![],
                linear_consumers: vec![],
                shortcut_writers: vec![],
                shortcut_readers: vec![],
            });
        }
        let g = &mut groups[group_of_root[&root]];
        match &node.op {
            Op::Conv(c) if c.is_depthwise() => g.depthwise.push(i),
            Op::Conv(_) => {
                g.producers.push(i);
                let slot = node.width_slot.ok_or_else(|| {
                    Error::Invalid(format!("conv {} has no width slot; cannot derive its group", node.name))
                })?;
                if g.slot != usize::MAX && g.slot != slot {
                    return Err(Error::Invalid(format!(
                        "convs writing into one channel space use width slots {} and {slot}",
                        g.slot
                    )));
                }
                g.slot = slot;
            }
            Op::BatchNorm(_) => g.norms.push(i),
            Op::Shortcut(_) => g.shortcut_writers.push(i),
            Op::Input
            | Op::Relu
            | Op::Relu6
            | Op::Add { .. }
            | Op::MaxPool { .. }
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Linear(_) => {}
        }
    }
    // Consumers: the input space of every conv, linear and shortcut.
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(&inp) = node.inputs.first() else { continue };
        let Some(&gi) = group_of_root.get(&space_of[inp]) else { continue };
        let g = &mut groups[gi];
        match &node.op {
            // A depthwise conv is a member of the space it reads (above), not a consumer.
            Op::Conv(c) if c.is_depthwise() => {}
            Op::Conv(_) => g.conv_consumers.push(i),
            Op::Shortcut(_) => g.shortcut_readers.push(i),
            Op::Linear(_) => {
                let features = graph.nodes[inp].out_shape.iter().product::<usize>();
                g.linear_consumers.push((i, features / g.channels.max(1)));
            }
            Op::Input
            | Op::BatchNorm(_)
            | Op::Relu
            | Op::Relu6
            | Op::Add { .. }
            | Op::MaxPool { .. }
            | Op::GlobalAvgPool
            | Op::Flatten => {}
        }
    }
    groups.retain(|g| g.slot != usize::MAX);
    for g in &mut groups {
        g.name = width_names.get(g.slot).cloned().unwrap_or_else(|| format!("slot {}", g.slot));
    }
    groups.sort_by_key(|g| g.producers.first().copied().unwrap_or(usize::MAX));
    Ok(Analysis { space_of, groups })
}

/// Which groups a pruning policy acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupScope {
    /// Only groups that are free to prune (each residual block's inner channels; every conv of
    /// a plain net).
    #[default]
    Inner,
    /// Inner groups plus each residual stage's coupled stream channels.
    All,
}

/// The prunable groups of a model within `scope`, in network order.
pub fn groups(model: &Model, scope: GroupScope) -> Result<Vec<ChannelGroup>> {
    let all = analyse(&model.graph)?.groups;
    Ok(match scope {
        GroupScope::All => all,
        GroupScope::Inner => all.into_iter().filter(|g| g.kind == GroupKind::Inner).collect(),
    })
}
