//! The seam between the network code and the hardware.
//!
//! `Backend` is the complete op set a forward pass, a backward pass, an optimiser step and a
//! pruning search need, made of one trait per op family: [`Memory`], [`ConvOps`], [`NormOps`],
//! [`ElementwiseOps`], [`PoolOps`], [`ShortcutOps`], [`LinearOps`], [`LossOps`], [`OptimOps`] and
//! [`CompactOps`]. Each backend implements each family in the family's own file (`cpu/conv.rs`,
//! `cuda/conv.rs`, ...). The CPU backend is the reference; the CUDA backend implements the same
//! ops with hand-written kernels and is tested against it. Layers, models, training, pruning and
//! search only ever talk to a `Device` (an `Arc<dyn Backend>`), so they never care where they run.
//!
//! Every op first builds its checked geometry ([`shape`]) from its arguments: one place per op
//! family decides what is a bad input and how it is reported, for every backend.
//!
//! Conventions shared by every implementation:
//! - images are NCHW, conv weights `[out, in, kh, kw]`, linear weights `[out, in]`;
//! - every op returns freshly allocated outputs, except the `*_inplace` / optimiser ops;
//! - reductions run in a fixed order, so a CPU run is bit-reproducible for a given thread count.

pub mod cpu;
pub mod cuda;
pub mod shape;

pub use shape::{conv_out_size, ConvShape};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// Geometry of a 2-D convolution (square padding, square stride, no dilation). With `groups`
/// g > 1 the input and output channels split into g blocks and block i of the output reads only
/// block i of the input: the weight is `[out, in / g, kh, kw]`. Depthwise is `g == in == out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvSpec {
    /// A dense convolution (one group).
    pub const fn dense(stride: usize, pad: usize) -> ConvSpec {
        ConvSpec { stride, pad, groups: 1 }
    }
}

/// The activation at the end of a fused chain or after a batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    Identity,
    /// `max(v, 0)`.
    Relu,
    /// `min(max(v, 0), 6)` (MobileNetV2).
    Relu6,
}

impl Activation {
    /// The activation of one value (the CPU reference and every epilogue).
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            // `max` first: NaN -> 0, as the CUDA kernels' fmaxf (`clamp` would keep the NaN).
            #[allow(clippy::manual_clamp)]
            Activation::Relu6 => v.max(0.0).min(6.0),
        }
    }
}

/// What `conv2d_forward_fused` applies to each output, in order: `v * scale[k] + shift[k]` (an
/// inference batch norm folded by `batchnorm_fold`), `+ residual` (same shape as the output),
/// then `max(v, 0)` when `relu`.
#[derive(Clone, Copy)]
pub struct ConvEpilogue<'a> {
    pub scale: &'a Tensor,
    pub shift: &'a Tensor,
    pub residual: Option<&'a Tensor>,
    pub act: Activation,
}

/// Arithmetic of the forward and backward-data convolutions (backward-weight is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, clap::ValueEnum)]
#[repr(u8)]
pub enum Precision {
    /// Exact f32 FMAs: the parity reference, and the only precision of the CPU backend.
    #[default]
    F32 = 0,
    /// CUDA tensor cores, inputs rounded to TF32 (10-bit mantissa), f32 accumulation.
    Tf32 = 1,
    /// CUDA tensor cores, inputs rounded to BF16 (7-bit mantissa), f32 accumulation.
    Bf16 = 2,
}

impl Precision {
    pub(crate) fn from_u8(v: u8) -> Precision {
        match v {
            1 => Precision::Tf32,
            2 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Invalid(format!("unknown conv precision '{other}' (f32, tf32, bf16)"))),
        }
    }
}

/// A batch norm's parameters for an inference op, borrowed together:
/// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`, every vector `[C]`.
#[derive(Clone, Copy)]
pub struct BnParams<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub eps: f32,
}

/// A batch norm's parameters for a training-mode forward pass: the running statistics are
/// updated in place with `momentum`.
pub struct BnTrainParams<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a mut Tensor,
    pub running_var: &'a mut Tensor,
    pub momentum: f32,
    pub eps: f32,
}

/// What a training-mode batch norm forward pass leaves for the backward pass.
pub struct BnSaved {
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel `1 / sqrt(var + eps)` with the biased batch variance, `[C]`.
    pub invstd: Tensor,
}

/// Gradients of a batch norm layer.
pub struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
}

/// Gradients of a linear layer.
pub struct LinearGrads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Option<Tensor>,
}

/// Result of softmax cross-entropy over a batch.
pub struct CrossEntropy {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Gradient of the mean loss with respect to the logits, `[N, classes]`.
    pub dlogits: Tensor,
    /// How many rows had their arg-max equal to the label.
    pub correct: usize,
}

/// SGD hyper-parameters with PyTorch's semantics:
/// `g = grad + wd*p; buf = momentum*buf + g; step = nesterov ? g + momentum*buf : buf; p -= lr*step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Which kind of hardware a backend drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Memory, synchronisation and timing: what every backend provides before any op.
pub trait Memory {
    fn kind(&self) -> DeviceKind;
    /// Human-readable description, e.g. `cpu (2 threads)` or `cuda:0 NVIDIA H100 (sm_90)`.
    fn describe(&self) -> String;
    fn zeros(&self, dims: &[usize]) -> Result<Tensor>;
    /// Copies host data into a tensor on this device.
    #[allow(clippy::wrong_self_convention)] // "from host" says where the data comes from; `self` is the destination
    fn from_host(&self, dims: &[usize], data: &[f32]) -> Result<Tensor>;
    /// Moves any tensor (host or device) onto this device; a no-op copy when already here.
    fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        let v = t.to_vec()?;
        self.from_host(t.dims(), &v)
    }
    /// Deep copy on this device.
    fn copy(&self, t: &Tensor) -> Result<Tensor>;
    /// Free device memory in bytes, where the device has memory of its own (None on the CPU).
    fn free_memory(&self) -> Result<Option<usize>> {
        Ok(None)
    }
    /// Waits until all queued work has finished (no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Runs `f` and returns how long the device took, in milliseconds, queued work included:
    /// wall clock around a synchronisation by default; a GPU backend may use its own events.
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let start = std::time::Instant::now();
        f()?;
        self.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}

/// Convolutions (`cpu/conv.rs`, `cuda/conv.rs`).
pub trait ConvOps {
    /// `y[n,k,p,q] = sum_{c,r,s} x[n,c,p*stride+r-pad,q*stride+s-pad] * w[k,c,r,s]`.
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor>;
    /// `conv2d_forward` in a training pass, whose backward (`conv2d_backward_weight` on this
    /// same `x`) follows: a backend may keep what that backward can reuse. The same result.
    fn conv2d_forward_train(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
        self.conv2d_forward(x, w, spec)
    }
    /// Gradient with respect to the input; `x_dims` is the forward input shape.
    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<Tensor>;
    /// Gradient with respect to the weight; `w_dims` is the weight shape.
    fn conv2d_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor>;
    /// Inference convolution followed by `epi` (folded batch norm, residual add, ReLU). The CPU
    /// composes the exact unfused ops; CUDA applies the epilogue inside the conv kernel.
    fn conv2d_forward_fused(&self, x: &Tensor, w: &Tensor, spec: ConvSpec, epi: &ConvEpilogue) -> Result<Tensor>;
    /// `conv2d_forward_fused` with the residual handed over (`epi.residual` is not read): the
    /// same values, but a backend may write the output over the residual, so that its memory is
    /// read and written once instead of read beside a fresh output's (the CPU's 1x1 kernel does).
    fn conv2d_forward_fused_over(
        &self,
        x: &Tensor,
        w: &Tensor,
        spec: ConvSpec,
        epi: &ConvEpilogue,
        residual: Tensor,
    ) -> Result<Tensor> {
        self.conv2d_forward_fused(x, w, spec, &ConvEpilogue { residual: Some(&residual), ..*epi })
    }
    /// Precision of `conv2d_forward` and `conv2d_backward_data` from now on. The CPU computes in
    /// f32 only and refuses anything else.
    fn set_conv_precision(&self, precision: Precision) -> Result<()>;
    fn conv_precision(&self) -> Precision;
}

/// Batch norm, rank 4 `[N,C,H,W]` or rank 2 `[N,C]` (`cpu/norm.rs`, `cuda/norm.rs`).
pub trait NormOps {
    /// Training mode: normalise with batch statistics, update the running statistics with
    /// `running = (1-momentum)*running + momentum*batch` (unbiased variance, as PyTorch).
    fn batchnorm_forward_train(&self, x: &Tensor, bn: BnTrainParams<'_>) -> Result<(Tensor, BnSaved)>;
    /// Inference mode: normalise with the running statistics.
    fn batchnorm_forward_eval(&self, x: &Tensor, bn: BnParams<'_>) -> Result<Tensor>;
    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads>;
    /// `batchnorm_forward_train` then the activation `act` (ReLU or ReLU6), as one op (a
    /// training step's conv -> batch norm -> activation; the batch norm's own output is never
    /// stored): the same values as the two ops.
    fn batchnorm_act_forward_train(
        &self,
        x: &Tensor,
        bn: BnTrainParams<'_>,
        act: Activation,
    ) -> Result<(Tensor, BnSaved)>;
    /// `batchnorm_backward` of the gradient through the activation `act` after it, whose output
    /// is `y` (`dy * (y > 0)` for a ReLU, `dy * (0 < y < 6)` for a ReLU6, never stored): the
    /// same values as `relu_backward` (or `relu6_backward`) then `batchnorm_backward`.
    fn batchnorm_act_backward(
        &self,
        dy: &Tensor,
        y: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        saved: &BnSaved,
        act: Activation,
    ) -> Result<BnGrads>;
    /// Inference batch norm as a per-channel `(scale, shift)` for [`ConvEpilogue`]:
    /// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
    fn batchnorm_fold(&self, bn: BnParams<'_>) -> Result<(Tensor, Tensor)>;
}

/// Element-wise ops (`cpu/elementwise.rs`, `cuda/elementwise.rs`).
pub trait ElementwiseOps {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `dx = dy * (y > 0)`, with `y` the forward output.
    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// `min(max(x, 0), 6)`.
    fn relu6_forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `dx = dy * (0 < y < 6)`, with `y` the forward output (PyTorch's hardtanh gradient).
    fn relu6_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `relu(a + b)`, the end of every residual block.
    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `acc += x` (gradient accumulation where a value feeds several consumers).
    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()>;
    /// `x *= s`.
    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()>;
}

/// Pooling (`cpu/pool.rs`, `cuda/pool.rs`).
pub trait PoolOps {
    /// Max pooling (floor mode); `pad` cells of implicit -inf around the input, as PyTorch's
    /// `MaxPool2d(kernel, stride, padding)` (`pad <= kernel / 2`).
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor>;
    /// Routes each `dy` to the first maximum of its window in `x` (row-major order; padding
    /// cells never win).
    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor>;
    /// `[N,C,H,W] -> [N,C]`.
    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor>;
    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor>;
}

/// The option-A shortcut of He et al. 2016 (CIFAR) (`cpu/shortcut.rs`, `cuda/shortcut.rs`).
pub trait ShortcutOps {
    /// `y[n,o,i,j] = src[o] >= 0 ? x[n,src[o],i*stride,j*stride] : 0`, `y` has `src.len()` channels
    /// and `ceil(h/stride) x ceil(w/stride)` pixels. `src` maps each output channel to its input.
    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor>;
    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor>;
}

/// Fully connected layers (`cpu/linear.rs`, `cuda/linear.rs`).
pub trait LinearOps {
    /// `y = x w^T + b`, `x` `[N,in]`, `w` `[out,in]`, `b` `[out]`.
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor>;
    fn linear_backward(&self, dy: &Tensor, x: &Tensor, w: &Tensor, with_bias: bool) -> Result<LinearGrads>;
}

/// Losses (`cpu/loss.rs`, `cuda/loss.rs`).
pub trait LossOps {
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy>;
    /// Knowledge distillation loss `T^2 * KL(softmax(t/T) || softmax(s/T))`, batch mean, and its
    /// gradient with respect to the student logits.
    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)>;
    /// `mean((x - target)^2)` over all elements and its gradient with respect to `x`.
    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)>;
}

/// The optimiser step (`cpu/sgd.rs`, `cuda/sgd.rs`).
pub trait OptimOps {
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, hp: SgdStep) -> Result<()>;
}

/// Compact nets and their scoring (`cpu/compact.rs`, `cuda/compact.rs`): gathering the kept
/// channels of a pruned net (prune, and the search's K candidates at once) and the feature MSE of
/// K candidates against the baseline.
pub trait CompactOps {
    /// Keeps the entries `index` along `axis` (`y.dims[axis] = index.len()`), in the given order.
    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor>;
    /// The `index_select` of `x` along `axis` for each of K candidates' index lists, in one call:
    /// one batched gather launch on CUDA.
    fn gather_candidates(&self, x: &Tensor, axis: usize, index: &[&[u32]]) -> Result<Vec<Tensor>>;
    /// For `candidates` `[K, M]` and `baseline` `[M]`: the mean over M of the squared difference,
    /// one value per candidate, reduced in a fixed order.
    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>>;
}

/// The whole op set. Object safe: the rest of the crate holds an `Arc<dyn Backend>` and calls
/// every family's methods on it directly (`dev.conv2d_forward(..)`).
pub trait Backend:
    Memory
    + ConvOps
    + NormOps
    + ElementwiseOps
    + PoolOps
    + ShortcutOps
    + LinearOps
    + LossOps
    + OptimOps
    + CompactOps
    + Send
    + Sync
{
}

impl<T> Backend for T where
    T: Memory
        + ConvOps
        + NormOps
        + ElementwiseOps
        + PoolOps
        + ShortcutOps
        + LinearOps
        + LossOps
        + OptimOps
        + CompactOps
        + Send
        + Sync
{
}

/// Every op-family trait, for calling ops on a concrete backend type (`CpuBackend`,
/// `CudaBackend`): `use lfgcl::backend::prelude::*;`. Code holding a [`Device`] needs none of it.
pub mod prelude {
    pub use super::{
        Backend, CompactOps, ConvOps, ElementwiseOps, LinearOps, LossOps, Memory, NormOps, OptimOps, PoolOps,
        ShortcutOps,
    };
}

/// The handle the rest of the crate passes around.
pub type Device = Arc<dyn Backend>;

/// What the user asked for with `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DeviceChoice {
    /// CUDA when a device is found, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => Err(Error::Invalid(format!("unknown device '{other}' (expected auto, cpu or cuda)"))),
        }
    }
}

/// The CPU backend, using every core rayon sees.
pub fn cpu() -> Device {
    Arc::new(cpu::CpuBackend::new())
}

/// The CPU backend with reference math: fixed-order f64 accumulation in forward convolutions
/// and linears (slow; for exactness tests).
pub fn cpu_reference() -> Device {
    Arc::new(cpu::CpuBackend::reference())
}

/// The CPU backend with the exact f32 convolution (im2col + GEMM, no Winograd): the baseline the
/// CUDA parity tests compare against.
pub fn cpu_exact() -> Device {
    Arc::new(cpu::CpuBackend::exact())
}

/// Opens the device the user asked for. `Auto` falls back to the CPU when no CUDA device (or no
/// driver, or no NVRTC) is found; `Cuda` turns that into an error that says what is missing.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    // Under mpirun, one GPU per rank on a node: the rank's index among its node's ranks.
    let gpu = crate::dist::gpu_ordinal();
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda => Ok(Arc::new(cuda::CudaBackend::new(gpu)?)),
        DeviceChoice::Auto => match cuda::CudaBackend::new(gpu) {
            Ok(b) => Ok(Arc::new(b)),
            Err(_) => Ok(cpu()),
        },
    }
}
