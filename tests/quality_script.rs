//! `scripts/experiments/quality.sh --ci`: the issue-21 experiment script's smoke cell (one seed,
//! a tiny budget, every method, the stream cell, the reward study and the aggregator) runs end
//! to end with this build, and a second run resumes: every finished cell is skipped.
//! Skipped, with a note, without Fashion-MNIST or python3.

#[path = "common/exe.rs"]
mod exe;

use std::path::Path;
use std::process::Command;

#[test]
fn quality_script_ci_cell_runs_and_resumes() {
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        println!("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: no python3 for the aggregator");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = exe::lfgcl_exe();
    let run = || {
        let o = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/experiments/quality.sh"))
            .args(["--ci", "--threads", "2", "--out"])
            .arg(dir.path())
            .arg("--bin")
            .arg(&exe)
            .env("NICE", "0")
            .output()
            .expect("run bash");
        let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "quality.sh --ci failed\nstdout: {out}\nstderr: {err}");
        out
    };
    let first = run();
    assert!(first.contains("ci-r20-f50-s0-lfgcl") && first.contains("quality.sh --ci: ok"), "{first}");
    let md = std::fs::read_to_string(dir.path().join("docs/results.md")).unwrap();
    for label in ["lfgcl", "random search", "uniform L1", "uniform FPGM", "global magnitude", "uniform L1 --streams"] {
        assert!(md.contains(&format!("| {label} |")), "results.md has no row for {label}:\n{md}");
    }
    assert!(md.contains("lfgcl − global magnitude"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("docs/results.json")).unwrap()).unwrap();
    let cells = json["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8, "5 methods, the stream cell and the fine-tuning proxy's two cells");
    for (name, method) in [("ci-abl-proxy", "lfgcl"), ("ci-abl-proxy-random", "random")] {
        let proxy = cells.iter().find(|c| c["cell"] == name).expect("the proxy cell");
        assert_eq!(proxy["method"], method, "{proxy}");
        let scores = proxy["proxy"]["scores"].as_array().expect("its comparison");
        assert!(scores.len() >= 2 && scores.iter().filter(|s| s["chosen"] == true).count() == 1, "{proxy}");
    }
    for c in cells {
        let f = c["flops_fraction"].as_f64().unwrap();
        assert!(f <= 0.5 + 1e-12 && f > 0.49, "{}: {f} of the FLOPs", c["label"]);
    }
    assert_eq!(json["study"].as_object().unwrap().values().next().unwrap().as_array().unwrap().len(), 2);
    // Item 4's fine-tuning pair: the search's net fine-tuned with KL only and with features.
    assert!(md.contains("### Feature distillation in the fine-tuning") && md.contains("features − KL"), "{md}");
    let fd = &json["summary"]["feature_distillation"]["lfgcl"];
    assert_eq!(fd["seeds"], serde_json::json!([0]), "{fd}");
    // The committed JSON alone rebuilds the same table, through --keep from an empty folder: a
    // lost run folder loses nothing.
    let empty = tempfile::tempdir().unwrap();
    let rebuilt = empty.path().join("docs");
    let o = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/experiments/aggregate.py"))
        .arg("--out")
        .arg(empty.path())
        .arg("--docs")
        .arg(&rebuilt)
        .arg("--keep")
        .arg(dir.path().join("docs/results.json"))
        .output()
        .expect("run python3");
    assert!(o.status.success(), "aggregate.py --keep failed: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(rebuilt.join("results.md")).unwrap(), md, "--keep changed the table");
    // A second run finds every cell done and only aggregates again.
    let second = run();
    assert!(
        !second.contains("] ci-") && !second.contains("] study-") && !second.contains("ci-abl"),
        "cells ran again:\n{second}"
    );
}
