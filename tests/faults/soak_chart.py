#!/usr/bin/env python3
"""Draw the soak's samples (SOAK_SAMPLES=…csv make soak) as one SVG of four
panels over time: leanmqd RSS, leanmqd fds, Redis memory, and end-to-end
latency p50/p99.

    python3 tests/faults/soak_chart.py soak.csv docs/soak.svg

A few dozen lines of SVG by hand rather than matplotlib: the chart is four
polylines, and the fault suite's venv stays without numpy and a plotting
stack.
"""
from __future__ import annotations

import csv
import sys
from typing import List, Sequence, Tuple

W, H, PAD, GAP = 760, 150, 48, 26
PANELS: Sequence[Tuple[str, Sequence[Tuple[str, str]], str]] = (
    ("leanmqd RSS", (("rss_mib", "#1f77b4"),), "MiB"),
    ("leanmqd open file descriptors", (("fds", "#2ca02c"),), ""),
    ("Redis used_memory", (("redis_mib", "#9467bd"),), "MiB"),
    ("latency, Send called → first handled (the soak handler takes 50 ms)", (("latency_p50_ms", "#1f77b4"), ("latency_p99_ms", "#d62728")), "ms"),
)


def floats(rows: List[dict], key: str) -> List[Tuple[float, float]]:
    return [(float(r["seconds"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def panel(i: int, title: str, series: Sequence[Tuple[str, str]], unit: str, rows: List[dict]) -> str:
    top = i * (H + GAP) + GAP
    pts = {k: floats(rows, k) for k, _ in series}
    xs = [x for p in pts.values() for x, _ in p] or [0.0, 1.0]
    ys = [y for p in pts.values() for _, y in p] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) or 1.0
    y1 = max(ys) * 1.15 or 1.0
    sx = lambda x: PAD + (x - x0) / max(1e-9, x1 - x0) * (W - 2 * PAD)  # noqa: E731
    sy = lambda y: top + H - y / y1 * H  # noqa: E731
    out = [f'<text x="{PAD}" y="{top - 8}" font-size="13" font-weight="bold">{title}</text>',
           f'<rect x="{PAD}" y="{top}" width="{W - 2 * PAD}" height="{H}" fill="none" stroke="#bbb"/>']
    for frac in (0.0, 0.5, 1.0):
        y = y1 * frac
        out.append(f'<text x="{PAD - 6}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.0f}{unit}</text>')
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + (x1 - x0) * frac
        out.append(f'<text x="{sx(x):.1f}" y="{top + H + 12}" font-size="10" text-anchor="middle">{x / 60:.0f} min</text>')
    legend_x = W - PAD - 4
    for k, colour in series:
        p = pts[k]
        if p:
            line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        out.append(f'<text x="{legend_x}" y="{top + 14}" font-size="11" fill="{colour}" text-anchor="end">{k}</text>')
        legend_x -= 110
    return "\n".join(out)


def main(src: str, dst: str) -> None:
    with open(src) as f:
        rows = list(csv.DictReader(f))
    height = len(PANELS) * (H + GAP) + GAP
    body = "\n".join(panel(i, t, s, u, rows) for i, (t, s, u) in enumerate(PANELS))
    with open(dst, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
                f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: soak_chart.py SAMPLES.csv OUT.svg")
    main(sys.argv[1], sys.argv[2])
