//! Streamed image folders and ImageNet-style transforms:
//!
//! - the transforms against torchvision's on the same images (tests/python/torchvision_transforms.py,
//!   run by `$LFGCL_TORCH_PYTHON` or `python3`; skipped with a note when torchvision does not
//!   import, unless LFGCL_REQUIRE_PY=1);
//! - the streaming loader: the same bits whatever the number of decoding threads, sharding, the
//!   same pixels as the in-memory loader, bad files named, bounded memory under `ulimit -v`;
//! - folders for the search and folders whose splits disagree.

#[path = "common/exe.rs"]
mod exe;
#[path = "common/torchvision.rs"]
mod torchvision;
use torchvision::torchvision_or_skip;

use image::codecs::jpeg::JpegEncoder;
use lfgcl::data::transforms::{self, AugmentKind, Image};
use lfgcl::data::{self, Augment, Loader, Normalization, OpenOptions, Split};
use rand::{seq::SliceRandom, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A smooth, textured RGB test image (varied enough that resampling errors show).
fn pattern(w: usize, h: usize, seed: u64) -> Image {
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            let s = seed as f64;
            data.push((127.0 + 120.0 * ((fx * 0.07 + s).sin() * (fy * 0.05).cos())) as u8);
            data.push(((x * 7 + y * 3 + seed as usize * 11) % 256) as u8);
            data.push((((fx - fy) * 0.9 + 40.0 * (fy * 0.31 + s).sin()).rem_euclid(256.0)) as u8);
        }
    }
    Image::new(w, h, 3, data)
}

fn save_png(path: &Path, img: &Image) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::save_buffer(path, &img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8).unwrap();
}

fn save_jpeg(path: &Path, img: &Image) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    JpegEncoder::new_with_quality(&mut f, 90)
        .encode(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn run_torchvision(cases: &serde_json::Value, dir: &Path) -> String {
    let spec = dir.join("cases.json");
    std::fs::write(&spec, serde_json::to_vec(cases).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/torchvision_transforms.py");
    let out = lfgcl::interop::torch_python_command().arg(&script).arg(&spec).output().expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "torchvision disagrees:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Source images of every shape class: landscape, portrait, square, extreme ratios, smaller than
/// the output (upsampling), odd sizes.
const SHAPES: [(usize, usize); 7] = [(500, 375), (375, 500), (300, 300), (1000, 200), (90, 400), (64, 48), (333, 257)];

#[test]
fn eval_transform_matches_torchvision() {
    if !torchvision_or_skip("eval transform") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (k, &(w, h)) in SHAPES.iter().enumerate() {
        let png = dir.path().join(format!("val/c/{k}.png"));
        save_png(&png, &pattern(w, h, k as u64));
        for size in [224, 32, 97] {
            let img = data::decode::decode_file(&png, false).unwrap();
            let out = transforms::eval_transform(&img, size);
            assert_eq!((out.width, out.height), (size, size));
            let raw = dir.path().join(format!("eval-{k}-{size}.u8"));
            std::fs::write(&raw, &out.data).unwrap();
            cases.push(serde_json::json!({"png": s(&png), "kind": "eval", "size": size, "out": s(&raw)}));
        }
    }
    // The whole path: a folder's test split through the loader, normalised with ImageNet's mean
    // and std, against torchvision's ToTensor + Normalize.
    std::fs::create_dir_all(dir.path().join("train/c")).unwrap();
    save_png(&dir.path().join("train/c/0.png"), &pattern(40, 40, 9));
    let opts = OpenOptions { image_size: Some(224), augment: AugmentKind::Imagenet, ..OpenOptions::default() };
    let ds = data::open(&format!("folder:{}", s(dir.path())), Split::Test, &opts).unwrap();
    let norm = ds.channel_stats();
    assert_eq!(norm.mean, transforms::IMAGENET_MEAN.to_vec());
    let loader = Loader::try_new(&ds, 3, &norm).unwrap();
    let mut seen = 0;
    for b in loader.batches(0) {
        let b = b.unwrap();
        for (j, img) in b.images.chunks_exact(3 * 224 * 224).enumerate() {
            let k = b.indices[j];
            let f = dir.path().join(format!("norm-{k}.f32"));
            std::fs::write(&f, img.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            let out =
                cases.iter().find(|c| c["png"] == s(&dir.path().join(format!("val/c/{k}.png"))) && c["size"] == 224);
            let mut c = out.unwrap().clone();
            c["norm"] = serde_json::json!(s(&f));
            cases.push(c);
            seen += 1;
        }
    }
    assert_eq!(seen, SHAPES.len());
    let text = run_torchvision(&serde_json::json!(cases), dir.path());
    println!("{text}");
    assert!(text.contains(&format!("{0}/{0} cases equal", cases.len())), "{text}");
}

#[test]
fn random_resized_crop_matches_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut flips, mut fallbacks) = (0, 0);
    for (k, &(w, h)) in SHAPES.iter().enumerate() {
        let png = dir.path().join(format!("{k}.png"));
        save_png(&png, &pattern(w, h, k as u64 + 20));
        let img = data::decode::decode_file(&png, false).unwrap();
        for r in 0..6 {
            let (out, b, flip) = transforms::train_transform(&img, 224, true, &mut rng);
            // Parameters in range: a box inside the image, area and ratio within RandomResizedCrop's
            // bounds (up to rounding), or the central fallback.
            assert!(b.left + b.width <= w && b.top + b.height <= h && b.width > 0 && b.height > 0, "{b:?}");
            let frac = (b.width * b.height) as f64 / (w * h) as f64;
            let ratio = b.width as f64 / b.height as f64;
            let in_range = (0.08 * 0.9..=1.0).contains(&frac) && (0.75 * 0.9..=4.0 / 3.0 * 1.1).contains(&ratio);
            let central = b.top == (h - b.height) / 2 && b.left == (w - b.width) / 2;
            assert!(in_range || central, "{w}x{h}: {b:?} area {frac} ratio {ratio}");
            fallbacks += usize::from(!in_range);
            flips += usize::from(flip);
            let raw = dir.path().join(format!("crop-{k}-{r}.u8"));
            std::fs::write(&raw, &out.data).unwrap();
            cases.push(serde_json::json!({
                "png": s(&png), "kind": "crop", "size": 224, "out": s(&raw),
                "box": [b.top, b.left, b.height, b.width], "flip": flip,
            }));
        }
    }
    assert!(flips > 5 && flips < 37, "{flips} flips of 42");
    // The extreme shapes (1000x200, 90x400) must sometimes fall back to the central crop.
    assert!(fallbacks < 42, "{fallbacks}");
    if !torchvision_or_skip("random resized crop") {
        return;
    }
    let text = run_torchvision(&serde_json::json!(cases), dir.path());
    println!("{text}");
    assert!(text.contains(&format!("{0}/{0} cases equal", cases.len())), "{text}");
}

/// A labelled folder `train/{a,b,c}` and `val/{a,b,c}` of JPEGs of assorted sizes.
fn jpeg_folder(root: &Path, per_class: usize) {
    for split in ["train", "val"] {
        for (c, class) in ["a", "b", "c"].iter().enumerate() {
            for k in 0..per_class {
                let (w, h) = SHAPES[(k + c) % SHAPES.len()];
                let (w, h) = (w / 3 + 8, h / 3 + 8);
                save_jpeg(&root.join(format!("{split}/{class}/{k:03}.jpg")), &pattern(w, h, (c * 100 + k) as u64));
            }
        }
    }
}

fn collect(loader: &Loader, epoch: usize) -> Vec<data::Batch> {
    loader.batches(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn streamed_loader_is_reproducible_sharded_and_matches_memory() {
    let dir = tempfile::tempdir().unwrap();
    jpeg_folder(dir.path(), 7);
    let spec = format!("folder:{}", s(dir.path()));
    let opts = OpenOptions { image_size: Some(64), augment: AugmentKind::Imagenet, ..OpenOptions::default() };
    let ds = data::open(&spec, Split::Train, &opts).unwrap();
    assert!(ds.is_streamed() && ds.len() == 21 && ds.num_classes == 3, "{ds:?}");
    assert!(ds.mode_description(8).contains("streamed from disk"), "{}", ds.mode_description(8));
    let norm = ds.channel_stats();
    let make =
        |workers| Loader::try_new(&ds, 8, &norm).unwrap().shuffle(3).augment(Augment::standard(), 4).workers(workers);
    // Same bits with 1 and 3 decoding threads; epochs differ; every image once per epoch.
    let one = collect(&make(1), 0);
    assert_eq!(one, collect(&make(3), 0));
    assert_ne!(one, collect(&make(1), 1));
    let mut all: Vec<usize> = one.iter().flat_map(|b| b.indices.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..21).collect::<Vec<_>>());
    assert!(one.iter().all(|b| b.images.iter().all(|v| v.is_finite())));
    // Labels follow the files.
    assert_eq!(one[0].labels.as_ref().unwrap()[0], ds.labels.as_ref().unwrap()[one[0].indices[0]]);
    // Two shards: equal batch counts, together every image of the epoch's order.
    let r0 = Loader::try_new(&ds, 4, &norm).unwrap().shuffle(3).shard(0, 2).unwrap();
    let r1 = Loader::try_new(&ds, 4, &norm).unwrap().shuffle(3).shard(1, 2).unwrap();
    assert_eq!(r0.num_batches(), r1.num_batches());
    let mut both: Vec<usize> =
        [collect(&r0, 2), collect(&r1, 2)].concat().into_iter().flat_map(|b| b.indices).collect();
    assert_eq!(both.len(), 22);
    both.sort_unstable();
    both.dedup();
    assert_eq!(both, (0..21).collect::<Vec<_>>());
    assert!(Loader::try_new(&ds, 4, &norm).unwrap().shard(2, 2).is_err());

    // CIFAR-style squares streamed (cache 0) give the in-memory loader's pixels, crops and flips.
    let sq = OpenOptions { image_size: Some(24), augment: AugmentKind::Cifar, ..OpenOptions::default() };
    let mem = data::open(&spec, Split::Train, &sq).unwrap();
    let streamed = data::open(&spec, Split::Train, &OpenOptions { cache_bytes: 0, ..sq.clone() }).unwrap();
    assert!(!mem.is_streamed() && streamed.is_streamed());
    let n = Normalization { mean: vec![0.4, 0.5, 0.6], std: vec![0.2, 0.3, 0.25] };
    let a = Loader::try_new(&mem, 5, &n).unwrap().shuffle(1).augment(Augment::standard(), 2);
    let b = Loader::try_new(&streamed, 5, &n).unwrap().shuffle(1).augment(Augment::standard(), 2);
    assert_eq!(collect(&a, 1), collect(&b, 1));
    // The ImageNet-style test split is center-cropped once, in memory.
    let test = data::open(&spec, Split::Test, &opts).unwrap();
    assert!(!test.is_streamed() && test.len() == 21);
}

/// Chosen as `Dataset::random_subset` chooses.
fn chosen(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

#[test]
fn search_sample_of_a_flat_folder_decodes_only_its_images() {
    let dir = tempfile::tempdir().unwrap();
    let (good, mixed) = (dir.path().join("good"), dir.path().join("mixed"));
    let (n, k, seed) = (40, 6, 9);
    let pick = chosen(n, k, seed);
    for i in 0..n {
        let img = pattern(50 + i, 40, i as u64);
        save_png(&good.join(format!("{i:02}.png")), &img);
        if pick.contains(&i) {
            save_png(&mixed.join(format!("{i:02}.png")), &img);
        } else {
            std::fs::create_dir_all(&mixed).unwrap();
            std::fs::write(mixed.join(format!("{i:02}.png")), b"not an image").unwrap();
        }
    }
    for augment in [AugmentKind::Cifar, AugmentKind::Imagenet] {
        let opts = OpenOptions { image_size: Some(16), augment, ..OpenOptions::default() };
        let whole = data::open(&s(&good), Split::Train, &opts).unwrap();
        assert!(whole.labels.is_none());
        let sample = data::open_sample(&s(&mixed), Split::Train, &opts, k, seed).unwrap();
        assert_eq!(sample.len(), k);
        let reference = whole.clone().without_labels().random_subset(k, seed);
        let norm = Normalization::identity(3);
        let first = |ds: &data::Dataset| Loader::try_new(ds, k, &norm).unwrap().batches(0).next().unwrap().unwrap();
        assert_eq!(first(&sample).images, first(&reference).images, "{augment:?}");
    }
    let whole_mixed =
        data::open(&s(&mixed), Split::Train, &OpenOptions { image_size: Some(16), ..OpenOptions::default() });
    let e = whole_mixed.expect_err("a broken file is refused").to_string();
    assert!(e.contains("mixed/") && e.contains(".png"), "{e}");
}

#[test]
fn bad_images_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d");
    let ok = pattern(60, 50, 1);
    save_jpeg(&root.join("a/0.jpg"), &ok);
    save_jpeg(&root.join("a/1.jpg"), &ok);
    let good = std::fs::read(root.join("a/0.jpg")).unwrap();
    // Oversized: a PNG claiming 20000 x 20000 pixels with a few bytes of data behind it.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], body: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(body);
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(body);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = 20000u32.to_be_bytes().repeat(2);
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated.jpg", good[..good.len() / 2].to_vec(), "truncated JPEG"),
        ("garbage.jpg", b"GIF89a not really".to_vec(), "not a PNG or JPEG"),
        ("huge.png", png, "20000x20000"),
        ("empty.jpeg", Vec::new(), ""),
    ];
    for (name, bytes, why) in cases {
        let bad = root.join("a").join(name);
        std::fs::write(&bad, &bytes).unwrap();
        for augment in [AugmentKind::Imagenet, AugmentKind::Cifar] {
            let opts = OpenOptions { image_size: Some(32), augment, cache_bytes: 0, ..OpenOptions::default() };
            let ds = data::open(&s(&root), Split::Train, &opts).unwrap();
            assert!(ds.is_streamed());
            let loader = Loader::try_new(&ds, 2, &ds.channel_stats()).unwrap().augment(Augment::standard(), 0);
            let err = loader.batches(0).find_map(|b| b.err()).expect("refused").to_string();
            // The in-memory loader's decoder (`image`, used for CIFAR-style squares) words an unknown
            // format its own way.
            let why_ok = err.contains(why)
                || (why == "not a PNG or JPEG" && err.contains("cannot decode image"))
                || (why == "20000x20000" && err.contains("Memory limit exceeded"));
            assert!(err.contains(name) && why_ok, "{name} {augment:?}: {err}");
        }
        std::fs::remove_file(&bad).unwrap();
    }
}

fn lfgcl(args: &[&str], memory_kib: Option<u64>) -> (bool, String, String) {
    let mut cmd = match memory_kib {
        Some(kib) => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(format!("ulimit -v {kib}; exec \"$0\" \"$@\"")).arg(exe::lfgcl_exe());
            c.args(args).env("RAYON_NUM_THREADS", "2").stdin(Stdio::null());
            c
        }
        None => exe::lfgcl(args),
    };
    let out = cmd.env("MALLOC_ARENA_MAX", "2").env("RUST_BACKTRACE", "0").output().expect("run lfgcl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_test_class_the_training_split_lacks_is_refused() {
    for (train_class, val_class, hint) in [("dog", "cat", ""), ("dog", "Dog", "differs only in case")] {
        let dir = tempfile::tempdir().unwrap();
        for (split, class) in [("train", train_class), ("train", "bird"), ("val", val_class)] {
            for k in 0..2 {
                save_png(&dir.path().join(format!("{split}/{class}/{k}.png")), &pattern(20, 20, k));
            }
        }
        let out = dir.path().join("out");
        let data = format!("folder:{}", s(dir.path()));
        let (ok, _, err) = lfgcl(
            &["--device", "cpu", "train", "--model", "smallcnn", "--data", &data, "--epochs", "1", "--out", &s(&out)],
            None,
        );
        assert!(!ok && err.contains(val_class) && err.contains("not a class of the training split"), "{err}");
        assert!(err.contains(hint), "{err}");
        assert!(!out.join("model.safetensors").exists());
    }
}

/// A folder whose decoded images would take more than the whole address space the process gets
/// is streamed through in bounded memory; decoding it into memory (CIFAR-style squares, cached)
/// under the same limit fails.
#[test]
fn a_folder_larger_than_memory_streams_under_an_address_space_limit() {
    const LIMIT_KIB: u64 = 700_000;
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("big");
    // 1300 small JPEGs in 2 classes read at 448x448: 1300 x 602 kB = 783 MB decoded, more than
    // the limit.
    let n = 1300;
    let imgs: Vec<Image> = (0..8).map(|k| pattern(48 + 4 * k, 40, k as u64)).collect();
    for i in 0..n {
        save_jpeg(&root.join(format!("c{}/{i:04}.jpg", i % 2)), &imgs[i % imgs.len()]);
    }
    let data = format!("folder:{}", s(&root));
    let (ok, stdout, err) = lfgcl(
        &[
            "--device",
            "cpu",
            "bench",
            "data",
            "--data",
            &data,
            "--image-size",
            "448",
            "--model",
            "smallcnn",
            "--train-batch",
            "2",
            "--reps",
            "1",
            "--images",
            "100000",
        ],
        Some(LIMIT_KIB),
    );
    assert!(ok, "{stdout}\n{err}");
    assert!(stdout.contains("loader") && stdout.contains(&format!("{n} files")), "{stdout}");
    // Training streams too (a few steps: --limit keeps the run short; a small --cache-mb makes
    // even those stream).
    let out = dir.path().join("out");
    let (ok, stdout, err) = lfgcl(
        &[
            "--device",
            "cpu",
            "train",
            "--model",
            "smallcnn",
            "--data",
            &data,
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--limit",
            "64",
            "--cache-mb",
            "0",
            "--out",
            &s(&out),
        ],
        Some(LIMIT_KIB),
    );
    assert!(ok, "{stdout}\n{err}");
    assert!(err.contains("streamed from disk"), "{err}");
    // The same folder decoded into memory does not fit.
    let (ok, _, _) = lfgcl(
        &[
            "--device",
            "cpu",
            "train",
            "--model",
            "smallcnn",
            "--data",
            &data,
            "--image-size",
            "448",
            "--augment",
            "cifar",
            "--epochs",
            "1",
            "--out",
            &s(&dir.path().join("out2")),
        ],
        Some(LIMIT_KIB),
    );
    assert!(!ok, "decoding everything into memory fit under the limit: the test proves nothing");
}
