//! CPU benchmarks (criterion): the SGEMM the convolutions stand on, ResNet-20's convolutions, the
//! torchvision ResNets' stem max pool, inference and a training step, and the evaluation of one
//! pruning candidate. Throughput is reported in elements (FLOPs or images) per second; `lfgcl
//! bench cpu` prints the same figures as fractions of the SGEMM peak measured in the same run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lfgcl::backend::{self, cpu::gemm::sgemm, ConvSpec};
use lfgcl::models::{Arch, Model};
use lfgcl::nn::Mode;
use lfgcl::prune::{Criterion as Rank, GroupScope, Pruner};
use lfgcl::search::reward::{RewardConfig, Scorer};
use lfgcl::train::Sgd;
use lfgcl::Tensor;
use std::time::Duration;

fn data(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(dims, (0..n).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect()).unwrap()
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("sgemm");
    let threads = rayon::current_num_threads();
    for n in [256usize, 512, 1024] {
        let a = vec![0.5f32; n * n];
        let b = vec![0.25f32; n * n];
        let mut out = vec![0.0f32; n * n];
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, &n| {
            bench.iter(|| sgemm(n, n, n, &a, false, &b, false, &mut out, false, threads))
        });
    }
    g.finish();
}

fn convs(c: &mut Criterion) {
    let dev = backend::cpu();
    let mut g = c.benchmark_group("conv_resnet20_batch128");
    for (name, cin, cout, size, stride) in [
        ("16x32x32", 16, 16, 32, 1),
        ("32x16x16", 32, 32, 16, 1),
        ("64x8x8", 64, 64, 8, 1),
        ("16to32_s2", 16, 32, 32, 2),
    ] {
        let x = data(&[128, cin, size, size]);
        let w = data(&[cout, cin, 3, 3]);
        let spec = ConvSpec { stride, pad: 1, groups: 1 };
        let y = dev.conv2d_forward(&x, &w, spec).unwrap();
        let macs = (y.numel() * cin * 9) as u64;
        g.throughput(Throughput::Elements(2 * macs));
        g.bench_function(format!("{name}/forward"), |b| b.iter(|| dev.conv2d_forward(&x, &w, spec).unwrap()));
        g.bench_function(format!("{name}/backward_data"), |b| {
            b.iter(|| dev.conv2d_backward_data(&y, &w, x.dims(), spec).unwrap())
        });
        g.bench_function(format!("{name}/backward_weight"), |b| {
            b.iter(|| dev.conv2d_backward_weight(&y, &x, w.dims(), spec).unwrap())
        });
    }
    g.finish();
}

/// ResNet's stem max pool (3x3, stride 2, pad 1 on 64 x 112 x 112 maps).
fn pools(c: &mut Criterion) {
    let dev = backend::cpu();
    let mut g = c.benchmark_group("maxpool_resnet_stem");
    for batch in [1usize, 32] {
        let x = data(&[batch, 64, 112, 112]);
        g.throughput(Throughput::Elements(x.numel() as u64));
        g.bench_function(format!("b{batch}/forward"), |b| b.iter(|| dev.maxpool_forward(&x, 3, 2, 1).unwrap()));
    }
    for batch in [1usize, 8] {
        let x = data(&[batch, 64, 112, 112]);
        let dy = data(&[batch, 64, 56, 56]);
        g.throughput(Throughput::Elements(x.numel() as u64));
        g.bench_function(format!("b{batch}/backward"), |b| b.iter(|| dev.maxpool_backward(&dy, &x, 3, 2, 1).unwrap()));
    }
    g.finish();
}

fn resnet20(c: &mut Criterion) {
    let dev = backend::cpu();
    let mut m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &dev, 0).unwrap();
    let mut g = c.benchmark_group("resnet20");
    g.throughput(Throughput::Elements(64));
    let x = data(&[64, 3, 32, 32]);
    g.bench_function("inference_batch64", |b| {
        b.iter(|| m.graph.forward(&dev, x.try_clone().unwrap(), Mode::Eval).unwrap())
    });
    g.throughput(Throughput::Elements(128));
    let xt = data(&[128, 3, 32, 32]);
    let labels: Vec<u32> = (0..128).map(|i| i % 10).collect();
    let mut opt = Sgd::new(0.9, 5e-4, false).unwrap();
    g.bench_function("train_step_batch128", |b| {
        b.iter(|| {
            let trace = m.graph.forward_train(&dev, xt.try_clone().unwrap()).unwrap();
            let ce = dev.softmax_cross_entropy(trace.output(), &labels).unwrap();
            m.graph.zero_grad();
            m.graph.backward(&dev, trace, ce.dlogits).unwrap();
            opt.step(&dev, &mut m.graph, 0.01).unwrap();
        })
    });
    // One search candidate: gather the kept channels, forward 256 images, feature MSE.
    let images = data(&[256, 3, 32, 32]);
    let pruner = Pruner::new(&m, GroupScope::Inner, Rank::L1).unwrap();
    let scorer = Scorer::new(&mut m, &dev, &images, &pruner.groups, RewardConfig::default()).unwrap();
    let kept: Vec<usize> = pruner.cost.channels.iter().map(|c| c / 2).collect();
    let keep = pruner.keep_indices(&kept).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("search_candidate_256_images", |b| {
        b.iter(|| {
            let mut cand = lfgcl::prune::apply::apply(&m, &dev, &pruner.groups, &keep).unwrap();
            scorer.score(&mut cand, &keep).unwrap()
        })
    });
    g.finish();
}

/// The cost of one short parallel region (4 tasks of about 0.1 us: the hand-off dominates; a
/// batch-1 convolution's regions last a few microseconds) run from a worker of a 2-thread pool,
/// as the CLI runs its commands: on the fork-join team the batch-1 convolutions use, and on rayon.
fn fork_join(c: &mut Criterion) {
    use lfgcl::backend::cpu::team;
    use rayon::prelude::*;
    use std::hint::black_box;
    use std::time::Instant;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let data: Vec<f32> = (0..4 * 128).map(|i| i as f32).collect();
    let task = |i: usize| {
        black_box(data[i * 128..(i + 1) * 128].iter().sum::<f32>());
    };
    let mut g = c.benchmark_group("fork_join_4_tasks");
    g.bench_function("team", |b| {
        b.iter_custom(|iters| {
            pool.install(|| {
                let t = Instant::now();
                for _ in 0..iters {
                    team::for_each(4, task);
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("rayon", |b| {
        b.iter_custom(|iters| {
            pool.install(|| {
                let t = Instant::now();
                for _ in 0..iters {
                    (0..4usize).into_par_iter().for_each(task);
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = gemm, convs, pools, resnet20, fork_join
}
criterion_main!(benches);
