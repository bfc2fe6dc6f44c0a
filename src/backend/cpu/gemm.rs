//! Row-major single-precision GEMM on top of the `gemm` crate (run-time SIMD dispatch, so the
//! same binary is fast on AVX2, AVX-512 and plain SSE machines).

/// `C[m,n] = beta_c * C + op(A)[m,k] * op(B)[k,n]`, all row-major.
/// `a_t`: A is stored as `[k, m]`; `b_t`: B is stored as `[n, k]`.
/// `accumulate`: keep and add to C's previous content (beta_c = 1) instead of overwriting it.
/// `threads`: 1 for a serial product (the caller already runs in parallel), more to let the
/// GEMM split its own work.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert!(a.len() >= m * k, "sgemm: A too small");
    assert!(b.len() >= k * n, "sgemm: B too small");
    assert!(c.len() >= m * n, "sgemm: C too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = if a_t { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if b_t { (1, k as isize) } else { (n as isize, 1) };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above guarantee every index the strides reach lies inside the slices:
    // A spans m*k elements, B k*n, C m*n, with the row/column strides of their stated layouts.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Plain triple loop in a fixed order: the reference the fast path is tested against.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if a_t { a[p * m + i] } else { a[i * k + p] };
                let bv = if b_t { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            let prev = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (prev + acc) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_in_every_layout() {
        let (m, n, k) = (13, 7, 29);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 19) as f32 / 9.0 - 1.0).collect();
        for &a_t in &[false, true] {
            for &b_t in &[false, true] {
                for &acc in &[false, true] {
                    let mut c1 = vec![0.5f32; m * n];
                    let mut c2 = c1.clone();
                    sgemm(m, n, k, &a, a_t, &b, b_t, &mut c1, acc, 2);
                    sgemm_reference(m, n, k, &a, a_t, &b, b_t, &mut c2, acc);
                    for (x, y) in c1.iter().zip(&c2) {
                        assert!((x - y).abs() < 1e-4, "a_t={a_t} b_t={b_t} acc={acc}: {x} vs {y}");
                    }
                }
            }
        }
    }
}
