//! Direct square convolution (3x3 to 7x7, stride 1 or 2) on AVX-512 or AVX2, for the forward
//! convolutions the Winograd kernels leave to im2col + GEMM: the 3-channel stems (CIFAR's and
//! MobileNetV2's 3x3, ResNet's 7x7), the strided downsampling layers and maps too small for
//! Winograd tiles.
//!
//! Those layers carry few MACs (the stem and the two downsamplings of a CIFAR ResNet are about
//! 7% of them) but, as im2col + GEMM, cost about 15% of a ResNet-20's inference: im2col copies
//! 9x the input in runs of 8 to 32 floats (strided: one float at a time), and the GEMM is thin
//! (27 rows for the stem). Here each image is copied once into zero-bordered planes, split by
//! column phase for stride 2 (even and odd columns apart), so every tap of a row of 16 outputs
//! is one contiguous (masked) vector load; 16 output channels of accumulators stay in registers
//! and each load feeds 16 fused multiply-adds. AVX2 has 16 registers, not 32: its block is 6
//! output channels by two 8-lane halves of the same 16 outputs (12 accumulators), so each pair
//! of loads feeds 12 fused multiply-adds. The eval epilogue (batch norm, residual, ReLU or
//! ReLU6) is applied before the store, with the unfused ops' arithmetic.
//!
//! Every output sums its `kh kw C` products in one fixed order (channel, row, column), with fused
//! multiply-adds in f32: results depend on the shape only, never on the thread count or on
//! which of the two instruction sets ran (the same operations lane by lane). Error
//! against the f64 loops, relative to `sum |x| |w|` over the window: about 1e-7 (tests/conv_fast.rs
//! asserts 1e-6), as im2col + GEMM.

use super::conv::Epilogue;
use super::isa::isa;
pub use super::isa::Isa;
use super::team;
use crate::backend::ConvShape;
use crate::tensor::pool;
use std::sync::atomic::{AtomicUsize, Ordering};

mod channels;

/// Output pixels per vector (one AVX-512 register).
const Q: usize = 16;
/// Output channels per register block.
const KB: usize = 16;

/// Input channels up to which the CPU backend takes this kernel over im2col + GEMM.
///
/// AVX-512's 16x16 register block reads each input row once per 16 output channels, which pays
/// with the few channels of the CIFAR nets (16 to 64: 1.3-2.8x im2col at batch 1) but not with
/// ResNet-50's 128 to 512, where the GEMM ran 1.5-2.6x faster (`cargo bench --bench conv --
/// "r50_.*s2|512x7"`). AVX2's 6-channel block rereads each row nearly three times as often: on a
/// Zen 3 core it ran 1.5-3.9x im2col at batch 1 with 3 or 16 input channels (the stems, CIFAR's
/// first downsampling) but 0.8x with 32 (`32to64_s2_16`, batch 1 and 64), and 0.67x on
/// `64x8x8` at batch 64. ResNet's 7x7 stem (`r50_stem_7x7_s2_224`): 1.85x im2col at batch 1,
/// 1.07x at 32.
pub fn max_c_in(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 64,
        Isa::Avx2 => 16,
        Isa::Portable => 0,
    }
}

/// A pinned channel limit in place of `max_c_in(isa())` (`usize::MAX`: none).
static PINNED_MAX_C_IN: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Pins the channel limit `preferred` applies under the vector builds (`None` lifts it).
/// For tests that compare the kernels' builds on whole nets: the limit differs between AVX-512
/// and AVX2, so without a pin a 32-channel layer takes this kernel under one build and im2col
/// under the other, whose sums round differently.
#[doc(hidden)]
pub fn pin_max_c_in(limit: Option<usize>) {
    PINNED_MAX_C_IN.store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// The channel limit in force: `max_c_in(isa())` unless pinned (the portable build runs no
/// vector kernel, pinned or not).
fn limit() -> Option<usize> {
    match (isa(), PINNED_MAX_C_IN.load(Ordering::Relaxed)) {
        (Isa::Portable, _) | (_, usize::MAX) => None,
        (_, pinned) => Some(pinned),
    }
}

/// Whether the CPU backend takes the pixel-vector kernel for `s`: `supports(s)` with few enough
/// input channels for the instruction set the kernels run on (`max_c_in`, `isa::isa`).
pub fn preferred(s: &ConvShape) -> bool {
    supports(s) && s.c_in <= limit().unwrap_or(max_c_in(isa()))
}

/// Whether the channel-vector kernel (`channels.rs`) beats im2col + GEMM and the pixel kernel on
/// `s`: on AVX-512, from 32 input channels (`CHANNELS_MIN_C_IN`), unless the limit is pinned
/// (its AVX2 counterpart is im2col + GEMM), on maps of 7 columns and more, and past batch 1 on
/// maps of 14x14 and less.
///
/// Measured against im2col + GEMM on ResNet-50's 3x3 layers (`cargo bench --bench conv --
/// "r50_.*/forward"`, 2 threads, AVX-512, ms): at batch 1 it ran 1.2-1.5x faster on every one
/// (the strided 128 / 256 / 512-channel layers 1.25 / 1.01-1.07 / 1.05-1.12 against 1.49-1.55 /
/// 1.28-1.30 / 1.20-1.29, layer4's 7x7 maps 0.92-0.97 against 1.18-1.23, the 14x14 layers
/// 0.83-0.93 against 1.18-1.21); at batch 32 1.2x on 7x7 maps (27.4-28.0 against 33.3), level
/// on 14x14 (31.4-35.4 against 34.3, 32.1-33.2 against 33.6) and 0.9x on 28x28 (40.4-42.8
/// against 37.6). VGG-16's 4x4 and 2x2 layers at batch 128 ran slower (the net 454 -> 394
/// img/s). Whether it also beats Winograd is `CpuBackend::direct_channels`'s question.
pub fn channels_preferred(s: &ConvShape) -> bool {
    let measured = s.out_w >= 7 && (s.n == 1 || s.out_h * s.out_w <= 14 * 14);
    isa() == Isa::Avx512 && limit().is_none() && supports(s) && s.c_in >= CHANNELS_MIN_C_IN && measured
}

/// Input channels from which the channel-vector kernel takes a layer over the pixel-vector
/// one. The CIFAR ResNets' 32 -> 64 strided layer (8x8 outputs) ran 36 us against the pixel
/// kernel's 73 at batch 1 and 1.35 against 1.86 ms at batch 64 (im2col 41 us, 1.48 ms); with 16
/// input channels (16 -> 32, 16x16 outputs) 45 against 51 us at batch 1 but 1.85 against 1.71 ms
/// at batch 64, so 16 stays with the pixel kernel.
const CHANNELS_MIN_C_IN: usize = 32;

/// The largest kernel side the kernel takes.
pub const MAX_KERNEL: usize = 7;

/// True when this kernel computes the convolution: square, 3x3 to 7x7 (1x1 layers are GEMMs in
/// place), padding below the kernel's side, stride 1 or 2, non-empty, on a CPU with AVX-512 or
/// AVX2 + FMA (whatever the limit: `preferred` applies it).
pub fn supports(s: &ConvShape) -> bool {
    s.kh == s.kw
        && (3..=MAX_KERNEL).contains(&s.kh)
        && s.pad < s.kh
        && (s.stride == 1 || s.stride == 2)
        && s.n * s.c_in * s.c_out * s.out_h * s.out_w > 0
        && Isa::detected() >= Isa::Avx2
}

/// Geometry of the prepared input: per image and channel, `stride` phase planes of `hp` rows by
/// `wph` columns (phase `f` holds the zero-bordered columns `f, f + stride, ...`), `pad` zeros
/// on each side.
#[derive(Clone, Copy)]
struct Planes {
    stride: usize,
    pad: usize,
    hp: usize,
    wph: usize,
}

impl Planes {
    fn new(s: &ConvShape) -> Planes {
        let pad = s.pad;
        Planes { stride: s.stride, pad, hp: s.h + 2 * pad, wph: (s.w + 2 * pad).div_ceil(s.stride) }
    }
    fn per_channel(&self) -> usize {
        self.stride * self.hp * self.wph
    }
    /// `row(c, t % stride, r) + t / stride - row(c, 0, r)` for each tap column `t`: computed
    /// once, as a division and a remainder by the run-time stride per tap were most of the
    /// micro-kernels' integer work.
    fn tap_offsets(&self) -> [usize; MAX_KERNEL] {
        std::array::from_fn(|t| (t % self.stride) * self.hp * self.wph + t / self.stride)
    }
    /// Offset (within one image) of padded row `row` of channel `c`, phase `phase`.
    fn row(&self, c: usize, phase: usize, row: usize) -> usize {
        ((c * self.stride + phase) * self.hp + row) * self.wph
    }
}

/// The zero-bordered, phase-split copy of every image.
fn prepare(x: &[f32], s: &ConvShape, pl: &Planes) -> Vec<f32> {
    let per_image = s.c_in * pl.per_channel();
    let mut xp = pool::take(s.n * per_image);
    let plane = s.h * s.w;
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut xp, pl.per_channel(), |ic, dst| {
        let src = &x[ic * plane..(ic + 1) * plane];
        // A long row's columns by parity (stride 2): each phase plane's row is then a run of one
        // of them, copied whole (a strided read per phase took a quarter of a 3-channel stem's
        // time at 224x224). Short rows keep the strided read: on CIFAR's 16x16 maps the split
        // and its copies cost 5% more.
        let split = pl.stride == 2 && s.w >= 64;
        PARITY.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.resize(if split { s.w } else { 0 }, 0.0);
            let half = s.w.div_ceil(2).min(scratch.len());
            let (even, odd) = scratch.split_at_mut(half);
            prepare_channel(src, dst, s, pl, split, even, odd);
        });
    });
    xp
}

thread_local! {
    /// `prepare`'s scratch: one input row's columns by parity.
    static PARITY: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One channel's planes of `prepare` (`src`, the channel's input plane, into `dst`), the rows
/// split into `even` and `odd` columns first when `split`.
fn prepare_channel(
    src: &[f32],
    dst: &mut [f32],
    s: &ConvShape,
    pl: &Planes,
    split: bool,
    even: &mut [f32],
    odd: &mut [f32],
) {
    for row in 0..pl.hp {
        let inside = row >= pl.pad && row < s.h + pl.pad;
        let srow = if inside { &src[(row - pl.pad) * s.w..(row - pl.pad + 1) * s.w] } else { &[][..] };
        if inside && split {
            super::conv::split_columns(srow, even, odd);
        }
        for phase in 0..pl.stride {
            let d = &mut dst[pl.row(0, phase, row)..pl.row(0, phase, row) + pl.wph];
            if !inside {
                d.fill(0.0);
                continue;
            }
            // Padded column j * stride + phase is input column (that - pad): columns
            // lo..hi of this phase lie inside the input, the rest are the border.
            let first = |col: usize| (col + pl.pad).saturating_sub(phase).div_ceil(pl.stride);
            let (lo, hi) = (first(0).min(d.len()), first(s.w).min(d.len()));
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            if hi == lo {
                continue;
            }
            let from = lo * pl.stride + phase - pl.pad;
            let run = match (pl.stride, split) {
                (1, _) => &srow[from..],
                // Input column `from + 2i` is element `from / 2 + i` of its parity's columns.
                (_, true) if from.is_multiple_of(2) => &even[from / 2..],
                (_, true) => &odd[from / 2..],
                (_, false) => {
                    for (v, &x) in d[lo..hi].iter_mut().zip(srow[from..].iter().step_by(pl.stride)) {
                        *v = x;
                    }
                    continue;
                }
            };
            d[lo..hi].copy_from_slice(&run[..hi - lo]);
        }
    }
}

/// The weights regrouped `[K / KB blocks][C][kh][kw][KB]` (the last block padded with zeros), so
/// a block's 16 broadcasts for one tap are adjacent.
fn regroup(w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (k, per_k) = (s.c_out, s.c_in * s.kh * s.kw);
    let mut wr = vec![0.0f32; k.div_ceil(KB) * per_k * KB];
    // Block by block on the pool, each written in order from its 16 rows read in step (a
    // training step regroups every layer's new weights: ResNet-50's layer4 holds 9.4 MB each).
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut wr, per_k * KB, |b, dst| {
        let rows = KB.min(k - b * KB);
        for (j, lanes) in dst.chunks_exact_mut(KB).enumerate() {
            for (l, v) in lanes[..rows].iter_mut().enumerate() {
                *v = w[(b * KB + l) * per_k + j];
            }
        }
    });
    wr
}

/// The output, written by disjoint tasks.
#[derive(Clone, Copy)]
struct Out(*mut f32, usize);
// SAFETY: each task writes its own (image, channel block, rows) of the output.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// One task: output rows `rows` of image `img`, output channels `k0..k0 + kn` (`kn <= KB`).
struct Task {
    img: usize,
    k0: usize,
    kn: usize,
    rows: std::ops::Range<usize>,
}

/// What every micro-kernel call of one task reads and where it writes: the task's image (`src`,
/// prepared planes), its channel block's regrouped weights (`wb`), the output and the epilogue.
#[derive(Clone, Copy)]
struct Job<'a> {
    src: &'a [f32],
    wb: &'a [f32],
    s: &'a ConvShape,
    pl: &'a Planes,
    img: usize,
    out: Out,
    epi: Option<&'a Epilogue<'a>>,
    /// Where tap column `t` of a window row sits from the row's phase-0 start: its phase plane
    /// and its column (`Planes::tap_offsets`).
    tap_off: [usize; MAX_KERNEL],
}

/// The channel-vector kernel (`channels.rs`; the CPU must have AVX-512F), the regrouped weights
/// kept by `stamp` when given.
pub fn forward_channels(x: &[f32], w: &[f32], stamp: Option<u64>, s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    channels::forward_stamped(x, w, stamp, s, epi)
}

/// Forward convolution (`supports(s)` must hold), with `epi` applied before the store, on the
/// widest instruction set the CPU has.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    // (AVX2 at the least: `supports` asked the CPU for it, `preferred` the limit.)
    forward_on(isa().max(Isa::Avx2), x, w, s, epi)
}

/// Asserts the sizes of a forward's input, weights and epilogue against `s`.
fn check_operands(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) {
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "direct conv: input size");
    assert_eq!(w.len(), s.c_out * s.c_in * s.kh * s.kw, "direct conv: weight size");
    if let Some(e) = epi {
        let (k, pq) = (s.c_out, s.out_h * s.out_w);
        assert!(e.scale.len() == k && e.shift.len() == k, "direct conv: epilogue size");
        assert!(e.residual.is_none_or(|r| r.len() == s.n * k * pq), "direct conv: residual size");
    }
}

/// `forward` on the instruction set `isa` (AVX2 or AVX-512, which the CPU must have, whatever
/// the limit): tests compare the two.
pub fn forward_on(isa: Isa, x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    assert!(
        supports(s) && isa >= Isa::Avx2 && isa <= Isa::detected(),
        "direct conv: unsupported shape {s:?} or {isa:?}"
    );
    check_operands(x, w, s, epi);
    let (k, pq) = (s.c_out, s.out_h * s.out_w);
    // Every output is stored below.
    let mut y = pool::take(s.n * k * pq);
    let pl = Planes::new(s);
    let xp = prepare(x, s, &pl);
    let wr = regroup(w, s);
    // Enough tasks for every thread at batch 1 (rows split), whole images when the batch allows.
    let blocks = k.div_ceil(KB);
    let threads = rayon::current_num_threads();
    let row_groups = (4 * threads).div_ceil(s.n * blocks).clamp(1, s.out_h);
    let rows_per = s.out_h.div_ceil(row_groups);
    let mut tasks = Vec::with_capacity(s.n * blocks * row_groups);
    for img in 0..s.n {
        for b in 0..blocks {
            for r0 in (0..s.out_h).step_by(rows_per) {
                let kn = KB.min(k - b * KB);
                tasks.push(Task { img, k0: b * KB, kn, rows: r0..(r0 + rows_per).min(s.out_h) });
            }
        }
    }
    let out = Out(y.as_mut_ptr(), y.len());
    let per_image = s.c_in * pl.per_channel();
    let tap_off = pl.tap_offsets();
    team::for_each_on(s.n < team::SHORT_BATCH, tasks.len(), |i| {
        let t = &tasks[i];
        let src = &xp[t.img * per_image..(t.img + 1) * per_image];
        let per_block = s.c_in * s.kh * s.kw * KB;
        let wb = &wr[(t.k0 / KB) * per_block..(t.k0 / KB + 1) * per_block];
        let job = Job { src, wb, s, pl: &pl, img: t.img, out, epi, tap_off };
        // SAFETY: the instruction set is present (asserted above); the task writes only its own
        // rows of its own channels of its image (disjoint across tasks), and every read stays
        // inside `src`, `wb` and the residual (bounds asserted inside).
        unsafe {
            match isa {
                Isa::Avx512 => task_avx512(&job, t),
                Isa::Avx2 => task_avx2(&job, t),
                Isa::Portable => unreachable!("asserted above"),
            }
        };
    });
    pool::give(xp);
    y
}

/// The rows and channels of one task, `KB` or fewer channels at a time.
///
/// # Safety
/// The CPU must have AVX-512F; no other task may write this task's outputs.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn task_avx512(job: &Job, t: &Task) {
    let s = job.s;
    // The channel count of the block, in pieces the micro-kernel is compiled for.
    let mut done = 0;
    for piece in [16, 8, 4, 2, 1] {
        while t.kn - done >= piece {
            for p in t.rows.clone() {
                for q0 in (0..s.out_w).step_by(Q) {
                    let at = Tile { p, q0, lane_count: Q.min(s.out_w - q0), k: t.k0 + done, kk: done };
                    match piece {
                        16 => micro::<16>(job, at),
                        8 => micro::<8>(job, at),
                        4 => micro::<4>(job, at),
                        2 => micro::<2>(job, at),
                        _ => micro::<1>(job, at),
                    }
                }
            }
            done += piece;
        }
    }
}

/// Where a micro-kernel call works: output row `p`, columns `q0..q0 + lane_count`, output
/// channels from `k` (the `kk`-th of the block's regrouped weights).
#[derive(Clone, Copy)]
struct Tile {
    p: usize,
    q0: usize,
    lane_count: usize,
    k: usize,
    kk: usize,
}

/// Asserts that a micro-kernel call at `at` reads inside `src` and `wb`: the furthest element a
/// load reads is the last lane of some tap in the window's last row, of the last channel.
#[inline(always)]
fn check_reads(job: &Job, at: Tile) {
    let (src, wb, s, pl) = (job.src, job.wb, job.s, job.pl);
    let (kh, kw, stride) = (s.kh, s.kw, pl.stride);
    let last = (0..kw)
        .map(|tap| pl.row(s.c_in - 1, tap % stride, at.p * stride + kh - 1) + at.q0 + tap / stride + at.lane_count)
        .max()
        .unwrap_or(0);
    assert!(last <= src.len() && wb.len() >= s.c_in * kh * kw * KB, "direct conv: read out of bounds");
}

/// `N` output channels by up to 16 output pixels of one row: `kh kw C` masked loads, each feeding
/// `N` fused multiply-adds with broadcast weights, then the epilogue and a masked store.
#[inline(always)]
unsafe fn micro<const N: usize>(job: &Job, at: Tile) {
    let (src, wb, s, pl, img, out, epi) = (job.src, job.wb, job.s, job.pl, job.img, job.out, job.epi);
    use std::arch::x86_64::*;
    let mask: __mmask16 = if at.lane_count == Q { !0 } else { (1u16 << at.lane_count) - 1 };
    let stride = pl.stride;
    let (kh, kw) = (s.kh, s.kw);
    check_reads(job, at);
    let mut acc = [_mm512_setzero_ps(); N];
    for c in 0..s.c_in {
        for r in 0..kh {
            let row = at.p * stride + r;
            for tap in 0..kw {
                let from = pl.row(c, 0, row) + job.tap_off[tap] + at.q0;
                let xv = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(from));
                let wt = wb.as_ptr().add(((c * kh + r) * kw + tap) * KB + at.kk);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*wt.add(j)), xv, *a);
                }
            }
        }
    }
    let (k, pq) = (s.c_out, s.out_h * s.out_w);
    for (j, a) in acc.into_iter().enumerate() {
        let o = (img * k + at.k + j) * pq + at.p * s.out_w + at.q0;
        assert!(o + at.lane_count <= out.1, "direct conv: write out of bounds");
        let mut v = a;
        if let Some(e) = epi {
            // relu((v * scale + shift) + residual), each rounded as the unfused ops do.
            v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.scale[at.k + j])), _mm512_set1_ps(e.shift[at.k + j]));
            if let Some(res) = e.residual {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(o)));
            }
            if e.relu {
                // max(v, 0) gives 0 for NaN and -0.0, as `elementwise::relu`.
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            } else if e.relu6 {
                v = super::simd::Reg::relu6(v);
            }
        }
        _mm512_mask_storeu_ps(out.0.add(o), mask, v);
    }
}

/// The rows and channels of one task on AVX2, `AVX2_KB` or fewer channels at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA; no other task may write this task's outputs.
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(job: &Job, t: &Task) {
    let s = job.s;
    let mut done = 0;
    for piece in [AVX2_KB, 4, 2, 1] {
        while t.kn - done >= piece {
            for p in t.rows.clone() {
                for q0 in (0..s.out_w).step_by(Q) {
                    let at = Tile { p, q0, lane_count: Q.min(s.out_w - q0), k: t.k0 + done, kk: done };
                    match (piece, at.lane_count == Q) {
                        (AVX2_KB, true) => micro_avx2::<AVX2_KB, false>(job, at),
                        (AVX2_KB, false) => micro_avx2::<AVX2_KB, true>(job, at),
                        (4, true) => micro_avx2::<4, false>(job, at),
                        (4, false) => micro_avx2::<4, true>(job, at),
                        (2, true) => micro_avx2::<2, false>(job, at),
                        (2, false) => micro_avx2::<2, true>(job, at),
                        (_, true) => micro_avx2::<1, false>(job, at),
                        (_, false) => micro_avx2::<1, true>(job, at),
                    }
                }
            }
            done += piece;
        }
    }
}

/// Output channels per AVX2 register block: 6 x 2 accumulators, 2 loaded inputs and a broadcast
/// fill 15 of the 16 registers.
const AVX2_KB: usize = 6;

/// `micro` on AVX2: `N` output channels by up to 16 output pixels of one row, as two 8-lane
/// halves; `MASKED` for a row's last, partial tile (masked loads and stores, which neither read
/// nor write the lanes past `lane_count`).
#[inline(always)]
unsafe fn micro_avx2<const N: usize, const MASKED: bool>(job: &Job, at: Tile) {
    let (src, wb, s, pl, img, out, epi) = (job.src, job.wb, job.s, job.pl, job.img, job.out, job.epi);
    use std::arch::x86_64::*;
    const H: usize = Q / 2;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lane l of half h is active when h * 8 + l < lane_count (all of them unless MASKED).
    let masks = [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(at.lane_count as i32), lanes),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(at.lane_count as i32 - H as i32), lanes),
    ];
    let load = |p: *const f32, h: usize| {
        if MASKED {
            _mm256_maskload_ps(p.add(h * H), masks[h])
        } else {
            _mm256_loadu_ps(p.add(h * H))
        }
    };
    let stride = pl.stride;
    let (kh, kw) = (s.kh, s.kw);
    check_reads(job, at);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for c in 0..s.c_in {
        for r in 0..kh {
            let row = at.p * stride + r;
            for tap in 0..kw {
                let from = src.as_ptr().add(pl.row(c, 0, row) + job.tap_off[tap] + at.q0);
                let xv = [load(from, 0), load(from, 1)];
                let wt = wb.as_ptr().add(((c * kh + r) * kw + tap) * KB + at.kk);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wj = _mm256_set1_ps(*wt.add(j));
                    a[0] = _mm256_fmadd_ps(wj, xv[0], a[0]);
                    a[1] = _mm256_fmadd_ps(wj, xv[1], a[1]);
                }
            }
        }
    }
    let (k, pq) = (s.c_out, s.out_h * s.out_w);
    for (j, a) in acc.into_iter().enumerate() {
        let o = (img * k + at.k + j) * pq + at.p * s.out_w + at.q0;
        assert!(o + at.lane_count <= out.1, "direct conv: write out of bounds");
        for (h, mut v) in a.into_iter().enumerate() {
            if let Some(e) = epi {
                // The epilogue of `micro`, operation for operation.
                v = _mm256_add_ps(
                    _mm256_mul_ps(v, _mm256_set1_ps(e.scale[at.k + j])),
                    _mm256_set1_ps(e.shift[at.k + j]),
                );
                if let Some(res) = e.residual {
                    v = _mm256_add_ps(v, load(res.as_ptr().add(o), h));
                }
                if e.relu {
                    v = _mm256_max_ps(v, _mm256_setzero_ps());
                } else if e.relu6 {
                    v = super::simd::Reg::relu6(v);
                }
            }
            if MASKED {
                _mm256_maskstore_ps(out.0.add(o + h * H), masks[h], v);
            } else {
                _mm256_storeu_ps(out.0.add(o + h * H), v);
            }
        }
    }
}
