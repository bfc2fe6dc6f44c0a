//! Image folders of PNG/JPEG files, in the torchvision `ImageFolder` layout:
//!
//! - `DIR/<class>/**/*.png` → labeled, classes are the sorted subfolder names;
//! - `DIR/*.png` → unlabeled;
//! - `DIR/train/...` with `DIR/test/...` (or `DIR/val/...`) → the subfolder of the split.
//!
//! Hidden entries (names starting with `.`) are skipped, which also skips macOS `._x.png`
//! resource forks that are not images.

use super::{Dataset, OpenOptions, Split};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
const LOOKED_FOR: &str = "looked for *.png, *.jpg, *.jpeg, any case";

pub(super) fn load(dir: &Path, split: Split, opts: &OpenOptions) -> Result<Dataset> {
    if !dir.is_dir() {
        let what = if dir.exists() { "not a directory" } else { "not found" };
        return Err(Error::format(dir, what));
    }
    let dir = split_dir(dir, split);
    let (files, labels, class_names) = scan(&dir)?;
    let keep = select(files.len(), opts.limit);
    let files: Vec<&PathBuf> = keep.iter().map(|&i| &files[i]).collect();
    let labels = labels.map(|l| keep.iter().map(|&i| l[i]).collect::<Vec<u32>>());

    let size = opts.image_size;
    let channels = if opts.grayscale { 1 } else { 3 };
    let decoded: Vec<Result<Vec<u8>>> = files.par_iter().map(|p| decode(p, size, opts.grayscale)).collect();
    let mut images = Vec::with_capacity(files.len() * channels * size * size);
    // Collected first, then checked in order, so the error reported is always the same one.
    for img in decoded {
        images.extend_from_slice(&img?);
    }
    Ok(Dataset {
        name: format!("folder:{}", dir.display()),
        channels,
        height: size,
        width: size,
        images,
        num_classes: class_names.len(),
        labels,
        class_names,
    })
}

/// `DIR/train` for the train split and `DIR/test` (or `DIR/val`) for the test split, when `DIR`
/// has both; `DIR` itself otherwise.
fn split_dir(dir: &Path, split: Split) -> PathBuf {
    let train = dir.join("train");
    let test = ["test", "val"].iter().map(|s| dir.join(s)).find(|p| p.is_dir());
    match (train.is_dir(), test, split) {
        (true, Some(_), Split::Train) => train,
        (true, Some(test), Split::Test) => test,
        _ => dir.to_path_buf(),
    }
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
fn decode(path: &Path, size: usize, grayscale: bool) -> Result<Vec<u8>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        // Sniff the content: a JPEG saved as .png still decodes.
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
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
