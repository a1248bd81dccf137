"""Latency and throughput by input size, one line per model, with error bars (matplotlib, optional extra)."""

from __future__ import annotations

import io
from collections import defaultdict

from retinaface_export.bench.run import BenchRow
from retinaface_export.errors import UsageError

INSTALL_HINT = "pip install 'retinaface-export[plot]'"
# horizontal offset between series at one size, in units of the gap between sizes
_DODGE = 0.03


def require_matplotlib() -> None:
    """Fail early, before minutes of timing, when the plot cannot be drawn.

    Raises:
        UsageError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _label(row: BenchRow) -> str:
    raw = "" if row.input_format == "f32-nchw-minus-mean" else f" {row.input_format}"
    batch = f" b{row.batch}" if row.batch != 1 else ""
    return f"{row.format} ({row.backend}) {row.precision}{raw}{batch}"


def plot_png(rows: list[BenchRow], title: str) -> bytes:
    """A PNG: median latency ± std (left) and throughput ± its std (right) against input size.

    Raises:
        UsageError: matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

    panels = [
        ("latency", "latency, one request at a time (median ± std, ms)", "ms"),
        ("throughput", "throughput (images/s ± fps × std/mean of the requests)", "images / s"),
    ]
    panels = [p for p in panels if any(r.mode == p[0] for r in rows)]
    figure = Figure(figsize=(7 * len(panels), 5.5), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    sizes = sorted({tuple(r.size) for r in rows}, key=lambda s: s[0] * s[1])
    position = {size: index for index, size in enumerate(sizes)}
    for ax, (mode, heading, unit) in zip(axes, panels, strict=True):
        series: dict[str, list[BenchRow]] = defaultdict(list)
        for row in rows:
            if row.mode == mode:
                series[_label(row)].append(row)
        ordered = sorted(series.items())
        for index, (label, points) in enumerate(ordered):
            points.sort(key=lambda r: position[tuple(r.size)])
            dodge = (index - (len(ordered) - 1) / 2) * _DODGE  # error bars of one size side by side
            x = [position[tuple(r.size)] + dodge for r in points]
            if mode == "latency":
                y, err = [r.latency_ms_median for r in points], [r.latency_ms_std for r in points]
            else:
                y, err = [r.fps for r in points], [r.fps_std or 0.0 for r in points]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=label)
        ax.set_xticks(range(len(sizes)), [f"{h}x{w}" for h, w in sizes])
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        ax.set_xlabel("input size (px)")
        ax.set_ylabel(unit)
        ax.set_title(heading, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
