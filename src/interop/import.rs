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
use crate::nn::{Op, StateMut, StateRef};
use crate::tensor::Tensor;
use crate::train::checkpoint;
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Model name (`resnet56`, `vgg16`, `smallcnn`, ...).
    pub model: String,
    /// Input normalisation the net was trained with; None records it as unknown.
    pub normalization: Option<Normalization>,
    /// Class count to check against the classifier's shape (None: read from it).
    pub classes: Option<usize>,
    /// `[height, width]` of the input (ResNets, MobileNetV2 and the small CNN pool globally, so it
    /// cannot be read off their weights; for VGG-16 it must match the classifier's input).
    pub input_hw: [usize; 2],
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

/// One tensor of the source file, as its header describes it. Its data stays in the file until
/// every tensor has been checked against the architecture; then each is read and converted on
/// its own, so a large extra or wrong tensor costs nothing and the whole file is never in memory.
struct Source {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Where its bytes are in the file, and how many.
    offset: u64,
    len: usize,
}

impl Source {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
    }
    fn is_int(&self) -> bool {
        matches!(self.dtype, Dtype::I64 | Dtype::I32)
    }
}

/// The state dict file, open, for reading tensors one at a time.
struct SourceFile<'a> {
    path: &'a Path,
    file: std::fs::File,
}

impl SourceFile<'_> {
    fn bytes(&self, s: &Source) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = Vec::new();
        buf.try_reserve_exact(s.len)
            .map_err(|_| Error::format(self.path, format!("not enough memory for a tensor of {} bytes", s.len)))?;
        buf.resize(s.len, 0);
        self.file.read_exact_at(&mut buf, s.offset).map_err(|e| Error::io(self.path, e))?;
        Ok(buf)
    }

    /// A float tensor's values as f32.
    fn f32s(&self, s: &Source) -> Result<Vec<f32>> {
        let d = self.bytes(s)?;
        Ok(match s.dtype {
            Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => {
                d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(Error::format(self.path, format!("a {other:?} tensor read as floats"))),
        })
    }

    /// An integer tensor's values.
    fn ints(&self, s: &Source) -> Result<Vec<i64>> {
        let d = self.bytes(s)?;
        Ok(match s.dtype {
            Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            other => return Err(Error::format(self.path, format!("a {other:?} tensor read as integers"))),
        })
    }
}

/// The command that converts a PyTorch pickle, for the error message: never onto the pickle
/// itself (a pickle named `.safetensors` gets `.converted.safetensors`).
pub fn convert_command(from: &Path) -> String {
    let mut out = from.with_extension("safetensors");
    if out == from {
        out = from.with_extension("converted.safetensors");
    }
    format!("python3 scripts/torch_to_safetensors.py {} {}", from.display(), out.display())
}

/// A zip archive (torch.save since 1.6) or a bare pickle (protocol 2+ starts with 0x80).
fn looks_like_pickle(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80)
}

/// Reads and checks the header of a safetensors state dict (names, dtypes, shapes, offsets
/// against the file's length); no tensor data is read.
fn read_sources(path: &Path) -> Result<(SourceFile<'_>, BTreeMap<String, Source>)> {
    use std::io::Read;
    let mut file = crate::fsio::open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // F64 state dicts are twice the size of the f32 checkpoint they become.
    let max = 2 * crate::limits::MAX_CHECKPOINT_BYTES;
    if len > max {
        return Err(Error::format(path, format!("{len} bytes is larger than the {max} bytes this reader accepts")));
    }
    let not_safetensors = |why: String| {
        Error::format(
            path,
            format!("not a safetensors state dict ({why}); a PyTorch pickle converts with: {}", convert_command(path)),
        )
    };
    let mut head = [0u8; 8];
    let got = len.min(8) as usize;
    file.read_exact(&mut head[..got]).map_err(|e| Error::io(path, e))?;
    if looks_like_pickle(&head[..got]) {
        return Err(Error::Invalid(format!(
            "{} is a PyTorch pickle, not safetensors; lfgcl does not read pickles. Convert it first with `{}`, then import the .safetensors file",
            path.display(),
            convert_command(path)
        )));
    }
    if len < 8 {
        return Err(not_safetensors(format!("{len} bytes is too short")));
    }
    let n = u64::from_le_bytes(head);
    if n > len - 8 || n > crate::limits::MAX_CHECKPOINT_HEADER_BYTES {
        return Err(not_safetensors(format!("the header claims {n} bytes but the file holds {len}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    // Deserialising the crate's own `Metadata` validates it: dtypes, shape sizes without overflow,
    // contiguous offsets that match each tensor's size.
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| not_safetensors(format!("header: {e}")))?;
    let data_start = 8 + n;
    if data_start + meta.data_len() as u64 != len {
        return Err(not_safetensors(format!(
            "the header describes {} bytes of tensors, the file holds {}",
            meta.data_len(),
            len - data_start
        )));
    }
    let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> = meta.tensors().into_iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BTreeMap::new();
    for (raw_name, info) in infos {
        if !matches!(info.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 | Dtype::I64 | Dtype::I32) {
            return Err(Error::format(
                path,
                format!("tensor {raw_name} has type {:?}; expected floats or integers", info.dtype),
            ));
        }
        let (start, end) = info.data_offsets;
        let src = Source {
            dtype: info.dtype,
            shape: info.shape.clone(),
            offset: data_start + start as u64,
            len: end - start,
        };
        let name = strip_prefixes(&raw_name);
        if out.insert(name.clone(), src).is_some() {
            return Err(Error::format(path, format!("tensor {name} appears twice once prefixes are dropped")));
        }
    }
    Ok((SourceFile { path, file }, out))
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
    let base = Arch::new_hw(&opts.model, 3, opts.input_hw, 10)?;
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
    let arch = Arch { in_channels, num_classes: classes, widths, ..base };
    arch.validate().map_err(|e| cx.err(e.to_string()))?;
    Ok(arch)
}

/// Imports a state dict into a model (on the CPU).
pub fn import_model(from: &Path, opts: &ImportOptions) -> Result<(Model, ImportSummary)> {
    let (file, mut src) = read_sources(from)?;
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
    if let Some(n) = &opts.normalization {
        n.check(arch.in_channels).map_err(|e| Error::Invalid(format!("--mean/--std: {e}")))?;
    }
    let mut graph = arch.build_graph_zeroed().map_err(|e| cx.err(e.to_string()))?;
    // Conv biases: bias b before batch norm equals running_mean - b without the bias.
    let mut conv_bias: BTreeMap<String, String> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::Conv(c) = &node.op {
            let key = format!("{}.bias", node.name);
            if let Some(s) = src.get(&key) {
                let bn = graph.nodes.get(i + 1).filter(|n| matches!(n.op, Op::BatchNorm(_)) && n.inputs == [i]);
                if !s.is_float() {
                    return Err(cx.err(format!("tensor {key} is {:?}, expected floats", s.dtype)));
                }
                match bn {
                    Some(bn) if s.shape() == [c.out_channels()] => {
                        conv_bias.insert(format!("{}.running_mean", bn.name), key);
                    }
                    Some(_) => {
                        return Err(cx.err(format!(
                            "tensor {key} has shape {:?}, expected [{}]",
                            s.shape(),
                            c.out_channels()
                        )))
                    }
                    None => {
                        return Err(cx.err(format!(
                            "tensor {key}: a conv bias with no batch norm after it, which lfgcl's {} does not have",
                            arch.model
                        )))
                    }
                }
            }
        }
    }
    // Every name, type and shape is checked from the header before any tensor is read.
    let mut used: HashSet<String> = conv_bias.values().cloned().collect();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut tensors = 0usize;
    for (name, slot) in graph.state() {
        let Some(s) = src.get(&name) else {
            // Optional entries: PyTorch's counter, and maps of unpruned option-A shortcuts.
            if !(name.ends_with(".num_batches_tracked") || name.ends_with(".channel_map")) {
                missing.push(name);
            }
            continue;
        };
        used.insert(name.clone());
        tensors += 1;
        match slot {
            StateRef::F32(_) if !s.is_float() => misshaped.push(format!("{name} is {:?}, expected floats", s.dtype)),
            StateRef::F32(t) if s.shape() != t.dims() => {
                misshaped.push(format!("{name} has shape {:?}, expected {:?}", s.shape(), t.dims()))
            }
            StateRef::I64(_) if !(s.is_int() && s.shape().iter().product::<usize>() == 1) => {
                misshaped.push(format!("{name} should be one integer, got {:?} of shape {:?}", s.dtype, s.shape()))
            }
            StateRef::I32(map) if !(s.is_int() && s.shape() == [map.len()]) => misshaped.push(format!(
                "{name} should be integers of shape [{}], got {:?} of shape {:?}",
                map.len(),
                s.dtype,
                s.shape()
            )),
            _ => {}
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
    // Then each tensor is read, converted and checked on its own, with the checks a checkpoint's
    // reader applies (finite values, no negative variance, channel maps within their input).
    let as_import_error = |e: Error| match e {
        Error::Checkpoint { msg, .. } => cx.err(msg),
        e => e,
    };
    for (name, slot) in graph.state_mut() {
        let Some(s) = src.get(&name) else { continue };
        match slot {
            StateMut::F32(t) => {
                let mut data = file.f32s(s)?;
                if let Some(key) = conv_bias.get(&name) {
                    let bias = file.f32s(&src[key])?;
                    checkpoint::check_values(from, key, &bias).map_err(as_import_error)?;
                    data.iter_mut().zip(&bias).for_each(|(m, b)| *m -= b);
                }
                checkpoint::check_values(from, &name, &data).map_err(as_import_error)?;
                *t = Tensor::from_vec(s.shape(), data)?;
            }
            StateMut::I64(v) => *v = file.ints(s)?[0],
            StateMut::I32(map) => {
                *map = file
                    .ints(s)?
                    .into_iter()
                    .map(|v| {
                        i32::try_from(v).map_err(|_| {
                            cx.err(format!("tensor {name} holds {v}, which is not a channel index (outside i32)"))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
        }
    }
    checkpoint::validate_channel_maps(from, &graph).map_err(as_import_error)?;
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
    Ok((model, summary))
}

/// Imports `from` and writes the lfgcl checkpoint `out` (atomically).
pub fn import(from: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    let (model, summary) = import_model(from, opts)?;
    let info = serde_json::json!({
        "imported_from": crate::fsio::path_json(from),
        "normalization": if summary.normalization_known { "given" } else { "unknown" },
        "folded_conv_biases": summary.folded_conv_biases,
    });
    checkpoint::save(&model, out, &info)?;
    Ok(summary)
}
