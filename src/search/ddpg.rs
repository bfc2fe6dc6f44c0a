//! A lean DDPG (Lillicrap et al. 2016) with AMC's reference settings, sized for a global action:
//! the actor maps the architecture state to the keep ratio of every group at once.
//!
//! The networks are tiny (two hidden layers of 300), so they run on the CPU backend's linear
//! ops while the candidates are evaluated on whatever device the search uses. Everything the
//! agent holds (weights, Adam moments, replay buffer, reward baseline) serialises, so a search
//! resumes exactly where it stopped.

use crate::backend::{self, Device};
use crate::error::{Error, Result};
use crate::nn::{Linear, Param};
use crate::tensor::Tensor;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// AMC's settings, the defaults of `lfgcl search`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DdpgConfig {
    pub hidden: usize,
    pub actor_lr: f32,
    pub critic_lr: f32,
    pub tau: f32,
    pub batch_size: usize,
    /// Transitions kept in the FIFO replay buffer.
    pub replay_capacity: usize,
    /// Reward baseline update rate: `ma += alpha * (batch mean - ma)`.
    pub baseline_alpha: f32,
    /// Episodes of uniformly random actions before learning starts.
    pub warmup_episodes: usize,
    /// Exploration noise: `sigma = max(min, init * decay^(episode - warmup))`.
    pub noise_init: f32,
    pub noise_decay: f32,
    #[serde(default)]
    pub noise_min: f32,
}

impl Default for DdpgConfig {
    fn default() -> Self {
        DdpgConfig {
            hidden: 300,
            actor_lr: 1e-4,
            critic_lr: 1e-3,
            tau: 0.01,
            batch_size: 64,
            replay_capacity: 2000,
            baseline_alpha: 0.5,
            warmup_episodes: 100,
            noise_init: 0.5,
            noise_decay: 0.95,
            noise_min: 0.0,
        }
    }
}

/// Output non-linearity of an MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutAct {
    Sigmoid,
    Identity,
}

/// A multi-layer perceptron with ReLU between layers.
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub out_act: OutAct,
}

/// What `Mlp::forward` keeps for `backward`: each layer's input and the final output.
pub struct MlpTrace {
    inputs: Vec<Tensor>,
    hidden_out: Vec<Tensor>,
    output: Tensor,
}

fn uniform_tensor(rng: &mut impl Rng, dims: &[usize], bound: f32) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(dims, (0..n).map(|_| rng.random_range(-bound..=bound)).collect()).expect("sizes match")
}

impl Mlp {
    /// Hidden layers get PyTorch's default init (U(+-1/sqrt(fan_in))); the last layer gets
    /// U(+-3e-3) as in DDPG, so initial outputs sit near the middle of their range.
    pub fn new(sizes: &[usize], out_act: OutAct, rng: &mut impl Rng) -> Mlp {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let bound = if i + 2 == sizes.len() { 3e-3 } else { 1.0 / (w[0] as f32).sqrt() };
                Linear {
                    weight: Param::new(uniform_tensor(rng, &[w[1], w[0]], bound)),
                    bias: Some(Param::new(uniform_tensor(rng, &[w[1]], bound))),
                }
            })
            .collect();
        Mlp { layers, out_act }
    }

    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<MlpTrace> {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut hidden_out = Vec::with_capacity(self.layers.len());
        let mut h = dev.copy(x)?;
        for (i, l) in self.layers.iter().enumerate() {
            let z = l.forward(dev, &h)?;
            inputs.push(h);
            h = if i + 1 < self.layers.len() {
                let a = dev.relu_forward(&z)?;
                hidden_out.push(dev.copy(&a)?);
                a
            } else {
                match self.out_act {
                    OutAct::Identity => z,
                    OutAct::Sigmoid => {
                        let v: Vec<f32> = z.as_slice()?.iter().map(|&t| 1.0 / (1.0 + (-t).exp())).collect();
                        Tensor::from_vec(z.dims(), v)?
                    }
                }
            };
        }
        Ok(MlpTrace { inputs, hidden_out, output: h })
    }

    /// Accumulates parameter gradients for `dout` and returns the input gradient.
    pub fn backward(&mut self, dev: &Device, trace: MlpTrace, dout: &Tensor) -> Result<Tensor> {
        let mut g = match self.out_act {
            OutAct::Identity => dev.copy(dout)?,
            OutAct::Sigmoid => {
                let v: Vec<f32> =
                    dout.as_slice()?.iter().zip(trace.output.as_slice()?).map(|(&d, &y)| d * y * (1.0 - y)).collect();
                Tensor::from_vec(dout.dims(), v)?
            }
        };
        let n = self.layers.len();
        for i in (0..n).rev() {
            let dx = self.layers[i].backward(dev, &trace.inputs[i], &g)?;
            g = if i > 0 { dev.relu_backward(&dx, &trace.hidden_out[i - 1])? } else { dx };
        }
        Ok(g)
    }

    pub fn output(trace: &MlpTrace) -> &Tensor {
        &trace.output
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                let Linear { weight, bias } = l;
                std::iter::once(weight).chain(bias.iter_mut())
            })
            .collect()
    }

    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.grad = None;
        }
    }

    /// `self = (1 - tau) * self + tau * src` for every parameter.
    pub fn soft_update(&mut self, src: &Mlp, tau: f32) -> Result<()> {
        for (dst, s) in self.layers.iter_mut().zip(&src.layers) {
            blend(&mut dst.weight.value, &s.weight.value, tau)?;
            if let (Some(db), Some(sb)) = (&mut dst.bias, &s.bias) {
                blend(&mut db.value, &sb.value, tau)?;
            }
        }
        Ok(())
    }

    pub fn to_state(&self) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.push(l.weight.value.to_vec()?);
            out.push(l.bias.as_ref().map(|b| b.value.to_vec()).transpose()?.unwrap_or_default());
        }
        Ok(out)
    }

    pub fn load_state(&mut self, state: &[Vec<f32>]) -> Result<()> {
        if state.len() != 2 * self.layers.len() {
            return Err(Error::Invalid("saved agent does not match this network's layers".into()));
        }
        for (l, pair) in self.layers.iter_mut().zip(state.chunks(2)) {
            l.weight.value = Tensor::from_vec(l.weight.value.dims(), pair[0].clone())?;
            if let Some(b) = &mut l.bias {
                b.value = Tensor::from_vec(b.value.dims(), pair[1].clone())?;
            }
        }
        Ok(())
    }

    fn copy_from(&mut self, src: &Mlp) -> Result<()> {
        self.soft_update(src, 1.0)
    }
}

fn blend(dst: &mut Tensor, src: &Tensor, tau: f32) -> Result<()> {
    let s = src.as_slice()?.to_vec();
    for (d, v) in dst.as_mut_slice()?.iter_mut().zip(s) {
        *d = (1.0 - tau) * *d + tau * v;
    }
    Ok(())
}

/// Adam (Kingma & Ba) over an MLP's parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Adam {
    pub fn new(lr: f32) -> Adam {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 0, m: vec![], v: vec![] }
    }

    pub fn update(&mut self, net: &mut Mlp) -> Result<()> {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for (i, p) in net.params_mut().into_iter().enumerate() {
            let Some(g) = &p.grad else { continue };
            let g = g.as_slice()?.to_vec();
            if self.m.len() <= i {
                self.m.push(vec![0.0; g.len()]);
                self.v.push(vec![0.0; g.len()]);
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for (((w, &gi), mi), vi) in p.value.as_mut_slice()?.iter_mut().zip(&g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *mi = b1 * *mi + (1.0 - b1) * gi;
                *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                *w -= self.lr * (*mi / c1) / ((*vi / c2).sqrt() + self.eps);
            }
        }
        Ok(())
    }
}

/// One evaluated candidate: the agent's action (before projection onto the budget; see
/// `Agent::update`) and its reward.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    pub action: Vec<f32>,
    pub reward: f32,
}

/// Draws from a normal around `mean` truncated to [0, 1] (rejection; clamped as a last resort).
pub fn truncated_normal(rng: &mut impl Rng, mean: f32, sigma: f32) -> f32 {
    if sigma <= 0.0 {
        return mean.clamp(0.0, 1.0);
    }
    for _ in 0..1000 {
        let z: f32 = rng.sample(StandardNormal);
        let x = mean + sigma * z;
        if (0.0..=1.0).contains(&x) {
            return x;
        }
    }
    mean.clamp(0.0, 1.0)
}

/// The agent: actor, critic, their targets, optimisers, replay buffer and reward baseline.
pub struct Agent {
    pub cfg: DdpgConfig,
    pub state: Vec<f32>,
    pub action_dim: usize,
    pub actor: Mlp,
    pub critic: Mlp,
    pub actor_target: Mlp,
    pub critic_target: Mlp,
    actor_opt: Adam,
    critic_opt: Adam,
    pub replay: VecDeque<Transition>,
    /// Moving average of sampled batch-mean rewards (None before the first update).
    pub baseline: Option<f32>,
    dev: Device,
}

/// Everything an agent holds, for `--resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentState {
    pub actor: Vec<Vec<f32>>,
    pub critic: Vec<Vec<f32>>,
    pub actor_target: Vec<Vec<f32>>,
    pub critic_target: Vec<Vec<f32>>,
    pub actor_opt: Adam,
    pub critic_opt: Adam,
    pub replay: Vec<Transition>,
    pub baseline: Option<f32>,
}

impl Agent {
    pub fn new(cfg: DdpgConfig, state: Vec<f32>, action_dim: usize, rng: &mut impl Rng) -> Result<Agent> {
        if cfg.batch_size == 0 || cfg.replay_capacity < cfg.batch_size {
            return Err(Error::Invalid("replay capacity must hold at least one batch".into()));
        }
        let s = state.len();
        let h = cfg.hidden;
        let actor = Mlp::new(&[s, h, h, action_dim], OutAct::Sigmoid, rng);
        // (state -> h) + (action -> h) is one linear layer on the concatenation [state, action].
        let critic = Mlp::new(&[s + action_dim, h, h, 1], OutAct::Identity, rng);
        let mut actor_target = Mlp::new(&[s, h, h, action_dim], OutAct::Sigmoid, rng);
        let mut critic_target = Mlp::new(&[s + action_dim, h, h, 1], OutAct::Identity, rng);
        actor_target.copy_from(&actor)?;
        critic_target.copy_from(&critic)?;
        Ok(Agent {
            actor_opt: Adam::new(cfg.actor_lr),
            critic_opt: Adam::new(cfg.critic_lr),
            cfg,
            state,
            action_dim,
            actor,
            critic,
            actor_target,
            critic_target,
            replay: VecDeque::new(),
            baseline: None,
            dev: backend::cpu(),
        })
    }

    /// The actor's action for the architecture state, in [0, 1] per group.
    pub fn act(&self) -> Result<Vec<f32>> {
        let s = Tensor::from_vec(&[1, self.state.len()], self.state.clone())?;
        self.actor.forward(&self.dev, &s)?.output.to_vec()
    }

    /// Exploration noise level at `episode`.
    pub fn sigma(&self, episode: usize) -> f32 {
        let after = episode.saturating_sub(self.cfg.warmup_episodes) as i32;
        (self.cfg.noise_init * self.cfg.noise_decay.powi(after)).max(self.cfg.noise_min)
    }

    /// `k` actions for `episode`: uniform during warm-up, then truncated-normal noise around
    /// the actor's output.
    pub fn explore(&mut self, episode: usize, k: usize, rng: &mut impl Rng) -> Result<Vec<Vec<f32>>> {
        if episode < self.cfg.warmup_episodes {
            return Ok((0..k).map(|_| (0..self.action_dim).map(|_| rng.random_range(0.0..=1.0)).collect()).collect());
        }
        let mean = self.act()?;
        let sigma = self.sigma(episode);
        Ok((0..k).map(|_| mean.iter().map(|&m| truncated_normal(rng, m, sigma)).collect()).collect())
    }

    pub fn remember(&mut self, t: Transition) {
        if self.replay.len() == self.cfg.replay_capacity {
            self.replay.pop_front();
        }
        self.replay.push_back(t);
    }

    /// One gradient step of critic and actor on a sampled batch, then soft target updates.
    /// Returns the critic loss, or None while the buffer holds less than a batch.
    ///
    /// Every episode is a single decision (discount 1, terminal), so the critic regresses on
    /// the baseline-subtracted reward directly; the stored action is the one the actor proposed
    /// (before budget projection), so the critic learns the reward of projecting an action
    /// and the actor's gradient is taken where the actor actually acts.
    pub fn update(&mut self, rng: &mut impl Rng) -> Result<Option<f32>> {
        let b = self.cfg.batch_size;
        if self.replay.len() < b {
            return Ok(None);
        }
        let (s_dim, a_dim) = (self.state.len(), self.action_dim);
        let batch: Vec<&Transition> = (0..b).map(|_| &self.replay[rng.random_range(0..self.replay.len())]).collect();
        let mean = batch.iter().map(|t| t.reward).sum::<f32>() / b as f32;
        let ma = match self.baseline {
            None => mean,
            Some(m) => m + self.cfg.baseline_alpha * (mean - m),
        };
        self.baseline = Some(ma);
        let mut sa = Vec::with_capacity(b * (s_dim + a_dim));
        for t in &batch {
            sa.extend_from_slice(&self.state);
            sa.extend_from_slice(&t.action);
        }
        let target = Tensor::from_vec(&[b, 1], batch.iter().map(|t| t.reward - ma).collect())?;
        // Critic: MSE to the target.
        let sa = Tensor::from_vec(&[b, s_dim + a_dim], sa)?;
        let trace = self.critic.forward(&self.dev, &sa)?;
        let (loss, dq) = self.dev.mse_loss(&trace.output, &target)?;
        self.critic.zero_grad();
        self.critic.backward(&self.dev, trace, &dq)?;
        self.critic_opt.update(&mut self.critic)?;
        // Actor: maximise Q(s, actor(s)); the critic only passes gradients through.
        let states = Tensor::from_vec(&[b, s_dim], self.state.repeat(b))?;
        let a_trace = self.actor.forward(&self.dev, &states)?;
        let actions = a_trace.output.to_vec()?;
        let mut sa2 = Vec::with_capacity(b * (s_dim + a_dim));
        for row in actions.chunks(a_dim) {
            sa2.extend_from_slice(&self.state);
            sa2.extend_from_slice(row);
        }
        let c_trace = self.critic.forward(&self.dev, &Tensor::from_vec(&[b, s_dim + a_dim], sa2)?)?;
        let dq = Tensor::full(&[b, 1], -1.0 / b as f32);
        let d_sa = self.critic.backward(&self.dev, c_trace, &dq)?.to_vec()?;
        self.critic.zero_grad();
        let d_a: Vec<f32> = d_sa.chunks(s_dim + a_dim).flat_map(|r| r[s_dim..].to_vec()).collect();
        self.actor.zero_grad();
        self.actor.backward(&self.dev, a_trace, &Tensor::from_vec(&[b, a_dim], d_a)?)?;
        self.actor_opt.update(&mut self.actor)?;
        self.actor_target.soft_update(&self.actor, self.cfg.tau)?;
        self.critic_target.soft_update(&self.critic, self.cfg.tau)?;
        Ok(Some(loss))
    }

    /// The critic's value of an action.
    pub fn q_value(&self, action: &[f32]) -> Result<f32> {
        let mut sa = self.state.clone();
        sa.extend_from_slice(action);
        let t = Tensor::from_vec(&[1, sa.len()], sa)?;
        Ok(self.critic.forward(&self.dev, &t)?.output.to_vec()?[0])
    }

    pub fn save(&self) -> Result<AgentState> {
        Ok(AgentState {
            actor: self.actor.to_state()?,
            critic: self.critic.to_state()?,
            actor_target: self.actor_target.to_state()?,
            critic_target: self.critic_target.to_state()?,
            actor_opt: self.actor_opt.clone(),
            critic_opt: self.critic_opt.clone(),
            replay: self.replay.iter().cloned().collect(),
            baseline: self.baseline,
        })
    }

    pub fn restore(&mut self, s: AgentState) -> Result<()> {
        self.actor.load_state(&s.actor)?;
        self.critic.load_state(&s.critic)?;
        self.actor_target.load_state(&s.actor_target)?;
        self.critic_target.load_state(&s.critic_target)?;
        self.actor_opt = s.actor_opt;
        self.critic_opt = s.critic_opt;
        self.replay = s.replay.into_iter().collect();
        self.baseline = s.baseline;
        Ok(())
    }
}

/// TEMPORARY shim (replaced by the agent branch): the agent's state as named tensors.
pub struct AgentSnapshot {
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub meta: serde_json::Value,
}

impl DdpgConfig {
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl Agent {
    pub fn snapshot(&self) -> AgentSnapshot {
        let s = self.save().expect("host tensors");
        AgentSnapshot { tensors: vec![], meta: serde_json::to_value(&s).expect("serialises") }
    }
    pub fn restore_snapshot(&mut self, snap: AgentSnapshot) -> Result<()> {
        let s: AgentState = serde_json::from_value(snap.meta).map_err(|e| Error::Invalid(e.to_string()))?;
        self.restore(s)
    }
}
