//! Row-major single-precision GEMM on top of the `gemm` crate (run-time SIMD dispatch, so the
//! same binary is fast on AVX2, AVX-512 and plain SSE machines).

/// Strides of a matrix operand: element `(i, j)` sits at `i * row + j * col`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub row: usize,
    pub col: usize,
}

impl Layout {
    /// Row-major `rows x cols` matrix.
    pub fn row_major(cols: usize) -> Layout {
        Layout { row: cols, col: 1 }
    }
    /// Column-major `rows x cols` matrix.
    pub fn col_major(rows: usize) -> Layout {
        Layout { row: 1, col: rows }
    }
    /// Largest offset reached by a `rows x cols` matrix, plus one.
    fn extent(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.row + (cols - 1) * self.col + 1
        }
    }
}

/// `C[m,n] (+)= A[m,k] * B[k,n]` with arbitrary operand layouts. The `gemm` crate's kernels
/// favour some orientations over others by up to 2x on the thin matrices of convolutions, so the
/// caller picks the layouts (see `conv.rs`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_layout(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
    threads: usize,
) {
    assert!(c.len() >= lc.extent(m, n), "sgemm: C too small");
    // SAFETY: C's extent is asserted above, and `c` is borrowed mutably for the call.
    unsafe { sgemm_into(m, n, k, a, la, b, lb, c.as_mut_ptr(), lc, accumulate, threads) }
}

/// `sgemm_layout` writing through a pointer: for callers whose threads write disjoint elements
/// of one buffer (a column block each), where a `&mut` slice per thread would overlap the
/// others'. Writes exactly the `m x n` elements `c + i * lc.row + j * lc.col`, nothing else.
///
/// # Safety
/// Those elements must be valid for writes, and no one else may read or write them meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_into(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: *mut f32,
    lc: Layout,
    accumulate: bool,
    threads: usize,
) {
    assert!(a.len() >= la.extent(m, k), "sgemm: A too small");
    assert!(b.len() >= lb.extent(k, n), "sgemm: B too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *c.add(i * lc.row + j * lc.col) = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: A and B are in bounds (asserted above); C's elements by the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            lc.col as isize,
            lc.row as isize,
            accumulate,
            a.as_ptr(),
            la.col as isize,
            la.row as isize,
            b.as_ptr(),
            lb.col as isize,
            lb.row as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `C[m,n] (+)= op(A)[m,k] * op(B)[k,n]`, all row-major.
/// `a_t`: A is stored as `[k, m]`; `b_t`: B is stored as `[n, k]`.
/// `accumulate`: add to C's previous content instead of overwriting it.
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
    let la = if a_t { Layout::col_major(m) } else { Layout::row_major(k) };
    let lb = if b_t { Layout::col_major(k) } else { Layout::row_major(n) };
    sgemm_layout(m, n, k, a, la, b, lb, c, Layout::row_major(n), accumulate, threads);
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
