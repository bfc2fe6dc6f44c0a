//! The DDPG agent's cost per search step: one `update` (batch 64, hidden 300) and one `explore`
//! of 8 candidates, at the state and action sizes of ResNet-20, -56 and -110 (CIFAR, inner
//! groups, the search's default scope).

use criterion::{criterion_group, criterion_main, Criterion};
use lfgcl::backend;
use lfgcl::models::{Arch, Model};
use lfgcl::prune::{Budget, Criterion as Rank, GroupScope, Pruner};
use lfgcl::search::ddpg::{Agent, DdpgConfig, Transition};
use lfgcl::search::observation::observe;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// An agent sized for `model` with a replay buffer of random transitions, as the search builds it.
fn agent_for(model: &str) -> (Agent, usize, usize) {
    let dev = backend::cpu();
    let m = Model::new(Arch::new(model, 3, 32, 10).unwrap(), &dev, 0).unwrap();
    let pruner = Pruner::new(&m, GroupScope::Inner, Rank::L1).unwrap();
    let state = observe(&m, &pruner, &Budget { flops: Some(0.5), params: None });
    let (s_dim, a_dim) = (state.len(), pruner.groups.len());
    let mut rng = StdRng::seed_from_u64(0);
    let mut agent = Agent::new(DdpgConfig::default(), state, a_dim, &mut rng).unwrap();
    for _ in 0..500 {
        let action: Vec<f32> = (0..a_dim).map(|_| rng.random_range(0.0..=1.0)).collect();
        let reward = -action.iter().map(|a| (a - 0.6) * (a - 0.6)).sum::<f32>();
        agent.remember(Transition { action, reward });
    }
    (agent, s_dim, a_dim)
}

fn agent(c: &mut Criterion) {
    let mut g = c.benchmark_group("ddpg");
    for model in ["resnet20", "resnet56", "resnet110"] {
        let (mut agent, s_dim, a_dim) = agent_for(model);
        let mut rng = StdRng::seed_from_u64(1);
        g.bench_function(format!("update/{model}_s{s_dim}_a{a_dim}"), |b| {
            b.iter(|| agent.update(&mut rng).unwrap().unwrap())
        });
        let episode = DdpgConfig::default().warmup_episodes + 10;
        g.bench_function(format!("explore8/{model}_s{s_dim}_a{a_dim}"), |b| {
            b.iter(|| agent.explore(episode, 8, &mut rng).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = agent
}
criterion_main!(benches);
