//! Max and global average pooling on the CPU.

use super::{host, ops, CpuBackend};
use crate::backend::shape::{GlobalPoolShape, PoolShape};
use crate::backend::PoolOps;
use crate::error::Result;
use crate::tensor::Tensor;

impl PoolOps for CpuBackend {
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max("maxpool_forward", x.dims(), kernel, stride, pad)?;
        Tensor::from_vec(&s.output_dims(), ops::maxpool_forward(host(x)?, &s))
    }

    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max_backward(dy, x, kernel, stride, pad)?;
        Tensor::from_vec(x.dims(), ops::maxpool_backward(host(dy)?, host(x)?, &s))
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = GlobalPoolShape::new("global_avgpool_forward", x.dims())?;
        Tensor::from_vec(&[s.n, s.c], ops::global_avgpool_forward(host(x)?, s.n * s.c, s.h * s.w))
    }

    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let s = GlobalPoolShape::backward(dy, x_dims)?;
        Tensor::from_vec(x_dims, ops::global_avgpool_backward(host(dy)?, s.n * s.c, s.h * s.w))
    }
}
