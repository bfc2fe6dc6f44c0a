//! [`CompactOps`] on the CUDA backend: `index_select` and the batched candidate gather
//! (`kernels/gather.cu`, launched through `gather.rs`), and the K-candidate feature MSE
//! (`kernels/reduce.cu`, launched through `reduce.rs`).

use super::gather::GatherView;
use super::CudaBackend;
use crate::backend::shape::{FeatureMseShape, GatherShape, IndexSelectShape};
use crate::backend::CompactOps;
use crate::error::Result;
use crate::tensor::Tensor;

/// Candidates per batched-gather launch (the kernel's grid y limit).
const MAX_CANDIDATES_PER_LAUNCH: usize = 65_535;

impl CompactOps for CudaBackend {
    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor> {
        let s = IndexSelectShape::new(x.dims(), axis, index)?;
        self.index_select_launch(x, &s, axis, index)
    }

    /// One `gather_batched` launch per 65535 candidates (one plan upload each), then one
    /// device-to-device copy per candidate out of the packed buffer.
    fn gather_candidates(&self, x: &Tensor, axis: usize, index: &[&[u32]]) -> Result<Vec<Tensor>> {
        let s = GatherShape::new(x.dims(), axis, index)?;
        let view = GatherView { outer: s.outer, d0: s.len, d1: 1, inner: s.inner };
        let mut out = Vec::with_capacity(index.len());
        for (lists, dims) in index.chunks(MAX_CANDIDATES_PER_LAUNCH).zip(s.out_dims.chunks(MAX_CANDIDATES_PER_LAUNCH)) {
            let zero: &[u32] = &[0];
            let cols = vec![zero; lists.len()];
            let plan = self.plan_gather(view, lists, &cols)?;
            let packed = self.gather_with_plan(&plan, x)?;
            for (i, d) in dims.iter().enumerate() {
                out.push(self.unpack_range(&packed, plan.offset(i), plan.offset(i + 1), d)?);
            }
        }
        Ok(out)
    }

    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>> {
        let FeatureMseShape { k, m } = FeatureMseShape::new(candidates, baseline)?;
        if k == 0 || m == 0 {
            return Ok(vec![0.0; k]);
        }
        let mut out = self.alloc::<f32>(k)?;
        self.feature_mse_raw(candidates, baseline, k, m, &mut out)?;
        self.download(&out, "feature_mse")
    }
}
