//! Checked geometry of every op family, built once before any data is touched.
//!
//! Each backend method starts by building one of these from its arguments and then only
//! computes (CPU) or launches (CUDA) with the sizes it holds. The checks live here and nowhere
//! else, so the same bad input gives the same error variant and message on every backend
//! (`tests/backend_errors.rs` runs one table of bad inputs against each). Messages start with
//! the trait method's name. Conventions: a shape that does not fit is `Error::Shape`; a
//! parameter outside its domain (stride or window 0, a non-positive temperature, a label or
//! index past its axis) is `Error::Invalid`.

use crate::backend::{BnSaved, ConvEpilogue, ConvSpec};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};

/// Output size of a convolution or pooling window along one axis.
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (input + 2 * pad).saturating_sub(kernel) / stride + 1
}

/// Errors unless `a` and `b` have the same dims.
pub fn same_dims(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::Shape(format!("{what}: {} and {} differ", fmt_dims(a.dims()), fmt_dims(b.dims()))));
    }
    Ok(())
}

/// `[n, c, h, w]` of a rank-4 shape.
fn nchw(dims: &[usize], what: &str) -> Result<[usize; 4]> {
    match *dims {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::Shape(format!("{what}: expected [N,C,H,W], got {}", fmt_dims(dims)))),
    }
}

// ---- convolution ------------------------------------------------------------------------------

/// Full problem size of a convolution, derived from its input and weight shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    /// Channel groups: `c_in` and `c_out` split into `groups` blocks (1: dense).
    pub groups: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvShape {
    /// Checks `x` `[N,C,H,W]` against `w` `[K,C,R,S]` and returns the problem size.
    pub fn new(x: &[usize], w: &[usize], spec: ConvSpec) -> Result<ConvShape> {
        if x.len() != 4 || w.len() != 4 {
            return Err(Error::Shape(format!("conv2d: input {x:?} and weight {w:?} must both be rank 4")));
        }
        if spec.stride == 0 {
            return Err(Error::Invalid("conv2d: stride must be at least 1".into()));
        }
        let g = spec.groups;
        if g == 0 || !x[1].is_multiple_of(g) || !w[0].is_multiple_of(g) {
            return Err(Error::Invalid(format!(
                "conv2d: {g} groups must divide the {} input and {} output channels",
                x[1], w[0]
            )));
        }
        if x[1] != w[1] * g {
            return Err(Error::Shape(format!(
                "conv2d: input has {} channels but weight {w:?} with {g} group(s) expects {}",
                x[1],
                w[1] * g
            )));
        }
        if x[2] + 2 * spec.pad < w[2] || x[3] + 2 * spec.pad < w[3] {
            return Err(Error::Shape(format!(
                "conv2d: kernel {}x{} larger than padded input {}x{}",
                w[2], w[3], x[2], x[3]
            )));
        }
        Ok(ConvShape {
            n: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: w[0],
            kh: w[2],
            kw: w[3],
            stride: spec.stride,
            pad: spec.pad,
            groups: spec.groups,
            out_h: conv_out_size(x[2], w[2], spec.stride, spec.pad),
            out_w: conv_out_size(x[3], w[3], spec.stride, spec.pad),
        })
    }

    /// Backward-data geometry: the forward shape from `x_dims` and `w`, with `dy` checked against it.
    pub fn backward_data(dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<ConvShape> {
        let s = ConvShape::new(x_dims, w.dims(), spec)?;
        dy.expect_dims(&s.output_dims(), "conv2d_backward_data: output gradient")?;
        Ok(s)
    }

    /// Backward-weight geometry: the forward shape from `x` and `w_dims`, with `dy` checked against it.
    pub fn backward_weight(dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<ConvShape> {
        let s = ConvShape::new(x.dims(), w_dims, spec)?;
        dy.expect_dims(&s.output_dims(), "conv2d_backward_weight: output gradient")?;
        Ok(s)
    }

    /// Forward geometry with the epilogue's per-channel vectors and residual checked.
    pub fn fused(x: &Tensor, w: &Tensor, spec: ConvSpec, epi: &ConvEpilogue) -> Result<ConvShape> {
        let s = ConvShape::new(x.dims(), w.dims(), spec)?;
        epi.scale.expect_dims(&[s.c_out], "conv2d_forward_fused: scale")?;
        epi.shift.expect_dims(&[s.c_out], "conv2d_forward_fused: shift")?;
        if let Some(r) = epi.residual {
            r.expect_dims(&s.output_dims(), "conv2d_forward_fused: residual")?;
        }
        Ok(s)
    }

    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.groups, self.kh, self.kw]
    }
    /// The spec this shape was built from.
    pub fn spec(&self) -> ConvSpec {
        ConvSpec { stride: self.stride, pad: self.pad, groups: self.groups }
    }
    /// Whether every channel is its own group (`groups == c_in == c_out`).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in && self.groups == self.c_out
    }
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h, self.out_w]
    }
    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.c_out * self.out_h * self.out_w * (self.c_in / self.groups) * self.kh * self.kw) as u64
    }
}

// ---- batch norm -------------------------------------------------------------------------------

/// A batch-norm input viewed as `[n, c, hw]` (`[N,C,H,W]` or `[N,C]`), parameters checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnShape {
    fn layout(x: &Tensor, op: &str) -> Result<BnShape> {
        match *x.dims() {
            [n, c, h, w] => Ok(BnShape { n, c, hw: h * w }),
            [n, c] => Ok(BnShape { n, c, hw: 1 }),
            _ => Err(Error::Shape(format!("{op}: expected [N,C,H,W] or [N,C], got {}", fmt_dims(x.dims())))),
        }
    }

    fn channels(op: &str, c: usize, params: &[(&Tensor, &str)]) -> Result<()> {
        for (t, name) in params {
            t.expect_dims(&[c], &format!("{op}: {name}"))?;
        }
        Ok(())
    }

    /// Training-mode forward: also needs more than one value per channel for a variance.
    pub fn train(x: &Tensor, gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor) -> Result<BnShape> {
        const OP: &str = "batchnorm_forward_train";
        let s = BnShape::layout(x, OP)?;
        BnShape::channels(OP, s.c, &[(gamma, "weight"), (beta, "bias"), (mean, "running_mean"), (var, "running_var")])?;
        if s.n * s.hw < 2 {
            return Err(Error::Shape(format!(
                "{OP}: needs more than one value per channel, got input {}",
                fmt_dims(x.dims())
            )));
        }
        Ok(s)
    }

    pub fn eval(x: &Tensor, gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor) -> Result<BnShape> {
        const OP: &str = "batchnorm_forward_eval";
        let s = BnShape::layout(x, OP)?;
        BnShape::channels(OP, s.c, &[(gamma, "weight"), (beta, "bias"), (mean, "running_mean"), (var, "running_var")])?;
        Ok(s)
    }

    pub fn backward(dy: &Tensor, x: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<BnShape> {
        const OP: &str = "batchnorm_backward";
        let s = BnShape::layout(x, OP)?;
        same_dims(dy, x, &format!("{OP}: output gradient and input"))?;
        BnShape::channels(OP, s.c, &[(gamma, "weight"), (&saved.mean, "saved mean"), (&saved.invstd, "saved invstd")])?;
        Ok(s)
    }

    /// Number of channels of a fold into `(scale, shift)`: every vector `[C]`.
    pub fn fold(gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor) -> Result<usize> {
        const OP: &str = "batchnorm_fold";
        gamma.expect_rank(1, &format!("{OP}: weight"))?;
        let c = gamma.numel();
        BnShape::channels(OP, c, &[(beta, "bias"), (mean, "running_mean"), (var, "running_var")])?;
        Ok(c)
    }
}

// ---- pooling ----------------------------------------------------------------------------------

/// Max pooling (floor mode) of a `[N,C,H,W]` input with `pad` cells of -inf on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolShape {
    pub fn max(op: &str, x: &[usize], kernel: usize, stride: usize, pad: usize) -> Result<PoolShape> {
        let [n, c, h, w] = nchw(x, op)?;
        if kernel == 0 || stride == 0 {
            return Err(Error::Invalid(format!("{op}: window {kernel} and stride {stride} must be at least 1")));
        }
        // PyTorch's rule: every window holds at least one real cell.
        if pad > kernel / 2 {
            return Err(Error::Invalid(format!("{op}: padding {pad} is more than half the window {kernel}")));
        }
        if h + 2 * pad < kernel || w + 2 * pad < kernel {
            return Err(Error::Shape(format!("{op}: window {kernel} larger than the {h}x{w} input padded by {pad}")));
        }
        let (out_h, out_w) = (conv_out_size(h, kernel, stride, pad), conv_out_size(w, kernel, stride, pad));
        Ok(PoolShape { n, c, h, w, kernel, stride, pad, out_h, out_w })
    }

    pub fn max_backward(dy: &Tensor, x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<PoolShape> {
        let s = PoolShape::max("maxpool_backward", x.dims(), kernel, stride, pad)?;
        dy.expect_dims(&s.output_dims(), "maxpool_backward: output gradient")?;
        Ok(s)
    }

    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.out_h, self.out_w]
    }
}

/// Global average pooling `[N,C,H,W] -> [N,C]` over a non-empty feature map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalPoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl GlobalPoolShape {
    pub fn new(op: &str, x: &[usize]) -> Result<GlobalPoolShape> {
        let [n, c, h, w] = nchw(x, op)?;
        if h * w == 0 {
            return Err(Error::Shape(format!("{op}: empty feature map {}", fmt_dims(x))));
        }
        Ok(GlobalPoolShape { n, c, h, w })
    }

    pub fn backward(dy: &Tensor, x_dims: &[usize]) -> Result<GlobalPoolShape> {
        let s = GlobalPoolShape::new("global_avgpool_backward", x_dims)?;
        dy.expect_dims(&[s.n, s.c], "global_avgpool_backward: output gradient")?;
        Ok(s)
    }

    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

// ---- option-A shortcut ------------------------------------------------------------------------

/// `x[:, src, ::stride, ::stride]` with `src[o] < 0` meaning a zero channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortcutShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: usize,
}

impl ShortcutShape {
    pub fn new(op: &str, x: &[usize], src: &[i32], stride: usize) -> Result<ShortcutShape> {
        let [n, c_in, h, w] = nchw(x, op)?;
        if stride == 0 {
            return Err(Error::Invalid(format!("{op}: stride must be at least 1")));
        }
        if let Some((o, &s)) = src.iter().enumerate().find(|(_, &s)| s >= 0 && s as usize >= c_in) {
            return Err(Error::Invalid(format!(
                "{op}: channel map sends output channel {o} to input channel {s} of {c_in}"
            )));
        }
        let (out_h, out_w) = (h.div_ceil(stride), w.div_ceil(stride));
        Ok(ShortcutShape { n, c_in, h, w, c_out: src.len(), out_h, out_w, stride })
    }

    pub fn backward(dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<ShortcutShape> {
        let s = ShortcutShape::new("shortcut_backward", x_dims, src, stride)?;
        dy.expect_dims(&s.output_dims(), "shortcut_backward: output gradient")?;
        Ok(s)
    }

    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h, self.out_w]
    }
}

// ---- linear -----------------------------------------------------------------------------------

/// `x` `[N,in]` against `w` `[out,in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub n: usize,
    pub fin: usize,
    pub fout: usize,
}

impl LinearShape {
    fn new(op: &str, x: &Tensor, w: &Tensor) -> Result<LinearShape> {
        match (x.dims(), w.dims()) {
            (&[n, fin], &[fout, win]) if fin == win => Ok(LinearShape { n, fin, fout }),
            (xd, wd) => Err(Error::Shape(format!(
                "{op}: input {} does not match weight {} (expected [N,in] and [out,in])",
                fmt_dims(xd),
                fmt_dims(wd)
            ))),
        }
    }

    pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<LinearShape> {
        let s = LinearShape::new("linear_forward", x, w)?;
        if let Some(b) = b {
            b.expect_dims(&[s.fout], "linear_forward: bias")?;
        }
        Ok(s)
    }

    pub fn backward(dy: &Tensor, x: &Tensor, w: &Tensor) -> Result<LinearShape> {
        let s = LinearShape::new("linear_backward", x, w)?;
        dy.expect_dims(&[s.n, s.fout], "linear_backward: output gradient")?;
        Ok(s)
    }
}

// ---- losses -----------------------------------------------------------------------------------

/// Logits `[N, classes]` (classes > 0) with their labels or teacher checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossShape {
    pub n: usize,
    pub classes: usize,
}

impl LossShape {
    fn logits(op: &str, t: &Tensor) -> Result<LossShape> {
        match *t.dims() {
            [n, classes] if classes > 0 => Ok(LossShape { n, classes }),
            _ => Err(Error::Shape(format!("{op}: expected logits [N, classes], got {}", fmt_dims(t.dims())))),
        }
    }

    pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<LossShape> {
        const OP: &str = "softmax_cross_entropy";
        let s = LossShape::logits(OP, logits)?;
        if labels.len() != s.n {
            return Err(Error::Shape(format!("{OP}: {} labels for a batch of {}", labels.len(), s.n)));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= s.classes) {
            return Err(Error::Invalid(format!("{OP}: label {l} of row {i} out of range for {} classes", s.classes)));
        }
        Ok(s)
    }

    pub fn distill(student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<LossShape> {
        const OP: &str = "distill_kl";
        let s = LossShape::logits(OP, student)?;
        same_dims(student, teacher, &format!("{OP}: student and teacher logits"))?;
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::Invalid(format!("{OP}: temperature must be positive, got {temperature}")));
        }
        Ok(s)
    }
}

// ---- pruning and search -----------------------------------------------------------------------

/// An index_select viewed as `[outer, len, inner]` -> `[outer, index.len(), inner]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSelectShape {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
    pub out_dims: Vec<usize>,
}

impl IndexSelectShape {
    pub fn new(dims: &[usize], axis: usize, index: &[u32]) -> Result<IndexSelectShape> {
        Self::check("index_select", dims, axis, index)
    }

    fn check(op: &str, dims: &[usize], axis: usize, index: &[u32]) -> Result<IndexSelectShape> {
        if axis >= dims.len() {
            return Err(Error::Shape(format!("{op}: axis {axis} out of range for {}", fmt_dims(dims))));
        }
        let len = dims[axis];
        if let Some((i, &v)) = index.iter().enumerate().find(|(_, &v)| v as usize >= len) {
            return Err(Error::Invalid(format!(
                "{op}: index {v} at position {i} out of range for axis {axis} of {}",
                fmt_dims(dims)
            )));
        }
        let mut out_dims = dims.to_vec();
        out_dims[axis] = index.len();
        Ok(IndexSelectShape {
            outer: dims[..axis].iter().product(),
            len,
            inner: dims[axis + 1..].iter().product(),
            out_dims,
        })
    }
}

/// K index_selects of one tensor along one axis (`gather_candidates`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherShape {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
    /// Output dims of each candidate.
    pub out_dims: Vec<Vec<usize>>,
}

impl GatherShape {
    pub fn new(dims: &[usize], axis: usize, index: &[&[u32]]) -> Result<GatherShape> {
        let mut out_dims = Vec::with_capacity(index.len());
        let (mut outer, mut len, mut inner) = (0, 0, 0);
        for (k, list) in index.iter().enumerate() {
            let s = IndexSelectShape::check(&format!("gather_candidates: candidate {k}"), dims, axis, list)?;
            (outer, len, inner) = (s.outer, s.len, s.inner);
            out_dims.push(s.out_dims);
        }
        if index.is_empty() && axis >= dims.len() {
            return Err(Error::Shape(format!("gather_candidates: axis {axis} out of range for {}", fmt_dims(dims))));
        }
        Ok(GatherShape { outer, len, inner, out_dims })
    }
}

/// K candidate feature vectors `[K, M]` against one baseline of M values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureMseShape {
    pub k: usize,
    pub m: usize,
}

impl FeatureMseShape {
    pub fn new(candidates: &Tensor, baseline: &Tensor) -> Result<FeatureMseShape> {
        let m = baseline.numel();
        match *candidates.dims() {
            [k, cm] if cm == m => Ok(FeatureMseShape { k, m }),
            _ => Err(Error::Shape(format!(
                "feature_mse: candidates {} do not match a baseline of {m} values (expected [K, {m}])",
                fmt_dims(candidates.dims())
            ))),
        }
    }
}
