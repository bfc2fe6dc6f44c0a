//! Checkpoints: round trip, PyTorch-style names, architecture metadata, atomic writes, and
//! clear errors for files that do not describe the net.

use lfgcl::backend;
use lfgcl::models::{Arch, Model};
use lfgcl::nn::{Mode, StateRef};
use lfgcl::train::checkpoint;
use lfgcl::Tensor;
use serde_json::json;

fn input(n: usize) -> Tensor {
    let v: Vec<f32> = (0..n * 3 * 32 * 32).map(|i| ((i * 31 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::from_vec(&[n, 3, 32, 32], v).unwrap()
}

#[test]
fn round_trip_preserves_every_tensor_and_the_outputs() {
    let dev = backend::cpu();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r20.safetensors");
    let mut m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &dev, 7).unwrap();
    // Make the running statistics non-trivial, as after training.
    m.graph.forward(&dev, input(8), Mode::Train).unwrap();
    m.normalization = Some(lfgcl::data::Normalization { mean: vec![0.1, 0.2, 0.3], std: vec![0.9, 0.8, 0.7] });
    checkpoint::save(&m, &path, &json!({ "note": "test" })).unwrap();
    let mut back = checkpoint::load(&path, &dev).unwrap();
    assert_eq!(back.arch, m.arch);
    assert_eq!(back.normalization, m.normalization);
    let (a, b) = (m.graph.state(), back.graph.state());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        match (ta, tb) {
            (StateRef::F32(x), StateRef::F32(y)) => assert_eq!(x.to_vec().unwrap(), y.to_vec().unwrap(), "{na}"),
            (StateRef::I64(x), StateRef::I64(y)) => assert_eq!(x, y, "{na}"),
            (StateRef::I32(x), StateRef::I32(y)) => assert_eq!(x, y, "{na}"),
            _ => panic!("{na}: type changed"),
        }
    }
    let ya = m.graph.forward(&dev, input(4), Mode::Eval).unwrap().to_vec().unwrap();
    let yb = back.graph.forward(&dev, input(4), Mode::Eval).unwrap().to_vec().unwrap();
    assert_eq!(ya, yb);
    let meta = checkpoint::read_meta(&path).unwrap();
    assert_eq!(meta.info["note"], "test");
    // Only the checkpoint is left: the temporary file was renamed over it.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn pruned_widths_round_trip() {
    let dev = backend::cpu();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pruned.safetensors");
    let arch = Arch::new("vgg16", 3, 32, 10).unwrap();
    let widths: Vec<usize> = arch.widths.iter().map(|w| w / 2 + 3).collect();
    let m = Model::new(arch.with_widths(widths.clone()).unwrap(), &dev, 1).unwrap();
    checkpoint::save(&m, &path, &serde_json::Value::Null).unwrap();
    let back = checkpoint::load(&path, &dev).unwrap();
    assert_eq!(back.arch.widths, widths);
    assert_eq!(back.cost().macs, m.cost().macs);
}

#[test]
fn files_that_do_not_describe_the_net_are_clear_errors() {
    let dev = backend::cpu();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let m = Model::new(Arch::new("smallcnn", 1, 28, 10).unwrap(), &dev, 1).unwrap();
    checkpoint::save(&m, &good, &serde_json::Value::Null).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let err = |name: &str, content: &[u8]| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let e = checkpoint::load(&p, &dev).err().expect("load must fail").to_string();
        assert!(e.contains(name), "error names the file: {e}");
        e
    };
    let missing = checkpoint::load(dir.path().join("nope.safetensors"), &dev).err().unwrap().to_string();
    assert!(missing.contains("nope.safetensors"), "{missing}");
    assert!(err("empty.safetensors", b"").contains("not a valid safetensors file"));
    assert!(err("text.safetensors", b"hello, this is not a checkpoint at all").contains("not a valid safetensors file"));
    assert!(err("truncated.safetensors", &bytes[..bytes.len() - 100]).contains("not a valid safetensors file"));

    // Another architecture's tensors under this metadata: a named tensor with the wrong shape.
    let other =
        Model::new(Arch::new("smallcnn", 1, 28, 10).unwrap().with_widths(vec![12, 32, 64]).unwrap(), &dev, 1).unwrap();
    let mut swapped = lfgcl::train::checkpoint::to_bytes(&other, &serde_json::Value::Null).unwrap();
    let header_len = u64::from_le_bytes(swapped[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(swapped[8..8 + header_len].to_vec()).unwrap();
    let patched = header.replace("[12,32,64]", "[16,32,64]");
    assert_eq!(patched.len(), header.len());
    swapped[8..8 + header_len].copy_from_slice(patched.as_bytes());
    let e = err("mismatch.safetensors", &swapped);
    assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");

    // A safetensors file without lfgcl's architecture metadata.
    let plain = safetensors::serialize(
        vec![("w", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap())],
        None,
    )
    .unwrap();
    assert!(err("plain.safetensors", &plain).contains("no architecture"));
}
