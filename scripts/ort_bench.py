"""Times ONNX models in onnxruntime (CPU) for `lfgcl bench deploy`, which runs it as a subprocess.

    python3 scripts/ort_bench.py --threads 2 --batches 1,64 --min-seconds 1 base.onnx pruned.onnx

Each model and batch: a session with `--threads` intra-op threads (1 inter-op, sequential), two
warm-up runs, then runs for at least --min-seconds (and 3 runs), or exactly --reps runs when that
is given (`lfgcl bench cpu`); the median time per run gives images/s. Prints JSON on stdout:
{"onnxruntime": VERSION, "results": [{model, batch, images_per_sec, median_s, times}]} (times:
seconds of every timed run). Needs numpy and onnxruntime (pip install onnxruntime).
"""

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_model(sess, batch, min_seconds, reps=None):
    inp = sess.get_inputs()[0]
    shape = [batch] + [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    for _ in range(2):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()

    def more():
        if reps:
            return len(times) < reps
        return len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 10000)

    while more():
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    return {"batch": batch, "images_per_sec": batch / median, "median_s": median, "times": times}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=None, help="exactly this many timed runs (overrides --min-seconds)")
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",") if b]
    results = []
    for b in batches:
        for path in a.models:
            r = time_model(session(path, a.threads), b, a.min_seconds, a.reps)
            r["model"] = path
            results.append(r)
            print(f"{path} batch {b}: {r['images_per_sec']:.1f} img/s", file=sys.stderr)
    json.dump({"onnxruntime": ort.__version__, "threads": a.threads, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
