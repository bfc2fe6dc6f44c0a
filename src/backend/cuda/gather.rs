//! Launch helpers for `kernels/gather.cu`: the batched gather that packs the kept entries of K
//! pruning candidates in one launch (plans of index lists, uploaded once). `index_select` and
//! `gather_candidates` (`compact.rs`) launch through here.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::IndexSelectShape;
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr};

const FILE: &str = "gather.cu";

/// Mirror of `IndexSelectParams` in gather.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct IndexSelectParams {
    x: u64,
    idx: u64,
    out: u64,
    total: i64,
    inner: i64,
    outer: i32,
    dim: i32,
    nidx: i32,
    vec4: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for IndexSelectParams {}
assert_layout!(IndexSelectParams, size 56, x @ 0, idx @ 8, out @ 16, total @ 24, inner @ 32, outer @ 40, dim @ 44, nidx @ 48, vec4 @ 52);

/// Mirror of `GatherBatchParams` in gather.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GatherBatchParams {
    x: u64,
    meta: u64,
    lists: u64,
    out: u64,
    inner: i64,
    outer: i32,
    d0: i32,
    d1: i32,
    k: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for GatherBatchParams {}
assert_layout!(GatherBatchParams, size 56, x @ 0, meta @ 8, lists @ 16, out @ 24, inner @ 32, outer @ 40, d0 @ 44, d1 @ 48, k @ 52);

/// How the source of a batched gather is viewed: `[outer, d0, d1, inner]`, rows picked along
/// `d0` and columns along `d1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherView {
    pub outer: usize,
    pub d0: usize,
    pub d1: usize,
    pub inner: usize,
}

impl GatherView {
    /// Conv weights `[K, C, R, S]`: output channels (rows) and input channels (columns) at once.
    pub fn conv_weight(dims: &[usize]) -> Result<GatherView> {
        match dims {
            [k, c, r, s] => Ok(GatherView { outer: 1, d0: *k, d1: *c, inner: r * s }),
            _ => Err(Error::Shape(format!("gather: conv weight must be [K, C, R, S], got {}", fmt_dims(dims)))),
        }
    }

    /// Per-channel parameters `[C]` (batch norm gamma, beta, running statistics, biases).
    pub fn channels(c: usize) -> GatherView {
        GatherView { outer: 1, d0: c, d1: 1, inner: 1 }
    }

    /// Activations `[N, C, H, W]` (or `[N, C]`): channels along axis 1.
    pub fn activations(dims: &[usize]) -> Result<GatherView> {
        if dims.len() < 2 {
            return Err(Error::Shape(format!("gather: activations must be [N, C, ...], got {}", fmt_dims(dims))));
        }
        Ok(GatherView { outer: dims[0], d0: dims[1], d1: 1, inner: dims[2..].iter().product() })
    }

    fn numel(&self) -> usize {
        self.outer * self.d0 * self.d1 * self.inner
    }
}

/// Index lists of K candidates, uploaded once (one host-to-device copy) and reusable for any
/// source with the same view, e.g. every step of a search, or inside a captured graph.
pub struct GatherPlan {
    view: GatherView,
    /// [K x 5 metadata | all row lists | all column lists], see gather.cu.
    table: CudaSlice<u32>,
    k: usize,
    offsets: Vec<usize>,
    shapes: Vec<[usize; 4]>,
    max_size: usize,
    total: usize,
}

impl GatherPlan {
    pub fn candidates(&self) -> usize {
        self.k
    }
    pub fn view(&self) -> GatherView {
        self.view
    }
    /// Elements of all candidates together.
    pub fn total(&self) -> usize {
        self.total
    }
    /// Offset of candidate `i` in the packed output, in elements.
    pub fn offset(&self, i: usize) -> usize {
        self.offsets[i]
    }
    /// `[outer, rows, cols, inner]` of candidate `i`.
    pub fn shape(&self, i: usize) -> [usize; 4] {
        self.shapes[i]
    }
}

impl CudaBackend {
    /// Launches `index_select` of checked geometry.
    pub(crate) fn index_select_launch(
        &self,
        x: &Tensor,
        s: &IndexSelectShape,
        axis: usize,
        index: &[u32],
    ) -> Result<Tensor> {
        let IndexSelectShape { outer, len: dim, inner, ref out_dims } = *s;
        let total = outer * index.len() * inner;
        fits_i32(total.max(x.numel()), "index_select")?;
        let idx = self.upload(index, "index_select indices")?;
        let mut y = self.alloc::<f32>(total)?;
        let vec4 = inner % 4 == 0;
        let p = IndexSelectParams {
            x: self.ptr(self.dev(x, "index_select")?),
            idx: self.ptr(&idx),
            out: self.ptr_mut(&mut y),
            total: total as i64,
            inner: inner as i64,
            outer: outer as i32,
            dim: dim as i32,
            nidx: index.len() as i32,
            vec4: vec4 as i32,
        };
        let work = if vec4 { total / 4 } else { total };
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "index_select", work, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("index_select {} axis {axis} ({} indices)", fmt_dims(&xd), index.len())
        })?;
        self.tensor(out_dims, y)
    }

    /// Checks and uploads the index lists of K candidates (`rows[i]` along `d0`, `cols[i]` along
    /// `d1`, each kept in the given order) in a single copy.
    pub fn plan_gather(&self, view: GatherView, rows: &[&[u32]], cols: &[&[u32]]) -> Result<GatherPlan> {
        let k = rows.len();
        if cols.len() != k {
            return Err(Error::Invalid(format!("plan_gather: {k} row lists but {} column lists", cols.len())));
        }
        if k == 0 || k > 65_535 {
            return Err(Error::Invalid(format!("plan_gather: need 1 to 65535 candidates, got {k}")));
        }
        fits_i32(view.numel(), "plan_gather source")?;
        let list_len: usize = rows.iter().chain(cols.iter()).map(|l| l.len()).sum();
        let mut table: Vec<u32> = Vec::with_capacity(5 * k + list_len);
        table.resize(5 * k, 0);
        let mut offsets = Vec::with_capacity(k + 1);
        let mut shapes = Vec::with_capacity(k);
        let (mut total, mut max_size) = (0usize, 0usize);
        let list_base = 5 * k;
        let mut pos = 0usize;
        let mut metas = Vec::with_capacity(k);
        for (i, (r, c)) in rows.iter().zip(cols.iter()).enumerate() {
            for (list, bound, what) in [(r, view.d0, "row"), (c, view.d1, "column")] {
                if let Some(&bad) = list.iter().find(|&&v| v as usize >= bound) {
                    return Err(Error::Invalid(format!(
                        "plan_gather: candidate {i} keeps {what} {bad} but the source has {bound}"
                    )));
                }
            }
            let size = view.outer * r.len() * c.len() * view.inner;
            metas.push([pos, r.len(), pos + r.len(), c.len(), total]);
            pos += r.len() + c.len();
            table.extend_from_slice(r);
            table.extend_from_slice(c);
            offsets.push(total);
            shapes.push([view.outer, r.len(), c.len(), view.inner]);
            total += size;
            max_size = max_size.max(size);
        }
        offsets.push(total);
        fits_i32(total, "plan_gather packed output")?;
        fits_i32(list_base + list_len, "plan_gather index lists")?;
        for (i, m) in metas.iter().enumerate() {
            for (j, &v) in m.iter().enumerate() {
                // Row and column list offsets index the whole table, lists start after the metadata.
                let v = if j == 0 || j == 2 { v + list_base } else { v };
                table[5 * i + j] = v as u32;
            }
        }
        let table = self.upload(&table, "plan_gather index lists")?;
        Ok(GatherPlan { view, table, k, offsets, shapes, max_size, total })
    }

    /// Runs a plan on `x` into a new packed buffer.
    pub fn gather_with_plan(&self, plan: &GatherPlan, x: &Tensor) -> Result<Tensor> {
        let mut out = self.alloc::<f32>(plan.total)?;
        let p = self.ptr_mut(&mut out);
        self.gather_raw(plan, x, p)?;
        self.tensor(&[plan.total], out)
    }

    /// Runs a plan on `x` into a preallocated packed buffer of `plan.total()` elements (graph
    /// friendly).
    pub fn gather_into(&self, plan: &GatherPlan, x: &Tensor, out: &mut Tensor) -> Result<()> {
        if out.numel() != plan.total {
            return Err(Error::Shape(format!(
                "gather_into: output has {} elements, the plan packs {}",
                out.numel(),
                plan.total
            )));
        }
        let p = self.ptr_mut(self.dev_mut(out, "gather_into output")?);
        self.gather_raw(plan, x, p)
    }

    fn gather_raw(&self, plan: &GatherPlan, x: &Tensor, out: u64) -> Result<()> {
        if x.numel() != plan.view.numel() {
            return Err(Error::Shape(format!(
                "gather: source {} does not match the plan's view {:?}",
                fmt_dims(x.dims()),
                plan.view
            )));
        }
        let k = plan.k;
        let meta = self.ptr(&plan.table);
        let p = GatherBatchParams {
            x: self.ptr(self.dev(x, "gather source")?),
            meta,
            lists: meta,
            out,
            inner: plan.view.inner as i64,
            outer: plan.view.outer as i32,
            d0: plan.view.d0 as i32,
            d1: plan.view.d1 as i32,
            k: k as i32,
        };
        let gx = u32::try_from(plan.max_size.div_ceil(256))
            .map_err(|_| Error::Invalid("gather: candidate too large".into()))?;
        let xd = x.dims().to_vec();
        Launch::new(FILE, "gather_batched", (gx, k as u32, 1), 256)
            .run(&self.kernels, &self.stream, &p, &|| format!("gather_batched {} for {k} candidates", fmt_dims(&xd)))
    }

    /// Copies elements `start..end` of a packed buffer into a tensor of `dims`.
    pub(crate) fn unpack_range(&self, packed: &Tensor, start: usize, end: usize, dims: &[usize]) -> Result<Tensor> {
        let src = self.dev(packed, "unpack")?;
        let mut out = self.alloc::<f32>(end - start)?;
        if end > start {
            self.stream
                .memcpy_dtod(&src.slice(start..end), &mut out)
                .map_err(|e| Error::Cuda(format!("unpack {start}..{end}: {e:?}")))?;
        }
        self.tensor(dims, out)
    }
}
