//! ImageNet-style image transforms, written to give torchvision's results bit for bit on the PIL
//! path (`torchvision.transforms` applied to a `PIL.Image`, which is what `ImageFolder` yields):
//!
//! - [`resize`] is Pillow's `Image.resize(..., BILINEAR)`: a separable triangle filter whose
//!   support widens with the downscaling factor (antialiased), coefficients rounded to 22-bit fixed
//!   point, horizontal pass first, each pass rounded to `u8` (Pillow's `Resample.c`).
//! - [`random_resized_crop_box`] is `RandomResizedCrop.get_params` (scale 0.08-1, ratio 3/4-4/3,
//!   ten attempts, then the central-crop fallback), with Python's round-half-to-even.
//! - [`eval_transform`] is `Resize(round(size * 8 / 7))` then `CenterCrop(size)` (256 then 224).
//!
//! Images here are interleaved (HWC) `u8`, 1 or 3 channels, as decoders give them.

use super::Normalization;
use rand::Rng;

/// torchvision's ImageNet channel means (`transforms.Normalize` in its reference scripts).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// RandomResizedCrop's defaults: the crop covers 8% to 100% of the image area...
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// ...with an aspect ratio (width / height) between 3/4 and 4/3, drawn log-uniformly.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// torchvision's ImageNet normalisation for `channels` channels (1 channel: the means of the three).
pub fn imagenet_normalization(channels: usize) -> Normalization {
    if channels == 3 {
        return Normalization { mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec() };
    }
    let m = IMAGENET_MEAN.iter().sum::<f32>() / 3.0;
    let s = IMAGENET_STD.iter().sum::<f32>() / 3.0;
    Normalization { mean: vec![m; channels], std: vec![s; channels] }
}

/// How images are augmented and brought to the model's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AugmentKind {
    /// The whole image resized to the square size; no augmentation.
    None,
    /// The whole image resized to the square size; training adds a pad-4 random crop and a flip
    /// (the CIFAR recipe).
    Cifar,
    /// Training: RandomResizedCrop then a horizontal flip, from the original image. Evaluation:
    /// resize the shorter side to size x 8/7, then a center crop. ImageNet mean and std.
    Imagenet,
}

impl AugmentKind {
    /// `--augment auto`: `Imagenet` for image folders read at 64x64 or more, else `Cifar`.
    pub fn auto(is_folder: bool, image_size: usize) -> AugmentKind {
        if is_folder && image_size >= 64 {
            AugmentKind::Imagenet
        } else {
            AugmentKind::Cifar
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AugmentKind::None => "none",
            AugmentKind::Cifar => "cifar",
            AugmentKind::Imagenet => "imagenet",
        }
    }
}

/// An interleaved (HWC) 8-bit image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// 1 (luma) or 3 (RGB).
    pub channels: usize,
    /// `height * width * channels` bytes, row-major, channels interleaved.
    pub data: Vec<u8>,
}

impl Image {
    /// Panics unless `data` holds exactly `height * width * channels` bytes.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Image {
        assert_eq!(data.len(), width * height * channels, "Image::new: wrong byte count");
        Image { width, height, channels, data }
    }

    /// The `height x width` window at (`top`, `left`). Panics unless it lies inside the image.
    pub fn crop(&self, b: CropBox) -> Image {
        assert!(b.top + b.height <= self.height && b.left + b.width <= self.width, "crop box outside the image");
        let c = self.channels;
        let mut data = Vec::with_capacity(b.height * b.width * c);
        for y in b.top..b.top + b.height {
            let row = (y * self.width + b.left) * c;
            data.extend_from_slice(&self.data[row..row + b.width * c]);
        }
        Image { width: b.width, height: b.height, channels: c, data }
    }

    /// Mirrored left to right.
    pub fn hflip(&self) -> Image {
        let c = self.channels;
        let mut data = Vec::with_capacity(self.data.len());
        for row in self.data.chunks_exact(self.width * c) {
            for px in row.chunks_exact(c).rev() {
                data.extend_from_slice(px);
            }
        }
        Image { data, ..*self }
    }

    /// Planar CHW bytes, appended to `out`.
    pub fn extend_chw(&self, out: &mut Vec<u8>) {
        let (c, hw) = (self.channels, self.width * self.height);
        let start = out.len();
        out.resize(start + c * hw, 0);
        let dst = &mut out[start..];
        for (p, px) in self.data.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * hw + p] = v;
            }
        }
    }
}

/// A crop window in pixels, as torchvision's `(i, j, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Python's `round()`: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3/4, 4/3))` for a
/// `width x height` image: up to ten draws of an area fraction and a log-uniform aspect ratio
/// until the box fits, then a central crop clamped to the ratio range.
pub fn random_resized_crop_box(width: usize, height: usize, rng: &mut impl Rng) -> CropBox {
    let area = (width * height) as f64;
    let (lo, hi) = (RRC_RATIO.0.ln(), RRC_RATIO.1.ln());
    for _ in 0..10 {
        let target_area = area * (RRC_SCALE.0 + (RRC_SCALE.1 - RRC_SCALE.0) * rng.random::<f64>());
        let aspect = (lo + (hi - lo) * rng.random::<f64>()).exp();
        let w = round_half_even((target_area * aspect).sqrt());
        let h = round_half_even((target_area / aspect).sqrt());
        if w > 0.0 && h > 0.0 && w <= width as f64 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < RRC_RATIO.0 {
        (width, (round_half_even(width as f64 / RRC_RATIO.0) as usize).clamp(1, height))
    } else if in_ratio > RRC_RATIO.1 {
        ((round_half_even(height as f64 * RRC_RATIO.1) as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// Training transform: RandomResizedCrop to `size x size`, then a horizontal flip with
/// probability 1/2. Returns the image, the box and whether it was flipped.
pub fn train_transform(img: &Image, size: usize, flip: bool, rng: &mut impl Rng) -> (Image, CropBox, bool) {
    let b = random_resized_crop_box(img.width, img.height, rng);
    let flipped = flip && rng.random::<bool>();
    let out = resize(&img.crop(b), size, size);
    (if flipped { out.hflip() } else { out }, b, flipped)
}

/// The side the shorter edge is resized to before the evaluation center crop: `size x 8/7`
/// rounded (256 for 224).
pub fn eval_resize_side(size: usize) -> usize {
    (size * 8 + 3) / 7
}

/// torchvision's `Resize(s)` output size for an int `s`: the shorter side becomes `s`, the longer
/// `int(s * long / short)`.
pub fn shorter_side_size(width: usize, height: usize, s: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = ((s * long) as f64 / short as f64) as usize;
    if width <= height {
        (s, new_long)
    } else {
        (new_long, s)
    }
}

/// torchvision's `CenterCrop(size)` box on a `width x height` image at least that large
/// (`int(round((H - size) / 2))`, Python rounding).
pub fn center_crop_box(width: usize, height: usize, size: usize) -> CropBox {
    let top = round_half_even((height - size) as f64 / 2.0) as usize;
    let left = round_half_even((width - size) as f64 / 2.0) as usize;
    CropBox { top, left, height: size, width: size }
}

/// Evaluation transform: `Resize(eval_resize_side(size))` then `CenterCrop(size)`.
pub fn eval_transform(img: &Image, size: usize) -> Image {
    let (w, h) = shorter_side_size(img.width, img.height, eval_resize_side(size));
    let r = resize(img, w.max(size), h.max(size));
    r.crop(center_crop_box(r.width, r.height, size))
}

// ---- Pillow's bilinear resampling -------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input index, the number of taps, and the taps (fixed point).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` with the bilinear (triangle) filter over `[0, in_size)`, then
/// `normalize_coeffs_8bpc`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut pre = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; both values are > -1 here, so max(0) is exact.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, p) in pre.iter_mut().enumerate().take(xmax) {
            let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
            let w = if t < 1.0 { 1.0 - t } else { 0.0 };
            *p = w;
            ww += w;
        }
        for (x, &p) in pre.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { p / ww } else { p };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((out_w, out_h), Image.BILINEAR)` on an 8-bit L or RGB image.
pub fn resize(img: &Image, out_w: usize, out_h: usize) -> Image {
    let c = img.channels;
    let need_h = out_w != img.width;
    let need_v = out_h != img.height;
    if !need_h && !need_v {
        return img.clone();
    }
    let cv = coeffs(img.height, out_h);
    // Horizontal pass over the rows the vertical pass reads.
    let (tmp, tmp_w, row0) = if need_h {
        let ch = coeffs(img.width, out_w);
        let first = cv.bounds[0].0;
        let last = cv.bounds[out_h - 1].0 + cv.bounds[out_h - 1].1;
        let (first, last) = if need_v { (first, last) } else { (0, img.height) };
        let mut tmp = vec![0u8; (last - first) * out_w * c];
        let half = 1i32 << (PRECISION_BITS - 1);
        for (y, out_row) in tmp.chunks_exact_mut(out_w * c).enumerate() {
            let in_row = &img.data[(y + first) * img.width * c..(y + first + 1) * img.width * c];
            for (xx, px) in out_row.chunks_exact_mut(c).enumerate() {
                let (xmin, n) = ch.bounds[xx];
                let k = &ch.k[xx * ch.ksize..xx * ch.ksize + n];
                let src = &in_row[xmin * c..(xmin + n) * c];
                if c == 3 {
                    let (mut s0, mut s1, mut s2) = (half, half, half);
                    for (&w, p) in k.iter().zip(src.chunks_exact(3)) {
                        s0 += p[0] as i32 * w;
                        s1 += p[1] as i32 * w;
                        s2 += p[2] as i32 * w;
                    }
                    px[0] = clip8(s0);
                    px[1] = clip8(s1);
                    px[2] = clip8(s2);
                } else {
                    for ch_i in 0..c {
                        let mut s = half;
                        for (x, &w) in k.iter().enumerate() {
                            s += src[x * c + ch_i] as i32 * w;
                        }
                        px[ch_i] = clip8(s);
                    }
                }
            }
        }
        (tmp, out_w, first)
    } else {
        (img.data.clone(), img.width, 0)
    };
    if !need_v {
        return Image { width: tmp_w, height: img.height, channels: c, data: tmp };
    }
    let row_len = tmp_w * c;
    let mut out = vec![0u8; out_h * row_len];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = cv.bounds[yy];
        let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
        acc.fill(half);
        for (y, &w) in k.iter().enumerate() {
            let r = ymin + y - row0;
            let in_row = &tmp[r * row_len..(r + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Image { width: tmp_w, height: out_h, channels: c, data: out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn python_rounding() {
        for (x, r) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (2.4, 2.0), (2.6, 3.0), (3.0, 3.0)] {
            assert_eq!(round_half_even(x), r, "{x}");
        }
    }

    #[test]
    fn crop_boxes_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (w, h) in [(500, 375), (375, 500), (224, 224), (3, 200), (200, 3), (1, 1), (4000, 16)] {
            for _ in 0..500 {
                let b = random_resized_crop_box(w, h, &mut rng);
                assert!(b.width >= 1 && b.height >= 1 && b.left + b.width <= w && b.top + b.height <= h, "{b:?}");
            }
        }
    }

    #[test]
    fn identity_and_constant_resizes() {
        let img = Image::new(5, 4, 3, (0..60).map(|i| (i * 4) as u8).collect());
        assert_eq!(resize(&img, 5, 4), img);
        let flat = Image::new(37, 23, 3, vec![77; 37 * 23 * 3]);
        for (w, h) in [(8, 8), (100, 3), (37, 50), (1, 1)] {
            assert!(resize(&flat, w, h).data.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn eval_sizes() {
        assert_eq!(eval_resize_side(224), 256);
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(center_crop_box(341, 256, 224), CropBox { top: 16, left: 58, height: 224, width: 224 });
        let img = Image::new(500, 375, 3, vec![9; 500 * 375 * 3]);
        let out = eval_transform(&img, 224);
        assert_eq!((out.width, out.height), (224, 224));
    }
}
