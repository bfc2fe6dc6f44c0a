"""Where PyTorch eager's training step spends its time, by kind of layer: the reference beside
`lfgcl bench train --layers`.

    /usr/bin/python3 scripts/torch_train_layers.py --model resnet50 --image-size 224 --batch 1 \
        --threads 2 --reps 10 [--lfgcl lfgcl-train-layers.json] [--json out.json]

Builds torchvision's model (random weights, seed 0, 10 classes) and times the step `lfgcl bench
train` times: forward in train mode, cross-entropy, backward, SGD (lr 0.01, momentum 0.9, weight
decay 5e-4), on the same input (element i is (i mod 251) / 251 - 0.5) and labels (i mod 10),
subnormals flushed as lfgcl flushes them. After --warmup steps, --reps steps run under
torch.profiler; each op is summed under its kind with its inclusive CPU time, counted once (an op
inside a counted op is not counted again):
  - convolutions by kernel, stride and grouping, named as lfgcl names them (`conv 1x1 s1`,
    `conv 3x3 s2 depthwise`); forward, and backward (PyTorch computes the input and the weight
    gradients in one op); the stride comes from the backward's gradient shape;
  - batch norm, ReLU (and ReLU6), residual adds, pooling, the linear layer, forward and backward;
  - the loss, the gradients' clearing and the SGD step;
  - what is left of the steps' wall time (the autograd engine, gradient accumulation, allocation).
With --lfgcl (the JSON `lfgcl bench train --layers --json` writes) it prints lfgcl's time over
PyTorch's for each kind. Needs torch and torchvision.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

# Outermost op names and the (category, phase) they count under; convolutions are split by kind.
OPS = {
    "aten::conv2d": ("conv", "fwd"),
    "aten::convolution": ("conv", "fwd"),
    "aten::convolution_backward": ("conv", "bwd"),
    "aten::batch_norm": ("BatchNorm", "fwd"),
    "aten::native_batch_norm_backward": ("BatchNorm", "bwd"),
    "aten::relu_": ("ReLU", "fwd"),
    "aten::relu": ("ReLU", "fwd"),
    "aten::hardtanh_": ("ReLU", "fwd"),
    "aten::hardtanh": ("ReLU", "fwd"),
    "aten::threshold_backward": ("ReLU", "bwd"),
    "aten::hardtanh_backward": ("ReLU", "bwd"),
    "aten::max_pool2d": ("MaxPool2d", "fwd"),
    "aten::max_pool2d_with_indices_backward": ("MaxPool2d", "bwd"),
    "aten::adaptive_avg_pool2d": ("AvgPool", "fwd"),
    "aten::_adaptive_avg_pool2d_backward": ("AvgPool", "bwd"),
    "aten::linear": ("Linear", "fwd"),
    "aten::cross_entropy_loss": ("loss", "fwd"),
    "aten::nll_loss_backward": ("loss", "bwd"),
    "aten::_log_softmax_backward_data": ("loss", "bwd"),
    "Optimizer.step#SGD.step": ("SGD step", "fwd"),
    "Optimizer.zero_grad#SGD.zero_grad": ("zero_grad", "fwd"),
}
# Backward ops of the linear layer (mm, sum) run under their autograd node.
NODES = {"AddmmBackward0": ("Linear", "bwd")}


def conv_kind(inp, weight, stride):
    c, k, kh, kw = inp[1], weight[0], weight[2], weight[3]
    groups = c // weight[1]
    grouping = ""
    if groups > 1:
        grouping = " depthwise" if groups == c == k else f" {groups} groups"
    return f"conv {kh}x{kw} s{stride}{grouping}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--lfgcl", help="lfgcl bench train --layers --json output, for the ratios")
    ap.add_argument("--json", help="write the table as JSON here")
    a = ap.parse_args()
    if a.batch < 1 or a.reps < 1 or a.image_size < 32:
        sys.exit("--batch and --reps must be at least 1, --image-size at least 32")

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)(num_classes=10)
    model.train()
    n = a.batch * 3 * a.image_size * a.image_size
    x = ((torch.arange(n) % 251).float() / 251.0 - 0.5).reshape(a.batch, 3, a.image_size, a.image_size)
    labels = torch.arange(a.batch) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        for _ in range(a.reps):
            step()
        wall = time.perf_counter() - started

    events = prof.events()
    # Stride of each (input, weight) shape pair, from the backward's gradient shape.
    strides = {}
    for e in events:
        if e.name == "aten::convolution_backward" and len(e.input_shapes) >= 3:
            dy, inp, w = e.input_shapes[:3]
            strides[(tuple(inp), tuple(w))] = max(1, round(inp[2] / dy[2]))

    times = {}

    def counted_above(e):
        p = e.cpu_parent
        while p is not None:
            if p.name in OPS or any(k in p.name for k in NODES):
                return True
            p = p.cpu_parent
        return False

    for e in events:
        cat = OPS.get(e.name)
        if cat is None:
            cat = next((v for k, v in NODES.items() if k in e.name), None)
        if cat is None or counted_above(e):
            continue
        kind, phase = cat
        if kind == "conv":
            shapes = e.input_shapes
            if phase == "bwd":
                inp, w = shapes[1], shapes[2]
            else:
                inp, w = shapes[0], shapes[1]
            kind = conv_kind(inp, w, strides.get((tuple(inp), tuple(w)), 1))
        slot = times.setdefault(kind, {"fwd": 0.0, "bwd": 0.0})
        slot[phase] += e.cpu_time_total / 1e3 / a.reps  # ms per step
    step_ms = 1e3 * wall / a.reps
    counted = sum(v["fwd"] + v["bwd"] for v in times.values())
    times["other (autograd engine, accumulation)"] = {"fwd": 0.0, "bwd": max(0.0, step_ms - counted)}

    print(f"torch {torch.__version__}, {a.threads} threads: {a.model} training step, batch {a.batch}, "
          f"{a.image_size}x{a.image_size}: {step_ms:.1f} ms a step under the profiler ({a.reps} reps)")
    lf = {}
    if a.lfgcl:
        prof_l = json.load(open(a.lfgcl))["layers"]
        for k in prof_l["kinds"]:
            lf[k["kind"]] = (k["forward_us"] / 1e3, (k["backward_us"] + k["weight_grad_us"]) / 1e3)
        # PyTorch counts the ReLUs apart; lfgcl runs batch norm -> ReLU as one op.
        lf["SGD step"] = (prof_l["optimizer_us"] / 1e3, 0.0)
        print(f"lfgcl: {prof_l['total_us'] / 1e3:.1f} ms a step under its profiler")
    hdr = f"{'kind':<40}{'fwd ms':>9}{'bwd ms':>9}{'total':>9}"
    if lf:
        hdr += f"{'lfgcl':>9}{'ratio':>8}"
    print(hdr)
    rows = []
    for kind, v in sorted(times.items(), key=lambda kv: -(kv[1]["fwd"] + kv[1]["bwd"])):
        total = v["fwd"] + v["bwd"]
        line = f"{kind:<40}{v['fwd']:>9.2f}{v['bwd']:>9.2f}{total:>9.2f}"
        row = {"kind": kind, "forward_ms": v["fwd"], "backward_ms": v["bwd"]}
        if kind in lf:
            mine = sum(lf[kind])
            line += f"{mine:>9.2f}{mine / total if total else float('nan'):>8.2f}"
            row["lfgcl_ms"] = mine
        print(line)
        rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads, "model": a.model, "batch": a.batch,
                       "image_size": a.image_size, "reps": a.reps, "step_ms": step_ms, "kinds": rows}, f, indent=1)


if __name__ == "__main__":
    main()
