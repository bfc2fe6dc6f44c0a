"""Writes a PyTorch-named CIFAR state dict with known random weights (numpy + safetensors, no
torch) and, independently of lfgcl, the logits of a NumPy forward pass of that net on a fixed
input, for the import tests (tests/interop.rs).

    python3 make_state_dict.py VARIANT STATE_DICT.safetensors REF.safetensors

VARIANT:
  resnet20         standard widths, `linear`, every name under `module.`, num_batches_tracked
  resnet20-pruned  pruned widths (streams 12/20/40, random inner widths), `fc`, shortcut
                   channel maps (with -1 = zero channel) for the two downsampling blocks,
                   no num_batches_tracked
  vgg16            CIFAR VGG-16 with BN, conv biases, classifier Linear-BN1d-ReLU-Linear,
                   names under `state_dict.`
REF gets `input` [4,3,32,32] (f32) and `logits` (f64 forward, stored as f32).

The forward follows the PyTorch modules of the usual CIFAR codes: conv3x3 (pad 1), BN in eval
mode (eps 1e-5), ReLU; ResNet option-A shortcuts subsample by 2 and place the input channels
after (out-in)//2 zero channels, or follow `channel_map` when given; global average pool; VGG
max pools 2x2 and flattens before the classifier.
"""

import sys

import numpy as np
from safetensors.numpy import save_file

EPS = 1e-5
rng = np.random.default_rng(1234)


def conv(x, w, b=None, stride=1, pad=1):
    n, c, h, wd = x.shape
    o, ci, k, _ = w.shape
    assert ci == c
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # n,c,H,W,k,k
    win = win[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def bn(x, p):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g, b, m, v = (p[k].reshape(shape) for k in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + EPS) * g + b


def relu(x):
    return np.maximum(x, 0)


class Dict:
    """State dict under construction (float32 arrays) plus float64 views for the forward."""

    def __init__(self):
        self.sd = {}

    def conv(self, name, o, i, bias=False):
        w = rng.standard_normal((o, i, 3, 3)) * np.sqrt(2.0 / (9 * i))
        self.sd[f"{name}.weight"] = w.astype(np.float32)
        if bias:
            self.sd[f"{name}.bias"] = (rng.standard_normal(o) * 0.1).astype(np.float32)

    def bn(self, name, c, tracked=True):
        self.sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[f"{name}.bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        self.sd[f"{name}.running_mean"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        self.sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        if tracked:
            self.sd[f"{name}.num_batches_tracked"] = np.array(100, dtype=np.int64)

    def linear(self, name, o, i):
        self.sd[f"{name}.weight"] = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
        self.sd[f"{name}.bias"] = (rng.standard_normal(o) * 0.1).astype(np.float32)

    def p(self, name):
        return {k[len(name) + 1:]: v.astype(np.float64) for k, v in self.sd.items() if k.startswith(name + ".") and k.count(".") == name.count(".") + 1}

    def a(self, key):
        return self.sd[key].astype(np.float64)


def resnet20(x, pruned):
    d = Dict()
    n = 3
    streams = [12, 20, 40] if pruned else [16, 32, 64]
    inner = [int(v) for v in rng.integers(4, 17, 9)] if pruned else [16] * 3 + [32] * 3 + [64] * 3
    tracked = not pruned
    d.conv("conv1", streams[0], 3)
    d.bn("bn1", streams[0], tracked)
    maps = {}
    c = streams[0]
    for s in range(3):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            w_in = inner[s * n + b]
            d.conv(f"{p}.conv1", w_in, c)
            d.bn(f"{p}.bn1", w_in, tracked)
            d.conv(f"{p}.conv2", streams[s], w_in)
            d.bn(f"{p}.bn2", streams[s], tracked)
            if c != streams[s] and pruned:
                m = rng.integers(-1, c, streams[s]).astype(np.int32)
                maps[p] = m
                d.sd[f"{p}.shortcut.channel_map"] = m
            c = streams[s]
    d.linear("fc" if pruned else "linear", 10, streams[2])

    # forward
    y = relu(bn(conv(x, d.a("conv1.weight")), d.p("bn1")))
    c = streams[0]
    for s in range(3):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            h = relu(bn(conv(y, d.a(f"{p}.conv1.weight"), stride=stride), d.p(f"{p}.bn1")))
            h = bn(conv(h, d.a(f"{p}.conv2.weight")), d.p(f"{p}.bn2"))
            if stride != 1 or c != streams[s]:
                sub = y[:, :, ::stride, ::stride]
                if p in maps:
                    padded = np.concatenate([sub, np.zeros_like(sub[:, :1])], axis=1)
                    idx = np.where(maps[p] >= 0, maps[p], c)
                    sc = padded[:, idx]
                else:
                    lo = (streams[s] - c) // 2
                    sc = np.pad(sub, ((0, 0), (lo, streams[s] - c - lo), (0, 0), (0, 0)))
            else:
                sc = y
            y = relu(h + sc)
            c = streams[s]
    feat = y.mean(axis=(2, 3))
    head = "fc" if pruned else "linear"
    logits = feat @ d.a(f"{head}.weight").T + d.a(f"{head}.bias")
    prefix = "" if pruned else "module."
    return {prefix + k: v for k, v in d.sd.items()}, logits


VGG16_CFG = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]


def vgg16(x):
    d = Dict()
    y, c, idx = x, 3, 0
    for v in VGG16_CFG:
        if v == 0:
            n, ch, h, w = y.shape
            y = y.reshape(n, ch, h // 2, 2, w // 2, 2).max(axis=(3, 5))
            idx += 1
        else:
            d.conv(f"features.{idx}", v, c, bias=True)
            d.bn(f"features.{idx + 1}", v)
            y = relu(bn(conv(y, d.a(f"features.{idx}.weight"), d.a(f"features.{idx}.bias")), d.p(f"features.{idx + 1}")))
            c, idx = v, idx + 3
    y = y.reshape(y.shape[0], -1)
    d.linear("classifier.0", 512, 512)
    d.bn("classifier.1", 512)
    d.linear("classifier.3", 10, 512)
    y = relu(bn(y @ d.a("classifier.0.weight").T + d.a("classifier.0.bias"), d.p("classifier.1")))
    logits = y @ d.a("classifier.3.weight").T + d.a("classifier.3.bias")
    return {"state_dict." + k: v for k, v in d.sd.items()}, logits


def main():
    variant, sd_path, ref_path = sys.argv[1:4]
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    xf = x.astype(np.float64)
    if variant == "resnet20":
        sd, logits = resnet20(xf, pruned=False)
    elif variant == "resnet20-pruned":
        sd, logits = resnet20(xf, pruned=True)
    elif variant == "vgg16":
        sd, logits = vgg16(xf)
    else:
        raise SystemExit(f"unknown variant {variant}")
    save_file(sd, sd_path)
    save_file({"input": x, "logits": logits.astype(np.float32)}, ref_path)


if __name__ == "__main__":
    main()
