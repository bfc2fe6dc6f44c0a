//! Finite-difference gradient checks: every layer's hand-written backward, and whole networks.
//!
//! For an op `y = f(x)` the scalar `L = sum(y * r)` with a fixed random `r` has gradient
//! `backward(dy = r)`. Central differences with step `H` in f32 give that gradient to about
//! `eps_f32 * |L| / H`; the tolerance below allows for it.

use lfgcl::backend::{self, Activation, BnParams, BnTrainParams, ConvSpec, Device};
use lfgcl::models::Arch;
use lfgcl::nn::Mode;
use lfgcl::train;
use lfgcl::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H: f64 = 1e-2;
const NET_STEP: f64 = 1e-3;

fn dev() -> Device {
    backend::cpu()
}

fn rand_vec(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn t(dims: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(dims, v).unwrap()
}

/// Values away from 0 by at least 0.1, so a finite-difference step never crosses a ReLU kink.
fn away_from_zero(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let m = rng.random_range(0.1f32..1.0);
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// Checks `analytic` against central differences of `loss(x)` at (up to) `samples` coordinates.
fn check(name: &str, x: &[f32], analytic: &[f32], samples: usize, loss: &mut dyn FnMut(&[f32]) -> f64) {
    check_step(name, x, analytic, samples, H, loss)
}

fn check_step(name: &str, x: &[f32], analytic: &[f32], samples: usize, step: f64, loss: &mut dyn FnMut(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient size");
    let mut rng = StdRng::seed_from_u64(99);
    let coords: Vec<usize> = if x.len() <= samples {
        (0..x.len()).collect()
    } else {
        (0..samples).map(|_| rng.random_range(0..x.len())).collect()
    };
    let scale = analytic.iter().fold(0.0f64, |m, &g| m.max(g.abs() as f64)).max(1e-3);
    let mut worst = 0.0f64;
    for &i in &coords {
        let mut xp = x.to_vec();
        xp[i] = (x[i] as f64 + step) as f32;
        let lp = loss(&xp);
        xp[i] = (x[i] as f64 - step) as f32;
        let lm = loss(&xp);
        let numeric = (lp - lm) / (2.0 * step);
        let err = (numeric - analytic[i] as f64).abs() / (scale + numeric.abs().max(analytic[i].abs() as f64));
        worst = worst.max(err);
        assert!(
            err < 2e-2,
            "{name}: coordinate {i}: numeric {numeric:.6} vs analytic {:.6} (relative error {err:.4})",
            analytic[i]
        );
    }
    eprintln!("{name}: {} coordinates, worst relative error {worst:.2e}", coords.len());
}

fn dot(y: &Tensor, r: &[f32]) -> f64 {
    y.as_slice().unwrap().iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

#[test]
fn conv2d_input_and_weight() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(1);
    for &(n, c, h, k, ks, stride, pad) in &[
        (2, 3, 7, 4, 3, 1, 1),
        (2, 5, 8, 3, 3, 2, 1),
        (3, 4, 5, 6, 1, 1, 0),
        (1, 2, 6, 3, 3, 2, 0),
        (2, 3, 9, 2, 3, 1, 0),
    ] {
        let spec = ConvSpec { stride, pad, groups: 1 };
        let xd = [n, c, h, h];
        let wd = [k, c, ks, ks];
        let x = rand_vec(&mut rng, xd.iter().product(), -1.0, 1.0);
        let w = rand_vec(&mut rng, wd.iter().product(), -1.0, 1.0);
        let y = d.conv2d_forward(&t(&xd, x.clone()), &t(&wd, w.clone()), spec).unwrap();
        let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
        let dy = t(y.dims(), r.clone());
        let dx = d.conv2d_backward_data(&dy, &t(&wd, w.clone()), &xd, spec).unwrap();
        let dw = d.conv2d_backward_weight(&dy, &t(&xd, x.clone()), &wd, spec).unwrap();
        let tag = format!("conv {xd:?} k{ks} s{stride} p{pad}");
        check(&format!("{tag} dx"), &x, dx.as_slice().unwrap(), 40, &mut |xv| {
            dot(&d.conv2d_forward(&t(&xd, xv.to_vec()), &t(&wd, w.clone()), spec).unwrap(), &r)
        });
        check(&format!("{tag} dw"), &w, dw.as_slice().unwrap(), 40, &mut |wv| {
            dot(&d.conv2d_forward(&t(&xd, x.clone()), &t(&wd, wv.to_vec()), spec).unwrap(), &r)
        });
    }
}

#[test]
fn batchnorm_train_mode_2d_and_1d() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(2);
    for dims in [vec![4, 3, 5, 5], vec![8, 6]] {
        let c = dims[1];
        let x = rand_vec(&mut rng, dims.iter().product(), -2.0, 2.0);
        let gamma = rand_vec(&mut rng, c, 0.5, 1.5);
        let beta = rand_vec(&mut rng, c, -0.5, 0.5);
        let run = |xv: &[f32], g: &[f32], b: &[f32]| {
            let (mut rm, mut rv) = (Tensor::zeros(&[c]), Tensor::full(&[c], 1.0));
            d.batchnorm_forward_train(
                &t(&dims, xv.to_vec()),
                BnTrainParams {
                    gamma: &t(&[c], g.to_vec()),
                    beta: &t(&[c], b.to_vec()),
                    running_mean: &mut rm,
                    running_var: &mut rv,
                    momentum: 0.1,
                    eps: 1e-5,
                },
            )
            .unwrap()
        };
        let (y, saved) = run(&x, &gamma, &beta);
        let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
        let grads =
            d.batchnorm_backward(&t(&dims, r.clone()), &t(&dims, x.clone()), &t(&[c], gamma.clone()), &saved).unwrap();
        let tag = format!("batchnorm {dims:?}");
        check(&format!("{tag} dx"), &x, grads.dx.as_slice().unwrap(), 60, &mut |xv| dot(&run(xv, &gamma, &beta).0, &r));
        check(&format!("{tag} dgamma"), &gamma, grads.dgamma.as_slice().unwrap(), 10, &mut |g| {
            dot(&run(&x, g, &beta).0, &r)
        });
        check(&format!("{tag} dbeta"), &beta, grads.dbeta.as_slice().unwrap(), 10, &mut |b| {
            dot(&run(&x, &gamma, b).0, &r)
        });
    }
}

/// The fused batch norm -> ReLU and batch norm -> ReLU6 ops a training pass uses
/// (`batchnorm_act_forward_train`, `batchnorm_act_backward`) give the two ops' values bit for
/// bit, on maps whose rows are and are not whole SIMD vectors, with outputs on every side of
/// the activation's bounds (0, and 6 for the ReLU6).
#[test]
fn batchnorm_activation_fused_equals_the_two_ops() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(12);
    for act in [Activation::Relu, Activation::Relu6] {
        for dims in [vec![4, 3, 5, 5], vec![8, 6], vec![2, 16, 9, 9], vec![3, 5, 32, 32]] {
            let c = dims[1];
            let n: usize = dims.iter().product();
            let x = t(&dims, rand_vec(&mut rng, n, -2.0, 2.0));
            // For the ReLU6, a scale and shift that take some outputs past 6.
            let (g0, g1, b0, b1) = if act == Activation::Relu { (-1.5, 1.5, -0.5, 0.5) } else { (3.0, 5.0, 1.0, 3.0) };
            let gamma = t(&[c], rand_vec(&mut rng, c, g0, g1));
            let beta = t(&[c], rand_vec(&mut rng, c, b0, b1));
            let dy = t(&dims, rand_vec(&mut rng, n, -1.0, 1.0));
            let stats = || (Tensor::zeros(&[c]), Tensor::full(&[c], 1.0));
            let ((mut rm, mut rv), (mut frm, mut frv)) = (stats(), stats());
            let (y, saved) = d
                .batchnorm_forward_train(
                    &x,
                    BnTrainParams {
                        gamma: &gamma,
                        beta: &beta,
                        running_mean: &mut rm,
                        running_var: &mut rv,
                        momentum: 0.1,
                        eps: 1e-5,
                    },
                )
                .unwrap();
            let z = if act == Activation::Relu { d.relu_forward(&y) } else { d.relu6_forward(&y) }.unwrap();
            let (fz, fsaved) = d
                .batchnorm_act_forward_train(
                    &x,
                    BnTrainParams {
                        gamma: &gamma,
                        beta: &beta,
                        running_mean: &mut frm,
                        running_var: &mut frv,
                        momentum: 0.1,
                        eps: 1e-5,
                    },
                    act,
                )
                .unwrap();
            let tag = format!("{act:?} {dims:?}");
            let zs = z.as_slice().unwrap();
            assert!(zs.contains(&0.0) && zs.iter().any(|&v| v > 0.0 && v < 6.0), "{tag}: both sides of 0");
            if act == Activation::Relu6 {
                assert!(zs.contains(&6.0), "{tag}: outputs clamped at 6");
            }
            assert_eq!(fz.as_slice().unwrap(), zs, "{tag}: forward");
            assert_eq!(frm.as_slice().unwrap(), rm.as_slice().unwrap(), "{tag}: running mean");
            assert_eq!(frv.as_slice().unwrap(), rv.as_slice().unwrap(), "{tag}: running var");
            assert_eq!(fsaved.mean.as_slice().unwrap(), saved.mean.as_slice().unwrap(), "{tag}: saved mean");
            let g = if act == Activation::Relu { d.relu_backward(&dy, &z) } else { d.relu6_backward(&dy, &z) }.unwrap();
            let two = d.batchnorm_backward(&g, &x, &gamma, &saved).unwrap();
            let one = d.batchnorm_act_backward(&dy, &z, &x, &gamma, &saved, act).unwrap();
            let bits = |v: &Tensor| v.as_slice().unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one.dx), bits(&two.dx), "{tag}: dx");
            assert_eq!(bits(&one.dgamma), bits(&two.dgamma), "{tag}: dgamma");
            assert_eq!(bits(&one.dbeta), bits(&two.dbeta), "{tag}: dbeta");
            // Not vacuous: the activation's mask matters, its upper bound too for the ReLU6.
            let unmasked = d.batchnorm_backward(&dy, &x, &gamma, &saved).unwrap();
            assert_ne!(bits(&one.dbeta), bits(&unmasked.dbeta), "{tag}");
            if act == Activation::Relu6 {
                let relu_only = d.batchnorm_act_backward(&dy, &z, &x, &gamma, &saved, Activation::Relu).unwrap();
                assert_ne!(bits(&one.dbeta), bits(&relu_only.dbeta), "{tag}: the mask at 6");
            }
        }
    }
}

#[test]
fn batchnorm_running_statistics_follow_pytorch() {
    let d = dev();
    let x = t(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 6.0]);
    let (mut rm, mut rv) = (Tensor::zeros(&[1]), Tensor::full(&[1], 1.0));
    let (y, _) = d
        .batchnorm_forward_train(
            &x,
            BnTrainParams {
                gamma: &Tensor::full(&[1], 1.0),
                beta: &Tensor::zeros(&[1]),
                running_mean: &mut rm,
                running_var: &mut rv,
                momentum: 0.1,
                eps: 0.0,
            },
        )
        .unwrap();
    // mean 3, biased var 3.5, unbiased var 14/3.
    assert!((rm.as_slice().unwrap()[0] - 0.3).abs() < 1e-6);
    assert!((rv.as_slice().unwrap()[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6);
    let want = [-2.0 / 3.5f32.sqrt(), -1.0 / 3.5f32.sqrt(), 0.0, 3.0 / 3.5f32.sqrt()];
    for (a, b) in y.as_slice().unwrap().iter().zip(want) {
        assert!((a - b).abs() < 1e-5);
    }
    let e = d
        .batchnorm_forward_eval(
            &x,
            BnParams {
                gamma: &Tensor::full(&[1], 2.0),
                beta: &Tensor::full(&[1], 1.0),
                running_mean: &rm,
                running_var: &rv,
                eps: 1e-5,
            },
        )
        .unwrap();
    let inv = 1.0 / (rv.as_slice().unwrap()[0] + 1e-5).sqrt();
    assert!((e.as_slice().unwrap()[3] - (2.0 * (6.0 - 0.3) * inv + 1.0)).abs() < 1e-4);
}

#[test]
fn relu_add_and_fused_add_relu() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(3);
    let dims = [2, 3, 4, 4];
    let n: usize = dims.iter().product();
    let a = away_from_zero(&mut rng, n);
    let b: Vec<f32> = a.iter().map(|v| v * 0.3).collect(); // a+b keeps a's sign, away from 0
    let r = rand_vec(&mut rng, n, -1.0, 1.0);
    let y = d.relu_forward(&t(&dims, a.clone())).unwrap();
    let dx = d.relu_backward(&t(&dims, r.clone()), &y).unwrap();
    check("relu", &a, dx.as_slice().unwrap(), 50, &mut |xv| dot(&d.relu_forward(&t(&dims, xv.to_vec())).unwrap(), &r));
    let s = d.add_relu(&t(&dims, a.clone()), &t(&dims, b.clone())).unwrap();
    let ds = d.relu_backward(&t(&dims, r.clone()), &s).unwrap();
    check("add_relu da", &a, ds.as_slice().unwrap(), 50, &mut |xv| {
        dot(&d.add_relu(&t(&dims, xv.to_vec()), &t(&dims, b.clone())).unwrap(), &r)
    });
    check("add_relu db", &b, ds.as_slice().unwrap(), 50, &mut |xv| {
        dot(&d.add_relu(&t(&dims, a.clone()), &t(&dims, xv.to_vec())).unwrap(), &r)
    });
    let plain = d.add(&t(&dims, a.clone()), &t(&dims, b.clone())).unwrap();
    for ((p, &x), &y) in plain.as_slice().unwrap().iter().zip(&a).zip(&b) {
        assert_eq!(*p, x + y);
    }
}

#[test]
fn option_a_shortcut() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(4);
    for (dims, src, stride) in [
        ([2, 4, 6, 6], vec![-1, -1, 0, 1, 2, 3, -1, -1], 2),
        ([2, 3, 5, 5], vec![2, -1, 0], 1),
        ([1, 3, 7, 7], vec![1, 1, -1, 2, 0], 2),
    ] {
        let x = rand_vec(&mut rng, dims.iter().product(), -1.0, 1.0);
        let y = d.shortcut_forward(&t(&dims, x.clone()), &src, stride).unwrap();
        let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
        let dx = d.shortcut_backward(&t(y.dims(), r.clone()), &src, stride, &dims).unwrap();
        check(&format!("shortcut {dims:?} {src:?} s{stride}"), &x, dx.as_slice().unwrap(), 100, &mut |xv| {
            dot(&d.shortcut_forward(&t(&dims, xv.to_vec()), &src, stride).unwrap(), &r)
        });
    }
    // He et al.'s padding: 16 -> 32 channels puts the inputs at channels 8..24.
    let map = lfgcl::nn::ShortcutA::padding_map(16, 32);
    assert_eq!(map.iter().position(|&s| s == 0), Some(8));
    assert_eq!(map.iter().filter(|&&s| s >= 0).count(), 16);
    assert_eq!(map[23], 15);
    assert_eq!(map[24], -1);
}

#[test]
fn max_pool_and_global_average_pool() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(5);
    let dims = [2, 3, 6, 6];
    let n: usize = dims.iter().product();
    // Distinct values 0.05 apart: a finite-difference step never changes a window's arg-max.
    let mut x: Vec<f32> = (0..n).map(|i| i as f32 * 0.05).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        x.swap(i, j);
    }
    let y = d.maxpool_forward(&t(&dims, x.clone()), 2, 2, 0).unwrap();
    assert_eq!(y.dims(), &[2, 3, 3, 3]);
    let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
    let dx = d.maxpool_backward(&t(y.dims(), r.clone()), &t(&dims, x.clone()), 2, 2, 0).unwrap();
    check("maxpool", &x, dx.as_slice().unwrap(), 80, &mut |xv| {
        dot(&d.maxpool_forward(&t(&dims, xv.to_vec()), 2, 2, 0).unwrap(), &r)
    });
    let xg = rand_vec(&mut rng, n, -1.0, 1.0);
    let g = d.global_avgpool_forward(&t(&dims, xg.clone())).unwrap();
    assert_eq!(g.dims(), &[2, 3]);
    let rg = rand_vec(&mut rng, 6, -1.0, 1.0);
    let dg = d.global_avgpool_backward(&t(&[2, 3], rg.clone()), &dims).unwrap();
    check("global avgpool", &xg, dg.as_slice().unwrap(), 80, &mut |xv| {
        dot(&d.global_avgpool_forward(&t(&dims, xv.to_vec())).unwrap(), &rg)
    });
    // Ties go to the first maximum in row-major window order.
    let tie =
        d.maxpool_backward(&t(&[1, 1, 1, 1], vec![1.0]), &t(&[1, 1, 2, 2], vec![0.0, 3.0, 3.0, 1.0]), 2, 2, 0).unwrap();
    assert_eq!(tie.as_slice().unwrap(), &[0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn linear_with_and_without_bias() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(6);
    let (n, fin, fout) = (5, 7, 4);
    let x = rand_vec(&mut rng, n * fin, -1.0, 1.0);
    let w = rand_vec(&mut rng, fout * fin, -1.0, 1.0);
    let b = rand_vec(&mut rng, fout, -1.0, 1.0);
    let r = rand_vec(&mut rng, n * fout, -1.0, 1.0);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        d.linear_forward(&t(&[n, fin], x.to_vec()), &t(&[fout, fin], w.to_vec()), Some(&t(&[fout], b.to_vec())))
            .unwrap()
    };
    let g = d
        .linear_backward(&t(&[n, fout], r.clone()), &t(&[n, fin], x.clone()), &t(&[fout, fin], w.clone()), true)
        .unwrap();
    check("linear dx", &x, g.dx.as_slice().unwrap(), 35, &mut |v| dot(&fwd(v, &w, &b), &r));
    check("linear dw", &w, g.dw.as_slice().unwrap(), 28, &mut |v| dot(&fwd(&x, v, &b), &r));
    check("linear db", &b, g.db.as_ref().unwrap().as_slice().unwrap(), 4, &mut |v| dot(&fwd(&x, &w, v), &r));
    let nb = d.linear_backward(&t(&[n, fout], r), &t(&[n, fin], x), &t(&[fout, fin], w), false).unwrap();
    assert!(nb.db.is_none());
}

#[test]
fn losses() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(7);
    let (n, c) = (6, 5);
    let z = rand_vec(&mut rng, n * c, -3.0, 3.0);
    let labels: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
    let ce = d.softmax_cross_entropy(&t(&[n, c], z.clone()), &labels).unwrap();
    check("cross entropy", &z, ce.dlogits.as_slice().unwrap(), 30, &mut |v| {
        d.softmax_cross_entropy(&t(&[n, c], v.to_vec()), &labels).unwrap().loss as f64
    });
    let teacher = rand_vec(&mut rng, n * c, -3.0, 3.0);
    for temp in [1.0f32, 4.0] {
        let (_, g) = d.distill_kl(&t(&[n, c], z.clone()), &t(&[n, c], teacher.clone()), temp).unwrap();
        check(&format!("distill kl T={temp}"), &z, g.as_slice().unwrap(), 30, &mut |v| {
            d.distill_kl(&t(&[n, c], v.to_vec()), &t(&[n, c], teacher.clone()), temp).unwrap().0 as f64
        });
    }
    let (kl_self, _) = d.distill_kl(&t(&[n, c], z.clone()), &t(&[n, c], z.clone()), 2.0).unwrap();
    assert!(kl_self.abs() < 1e-6, "KL of identical distributions is zero, got {kl_self}");
    let target = rand_vec(&mut rng, n * c, -1.0, 1.0);
    let (_, gm) = d.mse_loss(&t(&[n, c], z.clone()), &t(&[n, c], target.clone())).unwrap();
    check("mse", &z, gm.as_slice().unwrap(), 30, &mut |v| {
        d.mse_loss(&t(&[n, c], v.to_vec()), &t(&[n, c], target.clone())).unwrap().0 as f64
    });
    for w in [1.0f32, 0.3] {
        let (_, gf) = train::feature_distill(&d, &t(&[n, c], z.clone()), &t(&[n, c], target.clone()), w).unwrap();
        check(&format!("feature distillation w={w}"), &z, gf.as_slice().unwrap(), 30, &mut |v| {
            train::feature_distill(&d, &t(&[n, c], v.to_vec()), &t(&[n, c], target.clone()), w).unwrap().0 as f64
        });
    }
    let (same, _) = train::feature_distill(&d, &t(&[n, c], z.clone()), &t(&[n, c], z.clone()), 1.0).unwrap();
    assert_eq!(same, 0.0, "matching features cost nothing");
    // A unit weight on a zero student: the teacher's second moment over its variance.
    let (zero, _) =
        train::feature_distill(&d, &t(&[n, c], vec![0.0; n * c]), &t(&[n, c], target.clone()), 1.0).unwrap();
    let m = target.iter().map(|&v| v as f64).sum::<f64>() / (n * c) as f64;
    let var = target.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (n * c) as f64;
    let second = target.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (n * c) as f64;
    assert!((zero as f64 - second / var).abs() < 1e-5 * (second / var), "{zero} vs {}", second / var);
    let e =
        train::feature_distill(&d, &t(&[n, c], z.clone()), &t(&[n, c + 1], vec![0.0; n * (c + 1)]), 1.0).unwrap_err();
    assert!(e.to_string().contains("--streams"), "{e}");
    // Uniform logits: loss is ln(C); arg-max ties go to class 0.
    let flat = d.softmax_cross_entropy(&t(&[2, 4], vec![0.0; 8]), &[0, 1]).unwrap();
    assert!((flat.loss - 4f32.ln()).abs() < 1e-6);
    assert_eq!(flat.correct, 1);
}

/// Gradient of a whole network's loss with respect to a few of its parameters, by finite
/// differences through full forward passes: checks the graph's backward (residual gradient
/// accumulation, shortcuts, pooling, flatten) end to end.
/// With `feature_weight > 0` the loss also holds feature distillation of the penultimate
/// features towards a fixed random target, whose gradient enters the backward pass there.
fn check_network(model: &str, input: [usize; 3], classes: usize, batch: usize, samples: usize, feature_weight: f32) {
    let d = dev();
    let arch = Arch::new(model, input[0], input[1], classes).unwrap();
    let mut graph = arch.build_graph(3).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let xd = [batch, input[0], input[1], input[2]];
    let x = rand_vec(&mut rng, xd.iter().product(), -1.0, 1.0);
    let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
    let penultimate = graph.nodes.last().unwrap().inputs[0];
    let taps: Vec<usize> = if feature_weight > 0.0 { vec![penultimate] } else { Vec::new() };
    let target = {
        let (_, f) = graph.forward_taps(&d, t(&xd, x.clone()), Mode::Train, &[penultimate]).unwrap();
        let dims = f[0].dims().to_vec();
        t(&dims, rand_vec(&mut rng, f[0].numel(), -1.0, 1.0))
    };
    let loss_of = |g: &mut lfgcl::nn::Graph| {
        let (logits, f) = g.forward_taps(&d, t(&xd, x.clone()), Mode::Train, &taps).unwrap();
        let ce = d.softmax_cross_entropy(&logits, &labels).unwrap().loss as f64;
        match f.first() {
            Some(f) => ce + train::feature_distill(&d, f, &target, feature_weight).unwrap().0 as f64,
            None => ce,
        }
    };
    let trace = graph.forward_train(&d, t(&xd, x.clone())).unwrap();
    let ce = d.softmax_cross_entropy(trace.output(), &labels).unwrap();
    let inner = if feature_weight > 0.0 {
        let f = trace.value(penultimate).expect("penultimate value kept");
        vec![(penultimate, train::feature_distill(&d, f, &target, feature_weight).unwrap().1)]
    } else {
        Vec::new()
    };
    graph.zero_grad();
    graph.backward_with(&d, trace, ce.dlogits, inner).unwrap();
    // Parameters to probe: the first conv, an inner conv, a BN weight, the classifier.
    let mut names: Vec<String> = Vec::new();
    graph
        .visit_params_mut(|name, _| {
            names.push(name.to_string());
            Ok(())
        })
        .unwrap();
    let probe: Vec<String> =
        [0, names.len() / 3, names.len() / 2, names.len() - 2].iter().map(|&i| names[i].clone()).collect();
    for name in probe {
        let (value, grad) = {
            let mut out = None;
            graph
                .visit_params_mut(|n, p| {
                    if n == name {
                        out = Some((p.value.to_vec()?, p.grad.as_ref().expect("gradient").to_vec()?));
                    }
                    Ok(())
                })
                .unwrap();
            out.unwrap()
        };
        let set = |g: &mut lfgcl::nn::Graph, v: &[f32]| {
            g.visit_params_mut(|n, p| {
                if n == name {
                    p.value = Tensor::from_vec(p.value.dims(), v.to_vec())?;
                }
                Ok(())
            })
            .unwrap();
        };
        let mut g2 = arch.build_graph(3).unwrap();
        // A small step: a whole network has ReLU kinks everywhere, which a large step crosses.
        check_step(&format!("{model} {name}"), &value, &grad, samples, NET_STEP, &mut |v| {
            set(&mut g2, v);
            loss_of(&mut g2)
        });
    }
}

#[test]
fn resnet_end_to_end() {
    check_network("resnet8", [3, 8, 8], 4, 4, 6, 0.0);
}

#[test]
fn smallcnn_end_to_end() {
    check_network("smallcnn", [1, 12, 12], 3, 4, 6, 0.0);
}

#[test]
fn resnet_with_feature_distillation_end_to_end() {
    // The feature term alone is checked in `losses`; here its gradient enters at the pooled
    // features and flows back through the blocks with the cross-entropy's.
    check_network("resnet8", [3, 8, 8], 4, 4, 6, 2.0);
}

#[test]
fn vgg16_end_to_end() {
    check_network("vgg16", [3, 32, 32], 5, 8, 3, 0.0);
}

/// Grouped convolutions (ResNeXt's grouped 3x3, MobileNetV2's depthwise 3x3) on the default
/// backend (the depthwise fast kernel where it applies) and the exact one (per-group im2col +
/// GEMM): groups 2 and 4, depthwise at stride 1 and 2 with widths that leave vector tails.
#[test]
fn grouped_and_depthwise_conv() {
    let mut rng = StdRng::seed_from_u64(11);
    for d in [backend::cpu(), backend::cpu_exact()] {
        for &(n, c, h, w, k, ks, stride, pad, groups) in &[
            (2, 4, 7, 6, 6, 3, 1, 1, 2),
            (2, 8, 6, 7, 4, 3, 2, 1, 4),
            (1, 4, 5, 5, 8, 1, 1, 0, 4),
            (2, 6, 9, 8, 6, 3, 1, 0, 2),
            (2, 3, 7, 21, 3, 3, 1, 1, 3),
            (2, 5, 9, 19, 5, 3, 2, 1, 5),
            (1, 4, 8, 8, 4, 3, 2, 1, 4),
            (1, 2, 6, 35, 4, 3, 1, 1, 2),
        ] {
            let spec = ConvSpec { stride, pad, groups };
            let xd = [n, c, h, w];
            let wd = [k, c / groups, ks, ks];
            let x = rand_vec(&mut rng, xd.iter().product(), -1.0, 1.0);
            let wv = rand_vec(&mut rng, wd.iter().product(), -1.0, 1.0);
            let y = d.conv2d_forward(&t(&xd, x.clone()), &t(&wd, wv.clone()), spec).unwrap();
            let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
            let dy = t(y.dims(), r.clone());
            let dx = d.conv2d_backward_data(&dy, &t(&wd, wv.clone()), &xd, spec).unwrap();
            let dw = d.conv2d_backward_weight(&dy, &t(&xd, x.clone()), &wd, spec).unwrap();
            let tag = format!("{} conv {xd:?} k{ks} s{stride} p{pad} g{groups}", d.describe());
            check(&format!("{tag} dx"), &x, dx.as_slice().unwrap(), 40, &mut |xv| {
                dot(&d.conv2d_forward(&t(&xd, xv.to_vec()), &t(&wd, wv.clone()), spec).unwrap(), &r)
            });
            check(&format!("{tag} dw"), &wv, dw.as_slice().unwrap(), 40, &mut |wq| {
                dot(&d.conv2d_forward(&t(&xd, x.clone()), &t(&wd, wq.to_vec()), spec).unwrap(), &r)
            });
        }
    }
}

#[test]
fn relu6() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(12);
    let dims = [2, 3, 5, 7];
    let n: usize = dims.iter().product();
    // Away from both kinks (0 and 6) by at least 0.1, with values below, between and above.
    let x: Vec<f32> = (0..n)
        .map(|_| match rng.random_range(0..3) {
            0 => rng.random_range(-2.0f32..-0.1),
            1 => rng.random_range(0.1f32..5.9),
            _ => rng.random_range(6.1f32..8.0),
        })
        .collect();
    let y = d.relu6_forward(&t(&dims, x.clone())).unwrap();
    for (a, b) in x.iter().zip(y.as_slice().unwrap()) {
        assert_eq!(*b, a.clamp(0.0, 6.0));
    }
    let r = rand_vec(&mut rng, n, -1.0, 1.0);
    let dx = d.relu6_backward(&t(&dims, r.clone()), &y).unwrap();
    check("relu6", &x, dx.as_slice().unwrap(), 80, &mut |xv| {
        dot(&d.relu6_forward(&t(&dims, xv.to_vec())).unwrap(), &r)
    });
}

/// ResNet's stem pool: kernel 3, stride 2, pad 1, so border windows hang over the padding.
#[test]
fn padded_max_pool() {
    let d = dev();
    let mut rng = StdRng::seed_from_u64(13);
    for dims in [[2, 3, 7, 7], [1, 2, 8, 6]] {
        let n: usize = dims.iter().product();
        // Distinct negative values (padding must never win) 0.05 apart.
        let mut x: Vec<f32> = (0..n).map(|i| -0.1 - i as f32 * 0.05).collect();
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            x.swap(i, j);
        }
        let y = d.maxpool_forward(&t(&dims, x.clone()), 3, 2, 1).unwrap();
        let (oh, ow) = ((dims[2] + 2 - 3) / 2 + 1, (dims[3] + 2 - 3) / 2 + 1);
        assert_eq!(y.dims(), &[dims[0], dims[1], oh, ow]);
        assert!(y.as_slice().unwrap().iter().all(|&v| v < 0.0), "padding won a window");
        let r = rand_vec(&mut rng, y.numel(), -1.0, 1.0);
        let dx = d.maxpool_backward(&t(y.dims(), r.clone()), &t(&dims, x.clone()), 3, 2, 1).unwrap();
        check(&format!("maxpool k3 s2 p1 {dims:?}"), &x, dx.as_slice().unwrap(), 80, &mut |xv| {
            dot(&d.maxpool_forward(&t(&dims, xv.to_vec()), 3, 2, 1).unwrap(), &r)
        });
    }
    // All ties (and negative, below the padding's 0): each window's first real cell in row-major
    // order wins, for the corner windows hanging over the border as for the others.
    let x = t(&[1, 1, 4, 4], vec![-1.0; 16]);
    let y = d.maxpool_forward(&x, 3, 2, 1).unwrap();
    assert_eq!(y.as_slice().unwrap(), &[-1.0; 4]);
    let dx = d.maxpool_backward(&t(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]), &x, 3, 2, 1).unwrap();
    #[rustfmt::skip]
    let want = [1.0, 2.0, 0.0, 0.0,
                3.0, 4.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0];
    assert_eq!(dx.as_slice().unwrap(), &want);
    // Ties between windows: a cell that is the max of several windows gets all their gradients.
    let mut v = vec![0.0f32; 16];
    v[5] = 9.0; // (1, 1): inside all four windows
    let dx = d.maxpool_backward(&t(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]), &t(&[1, 1, 4, 4], v), 3, 2, 1).unwrap();
    assert_eq!(dx.as_slice().unwrap()[5], 10.0);
    assert_eq!(dx.as_slice().unwrap().iter().sum::<f32>(), 10.0);
}
