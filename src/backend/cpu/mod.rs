//! The CPU backend: the reference every CUDA kernel is tested against, and a complete engine on
//! machines without a GPU. Work is spread over rayon's global pool (all cores by default;
//! `RAYON_NUM_THREADS` limits it).
//!
//! Each op family's trait is implemented in the family's file (`conv.rs`, `norm.rs`,
//! `elementwise.rs`, `pool.rs`, `shortcut.rs`, `linear.rs`, `loss.rs`, `sgd.rs`, `compact.rs`),
//! with that family's slice-level math below the trait methods; convolution's kernels live in
//! `conv.rs`, `direct.rs`, `depthwise.rs` and `winograd/`, GEMM in `gemm.rs`; which instruction set
//! the hand-vectorised kernels run on is chosen once, in `isa.rs`. Shapes are
//! checked by the trait methods; the math only computes. Per-channel and per-row reductions run
//! sequentially in f64 inside one task, so results do not depend on the thread count.

mod compact;
pub mod conv;
pub mod denormals;
pub mod depthwise;
pub mod direct;
mod elementwise;
pub mod gemm;
pub mod isa;
mod lanes;
mod linear;
mod loss;
mod norm;
pub mod pointwise;
mod pool;
mod sgd;
mod shortcut;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod team;
mod weight_cache;
pub mod winograd;

use crate::backend::{ConvShape, DeviceKind, Memory};
use crate::error::Result;
use crate::tensor::Tensor;
pub(crate) use isa::{has_avx2, has_avx512};

#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Forward convolutions and linears by direct loops accumulating in f64 in a fixed order
    /// (slow). Adding an exact zero never changes such a sum, so a net with pruned channels
    /// zeroed and its compact version agree bit for bit; the fast GEMM path regroups sums and
    /// agrees to a few ulps.
    reference: bool,
    /// Winograd kernels for 3x3 stride-1 convolutions (`winograd::choose`) and the direct
    /// AVX-512 / AVX2 kernel for the other 3x3 to 7x7 forward convolutions with few input
    /// channels (`direct.rs`); off in the exact variants, which keep im2col + GEMM (a few ulps
    /// from the f64 loops).
    fast_conv: bool,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { reference: false, fast_conv: true }
    }
    /// The reference-math variant (see `reference`).
    pub fn reference() -> Self {
        CpuBackend { reference: true, fast_conv: false }
    }
    /// f32 im2col + GEMM for every convolution (no Winograd): what the CUDA kernels are held to.
    pub fn exact() -> Self {
        CpuBackend { reference: false, fast_conv: false }
    }
    /// The Winograd tile for this convolution, when the fast kernels are on and fit it.
    fn winograd(&self, s: &ConvShape) -> Option<winograd::WinogradTile> {
        // The Winograd and direct kernels are dense only: grouped convolutions never reach them.
        (self.fast_conv && s.groups == 1).then(|| winograd::choose(s)).flatten()
    }

    /// The Winograd tile for a convolution whose weights change from call to call (a training
    /// forward, an input gradient): F(4x4) only. At F(2x2)'s sizes (fewer than 256 output
    /// pixels) the filter transform, made afresh every call, cost more than the products it
    /// saved (`cargo bench --bench conv`, batch 1, 2 threads: ResNet-50's 256x14x14 forward 1.48
    /// against im2col's 1.21 ms, its input gradient 2.05 against 1.63; a CIFAR 64x8x8 layer 77
    /// against 69 us and 90 against 79): there im2col + GEMM takes it. Inference keeps F(2x2),
    /// its transforms kept by the weights' stamp.
    fn winograd_changing(&self, s: &ConvShape) -> Option<winograd::WinogradTile> {
        self.winograd(s).filter(|&tile| tile == winograd::WinogradTile::F4)
    }

    /// Whether the direct channel-vector kernel computes this forward convolution (AVX-512,
    /// many input channels: `direct::channels_preferred`), given whether its weights stay
    /// fixed from call to call (inference, candidate scoring) or change every step (training,
    /// where the kernel's regrouping of the weights, uncached, cost more than it saved:
    /// ResNet-50's batch-1 step 237 -> 248 ms). Over Winograd F(2x2) too on maps of 14x14 and
    /// more: ResNet-50's 14x14 layers at batch 1 took 0.82-0.84x F(2x2)'s time (`lfgcl bench
    /// infer --layers`, 2 threads), but VGG-16's 8x8 layers at batch 1 ran slower (the net
    /// 4.9 -> 5.7 ms). F(4x4) (larger maps, larger batches) keeps its layers.
    fn direct_channels(&self, s: &ConvShape, weights: Weights) -> bool {
        let winograd_wins = |tile| tile == winograd::WinogradTile::F4 || s.out_h * s.out_w < 14 * 14;
        self.fast_conv
            && s.groups == 1
            && weights == Weights::Fixed
            && direct::channels_preferred(s)
            && !self.winograd(s).is_some_and(winograd_wins)
    }

    /// Whether the direct pixel-vector kernel computes this forward convolution (one Winograd
    /// does not take, with few enough input channels: `direct::preferred`).
    fn direct(&self, s: &ConvShape) -> bool {
        self.fast_conv && s.groups == 1 && self.winograd(s).is_none() && direct::preferred(s)
    }

    /// Whether the depthwise 3x3 kernels (`depthwise.rs`) compute this convolution.
    fn depthwise(&self, s: &ConvShape) -> bool {
        self.fast_conv && depthwise::supports(s)
    }

    /// Whether the 1x1 kernel (`pointwise.rs`) computes this forward convolution, given that it
    /// has a fused epilogue; the exact variants keep the `gemm` crate.
    fn pointwise(&self, s: &ConvShape) -> bool {
        self.fast_conv && pointwise::preferred(s)
    }

    /// As `winograd`, for backward-weight.
    fn winograd_backward_weight(&self, s: &ConvShape) -> Option<winograd::WinogradTile> {
        (self.fast_conv && s.groups == 1).then(|| winograd::choose_backward_weight(s)).flatten()
    }
}

/// Whether a convolution's weights stay the same from call to call (inference, scoring), so
/// that a kernel's rearrangement of them is worth keeping, or change every step (training).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Weights {
    Fixed,
    Changing,
}

fn host(t: &Tensor) -> Result<&[f32]> {
    t.as_slice()
}

impl Memory for CpuBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn describe(&self) -> String {
        let math = if self.reference { ", reference math" } else { "" };
        format!("cpu ({} threads{math})", rayon::current_num_threads())
    }

    fn zeros(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(dims))
    }

    fn from_host(&self, dims: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_vec(dims, data.to_vec())
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        let src = host(t)?;
        let mut v = crate::tensor::pool::take(src.len());
        v.copy_from_slice(src);
        Tensor::from_vec(t.dims(), v)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
