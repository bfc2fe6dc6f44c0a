//! A lean DDPG (Lillicrap et al. 2016) with AMC's reference settings, sized for a global action:
//! the actor maps the architecture state to the keep ratio of every group at once.
//!
//! Every episode is one terminal decision taken from the same architecture state `s`, which
//! makes the update much cheaper than a generic DDPG:
//! - the critic regresses on the baseline-subtracted reward directly (no bootstrapped target,
//!   so no target networks);
//! - the state half of the critic's first layer, `W_s s + b`, is one vector per update, so each
//!   sampled transition only costs `W_a a`, and `dW_s` is the batch sum of `dz` times `s`;
//! - the actor's input is always `s`, so its forward and backward passes run on one row (the
//!   batch mean of `-Q(s, actor(s))` over identical rows is `-Q` of one row).
//!
//! The networks are tiny (two hidden layers of 300), so they live in flat f32 buffers on the
//! host, with a workspace allocated once; the products go through the `gemm` crate on one
//! thread (faster than splitting them at these sizes). Everything the agent holds (weights,
//! Adam moments, replay buffer, reward baseline) round-trips bit for bit through
//! [`AgentSnapshot`], so a search resumes exactly where it stopped.

use crate::backend::cpu::gemm::{sgemm_layout, Layout};
use crate::error::{Error, Result};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// AMC's settings, the defaults of `lfgcl search`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DdpgConfig {
    pub hidden: usize,
    pub actor_lr: f32,
    pub critic_lr: f32,
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

/// Largest hidden width accepted (far beyond anything useful; it bounds the allocation).
pub const MAX_HIDDEN: usize = 65536;

impl DdpgConfig {
    /// Refuses settings the agent cannot train with; messages name the command-line flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(msg));
        for (flag, lr) in [("--actor-lr", self.actor_lr), ("--critic-lr", self.critic_lr)] {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(format!("{flag} must be a positive finite number, got {lr}"));
            }
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.replay_capacity < self.batch_size {
            return bad(format!(
                "--replay ({}) must hold at least one batch (--batch-size {})",
                self.replay_capacity, self.batch_size
            ));
        }
        if self.hidden == 0 || self.hidden > MAX_HIDDEN {
            return bad(format!("--hidden must be in [1, {MAX_HIDDEN}], got {}", self.hidden));
        }
        if !(self.baseline_alpha.is_finite() && self.baseline_alpha > 0.0 && self.baseline_alpha <= 1.0) {
            return bad(format!("--baseline-alpha must be in (0, 1], got {}", self.baseline_alpha));
        }
        for (flag, v) in [("--noise", self.noise_init), ("--noise-min", self.noise_min)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{flag} must be a finite number >= 0, got {v}"));
            }
        }
        if !(self.noise_decay.is_finite() && self.noise_decay > 0.0 && self.noise_decay <= 1.0) {
            return bad(format!("--noise-decay must be in (0, 1], got {}", self.noise_decay));
        }
        Ok(())
    }
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
/// Bound on the parameters of one network (4 GiB of f32 with its gradient and moments).
const MAX_NET_PARAMS: usize = 1 << 28;

/// A 3-layer perceptron (`input -> hidden -> hidden -> output`, ReLU between layers) in one
/// flat buffer: `[w0, b0, w1, b1, w2, b2]`, each weight `[out, in]` row-major, with its
/// gradient and Adam state alongside.
struct Net {
    name: &'static str,
    sizes: [usize; 4],
    params: Vec<f32>,
    grad: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    adam_step: u64,
    lr: f32,
}

impl Net {
    fn param_count(sizes: [usize; 4]) -> Option<usize> {
        (0..3).try_fold(0usize, |acc, l| sizes[l + 1].checked_mul(sizes[l] + 1).and_then(|n| acc.checked_add(n)))
    }

    /// Hidden layers get PyTorch's default init (U(+-1/sqrt(fan_in))); the last layer gets
    /// U(+-3e-3) as in DDPG, so initial outputs sit near the middle of their range.
    fn new(name: &'static str, sizes: [usize; 4], lr: f32, rng: &mut impl Rng) -> Result<Net> {
        let n = Net::param_count(sizes)
            .filter(|&n| n <= MAX_NET_PARAMS)
            .ok_or_else(|| Error::Invalid(format!("the {name} network {sizes:?} is too large")))?;
        let mut params = Vec::with_capacity(n);
        for l in 0..3 {
            let bound = if l == 2 { 3e-3 } else { 1.0 / (sizes[l] as f32).sqrt() };
            params.extend((0..(sizes[l] + 1) * sizes[l + 1]).map(|_| rng.random_range(-bound..=bound)));
        }
        Ok(Net {
            name,
            sizes,
            params,
            grad: vec![0.0; n],
            adam_m: vec![0.0; n],
            adam_v: vec![0.0; n],
            adam_step: 0,
            lr,
        })
    }

    /// Offset of layer `l`'s weight; its bias follows the weight.
    fn weight_at(&self, l: usize) -> usize {
        (0..l).map(|i| (self.sizes[i] + 1) * self.sizes[i + 1]).sum()
    }
    fn bias_at(&self, l: usize) -> usize {
        self.weight_at(l) + self.sizes[l] * self.sizes[l + 1]
    }
    fn w(&self, l: usize) -> &[f32] {
        let at = self.weight_at(l);
        &self.params[at..at + self.sizes[l] * self.sizes[l + 1]]
    }
    fn b(&self, l: usize) -> &[f32] {
        let at = self.bias_at(l);
        &self.params[at..at + self.sizes[l + 1]]
    }

    /// `(suffix, shape, range)` of every tensor, in buffer order.
    fn tensors(&self) -> Vec<(String, Vec<usize>, std::ops::Range<usize>)> {
        let mut out = Vec::with_capacity(6);
        for l in 0..3 {
            let (w, b) = (self.weight_at(l), self.bias_at(l));
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            out.push((format!("{l}.weight"), vec![o, i], w..w + o * i));
            out.push((format!("{l}.bias"), vec![o], b..b + o));
        }
        out
    }

    /// One Adam (Kingma & Ba) step on the accumulated gradient.
    fn adam_step(&mut self) {
        self.adam_step += 1;
        let t = self.adam_step.min(i32::MAX as u64) as i32;
        let c1 = 1.0 - BETA1.powi(t);
        let c2 = 1.0 - BETA2.powi(t);
        let (params, grad, m, v) = (&mut self.params[..], &self.grad[..], &mut self.adam_m[..], &mut self.adam_v[..]);
        // The CPU kernels' instruction set (`--cpu-isa`); every build gives the same bits.
        #[cfg(target_arch = "x86_64")]
        {
            use crate::backend::cpu::isa::{isa, Isa};
            match isa() {
                // SAFETY: `isa()` names only instruction sets the CPU has.
                Isa::Avx512 => return unsafe { adam_avx512(params, grad, m, v, self.lr, c1, c2) },
                Isa::Avx2 => return unsafe { adam_avx2(params, grad, m, v, self.lr, c1, c2) },
                Isa::Portable => {}
            }
        }
        adam(params, grad, m, v, self.lr, c1, c2);
    }
}

/// `w -= lr * m^ / (sqrt(v^) + eps)` with bias-corrected moments `m^ = m / c1`, `v^ = v / c2`.
/// Only IEEE operations without fused multiply-adds, so every instruction set gives the same bits.
#[inline(always)]
fn adam(params: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, c1: f32, c2: f32) {
    for (((w, &g), m), v) in params.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = BETA1 * *m + (1.0 - BETA1) * g;
        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
        *w -= lr * (*m / c1) / ((*v / c2).sqrt() + ADAM_EPS);
    }
}

/// `adam` compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adam_avx512(params: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, c1: f32, c2: f32) {
    adam(params, grad, m, v, lr, c1, c2)
}

/// `adam` compiled for AVX2 (twice the vector width of the baseline SSE2 build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_avx2(params: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, c1: f32, c2: f32) {
    adam(params, grad, m, v, lr, c1, c2)
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

/// FIFO replay buffer in flat storage: a ring once full, grown on demand before that (so a
/// large `--replay` costs nothing until it fills).
struct Replay {
    capacity: usize,
    action_dim: usize,
    actions: Vec<f32>,
    rewards: Vec<f32>,
    /// Physical slot of the oldest transition (0 until the buffer wraps).
    oldest: usize,
}

impl Replay {
    fn len(&self) -> usize {
        self.rewards.len()
    }
    fn slot(&self, i: usize) -> usize {
        (self.oldest + i) % self.len()
    }
    fn push(&mut self, action: &[f32], reward: f32) {
        if self.len() < self.capacity {
            self.actions.extend_from_slice(action);
            self.rewards.push(reward);
        } else {
            let at = self.oldest;
            self.actions[at * self.action_dim..(at + 1) * self.action_dim].copy_from_slice(action);
            self.rewards[at] = reward;
            self.oldest = (self.oldest + 1) % self.capacity;
        }
    }
    /// Actions and rewards, oldest first.
    fn ordered(&self) -> (Vec<f32>, Vec<f32>) {
        let (n, d) = (self.len(), self.action_dim);
        let mut actions = Vec::with_capacity(n * d);
        let mut rewards = Vec::with_capacity(n);
        for i in 0..n {
            let s = self.slot(i);
            actions.extend_from_slice(&self.actions[s * d..(s + 1) * d]);
            rewards.push(self.rewards[s]);
        }
        (actions, rewards)
    }
}

/// Buffers of one update, allocated once. `B` batch, `H` hidden, `A` action size.
struct Workspace {
    indices: Vec<usize>,
    /// Sampled actions `[B, A]` and critic targets `[B]`.
    actions: Vec<f32>,
    targets: Vec<f32>,
    /// `W_s s + b0` of the critic's first layer `[H]`.
    state_term: Vec<f32>,
    /// Critic activations `[B, H]` and values `[B]`, then their gradients.
    h0: Vec<f32>,
    h1: Vec<f32>,
    q: Vec<f32>,
    dq: Vec<f32>,
    dz1: Vec<f32>,
    dz0: Vec<f32>,
    /// Column sums `[H]` (bias gradients, and the factor of `dW_s`).
    col_sum: Vec<f32>,
    /// One-row passes: actor activations and output, critic activations, their gradients.
    a0: Vec<f32>,
    a1: Vec<f32>,
    act: Vec<f32>,
    c0: Vec<f32>,
    c1: Vec<f32>,
    d_c0: Vec<f32>,
    d_act: Vec<f32>,
    d_a1: Vec<f32>,
    d_a0: Vec<f32>,
}

impl Workspace {
    fn new(b: usize, h: usize, a: usize) -> Workspace {
        Workspace {
            indices: vec![0; b],
            actions: vec![0.0; b * a],
            targets: vec![0.0; b],
            state_term: vec![0.0; h],
            h0: vec![0.0; b * h],
            h1: vec![0.0; b * h],
            q: vec![0.0; b],
            dq: vec![0.0; b],
            dz1: vec![0.0; b * h],
            dz0: vec![0.0; b * h],
            col_sum: vec![0.0; h],
            a0: vec![0.0; h],
            a1: vec![0.0; h],
            act: vec![0.0; a],
            c0: vec![0.0; h],
            c1: vec![0.0; h],
            d_c0: vec![0.0; h],
            d_act: vec![0.0; a],
            d_a1: vec![0.0; h],
            d_a0: vec![0.0; h],
        }
    }
}

/// The batch products run on one thread: at batch 64 and hidden 300, two threads made a ResNet-20
/// update slower (0.73 vs 0.45 ms on 2 shared cores), and the search keeps the other core busy.
const GEMM_THREADS: usize = 1;

const VEC: Layout = Layout { row: 1, col: 1 };

/// `y[m] (+)= W[m, k] x[k]`, `W` row-major with row stride `ld`.
fn matvec(m: usize, k: usize, w: &[f32], ld: usize, x: &[f32], y: &mut [f32], accumulate: bool) {
    sgemm_layout(m, 1, k, w, Layout { row: ld, col: 1 }, x, VEC, y, VEC, accumulate, 1);
}

/// `y[k] (+)= W[m, k]^T x[m]`, `W` row-major with row stride `ld`.
fn matvec_t(m: usize, k: usize, w: &[f32], ld: usize, x: &[f32], y: &mut [f32], accumulate: bool) {
    sgemm_layout(k, 1, m, w, Layout { row: 1, col: ld }, x, VEC, y, VEC, accumulate, 1);
}

/// `G[i, j] = u[i] v[j]` into rows of stride `ld`.
fn outer(u: &[f32], v: &[f32], g: &mut [f32], ld: usize) {
    for (i, &ui) in u.iter().enumerate() {
        for (gj, &vj) in g[i * ld..i * ld + v.len()].iter_mut().zip(v) {
            *gj = ui * vj;
        }
    }
}

/// Column sums of a row-major `[rows, cols]` matrix.
fn column_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in x.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

fn relu_in_place(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// `dx = dy` where the ReLU output `y` is positive, else 0.
fn relu_grad(dy: &mut [f32], y: &[f32]) {
    for (d, &v) in dy.iter_mut().zip(y) {
        if v <= 0.0 {
            *d = 0.0;
        }
    }
}

/// `(name, shape, values)` of one row-major tensor.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The agent's state for `--resume`: named tensors (weights, Adam moments, replay buffer) and
/// small metadata (Adam step counters, the reward baseline as exact bits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub tensors: Vec<NamedTensor>,
    pub meta: serde_json::Value,
}

/// Snapshot format tag, checked by `restore`.
const SNAPSHOT_FORMAT: &str = "lfgcl-ddpg-1";

/// The agent: actor, critic, their optimisers, replay buffer and reward baseline.
pub struct Agent {
    cfg: DdpgConfig,
    state: Vec<f32>,
    action_dim: usize,
    actor: Net,
    critic: Net,
    replay: Replay,
    /// Moving average of sampled batch-mean rewards (None before the first update).
    baseline: Option<f32>,
    ws: Workspace,
}

impl Agent {
    pub fn new(cfg: DdpgConfig, state: Vec<f32>, action_dim: usize, rng: &mut impl Rng) -> Result<Agent> {
        cfg.validate()?;
        if state.is_empty() || action_dim == 0 {
            return Err(Error::Invalid("the agent needs a non-empty state and at least one action".into()));
        }
        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("agent state element {i} is not finite ({})", state[i])));
        }
        let (s, h) = (state.len(), cfg.hidden);
        let actor = Net::new("actor", [s, h, h, action_dim], cfg.actor_lr, rng)?;
        // The critic's first layer reads the concatenation [state, action]; its weight's first
        // `s` columns are `W_s`, the rest `W_a`.
        let critic = Net::new("critic", [s + action_dim, h, h, 1], cfg.critic_lr, rng)?;
        Ok(Agent {
            replay: Replay {
                capacity: cfg.replay_capacity,
                action_dim,
                actions: Vec::new(),
                rewards: Vec::new(),
                oldest: 0,
            },
            ws: Workspace::new(cfg.batch_size, h, action_dim),
            baseline: None,
            cfg,
            state,
            action_dim,
            actor,
            critic,
        })
    }

    pub fn config(&self) -> &DdpgConfig {
        &self.cfg
    }
    pub fn state(&self) -> &[f32] {
        &self.state
    }
    pub fn action_dim(&self) -> usize {
        self.action_dim
    }
    /// The reward baseline (None before the first update).
    pub fn baseline(&self) -> Option<f32> {
        self.baseline
    }
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Actor forward on the state into `ws.a0`, `ws.a1`, `ws.act`.
    fn actor_forward(&mut self) {
        let (s, h, a) = (self.state.len(), self.cfg.hidden, self.action_dim);
        let (net, ws) = (&self.actor, &mut self.ws);
        ws.a0.copy_from_slice(net.b(0));
        matvec(h, s, net.w(0), s, &self.state, &mut ws.a0, true);
        relu_in_place(&mut ws.a0);
        ws.a1.copy_from_slice(net.b(1));
        matvec(h, h, net.w(1), h, &ws.a0, &mut ws.a1, true);
        relu_in_place(&mut ws.a1);
        ws.act.copy_from_slice(net.b(2));
        matvec(a, h, net.w(2), h, &ws.a1, &mut ws.act, true);
        for v in &mut ws.act {
            *v = 1.0 / (1.0 + (-*v).exp());
        }
    }

    /// The actor's action for the architecture state, in [0, 1] per group.
    pub fn act(&mut self) -> Result<Vec<f32>> {
        self.actor_forward();
        Ok(self.ws.act.clone())
    }

    /// Exploration noise level at `episode`.
    pub fn sigma(&self, episode: usize) -> f32 {
        let after = episode.saturating_sub(self.cfg.warmup_episodes).min(i32::MAX as usize) as i32;
        (self.cfg.noise_init * self.cfg.noise_decay.powi(after)).max(self.cfg.noise_min)
    }

    /// `k` actions for `episode`: uniform during warm-up, then truncated-normal noise around
    /// the actor's output.
    pub fn explore(&mut self, episode: usize, k: usize, rng: &mut impl Rng) -> Result<Vec<Vec<f32>>> {
        if episode < self.cfg.warmup_episodes {
            return Ok((0..k).map(|_| (0..self.action_dim).map(|_| rng.random_range(0.0..=1.0)).collect()).collect());
        }
        self.actor_forward();
        let sigma = self.sigma(episode);
        let mean = &self.ws.act;
        Ok((0..k).map(|_| mean.iter().map(|&m| truncated_normal(rng, m, sigma)).collect()).collect())
    }

    /// The first of the agent's weights, Adam moments or reward baseline that is not finite, by
    /// name (`actor.0.weight`, `critic.adam_v.2.bias`, `baseline`), or None.
    pub fn first_non_finite(&self) -> Option<String> {
        for net in [&self.actor, &self.critic] {
            for (buf, prefix) in [(&net.params, ""), (&net.adam_m, "adam_m."), (&net.adam_v, "adam_v.")] {
                for (name, _, range) in net.tensors() {
                    if let Some(v) = buf[range].iter().find(|v| !v.is_finite()) {
                        return Some(format!("{}.{prefix}{name} holds {v}", net.name));
                    }
                }
            }
        }
        self.baseline.filter(|b| !b.is_finite()).map(|b| format!("the reward baseline is {b}"))
    }

    /// Stores a transition, dropping the oldest when the buffer is full. Its action must have
    /// `action_dim` entries (the search only passes actions `explore` proposed).
    pub fn remember(&mut self, t: Transition) {
        assert_eq!(t.action.len(), self.action_dim, "transition action size");
        self.replay.push(&t.action, t.reward);
    }

    /// Copies the transitions at `ws.indices` into the workspace and returns their mean reward.
    fn gather(&mut self) -> f32 {
        let a = self.action_dim;
        let ws = &mut self.ws;
        let mut sum = 0.0f32;
        for (j, &i) in ws.indices.iter().enumerate() {
            let slot = self.replay.slot(i);
            ws.actions[j * a..(j + 1) * a].copy_from_slice(&self.replay.actions[slot * a..(slot + 1) * a]);
            ws.targets[j] = self.replay.rewards[slot];
            sum += self.replay.rewards[slot];
        }
        sum / ws.indices.len() as f32
    }

    /// `W_s s + b0` of the critic's current first layer, into `ws.state_term`.
    fn critic_state_term(&mut self) {
        let (s, h) = (self.state.len(), self.cfg.hidden);
        let ld = s + self.action_dim;
        let ws = &mut self.ws;
        ws.state_term.copy_from_slice(self.critic.b(0));
        matvec(h, s, self.critic.w(0), ld, &self.state, &mut ws.state_term, true);
    }

    /// Critic MSE to `ws.targets` over the gathered batch: fills `critic.grad` and returns the loss.
    fn critic_gradients(&mut self) -> f32 {
        let (s, h, a, b) = (self.state.len(), self.cfg.hidden, self.action_dim, self.cfg.batch_size);
        let ld = s + a;
        self.critic_state_term();
        let net = &mut self.critic;
        let ws = &mut self.ws;
        let (w0, w1, w2) = (net.weight_at(0), net.weight_at(1), net.weight_at(2));
        // Forward: h0 = relu(state_term + A W_a^T), h1 = relu(h0 W1^T + b1), q = h1 w2 + b2.
        for row in ws.h0.chunks_exact_mut(h) {
            row.copy_from_slice(&ws.state_term);
        }
        let w_a = Layout { row: 1, col: ld };
        sgemm_layout(
            b,
            h,
            a,
            &ws.actions,
            Layout::row_major(a),
            &net.params[w0 + s..],
            w_a,
            &mut ws.h0,
            Layout::row_major(h),
            true,
            GEMM_THREADS,
        );
        relu_in_place(&mut ws.h0);
        for row in ws.h1.chunks_exact_mut(h) {
            row.copy_from_slice(net.b(1));
        }
        sgemm_layout(
            b,
            h,
            h,
            &ws.h0,
            Layout::row_major(h),
            net.w(1),
            Layout::col_major(h),
            &mut ws.h1,
            Layout::row_major(h),
            true,
            GEMM_THREADS,
        );
        relu_in_place(&mut ws.h1);
        ws.q.fill(net.b(2)[0]);
        matvec(b, h, &ws.h1, h, net.w(2), &mut ws.q, true);
        // Loss and dL/dq exactly as the backend's `mse_loss` (sums in f64).
        let count = b as f64;
        let mut sum = 0.0f64;
        for ((dq, &q), &t) in ws.dq.iter_mut().zip(&ws.q).zip(&ws.targets) {
            let e = q as f64 - t as f64;
            sum += e * e;
            *dq = (2.0 * e / count) as f32;
        }
        let loss = (sum / count) as f32;
        // Last layer: dw2 = h1^T dq, db2 = sum dq, dz1 = dq w2 masked by h1.
        let (b2_at, w2_grad) = (net.bias_at(2), w2..w2 + h);
        matvec_t(b, h, &ws.h1, h, &ws.dq, &mut net.grad[w2_grad], false);
        net.grad[b2_at] = ws.dq.iter().sum();
        let w2v = &net.params[w2..w2 + h];
        for ((row, &dq), h1) in ws.dz1.chunks_exact_mut(h).zip(&ws.dq).zip(ws.h1.chunks_exact(h)) {
            for ((d, &w), &y) in row.iter_mut().zip(w2v).zip(h1) {
                *d = if y > 0.0 { dq * w } else { 0.0 };
            }
        }
        // Middle layer: dW1 = dz1^T h0, db1 = colsum dz1, dz0 = (dz1 W1) masked by h0.
        let (w1_len, b1_at) = (h * h, net.bias_at(1));
        sgemm_layout(
            h,
            h,
            b,
            &ws.dz1,
            Layout::col_major(h),
            &ws.h0,
            Layout::row_major(h),
            &mut net.grad[w1..w1 + w1_len],
            Layout::row_major(h),
            false,
            GEMM_THREADS,
        );
        column_sums(&ws.dz1, h, &mut net.grad[b1_at..b1_at + h]);
        sgemm_layout(
            b,
            h,
            h,
            &ws.dz1,
            Layout::row_major(h),
            net.w(1),
            Layout::row_major(h),
            &mut ws.dz0,
            Layout::row_major(h),
            false,
            GEMM_THREADS,
        );
        relu_grad(&mut ws.dz0, &ws.h0);
        // First layer: dW_a = dz0^T A, db0 = colsum dz0, dW_s = colsum dz0 (x) s.
        let b0_at = net.bias_at(0);
        column_sums(&ws.dz0, h, &mut ws.col_sum);
        net.grad[b0_at..b0_at + h].copy_from_slice(&ws.col_sum);
        let g0 = &mut net.grad[w0..w0 + h * ld];
        outer(&ws.col_sum, &self.state, g0, ld);
        sgemm_layout(
            h,
            a,
            b,
            &ws.dz0,
            Layout::col_major(h),
            &ws.actions,
            Layout::row_major(a),
            &mut g0[s..],
            Layout::row_major(ld),
            false,
            GEMM_THREADS,
        );
        loss
    }

    /// Gradient of `-Q(s, actor(s))` with respect to the actor, into `actor.grad` (the critic
    /// only passes gradients through).
    fn actor_gradients(&mut self) {
        let (s, h, a) = (self.state.len(), self.cfg.hidden, self.action_dim);
        let ld = s + a;
        self.actor_forward();
        self.critic_state_term();
        let (critic, ws) = (&self.critic, &mut self.ws);
        // Critic forward on one row.
        ws.c0.copy_from_slice(&ws.state_term);
        let w0 = critic.weight_at(0);
        matvec(h, a, &critic.params[w0 + s..], ld, &ws.act, &mut ws.c0, true);
        relu_in_place(&mut ws.c0);
        ws.c1.copy_from_slice(critic.b(1));
        matvec(h, h, critic.w(1), h, &ws.c0, &mut ws.c1, true);
        relu_in_place(&mut ws.c1);
        // dQ = -1: back through the critic to the action (c1 becomes its own gradient).
        for (c, &w) in ws.c1.iter_mut().zip(critic.w(2)) {
            *c = if *c > 0.0 { -w } else { 0.0 };
        }
        matvec_t(h, h, critic.w(1), h, &ws.c1, &mut ws.d_c0, false);
        relu_grad(&mut ws.d_c0, &ws.c0);
        matvec_t(h, a, &critic.params[w0 + s..], ld, &ws.d_c0, &mut ws.d_act, false);
        // Through the sigmoid and the actor.
        for (d, &y) in ws.d_act.iter_mut().zip(&ws.act) {
            *d *= y * (1.0 - y);
        }
        let net = &mut self.actor;
        let (w0, w1, w2) = (net.weight_at(0), net.weight_at(1), net.weight_at(2));
        let (b0, b1, b2) = (net.bias_at(0), net.bias_at(1), net.bias_at(2));
        outer(&ws.d_act, &ws.a1, &mut net.grad[w2..w2 + a * h], h);
        net.grad[b2..b2 + a].copy_from_slice(&ws.d_act);
        matvec_t(a, h, &net.params[w2..w2 + a * h], h, &ws.d_act, &mut ws.d_a1, false);
        relu_grad(&mut ws.d_a1, &ws.a1);
        outer(&ws.d_a1, &ws.a0, &mut net.grad[w1..w1 + h * h], h);
        net.grad[b1..b1 + h].copy_from_slice(&ws.d_a1);
        matvec_t(h, h, &net.params[w1..w1 + h * h], h, &ws.d_a1, &mut ws.d_a0, false);
        relu_grad(&mut ws.d_a0, &ws.a0);
        outer(&ws.d_a0, &self.state, &mut net.grad[w0..w0 + h * s], s);
        net.grad[b0..b0 + h].copy_from_slice(&ws.d_a0);
    }

    /// One gradient step of the critic, then of the actor, on a sampled batch. Returns the
    /// critic loss, or None while the buffer holds less than a batch.
    ///
    /// Draws exactly `batch_size` indices `rng.random_range(0..replay_len)` (oldest first
    /// numbering), then nothing else. Every episode is a single decision (discount 1,
    /// terminal), so the critic regresses on the baseline-subtracted reward directly; the
    /// stored action is the one the actor proposed (before budget projection), so the critic
    /// learns the reward of projecting an action and the actor's gradient is taken where the
    /// actor actually acts.
    pub fn update(&mut self, rng: &mut impl Rng) -> Result<Option<f32>> {
        let n = self.replay.len();
        if n < self.cfg.batch_size {
            return Ok(None);
        }
        for i in self.ws.indices.iter_mut() {
            *i = rng.random_range(0..n);
        }
        let mean = self.gather();
        let ma = match self.baseline {
            None => mean,
            Some(m) => m + self.cfg.baseline_alpha * (mean - m),
        };
        self.baseline = Some(ma);
        for t in &mut self.ws.targets {
            *t -= ma;
        }
        let loss = self.critic_gradients();
        self.critic.adam_step();
        self.actor_gradients();
        self.actor.adam_step();
        Ok(Some(loss))
    }

    /// For tests: the critic's loss and gradient on the transitions at `indices` (oldest-first
    /// numbering) against `reward - baseline`, and the actor's gradient of `-Q(s, actor(s))`;
    /// nothing is updated. Gradients are named like `snapshot`'s weights.
    #[doc(hidden)]
    pub fn gradients_for_test(&mut self, indices: &[usize], baseline: f32) -> Result<(f32, Vec<NamedTensor>)> {
        if indices.len() != self.cfg.batch_size || indices.iter().any(|&i| i >= self.replay.len()) {
            return Err(Error::Invalid("gradients_for_test: one batch of valid replay indices expected".into()));
        }
        self.ws.indices.copy_from_slice(indices);
        self.gather();
        for t in &mut self.ws.targets {
            *t -= baseline;
        }
        let loss = self.critic_gradients();
        self.actor_gradients();
        let mut out = Vec::new();
        for net in [&self.actor, &self.critic] {
            for (name, shape, range) in net.tensors() {
                out.push((format!("{}.{name}", net.name), shape, net.grad[range].to_vec()));
            }
        }
        Ok((loss, out))
    }

    /// Everything the agent learned, for `--resume`: `{actor,critic}.{0,1,2}.{weight,bias}`,
    /// their Adam moments `{actor,critic}.adam_{m,v}.{0,1,2}.{weight,bias}`, the replay buffer
    /// oldest first (`replay.actions [n, action_dim]`, `replay.rewards [n]`), and in `meta` the
    /// Adam step counters and the reward baseline's bits.
    pub fn snapshot(&self) -> AgentSnapshot {
        let mut tensors = Vec::new();
        for net in [&self.actor, &self.critic] {
            for (buf, prefix) in [(&net.params, ""), (&net.adam_m, "adam_m."), (&net.adam_v, "adam_v.")] {
                for (name, shape, range) in net.tensors() {
                    tensors.push((format!("{}.{prefix}{name}", net.name), shape, buf[range].to_vec()));
                }
            }
        }
        let (actions, rewards) = self.replay.ordered();
        let n = rewards.len();
        tensors.push(("replay.actions".into(), vec![n, self.action_dim], actions));
        tensors.push(("replay.rewards".into(), vec![n], rewards));
        let meta = serde_json::json!({
            "format": SNAPSHOT_FORMAT,
            "actor_adam_step": self.actor.adam_step,
            "critic_adam_step": self.critic.adam_step,
            "baseline_bits": self.baseline.map(f32::to_bits),
        });
        AgentSnapshot { tensors, meta }
    }

    /// Restores a `snapshot` of an agent with the same sizes. Every tensor name, shape and
    /// value is checked before anything changes; a mismatch is an error naming the tensor.
    pub fn restore(&mut self, snap: AgentSnapshot) -> Result<()> {
        let bad = |msg: String| Error::Invalid(format!("saved agent: {msg}"));
        let meta = &snap.meta;
        if meta.get("format").and_then(|v| v.as_str()) != Some(SNAPSHOT_FORMAT) {
            return Err(bad(format!("unknown format {}, expected {SNAPSHOT_FORMAT}", meta["format"])));
        }
        let step = |key: &str| meta.get(key).and_then(|v| v.as_u64()).ok_or_else(|| bad(format!("{key} missing")));
        let (actor_step, critic_step) = (step("actor_adam_step")?, step("critic_adam_step")?);
        let baseline = match meta.get("baseline_bits") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let bits = v
                    .as_u64()
                    .and_then(|b| u32::try_from(b).ok())
                    .ok_or_else(|| bad("baseline_bits invalid".into()))?;
                let b = f32::from_bits(bits);
                if !b.is_finite() {
                    return Err(bad(format!("baseline {b} is not finite")));
                }
                Some(b)
            }
        };
        let mut by_name = HashMap::new();
        for (name, shape, values) in snap.tensors {
            let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if count != Some(values.len()) {
                return Err(bad(format!("tensor {name}: shape {shape:?} does not match its {} values", values.len())));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!("tensor {name}: value {i} is not finite ({})", values[i])));
            }
            if name.contains(".adam_v.") && values.iter().any(|&v| v < 0.0) {
                return Err(bad(format!("tensor {name}: negative second moment")));
            }
            if by_name.insert(name.clone(), (shape, values)).is_some() {
                return Err(bad(format!("tensor {name} appears twice")));
            }
        }
        type Named = HashMap<String, (Vec<usize>, Vec<f32>)>;
        let take = |by_name: &mut Named, name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (got, values) = by_name.remove(name).ok_or_else(|| bad(format!("tensor {name} is missing")))?;
            if got != shape {
                return Err(bad(format!("tensor {name} has shape {got:?}, this agent needs {shape:?}")));
            }
            Ok(values)
        };
        // (net index, buffer index, values) of every network tensor, applied once all are valid.
        let mut net_values = Vec::new();
        for (ni, net) in [&self.actor, &self.critic].into_iter().enumerate() {
            for (bi, prefix) in ["", "adam_m.", "adam_v."].into_iter().enumerate() {
                for (name, shape, range) in net.tensors() {
                    net_values.push((
                        ni,
                        bi,
                        range,
                        take(&mut by_name, &format!("{}.{prefix}{name}", net.name), &shape)?,
                    ));
                }
            }
        }
        let (rewards_shape, rewards) =
            by_name.remove("replay.rewards").ok_or_else(|| bad("tensor replay.rewards is missing".into()))?;
        let n = rewards.len();
        if rewards_shape.len() != 1 {
            return Err(bad(format!("tensor replay.rewards has shape {rewards_shape:?}, expected [n]")));
        }
        if n > self.cfg.replay_capacity {
            return Err(bad(format!(
                "tensor replay.rewards holds {n} transitions, more than --replay {}",
                self.cfg.replay_capacity
            )));
        }
        let actions = take(&mut by_name, "replay.actions", &[n, self.action_dim])?;
        if let Some(name) = by_name.keys().next() {
            return Err(bad(format!("unknown tensor {name}")));
        }
        for (ni, bi, range, values) in net_values {
            let net = if ni == 0 { &mut self.actor } else { &mut self.critic };
            let buf = match bi {
                0 => &mut net.params,
                1 => &mut net.adam_m,
                _ => &mut net.adam_v,
            };
            buf[range].copy_from_slice(&values);
        }
        self.actor.adam_step = actor_step;
        self.critic.adam_step = critic_step;
        self.replay.actions = actions;
        self.replay.rewards = rewards;
        self.replay.oldest = 0;
        self.baseline = baseline;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resumed searches may run on another machine: the vectorised Adam must give the bits of
    /// the baseline build.
    #[test]
    fn adam_is_bit_identical_on_every_instruction_set() {
        let n = 1037;
        let wave = |k: usize, f: f32| (0..n).map(|i| ((i * k % 97) as f32 / 97.0 - 0.5) * f).collect::<Vec<f32>>();
        let (params, grad, m) = (wave(7, 1.0), wave(13, 1e-3), wave(5, 1e-4));
        let v: Vec<f32> = wave(3, 1e-3).iter().map(|x| x * x).collect();
        type Step<'a> = &'a dyn Fn(&mut [f32], &mut [f32], &mut [f32]);
        let run = |f: Step| {
            let (mut p, mut m, mut v) = (params.clone(), m.clone(), v.clone());
            f(&mut p, &mut m, &mut v);
            [p, m, v].concat().iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        };
        let (lr, c1, c2) = (1e-3, 1.0 - BETA1.powi(3), 1.0 - BETA2.powi(3));
        let plain = run(&|p, m, v| adam(p, &grad, m, v, lr, c1, c2));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available.
                assert!(plain == run(&|p, m, v| unsafe { adam_avx2(p, &grad, m, v, lr, c1, c2) }), "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is available.
                assert!(plain == run(&|p, m, v| unsafe { adam_avx512(p, &grad, m, v, lr, c1, c2) }), "AVX-512");
            }
        }
        assert!(plain != run(&|p, m, v| adam(p, &grad, m, v, 2.0 * lr, c1, c2)), "the comparison can fail");
    }
}
