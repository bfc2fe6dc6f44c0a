//! Experimental CUDA paths: tested (their tests skip without a GPU) and kept compiling, but not
//! used by the product.
//!
//! - [`graph`]: CUDA graph capture and replay of fixed-shape work;
//! - [`into`]: `*_into` variants writing preallocated outputs, which a captured graph needs;
//! - [`gather`]: batched gathers of whole layers' parameters packed into one buffer.

pub mod gather;
pub mod graph;
pub mod into;

pub use gather::Packed;
pub use graph::CudaGraphHandle;
