//! CPU-GPU parity of every op of the `Backend` trait and of every CUDA kernel variant, on
//! random inputs over the model shapes (ResNet 16/32/64 channels at 32/16/8 px, VGG up to 512
//! channels at 2 px) and odd ones (batch 1, channel counts such as 3, 5, 13, 27, stride 2,
//! 1x1 and 5x5 kernels, 7x7 and 9x9 inputs). The CPU side is `cpu_exact()`: im2col + GEMM for
//! every convolution, never the (less accurate) Winograd kernels of the default CPU backend.
//! Each test starts with `cuda_or_skip`: without a GPU they print a skip line and pass (with
//! `LFGCL_REQUIRE_GPU=1` they fail instead).
//!
//! # Error measure
//!
//! `rel = max_i |gpu_i - cpu_i| / max(max_i |cpu_i|, 1e-3)`
//!
//! The error is normalised by the largest reference magnitude, not element by element: a sum of
//! n f32 products carries an absolute rounding error that scales with the magnitude of the
//! terms, i.e. with the output's overall scale, so an output element that happens to cancel to
//! almost zero would show a huge per-element relative error from nothing but legitimate
//! reordering of the sum. The `1e-3` floor keeps an all-zero (or tiny) reference from turning
//! rounding noise into a large ratio.
//!
//! # Bounds
//!
//! - exact f32 kernels: `rel <= 1e-4`. The GPU reorders sums (tiles, split-K, tree reductions)
//!   and uses FMAs; for the reduction lengths here (<= 131072) that costs a few 1e-6 at most;
//! - TF32 convolutions: `rel <= 2e-3`. Inputs are rounded to a 10-bit mantissa (relative error
//!   <= 2^-11 each), so each product carries ~4e-4 rms relative error and, the errors being
//!   independent, the sum's error relative to the output scale is ~4e-4 rms; 2e-3 leaves 5x;
//! - BF16 convolutions: `rel <= 1e-2`, by the same argument with a 7-bit mantissa
//!   (2^-9 per operand, ~1.6e-3 rms);
//! - data movement (gather, index_select, shortcut, max pooling) and the SGD step (same f32
//!   operations in the same order): exact or `rel <= 1e-6`.

#[path = "common/gpu.rs"]
mod gpu;

use gpu::{cuda_backend_or_skip, cuda_or_skip, private_cuda_backend_or_skip};
use lfgcl::backend::cuda::GemmLayout;
#[cfg(feature = "cuda-experimental")]
use lfgcl::backend::cuda::{CudaBackend, GatherView};
use lfgcl::backend::prelude::*;
use lfgcl::backend::{
    cpu_exact, Activation, BnParams, BnSaved, BnTrainParams, ConvEpilogue, ConvShape, ConvSpec, Precision, SgdStep,
};
use lfgcl::Tensor;

const F32_BOUND: f32 = 1e-4;
const TF32_BOUND: f32 = 2e-3;
const BF16_BOUND: f32 = 1e-2;

// ---- helpers -------------------------------------------------------------------------------------

/// Deterministic uniform values in [lo, hi).
fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn rand_host(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(dims, rand_vec(dims.iter().product(), seed, -1.0, 1.0)).expect("host tensor")
}

fn up(gpu: &dyn Backend, t: &Tensor) -> Tensor {
    gpu.to_device(t).expect("upload to the GPU")
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec().expect("copy to host")
}

fn rel_err(gpu: &[f32], cpu: &[f32]) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "length mismatch");
    let mut diff = 0.0f32;
    let mut scale = 0.0f32;
    for (a, b) in gpu.iter().zip(cpu) {
        assert!(a.is_finite() == b.is_finite(), "finiteness differs: gpu {a} cpu {b}");
        if b.is_finite() {
            diff = diff.max((a - b).abs());
            scale = scale.max(b.abs());
        }
    }
    diff / scale.max(1e-3)
}

#[track_caller]
fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, bound: f32) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shapes differ");
    let e = rel_err(&host(gpu), &host(cpu));
    assert!(e <= bound, "{what}: relative error {e:.3e} exceeds {bound:.1e}");
}

#[track_caller]
fn assert_close_vec(what: &str, gpu: &[f32], cpu: &[f32], bound: f32) {
    let e = rel_err(gpu, cpu);
    assert!(e <= bound, "{what}: relative error {e:.3e} exceeds {bound:.1e}");
}

#[track_caller]
fn assert_exact(what: &str, gpu: &Tensor, cpu: &Tensor) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shapes differ");
    let (g, c) = (host(gpu), host(cpu));
    if let Some(i) = (0..g.len()).find(|&i| g[i].to_bits() != c[i].to_bits() && !(g[i] == c[i])) {
        panic!("{what}: element {i} differs: gpu {} cpu {}", g[i], c[i]);
    }
}

/// (N, C, H, W, K, R, stride, pad).
type ConvDims = (usize, usize, usize, usize, usize, usize, usize, usize);

/// The model shapes and the odd ones.
const CONV_SHAPES: &[ConvDims] = &[
    // ResNet (CIFAR): stem, the three stages, the two stride-2 transitions.
    (4, 3, 32, 32, 16, 3, 1, 1),
    (4, 16, 32, 32, 16, 3, 1, 1),
    (4, 16, 32, 32, 32, 3, 2, 1),
    (4, 32, 16, 16, 32, 3, 1, 1),
    (4, 32, 16, 16, 64, 3, 2, 1),
    (8, 64, 8, 8, 64, 3, 1, 1),
    // VGG-16 late layers.
    (8, 256, 4, 4, 512, 3, 1, 1),
    (16, 512, 2, 2, 512, 3, 1, 1),
    // Odd: batch 1, channels not multiples of 8, 1x1, 5x5, no padding, 7x7 / 9x9 inputs.
    (1, 5, 7, 7, 13, 3, 1, 1),
    (3, 27, 9, 9, 5, 3, 2, 1),
    (2, 13, 7, 7, 27, 1, 1, 0),
    (2, 16, 8, 8, 32, 1, 2, 0),
    (1, 3, 7, 7, 3, 3, 2, 0),
    (2, 7, 5, 5, 9, 5, 1, 2),
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 40, 6, 6, 70, 3, 1, 1),
];

struct ConvCase {
    shape: ConvShape,
    spec: ConvSpec,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
}

fn conv_cases() -> Vec<ConvCase> {
    CONV_SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(n, c, h, w, k, r, stride, pad))| {
            let spec = ConvSpec { stride, pad, groups: 1 };
            let shape = ConvShape::new(&[n, c, h, w], &[k, c, r, r], spec).expect("valid conv shape");
            let seed = 1000 + 10 * i as u64;
            ConvCase {
                x: rand_host(&shape.input_dims(), seed),
                w: rand_host(&shape.weight_dims(), seed + 1),
                dy: rand_host(&shape.output_dims(), seed + 2),
                shape,
                spec,
            }
        })
        .collect()
}

fn label(s: &ConvShape) -> String {
    format!(
        "x [{},{},{},{}] w [{},{},{},{}] s{} p{}",
        s.n, s.c_in, s.h, s.w, s.c_out, s.c_in, s.kh, s.kw, s.stride, s.pad
    )
}

// ---- convolution ---------------------------------------------------------------------------------

fn conv_forward_parity(precision: Precision, bound: f32, test: &str) {
    let Some(be) = cuda_backend_or_skip(test) else {
        return;
    };
    let cpu = cpu_exact();
    for c in conv_cases() {
        let want = cpu.conv2d_forward(&c.x, &c.w, c.spec).expect("cpu conv");
        let got = be
            .conv2d_forward_with(&up(&*be, &c.x), &up(&*be, &c.w), c.spec, precision)
            .unwrap_or_else(|e| panic!("gpu conv {}: {e}", label(&c.shape)));
        assert_close(&format!("conv2d_forward {} {}", precision.name(), label(&c.shape)), &got, &want, bound);
    }
}

fn conv_backward_data_parity(precision: Precision, bound: f32, test: &str) {
    let Some(be) = cuda_backend_or_skip(test) else {
        return;
    };
    let cpu = cpu_exact();
    for c in conv_cases() {
        let xd = c.shape.input_dims();
        let want = cpu.conv2d_backward_data(&c.dy, &c.w, &xd, c.spec).expect("cpu conv bwd data");
        let got = be
            .conv2d_backward_data_with(&up(&*be, &c.dy), &up(&*be, &c.w), &xd, c.spec, precision)
            .unwrap_or_else(|e| panic!("gpu conv bwd data {}: {e}", label(&c.shape)));
        assert_close(&format!("conv2d_backward_data {} {}", precision.name(), label(&c.shape)), &got, &want, bound);
    }
}

#[test]
fn conv_forward_f32() {
    conv_forward_parity(Precision::F32, F32_BOUND, "conv_forward_f32");
}

#[test]
fn conv_forward_tf32() {
    conv_forward_parity(Precision::Tf32, TF32_BOUND, "conv_forward_tf32");
}

#[test]
fn conv_forward_bf16() {
    conv_forward_parity(Precision::Bf16, BF16_BOUND, "conv_forward_bf16");
}

#[test]
fn conv_backward_data_f32() {
    conv_backward_data_parity(Precision::F32, F32_BOUND, "conv_backward_data_f32");
}

#[test]
fn conv_backward_data_tf32() {
    conv_backward_data_parity(Precision::Tf32, TF32_BOUND, "conv_backward_data_tf32");
}

#[test]
fn conv_backward_data_bf16() {
    conv_backward_data_parity(Precision::Bf16, BF16_BOUND, "conv_backward_data_bf16");
}

#[test]
fn conv_backward_weight_f32_and_deterministic() {
    let Some(be) = cuda_backend_or_skip("conv_backward_weight_f32_and_deterministic") else {
        return;
    };
    let cpu = cpu_exact();
    let mut cases = conv_cases();
    // A long reduction (131072 pixels) to exercise split-K at training size.
    let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let shape = ConvShape::new(&[128, 16, 32, 32], &[16, 16, 3, 3], spec).expect("shape");
    cases.push(ConvCase {
        x: rand_host(&shape.input_dims(), 77),
        w: rand_host(&shape.weight_dims(), 78),
        dy: rand_host(&shape.output_dims(), 79),
        shape,
        spec,
    });
    for c in cases {
        let wd = c.shape.weight_dims();
        let want = cpu.conv2d_backward_weight(&c.dy, &c.x, &wd, c.spec).expect("cpu conv bwd weight");
        let (gdy, gx) = (up(&*be, &c.dy), up(&*be, &c.x));
        let got = be
            .conv2d_backward_weight(&gdy, &gx, &wd, c.spec)
            .unwrap_or_else(|e| panic!("gpu conv bwd weight {}: {e}", label(&c.shape)));
        assert_close(&format!("conv2d_backward_weight {}", label(&c.shape)), &got, &want, F32_BOUND);
        let again = be.conv2d_backward_weight(&gdy, &gx, &wd, c.spec).expect("second run");
        assert_eq!(host(&got), host(&again), "conv2d_backward_weight is not deterministic for {}", label(&c.shape));
    }
}

#[test]
fn conv_trait_op_follows_the_backend_precision() {
    let Some(be) = private_cuda_backend_or_skip("conv_trait_op_follows_the_backend_precision") else {
        return;
    };
    assert_eq!(be.conv_precision(), Precision::F32, "default precision must be exact f32");
    let c = &conv_cases()[5];
    let (x, w) = (up(&be, &c.x), up(&be, &c.w));
    for p in [Precision::Tf32, Precision::Bf16, Precision::F32] {
        be.set_conv_precision(p).expect("set precision");
        let via_trait = be.conv2d_forward(&x, &w, c.spec).expect("trait conv");
        let explicit = be.conv2d_forward_with(&x, &w, c.spec, p).expect("explicit conv");
        assert_eq!(host(&via_trait), host(&explicit), "trait conv did not use {}", p.name());
    }
}

/// The inference conv with folded batch norm, residual add and ReLU against the CPU running
/// the same layers one by one.
#[test]
fn conv_fused_bn_residual_relu() {
    // A private backend: this test changes its conv precision.
    let Some(be) = private_cuda_backend_or_skip("conv_fused_bn_residual_relu") else {
        return;
    };
    let cpu = cpu_exact();
    let eps = 1e-5;
    for (i, c) in conv_cases().into_iter().enumerate() {
        let k = c.shape.c_out;
        let gamma = Tensor::from_vec(&[k], rand_vec(k, 500 + i as u64, 0.5, 1.5)).expect("gamma");
        let beta = rand_host(&[k], 600 + i as u64);
        let mean = rand_host(&[k], 700 + i as u64);
        let var = Tensor::from_vec(&[k], rand_vec(k, 800 + i as u64, 0.5, 2.0)).expect("var");
        let residual = rand_host(&c.shape.output_dims(), 900 + i as u64);
        let y = cpu.conv2d_forward(&c.x, &c.w, c.spec).expect("cpu conv");
        let bn = cpu
            .batchnorm_forward_eval(
                &y,
                BnParams { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps },
            )
            .expect("cpu bn");
        let want_plain = cpu.relu_forward(&bn).expect("cpu relu");
        let want_res = cpu.add_relu(&bn, &residual).expect("cpu add relu");

        let (gg, gb, gm, gv) = (up(&be, &gamma), up(&be, &beta), up(&be, &mean), up(&be, &var));
        let (scale, shift) = be
            .batchnorm_fold(BnParams { gamma: &gg, beta: &gb, running_mean: &gm, running_var: &gv, eps })
            .expect("fold");
        let (gx, gw, gr) = (up(&be, &c.x), up(&be, &c.w), up(&be, &residual));
        for (precision, bound) in
            [(Precision::F32, F32_BOUND), (Precision::Tf32, TF32_BOUND), (Precision::Bf16, BF16_BOUND)]
        {
            be.set_conv_precision(precision).expect("set precision");
            let epi = ConvEpilogue { scale: &scale, shift: &shift, residual: None, act: Activation::Relu };
            let got = be.conv2d_forward_fused(&gx, &gw, c.spec, &epi).expect("fused conv");
            assert_close(&format!("conv+bn+relu {} {}", precision.name(), label(&c.shape)), &got, &want_plain, bound);
            let epi = ConvEpilogue { residual: Some(&gr), ..epi };
            let got = be.conv2d_forward_fused(&gx, &gw, c.spec, &epi).expect("fused conv + residual");
            assert_close(&format!("conv+bn+add+relu {} {}", precision.name(), label(&c.shape)), &got, &want_res, bound);
            #[cfg(feature = "cuda-experimental")]
            {
                let mut out = be.zeros(&c.shape.output_dims()).expect("zeros");
                be.conv2d_fused_into(&gx, &gw, c.spec, Some(&epi), precision, &mut out).expect("fused conv into");
                let what = format!("conv+bn+add+relu into {} {}", precision.name(), label(&c.shape));
                assert_close(&what, &out, &want_res, bound);
            }
        }
        be.set_conv_precision(Precision::F32).expect("reset precision");
    }
}

// ---- batch norm ----------------------------------------------------------------------------------

const BN_SHAPES: &[&[usize]] = &[
    &[4, 16, 32, 32],
    &[128, 16, 32, 32],
    &[8, 32, 16, 16],
    &[8, 64, 8, 8],
    &[16, 512, 2, 2],
    &[1, 5, 7, 7],
    &[3, 13, 3, 3],
    &[32, 10],
    &[2, 27],
];

#[test]
fn batchnorm_train_eval_backward() {
    let Some(be) = cuda_backend_or_skip("batchnorm_train_eval_backward") else {
        return;
    };
    let cpu = cpu_exact();
    for (i, &dims) in BN_SHAPES.iter().enumerate() {
        let seed = 2000 + 10 * i as u64;
        let c = dims[1];
        let n: usize = dims.iter().product();
        // Offset inputs so the mean matters.
        let x = Tensor::from_vec(dims, rand_vec(n, seed, -0.5, 1.5)).expect("x");
        let gamma = Tensor::from_vec(&[c], rand_vec(c, seed + 1, 0.5, 1.5)).expect("gamma");
        let beta = rand_host(&[c], seed + 2);
        let rm0 = rand_host(&[c], seed + 3);
        let rv0 = Tensor::from_vec(&[c], rand_vec(c, seed + 4, 0.5, 2.0)).expect("rv");
        let dy = rand_host(dims, seed + 5);
        let (mom, eps) = (0.1, 1e-5);
        let what = format!("batchnorm {dims:?}");

        let (mut crm, mut crv) = (rm0.copy_host(), rv0.copy_host());
        let (cy, csaved) = cpu
            .batchnorm_forward_train(
                &x,
                BnTrainParams {
                    gamma: &gamma,
                    beta: &beta,
                    running_mean: &mut crm,
                    running_var: &mut crv,
                    momentum: mom,
                    eps,
                },
            )
            .expect("cpu bn");
        let (gx, gg, gb) = (up(&*be, &x), up(&*be, &gamma), up(&*be, &beta));
        let (mut grm, mut grv) = (up(&*be, &rm0), up(&*be, &rv0));
        let (gy, gsaved) = be
            .batchnorm_forward_train(
                &gx,
                BnTrainParams {
                    gamma: &gg,
                    beta: &gb,
                    running_mean: &mut grm,
                    running_var: &mut grv,
                    momentum: mom,
                    eps,
                },
            )
            .expect("gpu bn");
        assert_close(&format!("{what} train y"), &gy, &cy, F32_BOUND);
        assert_close(&format!("{what} saved mean"), &gsaved.mean, &csaved.mean, F32_BOUND);
        assert_close(&format!("{what} saved invstd"), &gsaved.invstd, &csaved.invstd, F32_BOUND);
        assert_close(&format!("{what} running mean"), &grm, &crm, F32_BOUND);
        assert_close(&format!("{what} running var"), &grv, &crv, F32_BOUND);

        let ce = cpu
            .batchnorm_forward_eval(
                &x,
                BnParams { gamma: &gamma, beta: &beta, running_mean: &crm, running_var: &crv, eps },
            )
            .expect("cpu eval");
        let ge = be
            .batchnorm_forward_eval(&gx, BnParams { gamma: &gg, beta: &gb, running_mean: &grm, running_var: &grv, eps })
            .expect("gpu eval");
        assert_close(&format!("{what} eval"), &ge, &ce, F32_BOUND);

        // Backward from the same saved statistics on both sides.
        let saved = BnSaved { mean: csaved.mean.copy_host(), invstd: csaved.invstd.copy_host() };
        let cg = cpu.batchnorm_backward(&dy, &x, &gamma, &saved).expect("cpu bn bwd");
        let gsaved_cpu = BnSaved { mean: up(&*be, &csaved.mean), invstd: up(&*be, &csaved.invstd) };
        let gg2 = be.batchnorm_backward(&up(&*be, &dy), &gx, &gg, &gsaved_cpu).expect("gpu bn bwd");
        assert_close(&format!("{what} dx"), &gg2.dx, &cg.dx, F32_BOUND);
        assert_close(&format!("{what} dgamma"), &gg2.dgamma, &cg.dgamma, F32_BOUND);
        assert_close(&format!("{what} dbeta"), &gg2.dbeta, &cg.dbeta, F32_BOUND);
        let again = be.batchnorm_backward(&up(&*be, &dy), &gx, &gg, &gsaved_cpu).expect("gpu bn bwd again");
        assert_eq!(host(&again.dgamma), host(&gg2.dgamma), "{what}: dgamma not deterministic");

        // Through a ReLU or ReLU6 after the batch norm (the training pass's fused pairs).
        for act in [Activation::Relu, Activation::Relu6] {
            let z = match act {
                Activation::Relu6 => cpu.relu6_forward(&cy).expect("cpu relu6"),
                _ => cpu.relu_forward(&cy).expect("cpu relu"),
            };
            let cr = cpu.batchnorm_act_backward(&dy, &z, &x, &gamma, &saved, act).expect("cpu bn act bwd");
            let gr = be
                .batchnorm_act_backward(&up(&*be, &dy), &up(&*be, &z), &gx, &gg, &gsaved_cpu, act)
                .expect("gpu bn act bwd");
            assert_close(&format!("{what} dx through {act:?}"), &gr.dx, &cr.dx, F32_BOUND);
            assert_close(&format!("{what} dgamma through {act:?}"), &gr.dgamma, &cr.dgamma, F32_BOUND);
            let (mut grm2, mut grv2) = (up(&*be, &rm0), up(&*be, &rv0));
            let (gz, _) = be
                .batchnorm_act_forward_train(
                    &gx,
                    BnTrainParams {
                        gamma: &gg,
                        beta: &gb,
                        running_mean: &mut grm2,
                        running_var: &mut grv2,
                        momentum: mom,
                        eps,
                    },
                    act,
                )
                .expect("gpu");
            assert_close(&format!("{what} train {act:?}(y)"), &gz, &z, F32_BOUND);
        }
    }
}

/// Small trait to copy a host tensor without a backend.
trait CopyHost {
    fn copy_host(&self) -> Tensor;
}
impl CopyHost for Tensor {
    fn copy_host(&self) -> Tensor {
        Tensor::from_vec(self.dims(), self.to_vec().expect("host copy")).expect("same shape")
    }
}

// ---- element-wise, SGD ----------------------------------------------------------------------------

const EW_SHAPES: &[&[usize]] = &[&[1], &[3], &[7, 11], &[1001], &[4, 16, 32, 32], &[2, 13, 7, 7]];

#[test]
fn elementwise_ops() {
    let Some(gpu) = cuda_or_skip("elementwise_ops") else {
        return;
    };
    let cpu = cpu_exact();
    for (i, &dims) in EW_SHAPES.iter().enumerate() {
        let a = rand_host(dims, 3000 + i as u64);
        let b = rand_host(dims, 3100 + i as u64);
        let (ga, gb) = (up(&*gpu, &a), up(&*gpu, &b));
        let what = format!("{dims:?}");
        let y = cpu.relu_forward(&a).expect("relu");
        assert_exact(&format!("relu {what}"), &gpu.relu_forward(&ga).expect("gpu relu"), &y);
        assert_exact(
            &format!("relu_backward {what}"),
            &gpu.relu_backward(&gb, &up(&*gpu, &y)).expect("gpu relu bwd"),
            &cpu.relu_backward(&b, &y).expect("relu bwd"),
        );
        assert_exact(&format!("add {what}"), &gpu.add(&ga, &gb).expect("gpu add"), &cpu.add(&a, &b).expect("add"));
        assert_exact(
            &format!("add_relu {what}"),
            &gpu.add_relu(&ga, &gb).expect("gpu add_relu"),
            &cpu.add_relu(&a, &b).expect("add_relu"),
        );
        let mut cacc = a.copy_host();
        cpu.add_assign(&mut cacc, &b).expect("add_assign");
        let mut gacc = up(&*gpu, &a);
        gpu.add_assign(&mut gacc, &gb).expect("gpu add_assign");
        assert_exact(&format!("add_assign {what}"), &gacc, &cacc);
        cpu.scale_inplace(&mut cacc, -0.37).expect("scale");
        gpu.scale_inplace(&mut gacc, -0.37).expect("gpu scale");
        assert_exact(&format!("scale_inplace {what}"), &gacc, &cacc);
    }
}

#[test]
fn sgd_step_variants() {
    let Some(gpu) = cuda_or_skip("sgd_step_variants") else {
        return;
    };
    let cpu = cpu_exact();
    let variants = [
        SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        SgdStep { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: false },
        SgdStep { lr: 0.01, momentum: 0.0, weight_decay: 0.0, nesterov: false },
        SgdStep { lr: 0.2, momentum: 0.5, weight_decay: 0.0, nesterov: true },
    ];
    for (i, hp) in variants.into_iter().enumerate() {
        for &n in &[1usize, 7, 1000, 4099, 65536] {
            let seed = 4000 + 100 * i as u64 + n as u64;
            let (p, g, m) = (rand_host(&[n], seed), rand_host(&[n], seed + 1), rand_host(&[n], seed + 2));
            let (mut cp, mut cm) = (p.copy_host(), m.copy_host());
            let (mut gp, mut gm) = (up(&*gpu, &p), up(&*gpu, &m));
            let gg = up(&*gpu, &g);
            for _ in 0..3 {
                cpu.sgd_step(&mut cp, &g, &mut cm, hp).expect("cpu sgd");
                gpu.sgd_step(&mut gp, &gg, &mut gm, hp).expect("gpu sgd");
            }
            assert_close(&format!("sgd param {hp:?} n{n}"), &gp, &cp, 1e-6);
            assert_close(&format!("sgd momentum {hp:?} n{n}"), &gm, &cm, 1e-6);
        }
    }
}

// ---- shortcut, pooling ------------------------------------------------------------------------------

#[test]
fn shortcut_forward_backward() {
    let Some(gpu) = cuda_or_skip("shortcut_forward_backward") else {
        return;
    };
    let cpu = cpu_exact();
    // (x dims, channel map, stride)
    let option_a = |c_in: usize, c_out: usize| -> Vec<i32> {
        let pad = (c_out - c_in) / 2;
        (0..c_out).map(|o| if o >= pad && o < pad + c_in { (o - pad) as i32 } else { -1 }).collect()
    };
    let cases: Vec<(Vec<usize>, Vec<i32>, usize)> = vec![
        (vec![4, 16, 32, 32], option_a(16, 32), 2),
        (vec![4, 32, 16, 16], option_a(32, 64), 2),
        (vec![2, 16, 8, 8], (0..16).collect(), 1),
        (vec![1, 5, 7, 7], vec![4, -1, 0, 0, 2, 3, -1], 2),
        (vec![3, 13, 9, 9], (0..13).rev().collect(), 3),
        (vec![2, 3, 7, 7], vec![-1, -1], 2),
    ];
    for (i, (dims, src, stride)) in cases.into_iter().enumerate() {
        let x = rand_host(&dims, 5000 + i as u64);
        let want = cpu.shortcut_forward(&x, &src, stride).expect("cpu shortcut");
        let got = gpu.shortcut_forward(&up(&*gpu, &x), &src, stride).expect("gpu shortcut");
        assert_exact(&format!("shortcut_forward {dims:?} s{stride}"), &got, &want);
        let dy = rand_host(want.dims(), 5100 + i as u64);
        let want = cpu.shortcut_backward(&dy, &src, stride, &dims).expect("cpu shortcut bwd");
        let got = gpu.shortcut_backward(&up(&*gpu, &dy), &src, stride, &dims).expect("gpu shortcut bwd");
        assert_close(&format!("shortcut_backward {dims:?} s{stride}"), &got, &want, 1e-6);
    }
}

#[test]
fn maxpool_first_max_rule() {
    let Some(gpu) = cuda_or_skip("maxpool_first_max_rule") else {
        return;
    };
    let cpu = cpu_exact();
    // (dims, kernel, stride); inputs are quantised to 5 levels so windows have ties.
    let cases: &[(&[usize], usize, usize)] = &[
        (&[4, 64, 32, 32], 2, 2),
        (&[2, 512, 2, 2], 2, 2),
        (&[1, 5, 7, 7], 2, 2),
        (&[2, 3, 9, 9], 3, 2),
        (&[1, 13, 7, 7], 3, 1),
        (&[2, 4, 5, 5], 5, 1),
        (&[1, 2, 8, 6], 3, 3),
    ];
    for (i, &(dims, k, s)) in cases.iter().enumerate() {
        let n: usize = dims.iter().product();
        let q: Vec<f32> = rand_vec(n, 6000 + i as u64, 0.0, 5.0).iter().map(|v| v.floor() - 2.0).collect();
        let x = Tensor::from_vec(dims, q).expect("x");
        let want = cpu.maxpool_forward(&x, k, s, 0).expect("cpu maxpool");
        let gx = up(&*gpu, &x);
        let got = gpu.maxpool_forward(&gx, k, s, 0).expect("gpu maxpool");
        assert_exact(&format!("maxpool_forward {dims:?} k{k} s{s}"), &got, &want);
        let dy = rand_host(want.dims(), 6100 + i as u64);
        let want = cpu.maxpool_backward(&dy, &x, k, s, 0).expect("cpu maxpool bwd");
        let got = gpu.maxpool_backward(&up(&*gpu, &dy), &gx, k, s, 0).expect("gpu maxpool bwd");
        assert_exact(&format!("maxpool_backward {dims:?} k{k} s{s}"), &got, &want);
    }
}

#[test]
fn global_avgpool() {
    let Some(gpu) = cuda_or_skip("global_avgpool") else {
        return;
    };
    let cpu = cpu_exact();
    for (i, dims) in
        [[4usize, 64, 8, 8], [2, 16, 32, 32], [1, 5, 7, 7], [3, 512, 2, 2], [2, 3, 1, 1]].iter().enumerate()
    {
        let x = rand_host(dims, 7000 + i as u64);
        let want = cpu.global_avgpool_forward(&x).expect("cpu avgpool");
        let got = gpu.global_avgpool_forward(&up(&*gpu, &x)).expect("gpu avgpool");
        assert_close(&format!("global_avgpool_forward {dims:?}"), &got, &want, F32_BOUND);
        let dy = rand_host(want.dims(), 7100 + i as u64);
        let want = cpu.global_avgpool_backward(&dy, dims).expect("cpu avgpool bwd");
        let got = gpu.global_avgpool_backward(&up(&*gpu, &dy), dims).expect("gpu avgpool bwd");
        assert_close(&format!("global_avgpool_backward {dims:?}"), &got, &want, 1e-6);
    }
}

// ---- linear ------------------------------------------------------------------------------------------

#[test]
fn linear_forward_backward() {
    let Some(gpu) = cuda_or_skip("linear_forward_backward") else {
        return;
    };
    let cpu = cpu_exact();
    // (batch, in, out): CIFAR heads, VGG classifier, odd sizes, and one large enough for the
    // 128x128 tiles.
    for (i, &(n, fin, fout)) in
        [(128, 64, 10), (128, 512, 512), (1, 5, 3), (7, 13, 27), (33, 100, 65), (512, 256, 384)].iter().enumerate()
    {
        let seed = 8000 + 10 * i as u64;
        let (x, w, b) = (rand_host(&[n, fin], seed), rand_host(&[fout, fin], seed + 1), rand_host(&[fout], seed + 2));
        let (gx, gw, gb) = (up(&*gpu, &x), up(&*gpu, &w), up(&*gpu, &b));
        let what = format!("linear n{n} in{fin} out{fout}");
        for bias in [true, false] {
            let want = cpu.linear_forward(&x, &w, bias.then_some(&b)).expect("cpu linear");
            let got = gpu.linear_forward(&gx, &gw, bias.then_some(&gb)).expect("gpu linear");
            assert_close(&format!("{what} forward bias={bias}"), &got, &want, F32_BOUND);
        }
        let dy = rand_host(&[n, fout], seed + 3);
        let want = cpu.linear_backward(&dy, &x, &w, true).expect("cpu linear bwd");
        let got = gpu.linear_backward(&up(&*gpu, &dy), &gx, &gw, true).expect("gpu linear bwd");
        assert_close(&format!("{what} dx"), &got.dx, &want.dx, F32_BOUND);
        assert_close(&format!("{what} dw"), &got.dw, &want.dw, F32_BOUND);
        match (&got.db, &want.db) {
            (Some(g), Some(c)) => assert_close(&format!("{what} db"), g, c, F32_BOUND),
            _ => panic!("{what}: bias gradient missing"),
        }
        let nobias = gpu.linear_backward(&up(&*gpu, &dy), &gx, &gw, false).expect("gpu linear bwd no bias");
        assert!(nobias.db.is_none());
    }
}

/// The raw SGEMM in all three layouts, including sizes that select the 128x128 tiles.
#[test]
fn sgemm_layouts() {
    let Some(be) = cuda_backend_or_skip("sgemm_layouts") else {
        return;
    };
    for (i, &(m, n, k)) in
        [(1536usize, 1536usize, 64usize), (100, 70, 33), (1, 1, 1), (257, 129, 300)].iter().enumerate()
    {
        let a = rand_vec(m * k, 8500 + i as u64, -1.0, 1.0);
        let b = rand_vec(k * n, 8600 + i as u64, -1.0, 1.0);
        for layout in [GemmLayout::NN, GemmLayout::NT, GemmLayout::TN] {
            // op(A)[r, t] and op(B)[t, c] under this layout.
            let av = |r: usize, t: usize| {
                if layout == GemmLayout::TN {
                    a[t * m + r]
                } else {
                    a[r * k + t]
                }
            };
            let bv = |t: usize, c: usize| {
                if layout == GemmLayout::NT {
                    b[c * k + t]
                } else {
                    b[t * n + c]
                }
            };
            let mut want = vec![0.0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    want[r * n + c] = (0..k).map(|t| av(r, t) as f64 * bv(t, c) as f64).sum::<f64>() as f32;
                }
            }
            let ga = be.stream().clone_htod(&a).expect("a");
            let gb = be.stream().clone_htod(&b).expect("b");
            let mut gc = be.stream().alloc_zeros::<f32>(m * n).expect("c");
            be.sgemm(layout, m, n, k, &ga, &gb, &mut gc).expect("sgemm");
            let got = be.stream().clone_dtoh(&gc).expect("c back");
            assert_close_vec(&format!("sgemm {layout:?} {m}x{n}x{k}"), &got, &want, F32_BOUND);
        }
    }
}

// ---- losses ----------------------------------------------------------------------------------------

#[test]
fn losses() {
    let Some(gpu) = cuda_or_skip("losses") else {
        return;
    };
    let cpu = cpu_exact();
    for (i, &(n, classes)) in [(128usize, 10usize), (1, 10), (7, 100), (3, 1), (5, 37)].iter().enumerate() {
        let seed = 9000 + 10 * i as u64;
        // Scaled logits, plus a row of ties to check the arg-max rule.
        let mut v = rand_vec(n * classes, seed, -4.0, 4.0);
        v[..classes].iter_mut().for_each(|x| *x = 1.5);
        let logits = Tensor::from_vec(&[n, classes], v).expect("logits");
        let labels: Vec<u32> = (0..n).map(|r| ((r * 7 + i) % classes) as u32).collect();
        let want = cpu.softmax_cross_entropy(&logits, &labels).expect("cpu xent");
        let got = gpu.softmax_cross_entropy(&up(&*gpu, &logits), &labels).expect("gpu xent");
        let what = format!("softmax_cross_entropy n{n} classes{classes}");
        assert_close_vec(&format!("{what} loss"), &[got.loss], &[want.loss], F32_BOUND);
        assert_close(&format!("{what} dlogits"), &got.dlogits, &want.dlogits, F32_BOUND);
        assert_eq!(got.correct, want.correct, "{what}: correct count");

        let teacher = Tensor::from_vec(&[n, classes], rand_vec(n * classes, seed + 1, -3.0, 3.0)).expect("teacher");
        for t in [1.0f32, 4.0] {
            let (cl, cg) = cpu.distill_kl(&logits, &teacher, t).expect("cpu kl");
            let (gl, gg) = gpu.distill_kl(&up(&*gpu, &logits), &up(&*gpu, &teacher), t).expect("gpu kl");
            assert_close_vec(&format!("distill_kl n{n} T{t} loss"), &[gl], &[cl], F32_BOUND);
            assert_close(&format!("distill_kl n{n} T{t} grad"), &gg, &cg, F32_BOUND);
        }

        let target = rand_host(&[n, classes], seed + 2);
        let (cl, cg) = cpu.mse_loss(&logits, &target).expect("cpu mse");
        let (gl, gg) = gpu.mse_loss(&up(&*gpu, &logits), &up(&*gpu, &target)).expect("gpu mse");
        assert_close_vec(&format!("mse_loss n{n} loss"), &[gl], &[cl], F32_BOUND);
        assert_close(&format!("mse_loss n{n} grad"), &gg, &cg, F32_BOUND);
    }
    // Rejected labels are an error, not a crash.
    let logits = gpu.zeros(&[2, 3]).expect("zeros");
    assert!(gpu.softmax_cross_entropy(&logits, &[0, 3]).is_err());
}

// ---- pruning and search ------------------------------------------------------------------------------

#[test]
fn index_select_every_axis() {
    let Some(gpu) = cuda_or_skip("index_select_every_axis") else {
        return;
    };
    let cpu = cpu_exact();
    let dims = [3usize, 13, 7, 8];
    let x = rand_host(&dims, 10_000);
    let gx = up(&*gpu, &x);
    for (axis, &d) in dims.iter().enumerate() {
        let d = d as u32;
        for index in [vec![0u32], (0..d).rev().collect(), (0..d).step_by(2).collect(), vec![d - 1, 0, d - 1]] {
            let want = cpu.index_select(&x, axis, &index).expect("cpu index_select");
            let got = gpu.index_select(&gx, axis, &index).expect("gpu index_select");
            assert_exact(&format!("index_select axis {axis} {index:?}"), &got, &want);
        }
    }
    assert!(gpu.index_select(&gx, 1, &[13]).is_err(), "out-of-range index must be an error");
    assert!(gpu.index_select(&gx, 4, &[0]).is_err(), "out-of-range axis must be an error");
}

/// Keeps the channels whose hash is below `keep`, at least one.
#[cfg(feature = "cuda-experimental")]
fn keep_list(c: usize, keep: f32, seed: u64) -> Vec<u32> {
    let h = rand_vec(c, seed, 0.0, 1.0);
    let v: Vec<u32> = (0..c as u32).filter(|&i| h[i as usize] < keep).collect();
    if v.is_empty() {
        vec![(seed % c as u64) as u32]
    } else {
        v
    }
}

/// `gather_candidates` (one batched launch for K index lists) against the CPU's per-candidate
/// `index_select`, along every axis of conv weights and activations, including an empty list.
#[test]
fn gather_candidates_matches_cpu() {
    let Some(gpu) = cuda_or_skip("gather_candidates_matches_cpu") else {
        return;
    };
    let cpu = cpu_exact();
    for (dims, seed) in [(&[16usize, 8, 3, 3][..], 31u64), (&[4, 13, 7, 7][..], 32), (&[10, 64][..], 33)] {
        let x = rand_host(dims, seed);
        let gx = up(&*gpu, &x);
        for axis in 0..dims.len() {
            let len = dims[axis] as u32;
            let lists: Vec<Vec<u32>> =
                vec![(0..len).collect(), (0..len).rev().step_by(2).collect(), vec![len - 1, 0, len - 1], vec![]];
            let refs: Vec<&[u32]> = lists.iter().map(|l| l.as_slice()).collect();
            let want = cpu.gather_candidates(&x, axis, &refs).expect("cpu gather");
            let got = gpu.gather_candidates(&gx, axis, &refs).expect("gpu gather");
            assert_eq!(got.len(), refs.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.dims(), w.dims(), "{dims:?} axis {axis} candidate {k}");
                assert_eq!(host(g), host(w), "{dims:?} axis {axis} candidate {k}");
                let single = cpu.index_select(&x, axis, refs[k]).expect("cpu index_select");
                assert_eq!(host(w), host(&single), "cpu gather_candidates vs index_select");
            }
        }
    }
}

#[cfg(feature = "cuda-experimental")]
#[test]
fn batched_gather_matches_separate_cpu_calls() {
    let Some(be) = cuda_backend_or_skip("batched_gather_matches_separate_cpu_calls") else {
        return;
    };
    let cpu = cpu_exact();
    let k = 16;
    // Conv weights: output and input channels at once, for several layer shapes.
    for (i, wd) in [[64usize, 64, 3, 3], [32, 16, 3, 3], [13, 27, 1, 1], [512, 512, 3, 3]].iter().enumerate() {
        let w = rand_host(wd, 11_000 + i as u64);
        let outs: Vec<Vec<u32>> =
            (0..k).map(|j| keep_list(wd[0], 0.3 + 0.04 * j as f32, 100 * i as u64 + j as u64)).collect();
        let ins: Vec<Vec<u32>> =
            (0..k).map(|j| keep_list(wd[1], 0.9 - 0.04 * j as f32, 200 * i as u64 + j as u64)).collect();
        let ro: Vec<&[u32]> = outs.iter().map(|v| v.as_slice()).collect();
        let ri: Vec<&[u32]> = ins.iter().map(|v| v.as_slice()).collect();
        let packed = be.gather_conv_weights(&up(&*be, &w), &ro, &ri).expect("gpu gather");
        assert_eq!(packed.len(), k);
        let all = host(&packed.data);
        for j in 0..k {
            let a = cpu.index_select(&w, 0, &outs[j]).expect("cpu rows");
            let want = cpu.index_select(&a, 1, &ins[j]).expect("cpu cols");
            assert_eq!(packed.dims[j], want.dims().to_vec(), "candidate {j} shape");
            let got = &all[packed.offsets[j]..packed.offsets[j + 1]];
            assert_eq!(got, host(&want).as_slice(), "conv weight {wd:?} candidate {j}");
            assert_exact(&format!("unpack {j}"), &be.unpack(&packed, j).expect("unpack"), &want);
        }
    }
    // Batch norm parameters [C] and activations [N, C, H, W] along the channel axis.
    for (i, c) in [16usize, 64, 5].iter().enumerate() {
        let idx: Vec<Vec<u32>> = (0..k).map(|j| keep_list(*c, 0.5, 300 + 10 * i as u64 + j as u64)).collect();
        let r: Vec<&[u32]> = idx.iter().map(|v| v.as_slice()).collect();
        let gamma = rand_host(&[*c], 12_000 + i as u64);
        let packed = be.gather_channel_params(&up(&*be, &gamma), &r).expect("gpu gather params");
        let acts = rand_host(&[6, *c, 7, 5], 12_100 + i as u64);
        let packed_a = be.gather_activations(&up(&*be, &acts), &r).expect("gpu gather acts");
        let (pp, pa) = (host(&packed.data), host(&packed_a.data));
        for j in 0..k {
            let want = cpu.index_select(&gamma, 0, &idx[j]).expect("cpu");
            assert_eq!(
                &pp[packed.offsets[j]..packed.offsets[j + 1]],
                host(&want).as_slice(),
                "bn params candidate {j}"
            );
            let want = cpu.index_select(&acts, 1, &idx[j]).expect("cpu");
            assert_eq!(packed_a.dims[j], want.dims().to_vec());
            assert_eq!(
                &pa[packed_a.offsets[j]..packed_a.offsets[j + 1]],
                host(&want).as_slice(),
                "activations candidate {j}"
            );
        }
    }
    // A plan is reusable, and bad lists are errors.
    let w = up(&*be, &rand_host(&[8, 4, 3, 3], 13_000));
    let plan =
        be.plan_gather(GatherView::conv_weight(&[8, 4, 3, 3]).expect("view"), &[&[1, 0]], &[&[3]]).expect("plan");
    let a = be.gather_with_plan(&plan, &w).expect("run 1");
    let b = be.gather_with_plan(&plan, &w).expect("run 2");
    assert_eq!(host(&a), host(&b));
    assert!(be.plan_gather(GatherView::conv_weight(&[8, 4, 3, 3]).expect("view"), &[&[8]], &[&[0]]).is_err());
}

#[test]
fn feature_mse_matches_separate_cpu_calls() {
    let Some(be) = cuda_backend_or_skip("feature_mse_matches_separate_cpu_calls") else {
        return;
    };
    let cpu = cpu_exact();
    for &(k, m) in &[(16usize, 256 * 64 * 8 * 8), (16, 3), (16, 1001), (4, 1 << 20), (2, 10_000_003), (1, 1)] {
        let base = rand_host(&[m], 14_000 + m as u64);
        let cand = Tensor::from_vec(&[k, m], rand_vec(k * m, 14_100 + m as u64, -1.0, 1.0)).expect("cand");
        let (gc, gb) = (up(&*be, &cand), up(&*be, &base));
        let got = be.feature_mse(&gc, &gb).expect("gpu feature_mse");
        assert_eq!(got.len(), k);
        let cv = host(&cand);
        for (j, g) in got.iter().enumerate() {
            let one = Tensor::from_vec(&[1, m], cv[j * m..(j + 1) * m].to_vec()).expect("one");
            let want = cpu.feature_mse(&one, &base).expect("cpu feature_mse")[0];
            let e = (g - want).abs() / want.abs().max(1e-12);
            assert!(e <= 1e-5, "feature_mse k{k} m{m} candidate {j}: gpu {g} cpu {want} (rel {e:.2e})");
        }
        let again = be.feature_mse(&gc, &gb).expect("again");
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "not deterministic"
        );
        // The device-resident variant gives the same bits.
        let mut out = be.stream().alloc_zeros::<f32>(k).expect("alloc");
        be.feature_mse_into(&gc, &gb, &mut out).expect("into");
        let dev = be.stream().clone_dtoh(&out).expect("dtoh");
        assert_eq!(dev, got);
    }
}

// ---- memory and errors ---------------------------------------------------------------------------

#[test]
fn memory_ops_and_device_checks() {
    let Some(gpu) = cuda_or_skip("memory_ops_and_device_checks") else {
        return;
    };
    let x = rand_host(&[3, 5, 7], 15_000);
    let g = up(&*gpu, &x);
    assert!(g.is_cuda());
    assert_eq!(host(&g), host(&x));
    assert_eq!(host(&gpu.copy(&g).expect("copy")), host(&x));
    assert_eq!(host(&gpu.to_device(&g).expect("to_device")), host(&x));
    assert!(host(&gpu.zeros(&[4, 4]).expect("zeros")).iter().all(|&v| v == 0.0));
    gpu.synchronize().expect("synchronize");
    // Host tensors and mismatched shapes are errors, not crashes.
    assert!(gpu.relu_forward(&x).is_err());
    assert!(gpu.add(&g, &up(&*gpu, &rand_host(&[3, 5, 6], 1))).is_err());
    assert!(gpu.conv2d_forward(&g, &g, ConvSpec { stride: 1, pad: 0, groups: 1 }).is_err());
    assert!(gpu.from_host(&[2, 2], &[1.0; 3]).is_err());
    assert!(gpu.describe().starts_with("cuda:"));
}

// ---- graphs --------------------------------------------------------------------------------------

#[cfg(feature = "cuda-experimental")]
#[test]
fn graph_capture_replays_a_fixed_shape_block() {
    let Some(be) = private_cuda_backend_or_skip("graph_capture_replays_a_fixed_shape_block") else {
        return;
    };
    let be: &CudaBackend = &be;
    let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let x_host = rand_host(&[8, 16, 32, 32], 16_000);
    let w = up(be, &rand_host(&[16, 16, 3, 3], 16_001));
    let gamma = up(be, &Tensor::from_vec(&[16], rand_vec(16, 16_002, 0.5, 1.5)).expect("gamma"));
    let beta = up(be, &rand_host(&[16], 16_003));
    let mean = up(be, &rand_host(&[16], 16_004));
    let var = up(be, &Tensor::from_vec(&[16], rand_vec(16, 16_005, 0.5, 2.0)).expect("var"));
    let (scale, shift) = be
        .batchnorm_fold(BnParams { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 })
        .expect("fold");
    let mut x = up(be, &x_host);
    let mut h = be.zeros(&[8, 16, 32, 32]).expect("h");
    let mut y = be.zeros(&[8, 16, 32, 32]).expect("y");
    let mut pooled = be.zeros(&[8, 16]).expect("pooled");
    // A residual block: conv-bn-relu, conv-bn + x, relu, then the global pool.
    let block = |x: &Tensor, h: &mut Tensor, y: &mut Tensor, pooled: &mut Tensor| -> lfgcl::Result<()> {
        let e1 = ConvEpilogue { scale: &scale, shift: &shift, residual: None, act: Activation::Relu };
        be.conv2d_fused_into(x, &w, spec, Some(&e1), Precision::F32, h)?;
        let e2 = ConvEpilogue { residual: Some(x), ..e1 };
        be.conv2d_fused_into(h, &w, spec, Some(&e2), Precision::F32, y)?;
        be.global_avgpool_into(y, pooled)
    };
    let graph = be.capture(|| block(&x, &mut h, &mut y, &mut pooled)).expect("capture");
    for round in 0..2 {
        let mut fresh_h = be.zeros(&[8, 16, 32, 32]).expect("h");
        let mut fresh_y = be.zeros(&[8, 16, 32, 32]).expect("y");
        let mut direct = be.zeros(&[8, 16]).expect("pooled");
        block(&x, &mut fresh_h, &mut fresh_y, &mut direct).expect("direct launches");
        graph.replay().expect("replay");
        assert_eq!(host(&pooled), host(&direct), "round {round}: graph and direct launches differ");
        assert_eq!(host(&y), host(&fresh_y), "round {round}");
        // New input in the same buffer: the next replay must use it.
        let next = rand_vec(x_host.numel(), 16_100 + round, -1.0, 1.0);
        be.stream().memcpy_htod(&next, x.cuda_slice_mut().expect("device x")).expect("write input");
    }
    // Host transfers inside a capture are refused, and the backend stays usable.
    assert!(be.capture(|| be.from_host(&[1], &[0.0]).map(drop)).is_err());
    assert!(be.capture(|| be.softmax_cross_entropy(&pooled, &[0; 8]).map(drop)).is_err());
    be.synchronize().expect("usable after a refused capture");
    assert_eq!(host(&be.relu_forward(&up(be, &rand_host(&[4], 1))).expect("relu")).len(), 4);
}

// ---- grouped and depthwise convolution ----------------------------------------------------------
//
// The reference is a naive grouped convolution in f64 written here (so these tests do not depend
// on the CPU backend's grouped kernels); `grouped_reference_matches_cpu_per_group` checks it
// against the CPU's dense conv run on each group's channel slice, without a GPU.

/// (N, C, H, W, K, R, stride, pad, groups).
type GroupDims = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

const GROUP_SHAPES: &[GroupDims] = &[
    // Narrow groups (direct kernels): 2 and 4 groups of 4, 1x1 with 4 -> 8 per group.
    (2, 8, 9, 9, 8, 3, 1, 1, 2),
    (3, 16, 7, 7, 16, 3, 2, 1, 4),
    (2, 16, 9, 9, 32, 1, 1, 0, 4),
    // ResNeXt 32x4d (32 groups of width 4), stride 1 and 2, and 32x8d.
    (2, 128, 9, 9, 128, 3, 1, 1, 32),
    (2, 128, 10, 10, 128, 3, 2, 1, 32),
    (1, 256, 6, 6, 256, 3, 1, 1, 32),
    // Wide groups (grouped implicit GEMM): 2 groups of 32, 4 groups of 12 -> 24, 32 groups of 16,
    // 8 in -> 16 out per group, a 5x5 window.
    (2, 64, 8, 8, 64, 3, 1, 1, 2),
    (3, 48, 7, 7, 96, 3, 2, 1, 4),
    (1, 512, 5, 5, 512, 3, 1, 1, 32),
    (2, 16, 9, 9, 32, 3, 1, 1, 2),
    (1, 40, 7, 7, 40, 5, 1, 2, 2),
    // Depthwise: stride 1 and 2, odd and even sizes, no padding, a channel multiplier of 2,
    // a 5x5 window, MobileNetV2-like 96 channels.
    (2, 32, 9, 9, 32, 3, 1, 1, 32),
    (2, 24, 11, 11, 24, 3, 2, 1, 24),
    (1, 13, 7, 7, 13, 3, 2, 1, 13),
    (1, 7, 6, 6, 7, 3, 2, 0, 7),
    (2, 6, 9, 9, 12, 3, 1, 1, 6),
    (1, 5, 8, 8, 5, 5, 2, 2, 5),
    (2, 96, 15, 15, 96, 3, 2, 1, 96),
    (1, 3, 1, 1, 3, 3, 1, 1, 3),
];

struct GroupCase {
    shape: ConvShape,
    spec: ConvSpec,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
}

fn group_case(i: usize, (n, c, h, w, k, r, stride, pad, groups): GroupDims) -> GroupCase {
    let spec = ConvSpec { stride, pad, groups };
    let shape = ConvShape::new(&[n, c, h, w], &[k, c / groups, r, r], spec).expect("valid grouped conv shape");
    let seed = 20_000 + 10 * i as u64;
    GroupCase {
        x: rand_host(&shape.input_dims(), seed),
        w: rand_host(&shape.weight_dims(), seed + 1),
        dy: rand_host(&shape.output_dims(), seed + 2),
        shape,
        spec,
    }
}

fn group_cases() -> Vec<GroupCase> {
    GROUP_SHAPES.iter().enumerate().map(|(i, &d)| group_case(i, d)).collect()
}

fn glabel(s: &ConvShape) -> String {
    format!(
        "x [{},{},{},{}] w [{},{},{},{}] s{} p{} g{}",
        s.n,
        s.c_in,
        s.h,
        s.w,
        s.c_out,
        s.c_in / s.groups,
        s.kh,
        s.kw,
        s.stride,
        s.pad,
        s.groups
    )
}

/// Calls `f(y index, x index, w index)` for every multiply-accumulate of the grouped
/// convolution `s`, in (img, k, oh, ow, c, r, s) order (taps in the zero padding skipped).
fn for_each_mac(s: &ConvShape, mut f: impl FnMut(usize, usize, usize)) {
    let (cg, kg) = (s.c_in / s.groups, s.c_out / s.groups);
    for img in 0..s.n {
        for k in 0..s.c_out {
            let g = k / kg;
            for oh in 0..s.out_h {
                for ow in 0..s.out_w {
                    let o = ((img * s.c_out + k) * s.out_h + oh) * s.out_w + ow;
                    for cl in 0..cg {
                        let c = g * cg + cl;
                        for r in 0..s.kh {
                            let ih = (oh * s.stride + r) as isize - s.pad as isize;
                            if ih < 0 || ih >= s.h as isize {
                                continue;
                            }
                            for q in 0..s.kw {
                                let iw = (ow * s.stride + q) as isize - s.pad as isize;
                                if iw < 0 || iw >= s.w as isize {
                                    continue;
                                }
                                let xi = ((img * s.c_in + c) * s.h + ih as usize) * s.w + iw as usize;
                                let wi = ((k * cg + cl) * s.kh + r) * s.kw + q;
                                f(o, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn to_tensor(dims: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(dims, v.into_iter().map(|v| v as f32).collect()).expect("reference tensor")
}

fn naive_forward(c: &GroupCase) -> Tensor {
    let (x, w) = (host(&c.x), host(&c.w));
    let mut y = vec![0.0f64; c.shape.output_dims().iter().product()];
    for_each_mac(&c.shape, |o, xi, wi| y[o] += x[xi] as f64 * w[wi] as f64);
    to_tensor(&c.shape.output_dims(), y)
}

fn naive_backward_data(c: &GroupCase) -> Tensor {
    let (dy, w) = (host(&c.dy), host(&c.w));
    let mut dx = vec![0.0f64; c.shape.input_dims().iter().product()];
    for_each_mac(&c.shape, |o, xi, wi| dx[xi] += dy[o] as f64 * w[wi] as f64);
    to_tensor(&c.shape.input_dims(), dx)
}

fn naive_backward_weight(c: &GroupCase) -> Tensor {
    let (dy, x) = (host(&c.dy), host(&c.x));
    let mut dw = vec![0.0f64; c.shape.weight_dims().iter().product()];
    for_each_mac(&c.shape, |o, xi, wi| dw[wi] += dy[o] as f64 * x[xi] as f64);
    to_tensor(&c.shape.weight_dims(), dw)
}

/// `act(y * scale[k] + shift[k] + residual)`, the fused epilogue, on a host tensor.
fn epilogue_ref(y: &Tensor, scale: &Tensor, shift: &Tensor, residual: Option<&Tensor>, act: Activation) -> Tensor {
    let dims = y.dims().to_vec();
    let (k, plane) = (dims[1], dims[2] * dims[3]);
    let (sc, sh) = (host(scale), host(shift));
    let res = residual.map(host);
    let v: Vec<f32> = host(y)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane) % k;
            let mut v = v * sc[ch] + sh[ch];
            if let Some(r) = &res {
                v += r[i];
            }
            act.apply(v)
        })
        .collect();
    Tensor::from_vec(&dims, v).expect("epilogue reference")
}

/// Runs without a GPU: the naive reference against the CPU's dense conv applied to each group's
/// channel slice (and, for one group, to the whole tensors).
#[test]
fn grouped_reference_matches_cpu_per_group() {
    let cpu = cpu_exact();
    let mut cases = group_cases();
    cases.push(group_case(99, (2, 5, 7, 7, 6, 3, 2, 1, 1)));
    for c in cases.iter().filter(|c| c.shape.n * c.shape.c_out * c.shape.c_in <= 40_000) {
        let s = &c.shape;
        let (cg, kg) = (s.c_in / s.groups, s.c_out / s.groups);
        let y = naive_forward(c);
        let dense = ConvSpec { groups: 1, ..c.spec };
        for g in 0..s.groups {
            let ci: Vec<u32> = (g * cg..(g + 1) * cg).map(|v| v as u32).collect();
            let ki: Vec<u32> = (g * kg..(g + 1) * kg).map(|v| v as u32).collect();
            let xg = cpu.index_select(&c.x, 1, &ci).expect("x slice");
            let wg = cpu.index_select(&c.w, 0, &ki).expect("w slice");
            let want = cpu.conv2d_forward(&xg, &wg, dense).expect("cpu dense conv of one group");
            let got = cpu.index_select(&y, 1, &ki).expect("y slice");
            assert_close(&format!("reference forward {} group {g}", glabel(s)), &got, &want, 1e-5);
            let dyg = cpu.index_select(&c.dy, 1, &ki).expect("dy slice");
            let want = cpu.conv2d_backward_data(&dyg, &wg, xg.dims(), dense).expect("cpu bwd data");
            let got = cpu.index_select(&naive_backward_data(c), 1, &ci).expect("dx slice");
            assert_close(&format!("reference backward data {} group {g}", glabel(s)), &got, &want, 1e-5);
            let want = cpu.conv2d_backward_weight(&dyg, &xg, wg.dims(), dense).expect("cpu bwd weight");
            let got = cpu.index_select(&naive_backward_weight(c), 0, &ki).expect("dw slice");
            assert_close(&format!("reference backward weight {} group {g}", glabel(s)), &got, &want, 1e-5);
        }
    }
}

#[test]
fn grouped_conv_forward_backward() {
    let Some(be) = cuda_backend_or_skip("grouped_conv_forward_backward") else {
        return;
    };
    for c in group_cases() {
        let what = glabel(&c.shape);
        let (gx, gw, gdy) = (up(&*be, &c.x), up(&*be, &c.w), up(&*be, &c.dy));
        let got = be
            .conv2d_forward_with(&gx, &gw, c.spec, Precision::F32)
            .unwrap_or_else(|e| panic!("gpu grouped conv {what}: {e}"));
        assert_close(&format!("grouped conv2d_forward {what}"), &got, &naive_forward(&c), F32_BOUND);

        let xd = c.shape.input_dims();
        let got = be
            .conv2d_backward_data_with(&gdy, &gw, &xd, c.spec, Precision::F32)
            .unwrap_or_else(|e| panic!("gpu grouped conv bwd data {what}: {e}"));
        assert_close(&format!("grouped conv2d_backward_data {what}"), &got, &naive_backward_data(&c), F32_BOUND);

        let wd = c.shape.weight_dims();
        let got = be
            .conv2d_backward_weight(&gdy, &gx, &wd, c.spec)
            .unwrap_or_else(|e| panic!("gpu grouped conv bwd weight {what}: {e}"));
        assert_close(&format!("grouped conv2d_backward_weight {what}"), &got, &naive_backward_weight(&c), F32_BOUND);
        let again = be.conv2d_backward_weight(&gdy, &gx, &wd, c.spec).expect("second run");
        assert_eq!(host(&got), host(&again), "grouped conv2d_backward_weight is not deterministic for {what}");
    }
}

/// Long reductions (many pixel splits) for both backward-weight families, twice each.
#[test]
fn grouped_conv_backward_weight_split_k_is_deterministic() {
    let Some(be) = cuda_backend_or_skip("grouped_conv_backward_weight_split_k_is_deterministic") else {
        return;
    };
    let shapes: &[GroupDims] = &[
        (32, 32, 28, 28, 32, 3, 1, 1, 32),   // depthwise, 25088 pixels
        (16, 64, 32, 32, 64, 3, 1, 1, 2),    // grouped GEMM, 16384 pixels
        (16, 128, 16, 16, 128, 3, 1, 1, 32), // ResNeXt width 4
    ];
    for (i, &d) in shapes.iter().enumerate() {
        let c = group_case(100 + i, d);
        let what = glabel(&c.shape);
        let (gx, gdy) = (up(&*be, &c.x), up(&*be, &c.dy));
        let wd = c.shape.weight_dims();
        let got = be.conv2d_backward_weight(&gdy, &gx, &wd, c.spec).expect("gpu bwd weight");
        assert_close(&format!("grouped conv2d_backward_weight {what}"), &got, &naive_backward_weight(&c), F32_BOUND);
        for _ in 0..2 {
            let again = be.conv2d_backward_weight(&gdy, &gx, &wd, c.spec).expect("again");
            assert_eq!(host(&got), host(&again), "grouped conv2d_backward_weight is not deterministic for {what}");
        }
    }
}

/// Grouped convs ignore the tensor-core precisions (they always run the exact f32 kernels).
#[test]
fn grouped_conv_runs_in_f32_at_every_precision() {
    let Some(be) = private_cuda_backend_or_skip("grouped_conv_runs_in_f32_at_every_precision") else {
        return;
    };
    for &i in &[0usize, 3, 6, 11] {
        let c = group_case(i, GROUP_SHAPES[i]);
        let (gx, gw, gdy) = (up(&be, &c.x), up(&be, &c.w), up(&be, &c.dy));
        let xd = c.shape.input_dims();
        let f32_fwd = host(&be.conv2d_forward_with(&gx, &gw, c.spec, Precision::F32).expect("f32"));
        let f32_bwd = host(&be.conv2d_backward_data_with(&gdy, &gw, &xd, c.spec, Precision::F32).expect("f32"));
        for p in [Precision::Tf32, Precision::Bf16] {
            be.set_conv_precision(p).expect("set precision");
            let fwd = be.conv2d_forward(&gx, &gw, c.spec).expect("grouped conv");
            assert_eq!(host(&fwd), f32_fwd, "grouped forward at {} must be the f32 result", p.name());
            let bwd = be.conv2d_backward_data(&gdy, &gw, &xd, c.spec).expect("grouped bwd");
            assert_eq!(host(&bwd), f32_bwd, "grouped backward data at {} must be the f32 result", p.name());
        }
        be.set_conv_precision(Precision::F32).expect("reset precision");
    }
}

/// The fused epilogue (scale, shift, residual, activation) on grouped, depthwise and dense convs,
/// with every activation; ReLU6 inputs are scaled so both clamps are hit.
#[test]
fn conv_fused_epilogue_relu6_residual() {
    let Some(be) = private_cuda_backend_or_skip("conv_fused_epilogue_relu6_residual") else {
        return;
    };
    let cpu = cpu_exact();
    let mut cases: Vec<(GroupCase, Tensor)> = group_cases()
        .into_iter()
        .map(|c| {
            let y = naive_forward(&c);
            (c, y)
        })
        .collect();
    // Dense convs through the same epilogue: every precision's kernels.
    for (i, &(n, c, h, w, k, r, stride, pad)) in CONV_SHAPES.iter().enumerate().take(10) {
        let gc = group_case(200 + i, (n, c, h, w, k, r, stride, pad, 1));
        let y = cpu.conv2d_forward(&gc.x, &gc.w, gc.spec).expect("cpu conv");
        cases.push((gc, y));
    }
    for (i, (c, y)) in cases.iter().enumerate() {
        let k = c.shape.c_out;
        let what = glabel(&c.shape);
        // Scale up to 4x so ReLU6's upper clamp is reached.
        let scale = Tensor::from_vec(&[k], rand_vec(k, 30_000 + i as u64, 0.5, 4.0)).expect("scale");
        let shift = Tensor::from_vec(&[k], rand_vec(k, 31_000 + i as u64, -1.0, 3.0)).expect("shift");
        let residual = Tensor::from_vec(
            &c.shape.output_dims(),
            rand_vec(c.shape.output_dims().iter().product(), 32_000 + i as u64, -3.0, 3.0),
        )
        .expect("residual");
        let (gs, gh, gr, gx, gw) = (up(&be, &scale), up(&be, &shift), up(&be, &residual), up(&be, &c.x), up(&be, &c.w));
        let precisions: &[(Precision, f32)] = if c.shape.groups > 1 {
            &[(Precision::F32, F32_BOUND), (Precision::Bf16, F32_BOUND)]
        } else {
            &[(Precision::F32, F32_BOUND), (Precision::Tf32, TF32_BOUND), (Precision::Bf16, BF16_BOUND)]
        };
        for &(precision, bound) in precisions {
            be.set_conv_precision(precision).expect("set precision");
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                for res in [None, Some(&gr)] {
                    let epi = ConvEpilogue { scale: &gs, shift: &gh, residual: res, act };
                    let got = be.conv2d_forward_fused(&gx, &gw, c.spec, &epi).expect("fused conv");
                    let want = epilogue_ref(y, &scale, &shift, res.map(|_| &residual), act);
                    let tag = format!("fused {act:?} residual {} {} {what}", res.is_some(), precision.name());
                    // The epilogue's output scale, not the conv's, is the reference magnitude.
                    assert_close(&tag, &got, &want, bound * 4.0);
                }
            }
        }
        be.set_conv_precision(Precision::F32).expect("reset precision");
    }
}

// ---- ReLU6, padded max pooling ------------------------------------------------------------------

#[test]
fn relu6_forward_backward() {
    let Some(gpu) = cuda_or_skip("relu6_forward_backward") else {
        return;
    };
    let cpu = cpu_exact();
    for (i, &dims) in EW_SHAPES.iter().enumerate() {
        let n: usize = dims.iter().product();
        // Quarter steps over [-8, 8): exact 0 and 6 occur, as do values on both sides of them.
        let v: Vec<f32> = rand_vec(n, 40_000 + i as u64, -8.0, 8.0).iter().map(|v| (v * 4.0).floor() / 4.0).collect();
        let mut v = v;
        for (j, x) in [0.0f32, 6.0, -0.0, 5.75, 6.25, f32::NAN].iter().enumerate() {
            if j < n {
                v[j] = *x;
            }
        }
        let x = Tensor::from_vec(dims, v).expect("x");
        let dy = rand_host(dims, 41_000 + i as u64);
        let what = format!("{dims:?}");
        let y = cpu.relu6_forward(&x).expect("cpu relu6");
        let gy = gpu.relu6_forward(&up(&*gpu, &x)).expect("gpu relu6");
        assert_exact(&format!("relu6 {what}"), &gy, &y);
        let want = cpu.relu6_backward(&dy, &y).expect("cpu relu6 bwd");
        let got = gpu.relu6_backward(&up(&*gpu, &dy), &up(&*gpu, &y)).expect("gpu relu6 bwd");
        assert_exact(&format!("relu6_backward {what}"), &got, &want);
    }
}

#[test]
fn maxpool_padded_first_max_rule() {
    let Some(gpu) = cuda_or_skip("maxpool_padded_first_max_rule") else {
        return;
    };
    let cpu = cpu_exact();
    // (dims, kernel, stride, pad): the ResNet / ResNeXt stem pool (3, 2, 1) at odd and even
    // sizes, tiny planes where every window touches the border, and k2 / k3 s1 variants.
    let cases: &[(&[usize], usize, usize, usize)] = &[
        (&[2, 8, 9, 9], 3, 2, 1),
        (&[1, 5, 8, 8], 3, 2, 1),
        (&[2, 4, 112, 112], 3, 2, 1),
        (&[1, 3, 3, 3], 3, 2, 1),
        (&[1, 2, 1, 1], 3, 2, 1),
        (&[1, 2, 2, 5], 3, 2, 1),
        (&[2, 3, 7, 7], 3, 1, 1),
        (&[1, 4, 6, 5], 2, 2, 1),
        (&[1, 3, 9, 9], 5, 3, 2),
    ];
    for (i, &(dims, k, s, pad)) in cases.iter().enumerate() {
        let n: usize = dims.iter().product();
        // Negative levels only: a padding cell counted as 0 would win; 4 levels give ties.
        let q: Vec<f32> = rand_vec(n, 42_000 + i as u64, 0.0, 4.0).iter().map(|v| v.floor() - 5.0).collect();
        let x = Tensor::from_vec(dims, q).expect("x");
        let what = format!("{dims:?} k{k} s{s} p{pad}");
        let want = cpu.maxpool_forward(&x, k, s, pad).expect("cpu maxpool");
        let gx = up(&*gpu, &x);
        let got = gpu.maxpool_forward(&gx, k, s, pad).expect("gpu maxpool");
        assert_exact(&format!("maxpool_forward {what}"), &got, &want);
        let dy = rand_host(want.dims(), 43_000 + i as u64);
        let want = cpu.maxpool_backward(&dy, &x, k, s, pad).expect("cpu maxpool bwd");
        let got = gpu.maxpool_backward(&up(&*gpu, &dy), &gx, k, s, pad).expect("gpu maxpool bwd");
        assert_close(&format!("maxpool_backward {what}"), &got, &want, 1e-6);
    }
}
