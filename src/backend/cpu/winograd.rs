//! Winograd convolution for 3x3, stride-1, pad-1 layers (the bulk of a ResNet's MACs).
//!
//! `F(m x m, 3x3)` computes an `m x m` output tile from an `a x a` input tile (`a = m + 2`) as
//! `Y = A^T [ (G g G^T) .* (B^T d B) ] A` (Lavin & Gray, 2015). Per call:
//!
//! 0. filters transformed into `U[a*a][C][Kp]` (cached by the weight tensor's content stamp, so
//!    inference and scoring transform each weight once); the input packed channel-blocked,
//!    `[N][C/8][H+2][W+2][8]` with the zero padding built in (8x8 register transposes), so a
//!    tile's window is a run of 8-channel vectors;
//!
//! then tiles, numbered `(image, tile row, tile column)`, go in blocks of `block` tiles:
//!
//! 1. input transform of the block into `V[block][a*a][Cp]` (one contiguous run per tile),
//!    8 channels per SIMD vector, the 1-D transforms written out by hand (AVX2 + FMA chosen at
//!    run time);
//! 2. the element-wise stage, `M[p][xi][..K] = sum_c U[xi][c][..K] * V[p][xi][c]`, by a
//!    register-blocked kernel (6 tiles x 16 output channels of accumulators, AVX-512 or AVX2
//!    chosen at run time): these products are small (K, C of 16 to 64), and a general GEMM's
//!    packing and dispatch cost more than the arithmetic;
//! 3. output transform of `M`, with the fused eval epilogue (batch norm, residual add, ReLU)
//!    applied on the way and 8-channel vectors transposed into output rows in registers,
//!    written straight into the NCHW output.
//!
//! Backward-data is the same forward on the output gradient with the filters flipped.
//! Backward-weight is the adjoint: `dW_kc = G^T [sum over tiles (A dy_k A^T) .* (B^T x_c B)] G`,
//! the output gradient transformed tile by tile into `D[block][a*a][Kp]` next to the input's
//! `V`, then `dU[xi] += V[xi]^T D[xi]` per block by a register-blocked kernel (8 input by 32
//! output channels on AVX-512), summed over chunks of consecutive blocks: each chunk in order,
//! then the chunks in order, so the result depends on the shape alone. On a ResNet-20 training
//! step it replaced im2col + GEMM, then the largest cost (2.25x to 4x fewer multiplications).
//!
//! Scratch (packed inputs, `V`, `M`, `D`, filter transforms, partial sums) comes from the CPU
//! backend's buffer pool with stale contents: every element read is written first.
//!
//! Blocks run in parallel on rayon's pool; when a shape has fewer blocks than threads (batch 1,
//! small maps) each block's three stages also split over tiles and `xi`. No value is ever
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
//! relative to `sum |x| |w|` over that element's window: F(2x2,3x3) up to 2.5e-7 and F(4x4,3x3)
//! up to 3.0e-6 over the runs made (im2col + GEMM: ~1e-7). Backward-weight, relative to the
//! largest `sum |dy| |x|` among the filter's nine taps (the transforms mix them): F(2x2) up to
//! 1.9e-7, F(4x4) up to 1.1e-6. The tests assert 2e-6 and 3e-5.

// Index loops over the small fixed-size transform arrays read like the matrix algebra they do.
#![allow(clippy::needless_range_loop)]

use super::conv::Epilogue;
use super::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use super::lanes::Wide;
use super::team;
use super::{has_avx2, has_avx512};
use crate::backend::ConvShape;
use crate::tensor::pool;
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

/// One Winograd variant: the 1-D input (`B^T`) and output (`A^T`) transforms written out by
/// hand on lane vectors (the 2-D ones apply them to columns, then rows), and `G`.
trait Variant<const M: usize, const A: usize> {
    const G: FilterTransform<A>;
    fn input_1d<L: Lanes>(d: [L; A]) -> [L; A];
    fn output_1d<L: Lanes>(m: [L; A]) -> [L; M];
    /// The adjoint of `output_1d` (`A` applied to `M` values), for the output gradient in
    /// backward-weight.
    fn grad_1d<L: Lanes>(y: [L; M]) -> [L; A];
}

/// F(2x2,3x3): `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `A^T = [1 1 1 0; 0 1 -1 -1]`.
struct VariantF2;
impl Variant<2, 4> for VariantF2 {
    const G: FilterTransform<4> = F2_G;
    #[inline(always)]
    fn input_1d<L: Lanes>([d0, d1, d2, d3]: [L; 4]) -> [L; 4] {
        [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)]
    }
    #[inline(always)]
    fn output_1d<L: Lanes>([m0, m1, m2, m3]: [L; 4]) -> [L; 2] {
        [m0.add(m1).add(m2), m1.sub(m2).sub(m3)]
    }
    #[inline(always)]
    fn grad_1d<L: Lanes>([y0, y1]: [L; 2]) -> [L; 4] {
        [y0, y0.add(y1), y0.sub(y1), y1.zero().sub(y1)]
    }
}

/// F(4x4,3x3) with interpolation points 0, +-1, +-2 (Lavin & Gray):
/// `B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]`,
/// `A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
struct VariantF4;
impl Variant<4, 6> for VariantF4 {
    const G: FilterTransform<6> = F4_G;
    #[inline(always)]
    fn input_1d<L: Lanes>([d0, d1, d2, d3, d4, d5]: [L; 6]) -> [L; 6] {
        let (a, b) = (d4.sub(d2), d3.sub(d1).scale(2.0));
        [
            d0.scale(4.0).sub(d2.scale(5.0)).add(d4),
            d3.add(d4).sub(d1.add(d2).scale(4.0)),
            d4.sub(d3).add(d1.sub(d2).scale(4.0)),
            a.add(b),
            a.sub(b),
            d1.scale(4.0).sub(d3.scale(5.0)).add(d5),
        ]
    }
    #[inline(always)]
    fn output_1d<L: Lanes>([m0, m1, m2, m3, m4, m5]: [L; 6]) -> [L; 4] {
        let (p12, d12, p34, d34) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
        [m0.add(p12).add(p34), d12.add(d34.scale(2.0)), p12.add(p34.scale(4.0)), d12.add(d34.scale(8.0)).add(m5)]
    }
    #[inline(always)]
    fn grad_1d<L: Lanes>([y0, y1, y2, y3]: [L; 4]) -> [L; 6] {
        // Column i of A^T: (1, 0, 0, 0), (1, 1, 1, 1), (1, -1, 1, -1), (1, 2, 4, 8), (1, -2, 4, -8),
        // (0, 0, 0, 1).
        let (e, o) = (y0.add(y2), y1.add(y3));
        let (e4, o2) = (y0.add(y2.scale(4.0)), y1.scale(2.0).add(y3.scale(8.0)));
        [y0, e.add(o), e.sub(o), e4.add(o2), e4.sub(o2), y3]
    }
}

/// `B^T d B` in place: the 1-D transform down every column, then along every row.
#[inline(always)]
fn input_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(d: &mut [[L; A]; A]) {
    for j in 0..A {
        let mut col = [d[0][j]; A];
        for r in 1..A {
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

/// `A^T m A`.
#[inline(always)]
fn output_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(m: &[[L; A]; A]) -> [[L; M]; M] {
    let mut t = [[m[0][0]; A]; M];
    for j in 0..A {
        let mut col = [m[0][j]; A];
        for r in 1..A {
            col[r] = m[r][j];
        }
        let col = V::output_1d(col);
        for i in 0..M {
            t[i][j] = col[i];
        }
    }
    let mut out = [[m[0][0]; M]; M];
    for i in 0..M {
        out[i] = V::output_1d(t[i]);
    }
    out
}

/// `A dy A^T` (the gradient of `M` from the gradient of an output tile).
#[inline(always)]
fn grad_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(dy: &[[L; M]; M]) -> [[L; A]; A] {
    let mut t = [[dy[0][0]; M]; A];
    for j in 0..M {
        let mut col = [dy[0][j]; M];
        for r in 1..M {
            col[r] = dy[r][j];
        }
        let col = V::grad_1d(col);
        for i in 0..A {
            t[i][j] = col[i];
        }
    }
    let mut out = [[dy[0][0]; A]; A];
    for i in 0..A {
        out[i] = V::grad_1d(t[i]);
    }
    out
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
    /// Height and width of the packed, zero-bordered input planes (covering every tile, or
    /// rows `row0..row0 + hp` of them in a block's own packing at batch 1).
    hp: usize,
    wp: usize,
    row0: usize,
    /// Channels per block of the packed input (and per vector of its transform): 16 where
    /// AVX-512 is present and `cp` allows, else 8.
    width: usize,
}

impl Tiling {
    fn new(s: &ConvShape, m: usize) -> Tiling {
        let (rows, cols) = (s.out_h.div_ceil(m), s.out_w.div_ceil(m));
        let total = s.n * rows * cols;
        let (cp, kp) = (s.c_in.next_multiple_of(LANES), s.c_out.next_multiple_of(LANES));
        let a = m + 2;
        // Cache: V and M of a block (a*a * (Cp + Kp) * block floats) should stay within ~512 KiB.
        let cache_block = (65536 / (a * a * (cp + kp))).clamp(16, 256);
        // Parallelism: up to 4 blocks when that leaves each at least 32 tiles; smaller problems
        // (batch 1 on small maps) run as one block whose stages split over the pool.
        let spread = total.div_ceil(4).max(8);
        // Whole register blocks of the multiply stage where the problem allows.
        let block = cache_block.min(spread).max(1);
        let block = if block >= 4 * TP { block / (TP * TP_WIDE / 2) * (TP * TP_WIDE / 2) } else { block };
        let (hp, wp) = (rows * m + 2, cols * m + 2);
        Tiling { m, rows, cols, total, block, cp, kp, hp, wp, row0: 0, width: lane_width(cp) }
    }
    /// The same tiles over `cp` packed channels (the output gradient's, in backward-weight).
    fn with_channels(&self, cp: usize) -> Tiling {
        Tiling { cp, width: lane_width(cp), ..*self }
    }
    /// Offset in a packed buffer (`[N][groups][hp][wp][width]`, rows from `row0`) of padded row
    /// `row`, column `col` of channel group `g` of image `img`.
    fn packed_at(&self, img: usize, g: usize, groups: usize, row: usize, col: usize) -> usize {
        (((img * groups + g) * self.hp + row - self.row0) * self.wp + col) * self.width
    }
    /// `(image, top row, left column)` of tile `p` in the output (= its window's top left in
    /// the packed input, whose border is one pixel).
    fn origin(&self, p: usize) -> (usize, usize, usize) {
        let per_image = self.rows * self.cols;
        let (img, t) = (p / per_image, p % per_image);
        (img, (t / self.cols) * self.m, (t % self.cols) * self.m)
    }
}

/// Which transform builds may run (a test hook: all of them give the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformLanes {
    /// The widest the CPU has (the default).
    Auto,
    /// At most AVX2's 8 lanes.
    Avx2,
    /// Plain `[f32; 8]` arrays, as on a CPU without AVX2.
    Portable,
}

static TRANSFORM_LANES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Limits the transform builds used from now on, process-wide (for tests comparing them).
#[doc(hidden)]
pub fn set_transform_lanes(t: TransformLanes) {
    TRANSFORM_LANES.store(t as u8, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn transform_lanes() -> TransformLanes {
    match TRANSFORM_LANES.load(std::sync::atomic::Ordering::Relaxed) {
        1 => TransformLanes::Avx2,
        2 => TransformLanes::Portable,
        _ => TransformLanes::Auto,
    }
}

/// The vector width the transforms of `channels` channels (a multiple of 8) run at: AVX-512's
/// 16 lanes where the CPU has them and the channels fill them, else 8.
fn lane_width(channels: usize) -> usize {
    if has_avx512() && channels.is_multiple_of(16) && transform_lanes() == TransformLanes::Auto {
        16
    } else {
        LANES
    }
}

/// Raw buffer pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32, usize);
// SAFETY: the tasks sharing one write disjoint elements (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Read-only counterpart of `Shared`.
#[derive(Clone, Copy)]
struct SharedConst(*const f32);
// SAFETY: only read while no task writes the buffer.
unsafe impl Send for SharedConst {}
unsafe impl Sync for SharedConst {}

impl Shared {
    fn new(v: &mut [f32]) -> Shared {
        Shared(v.as_mut_ptr(), v.len())
    }
    /// The `len` floats at `at`, to write.
    ///
    /// # Safety
    /// No other task may read or write them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'a>(self, at: usize, len: usize) -> &'a mut [f32] {
        assert!(at + len <= self.1, "winograd: slice out of bounds");
        std::slice::from_raw_parts_mut(self.0.add(at), len)
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

/// `U[xi][c][k] = (G g_kc G^T)[xi]`, eight filters at a time.
fn filter_transform<const A: usize>(g: &FilterTransform<A>, w: &[f32], k: usize, c: usize, kp: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { filter_transform_avx2(g, w, k, c, kp) };
    }
    filter_transform_lanes(g, w, k, c, kp)
}

#[target_feature(enable = "avx2,fma")]
#[cfg(target_arch = "x86_64")]
unsafe fn filter_transform_avx2<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
) -> Vec<f32> {
    filter_transform_lanes(g, w, k, c, kp)
}

/// `U[xi][c][k]` (output channels contiguous, zero up to `kp`): the layout the multiply stage
/// streams through, one column of output channels per input channel.
#[inline(always)]
fn filter_transform_lanes<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
) -> Vec<f32> {
    let mut u = pool::take(A * A * c * kp);
    let gm: [[f32; 3]; A] = g.0.map(|row| row.map(|v| v as f32));
    // Lanes are eight output channels of one input channel: each result is one contiguous run
    // of `U[xi][c][..]`, zeros past the last channel included.
    for cc in 0..c {
        for k0 in (0..kp).step_by(LANES) {
            let mut taps = [[0.0f32; LANES]; 9];
            for l in 0..LANES.min(k.saturating_sub(k0)) {
                let f = &w[((k0 + l) * c + cc) * 9..((k0 + l) * c + cc + 1) * 9];
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
                    let at = ((i * A + j) * c + cc) * kp + k0;
                    u[at..at + LANES].copy_from_slice(&acc);
                }
            }
        }
    }
    u
}

/// Filter transforms of recent weights, keyed by the weight tensor's content stamp: inference
/// and candidate scoring run the same weights again and again, and at batch 1 transforming them
/// costs as much as a tenth of the forward pass. A stamp changes whenever the tensor may have
/// been written, so an entry can never be stale.
mod filter_cache {
    use std::sync::{Arc, Mutex};

    /// `(weight stamp, tile size a, K, C, Kp)`.
    pub type Key = (u64, usize, usize, usize, usize);

    /// Floats held at most (32 MiB), and entries.
    const MAX_FLOATS: usize = 1 << 23;
    const MAX_ENTRIES: usize = 256;

    static CACHE: Mutex<Vec<(Key, Arc<Vec<f32>>)>> = Mutex::new(Vec::new());

    pub fn get(key: &Key) -> Option<Arc<Vec<f32>>> {
        let mut cache = CACHE.lock().ok()?;
        let at = cache.iter().position(|(k, _)| k == key)?;
        // Most recently used last.
        let entry = cache.remove(at);
        let u = entry.1.clone();
        cache.push(entry);
        Some(u)
    }

    pub fn put(key: Key, u: Arc<Vec<f32>>) {
        if u.len() > MAX_FLOATS {
            return;
        }
        let Ok(mut cache) = CACHE.lock() else { return };
        cache.retain(|(k, _)| *k != key);
        cache.push((key, u));
        let mut held: usize = cache.iter().map(|(_, u)| u.len()).sum();
        while held > MAX_FLOATS || cache.len() > MAX_ENTRIES {
            held -= cache.remove(0).1.len();
        }
    }
}

/// `U` for these weights: from the cache when `stamp` (the weight tensor's content stamp) has
/// been transformed before, else computed (and cached when a stamp is given).
fn transformed_filters<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
    stamp: Option<u64>,
) -> std::sync::Arc<Vec<f32>> {
    let key = stamp.map(|st| (st, A, k, c, kp));
    if let Some(u) = key.as_ref().and_then(filter_cache::get) {
        return u;
    }
    let u = std::sync::Arc::new(filter_transform(g, w, k, c, kp));
    if let Some(key) = key {
        filter_cache::put(key, u.clone());
    }
    u
}

/// Packed tensors handed from one call to a later one that packs the same contents into the
/// same layout (same tiles and border whenever the map is a whole number of F(4x4) tiles, as in
/// every CIFAR ResNet): a training forward's packed input to its layer's backward-weight, and
/// backward-weight's packed output gradient to backward-data. An entry is taken (removed) by
/// the first matching request; entries nobody takes are dropped oldest first past a cap.
mod packed_store {
    use std::sync::Mutex;

    /// `(content stamp, images, channels, packed height, packed width, padded channels)`.
    pub type Key = (u64, usize, usize, usize, usize, usize, usize);

    /// Floats held at most (1 GiB): the packed inputs of a ResNet-110 training step at batch 128.
    const MAX_FLOATS: usize = 1 << 28;

    static STORE: Mutex<Vec<(Key, Vec<f32>)>> = Mutex::new(Vec::new());

    pub fn put(key: Key, packed: Vec<f32>) {
        let mut dropped = Vec::new();
        if let Ok(mut store) = STORE.lock() {
            store.retain(|(k, _)| *k != key);
            store.push((key, packed));
            let mut held: usize = store.iter().map(|(_, v)| v.len()).sum();
            while held > MAX_FLOATS {
                let (_, old) = store.remove(0);
                held -= old.len();
                dropped.push(old);
            }
        } else {
            dropped.push(packed);
        }
        dropped.into_iter().for_each(crate::tensor::pool::give);
    }

    pub fn take(key: &Key) -> Option<Vec<f32>> {
        let mut store = STORE.lock().ok()?;
        let at = store.iter().rposition(|(k, _)| k == key)?;
        Some(store.remove(at).1)
    }
}

/// The store's key for `x` (content stamp `stamp`) packed for `tiling`.
fn packed_key(stamp: u64, s: &ConvShape, tiling: &Tiling) -> packed_store::Key {
    (stamp, s.n, s.c_in, tiling.hp, tiling.wp, tiling.cp, tiling.width)
}

/// `pack_input`, or the same packing left in the store for `stamp` (the content stamp of `x`).
fn pack_input_stamped(x: &[f32], stamp: Option<u64>, s: &ConvShape, tiling: &Tiling, simd: bool) -> Vec<f32> {
    stamp
        .and_then(|st| packed_store::take(&packed_key(st, s, tiling)))
        .unwrap_or_else(|| pack_input(x, s, tiling, simd))
}

/// The input in a channel-blocked layout `[N][Cp/B][hp][wp][B]` (`B = tiling.width`), with a
/// zero border of one pixel (the padding) and zeros beyond the image up to whole tiles: every
/// tile's window is then a plain, in-bounds read of `B`-channel vectors. Lanes past the last
/// channel are zero too.
fn pack_input(x: &[f32], s: &ConvShape, tiling: &Tiling, simd: bool) -> Vec<f32> {
    pack_rows(x, s, tiling, simd, s.n < team::SHORT_BATCH)
}

/// `pack_input` of padded rows `tiling.row0..tiling.row0 + tiling.hp` only; `short`: the team's
/// kind of region.
fn pack_rows(x: &[f32], s: &ConvShape, tiling: &Tiling, simd: bool, short: bool) -> Vec<f32> {
    let (hp, wp, b) = (tiling.hp, tiling.wp, tiling.width);
    let groups = tiling.cp / b;
    let plane = s.h * s.w;
    let row_len = wp * b;
    // Every element is written below (border zeros included): no clearing pass.
    let mut xb = pool::take(s.n * groups * hp * row_len);
    // Tasks are bands of packed rows of one (image, channel group) plane: whole planes for a
    // batch, a few bands each at batch 1 so that every thread has a share.
    let planes = s.n * groups;
    let bands = 8usize.div_ceil(planes).clamp(1, hp);
    let band_rows = hp.div_ceil(bands);
    let out = Shared::new(&mut xb);
    team::for_each_on(short, planes * bands, |task| {
        let (ng, band) = (task / bands, task % bands);
        let (img, g) = (ng / groups, ng % groups);
        let lanes = b.min(s.c_in - g * b);
        let src = &x[(img * s.c_in + g * b) * plane..(img * s.c_in + g * b + lanes) * plane];
        for local in band * band_rows..((band + 1) * band_rows).min(hp) {
            let py = tiling.row0 + local;
            // SAFETY: each packed row belongs to one task only.
            let drow = unsafe { out.slice_mut(tiling.packed_at(img, g, groups, py, 0), row_len) };
            if py == 0 || py > s.h {
                drow.fill(0.0);
                continue;
            }
            let iy = py - 1;
            drow[..b].fill(0.0);
            drow[(s.w + 1) * b..].fill(0.0);
            let drow = &mut drow[b..(s.w + 1) * b];
            let mut ix0 = 0;
            #[cfg(target_arch = "x86_64")]
            if simd && lanes == b {
                // Eight pixels of eight channels at a time: 8x8 transposes in registers.
                while ix0 + LANES <= s.w {
                    for half in 0..b / LANES {
                        let (from, to) = (half * LANES * plane + iy * s.w + ix0, ix0 * b + half * LANES);
                        // SAFETY: `simd` is set only when the CPU has AVX2; the reads stay inside
                        // the eight channel rows of `src` from `from`, and the writes (eight
                        // pixels `b` apart) inside `drow` (both checked here).
                        assert!(from + 7 * plane + LANES <= src.len() && to + 7 * b + LANES <= drow.len());
                        unsafe { simd::transpose_8x8(src.as_ptr().add(from), plane, drow.as_mut_ptr().add(to), b) };
                    }
                    ix0 += LANES;
                }
            }
            let _ = simd;
            for (ix, d) in drow.chunks_exact_mut(b).enumerate().skip(ix0) {
                for (l, v) in d.iter_mut().enumerate() {
                    *v = if l < lanes { src[l * plane + iy * s.w + ix] } else { 0.0 };
                }
            }
        }
    });
    xb
}

/// The `N x N` window of `L::WIDTH`-channel vectors at `base` of a packed buffer whose rows are
/// `wp` vectors long.
///
/// # Safety
/// The CPU must have `L`'s features.
#[inline(always)]
unsafe fn load_window<L: Lanes, const N: usize>(packed: &[f32], base: usize, wp: usize) -> [[L; N]; N] {
    let w = L::WIDTH;
    let window = &packed[base..base + ((N - 1) * wp + N) * w];
    // Plain loops: `array::from_fn`'s closures are not compiled with the caller's target
    // features, so vector loads inside them stay out-of-line calls.
    let mut d = [[L::load(window.as_ptr()); N]; N];
    for (r, row) in d.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = L::load(window[(r * wp + c) * w..][..w].as_ptr());
        }
    }
    d
}

/// Writes a transformed tile's `A x A` vectors of channel group `g` to tile `p`'s run of
/// `out` (`[p][a*a][channels]`, `channels` floats per point).
///
/// # Safety
/// No other task may write tile `p`'s run meanwhile.
#[inline(always)]
unsafe fn store_tile<L: Lanes, const A: usize>(out: Shared, tile: &[[L; A]; A], p: usize, channels: usize, g: usize) {
    let w = L::WIDTH;
    assert!(((p * A + A - 1) * A + A - 1) * channels + (g + 1) * w <= out.1, "winograd: write out of bounds");
    for i in 0..A {
        for j in 0..A {
            tile[i][j].store(out.0.add(((p * A + i) * A + j) * channels + g * w));
        }
    }
}

/// Input transform of block tiles `tiles` (indices inside the block starting at tile `p0`) into
/// `v`, laid out `[a*a][block][Cp]` (channels contiguous: column-major GEMM operands), from the
/// input packed `tiling.width` channels to a block, which must be `L::WIDTH`.
///
/// # Safety
/// The CPU must have `L`'s features; no other task may write these tiles' runs of `v`.
#[inline(always)]
unsafe fn input_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
    xb: &[f32],
    tiling: &Tiling,
    p0: usize,
    tiles: std::ops::Range<usize>,
    v: Shared,
) {
    let (cp, w) = (tiling.cp, L::WIDTH);
    assert_eq!(tiling.width, w, "winograd: packed width");
    let groups = cp / w;
    for p in tiles {
        let (img, oy, ox) = tiling.origin(p0 + p);
        for g in 0..groups {
            let mut d = load_window::<L, A>(xb, tiling.packed_at(img, g, groups, oy, ox), tiling.wp);
            input_2d::<M, A, V, L>(&mut d);
            store_tile(v, &d, p, cp, g);
        }
    }
}

/// Output-gradient transform of block tiles `tiles` (from tile `p0`): `D[p][xi][..Kp]` of
/// `A dy A^T`, from the output gradient packed as the input is (`pack_input`, so a tile's
/// `M x M` window starts one pixel in from its packed corner; zeros past the map's edge, where
/// a partial tile's outputs were never produced).
///
/// # Safety
/// As `input_transform_tiles` (`tiling` is the output gradient's: `cp` is its `Kp`).
#[inline(always)]
unsafe fn grad_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
    dyb: &[f32],
    tiling: &Tiling,
    p0: usize,
    tiles: std::ops::Range<usize>,
    d: Shared,
) {
    let (kp, w) = (tiling.cp, L::WIDTH);
    assert_eq!(tiling.width, w, "winograd: packed width");
    let groups = kp / w;
    for p in tiles {
        let (img, oy, ox) = tiling.origin(p0 + p);
        for g in 0..groups {
            let t = load_window::<L, M>(dyb, tiling.packed_at(img, g, groups, oy + 1, ox + 1), tiling.wp);
            store_tile(d, &grad_2d::<M, A, V, L>(&t), p, kp, g);
        }
    }
}

/// The fused epilogue with the per-channel factors padded to whole lanes.
struct LaneEpilogue<'a> {
    scale: Vec<f32>,
    shift: Vec<f32>,
    residual: Option<&'a [f32]>,
    relu: bool,
}

impl<'a> LaneEpilogue<'a> {
    fn new(epi: &Epilogue<'a>, kp: usize) -> LaneEpilogue<'a> {
        let pad = |v: &[f32]| {
            let mut p = vec![0.0f32; kp];
            p[..v.len()].copy_from_slice(v);
            p
        };
        LaneEpilogue { scale: pad(epi.scale), shift: pad(epi.shift), residual: epi.residual, relu: epi.relu }
    }
}

/// Output transform of block tiles `tiles` from `mm` (layout `[a*a][block][Kp]`) into the NCHW
/// output, `L::WIDTH` channels at a time (`Kp` must be a multiple), with the fused epilogue
/// applied on the way. `simd`: the CPU has AVX2 (whole tiles of eight channels are then
/// transposed into rows in registers).
///
/// # Safety
/// The CPU must have `L`'s features; no other task may write these tiles' pixels of `y`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
    mm: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    p0: usize,
    tiles: std::ops::Range<usize>,
    y: Shared,
    epi: Option<&LaneEpilogue>,
    simd: bool,
) {
    let (kp, w) = (tiling.kp, L::WIDTH);
    assert!(kp % w == 0 && w <= 16, "winograd: output lanes");
    if let Some(r) = epi.and_then(|e| e.residual) {
        assert_eq!(r.len(), y.1, "winograd: residual size");
    }
    assert!(mm.len() >= (tiles.end * A * A) * kp, "winograd: products size");
    for p in tiles {
        let (img, oy, ox) = tiling.origin(p0 + p);
        for g in 0..kp / w {
            let mut d = [[L::load(mm[(p * A * A) * kp + g * w..].as_ptr()); A]; A];
            for (i, row) in d.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = L::load(mm[((p * A + i) * A + j) * kp + g * w..].as_ptr());
                }
            }
            let mut out = output_2d::<M, A, V, L>(&d);
            if let Some(e) = epi {
                // The batch norm on whole lanes (channels), as the unfused op computes it.
                let (a, b) = (L::load(e.scale[g * w..][..w].as_ptr()), L::load(e.shift[g * w..][..w].as_ptr()));
                for lane in out.iter_mut().flatten() {
                    *lane = lane.mul(a).add(b);
                }
            }
            // Eight channels at a time into the output rows.
            let mut spilled = [[[0.0f32; 16]; M]; M];
            for (srow, orow) in spilled.iter_mut().zip(&out) {
                for (sv, ov) in srow.iter_mut().zip(orow) {
                    ov.store(sv.as_mut_ptr());
                }
            }
            for h in 0..w / LANES {
                let mut eight = [[[0.0f32; LANES]; M]; M];
                for (erow, srow) in eight.iter_mut().zip(&spilled) {
                    for (e, sv) in erow.iter_mut().zip(srow) {
                        e.copy_from_slice(&sv[h * LANES..(h + 1) * LANES]);
                    }
                }
                store_output_lanes::<M>(&eight, s, (img, oy, ox), g * (w / LANES) + h, y, epi, simd);
            }
        }
    }
}

/// Writes the `M x M` outputs of 8-channel group `g8` of the tile at `(img, oy, ox)` into the
/// NCHW output, adding the residual and applying the ReLU of `epi` (its batch norm is done).
///
/// # Safety
/// No other task may write this tile's pixels of `y` meanwhile.
#[inline(always)]
unsafe fn store_output_lanes<const M: usize>(
    out: &[[Lane; M]; M],
    s: &ConvShape,
    (img, oy, ox): (usize, usize, usize),
    g8: usize,
    y: Shared,
    epi: Option<&LaneEpilogue>,
    simd: bool,
) {
    let plane = s.out_h * s.out_w;
    let (rows, cols) = (M.min(s.out_h - oy), M.min(s.out_w - ox));
    let lanes = LANES.min(s.c_out - g8 * LANES);
    let base = (img * s.c_out + g8 * LANES) * plane + oy * s.out_w + ox;
    let (residual, relu) = epi.map_or((None, false), |e| (e.residual, e.relu));
    #[cfg(target_arch = "x86_64")]
    if simd && lanes == LANES && cols == M && (M == 4 || M == 2) {
        assert!(base + (LANES - 1) * plane + (rows - 1) * s.out_w + M <= y.1, "winograd: write out of bounds");
        for (r, orow) in out.iter().enumerate().take(rows) {
            // SAFETY: AVX2 is present (`simd`); the eight channel rows written (and read from
            // `residual`, which has `y`'s length) are in bounds (asserted above) and belong to
            // this tile, which only this task writes.
            simd::store_tile_row::<M>(orow, y.0, base + r * s.out_w, plane, residual, relu);
        }
        return;
    }
    let _ = simd;
    for l in 0..lanes {
        let base = base + l * plane;
        for (r, orow) in out.iter().enumerate().take(rows) {
            let mut vals = [0.0f32; M];
            for (c, v) in vals.iter_mut().enumerate() {
                let mut u = orow[c][l];
                if let (Some(res), true) = (residual, c < cols) {
                    u += res[base + r * s.out_w + c];
                }
                *v = if relu { super::elementwise::relu(u) } else { u };
            }
            if cols == M {
                y.write(base + r * s.out_w, &vals)
            } else {
                y.write_prefix(base + r * s.out_w, &vals, cols)
            }
        }
    }
}

/// AVX2 pieces: the transposes between channel lanes and pixel rows.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Lane;
    use std::arch::x86_64::*;

    /// Reads eight rows of eight floats (`src + l * stride`, channel `l`) and writes them
    /// transposed to `dst` (pixel `j`'s eight channels at `dst + dst_stride * j`).
    ///
    /// # Safety
    /// AVX must be available, and the 64 floats read and written in bounds.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_8x8(src: *const f32, stride: usize, dst: *mut f32, dst_stride: usize) {
        let r = |l: usize| _mm256_loadu_ps(src.add(l * stride));
        let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (j, c) in cols.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * dst_stride), c);
        }
    }

    /// `+ residual`, then ReLU (`maxps(v, 0)`: 0 for NaN and -0.0, as `elementwise::relu`).
    #[inline(always)]
    unsafe fn finish(v: __m128, residual: Option<*const f32>, relu: bool) -> __m128 {
        let v = match residual {
            Some(r) => _mm_add_ps(v, _mm_loadu_ps(r)),
            None => v,
        };
        if relu {
            _mm_max_ps(v, _mm_setzero_ps())
        } else {
            v
        }
    }

    /// As `finish` for two floats (low half of `v`), loaded from and stored to `at`.
    #[inline(always)]
    unsafe fn finish_pair(v: __m128, y: *mut f32, at: usize, residual: Option<&[f32]>, relu: bool) {
        let mut v = v;
        if let Some(r) = residual {
            v = _mm_add_ps(v, _mm_castpd_ps(_mm_load_sd(r.as_ptr().add(at) as *const f64)));
        }
        if relu {
            v = _mm_max_ps(v, _mm_setzero_ps());
        }
        _mm_store_sd(y.add(at) as *mut f64, _mm_castps_pd(v));
    }

    /// One output row of a tile, `M` pixels of eight channels (`row[c]` holds pixel `c`'s
    /// channels), written as eight channel rows of `M` pixels starting at `at` (`plane` apart).
    ///
    /// # Safety
    /// AVX2 must be available; `at + 7 * plane + M` must be within `y` and `residual`.
    #[inline(always)]
    pub unsafe fn store_tile_row<const M: usize>(
        row: &[Lane; M],
        y: *mut f32,
        at: usize,
        plane: usize,
        residual: Option<&[f32]>,
        relu: bool,
    ) {
        let v = |c: usize| _mm256_loadu_ps(row[c].as_ptr());
        if M == 4 {
            let (c0, c1, c2, c3) = (v(0), v(1), v(2), v(3));
            let (t0, t1) = (_mm256_unpacklo_ps(c0, c1), _mm256_unpackhi_ps(c0, c1));
            let (t2, t3) = (_mm256_unpacklo_ps(c2, c3), _mm256_unpackhi_ps(c2, c3));
            // u_l holds channel l in its low half and channel l + 4 in its high half.
            let u = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            for (l, u) in u.into_iter().enumerate() {
                for (ch, half) in [(l, _mm256_castps256_ps128(u)), (l + 4, _mm256_extractf128_ps::<1>(u))] {
                    let at = at + ch * plane;
                    let v = finish(half, residual.map(|r| r.as_ptr().add(at)), relu);
                    _mm_storeu_ps(y.add(at), v);
                }
            }
        } else {
            debug_assert_eq!(M, 2);
            let (c0, c1) = (v(0), v(1));
            // Low halves: channels (0, 1) and (2, 3); high halves: (4, 5) and (6, 7).
            let (t0, t1) = (_mm256_unpacklo_ps(c0, c1), _mm256_unpackhi_ps(c0, c1));
            for (first, t) in [(0, t0), (2, t1)] {
                for (ch, half) in [(first, _mm256_castps256_ps128(t)), (first + 4, _mm256_extractf128_ps::<1>(t))] {
                    finish_pair(half, y, at + ch * plane, residual, relu);
                    finish_pair(_mm_movehl_ps(half, half), y, at + (ch + 1) * plane, residual, relu);
                }
            }
        }
    }
}

// The transforms are compiled three times and picked at run time: on AVX-512's 16 lanes (where
// the channel blocks are 16 wide) or AVX2's 8, each in explicit vector registers, and on plain
// `[f32; 8]` arrays for other CPUs. Every lane op is the same IEEE operation in all three, so
// they round identically. (Plain arrays compiled with `avx512f` enabled were 3x slower: LLVM
// turned their loads and stores into gathers and scatters. Registers leave it no such choice.)
macro_rules! multiversion {
    ($name:ident, $inner:ident, ($($arg:ident : $ty:ty),*)) => {
        /// `width`: the lanes per vector (16 only where AVX-512 is present).
        #[allow(clippy::too_many_arguments)]
        fn $name<const M: usize, const A: usize, V: Variant<M, A>>(width: usize, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{__m256, __m512};
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn wide16<const M: usize, const A: usize, V: Variant<M, A>>($($arg: $ty),*) {
                    $inner::<M, A, V, Wide<__m512>>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide8<const M: usize, const A: usize, V: Variant<M, A>>($($arg: $ty),*) {
                    $inner::<M, A, V, Wide<__m256>>($($arg),*)
                }
                if width == 16 && has_avx512() {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide16::<M, A, V>($($arg),*) };
                }
                if width == LANES && has_avx2() && transform_lanes() != TransformLanes::Portable {
                    // SAFETY: as above.
                    return unsafe { wide8::<M, A, V>($($arg),*) };
                }
            }
            assert_eq!(width, LANES, "winograd: {width} lanes on this CPU");
            // SAFETY: plain arrays need no CPU feature.
            unsafe { $inner::<M, A, V, Lane>($($arg),*) }
        }
    };
}

multiversion!(
    input_transform,
    input_transform_tiles,
    (xb: &[f32], tiling: &Tiling, p0: usize, tiles: std::ops::Range<usize>, v: Shared)
);
multiversion!(
    grad_transform,
    grad_transform_tiles,
    (dyb: &[f32], tiling: &Tiling, p0: usize, tiles: std::ops::Range<usize>, d: Shared)
);
multiversion!(
    output_transform,
    output_transform_tiles,
    (
        mm: &[f32],
        s: &ConvShape,
        tiling: &Tiling,
        p0: usize,
        tiles: std::ops::Range<usize>,
        y: Shared,
        epi: Option<&LaneEpilogue>,
        simd: bool
    )
);

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
    epi: Option<&LaneEpilogue>,
    simd: bool,
) {
    let (c, block, cp, kp) = (s.c_in, tiling.block, tiling.cp, tiling.kp);
    let len = block.min(tiling.total - p0);
    let out_width = lane_width(kp);
    let mut v = pool::take(A * A * block * cp);
    let mut mm = pool::take(A * A * block * kp);
    // Product `xi` reads V[p][xi][..C] and writes M[p][xi][..Kp] for every tile p: the 16 or 36
    // products interleave, so each tile's transforms read and write one contiguous run.
    assert!(v.len() >= len * A * A * cp && mm.len() >= len * A * A * kp && u.len() >= A * A * c * kp);
    let gemm = |xi: usize, vv: SharedConst, mx: Shared| {
        // SAFETY: the sizes were checked above; product `xi` alone writes `M[p][xi][..]`, and
        // `V` is not written meanwhile.
        unsafe { multiply(u, vv, mx, xi, len, c, A * A, cp, kp) }
    };
    let vs = Shared::new(&mut v);
    let ms = Shared::new(&mut mm);
    if split {
        let pieces = len.div_ceil(SPLIT_TILES);
        let piece = |i: usize| i * SPLIT_TILES..((i + 1) * SPLIT_TILES).min(len);
        team::for_each(pieces, |i| input_transform::<M, A, V>(tiling.width, xb, tiling, p0, piece(i), vs));
        let vv = SharedConst(v.as_ptr());
        team::for_each(A * A, |xi| gemm(xi, vv, ms));
        let mmv: &[f32] = &mm;
        team::for_each(pieces, |i| output_transform::<M, A, V>(out_width, mmv, s, tiling, p0, piece(i), y, epi, simd));
    } else {
        input_transform::<M, A, V>(tiling.width, xb, tiling, p0, 0..len, vs);
        let vv = SharedConst(v.as_ptr());
        for xi in 0..A * A {
            gemm(xi, vv, ms);
        }
        output_transform::<M, A, V>(out_width, &mm, s, tiling, p0, 0..len, y, epi, simd);
    }
    pool::give(v);
    pool::give(mm);
}

/// Output channels per register block of the multiply stage (one AVX-512 vector).
const KB: usize = 16;
/// Tiles per register block: `TP x KB` accumulators stay in registers.
const TP: usize = 6;
/// Tiles per register block of `2 * KB` output channels (AVX-512 only).
const TP_WIDE: usize = 4;

/// The element-wise stage for one `xi`: `M[p][xi][..kp] = sum_c U[xi][c][..kp] * V[p][xi][c]`
/// for tiles `p < len`, in blocks of `TP` tiles by `KB` (or 8) output channels, accumulating
/// over `c` in order with fused multiply-adds. Replaces a general GEMM call per `xi`, whose
/// packing and dispatch cost more than these small products (K, C of 16 to 64).
///
/// # Safety
/// `v` must hold `len * aa * cp` floats and `m` `len * aa * kp` (both checked by the caller
/// against their buffers), `u` `aa * c * kp`; no other task may write `M[p][xi][..]` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply(
    u: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    len: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return multiply_avx512(u, v, m, xi, len, c, aa, cp, kp);
        }
        if has_avx2() {
            return multiply_avx2(u, v, m, xi, len, c, aa, cp, kp);
        }
    }
    multiply_portable::<false>(u, v, m, xi, len, c, aa, cp, kp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_avx512(
    u: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    len: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
) {
    multiply_portable::<true>(u, v, m, xi, len, c, aa, cp, kp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_avx2(
    u: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    len: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
) {
    multiply_portable::<false>(u, v, m, xi, len, c, aa, cp, kp)
}

/// `WIDE`: 32 registers of 16 floats (AVX-512), where blocks of 4 tiles by 32 output channels
/// (8 accumulators) are used where the channels allow: their tails are shorter than 6 x 16's
/// on the few tiles of a batch-1 block. Every output is the same FMA chain either way.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_portable<const WIDE: bool>(
    u: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    len: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
) {
    let u_xi = &u[xi * c * kp..(xi + 1) * c * kp];
    let mut kb = 0;
    while kb < kp {
        let mut p = 0;
        if WIDE && kp - kb >= 2 * KB {
            while p + TP_WIDE <= len {
                micro::<TP_WIDE, { 2 * KB }>(u_xi, v, m, xi, p, c, aa, cp, kp, kb);
                p += TP_WIDE;
            }
            tail::<{ 2 * KB }>(u_xi, v, m, xi, p, len - p, c, aa, cp, kp, kb);
            kb += 2 * KB;
        } else if kp - kb >= KB {
            while p + TP <= len {
                micro::<TP, KB>(u_xi, v, m, xi, p, c, aa, cp, kp, kb);
                p += TP;
            }
            tail::<KB>(u_xi, v, m, xi, p, len - p, c, aa, cp, kp, kb);
            kb += KB;
        } else {
            while p + TP <= len {
                micro::<TP, LANES>(u_xi, v, m, xi, p, c, aa, cp, kp, kb);
                p += TP;
            }
            tail::<LANES>(u_xi, v, m, xi, p, len - p, c, aa, cp, kp, kb);
            kb += LANES;
        }
    }
}

/// The last `rest < TP` tiles in one register block (a single-tile loop would wait on each
/// FMA's latency).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tail<const W: usize>(
    u_xi: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    p: usize,
    rest: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
    kb: usize,
) {
    match rest {
        0 => {}
        1 => micro::<1, W>(u_xi, v, m, xi, p, c, aa, cp, kp, kb),
        2 => micro::<2, W>(u_xi, v, m, xi, p, c, aa, cp, kp, kb),
        3 => micro::<3, W>(u_xi, v, m, xi, p, c, aa, cp, kp, kb),
        4 => micro::<4, W>(u_xi, v, m, xi, p, c, aa, cp, kp, kb),
        _ => micro::<5, W>(u_xi, v, m, xi, p, c, aa, cp, kp, kb),
    }
}

/// `T` tiles from `p` by `W` output channels from `kb`, held in registers over the whole sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const T: usize, const W: usize>(
    u_xi: &[f32],
    v: SharedConst,
    m: Shared,
    xi: usize,
    p: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
    kb: usize,
) {
    let rows: [*const f32; T] = std::array::from_fn(|t| v.0.add(((p + t) * aa + xi) * cp));
    assert!(kb + W <= kp && u_xi.len() >= c * kp, "winograd: filter block out of bounds");
    let u_col = u_xi.as_ptr().add(kb);
    let mut acc = [[0.0f32; W]; T];
    for cc in 0..c {
        // SAFETY: `cc * kp + kb + W <= c * kp <= u_xi.len()` (asserted above).
        let col = &*(u_col.add(cc * kp) as *const [f32; W]);
        for t in 0..T {
            let x = *rows[t].add(cc);
            for l in 0..W {
                acc[t][l] = col[l].mul_add(x, acc[t][l]);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        m.write(((p + t) * aa + xi) * kp + kb, a);
    }
}

/// Where one backward-weight product reads and writes: `V[p][xi][..Cp]` and `D[p][xi][..Kp]`
/// for tiles `p < len`, and `dU[xi][c][..Kp]`.
#[derive(Clone, Copy)]
struct GradProduct {
    v: *const f32,
    d: *const f32,
    du: *mut f32,
    xi: usize,
    len: usize,
    c: usize,
    aa: usize,
    cp: usize,
    kp: usize,
}

/// The backward-weight product for one `xi`: `dU[xi][c][..kp] += sum_p V[p][xi][c] * D[p][xi][..kp]`
/// over tiles `p < len` in order, with fused multiply-adds, in register blocks of input by
/// output channels that start from and go back to `dU`. The blocks are written with explicit
/// vector types: left to itself, the compiler turned the sum over tiles into gathers.
///
/// # Safety
/// `v` must hold `len * aa * cp` floats, `d` `len * aa * kp` and `du` `aa * c * kp` (checked by the
/// caller); no other task may touch `dU[xi]` meanwhile.
unsafe fn wgrad_multiply(g: GradProduct) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return grad_simd::multiply_avx512(g);
        }
        if has_avx2() {
            return grad_simd::multiply_avx2(g);
        }
    }
    for cc in 0..g.c {
        for k in 0..g.kp {
            let at = (g.xi * g.c + cc) * g.kp + k;
            let mut acc = *g.du.add(at);
            for p in 0..g.len {
                let x = *g.v.add((p * g.aa + g.xi) * g.cp + cc);
                acc = (*g.d.add((p * g.aa + g.xi) * g.kp + k)).mul_add(x, acc);
            }
            *g.du.add(at) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod grad_simd {
    use super::super::simd::Reg;
    use super::{GradProduct, KB, LANES};
    use std::arch::x86_64::{__m256, __m512};

    /// Input channels `c0..c0 + T` by output channels `kb..kb + N * R::WIDTH` of `dU[xi]`, held
    /// in `T * N` registers over the tiles.
    #[inline(always)]
    unsafe fn micro<R: Reg, const T: usize, const N: usize>(g: GradProduct, c0: usize, kb: usize) {
        let at = |t: usize| (g.xi * g.c + c0 + t) * g.kp + kb;
        assert!(c0 + T <= g.c && kb + N * R::WIDTH <= g.kp, "winograd: gradient block out of bounds");
        // Plain loops, not `array::from_fn` (see `load_window`).
        let mut acc = [[R::splat(0.0); N]; T];
        for (t, regs) in acc.iter_mut().enumerate() {
            for (j, r) in regs.iter_mut().enumerate() {
                *r = R::load(g.du.add(at(t) + j * R::WIDTH));
            }
        }
        for p in 0..g.len {
            let row = (p * g.aa + g.xi) * g.kp + kb;
            let mut dv = [R::splat(0.0); N];
            for (j, r) in dv.iter_mut().enumerate() {
                *r = R::load(g.d.add(row + j * R::WIDTH));
            }
            let vrow = g.v.add((p * g.aa + g.xi) * g.cp + c0);
            for t in 0..T {
                let x = R::splat(*vrow.add(t));
                for j in 0..N {
                    acc[t][j] = R::fma(dv[j], x, acc[t][j]);
                }
            }
        }
        for (t, regs) in acc.iter().enumerate() {
            for (j, r) in regs.iter().enumerate() {
                r.store(g.du.add(at(t) + j * R::WIDTH));
            }
        }
    }

    /// Every input channel against output channels `kb..kb + N * R::WIDTH`, `T` at a time.
    #[inline(always)]
    unsafe fn channels<R: Reg, const T: usize, const N: usize>(g: GradProduct, kb: usize) {
        let mut c0 = 0;
        while c0 + T <= g.c {
            micro::<R, T, N>(g, c0, kb);
            c0 += T;
        }
        for cc in c0..g.c {
            micro::<R, 1, N>(g, cc, kb);
        }
    }

    /// 8 input by 32 output channels (16 of the 32 registers), then 16 and 8.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn multiply_avx512(g: GradProduct) {
        let mut kb = 0;
        while kb < g.kp {
            if g.kp - kb >= 2 * KB {
                channels::<__m512, 8, 2>(g, kb);
                kb += 2 * KB;
            } else if g.kp - kb >= KB {
                channels::<__m512, 8, 1>(g, kb);
                kb += KB;
            } else {
                channels::<__m256, 8, 1>(g, kb);
                kb += LANES;
            }
        }
    }

    /// 6 input by 16 output channels (12 of the 16 registers), then 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn multiply_avx2(g: GradProduct) {
        let mut kb = 0;
        while kb < g.kp {
            if g.kp - kb >= KB {
                channels::<__m256, 6, 2>(g, kb);
                kb += KB;
            } else {
                channels::<__m256, 6, 1>(g, kb);
                kb += LANES;
            }
        }
    }
}

/// One block of backward-weight: both transforms, then `dU += V^T D` for every `xi`. `split`
/// spreads the stages over the pool (tiles, then `xi`); it changes no arithmetic.
#[allow(clippy::too_many_arguments)]
fn wgrad_block<const M: usize, const A: usize, V: Variant<M, A>>(
    xb: &[f32],
    dyb: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    dy_tiling: &Tiling,
    p0: usize,
    du: &mut [f32],
    split: bool,
) {
    let (c, block, cp, kp) = (s.c_in, tiling.block, tiling.cp, tiling.kp);
    let len = block.min(tiling.total - p0);
    let mut v = pool::take(A * A * block * cp);
    let mut d = pool::take(A * A * block * kp);
    assert!(v.len() >= len * A * A * cp && d.len() >= len * A * A * kp && du.len() >= A * A * c * kp);
    let (vs, ds, dus) = (Shared::new(&mut v), Shared::new(&mut d), Shared::new(du));
    let product = |v: SharedConst, d: SharedConst, du: Shared, xi: usize| GradProduct {
        v: v.0,
        d: d.0,
        du: du.0,
        xi,
        len,
        c,
        aa: A * A,
        cp,
        kp,
    };
    // SAFETY (both branches): the sizes were checked above; product `xi` alone touches
    // `dU[xi]`, and `V`, `D` are not written meanwhile.
    if split {
        (0..len).into_par_iter().step_by(SPLIT_TILES).for_each(|t0| {
            let tiles = t0..(t0 + SPLIT_TILES).min(len);
            input_transform::<M, A, V>(tiling.width, xb, tiling, p0, tiles.clone(), vs);
            grad_transform::<M, A, V>(dy_tiling.width, dyb, dy_tiling, p0, tiles, ds);
        });
        let (vv, dd) = (SharedConst(v.as_ptr()), SharedConst(d.as_ptr()));
        (0..A * A).into_par_iter().for_each(|xi| unsafe { wgrad_multiply(product(vv, dd, dus, xi)) });
    } else {
        input_transform::<M, A, V>(tiling.width, xb, tiling, p0, 0..len, vs);
        grad_transform::<M, A, V>(dy_tiling.width, dyb, dy_tiling, p0, 0..len, ds);
        let (vv, dd) = (SharedConst(v.as_ptr()), SharedConst(d.as_ptr()));
        for xi in 0..A * A {
            unsafe { wgrad_multiply(product(vv, dd, dus, xi)) };
        }
    }
    pool::give(v);
    pool::give(d);
}

/// Tasks (chunks of consecutive blocks) a backward-weight reduction is split into, at most: each
/// sums its tiles in order into its own `dU`, and the chunks' sums are added in chunk order, so
/// the result depends on the shape only, never on the thread count.
const WGRAD_CHUNKS: usize = 16;

fn backward_weight_with<const M: usize, const A: usize, V: Variant<M, A>>(
    dy: &[f32],
    dy_stamp: Option<u64>,
    x: &[f32],
    x_stamp: Option<u64>,
    s: &ConvShape,
) -> Vec<f32> {
    let (k, c) = (s.c_out, s.c_in);
    let mut dw = vec![0.0f32; k * c * 9];
    if dw.is_empty() || s.n * s.out_h * s.out_w == 0 {
        return dw;
    }
    let simd = has_avx2();
    let tiling = Tiling::new(s, M);
    let kp = tiling.kp;
    let xb = pack_input_stamped(x, x_stamp, s, &tiling, simd);
    // The output gradient packed like an input of `K` channels (same tiles, same border).
    let dy_shape = ConvShape { c_in: k, h: s.out_h, w: s.out_w, ..*s };
    let dy_tiling = tiling.with_channels(kp);
    let dyb = pack_input(dy, &dy_shape, &dy_tiling, simd);
    let blocks = tiling.total.div_ceil(tiling.block);
    let per_chunk = blocks.div_ceil(WGRAD_CHUNKS);
    let chunks = blocks.div_ceil(per_chunk);
    let split = chunks < rayon::current_num_threads();
    let part = A * A * c * kp;
    let mut partials = pool::take(chunks * part);
    partials.par_chunks_mut(part).enumerate().for_each(|(chunk, du)| {
        du.fill(0.0);
        for b in chunk * per_chunk..((chunk + 1) * per_chunk).min(blocks) {
            wgrad_block::<M, A, V>(&xb, &dyb, s, &tiling, &dy_tiling, b * tiling.block, du, split);
        }
    });
    pool::give(xb);
    match dy_stamp {
        Some(st) => packed_store::put(packed_key(st, &dy_shape, &dy_tiling), dyb),
        None => pool::give(dyb),
    }
    let (du, rest) = partials.split_at_mut(part);
    for other in rest.chunks_exact(part) {
        for (a, b) in du.iter_mut().zip(other) {
            *a += b;
        }
    }
    // dW_kc = G^T dU_kc G, in f64.
    let g = V::G.0;
    for kk in 0..k {
        for cc in 0..c {
            let dui = |i: usize, j: usize| du[((i * A + j) * c + cc) * kp + kk] as f64;
            let mut tmp = [[0.0f64; A]; 3];
            for r in 0..3 {
                for j in 0..A {
                    tmp[r][j] = (0..A).map(|i| g[i][r] * dui(i, j)).sum();
                }
            }
            for r in 0..3 {
                for t in 0..3 {
                    dw[(kk * c + cc) * 9 + r * 3 + t] = (0..A).map(|j| tmp[r][j] * g[j][t]).sum::<f64>() as f32;
                }
            }
        }
    }
    pool::give(partials);
    dw
}

/// Backward-weight (`supports(s)` must hold): `dW_kc = G^T [sum over tiles (A dy_k A^T) .* (B^T
/// x_c B)] G`, the adjoint of the forward algorithm, with the sum over tiles done as `a*a`
/// register-blocked products per block of tiles.
pub fn backward_weight(dy: &[f32], x: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    backward_weight_stamped(dy, None, x, None, s, tile)
}

/// As `backward_weight`, taking over the packed `x` a training forward left
/// (`forward_keeping_input`, content stamp `x_stamp`), and leaving the packed `dy` (content
/// stamp `dy_stamp`) for the layer's backward-data (`backward_data_stamped`).
pub fn backward_weight_stamped(
    dy: &[f32],
    dy_stamp: Option<u64>,
    x: &[f32],
    x_stamp: Option<u64>,
    s: &ConvShape,
    tile: WinogradTile,
) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "winograd: input size");
    assert_eq!(dy.len(), s.n * s.c_out * s.out_h * s.out_w, "winograd: output gradient size");
    match tile {
        WinogradTile::F2 => backward_weight_with::<2, 4, VariantF2>(dy, dy_stamp, x, x_stamp, s),
        WinogradTile::F4 => backward_weight_with::<4, 6, VariantF4>(dy, dy_stamp, x, x_stamp, s),
    }
}

fn forward_with<const M: usize, const A: usize, V: Variant<M, A>>(
    x: &[f32],
    x_stamp: Option<u64>,
    w: &[f32],
    s: &ConvShape,
    epi: Option<&Epilogue>,
    stamp: Option<u64>,
    keep: Option<u64>,
) -> Vec<f32> {
    // Every output pixel is written by the output transform: a pooled buffer, not cleared.
    let mut y = pool::take(s.n * s.c_out * s.out_h * s.out_w);
    if y.is_empty() || s.c_in == 0 {
        if let Some(epi) = epi {
            epi.apply_slice(&mut y, 0, s.out_h * s.out_w, s.c_out);
        }
        return y;
    }
    let simd = has_avx2();
    let tiling = Tiling::new(s, M);
    let u = transformed_filters(&V::G, w, s.c_out, s.c_in, tiling.kp, stamp);
    let lane_epi = epi.map(|e| LaneEpilogue::new(e, tiling.kp));
    let blocks = tiling.total.div_ceil(tiling.block);
    let split = blocks < rayon::current_num_threads();
    let out = Shared::new(&mut y);
    if s.n == 1 && x_stamp.is_none() && keep.is_none() && blocks > 1 {
        // Batch 1: each block packs the input rows its tiles read, so a layer is one parallel
        // region, not two (the rows shared by neighbouring blocks are packed twice: a copy).
        team::for_each_on(true, blocks, |b| {
            let p0 = b * tiling.block;
            let last = (p0 + tiling.block).min(tiling.total) - 1;
            let (r0, r1) = ((p0 / tiling.cols) * tiling.m, (last / tiling.cols + 1) * tiling.m + 2);
            let own = Tiling { row0: r0, hp: r1 - r0, ..tiling };
            let xb = pack_rows(x, s, &own, simd, true);
            run_block::<M, A, V>(&xb, &u, s, &own, p0, out, split, lane_epi.as_ref(), simd);
            pool::give(xb);
        });
    } else {
        let xb = pack_input_stamped(x, x_stamp, s, &tiling, simd);
        // Each block writes only its own tiles' pixels of `y`.
        team::for_each_on(s.n < team::SHORT_BATCH, blocks, |b| {
            run_block::<M, A, V>(&xb, &u, s, &tiling, b * tiling.block, out, split, lane_epi.as_ref(), simd)
        });
        match keep {
            Some(st) => packed_store::put(packed_key(st, s, &tiling), xb),
            None => pool::give(xb),
        }
    }
    if let Ok(u) = std::sync::Arc::try_unwrap(u) {
        pool::give(u);
    }
    y
}

/// Forward convolution (`supports(s)` must hold).
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    forward_fused(x, w, s, tile, None)
}

/// Forward convolution with the eval-mode epilogue applied in the output transform.
pub fn forward_fused(x: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile, epi: Option<&Epilogue>) -> Vec<f32> {
    forward_stamped(x, w, None, s, tile, epi)
}

/// As `forward_fused`, reusing the filter transform of weights whose content stamp
/// (`Tensor::stamp`) was seen recently.
pub fn forward_stamped(
    x: &[f32],
    w: &[f32],
    w_stamp: Option<u64>,
    s: &ConvShape,
    tile: WinogradTile,
    epi: Option<&Epilogue>,
) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "winograd: input size");
    assert_eq!(w.len(), s.c_out * s.c_in * 9, "winograd: weight size");
    match tile {
        WinogradTile::F2 => forward_with::<2, 4, VariantF2>(x, None, w, s, epi, w_stamp, None),
        WinogradTile::F4 => forward_with::<4, 6, VariantF4>(x, None, w, s, epi, w_stamp, None),
    }
}

/// Forward convolution of a training pass: as `forward`, and the packed input stays behind for
/// this layer's `backward_weight_stamped` (same `x_stamp`) to take over.
pub fn forward_keeping_input(x: &[f32], x_stamp: u64, w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "winograd: input size");
    assert_eq!(w.len(), s.c_out * s.c_in * 9, "winograd: weight size");
    // The weights change after every training step: their transform is not cached (it goes
    // back to the buffer pool, where the next step finds it).
    let (xs, ws, keep) = (None, None, Some(x_stamp));
    match tile {
        WinogradTile::F2 => forward_with::<2, 4, VariantF2>(x, xs, w, s, None, ws, keep),
        WinogradTile::F4 => forward_with::<4, 6, VariantF4>(x, xs, w, s, None, ws, keep),
    }
}

/// Backward-data: the gradient of a 3x3 s1 p1 convolution is the 3x3 s1 p1 convolution of the
/// output gradient with the filters flipped and their in/out channels swapped.
pub fn backward_data(dy: &[f32], w: &[f32], s: &ConvShape, tile: WinogradTile) -> Vec<f32> {
    backward_data_stamped(dy, None, w, s, tile)
}

/// As `backward_data`, taking over the packed `dy` that `backward_weight_stamped` left for the
/// same content stamp, where there is one (the same bits: packing is a copy).
pub fn backward_data_stamped(
    dy: &[f32],
    dy_stamp: Option<u64>,
    w: &[f32],
    s: &ConvShape,
    tile: WinogradTile,
) -> Vec<f32> {
    assert!(supports(s), "winograd: unsupported shape {s:?}");
    assert_eq!(dy.len(), s.n * s.c_out * s.out_h * s.out_w, "winograd: output gradient size");
    assert_eq!(w.len(), s.c_out * s.c_in * 9, "winograd: weight size");
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
    match tile {
        WinogradTile::F2 => forward_with::<2, 4, VariantF2>(dy, dy_stamp, &wt, &swapped, None, None, None),
        WinogradTile::F4 => forward_with::<4, 6, VariantF4>(dy, dy_stamp, &wt, &swapped, None, None, None),
    }
}

/// The kernel the CPU backend uses for this convolution, `None` for im2col + GEMM. Measured on
/// 2 cores (AVX-512; `lfgcl bench infer`, `cargo bench --bench conv`): with the register-blocked
/// multiply stage and cached filter transforms, F(2x2) beats im2col from 64 output pixels (an
/// 8x8 map at batch 1) and F(4x4) beats F(2x2) from 256 (a 16x16 map at batch 1: ResNet-56 at
/// batch 1 ran 1,195-1,215 img/s with F(2x2) there and 1,300-1,305 with F(4x4), ResNet-20
/// 3,300-3,350 and 3,530-3,650, once the transforms ran on 16 lanes; 1024 before); below 8 input
/// channels (the stem) the transforms cost more than the multiplications they save.
pub fn choose(s: &ConvShape) -> Option<WinogradTile> {
    let pixels = s.n * s.out_h * s.out_w;
    if !supports(s) || s.c_in < LANES || pixels < 64 {
        None
    } else if pixels < 256 {
        Some(WinogradTile::F2)
    } else {
        Some(WinogradTile::F4)
    }
}

/// The tile backward-weight uses where `choose` takes Winograd: F(2x2) throughout. Its
/// output-gradient transform is cheaper than F(4x4)'s (16 values per tile from 4, against 36
/// from 16), which evens out F(4x4)'s fewer multiplications: a ResNet-20 training step at batch
/// 128 ran 920-930 img/s with F(2x2) against 850-900 with F(4x4) on the 32x32 layers, ResNet-56
/// the same within noise (2 cores, `lfgcl bench train`), and F(2x2) is the more accurate.
pub fn choose_backward_weight(s: &ConvShape) -> Option<WinogradTile> {
    choose(s).map(|_| WinogradTile::F2)
}
