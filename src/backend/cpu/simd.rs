//! The x86 vector registers the hand-vectorised CPU kernels are generic over (AVX2's 8 floats,
//! AVX-512's 16), one home for their intrinsics. The kernels using them are compiled with the
//! matching `target_feature` and picked at run time; these methods are `#[inline(always)]` so
//! they are inlined into those functions and take their features.

use std::arch::x86_64::*;

/// A vector register of `WIDTH` floats. Every operation is one IEEE operation per lane.
pub trait Reg: Copy {
    const WIDTH: usize;
    /// # Safety (all methods)
    /// The CPU must have the register's features; `p` must point at `WIDTH` floats.
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn splat(v: f32) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// `self` where `y > 0` (ordered: not for NaN), `+0.0` elsewhere.
    unsafe fn keep_where_positive(self, y: Self) -> Self;
    /// `min(max(self, 0), 6)` with NaN to 0, as `Activation::Relu6` (`max` returns its second
    /// operand when either is NaN).
    unsafe fn relu6(self) -> Self;
}

macro_rules! reg {
    ($ty:ty, $width:expr, $load:ident, $store:ident, $set1:ident, $add:ident, $sub:ident, $mul:ident, $fma:ident, $keep:ident, $max:ident, $min:ident) => {
        impl Reg for $ty {
            const WIDTH: usize = $width;
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                $load(p)
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                $store(p, self)
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> Self {
                $set1(v)
            }
            #[inline(always)]
            unsafe fn add(self, o: Self) -> Self {
                $add(self, o)
            }
            #[inline(always)]
            unsafe fn sub(self, o: Self) -> Self {
                $sub(self, o)
            }
            #[inline(always)]
            unsafe fn mul(self, o: Self) -> Self {
                $mul(self, o)
            }
            #[inline(always)]
            unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                $fma(a, b, c)
            }
            #[inline(always)]
            unsafe fn keep_where_positive(self, y: Self) -> Self {
                $keep(self, y)
            }
            #[inline(always)]
            unsafe fn relu6(self) -> Self {
                $min($max(self, $set1(0.0)), $set1(6.0))
            }
        }
    };
}

/// All-ones lanes where `y > 0`, so `and` keeps those.
#[inline(always)]
unsafe fn keep_256(g: __m256, y: __m256) -> __m256 {
    _mm256_and_ps(g, _mm256_cmp_ps::<_CMP_GT_OQ>(y, _mm256_setzero_ps()))
}

#[inline(always)]
unsafe fn keep_512(g: __m512, y: __m512) -> __m512 {
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_setzero_ps()), g)
}

#[rustfmt::skip]
reg!(__m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_fmadd_ps, keep_256, _mm256_max_ps, _mm256_min_ps);
#[rustfmt::skip]
reg!(__m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_fmadd_ps, keep_512, _mm512_max_ps, _mm512_min_ps);

/// Reads eight rows of eight floats (`src + l * stride`, channel `l`) and writes them
/// transposed to `dst` (pixel `j`'s eight channels at `dst + dst_stride * j`).
///
/// # Safety
/// AVX must be available, and the 64 floats read and written in bounds.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_8x8(src: *const f32, stride: usize, dst: *mut f32, dst_stride: usize) {
    transpose_8x8_to(src, stride, std::array::from_fn(|j| dst.add(j * dst_stride)))
}

/// `transpose_8x8` with each pixel's eight channels written to its own place: `dst[j]`.
///
/// # Safety
/// AVX must be available, and the 64 floats read and written in bounds.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_8x8_to(src: *const f32, stride: usize, dst: [*mut f32; 8]) {
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
    for (d, c) in dst.into_iter().zip(cols) {
        _mm256_storeu_ps(d, c);
    }
}
