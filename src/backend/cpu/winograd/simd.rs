//! AVX2 pieces: the transposes between channel lanes and pixel rows.

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
