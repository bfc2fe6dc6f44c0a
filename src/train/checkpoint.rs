//! Checkpoints: safetensors files with PyTorch-style tensor names (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, ...) and the architecture in the metadata, so one file fully
//! describes a net, pruned or not. Writes are atomic.

use crate::backend::{Device, DeviceKind};
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::models::{Arch, Model};
use crate::nn::{StateMut, StateRef};
use crate::tensor::Tensor;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const KEY_ARCH: &str = "lfgcl.arch";
const KEY_NORM: &str = "lfgcl.normalization";
const KEY_INFO: &str = "lfgcl.info";

/// What a checkpoint says about itself, readable without loading the tensors.
#[derive(Clone, Debug)]
pub struct CheckpointMeta {
    pub arch: Arch,
    pub normalization: Option<Normalization>,
    /// Free-form JSON the writer attached (training summary, pruning policy, ...).
    pub info: serde_json::Value,
}

fn le_bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor to write: name, dtype, shape and little-endian bytes.
pub(crate) type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensors of a model's state, ready to serialise.
pub(crate) fn raw_tensors(model: &Model) -> Result<Vec<RawTensor>> {
    let state = model.graph.state();
    let mut owned: Vec<RawTensor> = Vec::with_capacity(state.len());
    for (name, entry) in state {
        match entry {
            StateRef::F32(t) => owned.push((name, Dtype::F32, t.dims().to_vec(), le_bytes_f32(&t.to_vec()?))),
            StateRef::I64(v) => owned.push((name, Dtype::I64, vec![], v.to_le_bytes().to_vec())),
            StateRef::I32(v) => {
                owned.push((name, Dtype::I32, vec![v.len()], v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
        }
    }
    Ok(owned)
}

/// The metadata lfgcl writes for a model (architecture, normalisation, info).
pub(crate) fn model_metadata(model: &Model, info: &serde_json::Value) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(KEY_ARCH.to_string(), serde_json::to_string(&model.arch).expect("arch serialises"));
    if let Some(norm) = &model.normalization {
        meta.insert(KEY_NORM.to_string(), serde_json::to_string(norm).expect("normalization serialises"));
    }
    if !info.is_null() {
        meta.insert(KEY_INFO.to_string(), info.to_string());
    }
    meta
}

/// Canonical safetensors bytes: tensors sorted by name, laid out in that order, header keys
/// sorted (the `safetensors` crate takes the metadata as a `HashMap`, whose order changes from
/// run to run), so the same model always gives the same bytes.
pub(crate) fn serialize_canonical(mut tensors: Vec<RawTensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map serialises"));
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in &tensors {
        let numel: usize = shape.iter().product();
        if numel * dtype.bitsize() / 8 != bytes.len() {
            return Err(Error::Invalid(format!("tensor {name}: {} bytes for shape {shape:?}", bytes.len())));
        }
        let dtype_name = match dtype {
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            other => return Err(Error::Invalid(format!("tensor {name}: cannot write dtype {other:?}"))),
        };
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype_name, "shape": shape, "data_offsets": [offset, offset + bytes.len()] }),
        );
        offset += bytes.len();
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header serialises");
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, _, _, bytes) in &tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Serialises a model to safetensors bytes; the same model always gives the same bytes.
pub fn to_bytes(model: &Model, info: &serde_json::Value) -> Result<Vec<u8>> {
    serialize_canonical(raw_tensors(model)?, &model_metadata(model, info))
}

/// Writes a model atomically (temporary file, then rename).
pub fn save(model: &Model, path: impl AsRef<Path>, info: &serde_json::Value) -> Result<()> {
    write_atomic(path, &to_bytes(model, info)?)
}

/// The whole file, refused before reading unless it is a regular file within
/// `limits::MAX_CHECKPOINT_BYTES` whose header length fits in it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    read_header(path)?;
    crate::limits::read_bounded(path, crate::limits::MAX_CHECKPOINT_BYTES)
}

/// The JSON header of a safetensors file, read without the tensor data. Its claimed length is
/// checked against the file's real length and a ceiling before it is read.
fn read_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = crate::fsio::open_regular(path).map_err(|e| match e {
        Error::Format { msg, .. } => Error::checkpoint(path, msg),
        e => e,
    })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let len = meta.len();
    if len > crate::limits::MAX_CHECKPOINT_BYTES {
        return Err(Error::checkpoint(
            path,
            format!(
                "{len} bytes is larger than the {} bytes a checkpoint may have",
                crate::limits::MAX_CHECKPOINT_BYTES
            ),
        ));
    }
    let mut n = [0u8; 8];
    if len < 8 || file.read_exact(&mut n).is_err() {
        return Err(Error::checkpoint(path, format!("not a valid safetensors file ({len} bytes is too short)")));
    }
    let header_len = u64::from_le_bytes(n);
    if header_len > len - 8 || header_len > crate::limits::MAX_CHECKPOINT_HEADER_BYTES {
        return Err(Error::checkpoint(
            path,
            format!("the header claims {header_len} bytes but the file holds {len} (not a valid safetensors file)"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    Ok(header)
}

/// The string metadata of a safetensors header.
fn header_metadata(path: &Path, header: &[u8]) -> Result<HashMap<String, String>> {
    let v: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file (header: {e})")))?;
    match v.get("__metadata__") {
        None | Some(serde_json::Value::Null) => Ok(HashMap::new()),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file (metadata: {e})"))),
    }
}

fn parse_meta(path: &Path, map: &HashMap<String, String>) -> Result<CheckpointMeta> {
    let arch_json = map.get(KEY_ARCH).ok_or_else(|| {
        Error::checkpoint(path, "no architecture in the metadata (not written by lfgcl; import it with the model name)")
    })?;
    let arch: Arch = serde_json::from_str(arch_json)
        .map_err(|e| Error::checkpoint(path, format!("unreadable architecture metadata: {e}")))?;
    arch.validate().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let normalization: Option<Normalization> = match map.get(KEY_NORM) {
        Some(s) => Some(
            serde_json::from_str(s)
                .map_err(|e| Error::checkpoint(path, format!("unreadable normalization metadata: {e}")))?,
        ),
        None => None,
    };
    // The check every reader of a normalisation applies (import, eval, search, fine-tuning).
    if let Some(n) = &normalization {
        n.check(arch.in_channels).map_err(|e| Error::checkpoint(path, format!("normalization metadata: {e}")))?;
    }
    let info = match map.get(KEY_INFO) {
        Some(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone())),
        None => serde_json::Value::Null,
    };
    Ok(CheckpointMeta { arch, normalization, info })
}

/// Reads only the metadata (architecture, normalisation, info).
pub fn read_meta(path: impl AsRef<Path>) -> Result<CheckpointMeta> {
    let path = path.as_ref();
    parse_meta(path, &header_metadata(path, &read_header(path)?)?)
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Loads a checkpoint into a new model on `dev`. Every tensor the architecture needs must be
/// present with the right shape and type, and the file may hold nothing else.
pub fn load(path: impl AsRef<Path>, dev: &Device) -> Result<Model> {
    let path = path.as_ref();
    let bytes = read(path)?;
    Ok(load_bytes(path, &bytes, dev, None)?.0)
}

/// F32 tensors a file holds besides the model's: name, dims, values.
pub(crate) type Extras = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Loads a model from checkpoint bytes; tensors whose names start with `extra_prefix` are not
/// the model's and are returned apart (with the string metadata) instead of being refused.
fn load_bytes(
    path: &Path,
    bytes: &[u8],
    dev: &Device,
    extra_prefix: Option<&str>,
) -> Result<(Model, Extras, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
    // `deserialize` has checked the header length against the buffer.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let raw_meta = header_metadata(path, &bytes[8..8 + header_len])?;
    let meta = parse_meta(path, &raw_meta)?;
    let mut extras: Extras = Vec::new();
    if let Some(prefix) = extra_prefix {
        for (name, view) in st.tensors() {
            if !name.starts_with(prefix) {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(Error::checkpoint(path, format!("tensor {name} should be F32")));
            }
            let v: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            check_values(path, &name, &v)?;
            extras.push((name, view.shape().to_vec(), v));
        }
        extras.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut graph = meta.arch.build_graph_zeroed().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut used = 0usize;
    for (name, slot) in graph.state_mut() {
        let view = match st.tensor(&name) {
            Ok(v) => v,
            // Shortcut maps are only written once streams are pruned by tools that predate them;
            // the builder's padding map is the unpruned default.
            Err(_) if name.ends_with(".channel_map") => continue,
            Err(_) => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor {name} is missing (the file does not match {} with its stored widths)",
                        meta.arch.model
                    ),
                ))
            }
        };
        used += 1;
        let data = view.data();
        match slot {
            StateMut::F32(t) => {
                if view.dtype() != Dtype::F32 {
                    return Err(Error::checkpoint(
                        path,
                        format!("tensor {name} is {}, expected F32", dtype_name(view.dtype())),
                    ));
                }
                if view.shape() != t.dims() {
                    return Err(Error::checkpoint(
                        path,
                        format!("tensor {name} has shape {:?}, the model expects {:?}", view.shape(), t.dims()),
                    ));
                }
                let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                check_values(path, &name, &v)?;
                *t = Tensor::from_vec(view.shape(), v)?;
            }
            StateMut::I64(v) => {
                *v = match (view.dtype(), data.len()) {
                    (Dtype::I64, 8) => i64::from_le_bytes(data.try_into().expect("8 bytes")),
                    _ => {
                        return Err(Error::checkpoint(path, format!("tensor {name} should be one I64 value")));
                    }
                };
            }
            StateMut::I32(map) => {
                if view.dtype() != Dtype::I32 || view.shape() != [map.len()] {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor {name} should be I32 of shape [{}], got {} {:?}",
                            map.len(),
                            dtype_name(view.dtype()),
                            view.shape()
                        ),
                    ));
                }
                let v: Vec<i32> = data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                *map = v;
            }
        }
    }
    if used + extras.len() != st.len() {
        let known: std::collections::HashSet<String> = graph.state().into_iter().map(|(n, _)| n).collect();
        let extra: Vec<String> =
            st.names().into_iter().filter(|n| !known.contains(*n)).map(|s| s.to_string()).collect();
        return Err(Error::checkpoint(
            path,
            format!("holds tensors {} does not have: {}", meta.arch.model, extra.join(", ")),
        ));
    }
    validate_channel_maps(path, &graph)?;
    if dev.kind() != DeviceKind::Cpu {
        graph.to_device(dev)?;
    }
    Ok((Model { arch: meta.arch, graph, normalization: meta.normalization }, extras, raw_meta))
}

const KEY_TRAIN_STATE: &str = "lfgcl.train_state";
const MOMENTUM_PREFIX: &str = "optimizer.momentum.";

/// Everything an interrupted training or fine-tuning run needs to continue exactly: the model,
/// the optimiser's momentum buffers (by parameter index; `None` where a parameter has none yet)
/// and a JSON record (epochs done, the log so far, the run's settings).
pub struct TrainState {
    pub model: Model,
    pub momentum: Vec<Option<Tensor>>,
    pub record: serde_json::Value,
}

/// Writes a training state atomically, as one safetensors file, so that it is always whole.
pub fn save_train_state(
    path: impl AsRef<Path>,
    model: &Model,
    momentum: &[Option<Tensor>],
    record: &serde_json::Value,
) -> Result<()> {
    let mut tensors = raw_tensors(model)?;
    for (i, buf) in momentum.iter().enumerate() {
        if let Some(t) = buf {
            // Zero-padded so that names sort in parameter order.
            tensors.push((
                format!("{MOMENTUM_PREFIX}{i:06}"),
                Dtype::F32,
                t.dims().to_vec(),
                le_bytes_f32(&t.to_vec()?),
            ));
        }
    }
    let mut meta = model_metadata(model, &serde_json::Value::Null);
    let mut record = record.clone();
    record["momentum_buffers"] = serde_json::json!(momentum.len());
    meta.insert(KEY_TRAIN_STATE.to_string(), record.to_string());
    write_atomic(path, &serialize_canonical(tensors, &meta)?)
}

/// Reads a state written by [`save_train_state`] onto `dev`.
pub fn load_train_state(path: impl AsRef<Path>, dev: &Device) -> Result<TrainState> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let (model, extras, meta) = load_bytes(path, &bytes, dev, Some(MOMENTUM_PREFIX))?;
    let record: serde_json::Value = meta
        .get(KEY_TRAIN_STATE)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::checkpoint(path, "no training state record in the metadata"))?;
    let count = record["momentum_buffers"]
        .as_u64()
        .filter(|&n| n as usize >= extras.len() && n < 1 << 20)
        .ok_or_else(|| Error::checkpoint(path, "bad momentum buffer count in the training state"))?
        as usize;
    let mut momentum: Vec<Option<Tensor>> = (0..count).map(|_| None).collect();
    for (name, dims, values) in extras {
        let i = name[MOMENTUM_PREFIX.len()..]
            .parse::<usize>()
            .ok()
            .filter(|&i| i < count)
            .ok_or_else(|| Error::checkpoint(path, format!("unexpected tensor {name}")))?;
        momentum[i] = Some(dev.from_host(&dims, &values)?);
    }
    Ok(TrainState { model, momentum, record })
}

/// A loaded tensor must be finite (a NaN weight hides behind ReLUs and still "evaluates"), and
/// batch-norm variances must not be negative.
pub(crate) fn check_values(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::checkpoint(path, format!("tensor {name} holds a non-finite value ({}) at index {i}", v[i])));
    }
    if name.ends_with("running_var") {
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            return Err(Error::checkpoint(
                path,
                format!("tensor {name} holds a negative variance ({}) at index {i}", v[i]),
            ));
        }
    }
    Ok(())
}

/// Every shortcut map entry must name an input channel that exists.
pub(crate) fn validate_channel_maps(path: &Path, graph: &crate::nn::Graph) -> Result<()> {
    for node in &graph.nodes {
        if let crate::nn::Op::Shortcut(s) = &node.op {
            let in_c = graph.nodes[node.inputs[0]].out_shape[0] as i32;
            if let Some(bad) = s.src.iter().find(|&&v| v < -1 || v >= in_c) {
                return Err(Error::checkpoint(
                    path,
                    format!("{}.channel_map refers to channel {bad} of a {in_c}-channel input", node.name),
                ));
            }
        }
    }
    Ok(())
}
