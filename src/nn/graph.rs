//! A network as a small static graph of layers (a DAG in topological order). Forward runs the
//! nodes in order; backward runs them in reverse, calling each layer's hand-written backward
//! and summing gradients where a value feeds several consumers (the residual stream). The
//! explicit node list is also what pruning reads to find coupled channels.

use super::layers::{BatchNorm, Conv2d, Linear, Param, ShortcutA};
use crate::backend::{Activation, ConvEpilogue, Device};
use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};

// A net has a few dozen nodes: boxing the layers would add indirection and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Op {
    /// The image batch.
    Input,
    Conv(Conv2d),
    BatchNorm(BatchNorm),
    Relu,
    /// `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
    /// Element-wise sum of two inputs, optionally followed by ReLU (the end of a residual block).
    Add {
        relu: bool,
    },
    Shortcut(ShortcutA),
    MaxPool {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    GlobalAvgPool,
    /// `[N,C,H,W] -> [N,C*H*W]`.
    Flatten,
    Linear(Linear),
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv(_) => "Conv2d",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Relu => "ReLU",
            Op::Relu6 => "ReLU6",
            Op::Add { relu: false } => "Add",
            Op::Add { relu: true } => "Add+ReLU",
            Op::Shortcut(_) => "ShortcutA",
            Op::MaxPool { .. } => "MaxPool2d",
            Op::GlobalAvgPool => "AvgPool",
            Op::Flatten => "Flatten",
            Op::Linear(_) => "Linear",
        }
    }
}

/// Wall time of one step of a profiled forward (`Graph::forward_profiled`,
/// `Graph::forward_train_profiled`): node `first`, or the nodes `first..=last` run as one op (an
/// eval conv chain fused into its conv, a training batch norm -> activation pair).
#[derive(Clone, Copy, Debug)]
pub struct StepTime {
    pub first: usize,
    pub last: usize,
    pub seconds: f64,
}

/// What part of a node's backward a `BackwardTime` measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardPart {
    /// A convolution's weight gradient.
    ConvWeight,
    /// A convolution's input gradient, or all of another node's backward; with the gradient's
    /// hand-over to the node's inputs either way.
    Rest,
}

/// Wall time of one part of one node's backward (`Graph::backward_profiled`).
#[derive(Clone, Copy, Debug)]
pub struct BackwardTime {
    pub node: usize,
    pub part: BackwardPart,
    pub seconds: f64,
}

/// Laps of a profiled backward: each ends with the device synchronised. Without a record to
/// write to it does nothing, so the unprofiled pass pays nothing.
struct Laps<'a> {
    record: Option<&'a mut Vec<BackwardTime>>,
    since: std::time::Instant,
}

impl Laps<'_> {
    fn lap(&mut self, dev: &Device, node: usize, part: BackwardPart) -> Result<()> {
        if let Some(record) = self.record.as_deref_mut() {
            dev.synchronize()?;
            let now = std::time::Instant::now();
            record.push(BackwardTime { node, part, seconds: (now - self.since).as_secs_f64() });
            self.since = now;
        }
        Ok(())
    }
}

pub struct Node {
    /// PyTorch-style module path (`layer1.0.conv1`); parameter names append `.weight` etc.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    /// Per-sample output shape: `[C, H, W]`, or `[F]` after flattening.
    pub out_shape: Vec<usize>,
    /// For convs and linears: the entry of the architecture's width vector that sets this
    /// layer's output width (None when the width is fixed, e.g. the class count).
    pub width_slot: Option<usize>,
}

/// A named output width of the architecture: what pruning and import change (`Arch::widths`
/// holds one entry per slot, in declaration order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WidthSlot {
    /// For the user: `layer1.0.conv1`, `layer2 stream`, `features.3`.
    pub name: String,
    /// The unpruned width.
    pub default: usize,
    /// The width this graph was built with.
    pub width: usize,
}

/// Whether batch norm uses batch statistics (and updates its running ones) or running ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// An eval-mode conv -> batch norm [-> ReLU | -> add (+ ReLU)] chain run as one fused conv.
struct FusedChain {
    /// The last node of the chain: its output is the fused conv's.
    end: usize,
    /// The add's other input, when the chain ends in an add.
    residual: Option<usize>,
    act: Activation,
}

/// Every node's output of a training-mode forward pass, kept for the backward pass.
pub struct Trace {
    values: Vec<Option<Tensor>>,
}

impl Trace {
    /// The network output (logits).
    pub fn output(&self) -> &Tensor {
        self.values.last().and_then(|v| v.as_ref()).expect("trace holds the output")
    }
    pub fn value(&self, node: usize) -> Option<&Tensor> {
        self.values.get(node).and_then(|v| v.as_ref())
    }
}

/// The gradients of a backward pass, one slot per node. An add passes the same gradient to both
/// its inputs: it is stored once, in the slot of the input processed last, and the other input
/// (processed first, nodes going backwards) reads it there (`shared`), unless that slot changes
/// first; then the reader gets its own copy. This saves a copy of a whole activation per residual
/// block in a training step.
struct Grads {
    slots: Vec<Option<Tensor>>,
    /// `shared[x] = Some(j)`: node `x`'s gradient is what slot `j` holds.
    shared: Vec<Option<usize>>,
}

impl Grads {
    fn new(n: usize) -> Grads {
        Grads { slots: (0..n).map(|_| None).collect(), shared: vec![None; n] }
    }

    /// Before slot `j` changes: every node reading it gets its own copy.
    fn settle(&mut self, dev: &Device, j: usize) -> Result<()> {
        for x in 0..self.shared.len() {
            if self.shared[x] == Some(j) {
                self.shared[x] = None;
                let copy = dev.copy(self.slots[j].as_ref().expect("a shared gradient's slot holds it"))?;
                self.accumulate(dev, x, copy)?;
            }
        }
        Ok(())
    }

    /// Adds `g` into slot `j` (which shares nothing and is read by nobody).
    fn accumulate(&mut self, dev: &Device, j: usize, g: Tensor) -> Result<()> {
        match &mut self.slots[j] {
            Some(acc) => dev.add_assign(acc, &g),
            slot @ None => {
                *slot = Some(g);
                Ok(())
            }
        }
    }

    /// Node `j`'s own copy of a gradient it shares, if it does.
    fn unshare(&mut self, dev: &Device, j: usize) -> Result<()> {
        if let Some(src) = self.shared[j].take() {
            let copy = dev.copy(self.slots[src].as_ref().expect("a shared gradient's slot holds it"))?;
            self.accumulate(dev, j, copy)?;
        }
        Ok(())
    }

    /// Adds `g` to node `j`'s gradient (node 0, the image, needs none).
    fn add(&mut self, dev: &Device, j: usize, g: Tensor) -> Result<()> {
        if j == 0 {
            return Ok(());
        }
        self.unshare(dev, j)?;
        self.settle(dev, j)?;
        self.accumulate(dev, j, g)
    }

    /// Adds the same `g` to nodes `a` and `b` (an add's inputs), stored once when both were empty.
    fn add_to_both(&mut self, dev: &Device, a: usize, b: usize, g: Tensor) -> Result<()> {
        let empty = |s: &Grads, j: usize| j != 0 && s.slots[j].is_none() && s.shared[j].is_none();
        if a != b && empty(self, a) && empty(self, b) {
            self.settle(dev, a)?;
            self.settle(dev, b)?;
            // The larger index is processed first: it reads the smaller one's slot.
            let (first, last) = (a.max(b), a.min(b));
            self.slots[last] = Some(g);
            self.shared[first] = Some(last);
            return Ok(());
        }
        if a != 0 {
            self.add(dev, a, dev.copy(&g)?)?;
        }
        self.add(dev, b, g)
    }

    /// Node `i`'s gradient for its backward: owned, or `(None, Some(j))` when it reads slot
    /// `j`'s (which stays there for the node that owns it).
    fn take(&mut self, dev: &Device, i: usize) -> Result<(Option<Tensor>, Option<usize>)> {
        // A node shares only while its own slot is empty: `add` unshares before adding to it.
        if let Some(j) = self.shared[i].take() {
            debug_assert!(self.slots[i].is_none(), "a sharing node's own slot is empty");
            return Ok((None, Some(j)));
        }
        self.settle(dev, i)?;
        Ok((self.slots[i].take(), None))
    }
}

/// A state-dict entry: what a checkpoint stores under one name.
pub enum StateRef<'a> {
    F32(&'a Tensor),
    I64(i64),
    I32(&'a [i32]),
}

pub enum StateMut<'a> {
    F32(&'a mut Tensor),
    I64(&'a mut i64),
    I32(&'a mut Vec<i32>),
}

pub struct Graph {
    pub nodes: Vec<Node>,
    /// The width slots the family declared, in order.
    pub slots: Vec<WidthSlot>,
}

impl Graph {
    pub fn output_index(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.nodes[0].out_shape
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let want = self.input_shape();
        if x.rank() != want.len() + 1 || &x.dims()[1..] != want {
            return Err(Error::Shape(format!(
                "network expects input [N, {}], got {}",
                want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                fmt_dims(x.dims())
            )));
        }
        Ok(())
    }

    /// The last node index that reads each node's output (the node itself when nothing does).
    fn last_uses(&self) -> Vec<usize> {
        let mut last: Vec<usize> = (0..self.nodes.len()).collect();
        for (j, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last[i] = last[i].max(j);
            }
        }
        last
    }

    /// Output of a node from its inputs' values; batch norm in training mode needs `&mut`.
    fn run_node(node: &mut Node, dev: &Device, values: &[Option<Tensor>], mode: Mode) -> Result<Tensor> {
        let x = value_of(values, node.inputs[0], &node.name)?;
        Ok(match &mut node.op {
            Op::Input => unreachable!("the input node is filled in by the caller"),
            Op::Conv(c) => c.forward(dev, x)?,
            Op::BatchNorm(bn) => match mode {
                Mode::Train => bn.forward_train(dev, x)?,
                Mode::Eval => bn.forward_eval(dev, x)?,
            },
            Op::Relu => dev.relu_forward(x)?,
            Op::Relu6 => dev.relu6_forward(x)?,
            Op::Add { relu } => {
                let b = value_of(values, node.inputs[1], &node.name)?;
                if *relu {
                    dev.add_relu(x, b)?
                } else {
                    dev.add(x, b)?
                }
            }
            Op::Shortcut(s) => dev.shortcut_forward(x, &s.src, s.stride)?,
            Op::MaxPool { kernel, stride, pad } => dev.maxpool_forward(x, *kernel, *stride, *pad)?,
            Op::GlobalAvgPool => dev.global_avgpool_forward(x)?,
            Op::Flatten => {
                let n = x.dims()[0];
                let f = x.numel() / n.max(1);
                dev.copy(x)?.reshape(&[n, f])?
            }
            Op::Linear(l) => l.forward(dev, x)?,
        })
    }

    /// The fusable chain starting at node `i` in an eval-mode pass: a conv whose only reader is a
    /// batch norm, optionally followed by the batch norm's only reader when that is a ReLU or an
    /// add. Intermediate values that are tapped are never fused away.
    fn fused_chain(&self, i: usize, last: &[usize], taps: &[usize]) -> Option<FusedChain> {
        let nodes = &self.nodes;
        let only_reader = |v: usize, j: usize| j < nodes.len() && last[v] == j && !taps.contains(&v);
        if !matches!(nodes[i].op, Op::Conv(_)) || !only_reader(i, i + 1) {
            return None;
        }
        let bn = &nodes[i + 1];
        if !matches!(bn.op, Op::BatchNorm(_)) || bn.inputs != [i] {
            return None;
        }
        let plain = FusedChain { end: i + 1, residual: None, act: Activation::Identity };
        if !only_reader(i + 1, i + 2) {
            return Some(plain);
        }
        let next = &nodes[i + 2];
        Some(match (&next.op, next.inputs.as_slice()) {
            (Op::Relu, [a]) if *a == i + 1 => FusedChain { end: i + 2, residual: None, act: Activation::Relu },
            (Op::Relu6, [a]) if *a == i + 1 => FusedChain { end: i + 2, residual: None, act: Activation::Relu6 },
            (Op::Add { relu }, &[a, b]) if (a == i + 1) != (b == i + 1) => FusedChain {
                end: i + 2,
                residual: Some(if a == i + 1 { b } else { a }),
                act: if *relu { Activation::Relu } else { Activation::Identity },
            },
            _ => plain,
        })
    }

    /// Runs a fused chain: the conv with the batch norm folded into its epilogue (running
    /// statistics), plus the residual add and ReLU. On the CPU this is exactly the unfused ops.
    /// `handed`: the residual's value, taken from `values` (this chain is its last reader).
    fn run_fused(
        &self,
        start: usize,
        chain: &FusedChain,
        dev: &Device,
        values: &[Option<Tensor>],
        handed: Option<Tensor>,
    ) -> Result<Tensor> {
        let (Op::Conv(conv), Op::BatchNorm(bn)) = (&self.nodes[start].op, &self.nodes[start + 1].op) else {
            return Err(Error::Invalid(format!("graph: node {start} does not start a conv -> batch norm chain")));
        };
        let name = &self.nodes[start].name;
        let x = value_of(values, self.nodes[start].inputs[0], name)?;
        let (scale, shift) = dev.batchnorm_fold(bn.params())?;
        if let Some(residual) = handed {
            let epi = ConvEpilogue { scale: &scale, shift: &shift, residual: None, act: chain.act };
            return dev.conv2d_forward_fused_over(x, &conv.weight.value, conv.spec, &epi, residual);
        }
        let residual = match chain.residual {
            Some(r) => Some(value_of(values, r, &self.nodes[chain.end].name)?),
            None => None,
        };
        let epi = ConvEpilogue { scale: &scale, shift: &shift, residual, act: chain.act };
        dev.conv2d_forward_fused(x, &conv.weight.value, conv.spec, &epi)
    }

    /// The activation at `i + 1` when node `i` is a batch norm whose output only that ReLU or
    /// ReLU6 reads: a training pass runs the two as one op (`BatchNorm::forward_train_act`) and
    /// stores no value for `i`, and the backward pass takes the activation's gradient straight
    /// through the batch norm. MobileNetV2's batch-1 step 34-36 -> 31-33 ms with its ReLU6 pairs fused
    /// (`bench train --layers`: the ReLU6 passes took 4.8 ms of it).
    fn bn_act_pair(&self, i: usize, last: &[usize]) -> Option<Activation> {
        let act = match self.nodes.get(i + 1).map(|r| (&r.op, r.inputs == [i])) {
            Some((Op::Relu, true)) => Activation::Relu,
            Some((Op::Relu6, true)) => Activation::Relu6,
            _ => return None,
        };
        (matches!(self.nodes[i].op, Op::BatchNorm(_)) && last[i] == i + 1).then_some(act)
    }

    pub fn forward_train(&mut self, dev: &Device, x: Tensor) -> Result<Trace> {
        self.forward_train_steps(dev, x, None)
    }

    /// A training forward that also times each step (a node, or a batch norm -> activation pair), with
    /// the device synchronised around it (`bench train --layers`).
    pub fn forward_train_profiled(&mut self, dev: &Device, x: Tensor) -> Result<(Trace, Vec<StepTime>)> {
        let mut times = Vec::with_capacity(self.nodes.len());
        let trace = self.forward_train_steps(dev, x, Some(&mut times))?;
        Ok((trace, times))
    }

    fn forward_train_steps(&mut self, dev: &Device, x: Tensor, mut times: Option<&mut Vec<StepTime>>) -> Result<Trace> {
        self.check_input(&x)?;
        let last = self.last_uses();
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(self.nodes.len());
        values.push(Some(x));
        let mut i = 1;
        while i < self.nodes.len() {
            let started = match times {
                Some(_) => {
                    dev.synchronize()?;
                    Some(std::time::Instant::now())
                }
                None => None,
            };
            let input = value_of(&values, self.nodes[i].inputs[0], &self.nodes[i].name)?;
            let last_node = if let Some(act) = self.bn_act_pair(i, &last) {
                let Op::BatchNorm(bn) = &mut self.nodes[i].op else { unreachable!("checked by bn_act_pair") };
                let y = bn.forward_train_act(dev, input, act)?;
                values.push(None);
                values.push(Some(y));
                i + 1
            } else {
                let y = match &self.nodes[i].op {
                    Op::Conv(c) => c.forward_train(dev, input)?,
                    _ => Self::run_node(&mut self.nodes[i], dev, &values, Mode::Train)?,
                };
                values.push(Some(y));
                i
            };
            if let (Some(times), Some(started)) = (times.as_deref_mut(), started) {
                dev.synchronize()?;
                times.push(StepTime { first: i, last: last_node, seconds: started.elapsed().as_secs_f64() });
            }
            i = last_node + 1;
        }
        Ok(Trace { values })
    }

    /// Inference forward pass (running batch-norm statistics); returns the output and copies of
    /// the outputs of the `taps` nodes, freeing every other value as soon as it is consumed.
    pub fn forward_taps(
        &mut self,
        dev: &Device,
        x: Tensor,
        mode: Mode,
        taps: &[usize],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.forward_steps(dev, x, mode, taps, None)
    }

    /// An eval forward that also times each step: each node, or each conv chain run as one fused
    /// conv (`first..=last`), with the device synchronised around it (`bench infer --layers`).
    pub fn forward_profiled(&mut self, dev: &Device, x: Tensor) -> Result<(Tensor, Vec<StepTime>)> {
        let mut times = Vec::with_capacity(self.nodes.len());
        let (out, _) = self.forward_steps(dev, x, Mode::Eval, &[], Some(&mut times))?;
        Ok((out, times))
    }

    fn forward_steps(
        &mut self,
        dev: &Device,
        x: Tensor,
        mode: Mode,
        taps: &[usize],
        mut times: Option<&mut Vec<StepTime>>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_input(&x)?;
        let n = self.nodes.len();
        if let Some(&bad) = taps.iter().find(|&&t| t >= n) {
            return Err(Error::Invalid(format!("tap {bad} out of range for a graph of {n} nodes")));
        }
        let last = self.last_uses();
        let mut values: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut tapped: Vec<Option<Tensor>> = (0..taps.len()).map(|_| None).collect();
        values[0] = Some(x);
        // Eval mode runs conv -> batch norm [-> ReLU | -> add] chains as one fused conv.
        let mut fused_until = 0;
        for i in 0..n {
            if i > 0 && i >= fused_until {
                let chain = if mode == Mode::Eval { self.fused_chain(i, &last, taps) } else { None };
                let started = if times.is_some() {
                    dev.synchronize()?;
                    Some(std::time::Instant::now())
                } else {
                    None
                };
                let end = match chain {
                    Some(chain) => {
                        // A residual this chain reads last, and not as its conv's input, is handed
                        // over: the backend may write the output over it.
                        let handed = chain
                            .residual
                            .filter(|&r| {
                                last[r] == chain.end && !taps.contains(&r) && !self.nodes[i].inputs.contains(&r)
                            })
                            .and_then(|r| values[r].take());
                        values[chain.end] = Some(self.run_fused(i, &chain, dev, &values, handed)?);
                        fused_until = chain.end + 1;
                        chain.end
                    }
                    None => {
                        values[i] = Some(Self::run_node(&mut self.nodes[i], dev, &values, mode)?);
                        i
                    }
                };
                if let (Some(times), Some(started)) = (times.as_deref_mut(), started) {
                    dev.synchronize()?;
                    times.push(StepTime { first: i, last: end, seconds: started.elapsed().as_secs_f64() });
                }
            }
            for (slot, &t) in taps.iter().enumerate() {
                if t == i {
                    let v = values[i].as_ref().ok_or_else(|| Error::Invalid(format!("tap {t} was fused away")))?;
                    tapped[slot] = Some(dev.copy(v)?);
                }
            }
            // Free inputs nobody reads any more (a fused chain's output is stored at its end, so
            // the chain's inner values were never stored).
            for &j in &self.nodes[i].inputs.clone() {
                if last[j] == i {
                    values[j] = None;
                }
            }
        }
        let out = values[n - 1].take().expect("output computed");
        Ok((out, tapped.into_iter().map(|t| t.expect("every tap is computed")).collect()))
    }

    /// Forward pass returning the logits only.
    pub fn forward(&mut self, dev: &Device, x: Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.forward_taps(dev, x, mode, &[])?.0)
    }

    /// Backward pass from the gradient of the loss with respect to the output; accumulates every
    /// parameter's gradient. Consumes the trace (values are freed as soon as they are used).
    pub fn backward(&mut self, dev: &Device, trace: Trace, dout: Tensor) -> Result<()> {
        self.backward_with(dev, trace, dout, Vec::new())
    }

    /// [`Graph::backward`] with more gradients entering at inner nodes (a loss on their values,
    /// such as feature distillation): `(node, d loss / d value of node)`.
    pub fn backward_with(
        &mut self,
        dev: &Device,
        trace: Trace,
        dout: Tensor,
        inner: Vec<(usize, Tensor)>,
    ) -> Result<()> {
        self.backward_steps(dev, trace, dout, inner, None)
    }

    /// [`Graph::backward`] timing each node's backward (a convolution's weight and input
    /// gradients apart), with the device synchronised after each part (`bench train --layers`).
    pub fn backward_profiled(&mut self, dev: &Device, trace: Trace, dout: Tensor) -> Result<Vec<BackwardTime>> {
        let mut times = Vec::with_capacity(2 * self.nodes.len());
        self.backward_steps(dev, trace, dout, Vec::new(), Some(&mut times))?;
        Ok(times)
    }

    fn backward_steps(
        &mut self,
        dev: &Device,
        mut trace: Trace,
        dout: Tensor,
        inner: Vec<(usize, Tensor)>,
        record: Option<&mut Vec<BackwardTime>>,
    ) -> Result<()> {
        let n = self.nodes.len();
        let out_dims = trace.output().dims().to_vec();
        dout.expect_dims(&out_dims, "output gradient")?;
        let mut grads = Grads::new(n);
        grads.slots[n - 1] = Some(dout);
        for (node, g) in inner {
            let value = trace
                .value(node)
                .ok_or_else(|| Error::Invalid(format!("no value of node {node} in the trace to take a gradient at")))?;
            g.expect_dims(value.dims(), "inner gradient")?;
            grads.add(dev, node, g)?;
        }
        if record.is_some() {
            dev.synchronize()?;
        }
        let mut laps = Laps { record, since: std::time::Instant::now() };
        for i in (1..n).rev() {
            let (owned, shared) = grads.take(dev, i)?;
            let dy = match (&owned, shared) {
                (Some(t), _) => t,
                (None, Some(j)) => grads.slots[j].as_ref().expect("a shared gradient's slot holds it"),
                (None, None) => {
                    trace.values[i] = None;
                    continue;
                }
            };
            let inputs = self.nodes[i].inputs.clone();
            let node = &mut self.nodes[i];
            let values = &trace.values;
            let x = || value_of(values, inputs[0], &node.name);
            let y = || value_of(values, i, &node.name);
            let mut push: Vec<(usize, Tensor)> = Vec::with_capacity(2);
            // An add's gradient, the same for both inputs: stored once where possible.
            let mut both: Option<(usize, usize, Tensor)> = None;
            match &mut node.op {
                Op::Input => {}
                Op::Conv(c) => {
                    let x = value_of(values, inputs[0], "conv input")?;
                    c.backward_weight(dev, x, dy)?;
                    laps.lap(dev, i, BackwardPart::ConvWeight)?;
                    // The network's input needs no gradient.
                    if inputs[0] != 0 {
                        push.push((inputs[0], c.backward_data(dev, x, dy)?));
                    }
                }
                Op::BatchNorm(bn) => {
                    let x = value_of(values, inputs[0], "batch norm input")?;
                    push.push((inputs[0], bn.backward(dev, x, dy)?));
                }
                Op::Relu | Op::Relu6 if values[inputs[0]].is_none() => {
                    // A batch norm -> activation pair run as one op (`bn_act_pair`): the
                    // gradient goes through both here, to the batch norm's input.
                    let act = if matches!(node.op, Op::Relu) { Activation::Relu } else { Activation::Relu6 };
                    let bn_node = inputs[0];
                    let bn_input = self.nodes[bn_node].inputs[0];
                    let Op::BatchNorm(bn) = &mut self.nodes[bn_node].op else {
                        return Err(Error::Invalid(format!(
                            "{}: input value missing from the trace",
                            self.nodes[i].name
                        )));
                    };
                    let x = value_of(values, bn_input, "batch norm input")?;
                    let out = value_of(values, i, "activation output")?;
                    push.push((bn_input, bn.backward_through_act(dev, x, out, act, dy)?));
                }
                Op::Relu => push.push((inputs[0], dev.relu_backward(dy, y()?)?)),
                Op::Relu6 => push.push((inputs[0], dev.relu6_backward(dy, y()?)?)),
                Op::Add { relu } => {
                    let g = if *relu { dev.relu_backward(dy, y()?)? } else { dev.copy(dy)? };
                    both = Some((inputs[0], inputs[1], g));
                }
                Op::Shortcut(s) => push.push((inputs[0], dev.shortcut_backward(dy, &s.src, s.stride, x()?.dims())?)),
                Op::MaxPool { kernel, stride, pad } => {
                    push.push((inputs[0], dev.maxpool_backward(dy, x()?, *kernel, *stride, *pad)?))
                }
                Op::GlobalAvgPool => push.push((inputs[0], dev.global_avgpool_backward(dy, x()?.dims())?)),
                Op::Flatten => push.push((inputs[0], dev.copy(dy)?.reshape(x()?.dims())?)),
                Op::Linear(l) => {
                    let x = value_of(values, inputs[0], "linear input")?;
                    push.push((inputs[0], l.backward(dev, x, dy)?));
                }
            }
            for (j, g) in push {
                grads.add(dev, j, g)?;
            }
            if let Some((a, b, g)) = both {
                grads.add_to_both(dev, a, b, g)?;
            }
            trace.values[i] = None;
            laps.lap(dev, i, BackwardPart::Rest)?;
        }
        Ok(())
    }

    /// Visits every trainable parameter with its state-dict name, in a fixed order.
    pub fn visit_params_mut(&mut self, mut f: impl FnMut(&str, &mut Param) -> Result<()>) -> Result<()> {
        for node in &mut self.nodes {
            let name = &node.name;
            match &mut node.op {
                Op::Conv(c) => f(&format!("{name}.weight"), &mut c.weight)?,
                Op::BatchNorm(bn) => {
                    f(&format!("{name}.weight"), &mut bn.weight)?;
                    f(&format!("{name}.bias"), &mut bn.bias)?;
                }
                Op::Linear(l) => {
                    f(&format!("{name}.weight"), &mut l.weight)?;
                    if let Some(b) = &mut l.bias {
                        f(&format!("{name}.bias"), b)?;
                    }
                }
                Op::Input
                | Op::Relu
                | Op::Relu6
                | Op::Add { .. }
                | Op::Shortcut(_)
                | Op::MaxPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten => {}
            }
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        let _ = self.visit_params_mut(|_, p| {
            p.grad = None;
            Ok(())
        });
    }

    /// The state dict: parameters, batch-norm buffers and shortcut channel maps, by name.
    pub fn state(&self) -> Vec<(String, StateRef<'_>)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let name = &node.name;
            match &node.op {
                Op::Conv(c) => out.push((format!("{name}.weight"), StateRef::F32(&c.weight.value))),
                Op::BatchNorm(bn) => {
                    out.push((format!("{name}.weight"), StateRef::F32(&bn.weight.value)));
                    out.push((format!("{name}.bias"), StateRef::F32(&bn.bias.value)));
                    out.push((format!("{name}.running_mean"), StateRef::F32(&bn.running_mean)));
                    out.push((format!("{name}.running_var"), StateRef::F32(&bn.running_var)));
                    out.push((format!("{name}.num_batches_tracked"), StateRef::I64(bn.num_batches_tracked)));
                }
                Op::Linear(l) => {
                    out.push((format!("{name}.weight"), StateRef::F32(&l.weight.value)));
                    if let Some(b) = &l.bias {
                        out.push((format!("{name}.bias"), StateRef::F32(&b.value)));
                    }
                }
                Op::Shortcut(s) => out.push((format!("{name}.channel_map"), StateRef::I32(&s.src))),
                Op::Input
                | Op::Relu
                | Op::Relu6
                | Op::Add { .. }
                | Op::MaxPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten => {}
            }
        }
        out
    }

    /// Mutable view of the state dict, same names and order as `state`.
    pub fn state_mut(&mut self) -> Vec<(String, StateMut<'_>)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            let name = node.name.clone();
            match &mut node.op {
                Op::Conv(c) => out.push((format!("{name}.weight"), StateMut::F32(&mut c.weight.value))),
                Op::BatchNorm(bn) => {
                    out.push((format!("{name}.weight"), StateMut::F32(&mut bn.weight.value)));
                    out.push((format!("{name}.bias"), StateMut::F32(&mut bn.bias.value)));
                    out.push((format!("{name}.running_mean"), StateMut::F32(&mut bn.running_mean)));
                    out.push((format!("{name}.running_var"), StateMut::F32(&mut bn.running_var)));
                    out.push((format!("{name}.num_batches_tracked"), StateMut::I64(&mut bn.num_batches_tracked)));
                }
                Op::Linear(l) => {
                    out.push((format!("{name}.weight"), StateMut::F32(&mut l.weight.value)));
                    if let Some(b) = &mut l.bias {
                        out.push((format!("{name}.bias"), StateMut::F32(&mut b.value)));
                    }
                }
                Op::Shortcut(s) => out.push((format!("{name}.channel_map"), StateMut::I32(&mut s.src))),
                Op::Input
                | Op::Relu
                | Op::Relu6
                | Op::Add { .. }
                | Op::MaxPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten => {}
            }
        }
        out
    }

    /// Index of the node called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Moves every tensor of the graph onto `dev` (parameters, buffers; gradients are dropped).
    pub fn to_device(&mut self, dev: &Device) -> Result<()> {
        for (_, entry) in self.state_mut() {
            if let StateMut::F32(t) = entry {
                *t = dev.to_device(t)?;
            }
        }
        self.zero_grad();
        Ok(())
    }
}

fn value_of<'a>(values: &'a [Option<Tensor>], i: usize, what: &str) -> Result<&'a Tensor> {
    values[i].as_ref().ok_or_else(|| Error::Invalid(format!("graph: value {i} ({what}) is missing from the trace")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    /// An eval pass hands a residual to the fused conv that reads it last (the CPU's 1x1 kernel
    /// writes its output over it): the same bits as when the residual is kept (tapped), and a
    /// residual that is also the conv's own input is not handed (it is still to be read).
    #[test]
    fn handed_residuals_give_the_bits_of_kept_ones() {
        use crate::models::{Builder, Init, Width};
        let dev = crate::backend::cpu();
        let mut b = Builder::new([16, 15, 15], None, Init::Kaiming(7));
        let x = b.input();
        let c1 = b.conv("c1", x, Width::Fixed(16), 1, 1, 0).unwrap();
        let n1 = b.bn("n1", c1).unwrap();
        let r1 = b.relu("r1", n1);
        let c2 = b.conv("c2", r1, Width::Fixed(24), 1, 1, 0).unwrap();
        let n2 = b.bn("n2", c2).unwrap();
        let p2 = b.conv("p2", x, Width::Fixed(24), 1, 1, 0).unwrap();
        let q2 = b.bn("q2", p2).unwrap();
        // p2 -> q2 -> a2 is one chain whose residual n2 it reads last: handed over.
        let a2 = b.add("a2", n2, q2, true).unwrap();
        let c3 = b.conv("c3", a2, Width::Fixed(24), 1, 1, 0).unwrap();
        let n3 = b.bn("n3", c3).unwrap();
        // a2 is c3's input and its residual: kept.
        let a3 = b.add("a3", n3, a2, false).unwrap();
        let pool = b.global_avgpool("pool", a3).unwrap();
        let flat = b.flatten("flat", pool);
        b.linear("fc", flat, Width::Fixed(10)).unwrap();
        let mut g = b.finish().unwrap();
        let data: Vec<f32> = (0..2 * 16 * 15 * 15).map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0).collect();
        let input = || Tensor::from_vec(&[2, 16, 15, 15], data.clone()).unwrap();
        let handed = g.forward(&dev, input(), Mode::Eval).unwrap().to_vec().unwrap();
        // A tapped residual is kept (the chain borrows it).
        let (kept, _) = g.forward_taps(&dev, input(), Mode::Eval, &[n2]).unwrap();
        assert!(handed == kept.to_vec().unwrap(), "handing the residual changed the logits");
    }

    /// An add's gradient stored once and read in place, and every way the sharing is undone
    /// before the stored gradient changes: the values are those of separate copies.
    #[test]
    fn shared_add_gradients_read_as_separate_copies() {
        let dev = crate::backend::cpu();
        let t = |v: f32| Tensor::from_vec(&[2], vec![v, -v]).unwrap();
        let owned = |(o, s): (Option<Tensor>, Option<usize>), g: &Grads| match (o, s) {
            (Some(t), None) => t.to_vec().unwrap(),
            (None, Some(j)) => g.slots[j].as_ref().unwrap().to_vec().unwrap(),
            other => panic!("unexpected {:?}", (other.0.is_some(), other.1)),
        };
        // Read in place: node 3 reads slot 1, which node 1 then takes.
        let mut g = Grads::new(5);
        g.add_to_both(&dev, 3, 1, t(1.0)).unwrap();
        assert!(g.slots[3].is_none() && g.shared[3] == Some(1));
        let r3 = g.take(&dev, 3).unwrap();
        assert_eq!(r3.1, Some(1));
        assert_eq!(owned(r3, &g), vec![1.0, -1.0]);
        assert_eq!(owned(g.take(&dev, 1).unwrap(), &g), vec![1.0, -1.0]);
        // The shared slot changes first: the reader gets a copy of the old value.
        let mut g = Grads::new(5);
        g.add_to_both(&dev, 1, 3, t(1.0)).unwrap();
        g.add(&dev, 1, t(2.0)).unwrap();
        assert_eq!(owned(g.take(&dev, 3).unwrap(), &g), vec![1.0, -1.0]);
        assert_eq!(owned(g.take(&dev, 1).unwrap(), &g), vec![3.0, -3.0]);
        // The reader's own gradient grows first: it gets its own copy to add to.
        let mut g = Grads::new(5);
        g.add_to_both(&dev, 3, 1, t(1.0)).unwrap();
        g.add(&dev, 3, t(4.0)).unwrap();
        assert_eq!(owned(g.take(&dev, 3).unwrap(), &g), vec![5.0, -5.0]);
        assert_eq!(owned(g.take(&dev, 1).unwrap(), &g), vec![1.0, -1.0]);
        // The slot is taken before its reader runs.
        let mut g = Grads::new(5);
        g.add_to_both(&dev, 3, 1, t(1.0)).unwrap();
        assert_eq!(owned(g.take(&dev, 1).unwrap(), &g), vec![1.0, -1.0]);
        assert_eq!(owned(g.take(&dev, 3).unwrap(), &g), vec![1.0, -1.0]);
        // An input that already has a gradient: no sharing, both added to.
        let mut g = Grads::new(5);
        g.add(&dev, 1, t(2.0)).unwrap();
        g.add_to_both(&dev, 3, 1, t(1.0)).unwrap();
        assert!(g.shared.iter().all(|s| s.is_none()));
        assert_eq!(owned(g.take(&dev, 3).unwrap(), &g), vec![1.0, -1.0]);
        assert_eq!(owned(g.take(&dev, 1).unwrap(), &g), vec![3.0, -3.0]);
        // The image (node 0) takes no gradient; the same input twice gets it twice.
        let mut g = Grads::new(5);
        g.add_to_both(&dev, 0, 2, t(1.0)).unwrap();
        assert!(g.slots[0].is_none());
        g.add_to_both(&dev, 4, 4, t(1.0)).unwrap();
        assert_eq!(owned(g.take(&dev, 4).unwrap(), &g), vec![2.0, -2.0]);
        assert_eq!(owned(g.take(&dev, 2).unwrap(), &g), vec![1.0, -1.0]);
    }

    /// Eval forward one node at a time, nothing fused.
    fn unfused_eval(g: &mut Graph, dev: &Device, x: Tensor) -> Result<Tensor> {
        let mut values: Vec<Option<Tensor>> = vec![Some(x)];
        for i in 1..g.nodes.len() {
            let y = Graph::run_node(&mut g.nodes[i], dev, &values, Mode::Eval)?;
            values.push(Some(y));
        }
        Ok(values.pop().flatten().expect("output"))
    }

    /// The fused eval forward (conv with batch norm, residual add and ReLU in one op) gives the
    /// unfused result bit for bit on the CPU, with non-trivial running statistics.
    #[test]
    fn fused_eval_matches_unfused_on_cpu() {
        let dev = crate::backend::cpu();
        for (model, size, fusions_with_residual) in [("resnet20", 16, true), ("vgg16", 32, false)] {
            let mut g = Arch::new(model, 3, size, 10).and_then(|a| a.build_graph(3)).expect("graph");
            let n = 4 * 3 * size * size;
            let img = |seed: u32| {
                let v = (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0);
                Tensor::from_vec(&[4, 3, size, size], v.collect()).expect("images")
            };
            // A few training-mode passes move the running statistics away from (0, 1).
            for seed in 0..3 {
                g.forward_train(&dev, img(seed)).expect("train forward");
            }
            let last = g.last_uses();
            let chains: Vec<FusedChain> = (1..g.nodes.len()).filter_map(|i| g.fused_chain(i, &last, &[])).collect();
            assert!(!chains.is_empty(), "{model}: nothing fused");
            assert_eq!(chains.iter().any(|c| c.residual.is_some()), fusions_with_residual, "{model}");
            let fused = g.forward(&dev, img(7), Mode::Eval).expect("fused").to_vec().expect("host");
            let plain = unfused_eval(&mut g, &dev, img(7)).expect("unfused").to_vec().expect("host");
            assert_eq!(fused, plain, "{model}: fused eval differs from unfused");
            // Tapping a value inside a chain keeps it computed.
            let bn = g.nodes.iter().position(|nd| matches!(nd.op, Op::BatchNorm(_))).expect("a batch norm");
            let (_, taps) = g.forward_taps(&dev, img(7), Mode::Eval, &[bn]).expect("tapped");
            assert_eq!(taps[0].dims()[0], 4);
        }
    }
}
