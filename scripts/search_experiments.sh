#!/usr/bin/env bash
# The search's evidence, on whatever device `lfgcl` finds (a GPU makes it take minutes):
#   A. best reward at 50% FLOPs for the same number of proposals (100 episodes x 8): DDPG with
#      AMC's settings (no noise floor, 8 updates per episode), DDPG with lfgcl's defaults (noise
#      floor 0.05, 32 updates per episode), random search, and uniform pruning (printed by every
#      run), three seeds, on a ResNet-20 trained on Fashion-MNIST and one trained on the
#      synthetic set; BN statistics as `--bn-stats` (default recalibrate, BN_STATS to change);
#   B. the paper's premise: Spearman rank correlation between the label-free reward and top-1
#      before fine-tuning (labels only for this report) over 400 random candidates at 50%
#      FLOPs, with and without BN re-estimation.
# Usage: CKPT=dir-with-r20-fmnist-and-r20-syn FMNIST=idx-dir OUT=results [PARTS=AB] [BN_STATS=running]
#        bash scripts/search_experiments.sh
set -uo pipefail
out=${OUT:-$PWD/search-experiments}
ckpt=${CKPT:-$PWD/.gpu/ckpt}
fmnist=${FMNIST:-/usr/share/datasets/fashion-mnist}
parts=${PARTS:-AB}
mkdir -p "$out"
common=(--images 256 --flops 0.5 --candidates-per-step 8)
bn=(--bn-stats "${BN_STATS:-recalibrate}")

search() { # search NAME CKPT DATA ARGS...
  local name=$1 ck=$2 data=$3
  shift 3
  lfgcl --quiet search --ckpt "$ck" --data "$data" "${common[@]}" "$@" --out "$out/$name" >"$out/$name.txt" 2>&1
  echo "$name: $(grep -E 'best reward|Spearman|error' "$out/$name.txt" | tr '\n' ' ')"
}

for d in fmnist syn; do
  ck=$ckpt/r20-$d.safetensors
  data=synthetic
  [[ $d == fmnist ]] && data=fashion-mnist:$fmnist
  # A: the three seeds run side by side.
  [[ $parts == *A* ]] && for seed in 0 1 2; do
    (
      a=(--episodes 100 --warmup 30 --seed "$seed" "${bn[@]}")
      search "A-$d-ddpg-amc-s$seed" "$ck" "$data" "${a[@]}" --updates-per-episode 8 --noise-min 0
      search "A-$d-ddpg-s$seed" "$ck" "$data" "${a[@]}"
      search "A-$d-random-s$seed" "$ck" "$data" "${a[@]}" --strategy random
    ) &
  done
  wait
  # B: the same 400 random candidates (same seed), with and without BN re-estimation.
  [[ $parts == *B* ]] && for stats in running recalibrate; do
    search "B-$d-$stats" "$ck" "$data" --episodes 50 --warmup 50 --strategy random --seed 3 \
      --report-accuracy 2000 --bn-stats $stats &
  done
  wait
done
