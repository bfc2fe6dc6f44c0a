//! The model zoo. A family is one file that builds its graph from a config: it declares the
//! width slots (named output widths, the things pruning and import change) and adds layers
//! through a [`Builder`]. Everything else — channel groups, costs, the agent's state, the gather
//! into a compact net, import, ONNX export, `lfgcl info` — reads the graph.
//!
//! Families: CIFAR ResNets (He et al. 2016, option-A shortcuts), CIFAR VGG-16, a small CNN,
//! torchvision's ResNets (basic and bottleneck blocks, ResNeXt and wide variants) and
//! MobileNetV2. A pruned net is the same model with other widths (plus, for pruned option-A
//! streams, the shortcut channel maps stored in its checkpoint), so an [`Arch`] fully describes it.
//!
//! Adding a family: a file with a `parse` function and a [`ModelFamily`] impl, and one line in
//! [`FAMILIES`].

mod builder;
mod cifar_resnet;
pub mod cost;
mod mobilenet_v2;
mod resnet;
mod smallcnn;
mod vgg;

use crate::backend::Device;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::nn::{Graph, WidthSlot};
pub use builder::{Builder, Init, Width};
use serde::{Deserialize, Serialize};

pub use cost::{Cost, LayerCost};

/// A model family: builds its graph, and says how PyTorch names its tensors where they differ.
pub trait ModelFamily: Send + Sync {
    /// Declares the width slots and adds every layer for `classes` outputs.
    fn build(&self, b: &mut Builder, classes: usize) -> Result<()>;
    /// Renames a state dict's tensors before import (`(from prefix, to prefix)`), after checking
    /// its names; an `Err` says why the file cannot be this family.
    fn import_renames(&self, _names: &[&str]) -> std::result::Result<Vec<(String, String)>, String> {
        Ok(vec![])
    }
    /// The input it is usually given, `(channels, side)`: what benchmarks build it for when no
    /// size is asked for.
    fn default_input(&self) -> (usize, usize) {
        (3, 32)
    }
    /// The multiple kept channel counts are rounded up to when `--round` is not given.
    fn channel_multiple(&self) -> usize {
        1
    }
}

/// Reads a model name: `None` when the name is not this family's.
type Parse = fn(&str) -> Option<Result<Box<dyn ModelFamily>>>;

/// Every family, in the order names are tried (torchvision's `resnet50` before the CIFAR
/// `resnet<6n+2>` that would also match it).
const FAMILIES: &[Parse] = &[resnet::parse, mobilenet_v2::parse, cifar_resnet::parse, vgg::parse, smallcnn::parse];

/// The model names `lfgcl` lists (any CIFAR `resnet<6n+2>`, `cifar_resnet<6n+2>`,
/// `mobilenet_v2_<multiplier>` and the ResNeXt / wide names also work).
pub const MODEL_NAMES: &[&str] = &[
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg16",
    "smallcnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v2",
];

/// The family of a model name.
pub fn family(name: &str) -> Result<Box<dyn ModelFamily>> {
    let lower = name.to_ascii_lowercase();
    FAMILIES.iter().find_map(|parse| parse(&lower)).unwrap_or_else(|| {
        Err(Error::Invalid(format!(
            "unknown model '{name}' (known: {}; any resnet<6n+2> works too)",
            MODEL_NAMES.join(", ")
        )))
    })
}

/// Everything needed to rebuild a network: stored as JSON in every checkpoint's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub model: String,
    pub in_channels: usize,
    /// The input's height, and its width too unless `input_width` says otherwise.
    pub input_size: usize,
    /// The input's width when it differs from its height (absent for square inputs, so that a
    /// square net's metadata stays what it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_width: Option<usize>,
    pub num_classes: usize,
    /// One entry per width slot, in the order the family declares them (`lfgcl info --model M`
    /// lists them by name).
    pub widths: Vec<usize>,
}

impl Arch {
    /// The unpruned architecture of `model` for the given input and class count.
    pub fn new(model: &str, in_channels: usize, input_size: usize, num_classes: usize) -> Result<Arch> {
        Arch::new_hw(model, in_channels, [input_size, input_size], num_classes)
    }

    /// The unpruned architecture for an input of `[height, width]`.
    pub fn new_hw(model: &str, in_channels: usize, [height, width]: [usize; 2], num_classes: usize) -> Result<Arch> {
        let mut arch = Arch {
            model: model.to_ascii_lowercase(),
            in_channels,
            input_size: height,
            input_width: (width != height).then_some(width),
            num_classes,
            widths: vec![],
        };
        arch.check_io()?;
        arch.widths = arch.default_slots()?.iter().map(|s| s.default).collect();
        arch.validate()?;
        Ok(arch)
    }

    /// `[height, width]` of the input.
    pub fn input_hw(&self) -> [usize; 2] {
        [self.input_size, self.input_width.unwrap_or(self.input_size)]
    }

    /// `[channels, height, width]` of one input image.
    pub fn input_chw(&self) -> [usize; 3] {
        let [h, w] = self.input_hw();
        [self.in_channels, h, w]
    }

    pub fn family(&self) -> Result<Box<dyn ModelFamily>> {
        family(&self.model)
    }

    /// The slots of the unpruned model (names and default widths), without allocating parameters.
    fn default_slots(&self) -> Result<Vec<WidthSlot>> {
        let b = self.build_with(None, Init::Probe)?;
        Ok(b.slots)
    }

    /// A name for each width slot (`layer2 stream`, `layer1.0.conv1`, `features.3`, ...).
    pub fn width_names(&self) -> Result<Vec<String>> {
        Ok(self.default_slots()?.into_iter().map(|s| s.name).collect())
    }

    /// The unpruned widths.
    pub fn default_widths(&self) -> Result<Vec<usize>> {
        Ok(self.default_slots()?.into_iter().map(|s| s.default).collect())
    }

    /// The same architecture with other widths.
    pub fn with_widths(&self, widths: Vec<usize>) -> Result<Arch> {
        let arch = Arch { widths, ..self.clone() };
        arch.validate()?;
        Ok(arch)
    }

    fn check_io(&self) -> Result<()> {
        let [height, width] = self.input_hw();
        if self.in_channels == 0 || self.num_classes == 0 || height == 0 || width == 0 {
            return Err(Error::Invalid(format!(
                "{}: input channels, input size and class count must be positive",
                self.model
            )));
        }
        use crate::limits::{MAX_CLASSES, MAX_IMAGE_SIDE, MAX_INPUT_CHANNELS};
        for (what, value, max) in [
            ("input channels", self.in_channels, MAX_INPUT_CHANNELS),
            ("input size", height.max(width), MAX_IMAGE_SIDE),
            ("class count", self.num_classes, MAX_CLASSES),
        ] {
            if value > max {
                return Err(Error::Invalid(format!("{}: {what} {value} is more than the {max} accepted", self.model)));
            }
        }
        Ok(())
    }

    /// Checks everything a build checks, without allocating.
    pub fn validate(&self) -> Result<()> {
        self.check_widths()?;
        // Shapes, group divisibility and the parameter limit.
        self.build_with(Some(self.widths.clone()), Init::Probe)?;
        Ok(())
    }

    /// The input, the class count and the width vector (count, zeros, limit); the build checks
    /// the rest.
    fn check_widths(&self) -> Result<()> {
        self.check_io()?;
        let expected = self.default_slots()?.len();
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
        use crate::limits::MAX_WIDTH;
        if let Some(i) = self.widths.iter().position(|&w| w > MAX_WIDTH) {
            return Err(Error::Invalid(format!(
                "{}: width {i} is {} channels, more than the {MAX_WIDTH} this engine builds",
                self.model, self.widths[i]
            )));
        }
        Ok(())
    }

    fn build_with(&self, widths: Option<Vec<usize>>, init: Init) -> Result<Graph> {
        let family = self.family()?;
        let mut b = Builder::new(self.input_chw(), widths, init);
        family.build(&mut b, self.num_classes)?;
        b.finish()
    }

    /// The graph's nodes, shapes and slots without parameter storage (for reading its structure).
    pub fn probe_graph(&self) -> Result<Graph> {
        self.check_widths()?;
        self.build_with(Some(self.widths.clone()), Init::Probe)
    }

    /// Builds the graph with freshly initialised parameters (host memory).
    pub fn build_graph(&self, seed: u64) -> Result<Graph> {
        self.check_widths()?;
        self.build_with(Some(self.widths.clone()), Init::Kaiming(seed))
    }

    /// Builds the graph with zeroed parameters, for a caller that overwrites every tensor next
    /// (a gathered candidate, a loaded checkpoint, an import).
    pub fn build_graph_zeroed(&self) -> Result<Graph> {
        self.check_widths()?;
        self.build_with(Some(self.widths.clone()), Init::Zeros)
    }
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
        let mut graph = self.arch.build_graph_zeroed()?;
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

    /// Indices of the nodes that end each stage: the output of the last residual block of each
    /// run of same-shaped residual blocks, and each max pool.
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
                Op::Input
                | Op::Conv(_)
                | Op::BatchNorm(_)
                | Op::Relu
                | Op::Relu6
                | Op::Shortcut(_)
                | Op::GlobalAvgPool
                | Op::Flatten
                | Op::Linear(_) => false,
            };
            if is_stage_end {
                out.push(i);
            }
        }
        out
    }
}
