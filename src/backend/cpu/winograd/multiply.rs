//! Stage 2 of the forward pass: one block of tiles through the three stages (`run_block`), and
//! the register-blocked element-wise products `M[p][xi] = U[xi]^T V[p][xi]`.

use super::*;

/// Tiles per task when one block is split over the pool.
pub(super) const SPLIT_TILES: usize = 4;

/// One block: transform in, `a*a` GEMMs, transform out. `split` spreads each stage over the
/// pool (for shapes with fewer blocks than threads); it changes no arithmetic.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_block<const M: usize, const A: usize, V: Variant<M, A>>(
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
pub(super) const KB: usize = 16;
/// Tiles per register block: `TP x KB` accumulators stay in registers.
pub(super) const TP: usize = 6;
/// Tiles per register block of `2 * KB` output channels (AVX-512 only).
pub(super) const TP_WIDE: usize = 4;

/// The element-wise stage for one `xi`: `M[p][xi][..kp] = sum_c U[xi][c][..kp] * V[p][xi][c]`
/// for tiles `p < len`, in blocks of `TP` tiles by `KB` (or 8) output channels, accumulating
/// over `c` in order with fused multiply-adds. Replaces a general GEMM call per `xi`, whose
/// packing and dispatch cost more than these small products (K, C of 16 to 64).
///
/// # Safety
/// `v` must hold `len * aa * cp` floats and `m` `len * aa * kp` (both checked by the caller
/// against their buffers), `u` `aa * c * kp`; no other task may write `M[p][xi][..]` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn multiply(
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
pub(super) unsafe fn multiply_avx512(
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
pub(super) unsafe fn multiply_avx2(
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
pub(super) unsafe fn multiply_portable<const WIDE: bool>(
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
pub(super) unsafe fn tail<const W: usize>(
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
pub(super) unsafe fn micro<const T: usize, const W: usize>(
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
