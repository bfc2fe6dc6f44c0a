//! torchvision's ResNets (`torchvision/models/resnet.py`): a 7x7 stride-2 stem and a padded 3x3
//! stride-2 max pool, four stages of basic (ResNet-18/34) or bottleneck (ResNet-50 and up)
//! blocks, projection shortcuts (`downsample`: 1x1 conv + BN) where a block changes the shape,
//! then a global average pool and `fc`. ResNeXt and wide ResNets are the bottleneck net with
//! `groups` and `width_per_group` (the 3x3's width is `planes * width_per_group / 64 * groups`).
//!
//! Width slots: `conv1` (the stem, when layer1 starts with a projection), one `layerN stream` per
//! stage (every conv writing into the stage's residual stream), and each block's inner widths
//! (`layerN.M.conv1`, and `layerN.M.conv2` in bottlenecks).

use super::{Builder, ModelFamily, Width};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

pub struct ResNet {
    block: Block,
    layers: [usize; 4],
    groups: usize,
    width_per_group: usize,
}

/// `resnet18|34|50|101|152`, `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d`,
/// `wide_resnet50_2`, `wide_resnet101_2`, and any `resnext<50|101|152>_<G>x<W>d`.
pub fn parse(name: &str) -> Option<Result<Box<dyn ModelFamily>>> {
    let depth_layers = |d: &str| -> Option<(Block, [usize; 4])> {
        Some(match d {
            "18" => (Block::Basic, [2, 2, 2, 2]),
            "34" => (Block::Basic, [3, 4, 6, 3]),
            "50" => (Block::Bottleneck, [3, 4, 6, 3]),
            "101" => (Block::Bottleneck, [3, 4, 23, 3]),
            "152" => (Block::Bottleneck, [3, 8, 36, 3]),
            _ => return None,
        })
    };
    let net = |block, layers, groups, width_per_group| {
        Some(Ok(Box::new(ResNet { block, layers, groups, width_per_group }) as Box<dyn ModelFamily>))
    };
    if let Some(d) = name.strip_prefix("resnet") {
        let (block, layers) = depth_layers(d)?;
        return net(block, layers, 1, 64);
    }
    if let Some(rest) = name.strip_prefix("wide_resnet") {
        let (d, k) = rest.split_once('_')?;
        let (block, layers) = depth_layers(d)?;
        let k: usize = k.parse().ok().filter(|&k| (1..=16).contains(&k))?;
        return (block == Block::Bottleneck).then(|| net(block, layers, 1, 64 * k)).flatten();
    }
    if let Some(rest) = name.strip_prefix("resnext") {
        let (d, gw) = rest.split_once('_')?;
        let (block, layers) = depth_layers(d)?;
        let (g, w) = gw.strip_suffix('d')?.split_once('x')?;
        let (g, w): (usize, usize) = (g.parse().ok()?, w.parse().ok()?);
        if block != Block::Bottleneck || !(1..=256).contains(&g) || !(1..=256).contains(&w) {
            return None;
        }
        return net(block, layers, g, w);
    }
    None
}

impl ModelFamily for ResNet {
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
        let e = self.block.expansion();
        let planes = [64, 128, 256, 512];
        // layer1 starts with a projection unless its blocks keep the stem's 64 channels.
        let stem_projected = 64 != planes[0] * e;
        let stem_slot = if stem_projected { Some(b.slot("conv1", 64)?) } else { None };
        let mut streams = Vec::with_capacity(4);
        for (s, &p) in planes.iter().enumerate() {
            streams.push(b.slot(format!("layer{} stream", s + 1), p * e)?);
        }
        let inner_width = |p: usize| p * self.width_per_group / 64 * self.groups;
        let mut inner = Vec::new();
        for (s, &n) in self.layers.iter().enumerate() {
            for blk in 0..n {
                let w = inner_width(planes[s]);
                let conv1 = b.slot(format!("layer{}.{blk}.conv1", s + 1), w)?;
                let conv2 = match self.block {
                    Block::Basic => None,
                    Block::Bottleneck => Some(b.slot(format!("layer{}.{blk}.conv2", s + 1), w)?),
                };
                inner.push((conv1, conv2));
            }
        }
        let mut x = b.conv("conv1", b.input(), stem_slot.unwrap_or(streams[0]), 7, 2, 3)?;
        x = b.bn("bn1", x)?;
        x = b.relu("relu", x);
        x = b.maxpool("maxpool", x, 3, 2, 1)?;
        let mut inner = inner.into_iter();
        for (s, &n) in self.layers.iter().enumerate() {
            for blk in 0..n {
                let p = format!("layer{}.{blk}", s + 1);
                let stride = if s > 0 && blk == 0 { 2 } else { 1 };
                let (w1, w2) = inner.next().expect("one entry per block");
                // The shortcut first, so that the block's last conv, its BN and the add fuse.
                // From the config, never from (possibly pruned) widths: the structure is fixed.
                let skip = if blk == 0 && (stride != 1 || (s == 0 && stem_projected)) {
                    let d = b.conv(&format!("{p}.downsample.0"), x, streams[s], 1, stride, 0)?;
                    b.bn(&format!("{p}.downsample.1"), d)?
                } else {
                    x
                };
                let mut y = match (self.block, w2) {
                    (Block::Basic, _) => {
                        let y = b.conv(&format!("{p}.conv1"), x, w1, 3, stride, 1)?;
                        let y = b.bn(&format!("{p}.bn1"), y)?;
                        let y = b.relu(&format!("{p}.relu1"), y);
                        b.conv(&format!("{p}.conv2"), y, streams[s], 3, 1, 1)?
                    }
                    (Block::Bottleneck, w2) => {
                        let y = b.conv(&format!("{p}.conv1"), x, w1, 1, 1, 0)?;
                        let y = b.bn(&format!("{p}.bn1"), y)?;
                        let y = b.relu(&format!("{p}.relu1"), y);
                        let w2 = w2.unwrap_or(w1);
                        let y = b.conv_grouped(&format!("{p}.conv2"), y, w2, 3, stride, 1, self.groups)?;
                        let y = b.bn(&format!("{p}.bn2"), y)?;
                        let y = b.relu(&format!("{p}.relu2"), y);
                        b.conv(&format!("{p}.conv3"), y, streams[s], 1, 1, 0)?
                    }
                };
                let last_bn = match self.block {
                    Block::Basic => "bn2",
                    Block::Bottleneck => "bn3",
                };
                y = b.bn(&format!("{p}.{last_bn}"), y)?;
                x = b.add(&format!("{p}.add"), y, skip, true)?;
            }
        }
        x = b.global_avgpool("avgpool", x)?;
        b.linear("fc", x, Width::Fixed(classes))?;
        Ok(())
    }
}
