#!/usr/bin/env bash
# Runs the grouped / depthwise convolution kernels (kernels/conv.cu grouped tiles and dense tiles,
# kernels/conv_dw.cu) on the CPU under a host emulation of the CUDA dialect (emu.h: one thread
# per CUDA thread, a barrier for __syncthreads, blocks one after another) and compares them with
# a naive f64 convolution. No GPU needed; checks indexing and reductions, not performance or
# memory-model subtleties (run compute-sanitizer on a GPU for those). Takes a few CPU-minutes.
#   bash scripts/kernel_emu/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/k"
cp "$root"/kernels/{conv.cu,conv_common.cuh,conv_dw.cu} "$tmp/k/"
# The tensor-core helpers are inline PTX: not needed here, not compilable on the host.
python3 - "$root/kernels/common.cuh" "$tmp/k/common.cuh" <<'PY'
import sys
s = open(sys.argv[1]).read()
a, b = s.index("// ---- tensor-core helpers"), s.index("// ---- deterministic reductions")
open(sys.argv[2], "w").write(s[:a] + s[b:])
PY
cp "$here/emu.h" "$here/harness.cpp" "$tmp/"
g++ -std=c++20 -O1 -w -pthread "$tmp/harness.cpp" -o "$tmp/harness"
"$tmp/harness"
