//! Checkpoints: safetensors files with PyTorch-style tensor names (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, ...) and the architecture in the metadata, so one file fully
//! describes a net, pruned or not. Writes are atomic.

use crate::backend::{Device, DeviceKind};
use crate::data::Normalization;
use crate::error::{write_atomic, Error, Result};
use crate::models::{Arch, Model};
use crate::nn::{StateMut, StateRef};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
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

/// Serialises a model to safetensors bytes.
pub fn to_bytes(model: &Model, info: &serde_json::Value) -> Result<Vec<u8>> {
    let state = model.graph.state();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(state.len());
    for (name, entry) in state {
        match entry {
            StateRef::F32(t) => owned.push((name, Dtype::F32, t.dims().to_vec(), le_bytes_f32(&t.to_vec()?))),
            StateRef::I64(v) => owned.push((name, Dtype::I64, vec![], v.to_le_bytes().to_vec())),
            StateRef::I32(v) => {
                owned.push((name, Dtype::I32, vec![v.len()], v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(KEY_ARCH.to_string(), serde_json::to_string(&model.arch).expect("arch serialises"));
    if let Some(norm) = &model.normalization {
        meta.insert(KEY_NORM.to_string(), serde_json::to_string(norm).expect("normalization serialises"));
    }
    if !info.is_null() {
        meta.insert(KEY_INFO.to_string(), info.to_string());
    }
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("serialising checkpoint: {e}")))
}

/// Writes a model atomically (temporary file, then rename).
pub fn save(model: &Model, path: impl AsRef<Path>, info: &serde_json::Value) -> Result<()> {
    write_atomic(path, &to_bytes(model, info)?)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<CheckpointMeta> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
    let map = metadata.metadata().clone().unwrap_or_default();
    let arch_json = map.get(KEY_ARCH).ok_or_else(|| {
        Error::checkpoint(path, "no architecture in the metadata (not written by lfgcl; import it with the model name)")
    })?;
    let arch: Arch = serde_json::from_str(arch_json)
        .map_err(|e| Error::checkpoint(path, format!("unreadable architecture metadata: {e}")))?;
    arch.validate().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let normalization = match map.get(KEY_NORM) {
        Some(s) => Some(
            serde_json::from_str(s)
                .map_err(|e| Error::checkpoint(path, format!("unreadable normalization metadata: {e}")))?,
        ),
        None => None,
    };
    let info = match map.get(KEY_INFO) {
        Some(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone())),
        None => serde_json::Value::Null,
    };
    Ok(CheckpointMeta { arch, normalization, info })
}

/// Reads only the metadata (architecture, normalisation, info).
pub fn read_meta(path: impl AsRef<Path>) -> Result<CheckpointMeta> {
    let path = path.as_ref();
    parse_meta(path, &read(path)?)
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Loads a checkpoint into a new model on `dev`. Every tensor the architecture needs must be
/// present with the right shape and type, and the file may hold nothing else.
pub fn load(path: impl AsRef<Path>, dev: &Device) -> Result<Model> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let meta = parse_meta(path, &bytes)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
    let mut graph = meta.arch.build_graph(0).map_err(|e| Error::checkpoint(path, e.to_string()))?;
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
    if used != st.len() {
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
    Ok(Model { arch: meta.arch, graph, normalization: meta.normalization })
}

/// Every shortcut map entry must name an input channel that exists.
fn validate_channel_maps(path: &Path, graph: &crate::nn::Graph) -> Result<()> {
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
