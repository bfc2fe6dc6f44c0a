#!/usr/bin/env bash
# Every GPU measurement of lfgcl, side by side with PyTorch on the same machine. Results (JSON,
# logs, search outputs) go to $OUT (default ./gpu-bench). Needs `lfgcl` on PATH and python3
# with PyTorch; checkpoints come from $CKPT (default .gpu/ckpt): r20-fmnist, r20-syn and r56-syn
# .safetensors (any trained ResNet-20/56 checkpoints will do for the throughput figures).
#
#   bash scripts/gpu_bench.sh                     # after `bash .gpu/run.sh` put lfgcl on PATH
#   bash .gpu/run.sh bash scripts/gpu_bench.sh    # on the lent GPU machine
set -uo pipefail
out=${OUT:-$PWD/gpu-bench}
ckpt=${CKPT:-$PWD/.gpu/ckpt}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
step() { # step NAME SECONDS CMD...: runs CMD under a time limit, logging to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "## $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 80 "$out/$name.log"
  echo "## $name: exit $rc"
}

# 1. Kernels and whole-model steps, lfgcl then PyTorch with the same keys, then the ratio table.
step kernels 120 lfgcl --quiet bench kernels --json "$out/lfgcl_kernels.json"
step torch_kernels 120 python3 "$here/torch_bench.py" --out "$out/torch_kernels.json" --compare "$out/lfgcl_kernels.json"

# 2. Candidate evaluation throughput (256 unlabeled images, keep 0.5), lfgcl and PyTorch.
for m in r20-fmnist r56-syn; do
  step "search_bench_$m" 45 lfgcl --device cuda bench search --ckpt "$ckpt/$m.safetensors" --images 256 --candidates 32 --json "$out/search_bench_$m.json"
  step "torch_search_$m" 45 python3 "$here/torch_search_eval.py" --ckpt "$ckpt/$m.safetensors" --images 256 --candidates 32 --device cuda --json "$out/torch_search_$m.json"
done

# 3. Where a ResNet-50 training step's time goes on the GPU (each layer's forward, input and weight
# gradients, the loss and the SGD step; `scripts/torch_train_layers.py` is the CPU's reference).
step train_layers_r50 90 lfgcl --device cuda bench train --model resnet50 --image-size 224 --train-batch 32 \
  --layers --reps 3 --json "$out/train_layers_r50.json"

# 4. A real search on the GPU (synthetic data is embedded): candidates/s as the search reports it.
step search_gpu 90 lfgcl --device cuda search --ckpt "$ckpt/r20-syn.safetensors" --data synthetic --flops 0.5 \
  --episodes 60 --candidates-per-step 8 --warmup 20 --images 256 --seed 0 --out "$out/search_gpu"
exit 0
