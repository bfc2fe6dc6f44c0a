//! CIFAR ResNets (He et al. 2016, section 4.2): depth `6n + 2`, three stages of n basic blocks
//! at 16, 32 and 64 channels, option-A (parameter-free, zero-padding) shortcuts.

use super::{Builder, ModelFamily, Width};
use crate::error::{Error, Result};

pub struct CifarResNet {
    /// Basic blocks per stage.
    blocks: usize,
}

/// `resnet<6n+2>` (or `cifar_resnet<6n+2>`, for depths torchvision also names).
pub fn parse(name: &str) -> Option<Result<Box<dyn ModelFamily>>> {
    let d = name.strip_prefix("cifar_resnet").or_else(|| name.strip_prefix("resnet"))?;
    let depth: usize = d.parse().ok()?;
    if depth > crate::limits::MAX_RESNET_DEPTH {
        return Some(Err(Error::Invalid(format!(
            "model '{name}': depth {depth} is deeper than the {} this engine builds",
            crate::limits::MAX_RESNET_DEPTH
        ))));
    }
    if depth < 8 || !(depth - 2).is_multiple_of(6) {
        return None;
    }
    Some(Ok(Box::new(CifarResNet { blocks: (depth - 2) / 6 })))
}

impl ModelFamily for CifarResNet {
    fn build(&self, b: &mut Builder, classes: usize) -> Result<()> {
        let n = self.blocks;
        // The three streams first, then each block's inner width: the slot order checkpoints use.
        let streams = [b.slot("layer1 stream", 16)?, b.slot("layer2 stream", 32)?, b.slot("layer3 stream", 64)?];
        let mut inner = Vec::with_capacity(3 * n);
        for stage in 1..=3 {
            for blk in 0..n {
                inner.push(b.slot(format!("layer{stage}.{blk}.conv1"), 16 << (stage - 1))?);
            }
        }
        let mut x = b.conv("conv1", b.input(), streams[0], 3, 1, 1)?;
        x = b.bn("bn1", x)?;
        x = b.relu("relu", x);
        for stage in 1..=3 {
            let stream = streams[stage - 1];
            for blk in 0..n {
                let p = format!("layer{stage}.{blk}");
                let stride = if stage > 1 && blk == 0 { 2 } else { 1 };
                let mut y = b.conv(&format!("{p}.conv1"), x, inner[(stage - 1) * n + blk], 3, stride, 1)?;
                y = b.bn(&format!("{p}.bn1"), y)?;
                y = b.relu(&format!("{p}.relu1"), y);
                y = b.conv(&format!("{p}.conv2"), y, stream, 3, 1, 1)?;
                y = b.bn(&format!("{p}.bn2"), y)?;
                let (in_c, out_c) = (b.channels(x), b.channels(y));
                let skip = if stride != 1 || in_c != out_c {
                    b.shortcut(&format!("{p}.shortcut"), x, out_c, stride)?
                } else {
                    x
                };
                x = b.add(&format!("{p}.add"), y, skip, true)?;
            }
        }
        x = b.global_avgpool("avgpool", x)?;
        b.linear("linear", x, Width::Fixed(classes))?;
        Ok(())
    }

    /// PyTorch CIFAR codes call the classifier `linear` or `fc`; option-B shortcuts have
    /// parameters this family does not.
    fn import_renames(&self, names: &[&str]) -> std::result::Result<Vec<(String, String)>, String> {
        let found = (0..).take_while(|blk| names.contains(&format!("layer1.{blk}.conv1.weight").as_str())).count();
        if found != self.blocks && found > 0 {
            return Err(format!(
                "the file has {found} blocks per stage (resnet{}), not the {} of resnet{}",
                6 * found + 2,
                self.blocks,
                6 * self.blocks + 2
            ));
        }
        if let Some(k) = names.iter().find(|k| k.contains(".shortcut.0.") || k.contains(".downsample.")) {
            return Err(format!(
                "tensor {k} belongs to a 1x1-conv (option-B) shortcut; lfgcl's CIFAR ResNets use \
                 parameter-free option-A shortcuts, so this net cannot be imported (torchvision's \
                 ResNets are resnet18, resnet34, resnet50, ...)"
            ));
        }
        let has_fc = names.iter().any(|k| k.starts_with("fc."));
        if has_fc && names.iter().any(|k| k.starts_with("linear.")) {
            return Err("holds both fc.* and linear.* classifiers".into());
        }
        Ok(if has_fc { vec![("fc.".into(), "linear.".into())] } else { vec![] })
    }
}
