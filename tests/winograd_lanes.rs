//! The Winograd transforms are built three times (AVX-512's 16 lanes on 16-channel blocks,
//! AVX2's 8, plain `[f32; 8]` arrays) and must give the same bits: every lane operation is the
//! same IEEE operation in each. Forward (with the fused epilogue), backward-data and
//! backward-weight, on channel counts that take 16-lane blocks (16, 32), 8-lane ones (24) and
//! partial ones (13), at batch 1 (the team's short regions) and 3.
//!
//! Its own test binary: `set_transform_lanes` is process-wide.

use lfgcl::backend::cpu::conv::Epilogue;
use lfgcl::backend::cpu::winograd::{self, TransformLanes, WinogradTile};
use lfgcl::backend::{ConvShape, ConvSpec};

#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn run(s: &ConvShape, tile: WinogradTile, lanes: TransformLanes) -> Outputs {
    winograd::set_transform_lanes(lanes);
    let (n, c, k, hw) = (s.n, s.c_in, s.c_out, s.h * s.w);
    let x = pseudo(n * c * hw, 1);
    let w = pseudo(k * c * 9, 2);
    let dy = pseudo(n * k * hw, 3);
    let (scale, shift, residual) = (pseudo(k, 4), pseudo(k, 5), pseudo(n * k * hw, 6));
    let epi = Epilogue { scale: &scale, shift: &shift, residual: Some(&residual), relu: true, relu6: false };
    let out = (
        winograd::forward(&x, &w, s, tile),
        winograd::forward_fused(&x, &w, s, tile, Some(&epi)),
        winograd::backward_data(&dy, &w, s, tile),
        winograd::backward_weight(&dy, &x, s, tile),
    );
    winograd::set_transform_lanes(TransformLanes::Auto);
    out
}

#[test]
fn every_transform_build_gives_the_same_bits() {
    for &(n, c, h, k) in &[(1, 16, 32, 32), (3, 32, 16, 16), (1, 24, 8, 32), (3, 13, 9, 16), (1, 16, 7, 24)] {
        let s = ConvShape::new(&[n, c, h, h], &[k, c, 3, 3], ConvSpec { stride: 1, pad: 1, groups: 1 }).unwrap();
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let auto = run(&s, tile, TransformLanes::Auto);
            assert!(auto.0.iter().chain(&auto.3).all(|v| v.is_finite()) && auto.0.iter().any(|&v| v != 0.0));
            for lanes in [TransformLanes::Avx2, TransformLanes::Portable] {
                let other = run(&s, tile, lanes);
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
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
    let a = winograd::forward(&x, &w, &s, WinogradTile::F2);
    w[5] = f32::from_bits(w[5].to_bits() + 1);
    let b = winograd::forward(&x, &w, &s, WinogradTile::F2);
    assert!(a.iter().zip(&b).any(|(p, q)| p.to_bits() != q.to_bits()));
}
