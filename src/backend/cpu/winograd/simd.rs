//! AVX2 pieces of the Winograd tiles: the output stores with their epilogue (the 8x8 transpose the
//! packing uses is `cpu::simd::transpose_8x8`).

use super::Lane;
use std::arch::x86_64::*;

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
