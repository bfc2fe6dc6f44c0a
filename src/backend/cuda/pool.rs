//! [`PoolOps`] on `kernels/pool.cu`: max pooling and global average pooling.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::{GlobalPoolShape, PoolShape};
use crate::backend::PoolOps;
use crate::error::Result;
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
    pad: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for PoolParams {}
assert_layout!(PoolParams, size 56, x @ 0, dy @ 8, out @ 16, nc @ 24, h @ 28, w @ 32, oh @ 36, ow @ 40, k @ 44, stride @ 48, pad @ 52);

impl PoolParams {
    /// The max-pool kernels' parameters for a checked shape (forward: `dy` 0; backward: `x` is
    /// the forward input, `dy` the output gradient).
    fn max(s: &PoolShape, x: u64, dy: u64, out: u64) -> PoolParams {
        PoolParams {
            x,
            dy,
            out,
            nc: (s.n * s.c) as i32,
            h: s.h as i32,
            w: s.w as i32,
            oh: s.out_h as i32,
            ow: s.out_w as i32,
            k: s.kernel as i32,
            stride: s.stride as i32,
            pad: s.pad as i32,
        }
    }
}

impl CudaBackend {
    /// Global average pool of a checked `[N,C,H,W]` input into the buffer at `out`.
    pub(crate) fn avgpool_fwd_raw(&self, x: &Tensor, s: &GlobalPoolShape, out: u64) -> Result<()> {
        let GlobalPoolShape { n, c, h, w } = *s;
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
            pad: 0,
        };
        let xd = x.dims().to_vec();
        // One warp per plane, 8 warps per block.
        Launch::linear(FILE, "avgpool_fwd", n * c, 8, 256)?
            .run(&self.kernels, &self.stream, &p, &|| format!("global_avgpool_forward {}", fmt_dims(&xd)))
    }
}

impl PoolOps for CudaBackend {
    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max("maxpool_forward", x.dims(), kernel, stride, pad)?;
        let PoolShape { n, c, h, w, out_h: oh, out_w: ow, .. } = s;
        fits_i32(n * c * h * w, "maxpool_forward")?;
        let total = n * c * oh * ow;
        let mut y = self.alloc::<f32>(total)?;
        let p = PoolParams::max(&s, self.ptr(self.dev(x, "maxpool_forward")?), 0, self.ptr_mut(&mut y));
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "maxpool_fwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("maxpool_forward {} k{kernel} s{stride} p{pad}", fmt_dims(&xd))
        })?;
        self.tensor(&[n, c, oh, ow], y)
    }

    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let s = PoolShape::max_backward(dy, x, kernel, stride, pad)?;
        let PoolShape { n, c, h, w, .. } = s;
        fits_i32(n * c * h * w, "maxpool_backward")?;
        let total = n * c * h * w;
        let mut dx = self.alloc::<f32>(total)?;
        let p = PoolParams::max(
            &s,
            self.ptr(self.dev(x, "maxpool_backward x")?),
            self.ptr(self.dev(dy, "maxpool_backward dy")?),
            self.ptr_mut(&mut dx),
        );
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "maxpool_bwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("maxpool_backward {} k{kernel} s{stride} p{pad}", fmt_dims(&xd))
        })?;
        self.tensor(x.dims(), dx)
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = GlobalPoolShape::new("global_avgpool_forward", x.dims())?;
        let mut y = self.alloc::<f32>(s.n * s.c)?;
        self.avgpool_fwd_raw(x, &s, self.ptr_mut(&mut y))?;
        self.tensor(&[s.n, s.c], y)
    }

    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let GlobalPoolShape { n, c, h, w } = GlobalPoolShape::backward(dy, x_dims)?;
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
            pad: 0,
        };
        Launch::linear(FILE, "avgpool_bwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("global_avgpool_backward -> {}", fmt_dims(&[n, c, h, w]))
        })?;
        self.tensor(x_dims, dx)
    }
}
