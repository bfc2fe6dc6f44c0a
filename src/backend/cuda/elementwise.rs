//! Launch helpers for `kernels/elementwise.cu`: ReLU, add, add+ReLU, add-assign, scale.

use super::kernels::Launch;
use super::{same_dims, CudaBackend};
use crate::error::Result;
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

const FILE: &str = "elementwise.cu";

/// Mirror of `EwParams` in elementwise.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EwParams {
    a: u64,
    b: u64,
    out: u64,
    n: i64,
    s: f32,
    vec4: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for EwParams {}
const _: () = assert!(std::mem::size_of::<EwParams>() == 40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Relu,
    ReluBackward,
    Add,
    AddRelu,
}

impl Op {
    fn kernel(self) -> &'static str {
        match self {
            Op::Relu => "ew_relu",
            Op::ReluBackward => "ew_relu_bwd",
            Op::Add => "ew_add",
            Op::AddRelu => "ew_add_relu",
        }
    }
}

impl CudaBackend {
    fn ew_launch(&self, name: &'static str, p: EwParams, what: &dyn Fn() -> String) -> Result<()> {
        // 256 threads x 4 elements per block.
        let launch = Launch::linear(FILE, name, p.n as usize, 1024, 256)?;
        launch.run(&self.kernels, &self.stream, &p, what)
    }

    /// `out = op(a[, b])` into a new tensor.
    pub(crate) fn ew_new(&self, op: Op, a: &Tensor, b: Option<&Tensor>, what: &str) -> Result<Tensor> {
        let mut out = self.alloc::<f32>(a.numel())?;
        self.ew_into_slice(op, a, b, &mut out, what)?;
        self.tensor(a.dims(), out)
    }

    fn ew_into_slice(
        &self,
        op: Op,
        a: &Tensor,
        b: Option<&Tensor>,
        out: &mut cudarc::driver::CudaSlice<f32>,
        what: &str,
    ) -> Result<()> {
        let pa = self.ptr(self.dev(a, what)?);
        let pb = match b {
            Some(b) => {
                same_dims(a, b, what)?;
                self.ptr(self.dev(b, what)?)
            }
            None => 0,
        };
        let n = a.numel();
        let p = EwParams { a: pa, b: pb, out: self.ptr_mut(out), n: n as i64, s: 0.0, vec4: (n % 4 == 0) as i32 };
        let dims = a.dims().to_vec();
        self.ew_launch(op.kernel(), p, &|| format!("{what} {}", fmt_dims(&dims)))
    }

    /// `out = op(a[, b])` into an existing tensor of the same shape (graph friendly).
    pub fn elementwise_into(&self, op_name: &str, a: &Tensor, b: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
        let op = match op_name {
            "relu" => Op::Relu,
            "relu_backward" => Op::ReluBackward,
            "add" => Op::Add,
            "add_relu" => Op::AddRelu,
            other => {
                return Err(crate::Error::Invalid(format!(
                    "elementwise_into: unknown op '{other}' (relu, relu_backward, add, add_relu)"
                )))
            }
        };
        same_dims(a, out, "elementwise_into")?;
        let slice = self.dev_mut(out, "elementwise_into")?;
        self.ew_into_slice(op, a, b, slice, op_name)
    }

    pub(crate) fn ew_add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        let n = acc.numel();
        let dims = acc.dims().to_vec();
        let px = self.ptr(self.dev(x, "add_assign")?);
        let pacc = self.ptr_mut(self.dev_mut(acc, "add_assign")?);
        let p = EwParams { a: px, b: 0, out: pacc, n: n as i64, s: 0.0, vec4: (n % 4 == 0) as i32 };
        self.ew_launch("ew_add_assign", p, &|| format!("add_assign {}", fmt_dims(&dims)))
    }

    pub(crate) fn ew_scale(&self, x: &mut Tensor, s: f32) -> Result<()> {
        let n = x.numel();
        let dims = x.dims().to_vec();
        let px = self.ptr_mut(self.dev_mut(x, "scale_inplace")?);
        let p = EwParams { a: 0, b: 0, out: px, n: n as i64, s, vec4: (n % 4 == 0) as i32 };
        self.ew_launch("ew_scale", p, &|| format!("scale_inplace {}", fmt_dims(&dims)))
    }
}
