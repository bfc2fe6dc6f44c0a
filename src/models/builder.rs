//! Appends layers to a graph while tracking shapes, naming the width slots a family declares and
//! initialising parameters the way PyTorch's reference code does (Kaiming-normal conv/linear
//! weights, BN weight 1 bias 0) — or with zeros, for nets whose every tensor is about to be
//! overwritten (a gathered candidate, an import, a loaded checkpoint), or not at all (a probe
//! that only reads the slots and shapes).

use crate::backend::{conv_out_size, ConvSpec};
use crate::error::{Error, Result};
use crate::nn::{BatchNorm, Conv2d, Graph, Linear, Node, Op, Param, ShortcutA, WidthSlot};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// How a builder fills parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's defaults, from this seed.
    Kaiming(u64),
    /// Zeros (BN weight and running variance 1): every tensor is overwritten next.
    Zeros,
    /// No parameter storage at all: only the slots and shapes are read.
    Probe,
}

/// The output width of a conv or linear: a named slot of the architecture, or a fixed count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Slot(usize),
    Fixed(usize),
}

pub struct Builder {
    nodes: Vec<Node>,
    slots: Vec<WidthSlot>,
    /// The architecture's widths, one per slot in declaration order (None: the defaults).
    widths: Option<Vec<usize>>,
    init: Init,
    rng: StdRng,
    /// Parameters allocated so far, checked against `limits::MAX_PARAMS` before each tensor.
    params: usize,
}

impl Builder {
    pub fn new(input_shape: [usize; 3], widths: Option<Vec<usize>>, init: Init) -> Builder {
        let input = Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            out_shape: input_shape.to_vec(),
            width_slot: None,
        };
        let seed = if let Init::Kaiming(s) = init { s } else { 0 };
        Builder { nodes: vec![input], slots: vec![], widths, init, rng: StdRng::seed_from_u64(seed), params: 0 }
    }

    pub fn input(&self) -> usize {
        0
    }

    pub fn shape(&self, node: usize) -> &[usize] {
        &self.nodes[node].out_shape
    }

    /// Channels of a node's output.
    pub fn channels(&self, node: usize) -> usize {
        self.nodes[node].out_shape[0]
    }

    /// Declares a width slot: a prunable or importable output width, named for the user
    /// (`layer1.0.conv1`, `layer2 stream`). Its width is the architecture's entry, or `default`.
    pub fn slot(&mut self, name: impl Into<String>, default: usize) -> Result<Width> {
        let index = self.slots.len();
        let width = match &self.widths {
            Some(w) => *w.get(index).ok_or_else(|| {
                Error::Invalid(format!("the architecture has {} width entries, the model needs more", w.len()))
            })?,
            None => default,
        };
        self.slots.push(WidthSlot { name: name.into(), default, width });
        Ok(Width::Slot(index))
    }

    fn resolve(&self, w: Width) -> (usize, Option<usize>) {
        match w {
            Width::Slot(i) => (self.slots[i].width, Some(i)),
            Width::Fixed(n) => (n, None),
        }
    }

    fn push(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<usize>,
        out_shape: Vec<usize>,
        slot: Option<usize>,
    ) -> usize {
        self.nodes.push(Node { name: name.into(), op, inputs, out_shape, width_slot: slot });
        self.nodes.len() - 1
    }

    fn spatial(&self, node: usize, what: &str) -> Result<(usize, usize, usize)> {
        match *self.shape(node) {
            [c, h, w] => Ok((c, h, w)),
            ref s => Err(Error::Shape(format!("{what}: expected a [C,H,W] feature map, got {s:?}"))),
        }
    }

    /// Counts `dims` against the parameter limit, then fills them as `init` says.
    fn param(&mut self, name: &str, dims: &[usize], fan_in: usize, fill: Fill) -> Result<Tensor> {
        let max = crate::limits::MAX_PARAMS;
        let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let total = n.and_then(|n| n.checked_add(self.params)).filter(|&t| t <= max);
        let (n, total) = match (n, total) {
            (Some(n), Some(t)) => (n, t),
            _ => {
                return Err(Error::Invalid(format!(
                    "{name}: a tensor of shape {dims:?} takes the net past {max} parameters (the largest this engine builds)"
                )))
            }
        };
        self.params = total;
        match (self.init, fill) {
            (Init::Probe, _) => Tensor::from_vec(&[0], vec![]),
            (_, Fill::Const(v)) => Tensor::from_vec(dims, vec![v; n]),
            (Init::Zeros, _) => Tensor::from_vec(dims, vec![0.0; n]),
            (Init::Kaiming(_), Fill::Kaiming) => {
                let std = (2.0 / fan_in.max(1) as f64).sqrt();
                let data = (0..n).map(|_| (self.rng.sample::<f64, _>(StandardNormal) * std) as f32).collect();
                Tensor::from_vec(dims, data)
            }
            (Init::Kaiming(_), Fill::Bias) => {
                // PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                let data = (0..n).map(|_| self.rng.random_range(-bound..=bound)).collect();
                Tensor::from_vec(dims, data)
            }
        }
    }

    /// A dense convolution (no bias: every conv here is followed by batch norm).
    pub fn conv(&mut self, name: &str, input: usize, out: Width, k: usize, stride: usize, pad: usize) -> Result<usize> {
        self.conv_grouped(name, input, out, k, stride, pad, 1)
    }

    /// A convolution whose channels split into `groups` blocks (ResNeXt's grouped 3x3).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_grouped(
        &mut self,
        name: &str,
        input: usize,
        out: Width,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        let (out_c, slot) = self.resolve(out);
        if groups == 0 || !c.is_multiple_of(groups) || !out_c.is_multiple_of(groups) {
            return Err(Error::Invalid(format!(
                "{name}: {groups} groups must divide its {c} input and {out_c} output channels"
            )));
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            return Err(Error::Shape(format!(
                "{name}: a {k}x{k} kernel does not fit a {h}x{w} feature map (input too small for this model)"
            )));
        }
        let per_group = c / groups;
        let weight = self.param(name, &[out_c, per_group, k, k], per_group * k * k, Fill::Kaiming)?;
        let (oh, ow) = (conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad));
        let op = Op::Conv(Conv2d { weight: Param::new(weight), spec: ConvSpec { stride, pad, groups } });
        Ok(self.push(name, op, vec![input], vec![out_c, oh, ow], slot))
    }

    /// A depthwise convolution: one filter per input channel, as many outputs as inputs. It has no
    /// width of its own: it passes its input's channels through.
    pub fn depthwise(&mut self, name: &str, input: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
        let c = self.channels(input);
        self.conv_grouped(name, input, Width::Fixed(c), k, stride, pad, c)
    }

    pub fn bn(&mut self, name: &str, input: usize) -> Result<usize> {
        let shape = self.shape(input).to_vec();
        let c = shape[0];
        let weight = self.param(name, &[c], 1, Fill::Const(1.0))?;
        let bias = self.param(name, &[c], 1, Fill::Const(0.0))?;
        let mean = self.param(name, &[c], 1, Fill::Const(0.0))?;
        let var = self.param(name, &[c], 1, Fill::Const(1.0))?;
        Ok(self.push(name, Op::BatchNorm(BatchNorm::new(weight, bias, mean, var)), vec![input], shape, None))
    }

    pub fn relu(&mut self, name: &str, input: usize) -> usize {
        let shape = self.shape(input).to_vec();
        self.push(name, Op::Relu, vec![input], shape, None)
    }

    pub fn relu6(&mut self, name: &str, input: usize) -> usize {
        let shape = self.shape(input).to_vec();
        self.push(name, Op::Relu6, vec![input], shape, None)
    }

    pub fn add(&mut self, name: &str, a: usize, b: usize, relu: bool) -> Result<usize> {
        if self.shape(a) != self.shape(b) {
            return Err(Error::Shape(format!("{name}: cannot add {:?} and {:?}", self.shape(a), self.shape(b))));
        }
        let shape = self.shape(a).to_vec();
        Ok(self.push(name, Op::Add { relu }, vec![a, b], shape, None))
    }

    /// An option-A shortcut (CIFAR ResNets): subsample, and copy the input channels among zeros.
    pub fn shortcut(&mut self, name: &str, input: usize, out_c: usize, stride: usize) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        let src = ShortcutA::padding_map(c, out_c);
        let shape = vec![out_c, h.div_ceil(stride), w.div_ceil(stride)];
        Ok(self.push(name, Op::Shortcut(ShortcutA { stride, src }), vec![input], shape, None))
    }

    pub fn maxpool(&mut self, name: &str, input: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        if h + 2 * pad < kernel || w + 2 * pad < kernel {
            return Err(Error::Shape(format!(
                "{name}: a {kernel}x{kernel} max pool does not fit a {h}x{w} feature map (input too small for this model)"
            )));
        }
        let shape = vec![c, conv_out_size(h, kernel, stride, pad), conv_out_size(w, kernel, stride, pad)];
        Ok(self.push(name, Op::MaxPool { kernel, stride, pad }, vec![input], shape, None))
    }

    pub fn global_avgpool(&mut self, name: &str, input: usize) -> Result<usize> {
        let (c, _, _) = self.spatial(input, name)?;
        Ok(self.push(name, Op::GlobalAvgPool, vec![input], vec![c], None))
    }

    pub fn flatten(&mut self, name: &str, input: usize) -> usize {
        let f = self.shape(input).iter().product();
        self.push(name, Op::Flatten, vec![input], vec![f], None)
    }

    pub fn linear(&mut self, name: &str, input: usize, out: Width) -> Result<usize> {
        let fin = match *self.shape(input) {
            [f] => f,
            ref s => return Err(Error::Shape(format!("{name}: expected flat features, got {s:?}"))),
        };
        let (out_f, slot) = self.resolve(out);
        let weight = self.param(name, &[out_f, fin], fin, Fill::Kaiming)?;
        let bias = self.param(name, &[out_f], fin, Fill::Bias)?;
        let op = Op::Linear(Linear { weight: Param::new(weight), bias: Some(Param::new(bias)) });
        Ok(self.push(name, op, vec![input], vec![out_f], slot))
    }

    /// The graph; errors if the architecture gave more widths than the model declares.
    pub fn finish(self) -> Result<Graph> {
        if let Some(w) = &self.widths {
            if w.len() != self.slots.len() {
                return Err(Error::Invalid(format!(
                    "the architecture has {} width entries, the model has {}",
                    w.len(),
                    self.slots.len()
                )));
            }
        }
        Ok(Graph { nodes: self.nodes, slots: self.slots })
    }
}

/// What a parameter starts as under `Init::Kaiming`.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    Kaiming,
    Bias,
    Const(f32),
}
