//! MobileNetV2 as torchvision builds it (`torchvision/models/mobilenetv2.py`): a 3x3 stride-2
//! stem, 17 inverted residual blocks (1x1 expansion, depthwise 3x3, linear 1x1 projection; a
//! residual add where a block keeps its shape), a 1x1 conv to 1280 channels, global average
//! pooling and `classifier.1` (`classifier.0` is dropout: the identity in eval, and left out).
//! Activations are ReLU6. Widths scale by a multiplier and round to multiples of 8 as torchvision's
//! `_make_divisible` does.
//!
//! Width slots: `features.0` (stem), each block's expansion `features.N.conv.0`, the output of
//! each row of the config table (`features.A-B stream` when its blocks add into it, `features.A
//! out` otherwise), and `features.18`.

use super::{Builder, ModelFamily, Width};
use crate::error::Result;

/// (expansion t, output channels c, blocks n, first stride s), torchvision's table.
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

pub struct MobileNetV2 {
    width_mult: f64,
}

/// `mobilenet_v2`, or `mobilenet_v2_<multiplier>` (`mobilenet_v2_0.5`).
pub fn parse(name: &str) -> Option<Result<Box<dyn ModelFamily>>> {
    let rest = name.strip_prefix("mobilenet_v2").or_else(|| name.strip_prefix("mobilenetv2"))?;
    let width_mult = match rest.strip_prefix('_') {
        None if rest.is_empty() => 1.0,
        Some(m) => m.parse::<f64>().ok().filter(|m| m.is_finite() && *m > 0.0 && *m <= 4.0)?,
        None => return None,
    };
    Some(Ok(Box::new(MobileNetV2 { width_mult })))
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, never more
/// than 10% below `v`.
fn make_divisible(v: f64) -> usize {
    let divisor = 8.0f64;
    let mut new_v = divisor.max(((v + divisor / 2.0) / divisor).floor() * divisor);
    if new_v < 0.9 * v {
        new_v += divisor;
    }
    new_v as usize
}

impl MobileNetV2 {
    /// conv -> BN -> ReLU6 under torchvision's `Conv2dNormActivation` names (`P.0`, `P.1`).
    fn conv_bn_relu6(b: &mut Builder, p: &str, x: usize, out: Option<Width>, k: usize, stride: usize) -> Result<usize> {
        let y = match out {
            Some(w) => b.conv(&format!("{p}.0"), x, w, k, stride, (k - 1) / 2)?,
            None => b.depthwise(&format!("{p}.0"), x, k, stride, (k - 1) / 2)?,
        };
        let y = b.bn(&format!("{p}.1"), y)?;
        Ok(b.relu6(&format!("{p}.2"), y))
    }
}

impl ModelFamily for MobileNetV2 {
    /// ImageNet's crops.
    fn default_input(&self) -> (usize, usize) {
        (3, 224)
    }
    /// Deployment runtimes' blocked kernels want widths in multiples of 8: pruned to odd widths,
    /// these nets ran slower in onnxruntime than unpruned (docs/real-nets.md).
    fn channel_multiple(&self) -> usize {
        8
    }

    fn build(&self, b: &mut Builder, classes: usize) -> Result<()> {
        let wm = self.width_mult;
        let stem_c = make_divisible(32.0 * wm);
        let last_c = make_divisible(1280.0 * wm.max(1.0));
        // Slots: stem, each row's output, each expansion, the last conv (network order within
        // each kind).
        let stem = b.slot("features.0", stem_c)?;
        let mut rows = Vec::new();
        let mut expansions = Vec::new();
        let mut residual = Vec::new();
        let (mut index, mut in_c, mut prev) = (1, stem_c, stem);
        for &(t, c, n, s) in &SETTINGS {
            let out_c = make_divisible(c as f64 * wm);
            // A first block that keeps its shape adds into the previous row's output: one space.
            let row = if s == 1 && in_c == out_c {
                prev
            } else if n > 1 {
                b.slot(format!("features.{}-{} stream", index, index + n - 1), out_c)?
            } else {
                b.slot(format!("features.{index} out"), out_c)?
            };
            rows.push(row);
            for i in 0..n {
                let block_in = if i == 0 { in_c } else { out_c };
                // torchvision adds the input back when the block keeps its (unpruned) shape.
                residual.push((if i == 0 { s } else { 1 }) == 1 && block_in == out_c);
                let hidden = (block_in as f64 * t as f64).round() as usize;
                let slot = if t != 1 { Some(b.slot(format!("features.{}.conv.0", index + i), hidden)?) } else { None };
                expansions.push(slot);
            }
            index += n;
            in_c = out_c;
            prev = row;
        }
        let last = b.slot(format!("features.{index}"), last_c)?;

        let mut x = Self::conv_bn_relu6(b, "features.0", b.input(), Some(stem), 3, 2)?;
        let (mut index, mut expansions, mut residual) = (1, expansions.into_iter(), residual.into_iter());
        for (&(_, _, n, s), &row) in SETTINGS.iter().zip(&rows) {
            for i in 0..n {
                let p = format!("features.{index}.conv");
                let stride = if i == 0 { s } else { 1 };
                let expansion = expansions.next().expect("one entry per block");
                let block_in = x;
                let mut m = 0;
                let mut y = x;
                if let Some(w) = expansion {
                    y = Self::conv_bn_relu6(b, &format!("{p}.{m}"), y, Some(w), 1, 1)?;
                    m += 1;
                }
                y = Self::conv_bn_relu6(b, &format!("{p}.{m}"), y, None, 3, stride)?;
                y = b.conv(&format!("{p}.{}", m + 1), y, row, 1, 1, 0)?;
                y = b.bn(&format!("{p}.{}", m + 2), y)?;
                x = if residual.next().expect("one entry per block") {
                    b.add(&format!("features.{index}.add"), y, block_in, false)?
                } else {
                    y
                };
                index += 1;
            }
        }
        x = Self::conv_bn_relu6(b, &format!("features.{index}"), x, Some(last), 1, 1)?;
        x = b.global_avgpool("avgpool", x)?;
        b.linear("classifier.1", x, Width::Fixed(classes))?;
        Ok(())
    }
}
