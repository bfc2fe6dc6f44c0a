//! Each CPU convolution path per ResNet-56 layer shape, batch 1 and 64: the exact im2col + GEMM
//! path (the reference) against the Winograd kernels, forward and backward-data, the direct
//! AVX-512 forward (where the CPU has it), plus the im2col backward-weight. Throughput counts
//! the direct convolution's FLOPs (2 x MACs), so the paths compare on the same scale.
//!
//! `cargo bench --bench conv` (filter with e.g. `-- 64x8x8`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lfgcl::backend::cpu::winograd::{self, WinogradTile};
use lfgcl::backend::cpu::{conv, direct};
use lfgcl::backend::{ConvShape, ConvSpec};
use std::hint::black_box;
use std::time::Duration;

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) % 251) as f32 / 251.0) - 0.5).collect()
}

fn convs(c: &mut Criterion) {
    // (name, c_in, c_out, input size, stride): ResNet-56's stem, three stages, two downsamplings.
    let layers = [
        ("stem_3to16x32", 3, 16, 32, 1),
        ("16x32x32", 16, 16, 32, 1),
        ("32x16x16", 32, 32, 16, 1),
        ("64x8x8", 64, 64, 8, 1),
        ("16to32_s2_32", 16, 32, 32, 2),
        ("32to64_s2_16", 32, 64, 16, 2),
    ];
    for batch in [1usize, 64] {
        for (name, cin, cout, size, stride) in layers {
            let s =
                ConvShape::new(&[batch, cin, size, size], &[cout, cin, 3, 3], ConvSpec { stride, pad: 1, groups: 1 })
                    .unwrap();
            let x = data(batch * cin * size * size, 1);
            let w = data(cout * cin * 9, 2);
            let dy = data(batch * cout * s.out_h * s.out_w, 3);
            let mut g = c.benchmark_group(format!("conv_b{batch}_{name}"));
            g.throughput(Throughput::Elements(2 * s.macs()));
            g.bench_function("forward/im2col", |b| b.iter(|| conv::forward(black_box(&x), &w, &s)));
            g.bench_function("backward_data/im2col", |b| b.iter(|| conv::backward_data(black_box(&dy), &w, &s)));
            g.bench_function("backward_weight/im2col", |b| b.iter(|| conv::backward_weight(black_box(&dy), &x, &s)));
            if direct::supports(&s) {
                g.bench_function("forward/direct", |b| b.iter(|| direct::forward(black_box(&x), &w, &s, None)));
            }
            if winograd::supports(&s) {
                for (tile, tag) in [(WinogradTile::F2, "winograd_f2"), (WinogradTile::F4, "winograd_f4")] {
                    g.bench_function(format!("forward/{tag}"), |b| {
                        b.iter(|| winograd::forward(black_box(&x), &w, &s, tile))
                    });
                    g.bench_function(format!("backward_data/{tag}"), |b| {
                        b.iter(|| winograd::backward_data(black_box(&dy), &w, &s, tile))
                    });
                }
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = convs
}
criterion_main!(benches);
