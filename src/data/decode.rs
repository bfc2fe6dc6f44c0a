//! Decoding one image file to 8-bit RGB or luma, with every size checked before anything large
//! is allocated: the file's length, then the dimensions its header claims.
//!
//! JPEG goes straight through `zune-jpeg` (the decoder the `image` crate wraps; calling it
//! directly skips a copy and the format guessing: `lfgcl bench data` measures both), PNG through
//! `image`. Errors name the file.

use super::transforms::Image;
use crate::error::{Error, Result};
use std::path::Path;

/// Bytes of one image file.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Longest side of an image that is decoded (larger ones are refused from the header).
pub const MAX_DECODED_SIDE: usize = 16_384;
/// Decoded RGB bytes of one image (about 4,700 x 4,700; ImageNet's largest is under 3,000 on a
/// side). Decoding needs up to about three times this while it runs (progressive JPEGs keep
/// their coefficients), on each decoding thread.
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// Which decoder reads JPEG files (PNG always goes through `image`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegDecoder {
    Zune,
    Image,
}

/// Reads and decodes `path` (PNG or JPEG, sniffed from the content).
pub fn decode_file(path: &Path, grayscale: bool) -> Result<Image> {
    let bytes = crate::limits::read_bounded(path, MAX_IMAGE_FILE_BYTES)?;
    decode_bytes(path, &bytes, grayscale, JpegDecoder::Zune)
}

/// Decodes an in-memory file; `path` only names it in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8], grayscale: bool, jpeg: JpegDecoder) -> Result<Image> {
    let rgb = if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        check_jpeg_complete(path, bytes)?;
        match jpeg {
            JpegDecoder::Zune => decode_jpeg_zune(path, bytes)?,
            JpegDecoder::Image => decode_with_image(path, bytes, image::ImageFormat::Jpeg)?,
        }
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_with_image(path, bytes, image::ImageFormat::Png)?
    } else {
        return Err(Error::format(path, "not a PNG or JPEG file (unknown signature)"));
    };
    Ok(if grayscale { to_luma(rgb) } else { rgb })
}

fn check_dims(path: &Path, w: usize, h: usize) -> Result<()> {
    let bytes = (w as u64) * (h as u64) * 3;
    if w == 0 || h == 0 || w > MAX_DECODED_SIDE || h > MAX_DECODED_SIDE || bytes > MAX_DECODED_BYTES {
        return Err(Error::format(
            path,
            format!(
                "image of {w}x{h} pixels is refused (sides up to {MAX_DECODED_SIDE}, at most {} MB decoded)",
                MAX_DECODED_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

fn decode_jpeg_zune(path: &Path, bytes: &[u8]) -> Result<Image> {
    use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_DECODED_SIDE)
        .set_max_height(MAX_DECODED_SIDE);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let bad = |e: zune_jpeg::errors::DecodeErrors| Error::format(path, format!("cannot decode JPEG: {e:?}"));
    dec.decode_headers().map_err(bad)?;
    let (w, h) = dec.dimensions().ok_or_else(|| Error::format(path, "JPEG without a frame"))?;
    check_dims(path, w, h)?;
    let data = dec.decode().map_err(bad)?;
    if data.len() != w * h * 3 {
        return Err(Error::format(path, format!("JPEG decoded to {} bytes, not {w}x{h}x3", data.len())));
    }
    Ok(Image::new(w, h, 3, data))
}

fn decode_with_image(path: &Path, bytes: &[u8], format: image::ImageFormat) -> Result<Image> {
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| Error::format(path, format!("cannot read the image header: {e}")))?;
    check_dims(path, w as usize, h as usize)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(3 * MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Image::new(w as usize, h as usize, 3, rgb.into_raw()))
}

/// RGB to luma with the `image` crate's weights (what the in-memory folder loader uses).
fn to_luma(rgb: Image) -> Image {
    let buf = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data).expect("sizes checked");
    let g = image::DynamicImage::ImageRgb8(buf).to_luma8();
    Image::new(rgb.width, rgb.height, 1, g.into_raw())
}

/// The JPEG decoders fill a truncated scan with grey and succeed; refuse a JPEG whose last scan
/// (the last SOS marker, `FF DA`) is not followed by the end-of-image marker (`FF D9`). Inside
/// entropy-coded data `FF` is always followed by `00` or a restart marker, so neither pair can
/// appear there by chance.
pub(super) fn check_jpeg_complete(path: &Path, bytes: &[u8]) -> Result<()> {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xff, marker]);
    match (last(0xda), last(0xd9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        _ => Err(Error::format(path, "truncated JPEG: no end-of-image marker after the last scan")),
    }
}
