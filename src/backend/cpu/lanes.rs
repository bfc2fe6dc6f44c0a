//! Vectors of f32 lanes that the hand-vectorised CPU kernels (the Winograd transforms, the
//! batch-norm reductions) are written over once and compiled several times: a plain array on
//! any CPU, an AVX2 or AVX-512 register (`Wide`), or two of them as one vector (`Pair`). Every
//! operation is the same IEEE operation per lane in each (never contracted into an FMA), so all
//! give the same bits; the kernels pick one at run time.

/// A vector of `WIDTH` f32 lanes.
pub(crate) trait Lanes: Copy {
    const WIDTH: usize;
    /// # Safety
    /// The CPU must have `Self`'s features; `src` must point at `WIDTH` readable floats.
    unsafe fn load(src: *const f32) -> Self;
    /// # Safety
    /// `dst` must point at `WIDTH` writable floats.
    unsafe fn store(self, dst: *mut f32);
    /// # Safety
    /// The CPU must have `Self`'s features.
    unsafe fn splat(v: f32) -> Self;
    /// Zeros (from a value, so that it needs no feature check: a register type only exists
    /// where its features are).
    fn zero(self) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn scale(self, c: f32) -> Self;
    /// `self` where `y > 0`, `+0.0` elsewhere (NaN included): the gradient through a ReLU
    /// whose output is `y`, as `relu_backward` computes it.
    fn keep_where_positive(self, y: Self) -> Self;
    /// `Activation::Relu6` per lane.
    fn relu6(self) -> Self;
}

impl<const N: usize> Lanes for [f32; N] {
    const WIDTH: usize = N;
    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self {
        (src as *const [f32; N]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        (dst as *mut [f32; N]).write_unaligned(self)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        [v; N]
    }
    #[inline(always)]
    fn zero(self) -> Self {
        [0.0; N]
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] + o[l])
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] - o[l])
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] * o[l])
    }
    #[inline(always)]
    fn scale(self, c: f32) -> Self {
        std::array::from_fn(|l| self[l] * c)
    }
    #[inline(always)]
    fn keep_where_positive(self, y: Self) -> Self {
        std::array::from_fn(|l| if y[l] > 0.0 { self[l] } else { 0.0 })
    }
    #[inline(always)]
    fn relu6(self) -> Self {
        std::array::from_fn(|l| crate::backend::Activation::Relu6.apply(self[l]))
    }
}

/// A vector register as `Lanes`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Wide<R>(pub R);

// SAFETY (the safe methods): a `Wide` is only made by `load` or `splat`, whose contracts are
// that the CPU has the register's features, or from another `Wide`.
#[cfg(target_arch = "x86_64")]
impl<R: super::simd::Reg> Lanes for Wide<R> {
    const WIDTH: usize = R::WIDTH;
    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self {
        Wide(R::load(src))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        self.0.store(dst)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Wide(R::splat(v))
    }
    #[inline(always)]
    fn zero(self) -> Self {
        Wide(unsafe { R::splat(0.0) })
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Wide(unsafe { self.0.add(o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Wide(unsafe { self.0.sub(o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Wide(unsafe { self.0.mul(o.0) })
    }
    #[inline(always)]
    fn scale(self, c: f32) -> Self {
        Wide(unsafe { self.0.mul(R::splat(c)) })
    }
    #[inline(always)]
    fn keep_where_positive(self, y: Self) -> Self {
        Wide(unsafe { self.0.keep_where_positive(y.0) })
    }
    #[inline(always)]
    fn relu6(self) -> Self {
        Wide(unsafe { self.0.relu6() })
    }
}

/// Two vectors as one of twice the width (lanes `0..W` in the first): sixteen lanes in two AVX2
/// registers.
#[derive(Clone, Copy)]
pub(crate) struct Pair<L>(L, L);

impl<L: Lanes> Lanes for Pair<L> {
    const WIDTH: usize = 2 * L::WIDTH;
    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self {
        Pair(L::load(src), L::load(src.add(L::WIDTH)))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        self.0.store(dst);
        self.1.store(dst.add(L::WIDTH));
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Pair(L::splat(v), L::splat(v))
    }
    #[inline(always)]
    fn zero(self) -> Self {
        Pair(self.0.zero(), self.1.zero())
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Pair(self.0.add(o.0), self.1.add(o.1))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Pair(self.0.sub(o.0), self.1.sub(o.1))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Pair(self.0.mul(o.0), self.1.mul(o.1))
    }
    #[inline(always)]
    fn scale(self, c: f32) -> Self {
        Pair(self.0.scale(c), self.1.scale(c))
    }
    #[inline(always)]
    fn keep_where_positive(self, y: Self) -> Self {
        Pair(self.0.keep_where_positive(y.0), self.1.keep_where_positive(y.1))
    }
    #[inline(always)]
    fn relu6(self) -> Self {
        Pair(self.0.relu6(), self.1.relu6())
    }
}
