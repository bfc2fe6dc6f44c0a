//! The option-A shortcut on the CPU.

use super::{host, ops, CpuBackend};
use crate::backend::shape::ShortcutShape;
use crate::backend::ShortcutOps;
use crate::error::Result;
use crate::tensor::Tensor;

impl ShortcutOps for CpuBackend {
    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor> {
        let s = ShortcutShape::new("shortcut_forward", x.dims(), src, stride)?;
        let y = ops::shortcut_forward(host(x)?, s.n, s.c_in, s.h, s.w, src, stride);
        Tensor::from_vec(&s.output_dims(), y)
    }

    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor> {
        let s = ShortcutShape::backward(dy, src, stride, x_dims)?;
        Tensor::from_vec(x_dims, ops::shortcut_backward(host(dy)?, s.n, s.c_in, s.h, s.w, src, stride))
    }
}
