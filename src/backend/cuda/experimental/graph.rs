//! CUDA graph capture and replay for fixed-shape work: launches queued by a closure on the
//! backend's stream are recorded once and replayed with one driver call, removing the per-kernel
//! launch overhead. Nothing in the product captures graphs yet.
//!
//! Rules for the captured closure:
//! - only kernel launches: no host transfers (uploads of index lists, `to_vec`, losses that
//!   return host values, `synchronize`); the backend refuses those with an error while capturing.
//!   Prepare index lists beforehand ([`crate::backend::cuda::GatherPlan`]) and read results after `replay`;
//! - outputs that must outlive the closure go to buffers allocated before the capture (the
//!   `*_into` methods). Temporaries allocated and dropped inside the closure become allocation
//!   nodes of the graph and are fine; an output allocated inside and kept outside would make
//!   the second replay fail (the driver refuses to relaunch a graph whose allocation is still live);
//! - the graph reads and writes the same device addresses at every replay: keep every buffer it
//!   uses alive and in place, and change inputs by writing into them (e.g. `memcpy_htod`).
//!
//! Only one capture runs per backend at a time, and no other thread should queue work on the
//! backend while it captures (it would be recorded into the graph). The first capture compiles
//! and loads every kernel file (module loading cannot happen during a capture).

use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

/// A captured, instantiated graph bound to the stream it was captured on. Not `Send`: replay it
/// from the thread that owns it.
pub struct CudaGraphHandle {
    graph: CudaGraph,
}

impl CudaGraphHandle {
    /// Queues one execution of the graph on the backend's stream (asynchronous, like any launch).
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| Error::Cuda(format!("graph replay: {e:?}")))
    }

    /// Uploads the graph to the device ahead of the first replay.
    pub fn upload(&self) -> Result<()> {
        self.graph.upload().map_err(|e| Error::Cuda(format!("graph upload: {e:?}")))
    }
}

impl CudaBackend {
    /// Records the launches `f` queues on this backend's stream into a CUDA graph.
    pub fn capture<F: FnOnce() -> Result<()>>(&self, f: F) -> Result<CudaGraphHandle> {
        let _guard = self.capture_lock.lock().map_err(|_| Error::Cuda("graph capture lock poisoned".into()))?;
        // Module loading is not a stream operation and may not be legal while capturing: make
        // sure every kernel is compiled and loaded first (a no-op after the first time).
        self.kernels.load_all()?;
        // Work queued before the capture must not be part of it, nor race with it.
        self.stream.synchronize().map_err(|e| Error::Cuda(format!("graph capture: synchronize: {e:?}")))?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::Cuda(format!("graph capture: begin: {e:?}")))?;
        let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // Always end the capture, so the stream is usable again whatever the closure did.
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        let body = match body {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        body.map_err(|e| match e {
            Error::Cuda(m) => Error::Cuda(format!("graph capture: {m}")),
            other => other,
        })?;
        let graph = ended
            .map_err(|e| Error::Cuda(format!("graph capture: end/instantiate: {e:?}")))?
            .ok_or_else(|| Error::Cuda("graph capture recorded no work".into()))?;
        Ok(CudaGraphHandle { graph })
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cuda::{CudaBackend, Precision};
    use crate::backend::{ConvOps, ConvSpec, ElementwiseOps, Memory};

    /// Captures a fused conv + relu into a graph, replays it and checks it against direct
    /// launches; then changes the input in place and replays again. Skips without a GPU.
    #[test]
    fn capture_and_replay_match_direct_launches() {
        let be = match CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => {
                if std::env::var("LFGCL_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("LFGCL_REQUIRE_GPU=1 but no CUDA device: {e}");
                }
                println!("skipped: no CUDA device ({e})");
                return;
            }
        };
        let run = || -> crate::Result<()> {
            let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
            let xs: Vec<f32> = (0..2 * 3 * 8 * 8).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let ws: Vec<f32> = (0..4 * 3 * 3 * 3).map(|i| ((i * 13 % 29) as f32 - 14.0) / 14.0).collect();
            let mut x = be.from_host(&[2, 3, 8, 8], &xs)?;
            let w = be.from_host(&[4, 3, 3, 3], &ws)?;
            let mut y = be.zeros(&[2, 4, 8, 8])?;
            let mut z = be.zeros(&[2, 4, 8, 8])?;
            let graph = be.capture(|| {
                be.conv2d_fused_into(&x, &w, spec, None, Precision::F32, &mut y)?;
                be.elementwise_into("relu", &y, None, &mut z)
            })?;
            graph.replay()?;
            let direct = be.relu_forward(&be.conv2d_forward(&x, &w, spec)?)?;
            assert_eq!(z.to_vec()?, direct.to_vec()?);
            // New input, same buffers: the replay must see it.
            let xs2: Vec<f32> = xs.iter().map(|v| 0.5 - v).collect();
            be.stream().memcpy_htod(&xs2, x.cuda_slice_mut()?).map_err(|e| crate::Error::Cuda(format!("{e:?}")))?;
            graph.replay()?;
            graph.replay()?;
            let direct2 = be.relu_forward(&be.conv2d_forward(&x, &w, spec)?)?;
            assert_eq!(z.to_vec()?, direct2.to_vec()?);
            // Host transfers are refused inside a capture, and the stream stays usable.
            let refused = be.capture(|| be.from_host(&[1], &[1.0]).map(|_| ()));
            assert!(refused.is_err());
            be.synchronize()?;
            Ok(())
        };
        if let Err(e) = run() {
            panic!("graph test failed: {e}");
        }
    }
}
