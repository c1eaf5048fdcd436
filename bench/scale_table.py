#!/usr/bin/env python3
"""Markdown tables from bench/scale-results.jsonl (written by bench/scale.sh).

usage: python3 bench/scale_table.py [bench/scale-results.jsonl]
Idle rows: one per (label, transport, dialect, connections), the median run by KiB / conn when
several; fan-out rows as measured.
"""
import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "bench/scale-results.jsonl"
rows = [json.loads(line) for line in open(path) if line.startswith("{")]

idle = defaultdict(list)
for r in rows:
    if r.get("scenario") == "idle" and r.get("kib_per_conn") is not None:
        idle[(r["label"], r["transport"], r["dialect"], r["connections"])].append(r)

print("| server | transport | connections | ok | connect rate /s | RSS before MiB | RSS after MiB "
      "| **KiB / conn** | runs | server CPU µs / connect |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(idle, key=lambda k: (k[1], k[0], k[3])):
    runs = sorted(idle[key], key=lambda r: r["kib_per_conn"])
    r = runs[len(runs) // 2]
    cpu = r.get("server_cpu_ms_connect")
    cpu_us = f'{cpu * 1000 / max(r["ok"], 1):.0f}' if cpu is not None else "n/a"
    rng = (f'{len(runs)}: {runs[0]["kib_per_conn"]:.2f}–{runs[-1]["kib_per_conn"]:.2f}'
           if len(runs) > 1 else "1")
    print(f'| {key[0]} | {key[1]} ({key[2]}) | {key[3]} | {r["ok"]} | {r["connect_rate"]:.0f} '
          f'| {r["rss_before_kib"] / 1024:.1f} | {r["rss_after_kib"] / 1024:.1f} '
          f'| **{r["kib_per_conn"]:.2f}** | {rng} | {cpu_us} |')

fan = [r for r in rows if r.get("scenario") == "fanout"]
if fan:
    print()
    print("| server | subscribers | subscribed | publishes | rate /s | deliveries /s | p50 ms "
          "| p99 ms | max ms | lost | verified | server CPU % | server RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in fan:
        rss = r.get("server_rss_kib")
        print(f'| {r["label"]} | {r["subscribers"]} | {r["subscribed"]} | {r["published"]} '
              f'| {r["rate"]} | {r["deliveries_per_s"]:.0f} | {r["latency_p50_ms"]} '
              f'| {r["latency_p99_ms"]} | {r["latency_max_ms"]} | {r["lost"]} | {r["verified"]} '
              f'| {r["server_cpu_pct"]} | {rss / 1024 if rss else 0:.1f} |')
