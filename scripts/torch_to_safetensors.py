"""Converts a PyTorch checkpoint (pickle: .pt, .pth, .th) to a safetensors state dict that
`lfgcl import` reads (lfgcl does not parse pickles).

    python3 scripts/torch_to_safetensors.py resnet56.th resnet56.safetensors
    lfgcl import --from resnet56.safetensors --model resnet56 --out base.safetensors

Accepts a bare state dict, a dict wrapping one under `state_dict` (or `model`, `net`), or a whole
pickled nn.Module. Tensors are written contiguous, on the CPU, with their names unchanged (a
`module.` prefix is dropped by lfgcl). Needs torch; the `safetensors` package is used when it is
installed, else the file is written here (the format is a length, a JSON header and the raw bytes).
"""

import json
import os
import struct
import sys

import torch

# safetensors' dtype names, for the writer used when the package is missing.
DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def tensor_bytes(t):
    # bfloat16 has no NumPy type: its bits go out through an int16 view (little-endian, as x86).
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(tensors, dst, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise SystemExit(f"{name}: dtype {t.dtype} has no safetensors name")
        blob = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the package writes it
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, dst)


def save_file(tensors, dst, metadata):
    try:
        from safetensors.torch import save_file as package_save
    except ImportError:
        write_safetensors(tensors, dst, metadata)
        return
    package_save(tensors, dst, metadata=metadata)


def state_dict_of(obj):
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and any(torch.is_tensor(v) for v in inner.values()):
                return inner
        if any(torch.is_tensor(v) for v in obj.values()):
            return obj
    raise SystemExit(f"no state dict found (top-level type {type(obj).__name__}, keys {list(obj)[:10] if isinstance(obj, dict) else '-'})")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception:  # older pickles of whole modules need the full unpickler (trusted files only)
        obj = torch.load(src, map_location="cpu", weights_only=False)
    sd = state_dict_of(obj)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items() if torch.is_tensor(v)}
    skipped = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if skipped:
        print(f"skipped non-tensor entries: {skipped}", file=sys.stderr)
    save_file(tensors, dst, {"format": "pt", "converted_from": src})
    print(f"wrote {dst} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
