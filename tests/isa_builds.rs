//! Every hand-vectorised CPU kernel is built for AVX-512 (16 lanes), AVX2 (8) and plain arrays,
//! and `--cpu-isa` / `LFGCL_CPU_ISA` / `isa::set_isa_limit` chooses among them for the whole
//! process. The builds must give the same bits: every lane operation is the same IEEE operation
//! in each, in the same order. Checked kernel by kernel (Winograd forward with the fused
//! epilogue, backward-data and backward-weight; the depthwise kernels), then on whole nets
//! (MobileNetV2 and a CIFAR ResNet, eval and training-mode forward), which reach the direct and
//! interleaved depthwise kernels and the batch-norm reductions too.
//!
//! Its own test binary: the limit is process-wide.

use lfgcl::backend::cpu::conv::Epilogue;
use lfgcl::backend::cpu::isa::{self, Isa};
use lfgcl::backend::cpu::winograd::{self, WinogradTile};
use lfgcl::backend::cpu::{depthwise, direct};
use lfgcl::backend::{self, ConvShape, ConvSpec};
use lfgcl::models::{Arch, Model};
use lfgcl::nn::Mode;
use lfgcl::Tensor;

#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// The builds this CPU can run, widest first.
fn builds() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().filter(|&i| i <= Isa::detected()).collect()
}

/// `f` with the kernels limited to `limit`, the limit lifted after; one at a time, as the tests
/// of this binary run side by side and the limit is process-wide.
fn under<T>(limit: Isa, f: impl FnOnce() -> T) -> T {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    isa::set_isa_limit(limit);
    assert_eq!(isa::isa(), limit.min(Isa::detected()), "the limit takes");
    let out = f();
    isa::set_isa_limit(Isa::Avx512);
    out
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
}

fn run(s: &ConvShape, tile: WinogradTile, limit: Isa) -> Outputs {
    let (n, c, k, hw) = (s.n, s.c_in, s.c_out, s.h * s.w);
    let x = pseudo(n * c * hw, 1);
    let w = pseudo(k * c * 9, 2);
    let dy = pseudo(n * k * hw, 3);
    let (scale, shift, residual) = (pseudo(k, 4), pseudo(k, 5), pseudo(n * k * hw, 6));
    let epi = Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: true, relu6: false };
    under(limit, || {
        (
            winograd::forward(&x, &w, s, tile),
            winograd::forward_fused(&x, &w, s, tile, Some(&epi)),
            winograd::backward_data(&dy, &w, s, tile),
            winograd::backward_weight(&dy, &x, s, tile),
        )
    })
}

#[test]
fn every_transform_build_gives_the_same_bits() {
    for &(n, c, h, k) in &[(1, 16, 32, 32), (3, 32, 16, 16), (1, 24, 8, 32), (3, 13, 9, 16), (1, 16, 7, 24)] {
        let s = ConvShape::new(&[n, c, h, h], &[k, c, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let auto = run(&s, tile, Isa::Avx512);
            assert!(auto.0.iter().chain(&auto.3).all(|v| v.is_finite()) && auto.0.iter().any(|&v| v != 0.0));
            for lanes in [Isa::Avx2, Isa::Portable] {
                let other = run(&s, tile, lanes);
                assert!(same(&auto.0, &other.0), "{tile:?} {s:?}: forward differs under {lanes:?}");
                assert!(same(&auto.1, &other.1), "{tile:?} {s:?}: fused forward differs under {lanes:?}");
                assert!(same(&auto.2, &other.2), "{tile:?} {s:?}: backward-data differs under {lanes:?}");
                assert!(same(&auto.3, &other.3), "{tile:?} {s:?}: backward-weight differs under {lanes:?}");
            }
        }
    }
}

/// The comparison above can fail: a one-ulp change to one weight changes the forward's bits.
#[test]
fn the_bit_comparison_is_not_vacuous() {
    let s = ConvShape::new(&[1, 16, 8, 8], &[16, 16, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
    let x = pseudo(16 * 64, 1);
    let mut w = pseudo(16 * 16 * 9, 2);
    // Under the lock like every kernel call here: another test's limit would otherwise change
    // the build between the kernel's choice and its run (seen on an AVX-512 machine).
    let a = under(Isa::detected(), || winograd::forward(&x, &w, &s, WinogradTile::F2));
    w[5] = f32::from_bits(w[5].to_bits() + 1);
    let b = under(Isa::detected(), || winograd::forward(&x, &w, &s, WinogradTile::F2));
    assert!(a.iter().zip(&b).any(|(p, q)| p.to_bits() != q.to_bits()));
}

/// The depthwise kernels (plane and channel-interleaved forward, with and without the epilogue,
/// backward-data, backward-weight) at MobileNetV2 shapes and odd ones, under every build.
#[test]
fn every_depthwise_build_gives_the_same_bits() {
    for &(n, c, h, w, stride) in &[
        (1, 32, 112, 112, 1),
        (1, 144, 56, 56, 2),
        (2, 7, 10, 33, 2),
        (2, 6, 7, 7, 1),
        (1, 960, 7, 7, 1),
        (1, 576, 14, 14, 2),
        (2, 23, 13, 11, 2),
    ] {
        let s = ConvShape::new(&[n, c, h, w], &[c, 1, 3, 3], ConvSpec { stride, pad: 1, groups: c }).unwrap();
        let x = pseudo(n * c * h * w, 7);
        let wt = pseudo(c * 9, 8);
        let dy = pseudo(n * c * s.out_h * s.out_w, 9);
        let (scale, shift) = (pseudo(c, 10), pseudo(c, 11));
        let epi = Epilogue { scale: &scale, shift: &shift, residual: None, relu: false, relu6: true };
        let outputs = |limit| {
            under(limit, || {
                [
                    depthwise::forward(&x, &wt, &s, None),
                    depthwise::forward(&x, &wt, &s, Some(&epi)),
                    depthwise::backward_data(&dy, &wt, &s),
                    depthwise::backward_weight(&dy, &x, &s),
                ]
            })
        };
        let widest = outputs(Isa::detected());
        for limit in builds() {
            let other = outputs(limit);
            for (i, (a, b)) in widest.iter().zip(&other).enumerate() {
                assert!(same(a, b), "{s:?}: output {i} differs under {limit:?}");
            }
        }
    }
}

/// Whole nets under every build: MobileNetV2 (direct stem, depthwise on 16- to 4-pixel maps, 1x1
/// kernel and GEMMs, ReLU6 epilogues) and a CIFAR ResNet (Winograd, direct strided layers), the
/// eval forward with its fused epilogues and the training-mode forward with its batch
/// statistics. The limit reaches them: the portable build runs no AVX2 kernel, so it is not the
/// same code.
///
/// The direct kernel's channel limit is pinned to AVX2's for the comparison: AVX-512 takes the
/// kernel up to 64 input channels and AVX2 up to 16 (`direct::max_c_in`), so unpinned, the
/// ResNet's 32 -> 64 layer runs the direct kernel under one build and im2col + GEMM under the
/// other, a different order of sums. That choice is checked on its own below.
#[test]
fn whole_nets_give_the_same_bits_under_every_build() {
    let dev = backend::cpu();
    let logits = |arch: &Arch, pixels: &[f32], limit| {
        let [n, c, h, w] = [3, arch.in_channels, arch.input_size, arch.input_size];
        let x = || Tensor::from_vec(&[n, c, h, w], pixels.to_vec()).unwrap();
        under(limit, || {
            let mut m = Model::new(arch.clone(), &dev, 5).unwrap();
            let eval = m.graph.forward(&dev, x(), Mode::Eval).unwrap().to_vec().unwrap();
            let train = m.graph.forward(&dev, x(), Mode::Train).unwrap().to_vec().unwrap();
            (eval, train)
        })
    };
    for (model, c, size) in [("mobilenet_v2_0.5", 3, 64), ("resnet20", 1, 28)] {
        let arch = Arch::new(model, c, size, 10).unwrap();
        let pixels = pseudo(3 * c * size * size, 31);
        direct::pin_max_c_in(Some(direct::max_c_in(Isa::Avx2)));
        let widest = logits(&arch, &pixels, Isa::detected());
        let others: Vec<_> = builds().into_iter().map(|limit| (limit, logits(&arch, &pixels, limit))).collect();
        direct::pin_max_c_in(None);
        assert!(widest.0.iter().chain(&widest.1).all(|v| v.is_finite()), "{model}: non-finite logits");
        for (limit, other) in others {
            assert!(same(&widest.0, &other.0), "{model}: eval logits differ under {limit:?}");
            assert!(same(&widest.1, &other.1), "{model}: training-mode logits differ under {limit:?}");
        }
    }
    // Unpinned, an AVX-512 machine's 32-channel strided layer takes the direct kernel and the AVX2
    // build's takes im2col: the same logits up to rounding, not the same bits.
    if Isa::detected() == Isa::Avx512 {
        let arch = Arch::new("resnet20", 1, 28, 10).unwrap();
        let pixels = pseudo(3 * 28 * 28, 31);
        let (wide, narrow) = (logits(&arch, &pixels, Isa::Avx512), logits(&arch, &pixels, Isa::Avx2));
        let top = wide.0.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in wide.0.iter().zip(&narrow.0) {
            assert!((a - b).abs() <= 1e-5 * top, "resnet20 eval logits {a} and {b} under AVX-512 and AVX2");
        }
    }
    // The conv path's own switch: under the portable build the direct kernel is not taken.
    let stem = ConvShape::new(&[1, 3, 32, 32], &[16, 3, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
    if Isa::detected() >= Isa::Avx2 {
        assert!(under(Isa::detected(), || direct::preferred(&stem)));
        assert!(!under(Isa::Portable, || direct::preferred(&stem)));
    }
}

/// `denormals::flush_to_zero` (what the `lfgcl` command does first): subnormal inputs and
/// results become zero on the thread and on every thread it starts afterwards, a rayon pool's
/// included, so that all of a command's threads compute alike. On a fresh thread the IEEE
/// default holds. Its own thread: the setting is per thread.
#[test]
fn flushed_denormals_reach_the_threads_started_after() {
    use lfgcl::backend::cpu::denormals;
    use std::hint::black_box;
    std::thread::spawn(|| {
        let tiny = black_box(1e-39f32); // subnormal: below f32::MIN_POSITIVE
        assert!(tiny > 0.0 && tiny < f32::MIN_POSITIVE);
        assert!(!denormals::flushing());
        assert_eq!(black_box(tiny) * black_box(1.0f32), tiny, "IEEE by default");
        if !denormals::flush_to_zero() {
            println!("skipped: not an x86_64 CPU");
            return;
        }
        assert!(denormals::flushing());
        assert_eq!(black_box(tiny) * black_box(1.0f32), 0.0, "subnormal input read as zero");
        assert_eq!(black_box(1e-30f32) * black_box(1e-10f32), 0.0, "subnormal result flushed");
        let child = std::thread::spawn(move || (denormals::flushing(), black_box(tiny) * black_box(1.0f32)));
        assert_eq!(child.join().unwrap(), (true, 0.0), "a thread started after inherits it");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let seen = pool.broadcast(|_| (denormals::flushing(), black_box(tiny) * black_box(1.0f32)));
        assert!(seen.iter().all(|&s| s == (true, 0.0)), "rayon's threads: {seen:?}");
    })
    .join()
    .unwrap();
}
