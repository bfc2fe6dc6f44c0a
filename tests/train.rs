//! Training: optimiser semantics, schedules, determinism, label-free distillation, and a quick
//! real-data run on Fashion-MNIST.

use lfgcl::backend::{self, SgdStep};
use lfgcl::data::{self, OpenOptions, Split};
use lfgcl::models::{Arch, Model};
use lfgcl::nn::StateRef;
use lfgcl::train::{self, LrSchedule, Objective, TrainConfig};
use lfgcl::Tensor;

#[test]
fn sgd_follows_pytorch_semantics() {
    let dev = backend::cpu();
    for nesterov in [false, true] {
        let mut p = Tensor::from_vec(&[2], vec![1.0, -2.0]).unwrap();
        let mut buf = Tensor::zeros(&[2]);
        let hp = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 0.01, nesterov };
        let (mut pr, mut br) = ([1.0f64, -2.0], [0.0f64, 0.0]);
        for step in 0..3 {
            let g = [0.5f64 + step as f64, -0.25];
            dev.sgd_step(&mut p, &Tensor::from_vec(&[2], g.iter().map(|&v| v as f32).collect()).unwrap(), &mut buf, hp)
                .unwrap();
            for i in 0..2 {
                let d = g[i] + 0.01 * pr[i];
                br[i] = 0.9 * br[i] + d;
                let s = if nesterov { d + 0.9 * br[i] } else { br[i] };
                pr[i] -= 0.1 * s;
            }
        }
        for (a, b) in p.as_slice().unwrap().iter().zip(pr) {
            assert!((*a as f64 - b).abs() < 1e-6, "nesterov={nesterov}: {a} vs {b}");
        }
    }
}

#[test]
fn schedules() {
    let cos = LrSchedule::Cosine { min_lr: 0.0 };
    assert!((cos.lr(0.1, 0.0, 10, 0.0) - 0.1).abs() < 1e-7);
    assert!((cos.lr(0.1, 5.0, 10, 0.0) - 0.05).abs() < 1e-6);
    assert!(cos.lr(0.1, 10.0, 10, 0.0).abs() < 1e-7);
    let step = LrSchedule::parse("step:3,6@0.5", 10).unwrap();
    assert_eq!(step, LrSchedule::Step { milestones: vec![3, 6], gamma: 0.5 });
    assert!((step.lr(0.1, 2.9, 10, 0.0) - 0.1).abs() < 1e-7);
    assert!((step.lr(0.1, 3.0, 10, 0.0) - 0.05).abs() < 1e-7);
    assert!((step.lr(0.1, 7.0, 10, 0.0) - 0.025).abs() < 1e-7);
    assert_eq!(LrSchedule::parse("step", 100).unwrap(), LrSchedule::Step { milestones: vec![50, 75], gamma: 0.1 });
    // Warm-up ramps from lr/10.
    assert!((LrSchedule::Constant.lr(0.1, 0.0, 10, 1.0) - 0.01).abs() < 1e-7);
    assert!((LrSchedule::Constant.lr(0.1, 1.0, 10, 1.0) - 0.1).abs() < 1e-7);
    assert!(LrSchedule::parse("linear", 10).is_err());
}

fn small_run(seed: u64) -> (Vec<f64>, Vec<f32>) {
    let dev = backend::cpu();
    let train_ds =
        data::open("synthetic", Split::Train, &OpenOptions { limit: Some(512), ..Default::default() }).unwrap();
    let test = data::open("synthetic", Split::Test, &OpenOptions { limit: Some(200), ..Default::default() }).unwrap();
    let mut m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &dev, seed).unwrap();
    let cfg = TrainConfig { epochs: 2, batch_size: 32, lr: 0.05, seed, progress: false, ..TrainConfig::default() };
    let logs =
        train::fit(&mut m, &dev, &train_ds, Some(&test), &cfg, &mut Objective::Labels, &mut |_, _| Ok(())).unwrap();
    let losses = logs.iter().map(|l| l.train_loss).collect();
    let conv = m.graph.state().into_iter().find(|(n, _)| n == "conv2.weight").unwrap();
    let StateRef::F32(w) = conv.1 else { panic!() };
    (losses, w.to_vec().unwrap())
}

#[test]
fn seeded_training_is_reproducible_and_learns() {
    let (l1, w1) = small_run(4);
    let (l2, w2) = small_run(4);
    assert_eq!(l1, l2, "same seed, same losses");
    assert_eq!(w1, w2, "same seed, same weights");
    assert!(l1[1] < l1[0], "loss falls: {l1:?}");
    let (_, w3) = small_run(5);
    assert_ne!(w1, w3);
}

#[test]
fn label_free_distillation_trains_a_student_without_labels() {
    let dev = backend::cpu();
    let train_ds =
        data::open("synthetic", Split::Train, &OpenOptions { limit: Some(1024), ..Default::default() }).unwrap();
    let test = data::open("synthetic", Split::Test, &OpenOptions { limit: Some(300), ..Default::default() }).unwrap();
    let mut teacher = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &dev, 1).unwrap();
    let cfg = TrainConfig { epochs: 2, batch_size: 32, lr: 0.05, progress: false, ..TrainConfig::default() };
    train::fit(&mut teacher, &dev, &train_ds, None, &cfg, &mut Objective::Labels, &mut |_, _| Ok(())).unwrap();
    let teacher_acc = train::evaluate(&mut teacher, &dev, &test, 100, false).unwrap().top1;
    let mut student =
        Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap().with_widths(vec![8, 16, 32]).unwrap(), &dev, 2).unwrap();
    student.normalization = teacher.normalization.clone();
    let unlabeled = train_ds.clone().without_labels();
    let logs = train::fit(
        &mut student,
        &dev,
        &unlabeled,
        Some(&test),
        &TrainConfig { epochs: 3, ..cfg.clone() },
        &mut Objective::Distill { teacher: &mut teacher, temperature: 4.0, feature_weight: 0.0 },
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert!(logs[2].train_loss < logs[0].train_loss, "distillation loss falls: {logs:?}");
    assert!(logs[2].train_top1.is_none(), "no label was read");
    let acc = logs[2].test_top1.unwrap();
    assert!(acc > 0.5 * teacher_acc, "student {acc} learned from teacher {teacher_acc} without labels");
    // Feature distillation beside KL: a student of the teacher's penultimate width trains on it
    // and its feature gap to the teacher shrinks; one of another width there is refused.
    let mut matched = Model::new(
        Arch::new("smallcnn", 3, 32, 10).unwrap().with_widths(vec![8, 16, teacher.arch.widths[2]]).unwrap(),
        &dev,
        3,
    )
    .unwrap();
    matched.normalization = teacher.normalization.clone();
    let feature_gap = |s: &mut Model, t: &mut Model| {
        let loader = data::Loader::try_new(&unlabeled, 64, s.normalization.as_ref().unwrap()).unwrap();
        let batch = loader.epoch(0).next().unwrap();
        let x = dev.from_host(&batch.dims, &batch.images).unwrap();
        let (sp, tp) = (s.penultimate_node(), t.penultimate_node());
        let (_, sf) = s.graph.forward_taps(&dev, dev.copy(&x).unwrap(), lfgcl::nn::Mode::Eval, &[sp]).unwrap();
        let (_, tf) = t.graph.forward_taps(&dev, x, lfgcl::nn::Mode::Eval, &[tp]).unwrap();
        train::feature_distill(&dev, &sf[0], &tf[0], 1.0).unwrap().0
    };
    // The default weight: on for the student that keeps the teacher's penultimate width, off
    // for the one that does not (it would be refused); a given weight stands either way.
    assert_eq!(train::feature_weight_for(None, &matched, &teacher), train::DEFAULT_FEATURE_WEIGHT);
    const { assert!(train::DEFAULT_FEATURE_WEIGHT > 0.0) };
    assert_eq!(train::feature_weight_for(None, &student, &teacher), 0.0);
    assert_eq!(train::feature_weight_for(Some(0.0), &matched, &teacher), 0.0);
    assert_eq!(train::feature_weight_for(Some(2.5), &student, &teacher), 2.5);
    let gap_before = feature_gap(&mut matched, &mut teacher);
    let feature_cfg = TrainConfig { epochs: 2, ..cfg.clone() };
    let mut with_features = Objective::Distill { teacher: &mut teacher, temperature: 4.0, feature_weight: 1.0 };
    let flogs =
        train::fit(&mut matched, &dev, &unlabeled, Some(&test), &feature_cfg, &mut with_features, &mut |_, _| Ok(()))
            .unwrap();
    let gap_after = feature_gap(&mut matched, &mut teacher);
    assert!(gap_after < 0.5 * gap_before, "feature gap {gap_before} -> {gap_after}: {flogs:?}");
    let mut with_features = Objective::Distill { teacher: &mut teacher, temperature: 4.0, feature_weight: 1.0 };
    let e = train::fit(&mut student, &dev, &unlabeled, None, &feature_cfg, &mut with_features, &mut |_, _| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("penultimate features"), "{e}");
    // Training with labels on unlabeled data is a clear error.
    let e =
        train::fit(&mut student, &dev, &unlabeled, None, &cfg, &mut Objective::Labels, &mut |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("no labels"), "{e}");
}

#[test]
fn fashion_mnist_real_data_quick_run() {
    if !std::path::Path::new(data::FASHION_MNIST_DEFAULT_DIR).exists() {
        eprintln!("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let dev = backend::cpu();
    let train_ds =
        data::open("fashion-mnist", Split::Train, &OpenOptions { limit: Some(6000), ..Default::default() }).unwrap();
    let test =
        data::open("fashion-mnist", Split::Test, &OpenOptions { limit: Some(2000), ..Default::default() }).unwrap();
    let mut m = Model::new(Arch::new("smallcnn", 1, 28, 10).unwrap(), &dev, 0).unwrap();
    let cfg =
        TrainConfig { epochs: 3, batch_size: 64, lr: 0.1, augment: false, progress: false, ..TrainConfig::default() };
    let logs =
        train::fit(&mut m, &dev, &train_ds, Some(&test), &cfg, &mut Objective::Labels, &mut |_, _| Ok(())).unwrap();
    let acc = logs.last().unwrap().test_top1.unwrap();
    eprintln!("fashion-mnist smallcnn, 6000 images x 3 epochs: test top-1 {:.2}%", 100.0 * acc);
    assert!(acc > 0.75, "a small CNN learns real data: {acc}");
}
