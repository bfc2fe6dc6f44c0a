//! Every benchmark of `lfgcl bench`, one module per subject, on the timing helpers of [`timing`]:
//! - [`cpu`]: SGEMM peak, model inference and training-step throughput next to onnxruntime and
//!   PyTorch (`bench cpu`), and one model on any device (`bench train` / `bench infer`);
//! - [`search`]: the search's per-candidate work and whole search loops (`bench search`);
//! - [`kernels`]: the CUDA kernels, event-timed against the device's measured peaks (`bench kernels`);
//! - [`deploy`]: a baseline and its pruned net in lfgcl and onnxruntime (`bench deploy`);
//! - [`data`]: image decoding and the streaming loader against the training step (`bench data`);
//! - [`layers`]: each step of an inference's forward, timed (`bench infer --layers`);
//! - [`machine`]: the CPU every report names next to its figures.
//!
//! The layers below (backend, nn, models, data, interop, ...) never import this module.

pub mod cpu;
pub mod data;
pub mod deploy;
pub mod kernels;
pub mod layers;
pub mod machine;
pub mod search;
pub mod timing;

pub use timing::{time_it, time_on, time_samples, Timing};
