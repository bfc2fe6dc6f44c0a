//! Layers as plain structs: parameters, hyper-parameters, and in training what backward needs.
//! Each has an explicit forward and backward that call the backend; there is no autograd.

use crate::backend::{Activation, BnParams, BnSaved, BnTrainParams, ConvSpec, Device};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A trainable tensor and its gradient (None until the first backward after `zero_grad`).
pub struct Param {
    pub value: Tensor,
    pub grad: Option<Tensor>,
}

impl Param {
    pub fn new(value: Tensor) -> Param {
        Param { value, grad: None }
    }

    /// Adds `g` to the gradient (the first contribution is moved in without a copy).
    pub fn accumulate(&mut self, dev: &Device, g: Tensor) -> Result<()> {
        match &mut self.grad {
            Some(acc) => dev.add_assign(acc, &g),
            None => {
                self.grad = Some(g);
                Ok(())
            }
        }
    }
}

/// 2-D convolution without bias (every conv in these models is followed by batch norm); grouped
/// when `spec.groups > 1` (weight `[out, in / groups, k, k]`).
pub struct Conv2d {
    pub weight: Param,
    pub spec: ConvSpec,
}

impl Conv2d {
    pub fn in_channels(&self) -> usize {
        self.weight.value.dims()[1] * self.spec.groups
    }
    /// One filter per channel, as many outputs as inputs: the conv passes its channels through.
    pub fn is_depthwise(&self) -> bool {
        self.spec.groups > 1 && self.spec.groups == self.in_channels() && self.spec.groups == self.out_channels()
    }
    pub fn out_channels(&self) -> usize {
        self.weight.value.dims()[0]
    }
    pub fn kernel(&self) -> usize {
        self.weight.value.dims()[2]
    }
    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        dev.conv2d_forward(x, &self.weight.value, self.spec)
    }
    /// `forward` in a training pass (`backward_weight` and `backward_data` on the same `x` follow).
    pub fn forward_train(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        dev.conv2d_forward_train(x, &self.weight.value, self.spec)
    }
    /// Accumulates the weight gradient (`backward_data` is the backward's other half, skipped
    /// for the network's input).
    pub fn backward_weight(&mut self, dev: &Device, x: &Tensor, dy: &Tensor) -> Result<()> {
        let dw = dev.conv2d_backward_weight(dy, x, self.weight.value.dims(), self.spec)?;
        self.weight.accumulate(dev, dw)
    }
    /// The input gradient.
    pub fn backward_data(&self, dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        dev.conv2d_backward_data(dy, &self.weight.value, x.dims(), self.spec)
    }
}

/// Batch normalisation over the channel axis of `[N,C,H,W]` or `[N,C]` inputs.
pub struct BatchNorm {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Batches seen in training mode (kept for PyTorch's state-dict compatibility).
    pub num_batches_tracked: i64,
    pub eps: f32,
    pub momentum: f32,
    saved: Option<BnSaved>,
}

impl BatchNorm {
    pub fn new(weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor) -> BatchNorm {
        BatchNorm {
            weight: Param::new(weight),
            bias: Param::new(bias),
            running_mean,
            running_var,
            num_batches_tracked: 0,
            eps: 1e-5,
            momentum: 0.1,
            saved: None,
        }
    }
    pub fn channels(&self) -> usize {
        self.weight.value.dims()[0]
    }
    pub fn forward_train(&mut self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        self.train_pass(dev, x, Activation::Identity)
    }
    /// `forward_train` then the activation `act` (ReLU or ReLU6), in one op; pair it with
    /// `backward_through_act`.
    pub fn forward_train_act(&mut self, dev: &Device, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.train_pass(dev, x, act)
    }
    fn train_pass(&mut self, dev: &Device, x: &Tensor, act: Activation) -> Result<Tensor> {
        let bn = BnTrainParams {
            gamma: &self.weight.value,
            beta: &self.bias.value,
            running_mean: &mut self.running_mean,
            running_var: &mut self.running_var,
            momentum: self.momentum,
            eps: self.eps,
        };
        let (y, saved) = if crate::dist::sync_bn_active() {
            // Data-parallel training: the statistics of the global batch, across ranks.
            crate::dist::dp::bn_forward(dev, x, bn, act)?
        } else if act == Activation::Identity {
            dev.batchnorm_forward_train(x, bn)?
        } else {
            dev.batchnorm_act_forward_train(x, bn, act)?
        };
        self.saved = Some(saved);
        self.num_batches_tracked += 1;
        Ok(y)
    }
    /// The inference parameters (weight, bias, running statistics, eps), borrowed for one op.
    pub fn params(&self) -> BnParams<'_> {
        BnParams {
            gamma: &self.weight.value,
            beta: &self.bias.value,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            eps: self.eps,
        }
    }
    pub fn forward_eval(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        dev.batchnorm_forward_eval(x, self.params())
    }
    pub fn backward(&mut self, dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.backward_pass(dev, x, None, dy)
    }
    /// Backward of `forward_train_act`: `dy` is the gradient of the activation's output `out`.
    pub fn backward_through_act(
        &mut self,
        dev: &Device,
        x: &Tensor,
        out: &Tensor,
        act: Activation,
        dy: &Tensor,
    ) -> Result<Tensor> {
        self.backward_pass(dev, x, Some((out, act)), dy)
    }
    fn backward_pass(
        &mut self,
        dev: &Device,
        x: &Tensor,
        after: Option<(&Tensor, Activation)>,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let saved = self
            .saved
            .take()
            .ok_or_else(|| Error::Invalid("batch norm backward without a training-mode forward".into()))?;
        let g = match after {
            _ if crate::dist::sync_bn_active() => {
                crate::dist::dp::bn_backward(dev, dy, x, after, &self.weight.value, &saved, self.eps)?
            }
            Some((z, act)) => dev.batchnorm_act_backward(dy, z, x, &self.weight.value, &saved, act)?,
            None => dev.batchnorm_backward(dy, x, &self.weight.value, &saved)?,
        };
        self.weight.accumulate(dev, g.dgamma)?;
        self.bias.accumulate(dev, g.dbeta)?;
        Ok(g.dx)
    }
}

/// Fully connected layer `y = x W^T + b`.
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    pub fn in_features(&self) -> usize {
        self.weight.value.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.value.dims()[0]
    }
    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        dev.linear_forward(x, &self.weight.value, self.bias.as_ref().map(|b| &b.value))
    }
    pub fn backward(&mut self, dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let g = dev.linear_backward(dy, x, &self.weight.value, self.bias.is_some())?;
        self.weight.accumulate(dev, g.dw)?;
        if let (Some(b), Some(db)) = (&mut self.bias, g.db) {
            b.accumulate(dev, db)?;
        }
        Ok(g.dx)
    }
}

/// Option-A shortcut of He et al. (2016) for CIFAR ResNets: spatial subsampling by `stride` and
/// a channel map that places the input channels among zero channels. In the unpruned net the
/// map pads `(out-in)/2` zero channels on each side; after pruning of the residual streams it
/// maps each kept output channel to its kept input channel, or to zero.
pub struct ShortcutA {
    pub stride: usize,
    /// For each output channel, the input channel it copies, or -1 for a zero channel.
    pub src: Vec<i32>,
}

impl ShortcutA {
    /// The unpruned map: `pad` zero channels, the `in_c` inputs, then zeros up to `out_c`.
    pub fn padding_map(in_c: usize, out_c: usize) -> Vec<i32> {
        let pad = out_c.saturating_sub(in_c) / 2;
        (0..out_c).map(|o| if o >= pad && o - pad < in_c { (o - pad) as i32 } else { -1 }).collect()
    }
}
