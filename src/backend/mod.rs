//! The seam between the network code and the hardware.
//!
//! `Backend` is the complete op set a forward pass, a backward pass, an optimiser step and a
//! pruning search need. The CPU backend is the reference; the CUDA backend implements the same
//! ops with hand-written kernels and is tested against it. Layers, models, training, pruning and
//! search only ever talk to a `Device` (an `Arc<dyn Backend>`), so they never care where they run.
//!
//! Conventions shared by every implementation:
//! - images are NCHW, conv weights `[out, in, kh, kw]`, linear weights `[out, in]`;
//! - every op returns freshly allocated outputs, except the `*_inplace` / optimiser ops;
//! - reductions run in a fixed order, so a CPU run is bit-reproducible for a given thread count.

pub mod cpu;
pub mod cuda;
pub(crate) mod shape;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// Geometry of a 2-D convolution (groups = 1, square padding, square stride, no dilation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub stride: usize,
    pub pad: usize,
}

/// Output size of a convolution or pooling window along one axis.
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (input + 2 * pad).saturating_sub(kernel) / stride + 1
}

/// Full problem size of a convolution, derived from its input and weight shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvShape {
    /// Checks `x` `[N,C,H,W]` against `w` `[K,C,R,S]` and returns the problem size.
    pub fn new(x: &[usize], w: &[usize], spec: ConvSpec) -> Result<ConvShape> {
        if x.len() != 4 || w.len() != 4 {
            return Err(Error::Shape(format!("conv2d: input {x:?} and weight {w:?} must both be rank 4")));
        }
        if x[1] != w[1] {
            return Err(Error::Shape(format!("conv2d: input has {} channels but weight {w:?} expects {}", x[1], w[1])));
        }
        if spec.stride == 0 {
            return Err(Error::Invalid("conv2d: stride must be at least 1".into()));
        }
        if x[2] + 2 * spec.pad < w[2] || x[3] + 2 * spec.pad < w[3] {
            return Err(Error::Shape(format!(
                "conv2d: kernel {}x{} larger than padded input {}x{}",
                w[2], w[3], x[2], x[3]
            )));
        }
        Ok(ConvShape {
            n: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: w[0],
            kh: w[2],
            kw: w[3],
            stride: spec.stride,
            pad: spec.pad,
            out_h: conv_out_size(x[2], w[2], spec.stride, spec.pad),
            out_w: conv_out_size(x[3], w[3], spec.stride, spec.pad),
        })
    }
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h, self.out_w]
    }
    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.c_out * self.out_h * self.out_w * self.c_in * self.kh * self.kw) as u64
    }
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

/// The op set. Object safe: the rest of the crate holds an `Arc<dyn Backend>`.
pub trait Backend: Send + Sync {
    fn kind(&self) -> DeviceKind;
    /// Human-readable description, e.g. `cpu (2 threads)` or `cuda:0 NVIDIA H100 (sm_90)`.
    fn describe(&self) -> String;

    // ---- memory -------------------------------------------------------------------------
    fn zeros(&self, dims: &[usize]) -> Result<Tensor>;
    /// Copies host data into a tensor on this device.
    fn from_host(&self, dims: &[usize], data: &[f32]) -> Result<Tensor>;
    /// Moves any tensor (host or device) onto this device; a no-op copy when already here.
    fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        let v = t.to_vec()?;
        self.from_host(t.dims(), &v)
    }
    /// Deep copy on this device.
    fn copy(&self, t: &Tensor) -> Result<Tensor>;
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

    // ---- convolution ----------------------------------------------------------------------
    /// `y[n,k,p,q] = sum_{c,r,s} x[n,c,p*stride+r-pad,q*stride+s-pad] * w[k,c,r,s]`.
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor>;
    /// Gradient with respect to the input; `x_dims` is the forward input shape.
    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<Tensor>;
    /// Gradient with respect to the weight; `w_dims` is the weight shape.
    fn conv2d_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor>;

    // ---- batch norm (rank 4 `[N,C,H,W]` or rank 2 `[N,C]`) -------------------------------------
    /// Training mode: normalise with batch statistics, update the running statistics with
    /// `running = (1-momentum)*running + momentum*batch` (unbiased variance, as PyTorch).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        momentum: f32,
        eps: f32,
    ) -> Result<(Tensor, BnSaved)>;
    /// Inference mode: normalise with the running statistics.
    fn batchnorm_forward_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor>;
    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads>;

    // ---- element-wise -----------------------------------------------------------------------
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `dx = dy * (y > 0)`, with `y` the forward output.
    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `relu(a + b)`, the end of every residual block.
    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let s = self.add(a, b)?;
        self.relu_forward(&s)
    }
    /// `acc += x` (gradient accumulation where a value feeds several consumers).
    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()>;
    /// `x *= s`.
    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()>;

    // ---- option-A shortcut (He et al. 2016, CIFAR) ----------------------------------------------
    /// `y[n,o,i,j] = src[o] >= 0 ? x[n,src[o],i*stride,j*stride] : 0`, `y` has `src.len()` channels
    /// and `ceil(h/stride) x ceil(w/stride)` pixels. `src` maps each output channel to its input.
    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor>;
    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor>;

    // ---- pooling ----------------------------------------------------------------------------------
    /// Max pooling without padding (floor mode).
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor>;
    /// Routes each `dy` to the first maximum of its window in `x` (row-major order).
    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor>;
    /// `[N,C,H,W] -> [N,C]`.
    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor>;
    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor>;

    // ---- fully connected ------------------------------------------------------------------------------
    /// `y = x w^T + b`, `x` `[N,in]`, `w` `[out,in]`, `b` `[out]`.
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor>;
    fn linear_backward(&self, dy: &Tensor, x: &Tensor, w: &Tensor, with_bias: bool) -> Result<LinearGrads>;

    // ---- losses -----------------------------------------------------------------------------------------
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy>;
    /// Knowledge distillation loss `T^2 * KL(softmax(t/T) || softmax(s/T))`, batch mean, and its
    /// gradient with respect to the student logits.
    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)>;
    /// `mean((x - target)^2)` over all elements and its gradient with respect to `x`.
    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)>;

    // ---- optimiser ------------------------------------------------------------------------------------
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, hp: SgdStep) -> Result<()>;

    // ---- pruning and search -----------------------------------------------------------------------------
    /// Keeps the entries `index` along `axis` (`y.dims[axis] = index.len()`), in the given order.
    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor>;
    /// For `candidates` `[K, M]` and `baseline` `[M]`: the mean over M of the squared difference,
    /// one value per candidate, reduced in a fixed order.
    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>>;
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
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda => Ok(Arc::new(cuda::CudaBackend::new(0)?)),
        DeviceChoice::Auto => match cuda::CudaBackend::new(0) {
            Ok(b) => Ok(Arc::new(b)),
            Err(_) => Ok(cpu()),
        },
    }
}
