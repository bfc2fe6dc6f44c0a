//! Batch norm on the CPU (math in `ops.rs`).

use super::{host, ops, CpuBackend};
use crate::backend::shape::{same_dims, BnShape};
use crate::backend::{BnGrads, BnParams, BnSaved, BnTrainParams, NormOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl NormOps for CpuBackend {
    fn batchnorm_forward_train(&self, x: &Tensor, bn: BnTrainParams<'_>) -> Result<(Tensor, BnSaved)> {
        bn_train(x, bn, false)
    }

    fn batchnorm_relu_forward_train(&self, x: &Tensor, bn: BnTrainParams<'_>) -> Result<(Tensor, BnSaved)> {
        bn_train(x, bn, true)
    }

    fn batchnorm_forward_eval(&self, x: &Tensor, bn: BnParams<'_>) -> Result<Tensor> {
        let BnParams { gamma, beta, running_mean, running_var, eps } = bn;
        let s = BnShape::eval(x, gamma, beta, running_mean, running_var)?;
        let (scale, shift) =
            ops::batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Tensor::from_vec(x.dims(), ops::batchnorm_eval(host(x)?, s.c, s.hw, &scale, &shift))
    }

    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        bn_backward(dy, None, x, gamma, saved)
    }

    fn batchnorm_relu_backward(
        &self,
        dy: &Tensor,
        y: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        saved: &BnSaved,
    ) -> Result<BnGrads> {
        same_dims(y, x, "batchnorm_relu_backward: ReLU output and input")?;
        bn_backward(dy, Some(y), x, gamma, saved)
    }

    fn batchnorm_fold(&self, bn: BnParams<'_>) -> Result<(Tensor, Tensor)> {
        let BnParams { gamma, beta, running_mean, running_var, eps } = bn;
        let c = BnShape::fold(gamma, beta, running_mean, running_var)?;
        let (scale, shift) =
            ops::batchnorm_fold(host(gamma)?, host(beta)?, host(running_mean)?, host(running_var)?, eps);
        Ok((Tensor::from_vec(&[c], scale)?, Tensor::from_vec(&[c], shift)?))
    }
}

/// Training batch norm, followed by a ReLU when `relu_after`.
fn bn_train(x: &Tensor, bn: BnTrainParams<'_>, relu_after: bool) -> Result<(Tensor, BnSaved)> {
    let BnTrainParams { gamma, beta, running_mean, running_var, momentum, eps } = bn;
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
        relu_after,
    );
    Ok((
        Tensor::from_vec(x.dims(), out.y)?,
        BnSaved { mean: Tensor::from_vec(&[c], out.mean)?, invstd: Tensor::from_vec(&[c], out.invstd)? },
    ))
}

/// Batch-norm backward, through the following ReLU (output `relu_out`) when given.
fn bn_backward(dy: &Tensor, relu_out: Option<&Tensor>, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
    let BnShape { n, c, hw } = BnShape::backward(dy, x, gamma, saved)?;
    let out = ops::batchnorm_backward(
        host(dy)?,
        relu_out.map(host).transpose()?,
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
