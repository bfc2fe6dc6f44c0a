//! [`ElementwiseOps`] on `kernels/elementwise.cu`: ReLU, ReLU6, add, add+ReLU, add-assign, scale.

use super::kernels::Launch;
use super::CudaBackend;
use crate::backend::shape::same_dims;
use crate::backend::ElementwiseOps;
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
assert_layout!(EwParams, size 40, a @ 0, b @ 8, out @ 16, n @ 24, s @ 32, vec4 @ 36);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Relu,
    ReluBackward,
    Relu6,
    Relu6Backward,
    Add,
    AddRelu,
}

impl Op {
    fn kernel(self) -> &'static str {
        match self {
            Op::Relu => "ew_relu",
            Op::ReluBackward => "ew_relu_bwd",
            Op::Relu6 => "ew_relu6",
            Op::Relu6Backward => "ew_relu6_bwd",
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
    fn ew_new(&self, op: Op, a: &Tensor, b: Option<&Tensor>, what: &str) -> Result<Tensor> {
        let mut out = self.alloc::<f32>(a.numel())?;
        self.ew_into_slice(op, a, b, &mut out, what)?;
        self.tensor(a.dims(), out)
    }

    pub(crate) fn ew_into_slice(
        &self,
        op: Op,
        a: &Tensor,
        b: Option<&Tensor>,
        out: &mut cudarc::driver::CudaSlice<f32>,
        what: &str,
    ) -> Result<()> {
        if let Some(b) = b {
            same_dims(a, b, what)?;
        }
        let pa = self.ptr(self.dev(a, what)?);
        let pb = self.opt_ptr(b, what)?;
        let n = a.numel();
        let p =
            EwParams { a: pa, b: pb, out: self.ptr_mut(out), n: n as i64, s: 0.0, vec4: n.is_multiple_of(4) as i32 };
        let dims = a.dims().to_vec();
        self.ew_launch(op.kernel(), p, &|| format!("{what} {}", fmt_dims(&dims)))
    }
}

impl ElementwiseOps for CudaBackend {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::Relu, x, None, "relu_forward")
    }

    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::ReluBackward, dy, Some(y), "relu_backward")
    }

    fn relu6_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::Relu6, x, None, "relu6_forward")
    }

    fn relu6_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::Relu6Backward, dy, Some(y), "relu6_backward")
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::Add, a, Some(b), "add")
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.ew_new(Op::AddRelu, a, Some(b), "add_relu")
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        let n = acc.numel();
        let dims = acc.dims().to_vec();
        let px = self.ptr(self.dev(x, "add_assign")?);
        let pacc = self.ptr_mut(self.dev_mut(acc, "add_assign")?);
        let p = EwParams { a: px, b: 0, out: pacc, n: n as i64, s: 0.0, vec4: n.is_multiple_of(4) as i32 };
        self.ew_launch("ew_add_assign", p, &|| format!("add_assign {}", fmt_dims(&dims)))
    }

    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        let n = x.numel();
        let dims = x.dims().to_vec();
        let px = self.ptr_mut(self.dev_mut(x, "scale_inplace")?);
        let p = EwParams { a: 0, b: 0, out: px, n: n as i64, s, vec4: n.is_multiple_of(4) as i32 };
        self.ew_launch("ew_scale", p, &|| format!("scale_inplace {}", fmt_dims(&dims)))
    }
}
