//! The model zoo: CIFAR ResNets (He et al. 2016, option-A shortcuts), CIFAR VGG-16 and a small
//! CNN for quick runs, each built from an [`Arch`]: the model name, input shape, class count and
//! a width vector. A pruned net is the same model with other widths (plus, for pruned residual
//! streams, the shortcut channel maps stored in its checkpoint), so an `Arch` fully describes it.

mod builder;
pub mod cost;

use crate::backend::Device;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::nn::Graph;
use builder::Builder;
use serde::{Deserialize, Serialize};

pub use cost::{Cost, LayerCost};

/// Every model name `Arch::new` accepts.
pub const MODEL_NAMES: &[&str] = &["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16", "smallcnn"];

/// VGG-16 for CIFAR: conv widths, `0` marks a 2x2 max pool.
const VGG16_CFG: &[usize] = &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
const VGG16_HIDDEN: usize = 512;
const SMALLCNN_WIDTHS: &[usize] = &[16, 32, 64];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `depth = 6n + 2`: three stages of n basic blocks.
    ResNet {
        depth: usize,
    },
    Vgg16,
    SmallCnn,
}

impl Family {
    pub fn parse(name: &str) -> Result<Family> {
        let lower = name.to_ascii_lowercase();
        if let Some(d) = lower.strip_prefix("resnet") {
            if let Ok(depth) = d.parse::<usize>() {
                if depth > crate::limits::MAX_RESNET_DEPTH {
                    return Err(Error::Invalid(format!(
                        "model '{name}': depth {depth} is deeper than the {} this engine builds",
                        crate::limits::MAX_RESNET_DEPTH
                    )));
                }
                if depth >= 8 && (depth - 2) % 6 == 0 {
                    return Ok(Family::ResNet { depth });
                }
            }
        }
        match lower.as_str() {
            "vgg16" | "vgg-16" => Ok(Family::Vgg16),
            "smallcnn" | "small-cnn" | "small" => Ok(Family::SmallCnn),
            _ => Err(Error::Invalid(format!(
                "unknown model '{name}' (known: {}; any resnet<6n+2> works too)",
                MODEL_NAMES.join(", ")
            ))),
        }
    }

    /// The unpruned width vector and a name for each entry.
    pub fn default_widths(&self) -> (Vec<usize>, Vec<String>) {
        match *self {
            Family::ResNet { depth } => {
                let n = (depth - 2) / 6;
                let mut widths = vec![16, 32, 64];
                let mut names: Vec<String> = (1..=3).map(|s| format!("layer{s} stream")).collect();
                for stage in 1..=3 {
                    for b in 0..n {
                        widths.push(16 << (stage - 1));
                        names.push(format!("layer{stage}.{b}.conv1"));
                    }
                }
                (widths, names)
            }
            Family::Vgg16 => {
                let mut widths: Vec<usize> = VGG16_CFG.iter().copied().filter(|&w| w > 0).collect();
                let mut names: Vec<String> = Vec::new();
                let mut idx = 0;
                for &w in VGG16_CFG {
                    if w > 0 {
                        names.push(format!("features.{idx}"));
                        idx += 3;
                    } else {
                        idx += 1;
                    }
                }
                widths.push(VGG16_HIDDEN);
                names.push("classifier.0".into());
                (widths, names)
            }
            Family::SmallCnn => {
                (SMALLCNN_WIDTHS.to_vec(), (1..=SMALLCNN_WIDTHS.len()).map(|i| format!("conv{i}")).collect())
            }
        }
    }
}

/// Everything needed to rebuild a network: stored as JSON in every checkpoint's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub model: String,
    pub in_channels: usize,
    pub input_size: usize,
    pub num_classes: usize,
    /// One entry per width slot (see `Family::default_widths` for the layout of each model).
    pub widths: Vec<usize>,
}

impl Arch {
    /// The unpruned architecture of `model` for the given input and class count.
    pub fn new(model: &str, in_channels: usize, input_size: usize, num_classes: usize) -> Result<Arch> {
        let family = Family::parse(model)?;
        let arch = Arch {
            model: model.to_ascii_lowercase(),
            in_channels,
            input_size,
            num_classes,
            widths: family.default_widths().0,
        };
        arch.validate()?;
        Ok(arch)
    }

    pub fn family(&self) -> Result<Family> {
        Family::parse(&self.model)
    }

    /// A name for each width slot (`layer2 stream`, `layer1.0.conv1`, `features.3`, ...).
    pub fn width_names(&self) -> Result<Vec<String>> {
        Ok(self.family()?.default_widths().1)
    }

    /// The same architecture with other widths.
    pub fn with_widths(&self, widths: Vec<usize>) -> Result<Arch> {
        let arch = Arch { widths, ..self.clone() };
        arch.validate()?;
        Ok(arch)
    }

    pub fn validate(&self) -> Result<()> {
        let family = self.family()?;
        let expected = family.default_widths().0.len();
        if self.widths.len() != expected {
            return Err(Error::Invalid(format!(
                "{} has {expected} width entries, got {}",
                self.model,
                self.widths.len()
            )));
        }
        if let Some(i) = self.widths.iter().position(|&w| w == 0) {
            return Err(Error::Invalid(format!(
                "{}: width {i} is zero; every layer keeps at least one channel",
                self.model
            )));
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.input_size == 0 {
            return Err(Error::Invalid(format!(
                "{}: input channels, input size and class count must be positive",
                self.model
            )));
        }
        use crate::limits::{MAX_CLASSES, MAX_IMAGE_SIDE, MAX_INPUT_CHANNELS, MAX_WIDTH};
        if let Some(i) = self.widths.iter().position(|&w| w > MAX_WIDTH) {
            return Err(Error::Invalid(format!(
                "{}: width {i} is {} channels, more than the {MAX_WIDTH} this engine builds",
                self.model, self.widths[i]
            )));
        }
        for (what, value, max) in [
            ("input channels", self.in_channels, MAX_INPUT_CHANNELS),
            ("input size", self.input_size, MAX_IMAGE_SIDE),
            ("class count", self.num_classes, MAX_CLASSES),
        ] {
            if value > max {
                return Err(Error::Invalid(format!("{}: {what} {value} is more than the {max} accepted", self.model)));
            }
        }
        Ok(())
    }

    /// Builds the graph with freshly initialised parameters (host memory).
    pub fn build_graph(&self, seed: u64) -> Result<Graph> {
        self.validate()?;
        let input = [self.in_channels, self.input_size, self.input_size];
        let mut b = Builder::new(input, seed);
        match self.family()? {
            Family::ResNet { depth } => build_resnet(&mut b, (depth - 2) / 6, &self.widths, self.num_classes)?,
            Family::Vgg16 => build_vgg16(&mut b, &self.widths, self.num_classes)?,
            Family::SmallCnn => build_smallcnn(&mut b, &self.widths, self.num_classes)?,
        }
        Ok(b.finish())
    }
}

fn build_resnet(b: &mut Builder, n: usize, widths: &[usize], classes: usize) -> Result<()> {
    let mut x = b.conv("conv1", b.input(), widths[0], 3, 1, 1, Some(0))?;
    x = b.bn("bn1", x);
    x = b.relu("relu", x);
    for stage in 1..=3 {
        let stream = widths[stage - 1];
        for blk in 0..n {
            let p = format!("layer{stage}.{blk}");
            let stride = if stage > 1 && blk == 0 { 2 } else { 1 };
            let inner_slot = 3 + (stage - 1) * n + blk;
            let mut y = b.conv(&format!("{p}.conv1"), x, widths[inner_slot], 3, stride, 1, Some(inner_slot))?;
            y = b.bn(&format!("{p}.bn1"), y);
            y = b.relu(&format!("{p}.relu1"), y);
            y = b.conv(&format!("{p}.conv2"), y, stream, 3, 1, 1, Some(stage - 1))?;
            y = b.bn(&format!("{p}.bn2"), y);
            let in_c = b.shape(x)[0];
            let skip = if stride != 1 || in_c != stream {
                b.shortcut(&format!("{p}.shortcut"), x, stream, stride)?
            } else {
                x
            };
            x = b.add(&format!("{p}.add"), y, skip, true)?;
        }
    }
    x = b.global_avgpool("avgpool", x)?;
    b.linear("linear", x, classes, None)?;
    Ok(())
}

fn build_vgg16(b: &mut Builder, widths: &[usize], classes: usize) -> Result<()> {
    let mut x = b.input();
    let (mut idx, mut slot) = (0, 0);
    for &w in VGG16_CFG {
        if w == 0 {
            x = b.maxpool(&format!("features.{idx}"), x, 2, 2)?;
            idx += 1;
        } else {
            x = b.conv(&format!("features.{idx}"), x, widths[slot], 3, 1, 1, Some(slot))?;
            x = b.bn(&format!("features.{}", idx + 1), x);
            x = b.relu(&format!("features.{}", idx + 2), x);
            idx += 3;
            slot += 1;
        }
    }
    x = b.flatten("flatten", x);
    x = b.linear("classifier.0", x, widths[slot], Some(slot))?;
    x = b.bn("classifier.1", x);
    x = b.relu("classifier.2", x);
    b.linear("classifier.3", x, classes, None)?;
    Ok(())
}

fn build_smallcnn(b: &mut Builder, widths: &[usize], classes: usize) -> Result<()> {
    let mut x = b.input();
    for (i, &w) in widths.iter().enumerate() {
        let k = i + 1;
        x = b.conv(&format!("conv{k}"), x, w, 3, 1, 1, Some(i))?;
        x = b.bn(&format!("bn{k}"), x);
        x = b.relu(&format!("relu{k}"), x);
        if k < widths.len() {
            x = b.maxpool(&format!("pool{k}"), x, 2, 2)?;
        }
    }
    x = b.global_avgpool("avgpool", x)?;
    b.linear("fc", x, classes, None)?;
    Ok(())
}

/// A network and what describes it: the architecture and the input normalisation it expects.
pub struct Model {
    pub arch: Arch,
    pub graph: Graph,
    pub normalization: Option<Normalization>,
}

impl Model {
    /// A freshly initialised model on `dev`.
    pub fn new(arch: Arch, dev: &Device, seed: u64) -> Result<Model> {
        let mut graph = arch.build_graph(seed)?;
        if dev.kind() != crate::backend::DeviceKind::Cpu {
            graph.to_device(dev)?;
        }
        Ok(Model { arch, graph, normalization: None })
    }

    /// A deep copy (parameters, buffers and shortcut maps), on the same device.
    pub fn duplicate(&self) -> Result<Model> {
        use crate::nn::{StateMut, StateRef};
        let mut graph = self.arch.build_graph(0)?;
        for ((name, dst), (_, src)) in graph.state_mut().into_iter().zip(self.graph.state()) {
            match (dst, src) {
                (StateMut::F32(d), StateRef::F32(s)) => *d = s.try_clone()?,
                (StateMut::I64(d), StateRef::I64(s)) => *d = s,
                (StateMut::I32(d), StateRef::I32(s)) => *d = s.to_vec(),
                _ => return Err(Error::Invalid(format!("duplicate: {name} changed type"))),
            }
        }
        Ok(Model { arch: self.arch.clone(), graph, normalization: self.normalization.clone() })
    }

    /// Per-layer and total cost (MACs, params) of this network.
    pub fn cost(&self) -> Cost {
        cost::graph_cost(&self.graph)
    }

    /// Index of the node whose output feeds the classifier: the penultimate features used by the
    /// label-free reward (the global average pool for ResNets, the last hidden ReLU for VGG).
    pub fn penultimate_node(&self) -> usize {
        let nodes = &self.graph.nodes;
        nodes.last().and_then(|n| n.inputs.first().copied()).unwrap_or(0)
    }

    /// Indices of the nodes that end each stage (the output of the last residual block of each
    /// ResNet stage, or the output of each max pool for VGG and the small CNN).
    pub fn stage_outputs(&self) -> Vec<usize> {
        use crate::nn::Op;
        let nodes = &self.graph.nodes;
        let mut out = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let is_stage_end = match &n.op {
                Op::MaxPool { .. } => true,
                Op::Add { .. } => {
                    // The last block of a stage: the next Add has a different shape, or none follows.
                    let next_add = nodes[i + 1..].iter().find(|m| matches!(m.op, Op::Add { .. }));
                    next_add.is_none_or(|m| m.out_shape != n.out_shape)
                }
                _ => false,
            };
            if is_stage_end {
                out.push(i);
            }
        }
        out
    }
}
