//! The fine-tuning proxy (`pipeline --proxy-top`): which candidates it compares, that it keeps
//! the one closest to the baseline after its short fine-tunings, that it is deterministic and
//! resumes, and that bad settings are refused.

#[path = "common/exe.rs"]
mod exe;

use exe::{run_ok, text};
use lfgcl::prune::Projected;
use lfgcl::search::proxy::{distance, top_spread, ProxyResult};
use lfgcl::search::CandidateRecord;
use std::path::Path;

fn record(episode: i64, reward: f64, ratios: &[f64], cached: bool) -> CandidateRecord {
    let kept: Vec<usize> = ratios.iter().map(|r| (r * 16.0).round() as usize).collect();
    CandidateRecord {
        episode,
        index: 0,
        action: ratios.to_vec(),
        policy: Projected {
            ratios: ratios.to_vec(),
            kept,
            macs: 0,
            params: 0,
            flops_fraction: 0.5,
            params_fraction: 0.5,
        },
        reward,
        top1: None,
        cached,
    }
}

#[test]
fn the_proxy_compares_the_best_candidates_that_differ_enough() {
    let log = vec![
        record(-1, 0.0, &[0.5, 0.5], false),        // the uniform reference: never compared
        record(0, -0.30, &[0.25, 0.75], false),     // 3rd best
        record(0, -0.10, &[0.5, 0.25], false),      // best
        record(1, -0.10, &[0.5, 0.25], true),       // a cached repeat of the best
        record(1, -0.11, &[0.5, 0.3125], false),    // 2nd best reward, 0.03 from the best
        record(2, -0.20, &[0.75, 0.5], false),      // 0.25 from the best
        record(2, -0.40, &[0.8125, 0.5625], false), // 0.06 from the one above
    ];
    let rewards = |picked: Vec<&CandidateRecord>| picked.iter().map(|r| r.reward).collect::<Vec<_>>();
    // Spread 0: every distinct kept vector, best reward first, repeats and the reference left out.
    assert_eq!(rewards(top_spread(&log, 10, 0.0)), vec![-0.10, -0.11, -0.20, -0.30, -0.40]);
    assert_eq!(rewards(top_spread(&log, 2, 0.0)), vec![-0.10, -0.11]);
    // Spread 0.1: the near-copies of a better candidate are passed over.
    assert_eq!(rewards(top_spread(&log, 10, 0.1)), vec![-0.10, -0.20, -0.30]);
    assert!((distance(&log[2], &log[4]) - 0.03125).abs() < 1e-12);
    // Nothing to compare in a log with the reference only.
    assert!(top_spread(&log[..1], 4, 0.0).is_empty());
}

fn trained(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("base");
    let fixed = "--device cpu -q train --model resnet20 --data synthetic --epochs 1 --limit 128 --test-limit 32 \
                 --batch-size 32 --out";
    let mut args: Vec<String> = fixed.split_whitespace().map(String::from).collect();
    args.push(out.to_string_lossy().into_owned());
    run_ok(args);
    out.join("model.safetensors")
}

fn pipeline_args(ckpt: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let fixed = "--device cpu -q pipeline --data synthetic --flops 0.5 --methods lfgcl --episodes 4 --warmup 1 \
                 --candidates-per-step 4 --images 16 --limit 64 --test-limit 32 --ft-batch-size 16 --no-deploy-bench \
                 --report-accuracy 16";
    let mut a: Vec<String> = fixed.split_whitespace().map(String::from).collect();
    a.extend([
        "--ckpt".into(),
        ckpt.to_string_lossy().into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn the_proxy_keeps_the_lowest_kl_deterministically_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let proxy = ["--proxy-top", "3", "--proxy-steps", "2", "--proxy-spread", "0", "--ft-epochs", "0"];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(pipeline_args(&ckpt, &a, &proxy));
    let bytes = std::fs::read(a.join("search/proxy.json")).expect("proxy.json");
    let result: ProxyResult = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(result.scores.len(), 3, "{result:?}");
    assert_eq!(result.scores.iter().filter(|s| s.chosen).count(), 1);
    let chosen = result.chosen().unwrap();
    let lowest = result.scores.iter().map(|s| s.kl_after).fold(f64::INFINITY, f64::min);
    assert_eq!(chosen.kl_after, lowest, "the proxy keeps the lowest KL: {result:?}");
    assert!(result.scores.windows(2).all(|w| w[0].reward >= w[1].reward), "best reward first: {result:?}");
    assert!(result.scores.iter().all(|s| s.top1_after.is_some()), "report images classified: {result:?}");
    // The pipeline fine-tunes (here: measures) the proxy's pick, and reports its scores.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("report.json")).unwrap()).unwrap();
    let net = &report["report"]["pruned"][0];
    let kept: Vec<usize> = serde_json::from_value(net["kept"].clone()).unwrap();
    assert_eq!(kept, chosen.kept);
    assert_eq!(net["reward"].as_f64().unwrap(), chosen.reward);
    assert_eq!(net["proxy"]["scores"].as_array().unwrap().len(), 3);
    assert_eq!(report["config"]["proxy"]["top"], 3);
    // The same seeded run writes the same bytes.
    run_ok(pipeline_args(&ckpt, &b, &proxy));
    assert_eq!(std::fs::read(b.join("search/proxy.json")).unwrap(), bytes);
    // --resume reuses the scores of the same candidates and settings, and picks the same net.
    let mut again = proxy.to_vec();
    again.push("--resume");
    let written = std::fs::metadata(a.join("search/proxy.json")).unwrap().modified().unwrap();
    run_ok(pipeline_args(&ckpt, &a, &again));
    assert_eq!(std::fs::read(a.join("search/proxy.json")).unwrap(), bytes);
    let kept_file = std::fs::metadata(a.join("search/proxy.json")).unwrap().modified().unwrap();
    assert_eq!(written, kept_file, "resumed: proxy.json reused, not rewritten");
    let resumed: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("report.json")).unwrap()).unwrap();
    assert_eq!(resumed["report"]["pruned"][0]["kept"], net["kept"]);
    // Other fine-tuning settings: the scores are made again, with them.
    let mut changed = again.clone();
    changed.extend(["--ft-lr", "0.05"]);
    run_ok(pipeline_args(&ckpt, &a, &changed));
    let redone: ProxyResult = serde_json::from_slice(&std::fs::read(a.join("search/proxy.json")).unwrap()).unwrap();
    assert_eq!(redone.training.lr, 0.05);
    assert_ne!(redone.scores, result.scores);
    // Without the proxy, no proxy.json and no proxy field: the old reports are unchanged.
    let c = tmp.path().join("c");
    run_ok(pipeline_args(&ckpt, &c, &["--ft-epochs", "0"]));
    assert!(!c.join("search/proxy.json").exists());
    let plain = std::fs::read_to_string(c.join("report.json")).unwrap();
    assert!(!plain.contains("proxy"), "{plain}");
}

#[test]
fn bad_proxy_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let out = tmp.path().join("p");
    for (extra, needle) in [
        (vec!["--proxy-top", "1"], "--proxy-top 1"),
        (vec!["--proxy-top", "65"], "--proxy-top 65"),
        (vec!["--proxy-top", "2", "--proxy-steps", "0"], "--proxy-steps 0"),
        (vec!["--proxy-top", "2", "--proxy-spread", "1.5"], "--proxy-spread 1.5"),
        (vec!["--proxy-top", "2", "--proxy-spread", "NaN"], "--proxy-spread NaN"),
        (vec!["--proxy-top", "2", "--labels"], "--labels"),
        (vec!["--proxy-top", "2", "--methods", "uniform"], "add lfgcl or random"),
    ] {
        let mut args = pipeline_args(&ckpt, &out, &extra);
        if extra.contains(&"--methods") {
            // Replace the default `--methods lfgcl` rather than adding to it.
            let at = args.iter().position(|a| a == "--methods").unwrap();
            args.drain(at..at + 2);
        }
        let o = exe::lfgcl(args).output().unwrap();
        let (stdout, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {stdout} {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{extra:?}: {err}"));
        assert!(line.contains(needle), "{extra:?}: expected '{needle}' in '{line}'");
    }
}
