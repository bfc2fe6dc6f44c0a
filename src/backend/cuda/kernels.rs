//! Loaded kernel modules and the one launch path every kernel goes through.
//!
//! Each kernel file is compiled (or fetched from the compile caches) and loaded into the
//! context on first use, then kept; functions are looked up once and cached by name. A launch
//! passes exactly one argument: the kernel's `#[repr(C)]` parameter struct, by value.

use super::compile::{self, ImageKind};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

struct FileSlot {
    name: &'static str,
    module: OnceLock<Arc<CudaModule>>,
    init: Mutex<()>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

/// The kernel files of one context, loaded lazily.
pub(crate) struct Kernels {
    ctx: Arc<CudaContext>,
    arch: (u32, u32),
    kind: ImageKind,
    files: Vec<FileSlot>,
}

impl Kernels {
    /// `cc` is the device's compute capability; picks CUBIN for it or a PTX fallback.
    pub(crate) fn new(ctx: Arc<CudaContext>, cc: (u32, u32)) -> Result<Kernels> {
        let (arch, kind) = compile::target_for_device(cc)?;
        let files = compile::kernel_files()
            .iter()
            .map(|(name, _)| FileSlot {
                name,
                module: OnceLock::new(),
                init: Mutex::new(()),
                functions: Mutex::new(HashMap::new()),
            })
            .collect();
        Ok(Kernels { ctx, arch, kind, files })
    }

    /// Architecture the images are built for, and whether they are CUBIN or PTX.
    pub(crate) fn target(&self) -> ((u32, u32), ImageKind) {
        (self.arch, self.kind)
    }

    fn slot(&self, file: &str) -> Result<&FileSlot> {
        self.files
            .iter()
            .find(|s| s.name == file)
            .ok_or_else(|| Error::Cuda(format!("no embedded kernel file '{file}'")))
    }

    fn module(&self, slot: &FileSlot) -> Result<Arc<CudaModule>> {
        if let Some(m) = slot.module.get() {
            return Ok(m.clone());
        }
        let _guard = slot.init.lock().map_err(|_| Error::Cuda("kernel loader lock poisoned".into()))?;
        if let Some(m) = slot.module.get() {
            return Ok(m.clone());
        }
        let image = compile::image(slot.name, self.arch, self.kind)?;
        let ptx = match self.kind {
            ImageKind::Cubin => Ptx::from_binary(image.as_ref().clone()),
            ImageKind::Ptx => {
                let text = String::from_utf8_lossy(image.as_ref());
                Ptx::from_src(text.trim_end_matches('\0').to_string())
            }
        };
        let module = self.ctx.load_module(ptx).map_err(|e| {
            Error::Cuda(format!(
                "loading {} (sm_{}{} {:?}) into the context: {e:?}",
                slot.name, self.arch.0, self.arch.1, self.kind
            ))
        })?;
        let _ = slot.module.set(module.clone());
        Ok(module)
    }

    /// Compiles and loads every kernel file now (start-up, before timing, before a graph
    /// capture). Files missing from the caches are compiled on several threads at once.
    pub(crate) fn load_all(&self) -> Result<()> {
        let pending: Vec<&FileSlot> = self.files.iter().filter(|s| s.module.get().is_none()).collect();
        if pending.len() > 1 {
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, pending.len());
            let next = std::sync::atomic::AtomicUsize::new(0);
            let first_error: Mutex<Option<Error>> = Mutex::new(None);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(slot) = pending.get(i) else { break };
                        // Only warms the compile caches; loading into the context stays below.
                        if let Err(e) = compile::image(slot.name, self.arch, self.kind) {
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    });
                }
            });
            if let Some(e) = first_error.into_inner().ok().flatten() {
                return Err(e);
            }
        }
        for slot in &self.files {
            self.module(slot)?;
        }
        // Resolve every entry point too, so nothing touches the driver's module API later
        // (e.g. inside a graph capture).
        for &(file, name) in compile::KERNEL_ENTRY_POINTS {
            self.function(file, name)?;
        }
        Ok(())
    }

    /// Compiles and loads one kernel file now.
    pub(crate) fn load_file(&self, file: &str) -> Result<()> {
        let slot = self.slot(file)?;
        self.module(slot).map(|_| ())
    }

    pub(crate) fn function(&self, file: &'static str, name: &'static str) -> Result<CudaFunction> {
        let slot = self.slot(file)?;
        {
            let map = slot.functions.lock().map_err(|_| Error::Cuda("kernel table lock poisoned".into()))?;
            if let Some(f) = map.get(name) {
                return Ok(f.clone());
            }
        }
        let module = self.module(slot)?;
        let f =
            module.load_function(name).map_err(|e| Error::Cuda(format!("kernel {name} not found in {file}: {e:?}")))?;
        let mut map = slot.functions.lock().map_err(|_| Error::Cuda("kernel table lock poisoned".into()))?;
        map.insert(name, f.clone());
        Ok(f)
    }
}

/// Grid, block and the kernel to run; built by the per-kernel helpers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Launch {
    pub file: &'static str,
    pub name: &'static str,
    pub grid: (u32, u32, u32),
    pub block: u32,
}

impl Launch {
    pub(crate) fn new(file: &'static str, name: &'static str, grid: (u32, u32, u32), block: u32) -> Launch {
        debug_assert!(
            compile::KERNEL_ENTRY_POINTS.contains(&(file, name)),
            "kernel {name} of {file} is missing from KERNEL_ENTRY_POINTS"
        );
        Launch { file, name, grid, block }
    }

    /// A one-dimensional grid covering `work` items with `per_block` items per block.
    pub(crate) fn linear(
        file: &'static str,
        name: &'static str,
        work: usize,
        per_block: usize,
        block: u32,
    ) -> Result<Launch> {
        let blocks = work.div_ceil(per_block.max(1));
        let g = u32::try_from(blocks)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| Error::Invalid(format!("{name}: {work} elements need too many blocks")))?;
        Ok(Launch::new(file, name, (g, 1, 1), block))
    }

    /// Queues the kernel on `stream` with `params` as its single by-value argument. An empty
    /// grid launches nothing. `what` describes the call (op and shapes) for error messages.
    pub(crate) fn run<P: DeviceRepr>(
        &self,
        kernels: &Kernels,
        stream: &Arc<CudaStream>,
        params: &P,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        if self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0 {
            return Ok(());
        }
        if self.grid.1 > 65_535 || self.grid.2 > 65_535 {
            return Err(Error::Invalid(format!(
                "{}: grid {:?} exceeds the device limits ({})",
                self.name,
                self.grid,
                what()
            )));
        }
        let f = kernels.function(self.file, self.name).map_err(|e| prefix(e, what))?;
        let cfg = LaunchConfig { grid_dim: self.grid, block_dim: (self.block, 1, 1), shared_mem_bytes: 0 };
        let mut builder = stream.launch_builder(&f);
        builder.arg(params);
        // SAFETY: `params` is the `#[repr(C)]` mirror of the kernel's only parameter (both sides
        // assert its size); the helpers that build it checked every shape and filled every
        // pointer with a live allocation of this context large enough for the indices the
        // kernel derives from those shapes. All work is ordered on this one stream.
        unsafe { builder.launch(cfg) }.map_err(|e| {
            Error::Cuda(format!("launching {} {:?}x{}: {e:?} ({})", self.name, self.grid, self.block, what()))
        })?;
        Ok(())
    }
}

/// Adds the op description to a CUDA error message.
pub(crate) fn prefix(e: Error, what: &dyn Fn() -> String) -> Error {
    match e {
        Error::Cuda(m) => Error::Cuda(format!("{}: {m}", what())),
        other => other,
    }
}
