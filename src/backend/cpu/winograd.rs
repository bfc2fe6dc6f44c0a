//! Winograd convolution for 3x3, stride-1, pad-1 layers (the bulk of a ResNet's MACs).
//!
//! `F(m x m, 3x3)` computes an `m x m` output tile from an `a x a` input tile (`a = m + 2`) as
//! `Y = A^T [ (G g G^T) .* (B^T d B) ] A` (Lavin & Gray, 2015). Tiles of every image are numbered
//! `(image, tile row, tile column)` and processed in blocks of `block` tiles:
//!
//! 1. input transform of the block into `V[a*a][C][block]`, eight tiles at a time (SIMD lanes);
//! 2. `a*a` GEMMs `M[xi] [K x block] = U[xi] [K x C] * V[xi] [C x block]` through the project's
//!    GEMM wrapper, with the filters transformed once per call into `U[a*a][K][C]`;
//! 3. output transform of `M`, written straight into the NCHW output.
//!
//! Blocks run in parallel on rayon's pool; when a shape has fewer blocks than threads (batch 1,
//! small maps) each block's three stages also split over channels and tile positions. No value
//! is ever reduced across tasks, and the block size depends only on the shape, so every output
//! is computed by the same operations in the same order whatever the thread count: results are
//! bit-reproducible and independent of the number of threads.
//!
//! # Error
//!
//! The transforms cost accuracy, more for larger tiles (their coefficients grow). Measured
//! against the f64 direct convolution over ResNet shapes and random inputs (tests/conv_fast.rs),
//! per output element, relative to `sum |x| |w|` over that element's window:
//! F(2x2,3x3) stays below ~1e-6 and F(4x4,3x3) below ~4e-6 (im2col + GEMM: ~3e-7). The tests
//! assert 1e-5 and 3e-5 respectively.

use super::gemm::{sgemm_layout, Layout};
use crate::backend::ConvShape;
use rayon::prelude::*;

/// Tiles transformed together (one SIMD vector of 8 f32 on AVX2).
const LANES: usize = 8;
type Lane = [f32; LANES];

/// Output tile size of the Winograd algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinogradTile {
    /// F(2x2,3x3): 4x4 input tiles, 16 GEMMs, 2.25x fewer multiplications than direct.
    F2,
    /// F(4x4,3x3): 6x6 input tiles, 36 GEMMs, 4x fewer multiplications, larger rounding error.
    F4,
}

/// True when the Winograd kernels compute this convolution: 3x3, stride 1, pad 1 (the output
/// has the input's size), non-empty.
pub fn supports(s: &ConvShape) -> bool {
    s.kh == 3 && s.kw == 3 && s.stride == 1 && s.pad == 1 && s.n * s.c_in * s.c_out * s.h * s.w > 0
}

/// The transform matrices of one `F(M x M, 3x3)`, `A = M + 2`.
struct Transforms<const M: usize, const A: usize> {
    /// `B^T`, `A x A`.
    bt: [[f32; A]; A],
    /// `G`, `A x 3` (kept in f64: filters are transformed once per call, in f64, then rounded).
    g: [[f64; 3]; A],
    /// `A^T`, `M x A`.
    at: [[f32; A]; M],
}

const F2: Transforms<2, 4> = Transforms {
    bt: [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]],
    g: [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
    at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
};

const F4: Transforms<4, 6> = Transforms {
    bt: [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

/// `acc += coef * v`, lane-wise. The coefficients are compile-time constants after inlining, so
/// the zero and unit cases fold away and the rest vectorises.
#[inline(always)]
fn axpy(acc: &mut Lane, coef: f32, v: &Lane) {
    if coef == 0.0 {
    } else if coef == 1.0 {
        for l in 0..LANES {
            acc[l] += v[l];
        }
    } else if coef == -1.0 {
        for l in 0..LANES {
            acc[l] -= v[l];
        }
    } else {
        for l in 0..LANES {
            acc[l] += coef * v[l];
        }
    }
}

/// `out = L * d * L^T` on lanes, `L` an `R x A` constant matrix.
#[inline(always)]
fn sandwich<const R: usize, const A: usize>(l: &[[f32; A]; R], d: &[[Lane; A]; A]) -> [[Lane; R]; R] {
    let mut t = [[[0.0f32; LANES]; A]; R];
    for i in 0..R {
        for j in 0..A {
            for r in 0..A {
                axpy(&mut t[i][j], l[i][r], &d[r][j]);
            }
        }
    }
    let mut out = [[[0.0f32; LANES]; R]; R];
    for i in 0..R {
        for j in 0..R {
            for c in 0..A {
                axpy(&mut out[i][j], l[j][c], &t[i][c]);
            }
        }
    }
    out
}

/// Geometry of the tiling.
#[derive(Clone, Copy)]
struct Tiling {
    m: usize,
    /// Tile rows and columns per image.
    rows: usize,
    cols: usize,
    /// Tiles in all (all images).
    total: usize,
    /// Tiles per block.
    block: usize,
}

impl Tiling {
    fn new(s: &ConvShape, m: usize) -> Tiling {
        let (rows, cols) = (s.out_h.div_ceil(m), s.out_w.div_ceil(m));
        let total = s.n * rows * cols;
        let widest = s.c_in.max(s.c_out).max(1);
        // Cache: V and M of a block (a*a * (C + K) * block floats) should stay around L2 size.
        let cache_block = (16384 / widest).clamp(LANES, 512) / LANES * LANES;
        // Parallelism: at least 4 blocks when the tile count allows (both cores busy at batch 1).
        let spread = total.div_ceil(4).div_ceil(LANES) * LANES;
        Tiling { m, rows, cols, total, block: cache_block.min(spread).max(LANES) }
    }
    /// `(image, top row, left column)` of tile `p` in the output.
    fn origin(&self, p: usize) -> (usize, usize, usize) {
        let per_image = self.rows * self.cols;
        let (img, t) = (p / per_image, p % per_image);
        (img, (t / self.cols) * self.m, (t % self.cols) * self.m)
    }
}

/// Raw output pointer shared by the blocks: each writes only its own tiles.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: blocks write disjoint tiles of the output (see `output_transform`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `U[xi][k][c] = (G g_kc G^T)[xi]`, in f64 then rounded.
fn filter_transform<const M: usize, const A: usize>(t: &Transforms<M, A>, w: &[f32], k: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; A * A * k * c];
    for (kc, g) in w.chunks_exact(9).enumerate() {
        let mut tmp = [[0.0f64; 3]; A];
        for i in 0..A {
            for j in 0..3 {
                tmp[i][j] = (0..3).map(|r| t.g[i][r] * g[r * 3 + j] as f64).sum();
            }
        }
        for i in 0..A {
            for j in 0..A {
                let v: f64 = (0..3).map(|r| tmp[i][r] * t.g[j][r]).sum();
                u[(i * A + j) * k * c + kc] = v as f32;
            }
        }
    }
    u
}

/// Input transform of channel `ch` for tiles `p0..p0+len` into `v` (layout `[a*a][C][block]`).
#[inline(always)]
fn input_transform_channel<const M: usize, const A: usize>(
    t: &Transforms<M, A>,
    x: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    len: usize,
    ch: usize,
    v: &mut [f32],
) {
    let (h, w) = (s.h as isize, s.w as isize);
    let plane = s.h * s.w;
    let cstride = tiling.block;
    let xi_stride = s.c_in * tiling.block;
    for g0 in (0..len).step_by(LANES) {
        let mut d = [[[0.0f32; LANES]; A]; A];
        for l in 0..LANES.min(len - g0) {
            let (img, oy, ox) = tiling.origin(p0 + g0 + l);
            let src = &x[(img * s.c_in + ch) * plane..(img * s.c_in + ch + 1) * plane];
            let (y0, x0) = (oy as isize - 1, ox as isize - 1);
            if y0 >= 0 && x0 >= 0 && y0 + A as isize <= h && x0 + A as isize <= w {
                for (r, row) in d.iter_mut().enumerate() {
                    let base = (y0 as usize + r) * s.w + x0 as usize;
                    for (c, lane) in row.iter_mut().enumerate() {
                        lane[l] = src[base + c];
                    }
                }
            } else {
                for (r, row) in d.iter_mut().enumerate() {
                    let iy = y0 + r as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    for (c, lane) in row.iter_mut().enumerate() {
                        let ix = x0 + c as isize;
                        if ix >= 0 && ix < w {
                            lane[l] = src[iy as usize * s.w + ix as usize];
                        }
                    }
                }
            }
        }
        let out = sandwich(&t.bt, &d);
        let n = LANES.min(len - g0);
        for i in 0..A {
            for j in 0..A {
                let at = (i * A + j) * xi_stride + ch * cstride + g0;
                v[at..at + n].copy_from_slice(&out[i][j][..n]);
            }
        }
    }
}

/// Output transform of channel `k` for tiles `p0..p0+len` from `mm` (layout `[a*a][K][block]`).
#[inline(always)]
fn output_transform_channel<const M: usize, const A: usize>(
    t: &Transforms<M, A>,
    mm: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    len: usize,
    k: usize,
    y: SharedOut,
) {
    let plane = s.out_h * s.out_w;
    let kstride = tiling.block;
    let xi_stride = s.c_out * tiling.block;
    for g0 in (0..len).step_by(LANES) {
        let n = LANES.min(len - g0);
        let mut d = [[[0.0f32; LANES]; A]; A];
        for i in 0..A {
            for j in 0..A {
                let at = (i * A + j) * xi_stride + k * kstride + g0;
                d[i][j][..n].copy_from_slice(&mm[at..at + n]);
            }
        }
        let out = sandwich(&t.at, &d);
        for l in 0..n {
            let (img, oy, ox) = tiling.origin(p0 + g0 + l);
            let base = (img * s.c_out + k) * plane;
            for (r, row) in out.iter().enumerate() {
                let py = oy + r;
                if py >= s.out_h {
                    break;
                }
                for (c, lane) in row.iter().enumerate() {
                    let px = ox + c;
                    if px >= s.out_w {
                        break;
                    }
                    // SAFETY: in bounds (py < out_h, px < out_w, img < n, k < c_out), and tile
                    // `p0 + g0 + l` belongs to this block only, so no other task writes here.
                    unsafe { *y.0.add(base + py * s.out_w + px) = lane[l] };
                }
            }
        }
    }
}

// The transforms are compiled twice: for the baseline target and with AVX2 + FMA enabled (8-wide
// lanes in one register), picked at run time. Rust never contracts `a * b + c` into an FMA, so
// both versions round identically.
macro_rules! multiversion {
    ($name:ident, $inner:ident, $avx:ident, ($($arg:ident : $ty:ty),*)) => {
        #[target_feature(enable = "avx2,fma")]
        #[cfg(target_arch = "x86_64")]
        unsafe fn $avx<const M: usize, const A: usize>($($arg: $ty),*) {
            $inner($($arg),*)
        }
        #[allow(clippy::too_many_arguments)]
        fn $name<const M: usize, const A: usize>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $inner($($arg),*)
        }
    };
}

multiversion!(
    input_transform,
    input_transform_channel,
    input_transform_avx2,
    (t: &Transforms<M, A>, x: &[f32], s: &ConvShape, tiling: &Tiling, p0: usize, len: usize, ch: usize, v: &mut [f32])
);
multiversion!(
    output_transform,
    output_transform_channel,
    output_transform_avx2,
    (t: &Transforms<M, A>, mm: &[f32], s: &ConvShape, tiling: &Tiling, p0: usize, len: usize, k: usize, y: SharedOut)
);

/// One block: transform in, `a*a` GEMMs, transform out. `split` spreads each stage over the
/// pool (for shapes with fewer blocks than threads); it changes no arithmetic.
#[allow(clippy::too_many_arguments)]
fn run_block<const M: usize, const A: usize>(
    t: &Transforms<M, A>,
    x: &[f32],
    u: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    y: SharedOut,
    split: bool,
    (v, mm): &mut (Vec<f32>, Vec<f32>),
) {
    let (c, k, block) = (s.c_in, s.c_out, tiling.block);
    let len = block.min(tiling.total - p0);
    v.resize(A * A * c * block, 0.0);
    mm.resize(A * A * k * block, 0.0);
    let gemm = |xi: usize, mx: &mut [f32], vv: &[f32]| {
        sgemm_layout(
            k,
            len,
            c,
            &u[xi * k * c..(xi + 1) * k * c],
            Layout::row_major(c),
            &vv[xi * c * block..(xi + 1) * c * block],
            Layout::row_major(block),
            mx,
            Layout::row_major(block),
            false,
            1,
        )
    };
    if split {
        // Channels write disjoint rows of every xi slab of V: split by raw pointer.
        let vp = SharedOut(v.as_mut_ptr());
        let vlen = v.len();
        (0..c).into_par_iter().for_each(|ch| {
            // SAFETY: channel `ch` writes only `v[(xi*C + ch)*block ..][..block]`, disjoint
            // across channels; the slice covers the whole buffer, which outlives the loop.
            let vs = unsafe { std::slice::from_raw_parts_mut({ vp }.0, vlen) };
            input_transform(t, x, s, tiling, p0, len, ch, vs);
        });
        let vv: &[f32] = v;
        mm.par_chunks_mut(k * block).enumerate().for_each(|(xi, mx)| gemm(xi, mx, vv));
        let mmv: &[f32] = mm;
        (0..k).into_par_iter().for_each(|kk| output_transform(t, mmv, s, tiling, p0, len, kk, y));
    } else {
        for ch in 0..c {
            input_transform(t, x, s, tiling, p0, len, ch, v);
        }
        for (xi, mx) in mm.chunks_mut(k * block).enumerate() {
            gemm(xi, mx, v);
        }
        for kk in 0..k {
            output_transform(t, mm, s, tiling, p0, len, kk, y);
        }
    }
}

fn forward_with<const M: usize, const A: usize>(t: &Transforms<M, A>, x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let mut y = vec![0.0f32; s.n * s.c_out * s.out_h * s.out_w];
    if y.is_empty() || s.c_in == 0 {
        return y;
    }
    let u = filter_transform(t, w, s.c_out, s.c_in);
    let tiling = Tiling::new(s, M);
    let blocks = tiling.total.div_ceil(tiling.block);
    let split = blocks < rayon::current_num_threads();
    let out = SharedOut(y.as_mut_ptr());
    (0..blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |bufs, b| run_block(t, x, &u, s, &tiling, b * tiling.block, out, split, bufs),
    );
    y
}

/// Forward convolution (`supports(s)` must hold).
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "winograd: input size");
    assert_eq!(w.len(), s.c_out * s.c_in * 9, "winograd: weight size");
    match tile {
        WinogradTile::F2 => forward_with(&F2, x, w, s),
        WinogradTile::F4 => forward_with(&F4, x, w, s),
    }
}

/// Backward-data: the gradient of a 3x3 s1 p1 convolution is the 3x3 s1 p1 convolution of the
/// output gradient with the filters flipped and their in/out channels swapped.
pub fn backward_data(dy: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    let (k, c) = (s.c_out, s.c_in);
    let mut wt = vec![0.0f32; w.len()];
    for kk in 0..k {
        for cc in 0..c {
            for r in 0..9 {
                wt[(cc * k + kk) * 9 + 8 - r] = w[(kk * c + cc) * 9 + r];
            }
        }
    }
    let swapped = ConvShape { c_in: k, c_out: c, h: s.out_h, w: s.out_w, out_h: s.h, out_w: s.w, ..*s };
    forward(dy, &wt, &swapped, tile)
}

/// The kernel the CPU backend uses for this convolution, `None` for im2col + GEMM.
pub fn choose(s: &ConvShape) -> Option<WinogradTile> {
    supports(s).then_some(WinogradTile::F4)
}
