//! [`LinearOps`] on `kernels/gemm.cu`: tiled SGEMM for the fully connected layers (and the
//! benchmark's f32 peak), plus the column sum that gives the bias gradient.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::LinearShape;
use crate::backend::{LinearGrads, LinearOps};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr};

const FILE: &str = "gemm.cu";

/// Mirror of `GemmParams` in gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GemmParams {
    a: u64,
    b: u64,
    c: u64,
    bias: u64,
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    _pad0: i32,
    _pad1: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for GemmParams {}
assert_layout!(GemmParams, size 64, a @ 0, b @ 8, c @ 16, bias @ 24, m @ 32, n @ 36, k @ 40, lda @ 44, ldb @ 48, ldc @ 52, _pad0 @ 56, _pad1 @ 60);

/// Mirror of `ColSumParams` in gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ColSumParams {
    x: u64,
    out: u64,
    rows: i32,
    cols: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ColSumParams {}
assert_layout!(ColSumParams, size 24, x @ 0, out @ 8, rows @ 16, cols @ 20);

/// Which operands are stored transposed: `op(A)[m,k]` is `A[k*lda+m]` when `ta`, and
/// `op(B)[k,n]` is `B[n*ldb+k]` when `tb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmLayout {
    NN,
    NT,
    TN,
}

/// Kernel for a layout and problem: the 128x128 tile when it still fills the GPU, else 64x64.
pub(crate) fn gemm_kernel(layout: GemmLayout, m: usize, n: usize, sms: usize) -> (&'static str, usize) {
    let big = m.div_ceil(128) * n.div_ceil(128) >= sms;
    match (layout, big) {
        (GemmLayout::NN, true) => ("sgemm_nn_128x128", 128),
        (GemmLayout::NT, true) => ("sgemm_nt_128x128", 128),
        (GemmLayout::TN, true) => ("sgemm_tn_128x128", 128),
        (GemmLayout::NN, false) => ("sgemm_nn_64x64", 64),
        (GemmLayout::NT, false) => ("sgemm_nt_64x64", 64),
        (GemmLayout::TN, false) => ("sgemm_tn_64x64", 64),
    }
}

impl CudaBackend {
    /// `C[m,n] = op(A) op(B) (+ bias[n])` on raw device buffers whose sizes the caller checked.
    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        &self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
        bias: u64,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let (name, tile) = gemm_kernel(layout, m, n, self.sms());
        let p = GemmParams {
            a,
            b,
            c,
            bias,
            m: fits_i32(m, "gemm m")?,
            n: fits_i32(n, "gemm n")?,
            k: fits_i32(k, "gemm k")?,
            lda: fits_i32(lda, "gemm lda")?,
            ldb: fits_i32(ldb, "gemm ldb")?,
            ldc: fits_i32(ldc, "gemm ldc")?,
            _pad0: 0,
            _pad1: 0,
        };
        let gx = u32::try_from(n.div_ceil(tile)).map_err(|_| Error::Invalid(format!("{}: n too large", what())))?;
        let gy = u32::try_from(m.div_ceil(tile)).map_err(|_| Error::Invalid(format!("{}: m too large", what())))?;
        Launch::new(FILE, name, (gx, gy, 1), 256).run(&self.kernels, &self.stream, &p, what)
    }

    /// Row-major SGEMM on device matrices: `c[m,n] = op(a) op(b)`. Exposed for benchmarks.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (lda, ldb) = match layout {
            GemmLayout::NN => (k, n),
            GemmLayout::NT => (k, k),
            GemmLayout::TN => (m, n),
        };
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return Err(Error::Shape(format!(
                "sgemm {m}x{n}x{k}: buffers of {}, {} and {} elements are too small",
                a.len(),
                b.len(),
                c.len()
            )));
        }
        let (pa, pb, pc) = (self.ptr(a), self.ptr(b), self.ptr_mut(c));
        self.gemm_raw(layout, m, n, k, pa, lda, pb, ldb, pc, n, 0, &|| format!("sgemm {layout:?} {m}x{n}x{k}"))
    }

    /// `y = x w^T + b` of checked geometry into the buffer at `py`.
    pub(crate) fn linear_fwd_raw(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, py: u64) -> Result<()> {
        let (n, inp, out) = (x.dim(0), x.dim(1), w.dim(0));
        let px = self.ptr(self.dev(x, "linear input")?);
        let pw = self.ptr(self.dev(w, "linear weight")?);
        let pb = self.opt_ptr(b, "linear bias")?;
        let (xd, wd) = (x.dims().to_vec(), w.dims().to_vec());
        self.gemm_raw(GemmLayout::NT, n, out, inp, px, inp, pw, inp, py, out, pb, &|| {
            format!("linear_forward x {} w {}", fmt_dims(&xd), fmt_dims(&wd))
        })
    }
}

impl LinearOps for CudaBackend {
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let s = LinearShape::forward(x, w, b)?;
        let mut y = self.alloc::<f32>(s.n * s.fout)?;
        let py = self.ptr_mut(&mut y);
        self.linear_fwd_raw(x, w, b, py)?;
        self.tensor(&[s.n, s.fout], y)
    }

    fn linear_backward(&self, dy: &Tensor, x: &Tensor, w: &Tensor, with_bias: bool) -> Result<LinearGrads> {
        let LinearShape { n, fin: inp, fout: out } = LinearShape::backward(dy, x, w)?;
        let pdy = self.ptr(self.dev(dy, "linear_backward dy")?);
        let px = self.ptr(self.dev(x, "linear_backward x")?);
        let pw = self.ptr(self.dev(w, "linear_backward w")?);
        let (xd, wd) = (x.dims().to_vec(), w.dims().to_vec());
        let what = move || format!("linear_backward x {} w {}", fmt_dims(&xd), fmt_dims(&wd));
        // dx[n, in] = dy[n, out] w[out, in]
        let mut dx = self.alloc::<f32>(n * inp)?;
        let pdx = self.ptr_mut(&mut dx);
        self.gemm_raw(GemmLayout::NN, n, inp, out, pdy, out, pw, inp, pdx, inp, 0, &what)?;
        // dw[out, in] = dy^T[out, n] x[n, in]
        let mut dw = self.alloc::<f32>(out * inp)?;
        let pdw = self.ptr_mut(&mut dw);
        self.gemm_raw(GemmLayout::TN, out, inp, n, pdy, out, px, inp, pdw, inp, 0, &what)?;
        let db = if with_bias {
            let mut db = self.alloc::<f32>(out)?;
            let p = ColSumParams {
                x: pdy,
                out: self.ptr_mut(&mut db),
                rows: fits_i32(n, "linear batch")?,
                cols: fits_i32(out, "linear outputs")?,
            };
            Launch::linear(FILE, "col_sum", out, 256, 256)?.run(&self.kernels, &self.stream, &p, &what)?;
            Some(self.tensor(&[out], db)?)
        } else {
            None
        };
        Ok(LinearGrads { dx: self.tensor(&[n, inp], dx)?, dw: self.tensor(&[out, inp], dw)?, db })
    }
}

#[cfg(test)]
mod tests {
    use super::{gemm_kernel, GemmLayout};
    use crate::backend::cuda::compile::KERNEL_ENTRY_POINTS;

    #[test]
    fn every_gemm_tile_names_a_declared_kernel() {
        for layout in [GemmLayout::NN, GemmLayout::NT, GemmLayout::TN] {
            for (m, n) in [(1, 1), (4096, 4096)] {
                let (name, _) = gemm_kernel(layout, m, n, 132);
                assert!(KERNEL_ENTRY_POINTS.contains(&("gemm.cu", name)), "{name} is not declared in gemm.cu");
            }
        }
        assert!(KERNEL_ENTRY_POINTS.contains(&("gemm.cu", "col_sum")));
    }
}
