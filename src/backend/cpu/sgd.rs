//! The SGD step on the CPU (math in `ops.rs`).

use super::{host, ops, CpuBackend};
use crate::backend::shape::same_dims;
use crate::backend::{OptimOps, SgdStep};
use crate::error::Result;
use crate::tensor::Tensor;

impl OptimOps for CpuBackend {
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, hp: SgdStep) -> Result<()> {
        same_dims(param, grad, "sgd_step: parameter and gradient")?;
        same_dims(param, momentum_buf, "sgd_step: parameter and momentum buffer")?;
        ops::sgd_step(
            param.as_mut_slice()?,
            host(grad)?,
            momentum_buf.as_mut_slice()?,
            hp.lr,
            hp.momentum,
            hp.weight_decay,
            hp.nesterov,
        );
        Ok(())
    }
}
