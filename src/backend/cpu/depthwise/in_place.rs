//! The forward that reads each input plane where it lies, masked loads standing in for the
//! zero border, so there is no padded copy (the plane kernel's `prepare`) and no interleaving
//! (the small-map kernel's transposes), which were most of the depthwise layers' time on
//! AVX-512 machines, where the arithmetic is cheap. AVX2's build uses `vmaskmovps` on the
//! vectors that touch the border and plain loads elsewhere, 8 outputs a vector.
//!
//! Stride 1 treats a plane as one flat row: output pixel `f` reads input `f + (r - 1) w + t - 1`
//! for tap `(r, t)`, so 16 consecutive outputs are 16 consecutive inputs per tap whatever the
//! row length (a 7x7 map is 4 vectors, not 7 mostly empty ones), and a tap's lanes that fall
//! outside the map (another row's pixel, or outside the plane) are masked to zero. The masks
//! depend only on the map's size and are made once per size (`flat_masks`).
//!
//! Stride 2 goes row by row: two loads of 16 input columns deinterleaved by `vpermt2ps` give
//! taps (r, 0) and (r, 1) of 16 outputs, two more shifted by two columns give (r, 2) (AVX2:
//! two loads of 8 and `vshufps` + `vpermpd` per tap, 8 outputs).
//!
//! Every output is the other kernels' sum in their order: the products of taps (0,0) to (2,2),
//! each `x * w` rounded, added left to right, with the border's zeros in the same places, then
//! the same epilogue. So the bits are those of the plane kernel in every build.

use super::{nine_products, RegEpilogue, V};
use crate::backend::cpu::conv::Epilogue;
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::lanes::Wide;
use crate::backend::cpu::simd::Reg;
use crate::backend::cpu::team;
use crate::backend::ConvShape;
use crate::tensor::pool;
use std::arch::x86_64::*;
use std::sync::{Arc, Mutex};

/// Per vector of 16 flat outputs of a stride-1 plane: the lanes each tap reads (bit `l` for
/// output `16 v + l`), then the lanes inside the plane (the store's).
type FlatMasks = [u16; 10];

/// How many map sizes `flat_masks` keeps (a net has a handful).
const MASK_SIZES: usize = 16;

/// The stride-1 masks of an `h x w` map, made once per size.
fn flat_masks(h: usize, w: usize) -> Arc<[FlatMasks]> {
    type Cache = Mutex<Vec<((usize, usize), Arc<[FlatMasks]>)>>;
    static CACHE: Cache = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = cache.iter().find(|(k, _)| *k == (h, w)) {
        return m.clone();
    }
    let hw = h * w;
    let masks: Arc<[FlatMasks]> = (0..hw.div_ceil(V))
        .map(|v| {
            let mut m = [0u16; 10];
            for l in 0..V {
                let f = v * V + l;
                if f >= hw {
                    break;
                }
                let (i, j) = (f / w, f % w);
                for (tap, bits) in m[..9].iter_mut().enumerate() {
                    let (r, t) = (tap / 3, tap % 3);
                    let inside =
                        (r != 0 || i > 0) && (r != 2 || i + 1 < h) && (t != 0 || j > 0) && (t != 2 || j + 1 < w);
                    *bits |= (inside as u16) << l;
                }
                m[9] |= 1 << l;
            }
            m
        })
        .collect();
    if cache.len() == MASK_SIZES {
        cache.remove(0);
    }
    cache.push(((h, w), masks.clone()));
    masks
}

/// Stride-2 outputs at most this wide take two rows per vector (its input columns, -1 to
/// 2 ow - 1, fit one vector); one row per vector left 9 of 16 lanes idle at 7 pixels and was
/// slower than the interleaved kernel there.
const PAIRED_MAX_OW: usize = 7;

/// Per block of 16 output columns of a stride-2 row: the lanes of the four loads (input
/// columns from `2 q0 - 1`, `+ 16`, `+ 2`, `+ 18`) inside the row, then the output lanes.
fn row_masks(w: usize, ow: usize) -> Vec<[u16; 5]> {
    let inside = |c0: isize| -> u16 {
        (0..V).filter(|&l| (0..w as isize).contains(&(c0 + l as isize))).fold(0, |m, l| m | 1 << l)
    };
    (0..ow.div_ceil(V))
        .map(|b| {
            let c0 = 2 * (b * V) as isize - 1;
            let out = (0..V).filter(|&l| b * V + l < ow).fold(0u16, |m, l| m | 1 << l);
            [inside(c0), inside(c0 + 16), inside(c0 + 2), inside(c0 + 18), out]
        })
        .collect()
}

/// Whether `forward` has a build for `isa` (AVX2 or AVX-512).
pub(super) fn takes(isa: Isa) -> bool {
    isa >= Isa::Avx2
}

/// The forward (shapes checked by the caller, `takes(isa)`).
///
/// # Safety
/// The CPU must have `isa`'s instruction sets.
pub(super) unsafe fn forward(isa: Isa, x: &[f32], w: &[f32], s: &ConvShape, epi: Option<&Epilogue>) -> Vec<f32> {
    assert!(takes(isa), "depthwise: no in-place build under {isa:?}");
    let (c, hw, pq) = (s.c_in, s.h * s.w, s.out_h * s.out_w);
    let mut y = pool::take(s.n * c * pq);
    let flat = if s.stride == 1 { Some(flat_masks(s.h, s.w)) } else { None };
    let paired = isa == Isa::Avx512 && s.out_w <= PAIRED_MAX_OW;
    let rows = if s.stride == 2 && !paired { row_masks(s.w, s.out_w) } else { Vec::new() };
    // Planes per task: a task claims its index from a shared counter, so 7x7 planes (49
    // outputs) one at a time spent as long claiming as computing.
    let per_task = (4096 / pq).clamp(1, (s.n * c).div_ceil(8).max(1));
    team::for_each_chunk_mut(s.n < team::SHORT_BATCH, &mut y, per_task * pq, |task, outs| {
        for (k, out) in outs.chunks_exact_mut(pq).enumerate() {
            let i = task * per_task + k;
            let ch = i % c;
            let wk: &[f32; 9] = w[ch * 9..ch * 9 + 9].try_into().unwrap();
            let plane = Plane { x: &x[i * hw..(i + 1) * hw], w: wk, s, flat: flat.as_deref(), rows: &rows };
            let epi = epi.map(|e| (e, i * pq, ch));
            // SAFETY: the caller's contract; `takes` held.
            unsafe {
                match isa {
                    Isa::Avx512 => run512(&plane, out, epi),
                    _ => run256(&plane, out, epi),
                }
            }
        }
    });
    y
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run512(plane: &Plane, out: &mut [f32], epi: Option<(&Epilogue, usize, usize)>) {
    plane.run::<__m512>(out, epi)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn run256(plane: &Plane, out: &mut [f32], epi: Option<(&Epilogue, usize, usize)>) {
    plane.run::<__m256>(out, epi)
}

/// A register type with an in-place kernel: every output vector of a plane, `finish` applied
/// before the store.
trait InPlace: Reg {
    /// # Safety
    /// The CPU must have the register's features.
    unsafe fn outputs(plane: &Plane, wv: &[Self; 9], out: &mut [f32], finish: impl Fn(Self) -> Self);
}

impl InPlace for __m512 {
    #[inline(always)]
    unsafe fn outputs(plane: &Plane, wv: &[Self; 9], out: &mut [f32], finish: impl Fn(Self) -> Self) {
        plane.outputs512(wv, out, finish)
    }
}

impl InPlace for __m256 {
    #[inline(always)]
    unsafe fn outputs(plane: &Plane, wv: &[Self; 9], out: &mut [f32], finish: impl Fn(Self) -> Self) {
        plane.outputs256(wv, out, finish)
    }
}

/// The nine products `t[i] * w[i]` in the other kernels' order (`nine_products`), then `finish`.
#[inline(always)]
fn sum9<R: Reg>(t: [R; 9], w: &[R; 9], finish: &impl Fn(R) -> R) -> R {
    finish(nine_products(|i| Wide(t[i]), |i| Wide(w[i])).0)
}

/// `f(0), ..., f(8)`, written out (`array::from_fn` was left as a call per element).
#[inline(always)]
fn nine<T>(f: impl Fn(usize) -> T) -> [T; 9] {
    [f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8)]
}

/// AVX2's `vmaskmovps` mask for each 8-bit lane pattern (lane `l` on where bit `l` is).
static LANE_MASKS: [[i32; 8]; 256] = {
    let mut t = [[0i32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut l = 0;
        while l < 8 {
            t[b][l] = if b & (1 << l) != 0 { -1 } else { 0 };
            l += 1;
        }
        b += 1;
    }
    t
};

/// One (image, channel) plane's work.
struct Plane<'a> {
    x: &'a [f32],
    w: &'a [f32; 9],
    s: &'a ConvShape,
    flat: Option<&'a [FlatMasks]>,
    rows: &'a [[u16; 5]],
}

impl Plane<'_> {
    /// The output plane, with `epi` (at flat output index `at0`, channel `ch`): in registers
    /// without a residual, as the plane kernel does, else a pass over the stored plane.
    #[inline(always)]
    unsafe fn run<R: InPlace>(&self, out: &mut [f32], epi: Option<(&Epilogue, usize, usize)>) {
        let wv: [R; 9] = nine(|i| R::splat(self.w[i]));
        match epi {
            Some((e, _, ch)) if e.residual.is_none() => {
                let r = RegEpilogue {
                    scale: Wide(R::splat(e.scale[ch])),
                    shift: Wide(R::splat(e.shift[ch])),
                    relu: e.relu,
                    relu6: e.relu6,
                };
                // The activation chosen once per plane, as in the plane kernel.
                match (e.relu, e.relu6) {
                    (true, _) => R::outputs(self, &wv, out, |a| r.finish::<true, false>(Wide(a)).0),
                    (false, true) => R::outputs(self, &wv, out, |a| r.finish::<false, true>(Wide(a)).0),
                    (false, false) => R::outputs(self, &wv, out, |a| r.finish::<false, false>(Wide(a)).0),
                }
            }
            _ => R::outputs(self, &wv, out, |a| a),
        }
        if let Some((e, at0, _)) = epi.filter(|(e, _, _)| e.residual.is_some()) {
            e.apply_slice(out, at0, out.len(), self.s.c_in);
        }
    }

    /// The AVX2 build: each 16-lane mask as two 8-lane halves, `vmaskmovps` where a load's half
    /// is not whole (a masked-off lane is never read), plain loads where every load's is; at
    /// stride 2 each tap row's even and odd columns by `vshufps` + `vpermpd` from two loads.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn outputs256(&self, wv: &[__m256; 9], out: &mut [f32], finish: impl Fn(__m256) -> __m256) {
        let s = self.s;
        assert!(self.x.len() == s.h * s.w && out.len() == s.out_h * s.out_w, "depthwise: plane sizes");
        let Some(masks) = self.flat else {
            return self.stride2_256(wv, out, finish);
        };
        assert!(s.stride == 1 && masks.len() == out.len().div_ceil(V), "depthwise: stride-1 masks");
        let (base, w) = (self.x.as_ptr(), s.w as isize);
        let offs: [isize; 9] = nine(|tap| (tap / 3) as isize * w - w + (tap % 3) as isize - 1);
        for (v, m) in masks.iter().enumerate() {
            for half in 0..2 {
                let f0 = v * V + 8 * half;
                if f0 >= out.len() {
                    break;
                }
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_offset(f0 as isize + w + 8 * V as isize).cast());
                let bits = |k: usize| (m[k] >> (8 * half)) as u8;
                let at = |tap: usize| base.wrapping_offset(f0 as isize + offs[tap]);
                let whole = nine(bits).iter().all(|&b| b == u8::MAX);
                let t = if whole {
                    // Every lane's taps are inside the plane.
                    nine(|tap| _mm256_loadu_ps(at(tap)))
                } else {
                    nine(|tap| {
                        _mm256_maskload_ps(at(tap), _mm256_loadu_si256(LANE_MASKS[bits(tap) as usize].as_ptr().cast()))
                    })
                };
                let y = sum9(t, wv, &finish);
                if bits(9) == u8::MAX {
                    _mm256_storeu_ps(out.as_mut_ptr().add(f0), y);
                } else {
                    _mm256_maskstore_ps(
                        out.as_mut_ptr().add(f0),
                        _mm256_loadu_si256(LANE_MASKS[bits(9) as usize].as_ptr().cast()),
                        y,
                    );
                }
            }
        }
    }

    /// `outputs256` at stride 2: 8 outputs a vector, taps (r, 0) and (r, 1) the even and odd
    /// columns of the 16 from `2 q0 - 1`, tap (r, 2) the even ones of the 16 from `2 q0 + 1`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn stride2_256(&self, wv: &[__m256; 9], out: &mut [f32], finish: impl Fn(__m256) -> __m256) {
        let s = self.s;
        assert!(s.stride == 2 && self.rows.len() == s.out_w.div_ceil(V), "depthwise: stride-2 masks");
        let lanes = |bits: u8| _mm256_loadu_si256(LANE_MASKS[bits as usize].as_ptr().cast());
        // Lanes 0, 2, 4, 6 (imm 0x88) or 1, 3, 5, 7 (0xdd) of `a` then of `b`: `vshufps` picks
        // them per 128-bit half, `vpermpd` puts the halves' pairs in order.
        let even = |a: __m256, b: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b))))
        };
        let odd = |a: __m256, b: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(_mm256_shuffle_ps::<0xdd>(a, b))))
        };
        let base = self.x.as_ptr();
        for p in 0..s.out_h {
            // Input rows 2p - 1, 2p, 2p + 1, or none outside the map (their taps stay zero).
            let at = |r: usize| {
                let i = (2 * p + r).wrapping_sub(1);
                (i < s.h).then(|| base.wrapping_add(i * s.w))
            };
            let row = [at(0), at(1), at(2)];
            // The next output row's two new input rows, while this row's are computed.
            for next in [at(3), at(4)].into_iter().flatten() {
                for line in (0..s.w).step_by(V) {
                    _mm_prefetch::<_MM_HINT_T0>(next.add(line).cast());
                }
            }
            for (b, m) in self.rows.iter().enumerate() {
                for half in 0..2 {
                    let q0 = b * V + 8 * half;
                    if q0 >= s.out_w {
                        break;
                    }
                    // This half's share of `row_masks`' four loads (columns from 2 q0 - 1, + 8,
                    // + 2, + 10) and of its output lanes.
                    let bits = [m[half] as u8, (m[half] >> 8) as u8, m[2 + half] as u8, (m[2 + half] >> 8) as u8];
                    let whole = bits.iter().all(|&b| b == u8::MAX);
                    let c0 = 2 * q0 as isize - 1;
                    let mut t = [_mm256_setzero_ps(); 9];
                    for (r, at) in row.iter().enumerate() {
                        let Some(at) = *at else { continue };
                        let ld = |k: usize, off: isize| {
                            let from = at.wrapping_offset(c0 + off);
                            if whole {
                                _mm256_loadu_ps(from)
                            } else {
                                _mm256_maskload_ps(from, lanes(bits[k]))
                            }
                        };
                        let (lo, hi, lo2, hi2) = (ld(0, 0), ld(1, 8), ld(2, 2), ld(3, 10));
                        t[3 * r] = even(lo, hi);
                        t[3 * r + 1] = odd(lo, hi);
                        t[3 * r + 2] = even(lo2, hi2);
                    }
                    let y = sum9(t, wv, &finish);
                    let keep = (m[4] >> (8 * half)) as u8;
                    let to = out.as_mut_ptr().add(p * s.out_w + q0);
                    if keep == u8::MAX {
                        _mm256_storeu_ps(to, y);
                    } else {
                        _mm256_maskstore_ps(to, lanes(keep), y);
                    }
                }
            }
        }
    }

    /// The AVX-512 build: masked loads and stores, `vpermt2ps` for stride 2.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn outputs512(&self, wv: &[__m512; 9], out: &mut [f32], finish: impl Fn(__m512) -> __m512) {
        let s = self.s;
        assert!(self.x.len() == s.h * s.w && out.len() == s.out_h * s.out_w, "depthwise: plane sizes");
        let sum = |t: [__m512; 9]| sum9(t, wv, &finish);
        let base = self.x.as_ptr();
        match self.flat {
            Some(masks) => {
                assert!(s.stride == 1 && masks.len() == out.len().div_ceil(V), "depthwise: stride-1 masks");
                let w = s.w as isize;
                let offs: [isize; 9] = nine(|tap| (tap / 3) as isize * w - w + (tap % 3) as isize - 1);
                for (v, m) in masks.iter().enumerate() {
                    let f0 = (v * V) as isize;
                    // The lowest tap row, 8 cache lines ahead (a hint: never faults).
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_offset(f0 + w + 8 * V as isize).cast());
                    // A lane's bit is set only where its input pixel is inside the plane (built by
                    // `flat_masks`), so a pointer outside it is never read through.
                    let t = nine(|tap| _mm512_maskz_loadu_ps(m[tap], base.wrapping_offset(f0 + offs[tap])));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(v * V), m[9], sum(t));
                }
            }
            None if s.out_w <= PAIRED_MAX_OW => {
                // Input columns -1 ..= 2 ow - 1 of a row fit one vector: rows 2p - 1 to 2p + 3 are
                // five loads, and output rows p and p + 1 one vector (lanes 0.. and 8..).
                assert!(s.stride == 2 && s.w < V, "depthwise: paired rows");
                let (ow, inside) = (s.out_w, ((1u32 << (s.w + 1)) - 2) as u16);
                let index = |f: &dyn Fn(usize) -> usize| {
                    let lanes: [i32; V] = std::array::from_fn(|l| f(l).min(31) as i32);
                    _mm512_loadu_si512(lanes.as_ptr().cast())
                };
                // Tap t of output lane l: column 2q + t - 1 of the upper row pair's vector (lane
                // 2q + t) for q = l < 8, of the lower one's (lane 16 + 2q + t) for q = l - 8.
                let taps: [__m512i; 3] =
                    std::array::from_fn(|t| index(&|l| if l < 8 { 2 * l + t } else { 16 + 2 * (l - 8) + t }));
                let pack = index(&|j| if j < ow { j } else { 8 + j - ow });
                for p in (0..s.out_h).step_by(2) {
                    let rows: [__m512; 5] = std::array::from_fn(|k| {
                        let i = (2 * p + k).wrapping_sub(1);
                        if i < s.h {
                            // Lane 0 is column -1 (masked off), lanes 1 ..= w the row.
                            _mm512_maskz_loadu_ps(inside, base.wrapping_add(i * s.w).wrapping_sub(1))
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    let t = nine(|tap| _mm512_permutex2var_ps(rows[tap / 3], taps[tap % 3], rows[tap / 3 + 2]));
                    let n = if p + 1 < s.out_h { 2 * ow } else { ow };
                    let packed = _mm512_permutexvar_ps(pack, sum(t));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(p * ow), ((1u32 << n) - 1) as u16, packed);
                }
            }
            None => {
                assert!(s.stride == 2 && self.rows.len() == s.out_w.div_ceil(V), "depthwise: stride-2 masks");
                let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                for p in 0..s.out_h {
                    // Input rows 2p - 1, 2p, 2p + 1; one outside the map reads nothing (zeros).
                    let at = |r: usize| {
                        let i = (2 * p + r).wrapping_sub(1);
                        if i < s.h {
                            (base.wrapping_add(i * s.w), u16::MAX)
                        } else {
                            (base, 0)
                        }
                    };
                    let row = [at(0), at(1), at(2)];
                    // The next output row's two new input rows, while this row's are computed.
                    for r in 3..5 {
                        if let (next, u16::MAX) = at(r) {
                            for line in (0..s.w).step_by(V) {
                                _mm_prefetch::<_MM_HINT_T0>(next.add(line).cast());
                            }
                        }
                    }
                    for (b, m) in self.rows.iter().enumerate() {
                        let c0 = 2 * (b * V) as isize - 1;
                        let mut t = [_mm512_setzero_ps(); 9];
                        for (r, &(at, keep)) in row.iter().enumerate() {
                            // Lanes outside the row (or the map) are masked off: never read.
                            let ld =
                                |k: usize, off: isize| _mm512_maskz_loadu_ps(m[k] & keep, at.wrapping_offset(c0 + off));
                            let (lo, hi) = (ld(0, 0), ld(1, 16));
                            let (lo2, hi2) = (ld(2, 2), ld(3, 18));
                            t[3 * r] = _mm512_permutex2var_ps(lo, even, hi);
                            t[3 * r + 1] = _mm512_permutex2var_ps(lo, odd, hi);
                            t[3 * r + 2] = _mm512_permutex2var_ps(lo2, even, hi2);
                        }
                        _mm512_mask_storeu_ps(out.as_mut_ptr().add(p * s.out_w + b * V), m[4], sum(t));
                    }
                }
            }
        }
    }
}
