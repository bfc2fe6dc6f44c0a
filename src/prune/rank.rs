//! Which channels of a group to keep: L1 norm of filters (Li et al. 2017) or distance to the
//! geometric median of the filters (FPGM, He et al. 2019). Coupled groups score a channel over
//! every conv that writes it.

use super::groups::ChannelGroup;
use crate::error::{Error, Result};
use crate::nn::{Graph, Op};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Sum of absolute filter weights; the smallest are removed.
    #[default]
    L1,
    /// Sum of Euclidean distances to the other filters; those nearest the geometric median
    /// (the most replaceable) are removed.
    Fpgm,
}

/// Every producer's filters for the group's channels: `filters[c]` concatenates channel c's
/// output filter of each producing conv.
fn producer_filters(graph: &Graph, group: &ChannelGroup) -> Result<Vec<Vec<f32>>> {
    let mut filters = vec![Vec::new(); group.channels];
    for &p in &group.producers {
        let Op::Conv(conv) = &graph.nodes[p].op else {
            return Err(Error::Invalid(format!("{} is not a conv", graph.nodes[p].name)));
        };
        let w = conv.weight.value.to_vec()?;
        let per = w.len() / group.channels.max(1);
        for (c, f) in filters.iter_mut().enumerate() {
            f.extend_from_slice(&w[c * per..(c + 1) * per]);
        }
    }
    Ok(filters)
}

/// Importance of every channel of the group (higher is kept first).
pub fn importance(graph: &Graph, group: &ChannelGroup, criterion: Criterion) -> Result<Vec<f64>> {
    let filters = producer_filters(graph, group)?;
    Ok(match criterion {
        Criterion::L1 => filters.iter().map(|f| f.iter().map(|&v| v.abs() as f64).sum()).collect(),
        Criterion::Fpgm => {
            let n = filters.len();
            let mut dist = vec![0.0f64; n];
            for i in 0..n {
                for j in i + 1..n {
                    let d: f64 = filters[i]
                        .iter()
                        .zip(&filters[j])
                        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    dist[i] += d;
                    dist[j] += d;
                }
            }
            dist
        }
    })
}

/// The `keep` most important channels, in ascending index order. Ties keep the lower index,
/// so the choice is deterministic.
pub fn select(importance: &[f64], keep: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..importance.len()).collect();
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    let mut kept: Vec<u32> = order.into_iter().take(keep).map(|i| i as u32).collect();
    kept.sort_unstable();
    kept
}

/// An option-A shortcut between two pruned stream groups: channel `src` of group `from` is
/// copied into channel `dst` of group `to`, for every `(src, dst)` in `pairs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLink {
    pub from: usize,
    pub to: usize,
    pub pairs: Vec<(u32, u32)>,
}

/// The shortcut copies between the given groups: one link per option-A shortcut whose input
/// and output channels are both groups (with `--streams`, each stage transition of a CIFAR
/// ResNet). Inner-only scopes have none.
pub fn stream_links(graph: &Graph, groups: &[ChannelGroup]) -> Vec<StreamLink> {
    let mut links = Vec::new();
    for (to, g) in groups.iter().enumerate() {
        for &s in &g.shortcut_writers {
            let Op::Shortcut(sc) = &graph.nodes[s].op else { continue };
            let Some(from) = groups.iter().position(|a| a.shortcut_readers.contains(&s)) else { continue };
            let pairs: Vec<(u32, u32)> = sc
                .src
                .iter()
                .enumerate()
                .filter(|(_, &src)| src >= 0)
                .map(|(dst, &src)| (src as u32, dst as u32))
                .collect();
            links.push(StreamLink { from, to, pairs });
        }
    }
    links
}

/// The kept channels of every group when streams joined by shortcuts are kept jointly.
///
/// Each group's importance is first normalised by its mean (groups are scored over different
/// convs, so raw norms are not comparable). A channel's joint score is its own plus the joint
/// score of the channel a shortcut copies it into, so a stage's stream is ranked with the
/// channels it carries into the next stages. Groups are then chosen in link order: the
/// channels that shortcuts copy from the kept channels of an earlier group are kept first
/// (the best by joint score if there are more of them than the group keeps), the rest of the
/// group's budget goes to its best other channels. So a kept stream channel always reaches
/// the next stage whenever that stage keeps at least as many channels as it receives.
/// Without links this is [`select`] per group.
pub fn select_coupled(importance: &[Vec<f64>], links: &[StreamLink], kept: &[usize]) -> Vec<Vec<u32>> {
    if links.is_empty() {
        return importance.iter().zip(kept).map(|(imp, &k)| select(imp, k)).collect();
    }
    let n = importance.len();
    let mut joint: Vec<Vec<f64>> = importance
        .iter()
        .map(|imp| {
            let mean = imp.iter().sum::<f64>() / imp.len().max(1) as f64;
            imp.iter().map(|&v| if mean > 0.0 { v / mean } else { v }).collect()
        })
        .collect();
    // Links go forward in the network (a shortcut reads an earlier stream), so adding the
    // downstream scores from the last link to the first sums whole chains.
    let mut order: Vec<&StreamLink> = links.iter().collect();
    order.sort_by_key(|l| (l.to, l.from));
    for l in order.iter().rev() {
        for &(src, dst) in &l.pairs {
            let add = joint[l.to][dst as usize];
            joint[l.from][src as usize] += add;
        }
    }
    let mut keep: Vec<Option<Vec<u32>>> = vec![None; n];
    // Groups that receive copies are chosen after the groups they copy from.
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|&g| links.iter().filter(|l| l.to == g).all(|l| keep[l.from].is_some()))
            .unwrap_or(0); // a cycle cannot come from a feed-forward graph; fall back to order
        let g = pending.remove(ready);
        let mut forced: Vec<u32> = Vec::new();
        for l in links.iter().filter(|l| l.to == g) {
            if let Some(from_keep) = &keep[l.from] {
                for &(src, dst) in &l.pairs {
                    if from_keep.binary_search(&src).is_ok() && !forced.contains(&dst) {
                        forced.push(dst);
                    }
                }
            }
        }
        let k = kept[g].min(joint[g].len());
        let mut chosen: Vec<u32> = if forced.len() >= k {
            let mut f = forced;
            f.sort_by(|&a, &b| joint[g][b as usize].total_cmp(&joint[g][a as usize]).then(a.cmp(&b)));
            f.truncate(k);
            f
        } else {
            let mut masked = joint[g].clone();
            for &c in &forced {
                masked[c as usize] = f64::INFINITY;
            }
            select(&masked, k)
        };
        chosen.sort_unstable();
        keep[g] = Some(chosen);
    }
    keep.into_iter().map(|k| k.expect("every group chosen")).collect()
}
