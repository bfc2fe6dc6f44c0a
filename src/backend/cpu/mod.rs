//! The CPU backend: the reference every CUDA kernel is tested against, and a complete engine on
//! machines without a GPU. Work is spread over rayon's global pool (all cores by default;
//! `RAYON_NUM_THREADS` limits it).

pub mod conv;
pub mod gemm;
pub mod ops;
pub mod winograd;

use crate::backend::shape::{bn_layout, same_dims};
use crate::backend::{Backend, BnGrads, BnSaved, ConvShape, ConvSpec, CrossEntropy, DeviceKind, LinearGrads, SgdStep};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};

#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Forward convolutions and linears by direct loops accumulating in f64 in a fixed order
    /// (slow). Adding an exact zero never changes such a sum, so a net with pruned channels
    /// zeroed and its compact version agree bit for bit; the fast GEMM path regroups sums and
    /// agrees to a few ulps.
    reference: bool,
    /// Winograd kernels for 3x3 stride-1 convolutions (`winograd::choose`); off in the exact
    /// variants, which keep im2col + GEMM (a few ulps from the f64 loops).
    fast_conv: bool,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { reference: false, fast_conv: true }
    }
    /// The reference-math variant (see `reference`).
    pub fn reference() -> Self {
        CpuBackend { reference: true, fast_conv: false }
    }
    /// f32 im2col + GEMM for every convolution (no Winograd): what the CUDA kernels are held to.
    pub fn exact() -> Self {
        CpuBackend { reference: false, fast_conv: false }
    }
    /// The Winograd tile for this convolution, when the fast kernels are on and fit it.
    fn winograd(&self, s: &ConvShape) -> Option<winograd::WinogradTile> {
        self.fast_conv.then(|| winograd::choose(s)).flatten()
    }
}

fn host(t: &Tensor) -> Result<&[f32]> {
    t.as_slice()
}

fn expect_channels(t: &Tensor, c: usize, what: &str) -> Result<()> {
    t.expect_dims(&[c], what)
}

/// `(n, c, h, w)` of a rank-4 tensor.
fn nchw(t: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *t.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => Err(Error::Shape(format!("{what}: expected [N,C,H,W], got {}", fmt_dims(t.dims())))),
    }
}

fn check_pool(h: usize, w: usize, k: usize, stride: usize) -> Result<()> {
    if k == 0 || stride == 0 || h < k || w < k {
        return Err(Error::Shape(format!("max pool: window {k} stride {stride} does not fit a {h}x{w} input")));
    }
    Ok(())
}

fn check_src_map(src: &[i32], c: usize) -> Result<()> {
    if let Some(bad) = src.iter().find(|&&s| s >= c as i32) {
        return Err(Error::Shape(format!("shortcut: channel map refers to input channel {bad} of {c}")));
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn describe(&self) -> String {
        let math = if self.reference { ", reference math" } else { "" };
        format!("cpu ({} threads{math})", rayon::current_num_threads())
    }

    fn zeros(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(dims))
    }

    fn from_host(&self, dims: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_vec(dims, data.to_vec())
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(t.dims(), t.to_vec()?)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::new(x.dims(), w.dims(), spec)?;
        let y = if self.reference {
            conv::forward_reference(host(x)?, host(w)?, &s)
        } else if let Some(tile) = self.winograd(&s) {
            winograd::forward(host(x)?, host(w)?, &s, tile)
        } else {
            conv::forward(host(x)?, host(w)?, &s)
        };
        Tensor::from_vec(&s.output_dims(), y)
    }

    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::new(x_dims, w.dims(), spec)?;
        dy.expect_dims(&s.output_dims(), "conv2d backward: output gradient")?;
        let dx = match self.winograd(&s) {
            Some(tile) => winograd::backward_data(host(dy)?, host(w)?, &s, tile),
            None => conv::backward_data(host(dy)?, host(w)?, &s),
        };
        Tensor::from_vec(x_dims, dx)
    }

    fn conv2d_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        let s = ConvShape::new(x.dims(), w_dims, spec)?;
        dy.expect_dims(&s.output_dims(), "conv2d backward: output gradient")?;
        Tensor::from_vec(w_dims, conv::backward_weight(host(dy)?, host(x)?, &s))
    }

    fn batchnorm_forward_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        momentum: f32,
        eps: f32,
    ) -> Result<(Tensor, BnSaved)> {
        let (n, c, hw) = bn_layout(x, "batch norm")?;
        expect_channels(gamma, c, "batch norm weight")?;
        expect_channels(beta, c, "batch norm bias")?;
        expect_channels(running_mean, c, "batch norm running_mean")?;
        expect_channels(running_var, c, "batch norm running_var")?;
        if n * hw < 2 {
            return Err(Error::Shape(format!(
                "batch norm in training mode needs more than one value per channel, got input {}",
                fmt_dims(x.dims())
            )));
        }
        let out = ops::batchnorm_train(
            host(x)?,
            n,
            c,
            hw,
            host(gamma)?,
            host(beta)?,
            running_mean.as_mut_slice()?,
            running_var.as_mut_slice()?,
            momentum,
            eps,
        );
        Ok((
            Tensor::from_vec(x.dims(), out.y)?,
            BnSaved { mean: Tensor::from_vec(&[c], out.mean)?, invstd: Tensor::from_vec(&[c], out.invstd)? },
        ))
    }

    fn batchnorm_forward_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        let (_, c, hw) = bn_layout(x, "batch norm")?;
        expect_channels(gamma, c, "batch norm weight")?;
        expect_channels(beta, c, "batch norm bias")?;
        expect_channels(running_mean, c, "batch norm running_mean")?;
        expect_channels(running_var, c, "batch norm running_var")?;
        let y = ops::batchnorm_eval(
            host(x)?,
            c,
            hw,
            host(gamma)?,
            host(beta)?,
            host(running_mean)?,
            host(running_var)?,
            eps,
        );
        Tensor::from_vec(x.dims(), y)
    }

    fn batchnorm_backward(&self, dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        let (n, c, hw) = bn_layout(x, "batch norm")?;
        same_dims(dy, x, "batch norm backward")?;
        expect_channels(gamma, c, "batch norm weight")?;
        expect_channels(&saved.mean, c, "batch norm saved mean")?;
        expect_channels(&saved.invstd, c, "batch norm saved invstd")?;
        let out = ops::batchnorm_backward(
            host(dy)?,
            host(x)?,
            n,
            c,
            hw,
            host(gamma)?,
            host(&saved.mean)?,
            host(&saved.invstd)?,
        );
        Ok(BnGrads {
            dx: Tensor::from_vec(x.dims(), out.dx)?,
            dgamma: Tensor::from_vec(&[c], out.dgamma)?,
            dbeta: Tensor::from_vec(&[c], out.dbeta)?,
        })
    }

    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.dims(), ops::map_unary(host(x)?, |v| v.max(0.0)))
    }

    fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_dims(dy, y, "relu backward")?;
        Tensor::from_vec(y.dims(), ops::map_binary(host(dy)?, host(y)?, |g, v| if v > 0.0 { g } else { 0.0 }))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add")?;
        Tensor::from_vec(a.dims(), ops::map_binary(host(a)?, host(b)?, |u, v| u + v))
    }

    fn add_relu(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_dims(a, b, "add+relu")?;
        Tensor::from_vec(a.dims(), ops::map_binary(host(a)?, host(b)?, |u, v| (u + v).max(0.0)))
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        same_dims(acc, x, "add_assign")?;
        ops::update_binary(acc.as_mut_slice()?, host(x)?, |a, v| a + v);
        Ok(())
    }

    fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        for v in x.as_mut_slice()? {
            *v *= s;
        }
        Ok(())
    }

    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor> {
        let (n, c, h, w) = nchw(x, "shortcut")?;
        check_src_map(src, c)?;
        if stride == 0 {
            return Err(Error::Invalid("shortcut: stride must be at least 1".into()));
        }
        let y = ops::shortcut_forward(host(x)?, n, c, h, w, src, stride);
        Tensor::from_vec(&[n, src.len(), ops::shortcut_out_size(h, stride), ops::shortcut_out_size(w, stride)], y)
    }

    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor> {
        let [n, c, h, w] = *x_dims else {
            return Err(Error::Shape(format!("shortcut backward: input shape {x_dims:?} is not rank 4")));
        };
        check_src_map(src, c)?;
        if stride == 0 {
            return Err(Error::Invalid("shortcut: stride must be at least 1".into()));
        }
        dy.expect_dims(
            &[n, src.len(), ops::shortcut_out_size(h, stride), ops::shortcut_out_size(w, stride)],
            "shortcut backward: output gradient",
        )?;
        Tensor::from_vec(x_dims, ops::shortcut_backward(host(dy)?, n, c, h, w, src, stride))
    }

    fn maxpool_forward(&self, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
        let (n, c, h, w) = nchw(x, "max pool")?;
        check_pool(h, w, kernel, stride)?;
        let y = ops::maxpool_forward(host(x)?, n * c, h, w, kernel, stride);
        Tensor::from_vec(&[n, c, (h - kernel) / stride + 1, (w - kernel) / stride + 1], y)
    }

    fn maxpool_backward(&self, dy: &Tensor, x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
        let (n, c, h, w) = nchw(x, "max pool backward")?;
        check_pool(h, w, kernel, stride)?;
        dy.expect_dims(
            &[n, c, (h - kernel) / stride + 1, (w - kernel) / stride + 1],
            "max pool backward: output gradient",
        )?;
        Tensor::from_vec(x.dims(), ops::maxpool_backward(host(dy)?, host(x)?, n * c, h, w, kernel, stride))
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = nchw(x, "global average pool")?;
        if h * w == 0 {
            return Err(Error::Shape("global average pool over an empty feature map".into()));
        }
        Tensor::from_vec(&[n, c], ops::global_avgpool_forward(host(x)?, n * c, h * w))
    }

    fn global_avgpool_backward(&self, dy: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let [n, c, h, w] = *x_dims else {
            return Err(Error::Shape(format!("global average pool backward: input shape {x_dims:?} is not rank 4")));
        };
        dy.expect_dims(&[n, c], "global average pool backward: output gradient")?;
        Tensor::from_vec(x_dims, ops::global_avgpool_backward(host(dy)?, n * c, h * w))
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (n, fin, fout) = linear_dims(x, w)?;
        let mut y = vec![0.0f32; n * fout];
        if self.reference {
            gemm::sgemm_reference(n, fout, fin, host(x)?, false, host(w)?, true, &mut y, false);
        } else {
            gemm::sgemm(n, fout, fin, host(x)?, false, host(w)?, true, &mut y, false, rayon::current_num_threads());
        }
        if let Some(b) = b {
            b.expect_dims(&[fout], "linear bias")?;
            let bs = host(b)?;
            for row in y.chunks_mut(fout.max(1)) {
                for (v, bv) in row.iter_mut().zip(bs) {
                    *v += bv;
                }
            }
        }
        Tensor::from_vec(&[n, fout], y)
    }

    fn linear_backward(&self, dy: &Tensor, x: &Tensor, w: &Tensor, with_bias: bool) -> Result<LinearGrads> {
        let (n, fin, fout) = linear_dims(x, w)?;
        dy.expect_dims(&[n, fout], "linear backward: output gradient")?;
        let threads = rayon::current_num_threads();
        let (g, xs, ws) = (host(dy)?, host(x)?, host(w)?);
        let mut dx = vec![0.0f32; n * fin];
        gemm::sgemm(n, fin, fout, g, false, ws, false, &mut dx, false, threads);
        let mut dw = vec![0.0f32; fout * fin];
        gemm::sgemm(fout, fin, n, g, true, xs, false, &mut dw, false, threads);
        let db = if with_bias {
            let mut db = vec![0.0f64; fout];
            for row in g.chunks(fout.max(1)) {
                for (a, &v) in db.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            Some(Tensor::from_vec(&[fout], db.into_iter().map(|v| v as f32).collect())?)
        } else {
            None
        };
        Ok(LinearGrads { dx: Tensor::from_vec(&[n, fin], dx)?, dw: Tensor::from_vec(&[fout, fin], dw)?, db })
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> Result<CrossEntropy> {
        let (n, classes) = logits_dims(logits)?;
        check_labels(labels, n, classes)?;
        let (loss, d, correct) = ops::softmax_cross_entropy(host(logits)?, n, classes, labels);
        Ok(CrossEntropy { loss, dlogits: Tensor::from_vec(logits.dims(), d)?, correct })
    }

    fn distill_kl(&self, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<(f32, Tensor)> {
        let (n, classes) = logits_dims(student)?;
        same_dims(student, teacher, "distillation: student and teacher logits")?;
        if temperature <= 0.0 || !temperature.is_finite() {
            return Err(Error::Invalid(format!("distillation temperature must be positive, got {temperature}")));
        }
        let (loss, d) = ops::distill_kl(host(student)?, host(teacher)?, n, classes, temperature);
        Ok((loss, Tensor::from_vec(student.dims(), d)?))
    }

    fn mse_loss(&self, x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
        same_dims(x, target, "mse loss")?;
        let (loss, d) = ops::mse_loss(host(x)?, host(target)?);
        Ok((loss, Tensor::from_vec(x.dims(), d)?))
    }

    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, hp: SgdStep) -> Result<()> {
        same_dims(param, grad, "sgd: parameter and gradient")?;
        same_dims(param, momentum_buf, "sgd: parameter and momentum buffer")?;
        ops::sgd_step(
            param.as_mut_slice()?,
            host(grad)?,
            momentum_buf.as_mut_slice()?,
            hp.lr,
            hp.momentum,
            hp.weight_decay,
            hp.nesterov,
        );
        Ok(())
    }

    fn index_select(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor> {
        let (outer, len, inner, out_dims) = index_select_layout(x.dims(), axis, index)?;
        Tensor::from_vec(&out_dims, ops::index_select(host(x)?, outer, len, inner, index))
    }

    fn feature_mse(&self, candidates: &Tensor, baseline: &Tensor) -> Result<Vec<f32>> {
        let k = feature_mse_count(candidates, baseline)?;
        Ok(ops::feature_mse(host(candidates)?, k, host(baseline)?))
    }
}

/// `(n, in, out)` of a linear layer, checking `x` `[N,in]` against `w` `[out,in]`.
pub fn linear_dims(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    match (x.dims(), w.dims()) {
        (&[n, fin], &[fout, win]) if fin == win => Ok((n, fin, fout)),
        (xd, wd) => Err(Error::Shape(format!(
            "linear: input {} does not match weight {} (expected [N,in] and [out,in])",
            fmt_dims(xd),
            fmt_dims(wd)
        ))),
    }
}

pub fn logits_dims(logits: &Tensor) -> Result<(usize, usize)> {
    match *logits.dims() {
        [n, c] if c > 0 => Ok((n, c)),
        _ => Err(Error::Shape(format!("expected logits [N, classes], got {}", fmt_dims(logits.dims())))),
    }
}

pub fn check_labels(labels: &[u32], n: usize, classes: usize) -> Result<()> {
    if labels.len() != n {
        return Err(Error::Shape(format!("{} labels for a batch of {n}", labels.len())));
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::Invalid(format!("label {bad} out of range for {classes} classes")));
    }
    Ok(())
}

/// `(outer, len, inner, output dims)` of an index_select, with the index checked.
pub fn index_select_layout(dims: &[usize], axis: usize, index: &[u32]) -> Result<(usize, usize, usize, Vec<usize>)> {
    if axis >= dims.len() {
        return Err(Error::Shape(format!("index_select: axis {axis} out of range for {}", fmt_dims(dims))));
    }
    let len = dims[axis];
    if let Some(bad) = index.iter().find(|&&i| i as usize >= len) {
        return Err(Error::Shape(format!(
            "index_select: index {bad} out of range for axis {axis} of {}",
            fmt_dims(dims)
        )));
    }
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    let mut out = dims.to_vec();
    out[axis] = index.len();
    Ok((outer, len, inner, out))
}

/// Number of candidates K of a feature-MSE call, checking `[K, M]` against `[M]`.
pub fn feature_mse_count(candidates: &Tensor, baseline: &Tensor) -> Result<usize> {
    let m = baseline.numel();
    match candidates.dims() {
        [k, cm] if *cm == m => Ok(*k),
        d => Err(Error::Shape(format!(
            "feature mse: candidates {} do not match baseline of {m} values (expected [K, {m}])",
            fmt_dims(d)
        ))),
    }
}
