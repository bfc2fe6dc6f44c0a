//! The fast DDPG agent against a naive f64 reference: finite-difference gradients, whole
//! updates step by step, bit-exact snapshot/restore, refusal of bad snapshots, determinism.

use lfgcl::search::ddpg::{Agent, AgentSnapshot, DdpgConfig, Transition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const S: usize = 5;
const A: usize = 4;
const H: usize = 8;
const B: usize = 6;

fn small_config() -> DdpgConfig {
    DdpgConfig { hidden: H, batch_size: B, replay_capacity: 16, warmup_episodes: 2, ..DdpgConfig::default() }
}

fn state() -> Vec<f32> {
    vec![0.9, 0.1, 0.5, 0.3, 0.7]
}

fn fill(agent: &mut Agent, n: usize, rng: &mut StdRng) {
    for _ in 0..n {
        let action: Vec<f32> = (0..A).map(|_| rng.random_range(0.0..=1.0)).collect();
        let reward = -action.iter().enumerate().map(|(i, a)| (a - 0.2 * i as f32).powi(2)).sum::<f32>();
        agent.remember(Transition { action, reward });
    }
}

fn tensor<'a>(snap: &'a AgentSnapshot, name: &str) -> &'a [f32] {
    &snap.tensors.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("{name} missing")).2
}

fn tensor_mut<'a>(snap: &'a mut AgentSnapshot, name: &str) -> &'a mut (String, Vec<usize>, Vec<f32>) {
    snap.tensors.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("{name} missing"))
}

/// Every tensor and the metadata, compared bit for bit.
fn assert_bit_identical(a: &AgentSnapshot, b: &AgentSnapshot) {
    assert_eq!(a.meta, b.meta);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        let xb: Vec<u32> = x.2.iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u32> = y.2.iter().map(|v| v.to_bits()).collect();
        assert!(xb == yb, "{} differs", x.0);
    }
}

/// A 3-layer MLP in f64, evaluated one sample at a time.
#[derive(Clone)]
struct RefNet {
    /// `(weight [out, in], bias [out], in)` per layer.
    layers: Vec<(Vec<f64>, Vec<f64>, usize)>,
    sigmoid: bool,
}

struct Trace {
    /// Input of every layer, then the output.
    acts: Vec<Vec<f64>>,
}

impl RefNet {
    fn from_snapshot(snap: &AgentSnapshot, net: &str, prefix: &str) -> RefNet {
        let layers = (0..3)
            .map(|l| {
                let w = snap.tensors.iter().find(|t| t.0 == format!("{net}.{prefix}{l}.weight")).unwrap();
                let b = tensor(snap, &format!("{net}.{prefix}{l}.bias"));
                (w.2.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect(), w.1[1])
            })
            .collect();
        RefNet { layers, sigmoid: net == "actor" }
    }

    fn zeros_like(&self) -> RefNet {
        let layers = self.layers.iter().map(|(w, b, i)| (vec![0.0; w.len()], vec![0.0; b.len()], *i)).collect();
        RefNet { layers, sigmoid: self.sigmoid }
    }

    fn forward(&self, x: &[f64]) -> Trace {
        let mut acts = vec![x.to_vec()];
        for (l, (w, b, inp)) in self.layers.iter().enumerate() {
            let x = acts.last().unwrap();
            let mut y: Vec<f64> = b
                .iter()
                .enumerate()
                .map(|(o, &bo)| bo + (0..*inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>())
                .collect();
            if l < 2 {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            } else if self.sigmoid {
                y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
            }
            acts.push(y);
        }
        Trace { acts }
    }

    /// Adds the parameter gradients for `dout` into `grad`; returns the input gradient.
    fn backward(&self, t: &Trace, dout: &[f64], grad: &mut RefNet) -> Vec<f64> {
        let mut g: Vec<f64> = if self.sigmoid {
            dout.iter().zip(&t.acts[3]).map(|(d, y)| d * y * (1.0 - y)).collect()
        } else {
            dout.to_vec()
        };
        for l in (0..3).rev() {
            let (w, _, inp) = &self.layers[l];
            let x = &t.acts[l];
            let (gw, gb, _) = &mut grad.layers[l];
            let mut dx = vec![0.0; *inp];
            for (o, &go) in g.iter().enumerate() {
                gb[o] += go;
                for i in 0..*inp {
                    gw[o * inp + i] += go * x[i];
                    dx[i] += go * w[o * inp + i];
                }
            }
            if l > 0 {
                dx.iter_mut().zip(x).for_each(|(d, &xv)| {
                    if xv <= 0.0 {
                        *d = 0.0
                    }
                });
            }
            g = dx;
        }
        g
    }

    fn params_mut(&mut self) -> Vec<&mut f64> {
        self.layers.iter_mut().flat_map(|(w, b, _)| w.iter_mut().chain(b.iter_mut())).collect()
    }
}

fn concat(s: &[f64], a: &[f64]) -> Vec<f64> {
    s.iter().chain(a).copied().collect()
}

fn critic_loss(critic: &RefNet, s: &[f64], batch: &[(Vec<f64>, f64)]) -> f64 {
    batch.iter().map(|(a, t)| (critic.forward(&concat(s, a)).acts[3][0] - t).powi(2)).sum::<f64>() / batch.len() as f64
}

fn actor_objective(actor: &RefNet, critic: &RefNet, s: &[f64]) -> f64 {
    let a = actor.forward(s).acts[3].clone();
    -critic.forward(&concat(s, &a)).acts[3][0]
}

/// Central differences of `f` with respect to every parameter of `net`, in buffer order.
fn finite_differences(net: &RefNet, f: impl Fn(&RefNet) -> f64) -> Vec<f64> {
    let n = net.clone().params_mut().len();
    (0..n)
        .map(|i| {
            let eps = 1e-6;
            let mut plus = net.clone();
            *plus.params_mut()[i] += eps;
            let mut minus = net.clone();
            *minus.params_mut()[i] -= eps;
            (f(&plus) - f(&minus)) / (2.0 * eps)
        })
        .collect()
}

/// The fast gradients of one network, in buffer order.
fn flat(grads: &[(String, Vec<usize>, Vec<f32>)], net: &str) -> Vec<f64> {
    (0..3)
        .flat_map(|l| ["weight", "bias"].map(|k| format!("{net}.{l}.{k}")))
        .flat_map(|name| grads.iter().find(|g| g.0 == name).unwrap().2.iter().map(|&v| v as f64).collect::<Vec<_>>())
        .collect()
}

fn assert_close(what: &str, fast: &[f64], reference: &[f64], rel: f64) {
    assert_eq!(fast.len(), reference.len(), "{what}");
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-6, "{what}: gradients vanish, the check would be vacuous");
    for (i, (f, r)) in fast.iter().zip(reference).enumerate() {
        assert!((f - r).abs() <= rel * (r.abs() + 1e-2 * scale), "{what}[{i}]: fast {f} vs reference {r}");
    }
}

/// An agent whose weights are all drawn from U(-0.5, 0.5) (so no gradient is tiny), through restore.
fn agent_with_large_weights(seed: u64) -> (Agent, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut agent = Agent::new(small_config(), state(), A, &mut rng).unwrap();
    fill(&mut agent, 12, &mut rng);
    let mut snap = agent.snapshot();
    for (name, _, values) in &mut snap.tensors {
        if (name.starts_with("actor.") || name.starts_with("critic.")) && !name.contains(".adam_") {
            values.iter_mut().for_each(|v| *v = rng.random_range(-0.5..0.5));
        }
    }
    agent.restore(snap).unwrap();
    (agent, rng)
}

#[test]
fn gradients_match_finite_differences_of_an_f64_reference() {
    let (mut agent, _) = agent_with_large_weights(3);
    let snap = agent.snapshot();
    let indices = [0, 3, 3, 7, 11, 5];
    let baseline = -0.4f32;
    let (loss, grads) = agent.gradients_for_test(&indices, baseline).unwrap();

    let s: Vec<f64> = state().iter().map(|&v| v as f64).collect();
    let actions = tensor(&snap, "replay.actions");
    let rewards = tensor(&snap, "replay.rewards");
    let batch: Vec<(Vec<f64>, f64)> = indices
        .iter()
        .map(|&i| {
            let a = actions[i * A..(i + 1) * A].iter().map(|&v| v as f64).collect();
            (a, (rewards[i] - baseline) as f64)
        })
        .collect();
    let critic = RefNet::from_snapshot(&snap, "critic", "");
    let actor = RefNet::from_snapshot(&snap, "actor", "");
    let ref_loss = critic_loss(&critic, &s, &batch);
    assert!((loss as f64 - ref_loss).abs() <= 1e-5 * ref_loss.abs(), "loss {loss} vs {ref_loss}");

    let fd_critic = finite_differences(&critic, |c| critic_loss(c, &s, &batch));
    assert_close("critic gradient", &flat(&grads, "critic"), &fd_critic, 1e-3);
    let fd_actor = finite_differences(&actor, |a| actor_objective(a, &critic, &s));
    assert_close("actor gradient", &flat(&grads, "actor"), &fd_actor, 1e-3);
}

/// Adam with the agent's hyper-parameters, in f64.
fn adam(net: &mut RefNet, grad: &mut RefNet, m: &mut RefNet, v: &mut RefNet, step: i32, lr: f64) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
    for (((w, g), mi), vi) in
        net.params_mut().into_iter().zip(grad.params_mut()).zip(m.params_mut()).zip(v.params_mut())
    {
        *mi = b1 * *mi + (1.0 - b1) * *g;
        *vi = b2 * *vi + (1.0 - b2) * *g * *g;
        *w -= lr * (*mi / c1) / ((*vi / c2).sqrt() + eps);
    }
}

#[test]
fn fast_update_equals_a_naive_per_sample_update() {
    let cfg = DdpgConfig { actor_lr: 1e-2, critic_lr: 1e-2, ..small_config() };
    let mut rng = StdRng::seed_from_u64(11);
    let mut agent = Agent::new(cfg.clone(), state(), A, &mut rng).unwrap();
    fill(&mut agent, 14, &mut rng);
    let snap = agent.snapshot();
    let s: Vec<f64> = state().iter().map(|&v| v as f64).collect();
    let (mut actor, mut critic) =
        (RefNet::from_snapshot(&snap, "actor", ""), RefNet::from_snapshot(&snap, "critic", ""));
    let (mut am, mut av, mut cm, mut cv) =
        (actor.zeros_like(), actor.zeros_like(), critic.zeros_like(), critic.zeros_like());
    let actions = tensor(&snap, "replay.actions").to_vec();
    let rewards = tensor(&snap, "replay.rewards").to_vec();
    let mut baseline: Option<f64> = None;
    for step in 1..=6 {
        // The same batch the agent is about to draw.
        let mut peek = rng.clone();
        let indices: Vec<usize> = (0..B).map(|_| peek.random_range(0..rewards.len())).collect();
        let mean = indices.iter().map(|&i| rewards[i] as f64).sum::<f64>() / B as f64;
        let ma = baseline.map_or(mean, |m| m + cfg.baseline_alpha as f64 * (mean - m));
        baseline = Some(ma);
        // Critic: per-sample MSE gradient on [s, a].
        let mut cg = critic.zeros_like();
        let mut ref_loss = 0.0;
        for &i in &indices {
            let a: Vec<f64> = actions[i * A..(i + 1) * A].iter().map(|&v| v as f64).collect();
            let t = critic.forward(&concat(&s, &a));
            let e = t.acts[3][0] - (rewards[i] as f64 - ma);
            ref_loss += e * e / B as f64;
            critic.backward(&t, &[2.0 * e / B as f64], &mut cg);
        }
        adam(&mut critic, &mut cg, &mut cm, &mut cv, step, cfg.critic_lr as f64);
        // Actor: the batch mean of -Q over B identical rows, as the original DDPG code does.
        let mut ag = actor.zeros_like();
        for _ in 0..B {
            let ta = actor.forward(&s);
            let tc = critic.forward(&concat(&s, &ta.acts[3]));
            let d_in = critic.backward(&tc, &[-1.0 / B as f64], &mut critic.zeros_like());
            actor.backward(&ta, &d_in[S..], &mut ag);
        }
        adam(&mut actor, &mut ag, &mut am, &mut av, step, cfg.actor_lr as f64);

        let loss = agent.update(&mut rng).unwrap().unwrap() as f64;
        assert!((loss - ref_loss).abs() <= 1e-5 * ref_loss, "step {step}: loss {loss} vs {ref_loss}");
        let fast = agent.snapshot();
        for (net, reference) in [("actor", &actor), ("critic", &critic)] {
            let got = RefNet::from_snapshot(&fast, net, "");
            // Relative to each layer's scale: Adam divides by the root of tiny second moments,
            // so f32 and f64 rounding differ more than 1e-5 on parameters close to zero.
            for (l, ((gw, gb, _), (rw, rb, _))) in got.layers.iter().zip(&reference.layers).enumerate() {
                let scale = rw.iter().chain(rb).fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (g, r)) in gw.iter().chain(gb).zip(rw.iter().chain(rb)).enumerate() {
                    assert!((g - r).abs() <= 1e-5 * scale, "step {step}: {net}.{l}[{i}] fast {g} vs naive {r}");
                }
            }
        }
        let b = f32::from_bits(fast.meta["baseline_bits"].as_u64().unwrap() as u32) as f64;
        assert!((b - ma).abs() <= 1e-6 * ma.abs().max(1.0));
    }
}

/// Explores, remembers and updates for `rounds` episodes past warm-up; returns the actions
/// and losses as bits.
fn run(agent: &mut Agent, rng: &mut StdRng, rounds: usize) -> Vec<u32> {
    let mut bits = Vec::new();
    for e in 0..rounds {
        for a in agent.explore(10 + e, 3, rng).unwrap() {
            bits.extend(a.iter().map(|v| v.to_bits()));
            let reward = a.iter().sum::<f32>();
            agent.remember(Transition { action: a, reward });
        }
        bits.extend(agent.act().unwrap().iter().map(|v| v.to_bits()));
        for _ in 0..2 {
            bits.push(agent.update(rng).unwrap().unwrap().to_bits());
        }
    }
    bits
}

#[test]
fn snapshot_and_restore_are_bit_exact() {
    let mut rng = StdRng::seed_from_u64(21);
    let mut agent = Agent::new(small_config(), state(), A, &mut rng).unwrap();
    // More transitions than the capacity: the ring has wrapped, and must come back oldest first.
    fill(&mut agent, 30, &mut rng);
    for _ in 0..3 {
        agent.update(&mut rng).unwrap().unwrap();
    }
    let snap = agent.snapshot();
    assert_eq!(tensor(&snap, "replay.rewards").len(), 16);
    let mut fresh = Agent::new(small_config(), state(), A, &mut StdRng::seed_from_u64(999)).unwrap();
    assert_ne!(fresh.snapshot(), snap);
    fresh.restore(snap.clone()).unwrap();
    assert_bit_identical(&fresh.snapshot(), &snap);
    // Through JSON too (the search state file), exactly.
    let json = serde_json::to_string(&snap).unwrap();
    let mut from_json = Agent::new(small_config(), state(), A, &mut StdRng::seed_from_u64(5)).unwrap();
    from_json.restore(serde_json::from_str(&json).unwrap()).unwrap();

    let (mut r1, mut r2, mut r3) = (StdRng::seed_from_u64(8), StdRng::seed_from_u64(8), StdRng::seed_from_u64(8));
    let a = run(&mut agent, &mut r1, 5);
    let b = run(&mut fresh, &mut r2, 5);
    let c = run(&mut from_json, &mut r3, 5);
    assert!(a == b && a == c, "a restored agent acts and learns exactly like the original");
    assert_bit_identical(&agent.snapshot(), &fresh.snapshot());
    assert_bit_identical(&agent.snapshot(), &from_json.snapshot());
}

#[test]
fn restore_refuses_bad_snapshots_naming_the_tensor() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut agent = Agent::new(small_config(), state(), A, &mut rng).unwrap();
    fill(&mut agent, 10, &mut rng);
    agent.update(&mut rng).unwrap();
    let good = agent.snapshot();
    let refuse = |agent: &mut Agent, snap: AgentSnapshot, needle: &str| {
        let e = agent.restore(snap).unwrap_err().to_string();
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
    };

    let mut s = good.clone();
    let t = tensor_mut(&mut s, "critic.1.weight");
    t.1 = vec![H, H + 1];
    t.2.extend(vec![0.0; H]);
    refuse(&mut agent, s, "critic.1.weight");
    let mut s = good.clone();
    tensor_mut(&mut s, "actor.0.bias").2[2] = f32::NAN;
    refuse(&mut agent, s, "actor.0.bias");
    let mut s = good.clone();
    tensor_mut(&mut s, "critic.adam_v.2.weight").2[0] = f32::INFINITY;
    refuse(&mut agent, s, "critic.adam_v.2.weight");
    let mut s = good.clone();
    tensor_mut(&mut s, "actor.adam_v.0.weight").2[0] = -1.0;
    refuse(&mut agent, s, "actor.adam_v.0.weight");
    let mut s = good.clone();
    tensor_mut(&mut s, "actor.2.weight").2.pop();
    refuse(&mut agent, s, "actor.2.weight");
    let mut s = good.clone();
    s.tensors.retain(|t| t.0 != "critic.adam_m.0.bias");
    refuse(&mut agent, s, "critic.adam_m.0.bias is missing");
    let mut s = good.clone();
    s.tensors.push(("actor.3.weight".into(), vec![1], vec![0.0]));
    refuse(&mut agent, s, "unknown tensor actor.3.weight");
    let mut s = good.clone();
    let t = tensor_mut(&mut s, "replay.rewards");
    t.1 = vec![9];
    t.2.pop();
    refuse(&mut agent, s, "replay.actions");
    let mut s = good.clone();
    s.meta["baseline_bits"] = serde_json::json!(f32::NAN.to_bits());
    refuse(&mut agent, s, "baseline");
    let mut s = good.clone();
    s.meta["format"] = serde_json::json!("something else");
    refuse(&mut agent, s, "format");
    // A snapshot of an agent of another size.
    let other = Agent::new(DdpgConfig { hidden: H + 1, ..small_config() }, state(), A, &mut rng).unwrap();
    refuse(&mut agent, other.snapshot(), "actor.0.weight");
    // Nothing was changed by the refused snapshots.
    assert_bit_identical(&agent.snapshot(), &good);
    agent.restore(good).unwrap();
}

#[test]
fn same_seed_same_bits() {
    let go = || {
        let mut rng = StdRng::seed_from_u64(77);
        let mut agent = Agent::new(small_config(), state(), A, &mut rng).unwrap();
        fill(&mut agent, 8, &mut rng);
        let bits = run(&mut agent, &mut rng, 6);
        (bits, agent.snapshot())
    };
    let (a, sa) = go();
    let (b, sb) = go();
    assert_eq!(a, b);
    assert_bit_identical(&sa, &sb);
}

#[test]
fn config_validation_names_the_flag() {
    assert!(DdpgConfig::default().validate().is_ok());
    let d = DdpgConfig::default;
    for (cfg, flag) in [
        (DdpgConfig { actor_lr: 0.0, ..d() }, "--actor-lr"),
        (DdpgConfig { actor_lr: f32::NAN, ..d() }, "--actor-lr"),
        (DdpgConfig { critic_lr: f32::INFINITY, ..d() }, "--critic-lr"),
        (DdpgConfig { batch_size: 0, ..d() }, "--batch-size"),
        (DdpgConfig { replay_capacity: 10, ..d() }, "--replay"),
        (DdpgConfig { hidden: 0, ..d() }, "--hidden"),
        (DdpgConfig { hidden: 70_000, ..d() }, "--hidden"),
        (DdpgConfig { baseline_alpha: 0.0, ..d() }, "--baseline-alpha"),
        (DdpgConfig { baseline_alpha: 1.5, ..d() }, "--baseline-alpha"),
        (DdpgConfig { noise_init: -0.1, ..d() }, "--noise"),
        (DdpgConfig { noise_min: f32::NAN, ..d() }, "--noise-min"),
        (DdpgConfig { noise_decay: 0.0, ..d() }, "--noise-decay"),
        (DdpgConfig { noise_decay: 1.01, ..d() }, "--noise-decay"),
    ] {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(flag), "{flag}: {e}");
        let e = Agent::new(cfg, state(), A, &mut StdRng::seed_from_u64(0)).err().expect("refused").to_string();
        assert!(e.contains(flag), "{flag}: {e}");
    }
    let e = Agent::new(d(), vec![0.5, f32::NAN], A, &mut StdRng::seed_from_u64(0)).err().unwrap().to_string();
    assert!(e.contains("not finite"), "{e}");
}
