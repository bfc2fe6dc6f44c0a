//! The per-tile stages around the multiply: input and output-gradient transforms into `V` /
//! `D`, and the output transform with the fused eval epilogue; each compiled per lane type and
//! picked at run time (`multiversion!`).

use super::*;

/// Input transform of block tiles `tiles` (indices inside the block starting at tile `p0`) into
/// `v`, laid out `[a*a][block][Cp]` (channels contiguous: column-major GEMM operands), from the
/// input packed `tiling.width` channels to a block, which must be `L::WIDTH`.
///
/// # Safety
/// The CPU must have `L`'s features; no other task may write these tiles' runs of `v`.
#[inline(always)]
pub(super) unsafe fn input_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
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
pub(super) unsafe fn grad_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
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
pub(super) struct LaneEpilogue<'a> {
    pub(super) scale: Vec<f32>,
    pub(super) shift: Vec<f32>,
    pub(super) residual: Option<&'a [f32]>,
    pub(super) relu: bool,
}

impl<'a> LaneEpilogue<'a> {
    pub(super) fn new(epi: &Epilogue<'a>, kp: usize) -> LaneEpilogue<'a> {
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
pub(super) unsafe fn output_transform_tiles<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(
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
pub(super) unsafe fn store_output_lanes<const M: usize>(
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
                *v = if relu { crate::backend::cpu::elementwise::relu(u) } else { u };
            }
            if cols == M {
                y.write(base + r * s.out_w, &vals)
            } else {
                y.write_prefix(base + r * s.out_w, &vals, cols)
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
        pub(super) fn $name<const M: usize, const A: usize, V: Variant<M, A>>(width: usize, $($arg: $ty),*) {
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
                if width == LANES && has_avx2() {
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
