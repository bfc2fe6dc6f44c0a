//! Depthwise 3x3 convolution (pad 1, stride 1 or 2; MobileNetV2's depthwise layers), forward
//! with the fused eval epilogue, backward-data and backward-weight, vectorised over the output
//! row.
//!
//! Each (image, channel) plane is copied once into a zero-bordered scratch plane, split by
//! column phase for stride 2 (even and odd padded columns apart), with the rows padded to a
//! whole number of vectors: every tap of 16 consecutive outputs of a row is then one contiguous
//! unaligned load, and the nine taps are nine loads, multiplies and adds. Backward-data is the
//! same kernel at stride 1 with the filter rotated by 180 degrees, run over the output gradient
//! (zero-inserted between rows and columns for stride 2) as the input. Backward-weight keeps
//! nine vector accumulators per channel (one per tap) over all images and rows, then sums their
//! lanes in order.
//!
//! On maps of 28 pixels and under the portable forward runs 16 channels at a time instead
//! (`forward_interleaved`): the block's planes are interleaved, each output pixel is one vector
//! of the block's channels, and the same operations per lane give the same bits as the plane
//! kernel, without its per-plane costs.
//!
//! On AVX2 and AVX-512 CPUs the forward reads the input planes in place instead, masked loads
//! standing in for the border (`in_place.rs`): with no copy and no transposes it took 0.4-0.85x
//! the time of the two kernels above (AVX-512; their vector builds, the interleaved one's 8x8
//! transposes included), and it gives their bits. The plane kernel's vector builds still run
//! backward-data at stride 2 and `forward_planes`, the tests' reference.
//!
//! The kernels are written once over `Lanes` of 16 floats and compiled three times: one AVX-512
//! register, two AVX2 registers, a plain array. Every lane operation is the same IEEE operation
//! (multiplies and adds, never contracted into FMAs) and the reductions have the same order in
//! each, so all three give the same bits, and a result never depends on the thread count (a
//! task owns whole output planes, or a whole channel's weight gradient).
//!
//! Forward order per output: the products of taps (0,0), (0,1), ... (2,2), summed left to right
//! in f32. Against im2col + GEMM (the exact backends' grouped path) it agrees to a few ulps of
//! `sum |x| |w|` over the window.

#[cfg(target_arch = "x86_64")]
mod in_place;

use super::conv::Epilogue;
use super::isa::{isa, Isa};
use super::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use super::lanes::{Pair, Wide};
use super::team;
use crate::backend::ConvShape;
use crate::tensor::pool;
use std::cell::RefCell;

/// Logical vector width of every build (one AVX-512 register, two AVX2 ones, 16 floats).
const V: usize = 16;

/// True when these kernels compute the convolution: depthwise (one input and one output channel
/// per group), 3x3, pad 1, stride 1 or 2, non-empty.
pub fn supports(s: &ConvShape) -> bool {
    s.is_depthwise()
        && s.kh == 3
        && s.kw == 3
        && s.pad == 1
        && (s.stride == 1 || s.stride == 2)
        && s.n * s.c_in * s.out_h * s.out_w > 0
}

/// Geometry of one padded scratch plane and the outputs computed from it: `stride` phase planes
/// of `hp` rows by `wph` columns (phase `f` holds the padded columns `f, f + stride, ...`), and an
/// `oh x ow` output whose rows are computed `owp` (a multiple of `V`) at a time.
#[derive(Clone, Copy, Debug)]
struct Geom {
    stride: usize,
    hp: usize,
    wph: usize,
    oh: usize,
    ow: usize,
    owp: usize,
}

impl Geom {
    /// For an `h x w` map convolved at `stride` (pad 1) into `oh x ow`.
    fn new(h: usize, stride: usize, oh: usize, ow: usize) -> Geom {
        let owp = ow.next_multiple_of(V);
        // Tap t of output column q reads phase column q + t / stride <= owp - 1 + 2.
        Geom { stride, hp: h + 2, wph: owp + 2, oh, ow, owp }
    }
    fn len(&self) -> usize {
        self.stride * self.hp * self.wph
    }
    /// Offset of padded row `row`, phase `phase`.
    fn row(&self, phase: usize, row: usize) -> usize {
        (phase * self.hp + row) * self.wph
    }
    /// Where tap `(r, t)` of output `(p, q)` sits relative to `row(0, p * stride) + q`: phase
    /// `t % stride`, row `r` below, column `t / stride` right.
    fn taps(&self) -> [usize; 9] {
        std::array::from_fn(|tap| {
            let (r, t) = (tap / 3, tap % 3);
            self.row(t % self.stride, r) + t / self.stride
        })
    }
}

/// Fills `dst` with the padded, phase-split plane of the map `M` whose element `(up * i, up * j)`
/// is `src[i][j]` (`sh x sw`) and whose other elements are zero: the input itself for `up == 1`,
/// the zero-inserted output gradient of a stride-2 convolution for `up == 2`.
fn prepare(src: &[f32], sh: usize, sw: usize, up: usize, g: &Geom, dst: &mut Vec<f32>) {
    assert!(up == 1 || up == 2, "depthwise: zero insertion by {up}");
    assert!(g.stride == 1 || up == 1, "depthwise: zero-inserted maps are read at stride 1");
    dst.resize(g.len(), 0.0);
    let wph = g.wph;
    // `up` is 1 or 2: shifts, not a division per row.
    let shift = up.trailing_zeros();
    for prow in 0..g.hp {
        // Padded row `prow` is map row `prow - 1`, source row `(prow - 1) / up`.
        let i = prow.wrapping_sub(1);
        if prow == 0 || i & (up - 1) != 0 || i >> shift >= sh {
            for phase in 0..g.stride {
                dst[g.row(phase, prow)..g.row(phase, prow) + wph].fill(0.0);
            }
            continue;
        }
        let srow = &src[(i >> shift) * sw..((i >> shift) + 1) * sw];
        if g.stride == 2 {
            // Padded column 2 jj + phase is map column 2 jj + phase - 1: phase 0 holds the border
            // then the odd columns, phase 1 the even ones, zeros after. One pass over the column
            // pairs fills both (a per-phase strided gather was most of MobileNetV2's `prepare`).
            let (lo, hi) = dst.split_at_mut(g.row(1, prow));
            let (p0, p1) = (&mut lo[g.row(0, prow)..g.row(0, prow) + wph], &mut hi[..wph]);
            let pairs = sw / 2;
            p0[0] = 0.0;
            for ((pair, even), odd) in srow.chunks_exact(2).zip(p1.iter_mut()).zip(p0[1..].iter_mut()) {
                *even = pair[0];
                *odd = pair[1];
            }
            let evens = if sw % 2 == 1 {
                p1[pairs] = srow[sw - 1];
                pairs + 1
            } else {
                pairs
            };
            p1[evens..].fill(0.0);
            p0[1 + pairs..].fill(0.0);
            continue;
        }
        let d = &mut dst[g.row(0, prow)..g.row(0, prow) + wph];
        if up == 2 {
            // Map columns 2j hold the source; the others (and the border) are zeros.
            d.fill(0.0);
            for (jj, &v) in srow.iter().enumerate() {
                d[1 + 2 * jj] = v;
            }
        } else {
            d[0] = 0.0;
            d[1..1 + sw].copy_from_slice(srow);
            d[1 + sw..].fill(0.0);
        }
    }
}

/// The eval epilogue of an output vector in registers (no residual): folded batch norm, then
/// ReLU or ReLU6, the scalar epilogue's operations lane by lane.
#[derive(Clone, Copy)]
struct RegEpilogue<L> {
    scale: L,
    shift: L,
    relu: bool,
    relu6: bool,
}

impl<L: Lanes> RegEpilogue<L> {
    /// The epilogue with its activation fixed at compile time (`RELU` wins over `RELU6`, as in
    /// `conv::Epilogue`), for loops that choose it once instead of per vector.
    #[inline(always)]
    fn finish<const RELU: bool, const RELU6: bool>(self, acc: L) -> L {
        let acc = acc.mul(self.scale).add(self.shift);
        if RELU {
            acc.keep_where_positive(acc)
        } else if RELU6 {
            acc.relu6()
        } else {
            acc
        }
    }

    #[inline(always)]
    fn apply(self, acc: L) -> L {
        match (self.relu, self.relu6) {
            (true, _) => self.finish::<true, false>(acc),
            (false, true) => self.finish::<false, true>(acc),
            (false, false) => self.finish::<false, false>(acc),
        }
    }
}

/// The products `tap(i) * weight(i)` of taps (0,0) to (2,2), each rounded, added left to right:
/// every kernel's order (the plane, interleaved and in-place ones), so they give the same bits.
/// Written out (as a loop over the taps the compiler reloaded each weight and offset from the
/// stack for every vector).
#[inline(always)]
fn nine_products<L: Lanes>(tap: impl Fn(usize) -> L, weight: impl Fn(usize) -> L) -> L {
    let product = |i: usize| tap(i).mul(weight(i));
    let mut acc = product(0);
    acc = acc.add(product(1));
    acc = acc.add(product(2));
    acc = acc.add(product(3));
    acc = acc.add(product(4));
    acc = acc.add(product(5));
    acc = acc.add(product(6));
    acc = acc.add(product(7));
    acc.add(product(8))
}

/// One output vector: the products of the nine taps (`at + taps[i]` times `weight(i)`, (0,0) to
/// (2,2)) summed left to right (`nine_products`), then `epi`.
///
/// # Safety
/// The CPU must have `L`'s features; the nine vectors must be readable.
#[inline(always)]
unsafe fn window<L: Lanes>(
    at: *const f32,
    taps: &[usize; 9],
    weight: impl Fn(usize) -> L,
    epi: Option<RegEpilogue<L>>,
) -> L {
    let acc = nine_products(|i| L::load(at.add(taps[i])), weight);
    match epi {
        Some(e) => e.apply(acc),
        None => acc,
    }
}

/// One output plane from its padded plane `xp`: `out[p][q] = sum_{r,t} w[r][t] * M[p*s+r-1][q*s+t-1]`,
/// with `epi` (on output flat index `at0 + p * ow + q`, channel `ch`) applied row by row.
///
/// # Safety
/// The CPU must have `L`'s features.
#[inline(always)]
unsafe fn plane<L: Lanes>(
    xp: &[f32],
    g: &Geom,
    w: &[f32; 9],
    out: &mut [f32],
    epi: Option<(&Epilogue, usize, usize, usize)>,
) {
    // Vectors of 16 (AVX-512, plain arrays) or 8 lanes (AVX2: one register per vector, so the
    // nine broadcast weights stay in registers; as pairs of registers they were spilled).
    let lanes = L::WIDTH;
    assert!(V.is_multiple_of(lanes), "depthwise: vector width");
    assert!(xp.len() >= g.len() && out.len() == g.oh * g.ow, "depthwise: plane sizes");
    assert!((g.oh - 1) * g.stride + 2 < g.hp && g.owp + 2 / g.stride <= g.wph, "depthwise: geometry");
    let taps = g.taps();
    let base = xp.as_ptr();
    let mut tail = [0.0f32; V];
    // Without a residual (MobileNetV2's depthwise convs) the epilogue runs in registers, the
    // scalar epilogue's operations lane by lane: a call and a pass per row were 10% of
    // MobileNetV2's inference at rows of 7 to 112 pixels.
    let in_registers = match epi {
        Some((e, at0, pq, k)) if e.residual.is_none() => {
            let ch = (at0 / pq.max(1)) % k.max(1);
            Some(RegEpilogue {
                scale: L::splat(e.scale[ch]),
                shift: L::splat(e.shift[ch]),
                relu: e.relu,
                relu6: e.relu6,
            })
        }
        _ => None,
    };
    let wv: [L; 9] = std::array::from_fn(|i| L::splat(w[i]));
    let ctx = PlaneRows { base, g, taps: &taps, wv, lanes };
    // The activation is chosen here, once per plane: chosen per vector, it kept the compiler from
    // holding the weights in registers.
    match in_registers {
        None => ctx.run(out, &mut tail, |a| a),
        Some(e) => match (e.relu, e.relu6) {
            (true, _) => ctx.run(out, &mut tail, |a| e.finish::<true, false>(a)),
            (false, true) => ctx.run(out, &mut tail, |a| e.finish::<false, true>(a)),
            (false, false) => ctx.run(out, &mut tail, |a| e.finish::<false, false>(a)),
        },
    }
    if let (Some((e, at0, pq, k)), None) = (epi, in_registers) {
        for p in 0..g.oh {
            e.apply_slice(&mut out[p * g.ow..(p + 1) * g.ow], at0 + p * g.ow, pq, k);
        }
    }
}

/// What `plane`'s row loop reads.
struct PlaneRows<'a, L> {
    base: *const f32,
    g: &'a Geom,
    taps: &'a [usize; 9],
    wv: [L; 9],
    lanes: usize,
}

impl<L: Lanes> PlaneRows<'_, L> {
    /// Every output vector of the plane, `finish` applied before the store.
    ///
    /// # Safety
    /// As `plane`, whose asserts bound every read.
    #[inline(always)]
    unsafe fn run(&self, out: &mut [f32], tail: &mut [f32; V], finish: impl Fn(L) -> L) {
        let (g, lanes, out_len) = (self.g, self.lanes, out.len());
        for p in 0..g.oh {
            for q0 in (0..g.ow.next_multiple_of(lanes)).step_by(lanes) {
                // Tap (r, t) reads phase t % st, column q0 + t / st of padded row p * st + r: in
                // bounds by `plane`'s asserts (the phase planes follow each other).
                let at_in = self.base.add(g.row(0, p * g.stride) + q0);
                let acc = finish(window(at_in, self.taps, |i| self.wv[i], None));
                // A vector that runs past its row spills into the rows below, which are computed
                // (and overwritten) later; only at the end of the plane does it go through
                // `tail`. Small maps (rows of 7 or 14) are all tails: a copy each was 8% of
                // MobileNetV2.
                let at = p * g.ow + q0;
                if at + lanes <= out_len {
                    acc.store(out.as_mut_ptr().add(at));
                } else {
                    acc.store(tail.as_mut_ptr());
                    let n = (g.ow - q0).min(out_len - at);
                    out[at..at + n].copy_from_slice(&tail[..n]);
                }
            }
        }
    }
}

/// Nine accumulators `acc[r*3+t] += dy[p][q] * M[p*s+r-1][q*s+t-1]` over one plane (`dyp`: the
/// output gradient with rows padded to `owp` by zeros).
///
/// # Safety
/// The CPU must have `L`'s features.
#[inline(always)]
unsafe fn plane_wgrad<L: Lanes>(xp: &[f32], dyp: &[f32], g: &Geom, acc: &mut [L; 9]) {
    assert!(L::WIDTH == V && xp.len() >= g.len() && dyp.len() >= g.oh * g.owp, "depthwise: plane sizes");
    assert!((g.oh - 1) * g.stride + 2 < g.hp && g.owp + 2 / g.stride <= g.wph, "depthwise: geometry");
    let (st, taps) = (g.stride, g.taps());
    let base = xp.as_ptr();
    for p in 0..g.oh {
        for q0 in (0..g.owp).step_by(V) {
            let d = L::load(dyp.as_ptr().add(p * g.owp + q0));
            let at = base.add(g.row(0, p * st) + q0);
            for (a, &off) in acc.iter_mut().zip(&taps) {
                *a = a.add(L::load(at.add(off)).mul(d));
            }
        }
    }
}

/// `plane` in the build `isa` chose.
fn plane_any(
    isa: Isa,
    xp: &[f32],
    g: &Geom,
    w: &[f32; 9],
    out: &mut [f32],
    epi: Option<(&Epilogue, usize, usize, usize)>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide16(
            xp: &[f32],
            g: &Geom,
            w: &[f32; 9],
            out: &mut [f32],
            epi: Option<(&Epilogue, usize, usize, usize)>,
        ) {
            plane::<Wide<__m512>>(xp, g, w, out, epi)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide8(
            xp: &[f32],
            g: &Geom,
            w: &[f32; 9],
            out: &mut [f32],
            epi: Option<(&Epilogue, usize, usize, usize)>,
        ) {
            plane::<Wide<__m256>>(xp, g, w, out, epi)
        }
        match isa {
            // SAFETY: `isa()` names only instruction sets the CPU has.
            Isa::Avx512 => return unsafe { wide16(xp, g, w, out, epi) },
            Isa::Avx2 => return unsafe { wide8(xp, g, w, out, epi) },
            Isa::Portable => {}
        }
    }
    let _ = isa;
    // SAFETY: plain arrays need no CPU feature.
    unsafe { plane::<[f32; V]>(xp, g, w, out, epi) }
}

/// Per-thread scratch: a padded plane and a padded output-gradient plane.
struct Scratch {
    xp: Vec<f32>,
    dyp: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { xp: Vec::new(), dyp: Vec::new() }) };
}

fn check_sizes(s: &ConvShape, w: &[f32]) {
    assert!(supports(s), "depthwise conv: unsupported shape {s:?}");
    assert_eq!(w.len(), s.c_out * 9, "depthwise conv: weight size");
}

/// Forward convolution (`supports(s)` must hold), with `epi` applied to each output row while
/// it is in cache.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    check_forward(x, w, s, epi);
    #[cfg(target_arch = "x86_64")]
    if in_place::takes(isa()) {
        // SAFETY: `isa()` names only instruction sets the CPU has.
        return unsafe { in_place::forward(isa(), x, w, s, epi) };
    }
    if s.out_w <= INTERLEAVED_MAX_OW {
        forward_interleaved(x, w, s, epi)
    } else {
        planes_forward(x, w, s, epi)
    }
}

/// `forward` by the plane kernel at every map size (tests compare it with the interleaved one).
#[doc(hidden)]
pub fn forward_planes(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    check_forward(x, w, s, epi);
    planes_forward(x, w, s, epi)
}

fn check_forward(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) {
    check_sizes(s, w);
    assert_eq!(x.len(), s.n * s.c_in * s.h * s.w, "depthwise conv: input size");
    let (c, pq) = (s.c_in, s.out_h * s.out_w);
    if let Some(e) = epi {
        assert!(e.scale.len() == c && e.shift.len() == c, "depthwise conv: epilogue size");
        assert!(e.residual.is_none_or(|r| r.len() == s.n * c * pq), "depthwise conv: residual size");
    }
}

fn planes_forward(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    let (c, pq) = (s.c_in, s.out_h * s.out_w);
    // Every output is written by its plane's task.
    let mut y = pool::take(s.n * c * pq);
    let g = Geom::new(s.h, s.stride, s.out_h, s.out_w);
    let (isa, hw) = (isa(), s.h * s.w);
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut y, pq, |i, out| {
        let ch = i % c;
        let wk: [f32; 9] = w[ch * 9..ch * 9 + 9].try_into().unwrap();
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            prepare(&x[i * hw..(i + 1) * hw], s.h, s.w, 1, &g, &mut sc.xp);
            plane_any(isa, &sc.xp, &g, &wk, out, epi.map(|e| (e, i * pq, pq, c)));
        });
    });
    y
}

/// Output maps at most this wide take `forward_interleaved` (the portable build). On small maps
/// the plane kernel spends most of its time per plane, not per output: MobileNetV2's last 12 depthwise layers
/// (7 and 14 pixels, 10% of their MACs) were half their time at batch 1, at 8-19 GFLOP/s on a
/// Zen 3 core pair against 25-45 on the larger maps. At batch 1 on that pair (`cargo bench
/// --bench conv -- dw_b1`, `forward_bn_relu6`, interleaved against planes, two runs): 0.34-0.57x
/// the time at 960x7, 0.36-0.80x at 14, 0.57-0.86x at 28; at 56 and 112 the planes were 5-15%
/// faster.
const INTERLEAVED_MAX_OW: usize = 28;

/// The output, written by disjoint tasks (each a block of channels of one image).
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task of `forward_interleaved` writes only its own channels of its own image.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `at + len` is within the output, and no other task uses that range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, at: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

/// Per-thread scratch of `forward_interleaved`: one block's input and output, interleaved.
struct BlockScratch {
    xi: Vec<f32>,
    yi: Vec<f32>,
}

thread_local! {
    static BLOCK_SCRATCH: RefCell<BlockScratch> = const { RefCell::new(BlockScratch { xi: Vec::new(), yi: Vec::new() }) };
}

/// The forward for small maps, `V` channels at a time: a block's input planes are interleaved
/// (`V` channels per pixel, zero border and zero lanes past the last channel), each output
/// pixel of the block is one vector, and the vectors are spread back into the planes. Each
/// lane does the plane kernel's operations in its order (taps (0,0) to (2,2) multiplied and
/// added, the epilogue in registers or, with a residual, after the store), on the same zeros
/// at the border, so the two give the same bits.
fn forward_interleaved(x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    let (c, pq, hw) = (s.c_in, s.out_h * s.out_w, s.h * s.w);
    let mut y = pool::take(s.n * c * pq);
    let blocks = c.div_ceil(V);
    let out = Out(y.as_mut_ptr());
    team::for_each_on(s.n < team::SHORT_BATCH, s.n * blocks, |task| {
        let (img, c0) = (task / blocks, (task % blocks) * V);
        let cn = V.min(c - c0);
        let at0 = (img * c + c0) * pq;
        let planes = &x[(img * c + c0) * hw..(img * c + c0 + cn) * hw];
        // SAFETY: tasks write disjoint ranges: channels c0..c0 + cn of image img.
        let dst = unsafe { out.range(at0, cn * pq) };
        BLOCK_SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            let block = Block { x: planes, w: &w[c0 * 9..(c0 + cn) * 9], cn, s, epi: epi.map(|e| (e, at0, c0)) };
            block_any(&block, sc, dst);
        });
    });
    y
}

/// One task of `forward_interleaved`: channels `c0..c0 + cn` of one image (`epi` with the flat
/// output index of the block's first output and `c0`).
struct Block<'a> {
    x: &'a [f32],
    w: &'a [f32],
    cn: usize,
    s: &'a ConvShape,
    epi: Option<(&'a Epilogue<'a>, usize, usize)>,
}

/// One block on plain arrays: the interleaved kernel runs only where the in-place one has no
/// build (the portable build), so it has no vector build of its own.
fn block_any(b: &Block, sc: &mut BlockScratch, out: &mut [f32]) {
    // SAFETY: plain arrays need no CPU feature.
    unsafe { block::<[f32; V]>(b, sc, out) }
}

/// # Safety
/// The CPU must have `L`'s features.
#[inline(always)]
unsafe fn block<L: Lanes>(b: &Block, sc: &mut BlockScratch, out: &mut [f32]) {
    let (s, cn) = (b.s, b.cn);
    let (hw, pq, st) = (s.h * s.w, s.out_h * s.out_w, s.stride);
    let wp = s.w + 2;
    assert!(
        L::WIDTH == V && cn <= V && b.x.len() == cn * hw && b.w.len() == cn * 9 && out.len() == cn * pq,
        "depthwise: block sizes"
    );
    assert!((s.out_h - 1) * st + 2 < s.h + 2 && (s.out_w - 1) * st + 2 < wp, "depthwise: block geometry");
    let xi = &mut sc.xi;
    xi.clear();
    xi.resize((s.h + 2) * wp * V, 0.0);
    // Pixel (i, j) of the map sits at row i + 1, column j + 1 of the bordered map, lane l.
    for (l, plane) in b.x.chunks_exact(hw).enumerate() {
        for (i, row) in plane.chunks_exact(s.w).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                xi[((i + 1) * wp + 1 + j) * V + l] = v;
            }
        }
    }
    // Per tap, the block's weights as one vector (zeros past the last channel).
    let mut lanes = [0.0f32; V];
    let wv: [L; 9] = std::array::from_fn(|tap| {
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = if l < cn { b.w[l * 9 + tap] } else { 0.0 };
        }
        L::load(lanes.as_ptr())
    });
    let in_registers = match b.epi {
        Some((e, _, c0)) if e.residual.is_none() => {
            let splat = |src: &[f32]| {
                let mut lanes = [0.0f32; V];
                lanes[..cn].copy_from_slice(&src[c0..c0 + cn]);
                L::load(lanes.as_ptr())
            };
            Some(RegEpilogue { scale: splat(e.scale), shift: splat(e.shift), relu: e.relu, relu6: e.relu6 })
        }
        _ => None,
    };
    let taps: [usize; 9] = std::array::from_fn(|tap| ((tap / 3) * wp + tap % 3) * V);
    let yi = &mut sc.yi;
    yi.resize(pq * V, 0.0);
    let base = xi.as_ptr();
    for p in 0..s.out_h {
        for q in 0..s.out_w {
            // In bounds by the geometry assert: the last tap reads row (oh-1)*st+2, column (ow-1)*st+2.
            let acc = window(base.add(((p * st) * wp + q * st) * V), &taps, |i| wv[i], in_registers);
            acc.store(yi.as_mut_ptr().add((p * s.out_w + q) * V));
        }
    }
    for (l, plane) in out.chunks_exact_mut(pq).enumerate() {
        for (pix, o) in plane.iter_mut().enumerate() {
            *o = yi[pix * V + l];
        }
    }
    if let (Some((e, at0, _)), None) = (b.epi, in_registers) {
        for (l, plane) in out.chunks_exact_mut(pq).enumerate() {
            e.apply_slice(plane, at0 + l * pq, pq, s.c_in);
        }
    }
}

/// Backward-data: the stride-1 forward of the (zero-inserted, for stride 2) output gradient
/// with the filter rotated by 180 degrees.
pub fn backward_data(dy: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    check_sizes(s, w);
    let (c, pq, hw) = (s.c_in, s.out_h * s.out_w, s.h * s.w);
    assert_eq!(dy.len(), s.n * c * pq, "depthwise conv: output gradient size");
    // dx[i][j] = sum_{r,t} M[i + r - 1][j + t - 1] * w[2 - r][2 - t], M[s p][s q] = dy[p][q].
    let isa = isa();
    #[cfg(target_arch = "x86_64")]
    if s.stride == 1 && in_place::takes(isa) {
        // At stride 1 that is this shape's forward of dy with the rotated filters.
        let rotated: Vec<f32> = (0..c * 9).map(|i| w[i / 9 * 9 + 8 - i % 9]).collect();
        // SAFETY: `isa()` names only instruction sets the CPU has.
        return unsafe { in_place::forward(isa, dy, &rotated, s, None) };
    }
    let mut dx = pool::take(s.n * c * hw);
    let g = Geom::new(s.h, 1, s.h, s.w);
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut dx, hw, |i, out| {
        let ch = i % c;
        let wk: [f32; 9] = std::array::from_fn(|tap| w[ch * 9 + 8 - tap]);
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            prepare(&dy[i * pq..(i + 1) * pq], s.out_h, s.out_w, s.stride, &g, &mut sc.xp);
            plane_any(isa, &sc.xp, &g, &wk, out, None);
        });
    });
    dx
}

/// Backward-weight: per channel, nine 16-lane accumulators over every image and row in order,
/// then each accumulator's lanes summed in order.
pub fn backward_weight(dy: &[f32], x: &[f32], s: &ConvShape) -> Vec<f32> {
    let c = s.c_in;
    assert!(supports(s), "depthwise conv: unsupported shape {s:?}");
    let (pq, hw) = (s.out_h * s.out_w, s.h * s.w);
    assert_eq!(x.len(), s.n * c * hw, "depthwise conv: input size");
    assert_eq!(dy.len(), s.n * c * pq, "depthwise conv: output gradient size");
    let mut dw = vec![0.0f32; c * 9];
    let g = Geom::new(s.h, s.stride, s.out_h, s.out_w);
    let isa = isa();
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut dw, 9, |ch, out| {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            let sums = channel_wgrad(isa, dy, x, s, &g, ch, sc);
            out.copy_from_slice(&sums);
        });
    });
    dw
}

/// The nine weight gradients of channel `ch`.
fn channel_wgrad(isa: Isa, dy: &[f32], x: &[f32], s: &ConvShape, g: &Geom, ch: usize, sc: &mut Scratch) -> [f32; 9] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide16(dy: &[f32], x: &[f32], s: &ConvShape, g: &Geom, ch: usize, sc: &mut Scratch) -> [f32; 9] {
            channel_wgrad_with::<Wide<__m512>>(dy, x, s, g, ch, sc)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide8(dy: &[f32], x: &[f32], s: &ConvShape, g: &Geom, ch: usize, sc: &mut Scratch) -> [f32; 9] {
            channel_wgrad_with::<Pair<Wide<__m256>>>(dy, x, s, g, ch, sc)
        }
        match isa {
            // SAFETY: `isa()` names only instruction sets the CPU has.
            Isa::Avx512 => return unsafe { wide16(dy, x, s, g, ch, sc) },
            Isa::Avx2 => return unsafe { wide8(dy, x, s, g, ch, sc) },
            Isa::Portable => {}
        }
    }
    let _ = isa;
    // SAFETY: plain arrays need no CPU feature.
    unsafe { channel_wgrad_with::<[f32; V]>(dy, x, s, g, ch, sc) }
}

/// # Safety
/// The CPU must have `L`'s features.
#[inline(always)]
unsafe fn channel_wgrad_with<L: Lanes>(
    dy: &[f32],
    x: &[f32],
    s: &ConvShape,
    g: &Geom,
    ch: usize,
    sc: &mut Scratch,
) -> [f32; 9] {
    let (c, pq, hw) = (s.c_in, s.out_h * s.out_w, s.h * s.w);
    let zero = L::splat(0.0);
    let mut acc = [zero; 9];
    sc.dyp.resize(g.oh * g.owp, 0.0);
    for img in 0..s.n {
        let i = img * c + ch;
        prepare(&x[i * hw..(i + 1) * hw], s.h, s.w, 1, g, &mut sc.xp);
        let d = &dy[i * pq..(i + 1) * pq];
        for p in 0..g.oh {
            let row = &mut sc.dyp[p * g.owp..(p + 1) * g.owp];
            row[..g.ow].copy_from_slice(&d[p * g.ow..(p + 1) * g.ow]);
            row[g.ow..].fill(0.0);
        }
        plane_wgrad::<L>(&sc.xp, &sc.dyp, g, &mut acc);
    }
    std::array::from_fn(|tap| {
        let mut lanes = [0.0f32; V];
        acc[tap].store(lanes.as_mut_ptr());
        lanes.iter().fold(0.0f32, |a, &b| a + b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plane's vectors may spill into its later rows, never past its end: the floats after the
    /// plane keep their bits, and every output is the 3x3 sum (small maps: every row a tail).
    #[test]
    fn plane_writes_only_its_own_outputs() {
        for &(h, w, stride) in &[(7usize, 7usize, 1usize), (14, 14, 2), (9, 19, 1), (1, 1, 1), (3, 40, 2)] {
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let g = Geom::new(h, stride, oh, ow);
            let x: Vec<f32> = (0..h * w).map(|v| ((v * 37) % 11) as f32 - 5.0).collect();
            let wk: [f32; 9] = std::array::from_fn(|t| t as f32 * 0.25 - 1.0);
            let mut xp = Vec::new();
            prepare(&x, h, w, 1, &g, &mut xp);
            let at = |i: isize, j: isize| {
                if i < 0 || j < 0 || i >= h as isize || j >= w as isize {
                    0.0
                } else {
                    x[i as usize * w + j as usize]
                }
            };
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                if isa > Isa::detected() {
                    continue;
                }
                let sentinel = f32::from_bits(0x7fc0_1234);
                let mut buf = vec![sentinel; oh * ow + 2 * V];
                plane_any(isa, &xp, &g, &wk, &mut buf[..oh * ow], None);
                assert!(buf[oh * ow..].iter().all(|v| v.to_bits() == sentinel.to_bits()), "{isa:?} {h}x{w} s{stride}");
                for p in 0..oh {
                    for q in 0..ow {
                        let mut want = 0.0f32;
                        for (tap, &wt) in wk.iter().enumerate() {
                            let (r, t) = ((tap / 3) as isize, (tap % 3) as isize);
                            let v = at((p * stride) as isize + r - 1, (q * stride) as isize + t - 1) * wt;
                            want = if tap == 0 { v } else { want + v };
                        }
                        assert_eq!(buf[p * ow + q], want, "{isa:?} {h}x{w} s{stride} at ({p}, {q})");
                    }
                }
            }
        }
    }

    /// The padded plane holds the map at `(1 + up i, 1 + up j)` in phase `(1 + up j) % stride`.
    #[test]
    fn prepare_places_the_map() {
        for &(h, w, stride, up) in
            &[(5usize, 7usize, 1usize, 1usize), (6, 5, 2, 1), (6, 6, 2, 1), (4, 1, 2, 1), (9, 33, 2, 1), (7, 9, 1, 2)]
        {
            let (sh, sw) = if up == 1 { (h, w) } else { (h.div_ceil(2), w.div_ceil(2)) };
            let src: Vec<f32> = (0..sh * sw).map(|v| v as f32 + 1.0).collect();
            let oh = (h - 1) / stride + 1;
            let ow = (w - 1) / stride + 1;
            let g = Geom::new(h, stride, oh, ow);
            let mut dst = vec![f32::NAN; 3];
            prepare(&src, sh, sw, up, &g, &mut dst);
            let mut seen = 0;
            for phase in 0..stride {
                for prow in 0..g.hp {
                    for jj in 0..g.wph {
                        let v = dst[g.row(phase, prow) + jj];
                        let (i, j) = (prow as isize - 1, (jj * stride + phase) as isize - 1);
                        let inside = i >= 0 && j >= 0 && i % up as isize == 0 && j % up as isize == 0;
                        let (si, sj) = (i / up as isize, j / up as isize);
                        if inside && (si as usize) < sh && (sj as usize) < sw {
                            assert_eq!(v, src[si as usize * sw + sj as usize]);
                            seen += 1;
                        } else {
                            assert_eq!(v, 0.0);
                        }
                    }
                }
            }
            assert_eq!(seen, sh * sw);
        }
    }
}
