"""Times PyTorch eager on the CPU for `lfgcl bench cpu`, which runs it as a subprocess.

    python3 scripts/torch_cpu_bench.py --threads 2 --batches 1,64 --train-batch 128 --reps 5 \
        resnet20.safetensors resnet56.safetensors

Each lfgcl checkpoint becomes the module scripts/lfgcl_torch.py builds for it (CIFAR ResNets with
option-A shortcuts, VGG-16, the small CNN) holding the checkpoint's weights. The safetensors file
is read here, so only torch is needed. Unpruned option-A shortcuts run as the usual subsample +
zero-pad of the channels (F.pad). With torch.set_num_threads(--threads), for each model:
  - inference at each batch of --batches: model.eval() under torch.no_grad();
  - a training step at --train-batch, as `lfgcl bench cpu` times its own: forward in train mode,
    cross-entropy, backward, SGD step (lr 0.01, momentum 0.9, weight decay 5e-4).
Each measurement: --warmup runs, then --reps timed runs (wall clock). Prints JSON on stdout:
{"torch": VERSION, "threads": N, "results": [{model, what: "inference" | "train step", batch,
times}]} (model: the path as given; times: seconds of every timed run). Needs torch.
"""

import argparse
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lfgcl_torch  # noqa: E402

DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, without the safetensors package."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        dtype = DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors, meta


class PadShortcut(nn.Module):
    """Option A as CIFAR ResNets usually write it: subsample, zero-pad the channels."""

    def __init__(self, stride, lo, hi):
        super().__init__()
        self.stride, self.lo, self.hi = stride, lo, hi

    def forward(self, x):
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.lo, self.hi))


def plain_shortcuts(model):
    """Replaces every shortcut whose channel map is a zero-padded identity by `PadShortcut`."""
    for m in model.modules():
        sc = getattr(m, "shortcut", None)
        if not isinstance(sc, lfgcl_torch.ShortcutA):
            continue
        cmap = sc.channel_map.tolist()
        in_c = m.conv1.in_channels
        lo = next((o for o, c in enumerate(cmap) if c >= 0), len(cmap))
        hi = len(cmap) - lo - in_c
        if hi >= 0 and cmap == [-1] * lo + list(range(in_c)) + [-1] * hi:
            m.shortcut = PadShortcut(sc.stride, lo, hi)


def load(path):
    tensors, meta = read_safetensors(path)
    if "lfgcl.arch" not in meta:
        raise SystemExit(f"{path}: no lfgcl architecture metadata")
    arch = json.loads(meta["lfgcl.arch"])
    model = lfgcl_torch.build(arch, tensors)
    own = model.state_dict()
    for k in own:
        if k not in tensors and (k.endswith("channel_map") or k.endswith("num_batches_tracked")):
            tensors[k] = own[k]
    model.load_state_dict(tensors, strict=True)
    plain_shortcuts(model)
    return model, arch


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def bench(path, batches, train_batch, warmup, reps):
    model, arch = load(path)
    shape = [arch["in_channels"], arch["input_size"], arch["input_size"]]
    g = torch.Generator().manual_seed(0)
    out = []
    model.eval()
    for b in batches:
        x = torch.randn([b] + shape, generator=g)

        def infer():
            with torch.no_grad():
                model(x)

        out.append({"model": path, "what": "inference", "batch": b, "times": timed(infer, warmup, reps)})
    if train_batch > 0:
        x = torch.randn([train_batch] + shape, generator=g)
        y = torch.randint(0, arch["num_classes"], (train_batch,), generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        out.append({"model": path, "what": "train step", "batch": train_batch, "times": timed(step, warmup, reps)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--train-batch", type=int, default=128, help="0: no training step")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",") if b]
    results = []
    for path in a.checkpoints:
        for r in bench(path, batches, a.train_batch, a.warmup, a.reps):
            med = sorted(r["times"])[len(r["times"]) // 2]
            print(f"{path} {r['what']} batch {r['batch']}: {r['batch'] / med:.1f} img/s", file=sys.stderr)
            results.append(r)
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
