//! Appends layers to a graph while tracking shapes and initialising parameters the way
//! PyTorch's CIFAR reference code does (Kaiming-normal conv/linear weights, BN weight 1 bias 0).

use crate::backend::{conv_out_size, ConvSpec};
use crate::error::{Error, Result};
use crate::nn::{BatchNorm, Conv2d, Graph, Linear, Node, Op, Param, ShortcutA};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

pub struct Builder {
    nodes: Vec<Node>,
    rng: StdRng,
    /// Parameters allocated so far, checked against `limits::MAX_PARAMS` before each tensor.
    params: usize,
}

impl Builder {
    pub fn new(input_shape: [usize; 3], seed: u64) -> Builder {
        let input = Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            out_shape: input_shape.to_vec(),
            width_slot: None,
        };
        Builder { nodes: vec![input], rng: StdRng::seed_from_u64(seed), params: 0 }
    }

    pub fn input(&self) -> usize {
        0
    }

    pub fn shape(&self, node: usize) -> &[usize] {
        &self.nodes[node].out_shape
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

    fn kaiming(&mut self, name: &str, dims: &[usize], fan_in: usize) -> Result<Tensor> {
        let max = crate::limits::MAX_PARAMS;
        let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let total = n.and_then(|n| n.checked_add(self.params)).filter(|&t| t <= max);
        let (n, total) = match (n, total) {
            (Some(n), Some(t)) => (n, t),
            _ => {
                return Err(Error::Invalid(format!(
                    "{name}: a weight of shape {dims:?} takes the net past {max} parameters (the largest this engine builds)"
                )))
            }
        };
        self.params = total;
        let std = (2.0 / fan_in.max(1) as f64).sqrt();
        let data = (0..n).map(|_| (self.rng.sample::<f64, _>(StandardNormal) * std) as f32).collect();
        Tensor::from_vec(dims, data)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        input: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        pad: usize,
        slot: Option<usize>,
    ) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        if h + 2 * pad < k || w + 2 * pad < k {
            return Err(Error::Shape(format!("{name}: a {k}x{k} kernel does not fit a {h}x{w} feature map")));
        }
        let weight = self.kaiming(name, &[out_c, c, k, k], c * k * k)?;
        let (oh, ow) = (conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad));
        let op = Op::Conv(Conv2d { weight: Param::new(weight), spec: ConvSpec { stride, pad, groups: 1 } });
        Ok(self.push(name, op, vec![input], vec![out_c, oh, ow], slot))
    }

    pub fn bn(&mut self, name: &str, input: usize) -> usize {
        let shape = self.shape(input).to_vec();
        let c = shape[0];
        let bn =
            BatchNorm::new(Tensor::full(&[c], 1.0), Tensor::zeros(&[c]), Tensor::zeros(&[c]), Tensor::full(&[c], 1.0));
        self.push(name, Op::BatchNorm(bn), vec![input], shape, None)
    }

    pub fn relu(&mut self, name: &str, input: usize) -> usize {
        let shape = self.shape(input).to_vec();
        self.push(name, Op::Relu, vec![input], shape, None)
    }

    pub fn add(&mut self, name: &str, a: usize, b: usize, relu: bool) -> Result<usize> {
        if self.shape(a) != self.shape(b) {
            return Err(Error::Shape(format!("{name}: cannot add {:?} and {:?}", self.shape(a), self.shape(b))));
        }
        let shape = self.shape(a).to_vec();
        Ok(self.push(name, Op::Add { relu }, vec![a, b], shape, None))
    }

    pub fn shortcut(&mut self, name: &str, input: usize, out_c: usize, stride: usize) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        let src = ShortcutA::padding_map(c, out_c);
        let shape = vec![out_c, h.div_ceil(stride), w.div_ceil(stride)];
        Ok(self.push(name, Op::Shortcut(ShortcutA { stride, src }), vec![input], shape, None))
    }

    pub fn maxpool(&mut self, name: &str, input: usize, kernel: usize, stride: usize) -> Result<usize> {
        let (c, h, w) = self.spatial(input, name)?;
        if h < kernel || w < kernel {
            return Err(Error::Shape(format!(
                "{name}: a {kernel}x{kernel} max pool does not fit a {h}x{w} feature map (input too small for this model)"
            )));
        }
        let shape = vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1];
        Ok(self.push(name, Op::MaxPool { kernel, stride, pad: 0 }, vec![input], shape, None))
    }

    pub fn global_avgpool(&mut self, name: &str, input: usize) -> Result<usize> {
        let (c, _, _) = self.spatial(input, name)?;
        Ok(self.push(name, Op::GlobalAvgPool, vec![input], vec![c], None))
    }

    pub fn flatten(&mut self, name: &str, input: usize) -> usize {
        let f = self.shape(input).iter().product();
        self.push(name, Op::Flatten, vec![input], vec![f], None)
    }

    pub fn linear(&mut self, name: &str, input: usize, out_f: usize, slot: Option<usize>) -> Result<usize> {
        let fin = match *self.shape(input) {
            [f] => f,
            ref s => return Err(Error::Shape(format!("{name}: expected flat features, got {s:?}"))),
        };
        let weight = self.kaiming(name, &[out_f, fin], fin)?;
        // PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (fin.max(1) as f32).sqrt();
        let bias: Vec<f32> = (0..out_f).map(|_| self.rng.random_range(-bound..=bound)).collect();
        let op = Op::Linear(Linear {
            weight: Param::new(weight),
            bias: Some(Param::new(Tensor::from_vec(&[out_f], bias)?)),
        });
        Ok(self.push(name, op, vec![input], vec![out_f], slot))
    }

    pub fn finish(self) -> Graph {
        Graph { nodes: self.nodes }
    }
}
