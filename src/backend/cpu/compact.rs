//! [`CompactOps`] on the CPU: gathering kept channels and the candidates' feature MSE.

use super::{host, CpuBackend};
use crate::backend::shape::{FeatureMseShape, GatherShape, IndexSelectShape};
use crate::backend::CompactOps;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl CompactOps for CpuBackend {
    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor> {
        let s = IndexSelectShape::new(x.dims(), axis, index)?;
        Tensor::from_vec(&s.out_dims, index_select(host(x)?, s.outer, s.len, s.inner, index))
    }

    fn gather_candidates(&self, x: &Tensor, axis: usize, index: &[&[u32]]) -> Result<Vec<Tensor>> {
        let s = GatherShape::new(x.dims(), axis, index)?;
        let xs = host(x)?;
        index
            .iter()
            .zip(&s.out_dims)
            .map(|(list, dims)| Tensor::from_vec(dims, index_select(xs, s.outer, s.len, s.inner, list)))
            .collect()
    }

    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>> {
        let s = FeatureMseShape::new(candidates, baseline)?;
        Ok(feature_mse(host(candidates)?, s.k, host(baseline)?))
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

pub fn index_select(x: &[f32], outer: usize, len: usize, inner: usize, index: &[u32]) -> Vec<f32> {
    let mut y = vec![0.0f32; outer * index.len() * inner];
    if inner == 0 || index.is_empty() {
        return y;
    }
    y.par_chunks_mut(index.len() * inner).enumerate().for_each(|(o, yc)| {
        for (j, &i) in index.iter().enumerate() {
            let src = (o * len + i as usize) * inner;
            yc[j * inner..(j + 1) * inner].copy_from_slice(&x[src..src + inner]);
        }
    });
    y
}

pub fn feature_mse(candidates: &[f32], k: usize, baseline: &[f32]) -> Vec<f32> {
    let m = baseline.len();
    if m == 0 {
        return vec![0.0; k];
    }
    candidates
        .par_chunks(m)
        .map(|c| {
            let s: f64 = c.iter().zip(baseline).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
            (s / m as f64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_candidates_is_index_select_per_candidate() {
        let be = CpuBackend::new();
        let x = Tensor::from_vec(&[3, 4, 2], (0..24).map(|v| v as f32).collect()).expect("x");
        let lists: [&[u32]; 3] = [&[3, 0], &[], &[1, 1, 2]];
        let got = be.gather_candidates(&x, 1, &lists).expect("gather");
        assert_eq!(got.len(), 3);
        for (g, l) in got.iter().zip(lists) {
            let want = be.index_select(&x, 1, l).expect("index_select");
            assert_eq!(g.dims(), want.dims());
            assert_eq!(g.as_slice().expect("host"), want.as_slice().expect("host"));
        }
        assert!(be.gather_candidates(&x, 1, &[]).expect("no candidates").is_empty());
    }
}
