//! Batch norm on the CPU (math in `ops.rs`).

use super::{host, ops, CpuBackend};
use crate::backend::shape::BnShape;
use crate::backend::{BnGrads, BnSaved, NormOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl NormOps for CpuBackend {
    fn batchnorm_forward_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        momentum: f32,
        eps: f32,
    ) -> Result<(Tensor, BnSaved)> {
        let BnShape { n, c, hw } = BnShape::train(x, gamma, beta, running_mean, running_var)?;
        let out = ops::batchnorm_train(
            host(x)?,
            n,
            c,
            hw,
            host(gamma)?,
            host(beta)?,
            running_mean.as_mut_slice()?,
            running_var.as_mut_slice()?,
            momentum,
            eps,
        );
        Ok((
            Tensor::from_vec(x.dims(), out.y)?,
            BnSaved { mean: Tensor::from_vec(&[c], out.mean)?, invstd: Tensor::from_vec(&[c], out.invstd)? },
        ))
    }

    fn batchnorm_forward_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        let s = BnShape::eval(x, gamma, beta, running_mean, running_var)?;
        let (scale, shift) =
            ops::batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Tensor::from_vec(x.dims(), ops::batchnorm_eval(host(x)?, s.c, s.hw, &scale, &shift))
    }

    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        let BnShape { n, c, hw } = BnShape::backward(dy, x, gamma, saved)?;
        let out = ops::batchnorm_backward(
            host(dy)?,
            host(x)?,
            n,
            c,
            hw,
            host(gamma)?,
            host(&saved.mean)?,
            host(&saved.invstd)?,
        );
        Ok(BnGrads {
            dx: Tensor::from_vec(x.dims(), out.dx)?,
            dgamma: Tensor::from_vec(&[c], out.dgamma)?,
            dbeta: Tensor::from_vec(&[c], out.dbeta)?,
        })
    }

    fn batchnorm_fold(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        let c = BnShape::fold(gamma, beta, running_mean, running_var)?;
        let (scale, shift) =
            ops::batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Ok((Tensor::from_vec(&[c], scale)?, Tensor::from_vec(&[c], shift)?))
    }
}
