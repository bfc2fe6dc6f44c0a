//! The option-A shortcut on the CPU.

use super::{host, CpuBackend};
use crate::backend::shape::ShortcutShape;
use crate::backend::ShortcutOps;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl ShortcutOps for CpuBackend {
    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor> {
        let s = ShortcutShape::new("shortcut_forward", x.dims(), src, stride)?;
        let y = shortcut_forward(host(x)?, s.n, s.c_in, s.h, s.w, src, stride);
        Tensor::from_vec(&s.output_dims(), y)
    }

    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor> {
        let s = ShortcutShape::backward(dy, src, stride, x_dims)?;
        Tensor::from_vec(x_dims, shortcut_backward(host(dy)?, s.n, s.c_in, s.h, s.w, src, stride))
    }
}

// ---- the slice-level math (shapes are checked by the trait methods above) -----------------

/// Output spatial size of the option-A shortcut: `x[:, :, ::stride, ::stride]`.
pub fn shortcut_out_size(h: usize, stride: usize) -> usize {
    h.div_ceil(stride)
}

pub fn shortcut_forward(x: &[f32], n: usize, c: usize, h: usize, w: usize, src: &[i32], stride: usize) -> Vec<f32> {
    let (oh, ow) = (shortcut_out_size(h, stride), shortcut_out_size(w, stride));
    let oc = src.len();
    // Every element is written below (zeros for the padded channels).
    let mut y = crate::tensor::pool::take(n * oc * oh * ow);
    y.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(row, yc)| {
        let (i, o) = (row / oc, row % oc);
        let s = src[o];
        if s < 0 {
            yc.fill(0.0);
            return;
        }
        let plane = &x[(i * c + s as usize) * h * w..(i * c + s as usize + 1) * h * w];
        if stride == 1 {
            yc.copy_from_slice(plane);
            return;
        }
        for (p, yrow) in yc.chunks_exact_mut(ow.max(1)).enumerate() {
            let xrow = &plane[p * stride * w..];
            for (q, v) in yrow.iter_mut().enumerate() {
                *v = xrow[q * stride];
            }
        }
    });
    y
}

pub fn shortcut_backward(dy: &[f32], n: usize, c: usize, h: usize, w: usize, src: &[i32], stride: usize) -> Vec<f32> {
    let (oh, ow) = (shortcut_out_size(h, stride), shortcut_out_size(w, stride));
    let oc = src.len();
    let mut dx = crate::tensor::pool::take(n * c * h * w);
    // Parallel over images; inside one image several outputs may read the same input channel.
    dx.par_chunks_mut((c * h * w).max(1)).enumerate().for_each(|(i, dxi)| {
        dxi.fill(0.0);
        for (o, &s) in src.iter().enumerate() {
            if s < 0 {
                continue;
            }
            let g = &dy[(i * oc + o) * oh * ow..(i * oc + o + 1) * oh * ow];
            let plane = &mut dxi[s as usize * h * w..(s as usize + 1) * h * w];
            if stride == 1 {
                for (d, v) in plane.iter_mut().zip(g) {
                    *d += v;
                }
                continue;
            }
            for (p, grow) in g.chunks_exact(ow.max(1)).enumerate() {
                let drow = &mut plane[p * stride * w..];
                for (q, v) in grow.iter().enumerate() {
                    drow[q * stride] += v;
                }
            }
        }
    });
    dx
}
