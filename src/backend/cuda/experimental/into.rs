//! `*_into` variants of trait ops that write a preallocated output, so that a captured CUDA
//! graph ([`super::graph`]) can keep its outputs alive across replays.

use crate::backend::cuda::elementwise::Op;
use crate::backend::cuda::CudaBackend;
use crate::backend::shape::{same_dims, GlobalPoolShape};
use crate::backend::{ConvEpilogue, ConvShape, ConvSpec, Precision};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    /// The forward conv, with `epi` in its epilogue when given, into `out`.
    pub fn conv2d_fused_into(
        &self,
        x: &Tensor,
        w: &Tensor,
        spec: ConvSpec,
        epi: Option<&ConvEpilogue>,
        precision: Precision,
        out: &mut Tensor,
    ) -> Result<()> {
        let (shape, ptrs) = match epi {
            Some(e) => {
                if e.residual.is_some_and(|r| std::ptr::eq(r, out)) {
                    return Err(Error::Invalid("conv2d_fused_into: residual and output must differ".into()));
                }
                (ConvShape::fused(x, w, spec, e)?, self.epilogue_ptrs(e)?)
            }
            None => (ConvShape::new(x.dims(), w.dims(), spec)?, Default::default()),
        };
        out.expect_dims(&shape.output_dims(), "conv2d_fused_into: output")?;
        let pout = self.ptr_mut(self.dev_mut(out, "conv2d_fused_into: output")?);
        self.conv_forward_raw(x, w, &shape, ptrs, precision, pout)
    }

    /// `relu`, `relu_backward`, `add` or `add_relu` of `a` (and `b`) into `out`.
    pub fn elementwise_into(&self, op_name: &str, a: &Tensor, b: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
        let op = match op_name {
            "relu" => Op::Relu,
            "relu_backward" => Op::ReluBackward,
            "add" => Op::Add,
            "add_relu" => Op::AddRelu,
            other => {
                return Err(Error::Invalid(format!(
                    "elementwise_into: unknown op '{other}' (relu, relu_backward, add, add_relu)"
                )))
            }
        };
        same_dims(a, out, "elementwise_into")?;
        let slice = self.dev_mut(out, "elementwise_into")?;
        self.ew_into_slice(op, a, b, slice, op_name)
    }

    /// Global average pool into a preallocated `[N, C]` output.
    pub fn global_avgpool_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        let s = GlobalPoolShape::new("global_avgpool_into", x.dims())?;
        out.expect_dims(&[s.n, s.c], "global_avgpool_into: output")?;
        let p = self.ptr_mut(self.dev_mut(out, "global_avgpool_into: output")?);
        self.avgpool_fwd_raw(x, &s, p)
    }
}
