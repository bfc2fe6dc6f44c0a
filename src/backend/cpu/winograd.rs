//! Winograd convolution for 3x3, stride-1, pad-1 layers (the bulk of a ResNet's MACs).
//!
//! `F(m x m, 3x3)` computes an `m x m` output tile from an `a x a` input tile (`a = m + 2`) as
//! `Y = A^T [ (G g G^T) .* (B^T d B) ] A` (Lavin & Gray, 2015). Per call:
//!
//! 0. filters transformed into `U[a*a][K][C]`; the input packed channel-blocked,
//!    `[N][C/8][H+2][W+2][8]` with the zero padding built in, so a tile's window is a run of
//!    8-channel vectors;
//!
//! then tiles, numbered `(image, tile row, tile column)`, go in blocks of `block` tiles:
//!
//! 1. input transform of the block into `V[a*a][block][Cp]` (channels contiguous), 8 channels
//!    per SIMD vector, the 1-D transforms written out by hand (AVX2 + FMA chosen at run time);
//! 2. `a*a` GEMMs `M[xi] [K x block] = U[xi] [K x C] * V[xi] [C x block]` through the project's
//!    GEMM wrapper (serial; `M` stored `[a*a][block][Kp]`);
//! 3. output transform of `M`, written straight into the NCHW output.
//!
//! Blocks run in parallel on rayon's pool; when a shape has fewer blocks than threads (batch 1,
//! small maps) each block's three stages also split over tiles and GEMMs. No value is ever
//! reduced across tasks, and the block size depends only on the shape, so every output is
//! computed by the same operations in the same order whatever the thread count: results are
//! bit-reproducible and independent of the number of threads (tests/conv_fast.rs checks 1, 2
//! and 3 threads).
//!
//! # Error
//!
//! The transforms cost accuracy, more for larger tiles (their coefficients grow: F(4x4) uses 4,
//! 5 and 8 in `B^T` and `A^T`, and 1/6, 1/12, 1/24 in `G`). Measured against the f64 direct
//! convolution over ResNet shapes and odd ones (tests/conv_fast.rs), per output element,
//! relative to `sum |x| |w|` over that element's window: F(2x2,3x3) up to 3.6e-7 and F(4x4,3x3)
//! up to 7.6e-6 over the runs made (im2col + GEMM: ~1e-7). The tests assert 2e-6 and 3e-5.

// Index loops over the small fixed-size transform arrays read like the matrix algebra they do.
#![allow(clippy::needless_range_loop)]

use super::gemm::{sgemm_layout, Layout};
use crate::backend::ConvShape;
use rayon::prelude::*;
use std::cell::RefCell;

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

/// The filter transform `G` of one `F(M x M, 3x3)`, `A = M + 2`, `A x 3` (applied in f32).
struct FilterTransform<const A: usize>([[f64; 3]; A]);

const F2_G: FilterTransform<4> = FilterTransform([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]);

const F4_G: FilterTransform<6> = FilterTransform([
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
]);

#[inline(always)]
fn add(a: Lane, b: Lane) -> Lane {
    let mut o = a;
    for l in 0..LANES {
        o[l] = a[l] + b[l];
    }
    o
}
#[inline(always)]
fn sub(a: Lane, b: Lane) -> Lane {
    let mut o = a;
    for l in 0..LANES {
        o[l] = a[l] - b[l];
    }
    o
}
#[inline(always)]
fn mul(c: f32, a: Lane) -> Lane {
    let mut o = a;
    for v in o.iter_mut() {
        *v *= c;
    }
    o
}

/// One Winograd variant: the 1-D input (`B^T`) and output (`A^T`) transforms written out by
/// hand on 8-lane vectors (the 2-D ones apply them to columns, then rows), and `G`.
trait Variant<const M: usize, const A: usize> {
    const G: FilterTransform<A>;
    fn input_1d(d: [Lane; A]) -> [Lane; A];
    fn output_1d(m: [Lane; A]) -> [Lane; M];
}

/// F(2x2,3x3): `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `A^T = [1 1 1 0; 0 1 -1 -1]`.
struct VariantF2;
impl Variant<2, 4> for VariantF2 {
    const G: FilterTransform<4> = F2_G;
    #[inline(always)]
    fn input_1d([d0, d1, d2, d3]: [Lane; 4]) -> [Lane; 4] {
        [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
    }
    #[inline(always)]
    fn output_1d([m0, m1, m2, m3]: [Lane; 4]) -> [Lane; 2] {
        [add(add(m0, m1), m2), sub(sub(m1, m2), m3)]
    }
}

/// F(4x4,3x3) with interpolation points 0, +-1, +-2 (Lavin & Gray):
/// `B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]`,
/// `A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
struct VariantF4;
impl Variant<4, 6> for VariantF4 {
    const G: FilterTransform<6> = F4_G;
    #[inline(always)]
    fn input_1d([d0, d1, d2, d3, d4, d5]: [Lane; 6]) -> [Lane; 6] {
        let (a, b) = (sub(d4, d2), mul(2.0, sub(d3, d1)));
        [
            add(sub(mul(4.0, d0), mul(5.0, d2)), d4),
            sub(add(d3, d4), mul(4.0, add(d1, d2))),
            add(sub(d4, d3), mul(4.0, sub(d1, d2))),
            add(a, b),
            sub(a, b),
            add(sub(mul(4.0, d1), mul(5.0, d3)), d5),
        ]
    }
    #[inline(always)]
    fn output_1d([m0, m1, m2, m3, m4, m5]: [Lane; 6]) -> [Lane; 4] {
        let (p12, d12, p34, d34) = (add(m1, m2), sub(m1, m2), add(m3, m4), sub(m3, m4));
        [add(add(m0, p12), p34), add(d12, mul(2.0, d34)), add(p12, mul(4.0, p34)), add(add(d12, mul(8.0, d34)), m5)]
    }
}

/// `B^T d B` in place: the 1-D transform down every column, then along every row.
#[inline(always)]
fn input_2d<const M: usize, const A: usize, V: Variant<M, A>>(d: &mut [[Lane; A]; A]) {
    for j in 0..A {
        let mut col = [[0.0f32; LANES]; A];
        for r in 0..A {
            col[r] = d[r][j];
        }
        let col = V::input_1d(col);
        for i in 0..A {
            d[i][j] = col[i];
        }
    }
    for row in d.iter_mut() {
        *row = V::input_1d(*row);
    }
}

/// `A^T m A` into `out`.
#[inline(always)]
fn output_2d<const M: usize, const A: usize, V: Variant<M, A>>(m: &[[Lane; A]; A], out: &mut [[Lane; M]; M]) {
    let mut t = [[[0.0f32; LANES]; A]; M];
    for j in 0..A {
        let mut col = [[0.0f32; LANES]; A];
        for r in 0..A {
            col[r] = m[r][j];
        }
        let col = V::output_1d(col);
        for i in 0..M {
            t[i][j] = col[i];
        }
    }
    for i in 0..M {
        out[i] = V::output_1d(t[i]);
    }
}

/// Geometry of the tiling and of the buffers.
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
    /// Input and output channels rounded up to whole lanes.
    cp: usize,
    kp: usize,
    /// Height and width of the packed, zero-bordered input planes (covering every tile).
    hp: usize,
    wp: usize,
}

impl Tiling {
    fn new(s: &ConvShape, m: usize) -> Tiling {
        let (rows, cols) = (s.out_h.div_ceil(m), s.out_w.div_ceil(m));
        let total = s.n * rows * cols;
        let (cp, kp) = (s.c_in.next_multiple_of(LANES), s.c_out.next_multiple_of(LANES));
        let a = m + 2;
        // Cache: V and M of a block (a*a * (Cp + Kp) * block floats) should stay within ~512 KiB.
        let cache_block = (131072 / (a * a * (cp + kp))).clamp(16, 256);
        // Parallelism: up to 4 blocks when that leaves each at least 32 tiles; smaller problems
        // (batch 1 on small maps) run as one block whose stages split over the pool.
        let spread = total.div_ceil(4).max(32);
        let block = cache_block.min(spread).max(1);
        Tiling { m, rows, cols, total, block, cp, kp, hp: rows * m + 2, wp: cols * m + 2 }
    }
    /// `(image, top row, left column)` of tile `p` in the output (= its window's top left in
    /// the packed input, whose border is one pixel).
    fn origin(&self, p: usize) -> (usize, usize, usize) {
        let per_image = self.rows * self.cols;
        let (img, t) = (p / per_image, p % per_image);
        (img, (t / self.cols) * self.m, (t % self.cols) * self.m)
    }
}

/// Raw buffer pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32, usize);
// SAFETY: the tasks sharing one write disjoint elements (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Shared {
        Shared(v.as_mut_ptr(), v.len())
    }
    /// Writes `src` at `at` (a fixed-size copy: plain vector stores, no `memcpy` call).
    ///
    /// # Safety
    /// No other task may read or write `at..at + N` meanwhile.
    #[inline(always)]
    unsafe fn write<const N: usize>(self, at: usize, src: &[f32; N]) {
        assert!(at + N <= self.1, "winograd: write out of bounds");
        (self.0.add(at) as *mut [f32; N]).write_unaligned(*src);
    }
    /// Writes `src[..len]` at `at`, element by element.
    ///
    /// # Safety
    /// As `write`.
    #[inline(always)]
    unsafe fn write_prefix<const N: usize>(self, at: usize, src: &[f32; N], len: usize) {
        assert!(at + len <= self.1 && len <= N, "winograd: write out of bounds");
        for (i, v) in src.iter().enumerate().take(len) {
            *self.0.add(at + i) = *v;
        }
    }
}

/// `U[xi][k][c] = (G g_kc G^T)[xi]`, eight filters at a time.
fn filter_transform<const A: usize>(g: &FilterTransform<A>, w: &[f32], k: usize, c: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { filter_transform_avx2(g, w, k, c) };
    }
    filter_transform_lanes(g, w, k, c)
}

#[target_feature(enable = "avx2,fma")]
#[cfg(target_arch = "x86_64")]
unsafe fn filter_transform_avx2<const A: usize>(g: &FilterTransform<A>, w: &[f32], k: usize, c: usize) -> Vec<f32> {
    filter_transform_lanes(g, w, k, c)
}

#[inline(always)]
fn filter_transform_lanes<const A: usize>(g: &FilterTransform<A>, w: &[f32], k: usize, c: usize) -> Vec<f32> {
    let filters = k * c;
    let mut u = take_scratch(A * A * filters);
    let gm: [[f32; 3]; A] = g.0.map(|row| row.map(|v| v as f32));
    for f0 in (0..filters).step_by(LANES) {
        let lanes = LANES.min(filters - f0);
        // Eight filters, zero-padded past the last one, so every loop below has a fixed length.
        let mut group = [0.0f32; 9 * LANES];
        group[..9 * lanes].copy_from_slice(&w[f0 * 9..(f0 + lanes) * 9]);
        let mut taps = [[0.0f32; LANES]; 9];
        for (l, f) in group.chunks_exact(9).enumerate() {
            for t in 0..9 {
                taps[t][l] = f[t];
            }
        }
        // tmp = G g (A x 3), then U = tmp G^T (A x A).
        let mut tmp = [[[0.0f32; LANES]; 3]; A];
        for i in 0..A {
            for j in 0..3 {
                for r in 0..3 {
                    for l in 0..LANES {
                        tmp[i][j][l] += gm[i][r] * taps[r * 3 + j][l];
                    }
                }
            }
        }
        for i in 0..A {
            for j in 0..A {
                let mut acc = [0.0f32; LANES];
                for r in 0..3 {
                    for l in 0..LANES {
                        acc[l] += tmp[i][r][l] * gm[j][r];
                    }
                }
                let at = (i * A + j) * filters + f0;
                u[at..at + lanes].copy_from_slice(&acc[..lanes]);
            }
        }
    }
    u
}

/// The input in a channel-blocked layout `[N][Cp/8][hp][wp][8]`, with a zero border of one pixel
/// (the padding) and zeros beyond the image up to whole tiles: every tile's window is then a
/// plain, in-bounds read of 8-channel vectors.
fn pack_input(x: &[f32], s: &ConvShape, tiling: &Tiling) -> Vec<f32> {
    let (hp, wp) = (tiling.hp, tiling.wp);
    let groups = tiling.cp / LANES;
    let plane = s.h * s.w;
    let mut xb = take_scratch(s.n * groups * hp * wp * LANES);
    xb.par_chunks_mut(hp * wp * LANES).enumerate().for_each(|(ng, dst)| {
        let (img, g) = (ng / groups, ng % groups);
        let lanes = LANES.min(s.c_in - g * LANES);
        let src = &x[(img * s.c_in + g * LANES) * plane..(img * s.c_in + g * LANES + lanes) * plane];
        for iy in 0..s.h {
            let drow = &mut dst[((iy + 1) * wp + 1) * LANES..((iy + 1) * wp + 1 + s.w) * LANES];
            for (ix, d) in drow.chunks_exact_mut(LANES).enumerate() {
                for (l, v) in d.iter_mut().enumerate().take(lanes) {
                    *v = src[l * plane + iy * s.w + ix];
                }
            }
        }
    });
    xb
}

/// Input transform of block tiles `tiles` (indices inside the block starting at tile `p0`) into
/// `v`, laid out `[a*a][block][Cp]` (channels contiguous: column-major GEMM operands).
#[inline(always)]
fn input_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>>(
    xb: &[f32],
    tiling: &Tiling,
    p0: usize,
    tiles: std::ops::Range<usize>,
    v: Shared,
) {
    let (hp, wp, cp, block) = (tiling.hp, tiling.wp, tiling.cp, tiling.block);
    let groups = cp / LANES;
    for p in tiles {
        let (img, oy, ox) = tiling.origin(p0 + p);
        for g in 0..groups {
            let base = (((img * groups + g) * hp + oy) * wp + ox) * LANES;
            let window = &xb[base..base + ((A - 1) * wp + A) * LANES];
            let mut d = [[[0.0f32; LANES]; A]; A];
            for (r, row) in d.iter_mut().enumerate() {
                for (c, lane) in row.iter_mut().enumerate() {
                    let at = (r * wp + c) * LANES;
                    lane.copy_from_slice(&window[at..at + LANES]);
                }
            }
            input_2d::<M, A, V>(&mut d);
            for i in 0..A {
                for j in 0..A {
                    // SAFETY: tile `p` of this block is transformed by this task only.
                    unsafe { v.write(((i * A + j) * block + p) * cp + g * LANES, &d[i][j]) };
                }
            }
        }
    }
}

/// Output transform of block tiles `tiles` from `mm` (layout `[a*a][block][Kp]`) into the NCHW
/// output.
#[inline(always)]
fn output_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>>(
    mm: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    tiles: std::ops::Range<usize>,
    y: Shared,
) {
    let (kp, block) = (tiling.kp, tiling.block);
    let plane = s.out_h * s.out_w;
    for p in tiles {
        let (img, oy, ox) = tiling.origin(p0 + p);
        let (rows, cols) = (M.min(s.out_h - oy), M.min(s.out_w - ox));
        for g in 0..kp / LANES {
            let mut d = [[[0.0f32; LANES]; A]; A];
            for (i, row) in d.iter_mut().enumerate() {
                for (j, lane) in row.iter_mut().enumerate() {
                    let at = ((i * A + j) * block + p) * kp + g * LANES;
                    lane.copy_from_slice(&mm[at..at + LANES]);
                }
            }
            let mut out = [[[0.0f32; LANES]; M]; M];
            output_2d::<M, A, V>(&d, &mut out);
            for l in 0..LANES.min(s.c_out - g * LANES) {
                let base = (img * s.c_out + g * LANES + l) * plane + oy * s.out_w + ox;
                for (r, orow) in out.iter().enumerate().take(rows) {
                    let mut vals = [0.0f32; M];
                    for (c, v) in vals.iter_mut().enumerate() {
                        *v = orow[c][l];
                    }
                    // SAFETY: the tile's pixels are written by this task only.
                    unsafe {
                        if cols == M {
                            y.write(base + r * s.out_w, &vals)
                        } else {
                            y.write_prefix(base + r * s.out_w, &vals, cols)
                        }
                    };
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
        unsafe fn $avx<const M: usize, const A: usize, V: Variant<M, A>>($($arg: $ty),*) {
            $inner::<M, A, V>($($arg),*)
        }
        fn $name<const M: usize, const A: usize, V: Variant<M, A>>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx::<M, A, V>($($arg),*) };
            }
            $inner::<M, A, V>($($arg),*)
        }
    };
}

multiversion!(
    input_transform,
    input_transform_tiles,
    input_transform_avx2,
    (xb: &[f32], tiling: &Tiling, p0: usize, tiles: std::ops::Range<usize>, v: Shared)
);
multiversion!(
    output_transform,
    output_transform_tiles,
    output_transform_avx2,
    (mm: &[f32], s: &ConvShape, tiling: &Tiling, p0: usize, tiles: std::ops::Range<usize>, y: Shared)
);

thread_local! {
    /// Scratch buffers kept per thread between calls: blocks of hundreds of KiB would otherwise
    /// be fresh `mmap`s, page-faulted in on every call (a third of the time at batch 1).
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` zeros, from this thread's scratch pool when it has one.
fn take_scratch(len: usize) -> Vec<f32> {
    let pooled = SCRATCH.with(|s| {
        let mut pool = s.borrow_mut();
        // The smallest buffer that is large enough (growing one would `realloc`, i.e. copy it).
        let best = (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
        best.map(|i| pool.swap_remove(i))
    });
    let mut v = pooled.unwrap_or_else(|| Vec::with_capacity(len));
    v.clear();
    v.resize(len, 0.0);
    v
}

/// Largest buffer the pool keeps (4 MiB): bounds the memory held per thread between calls; big
/// problems amortise a fresh allocation anyway.
const SCRATCH_KEEP: usize = 1 << 20;

/// Returns a buffer to this thread's pool (the four largest up to `SCRATCH_KEEP` are kept).
fn give_scratch(v: Vec<f32>) {
    if v.capacity() > SCRATCH_KEEP {
        return;
    }
    SCRATCH.with(|s| {
        let mut pool = s.borrow_mut();
        pool.push(v);
        if pool.len() > 4 {
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).unwrap_or(0);
            pool.swap_remove(smallest);
        }
    });
}

/// Tiles per task when one block is split over the pool.
const SPLIT_TILES: usize = 4;

/// One block: transform in, `a*a` GEMMs, transform out. `split` spreads each stage over the
/// pool (for shapes with fewer blocks than threads); it changes no arithmetic.
#[allow(clippy::too_many_arguments)]
fn run_block<const M: usize, const A: usize, V: Variant<M, A>>(
    xb: &[f32],
    u: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    y: Shared,
    split: bool,
) {
    let (c, k, block, cp, kp) = (s.c_in, s.c_out, tiling.block, tiling.cp, tiling.kp);
    let len = block.min(tiling.total - p0);
    let mut v = take_scratch(A * A * block * cp);
    let mut mm = take_scratch(A * A * block * kp);
    let gemm = |xi: usize, mx: &mut [f32], vv: &[f32]| {
        sgemm_layout(
            k,
            len,
            c,
            &u[xi * k * c..(xi + 1) * k * c],
            Layout::row_major(c),
            &vv[xi * block * cp..(xi + 1) * block * cp],
            Layout::col_major(cp),
            mx,
            Layout::col_major(kp),
            false,
            1,
        )
    };
    let vs = Shared::new(&mut v);
    if split {
        (0..len)
            .into_par_iter()
            .step_by(SPLIT_TILES)
            .for_each(|t0| input_transform::<M, A, V>(xb, tiling, p0, t0..(t0 + SPLIT_TILES).min(len), vs));
        let vv: &[f32] = &v;
        mm.par_chunks_mut(block * kp).enumerate().for_each(|(xi, mx)| gemm(xi, mx, vv));
        let mmv: &[f32] = &mm;
        (0..len)
            .into_par_iter()
            .step_by(SPLIT_TILES)
            .for_each(|t0| output_transform::<M, A, V>(mmv, s, tiling, p0, t0..(t0 + SPLIT_TILES).min(len), y));
    } else {
        input_transform::<M, A, V>(xb, tiling, p0, 0..len, vs);
        for (xi, mx) in mm.chunks_mut(block * kp).enumerate() {
            gemm(xi, mx, &v);
        }
        output_transform::<M, A, V>(&mm, s, tiling, p0, 0..len, y);
    }
    give_scratch(v);
    give_scratch(mm);
}

fn forward_with<const M: usize, const A: usize, V: Variant<M, A>>(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let mut y = vec![0.0f32; s.n * s.c_out * s.out_h * s.out_w];
    if y.is_empty() || s.c_in == 0 {
        return y;
    }
    let u = filter_transform(&V::G, w, s.c_out, s.c_in);
    let tiling = Tiling::new(s, M);
    let xb = pack_input(x, s, &tiling);
    let blocks = tiling.total.div_ceil(tiling.block);
    let split = blocks < rayon::current_num_threads();
    let out = Shared::new(&mut y);
    // Each block writes only its own tiles' pixels of `y`.
    (0..blocks).into_par_iter().for_each(|b| run_block::<M, A, V>(&xb, &u, s, &tiling, b * tiling.block, out, split));
    give_scratch(xb);
    give_scratch(u);
    y
}

/// Forward convolution (`supports(s)` must hold).
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "winograd: input size");
    assert_eq!(w.len(), s.c_out * s.c_in * 9, "winograd: weight size");
    match tile {
        WinogradTile::F2 => forward_with::<2, 4, VariantF2>(x, w, s),
        WinogradTile::F4 => forward_with::<4, 6, VariantF4>(x, w, s),
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

/// The kernel the CPU backend uses for this convolution, `None` for im2col + GEMM. From
/// `cargo bench --bench conv` on 2 shared cores (noisy; ResNet-56 shapes): at batch 64 Winograd
/// takes 0.5-0.7x the im2col time, F(4x4) ~10-20% less than F(2x2); at batch 1 F(2x2) is level
/// with im2col on 32x32 and 16x16 maps and slower on 8x8 (the filter transform and per-call
/// setup dominate), and below 8 input channels (the stem) the transforms cost more than the
/// GEMMs save.
pub fn choose(s: &ConvShape) -> Option<WinogradTile> {
    let pixels = s.n * s.out_h * s.out_w;
    if !supports(s) || s.c_in < LANES || pixels < 256 {
        None
    } else if pixels < 4096 {
        Some(WinogradTile::F2)
    } else {
        Some(WinogradTile::F4)
    }
}
