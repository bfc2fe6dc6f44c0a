//! [`NormOps`] on `kernels/batchnorm.cu`: training and inference forward, backward, and the fold
//! into a conv epilogue.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::BnShape;
use crate::backend::{Activation, BnGrads, BnParams, BnSaved, BnTrainParams, ElementwiseOps, NormOps};
use crate::error::Result;
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

const FILE: &str = "batchnorm.cu";

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnStatsParams {
    x: u64,
    partial: u64,
    n: i32,
    c: i32,
    hw: i32,
    splits: i32,
    imgs_per_split: i32,
    _pad: i32,
}
// SAFETY: plain-old-data (integers and device addresses), `#[repr(C)]`, size and field offsets
// asserted equal to the kernel's struct.
unsafe impl DeviceRepr for BnStatsParams {}
assert_layout!(BnStatsParams, size 40, x @ 0, partial @ 8, n @ 16, c @ 20, hw @ 24, splits @ 28, imgs_per_split @ 32, _pad @ 36);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnFinalizeParams {
    partial: u64,
    gamma: u64,
    running_mean: u64,
    running_var: u64,
    save_mean: u64,
    save_invstd: u64,
    coef: u64,
    c: i32,
    splits: i32,
    momentum: f32,
    eps: f32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnFinalizeParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnFinalizeParams {}
assert_layout!(BnFinalizeParams, size 72, partial @ 0, gamma @ 8, running_mean @ 16, running_var @ 24, save_mean @ 32, save_invstd @ 40, coef @ 48, c @ 56, splits @ 60, momentum @ 64, eps @ 68);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnApplyParams {
    x: u64,
    y: u64,
    mean: u64,
    coef: u64,
    beta: u64,
    var: u64,
    total: i64,
    c: i32,
    hw: i32,
    eps: f32,
    vec4: i32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnApplyParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnApplyParams {}
assert_layout!(BnApplyParams, size 72, x @ 0, y @ 8, mean @ 16, coef @ 24, beta @ 32, var @ 40, total @ 48, c @ 56, hw @ 60, eps @ 64, vec4 @ 68);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnBwdPartialParams {
    x: u64,
    dy: u64,
    mean: u64,
    invstd: u64,
    partial: u64,
    n: i32,
    c: i32,
    hw: i32,
    splits: i32,
    imgs_per_split: i32,
    _pad: i32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnBwdPartialParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnBwdPartialParams {}
assert_layout!(BnBwdPartialParams, size 64, x @ 0, dy @ 8, mean @ 16, invstd @ 24, partial @ 32, n @ 40, c @ 44, hw @ 48, splits @ 52, imgs_per_split @ 56, _pad @ 60);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnBwdFinalizeParams {
    partial: u64,
    dgamma: u64,
    dbeta: u64,
    c: i32,
    splits: i32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnBwdFinalizeParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnBwdFinalizeParams {}
assert_layout!(BnBwdFinalizeParams, size 32, partial @ 0, dgamma @ 8, dbeta @ 16, c @ 24, splits @ 28);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnBwdApplyParams {
    x: u64,
    dy: u64,
    mean: u64,
    invstd: u64,
    gamma: u64,
    dgamma: u64,
    dbeta: u64,
    dx: u64,
    total: i64,
    c: i32,
    hw: i32,
    inv_count: f32,
    _pad: i32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnBwdApplyParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnBwdApplyParams {}
assert_layout!(BnBwdApplyParams, size 88, x @ 0, dy @ 8, mean @ 16, invstd @ 24, gamma @ 32, dgamma @ 40, dbeta @ 48, dx @ 56, total @ 64, c @ 72, hw @ 76, inv_count @ 80, _pad @ 84);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnFoldParams {
    gamma: u64,
    beta: u64,
    mean: u64,
    var: u64,
    scale: u64,
    shift: u64,
    c: i32,
    eps: f32,
}
// SAFETY: plain-old-data (integers, floats and device addresses), `#[repr(C)]`, size and field
// offsets asserted equal to `BnFoldParams` in batchnorm.cu.
unsafe impl DeviceRepr for BnFoldParams {}
assert_layout!(BnFoldParams, size 56, gamma @ 0, beta @ 8, mean @ 16, var @ 24, scale @ 32, shift @ 40, c @ 48, eps @ 52);

/// Splits per channel for the statistics: about 512 blocks in all, whole images per split.
/// Depends on the shape only, so results do not depend on the GPU model.
fn bn_splits(n: usize, c: usize) -> (usize, usize) {
    let want = 512usize.div_ceil(c.max(1)).clamp(1, n.max(1));
    let per = n.max(1).div_ceil(want);
    (n.max(1).div_ceil(per), per)
}

impl CudaBackend {
    fn bn_apply_launch(&self, a: &BnApplyParams, total: usize, hw: usize, what: &dyn Fn() -> String) -> Result<()> {
        let per_block = if hw.is_multiple_of(4) { 1024 } else { 256 };
        Launch::linear(FILE, "bn_apply", total, per_block, 256)?.run(&self.kernels, &self.stream, a, what)
    }
}

impl NormOps for CudaBackend {
    fn batchnorm_forward_train(&self, x: &Tensor, bn: BnTrainParams<'_>) -> Result<(Tensor, BnSaved)> {
        let BnTrainParams { gamma, beta, running_mean, running_var, momentum, eps } = bn;
        let BnShape { n, c, hw } = BnShape::train(x, gamma, beta, running_mean, running_var)?;
        let total = x.numel();
        fits_i32(total, "batchnorm_forward_train")?;
        let xd = x.dims().to_vec();
        let what = move || format!("batchnorm_forward_train {}", fmt_dims(&xd));
        let (splits, per) = bn_splits(n, c);
        let px = self.ptr(self.dev(x, "batchnorm input")?);
        let mut partial = self.alloc::<f32>(c * splits * 3)?;
        let p = BnStatsParams {
            x: px,
            partial: self.ptr_mut(&mut partial),
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            splits: splits as i32,
            imgs_per_split: per as i32,
            _pad: 0,
        };
        Launch::new(FILE, "bn_stats_partial", (c as u32, splits as u32, 1), 256).run(
            &self.kernels,
            &self.stream,
            &p,
            &what,
        )?;
        let mut mean = self.alloc::<f32>(c)?;
        let mut invstd = self.alloc::<f32>(c)?;
        let mut coef = self.alloc::<f32>(c)?;
        let f = BnFinalizeParams {
            partial: self.ptr(&partial),
            gamma: self.ptr(self.dev(gamma, "batchnorm gamma")?),
            running_mean: self.ptr_mut(self.dev_mut(running_mean, "batchnorm running_mean")?),
            running_var: self.ptr_mut(self.dev_mut(running_var, "batchnorm running_var")?),
            save_mean: self.ptr_mut(&mut mean),
            save_invstd: self.ptr_mut(&mut invstd),
            coef: self.ptr_mut(&mut coef),
            c: c as i32,
            splits: splits as i32,
            momentum,
            eps,
        };
        Launch::linear(FILE, "bn_finalize", c, 128, 128)?.run(&self.kernels, &self.stream, &f, &what)?;
        let mut y = self.alloc::<f32>(total)?;
        let a = BnApplyParams {
            x: px,
            y: self.ptr_mut(&mut y),
            mean: self.ptr(&mean),
            coef: self.ptr(&coef),
            beta: self.ptr(self.dev(beta, "batchnorm beta")?),
            var: 0,
            total: total as i64,
            c: c as i32,
            hw: hw as i32,
            eps,
            vec4: (hw % 4 == 0) as i32,
        };
        self.bn_apply_launch(&a, total, hw, &what)?;
        let saved = BnSaved { mean: self.tensor(&[c], mean)?, invstd: self.tensor(&[c], invstd)? };
        Ok((self.tensor(x.dims(), y)?, saved))
    }

    fn batchnorm_forward_eval(&self, x: &Tensor, bn: BnParams<'_>) -> Result<Tensor> {
        let BnParams { gamma, beta, running_mean, running_var, eps } = bn;
        let BnShape { c, hw, .. } = BnShape::eval(x, gamma, beta, running_mean, running_var)?;
        let total = x.numel();
        fits_i32(total, "batchnorm_forward_eval")?;
        let xd = x.dims().to_vec();
        let what = move || format!("batchnorm_forward_eval {}", fmt_dims(&xd));
        let mut y = self.alloc::<f32>(total)?;
        let a = BnApplyParams {
            x: self.ptr(self.dev(x, "batchnorm input")?),
            y: self.ptr_mut(&mut y),
            mean: self.ptr(self.dev(running_mean, "batchnorm running_mean")?),
            coef: self.ptr(self.dev(gamma, "batchnorm gamma")?),
            beta: self.ptr(self.dev(beta, "batchnorm beta")?),
            var: self.ptr(self.dev(running_var, "batchnorm running_var")?),
            total: total as i64,
            c: c as i32,
            hw: hw as i32,
            eps,
            vec4: (hw % 4 == 0) as i32,
        };
        self.bn_apply_launch(&a, total, hw, &what)?;
        self.tensor(x.dims(), y)
    }

    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        let BnShape { n, c, hw } = BnShape::backward(dy, x, gamma, saved)?;
        let total = x.numel();
        fits_i32(total, "batchnorm_backward")?;
        let xd = x.dims().to_vec();
        let what = move || format!("batchnorm_backward {}", fmt_dims(&xd));
        let (splits, per) = bn_splits(n, c);
        let px = self.ptr(self.dev(x, "batchnorm_backward x")?);
        let pdy = self.ptr(self.dev(dy, "batchnorm_backward dy")?);
        let pmean = self.ptr(self.dev(&saved.mean, "batchnorm saved mean")?);
        let pinv = self.ptr(self.dev(&saved.invstd, "batchnorm saved invstd")?);
        let mut partial = self.alloc::<f32>(c * splits * 2)?;
        let p = BnBwdPartialParams {
            x: px,
            dy: pdy,
            mean: pmean,
            invstd: pinv,
            partial: self.ptr_mut(&mut partial),
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            splits: splits as i32,
            imgs_per_split: per as i32,
            _pad: 0,
        };
        Launch::new(FILE, "bn_bwd_partial", (c as u32, splits as u32, 1), 256).run(
            &self.kernels,
            &self.stream,
            &p,
            &what,
        )?;
        let mut dgamma = self.alloc::<f32>(c)?;
        let mut dbeta = self.alloc::<f32>(c)?;
        let f = BnBwdFinalizeParams {
            partial: self.ptr(&partial),
            dgamma: self.ptr_mut(&mut dgamma),
            dbeta: self.ptr_mut(&mut dbeta),
            c: c as i32,
            splits: splits as i32,
        };
        Launch::linear(FILE, "bn_bwd_finalize", c, 128, 128)?.run(&self.kernels, &self.stream, &f, &what)?;
        let mut dx = self.alloc::<f32>(total)?;
        let count = n * hw;
        let a = BnBwdApplyParams {
            x: px,
            dy: pdy,
            mean: pmean,
            invstd: pinv,
            gamma: self.ptr(self.dev(gamma, "batchnorm gamma")?),
            dgamma: self.ptr(&dgamma),
            dbeta: self.ptr(&dbeta),
            dx: self.ptr_mut(&mut dx),
            total: total as i64,
            c: c as i32,
            hw: hw as i32,
            inv_count: if count > 0 { 1.0 / count as f32 } else { 0.0 },
            _pad: 0,
        };
        Launch::linear(FILE, "bn_bwd_apply", total, 256, 256)?.run(&self.kernels, &self.stream, &a, &what)?;
        Ok(BnGrads {
            dx: self.tensor(x.dims(), dx)?,
            dgamma: self.tensor(&[c], dgamma)?,
            dbeta: self.tensor(&[c], dbeta)?,
        })
    }

    fn batchnorm_act_forward_train(
        &self,
        x: &Tensor,
        bn: BnTrainParams<'_>,
        act: Activation,
    ) -> Result<(Tensor, BnSaved)> {
        // Two kernels here (the CPU backend fuses them): the same values.
        let (y, saved) = self.batchnorm_forward_train(x, bn)?;
        let y = match act {
            Activation::Identity => y,
            Activation::Relu => self.relu_forward(&y)?,
            Activation::Relu6 => self.relu6_forward(&y)?,
        };
        Ok((y, saved))
    }

    fn batchnorm_act_backward(
        &self,
        dy: &Tensor,
        y: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        saved: &BnSaved,
        act: Activation,
    ) -> Result<BnGrads> {
        let g = match act {
            Activation::Identity => return self.batchnorm_backward(dy, x, gamma, saved),
            Activation::Relu => self.relu_backward(dy, y)?,
            Activation::Relu6 => self.relu6_backward(dy, y)?,
        };
        self.batchnorm_backward(&g, x, gamma, saved)
    }

    fn batchnorm_fold(&self, bn: BnParams<'_>) -> Result<(Tensor, Tensor)> {
        let BnParams { gamma, beta, running_mean: mean, running_var: var, eps } = bn;
        let c = BnShape::fold(gamma, beta, mean, var)?;
        let mut scale = self.alloc::<f32>(c)?;
        let mut shift = self.alloc::<f32>(c)?;
        let p = BnFoldParams {
            gamma: self.ptr(self.dev(gamma, "batchnorm_fold gamma")?),
            beta: self.ptr(self.dev(beta, "batchnorm_fold beta")?),
            mean: self.ptr(self.dev(mean, "batchnorm_fold mean")?),
            var: self.ptr(self.dev(var, "batchnorm_fold var")?),
            scale: self.ptr_mut(&mut scale),
            shift: self.ptr_mut(&mut shift),
            c: fits_i32(c, "batchnorm_fold")?,
            eps,
        };
        Launch::linear(FILE, "bn_fold", c, 128, 128)?
            .run(&self.kernels, &self.stream, &p, &|| format!("batchnorm_fold [{c}]"))?;
        Ok((self.tensor(&[c], scale)?, self.tensor(&[c], shift)?))
    }
}

#[cfg(test)]
mod tests {
    use super::bn_splits;

    #[test]
    fn splits_cover_every_image_once() {
        for &(n, c) in &[(128, 16), (128, 512), (1, 3), (7, 5), (256, 64), (3, 1000)] {
            let (s, per) = bn_splits(n, c);
            assert!(s >= 1 && per >= 1);
            assert!((s - 1) * per < n, "n {n} c {c}: {s} x {per}");
            assert!(s * per >= n);
        }
    }
}
