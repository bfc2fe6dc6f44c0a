//! Parity of the fast CPU convolution kernels (Winograd F(2x2,3x3) and F(4x4,3x3), and the
//! direct AVX-512 / AVX2 kernel for the stem, strided and tiny-map layers) against the exact paths, over ResNet-20/56 shapes and odd ones (batch 1 and 3, channel counts that are not
//! multiples of the 8-tile lanes, odd and non-square maps, 1x1 and 2x2 maps).
//!
//! # Error measure
//!
//! Per output element, `|fast - exact| / sum |x| |w|`, the sum taken over that element's window
//! (`sum |x||w|` is the convolution of `|x|` with `|w|`). A sum of products in any order has a
//! rounding error bounded by a small multiple of `eps * sum |x||w|`; Winograd adds the error of
//! its transforms, whose coefficients grow with the tile size (F(4x4) uses 4, 5 and 8 in `B^T`
//! and `A^T`), so the bound does too. Measured worst cases here: F(2x2) 2.5e-7, F(4x4) 3.0e-6
//! (im2col + GEMM: ~1e-7). Stated bounds:
//! - F(2x2,3x3): 2e-6 (about 16 f32 ulps);
//! - F(4x4,3x3): 3e-5;
//! - direct: 1e-6 (a plain sum of products, as im2col + GEMM).
//!
//! The exact reference is the f64 direct loop for the forward pass and the f32 im2col path for
//! backward-data (itself within ~1e-7 of exact on these sizes).

use lfgcl::backend::cpu::winograd::{self, WinogradTile};
use lfgcl::backend::cpu::{conv, direct};
use lfgcl::backend::{self, BnParams, ConvShape, ConvSpec};
use lfgcl::Tensor;

#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

const F2_BOUND: f64 = 2e-6;
const F4_BOUND: f64 = 3e-5;
const DIRECT_BOUND: f64 = 1e-6;

/// `(n, c_in, h, w, c_out)` of 3x3 stride-1 pad-1 convolutions.
fn cases() -> Vec<(usize, usize, usize, usize, usize)> {
    vec![
        // ResNet-20/56: stem and the three stages, batch 1 and 3.
        (1, 3, 32, 32, 16),
        (3, 16, 32, 32, 16),
        (1, 16, 32, 32, 16),
        (3, 32, 16, 16, 32),
        (1, 32, 16, 16, 32),
        (3, 64, 8, 8, 64),
        (1, 64, 8, 8, 64),
        // More images than one block holds.
        (9, 16, 16, 16, 8),
        // Odd: channels not a multiple of 8, odd and non-square maps, tiny maps.
        (3, 5, 7, 7, 13),
        (1, 13, 9, 5, 3),
        (3, 3, 1, 1, 5),
        (1, 7, 2, 2, 9),
        (3, 17, 3, 11, 6),
        (1, 1, 6, 6, 1),
    ]
}

fn shape(n: usize, c: usize, h: usize, w: usize, k: usize) -> ConvShape {
    ConvShape::new(&[n, c, h, w], &[k, c, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Worst `|got - want| / scale` over the elements (scale floored at a tiny value).
fn worst(got: &[f32], want: &[f32], scale: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| (*g as f64 - *w as f64).abs() / (*s as f64).max(1e-30))
        .fold(0.0, f64::max)
}

/// `dW[k][c][r][t] = sum over images and outputs of dy * x` (3x3, stride 1, pad 1), in f64.
fn backward_weight_reference(dy: &[f32], x: &[f32], s: &ConvShape) -> Vec<f32> {
    let mut dw = vec![0.0f32; s.c_out * s.c_in * 9];
    for k in 0..s.c_out {
        for c in 0..s.c_in {
            for r in 0..3 {
                for t in 0..3 {
                    let mut acc = 0.0f64;
                    for n in 0..s.n {
                        for p in 0..s.out_h {
                            for q in 0..s.out_w {
                                let (ih, iw) = ((p + r) as isize - 1, (q + t) as isize - 1);
                                if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize {
                                    continue;
                                }
                                let g = dy[((n * s.c_out + k) * s.out_h + p) * s.out_w + q] as f64;
                                acc += g * x[((n * s.c_in + c) * s.h + ih as usize) * s.w + iw as usize] as f64;
                            }
                        }
                    }
                    dw[((k * s.c_in + c) * 3 + r) * 3 + t] = acc as f32;
                }
            }
        }
    }
    dw
}

fn check_tile(tile: WinogradTile, bound: f64) {
    let mut overall = (0.0f64, 0.0f64, 0.0f64);
    for (i, &(n, c, h, w, k)) in cases().iter().enumerate() {
        let s = shape(n, c, h, w, k);
        let x = pseudo(n * c * h * w, 10 + i as u64);
        let wt = pseudo(k * c * 9, 100 + i as u64);
        let dy = pseudo(n * k * h * w, 1000 + i as u64);

        let fast = winograd::forward(&x, &wt, &s, tile);
        let exact = conv::forward_reference(&x, &wt, &s);
        let scale = conv::forward_reference(&abs(&x), &abs(&wt), &s);
        let e = worst(&fast, &exact, &scale);
        assert!(e <= bound, "{tile:?} forward {s:?}: error {e:e} > {bound:e}");

        let fast_dx = winograd::backward_data(&dy, &wt, &s, tile);
        let exact_dx = conv::backward_data(&dy, &wt, &s);
        let scale_dx = conv::backward_data(&abs(&dy), &abs(&wt), &s);
        let e_dx = worst(&fast_dx, &exact_dx, &scale_dx);
        assert!(e_dx <= bound, "{tile:?} backward-data {s:?}: error {e_dx:e} > {bound:e}");

        let fast_dw = winograd::backward_weight(&dy, &x, &s, tile);
        let exact_dw = backward_weight_reference(&dy, &x, &s);
        // The transforms mix a filter's nine taps, so each tap's error is measured against the
        // largest `sum |dy| |x|` of its filter (on a 2x2 map a corner tap sums one product).
        let mut scale_dw = backward_weight_reference(&abs(&dy), &abs(&x), &s);
        for filter in scale_dw.chunks_exact_mut(9) {
            let top = filter.iter().cloned().fold(0.0f32, f32::max);
            filter.fill(top);
        }
        let e_dw = worst(&fast_dw, &exact_dw, &scale_dw);
        assert!(e_dw <= bound, "{tile:?} backward-weight {s:?}: error {e_dw:e} > {bound:e}");
        overall = (overall.0.max(e), overall.1.max(e_dx), overall.2.max(e_dw));
    }
    println!(
        "{tile:?}: worst forward error {:e}, backward-data {:e}, backward-weight {:e} (bound {bound:e})",
        overall.0, overall.1, overall.2
    );
}

#[test]
fn winograd_f2_matches_exact_within_bound() {
    check_tile(WinogradTile::F2, F2_BOUND);
}

#[test]
fn winograd_f4_matches_exact_within_bound() {
    check_tile(WinogradTile::F4, F4_BOUND);
}

/// The bound is not vacuous: a wrong filter (one tap changed) breaks it.
#[test]
fn parity_check_detects_a_wrong_result() {
    let s = shape(2, 8, 8, 8, 8);
    let x = pseudo(2 * 8 * 64, 1);
    let mut wt = pseudo(8 * 8 * 9, 2);
    let exact = conv::forward_reference(&x, &wt, &s);
    let scale = conv::forward_reference(&abs(&x), &abs(&wt), &s);
    wt[4] += 1e-3;
    let fast = winograd::forward(&x, &wt, &s, WinogradTile::F2);
    assert!(worst(&fast, &exact, &scale) > F4_BOUND);
}

/// No result depends on the thread count or on scheduling: 1, 2 and 3 threads agree bit for bit.
#[test]
fn winograd_is_bit_reproducible_across_thread_counts() {
    for &(n, c, h, w, k) in &[(1, 16, 32, 32, 16), (1, 64, 8, 8, 64), (5, 13, 9, 9, 7)] {
        let s = shape(n, c, h, w, k);
        let x = pseudo(n * c * h * w, 3);
        let wt = pseudo(k * c * 9, 4);
        let dy = pseudo(n * k * h * w, 7);
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    (
                        winograd::forward(&x, &wt, &s, tile),
                        winograd::backward_data(&dy, &wt, &s, tile),
                        winograd::backward_weight(&dy, &x, &s, tile),
                    )
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(run(threads) == one, "{tile:?} {s:?}: {threads} threads differ from 1");
            }
        }
    }
}

/// One image's GEMM is split by output channels over the threads (its epilogue with it), so a
/// batch-1 forward must not depend on the thread count: 1x1 convolutions at the sizes of
/// MobileNetV2 and ResNet-50 (channel counts that leave a short last block), an im2col layer
/// and a strided 1x1, with and without the fused epilogue, agree bit for bit on 1, 2 and 3
/// threads.
#[test]
fn batch1_gemm_convs_are_bit_reproducible_across_thread_counts() {
    // (c_in, h, w, c_out, kernel, stride, pad)
    let cases = [
        (16, 40, 36, 96, 1, 1, 0),
        (600, 9, 7, 65, 1, 1, 0), // 63 outputs per channel, 600 deep, blocks of 33 rows: left whole
        (600, 7, 7, 131, 1, 1, 0), // the same with blocks of more than 64 rows: split
        (600, 10, 10, 65, 1, 1, 0), // 100 outputs per channel: split
        (200, 7, 7, 160, 1, 1, 0), // a 7x7 map, one 512-deep block: split
        (32, 4, 5, 10, 1, 1, 0),  // 200 outputs: the GEMM's small-matrix kernel, left whole
        (24, 7, 7, 1, 1, 1, 0),
        (8, 20, 18, 13, 5, 1, 2),
        (32, 16, 16, 48, 1, 2, 0),
    ];
    for (i, &(c, h, w, k, ks, stride, pad)) in cases.iter().enumerate() {
        let s = ConvShape::new(&[1, c, h, w], &[k, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
        let seed = 700 + 10 * i as u64;
        let (x, wt) = (pseudo(c * h * w, seed), pseudo(k * c * ks * ks, seed + 1));
        let (scale, shift) = (pseudo(k, seed + 2), pseudo(k, seed + 3));
        let residual = pseudo(k * s.out_h * s.out_w, seed + 4);
        let epi = conv::Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: false, relu6: true };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (conv::forward(&x, &wt, &s), conv::forward_fused(&x, &wt, &s, Some(&epi))))
        };
        let one = run(1);
        for threads in [2, 3] {
            let got = run(threads);
            let differ = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert!(
                got == one,
                "case {i} {s:?}: {threads} threads differ from 1 at {} and {} outputs",
                differ(&got.0, &one.0),
                differ(&got.1, &one.1)
            );
        }
    }
}

/// The im2col backward-weight sums its chunks' partials in chunk order, in one pass split over
/// blocks of 16 output channels: against the f64 reference with several chunks and channel
/// counts off the 16-row grid, and bit for bit on 1, 2 and 3 threads.
#[test]
fn im2col_backward_weight_sums_chunks_exactly_on_any_thread_count() {
    // (n, c_in, h, w, c_out): 4 chunks of 3 images; 1 chunk (the GEMM writes dW itself, no
    // partial); 33 = 2 blocks of 16 and 1; batch 1 with outputs off any grid.
    for &(n, c, h, w, k) in &[(12, 5, 6, 6, 37), (2, 3, 5, 7, 16), (8, 4, 9, 9, 33), (1, 6, 10, 9, 41)] {
        let s = shape(n, c, h, w, k);
        let (x, dy) = (pseudo(n * c * h * w, 31), pseudo(n * k * h * w, 32));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv::backward_weight(&dy, &x, &s))
        };
        let one = run(1);
        let (exact, scale) =
            (backward_weight_reference(&dy, &x, &s), backward_weight_reference(&abs(&dy), &abs(&x), &s));
        let err = worst(&one, &exact, &scale);
        assert!(err < 1e-6, "{s:?}: error {err:.2e} against the f64 reference");
        for threads in [2, 3] {
            assert!(run(threads) == one, "{s:?}: {threads} threads differ from 1");
        }
    }
}

/// The default CPU backend takes the fast path on 3x3 stride-1 layers; the exact and reference
/// backends (what CUDA parity is measured against) keep im2col + GEMM / the f64 loops.
#[test]
fn backends_dispatch_as_documented() {
    let s = shape(4, 16, 16, 16, 16);
    let x = pseudo(4 * 16 * 256, 5);
    let wt = pseudo(16 * 16 * 9, 6);
    let xt = Tensor::from_vec(&[4, 16, 16, 16], x.clone()).unwrap();
    let wtt = Tensor::from_vec(&[16, 16, 3, 3], wt.clone()).unwrap();
    let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let y_fast = backend::cpu().conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap();
    let y_exact = backend::cpu_exact().conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap();
    let y_ref = backend::cpu_reference().conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap();
    let tile = winograd::choose(&s).expect("3x3 s1 p1 takes the Winograd path");
    assert_eq!(y_fast, winograd::forward(&x, &wt, &s, tile));
    assert_eq!(y_exact, conv::forward(&x, &wt, &s));
    assert_eq!(y_ref, conv::forward_reference(&x, &wt, &s));
    let dx_exact = backend::cpu_exact().conv2d_backward_data(&xt, &wtt, &[4, 16, 16, 16], spec).unwrap();
    assert_eq!(dx_exact.to_vec().unwrap(), conv::backward_data(&x, &wt, &s));
    let dx_ref = backend::cpu_reference().conv2d_backward_data(&xt, &wtt, &[4, 16, 16, 16], spec).unwrap();
    assert_eq!(dx_ref.to_vec().unwrap(), conv::backward_data(&x, &wt, &s));
    // The policy: F(4x4) for large problems, F(2x2) for small ones, im2col for tiny ones and the
    // 3-channel stem.
    assert_eq!(winograd::choose(&shape(64, 16, 32, 32, 16)), Some(WinogradTile::F4));
    assert_eq!(winograd::choose(&shape(1, 64, 8, 8, 64)), Some(WinogradTile::F2));
    assert_eq!(winograd::choose(&shape(1, 32, 16, 16, 32)), Some(WinogradTile::F4));
    assert_eq!(winograd::choose(&shape(1, 64, 4, 4, 64)), None);
    assert_eq!(winograd::choose(&shape(64, 3, 32, 32, 16)), None);
    assert_eq!(winograd::choose(&shape(32, 512, 7, 7, 512)), None, "7x7 maps go to im2col + GEMM");
    // Backward-weight: F(2x2) where Winograd is taken and the pixels are many for the channels,
    // im2col elsewhere (ResNet-50's 28x28 and 14x14 layers at batch 1, a 64x8x8 layer at batch 1).
    assert_eq!(winograd::choose_backward_weight(&shape(64, 16, 32, 32, 16)), Some(WinogradTile::F2));
    assert_eq!(winograd::choose_backward_weight(&shape(1, 64, 56, 56, 64)), Some(WinogradTile::F2));
    assert_eq!(winograd::choose_backward_weight(&shape(64, 64, 8, 8, 64)), Some(WinogradTile::F2));
    assert_eq!(winograd::choose_backward_weight(&shape(64, 3, 32, 32, 16)), None);
    for few in [shape(1, 64, 8, 8, 64), shape(1, 128, 28, 28, 128), shape(32, 256, 14, 14, 256)] {
        assert!(winograd::choose(&few).is_some() && winograd::choose_backward_weight(&few).is_none());
    }
    let dw_fast = backend::cpu().conv2d_backward_weight(&xt, &xt, &[16, 16, 3, 3], spec).unwrap();
    assert_eq!(dw_fast.to_vec().unwrap(), winograd::backward_weight(&x, &x, &s, WinogradTile::F2));
    // A training forward keeps its packed input for backward-weight, which packs the same `x`:
    // the same bits either way (here `x` is also the output gradient, so both hand-overs run).
    let y_train = backend::cpu().conv2d_forward_train(&xt, &wtt, spec).unwrap();
    assert_eq!(y_train.to_vec().unwrap(), y_fast);
    let dw_kept = backend::cpu().conv2d_backward_weight(&xt, &xt, &[16, 16, 3, 3], spec).unwrap();
    assert_eq!(dw_kept.to_vec().unwrap(), winograd::backward_weight(&x, &x, &s, WinogradTile::F2));
    // Backward-data right after takes over backward-weight's packed output gradient: same bits.
    let dx_fast = backend::cpu().conv2d_backward_data(&xt, &wtt, &[4, 16, 16, 16], spec).unwrap();
    assert_eq!(dx_fast.to_vec().unwrap(), winograd::backward_data(&x, &wt, &s, tile));
    let dw_exact = backend::cpu_exact().conv2d_backward_weight(&xt, &xt, &[16, 16, 3, 3], spec).unwrap();
    assert_eq!(dw_exact.to_vec().unwrap(), conv::backward_weight(&x, &x, &s));
    // Strided convolutions are not Winograd's: the direct kernel's where the CPU has AVX2,
    // im2col's in the exact backends.
    let strided = ConvShape::new(&[2, 16, 8, 8], &[16, 16, 3, 3], ConvSpec { stride: 2, pad: 1, groups: 1 }).unwrap();
    assert!(winograd::choose(&strided).is_none());
    let xs = pseudo(2 * 16 * 64, 8);
    let xst = Tensor::from_vec(&[2, 16, 8, 8], xs.clone()).unwrap();
    let spec2 = ConvSpec { stride: 2, pad: 1, groups: 1 };
    let y_fast = backend::cpu().conv2d_forward(&xst, &wtt, spec2).unwrap().to_vec().unwrap();
    if direct::preferred(&strided) {
        assert_eq!(y_fast, direct::forward(&xs, &wt, &strided, None));
    } else {
        assert_eq!(y_fast, conv::forward(&xs, &wt, &strided));
    }
    let y_exact = backend::cpu_exact().conv2d_forward(&xst, &wtt, spec2).unwrap().to_vec().unwrap();
    assert_eq!(y_exact, conv::forward(&xs, &wt, &strided));
}

/// The direct kernel against the f64 loops, on the layers it takes (stem, strided, tiny maps)
/// and odd ones: widths past one 16-lane vector and partial ones, odd maps for stride 2, channel
/// counts that need every register-block piece (23 = 16 + 4 + 2 + 1 on AVX-512, 6 + 6 + 4 and
/// 6 + 1 on AVX2); the same bits on 1, 2 and 3 threads, and on AVX2 as on AVX-512 where the CPU
/// has both.
#[test]
fn direct_matches_exact_within_bound_and_is_reproducible() {
    let probe = ConvShape::new(&[1, 3, 8, 8], &[16, 3, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
    if !direct::supports(&probe) {
        println!("skipped: no AVX2 on this CPU (the direct kernel is not used)");
        return;
    }
    let isa = direct::Isa::detected();
    println!("direct kernel on {isa:?}");
    // (n, c_in, h, w, c_out, stride); 3x3 pad 1 unless listed below with its kernel and pad.
    let cases = [
        (1, 3, 32, 32, 16, 1),
        (3, 3, 32, 32, 16, 1),
        (2, 16, 32, 32, 32, 2),
        (1, 32, 16, 16, 64, 2),
        (3, 64, 4, 4, 64, 1),
        (2, 5, 7, 9, 23, 2),
        (1, 7, 17, 33, 3, 1),
        (2, 2, 1, 1, 5, 2),
        (1, 4, 2, 3, 9, 1),
    ];
    // (n, c_in, h, w, c_out, stride, kernel, pad): ResNet's 7x7 stem, odd maps, other pads.
    let wide = [
        (1, 3, 45, 38, 16, 2, 7, 3),
        (2, 3, 20, 21, 7, 1, 7, 3),
        (1, 5, 13, 17, 9, 2, 5, 2),
        (1, 2, 9, 9, 6, 1, 5, 0),
        (1, 4, 10, 11, 5, 2, 3, 0),
        (1, 2, 6, 7, 3, 2, 7, 6),
    ];
    let all = cases.iter().map(|&(n, c, h, w, k, st)| (n, c, h, w, k, st, 3, 1)).chain(wide);
    let mut overall = 0.0f64;
    for (i, (n, c, h, w, k, stride, ks, pad)) in all.enumerate() {
        let s = ConvShape::new(&[n, c, h, w], &[k, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
        assert!(direct::supports(&s));
        let x = pseudo(n * c * h * w, 300 + i as u64);
        let wt = pseudo(k * c * ks * ks, 400 + i as u64);
        let exact = conv::forward_reference(&x, &wt, &s);
        let scale = conv::forward_reference(&abs(&x), &abs(&wt), &s);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| direct::forward(&x, &wt, &s, None))
        };
        let got = run(1);
        let err = worst(&got, &exact, &scale);
        assert!(err <= DIRECT_BOUND, "case {i} {s:?}: error {err:.3e} over {DIRECT_BOUND:e}");
        overall = overall.max(err);
        for threads in [2, 3] {
            assert!(run(threads) == got, "case {i} {s:?}: {threads} threads differ from 1");
        }
        if isa == direct::Isa::Avx512 {
            let avx2 = direct::forward_on(direct::Isa::Avx2, &x, &wt, &s, None);
            assert!(avx2 == got, "case {i} {s:?}: AVX2 differs from AVX-512");
        }
    }
    println!("direct: worst error {overall:.2e} (bound {DIRECT_BOUND:e})");
    // Not vacuous: a changed tap breaks the bound.
    let s = ConvShape::new(&[1, 16, 8, 8], &[16, 16, 3, 3], ConvSpec { stride: 2, pad: 1, groups: 1 }).unwrap();
    let (x, mut wt) = (pseudo(16 * 64, 1), pseudo(16 * 16 * 9, 2));
    let (exact, scale) = (conv::forward_reference(&x, &wt, &s), conv::forward_reference(&abs(&x), &abs(&wt), &s));
    wt[5] += 1e-3;
    assert!(worst(&direct::forward(&x, &wt, &s, None), &exact, &scale) > DIRECT_BOUND);
}

/// The channel-vector kernel (AVX-512: vectors of 16 output channels, for many input channels)
/// gives the pixel-vector kernel's bits: every output the same chain of fused multiply-adds in
/// the same order, the same epilogue. Over input channels off its 8-channel passes (and under
/// one pass), output channels off the 16-lane vectors and its 3-vector groups, rows split into
/// pieces of 1 to 8 pixels, stride 2, 5x5 and 7x7 windows; on 1, 2 and 3 threads; with the
/// weights kept by stamp or not.
#[test]
fn direct_channel_kernel_equals_pixel_kernel_bit_for_bit() {
    if direct::Isa::detected() < direct::Isa::Avx512 {
        println!("skipped: no AVX-512 on this CPU (the channel-vector kernel is not used)");
        return;
    }
    // (n, c_in, h, w, c_out, stride, kernel, pad)
    let cases = [
        (1, 72, 14, 14, 40, 1, 3, 1),
        (2, 65, 9, 11, 17, 2, 3, 1),
        (1, 67, 7, 7, 48, 1, 3, 1),
        (1, 70, 13, 29, 33, 2, 5, 2),
        (3, 80, 5, 3, 16, 1, 7, 3),
        (1, 5, 17, 23, 130, 1, 3, 1),
        (1, 9, 1, 1, 20, 2, 3, 1),
    ];
    for (i, &(n, c, h, w, k, stride, ks, pad)) in cases.iter().enumerate() {
        let s = ConvShape::new(&[n, c, h, w], &[k, c, ks, ks], ConvSpec { stride, pad, groups: 1 }).unwrap();
        let seed = 700 + 10 * i as u64;
        let (x, wt) = (pseudo(n * c * h * w, seed), pseudo(k * c * ks * ks, seed + 1));
        let (scale, shift) = (pseudo(k, seed + 2), pseudo(k, seed + 3));
        let residual = pseudo(n * k * s.out_h * s.out_w, seed + 4);
        let epilogues = [
            None,
            Some(conv::Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: true, relu6: false }),
            Some(conv::Epilogue { scale: &scale, shift: &shift, residual: None, relu: false, relu6: true }),
        ];
        for epi in &epilogues {
            let want = direct::forward_on(direct::Isa::Avx512, &x, &wt, &s, epi.as_ref());
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for stamp in [None, Some(9_000 + i as u64)] {
                    let got = pool.install(|| direct::forward_channels(&x, &wt, stamp, &s, epi.as_ref()));
                    assert!(got == want, "case {i} {s:?} on {threads} threads, stamp {stamp:?}: bits differ");
                }
            }
        }
    }
    // Not vacuous: another order of the same products (the taps of one channel summed apart,
    // then added) differs in the last bits somewhere.
    let s = ConvShape::new(&[1, 72, 14, 14], &[40, 72, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
    let (x, wt) = (pseudo(72 * 196, 1), pseudo(40 * 72 * 9, 2));
    let first = direct::forward_channels(&x, &wt, None, &s, None);
    let mut halves = direct::forward_channels(&x[..36 * 196], &channel_half(&wt, 40, 72, 9, 0), None, &half(&s), None);
    let second = direct::forward_channels(&x[36 * 196..], &channel_half(&wt, 40, 72, 9, 1), None, &half(&s), None);
    halves.iter_mut().zip(&second).for_each(|(a, b)| *a += b);
    assert!(halves != first, "summing the channels in two halves gave the same bits");
}

/// `s` with half its input channels.
fn half(s: &ConvShape) -> ConvShape {
    ConvShape::new(
        &[s.n, s.c_in / 2, s.h, s.w],
        &[s.c_out, s.c_in / 2, s.kh, s.kw],
        ConvSpec { stride: s.stride, pad: s.pad, groups: 1 },
    )
    .unwrap()
}

/// The weights of the first (`part` 0) or second half of the input channels, `[k][c / 2][taps]`.
fn channel_half(w: &[f32], k: usize, c: usize, taps: usize, part: usize) -> Vec<f32> {
    let from = |o: usize| (o * c + part * c / 2) * taps;
    (0..k).flat_map(|o| w[from(o)..from(o) + c / 2 * taps].to_vec()).collect()
}

/// The fused eval convolution (batch norm, residual add and ReLU applied inside the output
/// transform, the direct kernel's store or per im2col chunk) equals the unfused ops run one by
/// one, bit for bit, on every path: F(2x2) and F(4x4) with whole and partial tiles and channel
/// counts off the 8-lane grid, the direct kernel (stem, strided, tiny maps; im2col without
/// AVX2) and im2col for 1x1 convolutions.
#[test]
fn fused_eval_conv_equals_unfused_ops_bit_for_bit() {
    let dev = backend::cpu();
    // (n, c_in, h, w, c_out, kernel, stride, pad)
    let cases = [
        (64, 16, 32, 32, 16, 3, 1, 1), // F(4x4), SIMD row stores
        (2, 32, 16, 16, 32, 3, 1, 1),  // F(2x2), SIMD pair stores
        (3, 13, 9, 7, 11, 3, 1, 1),    // partial tiles, channels off the lane grid
        (1, 64, 4, 4, 64, 3, 1, 1),    // im2col (tiny map)
        (4, 3, 12, 12, 16, 3, 1, 1),   // the stem
        (4, 16, 12, 12, 32, 3, 2, 1),  // strided
        (3, 24, 6, 6, 40, 1, 1, 0),    // 1x1
        (1, 72, 14, 14, 40, 3, 1, 1),  // AVX-512: the channel-vector kernel (F(2x2) elsewhere)
        (2, 72, 16, 16, 24, 3, 2, 1),  // AVX-512: the channel-vector kernel (im2col elsewhere)
        (2, 24, 16, 16, 40, 1, 1, 0),  // the 1x1 kernel (an expansion): writes over a handed residual
        (1, 16, 15, 15, 48, 1, 1, 0),  // the same with a ragged last pixel vector
        (3, 200, 9, 9, 64, 1, 1, 0),   // a 1x1 on the GEMM: its epilogue writes over a handed residual
    ];
    for (i, &(n, c, h, w, k, ks, stride, pad)) in cases.iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        let x = Tensor::from_vec(&[n, c, h, w], pseudo(n * c * h * w, seed)).unwrap();
        let wt = Tensor::from_vec(&[k, c, ks, ks], pseudo(k * c * ks * ks, seed + 1)).unwrap();
        let spec = ConvSpec { stride, pad, groups: 1 };
        let channel =
            |s: u64, lo: f32| Tensor::from_vec(&[k], pseudo(k, s).iter().map(|v| v.abs() + lo).collect()).unwrap();
        let (gamma, beta) = (channel(seed + 2, 0.5), Tensor::from_vec(&[k], pseudo(k, seed + 3)).unwrap());
        let (mean, var) = (Tensor::from_vec(&[k], pseudo(k, seed + 4)).unwrap(), channel(seed + 5, 0.1));
        let (scale, shift) = dev
            .batchnorm_fold(BnParams { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 })
            .unwrap();
        let y = dev.conv2d_forward(&x, &wt, spec).unwrap();
        let bn = dev
            .batchnorm_forward_eval(
                &y,
                BnParams { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 },
            )
            .unwrap();
        let residual = Tensor::from_vec(bn.dims(), pseudo(bn.numel(), seed + 6)).unwrap();
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let want = match (with_residual, relu) {
                (false, false) => dev.copy(&bn).unwrap(),
                (false, true) => dev.relu_forward(&bn).unwrap(),
                (true, false) => dev.add(&bn, &residual).unwrap(),
                (true, true) => dev.add_relu(&bn, &residual).unwrap(),
            };
            let epi = backend::ConvEpilogue {
                scale: &scale,
                shift: &shift,
                residual: with_residual.then_some(&residual),
                act: if relu { backend::Activation::Relu } else { backend::Activation::Identity },
            };
            let got = dev.conv2d_forward_fused(&x, &wt, spec, &epi).unwrap();
            assert!(
                got.to_vec().unwrap() == want.to_vec().unwrap(),
                "case {i} {:?} residual={with_residual} relu={relu}: fused differs from unfused",
                (n, c, h, w, k, ks, stride)
            );
            if with_residual {
                // The residual handed over (the graph's last reader of it): the same bits.
                let handed = dev.copy(&residual).unwrap();
                let over = backend::ConvEpilogue { residual: None, ..epi };
                let got = dev.conv2d_forward_fused_over(&x, &wt, spec, &over, handed).unwrap();
                assert!(
                    got.to_vec().unwrap() == want.to_vec().unwrap(),
                    "case {i} {:?} relu={relu}: fused over the residual differs from unfused",
                    (n, c, h, w, k, ks, stride)
                );
            }
        }
    }
}

/// The Winograd filter transforms are cached by the weight tensor's content stamp: a weight
/// updated in place (as the optimiser does) is never served its old transform, and a copy of
/// the weights gives the same result.
#[test]
fn filter_transform_cache_follows_in_place_updates() {
    assert!(winograd::choose(&shape(1, 16, 32, 32, 16)).is_some(), "the case must take the Winograd path");
    weight_cache_follows_in_place_updates(16, 32, 16);
    // On AVX-512 the direct channel-vector kernel, whose regrouped weights are kept the same way.
    let wide = shape(1, 72, 14, 14, 40);
    println!("channel-vector kernel: {}", direct::channels_preferred(&wide));
    weight_cache_follows_in_place_updates(72, 14, 40);
}

/// A batch-1 3x3 convolution of `c` to `k` channels on an `h x h` map gives the same bits twice,
/// shows an in-place update of its weights at once, and gives a copy's result for a copy.
fn weight_cache_follows_in_place_updates(c: usize, h: usize, k: usize) {
    let dev = backend::cpu();
    let n = 1;
    let x = Tensor::from_vec(&[n, c, h, h], pseudo(n * c * h * h, 91)).unwrap();
    let mut w = Tensor::from_vec(&[k, c, 3, 3], pseudo(k * c * 9, 92)).unwrap();
    let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let first = dev.conv2d_forward(&x, &w, spec).unwrap().to_vec().unwrap();
    assert_eq!(dev.conv2d_forward(&x, &w, spec).unwrap().to_vec().unwrap(), first, "cached weights");
    let stamp = w.stamp();
    for v in w.as_mut_slice().unwrap().iter_mut() {
        *v *= -2.0;
    }
    assert_ne!(w.stamp(), stamp, "a mutable access must change the stamp");
    let updated = dev.conv2d_forward(&x, &w, spec).unwrap().to_vec().unwrap();
    let fresh = Tensor::from_vec(&[k, c, 3, 3], w.to_vec().unwrap()).unwrap();
    assert_eq!(updated, dev.conv2d_forward(&x, &fresh, spec).unwrap().to_vec().unwrap());
    assert!(updated.iter().zip(&first).any(|(a, b)| a != b), "the update must show");
    let copy = w.try_clone().unwrap();
    assert_eq!(dev.conv2d_forward(&x, &copy, spec).unwrap().to_vec().unwrap(), updated);
}

/// A training-mode forward's weights change every step, so their Winograd filter transform is
/// not kept (it was, filling the cache with transforms nobody asked for again: up to 256 MiB);
/// an eval forward's is. On a layer whose backward-weight leaves Winograd (more than 128 x 128
/// channel pairs), so the training forward takes the plain path, not the input-keeping one.
/// Below 256 output pixels (F(2x2)'s sizes) a training forward and an input gradient leave
/// Winograd for im2col + GEMM, which the filter transform made every call cost more than.
#[test]
fn training_forward_keeps_no_filter_transform() {
    let dev = backend::cpu();
    let spec = ConvSpec { stride: 1, pad: 1, groups: 1 };
    let (c, k) = (136, 136);
    for h in [16, 8] {
        let s = shape(1, c, h, h, k);
        let tile = winograd::choose(&s).expect("a Winograd layer");
        assert!(winograd::choose_backward_weight(&s).is_none());
        let x = Tensor::from_vec(&[1, c, h, h], pseudo(c * h * h, 95)).unwrap();
        let w = Tensor::from_vec(&[k, c, 3, 3], pseudo(k * c * 9, 96)).unwrap();
        let train = dev.conv2d_forward_train(&x, &w, spec).unwrap().to_vec().unwrap();
        assert!(!winograd::holds_transform_of(w.stamp()), "a training forward kept its filter transform");
        let eval = dev.conv2d_forward(&x, &w, spec).unwrap().to_vec().unwrap();
        assert!(winograd::holds_transform_of(w.stamp()), "an eval forward must keep its filter transform");
        let im2col = conv::forward(x.as_slice().unwrap(), w.as_slice().unwrap(), &s);
        let dy = Tensor::from_vec(&[1, k, h, h], pseudo(k * h * h, 97)).unwrap();
        let dx = dev.conv2d_backward_data(&dy, &w, &[1, c, h, h], spec).unwrap().to_vec().unwrap();
        let dx_im2col = conv::backward_data(dy.as_slice().unwrap(), w.as_slice().unwrap(), &s);
        if tile == WinogradTile::F4 {
            assert_eq!(train, eval, "{h}x{h}: the same kernel either way");
            assert_ne!(train, im2col, "{h}x{h}: Winograd, not im2col");
            assert_ne!(dx, dx_im2col, "{h}x{h}: the input gradient on Winograd");
        } else {
            assert_eq!(train, im2col, "{h}x{h}: a training forward on im2col");
            assert_ne!(eval, im2col, "{h}x{h}: an eval forward on Winograd F(2x2)");
            assert_eq!(dx, dx_im2col, "{h}x{h}: the input gradient on im2col");
        }
    }
}

/// The 1x1 kernel's weight panels are kept by the weight's stamp (`pointwise.rs`): a second call
/// gives the same bits, and an in-place update of the weights shows at once.
#[test]
fn pointwise_panel_cache_follows_in_place_updates() {
    use backend::{Activation, ConvEpilogue};
    use lfgcl::backend::cpu::pointwise;
    let dev = backend::cpu();
    let (n, c, h, k) = (1, 24, 56, 144);
    let spec = ConvSpec { stride: 1, pad: 0, groups: 1 };
    let s = ConvShape::new(&[n, c, h, h], &[k, c, 1, 1], spec).unwrap();
    if !pointwise::preferred(&s) {
        println!("skipped: the 1x1 kernel does not run on this CPU (AVX2 only)");
        return;
    }
    let x = Tensor::from_vec(&[n, c, h, h], pseudo(n * c * h * h, 93)).unwrap();
    let mut w = Tensor::from_vec(&[k, c, 1, 1], pseudo(k * c, 94)).unwrap();
    let (scale, shift) =
        (Tensor::from_vec(&[k], pseudo(k, 95)).unwrap(), Tensor::from_vec(&[k], pseudo(k, 96)).unwrap());
    let epi = ConvEpilogue { scale: &scale, shift: &shift, residual: None, act: Activation::Relu6 };
    let run = |w: &Tensor| dev.conv2d_forward_fused(&x, w, spec, &epi).unwrap().to_vec().unwrap();
    let first = run(&w);
    assert_eq!(run(&w), first, "cached panels");
    for v in w.as_mut_slice().unwrap().iter_mut() {
        *v *= -2.0;
    }
    let updated = run(&w);
    let fresh = Tensor::from_vec(&[k, c, 1, 1], w.to_vec().unwrap()).unwrap();
    assert_eq!(updated, run(&fresh));
    assert!(updated.iter().zip(&first).any(|(a, b)| a != b), "the update must show");
}

// ---- grouped, depthwise and 1x1 convolutions ---------------------------------------------------

/// `(n, c_in, h, w, c_out, kernel, stride, pad, groups)`.
type GroupedCase = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

/// Forward, backward-data and backward-weight of a grouped convolution by naive loops in f64,
/// written here independently of the library, each with its error scale (the same sums over
/// absolute values).
#[allow(clippy::type_complexity)]
fn grouped_naive(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    case: GroupedCase,
) -> ((Vec<f32>, Vec<f32>), (Vec<f32>, Vec<f32>), (Vec<f32>, Vec<f32>)) {
    let (n, c, h, wd, k, ks, stride, pad, groups) = case;
    let (oh, ow) = ((h + 2 * pad - ks) / stride + 1, (wd + 2 * pad - ks) / stride + 1);
    let (cg, kg) = (c / groups, k / groups);
    let mut y = vec![0.0f64; n * k * oh * ow];
    let mut ys = y.clone();
    let mut dx = vec![0.0f64; n * c * h * wd];
    let mut dxs = dx.clone();
    let mut dw = vec![0.0f64; k * cg * ks * ks];
    let mut dws = dw.clone();
    for img in 0..n {
        for kk in 0..k {
            let grp = kk / kg;
            for p in 0..oh {
                for q in 0..ow {
                    let yi = ((img * k + kk) * oh + p) * ow + q;
                    for ci in 0..cg {
                        let ch = grp * cg + ci;
                        for r in 0..ks {
                            for t in 0..ks {
                                let (ih, iw) = (
                                    (p * stride + r) as isize - pad as isize,
                                    (q * stride + t) as isize - pad as isize,
                                );
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = ((img * c + ch) * h + ih as usize) * wd + iw as usize;
                                let wi = ((kk * cg + ci) * ks + r) * ks + t;
                                let (xv, wv, gv) = (x[xi] as f64, w[wi] as f64, dy[yi] as f64);
                                y[yi] += xv * wv;
                                ys[yi] += (xv * wv).abs();
                                dx[xi] += gv * wv;
                                dxs[xi] += (gv * wv).abs();
                                dw[wi] += gv * xv;
                                dws[wi] += (gv * xv).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
    ((f(y), f(ys)), (f(dx), f(dxs)), (f(dw), f(dws)))
}

fn grouped_cases() -> Vec<GroupedCase> {
    vec![
        (2, 4, 7, 6, 6, 3, 1, 1, 2),      // groups 2
        (3, 8, 9, 7, 8, 3, 2, 1, 4),      // groups 4, strided
        (2, 16, 6, 6, 32, 3, 1, 1, 8),    // ResNeXt-like (cg 2, kg 4)
        (1, 12, 5, 8, 12, 1, 1, 0, 4),    // grouped 1x1
        (2, 6, 8, 5, 6, 3, 1, 0, 6),      // depthwise, pad 0 (exact path only)
        (2, 5, 9, 19, 5, 3, 1, 1, 5),     // depthwise s1, vector tail
        (3, 7, 10, 33, 7, 3, 2, 1, 7),    // depthwise s2, even height
        (1, 3, 11, 17, 3, 3, 2, 1, 3),    // depthwise s2, odd height
        (2, 4, 12, 12, 8, 3, 1, 1, 4),    // channel multiplier 2 (not depthwise)
        (1, 32, 14, 14, 32, 3, 1, 1, 32), // MobileNetV2-like
    ]
}

/// Every CPU backend (default: depthwise kernel where it applies; exact: per-group im2col +
/// GEMM; reference: f64 loops for the forward pass) against naive loops written here.
#[test]
fn grouped_conv_matches_naive_loops() {
    for (i, &case) in grouped_cases().iter().enumerate() {
        let (n, c, h, w, k, ks, stride, pad, groups) = case;
        let spec = ConvSpec { stride, pad, groups };
        let xd = [n, c, h, w];
        let wd = [k, c / groups, ks, ks];
        let x = pseudo(xd.iter().product(), 100 + i as u64);
        let wt = pseudo(wd.iter().product(), 200 + i as u64);
        let (oh, ow) = ((h + 2 * pad - ks) / stride + 1, (w + 2 * pad - ks) / stride + 1);
        let dy = pseudo(n * k * oh * ow, 300 + i as u64);
        let ((y, ys), (dx, dxs), (dw, dws)) = grouped_naive(&x, &wt, &dy, case);
        let (xt, wtt) = (Tensor::from_vec(&xd, x.clone()).unwrap(), Tensor::from_vec(&wd, wt.clone()).unwrap());
        let dyt = Tensor::from_vec(&[n, k, oh, ow], dy.clone()).unwrap();
        for dev in [backend::cpu(), backend::cpu_exact(), backend::cpu_reference()] {
            let tag = format!("{} case {i} {case:?}", dev.describe());
            let got = dev.conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap();
            let e = worst(&got, &y, &ys);
            assert!(e < 1e-6, "{tag}: forward error {e:.2e}");
            let got = dev.conv2d_forward_train(&xt, &wtt, spec).unwrap().to_vec().unwrap();
            assert!(worst(&got, &y, &ys) < 1e-6, "{tag}: forward_train");
            let got = dev.conv2d_backward_data(&dyt, &wtt, &xd, spec).unwrap().to_vec().unwrap();
            let e = worst(&got, &dx, &dxs);
            assert!(e < 1e-6, "{tag}: backward-data error {e:.2e}");
            let got = dev.conv2d_backward_weight(&dyt, &xt, &wd, spec).unwrap().to_vec().unwrap();
            let e = worst(&got, &dw, &dws);
            assert!(e < 1e-6, "{tag}: backward-weight error {e:.2e}");
        }
    }
}

/// The naive loops above catch a wrong grouping (a weight block read for the wrong group).
#[test]
fn grouped_check_detects_a_wrong_group() {
    let case = (1, 4, 5, 5, 4, 3, 1, 1, 2);
    let x = pseudo(100, 1);
    let wt = pseudo(4 * 2 * 9, 2);
    let dy = pseudo(100, 3);
    let ((y, ys), _, _) = grouped_naive(&x, &wt, &dy, case);
    // Swap the two groups' weight blocks.
    let mut swapped = wt[36..].to_vec();
    swapped.extend_from_slice(&wt[..36]);
    let spec = ConvSpec { stride: 1, pad: 1, groups: 2 };
    let got = backend::cpu_exact()
        .conv2d_forward(
            &Tensor::from_vec(&[1, 4, 5, 5], x).unwrap(),
            &Tensor::from_vec(&[4, 2, 3, 3], swapped).unwrap(),
            spec,
        )
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(worst(&got, &y, &ys) > 1e-3);
}

fn depthwise_shape(n: usize, c: usize, h: usize, w: usize, stride: usize) -> ConvShape {
    ConvShape::new(&[n, c, h, w], &[c, 1, 3, 3], ConvSpec { stride, pad: 1, groups: c }).unwrap()
}

/// The depthwise kernel against the exact grouped path (per-group im2col + GEMM), at MobileNetV2
/// shapes and odd ones; it gives the same bits whatever the thread count (and whatever the
/// build: `isa_builds.rs`); the default backend dispatches depthwise layers to it and the exact
/// one does not.
#[test]
fn depthwise_fast_matches_exact_grouped() {
    use lfgcl::backend::cpu::depthwise;
    for &(n, c, h, w, stride) in &[
        (1, 32, 112, 112, 1), // MobileNetV2's first depthwise layer
        (2, 96, 28, 28, 2),
        (1, 144, 56, 56, 2),
        (3, 5, 9, 19, 1),
        (2, 7, 10, 33, 2),
        (1, 3, 1, 1, 1),
        (1, 2, 1, 2, 2),
        (2, 4, 2, 17, 2),
        (1, 3, 16, 16, 1),
        // One-pixel columns, and rows around one and two vectors (the masked kernel's edges).
        (1, 2, 5, 1, 1),
        (2, 2, 5, 1, 2),
        (1, 2, 3, 31, 2),
        (1, 2, 4, 32, 2),
        (1, 3, 6, 33, 2),
        (1, 2, 3, 15, 1),
        (1, 2, 2, 17, 1),
        // Rows shorter than a vector: each row's vector spills into the rows below (plane
        // kernel), or the channel-interleaved kernel takes the map (28 pixels wide and under).
        (2, 6, 7, 7, 1),
        (1, 3, 14, 14, 2),
        (1, 960, 7, 7, 1), // MobileNetV2's last stage
        (2, 384, 14, 14, 1),
        (1, 576, 14, 14, 2),
        (2, 23, 13, 11, 2), // a partial block of 16 channels
        (1, 17, 28, 14, 1),
    ] {
        let s = depthwise_shape(n, c, h, w, stride);
        assert!(depthwise::supports(&s));
        let x = pseudo(n * c * h * w, 7);
        let wt = pseudo(c * 9, 8);
        let dy = pseudo(n * c * s.out_h * s.out_w, 9);
        let (k, pq) = (c, s.out_h * s.out_w);
        let (scale, shift, residual) = (pseudo(k, 10), pseudo(k, 11), pseudo(n * k * pq, 12));
        let epi = conv::Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: true, relu6: false };
        // Without a residual the epilogue runs in the kernel's registers: ReLU6 (scaled so that
        // some values pass 6) and ReLU.
        let scale6: Vec<f32> = scale.iter().map(|v| 16.0 * v).collect();
        let no_residual = [
            conv::Epilogue { scale: &scale6, shift: &shift, residual: None, relu: false, relu6: true },
            conv::Epilogue { scale: &scale, shift: &shift, residual: None, relu: true, relu6: false },
        ];
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                (
                    depthwise::forward(&x, &wt, &s, None),
                    depthwise::forward(&x, &wt, &s, Some(&epi)),
                    depthwise::backward_data(&dy, &wt, &s),
                    depthwise::backward_weight(&dy, &x, &s),
                    no_residual.each_ref().map(|e| depthwise::forward(&x, &wt, &s, Some(e))),
                )
            })
        };
        let fast = run(2);
        let tag = format!("{s:?}");
        // AVX2 and AVX-512 machines take the in-place kernel at every size, the portable build
        // the interleaved one on small maps: the plane kernel's bits.
        {
            assert!(
                depthwise::forward_planes(&x, &wt, &s, None) == fast.0,
                "{tag}: the fast forward differs from the plane kernel"
            );
            assert!(
                depthwise::forward_planes(&x, &wt, &s, Some(&epi)) == fast.1,
                "{tag}: the fast forward's epilogue differs from the plane kernel's"
            );
            for (e, got) in no_residual.iter().zip(&fast.4) {
                assert!(
                    &depthwise::forward_planes(&x, &wt, &s, Some(e)) == got,
                    "{tag}: the fast forward's register epilogue differs from the plane kernel's"
                );
            }
        }
        assert!(run(1) == fast, "{tag}: 1 thread differs from 2");
        assert!(run(3) == fast, "{tag}: 3 threads differ from 2");
        let (ax, aw, ady) = (abs(&x), abs(&wt), abs(&dy));
        let exact = conv::forward_grouped(&x, &wt, &s, None);
        let e = worst(&fast.0, &exact, &conv::forward_grouped(&ax, &aw, &s, None));
        assert!(e < 1e-6, "{tag}: forward error {e:.2e}");
        // The epilogue is the unfused arithmetic on the kernel's own sums.
        let fused: Vec<f32> = fast.0.iter().enumerate().map(|(i, &v)| epi.apply(v, (i / pq) % k, i)).collect();
        assert!(fused == fast.1, "{tag}: fused epilogue differs");
        for (e, got) in no_residual.iter().zip(&fast.4) {
            let want: Vec<f32> = fast.0.iter().enumerate().map(|(i, &v)| e.apply(v, (i / pq) % k, i)).collect();
            assert!(&want == got, "{tag}: epilogue in registers differs (relu {}, relu6 {})", e.relu, e.relu6);
        }
        let exact = conv::backward_data_grouped(&dy, &wt, &s);
        let e = worst(&fast.2, &exact, &conv::backward_data_grouped(&ady, &aw, &s));
        assert!(e < 1e-6, "{tag}: backward-data error {e:.2e}");
        let exact = conv::backward_weight_grouped(&dy, &x, &s);
        let e = worst(&fast.3, &exact, &conv::backward_weight_grouped(&ady, &ax, &s));
        assert!(e < 2e-6, "{tag}: backward-weight error {e:.2e}");
        // Dispatch: the default backend runs the kernel, the exact one the grouped im2col path.
        let xt = Tensor::from_vec(&[n, c, h, w], x.clone()).unwrap();
        let wtt = Tensor::from_vec(&[c, 1, 3, 3], wt.clone()).unwrap();
        let spec = ConvSpec { stride, pad: 1, groups: c };
        assert!(backend::cpu().conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap() == fast.0);
        let ex = backend::cpu_exact().conv2d_forward(&xt, &wtt, spec).unwrap().to_vec().unwrap();
        assert!(ex == conv::forward_grouped(&x, &wt, &s, None), "{tag}: exact backend dispatch");
    }
}

/// 1x1 convolutions (stride 1, pad 0) go straight to GEMM, reading the input and writing the
/// input gradient in place: the same bits as im2col + GEMM, one image per chunk (large maps) or
/// several (maps under 256 pixels), at 1, 2 and 3 threads; and within bound of the f64 loops. A
/// batch of 1 is split over the threads by output channels or by pixels (`column_parts`: more
/// inputs than outputs), and gives the bits of one thread.
#[test]
fn pointwise_gemm_equals_im2col_bit_for_bit() {
    for &(n, c, h, w, k) in &[
        (1, 64, 56, 56, 256), // ResNet-50 stage 1 expand
        (1, 96, 40, 41, 24),  // a MobileNetV2 projection: split by pixels
        (1, 256, 33, 32, 64), // ResNet-50 stage 1 reduce: split by pixels
        (2, 256, 14, 14, 64), // ResNet-50 stage 3 reduce (im2col in chunks of two images)
        (3, 24, 7, 7, 40),
        (1, 3, 5, 9, 2),
        (5, 16, 16, 16, 8),
    ] {
        let s = ConvShape::new(&[n, c, h, w], &[k, c, 1, 1], ConvSpec { stride: 1, pad: 0, groups: 1 }).unwrap();
        assert!(conv::is_pointwise(&s));
        let x = pseudo(n * c * h * w, 21);
        let wt = pseudo(k * c, 22);
        let dy = pseudo(n * k * h * w, 23);
        let (scale, shift, residual) = (pseudo(k, 24), pseudo(k, 25), pseudo(n * k * h * w, 26));
        let epi = conv::Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: true, relu6: false };
        let mut one_thread = None;
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let tag = format!("{s:?} at {threads} threads");
                let y = conv::forward(&x, &wt, &s);
                assert!(y == conv::forward_fused_im2col(&x, &wt, &s, None), "{tag}: forward");
                let yf = conv::forward_fused(&x, &wt, &s, Some(&epi));
                assert!(yf == conv::forward_fused_im2col(&x, &wt, &s, Some(&epi)), "{tag}: fused");
                let dx = conv::backward_data(&dy, &wt, &s);
                assert!(dx == conv::backward_data_im2col(&dy, &wt, &s), "{tag}: backward-data");
                let dw = conv::backward_weight(&dy, &x, &s);
                assert!(dw == conv::backward_weight_im2col(&dy, &x, &s), "{tag}: backward-weight");
                let serial = one_thread.get_or_insert_with(|| (y.clone(), yf.clone()));
                assert!(serial.0 == y && serial.1 == yf, "{tag}: not the bits of one thread");
                if threads == 1 {
                    let e = worst(
                        &y,
                        &conv::forward_reference(&x, &wt, &s),
                        &conv::forward_reference(&abs(&x), &abs(&wt), &s),
                    );
                    assert!(e < 1e-6, "{tag}: forward error {e:.2e}");
                }
            });
        }
    }
}

/// The fused eval convolution with a ReLU6 epilogue (MobileNetV2) and every other activation
/// equals conv -> batch norm -> (+ residual) -> activation run op by op, bit for bit, on the
/// depthwise kernel, the grouped path, 1x1 GEMM, Winograd and strided layers, on the default and
/// exact backends.
#[test]
fn fused_relu6_epilogue_equals_unfused_ops_bit_for_bit() {
    use backend::Activation;
    // (n, c_in, h, w, c_out, kernel, stride, pad, groups)
    let cases = [
        (2, 32, 28, 28, 32, 3, 1, 1, 32), // depthwise s1
        (1, 16, 15, 21, 16, 3, 2, 1, 16), // depthwise s2
        (2, 16, 8, 8, 32, 3, 1, 1, 4),    // grouped
        (2, 24, 14, 14, 144, 1, 1, 0, 1), // 1x1 expand
        (3, 16, 16, 16, 16, 3, 1, 1, 1),  // Winograd
        (2, 16, 12, 12, 32, 3, 2, 1, 1),  // strided 3x3
        (1, 3, 40, 38, 32, 3, 2, 1, 1),   // MobileNetV2's stem: whole and partial tiles
        (1, 3, 41, 36, 16, 7, 2, 3, 1),   // ResNet's 7x7 stem
        (2, 16, 12, 12, 32, 1, 2, 0, 1),  // strided 1x1 (ResNet downsample)
    ];
    for dev in [backend::cpu(), backend::cpu_exact()] {
        for (i, &(n, c, h, w, k, ks, stride, pad, groups)) in cases.iter().enumerate() {
            let seed = 500 + 10 * i as u64;
            let x =
                Tensor::from_vec(&[n, c, h, w], pseudo(n * c * h * w, seed).iter().map(|v| v * 8.0).collect()).unwrap();
            let wd = [k, c / groups, ks, ks];
            let wt = Tensor::from_vec(&wd, pseudo(wd.iter().product(), seed + 1)).unwrap();
            let spec = ConvSpec { stride, pad, groups };
            let channel =
                |s: u64, lo: f32| Tensor::from_vec(&[k], pseudo(k, s).iter().map(|v| v.abs() + lo).collect()).unwrap();
            let (gamma, beta) = (channel(seed + 2, 0.5), Tensor::from_vec(&[k], pseudo(k, seed + 3)).unwrap());
            let (mean, var) = (Tensor::from_vec(&[k], pseudo(k, seed + 4)).unwrap(), channel(seed + 5, 0.1));
            let (scale, shift) = dev
                .batchnorm_fold(BnParams {
                    gamma: &gamma,
                    beta: &beta,
                    running_mean: &mean,
                    running_var: &var,
                    eps: 1e-5,
                })
                .unwrap();
            let y = dev.conv2d_forward(&x, &wt, spec).unwrap();
            let bn = dev
                .batchnorm_forward_eval(
                    &y,
                    BnParams { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 },
                )
                .unwrap();
            let residual = Tensor::from_vec(bn.dims(), pseudo(bn.numel(), seed + 6)).unwrap();
            for with_residual in [false, true] {
                let pre = if with_residual { dev.add(&bn, &residual).unwrap() } else { dev.copy(&bn).unwrap() };
                let six = pre.to_vec().unwrap().iter().filter(|v| **v > 6.0).count();
                assert!(six > 0, "case {i}: no value above 6 to clamp");
                for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                    let want = match act {
                        Activation::Identity => dev.copy(&pre).unwrap(),
                        Activation::Relu => dev.relu_forward(&pre).unwrap(),
                        Activation::Relu6 => dev.relu6_forward(&pre).unwrap(),
                    };
                    let epi = backend::ConvEpilogue {
                        scale: &scale,
                        shift: &shift,
                        residual: with_residual.then_some(&residual),
                        act,
                    };
                    let got = dev.conv2d_forward_fused(&x, &wt, spec, &epi).unwrap();
                    assert!(
                        got.to_vec().unwrap() == want.to_vec().unwrap(),
                        "{} case {i} residual={with_residual} {act:?}: fused differs from unfused",
                        dev.describe()
                    );
                }
            }
        }
    }
}

/// The 1x1 kernel with the fused epilogue (`pointwise.rs`, AVX2 and AVX-512 builds: the detected
/// one, or the AVX2 one under `LFGCL_CPU_ISA=avx2`): every output is one
/// fused multiply-add chain over the input channels in order, then the epilogue, bit for bit,
/// on any thread count; with ragged pixel blocks and tiles, channel counts that are no multiple
/// of its six-row panels, several images, and every activation. Where the `gemm` crate sums in
/// one depth block (up to a few hundred channels) it gives the same bits as the exact path.
#[test]
fn pointwise_kernel_is_one_fma_chain_per_output_on_any_thread_count() {
    use lfgcl::backend::cpu::pointwise;
    // (n, c_in, h, w, c_out)
    let cases = [
        (1, 16, 112, 112, 96), // MobileNetV2's first expansion: many tiles
        (1, 24, 28, 28, 144),
        (2, 7, 5, 9, 13),     // ragged 16- and 8-pixel blocks, a 1-row panel
        (1, 300, 30, 31, 20), // tiles of 96 pixels, the last ragged
        (3, 1, 1, 1, 1),
        (1, 600, 7, 7, 8),
    ];
    let mut checked = 0;
    for &(n, c, h, w, k) in &cases {
        let s = ConvShape::new(&[n, c, h, w], &[k, c, 1, 1], ConvSpec { stride: 1, pad: 0, groups: 1 }).unwrap();
        if !pointwise::available(&s) {
            println!("skipped: no AVX2 + FMA [{s:?}]");
            return;
        }
        let p = h * w;
        let x = pseudo(n * c * p, 31);
        let wt = pseudo(k * c, 32);
        let (scale, shift, residual) = (pseudo(k, 33), pseudo(k, 34), pseudo(n * k * p, 35));
        for (relu, relu6, res) in
            [(false, false, false), (true, false, true), (false, true, false), (false, true, true)]
        {
            let epi =
                conv::Epilogue { scale: &scale, shift: &shift, residual: res.then_some(&residual[..]), relu, relu6 };
            for e in [None, Some(&epi)] {
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let y = pool.install(|| pointwise::forward(&x, &wt, &s, e));
                    let tag = format!(
                        "{s:?} relu {relu} relu6 {relu6} residual {res} epilogue {} at {threads} threads",
                        e.is_some()
                    );
                    for image in 0..n {
                        for kk in 0..k {
                            for q in 0..p {
                                let want = pointwise::reference_output(&x, &wt, &s, e, image, kk, q);
                                let got = y[(image * k + kk) * p + q];
                                assert!(
                                    got.to_bits() == want.to_bits(),
                                    "{tag}: output ({image}, {kk}, {q}): {got} vs {want}"
                                );
                            }
                        }
                    }
                    match &first {
                        Some(f) => assert!(*f == y, "{tag}: not the bits of one thread"),
                        None => first = Some(y.clone()),
                    }
                    if c <= 300 {
                        let exact = conv::forward_fused_im2col(&x, &wt, &s, e);
                        assert!(exact == y, "{tag}: not the gemm crate's bits");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}
