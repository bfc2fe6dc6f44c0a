//! Pruning: groups derived from the graph, compact-vs-masked equivalence, exact closed-form
//! costs, budget projection, export round trip and bad input.

#[path = "common/model.rs"]
mod fixtures;

use fixtures::{input, randomise_bn};
use lfgcl::backend;
use lfgcl::models::{Arch, Model};
use lfgcl::nn::{Mode, Op};
use lfgcl::prune::{self, apply, Budget, Constraints, Criterion, GroupKind, GroupScope, Pruner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn model(name: &str, c: usize, size: usize) -> Model {
    Model::new(Arch::new(name, c, size, 10).unwrap(), &backend::cpu(), 3).unwrap()
}

#[test]
fn group_counts_follow_the_architecture() {
    for (name, inner, all) in
        [("resnet20", 9, 12), ("resnet56", 27, 30), ("resnet110", 54, 57), ("vgg16", 13, 13), ("smallcnn", 3, 3)]
    {
        let m = model(name, 3, 32);
        assert_eq!(prune::groups::groups(&m, GroupScope::Inner).unwrap().len(), inner, "{name} inner groups");
        assert_eq!(prune::groups::groups(&m, GroupScope::All).unwrap().len(), all, "{name} all groups");
    }
}

#[test]
fn resnet_stream_groups_span_every_coupled_tensor() {
    let m = model("resnet20", 3, 32);
    let gs = prune::groups::groups(&m, GroupScope::All).unwrap();
    let names = |ids: &[usize]| -> Vec<String> { ids.iter().map(|&i| m.graph.nodes[i].name.clone()).collect() };
    let s1 = gs.iter().find(|g| g.name == "layer1 stream").unwrap();
    assert_eq!(s1.kind, GroupKind::Stream);
    assert_eq!(names(&s1.producers), ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]);
    assert_eq!(names(&s1.norms), ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]);
    assert_eq!(names(&s1.conv_consumers), ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1"]);
    assert_eq!(names(&s1.shortcut_readers), ["layer2.0.shortcut"]);
    let s3 = gs.iter().find(|g| g.name == "layer3 stream").unwrap();
    assert_eq!(names(&s3.shortcut_writers), ["layer3.0.shortcut"]);
    assert_eq!(s3.linear_consumers.len(), 1);
    assert_eq!(m.graph.nodes[s3.linear_consumers[0].0].name, "linear");
    let inner = gs.iter().find(|g| g.name == "layer2.1.conv1").unwrap();
    assert_eq!(inner.kind, GroupKind::Inner);
    assert_eq!(names(&inner.producers), ["layer2.1.conv1"]);
    assert_eq!(names(&inner.norms), ["layer2.1.bn1"]);
    assert_eq!(names(&inner.conv_consumers), ["layer2.1.conv2"]);
    let vgg = model("vgg16", 3, 32);
    let last = prune::groups::groups(&vgg, GroupScope::Inner).unwrap().pop().unwrap();
    assert_eq!(last.name, "features.40");
    assert_eq!(vgg.graph.nodes[last.linear_consumers[0].0].name, "classifier.0");
}

/// The compact net computes what the original computes with the pruned channels zeroed.
fn check_equivalence(name: &str, c: usize, size: usize, scope: GroupScope, seed: u64) {
    let dev = backend::cpu();
    let mut m = model(name, c, size);
    randomise_bn(&mut m, seed);
    let pruner = Pruner::new(&m, scope, Criterion::L1).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let kept: Vec<usize> = pruner.groups.iter().map(|g| rng.random_range(1..=g.channels)).collect();
    let keep = pruner.keep_indices(&kept).unwrap();
    let mut compact = apply::apply(&m, &dev, &pruner.groups, &keep).unwrap();
    let mut masked = apply::mask(&m, &pruner.groups, &keep).unwrap();
    assert!(compact.arch.widths.iter().sum::<usize>() < m.arch.widths.iter().sum::<usize>());
    assert!(compact.cost().macs < m.cost().macs);
    let x = input(3, c, size, seed);
    // Exactly equal with fixed-order (reference) arithmetic: removing zero terms changes nothing.
    let exact = backend::cpu_reference();
    let a = compact.graph.forward(&exact, x.try_clone().unwrap(), Mode::Eval).unwrap().to_vec().unwrap();
    let b = masked.graph.forward(&exact, x.try_clone().unwrap(), Mode::Eval).unwrap().to_vec().unwrap();
    assert_eq!(a, b, "{name} {scope:?}: compact and masked outputs must be identical with reference math");
    let a = compact.graph.forward(&dev, x.try_clone().unwrap(), Mode::Eval).unwrap().to_vec().unwrap();
    let b = masked.graph.forward(&dev, x, Mode::Eval).unwrap().to_vec().unwrap();
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    // The fast GEMM blocks the shorter reduction differently and may regroup the remaining
    // terms: allow a few f32 ulps of the output scale.
    assert!(worst <= 2e-6, "{name} {scope:?}: compact and masked outputs differ by {worst:e} (relative)");
    eprintln!("{name} {scope:?}: kept {kept:?}, worst relative difference {worst:e}");
}

#[test]
fn compact_equals_masked_resnet() {
    check_equivalence("resnet20", 3, 32, GroupScope::Inner, 1);
    check_equivalence("resnet20", 3, 32, GroupScope::All, 2);
    check_equivalence("resnet32", 1, 28, GroupScope::All, 3);
}

#[test]
fn compact_equals_masked_vgg_and_small() {
    check_equivalence("vgg16", 3, 32, GroupScope::Inner, 4);
    check_equivalence("smallcnn", 3, 20, GroupScope::Inner, 5);
}

#[test]
fn closed_form_cost_matches_the_built_net() {
    let dev = backend::cpu();
    let mut rng = StdRng::seed_from_u64(11);
    for (name, scope) in [
        ("resnet20", GroupScope::All),
        ("resnet56", GroupScope::Inner),
        ("vgg16", GroupScope::Inner),
        ("resnet20", GroupScope::Inner),
    ] {
        let m = model(name, 3, 32);
        let pruner = Pruner::new(&m, scope, Criterion::L1).unwrap();
        assert_eq!((pruner.cost.full_macs, pruner.cost.full_params), (m.cost().macs, m.cost().params));
        for _ in 0..3 {
            let kept: Vec<usize> = pruner.groups.iter().map(|g| rng.random_range(1..=g.channels)).collect();
            let built = pruner.prune(&m, &dev, &kept).unwrap().cost();
            assert_eq!(pruner.cost.cost(&kept), (built.macs, built.params), "{name} {scope:?} {kept:?}");
        }
    }
}

#[test]
fn projection_always_meets_the_budget() {
    let mut rng = StdRng::seed_from_u64(21);
    for name in ["resnet20", "resnet56", "resnet110", "vgg16"] {
        let m = model(name, 3, 32);
        for scope in [GroupScope::Inner, GroupScope::All] {
            let pruner = Pruner::new(&m, scope, Criterion::L1).unwrap();
            for round in [1, 4, 8] {
                let c = Constraints { lower: 0.2, round };
                for budget in [
                    Budget { flops: Some(0.5), params: None },
                    Budget { flops: Some(0.7), params: None },
                    Budget { flops: None, params: Some(0.6) },
                    Budget { flops: Some(0.65), params: Some(0.8) },
                ] {
                    for _ in 0..25 {
                        let r: Vec<f64> = pruner.groups.iter().map(|_| rng.random_range(-0.5..1.5)).collect();
                        let p = match pruner.project(&r, &budget, &c) {
                            Ok(p) => p,
                            // Inner-only pruning cannot reach every budget (streams stay whole).
                            Err(e) => {
                                assert!(e.to_string().contains("unreachable"), "{e}");
                                continue;
                            }
                        };
                        let (fm, fp) = pruner.cost.fractions(&p.kept);
                        assert!(budget.flops.is_none_or(|f| fm <= f + 1e-12), "{name} {scope:?} r{round}: FLOPs {fm}");
                        assert!(
                            budget.params.is_none_or(|b| fp <= b + 1e-12),
                            "{name} {scope:?} r{round}: params {fp}"
                        );
                        for (g, (&k, grp)) in p.kept.iter().zip(&pruner.groups).enumerate() {
                            assert!(k >= 1 && k <= grp.channels, "group {g}");
                            assert!(k % round == 0 || k == grp.channels, "group {g}: {k} not a multiple of {round}");
                            assert!(
                                k >= prune::keep_count(0.2, grp.channels, round),
                                "group {g} below the lower bound"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn projection_is_the_identity_on_feasible_vectors_and_uses_the_budget() {
    let m = model("resnet56", 3, 32);
    let pruner = Pruner::new(&m, GroupScope::Inner, Criterion::L1).unwrap();
    let c = Constraints { lower: 0.2, round: 1 };
    let budget = Budget { flops: Some(0.5), params: None };
    let n = pruner.groups.len();
    let cheap = pruner.project(&vec![0.3; n], &budget, &c).unwrap();
    assert_eq!(cheap.kept, pruner.cost.channels.iter().map(|&ch| prune::keep_count(0.3, ch, 1)).collect::<Vec<_>>());
    // An infeasible vector ends close under the budget: the greedy refill spends what is left.
    let full = pruner.project(&vec![1.0; n], &budget, &c).unwrap();
    assert!(full.flops_fraction <= 0.5 && full.flops_fraction > 0.49, "{}", full.flops_fraction);
    let uni = pruner.uniform(&budget, &c).unwrap();
    assert!(uni.flops_fraction <= 0.5);
    assert!(uni.ratios.windows(2).all(|w| (w[0] - w[1]).abs() < 0.07), "uniform ratios {:?}", uni.ratios);
}

#[test]
fn bad_policies_are_clear_errors() {
    let m = model("resnet20", 3, 32);
    let pruner = Pruner::new(&m, GroupScope::Inner, Criterion::L1).unwrap();
    let c = Constraints::default();
    // Inner groups alone cannot go below ~25% of ResNet-20's FLOPs with a 0.2 lower bound.
    let e = pruner.project(&[0.5; 9], &Budget { flops: Some(0.1), params: None }, &c).unwrap_err().to_string();
    assert!(e.contains("unreachable") && e.contains("lower bound"), "{e}");
    let e = pruner.project(&[0.5; 4], &Budget { flops: Some(0.5), params: None }, &c).unwrap_err().to_string();
    assert!(e.contains("4 entries for 9 groups"), "{e}");
    let e = prune::budget::check_ratios(&[0.5, 1.2], 2, "r.json").unwrap_err().to_string();
    assert!(e.contains("outside (0, 1]"), "{e}");
    let e = prune::budget::check_ratios(&[0.5; 3], 9, "r.json").unwrap_err().to_string();
    assert!(e.contains("3 ratios") && e.contains("9 prunable groups"), "{e}");
    let e = pruner.project(&[0.5; 9], &Budget { flops: Some(1.5), params: None }, &c).unwrap_err().to_string();
    assert!(e.contains("(0, 1]"), "{e}");
    let e = pruner.project(&[0.5; 9], &Budget { flops: None, params: None }, &c).unwrap_err().to_string();
    assert!(e.contains("give a FLOPs or a params budget"), "{e}");
}

#[test]
fn l1_keeps_the_largest_filters_and_fpgm_differs() {
    let mut m = model("smallcnn", 3, 16);
    // Make filter 5 of conv2 the largest and filter 9 the smallest.
    let conv2 = m.graph.find("conv2").unwrap();
    if let Op::Conv(c) = &mut m.graph.nodes[conv2].op {
        let per = c.weight.value.numel() / 32;
        let w = c.weight.value.as_mut_slice().unwrap();
        w[5 * per..6 * per].iter_mut().for_each(|v| *v *= 100.0);
        w[9 * per..10 * per].iter_mut().for_each(|v| *v = 0.0);
    }
    let pruner = Pruner::new(&m, GroupScope::Inner, Criterion::L1).unwrap();
    let keep = pruner.keep_indices(&[16, 1, 64]).unwrap();
    assert_eq!(keep[1], vec![5]);
    let keep = pruner.keep_indices(&[16, 31, 64]).unwrap();
    assert!(!keep[1].contains(&9));
    let fpgm = Pruner::new(&m, GroupScope::Inner, Criterion::Fpgm).unwrap();
    let k = fpgm.keep_indices(&[16, 31, 64]).unwrap();
    assert_eq!(k[1].len(), 31);
    assert!(k[1].contains(&5), "the outlier filter is far from the median and kept");
}

#[test]
fn pruned_checkpoint_round_trip() {
    let dev = backend::cpu();
    let dir = tempfile::tempdir().unwrap();
    let mut m = model("resnet20", 3, 32);
    randomise_bn(&mut m, 9);
    let pruner = Pruner::new(&m, GroupScope::All, Criterion::L1).unwrap();
    let p = pruner
        .project(
            &vec![0.6; pruner.groups.len()],
            &Budget { flops: Some(0.5), params: None },
            &Constraints { lower: 0.2, round: 4 },
        )
        .unwrap();
    let mut pruned = pruner.prune(&m, &dev, &p.kept).unwrap();
    let path = dir.path().join("pruned.safetensors");
    lfgcl::train::checkpoint::save(
        &pruned,
        &path,
        &serde_json::to_value(pruner.policy(&m, &p, &Constraints::default(), "test")).unwrap(),
    )
    .unwrap();
    let mut back = lfgcl::train::checkpoint::load(&path, &dev).unwrap();
    assert_eq!(back.arch.widths, pruned.arch.widths);
    assert_eq!(back.cost().macs, p.macs);
    let x = input(2, 3, 32, 1);
    let a = pruned.graph.forward(&dev, x.try_clone().unwrap(), Mode::Eval).unwrap().to_vec().unwrap();
    let b = back.graph.forward(&dev, x, Mode::Eval).unwrap().to_vec().unwrap();
    assert_eq!(a, b);
}

/// The batched gather builds, for every candidate, exactly the net `apply` builds alone.
#[test]
fn apply_batch_equals_apply_per_candidate() {
    use lfgcl::prune::{apply, Budget, Constraints, Criterion, GroupScope, Pruner};
    use rand::SeedableRng;
    let dev = lfgcl::backend::cpu();
    for model in ["resnet20", "vgg16"] {
        let m = lfgcl::models::Model::new(lfgcl::models::Arch::new(model, 3, 32, 10).unwrap(), &dev, 4).unwrap();
        let pruner = Pruner::new(&m, GroupScope::All, Criterion::L1).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let keeps: Vec<Vec<Vec<u32>>> = (0..3)
            .map(|_| {
                let p = pruner.random(&mut rng, &Budget { flops: Some(0.5), params: None }, &Constraints::default());
                pruner.keep_indices(&p.unwrap().kept).unwrap()
            })
            .collect();
        let nets = apply::apply_batch(&m, &dev, &pruner.groups, &keeps).unwrap();
        for (net, keep) in nets.iter().zip(&keeps) {
            let one = apply::apply(&m, &dev, &pruner.groups, keep).unwrap();
            assert_eq!(net.arch.widths, one.arch.widths);
            for ((na, a), (nb, b)) in net.graph.state().into_iter().zip(one.graph.state()) {
                assert_eq!(na, nb);
                match (a, b) {
                    (lfgcl::nn::StateRef::F32(x), lfgcl::nn::StateRef::F32(y)) => {
                        assert_eq!(x.dims(), y.dims(), "{na}");
                        assert_eq!(x.to_vec().unwrap(), y.to_vec().unwrap(), "{na}");
                    }
                    (lfgcl::nn::StateRef::I32(x), lfgcl::nn::StateRef::I32(y)) => assert_eq!(x, y, "{na}"),
                    (lfgcl::nn::StateRef::I64(x), lfgcl::nn::StateRef::I64(y)) => assert_eq!(x, y, "{na}"),
                    _ => panic!("{na}: kinds differ"),
                }
            }
        }
    }
}

/// Every channel a stage keeps in its stream and an option-A shortcut copies is kept in the next
/// stage's stream (issue 21), for uniform and random kept counts; where the next stage keeps
/// fewer channels than it receives, everything it keeps is a copy. Ranked independently (as
/// before), a uniform 50% pruning of this net loses some of them, so the test can fail.
#[test]
fn option_a_shortcuts_carry_every_kept_stream_channel() {
    let m = model("resnet20", 3, 32);
    let pruner = Pruner::new(&m, GroupScope::All, Criterion::L1).unwrap();
    let links = pruner.links().to_vec();
    let names: Vec<(String, String)> =
        links.iter().map(|l| (pruner.groups[l.from].name.clone(), pruner.groups[l.to].name.clone())).collect();
    assert_eq!(
        names,
        [("layer1 stream".into(), "layer2 stream".into()), ("layer2 stream".into(), "layer3 stream".into())]
    );
    // The unpruned map: layer1's 16 channels land on layer2's channels 8..24.
    assert_eq!(links[0].pairs.len(), 16);
    assert!(links[0].pairs.iter().all(|&(s, d)| d == s + 8));
    let lost = |keep: &[Vec<u32>]| -> usize {
        links
            .iter()
            .map(|l| {
                l.pairs
                    .iter()
                    .filter(|(s, d)| keep[l.from].binary_search(s).is_ok() && keep[l.to].binary_search(d).is_err())
                    .count()
            })
            .sum()
    };
    let c = Constraints::default();
    let uniform = pruner.uniform(&Budget { flops: Some(0.5), params: None }, &c).unwrap();
    let keep = pruner.keep_indices(&uniform.kept).unwrap();
    assert_eq!(lost(&keep), 0, "coupled uniform 50%: {keep:?}");
    let independent = Pruner::new(&m, GroupScope::All, Criterion::L1).unwrap().with_independent_streams();
    assert!(independent.links().is_empty());
    let old = independent.keep_indices(&uniform.kept).unwrap();
    assert!(lost(&old) > 0, "independent ranking should drop copied channels on this net: {old:?}");
    // Inner groups are not touched by the coupling.
    for (g, (a, b)) in pruner.groups.iter().zip(keep.iter().zip(&old)) {
        if g.kind == GroupKind::Inner {
            assert_eq!(a, b, "{}", g.name);
        }
    }
    let mut rng = StdRng::seed_from_u64(21);
    for _ in 0..50 {
        let kept: Vec<usize> = pruner.groups.iter().map(|g| rng.random_range(1..=g.channels)).collect();
        let keep = pruner.keep_indices(&kept).unwrap();
        for (g, (k, &n)) in keep.iter().zip(&kept).enumerate() {
            assert_eq!(k.len(), n, "group {g} keeps the asked count");
        }
        for l in &links {
            let received: Vec<u32> =
                l.pairs.iter().filter(|(s, _)| keep[l.from].binary_search(s).is_ok()).map(|&(_, d)| d).collect();
            if received.len() <= kept[l.to] {
                assert!(received.iter().all(|d| keep[l.to].binary_search(d).is_ok()), "{kept:?}: {keep:?}");
            } else {
                assert!(keep[l.to].iter().all(|d| received.contains(d)), "{kept:?}: {keep:?}");
            }
        }
    }
}

/// The baselines meet the budget and leave less of it unspent than one channel of the
/// cheapest group would cost; the global threshold keeps, in every group, the channels with
/// the highest normalised norms, and it differs from uniform (so the test sees a real threshold).
#[test]
fn baselines_spend_the_exact_budget() {
    use prune::baselines;
    for (name, scope) in
        [("resnet20", GroupScope::Inner), ("resnet20", GroupScope::All), ("resnet56", GroupScope::Inner)]
    {
        let m = model(name, 3, 32);
        let pruner = Pruner::new(&m, scope, Criterion::L1).unwrap();
        for f in [0.3, 0.5] {
            let b = Budget { flops: Some(f), params: None };
            let c = Constraints::default();
            let plain = pruner.uniform(&b, &c).unwrap();
            let exact = baselines::uniform_exact(&pruner, &b, &c).unwrap();
            let global = baselines::global_threshold(&pruner, &b, &c).unwrap();
            for (what, p) in [("uniform", &plain), ("uniform exact", &exact), ("global", &global)] {
                assert!(p.flops_fraction <= f + 1e-12, "{name} {scope:?} {what} at {f}: {}", p.flops_fraction);
                let floor: Vec<usize> = pruner.cost.channels.iter().map(|&ch| prune::keep_count(0.2, ch, 1)).collect();
                assert!(p.kept.iter().zip(&floor).all(|(k, fl)| k >= fl), "{what} keeps the lower bound");
            }
            // Exact: adding one channel to any group that is not full would break the budget.
            for (what, p) in [("uniform exact", &exact), ("global", &global)] {
                for g in 0..p.kept.len() {
                    if p.kept[g] < pruner.cost.channels[g] {
                        let mut more = p.kept.clone();
                        more[g] += 1;
                        assert!(
                            pruner.cost.fractions(&more).0 > f,
                            "{name} {scope:?} {what} at {f}: group {g} could keep one more channel"
                        );
                    }
                }
            }
            assert!(exact.flops_fraction >= plain.flops_fraction);
            assert_ne!(global.kept, exact.kept, "{name} at {f}: the global threshold is not uniform");
        }
    }
}
