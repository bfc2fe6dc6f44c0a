//! Datasets: IDX (MNIST, Fashion-MNIST), CIFAR binary, image folders and a built-in synthetic
//! set, plus seeded shuffling, augmentation and batching.
//!
//! Every dataset is held in memory as raw `u8` pixels in planar CHW order; normalisation to
//! `f32` happens per batch in the [`Loader`], so a 60 000-image set costs 47 MB, not 188 MB.
//!
//! Loading never panics on file content: a bad file gives an [`Error`] whose one-line message
//! names the file and what is wrong with it.

mod cifar;
pub mod decode;
mod folder;
mod idx;
mod loader;
pub mod stream;
pub mod synthetic;
pub mod transforms;

pub use loader::{Augment, Batch, Batches, Loader};
pub use transforms::AugmentKind;

use crate::error::{Error, Result};
use rand::{seq::SliceRandom, SeedableRng};
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Names accepted by [`open`], for `--help` text and error messages.
pub const DATA_SPECS_HELP: &str = "\
synthetic              built-in 3x32x32 set, 10 classes, 5000 train / 1000 test (no download)
fashion-mnist[:DIR]    IDX files (default DIR /usr/share/datasets/fashion-mnist, apt-get install dataset-fashion-mnist)
mnist:DIR              IDX files (train-images-idx3-ubyte[.gz], t10k-..., plain or gzip)
cifar10:DIR            CIFAR-10 binary version (DIR = cifar-10-batches-bin or its parent)
cifar100:DIR           CIFAR-100 binary version, fine labels (DIR = cifar-100-binary or its parent)
folder:DIR | DIR       image folder of PNG/JPEG: class subfolders (labeled) or loose images (unlabeled); \
train/ and test/ (or val/) subfolders are picked by split";

/// One-line form of the spec list, for error messages.
const DATA_SPECS_SHORT: &str = "synthetic, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, \
folder:DIR or an existing directory";

/// An image dataset of equally sized images: in memory, or (an image folder too large to cache,
/// or augmented from the original images) a list of files streamed from disk batch by batch, see
/// [`Dataset::is_streamed`]. A streamed dataset has no pixels in `images`; [`Loader`] decodes
/// them, and `subset`, `take` and `random_subset` give streamed datasets of the chosen files.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Human-readable origin, e.g. `"fashion-mnist/train"`, `"synthetic/test"`, `"folder:/path"`.
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `len() * channels * height * width` raw pixels, each image planar CHW.
    pub images: Vec<u8>,
    /// One label per image, each `< num_classes`; `None` for unlabeled data.
    pub labels: Option<Vec<u32>>,
    /// 0 when unlabeled.
    pub num_classes: usize,
    /// Class names in label order; may be empty.
    pub class_names: Vec<String>,
    /// The files, when streamed.
    stream: Option<std::sync::Arc<stream::Files>>,
    /// The normalisation this data is meant for (ImageNet's for ImageNet-style folders), which
    /// [`Dataset::channel_stats`] then returns instead of measuring the pixels.
    preset_norm: Option<Normalization>,
}

impl Dataset {
    /// Builds a dataset from its parts, checking that sizes and labels agree.
    pub fn from_parts(
        name: impl Into<String>,
        dims: [usize; 3],
        images: Vec<u8>,
        labels: Option<Vec<u32>>,
        num_classes: usize,
        class_names: Vec<String>,
    ) -> Result<Dataset> {
        let name = name.into();
        let [c, h, w] = dims;
        let per = c * h * w;
        if per == 0 {
            crate::bail!(Shape, "dataset {name}: image dims {c}x{h}x{w} must all be positive");
        }
        if !images.len().is_multiple_of(per) {
            crate::bail!(
                Shape,
                "dataset {name}: {} pixel bytes is not a whole number of {c}x{h}x{w} images",
                images.len()
            );
        }
        let n = images.len() / per;
        if let Some(labels) = &labels {
            if labels.len() != n {
                crate::bail!(Shape, "dataset {name}: {} labels for {n} images", labels.len());
            }
            if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= num_classes) {
                crate::bail!(Invalid, "dataset {name}: label {l} of image {i} is not below num_classes {num_classes}");
            }
        } else if num_classes != 0 {
            crate::bail!(Invalid, "dataset {name}: unlabeled data must have num_classes 0");
        }
        if !class_names.is_empty() && class_names.len() != num_classes {
            crate::bail!(Invalid, "dataset {name}: {} class names for {num_classes} classes", class_names.len());
        }
        Ok(Dataset {
            name,
            channels: c,
            height: h,
            width: w,
            images,
            labels,
            num_classes,
            class_names,
            stream: None,
            preset_norm: None,
        })
    }

    /// A dataset streamed from `files`.
    pub(crate) fn streamed(
        name: String,
        files: stream::Files,
        labels: Option<Vec<u32>>,
        class_names: Vec<String>,
    ) -> Dataset {
        let (channels, size) = (files.channels(), files.size);
        let preset_norm = Some(files.normalization());
        Dataset {
            name,
            channels,
            height: size,
            width: size,
            images: Vec::new(),
            num_classes: class_names.len(),
            labels,
            class_names,
            stream: Some(std::sync::Arc::new(files)),
            preset_norm,
        }
    }

    /// Whether the images are decoded from disk batch by batch rather than held in memory.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// The files of a streamed dataset.
    pub fn stream_files(&self) -> Option<&stream::Files> {
        self.stream.as_deref()
    }

    /// One line saying how the data is held: in memory (and how much), or streamed from disk
    /// (and how much a batch in flight takes).
    pub fn mode_description(&self, batch_size: usize) -> String {
        match &self.stream {
            Some(f) => f.describe(self.len(), batch_size),
            None => format!("in memory ({:.1} MB decoded)", self.images.len() as f64 / 1e6),
        }
    }

    /// Pixels per image (`C*H*W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn len(&self) -> usize {
        if let Some(f) = &self.stream {
            return f.len();
        }
        match self.image_len() {
            0 => 0,
            per => self.images.len() / per,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]`.
    pub fn image_dims(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The raw CHW pixels of image `i`. Panics if `i >= len()` or the dataset is streamed
    /// ([`Loader`] decodes those).
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(self.stream.is_none(), "Dataset::image on the streamed dataset {}", self.name);
        let per = self.image_len();
        &self.images[i * per..(i + 1) * per]
    }

    /// The images at `indices`, in that order (repeats allowed). Panics on an index `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let per = self.image_len();
        let (images, stream) = match &self.stream {
            Some(f) => (Vec::new(), Some(std::sync::Arc::new(f.subset(indices)))),
            None => {
                let mut images = Vec::with_capacity(indices.len() * per);
                for &i in indices {
                    images.extend_from_slice(self.image(i));
                }
                (images, None)
            }
        };
        Dataset {
            name: self.name.clone(),
            images,
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
            stream,
            preset_norm: self.preset_norm.clone(),
            ..*self
        }
    }

    /// The first `min(n, len())` images.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        if self.stream.is_some() {
            return self.subset(&(0..n).collect::<Vec<_>>());
        }
        Dataset {
            name: self.name.clone(),
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            class_names: self.class_names.clone(),
            stream: None,
            preset_norm: self.preset_norm.clone(),
            ..*self
        }
    }

    /// `min(n, len())` distinct images drawn at random (seeded), in ascending index order.
    pub fn random_subset(&self, n: usize, seed: u64) -> Dataset {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        idx.truncate(n);
        idx.sort_unstable();
        self.subset(&idx)
    }

    /// The same images with the labels dropped, as label-free methods see them.
    /// Every image resized to `side x side`, channel by channel with Pillow's bilinear filter
    /// (what torchvision's `Resize((side, side))` does to a PIL image). In-memory data only.
    pub fn resized(&self, side: usize) -> Result<Dataset> {
        if self.is_streamed() {
            crate::bail!(Invalid, "{}: a streamed dataset is resized as it is decoded, not here", self.name);
        }
        let plane = side * side;
        let bytes = (self.len() as u64).saturating_mul((self.channels * plane) as u64);
        if bytes > crate::limits::MAX_DATASET_BYTES {
            crate::bail!(
                Invalid,
                "{}: {} images of {}x{side}x{side} take {bytes} bytes, over the {} limit (use --limit or a smaller --image-size)",
                self.name,
                self.len(),
                self.channels,
                crate::limits::MAX_DATASET_BYTES
            );
        }
        let (h, w) = (self.height, self.width);
        let mut images = Vec::with_capacity(bytes as usize);
        for src in self.images.chunks_exact(h * w) {
            let img = transforms::Image { width: w, height: h, channels: 1, data: src.to_vec() };
            images.extend_from_slice(&transforms::resize(&img, side, side).data);
        }
        Ok(Dataset {
            name: format!("{} at {side}x{side}", self.name),
            channels: self.channels,
            height: side,
            width: side,
            images,
            labels: self.labels.clone(),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            stream: None,
            preset_norm: self.preset_norm.clone(),
        })
    }

    pub fn without_labels(self) -> Dataset {
        Dataset { labels: None, num_classes: 0, class_names: Vec::new(), ..self }
    }

    /// Per-channel mean and (population) standard deviation of `pixel / 255` over the whole set.
    /// A constant channel gets std 1 so that normalising by it stays finite; an empty set gets
    /// the identity.
    /// Data meant for a fixed normalisation (ImageNet-style folders, streamed data) returns that
    /// one instead: a streamed set cannot be measured without a pass over every file.
    pub fn channel_stats(&self) -> Normalization {
        if let Some(n) = &self.preset_norm {
            return n.clone();
        }
        let (c, hw) = (self.channels, self.height * self.width);
        if self.is_empty() {
            return Normalization::identity(c);
        }
        // Exact integer sums: 255^2 * 2^40 pixels would still fit in a u64.
        let mut sum = vec![0u64; c];
        let mut sq = vec![0u64; c];
        for img in self.images.chunks_exact(c * hw) {
            for (ch, plane) in img.chunks_exact(hw).enumerate() {
                let (s, q) = plane.iter().fold((0u64, 0u64), |(s, q), &p| {
                    let p = p as u64;
                    (s + p, q + p * p)
                });
                sum[ch] += s;
                sq[ch] += q;
            }
        }
        let count = (self.len() * hw) as f64;
        let (mut mean, mut std) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let m = sum[ch] as f64 / count;
            let var = (sq[ch] as f64 / count - m * m).max(0.0);
            let sd = var.sqrt() / 255.0;
            mean.push((m / 255.0) as f32);
            std.push(if sd < 1e-6 { 1.0 } else { sd as f32 });
        }
        Normalization { mean, std }
    }

    /// The labels, or an error saying this dataset has none (e.g. an unlabeled image folder).
    pub fn labels_or_err(&self) -> Result<&[u32]> {
        self.labels.as_deref().ok_or_else(|| Error::Invalid(format!("dataset {} has no labels", self.name)))
    }

    /// Number of images per class (empty for unlabeled data).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in self.labels.as_deref().unwrap_or(&[]) {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A summary: printing millions of pixels helps nobody.
impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("dims", &self.image_dims())
            .field("labeled", &self.labels.is_some())
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

/// Per-channel normalisation, applied as `(pixel / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Mean 0, std 1: pixels map to `pixel / 255`.
    pub fn identity(channels: usize) -> Self {
        Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    /// Number of channels it normalises.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Checks that it fits `channels`-channel images and that every std is positive and finite.
    pub fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            crate::bail!(
                Shape,
                "normalisation has {} means and {} stds but the images have {channels} channels",
                self.mean.len(),
                self.std.len()
            );
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            crate::bail!(Invalid, "normalisation std {s} must be positive and finite");
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            crate::bail!(Invalid, "normalisation mean {m} must be finite");
        }
        // Every normalised pixel must be finite too (`apply` is monotonic: the extremes suffice).
        for ch in 0..channels {
            for pixel in [0u8, 255] {
                let v = self.apply(ch, pixel);
                if !v.is_finite() {
                    crate::bail!(
                        Invalid,
                        "normalisation std {} of channel {ch} is too small: pixel {pixel} normalises to {v}",
                        self.std[ch]
                    );
                }
            }
        }
        Ok(())
    }

    /// The normalised value of raw `pixel` in channel `ch`.
    pub fn apply(&self, ch: usize, pixel: u8) -> f32 {
        (pixel as f32 / 255.0 - self.mean[ch]) / self.std[ch]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Side of the square images to deliver. Image folders are resized to it (32 when `None`);
    /// IDX, CIFAR and synthetic data keep their own size when `None`, and are otherwise resized
    /// once at load (Pillow's bilinear, as torchvision's `Resize` on PIL images), e.g. to
    /// train a torchvision net on Fashion-MNIST at 64x64.
    pub image_size: Option<usize>,
    /// Keep at most this many images. IDX, CIFAR and synthetic keep the first ones (their files
    /// are already class-mixed); image folders keep evenly spaced files of the sorted list, so
    /// every class keeps its share, and decode only those.
    pub limit: Option<usize>,
    /// Image folders: decode as 1 luma channel instead of RGB.
    pub grayscale: bool,
    /// Image folders: how images are brought to `image_size` and augmented. `Imagenet` streams
    /// the training split (its random crops need the original images) and center-crops the test
    /// split; the others resize whole images to squares.
    pub augment: AugmentKind,
    /// Image folders: a split whose decoded squares take at most this many bytes is decoded
    /// once into memory; a larger one is streamed from disk.
    pub cache_bytes: u64,
}

/// Side image folders are resized to when no `--image-size` is given.
pub const FOLDER_DEFAULT_SIDE: usize = 32;

impl OpenOptions {
    /// The side an image folder is brought to.
    pub fn folder_side(&self) -> usize {
        self.image_size.unwrap_or(FOLDER_DEFAULT_SIDE)
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            image_size: None,
            limit: None,
            grayscale: false,
            augment: AugmentKind::Cifar,
            cache_bytes: crate::limits::MAX_DATASET_BYTES,
        }
    }
}

/// Whether `spec` names an image folder (`folder:DIR` or an existing directory).
pub fn is_folder_spec(spec: &str) -> bool {
    spec.starts_with("folder:") || (!spec.contains(':') && Path::new(spec).is_dir())
}

/// The directory of a folder spec.
fn folder_dir(spec: &str) -> Option<PathBuf> {
    match spec.strip_prefix("folder:") {
        Some(d) => Some(PathBuf::from(d)),
        None => is_folder_spec(spec).then(|| PathBuf::from(spec)),
    }
}

/// For an image folder spec, whether it has a test split (`test/` or `val/` next to `train/`);
/// `None` for other specs. A folder without one is a training split only.
pub fn folder_has_test_split(spec: &str) -> Option<bool> {
    let dir = folder_dir(spec)?;
    Some(["test", "val"].iter().any(|s| dir.join(s).is_dir()))
}

/// `n` unlabelled images of `split`, drawn as `open(..).without_labels().random_subset(n, seed)`
/// draws them, but an image folder decodes only those `n` files (the search reads no more).
pub fn open_sample(spec: &str, split: Split, opts: &OpenOptions, n: usize, seed: u64) -> Result<Dataset> {
    match folder_dir(spec) {
        Some(dir) if !dir.as_os_str().is_empty() => folder::load_sample(&dir, split, opts, n, seed),
        _ => Ok(open(spec, split, opts)?.without_labels().random_subset(n, seed)),
    }
}

/// Opens a data spec given on the command line (see [`DATA_SPECS_HELP`]):
///   `synthetic`, `fashion-mnist[:DIR]`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`,
///   `folder:DIR` or a plain existing directory path.
pub fn open(spec: &str, split: Split, opts: &OpenOptions) -> Result<Dataset> {
    if let Some(side) = opts.image_size.filter(|&s| s == 0 || s > crate::limits::MAX_IMAGE_SIDE) {
        crate::bail!(Invalid, "--image-size must be between 1 and {}, got {side}", crate::limits::MAX_IMAGE_SIDE);
    }
    if opts.augment == AugmentKind::Imagenet && !is_folder_spec(spec) {
        crate::bail!(
            Invalid,
            "--augment imagenet needs an image folder (it crops the original images); '{spec}' is not one"
        );
    }
    let (kind, arg) = match spec.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (spec, None),
    };
    let need_dir = |what: &str| -> Result<PathBuf> {
        match arg {
            Some(a) if !a.is_empty() => Ok(PathBuf::from(a)),
            _ => Err(Error::Invalid(format!("data spec '{spec}' needs a directory: {what}:DIR"))),
        }
    };
    let ds = match kind {
        "synthetic" => match arg {
            None => synthetic::generate(split),
            Some(_) => {
                crate::bail!(Invalid, "data spec 'synthetic' takes no directory (got '{spec}')")
            }
        },
        "fashion-mnist" => {
            let (dir, hint) = match arg {
                Some(a) if !a.is_empty() => (PathBuf::from(a), None),
                _ => (PathBuf::from(FASHION_MNIST_DEFAULT_DIR), Some("apt-get install dataset-fashion-mnist")),
            };
            idx::load(&dir, split, "fashion-mnist", fashion_names(), hint)?
        }
        "mnist" => {
            let names = (0..10).map(|d| d.to_string()).collect();
            idx::load(&need_dir("mnist")?, split, "mnist", names, None)?
        }
        "cifar10" => cifar::load_cifar10(&need_dir("cifar10")?, split)?,
        "cifar100" => cifar::load_cifar100(&need_dir("cifar100")?, split)?,
        "folder" => return folder::load(&need_dir("folder")?, split, opts),
        _ if Path::new(spec).is_dir() => return folder::load(Path::new(spec), split, opts),
        _ => crate::bail!(Invalid, "unknown data spec '{spec}' (expected {DATA_SPECS_SHORT})"),
    };
    let ds = match opts.limit {
        Some(n) => ds.take(n),
        None => ds,
    };
    match opts.image_size {
        Some(side) if (side, side) != (ds.height, ds.width) => ds.resized(side),
        _ => Ok(ds),
    }
}

fn fashion_names() -> Vec<String> {
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Reads a whole regular file of at most `limits::MAX_DATA_FILE_BYTES`, naming it in the error.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::limits::read_bounded(path, crate::limits::MAX_DATA_FILE_BYTES)
}

/// SplitMix64 finaliser chained over `words`: a fast, well-mixed and portable way to derive
/// independent seeds from (seed, epoch, index) tuples.
pub(crate) fn seed_hash(words: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &w in words {
        h ^= w;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}
