//! The `lfgcl` binary end to end: the commands a newcomer runs, and bad input that must give a
//! one-line error and a non-zero exit, never a panic.

#[path = "common/exe.rs"]
mod exe;

use std::path::Path;
use std::process::Output;

use exe::text;

fn lfgcl(args: &[&str]) -> Output {
    exe::lfgcl(args).output().expect("run lfgcl")
}

/// Runs a command that must fail: exit 1, one `error:` line naming `needle`, no panic.
fn fails_with(args: &[&str], needle: &str) {
    let o = lfgcl(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail with exit 1; stdout {out} stderr {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let line =
        err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
    assert!(line.contains(needle), "{args:?}: expected '{needle}' in '{line}'");
}

#[test]
fn help_lists_every_command() {
    let o = lfgcl(&["--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    for cmd in ["train", "eval", "info", "demo", "bench"] {
        assert!(out.contains(cmd), "--help mentions {cmd}");
    }
    let o = lfgcl(&["train", "--help"]);
    assert!(text(&o).0.contains("--epochs"));
}

#[test]
fn info_prints_the_exact_costs() {
    let o = lfgcl(&["info", "--model", "resnet56"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("125,485,696"), "{out}");
    assert!(out.contains("848,954"), "{out}");
    assert!(out.contains("layer3.8.conv2"), "{out}");
    let o = lfgcl(&["info", "--model", "vgg16", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["cost"]["macs"], 313_463_808u64);
    // A non-square input: the header names it, and costs scale with the pixels.
    let macs = |input: &str| {
        let o = lfgcl(&["info", "--model", "resnet18", "--input", input, "--classes", "1000", "--json"]);
        assert!(o.status.success(), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
        v["cost"]["macs"].as_u64().unwrap()
    };
    assert_eq!(macs("3x224x224"), 1_814_073_344);
    let (wide, tall) = (macs("3x224x448"), macs("3x448x224"));
    assert_eq!(wide, tall);
    assert!(wide > 2 * 1_814_073_344 - 2_000_000 && wide < 2 * 1_814_073_344, "{wide}");
    let o = lfgcl(&["info", "--model", "resnet18", "--input", "3x96x64"]);
    assert!(text(&o).0.contains("3x96x64 input"), "{}", text(&o).0);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_with(&["info", "--model", "resnet19"], "unknown model 'resnet19'");
    fails_with(&["info", "--model", "resnet20", "--input", "3x32"], "expected CxHxW");
    let sd = d.join("x.safetensors");
    let sd = sd.to_str().unwrap();
    fails_with(
        &["import", "--from", sd, "--model", "resnet18", "--out", sd, "--input-size", "96x64x3"],
        "not an image size",
    );
    fails_with(&["info"], "--model");
    let missing = d.join("missing.safetensors");
    fails_with(&["eval", "--device", "cpu", "--ckpt", missing.to_str().unwrap()], "missing.safetensors");
    // The CPU computes in f32 only; tensor-core precisions are refused, not ignored.
    fails_with(&["eval", "--device", "cpu", "--precision", "tf32", "--ckpt", missing.to_str().unwrap()], "f32 only");
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    fails_with(&["eval", "--device", "cpu", "--ckpt", junk.to_str().unwrap()], "junk.safetensors");
    fails_with(
        &["train", "--device", "cpu", "--data", "cifar10:/definitely/not/here", "--epochs", "1"],
        "/definitely/not/here",
    );
    fails_with(&["train", "--device", "cpu", "--data", "imagenet", "--epochs", "1"], "unknown data spec 'imagenet'");
    fails_with(
        &["train", "--device", "cpu", "--model", "nonet", "--epochs", "1", "--limit", "64"],
        "unknown model 'nonet'",
    );
    fails_with(&["train", "--device", "cpu", "--schedule", "sometimes", "--limit", "64"], "unknown schedule");
    let empty = d.join("empty_folder");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&["train", "--device", "cpu", "--data", empty.to_str().unwrap(), "--epochs", "1"], "empty_folder");
}

#[test]
fn cuda_without_a_device_is_a_clear_error() {
    if lfgcl::backend::select(lfgcl::DeviceChoice::Cuda).is_ok() {
        eprintln!("skipped: a CUDA device is present");
        return;
    }
    fails_with(&["--device", "cuda", "demo", "--epochs", "1"], "cuda");
}

#[test]
fn train_eval_info_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = lfgcl(&[
        "train",
        "--device",
        "cpu",
        "--quiet",
        "--model",
        "smallcnn",
        "--data",
        "synthetic",
        "--epochs",
        "2",
        "--limit",
        "1024",
        "--test-limit",
        "256",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "train failed: {stdout} {err}");
    for f in ["model.safetensors", "train_log.jsonl", "summary.json", "training.svg"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "one JSON line per epoch");
    let ckpt = out.join("model.safetensors");
    let o = lfgcl(&[
        "eval",
        "--device",
        "cpu",
        "--quiet",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "--data",
        "synthetic",
        "--test-limit",
        "256",
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("top-1"), "{stdout}");
    let o = lfgcl(&["info", "--ckpt", ckpt.to_str().unwrap()]);
    assert!(o.status.success());
    // A 3-channel model evaluated on 1-channel images is a shape error naming both.
    let gray = dir.path().join("gray");
    make_gray_folder(&gray);
    fails_with(
        &[
            "eval",
            "--device",
            "cpu",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--data",
            gray.to_str().unwrap(),
            "--grayscale",
            "--split",
            "train",
        ],
        "expects [3, 32, 32]",
    );
    // Data brought to another size than the net's: the message says how to make them agree.
    fails_with(
        &[
            "eval",
            "--device",
            "cpu",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--data",
            "synthetic",
            "--test-limit",
            "16",
            "--image-size",
            "40",
        ],
        "built (or imported) for 32x32 inputs: leave out --image-size",
    );
}

fn make_gray_folder(dir: &Path) {
    for class in ["a", "b"] {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..2u8 {
            let img = image::GrayImage::from_pixel(32, 32, image::Luma([i * 60]));
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// Train, then the whole pipeline (search with and without streams, baselines, label-free
/// fine-tuning, evaluation) on torchvision's families, tiny sizes.
#[test]
fn every_real_family_trains_searches_prunes_and_fine_tunes() {
    for model in ["resnet18", "mobilenet_v2"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = d.join("base");
        let o = lfgcl(&[
            "--device",
            "cpu",
            "-q",
            "train",
            "--model",
            model,
            "--data",
            "synthetic",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--test-limit",
            "32",
            "--batch-size",
            "16",
            "--out",
            base.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{model} train: {}", text(&o).1);
        let ckpt = base.join("model.safetensors");
        let p = d.join("p");
        let o = lfgcl(&[
            "--device",
            "cpu",
            "-q",
            "pipeline",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--data",
            "synthetic",
            "--flops",
            "0.5",
            "--streams",
            "--episodes",
            "3",
            "--warmup",
            "1",
            "--candidates-per-step",
            "2",
            "--images",
            "16",
            "--limit",
            "32",
            "--test-limit",
            "32",
            "--ft-epochs",
            "1",
            "--no-deploy-bench",
            "--out",
            p.to_str().unwrap(),
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{model} pipeline: {err}\n{out}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("report.json")).unwrap()).expect("report.json");
        let text = report.to_string();
        assert!(text.contains("top1_after_finetune"), "{model}: {text}");
        // These families round kept counts to multiples of 8 unless --round says otherwise.
        for net in report["report"]["pruned"].as_array().unwrap() {
            let kept: Vec<u64> = net["kept"].as_array().unwrap().iter().map(|k| k.as_u64().unwrap()).collect();
            assert!(kept.iter().all(|k| k % 8 == 0), "{model} {}: {kept:?}", net["method"]);
        }
    }
}

/// `bench infer|train --ckpt` time the checkpoint as saved (a pruned net's own widths), where
/// `--ckpt` used to be ignored silently and the default resnet20 timed instead; `--ckpt` with
/// `--model` or `--image-size` is refused rather than one of them dropped.
#[test]
fn bench_infer_and_train_time_a_given_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (run_s, pruned) = (run.to_str().unwrap(), dir.path().join("pruned.safetensors"));
    exe::run_ok([
        "train",
        "--device",
        "cpu",
        "--quiet",
        "--model",
        "smallcnn",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--limit",
        "128",
        "--test-limit",
        "64",
        "--out",
        run_s,
    ]);
    let base = run.join("model.safetensors");
    let (base_s, pruned_s) = (base.to_str().unwrap(), pruned.to_str().unwrap());
    exe::run_ok([
        "prune-apply",
        "--device",
        "cpu",
        "--quiet",
        "--ckpt",
        base_s,
        "--uniform",
        "--flops",
        "0.5",
        "--out",
        pruned_s,
    ]);
    // (model, MACs per image) as `bench` reports them in its JSON.
    let bench = |what: &str, net: &[&str], layers: bool| -> (String, u64) {
        let json = dir.path().join(format!("{what}-{}.json", net.join("-").replace(['/', '.'], "_")));
        let mut args =
            vec!["--device", "cpu", "--quiet", "--threads", "1", "bench", what, "--batch", "2", "--train-batch", "2"];
        args.extend_from_slice(&["--reps", "1", "--json", json.to_str().unwrap()]);
        args.extend_from_slice(net);
        if layers {
            args.push("--layers");
        }
        exe::run_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        if layers {
            assert!(v["layers"].is_object(), "bench {what} {net:?} --layers: no profile in {v}");
        }
        (v["model"].as_str().unwrap().to_string(), v["macs_per_image"].as_u64().unwrap())
    };
    let (model, base_macs) = bench("infer", &["--ckpt", base_s], false);
    assert_eq!(model, "smallcnn");
    for (what, layers) in [("infer", false), ("infer", true), ("train", true)] {
        let (model, macs) = bench(what, &["--ckpt", pruned_s], layers);
        assert_eq!(model, "smallcnn");
        let fraction = macs as f64 / base_macs as f64;
        assert!(
            (0.4..0.6).contains(&fraction),
            "bench {what} --ckpt pruned: {macs} MACs, {fraction} of the unpruned net's"
        );
    }
    fails_with(&["bench", "infer", "--ckpt", pruned_s, "--model", "resnet20"], "not both");
    fails_with(&["bench", "train", "--ckpt", pruned_s, "--image-size", "64"], "--image-size");
}
