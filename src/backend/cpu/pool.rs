//! Max and global average pooling on the CPU.

use super::{host, team, CpuBackend};
use crate::backend::shape::{GlobalPoolShape, PoolShape};
use crate::backend::PoolOps;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl PoolOps for CpuBackend {
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max("maxpool_forward", x.dims(), kernel, stride, pad)?;
        Tensor::from_vec(&s.output_dims(), maxpool_forward(host(x)?, &s))
    }

    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max_backward(dy, x, kernel, stride, pad)?;
        Tensor::from_vec(x.dims(), maxpool_backward(host(dy)?, host(x)?, &s))
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = GlobalPoolShape::new("global_avgpool_forward", x.dims())?;
        let short = s.n < team::SHORT_BATCH;
        Tensor::from_vec(&[s.n, s.c], global_avgpool_forward(host(x)?, s.n * s.c, s.h * s.w, short))
    }

    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let s = GlobalPoolShape::backward(dy, x_dims)?;
        Tensor::from_vec(x_dims, global_avgpool_backward(host(dy)?, s.n * s.c, s.h * s.w))
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

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

/// `v` if it is greater than `best`, else `best`: the scan's step. A NaN never wins, and of
/// values that compare equal (+0 and -0) the one seen first stays.
#[inline(always)]
fn keep_greater(best: f32, v: f32) -> f32 {
    if v > best {
        v
    } else {
        best
    }
}

/// Each output is the first maximum of its window in row-major order (`pool_argmax`'s, which the
/// backward pass routes the gradient to). Computed separably: each input row's maximum over each
/// output column's window (`h` rows of `out_w`), then over each output row's window of those
/// rows, in order. The first maximum of the first row holding one is the row-major first, so
/// this gives the same value, sign of zero included, as scanning each window (a branch per
/// element, 1.7% of ResNet-50's inference at batch 1); the second pass runs along whole rows
/// and vectorises.
pub fn maxpool_forward(x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    // From the buffer pool (fresh pages cost a fault each): every element is written below.
    let mut y = crate::tensor::pool::take(s.n * s.c * ohw);
    if ohw == 0 {
        return y;
    }
    // Per output column, its window's columns (the same for every row).
    let cols: Vec<(usize, usize)> = (0..s.out_w).map(|q| pool_window(s, 0, q)).map(|w| (w.2, w.3)).collect();
    // The output columns whose windows lie inside the row.
    let inner = {
        // (A clipped window is shorter than the kernel.)
        let lo = cols.iter().position(|&(t0, t1)| t1 - t0 == s.kernel).unwrap_or(s.out_w);
        let hi = cols.iter().rposition(|&(t0, t1)| t1 - t0 == s.kernel).map_or(lo, |q| q + 1);
        lo..hi.max(lo)
    };
    // On the team at batch 1, as the convolutions around it: rayon's workers would wait for
    // the cores the team's helper still spins on (0.75 ms of ResNet-18's 25 at batch 1).
    let g = PlaneGeometry { s, cols: &cols, inner };
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut y, ohw, |plane, yc| {
        ROW_SCRATCH.with(|scratch| plane_any(&x[plane * hw..(plane + 1) * hw], &g, yc, &mut scratch.borrow_mut()))
    });
    y
}

thread_local! {
    /// `maxpool_plane`'s scratch: each input row's maxima over the output columns' windows, and
    /// a row's even and odd columns (stride-2 windows).
    static ROW_SCRATCH: std::cell::RefCell<RowScratch> = const {
        std::cell::RefCell::new(RowScratch { rows_max: Vec::new(), even: Vec::new(), odd: Vec::new() })
    };
}

struct RowScratch {
    rows_max: Vec<f32>,
    even: Vec<f32>,
    odd: Vec<f32>,
}

/// What every plane of one `maxpool_forward` shares: the shape, each output column's window
/// columns (`cols`) and the output columns whose windows are whole (`inner`).
struct PlaneGeometry<'a> {
    s: &'a PoolShape,
    cols: &'a [(usize, usize)],
    inner: std::ops::Range<usize>,
}

/// `maxpool_plane` compiled with AVX2 where the CPU has it (the loops vectorise twice as wide;
/// a maximum is exact, so the bits are the same).
fn plane_any(xs: &[f32], g: &PlaneGeometry, yc: &mut [f32], sc: &mut RowScratch) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(xs: &[f32], g: &PlaneGeometry, yc: &mut [f32], sc: &mut RowScratch) {
            maxpool_plane(xs, g, yc, sc)
        }
        if super::has_avx2() {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(xs, g, yc, sc) };
        }
    }
    maxpool_plane(xs, g, yc, sc)
}

/// One plane of `maxpool_forward`.
#[inline(always)]
fn maxpool_plane(xs: &[f32], g: &PlaneGeometry, yc: &mut [f32], sc: &mut RowScratch) {
    let (s, cols, inner) = (g.s, g.cols, g.inner.clone());
    let RowScratch { rows_max, even, odd } = sc;
    // Every element is written below (the whole windows, then the rest of each row).
    rows_max.resize(s.h * s.out_w, 0.0);
    for (row, out) in xs.chunks_exact(s.w).zip(rows_max.chunks_exact_mut(s.out_w)) {
        // Whole windows vectorised for ResNet's 3x3 and VGG's 2x2 stride-2 pools; clipped
        // windows at the borders (and other shapes) one by one.
        let whole = match (s.kernel, s.stride) {
            (3, 2) => {
                whole_windows_s2::<3>(row, out, s.pad, inner.clone(), even, odd);
                true
            }
            (2, 2) => {
                whole_windows_s2::<2>(row, out, s.pad, inner.clone(), even, odd);
                true
            }
            _ => false,
        };
        // The rest: only the border columns when the whole windows are done (a test per
        // column of the row cost as much as the windows).
        let rest = if whole { [0..inner.start, inner.end..s.out_w] } else { [0..s.out_w, 0..0] };
        for q in rest.into_iter().flatten() {
            let (t0, t1) = cols[q];
            out[q] = row[t0..t1].iter().fold(f32::NEG_INFINITY, |best, &v| keep_greater(best, v));
        }
    }
    let ow = s.out_w;
    for (p, out) in yc.chunks_exact_mut(ow).enumerate() {
        let (r0, r1, _, _) = pool_window(s, p, 0);
        let row = |r: usize| &rows_max[r * ow..(r + 1) * ow];
        // Windows of up to three rows (ResNet's and VGG's) write each output once from its
        // rows: updated in place, the AVX2 build made the update a masked store, microcoded
        // on AMD (1.6x the whole pool's time).
        match r1 - r0 {
            3 => {
                for (((o, &a), &b), &c) in out.iter_mut().zip(row(r0)).zip(row(r0 + 1)).zip(row(r0 + 2)) {
                    *o = keep_greater(keep_greater(keep_greater(f32::NEG_INFINITY, a), b), c);
                }
            }
            2 => {
                for ((o, &a), &b) in out.iter_mut().zip(row(r0)).zip(row(r0 + 1)) {
                    *o = keep_greater(keep_greater(f32::NEG_INFINITY, a), b);
                }
            }
            _ => {
                out.fill(f32::NEG_INFINITY);
                for r in r0..r1 {
                    for (o, &v) in out.iter_mut().zip(row(r)) {
                        *o = keep_greater(*o, v);
                    }
                }
            }
        }
    }
}

/// `out[q]` for `q` in `inner` (whole windows of `K <= 3` columns, stride 2): the first maximum
/// of `row[2q - pad ..][..K]`. The windows' columns are split once into even and odd ones, so
/// that window `i` is `even[i], odd[i], even[i + 1]` and each of the `K` steps runs over
/// contiguous slices (it vectorises; taking each window's three floats in turn, a stride-2
/// gather, did not). Each output takes the same steps in the same order as the scalar scan.
#[inline(always)]
fn whole_windows_s2<const K: usize>(
    row: &[f32],
    out: &mut [f32],
    pad: usize,
    inner: std::ops::Range<usize>,
    even: &mut Vec<f32>,
    odd: &mut Vec<f32>,
) {
    const { assert!(K == 2 || K == 3) };
    if inner.is_empty() {
        return;
    }
    // Window column t of output q is row column 2q + t - pad (>= 0 inside `inner`).
    let first = inner.start * 2 - pad;
    let src = &row[first..first + (inner.len() - 1) * 2 + K];
    even.resize(src.len().div_ceil(2), 0.0);
    odd.resize(src.len() / 2, 0.0);
    super::conv::split_columns(src, even, odd);
    let out = &mut out[inner];
    if K == 3 {
        for (((o, &e), &d), &e1) in out.iter_mut().zip(even.iter()).zip(odd.iter()).zip(&even[1..]) {
            *o = keep_greater(keep_greater(keep_greater(f32::NEG_INFINITY, e), d), e1);
        }
    } else {
        for ((o, &e), &d) in out.iter_mut().zip(even.iter()).zip(odd.iter()) {
            *o = keep_greater(keep_greater(f32::NEG_INFINITY, e), d);
        }
    }
}

pub fn maxpool_backward(dy: &[f32], x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    // Output rows and columns whose windows lie wholly inside the map: scanned with no clipping.
    let inside = |len: usize, out: usize| {
        let lo = s.pad.div_ceil(s.stride).min(out);
        let hi = if len + s.pad >= s.kernel { ((len + s.pad - s.kernel) / s.stride + 1).min(out) } else { 0 };
        lo..hi.max(lo)
    };
    let (rows_in, cols_in) = (inside(s.h, s.out_h), inside(s.w, s.out_w));
    // On the team at batch 1, as the convolutions beside it (`elementwise::on_team`).
    let mut dx = crate::tensor::pool::take(s.n * s.c * hw);
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut dx, hw.max(1), |plane, dxs| {
        dxs.fill(0.0);
        let xs = &x[plane * hw..(plane + 1) * hw];
        let g = &dy[plane * ohw..(plane + 1) * ohw];
        for p in 0..s.out_h {
            for q in 0..s.out_w {
                // First maximum in row-major window order, as the forward pass scans.
                let at = if rows_in.contains(&p) && cols_in.contains(&q) {
                    let first = (p * s.stride - s.pad) * s.w + q * s.stride - s.pad;
                    match s.kernel {
                        3 => whole_window_argmax::<3>(xs, s.w, first),
                        2 => whole_window_argmax::<2>(xs, s.w, first),
                        _ => pool_argmax(xs, s, p, q),
                    }
                } else {
                    pool_argmax(xs, s, p, q)
                };
                dxs[at] += g[p * s.out_w + q];
            }
        }
    });
    dx
}

/// `pool_argmax` of a `K x K` window wholly inside the map, its first element at `first`: the
/// same scan (row-major, strictly greater wins) with the clipping and its bounds left out. The
/// max-pool's backward spent 1.4 ms of ResNet-50's batch-1 training step there.
#[inline(always)]
fn whole_window_argmax<const K: usize>(xs: &[f32], w: usize, first: usize) -> usize {
    let window = &xs[first..first + (K - 1) * w + K];
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for r in 0..K {
        for t in 0..K {
            let v = window[r * w + t];
            if v > best {
                best = v;
                at = r * w + t;
            }
        }
    }
    first + at
}

/// Each plane's mean, summed in f64 in order; on the team when `short` (batch 1, as the
/// convolutions before it: on rayon's pool it waited for the team's spinning helper).
pub fn global_avgpool_forward(x: &[f32], nc: usize, hw: usize, short: bool) -> Vec<f32> {
    const PLANES: usize = 64;
    let mut y = vec![0.0f32; nc];
    if nc == 0 {
        return y;
    }
    team::for_each_chunk_mut(short, &mut y, PLANES, |chunk, out| {
        for (j, o) in out.iter_mut().enumerate() {
            let i = chunk * PLANES + j;
            *o = (x[i * hw..(i + 1) * hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
        }
    });
    y
}

pub fn global_avgpool_backward(dy: &[f32], nc: usize, hw: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; nc * hw];
    dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(|(d, &g)| d.fill(g / hw as f32));
    debug_assert_eq!(dy.len(), nc);
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each window scanned in row-major order, the first maximum kept (the previous forward).
    fn scan(x: &[f32], s: &PoolShape) -> Vec<f32> {
        let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
        let mut y = vec![0.0f32; s.n * s.c * ohw];
        for (plane, yc) in y.chunks_mut(ohw).enumerate() {
            let xs = &x[plane * hw..(plane + 1) * hw];
            for p in 0..s.out_h {
                for q in 0..s.out_w {
                    // An all-NaN window's first element is NaN: -inf, as the scan from -inf.
                    yc[p * s.out_w + q] = xs[pool_argmax(xs, s, p, q)].max(f32::NEG_INFINITY);
                }
            }
        }
        y
    }

    /// Pool shapes on both sides of the fast paths: ResNet's stem pool, padded and unpadded
    /// windows, strides 1 to 3, odd maps, windows wider than the map.
    const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 11] = [
        (1, 3, 112, 112, 3, 2, 1), // ResNet's stem pool
        (2, 4, 9, 7, 3, 2, 1),
        (1, 2, 8, 8, 2, 2, 0),
        (1, 2, 11, 13, 3, 1, 1),
        (2, 3, 10, 9, 5, 3, 2),
        (1, 1, 1, 1, 1, 1, 0),
        (1, 2, 3, 3, 3, 2, 1),
        (1, 2, 9, 10, 3, 2, 0),
        (2, 3, 7, 9, 2, 2, 1),
        (1, 2, 6, 40, 3, 2, 1),
        (1, 2, 2, 2, 3, 1, 1),
    ];

    /// Few distinct values, so ties are common: +0, -0, NaN, small integers.
    fn tied_values(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match (*seed >> 40) % 8 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::NAN,
                    v => v as f32 - 5.0,
                }
            })
            .collect()
    }

    /// The separable forward against the window scan, bit for bit: ties between +0 and -0 (the
    /// first in row-major order wins), NaNs (never win; an all-NaN window gives -inf), padded
    /// and unpadded windows, strides 1 to 3, odd maps.
    #[test]
    fn separable_maxpool_equals_the_window_scan_bit_for_bit() {
        let mut seed = 1u64;
        let mut checked = 0;
        for (n, c, h, w, k, stride, pad) in SHAPES {
            let s = PoolShape::max("test", &[n, c, h, w], k, stride, pad).unwrap();
            let x = tied_values(n * c * h * w, &mut seed);
            let (got, want) = (maxpool_forward(&x, &s), scan(&x, &s));
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{:?} output {i}: {a:?} against {b:?}",
                    (n, c, h, w, k, stride, pad)
                );
            }
            checked += got.len();
        }
        assert!(checked > 3000);
    }

    /// The backward (whole windows scanned unclipped) routes each gradient to the window's first
    /// maximum, as `pool_argmax` picks it for every window: ties, NaNs, all-NaN windows, the
    /// shapes above; gradients are distinct powers of two, so a misrouted one shows in the sum.
    #[test]
    fn maxpool_backward_routes_to_the_first_maximum_of_each_window() {
        let mut seed = 7u64;
        let mut whole = 0;
        for (n, c, h, w, k, stride, pad) in SHAPES {
            let s = PoolShape::max("test", &[n, c, h, w], k, stride, pad).unwrap();
            let x = tied_values(n * c * h * w, &mut seed);
            let (hw, ohw) = (h * w, s.out_h * s.out_w);
            let dy: Vec<f32> = (0..n * c * ohw).map(|i| (1u32 << (i % 20)) as f32).collect();
            let mut want = vec![0.0f32; n * c * hw];
            for plane in 0..n * c {
                for p in 0..s.out_h {
                    for q in 0..s.out_w {
                        let at = pool_argmax(&x[plane * hw..(plane + 1) * hw], &s, p, q);
                        want[plane * hw + at] += dy[plane * ohw + p * s.out_w + q];
                        let (r0, r1, t0, t1) = pool_window(&s, p, q);
                        whole += usize::from(r1 - r0 == k && t1 - t0 == k);
                    }
                }
            }
            let got = maxpool_backward(&dy, &x, &s);
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{:?}",
                (n, c, h, w, k, stride, pad)
            );
        }
        assert!(whole > 3000, "the whole-window path ran");
    }
}
