//! Element-wise ops on the CPU.

use super::{host, ops, CpuBackend};
use crate::backend::shape::same_dims;
use crate::backend::{Activation, ElementwiseOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl ElementwiseOps for CpuBackend {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), ops::map_unary(host(x)?, ops::relu))
    }

    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu_backward")?;
        Tensor::from_vec(y.dims(), ops::map_binary(host(dy)?, host(y)?, |g, v| if v > 0.0 { g } else { 0.0 }))
    }

    fn relu6_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), ops::map_unary(host(x)?, |v| Activation::Relu6.apply(v)))
    }

    fn relu6_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu6_backward")?;
        let pass = |g: f32, v: f32| if v > 0.0 && v < 6.0 { g } else { 0.0 };
        Tensor::from_vec(y.dims(), ops::map_binary(host(dy)?, host(y)?, pass))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add")?;
        Tensor::from_vec(a.dims(), ops::map_binary(host(a)?, host(b)?, |u, v| u + v))
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add_relu")?;
        Tensor::from_vec(a.dims(), ops::map_binary(host(a)?, host(b)?, |u, v| ops::relu(u + v)))
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        ops::update_binary(acc.as_mut_slice()?, host(x)?, |a, v| a + v);
        Ok(())
    }

    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        for v in x.as_mut_slice()? {
            *v *= s;
        }
        Ok(())
    }
}
