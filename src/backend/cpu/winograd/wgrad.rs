//! Backward-weight: `dU[xi] += V[xi]^T D[xi]` per block by a register-blocked kernel, summed
//! over chunks of blocks in a fixed order, then `G^T dU G`.

use super::*;

/// Where one backward-weight product reads and writes: `V[p][xi][..Cp]` and `D[p][xi][..Kp]`
/// for tiles `p < len`, and `dU[xi][c][..Kp]`.
#[derive(Clone, Copy)]
pub(super) struct GradProduct {
    pub(super) v: *const f32,
    pub(super) d: *const f32,
    pub(super) du: *mut f32,
    pub(super) xi: usize,
    pub(super) len: usize,
    pub(super) c: usize,
    pub(super) aa: usize,
    pub(super) cp: usize,
    pub(super) kp: usize,
}

/// The backward-weight product for one `xi`: `dU[xi][c][..kp] += sum_p V[p][xi][c] * D[p][xi][..kp]`
/// over tiles `p < len` in order, with fused multiply-adds, in register blocks of input by
/// output channels that start from and go back to `dU`. The blocks are written with explicit
/// vector types: left to itself, the compiler turned the sum over tiles into gathers.
///
/// # Safety
/// `v` must hold `len * aa * cp` floats, `d` `len * aa * kp` and `du` `aa * c * kp` (checked by the
/// caller); no other task may touch `dU[xi]` meanwhile.
pub(super) unsafe fn wgrad_multiply(g: GradProduct) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return grad_simd::multiply_avx512(g);
        }
        if has_avx2() {
            return grad_simd::multiply_avx2(g);
        }
    }
    for cc in 0..g.c {
        for k in 0..g.kp {
            let at = (g.xi * g.c + cc) * g.kp + k;
            let mut acc = *g.du.add(at);
            for p in 0..g.len {
                let x = *g.v.add((p * g.aa + g.xi) * g.cp + cc);
                acc = (*g.d.add((p * g.aa + g.xi) * g.kp + k)).mul_add(x, acc);
            }
            *g.du.add(at) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod grad_simd {
    use super::{GradProduct, KB, LANES};
    use crate::backend::cpu::simd::Reg;
    use std::arch::x86_64::{__m256, __m512};

    /// Input channels `c0..c0 + T` by output channels `kb..kb + N * R::WIDTH` of `dU[xi]`, held
    /// in `T * N` registers over the tiles.
    #[inline(always)]
    unsafe fn micro<R: Reg, const T: usize, const N: usize>(g: GradProduct, c0: usize, kb: usize) {
        let at = |t: usize| (g.xi * g.c + c0 + t) * g.kp + kb;
        assert!(c0 + T <= g.c && kb + N * R::WIDTH <= g.kp, "winograd: gradient block out of bounds");
        // Plain loops, not `array::from_fn` (see `load_window`).
        let mut acc = [[R::splat(0.0); N]; T];
        for (t, regs) in acc.iter_mut().enumerate() {
            for (j, r) in regs.iter_mut().enumerate() {
                *r = R::load(g.du.add(at(t) + j * R::WIDTH));
            }
        }
        for p in 0..g.len {
            let row = (p * g.aa + g.xi) * g.kp + kb;
            let mut dv = [R::splat(0.0); N];
            for (j, r) in dv.iter_mut().enumerate() {
                *r = R::load(g.d.add(row + j * R::WIDTH));
            }
            let vrow = g.v.add((p * g.aa + g.xi) * g.cp + c0);
            for t in 0..T {
                let x = R::splat(*vrow.add(t));
                for j in 0..N {
                    acc[t][j] = R::fma(dv[j], x, acc[t][j]);
                }
            }
        }
        for (t, regs) in acc.iter().enumerate() {
            for (j, r) in regs.iter().enumerate() {
                r.store(g.du.add(at(t) + j * R::WIDTH));
            }
        }
    }

    /// Every input channel against output channels `kb..kb + N * R::WIDTH`, `T` at a time.
    #[inline(always)]
    unsafe fn channels<R: Reg, const T: usize, const N: usize>(g: GradProduct, kb: usize) {
        let mut c0 = 0;
        while c0 + T <= g.c {
            micro::<R, T, N>(g, c0, kb);
            c0 += T;
        }
        for cc in c0..g.c {
            micro::<R, 1, N>(g, cc, kb);
        }
    }

    /// 8 input by 32 output channels (16 of the 32 registers), then 16 and 8.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn multiply_avx512(g: GradProduct) {
        let mut kb = 0;
        while kb < g.kp {
            if g.kp - kb >= 2 * KB {
                channels::<__m512, 8, 2>(g, kb);
                kb += 2 * KB;
            } else if g.kp - kb >= KB {
                channels::<__m512, 8, 1>(g, kb);
                kb += KB;
            } else {
                channels::<__m256, 8, 1>(g, kb);
                kb += LANES;
            }
        }
    }

    /// 6 input by 16 output channels (12 of the 16 registers), then 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn multiply_avx2(g: GradProduct) {
        let mut kb = 0;
        while kb < g.kp {
            if g.kp - kb >= KB {
                channels::<__m256, 6, 2>(g, kb);
                kb += KB;
            } else {
                channels::<__m256, 6, 1>(g, kb);
                kb += LANES;
            }
        }
    }
}

/// One block of backward-weight: both transforms, then `dU += V^T D` for every `xi`. `split`
/// spreads the stages over the pool (tiles, then `xi`); it changes no arithmetic.
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_block<const M: usize, const A: usize, V: Variant<M, A>>(
    xb: &[f32],
    dyb: &[f32],
    s: &ConvShape,
    tiling: &Tiling,
    dy_tiling: &Tiling,
    p0: usize,
    du: &mut [f32],
    split: bool,
) {
    let (c, block, cp, kp) = (s.c_in, tiling.block, tiling.cp, tiling.kp);
    let len = block.min(tiling.total - p0);
    let mut v = pool::take(A * A * block * cp);
    let mut d = pool::take(A * A * block * kp);
    assert!(v.len() >= len * A * A * cp && d.len() >= len * A * A * kp && du.len() >= A * A * c * kp);
    let (vs, ds, dus) = (Shared::new(&mut v), Shared::new(&mut d), Shared::new(du));
    let product = |v: SharedConst, d: SharedConst, du: Shared, xi: usize| GradProduct {
        v: v.0,
        d: d.0,
        du: du.0,
        xi,
        len,
        c,
        aa: A * A,
        cp,
        kp,
    };
    // SAFETY (both branches): the sizes were checked above; product `xi` alone touches
    // `dU[xi]`, and `V`, `D` are not written meanwhile.
    if split {
        (0..len).into_par_iter().step_by(SPLIT_TILES).for_each(|t0| {
            let tiles = t0..(t0 + SPLIT_TILES).min(len);
            input_transform::<M, A, V>(tiling.width, xb, tiling, p0, tiles.clone(), vs);
            grad_transform::<M, A, V>(dy_tiling.width, dyb, dy_tiling, p0, tiles, ds);
        });
        let (vv, dd) = (SharedConst(v.as_ptr()), SharedConst(d.as_ptr()));
        (0..A * A).into_par_iter().for_each(|xi| unsafe { wgrad_multiply(product(vv, dd, dus, xi)) });
    } else {
        input_transform::<M, A, V>(tiling.width, xb, tiling, p0, 0..len, vs);
        grad_transform::<M, A, V>(dy_tiling.width, dyb, dy_tiling, p0, 0..len, ds);
        let (vv, dd) = (SharedConst(v.as_ptr()), SharedConst(d.as_ptr()));
        for xi in 0..A * A {
            unsafe { wgrad_multiply(product(vv, dd, dus, xi)) };
        }
    }
    pool::give(v);
    pool::give(d);
}

/// Tasks (chunks of consecutive blocks) a backward-weight reduction is split into, at most: each
/// sums its tiles in order into its own `dU`, and the chunks' sums are added in chunk order, so
/// the result depends on the shape only, never on the thread count.
pub(super) const WGRAD_CHUNKS: usize = 16;

pub(super) fn backward_weight_with<const M: usize, const A: usize, V: Variant<M, A>>(
    dy: &[f32],
    dy_stamp: Option<u64>,
    x: &[f32],
    x_stamp: Option<u64>,
    s: &ConvShape,
) -> Vec<f32> {
    let (k, c) = (s.c_out, s.c_in);
    let mut dw = vec![0.0f32; k * c * 9];
    if dw.is_empty() || s.n * s.out_h * s.out_w == 0 {
        return dw;
    }
    let simd = has_avx2();
    let tiling = Tiling::new(s, M);
    let kp = tiling.kp;
    let xb = pack_input_stamped(x, x_stamp, s, &tiling, simd);
    // The output gradient packed like an input of `K` channels (same tiles, same border).
    let dy_shape = ConvShape { c_in: k, h: s.out_h, w: s.out_w, ..*s };
    let dy_tiling = tiling.with_channels(kp);
    let dyb = pack_input(dy, &dy_shape, &dy_tiling, simd);
    let blocks = tiling.total.div_ceil(tiling.block);
    let per_chunk = blocks.div_ceil(WGRAD_CHUNKS);
    let chunks = blocks.div_ceil(per_chunk);
    let split = chunks < rayon::current_num_threads();
    let part = A * A * c * kp;
    let mut partials = pool::take(chunks * part);
    partials.par_chunks_mut(part).enumerate().for_each(|(chunk, du)| {
        du.fill(0.0);
        for b in chunk * per_chunk..((chunk + 1) * per_chunk).min(blocks) {
            wgrad_block::<M, A, V>(&xb, &dyb, s, &tiling, &dy_tiling, b * tiling.block, du, split);
        }
    });
    pool::give(xb);
    match dy_stamp {
        Some(st) => packed_store::put(packed_key(st, &dy_shape, &dy_tiling), dyb),
        None => pool::give(dyb),
    }
    let (du, rest) = partials.split_at_mut(part);
    for other in rest.chunks_exact(part) {
        for (a, b) in du.iter_mut().zip(other) {
            *a += b;
        }
    }
    // dW_kc = G^T dU_kc G, in f64.
    let g = V::G.0;
    for kk in 0..k {
        for cc in 0..c {
            let dui = |i: usize, j: usize| du[((i * A + j) * c + cc) * kp + kk] as f64;
            let mut tmp = [[0.0f64; A]; 3];
            for r in 0..3 {
                for j in 0..A {
                    tmp[r][j] = (0..A).map(|i| g[i][r] * dui(i, j)).sum();
                }
            }
            for r in 0..3 {
                for t in 0..3 {
                    dw[(kk * c + cc) * 9 + r * 3 + t] = (0..A).map(|j| tmp[r][j] * g[j][t]).sum::<f64>() as f32;
                }
            }
        }
    }
    pool::give(partials);
    dw
}
