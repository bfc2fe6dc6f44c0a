//! Ceilings on every size read from a file or a flag, in one place. Each reader checks the size a
//! file or flag claims against the file's real length and against these ceilings *before* it
//! allocates, so a hostile or corrupt input gives a clear error instead of a panic, an abort or
//! runaway memory. docs/guarantees.md lists them.

use crate::error::{Error, Result};
use std::path::Path;

/// Channels of any one layer (VGG-16's widest is 512).
pub const MAX_WIDTH: usize = 16_384;
/// Input channels of a model or dataset.
pub const MAX_INPUT_CHANNELS: usize = 64;
/// Side of a model's (square) input and of resized folder images.
pub const MAX_IMAGE_SIDE: usize = 1024;
/// Classes of a model or dataset.
pub const MAX_CLASSES: usize = 100_000;
/// Deepest ResNet (`resnet<6n+2>`) accepted; He et al.'s deepest CIFAR net is ResNet-1202.
pub const MAX_RESNET_DEPTH: usize = 2000;
/// Parameters of a whole net (f32: 1 GiB); checked layer by layer before each tensor is allocated.
pub const MAX_PARAMS: usize = 1 << 28;
/// Bytes of a checkpoint file (the largest net of `MAX_PARAMS` plus its buffers fits).
pub const MAX_CHECKPOINT_BYTES: u64 = 5 << 28;
/// Bytes of a safetensors JSON header.
pub const MAX_CHECKPOINT_HEADER_BYTES: u64 = 64 << 20;
/// Raw pixel bytes of one in-memory dataset (train or test split).
pub const MAX_DATASET_BYTES: u64 = 4 << 30;
/// Bytes of any one data file (IDX, CIFAR batch, policy), compressed or not.
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;
/// Bytes one image may allocate while it is decoded (before resizing).
pub const MAX_DECODE_BYTES_PER_IMAGE: u64 = 256 << 20;
/// Bytes all images being decoded at the same time may hold: the decoding threads are capped at
/// `MAX_DECODE_BYTES_IN_FLIGHT / MAX_DECODE_BYTES_PER_IMAGE`, whatever `--threads` says.
pub const MAX_DECODE_BYTES_IN_FLIGHT: u64 = 1 << 30;
/// Bytes of a JSON policy or ratio file.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Images per batch (`--batch-size`, `--ft-batch-size`, bench batches): activations grow with it.
pub const MAX_BATCH: usize = 4096;
/// Timed repetitions of a benchmark (`bench --reps`).
pub const MAX_REPS: usize = 100_000;
/// `--threads`.
pub const MAX_THREADS: usize = 1024;

/// Longest duration a flag may give (seconds): about 31 years.
pub const MAX_SECONDS: f64 = 1e9;

/// A float as a user would have typed it: `1e308` rather than 309 digits.
pub fn show(value: f64) -> String {
    if value != 0.0 && value.is_finite() && !(1e-4..1e16).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

/// The duration a flag gives in seconds, which must be a number from 0 to [`MAX_SECONDS`].
pub fn check_seconds(what: &str, value: f64) -> Result<std::time::Duration> {
    if !(value.is_finite() && (0.0..=MAX_SECONDS).contains(&value)) {
        return Err(Error::Invalid(format!(
            "{what} must be a number of seconds from 0 to {}, got {}",
            show(MAX_SECONDS),
            show(value)
        )));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

/// Errors unless `value` is in `1..=max`; `what` names the flag or field.
pub fn check_count(what: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::Invalid(format!("{what} must be between 1 and {max}, got {value}")));
    }
    Ok(())
}

/// Errors unless `value` is finite (a float flag or field); `what` names it.
pub fn check_finite(what: &str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::Invalid(format!("{what} must be a finite number, got {}", show(value))));
    }
    Ok(())
}

/// Errors unless `value` is finite and strictly positive.
pub fn check_positive(what: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Invalid(format!("{what} must be a positive finite number, got {}", show(value))));
    }
    Ok(())
}

/// Errors unless `value` is finite and not negative.
pub fn check_non_negative(what: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Error::Invalid(format!("{what} must be a non-negative finite number, got {}", show(value))));
    }
    Ok(())
}

/// Reads a regular file of at most `max` bytes (see [`crate::fsio::read_regular`]: devices, FIFOs
/// and directories are refused before anything is read, and the read is bounded).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    crate::fsio::read_regular(path, max)
}
