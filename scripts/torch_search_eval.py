"""The LFGCL candidate evaluation done in PyTorch, to compare with `lfgcl search` on the same machine.

Per candidate it does what lfgcl does: rank filters by L1 norm (once), gather the kept channels of every
prunable group into a compact net, run the fixed batch of unlabeled images in inference mode, and reduce
the penultimate-feature MSE against the baseline's to one number. Candidates keep `--keep` of every group
(0.5 is ~50% FLOPs for inner-only ResNet pruning), the same work as a search candidate at that budget.

    python scripts/torch_search_eval.py --ckpt base.safetensors --images 256 --candidates 16 --device cpu --threads 2

Prints candidates/s (and writes JSON with --json). On CUDA, times with CUDA events after warm-up.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lfgcl_torch import build, load, torchvision_model  # noqa: E402


def is_torchvision(arch):
    return torchvision_model(arch["model"], arch["num_classes"]) is not None


def features(net, arch, x):
    """The penultimate features (what lfgcl's reward compares): the input of the classifier."""
    if is_torchvision(arch):
        return torch.flatten(torch.nn.Sequential(*list(net.children())[:-1])(x), 1)
    return net.penultimate(x)


def groups(model, arch):
    """Prunable groups as lists of (tensor name, axis): inner block channels (ResNet), conv outputs (VGG, small CNN)."""
    names = set(model.state_dict())
    out = []
    name = arch["model"]
    if is_torchvision(arch) and name.startswith("resnet"):
        # torchvision ResNets (lfgcl's groups without --streams): each block's inner channels,
        # conv1's outputs (and conv2's in a bottleneck) with their batch norm and the next conv's inputs.
        for key in sorted(k for k in names if k.startswith("layer") and k.endswith(".conv1.weight")):
            p = key[: -len(".conv1.weight")]
            last = 3 if f"{p}.conv3.weight" in names else 2
            for i in range(1, last):
                g = [(f"{p}.conv{i}.weight", 0)] + [(f"{p}.bn{i}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")]
                out.append((None, f"{p}.conv{i}.weight", g + [(f"{p}.conv{i + 1}.weight", 1)]))
    elif name.startswith("resnet"):
        n = (int(name[len("resnet"):]) - 2) // 6
        for stage in range(1, 4):
            for b in range(n):
                p = f"layer{stage}.{b}"
                g = [(f"{p}.conv1.weight", 0)] + [(f"{p}.bn1.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")]
                out.append((3 + (stage - 1) * n + b, f"{p}.conv1.weight", g + [(f"{p}.conv2.weight", 1)]))
    elif name == "vgg16":
        convs = [k for k in model.state_dict() if k.startswith("features.") and k.endswith(".weight") and model.state_dict()[k].dim() == 4]
        for i, c in enumerate(convs):
            idx = int(c.split(".")[1])
            g = [(c, 0)] + [(f"features.{idx + 1}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")]
            g.append((convs[i + 1], 1) if i + 1 < len(convs) else ("classifier.0.weight", 1))
            out.append((i, c, g))
    elif name == "smallcnn":
        k = len(arch["widths"])
        for i in range(1, k + 1):
            g = [(f"conv{i}.weight", 0)] + [(f"bn{i}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")]
            g.append((f"conv{i + 1}.weight", 1) if i < k else ("fc.weight", 1))
            out.append((i - 1, f"conv{i}.weight", g))
    assert all(t in names for _, _, g in out for t, _ in g)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    base, arch, _ = load(a.ckpt, dev)
    base.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.images, arch["in_channels"], arch["input_size"], arch["input_size"], generator=g).to(dev)
    with torch.no_grad():
        ref = features(base, arch, x)
    var = ref.var(unbiased=False)
    sd = base.state_dict()
    grp = groups(base, arch)
    # Ranking is done once, as in lfgcl (`Pruner::new`).
    order = {key: sd[key].abs().flatten(1).sum(1).argsort(descending=True) for _, key, _ in grp}

    def candidate():
        widths = list(arch["widths"])
        new = dict(sd)
        for slot, key, members in grp:
            c = sd[key].shape[0]
            k = max(1, int(round(a.keep * c)))
            idx = order[key][:k].sort().values
            if slot is not None:
                widths[slot] = k
            for name, axis in members:
                new[name] = new[name].index_select(axis, idx)
        # torchvision families are built at full width, then fitted to the gathered shapes.
        net = build(dict(arch, widths=widths), new if is_torchvision(arch) else None).to(dev)
        net.load_state_dict(new, strict=True)
        net.eval()
        with torch.no_grad():
            f = features(net, arch, x)
            return (((f - ref) ** 2).mean() / var).item()

    for _ in range(2):
        candidate()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.candidates):
            candidate()
        end.record()
        torch.cuda.synchronize()
        secs = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(a.candidates):
            candidate()
        secs = time.perf_counter() - t0
    result = {
        "framework": f"pytorch {torch.__version__}",
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "model": arch["model"],
        "images": a.images,
        "keep": a.keep,
        "candidates": a.candidates,
        "seconds": secs,
        "candidates_per_second": a.candidates / secs,
    }
    print(json.dumps(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
