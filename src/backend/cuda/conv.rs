//! Launch helpers for `kernels/conv.cu` (exact f32 implicit GEMM) and `kernels/conv_tc.cu`
//! (TF32 / BF16 tensor cores), including the inference conv with batch norm, residual add and
//! ReLU folded into the epilogue.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::{ConvShape, ConvSpec};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr};

/// Arithmetic of the forward and backward-data convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[repr(u8)]
pub enum Precision {
    /// Exact f32 FMAs: the parity reference (max relative error vs CPU <= 1e-4).
    #[default]
    F32 = 0,
    /// Tensor cores, inputs rounded to TF32 (10-bit mantissa), f32 accumulation.
    Tf32 = 1,
    /// Tensor cores, inputs rounded to BF16 (7-bit mantissa), f32 accumulation.
    Bf16 = 2,
}

impl Precision {
    pub(crate) fn from_u8(v: u8) -> Precision {
        match v {
            1 => Precision::Tf32,
            2 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Invalid(format!("unknown conv precision '{other}' (f32, tf32, bf16)"))),
        }
    }
}

/// What the inference conv applies to each output, in order: `v * scale[k] + shift[k]`
/// (a folded batch norm, see [`CudaBackend::fold_batchnorm`], or a bias with `scale` = None),
/// `+ residual` (same shape as the output), then `max(v, 0)` when `relu`.
#[derive(Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    pub scale: Option<&'a Tensor>,
    pub shift: Option<&'a Tensor>,
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

/// Mirror of `ConvParams` in conv_common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvParams {
    src: u64,
    wgt: u64,
    out: u64,
    scale: u64,
    shift: u64,
    residual: u64,
    n: i32,
    src_c: i32,
    src_h: i32,
    src_w: i32,
    out_c: i32,
    out_h: i32,
    out_w: i32,
    r: i32,
    s: i32,
    stride: i32,
    pad: i32,
    relu: i32,
    w_stride_n: i32,
    w_stride_c: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for ConvParams {}
const _: () = assert!(std::mem::size_of::<ConvParams>() == 104);

/// Mirror of `ConvBwdWParams` in conv.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvBwdWParams {
    x: u64,
    dy: u64,
    out: u64,
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    k: i32,
    p: i32,
    q: i32,
    r: i32,
    s: i32,
    stride: i32,
    pad: i32,
    tiles_per_split: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ConvBwdWParams {}
const _: () = assert!(std::mem::size_of::<ConvBwdWParams>() == 72);

/// Mirror of `SplitKReduceParams` in conv.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SplitKReduceParams {
    parts: u64,
    out: u64,
    len: i64,
    splits: i32,
    _pad: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for SplitKReduceParams {}
const _: () = assert!(std::mem::size_of::<SplitKReduceParams>() == 32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    BackwardData,
}

/// One kernel instantiation: names for (forward, backward-data), tile and block size.
struct Tile {
    fwd: &'static str,
    bwd: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
}

const fn tile(fwd: &'static str, bwd: &'static str, bm: usize, bn: usize, threads: u32) -> Tile {
    Tile { fwd, bwd, bm, bn, threads }
}

// Exact f32 (conv.cu). Preference order within each list: largest tile first.
const F32_WIDE: &[Tile] = &[
    tile("conv_fwd_f32_128x64", "conv_bwdd_f32_128x64", 128, 64, 256),
    tile("conv_fwd_f32_64x64", "conv_bwdd_f32_64x64", 64, 64, 256),
    tile("conv_fwd_f32_64x32", "conv_bwdd_f32_64x32", 64, 32, 256),
    tile("conv_fwd_f32_32x32", "conv_bwdd_f32_32x32", 32, 32, 256),
];
const F32_MID: &[Tile] = &[
    tile("conv_fwd_f32_128x32", "conv_bwdd_f32_128x32", 128, 32, 256),
    tile("conv_fwd_f32_64x32", "conv_bwdd_f32_64x32", 64, 32, 256),
    tile("conv_fwd_f32_32x32", "conv_bwdd_f32_32x32", 32, 32, 256),
];
const F32_NARROW: &[Tile] = &[
    tile("conv_fwd_f32_128x16", "conv_bwdd_f32_128x16", 128, 16, 128),
    tile("conv_fwd_f32_32x32", "conv_bwdd_f32_32x32", 32, 32, 256),
];
const TF32_WIDE: &[Tile] = &[
    tile("conv_fwd_tf32_128x64", "conv_bwdd_tf32_128x64", 128, 64, 128),
    tile("conv_fwd_tf32_64x64", "conv_bwdd_tf32_64x64", 64, 64, 128),
    tile("conv_fwd_tf32_32x32", "conv_bwdd_tf32_32x32", 32, 32, 128),
];
const TF32_MID: &[Tile] = &[
    tile("conv_fwd_tf32_128x32", "conv_bwdd_tf32_128x32", 128, 32, 128),
    tile("conv_fwd_tf32_32x32", "conv_bwdd_tf32_32x32", 32, 32, 128),
];
const TF32_NARROW: &[Tile] = &[
    tile("conv_fwd_tf32_128x16", "conv_bwdd_tf32_128x16", 128, 16, 128),
    tile("conv_fwd_tf32_32x32", "conv_bwdd_tf32_32x32", 32, 32, 128),
];
const BF16_WIDE: &[Tile] = &[
    tile("conv_fwd_bf16_128x64", "conv_bwdd_bf16_128x64", 128, 64, 128),
    tile("conv_fwd_bf16_64x64", "conv_bwdd_bf16_64x64", 64, 64, 128),
    tile("conv_fwd_bf16_32x32", "conv_bwdd_bf16_32x32", 32, 32, 128),
];
const BF16_MID: &[Tile] = &[
    tile("conv_fwd_bf16_128x32", "conv_bwdd_bf16_128x32", 128, 32, 128),
    tile("conv_fwd_bf16_32x32", "conv_bwdd_bf16_32x32", 32, 32, 128),
];
const BF16_NARROW: &[Tile] = &[
    tile("conv_fwd_bf16_128x16", "conv_bwdd_bf16_128x16", 128, 16, 128),
    tile("conv_fwd_bf16_32x32", "conv_bwdd_bf16_32x32", 32, 32, 128),
];

/// Largest tile that still gives about one block per SM (at least 3/4 of a wave); else the
/// smallest. `m` = output pixels (GEMM rows), `n` = output channels (GEMM columns).
fn pick_tile(precision: Precision, m: usize, n: usize, sms: usize) -> &'static Tile {
    let list = match (precision, n) {
        (Precision::F32, n) if n <= 16 => F32_NARROW,
        (Precision::F32, n) if n <= 32 => F32_MID,
        (Precision::F32, _) => F32_WIDE,
        (Precision::Tf32, n) if n <= 16 => TF32_NARROW,
        (Precision::Tf32, n) if n <= 32 => TF32_MID,
        (Precision::Tf32, _) => TF32_WIDE,
        (Precision::Bf16, n) if n <= 16 => BF16_NARROW,
        (Precision::Bf16, n) if n <= 32 => BF16_MID,
        (Precision::Bf16, _) => BF16_WIDE,
    };
    for t in list {
        if 4 * m.div_ceil(t.bm) * n.div_ceil(t.bn) >= 3 * sms {
            return t;
        }
    }
    &list[list.len() - 1]
}

/// Name of the kernel `conv2d_*_with` would launch for this problem (benchmarks and tests).
pub(crate) fn kernel_for(precision: Precision, forward: bool, m: usize, n: usize, sms: usize) -> &'static str {
    let t = pick_tile(precision, m, n, sms);
    if forward {
        t.fwd
    } else {
        t.bwd
    }
}

fn check_sizes(shape: &ConvShape, what: &str) -> Result<()> {
    let ins: usize = shape.input_dims().iter().product();
    let outs: usize = shape.output_dims().iter().product();
    let ws: usize = shape.weight_dims().iter().product();
    fits_i32(ins.max(outs).max(ws), what)?;
    Ok(())
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    fn launch_igemm(
        &self,
        mode: Mode,
        precision: Precision,
        shape: &ConvShape,
        src: u64,
        wgt: u64,
        out: u64,
        epi: [u64; 3],
        relu: bool,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let s = shape;
        let rs = s.kh * s.kw;
        // GEMM view (see conv_common.cuh): A source, output tensor, weight strides.
        let (src_c, src_h, src_w, out_c, out_h, out_w, w_stride_n, w_stride_c) = match mode {
            Mode::Forward => (s.c_in, s.h, s.w, s.c_out, s.out_h, s.out_w, s.c_in * rs, rs),
            Mode::BackwardData => (s.c_out, s.out_h, s.out_w, s.c_in, s.h, s.w, rs, s.c_in * rs),
        };
        let m = s.n * out_h * out_w;
        let t = pick_tile(precision, m, out_c, self.sms());
        let name = if mode == Mode::Forward { t.fwd } else { t.bwd };
        let file = if precision == Precision::F32 { "conv.cu" } else { "conv_tc.cu" };
        let grid_x =
            u32::try_from(m.div_ceil(t.bm)).map_err(|_| Error::Invalid(format!("{}: too many pixels", what())))?;
        let grid_y = u32::try_from(out_c.div_ceil(t.bn))
            .map_err(|_| Error::Invalid(format!("{}: too many channels", what())))?;
        let p = ConvParams {
            src,
            wgt,
            out,
            scale: epi[0],
            shift: epi[1],
            residual: epi[2],
            n: s.n as i32,
            src_c: src_c as i32,
            src_h: src_h as i32,
            src_w: src_w as i32,
            out_c: out_c as i32,
            out_h: out_h as i32,
            out_w: out_w as i32,
            r: s.kh as i32,
            s: s.kw as i32,
            stride: s.stride as i32,
            pad: s.pad as i32,
            relu: relu as i32,
            w_stride_n: w_stride_n as i32,
            w_stride_c: w_stride_c as i32,
        };
        Launch::new(file, name, (grid_x, grid_y, 1), t.threads).run(&self.kernels, &self.stream, &p, what)
    }

    /// Forward convolution with an explicit precision (the trait op uses the backend default).
    pub fn conv2d_forward_with(&self, x: &Tensor, w: &Tensor, spec: ConvSpec, precision: Precision) -> Result<Tensor> {
        self.conv2d_fused(x, w, spec, &ConvEpilogue::default(), precision)
    }

    /// Inference convolution with the epilogue applied in the same kernel.
    pub fn conv2d_fused(
        &self,
        x: &Tensor,
        w: &Tensor,
        spec: ConvSpec,
        epi: &ConvEpilogue,
        precision: Precision,
    ) -> Result<Tensor> {
        let shape = ConvShape::new(x.dims(), w.dims(), spec)?;
        let dims = shape.output_dims();
        let mut out = self.alloc::<f32>(dims.iter().product())?;
        let pout = self.ptr_mut(&mut out);
        self.conv_fused_raw(x, w, &shape, epi, precision, pout)?;
        self.tensor(&dims, out)
    }

    /// [`CudaBackend::conv2d_fused`] writing into a preallocated output (for graph capture).
    pub fn conv2d_fused_into(
        &self,
        x: &Tensor,
        w: &Tensor,
        spec: ConvSpec,
        epi: &ConvEpilogue,
        precision: Precision,
        out: &mut Tensor,
    ) -> Result<()> {
        let shape = ConvShape::new(x.dims(), w.dims(), spec)?;
        out.expect_dims(&shape.output_dims(), "conv2d_fused_into output")?;
        if let Some(r) = epi.residual {
            if std::ptr::eq(r, out) {
                return Err(Error::Invalid("conv2d_fused_into: residual and output must differ".into()));
            }
        }
        let pout = self.ptr_mut(self.dev_mut(out, "conv2d_fused_into output")?);
        self.conv_fused_raw(x, w, &shape, epi, precision, pout)
    }

    fn conv_fused_raw(
        &self,
        x: &Tensor,
        w: &Tensor,
        shape: &ConvShape,
        epi: &ConvEpilogue,
        precision: Precision,
        pout: u64,
    ) -> Result<()> {
        check_sizes(shape, "conv2d_forward")?;
        let k = shape.c_out;
        for (t, name) in [(epi.scale, "scale"), (epi.shift, "shift")] {
            if let Some(t) = t {
                t.expect_dims(&[k], &format!("conv epilogue {name}"))?;
            }
        }
        if let Some(r) = epi.residual {
            r.expect_dims(&shape.output_dims(), "conv epilogue residual")?;
        }
        let px = self.ptr(self.dev(x, "conv2d_forward input")?);
        let pw = self.ptr(self.dev(w, "conv2d_forward weight")?);
        let epi_ptrs = [
            self.opt_ptr(epi.scale, "conv epilogue scale")?,
            self.opt_ptr(epi.shift, "conv epilogue shift")?,
            self.opt_ptr(epi.residual, "conv epilogue residual")?,
        ];
        let (xd, wd, stride, pad) = (x.dims().to_vec(), w.dims().to_vec(), shape.stride, shape.pad);
        let what = move || {
            format!(
                "conv2d_forward ({}) x {} * w {} stride {stride} pad {pad}",
                precision.name(),
                fmt_dims(&xd),
                fmt_dims(&wd)
            )
        };
        self.launch_igemm(Mode::Forward, precision, shape, px, pw, pout, epi_ptrs, epi.relu, &what)
    }

    /// Backward-data convolution with an explicit precision.
    pub fn conv2d_backward_data_with(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_dims: &[usize],
        spec: ConvSpec,
        precision: Precision,
    ) -> Result<Tensor> {
        let shape = ConvShape::new(x_dims, w.dims(), spec)?;
        dy.expect_dims(&shape.output_dims(), "conv2d_backward_data dy")?;
        check_sizes(&shape, "conv2d_backward_data")?;
        let pdy = self.ptr(self.dev(dy, "conv2d_backward_data dy")?);
        let pw = self.ptr(self.dev(w, "conv2d_backward_data weight")?);
        let mut dx = self.alloc::<f32>(x_dims.iter().product())?;
        let pdx = self.ptr_mut(&mut dx);
        let (dd, wd, xd) = (dy.dims().to_vec(), w.dims().to_vec(), x_dims.to_vec());
        let what = move || {
            format!(
                "conv2d_backward_data ({}) dy {} w {} -> dx {} stride {} pad {}",
                precision.name(),
                fmt_dims(&dd),
                fmt_dims(&wd),
                fmt_dims(&xd),
                spec.stride,
                spec.pad
            )
        };
        self.launch_igemm(Mode::BackwardData, precision, &shape, pdy, pw, pdx, [0; 3], false, &what)?;
        self.tensor(x_dims, dx)
    }

    /// Backward-weight convolution (always exact f32): split-K implicit GEMM plus a fixed-order
    /// reduction of the splits.
    pub(crate) fn conv_backward_weight(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w_dims: &[usize],
        spec: ConvSpec,
    ) -> Result<Tensor> {
        let shape = ConvShape::new(x.dims(), w_dims, spec)?;
        dy.expect_dims(&shape.output_dims(), "conv2d_backward_weight dy")?;
        check_sizes(&shape, "conv2d_backward_weight")?;
        let s = shape;
        let crs = s.c_in * s.kh * s.kw;
        let j = s.n * s.out_h * s.out_w;
        let (name, bm, bn) = if s.c_out <= 16 {
            ("conv_bwdw_f32_16x64", 16, 64)
        } else if s.c_out <= 32 {
            ("conv_bwdw_f32_32x64", 32, 64)
        } else {
            ("conv_bwdw_f32_64x64", 64, 64)
        };
        let (splits, tiles_per_split) = bwdw_splits(s.c_out, crs, j, bm, bn, self.sms());
        let px = self.ptr(self.dev(x, "conv2d_backward_weight x")?);
        let pdy = self.ptr(self.dev(dy, "conv2d_backward_weight dy")?);
        let len = s.c_out * crs;
        let mut dw = self.alloc::<f32>(len)?;
        let (xd, dd, wd) = (x.dims().to_vec(), dy.dims().to_vec(), w_dims.to_vec());
        let what = move || {
            format!(
                "conv2d_backward_weight dy {} x {} -> dw {} stride {} pad {}",
                fmt_dims(&dd),
                fmt_dims(&xd),
                fmt_dims(&wd),
                spec.stride,
                spec.pad
            )
        };
        let mut parts: Option<CudaSlice<f32>> = if splits > 1 { Some(self.alloc::<f32>(splits * len)?) } else { None };
        let pout = match parts.as_mut() {
            Some(p) => self.ptr_mut(p),
            None => self.ptr_mut(&mut dw),
        };
        let p = ConvBwdWParams {
            x: px,
            dy: pdy,
            out: pout,
            n: s.n as i32,
            c: s.c_in as i32,
            h: s.h as i32,
            w: s.w as i32,
            k: s.c_out as i32,
            p: s.out_h as i32,
            q: s.out_w as i32,
            r: s.kh as i32,
            s: s.kw as i32,
            stride: s.stride as i32,
            pad: s.pad as i32,
            tiles_per_split: fits_i32(tiles_per_split, "conv2d_backward_weight tiles")?,
        };
        let grid = (
            u32::try_from(s.c_out.div_ceil(bm))
                .map_err(|_| Error::Invalid(format!("{}: too many channels", what())))?,
            u32::try_from(crs.div_ceil(bn)).map_err(|_| Error::Invalid(format!("{}: weight too large", what())))?,
            splits as u32,
        );
        Launch::new("conv.cu", name, grid, 256).run(&self.kernels, &self.stream, &p, &what)?;
        if let Some(parts) = parts.as_ref() {
            let r = SplitKReduceParams {
                parts: self.ptr(parts),
                out: self.ptr_mut(&mut dw),
                len: len as i64,
                splits: splits as i32,
                _pad: 0,
            };
            Launch::linear("conv.cu", "conv_splitk_reduce", len, 256, 256)?.run(
                &self.kernels,
                &self.stream,
                &r,
                &what,
            )?;
        }
        self.tensor(w_dims, dw)
    }

    /// Folds inference batch norm into the per-channel `(scale, shift)` of [`ConvEpilogue`]:
    /// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
    pub fn fold_batchnorm(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        self.bn_fold(gamma, beta, mean, var, eps)
    }
}

/// Split-K factor for backward-weight: enough blocks for ~4 waves, at least 4 k-tiles (of 16
/// pixels) per split, at most 256 splits. Returns (splits, k-tiles per split), with no empty split.
fn bwdw_splits(k: usize, crs: usize, pixels: usize, bm: usize, bn: usize, sms: usize) -> (usize, usize) {
    let tiles = pixels.div_ceil(16).max(1);
    let base = (k.div_ceil(bm) * crs.div_ceil(bn)).max(1);
    let want = (4 * sms).div_ceil(base).clamp(1, 256);
    let splits = want.min(tiles.div_ceil(4)).max(1);
    let per = tiles.div_ceil(splits);
    (tiles.div_ceil(per), per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_cifar_shapes() {
        // ResNet stage 1 at batch 128: many pixels, 16 channels -> the narrow tile.
        assert_eq!(pick_tile(Precision::F32, 128 * 32 * 32, 16, 132).fwd, "conv_fwd_f32_128x16");
        // VGG at 2x2: few pixels, many channels -> small tiles to fill the SMs.
        assert_eq!(pick_tile(Precision::F32, 128 * 4, 512, 132).fwd, "conv_fwd_f32_64x32");
        assert_eq!(pick_tile(Precision::Tf32, 128 * 64, 64, 132).fwd, "conv_fwd_tf32_64x64");
        assert_eq!(pick_tile(Precision::Bf16, 8 * 64, 32, 132).bwd, "conv_bwdd_bf16_32x32");
    }

    #[test]
    fn splits_never_leave_an_empty_split() {
        for &(k, crs, pixels) in &[(16, 144, 131072), (64, 576, 8192), (512, 4608, 512), (3, 27, 1), (16, 9, 17)] {
            let (splits, per) = bwdw_splits(k, crs, pixels, 64, 64, 132);
            let tiles = pixels.div_ceil(16);
            assert!(splits >= 1 && per >= 1);
            assert!((splits - 1) * per < tiles, "split {splits} x {per} for {tiles} tiles");
            assert!(splits * per >= tiles);
        }
    }

    #[test]
    fn precision_parses() {
        assert_eq!("tf32".parse::<Precision>().ok(), Some(Precision::Tf32));
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!(Precision::from_u8(Precision::Bf16 as u8), Precision::Bf16);
    }
}
