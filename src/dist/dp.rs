//! Data-parallel training under `mpirun`: every rank holds the whole net, takes a contiguous
//! share of every global batch (the same shuffled batches on every rank, from the seed), and the
//! gradients are summed across ranks in a fixed order before each optimiser step. Batch norms are
//! synchronised: their per-channel sums (forward: `sum x`, `sum x^2`; backward: `sum dy`,
//! `sum dy x_hat`) are reduced across ranks, so a step computes what one process computes on the
//! whole global batch, up to float rounding, and a given number of ranks always gives the same bits.
//!
//! Gradient convention: each rank back-propagates the gradient of the mean loss over its own
//! share, which is N times its part of the global mean loss; the summed gradients are divided by
//! N. The shares must be equal, so the global batch must divide by N.
//!
//! Reductions go through [`super::Comm::all_reduce_f32`] (host buffers): on GPUs the tensors are
//! copied to the host and back, except the gradients of a build with the `nccl` feature, which
//! are summed on the devices (src/dist/nccl.rs).

use super::world;
use crate::backend::{Activation, BnGrads, BnParams, BnSaved, BnTrainParams, Device};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::nn::Graph;
use crate::tensor::Tensor;

/// Errors unless every global batch of `batch_size` (or the whole set, when smaller) divides
/// into equal shares over the ranks.
pub fn check_batch(batch_size: usize, train_len: usize) -> Result<()> {
    let n = world().size();
    let global = batch_size.min(train_len);
    if n > 1 && !global.is_multiple_of(n) {
        return Err(Error::Invalid(format!(
            "data-parallel training over {n} ranks splits each global batch of {global} images into equal \
             shares: choose a batch size that divides by {n}"
        )));
    }
    Ok(())
}

/// This rank's contiguous share of a global batch.
pub fn shard_batch(batch: Batch) -> Result<Batch> {
    let w = world();
    if w.size() == 1 {
        return Ok(batch);
    }
    let len = batch.len();
    if !len.is_multiple_of(w.size()) {
        return Err(Error::Invalid(format!(
            "a global batch of {len} images does not split into {} equal shares",
            w.size()
        )));
    }
    let per = len / w.size();
    let r = w.rank() * per..(w.rank() + 1) * per;
    let image: usize = batch.dims[1..].iter().product();
    Ok(Batch {
        images: batch.images[r.start * image..r.end * image].to_vec(),
        dims: [per, batch.dims[1], batch.dims[2], batch.dims[3]],
        labels: batch.labels.as_ref().map(|l| l[r.clone()].to_vec()),
        indices: batch.indices[r].to_vec(),
    })
}

/// What one step reports, summed over the ranks.
pub struct StepTotals {
    /// Mean loss over the global batch.
    pub loss: f32,
    pub correct: Option<usize>,
    /// Some rank was asked to stop (SIGINT/SIGTERM): every rank stops after this step.
    pub stop: bool,
}

/// Sums every gradient across the ranks (divided by N: the gradient of the global mean loss),
/// together with the step's loss, correct count and stop request, in one fixed-order reduction.
pub fn reduce_step(dev: &Device, graph: &mut Graph, loss: f32, correct: Option<usize>) -> Result<StepTotals> {
    let w = world();
    let stop = crate::interrupt::requested();
    if w.size() == 1 {
        return Ok(StepTotals { loss, correct, stop });
    }
    #[cfg(feature = "nccl")]
    if super::nccl::reduce_gradients(dev, graph)? {
        let mut t = [loss, correct.map_or(0.0, |c| c as f32), f32::from(u8::from(stop))];
        w.all_reduce_f32(&mut t)?;
        let inv = 1.0 / w.size() as f32;
        return Ok(StepTotals { loss: t[0] * inv, correct: correct.map(|_| t[1].round() as usize), stop: t[2] > 0.0 });
    }
    let mut buf: Vec<f32> = Vec::new();
    graph.visit_params_mut(|_, p| {
        if let Some(g) = &p.grad {
            buf.extend(g.to_vec()?);
        }
        Ok(())
    })?;
    let grads = buf.len();
    buf.extend([loss, correct.map_or(0.0, |c| c as f32), f32::from(u8::from(stop))]);
    w.all_reduce_f32(&mut buf)?;
    let inv = 1.0 / w.size() as f32;
    let mut at = 0;
    graph.visit_params_mut(|_, p| {
        if let Some(g) = &mut p.grad {
            let n = g.numel();
            let mean: Vec<f32> = buf[at..at + n].iter().map(|v| v * inv).collect();
            *g = dev.from_host(g.dims(), &mean)?;
            at += n;
        }
        Ok(())
    })?;
    debug_assert_eq!(at, grads);
    Ok(StepTotals {
        loss: buf[grads] * inv,
        correct: correct.map(|_| buf[grads + 1].round() as usize),
        stop: buf[grads + 2] > 0.0,
    })
}

/// Makes every rank's model, momentum buffers and finished-epoch logs rank 0's (a resumed run
/// restores them on rank 0 only).
pub fn sync_start<L>(
    dev: &Device,
    graph: &mut Graph,
    momentum: &mut Vec<Option<Tensor>>,
    logs: &mut Vec<L>,
) -> Result<()>
where
    L: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let w = world();
    if w.size() == 1 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    if w.is_root() {
        for (_, entry) in graph.state() {
            match entry {
                crate::nn::StateRef::F32(t) => push_tensor(&mut bytes, Some(t))?,
                crate::nn::StateRef::I64(v) => bytes.extend(v.to_le_bytes()),
                crate::nn::StateRef::I32(_) => {}
            }
        }
        push_u64(&mut bytes, momentum.len() as u64);
        for m in momentum.iter() {
            push_tensor(&mut bytes, m.as_ref())?;
        }
        let l = serde_json::to_vec(logs).map_err(|e| Error::Invalid(format!("epoch logs: {e}")))?;
        push_u64(&mut bytes, l.len() as u64);
        bytes.extend(l);
    }
    let bytes = w.broadcast_bytes(bytes)?;
    if w.is_root() {
        return Ok(());
    }
    let mut r = Reader { b: &bytes, at: 0 };
    for (name, entry) in graph.state_mut() {
        match entry {
            crate::nn::StateMut::F32(t) => {
                let got = r.tensor(dev)?.ok_or_else(|| Error::Invalid(format!("rank 0 sent no {name}")))?;
                if got.dims() != t.dims() {
                    return Err(Error::Invalid(format!(
                        "rank 0's {name} has shape {:?}, this rank's {:?}: the ranks load different nets",
                        got.dims(),
                        t.dims()
                    )));
                }
                *t = got;
            }
            crate::nn::StateMut::I64(v) => *v = i64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")),
            crate::nn::StateMut::I32(_) => {}
        }
    }
    let n = r.u64()? as usize;
    *momentum = (0..n).map(|_| r.tensor(dev)).collect::<Result<_>>()?;
    let len = r.u64()? as usize;
    *logs = serde_json::from_slice(r.take(len)?).map_err(|e| Error::Invalid(format!("epoch logs from rank 0: {e}")))?;
    Ok(())
}

fn push_u64(b: &mut Vec<u8>, v: u64) {
    b.extend(v.to_le_bytes());
}

fn push_tensor(b: &mut Vec<u8>, t: Option<&Tensor>) -> Result<()> {
    let Some(t) = t else {
        b.push(0);
        return Ok(());
    };
    b.push(1);
    push_u64(b, t.dims().len() as u64);
    for &d in t.dims() {
        push_u64(b, d as u64);
    }
    b.extend_from_slice(bytemuck::cast_slice(&t.to_vec()?));
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| Error::Invalid("the state rank 0 sent is cut short".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn tensor(&mut self, dev: &Device) -> Result<Option<Tensor>> {
        if self.take(1)?[0] == 0 {
            return Ok(None);
        }
        let nd = self.u64()? as usize;
        let dims: Vec<usize> = (0..nd.min(8)).map(|_| self.u64().map(|d| d as usize)).collect::<Result<_>>()?;
        let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes =
            numel.and_then(|n| n.checked_mul(4)).ok_or_else(|| Error::Invalid("bad tensor from rank 0".into()))?;
        let data: Vec<f32> =
            self.take(bytes)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        Ok(Some(dev.from_host(&dims, &data)?))
    }
}

/// Channels and per-channel element count of a batch-norm input `[N,C,H,W]` or `[N,C]`.
fn bn_shape(x: &Tensor) -> Result<(usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] => Ok((n, c, h * w)),
        [n, c] => Ok((n, c, 1)),
        ref d => Err(Error::Shape(format!("batch norm input {d:?} is not [N,C,H,W] or [N,C]"))),
    }
}

/// Training-mode batch norm (then the activation `act`) with the batch statistics of the
/// global batch: per-channel sums reduced across ranks. Updates the running statistics as one
/// process would (unbiased variance over the global batch).
pub fn bn_forward(dev: &Device, x: &Tensor, bn: BnTrainParams<'_>, act: Activation) -> Result<(Tensor, BnSaved)> {
    let BnTrainParams { gamma, beta, running_mean, running_var, momentum, eps } = bn;
    let (n, c, hw) = bn_shape(x)?;
    let host = x.to_vec()?;
    // [sum x (c), sum x^2 (c), count]
    let mut sums = vec![0f64; 2 * c + 1];
    for i in 0..n {
        for ch in 0..c {
            let plane = &host[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let (mut s, mut q) = (0f64, 0f64);
            for &v in plane {
                s += v as f64;
                q += v as f64 * v as f64;
            }
            sums[ch] += s;
            sums[c + ch] += q;
        }
    }
    sums[2 * c] = (n * hw) as f64;
    world().all_reduce_f64(&mut sums)?;
    let count = sums[2 * c];
    let (rm, rv) = (running_mean.to_vec()?, running_var.to_vec()?);
    let mo = momentum as f64;
    let (mut mean, mut var, mut invstd, mut new_rm, mut new_rv) =
        (vec![0f32; c], vec![0f32; c], vec![0f32; c], vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let m = sums[ch] / count;
        let v = (sums[c + ch] / count - m * m).max(0.0);
        mean[ch] = m as f32;
        var[ch] = v as f32;
        invstd[ch] = (1.0 / (v + eps as f64).sqrt()) as f32;
        let unbiased = if count > 1.0 { v * count / (count - 1.0) } else { v };
        new_rm[ch] = ((1.0 - mo) * rm[ch] as f64 + mo * m) as f32;
        new_rv[ch] = ((1.0 - mo) * rv[ch] as f64 + mo * unbiased) as f32;
    }
    let (mean_t, var_t) = (dev.from_host(&[c], &mean)?, dev.from_host(&[c], &var)?);
    let mut y =
        dev.batchnorm_forward_eval(x, BnParams { gamma, beta, running_mean: &mean_t, running_var: &var_t, eps })?;
    match act {
        Activation::Identity => {}
        Activation::Relu => y = dev.relu_forward(&y)?,
        Activation::Relu6 => y = dev.relu6_forward(&y)?,
    }
    *running_mean = dev.from_host(&[c], &new_rm)?;
    *running_var = dev.from_host(&[c], &new_rv)?;
    Ok((y, BnSaved { mean: mean_t, invstd: dev.from_host(&[c], &invstd)? }))
}

/// Backward of [`bn_forward`] (through its activation when `after`, its output and which, is
/// given): the local backward,
/// corrected with `sum dy` and `sum dy x_hat` over the global batch. `dgamma` and `dbeta` stay
/// this rank's sums (they are reduced with the other gradients).
pub fn bn_backward(
    dev: &Device,
    dy: &Tensor,
    x: &Tensor,
    after: Option<(&Tensor, Activation)>,
    gamma: &Tensor,
    saved: &BnSaved,
    eps: f32,
) -> Result<BnGrads> {
    let (n, c, hw) = bn_shape(x)?;
    let local = match after {
        Some((z, act)) => dev.batchnorm_act_backward(dy, z, x, gamma, saved, act)?,
        None => dev.batchnorm_backward(dy, x, gamma, saved)?,
    };
    let (dg, db) = (local.dgamma.to_vec()?, local.dbeta.to_vec()?);
    let mut sums: Vec<f64> = dg.iter().chain(&db).map(|&v| v as f64).collect();
    world().all_reduce_f64(&mut sums)?;
    let n_local = (n * hw) as f64;
    let n_global = n_local * world().size() as f64;
    let (g, invstd, mean) = (gamma.to_vec()?, saved.invstd.to_vec()?, saved.mean.to_vec()?);
    // dx_global - dx_local = k * ((s1/n - S1/B) + x_hat (s2/n - S2/B)), k = gamma * invstd.
    let (mut slope, mut offset, mut var) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let k = g[ch] as f64 * invstd[ch] as f64;
        slope[ch] = (k * (dg[ch] as f64 / n_local - sums[ch] / n_global)) as f32;
        offset[ch] = (k * (db[ch] as f64 / n_local - sums[c + ch] / n_global)) as f32;
        let inv = invstd[ch] as f64;
        var[ch] = (1.0 / (inv * inv) - eps as f64).max(0.0) as f32;
    }
    let (slope, offset) = (dev.from_host(&[c], &slope)?, dev.from_host(&[c], &offset)?);
    let (mean, var) = (dev.from_host(&[c], &mean)?, dev.from_host(&[c], &var)?);
    let correction = dev.batchnorm_forward_eval(
        x,
        BnParams { gamma: &slope, beta: &offset, running_mean: &mean, running_var: &var, eps },
    )?;
    let dx = dev.add(&local.dx, &correction)?;
    Ok(BnGrads { dx, dgamma: local.dgamma, dbeta: local.dbeta })
}
