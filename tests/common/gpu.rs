//! Shared GPU test helper: one CUDA backend per test binary, or a printed skip.
//!
//! Include it with `#[path = "common/gpu.rs"] mod gpu;` (or `pub mod gpu;` from a
//! `tests/common/mod.rs`). Without a device each test prints
//! `skipped: no CUDA device (<reason>)` and returns; with `LFGCL_REQUIRE_GPU=1` (the GPU suite)
//! it panics with the reason instead, so a machine that should have a GPU but does not fails.
#![allow(dead_code)]

use lfgcl::backend::cuda::CudaBackend;
use std::sync::{Arc, OnceLock};

fn shared() -> &'static Result<Arc<CudaBackend>, String> {
    static BACKEND: OnceLock<Result<Arc<CudaBackend>, String>> = OnceLock::new();
    BACKEND.get_or_init(|| CudaBackend::new(0).map(Arc::new).map_err(|e| e.to_string()))
}

fn gpu_required() -> bool {
    std::env::var("LFGCL_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The process-wide CUDA backend (shared by every test of the binary, so kernels compile once),
/// or `None` after printing why the test is skipped.
pub fn cuda_backend_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    match shared() {
        Ok(b) => Some(b.clone()),
        Err(reason) => {
            if gpu_required() {
                panic!("{test}: LFGCL_REQUIRE_GPU=1 but no CUDA device: {reason}");
            }
            println!("skipped: no CUDA device ({reason}) [{test}]");
            None
        }
    }
}

/// The CUDA device as a `Device`, or `None` after printing why the test is skipped.
pub fn cuda_or_skip(test: &str) -> Option<lfgcl::Device> {
    cuda_backend_or_skip(test).map(|b| b as lfgcl::Device)
}

/// A second, independent backend (own stream) for tests that change backend-wide state or
/// capture graphs, so they cannot disturb the shared one. `None` after printing a skip.
pub fn private_cuda_backend_or_skip(test: &str) -> Option<CudaBackend> {
    // Only try when the shared one could be opened: same device, same reasons to fail.
    cuda_backend_or_skip(test)?;
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => panic!("{test}: a second CUDA backend could not be opened: {e}"),
    }
}
