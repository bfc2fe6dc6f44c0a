//! Losses on the CPU (math in `ops.rs`).

use super::{host, ops, CpuBackend};
use crate::backend::shape::{same_dims, LossShape};
use crate::backend::{CrossEntropy, LossOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl LossOps for CpuBackend {
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy> {
        let LossShape { n, classes } = LossShape::cross_entropy(logits, labels)?;
        let (loss, d, correct) = ops::softmax_cross_entropy(host(logits)?, n, classes, labels);
        Ok(CrossEntropy { loss, dlogits: Tensor::from_vec(logits.dims(), d)?, correct })
    }

    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)> {
        let LossShape { n, classes } = LossShape::distill(student, teacher, temperature)?;
        let (loss, d) = ops::distill_kl(host(student)?, host(teacher)?, n, classes, temperature);
        Ok((loss, Tensor::from_vec(student.dims(), d)?))
    }

    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
        same_dims(x, target, "mse_loss")?;
        let (loss, d) = ops::mse_loss(host(x)?, host(target)?);
        Ok((loss, Tensor::from_vec(x.dims(), d)?))
    }
}
