//! f32 tensors in row-major (NCHW for images) layout, stored on the host or on a CUDA device.
//!
//! A tensor is a shape and a buffer; it carries no autograd state. Operations live on the
//! backends (`crate::backend`), which check that their inputs live where they run. A dropped
//! host tensor hands its buffer to [`pool`], where the CPU backend takes its outputs from.

pub mod pool;

use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

/// Where a tensor's elements are.
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(CudaSlice<f32>),
}

pub struct Tensor {
    dims: Vec<usize>,
    storage: Storage,
    /// Identifies the tensor's contents: a fresh value from a process-wide counter at creation
    /// and at every mutable access, never reused. Caches derived from a tensor (the CPU's
    /// Winograd filter transforms) key on it.
    stamp: u64,
}

/// The next content stamp (starts at 1; 2^64 accesses do not happen).
fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Drop for Tensor {
    /// Large host buffers go back to the pool, for the next op's output (CPU backend).
    fn drop(&mut self) {
        if let Storage::Cpu(v) = &mut self.storage {
            pool::give(std::mem::take(v));
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Cuda(_) => "cuda",
        };
        write!(f, "Tensor({:?}, {place})", self.dims)
    }
}

/// Pretty-prints a shape as `[2, 3, 32, 32]`.
pub fn fmt_dims(dims: &[usize]) -> String {
    format!("{dims:?}")
}

impl Tensor {
    /// A host tensor from its elements; errors when the element count does not match the shape.
    pub fn from_vec(dims: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!("{} elements cannot have shape {}", data.len(), fmt_dims(dims))));
        }
        Ok(Tensor { dims: dims.to_vec(), storage: Storage::Cpu(data), stamp: next_stamp() })
    }

    pub fn zeros(dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        Tensor { dims: dims.to_vec(), storage: Storage::Cpu(vec![0.0; n]), stamp: next_stamp() }
    }

    pub fn full(dims: &[usize], value: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor { dims: dims.to_vec(), storage: Storage::Cpu(vec![value; n]), stamp: next_stamp() }
    }

    /// Wraps a device buffer; the caller guarantees `slice.len()` equals the shape's product.
    pub fn from_cuda(dims: &[usize], slice: CudaSlice<f32>) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if n != slice.len() {
            return Err(Error::Shape(format!(
                "device buffer of {} elements cannot have shape {}",
                slice.len(),
                fmt_dims(dims)
            )));
        }
        Ok(Tensor { dims: dims.to_vec(), storage: Storage::Cuda(slice), stamp: next_stamp() })
    }

    /// The content stamp: equal stamps mean equal contents (see the field).
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// Size of dimension `i` (`i < rank()`; panics otherwise).
    pub fn dim(&self, i: usize) -> usize {
        self.dims[i]
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda(_))
    }

    /// The elements of a host tensor. Errors for device tensors: call `to_vec` to copy them back.
    pub fn as_slice(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => Err(Error::Device(format!(
                "tensor {} is on the GPU where host memory was expected",
                fmt_dims(&self.dims)
            ))),
        }
    }
    pub fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        self.stamp = next_stamp();
        let dims = fmt_dims(&self.dims);
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => {
                Err(Error::Device(format!("tensor {dims} is on the GPU where host memory was expected")))
            }
        }
    }
    pub fn cuda_slice_mut(&mut self) -> Result<&mut CudaSlice<f32>> {
        self.stamp = next_stamp();
        let dims = fmt_dims(&self.dims);
        match &mut self.storage {
            Storage::Cuda(s) => Ok(s),
            Storage::Cpu(_) => {
                Err(Error::Device(format!("tensor {dims} is in host memory where a GPU buffer was expected")))
            }
        }
    }

    /// Copies the elements to a host vector, wherever they live.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Cuda(s) => s.stream().clone_dtoh(s).map_err(|e| Error::Cuda(format!("copy to host: {e:?}"))),
        }
    }

    /// A deep copy on the same device.
    pub fn try_clone(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cpu(v) => Storage::Cpu(v.clone()),
            Storage::Cuda(s) => {
                Storage::Cuda(s.try_clone().map_err(|e| Error::Cuda(format!("copy on device: {e:?}")))?)
            }
        };
        // Same contents, same stamp.
        Ok(Tensor { dims: self.dims.clone(), storage, stamp: self.stamp })
    }

    /// Same elements, another shape with the same element count.
    pub fn reshape(mut self, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if n != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {} into {}", fmt_dims(&self.dims), fmt_dims(dims))));
        }
        self.dims = dims.to_vec();
        Ok(self)
    }

    /// Errors unless the tensor has exactly `dims`; `what` names it in the message.
    pub fn expect_dims(&self, dims: &[usize], what: &str) -> Result<()> {
        if self.dims != dims {
            return Err(Error::Shape(format!("{what}: expected {}, got {}", fmt_dims(dims), fmt_dims(&self.dims))));
        }
        Ok(())
    }

    /// Errors unless the tensor has rank `rank`.
    pub fn expect_rank(&self, rank: usize, what: &str) -> Result<()> {
        if self.dims.len() != rank {
            return Err(Error::Shape(format!("{what}: expected a rank-{rank} tensor, got {}", fmt_dims(&self.dims))));
        }
        Ok(())
    }
}
