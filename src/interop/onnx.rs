//! ONNX export of any lfgcl net, pruned or not: opset 13 or later, dynamic batch, batch norm
//! folded into the preceding conv or linear by default (`keep_bn` emits BatchNormalization).
//!
//! Input normalisation is not a node: the graph takes the same normalised tensor lfgcl's
//! `Model::predict` takes, `(pixel / 255 - mean[c]) / std[c]`, and the model's metadata_props
//! say so (`lfgcl.input`) and carry the mean and std (`lfgcl.normalization`, JSON, or
//! `unknown`) together with the architecture (`lfgcl.arch`).
//!
//! Option-A shortcuts, including the channel maps of pruned residual streams, are exported
//! exactly: a strided Slice (the spatial subsampling), a Pad of one zero channel when the map has
//! zero (-1) entries, and a Gather of the mapped channels (-1 pointing at the zero channel).

use super::proto::{self, *};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::models::Model;
use crate::nn::{Graph, Op};
use crate::tensor::Tensor;
use prost::Message;
use std::path::Path;

/// Lowest and highest opset the exporter writes (every op it uses is unchanged for inference
/// across this range).
pub const MIN_OPSET: i64 = 13;
pub const MAX_OPSET: i64 = 21;

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub opset: i64,
    /// Keep batch norm as BatchNormalization nodes instead of folding it into the weights.
    pub keep_bn: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: MIN_OPSET, keep_bn: false }
    }
}

/// What the exporter wrote, for the command line to print.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    pub nodes: usize,
    pub initializers: usize,
    pub folded_batch_norms: usize,
    pub bytes: usize,
}

/// The IR version that goes with an opset (the oldest one that allows it, so older runtimes load it).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

fn tensor_value(name: &str, elem_type: i32, dims: Vec<tensor_shape_proto::Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
        }),
        doc_string: None,
    }
}

fn dim_value(v: usize) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimValue(v as i64)) }
}

fn dim_param(p: &str) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimParam(p.into())) }
}

/// Builds the node list and initializers.
struct GraphWriter {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphWriter {
    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::FLOAT),
            name: Some(name.into()),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: Some(proto::INT64),
            name: Some(name.into()),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        name.to_string()
    }

    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, output: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_vec()
}

/// Per-channel `scale` and `shift` of a batch norm in inference: `y = x * scale + shift`.
fn bn_affine(bn: &crate::nn::BatchNorm) -> Result<(Vec<f64>, Vec<f64>)> {
    let (g, b, m, v) =
        (host(&bn.weight.value)?, host(&bn.bias.value)?, host(&bn.running_mean)?, host(&bn.running_var)?);
    let scale: Vec<f64> = g.iter().zip(&v).map(|(&g, &v)| g as f64 / (v as f64 + bn.eps as f64).sqrt()).collect();
    let shift = b.iter().zip(&m).zip(&scale).map(|((&b, &m), &s)| b as f64 - m as f64 * s).collect();
    Ok((scale, shift))
}

/// Scales the rows of a `[out, ...]` weight by `scale[out]` and returns the folded bias
/// `scale * bias + shift`.
fn fold_rows(weight: &mut [f32], bias: Option<&[f32]>, scale: &[f64], shift: &[f64]) -> Vec<f32> {
    let row = weight.len() / scale.len().max(1);
    for (o, chunk) in weight.chunks_mut(row).enumerate() {
        for w in chunk {
            *w = (*w as f64 * scale[o]) as f32;
        }
    }
    (0..scale.len()).map(|o| (bias.map_or(0.0, |b| b[o] as f64) * scale[o] + shift[o]) as f32).collect()
}

/// How many nodes read each node's output.
fn consumers(graph: &Graph) -> Vec<usize> {
    let mut n = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for &i in &node.inputs {
            n[i] += 1;
        }
    }
    n
}

/// The ONNX model of `model` (host tensors are read; the model may live on any device).
pub fn to_model_proto(model: &Model, opts: &ExportOptions) -> Result<(ModelProto, ExportSummary)> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opts.opset) {
        return Err(Error::Invalid(format!("opset {} is not supported (use {MIN_OPSET} to {MAX_OPSET})", opts.opset)));
    }
    let graph = &model.graph;
    let last = graph.output_index();
    let value_name = |i: usize| -> String {
        if i == 0 {
            "input".into()
        } else if i == last {
            "logits".into()
        } else {
            graph.nodes[i].name.clone()
        }
    };
    let uses = consumers(graph);
    // A conv or linear whose only reader is a batch norm absorbs it (unless keep_bn).
    let folded_into = |i: usize| -> Option<usize> {
        if opts.keep_bn || uses[i] != 1 {
            return None;
        }
        let j = i + 1;
        (j < graph.nodes.len() && graph.nodes[j].inputs == [i] && matches!(graph.nodes[j].op, Op::BatchNorm(_)))
            .then_some(j)
    };
    let mut w = GraphWriter { nodes: Vec::new(), initializers: Vec::new() };
    let mut folded = 0usize;
    let mut skip = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate().skip(1) {
        if skip[i] {
            continue;
        }
        let inputs: Vec<String> = node.inputs.iter().map(|&j| value_name(j)).collect();
        let name = &node.name;
        match &node.op {
            Op::Input => return Err(Error::Invalid(format!("{name}: a second input node cannot be exported"))),
            Op::Conv(c) => {
                let dims = c.weight.value.dims().to_vec();
                let mut weight = host(&c.weight.value)?;
                let (out, bias) = match folded_into(i) {
                    Some(j) => {
                        let Op::BatchNorm(bn) = &graph.nodes[j].op else { unreachable!("checked above") };
                        let (scale, shift) = bn_affine(bn)?;
                        let b = fold_rows(&mut weight, None, &scale, &shift);
                        skip[j] = true;
                        folded += 1;
                        (value_name(j), Some(b))
                    }
                    None => (value_name(i), None),
                };
                let mut ins = vec![inputs[0].clone(), w.init_f32(&format!("{name}.weight"), &dims, &weight)];
                if let Some(b) = bias {
                    ins.push(w.init_f32(&format!("{name}.bias"), &[dims[0]], &b));
                }
                let (k, s, p) = (dims[2] as i64, c.spec.stride as i64, c.spec.pad as i64);
                let mut attrs = vec![
                    attr_ints("kernel_shape", &[k, k]),
                    attr_ints("strides", &[s, s]),
                    attr_ints("pads", &[p, p, p, p]),
                ];
                if c.spec.groups > 1 {
                    attrs.push(attr_int("group", c.spec.groups as i64));
                }
                w.node("Conv", name, ins, &out, attrs);
            }
            Op::Linear(l) => {
                let dims = l.weight.value.dims().to_vec();
                let mut weight = host(&l.weight.value)?;
                let bias = match &l.bias {
                    Some(b) => host(&b.value)?,
                    None => vec![0.0; dims[0]],
                };
                let (out, bias) = match folded_into(i) {
                    Some(j) => {
                        let Op::BatchNorm(bn) = &graph.nodes[j].op else { unreachable!("checked above") };
                        let (scale, shift) = bn_affine(bn)?;
                        let b = fold_rows(&mut weight, Some(&bias), &scale, &shift);
                        skip[j] = true;
                        folded += 1;
                        (value_name(j), b)
                    }
                    None => (value_name(i), bias),
                };
                let ins = vec![
                    inputs[0].clone(),
                    w.init_f32(&format!("{name}.weight"), &dims, &weight),
                    w.init_f32(&format!("{name}.bias"), &[dims[0]], &bias),
                ];
                w.node("Gemm", name, ins, &out, vec![attr_int("transB", 1)]);
            }
            Op::BatchNorm(bn) => {
                let c = bn.channels();
                let ins = vec![
                    inputs[0].clone(),
                    w.init_f32(&format!("{name}.weight"), &[c], &host(&bn.weight.value)?),
                    w.init_f32(&format!("{name}.bias"), &[c], &host(&bn.bias.value)?),
                    w.init_f32(&format!("{name}.running_mean"), &[c], &host(&bn.running_mean)?),
                    w.init_f32(&format!("{name}.running_var"), &[c], &host(&bn.running_var)?),
                ];
                w.node("BatchNormalization", name, ins, &value_name(i), vec![attr_float("epsilon", bn.eps)]);
            }
            Op::Relu => w.node("Relu", name, inputs, &value_name(i), vec![]),
            Op::Relu6 => {
                // Clip takes its bounds as inputs from opset 11 on.
                let ins = vec![
                    inputs[0].clone(),
                    w.init_f32(&format!("{name}.min"), &[], &[0.0]),
                    w.init_f32(&format!("{name}.max"), &[], &[6.0]),
                ];
                w.node("Clip", name, ins, &value_name(i), vec![]);
            }
            Op::Add { relu } => {
                if *relu {
                    let sum = format!("{name}.sum");
                    w.node("Add", name, inputs, &sum, vec![]);
                    w.node("Relu", &format!("{name}.relu"), vec![sum], &value_name(i), vec![]);
                } else {
                    w.node("Add", name, inputs, &value_name(i), vec![]);
                }
            }
            Op::Shortcut(s) => {
                let in_c = graph.nodes[node.inputs[0]].out_shape[0];
                let mut x = inputs[0].clone();
                if s.stride != 1 {
                    let st = s.stride as i64;
                    let ins = vec![
                        x,
                        w.init_i64(&format!("{name}.starts"), &[0, 0]),
                        w.init_i64(&format!("{name}.ends"), &[i64::MAX, i64::MAX]),
                        w.init_i64(&format!("{name}.axes"), &[2, 3]),
                        w.init_i64(&format!("{name}.steps"), &[st, st]),
                    ];
                    x = format!("{name}.subsampled");
                    w.node("Slice", &format!("{name}.subsample"), ins, &x, vec![]);
                }
                let has_zero = s.src.iter().any(|&v| v < 0);
                if has_zero {
                    // One zero channel after the inputs; -1 entries select it.
                    let ins = vec![x, w.init_i64(&format!("{name}.pads"), &[0, 0, 0, 0, 0, 1, 0, 0])];
                    x = format!("{name}.padded");
                    w.node("Pad", &format!("{name}.zero_channel"), ins, &x, vec![]);
                }
                let idx: Vec<i64> = s.src.iter().map(|&v| if v < 0 { in_c as i64 } else { v as i64 }).collect();
                let ins = vec![x, w.init_i64(&format!("{name}.channel_map"), &idx)];
                w.node("Gather", &format!("{name}.gather"), ins, &value_name(i), vec![attr_int("axis", 1)]);
            }
            Op::MaxPool { kernel, stride, pad } => {
                let (k, s, p) = (*kernel as i64, *stride as i64, *pad as i64);
                let mut attrs = vec![attr_ints("kernel_shape", &[k, k]), attr_ints("strides", &[s, s])];
                if p > 0 {
                    attrs.push(attr_ints("pads", &[p, p, p, p]));
                }
                w.node("MaxPool", name, inputs, &value_name(i), attrs);
            }
            Op::GlobalAvgPool => {
                let pooled = format!("{name}.pooled");
                w.node("GlobalAveragePool", name, inputs, &pooled, vec![]);
                w.node("Flatten", &format!("{name}.flatten"), vec![pooled], &value_name(i), vec![attr_int("axis", 1)]);
            }
            Op::Flatten => w.node("Flatten", name, inputs, &value_name(i), vec![attr_int("axis", 1)]),
        }
    }
    let in_shape = graph.input_shape();
    let input = tensor_value("input", proto::FLOAT, {
        let mut d = vec![dim_param("batch")];
        d.extend(in_shape.iter().map(|&v| dim_value(v)));
        d
    });
    let classes = graph.nodes[last].out_shape.iter().product();
    let output = tensor_value("logits", proto::FLOAT, vec![dim_param("batch"), dim_value(classes)]);
    let norm = match &model.normalization {
        Some(n) => serde_json::to_string(n).expect("normalization serialises"),
        None => "unknown".into(),
    };
    let meta = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let summary = ExportSummary {
        nodes: w.nodes.len(),
        initializers: w.initializers.len(),
        folded_batch_norms: folded,
        bytes: 0,
    };
    let doc = format!(
        "{} exported by lfgcl. Input: float32 [batch, {}] normalised as (pixel/255 - mean[c]) / std[c] \
         with the mean and std in metadata lfgcl.normalization; output: logits [batch, {classes}].",
        model.arch.model,
        in_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );
    let model_proto = ModelProto {
        ir_version: Some(ir_version(opts.opset)),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) }],
        producer_name: Some("lfgcl".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(doc),
        graph: Some(GraphProto {
            node: w.nodes,
            name: Some(model.arch.model.clone()),
            initializer: w.initializers,
            doc_string: None,
            input: vec![input],
            output: vec![output],
            value_info: vec![],
        }),
        metadata_props: vec![
            meta("lfgcl.arch", serde_json::to_string(&model.arch).expect("arch serialises")),
            meta("lfgcl.normalization", norm),
            meta(
                "lfgcl.input",
                "float32 [batch, C, H, W] = (pixel/255 - mean[c]) / std[c] (lfgcl.normalization); \
                 normalisation is not part of the graph"
                    .into(),
            ),
            meta("lfgcl.batch_norm", if opts.keep_bn { "kept" } else { "folded" }.into()),
            meta("lfgcl.macs_per_image", model.cost().macs.to_string()),
        ],
    };
    Ok((model_proto, summary))
}

/// Serialised ONNX bytes of `model`.
pub fn to_bytes(model: &Model, opts: &ExportOptions) -> Result<(Vec<u8>, ExportSummary)> {
    let (m, mut summary) = to_model_proto(model, opts)?;
    let bytes = m.encode_to_vec();
    summary.bytes = bytes.len();
    Ok((bytes, summary))
}

/// Writes `model` as ONNX to `path` atomically.
pub fn export(model: &Model, path: impl AsRef<Path>, opts: &ExportOptions) -> Result<ExportSummary> {
    let (bytes, summary) = to_bytes(model, opts)?;
    write_atomic(path, &bytes)?;
    Ok(summary)
}
