//! The LFGCL search: DDPG pieces, the label-free reward, budgets, resume and bad input.

#[path = "common/exe.rs"]
mod exe;

use lfgcl::backend;
use lfgcl::data::{self, OpenOptions, Split};
use lfgcl::models::{Arch, Model};
use lfgcl::prune::{Budget, Constraints, Criterion, GroupScope, Pruner};
use lfgcl::search::ddpg::{truncated_normal, Agent, DdpgConfig, Transition};
use lfgcl::search::reward::{RewardConfig, Scorer, Taps};
use lfgcl::search::{self, CandidateRecord, RunOptions, SearchConfig, SearchFiles, Strategy};
use lfgcl::train::{self, Objective, TrainConfig};
use lfgcl::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A small CNN trained briefly on the synthetic set, and an unlabeled batch of its images.
fn trained_model() -> (Model, Tensor) {
    let dev = backend::cpu();
    let train_ds =
        data::open("synthetic", Split::Train, &OpenOptions { limit: Some(1024), ..Default::default() }).unwrap();
    let mut m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &dev, 1).unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 64, lr: 0.05, progress: false, ..TrainConfig::default() };
    train::fit(&mut m, &dev, &train_ds, None, &cfg, &mut Objective::Labels, &mut |_, _| Ok(())).unwrap();
    let unlabeled = train_ds.without_labels().take(64);
    let images = search::batch_tensor(&unlabeled, m.normalization.as_ref().unwrap()).unwrap();
    (m, images)
}

fn config(episodes: usize) -> SearchConfig {
    SearchConfig {
        budget: Budget { flops: Some(0.5), params: None },
        constraints: Constraints { lower: 0.2, round: 1 },
        scope: GroupScope::Inner,
        criterion: Criterion::L1,
        strategy: Strategy::Ddpg,
        episodes,
        candidates_per_step: 3,
        updates_per_episode: 3,
        overlap_agent: false,
        seed: 5,
        ddpg: DdpgConfig { warmup_episodes: 2, batch_size: 4, hidden: 32, ..DdpgConfig::default() },
        reward: RewardConfig::default(),
    }
}

#[test]
fn replay_buffer_is_fifo_and_bounded() {
    let mut rng = StdRng::seed_from_u64(0);
    let cfg = DdpgConfig { replay_capacity: 5, batch_size: 2, hidden: 8, ..DdpgConfig::default() };
    let mut agent = Agent::new(cfg, vec![0.5; 4], 2, &mut rng).unwrap();
    for i in 0..8 {
        agent.remember(Transition { action: vec![0.1, 0.2], reward: i as f32 });
    }
    let snap = agent.snapshot();
    let rewards = &snap.tensors.iter().find(|t| t.0 == "replay.rewards").unwrap().2;
    assert_eq!(rewards, &vec![3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(agent.replay_len(), 5);
}

#[test]
fn noise_stays_in_range_and_actor_outputs_ratios() {
    let mut rng = StdRng::seed_from_u64(2);
    for (mean, sigma) in [(0.0f32, 0.5f32), (1.0, 0.5), (0.5, 0.05), (0.9, 2.0), (0.3, 0.0)] {
        let xs: Vec<f32> = (0..2000).map(|_| truncated_normal(&mut rng, mean, sigma)).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)), "mean {mean} sigma {sigma}");
        if sigma > 0.0 && sigma < 0.1 {
            let m = xs.iter().sum::<f32>() / xs.len() as f32;
            assert!((m - mean).abs() < 0.01, "small noise keeps the mean: {m}");
        }
    }
    let mut agent = Agent::new(DdpgConfig { hidden: 16, ..DdpgConfig::default() }, vec![0.3; 10], 7, &mut rng).unwrap();
    let a = agent.act().unwrap();
    assert_eq!(a.len(), 7);
    assert!(a.iter().all(|&x| x > 0.0 && x < 1.0));
    // The last layer starts near zero, so the first actions sit near the middle.
    assert!(a.iter().all(|&x| (x - 0.5).abs() < 0.05), "{a:?}");
    assert!((agent.sigma(100) - 0.5).abs() < 1e-6);
    assert!((agent.sigma(110) - 0.5 * 0.95f32.powi(10)).abs() < 1e-6);
    let warm = agent.explore(3, 4, &mut rng).unwrap();
    assert_eq!(warm.len(), 4);
    assert!(warm.iter().flatten().all(|x| (0.0..=1.0).contains(x)));
}

/// Runs the agent on a known reward the way the search does (warm-up, then decaying noise).
fn train_on(reward: impl Fn(&[f32]) -> f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = DdpgConfig {
        hidden: 64,
        actor_lr: 1e-3,
        critic_lr: 1e-2,
        batch_size: 32,
        warmup_episodes: 20,
        noise_decay: 0.99,
        ..DdpgConfig::default()
    };
    let mut agent = Agent::new(cfg, vec![1.0, 0.0, 0.5], 2, &mut rng).unwrap();
    for episode in 0..300 {
        for a in agent.explore(episode, 4, &mut rng).unwrap() {
            let r = reward(&a);
            agent.remember(Transition { action: a, reward: r });
        }
        if episode >= 20 {
            for _ in 0..4 {
                agent.update(&mut rng).unwrap();
            }
        }
    }
    agent.act().unwrap()
}

#[test]
fn agent_learns_simple_rewards() {
    // Monotone: more of action 0 and less of action 1 is better.
    let a = train_on(|a| a[0] - a[1], 0);
    assert!(a[0] > 0.9 && a[1] < 0.1, "monotone reward: actor at {a:?}");
    // Interior optimum at (0.7, 0.3).
    for seed in 0..2 {
        let a = train_on(|a| -(a[0] - 0.7).powi(2) - (a[1] - 0.3).powi(2), seed);
        assert!((a[0] - 0.7).abs() < 0.06 && (a[1] - 0.3).abs() < 0.06, "interior optimum: actor at {a:?}");
    }
}

#[test]
fn reward_is_zero_unpruned_and_falls_as_channels_go() {
    let dev = backend::cpu();
    let (mut m, images) = trained_model();
    let pruner = Pruner::new(&m, GroupScope::Inner, Criterion::L1).unwrap();
    for taps in ["penultimate", "penultimate,logits,stages"] {
        let cfg = RewardConfig { taps: Taps::parse(taps).unwrap(), recalibrate_bn: false };
        let scorer = Scorer::new(&mut m, &dev, &images, &pruner.groups, cfg).unwrap();
        let mut last = 0.0;
        for ratio in [1.0, 0.75, 0.5, 0.25] {
            let kept: Vec<usize> =
                pruner.cost.channels.iter().map(|&c| lfgcl::prune::keep_count(ratio, c, 1)).collect();
            let keep = pruner.keep_indices(&kept).unwrap();
            let mut cand = pruner.prune(&m, &dev, &kept).unwrap();
            let r = scorer.score(&mut cand, &keep).unwrap();
            if ratio == 1.0 {
                assert_eq!(r, 0.0, "the unpruned net has reward 0 ({taps})");
            } else {
                assert!(r < last, "{taps}: reward {r} at keep ratio {ratio} should be below {last}");
            }
            last = r;
        }
    }
    // Streams pruned: the dropped channels of the penultimate features count in full.
    let m2 = Model::new(Arch::new("resnet8", 3, 32, 10).unwrap(), &dev, 2).unwrap();
    let mut m2 = m2;
    let all = Pruner::new(&m2, GroupScope::All, Criterion::L1).unwrap();
    let running = RewardConfig { recalibrate_bn: false, ..RewardConfig::default() };
    let scorer = Scorer::new(&mut m2, &dev, &images, &all.groups, running).unwrap();
    let kept = all.cost.channels.clone();
    let mut full = all.prune(&m2, &dev, &kept).unwrap();
    assert_eq!(scorer.score(&mut full, &all.keep_indices(&kept).unwrap()).unwrap(), 0.0);
    let half: Vec<usize> = kept.iter().map(|c| c / 2).collect();
    let mut cand = all.prune(&m2, &dev, &half).unwrap();
    let pruned = scorer.score(&mut cand, &all.keep_indices(&half).unwrap()).unwrap();
    assert!(pruned < 0.0);
    // With BN re-estimation (the default) the baseline stays the deployed net (running
    // statistics), so the unpruned net scores only the small cost of batch statistics.
    let scorer = Scorer::new(&mut m2, &dev, &images, &all.groups, RewardConfig::default()).unwrap();
    let mut full = all.prune(&m2, &dev, &kept).unwrap();
    let unpruned = scorer.score(&mut full, &all.keep_indices(&kept).unwrap()).unwrap();
    let mut cand = all.prune(&m2, &dev, &half).unwrap();
    let pruned_recal = scorer.score(&mut cand, &all.keep_indices(&half).unwrap()).unwrap();
    assert!(unpruned <= 0.0 && unpruned > pruned_recal, "unpruned {unpruned}, half {pruned_recal}");
}

#[test]
fn bn_recalibration_uses_the_unlabeled_batch() {
    let dev = backend::cpu();
    let (m, images) = trained_model();
    let pruner = Pruner::new(&m, GroupScope::Inner, Criterion::L1).unwrap();
    let kept: Vec<usize> = pruner.cost.channels.iter().map(|&c| c / 2).collect();
    let mut cand = pruner.prune(&m, &dev, &kept).unwrap();
    search::reward::recalibrate_bn(&mut cand, &dev, &images).unwrap();
    // After recalibration the first BN's running mean is the batch mean of its input.
    let conv1 = cand.graph.find("conv1").unwrap();
    let (_, f) = cand.graph.forward_taps(&dev, images.try_clone().unwrap(), lfgcl::nn::Mode::Eval, &[conv1]).unwrap();
    let f = f[0].to_vec().unwrap();
    let (n, c) = (images.dims()[0], kept[0]);
    let hw = f.len() / (n * c);
    let mean0: f64 =
        (0..n).flat_map(|i| f[i * c * hw..i * c * hw + hw].to_vec()).map(|v| v as f64).sum::<f64>() / (n * hw) as f64;
    let bn1 = cand.graph.find("bn1").unwrap();
    if let lfgcl::nn::Op::BatchNorm(bn) = &cand.graph.nodes[bn1].op {
        assert!((bn.running_mean.as_slice().unwrap()[0] as f64 - mean0).abs() < 1e-4);
        assert!((bn.momentum - 0.1).abs() < 1e-9, "momentum restored");
    }
}

/// An untrained small CNN saved as `base.safetensors` in `dir` (the search needs no trained net
/// to exercise its files, options and resume).
fn untrained_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    let m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    let ckpt = dir.join("base.safetensors");
    lfgcl::train::checkpoint::save(&m, &ckpt, &serde_json::Value::Null).unwrap();
    ckpt
}

fn opts(resume: bool) -> RunOptions {
    RunOptions { resume, ..RunOptions::default() }
}

fn read_log(dir: &std::path::Path) -> Vec<CandidateRecord> {
    lfgcl::report::read_jsonl(dir.join("candidates.jsonl")).unwrap()
}

#[test]
fn search_meets_the_budget_and_resume_matches_an_uninterrupted_run() {
    let dev = backend::cpu();
    let (mut m, images) = trained_model();
    let tmp = tempfile::tempdir().unwrap();
    let full_dir = tmp.path().join("full");
    let full =
        search::run(&mut m, &dev, &images, &config(5), &SearchFiles { dir: full_dir.clone() }, None, &opts(false))
            .unwrap();
    let log = read_log(&full_dir);
    assert_eq!(log.len(), 1 + 5 * 3, "uniform reference + every candidate");
    for r in &log {
        assert!(r.policy.flops_fraction <= 0.5 + 1e-12, "candidate over budget: {}", r.policy.flops_fraction);
        assert!(r.policy.ratios.iter().all(|&x| (0.2 - 1e-9..=1.0).contains(&x)));
        assert!(r.top1.is_none(), "no accuracy unless asked for");
    }
    assert!(full.best.reward >= full.uniform.reward || log.iter().all(|r| r.reward <= full.best.reward));
    for f in [
        "best_policy.json",
        "pruned.safetensors",
        "reward.svg",
        "ratios.svg",
        "summary.json",
        "search_state.safetensors",
    ] {
        assert!(full_dir.join(f).exists(), "{f}");
    }
    let pruned = lfgcl::train::checkpoint::load(full_dir.join("pruned.safetensors"), &dev).unwrap();
    assert_eq!(pruned.cost().macs, full.best.policy.macs);

    // Interrupted after 3 episodes (past warm-up, so the agent has learned), then resumed to 5.
    let part_dir = tmp.path().join("part");
    let files = SearchFiles { dir: part_dir.clone() };
    search::run(&mut m, &dev, &images, &config(3), &files, None, &opts(false)).unwrap();
    let resumed = search::run(&mut m, &dev, &images, &config(5), &files, None, &opts(true)).unwrap();
    assert_eq!(read_log(&part_dir), log, "resumed log equals the uninterrupted one");
    assert_eq!(resumed.best, full.best);
    // Resuming with other settings is refused.
    let mut other = config(6);
    other.seed = 99;
    let e = search::run(&mut m, &dev, &images, &other, &files, None, &opts(true)).unwrap_err().to_string();
    assert!(e.contains("differs: seed was 5, now 99"), "{e}");
    // So is resuming on other images, naming them.
    let other_images = images.to_vec().unwrap();
    let other_images = Tensor::from_vec(images.dims(), other_images.into_iter().map(|v| v * 0.5).collect()).unwrap();
    let e = search::run(&mut m, &dev, &other_images, &config(6), &files, None, &opts(true)).unwrap_err().to_string();
    assert!(e.contains("the unlabeled images"), "{e}");
}

#[test]
fn random_search_uses_the_same_evaluation_budget() {
    let dev = backend::cpu();
    let (mut m, images) = trained_model();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SearchConfig { strategy: Strategy::Random, ..config(3) };
    let out =
        search::run(&mut m, &dev, &images, &cfg, &SearchFiles { dir: tmp.path().to_path_buf() }, None, &opts(false))
            .unwrap();
    assert_eq!(out.evaluated, 1 + 9, "the uniform reference and 3 x 3 candidates");
    assert_eq!(out.best_policy.source, "random search");
}

#[test]
fn bad_search_input_is_a_clear_error() {
    let dev = backend::cpu();
    let (mut m, images) = trained_model();
    let tmp = tempfile::tempdir().unwrap();
    let files = SearchFiles { dir: tmp.path().to_path_buf() };
    let mut cfg = config(2);
    cfg.budget = Budget { flops: Some(1.5), params: None };
    let e = search::run(&mut m, &dev, &images, &cfg, &files, None, &opts(false)).unwrap_err().to_string();
    assert!(e.contains("(0, 1]"), "{e}");
    cfg.budget = Budget { flops: Some(0.01), params: None };
    let e = search::run(&mut m, &dev, &images, &cfg, &files, None, &opts(false)).unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");
    // No images at all.
    let empty = data::open("synthetic", Split::Test, &OpenOptions::default()).unwrap().take(0);
    let e = search::batch_tensor(&empty, &lfgcl::data::Normalization::identity(3)).unwrap_err().to_string();
    assert!(e.contains("no images"), "{e}");
}

#[test]
fn search_cli_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(exe::lfgcl_exe()).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // A checkpoint that is not a supported model.
    let plain = tmp.path().join("plain.safetensors");
    let bytes = safetensors::serialize(
        vec![("w", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap())],
        None,
    )
    .unwrap();
    std::fs::write(&plain, bytes).unwrap();
    let (code, err) = run(&["search", "--device", "cpu", "--ckpt", plain.to_str().unwrap(), "--flops", "0.5"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no architecture") && !err.contains("panicked"), "{err}");
    // No images in the folder.
    let ckpt = untrained_checkpoint(tmp.path());
    let empty = tmp.path().join("no_images");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "not an image").unwrap();
    let (code, err) = run(&[
        "search",
        "--device",
        "cpu",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
        "--flops",
        "0.5",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no_images") && !err.contains("panicked"), "{err}");
    // A budget out of range.
    let (code, err) = run(&["search", "--device", "cpu", "--ckpt", ckpt.to_str().unwrap(), "--flops", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("(0, 1]"), "{err}");
}

#[test]
fn batched_scoring_equals_scoring_one_by_one() {
    let dev = backend::cpu();
    let (mut m, images) = trained_model();
    let pruner = Pruner::new(&m, GroupScope::All, Criterion::L1).unwrap();
    for recalibrate_bn in [true, false] {
        let cfg = RewardConfig { taps: Taps { penultimate: true, logits: true, stages: true }, recalibrate_bn };
        let scorer = Scorer::new(&mut m, &dev, &images, &pruner.groups, cfg).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let budget = Budget { flops: Some(0.5), params: None };
        let keeps: Vec<Vec<Vec<u32>>> = (0..5)
            .map(|_| {
                let p = pruner.random(&mut rng, &budget, &Constraints::default()).unwrap();
                pruner.keep_indices(&p.kept).unwrap()
            })
            .collect();
        let batched = scorer.score_batch(&m, &pruner.groups, &keeps).unwrap();
        for (keep, b) in keeps.iter().zip(&batched) {
            let mut cand = scorer.candidate(&m, &pruner.groups, keep).unwrap();
            let one = scorer.score(&mut cand, keep).unwrap();
            assert_eq!(one.to_bits(), b.to_bits(), "batched {b} vs one by one {one}");
        }
    }
}

/// A search killed (SIGKILL) several times at random moments and resumed each time ends with
/// the same log, policy, pruned net and summary (timings aside) as an uninterrupted run.
#[test]
fn search_killed_at_random_moments_resumes_bit_for_bit() {
    use rand::Rng;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = untrained_checkpoint(tmp.path());
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "--device",
            "cpu",
            "--threads",
            "2",
            "--quiet",
            "search",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--data",
            "synthetic",
            "--images",
            "32",
            "--flops",
            "0.5",
            "--episodes",
            "40",
            "--warmup",
            "5",
            "--candidates-per-step",
            "4",
            "--checkpoint-every",
            "0.05",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = tmp.path().join("full");
    let t0 = std::time::Instant::now();
    let o = std::process::Command::new(exe::lfgcl_exe()).args(args(&full)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Kill moments scale with how long a whole run takes on this machine.
    let whole_ms = t0.elapsed().as_millis().max(20) as u64;

    let part = tmp.path().join("part");
    let mut rng = StdRng::seed_from_u64(11);
    let mut kills = 0;
    for attempt in 0..60 {
        let mut a = args(&part);
        if attempt > 0 {
            a.push("--resume".into());
        }
        let mut child = std::process::Command::new(exe::lfgcl_exe())
            .args(&a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if kills < 4 {
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(whole_ms / 10..whole_ms * 8 / 10)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        break;
    }
    assert!(kills > 0, "the search was never interrupted");
    for f in ["candidates.jsonl", "best_policy.json", "pruned.safetensors"] {
        let (a, b) = (std::fs::read(full.join(f)).unwrap(), std::fs::read(part.join(f)).unwrap());
        assert!(a == b, "{f} differs after {kills} kills");
    }
    let summary = |dir: &std::path::Path| {
        let mut v: serde_json::Value = lfgcl::report::read_json(dir.join("summary.json")).unwrap();
        let o = &mut v["outcome"];
        for k in ["seconds", "candidates_per_second", "time"] {
            o.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(summary(&full), summary(&part));
}

/// Every float option of the search is checked before anything runs, and a search never
/// leaves an old summary, nor overwrites a log it cannot resume.
#[test]
fn search_options_and_output_folder_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = untrained_checkpoint(tmp.path());
    let out = tmp.path().join("s");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--device",
            "cpu",
            "--quiet",
            "search",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--images",
            "16",
            "--flops",
            "0.5",
            "--episodes",
            "2",
            "--warmup",
            "1",
            "--candidates-per-step",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(exe::lfgcl_exe()).args(&args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for (flag, value) in [
        ("--actor-lr", "nan"),
        ("--critic-lr", "-1"),
        ("--noise", "nan"),
        ("--noise-decay", "inf"),
        ("--noise-min", "-0.5"),
        ("--checkpoint-every", "nan"),
        ("--candidates-per-step", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let (code, err) = run(&[&arg]);
        assert!(code == Some(1) || code == Some(2), "{flag} {value}: exit {code:?}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{flag} {value}: {err}");
    }
    assert!(!out.join("candidates.jsonl").exists(), "a refused search writes nothing");
    // A stale summary does not survive a new run that fails half way (here: at once, on resume).
    let (code, err) = run(&[]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_file(out.join("search_state.safetensors")).unwrap();
    let log_before = std::fs::read(out.join("candidates.jsonl")).unwrap();
    let (code, err) = run(&["--resume"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no saved state"), "{err}");
    assert_eq!(std::fs::read(out.join("candidates.jsonl")).unwrap(), log_before, "the log was not overwritten");
    assert!(!out.join("summary.json").exists(), "the old summary was removed");
    // A log that holds only the uniform reference (killed before the first state) starts over.
    let first_line = String::from_utf8(log_before).unwrap().lines().next().unwrap().to_string() + "\n";
    std::fs::write(out.join("candidates.jsonl"), first_line).unwrap();
    let (code, err) = run(&["--resume"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.join("summary.json").exists());
}

/// SIGTERM (like Ctrl-C) saves the state and stops with a message saying how to continue; the
/// resumed search finishes.
#[test]
fn sigterm_saves_the_search_and_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = untrained_checkpoint(tmp.path());
    let out = tmp.path().join("s");
    let mut args: Vec<String> = [
        "--device",
        "cpu",
        "--threads",
        "2",
        "--quiet",
        "search",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "--images",
        "32",
        "--flops",
        "0.5",
        "--episodes",
        "400",
        "--warmup",
        "5",
        "--candidates-per-step",
        "4",
        "--checkpoint-every",
        "60",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = std::process::Command::new(exe::lfgcl_exe())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the loop runs (the log has episode lines), well before the end.
    let started = std::time::Instant::now();
    while std::fs::read_to_string(out.join("candidates.jsonl")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(started.elapsed().as_secs() < 120, "the search did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted") && err.contains("--resume"), "{err}");
    let saved = read_log(&out);
    assert!(saved.len() > 1 && saved.len() < 1 + 400 * 4, "{} records", saved.len());
    assert!(!out.join(".lfgcl.lock").exists(), "the lock is released");
    // Continue to a short end.
    let n = args.iter().position(|a| a == "400").unwrap();
    args[n] = (saved.iter().map(|r| r.episode).max().unwrap() + 3).to_string();
    args.push("--resume".into());
    let o = std::process::Command::new(exe::lfgcl_exe()).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("summary.json").exists());
}
