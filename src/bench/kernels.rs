//! Kernel benchmarks on the GPU: per-kernel time (CUDA events), achieved TFLOP/s or GB/s, and
//! the fraction of the device's measured peaks.
//!
//! Method (the same as `scripts/torch_bench.py`, so the two can be put side by side by key):
//! - inputs are created once; every case is warmed up (`warmup` runs, which also compiles and
//!   loads its kernels), then timed `reps` times, each repetition between two events created
//!   with timing enabled; median, min, 10th/90th percentiles and the spread
//!   `(p90 - p10) / median` are reported;
//! - memory-bound cases flush L2 before each repetition by writing a buffer larger than L2
//!   (`max(2 x L2, 64 MiB)`) outside the timed region; compute-bound cases (convolutions, GEMM)
//!   are timed warm;
//! - peaks are measured in the same run: device-to-device copy bandwidth (`cuMemcpyDtoD` of
//!   256 MiB, counting read + write) and f32 GEMM throughput of our own tuned SGEMM
//!   (4096^3, 128x128 tiles). f32 compute cases report their fraction of the SGEMM peak,
//!   memory-bound cases their fraction of the copy bandwidth; tensor-core cases report
//!   TFLOP/s only (no tensor-core peak is measured);
//! - bytes are the compulsory traffic (each input read once, each output written once);
//!   FLOPs are 2 x multiply-accumulates.
//!
//! Shapes: every distinct convolution of ResNet-56 (CIFAR, option A) at batch `batch` (forward
//! in each precision, backward-data in each precision, backward-weight), the depthwise and
//! grouped convolutions of MobileNetV2 and ResNeXt-50 ([`grouped_conv_shapes`], f32 only, at
//! most 32 images; keys end in `_g<groups>`), batch norm, ReLU and
//! add+ReLU at the three stage shapes, SGD over ResNet-56's parameter count, and the search
//! kernels at search sizes: batched gathers for `candidates` candidates and the feature MSE of
//! `candidates` candidates over `search_images` images of 64 x 8 x 8 final features.

use crate::backend::cuda::{CudaBackend, GemmLayout, Precision};
use crate::backend::prelude::*;
use crate::backend::{BnTrainParams, ConvShape, ConvSpec, SgdStep};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use serde::Serialize;

/// One timed kernel (or fused group of launches making one op).
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    /// Shape key shared with `scripts/torch_bench.py`, e.g.
    /// `conv_fwd_f32/n128_c16_h32_w32_k16_r3_s1_p1`.
    pub key: String,
    /// The kernels launched (ours).
    pub kernel: String,
    pub reps: usize,
    pub median_us: f64,
    pub min_us: f64,
    pub p10_us: f64,
    pub p90_us: f64,
    /// `(p90 - p10) / median`, in percent.
    pub spread_pct: f64,
    pub flops: Option<f64>,
    pub bytes: Option<f64>,
    pub tflops: Option<f64>,
    pub gbps: Option<f64>,
    /// Fraction of the measured peak this case is compared with (see `peak`).
    pub fraction_of_peak: Option<f64>,
    /// `sgemm_f32`, `copy_bandwidth`, or `none`.
    pub peak: String,
    pub l2_flushed: bool,
}

/// What to run and how often.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: usize,
    pub reps: usize,
    /// Training batch for the ResNet-56 shapes.
    pub batch: usize,
    /// Candidates per search step (gather, feature MSE).
    pub candidates: usize,
    /// Unlabeled images per search step.
    pub search_images: usize,
    /// Flush L2 before each repetition of memory-bound cases.
    pub flush_l2: bool,
    /// Precisions for the conv forward / backward-data cases.
    pub precisions: Vec<Precision>,
    /// Only cases whose key contains this string.
    pub filter: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 10,
            reps: 100,
            batch: 128,
            candidates: 16,
            search_images: 256,
            flush_l2: true,
            precisions: vec![Precision::F32, Precision::Tf32, Precision::Bf16],
            filter: None,
        }
    }
}

/// A benchmark case: a closure that queues the op once (asynchronously) on the backend's stream.
pub struct Case<'a> {
    pub key: String,
    pub kernel: String,
    pub flops: Option<f64>,
    pub bytes: Option<f64>,
    pub memory_bound: bool,
    /// Compared against the f32 SGEMM peak (false for tensor-core cases).
    pub f32_compute: bool,
    pub run: Box<dyn FnMut() -> Result<()> + 'a>,
}

/// Deterministic pseudo-random host data in [-1, 1) (no RNG state shared with anything else).
fn host_data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rand_tensor(be: &CudaBackend, dims: &[usize], seed: u64) -> Result<Tensor> {
    be.from_host(dims, &host_data(dims.iter().product(), seed))
}

/// Keeps every channel whose hash falls below `keep` (about that fraction), at least one.
fn keep_list(c: usize, keep: f64, seed: u64) -> Vec<u32> {
    let h = host_data(c, seed);
    let v: Vec<u32> = (0..c as u32).filter(|&i| (h[i as usize] as f64 + 1.0) / 2.0 < keep).collect();
    if v.is_empty() {
        vec![0]
    } else {
        v
    }
}

fn conv_key(op: &str, s: &ConvShape) -> String {
    format!("{op}/n{}_c{}_h{}_w{}_k{}_r{}_s{}_p{}", s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.stride, s.pad)
}

/// Every distinct convolution of ResNet-56 for CIFAR (16/32/64 channels at 32/16/8 px).
pub fn resnet56_conv_shapes(batch: usize) -> Result<Vec<ConvShape>> {
    let s1 = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let s2 = ConvSpec { stride: 2, pad: 1, groups: 1 };
    let b = batch;
    Ok(vec![
        ConvShape::new(&[b, 3, 32, 32], &[16, 3, 3, 3], s1)?,
        ConvShape::new(&[b, 16, 32, 32], &[16, 16, 3, 3], s1)?,
        ConvShape::new(&[b, 16, 32, 32], &[32, 16, 3, 3], s2)?,
        ConvShape::new(&[b, 32, 16, 16], &[32, 32, 3, 3], s1)?,
        ConvShape::new(&[b, 32, 16, 16], &[64, 32, 3, 3], s2)?,
        ConvShape::new(&[b, 64, 8, 8], &[64, 64, 3, 3], s1)?,
    ])
}

/// Depthwise and grouped convolutions of ImageNet networks at `batch`: MobileNetV2's depthwise
/// 3x3 at 112x112x96 stride 2 and 56x56x144 stride 1, ResNeXt-50 32x4d's grouped 3x3 in layer 1
/// (32 groups of 4 channels, the direct kernels) and layer 3 (32 groups of 16, the grouped
/// implicit GEMM).
pub fn grouped_conv_shapes(batch: usize) -> Result<Vec<ConvShape>> {
    let b = batch;
    let spec = |stride: usize, groups: usize| ConvSpec { stride, pad: 1, groups };
    Ok(vec![
        ConvShape::new(&[b, 96, 112, 112], &[96, 1, 3, 3], spec(2, 96))?,
        ConvShape::new(&[b, 144, 56, 56], &[144, 1, 3, 3], spec(1, 144))?,
        ConvShape::new(&[b, 128, 56, 56], &[128, 4, 3, 3], spec(1, 32))?,
        ConvShape::new(&[b, 512, 14, 14], &[512, 16, 3, 3], spec(1, 32))?,
    ])
}

/// Builds every case (inputs uploaded now). Used by [`bench_kernels`] and `benches/cuda.rs`.
pub fn cases<'a>(be: &'a CudaBackend, opts: &BenchOptions) -> Result<Vec<Case<'a>>> {
    let mut out: Vec<Case<'a>> = Vec::new();
    let sms = be.sms();
    let mut seed = 1u64;
    let mut next_seed = || {
        seed += 1;
        seed
    };

    for shape in resnet56_conv_shapes(opts.batch)? {
        let spec = ConvSpec { stride: shape.stride, pad: shape.pad, groups: 1 };
        let x = rand_tensor(be, &shape.input_dims(), next_seed())?;
        let w = rand_tensor(be, &shape.weight_dims(), next_seed())?;
        let dy = rand_tensor(be, &shape.output_dims(), next_seed())?;
        let flops = Some(2.0 * shape.macs() as f64);
        let m_fwd = shape.n * shape.out_h * shape.out_w;
        let m_bwd = shape.n * shape.h * shape.w;
        let x = std::rc::Rc::new(x);
        let w = std::rc::Rc::new(w);
        let dy = std::rc::Rc::new(dy);
        for &p in &opts.precisions {
            let (xr, wr) = (x.clone(), w.clone());
            out.push(Case {
                key: conv_key(&format!("conv_fwd_{}", p.name()), &shape),
                kernel: crate::backend::cuda::conv::kernel_for(p, true, m_fwd, shape.c_out, sms).to_string(),
                flops,
                bytes: None,
                memory_bound: false,
                f32_compute: p == Precision::F32,
                run: Box::new(move || be.conv2d_forward_with(&xr, &wr, spec, p).map(drop)),
            });
            let (dyr, wr) = (dy.clone(), w.clone());
            let xd = shape.input_dims();
            out.push(Case {
                key: conv_key(&format!("conv_bwd_data_{}", p.name()), &shape),
                kernel: crate::backend::cuda::conv::kernel_for(p, false, m_bwd, shape.c_in, sms).to_string(),
                flops,
                bytes: None,
                memory_bound: false,
                f32_compute: p == Precision::F32,
                run: Box::new(move || be.conv2d_backward_data_with(&dyr, &wr, &xd, spec, p).map(drop)),
            });
        }
        let (dyr, xr) = (dy.clone(), x.clone());
        let wd = shape.weight_dims();
        out.push(Case {
            key: conv_key("conv_bwd_weight_f32", &shape),
            kernel: "conv_bwdw_f32 + conv_splitk_reduce".into(),
            flops,
            bytes: None,
            memory_bound: false,
            f32_compute: true,
            run: Box::new(move || be.conv2d_backward_weight(&dyr, &xr, &wd, spec).map(drop)),
        });
    }

    // Depthwise and grouped convolutions (always exact f32). ImageNet-sized planes: at most 32
    // images. Depthwise cases are memory bound (bytes: x, y and w once each).
    for shape in grouped_conv_shapes(opts.batch.min(32))? {
        let spec = shape.spec();
        let x = std::rc::Rc::new(rand_tensor(be, &shape.input_dims(), next_seed())?);
        let w = std::rc::Rc::new(rand_tensor(be, &shape.weight_dims(), next_seed())?);
        let dy = std::rc::Rc::new(rand_tensor(be, &shape.output_dims(), next_seed())?);
        let flops = Some(2.0 * shape.macs() as f64);
        let numel = |d: [usize; 4]| d.iter().product::<usize>() as f64;
        let dw = shape.is_depthwise();
        let bytes =
            dw.then(|| 4.0 * (numel(shape.input_dims()) + numel(shape.output_dims()) + numel(shape.weight_dims())));
        let key = |op: &str| format!("{}_g{}", conv_key(op, &shape), shape.groups);
        let kernel = |op: &str| crate::backend::cuda::conv::kernels_for_shape(Precision::F32, op, &shape, sms);
        let (xr, wr) = (x.clone(), w.clone());
        out.push(Case {
            key: key("conv_fwd_f32"),
            kernel: kernel("fwd"),
            flops,
            bytes,
            memory_bound: dw,
            f32_compute: !dw,
            run: Box::new(move || be.conv2d_forward_with(&xr, &wr, spec, Precision::F32).map(drop)),
        });
        let (dyr, wr) = (dy.clone(), w.clone());
        let xd = shape.input_dims();
        out.push(Case {
            key: key("conv_bwd_data_f32"),
            kernel: kernel("bwd_data"),
            flops,
            bytes,
            memory_bound: dw,
            f32_compute: !dw,
            run: Box::new(move || be.conv2d_backward_data_with(&dyr, &wr, &xd, spec, Precision::F32).map(drop)),
        });
        let (dyr, xr) = (dy.clone(), x.clone());
        let wd = shape.weight_dims();
        out.push(Case {
            key: key("conv_bwd_weight_f32"),
            kernel: kernel("bwd_weight"),
            flops,
            bytes,
            memory_bound: dw,
            f32_compute: !dw,
            run: Box::new(move || be.conv2d_backward_weight(&dyr, &xr, &wd, spec).map(drop)),
        });
    }

    // Batch norm, ReLU, add+ReLU at the three stage shapes.
    for (c, hw) in [(16usize, 32usize), (32, 16), (64, 8)] {
        let dims = [opts.batch, c, hw, hw];
        let numel: usize = dims.iter().product();
        let bytes = 4.0 * numel as f64;
        let suffix = format!("n{}_c{c}_h{hw}_w{hw}", opts.batch);
        let x = std::rc::Rc::new(rand_tensor(be, &dims, next_seed())?);
        let y = std::rc::Rc::new(rand_tensor(be, &dims, next_seed())?);
        let gamma = std::rc::Rc::new(rand_tensor(be, &[c], next_seed())?);
        let beta = std::rc::Rc::new(rand_tensor(be, &[c], next_seed())?);
        let mut rm = be.zeros(&[c])?;
        let mut rv = be.from_host(&[c], &vec![1.0; c])?;
        {
            let (x, g, b) = (x.clone(), gamma.clone(), beta.clone());
            out.push(Case {
                key: format!("bn_train_fwd/{suffix}"),
                kernel: "bn_stats_partial + bn_finalize + bn_apply".into(),
                flops: None,
                bytes: Some(2.0 * bytes),
                memory_bound: true,
                f32_compute: false,
                run: Box::new(move || {
                    be.batchnorm_forward_train(
                        &x,
                        BnTrainParams {
                            gamma: &g,
                            beta: &b,
                            running_mean: &mut rm,
                            running_var: &mut rv,
                            momentum: 0.1,
                            eps: 1e-5,
                        },
                    )
                    .map(drop)
                }),
            });
        }
        {
            let (x, dy, g) = (x.clone(), y.clone(), gamma.clone());
            let mut rm2 = be.zeros(&[c])?;
            let mut rv2 = be.from_host(&[c], &vec![1.0; c])?;
            let (_, saved) = be.batchnorm_forward_train(
                &x,
                BnTrainParams {
                    gamma: &g,
                    beta: &beta,
                    running_mean: &mut rm2,
                    running_var: &mut rv2,
                    momentum: 0.1,
                    eps: 1e-5,
                },
            )?;
            out.push(Case {
                key: format!("bn_bwd/{suffix}"),
                kernel: "bn_bwd_partial + bn_bwd_finalize + bn_bwd_apply".into(),
                flops: None,
                bytes: Some(3.0 * bytes),
                memory_bound: true,
                f32_compute: false,
                run: Box::new(move || be.batchnorm_backward(&dy, &x, &g, &saved).map(drop)),
            });
        }
        {
            let x = x.clone();
            out.push(Case {
                key: format!("relu/{suffix}"),
                kernel: "ew_relu".into(),
                flops: None,
                bytes: Some(2.0 * bytes),
                memory_bound: true,
                f32_compute: false,
                run: Box::new(move || be.relu_forward(&x).map(drop)),
            });
        }
        {
            let (a, b) = (x.clone(), y.clone());
            out.push(Case {
                key: format!("add_relu/{suffix}"),
                kernel: "ew_add_relu".into(),
                flops: None,
                bytes: Some(3.0 * bytes),
                memory_bound: true,
                f32_compute: false,
                run: Box::new(move || be.add_relu(&a, &b).map(drop)),
            });
        }
    }

    // SGD over ResNet-56's parameter count (0.85 M), one flat tensor.
    {
        let n = 853_018usize;
        let mut p = rand_tensor(be, &[n], next_seed())?;
        let g = rand_tensor(be, &[n], next_seed())?;
        let mut m = be.zeros(&[n])?;
        let hp = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
        out.push(Case {
            key: format!("sgd_step/n{n}"),
            kernel: "sgd_step".into(),
            flops: None,
            bytes: Some(5.0 * 4.0 * n as f64),
            memory_bound: true,
            f32_compute: false,
            run: Box::new(move || be.sgd_step(&mut p, &g, &mut m, hp)),
        });
    }

    // Search kernels: K candidates.
    let k = opts.candidates.max(1);
    {
        // Widest ResNet-56 conv weight, about half of the channels kept per candidate.
        let w = rand_tensor(be, &[64, 64, 3, 3], next_seed())?;
        let outs: Vec<Vec<u32>> = (0..k).map(|i| keep_list(64, 0.5, 100 + i as u64)).collect();
        let ins: Vec<Vec<u32>> = (0..k).map(|i| keep_list(64, 0.5, 200 + i as u64)).collect();
        let ro: Vec<&[u32]> = outs.iter().map(|v| v.as_slice()).collect();
        let ri: Vec<&[u32]> = ins.iter().map(|v| v.as_slice()).collect();
        let plan = be.plan_gather(crate::backend::cuda::GatherView::conv_weight(w.dims())?, &ro, &ri)?;
        let mut packed = be.zeros(&[plan.total()])?;
        let bytes = 2.0 * 4.0 * plan.total() as f64;
        out.push(Case {
            key: format!("gather_conv_weight/k{k}_o64_i64_r3_s3"),
            kernel: "gather_batched".into(),
            flops: None,
            bytes: Some(bytes),
            memory_bound: true,
            f32_compute: false,
            run: Box::new(move || be.gather_into(&plan, &w, &mut packed)),
        });
    }
    {
        let n = opts.search_images;
        let x = rand_tensor(be, &[n, 64, 8, 8], next_seed())?;
        let idx: Vec<Vec<u32>> = (0..k).map(|i| keep_list(64, 0.5, 300 + i as u64)).collect();
        let ri: Vec<&[u32]> = idx.iter().map(|v| v.as_slice()).collect();
        let zero: &[u32] = &[0];
        let cols = vec![zero; k];
        let plan = be.plan_gather(crate::backend::cuda::GatherView::activations(x.dims())?, &ri, &cols)?;
        let mut packed = be.zeros(&[plan.total()])?;
        let bytes = 2.0 * 4.0 * plan.total() as f64;
        out.push(Case {
            key: format!("gather_activations/k{k}_n{n}_c64_h8_w8"),
            kernel: "gather_batched".into(),
            flops: None,
            bytes: Some(bytes),
            memory_bound: true,
            f32_compute: false,
            run: Box::new(move || be.gather_into(&plan, &x, &mut packed)),
        });
    }
    {
        let m = opts.search_images * 64 * 8 * 8;
        let cand = rand_tensor(be, &[k, m], next_seed())?;
        let base = rand_tensor(be, &[m], next_seed())?;
        let mut res: CudaSlice<f32> = be.alloc_zeros(k)?;
        out.push(Case {
            key: format!("feature_mse/k{k}_m{m}"),
            kernel: "sqdiff_partial + sqdiff_final".into(),
            flops: None,
            bytes: Some(4.0 * ((k * m) + m) as f64),
            memory_bound: true,
            f32_compute: false,
            run: Box::new(move || be.feature_mse_into(&cand, &base, &mut res)),
        });
    }

    if let Some(f) = &opts.filter {
        out.retain(|c| c.key.contains(f.as_str()));
    }
    Ok(out)
}

/// Timing summary of one case, in microseconds.
struct Stats {
    median: f64,
    min: f64,
    p10: f64,
    p90: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn event_err(e: cudarc::driver::DriverError) -> Error {
    Error::Cuda(format!("benchmark event: {e:?}"))
}

/// Times `run` with CUDA events: `warmup` untimed runs, then `reps` timed ones, each optionally
/// preceded by an L2 flush outside the timed region.
fn time_case(
    be: &CudaBackend,
    run: &mut dyn FnMut() -> Result<()>,
    warmup: usize,
    reps: usize,
    mut flush: Option<&mut CudaSlice<u8>>,
) -> Result<Stats> {
    for _ in 0..warmup {
        run()?;
    }
    be.synchronize()?;
    let reps = reps.max(1);
    let mut events = Vec::with_capacity(2 * reps);
    for _ in 0..2 * reps {
        // CU_EVENT_DEFAULT: timing enabled (the cudarc default disables it).
        events.push(be.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(event_err)?);
    }
    for r in 0..reps {
        if let Some(buf) = flush.as_deref_mut() {
            be.stream().memset_zeros(buf).map_err(|e| Error::Cuda(format!("L2 flush: {e:?}")))?;
        }
        events[2 * r].record(be.stream()).map_err(event_err)?;
        run()?;
        events[2 * r + 1].record(be.stream()).map_err(event_err)?;
    }
    be.synchronize()?;
    let mut us = Vec::with_capacity(reps);
    for r in 0..reps {
        us.push(events[2 * r].elapsed_ms(&events[2 * r + 1]).map_err(event_err)? as f64 * 1000.0);
    }
    us.sort_by(|a, b| a.total_cmp(b));
    Ok(Stats { median: percentile(&us, 0.5), min: us[0], p10: percentile(&us, 0.1), p90: percentile(&us, 0.9) })
}

fn timing(
    case_key: &str,
    kernel: &str,
    reps: usize,
    s: &Stats,
    flops: Option<f64>,
    bytes: Option<f64>,
    flushed: bool,
) -> KernelTiming {
    let secs = s.median * 1e-6;
    KernelTiming {
        key: case_key.to_string(),
        kernel: kernel.to_string(),
        reps,
        median_us: s.median,
        min_us: s.min,
        p10_us: s.p10,
        p90_us: s.p90,
        spread_pct: if s.median > 0.0 { 100.0 * (s.p90 - s.p10) / s.median } else { f64::NAN },
        flops,
        bytes,
        tflops: flops.map(|f| f / secs / 1e12),
        gbps: bytes.map(|b| b / secs / 1e9),
        fraction_of_peak: None,
        peak: "none".into(),
        l2_flushed: flushed,
    }
}

/// A whole-model measurement from [`super::cpu::model_bench`] as a table row (no percentiles:
/// min and max stand in for p10 and p90).
pub fn model_timing(key: &str, kernel: &str, r: &super::cpu::ModelBench) -> KernelTiming {
    let t = &r.throughput.timing;
    let flops = r.throughput.gflops * 1e9 * t.median_s;
    let s = Stats { median: t.median_s * 1e6, min: t.min_s * 1e6, p10: t.min_s * 1e6, p90: t.max_s * 1e6 };
    timing(key, kernel, t.reps, &s, Some(flops), None, false)
}

/// Runs every case and the two peak measurements; returns the peaks first
/// (`peak/copy_bandwidth`, `peak/sgemm_f32`), then the cases in order.
pub fn bench_kernels(backend: &CudaBackend, opts: &BenchOptions) -> Result<Vec<KernelTiming>> {
    let be = backend;
    be.load_all_kernels()?;
    let flush_len = (2 * be.info().l2_bytes).max(64 << 20);
    let mut flush: CudaSlice<u8> = be.alloc_zeros(flush_len)?;
    let mut results = Vec::new();

    // Peak 1: device-to-device copy bandwidth (read + write), L2 flushed.
    let copy_len = 64usize << 20; // f32 elements: 256 MiB
    let src: CudaSlice<f32> = be.alloc_zeros(copy_len)?;
    let mut dst: CudaSlice<f32> = be.alloc_zeros(copy_len)?;
    let mut copy = || -> Result<()> {
        be.stream().memcpy_dtod(&src, &mut dst).map_err(|e| Error::Cuda(format!("copy peak: {e:?}")))
    };
    let s = time_case(be, &mut copy, opts.warmup.max(3), opts.reps.clamp(10, 50), Some(&mut flush))?;
    let copy_t = timing(
        "peak/copy_bandwidth",
        "cuMemcpyDtoDAsync 256 MiB",
        opts.reps.clamp(10, 50),
        &s,
        None,
        Some(2.0 * 4.0 * copy_len as f64),
        true,
    );
    let copy_peak = copy_t.gbps.unwrap_or(f64::NAN);
    results.push(copy_t);
    drop((src, dst));

    // Peak 2: f32 GEMM throughput of our SGEMM.
    let g = 4096usize;
    let a: CudaSlice<f32> = be.alloc_zeros(g * g)?;
    let b: CudaSlice<f32> = be.alloc_zeros(g * g)?;
    let mut c: CudaSlice<f32> = be.alloc_zeros(g * g)?;
    let mut gemm = || be.sgemm(GemmLayout::NN, g, g, g, &a, &b, &mut c);
    let s = time_case(be, &mut gemm, opts.warmup.max(3), opts.reps.clamp(10, 30), None)?;
    let gemm_t = timing(
        "peak/sgemm_f32",
        "sgemm_nn_128x128 4096^3",
        opts.reps.clamp(10, 30),
        &s,
        Some(2.0 * (g as f64).powi(3)),
        None,
        false,
    );
    let gemm_peak = gemm_t.tflops.unwrap_or(f64::NAN);
    results.push(gemm_t);
    drop((a, b, c));

    for mut case in cases(be, opts)? {
        let flushing = case.memory_bound && opts.flush_l2;
        let s = time_case(be, &mut case.run, opts.warmup, opts.reps, if flushing { Some(&mut flush) } else { None })?;
        let mut t = timing(&case.key, &case.kernel, opts.reps.max(1), &s, case.flops, case.bytes, flushing);
        if case.memory_bound {
            t.fraction_of_peak = t.gbps.map(|v| v / copy_peak);
            t.peak = "copy_bandwidth".into();
        } else if case.f32_compute {
            t.fraction_of_peak = t.tflops.map(|v| v / gemm_peak);
            t.peak = "sgemm_f32".into();
        }
        results.push(t);
    }
    Ok(results)
}

/// A fixed-width table of the timings, one line each.
pub fn format_table(timings: &[KernelTiming]) -> String {
    let mut s = format!(
        "{:<58} {:>10} {:>8} {:>9} {:>9} {:>7}  {}\n",
        "case", "median us", "spread%", "TFLOP/s", "GB/s", "% peak", "kernel"
    );
    for t in timings {
        let f = |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<58} {:>10.2} {:>8.1} {:>9} {:>9} {:>7}  {}\n",
            t.key,
            t.median_us,
            t.spread_pct,
            f(t.tflops, 2),
            f(t.gbps, 0),
            f(t.fraction_of_peak.map(|v| 100.0 * v), 1),
            t.kernel
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!((percentile(&v, 0.1) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn resnet56_has_six_distinct_convs() {
        let shapes = resnet56_conv_shapes(128).expect("valid shapes");
        assert_eq!(shapes.len(), 6);
        assert_eq!(conv_key("conv_fwd_f32", &shapes[2]), "conv_fwd_f32/n128_c16_h32_w32_k32_r3_s2_p1");
    }

    #[test]
    fn keep_lists_are_sorted_and_non_empty() {
        for s in 0..20 {
            let v = keep_list(64, 0.5, s);
            assert!(!v.is_empty());
            assert!(v.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
