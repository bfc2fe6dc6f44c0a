//! Each CPU convolution path per ResNet-56 layer shape, batch 1 and 64: the exact im2col + GEMM
//! path (the reference) against the Winograd kernels, forward and backward-data, the direct
//! AVX-512 or AVX2 forward (where the CPU has one), plus the im2col backward-weight. Throughput counts
//! the direct convolution's FLOPs (2 x MACs), so the paths compare on the same scale.
//!
//! `cargo bench --bench conv` (filter with e.g. `-- 64x8x8`).
//!
//! The `dw_` and `pw_` groups: MobileNetV2's depthwise 3x3 layers (the vectorised kernel against
//! the exact per-group im2col + GEMM path) and ResNet-50's 1x1 layers (GEMM in place against
//! im2col + GEMM; with the eval epilogue, the AVX2 1x1 kernel against the GEMM and its pass),
//! batch 1 and 32. `LFGCL_CPU_ISA=avx2` (or `portable`) limits the
//! hand-vectorised kernels to AVX2 (plain arrays) for the run, as it does for every command. Their outputs go back to the
//! buffer pool, as a tensor's do when dropped, so the timings leave out page faults.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lfgcl::backend::cpu::winograd::{self, WinogradTile};
use lfgcl::backend::cpu::{conv, depthwise, direct, isa, pointwise};
use lfgcl::backend::{ConvShape, ConvSpec};
use lfgcl::tensor::pool;
use std::hint::black_box;
use std::time::Duration;

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) % 251) as f32 / 251.0) - 0.5).collect()
}

fn convs(c: &mut Criterion) {
    // (name, c_in, c_out, input size, stride, kernel side; pad side / 2): ResNet-56's stem, three
    // stages, two downsamplings.
    let cifar = [
        ("stem_3to16x32", 3, 16, 32, 1, 3),
        ("16x32x32", 16, 16, 32, 1, 3),
        ("32x16x16", 32, 32, 16, 1, 3),
        ("64x8x8", 64, 64, 8, 1, 3),
        ("16to32_s2_32", 16, 32, 32, 2, 3),
        ("32to64_s2_16", 32, 64, 16, 2, 3),
    ];
    // ResNet-50's 3x3 layers at 224x224: the strided ones, layer4's 7x7 maps (7 of a direct
    // row's 16 lanes) and the stride-1 layers of the other stages.
    let resnet50 = [
        ("r50_128_s2_56", 128, 128, 56, 2, 3),
        ("r50_256_s2_28", 256, 256, 28, 2, 3),
        ("r50_512_s2_14", 512, 512, 14, 2, 3),
        ("r50_512x7x7", 512, 512, 7, 1, 3),
        ("r50_64x56x56", 64, 64, 56, 1, 3),
        ("r50_128x28x28", 128, 128, 28, 1, 3),
        ("r50_256x14x14", 256, 256, 14, 1, 3),
    ];
    // The 224x224 stems: MobileNetV2's 3x3 and ResNet's 7x7 (3 input channels, stride 2).
    let mobilenet = [("mbv2_stem_3to32_s2_224", 3, 32, 224, 2, 3), ("r50_stem_7x7_s2_224", 3, 64, 224, 2, 7)];
    let sets = [
        (1usize, &cifar[..]),
        // Layer4's 7x7 maps at batch 8 too: where Winograd's transformed filters outweigh its tiles.
        (8, &resnet50[3..4]),
        (64, &cifar[..]),
        (1, &resnet50[..]),
        (32, &resnet50[..]),
        (1, &mobilenet[..]),
        (32, &mobilenet[..]),
    ];
    for (batch, layers) in sets {
        for &(name, cin, cout, size, stride, k) in layers {
            let spec = ConvSpec { stride, pad: k / 2, groups: 1 };
            let s = ConvShape::new(&[batch, cin, size, size], &[cout, cin, k, k], spec).unwrap();
            let x = data(batch * cin * size * size, 1);
            let w = data(cout * cin * k * k, 2);
            let dy = data(batch * cout * s.out_h * s.out_w, 3);
            let mut g = c.benchmark_group(format!("conv_b{batch}_{name}"));
            g.throughput(Throughput::Elements(2 * s.macs()));
            g.bench_function("forward/im2col", |b| b.iter(|| conv::forward(black_box(&x), &w, &s)));
            g.bench_function("backward_data/im2col", |b| b.iter(|| conv::backward_data(black_box(&dy), &w, &s)));
            g.bench_function("backward_weight/im2col", |b| b.iter(|| conv::backward_weight(black_box(&dy), &x, &s)));
            if direct::supports(&s) {
                g.bench_function("forward/direct", |b| b.iter(|| direct::forward(black_box(&x), &w, &s, None)));
                if isa::Isa::detected() >= isa::Isa::Avx512 {
                    g.bench_function("forward/direct_channels", |b| {
                        b.iter(|| direct::forward_channels(black_box(&x), &w, Some(u64::MAX), &s, None))
                    });
                }
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
                // Inference: the filter transform kept by the weights' stamp, as the backend does.
                g.bench_function("forward/winograd_f4_cached", |b| {
                    b.iter(|| winograd::forward_stamped(black_box(&x), &w, Some(u64::MAX), &s, WinogradTile::F4, None))
                });
                g.bench_function("backward_weight/winograd_f2", |b| {
                    b.iter(|| winograd::backward_weight(black_box(&dy), &x, &s, WinogradTile::F2))
                });
            }
            g.finish();
        }
    }
}

fn depthwise_convs(c: &mut Criterion) {
    // (name, channels, input size, stride): MobileNetV2's depthwise layers at 112, 56, 28, 14 and
    // 7. `fast` is the in-place kernel on AVX2 and AVX-512 (the interleaved one on small maps in
    // the portable build), `planes` the plane kernel beside it.
    let layers = [
        ("32x112_s1", 32, 112, 1),
        ("96x112_s2", 96, 112, 2),
        ("144x56_s1", 144, 56, 1),
        ("144x56_s2", 144, 56, 2),
        ("192x28_s1", 192, 28, 1),
        ("192x28_s2", 192, 28, 2),
        ("384x14_s1", 384, 14, 1),
        ("576x14_s2", 576, 14, 2),
        ("960x7_s1", 960, 7, 1),
    ];
    for batch in [1usize, 32] {
        for (name, ch, size, stride) in layers {
            let spec = ConvSpec { stride, pad: 1, groups: ch };
            let s = ConvShape::new(&[batch, ch, size, size], &[ch, 1, 3, 3], spec).unwrap();
            let x = data(batch * ch * size * size, 1);
            let w = data(ch * 9, 2);
            let dy = data(batch * ch * s.out_h * s.out_w, 3);
            let mut g = c.benchmark_group(format!("dw_b{batch}_{name}"));
            g.throughput(Throughput::Elements(2 * s.macs()));
            g.bench_function("forward/fast", |b| {
                b.iter(|| pool::give(depthwise::forward(black_box(&x), &w, &s, None)))
            });
            // MobileNetV2's eval layer: folded batch norm and ReLU6 in the kernel's registers.
            let (scale, shift) = (data(ch, 4), data(ch, 5));
            let epi = conv::Epilogue { scale: &scale, shift: &shift, residual: None, relu: false, relu6: true };
            g.bench_function("forward_bn_relu6/fast", |b| {
                b.iter(|| pool::give(depthwise::forward(black_box(&x), &w, &s, Some(&epi))))
            });
            g.bench_function("forward_bn_relu6/planes", |b| {
                b.iter(|| pool::give(depthwise::forward_planes(black_box(&x), &w, &s, Some(&epi))))
            });
            g.bench_function("backward_data/fast", |b| {
                b.iter(|| pool::give(depthwise::backward_data(black_box(&dy), &w, &s)))
            });
            g.bench_function("backward_weight/fast", |b| {
                b.iter(|| pool::give(depthwise::backward_weight(black_box(&dy), &x, &s)))
            });
            if batch == 1 {
                g.bench_function("forward/exact", |b| {
                    b.iter(|| pool::give(conv::forward_grouped(black_box(&x), &w, &s, None)))
                });
                g.bench_function("backward_data/exact", |b| {
                    b.iter(|| pool::give(conv::backward_data_grouped(black_box(&dy), &w, &s)))
                });
                g.bench_function("backward_weight/exact", |b| {
                    b.iter(|| pool::give(conv::backward_weight_grouped(black_box(&dy), &x, &s)))
                });
            }
            g.finish();
        }
    }
}

fn pointwise_convs(c: &mut Criterion) {
    // (name, c_in, c_out, input size, stride): ResNet-50's stage-1 expand and reduce, the
    // stride-2 downsample projection, and MobileNetV2's expansions and projections at 112, 56, 14
    // and 7.
    let layers = [
        ("64to256x56", 64, 256, 56, 1),
        ("256to64x56", 256, 64, 56, 1),
        ("256to512x56_s2", 256, 512, 56, 2),
        ("16to96x112", 16, 96, 112, 1),
        ("24to144x56", 24, 144, 56, 1),
        ("32to16x112", 32, 16, 112, 1),
        ("96to24x56", 96, 24, 56, 1),
        ("144to24x56", 144, 24, 56, 1),
        ("64to384x14", 64, 384, 14, 1),
        ("384to64x14", 384, 64, 14, 1),
        ("160to960x7", 160, 960, 7, 1),
        ("960to160x7", 960, 160, 7, 1),
    ];
    for batch in [1usize, 32] {
        for (name, cin, cout, size, stride) in layers {
            let spec = ConvSpec { stride, pad: 0, groups: 1 };
            let s = ConvShape::new(&[batch, cin, size, size], &[cout, cin, 1, 1], spec).unwrap();
            let x = data(batch * cin * size * size, 1);
            let w = data(cout * cin, 2);
            let dy = data(batch * cout * s.out_h * s.out_w, 3);
            let mut g = c.benchmark_group(format!("pw_b{batch}_{name}"));
            g.throughput(Throughput::Elements(2 * s.macs()));
            g.bench_function("forward/gemm", |b| b.iter(|| pool::give(conv::forward(black_box(&x), &w, &s))));
            g.bench_function("backward_data/gemm", |b| {
                b.iter(|| pool::give(conv::backward_data(black_box(&dy), &w, &s)))
            });
            g.bench_function("backward_weight/gemm", |b| {
                b.iter(|| pool::give(conv::backward_weight(black_box(&dy), &x, &s)))
            });
            // The eval forward with its batch norm and ReLU6 fused: the 1x1 kernel
            // against the `gemm` crate and its epilogue pass.
            let (scale, shift) = (data(cout, 4), data(cout, 5));
            let epi = conv::Epilogue { scale: &scale, shift: &shift, residual: None, relu: false, relu6: true };
            g.bench_function("forward_bn_relu6/gemm", |b| {
                b.iter(|| pool::give(conv::forward_fused(black_box(&x), &w, &s, Some(&epi))))
            });
            if pointwise::available(&s) {
                g.bench_function("forward_bn_relu6/pointwise", |b| {
                    b.iter(|| pool::give(pointwise::forward(black_box(&x), &w, &s, Some(&epi))))
                });
            }
            if conv::is_pointwise(&s) {
                g.bench_function("forward/im2col", |b| {
                    b.iter(|| pool::give(conv::forward_fused_im2col(black_box(&x), &w, &s, None)))
                });
                g.bench_function("backward_data/im2col", |b| {
                    b.iter(|| pool::give(conv::backward_data_im2col(black_box(&dy), &w, &s)))
                });
                g.bench_function("backward_weight/im2col", |b| {
                    b.iter(|| pool::give(conv::backward_weight_im2col(black_box(&dy), &x, &s)))
                });
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = convs, depthwise_convs, pointwise_convs
}
criterion_main!(benches);
