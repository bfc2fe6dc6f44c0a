#!/usr/bin/env bash
# Issue 21: does the search pay? Every method at the same exact FLOPs budget, the same label-free
# fine-tuning, 3 seeds, on Fashion-MNIST; then docs/results.md and docs/results.json.
#
#   bash scripts/experiments/quality.sh [--out DIR] [--device cpu|cuda|auto] [--threads N]
#        [--profile cpu|full] [--only REGEX] [--seeds "0 1 2"] [--bin LFGCL] [--docs DIR]
#        [--aggregate-only] [--ci] [--keep EARLIER.json]
#
# Resumable: every cell is one `lfgcl pipeline --methods M` run in its own folder whose
# report.json is written atomically at the end; a cell with a report.json is skipped, one without
# is continued (`--resume`: searches from their saved state, fine-tuning from its last epoch).
# Kill it at any moment and run the same command again. The first run copies the lfgcl binary to
# DIR/bin/lfgcl (built with cargo if --bin is not given) and every later run uses that copy, so a
# rebuild cannot change a table half way.
#
# --keep EARLIER.json (say docs/results.json) carries a committed table over to a new run folder:
# the aggregator keeps every record of that file the folder does not hold again, so a lost or new
# folder adds cells to the table instead of starting it again. Pin the binary that ran the kept
# cells (--bin, built from the commit results.md names) so old and new cells stay comparable.
#
# Cells, cheapest and most needed first (--only REGEX filters them by name):
#   base-resnet20                      the baseline, trained with labels
#   streams-r20-f50                    uniform 50% --streams before fine-tuning, shortcut copies
#                                      kept jointly (now) and ranked per stream (before issue 21)
#   r20-f50-s{0,1,2}-{uniform,global,uniform-fpgm,lfgcl,random,lfgcl-streams}
#   study-r20-f50-s0-c{0..5}           6 candidates of the seed-0 LFGCL search, spread over its
#                                      rewards, fine-tuned: reward vs top-1 after fine-tuning
#   r20-f30-s{0,1,2}-{...}             the same methods at 30% FLOPs, and random search --streams
#   r20-f30-ft1-s{0,1,2}-{uniform,lfgcl-streams,random-streams}
#                                      at 30% FLOPs with 1 fine-tuning epoch instead of 5
#   study-r20-f30{-ft1,}-s0-{lfgcl,random}-streams-c{0..5}
#                                      6 candidates of the seed-0 LFGCL --streams search and of
#                                      random search --streams at 30%, fine-tuned 1 and 5 epochs
#   base-resnet56, r56-f50-s{0,1,2}-{uniform,global,lfgcl,random}
#   abl-r20-f50-s{0,1,2}-{stages,long}  item 4's search changes, each against the plain lfgcl
#                                      cell of its seed: reward taps at every stage too (stages),
#                                      3x the search episodes (long)
#   abl-r56-f50-s{0,1,2}-stages         the reward taps at ResNet-56
#   abl-r{20,56}-f50-s{0,1,2}-proxy     the fine-tuning proxy: the seed's lfgcl search (copied),
#                                      its 4 best candidates at least 0.1 apart fine-tuned 40 steps
#                                      each, the lowest KL to the baseline kept
#   abl-r{20,56}-f50-s{0,1,2}-proxy-random
#                                      the same proxy on the seed's random search (it applies to
#                                      both searches, so a fair comparison needs both)
#   abl-r20-f50-s{0,1,2}-{lfgcl,uniform}-ft
#                                      item 4's fine-tuning change: the seed's lfgcl (or uniform L1)
#                                      net fine-tuned twice by one binary, KL only and KL + feature
#                                      distillation (--ft-feature-weight 1), so the two differ only
#                                      in the loss (the binary: $OUT/bin/lfgcl-ablation, pinned on
#                                      first use like the table's)
#
# Profiles: `full` is the issue's recipe (baselines 15 epochs, 100 search episodes with 30 of
# warm-up, 5 fine-tuning epochs on the whole training split), the default with --device cuda.
# `cpu` (the default otherwise) fits a shared 2-core machine: baselines 2 epochs (ResNet-20) / 2
# (ResNet-56), 60 episodes with 20 of warm-up, 5 fine-tuning epochs on the first 12,000 training
# images. Every method gets the same profile; results.md names the one it ran.
#
# --ci: one seed on a tiny budget (Fashion-MNIST subsets, 2 search episodes), every method, into a
# temporary folder (or --out), then the aggregator; well under a minute on 2 cores. It checks
# that the script, the CLI it calls and the aggregator still fit together.
set -euo pipefail
# The braces make bash read the whole script before running it: editing the file (a git pull)
# while a long run is going cannot derail it.
{
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

out="" device=cpu threads="" profile="" only="" seeds="0 1 2" bin="" docs="" aggregate_only=0 ci=0 keep=()
data_dir=${FMNIST:-/usr/share/datasets/fashion-mnist}
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --docs) docs=$2; shift 2 ;;
    --aggregate-only) aggregate_only=1; shift ;;
    --ci) ci=1; shift ;;
    --keep) keep=(--keep "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "quality.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ ! -d $data_dir ]]; then
  echo "quality.sh: Fashion-MNIST not found in $data_dir (apt-get install dataset-fashion-mnist, or FMNIST=DIR)" >&2
  exit 3
fi
data="fashion-mnist:$data_dir"
[[ -z $profile ]] && { [[ $device == cuda ]] && profile=full || profile=cpu; }
if [[ $ci == 1 ]]; then
  profile=ci
  seeds="0"
  [[ -z $out ]] && out=$(mktemp -d "${TMPDIR:-/tmp}/lfgcl-quality-ci.XXXXXX")
  [[ -z $docs ]] && docs=$out/docs
fi
[[ -z $out ]] && out=$repo/runs/quality
[[ -z $docs ]] && docs=$repo/docs
if [[ -z $threads && $device == cpu ]]; then threads=1; fi
mkdir -p "$out/cells" "$out/bin"
out=$(cd "$out" && pwd)

case $profile in
  full) proxy_steps=40 base_epochs20=15 base_epochs56=15 episodes=100 warmup=30 ft_epochs=5 ft_limit=() images=256 test_limit=() ;;
  cpu) proxy_steps=40 base_epochs20=2 base_epochs56=2 episodes=60 warmup=20 ft_epochs=5 ft_limit=(--limit 12000) images=256 test_limit=() ;;
  ci) proxy_steps=2 base_epochs20=1 base_epochs56=1 episodes=2 warmup=1 ft_epochs=1 ft_limit=(--limit 512) images=32 test_limit=(--test-limit 256) ;;
  *) echo "quality.sh: --profile must be cpu or full" >&2; exit 2 ;;
esac

# The binary: a stable copy per output folder.
if [[ ! -x $out/bin/lfgcl ]]; then
  if [[ -z $bin ]]; then
    (cd "$repo" && cargo build --release --quiet)
    bin=$repo/target/release/lfgcl
  fi
  cp "$bin" "$out/bin/lfgcl.tmp" && mv "$out/bin/lfgcl.tmp" "$out/bin/lfgcl"
  sha256sum "$out/bin/lfgcl" | cut -d' ' -f1 >"$out/bin/sha256"
  (git -C "$repo" rev-parse HEAD 2>/dev/null || echo "${QUALITY_COMMIT:-unknown}") >"$out/bin/commit"
fi
lfgcl=$out/bin/lfgcl
global=(--device "$device")
[[ -n $threads ]] && global+=(--threads "$threads")
cat >"$out/profile.json" <<EOF
{"profile": "$profile", "device": "$device", "threads": "${threads:-all}", "base_epochs": {"resnet20": $base_epochs20, "resnet56": $base_epochs56},
 "episodes": $episodes, "warmup": $warmup, "candidates_per_step": 8, "images": $images, "ft_epochs": $ft_epochs,
 "ft_train_images": "${ft_limit[1]:-all}", "machine": "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs), $(nproc) cores", "lfgcl_sha256": "$(cat "$out/bin/sha256")", "lfgcl_commit": "$(cat "$out/bin/commit")"}
EOF

wanted() { [[ -z $only ]] || [[ $1 =~ $only ]]; }
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# run_logged DIR CMD...: runs CMD with its output in DIR/log.txt and the command in DIR/command.txt.
run_logged() {
  local dir=$1
  shift
  mkdir -p "$dir"
  printf '%q ' "$@" | sed "s#$out#\$OUT#g; s#$lfgcl#lfgcl#g" >"$dir/command.txt"
  echo >>"$dir/command.txt"
  if ! nice -n "${NICE:-10}" "$@" >>"$dir/log.txt" 2>&1; then
    echo "quality.sh: failed, see $dir/log.txt:" >&2
    tail -5 "$dir/log.txt" >&2
    return 1
  fi
}

# train_base MODEL EPOCHS: the baseline checkpoint, trained with labels (resumable).
train_base() {
  local model=$1 epochs=$2 dir=$out/base/$1
  local name=base-$model
  wanted "$name" || return 0
  [[ -f $dir/summary.json ]] && return 0
  local resume=()
  [[ -f $dir/train_state.safetensors ]] && resume=(--resume)
  log "$name: training ($epochs epochs)"
  local limit=()
  [[ $profile == ci ]] && limit=(--limit 512 --test-limit 256)
  run_logged "$out/logs/$name" "$lfgcl" "${global[@]}" -q train --model "$model" --data "$data" "${limit[@]}" \
    --epochs "$epochs" --batch-size 128 --lr 0.1 --schedule cosine --weight-decay 5e-4 --seed 0 --out "$dir" "${resume[@]}"
}

# cell NAME MODEL FLOPS SEED METHOD [EXTRA...]: one pipeline run of one method.
cell() {
  local name=$1 model=$2 flops=$3 seed=$4 method=$5
  shift 5
  wanted "$name" || return 0
  local dir=$out/cells/$name
  [[ -f $dir/report.json ]] && return 0
  [[ -f $out/base/$model/summary.json ]] || { log "$name: skipped, no baseline $model yet"; return 0; }
  local resume=()
  [[ -d $dir/run ]] && resume=(--resume)
  log "$name"
  local t0=$SECONDS
  local report=(--report-accuracy 0)
  [[ " $* " == *" --report-accuracy "* ]] && report=()
  local ft=(--ft-epochs "$ft_epochs")
  [[ " $* " == *" --ft-epochs "* ]] && ft=()
  local budget=(--episodes "$episodes" --warmup "$warmup")
  [[ " $* " == *" --episodes "* ]] && budget=()
  run_logged "$dir" "$lfgcl" "${global[@]}" -q pipeline --ckpt "$out/base/$model/model.safetensors" --data "$data" \
    "${ft_limit[@]}" "${test_limit[@]}" --flops "$flops" --methods "$method" "${budget[@]}" \
    --candidates-per-step 8 --images "$images" "${ft[@]}" "${report[@]}" --no-deploy-bench \
    --seed "$seed" "$@" --out "$dir/run" "${resume[@]}"
  # The cell's JSON: the pipeline's report plus what the aggregator needs to group it.
  python3 - "$dir" "$name" "$model" "$flops" "$seed" "$method" "$*" "$((SECONDS - t0))" <<'EOF'
import json, os, sys
d, name, model, flops, seed, method, extra, secs = sys.argv[1:]
r = json.load(open(os.path.join(d, "run", "report.json")))
cell = {"cell": name, "model": model, "flops": float(flops), "seed": int(seed), "method_key": method,
        "extra": extra, "wall_seconds_this_run": int(secs), "command": open(os.path.join(d, "command.txt")).read().strip(),
        "report": r["report"]}
tmp = os.path.join(d, "report.json.tmp")
with open(tmp, "w") as f:
    json.dump(cell, f, indent=1)
os.replace(tmp, os.path.join(d, "report.json"))
EOF
}

# The methods of each table (aggregate.py's PLAN lists the same).
r20_methods=(uniform global uniform-fpgm lfgcl random lfgcl-streams)
# At 30% FLOPs --streams led after fine-tuning, so random search gets the same search space there:
# without it, the lead could be the agent's or the space's.
r20_f30_methods=("${r20_methods[@]}" random-streams)
# The same searches with 1 fine-tuning epoch instead of 5: does the agent's lead before
# fine-tuning (which 5 epochs erase) survive a short one?
r20_f30_ft1_methods=(uniform lfgcl-streams random-streams)
r56_methods=(uniform global lfgcl random)

run_method() { # run_method PREFIX MODEL FLOPS SEED M [EXTRA...]
  local prefix=$1 model=$2 flops=$3 seed=$4 m=$5
  shift 5
  case $m in
    # A search with the residual streams pruned too (lfgcl-streams, random-streams).
    *-streams) cell "$prefix-s$seed-$m" "$model" "$flops" "$seed" "${m%-streams}" --streams "$@" ;;
    lfgcl) if [[ $seed == 0 ]]; then
             # Seed 0's search also classifies its candidates on 500 test images (labels for the
             # report only), for the reward-vs-accuracy study.
             cell "$prefix-s$seed-$m" "$model" "$flops" "$seed" lfgcl --report-accuracy 500 "$@"
           else
             cell "$prefix-s$seed-$m" "$model" "$flops" "$seed" lfgcl "$@"
           fi ;;
    *) cell "$prefix-s$seed-$m" "$model" "$flops" "$seed" "$m" "$@" ;;
  esac
}

# ablation TABLE SEED VARIANT: one of item 4's changes at 50% FLOPs, TABLE r20-f50 or r56-f50 (the
# fine-tuning pairs exist for ResNet-20 only).
ablations=(stages long lfgcl-ft uniform-ft proxy proxy-random)
ablation() {
  local table=$1 seed=$2 v=$3 name=abl-$1-s$2-$3 model
  case $table in
    r20-f50) model=resnet20 ;;
    r56-f50) model=resnet56 ;;
  esac
  case $v in
    stages) cell "$name" "$model" 0.5 "$seed" lfgcl --taps penultimate,stages ;;
    proxy) proxy_cell "$name" "$table-s$seed-lfgcl" "$model" "$seed" lfgcl ;;
    proxy-random) proxy_cell "$name" "$table-s$seed-random" "$model" "$seed" random ;;
    long) cell "$name" "$model" 0.5 "$seed" lfgcl --episodes $((3 * episodes)) --warmup $((2 * warmup)) ;;
    lfgcl-ft) ft_pair "$name" "$seed" lfgcl ;;
    uniform-ft) ft_pair "$name" "$seed" uniform ;;
  esac
}

# pin_bin KIND: a later binary for the changes the table's pinned one predates, copied once to
# $OUT/bin/lfgcl-KIND (with its sha256 and commit) and used for every later run of those cells.
pin_bin() {
  local kind=$1
  [[ -x $out/bin/lfgcl-$kind ]] && return 0
  [[ -n $bin ]] || { (cd "$repo" && cargo build --release --quiet); bin=$repo/target/release/lfgcl; }
  cp "$bin" "$out/bin/lfgcl-$kind.tmp" && mv "$out/bin/lfgcl-$kind.tmp" "$out/bin/lfgcl-$kind"
  sha256sum "$out/bin/lfgcl-$kind" | cut -d' ' -f1 >"$out/bin/$kind-sha256"
  (git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown) >"$out/bin/$kind-commit"
}

# proxy_cell NAME SOURCE MODEL SEED METHOD [REPORT]: cell SOURCE's METHOD search (lfgcl or random)
# again with the fine-tuning proxy (--proxy-top 4 --proxy-steps 40 --proxy-spread 0.1; binary
# $OUT/bin/lfgcl-proxy) and KL-only fine-tuning like the table's. SOURCE's finished search is
# copied in first and resumed, so both pick from the same candidates (the search is
# deterministic; this saves rerunning it). REPORT: the accuracy report SOURCE's search ran with
# (a resumed search must see the same; the table's seed-0 lfgcl cells use 500 images).
proxy_cell() {
  local name=$1 source=$2 model=$3 seed=$4 method=$5 dir=$out/cells/$1
  wanted "$name" || return 0
  [[ -f $dir/report.json ]] && return 0
  # Where the pipeline keeps each search (`search/` for lfgcl).
  local at=search
  [[ $method == random ]] && at=random
  local src=$out/cells/$source/run/$at
  [[ -f $src/summary.json ]] || { log "$name: skipped, no finished $source $method search yet"; return 0; }
  pin_bin proxy
  if [[ ! -d $dir/run/$at ]]; then
    mkdir -p "$dir/run"
    rm -rf "$dir/run/$at.tmp"
    cp -a "$src" "$dir/run/$at.tmp" && mv "$dir/run/$at.tmp" "$dir/run/$at"
  fi
  local report=()
  if [[ -n ${6:-} ]]; then
    report=(--report-accuracy "$6")
  elif [[ $seed == 0 && $method == lfgcl ]]; then
    report=(--report-accuracy 500)
  fi
  lfgcl=$out/bin/lfgcl-proxy cell "$name" "$model" 0.5 "$seed" "$method" "${report[@]}" \
    --proxy-top 4 --proxy-steps "$proxy_steps" --proxy-spread 0.1 --ft-feature-weight 0
}

# ft_pair NAME SEED METHOD [CELL]: the seed's METHOD net at 50% FLOPs (lfgcl: the search's pick in
# CELL, r20-f50-sSEED-lfgcl by default) fine-tuned twice, KL only and KL + feature distillation, by
# one binary (feature distillation came after the table's binary).
ft_pair() {
  local name=$1 seed=$2 m=$3 src_cell=${4:-r20-f50-s$2-lfgcl} dir=$out/ablation/$1
  wanted "$name" || return 0
  local base=$out/base/resnet20/model.safetensors
  [[ -f $base ]] || return 0
  pin_bin ablation
  local abin=$out/bin/lfgcl-ablation
  mkdir -p "$dir"
  if [[ ! -f $dir/pruned.safetensors ]]; then
    case $m in
      lfgcl)
        local src=$out/cells/$src_cell/run/search/pruned.safetensors
        [[ -f $src ]] || { log "$name: skipped, no $src_cell cell yet"; return 0; }
        cp "$src" "$dir/pruned.safetensors.tmp" && mv "$dir/pruned.safetensors.tmp" "$dir/pruned.safetensors" ;;
      *)
        run_logged "$dir/apply" "$abin" "${global[@]}" -q prune-apply --uniform --flops 0.5 --ckpt "$base" \
          --out "$dir/pruned.safetensors" ;;
    esac
  fi
  for arm in kl features; do
    [[ -f $dir/$arm/result.json ]] && continue
    log "$name: $arm"
    local extra=(--ft-feature-weight 0) resume=()
    [[ $arm == features ]] && extra=(--ft-feature-weight 1)
    [[ -f $dir/$arm/train_state.safetensors ]] && resume=(--resume)
    run_logged "$dir/$arm-log" "$abin" "${global[@]}" -q finetune --ckpt "$dir/pruned.safetensors" --teacher "$base" \
      --data "$data" "${ft_limit[@]}" "${test_limit[@]}" --ft-epochs "$ft_epochs" --seed "$seed" "${extra[@]}" \
      --out "$dir/$arm" "${resume[@]}"
    python3 - "$dir/$arm" "$name" "$seed" "$m" "$arm" <<'EOF'
import json, os, sys
d, name, seed, method, arm = sys.argv[1:]
log = [json.loads(l) for l in open(os.path.join(d, "train_log.jsonl")) if l.strip()]
r = {"ablation": name, "seed": int(seed), "method": method, "arm": arm, "epochs": len(log),
     "top1_after_finetune": log[-1]["test_top1"], "finetune_seconds": sum(l["seconds"] for l in log)}
tmp = os.path.join(d, "result.json.tmp")
json.dump(r, open(tmp, "w"), indent=1)
os.replace(tmp, os.path.join(d, "result.json"))
EOF
  done
}

# study: candidates of one search, fine-tuned, for the rank correlation of reward and top-1 after.
# study PREFIX [METHOD [FT_EPOCHS]]: the seed-0 cell PREFIX-s0-METHOD (lfgcl by default) whose
# candidates are fine-tuned, FT_EPOCHS epochs each (the profile's by default: pass the table's).
study() {
  local prefix=$1 method=${2:-lfgcl} epochs=${3:-$ft_epochs}
  # LFGCL's search log is in run/search, random search's in run/random.
  local src=$out/cells/$prefix-s0-$method/run/search/candidates.jsonl
  [[ -f $src ]] || src=$out/cells/$prefix-s0-$method/run/random/candidates.jsonl
  [[ -f $src ]] || return 0
  # The plain LFGCL study keeps its first name (study/PREFIX-s0); others name their method.
  local sdir=$out/study/$prefix-s0 streams=()
  [[ $method == lfgcl ]] || sdir=$sdir-$method
  [[ $method == *-streams ]] && streams=(--streams)
  mkdir -p "$sdir"
  local k=${STUDY_CANDIDATES:-6}
  [[ $profile == ci ]] && k=2
  python3 - "$src" "$sdir" "$k" <<'EOF'
import json, sys, os
src, sdir, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
recs = [json.loads(l) for l in open(src) if l.strip()]
seen, uniq = set(), []
for r in recs:
    key = tuple(r["kept"])
    if key in seen or r.get("cached"):
        continue
    seen.add(key)
    uniq.append(r)
uniq.sort(key=lambda r: r["reward"])
# k candidates at evenly spaced reward ranks, the best included.
pick = sorted({round(i * (len(uniq) - 1) / max(k - 1, 1)) for i in range(k)})
for i, j in enumerate(pick):
    r = uniq[j]
    d = os.path.join(sdir, f"c{i}")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "candidate.json")
    if not os.path.exists(p):
        json.dump({"ratios": r["ratios"], "kept": r["kept"], "reward": r["reward"], "top1_before_500": r.get("top1"),
                   "episode": r["episode"], "index": r["index"], "flops_fraction": r["flops_fraction"]}, open(p, "w"))
EOF
  for c in "$sdir"/c*; do
    local name=study-${sdir##*/study/}-$(basename "$c")
    wanted "$name" || continue
    [[ -f $c/result.json ]] && continue
    log "$name"
    [[ -f $c/pruned.safetensors ]] || run_logged "$c/apply" "$lfgcl" "${global[@]}" -q prune-apply \
      --ckpt "$out/base/resnet20/model.safetensors" --ratios "$c/candidate.json" "${streams[@]}" --out "$c/pruned.safetensors"
    local resume=()
    [[ -f $c/ft/train_state.safetensors ]] && resume=(--resume)
    run_logged "$c/tune" "$lfgcl" "${global[@]}" -q finetune --ckpt "$c/pruned.safetensors" \
      --teacher "$out/base/resnet20/model.safetensors" --data "$data" "${ft_limit[@]}" "${test_limit[@]}" \
      --ft-epochs "$epochs" --seed 0 --out "$c/ft" "${resume[@]}"
    python3 - "$c" <<'EOF'
import json, os, sys
c = sys.argv[1]
cand = json.load(open(os.path.join(c, "candidate.json")))
log = [json.loads(l) for l in open(os.path.join(c, "ft", "train_log.jsonl")) if l.strip()]
cand["top1_after_finetune"] = log[-1]["test_top1"]
cand["ft_epochs"] = log[-1]["epoch"]
tmp = os.path.join(c, "result.json.tmp")
json.dump(cand, open(tmp, "w"), indent=1)
os.replace(tmp, os.path.join(c, "result.json"))
EOF
  done
}

aggregate() {
  python3 "$here/aggregate.py" --out "$out" --docs "$docs" "${keep[@]}"
}

if [[ $aggregate_only == 1 ]]; then
  aggregate
  exit 0
fi

if [[ $profile == ci ]]; then
  train_base resnet20 "$base_epochs20"
  # Every method in one pipeline run (the table runs one per cell), then the streams.
  cell ci-r20-f50-s0-lfgcl resnet20 0.5 0 lfgcl,random,uniform,uniform-fpgm,global --report-accuracy 64
  cell ci-streams-coupled resnet20 0.5 0 uniform --streams --ft-epochs 0
  study ci-r20-f50
  ft_pair ci-abl-lfgcl-ft 0 lfgcl ci-r20-f50-s0-lfgcl
  proxy_cell ci-abl-proxy ci-r20-f50-s0-lfgcl resnet20 0 lfgcl 64
  proxy_cell ci-abl-proxy-random ci-r20-f50-s0-lfgcl resnet20 0 random 64
  aggregate
  echo "quality.sh --ci: ok ($out)"
  exit 0
fi

train_base resnet20 "$base_epochs20"
# Item 1 of the issue: uniform 50% with the streams, before fine-tuning, coupled and not.
cell streams-r20-f50-coupled resnet20 0.5 0 uniform,global --streams --ft-epochs 0
cell streams-r20-f50-independent resnet20 0.5 0 uniform,global --streams --independent-streams --ft-epochs 0
for seed in $seeds; do
  for m in "${r20_methods[@]}"; do run_method r20-f50 resnet20 0.5 "$seed" "$m"; aggregate >/dev/null; done
done
study r20-f50
aggregate >/dev/null
for seed in $seeds; do
  for m in "${r20_f30_methods[@]}"; do run_method r20-f30 resnet20 0.3 "$seed" "$m"; aggregate >/dev/null; done
done
for seed in $seeds; do
  for m in "${r20_f30_ft1_methods[@]}"; do
    run_method r20-f30-ft1 resnet20 0.3 "$seed" "$m" --ft-epochs 1
    aggregate >/dev/null
  done
done
# Reward vs top-1 after fine-tuning where the search space pays (30%, --streams): the same seed-0
# search's candidates (both tables ran it, bit for bit), fine-tuned 1 and 5 epochs.
study r20-f30-ft1 lfgcl-streams 1
study r20-f30 lfgcl-streams
# The same for random search's candidates in the same space: does the reward order them too?
study r20-f30-ft1 random-streams 1
study r20-f30 random-streams
aggregate >/dev/null
train_base resnet56 "$base_epochs56"
for seed in $seeds; do
  for m in "${r56_methods[@]}"; do run_method r56-f50 resnet56 0.5 "$seed" "$m"; aggregate >/dev/null; done
done
# Item 4: what the measurements point to, each a change to the lfgcl cell of the same seed.
for seed in $seeds; do
  for v in "${ablations[@]}"; do ablation r20-f50 "$seed" "$v"; aggregate >/dev/null; done
done
# The reward taps at ResNet-56, where the plain search's pick fell behind uniform L1 (results.md).
for seed in $seeds; do
  for v in stages proxy proxy-random; do ablation r56-f50 "$seed" "$v"; aggregate >/dev/null; done
done
aggregate
log "all cells done ($out)"
exit
}
