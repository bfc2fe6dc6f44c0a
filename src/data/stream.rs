//! Image folders streamed from disk: the file list and labels are read up front, and each batch
//! is decoded and transformed on a pool of decoding threads while the previous batch computes.
//!
//! One producer thread assembles the batches of an epoch in order, each one decoded in parallel
//! by `workers` threads, and hands them over through a queue of [`PREFETCH_DEPTH`] batches; it
//! blocks when the queue is full. Queued batches are raw `u8` pixels (3 x S x S bytes per
//! image); the consumer converts one batch at a time to normalised `f32`. So the memory in flight
//! is bounded whatever the folder's size: `PREFETCH_DEPTH + 1` batches of `u8` pixels, one `f32`
//! batch, and one decoded original image per worker (each at most
//! [`super::decode::MAX_DECODED_BYTES`]). At batch 128 and 224x224 that is 3 x 19.3 MB of `u8`
//! plus the 77 MB `f32` batch the step trains on.
//!
//! Every image's random crop and flip is a function of `(seed, epoch, dataset index)` only, so a
//! seeded run gives the same bits whatever the number of threads and however the batches race.

use super::decode;
use super::transforms::{self, AugmentKind};
use super::{seed_hash, Augment, Normalization};
use crate::error::{Error, Result};
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches decoded ahead of the one being consumed.
pub const PREFETCH_DEPTH: usize = 2;
/// Most decoding threads of one loader.
pub const MAX_WORKERS: usize = 16;

/// The files of a streamed split and how each is brought to `size x size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Files {
    pub paths: Vec<PathBuf>,
    pub size: usize,
    pub grayscale: bool,
    /// `Imagenet`: random-resized crops (training) or resize + center crop (evaluation) from the
    /// original image; otherwise the whole image resized to a square, as the in-memory loader
    /// does, with the CIFAR crop and flip when training.
    pub kind: AugmentKind,
}

/// How a training batch is augmented.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrainAug {
    pub aug: Augment,
    pub seed: u64,
}

impl Files {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn channels(&self) -> usize {
        if self.grayscale {
            1
        } else {
            3
        }
    }

    /// Bytes of one prepared image (`C x S x S`).
    pub fn image_bytes(&self) -> usize {
        self.channels() * self.size * self.size
    }

    /// Streamed data is normalised with torchvision's ImageNet mean and std (measuring its own
    /// statistics would take a pass over every file).
    pub fn normalization(&self) -> Normalization {
        transforms::imagenet_normalization(self.channels())
    }

    pub fn subset(&self, indices: &[usize]) -> Files {
        Files { paths: indices.iter().map(|&i| self.paths[i].clone()).collect(), ..self.clone() }
    }

    /// Decoding threads for a loader on `threads` compute threads.
    pub fn workers(threads: usize) -> usize {
        threads.clamp(1, MAX_WORKERS)
    }

    /// Bytes held by one batch in flight: its `u8` pixels.
    pub fn batch_bytes(&self, batch_size: usize) -> usize {
        batch_size * self.image_bytes()
    }

    pub fn describe(&self, n: usize, batch_size: usize) -> String {
        let mb = self.batch_bytes(batch_size) as f64 / 1e6;
        format!(
            "streamed from disk ({n} files, {} transforms, decoded on up to {} threads while the previous batch computes): \
             {mb:.1} MB of pixels per batch of {batch_size} in flight, {} in flight at most, plus the f32 batch ({:.1} MB)",
            self.kind.as_str(),
            Self::workers(rayon::current_num_threads()),
            PREFETCH_DEPTH + 1,
            4.0 * mb
        )
    }

    /// Decodes file `i` and writes it, prepared, as planar CHW into `out` (`image_bytes()`).
    pub(crate) fn prepare_into(&self, i: usize, epoch: usize, train: Option<TrainAug>, out: &mut [u8]) -> Result<()> {
        let path = &self.paths[i];
        let chw = match self.kind {
            AugmentKind::Imagenet => {
                let img = decode::decode_file(path, self.grayscale)?;
                let img = match train {
                    Some(t) => {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_hash(&[t.seed, epoch as u64, i as u64]));
                        transforms::train_transform(&img, self.size, t.aug.hflip, &mut rng).0
                    }
                    None => transforms::eval_transform(&img, self.size),
                };
                let mut chw = Vec::with_capacity(out.len());
                img.extend_chw(&mut chw);
                chw
            }
            AugmentKind::Cifar | AugmentKind::None => super::folder::decode(path, self.size, self.grayscale)?,
        };
        if chw.len() != out.len() {
            return Err(Error::format(path, format!("prepared {} bytes, expected {}", chw.len(), out.len())));
        }
        match train {
            Some(t) if self.kind != AugmentKind::Imagenet && !t.aug.is_none() => {
                let dims = [self.channels(), self.size, self.size];
                super::loader::augment_u8(&chw, dims, t.aug, t.seed, epoch, i, out);
            }
            _ => out.copy_from_slice(&chw),
        }
        Ok(())
    }
}

/// Decoding threads run at a lower priority (niceness +5) than the compute threads: when they
/// share cores, a compute thread that wakes takes its core back at once instead of waiting at
/// the next barrier of a parallel region for a decoder's time slice to end. Best effort, Linux
/// only.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread, no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + 5).min(19));
    }
}

/// One batch of prepared `u8` pixels (planar CHW per image).
pub(crate) struct RawBatch {
    pub pixels: Vec<u8>,
    pub indices: Vec<usize>,
}

/// The producer side of a streamed epoch.
pub(crate) struct Prefetch {
    rx: Option<Receiver<Result<RawBatch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts decoding the batches `order.chunks(batch_size).take(num_batches)`.
    pub fn start(
        files: Arc<Files>,
        order: Vec<usize>,
        batch_size: usize,
        num_batches: usize,
        epoch: usize,
        train: Option<TrainAug>,
        workers: usize,
    ) -> Result<Prefetch> {
        let (tx, rx) = sync_channel::<Result<RawBatch>>(PREFETCH_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("lfgcl-loader".into())
            .spawn(move || {
                lower_priority();
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(workers.max(1))
                    .thread_name(|i| format!("lfgcl-decode-{i}"))
                    .start_handler(|_| lower_priority())
                    .build()
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Error::Invalid(format!("cannot start image decoding threads: {e}"))));
                        return;
                    }
                };
                let per = files.image_bytes();
                for idx in order.chunks(batch_size).take(num_batches) {
                    let mut pixels = vec![0u8; idx.len() * per];
                    let results: Vec<Result<()>> = pool.install(|| {
                        pixels
                            .par_chunks_mut(per)
                            .zip(idx.par_iter())
                            .map(|(out, &i)| {
                                if stop2.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                files.prepare_into(i, epoch, train, out)
                            })
                            .collect()
                    });
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    // The first failure in batch order, so the error reported is always the same.
                    let msg = match results.into_iter().find(|r| r.is_err()) {
                        Some(Err(e)) => Err(e),
                        _ => Ok(RawBatch { pixels, indices: idx.to_vec() }),
                    };
                    let failed = msg.is_err();
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start the image loader thread: {e}")))?;
        Ok(Prefetch { rx: Some(rx), stop, handle: Some(handle) })
    }

    /// The next batch, in order; `None` at the end of the epoch.
    pub fn next_raw(&mut self) -> Option<Result<RawBatch>> {
        let r = self.rx.as_ref()?.recv().ok();
        if matches!(r, None | Some(Err(_))) {
            self.rx = None;
        }
        r
    }
}

impl Drop for Prefetch {
    /// Stops the producer (at the next image) and waits for it, so no thread outlives the epoch.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
