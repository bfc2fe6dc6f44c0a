//! IDX files as used by MNIST and Fashion-MNIST: a big-endian header (magic `00 00 08 NDIMS`,
//! then NDIMS u32 sizes) followed by raw u8 data. Files may be gzip-compressed, which is
//! detected by the `1f 8b` magic rather than by name.

use super::{read_file, Dataset, Split};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const NUM_CLASSES: usize = 10;

/// Loads one split of an MNIST-like IDX directory. `hint` is appended to a missing-file error
/// (how to install the default dataset).
pub(super) fn load(
    dir: &Path,
    split: Split,
    family: &str,
    class_names: Vec<String>,
    hint: Option<&str>,
) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find(dir, prefix, "images", 3, hint)?;
    let labels_path = find(dir, prefix, "labels", 1, hint)?;
    let (n, rows, cols, images) = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if labels.len() != n {
        return Err(Error::format(
            &labels_path,
            format!("holds {} labels but {} holds {n} images", labels.len(), images_path.display()),
        ));
    }
    Ok(Dataset {
        name: format!("{family}/{split}"),
        channels: 1,
        height: rows,
        width: cols,
        images,
        labels: Some(labels),
        num_classes: NUM_CLASSES,
        class_names,
    })
}

/// Finds `{prefix}-{kind}-idx{d}-ubyte` in any of its common spellings (`-` or `.` before
/// `idx`, with or without `.gz`).
fn find(dir: &Path, prefix: &str, kind: &str, d: u32, hint: Option<&str>) -> Result<PathBuf> {
    let candidates = [
        format!("{prefix}-{kind}-idx{d}-ubyte"),
        format!("{prefix}-{kind}-idx{d}-ubyte.gz"),
        format!("{prefix}-{kind}.idx{d}-ubyte"),
        format!("{prefix}-{kind}.idx{d}-ubyte.gz"),
    ];
    if let Some(p) = candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file()) {
        return Ok(p);
    }
    let mut msg = "not found (also looked for .gz and '.idx' spellings)".to_string();
    if !dir.is_dir() {
        msg = format!("not found (directory {} does not exist)", dir.display());
    }
    if let Some(h) = hint {
        msg.push_str(&format!("; install it with: {h}"));
    }
    Err(Error::format(dir.join(&candidates[0]), msg))
}

/// Reads a file, gunzipping it if it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = read_file(path)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("corrupt gzip data: {e}")))?;
    Ok(out)
}

/// Parses the header: checks the magic and returns the dimension sizes and the data after it.
fn parse<'a>(path: &Path, bytes: &'a [u8], magic: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(Error::format(path, format!("truncated: {} bytes, too short for an IDX header", bytes.len())));
    }
    let found = be(0);
    if found != magic {
        return Err(Error::format(path, format!("bad magic 0x{found:08x}, expected 0x{magic:08x} (IDX {what})")));
    }
    if bytes.len() < header_len {
        return Err(Error::format(
            path,
            format!("truncated: {} bytes, too short for the {header_len}-byte IDX header", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims).map(|k| be(4 + 4 * k) as usize).collect();
    let data = &bytes[header_len..];
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected {
        Some(e) if e == data.len() => Ok((dims, data)),
        Some(e) if e > data.len() => Err(Error::format(
            path,
            format!(
                "truncated: header declares {} = {e} bytes of data but only {} follow",
                dims_str(&dims),
                data.len()
            ),
        )),
        Some(e) => Err(Error::format(
            path,
            format!("header declares {} = {e} bytes of data but {} follow", dims_str(&dims), data.len()),
        )),
        None => Err(Error::format(path, format!("header declares impossible sizes {}", dims_str(&dims)))),
    }
}

fn dims_str(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Returns `(n, rows, cols, pixels)`.
fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let (dims, data) = parse(path, &bytes, IMAGES_MAGIC, "u8 images")?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::format(path, format!("images of {rows}x{cols} pixels")));
    }
    Ok((n, rows, cols, data.to_vec()))
}

fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse(path, &bytes, LABELS_MAGIC, "u8 labels")?;
    if let Some((i, &l)) = data.iter().enumerate().find(|&(_, &l)| l as usize >= NUM_CLASSES) {
        return Err(Error::format(path, format!("label {l} at index {i} is out of range (expected < {NUM_CLASSES})")));
    }
    Ok(data.iter().map(|&l| l as u32).collect())
}
