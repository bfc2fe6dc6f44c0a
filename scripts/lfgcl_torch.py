"""PyTorch versions of lfgcl's models, with the same state-dict names, loading lfgcl checkpoints.

lfgcl writes safetensors checkpoints whose tensor names follow PyTorch conventions
(`conv1.weight`, `layer1.0.bn1.running_mean`, `features.0.weight`, ...) and whose metadata holds
the architecture (`lfgcl.arch`: model name, input shape, classes, per-layer widths). `load` builds
the matching `torch.nn.Module` and loads the tensors with `strict=True`, so a pruned lfgcl net
runs unchanged in PyTorch:

    from lfgcl_torch import load
    model, arch, norm = load("runs/search/pruned.safetensors")
    logits = model.eval()(images)
"""

import json

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16_CFG = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by `stride`, then output channel o copies input channel
    `channel_map[o]` (or is zero where it is -1)."""

    def __init__(self, in_c, out_c, stride):
        super().__init__()
        pad = max(out_c - in_c, 0) // 2
        cmap = [o - pad if 0 <= o - pad < in_c else -1 for o in range(out_c)]
        self.stride = stride
        self.register_buffer("channel_map", torch.tensor(cmap, dtype=torch.int32))

    def forward(self, x):
        xs = x[:, :, :: self.stride, :: self.stride]
        zero = torch.zeros_like(xs[:, :1])
        padded = torch.cat([xs, zero], dim=1)
        idx = self.channel_map.long()
        idx = torch.where(idx >= 0, idx, torch.full_like(idx, xs.shape[1]))
        return padded.index_select(1, idx)


class Block(nn.Module):
    def __init__(self, in_c, inner, out_c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c)
        self.shortcut = ShortcutA(in_c, out_c, stride) if (stride != 1 or in_c != out_c) else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet; widths = [3 stream widths] + [inner width of every block]."""

    def __init__(self, depth, in_channels, classes, widths):
        super().__init__()
        n = (depth - 2) // 6
        streams, inner = widths[:3], widths[3:]
        self.conv1 = nn.Conv2d(in_channels, streams[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(streams[0])
        c = streams[0]
        for stage in range(3):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(Block(c, inner[stage * n + b], streams[stage], stride))
                c = streams[stage]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(streams[2], classes)

    def penultimate(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.linear(self.penultimate(x))


class VGG16(nn.Module):
    """CIFAR VGG-16: 13 conv+BN+ReLU, 5 max pools, classifier in -> hidden (BN1d, ReLU) -> classes."""

    def __init__(self, in_channels, size, classes, widths):
        super().__init__()
        layers, c, w = [], in_channels, iter(widths)
        for v in VGG16_CFG:
            if v == 0:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                out = next(w)
                layers += [nn.Conv2d(c, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        hidden = next(w)
        self.classifier = nn.Sequential(
            nn.Linear(c * size * size, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes)
        )

    def penultimate(self, x):
        x = self.features(x).flatten(1)
        return self.classifier[2](self.classifier[1](self.classifier[0](x)))

    def forward(self, x):
        return self.classifier[3](self.penultimate(x))


class SmallCNN(nn.Module):
    def __init__(self, in_channels, classes, widths):
        super().__init__()
        c = in_channels
        self.n = len(widths)
        for i, w in enumerate(widths):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c, w, 3, 1, 1, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            c = w
        self.fc = nn.Linear(c, classes)

    def penultimate(self, x):
        for i in range(self.n):
            x = F.relu(getattr(self, f"bn{i + 1}")(getattr(self, f"conv{i + 1}")(x)))
            if i + 1 < self.n:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.penultimate(x))


TORCHVISION_RESNET_LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def torchvision_model(name, classes):
    """torchvision's module for an lfgcl torchvision family name, at its default widths (None if the
    name is not one). `fit` then reshapes it to a checkpoint's (pruned) widths."""
    import re

    from torchvision.models import mobilenet_v2
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet as TvResNet

    m = re.fullmatch(r"resnet(18|34|50|101|152)", name)
    if m:
        depth = int(m.group(1))
        block = BasicBlock if depth < 50 else Bottleneck
        return TvResNet(block, TORCHVISION_RESNET_LAYERS[depth], num_classes=classes)
    m = re.fullmatch(r"resnext(50|101|152)_(\d+)x(\d+)d", name)
    if m:
        layers = TORCHVISION_RESNET_LAYERS[int(m.group(1))]
        return TvResNet(Bottleneck, layers, groups=int(m.group(2)), width_per_group=int(m.group(3)), num_classes=classes)
    m = re.fullmatch(r"wide_resnet(50|101|152)_(\d+)", name)
    if m:
        layers = TORCHVISION_RESNET_LAYERS[int(m.group(1))]
        return TvResNet(Bottleneck, layers, width_per_group=64 * int(m.group(2)), num_classes=classes)
    m = re.fullmatch(r"mobilenet_v2(?:_([0-9.]+))?", name)
    if m:
        return mobilenet_v2(width_mult=float(m.group(1) or 1.0), num_classes=classes)
    return None


def fit(model, tensors):
    """Replaces every conv, batch norm and linear layer whose parameters have other shapes in
    `tensors` (a pruned net, another input channel count) by one of those shapes, keeping its
    stride, padding and kind; a depthwise conv stays depthwise."""
    for name, mod in list(model.named_modules()):
        w = tensors.get(f"{name}.weight")
        if w is None:
            continue
        new = None
        if isinstance(mod, nn.Conv2d) and tuple(w.shape) != tuple(mod.weight.shape):
            out_c = w.shape[0]
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            groups = out_c if depthwise else mod.groups
            new = nn.Conv2d(w.shape[1] * groups, out_c, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, groups, bias=mod.bias is not None)
        elif isinstance(mod, nn.BatchNorm2d) and w.shape[0] != mod.num_features:
            new = nn.BatchNorm2d(w.shape[0], mod.eps, mod.momentum)
        elif isinstance(mod, nn.Linear) and tuple(w.shape) != tuple(mod.weight.shape):
            new = nn.Linear(w.shape[1], w.shape[0], bias=mod.bias is not None)
        if new is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def build(arch, tensors=None):
    """The module for an lfgcl architecture; with `tensors` (the checkpoint's), fitted to their shapes."""
    name = arch["model"]
    c, size, k, w = arch["in_channels"], arch["input_size"], arch["num_classes"], arch["widths"]
    tv = torchvision_model(name, k)
    if tv is not None:
        return fit(tv, tensors or {})
    if name.startswith("cifar_resnet"):
        return ResNet(int(name[len("cifar_resnet"):]), c, k, w)
    if name.startswith("resnet"):
        return ResNet(int(name[len("resnet"):]), c, k, w)
    if name == "vgg16":
        return VGG16(c, size, k, w)
    if name == "smallcnn":
        return SmallCNN(c, k, w)
    raise ValueError(f"unknown model {name}")


def load(path, device="cpu"):
    """(model, arch, normalization) from an lfgcl checkpoint."""
    # Imported here so that `build` needs torch alone (scripts/torch_cpu_bench.py).
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "lfgcl.arch" not in meta:
        raise ValueError(f"{path}: no lfgcl architecture metadata")
    arch = json.loads(meta["lfgcl.arch"])
    norm = json.loads(meta["lfgcl.normalization"]) if "lfgcl.normalization" in meta else None
    sd = load_file(path)
    model = build(arch, sd)
    # Checkpoints of unpruned streams may omit shortcut maps; keep the module's default then.
    own = model.state_dict()
    for k in own:
        if k.endswith("channel_map") and k not in sd:
            sd[k] = own[k]
    model.load_state_dict(sd, strict=True)
    return model.to(device), arch, norm
