//! Ceilings on every size read from a file or a flag, in one place. Each reader checks the size a
//! file or flag claims against the file's real length and against these ceilings *before* it
//! allocates, so a hostile or corrupt input gives a clear error instead of a panic, an abort or
//! runaway memory. The README ("Guarantees") lists them.

use crate::error::{Error, Result};
use std::io::Read;
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
        return Err(Error::Invalid(format!("{what} must be a finite number, got {value}")));
    }
    Ok(())
}

/// Errors unless `value` is finite and strictly positive.
pub fn check_positive(what: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Invalid(format!("{what} must be a positive finite number, got {value}")));
    }
    Ok(())
}

/// Errors unless `value` is finite and not negative.
pub fn check_non_negative(what: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Error::Invalid(format!("{what} must be a non-negative finite number, got {value}")));
    }
    Ok(())
}

/// Reads a regular file of at most `max` bytes. Devices, FIFOs and directories are refused before
/// anything is read (`/dev/zero` never ends), and the read is bounded even if the file grows.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::format(
            path,
            format!("{} bytes is larger than the {} bytes this reader accepts", meta.len(), max),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::format(path, format!("grew past the {max} bytes this reader accepts while it was read")));
    }
    Ok(bytes)
}
