//! CIFAR-10 and CIFAR-100, "binary version". A record is the label byte(s) followed by 3072
//! pixel bytes: the 1024 red, then green, then blue values of a 32x32 image, rows in order.
//! That is already the planar CHW layout [`Dataset`] stores, so records are copied as they are.

use super::{read_file, Dataset, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const PIXELS: usize = 3 * 32 * 32;

const CIFAR10_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Layout of one CIFAR variant.
struct Variant {
    family: &'static str,
    /// Subdirectory the official archive extracts to.
    subdir: &'static str,
    /// Label bytes before the pixels; the last one is the label used.
    label_bytes: usize,
    /// Classes of each label byte, to range-check them.
    label_ranges: &'static [usize],
    names_file: &'static str,
}

const CIFAR10: Variant = Variant {
    family: "cifar10",
    subdir: "cifar-10-batches-bin",
    label_bytes: 1,
    label_ranges: &[10],
    names_file: "batches.meta.txt",
};

const CIFAR100: Variant = Variant {
    family: "cifar100",
    subdir: "cifar-100-binary",
    label_bytes: 2,
    label_ranges: &[20, 100],
    names_file: "fine_label_names.txt",
};

pub(super) fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    load(&CIFAR10, dir, split, &files)
}

pub(super) fn load_cifar100(dir: &Path, split: Split) -> Result<Dataset> {
    let file = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    };
    load(&CIFAR100, dir, split, &[file.to_string()])
}

fn load(v: &Variant, dir: &Path, split: Split, files: &[String]) -> Result<Dataset> {
    let dir = resolve_dir(v, dir, &files[0]);
    let record = v.label_bytes + PIXELS;
    let num_classes = *v.label_ranges.last().unwrap_or(&0);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        let path = dir.join(f);
        if !path.is_file() {
            return Err(Error::format(
                &path,
                format!("not found (expected the {} binary version in {})", v.family, dir.display()),
            ));
        }
        let bytes = read_file(&path)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::format(
                &path,
                format!("size {} bytes is not a whole number of {record}-byte records", bytes.len()),
            ));
        }
        let total = (images.len() + bytes.len() / record * PIXELS) as u64;
        if total > crate::limits::MAX_DATASET_BYTES {
            return Err(Error::format(
                &path,
                format!(
                    "brings the split to {total} pixel bytes, more than the {} accepted",
                    crate::limits::MAX_DATASET_BYTES
                ),
            ));
        }
        images.reserve(bytes.len() / record * PIXELS);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let (head, pixels) = rec.split_at(v.label_bytes);
            for (&l, &range) in head.iter().zip(v.label_ranges) {
                if l as usize >= range {
                    return Err(Error::format(
                        &path,
                        format!("label {l} in record {i} is out of range (expected < {range})"),
                    ));
                }
            }
            labels.push(head[v.label_bytes - 1] as u32);
            images.extend_from_slice(pixels);
        }
    }
    Ok(Dataset {
        name: format!("{}/{split}", v.family),
        channels: 3,
        height: 32,
        width: 32,
        images,
        labels: Some(labels),
        num_classes,
        class_names: class_names(v, &dir, num_classes)?,
        stream: None,
        preset_norm: None,
    })
}

/// `dir` may be the extracted directory itself or its parent.
fn resolve_dir(v: &Variant, dir: &Path, first_file: &str) -> PathBuf {
    let nested = dir.join(v.subdir);
    if !dir.join(first_file).exists() && nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Names from the optional names file (one per line); CIFAR-10 falls back to the official
/// names, CIFAR-100 to none.
fn class_names(v: &Variant, dir: &Path, num_classes: usize) -> Result<Vec<String>> {
    let path = dir.join(v.names_file);
    if !path.is_file() {
        return Ok(match v.family {
            "cifar10" => CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
            _ => Vec::new(),
        });
    }
    let text =
        String::from_utf8(read_file(&path)?).map_err(|_| Error::format(&path, "class names are not valid UTF-8"))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != num_classes {
        return Err(Error::format(&path, format!("has {} class names, expected {num_classes}", names.len())));
    }
    Ok(names)
}
