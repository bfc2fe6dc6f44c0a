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

// One file per stage; each sees the shared pieces here (and its siblings' items) through
// `use super::*`.
mod cache;
mod multiply;
mod pack;
#[cfg(target_arch = "x86_64")]
mod simd;
mod tiles;
mod transform;
mod wgrad;

use cache::*;
use multiply::*;
use pack::*;
use tiles::*;
use transform::*;
use wgrad::*;

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
        // Each block streams all of `U` (a*a * Cp * Kp floats) through the multiply stage: where
        // that is more than a core's L2 share holds (1 MiB) and outweighs every tile's V and M
        // (ResNet-50's 14x14 and 28x28 layers at batch 1: 4.2 MB of F(2x2) filters against 49
        // tiles), one block whose stages split over the pool reads it once: `layer3.1.conv2`
        // 1215-1248 -> 1100-1111 us (`bench infer --layers`). Small filters stay in blocks: with
        // ResNet-56's 8x8 layers (65K floats) split so, batch 1 ran 499-509 against 556 img/s.
        let u_floats = a * a * cp * kp;
        let filters_dominate = u_floats >= 1 << 18 && u_floats > a * a * (cp + kp) * total && total <= 256;
        let block = if filters_dominate { total } else { block };
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

/// The vector width the transforms of `channels` channels (a multiple of 8) run at: AVX-512's
/// 16 lanes where the CPU has them and the channels fill them, else 8.
fn lane_width(channels: usize) -> usize {
    if has_avx512() && channels.is_multiple_of(16) {
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

/// Whether the filter transform of the weights with content stamp `stamp` is kept (tests: a
/// training step's changing weights must not fill the cache).
#[doc(hidden)]
pub fn holds_transform_of(stamp: u64) -> bool {
    cache::holds_transform_of(stamp)
}

/// The kernel the CPU backend uses for this convolution, `None` for im2col + GEMM. Measured on
/// 2 cores (AVX-512; `lfgcl bench infer`, `cargo bench --bench conv`): with the register-blocked
/// multiply stage and cached filter transforms, F(2x2) beats im2col from 64 output pixels (an
/// 8x8 map at batch 1) and F(4x4) beats F(2x2) from 256 (a 16x16 map at batch 1: ResNet-56 at
/// batch 1 ran 1,195-1,215 img/s with F(2x2) there and 1,300-1,305 with F(4x4), ResNet-20
/// 3,300-3,350 and 3,530-3,650, once the transforms ran on 16 lanes; 1024 before); below 8 input
/// channels (the stem) the transforms cost more than the multiplications they save. Maps under
/// 8x8 (ResNet-50's layer4 at 224: 7x7, covered by 2x2 F(4x4) tiles of 8x8) go to im2col + GEMM:
/// at 512 channels and batch 32 it ran 1.3-1.6x F(4x4) (`cargo bench --bench conv -- r50_512x7x7`).
/// On AVX2 (Zen 3, 2 cores) F(4x4) ran 45-50 ms there against im2col's 53-56 even with its
/// filter transform cached, but 24-30 against 14-15 ms at batch 8, and the F(2x2) weight gradient
/// 158 against 63 ms at batch 32: its 36 x 512 x 512 transformed filters (38 MB) stream through
/// the multiply stage for a few dozen tiles. So 7x7 maps stay on im2col everywhere.
/// ResNet-50's 14x14 layers at batch 1 stay on F(2x2): F(4x4) took 764 against ~1,300 us in the
/// hot-cache benchmark (`r50_256x14x14`, filters cached), but its 36 x 256 x 256 transformed
/// filters (9.4 MB a layer, F(2x2)'s 4.2) stream from memory on every image, and the net ran
/// 39.1-39.6 against 38.4 ms a batch-1 forward.
pub fn choose(s: &ConvShape) -> Option<WinogradTile> {
    let pixels = s.n * s.out_h * s.out_w;
    if !supports(s) || s.c_in < LANES || pixels < 64 || s.out_h < 8 || s.out_w < 8 {
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
///
/// Not where the channels are many for the pixels: the weight gradient sums `a*a x C x K`
/// products per tile, and with few tiles against many channels im2col + GEMM was faster (`cargo
/// bench --bench conv -- backward_weight`, 2 threads, F(2x2) against im2col): ResNet-50 at
/// batch 1, 128x28x28 2.82 against 1.67 ms and 256x14x14 5.74 against 1.36; at batch 32
/// 256x14x14 39.5 against 33.8; a CIFAR 64x8x8 layer at batch 1 167 against 84 us. Where it
/// stays, it won: 64x56x56 at batch 1 1.24 against 4.05 ms, 128x28x28 at batch 32 24.6
/// against 32.6, every CIFAR layer at batch 64 by 1.7-2x, 16x32x32 and 32x16x16 at batch 1.
pub fn choose_backward_weight(s: &ConvShape) -> Option<WinogradTile> {
    let pixels = s.n * s.out_h * s.out_w;
    let few_pixels = pixels < 8 * s.c_in || s.c_in * s.c_out > 128 * 128;
    choose(s).filter(|_| !few_pixels).map(|_| WinogradTile::F2)
}
