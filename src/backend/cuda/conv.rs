//! [`ConvOps`] on `kernels/conv.cu` (exact f32 implicit GEMM) and `kernels/conv_tc.cu` (TF32 /
//! BF16 tensor cores), including the inference conv with batch norm, residual add and ReLU
//! folded into the epilogue.
//!
//! Grouped convolutions (`groups > 1`) always run in exact f32, whatever the precision asked
//! for (the tensor-core kernels are dense only), on one of two kernel families ([`GroupRoute`]):
//! groups of at most 8 input and 8 output channels (depthwise, ResNeXt 32x4d / 32x8d) on the
//! direct kernels of `kernels/conv_dw.cu`; wider groups on the grouped implicit GEMM of
//! `kernels/conv.cu` (one GEMM per group, `blockIdx.z` = group).

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::{Activation, ConvEpilogue, ConvOps, ConvShape, ConvSpec, Precision};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr};
use std::sync::atomic::Ordering;

/// Device addresses of the epilogue operands (0 = absent): per-channel scale and shift, residual.
#[derive(Clone, Copy, Default)]
pub(crate) struct EpiloguePtrs {
    pub scale: u64,
    pub shift: u64,
    pub residual: u64,
    pub act: Activation,
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
    /// 0 none, 1 ReLU, 2 ReLU6 (conv_common.cuh).
    act: i32,
    w_stride_n: i32,
    w_stride_c: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for ConvParams {}
assert_layout!(ConvParams, size 104, src @ 0, wgt @ 8, out @ 16, scale @ 24, shift @ 32, residual @ 40, n @ 48, src_c @ 52, src_h @ 56, src_w @ 60, out_c @ 64, out_h @ 68, out_w @ 72, r @ 76, s @ 80, stride @ 84, pad @ 88, act @ 92, w_stride_n @ 96, w_stride_c @ 100);

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
assert_layout!(ConvBwdWParams, size 72, x @ 0, dy @ 8, out @ 16, n @ 24, c @ 28, h @ 32, w @ 36, k @ 40, p @ 44, q @ 48, r @ 52, s @ 56, stride @ 60, pad @ 64, tiles_per_split @ 68);

/// Mirror of `ConvGroupParams` in conv_common.cuh: `c` is group 0's view of the problem.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvGroupParams {
    c: ConvParams,
    src_ctotal: i32,
    out_ctotal: i32,
    w_group: i32,
    _pad: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ConvGroupParams {}
assert_layout!(ConvGroupParams, size 120, c @ 0, src_ctotal @ 104, out_ctotal @ 108, w_group @ 112, _pad @ 116);

/// Mirror of `ConvBwdWGroupParams` in conv.cu: `b` is group 0's view of the problem.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvBwdWGroupParams {
    b: ConvBwdWParams,
    c_total: i32,
    k_total: i32,
    splits: i32,
    _pad: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ConvBwdWGroupParams {}
assert_layout!(ConvBwdWGroupParams, size 88, b @ 0, c_total @ 72, k_total @ 76, splits @ 80, _pad @ 84);

/// Mirror of `DwParams` in conv_dw.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DwParams {
    x: u64,
    wgt: u64,
    dy: u64,
    out: u64,
    scale: u64,
    shift: u64,
    residual: u64,
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
    cg: i32,
    kg: i32,
    act: i32,
    pix_per_split: i32,
    _pad: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for DwParams {}
assert_layout!(DwParams, size 120, x @ 0, wgt @ 8, dy @ 16, out @ 24, scale @ 32, shift @ 40, residual @ 48, n @ 56, c @ 60, h @ 64, w @ 68, k @ 72, p @ 76, q @ 80, r @ 84, s @ 88, stride @ 92, pad @ 96, cg @ 100, kg @ 104, act @ 108, pix_per_split @ 112, _pad @ 116);

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
assert_layout!(SplitKReduceParams, size 32, parts @ 0, out @ 8, len @ 16, splits @ 24, _pad @ 28);

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

// Grouped f32 (conv.cu, `blockIdx.z` = group): the same tiles over one group's channels.
const F32G_WIDE: &[Tile] = &[
    tile("conv_fwd_f32g_128x64", "conv_bwdd_f32g_128x64", 128, 64, 256),
    tile("conv_fwd_f32g_64x64", "conv_bwdd_f32g_64x64", 64, 64, 256),
    tile("conv_fwd_f32g_64x32", "conv_bwdd_f32g_64x32", 64, 32, 256),
    tile("conv_fwd_f32g_32x32", "conv_bwdd_f32g_32x32", 32, 32, 256),
];
const F32G_MID: &[Tile] = &[
    tile("conv_fwd_f32g_128x32", "conv_bwdd_f32g_128x32", 128, 32, 256),
    tile("conv_fwd_f32g_64x32", "conv_bwdd_f32g_64x32", 64, 32, 256),
    tile("conv_fwd_f32g_32x32", "conv_bwdd_f32g_32x32", 32, 32, 256),
];
const F32G_NARROW: &[Tile] = &[
    tile("conv_fwd_f32g_128x16", "conv_bwdd_f32g_128x16", 128, 16, 128),
    tile("conv_fwd_f32g_32x32", "conv_bwdd_f32g_32x32", 32, 32, 256),
];

/// Channels per group up to which a grouped conv runs on the direct kernels (conv_dw.cu): the
/// implicit GEMM's 16-channel reduction chunks and 16-column tiles would be mostly padding.
const DIRECT_MAX_GROUP_WIDTH: usize = 8;

/// Which kernel family runs a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupRoute {
    /// `groups == 1`: conv.cu / conv_tc.cu, in the requested precision.
    Dense,
    /// Groups of more than 8 channels: conv.cu's grouped implicit GEMM (exact f32).
    GroupedGemm,
    /// Depthwise and groups of at most 8 input and 8 output channels: conv_dw.cu (exact f32).
    Direct,
}

pub(crate) fn group_route(s: &ConvShape) -> GroupRoute {
    if s.groups == 1 {
        GroupRoute::Dense
    } else if s.c_in / s.groups <= DIRECT_MAX_GROUP_WIDTH && s.c_out / s.groups <= DIRECT_MAX_GROUP_WIDTH {
        GroupRoute::Direct
    } else {
        GroupRoute::GroupedGemm
    }
}

/// The grouped GEMM's tile: as [`pick_tile`] over one group's `n` channels, counting the blocks
/// of every group.
fn pick_tile_grouped(m: usize, n: usize, groups: usize, sms: usize) -> &'static Tile {
    let list = if n <= 16 {
        F32G_NARROW
    } else if n <= 32 {
        F32G_MID
    } else {
        F32G_WIDE
    };
    for t in list {
        if 4 * m.div_ceil(t.bm) * n.div_ceil(t.bn) * groups >= 3 * sms {
            return t;
        }
    }
    &list[list.len() - 1]
}

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

/// Names of the kernels a convolution of this shape launches (benchmarks): `op` is `fwd`,
/// `bwd_data` or `bwd_weight`.
pub(crate) fn kernels_for_shape(precision: Precision, op: &str, s: &ConvShape, sms: usize) -> String {
    let (m, n) = match op {
        "fwd" => (s.n * s.out_h * s.out_w, s.c_out),
        _ => (s.n * s.h * s.w, s.c_in),
    };
    match (group_route(s), op) {
        (GroupRoute::Dense, "bwd_weight") => "conv_bwdw_f32 + conv_splitk_reduce".into(),
        (GroupRoute::Dense, _) => kernel_for(precision, op == "fwd", m, n, sms).into(),
        (GroupRoute::GroupedGemm, "bwd_weight") => "conv_bwdw_f32g + conv_splitk_reduce".into(),
        (GroupRoute::GroupedGemm, _) => {
            let t = pick_tile_grouped(m, n / s.groups, s.groups, sms);
            (if op == "fwd" { t.fwd } else { t.bwd }).into()
        }
        (GroupRoute::Direct, "bwd_weight") => "dw_bwdw + conv_splitk_reduce".into(),
        (GroupRoute::Direct, _) => dw_kernel(s, op == "fwd").into(),
    }
}

/// The direct kernel for a forward (or backward-data) conv: 3x3 unrolled, or any window.
fn dw_kernel(s: &ConvShape, forward: bool) -> &'static str {
    match (s.kh == 3 && s.kw == 3, forward) {
        (true, true) => "dw_fwd_3x3",
        (false, true) => "dw_fwd_any",
        (true, false) => "dw_bwdd_3x3",
        (false, false) => "dw_bwdd_any",
    }
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

/// One group's GEMM view of a forward or backward-data pass (see conv_common.cuh): the source
/// and output tensors' shapes and the weight strides; for a dense conv, the whole conv.
struct GemmView {
    src_c: usize,
    src_h: usize,
    src_w: usize,
    out_c: usize,
    out_h: usize,
    out_w: usize,
    w_stride_n: usize,
    w_stride_c: usize,
}

impl GemmView {
    fn of(s: &ConvShape, mode: Mode) -> GemmView {
        let (cg, kg, rs) = (s.c_in / s.groups, s.c_out / s.groups, s.kh * s.kw);
        let (src_c, src_h, src_w, out_c, out_h, out_w, w_stride_n, w_stride_c) = match mode {
            Mode::Forward => (cg, s.h, s.w, kg, s.out_h, s.out_w, cg * rs, rs),
            Mode::BackwardData => (kg, s.out_h, s.out_w, cg, s.h, s.w, rs, cg * rs),
        };
        GemmView { src_c, src_h, src_w, out_c, out_h, out_w, w_stride_n, w_stride_c }
    }

    /// The kernel's parameters: `ptrs` are source, weight and output; `epi` scale, shift, residual.
    fn params(&self, s: &ConvShape, ptrs: [u64; 3], epi: [u64; 3], act: Activation) -> ConvParams {
        ConvParams {
            src: ptrs[0],
            wgt: ptrs[1],
            out: ptrs[2],
            scale: epi[0],
            shift: epi[1],
            residual: epi[2],
            n: s.n as i32,
            src_c: self.src_c as i32,
            src_h: self.src_h as i32,
            src_w: self.src_w as i32,
            out_c: self.out_c as i32,
            out_h: self.out_h as i32,
            out_w: self.out_w as i32,
            r: s.kh as i32,
            s: s.kw as i32,
            stride: s.stride as i32,
            pad: s.pad as i32,
            act: act_code(act),
            w_stride_n: self.w_stride_n as i32,
            w_stride_c: self.w_stride_c as i32,
        }
    }
}

/// Blocks along the GEMM's pixels and output channels for a `bm` x `bn` tile.
fn grid_xy(m: usize, out_c: usize, bm: usize, bn: usize, what: &dyn Fn() -> String) -> Result<(u32, u32)> {
    let x = u32::try_from(m.div_ceil(bm)).map_err(|_| Error::Invalid(format!("{}: too many pixels", what())))?;
    let y = u32::try_from(out_c.div_ceil(bn)).map_err(|_| Error::Invalid(format!("{}: too many channels", what())))?;
    Ok((x, y))
}

/// The epilogue's activation as conv_common.cuh encodes it.
fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
    }
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
        act: Activation,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let v = GemmView::of(shape, mode);
        let m = shape.n * v.out_h * v.out_w;
        let t = pick_tile(precision, m, v.out_c, self.sms());
        let name = if mode == Mode::Forward { t.fwd } else { t.bwd };
        let file = if precision == Precision::F32 { "conv.cu" } else { "conv_tc.cu" };
        let (grid_x, grid_y) = grid_xy(m, v.out_c, t.bm, t.bn, what)?;
        let p = v.params(shape, [src, wgt, out], epi, act);
        Launch::new(file, name, (grid_x, grid_y, 1), t.threads).run(&self.kernels, &self.stream, &p, what)
    }

    /// A grouped conv's forward or backward-data pass on conv.cu's grouped implicit GEMM: one
    /// GEMM per group (`blockIdx.z`), each a dense conv of the group's channels. Exact f32.
    #[allow(clippy::too_many_arguments)]
    fn launch_igemm_grouped(
        &self,
        mode: Mode,
        shape: &ConvShape,
        src: u64,
        wgt: u64,
        out: u64,
        epi: [u64; 3],
        act: Activation,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let s = shape;
        let g = s.groups;
        let (cg, kg, rs) = (s.c_in / g, s.c_out / g, s.kh * s.kw);
        let v = GemmView::of(s, mode);
        // The tensors' channels per image (one group's view sees its share).
        let (src_ctotal, out_ctotal) = match mode {
            Mode::Forward => (s.c_in, s.c_out),
            Mode::BackwardData => (s.c_out, s.c_in),
        };
        let m = s.n * v.out_h * v.out_w;
        let t = pick_tile_grouped(m, v.out_c, g, self.sms());
        let name = if mode == Mode::Forward { t.fwd } else { t.bwd };
        let (grid_x, grid_y) = grid_xy(m, v.out_c, t.bm, t.bn, what)?;
        let grid_z = u32::try_from(g).map_err(|_| Error::Invalid(format!("{}: too many groups", what())))?;
        let c = v.params(s, [src, wgt, out], epi, act);
        let p = ConvGroupParams {
            c,
            src_ctotal: src_ctotal as i32,
            out_ctotal: out_ctotal as i32,
            w_group: (kg * cg * rs) as i32,
            _pad: 0,
        };
        Launch::new("conv.cu", name, (grid_x, grid_y, grid_z), t.threads).run(&self.kernels, &self.stream, &p, what)
    }

    /// The geometry fields of a direct (conv_dw.cu) launch.
    fn dw_params(s: &ConvShape) -> DwParams {
        DwParams {
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
            cg: (s.c_in / s.groups) as i32,
            kg: (s.c_out / s.groups) as i32,
            ..DwParams::default()
        }
    }

    /// A depthwise or narrow-group conv's forward (with the epilogue) or backward-data pass on
    /// conv_dw.cu: one thread per output element.
    #[allow(clippy::too_many_arguments)]
    fn launch_direct(
        &self,
        mode: Mode,
        shape: &ConvShape,
        src: u64,
        wgt: u64,
        out: u64,
        epi: [u64; 3],
        act: Activation,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let s = shape;
        let mut p = DwParams { wgt, out, scale: epi[0], shift: epi[1], residual: epi[2], ..Self::dw_params(s) };
        let total = match mode {
            Mode::Forward => {
                p.x = src;
                p.act = act_code(act);
                s.n * s.c_out * s.out_h * s.out_w
            }
            Mode::BackwardData => {
                p.dy = src;
                s.n * s.c_in * s.h * s.w
            }
        };
        let name = dw_kernel(s, mode == Mode::Forward);
        Launch::linear("conv_dw.cu", name, total, 256, 256)?.run(&self.kernels, &self.stream, &p, what)
    }

    /// Forward convolution with an explicit precision (the trait op uses the backend's setting).
    pub fn conv2d_forward_with(&self, x: &Tensor, w: &Tensor, spec: ConvSpec, precision: Precision) -> Result<Tensor> {
        let shape = ConvShape::new(x.dims(), w.dims(), spec)?;
        self.conv_forward_alloc(x, w, &shape, EpiloguePtrs::default(), precision)
    }

    fn conv_forward_alloc(
        &self,
        x: &Tensor,
        w: &Tensor,
        shape: &ConvShape,
        epi: EpiloguePtrs,
        precision: Precision,
    ) -> Result<Tensor> {
        let dims = shape.output_dims();
        let mut out = self.alloc::<f32>(dims.iter().product())?;
        let pout = self.ptr_mut(&mut out);
        self.conv_forward_raw(x, w, shape, epi, precision, pout)?;
        self.tensor(&dims, out)
    }

    /// Device addresses of a checked epilogue.
    pub(crate) fn epilogue_ptrs(&self, epi: &ConvEpilogue) -> Result<EpiloguePtrs> {
        Ok(EpiloguePtrs {
            scale: self.ptr(self.dev(epi.scale, "conv2d_forward_fused: scale")?),
            shift: self.ptr(self.dev(epi.shift, "conv2d_forward_fused: shift")?),
            residual: self.opt_ptr(epi.residual, "conv2d_forward_fused: residual")?,
            act: epi.act,
        })
    }

    /// Launches a forward conv of checked geometry into the buffer at `pout`.
    pub(crate) fn conv_forward_raw(
        &self,
        x: &Tensor,
        w: &Tensor,
        shape: &ConvShape,
        epi: EpiloguePtrs,
        precision: Precision,
        pout: u64,
    ) -> Result<()> {
        check_sizes(shape, "conv2d_forward")?;
        let px = self.ptr(self.dev(x, "conv2d_forward input")?);
        let pw = self.ptr(self.dev(w, "conv2d_forward weight")?);
        let (xd, wd, stride, pad) = (x.dims().to_vec(), w.dims().to_vec(), shape.stride, shape.pad);
        let groups = groups_note(shape.groups);
        let what = move || {
            format!(
                "conv2d_forward ({}) x {} * w {} stride {stride} pad {pad}{groups}",
                precision.name(),
                fmt_dims(&xd),
                fmt_dims(&wd)
            )
        };
        let ptrs = [epi.scale, epi.shift, epi.residual];
        match group_route(shape) {
            GroupRoute::Dense => self.launch_igemm(Mode::Forward, precision, shape, px, pw, pout, ptrs, epi.act, &what),
            GroupRoute::GroupedGemm => {
                self.launch_igemm_grouped(Mode::Forward, shape, px, pw, pout, ptrs, epi.act, &what)
            }
            GroupRoute::Direct => self.launch_direct(Mode::Forward, shape, px, pw, pout, ptrs, epi.act, &what),
        }
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
        let shape = ConvShape::backward_data(dy, w, x_dims, spec)?;
        check_sizes(&shape, "conv2d_backward_data")?;
        let pdy = self.ptr(self.dev(dy, "conv2d_backward_data dy")?);
        let pw = self.ptr(self.dev(w, "conv2d_backward_data weight")?);
        let mut dx = self.alloc::<f32>(x_dims.iter().product())?;
        let pdx = self.ptr_mut(&mut dx);
        let (dd, wd, xd) = (dy.dims().to_vec(), w.dims().to_vec(), x_dims.to_vec());
        let groups = groups_note(spec.groups);
        let what = move || {
            format!(
                "conv2d_backward_data ({}) dy {} w {} -> dx {} stride {} pad {}{groups}",
                precision.name(),
                fmt_dims(&dd),
                fmt_dims(&wd),
                fmt_dims(&xd),
                spec.stride,
                spec.pad
            )
        };
        let id = Activation::Identity;
        match group_route(&shape) {
            GroupRoute::Dense => {
                self.launch_igemm(Mode::BackwardData, precision, &shape, pdy, pw, pdx, [0; 3], id, &what)?
            }
            GroupRoute::GroupedGemm => {
                self.launch_igemm_grouped(Mode::BackwardData, &shape, pdy, pw, pdx, [0; 3], id, &what)?
            }
            GroupRoute::Direct => self.launch_direct(Mode::BackwardData, &shape, pdy, pw, pdx, [0; 3], id, &what)?,
        }
        self.tensor(x_dims, dx)
    }

    /// Backward-weight convolution (always exact f32): split-K implicit GEMM plus a fixed-order
    /// reduction of the splits.
    fn conv_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        let shape = ConvShape::backward_weight(dy, x, w_dims, spec)?;
        check_sizes(&shape, "conv2d_backward_weight")?;
        if shape.groups > 1 {
            return self.conv_backward_weight_grouped(dy, x, &shape);
        }
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
}

impl CudaBackend {
    /// Backward-weight of a grouped conv (exact f32): conv.cu's grouped split-K GEMM, or for
    /// depthwise / narrow groups conv_dw.cu's `dw_bwdw`; both write per-split partials that
    /// `conv_splitk_reduce` adds in split order (deterministic).
    fn conv_backward_weight_grouped(&self, dy: &Tensor, x: &Tensor, s: &ConvShape) -> Result<Tensor> {
        let w_dims = s.weight_dims();
        let g = s.groups;
        let (cg, kg) = (s.c_in / g, s.c_out / g);
        let rs = s.kh * s.kw;
        let crs = cg * rs;
        let j = s.n * s.out_h * s.out_w;
        let len = s.c_out * crs;
        let px = self.ptr(self.dev(x, "conv2d_backward_weight x")?);
        let pdy = self.ptr(self.dev(dy, "conv2d_backward_weight dy")?);
        let (xd, dd) = (x.dims().to_vec(), dy.dims().to_vec());
        let (stride, pad) = (s.stride, s.pad);
        let what = move || {
            format!(
                "conv2d_backward_weight dy {} x {} -> dw {} stride {stride} pad {pad} groups {g}",
                fmt_dims(&dd),
                fmt_dims(&xd),
                fmt_dims(&w_dims)
            )
        };
        let route = group_route(s);
        // (splits, pixels or k-tiles per split) and the launch of the partial products.
        let (splits, per) = match route {
            GroupRoute::Direct => {
                let chunks = rs.div_ceil(DW_BWDW_TAPS);
                dw_bwdw_splits(s.c_out * cg * chunks, j, self.sms())
            }
            _ => {
                let bm = bwdw_bm(kg);
                let (sp, per) = bwdw_splits(kg, crs, j, bm, 64, self.sms().div_ceil(g));
                // gridDim.z = groups * splits stays within the device limit.
                let cap = (65_535 / g).max(1);
                if sp > cap {
                    let tiles = j.div_ceil(16).max(1);
                    let per = tiles.div_ceil(cap);
                    (tiles.div_ceil(per), per)
                } else {
                    (sp, per)
                }
            }
        };
        let mut dw = self.alloc::<f32>(len)?;
        let mut parts: Option<CudaSlice<f32>> = if splits > 1 { Some(self.alloc::<f32>(splits * len)?) } else { None };
        let pout = match parts.as_mut() {
            Some(p) => self.ptr_mut(p),
            None => self.ptr_mut(&mut dw),
        };
        match route {
            GroupRoute::Direct => {
                let p = DwParams {
                    x: px,
                    dy: pdy,
                    out: pout,
                    pix_per_split: fits_i32(per, "conv2d_backward_weight pixels")?,
                    ..Self::dw_params(s)
                };
                let grid = (
                    u32::try_from(s.c_out * cg)
                        .map_err(|_| Error::Invalid(format!("{}: too many channels", what())))?,
                    u32::try_from(rs.div_ceil(DW_BWDW_TAPS))
                        .map_err(|_| Error::Invalid(format!("{}: window too large", what())))?,
                    splits as u32,
                );
                Launch::new("conv_dw.cu", "dw_bwdw", grid, 256).run(&self.kernels, &self.stream, &p, &what)?;
            }
            _ => {
                let bm = bwdw_bm(kg);
                let name = match bm {
                    16 => "conv_bwdw_f32g_16x64",
                    32 => "conv_bwdw_f32g_32x64",
                    _ => "conv_bwdw_f32g_64x64",
                };
                let b = ConvBwdWParams {
                    x: px,
                    dy: pdy,
                    out: pout,
                    n: s.n as i32,
                    c: cg as i32,
                    h: s.h as i32,
                    w: s.w as i32,
                    k: kg as i32,
                    p: s.out_h as i32,
                    q: s.out_w as i32,
                    r: s.kh as i32,
                    s: s.kw as i32,
                    stride: s.stride as i32,
                    pad: s.pad as i32,
                    tiles_per_split: fits_i32(per, "conv2d_backward_weight tiles")?,
                };
                let p = ConvBwdWGroupParams {
                    b,
                    c_total: s.c_in as i32,
                    k_total: s.c_out as i32,
                    splits: splits as i32,
                    _pad: 0,
                };
                let grid = (
                    u32::try_from(kg.div_ceil(bm))
                        .map_err(|_| Error::Invalid(format!("{}: too many channels", what())))?,
                    u32::try_from(crs.div_ceil(64))
                        .map_err(|_| Error::Invalid(format!("{}: weight too large", what())))?,
                    u32::try_from(g * splits).map_err(|_| Error::Invalid(format!("{}: too many groups", what())))?,
                );
                Launch::new("conv.cu", name, grid, 256).run(&self.kernels, &self.stream, &p, &what)?;
            }
        }
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
        self.tensor(&w_dims, dw)
    }
}

/// `" groups g"` for a grouped conv's error messages, nothing for a dense one.
fn groups_note(groups: usize) -> String {
    if groups > 1 {
        format!(" groups {groups}")
    } else {
        String::new()
    }
}

/// Taps per `dw_bwdw` block (DW_BWDW_TAPS in conv_dw.cu).
const DW_BWDW_TAPS: usize = 9;

/// Output-channel tile of the backward-weight GEMM for `k` (per-group) output channels.
fn bwdw_bm(k: usize) -> usize {
    if k <= 16 {
        16
    } else if k <= 32 {
        32
    } else {
        64
    }
}

/// Pixel splits of `dw_bwdw`: about 4 waves of `blocks`-block grids, at least 1024 pixels (4 per
/// thread) per split, at most 65535 splits. Returns (splits, pixels per split), no split empty.
fn dw_bwdw_splits(blocks: usize, pixels: usize, sms: usize) -> (usize, usize) {
    let pixels = pixels.max(1);
    let want = (4 * sms).div_ceil(blocks.max(1)).clamp(1, 65_535);
    let splits = want.min(pixels.div_ceil(1024)).max(1);
    let per = pixels.div_ceil(splits);
    (pixels.div_ceil(per), per)
}

impl ConvOps for CudaBackend {
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
        self.conv2d_forward_with(x, w, spec, self.conv_precision())
    }

    fn conv2d_backward_data(&self, dy: &Tensor, w: &Tensor, x_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        self.conv2d_backward_data_with(dy, w, x_dims, spec, self.conv_precision())
    }

    fn conv2d_backward_weight(&self, dy: &Tensor, x: &Tensor, w_dims: &[usize], spec: ConvSpec) -> Result<Tensor> {
        self.conv_backward_weight(dy, x, w_dims, spec)
    }

    /// One kernel: the epilogue runs on each output tile before it is stored.
    fn conv2d_forward_fused(&self, x: &Tensor, w: &Tensor, spec: ConvSpec, epi: &ConvEpilogue) -> Result<Tensor> {
        let shape = ConvShape::fused(x, w, spec, epi)?;
        let ptrs = self.epilogue_ptrs(epi)?;
        self.conv_forward_alloc(x, w, &shape, ptrs, self.conv_precision())
    }

    fn set_conv_precision(&self, precision: Precision) -> Result<()> {
        self.precision.store(precision as u8, Ordering::Relaxed);
        Ok(())
    }

    fn conv_precision(&self) -> Precision {
        Precision::from_u8(self.precision.load(Ordering::Relaxed))
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
    fn every_tile_names_a_declared_kernel() {
        use crate::backend::cuda::compile::KERNEL_ENTRY_POINTS;
        let lists = [F32_WIDE, F32_MID, F32_NARROW, TF32_WIDE, TF32_MID, TF32_NARROW, BF16_WIDE, BF16_MID, BF16_NARROW];
        for (i, list) in lists.iter().enumerate() {
            let file = if i < 3 { "conv.cu" } else { "conv_tc.cu" };
            for t in list.iter() {
                for name in [t.fwd, t.bwd] {
                    assert!(KERNEL_ENTRY_POINTS.contains(&(file, name)), "{name} is not declared in {file}");
                }
            }
        }
        for name in ["conv_bwdw_f32_16x64", "conv_bwdw_f32_32x64", "conv_bwdw_f32_64x64", "conv_splitk_reduce"] {
            assert!(KERNEL_ENTRY_POINTS.contains(&("conv.cu", name)), "{name} is not declared in conv.cu");
        }
        for list in [F32G_WIDE, F32G_MID, F32G_NARROW] {
            for t in list.iter() {
                for name in [t.fwd, t.bwd] {
                    assert!(KERNEL_ENTRY_POINTS.contains(&("conv.cu", name)), "{name} is not declared in conv.cu");
                }
            }
        }
        for name in ["conv_bwdw_f32g_16x64", "conv_bwdw_f32g_32x64", "conv_bwdw_f32g_64x64"] {
            assert!(KERNEL_ENTRY_POINTS.contains(&("conv.cu", name)), "{name} is not declared in conv.cu");
        }
        for name in ["dw_fwd_3x3", "dw_fwd_any", "dw_bwdd_3x3", "dw_bwdd_any", "dw_bwdw"] {
            assert!(KERNEL_ENTRY_POINTS.contains(&("conv_dw.cu", name)), "{name} is not declared in conv_dw.cu");
        }
    }

    #[test]
    fn grouped_convs_pick_their_family() {
        let shape = |c: usize, k: usize, g: usize, hw: usize, stride: usize| {
            let spec = ConvSpec { stride, pad: 1, groups: g };
            ConvShape::new(&[8, c, hw, hw], &[k, c / g, 3, 3], spec).expect("shape")
        };
        assert_eq!(group_route(&shape(16, 16, 1, 8, 1)), GroupRoute::Dense);
        // MobileNetV2 depthwise, ResNeXt-50 32x4d layer 1 (4 channels per group): direct.
        assert_eq!(group_route(&shape(96, 96, 96, 112, 2)), GroupRoute::Direct);
        assert_eq!(group_route(&shape(128, 128, 32, 56, 1)), GroupRoute::Direct);
        // ResNeXt layer 3 (16 per group), 2 groups of 32: grouped GEMM.
        assert_eq!(group_route(&shape(512, 512, 32, 14, 1)), GroupRoute::GroupedGemm);
        assert_eq!(group_route(&shape(64, 64, 2, 8, 1)), GroupRoute::GroupedGemm);
        assert_eq!(pick_tile_grouped(8 * 14 * 14, 16, 32, 132).fwd, "conv_fwd_f32g_128x16");
        assert_eq!(kernels_for_shape(Precision::Bf16, "fwd", &shape(96, 96, 96, 112, 2), 132), "dw_fwd_3x3");
    }

    #[test]
    fn dw_bwdw_splits_cover_every_pixel_once() {
        for &(blocks, pixels) in &[(144, 128 * 56 * 56), (1, 1), (96, 8 * 56 * 56), (4096, 1000), (3, 70_000)] {
            let (splits, per) = dw_bwdw_splits(blocks, pixels, 132);
            assert!(splits >= 1 && per >= 1 && splits <= 65_535);
            assert!((splits - 1) * per < pixels, "split {splits} x {per} for {pixels} pixels");
            assert!(splits * per >= pixels);
        }
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
