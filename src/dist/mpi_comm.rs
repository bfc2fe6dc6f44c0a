//! [`Comm`] over MPI (the `mpi` crate on the system's Open MPI or MPICH).
//!
//! Broadcasts go through `MPI_Bcast` (length, then bytes); a gather is a send from each rank to
//! rank 0, which receives in rank order. MPI is initialised with `MPI_THREAD_SERIALIZED`: the
//! command runs on a thread of the rayon pool, not the process's first thread, and a mutex
//! serialises the calls.

use super::Comm;
use crate::error::{Error, Result};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;

pub struct MpiComm {
    world: Mutex<Handle>,
    rank: usize,
    size: usize,
}

/// The communicator handle, used under the mutex only.
struct Handle(SimpleCommunicator);
// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED and every call through this handle is
// made with the mutex held, so no two threads call MPI at once.
unsafe impl Send for Handle {}

/// Finalises MPI when dropped.
pub struct Finalizer(#[allow(dead_code)] mpi::environment::Universe);

impl MpiComm {
    pub fn init() -> Result<(MpiComm, Finalizer)> {
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::Invalid("MPI was initialised already".into()))?;
        if level < mpi::Threading::Serialized {
            return Err(Error::Invalid(format!(
                "this MPI library offers thread level {level:?}; lfgcl needs Serialized"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok((MpiComm { world: Mutex::new(Handle(world)), rank, size }, Finalizer(universe)))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Handle>> {
        self.world.lock().map_err(|_| Error::Invalid("a thread panicked inside an MPI call".into()))
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn abort(&self, code: i32) -> ! {
        match self.world.lock() {
            Ok(w) => w.0.abort(code),
            Err(_) => std::process::exit(code),
        }
    }
    fn barrier(&self) -> Result<()> {
        self.lock()?.0.barrier();
        Ok(())
    }
    fn broadcast_bytes(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let w = self.lock()?;
        let root = w.0.process_at_rank(0);
        let mut len = data.len() as u64;
        root.broadcast_into(&mut len);
        let mut buf = if self.rank == 0 { data } else { vec![0u8; len as usize] };
        if len > 0 {
            root.broadcast_into(&mut buf[..]);
        }
        Ok(buf)
    }
    fn gather_bytes(&self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let w = self.lock()?;
        if self.rank != 0 {
            w.0.process_at_rank(0).send(data);
            return Ok(None);
        }
        let mut parts = vec![data.to_vec()];
        for r in 1..self.size {
            let (v, _) = w.0.process_at_rank(r as i32).receive_vec::<u8>();
            parts.push(v);
        }
        Ok(Some(parts))
    }
}
