//! The CUDA backend: the same op set as the CPU reference, on hand-written kernels.
//!
//! - Kernels live in `kernels/*.cu` (one concern per file), are embedded by `build.rs` and
//!   compiled at run time by NVRTC for the device's own architecture ([`compile`]); compiled
//!   modules are cached in memory and on disk.
//! - Every kernel takes one `#[repr(C)]` parameter struct by value, mirrored in the `.cu` file;
//!   each submodule here owns the launch helpers of one kernel file.
//! - All work of a backend is queued on its own stream, in order. cudarc's per-buffer event
//!   tracking is switched off (it exists for multi-stream use and would also get in the way of
//!   graph capture): a tensor made by this backend is only ever used on this stream, which every
//!   op checks. Host reads (`Tensor::to_vec`, losses, feature MSE) synchronise that stream.
//! - Nothing here panics on a machine without CUDA: [`CudaBackend::new`] returns a clear error
//!   when the driver, a device or NVRTC is missing, so `backend::select(Auto)` falls back to the
//!   CPU.
//!
//! - Each op family's trait of [`crate::backend`] is implemented in the family's file (`conv.rs`,
//!   `norm.rs`, `elementwise.rs`, `pool.rs`, `shortcut.rs`, `linear.rs`, `loss.rs`, `sgd.rs`,
//!   `compact.rs`) under the trait's own method names; shapes are checked once, by the geometry
//!   types of [`crate::backend::shape`], exactly as on the CPU. `gather.rs` and `reduce.rs` hold
//!   the batched-gather and squared-difference launch helpers the compact ops use.
//! - Kernel entry points are read from `kernels/*.cu` by `build.rs` ([`compile::KERNEL_ENTRY_POINTS`]).
//! - Through the traits: conv precision ([`Precision`]: exact f32, TF32 or BF16 tensor cores),
//!   the inference conv with folded batch norm, residual add and ReLU in its epilogue
//!   (`conv2d_forward_fused`), the batched gather of K candidates (`gather_candidates`) and the
//!   feature MSE of K candidates in one launch (`feature_mse`).
//! - `experimental` (cargo feature `cuda-experimental`, off by default): CUDA graph
//!   capture/replay, the `*_into` variants it needs and packed whole-layer gathers; tested, not
//!   used by the product. With the feature off, host transfers skip the capture check.

/// Compile-time layout check of a kernel parameter struct against its `.cu` definition: the size
/// and every field's offset, the same numbers the `.cu` side asserts with `static_assert(sizeof)`
/// and `LF_OFFSET` (so swapping two fields of the same size fails to build on both sides).
macro_rules! assert_layout {
    ($t:ty, size $size:expr, $($field:ident @ $off:expr),+ $(,)?) => {
        const _: () = {
            assert!(std::mem::size_of::<$t>() == $size);
            $(assert!(std::mem::offset_of!($t, $field) == $off);)+
        };
    };
}

mod compact;
pub mod compile;
pub(crate) mod conv;
pub(crate) mod elementwise;
#[cfg(feature = "cuda-experimental")]
pub mod experimental;
mod gather;
mod kernels;
mod linear;
mod loss;
mod norm;
mod pool;
mod reduce;
mod sgd;
mod shortcut;

pub use crate::backend::Precision;
pub use gather::{GatherPlan, GatherView};
pub use linear::GemmLayout;

use crate::backend::{DeviceKind, Memory};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Storage, Tensor};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use kernels::Kernels;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
#[cfg(feature = "cuda-experimental")]
use std::sync::Mutex;

/// What was found about the device when the backend opened it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
    pub multiprocessors: u32,
    pub l2_bytes: usize,
    pub memory_bytes: usize,
    /// Driver API version, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    pub nvrtc_version: (i32, i32),
    /// Architecture the kernels are compiled for and whether as CUBIN (else PTX, JIT by the driver).
    pub kernel_arch: (u32, u32),
    pub kernel_cubin: bool,
}

/// One CUDA device, one context, one stream.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    info: DeviceInfo,
    precision: AtomicU8,
    /// Held while a graph is being captured on `stream`.
    #[cfg(feature = "cuda-experimental")]
    capture_lock: Mutex<()>,
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

impl CudaBackend {
    /// Opens device `ordinal`. Errors (never panics) when the CUDA driver, the device or NVRTC
    /// is missing, when the device is older than compute capability 8.0 (the tensor-core
    /// kernels need sm_80), or when the kernels cannot be compiled and loaded.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        // A missing symbol in a dynamically loaded library panics inside cudarc; turn that into
        // an error as well, so a broken install can never take the process down.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open(ordinal))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::Cuda(format!("CUDA initialisation failed: {msg}")))
            }
        }
    }

    fn open(ordinal: usize) -> Result<CudaBackend> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda("no CUDA driver (libcuda.so not found)".into()));
        }
        compile::nvrtc_available()?;
        let count =
            CudaContext::device_count().map_err(driver_err("no usable CUDA device (cuInit/cuDeviceGetCount)"))?;
        if count <= 0 {
            return Err(Error::Cuda("no CUDA device found".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!("CUDA device {ordinal} requested but only {count} found")));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the CUDA context"))?;
        let (maj, min) = ctx.compute_capability().map_err(driver_err("reading the compute capability"))?;
        let cc = (maj.max(0) as u32, min.max(0) as u32);
        let name = ctx.name().map_err(driver_err("reading the device name"))?;
        if cc < (8, 0) {
            return Err(Error::Cuda(format!(
                "{name} has compute capability {maj}.{min}; lfgcl's kernels need 8.0 or newer"
            )));
        }
        // SAFETY: every buffer this backend allocates is used on `stream` only (checked by
        // `dev`/`dev_mut`), so stream order alone keeps reads, writes and frees ordered; no
        // buffer has been allocated in this context object yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("creating a CUDA stream"))?;
        let attr = |a| ctx.attribute(a).map_err(driver_err("reading a device attribute"));
        use cudarc::driver::sys::CUdevice_attribute as A;
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let l2 = attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
        let mem = ctx.total_mem().map_err(driver_err("reading the memory size"))?;
        let mut driver_version = 0;
        // SAFETY: valid out-pointer; the driver is loaded and initialised.
        let _ = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let kernels = Kernels::new(ctx.clone(), cc)?;
        let (kernel_arch, kind) = kernels.target();
        let info = DeviceInfo {
            ordinal,
            name,
            compute_capability: cc,
            multiprocessors: sms,
            l2_bytes: l2,
            memory_bytes: mem,
            driver_version,
            nvrtc_version: compile::nvrtc_version()?,
            kernel_arch,
            kernel_cubin: kind == compile::ImageKind::Cubin,
        };
        let backend = CudaBackend {
            ctx,
            stream,
            kernels,
            info,
            precision: AtomicU8::new(Precision::F32 as u8),
            #[cfg(feature = "cuda-experimental")]
            capture_lock: Mutex::new(()),
        };
        // Prove the whole path (NVRTC -> CUBIN -> module load) works before anyone relies on it.
        backend.kernels.load_file("elementwise.cu")?;
        Ok(backend)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of this backend's work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compiles (or loads from the caches) and loads every kernel file now, instead of on first
    /// use: call before timing anything, or at start-up to surface compile errors early.
    pub fn load_all_kernels(&self) -> Result<()> {
        self.kernels.load_all()
    }

    // ---- buffers ------------------------------------------------------------------------------

    /// The device buffer of `t`, checked to belong to this backend's stream.
    pub(crate) fn dev<'a>(&self, t: &'a Tensor, what: &str) -> Result<&'a CudaSlice<f32>> {
        match t.storage() {
            Storage::Cuda(s) => {
                if **s.stream() != *self.stream {
                    return Err(Error::Device(format!(
                        "{what}: tensor {} belongs to another CUDA backend or stream; move it with to_device",
                        fmt_dims(t.dims())
                    )));
                }
                Ok(s)
            }
            Storage::Cpu(_) => Err(Error::Device(format!(
                "{what}: tensor {} is in host memory; the CUDA backend needs it on the GPU (to_device)",
                fmt_dims(t.dims())
            ))),
        }
    }

    pub(crate) fn dev_mut<'a>(&self, t: &'a mut Tensor, what: &str) -> Result<&'a mut CudaSlice<f32>> {
        self.dev(t, what)?;
        t.cuda_slice_mut()
    }

    /// Raw device address of a buffer, for a kernel parameter struct.
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _record) = s.device_ptr(&self.stream);
        p
    }

    pub(crate) fn ptr_mut<T>(&self, s: &mut CudaSlice<T>) -> u64 {
        let (p, _record) = s.device_ptr_mut(&self.stream);
        p
    }

    /// Address of an optional tensor (0 = null).
    pub(crate) fn opt_ptr(&self, t: Option<&Tensor>, what: &str) -> Result<u64> {
        match t {
            Some(t) => Ok(self.ptr(self.dev(t, what)?)),
            None => Ok(0),
        }
    }

    /// Uninitialised device buffer of `n` elements; every caller's kernel writes all of it.
    pub(crate) fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        let r = if n == 0 {
            self.stream.null()
        } else {
            // SAFETY: the contents are undefined until written; every caller launches a kernel
            // that writes all `n` elements before anything reads them.
            unsafe { self.stream.alloc::<T>(n) }
        };
        r.map_err(|e| Error::Cuda(format!("allocating {n} elements on the GPU: {e:?}")))
    }

    pub(crate) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        if n == 0 {
            return self.alloc(0);
        }
        self.stream
            .alloc_zeros::<T>(n)
            .map_err(|e| Error::Cuda(format!("allocating {n} zeroed elements on the GPU: {e:?}")))
    }

    /// Copies a small host array (indices, labels, maps) to the device. Refused during graph
    /// capture: a captured copy would read the host array again at every replay.
    pub(crate) fn upload<T: DeviceRepr>(&self, v: &[T], what: &str) -> Result<CudaSlice<T>> {
        #[cfg(feature = "cuda-experimental")]
        self.ensure_not_capturing(what)?;
        if v.is_empty() {
            return self.alloc(0);
        }
        self.stream
            .clone_htod(v)
            .map_err(|e| Error::Cuda(format!("{what}: copying {} elements to the GPU: {e:?}", v.len())))
    }

    /// Copies a device buffer back (synchronises the stream).
    pub(crate) fn download<T: DeviceRepr>(&self, s: &CudaSlice<T>, what: &str) -> Result<Vec<T>> {
        #[cfg(feature = "cuda-experimental")]
        self.ensure_not_capturing(what)?;
        self.stream
            .clone_dtoh(s)
            .map_err(|e| Error::Cuda(format!("{what}: copying {} elements from the GPU: {e:?}", s.len())))
    }

    /// Only graph capture (feature `cuda-experimental`) can put the stream in capture mode.
    #[cfg(feature = "cuda-experimental")]
    pub(crate) fn ensure_not_capturing(&self, what: &str) -> Result<()> {
        use cudarc::driver::sys::CUstreamCaptureStatus as S;
        match self.stream.capture_status() {
            Ok(S::CU_STREAM_CAPTURE_STATUS_NONE) => Ok(()),
            Ok(_) => Err(Error::Cuda(format!(
                "{what}: host transfers cannot be captured into a CUDA graph; prepare index lists \
                 (GatherPlan, ...) and read results after replay"
            ))),
            Err(e) => Err(Error::Cuda(format!("{what}: querying the capture status: {e:?}"))),
        }
    }

    pub(crate) fn tensor(&self, dims: &[usize], s: CudaSlice<f32>) -> Result<Tensor> {
        Tensor::from_cuda(dims, s)
    }

    /// Number of SMs (used by the tile and split heuristics).
    pub(crate) fn sms(&self) -> usize {
        self.info.multiprocessors as usize
    }
}

/// Errors unless `n` fits the 32-bit index arithmetic of the kernels.
pub(crate) fn fits_i32(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| Error::Invalid(format!("{what}: {n} is too large for the GPU kernels (max {})", i32::MAX)))
}

impl Memory for CudaBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }

    fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs, NVRTC {}.{})",
            i.ordinal,
            i.name,
            i.compute_capability.0,
            i.compute_capability.1,
            i.multiprocessors,
            i.nvrtc_version.0,
            i.nvrtc_version.1
        )
    }

    fn free_memory(&self) -> Result<Option<usize>> {
        let (free, _total) = self.ctx.mem_get_info().map_err(driver_err("reading free device memory"))?;
        Ok(Some(free))
    }

    fn zeros(&self, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        self.tensor(dims, self.alloc_zeros(n)?)
    }

    fn from_host(&self, dims: &[usize], data: &[f32]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!(
                "from_host: {} elements cannot have shape {}",
                data.len(),
                fmt_dims(dims)
            )));
        }
        self.tensor(dims, self.upload(data, "from_host")?)
    }

    fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        if self.dev(t, "to_device").is_ok() {
            return self.copy(t);
        }
        let v = t.to_vec()?;
        self.from_host(t.dims(), &v)
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        let s = self.dev(t, "copy")?;
        let mut out = self.alloc::<f32>(s.len())?;
        if !s.is_empty() {
            self.stream
                .memcpy_dtod(s, &mut out)
                .map_err(|e| Error::Cuda(format!("copy {}: {e:?}", fmt_dims(t.dims()))))?;
        }
        self.tensor(t.dims(), out)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| Error::Cuda(format!("synchronize: {e:?}")))
    }

    /// Device time of the work `f` queues, measured with CUDA events (timing enabled) recorded
    /// on this backend's stream around it; waits for that work to finish.
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        use cudarc::driver::sys::CUevent_flags;
        let ev = |what: &str| {
            let what = what.to_string();
            move |e: cudarc::driver::DriverError| Error::Cuda(format!("time_ms: {what}: {e:?}"))
        };
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(ev("creating an event"))?;
        let end = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(ev("creating an event"))?;
        start.record(&self.stream).map_err(ev("recording the start"))?;
        f()?;
        end.record(&self.stream).map_err(ev("recording the end"))?;
        let ms = start.elapsed_ms(&end).map_err(ev("reading the elapsed time"))?;
        Ok(ms as f64)
    }
}
