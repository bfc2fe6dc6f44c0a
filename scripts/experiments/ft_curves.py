#!/usr/bin/env python3
"""Issue 21: test top-1 per fine-tuning epoch of pruned nets, from their `train_log.jsonl`s, as one
SVG line chart and a JSON file (what a longer fine-tuning does to the gap to the baseline).

    python3 scripts/experiments/ft_curves.py --baseline 0.8305 --out docs/results-ft-epochs \\
        --run "LFGCL, 20 epochs=RUN/finetune-lfgcl/train_log.jsonl" --run "LFGCL, 5 epochs=..."

Writes OUT.svg and OUT.json (atomically).
"""
import argparse
import json
import os

DASHES = ["", "7 3", "2 2", "9 3 2 3"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def read_curve(path):
    epochs = [json.loads(line) for line in open(path) if line.strip()]
    if not epochs:
        raise SystemExit(f"{path}: no epochs")
    return [(e["epoch"], 100.0 * e["test_top1"]) for e in epochs]


def svg(curves, baseline, title):
    w, h, left, right, top, bottom = 920, 360, 52, 400, 30, 40
    xs = [x for _, c in curves for x, _ in c]
    ys = [y for _, c in curves for _, y in c] + ([100.0 * baseline] if baseline else [])
    x0, x1 = 0, max(xs)
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5
    px = lambda x: left + (w - left - right) * (x - x0) / max(x1 - x0, 1e-9)
    py = lambda y: top + (h - top - bottom) * (1 - (y - y0) / max(y1 - y0, 1e-9))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{title}</text>']
    # Axes, ticks every point of top-1 and every 5 epochs.
    out.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>')
    for y in range(int(y0) + 1, int(y1) + 1):
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}%</text>')
    for x in range(0, x1 + 1, 5):
        out.append(f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 6}" text-anchor="middle">fine-tuning epoch</text>')
    if baseline:
        yb = py(100.0 * baseline)
        out.append(f'<line x1="{left}" y1="{yb:.1f}" x2="{w - right}" y2="{yb:.1f}" stroke="black" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{left + 6}" y="{yb - 4:.1f}">unpruned baseline {100 * baseline:.2f}%</text>')
    # A label's text before its first comma picks the colour (the method), the rest the dash
    # pattern (the seed or schedule), so that the same method reads as one colour.
    groups, variants = {}, {}
    for i, (label, c) in enumerate(curves):
        group, _, variant = label.partition(",")
        color = COLORS[groups.setdefault(group, len(groups)) % len(COLORS)]
        dash = DASHES[variants.setdefault(variant.strip(), len(variants)) % len(DASHES)]
        style = f'stroke="{color}"' + (f' stroke-dasharray="{dash}"' if dash else "")
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in c)
        out.append(f'<polyline points="{pts}" fill="none" {style} stroke-width="1.8"/>')
        ly = top + 6 + 16 * i
        out.append(f'<line x1="{w - right + 6}" y1="{ly}" x2="{w - right + 22}" y2="{ly}" {style} stroke-width="2"/>')
        out.append(f'<text x="{w - right + 26}" y="{ly + 4}">{label}: {c[-1][1]:.2f}% at epoch {c[-1][0]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="LABEL=PATH of a train_log.jsonl")
    ap.add_argument("--baseline", type=float, default=None, help="the baseline's top-1 (fraction)")
    ap.add_argument("--title", default="Test top-1 while fine-tuning (label-free)")
    ap.add_argument("--out", required=True, help="output path without extension")
    a = ap.parse_args()
    curves = []
    for spec in a.run:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run {spec!r}: expected LABEL=PATH")
        curves.append((label, read_curve(path)))
    write_atomic(a.out + ".svg", svg(curves, a.baseline, a.title))
    data = {"baseline_top1": a.baseline, "curves": [{"label": l, "epochs": [x for x, _ in c], "top1": [round(y, 2) for _, y in c]} for l, c in curves]}
    write_atomic(a.out + ".json", json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
