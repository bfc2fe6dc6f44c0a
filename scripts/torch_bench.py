#!/usr/bin/env python3
"""PyTorch reference timings for lfgcl's CUDA kernels, keyed like `lfgcl::bench::kernels`.

Same cases, shapes and measuring policy as the Rust benchmark, so the two JSON files can be
joined by key:
  - PyTorch eager, torch.backends.cudnn.benchmark = True;
  - warm-up runs, then `reps` timed runs, each between two CUDA events (timing enabled);
    median, min, p10, p90 and spread = (p90 - p10) / median are reported;
  - memory-bound cases flush L2 before every repetition (writing a buffer of max(2 x L2, 64 MiB)
    outside the timed region); compute-bound cases (convolutions, GEMM) are timed warm;
  - bytes are the compulsory traffic (inputs read once, outputs written once, counted in f32
    exactly as the Rust side counts them, even where PyTorch moves less, e.g. bf16 tensors),
    FLOPs are 2 x MACs;
  - the device's peaks are measured in the same run: device-to-device copy (256 MiB, read +
    write) and an f32 GEMM (torch.mm 4096^3 with TF32 off).

Precision variants of the convolutions:
  f32   cudnn.allow_tf32 = False (exact f32; the parity reference on our side),
  tf32  cudnn.allow_tf32 = True  (PyTorch's default for convolutions),
  bf16  inputs, weights and outputs in bfloat16 (our bf16 kernels read and write f32 and round
        the operands to bf16 inside the kernel).

It also times a CIFAR ResNet-56 (He et al. 2016, option-A shortcuts, 16/32/64 channels)
training step (forward, cross-entropy, backward, SGD with momentum) and inference, keys
`model/resnet56_train_step/n<batch>` and `model/resnet56_infer/n<batch>`.

Usage:
  python3 scripts/torch_bench.py --out torch.json
  python3 scripts/torch_bench.py --compare lfgcl.json --out torch.json   # side-by-side table
"""

import argparse
import json
import math
import sys

RESNET56_PARAMS = 853_018


def conv_shapes(batch):
    """Every distinct convolution of ResNet-56 for CIFAR: (n, c, h, w, k, r, stride, pad)."""
    b = batch
    return [
        (b, 3, 32, 32, 16, 3, 1, 1),
        (b, 16, 32, 32, 16, 3, 1, 1),
        (b, 16, 32, 32, 32, 3, 2, 1),
        (b, 32, 16, 16, 32, 3, 1, 1),
        (b, 32, 16, 16, 64, 3, 2, 1),
        (b, 64, 8, 8, 64, 3, 1, 1),
    ]


def conv_key(op, s):
    n, c, h, w, k, r, stride, pad = s
    return f"{op}/n{n}_c{c}_h{h}_w{w}_k{k}_r{r}_s{stride}_p{pad}"


def out_size(h, r, stride, pad):
    return (h + 2 * pad - r) // stride + 1


def percentile(sorted_v, q):
    if not sorted_v:
        return float("nan")
    pos = q * (len(sorted_v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (pos - lo)


def keep_list(c, keep, seed, torch):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(c, generator=g)
    idx = torch.nonzero(h < keep).flatten()
    if idx.numel() == 0:
        idx = torch.zeros(1, dtype=torch.long)
    return idx


class Bencher:
    def __init__(self, torch, warmup, reps, flush_l2):
        self.torch = torch
        self.warmup = warmup
        self.reps = reps
        self.flush_l2 = flush_l2
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 50 << 20)
        self.flush_buf = torch.empty(max(2 * l2, 64 << 20), dtype=torch.uint8, device="cuda")
        self.results = []

    def time(self, fn, flush, reps=None, warmup=None):
        torch = self.torch
        reps = max(1, reps or self.reps)
        for _ in range(warmup if warmup is not None else self.warmup):
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            if flush:
                self.flush_buf.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        us = sorted(s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends))
        return {
            "median": percentile(us, 0.5),
            "min": us[0],
            "p10": percentile(us, 0.1),
            "p90": percentile(us, 0.9),
            "reps": reps,
        }

    def record(self, key, kernel, st, flops=None, nbytes=None, flushed=False, peak="none", peak_value=None):
        secs = st["median"] * 1e-6
        t = {
            "key": key,
            "kernel": kernel,
            "reps": st["reps"],
            "median_us": st["median"],
            "min_us": st["min"],
            "p10_us": st["p10"],
            "p90_us": st["p90"],
            "spread_pct": 100.0 * (st["p90"] - st["p10"]) / st["median"] if st["median"] > 0 else float("nan"),
            "flops": flops,
            "bytes": nbytes,
            "tflops": flops / secs / 1e12 if flops else None,
            "gbps": nbytes / secs / 1e9 if nbytes else None,
            "fraction_of_peak": None,
            "peak": peak,
            "l2_flushed": flushed,
        }
        if peak_value:
            v = t["gbps"] if peak == "copy_bandwidth" else t["tflops"]
            t["fraction_of_peak"] = v / peak_value if v else None
        self.results.append(t)
        print(f"{key:<58} {t['median_us']:>10.2f} us  spread {t['spread_pct']:5.1f}%", flush=True)
        return t


def set_tf32(torch, on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def bench_kernels(torch, F, b, args):
    keep = lambda key: args.filter is None or args.filter in key  # noqa: E731
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(1)

    def rnd(*shape, dtype=torch.float32):
        return (torch.rand(*shape, device=dev, generator=gen) * 2 - 1).to(dtype)

    # Peaks.
    set_tf32(torch, False)
    src = torch.zeros(64 << 20, device=dev)
    dst = torch.empty_like(src)
    st = b.time(lambda: dst.copy_(src), flush=True, reps=min(max(args.reps, 10), 50), warmup=max(args.warmup, 3))
    copy = b.record("peak/copy_bandwidth", "copy_ 256 MiB", st, nbytes=2 * 4 * src.numel(), flushed=True)
    copy_peak = copy["gbps"]
    del src, dst
    g = 4096
    ga, gb = rnd(g, g), rnd(g, g)
    st = b.time(lambda: torch.mm(ga, gb), flush=False, reps=min(max(args.reps, 10), 30), warmup=max(args.warmup, 3))
    gemm = b.record("peak/sgemm_f32", "torch.mm 4096^3 (tf32 off)", st, flops=2.0 * g**3)
    gemm_peak = gemm["tflops"]
    del ga, gb

    # Convolutions.
    for s in conv_shapes(args.batch):
        n, c, h, w, k, r, stride, pad = s
        p, q = out_size(h, r, stride, pad), out_size(w, r, stride, pad)
        flops = 2.0 * n * k * p * q * c * r * r
        for prec in args.precisions:
            dt = torch.bfloat16 if prec == "bf16" else torch.float32
            set_tf32(torch, prec == "tf32")
            x, wt, dy = rnd(n, c, h, w, dtype=dt), rnd(k, c, r, r, dtype=dt), rnd(n, k, p, q, dtype=dt)
            f32 = prec == "f32"
            key = conv_key(f"conv_fwd_{prec}", s)
            if keep(key):
                st = b.time(lambda: F.conv2d(x, wt, None, stride, pad), flush=False)
                b.record(key, "cudnn conv fwd", st, flops=flops, peak="sgemm_f32" if f32 else "none", peak_value=gemm_peak if f32 else None)
            key = conv_key(f"conv_bwd_data_{prec}", s)
            if keep(key):
                fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                    dy, x, wt, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False])
                st = b.time(fn, flush=False)
                b.record(key, "cudnn conv bwd data", st, flops=flops, peak="sgemm_f32" if f32 else "none", peak_value=gemm_peak if f32 else None)
            if f32:
                key = conv_key("conv_bwd_weight_f32", s)
                if keep(key):
                    fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                        dy, x, wt, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False])
                    st = b.time(fn, flush=False)
                    b.record(key, "cudnn conv bwd weight", st, flops=flops, peak="sgemm_f32", peak_value=gemm_peak)
        if "f32" not in args.precisions:
            set_tf32(torch, False)
            key = conv_key("conv_bwd_weight_f32", s)
            if keep(key):
                x, wt, dy = rnd(n, c, h, w), rnd(k, c, r, r), rnd(n, k, p, q)
                fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                    dy, x, wt, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False])
                st = b.time(fn, flush=False)
                b.record(key, "cudnn conv bwd weight", st, flops=flops, peak="sgemm_f32", peak_value=gemm_peak)
    set_tf32(torch, False)

    # Batch norm, ReLU, add+ReLU at the stage shapes.
    fl = not args.no_flush
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        n = args.batch
        numel = n * c * hw * hw
        suffix = f"n{n}_c{c}_h{hw}_w{hw}"
        x, y = rnd(n, c, hw, hw), rnd(n, c, hw, hw)
        gamma, beta = rnd(c), rnd(c)
        rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
        key = f"bn_train_fwd/{suffix}"
        if keep(key):
            st = b.time(lambda: F.batch_norm(x, rm, rv, gamma, beta, True, 0.1, 1e-5), flush=fl)
            b.record(key, "batch_norm (train)", st, nbytes=2 * 4 * numel, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)
        key = f"bn_bwd/{suffix}"
        if keep(key):
            xg = x.clone().requires_grad_(True)
            gg, bg = gamma.clone().requires_grad_(True), beta.clone().requires_grad_(True)
            out = F.batch_norm(xg, rm.clone(), rv.clone(), gg, bg, True, 0.1, 1e-5)
            fn = lambda: torch.autograd.grad(out, (xg, gg, bg), y, retain_graph=True)  # noqa: E731
            st = b.time(fn, flush=fl)
            b.record(key, "batch_norm backward", st, nbytes=3 * 4 * numel, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)
        key = f"relu/{suffix}"
        if keep(key):
            st = b.time(lambda: F.relu(x), flush=fl)
            b.record(key, "relu", st, nbytes=2 * 4 * numel, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)
        key = f"add_relu/{suffix}"
        if keep(key):
            st = b.time(lambda: F.relu(x + y), flush=fl)
            b.record(key, "add + relu (2 kernels)", st, nbytes=3 * 4 * numel, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)

    # SGD over ResNet-56's parameter count.
    key = f"sgd_step/n{RESNET56_PARAMS}"
    if keep(key):
        param = torch.nn.Parameter(rnd(RESNET56_PARAMS))
        param.grad = rnd(RESNET56_PARAMS)
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
        st = b.time(opt.step, flush=fl)
        b.record(key, "optim.SGD.step", st, nbytes=5 * 4 * RESNET56_PARAMS, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)

    # Search kernels.
    kc = args.candidates
    key = f"gather_conv_weight/k{kc}_o64_i64_r3_s3"
    if keep(key):
        w = rnd(64, 64, 3, 3)
        outs = [keep_list(64, 0.5, 100 + i, torch).to(dev) for i in range(kc)]
        ins = [keep_list(64, 0.5, 200 + i, torch).to(dev) for i in range(kc)]
        total = sum(o.numel() * i.numel() * 9 for o, i in zip(outs, ins))
        fn = lambda: torch.cat([w.index_select(0, o).index_select(1, i).flatten() for o, i in zip(outs, ins)])  # noqa: E731
        st = b.time(fn, flush=fl)
        b.record(key, "index_select x2 per candidate + cat", st, nbytes=2 * 4 * total, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)
    key = f"gather_activations/k{kc}_n{args.search_images}_c64_h8_w8"
    if keep(key):
        x = rnd(args.search_images, 64, 8, 8)
        idx = [keep_list(64, 0.5, 300 + i, torch).to(dev) for i in range(kc)]
        total = sum(args.search_images * i.numel() * 64 for i in idx)
        fn = lambda: torch.cat([x.index_select(1, i).flatten() for i in idx])  # noqa: E731
        st = b.time(fn, flush=fl)
        b.record(key, "index_select per candidate + cat", st, nbytes=2 * 4 * total, flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)
    m = args.search_images * 64 * 8 * 8
    key = f"feature_mse/k{kc}_m{m}"
    if keep(key):
        cand, base = rnd(kc, m), rnd(m)
        st = b.time(lambda: ((cand - base) ** 2).mean(dim=1), flush=fl)
        b.record(key, "sub, pow, mean", st, nbytes=4 * (kc * m + m), flushed=fl, peak="copy_bandwidth", peak_value=copy_peak)


def resnet56(torch):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, (cout - cin) // 2
            self.option_a = stride != 1 or cin != cout

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            sc = x
            if self.option_a:
                # Option A: subsample and zero-pad the channels, no parameters.
                sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + sc)

    class ResNet(nn.Module):
        def __init__(self, n=9, classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            layers, cin = [], 16
            for cout, stride in [(16, 1), (32, 2), (64, 2)]:
                for i in range(n):
                    layers.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = self.layers(x)
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return ResNet()


def bench_model(torch, b, args):
    dev = "cuda"
    model = resnet56(torch).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"resnet56: {nparams} parameters", flush=True)
    n = args.batch
    x = torch.randn(n, 3, 32, 32, device=dev)
    labels = torch.randint(0, 10, (n,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    # Forward MACs per 32x32 image: stem 442,368 + 3 stages of 18 convs (42,467,328 + 41,287,680
    # + 41,287,680) + fc 640.
    fwd_macs = 125_485_696

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()

    model.train()
    key = f"model/resnet56_train_step/n{n}"
    if args.filter is None or args.filter in key:
        st = b.time(step, flush=False, reps=max(10, args.reps // 2))
        b.record(key, "eager fwd+bwd+SGD", st, flops=3 * 2.0 * fwd_macs * n)

    model.eval()
    for bs in sorted({n, args.search_images}):
        key = f"model/resnet56_infer/n{bs}"
        if args.filter is None or args.filter in key:
            xi = torch.randn(bs, 3, 32, 32, device=dev)

            def infer():
                with torch.no_grad():
                    model(xi)

            st = b.time(infer, flush=False)
            b.record(key, "eager inference", st, flops=2.0 * fwd_macs * bs)


def compare(ours_path, torch_results):
    with open(ours_path) as f:
        ours = json.load(f)
    if isinstance(ours, dict):
        ours = ours.get("timings") or ours.get("kernels") or ours.get("results") or []
    by_key = {t["key"]: t for t in ours}
    print(f"\n{'case':<58} {'lfgcl us':>10} {'torch us':>10} {'torch/lfgcl':>12}")
    for t in torch_results:
        o = by_key.get(t["key"])
        if o is None:
            continue
        ratio = t["median_us"] / o["median_us"] if o["median_us"] > 0 else float("nan")
        print(f"{t['key']:<58} {o['median_us']:>10.2f} {t['median_us']:>10.2f} {ratio:>12.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="torch_bench.json", help="JSON file to write")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--search-images", type=int, default=256)
    ap.add_argument("--precisions", default="f32,tf32,bf16")
    ap.add_argument("--no-flush", action="store_true", help="do not flush L2 for memory-bound cases")
    ap.add_argument("--filter", default=None, help="only keys containing this string")
    ap.add_argument("--skip-model", action="store_true", help="skip the ResNet-56 step/inference timings")
    ap.add_argument("--compare", default=None, help="lfgcl bench JSON to print side by side")
    args = ap.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    for p in args.precisions:
        if p not in ("f32", "tf32", "bf16"):
            ap.error(f"unknown precision {p}")

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"skipped: PyTorch not available ({e})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(0)
    b = Bencher(torch, args.warmup, args.reps, not args.no_flush)
    bench_kernels(torch, F, b, args)
    if not args.skip_model:
        set_tf32(torch, False)
        bench_model(torch, b, args)
    doc = {
        "device": props.name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_benchmark": True,
        "model_tf32": False,
        "warmup": args.warmup,
        "reps": args.reps,
        "l2_flush_bytes": b.flush_buf.numel(),
        "timings": b.results,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {len(b.results)} timings to {args.out}")
    if args.compare:
        compare(args.compare, b.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
