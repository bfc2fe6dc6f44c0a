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
