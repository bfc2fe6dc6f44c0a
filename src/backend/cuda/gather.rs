//! Launch helpers for `kernels/gather.cu`: `index_select` along any axis, and the batched gather
//! that packs the kept channels of K pruning candidates in one launch.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
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
const _: () = assert!(std::mem::size_of::<IndexSelectParams>() == 56);

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
const _: () = assert!(std::mem::size_of::<GatherBatchParams>() == 56);

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

    /// Linear weights `[out, in]`.
    pub fn linear_weight(dims: &[usize]) -> Result<GatherView> {
        match dims {
            [o, i] => Ok(GatherView { outer: 1, d0: *o, d1: *i, inner: 1 }),
            _ => Err(Error::Shape(format!("gather: linear weight must be [out, in], got {}", fmt_dims(dims)))),
        }
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

/// K compact tensors packed back to back in one device buffer.
pub struct Packed {
    /// All candidates, flat: `[total]`.
    pub data: Tensor,
    /// Start of each candidate in `data`, in elements; `offsets[K]` is the total.
    pub offsets: Vec<usize>,
    /// Shape of each candidate (the view's `[outer, rows, cols, inner]` folded back to the
    /// source's rank by the convenience constructors).
    pub dims: Vec<Vec<usize>>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.dims.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }
}

impl CudaBackend {
    pub(crate) fn index_select_impl(&self, x: &Tensor, axis: usize, index: &[u32]) -> Result<Tensor> {
        if axis >= x.rank() {
            return Err(Error::Shape(format!("index_select: axis {axis} out of range for {}", fmt_dims(x.dims()))));
        }
        let dim = x.dim(axis);
        if let Some((i, &v)) = index.iter().enumerate().find(|(_, &v)| v as usize >= dim) {
            return Err(Error::Invalid(format!(
                "index_select: index {v} at position {i} is out of range for axis {axis} of {}",
                fmt_dims(x.dims())
            )));
        }
        let outer: usize = x.dims()[..axis].iter().product();
        let inner: usize = x.dims()[axis + 1..].iter().product();
        let mut dims = x.dims().to_vec();
        dims[axis] = index.len();
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
        self.tensor(&dims, y)
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

    /// Gathers `x` for K candidates in one launch: candidate `i` keeps `rows[i]` along the view's
    /// `d0` and `cols[i]` along `d1`. `fold` maps a candidate's `[outer, rows, cols, inner]` to
    /// the dims reported in [`Packed::dims`].
    pub fn gather_batched(
        &self,
        x: &Tensor,
        view: GatherView,
        rows: &[&[u32]],
        cols: &[&[u32]],
        fold: impl Fn([usize; 4]) -> Vec<usize>,
    ) -> Result<Packed> {
        let plan = self.plan_gather(view, rows, cols)?;
        let data = self.gather_with_plan(&plan, x)?;
        let dims = plan.shapes.iter().map(|&s| fold(s)).collect();
        Ok(Packed { data, offsets: plan.offsets.clone(), dims })
    }

    /// Conv weights `[K, C, R, S]` of K candidates: `out_idx[i]` output channels and
    /// `in_idx[i]` input channels each; candidate `i` gets `[|out_idx[i]|, |in_idx[i]|, R, S]`.
    pub fn gather_conv_weights(&self, w: &Tensor, out_idx: &[&[u32]], in_idx: &[&[u32]]) -> Result<Packed> {
        let view = GatherView::conv_weight(w.dims())?;
        let (r, s) = (w.dim(2), w.dim(3));
        self.gather_batched(w, view, out_idx, in_idx, |sh| vec![sh[1], sh[2], r, s])
    }

    /// Per-channel vectors `[C]` of K candidates (batch norm parameters, biases).
    pub fn gather_channel_params(&self, v: &Tensor, idx: &[&[u32]]) -> Result<Packed> {
        v.expect_rank(1, "gather_channel_params")?;
        let zero: &[u32] = &[0];
        let cols = vec![zero; idx.len()];
        self.gather_batched(v, GatherView::channels(v.numel()), idx, &cols, |sh| vec![sh[1]])
    }

    /// Activations `[N, C, ...]` of K candidates, channels along axis 1.
    pub fn gather_activations(&self, x: &Tensor, idx: &[&[u32]]) -> Result<Packed> {
        let view = GatherView::activations(x.dims())?;
        let rest = x.dims()[2..].to_vec();
        let zero: &[u32] = &[0];
        let cols = vec![zero; idx.len()];
        self.gather_batched(x, view, idx, &cols, |sh| {
            let mut d = vec![sh[0], sh[1]];
            d.extend_from_slice(&rest);
            d
        })
    }

    /// Copies candidate `i` of a packed buffer into its own tensor.
    pub fn unpack(&self, packed: &Packed, i: usize) -> Result<Tensor> {
        let (start, end) = match (packed.offsets.get(i), packed.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => (a, b),
            _ => return Err(Error::Invalid(format!("unpack: no candidate {i} (have {})", packed.len()))),
        };
        let src = self.dev(&packed.data, "unpack")?;
        let mut out = self.alloc::<f32>(end - start)?;
        if end > start {
            self.stream
                .memcpy_dtod(&src.slice(start..end), &mut out)
                .map_err(|e| Error::Cuda(format!("unpack candidate {i}: {e:?}")))?;
        }
        self.tensor(&packed.dims[i], out)
    }
}
