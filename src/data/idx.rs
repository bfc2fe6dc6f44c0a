//! IDX files as used by MNIST and Fashion-MNIST: a big-endian header (magic `00 00 08 NDIMS`,
//! then NDIMS u32 sizes) followed by raw u8 data. Files may be gzip-compressed, which is
//! detected by the `1f 8b` magic rather than by name.

use super::{Dataset, Split};
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
        stream: None,
        preset_norm: None,
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

/// Deflate cannot expand data by more than this factor; a header claiming more data than that
/// from the compressed file's length is refused before anything is inflated.
const MAX_GZIP_RATIO: u64 = 1100;

/// Reads an IDX file (plain or gzip) as a stream: the header first, whose claimed data size is
/// checked against the ceilings and the file's real length *before* the data is read, then
/// exactly that many bytes (a stream that yields more or fewer is refused). A gzip bomb therefore
/// costs at most the declared size, never what it would inflate to.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    use crate::limits::{MAX_DATASET_BYTES, MAX_DATA_FILE_BYTES};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, "not a regular file"));
    }
    let file_len = meta.len();
    if file_len > MAX_DATA_FILE_BYTES {
        return Err(Error::format(path, format!("{file_len} bytes is larger than the {MAX_DATA_FILE_BYTES} accepted")));
    }
    let mut buffered = std::io::BufReader::new(file);
    let gzip = {
        use std::io::BufRead;
        buffered.fill_buf().map_err(|e| Error::io(path, e))?.starts_with(&[0x1f, 0x8b])
    };
    let mut reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
    let stream_err = |e: std::io::Error| {
        if gzip {
            Error::format(path, format!("invalid gzip data: {e}"))
        } else {
            Error::io(path, e)
        }
    };
    // Up to 4 + 4 * 255 header bytes; read the magic first to know how many.
    let mut head = [0u8; 4];
    let got = read_up_to(&mut reader, &mut head).map_err(stream_err)?;
    if got < 4 {
        return Err(Error::format(path, format!("truncated: {got} bytes, too short for an IDX header")));
    }
    let found = u32::from_be_bytes(head);
    if found != magic {
        return Err(Error::format(path, format!("bad magic 0x{found:08x}, expected 0x{magic:08x} (IDX {what})")));
    }
    let ndims = (magic & 0xff) as usize;
    let mut dims_raw = vec![0u8; 4 * ndims];
    let got = read_up_to(&mut reader, &mut dims_raw).map_err(stream_err)?;
    if got < dims_raw.len() {
        return Err(Error::format(
            path,
            format!("truncated: {} bytes, too short for the {}-byte IDX header", 4 + got, 4 + 4 * ndims),
        ));
    }
    let dims: Vec<usize> =
        dims_raw.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let declared = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let declared = match declared {
        Some(d) if d <= MAX_DATASET_BYTES => d,
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "header declares {} bytes of {what}, more than the {MAX_DATASET_BYTES}-byte ceiling on a dataset",
                    dims_str(&dims)
                ),
            ))
        }
    };
    let header_len = 4 + 4 * ndims as u64;
    let available = if gzip { file_len.saturating_mul(MAX_GZIP_RATIO) } else { file_len - header_len };
    if declared > available {
        return Err(Error::format(
            path,
            format!(
                "truncated: header declares {} = {declared} bytes of data but the {}file of {file_len} bytes cannot hold them",
                dims_str(&dims),
                if gzip { "compressed " } else { "" }
            ),
        ));
    }
    let mut data = Vec::new();
    reader.by_ref().take(declared).read_to_end(&mut data).map_err(stream_err)?;
    if (data.len() as u64) < declared {
        return Err(Error::format(
            path,
            format!(
                "truncated: header declares {} = {declared} bytes of data but only {} follow",
                dims_str(&dims),
                data.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    if read_up_to(&mut reader, &mut extra).map_err(stream_err)? > 0 {
        return Err(Error::format(
            path,
            format!("header declares {} = {declared} bytes of data but more follow", dims_str(&dims)),
        ));
    }
    Ok((dims, data))
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn dims_str(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Returns `(n, rows, cols, pixels)`.
fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, data) = read_idx(path, IMAGES_MAGIC, "u8 images")?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::format(path, format!("images of {rows}x{cols} pixels")));
    }
    if rows > crate::limits::MAX_IMAGE_SIDE || cols > crate::limits::MAX_IMAGE_SIDE {
        return Err(Error::format(
            path,
            format!("images of {rows}x{cols} pixels; at most {} a side is accepted", crate::limits::MAX_IMAGE_SIDE),
        ));
    }
    if n == 0 {
        return Err(Error::format(path, "holds 0 images"));
    }
    Ok((n, rows, cols, data))
}

fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let (_, data) = read_idx(path, LABELS_MAGIC, "u8 labels")?;
    if let Some((i, &l)) = data.iter().enumerate().find(|&(_, &l)| l as usize >= NUM_CLASSES) {
        return Err(Error::format(path, format!("label {l} at index {i} is out of range (expected < {NUM_CLASSES})")));
    }
    Ok(data.iter().map(|&l| l as u32).collect())
}
