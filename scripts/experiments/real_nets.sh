#!/usr/bin/env bash
# Issue 20, item 7: torchvision ResNet-18 and MobileNetV2 (width 1.0) trained on Fashion-MNIST at
# 64x64 (upscaled by the loader: --image-size 64), then `lfgcl pipeline` at 50% FLOPs without
# labels: LFGCL, random search and uniform L1, fine-tuned by distillation, and the deployment
# table of the pruned nets in lfgcl and onnxruntime. Writes docs/real-nets.{md,json}.
#
#   bash scripts/experiments/real_nets.sh [--out DIR] [--threads N] [--models "resnet18 mobilenet_v2"]
#
# Resumable: a finished step (model.safetensors + summary.json, report.json) is skipped, an
# interrupted one continues with --resume. The budget fits a shared 2-core machine (about an hour
# a model on one core); FULL=1 uses the whole training split and 5 fine-tuning epochs. Kept counts
# are rounded as the CLI does by default for these families (multiples of 8, what onnxruntime's
# blocked kernels need); ROUND=N overrides it (ROUND=1: any count, as the first table was made).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$repo/runs/real-nets threads=1 models="resnet18 mobilenet_v2" docs=$repo/docs
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --docs) docs=$2; shift 2 ;;
    *) echo "real_nets.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
data=fashion-mnist:${FMNIST:-/usr/share/datasets/fashion-mnist}
if [[ ${FULL:-0} == 1 ]]; then
  limit=() test_limit=() base_epochs=10 episodes=60 warmup=20 images=256 ft_epochs=5
else
  limit=(--limit 6000) test_limit=(--test-limit 2000) base_epochs=2 episodes=24 warmup=8 images=128 ft_epochs=1
fi
mkdir -p "$out/bin"
if [[ ! -x $out/bin/lfgcl ]]; then
  (cd "$repo" && cargo build --release --quiet)
  cp "$repo/target/release/lfgcl" "$out/bin/lfgcl.tmp" && mv "$out/bin/lfgcl.tmp" "$out/bin/lfgcl"
  (git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown) >"$out/bin/commit"
fi
lfgcl=("$out/bin/lfgcl" --device cpu --threads "$threads" -q)
# The deployment table times onnxruntime through Python (LFGCL_PYTHON, LFGCL_PYTHONPATH): say now,
# not hours later in a table without its column, when it cannot be imported.
if ! PYTHONPATH=${LFGCL_PYTHONPATH:+$LFGCL_PYTHONPATH:}${PYTHONPATH:-} "${LFGCL_PYTHON:-python3}" -c "import onnxruntime, numpy" 2>/dev/null; then
  echo "real_nets.sh: warning: onnxruntime and numpy do not import in ${LFGCL_PYTHON:-python3} (set LFGCL_PYTHON or LFGCL_PYTHONPATH): the deployment table will have lfgcl's speed-ups only" >&2
fi
round=()
[[ -n ${ROUND:-} ]] && round=(--round "$ROUND")
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

for m in $models; do
  base=$out/base/$m
  if [[ ! -f $base/summary.json ]]; then
    resume=()
    [[ -f $base/train_state.safetensors ]] && resume=(--resume)
    log "$m: training at 64x64 ($base_epochs epochs)"
    "${lfgcl[@]}" train --model "$m" --data "$data" --image-size 64 "${limit[@]}" "${test_limit[@]}" \
      --epochs "$base_epochs" --batch-size 64 --lr 0.05 --schedule cosine --weight-decay 5e-4 --seed 0 \
      --out "$base" "${resume[@]}" >"$out/train-$m.log" 2>&1
  fi
  run=$out/pipeline/$m
  if [[ ! -f $run/report.json || ! -f $run/deploy.json ]]; then
    resume=()
    [[ -d $run ]] && resume=(--resume)
    log "$m: pipeline at 50% FLOPs"
    "${lfgcl[@]}" pipeline --ckpt "$base/model.safetensors" --data "$data" "${limit[@]}" "${test_limit[@]}" \
      --flops 0.5 "${round[@]}" --methods lfgcl,random,uniform --episodes "$episodes" --warmup "$warmup" \
      --candidates-per-step 8 --images "$images" --ft-epochs "$ft_epochs" --report-accuracy 0 --seed 0 \
      --out "$run" "${resume[@]}" >"$out/pipeline-$m.log" 2>&1
  fi
done

python3 - "$out" "$docs" "$threads" "$models" "${FULL:-0}" "$here" <<'PY'
import json, os, sys, subprocess
out, docs, threads, models, full = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5] == "1"
sys.path.insert(0, sys.argv[6])
from aggregate import svg_bars  # the results tables' bar chart
# The rounding the searches ran with (their summaries record it), not the CLI default restated here.
rounds = {json.load(open(p))["config"]["constraints"]["round"]
          for p in (os.path.join(out, "pipeline", m, "search", "summary.json") for m in models) if os.path.exists(p)}
if len(rounds) > 1:
    raise SystemExit(f"real_nets.sh: the runs in {out} kept counts rounded differently: {sorted(rounds)}")
round_to = rounds.pop() if rounds else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = open("/proc/cpuinfo").read()
isa = "AVX-512F" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
names = {"lfgcl": "LFGCL", "random": "random search", "uniform": "uniform L1"}
result = {"machine": f"{cpu}, {os.cpu_count()} cores, {isa}", "threads": int(threads), "profile": "full" if full else "cpu",
          "round": round_to,
          "commit": open(os.path.join(out, "bin", "commit")).read().strip(), "models": {}}
lines, charts = [], {}
for m in models:
    rp = os.path.join(out, "pipeline", m, "report.json")
    if not os.path.exists(rp):
        continue
    r = json.load(open(rp))["report"]
    dp = os.path.join(out, "pipeline", m, "deploy.json")
    deploy = json.load(open(dp)) if os.path.exists(dp) else []
    rows = []
    for p in r["pruned"]:
        d = next((x["deploy"] for x in deploy if x["method"] == p["method"]), None)
        speed = {}
        if d:
            for row in d.get("rows", []):
                if row.get("speedup") is not None:
                    speed[f'{row["runtime"]} b{row["batch"]}'] = row["speedup"]
        rows.append({"method": p["method"], "top1_before": p["top1_before_finetune"], "top1_after": p["top1_after_finetune"],
                     "flops_fraction": p["flops_fraction"], "params_fraction": p["params_fraction"],
                     "search_seconds": p.get("search_seconds"), "finetune_seconds": p.get("finetune_seconds"), "speedup": speed})
    # The threads this net's deployment table was timed with (deploy.json records them): a run
    # resumed with another --threads finishes with that count.
    run_threads = next((x["deploy"].get("threads") for x in deploy if x.get("deploy")), None) or int(threads)
    result["models"][m] = {"threads": run_threads, "baseline_top1": r["baseline_top1"], "baseline_macs": r["baseline_macs"],
                           "baseline_params": r["baseline_params"],
                           # The stages' own times (a resumed run's report keeps them; its "seconds" is that run's).
                           "search_and_finetune_seconds": sum((x["search_seconds"] or 0) + (x["finetune_seconds"] or 0) for x in rows),
                           "pruned": rows}
    # "lfgcl cpu", "onnxruntime cpu": each with its batch-1 and batch-64 speed-ups in one cell.
    runtimes = sorted({k.rsplit(" b", 1)[0] for row in rows for k in row["speedup"]})
    chart = svg_bars(f"{m} at 64x64, 50% FLOPs: top-1 (%) before and after label-free fine-tuning",
                     [(names.get(row["method"], row["method"]), [("before", 100 * row["top1_before"], None),
                                                                   ("after", 100 * row["top1_after"], None)]) for row in rows],
                     ref=("baseline", 100 * r["baseline_top1"]))
    charts[f"real-nets-{m}.svg"] = chart
    lines += [f"## {m}", "", f"![top-1 before and after fine-tuning](real-nets-{m}.svg)", "",
              f"Baseline top-1 {100*r['baseline_top1']:.2f}%, {r['baseline_macs']/1e6:.1f} M MACs, {r['baseline_params']/1e6:.2f} M params at 1x64x64.", "",
              "| method | top-1 before FT | top-1 after FT | after − baseline | FLOPs | params | search s | fine-tune s | "
              + " | ".join(f"speed-up {e} b1 / b64" for e in runtimes) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(runtimes)]
    for row in rows:
        speeds = [" / ".join(f"{row['speedup'][k]:.2f}x" if k in row["speedup"] else "-" for k in (f"{e} b1", f"{e} b64"))
                  for e in runtimes]
        lines.append(f"| {names.get(row['method'], row['method'])} | {100*row['top1_before']:.2f} | {100*row['top1_after']:.2f} | "
                     f"{100*(row['top1_after'] - r['baseline_top1']):+.2f} | "
                     f"{100*row['flops_fraction']:.1f}% | {100*row['params_fraction']:.1f}% | "
                     f"{row['search_seconds'] or 0:.0f} | {row['finetune_seconds'] or 0:.0f} | " + " | ".join(speeds) + " |")
    lines.append("")
# One count for the whole table, or null where the nets' differ (each net's is under "models").
counts = {m: v["threads"] for m, v in result["models"].items()}
distinct = set(counts.values()) or {int(threads)}
result["threads"] = distinct.pop() if len(distinct) == 1 else None
thread_note = result["threads"] if result["threads"] is not None else ", ".join(f"{m} {t}" for m, t in counts.items())
prof = ("whole training split, baselines 10 epochs, 60 search episodes on 256 images, 5 fine-tuning epochs" if full else
        "first 6,000 training images, 2,000 test images; baselines 2 epochs; 24 search episodes x 8 candidates (8 of warm-up) "
        "on 128 unlabeled images, random search the same number; 1 fine-tuning epoch (distillation from the baseline, no labels: "
        "KL on the logits, plus the penultimate features' mean squared difference where the pruned net keeps their width, "
        "the CLI's default)")
head = ["# Real networks on Fashion-MNIST at 64x64 (issue 20, item 7)", "",
        "torchvision's ResNet-18 and MobileNetV2 (width 1.0, one input channel), trained with labels on Fashion-MNIST "
        "upscaled to 64x64 by the loader (`--image-size 64`, Pillow bilinear), then pruned to 50% FLOPs by `lfgcl pipeline` "
        "without labels. *Before* is the pruned net with BN statistics re-estimated on the search's unlabeled images; "
        "*after* is after label-free fine-tuning. Speed-up: pruned over baseline images/s at batch 1 and 64, in lfgcl "
        "and in onnxruntime on the ONNX export, same threads."
        + (f" Kept channel counts are rounded up to multiples of {round_to}." if round_to else ""), "",
        f"Budget: {prof}. Machine: {result['machine']}, {thread_note} thread(s), shared with other jobs. Commit `{result['commit'][:12]}`.", "",
        "Reproduce: `bash scripts/experiments/real_nets.sh --out RUNS` (`FULL=1` for the full budget).", ""]
os.makedirs(docs, exist_ok=True)
for name, chart in charts.items():
    with open(os.path.join(docs, name + ".tmp"), "w") as f:
        f.write(chart)
    os.replace(os.path.join(docs, name + ".tmp"), os.path.join(docs, name))
with open(os.path.join(docs, "real-nets.md.tmp"), "w") as f:
    f.write("\n".join(head + lines) + "\n")
os.replace(os.path.join(docs, "real-nets.md.tmp"), os.path.join(docs, "real-nets.md"))
with open(os.path.join(docs, "real-nets.json.tmp"), "w") as f:
    json.dump(result, f, indent=1)
os.replace(os.path.join(docs, "real-nets.json.tmp"), os.path.join(docs, "real-nets.json"))
print("\n".join(lines))
PY
