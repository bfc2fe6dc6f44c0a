//! `mpirun -np N lfgcl ...` (built with `--features mpi`; CI installs Open MPI): a sharded
//! search writes byte-identical files for any N and resumes with another N; data-parallel
//! training gives the same bits for a given N and matches one process within float tolerance;
//! a pipeline does both (its searches sharded, its fine-tuning data-parallel); a killed rank
//! stops the job, naming the rank, and the search resumes from what was saved.
#![cfg(feature = "mpi")]

#[path = "common/exe.rs"]
mod exe;
#[cfg(feature = "nccl")]
#[path = "common/gpu.rs"]
mod gpu;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `lfgcl args` on one plain process (no launcher), one CPU thread.
fn plain(args: &[&str]) -> Output {
    plain_on("cpu", args)
}

/// [`plain`] on `device`.
fn plain_on(device: &str, args: &[&str]) -> Output {
    let o = Command::new(exe::lfgcl_exe())
        .args(["--device", device, "--threads", "1", "--quiet"])
        .args(args)
        .output()
        .expect("run lfgcl");
    check(&o, &format!("lfgcl {args:?}"));
    o
}

fn mpirun_command(np: usize, args: &[&str]) -> Command {
    mpirun_command_on("cpu", np, args)
}

fn mpirun_command_on(device: &str, np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none", "-np", &np.to_string()])
        .arg(exe::lfgcl_exe())
        .args(["--device", device, "--threads", "1", "--quiet"])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// `mpirun -np N lfgcl args`.
fn mpirun(np: usize, args: &[&str]) -> Output {
    let o = mpirun_command(np, args).output().expect("mpirun (install openmpi-bin)");
    check(&o, &format!("mpirun -np {np} lfgcl {args:?}"));
    o
}

fn check(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout {}\nstderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train` of a ResNet-20 for one epoch on 256 synthetic images (64 to test on): the baseline of
/// the search tests, and the data-parallel training test.
fn train_args<'a>(out: &'a Path, batch: &'a str, lr: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "resnet20",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--test-limit",
        "64",
        "--batch-size",
        batch,
        "--lr",
        lr,
        "--seed",
        seed,
        "--out",
        s(out),
    ]
}

/// A small trained baseline, once per test binary.
fn baseline() -> PathBuf {
    static BASE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("base");
        plain(&train_args(&out, "64", "0.05", "0"));
        let ckpt = out.join("model.safetensors");
        (dir, ckpt)
    })
    .1
    .clone()
}

/// The search settings of every search here: ResNet-20 at 60% FLOPs, 5 candidates per step on
/// 32 images, state saved after every episode.
fn search_flags(episodes: &str) -> Vec<&str> {
    vec![
        "--images",
        "32",
        "--episodes",
        episodes,
        "--candidates-per-step",
        "5",
        "--warmup",
        "2",
        "--flops",
        "0.6",
        "--seed",
        "7",
        "--checkpoint-every",
        "0",
    ]
}

fn search_args<'a>(ckpt: &'a Path, out: &'a Path, episodes: &'a str) -> Vec<&'a str> {
    let mut a = vec!["search", "--ckpt", s(ckpt), "--data", "synthetic"];
    a.extend(search_flags(episodes));
    a.extend(["--out", s(out)]);
    a
}

fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The summary without its timings (and the device line, which names the thread count).
fn summary_sans_timings(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&bytes(dir.join("summary.json"))).unwrap();
    let o = v["outcome"].as_object_mut().unwrap();
    for k in ["seconds", "candidates_per_second", "time"] {
        assert!(o.remove(k).is_some(), "summary has {k}");
    }
    v
}

fn assert_same_search(a: &Path, b: &Path, what: &str) {
    for f in ["candidates.jsonl", "best_policy.json", "pruned.safetensors"] {
        assert!(bytes(a.join(f)) == bytes(b.join(f)), "{what}: {f} differs");
    }
    assert_eq!(summary_sans_timings(a), summary_sans_timings(b), "{what}: summary differs");
}

#[test]
fn a_sharded_search_writes_the_same_files_for_any_rank_count_and_resumes_with_another() {
    let ckpt = baseline();
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("np1");
    plain(&search_args(&ckpt, &one, "4"));
    for np in [2, 3] {
        let out = dir.path().join(format!("np{np}"));
        let o = mpirun(np, &search_args(&ckpt, &out, "4"));
        assert_same_search(&one, &out, &format!("{np} ranks against one process"));
        // Rank 0 alone reports and writes.
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("best reward").count(), 1, "{stdout}");
    }
    // Started on 3 ranks, continued on 2: the same search.
    let resumed = dir.path().join("resumed");
    mpirun(3, &search_args(&ckpt, &resumed, "2"));
    let mut args = search_args(&ckpt, &resumed, "4");
    args.push("--resume");
    mpirun(2, &args);
    assert_same_search(&one, &resumed, "3 ranks then 2 (--resume)");
}

/// Every tensor of two checkpoints: the largest difference relative to the tensor's scale (at
/// least 0.1: a batch norm's bias before a conv and another batch norm has a gradient of rounding
/// noise, the next batch norm removing any shift, so its values are tiny and mostly noise).
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let dev = lfgcl::backend::cpu();
    let (ma, mb) = (lfgcl::train::checkpoint::load(a, &dev).unwrap(), lfgcl::train::checkpoint::load(b, &dev).unwrap());
    let mut worst = 0f64;
    for ((na, ea), (nb, eb)) in ma.graph.state().into_iter().zip(mb.graph.state()) {
        assert_eq!(na, nb);
        if let (lfgcl::nn::StateRef::F32(ta), lfgcl::nn::StateRef::F32(tb)) = (ea, eb) {
            let (va, vb) = (ta.to_vec().unwrap(), tb.to_vec().unwrap());
            let scale = va.iter().fold(0.1f64, |m, v| m.max(v.abs() as f64));
            for (x, y) in va.iter().zip(&vb) {
                worst = worst.max((*x as f64 - *y as f64).abs() / scale);
            }
        }
    }
    worst
}

#[test]
fn data_parallel_training_repeats_its_bits_and_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two_a, two_b) = (dir.path().join("np1"), dir.path().join("np2a"), dir.path().join("np2b"));
    plain(&train_args(&one, "64", "0.01", "3"));
    mpirun(2, &train_args(&two_a, "64", "0.01", "3"));
    mpirun(2, &train_args(&two_b, "64", "0.01", "3"));
    let model = |d: &Path| d.join("model.safetensors");
    assert!(bytes(model(&two_a)) == bytes(model(&two_b)), "2 ranks twice: the same bits");
    // 4 SGD steps with synchronised batch norm: one process's result up to float rounding (after
    // one step the layers next to the output agree to 1e-7; rounding grows through the net and
    // the steps). Batch norm with each rank's own statistics would be off by percents.
    let diff = max_relative_difference(&model(&one), &model(&two_a));
    println!("largest difference, 1 process vs 2 ranks: {diff:.3e} of the tensor's scale");
    assert!(diff < 1e-3, "2 ranks differ from one process by {diff:.3e}");
    let loss = |d: &Path| -> Vec<f64> {
        String::from_utf8(bytes(d.join("train_log.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
            .collect()
    };
    for (a, b) in loss(&one).iter().zip(loss(&two_a)) {
        assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "train loss {a} vs {b}");
    }
    // A global batch that does not split evenly is refused with the reason.
    let o = mpirun_command(2, &train_args(&dir.path().join("odd"), "63", "0.01", "3")).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("choose a batch size that divides by 2"), "{err}");
}

fn pipeline_args<'a>(ckpt: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let mut a = vec!["pipeline", "--ckpt", s(ckpt), "--data", "synthetic", "--limit", "128", "--test-limit", "64"];
    a.extend(search_flags("4"));
    a.extend(["--report-accuracy", "32", "--ft-epochs", "1", "--ft-batch-size", "64", "--no-deploy-bench"]);
    a.extend(["--out", s(out)]);
    a
}

/// The pipeline's report without its timings.
fn pipeline_report(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&bytes(dir.join("report.json"))).unwrap();
    let r = v["report"].as_object_mut().unwrap();
    for k in ["seconds", "search_candidates_per_second"] {
        assert!(r.remove(k).is_some(), "report has {k}");
    }
    for p in r["pruned"].as_array_mut().unwrap() {
        for k in ["search_seconds", "finetune_seconds", "checkpoint"] {
            assert!(p.as_object_mut().unwrap().remove(k).is_some(), "pruned net has {k}");
        }
    }
    v
}

#[test]
fn a_pipeline_on_two_ranks_searches_as_one_process_and_fine_tunes_data_parallel() {
    let ckpt = baseline();
    let dir = tempfile::tempdir().unwrap();
    let (one, two_a, two_b) = (dir.path().join("np1"), dir.path().join("np2a"), dir.path().join("np2b"));
    let o = plain(&pipeline_args(&ckpt, &one));
    let table = |o: &Output| String::from_utf8_lossy(&o.stdout).matches("top-1 (tuned)").count();
    assert_eq!(table(&o), 1);
    for out in [&two_a, &two_b] {
        // Rank 0 alone prints the table.
        assert_eq!(table(&mpirun(2, &pipeline_args(&ckpt, out))), 1);
    }
    for search in ["search", "random"] {
        assert_same_search(&one.join(search), &two_a.join(search), &format!("{search} on 2 ranks"));
    }
    let (r1, r2) = (pipeline_report(&one), pipeline_report(&two_a));
    assert_eq!(r1["config"], r2["config"]);
    let (p1, p2) = (r1["report"]["pruned"].as_array().unwrap(), r2["report"]["pruned"].as_array().unwrap());
    assert_eq!(p1.len(), 3);
    for (a, b) in p1.iter().zip(p2) {
        let key = a["key"].as_str().unwrap();
        for k in ["kept", "reward", "macs", "params", "top1_before_finetune"] {
            assert_eq!(a[k], b[k], "{key}: {k}");
        }
        // 64 test images: float rounding may move one across the decision boundary.
        let (x, y) = (a["top1_after_finetune"].as_f64().unwrap(), b["top1_after_finetune"].as_f64().unwrap());
        assert!((x - y).abs() <= 1.0 / 64.0 + 1e-9, "{key}: top-1 after fine-tuning {x} vs {y}");
        let stage = format!("finetune-{}", if key == "random" { "random-search" } else { key });
        let model = |d: &Path| d.join(&stage).join("model.safetensors");
        assert!(bytes(model(&two_a)) == bytes(model(&two_b)), "{key}: 2 ranks twice, different bits");
        let diff = max_relative_difference(&model(&one), &model(&two_a));
        println!("{key}: largest difference, 1 process vs 2 ranks: {diff:.3e} of the tensor's scale");
        assert!(diff < 1e-3, "{key}: 2 ranks differ from one process by {diff:.3e}");
    }
    // A fine-tuning batch that does not split is refused before the searches run.
    let odd = dir.path().join("odd");
    let mut args = pipeline_args(&ckpt, &odd);
    let b = args.iter().position(|a| *a == "--ft-batch-size").unwrap();
    args[b + 1] = "63";
    let o = mpirun_command(2, &args).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("choose a batch size that divides by 2"), "{err}");
    assert!(!odd.join("search").exists(), "the search ran before the refusal");
    // The fine-tuning proxy runs on one process: refused under mpirun, before the searches.
    let proxied = dir.path().join("proxy");
    let mut args = pipeline_args(&ckpt, &proxied);
    args.extend(["--proxy-top", "2"]);
    let o = mpirun_command(2, &args).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--proxy-top is not supported under mpirun"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!proxied.join("search").exists(), "the search ran before the refusal");
}

/// With `--features nccl` on GPUs: 2 ranks of data-parallel training sum their gradients over NCCL
/// (one GPU each), repeat their bits, and match one process within float tolerance. Skips, saying
/// so, without a CUDA device (fails then under `LFGCL_REQUIRE_GPU=1`), with one device (NCCL puts
/// two ranks on two GPUs) or without libnccl.
#[cfg(feature = "nccl")]
#[test]
fn nccl_data_parallel_training_on_two_gpus_repeats_its_bits_and_matches_one_process() {
    const TEST: &str = "nccl_data_parallel_training";
    if gpu::cuda_backend_or_skip(TEST).is_none() {
        return;
    }
    let gpus = cudarc::driver::CudaContext::device_count().unwrap_or(0);
    // SAFETY: only tries to open the library.
    let nccl = unsafe { cudarc::nccl::sys::is_culib_present() };
    if gpus < 2 || !nccl {
        println!("skipped: {gpus} CUDA device(s), libnccl loads: {nccl} (needs 2 and yes) [{TEST}]");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two_a, two_b) = (dir.path().join("np1"), dir.path().join("np2a"), dir.path().join("np2b"));
    plain_on("cuda", &train_args(&one, "64", "0.01", "3"));
    for out in [&two_a, &two_b] {
        let o = mpirun_command_on("cuda", 2, &train_args(out, "64", "0.01", "3")).output().unwrap();
        check(&o, "mpirun -np 2 lfgcl --device cuda train");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("host memory"), "the gradients did not go over NCCL: {err}");
    }
    let model = |d: &Path| d.join("model.safetensors");
    assert!(bytes(model(&two_a)) == bytes(model(&two_b)), "2 ranks twice over NCCL: the same bits");
    let diff = max_relative_difference(&model(&one), &model(&two_a));
    println!("largest difference, 1 GPU vs 2 ranks over NCCL: {diff:.3e} of the tensor's scale");
    assert!(diff < 1e-3, "2 ranks over NCCL differ from one process by {diff:.3e}");
}

/// The pids of the ranks `mpirun` (pid `parent`) started, by rank.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()))
            .unwrap_or(false)
    })
}

#[test]
fn a_killed_rank_stops_the_job_naming_it_and_the_search_resumes() {
    let ckpt = baseline();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed");
    let mut child = mpirun_command(2, &search_args(&ckpt, &out, "20"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    // Wait until a few episodes are logged (and saved: --checkpoint-every 0), then kill rank 1.
    let start = Instant::now();
    let episodes = |p: &Path| std::fs::read_to_string(p.join("candidates.jsonl")).map_or(0, |t| t.lines().count()) / 5;
    while episodes(&out) < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "the search did not start");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rank_pid(child.id(), 1).expect("rank 1's process");
    let killed_at = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "the job did not stop within 20 s of the kill");
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!status.success(), "a job with a killed rank fails");
    assert!(err.contains("rank 1"), "the message names the rank: {err}");
    println!("stopped {:.2}s after the kill: {err}", killed_at.elapsed().as_secs_f64());
    // Nothing saved is lost: one process continues it to the same result as an unbroken run.
    let mut args = search_args(&ckpt, &out, "20");
    args.push("--resume");
    plain(&args);
    let whole = dir.path().join("whole");
    plain(&search_args(&ckpt, &whole, "20"));
    assert_same_search(&whole, &out, "killed at 2 ranks, resumed on 1");
}
