//! Launch helpers for `kernels/loss.cu` (softmax cross-entropy, distillation KL) and the MSE
//! loss (which reuses the feature-MSE reduction of `kernels/reduce.cu`).

use super::kernels::Launch;
use super::{fits_i32, same_dims, CudaBackend};
use crate::backend::CrossEntropy;
use crate::error::{Error, Result};
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
const _: () = assert!(std::mem::size_of::<XentParams>() == 48);

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
const _: () = assert!(std::mem::size_of::<KlParams>() == 48);

fn logits_geometry(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    t.expect_rank(2, what)?;
    let (n, classes) = (t.dim(0), t.dim(1));
    if classes == 0 {
        return Err(Error::Shape(format!("{what}: no classes in {}", fmt_dims(t.dims()))));
    }
    fits_i32(t.numel(), what)?;
    Ok((n, classes))
}

impl CudaBackend {
    pub(crate) fn xent(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy> {
        let (n, classes) = logits_geometry(logits, "softmax_cross_entropy logits")?;
        if labels.len() != n {
            return Err(Error::Shape(format!("softmax_cross_entropy: {} labels for {n} rows", labels.len())));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(Error::Invalid(format!("softmax_cross_entropy: label {l} of row {i} is not below {classes}")));
        }
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

    pub(crate) fn kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)> {
        let (n, classes) = logits_geometry(student, "distill_kl student")?;
        same_dims(student, teacher, "distill_kl student vs teacher")?;
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::Invalid(format!("distill_kl: temperature must be positive, got {temperature}")));
        }
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

    pub(crate) fn mse(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
        same_dims(x, target, "mse_loss x vs target")?;
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
