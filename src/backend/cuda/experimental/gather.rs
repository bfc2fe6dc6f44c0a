//! Batched gathers of whole layers' parameters for K candidates into one packed buffer (conv
//! weights along both channel axes, per-channel vectors, activations). The product prunes with
//! `CompactOps::gather_candidates`; these remain for experiments on packing whole candidates.

use crate::backend::cuda::{CudaBackend, GatherView};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// K compact tensors packed back to back in one device buffer.
pub struct Packed {
    /// All candidates, flat: `[total]`.
    pub data: Tensor,
    /// Start of each candidate in `data`, in elements; `offsets[K]` is the total.
    pub offsets: Vec<usize>,
    /// Shape of each candidate (the view's `[outer, rows, cols, inner]` folded back to the
    /// source's rank by the convenience constructors).
    pub dims: Vec<Vec<usize>>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.dims.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }
}

impl CudaBackend {
    /// Gathers `x` for K candidates in one launch: candidate `i` keeps `rows[i]` along the view's
    /// `d0` and `cols[i]` along `d1`. `fold` maps a candidate's `[outer, rows, cols, inner]` to
    /// the dims reported in [`Packed::dims`].
    pub fn gather_batched(
        &self,
        x: &Tensor,
        view: GatherView,
        rows: &[&[u32]],
        cols: &[&[u32]],
        fold: impl Fn([usize; 4]) -> Vec<usize>,
    ) -> Result<Packed> {
        let plan = self.plan_gather(view, rows, cols)?;
        let data = self.gather_with_plan(&plan, x)?;
        let dims = (0..plan.candidates()).map(|i| fold(plan.shape(i))).collect();
        let offsets = (0..=plan.candidates()).map(|i| plan.offset(i)).collect();
        Ok(Packed { data, offsets, dims })
    }

    /// Conv weights `[K, C, R, S]` of K candidates: `out_idx[i]` output channels and
    /// `in_idx[i]` input channels each; candidate `i` gets `[|out_idx[i]|, |in_idx[i]|, R, S]`.
    pub fn gather_conv_weights(&self, w: &Tensor, out_idx: &[&[u32]], in_idx: &[&[u32]]) -> Result<Packed> {
        let view = GatherView::conv_weight(w.dims())?;
        let (r, s) = (w.dim(2), w.dim(3));
        self.gather_batched(w, view, out_idx, in_idx, |sh| vec![sh[1], sh[2], r, s])
    }

    /// Per-channel vectors `[C]` of K candidates (batch norm parameters, biases).
    pub fn gather_channel_params(&self, v: &Tensor, idx: &[&[u32]]) -> Result<Packed> {
        v.expect_rank(1, "gather_channel_params")?;
        let zero: &[u32] = &[0];
        let cols = vec![zero; idx.len()];
        self.gather_batched(v, GatherView::channels(v.numel()), idx, &cols, |sh| vec![sh[1]])
    }

    /// Activations `[N, C, ...]` of K candidates, channels along axis 1.
    pub fn gather_activations(&self, x: &Tensor, idx: &[&[u32]]) -> Result<Packed> {
        let view = GatherView::activations(x.dims())?;
        let rest = x.dims()[2..].to_vec();
        let zero: &[u32] = &[0];
        let cols = vec![zero; idx.len()];
        self.gather_batched(x, view, idx, &cols, |sh| {
            let mut d = vec![sh[0], sh[1]];
            d.extend_from_slice(&rest);
            d
        })
    }

    /// Copies candidate `i` of a packed buffer into its own tensor.
    pub fn unpack(&self, packed: &Packed, i: usize) -> Result<Tensor> {
        match (packed.offsets.get(i), packed.offsets.get(i + 1), packed.dims.get(i)) {
            (Some(&a), Some(&b), Some(d)) => self.unpack_range(&packed.data, a, b, d),
            _ => Err(Error::Invalid(format!("unpack: no candidate {i} (have {})", packed.len()))),
        }
    }
}
