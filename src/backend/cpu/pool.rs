//! Max and global average pooling on the CPU.

use super::{host, CpuBackend};
use crate::backend::shape::{GlobalPoolShape, PoolShape};
use crate::backend::PoolOps;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl PoolOps for CpuBackend {
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max("maxpool_forward", x.dims(), kernel, stride, pad)?;
        Tensor::from_vec(&s.output_dims(), maxpool_forward(host(x)?, &s))
    }

    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max_backward(dy, x, kernel, stride, pad)?;
        Tensor::from_vec(x.dims(), maxpool_backward(host(dy)?, host(x)?, &s))
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = GlobalPoolShape::new("global_avgpool_forward", x.dims())?;
        Tensor::from_vec(&[s.n, s.c], global_avgpool_forward(host(x)?, s.n * s.c, s.h * s.w))
    }

    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let s = GlobalPoolShape::backward(dy, x_dims)?;
        Tensor::from_vec(x_dims, global_avgpool_backward(host(dy)?, s.n * s.c, s.h * s.w))
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

/// The window of output cell `(p, q)` clipped to the input: rows `r0..r1`, columns `t0..t1`
/// (padding cells hold -inf and never win, so they are skipped).
fn pool_window(s: &PoolShape, p: usize, q: usize) -> (usize, usize, usize, usize) {
    let clip = |o: usize, len: usize| {
        let start = (o * s.stride) as isize - s.pad as isize;
        let end = (start + s.kernel as isize).min(len as isize);
        (start.max(0) as usize, end.max(0) as usize)
    };
    let (r0, r1) = clip(p, s.h);
    let (t0, t1) = clip(q, s.w);
    (r0, r1, t0, t1)
}

/// Index in the plane of the first maximum of output cell `(p, q)`'s window (row-major).
fn pool_argmax(xs: &[f32], s: &PoolShape, p: usize, q: usize) -> usize {
    let (r0, r1, t0, t1) = pool_window(s, p, q);
    let mut best = f32::NEG_INFINITY;
    let mut at = r0 * s.w + t0;
    for r in r0..r1 {
        for t in t0..t1 {
            let idx = r * s.w + t;
            if xs[idx] > best {
                best = xs[idx];
                at = idx;
            }
        }
    }
    at
}

pub fn maxpool_forward(x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    let mut y = vec![0.0f32; s.n * s.c * ohw];
    y.par_chunks_mut(ohw.max(1)).enumerate().for_each(|(plane, yc)| {
        let xs = &x[plane * hw..(plane + 1) * hw];
        for p in 0..s.out_h {
            for q in 0..s.out_w {
                let (r0, r1, t0, t1) = pool_window(s, p, q);
                let mut best = f32::NEG_INFINITY;
                for r in r0..r1 {
                    for &v in &xs[r * s.w + t0..r * s.w + t1] {
                        if v > best {
                            best = v;
                        }
                    }
                }
                yc[p * s.out_w + q] = best;
            }
        }
    });
    y
}

pub fn maxpool_backward(dy: &[f32], x: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, ohw) = (s.h * s.w, s.out_h * s.out_w);
    let mut dx = vec![0.0f32; s.n * s.c * hw];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, dxs)| {
        let xs = &x[plane * hw..(plane + 1) * hw];
        let g = &dy[plane * ohw..(plane + 1) * ohw];
        for p in 0..s.out_h {
            for q in 0..s.out_w {
                // First maximum in row-major window order, as the forward pass scans.
                dxs[pool_argmax(xs, s, p, q)] += g[p * s.out_w + q];
            }
        }
    });
    dx
}

pub fn global_avgpool_forward(x: &[f32], nc: usize, hw: usize) -> Vec<f32> {
    (0..nc)
        .into_par_iter()
        .map(|i| (x[i * hw..(i + 1) * hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
        .collect()
}

pub fn global_avgpool_backward(dy: &[f32], nc: usize, hw: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; nc * hw];
    dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(|(d, &g)| d.fill(g / hw as f32));
    debug_assert_eq!(dy.len(), nc);
    dx
}
