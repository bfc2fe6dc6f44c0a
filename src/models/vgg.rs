//! VGG-16 for CIFAR with batch norm (`features.N` as torchvision's `vgg16_bn`) and the
//! classifier of the CIFAR pruning papers: Linear(512, 512), BatchNorm1d, ReLU, Linear(512,
//! classes) (`classifier.0`, `.1`, `.3`).

use super::{Builder, ModelFamily, Width};
use crate::error::Result;

/// Conv widths; `0` marks a 2x2 max pool.
const CFG: &[usize] = &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
const HIDDEN: usize = 512;

pub struct Vgg16;

pub fn parse(name: &str) -> Option<Result<Box<dyn ModelFamily>>> {
    matches!(name, "vgg16" | "vgg-16").then(|| Ok(Box::new(Vgg16) as Box<dyn ModelFamily>))
}

impl ModelFamily for Vgg16 {
    fn build(&self, b: &mut Builder, classes: usize) -> Result<()> {
        // Slots in network order: every conv, then the hidden linear.
        let mut idx = 0;
        let mut convs = Vec::new();
        for &w in CFG {
            if w > 0 {
                convs.push(b.slot(format!("features.{idx}"), w)?);
                idx += 3;
            } else {
                idx += 1;
            }
        }
        let hidden = b.slot("classifier.0", HIDDEN)?;
        let mut x = b.input();
        let (mut idx, mut conv) = (0, convs.into_iter());
        for &w in CFG {
            if w == 0 {
                x = b.maxpool(&format!("features.{idx}"), x, 2, 2, 0)?;
                idx += 1;
            } else {
                let width = conv.next().expect("one slot per conv");
                x = b.conv(&format!("features.{idx}"), x, width, 3, 1, 1)?;
                x = b.bn(&format!("features.{}", idx + 1), x)?;
                x = b.relu(&format!("features.{}", idx + 2), x);
                idx += 3;
            }
        }
        x = b.flatten("flatten", x);
        x = b.linear("classifier.0", x, hidden)?;
        x = b.bn("classifier.1", x)?;
        x = b.relu("classifier.2", x);
        b.linear("classifier.3", x, Width::Fixed(classes))?;
        Ok(())
    }

    fn import_renames(&self, names: &[&str]) -> std::result::Result<Vec<(String, String)>, String> {
        if names.contains(&"classifier.weight") {
            return Err("the classifier is a single Linear (`classifier.weight`); lfgcl's VGG-16 has \
                        classifier.0 Linear(512, hidden), classifier.1 BatchNorm1d, ReLU, classifier.3 \
                        Linear(hidden, classes), and other classifier layouts are not supported"
                .into());
        }
        if names.contains(&"classifier.0.weight") && !names.contains(&"classifier.1.running_mean") {
            return Err("classifier.1 is not a BatchNorm1d; lfgcl's VGG-16 classifier is Linear, BatchNorm1d, \
                        ReLU, Linear (classifier.0, .1, .3); other layouts are not supported"
                .into());
        }
        Ok(vec![])
    }
}
