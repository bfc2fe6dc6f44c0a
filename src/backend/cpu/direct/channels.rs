//! The direct kernel for many input channels, on AVX-512: each register holds 16 output
//! channels of one output pixel, so every lane does useful work whatever the map's width (a
//! 7x7 map fills 7 of a pixel vector's 16 lanes), and each input value is broadcast from the
//! prepared planes into `N` registers of weights.
//!
//! The register block is `N = 3` vectors of output channels by `P = 8` pixels of one output row
//! (rows split as evenly as can be: 14 as 7 + 7). Per tap and input channel it loads `N` weight
//! vectors and broadcasts `P` inputs for `N P` fused multiply-adds, which keeps the two FMA ports
//! ahead of the two load ports; the pixel-vector kernel in
//! `mod.rs` broadcasts 16 weights per loaded input vector, as many loads as multiply-adds, which
//! pays only with few input channels (`max_c_in`). ResNet-50's 3x3 layers have 128 to 512.
//!
//! The weights are `mod.rs`'s regrouped layout (`[K / 16][C][kh][kw][16]`), kept by the weight
//! tensor's stamp between calls; the input is its zero-bordered, phase-split planes. The
//! outputs leave by scatter (one vector of 16 channels a pixel, `h w` floats apart), and the
//! eval epilogue is applied on the way, per channel vector.
//!
//! Every output sums its `kh kw C` products in `mod.rs`'s order (channel, row, column), one
//! fused multiply-add at a time from zero, and the epilogue is its operation for operation:
//! the same bits as that kernel, on any thread count.

use super::{check_operands, prepare, regroup, Job, Out, Planes, KB};
use crate::backend::cpu::conv::Epilogue;
use crate::backend::cpu::simd::Reg;
use crate::backend::cpu::team;
use crate::backend::cpu::weight_cache::WeightCache;
use crate::backend::ConvShape;
use crate::tensor::pool;
use std::arch::x86_64::*;

/// Regrouped weights of recent layers, keyed by (stamp, K, C, kernel side).
static WEIGHTS: WeightCache<(u64, usize, usize, usize)> = WeightCache::new(1 << 25, 256);

/// Channel vectors and pixels of the register block: 3 x 8 accumulators beside 3 weight
/// vectors and a broadcast (28 of the 32 registers). A 2 x 14 block (28 accumulators) spilled
/// and ran at half the speed.
const VECTORS: usize = 3;
const PIXELS: usize = 8;

/// One task: every output row of image `img`, channel vectors `v0..v0 + vn` (`vn` at most the
/// block's `N`).
struct Task {
    img: usize,
    v0: usize,
    vn: usize,
}

/// `super::forward` on this kernel (the CPU must have AVX-512F; `super::supports(s)` must
/// hold), the regrouped weights kept by `stamp` when given.
pub fn forward_stamped(x: &[f32], w: &[f32], stamp: Option<u64>, s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    use super::Isa;
    assert!(super::supports(s) && Isa::detected() >= Isa::Avx512, "direct conv (channels): unsupported {s:?}");
    check_operands(x, w, s, epi);
    let (k, pq) = (s.c_out, s.out_h * s.out_w);
    // The scatter's indices (lane * pq) are 32-bit.
    assert!(pq * KB < i32::MAX as usize, "direct conv: map too large for the scatter");
    let mut y = pool::take(s.n * k * pq);
    let pl = Planes::new(s);
    let xp = prepare(x, s, &pl);
    let wr = WEIGHTS.get_or_make(stamp.map(|st| (st, k, s.c_in, s.kh)), || regroup(w, s));
    let tasks = plan(s, k.div_ceil(KB), rayon::current_num_threads());
    let out = Out(y.as_mut_ptr(), y.len());
    let per_image = s.c_in * pl.per_channel();
    let tap_off = pl.tap_offsets();
    team::for_each_on(s.n < team::SHORT_BATCH, tasks.len(), |i| {
        let t = &tasks[i];
        let src = &xp[t.img * per_image..(t.img + 1) * per_image];
        let job = Job { src, wb: &wr[..], s, pl: &pl, img: t.img, out, epi, tap_off };
        // SAFETY: AVX-512F is present (asserted above); the task writes only its own channels of
        // its image (disjoint across tasks); reads are checked in `micro`.
        unsafe { task(&job, t) };
    });
    pool::give(xp);
    y
}

/// The tasks: per image, the channel vectors in groups of at most `VECTORS`, as even as can be
/// and, at batch 1, a multiple of the thread count (two a thread at least); each task runs every
/// row of its group, so that the layer's weights stream from memory once (ResNet-50's layer4
/// holds 9.4 MB a layer: split by rows too, its tasks fetched them once per row group and ran
/// slower than im2col + GEMM).
fn plan(s: &ConvShape, vectors: usize, threads: usize) -> Vec<Task> {
    let mut groups = vectors.div_ceil(VECTORS);
    if s.n < team::SHORT_BATCH {
        groups = groups.next_multiple_of(threads).max(2 * threads).min(vectors);
    }
    let mut tasks = Vec::with_capacity(s.n * groups);
    for img in 0..s.n {
        for g in 0..groups {
            let (v0, v1) = (g * vectors / groups, (g + 1) * vectors / groups);
            tasks.push(Task { img, v0, vn: v1 - v0 });
        }
    }
    tasks
}

/// Splits a row of `out_w` pixels into pieces of at most `most`, as even as can be.
fn pieces(out_w: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = out_w.div_ceil(most);
    (0..count).map(move |i| {
        let (q0, q1) = (i * out_w / count, (i + 1) * out_w / count);
        (q0, q1 - q0)
    })
}

/// Where a micro-kernel call works: output row `p`, columns `q0..q0 + P`, channel vectors from
/// `v0`, input channels `c0..c1`; the partial sums of channels `0..c0` are at `sums` (none when
/// `c0 == 0`), where the call leaves its own unless `c1` is the last channel (then it stores the
/// outputs).
#[derive(Clone, Copy)]
struct At {
    p: usize,
    q0: usize,
    v0: usize,
    c0: usize,
    c1: usize,
    sums: *mut __m512,
}

/// Expands to a `match` on the pixel count calling `micro::<N, P>` for each listed `P`.
macro_rules! by_pixels {
    ($n:literal, $count:expr, $job:expr, $at:expr, [$($p:literal),*]) => {
        match $count {
            $($p => micro::<$n, $p>($job, $at),)*
            other => unreachable!("direct conv: no block of {other} pixels"),
        }
    };
}

/// Input channels per pass over the task's rows: the partial sums leave the registers once per
/// `CHUNK` channels, and a pass's weights (`CHUNK kh kw 16 N` floats, 14 KB for 3x3) stay in L1
/// over the rows, so each weight is fetched from memory once and the fetches spread evenly
/// over the task.
const CHUNK: usize = 8;

/// # Safety
/// The CPU must have AVX-512F; no other task may write this task's outputs.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn task(job: &Job, t: &Task) {
    let s = job.s;
    let row_pieces: Vec<(usize, usize)> = pieces(s.out_w, PIXELS).collect();
    let per_block = VECTORS * PIXELS;
    let blocks = s.out_h * row_pieces.len();
    let mut sums = vec![_mm512_setzero_ps(); if s.c_in > CHUNK { blocks * per_block } else { 0 }];
    for c0 in (0..s.c_in).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(s.c_in);
        for p in 0..s.out_h {
            for (j, &(q0, count)) in row_pieces.iter().enumerate() {
                let block = (p * row_pieces.len() + j) * per_block;
                let at = At { p, q0, v0: t.v0, c0, c1, sums: sums.as_mut_ptr().wrapping_add(block) };
                match t.vn {
                    1 => by_pixels!(1, count, job, at, [1, 2, 3, 4, 5, 6, 7, 8]),
                    2 => by_pixels!(2, count, job, at, [1, 2, 3, 4, 5, 6, 7, 8]),
                    _ => by_pixels!(3, count, job, at, [1, 2, 3, 4, 5, 6, 7, 8]),
                }
            }
        }
    }
}

/// `N` vectors of 16 output channels by `P` pixels of one output row.
// `j` indexes the input and each of the `N` accumulator rows alike.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn micro<const N: usize, const P: usize>(job: &Job, at: At) {
    let (src, wb, s, pl) = (job.src, job.wb, job.s, job.pl);
    let (kh, kw, c_in, stride) = (s.kh, s.kw, s.c_in, pl.stride);
    let per_vector = c_in * kh * kw * KB;
    // The furthest reads: the last weight vector, and the window's last row of the last channel
    // at its furthest tap column.
    let last_read = (0..kw).map(|t| pl.row(c_in - 1, 0, at.p * stride + kh - 1) + job.tap_off[t] + at.q0 + P).max();
    assert!(
        last_read.unwrap_or(0) <= src.len() && (at.v0 + N) * per_vector <= wb.len(),
        "direct conv: read out of bounds"
    );
    let w0 = wb.as_ptr().add(at.v0 * per_vector);
    // Each tap's input offset from its channel's planes (row, then column), in the weights' order.
    let taps = kh * kw;
    let mut offsets = [0usize; super::MAX_KERNEL * super::MAX_KERNEL];
    for r in 0..kh {
        for t in 0..kw {
            offsets[r * kw + t] = pl.row(0, 0, at.p * stride + r) + job.tap_off[t] + at.q0;
        }
    }
    let per_channel = pl.per_channel();
    // The partial sums are `N P` vectors at `at.sums`, channel vector by channel vector.
    let mut acc = [[_mm512_setzero_ps(); P]; N];
    if at.c0 > 0 {
        for (v, row) in acc.iter_mut().enumerate() {
            for (j, a) in row.iter_mut().enumerate() {
                *a = *at.sums.add(v * P + j);
            }
        }
    }
    for c in at.c0..at.c1 {
        let xc = src.as_ptr().add(c * per_channel);
        let wc = w0.add(c * taps * KB);
        for (tap, &offset) in offsets[..taps].iter().enumerate() {
            let xt = xc.add(offset);
            let wt = wc.add(tap * KB);
            let wv: [__m512; N] = std::array::from_fn(|v| _mm512_loadu_ps(wt.add(v * per_vector)));
            for j in 0..P {
                let xj = _mm512_set1_ps(*xt.add(j));
                for v in 0..N {
                    acc[v][j] = _mm512_fmadd_ps(wv[v], xj, acc[v][j]);
                }
            }
        }
    }
    if at.c1 == c_in {
        store::<N, P>(job, at, &acc);
    } else {
        for (v, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                *at.sums.add(v * P + j) = a;
            }
        }
    }
}

/// The epilogue and the scatter of one block's outputs.
#[inline(always)]
unsafe fn store<const N: usize, const P: usize>(job: &Job, at: At, acc: &[[__m512; P]; N]) {
    let (s, out, epi) = (job.s, job.out, job.epi);
    let (k, pq) = (s.c_out, s.out_h * s.out_w);
    let index = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(pq as i32),
    );
    for (v, row) in acc.iter().enumerate() {
        let k0 = (at.v0 + v) * KB;
        let lanes = KB.min(k - k0);
        let mask: __mmask16 = if lanes == KB { !0 } else { (1u16 << lanes) - 1 };
        // Output (channel k0 + lane, row p, column q0 + j) of this image.
        let first = (job.img * k + k0) * pq + at.p * s.out_w + at.q0;
        assert!(first + (lanes - 1) * pq + P <= out.1, "direct conv: write out of bounds");
        let (scale, shift) = match epi {
            Some(e) => (
                _mm512_maskz_loadu_ps(mask, e.scale.as_ptr().add(k0)),
                _mm512_maskz_loadu_ps(mask, e.shift.as_ptr().add(k0)),
            ),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for (j, &a) in row.iter().enumerate() {
            let mut x = a;
            if let Some(e) = epi {
                // `super::micro`'s epilogue, operation for operation.
                x = _mm512_add_ps(_mm512_mul_ps(x, scale), shift);
                if let Some(res) = e.residual {
                    let r =
                        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, res.as_ptr().add(first + j));
                    x = _mm512_add_ps(x, r);
                }
                if e.relu {
                    x = _mm512_max_ps(x, _mm512_setzero_ps());
                } else if e.relu6 {
                    x = x.relu6();
                }
            }
            _mm512_mask_i32scatter_ps::<4>(out.0.add(first + j), mask, index, x);
        }
    }
}
