//! Data-parallel gradient sums on GPUs over NCCL (feature `nccl`): when every rank's gradients
//! live on a CUDA device and libnccl loads on every rank, [`super::dp::reduce_step`] sums them
//! with `ncclAllReduce` on the device buffers instead of copying them through host memory.
//!
//! Bootstrap: rank 0 makes the NCCL unique id and broadcasts its 128 bytes over MPI; each rank
//! joins with its backend's stream (the device of its local rank, see [`super::gpu_ordinal`]).
//! Which path a job takes is agreed once, collectively, at the first step.
//!
//! Bits: NCCL's ring sum is deterministic for a fixed N and topology (same GPUs, same links,
//! same NCCL version and settings) but adds in another order than the rank-0 sum of the host path,
//! so the two paths differ in the last bits, and a job moved to other GPUs may too.
//!
//! Batch-norm statistics still go through the host path (per-channel sums in f64 on rank 0).

use super::world;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::Graph;
use crate::tensor::Storage;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::sync::{Mutex, OnceLock};

/// The communicator, used under the mutex only.
struct Held(Comm);
// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap;
// every use is made with the mutex held.
unsafe impl Send for Held {}

static COMM: Mutex<Option<Held>> = Mutex::new(None);
/// Whether this job sums gradients over NCCL (agreed by every rank at the first step).
static USE: OnceLock<bool> = OnceLock::new();

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::Cuda(format!("NCCL {what}: {e:?}"))
}

/// A panic from a missing symbol in a dynamically loaded libnccl, as an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Cuda(format!("NCCL {what} failed (libnccl too old or broken?)"))))
}

fn library_loads() -> bool {
    // SAFETY: only tries to open the library (dlopen), calls nothing in it.
    std::panic::catch_unwind(|| unsafe { cudarc::nccl::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether every rank has CUDA gradients and a libnccl, agreed by all ranks (a collective, made
/// at the first step of the job only).
fn agreed(on_cuda: bool) -> Result<bool> {
    if let Some(&u) = USE.get() {
        return Ok(u);
    }
    let w = world();
    let mut flags = [f32::from(u8::from(on_cuda)), f32::from(u8::from(on_cuda && library_loads()))];
    w.all_reduce_f32(&mut flags)?;
    let n = w.size() as f32;
    let use_nccl = flags[1] == n;
    if flags[0] == n && !use_nccl && w.is_root() {
        eprintln!(
            "warning: built with NCCL, but libnccl does not load on every rank: gradients are summed through \
             host memory (slower; other bits than NCCL's sum)"
        );
    }
    Ok(*USE.get_or_init(|| use_nccl))
}

/// Joins (once) the NCCL group of the job on `stream`: rank 0's unique id, broadcast over MPI.
fn join(held: &mut Option<Held>, stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Result<()> {
    if let Some(h) = held {
        if !std::sync::Arc::ptr_eq(&h.0.stream(), stream) {
            return Err(Error::Cuda("NCCL: gradients on a second CUDA stream (one device per rank)".into()));
        }
        return Ok(());
    }
    let w = world();
    let id = if w.is_root() { Some(no_panic("unique id", || Id::new().map_err(nccl_err("unique id")))?) } else { None };
    let bytes = id.map(|id| id.internal().iter().map(|&c| c as u8).collect()).unwrap_or_default();
    let bytes = w.broadcast_bytes(bytes)?;
    if bytes.len() != 128 {
        return Err(Error::Invalid(format!("NCCL: rank 0 sent a unique id of {} bytes, not 128", bytes.len())));
    }
    let mut internal = [0 as std::ffi::c_char; 128];
    for (d, &s) in internal.iter_mut().zip(&bytes) {
        *d = s as std::ffi::c_char;
    }
    stream.context().bind_to_thread().map_err(|e| Error::Cuda(format!("NCCL: bind the CUDA context: {e:?}")))?;
    let comm = no_panic("init", || {
        Comm::from_rank(stream.clone(), w.rank(), w.size(), Id::uninit(internal)).map_err(nccl_err("init"))
    })?;
    *held = Some(Held(comm));
    Ok(())
}

/// Sums every gradient of `graph` over the ranks on the device and divides by N. `Ok(false)`
/// (nothing done) when the job does not use NCCL: the caller takes the host path.
pub fn reduce_gradients(dev: &Device, graph: &mut Graph) -> Result<bool> {
    let mut first = None;
    graph.visit_params_mut(|_, p| {
        if first.is_none() {
            if let Some(g) = &p.grad {
                first = Some(match g.storage() {
                    Storage::Cuda(s) => Some(s.stream().clone()),
                    Storage::Cpu(_) => None,
                });
            }
        }
        Ok(())
    })?;
    let Some(stream) = first.flatten() else {
        agreed(false)?;
        return Ok(false);
    };
    if !agreed(true)? {
        return Ok(false);
    }
    let mut held = COMM.lock().map_err(|_| Error::Invalid("a thread panicked inside an NCCL call".into()))?;
    join(&mut held, &stream)?;
    let comm = &held.as_ref().expect("joined above").0;
    // One group: the launches of all tensors go out together.
    cudarc::nccl::safe::group_start().map_err(nccl_err("group start"))?;
    let sums = graph.visit_params_mut(|name, p| {
        if let Some(g) = &mut p.grad {
            let s = g.cuda_slice_mut()?;
            comm.all_reduce_in_place(s, &ReduceOp::Sum)
                .map_err(|e| Error::Cuda(format!("NCCL sum of {name}: {e:?}")))?;
        }
        Ok(())
    });
    let end = cudarc::nccl::safe::group_end().map_err(nccl_err("group end"));
    sums?;
    end?;
    let inv = 1.0 / world().size() as f32;
    graph.visit_params_mut(|_, p| match &mut p.grad {
        Some(g) => dev.scale_inplace(g, inv),
        None => Ok(()),
    })?;
    Ok(true)
}
