//! Convolution on the CPU: im2col + GEMM over chunks of images.
//!
//! Images are grouped into chunks of `g` so that each GEMM has at least ~256 columns even on
//! the 8x8 and 4x4 feature maps of the last stages; chunks run in parallel on rayon's pool and
//! each calls a serial GEMM. The chunk size depends only on the problem shape, never on the
//! thread count, and per-chunk weight gradients are summed in chunk order, so results are
//! reproducible bit for bit.

use super::elementwise::{relu, update_unary};
use super::gemm::{sgemm, sgemm_into, sgemm_layout, Layout};
use super::{host, pointwise, team, CpuBackend, Weights};
use crate::backend::{Activation, ConvEpilogue, ConvOps, ConvShape, ConvSpec, Precision};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// GEMM columns a chunk aims for in the forward and backward-data products.
const TARGET_COLUMNS: usize = 256;
/// Reduction length a chunk aims for in the backward-weight product (fewer, longer partials).
const TARGET_WGRAD_COLUMNS: usize = 1024;
/// GEMM columns a chunk aims for in the forward of a 1x1 convolution: one image wherever its map
/// has 64 pixels or more, so that the GEMM reads the input in place and writes the output
/// directly. Chunks of several images went through an im2col copy, a GEMM into scratch and a
/// copy back; ResNet-50 at batch 32 ran its 1x1 layers 5% faster this way (555-563 -> 522-532 ms
/// over 33 layers, `bench infer --layers`, 2 threads, AVX-512).
const TARGET_POINTWISE_COLUMNS: usize = 64;

fn images_per_chunk(s: &ConvShape) -> usize {
    images_per_chunk_for(s, TARGET_COLUMNS)
}

fn images_per_chunk_for(s: &ConvShape, target: usize) -> usize {
    let pq = (s.out_h * s.out_w).max(1);
    let want = target.div_ceil(pq);
    // Keep at least 4 chunks when the batch allows, so both cores (and more) have work.
    want.min((s.n / 4).max(1)).max(1)
}

/// A chunk's scratch floats: grown from the buffer pool and handed back to it when dropped. Fresh
/// vectors, zero-filled and freed on every call, faulted their pages in again at batch 1, where
/// each convolution is one chunk (the 7x7 stem's 7.4 MB im2col matrix: 2.9% of its weight
/// gradient in page faults, and as much again zero-filling it).
#[derive(Default)]
struct Scratch(Vec<f32>);

impl Scratch {
    /// `len` floats: what the last use left in them, or stale pool contents where it grows, so
    /// the caller writes every element before reading it.
    fn sized(&mut self, len: usize) -> &mut [f32] {
        if self.0.capacity() < len {
            let old = std::mem::replace(&mut self.0, crate::tensor::pool::take(len));
            crate::tensor::pool::give(old);
        } else {
            // Within the capacity: a truncation, or zeros for the few floats it grows by.
            self.0.resize(len, 0.0);
        }
        &mut self.0
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::tensor::pool::give(std::mem::take(&mut self.0));
    }
}

/// Threads each chunk's GEMM may use: all of them when there are fewer chunks than threads.
fn gemm_threads(s: &ConvShape, g: usize) -> usize {
    // (chunks are independent; when there are fewer than threads, let the GEMM split itself)
    let chunks = s.n.div_ceil(g);
    let threads = rayon::current_num_threads();
    if chunks >= threads {
        1
    } else {
        threads
    }
}

/// The output columns `lo..hi` whose input column `q * stride + shift` lies in `0..w`.
fn valid_columns(ow: usize, w: isize, stride: isize, shift: isize) -> (usize, usize) {
    // q >= ceil(-shift / stride) and q * stride + shift <= w - 1.
    let lo = if shift >= 0 { 0 } else { (-shift + stride - 1) / stride };
    let hi = if w - 1 - shift < 0 { 0 } else { (w - 1 - shift) / stride + 1 };
    let lo = (lo.max(0) as usize).min(ow);
    (lo, (hi.max(0) as usize).clamp(lo, ow))
}

/// Splits a row into its even columns (`even`, `ceil(w / 2)` of them) and odd ones (`odd`,
/// `floor(w / 2)`): the stride-2 paths of `im2col_rows` and `col2im`, and of the max pool.
#[inline(always)]
pub(super) fn split_columns(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    if row.len() % 2 == 1 {
        even[row.len() / 2] = row[row.len() - 1];
    }
}

/// The inverse of `split_columns`.
fn join_columns(even: &[f32], odd: &[f32], row: &mut [f32]) {
    let w = row.len();
    for ((pair, e), o) in row.chunks_exact_mut(2).zip(even).zip(odd) {
        pair[0] = *e;
        pair[1] = *o;
    }
    if w % 2 == 1 {
        row[w - 1] = even[w / 2];
    }
}

/// Writes the im2col matrix of one image into `col` (rows `C*kh*kw`, leading dimension `ld`),
/// starting at column `off`.
fn im2col(x: &[f32], s: &ConvShape, col: &mut [f32], ld: usize, off: usize) {
    im2col_rows(x, s, (0, s.c_in), col, ld, off)
}

/// Writes the rows `(c, r, t)` of channels `c0..c0 + cn` of one image's im2col matrix into
/// `rows` (those channels' `cn*kh*kw` rows, leading dimension `ld`), starting at column `off`.
/// Column index inside the image is `p*out_w + q`.
fn im2col_rows(x: &[f32], s: &ConvShape, (c0, cn): (usize, usize), rows: &mut [f32], ld: usize, off: usize) {
    let (h, w, oh, ow) = (s.h as isize, s.w as isize, s.out_h, s.out_w);
    let (stride, pad) = (s.stride as isize, s.pad as isize);
    // Stride 2: each input row split once into its even and odd columns, so that every tap
    // column's run is one contiguous copy (a strided gather per tap, one float at a time, was a
    // quarter of ResNet-50's stride-2 3x3 layers, on one thread at batch 1).
    let half = s.w.div_ceil(2);
    let mut phases = if stride == 2 { vec![0.0f32; 2 * half] } else { Vec::new() };
    for ci in 0..cn {
        let plane = &x[(c0 + ci) * s.h * s.w..(c0 + ci + 1) * s.h * s.w];
        for r in 0..s.kh {
            let row_of = |t: usize| ((ci * s.kh + r) * s.kw + t) * ld + off;
            if stride == 2 {
                for p in 0..oh {
                    let ih = p as isize * stride + r as isize - pad;
                    if ih < 0 || ih >= h {
                        for t in 0..s.kw {
                            rows[row_of(t) + p * ow..row_of(t) + (p + 1) * ow].fill(0.0);
                        }
                        continue;
                    }
                    let src = &plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                    let (even, odd) = phases.split_at_mut(half);
                    split_columns(src, even, odd);
                    for t in 0..s.kw {
                        let dst = &mut rows[row_of(t) + p * ow..row_of(t) + (p + 1) * ow];
                        let (lo, hi) = valid_columns(ow, w, stride, t as isize - pad);
                        dst[..lo].fill(0.0);
                        if hi > lo {
                            // Input column `first + 2 j` is element `first / 2 + j` of its phase.
                            let first = (lo as isize * stride + t as isize - pad) as usize;
                            let phase = if first.is_multiple_of(2) { &even[..] } else { &odd[..] };
                            dst[lo..hi].copy_from_slice(&phase[first / 2..first / 2 + (hi - lo)]);
                        }
                        dst[hi..].fill(0.0);
                    }
                }
                continue;
            }
            for t in 0..s.kw {
                let dst_row = &mut rows[row_of(t)..row_of(t) + oh * ow];
                for p in 0..oh {
                    let ih = p as isize * stride + r as isize - pad;
                    let dst = &mut dst_row[p * ow..(p + 1) * ow];
                    if ih < 0 || ih >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                    if stride == 1 {
                        // Valid q: 0 <= q + t - pad < w, a contiguous range.
                        let shift = t as isize - pad;
                        let lo = (-shift).clamp(0, ow as isize) as usize;
                        let hi = (w - shift).clamp(0, ow as isize) as usize;
                        dst[..lo].fill(0.0);
                        if hi > lo {
                            let s0 = (lo as isize + shift) as usize;
                            dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                        }
                        dst[hi.max(lo)..].fill(0.0);
                    } else {
                        let (lo, hi) = valid_columns(ow, w, stride, t as isize - pad);
                        dst[..lo].fill(0.0);
                        let first = (lo as isize * stride + t as isize - pad) as usize;
                        for (d, v) in dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(stride as usize)) {
                            *d = *v;
                        }
                        dst[hi..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Adjoint of `im2col`: adds the columns back into the image gradient `dx` of one image.
fn col2im(col: &[f32], s: &ConvShape, ld: usize, off: usize, dx: &mut [f32]) {
    col2im_channels(col, s, ld, off, 0, dx)
}

/// `col2im` of the input channels from `c0` on whose planes `dx` holds (each plane's additions
/// are those of the whole image's, in the same order).
fn col2im_channels(col: &[f32], s: &ConvShape, ld: usize, off: usize, c0: usize, dx: &mut [f32]) {
    let (h, w, oh, ow) = (s.h as isize, s.w as isize, s.out_h, s.out_w);
    let (stride, pad) = (s.stride as isize, s.pad as isize);
    // Stride 2, as in `im2col_rows`: each row's even and odd columns gathered once, every tap
    // column's run added to them contiguously, then spread back. Each element receives the same
    // additions in the same order (taps left to right within a kernel row), so the same bits.
    let half = s.w.div_ceil(2);
    let mut phases = if stride == 2 { vec![0.0f32; 2 * half] } else { Vec::new() };
    for (plane, c) in dx.chunks_exact_mut((s.h * s.w).max(1)).zip(c0..) {
        for r in 0..s.kh {
            let row_of = |t: usize| ((c * s.kh + r) * s.kw + t) * ld + off;
            if stride == 2 {
                for p in 0..oh {
                    let ih = p as isize * stride + r as isize - pad;
                    if ih < 0 || ih >= h {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                    let (even, odd) = phases.split_at_mut(half);
                    split_columns(dst, even, odd);
                    for t in 0..s.kw {
                        let src = &col[row_of(t) + p * ow..row_of(t) + (p + 1) * ow];
                        let (lo, hi) = valid_columns(ow, w, stride, t as isize - pad);
                        if lo < hi {
                            let first = (lo as isize * stride + t as isize - pad) as usize;
                            let phase = if first.is_multiple_of(2) { &mut even[..] } else { &mut odd[..] };
                            for (d, v) in phase[first / 2..first / 2 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                                *d += v;
                            }
                        }
                    }
                    join_columns(even, odd, dst);
                }
                continue;
            }
            for t in 0..s.kw {
                let src_row = &col[row_of(t)..row_of(t) + oh * ow];
                for p in 0..oh {
                    let ih = p as isize * stride + r as isize - pad;
                    if ih < 0 || ih >= h {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                    let src = &src_row[p * ow..(p + 1) * ow];
                    let (lo, hi) = valid_columns(ow, w, stride, t as isize - pad);
                    if lo < hi {
                        let first = (lo as isize * stride + t as isize - pad) as usize;
                        for (d, v) in dst[first..].iter_mut().step_by(stride as usize).zip(&src[lo..hi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Fills `col` with the im2col matrix of a chunk of images (`x` holds them back to back). With
/// `threads > 1` (a chunk that is the whole batch: its GEMM splits over the threads too) the
/// channels are shared out, each task writing its channels' rows: on the team for a batch of 1
/// (`short`). A copy, so the split changes no value.
fn im2col_chunk(x: &[f32], s: &ConvShape, col: &mut Scratch, threads: usize, short: bool) -> usize {
    let chw = s.c_in * s.h * s.w;
    let pq = s.out_h * s.out_w;
    let images = x.len() / chw;
    let cols = images * pq;
    // Every element is written (padding taps as zeros).
    let col = col.sized(s.c_in * s.kh * s.kw * cols);
    let per_channel = s.kh * s.kw * cols;
    // A few tasks per thread, so that an uneven share evens out.
    let channels = if threads > 1 { s.c_in.div_ceil(4 * threads).max(1) } else { s.c_in };
    team::for_each_chunk_mut(short, col, channels * per_channel, |i, rows| {
        let c0 = i * channels;
        let cn = rows.len() / per_channel;
        for j in 0..images {
            im2col_rows(&x[j * chw..(j + 1) * chw], s, (c0, cn), rows, cols, j * pq);
        }
    });
    cols
}

/// Lays a chunk of `[g, K, PQ]` outputs side by side as `[K, g*PQ]`.
fn gather_chunk(dy: &[f32], k: usize, pq: usize, out: &mut Scratch) {
    let images = dy.len() / (k * pq);
    let cols = images * pq;
    // Every element is copied in below.
    let out = out.sized(k * cols);
    for j in 0..images {
        for kk in 0..k {
            out[kk * cols + j * pq..kk * cols + (j + 1) * pq]
                .copy_from_slice(&dy[(j * k + kk) * pq..(j * k + kk + 1) * pq]);
        }
    }
}

/// Inverse of `gather_chunk`.
fn scatter_chunk(src: &[f32], k: usize, pq: usize, y: &mut [f32]) {
    let images = y.len() / (k * pq);
    let cols = images * pq;
    for j in 0..images {
        for kk in 0..k {
            y[(j * k + kk) * pq..(j * k + kk + 1) * pq]
                .copy_from_slice(&src[kk * cols + j * pq..kk * cols + (j + 1) * pq]);
        }
    }
}

/// The eval-mode epilogue of a fused convolution, applied to each output while it is still in
/// cache (or in registers): `act((v * scale[k] + shift[k]) + residual)`, the unfused ops'
/// arithmetic in their order, so fusing never changes a bit.
pub struct Epilogue<'a> {
    /// Folded batch norm, one value per output channel.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    /// Added after the batch norm; the output's shape.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
    /// ReLU6 after the residual add. `apply`, `apply_slice` (GEMM and grouped paths), the
    /// depthwise, direct and 1x1 (`pointwise.rs`) kernels read it; the Winograd kernels' own
    /// epilogues stop before it, and `forward_dispatch` clamps their outputs after them.
    pub relu6: bool,
}

impl Epilogue<'_> {
    /// Output `at` (flat NCHW index) of channel `ch`.
    #[inline(always)]
    pub fn apply(&self, v: f32, ch: usize, at: usize) -> f32 {
        let mut v = v * self.scale[ch] + self.shift[ch];
        if let Some(r) = self.residual {
            v += r[at];
        }
        self.activate(v)
    }

    #[inline(always)]
    fn activate(&self, v: f32) -> f32 {
        if self.relu {
            relu(v)
        } else if self.relu6 {
            Activation::Relu6.apply(v)
        } else {
            v
        }
    }

    /// In place over `out`, which starts at flat index `at0` of an output with `plane` pixels
    /// per channel and `k` channels. One loop per activation and residual, so each vectorises.
    pub fn apply_slice(&self, out: &mut [f32], at0: usize, plane: usize, k: usize) {
        match (self.relu, self.relu6) {
            (true, _) => self.slice_with(out, at0, plane, k, relu),
            (false, true) => self.slice_with(out, at0, plane, k, |v| Activation::Relu6.apply(v)),
            (false, false) => self.slice_with(out, at0, plane, k, |v| v),
        }
    }

    /// `apply_slice` for one whole image whose residual is in `out`, the products in `fresh`
    /// (both `k` planes of `plane` pixels): `out = act((fresh * scale + shift) + out)`, the same
    /// operations in the same order. `self.residual` is not read.
    pub fn apply_over(&self, fresh: &[f32], out: &mut [f32], plane: usize, k: usize) {
        assert!(fresh.len() == k * plane && out.len() == k * plane, "epilogue: image sizes");
        match (self.relu, self.relu6) {
            (true, _) => self.over_with(fresh, out, plane, relu),
            (false, true) => self.over_with(fresh, out, plane, |v| Activation::Relu6.apply(v)),
            (false, false) => self.over_with(fresh, out, plane, |v| v),
        }
    }

    #[inline(always)]
    fn over_with(&self, fresh: &[f32], out: &mut [f32], plane: usize, act: impl Fn(f32) -> f32 + Copy) {
        for (ch, (f, o)) in fresh.chunks_exact(plane).zip(out.chunks_exact_mut(plane)).enumerate() {
            let (sc, sh) = (self.scale[ch], self.shift[ch]);
            for (o, &v) in o.iter_mut().zip(f) {
                *o = act(v * sc + sh + *o);
            }
        }
    }

    #[inline(always)]
    fn slice_with(&self, out: &mut [f32], at0: usize, plane: usize, k: usize, act: impl Fn(f32) -> f32 + Copy) {
        let plane = plane.max(1);
        let mut at = at0;
        // A chunk may start inside a channel's plane: the first row runs to that plane's end.
        let first = (plane - at0 % plane).min(out.len());
        let (head, rest) = out.split_at_mut(first);
        for row in std::iter::once(head).chain(rest.chunks_mut(plane)) {
            let ch = (at / plane) % k;
            let (sc, sh) = (self.scale[ch], self.shift[ch]);
            match self.residual {
                Some(r) => {
                    let r = &r[at..at + row.len()];
                    for (o, &rv) in row.iter_mut().zip(r) {
                        *o = act(*o * sc + sh + rv);
                    }
                }
                None => {
                    for o in row.iter_mut() {
                        *o = act(*o * sc + sh);
                    }
                }
            }
            at += row.len();
        }
    }
}

/// Clamps to [0, 6] after a kernel whose own epilogue stops before ReLU6 (Winograd).
fn relu6_after(s: &ConvShape, epi: Option<&Epilogue>, mut y: Vec<f32>) -> Vec<f32> {
    if epi.is_some_and(|e| e.relu6) {
        update_unary(s.n < team::SHORT_BATCH, &mut y, |v| Activation::Relu6.apply(v));
    }
    y
}

/// im2col + GEMM forward.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    forward_fused(x, w, s, None)
}

/// Whether a 1x1 convolution (stride 1, pad 0, dense) skips im2col: its im2col matrix of one
/// image is the image itself, so a chunk of one image feeds the GEMM in place (forward and
/// backward-weight read `x` directly, backward-data writes `dx` directly). Chunks of several
/// images (maps under 256 pixels) still gather rows into one wider GEMM. The GEMMs are the
/// im2col path's, on the same values, so the results are the same bits.
pub fn is_pointwise(s: &ConvShape) -> bool {
    s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0 && s.groups == 1
}

/// im2col + GEMM forward; `epi` is applied to each chunk of images while it is in cache.
/// 1x1 convolutions go straight to GEMM (`is_pointwise`).
pub fn forward_fused(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    forward_fused_with(x, w, s, epi, is_pointwise(s))
}

/// `forward_fused` with im2col always (the path `is_pointwise` shapes skip; for tests).
#[doc(hidden)]
pub fn forward_fused_im2col(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    forward_fused_with(x, w, s, epi, false)
}

fn forward_fused_with(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>, in_place: bool) -> Vec<f32> {
    let (k, pq, crs) = (s.c_out, s.out_h * s.out_w, s.c_in * s.kh * s.kw);
    let chw = s.c_in * s.h * s.w;
    // Every element is written below (each chunk's GEMM output or its transposition).
    let mut y = crate::tensor::pool::take(s.n * k * pq);
    if y.is_empty() {
        return y;
    }
    let g = if in_place { images_per_chunk_for(s, TARGET_POINTWISE_COLUMNS) } else { images_per_chunk(s) };
    let (threads, short) = (gemm_threads(s, g), s.n < team::SHORT_BATCH);
    y.par_chunks_mut(g * k * pq).zip(x.par_chunks(g * chw)).enumerate().for_each_init(
        <(Scratch, Scratch)>::default,
        |(col, tmp), (chunk, (ych, xch))| {
            let at0 = chunk * g * k * pq;
            if in_place && xch.len() == chw {
                // One image of a 1x1 convolution: x is its own im2col matrix.
                gemm_image(w, Layout::row_major(crs), xch, ych, (k, pq, crs), epi, at0, threads, short);
                return;
            }
            let cols = im2col_chunk(xch, s, col, threads, short);
            if cols == pq {
                // One image: the GEMM output already has the [K, PQ] layout.
                gemm_image(w, Layout::row_major(crs), col, ych, (k, pq, crs), epi, at0, threads, short);
                return;
            }
            // The GEMM overwrites every element.
            let tmp = tmp.sized(k * cols);
            sgemm(k, cols, crs, w, false, col, false, tmp, false, threads);
            scatter_chunk(tmp, k, pq, ych);
            if let Some(epi) = epi {
                epi.apply_slice(ych, at0, pq, k);
            }
        },
    );
    y
}

/// `forward_fused` of a 1x1 convolution (`is_pointwise`) on maps of `TARGET_POINTWISE_COLUMNS`
/// pixels and more, with `epi`'s residual in `y`: each image's product goes to scratch that
/// stays in cache, then the epilogue reads the residual from `y` and writes the output over it,
/// so the residual's memory is read and written once (a fresh output's lines are fetched before
/// they are written). The same bits as `forward_fused` with the residual in `epi`.
pub fn forward_fused_over(x: &[f32], w: &[f32], s: &ConvShape, epi: &Epilogue, y: &mut [f32]) {
    assert!(fused_over_supported(s), "conv: no in-place 1x1 forward for {s:?}");
    assert!(epi.residual.is_none(), "conv: the residual is the output");
    let (k, pq, c) = (s.c_out, s.out_h * s.out_w, s.c_in);
    assert!(x.len() == s.n * c * pq && w.len() == k * c && y.len() == s.n * k * pq, "conv: 1x1 sizes");
    let threads = gemm_threads(s, 1);
    let short = s.n < team::SHORT_BATCH;
    y.par_chunks_mut(k * pq).zip(x.par_chunks(c * pq)).for_each_init(Vec::new, |fresh, (ych, xch)| {
        fresh.resize(k * pq, 0.0);
        gemm_image(w, Layout::row_major(c), xch, fresh, (k, pq, c), None, 0, threads, short);
        epi.apply_over(fresh, ych, pq, k);
    });
}

/// Whether `forward_fused_over` takes `s`: a 1x1 convolution with channels, whose chunks are
/// single images.
pub fn fused_over_supported(s: &ConvShape) -> bool {
    is_pointwise(s) && s.c_in > 0 && s.c_out > 0 && s.out_h * s.out_w >= TARGET_POINTWISE_COLUMNS
}

/// Output channels per block when one image's GEMM is split over `threads`, or `None` to leave
/// it whole. The `gemm` crate sums a product's CRS terms in blocks of a depth it picks from the
/// shape: from CRS alone, except for products of at most 64 x 64 outputs (at most 512 deep,
/// and a separate kernel at most 256 outputs). A split is made only where neither exception can
/// reach a block but not the whole: every block has more than 256 outputs, and more than 64
/// rows or more than 64 columns, unless CRS fits one 512-deep block anyway.
fn rows_per_block(k: usize, pq: usize, crs: usize, threads: usize) -> Option<usize> {
    if threads < 2 || k < 2 {
        return None;
    }
    let rows = k.div_ceil(threads);
    // The last block is the smallest.
    let last = k - (k.div_ceil(rows) - 1) * rows;
    (last * pq > 256 && (pq > 64 || last > 64 || crs <= 512)).then_some(rows)
}

/// Pixel ranges to split one image's product into, one per thread, or `None` to split its output
/// channels (`rows_per_block`) or leave it whole. Splitting the output channels makes every
/// thread pack all of `b`, the input; that is cheap when the product has more outputs than
/// inputs (MobileNetV2's expansions) but doubles the packing when it has fewer (its projections:
/// 32 -> 16 channels at 112x112 ran 1.9x faster split by pixels, 144 -> 24 at 56x56 1.5x,
/// `bench infer --layers`, batch 1, 2 threads). Every part keeps at least 512 pixels, so, as in
/// `rows_per_block`, it sums each output as the whole product does and changes no bit.
fn column_parts(k: usize, pq: usize, crs: usize, threads: usize) -> Option<usize> {
    (threads >= 2 && k < crs && pq >= threads * MIN_PART_COLUMNS).then_some(threads)
}

/// The fewest pixels a part of `column_parts` gets (more than 256 outputs and 64 columns).
const MIN_PART_COLUMNS: usize = 512;

/// One image's `y[K, PQ] = w[K, CRS] * b[CRS, PQ]` (`w` laid out as `wl` says: the weights, or
/// their transpose read in place for backward-data), then `epi` on it (flat offset `at0`).
/// With `threads > 1` (a batch too small to share out by chunks) the output channels (or the
/// pixels: `column_parts`) are split into one block per thread, each a serial GEMM followed by
/// the epilogue of its own outputs, on the team for a batch of 1 (`short`). Left to the GEMM's
/// own rayon split, the epilogue ran serially after it, and at batch 1 rayon's workers fought
/// the team's spinning helper (the depthwise and Winograd layers') for the cores: MobileNetV2
/// ran no faster on 2 threads than on 1. The split is made only where every output keeps the
/// same serial reduction over CRS (`rows_per_block`, `column_parts`), so it changes no bit;
/// elsewhere the GEMM splits itself.
#[allow(clippy::too_many_arguments)]
fn gemm_image(
    w: &[f32],
    wl: Layout,
    b: &[f32],
    y: &mut [f32],
    (k, pq, crs): (usize, usize, usize),
    epi: Option<&Epilogue>,
    at0: usize,
    threads: usize,
    short: bool,
) {
    if let Some(parts) = column_parts(k, pq, crs, threads) {
        assert!(y.len() >= k * pq && b.len() >= crs * pq, "conv: 1x1 product sizes");
        let out = team::SendPtr(y.as_mut_ptr());
        team::for_each_on(short, parts, |t| {
            let (c0, c1) = (t * pq / parts, (t + 1) * pq / parts);
            let lb = Layout::row_major(pq);
            // SAFETY: part `t` writes only columns c0..c1 of the k rows of `y` (in bounds by the
            // assert above), which no other part touches.
            unsafe { sgemm_into(k, c1 - c0, crs, w, wl, &b[c0..], lb, out.at(c0), lb, false, 1) };
            if let Some(epi) = epi {
                for r in 0..k {
                    // SAFETY: as above: this part's columns of row r.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.at(r * pq + c0), c1 - c0) };
                    epi.apply_slice(row, at0 + r * pq + c0, pq, k);
                }
            }
        });
        return;
    }
    let Some(rows) = rows_per_block(k, pq, crs, threads) else {
        sgemm_layout(k, pq, crs, w, wl, b, Layout::row_major(pq), y, Layout::row_major(pq), false, threads);
        if let Some(epi) = epi {
            epi.apply_slice(y, at0, pq, k);
        }
        return;
    };
    team::for_each_chunk_mut(short, y, rows * pq, |block, out| {
        let (k0, kk) = (block * rows, out.len() / pq);
        let lp = Layout::row_major(pq);
        sgemm_layout(kk, pq, crs, &w[k0 * wl.row..], wl, b, lp, out, lp, false, 1);
        if let Some(epi) = epi {
            epi.apply_slice(out, at0 + k0 * pq, pq, k);
        }
    });
}

pub fn backward_data(dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    backward_data_with(dy, w, s, is_pointwise(s))
}

/// `backward_data` with im2col always (for tests).
#[doc(hidden)]
pub fn backward_data_im2col(dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    backward_data_with(dy, w, s, false)
}

fn backward_data_with(dy: &[f32], w: &[f32], s: &ConvShape, in_place: bool) -> Vec<f32> {
    let (k, pq, crs) = (s.c_out, s.out_h * s.out_w, s.c_in * s.kh * s.kw);
    let chw = s.c_in * s.h * s.w;
    let mut dx = crate::tensor::pool::take(s.n * chw);
    if dx.is_empty() || pq == 0 {
        dx.fill(0.0);
        return dx;
    }
    let g = images_per_chunk(s);
    let threads = gemm_threads(s, g);
    // W^T[CRS, K] read in place (W's column-major view), and the product split on the team: left
    // to the GEMM's own rayon split, at batch 1 its workers fought the team's spinning helper for
    // the cores, as the forward's did (`cargo bench --bench conv -- backward_data`, 2 threads:
    // ResNet-50's and MobileNetV2's 1x1 layers at batch 1 1.5-3.6x faster, `pw_b1_384to64x14`
    // 167 -> 47 us; its 3x3 ones 5-13%).
    let wl = Layout::col_major(crs);
    let short = s.n < team::SHORT_BATCH;
    dx.par_chunks_mut(g * chw).zip(dy.par_chunks(g * k * pq)).for_each_init(Scratch::default, |dyc, (dxch, dych)| {
        let images = dxch.len() / chw;
        let cols = images * pq;
        let dy_cols: &[f32] = if images == 1 {
            dych
        } else {
            gather_chunk(dych, k, pq, dyc);
            dyc
        };
        // Every element of the scratch is written by the product or the transpose.
        let mut dcol = Scratch::default();
        if cols <= PIXEL_MAJOR_COLUMNS && s.n <= g {
            // A batch in one chunk, on few columns: the product is written pixel by pixel
            // (dcol's column-major form), split on the team, then transposed back. The `gemm`
            // crate runs that form up to 1.9x faster on these shapes (one thread: ResNet-50's
            // 3x3 layers at 14x14, 2304 x 196 x 256, 2947 -> 1604 us; at 7x7, 4608 x 49 x 512,
            // 3726 -> 2355; its 1x1 layers at 14x14 1.7-1.9x).
            let mut by_pixel = Scratch::default();
            let operands = ((w, wl), (dy_cols, Layout::row_major(cols)));
            let by_pixel = by_pixel.sized(crs * cols);
            product_on_team((crs, cols, k), operands, by_pixel, Layout::col_major(crs), threads, short);
            if in_place {
                // A 1x1 convolution's dcol is dx itself (the batch's one image).
                transpose(by_pixel, cols, crs, dxch, threads, short);
                return;
            }
            transpose(by_pixel, cols, crs, dcol.sized(crs * cols), threads, short);
        } else if in_place && images == 1 {
            // One image of a 1x1 convolution: the GEMM writes dx itself (col2im would add its
            // output to zeros: the same values, as a sum from +0 is never -0).
            gemm_image(w, wl, dy_cols, dxch, (crs, cols, k), None, 0, threads, short);
            return;
        } else {
            gemm_image(w, wl, dy_cols, dcol.sized(crs * cols), (crs, cols, k), None, 0, threads, short);
        }
        // col2im accumulates: each chunk clears its part first.
        if images == 1 && threads > 1 {
            // The batch's one image: its channels' planes shared out on the team (or rayon's
            // pool), as the product before it; run serially, the other cores waited.
            let hw = s.h * s.w;
            let per_task = s.c_in.div_ceil(4 * threads).max(1);
            team::for_each_chunk_mut(short, dxch, (per_task * hw).max(1), |t, planes| {
                planes.fill(0.0);
                col2im_channels(&dcol, s, cols, 0, t * per_task, planes);
            });
            return;
        }
        dxch.fill(0.0);
        for j in 0..images {
            col2im(&dcol, s, cols, j * pq, &mut dxch[j * chw..(j + 1) * chw]);
        }
    });
    dx
}

/// Backward-data products of at most this many columns (pixels of all the chunk's images) are
/// written pixel-major when the chunk is the whole batch (its product split over the threads:
/// see `backward_data_with`). ResNet-50's batch-1 training step, 2 threads, alternated
/// twice (`bench train --layers`): input gradients 1x1 20.8 -> 18.6-18.9 ms, 3x3 19.8 -> 17.0-17.1,
/// strided 12.2 -> 9.5-9.6; the step 174 -> 166-169 ms. Not for 1024 columns (at 28x28 the
/// product is only 15% faster, and its transpose is 3.6 MB), nor for batches of several
/// chunks, which run one per thread: there ResNet-56 at batch 128 trained 4-5% slower (chunks
/// of 256 columns, which the row-major product's 64-row blocks fill, and one transpose each).
const PIXEL_MAJOR_COLUMNS: usize = 256;

/// `dst[cols, rows]` (row-major) from `src[rows, cols]` (row-major): blocks of `dst`'s rows
/// shared out (on the team when `short`), each in 8x8 register transposes where the CPU has AVX2.
/// A copy, so the split changes no value.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], threads: usize, short: bool) {
    assert!(src.len() == rows * cols && dst.len() == rows * cols, "conv: transpose sizes");
    if rows == 0 || cols == 0 {
        return;
    }
    // Rows of `dst` per task: a multiple of 8, a few tasks per thread.
    let per_task = if threads > 1 { cols.div_ceil(4 * threads).next_multiple_of(8) } else { cols };
    team::for_each_chunk_mut(short, dst, per_task * rows, |block, out| {
        let c0 = block * per_task;
        let c1 = c0 + out.len() / rows;
        let mut r0 = 0;
        #[cfg(target_arch = "x86_64")]
        if super::isa::has_avx2() {
            while r0 + 8 <= rows {
                let mut c = c0;
                while c + 8 <= c1 {
                    // SAFETY: AVX2 checked above; the reads are rows r0..r0+8, columns c..c+8 of
                    // `src` and the writes rows c..c+8 (from c0), columns r0..r0+8 of `out`,
                    // all inside the slices (rows * cols floats, `out` this block's rows).
                    unsafe {
                        super::simd::transpose_8x8(
                            src.as_ptr().add(r0 * cols + c),
                            cols,
                            out.as_mut_ptr().add((c - c0) * rows + r0),
                            rows,
                        )
                    };
                    c += 8;
                }
                for c in c..c1 {
                    for r in r0..r0 + 8 {
                        out[(c - c0) * rows + r] = src[r * cols + c];
                    }
                }
                r0 += 8;
            }
        }
        for c in c0..c1 {
            for r in r0..rows {
                out[(c - c0) * rows + r] = src[r * cols + c];
            }
        }
    });
}

pub fn backward_weight(dy: &[f32], x: &[f32], s: &ConvShape) -> Vec<f32> {
    backward_weight_with(dy, x, s, is_pointwise(s))
}

/// `backward_weight` with im2col always (for tests).
#[doc(hidden)]
pub fn backward_weight_im2col(dy: &[f32], x: &[f32], s: &ConvShape) -> Vec<f32> {
    backward_weight_with(dy, x, s, false)
}

fn backward_weight_with(dy: &[f32], x: &[f32], s: &ConvShape, in_place: bool) -> Vec<f32> {
    let (k, pq, crs) = (s.c_out, s.out_h * s.out_w, s.c_in * s.kh * s.kw);
    let chw = s.c_in * s.h * s.w;
    if s.n == 0 || pq == 0 {
        return vec![0.0; k * crs];
    }
    let g = images_per_chunk_for(s, TARGET_WGRAD_COLUMNS);
    let threads = gemm_threads(s, g);
    if s.n <= g {
        // One chunk (batch 1, or a batch that fits one): the GEMM writes dW[K, CRS] itself, as
        // the column-major form of its dW^T, with no partial to sum and transpose after. At
        // batch 1 that pass was 12% of a ResNet-50 training step (1 thread).
        let (mut col, mut dyc) = <(Scratch, Scratch)>::default();
        return chunk_weight_gradient(dy, x, s, in_place, threads, (&mut col, &mut dyc), Layout::col_major(crs));
    }
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(g * k * pq)
        .zip(x.par_chunks(g * chw))
        .map_init(<(Scratch, Scratch)>::default, |(col, dyc), (dych, xch)| {
            chunk_weight_gradient(dych, xch, s, in_place, threads, (col, dyc), Layout::row_major(k))
        })
        .collect();
    sum_transposed(partials, k, crs)
}

/// One chunk's weight gradient `dW^T[CRS, K] = col[CRS, cols] * dY^T[cols, K]`, stored with
/// layout `out` (row-major: the partial `sum_transposed` reads; column-major: dW itself). `col`
/// is the chunk's im2col matrix (the input itself for one image of a 1x1 convolution,
/// `in_place`), built in the first scratch; the output gradient is gathered into the second when
/// the chunk holds several images.
fn chunk_weight_gradient(
    dych: &[f32],
    xch: &[f32],
    s: &ConvShape,
    in_place: bool,
    threads: usize,
    (col, dyc): (&mut Scratch, &mut Scratch),
    out: Layout,
) -> Vec<f32> {
    let (k, pq, chw, crs) = (s.c_out, s.out_h * s.out_w, s.c_in * s.h * s.w, s.c_in * s.kh * s.kw);
    let (col, cols): (&[f32], usize) = if in_place && xch.len() == chw {
        (xch, pq)
    } else {
        let cols = im2col_chunk(xch, s, col, threads, s.n < team::SHORT_BATCH);
        (&col[..], cols)
    };
    let dy_cols: &[f32] = if cols == pq {
        dych
    } else {
        gather_chunk(dych, k, pq, dyc);
        dyc
    };
    // This orientation (dW^T = col * dY^T) runs ~2x faster in the `gemm` crate than dW = dY *
    // col^T on these long, thin reductions, whichever way the result is stored.
    // Every element is written by the GEMM (it overwrites: `accumulate` is false).
    let mut dw = crate::tensor::pool::take(crs * k);
    let operands = ((col, Layout::row_major(cols)), (dy_cols, Layout::col_major(cols)));
    product_on_team((crs, k, cols), operands, &mut dw, out, threads, s.n < team::SHORT_BATCH);
    dw
}

/// A GEMM operand and its layout.
type Operand<'a> = (&'a [f32], Layout);

/// `c[m, n] = a[m, depth] * b[depth, n]` (layouts as given; `c` laid out as `lc`), split on the
/// team as `product_split` says when it can be without changing a bit, else one GEMM that may
/// split itself over `threads`.
fn product_on_team(
    (m, n, depth): (usize, usize, usize),
    ((a, la), (b, lb)): (Operand, Operand),
    c: &mut [f32],
    lc: Layout,
    threads: usize,
    short: bool,
) {
    let Some(split) = product_split(m, n, threads).filter(|_| m > 0 && n > 0) else {
        sgemm_layout(m, n, depth, a, la, b, lb, c, lc, false, threads);
        return;
    };
    assert!(c.len() > (m - 1) * lc.row + (n - 1) * lc.col, "conv: product output too small");
    let ptr = team::SendPtr(c.as_mut_ptr());
    let (along, block) = match split {
        Split::Rows(r) => (m, r),
        Split::Columns(c) => (n, c),
    };
    team::for_each_on(short, along.div_ceil(block), |t| {
        let (a0, a1) = (t * block, ((t + 1) * block).min(along));
        // SAFETY: part `t` writes only its own rows (or columns) of `c`, in bounds (asserted
        // above), which no other part touches.
        unsafe {
            match split {
                Split::Rows(_) => {
                    sgemm_into(a1 - a0, n, depth, &a[a0 * la.row..], la, b, lb, ptr.at(a0 * lc.row), lc, false, 1)
                }
                Split::Columns(_) => {
                    sgemm_into(m, a1 - a0, depth, a, la, &b[a0 * lb.col..], lb, ptr.at(a0 * lc.col), lc, false, 1)
                }
            }
        }
    });
}

/// How `product_split` cuts an `m x n` product: blocks of this many rows, or of columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Rows(usize),
    Columns(usize),
}

/// A split of an `m x n` product (over a long reduction) into one serial GEMM per thread on the
/// team, or `None` to leave it to the GEMM's own rayon split. At batch 1 that split's workers
/// fought the team's spinning helper for the cores, as the forward's did (`gemm_image`): the
/// weight gradients of ResNet-50's and MobileNetV2's layers at batch 1 ran 1.2-3.5x faster on
/// the team (`cargo bench --bench conv -- backward_weight`, 2 threads; the 7x7 stem 4.7 -> 2.2
/// ms). The larger side is cut (rows in blocks of 16, columns of 8); a cut is made only when
/// every block takes the `gemm` crate's path for the whole product: its dot-product kernels
/// below 256 outputs and its small-product depth block below 64 x 64 sum in other orders (cut
/// under those bounds, 16 -> 96 and 32 -> 16 at 112x112 changed their last bits). Then each
/// output is the same serial sum as unsplit, and no bit changes.
fn product_split(m: usize, n: usize, threads: usize) -> Option<Split> {
    let path = |m: usize, n: usize| (m * n <= 16 * 16, m <= 64 && n <= 64);
    let keeps_bits = |along: usize, block: usize, sub: &dyn Fn(usize) -> (bool, bool)| {
        let last = along - (along.div_ceil(block) - 1) * block;
        along.div_ceil(block) >= 2 && sub(block) == path(m, n) && sub(last) == path(m, n)
    };
    let rows = m.div_ceil(threads).next_multiple_of(16);
    let by_rows = keeps_bits(m, rows, &|r| path(r, n)).then_some(Split::Rows(rows));
    let columns = n.div_ceil(threads).next_multiple_of(8);
    let by_columns = keeps_bits(n, columns, &|c| path(m, c)).then_some(Split::Columns(columns));
    if threads < 2 {
        None
    } else if m >= n {
        by_rows.or(by_columns)
    } else {
        by_columns.or(by_rows)
    }
}

/// `dw[K, CRS]` from the chunks' partial `dW^T[CRS, K]`s: each element is `0 + p0 + p1 + ...` in
/// chunk order (reproducible whatever the thread count), summed and transposed in one pass split
/// over blocks of output channels. Run serially, as a sum and then a transpose, it was one
/// thread's pass over every partial (9.4 MB each for ResNet-50's layer4 3x3 conv) while the
/// other cores waited.
fn sum_transposed(partials: Vec<Vec<f32>>, k: usize, crs: usize) -> Vec<f32> {
    const ROWS: usize = 16;
    let mut dw = crate::tensor::pool::take(k * crs);
    dw.par_chunks_mut((ROWS * crs).max(1)).enumerate().for_each(|(block, out)| {
        let (k0, rows) = (block * ROWS, out.len() / crs.max(1));
        let mut acc = [0.0f32; ROWS];
        for r in 0..crs {
            let acc = &mut acc[..rows];
            acc.fill(0.0);
            for part in &partials {
                for (a, &v) in acc.iter_mut().zip(&part[r * k + k0..r * k + k0 + rows]) {
                    *a += v;
                }
            }
            for (j, &v) in acc.iter().enumerate() {
                out[j * crs + r] = v;
            }
        }
    });
    for part in partials {
        crate::tensor::pool::give(part);
    }
    dw
}

// ---- grouped convolutions ---------------------------------------------------------------------
//
// Group `gi` maps input channels `gi * cg..(gi + 1) * cg` to output channels
// `gi * kg..(gi + 1) * kg` with its own `[kg, cg, kh, kw]` block of the weight (contiguous in the
// `[K, C / groups, kh, kw]` tensor). Per image, a group's input, output and gradients are
// contiguous blocks of planes, so each (image, group) pair is one independent dense problem: the
// im2col + GEMM machinery above on the group's channel slice, a serial GEMM per pair. Every
// output is one GEMM's dot product whatever the thread count, and backward-weight sums images in
// a fixed order per group, so results are reproducible bit for bit.

/// The dense problem of one group on one image (`groups == 1`, the group's channel counts).
pub(crate) fn group_shape(s: &ConvShape) -> ConvShape {
    ConvShape { n: 1, c_in: s.c_in / s.groups, c_out: s.c_out / s.groups, groups: 1, ..*s }
}

/// Grouped forward (any `groups`; `groups == 1` is the dense problem done image by image).
pub fn forward_grouped(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    let sg = group_shape(s);
    let (kg, pq, crs) = (sg.c_out, s.out_h * s.out_w, sg.c_in * s.kh * s.kw);
    let (chw, cghw) = (s.c_in * s.h * s.w, sg.c_in * s.h * s.w);
    let mut y = crate::tensor::pool::take(s.n * s.c_out * pq);
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(kg * pq).enumerate().for_each_init(Scratch::default, |col, (i, yb)| {
        let (img, gi) = (i / s.groups, i % s.groups);
        let xg = &x[img * chw + gi * cghw..img * chw + (gi + 1) * cghw];
        // Every element is written (padding taps as zeros).
        let col = col.sized(crs * pq);
        im2col(xg, &sg, col, pq, 0);
        sgemm(kg, pq, crs, &w[gi * kg * crs..(gi + 1) * kg * crs], false, col, false, yb, false, 1);
        if let Some(epi) = epi {
            epi.apply_slice(yb, i * kg * pq, pq, s.c_out);
        }
    });
    y
}

pub fn backward_data_grouped(dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let sg = group_shape(s);
    let (kg, pq, crs) = (sg.c_out, s.out_h * s.out_w, sg.c_in * s.kh * s.kw);
    let cghw = sg.c_in * s.h * s.w;
    let mut dx = crate::tensor::pool::take(s.n * s.c_in * s.h * s.w);
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(cghw).enumerate().for_each_init(Scratch::default, |dcol, (i, dxb)| {
        dxb.fill(0.0);
        if pq == 0 {
            return;
        }
        let gi = i % s.groups;
        let dyb = &dy[i * kg * pq..(i + 1) * kg * pq];
        // The GEMM overwrites every element.
        let dcol = dcol.sized(crs * pq);
        sgemm(crs, pq, kg, &w[gi * kg * crs..(gi + 1) * kg * crs], true, dyb, false, dcol, false, 1);
        col2im(dcol, &sg, pq, 0, dxb);
    });
    dx
}

pub fn backward_weight_grouped(dy: &[f32], x: &[f32], s: &ConvShape) -> Vec<f32> {
    let sg = group_shape(s);
    let (kg, pq, crs) = (sg.c_out, s.out_h * s.out_w, sg.c_in * s.kh * s.kw);
    let (chw, cghw) = (s.c_in * s.h * s.w, sg.c_in * s.h * s.w);
    let mut dw = vec![0.0f32; s.c_out * crs];
    if s.n == 0 || pq == 0 || dw.is_empty() {
        return dw;
    }
    // One task per group; inside it, images in order, each accumulated into the group's block.
    dw.par_chunks_mut(kg * crs).enumerate().for_each_init(Scratch::default, |col, (gi, dwg)| {
        // Every element is written by each image's im2col.
        let col = col.sized(crs * pq);
        for img in 0..s.n {
            let xg = &x[img * chw + gi * cghw..img * chw + (gi + 1) * cghw];
            im2col(xg, &sg, col, pq, 0);
            let dyb = &dy[(img * s.groups + gi) * kg * pq..(img * s.groups + gi + 1) * kg * pq];
            sgemm(kg, crs, pq, dyb, false, col, true, dwg, img > 0, 1);
        }
    });
    dw
}

/// Direct 7-loop convolution in f64: the reference for the fast path above.
pub fn forward_reference(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let mut y = vec![0.0f32; s.n * s.c_out * s.out_h * s.out_w];
    // Output channel `k` reads the `cg` input channels of its group (all of them when dense).
    let (cg, kg) = (s.c_in / s.groups, s.c_out / s.groups);
    for n in 0..s.n {
        for k in 0..s.c_out {
            let c0 = (k / kg) * cg;
            for p in 0..s.out_h {
                for q in 0..s.out_w {
                    let mut acc = 0.0f64;
                    for c in 0..cg {
                        for r in 0..s.kh {
                            for t in 0..s.kw {
                                let ih = (p * s.stride + r) as isize - s.pad as isize;
                                let iw = (q * s.stride + t) as isize - s.pad as isize;
                                if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize {
                                    continue;
                                }
                                let xv = x[((n * s.c_in + c0 + c) * s.h + ih as usize) * s.w + iw as usize];
                                let wv = w[((k * cg + c) * s.kh + r) * s.kw + t];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * s.c_out + k) * s.out_h + p) * s.out_w + q] = acc as f32;
                }
            }
        }
    }
    y
}

// ---- the trait ------------------------------------------------------------------------------

/// The CPU kernels' view of a fused conv's epilogue, with `residual` as its residual.
fn host_epilogue<'a>(epi: &ConvEpilogue<'a>, residual: Option<&'a Tensor>) -> Result<Epilogue<'a>> {
    Ok(Epilogue {
        scale: host(epi.scale)?,
        shift: host(epi.shift)?,
        residual: residual.map(host).transpose()?,
        relu: epi.act == Activation::Relu,
        relu6: epi.act == Activation::Relu6,
    })
}

impl CpuBackend {
    /// The forward kernel this backend uses for `s` (f64 loops, depthwise, grouped, Winograd,
    /// direct, 1x1 or im2col), with the fused epilogue applied in its last pass when given.
    fn forward_dispatch(
        &self,
        x: &Tensor,
        w: &Tensor,
        s: &ConvShape,
        epi: Option<&Epilogue>,
        weights: Weights,
    ) -> Result<Vec<f32>> {
        Ok(if self.reference {
            let mut y = forward_reference(host(x)?, host(w)?, s);
            if let Some(epi) = epi {
                let plane = s.out_h * s.out_w;
                y.par_chunks_mut(plane.max(1))
                    .enumerate()
                    .for_each(|(i, o)| epi.apply_slice(o, i * plane, plane, s.c_out));
            }
            y
        } else if self.depthwise(s) {
            super::depthwise::forward(host(x)?, host(w)?, s, epi)
        } else if s.groups != 1 {
            forward_grouped(host(x)?, host(w)?, s, epi)
        } else if self.direct_channels(s, weights) {
            super::direct::forward_channels(host(x)?, host(w)?, Some(w.stamp()), s, epi)
        } else if let Some(tile) = match weights {
            Weights::Fixed => self.winograd(s),
            Weights::Changing => self.winograd_changing(s),
        } {
            // Changing weights' transforms are not kept: they would never be asked for again
            // (without a stamp the transform goes back to the buffer pool for the next step).
            let w_stamp = (weights == Weights::Fixed).then(|| w.stamp());
            relu6_after(s, epi, super::winograd::forward_stamped(host(x)?, host(w)?, w_stamp, s, tile, epi))
        } else if self.direct(s) {
            super::direct::forward(host(x)?, host(w)?, s, epi)
        } else if epi.is_some() && self.pointwise(s) {
            super::pointwise::forward_stamped(host(x)?, host(w)?, Some(w.stamp()), s, epi)
        } else {
            forward_fused(host(x)?, host(w)?, s, epi)
        })
    }
}

impl ConvOps for CpuBackend {
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::new(x.dims(), w.dims(), spec)?;
        Tensor::from_vec(&s.output_dims(), self.forward_dispatch(x, w, &s, None, Weights::Fixed)?)
    }

    /// On the Winograd path the packed input is kept for this layer's backward-weight, which
    /// packs the same `x` into the same layout.
    fn conv2d_forward_train(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::new(x.dims(), w.dims(), spec)?;
        let y = match (self.winograd_changing(&s), self.winograd_backward_weight(&s)) {
            (Some(tile), Some(_)) => super::winograd::forward_keeping_input(host(x)?, x.stamp(), host(w)?, &s, tile),
            _ => self.forward_dispatch(x, w, &s, None, Weights::Changing)?,
        };
        Tensor::from_vec(&s.output_dims(), y)
    }

    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::backward_data(dy, w, x_dims, spec)?;
        let dx = match self.winograd_changing(&s) {
            Some(tile) => super::winograd::backward_data_stamped(host(dy)?, Some(dy.stamp()), host(w)?, &s, tile),
            None if self.depthwise(&s) => super::depthwise::backward_data(host(dy)?, host(w)?, &s),
            None if s.groups != 1 => backward_data_grouped(host(dy)?, host(w)?, &s),
            None => backward_data(host(dy)?, host(w)?, &s),
        };
        Tensor::from_vec(x_dims, dx)
    }

    fn conv2d_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::backward_weight(dy, x, w_dims, spec)?;
        let dw = match self.winograd_backward_weight(&s) {
            Some(tile) => super::winograd::backward_weight_stamped(
                host(dy)?,
                Some(dy.stamp()),
                host(x)?,
                Some(x.stamp()),
                &s,
                tile,
            ),
            None if self.depthwise(&s) => super::depthwise::backward_weight(host(dy)?, host(x)?, &s),
            None if s.groups != 1 => backward_weight_grouped(host(dy)?, host(x)?, &s),
            None => backward_weight(host(dy)?, host(x)?, &s),
        };
        Tensor::from_vec(w_dims, dw)
    }

    /// The batch norm, residual add and ReLU are applied inside the convolution's last pass (the
    /// Winograd output transform, or each im2col chunk while in cache) with the unfused ops'
    /// arithmetic in their order: the same bits as running them one by one.
    fn conv2d_forward_fused(&self, x: &Tensor, w: &Tensor, spec: ConvSpec, epi: &ConvEpilogue) -> Result<Tensor> {
        let s = ConvShape::fused(x, w, spec, epi)?;
        let epi = host_epilogue(epi, epi.residual)?;
        let y = self.forward_dispatch(x, w, &s, Some(&epi), Weights::Fixed)?;
        Tensor::from_vec(&s.output_dims(), y)
    }

    /// The 1x1 kernel, and past batch 1 the 1x1 GEMM's epilogue, write over the residual (each
    /// output reads its own residual element and then replaces it); other paths borrow it.
    /// ResNet-50 at batch 32 (`bench infer --layers`, alternated three times): the GEMM's 1x1
    /// layers with a residual (layer3's and layer4's expansions) 124-127 -> 121-122 ms.
    fn conv2d_forward_fused_over(
        &self,
        x: &Tensor,
        w: &Tensor,
        spec: ConvSpec,
        epi: &ConvEpilogue,
        mut residual: Tensor,
    ) -> Result<Tensor> {
        let with = ConvEpilogue { residual: Some(&residual), ..*epi };
        let s = ConvShape::fused(x, w, spec, &with)?;
        // The paths `forward_dispatch` takes for a 1x1 convolution with an epilogue (no earlier
        // arm takes one): the 1x1 kernel, else the GEMM. At batch 1 the GEMM splits one image's
        // product over the threads and its output stays in cache: it borrows.
        let kernel = self.pointwise(&s);
        if self.reference || !(kernel || (s.n > 1 && fused_over_supported(&s))) {
            return self.conv2d_forward_fused(x, w, spec, &with);
        }
        let epi = host_epilogue(epi, None)?;
        if kernel {
            pointwise::forward_over(host(x)?, host(w)?, Some(w.stamp()), &s, &epi, residual.as_mut_slice()?);
        } else {
            forward_fused_over(host(x)?, host(w)?, &s, &epi, residual.as_mut_slice()?);
        }
        Ok(residual)
    }

    fn set_conv_precision(&self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 {
            return Err(Error::Invalid(format!(
                "set_conv_precision: the CPU backend computes in f32 only ({} needs a CUDA device)",
                precision.name()
            )));
        }
        Ok(())
    }

    fn conv_precision(&self) -> Precision {
        Precision::F32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ConvSpec;

    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// Every tap of one image in the plain loop's order (channel, kernel row, kernel column,
    /// output pixel): its im2col row and column, and the input element it reads (`None` in the
    /// padding).
    fn each_tap(s: &ConvShape, mut f: impl FnMut(usize, usize, Option<usize>)) {
        let (h, w) = (s.h as isize, s.w as isize);
        for ch in 0..s.c_in {
            for r in 0..s.kh {
                for t in 0..s.kw {
                    for p in 0..s.out_h {
                        for q in 0..s.out_w {
                            let ih = (p * s.stride + r) as isize - s.pad as isize;
                            let iw = (q * s.stride + t) as isize - s.pad as isize;
                            let inside = ih >= 0 && iw >= 0 && ih < h && iw < w;
                            let at = inside.then(|| (ch * s.h + ih as usize) * s.w + iw as usize);
                            f((ch * s.kh + r) * s.kw + t, p * s.out_w + q, at);
                        }
                    }
                }
            }
        }
    }

    /// A chunk's im2col matrix is the same whether its channels are shared out or not, and its
    /// columns are each image's own im2col matrix side by side (stride 2 goes through the
    /// row's even and odd columns; odd and even widths, both edges partial).
    #[test]
    fn im2col_chunk_shared_out_by_channels_is_each_images_matrix() {
        for &(c, h, w, ks, stride, pad) in
            &[(5, 9, 9, 3, 2, 1), (7, 8, 6, 3, 2, 1), (3, 6, 7, 1, 2, 0), (4, 5, 5, 3, 1, 1)]
        {
            let n = 3;
            let s = ConvShape::new(&[n, c, h, w], &[2, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
            let x = pseudo(n * c * h * w, 21);
            // Scratch left with stale values (NaN) past what each call needs: every one is written.
            let stale = || Scratch(vec![f32::NAN; 4096]);
            let (mut whole, mut shared, mut team_shared) = (Scratch::default(), stale(), stale());
            let cols = im2col_chunk(&x, &s, &mut whole, 1, false);
            assert_eq!(cols, n * s.out_h * s.out_w);
            assert_eq!(im2col_chunk(&x, &s, &mut shared, 3, false), cols);
            assert_eq!(im2col_chunk(&x, &s, &mut team_shared, 2, true), cols);
            assert!(whole.iter().zip(shared.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?}");
            assert!(whole.iter().zip(team_shared.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?}");
            let (rows, pq, chw) = (c * ks * ks, s.out_h * s.out_w, c * h * w);
            for j in 0..n {
                let mut one = vec![7.0f32; rows * pq];
                im2col(&x[j * chw..(j + 1) * chw], &s, &mut one, pq, 0);
                for row in 0..rows {
                    assert_eq!(&whole[row * cols + j * pq..row * cols + (j + 1) * pq], &one[row * pq..(row + 1) * pq]);
                }
            }
        }
    }

    /// `col2im` adds every column into its input pixel in the order of a plain loop over
    /// (channel, kernel row, kernel column, output pixel), bit for bit (stride 2 goes through
    /// the rows' even and odd columns; odd and even widths, both edges partial).
    #[test]
    fn col2im_adds_in_the_order_of_the_plain_loop() {
        for &(c, h, w, ks, stride, pad) in
            &[(2, 7, 9, 3, 2, 1), (3, 8, 6, 3, 2, 1), (2, 6, 7, 1, 2, 0), (2, 9, 8, 5, 2, 2), (2, 5, 6, 3, 1, 1)]
        {
            let s = ConvShape::new(&[1, c, h, w], &[1, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
            let (rows, cols) = (c * ks * ks, s.out_h * s.out_w);
            let cv = pseudo(rows * cols, 31);
            let start = pseudo(c * h * w, 32);
            let mut fast = start.clone();
            col2im(&cv, &s, cols, 0, &mut fast);
            let mut plain = start;
            each_tap(&s, |row, col, at| {
                if let Some(at) = at {
                    plain[at] += cv[row * cols + col];
                }
            });
            assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?}");
        }
    }

    /// `col2im` is the adjoint of `im2col` (`<im2col x, c> = <x, col2im c>`), and `im2col`
    /// gathers exactly the taps the direct loops read, for strides and paddings that leave
    /// partial windows at both edges.
    #[test]
    fn im2col_and_col2im_are_adjoint_on_strided_shapes() {
        for &(c, h, w, ks, stride, pad) in
            &[(2, 7, 9, 3, 2, 1), (3, 8, 5, 3, 3, 2), (1, 6, 6, 1, 2, 0), (2, 5, 7, 5, 2, 3)]
        {
            let s = ConvShape::new(&[1, c, h, w], &[1, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
            let rows = c * ks * ks;
            let cols = s.out_h * s.out_w;
            let x = pseudo(c * h * w, 11);
            let cv = pseudo(rows * cols, 12);
            let mut col = vec![7.0f32; rows * cols];
            im2col(&x, &s, &mut col, cols, 0);
            let mut back = vec![0.0f32; c * h * w];
            col2im(&cv, &s, cols, 0, &mut back);
            let lhs: f64 = col.iter().zip(&cv).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{s:?}: {lhs} vs {rhs}");
            // Against the taps read directly.
            each_tap(&s, |row, col_at, at| {
                assert_eq!(col[row * cols + col_at], at.map_or(0.0, |a| x[a]), "{s:?}");
            });
        }
    }

    #[test]
    fn fast_forward_matches_direct_loops() {
        for &(n, c, h, k, ks, stride, pad) in &[
            (3, 5, 9, 7, 3, 1, 1),
            (2, 4, 8, 6, 3, 2, 1),
            (9, 3, 4, 5, 1, 1, 0),
            (1, 2, 7, 3, 3, 2, 0),
            (17, 3, 6, 4, 3, 1, 1),
        ] {
            let x = pseudo(n * c * h * h, 1);
            let w = pseudo(k * c * ks * ks, 2);
            let s = ConvShape::new(&[n, c, h, h], &[k, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
            let fast = forward(&x, &w, &s);
            let slow = forward_reference(&x, &w, &s);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b} for {s:?}");
            }
        }
    }

    /// Backward-data against a plain f64 loop, on both sides of `PIXEL_MAJOR_COLUMNS` (pixel-major
    /// products transposed back, and the row-major one), for 3x3, strided and 1x1 layers, one image
    /// a chunk and several; and the same bits on 1, 2 and 3 threads.
    #[test]
    fn backward_data_matches_a_plain_loop_on_any_thread_count() {
        // (batch, c_in, c_out, side, stride, kernel)
        let shapes = [
            (1, 24, 40, 7, 1, 3),  // 49 columns: pixel-major, split on the team
            (2, 24, 40, 5, 1, 3),  // two chunks of 25 columns: row-major
            (1, 20, 12, 14, 2, 3), // strided
            (1, 64, 48, 14, 1, 1), // 1x1, transposed into dx
            (3, 48, 64, 7, 1, 1),  // 1x1, chunks of one image: row-major
            (1, 6, 8, 40, 1, 3),   // 1600 columns: row-major
            (1, 40, 24, 36, 1, 1), // 1296 columns, 1x1: row-major in place
        ];
        let mut sides = (false, false);
        for (n, c, k, side, stride, ks) in shapes {
            let spec = ConvSpec { stride, pad: ks / 2, groups: 1 };
            let s = ConvShape::new(&[n, c, side, side], &[k, c, ks, ks], spec).unwrap();
            let (pq, hw) = (s.out_h * s.out_w, side * side);
            let dy = pseudo(n * k * pq, 3);
            let w = pseudo(k * c * ks * ks, 4);
            let mut want = vec![0.0f64; n * c * hw];
            for (b, kk, oy, ox) in itertools_product(n, k, s.out_h, s.out_w) {
                let g = dy[((b * k + kk) * s.out_h + oy) * s.out_w + ox] as f64;
                for (ci, r, t) in itertools_product3(c, ks, ks) {
                    let (iy, ix) = (
                        (oy * stride + r) as isize - (ks / 2) as isize,
                        (ox * stride + t) as isize - (ks / 2) as isize,
                    );
                    if (0..side as isize).contains(&iy) && (0..side as isize).contains(&ix) {
                        want[(b * c + ci) * hw + iy as usize * side + ix as usize] +=
                            g * w[((kk * c + ci) * ks + r) * ks + t] as f64;
                    }
                }
            }
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| backward_data(&dy, &w, &s))
            };
            let one = run(1);
            for (got, want) in one.iter().zip(&want) {
                assert!((*got as f64 - want).abs() < 1e-4, "{s:?}: {got} against {want}");
            }
            for threads in [2, 3] {
                let got = run(threads);
                assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?} on {threads} threads");
            }
            let g = images_per_chunk(&s);
            if g * pq <= PIXEL_MAJOR_COLUMNS && n <= g {
                sides.0 = true;
            } else {
                sides.1 = true;
            }
        }
        assert_eq!(sides, (true, true), "both products ran");
    }

    fn itertools_product(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |l| (0..d).map(move |m| (i, j, l, m)))))
    }

    fn itertools_product3(a: usize, b: usize, c: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).map(move |l| (i, j, l))))
    }

    /// The weight gradient's product split on the team (`product_split`) gives the bits of the
    /// unsplit serial product, on 2 and 3 threads: shapes on both sides of the `gemm` crate's
    /// bounds, split by rows and by columns. (Cutting 16 -> 96 at 112x112 into two 48-column
    /// blocks, or 32 -> 16 into 8-column ones, changed their last bits.)
    #[test]
    fn split_weight_gradient_keeps_the_bits() {
        // (batch, c_in, c_out, side, stride, kernel)
        let shapes = [
            (1, 16, 96, 112, 1, 1),
            (1, 32, 16, 112, 1, 1),
            (1, 96, 24, 56, 1, 1),
            (1, 256, 64, 56, 1, 1),
            (1, 3, 64, 64, 2, 7),
            (1, 16, 16, 32, 1, 3),
            (2, 40, 3, 20, 1, 1),
        ];
        let mut splits = Vec::new();
        for (n, c, k, side, stride, ks) in shapes {
            let spec = ConvSpec { stride, pad: ks / 2, groups: 1 };
            let s = ConvShape::new(&[n, c, side, side], &[k, c, ks, ks], spec).unwrap();
            let x = pseudo(n * c * side * side, 1);
            let dy = pseudo(n * k * s.out_h * s.out_w, 2);
            let in_place = is_pointwise(&s) && n == 1;
            let out = Layout::col_major(c * ks * ks);
            let grad = |threads| {
                let (mut col, mut dyc) = <(Scratch, Scratch)>::default();
                chunk_weight_gradient(&dy, &x, &s, in_place, threads, (&mut col, &mut dyc), out)
            };
            let serial = grad(1);
            for threads in [2, 3] {
                splits.push(product_split(c * ks * ks, k, threads));
                let split = grad(threads);
                assert!(
                    serial.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s:?} on {threads} threads"
                );
            }
        }
        // Both cuts ran, and one shape was left whole.
        assert!(splits.iter().any(|p| matches!(p, Some(Split::Rows(_)))));
        assert!(splits.iter().any(|p| matches!(p, Some(Split::Columns(_)))));
        assert!(splits.contains(&None));
    }
}
