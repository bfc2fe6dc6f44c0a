//! Launch helpers for `kernels/reduce.cu`: the feature MSE of K candidates against one baseline
//! in one launch (plus a fixed-order final pass), deterministic.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::FeatureMseShape;
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr};

const FILE: &str = "reduce.cu";

/// Mirror of `SqDiffParams` in reduce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SqDiffParams {
    cand: u64,
    base: u64,
    partial: u64,
    grad: u64,
    m: i64,
    chunk: i64,
    k: i32,
    blocks: i32,
    grad_scale: f32,
    vec4: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for SqDiffParams {}
assert_layout!(SqDiffParams, size 64, cand @ 0, base @ 8, partial @ 16, grad @ 24, m @ 32, chunk @ 40, k @ 48, blocks @ 52, grad_scale @ 56, vec4 @ 60);

/// Mirror of `SqDiffFinalParams` in reduce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SqDiffFinalParams {
    partial: u64,
    out: u64,
    m: i64,
    k: i32,
    blocks: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for SqDiffFinalParams {}
assert_layout!(SqDiffFinalParams, size 32, partial @ 0, out @ 8, m @ 16, k @ 24, blocks @ 28);

/// Blocks per candidate and elements per block for M features: about 16K elements per block,
/// at most 1024 blocks, chunk a multiple of 4. A function of M only: the same reduction tree,
/// hence the same bits, on every GPU.
pub(crate) fn sqdiff_layout(m: usize) -> (usize, usize) {
    let blocks = m.div_ceil(16_384).clamp(1, 1024);
    let chunk = m.div_ceil(blocks).div_ceil(4).max(1) * 4;
    (m.div_ceil(chunk).max(1), chunk)
}

impl CudaBackend {
    /// Stage 1 + stage 2 of the squared-difference mean into `out[k]`; optionally also writes
    /// `grad = scale * (cand - base)`. `cand` holds k rows of m, `base` m.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sqdiff_launch(
        &self,
        cand: &Tensor,
        base: &Tensor,
        k: usize,
        m: usize,
        grad: Option<(&mut CudaSlice<f32>, f32)>,
        out: &mut CudaSlice<f32>,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        if cand.numel() != k * m || base.numel() != m || out.len() < k {
            return Err(Error::Shape(format!("{}: inconsistent feature-MSE buffers", what())));
        }
        if k > 65_535 {
            return Err(Error::Invalid(format!("{}: at most 65535 candidates per launch, got {k}", what())));
        }
        fits_i32(k, "feature_mse candidates")?;
        let (blocks, chunk) = sqdiff_layout(m);
        let pc = self.ptr(self.dev(cand, "feature_mse candidates")?);
        let pb = self.ptr(self.dev(base, "feature_mse baseline")?);
        let mut partial = self.alloc::<f32>(k * blocks)?;
        let (pg, scale) = match grad {
            Some((g, s)) => (self.ptr_mut(g), s),
            None => (0, 0.0),
        };
        let p = SqDiffParams {
            cand: pc,
            base: pb,
            partial: self.ptr_mut(&mut partial),
            grad: pg,
            m: m as i64,
            chunk: chunk as i64,
            k: k as i32,
            blocks: blocks as i32,
            grad_scale: scale,
            vec4: m.is_multiple_of(4) as i32,
        };
        Launch::new(FILE, "sqdiff_partial", (blocks as u32, k as u32, 1), 256).run(
            &self.kernels,
            &self.stream,
            &p,
            what,
        )?;
        let f = SqDiffFinalParams {
            partial: self.ptr(&partial),
            out: self.ptr_mut(out),
            m: m as i64,
            k: k as i32,
            blocks: blocks as i32,
        };
        Launch::new(FILE, "sqdiff_final", (k as u32, 1, 1), 256).run(&self.kernels, &self.stream, &f, what)
    }

    /// `[K, M]` candidates against an `M`-element baseline (the CPU backend's contract).
    pub fn feature_mse_into(&self, candidates: &Tensor, baseline: &Tensor, out: &mut CudaSlice<f32>) -> Result<()> {
        let FeatureMseShape { k, m } = FeatureMseShape::new(candidates, baseline)?;
        self.feature_mse_raw(candidates, baseline, k, m, out)
    }

    pub(crate) fn feature_mse_raw(
        &self,
        candidates: &Tensor,
        baseline: &Tensor,
        k: usize,
        m: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cd = candidates.dims().to_vec();
        self.sqdiff_launch(candidates, baseline, k, m, None, out, &|| format!("feature_mse {}", fmt_dims(&cd)))
    }
}

#[cfg(test)]
mod tests {
    use super::sqdiff_layout;

    #[test]
    fn layout_covers_m_with_aligned_chunks() {
        for m in [1usize, 3, 4, 1000, 16_384, 16_385, 1 << 20, 10_000_000, 123_456_789] {
            let (blocks, chunk) = sqdiff_layout(m);
            assert_eq!(chunk % 4, 0);
            assert!((1..=1024).contains(&blocks));
            assert!(blocks * chunk >= m, "m {m}");
            assert!((blocks - 1) * chunk < m.max(1), "m {m}: empty last block");
        }
    }
}
