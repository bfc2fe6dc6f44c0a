"""Runs an exported ONNX model in onnxruntime (CPU) on REF's `input` and compares with REF's
`logits` (lfgcl's CPU logits): prints JSON {max_abs_diff, max_abs_ref, opset, metadata keys}.

    python3 ort_check.py MODEL.onnx REF.safetensors
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file


def main():
    model, ref_path = sys.argv[1:3]
    ref = load_file(ref_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    # The batch is dynamic: run the whole batch and its first image alone.
    out = sess.run(None, {inp.name: ref["input"]})[0]
    one = sess.run(None, {inp.name: ref["input"][:1]})[0]
    want = ref["logits"]
    diff = max(float(np.abs(out - want).max()), float(np.abs(one - want[:1]).max()))
    meta = sess.get_modelmeta().custom_metadata_map
    print(json.dumps({
        "max_abs_diff": diff,
        "max_abs_ref": float(np.abs(want).max()),
        "input_shape": [str(d) for d in inp.shape],
        "metadata": sorted(meta),
    }))


if __name__ == "__main__":
    main()
