"""Converts a PyTorch checkpoint (pickle: .pt, .pth, .th) to a safetensors state dict that
`lfgcl import` reads (lfgcl does not parse pickles).

    python3 scripts/torch_to_safetensors.py resnet56.th resnet56.safetensors
    lfgcl import --from resnet56.safetensors --model resnet56 --out base.safetensors

Accepts a bare state dict, a dict wrapping one under `state_dict` (or `model`, `net`), or a whole
pickled nn.Module. Tensors are written contiguous, on the CPU, with their names unchanged (a
`module.` prefix is dropped by lfgcl). Needs torch and safetensors.
"""

import sys

import torch
from safetensors.torch import save_file


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
    save_file(tensors, dst, metadata={"format": "pt", "converted_from": src})
    print(f"wrote {dst} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
