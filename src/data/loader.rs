//! Batching: seeded shuffling, torchvision-style augmentation and normalisation to `f32`.
//!
//! All randomness is a pure function of the seeds, the epoch and the dataset index, never of
//! thread scheduling or of the order batches are consumed in, so a run can be replayed exactly
//! and an interrupted one resumed at any epoch.

use super::stream::{Files, Prefetch, TrainAug};
use super::{seed_hash as hash, Dataset, Normalization};
use crate::error::Result;
use rand::{seq::SliceRandom, SeedableRng};
use rayon::prelude::*;

/// Training-time augmentation, as in the usual CIFAR recipe: `RandomCrop(size, padding)` then
/// `RandomHorizontalFlip()`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Zero padding on every side before a random crop back to the original size; 0 = no crop.
    pub crop_pad: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
}

impl Augment {
    /// Pad-4 random crop and horizontal flip.
    pub fn standard() -> Self {
        Augment { crop_pad: 4, hflip: true }
    }

    pub fn none() -> Self {
        Augment { crop_pad: 0, hflip: false }
    }

    pub fn is_none(&self) -> bool {
        self.crop_pad == 0 && !self.hflip
    }
}

/// One batch of normalised images.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `N*C*H*W` normalised pixels, each image planar CHW.
    pub images: Vec<f32>,
    /// `[N, C, H, W]`.
    pub dims: [usize; 4],
    /// The labels of the images, when the dataset has labels.
    pub labels: Option<Vec<u32>>,
    /// The dataset index of each image.
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.dims[0]
    }

    pub fn is_empty(&self) -> bool {
        self.dims[0] == 0
    }
}

/// Iterates over a dataset in batches, epoch by epoch.
pub struct Loader<'a> {
    ds: &'a Dataset,
    batch_size: usize,
    /// Per channel, the normalised value of each of the 256 raw pixel values: one lookup per
    /// pixel instead of a divide.
    lut: Vec<[f32; 256]>,
    shuffle_seed: Option<u64>,
    augment: Augment,
    augment_seed: u64,
    drop_last: bool,
    /// `(rank, world)`: this loader visits every `world`-th image of the epoch's order.
    shard: (usize, usize),
    /// Decoding threads of a streamed dataset.
    workers: usize,
}

impl<'a> Loader<'a> {
    /// Sequential order, no augmentation, keeps the last partial batch. Panics if `batch_size`
    /// is 0 or `norm` does not fit the dataset; [`Loader::try_new`] returns those as errors.
    pub fn new(ds: &'a Dataset, batch_size: usize, norm: &Normalization) -> Loader<'a> {
        Self::try_new(ds, batch_size, norm).unwrap_or_else(|e| panic!("Loader::new: {e}"))
    }

    /// [`Loader::new`] that reports a zero batch size or a mismatched normalisation as an error.
    pub fn try_new(ds: &'a Dataset, batch_size: usize, norm: &Normalization) -> Result<Loader<'a>> {
        if batch_size == 0 {
            crate::bail!(Invalid, "batch size must be positive");
        }
        norm.check(ds.channels)?;
        let lut = (0..ds.channels).map(|c| std::array::from_fn(|p| norm.apply(c, p as u8))).collect();
        Ok(Loader {
            ds,
            batch_size,
            lut,
            shuffle_seed: None,
            augment: Augment::none(),
            augment_seed: 0,
            drop_last: false,
            shard: (0, 1),
            workers: Files::workers(rayon::current_num_threads()),
        })
    }

    /// Visits only this rank's share of every epoch, as PyTorch's `DistributedSampler` does: the
    /// epoch's order is padded by wrapping around to a multiple of `world`, and rank `r` takes
    /// positions `r, r + world, ...`, so every rank gets the same number of batches.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            crate::bail!(Invalid, "shard rank {rank} of world {world}: need rank < world");
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// Threads that decode a streamed dataset (default: the compute threads, at most 16).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.clamp(1, super::stream::MAX_WORKERS);
        self
    }

    /// Visits the images in a seeded random order, a different one each epoch, reproducible
    /// from `(seed, epoch)`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Augments every image; the random crop offset and flip are reproducible from
    /// `(seed, epoch, dataset index)`.
    pub fn augment(mut self, aug: Augment, seed: u64) -> Self {
        self.augment = aug;
        self.augment_seed = seed;
        self
    }

    /// Drops the last batch when it is smaller than the batch size.
    pub fn drop_last(mut self, yes: bool) -> Self {
        self.drop_last = yes;
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn dataset(&self) -> &'a Dataset {
        self.ds
    }

    /// Images this loader visits per epoch (its shard's share).
    pub fn len(&self) -> usize {
        let (_, world) = self.shard;
        if world == 1 {
            self.ds.len()
        } else {
            self.ds.len().div_ceil(world)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_batches(&self) -> usize {
        let n = self.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The order in which `epoch` visits the dataset indices (before `drop_last`).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.ds.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            let mut rng = rand::rngs::StdRng::seed_from_u64(hash(&[seed, epoch as u64]));
            order.shuffle(&mut rng);
        }
        let (rank, world) = self.shard;
        if world > 1 && !order.is_empty() {
            let total = order.len().div_ceil(world) * world;
            order = (rank..total).step_by(world).map(|p| order[p % order.len()]).collect();
        }
        order
    }

    /// The batches of one epoch, assembled lazily as the iterator is advanced; a streamed
    /// dataset's are decoded ahead on the loader's threads. An image that cannot be decoded ends
    /// the epoch with an error naming its file.
    pub fn batches(&self, epoch: usize) -> Batches<'_> {
        let Some(files) = &self.ds.stream else {
            return Batches { inner: Box::new(self.epoch_in_memory(epoch).map(Ok)) };
        };
        let train = (!self.augment.is_none()).then_some(TrainAug { aug: self.augment, seed: self.augment_seed });
        let prefetch = Prefetch::start(
            files.clone(),
            self.order(epoch),
            self.batch_size,
            self.num_batches(),
            epoch,
            train,
            self.workers,
        );
        let mut prefetch = match prefetch {
            Ok(p) => p,
            Err(e) => return Batches { inner: Box::new(std::iter::once(Err(e))) },
        };
        let [c, h, w] = self.ds.image_dims();
        let per = c * h * w;
        let hw = h * w;
        Batches {
            inner: Box::new(std::iter::from_fn(move || {
                let raw = match prefetch.next_raw()? {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                };
                let mut images = vec![0f32; raw.pixels.len()];
                images.par_chunks_mut(per).zip(raw.pixels.par_chunks(per)).for_each(|(out, src)| {
                    for ((o, s), lut) in out.chunks_exact_mut(hw).zip(src.chunks_exact(hw)).zip(&self.lut) {
                        for (o, &p) in o.iter_mut().zip(s) {
                            *o = lut[p as usize];
                        }
                    }
                });
                let n = raw.indices.len();
                Some(Ok(Batch {
                    images,
                    dims: [n, c, h, w],
                    labels: self.ds.labels.as_ref().map(|l| raw.indices.iter().map(|&i| l[i]).collect()),
                    indices: raw.indices,
                }))
            })),
        }
    }

    /// The batches of one epoch of an in-memory dataset, assembled lazily as the iterator is
    /// advanced. Panics on a streamed dataset whose files fail to decode: [`Loader::batches`]
    /// reports that as an error.
    pub fn epoch(&self, epoch: usize) -> impl Iterator<Item = Batch> + '_ {
        let streamed = self.ds.is_streamed().then(|| self.batches(epoch));
        let mut streamed = streamed.into_iter().flatten().map(|b| b.unwrap_or_else(|e| panic!("Loader::epoch: {e}")));
        let mut memory = (!self.ds.is_streamed()).then(|| self.epoch_in_memory(epoch)).into_iter().flatten();
        std::iter::from_fn(move || streamed.next().or_else(|| memory.next()))
    }

    fn epoch_in_memory(&self, epoch: usize) -> impl Iterator<Item = Batch> + '_ {
        let order = self.order(epoch);
        let bs = self.batch_size;
        (0..self.num_batches()).map(move |b| {
            let idx = &order[b * bs..((b + 1) * bs).min(order.len())];
            self.batch(idx, epoch)
        })
    }

    /// Assembles the images at `indices` as they look in `epoch`. Panics on an index `>= len()`
    /// or a streamed dataset.
    pub fn batch(&self, indices: &[usize], epoch: usize) -> Batch {
        let [c, h, w] = self.ds.image_dims();
        let mut images = vec![0f32; indices.len() * c * h * w];
        images.par_chunks_mut(c * h * w).zip(indices.par_iter()).for_each(|(out, &i)| self.fill(out, i, epoch));
        Batch {
            images,
            dims: [indices.len(), c, h, w],
            labels: self.ds.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            indices: indices.to_vec(),
        }
    }

    /// Writes the normalised (and possibly augmented) image `i` into `out`.
    fn fill(&self, out: &mut [f32], i: usize, epoch: usize) {
        let src = self.ds.image(i);
        let [_, h, w] = self.ds.image_dims();
        let hw = h * w;
        if self.augment.is_none() {
            for ((plane_out, plane), lut) in out.chunks_exact_mut(hw).zip(src.chunks_exact(hw)).zip(&self.lut) {
                for (o, &p) in plane_out.iter_mut().zip(plane) {
                    *o = lut[p as usize];
                }
            }
            return;
        }
        // Crop offset (dy, dx) into the padded image, in 0..=2*pad as torchvision draws it.
        let pad = self.augment.crop_pad;
        let r = hash(&[self.augment_seed, epoch as u64, i as u64]);
        let span = 2 * pad as u64 + 1;
        // Disjoint bit fields of one hash, so the three draws are independent.
        let dy = ((r & 0xf_ffff) % span) as usize;
        let dx = (((r >> 20) & 0xf_ffff) % span) as usize;
        let flip = self.augment.hflip && (r >> 40) & 1 == 1;
        for (c, (plane_out, plane)) in out.chunks_exact_mut(hw).zip(src.chunks_exact(hw)).enumerate() {
            let lut = &self.lut[c];
            // Padding is raw pixel 0, normalised like any other pixel (as torchvision does).
            let zero = lut[0];
            for y in 0..h {
                let row_out = &mut plane_out[y * w..(y + 1) * w];
                let sy = (y + dy).wrapping_sub(pad);
                if sy >= h {
                    row_out.fill(zero);
                    continue;
                }
                let row = &plane[sy * w..(sy + 1) * w];
                for (x, o) in row_out.iter_mut().enumerate() {
                    // The flip applies to the cropped image: output x reads crop column w-1-x.
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = (cx + dx).wrapping_sub(pad);
                    *o = if sx < w { lut[row[sx] as usize] } else { zero };
                }
            }
        }
    }
}

/// The batches of one epoch, see [`Loader::batches`].
pub struct Batches<'l> {
    inner: Box<dyn Iterator<Item = Result<Batch>> + 'l>,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.inner.next()
    }
}

/// The CIFAR crop and flip of [`Loader`]'s in-memory path on raw pixels: the same draws from
/// `(seed, epoch, i)`, padding with raw 0 (which normalises to what the `f32` path pads with).
pub(crate) fn augment_u8(
    src: &[u8],
    dims: [usize; 3],
    aug: Augment,
    seed: u64,
    epoch: usize,
    i: usize,
    out: &mut [u8],
) {
    let [_, h, w] = dims;
    let hw = h * w;
    let pad = aug.crop_pad;
    let r = hash(&[seed, epoch as u64, i as u64]);
    let span = 2 * pad as u64 + 1;
    let dy = ((r & 0xf_ffff) % span) as usize;
    let dx = (((r >> 20) & 0xf_ffff) % span) as usize;
    let flip = aug.hflip && (r >> 40) & 1 == 1;
    for (plane_out, plane) in out.chunks_exact_mut(hw).zip(src.chunks_exact(hw)) {
        for y in 0..h {
            let row_out = &mut plane_out[y * w..(y + 1) * w];
            let sy = (y + dy).wrapping_sub(pad);
            if sy >= h {
                row_out.fill(0);
                continue;
            }
            let row = &plane[sy * w..(sy + 1) * w];
            for (x, o) in row_out.iter_mut().enumerate() {
                let cx = if flip { w - 1 - x } else { x };
                let sx = (cx + dx).wrapping_sub(pad);
                *o = if sx < w { row[sx] } else { 0 };
            }
        }
    }
}
