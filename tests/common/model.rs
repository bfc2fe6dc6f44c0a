//! Model fixtures shared by the pruning tests (tests/prune.rs, tests/gpu_model.rs).
#![allow(dead_code)]

use lfgcl::models::Model;
use lfgcl::nn::Op;
use lfgcl::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` seeded images of `c x size x size`, uniform in [-1, 1).
pub fn input(n: usize, c: usize, size: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_vec(&[n, c, size, size], (0..n * c * size * size).map(|_| rng.random_range(-1.0..1.0)).collect())
        .unwrap()
}

/// Gives batch norms non-trivial running statistics and affine parameters, as after training.
pub fn randomise_bn(m: &mut Model, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for node in &mut m.graph.nodes {
        if let Op::BatchNorm(bn) = &mut node.op {
            for (t, lo, hi) in [
                (&mut bn.weight.value, 0.5f32, 1.5f32),
                (&mut bn.bias.value, -0.3, 0.3),
                (&mut bn.running_mean, -0.5, 0.5),
                (&mut bn.running_var, 0.5, 2.0),
            ] {
                for v in t.as_mut_slice().unwrap() {
                    *v = rng.random_range(lo..hi);
                }
            }
        }
    }
}
