//! A small CNN for quick runs: three conv-BN-ReLU layers (16, 32, 64 channels) with 2x2 max
//! pools between them, a global average pool and a linear classifier.

use super::{Builder, ModelFamily, Width};
use crate::error::Result;

const WIDTHS: &[usize] = &[16, 32, 64];

pub struct SmallCnn;

pub fn parse(name: &str) -> Option<Result<Box<dyn ModelFamily>>> {
    matches!(name, "smallcnn" | "small-cnn" | "small").then(|| Ok(Box::new(SmallCnn) as Box<dyn ModelFamily>))
}

impl ModelFamily for SmallCnn {
    /// Fashion-MNIST's images.
    fn default_input(&self) -> (usize, usize) {
        (1, 28)
    }

    fn build(&self, b: &mut Builder, classes: usize) -> Result<()> {
        let mut x = b.input();
        for (i, &w) in WIDTHS.iter().enumerate() {
            let k = i + 1;
            let width = b.slot(format!("conv{k}"), w)?;
            x = b.conv(&format!("conv{k}"), x, width, 3, 1, 1)?;
            x = b.bn(&format!("bn{k}"), x)?;
            x = b.relu(&format!("relu{k}"), x);
            if k < WIDTHS.len() {
                x = b.maxpool(&format!("pool{k}"), x, 2, 2, 0)?;
            }
        }
        x = b.global_avgpool("avgpool", x)?;
        b.linear("fc", x, Width::Fixed(classes))?;
        Ok(())
    }
}
