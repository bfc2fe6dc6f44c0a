"""Where onnxruntime's time goes, node by node: the reference for `lfgcl bench infer --layers`.

    lfgcl export-onnx --ckpt NET --out net.onnx
    python3 scripts/ort_layers.py --threads 2 --batch 1 --reps 30 net.onnx [--json out.json]

onnxruntime fuses lfgcl's export further (Conv + Clip, NCHWc layouts on x86); each fused node is
named after the last node it absorbed, with a suffix such as `_nchwc` (`features.2.conv.0.2_nchwc`
is the expansion conv, its folded BN and its ReLU6: the step `features.2.conv.0.0` of `bench infer
--layers`). Prints each node's median kernel time over --reps runs (onnxruntime's own profiler,
after two warm-up runs), the sum by operator, and the median wall time per run of a session
without profiling, the figure `lfgcl bench cpu` compares against. Needs numpy and onnxruntime.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort


def options(threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def feed_for(sess, batch):
    inp = sess.get_inputs()[0]
    shape = [batch] + [int(d) for d in inp.shape[1:]]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", help="write the per-node medians and totals here")
    args = ap.parse_args()
    if args.reps < 1 or args.batch < 1 or args.threads < 1:
        sys.exit("ort_layers.py: --reps, --batch and --threads must be positive")

    plain = ort.InferenceSession(args.model, options(args.threads), providers=["CPUExecutionProvider"])
    feed = feed_for(plain, args.batch)
    for _ in range(2):
        plain.run(None, feed)
    wall = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        plain.run(None, feed)
        wall.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        so = options(args.threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        for _ in range(2 + args.reps):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)

    # Kernel events, in execution order; the first two runs' are warm-up.
    per_node, order = {}, []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            if name not in per_node:
                per_node[name] = (e.get("args", {}).get("op_name", "?"), [])
                order.append(name)
            per_node[name][1].append(e["dur"])
    nodes = []
    for name in order:
        op, durs = per_node[name]
        timed = durs[2:] if len(durs) > 2 else durs
        nodes.append({"node": name, "op": op, "median_us": statistics.median(timed)})
    total = sum(n["median_us"] for n in nodes)
    by_op = {}
    for n in nodes:
        by_op[n["op"]] = by_op.get(n["op"], 0.0) + n["median_us"]

    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, batch {args.batch}, {args.reps} runs")
    print(f"{'node':48s} {'op':22s} {'us':>9s} {'%':>6s}")
    for n in nodes:
        print(f"{n['node']:48s} {n['op']:22s} {n['median_us']:9.1f} {100 * n['median_us'] / total:6.1f}")
    print(f"sum of node medians {total:.1f} us; wall time per run (no profiling): median "
          f"{1e6 * statistics.median(wall):.1f} us")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:22s} {us:9.1f} us {100 * us / total:5.1f}%")
    if args.json:
        out = {"onnxruntime": ort.__version__, "threads": args.threads, "batch": args.batch, "reps": args.reps,
               "nodes": nodes, "by_op_us": by_op, "sum_us": total, "wall_median_us": 1e6 * statistics.median(wall)}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
