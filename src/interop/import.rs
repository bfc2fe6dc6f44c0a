//! `lfgcl import`: a PyTorch state dict (safetensors) under torchvision's or the usual CIFAR names
//! becomes an lfgcl checkpoint. The architecture and every (pruned) width are read off the tensor shapes, then
//! every tensor the net needs is checked: a missing, extra or mis-shaped one is an error naming it.
//!
//! Names: torchvision's ResNets (`conv1`, `bn1`, `layerN.M.convK`, `layerN.M.downsample.0/1`, `fc`)
//! and MobileNetV2 (`features.N.conv.M`, `classifier.1`) — lfgcl's node names are theirs —,
//! CIFAR ResNets (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.bn2`, `linear` or `fc`,
//! option-A shortcuts without parameters), CIFAR VGG-16 with batch norm (`features.N`, and the
//! classifier lfgcl's VGG-16 has: `classifier.0` Linear, `classifier.1` BatchNorm1d,
//! `classifier.3` Linear), lfgcl's small CNN. A `module.` prefix (DataParallel) and a
//! `state_dict.` prefix (a wrapping `state_dict` key, flattened) are dropped. Conv biases
//! (`features.N.bias` in many VGG codes) are folded exactly into the following batch norm's
//! running mean. `num_batches_tracked` is optional. Pickles (`.pt`, `.th`) are not parsed:
//! `scripts/torch_to_safetensors.py` converts them.

use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::models::{Arch, Model};
use crate::nn::{Op, StateMut};
use crate::tensor::Tensor;
use crate::train::checkpoint;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Model name (`resnet56`, `vgg16`, `smallcnn`, ...).
    pub model: String,
    /// Input normalisation the net was trained with; None records it as unknown.
    pub normalization: Option<Normalization>,
    /// Class count to check against the classifier's shape (None: read from it).
    pub classes: Option<usize>,
    /// Side length of the square input (ResNets and the small CNN pool globally, so it cannot be
    /// read off their weights; for VGG-16 it must match the classifier's input).
    pub input_size: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportSummary {
    pub arch: Arch,
    pub tensors: usize,
    pub normalization_known: bool,
    /// Conv biases folded into the next batch norm's running mean.
    pub folded_conv_biases: usize,
    pub macs: u64,
    pub params: u64,
}

/// One tensor of the source file, converted to f32 (or kept as integers).
enum Source {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    Int { shape: Vec<usize>, data: Vec<i64> },
}

impl Source {
    fn shape(&self) -> &[usize] {
        match self {
            Source::F32 { shape, .. } | Source::Int { shape, .. } => shape,
        }
    }
}

/// The command that converts a PyTorch pickle, for the error message.
pub fn convert_command(from: &Path) -> String {
    let out = from.with_extension("safetensors");
    format!("python3 scripts/torch_to_safetensors.py {} {}", from.display(), out.display())
}

/// A zip archive (torch.save since 1.6) or a bare pickle (protocol 2+ starts with 0x80).
fn looks_like_pickle(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80)
}

fn read_sources(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Source>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        if looks_like_pickle(&bytes[..bytes.len().min(8)]) {
            Error::Invalid(format!(
                "{} is a PyTorch pickle, not safetensors; lfgcl does not read pickles. Convert it first:\n  {}\nthen import the .safetensors file",
                path.display(),
                convert_command(path)
            ))
        } else {
            Error::format(path, format!("not a safetensors state dict ({e}); a PyTorch pickle converts with: {}", convert_command(path)))
        }
    })?;
    let mut out = BTreeMap::new();
    for (raw_name, view) in st.tensors() {
        let name = strip_prefixes(&raw_name);
        let shape = view.shape().to_vec();
        let d = view.data();
        let src = match view.dtype() {
            Dtype::F32 => Source::F32 {
                shape,
                data: d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            },
            Dtype::F64 => Source::F32 {
                shape,
                data: d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            },
            Dtype::F16 => Source::F32 {
                shape,
                data: d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            },
            Dtype::BF16 => Source::F32 {
                shape,
                data: d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            },
            Dtype::I64 => Source::Int {
                shape,
                data: d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            },
            Dtype::I32 => Source::Int {
                shape,
                data: d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            },
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor {raw_name} has type {other:?}; expected floats or integers"),
                ))
            }
        };
        if out.insert(name.clone(), src).is_some() {
            return Err(Error::format(path, format!("tensor {name} appears twice once prefixes are dropped")));
        }
    }
    Ok(out)
}

/// `state_dict.module.layer1.0.conv1.weight` -> `layer1.0.conv1.weight`.
fn strip_prefixes(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("state_dict.").or_else(|| n.strip_prefix("module.")) {
            n = rest;
        } else {
            return n.to_string();
        }
    }
}

struct Ctx<'a> {
    path: &'a Path,
    src: &'a BTreeMap<String, Source>,
}

impl Ctx<'_> {
    fn err(&self, msg: String) -> Error {
        Error::format(self.path, msg)
    }
    /// Dimension `axis` of tensor `name`, which must exist with rank `rank`.
    fn dim(&self, name: &str, rank: usize, axis: usize) -> Result<usize> {
        let t = self.src.get(name).ok_or_else(|| self.err(format!("tensor {name} is missing")))?;
        if t.shape().len() != rank {
            return Err(self.err(format!("tensor {name} has shape {:?}, expected {rank} dimensions", t.shape())));
        }
        Ok(t.shape()[axis])
    }
}

/// Reads the architecture (every width, input channels, classes) off the tensor shapes: each
/// width slot's width is the output size of the first layer the graph builds with it.
fn infer_arch(cx: &Ctx<'_>, opts: &ImportOptions) -> Result<Arch> {
    let base = Arch::new(&opts.model, 3, opts.input_size, 10)?;
    let probe = base.probe_graph()?;
    let mut widths = Vec::with_capacity(probe.slots.len());
    for slot in 0..probe.slots.len() {
        let node = probe.nodes.iter().find(|n| n.width_slot == Some(slot)).ok_or_else(|| {
            Error::Invalid(format!("{}: width slot {} has no layer", base.model, probe.slots[slot].name))
        })?;
        let rank = if matches!(node.op, Op::Linear(_)) { 2 } else { 4 };
        widths.push(cx.dim(&format!("{}.weight", node.name), rank, 0)?);
    }
    let first_conv = probe.nodes.iter().find(|n| matches!(n.op, Op::Conv(_)));
    let in_channels = match first_conv {
        Some(n) => cx.dim(&format!("{}.weight", n.name), 4, 1)?,
        None => 3,
    };
    let classifier = probe.nodes.last().map(|n| n.name.clone()).unwrap_or_default();
    let classes = cx.dim(&format!("{classifier}.weight"), 2, 0)?;
    if let Some(k) = opts.classes {
        if k != classes {
            return Err(cx.err(format!("the classifier has {classes} outputs, --classes says {k}")));
        }
    }
    let arch = Arch { model: base.model, in_channels, input_size: opts.input_size, num_classes: classes, widths };
    arch.validate().map_err(|e| cx.err(e.to_string()))?;
    Ok(arch)
}

/// Imports a state dict into a model (on the CPU).
pub fn import_model(from: &Path, opts: &ImportOptions) -> Result<(Model, ImportSummary)> {
    // F64 state dicts are twice the size of the f32 checkpoint they become.
    let bytes = crate::limits::read_bounded(from, 2 * crate::limits::MAX_CHECKPOINT_BYTES)?;
    let mut src = read_sources(from, &bytes)?;
    let family = crate::models::family(&opts.model)?;
    let names: Vec<&str> = src.keys().map(String::as_str).collect();
    let renames = family.import_renames(&names).map_err(|msg| Error::format(from, msg))?;
    for (from_prefix, to_prefix) in renames {
        let matching: Vec<String> = src.keys().filter(|k| k.starts_with(&from_prefix)).cloned().collect();
        for k in matching {
            let v = src.remove(&k).expect("listed");
            src.insert(format!("{to_prefix}{}", &k[from_prefix.len()..]), v);
        }
    }
    let cx = Ctx { path: from, src: &src };
    let arch = infer_arch(&cx, opts)?;
    let mut graph = arch.build_graph_zeroed().map_err(|e| cx.err(e.to_string()))?;
    // Conv biases: bias b before batch norm equals running_mean - b without the bias.
    let mut conv_bias: BTreeMap<String, (String, Vec<f32>)> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::Conv(c) = &node.op {
            let key = format!("{}.bias", node.name);
            if let Some(s) = src.get(&key) {
                let bn = graph.nodes.get(i + 1).filter(|n| matches!(n.op, Op::BatchNorm(_)) && n.inputs == [i]);
                match (bn, s) {
                    (Some(bn), Source::F32 { shape, data }) if shape == &[c.out_channels()] => {
                        conv_bias.insert(format!("{}.running_mean", bn.name), (key, data.clone()));
                    }
                    _ => {
                        return Err(cx.err(format!(
                            "tensor {key} has shape {:?}, expected [{}]",
                            s.shape(),
                            c.out_channels()
                        )))
                    }
                }
            }
        }
    }
    let mut used: HashSet<String> = conv_bias.values().map(|(k, _)| k.clone()).collect();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut tensors = 0usize;
    for (name, slot) in graph.state_mut() {
        let Some(s) = src.get(&name) else {
            // Optional entries: PyTorch's counter, and maps of unpruned option-A shortcuts.
            if !(name.ends_with(".num_batches_tracked") || name.ends_with(".channel_map")) {
                missing.push(name);
            }
            continue;
        };
        used.insert(name.clone());
        tensors += 1;
        match (slot, s) {
            (StateMut::F32(t), Source::F32 { shape, data }) => {
                if shape.as_slice() != t.dims() {
                    misshaped.push(format!("{name} has shape {shape:?}, expected {:?}", t.dims()));
                    continue;
                }
                let mut data = data.clone();
                if let Some((_, bias)) = conv_bias.get(&name) {
                    data.iter_mut().zip(bias).for_each(|(m, b)| *m -= b);
                }
                *t = Tensor::from_vec(shape, data)?;
            }
            (StateMut::I64(v), Source::Int { data, .. }) if data.len() == 1 => *v = data[0],
            (StateMut::I32(map), Source::Int { data, shape }) => {
                if shape.as_slice() != [map.len()] {
                    misshaped.push(format!("{name} has shape {shape:?}, expected [{}]", map.len()));
                    continue;
                }
                *map = data.iter().map(|&v| v as i32).collect();
            }
            (_, s) => misshaped.push(format!("{name} has the wrong type or shape {:?}", s.shape())),
        }
    }
    let extra: Vec<&String> = src.keys().filter(|k| !used.contains(*k)).collect();
    let what = format!("{} with widths {:?} read from the file", arch.model, arch.widths);
    if !missing.is_empty() {
        return Err(cx.err(format!("tensor(s) missing for {what}: {}", missing.join(", "))));
    }
    if !misshaped.is_empty() {
        return Err(cx.err(format!("mis-shaped tensor(s) for {what}: {}", misshaped.join("; "))));
    }
    if !extra.is_empty() {
        let list: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        return Err(cx.err(format!("tensor(s) {what} does not have: {}", list.join(", "))));
    }
    for node in &graph.nodes {
        if let Op::Shortcut(s) = &node.op {
            let in_c = graph.nodes[node.inputs[0]].out_shape[0] as i32;
            if let Some(bad) = s.src.iter().find(|&&v| v < -1 || v >= in_c) {
                return Err(
                    cx.err(format!("{}.channel_map refers to channel {bad} of a {in_c}-channel input", node.name))
                );
            }
        }
    }
    if let Some(n) = &opts.normalization {
        n.check(arch.in_channels)?;
    }
    let model = Model { arch: arch.clone(), graph, normalization: opts.normalization.clone() };
    let cost = model.cost();
    let summary = ImportSummary {
        arch,
        tensors,
        normalization_known: opts.normalization.is_some(),
        folded_conv_biases: conv_bias.len(),
        macs: cost.macs,
        params: cost.params,
    };
    if let Some(name) = crate::train::first_non_finite(&model)? {
        return Err(Error::format(from, format!("tensor {name} holds a NaN or infinite value")));
    }
    Ok((model, summary))
}

/// Imports `from` and writes the lfgcl checkpoint `out` (atomically).
pub fn import(from: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    let (model, summary) = import_model(from, opts)?;
    let info = serde_json::json!({
        "imported_from": PathBuf::from(from),
        "normalization": if summary.normalization_known { "given" } else { "unknown" },
        "folded_conv_biases": summary.folded_conv_biases,
    });
    checkpoint::save(&model, out, &info)?;
    Ok(summary)
}
