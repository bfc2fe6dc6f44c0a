//! Slice-level CPU kernels for everything but convolution. Shapes are checked by the caller
//! (`CpuBackend`); these functions only compute. Per-channel and per-row reductions run
//! sequentially in f64 inside one task, so results do not depend on the thread count.

use super::lanes::Lanes;
use crate::backend::shape::PoolShape;
use rayon::prelude::*;

/// ReLU as every CPU path computes it (`max(v, 0)` with 0 for NaN and for -0.0): the SIMD
/// epilogues use `maxps(v, 0)`, which is this exactly, so fused and unfused results agree bit for bit.
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Elements per parallel task for element-wise work; large enough that scheduling is cheap.
const ELEMWISE_CHUNK: usize = 1 << 15;

pub fn map_unary(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(x.len());
    y.par_chunks_mut(ELEMWISE_CHUNK).zip(x.par_chunks(ELEMWISE_CHUNK)).for_each(|(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = f(v);
        }
    });
    y
}

pub fn map_binary(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(a.len());
    y.par_chunks_mut(ELEMWISE_CHUNK).zip(a.par_chunks(ELEMWISE_CHUNK).zip(b.par_chunks(ELEMWISE_CHUNK))).for_each(
        |(yc, (ac, bc))| {
            for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                *o = f(u, v);
            }
        },
    );
    y
}

pub fn update_unary(acc: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    acc.par_chunks_mut(ELEMWISE_CHUNK).for_each(|ac| {
        for a in ac.iter_mut() {
            *a = f(*a);
        }
    });
}

pub fn update_binary(acc: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    acc.par_chunks_mut(ELEMWISE_CHUNK).zip(x.par_chunks(ELEMWISE_CHUNK)).for_each(|(ac, xc)| {
        for (a, &v) in ac.iter_mut().zip(xc) {
            *a = f(*a, v);
        }
    });
}

/// Partial sums per row of a reduction: lane `l` adds elements `l, l + 16, ...` in f32, then
/// the lanes are added in order in f64, and rows are added in order in f64 by the caller. A
/// fixed order (reproducible whatever the threads) that vectorises (16 lanes are one AVX-512
/// register); a lane sums at most a 64th of a row (16 elements of a 32x32 map), so f32 costs
/// no accuracy that matters, and rows of thousands of elements are still summed in f64.
const SUM_LANES: usize = 16;

/// The lanes of a `SUM_LANES`-wide vector.
#[inline(always)]
fn lanes_of<L: Lanes>(v: L) -> [f32; SUM_LANES] {
    assert_eq!(L::WIDTH, SUM_LANES, "reduction lanes");
    let mut a = [0.0f32; SUM_LANES];
    // SAFETY: `a` holds `L::WIDTH` floats (asserted).
    unsafe { v.store(a.as_mut_ptr()) };
    a
}

/// The two sums `f` gives over three equally long rows, in the fixed lane order above (`f` gets
/// sixteen elements of each row at a time; the tail goes through it one lane at a time, lane 0
/// of a splat).
#[inline(always)]
fn row_sums3<L: Lanes>(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(L, L, L) -> (L, L)) -> (f64, f64) {
    assert!(x.len() == y.len() && x.len() == z.len(), "row_sums3: rows of different lengths");
    let whole = x.len() / SUM_LANES * SUM_LANES;
    // SAFETY (every `splat` and `load` here): `L`'s features are the caller's (`multiversion_sum`).
    let (mut a, mut b) = unsafe { (L::splat(0.0), L::splat(0.0)) };
    for at in (0..whole).step_by(SUM_LANES) {
        // SAFETY: `at + 16 <= whole <= len` for every row; `L`'s features are the caller's.
        let load = |r: &[f32]| unsafe { L::load(r.as_ptr().add(at)) };
        let (u, v) = f(load(x), load(y), load(z));
        a = a.add(u);
        b = b.add(v);
    }
    let (mut sa, mut sb) = (0.0f64, 0.0f64);
    for (u, v) in lanes_of(a).into_iter().zip(lanes_of(b)) {
        sa += u as f64;
        sb += v as f64;
    }
    for i in whole..x.len() {
        let (u, v) = unsafe { f(L::splat(x[i]), L::splat(y[i]), L::splat(z[i])) };
        sa += lanes_of(u)[0] as f64;
        sb += lanes_of(v)[0] as f64;
    }
    (sa, sb)
}

/// `row_sums3` over two rows.
#[inline(always)]
fn row_sums2<L: Lanes>(x: &[f32], y: &[f32], f: impl Fn(L, L) -> (L, L)) -> (f64, f64) {
    row_sums3::<L>(x, y, y, |u, v, _| f(u, v))
}

/// Compiles a reduction, generic over its `Lanes`, for the baseline target and with AVX-512 /
/// AVX2 enabled, picked at run time. Rust never contracts `a * b + c` into an FMA, so every
/// version computes the same operations in the same order: identical bits on every machine.
macro_rules! multiversion_sum {
    ($name:ident, $inner:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $inner::<super::lanes::Wide<std::arch::x86_64::__m512>>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $inner::<super::lanes::Pair<super::lanes::Wide<std::arch::x86_64::__m256>>>($($arg),*)
                }
                if super::has_avx512() {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if super::has_avx2() {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner::<[f32; SUM_LANES]>($($arg),*)
        }
    };
}

/// Mean and biased variance of channel `ch` of `x` viewed as `[n, c, hw]`, in f64.
#[inline(always)]
fn moments_of<L: Lanes>(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> (f64, f64) {
    let count = (n * hw) as f64;
    let mut sum = 0.0f64;
    for i in 0..n {
        let base = (i * c + ch) * hw;
        let row = &x[base..base + hw];
        sum += row_sums2::<L>(row, row, |v, _| (v, v.zero())).0;
    }
    let mean = sum / count;
    // Centred on the f32 mean (a second pass: no cancellation), corrected for its rounding.
    // SAFETY: `L`'s features are the caller's (`multiversion_sum`).
    let m32 = unsafe { L::splat(mean as f32) };
    let (mut d, mut sq) = (0.0f64, 0.0f64);
    for i in 0..n {
        let base = (i * c + ch) * hw;
        let row = &x[base..base + hw];
        let (a, b) = row_sums2::<L>(row, row, |v, _| {
            let d = v.sub(m32);
            (d, d.mul(d))
        });
        d += a;
        sq += b;
    }
    let shift = d / count;
    (mean, (sq / count - shift * shift).max(0.0))
}
multiversion_sum!(channel_moments_of, moments_of, (x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> (f64, f64));

/// `(sum g, sum g * (x - mean))` of channel `ch`, with `g = dy`, or with `g = dy * (y > 0)`
/// when `relu_out` is the output `y` of a ReLU after the batch norm (the same values as
/// `relu_backward` gives).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bn_sums_of<L: Lanes>(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    ch: usize,
    m: f32,
) -> (f64, f64) {
    // SAFETY: `L`'s features are the caller's (`multiversion_sum`).
    let m = unsafe { L::splat(m) };
    let mut sdy = 0.0f64;
    let mut sdyx = 0.0f64;
    for i in 0..n {
        let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
        let (a, b) = match relu_out {
            None => row_sums2::<L>(&dy[r.clone()], &x[r], |g, xv| (g, g.mul(xv.sub(m)))),
            Some(y) => row_sums3::<L>(&dy[r.clone()], &y[r.clone()], &x[r], |g, yv, xv| {
                let g = g.keep_where_positive(yv);
                (g, g.mul(xv.sub(m)))
            }),
        };
        sdy += a;
        sdyx += b;
    }
    (sdy, sdyx)
}
#[rustfmt::skip]
multiversion_sum!(bn_channel_sums, bn_sums_of, (dy: &[f32], relu_out: Option<&[f32]>, x: &[f32], n: usize, c: usize, hw: usize, ch: usize, m: f32) -> (f64, f64));

/// Per-channel mean and biased variance of `x` viewed as `[n, c, hw]`, in f64.
fn channel_moments(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c).into_par_iter().map(|ch| channel_moments_of(x, n, c, hw, ch)).collect()
}

/// Applies `y = x*scale[c] + shift[c]` over `[n, c, hw]`, then `relu` when asked.
fn channel_affine(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32], relu_after: bool) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(x.len());
    y.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(row, (yc, xc))| {
        let ch = row % c;
        let (a, b) = (scale[ch], shift[ch]);
        if relu_after {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = relu(v * a + b);
            }
        } else {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = v * a + b;
            }
        }
    });
    y
}

pub struct BnTrainOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_train(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    momentum: f32,
    eps: f32,
    relu_after: bool,
) -> BnTrainOut {
    let moments = channel_moments(x, n, c, hw);
    let count = n * hw;
    let mut mean = vec![0.0f32; c];
    let mut invstd = vec![0.0f32; c];
    let mut scale = vec![0.0f32; c];
    let mut shift = vec![0.0f32; c];
    for ch in 0..c {
        let (m, var) = moments[ch];
        let inv = 1.0 / (var + eps as f64).sqrt();
        mean[ch] = m as f32;
        invstd[ch] = inv as f32;
        scale[ch] = (gamma[ch] as f64 * inv) as f32;
        shift[ch] = (beta[ch] as f64 - m * gamma[ch] as f64 * inv) as f32;
        // PyTorch keeps the unbiased variance in the running estimate.
        let unbiased = if count > 1 { var * count as f64 / (count - 1) as f64 } else { var };
        let mo = momentum as f64;
        running_mean[ch] = ((1.0 - mo) * running_mean[ch] as f64 + mo * m) as f32;
        running_var[ch] = ((1.0 - mo) * running_var[ch] as f64 + mo * unbiased) as f32;
    }
    let y = channel_affine(x, c, hw, &scale, &shift, relu_after);
    BnTrainOut { y, mean, invstd }
}

/// Inference batch norm as `y = x*scale[c] + shift[c]`: `scale = gamma/sqrt(var+eps)`,
/// `shift = beta - mean*scale`, computed in f64.
pub fn batchnorm_fold(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let mut scale = vec![0.0f32; c];
    let mut shift = vec![0.0f32; c];
    for ch in 0..c {
        let inv = 1.0 / (var[ch] as f64 + eps as f64).sqrt();
        scale[ch] = (gamma[ch] as f64 * inv) as f32;
        shift[ch] = (beta[ch] as f64 - mean[ch] as f64 * gamma[ch] as f64 * inv) as f32;
    }
    (scale, shift)
}

/// Inference batch norm over `[n, c, hw]`: the fold applied per channel.
pub fn batchnorm_eval(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    channel_affine(x, c, hw, scale, shift, false)
}

pub struct BnBackwardOut {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// `dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat))` with `M = n*hw`, for `g = dy`, or
/// `g = dy * (y > 0)` when `relu_out` is the output `y` of a ReLU after the batch norm (the
/// gradient `relu_backward` would have passed on, not stored).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> BnBackwardOut {
    let sums: Vec<(f64, f64)> =
        (0..c).into_par_iter().map(|ch| bn_channel_sums(dy, relu_out, x, n, c, hw, ch, mean[ch])).collect();
    let count = (n * hw) as f64;
    // sum dy * xhat = invstd * sum dy * (x - mean).
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().zip(invstd).map(|(s, &inv)| (s.1 * inv as f64) as f32).collect();
    // dx = a * dy + b * (x - mean) + c per channel, the factors in f64 and the pass in f32.
    let factors: Vec<[f32; 3]> = (0..c)
        .map(|ch| {
            let (inv, g) = (invstd[ch] as f64, gamma[ch] as f64);
            let (sdy, sdyx) = (sums[ch].0, sums[ch].1 * inv);
            let k = g * inv / count;
            [(g * inv) as f32, (-k * inv * sdyx) as f32, (-k * sdy) as f32]
        })
        .collect();
    let mut dx = crate::tensor::pool::take(x.len());
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(row, dxc)| {
        let ch = row % c;
        let base = row * hw;
        let ([a, b, cc], m) = (factors[ch], mean[ch]);
        let (dyc, xc) = (&dy[base..base + hw], &x[base..base + hw]);
        match relu_out {
            None => {
                for ((o, &g), &xv) in dxc.iter_mut().zip(dyc).zip(xc) {
                    *o = a * g + b * (xv - m) + cc;
                }
            }
            Some(y) => {
                for (((o, &g), &xv), &yv) in dxc.iter_mut().zip(dyc).zip(xc).zip(&y[base..base + hw]) {
                    let g = if yv > 0.0 { g } else { 0.0 };
                    *o = a * g + b * (xv - m) + cc;
                }
            }
        }
    });
    BnBackwardOut { dx, dgamma, dbeta }
}

/// Output spatial size of the option-A shortcut: `x[:, :, ::stride, ::stride]`.
pub fn shortcut_out_size(h: usize, stride: usize) -> usize {
    h.div_ceil(stride)
}

pub fn shortcut_forward(x: &[f32], n: usize, c: usize, h: usize, w: usize, src: &[i32], stride: usize) -> Vec<f32> {
    let (oh, ow) = (shortcut_out_size(h, stride), shortcut_out_size(w, stride));
    let oc = src.len();
    // Every element is written below (zeros for the padded channels).
    let mut y = crate::tensor::pool::take(n * oc * oh * ow);
    y.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(row, yc)| {
        let (i, o) = (row / oc, row % oc);
        let s = src[o];
        if s < 0 {
            yc.fill(0.0);
            return;
        }
        let plane = &x[(i * c + s as usize) * h * w..(i * c + s as usize + 1) * h * w];
        if stride == 1 {
            yc.copy_from_slice(plane);
            return;
        }
        for (p, yrow) in yc.chunks_exact_mut(ow.max(1)).enumerate() {
            let xrow = &plane[p * stride * w..];
            for (q, v) in yrow.iter_mut().enumerate() {
                *v = xrow[q * stride];
            }
        }
    });
    y
}

pub fn shortcut_backward(dy: &[f32], n: usize, c: usize, h: usize, w: usize, src: &[i32], stride: usize) -> Vec<f32> {
    let (oh, ow) = (shortcut_out_size(h, stride), shortcut_out_size(w, stride));
    let oc = src.len();
    let mut dx = crate::tensor::pool::take(n * c * h * w);
    // Parallel over images; inside one image several outputs may read the same input channel.
    dx.par_chunks_mut((c * h * w).max(1)).enumerate().for_each(|(i, dxi)| {
        dxi.fill(0.0);
        for (o, &s) in src.iter().enumerate() {
            if s < 0 {
                continue;
            }
            let g = &dy[(i * oc + o) * oh * ow..(i * oc + o + 1) * oh * ow];
            let plane = &mut dxi[s as usize * h * w..(s as usize + 1) * h * w];
            if stride == 1 {
                for (d, v) in plane.iter_mut().zip(g) {
                    *d += v;
                }
                continue;
            }
            for (p, grow) in g.chunks_exact(ow.max(1)).enumerate() {
                let drow = &mut plane[p * stride * w..];
                for (q, v) in grow.iter().enumerate() {
                    drow[q * stride] += v;
                }
            }
        }
    });
    dx
}

/// The window of output cell `(p, q)` clipped to the input: rows `r0..r1`, columns `t0..t1`
/// (padding cells hold -inf and never win, so they are skipped).
fn pool_window(s: &PoolShape, p: usize, q: usize) -> (usize, usize, usize, usize) {
    let clip = |o: usize, len: usize| {
        let start = (o * s.stride) as isize - s.pad as isize;
        let end = (start + s.kernel as isize).min(len as isize);
        (start.max(0) as usize, end.max(0) as usize)
    };
    let (r0, r1) = clip(p, s.h);
    let (t0, t1) = clip(q, s.w);
    (r0, r1, t0, t1)
}

/// Index in the plane of the first maximum of output cell `(p, q)`'s window (row-major).
fn pool_argmax(xs: &[f32], s: &PoolShape, p: usize, q: usize) -> usize {
    let (r0, r1, t0, t1) = pool_window(s, p, q);
    let mut best = f32::NEG_INFINITY;
    let mut at = r0 * s.w + t0;
    for r in r0..r1 {
        for t in t0..t1 {
            let idx = r * s.w + t;
            if xs[idx] > best {
                best = xs[idx];
                at = idx;
            }
        }
    }
    at
}

pub fn maxpool_forward(x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    let mut y = vec![0.0f32; s.n * s.c * ohw];
    y.par_chunks_mut(ohw.max(1)).enumerate().for_each(|(plane, yc)| {
        let xs = &x[plane * hw..(plane + 1) * hw];
        for p in 0..s.out_h {
            for q in 0..s.out_w {
                let (r0, r1, t0, t1) = pool_window(s, p, q);
                let mut best = f32::NEG_INFINITY;
                for r in r0..r1 {
                    for &v in &xs[r * s.w + t0..r * s.w + t1] {
                        if v > best {
                            best = v;
                        }
                    }
                }
                yc[p * s.out_w + q] = best;
            }
        }
    });
    y
}

pub fn maxpool_backward(dy: &[f32], x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    let mut dx = vec![0.0f32; s.n * s.c * hw];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, dxs)| {
        let xs = &x[plane * hw..(plane + 1) * hw];
        let g = &dy[plane * ohw..(plane + 1) * ohw];
        for p in 0..s.out_h {
            for q in 0..s.out_w {
                // First maximum in row-major window order, as the forward pass scans.
                dxs[pool_argmax(xs, s, p, q)] += g[p * s.out_w + q];
            }
        }
    });
    dx
}

pub fn global_avgpool_forward(x: &[f32], nc: usize, hw: usize) -> Vec<f32> {
    (0..nc)
        .into_par_iter()
        .map(|i| (x[i * hw..(i + 1) * hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
        .collect()
}

pub fn global_avgpool_backward(dy: &[f32], nc: usize, hw: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; nc * hw];
    dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(|(d, &g)| d.fill(g / hw as f32));
    debug_assert_eq!(dy.len(), nc);
    dx
}

/// Row-wise log-sum-exp of `z * inv_t`.
fn log_softmax_row(z: &[f32], inv_t: f64, out: &mut [f64]) {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 * inv_t));
    let lse = max + z.iter().map(|&v| (v as f64 * inv_t - max).exp()).sum::<f64>().ln();
    for (o, &v) in out.iter_mut().zip(z) {
        *o = v as f64 * inv_t - lse;
    }
}

/// Returns (mean loss, dlogits, correct).
pub fn softmax_cross_entropy(logits: &[f32], n: usize, classes: usize, labels: &[u32]) -> (f32, Vec<f32>, usize) {
    let mut d = vec![0.0f32; n * classes];
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut logp = vec![0.0f64; classes];
    for i in 0..n {
        let z = &logits[i * classes..(i + 1) * classes];
        log_softmax_row(z, 1.0, &mut logp);
        let label = labels[i] as usize;
        loss -= logp[label];
        let argmax = z.iter().enumerate().fold(0, |best, (j, &v)| if v > z[best] { j } else { best });
        if argmax == label {
            correct += 1;
        }
        for j in 0..classes {
            let p = logp[j].exp();
            d[i * classes + j] = ((p - if j == label { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    ((loss / n as f64) as f32, d, correct)
}

/// `T^2 * mean_n KL(softmax(t/T) || softmax(s/T))` and its gradient for the student logits.
pub fn distill_kl(student: &[f32], teacher: &[f32], n: usize, classes: usize, temperature: f32) -> (f32, Vec<f32>) {
    let t = temperature as f64;
    let mut d = vec![0.0f32; n * classes];
    let mut loss = 0.0f64;
    let mut ls = vec![0.0f64; classes];
    let mut lt = vec![0.0f64; classes];
    for i in 0..n {
        log_softmax_row(&student[i * classes..(i + 1) * classes], 1.0 / t, &mut ls);
        log_softmax_row(&teacher[i * classes..(i + 1) * classes], 1.0 / t, &mut lt);
        for j in 0..classes {
            let pt = lt[j].exp();
            loss += pt * (lt[j] - ls[j]);
            // d/ds_j of T^2 * KL / n = T * (p_s - p_t) / n
            d[i * classes + j] = (t * (ls[j].exp() - pt) / n as f64) as f32;
        }
    }
    ((t * t * loss / n as f64) as f32, d)
}

pub fn mse_loss(x: &[f32], target: &[f32]) -> (f32, Vec<f32>) {
    let count = x.len().max(1) as f64;
    let sum: f64 = x.iter().zip(target).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let d = map_binary(x, target, |a, b| (2.0 * (a as f64 - b as f64) / count) as f32);
    ((sum / count) as f32, d)
}

pub fn sgd_step(p: &mut [f32], g: &[f32], buf: &mut [f32], lr: f32, momentum: f32, wd: f32, nesterov: bool) {
    p.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(g.par_chunks(ELEMWISE_CHUNK).zip(buf.par_chunks_mut(ELEMWISE_CHUNK)))
        .for_each(|(pc, (gc, bc))| {
            for ((pv, &gv), bv) in pc.iter_mut().zip(gc).zip(bc.iter_mut()) {
                let d = gv + wd * *pv;
                let step = if momentum != 0.0 {
                    *bv = momentum * *bv + d;
                    if nesterov {
                        d + momentum * *bv
                    } else {
                        *bv
                    }
                } else {
                    d
                };
                *pv -= lr * step;
            }
        });
}

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

    /// The batch-norm reductions give the same bits on every lane type the dispatcher may pick
    /// (plain arrays; two AVX2 registers; one AVX-512 register, where the CPU has them), on rows
    /// with and without a tail shorter than a vector.
    #[test]
    fn reductions_give_the_same_bits_on_every_lane_type() {
        for (n, c, hw) in [(3, 4, 37), (2, 3, 64), (1, 2, 5)] {
            let len = n * c * hw;
            let wave = |k: f32| (0..len).map(|i| ((i as f32 * k).sin() * 3.0) + 0.5).collect::<Vec<f32>>();
            let (x, dy, y) = (wave(0.37), wave(1.13), wave(0.71));
            type Plain = [f32; SUM_LANES];
            let run = |moments: &dyn Fn(usize) -> (f64, f64), sums: &dyn Fn(usize) -> (f64, f64)| {
                let bits = |(a, b): (f64, f64)| (a.to_bits(), b.to_bits());
                (0..c).map(|ch| (bits(moments(ch)), bits(sums(ch)))).collect::<Vec<_>>()
            };
            let plain = run(&|ch| moments_of::<Plain>(&x, n, c, hw, ch), &|ch| {
                bn_sums_of::<Plain>(&dy, Some(&y), &x, n, c, hw, ch, 0.25)
            });
            let finite = |b: u64| f64::from_bits(b).is_finite();
            assert!(plain
                .iter()
                .all(|((m, v), (a, b))| finite(*m) && f64::from_bits(*v) > 0.0 && finite(*a) && finite(*b)));
            #[cfg(target_arch = "x86_64")]
            {
                use super::super::lanes::{Pair, Wide};
                use std::arch::x86_64::{__m256, __m512};
                // The generic bodies called directly: the intrinsics run as calls, on a CPU
                // that has them (checked).
                if super::super::has_avx2() {
                    type Avx2 = Pair<Wide<__m256>>;
                    let got = run(&|ch| moments_of::<Avx2>(&x, n, c, hw, ch), &|ch| {
                        bn_sums_of::<Avx2>(&dy, Some(&y), &x, n, c, hw, ch, 0.25)
                    });
                    assert_eq!(got, plain, "AVX2 lanes, {n}x{c}x{hw}");
                }
                if super::super::has_avx512() {
                    type Avx512 = Wide<__m512>;
                    let got = run(&|ch| moments_of::<Avx512>(&x, n, c, hw, ch), &|ch| {
                        bn_sums_of::<Avx512>(&dy, Some(&y), &x, n, c, hw, ch, 0.25)
                    });
                    assert_eq!(got, plain, "AVX-512 lanes, {n}x{c}x{hw}");
                }
            }
        }
    }
}
