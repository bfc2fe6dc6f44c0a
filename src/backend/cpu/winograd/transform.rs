//! The transforms: `G` on the filters (`U = G g G^T`), and the 1-D input (`B^T`) and output
//! (`A^T`) transforms of each variant, written out on lane vectors.

use super::*;

/// The filter transform `G` of one `F(M x M, 3x3)`, `A = M + 2`, `A x 3` (applied in f32).
pub(super) struct FilterTransform<const A: usize>(pub(super) [[f64; 3]; A]);

pub(super) const F2_G: FilterTransform<4> =
    FilterTransform([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]);

pub(super) const F4_G: FilterTransform<6> = FilterTransform([
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
]);

/// One Winograd variant: the 1-D input (`B^T`) and output (`A^T`) transforms written out by
/// hand on lane vectors (the 2-D ones apply them to columns, then rows), and `G`.
pub(super) trait Variant<const M: usize, const A: usize> {
    const G: FilterTransform<A>;
    fn input_1d<L: Lanes>(d: [L; A]) -> [L; A];
    fn output_1d<L: Lanes>(m: [L; A]) -> [L; M];
    /// The adjoint of `output_1d` (`A` applied to `M` values), for the output gradient in
    /// backward-weight.
    fn grad_1d<L: Lanes>(y: [L; M]) -> [L; A];
}

/// F(2x2,3x3): `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `A^T = [1 1 1 0; 0 1 -1 -1]`.
pub(super) struct VariantF2;
impl Variant<2, 4> for VariantF2 {
    const G: FilterTransform<4> = F2_G;
    #[inline(always)]
    fn input_1d<L: Lanes>([d0, d1, d2, d3]: [L; 4]) -> [L; 4] {
        [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)]
    }
    #[inline(always)]
    fn output_1d<L: Lanes>([m0, m1, m2, m3]: [L; 4]) -> [L; 2] {
        [m0.add(m1).add(m2), m1.sub(m2).sub(m3)]
    }
    #[inline(always)]
    fn grad_1d<L: Lanes>([y0, y1]: [L; 2]) -> [L; 4] {
        [y0, y0.add(y1), y0.sub(y1), y1.zero().sub(y1)]
    }
}

/// F(4x4,3x3) with interpolation points 0, +-1, +-2 (Lavin & Gray):
/// `B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]`,
/// `A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
pub(super) struct VariantF4;
impl Variant<4, 6> for VariantF4 {
    const G: FilterTransform<6> = F4_G;
    #[inline(always)]
    fn input_1d<L: Lanes>([d0, d1, d2, d3, d4, d5]: [L; 6]) -> [L; 6] {
        let (a, b) = (d4.sub(d2), d3.sub(d1).scale(2.0));
        [
            d0.scale(4.0).sub(d2.scale(5.0)).add(d4),
            d3.add(d4).sub(d1.add(d2).scale(4.0)),
            d4.sub(d3).add(d1.sub(d2).scale(4.0)),
            a.add(b),
            a.sub(b),
            d1.scale(4.0).sub(d3.scale(5.0)).add(d5),
        ]
    }
    #[inline(always)]
    fn output_1d<L: Lanes>([m0, m1, m2, m3, m4, m5]: [L; 6]) -> [L; 4] {
        let (p12, d12, p34, d34) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
        [m0.add(p12).add(p34), d12.add(d34.scale(2.0)), p12.add(p34.scale(4.0)), d12.add(d34.scale(8.0)).add(m5)]
    }
    #[inline(always)]
    fn grad_1d<L: Lanes>([y0, y1, y2, y3]: [L; 4]) -> [L; 6] {
        // Column i of A^T: (1, 0, 0, 0), (1, 1, 1, 1), (1, -1, 1, -1), (1, 2, 4, 8), (1, -2, 4, -8),
        // (0, 0, 0, 1).
        let (e, o) = (y0.add(y2), y1.add(y3));
        let (e4, o2) = (y0.add(y2.scale(4.0)), y1.scale(2.0).add(y3.scale(8.0)));
        [y0, e.add(o), e.sub(o), e4.add(o2), e4.sub(o2), y3]
    }
}

/// `B^T d B` in place: the 1-D transform down every column, then along every row.
#[inline(always)]
pub(super) fn input_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(d: &mut [[L; A]; A]) {
    for j in 0..A {
        let mut col = [d[0][j]; A];
        for r in 1..A {
            col[r] = d[r][j];
        }
        let col = V::input_1d(col);
        for i in 0..A {
            d[i][j] = col[i];
        }
    }
    for row in d.iter_mut() {
        *row = V::input_1d(*row);
    }
}

/// `A^T m A`.
#[inline(always)]
pub(super) fn output_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(m: &[[L; A]; A]) -> [[L; M]; M] {
    let mut t = [[m[0][0]; A]; M];
    for j in 0..A {
        let mut col = [m[0][j]; A];
        for r in 1..A {
            col[r] = m[r][j];
        }
        let col = V::output_1d(col);
        for i in 0..M {
            t[i][j] = col[i];
        }
    }
    let mut out = [[m[0][0]; M]; M];
    for i in 0..M {
        out[i] = V::output_1d(t[i]);
    }
    out
}

/// `A dy A^T` (the gradient of `M` from the gradient of an output tile).
#[inline(always)]
pub(super) fn grad_2d<const M: usize, const A: usize, V: Variant<M, A>, L: Lanes>(dy: &[[L; M]; M]) -> [[L; A]; A] {
    let mut t = [[dy[0][0]; M]; A];
    for j in 0..M {
        let mut col = [dy[0][j]; M];
        for r in 1..M {
            col[r] = dy[r][j];
        }
        let col = V::grad_1d(col);
        for i in 0..A {
            t[i][j] = col[i];
        }
    }
    let mut out = [[dy[0][0]; A]; A];
    for i in 0..A {
        out[i] = V::grad_1d(t[i]);
    }
    out
}

/// `U[xi][c][k] = (G g_kc G^T)[xi]`, eight filters at a time.
pub(super) fn filter_transform<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
) -> Vec<f32> {
    let mut u = pool::take(A * A * c * kp);
    assert!(w.len() >= k * c * 9 && kp >= k.next_multiple_of(LANES), "winograd: filter transform sizes");
    // Input channels split over the team: a training step transforms every Winograd layer's
    // new weights twice (forward and backward-data), about 5% of ResNet-50's batch-1 step on
    // one thread.
    let parts = (c / 16).clamp(1, rayon::current_num_threads());
    let out = team::SendPtr(u.as_mut_ptr());
    team::for_each(parts, |part| {
        let channels = part * c / parts..(part + 1) * c / parts;
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports the features the function was compiled for; each part
            // writes only its own input channels' runs of `U` (sizes asserted above).
            return unsafe { filter_transform_avx2(g, w, k, c, kp, channels, out) };
        }
        // SAFETY: as above.
        unsafe { filter_transform_lanes(g, w, k, c, kp, channels, out) }
    });
    u
}

/// # Safety
/// The CPU must have AVX2 and FMA; as `filter_transform_lanes`.
#[target_feature(enable = "avx2,fma")]
#[cfg(target_arch = "x86_64")]
unsafe fn filter_transform_avx2<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
    channels: std::ops::Range<usize>,
    u: team::SendPtr,
) {
    use std::arch::x86_64::*;
    assert!(k * c * 9 < i32::MAX as usize, "winograd: filter transform offsets");
    let gm: [[__m256; 3]; A] = g.0.map(|row| row.map(|v| _mm256_set1_ps(v as f32)));
    // Lane l reads filter k0 + l: `c 9` floats after filter k0, by gather (assembling the lanes
    // from scalar loads through the stack stalled on store forwarding: 30% of the transform).
    let lane = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((c * 9) as i32));
    let zero = _mm256_setzero_ps();
    for cc in channels {
        for k0 in (0..kp).step_by(LANES) {
            let live = LANES.min(k.saturating_sub(k0)) as i32;
            let mask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_set1_epi32(live),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            ));
            let base = w.as_ptr().wrapping_add((k0 * c + cc) * 9);
            let taps: [__m256; 9] = std::array::from_fn(|t| {
                if live > 0 {
                    _mm256_mask_i32gather_ps::<4>(zero, base.add(t), lane, mask)
                } else {
                    zero
                }
            });
            // `filter_transform_lanes`'s arithmetic, operation for operation (products added
            // to zero in order, no fused multiply-add), so both give the same bits.
            let mut tmp = [[zero; 3]; A];
            for i in 0..A {
                for j in 0..3 {
                    for r in 0..3 {
                        tmp[i][j] = _mm256_add_ps(tmp[i][j], _mm256_mul_ps(gm[i][r], taps[r * 3 + j]));
                    }
                }
            }
            for i in 0..A {
                for j in 0..A {
                    let mut acc = zero;
                    for r in 0..3 {
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(tmp[i][r], gm[j][r]));
                    }
                    _mm256_storeu_ps(u.at(((i * A + j) * c + cc) * kp + k0), acc);
                }
            }
        }
    }
}

/// `U[xi][c][k]` (output channels contiguous, zero up to `kp`) for the input channels
/// `channels`: the layout the multiply stage streams through, one column of output channels per
/// input channel.
///
/// # Safety
/// `u` holds `A A c kp` floats, `w` at least `k c 9`, `kp` is a multiple of `LANES` of at least
/// `k`, and no other writer touches these channels' runs.
#[inline(always)]
unsafe fn filter_transform_lanes<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
    channels: std::ops::Range<usize>,
    u: team::SendPtr,
) {
    let gm: [[f32; 3]; A] = g.0.map(|row| row.map(|v| v as f32));
    // Lanes are eight output channels of one input channel: each result is one contiguous run
    // of `U[xi][c][..]`, zeros past the last channel included.
    for cc in channels {
        for k0 in (0..kp).step_by(LANES) {
            let mut taps = [[0.0f32; LANES]; 9];
            for l in 0..LANES.min(k.saturating_sub(k0)) {
                let f = &w[((k0 + l) * c + cc) * 9..((k0 + l) * c + cc + 1) * 9];
                for t in 0..9 {
                    taps[t][l] = f[t];
                }
            }
            // tmp = G g (A x 3), then U = tmp G^T (A x A).
            let mut tmp = [[[0.0f32; LANES]; 3]; A];
            for i in 0..A {
                for j in 0..3 {
                    for r in 0..3 {
                        for l in 0..LANES {
                            tmp[i][j][l] += gm[i][r] * taps[r * 3 + j][l];
                        }
                    }
                }
            }
            for i in 0..A {
                for j in 0..A {
                    let mut acc = [0.0f32; LANES];
                    for r in 0..3 {
                        for l in 0..LANES {
                            acc[l] += tmp[i][r][l] * gm[j][r];
                        }
                    }
                    let at = ((i * A + j) * c + cc) * kp + k0;
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), u.at(at), LANES);
                }
            }
        }
    }
}
