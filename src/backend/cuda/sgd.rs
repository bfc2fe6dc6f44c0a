//! [`OptimOps`] on `kernels/sgd.cu`.

use super::kernels::Launch;
use super::CudaBackend;
use crate::backend::shape::same_dims;
use crate::backend::{OptimOps, SgdStep};
use crate::error::Result;
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

/// Mirror of `SgdParams` in sgd.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SgdParams {
    param: u64,
    grad: u64,
    buf: u64,
    n: i64,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: i32,
    vec4: i32,
    _pad: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for SgdParams {}
assert_layout!(SgdParams, size 56, param @ 0, grad @ 8, buf @ 16, n @ 24, lr @ 32, momentum @ 36, weight_decay @ 40, nesterov @ 44, vec4 @ 48, _pad @ 52);

impl OptimOps for CudaBackend {
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, buf: &mut Tensor, hp: SgdStep) -> Result<()> {
        same_dims(param, grad, "sgd_step: parameter and gradient")?;
        same_dims(param, buf, "sgd_step: parameter and momentum buffer")?;
        let n = param.numel();
        let dims = param.dims().to_vec();
        let pg = self.ptr(self.dev(grad, "sgd_step grad")?);
        let pb = self.ptr_mut(self.dev_mut(buf, "sgd_step momentum buffer")?);
        let pp = self.ptr_mut(self.dev_mut(param, "sgd_step param")?);
        let p = SgdParams {
            param: pp,
            grad: pg,
            buf: pb,
            n: n as i64,
            lr: hp.lr,
            momentum: hp.momentum,
            weight_decay: hp.weight_decay,
            nesterov: hp.nesterov as i32,
            vec4: n.is_multiple_of(4) as i32,
            _pad: 0,
        };
        Launch::linear("sgd.cu", "sgd_step", n, 1024, 256)?
            .run(&self.kernels, &self.stream, &p, &|| format!("sgd_step {}", fmt_dims(&dims)))
    }
}
