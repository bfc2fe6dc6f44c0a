//! Image folders of PNG/JPEG files, in the torchvision `ImageFolder` layout:
//!
//! - `DIR/<class>/**/*.png` → labeled, classes are the sorted subfolder names;
//! - `DIR/*.png` → unlabeled;
//! - `DIR/train/...` with `DIR/test/...` (or `DIR/val/...`) → the subfolder of the split.
//!
//! Hidden entries (names starting with `.`) are skipped, which also skips macOS `._x.png`
//! resource forks that are not images.

use super::stream::Files;
use super::transforms::{self, AugmentKind};
use super::{Dataset, OpenOptions, Split};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
const LOOKED_FOR: &str = "looked for *.png, *.jpg, *.jpeg, any case";

/// The files of a split, labelled or not, after `--limit`: `(dir, files, labels, class_names)`.
type Listing = (PathBuf, Vec<PathBuf>, Option<Vec<u32>>, Vec<String>);

fn list(dir: &Path, split: Split, limit: Option<usize>) -> Result<Listing> {
    if !dir.is_dir() {
        let what = if dir.exists() { "not a directory" } else { "not found" };
        return Err(Error::format(dir, what));
    }
    let dir = split_dir(dir, split)?;
    let (files, mut labels, mut class_names) = scan(&dir)?;
    if split == Split::Test {
        if let Some(train_names) = train_class_names(&dir)? {
            // Test labels follow the training split's classes, matched by folder name.
            if let Some(l) = labels.as_mut() {
                let map = class_name_map(&dir, &class_names, &train_names)?;
                l.iter_mut().for_each(|x| *x = map[*x as usize]);
                class_names = train_names;
            }
        }
    }
    let keep = select(files.len(), limit);
    let labels = labels.map(|l| keep.iter().map(|&i| l[i]).collect::<Vec<u32>>());
    let files = if keep.len() == files.len() { files } else { keep.iter().map(|&i| files[i].clone()).collect() };
    Ok((dir, files, labels, class_names))
}

/// Whether a split is decoded once into memory (the whole image resized to a square, or for
/// ImageNet-style evaluation resized and center-cropped: the same pixels every epoch) or
/// streamed: ImageNet-style training crops the original images, and a split whose squares
/// would take more than `opts.cache_bytes` does not fit.
fn streams(n: usize, split: Split, opts: &OpenOptions) -> bool {
    let channels = if opts.grayscale { 1 } else { 3 };
    let total = (n as u64).saturating_mul((channels * opts.folder_side() * opts.folder_side()) as u64);
    (opts.augment == AugmentKind::Imagenet && split == Split::Train)
        || total > opts.cache_bytes.min(crate::limits::MAX_DATASET_BYTES)
}

pub(super) fn load(dir: &Path, split: Split, opts: &OpenOptions) -> Result<Dataset> {
    let (dir, files, labels, class_names) = list(dir, split, opts.limit)?;
    let name = format!("folder:{}", dir.display());
    if streams(files.len(), split, opts) {
        let files = Files { paths: files, size: opts.folder_side(), grayscale: opts.grayscale, kind: opts.augment };
        return Ok(Dataset::streamed(name, files, labels, class_names));
    }
    let files: Vec<&PathBuf> = files.iter().collect();
    let mut ds = decode_all(&dir, &files, opts)?;
    ds.name = name;
    ds.num_classes = class_names.len();
    ds.labels = labels;
    ds.class_names = class_names;
    Ok(ds)
}

/// `n` unlabelled images of the split, chosen as `Dataset::random_subset(n, seed)` chooses them
/// from the whole split, decoded into memory; the other files are never opened.
pub(super) fn load_sample(dir: &Path, split: Split, opts: &OpenOptions, n: usize, seed: u64) -> Result<Dataset> {
    use rand::{seq::SliceRandom, SeedableRng};
    let (dir, files, _, _) = list(dir, split, opts.limit)?;
    let mut idx: Vec<usize> = (0..files.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx.truncate(n);
    idx.sort_unstable();
    let chosen: Vec<&PathBuf> = idx.iter().map(|&i| &files[i]).collect();
    // The search scores deterministic images: ImageNet-style data is center-cropped.
    let mut ds = decode_all(&dir, &chosen, opts)?;
    ds.name = format!("folder:{} ({} of {} images)", dir.display(), chosen.len(), files.len());
    Ok(ds)
}

/// Decodes `files` into an unlabelled in-memory dataset of `image_size` squares.
fn decode_all(dir: &Path, files: &[&PathBuf], opts: &OpenOptions) -> Result<Dataset> {
    let size = opts.folder_side();
    let channels = if opts.grayscale { 1 } else { 3 };
    let total = (files.len() * channels * size * size) as u64;
    if total > crate::limits::MAX_DATASET_BYTES {
        return Err(Error::format(
            dir,
            format!(
                "{} images of {channels}x{size}x{size} take {total} bytes, more than the {} a dataset may hold \
                 (lower --image-size or --limit)",
                files.len(),
                crate::limits::MAX_DATASET_BYTES
            ),
        ));
    }
    // Each image may take up to MAX_DECODE_BYTES_PER_IMAGE while it decodes: bound how many decode
    // at once, so that memory does not grow with the thread count.
    let decoders = (crate::limits::MAX_DECODE_BYTES_IN_FLIGHT / crate::limits::MAX_DECODE_BYTES_PER_IMAGE) as usize;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(decoders.min(rayon::current_num_threads()).max(1))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start image decoding threads: {e}")))?;
    let imagenet = opts.augment == AugmentKind::Imagenet;
    let decoded: Vec<Result<Vec<u8>>> = pool.install(|| {
        files
            .par_iter()
            .map(|p| {
                if imagenet {
                    let img = super::decode::decode_file(p, opts.grayscale)?;
                    let mut chw = Vec::with_capacity(channels * size * size);
                    transforms::eval_transform(&img, size).extend_chw(&mut chw);
                    Ok(chw)
                } else {
                    decode(p, size, opts.grayscale)
                }
            })
            .collect()
    });
    let mut images = Vec::with_capacity(files.len() * channels * size * size);
    // Collected first, then checked in order, so the error reported is always the same one.
    for img in decoded {
        images.extend_from_slice(&img?);
    }
    let mut ds =
        Dataset::from_parts(format!("folder:{}", dir.display()), [channels, size, size], images, None, 0, vec![])?;
    if imagenet {
        ds.preset_norm = Some(transforms::imagenet_normalization(channels));
    }
    Ok(ds)
}

/// `DIR/train` for the train split and `DIR/test` (or `DIR/val`) for the test split. A folder
/// with neither is one split: the training split; asking it for a test split is an error rather
/// than a "test" accuracy measured on the training images.
fn split_dir(dir: &Path, split: Split) -> Result<PathBuf> {
    let train = Some(dir.join("train")).filter(|p| p.is_dir());
    let test = ["test", "val"].iter().map(|s| dir.join(s)).find(|p| p.is_dir());
    match (train, test, split) {
        (Some(train), _, Split::Train) => Ok(train),
        (_, Some(test), Split::Test) => Ok(test),
        (None, None, Split::Train) => Ok(dir.to_path_buf()),
        (None, Some(_), Split::Train) => Err(Error::format(dir, "has a test/ (or val/) subfolder but no train/")),
        (Some(_), None, Split::Test) => Err(Error::format(dir, "has a train/ subfolder but no test/ (or val/)")),
        (None, None, Split::Test) => Err(Error::format(
            dir,
            "has no train/ and test/ (or val/) subfolders, so it is a single split, used whole as the training \
             split; there is no test split to evaluate on (use --split train to evaluate on it)",
        )),
    }
}

/// The class names of the training split next to a test split folder, when it has classes.
fn train_class_names(test_dir: &Path) -> Result<Option<Vec<String>>> {
    let Some(train) = test_dir.parent().map(|p| p.join("train")).filter(|p| p.is_dir()) else {
        return Ok(None);
    };
    let names: Vec<String> = sorted_entries(&train)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    Ok((!names.is_empty()).then_some(names))
}

/// For each test class (by index), the index of the training class of the same name.
fn class_name_map(test_dir: &Path, test_names: &[String], train_names: &[String]) -> Result<Vec<u32>> {
    test_names
        .iter()
        .map(|n| match train_names.iter().position(|t| t == n) {
            Some(i) => Ok(i as u32),
            None => {
                let case = match train_names
                    .iter()
                    .find(|t| t.eq_ignore_ascii_case(n) || t.to_lowercase() == n.to_lowercase())
                {
                    Some(t) => format!(
                        "; the training split's '{t}' differs only in case, and class names are matched exactly"
                    ),
                    None => String::new(),
                };
                Err(Error::format(
                    test_dir.join(n),
                    format!("test class '{n}' is not a class of the training split ({}){case}", train_names.join(", ")),
                ))
            }
        })
        .collect()
}

/// Lists the images: `(files, labels, class_names)`, labels `None` for a flat folder.
type Scan = (Vec<PathBuf>, Option<Vec<u32>>, Vec<String>);

fn scan(dir: &Path) -> Result<Scan> {
    let mut subdirs = Vec::new();
    let mut loose = Vec::new();
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            subdirs.push(path);
        } else if is_image(&path) {
            loose.push(path);
        }
    }
    if subdirs.is_empty() {
        if loose.is_empty() {
            return Err(Error::format(dir, format!("no images found ({LOOKED_FOR})")));
        }
        return Ok((loose, None, Vec::new()));
    }
    if !loose.is_empty() {
        return Err(Error::format(
            dir,
            format!(
                "has both loose images ({}) and class subfolders ({}); use one layout",
                loose[0].display(),
                subdirs[0].display()
            ),
        ));
    }
    let (mut files, mut labels, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (class, sub) in subdirs.iter().enumerate() {
        let before = files.len();
        collect_recursive(sub, &mut files)?;
        if files.len() == before {
            return Err(Error::format(sub, format!("class folder has no images ({LOOKED_FOR})")));
        }
        labels.resize(files.len(), class as u32);
        names.push(sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    Ok((files, Some(labels), names))
}

/// Non-hidden entries of `dir`, sorted by path so that the order is the same on every system.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Images anywhere below `dir`, in sorted order. Symlinked directories are not followed below
/// the class level, so a link cycle cannot recurse forever.
fn collect_recursive(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            collect_recursive(&path, out)?;
        } else if is_image(&path) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// `min(limit, n)` evenly spaced indices of `0..n`, ascending.
fn select(n: usize, limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(k) if k < n => (0..k).map(|i| i * n / k).collect(),
        _ => (0..n).collect(),
    }
}

/// Decodes one image to planar CHW at `size`x`size`.
pub(super) fn decode(path: &Path, size: usize, grayscale: bool) -> Result<Vec<u8>> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(crate::limits::MAX_DECODE_BYTES_PER_IMAGE);
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        // Sniff the content: a JPEG saved as .png still decodes.
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.limits(limits);
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        check_jpeg_complete(path)?;
    }
    let img = reader.decode().map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let s = size as u32;
    let (raw, channels) = if grayscale {
        let mut g = img.to_luma8();
        if g.dimensions() != (s, s) {
            g = image::imageops::resize(&g, s, s, FilterType::Triangle);
        }
        (g.into_raw(), 1)
    } else {
        let mut rgb = img.to_rgb8();
        if rgb.dimensions() != (s, s) {
            rgb = image::imageops::resize(&rgb, s, s, FilterType::Triangle);
        }
        (rgb.into_raw(), 3)
    };
    // Interleaved HWC → planar CHW.
    let hw = size * size;
    let mut chw = vec![0u8; channels * hw];
    for (p, px) in raw.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * hw + p] = v;
        }
    }
    Ok(chw)
}

/// The JPEG decoder fills a truncated scan with grey and succeeds; refuse a JPEG whose last scan
/// (the last SOS marker, `FF DA`) is not followed by the end-of-image marker (`FF D9`). Inside
/// entropy-coded data `FF` is always followed by `00` or a restart marker, so neither pair can
/// appear there by chance.
fn check_jpeg_complete(path: &Path) -> Result<()> {
    let bytes = crate::limits::read_bounded(path, crate::limits::MAX_DATA_FILE_BYTES)?;
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xff, marker]);
    match (last(0xda), last(0xd9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        _ => Err(Error::format(path, "truncated JPEG: no end-of-image marker after the last scan")),
    }
}
