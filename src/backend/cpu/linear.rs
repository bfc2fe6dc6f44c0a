//! Fully connected layers on the CPU (GEMM in `gemm.rs`).

use super::{gemm, host, CpuBackend};
use crate::backend::shape::LinearShape;
use crate::backend::{LinearGrads, LinearOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl LinearOps for CpuBackend {
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let LinearShape { n, fin, fout } = LinearShape::forward(x, w, b)?;
        let mut y = vec![0.0f32; n * fout];
        if self.reference {
            gemm::sgemm_reference(n, fout, fin, host(x)?, false, host(w)?, true, &mut y, false);
        } else {
            gemm::sgemm(n, fout, fin, host(x)?, false, host(w)?, true, &mut y, false, rayon::current_num_threads());
        }
        if let Some(b) = b {
            let bs = host(b)?;
            for row in y.chunks_mut(fout.max(1)) {
                for (v, bv) in row.iter_mut().zip(bs) {
                    *v += bv;
                }
            }
        }
        Tensor::from_vec(&[n, fout], y)
    }

    fn linear_backward(&self, dy: &Tensor, x: &Tensor, w: &Tensor, with_bias: bool) -> Result<LinearGrads> {
        let LinearShape { n, fin, fout } = LinearShape::backward(dy, x, w)?;
        let threads = rayon::current_num_threads();
        let (g, xs, ws) = (host(dy)?, host(x)?, host(w)?);
        let mut dx = vec![0.0f32; n * fin];
        gemm::sgemm(n, fin, fout, g, false, ws, false, &mut dx, false, threads);
        let mut dw = vec![0.0f32; fout * fin];
        gemm::sgemm(fout, fin, n, g, true, xs, false, &mut dw, false, threads);
        let db = if with_bias {
            let mut db = vec![0.0f64; fout];
            for row in g.chunks(fout.max(1)) {
                for (a, &v) in db.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            Some(Tensor::from_vec(&[fout], db.into_iter().map(|v| v as f32).collect())?)
        } else {
            None
        };
        Ok(LinearGrads { dx: Tensor::from_vec(&[n, fin], dx)?, dw: Tensor::from_vec(&[fout, fin], dw)?, db })
    }
}
