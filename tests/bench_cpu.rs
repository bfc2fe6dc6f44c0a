//! `lfgcl bench cpu`: lfgcl next to onnxruntime and PyTorch eager on a tiny model (`--reps 1`).
//! - without Python (LFGCL_PYTHON pointing nowhere) it still prints lfgcl's table and JSON, with one
//!   line per runtime saying why it was not timed;
//! - with onnxruntime importable (CI: LFGCL_PYTHONPATH, LFGCL_REQUIRE_PY=1) every inference row
//!   has onnxruntime's images/s and the ratio; otherwise that test prints `skipped: ...` and
//!   passes, unless LFGCL_REQUIRE_PY=1;
//! - with torch importable (CI: Debian's, through LFGCL_TORCH_PYTHON) every row has PyTorch's
//!   images/s and the ratio, torchvision's families included, at the input size asked for.

#[path = "common/exe.rs"]
mod exe;
#[path = "common/torchvision.rs"]
mod torchvision;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `lfgcl --threads 2 -q bench cpu` on smallcnn, inference at batches 1 and 2, training step at
/// 4, one round of one repetition; (stdout, JSON report). `envs`: variables to set (value) or
/// remove (None).
fn bench_cpu(dir: &Path, extra: &[&str], envs: &[(&str, Option<&str>)]) -> (String, Value) {
    let json = dir.join("cpu.json");
    let mut cmd = exe::lfgcl(["--threads", "2", "-q", "bench", "cpu", "--model", "smallcnn", "--batch", "1,2"]);
    cmd.args(["--train-batch", "4", "--reps", "1", "--rounds", "1", "--json"]).arg(&json).args(extra);
    for (k, v) in envs {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run lfgcl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench cpu failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (stdout, report)
}

/// The rows every report has, whatever was timed besides lfgcl.
fn check_shape(stdout: &str, r: &Value) {
    for col in ["model", "batch", "lfgcl img/s", "% peak", "ort img/s", "lfgcl/ort", "torch img/s", "lfgcl/torch"] {
        assert!(stdout.contains(col), "no column {col}:\n{stdout}");
    }
    assert!(stdout.contains("sgemm peak"), "{stdout}");
    assert!(r["sgemm_peak_gflops"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["sgemm"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(r["threads"], 2);
    // The machine is named next to the figures: CPU model and vector instructions.
    let isa = r["machine"]["isa"].as_str().unwrap();
    assert!(!r["machine"]["cpu"].as_str().unwrap().is_empty() && !isa.is_empty(), "{r}");
    assert!(stdout.lines().next().unwrap().contains(isa), "{stdout}");
    assert_eq!(r["models"][0]["model"], "smallcnn");
    assert!(r["models"][0]["macs_per_image"].as_u64().unwrap() > 0);
    let rows = r["rows"].as_array().unwrap();
    let cases: Vec<(&str, u64)> =
        rows.iter().map(|row| (row["what"].as_str().unwrap(), row["batch"].as_u64().unwrap())).collect();
    assert_eq!(cases, [("inference", 1), ("inference", 2), ("train step", 4)], "{r}");
    for row in rows {
        assert_eq!(row["model"], "smallcnn");
        let l = &row["lfgcl"];
        assert!(l["images_per_sec"].as_f64().unwrap() > 0.0 && l["fraction_of_sgemm_peak"].as_f64().unwrap() > 0.0);
        assert_eq!(l["timing"]["reps"], 1);
        // onnxruntime is an inference runtime: never a training-step figure.
        if row["what"] == "train step" {
            assert!(row["onnxruntime"].is_null() && row["lfgcl_vs_onnxruntime"].is_null(), "{row}");
        }
    }
}

/// Whether `import` of `modules` works in the Python `cmd` gives.
fn importable(mut cmd: Command, modules: &str) -> Result<(), String> {
    match cmd.args(["-c", &format!("import {modules}")]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string()),
        Err(e) => Err(format!("python: {e}")),
    }
}

#[test]
fn bench_cpu_without_python_prints_lfgcl_and_says_why_the_others_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-such-python");
    let nowhere = nowhere.to_str().unwrap();
    let (stdout, r) = bench_cpu(dir.path(), &[], &[("LFGCL_PYTHON", Some(nowhere)), ("LFGCL_TORCH_PYTHON", None)]);
    check_shape(&stdout, &r);
    let notes: Vec<&str> = stdout.lines().filter(|l| l.contains("not timed")).collect();
    assert_eq!(notes.len(), 2, "{stdout}");
    assert!(notes[0].starts_with("onnxruntime not timed: cannot start") && notes[0].contains("no-such-python"));
    assert!(notes[1].starts_with("PyTorch not timed: cannot start"), "{stdout}");
    assert!(r["onnxruntime_note"].is_string() && r["torch_note"].is_string(), "{r}");
    assert!(r["onnxruntime_version"].is_null() && r["torch_version"].is_null(), "{r}");
    for row in r["rows"].as_array().unwrap() {
        assert!(row["onnxruntime"].is_null() && row["torch"].is_null(), "{row}");
        assert!(row["lfgcl_vs_onnxruntime"].is_null() && row["lfgcl_vs_torch"].is_null(), "{row}");
    }
    // Disabled runtimes are noted as such; --onnx-dir keeps the checkpoint.
    let keep = dir.path().join("files");
    let (stdout, r) = bench_cpu(dir.path(), &["--no-ort", "--no-torch", "--onnx-dir", keep.to_str().unwrap()], &[]);
    check_shape(&stdout, &r);
    assert_eq!(r["onnxruntime_note"], "disabled");
    assert_eq!(r["torch_note"], "disabled");
    assert!(keep.join("0-smallcnn.safetensors").is_file(), "the checkpoint is kept in --onnx-dir");
}

#[test]
fn bench_cpu_with_onnxruntime_puts_it_next_to_lfgcl() {
    let dir = tempfile::tempdir().unwrap();
    if let Err(reason) = importable(lfgcl::interop::python_command(), "numpy, onnxruntime") {
        if std::env::var("LFGCL_REQUIRE_PY").is_ok_and(|v| v == "1") {
            panic!("LFGCL_REQUIRE_PY=1 but onnxruntime cannot be imported: {reason}");
        }
        println!("skipped: numpy/onnxruntime not importable ({reason}) [bench cpu with onnxruntime]");
        return;
    }
    let torch = importable(lfgcl::interop::torch_python_command(), "torch").is_ok();
    let extra: &[&str] = if torch { &[] } else { &["--no-torch"] };
    let (stdout, r) = bench_cpu(dir.path(), extra, &[]);
    check_shape(&stdout, &r);
    assert!(r["onnxruntime_note"].is_null() && r["onnxruntime_version"].is_string(), "{r}");
    assert!(stdout.contains("onnxruntime 1.") && !stdout.contains("onnxruntime not timed"), "{stdout}");
    for row in r["rows"].as_array().unwrap().iter().filter(|row| row["what"] == "inference") {
        let ort = row["onnxruntime"]["images_per_sec"].as_f64().unwrap();
        let ratio = row["lfgcl_vs_onnxruntime"].as_f64().unwrap();
        assert!(ort > 0.0 && (ratio - row["lfgcl"]["images_per_sec"].as_f64().unwrap() / ort).abs() < 1e-9, "{row}");
        assert_eq!(row["onnxruntime"]["timing"]["reps"], 1);
    }
    if torch {
        assert!(r["torch_note"].is_null() && r["torch_version"].is_string(), "{r}");
        for row in r["rows"].as_array().unwrap() {
            assert!(row["torch"]["images_per_sec"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["lfgcl_vs_torch"].as_f64().unwrap() > 0.0, "{row}");
        }
    } else {
        println!("torch not importable: PyTorch part not checked");
    }
}

/// torchvision's families at a chosen input size: PyTorch builds them with torchvision and loads
/// lfgcl's weights, so both runtimes time the same nets.
#[test]
fn bench_cpu_times_torchvision_families_at_the_asked_size() {
    if !torchvision::torchvision_or_skip("bench cpu torchvision families") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cpu.json");
    let out =
        exe::lfgcl(["--threads", "2", "-q", "bench", "cpu", "--model", "resnet18,mobilenet_v2", "--image-size", "40"])
            .args(["--batch", "1", "--train-batch", "2", "--reps", "1", "--rounds", "1", "--no-ort", "--json"])
            .arg(&json)
            .output()
            .expect("run lfgcl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench cpu failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r["torch_note"].is_null(), "{r}");
    // MACs at 40x40, as torchvision's layers compute them (lfgcl info at the same size).
    let macs: Vec<u64> =
        r["models"].as_array().unwrap().iter().map(|m| m["macs_per_image"].as_u64().unwrap()).collect();
    for (model, m) in ["resnet18", "mobilenet_v2"].iter().zip(&macs) {
        let out = exe::run_ok(["info", "--model", model, "--input", "3x40x40", "--classes", "10", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cost"]["macs"].as_u64().unwrap(), *m, "{model}");
    }
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{r}");
    for row in rows {
        assert!(row["torch"]["images_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    }
}

/// The MACs `lfgcl info` counts for `model` at 3x32x32.
fn info_macs(model: &str) -> u64 {
    let info = exe::lfgcl(["info", "--model", model, "--input", "3x32x32"]).output().unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info = String::from_utf8_lossy(&info.stdout);
    let total_line = info.lines().find(|l| l.starts_with("Total")).expect("info prints a total");
    total_line.split_whitespace().last().unwrap().replace(',', "").parse().unwrap()
}

/// `bench infer --layers` on MobileNetV2 at 32x32: one step per unfused node or fused conv chain,
/// every node of the graph in exactly one step, the steps' MACs summing to the model's (as
/// `info` counts them), the shares to 1, and the kinds to the steps.
#[test]
fn bench_infer_layers_says_where_the_time_goes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("layers.json");
    let args = ["--threads", "2", "-q", "bench", "infer", "--model", "mobilenet_v2", "--image-size", "32"];
    let out = exe::lfgcl(args).args(["--batch", "2", "--reps", "2", "--layers", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("by kind, slowest first") && stdout.contains("conv 3x3 s1 depthwise"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let l = &r["layers"];
    let steps = l["steps"].as_array().unwrap();
    // MobileNetV2's conv -> BN -> ReLU6 chains run fused: fewer steps than nodes, and each
    // inverted residual's projection ends in its add.
    assert!(steps.iter().any(|s| s["ops"] == "Conv2d+BatchNorm+ReLU6"));
    assert!(steps.iter().any(|s| s["ops"] == "Conv2d+BatchNorm+Add"));
    let model_macs = info_macs("mobilenet_v2");
    let macs: u64 = steps.iter().map(|s| s["macs"].as_u64().unwrap()).sum();
    assert_eq!(macs, 2 * model_macs, "steps' MACs at batch 2");
    let share: f64 = steps.iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    let kinds = l["kinds"].as_array().unwrap();
    let in_kinds: u64 = kinds.iter().map(|k| k["steps"].as_u64().unwrap()).sum();
    assert_eq!(in_kinds as usize, steps.len());
}

/// `bench train --layers` on ResNet-18 at 32x32: every node of the graph in exactly one step (the
/// forward MACs summing to the model's), batch norm -> ReLU pairs as one step, a forward and a
/// backward timed for every step and a weight gradient for every convolution and nothing else,
/// the shares of the steps, the loss and the SGD step summing to 1, and the kinds to the steps.
#[test]
fn bench_train_layers_says_where_the_time_goes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("layers.json");
    let args = ["--threads", "2", "-q", "bench", "train", "--model", "resnet18", "--image-size", "32"];
    let out =
        exe::lfgcl(args).args(["--train-batch", "2", "--reps", "2", "--layers", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("training step") && stdout.contains("conv 7x7 s2") && stdout.contains("SGD step"),
        "{stdout}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let l = &r["layers"];
    let steps = l["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["ops"] == "BatchNorm+ReLU"), "{l}");
    let model_macs = info_macs("resnet18");
    let macs: u64 = steps.iter().map(|s| s["macs"].as_u64().unwrap()).sum();
    assert_eq!(macs, 2 * model_macs, "steps' MACs at batch 2");
    for (i, s) in steps.iter().enumerate() {
        let conv = s["ops"] == "Conv2d";
        let (f, b, w) = (
            s["forward_us"].as_f64().unwrap(),
            s["backward_us"].as_f64().unwrap(),
            s["weight_grad_us"].as_f64().unwrap(),
        );
        assert!(f > 0.0 && b > 0.0, "step {i}: {s}");
        assert_eq!(w > 0.0, conv, "a weight gradient for convs only: {s}");
    }
    let total = l["total_us"].as_f64().unwrap();
    let (loss, sgd) = (l["loss_us"].as_f64().unwrap(), l["optimizer_us"].as_f64().unwrap());
    assert!(sgd > 0.0 && loss > 0.0);
    let share: f64 = steps.iter().map(|s| s["share"].as_f64().unwrap()).sum::<f64>() + (loss + sgd) / total;
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    let kinds = l["kinds"].as_array().unwrap();
    let in_kinds: u64 = kinds.iter().map(|k| k["steps"].as_u64().unwrap()).sum();
    assert_eq!(in_kinds as usize, steps.len());
    // PyTorch's step by the same kinds beside it, with lfgcl's time over PyTorch's.
    if !torchvision::torchvision_or_skip("torch_train_layers.py") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_train_layers.py");
    let torch_json = dir.path().join("torch.json");
    let out = lfgcl::interop::torch_python_command()
        .arg(script)
        .args(["--model", "resnet18", "--image-size", "32", "--batch", "2", "--reps", "1", "--warmup", "1", "--lfgcl"])
        .arg(&json)
        .arg("--json")
        .arg(&torch_json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&torch_json).unwrap()).unwrap();
    let rows = t["kinds"].as_array().unwrap();
    for kind in ["conv 7x7 s2", "conv 3x3 s1", "conv 3x3 s2", "conv 1x1 s2", "BatchNorm", "SGD step"] {
        let row = rows.iter().find(|r| r["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {t}"));
        assert!(row["forward_ms"].as_f64().unwrap() > 0.0 && row["lfgcl_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
}

/// `--cpu-isa` (or `LFGCL_CPU_ISA`) limits the kernels' instruction set for a measurement and the
/// JSON says so beside the machine; a bad value, from either, is a clear error before any work.
#[test]
fn cpu_isa_limit_is_named_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("infer.json");
    let args = ["--threads", "2", "-q", "--cpu-isa", "portable", "bench", "infer", "--model", "smallcnn"];
    let out = exe::lfgcl(args).args(["--batch", "1", "--reps", "1", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let isa = r["machine"]["isa"].as_str().unwrap();
    // Only a CPU with AVX2 or more has anything to limit.
    let has_avx2 = lfgcl::backend::cpu::isa::Isa::detected() >= lfgcl::backend::cpu::isa::Isa::Avx2;
    assert_eq!(isa.contains("kernels limited to portable"), has_avx2, "{isa}");
    let bad = exe::lfgcl(["-q", "--cpu-isa", "avx1024", "info", "--model", "smallcnn"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cpu-isa: instruction set \"avx1024\""));
    let bad = exe::lfgcl(["-q", "info", "--model", "smallcnn"]).env("LFGCL_CPU_ISA", "sse").output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("LFGCL_CPU_ISA: instruction set \"sse\""));
}

/// The command flushes subnormal floats to zero on x86 (`backend::cpu::denormals`: a step whose
/// values drift there ran 25x slower), and a measurement's JSON says which it ran with;
/// `LFGCL_KEEP_DENORMALS=1` keeps IEEE subnormals.
#[test]
fn the_command_flushes_denormals_unless_told_to_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("infer.json");
    let flushed = |keep: Option<&str>| {
        let mut cmd = exe::lfgcl(["--threads", "2", "-q", "bench", "infer", "--model", "smallcnn"]);
        cmd.args(["--batch", "1", "--reps", "1", "--json"]).arg(&json);
        if let Some(v) = keep {
            cmd.env("LFGCL_KEEP_DENORMALS", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        r["machine"]["denormals_flushed"].as_bool().unwrap()
    };
    let x86 = cfg!(target_arch = "x86_64");
    assert_eq!(flushed(None), x86);
    assert_eq!(flushed(Some("0")), x86);
    assert!(!flushed(Some("1")));
}
