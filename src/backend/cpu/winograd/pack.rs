//! Packing the input channel-blocked with the zero padding built in, and loading and storing
//! tile windows of it.

use super::*;

/// `pack_input`, or the same packing left in the store for `stamp` (the content stamp of `x`).
pub(super) fn pack_input_stamped(
    x: &[f32],
    stamp: Option<u64>,
    s: &ConvShape,
    tiling: &Tiling,
    simd: bool,
) -> Vec<f32> {
    stamp
        .and_then(|st| packed_store::take(&packed_key(st, s, tiling)))
        .unwrap_or_else(|| pack_input(x, s, tiling, simd))
}

/// The input in a channel-blocked layout `[N][Cp/B][hp][wp][B]` (`B = tiling.width`), with a
/// zero border of one pixel (the padding) and zeros beyond the image up to whole tiles: every
/// tile's window is then a plain, in-bounds read of `B`-channel vectors. Lanes past the last
/// channel are zero too.
pub(super) fn pack_input(x: &[f32], s: &ConvShape, tiling: &Tiling, simd: bool) -> Vec<f32> {
    pack_rows(x, s, tiling, simd, s.n < team::SHORT_BATCH)
}

/// `pack_input` of padded rows `tiling.row0..tiling.row0 + tiling.hp` only; `short`: the team's
/// kind of region.
pub(super) fn pack_rows(x: &[f32], s: &ConvShape, tiling: &Tiling, simd: bool, short: bool) -> Vec<f32> {
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
                        unsafe {
                            crate::backend::cpu::simd::transpose_8x8(
                                src.as_ptr().add(from),
                                plane,
                                drow.as_mut_ptr().add(to),
                                b,
                            )
                        };
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
pub(super) unsafe fn load_window<L: Lanes, const N: usize>(packed: &[f32], base: usize, wp: usize) -> [[L; N]; N] {
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
pub(super) unsafe fn store_tile<L: Lanes, const A: usize>(
    out: Shared,
    tile: &[[L; A]; A],
    p: usize,
    channels: usize,
    g: usize,
) {
    let w = L::WIDTH;
    assert!(((p * A + A - 1) * A + A - 1) * channels + (g + 1) * w <= out.1, "winograd: write out of bounds");
    for i in 0..A {
        for j in 0..A {
            tile[i][j].store(out.0.add(((p * A + i) * A + j) * channels + g * w));
        }
    }
}
