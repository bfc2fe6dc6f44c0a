//! Byte-reproducible files and exact resume, through the `lfgcl` binary:
//! - the same seeded training run twice writes byte-identical checkpoints;
//! - a fine-tuning killed (SIGKILL) at random moments and resumed with `--resume` ends with the
//!   same checkpoint bytes and the same log as an uninterrupted run.
//!
//! `LFGCL_TEST_EXE=/path/to/lfgcl` runs them against another build.

#[path = "common/exe.rs"]
mod exe;
#[path = "common/kill.rs"]
mod kill;

use rand::Rng;
use sha2::{Digest, Sha256};
use std::path::Path;

use exe::{lfgcl, run_ok};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn train(out: &Path, seed: &str, epochs: &str) -> Vec<String> {
    let mut a = strings(&[
        "--device",
        "cpu",
        "-q",
        "train",
        "--model",
        "smallcnn",
        "--data",
        "synthetic",
        "--limit",
        "256",
        "--test-limit",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        epochs,
        "--seed",
        seed,
        "--out",
    ]);
    a.push(p(out));
    a
}

#[test]
fn the_same_seeded_training_writes_byte_identical_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(train(&a, "3", "2"));
    run_ok(train(&b, "3", "2"));
    assert_eq!(sha256(&a.join("model.safetensors")), sha256(&b.join("model.safetensors")));
    // A different seed really gives another net (the comparison above can fail).
    let c = dir.path().join("c");
    run_ok(train(&c, "4", "2"));
    assert_ne!(sha256(&a.join("model.safetensors")), sha256(&c.join("model.safetensors")));
}

/// The log without its wall-clock fields (images/s and seconds differ from run to run).
fn log_without_timings(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("images_per_sec");
            o.remove("seconds");
            v
        })
        .collect()
}

#[test]
fn a_killed_finetune_resumes_to_the_same_bytes_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(train(&d.join("teacher"), "1", "1"));
    let teacher = d.join("teacher/model.safetensors");
    let student = d.join("student.safetensors");
    let mut prune = strings(&["--device", "cpu", "-q", "prune-apply", "--uniform", "--flops", "0.5", "--ckpt"]);
    prune.extend([p(&teacher), "--out".into(), p(&student)]);
    run_ok(&prune);

    let finetune = |out: &Path| -> Vec<String> {
        let mut a = strings(&["--device", "cpu", "-q", "finetune", "--ckpt"]);
        a.extend([p(&student), "--teacher".into(), p(&teacher), "--out".into(), p(out)]);
        a.extend(strings(&[
            "--data",
            "synthetic",
            "--limit",
            "512",
            "--test-limit",
            "128",
            "--ft-epochs",
            "6",
            "--ft-batch-size",
            "32",
            "--seed",
            "5",
        ]));
        a
    };
    let whole = d.join("whole");
    run_ok(finetune(&whole));

    // Kill it at random moments (printed, to replay a failure), resuming each time from whatever
    // the last kill left; then let it finish.
    let mut rng = kill::kill_schedule();
    let cut = d.join("cut");
    let mut kills = 0;
    for _ in 0..4 {
        let mut args = finetune(&cut);
        if cut.join("train_state.safetensors").exists() {
            args.push("--resume".into());
        }
        if kill::run_then_kill(&mut lfgcl(&args), rng.random_range(150..1500)) {
            kills += 1;
        }
    }
    let mut args = finetune(&cut);
    if cut.join("train_state.safetensors").exists() {
        args.push("--resume".into());
    }
    run_ok(&args);
    eprintln!("killed {kills} times");

    assert_eq!(sha256(&whole.join("model.safetensors")), sha256(&cut.join("model.safetensors")));
    assert_eq!(log_without_timings(&whole.join("train_log.jsonl")), log_without_timings(&cut.join("train_log.jsonl")));
    assert_eq!(log_without_timings(&cut.join("train_log.jsonl")).len(), 6);
    assert!(cut.join("summary.json").exists());

    // A resume with other settings is refused, naming what changed.
    let mut changed = finetune(&cut);
    changed.extend(["--resume".into(), "--temperature=2".into()]);
    let o = lfgcl(&changed).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("temperature"), "{err}");
}

#[test]
fn a_killed_pipeline_resumes_its_fine_tuning_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(train(&d.join("base"), "2", "1"));
    let pipeline = |out: &Path| -> Vec<String> {
        let mut a = strings(&["--device", "cpu", "-q", "pipeline", "--ckpt"]);
        a.push(p(&d.join("base/model.safetensors")));
        a.extend(strings(&[
            "--data",
            "synthetic",
            "--limit",
            "256",
            "--test-limit",
            "64",
            "--flops",
            "0.5",
            "--episodes",
            "4",
            "--warmup",
            "2",
            "--candidates-per-step",
            "2",
            "--images",
            "32",
            "--ft-epochs",
            "4",
            "--ft-batch-size",
            "32",
            "--no-random",
            "--out",
        ]));
        a.push(p(out));
        a
    };
    let whole = d.join("whole");
    run_ok(pipeline(&whole));
    // Each stage's wall time in the report: (method, search seconds, fine-tuning seconds); the
    // baselines' search seconds (choosing their channels, redone in microseconds) as 0.
    let stage_seconds = |out: &Path| -> Vec<(String, f64, f64)> {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        r["report"]["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_f64().unwrap();
                let searched = p["evaluations"].as_u64().unwrap() > 0;
                let search = if searched { s("search_seconds") } else { 0.0 };
                (p["method"].as_str().unwrap().to_string(), search, s("finetune_seconds"))
            })
            .collect()
    };
    let first = stage_seconds(&whole);
    assert!(first.iter().all(|(_, _, ft)| *ft > 0.0), "{first:?}");
    assert!(first.iter().any(|(m, search, _)| m == "lfgcl" && *search > 0.0), "{first:?}");
    // Resuming a finished run redoes nothing, and its report keeps the stages' times of the run
    // that did them (not the seconds the resume took).
    let mut again = pipeline(&whole);
    again.push("--resume".into());
    run_ok(&again);
    assert_eq!(stage_seconds(&whole), first);
    let mut rng = kill::kill_schedule();
    let cut = d.join("cut");
    for attempt in 0..3 {
        let mut args = pipeline(&cut);
        if attempt > 0 {
            args.push("--resume".into());
        }
        kill::run_then_kill(&mut lfgcl(&args), rng.random_range(300..2500));
    }
    let mut args = pipeline(&cut);
    args.push("--resume".into());
    run_ok(&args);
    for stage in ["finetune-lfgcl", "finetune-uniform"] {
        assert_eq!(
            sha256(&whole.join(stage).join("model.safetensors")),
            sha256(&cut.join(stage).join("model.safetensors")),
            "{stage}"
        );
        assert_eq!(
            log_without_timings(&whole.join(stage).join("train_log.jsonl")),
            log_without_timings(&cut.join(stage).join("train_log.jsonl")),
            "{stage}"
        );
    }
}
