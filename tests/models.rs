//! Model zoo: exact cost accounting in the papers' convention, shapes, PyTorch-style names,
//! widths, and clear errors for bad architectures.

use lfgcl::backend;
use lfgcl::models::{Arch, Model};
use lfgcl::nn::{Mode, StateRef};
use lfgcl::Tensor;

fn cost(model: &str, c: usize, size: usize, classes: usize) -> (u64, u64) {
    let m = Model::new(Arch::new(model, c, size, classes).unwrap(), &backend::cpu(), 0).unwrap();
    let cost = m.cost();
    (cost.macs, cost.params)
}

#[test]
fn cifar_costs_match_the_papers_convention() {
    // Exact values for 3x32x32 input and 10 classes (FLOPs = MACs of conv + linear layers;
    // params = conv and linear weights and biases; BN not counted).
    assert_eq!(cost("resnet20", 3, 32, 10), (40_551_040, 268_346));
    assert_eq!(cost("resnet32", 3, 32, 10), (68_862_592, 461_882));
    assert_eq!(cost("resnet44", 3, 32, 10), (97_174_144, 655_418));
    assert_eq!(cost("resnet56", 3, 32, 10), (125_485_696, 848_954));
    assert_eq!(cost("resnet110", 3, 32, 10), (252_887_680, 1_719_866));
    assert_eq!(cost("vgg16", 3, 32, 10), (313_463_808, 14_978_250));
}

#[test]
fn batch_norm_parameters_are_counted_apart() {
    let m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    // Stem BN (16) + per block 2 BNs of the stage width: 3*(2*16) + 3*(2*32) + 3*(2*64) = 672.
    assert_eq!(m.cost().bn_params, 2 * (16 + 672));
}

#[test]
fn outputs_have_the_class_count_for_every_model_and_input() {
    let dev = backend::cpu();
    for (model, c, size, classes) in [
        ("resnet20", 3, 32, 10),
        ("resnet20", 1, 28, 10),
        ("resnet32", 3, 32, 100),
        ("vgg16", 3, 32, 7),
        ("smallcnn", 1, 28, 10),
    ] {
        let mut m = Model::new(Arch::new(model, c, size, classes).unwrap(), &dev, 1).unwrap();
        let x = Tensor::zeros(&[2, c, size, size]);
        let y = m.graph.forward(&dev, x, Mode::Eval).unwrap();
        assert_eq!(y.dims(), &[2, classes], "{model} {c}x{size}x{size}");
    }
}

#[test]
fn resnet_uses_pytorch_state_dict_names() {
    let m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    let names: Vec<String> = m.graph.state().into_iter().map(|(n, _)| n).collect();
    for want in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer1.2.conv2.weight",
        "layer2.0.shortcut.channel_map",
        "layer3.2.bn2.bias",
        "linear.weight",
        "linear.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want}");
    }
    let vgg = Model::new(Arch::new("vgg16", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    let names: Vec<String> = vgg.graph.state().into_iter().map(|(n, _)| n).collect();
    for want in [
        "features.0.weight",
        "features.1.running_var",
        "features.40.weight",
        "classifier.0.weight",
        "classifier.1.weight",
        "classifier.3.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want} in {names:?}");
    }
}

#[test]
fn width_vectors_name_their_layers_and_change_the_net() {
    let arch = Arch::new("resnet56", 3, 32, 10).unwrap();
    assert_eq!(arch.widths.len(), 3 + 27);
    let names = arch.width_names().unwrap();
    assert_eq!(names[0], "layer1 stream");
    assert_eq!(names[3], "layer1.0.conv1");
    assert_eq!(names[29], "layer3.8.conv1");
    // Halve every inner width: conv1 of each block loses half its outputs, conv2 half its inputs.
    let mut widths = arch.widths.clone();
    for w in &mut widths[3..] {
        *w /= 2;
    }
    let pruned = arch.with_widths(widths).unwrap();
    let m = Model::new(pruned, &backend::cpu(), 0).unwrap();
    let conv = m.graph.state().into_iter().find(|(n, _)| n == "layer2.3.conv1.weight").unwrap();
    if let StateRef::F32(t) = conv.1 {
        assert_eq!(t.dims(), &[16, 32, 3, 3]);
    } else {
        panic!("conv weight is f32");
    }
    let vgg = Arch::new("vgg16", 3, 32, 10).unwrap();
    assert_eq!(vgg.widths, vec![64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512]);
}

#[test]
fn bad_architectures_are_clear_errors() {
    let e = Arch::new("resnet21", 3, 32, 10).unwrap_err().to_string();
    assert!(e.contains("unknown model 'resnet21'"), "{e}");
    let e = Arch::new("alexnet", 3, 32, 10).unwrap_err().to_string();
    assert!(e.contains("resnet56") && e.contains("vgg16"), "lists the known models: {e}");
    let e = Arch::new("resnet20", 3, 32, 10).unwrap().with_widths(vec![16; 4]).unwrap_err().to_string();
    assert!(e.contains("12 width entries"), "{e}");
    let mut w = Arch::new("smallcnn", 1, 28, 10).unwrap().widths;
    w[1] = 0;
    let e = Arch::new("smallcnn", 1, 28, 10).unwrap().with_widths(w).unwrap_err().to_string();
    assert!(e.contains("zero"), "{e}");
    // VGG-16's five pools need at least 32x32 input: refused when the architecture is made.
    let e = Arch::new("vgg16", 1, 28, 10).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("max pool does not fit"), "{e}");
    // A batch of the wrong shape is a shape error, not a panic.
    let dev = backend::cpu();
    let mut m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &dev, 0).unwrap();
    let e = m.graph.forward(&dev, Tensor::zeros(&[2, 1, 28, 28]), Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("expects input [N, 3, 32, 32]"), "{e}");
}

#[test]
fn stage_outputs_and_penultimate_features() {
    let m = Model::new(Arch::new("resnet20", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    let stages = m.stage_outputs();
    assert_eq!(stages.len(), 3);
    let names: Vec<&str> = stages.iter().map(|&i| m.graph.nodes[i].name.as_str()).collect();
    assert_eq!(names, ["layer1.2.add", "layer2.2.add", "layer3.2.add"]);
    assert_eq!(m.graph.nodes[m.penultimate_node()].name, "avgpool");
    let v = Model::new(Arch::new("vgg16", 3, 32, 10).unwrap(), &backend::cpu(), 0).unwrap();
    assert_eq!(v.stage_outputs().len(), 5);
    assert_eq!(v.graph.nodes[v.penultimate_node()].name, "classifier.2");
}
