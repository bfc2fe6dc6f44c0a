//! Element-wise ops on the CPU.

use super::{host, team, CpuBackend};
use crate::backend::shape::same_dims;
use crate::backend::{Activation, ElementwiseOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl ElementwiseOps for CpuBackend {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), map_unary(on_team(x), host(x)?, relu))
    }

    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu_backward")?;
        Tensor::from_vec(y.dims(), map_binary(on_team(y), host(dy)?, host(y)?, |g, v| if v > 0.0 { g } else { 0.0 }))
    }

    fn relu6_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), map_unary(on_team(x), host(x)?, |v| Activation::Relu6.apply(v)))
    }

    fn relu6_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu6_backward")?;
        let pass = |g: f32, v: f32| if v > 0.0 && v < 6.0 { g } else { 0.0 };
        Tensor::from_vec(y.dims(), map_binary(on_team(y), host(dy)?, host(y)?, pass))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add")?;
        Tensor::from_vec(a.dims(), map_binary(on_team(a), host(a)?, host(b)?, |u, v| u + v))
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add_relu")?;
        Tensor::from_vec(a.dims(), map_binary(on_team(a), host(a)?, host(b)?, |u, v| relu(u + v)))
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        update_binary(on_team(x), acc.as_mut_slice()?, host(x)?, |a, v| a + v);
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

/// Whether an op on `t` runs on the team: a batch-1 activation (4-D, `team::SHORT_BATCH`), whose
/// neighbours in a batch-1 step are the convolutions' team regions; on rayon's pool right
/// after them its workers competed with the team's spinning helper for the cores.
pub(super) fn on_team(t: &Tensor) -> bool {
    t.dims().len() == 4 && t.dims()[0] < team::SHORT_BATCH
}

pub fn map_unary(short: bool, x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(x.len());
    team::for_each_chunk_mut(short, &mut y, ELEMWISE_CHUNK, |i, yc| {
        for (o, &v) in yc.iter_mut().zip(&x[i * ELEMWISE_CHUNK..]) {
            *o = f(v);
        }
    });
    y
}

pub fn map_binary(short: bool, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::tensor::pool::take(a.len());
    team::for_each_chunk_mut(short, &mut y, ELEMWISE_CHUNK, |i, yc| {
        let at = i * ELEMWISE_CHUNK;
        for ((o, &u), &v) in yc.iter_mut().zip(&a[at..]).zip(&b[at..]) {
            *o = f(u, v);
        }
    });
    y
}

pub fn update_unary(short: bool, acc: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    team::for_each_chunk_mut(short, acc, ELEMWISE_CHUNK, |_, ac| {
        for a in ac.iter_mut() {
            *a = f(*a);
        }
    });
}

pub fn update_binary(short: bool, acc: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    team::for_each_chunk_mut(short, acc, ELEMWISE_CHUNK, |i, ac| {
        for (a, &v) in ac.iter_mut().zip(&x[i * ELEMWISE_CHUNK..]) {
            *a = f(*a, v);
        }
    });
}
