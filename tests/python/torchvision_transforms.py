"""Applies torchvision's transforms (the PIL path that ImageFolder feeds) to the cases lfgcl wrote
and compares the results with lfgcl's, byte for byte.

usage: torchvision_transforms.py CASES.json
Each case: {"png": path, "kind": "eval"|"crop", "size": S, "out": raw u8 HWC file of lfgcl's
result, and for "crop" "box": [top, left, height, width], "flip": bool; optionally "norm": raw f32
CHW file of lfgcl's normalised tensor}. Prints one line per case and exits 1 on any mismatch.
"""
import json
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    cases = json.load(open(sys.argv[1]))
    bad = 0
    for c in cases:
        img = Image.open(c["png"]).convert("RGB")
        s = c["size"]
        if c["kind"] == "eval":
            ref = T.Compose([T.Resize(round(s * 8 / 7)), T.CenterCrop(s)])(img)
        else:
            top, left, h, w = c["box"]
            ref = F.resized_crop(img, top, left, h, w, [s, s], interpolation=T.InterpolationMode.BILINEAR)
            if c["flip"]:
                ref = F.hflip(ref)
        ref = np.asarray(ref, dtype=np.uint8)
        got = np.fromfile(c["out"], dtype=np.uint8).reshape(ref.shape)
        diff = int(np.abs(ref.astype(np.int32) - got.astype(np.int32)).max())
        line = f"{c['kind']} {c['png']} size {s}: max |diff| {diff} levels"
        ok = diff == 0
        if "norm" in c:
            t = T.Normalize(MEAN, STD)(T.ToTensor()(Image.fromarray(ref))).numpy()
            got_n = np.fromfile(c["norm"], dtype=np.float32).reshape(t.shape)
            nd = float(np.abs(t - got_n).max())
            line += f", normalised max |diff| {nd:.2e}"
            ok = ok and nd <= 1e-6
        print(("ok   " if ok else "BAD  ") + line)
        bad += not ok
    print(f"torchvision {torchvision.__version__}, torch {torch.__version__}: {len(cases) - bad}/{len(cases)} cases equal")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
