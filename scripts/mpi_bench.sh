#!/usr/bin/env bash
# Scaling on one machine (issue 22): search rate and data-parallel fine-tuning rate with
# 2 ranks x 1 thread against 1 process x 1 thread. Needs a build with the `mpi` feature:
#   cargo build --release --features mpi && bash scripts/mpi_bench.sh
# Env: EPISODES (search episodes, default 6), FT_LIMIT (fine-tuning images, default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/lfgcl
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EPISODES=${EPISODES:-6}
FT_LIMIT=${FT_LIMIT:-1024}
one() { "$BIN" --device cpu --threads 1 --quiet "$@"; }
two() { mpirun --oversubscribe --bind-to core -np 2 "$BIN" --device cpu --threads 1 --quiet "$@"; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
last_rate() { tail -n 1 "$1" | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['images_per_sec'])"; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for model in resnet20 resnet56; do
  one train --model $model --data synthetic --epochs 1 --limit 128 --test-limit 64 --batch-size 64 --out "$W/$model" >/dev/null
done

# Search: 256 reward images (scoring dominates), 8 candidates per step, random warm-up actions
# (the agent does not train: --warmup above --episodes), so the rate is the scoring rate plus the loop.
for model in resnet20 resnet56; do
  args=(search --ckpt "$W/$model/model.safetensors" --data synthetic --images 256 --episodes "$EPISODES"
    --candidates-per-step 8 --warmup 1000 --flops 0.5 --seed 1 --checkpoint-every 0)
  one "${args[@]}" --out "$W/s1-$model" >/dev/null
  two "${args[@]}" --out "$W/s2-$model" >/dev/null
  cmp -s "$W/s1-$model/candidates.jsonl" "$W/s2-$model/candidates.jsonl" && same=identical || same=DIFFERENT
  r1=$(field "$W/s1-$model/summary.json" "['outcome']['candidates_per_second']")
  r2=$(field "$W/s2-$model/summary.json" "['outcome']['candidates_per_second']")
  python3 -c "print(f'search $model: 1 rank {$r1:.2f} cand/s, 2 ranks {$r2:.2f} cand/s = {$r2/$r1:.2f}x ({$r2/$r1/2:.2f} of 2x); logs $same')"
done

# Data-parallel fine-tuning (label-free distillation) of a ResNet-56 pruned to 50% FLOPs, global batch 128.
one prune-apply --ckpt "$W/resnet56/model.safetensors" --uniform --flops 0.5 --out "$W/pruned56.safetensors" >/dev/null
ft=(finetune --ckpt "$W/pruned56.safetensors" --teacher "$W/resnet56/model.safetensors" --data synthetic
  --limit "$FT_LIMIT" --test-limit 64 --ft-epochs 1 --ft-batch-size 128 --seed 1)
one "${ft[@]}" --out "$W/f1" >/dev/null
two "${ft[@]}" --out "$W/f2" >/dev/null
f1=$(last_rate "$W/f1/train_log.jsonl")
f2=$(last_rate "$W/f2/train_log.jsonl")
python3 -c "print(f'fine-tune resnet56 (50% FLOPs, distill): 1 rank {$f1:.1f} img/s, 2 ranks {$f2:.1f} img/s = {$f2/$f1:.2f}x ({$f2/$f1/2:.2f} of 2x)')"
