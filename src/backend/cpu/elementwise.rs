//! Element-wise ops on the CPU.

use super::{host, CpuBackend};
use crate::backend::shape::same_dims;
use crate::backend::{Activation, ElementwiseOps};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl ElementwiseOps for CpuBackend {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), map_unary(host(x)?, relu))
    }

    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu_backward")?;
        Tensor::from_vec(y.dims(), map_binary(host(dy)?, host(y)?, |g, v| if v > 0.0 { g } else { 0.0 }))
    }

    fn relu6_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), map_unary(host(x)?, |v| Activation::Relu6.apply(v)))
    }

    fn relu6_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu6_backward")?;
        let pass = |g: f32, v: f32| if v > 0.0 && v < 6.0 { g } else { 0.0 };
        Tensor::from_vec(y.dims(), map_binary(host(dy)?, host(y)?, pass))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add")?;
        Tensor::from_vec(a.dims(), map_binary(host(a)?, host(b)?, |u, v| u + v))
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add_relu")?;
        Tensor::from_vec(a.dims(), map_binary(host(a)?, host(b)?, |u, v| relu(u + v)))
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        update_binary(acc.as_mut_slice()?, host(x)?, |a, v| a + v);
        Ok(())
    }

    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        for v in x.as_mut_slice()? {
            *v *= s;
        }
        Ok(())
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

/// ReLU as every CPU path computes it (`max(v, 0)` with 0 for NaN and for -0.0): the SIMD
/// epilogues use `maxps(v, 0)`, which is this exactly, so fused and unfused results agree bit for bit.
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Elements per parallel task for element-wise work; large enough that scheduling is cheap.
pub(super) const ELEMWISE_CHUNK: usize = 1 << 15;

pub fn map_unary(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(x.len());
    y.par_chunks_mut(ELEMWISE_CHUNK).zip(x.par_chunks(ELEMWISE_CHUNK)).for_each(|(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = f(v);
        }
    });
    y
}

pub fn map_binary(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(a.len());
    y.par_chunks_mut(ELEMWISE_CHUNK).zip(a.par_chunks(ELEMWISE_CHUNK).zip(b.par_chunks(ELEMWISE_CHUNK))).for_each(
        |(yc, (ac, bc))| {
            for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                *o = f(u, v);
            }
        },
    );
    y
}

pub fn update_unary(acc: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    acc.par_chunks_mut(ELEMWISE_CHUNK).for_each(|ac| {
        for a in ac.iter_mut() {
            *a = f(*a);
        }
    });
}

pub fn update_binary(acc: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    acc.par_chunks_mut(ELEMWISE_CHUNK).zip(x.par_chunks(ELEMWISE_CHUNK)).for_each(|(ac, xc)| {
        for (a, &v) in ac.iter_mut().zip(xc) {
            *a = f(*a, v);
        }
    });
}
