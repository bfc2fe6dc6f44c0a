//! Integration tests of `lfgcl::data`: every loader on fixtures written at test time (valid and
//! corrupt), the synthetic set, the batch loader, and the real Fashion-MNIST when installed.

#[path = "common/torchvision.rs"]
mod torchvision;

use lfgcl::data::*;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------------

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&(d as u32).to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

/// Pixel `k` of image `i` in the IDX fixtures.
fn idx_pixel(i: usize, k: usize) -> u8 {
    (i * 31 + k * 7) as u8
}

/// Writes a valid MNIST-like split: `n` images of 4x3 and labels `i % 10`.
fn write_idx_split(dir: &Path, prefix: &str, n: usize, gz: bool) {
    let pixels: Vec<u8> = (0..n).flat_map(|i| (0..12).map(move |k| idx_pixel(i, k))).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let (imgs, labs) = (idx_images(n, 4, 3, &pixels), idx_labels(&labels));
    let ext = if gz { ".gz" } else { "" };
    let enc = |b: Vec<u8>| if gz { gzip(&b) } else { b };
    write(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &enc(imgs));
    write(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &enc(labs));
}

fn open_err(spec: &str, split: Split) -> String {
    match open(spec, split, &OpenOptions::default()) {
        Ok(ds) => panic!("{spec}: expected an error, opened {} images", ds.len()),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, file: &str) {
    assert!(msg.contains(file), "error message does not name {file}: {msg}");
    assert!(!msg.contains('\n'), "error message is not one line: {msg}");
}

fn spec(kind: &str, dir: &Path) -> String {
    format!("{kind}:{}", dir.display())
}

// ---------------------------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------------------------

#[test]
fn idx_plain_round_trip() {
    let d = tmp();
    write_idx_split(d.path(), "train", 25, false);
    let ds = open(&spec("mnist", d.path()), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!(ds.name, "mnist/train");
    assert_eq!((ds.len(), ds.image_dims(), ds.num_classes), (25, [1, 4, 3], 10));
    for i in [0, 7, 24] {
        let want: Vec<u8> = (0..12).map(|k| idx_pixel(i, k)).collect();
        assert_eq!(ds.image(i), &want[..]);
    }
    let labels = ds.labels_or_err().unwrap();
    assert_eq!(labels.len(), 25);
    assert!(labels.iter().enumerate().all(|(i, &l)| l as usize == i % 10));
}

#[test]
fn idx_gzip_name_variants_and_limit() {
    let d = tmp();
    write_idx_split(d.path(), "t10k", 12, true);
    let ds = open(&spec("fashion-mnist", d.path()), Split::Test, &OpenOptions::default()).unwrap();
    assert_eq!((ds.name.as_str(), ds.len()), ("fashion-mnist/test", 12));
    assert_eq!(ds.image(11)[5], idx_pixel(11, 5));
    assert_eq!(ds.class_names[0], "T-shirt/top");
    assert_eq!(ds.class_names[9], "Ankle boot");

    // The '.idx' spelling, and gzip content detected by magic under a plain name.
    let e = tmp();
    let pixels: Vec<u8> = (0..2 * 12).map(|k| k as u8).collect();
    write(&e.path().join("train-images.idx3-ubyte"), &gzip(&idx_images(2, 4, 3, &pixels)));
    write(&e.path().join("train-labels.idx1-ubyte"), &idx_labels(&[3, 9]));
    let opts = OpenOptions { limit: Some(1), ..Default::default() };
    let ds = open(&spec("mnist", e.path()), Split::Train, &opts).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.labels, Some(vec![3]));
    assert_eq!(ds.image(0), &pixels[..12]);
}

#[test]
fn idx_bad_magic() {
    let d = tmp();
    write_idx_split(d.path(), "train", 3, false);
    let path = d.path().join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] = 0x01; // a labels magic in the images file
    write(&path, &bytes);
    let msg = open_err(&spec("mnist", d.path()), Split::Train);
    assert_names(&msg, "train-images-idx3-ubyte");
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn idx_truncated() {
    let d = tmp();
    write_idx_split(d.path(), "train", 3, true);
    let pixels = vec![0u8; 3 * 12 - 5];
    write(&d.path().join("train-images-idx3-ubyte.gz"), &gzip(&idx_images(3, 4, 3, &pixels)));
    let msg = open_err(&spec("mnist", d.path()), Split::Train);
    assert_names(&msg, "train-images-idx3-ubyte.gz");
    assert!(msg.contains("truncated") && msg.contains("36"), "{msg}");

    // A header cut short, and a gzip stream cut short.
    write(&d.path().join("train-images-idx3-ubyte.gz"), &[0, 0, 8, 3, 0, 0]);
    assert_names(&open_err(&spec("mnist", d.path()), Split::Train), "train-images-idx3-ubyte.gz");
    let gz = gzip(&idx_images(3, 4, 3, &[0; 36]));
    write(&d.path().join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]);
    assert_names(&open_err(&spec("mnist", d.path()), Split::Train), "train-images-idx3-ubyte.gz");
}

#[test]
fn idx_count_mismatch() {
    let d = tmp();
    write_idx_split(d.path(), "train", 4, false);
    write(&d.path().join("train-labels-idx1-ubyte"), &idx_labels(&[1, 2, 3]));
    let msg = open_err(&spec("mnist", d.path()), Split::Train);
    assert_names(&msg, "train-labels-idx1-ubyte");
    assert!(msg.contains('3') && msg.contains('4'), "{msg}");
}

#[test]
fn idx_bad_label() {
    let d = tmp();
    write_idx_split(d.path(), "train", 3, false);
    write(&d.path().join("train-labels-idx1-ubyte"), &idx_labels(&[1, 10, 3]));
    let msg = open_err(&spec("mnist", d.path()), Split::Train);
    assert_names(&msg, "train-labels-idx1-ubyte");
    assert!(msg.contains("label 10"), "{msg}");
}

#[test]
fn idx_missing_file() {
    let d = tmp();
    write_idx_split(d.path(), "train", 3, false);
    // The test split is absent.
    let msg = open_err(&spec("mnist", d.path()), Split::Test);
    assert_names(&msg, "t10k-images-idx3-ubyte");
    assert!(msg.contains("not found"), "{msg}");
    std::fs::remove_file(d.path().join("train-labels-idx1-ubyte")).unwrap();
    assert_names(&open_err(&spec("mnist", d.path()), Split::Train), "train-labels-idx1-ubyte");
    // A directory that does not exist.
    let msg = open_err(&spec("fashion-mnist", &d.path().join("nope")), Split::Train);
    assert_names(&msg, "nope");
}

// ---------------------------------------------------------------------------------------------
// CIFAR
// ---------------------------------------------------------------------------------------------

/// One CIFAR record: the label bytes, then R, G and B planes filled with `base`, `base+1`,
/// `base+2`, except one marked pixel per plane.
fn cifar_record(labels: &[u8], base: u8) -> Vec<u8> {
    let mut rec = labels.to_vec();
    for c in 0..3u8 {
        let mut plane = vec![base.wrapping_add(c); 1024];
        plane[5 * 32 + 7] = 200 + c; // row 5, column 7
        rec.extend_from_slice(&plane);
    }
    rec
}

fn check_cifar_image(img: &[u8], base: u8) {
    assert_eq!(img.len(), 3072);
    for c in 0..3u8 {
        let plane = &img[c as usize * 1024..(c as usize + 1) * 1024];
        assert_eq!(plane[0], base.wrapping_add(c), "plane {c} is not channel {c}");
        assert_eq!(plane[5 * 32 + 7], 200 + c, "marked pixel of plane {c}");
        assert_eq!(plane[1023], base.wrapping_add(c));
    }
}

/// Writes CIFAR-10 in `root/cifar-10-batches-bin`: 2 records per train batch, 3 test records.
fn write_cifar10(root: &Path) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    for b in 1..=5u8 {
        let mut bytes = cifar_record(&[b], 10 * b);
        bytes.extend(cifar_record(&[b + 4], 10 * b + 5));
        write(&dir.join(format!("data_batch_{b}.bin")), &bytes);
    }
    let test: Vec<u8> = (0..3u8).flat_map(|i| cifar_record(&[9 - i], 100 + i)).collect();
    write(&dir.join("test_batch.bin"), &test);
    dir
}

#[test]
fn cifar10_round_trip() {
    let root = tmp();
    let dir = write_cifar10(root.path());
    // The parent of cifar-10-batches-bin.
    let ds = open(&spec("cifar10", root.path()), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!((ds.name.as_str(), ds.len(), ds.image_dims()), ("cifar10/train", 10, [3, 32, 32]));
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.class_names[0], "airplane");
    let want: Vec<u32> = (1..=5).flat_map(|b| [b, b + 4]).collect();
    assert_eq!(ds.labels.as_deref(), Some(&want[..]));
    for b in 1..=5u8 {
        check_cifar_image(ds.image(2 * (b as usize - 1)), 10 * b);
        check_cifar_image(ds.image(2 * (b as usize - 1) + 1), 10 * b + 5);
    }
    // The extracted directory itself, with a names file.
    let names = "a0\na1\na2\na3\na4\na5\na6\na7\na8\na9\n\n";
    write(&dir.join("batches.meta.txt"), names.as_bytes());
    let ds = open(&spec("cifar10", &dir), Split::Test, &OpenOptions::default()).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.labels, Some(vec![9, 8, 7]));
    check_cifar_image(ds.image(2), 102);
    assert_eq!(ds.class_names[9], "a9");
}

#[test]
fn cifar100_fine_labels() {
    let root = tmp();
    let dir = root.path().join("cifar-100-binary");
    let train: Vec<u8> = [(3u8, 42u8), (19, 99), (0, 0)]
        .iter()
        .enumerate()
        .flat_map(|(i, &(coarse, fine))| cifar_record(&[coarse, fine], 50 + i as u8))
        .collect();
    write(&dir.join("train.bin"), &train);
    write(&dir.join("test.bin"), &cifar_record(&[7, 77], 1));
    let ds = open(&spec("cifar100", root.path()), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!((ds.name.as_str(), ds.len(), ds.num_classes), ("cifar100/train", 3, 100));
    assert_eq!(ds.labels, Some(vec![42, 99, 0]));
    assert!(ds.class_names.is_empty());
    check_cifar_image(ds.image(1), 51);

    let names: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    write(&dir.join("fine_label_names.txt"), names.as_bytes());
    let ds = open(&spec("cifar100", &dir), Split::Test, &OpenOptions::default()).unwrap();
    assert_eq!(ds.labels, Some(vec![77]));
    assert_eq!(ds.class_names[77], "fine77");
    check_cifar_image(ds.image(0), 1);

    // Fine label out of range.
    write(&dir.join("test.bin"), &cifar_record(&[7, 100], 1));
    let msg = open_err(&spec("cifar100", &dir), Split::Test);
    assert_names(&msg, "test.bin");
    assert!(msg.contains("label 100"), "{msg}");
}

#[test]
fn cifar_truncated_missing_and_bad_label() {
    let root = tmp();
    let dir = write_cifar10(root.path());
    let path = dir.join("data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    write(&path, &bytes[..bytes.len() - 100]);
    let msg = open_err(&spec("cifar10", root.path()), Split::Train);
    assert_names(&msg, "data_batch_3.bin");
    assert!(msg.contains("3073"), "{msg}");

    std::fs::remove_file(&path).unwrap();
    let msg = open_err(&spec("cifar10", root.path()), Split::Train);
    assert_names(&msg, "data_batch_3.bin");
    assert!(msg.contains("not found"), "{msg}");

    write(&dir.join("test_batch.bin"), &cifar_record(&[10], 0));
    let msg = open_err(&spec("cifar10", &dir), Split::Test);
    assert_names(&msg, "test_batch.bin");
    assert!(msg.contains("label 10"), "{msg}");

    let empty = tmp();
    assert_names(&open_err(&spec("cifar100", empty.path()), Split::Test), "test.bin");
}

// ---------------------------------------------------------------------------------------------
// Image folders
// ---------------------------------------------------------------------------------------------

fn solid_rgb(size: u32, rgb: [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_pixel(size, size, image::Rgb(rgb))
}

fn save(img: &image::RgbImage, path: &Path, format: image::ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

fn png(img: &image::RgbImage, path: &Path) {
    save(img, path, image::ImageFormat::Png);
}

fn assert_solid(img: &[u8], rgb: [u8; 3], tol: u8) {
    let hw = img.len() / 3;
    for (c, plane) in img.chunks_exact(hw).enumerate() {
        for &p in plane {
            assert!(p.abs_diff(rgb[c]) <= tol, "channel {c}: {p} vs {}", rgb[c]);
        }
    }
}

#[test]
fn folder_labeled_png_and_jpeg() {
    let d = tmp();
    let root = d.path();
    png(&solid_rgb(32, [255, 0, 0]), &root.join("cat/a.png"));
    png(&solid_rgb(32, [0, 255, 0]), &root.join("cat/nested/b.PNG"));
    save(&solid_rgb(32, [40, 80, 160]), &root.join("dog/c.JPG"), image::ImageFormat::Jpeg);
    write(&root.join("dog/notes.txt"), b"not an image");
    write(&root.join("dog/.hidden.png"), b"resource fork");

    let ds = open(&spec("folder", root), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!(ds.name, format!("folder:{}", root.display()));
    assert_eq!((ds.len(), ds.image_dims()), (3, [3, 32, 32]));
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!((ds.labels.clone(), ds.num_classes), (Some(vec![0, 0, 1]), 2));
    // Sorted order: cat/a.png, cat/nested/b.PNG, dog/c.JPG; planes are R, G, B.
    assert_solid(ds.image(0), [255, 0, 0], 0);
    assert_solid(ds.image(1), [0, 255, 0], 0);
    assert_solid(ds.image(2), [40, 80, 160], 6);

    // A plain directory path works too, and so do train/ and test/ subfolders.
    let split = tmp();
    png(&solid_rgb(32, [1, 2, 3]), &split.path().join("train/x/1.png"));
    png(&solid_rgb(32, [1, 2, 3]), &split.path().join("train/y/2.png"));
    png(&solid_rgb(32, [4, 5, 6]), &split.path().join("test/x/3.png"));
    let path = split.path().to_str().unwrap();
    let train = open(path, Split::Train, &OpenOptions::default()).unwrap();
    let test = open(path, Split::Test, &OpenOptions::default()).unwrap();
    // Test classes follow the training split's, matched by name.
    assert_eq!((train.len(), train.num_classes, test.len(), test.num_classes), (2, 2, 1, 2));
    assert_eq!(test.class_names, vec!["x", "y"]);
    assert_solid(test.image(0), [4, 5, 6], 0);
}

#[test]
fn folder_unlabeled_resize_grayscale_and_limit() {
    let d = tmp();
    for i in 0..6u8 {
        png(&solid_rgb(8 + i as u32, [10 * i, 100, 200]), &d.path().join(format!("img{i}.png")));
    }
    let opts = OpenOptions { image_size: Some(16), ..Default::default() };
    let ds = open(&spec("folder", d.path()), Split::Train, &opts).unwrap();
    assert_eq!((ds.len(), ds.image_dims()), (6, [3, 16, 16]));
    assert!(ds.labels.is_none() && ds.num_classes == 0);
    assert!(ds.labels_or_err().unwrap_err().to_string().contains("has no labels"));
    for i in 0..6u8 {
        assert_solid(ds.image(i as usize), [10 * i, 100, 200], 1);
    }

    let opts = OpenOptions { image_size: Some(4), grayscale: true, limit: Some(3), ..Default::default() };
    let ds = open(&spec("folder", d.path()), Split::Train, &opts).unwrap();
    assert_eq!((ds.len(), ds.image_dims()), (3, [1, 4, 4]));
    // Evenly spaced: img0, img2, img4. Luma of (r, 100, 200) is about 0.2126r + 0.7152*100 + 0.0722*200.
    for (k, i) in [0u8, 2, 4].into_iter().enumerate() {
        let luma = 0.2126 * (10 * i) as f32 + 0.7152 * 100.0 + 0.0722 * 200.0;
        assert!(ds.image(k).iter().all(|&p| (p as f32 - luma).abs() <= 2.0), "{:?} vs {luma}", ds.image(k));
    }
}

#[test]
fn folder_errors() {
    let d = tmp();
    let msg = open_err(&spec("folder", d.path()), Split::Train);
    assert_names(&msg, &d.path().display().to_string());
    assert!(msg.contains("no images") && msg.contains("png") && msg.contains("jpg"), "{msg}");

    png(&solid_rgb(32, [0, 0, 0]), &d.path().join("a/ok.png"));
    write(&d.path().join("b/broken.png"), b"\x89PNG\r\n\x1a\nthis is not really a png");
    let msg = open_err(&spec("folder", d.path()), Split::Train);
    assert_names(&msg, "broken.png");

    let empty_class = tmp();
    png(&solid_rgb(32, [0, 0, 0]), &empty_class.path().join("a/ok.png"));
    std::fs::create_dir_all(empty_class.path().join("b")).unwrap();
    assert!(open_err(&spec("folder", empty_class.path()), Split::Train).contains("class folder has no images"));

    let missing = d.path().join("missing");
    assert_names(&open_err(&spec("folder", &missing), Split::Train), "missing");
    assert!(open_err("no-such-spec", Split::Train).contains("unknown data spec"));
    assert!(open_err("mnist", Split::Train).contains("mnist:DIR"));
    let zero = OpenOptions { image_size: Some(0), ..Default::default() };
    assert!(open("synthetic", Split::Train, &zero).is_err());
}

#[test]
fn idx_data_at_another_size_is_resized_as_torchvision_resizes_it() {
    // 28x28 images of varied pixels, brought to 64x64 (the torchvision nets on Fashion-MNIST)
    // and down to 20x20, against PIL + torchvision's Resize on the same images.
    let d = tmp();
    let (n, side) = (4usize, 28usize);
    let pixels: Vec<u8> = (0..n * side * side).map(|k| ((k * 37 + (k / 28) * 11) % 256) as u8).collect();
    let labels: Vec<u8> = (0..n as u8).collect();
    write(&d.path().join("train-images-idx3-ubyte"), &idx_images(n, side, side, &pixels));
    write(&d.path().join("train-labels-idx1-ubyte"), &idx_labels(&labels));
    let native = open(&spec("mnist", d.path()), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!(native.image_dims(), [1, 28, 28]);
    let same = OpenOptions { image_size: Some(28), ..Default::default() };
    assert!(open(&spec("mnist", d.path()), Split::Train, &same).unwrap() == native, "the own size is no resize");
    for out in [64usize, 20] {
        let opts = OpenOptions { image_size: Some(out), limit: Some(3), ..Default::default() };
        let ds = open(&spec("mnist", d.path()), Split::Train, &opts).unwrap();
        assert_eq!((ds.len(), ds.image_dims()), (3, [1, out, out]));
        assert_eq!(ds.labels.as_deref(), Some(&[0u32, 1, 2][..]));
        if !torchvision::torchvision_or_skip("idx resize") {
            continue;
        }
        let raw = d.path().join("raw.bin");
        std::fs::write(&raw, &pixels[..3 * side * side]).unwrap();
        let script = format!(
            "import numpy as np, sys, PIL.Image as I, torchvision.transforms as T\n\
             a = np.fromfile(sys.argv[1], dtype=np.uint8).reshape(3, {side}, {side})\n\
             r = T.Resize(({out}, {out}))\n\
             sys.stdout.buffer.write(b''.join(np.asarray(r(I.fromarray(x, 'L'))).tobytes() for x in a))"
        );
        let o = lfgcl::interop::torch_python_command().arg("-c").arg(script).arg(&raw).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout.len(), ds.images.len());
        let differ = o.stdout.iter().zip(&ds.images).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} of {} pixels differ from torchvision at {out}x{out}", ds.images.len());
    }
    // The size is checked before anything is allocated.
    let huge = OpenOptions { image_size: Some(60_000), ..Default::default() };
    let e = open(&spec("mnist", d.path()), Split::Train, &huge).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("--image-size"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic
// ---------------------------------------------------------------------------------------------

#[test]
fn synthetic_deterministic_and_balanced() {
    let t0 = std::time::Instant::now();
    let train = open("synthetic", Split::Train, &OpenOptions::default()).unwrap();
    let test = open("synthetic", Split::Test, &OpenOptions::default()).unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed.as_secs_f32() < 5.0, "synthetic generation took {elapsed:?}");
    assert_eq!((train.name.as_str(), train.len(), train.image_dims()), ("synthetic/train", 5000, [3, 32, 32]));
    assert_eq!((test.name.as_str(), test.len(), test.num_classes), ("synthetic/test", 1000, 10));
    assert_eq!(train.class_names.len(), 10);
    assert_eq!(train.class_counts(), vec![500; 10]);
    assert_eq!(test.class_counts(), vec![100; 10]);
    // Labels are shuffled, not cyclic.
    let labels = train.labels_or_err().unwrap();
    assert!(labels.windows(2).filter(|w| w[0] == w[1]).count() > 100);

    let again = open("synthetic", Split::Train, &OpenOptions::default()).unwrap();
    assert!(again == train, "synthetic train set is not deterministic");
    assert_ne!(train.image(0), test.image(0));
    assert_ne!(train.image(0), train.image(1));
    let limited = open("synthetic", Split::Test, &OpenOptions { limit: Some(10), ..Default::default() }).unwrap();
    assert!(limited == test.take(10));

    // Pixels use the whole range without saturating everywhere.
    let stats = train.channel_stats();
    for c in 0..3 {
        assert!((0.25..0.75).contains(&stats.mean[c]) && (0.1..0.4).contains(&stats.std[c]), "{stats:?}");
    }
}

/// A nearest-class-mean classifier on raw pixels must do better than chance (the classes carry
/// signal) but far from perfectly (a CNN has to find the orientation, texture and shape cues).
#[test]
fn synthetic_not_trivial() {
    let train = synthetic::generate(Split::Train);
    let test = synthetic::generate(Split::Test);
    let per = 3 * 32 * 32;
    let mut means = vec![0f64; 10 * per];
    let counts = train.class_counts();
    for (i, &l) in train.labels_or_err().unwrap().iter().enumerate() {
        for (m, &p) in means[l as usize * per..][..per].iter_mut().zip(train.image(i)) {
            *m += p as f64 / counts[l as usize] as f64;
        }
    }
    let labels = test.labels_or_err().unwrap();
    let correct = (0..test.len())
        .filter(|&i| {
            let dist = |c: usize| -> f64 {
                test.image(i).iter().zip(&means[c * per..][..per]).map(|(&p, &m)| (p as f64 - m).powi(2)).sum()
            };
            let best = (0..10).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap();
            best == labels[i] as usize
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    println!("nearest-class-mean accuracy on synthetic: {acc:.3}");
    assert!((0.2..0.8).contains(&acc), "nearest-class-mean accuracy {acc}");
}

// ---------------------------------------------------------------------------------------------
// Dataset API
// ---------------------------------------------------------------------------------------------

fn tiny(n: usize, dims: [usize; 3]) -> Dataset {
    let per = dims.iter().product::<usize>();
    let images = (0..n * per).map(|k| (k % 251) as u8).collect();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    Dataset::from_parts("tiny", dims, images, Some(labels), 3, vec![]).unwrap()
}

#[test]
fn dataset_views_and_stats() {
    let ds = tiny(7, [2, 2, 2]);
    assert_eq!((ds.len(), ds.is_empty(), ds.image_dims()), (7, false, [2, 2, 2]));
    let sub = ds.subset(&[5, 1, 5]);
    assert_eq!(sub.len(), 3);
    assert_eq!(sub.image(0), ds.image(5));
    assert_eq!(sub.image(1), ds.image(1));
    assert_eq!(sub.labels, Some(vec![2, 1, 2]));
    assert_eq!(ds.take(2).len(), 2);
    assert_eq!(ds.take(100).len(), 7);
    assert_eq!(ds.take(0).len(), 0);
    assert!(ds.take(0).is_empty());
    let r = ds.random_subset(4, 1);
    assert_eq!((r.len(), r == ds.random_subset(4, 1)), (4, true));
    let unl = ds.clone().without_labels();
    assert!(unl.labels.is_none() && unl.num_classes == 0);
    assert!(unl.labels_or_err().unwrap_err().to_string().contains("dataset tiny has no labels"));

    // Channel 0 holds {0, 255} in equal numbers, channel 1 a constant 51.
    let images: Vec<u8> = [0u8, 255, 51, 51, 255, 0, 51, 51].to_vec();
    let ds = Dataset::from_parts("s", [2, 1, 2], images, None, 0, vec![]).unwrap();
    let n = ds.channel_stats();
    assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6, "{n:?}");
    assert!((n.mean[1] - 0.2).abs() < 1e-6 && n.std[1] == 1.0, "{n:?}");
    assert_eq!(Normalization::identity(2), Normalization { mean: vec![0.0; 2], std: vec![1.0; 2] });

    assert!(Dataset::from_parts("bad", [1, 2, 2], vec![0; 7], None, 0, vec![]).is_err());
    assert!(Dataset::from_parts("bad", [1, 1, 1], vec![0; 2], Some(vec![0, 5]), 3, vec![]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

#[test]
fn loader_sequential_batches_and_normalisation() {
    let ds = tiny(10, [2, 2, 3]);
    let norm = Normalization { mean: vec![0.5, 0.25], std: vec![0.5, 2.0] };
    let loader = Loader::new(&ds, 4, &norm);
    assert_eq!(loader.num_batches(), 3);
    let batches: Vec<Batch> = loader.epoch(0).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].dims, [4, 2, 2, 3]);
    assert_eq!(batches[2].dims, [2, 2, 2, 3]);
    assert_eq!(batches[2].images.len(), 2 * 12);
    assert_eq!(batches[1].indices, vec![4, 5, 6, 7]);
    assert_eq!(batches[2].labels, Some(vec![2, 0]));
    for b in &batches {
        for (k, &i) in b.indices.iter().enumerate() {
            for (j, &p) in ds.image(i).iter().enumerate() {
                let c = j / 6;
                let want = (p as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                assert!((b.images[k * 12 + j] - want).abs() < 1e-6);
            }
        }
    }
    let dropped = Loader::new(&ds, 4, &norm).drop_last(true);
    assert_eq!(dropped.num_batches(), 2);
    assert!(dropped.epoch(0).all(|b| b.len() == 4));
    assert_eq!(Loader::new(&ds, 11, &norm).drop_last(true).epoch(0).count(), 0);
    assert!(Loader::try_new(&ds, 0, &norm).is_err());
    assert!(Loader::try_new(&ds, 2, &Normalization::identity(3)).is_err());
}

#[test]
fn loader_shuffle_reproducible_and_complete() {
    let ds = tiny(103, [1, 2, 2]);
    let norm = Normalization::identity(1);
    let order = |seed: u64, epoch: usize| -> Vec<usize> {
        Loader::new(&ds, 10, &norm).shuffle(seed).epoch(epoch).flat_map(|b| b.indices).collect()
    };
    let e0 = order(7, 0);
    assert_eq!(e0, order(7, 0), "same seed and epoch must give the same order");
    assert_ne!(e0, order(7, 1), "epochs must differ");
    assert_ne!(e0, order(8, 0), "seeds must differ");
    assert_ne!(e0, (0..103).collect::<Vec<_>>());
    for epoch in 0..3 {
        let mut o = order(7, epoch);
        o.sort_unstable();
        assert_eq!(o, (0..103).collect::<Vec<_>>(), "every index exactly once per epoch");
    }
    // Labels follow their images.
    let b = Loader::new(&ds, 50, &norm).shuffle(3).epoch(2).next().unwrap();
    let labels = ds.labels_or_err().unwrap();
    assert_eq!(b.labels.unwrap(), b.indices.iter().map(|&i| labels[i]).collect::<Vec<_>>());
}

/// A 1x3x4 image with distinct pixels, values 10..=120.
fn known_image() -> Dataset {
    let images = (1..=12).map(|v| v * 10).collect();
    Dataset::from_parts("known", [1, 3, 4], images, None, 0, vec![]).unwrap()
}

#[test]
fn augment_hflip() {
    let ds = known_image();
    let norm = Normalization::identity(1);
    let aug = Augment { crop_pad: 0, hflip: true };
    let loader = Loader::new(&ds, 1, &norm).augment(aug, 5);
    let plain: Vec<f32> = ds.image(0).iter().map(|&p| p as f32 / 255.0).collect();
    let flipped: Vec<f32> = plain.chunks(4).flat_map(|r| r.iter().rev().copied()).collect();
    let (mut n_plain, mut n_flip) = (0, 0);
    for epoch in 0..64 {
        let b = loader.epoch(epoch).next().unwrap();
        assert_eq!(b.images, Loader::new(&ds, 1, &norm).augment(aug, 5).epoch(epoch).next().unwrap().images);
        if b.images == plain {
            n_plain += 1;
        } else if b.images == flipped {
            n_flip += 1;
        } else {
            panic!("epoch {epoch}: neither the image nor its mirror: {:?}", b.images);
        }
    }
    assert!(n_plain > 10 && n_flip > 10, "{n_plain} plain, {n_flip} flipped");
    assert_eq!(Augment::standard(), Augment { crop_pad: 4, hflip: true });
    assert!(Augment::none().is_none());
}

#[test]
fn augment_crop_pads_with_normalised_zero() {
    let ds = known_image();
    let norm = Normalization { mean: vec![0.2], std: vec![0.5] };
    let loader = Loader::new(&ds, 1, &norm).augment(Augment { crop_pad: 1, hflip: false }, 11);
    let pad_value = (0.0 - 0.2) / 0.5;
    let src = ds.image(0);
    // The expected crop for an offset (oy, ox) in -1..=1: out(y, x) = src(y + oy, x + ox), or pad.
    let shifted = |oy: isize, ox: isize| -> Vec<f32> {
        let mut v = Vec::new();
        for y in 0..3isize {
            for x in 0..4isize {
                let (sy, sx) = (y + oy, x + ox);
                v.push(if (0..3).contains(&sy) && (0..4).contains(&sx) {
                    norm.apply(0, src[(sy * 4 + sx) as usize])
                } else {
                    pad_value
                });
            }
        }
        v
    };
    let mut seen = std::collections::HashSet::new();
    for epoch in 0..200 {
        let img = loader.epoch(epoch).next().unwrap().images;
        let offset = (-1..=1)
            .flat_map(|oy| (-1..=1).map(move |ox| (oy, ox)))
            .find(|&(oy, ox)| shifted(oy, ox).iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-6));
        seen.insert(offset.unwrap_or_else(|| panic!("epoch {epoch}: not a padded crop: {img:?}")));
    }
    assert_eq!(seen.len(), 9, "all 9 crop offsets should occur: {seen:?}");
}

#[test]
fn augment_depends_on_seed_epoch_and_index_only() {
    let ds = synthetic::generate_with(40, 3);
    let norm = ds.channel_stats();
    let aug = Augment::standard();
    let by_index = |bs: usize, shuffle: Option<u64>| -> Vec<Vec<f32>> {
        let mut l = Loader::new(&ds, bs, &norm).augment(aug, 9);
        if let Some(s) = shuffle {
            l = l.shuffle(s);
        }
        let mut out = vec![Vec::new(); ds.len()];
        for b in l.epoch(4) {
            let per = b.images.len() / b.len();
            for (k, &i) in b.indices.iter().enumerate() {
                out[i] = b.images[k * per..(k + 1) * per].to_vec();
            }
        }
        out
    };
    let a = by_index(7, None);
    assert_eq!(a, by_index(16, Some(1)), "augmentation must not depend on batching or order");
    let plain: Vec<f32> = Loader::new(&ds, 40, &norm).epoch(0).next().unwrap().images;
    let changed = (0..40).filter(|&i| a[i][..] != plain[i * 3072..(i + 1) * 3072]).count();
    assert!(changed > 30, "only {changed} of 40 images augmented");
}

// ---------------------------------------------------------------------------------------------
// Real data
// ---------------------------------------------------------------------------------------------

#[test]
fn fashion_mnist_installed() {
    if !Path::new(FASHION_MNIST_DEFAULT_DIR).is_dir() {
        println!("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    for (split, n) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
        let ds = open("fashion-mnist", split, &OpenOptions::default()).unwrap();
        assert_eq!((ds.len(), ds.image_dims(), ds.num_classes), (n, [1, 28, 28], 10));
        let counts = ds.class_counts();
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), n);
    }
}
