//! [`CompactOps`] on the CPU: gathering kept channels and the candidates' feature MSE
//! (math in `ops.rs`).

use super::{host, ops, CpuBackend};
use crate::backend::shape::{FeatureMseShape, GatherShape, IndexSelectShape};
use crate::backend::CompactOps;
use crate::error::Result;
use crate::tensor::Tensor;

impl CompactOps for CpuBackend {
    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor> {
        let s = IndexSelectShape::new(x.dims(), axis, index)?;
        Tensor::from_vec(&s.out_dims, ops::index_select(host(x)?, s.outer, s.len, s.inner, index))
    }

    fn gather_candidates(&self, x: &Tensor, axis: usize, index: &[&[u32]]) -> Result<Vec<Tensor>> {
        let s = GatherShape::new(x.dims(), axis, index)?;
        let xs = host(x)?;
        index
            .iter()
            .zip(&s.out_dims)
            .map(|(list, dims)| Tensor::from_vec(dims, ops::index_select(xs, s.outer, s.len, s.inner, list)))
            .collect()
    }

    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>> {
        let s = FeatureMseShape::new(candidates, baseline)?;
        Ok(ops::feature_mse(host(candidates)?, s.k, host(baseline)?))
    }
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
