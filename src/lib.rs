//! lfgcl: label-free, globally searched network pruning (LFGCL) on a from-scratch CNN engine.
//!
//! Layout, one home per concept:
//! - [`tensor`], [`backend`]: f32 tensors and the CPU / CUDA op sets behind one trait;
//! - [`nn`]: layers with explicit forward and backward, and the network graph that runs them;
//! - [`models`]: CIFAR ResNets, VGG-16 and a small CNN built from a width vector, with exact costs;
//! - [`data`]: IDX, CIFAR binary, image folders and a synthetic set; augmentation and batching;
//! - [`train`]: optimiser, schedules, training and evaluation loops, checkpoints;
//! - [`prune`]: channel groups, ranking, budgets, masked gather into a compact net;
//! - [`search`]: the LFGCL search (the agent's observation of the architecture, DDPG, label-free reward);
//! - [`interop`]: PyTorch state dicts in, ONNX out, deployment timings against onnxruntime;
//! - [`report`]: JSON logs and SVG plots; [`cli`]: the `lfgcl` command line;
//! - [`dist`]: several processes under `mpirun` (sharded search, data-parallel training).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod fsio;
pub mod interop;
pub mod interrupt;
pub mod limits;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod prune;
pub mod report;
pub mod search;
pub mod tensor;
pub mod train;

pub use backend::{Backend, Device, DeviceChoice};
pub use error::{Error, Result};
pub use tensor::Tensor;
