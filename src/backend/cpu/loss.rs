//! Losses on the CPU.

use super::elementwise::map_binary;
use super::{host, CpuBackend};
use crate::backend::shape::{same_dims, LossShape};
use crate::backend::{CrossEntropy, LossOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl LossOps for CpuBackend {
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy> {
        let LossShape { n, classes } = LossShape::cross_entropy(logits, labels)?;
        let (loss, d, correct) = softmax_cross_entropy(host(logits)?, n, classes, labels);
        Ok(CrossEntropy { loss, dlogits: Tensor::from_vec(logits.dims(), d)?, correct })
    }

    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)> {
        let LossShape { n, classes } = LossShape::distill(student, teacher, temperature)?;
        let (loss, d) = distill_kl(host(student)?, host(teacher)?, n, classes, temperature);
        Ok((loss, Tensor::from_vec(student.dims(), d)?))
    }

    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
        same_dims(x, target, "mse_loss")?;
        let (loss, d) = mse_loss(host(x)?, host(target)?);
        Ok((loss, Tensor::from_vec(x.dims(), d)?))
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

/// Row-wise log-sum-exp of `z * inv_t`.
fn log_softmax_row(z: &[f32], inv_t: f64, out: &mut [f64]) {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 * inv_t));
    let lse = max + z.iter().map(|&v| (v as f64 * inv_t - max).exp()).sum::<f64>().ln();
    for (o, &v) in out.iter_mut().zip(z) {
        *o = v as f64 * inv_t - lse;
    }
}

/// Returns (mean loss, dlogits, correct).
pub fn softmax_cross_entropy(logits: &[f32], n: usize, classes: usize, labels: &[u32]) -> (f32, Vec<f32>, usize) {
    let mut d = vec![0.0f32; n * classes];
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut logp = vec![0.0f64; classes];
    for i in 0..n {
        let z = &logits[i * classes..(i + 1) * classes];
        log_softmax_row(z, 1.0, &mut logp);
        let label = labels[i] as usize;
        loss -= logp[label];
        let argmax = z.iter().enumerate().fold(0, |best, (j, &v)| if v > z[best] { j } else { best });
        if argmax == label {
            correct += 1;
        }
        for j in 0..classes {
            let p = logp[j].exp();
            d[i * classes + j] = ((p - if j == label { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    ((loss / n as f64) as f32, d, correct)
}

/// `T^2 * mean_n KL(softmax(t/T) || softmax(s/T))` and its gradient for the student logits.
pub fn distill_kl(student: &[f32], teacher: &[f32], n: usize, classes: usize, temperature: f32) -> (f32, Vec<f32>) {
    let t = temperature as f64;
    let mut d = vec![0.0f32; n * classes];
    let mut loss = 0.0f64;
    let mut ls = vec![0.0f64; classes];
    let mut lt = vec![0.0f64; classes];
    for i in 0..n {
        log_softmax_row(&student[i * classes..(i + 1) * classes], 1.0 / t, &mut ls);
        log_softmax_row(&teacher[i * classes..(i + 1) * classes], 1.0 / t, &mut lt);
        for j in 0..classes {
            let pt = lt[j].exp();
            loss += pt * (lt[j] - ls[j]);
            // d/ds_j of T^2 * KL / n = T * (p_s - p_t) / n
            d[i * classes + j] = (t * (ls[j].exp() - pt) / n as f64) as f32;
        }
    }
    ((t * t * loss / n as f64) as f32, d)
}

pub fn mse_loss(x: &[f32], target: &[f32]) -> (f32, Vec<f32>) {
    let count = x.len().max(1) as f64;
    let sum: f64 = x.iter().zip(target).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let d = map_binary(false, x, target, |a, b| (2.0 * (a as f64 - b as f64) / count) as f32);
    ((sum / count) as f32, d)
}
