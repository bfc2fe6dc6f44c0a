//! Reports: JSON result files, JSON-lines logs, SVG plots, and the correlations used to judge
//! the label-free reward against accuracy.

pub mod json;
pub mod svg;

pub use json::{json_differences, read_json, read_jsonl, write_json, JsonlWriter};
pub use svg::{nice_ticks, BarChart, LinePlot, ScatterPlot, Series, SeriesStyle, PALETTE};

/// Pearson correlation of paired samples. None when the lengths differ, there are fewer than
/// 2 pairs, a value is not finite, or either side has zero variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        (sxy, sxx, syy) = (sxy + dx * dy, sxx + dx * dx, syy + dy * dy);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman rank correlation: Pearson on ranks, tied values sharing their average rank.
/// None in the same cases as [`pearson`] (all-equal values have zero rank variance).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// 1-based ranks, ties given the mean of the ranks they span.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let j = (i..order.len()).find(|&j| v[order[j]] != v[order[i]]).unwrap_or(order.len());
        let rank = (i + j + 1) as f64 / 2.0; // mean of ranks i+1 ..= j
        order[i..j].iter().for_each(|&k| r[k] = rank);
        i = j;
    }
    r
}
