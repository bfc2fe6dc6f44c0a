//! Hostile inputs, second pass (issue 25): special files, import, signals, odd values, atomic
//! writes, a diverged search agent, tampered search states, validation shared by import and eval,
//! non-finite evaluations, flag errors and the smaller messages. Each case runs the `lfgcl` binary
//! as a child under the memory limit of `common/hostile.rs`, with a deadline where a hang is the
//! failure. Numbered as the classes of the issue (10 is in `tests/data.rs`).

#[path = "common/exe.rs"]
mod exe;
#[path = "common/hostile.rs"]
mod harness;

use harness::{assert_ok, assert_refused, mkfifo, run, run_within, s, spawn, train_args, wait_for, with_flags, write};
use lfgcl::models::{Arch, Model};
use lfgcl::nn::{StateMut, StateRef};
use lfgcl::train::checkpoint;
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Deadline of a case whose failure would be a hang (a FIFO opened, a signal ignored).
const HANG: Duration = Duration::from_secs(30);

fn smallcnn() -> Model {
    Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &lfgcl::backend::cpu(), 1).unwrap()
}

fn smallcnn_ckpt(path: &Path) {
    checkpoint::save(&smallcnn(), path, &Value::Null).unwrap();
}

/// A short search of the smallcnn checkpoint `ckpt` into `out`: 2 episodes of 2 candidates.
fn search_args(ckpt: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let base = [
        "--device",
        "cpu",
        "-q",
        "search",
        "--ckpt",
        &s(ckpt),
        "--images",
        "8",
        "--episodes",
        "2",
        "--warmup",
        "1",
        "--candidates-per-step",
        "2",
        "--flops",
        "0.7",
        "--out",
        &s(out),
    ];
    with_flags(base.iter().map(|x| x.to_string()).collect(), extra)
}

/// One tensor of a state dict: name, dtype, shape, and its bytes (None: zeros, left sparse at the
/// end of the file, so that a huge tensor costs no disk).
type Entry = (String, &'static str, Vec<usize>, Option<Vec<u8>>);

fn dtype_bytes(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        other => panic!("dtype {other}"),
    }
}

/// A model's tensors as PyTorch-style state dict entries.
fn entries_of(m: &Model) -> Vec<Entry> {
    m.graph
        .state()
        .into_iter()
        .map(|(name, t)| match t {
            StateRef::F32(t) => {
                let b: Vec<u8> = t.to_vec().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
                (name, "F32", t.dims().to_vec(), Some(b))
            }
            StateRef::I64(v) => (name, "I64", vec![], Some(v.to_le_bytes().to_vec())),
            StateRef::I32(v) => (name, "I32", vec![v.len()], Some(v.iter().flat_map(|x| x.to_le_bytes()).collect())),
        })
        .collect()
}

/// Writes a safetensors file by hand (the zero-filled entries last, as a sparse tail).
fn write_safetensors(path: &Path, entries: &[Entry]) {
    let order: Vec<&Entry> =
        entries.iter().filter(|e| e.3.is_some()).chain(entries.iter().filter(|e| e.3.is_none())).collect();
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, data) in &order {
        let size = (shape.iter().product::<usize>() * dtype_bytes(dtype)) as u64;
        if let Some(d) = data {
            assert_eq!(d.len() as u64, size, "{name}");
        }
        header.insert(name.clone(), json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size] }));
        offset += size;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).unwrap();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(head.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&head).unwrap();
    for (_, _, _, data) in &order {
        if let Some(d) = data {
            f.write_all(d).unwrap();
        }
    }
    f.set_len(8 + head.len() as u64 + offset).unwrap();
}

fn set_entry(entries: &mut [Entry], name: &str, dtype: &'static str, shape: Vec<usize>, data: Option<Vec<u8>>) {
    let e = entries.iter_mut().find(|e| e.0 == name).unwrap_or_else(|| panic!("no tensor {name}"));
    *e = (name.to_string(), dtype, shape, data);
}

fn import_args(from: &Path, model: &str, out: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> =
        ["--device", "cpu", "-q", "import", "--model", model].iter().map(OsString::from).collect();
    v.extend([OsString::from("--from"), from.into(), OsString::from("--out"), out.into()]);
    v
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap().success());
}

/// Rewrites the JSON metadata of a saved search state (`search_state.safetensors`).
fn edit_search_state(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut meta: Value = serde_json::from_str(header["__metadata__"]["lfgcl_search"].as_str().unwrap()).unwrap();
    edit(&mut meta);
    header["__metadata__"]["lfgcl_search"] = Value::String(meta.to_string());
    let mut head = serde_json::to_vec(&header).unwrap();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn non_utf8(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

// ---------------------------------------------------------------------------------------------
// 1. Special files as inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn fifos_given_as_inputs_are_refused_without_waiting_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.safetensors");
    mkfifo(&fifo);
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let o = run_within(&["--device", "cpu", "eval", "--ckpt", &s(&fifo)], HANG);
    assert_refused(&o, &["pipe.safetensors", "FIFO"]);
    let o = run_within(&import_args(&fifo, "smallcnn", &dir.path().join("i.safetensors")), HANG);
    assert_refused(&o, &["pipe.safetensors", "FIFO"]);
    let out = s(&dir.path().join("pruned.safetensors"));
    let o = run_within(
        &["--device", "cpu", "prune-apply", "--ckpt", &s(&ckpt), "--ratios", &s(&fifo), "--out", &out],
        HANG,
    );
    assert_refused(&o, &["pipe.safetensors", "FIFO"]);
    // The saved state of a search.
    let search = dir.path().join("search");
    assert_ok(&run(&search_args(&ckpt, &search, &[])));
    let state = search.join("search_state.safetensors");
    std::fs::remove_file(&state).unwrap();
    mkfifo(&state);
    let o = run_within(&search_args(&ckpt, &search, &["--episodes", "3", "--resume"]), HANG);
    assert_refused(&o, &["search_state.safetensors", "FIFO"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Import checks names, types and shapes before it converts anything
// ---------------------------------------------------------------------------------------------

#[test]
fn import_refuses_a_large_extra_or_wrong_tensor_before_converting_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported.safetensors");
    // The file as it should be imports.
    let good = dir.path().join("good.safetensors");
    write_safetensors(&good, &entries_of(&smallcnn()));
    assert_ok(&run(&import_args(&good, "smallcnn", &out)));
    // 600 MB of half floats more (1.2 GB once converted to f32), under a 1.5 GB limit.
    let mut entries = entries_of(&smallcnn());
    entries.push(("huge.weight".into(), "F16", vec![300_000_000], None));
    let p = dir.path().join("extra.safetensors");
    write_safetensors(&p, &entries);
    assert_refused(&run(&import_args(&p, "smallcnn", &out)), &["extra.safetensors", "huge.weight"]);
    // The classifier's bias, 600 MB long.
    let mut entries = entries_of(&smallcnn());
    set_entry(&mut entries, "fc.bias", "F16", vec![300_000_000], None);
    let p = dir.path().join("wrong.safetensors");
    write_safetensors(&p, &entries);
    assert_refused(&run(&import_args(&p, "smallcnn", &out)), &["wrong.safetensors", "fc.bias"]);
}

// ---------------------------------------------------------------------------------------------
// 3. SIGINT / SIGTERM stop every long stage cleanly
// ---------------------------------------------------------------------------------------------

/// The child stopped on its own after the signal, exit 1, with an `interrupted` error line.
fn assert_interrupted(o: &harness::Outcome) {
    assert_eq!(o.code, Some(1), "not a clean stop: {}", o.context());
    assert!(o.error_line().contains("interrupted"), "{}", o.context());
}

#[test]
fn training_stops_cleanly_on_sigterm_and_keeps_its_resume_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = spawn(&train_args(&out, &["--epochs", "1000"]));
    wait_for(&out.join("train_state.safetensors"), Duration::from_secs(60));
    child.signal("TERM");
    let o = child.finish(HANG);
    assert_interrupted(&o);
    assert!(o.error_line().contains("--resume"), "{}", o.context());
    assert!(out.join("train_state.safetensors").is_file());
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join(".lfgcl.lock").exists(), "the lock is released");
}

#[test]
fn pipeline_stops_cleanly_on_sigint_during_fine_tuning() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("base.safetensors");
    smallcnn_ckpt(&ckpt);
    let out = dir.path().join("pipeline");
    let args = [
        "--device",
        "cpu",
        "-q",
        "pipeline",
        "--ckpt",
        &s(&ckpt),
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--images",
        "8",
        "--episodes",
        "2",
        "--warmup",
        "1",
        "--candidates-per-step",
        "2",
        "--flops",
        "0.7",
        "--no-random",
        "--no-uniform",
        "--no-deploy-bench",
        "--ft-epochs",
        "1000",
        "--ft-batch-size",
        "32",
        "--out",
        &s(&out),
    ];
    let child = spawn(&args);
    wait_for(&out.join("finetune-lfgcl/train_state.safetensors"), Duration::from_secs(90));
    child.signal("INT");
    let o = child.finish(HANG);
    assert_interrupted(&o);
    assert!(out.join("finetune-lfgcl/train_state.safetensors").is_file());
}

#[test]
fn a_benchmark_stops_cleanly_on_sigterm() {
    let child = spawn(&["--device", "cpu", "bench", "infer", "--model", "smallcnn", "--batch", "8", "--reps", "99999"]);
    std::thread::sleep(Duration::from_secs(3));
    child.signal("TERM");
    assert_interrupted(&child.finish(HANG));
}

// ---------------------------------------------------------------------------------------------
// 4. Huge durations and paths that are not UTF-8
// ---------------------------------------------------------------------------------------------

#[test]
fn a_huge_duration_is_refused_with_the_value_given() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let o = run(&search_args(&ckpt, &dir.path().join("s"), &["--checkpoint-every", "1e308"]));
    assert_refused(&o, &["--checkpoint-every", "1e308"]);
}

#[test]
fn paths_that_are_not_utf8_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = non_utf8(dir.path(), b"out-\xff");
    let mut args: Vec<OsString> = train_args(Path::new("X"), &[]).into_iter().map(OsString::from).collect();
    *args.last_mut().unwrap() = out.clone().into();
    assert_ok(&run(&args));
    let ckpt = out.join("model.safetensors");
    assert!(ckpt.is_file());
    let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let mut eval = os(&["--device", "cpu", "eval", "--data", "synthetic", "--test-limit", "32", "--ckpt"]);
    eval.extend([ckpt.clone().into(), "--json".into(), non_utf8(dir.path(), b"eval-\xfe.json").into()]);
    assert_ok(&run(&eval));
    let mut export = os(&["--device", "cpu", "export-onnx", "--ckpt"]);
    export.extend([ckpt.clone().into(), "--out".into(), non_utf8(dir.path(), b"net-\xfe.onnx").into()]);
    assert_ok(&run(&export));
    let dict = non_utf8(dir.path(), b"dict-\xfe.safetensors");
    write_safetensors(&dict, &entries_of(&smallcnn()));
    assert_ok(&run(&import_args(&dict, "smallcnn", &non_utf8(dir.path(), b"imported-\xfe.safetensors"))));
    let mut ft = os(&[
        "--device",
        "cpu",
        "-q",
        "finetune",
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--ft-epochs",
        "1",
        "--ft-batch-size",
        "32",
    ]);
    ft.extend(["--ckpt".into(), ckpt.clone().into(), "--teacher".into(), ckpt.clone().into()]);
    ft.extend(["--out".into(), non_utf8(dir.path(), b"ft-\xfe").into()]);
    assert_ok(&run(&ft));
}

// ---------------------------------------------------------------------------------------------
// 5. Atomic writes: not over special files, through symlinks, long names, stale temporaries
// ---------------------------------------------------------------------------------------------

#[test]
fn outputs_refuse_special_files_follow_symlinks_fit_long_names_and_clean_stale_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let export = |out: &Path| run(&["--device", "cpu", "-q", "export-onnx", "--ckpt", &s(&ckpt), "--out", &s(out)]);
    // A FIFO is refused and stays a FIFO.
    let fifo = dir.path().join("fifo.onnx");
    mkfifo(&fifo);
    assert_refused(
        &run_within(&["--device", "cpu", "-q", "export-onnx", "--ckpt", &s(&ckpt), "--out", &s(&fifo)], HANG),
        &["fifo.onnx", "FIFO"],
    );
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    let o =
        run_within(&["--device", "cpu", "eval", "--ckpt", &s(&ckpt), "--test-limit", "32", "--json", &s(&fifo)], HANG);
    assert_refused(&o, &["fifo.onnx", "FIFO"]);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    // A symlink is followed: the link stays, the file it names is written.
    let real = dir.path().join("real/net.onnx");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    let link = dir.path().join("link.onnx");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_ok(&export(&link));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    assert!(real.is_file() && std::fs::metadata(&real).unwrap().len() > 0);
    // A name of 250 bytes (its temporary name must still fit the 255-byte limit).
    let long = dir.path().join(format!("{}.onnx", "n".repeat(245)));
    assert_ok(&export(&long));
    assert!(long.is_file());
    // A temporary left by a killed writer is removed by the next write of the same file.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = dir.path().join(format!(".out.onnx.{dead}.tmp"));
    write(&stale, b"half written");
    assert_ok(&export(&dir.path().join("out.onnx")));
    assert!(!stale.exists(), "the stale temporary was left behind");
}

// ---------------------------------------------------------------------------------------------
// 6. A diverged search agent
// ---------------------------------------------------------------------------------------------

#[test]
fn a_diverged_agent_stops_the_search_before_anything_non_finite_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let out = dir.path().join("search");
    let args = search_args(
        &ckpt,
        &out,
        &[
            "--episodes",
            "12",
            "--warmup",
            "4",
            "--candidates-per-step",
            "16",
            "--updates-per-episode",
            "4",
            "--actor-lr",
            "1e30",
        ],
    );
    assert_refused(&run(&args), &["agent diverged"]);
    let log = std::fs::read_to_string(out.join("candidates.jsonl")).unwrap();
    assert!(!log.contains("null"), "a non-finite value was logged");
    // The folder resumes from its last good state (and the agent diverges again, saying so).
    let mut resume = args.clone();
    resume.push("--resume".into());
    assert_refused(&run(&resume), &["agent diverged"]);
}

// ---------------------------------------------------------------------------------------------
// 7. --resume checks every field of the saved search state
// ---------------------------------------------------------------------------------------------

#[test]
fn a_saved_search_state_that_disagrees_with_its_log_or_net_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let base = dir.path().join("base");
    assert_ok(&run(&search_args(&ckpt, &base, &[])));
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("unchanged", Box::new(|_| {}), ""),
        ("log0", Box::new(|m| m["log_bytes"] = json!(0)), "log_bytes"),
        ("midline", Box::new(|m| m["log_bytes"] = json!(m["log_bytes"].as_u64().unwrap() - 5)), "log_bytes"),
        ("episodes", Box::new(|m| m["episodes_done"] = json!(1)), "episodes_done"),
        ("evaluated", Box::new(|m| m["evaluated"] = json!(m["evaluated"].as_u64().unwrap() + 1)), "evaluated"),
        ("reward", Box::new(|m| m["best"]["reward"] = json!(1e9)), "best"),
        ("kept", Box::new(|m| m["best"]["kept"][0] = json!(100_000)), "best"),
        ("time", Box::new(|m| m["time"]["total_s"] = json!(-1.0)), "time.total_s"),
        ("pending", Box::new(|m| m["pending_updates"] = json!(7)), "pending_updates"),
    ];
    for (name, edit, field) in cases {
        let out = dir.path().join(name);
        copy_dir(&base, &out);
        let log_before = std::fs::read(out.join("candidates.jsonl")).unwrap();
        edit_search_state(&out.join("search_state.safetensors"), edit);
        let o = run(&search_args(&ckpt, &out, &["--episodes", "3", "--resume"]));
        if field.is_empty() {
            assert_ok(&o);
        } else {
            assert_refused(&o, &["search_state.safetensors", field]);
            let log_after = std::fs::read(out.join("candidates.jsonl")).unwrap();
            assert_eq!(log_before, log_after, "{name}: the log was changed by a refused resume");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Import refuses what eval refuses
// ---------------------------------------------------------------------------------------------

#[test]
fn import_and_eval_share_one_validation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported.safetensors");
    // A negative batch-norm variance.
    let mut entries = entries_of(&smallcnn());
    let var = entries.iter().find(|e| e.0 == "bn1.running_var").unwrap().clone();
    let mut v: Vec<u8> = var.3.clone().unwrap();
    v[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    set_entry(&mut entries, "bn1.running_var", "F32", var.2.clone(), Some(v));
    let p = dir.path().join("var.safetensors");
    write_safetensors(&p, &entries);
    assert_refused(&run(&import_args(&p, "smallcnn", &out)), &["var.safetensors", "bn1.running_var"]);
    // A channel map entry beyond i32 (which a cast would wrap to a valid channel).
    let resnet = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &lfgcl::backend::cpu(), 1).unwrap();
    let mut entries = entries_of(&resnet);
    let good = dir.path().join("resnet.safetensors");
    write_safetensors(&good, &entries);
    assert_ok(&run(&import_args(&good, "resnet20", &out)));
    let map = entries.iter().find(|e| e.0.ends_with(".channel_map")).expect("resnet20 has channel maps").clone();
    let n = map.2[0];
    let wrapped: Vec<u8> =
        (0..n as i64).map(|i| if i == 0 { (1i64 << 32) + 1 } else { i }).flat_map(|x| x.to_le_bytes()).collect();
    set_entry(&mut entries, &map.0, "I64", vec![n], Some(wrapped));
    let p = dir.path().join("map.safetensors");
    write_safetensors(&p, &entries);
    assert_refused(&run(&import_args(&p, "resnet20", &out)), &["map.safetensors", &map.0]);
    // A std so small that normalised inputs overflow: refused by import, and by eval in a checkpoint.
    let mut args = import_args(&good, "resnet20", &out);
    args.extend(["--mean", "0.5,0.5,0.5", "--std", "1e-39,1e-39,1e-39"].iter().map(OsString::from));
    assert_refused(&run(&args), &["--std"]);
    let mut m = smallcnn();
    m.normalization = Some(lfgcl::data::Normalization { mean: vec![0.5; 3], std: vec![1e-39; 3] });
    let tiny = dir.path().join("tiny-std.safetensors");
    checkpoint::save(&m, &tiny, &Value::Null).unwrap();
    let o = run(&["--device", "cpu", "eval", "--ckpt", &s(&tiny), "--test-limit", "32"]);
    assert_refused(&o, &["tiny-std.safetensors", "std"]);
}

// ---------------------------------------------------------------------------------------------
// 9. A non-finite evaluation is a divergence, not a result
// ---------------------------------------------------------------------------------------------

#[test]
fn non_finite_evaluations_are_divergences_and_eval_says_the_outputs_are_not_finite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run(&train_args(&out, &["--lr", "1e6"]));
    assert_refused(&o, &["diverged"]);
    assert!(!out.join("model.safetensors").exists(), "a checkpoint of a diverged net was saved");
    // Finite weights whose outputs overflow.
    let mut m = smallcnn();
    for (name, slot) in m.graph.state_mut() {
        if let (true, StateMut::F32(t)) = (name == "fc.weight", slot) {
            let v = vec![f32::MAX / 2.0; t.numel()];
            *t = lfgcl::Tensor::from_vec(t.dims(), v).unwrap();
        }
    }
    let big = dir.path().join("big.safetensors");
    checkpoint::save(&m, &big, &Value::Null).unwrap();
    let o = run(&["--device", "cpu", "eval", "--ckpt", &s(&big), "--test-limit", "32"]);
    assert_refused(&o, &["not finite"]);
    // Fine-tuning that diverges.
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let o = run(&[
        "--device",
        "cpu",
        "-q",
        "finetune",
        "--ckpt",
        &s(&ckpt),
        "--teacher",
        &s(&ckpt),
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--ft-epochs",
        "1",
        "--ft-batch-size",
        "32",
        "--ft-lr",
        "1e20",
        "--out",
        &s(&dir.path().join("ft")),
    ]);
    assert_refused(&o, &["diverged"]);
}

// ---------------------------------------------------------------------------------------------
// 11. Flag values clap cannot parse: exit 1, one error line, the value as given
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_flag_values_exit_1_with_one_error_line_saying_the_value_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let one_line = |o: &harness::Outcome, names: &[&str]| {
        assert_eq!(o.code, Some(1), "{}", o.context());
        let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected: {}", o.context());
        assert!(lines[0].starts_with("error:"), "{}", o.context());
        for n in names {
            assert!(lines[0].contains(n), "should name '{n}': {}", o.context());
        }
    };
    one_line(&run(&train_args(&out, &["--lr", "abc"])), &["--lr", "abc"]);
    one_line(&run(&train_args(&out, &["--seed=-3"])), &["--seed", "-3"]);
    one_line(&run(&["eval"]), &["--ckpt"]);
    let o = run(&train_args(&out, &["--lr", "1e308"]));
    one_line(&o, &["--lr", "1e308"]);
    assert!(!o.stderr.contains("inf"), "{}", o.context());
    assert_ok(&run(&["train", "--help"]));
}

// ---------------------------------------------------------------------------------------------
// 12. Smaller messages
// ---------------------------------------------------------------------------------------------

#[test]
fn import_messages_name_the_wrong_type_and_never_suggest_overwriting_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported.safetensors");
    // A conv bias of integers: a type error, not "has shape [16], expected [16]".
    let mut entries = entries_of(&smallcnn());
    let channels = entries.iter().find(|e| e.0 == "conv1.weight").unwrap().2[0];
    entries.push(("conv1.bias".into(), "I64", vec![channels], Some(vec![0u8; 8 * channels])));
    let p = dir.path().join("bias.safetensors");
    write_safetensors(&p, &entries);
    let o = run(&import_args(&p, "smallcnn", &out));
    assert_refused(&o, &["conv1.bias", "I64"]);
    assert!(!o.error_line().contains("has shape"), "{}", o.context());
    // A pickle named .safetensors: the conversion command writes elsewhere.
    let p = dir.path().join("model.safetensors");
    write(&p, b"PK\x03\x04 a zip archive, as torch.save writes");
    let o = run(&import_args(&p, "smallcnn", &out));
    assert_refused(&o, &["model.safetensors"]);
    let line = o.error_line();
    let cmd = line.split('`').nth(1).unwrap_or_else(|| panic!("no command in one line: {}", o.context()));
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(words[..2], ["python3", "scripts/torch_to_safetensors.py"], "{cmd}");
    assert_ne!(words[2], words[3], "input and output are the same file: {cmd}");
}

#[test]
fn a_symlink_loop_is_not_reported_as_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let state = out.join("train_state.safetensors");
    std::os::unix::fs::symlink(&state, &state).unwrap();
    let o = run(&train_args(&out, &["--resume"]));
    assert_refused(&o, &["train_state.safetensors"]);
    assert!(!o.error_line().contains("not found"), "{}", o.context());
    assert!(o.error_line().contains("symbolic links"), "{}", o.context());
}

#[test]
fn bench_deploy_refuses_zero_rounds_and_a_nan_duration() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let bench = |flag: &str, value: &str| {
        run(&[
            "--device",
            "cpu",
            "-q",
            "bench",
            "deploy",
            "--ckpt",
            &s(&ckpt),
            "--no-ort",
            "--batch",
            "1",
            &format!("{flag}={value}"),
        ])
    };
    assert_refused(&bench("--rounds", "0"), &["--rounds"]);
    assert_refused(&bench("--min-seconds", "nan"), &["--min-seconds"]);
    assert_refused(&bench("--min-seconds", "1e308"), &["--min-seconds", "1e308"]);
}

#[test]
fn a_lock_holding_the_pid_of_an_unrelated_live_process_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    write(&out.join(".lfgcl.lock"), sleeper.id().to_string().as_bytes());
    let o = run(&train_args(&out, &[]));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_ok(&o);
    assert!(!out.join(".lfgcl.lock").exists(), "the lock is released at the end");
}

#[test]
fn runs_racing_for_a_stale_lock_let_exactly_one_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    write(&out.join(".lfgcl.lock"), dead.to_string().as_bytes());
    // Each run holds the folder for a few seconds, far longer than the others take to start.
    let runs: Vec<_> = (0..4).map(|_| spawn(&train_args(&out, &["--epochs", "40"]))).collect();
    let outcomes: Vec<_> = runs.into_iter().map(|r| r.finish(Duration::from_secs(120))).collect();
    let won: Vec<_> = outcomes.iter().filter(|o| o.code == Some(0)).collect();
    assert_eq!(won.len(), 1, "{}", outcomes.iter().map(|o| o.context()).collect::<Vec<_>>().join("\n"));
    for o in outcomes.iter().filter(|o| o.code != Some(0)) {
        assert_refused(o, &["in use"]);
    }
}
