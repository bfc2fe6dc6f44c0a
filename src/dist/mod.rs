//! Running on several processes (`mpirun -np N lfgcl ...`): the process group and the few
//! collectives the search and data-parallel training need.
//!
//! [`world`] is the group this process belongs to: one process unless the binary was built with
//! the `mpi` feature and started by an MPI launcher. Every collective is deterministic: a sum is
//! taken on rank 0 in rank order and sent back, so its bits depend only on the number of ranks,
//! never on timing. Collectives are called from one thread at a time (they lock the group).
//!
//! - [`Comm`]: rank, size, barrier, broadcast of bytes, gather of variable-length bytes to rank 0,
//!   fixed-order sums of f32/f64 buffers (built from the two).
//! - [`init`]: called once by the binary's `main`; under an MPI launcher without the feature it
//!   refuses to run (N copies of the same job would each write the same files).
//! - `nccl` (feature `nccl`): the data-parallel gradient sum on GPUs, over NCCL (bits differ from
//!   the host path's rank-0 sum; see the module).
//! - [`sync_bn`]: while a data-parallel training step runs, batch norms reduce their per-channel
//!   sums across ranks (see [`crate::nn::layers::BatchNorm`]).

pub mod dp;
#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod shard;

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A group of processes that run one job together.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn barrier(&self) -> Result<()>;
    /// Rank 0's `data` (the argument is ignored elsewhere), on every rank.
    fn broadcast_bytes(&self, data: Vec<u8>) -> Result<Vec<u8>>;
    /// Every rank's `data`, in rank order, on rank 0 (None elsewhere).
    fn gather_bytes(&self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>>;

    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Ends every rank of the job now with `code` (a rank that failed while others may be
    /// waiting on it in a collective).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    /// Sums `buf` over the ranks, in place, on every rank: rank 0 adds the buffers in rank order
    /// and broadcasts the sum, so the result's bits depend only on the number of ranks.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let parts = self.gather_bytes(bytemuck::cast_slice(buf))?;
        let sum = match parts {
            Some(parts) => {
                let mut acc = vec![0f32; buf.len()];
                for (r, p) in parts.iter().enumerate() {
                    let v = f32s(p, buf.len(), r)?;
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x;
                    }
                }
                bytemuck::cast_slice(&acc).to_vec()
            }
            None => Vec::new(),
        };
        let sum = self.broadcast_bytes(sum)?;
        buf.copy_from_slice(&f32s(&sum, buf.len(), 0)?);
        Ok(())
    }

    /// [`Comm::all_reduce_f32`] in f64.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts = self.gather_bytes(&bytes)?;
        let sum = match parts {
            Some(parts) => {
                let mut acc = vec![0f64; buf.len()];
                for (r, p) in parts.iter().enumerate() {
                    if p.len() != bytes.len() {
                        return Err(mismatch(r, p.len(), bytes.len()));
                    }
                    for (a, c) in acc.iter_mut().zip(p.chunks_exact(8)) {
                        *a += f64::from_le_bytes(c.try_into().expect("8 bytes"));
                    }
                }
                acc.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            None => Vec::new(),
        };
        let sum = self.broadcast_bytes(sum)?;
        if sum.len() != bytes.len() {
            return Err(mismatch(0, sum.len(), bytes.len()));
        }
        for (b, c) in buf.iter_mut().zip(sum.chunks_exact(8)) {
            *b = f64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

fn mismatch(rank: usize, got: usize, want: usize) -> Error {
    Error::Invalid(format!("rank {rank} sent {got} bytes to a reduction of {want}: the ranks run different jobs"))
}

fn f32s(bytes: &[u8], n: usize, rank: usize) -> Result<Vec<f32>> {
    if bytes.len() != 4 * n {
        return Err(mismatch(rank, bytes.len(), 4 * n));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

/// The group of one process.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        Ok(data)
    }
    fn gather_bytes(&self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(Some(vec![data.to_vec()]))
    }
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// The process group: the one [`init`] set up, else this process alone.
pub fn world() -> &'static dyn Comm {
    static SINGLE: Single = Single;
    match WORLD.get() {
        Some(w) => w.as_ref(),
        None => &SINGLE,
    }
}

/// The number of processes an MPI launcher started, from its environment (Open MPI, MPICH /
/// Hydra / Intel MPI, MVAPICH, Slurm's PMI), if any.
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()))
}

/// This process's index among the ranks on its node (one GPU per local rank), from the launcher.
pub fn local_rank() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The CUDA device this process uses: its local rank under mpirun (one GPU per rank on a node),
/// else 0.
pub fn gpu_ordinal() -> usize {
    if world().size() > 1 {
        local_rank()
    } else {
        0
    }
}

/// Keeps MPI initialised while it lives; dropping it finalises MPI.
pub struct Guard {
    #[cfg(feature = "mpi")]
    _mpi: Option<mpi_comm::Finalizer>,
}

impl Guard {
    /// Finalises MPI (when it was initialised): call before the process exits.
    pub fn finalize(self) {
        #[cfg(feature = "mpi")]
        drop(self._mpi);
    }
}

/// Joins the process group the launcher started, once, before any command runs. Without the
/// `mpi` feature, a launch of more than one process is refused: each would run the whole job.
pub fn init() -> Result<Guard> {
    let launched = launcher_size().filter(|&n| n > 1);
    #[cfg(feature = "mpi")]
    {
        if launched.is_none() {
            return Ok(Guard { _mpi: None });
        }
        let (comm, fin) = mpi_comm::MpiComm::init()?;
        if WORLD.set(Box::new(comm)).is_err() {
            return Err(Error::Invalid("the MPI process group was initialised twice".into()));
        }
        Ok(Guard { _mpi: Some(fin) })
    }
    #[cfg(not(feature = "mpi"))]
    match launched {
        Some(n) => Err(Error::Invalid(format!(
            "started by an MPI launcher as one of {n} processes, but this lfgcl was built without MPI: \
             each process would run the whole job and write the same files. Rebuild with \
             `cargo build --release --features mpi` (needs Open MPI and libclang), or run one process"
        ))),
        None => Ok(Guard {}),
    }
}

static SYNC_BN: AtomicBool = AtomicBool::new(false);

/// Whether batch norms in training mode reduce their statistics across ranks right now.
pub fn sync_bn_active() -> bool {
    SYNC_BN.load(Ordering::Relaxed) && world().size() > 1
}

/// Turns synchronised batch norm on until the returned guard drops (data-parallel training).
pub fn sync_bn() -> SyncBnGuard {
    SYNC_BN.store(true, Ordering::Relaxed);
    SyncBnGuard(())
}

pub struct SyncBnGuard(());

impl Drop for SyncBnGuard {
    fn drop(&mut self) {
        SYNC_BN.store(false, Ordering::Relaxed);
    }
}

/// Rank 0's value of `v`, serialised as JSON, on every rank.
pub fn broadcast_json<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(v: Option<&T>) -> Result<T> {
    let w = world();
    if let (1, Some(v)) = (w.size(), v) {
        return Ok(v.clone());
    }
    let bytes = match (w.is_root(), v) {
        (true, Some(v)) => serde_json::to_vec(v).map_err(|e| Error::Invalid(format!("broadcast: {e}")))?,
        (true, None) => return Err(Error::Invalid("broadcast: rank 0 has nothing to send".into())),
        (false, _) => Vec::new(),
    };
    let got = w.broadcast_bytes(bytes)?;
    serde_json::from_slice(&got).map_err(|e| Error::Invalid(format!("broadcast from rank 0 unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_collectives_are_identities() {
        let w = Single;
        let mut v = [1.5f32, -2.0];
        w.all_reduce_f32(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        let mut d = [0.25f64];
        w.all_reduce_f64(&mut d).unwrap();
        assert_eq!(d, [0.25]);
        assert_eq!(w.broadcast_bytes(vec![7, 8]).unwrap(), vec![7, 8]);
        assert_eq!(w.gather_bytes(&[3]).unwrap(), Some(vec![vec![3]]));
        assert!(w.is_root());
    }

    /// A fake group of two, as rank 0, whose other rank holds `other`: the sum is taken in rank
    /// order.
    struct TwoAsRoot {
        other: Vec<u8>,
    }
    impl Comm for TwoAsRoot {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn broadcast_bytes(&self, data: Vec<u8>) -> Result<Vec<u8>> {
            Ok(data)
        }
        fn gather_bytes(&self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
            Ok(Some(vec![data.to_vec(), self.other.clone()]))
        }
    }

    #[test]
    fn sums_in_rank_order_and_refuses_mismatched_buffers() {
        let w = TwoAsRoot { other: bytemuck::cast_slice(&[1e8f32, 2.0]).to_vec() };
        let mut v = [1.0f32, 3.0];
        w.all_reduce_f32(&mut v).unwrap();
        assert_eq!(v, [0.0 + 1.0 + 1e8, 5.0]);
        let w = TwoAsRoot { other: vec![0; 4] };
        let e = w.all_reduce_f32(&mut [1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("rank 1 sent 4 bytes"), "{e}");
    }
}
