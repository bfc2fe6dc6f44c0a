//! [`LossOps`] on `kernels/loss.cu` (softmax cross-entropy, distillation KL) and the MSE
//! loss (which reuses the feature-MSE reduction of `kernels/reduce.cu`).

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::{same_dims, LossShape};
use crate::backend::{CrossEntropy, LossOps};
use crate::error::Result;
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

const FILE: &str = "loss.cu";

/// Mirror of `XentParams` in loss.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct XentParams {
    logits: u64,
    labels: u64,
    dlogits: u64,
    stats: u64,
    n: i32,
    classes: i32,
    inv_n: f32,
    _pad: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for XentParams {}
assert_layout!(XentParams, size 48, logits @ 0, labels @ 8, dlogits @ 16, stats @ 24, n @ 32, classes @ 36, inv_n @ 40, _pad @ 44);

/// Mirror of `KlParams` in loss.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KlParams {
    student: u64,
    teacher: u64,
    grad: u64,
    row_kl: u64,
    n: i32,
    classes: i32,
    inv_t: f32,
    grad_scale: f32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for KlParams {}
assert_layout!(KlParams, size 48, student @ 0, teacher @ 8, grad @ 16, row_kl @ 24, n @ 32, classes @ 36, inv_t @ 40, grad_scale @ 44);

impl LossOps for CudaBackend {
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy> {
        let LossShape { n, classes } = LossShape::cross_entropy(logits, labels)?;
        fits_i32(logits.numel(), "softmax_cross_entropy")?;
        let dev_labels = self.upload(labels, "softmax_cross_entropy labels")?;
        let mut dlogits = self.alloc::<f32>(n * classes)?;
        let mut stats = self.alloc::<f32>(2 * n)?;
        let p = XentParams {
            logits: self.ptr(self.dev(logits, "softmax_cross_entropy logits")?),
            labels: self.ptr(&dev_labels),
            dlogits: self.ptr_mut(&mut dlogits),
            stats: self.ptr_mut(&mut stats),
            n: n as i32,
            classes: classes as i32,
            inv_n: if n > 0 { 1.0 / n as f32 } else { 0.0 },
            _pad: 0,
        };
        let ld = logits.dims().to_vec();
        // One warp per row, 8 rows per block.
        Launch::linear(FILE, "softmax_xent", n, 8, 256)?
            .run(&self.kernels, &self.stream, &p, &|| format!("softmax_cross_entropy {}", fmt_dims(&ld)))?;
        let host = self.download(&stats, "softmax_cross_entropy")?;
        let (losses, correct) = host.split_at(n);
        let sum: f64 = losses.iter().map(|&l| l as f64).sum();
        let loss = if n > 0 { (sum / n as f64) as f32 } else { 0.0 };
        let correct = correct.iter().filter(|&&c| c > 0.5).count();
        Ok(CrossEntropy { loss, dlogits: self.tensor(logits.dims(), dlogits)?, correct })
    }

    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)> {
        let LossShape { n, classes } = LossShape::distill(student, teacher, temperature)?;
        fits_i32(student.numel(), "distill_kl")?;
        let mut grad = self.alloc::<f32>(n * classes)?;
        let mut row_kl = self.alloc::<f32>(n)?;
        let p = KlParams {
            student: self.ptr(self.dev(student, "distill_kl student")?),
            teacher: self.ptr(self.dev(teacher, "distill_kl teacher")?),
            grad: self.ptr_mut(&mut grad),
            row_kl: self.ptr_mut(&mut row_kl),
            n: n as i32,
            classes: classes as i32,
            inv_t: 1.0 / temperature,
            grad_scale: if n > 0 { temperature / n as f32 } else { 0.0 },
        };
        let sd = student.dims().to_vec();
        Launch::linear(FILE, "distill_kl", n, 8, 256)?
            .run(&self.kernels, &self.stream, &p, &|| format!("distill_kl {} T={temperature}", fmt_dims(&sd)))?;
        let rows = self.download(&row_kl, "distill_kl")?;
        let sum: f64 = rows.iter().map(|&v| v as f64).sum();
        let t2 = (temperature as f64) * (temperature as f64);
        let loss = if n > 0 { (t2 * sum / n as f64) as f32 } else { 0.0 };
        Ok((loss, self.tensor(student.dims(), grad)?))
    }

    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
        same_dims(x, target, "mse_loss")?;
        let m = x.numel();
        let mut grad = self.alloc::<f32>(m)?;
        let scale = if m > 0 { 2.0 / m as f32 } else { 0.0 };
        let mut out = self.alloc::<f32>(1)?;
        let xd = x.dims().to_vec();
        self.sqdiff_launch(x, target, 1, m, Some((&mut grad, scale)), &mut out, &|| {
            format!("mse_loss {}", fmt_dims(&xd))
        })?;
        let v = self.download(&out, "mse_loss")?;
        Ok((v[0], self.tensor(x.dims(), grad)?))
    }
}
