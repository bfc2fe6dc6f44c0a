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
