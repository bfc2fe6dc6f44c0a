//! Batch norm on the CPU: the trait methods, then the math (lane-generic, fixed-order
//! reductions).

use super::elementwise::relu;
use super::lanes::Lanes;
use super::{host, team, CpuBackend};
use crate::backend::shape::{same_dims, BnShape};
use crate::backend::{Activation, BnGrads, BnParams, BnSaved, BnTrainParams, NormOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl NormOps for CpuBackend {
    fn batchnorm_forward_train(&self, x: &Tensor, bn: BnTrainParams<'_>) -> Result<(Tensor, BnSaved)> {
        bn_train(x, bn, Activation::Identity)
    }

    fn batchnorm_act_forward_train(
        &self,
        x: &Tensor,
        bn: BnTrainParams<'_>,
        act: Activation,
    ) -> Result<(Tensor, BnSaved)> {
        bn_train(x, bn, act)
    }

    fn batchnorm_forward_eval(&self, x: &Tensor, bn: BnParams<'_>) -> Result<Tensor> {
        let BnParams { gamma, beta, running_mean, running_var, eps } = bn;
        let s = BnShape::eval(x, gamma, beta, running_mean, running_var)?;
        let (scale, shift) = batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Tensor::from_vec(x.dims(), batchnorm_eval(host(x)?, s.c, s.hw, &scale, &shift))
    }

    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        bn_backward(dy, None, x, gamma, saved)
    }

    fn batchnorm_act_backward(
        &self,
        dy: &Tensor,
        y: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        saved: &BnSaved,
        act: Activation,
    ) -> Result<BnGrads> {
        same_dims(y, x, "batchnorm_act_backward: activation output and input")?;
        let after = match act {
            Activation::Identity => None,
            Activation::Relu => Some((host(y)?, Clamp::Relu)),
            Activation::Relu6 => Some((host(y)?, Clamp::Relu6)),
        };
        bn_backward(dy, after, x, gamma, saved)
    }

    fn batchnorm_fold(&self, bn: BnParams<'_>) -> Result<(Tensor, Tensor)> {
        let BnParams { gamma, beta, running_mean, running_var, eps } = bn;
        let c = BnShape::fold(gamma, beta, running_mean, running_var)?;
        let (scale, shift) = batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Ok((Tensor::from_vec(&[c], scale)?, Tensor::from_vec(&[c], shift)?))
    }
}

/// Training batch norm, followed by the activation `act`.
fn bn_train(x: &Tensor, bn: BnTrainParams<'_>, act: Activation) -> Result<(Tensor, BnSaved)> {
    let BnTrainParams { gamma, beta, running_mean, running_var, momentum, eps } = bn;
    let BnShape { n, c, hw } = BnShape::train(x, gamma, beta, running_mean, running_var)?;
    let out = batchnorm_train(
        host(x)?,
        n,
        c,
        hw,
        host(gamma)?,
        host(beta)?,
        running_mean.as_mut_slice()?,
        running_var.as_mut_slice()?,
        momentum,
        eps,
        act,
    );
    Ok((
        Tensor::from_vec(x.dims(), out.y)?,
        BnSaved { mean: Tensor::from_vec(&[c], out.mean)?, invstd: Tensor::from_vec(&[c], out.invstd)? },
    ))
}

/// Batch-norm backward, through the activation after it (its output, and which) when given.
fn bn_backward(
    dy: &Tensor,
    after: Option<(&[f32], Clamp)>,
    x: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
) -> Result<BnGrads> {
    let BnShape { n, c, hw } = BnShape::backward(dy, x, gamma, saved)?;
    let out = batchnorm_backward(
        host(dy)?,
        after,
        host(x)?,
        n,
        c,
        hw,
        host(gamma)?,
        host(&saved.mean)?,
        host(&saved.invstd)?,
    );
    Ok(BnGrads {
        dx: Tensor::from_vec(x.dims(), out.dx)?,
        dgamma: Tensor::from_vec(&[c], out.dgamma)?,
        dbeta: Tensor::from_vec(&[c], out.dbeta)?,
    })
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

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

/// The activation after a batch norm whose gradient mask the fused backward applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clamp {
    /// `g = dy * (y > 0)`, as `relu_backward`.
    Relu,
    /// `g = dy * (0 < y < 6)`, as `relu6_backward`.
    Relu6,
}

/// `(sum g, sum g * (x - mean))` of channel `ch`, with `g = dy`, or with `dy` masked by the
/// activation after the batch norm (`after`: its output `y` and which), the values
/// `relu_backward` or `relu6_backward` give.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bn_sums_of<L: Lanes>(
    dy: &[f32],
    after: Option<(&[f32], Clamp)>,
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    ch: usize,
    m: f32,
) -> (f64, f64) {
    // SAFETY: `L`'s features are the caller's (`multiversion_sum`).
    let (m, six) = unsafe { (L::splat(m), L::splat(6.0)) };
    let mut sdy = 0.0f64;
    let mut sdyx = 0.0f64;
    for i in 0..n {
        let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
        let (a, b) = match after {
            None => row_sums2::<L>(&dy[r.clone()], &x[r], |g, xv| (g, g.mul(xv.sub(m)))),
            Some((y, Clamp::Relu)) => row_sums3::<L>(&dy[r.clone()], &y[r.clone()], &x[r], |g, yv, xv| {
                let g = g.keep_where_positive(yv);
                (g, g.mul(xv.sub(m)))
            }),
            // `6 - y > 0` exactly when `y < 6` (and never for a NaN).
            Some((y, Clamp::Relu6)) => row_sums3::<L>(&dy[r.clone()], &y[r.clone()], &x[r], |g, yv, xv| {
                let g = g.keep_where_positive(yv).keep_where_positive(six.sub(yv));
                (g, g.mul(xv.sub(m)))
            }),
        };
        sdy += a;
        sdyx += b;
    }
    (sdy, sdyx)
}
#[rustfmt::skip]
multiversion_sum!(bn_channel_sums, bn_sums_of, (dy: &[f32], after: Option<(&[f32], Clamp)>, x: &[f32], n: usize, c: usize, hw: usize, ch: usize, m: f32) -> (f64, f64));

/// Per-channel mean and biased variance of `x` viewed as `[n, c, hw]`, in f64.
fn channel_moments(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    per_channel(n < team::SHORT_BATCH, c, |ch| channel_moments_of(x, n, c, hw, ch))
}

/// `f(ch)` for every channel, in order: on the team at batch 1 (`short`), where the
/// convolutions around a batch norm run and its helper still spins when the batch norm starts
/// (on rayon's pool its workers competed with it for the cores), else on rayon's pool.
fn per_channel(short: bool, c: usize, f: impl Fn(usize) -> (f64, f64) + Sync) -> Vec<(f64, f64)> {
    // On the team, channels in groups: a task a channel cost more in hand-offs than 7x7 maps
    // hold work. Rayon's pool splits its tasks itself.
    let group = if short { 16 } else { 1 };
    let mut out = vec![(0.0, 0.0); c];
    let ptr = team::SendPtr(out.as_mut_ptr());
    team::for_each_on(short, c.div_ceil(group), |g| {
        for ch in g * group..((g + 1) * group).min(c) {
            // SAFETY: each channel is written by its own group's task, inside `out`.
            unsafe { *ptr.at(ch) = f(ch) };
        }
    });
    out
}

/// `f(row, y_row)` for every `[n, c]` row of `hw` floats of `y`: on the team at batch 1, as
/// `per_channel`, a few rows a task on small maps.
fn per_row(short: bool, y: &mut [f32], hw: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let hw = hw.max(1);
    let rows = if short { (4096 / hw).max(1) } else { 1 };
    team::for_each_chunk_mut(short, y, rows * hw, |i, chunk| {
        for (j, yc) in chunk.chunks_mut(hw).enumerate() {
            f(i * rows + j, yc);
        }
    });
}

/// Applies `y = x*scale[c] + shift[c]` over `[n, c, hw]`, then the activation `act` (as
/// `relu_forward` and `relu6_forward` compute them).
fn channel_affine(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32], act: Activation) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(x.len());
    let short = x.len() / (c * hw).max(1) < team::SHORT_BATCH;
    per_row(short, &mut y, hw, |row, yc| {
        let ch = row % c;
        let xc = &x[row * hw..(row + 1) * hw];
        let (a, b) = (scale[ch], shift[ch]);
        let pairs = yc.iter_mut().zip(xc);
        match act {
            Activation::Identity => pairs.for_each(|(o, &v)| *o = v * a + b),
            Activation::Relu => pairs.for_each(|(o, &v)| *o = relu(v * a + b)),
            Activation::Relu6 => pairs.for_each(|(o, &v)| *o = Activation::Relu6.apply(v * a + b)),
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
    act: Activation,
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
    let y = channel_affine(x, c, hw, &scale, &shift, act);
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
    channel_affine(x, c, hw, scale, shift, Activation::Identity)
}

pub struct BnBackwardOut {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// `dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat))` with `M = n*hw`, for `g = dy`, or
/// `dy` masked by the activation after the batch norm (`after`: its output `y` and which; the
/// gradient `relu_backward` or `relu6_backward` would have passed on, not stored).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    dy: &[f32],
    after: Option<(&[f32], Clamp)>,
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> BnBackwardOut {
    let short = n < team::SHORT_BATCH;
    let sums = per_channel(short, c, |ch| bn_channel_sums(dy, after, x, n, c, hw, ch, mean[ch]));
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
    per_row(short, &mut dx, hw, |row, dxc| {
        let ch = row % c;
        let base = row * hw;
        let ([a, b, cc], m) = (factors[ch], mean[ch]);
        let (dyc, xc) = (&dy[base..base + hw], &x[base..base + hw]);
        match after {
            None => {
                for ((o, &g), &xv) in dxc.iter_mut().zip(dyc).zip(xc) {
                    *o = a * g + b * (xv - m) + cc;
                }
            }
            Some((y, Clamp::Relu)) => {
                for (((o, &g), &xv), &yv) in dxc.iter_mut().zip(dyc).zip(xc).zip(&y[base..base + hw]) {
                    let g = if yv > 0.0 { g } else { 0.0 };
                    *o = a * g + b * (xv - m) + cc;
                }
            }
            Some((y, Clamp::Relu6)) => {
                for (((o, &g), &xv), &yv) in dxc.iter_mut().zip(dyc).zip(xc).zip(&y[base..base + hw]) {
                    let g = if yv > 0.0 && yv < 6.0 { g } else { 0.0 };
                    *o = a * g + b * (xv - m) + cc;
                }
            }
        }
    });
    BnBackwardOut { dx, dgamma, dbeta }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch-norm reductions give the same bits on every lane type the dispatcher may pick
    /// (plain arrays; two AVX2 registers; one AVX-512 register, where the CPU has them), on rows
    /// with and without a tail shorter than a vector, through a ReLU and a ReLU6 (outputs past 6).
    #[test]
    fn reductions_give_the_same_bits_on_every_lane_type() {
        for (n, c, hw) in [(3, 4, 37), (2, 3, 64), (1, 2, 5)] {
            let len = n * c * hw;
            let wave = |k: f32| (0..len).map(|i| ((i as f32 * k).sin() * 3.0) + 0.5).collect::<Vec<f32>>();
            let (x, dy, y) = (wave(0.37), wave(1.13), wave(0.71));
            let y6: Vec<f32> = y.iter().map(|v| 2.5 * v).collect();
            assert!(y6.iter().any(|&v| v > 6.0));
            for (clamp, y) in [(Clamp::Relu, &y), (Clamp::Relu6, &y6)] {
                let after = Some((&y[..], clamp));
                type Plain = [f32; SUM_LANES];
                let run = |moments: &dyn Fn(usize) -> (f64, f64), sums: &dyn Fn(usize) -> (f64, f64)| {
                    let bits = |(a, b): (f64, f64)| (a.to_bits(), b.to_bits());
                    (0..c).map(|ch| (bits(moments(ch)), bits(sums(ch)))).collect::<Vec<_>>()
                };
                let plain = run(&|ch| moments_of::<Plain>(&x, n, c, hw, ch), &|ch| {
                    bn_sums_of::<Plain>(&dy, after, &x, n, c, hw, ch, 0.25)
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
                            bn_sums_of::<Avx2>(&dy, after, &x, n, c, hw, ch, 0.25)
                        });
                        assert_eq!(got, plain, "AVX2 lanes, {clamp:?} {n}x{c}x{hw}");
                    }
                    if super::super::has_avx512() {
                        type Avx512 = Wide<__m512>;
                        let got = run(&|ch| moments_of::<Avx512>(&x, n, c, hw, ch), &|ch| {
                            bn_sums_of::<Avx512>(&dy, after, &x, n, c, hw, ch, 0.25)
                        });
                        assert_eq!(got, plain, "AVX-512 lanes, {clamp:?} {n}x{c}x{hw}");
                    }
                }
            }
        }
    }
}
