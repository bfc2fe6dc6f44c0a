//! One table of bad inputs, one per shape check of every op family, run against every backend
//! present: each must be refused, with the error variant the table names, and every backend
//! must give the same variant and message (the checks live once, in `backend::shape`). Without
//! a GPU only the CPU runs (the CUDA half prints a skip line; `LFGCL_REQUIRE_GPU=1` fails it).

#[path = "common/gpu.rs"]
mod gpu;

use lfgcl::backend::{self, Activation, BnParams, BnSaved, BnTrainParams, ConvEpilogue, ConvSpec, Device, SgdStep};
use lfgcl::{Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shape,
    Invalid,
}

/// A tensor of `dims` on `dev`, filled with small distinct values.
fn t(dev: &Device, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    dev.from_host(dims, &v).expect("tensor on the device")
}

/// Batch-norm training forward of an input of `x` dims with `gamma` weights and 3 of the rest.
fn bn_train(d: &Device, x: &[usize], gamma: usize) -> Result<()> {
    let (mut m, mut v) = (t(d, &[3]), t(d, &[3]));
    let p = BnTrainParams {
        gamma: &t(d, &[gamma]),
        beta: &t(d, &[3]),
        running_mean: &mut m,
        running_var: &mut v,
        momentum: 0.1,
        eps: 1e-5,
    };
    d.batchnorm_forward_train(&t(d, x), p).map(drop)
}

type Case = (&'static str, Kind, fn(&Device) -> Result<()>);

const S1: ConvSpec = ConvSpec { stride: 1, pad: 1, groups: 1 };

fn cases() -> Vec<Case> {
    vec![
        // ---- convolution
        ("conv input rank 3", Kind::Shape, |d| d.conv2d_forward(&t(d, &[3, 8, 8]), &t(d, &[4, 3, 3, 3]), S1).map(drop)),
        ("conv channels differ", Kind::Shape, |d| {
            d.conv2d_forward(&t(d, &[1, 2, 8, 8]), &t(d, &[4, 3, 3, 3]), S1).map(drop)
        }),
        ("conv stride 0", Kind::Invalid, |d| {
            d.conv2d_forward(&t(d, &[1, 3, 8, 8]), &t(d, &[4, 3, 3, 3]), ConvSpec { stride: 0, pad: 1, groups: 1 })
                .map(drop)
        }),
        ("conv kernel larger than input", Kind::Shape, |d| {
            d.conv2d_forward(&t(d, &[1, 3, 2, 2]), &t(d, &[4, 3, 5, 5]), ConvSpec { stride: 1, pad: 0, groups: 1 })
                .map(drop)
        }),
        ("conv backward data dy", Kind::Shape, |d| {
            d.conv2d_backward_data(&t(d, &[1, 4, 7, 8]), &t(d, &[4, 3, 3, 3]), &[1, 3, 8, 8], S1).map(drop)
        }),
        ("conv backward weight dy", Kind::Shape, |d| {
            d.conv2d_backward_weight(&t(d, &[1, 5, 8, 8]), &t(d, &[1, 3, 8, 8]), &[4, 3, 3, 3], S1).map(drop)
        }),
        ("fused conv scale length", Kind::Shape, |d| {
            let (sc, sh) = (t(d, &[3]), t(d, &[4]));
            let epi = ConvEpilogue { scale: &sc, shift: &sh, residual: None, act: Activation::Relu };
            d.conv2d_forward_fused(&t(d, &[1, 3, 8, 8]), &t(d, &[4, 3, 3, 3]), S1, &epi).map(drop)
        }),
        ("fused conv residual shape", Kind::Shape, |d| {
            let (sc, sh, r) = (t(d, &[4]), t(d, &[4]), t(d, &[1, 4, 8, 7]));
            let epi = ConvEpilogue { scale: &sc, shift: &sh, residual: Some(&r), act: Activation::Identity };
            d.conv2d_forward_fused(&t(d, &[1, 3, 8, 8]), &t(d, &[4, 3, 3, 3]), S1, &epi).map(drop)
        }),
        ("conv groups 0", Kind::Invalid, |d| {
            d.conv2d_forward(&t(d, &[1, 4, 8, 8]), &t(d, &[4, 4, 3, 3]), ConvSpec { stride: 1, pad: 1, groups: 0 })
                .map(drop)
        }),
        ("conv groups not dividing input channels", Kind::Invalid, |d| {
            d.conv2d_forward(&t(d, &[1, 6, 8, 8]), &t(d, &[8, 1, 3, 3]), ConvSpec { stride: 1, pad: 1, groups: 4 })
                .map(drop)
        }),
        ("conv groups not dividing output channels", Kind::Invalid, |d| {
            d.conv2d_forward(&t(d, &[1, 8, 8, 8]), &t(d, &[6, 2, 3, 3]), ConvSpec { stride: 1, pad: 1, groups: 4 })
                .map(drop)
        }),
        ("conv weight in-dim not in/groups", Kind::Shape, |d| {
            d.conv2d_forward(&t(d, &[1, 8, 8, 8]), &t(d, &[8, 4, 3, 3]), ConvSpec { stride: 1, pad: 1, groups: 4 })
                .map(drop)
        }),
        ("depthwise weight in-dim not 1", Kind::Shape, |d| {
            d.conv2d_forward(&t(d, &[1, 8, 8, 8]), &t(d, &[8, 8, 3, 3]), ConvSpec { stride: 1, pad: 1, groups: 8 })
                .map(drop)
        }),
        ("grouped conv backward data groups", Kind::Invalid, |d| {
            let spec = ConvSpec { stride: 1, pad: 1, groups: 3 };
            d.conv2d_backward_data(&t(d, &[1, 4, 8, 8]), &t(d, &[4, 1, 3, 3]), &[1, 4, 8, 8], spec).map(drop)
        }),
        ("grouped conv backward data weight in-dim", Kind::Shape, |d| {
            let spec = ConvSpec { stride: 1, pad: 1, groups: 2 };
            d.conv2d_backward_data(&t(d, &[1, 4, 8, 8]), &t(d, &[4, 1, 3, 3]), &[1, 4, 8, 8], spec).map(drop)
        }),
        ("grouped conv backward weight groups 0", Kind::Invalid, |d| {
            let spec = ConvSpec { stride: 1, pad: 1, groups: 0 };
            d.conv2d_backward_weight(&t(d, &[1, 4, 8, 8]), &t(d, &[1, 4, 8, 8]), &[4, 1, 3, 3], spec).map(drop)
        }),
        ("grouped conv backward weight dims", Kind::Shape, |d| {
            let spec = ConvSpec { stride: 1, pad: 1, groups: 4 };
            d.conv2d_backward_weight(&t(d, &[1, 4, 8, 8]), &t(d, &[1, 4, 8, 8]), &[4, 2, 3, 3], spec).map(drop)
        }),
        ("grouped fused conv groups", Kind::Invalid, |d| {
            let (sc, sh) = (t(d, &[4]), t(d, &[4]));
            let epi = ConvEpilogue { scale: &sc, shift: &sh, residual: None, act: Activation::Relu6 };
            let spec = ConvSpec { stride: 1, pad: 1, groups: 8 };
            d.conv2d_forward_fused(&t(d, &[1, 8, 8, 8]), &t(d, &[4, 1, 3, 3]), spec, &epi).map(drop)
        }),
        // ---- batch norm
        ("bn train input rank 3", Kind::Shape, |d| bn_train(d, &[2, 3, 4], 3)),
        ("bn train weight length", Kind::Shape, |d| bn_train(d, &[2, 3, 4, 4], 2)),
        ("bn train one value per channel", Kind::Shape, |d| bn_train(d, &[1, 3, 1, 1], 3)),
        ("bn eval running_var length", Kind::Shape, |d| {
            d.batchnorm_forward_eval(
                &t(d, &[2, 3]),
                BnParams {
                    gamma: &t(d, &[3]),
                    beta: &t(d, &[3]),
                    running_mean: &t(d, &[3]),
                    running_var: &t(d, &[4]),
                    eps: 1e-5,
                },
            )
            .map(drop)
        }),
        ("bn backward dy", Kind::Shape, |d| {
            let saved = BnSaved { mean: t(d, &[3]), invstd: t(d, &[3]) };
            d.batchnorm_backward(&t(d, &[2, 3, 4, 5]), &t(d, &[2, 3, 4, 4]), &t(d, &[3]), &saved).map(drop)
        }),
        ("bn backward saved invstd", Kind::Shape, |d| {
            let saved = BnSaved { mean: t(d, &[3]), invstd: t(d, &[2]) };
            d.batchnorm_backward(&t(d, &[2, 3, 4, 4]), &t(d, &[2, 3, 4, 4]), &t(d, &[3]), &saved).map(drop)
        }),
        ("bn fold weight rank 2", Kind::Shape, |d| {
            d.batchnorm_fold(BnParams {
                gamma: &t(d, &[3, 1]),
                beta: &t(d, &[3]),
                running_mean: &t(d, &[3]),
                running_var: &t(d, &[3]),
                eps: 1e-5,
            })
            .map(drop)
        }),
        // ---- element-wise
        ("relu backward shapes", Kind::Shape, |d| d.relu_backward(&t(d, &[2, 3]), &t(d, &[3, 2])).map(drop)),
        ("relu6 backward shapes", Kind::Shape, |d| d.relu6_backward(&t(d, &[2, 3]), &t(d, &[3, 2])).map(drop)),
        ("add shapes", Kind::Shape, |d| d.add(&t(d, &[2, 3]), &t(d, &[6])).map(drop)),
        ("add_relu shapes", Kind::Shape, |d| d.add_relu(&t(d, &[2, 3]), &t(d, &[2, 4])).map(drop)),
        ("add_assign shapes", Kind::Shape, |d| d.add_assign(&mut t(d, &[2, 3]), &t(d, &[2, 4]))),
        // ---- pooling
        ("maxpool kernel 0", Kind::Invalid, |d| d.maxpool_forward(&t(d, &[1, 2, 4, 4]), 0, 1, 0).map(drop)),
        ("maxpool stride 0", Kind::Invalid, |d| d.maxpool_forward(&t(d, &[1, 2, 4, 4]), 2, 0, 0).map(drop)),
        ("maxpool window larger than input", Kind::Shape, |d| {
            d.maxpool_forward(&t(d, &[1, 2, 3, 3]), 4, 4, 0).map(drop)
        }),
        ("maxpool input rank 2", Kind::Shape, |d| d.maxpool_forward(&t(d, &[4, 4]), 2, 2, 0).map(drop)),
        ("maxpool backward dy", Kind::Shape, |d| {
            d.maxpool_backward(&t(d, &[1, 2, 3, 2]), &t(d, &[1, 2, 4, 4]), 2, 2, 0).map(drop)
        }),
        ("global avgpool rank 3", Kind::Shape, |d| d.global_avgpool_forward(&t(d, &[2, 3, 4])).map(drop)),
        ("global avgpool empty map", Kind::Shape, |d| d.global_avgpool_forward(&t(d, &[2, 3, 0, 4])).map(drop)),
        ("global avgpool backward dy", Kind::Shape, |d| {
            d.global_avgpool_backward(&t(d, &[2, 4]), &[2, 3, 4, 4]).map(drop)
        }),
        // ---- shortcut
        ("shortcut channel map", Kind::Invalid, |d| d.shortcut_forward(&t(d, &[1, 3, 4, 4]), &[0, -1, 3], 2).map(drop)),
        ("shortcut stride 0", Kind::Invalid, |d| d.shortcut_forward(&t(d, &[1, 3, 4, 4]), &[0, 1], 0).map(drop)),
        ("shortcut input rank 3", Kind::Shape, |d| d.shortcut_forward(&t(d, &[3, 4, 4]), &[0], 1).map(drop)),
        ("shortcut backward dy", Kind::Shape, |d| {
            d.shortcut_backward(&t(d, &[1, 2, 4, 4]), &[0, 1], 2, &[1, 3, 4, 4]).map(drop)
        }),
        ("shortcut backward channel map", Kind::Invalid, |d| {
            d.shortcut_backward(&t(d, &[1, 1, 2, 2]), &[7], 2, &[1, 3, 4, 4]).map(drop)
        }),
        // ---- linear
        ("linear widths", Kind::Shape, |d| d.linear_forward(&t(d, &[2, 5]), &t(d, &[3, 4]), None).map(drop)),
        ("linear bias", Kind::Shape, |d| d.linear_forward(&t(d, &[2, 4]), &t(d, &[3, 4]), Some(&t(d, &[4]))).map(drop)),
        ("linear backward dy", Kind::Shape, |d| {
            d.linear_backward(&t(d, &[2, 4]), &t(d, &[2, 4]), &t(d, &[3, 4]), true).map(drop)
        }),
        // ---- losses
        ("cross entropy label count", Kind::Shape, |d| d.softmax_cross_entropy(&t(d, &[3, 4]), &[0, 1]).map(drop)),
        ("cross entropy label range", Kind::Invalid, |d| d.softmax_cross_entropy(&t(d, &[3, 4]), &[0, 4, 1]).map(drop)),
        ("cross entropy no classes", Kind::Shape, |d| d.softmax_cross_entropy(&t(d, &[3, 0]), &[0, 0, 0]).map(drop)),
        ("cross entropy logits rank 3", Kind::Shape, |d| {
            d.softmax_cross_entropy(&t(d, &[3, 4, 1]), &[0, 0, 0]).map(drop)
        }),
        ("distill shapes", Kind::Shape, |d| d.distill_kl(&t(d, &[3, 4]), &t(d, &[3, 5]), 4.0).map(drop)),
        ("distill temperature", Kind::Invalid, |d| d.distill_kl(&t(d, &[3, 4]), &t(d, &[3, 4]), 0.0).map(drop)),
        ("mse shapes", Kind::Shape, |d| d.mse_loss(&t(d, &[3, 4]), &t(d, &[4, 3])).map(drop)),
        // ---- optimiser
        ("sgd gradient shape", Kind::Shape, |d| {
            let hp = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
            d.sgd_step(&mut t(d, &[4]), &t(d, &[5]), &mut t(d, &[4]), hp)
        }),
        ("sgd momentum shape", Kind::Shape, |d| {
            let hp = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
            d.sgd_step(&mut t(d, &[4]), &t(d, &[4]), &mut t(d, &[2, 2]), hp)
        }),
        // ---- pruning and search
        ("index_select axis", Kind::Shape, |d| d.index_select(&t(d, &[2, 3]), 2, &[0]).map(drop)),
        ("index_select index", Kind::Invalid, |d| d.index_select(&t(d, &[2, 3]), 1, &[0, 3]).map(drop)),
        ("gather_candidates index", Kind::Invalid, |d| {
            d.gather_candidates(&t(d, &[4, 3, 3, 3]), 0, &[&[0, 1], &[2, 4]]).map(drop)
        }),
        ("gather_candidates axis", Kind::Shape, |d| d.gather_candidates(&t(d, &[4, 3]), 2, &[&[0]]).map(drop)),
        ("feature_mse shapes", Kind::Shape, |d| d.feature_mse(&t(d, &[3, 5]), &t(d, &[4])).map(drop)),
    ]
}

fn kind(e: &Error) -> Option<Kind> {
    match e {
        Error::Shape(_) => Some(Kind::Shape),
        Error::Invalid(_) => Some(Kind::Invalid),
        _ => None,
    }
}

/// Each case's error on `dev`, checked against the table's variant.
fn errors(dev: &Device) -> Vec<String> {
    cases()
        .into_iter()
        .map(|(name, want, run)| match run(dev) {
            Ok(()) => panic!("{name}: {} accepted a bad input", dev.describe()),
            Err(e) => {
                assert_eq!(kind(&e), Some(want), "{name}: {} gave {e:?}", dev.describe());
                format!("{e:?}")
            }
        })
        .collect()
}

#[test]
fn cpu_refuses_every_bad_shape_with_the_tabled_variant() {
    let cpu = errors(&backend::cpu());
    // Messages name the trait method, so a user can find the op.
    for (msg, (name, _, _)) in cpu.iter().zip(cases()) {
        assert!(!msg.is_empty(), "{name}");
    }
    // The reference-math CPU backend shares the checks.
    assert_eq!(cpu, errors(&backend::cpu_reference()));
}

#[test]
fn cuda_gives_the_same_errors_as_the_cpu() {
    let Some(gpu) = gpu::cuda_or_skip("cuda_gives_the_same_errors_as_the_cpu") else {
        return;
    };
    let (cpu, cuda) = (errors(&backend::cpu()), errors(&gpu));
    for ((c, g), (name, _, _)) in cpu.iter().zip(&cuda).zip(cases()) {
        assert_eq!(c, g, "{name}: CPU and CUDA errors differ");
    }
}
