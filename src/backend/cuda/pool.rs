//! Launch helpers for `kernels/pool.cu`: max pooling and global average pooling.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::conv_out_size;
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

const FILE: &str = "pool.cu";

/// Mirror of `PoolParams` in pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PoolParams {
    x: u64,
    dy: u64,
    out: u64,
    nc: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    k: i32,
    stride: i32,
    _pad: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for PoolParams {}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 56);

fn rank4(x: &[usize], what: &str) -> Result<[usize; 4]> {
    match x {
        [n, c, h, w] => Ok([*n, *c, *h, *w]),
        _ => Err(Error::Shape(format!("{what}: expected [N, C, H, W], got {}", fmt_dims(x)))),
    }
}

fn pool_geometry(x: &[usize], kernel: usize, stride: usize, what: &str) -> Result<([usize; 4], usize, usize)> {
    let [n, c, h, w] = rank4(x, what)?;
    if kernel == 0 || stride == 0 {
        return Err(Error::Invalid(format!("{what}: kernel and stride must be at least 1")));
    }
    if h < kernel || w < kernel {
        return Err(Error::Shape(format!("{what}: window {kernel} larger than input {h}x{w}")));
    }
    fits_i32(n * c * h * w, what)?;
    Ok(([n, c, h, w], conv_out_size(h, kernel, stride, 0), conv_out_size(w, kernel, stride, 0)))
}

impl CudaBackend {
    pub(crate) fn maxpool_fwd(&self, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
        let ([n, c, h, w], oh, ow) = pool_geometry(x.dims(), kernel, stride, "maxpool_forward")?;
        let total = n * c * oh * ow;
        let mut y = self.alloc::<f32>(total)?;
        let p = PoolParams {
            x: self.ptr(self.dev(x, "maxpool_forward")?),
            dy: 0,
            out: self.ptr_mut(&mut y),
            nc: (n * c) as i32,
            h: h as i32,
            w: w as i32,
            oh: oh as i32,
            ow: ow as i32,
            k: kernel as i32,
            stride: stride as i32,
            _pad: 0,
        };
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "maxpool_fwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("maxpool_forward {} k{kernel} s{stride}", fmt_dims(&xd))
        })?;
        self.tensor(&[n, c, oh, ow], y)
    }

    pub(crate) fn maxpool_bwd(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
        let ([n, c, h, w], oh, ow) = pool_geometry(x.dims(), kernel, stride, "maxpool_backward")?;
        dy.expect_dims(&[n, c, oh, ow], "maxpool_backward dy")?;
        let total = n * c * h * w;
        let mut dx = self.alloc::<f32>(total)?;
        let p = PoolParams {
            x: self.ptr(self.dev(x, "maxpool_backward x")?),
            dy: self.ptr(self.dev(dy, "maxpool_backward dy")?),
            out: self.ptr_mut(&mut dx),
            nc: (n * c) as i32,
            h: h as i32,
            w: w as i32,
            oh: oh as i32,
            ow: ow as i32,
            k: kernel as i32,
            stride: stride as i32,
            _pad: 0,
        };
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "maxpool_bwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("maxpool_backward {} k{kernel} s{stride}", fmt_dims(&xd))
        })?;
        self.tensor(x.dims(), dx)
    }

    pub(crate) fn avgpool_fwd(&self, x: &Tensor) -> Result<Tensor> {
        let [n, c, _, _] = rank4(x.dims(), "global_avgpool_forward")?;
        let mut y = self.alloc::<f32>(n * c)?;
        let dims = self.avgpool_fwd_raw(x, self.ptr_mut(&mut y))?;
        self.tensor(&dims, y)
    }

    /// Global average pooling into a preallocated `[N, C]` output (graph friendly).
    pub fn global_avgpool_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        let [n, c, _, _] = rank4(x.dims(), "global_avgpool_into")?;
        out.expect_dims(&[n, c], "global_avgpool_into output")?;
        let p = self.ptr_mut(self.dev_mut(out, "global_avgpool_into output")?);
        self.avgpool_fwd_raw(x, p).map(|_| ())
    }

    fn avgpool_fwd_raw(&self, x: &Tensor, out: u64) -> Result<[usize; 2]> {
        let [n, c, h, w] = rank4(x.dims(), "global_avgpool_forward")?;
        fits_i32(n * c * h * w, "global_avgpool_forward")?;
        let p = PoolParams {
            x: self.ptr(self.dev(x, "global_avgpool_forward")?),
            dy: 0,
            out,
            nc: (n * c) as i32,
            h: h as i32,
            w: w as i32,
            oh: 1,
            ow: 1,
            k: 0,
            stride: 0,
            _pad: 0,
        };
        let xd = x.dims().to_vec();
        // One warp per plane, 8 warps per block.
        Launch::linear(FILE, "avgpool_fwd", n * c, 8, 256)?
            .run(&self.kernels, &self.stream, &p, &|| format!("global_avgpool_forward {}", fmt_dims(&xd)))?;
        Ok([n, c])
    }

    pub(crate) fn avgpool_bwd(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let [n, c, h, w] = rank4(x_dims, "global_avgpool_backward")?;
        dy.expect_dims(&[n, c], "global_avgpool_backward dy")?;
        let total = n * c * h * w;
        fits_i32(total, "global_avgpool_backward")?;
        let mut dx = self.alloc::<f32>(total)?;
        let p = PoolParams {
            x: 0,
            dy: self.ptr(self.dev(dy, "global_avgpool_backward dy")?),
            out: self.ptr_mut(&mut dx),
            nc: (n * c) as i32,
            h: h as i32,
            w: w as i32,
            oh: 1,
            ow: 1,
            k: 0,
            stride: 0,
            _pad: 0,
        };
        Launch::linear(FILE, "avgpool_bwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("global_avgpool_backward -> {}", fmt_dims(&[n, c, h, w]))
        })?;
        self.tensor(x_dims, dx)
    }
}
