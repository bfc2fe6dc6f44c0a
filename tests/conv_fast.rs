//! Parity of the fast CPU convolution kernels (Winograd F(2x2,3x3) and F(4x4,3x3)) against the
//! exact paths, over ResNet-20/56 shapes and odd ones (batch 1 and 3, channel counts that are not
//! multiples of the 8-tile lanes, odd and non-square maps, 1x1 and 2x2 maps).
//!
//! # Error measure
//!
//! Per output element, `|fast - exact| / sum |x| |w|`, the sum taken over that element's window
//! (`sum |x||w|` is the convolution of `|x|` with `|w|`). A sum of products in any order has a
//! rounding error bounded by a small multiple of `eps * sum |x||w|`; Winograd adds the error of
//! its transforms, whose coefficients grow with the tile size (F(4x4) uses 4, 5 and 8 in `B^T`
//! and `A^T`), so the bound does too. Measured worst cases here: F(2x2) 3.6e-7, F(4x4) 7.6e-6
//! (im2col + GEMM: ~1e-7). Stated bounds:
//! - F(2x2,3x3): 2e-6 (about 16 f32 ulps);
//! - F(4x4,3x3): 3e-5.
//!
//! The exact reference is the f64 direct loop for the forward pass and the f32 im2col path for
//! backward-data (itself within ~1e-7 of exact on these sizes).

use lfgcl::backend::cpu::conv;
use lfgcl::backend::cpu::winograd::{self, WinogradTile};
use lfgcl::backend::{self, ConvShape, ConvSpec};
use lfgcl::Tensor;

const F2_BOUND: f64 = 2e-6;
const F4_BOUND: f64 = 3e-5;

fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

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
    ConvShape::new(&[n, c, h, w], &[k, c, 3, 3], ConvSpec { stride: 1, pad: 1 }).unwrap()
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

fn check_tile(tile: WinogradTile, bound: f64) {
    let mut overall = (0.0f64, 0.0f64);
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
        overall = (overall.0.max(e), overall.1.max(e_dx));
    }
    println!("{tile:?}: worst forward error {:e}, backward-data {:e} (bound {bound:e})", overall.0, overall.1);
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
                pool.install(|| (winograd::forward(&x, &wt, &s, tile), winograd::backward_data(&dy, &wt, &s, tile)))
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(run(threads) == one, "{tile:?} {s:?}: {threads} threads differ from 1");
            }
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
    let spec = ConvSpec { stride: 1, pad: 1 };
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
    // The policy: F(4x4) for large problems, im2col for tiny ones and the 3-channel stem.
    assert_eq!(winograd::choose(&shape(64, 16, 32, 32, 16)), Some(WinogradTile::F4));
    assert_eq!(winograd::choose(&shape(1, 64, 8, 8, 64)), None);
    assert_eq!(winograd::choose(&shape(64, 3, 32, 32, 16)), None);
    // Strided convolutions are not Winograd's.
    let strided = ConvShape::new(&[2, 16, 8, 8], &[16, 16, 3, 3], ConvSpec { stride: 2, pad: 1 }).unwrap();
    assert!(winograd::choose(&strided).is_none());
}
