#!/usr/bin/env python3
"""Draws bench/chart.svg from bench/results.jsonl: idle memory per connection and fan-out
delivery latency, per server. Plain SVG, no plotting library needed.

Usage: python3 bench/chart.py [results.jsonl] [chart.svg]
"""
import json
import statistics
import sys
from collections import defaultdict

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "bench/results.jsonl"
TARGET = sys.argv[2] if len(sys.argv) > 2 else "bench/chart.svg"
COLORS = {"sidewire": "#2b6cb0", "sidewire+hub": "#63b3ed", "floor": "#718096",
          "pushpin": "#c05621", "nginx": "#2f855a"}


def median(values):
    return statistics.median(values) if values else None


rows = [json.loads(line) for line in open(SOURCE) if line.strip()]

memory = defaultdict(list)  # label -> KiB/conn at the largest size
largest = max((r["connections"] for r in rows if r.get("scenario") == "idle"), default=0)
for r in rows:
    if r.get("scenario") == "idle" and r["connections"] == largest and r.get("dialect") != "protobuf":
        memory[r["label"]].append(r["kib_per_conn"])

latency = defaultdict(lambda: {"p50": [], "p99": []})  # label -> one publish to N subs
for r in rows:
    if (r.get("scenario") == "fanout" and r.get("channels") == 1 and r.get("rate", 0) > 0
            and r.get("subscribers") == max(x.get("subscribers", 0) for x in rows
                                            if x.get("scenario") == "fanout")):
        latency[r["label"]]["p50"].append(r["latency_p50_ms"])
        latency[r["label"]]["p99"].append(r["latency_p99_ms"])


def bars(x0, y0, width, height, title, unit, series):
    """series: list of (label, [(name, value)]) grouped bars."""
    out = [f'<text x="{x0 + width / 2}" y="{y0 - 12}" text-anchor="middle" font-size="15" '
           f'font-weight="bold">{title}</text>']
    values = [v for _, group in series for _, v in group if v is not None]
    top = max(values) * 1.15 if values else 1
    out.append(f'<line x1="{x0}" y1="{y0 + height}" x2="{x0 + width}" y2="{y0 + height}" stroke="#333"/>')
    slot = width / max(len(series), 1)
    for i, (label, group) in enumerate(series):
        bar_w = slot * 0.7 / max(len(group), 1)
        for j, (name, value) in enumerate(group):
            if value is None:
                continue
            h = height * value / top
            x = x0 + i * slot + slot * 0.15 + j * bar_w
            color = COLORS.get(label, "#999")
            opacity = 1.0 if j == 0 else 0.55
            out.append(f'<rect x="{x:.1f}" y="{y0 + height - h:.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{h:.1f}" fill="{color}" fill-opacity="{opacity}"/>')
            out.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y0 + height - h - 4:.1f}" '
                       f'text-anchor="middle" font-size="11">{value:.1f}{"" if not name else " " + name}</text>')
        out.append(f'<text x="{x0 + i * slot + slot / 2:.1f}" y="{y0 + height + 16}" '
                   f'text-anchor="middle" font-size="12">{label}</text>')
    out.append(f'<text x="{x0 - 8}" y="{y0 + height / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 {x0 - 8} {y0 + height / 2})">{unit}</text>')
    return out


order = ["floor", "sidewire", "sidewire+hub", "nginx", "pushpin"]
mem_series = [(label, [("", median(memory[label]))]) for label in order if memory.get(label)]
lat_series = [(label, [("p50", median(latency[label]["p50"])), ("p99", median(latency[label]["p99"]))])
              for label in order if latency.get(label)]

svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="980" height="380" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += bars(60, 50, 380, 260, f"Idle memory per WebSocket ({largest} connections)", "KiB / connection",
            mem_series)
svg += bars(560, 50, 380, 260, "Fan-out delivery latency (one channel, fixed rate)", "ms",
            lat_series)
svg.append('<text x="490" y="370" text-anchor="middle" font-size="11" fill="#555">'
           'medians of the runs in bench/results.jsonl; lower is better</text>')
svg.append("</svg>")
with open(TARGET, "w") as handle:
    handle.write("\n".join(svg) + "\n")
print(f"wrote {TARGET}")
