#!/usr/bin/env python3
"""Aggregates the cells of scripts/experiments/quality.sh into results.md and results.json.

    python3 scripts/experiments/aggregate.py --out RUNS --docs docs

Reads RUNS/cells/*/report.json (one pipeline run of one method each), RUNS/study/*/c*/result.json
and RUNS/profile.json (and DOCS/results-notes.md, a hand-written reading placed under the status);
with --keep EARLIER.json (a results.json this script wrote), also every record of that file that RUNS
does not hold again, so a table outlives the run folder it came from (RUNS wins where both have a cell);
writes DOCS/results.json (every cell's numbers, flattened) and
DOCS/results.md (mean and sample std over seeds before and after fine-tuning, the paired
difference lfgcl - baseline over seeds with its 95% t-interval, wall times, the commands).
Standard library only.
"""
import argparse
import glob
import json
import math
import os
import re
import statistics
import sys

# Two-sided 95% Student t quantiles by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}

# The plan of quality.sh: (table, model, flops, methods); 3 seeds each (seeds 0-2: a table may
# hold more, run with --seeds, which the status does not count).
PLAN = [
    ("r20-f50", "resnet20", 0.5, ["uniform", "global", "uniform-fpgm", "lfgcl", "random", "lfgcl-streams"]),
    ("r20-f30", "resnet20", 0.3, ["uniform", "global", "uniform-fpgm", "lfgcl", "random", "lfgcl-streams", "random-streams"]),
    ("r56-f50", "resnet56", 0.5, ["uniform", "global", "lfgcl", "random"]),
    ("r20-f30-ft1", "resnet20", 0.3, ["uniform", "lfgcl-streams", "random-streams"]),
]
# What a table changes from the profile, in its heading.
TABLE_SETTINGS = {"r20-f30-ft1": "1 fine-tuning epoch"}
# Item 4's changes (quality.sh's abl-TABLE-sSEED-VARIANT cells): the table they ran at, what each
# is compared with (the plain cell of the same seed) and what it changed.
ABLATIONS = [
    ("r20-f50", "stages", "lfgcl", "reward taps: every stage's output as well as the penultimate features (`--taps penultimate,stages`)"),
    ("r20-f50", "long", "lfgcl", "3x the search: 180 episodes with 40 of warm-up"),
    ("r56-f50", "stages", "lfgcl", "reward taps: every stage's output as well as the penultimate features (`--taps penultimate,stages`)"),
    ("r20-f50", "proxy", "lfgcl", "fine-tuning proxy: the search's 4 best candidates at least 0.1 apart, 40 steps of distillation each, lowest KL kept (`--proxy-top 4`)"),
    ("r56-f50", "proxy", "lfgcl", "fine-tuning proxy: the search's 4 best candidates at least 0.1 apart, 40 steps of distillation each, lowest KL kept (`--proxy-top 4`)"),
    ("r20-f50", "proxy-random", "random", "the same fine-tuning proxy on random search's candidates (against plain random search)"),
    ("r56-f50", "proxy-random", "random", "the same fine-tuning proxy on random search's candidates (against plain random search)"),
]
NET_NAMES = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}

LABELS = {
    "uniform": "uniform L1",
    "global": "global magnitude",
    "uniform-fpgm": "uniform FPGM",
    "lfgcl": "lfgcl",
    "random": "random search",
    "lfgcl-streams": "lfgcl --streams",
    "random-streams": "random search --streams",
}


def t975(df):
    if df in T975:
        return T975[df]
    keys = sorted(k for k in T975 if k <= df)
    return T975[keys[-1]] if keys else float("nan")


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return r


def spearman(a, b):
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den > 0 else None


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt_ms(xs, scale=100.0, digits=2):
    m, s = mean_std(xs)
    if m is None:
        return "-"
    if s is None:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def paired(a_by_seed, b_by_seed):
    """Mean difference a - b over the seeds both have, with its 95% t-interval (points)."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    d = [100.0 * (a_by_seed[s] - b_by_seed[s]) for s in seeds if a_by_seed[s] is not None and b_by_seed[s] is not None]
    if not d:
        return None
    m = statistics.fmean(d)
    if len(d) < 2:
        return {"n": len(d), "mean": m, "lo": None, "hi": None, "diffs": d}
    h = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"n": len(d), "mean": m, "lo": m - h, "hi": m + h, "diffs": d}


def fmt_paired(p, who="lfgcl"):
    if p is None:
        return "-"
    if p["lo"] is None:
        return f"{p['mean']:+.2f} (n=1)"
    verdict = f"{who} ahead" if p["lo"] > 0 else (f"{who} behind" if p["hi"] < 0 else "not resolved")
    return f"{p['mean']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}] (n={p['n']}, {verdict})"


def svg_bars(title, groups, ref=None):
    """A small SVG bar chart: groups = [(label, [(series, mean, std or None)])], values in %;
    ref = (label, value): a dashed line across the chart (a baseline)."""
    vals = [m for _, ss in groups for _, m, _ in ss if m is not None] + ([ref[1]] if ref else [])
    if not vals:
        return None
    lo = math.floor(min(vals) - 2)
    hi = math.ceil(max(vals) + 1)
    # Gridlines 1, 2, 5 or 10 points apart: at most about a dozen, so their labels stay apart.
    step = next(s for s in (1, 2, 5, 10, 20) if (hi - lo) / s <= 12)
    lo = step * math.floor(lo / step)
    # Wide enough for the title (about 7 px a character at 13 px).
    w, h, left, bottom, top = max(120 * len(groups) + 80, 520, 7 * len(title) + 20), 320, 60, 60, 30
    y = lambda v: top + (h - top - bottom) * (1 - (v - lo) / max(hi - lo, 1e-9))
    colors = ["#4c78a8", "#f58518"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>']
    for t in range(int(lo), int(hi) + 1, step):
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{t}</text>')
    for i, (label, ss) in enumerate(groups):
        x0 = left + 10 + 120 * i
        for j, (series, m, sd) in enumerate(ss):
            if m is None:
                continue
            x = x0 + 45 * j
            out.append(f'<rect x="{x}" y="{y(m):.1f}" width="40" height="{y(lo) - y(m):.1f}" fill="{colors[j % 2]}"/>')
            if sd:
                out.append(f'<line x1="{x + 20}" x2="{x + 20}" y1="{y(m - sd):.1f}" y2="{y(m + sd):.1f}" stroke="black"/>')
        out.append(f'<text x="{x0 + 42}" y="{h - bottom + 16}" text-anchor="middle">{label}</text>')
    if ref:
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{y(ref[1]):.1f}" y2="{y(ref[1]):.1f}" stroke="black" '
                   f'stroke-dasharray="4 3"/><text x="{w - 12}" y="{y(ref[1]) - 4:.1f}" text-anchor="end">{ref[0]}</text>')
    for j, series in enumerate(["before fine-tuning", "after fine-tuning"]):
        out.append(f'<rect x="{left + 160 * j}" y="{h - 22}" width="10" height="10" fill="{colors[j]}"/>'
                   f'<text x="{left + 14 + 160 * j}" y="{h - 13}">{series}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def load_cells(out):
    cells = []
    for path in sorted(glob.glob(os.path.join(out, "cells", "*", "report.json"))):
        with open(path) as f:
            c = json.load(f)
        rep = c["report"]
        for p in rep["pruned"]:
            key = p["key"] + ("-streams" if p.get("streams") else "")
            cells.append({
                "cell": c["cell"],
                "model": c["model"],
                "flops_budget": c["flops"],
                "seed": c["seed"],
                "method": key,
                "label": p["method"],
                "extra": c.get("extra", ""),
                "baseline_top1": rep["baseline_top1"],
                "top1_before_finetune": p["top1_before_finetune"],
                "top1_after_finetune": p["top1_after_finetune"],
                "reward": p["reward"],
                "flops_fraction": p["flops_fraction"],
                "params_fraction": p["params_fraction"],
                "kept": p["kept"],
                "evaluations": p["evaluations"],
                "search_seconds": p["search_seconds"],
                "finetune_seconds": p["finetune_seconds"],
                "reward_accuracy_spearman": rep.get("reward_accuracy_spearman"),
                "command": c["command"],
            })
            if p.get("proxy"):
                # The fine-tuning proxy's comparison (quality.sh's proxy cells).
                cells[-1]["proxy"] = p["proxy"]
    return cells


# What each cell records of the run that made it: (its key, the profile.json field).
RUN_FIELDS = [("lfgcl_sha256", "lfgcl_sha256"), ("lfgcl_commit", "lfgcl_commit"), ("machine", "machine"),
              ("profile", "profile")]


def machines_of(rows, table_cells):
    """Where a table's cells ran, when the tables of one net did not all run on one machine (a
    baseline retrained on another CPU differs in its last bits, so its tables stand apart)."""
    model = rows[0]["model"]
    everywhere = {c.get("machine") for c in table_cells if c["model"] == model}
    if len(everywhere) <= 1:
        return ""
    here = sorted({str(c.get("machine")) for c in rows})
    return (f", trained and pruned on {', '.join(here)} (the {model} baseline of the other tables is the same "
            f"command's run on {', '.join(sorted(str(m) for m in everywhere - set(here)))}: the last bits of a CPU run "
            f"differ between machines, see docs/guarantees.md)")


def load_base_commands(out):
    """The baselines' and the study's commands, as run (without --resume)."""
    cmds = []
    for path in sorted(glob.glob(os.path.join(out, "logs", "base-*", "command.txt"))) + sorted(
            glob.glob(os.path.join(out, "study", "*", "c0", "command.txt"))) + sorted(
            glob.glob(os.path.join(out, "study", "*", "c0", "*", "command.txt"))):
        with open(path) as f:
            cmds += [l.strip().replace(" --resume", "") for l in f if l.strip()]
    return cmds


def load_baselines(out):
    """Each trained baseline's epochs and final test top-1."""
    baselines = {}
    for path in sorted(glob.glob(os.path.join(out, "base", "*", "summary.json"))):
        model = os.path.basename(os.path.dirname(path))
        log = os.path.join(out, "base", model, "train_log.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                last = [json.loads(l) for l in f if l.strip()][-1]
            baselines[model] = {"epochs": last["epoch"], "test_top1": last["test_top1"]}
    return baselines


def load_study(out):
    studies = {}
    for path in sorted(glob.glob(os.path.join(out, "study", "*", "c*", "result.json"))):
        name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        with open(path) as f:
            r = json.load(f)
        r["candidate"] = os.path.basename(os.path.dirname(path))
        studies.setdefault(name, []).append(r)
    return studies


def ablation_section(ablation_cells, table_cells, summary):
    """Item 4: each change against the plain cell of the same seed, paired over seeds."""
    if not ablation_cells:
        return []
    md = ["## What each change did (item 4)", "",
          "At 50% FLOPs. Each change is run on the seeds shown and compared with the plain cell of the same "
          "seed and net above (change minus plain, points, 95% t-interval over seeds; n=1 has no interval).", "",
          "| net | change | seeds | top-1 before | top-1 after | vs plain, before | vs plain, after | search s | fine-tune s |",
          "|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for table, variant, plain, what in ABLATIONS:
        rs = sorted((c for c in ablation_cells
                     if re.fullmatch(r"abl-" + re.escape(table) + r"-s\d+-" + re.escape(variant), c["cell"])),
                    key=lambda c: c["seed"])
        if not rs:
            continue
        model, flops = next((m, f) for t, m, f, _ in PLAN if t == table)
        net = NET_NAMES[model]
        ref = {c["seed"]: c for c in table_cells
               if c["model"] == model and c["flops_budget"] == flops and c["method"] == plain}
        pb = paired({c["seed"]: c["top1_before_finetune"] for c in rs},
                    {s: c["top1_before_finetune"] for s, c in ref.items()})
        pa = paired({c["seed"]: c["top1_after_finetune"] for c in rs},
                    {s: c["top1_after_finetune"] for s, c in ref.items()})
        key = variant if table == "r20-f50" else f"{table}-{variant}"
        out[key] = {"compared_with": plain, "before": pb, "after": pa, "seeds": [c["seed"] for c in rs]}
        md.append(f"| {net} | {what} | {','.join(str(c['seed']) for c in rs)} | {fmt_ms([c['top1_before_finetune'] for c in rs])} | "
                  f"{fmt_ms([c['top1_after_finetune'] for c in rs])} | {fmt_paired(pb, 'change')} | {fmt_paired(pa, 'change')} | "
                  f"{statistics.fmean(c['search_seconds'] for c in rs):.0f} | {statistics.fmean(c['finetune_seconds'] for c in rs):.0f} |")
    summary["ablations"] = out
    return md + [""]


def ablation_binary(out_dir):
    """Which binary ran the pairs (feature distillation came after the table's binary)."""
    def read(name):
        path = os.path.join(out_dir, "bin", name)
        return open(path).read().strip() if os.path.exists(path) else None
    sha, commit = read("ablation-sha256"), read("ablation-commit")
    return {"sha256": sha, "commit": commit} if sha or commit else {}


def binary_line(binary):
    return f" Binary sha256 `{(binary.get('sha256') or '?')[:16]}...`, commit `{(binary.get('commit') or '?')[:12]}`."


def load_ft_pairs(out_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "ablation", "*", "*", "result.json"))):
        with open(path) as f:
            rows.append(json.load(f))
    return rows


def ft_pair_section(rows, binary, summary):
    """Item 4's fine-tuning change: one net fine-tuned with KL only and with KL + features."""
    if not rows:
        return []
    md = ["### Feature distillation in the fine-tuning", "",
          "The seed's net at 50% FLOPs (LFGCL's pick, or uniform L1) fine-tuned twice by one binary with the table's "
          "recipe: KL only, and KL plus the penultimate features' mean squared difference over their variance "
          "(`--ft-feature-weight 1`). Top-1 after fine-tuning; difference features minus KL, points, paired over seeds." +
          binary_line(binary), "",
          "| net | seeds | KL only | KL + features | features − KL | fine-tune s (KL / +features) |", "|---|---|---|---|---|---|"]
    out = {}
    for method in sorted({r["method"] for r in rows}):
        arms = {arm: {r["seed"]: r for r in rows if r["method"] == method and r["arm"] == arm} for arm in ("kl", "features")}
        seeds = sorted(set(arms["kl"]) & set(arms["features"]))
        if not seeds:
            continue
        kl = [arms["kl"][s]["top1_after_finetune"] for s in seeds]
        fe = [arms["features"][s]["top1_after_finetune"] for s in seeds]
        p = paired({s: arms["features"][s]["top1_after_finetune"] for s in seeds},
                   {s: arms["kl"][s]["top1_after_finetune"] for s in seeds})
        out[method] = {"seeds": seeds, "kl": kl, "features": fe, "features_minus_kl": p}
        secs = lambda arm: statistics.fmean(arms[arm][s]["finetune_seconds"] for s in seeds)
        md.append(f"| {LABELS.get(method, method)} | {','.join(map(str, seeds))} | {fmt_ms(kl)} | {fmt_ms(fe)} | "
                  f"{fmt_paired(p, 'features')} | {secs('kl'):.0f} / {secs('features'):.0f} |")
    summary["feature_distillation"] = out
    return md + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the output folder of quality.sh")
    ap.add_argument("--docs", required=True, help="where results.md and results.json go")
    ap.add_argument("--keep", help="an earlier results.json: its records that RUNS does not hold are kept")
    args = ap.parse_args()
    profile = {}
    pp = os.path.join(args.out, "profile.json")
    if os.path.exists(pp):
        with open(pp) as f:
            profile = json.load(f)
    cells = load_cells(args.out)
    for c in cells:
        for key, field in RUN_FIELDS:
            c[key] = profile.get(field)
    studies = load_study(args.out)
    ft_rows = load_ft_pairs(args.out)
    ft_binary = ablation_binary(args.out)
    base_cmds = load_base_commands(args.out)
    baselines = load_baselines(args.out)
    kept_profile = {}
    if args.keep:
        try:
            with open(args.keep) as f:
                kept = json.load(f)
            if not isinstance(kept, dict) or not isinstance(kept.get("cells"), list):
                raise ValueError("it has no list of cells")
        except (OSError, ValueError) as e:
            sys.exit(f"aggregate.py: --keep {args.keep} is not a results.json this script wrote: {e}")
        kept_profile = kept.get("profile") or {}
        if not profile:
            profile = kept_profile
        fresh = {c["cell"] for c in cells}
        kept_cells = [c for c in kept.get("cells", []) if c["cell"] not in fresh]
        # Which binary ran a kept cell (records written before this field name their file's profile).
        for c in kept_cells:
            for key, field in RUN_FIELDS:
                c.setdefault(key, kept_profile.get(field))
        cells = sorted(kept_cells + cells, key=lambda c: c["cell"])
        for name, rs in (kept.get("study") or {}).items():
            studies.setdefault(name, rs)
        have = {(r["method"], r["arm"], r["seed"]) for r in ft_rows}
        ft_rows += [r for r in kept.get("ft_pairs", []) if (r["method"], r["arm"], r["seed"]) not in have]
        ft_binary = ft_binary or kept.get("ft_pairs_binary") or {}
        base_cmds = kept.get("base_commands", []) + base_cmds
        baselines = {**(kept.get("summary", {}).get("baselines") or {}), **baselines}
    base_cmds = list(dict.fromkeys(base_cmds))
    table_cells = [c for c in cells if not c["cell"].startswith(("streams-", "ci-streams", "abl-", "ci-abl-"))]
    ablation_cells = [c for c in cells if c["cell"].startswith(("abl-", "ci-abl-"))]
    stream_cells = [c for c in cells if c["cell"].startswith(("streams-", "ci-streams"))]

    md = ["# lfgcl results: does the search pay? (issue 21)", ""]
    planned = {f"{t}-s{seed}-{m}" for t, _, _, ms in PLAN for m in ms for seed in range(3)}
    expected = len(planned)
    done = len(planned & {c["cell"] for c in table_cells})
    is_ci = profile.get("profile") == "ci"
    status = "CI smoke run (tiny budget, numbers meaningless)" if is_ci else (
        "complete" if done >= expected else f"PARTIAL: {done} of {expected} table cells done; the rest is still running or not started")
    md += [f"**Status: {status}.**", ""]
    # A hand-written reading of the numbers (DOCS/results-notes.md), kept across re-aggregations.
    notes = os.path.join(args.docs, "results-notes.md")
    if os.path.exists(notes) and not is_ci:
        md += [open(notes).read().strip(), ""]
    md += [
        "Every method prunes the same baseline to the same exact FLOPs budget (kept counts raised one channel at a time "
        "while the budget holds, so no method leaves more than one channel's cost unspent) and is fine-tuned with the "
        "same label-free recipe (KL distillation from the baseline at T=4, no label read); top-1 is on the 10,000 "
        "Fashion-MNIST test images. *Before* is the pruned net with its BN statistics re-estimated on the search's "
        "256 unlabeled images (as the search scores it); *after* is after fine-tuning. Seeds change the search, its "
        "unlabeled batch and the fine-tuning's shuffling; the baseline is the same for every cell of a table. Std is the sample std over "
        "seeds. Paired difference: lfgcl minus the method, seed by seed, in points, with the 95% Student-t interval "
        "over seeds (with 3 seeds the interval is wide: t = 4.30).",
        "",
    ]
    if profile:
        md += [
            f"Profile `{profile.get('profile')}` on `{profile.get('device')}` ({profile.get('threads')} thread(s)): "
            f"baselines trained {profile.get('base_epochs')} epochs; search {profile.get('episodes')} episodes x "
            f"{profile.get('candidates_per_step')} candidates ({profile.get('warmup')} of warm-up) on "
            f"{profile.get('images')} unlabeled images, random search the same number; fine-tuning "
            f"{profile.get('ft_epochs')} epochs on {profile.get('ft_train_images')} training images (labels dropped). "
            f"Binary sha256 `{profile.get('lfgcl_sha256', '?')[:16]}...`, commit `{profile.get('lfgcl_commit', '?')[:12]}`. "
            f"Machine: {profile.get('machine', 'not recorded')}.",
            "",
        ]
        # Records kept from earlier run folders (`--keep`), by the run that made them.
        here = tuple(profile.get(field) for _, field in RUN_FIELDS)
        runs = {}
        for c in cells:
            run = tuple(c.get(key) for key, _ in RUN_FIELDS)
            if run != here:
                runs[run] = runs.get(run, 0) + 1
        for (sha, commit, machine, prof), n in sorted(runs.items(), key=lambda r: str(r)):
            md += [f"{n} of the records come from an earlier run folder (`--keep`): binary sha256 "
                   f"`{(sha or '?')[:16]}...`, commit `{(commit or '?')[:12]}`, on {machine or 'a machine not recorded'}, "
                   f"profile `{prof}`.", ""]

    # Item 1: the stream coupling.
    if stream_cells:
        md += ["## Residual streams: shortcut copies kept jointly (item 1)", "",
               "Pruned with `--streams` at 50% FLOPs, before fine-tuning (BN re-estimated), seed 0.", "",
               "| method | ranking | top-1 before | reward | FLOPs |", "|---|---|---|---|---|"]
        for c in stream_cells:
            ranking = "per stream (before issue 21)" if "independent" in c["extra"] or "independent" in c["cell"] else "joint with the shortcut's source (now)"
            md.append(f"| {c['label']} | {ranking} | {100 * c['top1_before_finetune']:.2f} | {c['reward']:.4f} | "
                      f"{100 * c['flops_fraction']:.1f}% |")
        md.append("")

    summary = {}
    charts = {}
    for table, model, flops, methods in PLAN + ([("ci-r20-f50", "resnet20", 0.5, PLAN[0][3])] if is_ci else []):
        rows = [c for c in table_cells if c["cell"].startswith(table + "-s")]
        if not rows:
            continue
        base = rows[0]["baseline_top1"]
        setting = f", {TABLE_SETTINGS[table]}" if table in TABLE_SETTINGS else ""
        md += [f"## {model}, {int(round(100 * flops))}% FLOPs{setting}", "",
               f"Baseline top-1 {100 * base:.2f}%{machines_of(rows, table_cells)}.", "",
               "| method | seeds | top-1 before | top-1 after | after − baseline | reward | FLOPs | search s | fine-tune s |",
               "|---|---|---|---|---|---|---|---|---|"]
        by_method = {}
        for m in methods:
            rs = [c for c in rows if c["method"] == m]
            if not rs:
                continue
            by_method[m] = rs
            after = [c["top1_after_finetune"] for c in rs]
            am, _ = mean_std(after)
            drop = "-" if am is None else f"{100 * (am - base):+.2f}"
            rw, rws = mean_std([c["reward"] for c in rs])
            md.append(
                f"| {LABELS.get(m, m)} | {','.join(str(c['seed']) for c in sorted(rs, key=lambda c: c['seed']))} | "
                f"{fmt_ms([c['top1_before_finetune'] for c in rs])} | {fmt_ms(after)} | {drop} | "
                f"{rw:.4f} | {fmt_ms([c['flops_fraction'] for c in rs], digits=2)}% | "
                f"{statistics.fmean(c['search_seconds'] for c in rs):.0f} | {statistics.fmean(c['finetune_seconds'] for c in rs):.0f}"
                f"{'*' if any('--resume' in c['command'] for c in rs) else ''} |")
        md.append("")
        if any("--resume" in c["command"] for c in rows):
            md += ["\\* resumed after an interruption: its wall times count only the run that finished it.", ""]
        chart = svg_bars(f"{model}, {int(round(100 * flops))}% FLOPs{setting}: top-1 (%) over seeds, mean and std", [
            (LABELS.get(m, m), [(ser, *[None if v is None else 100 * v for v in mean_std([c[key] for c in rs])])
                                for ser, key in (("before", "top1_before_finetune"), ("after", "top1_after_finetune"))])
            for m, rs in by_method.items()], ref=("baseline", 100 * base))
        if chart:
            charts[f"results-{table}.svg"] = chart
            md += [f"![top-1 before and after fine-tuning](results-{table}.svg)", ""]
        pairs = {}
        for lead in ("lfgcl", "lfgcl-streams"):
            if lead not in by_method:
                continue
            lines = []
            for m, rs in by_method.items():
                if m == lead:
                    continue
                a_after = {c["seed"]: c["top1_after_finetune"] for c in by_method[lead]}
                b_after = {c["seed"]: c["top1_after_finetune"] for c in rs}
                a_before = {c["seed"]: c["top1_before_finetune"] for c in by_method[lead]}
                b_before = {c["seed"]: c["top1_before_finetune"] for c in rs}
                pa, pb = paired(a_after, b_after), paired(a_before, b_before)
                pairs[f"{lead} - {m}"] = {"after": pa, "before": pb}
                lines.append(f"| {LABELS.get(lead)} − {LABELS.get(m, m)} | {fmt_paired(pb)} | {fmt_paired(pa)} |")
            if lines:
                md += [f"Paired differences, {LABELS.get(lead)} minus each method (points, 95% t-interval over seeds):", "",
                       "| difference | before fine-tuning | after fine-tuning |", "|---|---|---|"] + lines + [""]
        summary[table] = {"baseline_top1": base, "pairs": pairs}

    md += ablation_section(ablation_cells, table_cells, summary)
    md += ft_pair_section(ft_rows, ft_binary, summary)

    for name, rs in studies.items():
        rs = sorted(rs, key=lambda r: r["reward"])
        rew = [r["reward"] for r in rs]
        after = [r["top1_after_finetune"] for r in rs]
        before = [r.get("top1_before_500") for r in rs]
        rho_after = spearman(rew, after)
        rho_before = spearman(rew, before) if all(b is not None for b in before) else None
        rho_ba = spearman(before, after) if all(b is not None for b in before) else None
        f = lambda x: "-" if x is None else f"{x:.3f}"
        # A study is named after its search's cell: PREFIX-s0 (plain LFGCL) or PREFIX-s0-METHOD.
        search, method = name, "lfgcl"
        for m in sorted(LABELS, key=len, reverse=True):
            if name.endswith("-s0-" + m):
                search, method = name[:-len(m) - 1], m
                break
        epochs = rs[0].get("ft_epochs")
        recipe = f"{epochs} epoch{'s' if epochs != 1 else ''} of the same recipe" if epochs else "the same recipe"
        what = LABELS[method] if "search" in LABELS[method] else LABELS[method] + " search"
        md += [f"## What the reward predicts (item 4): {len(rs)} candidates of the {search} {what}, fine-tuned", "",
               f"Candidates at evenly spaced reward ranks among the search's distinct candidates, each fine-tuned with {recipe}. "
               "Top-1 before is on the first 500 test images (BN re-estimated; - where the search did not measure it), "
               "after on all 10,000.", "",
               "| candidate | reward | FLOPs | top-1 before (500) | top-1 after |", "|---|---|---|---|---|"]
        for r in rs:
            b = r.get("top1_before_500")
            md.append(f"| {r['candidate']} (episode {r['episode']}) | {r['reward']:.4f} | {100 * r['flops_fraction']:.1f}% | "
                      f"{'-' if b is None else f'{100 * b:.2f}'} | {100 * r['top1_after_finetune']:.2f} |")
        md += ["", f"Spearman rank correlation: reward vs top-1 after fine-tuning {f(rho_after)}; reward vs top-1 before "
                   f"{f(rho_before)}; before vs after {f(rho_ba)} (n = {len(rs)}).", ""]
        summary["study " + name] = {"spearman_reward_after": rho_after, "spearman_reward_before": rho_before,
                                    "spearman_before_after": rho_ba, "n": len(rs)}

    cmds = {}
    for c in cells:
        # One line per kind of cell: the seed and the cell's folder written as variables.
        cmd = re.sub(r"--seed \d+", "--seed $SEED", c["command"]).replace(" --resume", "")
        cmd = re.sub(r"/cells/[^/ ]+/run", "/cells/$CELL/run", cmd)
        cmds.setdefault(cmd, None)
    if baselines:
        summary["baselines"] = baselines
    md += ["## Commands", "",
           "The whole table: `bash scripts/experiments/quality.sh --out RUNS` (resumable; `--device cuda` for a GPU, "
           "`--ci` for the smoke cell; `--keep docs/results.json` adds a new folder's cells to this table), then "
           "`python3 scripts/experiments/aggregate.py --out RUNS --docs docs [--keep docs/results.json]`. "
           "One command per kind of cell, as run (`$OUT` is RUNS):", "", "```"]
    for k in base_cmds:
        md.append(re.sub(r"/study/[^/ ]+/c\d+/", "/study/$STUDY/$CANDIDATE/", k))
    for k in sorted(cmds):
        md.append(k)
    md += ["```", ""]

    os.makedirs(args.docs, exist_ok=True)
    result = {"status": status, "profile": profile, "summary": summary, "cells": cells, "study": studies,
              "ft_pairs": ft_rows, "ft_pairs_binary": ft_binary, "base_commands": base_cmds}
    files = [("results.json", json.dumps(result, indent=1) + "\n"), ("results.md", "\n".join(md))] + list(charts.items())
    for name, text in files:
        # Per process: two runs of quality.sh (say, two --only filters) may aggregate at once.
        tmp = os.path.join(args.docs, f"{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.docs, name))
    print(f"wrote {os.path.join(args.docs, 'results.md')} ({done} table cells, {len(stream_cells)} stream cells, "
          f"{sum(len(v) for v in studies.values())} study candidates)")


if __name__ == "__main__":
    sys.exit(main())
