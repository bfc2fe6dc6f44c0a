//! Hostile inputs, generated at test time, run through the `lfgcl` binary as a child process under
//! a virtual-memory limit. Every one must be refused: no panic or abort, a non-zero exit, and one
//! `error:` line naming the file or flag at fault, not an allocation failure dressed up as
//! "out of memory" or "corrupt".
//!
//! `LFGCL_TEST_EXE=/path/to/lfgcl cargo test --test hostile` runs the same cases against another
//! build (e.g. an older one, to see which cases it fails).

#[path = "common/exe.rs"]
mod exe;
#[path = "common/hostile.rs"]
mod harness;

use harness::{assert_ok, assert_refused, run, s, train_args, write};
use lfgcl::models::{Arch, Model};
use lfgcl::train::checkpoint;
use std::io::Write;
use std::path::Path;

/// A fresh smallcnn checkpoint for the synthetic set (3x32x32, 10 classes).
fn smallcnn_ckpt(path: &Path) {
    let m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &lfgcl::backend::cpu(), 1).unwrap();
    checkpoint::save(&m, path, &serde_json::Value::Null).unwrap();
}

/// Checkpoint bytes whose architecture metadata is replaced by `arch_json`.
fn with_arch_metadata(arch_json: &str) -> Vec<u8> {
    let m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &lfgcl::backend::cpu(), 1).unwrap();
    let bytes = checkpoint::to_bytes(&m, &serde_json::Value::Null).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"]["lfgcl.arch"] = serde_json::Value::String(arch_json.to_string());
    let mut head = serde_json::to_vec(&header).unwrap();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn png(path: &Path, size: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(size, size, image::Rgb(rgb)).save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// A PNG whose header claims `w` x `h` RGB pixels, followed by a few bytes of image data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&[0u8; 4096]).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

fn idx_header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut h = magic.to_be_bytes().to_vec();
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A gzip file of many members (which a multi-member reader concatenates): `header`, then
/// `zero_members` x 64 MiB of zeros, in a few MB.
fn gzip_bomb(header: &[u8], zero_members: usize) -> Vec<u8> {
    let mut out = gzip(header);
    let member = gzip(&vec![0u8; 64 << 20]);
    for _ in 0..zero_members {
        out.extend_from_slice(&member);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Sizes taken from a file or a flag
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_sizes_in_checkpoint_metadata_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "widths.safetensors",
            r#"{"model":"smallcnn","in_channels":3,"input_size":32,"num_classes":10,"widths":[4611686018427387904,32,64]}"#,
        ),
        (
            "classes.safetensors",
            r#"{"model":"smallcnn","in_channels":3,"input_size":32,"num_classes":1000000000,"widths":[16,32,64]}"#,
        ),
        (
            "channels.safetensors",
            r#"{"model":"smallcnn","in_channels":1000000000,"input_size":32,"num_classes":10,"widths":[16,32,64]}"#,
        ),
        (
            "wide.safetensors",
            r#"{"model":"smallcnn","in_channels":3,"input_size":32,"num_classes":10,"widths":[16000,16000,16000]}"#,
        ),
        (
            "size.safetensors",
            r#"{"model":"smallcnn","in_channels":3,"input_size":1000000,"num_classes":10,"widths":[16,32,64]}"#,
        ),
        (
            "deep.safetensors",
            r#"{"model":"resnet600000002","in_channels":3,"input_size":32,"num_classes":10,"widths":[16,32,64]}"#,
        ),
    ];
    for (name, arch) in cases {
        let p = dir.path().join(name);
        write(&p, &with_arch_metadata(arch));
        assert_refused(&run(&["--device", "cpu", "info", "--ckpt", &s(&p)]), &[name]);
    }
    let p = dir.path().join("widths.safetensors");
    assert_refused(&run(&["--device", "cpu", "eval", "--ckpt", &s(&p)]), &["widths.safetensors"]);
}

#[test]
fn huge_model_names_and_size_flags_are_refused() {
    assert_refused(&run(&["info", "--model", "resnet600000002"]), &["resnet600000002"]);
    assert_refused(&run(&["info", "--model", "resnet20", "--input", "3x100000x100000"]), &["input size"]);
    assert_refused(&run(&["info", "--model", "resnet20", "--classes", "1000000000"]), &["class count"]);
    assert_refused(&run(&["--threads", "100000", "info", "--model", "resnet20"]), &["--threads"]);
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a/1.png"), 8, [1, 2, 3]);
    let data = format!("folder:{}", s(dir.path()));
    let out = dir.path().join("out");
    let o = run(&train_args(&out, &["--data", &data, "--image-size", "100000"]));
    assert_refused(&o, &["--image-size"]);
    assert_refused(&run(&train_args(&out, &["--batch-size", "1000000000"])), &["--batch-size"]);
    assert_refused(&run(&["--device", "cpu", "bench", "cpu", "--reps", "1000000000000"]), &["--reps"]);
}

#[test]
fn checkpoint_that_is_not_a_regular_file_or_lies_about_its_header_is_refused() {
    assert_refused(&run(&["--device", "cpu", "eval", "--ckpt", "/dev/zero"]), &["/dev/zero"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("header.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    write(&p, &bytes);
    assert_refused(&run(&["--device", "cpu", "eval", "--ckpt", &s(&p)]), &["header.safetensors"]);
    let out = s(&dir.path().join("imported.safetensors"));
    let o = run(&["--device", "cpu", "import", "--from", "/dev/zero", "--model", "resnet20", "--out", &out]);
    assert_refused(&o, &["/dev/zero"]);
}

#[test]
fn gzip_idx_bombs_are_refused_before_they_inflate() {
    let dir = tempfile::tempdir().unwrap();
    // (a) the header itself claims more than a dataset may hold;
    // (b) an honest-looking header (60000 28x28 images) over a stream that inflates to 5 GiB.
    let cases = [("claims", idx_header(0x803, &[7_000_000, 28, 28])), ("lies", idx_header(0x803, &[60_000, 28, 28]))];
    for (name, header) in cases {
        let d = dir.path().join(name);
        write(&d.join("train-images-idx3-ubyte.gz"), &gzip_bomb(&header, 80));
        write(&d.join("train-labels-idx1-ubyte"), &idx_header(0x801, &[0]));
        let data = format!("mnist:{}", s(&d));
        let o = run(&train_args(&dir.path().join("out"), &["--data", &data]));
        assert_refused(&o, &["train-images-idx3-ubyte.gz"]);
    }
}

#[test]
fn huge_images_are_refused_per_image() {
    let dir = tempfile::tempdir().unwrap();
    // A PNG whose header claims 60000x60000 pixels (10 GB of RGB).
    write(&dir.path().join("a/huge.png"), &png_claiming(60_000, 60_000));
    png(&dir.path().join("a/ok.png"), 8, [1, 2, 3]);
    let data = format!("folder:{}", s(dir.path()));
    assert_refused(&run(&train_args(&dir.path().join("out"), &["--data", &data])), &["huge.png"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Non-finite numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn checkpoints_with_non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.safetensors");
    let mut m = Model::new(Arch::new("smallcnn", 3, 32, 10).unwrap(), &lfgcl::backend::cpu(), 1).unwrap();
    for (name, slot) in m.graph.state_mut() {
        if let (true, lfgcl::nn::StateMut::F32(t)) = (name == "conv2.weight", slot) {
            let mut v = t.to_vec().unwrap();
            v[7] = f32::NAN;
            *t = lfgcl::Tensor::from_vec(t.dims(), v).unwrap();
        }
    }
    checkpoint::save(&m, &p, &serde_json::Value::Null).unwrap();
    let o = run(&["--device", "cpu", "eval", "--ckpt", &s(&p), "--data", "synthetic", "--test-limit", "32"]);
    assert_refused(&o, &["nan.safetensors", "conv2.weight"]);
    let o = run(&["--device", "cpu", "bench", "search", "--ckpt", &s(&p), "--images", "8", "--candidates", "1"]);
    assert_refused(&o, &["nan.safetensors", "conv2.weight"]);
}

#[test]
fn non_finite_and_negative_float_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (flag, value) in [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--warmup", "nan"),
        ("--weight-decay", "nan"),
        ("--momentum", "nan"),
        ("--schedule", "step:0@nan"),
        ("--schedule", "step:0@-1"),
        ("--schedule", "step:0@inf"),
    ] {
        assert_refused(&run(&train_args(&out, &[flag, value])), &[flag]);
    }
    let ckpt = dir.path().join("base.safetensors");
    smallcnn_ckpt(&ckpt);
    let finetune = |extra: &[&str]| {
        let (ckpt, out) = (s(&ckpt), s(&out));
        let mut args = vec!["--device", "cpu", "finetune", "--ckpt", ckpt.as_str(), "--out", out.as_str()];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (flag, value) in [
        ("--ft-lr", "nan"),
        ("--ft-lr", "-1"),
        ("--temperature", "nan"),
        ("--temperature", "0"),
        ("--ft-feature-weight", "nan"),
        ("--ft-feature-weight", "-1"),
    ] {
        let o = finetune(&["--teacher", &s(&ckpt), &format!("{flag}={value}")]);
        assert_refused(&o, &[flag]);
    }
    // Feature distillation needs the baseline's penultimate width: not with labels, nor with
    // --streams (which prunes it), refused before any work.
    let o = finetune(&["--labels", "--ft-feature-weight=1"]);
    assert_refused(&o, &["--ft-feature-weight", "--labels"]);
    let o = run(&[
        "--device",
        "cpu",
        "pipeline",
        "--ckpt",
        &s(&ckpt),
        "--streams",
        "--ft-feature-weight=1",
        "--out",
        &s(&out),
    ]);
    assert_refused(&o, &["--ft-feature-weight", "--streams"]);
    let pruned = s(&dir.path().join("pruned.safetensors"));
    for (flag, value) in [("--lower", "nan"), ("--flops", "nan"), ("--params", "-1"), ("--flops", "inf")] {
        let o = run(&[
            "--device",
            "cpu",
            "prune-apply",
            "--uniform",
            "--ckpt",
            &s(&ckpt),
            "--out",
            &pruned,
            &format!("{flag}={value}"),
        ]);
        assert_refused(&o, &[flag]);
    }
    for keep in ["nan", "0", "1.5"] {
        let o = run(&["--device", "cpu", "bench", "search", "--ckpt", &s(&ckpt), "--keep", keep, "--images", "8"]);
        assert_refused(&o, &["--keep"]);
    }
}

#[test]
fn a_diverging_training_stops_with_its_epoch_and_step_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run(&train_args(&out, &["--lr", "1e38", "--epochs", "2"]));
    assert_refused(&o, &["diverged", "epoch 1 step"]);
    assert!(!out.join("model.safetensors").exists(), "no checkpoint of a diverged net");
    assert!(!out.join("summary.json").exists());
}

// ---------------------------------------------------------------------------------------------
// 3. Empty or mismatched data
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_training_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&run(&train_args(&dir.path().join("out"), &["--limit", "0"])), &["--limit"]);
    let d = dir.path().join("idx");
    write(&d.join("train-images-idx3-ubyte"), &idx_header(0x803, &[0, 28, 28]));
    write(&d.join("train-labels-idx1-ubyte"), &idx_header(0x801, &[0]));
    write(&d.join("t10k-images-idx3-ubyte"), &idx_header(0x803, &[0, 28, 28]));
    write(&d.join("t10k-labels-idx1-ubyte"), &idx_header(0x801, &[0]));
    let data = format!("mnist:{}", s(&d));
    assert_refused(&run(&train_args(&dir.path().join("out2"), &["--data", &data])), &["train-images-idx3-ubyte"]);
}

#[test]
fn a_folder_without_splits_gives_no_test_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    for (i, class) in ["cat", "dog"].iter().enumerate() {
        for k in 0..4 {
            png(&dir.path().join(format!("data/{class}/{k}.png")), 32, [100 * i as u8, 10 * k, 50]);
        }
    }
    let data = format!("folder:{}", s(&dir.path().join("data")));
    let out = dir.path().join("out");
    // Training uses the whole folder and says so; it reports no "test" accuracy.
    let o = run(&train_args(&out, &["--data", &data, "--batch-size", "4"]));
    assert_ok(&o);
    assert!(o.stderr.contains("no test split"), "{}", o.stderr);
    assert!(!o.stdout.contains("test top-1"), "{}", o.stdout);
    // Evaluating on its "test" split is refused; on its training split it works.
    let ckpt = s(&out.join("model.safetensors"));
    let o = run(&["--device", "cpu", "eval", "--ckpt", &ckpt, "--data", &data]);
    assert_refused(&o, &["data", "no test split", "--split train"]);
    assert_ok(&run(&["--device", "cpu", "eval", "--ckpt", &ckpt, "--data", &data, "--split", "train"]));
}

#[test]
fn test_classes_are_matched_to_training_classes_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    png(&root.join("train/cat/1.png"), 32, [200, 0, 0]);
    png(&root.join("train/dog/1.png"), 32, [0, 200, 0]);
    png(&root.join("test/dog/1.png"), 32, [0, 200, 0]);
    let opts = lfgcl::data::OpenOptions::default();
    let test = lfgcl::data::open(&s(&root), lfgcl::data::Split::Test, &opts).unwrap();
    assert_eq!(test.labels, Some(vec![1]), "test 'dog' is training class 1, not 0");
    assert_eq!((test.num_classes, test.class_names.clone()), (2, vec!["cat".to_string(), "dog".to_string()]));

    // A test class the training split does not have is refused, by name.
    png(&root.join("test/emu/1.png"), 32, [0, 0, 200]);
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let data = format!("folder:{}", s(&root));
    let o = run(&["--device", "cpu", "eval", "--ckpt", &s(&ckpt), "--data", &data]);
    assert_refused(&o, &["emu"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Policy files
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_files_with_bad_rounding_or_for_another_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    smallcnn_ckpt(&ckpt);
    let cases = [
        ("round3.json", r#"{"ratios":[0.5,0.5,0.5],"round":3}"#, "round"),
        ("round1e9.json", r#"{"ratios":[0.5,0.5,0.5],"round":1e9}"#, "round"),
        ("roundbig.json", r#"{"ratios":[0.5,0.5,0.5],"round":1000000000}"#, "round"),
        ("round0.json", r#"{"ratios":[0.5,0.5,0.5],"round":0}"#, "round"),
        ("roundneg.json", r#"{"ratios":[0.5,0.5,0.5],"round":-4}"#, "round"),
        ("other.json", r#"{"model":"resnet56","ratios":[0.5,0.5,0.5]}"#, "model"),
        ("widths.json", r#"{"model":"smallcnn","channels":[8,16,32],"ratios":[0.5,0.5,0.5]}"#, "channels"),
    ];
    for (name, text, field) in cases {
        let p = dir.path().join(name);
        write(&p, text.as_bytes());
        let out = s(&dir.path().join("pruned.safetensors"));
        let o = run(&["--device", "cpu", "prune-apply", "--ckpt", &s(&ckpt), "--ratios", &s(&p), "--out", &out]);
        assert_refused(&o, &[name, field]);
    }
    // A policy "file" that never ends.
    let out = s(&dir.path().join("pruned.safetensors"));
    let o = run(&["--device", "cpu", "prune-apply", "--ckpt", &s(&ckpt), "--ratios", "/dev/zero", "--out", &out]);
    assert_refused(&o, &["/dev/zero"]);
    // The same file with a valid rounding is applied.
    let p = dir.path().join("good.json");
    write(&p, br#"{"model":"smallcnn","ratios":[0.5,0.5,0.5],"round":4}"#);
    let out = s(&dir.path().join("pruned.safetensors"));
    assert_ok(&run(&["--device", "cpu", "prune-apply", "--ckpt", &s(&ckpt), "--ratios", &s(&p), "--out", &out]));
}

// ---------------------------------------------------------------------------------------------
// 7. Smaller ones: locks, stale summaries, --init, truncated JPEGs
// ---------------------------------------------------------------------------------------------

#[test]
fn an_output_folder_in_use_is_refused_and_a_stale_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Held by a live lfgcl run (it takes the lock before it starts its log).
    let holder = harness::spawn(&train_args(&out, &["--epochs", "1000"]));
    harness::wait_for(&out.join("train_log.jsonl"), std::time::Duration::from_secs(60));
    assert_refused(&run(&train_args(&out, &[])), &["in use", &holder.pid().to_string()]);
    // Killed: it leaves its lock file behind, which the next run takes over.
    holder.signal("KILL");
    assert_eq!(holder.finish(std::time::Duration::from_secs(30)).code, None);
    assert!(out.join(".lfgcl.lock").exists());
    assert_ok(&run(&train_args(&out, &[])));
    assert!(!out.join(".lfgcl.lock").exists(), "the lock is released at the end");
}

#[test]
fn a_failed_rerun_leaves_no_stale_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    assert_ok(&run(&train_args(&out, &[])));
    assert!(out.join("summary.json").exists());
    assert_refused(&run(&train_args(&out, &["--lr", "1e38", "--epochs", "2"])), &["diverged"]);
    assert!(!out.join("summary.json").exists(), "the summary of the earlier run must not pass for this one's");
}

#[test]
fn train_init_refuses_flags_that_disagree_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("init.safetensors");
    smallcnn_ckpt(&ckpt);
    let out = dir.path().join("out");
    let init = s(&ckpt);
    let mut args = train_args(&out, &["--init", &init]);
    let model_at = args.iter().position(|a| a == "--model").unwrap();
    args[model_at + 1] = "resnet20".into();
    assert_refused(&run(&args), &["--model", "init.safetensors"]);
    args[model_at + 1] = "smallcnn".into();
    args.extend(["--classes".to_string(), "7".to_string()]);
    assert_refused(&run(&args), &["--classes", "init.safetensors"]);
    args.truncate(args.len() - 2);
    assert_ok(&run(&args));
}

#[test]
fn truncated_jpegs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut jpeg = Vec::new();
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]));
    img.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    write(&root.join("a/whole.jpg"), &jpeg);
    write(&root.join("a/cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]);
    let data = format!("folder:{}", s(&root));
    assert_refused(&run(&train_args(&dir.path().join("out"), &["--data", &data])), &["cut.jpg", "truncated"]);
    std::fs::remove_file(root.join("a/cut.jpg")).unwrap();
    assert_ok(&run(&train_args(&dir.path().join("out"), &["--data", &data, "--batch-size", "1"])));
}
