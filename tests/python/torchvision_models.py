"""torchvision as the independent reference for lfgcl's real networks.

    python3 torchvision_models.py MODEL OUT_DIR SIZE [SIZE ...] [--pickle]      (SIZE: S or HxW)

Builds torchvision's MODEL (random weights, 10 classes) with random batch-norm parameters and
statistics, writes its state dict to OUT_DIR/state_dict.safetensors (written by hand: no
safetensors package needed), and for each SIZE a batch of 2 random images and the eval logits to
OUT_DIR/ref_SIZE.safetensors (`input`, `logits`). Prints JSON: MACs per size and params counted
with forward hooks on every Conv2d and Linear (out elements x in/groups x kernel area), apart
from lfgcl's cost code. With --pickle, the state dict is also saved by torch.save to OUT_DIR/model.pth,
wrapped as training scripts write it ({"state_dict": ..., "epoch": ...}).
"""

import json
import struct
import sys

import torch
import torchvision


def save(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def build(name):
    """torchvision's `name` with 10 classes, random weights and random batch-norm parameters and
    statistics (so that eval mode is not the identity); returns it and the generator to go on with."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.rand(c, generator=g) * 0.4 - 0.2
            m.running_mean = torch.rand(c, generator=g) * 0.4 - 0.2
            m.running_var = torch.rand(c, generator=g) + 0.5
    return model, g


def main():
    args = [a for a in sys.argv[1:] if a != "--pickle"]
    name, out = args[0], args[1]
    sizes = args[2:]
    model, g = build(name)
    model.eval()
    save(f"{out}/state_dict.safetensors", model.state_dict())
    if "--pickle" in sys.argv:
        torch.save({"state_dict": model.state_dict(), "epoch": 1}, f"{out}/model.pth")
    macs = {}
    for size in sizes:
        count = [0]

        def hook(mod, inp, outp):
            if isinstance(mod, torch.nn.Conv2d):
                per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                count[0] += outp[0].numel() * per_out  # outp[0]: the first image
            else:
                count[0] += mod.in_features * mod.out_features

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        h, _, w = size.partition("x")
        x = torch.randn(2, 3, int(h), int(w or h), generator=g)
        with torch.no_grad():
            logits = model(x)
        for h in handles:
            h.remove()
        # Per image: a conv's hook counts its first image's output (`outp[0]`), a linear one row.
        macs[size] = count[0]
        save(f"{out}/ref_{size}.safetensors", {"input": x, "logits": logits})
    params = sum(
        p.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in m.parameters()
    )
    print(json.dumps({"macs": macs, "params": params}))


if __name__ == "__main__":
    main()
