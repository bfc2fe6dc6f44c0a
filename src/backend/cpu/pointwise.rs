//! 1x1 convolutions (stride 1, dense) straight from NCHW, with the eval epilogue applied in
//! registers: `y[k, p] = epi(sum_c w[k, c] * x[c, p])` for each image.
//!
//! Why not the `gemm` crate (which the exact path keeps): it packs both operands on every
//! call, runs its 8-row tail kernel at half rate on 24-channel outputs, and leaves the
//! epilogue to a second pass over the output, which for MobileNetV2's 112- and 56-pixel maps
//! no longer sits in L2. Here the weights are packed into panels of six output channels (kept
//! by the weight tensor's stamp, so inference packs each layer once), the input is read in
//! place (a tile of pixels stays in L2 while every panel passes over it), and each block of 6
//! channels by 16 pixels (AVX2's two registers per channel) or 64 (AVX-512's four) leaves its
//! accumulators through the folded batch norm, the residual and the activation.
//!
//! Every output is one fused multiply-add chain over `c` in order, starting from zero, then the
//! epilogue's operations in `conv::Epilogue`'s order, whatever the tiling or the thread count:
//! the bits do not depend on how the work is split. The `gemm` crate sums a product of up to
//! its depth block (a few hundred input channels) the same way, so the two agree bit for bit
//! there (`pointwise_kernel_*` tests).

use super::conv::{is_pointwise, Epilogue};
use super::isa::{isa, Isa};
use super::simd::Reg;
use super::team;
use super::weight_cache::WeightCache;
use crate::backend::ConvShape;

/// Output channels per register block.
const ROWS: usize = 6;
/// Input floats a pixel tile aims for (`c x tile` in L2 beside the output block).
const TILE_FLOATS: usize = 32 * 1024;
/// How far ahead (floats) the first panel of a task prefetches each input row.
const PREFETCH_AHEAD: usize = 128;
/// Most floats of one register (AVX-512), for the tail scratch.
const MAX_LANES: usize = 16;

/// Whether this kernel can compute `s` on this CPU: a 1x1 convolution, and AVX2 + FMA (8-lane
/// build) or AVX-512F (16-lane build).
pub fn available(s: &ConvShape) -> bool {
    is_pointwise(s) && isa() >= Isa::Avx2
}

/// Whether the backend should use it for an eval convolution with a fused epilogue: expansions
/// (at least as many outputs as inputs) from at most 160 channels, and projections from at most
/// 144 channels on maps of 56x56 and more (MobileNetV2's 144 -> 24 at 56x56, `cargo bench --bench
/// conv -- pw_b32_144to24x56`: 5.97 against the `gemm` crate's 7.5-8.2 ms, once the first panel
/// prefetched its rows). With more input channels a 16-pixel block's input
/// leaves L1 while the six-channel panels pass over it, and the `gemm` crate was as fast or
/// faster: MobileNetV2's 7x7 projections (`bench infer --layers`, batch 1, 1 thread:
/// `features.17.conv.2` 448 against 491 us, `features.15.conv.2` 228 against 265), ResNet-50's
/// 256 -> 64 at 56x56 (`cargo bench --bench conv -- pw_b32_256to64x56`: 23.9 against 26.6 ms)
/// and its 256 -> 1024 and 512 -> 2048 expansions (0-5% slower in the model). Without an epilogue
/// (training) it gains nothing over the `gemm` crate and is not used.
///
/// The 16-lane build's register block covers 64 pixels (32 and 16 at a row's end), so a 7x7 map
/// (49 pixels) is all tails: there AVX-512 keeps the `gemm` crate (`pw_b1_160to960x7`: 206
/// against 136 us, 1 thread), and takes the kernel on maps of 14x14 and more (`pw_b32_64to384x14`
/// 2.7 against 3.7 ms, `pw_b32_16to96x112` 22.5 against 46.7).
///
/// On AVX-512 it also takes projections to at most 96 channels from at most 576 on maps of
/// 14x14 to 28x28 (MobileNetV2's from `features.4` to `features.13`): the `gemm` crate won the
/// hot-cache benchmark there (`pw_b1_384to64x14` 50 against 75 us), but in the net, where the
/// input comes from the depthwise layer before and a residual is added, the kernel's fused
/// epilogue and unpacked input won (`bench infer --model mobilenet_v2 --layers`, batch 1, 2
/// threads: `features.5.conv.2` 99 -> 76 us, `features.8.conv.2` 88 -> 68, `features.12.conv.2`
/// 149 -> 138), while on ResNet-50's projections (64 to 256 outputs from 256 to 1024) it lost
/// by 1.2-2x, as on AVX2 everywhere but the largest maps.
pub fn preferred(s: &ConvShape) -> bool {
    let (p, k, c) = (s.out_h * s.out_w, s.c_out, s.c_in);
    let wide = isa() == Isa::Avx512;
    let map_fills_blocks = !wide || p >= 14 * 14;
    let small_projection = wide && k < c && k <= 96 && c <= 576 && (14 * 14..=28 * 28).contains(&p);
    available(s) && ((k >= c && c <= 160 && map_fills_blocks) || (p >= 56 * 56 && c <= 144) || small_projection)
}

/// Forward of a 1x1 convolution (`available(s)` must hold), `epi` applied in registers.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    forward_stamped(x, w, None, s, epi)
}

/// Weight panels of recent weights, keyed by `(weight stamp, K, C)`: at most 32 MiB and 256
/// entries (MobileNetV2's 1x1 layers hold 14 MB).
static PANELS: WeightCache<(u64, usize, usize)> = WeightCache::new(1 << 23, 256);

/// `forward`, with the weight panels kept by the weight tensor's content stamp when one is
/// given (the backend passes it), so that inference packs each layer's weights once.
pub fn forward_stamped(x: &[f32], w: &[f32], stamp: Option<u64>, s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    // Every element is written (each tile's rows, tails through the scratch).
    let mut y = crate::tensor::pool::take(s.n * s.c_out * s.out_h * s.out_w);
    forward_to(x, w, stamp, s, epi, &mut y, false);
    y
}

/// `forward_stamped` with `epi`'s residual in `y`: each output reads its residual there, then
/// replaces it, so the residual's memory is read and written once (a residual beside a fresh
/// output is read, and the output's lines fetched before they are written). `epi.residual`
/// must be `None`; the same bits as passing the residual there.
pub fn forward_over(x: &[f32], w: &[f32], stamp: Option<u64>, s: &ConvShape, epi: &Epilogue, y: &mut [f32]) {
    assert!(epi.residual.is_none(), "pointwise conv: the residual is the output");
    forward_to(x, w, stamp, s, Some(epi), y, true);
}

/// Into `y` (the output's size); `residual_in_y`: `y` holds the residual on entry.
fn forward_to(
    x: &[f32],
    w: &[f32],
    stamp: Option<u64>,
    s: &ConvShape,
    epi: Option<&Epilogue>,
    y: &mut [f32],
    residual_in_y: bool,
) {
    assert!(available(s), "pointwise conv: unsupported shape or CPU {s:?}");
    let (n, c, k, p) = (s.n, s.c_in, s.c_out, s.out_h * s.out_w);
    assert_eq!(x.len(), n * c * p, "pointwise conv: input size");
    assert_eq!(w.len(), k * c, "pointwise conv: weight size");
    assert_eq!(y.len(), n * k * p, "pointwise conv: output size");
    if let Some(e) = epi {
        assert!(e.scale.len() == k && e.shift.len() == k, "pointwise conv: epilogue channels");
        assert!(e.residual.is_none_or(|r| r.len() == n * k * p), "pointwise conv: residual size");
    }
    if y.is_empty() {
        return;
    }
    if c == 0 {
        // No input channels: every sum is the empty chain.
        let residual = residual_in_y.then(|| y.to_vec());
        y.fill(0.0);
        if let Some(e) = epi {
            let residual = residual.as_deref().or(e.residual);
            let e = Epilogue { scale: e.scale, shift: e.shift, residual, relu: e.relu, relu6: e.relu6 };
            e.apply_slice(y, 0, p, k);
        }
        return;
    }
    let panels = PANELS.get_or_make(stamp.map(|st| (st, k, c)), || pack_weights(w, k, c));
    let plan = Plan::new(n, c, k, p);
    let out = team::SendPtr(y.as_mut_ptr());
    team::for_each_on(n < team::SHORT_BATCH, plan.tasks(), |t| {
        let task = plan.task(t);
        let image = task.image;
        // SAFETY: the task writes (and, with the residual in y, first reads) only rows
        // `task.blocks` x pixels `task.pixels` of its image's output, which no other task
        // touches; every pointer below stays in bounds.
        unsafe {
            run(
                &Tile {
                    x: x.as_ptr().add(image * c * p),
                    c,
                    p,
                    k,
                    panels: &panels,
                    y: out.at(image * k * p),
                    epi,
                    residual_in_y,
                    at0: image * k * p,
                },
                &task,
            )
        };
    });
}

/// `w[k, c]` as panels of `ROWS` output channels, `[panel][c][ROWS]`, rows past `k` zero.
fn pack_weights(w: &[f32], k: usize, c: usize) -> Vec<f32> {
    let blocks = k.div_ceil(ROWS);
    let mut panels = vec![0.0f32; blocks * c * ROWS];
    // Row by row: each weight row is read once, in order.
    for (row, weights) in w.chunks_exact(c).enumerate() {
        let panel = &mut panels[(row / ROWS) * c * ROWS..][..c * ROWS];
        for (lanes, &v) in panel.chunks_exact_mut(ROWS).zip(weights) {
            lanes[row % ROWS] = v;
        }
    }
    panels
}

/// How one convolution is cut into tasks: images x pixel tiles x parts of the channel panels.
struct Plan {
    images: usize,
    p: usize,
    tile: usize,
    tiles: usize,
    blocks: usize,
    blocks_per_part: usize,
    parts: usize,
}

struct Task {
    image: usize,
    pixels: std::ops::Range<usize>,
    blocks: std::ops::Range<usize>,
}

impl Plan {
    fn new(n: usize, c: usize, k: usize, p: usize) -> Plan {
        // Tiles of whole 16-pixel blocks (the last may be ragged).
        let tile = ((TILE_FLOATS / c).max(16) / 16 * 16).min(p.next_multiple_of(8));
        let tiles = p.div_ceil(tile);
        let blocks = k.div_ceil(ROWS);
        // Several tasks per thread when images x tiles are few (batch 1 on 7x7 maps): split the
        // channel panels too.
        let want = 4 * rayon::current_num_threads();
        let parts = want.div_ceil(n * tiles).clamp(1, blocks);
        let blocks_per_part = blocks.div_ceil(parts);
        Plan { images: n, p, tile, tiles, blocks, blocks_per_part, parts: blocks.div_ceil(blocks_per_part) }
    }

    fn tasks(&self) -> usize {
        self.images * self.tiles * self.parts
    }

    fn task(&self, t: usize) -> Task {
        let per_image = self.tiles * self.parts;
        let (image, rest) = (t / per_image, t % per_image);
        let (tile, part) = (rest / self.parts, rest % self.parts);
        let (q0, b0) = (tile * self.tile, part * self.blocks_per_part);
        Task {
            image,
            pixels: q0..(q0 + self.tile).min(self.p),
            blocks: b0..(b0 + self.blocks_per_part).min(self.blocks),
        }
    }
}

/// One image's operands.
struct Tile<'a> {
    /// The image's input `[c][p]`.
    x: *const f32,
    c: usize,
    p: usize,
    k: usize,
    panels: &'a [f32],
    /// The image's output `[k][p]`.
    y: *mut f32,
    epi: Option<&'a Epilogue<'a>>,
    /// Whether `y` holds the residual (read before each output is written over it).
    residual_in_y: bool,
    /// Flat index of the image's first output (the residual's offset).
    at0: usize,
}

/// Runs one task on the widest build this CPU has.
///
/// # Safety
/// As `forward`'s tasks: the tile's pointers cover the image, and the task's outputs are its own.
unsafe fn run(tile: &Tile, task: &Task) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m256, __m512};
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide16(tile: &Tile, task: &Task) {
            by_activation::<__m512>(tile, task)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide8(tile: &Tile, task: &Task) {
            by_activation::<__m256>(tile, task)
        }
        match isa() {
            Isa::Avx512 => return wide16(tile, task),
            Isa::Avx2 => return wide8(tile, task),
            Isa::Portable => {}
        }
    }
    unreachable!("pointwise conv: no AVX2 (available() was not checked)");
}

/// The activation chosen once per task, so that the block loop has no branch on it.
#[inline(always)]
unsafe fn by_activation<R: Reg>(tile: &Tile, task: &Task) {
    match tile.epi.map(|e| (e.relu, e.relu6)) {
        Some((true, _)) => task_blocks::<R, 1>(tile, task),
        Some((false, true)) => task_blocks::<R, 2>(tile, task),
        _ => task_blocks::<R, 0>(tile, task),
    }
}

/// `ACT`: 0 none, 1 ReLU, 2 ReLU6.
#[inline(always)]
unsafe fn task_blocks<R: Reg, const ACT: u8>(tile: &Tile, task: &Task) {
    let (c, p, lanes) = (tile.c, tile.p, R::WIDTH);
    let (q0, q1) = (task.pixels.start, task.pixels.end);
    let whole = q0 + (q1 - q0) / lanes * lanes;
    // The ragged last vector's input, zero-padded to a whole register per channel, copied once
    // for all the task's panels.
    let mut tail_x = Vec::new();
    if whole < q1 {
        tail_x = vec![0.0f32; c * lanes];
        for ci in 0..c {
            let src = std::slice::from_raw_parts(tile.x.add(ci * p + whole), q1 - whole);
            tail_x[ci * lanes..ci * lanes + src.len()].copy_from_slice(src);
        }
    }
    for b in task.blocks.clone() {
        let panel = tile.panels.as_ptr().add(b * c * ROWS);
        let k0 = b * ROWS;
        let rows = (tile.k - k0).min(ROWS);
        let mut q = q0;
        // The task's first panel reads the tile from memory, `c` rows a plane apart, more
        // streams than the hardware prefetcher follows: each row is fetched 8 lines ahead.
        // MobileNetV2's projections at batch 32 (`cargo bench --bench conv -- pw_b32`): 32 -> 16
        // at 112x112 5.4-5.6 -> 4.5-4.6 ms, 96 -> 24 at 56x56 4.8-5.0 -> 3.7-4.0; expansions level.
        let first = b == task.blocks.start;
        // AVX-512's 32 registers hold a 6 x 4-vector block (24 accumulators), which needs half
        // the weight broadcasts per multiply-add of the 6 x 2 block; AVX2's 16 hold only that.
        if R::WIDTH >= 16 {
            while q + 4 * lanes <= whole {
                let acc = products_prefetching::<R, 4>(first, c, panel, tile.x.add(q), p);
                finish::<R, 4, ACT>(tile, acc, k0, rows, q, 4 * lanes);
                q += 4 * lanes;
            }
        }
        while q + 2 * lanes <= whole {
            let acc = products_prefetching::<R, 2>(first, c, panel, tile.x.add(q), p);
            finish::<R, 2, ACT>(tile, acc, k0, rows, q, 2 * lanes);
            q += 2 * lanes;
        }
        if q < whole {
            let acc = products::<R, 1, false>(c, panel, tile.x.add(q), p);
            finish::<R, 1, ACT>(tile, acc, k0, rows, q, lanes);
            q += lanes;
        }
        if q < q1 {
            let acc = products::<R, 1, false>(c, panel, tail_x.as_ptr(), lanes);
            finish::<R, 1, ACT>(tile, acc, k0, rows, q, q1 - q);
        }
    }
}

/// `products`, prefetching its rows when `prefetch` (a task's first panel).
#[inline(always)]
unsafe fn products_prefetching<R: Reg, const NV: usize>(
    prefetch: bool,
    c: usize,
    panel: *const f32,
    x: *const f32,
    ldx: usize,
) -> [[R; NV]; ROWS] {
    if prefetch {
        products::<R, NV, true>(c, panel, x, ldx)
    } else {
        products::<R, NV, false>(c, panel, x, ldx)
    }
}

/// The `ROWS x NV` register block of sums over every input channel: one fused multiply-add
/// chain per output, channel 0 first.
#[inline(always)]
unsafe fn products<R: Reg, const NV: usize, const PF: bool>(
    c: usize,
    panel: *const f32,
    x: *const f32,
    ldx: usize,
) -> [[R; NV]; ROWS] {
    let mut acc = [[R::splat(0.0); NV]; ROWS];
    for ci in 0..c {
        let xr = x.add(ci * ldx);
        #[cfg(target_arch = "x86_64")]
        if PF {
            // A hint: an address past the input's end is never read and cannot fault. One per
            // cache line the block reads from the row (up to four with AVX-512's 64 pixels).
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            for line in 0..(NV * R::WIDTH).div_ceil(16) {
                _mm_prefetch::<_MM_HINT_T0>(xr.wrapping_add(PREFETCH_AHEAD + 16 * line) as *const i8);
            }
        }
        let xv: [R; NV] = std::array::from_fn(|v| R::load(xr.add(v * R::WIDTH)));
        let w = panel.add(ci * ROWS);
        for (r, acc) in acc.iter_mut().enumerate() {
            let wv = R::splat(*w.add(r));
            for v in 0..NV {
                acc[v] = R::fma(wv, xv[v], acc[v]);
            }
        }
    }
    acc
}

/// The block's `rows` output channels from `k0`, pixels `q..q + len`: `conv::Epilogue`'s
/// operations in its order (`v * scale + shift`, plus the residual, then the activation), then
/// stored; a ragged last vector goes through scratch.
#[inline(always)]
unsafe fn finish<R: Reg, const NV: usize, const ACT: u8>(
    tile: &Tile,
    acc: [[R; NV]; ROWS],
    k0: usize,
    rows: usize,
    q: usize,
    len: usize,
) {
    let lanes = R::WIDTH;
    let mut scratch = [0.0f32; MAX_LANES];
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let kk = k0 + r;
        let row = tile.y.add(kk * tile.p + q);
        for (v, &a) in acc.iter().enumerate() {
            let n = (len - v * lanes).min(lanes);
            let mut a = a;
            if let Some(e) = tile.epi {
                a = a.mul(R::splat(e.scale[kk])).add(R::splat(e.shift[kk]));
                if let Some(res) = e.residual {
                    let at = tile.at0 + kk * tile.p + q + v * lanes;
                    let rv = if n == lanes {
                        R::load(res.as_ptr().add(at))
                    } else {
                        scratch[..n].copy_from_slice(&res[at..at + n]);
                        R::load(scratch.as_ptr())
                    };
                    a = a.add(rv);
                } else if tile.residual_in_y {
                    let rv = if n == lanes {
                        R::load(row.add(v * lanes))
                    } else {
                        std::ptr::copy_nonoverlapping(row.add(v * lanes), scratch.as_mut_ptr(), n);
                        R::load(scratch.as_ptr())
                    };
                    a = a.add(rv);
                }
                a = match ACT {
                    1 => a.keep_where_positive(a),
                    2 => a.relu6(),
                    _ => a,
                };
            }
            if n == lanes {
                a.store(row.add(v * lanes));
            } else {
                a.store(scratch.as_mut_ptr());
                std::ptr::copy_nonoverlapping(scratch.as_ptr(), row.add(v * lanes), n);
            }
        }
    }
}

/// One output as this kernel computes it (tests): the chain of fused multiply-adds, then
/// `Epilogue::apply`, the unfused ops' arithmetic.
#[doc(hidden)]
pub fn reference_output(
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    epi: Option<&Epilogue>,
    image: usize,
    kk: usize,
    q: usize,
) -> f32 {
    let (c, k, p) = (s.c_in, s.c_out, s.out_h * s.out_w);
    let mut acc = 0.0f32;
    for ci in 0..c {
        acc = w[kk * c + ci].mul_add(x[(image * c + ci) * p + q], acc);
    }
    match epi {
        Some(e) => e.apply(acc, kk, (image * k + kk) * p + q),
        None => acc,
    }
}
