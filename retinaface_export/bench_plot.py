"""Latency by input size for each backend/precision, drawn with OpenCV (no plotting library needed)."""

from __future__ import annotations

import itertools
from collections import defaultdict

import cv2
import numpy as np

from retinaface_export.bench import BenchRow

WIDTH, HEIGHT, MARGIN = 900, 560, 70
# BGR colours, cycled over the series
PALETTE = (
    (200, 80, 20),
    (30, 140, 230),
    (40, 170, 60),
    (40, 40, 210),
    (150, 60, 160),
    (20, 160, 190),
    (120, 120, 120),
    (0, 0, 0),
)


def plot_latency(rows: list[BenchRow], title: str) -> np.ndarray:
    """A BGR image: network latency median (ms, y) against input size (x), one line per series."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        raw = "" if "minus-mean" in row.input_format else f" {row.input_format}"
        label = f"{row.format} ({row.backend}) {row.precision}{raw}"
        series[label].append((row.size[0], row.latency_ms_median))
    sizes = sorted({s for points in series.values() for s, _ in points})
    top = max(ms for points in series.values() for _, ms in points) * 1.1
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)

    def to_px(size: int, ms: float) -> tuple[int, int]:
        span = (sizes[-1] - sizes[0]) or 1
        x = MARGIN + (size - sizes[0]) / span * (WIDTH - 2 * MARGIN - 220)
        y = HEIGHT - MARGIN - ms / top * (HEIGHT - 2 * MARGIN)
        return round(x), round(y)

    cv2.line(canvas, (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN - 220, HEIGHT - MARGIN), (0, 0, 0), 1)
    cv2.line(canvas, (MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (0, 0, 0), 1)
    for size in sizes:
        x, _ = to_px(size, 0)
        cv2.putText(canvas, str(size), (x - 12, HEIGHT - MARGIN + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for k in range(5):
        ms = top * k / 4
        _, y = to_px(sizes[0], ms)
        cv2.putText(canvas, f"{ms:.0f}", (10, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(canvas, "input size (px)", (WIDTH // 2 - 160, HEIGHT - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(canvas, "ms", (10, MARGIN - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(canvas, title[:110], (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for index, (label, points) in enumerate(sorted(series.items())):
        color = PALETTE[index % len(PALETTE)]
        pixels = [to_px(s, ms) for s, ms in sorted(points)]
        for a, b in itertools.pairwise(pixels):
            cv2.line(canvas, a, b, color, 2, cv2.LINE_AA)
        for p in pixels:
            cv2.circle(canvas, p, 4, color, -1, cv2.LINE_AA)
        legend_y = MARGIN + 22 * index
        cv2.line(canvas, (WIDTH - 260, legend_y), (WIDTH - 235, legend_y), color, 3)
        cv2.putText(canvas, label, (WIDTH - 228, legend_y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
    return canvas
